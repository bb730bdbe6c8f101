//! Requests waiting for responses.

use std::{collections::HashSet, sync::Weak};

use tokio::sync::mpsc;

use super::{Node, lock};
use crate::{
    mesh::PeerId,
    wire::{Id, ResponseBody},
};

/// Responses to one request, and the peers it no longer waits for.
pub(crate) struct Pending {
    /// The peers the request was sent to.
    pub(crate) targets: Vec<PeerId>,
    /// Responses, in the order each peer sent them.
    pub(crate) responses: mpsc::UnboundedReceiver<(PeerId, ResponseBody)>,
    /// Peers found gone (dead, left, or unreachable) while the request is pending.
    pub(crate) gone: mpsc::UnboundedReceiver<PeerId>,
    id: Id,
    node: Weak<Node>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(node) = self.node.upgrade() {
            lock(&node.pending).remove(&self.id);
        }
    }
}

pub(super) struct PendingEntry {
    /// Unbounded, but never holds more than `allowance` allows.
    responses: mpsc::UnboundedSender<(PeerId, ResponseBody)>,
    gone: mpsc::UnboundedSender<PeerId>,
    waiting: HashSet<PeerId>,
    /// How many more responses the request may buffer: one answer per target plus some
    /// slack, raised by each announced ack count. A slow reader of the responses never
    /// loses one; a peer sending more than it announced is cut off.
    allowance: u64,
}

impl PendingEntry {
    /// Book a request `id` sent to `targets`, with `slack` responses of headroom; returns the
    /// entry to keep in the node and the [`Pending`] handed to the requester.
    pub(super) fn new(
        node: Weak<Node>,
        id: Id,
        targets: Vec<PeerId>,
        slack: usize,
    ) -> (Self, Pending) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        let entry = Self {
            responses: tx,
            gone: gone_tx,
            waiting: targets.iter().cloned().collect(),
            allowance: (targets.len() + slack) as u64,
        };
        let pending = Pending {
            targets,
            responses: rx,
            gone: gone_rx,
            id,
            node,
        };
        (entry, pending)
    }

    /// Hand a response from `from` to the requester, within the allowance.
    pub(super) fn deliver(&mut self, from: &PeerId, body: ResponseBody) {
        if self.allowance == 0 {
            tracing::warn!(peer = %from, "response dropped: more responses than the peer announced");
            return;
        }
        self.allowance -= 1;
        if let ResponseBody::AckCount(n) = body {
            self.allowance = self.allowance.saturating_add(u64::from(n));
        }
        // Fails only when the request was just dropped: nothing to deliver then.
        let _ = self.responses.send((from.clone(), body));
    }

    /// Stop waiting for `peer`, if the request was.
    pub(super) fn peer_gone(&mut self, peer: &PeerId) {
        if self.waiting.remove(peer) {
            let _ = self.gone.send(peer.clone());
        }
    }

    /// Stop waiting for anyone.
    pub(super) fn release_all(&mut self) {
        for peer in self.waiting.drain() {
            let _ = self.gone.send(peer);
        }
    }
}
