//! The public handle of a running node: members, membership events, graceful shutdown.

use std::{net::SocketAddr, sync::Arc};

use futures_core::Stream;

use super::Node;
use crate::membership::Member;

/// A change in the set of live members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node joined (or came back with a new generation).
    Joined(Member),
    /// A node left: gracefully, or found dead.
    Left(Member),
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

    /// Frames to peers this node has dropped since it started: a peer's send queue stayed
    /// full, the peer was unreachable, or its connection closed with frames still queued.
    /// Each drop is also logged at WARN level.
    pub fn frames_dropped(&self) -> u64 {
        self.node.frames_dropped()
    }

    /// The live members of the cluster, other than this node, sorted by name.
    pub fn members(&self) -> Vec<Member> {
        self.node.members()
    }

    /// Membership changes from now on: nodes joining, leaving or found dead.
    pub fn membership_events(&self) -> impl Stream<Item = MembershipEvent> + Send + 'static {
        self.node.events()
    }

    /// Start this node's replicated session store (feature `sessions`; see
    /// [`sessions`](crate::sessions)). Start one per node: a second one replaces the first.
    #[cfg(feature = "sessions")]
    pub fn session_store(
        &self,
        config: crate::sessions::SessionStoreConfig,
    ) -> crate::sessions::GossipSessionStore {
        crate::sessions::GossipSessionStore::start(self.node.clone(), &config)
    }

    /// Leave the cluster gracefully: peers drop this node at once (not after failure
    /// detection), pending requests complete with what they have, and the ports close.
    /// Sockets of this node stay connected; stop the HTTP server too.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}
