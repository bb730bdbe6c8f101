//! The request ledger: every request waiting for responses, whom it still waits for, and
//! what each peer asked may still send back. Pure: driven by responses and by peers found
//! gone; what a requester sees comes out of one channel per request, read by [`Pending`].
//! The node's own flush rounds (see [`super::barrier`]) wait here too: when one ends, its
//! id is kept for the core to take ([`Ledger::take_ended_rounds`]).

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::Weak,
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use super::{Node, lock};
use crate::{
    gossip::peer::PeerId,
    gossip::wire::{Id, ResponseBody},
    metrics::RequestEnd,
    rate_log::RateLog,
};

/// Responses refused because a peer sent what it was not asked for: logged at most once
/// per period, node-wide.
static REFUSED_LOG: RateLog = RateLog::new(Duration::from_secs(10));
/// Requests that timed out waiting for peers: logged at most once per period, node-wide
/// (a member that reads requests and never answers times out every one).
static TIMED_OUT_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// What one peer asked still owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// Nothing received yet: one answer.
    Answer,
    /// Acks still to come after an ack count.
    Acks(u32),
}

/// What the ledger tells the requester of one request.
#[derive(Debug)]
pub(super) enum Progress {
    /// A response whose content belongs to the result: rooms, sockets, an ack, or why the
    /// peer could not send its answer.
    Kept(PeerId, ResponseBody),
    /// The peer owes nothing more.
    Answered(PeerId),
    /// The peer was found gone (dead, left, unreachable, or its frame was dropped): the
    /// request no longer waits for it.
    Gone(PeerId),
}

/// Who waits for one request.
enum Waiter {
    /// A requester, reading [`Progress`] from this channel. Unbounded, but never holds
    /// more than the peers asked owe: one answer each, then as many acks as each announced
    /// for itself.
    Requester(mpsc::UnboundedSender<Progress>),
    /// The node's flush round: only its end matters.
    Round,
}

/// One request waiting for responses.
struct Entry {
    waiter: Waiter,
    /// The peers asked.
    asked: HashSet<PeerId>,
    /// The peers still owing something, and what.
    owed: HashMap<PeerId, Owed>,
}

/// Every request of this node waiting for responses.
#[derive(Default)]
pub(super) struct Ledger {
    entries: HashMap<Id, Entry>,
    /// Flush rounds that ended (every peer asked answered or was found gone), not taken yet.
    ended_rounds: Vec<Id>,
}

impl Ledger {
    /// Book request `id`, sent to `targets`. The receiver ends once no target owes anything
    /// (at once, with none).
    pub(super) fn book(&mut self, id: Id, targets: &[PeerId]) -> mpsc::UnboundedReceiver<Progress> {
        let (tx, rx) = mpsc::unbounded_channel();
        if !targets.is_empty() {
            self.insert(id, Waiter::Requester(tx), targets);
        }
        rx
    }

    /// Book flush round `id`, sent to `targets` (at least one): it ends once each answered
    /// or was found gone, and its id is then given by [`Ledger::take_ended_rounds`].
    pub(super) fn book_round(&mut self, id: Id, targets: &[PeerId]) {
        self.insert(id, Waiter::Round, targets);
    }

    fn insert(&mut self, id: Id, waiter: Waiter, targets: &[PeerId]) {
        let entry = Entry {
            waiter,
            asked: targets.iter().cloned().collect(),
            owed: targets.iter().map(|p| (p.clone(), Owed::Answer)).collect(),
        };
        self.entries.insert(id, entry);
    }

    /// The flush rounds that ended since the last call, in the order they ended.
    pub(super) fn take_ended_rounds(&mut self) -> Vec<Id> {
        std::mem::take(&mut self.ended_rounds)
    }

