//! The node: membership view, peer links, routing of incoming frames, and the bookkeeping of
//! requests waiting for responses. Knows nothing of socket.io: namespaces are routing keys,
//! frames are opaque beyond their routing fields.
//!
//! Its decisions are made without I/O, in [`core`] (who is a member, what waits for whom,
//! with [`barrier`] for the order of state changes) and [`outgoing`] (the link table); this
//! module is the shell that feeds them what the mesh and gossip report and carries out what
//! they decide.

mod barrier;
mod core;
#[cfg(test)]
pub(crate) use core::MAX_SERVER_IDS_PER_PEER;
mod handle;
mod ledger;
#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod order_tests;
mod outgoing;
mod service;
mod startup;
mod stats;
#[cfg(test)]
mod stuck_peer_tests;
#[cfg(test)]
pub(crate) mod tests;
mod view;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

use self::core::{Core, Effect, Scope};
use self::outgoing::{Connecting, Outgoing, Route};
pub use handle::{Cluster, GossipStats, MembershipEvent};
pub(crate) use ledger::{Outcome, Pending};
pub(crate) use service::{ServiceHandler, ServiceReply};
use startup::{advertised, check_seed, gossip_addrs};
pub use stats::PeerStats;

/// How often a node looks at what gossip knows (cheap: a read of its state).
const GOSSIP_POLL: Duration = Duration::from_millis(100);
/// How often a joining node gossips with its seeds until it joined.
const JOIN_POLL: Duration = Duration::from_millis(25);

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::broadcast;

use crate::{
    error::{Error, RequestError},
    gossip::config::{Auth, GossipAdapterConfig},
    gossip::keys,
    gossip::membership::{
        self, GossipSettings, GossipTransport, KEY_LEAVING, Member, Membership,
        seal::GossipKeys,
        transport::{GossipCounters, SealedTransport},
    },
    gossip::mesh::{self, ConnId, Inbound, Link, Mesh, PeerAddrs, PeerId, auth::Keyring},
    gossip::wire::{self, Frame, Id, NodeMeta, Response, ResponseBody},
    metrics::DropReason,
};

/// Receives the requests addressed to one namespace of this node.
pub(crate) trait NamespaceHandler: Send + Sync + 'static {
    /// Handle a request from `from`. Must not block. An error says the request is not
    /// one a well-behaved peer sends (say, a payload of another socket.io parser): nothing
    /// of it was applied, and the connection it came on is closed with that reason.
    fn on_request(&self, from: &PeerId, req: wire::Request) -> Result<(), String>;

    /// Whether `req` (a join, leave or disconnect) selects a socket of this node now.
    fn selects_sockets(&self, req: &wire::Request) -> bool;
}

