//! One order for what has returned: a join, leave or disconnect is applied on this node only
//! once every other member has delivered what it had queued for this node before the change
//! was seen here. Pure: the core feeds it state changes and the ends of flush rounds, and
//! carries out the [`Order`]s it gives.
//!
//! Why it holds. An emit returns once its frames are queued, one queue per peer; a member
//! sends every frame for this node on one stream, which this node applies in order and never
//! holds back. When a state change arrives (or this node starts one of its own), the barrier
//! asks every other member for a flush answer ([`crate::gossip::wire::Frame::Flush`]); each
//! answers on its own stream to this node, behind everything it had queued before it saw the
//! flush. An emit that returned on member B before the change was started was queued at B
//! before the change reached this node, so before the flush reached B: by the time B's answer
//! is in, that emit has been applied here. Once every member answered (or was found gone, or
//! the round timed out), the change is applied.
//!
//! - No deadlock: a flush is answered at once, whatever this node holds, and no stream is
//!   ever paused; a round waits for flush answers only, never for another state change.
//! - Order among state changes: they are applied in the order they arrived, whoever sent
//!   them (one queue), and this node's own parts join the same queue.
//! - Frames that are not state changes are never held: an emit or a request that arrives
//!   after a held change may be applied before it. Only what returned before the change
//!   started is promised to come first, and the change is in force when it returns (it is
//!   answered once applied).
//! - Coalescing: one round serves every state change received before it was sent; those
//!   received while it is in flight wait for the next one. At most one round is in flight,
//!   so a peer sending thousands of changes costs one round per round trip.
//! - Bounds: at most [`MAX_HELD`] changes and [`MAX_HELD_BYTES`] bytes are held. Past
//!   either, everything held is applied at once, in order, without waiting (counted, and
//!   logged at a bounded rate): memory stays bounded and nothing hangs; only the order with
//!   emits still on their way is lost for those changes.
//! - A change that selects no socket of this node (nothing here can see its order with
//!   the emits on their way) is applied at once when nothing is held; with something held,
//!   it keeps its place in the queue (a change held before it may add the sockets it
//!   selects).
//! - Members: a round asks the members of the moment, less the sender when it alone sent
//!   every change the round serves (its earlier frames are ahead of its change on its own
//!   stream). A member found gone is not waited for (the ledger's rule): what it queued is
//!   lost with it or already here. One that joins during a round is asked in the next; it
//!   becomes a member here in the handshake that makes this node a member there, so it
//!   cannot have had an emit for this node return before. Members that do not host the
//!   namespace are asked all the same: what they host is learnt from frames that may still
//!   be queued behind their emits.
//! - Timeout: a round ends at the latest after half the request timeout (a member neither
//!   answering nor found gone: a hung process, until the peer timeout notices it), so a
//!   change behind a round in flight is answered within the request timeout.

use std::time::Duration;

use crate::{
    gossip::{
        peer::PeerId,
        wire::{self, Id},
    },
    rate_log::RateLog,
};

/// Most state changes held at once.
pub(in crate::gossip::node) const MAX_HELD: usize = 4_096;
/// Most bytes of state changes held at once (room names counted at their size in memory).
pub(in crate::gossip::node) const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

/// State changes applied without waiting, past the bounds: logged at most once per period.
static UNORDERED_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// A state change waiting for its round.
#[derive(Debug)]
pub(in crate::gossip::node) enum Held {
    /// A join, leave or disconnect from a peer, for one of this node's namespaces.
    Request(PeerId, Box<wire::Request>),
    /// This node's own part of a state change it started, resumed by this token.
    Local(u64),
}

/// What the core must do.
#[derive(Debug)]
pub(in crate::gossip::node) enum Order {
    /// Ask each of `to` for a flush answer to `id`; the round ends once each answered or
    /// was found gone, or after the round timeout.
    Flush {
        /// The round's id.
        id: Id,
        /// The members asked.
        to: Vec<PeerId>,
    },
    /// Apply this state change now (in the order given).
    Apply(Held),
}

/// One round in flight, and the state changes it serves.
struct Round {
    id: Id,
    serves: Vec<(Held, usize)>,
}

/// The state changes waiting for their round.
#[derive(Default)]
pub(in crate::gossip::node) struct Barrier {
    in_flight: Option<Round>,
    /// Received since the round in flight was sent: served by the next one.
    next: Vec<(Held, usize)>,
    /// State changes held (in the round in flight and the next), and their bytes.
    held: usize,
    held_bytes: usize,
    /// Rounds started so far (their ids count them).
    rounds: u64,
    /// State changes applied without waiting, past the bounds.
    unordered: u64,
}

