//! What goes into the node's state machine ([`Input`]) and what comes out of it
//! ([`Effect`]): the whole of its contract with the shell that owns the sockets, channels and
//! timers.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

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
    /// Connection attempt `attempt` to `peer` ([`Effect::Connect`]) was made as `conn`: the
    /// peer proved the cluster secret on it, with the addresses it says are its own.
    Connected {
        /// To whom.
        peer: PeerId,
        /// Which attempt.
        attempt: u64,
        /// The connection made.
        conn: ConnId,
        /// The addresses the peer signed.
        addrs: PeerAddrs,
    },
    /// Connection attempt `attempt` to `peer` could not be made, for `reason`; what was
    /// queued on it is dropped.
    ConnectFailed {
        /// To whom.
        peer: PeerId,
        /// Which attempt.
        attempt: u64,
        /// Why.
        reason: String,
    },
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
    /// A member left: the application hears of it. (Its link is closed by the effects
    /// before, unless it was refused for its parser: this node's metadata may still be on
    /// its way to it.)
    MemberLeft {
        /// Who.
        member: Member,
    },
    /// Send what this node says about itself to these peers.
    SendMeta(Vec<PeerId>, NodeMeta),
    /// Refuse the connection just proven, for this reason.
    Refuse(String),
    /// Start connection attempt `attempt` to `peer` at `addr`, writing the send queue made
    /// for that attempt (see [`super::MakeQueue`]); its result comes back as
    /// [`Input::Connected`] or [`Input::ConnectFailed`].
    Connect {
        /// To whom.
        peer: PeerId,
        /// Where.
        addr: SocketAddr,
        /// Which attempt.
        attempt: u64,
    },
    /// Stop making connection attempt `attempt` to `peer`: what was queued on it is
    /// dropped. Its result, if it comes anyway, is closed.
    Abort {
        /// To whom.
        peer: PeerId,
        /// Which attempt.
        attempt: u64,
    },
    /// Close this node's connection `conn` to `peer`, for `why`.
    CloseLink {
        /// To whom.
        peer: PeerId,
        /// Which connection.
        conn: ConnId,
        /// Why.
        why: Closing,
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
    /// Leave the cluster: tell gossip, and every peer on the connections this node made,
    /// then close the mesh, every connection with it (why, when the node did not choose
    /// to, is [`super::Machine::failure`]). The machine keeps no link slot from then on.
    Leave,
}

/// Why this node closes one of its own connections ([`Effect::CloseLink`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Its peer left, or a newer generation of it replaced it.
    Replaced,
    /// Its peer is no longer known (gossip does not show it, it proved nothing).
    Forgotten,
    /// It was made after its slot was dropped: nothing sends on it.
    Late,
    /// The peer was refused on it (see [`Effect::Refuse`]).
    Refused,
}
