//! The races of one order for what has returned, driven through the machine without sockets:
//! a join, leave or disconnect held until every other member flushed what it had queued for
//! this node, and everything that must not wait for it.

use super::{
    Effect, Input, Scope,
    tests::{Probe, ROUND, core_with, short},
};
use crate::gossip::{
    mesh,
    node::machine::view::tests::{conn, peer},
    peer::PeerId,
    wire::{Frame, Id, PacketData, RequestKind, Response, ResponseBody, WirePacket},
};

/// A core named "me", with `peers` admitted.
fn node(peers: &[&PeerId]) -> Probe {
    core_with(peers)
}

fn request(n: u8, kind: RequestKind) -> Frame {
    Frame::Request(super::world::request(n, kind))
}

fn leave(n: u8) -> Frame {
    request(n, RequestKind::DelSockets(vec!["room".into()]))
}

fn join(n: u8) -> Frame {
    request(n, RequestKind::AddSockets(vec!["room".into()]))
}

fn emit(n: u8) -> Frame {
    let packet = WirePacket {
        ns: "/".into(),
        data: PacketData::Disconnect,
    };
    request(n, RequestKind::Broadcast(packet))
}

fn done(id: Id) -> Frame {
    Frame::Response(Response {
        id,
        body: ResponseBody::Done,
    })
}

/// The id of the flush round among `effects`.
fn round(effects: &[Effect]) -> Id {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Flush { id, .. } => Some(*id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no round started: {:?}", short(effects)))
}

/// The ids of the requests handed to their namespace, held or not, in order.
fn handed(effects: &[Effect]) -> Vec<u8> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Request(_, r) | Effect::Apply(_, r) => Some(r.id.0[0]),
            _ => None,
        })
        .collect()
}

/// The race this barrier exists for: a leaves a socket of this node from a room right
/// after b's emit to the room returned, and a's leave arrives before b's frame. The leave
/// waits for b's flush answer, which b queued behind its emit.
#[test]
fn an_emit_queued_before_the_flush_answer_is_applied_before_the_held_leave() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let effects = me.frame(&a, leave(1));
    assert_eq!(short(&effects), ["flush to b#1"], "the sender is not asked");
    let id = round(&effects);
    assert_eq!(handed(&me.frame(&b, emit(2))), [2], "b's emit: applied");
    assert_eq!(
        short(&me.frame(&b, done(id))),
        ["apply del_sockets from a#1"],
        "then a's leave"
    );
}

/// Same for a join (the socket must not get the emit made before it joined) and a
/// disconnect (it must get the emit made before it was disconnected).
#[test]
fn joins_and_disconnects_wait_for_the_flush_as_leaves_do() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    for frame in [join(1), request(1, RequestKind::DisconnectSockets)] {
        let mut me = node(&[&a, &b]);
        let id = round(&me.frame(&a, frame));
        assert_eq!(handed(&me.frame(&b, emit(2))), [2]);
        assert_eq!(handed(&me.frame(&b, done(id))), [1]);
    }
}

/// Deadlock: two nodes each hold a state change and each waits for the other's flush
/// answer. A flush is answered at once, whatever the node holds, so both go through.
#[test]
fn two_nodes_holding_state_changes_answer_each_others_flush_at_once() {
    let (x_id, y_id, z) = (peer("x", 1), peer("y", 1), peer("z", 1));
    let mut x = Probe::new(x_id.clone());
    let mut y = Probe::new(y_id.clone());
    for (core, other) in [(&mut x, &y_id), (&mut y, &x_id)] {
        for (i, p) in [other, &z].into_iter().enumerate() {
            core.prove(p, conn(i as u64 + 1, true)).0.unwrap();
        }
    }
    let x_round = round(&x.frame(&z, leave(1)));
    let y_round = round(&y.frame(&z, join(2)));
    // Each sees the other's flush while holding its own change: answered at once.
    assert_eq!(
        short(&x.frame(&y_id, Frame::Flush(y_round))),
        ["answer flush of y#1"]
    );
    assert_eq!(
        short(&y.frame(&x_id, Frame::Flush(x_round))),
        ["answer flush of x#1"]
    );
    assert_eq!(handed(&x.frame(&y_id, done(x_round))), [1]);
    assert_eq!(handed(&y.frame(&x_id, done(y_round))), [2]);
}

