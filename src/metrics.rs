//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The library records and never installs a recorder: the application picks an exporter
//! (say `metrics-exporter-prometheus`) and installs it before it starts its node, as the
//! `minimal` and `chat` examples do. Without a recorder, recording costs nothing but a
//! check. Handles the library keeps for its busiest counters are taken when a node starts:
//! install the recorder first.
//!
//! Every name starts with `socketioxide_cluster_`. Labels have bounded cardinality: `node`
//! (this node's name), `peer` (another node's name), and the fixed sets of values listed
//! below; never a socket id or a room. A series for a peer that left stays in the
//! exporter (its last value) until the process restarts or the exporter forgets idle series.
//!
//! | name | type | unit | labels | what |
//! | --- | --- | --- | --- | --- |
//! | `socketioxide_cluster_members` | gauge | members | `node` | live members other than this node |
//! | `socketioxide_cluster_membership_changes_total` | counter | changes | `node`, `change` (`joined`, `left`) | members that joined or left |
//! | `socketioxide_cluster_links_up` | gauge | connections | `node`, `direction` (`in`, `out`) | authenticated mesh connections open |
//! | `socketioxide_cluster_frames_sent_total` | counter | frames | `node`, `kind` | frames written to peers' connections |
//! | `socketioxide_cluster_sent_bytes_total` | counter | bytes | `node`, `kind` | their bytes, length prefix included |
//! | `socketioxide_cluster_frames_received_total` | counter | frames | `node`, `kind` | frames read from peers |
//! | `socketioxide_cluster_received_bytes_total` | counter | bytes | `node`, `kind` | their bytes, length prefix included |
//! | `socketioxide_cluster_frames_dropped_total` | counter | frames | `node`, `peer`, `reason` | frames given up on (see below) |
//! | `socketioxide_cluster_requests_total` | counter | requests | `node`, `kind`, `outcome` | requests that ended, by how |
//! | `socketioxide_cluster_request_duration_seconds` | histogram | seconds | `node`, `kind` | from sending a request to its end |
//! | `socketioxide_cluster_requests_ended_early_total` | counter | requests | `node`, `kind` | requests that stopped waiting for a peer found gone |
//! | `socketioxide_cluster_peer_rtt_seconds` | gauge | seconds | `node`, `peer` | QUIC's smoothed round-trip time to the peer, sampled every second |
//! | `socketioxide_cluster_socket_drops_total` | counter | datagrams | `node` | datagrams the kernel dropped for want of room in the mesh socket's receive buffer (Linux), sampled every second |
//! | `socketioxide_cluster_gossip_datagrams_total` | counter | datagrams | `node`, `outcome` (`sealed`, `opened`, `refused`) | sealed gossip datagrams |
//! | `socketioxide_cluster_session_records` | gauge | records | `node` | live sessions held by the shared session store (feature `sessions`) |
//! | `socketioxide_cluster_session_tombstones` | gauge | records | `node` | deleted sessions it still remembers |
//! | `socketioxide_cluster_presence_entries` | gauge | entries | `node` | presence entries in this node's replica, of every node (both backends) |
//! | `socketioxide_cluster_presence_dropped_total` | counter | items | `node`, `reason` (`refused`, `queue_full`) | presence input from peers refused (beyond the bounds, not decodable, from a node that left), by item; presence messages to peers dropped, their queue full |
//! | `socketioxide_cluster_redis_messages_total` | counter | messages | `direction` (`published`, `received`) | Redis backend: messages on its channels |
//! | `socketioxide_cluster_redis_bytes_total` | counter | bytes | `direction` | their payload bytes |
//! | `socketioxide_cluster_redis_messages_dropped_total` | counter | messages | `reason` (`queue_full`) | received messages dropped, their channel's queue full |
//! | `socketioxide_cluster_redis_up` | gauge | boolean | none | 1 while the Redis connection answers its health check, else 0 |
//!
//! `kind` of a frame: `request`, `response`, `leave`, `service`, `meta`, `flush`. `kind` of a
//! request: the operation (`fetch_sockets`, `rooms`, `broadcast_with_ack`, `add_sockets`,
//! `del_sockets`, `disconnect_sockets`, `broadcast`) or `service` (a message to a
//! cluster-wide service that waits for answers). `outcome` of a request: `answered` (every
//! peer asked answered in full), `peer_lost` (at least one was found gone, the others
//! answered), `timed_out` (the request timeout passed), `abandoned` (the caller stopped
//! waiting first). `reason` of a dropped frame: `queue_full` (it did not fit the peer's
//! send queue budget, and the peer was cut as a slow consumer), `node_full` (it did not fit
//! the node's budget for all send queues: queued for no peer), `slow_consumer` (still queued
//! when its peer was cut as a slow consumer), `peer_gone` (its connection closed, could not
//! be made, or this node was leaving, with the frame still queued), `too_large` (larger than
//! peers accept: not sent to anyone), `refused` (a frame from a peer refused for its
//! socket.io parser, or a response it did not owe).
//!
//! The Redis backend records only the `redis_` and `presence_` metrics: membership, links and requests are
//! socketioxide-redis's own there.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use metrics::{
    Counter, Gauge, SharedString, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge,
};

