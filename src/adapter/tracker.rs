//! When a request is complete: which peers a request still waits for, and how many acks each
//! still owes. Pure; driven by responses and by peers found gone.

use std::{collections::HashMap, hash::Hash};

use crate::wire::ResponseBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// Nothing received yet.
    Answer,
    /// Acks still to come after an ack count.
    Acks(u32),
}

/// The state of one request.
#[derive(Debug)]
pub(crate) struct Tracker<P> {
    waiting: HashMap<P, Owed>,
}

impl<P: Hash + Eq + Clone + std::fmt::Debug> Tracker<P> {
    /// A request sent to `targets`.
    pub(crate) fn new(targets: impl IntoIterator<Item = P>) -> Self {
        Self {
            waiting: targets.into_iter().map(|p| (p, Owed::Answer)).collect(),
        }
    }

    /// Account for a response from `peer`. Returns whether its content belongs to the result
    /// (an ack, rooms or sockets the request was waiting for).
    pub(crate) fn on_response(&mut self, peer: &P, body: &ResponseBody) -> bool {
        let Some(owed) = self.waiting.get_mut(peer) else {
            tracing::debug!(?peer, "response from a peer this request does not wait for");
            return false;
        };
        let (keep, done) = match (body, *owed) {
            (ResponseBody::NotHosted, _) => (false, true),
            (ResponseBody::AckCount(0), Owed::Answer) => (false, true),
            (ResponseBody::AckCount(n), Owed::Answer) => {
                *owed = Owed::Acks(*n);
                (false, false)
            }
            (ResponseBody::Ack(..), Owed::Acks(n)) => {
                *owed = Owed::Acks(n - 1);
                (true, n == 1)
            }
            (ResponseBody::Rooms(_) | ResponseBody::Sockets(_), Owed::Answer) => (true, true),
            (ResponseBody::Done, Owed::Answer) => (false, true),
            (body, owed) => {
                tracing::warn!(?peer, ?owed, ?body, "unexpected response ignored");
                (false, false)
            }
        };
        if done {
            self.waiting.remove(peer);
        }
        keep
    }

    /// `peer` is gone: stop waiting for it. Returns how many acks it still owed, if it had
    /// announced a count.
    pub(crate) fn on_gone(&mut self, peer: &P) -> Option<u32> {
        match self.waiting.remove(peer)? {
            Owed::Answer => Some(0),
            Owed::Acks(n) => Some(n),
        }
    }

    /// Whether nothing more is expected.
    pub(crate) fn is_done(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The peers still owing something.
    pub(crate) fn waiting(&self) -> Vec<P> {
        self.waiting.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AckResult, Id, Value};

    fn ack() -> ResponseBody {
        ResponseBody::Ack(Id([0; 16]), AckResult::Ok(Value::Str("1".into(), None)))
    }

    #[test]
    fn single_answer_requests_complete_when_every_peer_answered_or_is_gone() {
        let mut t = Tracker::new(["a", "b", "c"]);
        assert!(t.on_response(&"a", &ResponseBody::Sockets(vec![])));
        assert!(
            !t.on_response(&"a", &ResponseBody::Sockets(vec![])),
            "only one answer counts"
        );
        assert!(!t.on_response(&"b", &ResponseBody::NotHosted));
        assert!(!t.is_done());
        assert_eq!(t.waiting(), vec!["c"]);
        assert_eq!(t.on_gone(&"c"), Some(0));
        assert!(t.is_done());
        assert_eq!(t.on_gone(&"c"), None);
    }

    #[test]
    fn state_changes_complete_when_every_peer_applied_them() {
        let mut t = Tracker::new(["a", "b"]);
        assert!(!t.on_response(&"a", &ResponseBody::Done));
        assert_eq!(t.waiting(), vec!["b"]);
        assert!(!t.on_response(&"b", &ResponseBody::NotHosted));
        assert!(t.is_done());
    }

    #[test]
    fn ack_requests_wait_for_every_announced_ack() {
        let mut t = Tracker::new(["a", "b"]);
        assert!(!t.on_response(&"a", &ResponseBody::AckCount(2)));
        assert!(!t.on_response(&"b", &ResponseBody::AckCount(0)));
        assert!(t.on_response(&"a", &ack()));
        assert!(!t.is_done());
        assert!(t.on_response(&"a", &ack()));
        assert!(t.is_done());
        assert!(!t.on_response(&"a", &ack()), "no ack beyond the count");
    }

    #[test]
    fn a_dead_peer_releases_the_acks_it_still_owed() {
        let mut t = Tracker::new(["a", "b"]);
        t.on_response(&"a", &ResponseBody::AckCount(3));
        t.on_response(&"a", &ack());
        t.on_response(&"b", &ResponseBody::AckCount(1));
        assert_eq!(t.on_gone(&"a"), Some(2));
        assert!(!t.is_done());
        assert!(t.on_response(&"b", &ack()));
        assert!(t.is_done());
    }

    #[test]
    fn ack_before_count_or_from_strangers_is_ignored() {
        let mut t = Tracker::new(["a"]);
        assert!(!t.on_response(&"a", &ack()));
        assert!(!t.on_response(&"z", &ResponseBody::AckCount(1)));
        assert!(!t.is_done());
        assert!(Tracker::<&str>::new([]).is_done());
    }
}
