//! The node: membership view, peer links, routing of incoming frames, and the bookkeeping of
//! requests waiting for responses. Knows nothing of socket.io: namespaces are routing keys,
//! frames are opaque beyond their routing fields.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

use bytes::Bytes;
use chitchat::{ChitchatId, NodeState};
use futures_core::Stream;
use tokio::sync::{broadcast, mpsc};

use crate::{
    config::{Auth, GossipAdapterConfig},
    error::{Error, RequestError},
    membership::{
        self, GossipSettings, KEY_LEAVING, KEY_NS_PREFIX, KEY_SERVER_ID, Member, Membership,
    },
    mesh::{self, Inbound, Link, Mesh, PeerId, auth::Keyring},
    wire::{self, Frame, Id, Response, ResponseBody},
};

/// Receives the requests addressed to one namespace of this node.
pub(crate) trait NamespaceHandler: Send + Sync + 'static {
    /// Handle a request from `from`. Must not block.
    fn on_request(&self, from: &PeerId, req: wire::Request);
}

/// A change in the set of live members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node joined (or came back with a new generation).
    Joined(Member),
    /// A node left: gracefully, or found dead.
    Left(Member),
}

/// Responses to one request, and the peers it no longer waits for.
pub(crate) struct Pending {
    /// The peers the request was sent to.
    pub(crate) targets: Vec<PeerId>,
    /// Responses, in the order each peer sent them.
    pub(crate) responses: mpsc::UnboundedReceiver<(PeerId, ResponseBody)>,
    /// Peers found gone (dead, left, or unreachable) while the request is pending.
    pub(crate) gone: mpsc::UnboundedReceiver<PeerId>,
    id: Id,
    node: Weak<Node>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(node) = self.node.upgrade() {
            lock(&node.pending).remove(&self.id);
        }
    }
}

struct PendingEntry {
    /// Unbounded, but never holds more than `allowance` allows.
    responses: mpsc::UnboundedSender<(PeerId, ResponseBody)>,
    gone: mpsc::UnboundedSender<PeerId>,
    waiting: HashSet<PeerId>,
    /// How many more responses the request may buffer: one answer per target plus some
    /// slack, raised by each announced ack count. A slow reader of the responses never
    /// loses one; a peer sending more than it announced is cut off.
    allowance: u64,
}

type LinkSlot = Arc<tokio::sync::Mutex<Option<Link>>>;

/// First delay before connecting again to a live peer that could not be verified.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest delay between such attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Who is in the cluster, as this node sees it. A member is a node that gossip shows live
/// **and** that proved the cluster secret on a mesh connection: gossip alone is never trusted.
#[derive(Default)]
struct View {
    /// Nodes gossip shows live, minus those that left.
    live: HashMap<PeerId, Member>,
    /// Peers that proved the cluster secret on a mesh connection.
    verified: HashSet<PeerId>,
    /// Peers that left gracefully: ignored even while gossip still shows them.
    left: HashSet<PeerId>,
    /// When to try again to connect to a live peer not verified yet, and the next backoff.
    retry: HashMap<PeerId, (Instant, Duration)>,
}

impl View {
    fn members(&self) -> impl Iterator<Item = &Member> {
        self.live
            .iter()
            .filter(|(p, _)| self.verified.contains(*p))
            .map(|(_, m)| m)
    }

    fn member_map(&self) -> HashMap<PeerId, Member> {
        self.members().map(|m| (m.peer_id(), m.clone())).collect()
    }
}

