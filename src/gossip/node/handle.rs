//! The public handle of a running node: members, membership events, graceful shutdown.

use std::{net::SocketAddr, sync::Arc};

use futures_core::Stream;

use super::Node;
use crate::gossip::membership::Member;

/// A change in the set of live members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node joined (or came back with a new generation).
    Joined(Member),
    /// A node left: gracefully, or found dead.
    Left(Member),
}

/// Gossip datagrams a node handled since it started (see [`Cluster::gossip_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GossipStats {
    /// Datagrams sealed and sent.
    pub sealed: u64,
    /// Datagrams received that opened under the cluster key.
    pub opened: u64,
    /// Datagrams received and dropped before gossip read them: not sealed under the cluster
    /// key, tampered with, replayed, stale, or left over when gossip was busy. Each kind is
    /// also logged, at most once every 10 s.
    pub refused: u64,
    /// Times the gossip task stopped and was started again, on the same port and identity
    /// (each is logged as an error). Up to three within a minute; at the fourth, gossip
    /// stays stopped and [`Cluster::failure`] says why.
    pub restarts: u64,
}

/// The handle of a running cluster node, from
/// [`GossipAdapterCtr::cluster`](crate::GossipAdapterCtr::cluster). Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    node: Arc<Node>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", self.node.me())
            .field("members", &self.node.members().len())
            .finish()
    }
}

impl Cluster {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Every live member with what this node sees of it: round-trip time, send queue depth
    /// and frames dropped, by name (an operator's view, as the `demo` example's
    /// `/cluster/peers` shows).
    pub fn peer_stats(&self) -> Vec<super::PeerStats> {
        self.node.peer_stats()
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node.me().name
    }

    /// The gossip address other nodes use for this one.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.node.addrs().0
    }

    /// The mesh address other nodes use for this one.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.node.addrs().1
    }

    /// Frames to peers this node has dropped since it started: a frame did not fit its
    /// peer's send queue budget (an emit never waits for room) or the node's, frames were
    /// still queued when their peer was cut as a slow consumer, the peer was unreachable, or
    /// its connection closed with frames still queued. Drops are logged at WARN level, at
    /// most one line a second (with how many were held back); the metric
    /// [`FRAMES_DROPPED`](crate::metrics::FRAMES_DROPPED) counts them by peer and reason.
    pub fn frames_dropped(&self) -> u64 {
        self.node.frames_dropped()
    }

    /// Bytes of the frames waiting in this node's send queues, for all peers (a frame queued
    /// for several peers counted once): at most the node budget
    /// ([`with_node_queue_bytes`](crate::GossipAdapterConfig::with_node_queue_bytes)).
    pub fn queued_bytes(&self) -> usize {
        self.node.queued_bytes()
    }

    /// Connections to peers this node closed as slow consumers (as NATS calls them): the
    /// peer took nothing of what was sent to it for the peer timeout while its connection
    /// stayed alive, or fell so far behind that its send queue went past its budget
    /// ([`with_peer_queue_bytes`](crate::GossipAdapterConfig::with_peer_queue_bytes)). Each
    /// is logged at WARN level; requests stop waiting for that peer, and the node connects
    /// afresh when it next has something for it.
    pub fn slow_peers_disconnected(&self) -> u64 {
        self.node.slow_peers_disconnected()
    }

    /// Gossip datagrams this node sealed, opened and refused since it started (all zero in
    /// `insecure_no_auth` mode and on a custom network, where gossip is not sealed), and
    /// how many times its gossip task was started again.
    pub fn gossip_stats(&self) -> GossipStats {
        let c = self.node.gossip_counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        GossipStats {
            sealed: get(&c.sealed),
            opened: get(&c.opened),
            refused: get(&c.refused),
            restarts: get(&c.restarts),
        }
    }

    /// Why this node stopped being part of the cluster on its own, or `None` while it is
    /// part of it. It stops if its gossip task fails for good (a task that stops is started
    /// again, up to three times a minute; see [`GossipStats::restarts`]): rather than run on
    /// with a view of the cluster that no longer changes, it leaves (its peers drop it at
    /// once), logs an error, and serves its own sockets only. A health check should fail on `Some`, so that the
    /// process is restarted.
    pub fn failure(&self) -> Option<String> {
        self.node.failure()
    }

    /// Whether this node is ready to serve as part of the cluster: it joined (or waited out
    /// the join timeout, see
    /// [`with_join_timeout`](crate::GossipAdapterConfig::with_join_timeout)), has not left,
    /// and has not failed. For a readiness probe.
    pub fn ready(&self) -> bool {
        self.node.ready()
    }

    /// Wait until at least `n` other nodes are members, at most `timeout`; whether they
    /// are. For a start-up script or a health check that needs the whole cluster.
    pub async fn wait_for_members(&self, n: usize, timeout: std::time::Duration) -> bool {
        use futures_util::StreamExt;
        let mut events = std::pin::pin!(self.node.events());
        let deadline = tokio::time::Instant::now() + timeout;
        while self.node.members().len() < n {
            // Each event is a change worth a look; the deadline bounds the wait.
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(_)) => {}
                Err(_) | Ok(None) => return self.node.members().len() >= n,
            }
        }
        true
    }

    /// The live members of the cluster, other than this node, sorted by name.
    ///
    /// A node whose socket.io server uses another parser than this one (see the crate
    /// docs, "One parser per cluster") is no member: it is dropped (with a
    /// [`MembershipEvent::Left`]) as soon as the nodes have told each other their parser.
    pub fn members(&self) -> Vec<Member> {
        self.node
            .members()
            .iter()
            .map(|m| Member::clone(m))
            .collect()
    }

    /// Membership changes from now on: nodes joining, leaving or found dead.
    pub fn membership_events(&self) -> impl Stream<Item = MembershipEvent> + Send + 'static {
        self.node.events()
    }

    /// Leave the cluster gracefully: peers drop this node at once (not after failure
    /// detection), pending requests complete with what they have, and the ports close.
    /// Sockets of this node stay connected; stop the HTTP server too.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }

    /// The node this handle is of, for the services that run on it.
    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }
}
