//! The requests of the Redis bus waiting for answers: booked in the crate's one request
//! ledger ([`crate::ledger`], which tracks whom each still waits for and its deadline), and
//! what each requester hears handed to its [`Replies`]. A node's answer, or the news that
//! it is gone, reaches its request once; what no request waits for is dropped (the ledger
//! logs it).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{
    bus::{NodeId, Outcome, Replies},
    ledger::{self, Ledger, Owed, Progress, Settled},
    rate_log::RateLog,
};

/// Requests that timed out waiting for nodes: logged at most once per period.
static TIMED_OUT_LOG: RateLog = RateLog::new(std::time::Duration::from_secs(10));

/// How a node answered a request, as the ledger takes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// The service's answer.
    Body(Bytes),
    /// The service's answer could not be sent, and why.
    Refused(String),
    /// Handled without an answer, or no such service there.
    Done,
}

impl ledger::Answer for Answered {
    fn settle(&self, owed: Owed) -> Option<Settled> {
        match owed {
            Owed::Answer => Some(Settled {
                keep: !matches!(self, Self::Done),
                then: None,
            }),
            // A request of the bus is answered once.
            Owed::Acks(_) => None,
        }
    }
}

type Heard = Progress<NodeId, Answered>;

/// The pending requests of one node, and where each one's progress goes.
#[derive(Default)]
struct State {
    ledger: Ledger<u64, NodeId, Answered>,
    /// Each takes at most two items per node asked, plus the end: never full.
    waiting: HashMap<u64, mpsc::Sender<Heard>>,
    next_id: u64,
}

impl State {
    /// Hand what the ledger says to the requesters.
    fn dispatch(&mut self) {
        for (id, progress) in self.ledger.take_progress() {
            let ended = progress == Progress::Ended;
            if let Some(tx) = self.waiting.get(&id) {
                // Closed: the requester went, and is forgotten below or when it drops.
                let _ = tx.try_send(progress);
            }
            if ended {
                self.waiting.remove(&id);
            }
        }
    }
}

/// The pending requests of one node's bus. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Requests(Arc<Mutex<State>>);

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Book a request to `nodes`, ending at `deadline` at the latest: its number, and its
    /// replies (which forget it when dropped).
    pub(crate) fn book(&self, nodes: &[NodeId], deadline: Instant) -> (u64, Replies) {
        let (tx, rx) = mpsc::channel(2 * nodes.len() + 2);
        let id = {
            let mut state = self.lock();
            state.next_id = state.next_id.wrapping_add(1);
            let id = state.next_id;
            state.waiting.insert(id, tx);
            state.ledger.book(id, nodes, deadline);
            state.dispatch();
            id
        };
        let booked = Booked {
            requests: self.clone(),
            id,
        };
        (id, replies(rx, deadline, booked))
    }

    /// What `from` answered to request `id`.
    pub(crate) fn answer(&self, from: &NodeId, id: u64, answer: Answered) {
        let mut state = self.lock();
        state.ledger.respond(from, id, answer);
        state.dispatch();
    }

    /// `node` was found gone: no request waits for it any longer.
    pub(crate) fn gone(&self, node: &NodeId) {
        let mut state = self.lock();
        state.ledger.peer_gone(node);
        state.dispatch();
    }

    /// Forget request `id` (its publish failed, or its requester went).
    pub(crate) fn forget(&self, id: u64) {
        let mut state = self.lock();
        state.ledger.remove(id);
        state.waiting.remove(&id);
    }

    /// Whether any request waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().waiting.is_empty()
    }

    /// The requests whose deadline passed stop waiting.
    fn expire(&self) {
        let mut state = self.lock();
        state.ledger.expire(Instant::now());
        state.dispatch();
    }
}

/// A booked request; forgotten when its replies are dropped.
struct Booked {
    requests: Requests,
    id: u64,
}

impl Drop for Booked {
    fn drop(&mut self) {
        self.requests.forget(self.id);
    }
}