/// Live members other than this node (gauge).
pub const MEMBERS: &str = "socketioxide_cluster_members";
/// Members that joined or left (counter; label `change`: `joined`, `left`).
pub const MEMBERSHIP_CHANGES: &str = "socketioxide_cluster_membership_changes_total";
/// Authenticated mesh connections open (gauge; label `direction`: `in`, `out`).
pub const LINKS_UP: &str = "socketioxide_cluster_links_up";
/// Frames written to peers' connections (counter; label `kind`).
pub const FRAMES_SENT: &str = "socketioxide_cluster_frames_sent_total";
/// Bytes of the frames written to peers (counter; label `kind`).
pub const BYTES_SENT: &str = "socketioxide_cluster_sent_bytes_total";
/// Frames read from peers (counter; label `kind`).
pub const FRAMES_RECEIVED: &str = "socketioxide_cluster_frames_received_total";
/// Bytes of the frames read from peers (counter; label `kind`).
pub const BYTES_RECEIVED: &str = "socketioxide_cluster_received_bytes_total";
/// Frames given up on (counter; labels `peer`, `reason`).
pub const FRAMES_DROPPED: &str = "socketioxide_cluster_frames_dropped_total";
/// Requests that ended (counter; labels `kind`, `outcome`).
pub const REQUESTS: &str = "socketioxide_cluster_requests_total";
/// How long requests took, from sending to their end (histogram, seconds; label `kind`).
pub const REQUEST_DURATION: &str = "socketioxide_cluster_request_duration_seconds";
/// Requests that stopped waiting for a peer found gone (counter; label `kind`).
pub const REQUESTS_ENDED_EARLY: &str = "socketioxide_cluster_requests_ended_early_total";
/// QUIC's smoothed round-trip time to a peer (gauge, seconds; label `peer`).
pub const PEER_RTT: &str = "socketioxide_cluster_peer_rtt_seconds";
/// Datagrams the kernel dropped for want of room in the mesh socket's receive buffer
/// (counter; Linux). QUIC sends what they carried again, late: see `net.core.rmem_max` in
/// the deployment guide.
pub const SOCKET_DROPS: &str = "socketioxide_cluster_socket_drops_total";
/// Sealed gossip datagrams (counter; label `outcome`: `sealed`, `opened`, `refused`).
pub const GOSSIP_DATAGRAMS: &str = "socketioxide_cluster_gossip_datagrams_total";
/// Live sessions held by the shared session store (gauge).
pub const SESSION_RECORDS: &str = "socketioxide_cluster_session_records";
/// Deleted sessions the shared session store still remembers (gauge).
pub const SESSION_TOMBSTONES: &str = "socketioxide_cluster_session_tombstones";
/// Presence entries in this node's replica, of every node (gauge).
pub const PRESENCE_ENTRIES: &str = "socketioxide_cluster_presence_entries";
/// Presence input refused and presence messages dropped (counter; label `reason`).
pub const PRESENCE_DROPPED: &str = "socketioxide_cluster_presence_dropped_total";
/// Redis backend: messages published and received (counter; label `direction`).
pub const REDIS_MESSAGES: &str = "socketioxide_cluster_redis_messages_total";
/// Redis backend: payload bytes published and received (counter; label `direction`).
pub const REDIS_BYTES: &str = "socketioxide_cluster_redis_bytes_total";
/// Redis backend: received messages dropped (counter; label `reason`).
pub const REDIS_DROPPED: &str = "socketioxide_cluster_redis_messages_dropped_total";
/// Redis backend: 1 while the connection answers its health check (gauge).
pub const REDIS_UP: &str = "socketioxide_cluster_redis_up";

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// One documented metric: its name, type, unit, labels and meaning.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricType,
    /// Its unit.
    pub unit: Unit,
    /// The labels it carries.
    pub labels: &'static [&'static str],
    /// What it counts.
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: MetricType,
    unit: Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

