//! Unit tests of the machine's decisions about its outgoing links, driven through
//! [`Probe`]: which queue a frame goes to, when a connection starts, what its result does,
//! and when a link is dropped.

use super::tests::{Probe, short};
use super::*;
use crate::gossip::node::machine::{
    slots::tests::FakeQueue,
    view::tests::{conn, peer, proof},
};

const REQ: Id = Id([9; 16]);

/// The attempt of the one connection `effects` start.
fn attempt(effects: &[Effect]) -> u64 {
    match effects {
        [Effect::Connect { attempt, .. }] => *attempt,
        other => panic!("one connection expected, got {:?}", short(other)),
    }
}

/// Where a frame to `to` goes: the attempt that made each target's queue, and the effects.
fn routes(probe: &mut Probe, to: To<'_>) -> (Vec<(String, u64)>, Vec<Effect>) {
    let mut routes = Vec::new();
    let effects = probe.routes(to, &mut routes);
    let routes = (routes.into_iter())
        .map(|(p, q)| (p.to_string(), q.expect("a queue").1))
        .collect();
    (routes, effects)
}

/// A machine with member `a` on an incoming connection (1).
fn with_member(a: &PeerId) -> Probe {
    let mut probe = Probe::new(peer("me", 10));
    probe.prove(a, conn(1, true)).0.unwrap();
    probe
}

fn connected(probe: &mut Probe, peer: &PeerId, attempt: u64, id: u64) -> Vec<Effect> {
    probe.input(Input::Connected {
        peer: peer.clone(),
        attempt,
        conn: conn(id, false),
        addrs: proof(),
    })
}

fn failed(probe: &mut Probe, peer: &PeerId, attempt: u64) -> Vec<Effect> {
    probe.input(Input::ConnectFailed {
        peer: peer.clone(),
        attempt,
        reason: "timed out".into(),
    })
}

fn gossip(probe: &mut Probe, shown: &[&PeerId]) -> Vec<Effect> {
    let reachable = (shown.iter())
        .map(|p| ((*p).clone(), proof().mesh))
        .collect();
    let listed = shown.iter().map(|p| (*p).clone()).collect();
    probe.input(Input::Gossip(GossipNodes { reachable, listed }))
}

fn ask(probe: &mut Probe, targets: &[PeerId]) {
    let wait = Duration::from_secs(60);
    let targets = targets.to_vec();
    probe.input(Input::Asked {
        id: REQ,
        targets,
        wait,
    });
}

#[test]
fn frames_for_a_member_without_a_link_start_one_connection_and_wait_in_its_queue() {
    let a = peer("a", 1);
    let mut me = with_member(&a);
    let (first, effects) = routes(&mut me, To::All);
    let n = attempt(&effects);
    assert!(
        matches!(&effects[0], Effect::Connect { addr, .. } if *addr == proof().mesh),
        "to the address it proved"
    );
    assert_eq!(first, [("a#1".to_string(), n)]);
    let (second, effects) = routes(&mut me, To::All);
    assert!(effects.is_empty(), "one connection at a time");
    assert_eq!(second, first, "the same queue");
    assert!(connected(&mut me, &a, n, 2).is_empty());
    let (third, effects) = routes(&mut me, To::Peers(std::slice::from_ref(&a)));
    assert!(effects.is_empty());
    assert_eq!(third, first, "the queue is the connection's");
    assert_eq!(me.link(&a).map(|(c, _)| c), Some(Some(conn(2, false))));
}

#[test]
fn a_peer_without_a_known_address_gets_no_link() {
    let mut me = Probe::new(peer("me", 10));
    let ghost = peer("ghost", 1);
    let mut routes = Vec::new();
    let effects = me.routes(To::Peers(std::slice::from_ref(&ghost)), &mut routes);
    assert!(effects.is_empty());
    assert_eq!(routes[0].1.as_ref().err(), Some(&"no known mesh address"));
    assert_eq!(me.link_count(), 0, "nothing kept for it");
}

#[test]
fn a_failed_connection_ends_the_waits_and_lets_the_next_frame_start_another() {
    let a = peer("a", 1);
    let mut me = with_member(&a);
    let (_, effects) = me.route(&a);
    let n = attempt(&effects);
    ask(&mut me, std::slice::from_ref(&a));
    assert!(failed(&mut me, &a, n).is_empty());
    assert!(me.link(&a).is_none(), "the slot is free");
    let (route, effects) = me.route(&a);
    assert!(attempt(&effects) > n, "a new attempt");
    assert_eq!(route.unwrap().1, attempt(&effects), "in a new queue");
    assert!(me.view().is_member(&a), "its incoming connection lives");
}

#[test]
fn a_queue_that_closed_is_replaced_by_the_next_frame() {
    let a = peer("a", 1);
    let mut me = with_member(&a);
    let (route, effects) = me.route(&a);
    let n = attempt(&effects);
    connected(&mut me, &a, n, 2);
    // Cut as a slow consumer, or its connection closed: its writer closed the queue.
    route.unwrap().close();
    let (route, effects) = me.route(&a);
    let next = attempt(&effects);
    assert!(next > n);
    assert_eq!(route.unwrap().1, next);
}

#[test]
fn a_close_notice_of_the_link_frees_its_slot() {
    let a = peer("a", 1);
    let mut me = with_member(&a);
    let (_, effects) = me.route(&a);
    connected(&mut me, &a, attempt(&effects), 2);
    assert!(
        me.close(&a, conn(2, false), mesh::Closed::Unused)
            .is_empty()
    );
    assert!(me.link(&a).is_none());
    assert_eq!(short(&me.route(&a).1), ["connect a#1"]);
}

