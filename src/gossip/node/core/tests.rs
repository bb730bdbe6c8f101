//! Unit tests of `core`.

use super::*;
use crate::gossip::{
    node::{
        To, barrier,
        ledger::tests::drain as seen,
        view::tests::{conn, peer, proof as addrs},
    },
    wire::{NodeMeta, Opts, RequestKind, Response, ResponseBody},
};

const REQ: Id = Id([7; 16]);

/// A core named "me" with `peers` admitted, each on an incoming connection numbered
/// from 1.
pub(in crate::gossip::node) fn core_with(peers: &[&PeerId]) -> Core {
    let mut core = Core::new(peer("me", 10));
    for (i, p) in peers.iter().enumerate() {
        let (admitted, effects) = core.admit(p, conn(i as u64 + 1, true), addrs());
        admitted.unwrap();
        assert!(matches!(&effects[..], [Effect::Joined(m)] if m.peer_id() == **p));
    }
    core
}

/// Effects, written short: `joined a#1`, `left a#1`, `drop a#1`, ...
pub(in crate::gossip::node) fn short(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Joined(m) => format!("joined {}", m.peer_id()),
            Effect::Left { member, keep_link } => {
                format!(
                    "left {}{}",
                    member.peer_id(),
                    if *keep_link { " (link kept)" } else { "" }
                )
            }
            Effect::DropLink(p) => format!("drop {p}"),
            Effect::Request(p, _) => format!("request from {p}"),
            Effect::Service(p, _) => format!("service from {p}"),
            Effect::ReplacedBy(p) => format!("replaced by {p}"),
            Effect::Refused(p) => format!("refused from {p}"),
            Effect::Flush { to, .. } => format!("flush to {}", barrier::tests::names(to)),
            Effect::AnswerFlush(p, _) => format!("answer flush of {p}"),
            Effect::Apply(p, r) => format!("apply {} from {p}", r.kind.name()),
            Effect::Resume(t) => format!("resume {t}"),
        })
        .collect()
}

fn response(body: ResponseBody) -> Frame {
    Frame::Response(Response { id: REQ, body })
}

fn request() -> Frame {
    Frame::Request(wire::Request {
        ns: "/".into(),
        id: Id([1; 16]),
        origin: Id([2; 16]),
        kind: RequestKind::FetchSockets,
        opts: Opts::default(),
        ack_timeout_ms: None,
    })
}

#[test]
fn a_member_lost_while_a_request_waits_ends_the_wait_and_its_link() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut core = core_with(&[&a, &b]);
    let mut rx = core.ledger.book(REQ, &[a.clone(), b.clone()]);
    assert!(
        core.frame(&b, response(ResponseBody::Done), None)
            .is_empty()
    );
    let effects = core.closed(&a, conn(1, true), &mesh::Closed::Lost("reset".into()));
    assert_eq!(short(&effects), ["left a#1"]);
    assert_eq!(
        seen(&mut rx),
        (vec!["answered b#1".into(), "gone a#1".into()], true)
    );
    assert!(!core.view().is_member(&a));
}

#[test]
fn a_member_that_says_it_leaves_is_gone_at_once() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut core = core_with(&[&a, &b]);
    let mut rx = core.ledger.book(REQ, &[a.clone(), b.clone()]);
    assert_eq!(
        short(&core.frame(&a, Frame::Leave, None)),
        ["left a#1", "drop a#1"]
    );
    assert_eq!(
        seen(&mut rx),
        (vec!["gone a#1".into()], false),
        "b still owes"
    );
    let (admitted, _) = core.admit(&a, conn(9, true), addrs());
    assert!(
        admitted.is_err(),
        "a peer that left does not come back under that generation"
    );
}

#[test]
fn a_restart_with_a_new_generation_replaces_the_member_and_ends_its_waits() {
    let (old, new) = (peer("a", 1), peer("a", 2));
    let mut core = core_with(&[&old]);
    let mut rx = core.ledger.book(REQ, std::slice::from_ref(&old));
    let (admitted, effects) = core.admit(&new, conn(2, true), addrs());
    admitted.unwrap();
    assert_eq!(short(&effects), ["left a#1", "joined a#2", "drop a#1"]);
    assert_eq!(seen(&mut rx), (vec!["gone a#1".into()], true));
    // The old generation's late close notice changes nothing.
    assert!(
        core.closed(&old, conn(1, true), &mesh::Closed::Lost("timed out".into()))
            .is_empty()
    );
    assert!(core.view().is_member(&new));
}