use MetricType::{Counter as C, Gauge as G, Histogram as H};

/// Every metric the library records.
pub const ALL: &[Metric] = &[
    m(
        MEMBERS,
        G,
        Unit::Count,
        &["node"],
        "Live members other than this node",
    ),
    m(
        MEMBERSHIP_CHANGES,
        C,
        Unit::Count,
        &["node", "change"],
        "Members that joined or left",
    ),
    m(
        LINKS_UP,
        G,
        Unit::Count,
        &["node", "direction"],
        "Authenticated mesh connections open",
    ),
    m(
        FRAMES_SENT,
        C,
        Unit::Count,
        &["node", "kind"],
        "Frames written to peers' connections",
    ),
    m(
        BYTES_SENT,
        C,
        Unit::Bytes,
        &["node", "kind"],
        "Bytes of the frames written to peers",
    ),
    m(
        FRAMES_RECEIVED,
        C,
        Unit::Count,
        &["node", "kind"],
        "Frames read from peers",
    ),
    m(
        BYTES_RECEIVED,
        C,
        Unit::Bytes,
        &["node", "kind"],
        "Bytes of the frames read from peers",
    ),
    m(
        FRAMES_DROPPED,
        C,
        Unit::Count,
        &["node", "peer", "reason"],
        "Frames given up on",
    ),
    m(
        REQUESTS,
        C,
        Unit::Count,
        &["node", "kind", "outcome"],
        "Cluster requests that ended",
    ),
    m(
        REQUEST_DURATION,
        H,
        Unit::Seconds,
        &["node", "kind"],
        "Duration of cluster requests",
    ),
    m(
        REQUESTS_ENDED_EARLY,
        C,
        Unit::Count,
        &["node", "kind"],
        "Requests that stopped waiting for a peer found gone",
    ),
    m(
        PEER_RTT,
        G,
        Unit::Seconds,
        &["node", "peer"],
        "Smoothed QUIC round-trip time to a peer",
    ),
    m(
        SOCKET_DROPS,
        C,
        Unit::Count,
        &["node"],
        "Datagrams the kernel dropped for want of room in the mesh socket's receive buffer",
    ),
    m(
        GOSSIP_DATAGRAMS,
        C,
        Unit::Count,
        &["node", "outcome"],
        "Sealed gossip datagrams",
    ),
    m(
        SESSION_RECORDS,
        G,
        Unit::Count,
        &["node"],
        "Live sessions held by the session store",
    ),
    m(
        SESSION_TOMBSTONES,
        G,
        Unit::Count,
        &["node"],
        "Deleted sessions still remembered",
    ),
    m(
        PRESENCE_ENTRIES,
        G,
        Unit::Count,
        &["node"],
        "Presence entries in this node's replica, of every node",
    ),
    m(
        PRESENCE_DROPPED,
        C,
        Unit::Count,
        &["node", "reason"],
        "Presence input refused and presence messages dropped",
    ),
    m(
        REDIS_MESSAGES,
        C,
        Unit::Count,
        &["direction"],
        "Redis messages published and received",
    ),
    m(
        REDIS_BYTES,
        C,
        Unit::Bytes,
        &["direction"],
        "Redis payload bytes published and received",
    ),
    m(
        REDIS_DROPPED,
        C,
        Unit::Count,
        &["reason"],
        "Received Redis messages dropped",
    ),
    m(
        REDIS_UP,
        G,
        Unit::Count,
        &[],
        "1 while the Redis connection answers its health check",
    ),
];

/// Describe every metric (type, unit, help) to the installed recorder. A node does it when
/// it starts; call it yourself if the recorder is installed later.
pub fn describe() {
    for metric in ALL {
        match metric.kind {
            MetricType::Counter => describe_counter!(metric.name, metric.unit, metric.help),
            MetricType::Gauge => describe_gauge!(metric.name, metric.unit, metric.help),
            MetricType::Histogram => describe_histogram!(metric.name, metric.unit, metric.help),
        }
    }
}

/// The label value of a node's name.
pub(crate) fn label(name: &Arc<str>) -> SharedString {
    SharedString::from(name.clone())
}

