//! The node as a deterministic state machine: who is a member ([`View`]), the requests
//! waiting for answers (the crate's [`Ledger`]), the joins, leaves and disconnects waiting
//! for their flush round ([`Barrier`]), the socketioxide server ids peers run, what this
//! node tells members about itself, where the node is in its life (joining, ready, left,
//! and why), and its outgoing link to each peer ([`slots`], decided on in [`links`]:
//! which send queue a frame goes to, when a connection starts, is dropped or abandoned).
//! It takes each [`Input`] with the time it happened ([`Machine::handle`]), returns the
//! [`Effect`]s the node must carry out, and says when it next needs to be woken
//! ([`Machine::next_timeout`]); a send asks it for the queues of its targets
//! ([`Machine::routes`]). No I/O, no tokio, no lock: the shell around it (`Node`) owns
//! the sockets, send queues, channels and timers, and decides nothing.

mod barrier;
mod io;
mod life;
mod links;
pub(super) mod slots;
pub(super) mod view;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

pub(crate) use io::{Closing, Effect, Input, MetaChange, Scope, To};
pub(crate) use links::Route;
pub(crate) use slots::{MakeQueue, SendQueue};
pub(super) use view::View;

use barrier::{Barrier, Held, Order};
use life::Life;
use slots::Slots;

use crate::{
    gossip::{
        membership::{GossipNodes, Member},
        mesh::{self, ConnId, PeerAddrs},
        peer::PeerId,
        wire::{Frame, Id, NodeMeta, ResponseBody},
    },
    ledger::{Answer, Ledger, Owed, Settled},
    rate_log::RateLog,
};

/// Most socketioxide server ids kept for one peer: one per `SocketIo` instance it runs.
pub(crate) const MAX_SERVER_IDS_PER_PEER: usize = 16;
/// Server ids refused beyond that bound: logged at most once per period.
static SERVER_ID_LOG: RateLog = RateLog::new(Duration::from_secs(10));
/// Frames from peers refused for their parser, dropped: logged at most once per period.
static REFUSED_FRAME_LOG: RateLog = RateLog::new(Duration::from_secs(10));
/// Connections lost, and nodes refused for this node's name: logged at most once per
/// period (a peer can cause either on every connection it makes).
static LOST_LOG: RateLog = RateLog::new(Duration::from_secs(10));
/// Flush rounds that timed out: logged at most once per period.
static ROUND_TIMEOUT_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// What a response does to what its peer owes.
impl Answer for ResponseBody {
    fn settle(&self, owed: Owed) -> Option<Settled> {
        let (keep, then) = match (self, owed) {
            (Self::NotHosted | Self::Done | Self::AckCount(0), Owed::Answer) => (false, None),
            (Self::AckCount(n), Owed::Answer) => (false, Some(Owed::Acks(*n))),
            (Self::Rooms(_) | Self::Sockets(_) | Self::Service(_), Owed::Answer) => (true, None),
            (Self::Ack(..), Owed::Acks(n)) => (true, (n > 1).then(|| Owed::Acks(n - 1))),
            // The peer could not send what it owed, and says why: nothing more comes.
            (Self::Refused(_), _) => (true, None),
            _ => return None,
        };
        Some(Settled { keep, then })
    }
}

/// The node's state; `S` is the send queue of a link (see [`slots`]).
pub(crate) struct Machine<S> {
    me: PeerId,
    /// The time of the input being handled.
    now: Instant,
    view: View,
    /// Requests waiting for responses, and this node's flush rounds.
    ledger: Ledger<Id, PeerId, ResponseBody>,
    /// Joins, leaves and disconnects waiting for their flush round.
    barrier: Barrier,
    /// How long a flush round waits for answers.
    round_timeout: Duration,
    /// socketioxide server ids learned from requests, for peers gossip has not shown yet.
    server_ids: HashMap<Id, PeerId>,
    /// What this node tells members about itself.
    meta: NodeMeta,
    /// Joining, ready, or left.
    life: Life,
    /// Peers refused for their parser: logged at most once per period (a refused peer
    /// can come back by reconnecting).
    parser_log: RateLog,
    /// This node's outgoing link to each peer.
    links: Slots<S>,
}

