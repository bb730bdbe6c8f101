//! Unit tests of the machine: what each input decides, driven without sockets through
//! [`Probe`].

use std::ops::{Deref, DerefMut};

use super::*;
use crate::gossip::{
    node::machine::slots::tests::{FakeQueue, maker},
    node::machine::view::tests::{conn, peer, proof as addrs},
    wire::{self, NodeMeta, Opts, Parser, RequestKind, Response, ResponseBody},
};
use crate::ledger::Progress;

const REQ: Id = Id([7; 16]);
/// How long a flush round waits in these tests.
pub(in crate::gossip::node) const ROUND: Duration = Duration::from_secs(1);

/// A machine with its own clock, recording what it tells the requesters of its requests.
pub(in crate::gossip::node) struct Probe {
    machine: Machine<FakeQueue>,
    now: Instant,
    /// What requesters were told, written short, not read yet.
    told: Vec<String>,
    /// Whether a request ended since it was last read.
    ended: bool,
}

impl Deref for Probe {
    type Target = Machine<FakeQueue>;
    fn deref(&self) -> &Machine<FakeQueue> {
        &self.machine
    }
}

impl DerefMut for Probe {
    fn deref_mut(&mut self) -> &mut Machine<FakeQueue> {
        &mut self.machine
    }
}

impl Probe {
    /// The machine of `me`, not joining (no seed).
    pub(in crate::gossip::node) fn new(me: PeerId) -> Self {
        let now = Instant::now();
        let mut probe = Self {
            machine: Machine::new(me, now, ROUND, maker()),
            now,
            told: Vec::new(),
            ended: false,
        };
        let timeout = Duration::from_secs(1);
        probe.input(Input::Start {
            seeds: false,
            timeout,
        });
        probe
    }

    /// Hand `input` to the machine now; what it tells requesters is recorded, the other
    /// effects are returned.
    pub(in crate::gossip::node) fn input(&mut self, input: Input) -> Vec<Effect> {
        let effects = self.machine.handle(input, self.now);
        let mut rest = Vec::new();
        for effect in effects {
            match effect {
                Effect::Tell(_, Progress::Ended) => self.ended = true,
                Effect::Tell(_, progress) => self.told.push(match progress {
                    Progress::Kept(p, _) => format!("kept {p}"),
                    Progress::Answered(p) => format!("answered {p}"),
                    Progress::Gone(p) => format!("gone {p}"),
                    Progress::TimedOut(ps) => format!("timed out {}", barrier::tests::names(&ps)),
                    Progress::Ended => unreachable!(),
                }),
                other => rest.push(other),
            }
        }
        rest
    }

    /// Time passes by `by`, and the machine is woken.
    pub(in crate::gossip::node) fn advance(&mut self, by: Duration) -> Vec<Effect> {
        self.now += by;
        self.input(Input::Tick)
    }

    /// A frame from `from`; a join, leave or disconnect selects sockets here.
    pub(in crate::gossip::node) fn frame(&mut self, from: &PeerId, frame: Frame) -> Vec<Effect> {
        self.scoped(from, frame, Scope::Sockets)
    }

    /// A frame from `from`, selecting `scope` here.
    pub(in crate::gossip::node) fn scoped(
        &mut self,
        from: &PeerId,
        frame: Frame,
        scope: Scope,
    ) -> Vec<Effect> {
        self.input(Input::Frame(from.clone(), frame, scope))
    }

    /// `peer` proved the secret on `conn`: whether it was admitted, and the other effects.
    pub(in crate::gossip::node) fn prove(
        &mut self,
        peer: &PeerId,
        conn: ConnId,
    ) -> (Result<(), String>, Vec<Effect>) {
        let effects = self.input(Input::Proven(peer.clone(), conn, addrs()));
        let refused = effects.iter().find_map(|e| match e {
            Effect::Refuse(why) => Some(why.clone()),
            _ => None,
        });
        let rest = (effects.into_iter())
            .filter(|e| !matches!(e, Effect::Refuse(_)))
            .collect();
        (refused.map_or(Ok(()), Err), rest)
    }

    /// Connection `conn` to `peer` closed.
    pub(in crate::gossip::node) fn close(
        &mut self,
        peer: &PeerId,
        conn: ConnId,
        reason: mesh::Closed,
    ) -> Vec<Effect> {
        self.input(Input::Closed(peer.clone(), conn, reason))
    }

    /// This node's own part of a state change, with `token`.
    pub(in crate::gossip::node) fn ordered(&mut self, token: u64, sockets: bool) -> Vec<Effect> {
        self.input(Input::Ordered { token, sockets })
    }

    /// Ask `targets` with request [`REQ`], waiting a minute.
    fn ask(&mut self, targets: &[PeerId]) {
        let wait = Duration::from_secs(60);
        let targets = targets.to_vec();
        assert!(
            self.input(Input::Asked {
                id: REQ,
                targets,
                wait
            })
            .is_empty()
        );
    }

    /// What requesters were told since the last call, and whether a request ended.
    fn seen(&mut self) -> (Vec<String>, bool) {
        (
            std::mem::take(&mut self.told),
            std::mem::take(&mut self.ended),
        )
    }
}

