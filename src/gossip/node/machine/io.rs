//! What goes into the node's state machine ([`Input`]) and what comes out of it
//! ([`Effect`]): the whole of its contract with the shell that owns the sockets, channels and
//! timers.

use std::{collections::HashSet, time::Duration};

use crate::{
    gossip::{
        membership::{GossipNodes, Member},
        mesh::{self, ConnId, PeerAddrs},
        peer::PeerId,
        wire::{self, Frame, Id, NodeMeta, Parser, ResponseBody, ServiceFrame},
    },
    ledger::Progress,
};

/// Where a frame goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum To<'a> {
    /// Every live member.
    All,
    /// The member running this socketioxide server, if one does.
    Server(Id),
    /// These peers.
    Peers(&'a [PeerId]),
}

/// What a join, leave or disconnect from a peer selects here, as its namespace said when it
/// arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Its namespace is not hosted here: answered so at once.
    NotHosted,
    /// No socket of this node now: with nothing held, applied at once (nothing here can see
    /// its order with the emits still on their way).
    NoSocket,
    /// Sockets of this node: it waits for its flush round.
    Sockets,
}

/// A change of what this node tells members about itself.
#[derive(Debug)]
pub(crate) enum MetaChange {
    /// It hosts namespace `ns`, runs the socketioxide server `server_id` (when it is one)
    /// and uses `parser`.
    Host {
        /// The namespace.
        ns: String,
        /// The server id, when it is 16 bytes.
        server_id: Option<Id>,
        /// Its socket.io parser.
        parser: Parser,
    },
    /// It no longer hosts namespace `ns`.
    Unhost(String),
}

/// What happened, as the shell reports it to the state machine, with the time it happened.
#[derive(Debug)]
pub(crate) enum Input {
    /// The node started: it joins through its seeds (when it has any) until every node
    /// they show proved itself, or for `timeout` at most.
    Start {
        /// Whether the node has seeds other than itself.
        seeds: bool,
        /// The join timeout.
        timeout: Duration,
    },
    /// A frame from a peer; `Scope` is what it selects here when it is a join, leave or
    /// disconnect (read from its namespace by the shell).
    Frame(PeerId, Frame, Scope),
    /// A peer proved the cluster secret on a connection, with the addresses it says are its
    /// own. Refused with [`Effect::Refuse`].
    Proven(PeerId, ConnId, PeerAddrs),
    /// A connection to or from a peer closed.
    Closed(PeerId, ConnId, mesh::Closed),
    /// What gossip shows now (this node excluded).
    Gossip(GossipNodes),
    /// While joining: the nodes gossip shows reachable now, this node included.
    Known(HashSet<PeerId>),
    /// This node asked `targets` with request `id` and waits for their answers for `wait`.
    Asked {
        /// The request.
        id: Id,
        /// The peers asked.
        targets: Vec<PeerId>,
        /// How long it waits.
        wait: Duration,
    },
    /// Request `id`'s frame could not be queued for a peer.
    NotSent(Id, PeerId),
    /// No connection to this peer could be made: nothing waits for it any longer.
    Unreachable(PeerId),
    /// The requester of `id` stopped waiting.
    Abandoned(Id),
    /// This node's own part of a join, leave or disconnect it started, resumed by
    /// [`Effect::Resume`] with `token` once ordered; `sockets` says whether it selects
    /// sockets of this node.
    Ordered {
        /// Its token.
        token: u64,
        /// Whether it selects sockets here.
        sockets: bool,
    },
    /// What this node says about itself changes.
    Meta(MetaChange),
    /// The gossip task ended by itself, for this reason.
    GossipStopped(String),
    /// Leave the cluster.
    Shutdown,
    /// Time passed: the deadline [`super::Machine::next_timeout`] gave may be reached.
    Tick,
}

/// What the node must do after an input.
#[derive(Debug)]
pub(crate) enum Effect {
    /// A member joined: the application hears of it.
    MemberJoined(Member),
    /// A member left: the application hears of it, and the link to it is closed, unless it
    /// was refused for its parser (this node's metadata may still be on its way to it).
    MemberLeft {
        /// Who.
        member: Member,
        /// Keep the link open.
        keep_link: bool,
    },
    /// Send what this node says about itself to these peers.
    SendMeta(Vec<PeerId>, NodeMeta),
    /// Close the link to this peer (it left, or a newer generation displaced it).
    DropLink(PeerId),
    /// Refuse the connection just proven, for this reason.
    Refuse(String),
    /// Connect to a peer gossip shows and that has not proved itself; `first` is whether it
    /// is the first attempt.
    Connect {
        /// Who.
        peer: PeerId,
        /// The first attempt.
        first: bool,
    },
    /// Hand a request to the namespace it names.
    Request(PeerId, wire::Request),
    /// Hand a message to the service it names.
    Service(PeerId, ServiceFrame),
    /// A frame from this peer was refused (it is refused for its parser): count it.
    Refused(PeerId),
    /// Ask each of `to` for a flush answer to round `id` (see [`super::barrier`]).
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
    /// Tell the requester of request `id`.
    Tell(Id, Progress<PeerId, ResponseBody>),
    /// The join ended: the node is ready.
    Ready,
    /// Leave the cluster: tell gossip and every peer, close the mesh (why, when the node
    /// did not choose to, is [`super::Machine::failure`]).
    Leave,
}