    /// A response from `from` to request `id`. Only what the peer still owes is taken: a
    /// response to a request no longer pending, from a peer not asked, or beyond what the
    /// peer announced is dropped (and logged). Returns whether it was taken.
    pub(super) fn respond(&mut self, from: &PeerId, id: Id, body: ResponseBody) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            tracing::debug!(peer = %from, "response to a request no longer pending");
            return false;
        };
        let Some(owed) = entry.owed.get_mut(from) else {
            if entry.asked.contains(from) {
                // Say, an answer from a peer whose frame was thought lost.
                tracing::debug!(peer = %from, "response from a peer this request no longer waits for");
            } else if let Some(held_back) = REFUSED_LOG.allow() {
                tracing::warn!(peer = %from, held_back, "response dropped: the request was not sent to this peer");
            }
            return false;
        };
        let (keep, done) = match (&body, *owed) {
            (ResponseBody::NotHosted | ResponseBody::Done, Owed::Answer) => (false, true),
            (ResponseBody::AckCount(0), Owed::Answer) => (false, true),
            (ResponseBody::AckCount(n), Owed::Answer) => {
                *owed = Owed::Acks(*n);
                (false, false)
            }
            (
                ResponseBody::Rooms(_) | ResponseBody::Sockets(_) | ResponseBody::Service(_),
                Owed::Answer,
            ) => (true, true),
            (ResponseBody::Ack(..), Owed::Acks(n)) => {
                *owed = Owed::Acks(n - 1);
                (true, n == 1)
            }
            // The peer could not send what it owed, and says why: nothing more comes.
            (ResponseBody::Refused(_), _) => (true, true),
            (_, owed) => {
                if let Some(held_back) = REFUSED_LOG.allow() {
                    tracing::warn!(peer = %from, ?owed, held_back, "response dropped: not what the peer owes");
                }
                return false;
            }
        };
        if keep {
            entry.tell(Progress::Kept(from.clone(), body));
        }
        if done {
            entry.owed.remove(from);
            entry.tell(Progress::Answered(from.clone()));
            self.end_if_done(id);
        }
        true
    }

    /// Every request stops waiting for `peer`.
    pub(super) fn peer_gone(&mut self, peer: &PeerId) {
        let ids: Vec<Id> = self.entries.keys().copied().collect();
        for id in ids {
            self.peer_gone_from(id, peer);
        }
    }

    /// Request `id` stops waiting for `peer` (its frame could not be sent, say).
    pub(super) fn peer_gone_from(&mut self, id: Id, peer: &PeerId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(owed) = entry.owed.remove(peer) {
            if let Owed::Acks(n) = owed {
                tracing::info!(%peer, owed_acks = n, "request stops waiting for a peer that is gone");
            }
            entry.tell(Progress::Gone(peer.clone()));
            self.end_if_done(id);
        }
    }

    /// Every request stops waiting for anyone (this node is leaving); flush rounds end
    /// without being given as ended (the barrier releases everything itself).
    pub(super) fn release_all(&mut self) {
        for entry in self.entries.values() {
            for peer in entry.owed.keys() {
                entry.tell(Progress::Gone(peer.clone()));
            }
        }
        self.entries.clear();
    }

    /// Forget request `id` (its requester stopped waiting); the peers it still waited for.
    pub(super) fn remove(&mut self, id: Id) -> Vec<PeerId> {
        self.entries
            .remove(&id)
            .map(|e| e.owed.into_keys().collect())
            .unwrap_or_default()
    }

    /// How many requests are pending.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drop the entry of a request owed nothing more: its receiver ends, or, for a flush
    /// round, its id is kept as ended.
    fn end_if_done(&mut self, id: Id) {
        if self.entries.get(&id).is_some_and(|e| e.owed.is_empty())
            && let Some(Entry {
                waiter: Waiter::Round,
                ..
            }) = self.entries.remove(&id)
        {
            self.ended_rounds.push(id);
        }
    }
}

impl Entry {
    /// Tell the requester, if one reads (it fails only when the request was just dropped:
    /// nothing to tell then).
    fn tell(&self, progress: Progress) {
        if let Waiter::Requester(tx) = &self.waiter {
            let _ = tx.send(progress);
        }
    }
}

/// One request of this node, waiting for its responses until every peer asked answered in
/// full or was found gone, or its deadline passed. Dropping it forgets the request.
///
/// It runs in a span of its own, `cluster_request` (kind, id, the peers waited for, and how
/// it ended: `outcome`), and records [`crate::metrics::REQUESTS`],
/// [`crate::metrics::REQUEST_DURATION`] and [`crate::metrics::REQUESTS_ENDED_EARLY`].
pub(crate) struct Pending {
    progress: mpsc::UnboundedReceiver<Progress>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    id: Id,
    node: Weak<Node>,
    /// What the request is, for the log line of a timeout.
    what: String,
    answered: Vec<PeerId>,
    gone: Vec<PeerId>,
    timed_out: Vec<PeerId>,
    /// Whether the deadline passed.
    expired: bool,
    /// What the request is, for its metrics.
    kind: &'static str,
    /// The node's name, for its metrics.
    node_label: metrics::SharedString,
    started: Instant,
    /// How it ended, once it did.
    end: Option<RequestEnd>,
    span: tracing::Span,
}

/// What happened to a request, as [`Pending::next_outcome`] tells it.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A response whose content belongs to the result.
    Kept(PeerId, ResponseBody),
    /// The peer owes nothing more.
    Answered(PeerId),
    /// The peer was found gone: the request no longer waits for it.
    Gone(PeerId),
    /// The deadline passed while these peers still owed something.
    TimedOut(Vec<PeerId>),
}