/// The running node, shared by the cluster handle and every namespace adapter.
pub(crate) struct Node {
    me: PeerId,
    gossip_addr: SocketAddr,
    mesh_addr: SocketAddr,
    request_timeout: Duration,
    max_frame_size: usize,
    mesh: Arc<Mesh>,
    membership: Membership,
    view: RwLock<View>,
    /// Mesh addresses learned from incoming connections, for peers gossip has not shown yet.
    addrs: Mutex<HashMap<PeerId, SocketAddr>>,
    links: Mutex<HashMap<PeerId, LinkSlot>>,
    handlers: RwLock<HashMap<String, Weak<dyn NamespaceHandler>>>,
    /// socketioxide server ids learned from requests, for peers gossip has not shown yet.
    server_ids: RwLock<HashMap<Id, PeerId>>,
    pending: Mutex<HashMap<Id, PendingEntry>>,
    events: broadcast::Sender<MembershipEvent>,
    shutting_down: AtomicBool,
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
    fn on_frame(&self, from: &PeerId, frame: Frame) {
        if let Some(node) = self.0.upgrade() {
            node.on_frame(from, frame);
        }
    }
    fn on_peer_connected(&self, peer: &PeerId, mesh_addr: SocketAddr) {
        if let Some(node) = self.0.upgrade() {
            lock(&node.addrs).insert(peer.clone(), mesh_addr);
            node.verified(peer);
        }
    }
    fn on_connection_closed(&self, peer: &PeerId, reason: &quinn::ConnectionError) {
        if let Some(node) = self.0.upgrade() {
            node.on_connection_closed(peer, reason);
        }
    }
}

impl Node {
    /// Bind both ports, start gossip and the mesh.
    pub(crate) async fn start(config: &GossipAdapterConfig) -> Result<Arc<Self>, Error> {
        let secrets = match &config.auth {
            Auth::Missing => return Err(Error::MissingSecret),
            Auth::Insecure => {
                tracing::warn!(
                    "socketioxide-cluster runs WITHOUT AUTHENTICATION (insecure_no_auth): any host \
                     that reaches the mesh port can join the cluster and act on every socket"
                );
                None
            }
            Auth::Secrets(s) => Some(s.clone()),
        };
        for seed in &config.seeds {
            check_seed(seed).await?;
        }
        let generation = SystemTime::now()
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

        let keyring = Keyring::new(config.cluster_id.clone(), secrets);
        let mut mesh = Mesh::bind(
            config.mesh_addr,
            keyring,
            config.max_frame_size,
            config.peer_timeout,
            config.stream_buffer,
        )
        .map_err(|e| match e {
            mesh::MeshError::Bind { addr, source } => Error::MeshBind { addr, source },
            other => Error::Tls(other.to_string()),
        })?;
        let mesh_bound = mesh.local_addr().map_err(|source| Error::MeshBind {
            addr: config.mesh_addr,
            source,
        })?;
        let mesh_addr = config
            .mesh_advertise_addr
            .unwrap_or_else(|| advertised(mesh_bound));
        mesh.set_identity(&me, mesh_addr);

        let (gossip_bind, gossip_addr) = gossip_addrs(config)?;
        let membership = Membership::start(GossipSettings {
            cluster_id: config.cluster_id.clone(),
            me: me.clone(),
            bind: gossip_bind,
            advertise: gossip_addr,
            seeds: config.seeds.clone(),
            interval: config.gossip_interval,
            mesh_advertise: mesh_addr,
        })
        .await
        .map_err(|reason| Error::GossipBind {
            addr: gossip_bind,
            reason,
        })?;
        let watcher = membership.watcher().await;

        let node = Arc::new_cyclic(|self_weak| Node {
            self_weak: self_weak.clone(),
            me,
            gossip_addr,
            mesh_addr,
            request_timeout: config.request_timeout,
            max_frame_size: config.max_frame_size,
            mesh: Arc::new(mesh),
            membership,
            view: RwLock::default(),
            addrs: Mutex::default(),
            links: Mutex::default(),
            handlers: RwLock::default(),
            server_ids: RwLock::default(),
            pending: Mutex::default(),
            events: broadcast::channel(256).0,
            shutting_down: AtomicBool::new(false),
        });
        node.mesh
            .serve(Arc::new(WeakInbound(Arc::downgrade(&node))));
        tokio::spawn(watch_membership(Arc::downgrade(&node), watcher));
        tracing::info!(
            node = %node.me, gossip = %gossip_addr, mesh = %mesh_addr, cluster = %config.cluster_id,
            "cluster node started"
        );
        Ok(node)
    }

    /// This node's identity.
    pub(crate) fn me(&self) -> &PeerId {
        &self.me
    }