/// The outcomes of a booked request, one per node (a node whose answer was kept is not told
/// again as done), until it ended.
fn replies(rx: mpsc::Receiver<Heard>, deadline: Instant, booked: Booked) -> Replies {
    let deadline = tokio::time::Instant::from_std(deadline);
    let state = (rx, booked, HashSet::<NodeId>::new());
    Replies::new(futures_util::stream::unfold(
        state,
        move |(mut rx, booked, mut told)| async move {
            loop {
                let heard = tokio::select! {
                    biased;
                    heard = rx.recv() => heard?,
                    () = tokio::time::sleep_until(deadline) => {
                        // The ledger says who was still waited for, then that it ended.
                        booked.requests.expire();
                        continue;
                    }
                };
                let outcome = match heard {
                    Progress::Kept(node, Answered::Body(body)) => {
                        told.insert(node.clone());
                        Outcome::Answer(node, body)
                    }
                    Progress::Kept(node, Answered::Refused(why)) => {
                        told.insert(node.clone());
                        Outcome::Refused(node, why)
                    }
                    Progress::Kept(_, Answered::Done) => continue,
                    Progress::Answered(node) if told.contains(&node) => continue,
                    Progress::Answered(node) => Outcome::Done(node),
                    Progress::Gone(node) => Outcome::Gone(node),
                    Progress::TimedOut(nodes) => {
                        if let Some(held_back) = TIMED_OUT_LOG.allow() {
                            tracing::warn!(waiting = ?nodes, held_back, "bus: request timed out waiting for nodes");
                        }
                        Outcome::TimedOut(nodes)
                    }
                    Progress::Ended => return None,
                };
                return Some((outcome, (rx, booked, told)));
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId {
            name: name.into(),
            generation: 1,
        }
    }

    async fn all(replies: Replies) -> Vec<Outcome> {
        tokio::time::timeout(Duration::from_secs(5), replies.collect())
            .await
            .expect("the replies end")
    }

    #[tokio::test]
    async fn each_node_is_told_once_and_the_request_ends_when_all_did() {
        let requests = Requests::default();
        let later = Instant::now() + Duration::from_secs(60);
        let (id, replies) = requests.book(&[node("a"), node("b"), node("c")], later);
        requests.answer(&node("a"), id, Answered::Body(Bytes::from_static(b"1")));
        // A second answer of a node, and one of a node not asked: dropped.
        requests.answer(&node("a"), id, Answered::Body(Bytes::from_static(b"2")));
        requests.answer(&node("x"), id, Answered::Done);
        requests.answer(&node("b"), id, Answered::Done);
        requests.gone(&node("c"));
        assert_eq!(
            all(replies).await,
            [
                Outcome::Answer(node("a"), Bytes::from_static(b"1")),
                Outcome::Done(node("b")),
                Outcome::Gone(node("c")),
            ]
        );
        assert!(requests.is_empty(), "forgotten once ended");
    }

    #[tokio::test]
    async fn the_deadline_tells_who_was_still_waited_for() {
        let requests = Requests::default();
        let soon = Instant::now() + Duration::from_millis(50);
        let (id, replies) = requests.book(&[node("a"), node("b")], soon);
        requests.answer(&node("a"), id, Answered::Refused("big".into()));
        assert_eq!(
            all(replies).await,
            [
                Outcome::Refused(node("a"), "big".into()),
                Outcome::TimedOut(vec![node("b")]),
            ]
        );
        // Late: no request waits for it.
        requests.answer(&node("b"), id, Answered::Done);
        assert!(requests.is_empty());
    }

    #[tokio::test]
    async fn a_request_to_no_node_ends_at_once_and_a_dropped_one_is_forgotten() {
        let requests = Requests::default();
        let later = Instant::now() + Duration::from_secs(60);
        let (_, replies) = requests.book(&[], later);
        assert_eq!(all(replies).await, []);
        let (_, replies) = requests.book(&[node("a")], later);
        assert!(!requests.is_empty());
        drop(replies);
        assert!(requests.is_empty());
    }
}
