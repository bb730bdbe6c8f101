//! The requests of the Redis bus waiting for answers, without I/O: for each, the nodes
//! that still owe one. A node's answer, or the news that it is gone, is handed to its
//! request exactly once; what no request waits for is turned away, and the caller logs it.

use std::collections::{BTreeSet, HashMap};

use tokio::sync::mpsc;

use crate::bus::{NodeId, Outcome};

/// Why an answer was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stray {
    /// No request of that number waits (it ended, or never was).
    NoRequest,
    /// The request does not wait for that node (not asked, or already answered).
    NotWaited,
}

struct Waiting {
    /// The nodes that still owe an answer.
    nodes: BTreeSet<NodeId>,
    /// Takes one outcome per node asked: never full.
    tx: mpsc::Sender<Outcome>,
}

/// The pending requests of one node.
#[derive(Default)]
pub(crate) struct Ledger {
    next_id: u64,
    pending: HashMap<u64, Waiting>,
}

impl Ledger {
    /// Book a request waiting for `nodes`: its number, and where its outcomes come (closed
    /// once every node answered or was found gone).
    pub(crate) fn book(&mut self, nodes: BTreeSet<NodeId>) -> (u64, mpsc::Receiver<Outcome>) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let (tx, rx) = mpsc::channel(nodes.len().max(1));
        if !nodes.is_empty() {
            self.pending.insert(id, Waiting { nodes, tx });
        }
        (id, rx)
    }

    /// The outcome `from` sends for request `id`, if the request waits for it.
    pub(crate) fn answer(&mut self, id: u64, from: &NodeId, outcome: Outcome) -> Result<(), Stray> {
        let waiting = self.pending.get_mut(&id).ok_or(Stray::NoRequest)?;
        if !waiting.nodes.remove(from) {
            return Err(Stray::NotWaited);
        }
        // One slot per node asked, each taken once: never full. Closed: the request was
        // dropped, nothing to tell.
        let _ = waiting.tx.try_send(outcome);
        if waiting.nodes.is_empty() {
            self.pending.remove(&id);
        }
        Ok(())
    }

    /// `node` was found gone: no request waits for it any longer.
    pub(crate) fn gone(&mut self, node: &NodeId) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, w)| w.nodes.contains(node))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let _ = self.answer(id, node, Outcome::Gone(node.clone()));
        }
    }

    /// Forget request `id` (its deadline passed, or it was dropped): the nodes it still
    /// waited for.
    pub(crate) fn cancel(&mut self, id: u64) -> Vec<NodeId> {
        self.pending
            .remove(&id)
            .map(|w| w.nodes.into_iter().collect())
            .unwrap_or_default()
    }

    /// Whether any request waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId {
            name: name.into(),
            generation: 1,
        }
    }

    fn outcomes(rx: &mut mpsc::Receiver<Outcome>) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            out.push(o);
        }
        out
    }

    #[test]
    fn each_node_answers_once_and_the_request_ends_when_all_did() {
        let mut ledger = Ledger::default();
        let (id, mut rx) = ledger.book([node("a"), node("b")].into());
        let answer = |n: &str| Outcome::Answer(node(n), Bytes::from_static(b"1"));
        assert_eq!(ledger.answer(id, &node("a"), answer("a")), Ok(()));
        assert_eq!(
            ledger.answer(id, &node("a"), answer("a")),
            Err(Stray::NotWaited),
            "a second answer of a node"
        );
        assert_eq!(
            ledger.answer(id, &node("c"), answer("c")),
            Err(Stray::NotWaited),
            "a node not asked"
        );
        assert_eq!(
            ledger.answer(id + 1, &node("b"), answer("b")),
            Err(Stray::NoRequest)
        );
        ledger.gone(&node("b"));
        assert_eq!(outcomes(&mut rx), [answer("a"), Outcome::Gone(node("b"))]);
        assert!(
            ledger.is_empty(),
            "ended once every node answered or was gone"
        );
        assert_eq!(
            ledger.answer(id, &node("b"), answer("b")),
            Err(Stray::NoRequest)
        );
    }

    #[test]
    fn a_node_found_gone_ends_the_wait_for_it_in_every_request() {
        let mut ledger = Ledger::default();
        let (one, mut rx1) = ledger.book([node("a"), node("b")].into());
        let (_two, mut rx2) = ledger.book([node("a")].into());
        ledger.gone(&node("a"));
        assert_eq!(outcomes(&mut rx1), [Outcome::Gone(node("a"))]);
        assert_eq!(outcomes(&mut rx2), [Outcome::Gone(node("a"))]);
        assert!(!ledger.is_empty(), "the first still waits for b");
        assert_eq!(ledger.cancel(one), [node("b")], "b is left by the deadline");
        assert!(ledger.is_empty());
    }

    #[tokio::test]
    async fn a_request_for_no_node_ends_at_once() {
        let mut ledger = Ledger::default();
        let (_, mut rx) = ledger.book(BTreeSet::new());
        assert!(ledger.is_empty());
        assert_eq!(rx.recv().await, None);
    }
}