/// Namespaces not announced to peers (beyond the bounds they decode): logged at most once
/// per period, node-wide.
static UNANNOUNCED_LOG: crate::rate_log::RateLog =
    crate::rate_log::RateLog::new(Duration::from_secs(10));

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
    /// Who is a member, the requests waiting for responses, the server ids of peers.
    core: Mutex<Core>,
    /// What this node tells members about itself (server id, namespaces, parser).
    meta: Mutex<NodeMeta>,
    /// Gossip datagrams sealed, opened and refused.
    gossip: Arc<GossipCounters>,
    /// Why this node stopped being part of the cluster on its own, if it did.
    failure: Mutex<Option<String>>,
    /// This node's outgoing connections.
    outgoing: Outgoing,
    handlers: RwLock<HashMap<String, Weak<dyn NamespaceHandler>>>,
    /// Cluster-wide services, by name.
    services: RwLock<HashMap<String, Weak<dyn service::ServiceHandler>>>,
    events: broadcast::Sender<MembershipEvent>,
    shutting_down: AtomicBool,
    /// Set once the node joined through its seeds, or waited out the join timeout.
    joined: AtomicBool,
    /// Frames given up on before they reached the mesh (each also logged).
    dropped: AtomicU64,
    /// This node's own parts of state changes waiting for their flush round, by token.
    resumes: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    /// The next token of [`Node::resumes`].
    next_resume: AtomicU64,
    /// The task that ends the flush round in flight at its timeout: one at a time (a round
    /// starts once the one before ended), the one before is stopped.
    round_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Members and membership changes, as metrics.
    metrics: crate::metrics::NodeMetrics,
    self_weak: Weak<Node>,
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
            .is_some_and(|node| lock(&node.core).view().knows_mesh_addr(addr))
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
    /// Bind both ports, start gossip and the mesh.
    pub(crate) async fn start(config: &GossipAdapterConfig) -> Result<Arc<Self>, Error> {
        let keys = match &config.auth {
            Auth::Missing => return Err(Error::MissingSecret),
            Auth::Insecure => {
                tracing::warn!(
                    "socketioxide-cluster runs WITHOUT AUTHENTICATION (insecure_no_auth): gossip \
                     travels in clear, and any host that reaches the gossip or mesh port can \
                     join the cluster and act on every socket"
                );
                None
            }
            Auth::Secrets(secrets) => {
                config.warn_if_default_salt();
                let (cluster_id, secrets) = (config.cluster_id.clone(), secrets.clone());
                let derive = move || keys::derive_keyring(&cluster_id, &secrets);
                let derived = if config.network.is_some() {
                    // A simulated network runs on one thread, in simulated time: a thread
                    // of the blocking pool would make its runs differ.
                    derive()
                } else {
                    tokio::task::spawn_blocking(derive)
                        .await
                        .map_err(|e| Error::KeyDerivation(e.to_string()))?
                };
                Some(derived.map_err(|e| match e {
                    keys::KeyError::Weak { .. } => Error::WeakSecret {
                        reason: e.to_string(),
                    },
                    keys::KeyError::Kdf(reason) => Error::KeyDerivation(reason),
                })?)
            }
        };
        for seed in &config.seeds {
            check_seed(seed).await?;
        }
        for line in config.deprecations() {
            tracing::warn!("{line}");
        }
        let network = config.network.as_ref().map(|n| &n.0);
        let now = network.map_or_else(SystemTime::now, |n| n.wall_clock());
        let generation = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let name = config
            .node_name
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
        let me = PeerId {
            name: name.into(),
            generation,
        };

        let keyring = Keyring::new(
            config.cluster_id.clone(),
            keys.as_ref().map(|k| k.iter().map(|k| k.mesh).collect()),
        );
        let custom_socket = match network {
            Some(network) => Some(mesh::CustomSocket {
                socket: network
                    .bind_mesh(config.mesh_addr)
                    .await
                    .map_err(|source| Error::MeshBind {
                        addr: config.mesh_addr,
                        source,
                    })?,
                runtime: network.runtime(),
                rng_seed: network.rng_seed(),
                clock: Arc::new(mesh::Clock({
                    let network = network.clone();
                    move || network.wall_clock()
                })),
            }),
            None => None,
        };
        let mut mesh = Mesh::bind(
            config.mesh_addr,
            custom_socket,
            keyring,
            config.tls.as_ref(),
            config.max_frame_size,
            config.peer_timeout,
            mesh::Budgets::new(config.peer_queue_bytes, config.node_queue_bytes),
        )
        .map_err(|e| match e {
            mesh::MeshError::Bind { addr, source } => Error::MeshBind { addr, source },
            mesh::MeshError::TlsFile { path, reason } => Error::TlsFile { path, reason },
            other => Error::Tls(other.to_string()),
        })?;
        mesh.set_handshake_timeout(config.handshake_timeout);
        let mesh_bound = mesh.local_addr().map_err(|source| Error::MeshBind {
            addr: config.mesh_addr,
            source,
        })?;
        let mesh_addr = config
            .mesh_advertise_addr
            .unwrap_or_else(|| advertised(mesh_bound));
        let (gossip_bind, gossip_addr) = gossip_addrs(config)?;
        mesh.set_identity(
            &me,
            PeerAddrs {
                mesh: mesh_addr,
                gossip: gossip_addr,
            },
        );

        let settings = GossipSettings {
            cluster_id: config.cluster_id.clone(),
            me: me.clone(),
            bind: gossip_bind,
            advertise: gossip_addr,
            seeds: config.seeds.clone(),
            interval: config.gossip_interval,
            mesh_advertise: mesh_addr,
        };
        crate::metrics::describe();
        let gossip_counters = Arc::new(GossipCounters::new(&me.name));
        let transport = match (network, &keys) {
            (Some(network), _) => GossipTransport::Custom(network.clone()),
            (None, Some(keys)) => match GossipKeys::new(&config.cluster_id, keys) {
                Some(k) => {
                    GossipTransport::Sealed(SealedTransport::new(k, gossip_counters.clone()))
                }
                None => return Err(Error::MissingSecret),
            },
            (None, None) => GossipTransport::Plain,
        };
        let membership = Membership::start(settings, transport, gossip_counters.clone())
            .await
            .map_err(|reason| Error::GossipBind {
                addr: gossip_bind,
                reason,
            })?;
        let changes = membership.changes().await;

        let me_name = me.name.clone();
        let node = Arc::new_cyclic(|self_weak| Node {
            self_weak: self_weak.clone(),
            core: Mutex::new(Core::new(me.clone())),
            me,
            gossip_addr,
            gossip_bind,
            mesh_addr,
            request_timeout: config.request_timeout,
            max_frame_size: config.max_frame_size,
            mesh: Arc::new(mesh),
            membership,
            meta: Mutex::new(NodeMeta {
                version: 1,
                server_id: None,
                namespaces: Vec::new(),
                parser: None,
            }),
            gossip: gossip_counters,
            failure: Mutex::default(),
            outgoing: Outgoing::default(),
            handlers: RwLock::default(),
            services: RwLock::default(),
            events: broadcast::channel(256).0,
            shutting_down: AtomicBool::new(false),
            joined: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            resumes: Mutex::default(),
            next_resume: AtomicU64::new(0),
            round_task: Mutex::default(),
            metrics: crate::metrics::NodeMetrics::new(&me_name),
        });
        node.mesh
            .serve(Arc::new(WeakInbound(Arc::downgrade(&node))));
        node.spawn(watch_membership(
            Arc::downgrade(&node),
            changes,
            node.membership.stopped(),
        ));
        tracing::info!(
            node = %node.me, gossip = %gossip_addr, mesh = %mesh_addr, cluster = %config.cluster_id,
            "cluster node started"
        );
        node.join(&config.seeds, config.join_timeout).await;
        Ok(node)
    }

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
        let mut m: Vec<Arc<Member>> = lock(&self.core).view().shared_members().cloned().collect();
        m.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        m
    }

    /// A stream of membership changes from now on.
    pub(crate) fn events(&self) -> Pin<Box<dyn Stream<Item = MembershipEvent> + Send>> {
        let rx = self.events.subscribe();
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            skipped = n,
                            "membership event stream lagged; events dropped"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    /// How many nodes, this one included, host the namespace `ns`.
    pub(crate) fn server_count(&self, ns: &str) -> u16 {
        let others = lock(&self.core)
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
        let id = server_id.as_bytes().try_into().ok().map(Id);
        self.update_meta(|m| {
            m.server_id = id.or(m.server_id);
            // Dynamic namespaces are named by clients: the bound is logged at a bounded rate.
            if !m.host(ns)
                && let Some(held_back) = UNANNOUNCED_LOG.allow()
            {
                tracing::warn!(
                    %ns, held_back, announced = m.namespaces.len(),
                    "namespace not announced to peers (they count this node out of its \
                     server_count, broadcasts still reach it): peers take at most {} names \
                     of at most {} bytes", wire::MAX_NAMESPACES, wire::MAX_NAMESPACE_LEN
                );
            }
            match m.parser {
                Some(mine) if mine != parser => tracing::error!(
                    %ns,
                    "namespace uses the {parser} parser, but this node's other namespaces use \
                     the {mine} parser: its peers are checked against the {mine} parser"
                ),
                _ => m.parser = Some(parser),
            }
        })
        .await;
    }

    /// Stop routing requests for `ns`, and tell the members.
    pub(crate) async fn unregister(&self, ns: &str) {
        write(&self.handlers).remove(ns);
        self.update_meta(|m| m.namespaces.retain(|n| n != ns)).await;
    }

    /// Change what this node says about itself, and tell every member (and the peers it
    /// refuses now for their parser, so that they refuse this node in turn).
    async fn update_meta(&self, change: impl FnOnce(&mut NodeMeta)) {
        let meta = {
            let mut meta = lock(&self.meta);
            change(&mut meta);
            meta.version += 1;
            meta.clone()
        };
        let mut targets: Vec<PeerId> = self.members().iter().map(|m| m.peer_id()).collect();
        let (refused, effects) = lock(&self.core).refuse_other_parsers(meta.parser);
        // No request among the effects: nothing to refuse.
        let _ = self.run(effects);
        targets.extend(refused);
        if let Err(e) = self
            .send(To::Peers(&targets), &Frame::Meta(meta), false)
            .await
        {
            tracing::warn!(node = %self.me, "cannot tell members about this node: {e}");
        }
    }

    /// Gossip datagrams sealed, opened and refused since the node started.
    pub(crate) fn gossip_counters(&self) -> &GossipCounters {
        &self.gossip
    }

    /// Why this node stopped being part of the cluster on its own, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// The peers a frame goes to.
    fn targets(&self, to: To<'_>) -> Vec<PeerId> {
        lock(&self.core).targets(to)
    }

    /// Queue a frame for each peer `to` names, in order per peer, without waiting on any of
    /// them (the returned future is ready at its first poll): a peer whose send queue is
    /// past its byte budget (it is cut as a slow consumer), or to which no connection can be
    /// started, does not get it (the drop is counted and logged at a bounded rate) and the
    /// others get theirs at once. A frame for a peer being connected to waits in its queue
    /// until the connection is made. Fails, sending nothing, when the frame is larger than
    /// peers accept.
    pub(crate) async fn send(
        &self,
        to: To<'_>,
        frame: &Frame,
        volatile: bool,
    ) -> Result<(), RequestError> {
        let targets = self.targets(to);
        if !targets.is_empty() {
            self.dispatch(&targets, self.encode(frame, &targets)?, volatile, None);
        }
        Ok(())
    }

    /// Send a request to each peer `to` names, as [`Node::send`] does, and wait for their
    /// responses: `frame` builds the request from its id. The request ends once every peer
    /// asked answered in full or was found gone (a peer its frame could not be queued for is
    /// gone at once), or after `wait`.
    pub(crate) async fn request(
        self: &Arc<Self>,
        to: To<'_>,
        wait: Duration,
        frame: impl FnOnce(Id) -> Frame,
    ) -> Result<Pending, RequestError> {
        let targets = self.targets(to);
        let id = Id(rand::random());
        let frame = frame(id);
        let bytes = self.encode(&frame, &targets)?;
        // Booked before sending: a response can arrive before the frames are queued.
        let progress = lock(&self.core).ledger.book(id, &targets);
        let what = (describe(&frame), kind(&frame));
        let pending = Pending::new(Arc::downgrade(self), id, progress, wait, what, &targets);
        self.dispatch(&targets, bytes, false, Some(id));
        Ok(pending)
    }

    /// Queue an encoded frame for each of `targets`, never waiting: it is held once, however
    /// many queues hold it. Request `awaited` stops waiting for a peer its frame could not be
    /// queued for.
    fn dispatch(&self, targets: &[PeerId], bytes: Bytes, volatile: bool, awaited: Option<Id>) {
        let charged = self.mesh.charge(bytes).map_err(queue_error);
        for peer in targets {
            let queued = charged
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|frame| self.queue_frame(peer, frame));
            if let Err((reason, why)) = queued {
                self.frame_dropped(peer, volatile, reason, &why);
                if let Some(id) = awaited {
                    let effects = lock(&self.core).not_sent(id, peer);
                    let _ = self.run(effects);
                }
            }
        }
    }

    /// Queue a frame for `peer`, never waiting, neither for room nor on a connection being
    /// made.
    fn queue_frame(
        &self,
        peer: &PeerId,
        frame: &mesh::Charged,
    ) -> Result<(), (DropReason, String)> {
        // One retry: a queue found closed (its connection just closed) is replaced.
        for _ in 0..2 {
            let queue = self
                .queue_for(peer)
                .map_err(|why| (DropReason::PeerGone, why))?;
            match queue.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(mesh::SendError::Closed) => {}
                Err(e) => return Err(queue_error(e)),
            }
        }
        Err((DropReason::PeerGone, "connection closed".into()))
    }

    /// Count and log (at a bounded rate) a frame for `peer` given up on.
    fn frame_dropped(&self, peer: &PeerId, volatile: bool, reason: DropReason, why: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.mesh.metrics().drops.record(&peer.name, reason, 1);
        if let Some(held_back) = DROP_LOG.allow() {
            tracing::warn!(node = %self.me, %peer, volatile, held_back, "frame dropped: {why}");
        }
    }

    /// Encode a frame for `targets` with the wire's one check of what peers accept: a frame
    /// a peer would refuse (a list beyond its bound, larger than a frame; the peer would
    /// drop the link) is refused here, counted as dropped for each target and logged at a
    /// bounded rate. Nothing of it is sent.
    fn encode(&self, frame: &Frame, targets: &[PeerId]) -> Result<Bytes, RequestError> {
        let err = match wire::encode_within(frame, self.max_frame_size) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => e,
        };
        if !matches!(err, wire::EncodeError::Codec(_)) {
            for peer in targets {
                self.mesh
                    .metrics()
                    .drops
                    .record(&peer.name, DropReason::TooLarge, 1);
            }
            if let Some(held_back) = REFUSED_LOG.allow() {
                tracing::warn!(node = %self.me, held_back, "{} not sent to peers: {err}", describe(frame));
            }
        }
        Err(err.into())
    }

    /// Frames to peers dropped since the node started: given up on before reaching the mesh,
    /// or still queued when a connection closed or could not be made.
    pub(crate) fn frames_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.mesh.frames_dropped()
    }

    /// Bytes queued for all peers, each frame counted once.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.mesh.queued_bytes()
    }

    /// Outgoing connections closed as slow consumers.
    pub(crate) fn slow_peers_disconnected(&self) -> u64 {
        self.mesh.slow_peers_disconnected()
    }

    /// Send a response to the node that made a request, never waiting: like any frame, it
    /// is dropped (and counted) when the requester's send queue is past its budget, and the
    /// requester is then cut as a slow consumer. A response that cannot cross (a list
    /// beyond a bound of the wire, larger than a frame) goes as [`ResponseBody::Refused`]
    /// instead, so that the requester learns at once why it gets nothing.
    pub(crate) fn respond(&self, to: &PeerId, id: Id, body: ResponseBody) {
        self.respond_or(to, id, body, ResponseBody::Refused);
    }

    /// [`Node::respond`], sending `refused(why)` in place of a response that cannot cross.
    pub(crate) fn respond_or(
        &self,
        to: &PeerId,
        id: Id,
        body: ResponseBody,
        refused: impl FnOnce(String) -> ResponseBody,
    ) {
        let encoded = match self.encode(&Frame::Response(Response { id, body }), &[]) {
            Err(e @ (RequestError::OverBound { .. } | RequestError::TooLarge { .. })) => {
                let body = refused(e.to_string());
                self.encode(&Frame::Response(Response { id, body }), &[])
            }
            encoded => encoded,
        };
        let queued = match encoded {
            Ok(bytes) => self
                .mesh
                .charge(bytes)
                .map_err(queue_error)
                .and_then(|frame| self.queue_frame(to, &frame)),
            Err(RequestError::TooLarge { size, max }) => Err((
                DropReason::TooLarge,
                format!("larger ({size} bytes) than peers accept ({max})"),
            )),
            Err(e) => Err((DropReason::PeerGone, format!("cannot encode it: {e}"))),
        };
        if let Err((reason, why)) = queued {
            self.frame_dropped(to, false, reason, &format!("response: {why}"));
        }
    }

    /// The send queue of the connection to `peer`, open or being made; if there is none, a
    /// new one, whose connection is made in the background. Never waits.
    fn queue_for(&self, peer: &PeerId) -> Result<mesh::Sender, String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("this node is shutting down".into());
        }
        let connecting = match self.outgoing.route(peer)? {
            Route::Queue(queue) => return Ok(queue),
            Route::Connect(connecting) => connecting,
        };
        let node = self.weak().upgrade().ok_or("this node is stopping")?;
        let (addr, queue) = self.new_queue(peer, &connecting)?;
        let sender = queue.0.clone();
        let peer = peer.clone();
        self.spawn(async move {
            if let Err(reason) = node.connect(&peer, connecting, addr, queue).await {
                // The frames queued meanwhile are counted by their queue.
                if let Some(held_back) = DROP_LOG.allow() {
                    tracing::warn!(%peer, held_back, "frames queued for a peer dropped, cannot connect: {reason}");
                }
                node.stop_waiting_for(&peer);
            }
        });
        Ok(sender)
    }

    /// The outgoing link to `peer`, connecting if needed (after a connection being made by
    /// another caller, if any).
    async fn link(&self, peer: &PeerId) -> Result<Link, String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("this node is shutting down".into());
        }
        let connecting = self.outgoing.connecting(peer).await;
        if let Some(link) = connecting.open_link() {
            return Ok(link);
        }
        let (addr, queue) = self.new_queue(peer, &connecting)?;
        self.connect(peer, connecting, addr, queue).await
    }

    /// A send queue for a new connection to `peer`, which frames for it go to from now on,
    /// and where to connect.
    fn new_queue(
        &self,
        peer: &PeerId,
        connecting: &Connecting,
    ) -> Result<(SocketAddr, (mesh::Sender, mesh::Queue)), String> {
        let addr = lock(&self.core)
            .view()
            .mesh_addr(peer)
            .ok_or_else(|| "no known mesh address".to_string())?;
        let queue = self.mesh.queue(&peer.name);
        connecting.queue_in(queue.0.clone());
        Ok((addr, queue))
    }

    /// Connect to `peer` at `addr`, writing `queue` on the connection; the link goes in the
    /// table once admitted. On failure what was queued is dropped.
    async fn connect(
        &self,
        peer: &PeerId,
        connecting: Connecting,
        addr: SocketAddr,
        queue: (mesh::Sender, mesh::Queue),
    ) -> Result<Link, String> {
        let inbound = Arc::new(WeakInbound(self.weak()));
        // Connecting to a member that died can take the whole connect timeout; stop as soon
        // as the member is known gone, so that nothing (a request) waits on it any longer.
        let left = self.left(peer);
        let connected = tokio::select! {
            connected = self.mesh.connect_with(addr, Some(peer), inbound, queue) => {
                connected.map_err(|e| e.to_string())
            }
            () = left => Err("it is no longer a member".into()),
        };
        let admitted = connected.and_then(|(_, link)| {
            self.admit(peer, link.id(), link.addrs()).inspect_err(|_| {
                link.close(mesh::CLOSE_REFUSED, b"refused");
            })?;
            if !link.is_open() {
                // Closed before it was admitted: its close notice may have come first.
                let effects = lock(&self.core).closed(peer, link.id(), &mesh::Closed::Locally);
                let _ = self.run(effects);
                return Err("the connection closed at once".to_string());
            }
            Ok(link)
        });
        match admitted {
            Ok(link) => {
                tracing::debug!(%peer, %addr, "mesh link up");
                Ok(connecting.connected(link))
            }
            Err(reason) => {
                connecting.failed();
                Err(reason)
            }
        }
    }

    /// Resolves when `peer`, a member now, stops being one; never, if it is not one now (a
    /// peer still proving the secret is bounded by the connect timeout instead). A member
    /// refused for its parser stays connected, to hear this node's metadata: that is not
    /// leaving.
    async fn left(&self, peer: &PeerId) {
        let mut events = self.events.subscribe();
        if !lock(&self.core).view().is_member(peer) {
            return std::future::pending().await;
        }
        loop {
            match events.recv().await {
                Ok(MembershipEvent::Left(m))
                    if m.peer_id() == *peer && !lock(&self.core).view().is_refused(peer) =>
                {
                    return;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !lock(&self.core).view().is_member(peer) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            }
        }
    }

    fn weak(&self) -> Weak<Node> {
        self.self_weak.clone()
    }

    fn drop_link(&self, peer: &PeerId) {
        self.outgoing.drop_slot(peer, b"replaced");
    }

    /// Pending requests stop waiting for `peer`.
    fn stop_waiting_for(&self, peer: &PeerId) {
        let effects = lock(&self.core).stop_waiting_for(peer);
        let _ = self.run(effects);
    }

    /// Wait until this node has applied every frame the other members had queued for it
    /// before now (see [`barrier`]): its own part of a join, leave or disconnect is applied
    /// then. `sockets` says whether the change selects sockets of this node; one that does
    /// not goes at once while nothing is held. Bounded by the round timeout (twice, behind
    /// a round in flight).
    pub(crate) async fn ordered(&self, sockets: bool) {
        let token = self.next_resume.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.resumes).insert(token, tx);
        let effects = lock(&self.core).order_local(token, sockets);
        let _ = self.run(effects);
        // Fails only when the node dropped the token (it is stopping): nothing to wait for.
        let _ = rx.await;
    }

    /// Send flush round `id` to `to`, and end it once the round timeout passed.
    fn flush(&self, id: Id, to: Vec<PeerId>) {
        // The timer first: a round that ends while its frames are queued (none could be)
        // starts the next one, whose timer replaces this one.
        let node = self.weak();
        let timeout = self.request_timeout / 2;
        let timer = async move {
            tokio::time::sleep(timeout).await;
            if let Some(node) = node.upgrade() {
                let effects = lock(&node.core).round_expired(id);
                let _ = node.run(effects);
            }
        };
        let timer = tokio::spawn(tracing::Instrument::instrument(timer, self.mesh.span()));
        if let Some(before) = lock(&self.round_task).replace(timer.abort_handle()) {
            before.abort();
        }
        match self.encode(&Frame::Flush(id), &to) {
            Ok(bytes) => self.dispatch(&to, bytes, false, Some(id)),
            Err(e) => tracing::warn!("flush round not sent: {e}"),
        }
    }

    /// A frame from `from`. An error closes the connection it came on, with that reason.
    fn on_frame(&self, from: &PeerId, frame: Frame) -> Result<(), String> {
        let mine = lock(&self.meta).parser;
        // Read for joins, leaves and disconnects only.
        let scope = match &frame {
            Frame::Request(req) if req.kind.changes_state() => self.scope(req),
            _ => Scope::NotHosted,
        };
        let effects = lock(&self.core).frame_in(from, frame, mine, scope);
        self.run(effects)
    }

    /// What a join, leave or disconnect selects here, as its namespace says now.
    fn scope(&self, req: &wire::Request) -> Scope {
        match read(&self.handlers).get(&req.ns).and_then(Weak::upgrade) {
            None => Scope::NotHosted,
            Some(h) if h.selects_sockets(req) => Scope::Sockets,
            Some(_) => Scope::NoSocket,
        }
    }

    /// Carry out what the core decided. An error says a request was refused by its
    /// namespace: the connection it came on closes with that reason.
    fn run(&self, effects: Vec<Effect>) -> Result<(), String> {
        let mut refused = Ok(());
        for effect in effects {
            match effect {
                Effect::Joined(member) => {
                    // A new member hears from this node what it says about itself, first
                    // thing on this node's own connection to it.
                    if let Some(node) = self.weak().upgrade() {
                        let peer = member.peer_id();
                        self.spawn(async move {
                            let meta = lock(&node.meta).clone();
                            let _ = node
                                .send(To::Peers(&[peer]), &Frame::Meta(meta), false)
                                .await;
                        });
                    }
                    self.metrics
                        .changed(true, lock(&self.core).view().members().count());
                    let _ = self.events.send(MembershipEvent::Joined(member));
                }
                Effect::Left { member, keep_link } => {
                    if !keep_link {
                        self.drop_link(&member.peer_id());
                    }
                    self.metrics
                        .changed(false, lock(&self.core).view().members().count());
                    self.mesh.metrics().drops.forget(&member.node_name);
                    let _ = self.events.send(MembershipEvent::Left(member));
                }
                Effect::DropLink(peer) => self.drop_link(&peer),
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
                Effect::Flush { id, to } => self.flush(id, to),
                Effect::AnswerFlush(to, id) => self.respond(&to, id, ResponseBody::Done),
                Effect::Apply(from, req) => {
                    // Its own frame was handled long ago: nothing to close.
                    if let Err(why) = self.deliver(&from, req) {
                        tracing::warn!(peer = %from, "state change dropped: {why}");
                    }
                }
                Effect::Resume(token) => {
                    if let Some(tx) = lock(&self.resumes).remove(&token) {
                        let _ = tx.send(());
                    }
                }
                Effect::ReplacedBy(by) => {
                    if let Some(node) = self.weak().upgrade() {
                        self.spawn(async move { node.replaced(by).await });
                    }
                }
            }
        }
        refused
    }

    /// Hand a request to its namespace; one for a namespace not hosted here is answered so.
    fn deliver(&self, from: &PeerId, req: wire::Request) -> Result<(), String> {
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

    /// Forget the outgoing connections of peers neither gossip nor a verified connection
    /// shows any more (say, peers only ever seen in gossip).
    fn forget_unknown_peers(&self) {
        let forgotten = self.outgoing.forget(|p| lock(&self.core).view().knows(p));
        for peer in forgotten {
            tracing::debug!(%peer, "forgot a peer no longer known");
        }
    }

    fn on_connection_closed(&self, peer: &PeerId, conn: ConnId, reason: &mesh::Closed) {
        if self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let effects = lock(&self.core).closed(peer, conn, reason);
        let _ = self.run(effects);
    }

    /// `peer` proved the cluster secret on connection `conn`: admit it, unless the core
    /// refuses; why it is refused.
    fn admit(&self, peer: &PeerId, conn: ConnId, addrs: PeerAddrs) -> Result<(), String> {
        let (admitted, effects) = lock(&self.core).admit(peer, conn, addrs);
        let _ = self.run(effects);
        admitted
    }

    /// Apply what gossip knows now; connect to the nodes not proven yet.
    async fn refresh_from_gossip(self: &Arc<Self>) {
        let mut nodes = self.membership.nodes().await;
        nodes.reachable.remove(&self.me);
        let effects = lock(&self.core).gossip(nodes);
        let _ = self.run(effects);
        self.forget_unknown_peers();
        self.connect_unverified();
    }

    /// Join through the seeds: gossip with them at once and again every few milliseconds,
    /// until every node they know of proved itself over the mesh, or `timeout` passed.
    async fn join(self: &Arc<Self>, seeds: &[String], timeout: Duration) {
        let started = Instant::now();
        let mut addrs = Vec::new();
        for seed in seeds {
            if let Ok(found) = tokio::net::lookup_host(seed.as_str()).await {
                addrs.extend(found.filter(|a| *a != self.gossip_addr && *a != self.gossip_bind));
            }
        }
        if addrs.is_empty() {
            tracing::info!(node = %self.me, "no seed but this node: starting as the first node");
        } else {
            // The nodes known after the previous exchange. Two nodes that reach a seed at the
            // same moment can each be missing from the seed's first answer to the other and
            // appear in a later one: the join ends only after an exchange that brought nobody
            // new, with every node known proven.
            let mut before = HashSet::new();
            loop {
                self.membership.gossip_now(addrs.iter().copied());
                tokio::time::sleep(JOIN_POLL).await;
                self.refresh_from_gossip().await;
                // Another node of this node's name (its own earlier run, or a twin it
                // replaces) never becomes a member: the join does not wait for it.
                let known: HashSet<PeerId> = (self.membership.nodes().await.reachable)
                    .into_keys()
                    .filter(|p| p.name != self.me.name || *p == self.me)
                    .collect();
                let proven = known
                    .iter()
                    .filter(|p| **p == self.me || lock(&self.core).view().is_member(p))
                    .count();
                let settled = known.is_subset(&before);
                before = known;
                if before.len() > 1 && proven == before.len() && settled {
                    tracing::info!(
                        node = %self.me, members = proven - 1,
                        "joined the cluster in {} ms", started.elapsed().as_millis()
                    );
                    break;
                }
                if started.elapsed() >= timeout {
                    if before.len() > 1 {
                        tracing::warn!(
                            node = %self.me, known = before.len() - 1, verified = proven.saturating_sub(1),
                            "join timeout ({} ms): starting with the members verified so far",
                            timeout.as_millis()
                        );
                    } else {
                        tracing::info!(
                            node = %self.me, ?seeds,
                            "no seed answered within the join timeout ({} ms): starting as the first node",
                            timeout.as_millis()
                        );
                    }
                    break;
                }
            }
        }
        self.joined.store(true, Ordering::Relaxed);
    }

    /// Whether the node joined (or waited out the join timeout) and is still part of the
    /// cluster.
    pub(crate) fn ready(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
            && !self.shutting_down.load(Ordering::Relaxed)
            && self.failure().is_none()
    }

    /// Try to connect to live peers that have not proved the secret yet, with backoff.
    fn connect_unverified(self: &Arc<Self>) {
        let due = lock(&self.core).due_for_connection(Instant::now());
        for (peer, first) in due {
            let node = self.clone();
            self.spawn(async move {
                if let Err(reason) = node.link(&peer).await {
                    if first {
                        tracing::warn!(%peer, "cannot verify gossip member over the mesh (will retry): {reason}");
                    } else {
                        tracing::debug!(%peer, "still cannot verify gossip member: {reason}");
                    }
                }
            });
        }
    }

    /// The gossip task ended by itself: this node can no longer see the cluster change. It
    /// leaves (peers drop it at once) rather than run on with a frozen view, and says why.
    async fn gossip_failed(&self, why: String) {
        tracing::error!(
            node = %self.me,
            "gossip stopped ({why}); this node leaves the cluster and serves its own sockets \
             only: restart the process (Cluster::failure() reports this for health checks)"
        );
        self.fail(format!("gossip stopped: {why}")).await;
    }

    /// A node of this node's name and a newer generation proved itself: it is this node's
    /// restart, or a second node given the same name, and it replaces this one on every
    /// member. This node leaves rather than linger half-connected, and says why.
    async fn replaced(&self, by: PeerId) {
        if self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        tracing::error!(
            node = %self.me, newer = %by,
            "a newer node with the same name joined and replaces this one: this node leaves \
             the cluster and serves its own sockets only (give every node a unique name; \
             Cluster::failure() reports this for health checks)"
        );
        self.fail(format!("replaced by {by}, a newer node with the same name"))
            .await;
    }

    /// Record why this node stopped being part of the cluster, and leave it.
    async fn fail(&self, failure: String) {
        *lock(&self.failure) = Some(failure);
        self.shutdown().await;
    }

    /// Leave the cluster: tell every peer, close the mesh, stop gossiping. Requests pending
    /// on this node complete with what they have.
    pub(crate) async fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(node = %self.me, "leaving the cluster");
        self.membership.set(KEY_LEAVING, "1").await;
        let members = self.members();
        self.membership
            .gossip_now(members.iter().map(|m| m.gossip_addr));
        if let Ok(bytes) = wire::encode(&Frame::Leave) {
            for link in &self.outgoing.links().await {
                let _ = link.send(bytes.clone());
            }
        }
        let effects = lock(&self.core).release_all();
        let _ = self.run(effects);
        self.mesh.close(mesh::CLOSE_LEAVING, b"leaving").await;
        self.membership.shutdown();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Every handle is gone: stop serving peers and gossiping.
        self.mesh.close_now(mesh::CLOSE_LEAVING, b"dropped");
        self.membership.shutdown();
    }
}

