//! Membership by gossip (chitchat): who is alive, and where each node's mesh listens.
//!
//! Gossip datagrams are sealed under a key derived from the cluster secret, for one
//! recipient ([`seal`], [`transport`]): a host without the secret can neither read nor
//! forge nor redirect them. What opens is checked before chitchat parses it ([`envelope`],
//! [`guard`]): a node holding the secret cannot crash chitchat or bloat its state. Should
//! chitchat's task stop all the same, it is started again, on the same port and identity
//! ([`Membership`]). Still, gossip is input, never proof: a node only becomes a member once
//! its mesh connection proved the secret, and stays one while that connection lives,
//! whatever gossip says.

#[cfg(test)]
mod attack_tests;
mod clock;
mod codec;
pub(crate) mod envelope;
mod guard;
pub(crate) mod replay;
pub(crate) mod seal;
pub(crate) mod transport;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, Heartbeat, NodeState,
    spawn_chitchat,
    transport::{Transport, UdpTransport},
};
use tokio::{sync::watch, time::Instant};

use crate::gossip::peer::PeerId;

/// Key holding the node's advertised mesh address.
pub(crate) const KEY_MESH: &str = "mesh";
/// Key set by a node that is leaving on purpose.
pub(crate) const KEY_LEAVING: &str = "leaving";
/// Added to gossip intervals: how long a node just heard of counts as reachable before
/// chitchat has judged it live (see [`Membership::nodes`]).
const JUST_HEARD_MARGIN: Duration = Duration::from_millis(100);

/// A live member of the cluster, as seen by this node: a node that proved the cluster secret
/// over the mesh. What it says about itself (server id, namespaces) comes from the member
/// itself, over its own authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node name.
    pub node_name: String,
    /// Generation of the node (its start time, ms since the Unix epoch): a restarted node
    /// comes back with a new one.
    pub generation: u64,
    /// Gossip (UDP) address.
    pub gossip_addr: SocketAddr,
    /// Mesh (QUIC) address.
    pub mesh_addr: SocketAddr,
    /// socketioxide server id of the node's `SocketIo`, once it has created a namespace.
    pub server_id: Option<socketioxide_core::Uid>,
    /// Namespaces the node hosts, as it announced them: at most 4,096 names of at most 256
    /// bytes (a namespace beyond those bounds is served, but not announced).
    pub namespaces: Vec<String>,
}

impl Member {
    pub(crate) fn peer_id(&self) -> PeerId {
        PeerId {
            name: self.node_name.as_str().into(),
            generation: self.generation,
        }
    }

    /// Whether the node hosts the namespace `ns`.
    pub fn hosts(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| n == ns)
    }
}

/// A node gossip shows, and where its mesh listens. `None` for nodes that are leaving or
/// have not published a usable mesh address.
pub(crate) fn parse_node<'a>(
    id: &ChitchatId,
    key_values: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<(PeerId, SocketAddr)> {
    let mut mesh_addr = None;
    for (k, v) in key_values {
        match k {
            KEY_LEAVING => return None,
            KEY_MESH => mesh_addr = v.parse().ok(),
            _ => {}
        }
    }
    let peer = PeerId {
        name: id.node_id.clone(),
        generation: id.generation_id,
    };
    Some((peer, mesh_addr?))
}

/// What gossip knows (see [`Membership::nodes`]).
#[derive(Debug, Default)]
pub(crate) struct GossipNodes {
    /// Nodes not found dead and not leaving, with their mesh address.
    pub(crate) reachable: HashMap<PeerId, SocketAddr>,
    /// Every node gossip lists, dead or alive.
    pub(crate) listed: HashSet<PeerId>,
}

/// Tells when the set of live nodes gossip shows changes (see [`Membership::nodes`] for
/// what it is), across runs of chitchat.
pub(crate) struct Changes(watch::Receiver<u64>);

impl Changes {
    /// Resolves once the live set changed since the last call; `false` once gossip is gone.
    pub(crate) async fn changed(&mut self) -> bool {
        let changed = self.0.changed().await.is_ok();
        self.0.borrow_and_update();
        changed
    }
}

/// Most times chitchat's task is started again within [`RESTART_WINDOW`]; one more stop,
/// and gossip stays stopped (see [`Membership::stopped`]).
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The running gossip instance.
pub(crate) struct Membership {
    inner: Arc<Inner>,
    /// The nodes gossip lists, with when this node first saw each, its heartbeat then and
    /// whether chitchat ever judged it live.
    seen: Mutex<HashMap<ChitchatId, Seen>>,
    /// The gossip interval.
    interval: Duration,
}