/// The kinds of frames, in the order of the wire's frame variants.
#[cfg(feature = "cluster-gossip")]
pub(crate) const FRAME_KINDS: [&str; 6] =
    ["request", "response", "leave", "service", "meta", "flush"];

/// Frames and bytes, by frame kind, in one direction: handles taken once.
#[cfg(feature = "cluster-gossip")]
pub(crate) struct FrameCounters {
    frames: [Counter; 6],
    bytes: [Counter; 6],
}

#[cfg(feature = "cluster-gossip")]
impl FrameCounters {
    fn new(node: &SharedString, frames: &'static str, bytes: &'static str) -> Self {
        let of = |name: &'static str| {
            FRAME_KINDS.map(|kind| counter!(name, "node" => node.clone(), "kind" => kind))
        };
        Self {
            frames: of(frames),
            bytes: of(bytes),
        }
    }

    /// Record what `tally` counted, and empty it.
    pub(crate) fn record(&self, tally: &mut FrameTally) {
        for (kind, (frames, bytes)) in tally.0.iter_mut().enumerate() {
            if *frames > 0 {
                self.frames[kind].increment(*frames);
                self.bytes[kind].increment(*bytes);
            }
            (*frames, *bytes) = (0, 0);
        }
    }
}

/// Frames and bytes by kind, counted locally by one task and recorded in one go (a batch
/// written, a chunk read): the shared counters are touched once a batch, not once a frame.
#[cfg(feature = "cluster-gossip")]
#[derive(Default)]
pub(crate) struct FrameTally([(u64, u64); 6]);

#[cfg(feature = "cluster-gossip")]
impl FrameTally {
    /// One frame of kind `kind` (an index of [`FRAME_KINDS`]; others are ignored) and
    /// `len` bytes.
    pub(crate) fn add(&mut self, kind: usize, len: usize) {
        if let Some((frames, bytes)) = self.0.get_mut(kind) {
            *frames += 1;
            *bytes += len as u64;
        }
    }

    /// Forget what was counted.
    pub(crate) fn clear(&mut self) {
        self.0 = Default::default();
    }
}

/// Why a frame was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// It did not fit the peer's send budget (the peer is cut as a slow consumer).
    QueueFull,
    /// It did not fit the node's send budget: queued for no peer.
    NodeFull,
    /// Still queued when its peer was cut as a slow consumer.
    SlowConsumer,
    /// Its connection closed, could not be made, or this node was leaving.
    PeerGone,
    /// Larger than peers accept.
    TooLarge,
    /// From a peer refused, or a response it did not owe.
    Refused,
}

impl DropReason {
    /// Its label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::NodeFull => "node_full",
            Self::SlowConsumer => "slow_consumer",
            Self::PeerGone => "peer_gone",
            Self::TooLarge => "too_large",
            Self::Refused => "refused",
        }
    }
}

/// Most peers whose dropped frames are counted apart for [`Drops::of`]; beyond, the
/// metric is still recorded.
const MAX_PEERS_COUNTED: usize = 1_024;

/// Frames dropped, by peer: recorded as [`FRAMES_DROPPED`] and kept per peer for a node's
/// own view of its peers.
pub(crate) struct Drops {
    node: SharedString,
    by_peer: Mutex<HashMap<Arc<str>, u64>>,
}

impl Drops {
    pub(crate) fn new(node: SharedString) -> Self {
        Self {
            node,
            by_peer: Mutex::default(),
        }
    }

    /// `n` frames for or from `peer` dropped for `reason`.
    pub(crate) fn record(&self, peer: &Arc<str>, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        counter!(
            FRAMES_DROPPED,
            "node" => self.node.clone(),
            "peer" => label(peer),
            "reason" => reason.label()
        )
        .increment(n);
        let mut by_peer = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_peer.get_mut(peer) {
            *count += n;
        } else if by_peer.len() < MAX_PEERS_COUNTED {
            by_peer.insert(peer.clone(), n);
        }
    }

    /// Frames dropped for or from `peer` so far.
    pub(crate) fn of(&self, peer: &str) -> u64 {
        let by_peer = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        by_peer.get(peer).copied().unwrap_or_default()
    }

    /// Forget `peer`'s count (it left).
    pub(crate) fn forget(&self, peer: &str) {
        let mut by_peer = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        by_peer.remove(peer);
    }
}

