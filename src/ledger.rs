//! The request ledger: every request waiting for answers, whom it still waits for, what each
//! peer asked may still send back, and when the request stops waiting. Pure and the same for
//! every backend: no I/O, no clock of its own (the caller passes the time), no channel. What
//! a requester must hear comes out as [`Progress`] by [`Ledger::take_progress`]; the caller
//! hands it on.
//!
//! Generic over the request id `K`, who answers `P`, and the answer `A`, which says by
//! [`Answer::settle`] what it does to what its peer owes.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    fmt,
    hash::Hash,
    time::{Duration, Instant},
};

use crate::rate_log::RateLog;

/// Answers refused because a peer sent what it was not asked for: logged at most once per
/// period, process-wide.
static REFUSED_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// What one peer asked still owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owed {
    /// Nothing received yet: one answer.
    Answer,
    /// Acks still to come after an ack count.
    Acks(u32),
}

/// What an answer does to what its peer owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Its content belongs to the result: the requester hears it.
    pub(crate) keep: bool,
    /// What the peer still owes after it; `None`: nothing more.
    pub(crate) then: Option<Owed>,
}

/// An answer to a request, as the ledger sees it.
pub(crate) trait Answer {
    /// What this answer does to `owed`, what its peer owes; `None` when it is not what the
    /// peer owes (it is then dropped).
    fn settle(&self, owed: Owed) -> Option<Settled>;
}

/// What the requester of one request hears.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress<P, A> {
    /// An answer whose content belongs to the result.
    Kept(P, A),
    /// The peer owes nothing more.
    Answered(P),
    /// The peer was found gone (dead, left, unreachable, or its frame was dropped): the
    /// request no longer waits for it.
    Gone(P),
    /// The deadline passed while these peers still owed something: the request ended.
    TimedOut(Vec<P>),
    /// The request ended: nothing more comes.
    Ended,
}

/// Who waits for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    /// A requester, hearing [`Progress`].
    Requester,
    /// The node's own round (say, a flush round): only its end matters.
    Round,
}

/// One request waiting for answers.
struct Entry<P> {
    waiter: Waiter,
    /// The peers asked.
    asked: HashSet<P>,
    /// The peers still owing something, and what.
    owed: HashMap<P, Owed>,
    /// When it stops waiting.
    deadline: Instant,
}

/// Every request waiting for answers.
pub(crate) struct Ledger<K, P, A> {
    entries: HashMap<K, Entry<P>>,
    /// Every entry's deadline, earliest first; also those of entries that ended since
    /// (skipped when met, and dropped when they outnumber the entries).
    deadlines: BinaryHeap<Reverse<(Instant, K)>>,
    /// What requesters must hear, in order, not taken yet.
    progress: Vec<(K, Progress<P, A>)>,
    /// Rounds that ended, not taken yet, with the peers that had not answered when their
    /// deadline passed.
    ended_rounds: Vec<(K, Vec<P>)>,
}

impl<K, P, A> Default for Ledger<K, P, A> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            deadlines: BinaryHeap::new(),
            progress: Vec::new(),
            ended_rounds: Vec::new(),
        }
    }
}