impl<S: SendQueue> Machine<S> {
    /// The machine of node `me`, at `now`; a flush round waits `round_timeout` at most;
    /// the send queue of each connection attempt is made by `make`.
    pub(crate) fn new(
        me: PeerId,
        now: Instant,
        round_timeout: Duration,
        make: MakeQueue<S>,
    ) -> Self {
        Self {
            me,
            now,
            view: View::default(),
            ledger: Ledger::default(),
            barrier: Barrier::default(),
            round_timeout,
            server_ids: HashMap::new(),
            meta: NodeMeta {
                version: 1,
                server_id: None,
                namespaces: Vec::new(),
                parser: None,
            },
            life: Life::default(),
            parser_log: RateLog::new(Duration::from_secs(10)),
            links: Slots::new(make),
        }
    }

    /// Handle `input`, which happened at `now` (never earlier than the time of the input
    /// before): the effects to carry out, in order.
    pub(crate) fn handle(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        self.now = self.now.max(now);
        let mut effects = match input {
            Input::Start { seeds, timeout } => self.start(seeds, timeout),
            Input::Frame(from, frame, scope) => self.frame_in(&from, frame, scope),
            Input::Proven(peer, conn, addrs) => self.admit(&peer, conn, addrs),
            Input::Closed(peer, conn, reason) => self.closed(&peer, conn, &reason),
            Input::Connected {
                peer,
                attempt,
                conn,
                addrs,
            } => self.link_up(&peer, attempt, conn, addrs),
            Input::ConnectFailed {
                peer,
                attempt,
                reason,
            } => self.attempt_failed(&peer, attempt, &reason),
            Input::Gossip(nodes) => self.gossip(nodes),
            Input::Known(known) => self.known(known),
            Input::Asked { id, targets, wait } => {
                self.ledger.book(id, &targets, self.now + wait);
                Vec::new()
            }
            Input::NotSent(id, peer) => {
                self.ledger.peer_gone_from(id, &peer);
                Vec::new()
            }
            Input::Abandoned(id) => {
                self.ledger.remove(id);
                Vec::new()
            }
            Input::Ordered { token, sockets } => self.order_local(token, sockets),
            Input::Meta(change) => self.change_meta(change),
            Input::GossipStopped(why) => self.gossip_stopped(why),
            Input::Shutdown => self.leave(None),
            Input::Tick => self.tick(),
        };
        effects.extend(self.settle());
        effects.extend(
            (self.ledger.take_progress().into_iter())
                .map(|(id, progress)| Effect::Tell(id, progress)),
        );
        effects
    }

