//! The session store of the gossip backend: every node holds every session, replicated over
//! the authenticated QUIC mesh (never over gossip).
//!
//! - A save or delete is merged locally, then sent to every verified member; it returns
//!   once each has merged it (or was found gone, or the request timeout passed), so a
//!   save that returned survives the loss of any node.
//! - When a store starts it pulls a snapshot from each member; when a member joins, each
//!   side pushes its snapshot to the other and pulls the other's: a new node catches up,
//!   a restarted node too, and two sides of a healed partition exchange what they missed.
//!   Snapshots travel in chunks under the frame limit.
//! - A purge task drops expired sessions and old tombstones; caps on sessions and on
//!   tombstones bound the rest (by eviction, never by refusing a save).

use std::{
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::StreamExt;
use time::OffsetDateTime;
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

use super::{
    SessionStoreConfig,
    replica::{Applied, Evicted, Replica, chunks},
};
use crate::{
    gossip::node::{MembershipEvent, Node, ServiceHandler},
    gossip::peer::PeerId,
    gossip::wire::{
        self,
        sessions::{SERVICE, SessionMsg, SessionRecord, SessionState},
    },
    rate_log::RateLog,
};

/// Largest snapshot chunk, whatever the frame limit: keeps one catch-up from holding a
/// peer link for long.
const MAX_CHUNK: usize = 1024 * 1024;
/// Room for the frame header and service name around a session message.
const FRAME_OVERHEAD: usize = 64;

/// A `tower-sessions` store replicated to every node of the gossip cluster. Cheap to clone;
/// get it from [`Cluster::session_store`](crate::Cluster::session_store) or
/// [`ClusterAdapterCtr::session_store`](crate::ClusterAdapterCtr::session_store), once per
/// node.
#[derive(Clone)]
pub struct GossipSessionStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GossipSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipSessionStore")
            .field("node", self.inner.node.me())
            .field("records", &self.len())
            .finish()
    }
}

struct Inner {
    node: Arc<Node>,
    replica: Mutex<Replica>,
    self_weak: Weak<Inner>,
    /// Log lines about records refused or evicted: a peer or a client can cause them at will.
    refused_log: RateLog,
    evicted_log: RateLog,
    /// Live sessions and tombstones held, as metrics.
    records: metrics::Gauge,
    tombstones: metrics::Gauge,
}

/// At most one log line per kind in this period.
const LOG_PERIOD: Duration = Duration::from_secs(10);

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

fn now_ms() -> u64 {
    u64::try_from(now_ns() / 1_000_000).unwrap_or_default()
}

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

impl crate::Cluster {
    /// Start this node's replicated session store (feature `sessions`; see
    /// [`sessions`](crate::sessions)). Start one per node: a second one replaces the first.
    pub fn session_store(&self, config: SessionStoreConfig) -> GossipSessionStore {
        GossipSessionStore::start(self.node().clone(), &config)
    }
}

impl GossipSessionStore {
    fn start(node: Arc<Node>, config: &SessionStoreConfig) -> Self {
        let node_label = crate::metrics::label(&node.me().name);
        let replica = Replica::new(
            node.me().name.to_string(),
            config.max_sessions,
            config.max_tombstones,
            config.tombstone_ttl,
        );
        let inner = Arc::new_cyclic(|self_weak| Inner {
            node,
            replica: Mutex::new(replica),
            self_weak: self_weak.clone(),
            refused_log: RateLog::new(LOG_PERIOD),
            evicted_log: RateLog::new(LOG_PERIOD),
            records: metrics::gauge!(crate::metrics::SESSION_RECORDS, "node" => node_label.clone()),
            tombstones: metrics::gauge!(crate::metrics::SESSION_TOMBSTONES, "node" => node_label),
        });
        let handler: Weak<dyn ServiceHandler> = Arc::downgrade(&inner) as Weak<_>;
        inner.node.register_service(SERVICE, handler);
        // Subscribe before asking the current members, so that no join falls in between.
        let events = inner.node.events();
        let members: Vec<PeerId> = inner.node.members().iter().map(|m| m.peer_id()).collect();
        for peer in members {
            inner.request_snapshot(peer);
        }
        (inner.node).spawn(run(Arc::downgrade(&inner), events, config.purge_interval));
        Self { inner }
    }