/// A machine named "me" with `peers` admitted, each on an incoming connection numbered
/// from 1, and this node's own connection to each being made (a frame went to it).
pub(in crate::gossip::node) fn core_with(peers: &[&PeerId]) -> Probe {
    let mut probe = Probe::new(peer("me", 10));
    for (i, p) in peers.iter().enumerate() {
        let (admitted, effects) = probe.prove(p, conn(i as u64 + 1, true));
        admitted.unwrap();
        assert_eq!(short(&effects), [format!("joined {p}")]);
        let (route, effects) = probe.route(p);
        assert!(route.is_ok());
        assert_eq!(short(&effects), [format!("connect {p}")]);
    }
    probe
}

/// Effects, written short: `joined a#1`, `left a#1`, `abort a#1`, ... (what this node tells
/// a new member about itself goes with `joined`, and is not written).
pub(in crate::gossip::node) fn short(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| {
            Some(match e {
                Effect::MemberJoined(m) => format!("joined {}", m.peer_id()),
                Effect::MemberLeft { member } => format!("left {}", member.peer_id()),
                Effect::SendMeta(to, _) if to.len() == 1 => return None,
                Effect::SendMeta(to, _) => format!("meta to {}", barrier::tests::names(to)),
                Effect::Refuse(why) => format!("refuse: {why}"),
                Effect::Connect { peer, .. } => format!("connect {peer}"),
                Effect::Abort { peer, .. } => format!("abort {peer}"),
                Effect::CloseLink { peer, why, .. } => format!("close {peer} ({why:?})"),
                Effect::Request(p, _) => format!("request from {p}"),
                Effect::Service(p, _) => format!("service from {p}"),
                Effect::Refused(p) => format!("refused from {p}"),
                Effect::Flush { to, .. } => format!("flush to {}", barrier::tests::names(to)),
                Effect::AnswerFlush(p, _) => format!("answer flush of {p}"),
                Effect::Apply(p, r) => format!("apply {} from {p}", r.kind.name()),
                Effect::Resume(t) => format!("resume {t}"),
                Effect::Tell(id, p) => format!("tell {id}: {p:?}"),
                Effect::Ready => "ready".into(),
                Effect::Leave => "leave".into(),
            })
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
    core.ask(&[a.clone(), b.clone()]);
    assert!(core.frame(&b, response(ResponseBody::Done)).is_empty());
    let effects = core.close(&a, conn(1, true), mesh::Closed::Lost("reset".into()));
    assert_eq!(short(&effects), ["left a#1", "abort a#1"]);
    assert_eq!(
        core.seen(),
        (vec!["answered b#1".into(), "gone a#1".into()], true)
    );
    assert!(!core.view().is_member(&a));
}

#[test]
fn a_member_that_says_it_leaves_is_gone_at_once() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut core = core_with(&[&a, &b]);
    core.ask(&[a.clone(), b.clone()]);
    assert_eq!(
        short(&core.frame(&a, Frame::Leave)),
        ["left a#1", "abort a#1"]
    );
    assert_eq!(
        core.seen(),
        (vec!["gone a#1".into()], false),
        "b still owes"
    );
    let (admitted, _) = core.prove(&a, conn(9, true));
    assert!(
        admitted.is_err(),
        "a peer that left does not come back under that generation"
    );
}

#[test]
fn a_restart_with_a_new_generation_replaces_the_member_and_ends_its_waits() {
    let (old, new) = (peer("a", 1), peer("a", 2));
    let mut core = core_with(&[&old]);
    core.ask(std::slice::from_ref(&old));
    let (admitted, effects) = core.prove(&new, conn(2, true));
    admitted.unwrap();
    assert_eq!(short(&effects), ["left a#1", "abort a#1", "joined a#2"]);
    assert_eq!(core.seen(), (vec!["gone a#1".into()], true));
    // The old generation's late close notice changes nothing.
    assert!(
        core.close(&old, conn(1, true), mesh::Closed::Lost("timed out".into()))
            .is_empty()
    );
    assert!(core.view().is_member(&new));
}

#[test]
fn a_response_from_a_peer_not_asked_changes_nothing() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut core = core_with(&[&a, &b]);
    core.ask(std::slice::from_ref(&a));
    assert!(
        core.frame(&b, response(ResponseBody::Rooms(vec!["x".into()])))
            .is_empty()
    );
    assert_eq!(
        core.seen(),
        (vec![], false),
        "still waiting for a, and only a"
    );
    core.frame(&a, response(ResponseBody::NotHosted));
    assert_eq!(core.seen(), (vec!["answered a#1".into()], true));
}

