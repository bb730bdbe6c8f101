//! The races of a cluster, each driven deterministically in the in-memory [`World`]: named
//! for the race they cover, each runs in simulated time, in milliseconds.

use std::time::Duration;

use super::world::{LATENCY, PEER_TIMEOUT, REQUEST_TIMEOUT, World, id};
use crate::gossip::wire::{Id, RequestKind};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn join() -> RequestKind {
    RequestKind::AddSockets(vec!["room".into()])
}

fn leave() -> RequestKind {
    RequestKind::DelSockets(vec!["room".into()])
}

fn told(world: &World, node: &str, req: Id) -> Vec<String> {
    (world.seen(&id(node, 1)).told.get(&req))
        .cloned()
        .unwrap_or_default()
}

fn ended(world: &World, node: &str, req: Id) -> bool {
    world.seen(&id(node, 1)).ended.contains(&req)
}

/// What `node`'s namespace was handed, in order.
fn handed(world: &World, node: &str) -> Vec<(u8, &'static str)> {
    world.seen(&id(node, 1)).handed.clone()
}

/// The promise of one order: an emit that returned on b before c started a join is
/// applied before the join on every node, even when b's link is far slower than c's; and
/// c's own part of the join waits for what the others queued for c.
#[test]
fn an_emit_that_returned_before_a_state_change_is_applied_before_it_on_every_node() {
    let mut world = World::new(&["a", "b", "c"]);
    let (a, b) = (id("a", 1), id("b", 1));
    world.delay(&b, &a, ms(30));
    world.emit(&b, 1);
    let change = world.ask(&id("c", 1), 2, join());
    world.run_for(ms(100));
    assert_eq!(handed(&world, "a"), [(1, "broadcast"), (2, "add_sockets")]);
    assert_eq!(handed(&world, "c"), [(1, "broadcast")]);
    assert!(ended(&world, "c", change));
    assert_eq!(
        world.seen(&id("c", 1)).resumed,
        [0],
        "c's own part, once ordered"
    );
}

/// Two state changes of one node, a join and then a leave, cross nothing: each node
/// applies them in the order sent, even behind a slow flush round.
#[test]
fn a_join_and_a_leave_sent_one_after_the_other_are_applied_in_that_order() {
    let mut world = World::new(&["a", "b", "c"]);
    world.delay(&id("c", 1), &id("a", 1), ms(40));
    let b = id("b", 1);
    world.ask(&b, 4, join());
    world.ask(&b, 5, leave());
    world.run_for(ms(200));
    assert_eq!(
        handed(&world, "a"),
        [(4, "add_sockets"), (5, "del_sockets")]
    );
    assert_eq!(
        handed(&world, "c"),
        [(4, "add_sockets"), (5, "del_sockets")]
    );
}

/// A response that comes after its request timed out changes nothing: the requester was
/// told once whom it still waited for, and the late answer is dropped.
#[test]
fn a_response_after_the_timeout_changes_nothing() {
    let mut world = World::new(&["a", "b"]);
    world.delay(&id("b", 1), &id("a", 1), REQUEST_TIMEOUT + ms(500));
    let req = world.ask(&id("a", 1), 3, RequestKind::FetchSockets);
    world.run_for(REQUEST_TIMEOUT + ms(1));
    assert_eq!(told(&world, "a", req), ["timed out [b#1]"]);
    assert!(ended(&world, "a", req));
    world.run_for(ms(1000));
    assert_eq!(
        told(&world, "a", req).len(),
        1,
        "the late answer is dropped"
    );
}

/// A lost response (say, a frame dropped past its queue's budget) ends the request at its
/// deadline: nothing hangs.
#[test]
fn a_lost_response_ends_the_request_at_its_deadline() {
    let mut world = World::new(&["a", "b"]);
    world.lose(&id("b", 1), &id("a", 1), 1);
    let req = world.ask(&id("a", 1), 3, RequestKind::FetchSockets);
    world.run_for(REQUEST_TIMEOUT - ms(1));
    assert!(!ended(&world, "a", req));
    world.run_for(ms(1));
    assert!(ended(&world, "a", req));
}

