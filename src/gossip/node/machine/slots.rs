//! This node's outgoing link to each peer, one slot per peer: none (the next frame for the
//! peer starts a connection), a connection being made (attempt `n`, frames wait in its send
//! queue), or open (connection `conn`, writing that queue). Generic over the send queue `S`,
//! which the table only holds, hands out, and has made by the shell's queue maker when an
//! attempt starts. Knows nothing of membership: the machine says which slots to start,
//! drop or forget, and what a dropped slot held is returned to close or abandon
//! ([`Teardown`]).

use std::collections::HashMap;

use crate::gossip::{mesh::ConnId, peer::PeerId};

/// What the machine needs of a send queue (a `mesh::Sender`, or a stand-in in tests).
pub(crate) trait SendQueue: Clone {
    /// Whether it takes no more frames (its connection closed, or it was cut as a slow
    /// consumer).
    fn is_closed(&self) -> bool;
}

/// Makes the send queue of a new connection attempt (`attempt`) to a peer; the shell keeps
/// the receiving end for that attempt.
pub(crate) type MakeQueue<S> = Box<dyn FnMut(&PeerId, u64) -> S + Send>;

/// The outgoing connection to one peer.
enum Slot<S> {
    /// Being made; frames wait in `queue`. `verify` is `Some(first attempt)` when it was
    /// started to verify a peer gossip shows.
    Connecting {
        attempt: u64,
        queue: S,
        verify: Option<bool>,
    },
    /// Made and admitted as `conn`, writing `queue`.
    Open { conn: ConnId, queue: S },
}

impl<S: SendQueue> Slot<S> {
    fn queue(&self) -> &S {
        match self {
            Self::Connecting { queue, .. } | Self::Open { queue, .. } => queue,
        }
    }

    fn teardown(self) -> Teardown {
        match self {
            Self::Connecting { attempt, .. } => Teardown::Abort(attempt),
            Self::Open { conn, .. } => Teardown::Close(conn),
        }
    }
}

/// What a dropped slot held.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Teardown {
    /// Stop making connection `attempt` (what waited in its queue is dropped with it); a
    /// late success is closed.
    Abort(u64),
    /// Close the link `conn`.
    Close(ConnId),
}

/// The slots, by peer (a peer with none has no entry).
pub(super) struct Slots<S> {
    slots: HashMap<PeerId, Slot<S>>,
    next_attempt: u64,
    make: MakeQueue<S>,
}

impl<S: SendQueue> Slots<S> {
    /// No slot; queues are made by `make`.
    pub(super) fn new(make: MakeQueue<S>) -> Self {
        Self {
            slots: HashMap::new(),
            next_attempt: 0,
            make,
        }
    }

    /// The send queue frames for `peer` go to now, if it takes frames (a connection is open
    /// or being made).
    pub(super) fn queue(&self, peer: &PeerId) -> Option<&S> {
        self.slots
            .get(peer)
            .map(Slot::queue)
            .filter(|q| !q.is_closed())
    }

    /// Start a connection attempt to `peer`, with a new send queue frames for it go to
    /// from now on; `verify` as [`Slot::Connecting`] says. What the slot held before
    /// (a queue that closed) is dropped: its connection closed or is closing by itself.
    /// The attempt and its queue.
    pub(super) fn start(&mut self, peer: &PeerId, verify: Option<bool>) -> (u64, S) {
        self.next_attempt += 1;
        let attempt = self.next_attempt;
        let queue = (self.make)(peer, attempt);
        let slot = Slot::Connecting {
            attempt,
            queue: queue.clone(),
            verify,
        };
        self.slots.insert(peer.clone(), slot);
        (attempt, queue)
    }

    /// Whether `attempt` is the connection `peer`'s slot is making.
    pub(super) fn is_attempt(&self, peer: &PeerId, attempt: u64) -> bool {
        matches!(self.slots.get(peer), Some(Slot::Connecting { attempt: a, .. }) if *a == attempt)
    }

    /// Whether a connection to `peer` is being made.
    #[cfg(test)]
    pub(super) fn is_connecting(&self, peer: &PeerId) -> bool {
        matches!(self.slots.get(peer), Some(Slot::Connecting { .. }))
    }

    /// Connection `attempt` to `peer` was made and admitted as `conn`: the slot holds it,
    /// if the attempt is still the slot's. Whether it is.
    pub(super) fn connected(&mut self, peer: &PeerId, attempt: u64, conn: ConnId) -> bool {
        if !self.is_attempt(peer, attempt) {
            return false;
        }
        if let Some(slot) = self.slots.remove(peer) {
            let queue = slot.queue().clone();
            self.slots.insert(peer.clone(), Slot::Open { conn, queue });
        }
        true
    }

    /// Connection `attempt` to `peer` could not be made: the slot is free for the next
    /// frame, if the attempt was still its own. `Some(verify)` then.
    pub(super) fn failed(&mut self, peer: &PeerId, attempt: u64) -> Option<Option<bool>> {
        let Some(Slot::Connecting { verify, .. }) = self.slots.get(peer) else {
            return None;
        };
        let verify = *verify;
        self.is_attempt(peer, attempt).then(|| {
            self.slots.remove(peer);
            verify
        })
    }

    /// Connection `conn` of `peer` closed: a slot holding it is free for the next frame.
    pub(super) fn closed(&mut self, peer: &PeerId, conn: ConnId) {
        if matches!(self.slots.get(peer), Some(Slot::Open { conn: c, .. }) if *c == conn) {
            self.slots.remove(peer);
        }
    }