#[test]
fn a_response_from_a_peer_not_asked_changes_nothing() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut core = core_with(&[&a, &b]);
    let mut rx = core.ledger.book(REQ, std::slice::from_ref(&a));
    assert!(
        core.frame(&b, response(ResponseBody::Rooms(vec!["x".into()])), None)
            .is_empty()
    );
    assert_eq!(
        seen(&mut rx),
        (vec![], false),
        "still waiting for a, and only a"
    );
    core.frame(&a, response(ResponseBody::NotHosted), None);
    assert_eq!(seen(&mut rx), (vec!["answered a#1".into()], true));
}

#[test]
fn a_link_replaced_while_a_request_waits_keeps_the_member_and_the_wait() {
    let a = peer("a", 1);
    let mut core = core_with(&[&a]);
    // This node's own connection to a, next to a's incoming one.
    let (admitted, effects) = core.admit(&a, conn(2, false), addrs());
    admitted.unwrap();
    assert!(effects.is_empty(), "already a member");
    let mut rx = core.ledger.book(REQ, std::slice::from_ref(&a));
    assert!(
        core.closed(&a, conn(2, false), &mesh::Closed::Unused)
            .is_empty()
    );
    assert!(core.view().is_member(&a));
    assert_eq!(
        seen(&mut rx),
        (vec![], false),
        "a may still answer on its connection"
    );
    assert_eq!(
        short(&core.closed(&a, conn(1, true), &mesh::Closed::Unused)),
        ["left a#1"],
        "its last connection closed"
    );
    assert_eq!(seen(&mut rx), (vec!["gone a#1".into()], true));
}

#[test]
fn a_slow_link_ends_the_waits_even_while_the_member_stays() {
    let a = peer("a", 1);
    let mut core = core_with(&[&a]);
    core.admit(&a, conn(2, false), addrs()).0.unwrap();
    let mut rx = core.ledger.book(REQ, std::slice::from_ref(&a));
    // What was queued on the slow link is lost: no answer to it will come.
    assert!(
        core.closed(&a, conn(2, false), &mesh::Closed::Slow)
            .is_empty()
    );
    assert!(core.view().is_member(&a));
    assert_eq!(seen(&mut rx), (vec!["gone a#1".into()], true));
}

#[test]
fn a_peer_with_another_parser_is_refused_and_its_requests_dropped() {
    let a = peer("a", 1);
    let mut core = core_with(&[&a]);
    let meta = NodeMeta {
        version: 2,
        server_id: None,
        namespaces: vec!["/".into()],
        parser: Some(Parser::MsgPack),
    };
    assert_eq!(
        short(&core.frame(&a, request(), Some(Parser::Common))),
        ["request from a#1"]
    );
    let effects = core.frame(&a, Frame::Meta(meta), Some(Parser::Common));
    assert_eq!(short(&effects), ["left a#1 (link kept)"]);
    assert_eq!(
        short(&core.frame(&a, request(), Some(Parser::Common))),
        ["refused from a#1"],
        "dropped, and counted"
    );
    assert!(core.targets(To::All).is_empty());
}

#[test]
fn a_newer_node_with_this_nodes_name_replaces_it_and_an_older_one_is_refused() {
    let mut core = Core::new(peer("me", 10));
    let (admitted, effects) = core.admit(&peer("me", 11), conn(1, true), addrs());
    assert!(admitted.is_err());
    assert_eq!(short(&effects), ["replaced by me#11"]);
    let (admitted, effects) = core.admit(&peer("me", 9), conn(2, true), addrs());
    assert!(admitted.is_err() && effects.is_empty());
    assert!(core.targets(To::All).is_empty(), "never a member");
}

#[test]
fn server_ids_a_member_sends_are_bounded_and_forgotten_when_it_goes() {
    let a = peer("a", 1);
    let mut core = core_with(&[&a]);
    for i in 0..100u8 {
        let mut frame = request();
        if let Frame::Request(req) = &mut frame {
            req.origin = Id([i; 16]);
        }
        core.frame(&a, frame, None);
    }
    assert_eq!(core.server_ids_of(&a), MAX_SERVER_IDS_PER_PEER);
    assert_eq!(
        core.targets(To::Server(Id([3; 16]))),
        std::slice::from_ref(&a)
    );
    core.closed(&a, conn(1, true), &mesh::Closed::Leaving);
    assert_eq!(core.server_ids_of(&a), 0);
    assert!(core.targets(To::Server(Id([3; 16]))).is_empty());
}