/// A node that crashes while a request waits for it is no longer waited for once its
/// connection is found dead, long before the request's deadline.
#[test]
fn a_crash_during_a_request_ends_it_when_the_connection_is_found_dead() {
    let mut world = World::new(&["a", "b", "c"]);
    let req = world.ask(&id("a", 1), 3, RequestKind::FetchSockets);
    world.crash(&id("c", 1), ms(100));
    world.run_for(ms(99));
    assert!(!ended(&world, "a", req));
    world.run_for(ms(2));
    assert_eq!(
        told(&world, "a", req),
        ["kept b#1", "answered b#1", "gone c#1"]
    );
    assert!(ended(&world, "a", req));
    assert_eq!(world.seen(&id("a", 1)).members.last().unwrap(), "-c#1");
}

/// A node that restarts under a newer generation replaces the old one as soon as it proves
/// itself: what waited for the old one stops waiting, and the old one's late close notice
/// changes nothing.
#[test]
fn a_newer_generation_replaces_the_old_and_ends_what_waited_for_it() {
    let mut world = World::new(&["a", "b"]);
    let (a, b1, b2) = (id("a", 1), id("b", 1), id("b", 2));
    world.delay(&a, &b1, ms(50));
    let req = world.ask(&a, 3, RequestKind::FetchSockets);
    world.crash(&b1, ms(500));
    world.boot(b2.clone(), true);
    world.gossip();
    world.run_for(ms(10));
    assert_eq!(told(&world, "a", req), ["gone b#1"]);
    assert!(ended(&world, "a", req));
    let members = &world.seen(&a).members;
    assert_eq!(members[members.len() - 2..], ["-b#1", "+b#2"]);
    world.run_for(ms(1000));
    assert!(
        world.machine(&a).view().is_member(&b2),
        "the old close changes nothing"
    );
}

/// A leave crossing a connection from the same node: once it said it left, a connection it
/// had under way is refused, and it never becomes a member again under that generation.
#[test]
fn a_leave_crossing_a_connection_from_the_same_node_keeps_it_out() {
    let mut world = World::new(&["a", "b"]);
    let (a, b) = (id("a", 1), id("b", 1));
    world.shut_down(&b);
    world.run_for(LATENCY * 2);
    assert_eq!(world.seen(&a).members.last().unwrap(), "-b#1");
    assert!(!world.connect_now(&b, &a));
    assert!(world.seen(&a).refused[0].contains("left the cluster"));
    world.gossip();
    world.run_for(ms(100));
    assert!(world.machine(&a).view().members().next().is_none());
}

/// A node leaving ends its own waits at once, and every peer drops it at once (not after
/// the peer timeout).
#[test]
fn a_node_leaving_ends_its_waits_and_its_peers_drop_it_at_once() {
    let mut world = World::new(&["a", "b", "c"]);
    let a = id("a", 1);
    world.delay(&a, &id("b", 1), ms(50));
    world.delay(&a, &id("c", 1), ms(50));
    let req = world.ask(&a, 3, RequestKind::FetchSockets);
    world.shut_down(&a);
    assert_eq!(told(&world, "a", req), ["gone b#1", "gone c#1"]);
    assert!(ended(&world, "a", req));
    world.run_for(ms(60));
    for peer in ["b", "c"] {
        assert_eq!(world.seen(&id(peer, 1)).members.last().unwrap(), "-a#1");
    }
}

/// A partition: what the two sides wait for each other ends once the peer timeout finds
/// the links dead; healed, they connect again as gossip shows them to each other.
#[test]
fn a_partition_ends_waits_at_the_peer_timeout_and_heals_by_reconnecting() {
    let mut world = World::new(&["a", "b", "c"]);
    let (a, c) = (id("a", 1), id("c", 1));
    world.partition(&a, &c);
    let req = world.ask(&a, 3, RequestKind::FetchSockets);
    world.run_for(PEER_TIMEOUT - ms(1));
    assert!(!ended(&world, "a", req));
    world.run_for(ms(2));
    assert_eq!(
        told(&world, "a", req),
        ["kept b#1", "answered b#1", "gone c#1"]
    );
    world.heal(&a, &c);
    world.gossip();
    world.run_for(ms(10));
    assert!(world.machine(&a).view().is_member(&c));
    assert!(world.machine(&c).view().is_member(&a));
}