    /// The advertised gossip and mesh addresses of this node.
    pub(crate) fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (self.gossip_addr, self.mesh_addr)
    }

    /// The live members, other than this node.
    pub(crate) fn members(&self) -> Vec<Member> {
        let mut m: Vec<Member> = read(&self.view).members().cloned().collect();
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
        let others = read(&self.view).members().filter(|m| m.hosts(ns)).count();
        u16::try_from(others + 1).unwrap_or(u16::MAX)
    }

    /// Route requests for `ns` to `handler`, and tell the cluster this node hosts it.
    pub(crate) async fn register(
        &self,
        ns: &str,
        server_id: &str,
        handler: Weak<dyn NamespaceHandler>,
    ) {
        write(&self.handlers).insert(ns.to_string(), handler);
        self.membership.set(KEY_SERVER_ID, server_id).await;
        self.membership
            .set(&format!("{KEY_NS_PREFIX}{ns}"), "")
            .await;
    }

    /// Stop routing requests for `ns`.
    pub(crate) async fn unregister(&self, ns: &str) {
        write(&self.handlers).remove(ns);
        self.membership
            .delete(&format!("{KEY_NS_PREFIX}{ns}"))
            .await;
    }

    /// The peers a request goes to: the one hosting `server` if given, else every live member.
    pub(crate) fn targets(&self, server: Option<Id>) -> Vec<PeerId> {
        let view = read(&self.view);
        match server {
            None => view.members().map(Member::peer_id).collect(),
            Some(id) => {
                let uid = std::str::from_utf8(&id.0).ok();
                let by_gossip = view.members().find(|m| {
                    m.server_id
                        .map(|s| Some(s.to_string()) == uid.map(String::from))
                        == Some(true)
                });
                let peer = by_gossip
                    .map(Member::peer_id)
                    .or_else(|| read(&self.server_ids).get(&id).cloned());
                if peer.is_none() {
                    tracing::warn!(server = ?uid, "no live node has this server id; nothing sent");
                }
                peer.into_iter().collect()
            }
        }
    }

    /// Wait for responses to request `id` from `targets`.
    pub(crate) fn expect(self: &Arc<Self>, id: Id, targets: Vec<PeerId>, buffer: usize) -> Pending {
        let (tx, rx) = mpsc::unbounded_channel();
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(
            id,
            PendingEntry {
                responses: tx,
                gone: gone_tx,
                waiting: targets.iter().cloned().collect(),
                allowance: (targets.len() + buffer) as u64,
            },
        );
        Pending {
            targets,
            responses: rx,
            gone: gone_rx,
            id,
            node: Arc::downgrade(self),
        }
    }

    /// Send a frame to each of `targets`, in parallel; in order per peer. A frame that
    /// cannot be delivered is logged; pending requests stop waiting for that peer. A
    /// `volatile` frame is dropped (and logged) rather than waiting for a full queue.
    pub(crate) async fn send(
        &self,
        targets: &[PeerId],
        frame: &Frame,
        volatile: bool,
    ) -> Result<(), RequestError> {
        if targets.is_empty() {
            return Ok(());
        }
        let bytes = self.encode(frame)?;
        let sends = targets
            .iter()
            .map(|peer| self.send_to(peer, bytes.clone(), volatile));
        futures_util::future::join_all(sends).await;
        Ok(())
    }

    async fn send_to(&self, peer: &PeerId, frame: Bytes, volatile: bool) {
        // One retry: a link found closed is replaced by a new connection.
        for attempt in 0..2 {
            let link = match self.link(peer).await {
                Ok(link) => link,
                Err(reason) => {
                    tracing::warn!(%peer, "frame dropped, peer unreachable: {reason}");
                    self.stop_waiting_for(peer);
                    return;
                }
            };
            let res = if volatile {
                link.try_send(frame.clone())
            } else {
                link.send(frame.clone(), self.request_timeout).await
            };
            match res {
                Ok(()) => return,
                Err(mesh::SendError::Full) => {
                    tracing::warn!(%peer, volatile, "frame dropped: the peer's send queue is full");
                    return;
                }
                Err(mesh::SendError::Closed) if attempt == 0 => {
                    self.drop_link(peer);
                }
                Err(mesh::SendError::Closed) => {
                    tracing::warn!(%peer, "frame dropped: connection closed");
                    self.stop_waiting_for(peer);
                }
            }
        }
    }

    /// Encode a frame, refusing one larger than peers accept (they would drop the link).
    fn encode(&self, frame: &Frame) -> Result<Bytes, RequestError> {
        let bytes = wire::encode(frame)?;
        let size = bytes.len() - wire::LEN_PREFIX;
        if size > self.max_frame_size {
            return Err(RequestError::TooLarge {
                size,
                max: self.max_frame_size,
            });
        }
        Ok(bytes)
    }

    /// Send a response to the node that made a request.
    pub(crate) async fn respond(&self, to: &PeerId, response: Response) {
        match self.encode(&Frame::Response(response)) {
            Ok(bytes) => self.send_to(to, bytes, false).await,
            Err(e) => tracing::warn!(peer = %to, "response dropped, cannot encode it: {e}"),
        }
    }

    /// The outgoing link to `peer`, connecting if needed.
    async fn link(&self, peer: &PeerId) -> Result<Link, String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("this node is shutting down".into());
        }
        let slot = lock(&self.links).entry(peer.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| l.is_open()) {
            return Ok(link.clone());
        }
        let addr = read(&self.view)
            .live
            .get(peer)
            .map(|m| m.mesh_addr)
            .or_else(|| lock(&self.addrs).get(peer).copied())
            .ok_or_else(|| "no known mesh address".to_string())?;
        let inbound = Arc::new(WeakInbound(self.weak()));
        let (_, link) = self
            .mesh
            .connect(addr, Some(peer), inbound)
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(%peer, %addr, "mesh link up");
        *slot = Some(link.clone());
        drop(slot);
        self.verified(peer);
        Ok(link)
    }

    fn weak(&self) -> Weak<Node> {
        self.self_weak.clone()
    }

    fn drop_link(&self, peer: &PeerId) {
        if let Some(slot) = lock(&self.links).remove(peer)
            && let Ok(slot) = slot.try_lock()
            && let Some(link) = slot.as_ref()
        {
            link.close(mesh::CLOSE_UNUSED, b"replaced");
        }
    }

    /// Pending requests stop waiting for `peer`.
    fn stop_waiting_for(&self, peer: &PeerId) {
        for entry in lock(&self.pending).values_mut() {
            if entry.waiting.remove(peer) {
                let _ = entry.gone.send(peer.clone());
            }
        }
    }

    fn on_frame(&self, from: &PeerId, frame: Frame) {
        match frame {
            Frame::Request(req) => {
                if !read(&self.server_ids).contains_key(&req.origin) {
                    write(&self.server_ids).insert(req.origin, from.clone());
                }
                let handler = read(&self.handlers).get(&req.ns).and_then(Weak::upgrade);
                match handler {
                    Some(h) => h.on_request(from, req),
                    None => {
                        tracing::debug!(peer = %from, ns = %req.ns, "request for a namespace not hosted here");
                        if req.kind.expects_response()
                            && let Some(node) = self.weak().upgrade()
                        {
                            let to = from.clone();
                            let id = req.id;
                            tokio::spawn(async move {
                                node.respond(
                                    &to,
                                    Response {
                                        id,
                                        body: ResponseBody::NotHosted,
                                    },
                                )
                                .await;
                            });
                        }
                    }
                }
            }
            Frame::Response(res) => {
                let mut pending = lock(&self.pending);
                match pending.get_mut(&res.id) {
                    Some(entry) if entry.allowance == 0 => {
                        tracing::warn!(peer = %from, "response dropped: more responses than the peer announced");
                    }
                    Some(entry) => {
                        entry.allowance -= 1;
                        if let ResponseBody::AckCount(n) = res.body {
                            entry.allowance = entry.allowance.saturating_add(u64::from(n));
                        }
                        // Fails only when the request was just dropped: nothing to deliver.
                        let _ = entry.responses.send((from.clone(), res.body));
                    }
                    None => {
                        tracing::debug!(peer = %from, "response to a request no longer pending")
                    }
                }
            }
            Frame::Leave => self.mark_left(from, "it left the cluster"),
        }
    }

    fn on_connection_closed(&self, peer: &PeerId, reason: &quinn::ConnectionError) {
        if self.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        match reason {
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == quinn::VarInt::from_u32(mesh::CLOSE_LEAVING) =>
            {
                self.mark_left(peer, "it closed its connection to leave");
            }
            quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == quinn::VarInt::from_u32(mesh::CLOSE_UNUSED) =>
            {
                tracing::debug!(%peer, "mesh connection replaced");
            }
            quinn::ConnectionError::LocallyClosed => {}
            other => {
                tracing::warn!(%peer, "mesh connection lost: {other}");
                self.stop_waiting_for(peer);
            }
        }
    }

    /// Change the view; report who joined and who left the members.
    fn change_view(&self, why: &str, change: impl FnOnce(&mut View)) {
        let (joined, gone) = {
            let mut view = write(&self.view);
            let before = view.member_map();
            change(&mut view);
            let after = view.member_map();
            let joined: Vec<Member> = after
                .iter()
                .filter(|(p, _)| !before.contains_key(*p))
                .map(|(_, m)| m.clone())
                .collect();
            let gone: Vec<Member> = before
                .into_iter()
                .filter(|(p, _)| !after.contains_key(p))
                .map(|(_, m)| m)
                .collect();
            (joined, gone)
        };
        for member in gone {
            let peer = member.peer_id();
            tracing::info!(node = %self.me, %peer, "member left: {why}");
            self.stop_waiting_for(&peer);
            self.drop_link(&peer);
            lock(&self.addrs).remove(&peer);
            write(&self.server_ids).retain(|_, p| p != &peer);
            let _ = self.events.send(MembershipEvent::Left(member));
        }
        for member in joined {
            tracing::info!(node = %self.me, peer = %member.peer_id(), mesh = %member.mesh_addr, "member joined");
            let _ = self.events.send(MembershipEvent::Joined(member));
        }
    }

    /// `peer` proved the cluster secret.
    fn verified(&self, peer: &PeerId) {
        self.change_view("verified", |v| {
            if !v.left.contains(peer) {
                v.verified.insert(peer.clone());
                v.retry.remove(peer);
            }
        });
    }

    fn mark_left(&self, peer: &PeerId, why: &str) {
        self.change_view(why, |v| {
            v.left.insert(peer.clone());
            v.live.remove(peer);
            v.verified.remove(peer);
        });
        self.stop_waiting_for(peer);
        self.drop_link(peer);
    }

    /// Apply a new gossip view of the live nodes.
    fn apply_view(self: &Arc<Self>, live: &BTreeMap<ChitchatId, NodeState>) {
        let is_me = |id: &ChitchatId| {
            *id.node_id == *self.me.name && id.generation_id == self.me.generation
        };
        let listed = |p: &PeerId| {
            live.keys()
                .any(|id| *id.node_id == *p.name && id.generation_id == p.generation)
        };
        let next: HashMap<PeerId, Member> = live
            .iter()
            .filter(|(id, _)| !is_me(id))
            .filter_map(|(id, state)| membership::parse_member(id, state.key_values()))
            .map(|m| (m.peer_id(), m))
            .collect();
        self.change_view("no longer live in gossip", |v| {
            v.left.retain(|p| listed(p));
            let before: HashSet<PeerId> = v.live.keys().cloned().collect();
            v.live = next
                .into_iter()
                .filter(|(p, _)| !v.left.contains(p))
                .collect();
            // A peer found dead must prove itself again if it comes back.
            v.verified
                .retain(|p| v.live.contains_key(p) || !before.contains(p));
            v.retry.retain(|p, _| v.live.contains_key(p));
        });
        self.connect_unverified();
    }

    /// Try to connect to live peers that have not proved the secret yet, with backoff.
    fn connect_unverified(self: &Arc<Self>) {
        let now = Instant::now();
        let due: Vec<(PeerId, bool)> = {
            let mut view = write(&self.view);
            let View {
                live,
                verified,
                retry,
                ..
            } = &mut *view;
            live.keys()
                .filter(|p| !verified.contains(*p))
                .filter_map(|p| {
                    let entry = retry.entry(p.clone()).or_insert((now, RETRY_MIN));
                    if entry.0 > now {
                        return None;
                    }
                    let first = entry.1 == RETRY_MIN;
                    *entry = (now + entry.1, (entry.1 * 2).min(RETRY_MAX));
                    Some((p.clone(), first))
                })
                .collect()
        };
        for (peer, first) in due {
            let node = self.clone();
            tokio::spawn(async move {
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
            let links: Vec<Link> = {
                let slots: Vec<LinkSlot> = lock(&self.links).values().cloned().collect();
                let mut links = Vec::new();
                for slot in slots {
                    if let Some(l) = slot.lock().await.as_ref() {
                        links.push(l.clone());
                    }
                }
                links
            };
            for link in &links {
                let _ = link.send(bytes.clone(), Duration::from_millis(200)).await;
            }
        }
        for entry in lock(&self.pending).values_mut() {
            for peer in entry.waiting.drain() {
                let _ = entry.gone.send(peer);
            }
        }
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

async fn watch_membership(
    node: Weak<Node>,
    mut watcher: tokio::sync::watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
) {
    let mut tick = tokio::time::interval(RETRY_MIN);
    let mut changed = true;
    loop {
        {
            let Some(node) = node.upgrade() else { return };
            if node.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            if changed {
                let live = watcher.borrow_and_update().clone();
                node.apply_view(&live);
            } else {
                node.connect_unverified();
            }
        }
        changed = tokio::select! {
            res = watcher.changed() => {
                if res.is_err() {
                    return;
                }
                true
            }
            _ = tick.tick() => false,
        };
    }
}

/// A seed must be `ip:port` or `host:port`. A host name that does not resolve yet is only
/// logged: it is resolved again periodically.
async fn check_seed(seed: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::Seed {
        seed: seed.to_string(),
        reason: reason.to_string(),
    };
    if seed.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = seed
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    if let Err(e) = tokio::net::lookup_host(seed).await {
        tracing::warn!(%seed, "seed does not resolve yet (will retry): {e}");
    }
    Ok(())
}

/// Replace an unspecified IP (0.0.0.0, ::) by the IP this host uses to reach other hosts.
fn advertised(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel for a route.
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
        .and_then(|s| s.local_addr());
    let ip = match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => {
            tracing::warn!(
                "cannot find this host's IP; advertising 127.0.0.1 (set the advertise addresses)"
            );
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    };
    SocketAddr::new(ip, bound.port())
}

/// The gossip bind address (a free port picked for port 0) and the advertised one.
fn gossip_addrs(config: &GossipAdapterConfig) -> Result<(SocketAddr, SocketAddr), Error> {
    let mut bind = config.gossip_addr;
    if bind.port() == 0 {
        // chitchat binds by itself; find a free port for it.
        let probe = UdpSocket::bind(bind).map_err(|e| Error::GossipBind {
            addr: bind,
            reason: e.to_string(),
        })?;
        bind = probe.local_addr().map_err(|e| Error::GossipBind {
            addr: bind,
            reason: e.to_string(),
        })?;
    }
    let advertise = config
        .gossip_advertise_addr
        .unwrap_or_else(|| advertised(bind));
    Ok((bind, advertise))
}

/// The handle of a running cluster node, from
/// [`GossipAdapterCtr::cluster`](crate::GossipAdapterCtr::cluster). Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    node: Arc<Node>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", self.node.me())
            .field("members", &self.node.members().len())
            .finish()
    }
}

impl Cluster {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node.me().name
    }

    /// The gossip address other nodes use for this one.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.node.addrs().0
    }

    /// The mesh address other nodes use for this one.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.node.addrs().1
    }

    /// The live members of the cluster, other than this node, sorted by name.
    pub fn members(&self) -> Vec<Member> {
        self.node.members()
    }

    /// Membership changes from now on: nodes joining, leaving or found dead.
    pub fn membership_events(&self) -> impl Stream<Item = MembershipEvent> + Send + 'static {
        self.node.events()
    }

    /// Leave the cluster gracefully: peers drop this node at once (not after failure
    /// detection), pending requests complete with what they have, and the ports close.
    /// Sockets of this node stay connected; stop the HTTP server too.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}
