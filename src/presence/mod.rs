//! Who is online, cluster-wide: per topic (a room name or any string), the sockets tracked
//! under each key (say, a user id), each with a meta of its own (say, the device). One user
//! on a phone and a laptop is one key with two metas.
//!
//! [`Presence`] comes from the same configuration as the adapter
//! ([`ClusterAdapterCtr::presence`](crate::ClusterAdapterCtr::presence), or
//! [`Cluster::presence`](crate::Cluster::presence)), on either backend:
//!
//! - [`Presence::track`] a socket under a key of a topic with a meta, [`Presence::untrack`]
//!   it; an entry also goes when its socket disconnects (noticed within
//!   [`PresenceConfig::with_sweep_interval`]).
//! - [`Presence::list`] answers from this node's replica, with no network round trip.
//! - [`Presence::subscribe`] yields the [`PresenceDiff`]s of a topic: joins and leaves.
//! - When a node leaves or is found dead, all its entries go on every other node, with
//!   diffs saying so.
//!
//! ## How replicas converge
//!
//! Each node owns its entries: only it changes them, and it numbers its changes. The other
//! nodes apply them in that order; one that misses a change (a frame dropped on a full
//! queue) asks for the owner's whole state instead, and so does one that is behind the
//! owner's latest number, which every node announces every
//! [`PresenceConfig::with_announce_interval`]. A node that joins (or the other side of a
//! healed partition) exchanges its whole state with each member. So, once messages flow
//! again, every replica holds exactly the entries of the live nodes — a CRDT where each
//! entry has a single writer.
//!
//! With the gossip backend, presence messages travel over the authenticated QUIC mesh,
//! never over gossip. With the Redis backend, they travel over Redis pub/sub under the
//! backend's prefix, and a node is found dead when its own channel vanishes from
//! `PUBSUB CHANNELS` (listed every 250 ms; Redis drops the channel as soon as the dead
//! process's connection closes), and its entries go then. Both are the node's bus (the
//! crate's `bus` module): presence is written once over it, and runs in a build with the
//! `redis` feature alone too.
//!
//! ## Bounds
//!
//! One socket has at most [`PresenceConfig::with_max_per_socket`] entries (100 by default),
//! a node at most [`PresenceConfig::with_max_per_topic`] in one topic and
//! [`PresenceConfig::with_max_per_node`] in all; beyond them [`Presence::track`] fails with
//! [`PresenceError::SocketFull`], [`PresenceError::TopicFull`] or
//! [`PresenceError::NodeFull`]. No entry is ever evicted to make room. The share per socket
//! keeps one client (whose socket the application tracks in topic after topic, say ones it
//! names) from filling its node's bounds for everyone else. Topics, keys and socket ids are
//! at most 1 KiB, metas at most [`PresenceConfig::with_max_meta_bytes`] of JSON. What a peer
//! sends beyond these bounds is dropped, counted ([`Presence::dropped`]) and logged at a
//! bounded rate: give every node the same settings.
//!
//! ## Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use socketioxide::{SocketIo, extract::{Data, SocketRef}};
//! use socketioxide_cluster::{ClusterAdapter, ClusterAdapterCtr, presence::PresenceConfig};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ctr = ClusterAdapterCtr::from_env().await?;
//! let presence = ctr.presence(PresenceConfig::default());
//! let (_layer, io) = SocketIo::builder()
//!     .with_adapter::<ClusterAdapter<_>>(ctr)
//!     .build_layer();
//!
//! let p = presence.clone();
//! io.ns("/", async move |s: SocketRef<ClusterAdapter<_>>| {
//!     let p = p.clone();
//!     s.on("join", async move |s: SocketRef<ClusterAdapter<_>>, Data::<String>(nick)| {
//!         // Gone again when the socket disconnects, or when this node stops.
//!         p.track(&s, "lobby", &nick, &serde_json::json!({ "since": 1 })).ok();
//!         let online = p.list("lobby"); // nick -> metas, from every node
//!         s.emit("online", &online.keys().collect::<Vec<_>>()).ok();
//!     });
//! }).await?;
//!
//! let mut diffs = std::pin::pin!(presence.subscribe("lobby"));
//! while let Some(diff) = diffs.next().await {
//!     println!("joined: {:?}, left: {:?}", diff.joins.keys(), diff.leaves.keys());
//! }
//! # Ok(()) }
//! ```