    /// How many records this node holds: live sessions, and tombstones of deleted ones
    /// (purged after the tombstone TTL).
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether this node holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many records this node evicted to stay within its caps since it started:
    /// live sessions (those closest to expiry first) and tombstones (the oldest first).
    pub fn evicted(&self) -> (u64, u64) {
        let e = self.inner.lock().evicted();
        (e.sessions, e.tombstones)
    }

    /// Merge a write of this node locally, send it to every member, and wait until each
    /// has merged it too (or is gone, or the request timeout passed).
    ///
    /// Merged here first, so that a member that joins meanwhile gets it in the snapshot
    /// this node pushes to it.
    async fn write(&self, id: i128, state: SessionState) -> session_store::Result<()> {
        let inner = &self.inner;
        let body = {
            let mut replica = inner.lock();
            let record = replica.write(id, state, now_ms());
            let body =
                wire::encode_body(&SessionMsg::Put(vec![record.clone()])).map_err(backend)?;
            let max = inner.node.max_frame_size();
            if body.len() + FRAME_OVERHEAD > max {
                return Err(backend(format!(
                    "session of {} bytes exceeds the cluster's maximum frame size of {max} bytes",
                    body.len()
                )));
            }
            // A deletion of a session not held here is still sent: another node may
            // hold it (say, one that evicted it here first).
            let before = replica.evicted();
            replica.apply_own(record, now_ns());
            inner.record_counts(&replica);
            inner.log_evictions(before, replica.evicted());
            body
        };
        let members: Vec<PeerId> = inner.node.members().iter().map(|m| m.peer_id()).collect();
        inner
            .node
            .send_service(&members, SERVICE, body, true)
            .await
            .map_err(backend)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, record: SessionRecord, from: &str) {
        let ts_ms = record.version.ts_ms;
        let mut replica = self.lock();
        let before = replica.evicted();
        let applied = replica.apply(record, now_ns());
        let after = replica.evicted();
        self.record_counts(&replica);
        drop(replica);
        self.log_evictions(before, after);
        if applied == Applied::TooFarAhead
            && let Some(held_back) = self.refused_log.allow()
        {
            tracing::warn!(
                from,
                version_ms = ts_ms,
                now_ms = now_ms(),
                held_back,
                "session record refused: its version is too far ahead of this node's clock \
                 (a clock far off, or a misbehaving node)"
            );
        }
    }

    /// Record how many live sessions and tombstones `replica` holds.
    fn record_counts(&self, replica: &Replica) {
        let (sessions, tombstones) = replica.counts();
        self.records.set(sessions as f64);
        self.tombstones.set(tombstones as f64);
    }

    /// Log that records were evicted between `before` and `after`, at a bounded rate.
    fn log_evictions(&self, before: Evicted, after: Evicted) {
        if after != before
            && let Some(held_back) = self.evicted_log.allow()
        {
            tracing::warn!(
                evicted_sessions = after.sessions,
                evicted_tombstones = after.tombstones,
                held_back,
                "session store at its cap: evicted the sessions closest to expiry / the \
                 oldest tombstones (totals since start)"
            );
        }
    }

    fn request_snapshot(&self, peer: PeerId) {
        let Some(inner) = self.self_weak.upgrade() else {
            return;
        };
        self.node.spawn(async move {
            let Ok(body) = wire::encode_body(&SessionMsg::SnapshotRequest) else {
                return;
            };
            tracing::debug!(%peer, "asking for a session snapshot");
            if let Err(e) = inner
                .node
                .send_service(std::slice::from_ref(&peer), SERVICE, body, false)
                .await
            {
                tracing::warn!(%peer, "session snapshot request not sent: {e}");
            }
        });
    }

