//! The node: membership view, peer links, routing of incoming frames, and the bookkeeping of
//! requests waiting for responses. Knows nothing of socket.io: namespaces are routing keys,
//! frames are opaque beyond their routing fields.
//!
//! Every decision is made without I/O by the node's state machine ([`machine`]): who is a
//! member, what waits for whom, the order of state changes, joining, leaving, and which
//! outgoing link each frame goes to, when a connection is made, dropped or abandoned. This
//! module is the shell around it: it owns the sockets (the mesh and its links, gossip),
//! the send queues and connection attempts ([`connect`]), the channels requesters and
//! waiters read, and the timer that wakes the machine; it feeds the machine what they
//! report and carries out what it decides.

#[cfg(test)]
mod bound_tests;
mod connect;
mod handle;
mod machine;
#[cfg(test)]
pub(crate) use machine::MAX_SERVER_IDS_PER_PEER;
#[cfg(test)]
mod metrics_tests;
mod pending;
mod send;
mod service;
mod start;
mod startup;
mod stats;
#[cfg(test)]
mod stuck_peer_tests;
mod tasks;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, RwLock, Weak, atomic::AtomicU64},
    time::Duration,
};

use futures_core::Stream;
use tokio::sync::{broadcast, mpsc};

use self::machine::{Effect, Input, Machine, MetaChange, Route, Scope, SendQueue};
use self::tasks::now;
pub use handle::{Cluster, GossipStats, MembershipEvent};
pub(crate) use machine::To;
pub(crate) use pending::{Outcome, Pending};
pub(crate) use service::{ServiceHandler, ServiceReply};
pub use stats::PeerStats;

use crate::{
    gossip::membership::{KEY_LEAVING, Member, Membership, transport::GossipCounters},
    gossip::mesh::{self, ConnId, Inbound, Link, Mesh, PeerAddrs, PeerId},
    gossip::wire::{self, Frame, Id, ResponseBody},
    metrics::DropReason,
};

/// How often a node looks at what gossip knows (cheap: a read of its state).
const GOSSIP_POLL: Duration = Duration::from_millis(100);
/// How often a joining node gossips with its seeds until it joined.
const JOIN_POLL: Duration = Duration::from_millis(25);

/// Receives the requests addressed to one namespace of this node.
pub(crate) trait NamespaceHandler: Send + Sync + 'static {
    /// Handle a request from `from`. Must not block. An error says the request is not
    /// one a well-behaved peer sends (say, a payload of another socket.io parser): nothing
    /// of it was applied, and the connection it came on is closed with that reason.
    fn on_request(&self, from: &PeerId, req: wire::Request) -> Result<(), String>;

    /// Whether `req` (a join, leave or disconnect) selects a socket of this node now.
    fn selects_sockets(&self, req: &wire::Request) -> bool;
}

/// Frames dropped on their way to peers (a stuck peer can cost thousands a second): logged
/// at most once per period, node-wide.
static DROP_LOG: crate::rate_log::RateLog = crate::rate_log::RateLog::new(Duration::from_secs(1));
/// Frames refused before sending because peers would refuse them (a client's payload can
/// cause one at will): logged at most once per period, node-wide.
static REFUSED_LOG: crate::rate_log::RateLog =
    crate::rate_log::RateLog::new(Duration::from_secs(10));

/// The running node, shared by the cluster handle and every namespace adapter.
pub(crate) struct Node {
    me: PeerId,
    gossip_addr: SocketAddr,
    /// The gossip address bound (the advertised one may differ).
    gossip_bind: SocketAddr,
    mesh_addr: SocketAddr,
    request_timeout: Duration,
    max_frame_size: usize,
    mesh: Arc<Mesh>,
    membership: Membership,
    /// The state machine, and the channels its effects are told on.
    state: Mutex<State>,
    /// Wakes the timer task when the machine needs waking earlier than it sleeps.
    timer: Arc<tokio::sync::Notify>,
    /// Gossip datagrams sealed, opened and refused.
    gossip: Arc<GossipCounters>,
    /// The send queues the machine had made for connection attempts not started yet, by
    /// attempt.
    made: Arc<Mutex<HashMap<u64, (mesh::Sender, mesh::Queue)>>>,
    handlers: RwLock<HashMap<String, Weak<dyn NamespaceHandler>>>,
    /// Cluster-wide services, by name.
    services: RwLock<HashMap<String, Weak<dyn service::ServiceHandler>>>,
    events: broadcast::Sender<MembershipEvent>,
    /// Frames given up on before they reached the mesh (each also logged).
    dropped: AtomicU64,
    /// Members and membership changes, as metrics.
    metrics: crate::metrics::NodeMetrics,
    self_weak: Weak<Node>,
}