/// What outlives one run of chitchat.
struct Inner {
    /// The chitchat instance running now.
    current: Mutex<Arc<ChitchatHandle>>,
    settings: GossipSettings,
    transport: Running,
    /// Bumped when the live set changes, or chitchat starts again.
    changes: watch::Sender<u64>,
    /// Why gossip stopped for good, once it did.
    stopped: watch::Sender<Option<String>>,
    shutting_down: AtomicBool,
    counters: Arc<transport::GossipCounters>,
}

/// The transport chitchat runs on, owned (chitchat is started again on it).
enum Running {
    Sealed(transport::SealedGossip),
    Plain,
    Custom(Arc<dyn crate::gossip::network::Network>),
}

impl Running {
    fn transport(&self) -> &dyn Transport {
        match self {
            Running::Sealed(t) => t,
            Running::Plain => &UdpTransport,
            Running::Custom(n) => n.gossip(),
        }
    }

    fn attach(&self, handle: Option<&ChitchatHandle>) {
        if let Running::Sealed(t) = self {
            t.attach(handle.map(ChitchatHandle::chitchat));
        }
    }

    /// Release the port, once chitchat stopped for good.
    async fn close(&self) {
        if let Running::Sealed(t) = self {
            t.close().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Membership`] remembers of a node gossip lists.
struct Seen {
    first: Instant,
    heartbeat: Heartbeat,
    judged_live: bool,
}

/// What gossip runs on.
pub(crate) enum GossipTransport {
    /// UDP, sealed under the cluster key.
    Sealed(transport::SealedTransport),
    /// UDP in clear (`insecure_no_auth`).
    Plain,
    /// The transport of a network the caller provides (a simulated network).
    Custom(Arc<dyn crate::gossip::network::Network>),
}

/// Settings for [`Membership::start`].
#[derive(Clone)]
pub(crate) struct GossipSettings {
    pub(crate) cluster_id: String,
    pub(crate) me: PeerId,
    pub(crate) bind: SocketAddr,
    pub(crate) advertise: SocketAddr,
    pub(crate) seeds: Vec<String>,
    pub(crate) interval: Duration,
    pub(crate) mesh_advertise: SocketAddr,
}

/// The chitchat configuration of `s`.
fn config(s: &GossipSettings) -> ChitchatConfig {
    let chitchat_id = ChitchatId::new(s.me.name.to_string(), s.me.generation, s.advertise);
    // Phi-accrual detection; suspicion grows after a few missed intervals.
    let failure_detector_config = FailureDetectorConfig {
        initial_interval: s.interval,
        dead_node_grace_period: Duration::from_secs(3600),
        ..FailureDetectorConfig::default()
    };
    ChitchatConfig {
        chitchat_id,
        cluster_id: s.cluster_id.clone(),
        gossip_interval: s.interval,
        listen_addr: s.bind,
        seed_nodes: s.seeds.clone(),
        failure_detector_config,
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    }
}

impl Membership {
    /// Start gossiping on `transport`.
    pub(crate) async fn start(
        s: GossipSettings,
        transport: GossipTransport,
        counters: Arc<transport::GossipCounters>,
    ) -> Result<Self, String> {
        let transport = match transport {
            GossipTransport::Sealed(t) => {
                let me = ChitchatId::new(s.me.name.to_string(), s.me.generation, s.advertise);
                Running::Sealed(t.start(s.cluster_id.clone(), me))
            }
            GossipTransport::Plain => Running::Plain,
            GossipTransport::Custom(n) => Running::Custom(n),
        };
        let initial = vec![(KEY_MESH.to_string(), s.mesh_advertise.to_string())];
        let handle = Arc::new(
            spawn_chitchat(config(&s), initial, transport.transport())
                .await
                .map_err(|e| format!("{e:#}"))?,
        );
        transport.attach(Some(&handle));
        let interval = s.interval;
        let inner = Arc::new(Inner {
            current: Mutex::new(handle.clone()),
            settings: s,
            transport,
            changes: watch::channel(0).0,
            stopped: watch::channel(None).0,
            shutting_down: AtomicBool::new(false),
            counters,
        });
        forward_changes(&inner, &handle);
        tokio::spawn(supervise(
            Arc::downgrade(&inner),
            Box::pin(handle.termination_watcher()),
        ));
        Ok(Self {
            inner,
            seen: Mutex::new(HashMap::new()),
            interval,
        })
    }

    /// The chitchat instance running now.
    fn handle(&self) -> Arc<ChitchatHandle> {
        lock(&self.inner.current).clone()
    }

    /// Tells when the set of live nodes changes.
    pub(crate) async fn changes(&self) -> Changes {
        Changes(self.inner.changes.subscribe())
    }

    /// What gossip knows now, this node included: the nodes it has not found dead, with
    /// their mesh address, and every node it lists.
    ///
    /// A node just heard of counts at once, before its liveness is judged, so that joining
    /// takes one exchange with a seed. chitchat's failure detector calls a node dead until
    /// it has two of its heartbeats, so a gossip round soon after the node was heard of
    /// would mark it dead for a whole round. A node chitchat never judged live therefore
    /// counts as reachable for one gossip interval after it was first seen, and for two if
    /// its heartbeat moved meanwhile (it is alive, chitchat has not caught up): the state of
    /// a node that is really gone, which the seeds still list, then holds nobody up for more
    /// than an interval. A node superseded by a newer generation of its name is never
    /// reachable, unless it has this node's name (the node settles that over the mesh).
    pub(crate) async fn nodes(&self) -> GossipNodes {
        let now = Instant::now();
        self.handle()
            .with_chitchat(|c| {
                let live: HashSet<&ChitchatId> = c.live_nodes().collect();
                let dead: HashSet<&ChitchatId> = c.dead_nodes().collect();
                let mut newest: HashMap<&str, u64> = HashMap::new();
                for id in c.node_states().keys() {
                    let g = newest.entry(&*id.node_id).or_default();
                    *g = (*g).max(id.generation_id);
                }
                let me = c.self_chitchat_id();
                // This node's own name is left to the node: a newer node of that name must
                // be reached to replace this one, an older one to be told so.
                let superseded = |id: &ChitchatId| {
                    id.node_id != me.node_id && newest.get(&*id.node_id) != Some(&id.generation_id)
                };
                let mut seen = lock(&self.seen);
                seen.retain(|id, _| c.node_states().contains_key(id));
                let mut judged_dead = |id: &ChitchatId, state: &NodeState| {
                    let s = seen.entry(id.clone()).or_insert(Seen {
                        first: now,
                        heartbeat: state.heartbeat(),
                        judged_live: false,
                    });
                    s.judged_live |= live.contains(id);
                    let intervals = if state.heartbeat() == s.heartbeat {
                        1
                    } else {
                        2
                    };
                    let grace = self.interval * intervals + JUST_HEARD_MARGIN;
                    dead.contains(id) && (s.judged_live || now.duration_since(s.first) >= grace)
                };
                let peer = |id: &ChitchatId| PeerId {
                    name: id.node_id.clone(),
                    generation: id.generation_id,
                };
                GossipNodes {
                    reachable: c
                        .node_states()
                        .iter()
                        .filter(|(id, state)| !superseded(id) && !judged_dead(id, state))
                        .filter_map(|(id, state)| parse_node(id, state.key_values()))
                        .collect(),
                    listed: c.node_states().keys().map(peer).collect(),
                }
            })
            .await
    }

    /// Publish a key about this node.
    pub(crate) async fn set(&self, key: &str, value: &str) {
        self.handle()
            .with_chitchat(|c| c.self_node_state().set(key, value))
            .await;
    }

    /// Tell the seeds and peers right away (one gossip round to each).
    pub(crate) fn gossip_now(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let handle = self.handle();
        for addr in addrs {
            let _ = handle.gossip(addr);
        }
    }

    /// Resolves when gossip stopped for good, with why: chitchat's task stopped more than
    /// [`MAX_RESTARTS`] times within a minute, or could not start again.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = String> + Send + use<> {
        let mut stopped = self.inner.stopped.subscribe();
        async move {
            match stopped.wait_for(Option::is_some).await {
                Ok(why) => why.clone().unwrap_or_default(),
                Err(_) => "the gossip task ended".to_string(),
            }
        }
    }

    /// Stop gossiping.
    pub(crate) fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        // Fails only if the gossip task already stopped.
        let _ = self.handle().initiate_shutdown();
    }
}

/// Bump the change counter of `inner` whenever the live set of `handle`'s run changes.
fn forward_changes(inner: &Arc<Inner>, handle: &ChitchatHandle) {
    let weak = Arc::downgrade(inner);
    let chitchat = handle.chitchat();
    tokio::spawn(async move {
        let mut live = chitchat.lock().await.live_nodes_watcher();
        drop(chitchat);
        while live.changed().await.is_ok() {
            let Some(inner) = weak.upgrade() else { return };
            inner.changes.send_modify(|n| *n += 1);
        }
    });
}

/// Resolves when a run of chitchat ends, with why.
type Termination = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// Watch chitchat's task, and start it again when it stops by itself.
async fn supervise(weak: Weak<Inner>, mut done: Termination) {
    let mut restarts: Vec<std::time::Instant> = Vec::new();
    loop {
        let result = (&mut done).await;
        let Some(inner) = weak.upgrade() else { return };
        let why = match result {
            Ok(()) => "the gossip task ended".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if inner.shutting_down.load(Ordering::Relaxed) {
            inner.transport.close().await;
            inner.stopped.send_replace(Some(why));
            return;
        }
        restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
        if restarts.len() >= MAX_RESTARTS {
            inner.transport.close().await;
            inner.stopped.send_replace(Some(format!(
                "{why} ({} times within a minute: not started again)",
                restarts.len() + 1
            )));
            return;
        }
        restarts.push(std::time::Instant::now());
        inner.counters.restarted();
        tracing::error!(
            reason = %why,
            "the gossip task stopped; starting it again (at most {MAX_RESTARTS} times a minute)"
        );
        match inner.restart().await {
            Ok(handle) => done = Box::pin(handle.termination_watcher()),
            Err(e) => {
                inner.transport.close().await;
                inner
                    .stopped
                    .send_replace(Some(format!("{why}; starting it again failed: {e}")));
                return;
            }
        }
    }
}

impl Inner {
    /// Start chitchat again on the same port and identity, with this node's own state: its
    /// keys at their versions, its heartbeat, so that peers take what it says next.
    async fn restart(self: &Arc<Self>) -> Result<Arc<ChitchatHandle>, String> {
        let old = lock(&self.current).clone();
        self.transport.attach(None);
        let (heartbeat, max_version, keys) = old
            .with_chitchat(|c| {
                let s = c.self_node_state();
                let mut keys: Vec<(String, String, u64)> = s
                    .key_values_including_deleted()
                    .filter(|(_, v)| !v.is_deleted())
                    .map(|(k, v)| (k.to_string(), v.value.clone(), v.version))
                    .collect();
                keys.sort_by_key(|(_, _, version)| *version);
                (s.heartbeat(), s.max_version(), keys)
            })
            .await;
        drop(old);
        let initial: Vec<(String, String)> = keys.into_iter().map(|(k, v, _)| (k, v)).collect();
        // The port of the run that stopped may take a moment to be released (plain UDP).
        let mut attempt = 0;
        let handle = loop {
            match spawn_chitchat(
                config(&self.settings),
                initial.clone(),
                self.transport.transport(),
            )
            .await
            {
                Ok(h) => break Arc::new(h),
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::debug!("gossip not started again yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("{e:#}")),
            }
        };
        handle
            .with_chitchat(|c| {
                let s = c.self_node_state();
                s.try_set_heartbeat(heartbeat);
                s.set_max_version(s.max_version().max(max_version));
            })
            .await;
        self.transport.attach(Some(&handle));
        *lock(&self.current) = handle.clone();
        forward_changes(self, &handle);
        self.changes.send_modify(|n| *n += 1);
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_mesh_address_and_skips_leaving_or_incomplete_nodes() {
        let id = ChitchatId::new("n1", 5, "127.0.0.1:1".parse().unwrap());
        assert_eq!(
            parse_node(&id, [("other", "")]),
            None,
            "no mesh address yet"
        );
        assert_eq!(
            parse_node(&id, [(KEY_MESH, "nope")]),
            None,
            "unusable address"
        );
        let mut kv = vec![(KEY_MESH, "127.0.0.1:2"), ("other", "x")];
        let (peer, mesh) = parse_node(&id, kv.clone()).unwrap();
        assert_eq!((&*peer.name, peer.generation), ("n1", 5));
        assert_eq!(mesh.port(), 2);
        kv.push((KEY_LEAVING, "1"));
        assert_eq!(parse_node(&id, kv), None);
    }
}
