//! The replicated session store (the store of the gossip backend): every node holds every
//! session, replicated over the node's bus — on gossip, the authenticated QUIC mesh (never
//! gossip itself). Written over the bus alone: it knows no backend.
//!
//! - A save or delete is merged locally, then sent to every verified member; it returns
//!   once each has merged it (or was found gone, or the request timeout passed), so a
//!   save that returned survives the loss of any node.
//! - When a store starts it pulls a snapshot from each member; when a member joins, each
//!   side pushes its snapshot to the other and pulls the other's: a new node catches up,
//!   a restarted node too, and two sides of a healed partition exchange what they missed.
//!   Snapshots travel in chunks under the frame limit, read from the store one at a time,
//!   the next once the peer handled the last; one snapshot at a time per peer answers every
//!   request it made meanwhile.
//! - A purge task drops expired sessions and old tombstones; caps on sessions and on
//!   tombstones bound the rest: a new session beyond its cap is refused (never a live one
//!   evicted for it), the oldest tombstone beyond its cap evicted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use time::OffsetDateTime;
use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

use super::{
    SessionStoreConfig,
    replica::{Applied, Cursor, Replica, fits_a_chunk},
    wire::{SERVICE, SessionMsg, SessionRecord, SessionState},
};
use crate::{
    bus::{self, Bus, MemberChange, NodeId, Registration, To},
    codec,
    rate_log::RateLog,
};

/// Largest snapshot chunk, whatever the bus carries: keeps one catch-up from holding a
/// peer link for long. A session's record must fit one (see [`Inner::budget`]).
const MAX_CHUNK: usize = 1024 * 1024;

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
            .field("node", self.inner.bus.me())
            .field("records", &self.len())
            .finish()
    }
}

struct Inner {
    bus: Arc<dyn Bus>,
    /// Routes the store's messages to it while it lives.
    _registration: Registration,
    replica: Mutex<Replica>,
    self_weak: Weak<Inner>,
    /// Log lines about records refused or evicted, and messages unread: a peer or a client
    /// can cause them at will.
    refused_log: RateLog,
    full_log: RateLog,
    evicted_log: RateLog,
    unreadable_log: RateLog,
    /// The peers a snapshot is being sent to (one at a time each), and whether each asked
    /// for another meanwhile.
    snapshots: Mutex<HashMap<NodeId, bool>>,
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

impl GossipSessionStore {
    /// This node's replicated store on `bus` (one per node: a second one replaces the
    /// first).
    pub(crate) fn start(bus: Arc<dyn Bus>, config: &SessionStoreConfig) -> Self {
        let node_label = crate::metrics::label(&bus.me().name);
        let replica = Replica::new(
            bus.me().name.to_string(),
            config.max_sessions,
            config.max_tombstones,
            config.tombstone_ttl,
        );
        let inner = Arc::new_cyclic(|self_weak: &Weak<Inner>| Inner {
            _registration: bus.register(SERVICE, self_weak.clone() as Weak<dyn bus::Handler>),
            bus,
            replica: Mutex::new(replica),
            self_weak: self_weak.clone(),
            refused_log: RateLog::new(LOG_PERIOD),
            full_log: RateLog::new(LOG_PERIOD),
            evicted_log: RateLog::new(LOG_PERIOD),
            unreadable_log: RateLog::new(LOG_PERIOD),
            snapshots: Mutex::default(),
            records: metrics::gauge!(crate::metrics::SESSION_RECORDS, "node" => node_label.clone()),
            tombstones: metrics::gauge!(crate::metrics::SESSION_TOMBSTONES, "node" => node_label),
        });
        // Follow the changes before asking the current members, so that no join falls in
        // between.
        let changes = inner.bus.changes();
        for peer in inner.bus.members() {
            inner.request_snapshot(peer);
        }
        let run = run(Arc::downgrade(&inner), changes, config.purge_interval);
        inner.bus.spawn(Box::pin(run));
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

    /// How many records this node evicted to stay within its caps since it started: live
    /// sessions (always 0: a new session beyond the cap is refused instead) and tombstones
    /// (the oldest first).
    #[deprecated(
        since = "0.1.0",
        note = "live sessions are no longer evicted (a new one beyond the cap is refused): \
                use `refused` and `tombstones_evicted`"
    )]
    pub fn evicted(&self) -> (u64, u64) {
        (0, self.tombstones_evicted())
    }

