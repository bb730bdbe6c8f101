//! The requester's end of one request: a plain receiver of what the node's ledger tells
//! it (see [`crate::ledger`]), which keeps the request's span and metrics.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

use crate::{
    gossip::peer::PeerId,
    gossip::wire::{Id, ResponseBody},
    metrics::RequestEnd,
    rate_log::RateLog,
};

/// What the ledger tells the requester of one request.
pub(super) type Progress = crate::ledger::Progress<PeerId, ResponseBody>;

/// Requests that timed out waiting for peers: logged at most once per period, node-wide
/// (a member that reads requests and never answers times out every one).
static TIMED_OUT_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// One request of this node, waiting for its responses until every peer asked answered in
/// full or was found gone, or its deadline passed. Dropping it forgets the request.
///
/// It runs in a span of its own, `cluster_request` (kind, id, the peers waited for, and how
/// it ended: `outcome`), and records [`crate::metrics::REQUESTS`],
/// [`crate::metrics::REQUEST_DURATION`] and [`crate::metrics::REQUESTS_ENDED_EARLY`].
pub(crate) struct Pending {
    progress: mpsc::UnboundedReceiver<Progress>,
    /// What the request is, for the log line of a timeout.
    what: String,
    answered: Vec<PeerId>,
    gone: Vec<PeerId>,
    timed_out: Vec<PeerId>,
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
        node_label: &metrics::SharedString,
        id: Id,
        progress: mpsc::UnboundedReceiver<Progress>,
        (what, kind): (String, &'static str),
        targets: &[PeerId],
    ) -> Self {
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
            what,
            answered: Vec::new(),
            gone: Vec::new(),
            timed_out: Vec::new(),
            kind,
            node_label: node_label.clone(),
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
        match self.progress.recv().await {
            Some(Progress::Kept(peer, body)) => Some(Outcome::Kept(peer, body)),
            Some(Progress::Answered(peer)) => {
                self.answered.push(peer.clone());
                Some(Outcome::Answered(peer))
            }
            Some(Progress::Gone(peer)) => {
                self.peer_lost(peer.clone());
                Some(Outcome::Gone(peer))
            }
            Some(Progress::TimedOut(waiting)) => {
                self.timed_out = waiting;
                self.record_end(self.end_now());
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
            Some(Progress::Ended) | None => {
                self.progress.close();
                self.record_end(self.end_now());
                None
            }
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
        // The node forgets the request when it next has something to tell it, or at its
        // deadline.
        self.record_end(RequestEnd::Abandoned);
    }
}
