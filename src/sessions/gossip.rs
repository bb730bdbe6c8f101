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
//! - A purge task drops expired sessions and old tombstones; a cap bounds the rest.

use std::{
    sync::{Arc, Mutex, Weak},
    time::{Instant, SystemTime, UNIX_EPOCH},
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
    replica::{Applied, Replica, chunks},
};
use crate::{
    cluster::{MembershipEvent, Node, ServiceHandler},
    mesh::PeerId,
    wire::{
        self,
        sessions::{SERVICE, SessionMsg, SessionRecord, SessionState},
    },
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
}

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

impl GossipSessionStore {
    pub(crate) fn start(node: Arc<Node>, config: &SessionStoreConfig) -> Self {
        let replica = Replica::new(
            node.me().name.to_string(),
            config.max_sessions,
            config.tombstone_ttl,
        );
        let inner = Arc::new_cyclic(|self_weak| Inner {
            node,
            replica: Mutex::new(replica),
            self_weak: self_weak.clone(),
        });
        let handler: Weak<dyn ServiceHandler> = Arc::downgrade(&inner) as Weak<_>;
        inner.node.register_service(SERVICE, handler);
        // Subscribe before asking the current members, so that no join falls in between.
        let events = inner.node.events();
        let members: Vec<PeerId> = inner.node.members().iter().map(|m| m.peer_id()).collect();
        for peer in members {
            inner.request_snapshot(peer);
        }
        tokio::spawn(run(Arc::downgrade(&inner), events, config.purge_interval));
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

    /// Merge a write of this node locally, send it to every member, and wait until each
    /// has merged it too (or is gone, or the request timeout passed).
    ///
    /// Merged here first, so that a member that joins meanwhile gets it in the snapshot
    /// this node pushes to it.
    async fn write(&self, id: i128, state: SessionState) -> session_store::Result<()> {
        let inner = &self.inner;
        let body = {
            let mut replica = inner.lock();
            let record = replica.write(id, state, now_ms()).ok_or_else(|| {
                tracing::warn!("session not saved: the session store holds its maximum of records");
                backend("the session store is full")
            })?;
            let body =
                wire::encode_body(&SessionMsg::Put(vec![record.clone()])).map_err(backend)?;
            let max = inner.node.max_frame_size();
            if body.len() + FRAME_OVERHEAD > max {
                return Err(backend(format!(
                    "session of {} bytes exceeds the cluster's maximum frame size of {max} bytes",
                    body.len()
                )));
            }
            let live = matches!(record.state, SessionState::Live { .. });
            if replica.apply(record, now_ns()) == Applied::Full && live {
                return Err(backend("the session store is full"));
            }
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
        let id = record.id;
        if self.lock().apply(record, now_ns()) == Applied::Full {
            tracing::warn!(
                from,
                "session record dropped: the session store is full ({id:x})"
            );
        }
    }

    fn request_snapshot(&self, peer: PeerId) {
        let Some(inner) = self.self_weak.upgrade() else {
            return;
        };
        tokio::spawn(async move {
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
        tokio::spawn(async move {
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

impl ServiceHandler for Inner {
    fn on_message(&self, from: &PeerId, body: Bytes) {
        let msg = match wire::decode_body::<SessionMsg>(&body) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(peer = %from, "session message dropped: {e}");
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
                let (expired, tombstones) = inner.lock().purge(now_ns());
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