    fn send_snapshot(&self, peer: PeerId) {
        let Some(inner) = self.self_weak.upgrade() else {
            return;
        };
        self.node.spawn(async move {
            let records = inner.lock().snapshot(now_ns());
            let total = records.len();
            let budget = (inner.node.max_frame_size() / 2).min(MAX_CHUNK);
            let (chunks, too_large) = chunks(records, budget);
            if !too_large.is_empty() {
                tracing::warn!(%peer, skipped = too_large.len(), budget, "sessions larger than a snapshot chunk left out of the snapshot");
            }
            let n = chunks.len();
            for (i, records) in chunks.into_iter().enumerate() {
                let msg = SessionMsg::Snapshot {
                    records,
                    last: i + 1 == n,
                };
                let sent = match wire::encode_body(&msg) {
                    Ok(body) => {
                        inner
                            .node
                            .send_service(std::slice::from_ref(&peer), SERVICE, body, false)
                            .await
                    }
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = sent {
                    tracing::warn!(%peer, "session snapshot interrupted: {e}");
                    return;
                }
            }
            tracing::debug!(%peer, records = total, chunks = n, "session snapshot sent");
        });
    }
}

/// Session messages from peers that do not decode: logged at most once per period.
static UNDECODED_LOG: crate::rate_log::RateLog =
    crate::rate_log::RateLog::new(std::time::Duration::from_secs(10));

impl ServiceHandler for Inner {
    fn on_message(&self, from: &PeerId, body: Bytes) {
        let msg = match wire::decode_body::<SessionMsg>(&body) {
            Ok(msg) => msg,
            Err(e) => {
                if let Some(held_back) = UNDECODED_LOG.allow() {
                    tracing::warn!(peer = %from, held_back, "session message dropped: {e}");
                }
                return;
            }
        };
        let from_name = from.name.to_string();
        match msg {
            SessionMsg::Put(records) => {
                for r in records {
                    self.apply(r, &from_name);
                }
            }
            SessionMsg::SnapshotRequest => self.send_snapshot(from.clone()),
            SessionMsg::Snapshot { records, last } => {
                let n = records.len();
                for r in records {
                    self.apply(r, &from_name);
                }
                if last {
                    tracing::debug!(peer = %from, last_chunk = n, "caught up with a peer's sessions");
                }
            }
        }
    }
}

/// Exchange snapshots with every member that joins; purge periodically; stop with the
/// store.
async fn run(
    inner: Weak<Inner>,
    mut events: std::pin::Pin<Box<dyn futures_core::Stream<Item = MembershipEvent> + Send>>,
    purge_interval: std::time::Duration,
) {
    let mut purge = tokio::time::interval(purge_interval);
    purge.tick().await;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(MembershipEvent::Joined(member)) => match inner.upgrade() {
                    Some(inner) => {
                        // Push what this node holds (the member may have missed writes made
                        // here just before it joined) and pull what it holds (it may have
                        // pushed before this store existed, or be the other side of a
                        // healed partition).
                        inner.send_snapshot(member.peer_id());
                        inner.request_snapshot(member.peer_id());
                    }
                    None => return,
                },
                Some(MembershipEvent::Left(_)) => {}
                None => return,
            },
            _ = purge.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                let started = Instant::now();
                let (expired, tombstones) = {
                    let mut replica = inner.lock();
                    let purged = replica.purge(now_ns());
                    inner.record_counts(&replica);
                    purged
                };
                if expired + tombstones > 0 {
                    tracing::debug!(expired, tombstones, took = ?started.elapsed(), "sessions purged");
                }
            }
        }
    }
}

fn to_record(id: i128, expiry_unix_ns: i128, data: &[u8]) -> session_store::Result<Record> {
    Ok(Record {
        id: Id(id),
        data: serde_json::from_slice(data)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?,
        expiry_date: OffsetDateTime::from_unix_timestamp_nanos(expiry_unix_ns)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?,
    })
}