/// The machine, the channels of those who wait on it (requesters, and this node's own
/// parts of state changes waiting for their flush round), and the outgoing connections it
/// decides on.
struct State {
    machine: Machine<mesh::Sender>,
    /// The connections this node made and holds, by id (the machine says whose link each
    /// is).
    links: HashMap<ConnId, Link>,
    /// The connection attempts under way, by attempt.
    attempts: HashMap<u64, tokio::task::AbortHandle>,
    requesters: HashMap<Id, mpsc::UnboundedSender<pending::Progress>>,
    resumes: HashMap<u64, tokio::sync::oneshot::Sender<()>>,
    next_token: u64,
    /// When the timer task wakes next, if it sleeps until a deadline.
    wake_at: Option<std::time::Instant>,
}

/// Lock a std mutex, recovering from poisoning (the data stays consistent: every critical
/// section here is a plain map operation).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Forwards mesh events to the node while it lives.
struct WeakInbound(Weak<Node>);

impl Inbound for WeakInbound {
    fn on_frame(&self, from: &PeerId, frame: Frame) -> Result<(), String> {
        match self.0.upgrade() {
            Some(node) => node.on_frame(from, frame),
            None => Ok(()),
        }
    }
    fn knows_address(&self, addr: SocketAddr) -> bool {
        self.0
            .upgrade()
            .is_some_and(|node| lock(&node.state).machine.view().knows_mesh_addr(addr))
    }
    fn on_peer_connected(
        &self,
        peer: &PeerId,
        conn: ConnId,
        addrs: PeerAddrs,
    ) -> Result<(), String> {
        match self.0.upgrade() {
            Some(node) => node.admit(peer, conn, addrs),
            None => Err("this node is stopping".into()),
        }
    }
    fn on_connection_closed(&self, peer: &PeerId, conn: ConnId, reason: &mesh::Closed) {
        if let Some(node) = self.0.upgrade() {
            node.on_connection_closed(peer, conn, reason);
        }
    }
}