#[test]
fn a_late_result_of_an_attempt_dropped_meanwhile_is_closed_not_kept() {
    let a = peer("a", 1);
    let mut me = with_member(&a);
    let (_, effects) = me.route(&a);
    let n = attempt(&effects);
    let effects = me.frame(&a, Frame::Leave);
    assert_eq!(short(&effects), ["left a#1", "abort a#1"]);
    assert_eq!(short(&connected(&mut me, &a, n, 2)), ["close a#1 (Late)"]);
    assert!(me.link(&a).is_none());
    assert!(!me.view().is_member(&a), "not admitted on it");
    assert!(
        failed(&mut me, &a, n).is_empty(),
        "nor does a late failure do anything"
    );
}

#[test]
fn a_connection_refused_at_admission_is_closed_and_its_attempt_failed() {
    let (old, new) = (peer("a", 1), peer("a", 2));
    let mut me = with_member(&new);
    // Gossip still shows the old generation: this node tries to verify it.
    let effects = gossip(&mut me, &[&old, &new]);
    let n = attempt(&effects);
    assert_eq!(short(&effects), ["connect a#1"]);
    assert_eq!(
        short(&connected(&mut me, &old, n, 2)),
        ["close a#1 (Refused)"]
    );
    assert!(me.link(&old).is_none(), "the slot is free");
    assert!(me.view().is_member(&new));
}

#[test]
fn verification_connects_with_backoff_and_never_beside_a_connection_under_way() {
    let b = peer("b", 1);
    let mut me = Probe::new(peer("me", 10));
    let effects = gossip(&mut me, &[&b]);
    let n = attempt(&effects);
    assert!(gossip(&mut me, &[&b]).is_empty(), "not again at once");
    me.advance(view::RETRY_MIN);
    assert!(
        gossip(&mut me, &[&b]).is_empty(),
        "due, but a connection is being made"
    );
    failed(&mut me, &b, n);
    me.advance(view::RETRY_MIN * 2);
    let next = attempt(&gossip(&mut me, &[&b]));
    assert!(next > n);
    // A frame for it meanwhile waits in the verification's queue.
    let (route, effects) = me.route(&b);
    assert!(effects.is_empty());
    assert_eq!(route.unwrap().1, next);
}

#[test]
fn links_to_peers_no_longer_known_are_forgotten() {
    let (b, c) = (peer("b", 1), peer("c", 1));
    let mut me = Probe::new(peer("me", 10));
    let mut started = short(&gossip(&mut me, &[&b, &c]));
    started.sort();
    assert_eq!(started, ["connect b#1", "connect c#1"]);
    assert_eq!(short(&gossip(&mut me, &[&c])), ["abort b#1"]);
    assert_eq!(me.link_count(), 1);
    // A proven peer is known whatever gossip says: its link stays.
    let n = match me.link(&c) {
        Some((None, queue)) => queue.1,
        _ => panic!("c's link is being made"),
    };
    connected(&mut me, &c, n, 3);
    assert!(gossip(&mut me, &[]).is_empty());
    assert_eq!(me.link(&c).map(|(c, _)| c), Some(Some(conn(3, false))));
}

#[test]
fn a_member_that_leaves_has_its_attempt_abandoned_and_its_waits_ended_at_once() {
    let a = peer("a", 1);
    let mut me = with_member(&a);
    let (_, effects) = me.route(&a);
    attempt(&effects);
    ask(&mut me, std::slice::from_ref(&a));
    let effects = me.close(&a, conn(1, true), mesh::Closed::Lost("reset".into()));
    assert_eq!(short(&effects), ["left a#1", "abort a#1"]);
    assert!(me.link(&a).is_none());
}

#[test]
fn a_replaced_generation_has_its_link_closed() {
    let (old, new) = (peer("a", 1), peer("a", 2));
    let mut me = with_member(&old);
    let (_, effects) = me.route(&old);
    connected(&mut me, &old, attempt(&effects), 2);
    let (admitted, effects) = me.prove(&new, conn(3, true));
    admitted.unwrap();
    assert_eq!(
        short(&effects),
        ["left a#1", "close a#1 (Replaced)", "joined a#2"]
    );
    assert!(me.link(&old).is_none());
}

#[test]
fn leaving_abandons_every_attempt_and_routes_nothing_more() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = with_member(&a);
    me.prove(&b, conn(2, true)).0.unwrap();
    let (started, effects) = routes(&mut me, To::All);
    assert_eq!(effects.len(), 2);
    // a's connection is made: the shell tells a on it, then closes it with the mesh.
    let n = started.iter().find(|(p, _)| p == "a#1").map(|(_, n)| *n);
    connected(&mut me, &a, n.unwrap(), 3);
    let effects = me.input(Input::Shutdown);
    assert_eq!(short(&effects), ["leave", "abort b#1"]);
    assert_eq!(me.link_count(), 0);
    let (none, effects) = routes(&mut me, To::All);
    assert!(none.is_empty() && effects.is_empty());
    assert_eq!(me.route(&a).0.err(), Some("this node is shutting down"));
}

/// The queue stand-in is what a test holds of a route.
#[test]
fn a_route_hands_out_the_slots_own_queue() {
    let a = peer("a", 1);
    let mut me = with_member(&a);
    let (route, _) = me.route(&a);
    let queue: FakeQueue = route.unwrap();
    queue.close();
    assert!(me.link(&a).is_some_and(|(_, q)| q.is_closed()));
}