#[test]
fn a_link_replaced_while_a_request_waits_keeps_the_member_and_the_wait() {
    let a = peer("a", 1);
    let mut core = core_with(&[&a]);
    // This node's own connection to a, next to a's incoming one.
    let (admitted, effects) = core.prove(&a, conn(2, false));
    admitted.unwrap();
    assert!(effects.is_empty(), "already a member");
    core.ask(std::slice::from_ref(&a));
    assert!(
        core.close(&a, conn(2, false), mesh::Closed::Unused)
            .is_empty()
    );
    assert!(core.view().is_member(&a));
    assert_eq!(
        core.seen(),
        (vec![], false),
        "a may still answer on its connection"
    );
    assert_eq!(
        short(&core.close(&a, conn(1, true), mesh::Closed::Unused)),
        ["left a#1", "abort a#1"],
        "its last connection closed"
    );
    assert_eq!(core.seen(), (vec!["gone a#1".into()], true));
}

#[test]
fn a_slow_link_ends_the_waits_even_while_the_member_stays() {
    let a = peer("a", 1);
    let mut core = core_with(&[&a]);
    core.prove(&a, conn(2, false)).0.unwrap();
    core.ask(std::slice::from_ref(&a));
    // What was queued on the slow link is lost: no answer to it will come.
    assert!(
        core.close(&a, conn(2, false), mesh::Closed::Slow)
            .is_empty()
    );
    assert!(core.view().is_member(&a));
    assert_eq!(core.seen(), (vec!["gone a#1".into()], true));
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
    core.input(Input::Meta(MetaChange::Host {
        ns: "/".into(),
        server_id: None,
        parser: Parser::Common,
    }));
    assert_eq!(short(&core.frame(&a, request())), ["request from a#1"]);
    let effects = core.frame(&a, Frame::Meta(meta));
    assert_eq!(short(&effects), ["left a#1"], "its link is kept");
    assert_eq!(
        short(&core.frame(&a, request())),
        ["refused from a#1"],
        "dropped, and counted"
    );
    assert!(core.targets(To::All).is_empty());
}

#[test]
fn a_newer_node_with_this_nodes_name_replaces_it_and_an_older_one_is_refused() {
    let mut core = Probe::new(peer("me", 10));
    let (admitted, effects) = core.prove(&peer("me", 11), conn(1, true));
    assert!(admitted.is_err());
    assert_eq!(short(&effects), ["leave"]);
    assert_eq!(
        core.failure(),
        Some("replaced by me#11, a newer node with the same name")
    );
    let mut core = Probe::new(peer("me", 10));
    let (admitted, effects) = core.prove(&peer("me", 9), conn(2, true));
    assert!(admitted.unwrap_err().contains("is not newer") && effects.is_empty());
    assert!(core.targets(To::All).is_empty(), "never a member");
    assert_eq!(core.failure(), None);
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
        core.frame(&a, frame);
    }
    assert_eq!(core.server_ids_of(&a), MAX_SERVER_IDS_PER_PEER);
    assert_eq!(
        core.targets(To::Server(Id([3; 16]))),
        std::slice::from_ref(&a)
    );
    core.close(&a, conn(1, true), mesh::Closed::Leaving);
    assert_eq!(core.server_ids_of(&a), 0);
    assert!(core.targets(To::Server(Id([3; 16]))).is_empty());
}

/// Gossip that stopped makes the node leave, saying why; once left, it admits nobody,
/// sends nothing, is not ready, and a second stop changes nothing.
#[test]
fn a_node_whose_gossip_stopped_leaves_and_then_refuses_everything() {
    let a = peer("a", 1);
    let mut core = core_with(&[&a]);
    assert!(core.is_ready());
    let effects = core.input(Input::GossipStopped("the socket closed".into()));
    assert_eq!(short(&effects), ["leave", "abort a#1"]);
    assert_eq!(core.failure(), Some("gossip stopped: the socket closed"));
    assert!(!core.is_ready() && core.has_left());
    assert!(core.targets(To::All).is_empty());
    let (admitted, _) = core.prove(&peer("b", 1), conn(5, true));
    assert!(admitted.unwrap_err().contains("left the cluster"));
    assert!(core.input(Input::GossipStopped("again".into())).is_empty());
    assert!(core.input(Input::Shutdown).is_empty(), "it leaves once");
}

/// Registering a namespace with a parser refuses the members that said they use the other
/// one, and tells them (so that they refuse this node in turn) along with the members.
#[test]
fn registering_a_parser_refuses_the_members_of_the_other_and_tells_them() {
    let (a, b) = (peer("a", 1), peer("b", 1));
    let mut core = core_with(&[&a, &b]);
    let meta = NodeMeta {
        version: 2,
        server_id: None,
        namespaces: vec!["/".into()],
        parser: Some(Parser::MsgPack),
    };
    assert!(
        short(&core.frame(&a, Frame::Meta(meta))).is_empty(),
        "no parser here yet"
    );
    let host = MetaChange::Host {
        ns: "/".into(),
        server_id: None,
        parser: Parser::Common,
    };
    assert_eq!(
        short(&core.input(Input::Meta(host))),
        ["left a#1", "meta to b#1,a#1"],
        "a's link is kept"
    );
    assert_eq!(core.targets(To::All), std::slice::from_ref(&b));
    let unhost = Input::Meta(MetaChange::Unhost("/".into()));
    let effects = core.input(unhost);
    assert!(matches!(&effects[..], [Effect::SendMeta(to, _)] if *to == [b]));
}