/// Per-sender order: what the sender of a held change sends after it is not held behind it
/// (an emit, a read): no promise covers it before the change returned, and holding it would
/// make emits pay. Its earlier frames came before the change on its stream.
#[test]
fn frames_sent_after_a_held_change_are_not_held_behind_it() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let id = round(&me.frame(&a, leave(1)));
    assert_eq!(handed(&me.frame(&a, emit(2))), [2]);
    assert_eq!(
        handed(&me.frame(&a, request(3, RequestKind::FetchSockets))),
        [3]
    );
    assert_eq!(
        handed(&me.frame(&a, request(4, RequestKind::AllRooms))),
        [4]
    );
    assert_eq!(handed(&me.frame(&b, done(id))), [1]);
}

/// State changes from several senders, some arriving while a round is in flight: applied
/// in the order they arrived, the later ones sharing one next round.
#[test]
fn state_changes_are_applied_in_arrival_order_whoever_sent_them() {
    let (a, b, c) = (peer("a", 1), peer("b", 1), peer("c", 1));
    let mut me = node(&[&a, &b, &c]);
    let first = round(&me.frame(&a, leave(1)));
    assert!(me.frame(&b, join(2)).is_empty(), "waits for the next round");
    assert!(me.frame(&a, leave(3)).is_empty());
    assert_eq!(short(&me.ordered(7, true)), Vec::<String>::new());
    assert!(me.frame(&b, done(first)).is_empty(), "c still owes");
    let effects = me.frame(&c, done(first));
    assert_eq!(
        short(&effects),
        ["apply del_sockets from a#1", "flush to a#1,b#1,c#1"],
        "one round for the three, asking every member: they come from several senders"
    );
    let second = round(&effects);
    me.frame(&a, done(second));
    me.frame(&b, done(second));
    assert_eq!(
        short(&me.frame(&c, done(second))),
        [
            "apply add_sockets from b#1",
            "apply del_sockets from a#1",
            "resume 7"
        ]
    );
}

/// A member found gone (its connection lost, it left) is not waited for; one whose flush
/// could not even be queued neither.
#[test]
fn a_member_found_gone_or_not_reached_is_not_waited_for() {
    let (a, b, c) = (peer("a", 1), peer("b", 1), peer("c", 1));
    let mut me = node(&[&a, &b, &c]);
    let id = round(&me.frame(&a, leave(1)));
    let effects = me.close(&b, conn(2, true), mesh::Closed::Lost("reset".into()));
    assert_eq!(short(&effects), ["left b#1", "abort b#1"], "c still owes");
    assert_eq!(handed(&me.input(Input::NotSent(id, c.clone()))), [1]);

    let mut me = node(&[&a, &b]);
    let id = round(&me.frame(&a, leave(1)));
    assert_eq!(
        short(&me.frame(&b, Frame::Leave)),
        ["left b#1", "abort b#1", "apply del_sockets from a#1"]
    );
    assert!(me.frame(&b, done(id)).is_empty());
}

/// A member that joins while a change waits was not asked: the next round asks it, and a
/// member gone since is not asked any more.
#[test]
fn the_next_round_asks_the_members_of_its_moment() {
    let (a, b, c) = (peer("a", 1), peer("b", 1), peer("c", 1));
    let mut me = node(&[&a, &b]);
    let first = round(&me.ordered(1, true));
    assert!(me.ordered(2, true).is_empty());
    assert_eq!(short(&me.prove(&c, conn(3, true)).1), ["joined c#1"]);
    assert!(me.frame(&a, done(first)).is_empty());
    // b leaves: the first round ends, and the next asks a and c.
    let effects = me.frame(&b, Frame::Leave);
    assert_eq!(
        short(&effects),
        ["left b#1", "abort b#1", "resume 1", "flush to a#1,c#1"]
    );
}

/// A round whose members neither answer nor are found gone ends at the round timeout:
/// what it held is applied, and a late answer changes nothing.
#[test]
fn a_round_that_times_out_applies_what_it_held_and_a_late_answer_changes_nothing() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let id = round(&me.frame(&a, leave(1)));
    assert_eq!(handed(&me.advance(ROUND)), [1]);
    assert!(me.frame(&b, done(id)).is_empty());
    assert!(me.advance(ROUND).is_empty(), "ends once");
}

/// Only the members asked may answer a round: the sender, not asked, cannot end it.
#[test]
fn only_the_members_asked_end_a_round() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let id = round(&me.frame(&a, leave(1)));
    assert!(me.frame(&a, done(id)).is_empty());
    assert_eq!(handed(&me.frame(&b, done(id))), [1]);
}

