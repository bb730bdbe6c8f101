//! Requests waiting for responses, and how much each peer asked may send back.

use std::{collections::HashMap, sync::Weak};

use tokio::sync::mpsc;

use super::{Node, lock};
use crate::{
    mesh::PeerId,
    rate_log::RateLog,
    wire::{Id, ResponseBody},
};

/// Responses refused because a peer sent what it was not asked for: logged at most once
/// per period, node-wide.
static REFUSED_LOG: RateLog = RateLog::new(std::time::Duration::from_secs(10));

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

/// What one peer asked may still send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allowance {
    /// Responses it may still send: one answer, then as many acks as it announced.
    left: u64,
    /// Whether it announced its ack count already (only the first count counts).
    counted: bool,
}

pub(super) struct PendingEntry {
    /// Unbounded, but never holds more than the allowances allow.
    responses: mpsc::UnboundedSender<(PeerId, ResponseBody)>,
    gone: mpsc::UnboundedSender<PeerId>,
    /// Per peer asked: how many responses it may still send. A peer not asked sends
    /// nothing; an ack count raises only the allowance of the peer that sent it, once. So
    /// a slow reader of the responses never loses one, and no peer can make a request hold
    /// more than what it announced for itself.
    allowed: HashMap<PeerId, Allowance>,
    /// Peers still waited for.
    waiting: std::collections::HashSet<PeerId>,
}

impl PendingEntry {
    /// Book a request `id` sent to `targets`; returns the entry to keep in the node and the
    /// [`Pending`] handed to the requester.
    pub(super) fn new(node: Weak<Node>, id: Id, targets: Vec<PeerId>) -> (Self, Pending) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        let entry = Self {
            responses: tx,
            gone: gone_tx,
            allowed: targets
                .iter()
                .map(|p| {
                    let first = Allowance {
                        left: 1,
                        counted: false,
                    };
                    (p.clone(), first)
                })
                .collect(),
            waiting: targets.iter().cloned().collect(),
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

    /// Hand a response from `from` to the requester, within `from`'s allowance. Returns
    /// whether it was delivered.
    pub(super) fn deliver(&mut self, from: &PeerId, body: ResponseBody) -> bool {
        let Some(allowance) = self.allowed.get_mut(from) else {
            if let Some(held_back) = REFUSED_LOG.allow() {
                tracing::warn!(peer = %from, held_back, "response dropped: the request was not sent to this peer");
            }
            return false;
        };
        let second_count = allowance.counted && matches!(body, ResponseBody::AckCount(_));
        if allowance.left == 0 || second_count {
            if let Some(held_back) = REFUSED_LOG.allow() {
                tracing::warn!(peer = %from, held_back, "response dropped: more responses than the peer announced");
            }
            return false;
        }
        allowance.left -= 1;
        if let ResponseBody::AckCount(n) = body {
            allowance.counted = true;
            allowance.left = allowance.left.saturating_add(u64::from(n));
        }
        // Fails only when the request was just dropped: nothing to deliver then.
        let _ = self.responses.send((from.clone(), body));
        true
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AckResult, Value};

    fn peer(name: &str) -> PeerId {
        PeerId {
            name: name.into(),
            generation: 1,
        }
    }

    fn ack() -> ResponseBody {
        ResponseBody::Ack(Id([0; 16]), AckResult::Ok(Value::Bytes(Default::default())))
    }

    #[test]
    fn only_the_peers_asked_may_answer() {
        let (a, b, stranger) = (peer("a"), peer("b"), peer("z"));
        let (mut entry, mut pending) =
            PendingEntry::new(Weak::new(), Id([1; 16]), vec![a.clone(), b.clone()]);
        assert!(
            !entry.deliver(&stranger, ResponseBody::Rooms(vec![])),
            "not asked"
        );
        assert!(entry.deliver(&a, ResponseBody::Rooms(vec![])));
        assert!(
            !entry.deliver(&a, ResponseBody::Rooms(vec![])),
            "one answer each"
        );
        assert!(entry.deliver(&b, ResponseBody::NotHosted));
        let mut got = Vec::new();
        while let Ok((p, _)) = pending.responses.try_recv() {
            got.push(p);
        }
        assert_eq!(got, [a, b]);
    }

    #[test]
    fn an_ack_count_raises_only_its_senders_allowance_once() {
        let (a, b) = (peer("a"), peer("b"));
        let (mut entry, _pending) =
            PendingEntry::new(Weak::new(), Id([1; 16]), vec![a.clone(), b.clone()]);
        assert!(entry.deliver(&a, ResponseBody::AckCount(2)));
        assert!(
            !entry.deliver(&a, ResponseBody::AckCount(1_000)),
            "a second count: refused"
        );
        assert!(entry.deliver(&a, ack()) && entry.deliver(&a, ack()));
        assert!(!entry.deliver(&a, ack()), "a announced 2");
        assert!(entry.deliver(&b, ResponseBody::AckCount(0)));
        assert!(
            !entry.deliver(&b, ack()),
            "a's count does not raise b's allowance"
        );
    }
}
