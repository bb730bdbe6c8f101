//! Links to peers: the send queue frames for a peer go to, the connection made for it in
//! the background, and the attempts the machine asks for to verify peers gossip shows.

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::broadcast;

use super::{
    DROP_LOG, Input, MembershipEvent, Node, WeakInbound, lock,
    outgoing::{Connecting, Route},
};
use crate::gossip::mesh::{self, Link, PeerId};

impl Node {
    /// The send queue of the connection to `peer`, open or being made; if there is none, a
    /// new one, whose connection is made in the background. Never waits.
    pub(super) fn queue_for(&self, peer: &PeerId) -> Result<mesh::Sender, String> {
        if self.has_left() {
            return Err("this node is shutting down".into());
        }
        let connecting = match self.outgoing.route(peer)? {
            Route::Queue(queue) => return Ok(queue),
            Route::Connect(connecting) => connecting,
        };
        let node = self.weak().upgrade().ok_or("this node is stopping")?;
        let (addr, queue) = self.new_queue(peer, &connecting)?;
        let sender = queue.0.clone();
        let peer = peer.clone();
        self.spawn(async move {
            if let Err(reason) = node.connect(&peer, connecting, addr, queue).await {
                // The frames queued meanwhile are counted by their queue.
                if let Some(held_back) = DROP_LOG.allow() {
                    tracing::warn!(%peer, held_back, "frames queued for a peer dropped, cannot connect: {reason}");
                }
                let _ = node.feed(Input::Unreachable(peer));
            }
        });
        Ok(sender)
    }

    /// The outgoing link to `peer`, connecting if needed (after a connection being made by
    /// another caller, if any).
    pub(super) async fn link(&self, peer: &PeerId) -> Result<Link, String> {
        if self.has_left() {
            return Err("this node is shutting down".into());
        }
        let connecting = self.outgoing.connecting(peer).await;
        if let Some(link) = connecting.open_link() {
            return Ok(link);
        }
        let (addr, queue) = self.new_queue(peer, &connecting)?;
        self.connect(peer, connecting, addr, queue).await
    }

    /// A send queue for a new connection to `peer`, which frames for it go to from now on,
    /// and where to connect.
    pub(super) fn new_queue(
        &self,
        peer: &PeerId,
        connecting: &Connecting,
    ) -> Result<(SocketAddr, (mesh::Sender, mesh::Queue)), String> {
        let addr = lock(&self.state)
            .machine
            .view()
            .mesh_addr(peer)
            .ok_or_else(|| "no known mesh address".to_string())?;
        let queue = self.mesh.queue(&peer.name);
        connecting.queue_in(queue.0.clone());
        Ok((addr, queue))
    }

    /// Connect to `peer` at `addr`, writing `queue` on the connection; the link goes in the
    /// table once admitted. On failure what was queued is dropped.
    pub(super) async fn connect(
        &self,
        peer: &PeerId,
        connecting: Connecting,
        addr: SocketAddr,
        queue: (mesh::Sender, mesh::Queue),
    ) -> Result<Link, String> {
        let inbound = Arc::new(WeakInbound(self.weak()));
        // Connecting to a member that died can take the whole connect timeout; stop as soon
        // as the member is known gone, so that nothing (a request) waits on it any longer.
        let left = self.left(peer);
        let connected = tokio::select! {
            connected = self.mesh.connect_with(addr, Some(peer), inbound, queue) => {
                connected.map_err(|e| e.to_string())
            }
            () = left => Err("it is no longer a member".into()),
        };
        let admitted = connected.and_then(|(_, link)| {
            self.admit(peer, link.id(), link.addrs()).inspect_err(|_| {
                link.close(mesh::CLOSE_REFUSED, b"refused");
            })?;
            if !link.is_open() {
                // Closed before it was admitted: its close notice may have come first.
                let closed = Input::Closed(peer.clone(), link.id(), mesh::Closed::Locally);
                let _ = self.feed(closed);
                return Err("the connection closed at once".to_string());
            }
            Ok(link)
        });
        match admitted {
            Ok(link) => {
                tracing::debug!(%peer, %addr, "mesh link up");
                Ok(connecting.connected(link))
            }
            Err(reason) => {
                connecting.failed();
                Err(reason)
            }
        }
    }

    /// Resolves when `peer`, a member now, stops being one; never, if it is not one now (a
    /// peer still proving the secret is bounded by the connect timeout instead). A member
    /// refused for its parser stays connected, to hear this node's metadata: that is not
    /// leaving.
    pub(super) async fn left(&self, peer: &PeerId) {
        let mut events = self.events.subscribe();
        if !lock(&self.state).machine.view().is_member(peer) {
            return std::future::pending().await;
        }
        loop {
            match events.recv().await {
                Ok(MembershipEvent::Left(m))
                    if m.peer_id() == *peer
                        && !lock(&self.state).machine.view().is_refused(peer) =>
                {
                    return;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !lock(&self.state).machine.view().is_member(peer) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            }
        }
    }

    pub(super) fn drop_link(&self, peer: &PeerId) {
        self.outgoing.drop_slot(peer, b"replaced");
    }

    /// Try to connect to a live peer that has not proved the secret yet (the machine says
    /// when, with backoff).
    pub(super) fn verify(&self, peer: PeerId, first: bool) {
        let Some(node) = self.weak().upgrade() else {
            return;
        };
        self.spawn(async move {
            if let Err(reason) = node.link(&peer).await {
                if first {
                    tracing::warn!(%peer, "cannot verify gossip member over the mesh (will retry): {reason}");
                } else {
                    tracing::debug!(%peer, "still cannot verify gossip member: {reason}");
                }
            }
        });
    }
}