/// A member that hangs (neither answers nor is found gone) holds a flush round only until
/// the round timeout: the change is applied then, and its sender's request ends at its own
/// deadline with the hung member named.
#[test]
fn a_flush_round_waiting_on_a_hung_member_applies_its_change_at_the_round_timeout() {
    let mut world = World::new(&["a", "b", "c"]);
    world.crash(&id("c", 1), Duration::from_secs(3600));
    let change = world.ask(&id("b", 1), 6, join());
    world.run_for(REQUEST_TIMEOUT / 2 - ms(1));
    assert!(
        handed(&world, "a").is_empty(),
        "held behind c's flush answer"
    );
    world.run_for(ms(2));
    assert_eq!(handed(&world, "a"), [(6, "add_sockets")]);
    world.run_for(REQUEST_TIMEOUT / 2);
    assert_eq!(
        told(&world, "b", change),
        ["answered a#1", "timed out [c#1]"]
    );
}

/// A node joining through seeds is ready only after a gossip round that brought nobody
/// new, with every node it knows proven over the mesh.
#[test]
fn a_node_joining_is_ready_once_every_node_it_knows_proved_itself() {
    let mut world = World::new(&["a", "b"]);
    let c = id("c", 1);
    world.boot(c.clone(), true);
    world.gossip();
    world.run_for(ms(5));
    assert!(!world.seen(&c).ready, "two nodes new to it this round");
    assert_eq!(world.machine(&c).view().members().count(), 2);
    world.gossip();
    assert!(world.seen(&c).ready);
}

/// A node joining that cannot reach one of the nodes gossip shows starts with the members
/// it could verify, at the join timeout: it never waits longer.
#[test]
fn a_join_that_cannot_verify_a_node_ends_at_its_timeout() {
    let mut world = World::new(&["a", "b"]);
    let c = id("c", 1);
    world.boot(c.clone(), true);
    world.partition(&c, &id("b", 1));
    for _ in 0..10 {
        world.gossip();
        world.run_for(ms(100));
    }
    assert!(!world.seen(&c).ready);
    world.run_for(REQUEST_TIMEOUT);
    assert!(world.seen(&c).ready);
    assert_eq!(world.machine(&c).view().members().count(), 1);
}

/// Emits from one node arrive in the order sent, behind any delay of its link.
#[test]
fn emits_from_one_node_arrive_in_the_order_sent() {
    let mut world = World::new(&["a", "b"]);
    let b = id("b", 1);
    for n in 1..=5 {
        world.delay(&b, &id("a", 1), ms(50 - 10 * u64::from(n)));
        world.emit(&b, n);
    }
    world.run_for(ms(100));
    let order: Vec<u8> = handed(&world, "a").into_iter().map(|(n, _)| n).collect();
    assert_eq!(order, [1, 2, 3, 4, 5]);
}

/// A link dropped while its connection is made (gossip no longer shows the peer) is
/// abandoned; when the connection is made anyway (the abort came too late), it is closed,
/// not kept, and the peer is not admitted on it. Shown again, the peer gets a connection
/// afresh.
#[test]
fn a_link_dropped_while_its_connection_is_made_starts_afresh_and_the_late_connection_is_closed() {
    let mut world = World::new(&["a", "b"]);
    let (a, b, c) = (id("a", 1), id("b", 1), id("c", 1));
    world.boot(c.clone(), false);
    world.delay(&a, &c, ms(30));
    world.late_aborts(&a);
    world.gossip_to(&a, &[&b, &c]);
    world.run_for(ms(10));
    world.gossip_to(&a, &[&b]);
    world.run_for(ms(50));
    assert_eq!(
        world.seen(&a).links[..],
        ["connect c#1", "abort c#1", "close c#1 (Late)"]
    );
    assert_eq!(world.conn(&a, &c), None, "closed, not kept");
    assert!(
        !world.machine(&a).view().is_member(&c),
        "not admitted on it"
    );
    world.gossip_to(&a, &[&b, &c]);
    world.run_for(ms(100));
    assert_eq!(
        world.seen(&a).links[3..],
        ["connect c#1"],
        "{:?}",
        world.seen(&a).links
    );
    assert!(world.conn(&a, &c).is_some());
    assert!(world.machine(&a).view().is_member(&c));
}