impl Barrier {
    /// A state change to apply once ordered; `members` are the live members now.
    pub(in crate::gossip::node) fn hold(&mut self, change: Held, members: &[PeerId]) -> Vec<Order> {
        let bytes = size(&change);
        if self.held + 1 > MAX_HELD || self.held_bytes + bytes > MAX_HELD_BYTES {
            return self.overflow(change);
        }
        self.held += 1;
        self.held_bytes += bytes;
        self.next.push((change, bytes));
        if self.in_flight.is_some() {
            return Vec::new();
        }
        self.start_round(members)
    }

    /// Round `id` ended: every member asked answered or was found gone, or it timed out.
    /// What it served is applied, and the next round starts if anything waits for one. A
    /// round that is not the one in flight (ended already) changes nothing.
    pub(in crate::gossip::node) fn round_ended(
        &mut self,
        id: Id,
        members: &[PeerId],
    ) -> Vec<Order> {
        if self.in_flight.as_ref().is_none_or(|r| r.id != id) {
            return Vec::new();
        }
        let Some(round) = self.in_flight.take() else {
            return Vec::new();
        };
        let mut orders = self.release(round.serves);
        if !self.next.is_empty() {
            orders.extend(self.start_round(members));
        }
        orders
    }

    /// Apply everything held, in order, without waiting (this node is leaving: no answer
    /// will come). A round still in the ledger changes nothing when it ends.
    pub(in crate::gossip::node) fn release_all(&mut self) -> Vec<Order> {
        let mut all = self.in_flight.take().map(|r| r.serves).unwrap_or_default();
        all.append(&mut self.next);
        self.release(all)
    }

    /// How many state changes are held, and their bytes.
    #[cfg(test)]
    pub(in crate::gossip::node) fn held(&self) -> (usize, usize) {
        (self.held, self.held_bytes)
    }

    /// State changes applied without waiting so far, past the bounds.
    #[cfg(test)]
    pub(in crate::gossip::node) fn unordered(&self) -> u64 {
        self.unordered
    }

    /// Whether nothing is held and no round is in flight.
    pub(in crate::gossip::node) fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.next.is_empty()
    }

    /// The id of the round in flight, if one is.
    #[cfg(test)]
    pub(in crate::gossip::node) fn in_flight(&self) -> Option<Id> {
        self.in_flight.as_ref().map(|r| r.id)
    }

    /// Send a round serving everything in `next`; with nobody to ask, apply it at once.
    fn start_round(&mut self, members: &[PeerId]) -> Vec<Order> {
        let serves = std::mem::take(&mut self.next);
        // The sender of every change served need not be asked: its frames before them are
        // ahead of them on its own stream.
        let sender = match serves.first() {
            Some((Held::Request(p, _), _)) => Some(p),
            _ => None,
        }
        .filter(|p| {
            serves
                .iter()
                .all(|(h, _)| matches!(h, Held::Request(q, _) if q == *p))
        });
        let to: Vec<PeerId> = members
            .iter()
            .filter(|m| Some(*m) != sender)
            .cloned()
            .collect();
        if to.is_empty() {
            return self.release(serves);
        }
        self.rounds += 1;
        let id = round_id(self.rounds);
        self.in_flight = Some(Round { id, serves });
        vec![Order::Flush { id, to }]
    }

    /// Past a bound: everything held, then `change`, applied now, in order.
    fn overflow(&mut self, change: Held) -> Vec<Order> {
        let mut all = self
            .in_flight
            .as_mut()
            .map(|r| std::mem::take(&mut r.serves))
            .unwrap_or_default();
        all.append(&mut self.next);
        all.push((change, 0));
        let n = all.len() as u64;
        self.unordered += n;
        if let Some(held_back) = UNORDERED_LOG.allow() {
            tracing::warn!(
                applied = n,
                held_back,
                total = self.unordered,
                "join/leave/disconnect applied without waiting for emits still on their way: \
                 more than {MAX_HELD} or {MAX_HELD_BYTES} bytes were held"
            );
        }
        self.release(all)
    }

    fn release(&mut self, changes: Vec<(Held, usize)>) -> Vec<Order> {
        changes
            .into_iter()
            .map(|(change, bytes)| {
                self.held = self.held.saturating_sub(1);
                self.held_bytes = self.held_bytes.saturating_sub(bytes);
                Order::Apply(change)
            })
            .collect()
    }
}