impl<K, P, A> Ledger<K, P, A>
where
    K: Copy + Ord + Hash + fmt::Debug,
    P: Clone + Eq + Hash + fmt::Display + fmt::Debug,
    A: Answer,
{
    /// Book request `id`, sent to `targets`, waiting until `deadline`. With no target it
    /// ends at once.
    pub(crate) fn book(&mut self, id: K, targets: &[P], deadline: Instant) {
        if targets.is_empty() {
            self.progress.push((id, Progress::Ended));
        } else {
            self.insert(id, Waiter::Requester, targets, deadline);
        }
    }

    /// Book round `id`, sent to `targets`: it ends once each answered or was found gone, or
    /// at `deadline`, and is then given by [`Ledger::take_ended_rounds`] (at once, with no
    /// target).
    pub(crate) fn book_round(&mut self, id: K, targets: &[P], deadline: Instant) {
        if targets.is_empty() {
            self.ended_rounds.push((id, Vec::new()));
        } else {
            self.insert(id, Waiter::Round, targets, deadline);
        }
    }

    fn insert(&mut self, id: K, waiter: Waiter, targets: &[P], deadline: Instant) {
        let entry = Entry {
            waiter,
            asked: targets.iter().cloned().collect(),
            owed: targets.iter().map(|p| (p.clone(), Owed::Answer)).collect(),
            deadline,
        };
        self.entries.insert(id, entry);
        self.deadlines.push(Reverse((deadline, id)));
        if self.deadlines.len() > 2 * self.entries.len() + 1024 {
            self.deadlines = (self.entries.iter())
                .map(|(id, e)| Reverse((e.deadline, *id)))
                .collect();
        }
    }

    /// What requesters must hear since the last call, in order.
    pub(crate) fn take_progress(&mut self) -> Vec<(K, Progress<P, A>)> {
        std::mem::take(&mut self.progress)
    }

    /// The rounds that ended since the last call, in the order they ended, each with the
    /// peers it still waited for when its deadline passed (none when all answered).
    pub(crate) fn take_ended_rounds(&mut self) -> Vec<(K, Vec<P>)> {
        std::mem::take(&mut self.ended_rounds)
    }

    /// An answer from `from` to request `id`. Only what the peer still owes is taken: an
    /// answer to a request no longer pending, from a peer not asked, or beyond what the
    /// peer announced is dropped (and logged). Returns whether it was taken.
    pub(crate) fn respond(&mut self, from: &P, id: K, answer: A) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            tracing::debug!(peer = %from, "answer to a request no longer pending");
            return false;
        };
        let Some(owed) = entry.owed.get_mut(from) else {
            if entry.asked.contains(from) {
                // Say, an answer from a peer whose frame was thought lost.
                tracing::debug!(peer = %from, "answer from a peer this request no longer waits for");
            } else if let Some(held_back) = REFUSED_LOG.allow() {
                tracing::warn!(peer = %from, held_back, "answer dropped: the request was not sent to this peer");
            }
            return false;
        };
        let Some(Settled { keep, then }) = answer.settle(*owed) else {
            if let Some(held_back) = REFUSED_LOG.allow() {
                tracing::warn!(peer = %from, ?owed, held_back, "answer dropped: not what the peer owes");
            }
            return false;
        };
        let waiter = entry.waiter;
        match then {
            Some(next) => *owed = next,
            None => {
                entry.owed.remove(from);
            }
        }
        if waiter == Waiter::Requester {
            if keep {
                self.progress
                    .push((id, Progress::Kept(from.clone(), answer)));
            }
            if then.is_none() {
                self.progress.push((id, Progress::Answered(from.clone())));
            }
        }
        self.end_if_done(id);
        true
    }

    /// Every request stops waiting for `peer`.
    pub(crate) fn peer_gone(&mut self, peer: &P) {
        let ids: Vec<K> = self.entries.keys().copied().collect();
        for id in ids {
            self.peer_gone_from(id, peer);
        }
    }

    /// Request `id` stops waiting for `peer` (its frame could not be sent, say).
    pub(crate) fn peer_gone_from(&mut self, id: K, peer: &P) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(owed) = entry.owed.remove(peer) {
            if let Owed::Acks(n) = owed {
                tracing::info!(%peer, owed_acks = n, "request stops waiting for a peer that is gone");
            }
            if entry.waiter == Waiter::Requester {
                self.progress.push((id, Progress::Gone(peer.clone())));
            }
            self.end_if_done(id);
        }
    }

    /// The requests whose deadline passed by `now` stop waiting: a requester hears
    /// [`Progress::TimedOut`], a round is given as ended.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied()
            && at <= now
        {
            self.deadlines.pop();
            // A deadline of an entry that ended since is skipped.
            if self.entries.get(&id).is_none_or(|e| e.deadline != at) {
                continue;
            }
            let Some(entry) = self.entries.remove(&id) else {
                continue;
            };
            let mut waiting: Vec<P> = entry.owed.into_keys().collect();
            waiting.sort_by_key(ToString::to_string);
            match entry.waiter {
                Waiter::Requester => {
                    self.progress.push((id, Progress::TimedOut(waiting)));
                    self.progress.push((id, Progress::Ended));
                }
                Waiter::Round => self.ended_rounds.push((id, waiting)),
            }
        }
    }

    /// The earliest deadline of a request still waiting.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if self.entries.get(&id).is_some_and(|e| e.deadline == at) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Every request stops waiting for anyone (the node is leaving): each requester hears
    /// who it still waited for as gone; rounds end without being given as ended (whoever
    /// booked them releases what they held itself).
    pub(crate) fn release_all(&mut self) {
        self.deadlines.clear();
        for (id, entry) in self.entries.drain() {
            if entry.waiter == Waiter::Requester {
                let mut owed: Vec<P> = entry.owed.into_keys().collect();
                owed.sort_by_key(ToString::to_string);
                for peer in owed {
                    self.progress.push((id, Progress::Gone(peer)));
                }
                self.progress.push((id, Progress::Ended));
            }
        }
        self.ended_rounds.clear();
    }

    /// Forget request `id` (its requester stopped waiting).
    pub(crate) fn remove(&mut self, id: K) {
        self.entries.remove(&id);
    }

    /// How many requests are pending.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// End a request owed nothing more: its requester hears it ended, a round is given as
    /// ended.
    fn end_if_done(&mut self, id: K) {
        if !self.entries.get(&id).is_some_and(|e| e.owed.is_empty()) {
            return;
        }
        if let Some(entry) = self.entries.remove(&id) {
            match entry.waiter {
                Waiter::Requester => self.progress.push((id, Progress::Ended)),
                Waiter::Round => self.ended_rounds.push((id, Vec::new())),
            }
        }
    }
}