/// A connection that cannot be made ends at once what waited on it (a request's answer
/// from that peer), not at the request's timeout; the next frame starts a new connection.
#[test]
fn a_failed_connection_ends_the_waits_on_it_and_the_next_frame_starts_a_new_one() {
    let mut world = World::new(&["a", "b"]);
    let (a, b) = (id("a", 1), id("b", 1));
    world.close(&a, &b);
    world.refuse(&a, &b, true);
    let req = world.ask(&a, 3, RequestKind::FetchSockets);
    world.run_for(LATENCY * 3);
    assert_eq!(told(&world, "a", req), ["gone b#1"]);
    assert!(ended(&world, "a", req));
    assert!(world.machine(&a).view().is_member(&b), "b's own link lives");
    world.refuse(&a, &b, false);
    world.emit(&a, 4);
    world.run_for(ms(10));
    assert_eq!(world.seen(&a).links[..], ["connect b#1", "connect b#1"]);
    assert_eq!(handed(&world, "b"), [(4, "broadcast")], "3 was lost");
}

/// Frames for a peer whose connection is being made wait in its one queue, and go out in
/// the order sent once it is made.
#[test]
fn frames_queued_while_connecting_go_out_in_order_once_connected() {
    let mut world = World::new(&["a", "b"]);
    let (a, b) = (id("a", 1), id("b", 1));
    world.close(&a, &b);
    world.delay(&a, &b, ms(10));
    for n in 1..=5 {
        world.emit(&a, n);
    }
    world.run_for(ms(15));
    assert!(handed(&world, "b").is_empty(), "still connecting");
    world.run_for(ms(20));
    let order: Vec<u8> = handed(&world, "b").into_iter().map(|(n, _)| n).collect();
    assert_eq!(order, [1, 2, 3, 4, 5]);
    assert_eq!(world.seen(&a).links[..], ["connect b#1"], "one connection");
}

/// A connection attempt to a member that is found gone meanwhile (its own connection
/// found dead) is abandoned at once, and the request waiting on it ends then, long before
/// the attempt would have given up.
#[test]
fn a_connection_attempt_to_a_member_that_leaves_is_abandoned_at_once_and_its_waiter_ends() {
    let mut world = World::new(&["a", "b"]);
    let (a, b) = (id("a", 1), id("b", 1));
    world.close(&a, &b);
    world.run_for(LATENCY * 2);
    world.crash(&b, ms(100));
    let req = world.ask(&a, 3, RequestKind::FetchSockets);
    world.run_for(ms(99));
    assert!(!ended(&world, "a", req));
    assert!(world.machine(&a).link(&b).is_some(), "being made");
    world.run_for(ms(2));
    assert_eq!(told(&world, "a", req), ["gone b#1"]);
    assert!(ended(&world, "a", req));
    assert_eq!(world.seen(&a).links[..], ["connect b#1", "abort b#1"]);
    assert!(world.machine(&a).link(&b).is_none(), "abandoned at once");
    world.run_for(PEER_TIMEOUT);
    assert_eq!(world.seen(&a).links.len(), 2, "nothing comes of it");
}

/// A member restarted under a newer generation: once the new one proved itself, the link
/// to the old one is closed, and frames go to the new one on a link of its own.
#[test]
fn a_replaced_generations_link_is_closed() {
    let mut world = World::new(&["a", "b"]);
    let (a, b1, b2) = (id("a", 1), id("b", 1), id("b", 2));
    assert!(world.conn(&a, &b1).is_some());
    world.boot(b2.clone(), false);
    assert!(world.connect_now(&b2, &a));
    // What a tells its new member about itself starts a link of its own.
    assert_eq!(
        world.seen(&a).links[..],
        ["close b#1 (Replaced)", "connect b#2"]
    );
    assert_eq!(world.conn(&a, &b1), None);
    world.emit(&a, 7);
    world.run_for(ms(10));
    assert_eq!(
        world.seen(&b2).handed,
        [(7, "broadcast")],
        "the new generation gets what follows"
    );
}
