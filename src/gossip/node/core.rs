//! The node's state and its rules, without I/O: who is a member ([`View`]), the requests
//! waiting for responses ([`Ledger`]), the joins, leaves and disconnects waiting for their
//! flush round ([`Barrier`]), and the socketioxide server ids peers run. Inputs
//! are what the mesh, gossip and the requester report (a peer proven, a connection
//! closed, a frame in, what gossip shows); each returns the [`Effect`]s the node must carry
//! out (close a link, tell the application, hand a request to its namespace). The tokio
//! shell around it (`Node`) owns the sockets, the link table and the tasks.

use std::{collections::HashMap, time::Duration};

use super::{
    barrier::{Barrier, Held, Order},
    ledger::Ledger,
    view::View,
};
use crate::{
    gossip::{
        membership::{GossipNodes, Member},
        mesh::{self, ConnId, PeerAddrs},
        peer::PeerId,
        wire::{self, Frame, Id, Parser, ServiceFrame},
    },
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

/// What a join, leave or disconnect from a peer selects here, as its namespace said when it
/// arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// Its namespace is not hosted here: answered so at once.
    NotHosted,
    /// No socket of this node now: with nothing held, applied at once (nothing here can see
    /// its order with the emits still on their way).
    NoSocket,
    /// Sockets of this node: it waits for its flush round.
    Sockets,
}

/// What the node must do after an input.
#[derive(Debug)]
pub(super) enum Effect {
    /// A member joined: it hears this node's metadata, and the application hears of it.
    Joined(Member),
    /// A member left: the application hears of it, and the link to it is closed, unless it
    /// was refused for its parser (this node's metadata may still be on its way to it).
    Left {
        /// Who.
        member: Member,
        /// Keep the link open.
        keep_link: bool,
    },
    /// Close the link to this peer (it left, or a newer generation displaced it).
    DropLink(PeerId),
    /// Hand a request to the namespace it names.
    Request(PeerId, wire::Request),
    /// Hand a message to the service it names.
    Service(PeerId, ServiceFrame),
    /// A newer node with this node's name proved itself: this node must leave.
    ReplacedBy(PeerId),
    /// A frame from this peer was refused (it is refused for its parser): count it.
    Refused(PeerId),
    /// Ask each of `to` for a flush answer to round `id` (see [`super::barrier`]), and end
    /// the round with [`Core::round_expired`] once the round timeout passed.
    Flush {
        /// The round.
        id: Id,
        /// The members asked.
        to: Vec<PeerId>,
    },
    /// Answer this peer's flush `id` with `Done`, behind everything queued for it.
    AnswerFlush(PeerId, Id),
    /// A join, leave or disconnect from a peer, now ordered: hand it to its namespace.
    Apply(PeerId, wire::Request),
    /// This node's own part of a state change it started, now ordered: resume it.
    Resume(u64),
}

/// The node's state.
pub(super) struct Core {
    me: PeerId,
    view: View,
    /// Requests waiting for responses.
    pub(super) ledger: Ledger,
    /// Joins, leaves and disconnects waiting for their flush round.
    barrier: Barrier,
    /// socketioxide server ids learned from requests, for peers gossip has not shown yet.
    server_ids: HashMap<Id, PeerId>,
    /// Peers refused for their parser: logged at most once per period (a refused peer
    /// can come back by reconnecting).
    parser_log: RateLog,
}

impl Core {
    pub(super) fn new(me: PeerId) -> Self {
        Self {
            me,
            view: View::default(),
            ledger: Ledger::default(),
            barrier: Barrier::default(),
            server_ids: HashMap::new(),
            parser_log: RateLog::new(Duration::from_secs(10)),
        }
    }

    /// Who is a member, and what gossip shows.
    pub(super) fn view(&self) -> &View {
        &self.view
    }

    /// The peers a frame goes to.
    pub(super) fn targets(&self, to: super::To<'_>) -> Vec<PeerId> {
        match to {
            super::To::All => self.view.members().map(Member::peer_id).collect(),
            super::To::Peers(peers) => peers.to_vec(),
            super::To::Server(id) => {
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
                peer.into_iter().collect()
            }
        }
    }

    /// A frame from `from`, a join, leave or disconnect selecting sockets here.
    #[cfg(test)]
    pub(super) fn frame(
        &mut self,
        from: &PeerId,
        frame: Frame,
        mine: Option<Parser>,
    ) -> Vec<Effect> {
        self.frame_in(from, frame, mine, Scope::Sockets)
    }