    /// How many tombstones (of deleted sessions) this node evicted to stay within
    /// [`SessionStoreConfig::with_max_tombstones`] since it started, the oldest first.
    pub fn tombstones_evicted(&self) -> u64 {
        self.inner.lock().evicted()
    }

    /// How many new sessions this node refused since it started, because it held
    /// [`SessionStoreConfig::with_max_sessions`] live ones: saved here (the save failed)
    /// or received from a peer.
    pub fn refused(&self) -> u64 {
        self.inner.lock().refused()
    }

    /// Merge a write of this node locally, send it to every member, and wait until each
    /// has merged it too (or is gone, or the request timeout passed). A new session is
    /// refused at the cap, and a session larger than a snapshot chunk always: neither is
    /// sent.
    ///
    /// Merged here first, so that a member that joins meanwhile gets it in the snapshot
    /// this node pushes to it.
    async fn write(&self, id: i128, state: SessionState) -> session_store::Result<()> {
        let inner = &self.inner;
        let body = {
            let mut replica = inner.lock();
            let record = replica.write(id, state, now_ms());
            let budget = inner.budget();
            if let Err(size) = fits_a_chunk(&record, budget) {
                return Err(backend(format!(
                    "session of {size} bytes is larger than the {budget} bytes a node sends \
                     in one snapshot chunk (half the cluster's maximum frame size, at most \
                     1 MiB): refused, it could never reach a node that catches up"
                )));
            }
            let body =
                codec::encode_body(&SessionMsg::Put(vec![record.clone()])).map_err(backend)?;
            // A deletion of a session not held here is still sent: another node may
            // hold it.
            let evicted = replica.evicted();
            let applied = replica.apply_own(record, now_ns());
            inner.record_counts(&replica);
            inner.log_evictions(evicted, replica.evicted());
            if applied == Applied::Full {
                let max = replica.max_sessions();
                drop(replica);
                inner.log_full("this node", max);
                return Err(backend(format!(
                    "this node holds {max} sessions, the most allowed \
                     (SessionStoreConfig::with_max_sessions): the new session is refused"
                )));
            }
            body
        };
        inner
            .bus
            .send(To::All, SERVICE, body, true)
            .await
            .map_err(backend)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest snapshot chunk, in bytes: half what the bus carries, at most
    /// [`MAX_CHUNK`].
    fn budget(&self) -> usize {
        (self.bus.max_body() / 2).min(MAX_CHUNK)
    }

    fn apply(&self, record: SessionRecord, from: &str) {
        let ts_ms = record.version.ts_ms;
        let mut replica = self.lock();
        let before = replica.evicted();
        let applied = replica.apply(record, now_ns());
        let after = replica.evicted();
        let max = replica.max_sessions();
        self.record_counts(&replica);
        drop(replica);
        self.log_evictions(before, after);
        match applied {
            Applied::TooFarAhead => {
                if let Some(held_back) = self.refused_log.allow() {
                    tracing::warn!(
                        from,
                        version_ms = ts_ms,
                        now_ms = now_ms(),
                        held_back,
                        "session record refused: its version is too far ahead of this node's \
                         clock (a clock far off, or a misbehaving node)"
                    );
                }
            }
            Applied::Full => self.log_full(from, max),
            Applied::New | Applied::Replaced | Applied::Stale => {}
        }
    }

    /// Log, at a bounded rate, that a new session written by `from` was refused at the cap.
    fn log_full(&self, from: &str, max: usize) {
        if let Some(held_back) = self.full_log.allow() {
            tracing::warn!(
                from,
                max,
                held_back,
                "new session refused: this node holds the most sessions allowed \
                 (SessionStoreConfig::with_max_sessions; give every node the same)"
            );
        }
    }

    /// Record how many live sessions and tombstones `replica` holds.
    fn record_counts(&self, replica: &Replica) {
        let (sessions, tombstones) = replica.counts();
        self.records.set(sessions as f64);
        self.tombstones.set(tombstones as f64);
    }

    /// Log that tombstones were evicted between `before` and `after`, at a bounded rate.
    fn log_evictions(&self, before: u64, after: u64) {
        if after != before
            && let Some(held_back) = self.evicted_log.allow()
        {
            tracing::warn!(
                evicted_tombstones = after,
                held_back,
                "session store at its cap of tombstones: evicted the oldest (total since start)"
            );
        }
    }

    fn request_snapshot(&self, peer: NodeId) {
        let Some(inner) = self.self_weak.upgrade() else {
            return;
        };
        self.bus.spawn(Box::pin(async move {
            let Ok(body) = codec::encode_body(&SessionMsg::SnapshotRequest) else {
                return;
            };
            tracing::debug!(%peer, "asking for a session snapshot");
            if let Err(e) = inner
                .bus
                .send(To::One(peer.clone()), SERVICE, body, false)
                .await
            {
                tracing::warn!(%peer, "session snapshot request not sent: {e}");
            }
        }));
    }

    /// Send `peer` a snapshot. While one is being sent to it, it is sent once more when
    /// that one ends: the peer may not have taken the one under way (its store was not
    /// running yet when it joined), and a second request is the peer saying so.
    fn send_snapshot(&self, peer: NodeId) {
        let Some(inner) = self.self_weak.upgrade() else {
            return;
        };
        {
            let mut snapshots = lock(&self.snapshots);
            if let Some(again) = snapshots.get_mut(&peer) {
                tracing::debug!(%peer, "session snapshot being sent to this peer: sent again after it");
                *again = true;
                return;
            }
            snapshots.insert(peer.clone(), false);
        }
        self.bus.spawn(Box::pin(async move {
            // Bounded: each round follows a request the peer made while the one before
            // was under way.
            loop {
                inner.stream_snapshot(&peer).await;
                let mut snapshots = lock(&inner.snapshots);
                match snapshots.get_mut(&peer) {
                    Some(again) if *again => *again = false,
                    _ => {
                        snapshots.remove(&peer);
                        return;
                    }
                }
            }
        }));
    }

    /// Send `peer` every record held, chunk by chunk, each read from the store when the
    /// peer handled the one before: a snapshot never holds more than one chunk here.
    async fn stream_snapshot(&self, peer: &NodeId) {
        let budget = self.budget();
        let (mut cursor, mut records, mut chunks, mut skipped) = (Cursor::Start, 0, 0, 0);
        loop {
            let (chunk, next, too_large) = self.lock().snapshot_chunk(cursor, now_ns(), budget);
            records += chunk.len();
            chunks += 1;
            skipped += too_large;
            let msg = SessionMsg::Snapshot {
                records: chunk,
                last: next.is_none(),
            };
            let sent = match codec::encode_body(&msg) {
                Ok(body) => {
                    self.bus
                        .send(To::One(peer.clone()), SERVICE, body, true)
                        .await
                }
                Err(e) => Err(bus::BusError::Backend(e.to_string())),
            };
            if let Err(e) = sent {
                tracing::warn!(%peer, "session snapshot interrupted: {e}");
                return;
            }
            match next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        if skipped > 0 {
            tracing::warn!(%peer, skipped, budget, "sessions larger than a snapshot chunk left out of the snapshot");
        }
        tracing::debug!(%peer, records, chunks, "session snapshot sent");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl bus::Handler for Inner {
    fn on_message(&self, from: &NodeId, body: Bytes) {
        let msg = match codec::decode_body::<SessionMsg>(&body) {
            Ok(msg) => msg,
            Err(e) => {
                if let Some(held_back) = self.unreadable_log.allow() {
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
    mut changes: BoxStream<'static, MemberChange>,
    purge_interval: std::time::Duration,
) {
    let mut purge = tokio::time::interval(purge_interval);
    purge.tick().await;
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(MemberChange::Joined(member)) => match inner.upgrade() {
                    Some(inner) => {
                        // Push what this node holds (the member may have missed writes made
                        // here just before it joined) and pull what it holds (it may have
                        // pushed before this store existed, or be the other side of a
                        // healed partition).
                        inner.send_snapshot(member.clone());
                        inner.request_snapshot(member);
                    }
                    None => return,
                },
                Some(MemberChange::Left(_)) => {}
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
mod tests;