mod config;
mod queue;
pub(crate) mod replica;
mod service;
#[cfg(all(test, feature = "cluster-gossip"))]
mod tests;
pub(crate) mod wire;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_core::Stream;
use serde::Serialize;
use serde_json::json;
use socketioxide::{SocketIo, adapter::Adapter, extract::SocketRef};
use tokio::sync::broadcast;

use crate::{bus::NodeId, rate_log::RateLog};
pub use config::{MAX_NAME_BYTES, PresenceConfig, PresenceError};
use queue::{Queue, Target};
use replica::{Change, Diff, Replica};
use wire::PresenceMsg;

/// One tracked entry of a key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PresenceMeta {
    /// The node the socket is connected to.
    pub node: String,
    /// The socket's id.
    pub socket: String,
    /// The meta given to [`Presence::track`].
    pub meta: serde_json::Value,
}

/// What changed in a topic: metas that appeared and metas that went, by key. A meta
/// replaced by [`Presence::track`] is both a leave (the old one) and a join (the new one).
///
/// As the `presence_diff` event carries it (see [`Presence::emit_events`]):
/// `{"topic": "lobby", "joins": {"ada": [{"node": "n1", "socket": "…", "meta": {…}}]},
/// "leaves": {}}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PresenceDiff {
    /// The topic.
    pub topic: String,
    /// Metas that appeared, by key.
    pub joins: BTreeMap<String, Vec<PresenceMeta>>,
    /// Metas that went, by key.
    pub leaves: BTreeMap<String, Vec<PresenceMeta>>,
}

fn meta(c: &Change) -> PresenceMeta {
    PresenceMeta {
        node: c.node.to_string(),
        socket: c.socket.clone(),
        // Metas are checked to be JSON when tracked or received.
        meta: serde_json::from_slice(&c.meta).unwrap_or(serde_json::Value::Null),
    }
}

fn by_key(changes: &[Change]) -> BTreeMap<String, Vec<PresenceMeta>> {
    let mut out: BTreeMap<String, Vec<PresenceMeta>> = BTreeMap::new();
    for c in changes {
        out.entry(c.key.clone()).or_default().push(meta(c));
    }
    out
}

impl From<&Diff> for PresenceDiff {
    fn from(d: &Diff) -> Self {
        Self {
            topic: d.topic.clone(),
            joins: by_key(&d.joins),
            leaves: by_key(&d.leaves),
        }
    }
}

/// A socket of this node with tracked entries.
struct LocalSocket {
    connected: Box<dyn Fn() -> bool + Send + Sync>,
    /// `(topic, key)` of its entries.
    entries: std::collections::BTreeSet<(String, String)>,
}

