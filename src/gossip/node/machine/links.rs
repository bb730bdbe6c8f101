//! The machine's decisions about this node's outgoing links (the slots of [`super::slots`]):
//! which send queue a frame for each target goes to, when a connection attempt starts
//! (for a frame that finds none, or to verify a peer gossip shows, with backoff), what the
//! result of an attempt does (admitted, refused, failed, or too late: its slot was dropped
//! meanwhile), and when a slot is dropped (its peer left, was replaced by a newer
//! generation or is no longer known; the node leaves): its link is closed, or its attempt
//! abandoned.

use std::time::Duration;

use super::{Closing, Effect, Machine, SendQueue, To, slots::Teardown};
use crate::{
    gossip::{
        mesh::{ConnId, PeerAddrs},
        peer::PeerId,
    },
    rate_log::RateLog,
};

/// Frames dropped with a connection attempt that failed: logged at most once per period.
static CONNECT_LOG: RateLog = RateLog::new(Duration::from_secs(1));

/// Where a frame for one target goes: the send queue of its link, or why there is none.
pub(crate) type Route<S> = (PeerId, Result<S, &'static str>);

impl<S: SendQueue> Machine<S> {
    /// Where a frame for the peers `to` names goes, one route per target, in `routes`
    /// (emptied first): the send queue of each one's link, open or being made; a target
    /// with none gets a new one, its connection started by the [`Effect::Connect`]
    /// returned. Nothing once the node left.
    pub(crate) fn routes(&mut self, to: To<'_>, routes: &mut Vec<Route<S>>) -> Vec<Effect> {
        routes.clear();
        if self.life.has_left() {
            return Vec::new();
        }
        let links = &self.links;
        let route = |p: &PeerId| (p.clone(), links.queue(p).cloned().ok_or(""));
        match to {
            To::All => routes.extend(self.view.member_ids().map(route)),
            To::Peers(peers) => routes.extend(peers.iter().map(route)),
            To::Server(id) => routes.extend(self.server(id).as_ref().map(route)),
        }
        let mut effects = Vec::new();
        for (peer, route) in routes.iter_mut() {
            if route.is_err() {
                *route = self.start_link(peer, None, &mut effects);
            }
        }
        effects
    }

    /// Where a frame for `peer` goes, as [`Machine::routes`] says.
    pub(crate) fn route(&mut self, peer: &PeerId) -> (Result<S, &'static str>, Vec<Effect>) {
        if self.life.has_left() {
            return (Err("this node is shutting down"), Vec::new());
        }
        if let Some(queue) = self.links.queue(peer) {
            return (Ok(queue.clone()), Vec::new());
        }
        let mut effects = Vec::new();
        let route = self.start_link(peer, None, &mut effects);
        (route, effects)
    }

    /// What the link to `peer` holds: its connection, once made, and its send queue.
    pub(crate) fn link(&self, peer: &PeerId) -> Option<(Option<ConnId>, &S)> {
        self.links.peek(peer)
    }

    /// How many peers have a link, open or being made.
    #[cfg(test)]
    pub(crate) fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Start a connection to `peer` (`verify` as in [`super::slots`]), if its address is
    /// known: its send queue.
    fn start_link(
        &mut self,
        peer: &PeerId,
        verify: Option<bool>,
        effects: &mut Vec<Effect>,
    ) -> Result<S, &'static str> {
        let addr = self.view.mesh_addr(peer).ok_or("no known mesh address")?;
        let (attempt, queue) = self.links.start(peer, verify);
        effects.push(Effect::Connect {
            peer: peer.clone(),
            addr,
            attempt,
        });
        Ok(queue)
    }

    /// Connect to `peer`, which gossip shows and has not proved itself, unless a connection
    /// to it is open or being made; `first` is whether it is the first attempt.
    pub(super) fn verify(&mut self, peer: &PeerId, first: bool) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.links.queue(peer).is_none() {
            let _ = self.start_link(peer, Some(first), &mut effects);
        }
        effects
    }

    /// Connection `attempt` to `peer` was made as `conn`: admitted, it is the link (if the
    /// attempt is still its slot's: else it is closed as late); refused, it is closed and
    /// the attempt failed.
    pub(super) fn link_up(
        &mut self,
        peer: &PeerId,
        attempt: u64,
        conn: ConnId,
        addrs: PeerAddrs,
    ) -> Vec<Effect> {
        let close = |why| Effect::CloseLink {
            peer: peer.clone(),
            conn,
            why,
        };
        if !self.links.is_attempt(peer, attempt) {
            tracing::debug!(%peer, attempt, "connection made after its link was dropped: closed");
            return vec![close(Closing::Late)];
        }
        let mut effects = self.admit(peer, conn, addrs);
        let refused = effects.iter().find_map(|e| match e {
            Effect::Refuse(why) => Some(why.clone()),
            _ => None,
        });
        match refused {
            Some(why) => {
                effects.retain(|e| !matches!(e, Effect::Refuse(_)));
                effects.push(close(Closing::Refused));
                effects.extend(self.attempt_failed(peer, attempt, &format!("refused: {why}")));
            }
            None => {
                self.links.connected(peer, attempt, conn);
                tracing::debug!(%peer, "mesh link up");
            }
        }
        effects
    }

    /// Connection `attempt` to `peer` could not be made, for `reason`: what was queued on it
    /// is lost, so nothing waits for the peer any longer, and the next frame (or the next
    /// verification, after its backoff) starts another. A late result changes nothing.
    pub(super) fn attempt_failed(
        &mut self,
        peer: &PeerId,
        attempt: u64,
        reason: &str,
    ) -> Vec<Effect> {
        let Some(verify) = self.links.failed(peer, attempt) else {
            return Vec::new();
        };
        match verify {
            Some(true) => tracing::warn!(
                node = %self.me, %peer,
                "cannot verify gossip member over the mesh (will retry): {reason}"
            ),
            Some(false) => {
                tracing::debug!(node = %self.me, %peer, "still cannot verify gossip member: {reason}")
            }
            None => {
                if let Some(held_back) = CONNECT_LOG.allow() {
                    tracing::warn!(
                        node = %self.me, %peer, held_back,
                        "frames queued for a peer dropped, cannot connect: {reason}"
                    );
                }
            }
        }
        self.ledger.peer_gone(peer);
        Vec::new()
    }

    /// Drop the link to `peer`: close it, or abandon the attempt making it.
    pub(super) fn drop_link(&mut self, peer: &PeerId, why: Closing) -> Option<Effect> {
        let teardown = self.links.drop_slot(peer)?;
        Some(teardown_effect(peer.clone(), teardown, why))
    }

    /// Drop the links to the peers neither gossip nor a proven connection shows any more
    /// (say, peers only ever seen in gossip).
    pub(super) fn forget_unknown_links(&mut self) -> Vec<Effect> {
        let view = &self.view;
        let forgotten = self.links.forget(|p| view.knows(p));
        (forgotten.into_iter())
            .map(|(peer, teardown)| {
                tracing::debug!(%peer, "forgot the link to a peer no longer known");
                teardown_effect(peer, teardown, Closing::Forgotten)
            })
            .collect()
    }

    /// The node leaves: every attempt is abandoned; the links made are the shell's to tell
    /// and close ([`Effect::Leave`]).
    pub(super) fn drop_all_links(&mut self) -> Vec<Effect> {
        (self.links.drain().into_iter())
            .filter_map(|(peer, teardown)| match teardown {
                Teardown::Abort(attempt) => Some(Effect::Abort { peer, attempt }),
                Teardown::Close(_) => None,
            })
            .collect()
    }
}

/// What the shell does with what a dropped slot held.
fn teardown_effect(peer: PeerId, teardown: Teardown, why: Closing) -> Effect {
    match teardown {
        Teardown::Abort(attempt) => Effect::Abort { peer, attempt },
        Teardown::Close(conn) => Effect::CloseLink { peer, conn, why },
    }
}