/// The id of this node's `n`-th round: never one of its requests' random ids in practice
/// (those are 16 random bytes), and answered only by the members asked.
fn round_id(n: u64) -> Id {
    let mut id = *b"flush\0\0\0\0\0\0\0\0\0\0\0";
    id[8..].copy_from_slice(&n.to_be_bytes());
    Id(id)
}

/// What a held state change takes in memory, about.
fn size(change: &Held) -> usize {
    let Held::Request(_, req) = change else {
        return std::mem::size_of::<Held>();
    };
    let names = |list: &[String]| -> usize {
        list.iter()
            .map(|r| r.len() + std::mem::size_of::<String>())
            .sum()
    };
    let kind = match &req.kind {
        wire::RequestKind::AddSockets(rooms) | wire::RequestKind::DelSockets(rooms) => names(rooms),
        _ => 0,
    };
    std::mem::size_of::<Held>()
        + std::mem::size_of::<wire::Request>()
        + req.ns.len()
        + kind
        + names(&req.opts.rooms)
        + names(&req.opts.except)
}

#[cfg(test)]
pub(in crate::gossip::node) mod tests {
    use super::*;
    use crate::gossip::{
        node::machine::view::tests::peer,
        wire::{Opts, RequestKind},
    };

    fn leave(n: u8, rooms: Vec<String>) -> wire::Request {
        wire::Request {
            ns: "/".into(),
            id: Id([n; 16]),
            origin: Id([0; 16]),
            kind: RequestKind::DelSockets(rooms),
            opts: Opts::default(),
            ack_timeout_ms: None,
        }
    }

    fn from(p: &PeerId, n: u8) -> Held {
        Held::Request(p.clone(), Box::new(leave(n, vec!["r".into()])))
    }

    /// Orders, written short: `flush to b#1,c#1`, `apply 3 from a#1`, `resume 7`.
    fn short(orders: &[Order]) -> Vec<String> {
        orders
            .iter()
            .map(|o| match o {
                Order::Flush { to, .. } => format!("flush to {}", names(to)),
                Order::Apply(Held::Request(p, r)) => format!("apply {} from {p}", r.id.0[0]),
                Order::Apply(Held::Local(t)) => format!("resume {t}"),
            })
            .collect()
    }

    /// Peers, written short: `a#1,b#1`.
    pub(in crate::gossip::node) fn names(peers: &[PeerId]) -> String {
        let names: Vec<String> = peers.iter().map(PeerId::to_string).collect();
        names.join(",")
    }

    fn round(orders: &[Order]) -> Id {
        match orders.last() {
            Some(Order::Flush { id, .. }) => *id,
            other => panic!("no round started: {other:?}"),
        }
    }

    #[test]
    fn a_change_is_applied_only_once_its_round_ended() {
        let (a, b, c) = (peer("a", 1), peer("b", 1), peer("c", 1));
        let members = [a.clone(), b.clone(), c.clone()];
        let mut barrier = Barrier::default();
        let orders = barrier.hold(from(&a, 1), &members);
        assert_eq!(
            short(&orders),
            ["flush to b#1,c#1"],
            "the sender is not asked"
        );
        assert_eq!(barrier.held().0, 1);
        let id = round(&orders);
        assert_eq!(
            short(&barrier.round_ended(id, &members)),
            ["apply 1 from a#1"]
        );
        assert_eq!(barrier.held(), (0, 0));
        assert!(
            barrier.round_ended(id, &members).is_empty(),
            "a round ends once"
        );
    }

    #[test]
    fn every_change_received_before_a_round_was_sent_shares_it_and_later_ones_wait_for_the_next() {
        let (a, b) = (peer("a", 1), peer("b", 1));
        let members = [a.clone(), b.clone()];
        let mut barrier = Barrier::default();
        let first = round(&barrier.hold(from(&a, 1), &members));
        // In flight: these came after it was sent, and wait for the next round, together.
        assert!(barrier.hold(from(&b, 2), &members).is_empty());
        assert!(barrier.hold(Held::Local(7), &members).is_empty());
        assert!(barrier.hold(from(&a, 3), &members).is_empty());
        let orders = barrier.round_ended(first, &members);
        assert_eq!(
            short(&orders),
            ["apply 1 from a#1", "flush to a#1,b#1"],
            "one round for the three, asking everyone: they come from several senders"
        );
        let second = round(&orders);
        assert_ne!(first, second);
        assert_eq!(
            short(&barrier.round_ended(second, &members)),
            ["apply 2 from b#1", "resume 7", "apply 3 from a#1"],
            "in the order they arrived"
        );
    }

