//! Unit tests of the request ledger with the gossip node's responses: what each answer
//! does to what its peer owes ([`Answer for ResponseBody`](super::Answer)), and deadlines.

use std::time::{Duration, Instant};

use crate::{
    gossip::{
        peer::PeerId,
        wire::{AckResult, Id, ResponseBody, Value},
    },
    ledger::{Ledger, Progress},
};

type Requests = Ledger<Id, PeerId, ResponseBody>;

fn peer(name: &str) -> PeerId {
    PeerId {
        name: name.into(),
        generation: 1,
    }
}

fn ack() -> ResponseBody {
    ResponseBody::Ack(Id([0; 16]), AckResult::Ok(Value::Str("1".into(), None)))
}

const ID: Id = Id([1; 16]);

/// A deadline no test reaches.
fn later() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// What the requester was told since the last call, and whether its request ended.
fn drain(ledger: &mut Requests) -> (Vec<String>, bool) {
    let mut seen = Vec::new();
    let mut ended = false;
    for (_, progress) in ledger.take_progress() {
        match progress {
            Progress::Kept(p, _) => seen.push(format!("kept {p}")),
            Progress::Answered(p) => seen.push(format!("answered {p}")),
            Progress::Gone(p) => seen.push(format!("gone {p}")),
            Progress::TimedOut(ps) => seen.push(format!("timed out {ps:?}")),
            Progress::Ended => ended = true,
        }
    }
    (seen, ended)
}

/// Rooms, sockets, or a service's answer (a server event's ack): one kept per peer.
#[test]
fn single_answer_requests_end_when_every_peer_answered_or_is_gone() {
    let answers = [
        ResponseBody::Sockets(vec![]),
        ResponseBody::Service(bytes::Bytes::from_static(b"x")),
    ];
    for answer in answers {
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let mut ledger = Requests::default();
        ledger.book(ID, &[a.clone(), b.clone(), c.clone()], later());
        assert!(ledger.respond(&a, ID, answer.clone()));
        assert!(
            !ledger.respond(&a, ID, answer.clone()),
            "only one answer counts"
        );
        assert!(!ledger.respond(&a, ID, ResponseBody::AckCount(1)));
        assert!(ledger.respond(&b, ID, ResponseBody::NotHosted));
        assert_eq!(
            drain(&mut ledger),
            (
                vec![
                    "kept a#1".into(),
                    "answered a#1".into(),
                    "answered b#1".into()
                ],
                false
            )
        );
        ledger.peer_gone(&c);
        assert_eq!(drain(&mut ledger), (vec!["gone c#1".into()], true));
        assert_eq!(ledger.len(), 0, "an ended request is forgotten");
    }
}

/// A peer whose answer cannot cross says so instead: kept (the requester tells its
/// caller why), and the peer owes nothing more, whatever it owed.
#[test]
fn a_refused_answer_is_kept_and_ends_what_the_peer_owed() {
    let (a, b) = (peer("a"), peer("b"));
    let refused = || ResponseBody::Refused("too many rooms".into());
    let mut ledger = Requests::default();
    ledger.book(ID, &[a.clone(), b.clone()], later());
    assert!(ledger.respond(&a, ID, refused()));
    assert!(
        !ledger.respond(&a, ID, ResponseBody::Rooms(vec![])),
        "nothing after it"
    );
    assert!(ledger.respond(&b, ID, ResponseBody::AckCount(3)));
    assert!(ledger.respond(&b, ID, ack()));
    assert!(ledger.respond(&b, ID, refused()));
    assert_eq!(
        drain(&mut ledger),
        (
            vec![
                "kept a#1".into(),
                "answered a#1".into(),
                "kept b#1".into(),
                "kept b#1".into(),
                "answered b#1".into()
            ],
            true
        )
    );
}

#[test]
fn state_changes_end_when_every_peer_applied_them() {
    let (a, b) = (peer("a"), peer("b"));
    let mut ledger = Requests::default();
    ledger.book(ID, &[a.clone(), b.clone()], later());
    assert!(ledger.respond(&a, ID, ResponseBody::Done));
    assert!(!drain(&mut ledger).1);
    assert!(ledger.respond(&b, ID, ResponseBody::NotHosted));
    assert_eq!(drain(&mut ledger), (vec!["answered b#1".into()], true));
}