/// Why a frame could not be queued, as a drop reason and a log line.
fn queue_error(e: mesh::SendError) -> (DropReason, String) {
    let reason = match e {
        mesh::SendError::Closed => DropReason::PeerGone,
        mesh::SendError::PeerBudget => DropReason::QueueFull,
        mesh::SendError::NodeBudget => DropReason::NodeFull,
    };
    (reason, e.to_string())
}

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

/// What a request is, for its metrics.
fn kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Request(req) => req.kind.name(),
        Frame::Service(_) => "service",
        _ => "frame",
    }
}

/// What a request is, for log lines.
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Request(req) => format!("request {} on namespace {}", req.kind.name(), req.ns),
        Frame::Service(msg) => format!("message to service {}", msg.service),
        Frame::Response(_) => "response".into(),
        _ => "frame".into(),
    }
}

async fn watch_membership(
    node: Weak<Node>,
    mut changes: membership::Changes,
    gossip_stopped: impl std::future::Future<Output = String> + Send,
) {
    // New nodes are connected to on the next tick: gossip tells only of changes in the
    // live set, which it judges once a gossip round.
    let mut tick = tokio::time::interval(GOSSIP_POLL);
    let mut rtt_tick = tokio::time::interval(stats::RTT_EVERY);
    let mut gossip_stopped = std::pin::pin!(gossip_stopped);
    loop {
        {
            let Some(node) = node.upgrade() else { return };
            if node.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            node.refresh_from_gossip().await;
        }
        tokio::select! {
            changed = changes.changed() => {
                if !changed {
                    return;
                }
            }
            _ = tick.tick() => {}
            _ = rtt_tick.tick() => node.upgrade().iter().for_each(|n| n.record_rtts()),
            why = &mut gossip_stopped => {
                if let Some(node) = node.upgrade()
                    && !node.shutting_down.load(Ordering::Relaxed)
                {
                    node.gossip_failed(why).await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;
    use crate::gossip::node::tests::{pair, start as node};

    fn ids_of(node: &Node, peer: &PeerId) -> usize {
        lock(&node.core).server_ids_of(peer)
    }

    /// A member sending requests from 1,000 server ids: the node keeps 16 of them, and
    /// none once the member left. Two real nodes on 127.0.0.1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_ids_a_peer_sends_are_bounded_and_forgotten() {
        let (a, b) = pair(&format!("server-ids-{}", std::process::id())).await;
        let to_a = [a.me().clone()];
        for i in 0..1_000u32 {
            let mut origin = [b'x'; 16];
            origin[..4].copy_from_slice(&i.to_be_bytes());
            let frame = Frame::Request(wire::Request {
                ns: "/not-hosted".into(),
                id: Id([0; 16]),
                origin: Id(origin),
                kind: wire::RequestKind::DisconnectSockets,
                opts: wire::Opts::default(),
                ack_timeout_ms: None,
            });
            b.send(To::Peers(&to_a), &frame, false).await.unwrap();
        }
        // Frames are handled in order: once a confirmed message is handled, so are they.
        b.send_service(&to_a, "none", bytes::Bytes::new(), true)
            .await
            .unwrap();
        let b_id = b.me().clone();
        assert_eq!(ids_of(&a, &b_id), core::MAX_SERVER_IDS_PER_PEER);
        b.shutdown().await;
        let mut forgotten = false;
        for _ in 0..500 {
            if ids_of(&a, &b_id) == 0 {
                forgotten = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            forgotten,
            "the server ids of a peer that left are forgotten"
        );
        a.shutdown().await;
    }

    /// A link slot opened for a peer gossip showed (here: one never reached) is dropped
    /// once gossip no longer shows it.
    #[tokio::test]
    async fn link_slots_of_peers_only_seen_in_gossip_are_forgotten() {
        let a = node(&format!("slots-{}", std::process::id()), None).await;
        for i in 0..10 {
            let ghost = PeerId {
                name: format!("ghost-{i}").into(),
                generation: 1,
            };
            assert!(a.link(&ghost).await.is_err(), "no address known");
        }
        assert_eq!(a.outgoing.len(), 10);
        a.refresh_from_gossip().await;
        assert_eq!(a.outgoing.len(), 0, "slots of unknown peers dropped");
        a.shutdown().await;
    }

    /// The peak memory (VmHWM) of one node that receives the largest frame a peer can
    /// send: 16 MiB (the default maximum) of empty room names. The node runs in a child
    /// process (this test again, with `PEAK_CHILD_SEED` set) that prints its VmHWM as it
    /// changes; this process is the peer. A measurement, not an assertion: run it with
    /// `cargo test --all-features --lib -- --ignored --nocapture peak_memory`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, run by hand"]
    async fn peak_memory_under_the_largest_frame() {
        use std::io::BufRead;
        let hwm = || {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .map(String::from)
                })
                .unwrap_or_default()
        };
        if let Ok(seed) = std::env::var("PEAK_CHILD_SEED") {
            let cluster = std::env::var("PEAK_CLUSTER").unwrap();
            let _node = node(&cluster, Some(seed.parse().unwrap())).await;
            let mut last = String::new();
            for _ in 0..600 {
                let now = hwm();
                if now != last {
                    println!("{now}");
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        let cluster = format!("peak-{}", std::process::id());
        let peer = node(&cluster, None).await;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "--nocapture"])
            .arg("gossip::node::bound_tests::peak_memory_under_the_largest_frame")
            .env("PEAK_CHILD_SEED", peer.addrs().0.to_string())
            .env("PEAK_CLUSTER", &cluster)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(kb) = line
                    .strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                {
                    let _ = tx.send(kb);
                }
            }
        });
        let mut member = None;
        for _ in 0..500 {
            member = peer.members().first().map(|m| m.peer_id());
            if member.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let member = member.expect("the child node joined");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rx.try_iter().last().unwrap_or_default();

        // AddSockets with n empty room names, filling the largest frame.
        let empty = wire::encode(&Frame::Request(wire::Request {
            ns: "/".into(),
            id: Id([1; 16]),
            origin: Id([2; 16]),
            kind: wire::RequestKind::AddSockets(vec![]),
            opts: wire::Opts::default(),
            ack_timeout_ms: None,
        }))
        .unwrap();
        let at = wire::LEN_PREFIX + 3 + 1 + 2 + 32;
        assert_eq!(empty[at..at + 2], [4, 0]);
        let n = wire::DEFAULT_MAX_FRAME_SIZE - (empty.len() - wire::LEN_PREFIX) - 4;
        let mut body = empty[wire::LEN_PREFIX..at + 1].to_vec();
        let mut v = n;
        while v >= 0x80 {
            body.push((v as u8) | 0x80);
            v >>= 7;
        }
        body.push(v as u8);
        body.resize(body.len() + n, 0);
        body.extend_from_slice(&empty[at + 2..]);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        assert!(body.len() <= wire::DEFAULT_MAX_FRAME_SIZE);
        let link = peer.link(&member).await.unwrap();
        link.send(Bytes::from(frame)).unwrap();
        // Wait until the child's peak has not moved for 3 s (bounded: 60 s).
        let mut peak = before;
        let mut still = 0;
        for _ in 0..600 {
            match rx.try_iter().last() {
                Some(kb) => {
                    peak = kb;
                    still = 0;
                }
                None => still += 1,
            }
            if still >= 30 && peak > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "frame of {} bytes ({n} empty room names): node VmHWM {before} kB before, {peak} kB after",
            body.len()
        );
    }
}
