//! What a node tells of each member for an operator's view: round-trip time, send queue
//! depth and bytes, and frames dropped; and the periodic sampling of round-trip times as metrics.

use std::time::Duration;

use super::{Node, lock};
use crate::gossip::{
    membership::Member,
    mesh::{self, Link},
    peer::PeerId,
};

/// How often round-trip times ([`crate::metrics::PEER_RTT`]) and the datagrams the kernel
/// dropped ([`crate::metrics::SOCKET_DROPS`]) are recorded.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One member as this node sees it (see [`Cluster::peer_stats`](super::Cluster::peer_stats)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The member.
    pub member: Member,
    /// QUIC's smoothed round-trip time on this node's connection to it; `None` while that
    /// connection is being made.
    pub rtt: Option<Duration>,
    /// Frames waiting in its send queue.
    pub queue_depth: usize,
    /// Bytes of the frames waiting in its send queue (at most the peer budget, see
    /// [`with_peer_queue_bytes`](crate::GossipAdapterConfig::with_peer_queue_bytes)).
    pub queue_bytes: usize,
    /// Frames for it, or from it, dropped while it has been a member (every reason of
    /// [`crate::metrics::FRAMES_DROPPED`]).
    pub frames_dropped: u64,
}

impl Node {
    /// Every member with its round-trip time, queue depth and dropped frames, by name.
    pub(crate) fn peer_stats(&self) -> Vec<PeerStats> {
        self.members()
            .into_iter()
            .map(|member| {
                let (queue, link) = self.peek(&member.peer_id());
                let queue_depth = queue.as_ref().map_or(0, |q| q.depth());
                let queue_bytes = queue.as_ref().map_or(0, |q| q.bytes());
                let rtt = link.filter(|l| l.is_open()).map(|l| l.rtt());
                let frames_dropped = self.mesh.metrics().drops.of(&member.node_name);
                PeerStats {
                    member: Member::clone(&member),
                    rtt,
                    queue_depth,
                    queue_bytes,
                    frames_dropped,
                }
            })
            .collect()
    }

    /// What the link to `peer` holds now: its send queue, if it takes frames, and its
    /// connection, once made.
    fn peek(&self, peer: &PeerId) -> (Option<mesh::Sender>, Option<Link>) {
        let state = lock(&self.state);
        let Some((conn, queue)) = state.machine.link(peer) else {
            return (None, None);
        };
        let queue = Some(queue.clone()).filter(|q| !q.is_closed());
        (queue, conn.and_then(|c| state.links.get(&c).cloned()))
    }

    /// The connection this node sends its frames for `peer` on, while one is open.
    #[cfg(test)]
    pub(crate) fn link_to(&self, peer: &PeerId) -> Option<Link> {
        self.peek(peer).1.filter(|l| l.is_open())
    }

    /// Record the datagrams the kernel dropped for the mesh socket, and the round-trip time
    /// to every member this node has a connection to.
    pub(super) fn record_samples(&self) {
        self.mesh.record_socket_drops();
        for member in self.members() {
            let peer = member.peer_id();
            let (_, link) = self.peek(&peer);
            if let Some(rtt) = link.filter(|l| l.is_open()).map(|l| l.rtt()) {
                self.mesh.metrics().rtt(&peer.name, rtt);
            }
        }
    }
}