#[test]
fn only_the_peers_asked_may_answer() {
    let (a, stranger) = (peer("a"), peer("z"));
    let mut ledger = Requests::default();
    ledger.book(ID, std::slice::from_ref(&a), later());
    assert!(!ledger.respond(&stranger, ID, ResponseBody::Rooms(vec![])));
    assert!(!ledger.respond(&stranger, ID, ResponseBody::AckCount(1)));
    assert!(
        !ledger.respond(&a, Id([2; 16]), ResponseBody::Rooms(vec![])),
        "another request"
    );
    assert_eq!(drain(&mut ledger), (vec![], false));
}

#[test]
fn ack_requests_wait_for_every_announced_ack() {
    let (a, b) = (peer("a"), peer("b"));
    let mut ledger = Requests::default();
    ledger.book(ID, &[a.clone(), b.clone()], later());
    assert!(!ledger.respond(&a, ID, ack()), "an ack before the count");
    assert!(ledger.respond(&a, ID, ResponseBody::AckCount(2)));
    assert!(
        !ledger.respond(&a, ID, ResponseBody::AckCount(1_000)),
        "a second count: refused"
    );
    assert!(ledger.respond(&b, ID, ResponseBody::AckCount(0)));
    assert!(
        !ledger.respond(&b, ID, ack()),
        "a's count does not raise b's"
    );
    assert!(ledger.respond(&a, ID, ack()));
    assert_eq!(
        drain(&mut ledger),
        (vec!["answered b#1".into(), "kept a#1".into()], false)
    );
    assert!(ledger.respond(&a, ID, ack()));
    assert!(!ledger.respond(&a, ID, ack()), "no ack beyond the count");
    assert_eq!(
        drain(&mut ledger),
        (vec!["kept a#1".into(), "answered a#1".into()], true)
    );
}

#[test]
fn a_gone_peer_releases_the_acks_it_still_owed() {
    let (a, b) = (peer("a"), peer("b"));
    let mut ledger = Requests::default();
    ledger.book(ID, &[a.clone(), b.clone()], later());
    ledger.respond(&a, ID, ResponseBody::AckCount(3));
    ledger.respond(&a, ID, ack());
    ledger.respond(&b, ID, ResponseBody::AckCount(1));
    ledger.peer_gone_from(ID, &a);
    assert!(!ledger.respond(&a, ID, ack()), "no longer waited for");
    assert!(ledger.respond(&b, ID, ack()));
    assert_eq!(
        drain(&mut ledger),
        (
            vec![
                "kept a#1".into(),
                "gone a#1".into(),
                "kept b#1".into(),
                "answered b#1".into()
            ],
            true
        )
    );
}

#[test]
fn nothing_to_wait_for_ends_at_once_and_release_ends_everything() {
    let mut ledger = Requests::default();
    ledger.book(ID, &[], later());
    assert!(drain(&mut ledger).1);
    ledger.book(ID, &[peer("a")], later());
    ledger.release_all();
    assert_eq!(drain(&mut ledger), (vec!["gone a#1".into()], true));
    assert_eq!(ledger.len(), 0);
}

/// A request past its deadline ends, telling whom it still waited for; a round past its
/// deadline is given as ended with them; a late answer changes nothing.
#[test]
fn deadlines_end_requests_and_rounds_with_whom_they_waited_for() {
    let (a, b) = (peer("a"), peer("b"));
    let t0 = Instant::now();
    let round = Id([2; 16]);
    let mut ledger = Requests::default();
    ledger.book(ID, &[a.clone(), b.clone()], t0 + Duration::from_secs(2));
    ledger.book_round(round, &[a.clone(), b.clone()], t0 + Duration::from_secs(1));
    assert_eq!(ledger.next_deadline(), Some(t0 + Duration::from_secs(1)));
    assert!(ledger.respond(&a, ID, ResponseBody::Done));
    assert!(ledger.respond(&b, round, ResponseBody::Done));
    ledger.expire(t0 + Duration::from_millis(999));
    assert!(ledger.take_ended_rounds().is_empty(), "not yet");
    ledger.expire(t0 + Duration::from_secs(1));
    assert_eq!(ledger.take_ended_rounds(), [(round, vec![a.clone()])]);
    assert_eq!(ledger.next_deadline(), Some(t0 + Duration::from_secs(2)));
    ledger.expire(t0 + Duration::from_secs(2));
    assert_eq!(
        drain(&mut ledger),
        (
            vec!["answered a#1".into(), format!("timed out {:?}", [&b])],
            true
        )
    );
    assert!(!ledger.respond(&b, ID, ResponseBody::Done), "late");
    assert_eq!((ledger.len(), ledger.next_deadline()), (0, None));
}