#[async_trait::async_trait]
impl SessionStore for GossipSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        while self.inner.lock().holds(record.id.0) {
            record.id = Id::default();
        }
        self.save(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_vec(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let state = SessionState::Live {
            expiry_unix_ns: record.expiry_date.unix_timestamp_nanos(),
            data: Bytes::from(data),
        };
        self.write(record.id.0, state).await
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        let found = self
            .inner
            .lock()
            .get(session_id.0, now_ns())
            .map(|(expiry, data)| (expiry, data.clone()));
        found
            .map(|(expiry, data)| to_record(session_id.0, expiry, &data))
            .transpose()
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.write(session_id.0, SessionState::Deleted).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{
        GossipAdapterConfig, gossip::wire::sessions::Version, sessions::SessionStoreConfig,
    };

    const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

    async fn node(cluster: &str, seed: Option<std::net::SocketAddr>) -> Arc<Node> {
        let mut config = GossipAdapterConfig::new()
            .with_cluster_id(cluster)
            .with_gossip_addr("127.0.0.1:0".parse().unwrap())
            .with_mesh_addr("127.0.0.1:0".parse().unwrap())
            .with_gossip_interval(Duration::from_millis(50))
            .with_secret(SECRET);
        if let Some(seed) = seed {
            config = config.with_seeds([seed.to_string()]);
        }
        Node::start(&config).await.unwrap()
    }

    fn user(name: &str) -> Record {
        Record {
            id: Id::default(),
            data: HashMap::from([("user".to_string(), serde_json::json!(name))]),
            expiry_date: OffsetDateTime::now_utc() + time::Duration::hours(1),
        }
    }

    async fn user_of(store: &GossipSessionStore, id: &Id) -> Option<String> {
        let r = store.load(id).await.unwrap()?;
        Some(r.data.get("user")?.as_str()?.to_string())
    }

    /// A member (it holds the secret) sends a session whose version is at the end of time,
    /// so that no later write could win over it: the receiving node refuses it, and a
    /// log-out there still deletes the session. Two real nodes on 127.0.0.1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_at_the_end_of_time_from_a_member_is_refused() {
        let cluster = format!("far-future-{}", std::process::id());
        let a = node(&cluster, None).await;
        let b = node(&cluster, Some(a.addrs().0)).await;
        let store = GossipSessionStore::start(a.clone(), &SessionStoreConfig::new());
        let mut formed = false;
        for _ in 0..500 {
            if a.members().len() == 1 && b.members().len() == 1 {
                formed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(formed, "cluster formed");

        let mut rec = user("ada");
        store.create(&mut rec).await.unwrap();
        assert_eq!(user_of(&store, &rec.id).await.as_deref(), Some("ada"));

        // B pins the session (and a session A never held) with the largest version.
        let pinned = |id: i128| SessionRecord {
            id,
            version: Version {
                ts_ms: u64::MAX,
                node: "zzz".into(),
            },
            state: SessionState::Live {
                expiry_unix_ns: rec.expiry_date.unix_timestamp_nanos(),
                data: Bytes::from_static(br#"{"user":"mallory"}"#),
            },
        };
        let body = wire::encode_body(&SessionMsg::Put(vec![pinned(rec.id.0), pinned(7)])).unwrap();
        let a_id = a.me().clone();
        b.send_service(&[a_id], SERVICE, body, true).await.unwrap();

        assert_eq!(
            user_of(&store, &rec.id).await.as_deref(),
            Some("ada"),
            "the pinned version was refused"
        );
        assert!(!store.inner.lock().holds(7));
        store.delete(&rec.id).await.unwrap();
        assert_eq!(user_of(&store, &rec.id).await, None, "the log-out won");
        b.shutdown().await;
        a.shutdown().await;
    }
}