    #[test]
    fn with_no_other_member_to_ask_a_change_is_applied_at_once() {
        let a = peer("a", 1);
        let mut barrier = Barrier::default();
        assert_eq!(short(&barrier.hold(Held::Local(1), &[])), ["resume 1"]);
        assert_eq!(
            short(&barrier.hold(from(&a, 2), std::slice::from_ref(&a))),
            ["apply 2 from a#1"],
            "the only other member is the sender"
        );
        assert_eq!(barrier.held(), (0, 0));
        assert!(barrier.in_flight().is_none());
    }

    #[test]
    fn a_member_that_joined_during_a_round_is_asked_in_the_next_one_gone_is_not() {
        let (a, b, c) = (peer("a", 1), peer("b", 1), peer("c", 1));
        let mut barrier = Barrier::default();
        let first = round(&barrier.hold(Held::Local(1), std::slice::from_ref(&a)));
        barrier.hold(Held::Local(2), &[a.clone(), b.clone()]);
        let orders = barrier.round_ended(first, &[b.clone(), c.clone()]);
        assert_eq!(short(&orders), ["resume 1", "flush to b#1,c#1"]);
    }

    #[test]
    fn past_the_count_bound_everything_held_is_applied_in_order_without_waiting() {
        let (a, b) = (peer("a", 1), peer("b", 1));
        let members = [a.clone(), b.clone()];
        let mut barrier = Barrier::default();
        let first = round(&barrier.hold(Held::Local(0), &members));
        for t in 1..MAX_HELD as u64 {
            assert!(barrier.hold(Held::Local(t), &members).is_empty());
        }
        assert_eq!(barrier.held().0, MAX_HELD);
        let orders = barrier.hold(Held::Local(MAX_HELD as u64), &members);
        let want: Vec<String> = (0..=MAX_HELD).map(|t| format!("resume {t}")).collect();
        assert_eq!(short(&orders), want);
        assert_eq!(barrier.held(), (0, 0));
        assert_eq!(barrier.unordered(), MAX_HELD as u64 + 1);
        // The round still in flight ends with nothing to apply; the next change waits again.
        assert!(barrier.round_ended(first, &members).is_empty());
        assert_eq!(
            short(&barrier.hold(Held::Local(9), &members)),
            ["flush to a#1,b#1"]
        );
    }

    #[test]
    fn past_the_byte_bound_everything_held_is_applied_in_order_without_waiting() {
        let (a, b) = (peer("a", 1), peer("b", 1));
        let members = [a.clone(), b.clone()];
        let mut barrier = Barrier::default();
        // The largest frame a peer sends: 65,536 room names of 250 bytes (16 MiB).
        let big = |n| {
            Held::Request(
                a.clone(),
                Box::new(leave(n, vec!["x".repeat(250); wire::MAX_ROOMS])),
            )
        };
        assert_eq!(short(&barrier.hold(big(1), &members)), ["flush to b#1"]);
        let mut n = 1;
        let orders = loop {
            n += 1;
            let orders = barrier.hold(big(n), &members);
            if !orders.is_empty() {
                break orders;
            }
            assert!(barrier.held().1 <= MAX_HELD_BYTES);
        };
        assert_eq!(n, 4, "three of the largest frames are held, not four");
        let want: Vec<String> = (1..=n).map(|i| format!("apply {i} from a#1")).collect();
        assert_eq!(short(&orders), want);
        assert_eq!(barrier.held(), (0, 0));
        assert_eq!(barrier.unordered(), 4);
    }

    #[test]
    fn leaving_applies_everything_held_in_order() {
        let (a, b) = (peer("a", 1), peer("b", 1));
        let members = [a.clone(), b.clone()];
        let mut barrier = Barrier::default();
        let first = round(&barrier.hold(from(&a, 1), &members));
        barrier.hold(Held::Local(2), &members);
        assert_eq!(
            short(&barrier.release_all()),
            ["apply 1 from a#1", "resume 2"]
        );
        assert_eq!(barrier.held(), (0, 0));
        assert!(barrier.round_ended(first, &members).is_empty());
    }
}