    /// When the machine must next be handed [`Input::Tick`], if it waits for anything.
    pub(crate) fn next_timeout(&mut self) -> Option<Instant> {
        let join = self.life.join_deadline();
        match (self.ledger.next_deadline(), join) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Who is a member, and what gossip shows.
    pub(crate) fn view(&self) -> &View {
        &self.view
    }

    /// The peers a frame goes to; none once the node left.
    #[cfg(test)]
    pub(crate) fn targets(&self, to: To<'_>) -> Vec<PeerId> {
        if self.life.has_left() {
            return Vec::new();
        }
        match to {
            To::All => self.view.member_ids().cloned().collect(),
            To::Peers(peers) => peers.to_vec(),
            To::Server(id) => self.server(id).into_iter().collect(),
        }
    }

    /// The member running the socketioxide server `id`, if one does.
    fn server(&self, id: Id) -> Option<PeerId> {
        let uid = std::str::from_utf8(&id.0).ok();
        let by_gossip = self.view.members().find(|m| {
            m.server_id
                .map(|s| Some(s.to_string()) == uid.map(String::from))
                == Some(true)
        });
        let peer = by_gossip
            .map(Member::peer_id)
            .or_else(|| self.server_ids.get(&id).cloned());
        if peer.is_none() {
            tracing::warn!(server = ?uid, "no live node has this server id; nothing sent");
        }
        peer
    }

    /// Time passed: requests and flush rounds past their deadline stop waiting, and a join
    /// past its timeout ends.
    fn tick(&mut self) -> Vec<Effect> {
        self.ledger.expire(self.now);
        self.join_timed_out()
    }

    /// A frame from `from`; `scope` what a join, leave or disconnect selects here.
    fn frame_in(&mut self, from: &PeerId, frame: Frame, scope: Scope) -> Vec<Effect> {
        if self.view.is_refused(from)
            && matches!(
                frame,
                Frame::Request(_) | Frame::Response(_) | Frame::Service(_) | Frame::Flush(_)
            )
        {
            if let Some(held_back) = REFUSED_FRAME_LOG.allow() {
                tracing::warn!(
                    node = %self.me, peer = %from, held_back,
                    "frame dropped: the peer is refused for its socket.io parser"
                );
            }
            return vec![Effect::Refused(from.clone())];
        }
        match frame {
            Frame::Request(req) => {
                self.learn_server_id(req.origin, from);
                let hold = req.kind.changes_state()
                    && match scope {
                        Scope::NotHosted => false,
                        Scope::NoSocket => !self.barrier.is_idle(),
                        Scope::Sockets => true,
                    };
                if hold {
                    self.hold(Held::Request(from.clone(), Box::new(req)))
                } else {
                    vec![Effect::Request(from.clone(), req)]
                }
            }
            Frame::Response(res) => {
                self.ledger.respond(from, res.id, res.body);
                Vec::new()
            }
            // Answered at once, whatever this node holds: see the barrier's rules.
            Frame::Flush(id) => vec![Effect::AnswerFlush(from.clone(), id)],
            Frame::Leave => self.mark_left(from, "it left the cluster"),
            Frame::Service(frame) => vec![Effect::Service(from.clone(), frame)],
            Frame::Meta(meta) => {
                self.view.meta(from, meta);
                self.refuse_other_parsers().1
            }
        }
    }

    /// Refuse the members that say they use another socket.io parser than this node's (once
    /// this node knows it): they are members no more, and nothing but this node's metadata
    /// is sent to them. Their connections stay open, so that each hears the other's parser
    /// and both refuse each other. Returns the peers refused now.
    fn refuse_other_parsers(&mut self) -> (Vec<PeerId>, Vec<Effect>) {
        let Some(mine) = self.meta.parser else {
            return (Vec::new(), Vec::new());
        };
        let mut refused = Vec::new();
        let effects = self.change_view("it uses another socket.io parser", |v| {
            refused = v.refuse_other_parsers(mine);
        });
        // Only two parsers exist: every peer refused uses the other one.
        let theirs = refused.first().map(|(_, parser)| *parser);
        let peers: Vec<PeerId> = refused.into_iter().map(|(peer, _)| peer).collect();
        if let Some(theirs) = theirs
            && let Some(held_back) = self.parser_log.allow()
        {
            tracing::error!(
                node = %self.me, ?peers, held_back,
                "peer refused: it uses the {theirs} parser and this node the {mine} parser; \
                 every node of a cluster must use the same socket.io parser"
            );
        }
        (peers, effects)
    }

    /// Remember that `from` runs the socketioxide server `id`, up to
    /// [`MAX_SERVER_IDS_PER_PEER`] per peer (forgotten when the peer goes).
    fn learn_server_id(&mut self, id: Id, from: &PeerId) {
        if self.server_ids.contains_key(&id) {
            return;
        }
        if self.server_ids.values().filter(|p| *p == from).count() >= MAX_SERVER_IDS_PER_PEER {
            if let Some(held_back) = SERVER_ID_LOG.allow() {
                tracing::warn!(
                    peer = %from,
                    held_back,
                    "server id not learned: the peer already has {MAX_SERVER_IDS_PER_PEER}"
                );
            }
            return;
        }
        self.server_ids.insert(id, from.clone());
    }

    /// How many server ids are kept for `peer`.
    #[cfg(test)]
    pub(super) fn server_ids_of(&self, peer: &PeerId) -> usize {
        self.server_ids.values().filter(|p| *p == peer).count()
    }

    /// Connection `conn` to or from `peer` closed.
    fn closed(&mut self, peer: &PeerId, conn: ConnId, reason: &mesh::Closed) -> Vec<Effect> {
        self.links.closed(peer, conn);
        if self.life.has_left() {
            return Vec::new();
        }
        let why = match reason {
            mesh::Closed::Leaving => {
                return self.mark_left(peer, "it closed its connection to leave");
            }
            mesh::Closed::Unused => {
                tracing::debug!(%peer, "mesh connection replaced");
                "its connection was replaced and no other is open".to_string()
            }
            mesh::Closed::Locally => "this node closed its last connection to it".to_string(),
            mesh::Closed::Slow => {
                // What was queued on it is lost: no request waits for an answer to it.
                self.ledger.peer_gone(peer);
                if conn.incoming {
                    "it closed its connection: this node took nothing for the peer timeout"
                } else {
                    "this node closed its connection: it took nothing for the peer timeout"
                }
                .to_string()
            }
            mesh::Closed::Refused | mesh::Closed::Lost(_) => {
                if let Some(held_back) = LOST_LOG.allow() {
                    tracing::warn!(node = %self.me, %peer, held_back, "mesh connection lost: {reason}");
                }
                self.ledger.peer_gone(peer);
                format!("its connection was lost ({reason})")
            }
        };
        self.change_view(&why, |v| v.closed(peer, conn))
    }

    /// `peer` proved the cluster secret on connection `conn`: admit it, unless the view
    /// refuses (see [`view::Refusal`]) or it has this node's name ([`Effect::Refuse`] says
    /// why).
    fn admit(&mut self, peer: &PeerId, conn: ConnId, addrs: PeerAddrs) -> Vec<Effect> {
        if self.life.has_left() {
            return vec![Effect::Refuse("this node left the cluster".into())];
        }
        if peer.name == self.me.name {
            return self.same_name(peer);
        }
        let mut refused = None;
        let mut displaced = None;
        let mut effects =
            self.change_view("it restarted", |v| match v.connected(peer, conn, addrs) {
                Ok(old) => displaced = old,
                Err(e) => refused = Some(e.to_string()),
            });
        if let Some(old) = displaced {
            effects.extend(self.drop_link(&old, Closing::Replaced));
        }
        effects.extend(refused.map(Effect::Refuse));
        effects
    }

    /// `peer` proved the cluster secret under this node's own name: never a member. If it
    /// is newer, it replaces this node, which leaves.
    fn same_name(&mut self, peer: &PeerId) -> Vec<Effect> {
        let why = if peer.generation > self.me.generation {
            tracing::error!(
                node = %self.me, newer = %peer,
                "a newer node with the same name joined and replaces this one: this node leaves \
                 the cluster and serves its own sockets only (give every node a unique name; \
                 Cluster::failure() reports this for health checks)"
            );
            let mut effects = vec![Effect::Refuse(format!(
                "{peer} has this node's name and is newer: this node leaves"
            ))];
            effects.extend(self.leave(Some(format!(
                "replaced by {peer}, a newer node with the same name"
            ))));
            return effects;
        } else if peer.generation == self.me.generation {
            // Gossip may still show an earlier process of this node at this very address.
            tracing::debug!(node = %self.me, "refused a connection from this node itself");
            "it is this node itself".to_string()
        } else {
            if let Some(held_back) = LOST_LOG.allow() {
                tracing::warn!(
                    node = %self.me, %peer, held_back,
                    "refused a node with this node's name and an older generation"
                );
            }
            format!("{peer} has this node's name and is not newer")
        };
        vec![Effect::Refuse(why)]
    }

    /// Apply what gossip shows now (this node excluded); connect to the peers it shows
    /// that have not proved themselves, with backoff.
    fn gossip(&mut self, nodes: GossipNodes) -> Vec<Effect> {
        if self.life.has_left() {
            return Vec::new();
        }
        let GossipNodes { reachable, listed } = nodes;
        let mut effects = self.change_view("gossip", |v| {
            v.apply_gossip(reachable, |p| listed.contains(p))
        });
        let view = &self.view;
        self.server_ids.retain(|_, p| view.knows(p));
        effects.extend(self.forget_unknown_links());
        let due = self.view.due_for_connection(self.now);
        for (peer, first) in due {
            effects.extend(self.verify(&peer, first));
        }
        effects
    }

    /// `peer` is gone (it left, or its connection was lost): it is no member, no request
    /// waits for it, and its link closes.
    fn mark_left(&mut self, peer: &PeerId, why: &str) -> Vec<Effect> {
        let mut effects = self.change_view(why, |v| v.leave(peer));
        self.ledger.peer_gone(peer);
        effects.extend(self.drop_link(peer, Closing::Replaced));
        effects
    }

    /// This node's own part of a join, leave or disconnect it started: resumed by
    /// [`Effect::Resume`] with `token` once ordered. One that selects no socket here
    /// (`sockets` false) is resumed at once when nothing is held.
    fn order_local(&mut self, token: u64, sockets: bool) -> Vec<Effect> {
        if !sockets && self.barrier.is_idle() {
            return vec![Effect::Resume(token)];
        }
        self.hold(Held::Local(token))
    }

    /// This node is leaving: no request waits any longer, and every state change held is
    /// applied, in order.
    fn release_all(&mut self) -> Vec<Effect> {
        self.ledger.release_all();
        let orders = self.barrier.release_all();
        self.carry_out(orders)
    }

    /// State changes applied without waiting so far, past the barrier's bounds.
    #[cfg(test)]
    pub(super) fn unordered(&self) -> u64 {
        self.barrier.unordered()
    }

    /// Hold a state change until its flush round ended.
    fn hold(&mut self, change: Held) -> Vec<Effect> {
        let members = self.member_ids();
        let orders = self.barrier.hold(change, &members);
        self.carry_out(orders)
    }

    /// The flush rounds the ledger saw end: what they served is applied.
    fn settle(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (id, waiting) in self.ledger.take_ended_rounds() {
            if !waiting.is_empty()
                && let Some(held_back) = ROUND_TIMEOUT_LOG.allow()
            {
                tracing::warn!(
                    node = %self.me, ?waiting, held_back,
                    "flush round timed out: the joins, leaves and disconnects it held are \
                     applied without waiting for these members any longer"
                );
            }
            let members = self.member_ids();
            let orders = self.barrier.round_ended(id, &members);
            effects.extend(self.carry_out(orders));
        }
        effects
    }

    /// The effects of the barrier's orders; a round is booked in the ledger.
    fn carry_out(&mut self, orders: Vec<Order>) -> Vec<Effect> {
        orders
            .into_iter()
            .map(|order| match order {
                Order::Flush { id, to } => {
                    self.ledger
                        .book_round(id, &to, self.now + self.round_timeout);
                    Effect::Flush { id, to }
                }
                Order::Apply(Held::Request(from, req)) => Effect::Apply(from, *req),
                Order::Apply(Held::Local(token)) => Effect::Resume(token),
            })
            .collect()
    }

    /// The members, in a fixed order (a round asks them in it).
    fn member_ids(&self) -> Vec<PeerId> {
        let mut ids: Vec<PeerId> = self.view.members().map(Member::peer_id).collect();
        ids.sort_unstable();
        ids
    }

    /// Change the view; who joined and who left the members.
    fn change_view(&mut self, why: &str, change: impl FnOnce(&mut View)) -> Vec<Effect> {
        let before = self.view.member_map();
        change(&mut self.view);
        let mut after = self.view.member_map();
        let mut effects = Vec::new();
        for (peer, member) in before {
            if after.remove(&peer).is_some() {
                continue;
            }
            tracing::info!(node = %self.me, %peer, "member left: {why}");
            self.ledger.peer_gone(&peer);
            self.server_ids.retain(|_, p| p != &peer);
            let member = std::sync::Arc::unwrap_or_clone(member);
            effects.push(Effect::MemberLeft { member });
            // A peer refused for its parser keeps its link: this node's metadata may still
            // be on its way to it.
            if !self.view.is_refused(&peer) {
                effects.extend(self.drop_link(&peer, Closing::Replaced));
            }
        }
        for member in after.into_values() {
            tracing::info!(node = %self.me, peer = %member.peer_id(), mesh = %member.mesh_addr, "member joined");
            // A new member hears from this node what it says about itself, first thing on
            // this node's own connection to it.
            effects.push(Effect::SendMeta(vec![member.peer_id()], self.meta.clone()));
            effects.push(Effect::MemberJoined(Member::clone(&member)));
        }
        effects
    }
}

/// The races the node must get right, driven without sockets: what each input decides.
#[cfg(test)]
mod ledger_tests;
#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod order_tests;
#[cfg(test)]
pub(super) mod tests;
#[cfg(test)]
mod world;
#[cfg(test)]
mod world_tests;