    /// Empty the slot of `peer`: what it held, to abandon or close.
    pub(super) fn drop_slot(&mut self, peer: &PeerId) -> Option<Teardown> {
        self.slots.remove(peer).map(Slot::teardown)
    }

    /// Drop the slots of the peers `known` says nothing of: what they held, by peer.
    pub(super) fn forget(&mut self, known: impl Fn(&PeerId) -> bool) -> Vec<(PeerId, Teardown)> {
        let mut unknown: Vec<PeerId> = (self.slots.keys()).filter(|p| !known(p)).cloned().collect();
        unknown.sort_unstable();
        (unknown.into_iter())
            .filter_map(|p| self.drop_slot(&p).map(|t| (p, t)))
            .collect()
    }

    /// Drop every slot (the node leaves): what they held, by peer.
    pub(super) fn drain(&mut self) -> Vec<(PeerId, Teardown)> {
        let mut all: Vec<(PeerId, Teardown)> = (self.slots.drain())
            .map(|(p, slot)| (p, slot.teardown()))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// What the slot of `peer` holds: its open connection, if made, and its send queue.
    pub(super) fn peek(&self, peer: &PeerId) -> Option<(Option<ConnId>, &S)> {
        self.slots.get(peer).map(|slot| match slot {
            Slot::Connecting { queue, .. } => (None, queue),
            Slot::Open { conn, queue } => (Some(*conn), queue),
        })
    }

    /// How many peers have a slot.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
pub(in crate::gossip::node) mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;
    use crate::gossip::node::machine::view::tests::{conn, peer};

    /// A send queue that only says whether it was closed, and which attempt made it.
    #[derive(Clone, Debug, Default)]
    pub(in crate::gossip::node) struct FakeQueue(
        pub(in crate::gossip::node) Arc<AtomicBool>,
        pub(in crate::gossip::node) u64,
    );

    impl FakeQueue {
        pub(in crate::gossip::node) fn close(&self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    impl SendQueue for FakeQueue {
        fn is_closed(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    /// Queues made fresh, named by their attempt.
    pub(in crate::gossip::node) fn maker() -> MakeQueue<FakeQueue> {
        Box::new(|_, attempt| FakeQueue(Arc::default(), attempt))
    }

    fn slots() -> Slots<FakeQueue> {
        Slots::new(maker())
    }

    #[test]
    fn frames_wait_in_the_queue_of_the_connection_being_made_then_of_the_connection() {
        let mut s = slots();
        let a = peer("a", 1);
        assert!(s.queue(&a).is_none(), "nothing until a connection starts");
        let (attempt, _) = s.start(&a, None);
        assert_eq!(s.queue(&a).map(|q| q.1), Some(attempt));
        assert!(s.connected(&a, attempt, conn(4, false)));
        assert_eq!(s.queue(&a).map(|q| q.1), Some(attempt), "the same queue");
        assert_eq!(s.peek(&a).map(|(c, _)| c), Some(Some(conn(4, false))));
    }

    #[test]
    fn a_connection_not_made_leaves_the_next_frame_to_start_one() {
        let mut s = slots();
        let a = peer("a", 1);
        let (attempt, _) = s.start(&a, Some(true));
        assert_eq!(s.failed(&a, attempt), Some(Some(true)));
        assert!(s.queue(&a).is_none());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_queue_that_closed_takes_no_frame_and_is_replaced() {
        let mut s = slots();
        let a = peer("a", 1);
        let (attempt, queue) = s.start(&a, None);
        s.connected(&a, attempt, conn(4, false));
        queue.close();
        assert!(s.queue(&a).is_none(), "closed: the next frame starts anew");
        let (next, _) = s.start(&a, None);
        assert!(next > attempt);
        assert!(s.is_connecting(&a));
    }

    #[test]
    fn a_late_result_of_a_dropped_attempt_changes_nothing() {
        let mut s = slots();
        let a = peer("a", 1);
        let (old, _) = s.start(&a, None);
        assert_eq!(s.drop_slot(&a), Some(Teardown::Abort(old)));
        let (new, _) = s.start(&a, None);
        assert!(
            !s.connected(&a, old, conn(1, false)),
            "the old attempt is not the slot's"
        );
        assert_eq!(s.failed(&a, old), None);
        assert!(s.is_attempt(&a, new));
        assert!(s.connected(&a, new, conn(2, false)));
        assert_eq!(s.drop_slot(&a), Some(Teardown::Close(conn(2, false))));
    }

    #[test]
    fn a_close_notice_of_another_connection_leaves_the_slot() {
        let mut s = slots();
        let a = peer("a", 1);
        let (attempt, _) = s.start(&a, None);
        s.connected(&a, attempt, conn(2, false));
        s.closed(&a, conn(1, false));
        assert!(s.queue(&a).is_some());
        s.closed(&a, conn(2, false));
        assert!(s.queue(&a).is_none());
    }

    #[test]
    fn forgetting_drops_the_slots_of_unknown_peers_only() {
        let mut s = slots();
        let (a, b, c) = (peer("a", 1), peer("b", 1), peer("c", 1));
        let (attempt, _) = s.start(&a, None);
        s.connected(&a, attempt, conn(1, false));
        let (b_attempt, _) = s.start(&b, None);
        s.start(&c, None);
        let forgotten = s.forget(|p| *p == c);
        assert_eq!(
            forgotten,
            [
                (a, Teardown::Close(conn(1, false))),
                (b, Teardown::Abort(b_attempt))
            ]
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.drain().len(), 1);
        assert_eq!(s.len(), 0);
    }
}