impl Node {
    /// Run `task` in a task of its own, in the span that names this node in log lines.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        tokio::spawn(tracing::Instrument::instrument(task, self.mesh.span()));
    }

    /// This node's identity.
    pub(crate) fn me(&self) -> &PeerId {
        &self.me
    }

    /// The advertised gossip and mesh addresses of this node.
    pub(crate) fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (self.gossip_addr, self.mesh_addr)
    }

    /// The live members, other than this node, sorted by name: shared with the view, not
    /// copied (what a member says it hosts may be long).
    pub(crate) fn members(&self) -> Vec<Arc<Member>> {
        let mut m: Vec<Arc<Member>> = lock(&self.state)
            .machine
            .view()
            .shared_members()
            .cloned()
            .collect();
        m.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        m
    }

    /// A stream of membership changes from now on.
    pub(crate) fn events(&self) -> Pin<Box<dyn Stream<Item = MembershipEvent> + Send>> {
        Box::pin(crate::lagging::stream(
            self.events.subscribe(),
            "membership event stream",
        ))
    }

    /// How many nodes, this one included, host the namespace `ns`.
    pub(crate) fn server_count(&self, ns: &str) -> u16 {
        let others = lock(&self.state)
            .machine
            .view()
            .members()
            .filter(|m| m.hosts(ns))
            .count();
        u16::try_from(others + 1).unwrap_or(u16::MAX)
    }

    /// Route requests for `ns` to `handler`, and tell the members this node hosts it and
    /// which socket.io parser it uses. From then on, a peer with another parser is refused.
    pub(crate) async fn register(
        &self,
        ns: &str,
        server_id: &str,
        parser: wire::Parser,
        handler: Weak<dyn NamespaceHandler>,
    ) {
        write(&self.handlers).insert(ns.to_string(), handler);
        let server_id = server_id.as_bytes().try_into().ok().map(Id);
        // No request among the effects: nothing to refuse.
        let _ = self.feed(Input::Meta(MetaChange::Host {
            ns: ns.to_string(),
            server_id,
            parser,
        }));
    }

    /// Stop routing requests for `ns`, and tell the members.
    pub(crate) async fn unregister(&self, ns: &str) {
        write(&self.handlers).remove(ns);
        let _ = self.feed(Input::Meta(MetaChange::Unhost(ns.to_string())));
    }

    /// Gossip datagrams sealed, opened and refused since the node started.
    pub(crate) fn gossip_counters(&self) -> &GossipCounters {
        &self.gossip
    }

    /// Why this node stopped being part of the cluster on its own, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.state).machine.failure().map(String::from)
    }

    /// Hand `input` to the machine, now: what it tells requesters and waiters is told at
    /// once, its decisions about links are carried out at once, the timer is woken when the
    /// machine needs waking earlier, and the other effects are returned to be carried out
    /// (outside the lock).
    pub(super) fn drive(&self, input: Input) -> Vec<Effect> {
        self.drive_locked(&mut lock(&self.state), input)
    }

    /// [`Node::drive`], with the lock on the state held.
    fn drive_locked(&self, state: &mut State, input: Input) -> Vec<Effect> {
        let effects = state.machine.handle(input, now());
        let effects = self.carry_out_locked(state, effects);
        let next = state.machine.next_timeout();
        if next.is_some_and(|next| state.wake_at.is_none_or(|at| next < at)) {
            state.wake_at = next;
            self.timer.notify_one();
        }
        effects
    }

    /// Carry out, under the lock, what cannot wait for it to be released: tell requesters
    /// and waiters, and start, abandon and close links (an abort that follows a start must
    /// find it). The other effects are returned.
    fn carry_out_locked(&self, state: &mut State, effects: Vec<Effect>) -> Vec<Effect> {
        // Most inputs (a frame in) decide nothing of the kind: their effects go back as
        // they are.
        let handled = |e: &Effect| {
            matches!(
                e,
                Effect::Tell(..)
                    | Effect::Resume(_)
                    | Effect::Connect { .. }
                    | Effect::Abort { .. }
                    | Effect::CloseLink { .. }
            )
        };
        if !effects.iter().any(handled) {
            return effects;
        }
        let mut rest = Vec::new();
        let mut abandoned = Vec::new();
        for effect in effects {
            match effect {
                Effect::Tell(id, progress) => {
                    let ended = matches!(progress, pending::Progress::Ended);
                    let sent = match state.requesters.get(&id) {
                        Some(tx) if !ended => tx.send(progress).is_ok(),
                        _ => false,
                    };
                    if ended {
                        state.requesters.remove(&id);
                    } else if !sent && state.requesters.remove(&id).is_some() {
                        // Its requester stopped waiting.
                        abandoned.push(id);
                    }
                }
                Effect::Resume(token) => {
                    if let Some(tx) = state.resumes.remove(&token) {
                        let _ = tx.send(());
                    }
                }
                Effect::Connect {
                    peer,
                    addr,
                    attempt,
                } => self.start_attempt(state, peer, addr, attempt),
                Effect::Abort { peer, attempt } => self.abort_attempt(state, &peer, attempt),
                Effect::CloseLink { peer, conn, why } => self.close_link(state, &peer, conn, why),
                other => rest.push(other),
            }
        }
        for id in abandoned {
            state.machine.handle(Input::Abandoned(id), now());
        }
        rest
    }

    /// [`Node::drive`], carrying out the effects. An error says a request was refused by
    /// its namespace.
    pub(super) fn feed(&self, input: Input) -> Result<(), String> {
        let effects = self.drive(input);
        self.run(effects)
    }

    pub(super) fn weak(&self) -> Weak<Node> {
        self.self_weak.clone()
    }

    /// Wait until this node has applied every frame the other members had queued for it
    /// before now (see [`machine`]'s barrier): its own part of a join, leave or disconnect
    /// is applied then. `sockets` says whether the change selects sockets of this node; one
    /// that does not goes at once while nothing is held. Bounded by the round timeout
    /// (twice, behind a round in flight).
    pub(crate) async fn ordered(&self, sockets: bool) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = {
            let mut state = lock(&self.state);
            let token = state.next_token;
            state.next_token += 1;
            state.resumes.insert(token, tx);
            token
        };
        let _ = self.feed(Input::Ordered { token, sockets });
        // Fails only when the node dropped the token (it is stopping): nothing to wait for.
        let _ = rx.await;
    }

    /// A frame from `from`. An error closes the connection it came on, with that reason.
    pub(super) fn on_frame(&self, from: &PeerId, frame: Frame) -> Result<(), String> {
        // Read for joins, leaves and disconnects only.
        let scope = match &frame {
            Frame::Request(req) if req.kind.changes_state() => self.scope(req),
            _ => Scope::NotHosted,
        };
        self.feed(Input::Frame(from.clone(), frame, scope))
    }

    /// What a join, leave or disconnect selects here, as its namespace says now.
    pub(super) fn scope(&self, req: &wire::Request) -> Scope {
        match read(&self.handlers).get(&req.ns).and_then(Weak::upgrade) {
            None => Scope::NotHosted,
            Some(h) if h.selects_sockets(req) => Scope::Sockets,
            Some(_) => Scope::NoSocket,
        }
    }

    /// Carry out what the machine decided. An error says a request was refused by its
    /// namespace: the connection it came on closes with that reason.
    pub(super) fn run(&self, effects: Vec<Effect>) -> Result<(), String> {
        let mut refused = Ok(());
        let mut effects = effects.into_iter();
        while let Some(effect) = effects.next() {
            match effect {
                Effect::MemberJoined(member) => {
                    self.metrics.changed(true, self.member_count());
                    let _ = self.events.send(MembershipEvent::Joined(member));
                }
                Effect::MemberLeft { member } => {
                    self.metrics.changed(false, self.member_count());
                    self.mesh.metrics().drops.forget(&member.node_name);
                    let _ = self.events.send(MembershipEvent::Left(member));
                }
                Effect::SendMeta(to, meta) => {
                    if let Err(e) = self.send_now(To::Peers(&to), &Frame::Meta(meta), false) {
                        tracing::warn!(node = %self.me, "cannot tell members about this node: {e}");
                    }
                }
                Effect::Refused(peer) => {
                    self.mesh
                        .metrics()
                        .drops
                        .record(&peer.name, DropReason::Refused, 1)
                }
                Effect::Request(from, req) => {
                    if let Err(why) = self.deliver(&from, req) {
                        refused = Err(why);
                    }
                }
                Effect::Service(from, frame) => self.on_service_frame(&from, frame),
                Effect::Flush { id, to } => match self.encode(&Frame::Flush(id), to.iter()) {
                    Ok(bytes) => {
                        let routes = self.routes(To::Peers(&to));
                        self.dispatch(routes, bytes, false, Some(id));
                    }
                    Err(e) => tracing::warn!("flush round not sent: {e}"),
                },
                Effect::AnswerFlush(to, id) => self.respond(&to, id, ResponseBody::Done),
                Effect::Apply(from, req) => {
                    // Its own frame was handled long ago: nothing to close.
                    if let Err(why) = self.deliver(&from, req) {
                        tracing::warn!(peer = %from, "state change dropped: {why}");
                    }
                }
                Effect::Leave => {
                    // What the machine released goes after the leave notices.
                    let rest: Vec<Effect> = effects.by_ref().collect();
                    if let Some(node) = self.weak().upgrade() {
                        self.spawn(async move { node.leave(rest).await });
                    }
                }
                // Carried out under the lock; the join loop and `admit` read the machine
                // themselves.
                Effect::Tell(..)
                | Effect::Resume(_)
                | Effect::Connect { .. }
                | Effect::Abort { .. }
                | Effect::CloseLink { .. }
                | Effect::Ready
                | Effect::Refuse(_) => {}
            }
        }
        refused
    }

    /// How many members there are now.
    pub(super) fn member_count(&self) -> usize {
        lock(&self.state).machine.view().members().count()
    }

    /// Hand a request to its namespace; one for a namespace not hosted here is answered so.
    pub(super) fn deliver(&self, from: &PeerId, req: wire::Request) -> Result<(), String> {
        let handler = read(&self.handlers).get(&req.ns).and_then(Weak::upgrade);
        match handler {
            Some(h) => h.on_request(from, req),
            None => {
                tracing::debug!(peer = %from, ns = %req.ns, "request for a namespace not hosted here");
                if req.kind.expects_response() {
                    self.respond(from, req.id, ResponseBody::NotHosted);
                }
                Ok(())
            }
        }
    }

    pub(super) fn on_connection_closed(&self, peer: &PeerId, conn: ConnId, reason: &mesh::Closed) {
        let effects = {
            let mut state = lock(&self.state);
            state.links.remove(&conn);
            self.drive_locked(
                &mut state,
                Input::Closed(peer.clone(), conn, reason.clone()),
            )
        };
        let _ = self.run(effects);
    }

    /// `peer` proved the cluster secret on connection `conn`: admit it, unless the machine
    /// refuses; why it is refused.
    pub(super) fn admit(
        &self,
        peer: &PeerId,
        conn: ConnId,
        addrs: PeerAddrs,
    ) -> Result<(), String> {
        let effects = self.drive(Input::Proven(peer.clone(), conn, addrs));
        let refused = effects.iter().find_map(|e| match e {
            Effect::Refuse(why) => Some(why.clone()),
            _ => None,
        });
        let _ = self.run(effects);
        refused.map_or(Ok(()), Err)
    }

    /// Apply what gossip knows now; connect to the nodes not proven yet.
    pub(super) async fn refresh_from_gossip(self: &Arc<Self>) {
        let mut nodes = self.membership.nodes().await;
        nodes.reachable.remove(&self.me);
        let _ = self.feed(Input::Gossip(nodes));
    }

    /// Join through the seeds: gossip with them at once and again every few milliseconds,
    /// until the machine says the node joined (every node they know of proved itself over
    /// the mesh), or `timeout` passed.
    pub(super) async fn join(self: &Arc<Self>, seeds: &[String], timeout: Duration) {
        let mut addrs = Vec::new();
        for seed in seeds {
            if let Ok(found) = tokio::net::lookup_host(seed.as_str()).await {
                addrs.extend(found.filter(|a| *a != self.gossip_addr && *a != self.gossip_bind));
            }
        }
        let seeds = !addrs.is_empty();
        let _ = self.feed(Input::Start { seeds, timeout });
        // Bounded by the join timeout: the machine is ready once it passed.
        while !self.ready() && !self.has_left() {
            self.membership.gossip_now(addrs.iter().copied());
            tokio::time::sleep(JOIN_POLL).await;
            self.refresh_from_gossip().await;
            let known = self
                .membership
                .nodes()
                .await
                .reachable
                .into_keys()
                .collect();
            let _ = self.feed(Input::Known(known));
        }
    }

    /// Whether the node joined (or waited out the join timeout) and is still part of the
    /// cluster.
    pub(crate) fn ready(&self) -> bool {
        lock(&self.state).machine.is_ready()
    }

    /// Whether the node left the cluster.
    pub(super) fn has_left(&self) -> bool {
        lock(&self.state).machine.has_left()
    }

    /// Leave the cluster: tell every peer, close the mesh, stop gossiping. Requests pending
    /// on this node complete with what they have.
    pub(crate) async fn shutdown(&self) {
        let mut effects = self.drive(Input::Shutdown);
        if matches!(effects.first(), Some(Effect::Leave)) {
            effects.remove(0);
            self.leave(effects).await;
        }
    }

    /// Carry out the machine's [`Effect::Leave`]: tell gossip and every peer, carry out
    /// `then` (what the machine released), close the mesh, stop gossiping.
    pub(super) async fn leave(&self, then: Vec<Effect>) {
        self.membership.set(KEY_LEAVING, "1").await;
        let members = self.members();
        self.membership
            .gossip_now(members.iter().map(|m| m.gossip_addr));
        if let Ok(bytes) = wire::encode(&Frame::Leave) {
            let links: Vec<Link> = lock(&self.state).links.values().cloned().collect();
            for link in &links {
                let _ = link.send(bytes.clone());
            }
        }
        let _ = self.run(then);
        self.mesh.close(mesh::CLOSE_LEAVING, b"leaving").await;
        self.membership.shutdown();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Every handle is gone: stop serving peers and gossiping; the timer task ends.
        self.timer.notify_one();
        self.mesh.close_now(mesh::CLOSE_LEAVING, b"dropped");
        self.membership.shutdown();
    }
}