/// What the mesh of one node records: frames in and out, links up, drops.
#[cfg(feature = "cluster-gossip")]
pub(crate) struct MeshMetrics {
    pub(crate) node: SharedString,
    pub(crate) sent: FrameCounters,
    pub(crate) received: FrameCounters,
    pub(crate) links_in: Gauge,
    pub(crate) links_out: Gauge,
    pub(crate) drops: Drops,
    pub(crate) socket_drops: Counter,
}

#[cfg(feature = "cluster-gossip")]
impl MeshMetrics {
    pub(crate) fn new(node: &Arc<str>) -> Self {
        let node = label(node);
        Self {
            sent: FrameCounters::new(&node, FRAMES_SENT, BYTES_SENT),
            received: FrameCounters::new(&node, FRAMES_RECEIVED, BYTES_RECEIVED),
            links_in: gauge!(LINKS_UP, "node" => node.clone(), "direction" => "in"),
            links_out: gauge!(LINKS_UP, "node" => node.clone(), "direction" => "out"),
            drops: Drops::new(node.clone()),
            socket_drops: counter!(SOCKET_DROPS, "node" => node.clone()),
            node,
        }
    }

    /// The gauge of connections open in one direction.
    pub(crate) fn links(&self, incoming: bool) -> &Gauge {
        if incoming {
            &self.links_in
        } else {
            &self.links_out
        }
    }

    /// Record `peer`'s round-trip time.
    pub(crate) fn rtt(&self, peer: &Arc<str>, rtt: std::time::Duration) {
        gauge!(PEER_RTT, "node" => self.node.clone(), "peer" => label(peer)).set(rtt.as_secs_f64());
    }
}

/// What a node records of its membership.
#[cfg(feature = "cluster-gossip")]
pub(crate) struct NodeMetrics {
    members: Gauge,
    joined: Counter,
    left: Counter,
}

#[cfg(feature = "cluster-gossip")]
impl NodeMetrics {
    pub(crate) fn new(node: &Arc<str>) -> Self {
        let node = label(node);
        let members = gauge!(MEMBERS, "node" => node.clone());
        members.set(0.0);
        Self {
            members,
            joined: counter!(MEMBERSHIP_CHANGES, "node" => node.clone(), "change" => "joined"),
            left: counter!(MEMBERSHIP_CHANGES, "node" => node, "change" => "left"),
        }
    }

    /// A member joined (or left); `members` are left now.
    pub(crate) fn changed(&self, joined: bool, members: usize) {
        if joined { &self.joined } else { &self.left }.increment(1);
        self.members.set(members as f64);
    }
}

/// Sealed gossip datagrams, by outcome: handles taken once.
#[cfg(feature = "cluster-gossip")]
pub(crate) struct GossipMetrics {
    pub(crate) sealed: Counter,
    pub(crate) opened: Counter,
    pub(crate) refused: Counter,
}

#[cfg(feature = "cluster-gossip")]
impl GossipMetrics {
    pub(crate) fn new(node: &Arc<str>) -> Self {
        let node = label(node);
        let of = |outcome: &'static str| counter!(GOSSIP_DATAGRAMS, "node" => node.clone(), "outcome" => outcome);
        Self {
            sealed: of("sealed"),
            opened: of("opened"),
            refused: of("refused"),
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestEnd {
    /// Every peer asked answered in full.
    Answered,
    /// At least one peer was found gone; the others answered.
    PeerLost,
    /// The request timeout passed.
    TimedOut,
    /// The caller stopped waiting first.
    Abandoned,
}

impl RequestEnd {
    /// Its label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::PeerLost => "peer_lost",
            Self::TimedOut => "timed_out",
            Self::Abandoned => "abandoned",
        }
    }
}

/// Record a request of `kind` that ended with `outcome` after `took`.
pub(crate) fn request_ended(
    node: &SharedString,
    kind: &'static str,
    outcome: RequestEnd,
    took: std::time::Duration,
) {
    counter!(REQUESTS, "node" => node.clone(), "kind" => kind, "outcome" => outcome.label())
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "node" => node.clone(), "kind" => kind)
        .record(took.as_secs_f64());
}

/// Record that a request of `kind` stopped waiting for a peer found gone (once a request).
pub(crate) fn request_ended_early(node: &SharedString, kind: &'static str) {
    counter!(REQUESTS_ENDED_EARLY, "node" => node.clone(), "kind" => kind).increment(1);
}

#[cfg(test)]
pub(crate) mod tests;
