//! Carrying out the machine's decisions about outgoing links: the send queue made for each
//! connection attempt, the attempt itself (a task making the mesh connection, whose result
//! goes back to the machine), an attempt abandoned, and a link closed. The links made are
//! held in the node's state, by connection.

use std::{net::SocketAddr, sync::Arc};

use super::{Input, Node, State, WeakInbound, lock, machine::Closing};
use crate::gossip::mesh::{self, ConnId, PeerId};

impl super::SendQueue for mesh::Sender {
    fn is_closed(&self) -> bool {
        mesh::Sender::is_closed(self)
    }
}

impl Node {
    /// Start connection attempt `attempt` to `peer` at `addr` (with the lock on `state`
    /// held: an abort that follows finds it), writing the queue made for it.
    pub(super) fn start_attempt(
        &self,
        state: &mut State,
        peer: PeerId,
        addr: SocketAddr,
        attempt: u64,
    ) {
        let queue = lock(&self.made).remove(&attempt);
        // Without them the node is stopping: nothing to connect for.
        let (Some(queue), Some(node)) = (queue, self.weak().upgrade()) else {
            return;
        };
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move { node.connect(peer, addr, attempt, queue).await },
            self.mesh.span(),
        ));
        state.attempts.insert(attempt, task.abort_handle());
    }

    /// Stop making connection attempt `attempt` to `peer`: its queue is dropped with it.
    pub(super) fn abort_attempt(&self, state: &mut State, peer: &PeerId, attempt: u64) {
        if let Some(task) = state.attempts.remove(&attempt) {
            tracing::debug!(%peer, attempt, "connection attempt abandoned");
            task.abort();
        }
    }

    /// Close this node's connection `conn` to `peer`, for `why`.
    pub(super) fn close_link(&self, state: &mut State, peer: &PeerId, conn: ConnId, why: Closing) {
        tracing::debug!(%peer, ?why, "closing a link");
        let (code, reason): (u32, &[u8]) = match why {
            Closing::Replaced | Closing::Late => (mesh::CLOSE_UNUSED, b"replaced"),
            Closing::Forgotten => (mesh::CLOSE_UNUSED, b"forgotten"),
            Closing::Refused => (mesh::CLOSE_REFUSED, b"refused"),
        };
        if let Some(link) = state.links.remove(&conn) {
            link.close(code, reason);
        }
    }

    /// Make connection attempt `attempt` to `peer` at `addr`, writing `queue`, and tell the
    /// machine how it went.
    async fn connect(
        self: Arc<Self>,
        peer: PeerId,
        addr: SocketAddr,
        attempt: u64,
        queue: (mesh::Sender, mesh::Queue),
    ) {
        let inbound = Arc::new(WeakInbound(self.weak()));
        let made = self
            .mesh
            .connect_with(addr, Some(&peer), inbound, queue)
            .await;
        let mut state = lock(&self.state);
        state.attempts.remove(&attempt);
        let (input, link) = match made {
            Ok((_, link)) => {
                let conn = link.id();
                state.links.insert(conn, link.clone());
                let addrs = link.addrs();
                let input = Input::Connected {
                    peer: peer.clone(),
                    attempt,
                    conn,
                    addrs,
                };
                (input, Some(link))
            }
            Err(e) => {
                let reason = e.to_string();
                let input = Input::ConnectFailed {
                    peer: peer.clone(),
                    attempt,
                    reason,
                };
                (input, None)
            }
        };
        let effects = self.drive_locked(&mut state, input);
        drop(state);
        let _ = self.run(effects);
        if let Some(link) = link
            && !link.is_open()
        {
            // Closed before it was admitted: its close notice may have come first.
            self.on_connection_closed(&peer, link.id(), &mesh::Closed::Locally);
        }
    }
}