/// A state change for a namespace this node does not host has nothing to apply: handed
/// over at once (and answered so), never held, even behind a held one.
#[test]
fn a_state_change_for_a_namespace_not_hosted_is_not_held() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let not_hosted = |me: &mut Probe| me.scoped(&a, leave(2), Scope::NotHosted);
    assert_eq!(short(&not_hosted(&mut me)), ["request from a#1"]);
    round(&me.frame(&a, leave(1)));
    assert_eq!(short(&not_hosted(&mut me)), ["request from a#1"]);
}

/// A state change that selects no socket here has nothing whose order could be seen: with
/// nothing held it is handed over at once. Behind a held change it keeps its place: the
/// held one may add the very sockets it selects.
#[test]
fn a_state_change_selecting_no_socket_here_waits_only_behind_a_held_one() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let no_socket = |me: &mut Probe, n| me.scoped(&a, leave(n), Scope::NoSocket);
    assert_eq!(short(&no_socket(&mut me, 1)), ["request from a#1"]);
    assert_eq!(short(&me.ordered(7, false)), ["resume 7"]);
    let id = round(&me.frame(&a, join(2)));
    assert!(no_socket(&mut me, 3).is_empty());
    assert!(me.ordered(8, false).is_empty());
    let effects = me.frame(&b, done(id));
    assert_eq!(handed(&effects), [2], "the join, then a round for the rest");
    let next = round(&effects);
    assert!(me.frame(&a, done(next)).is_empty());
    assert_eq!(
        short(&me.frame(&b, done(next))),
        ["apply del_sockets from a#1", "resume 8"]
    );
}

/// This node's own part of a change it started waits for a round too; alone, it goes at
/// once.
#[test]
fn this_nodes_own_part_waits_for_every_other_member() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let effects = me.ordered(1, true);
    assert_eq!(short(&effects), ["flush to a#1,b#1"]);
    let id = round(&effects);
    assert!(me.frame(&a, done(id)).is_empty());
    assert_eq!(short(&me.frame(&b, done(id))), ["resume 1"]);

    let mut alone = node(&[]);
    assert_eq!(short(&alone.ordered(2, true)), ["resume 2"]);
}

/// This node leaving: no answer will come, every held change is applied in order and every
/// own part resumed; a round's late end changes nothing.
#[test]
fn leaving_applies_every_held_change_in_order() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let id = round(&me.frame(&a, leave(1)));
    me.ordered(5, true);
    me.frame(&b, join(2));
    assert_eq!(
        short(&me.input(Input::Shutdown)),
        [
            "leave",
            "apply del_sockets from a#1",
            "resume 5",
            "apply add_sockets from b#1",
            "abort a#1",
            "abort b#1"
        ]
    );
    assert!(me.advance(ROUND).is_empty());
    assert!(me.frame(&b, done(id)).is_empty());
}

/// Past the barrier's bounds, a member flooding state changes gets them applied without
/// waiting, in order; nothing grows without bound, nothing hangs.
#[test]
fn a_flood_of_state_changes_is_bounded_and_applied_in_order() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut me = node(&[&a, &b]);
    let mut applied = Vec::new();
    let mut rounds = 0;
    for i in 0..10_000u32 {
        let effects = me.frame(&a, leave((i % 250) as u8));
        rounds += effects
            .iter()
            .filter(|e| matches!(e, Effect::Flush { .. }))
            .count();
        applied.extend(handed(&effects));
    }
    assert_eq!(rounds, 1, "one round in flight, never more");
    assert!(me.unordered() > 0);
    let want: Vec<u8> = (0..applied.len() as u32).map(|i| (i % 250) as u8).collect();
    assert_eq!(applied, want, "in the order they arrived");
}

/// A peer refused for its socket.io parser is no member: its flush is dropped (and it is
/// never asked).
#[test]
fn a_flush_from_a_peer_refused_for_its_parser_is_dropped() {
    let a = peer("a", 1);
    let mut me = node(&[&a]);
    let meta = crate::gossip::wire::NodeMeta {
        version: 2,
        server_id: None,
        namespaces: vec!["/".into()],
        parser: Some(crate::gossip::wire::Parser::MsgPack),
    };
    me.input(Input::Meta(super::MetaChange::Host {
        ns: "/".into(),
        server_id: None,
        parser: crate::gossip::wire::Parser::Common,
    }));
    me.frame(&a, Frame::Meta(meta));
    assert_eq!(
        short(&me.frame(&a, Frame::Flush(Id([1; 16])))),
        ["refused from a#1"]
    );
    assert_eq!(short(&me.ordered(1, true)), ["resume 1"], "nobody to ask");
}