/// What a presence shares with its backend's tasks.
pub(crate) struct Shared {
    pub(crate) replica: Mutex<Replica>,
    local: Mutex<HashMap<String, LocalSocket>>,
    diffs: broadcast::Sender<Arc<Diff>>,
    /// This node's messages to the others, in order.
    pub(crate) queue: Arc<Queue<NodeId>>,
    lagged: AtomicU64,
    lagged_log: RateLog,
    pub(crate) dropped_log: RateLog,
    /// [`crate::metrics::PRESENCE_ENTRIES`] of this node.
    entries: metrics::Gauge,
    /// [`crate::metrics::PRESENCE_DROPPED`] of this node, for input refused.
    refused: metrics::Counter,
    /// Whether [`Presence::emit_events`] was called.
    events: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalSocket>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand diffs to the subscribers (call with the replica locked, so that they keep its
    /// order).
    pub(crate) fn publish(&self, replica: &Replica, diffs: Vec<Diff>) {
        if !diffs.is_empty() {
            self.entries.set(replica.len() as f64);
        }
        for d in diffs {
            // No subscriber is no error.
            let _ = self.diffs.send(Arc::new(d));
        }
    }

    /// This node's state, in chunks of about `budget` bytes, as of now.
    pub(crate) fn state(&self, budget: usize) -> Vec<PresenceMsg> {
        self.lock().own_state(budget)
    }

    /// Take in a message of the node `from`: apply it, queue this node's state for `from`
    /// when asked for it (one queued answers every request until it is sent), ask `from`
    /// for its state when a change was missed, and log (at a bounded rate) what was
    /// dropped.
    pub(crate) fn take_in(&self, from: &NodeId, msg: PresenceMsg) {
        let mut replica = self.lock();
        let reaction = replica.on_message(from, msg);
        if reaction.send_state {
            self.queue.push_state(from.clone());
        }
        if reaction.request_state {
            tracing::debug!(peer = %from, "presence: a change was missed, asking for the state");
            self.queue
                .push(Target::Peer(from.clone()), PresenceMsg::StateRequest);
        }
        self.publish(&replica, reaction.diffs);
        drop(replica);
        if let Some((n, _)) = reaction.dropped {
            self.refused.increment(n);
        }
        if let Some((n, reason)) = reaction.dropped
            && let Some(held_back) = self.dropped_log.allow()
        {
            tracing::warn!(peer = %from, dropped = n, held_back, "presence entries from a peer dropped: {reason}");
        }
    }

    /// Count and log (at a bounded rate) `n` items of a peer refused before they reached
    /// the replica, for `reason`.
    pub(crate) fn refused(&self, n: u64, reason: &str, from: &str) {
        self.lock().count_dropped(n);
        self.refused.increment(n);
        if let Some(held_back) = self.dropped_log.allow() {
            tracing::warn!(%from, held_back, "presence message dropped: {reason}");
        }
    }

    /// Queue the announcement of this node's latest sequence number for every member, and
    /// the states owed to peers.
    pub(crate) fn announce(&self) {
        let msg = self.lock().seq_msg();
        self.queue.push(Target::Members, msg);
        self.queue.push_owed_states();
    }

    /// Untrack the entries of the sockets that disconnected.
    pub(crate) fn sweep(&self) {
        let gone: Vec<(String, LocalSocket)> = {
            let mut local = self.local();
            let sids: Vec<String> = local
                .iter()
                .filter(|(_, s)| !(s.connected)())
                .map(|(sid, _)| sid.clone())
                .collect();
            sids.into_iter()
                .filter_map(|sid| local.remove_entry(&sid))
                .collect()
        };
        if gone.is_empty() {
            return;
        }
        let entries = gone.into_iter().flat_map(|(sid, s)| {
            s.entries
                .into_iter()
                .map(move |(topic, key)| (topic, key, sid.clone()))
        });
        let mut replica = self.lock();
        let (msgs, diffs) = replica.untrack(entries);
        self.queue.broadcast(msgs);
        self.publish(&replica, diffs);
    }
}

/// Cluster-wide presence (see the [module docs](self)). Cheap to clone; get it from
/// [`ClusterAdapterCtr::presence`](crate::ClusterAdapterCtr::presence), once per node.
#[derive(Clone)]
pub struct Presence {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("entries", &self.len())
            .finish()
    }
}