    /// A frame from `from`; `mine` is this node's parser, once it knows it; `scope` what a
    /// join, leave or disconnect selects here.
    pub(super) fn frame_in(
        &mut self,
        from: &PeerId,
        frame: Frame,
        mine: Option<Parser>,
        scope: Scope,
    ) -> Vec<Effect> {
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
                self.settle()
            }
            // Answered at once, whatever this node holds: see the barrier's rules.
            Frame::Flush(id) => vec![Effect::AnswerFlush(from.clone(), id)],
            Frame::Leave => self.mark_left(from, "it left the cluster"),
            Frame::Service(frame) => vec![Effect::Service(from.clone(), frame)],
            Frame::Meta(meta) => {
                self.view.meta(from, meta);
                self.refuse_other_parsers(mine).1
            }
        }
    }

    /// Refuse the members that say they use another socket.io parser than `mine` (once
    /// this node knows it): they are members no more, and nothing but this node's metadata
    /// is sent to them. Their connections stay open, so that each hears the other's parser
    /// and both refuse each other. Returns the peers refused now.
    pub(super) fn refuse_other_parsers(
        &mut self,
        mine: Option<Parser>,
    ) -> (Vec<PeerId>, Vec<Effect>) {
        let Some(mine) = mine else {
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
    pub(super) fn closed(
        &mut self,
        peer: &PeerId,
        conn: ConnId,
        reason: &mesh::Closed,
    ) -> Vec<Effect> {
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
    /// refuses (see [`super::view::Refusal`]) or it has this node's name. The error says
    /// why it is refused.
    pub(super) fn admit(
        &mut self,
        peer: &PeerId,
        conn: ConnId,
        addrs: PeerAddrs,
    ) -> (Result<(), String>, Vec<Effect>) {
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
        effects.extend(displaced.map(Effect::DropLink));
        (refused.map_or(Ok(()), Err), effects)
    }

    /// `peer` proved the cluster secret under this node's own name: never a member. If it
    /// is newer, it replaces this node, which leaves.
    fn same_name(&self, peer: &PeerId) -> (Result<(), String>, Vec<Effect>) {
        if peer.generation > self.me.generation {
            let why = format!("{peer} has this node's name and is newer: this node leaves");
            (Err(why), vec![Effect::ReplacedBy(peer.clone())])
        } else if peer.generation == self.me.generation {
            // Gossip may still show an earlier process of this node at this very address.
            tracing::debug!(node = %self.me, "refused a connection from this node itself");
            (Err("it is this node itself".into()), Vec::new())
        } else {
            if let Some(held_back) = LOST_LOG.allow() {
                tracing::warn!(
                    node = %self.me, %peer, held_back,
                    "refused a node with this node's name and an older generation"
                );
            }
            (
                Err(format!("{peer} has this node's name and is not newer")),
                Vec::new(),
            )
        }
    }

    /// Apply what gossip shows now (this node excluded).
    pub(super) fn gossip(&mut self, nodes: GossipNodes) -> Vec<Effect> {
        let GossipNodes { reachable, listed } = nodes;
        let effects = self.change_view("gossip", |v| {
            v.apply_gossip(reachable, |p| listed.contains(p))
        });
        let view = &self.view;
        self.server_ids.retain(|_, p| view.knows(p));
        effects
    }

    /// The peers to try to connect to now, and whether each is a first try.
    pub(super) fn due_for_connection(&mut self, now: tokio::time::Instant) -> Vec<(PeerId, bool)> {
        self.view.due_for_connection(now)
    }

    /// `peer` is gone (it left, or its connection was lost): it is no member, no request
    /// waits for it, and its link closes.
    pub(super) fn mark_left(&mut self, peer: &PeerId, why: &str) -> Vec<Effect> {
        let mut effects = self.change_view(why, |v| v.leave(peer));
        self.ledger.peer_gone(peer);
        effects.extend(self.settle());
        effects.push(Effect::DropLink(peer.clone()));
        effects
    }

    /// This node's own part of a join, leave or disconnect it started: resumed by
    /// [`Effect::Resume`] with `token` once ordered. One that selects no socket here
    /// (`sockets` false) is resumed at once when nothing is held.
    pub(super) fn order_local(&mut self, token: u64, sockets: bool) -> Vec<Effect> {
        if !sockets && self.barrier.is_idle() {
            return vec![Effect::Resume(token)];
        }
        self.hold(Held::Local(token))
    }

    /// The round timeout of flush round `id` passed: what it served is applied, whoever
    /// has not answered.
    pub(super) fn round_expired(&mut self, id: Id) -> Vec<Effect> {
        let waiting = self.ledger.remove(id);
        if waiting.is_empty() {
            return Vec::new();
        }
        if let Some(held_back) = ROUND_TIMEOUT_LOG.allow() {
            tracing::warn!(
                node = %self.me, ?waiting, held_back,
                "flush round timed out: the joins, leaves and disconnects it held are applied \
                 without waiting for these members any longer"
            );
        }
        let members = self.member_ids();
        let orders = self.barrier.round_ended(id, &members);
        self.carry_out(orders)
    }

    /// Request `id`'s frame could not be queued for `peer`: it does not wait for it.
    pub(super) fn not_sent(&mut self, id: Id, peer: &PeerId) -> Vec<Effect> {
        self.ledger.peer_gone_from(id, peer);
        self.settle()
    }

    /// No request waits for `peer` any longer (its connection could not be made).
    pub(super) fn stop_waiting_for(&mut self, peer: &PeerId) -> Vec<Effect> {
        self.ledger.peer_gone(peer);
        self.settle()
    }

    /// This node is leaving: no request waits any longer, and every state change held is
    /// applied, in order.
    pub(super) fn release_all(&mut self) -> Vec<Effect> {
        self.ledger.release_all();
        self.ledger.take_ended_rounds();
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
        for id in self.ledger.take_ended_rounds() {
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
                    self.ledger.book_round(id, &to);
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
            let keep_link = self.view.is_refused(&peer);
            let member = std::sync::Arc::unwrap_or_clone(member);
            effects.push(Effect::Left { member, keep_link });
        }
        for member in after.into_values() {
            tracing::info!(node = %self.me, peer = %member.peer_id(), mesh = %member.mesh_addr, "member joined");
            effects.push(Effect::Joined(Member::clone(&member)));
        }
        effects.extend(self.settle());
        effects
    }
}

/// The races the node must get right, driven without sockets: what each input decides.
#[cfg(test)]
pub(super) mod tests;