impl Pending {
    pub(super) fn new(
        node: Weak<Node>,
        id: Id,
        progress: mpsc::UnboundedReceiver<Progress>,
        wait: Duration,
        (what, kind): (String, &'static str),
        targets: &[PeerId],
    ) -> Self {
        let node_label = node
            .upgrade()
            .map(|n| n.mesh.metrics().node.clone())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "cluster_request",
            node = %node_label,
            kind,
            id = %id,
            peers = ?targets,
            outcome = tracing::field::Empty,
        );
        Self {
            progress,
            deadline: Box::pin(tokio::time::sleep(wait)),
            id,
            node,
            what,
            answered: Vec::new(),
            gone: Vec::new(),
            timed_out: Vec::new(),
            expired: false,
            kind,
            node_label,
            started: Instant::now(),
            end: None,
            span,
        }
    }

    /// Record how the request ended, once.
    fn record_end(&mut self, end: RequestEnd) {
        if self.end.is_some() {
            return;
        }
        self.end = Some(end);
        self.span.record("outcome", end.label());
        let _in = self.span.enter();
        tracing::debug!(
            answered = self.answered.len(),
            gone = ?self.gone,
            "cluster request ended: {}", end.label()
        );
        crate::metrics::request_ended(&self.node_label, self.kind, end, self.started.elapsed());
    }

    /// How the request ended, if it ends now.
    fn end_now(&self) -> RequestEnd {
        if !self.timed_out.is_empty() {
            RequestEnd::TimedOut
        } else if !self.gone.is_empty() {
            RequestEnd::PeerLost
        } else {
            RequestEnd::Answered
        }
    }

    /// A peer this request waited for was found gone.
    fn peer_lost(&mut self, peer: PeerId) {
        if self.gone.is_empty() {
            crate::metrics::request_ended_early(&self.node_label, self.kind);
        }
        let _in = self.span.enter();
        tracing::debug!(%peer, "cluster request stops waiting for a peer found gone");
        self.gone.push(peer);
    }

    /// The next response worth keeping (rooms, sockets or an ack), in the order its peer
    /// sent them; `None` once nothing more is expected, or the deadline passed (then the
    /// peers still waited for are logged). Cancel safe.
    pub(crate) async fn next(&mut self) -> Option<(PeerId, ResponseBody)> {
        loop {
            if let Outcome::Kept(peer, body) = self.next_outcome().await? {
                return Some((peer, body));
            }
        }
    }

    /// What happened next to the request: a response worth keeping, a peer that owes
    /// nothing more or was found gone, or, once, the peers still waited for when the
    /// deadline passed (then logged); `None` once nothing more is expected. Cancel safe.
    pub(crate) async fn next_outcome(&mut self) -> Option<Outcome> {
        tokio::select! {
            biased;
            progress = self.progress.recv() => match progress {
                Some(Progress::Kept(peer, body)) => Some(Outcome::Kept(peer, body)),
                Some(Progress::Answered(peer)) => {
                    self.answered.push(peer.clone());
                    Some(Outcome::Answered(peer))
                }
                Some(Progress::Gone(peer)) => {
                    self.peer_lost(peer.clone());
                    Some(Outcome::Gone(peer))
                }
                None => {
                    self.record_end(self.end_now());
                    None
                }
            },
            () = self.deadline.as_mut(), if !self.expired => {
                self.expired = true;
                if let Some(node) = self.node.upgrade() {
                    self.timed_out = lock(&node.core).ledger.remove(self.id);
                }
                self.progress.close();
                self.record_end(self.end_now());
                if self.timed_out.is_empty() {
                    return None;
                }
                if let Some(held_back) = TIMED_OUT_LOG.allow() {
                    let _in = self.span.enter();
                    tracing::warn!(
                        waiting = ?self.timed_out,
                        answered = self.answered().len(),
                        gone = ?self.gone(),
                        held_back,
                        "{} timed out waiting for peers", self.what
                    );
                }
                Some(Outcome::TimedOut(self.timed_out.clone()))
            }
            else => None,
        }
    }

    /// Every response worth keeping, once the request ended.
    pub(crate) async fn collect(mut self) -> Vec<ResponseBody> {
        let mut out = Vec::new();
        while let Some((_, body)) = self.next().await {
            out.push(body);
        }
        out
    }

    /// The peers that answered in full so far.
    pub(crate) fn answered(&self) -> &[PeerId] {
        &self.answered
    }

    /// The peers found gone so far.
    pub(crate) fn gone(&self) -> &[PeerId] {
        &self.gone
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.record_end(RequestEnd::Abandoned);
        if let Some(node) = self.node.upgrade() {
            lock(&node.core).ledger.remove(self.id);
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