impl Presence {
    pub(crate) fn new(
        replica: Replica,
        queue: Arc<Queue<NodeId>>,
        config: &PresenceConfig,
    ) -> Self {
        let (diffs, _) = broadcast::channel(config.queue);
        let node = crate::metrics::label(replica.name());
        let entries = metrics::gauge!(crate::metrics::PRESENCE_ENTRIES, "node" => node.clone());
        entries.set(0.0);
        let refused = metrics::counter!(crate::metrics::PRESENCE_DROPPED, "node" => node, "reason" => "refused");
        Self {
            shared: Arc::new(Shared {
                replica: Mutex::new(replica),
                local: Mutex::new(HashMap::new()),
                diffs,
                queue,
                lagged: AtomicU64::new(0),
                lagged_log: RateLog::new(Duration::from_secs(10)),
                dropped_log: RateLog::new(Duration::from_secs(10)),
                entries,
                refused,
                events: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Track `socket` under `key` in `topic`, with `meta` (any value that serializes to
    /// JSON): a join for every subscriber on every node. Tracking the same socket under the
    /// same key again replaces its meta (a leave of the old one and a join of the new one).
    /// The entry goes when the socket disconnects.
    pub fn track<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        topic: &str,
        key: &str,
        meta: &impl Serialize,
    ) -> Result<(), PresenceError> {
        if !socket.connected() {
            return Err(PresenceError::NotConnected);
        }
        let meta = serde_json::to_vec(meta).map_err(|e| PresenceError::Meta(e.to_string()))?;
        let sid = socket.id.to_string();
        let mut local = self.shared.local();
        let mut replica = self.shared.lock();
        let (msgs, diffs) = replica.track(topic, key, &sid, Bytes::from(meta))?;
        let s = socket.clone();
        local
            .entry(sid)
            .or_insert_with(|| LocalSocket {
                connected: Box::new(move || s.connected()),
                entries: Default::default(),
            })
            .entries
            .insert((topic.to_string(), key.to_string()));
        self.shared.queue.broadcast(msgs);
        self.shared.publish(&replica, diffs);
        drop(replica);
        drop(local);
        if self.shared.events.load(Ordering::Relaxed) {
            // In the room first: every change applied from now on sends the socket a diff.
            socket.join(topic.to_string());
            // The state is listed and queued for the socket with the replica locked: a
            // change applied after the listing (on another thread) is published, so sent
            // as a diff, only once the state is queued, and the socket gets it after the
            // state. (Listed, then queued after the lock was released, a diff could come
            // first: a client applying diffs from its state on would miss that change.)
            let replica = self.shared.lock();
            let state = json!({ "topic": topic, "state": by_key(&replica.list(topic)) });
            if let Err(e) = socket.emit("presence_state", &state) {
                tracing::debug!(sid = %socket.id, "presence_state not sent: {e}");
            }
            drop(replica);
        }
        Ok(())
    }

    /// Send presence events to the clients, with `io` (the `SocketIo` of this node):
    ///
    /// - a socket tracked in a topic joins the room of that name and gets
    ///   `presence_state`: `{"topic": …, "state": {key: [{node, socket, meta}]}}`, the
    ///   topic as [`Presence::list`] gives it (its own entry included); every change not in
    ///   that state reaches the socket as a diff after it;
    /// - on every change of a topic, the sockets of this node in the room of that name get
    ///   `presence_diff`, a [`PresenceDiff`] (`{"topic", "joins", "leaves"}`). Each node
    ///   sends the diffs to its own sockets, so every client gets each diff once. A tracked
    ///   socket may get the diff of its own join after its `presence_state`.
    ///
    /// So a browser renders who is online with the plain Socket.IO client: start from
    /// `presence_state`, then apply each `presence_diff` (remove the leaves, add the joins,
    /// by socket). Call it once.
    pub fn emit_events<A: Adapter>(&self, io: SocketIo<A>) {
        self.shared.events.store(true, Ordering::Relaxed);
        let mut rx = self.shared.diffs.subscribe();
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(d) => {
                        let diff = PresenceDiff::from(&*d);
                        if let Err(e) = io
                            .to(d.topic.clone())
                            .local()
                            .emit("presence_diff", &diff)
                            .await
                        {
                            tracing::debug!(topic = %d.topic, "presence_diff not sent to every socket: {e}");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        if let Some(s) = shared.upgrade() {
                            s.lagged.fetch_add(n, Ordering::Relaxed);
                            if let Some(held_back) = s.lagged_log.allow() {
                                tracing::warn!(
                                    missed = n,
                                    held_back,
                                    "presence events lagged behind: clients missed diffs"
                                );
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Untrack `socket` from `key` in `topic` (nothing happens if it was not tracked there):
    /// a leave for every subscriber on every node.
    pub fn untrack<A: Adapter>(&self, socket: &SocketRef<A>, topic: &str, key: &str) {
        let sid = socket.id.to_string();
        let mut local = self.shared.local();
        if let Some(s) = local.get_mut(&sid) {
            s.entries.remove(&(topic.to_string(), key.to_string()));
            if s.entries.is_empty() {
                local.remove(&sid);
            }
        }
        let mut replica = self.shared.lock();
        let (msgs, diffs) = replica.untrack([(topic.to_string(), key.to_string(), sid)]);
        self.shared.queue.broadcast(msgs);
        self.shared.publish(&replica, diffs);
    }

    /// Who is present in `topic`, on every node: each key with all its metas. From this
    /// node's replica, without a network round trip.
    pub fn list(&self, topic: &str) -> BTreeMap<String, Vec<PresenceMeta>> {
        let changes = self.shared.lock().list(topic);
        by_key(&changes)
    }

    /// The diffs of `topic` from now on. A subscriber that lags more than
    /// [`PresenceConfig::with_queue`] diffs behind misses some (logged): read
    /// [`Presence::list`] again then.
    pub fn subscribe(&self, topic: &str) -> impl Stream<Item = PresenceDiff> + Send + 'static {
        let rx = self.shared.diffs.subscribe();
        let shared = Arc::downgrade(&self.shared);
        let topic = topic.to_string();
        futures_util::stream::unfold((rx, shared, topic), |(mut rx, shared, topic)| async move {
            loop {
                match rx.recv().await {
                    Ok(d) if d.topic == topic => {
                        let diff = PresenceDiff::from(&*d);
                        return Some((diff, (rx, shared, topic)));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        if let Some(s) = shared.upgrade() {
                            s.lagged.fetch_add(n, Ordering::Relaxed);
                            if let Some(held_back) = s.lagged_log.allow() {
                                tracing::warn!(%topic, missed = n, held_back, "presence subscriber lagged behind and missed diffs");
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// How many entries this node holds, of every node.
    pub fn len(&self) -> usize {
        self.shared.lock().len()
    }

    /// Whether this node holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries received from peers and dropped since this presence started: beyond the
    /// bounds, or from a node that left.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped()
    }

    /// Diffs missed by subscribers that lagged behind.
    pub fn lagged(&self) -> u64 {
        self.shared.lagged.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::{
        metrics::{PRESENCE_DROPPED, PRESENCE_ENTRIES, tests::TestRecorder},
        presence::wire::{PresenceEntry, PresenceOp},
    };

    fn origin(name: &str) -> NodeId {
        NodeId {
            name: name.into(),
            generation: 1,
        }
    }

    #[test]
    fn the_entries_gauge_follows_the_replica_and_refused_input_is_counted() {
        let recorder = TestRecorder::new();
        let config = PresenceConfig::default().with_max_per_node(1);
        let node: Arc<str> = "me".into();
        let (queue, _rx) = Queue::<NodeId>::new(&config, &node);
        let entries = || recorder.value(PRESENCE_ENTRIES, &[("node", "me")]);
        let refused = || recorder.value(PRESENCE_DROPPED, &[("node", "me"), ("reason", "refused")]);
        metrics::with_local_recorder(&recorder, || {
            let p = Presence::new(
                Replica::new(origin("me"), config.clone(), 64 * 1024),
                queue.clone(),
                &config,
            );
            let put = |key: &str| {
                PresenceOp::Put(PresenceEntry {
                    topic: "t".into(),
                    key: key.into(),
                    socket: "s".into(),
                    meta: Bytes::from_static(b"{}"),
                })
            };
            // Two entries from a peer: the second is beyond the bound of one per node.
            let msg = PresenceMsg::Delta {
                seq: 1,
                ops: vec![put("a"), put("b")],
            };
            p.shared.take_in(&origin("b"), msg);
            assert_eq!(p.len(), 1);
            assert_eq!(entries(), 1.0);
            assert_eq!(refused(), 1.0);
            p.shared.refused(2, "it does not decode", "b");
            assert_eq!(refused(), 3.0);
            assert_eq!(p.dropped(), 3);
            // The peer is found dead: its entry goes.
            let mut replica = p.shared.lock();
            let diffs = replica.left(&origin("b"));
            p.shared.publish(&replica, diffs);
            drop(replica);
            assert_eq!(entries(), 0.0);
        });
    }
}
