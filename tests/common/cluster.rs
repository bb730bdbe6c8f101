//! Fixture: in-process clusters of real nodes on 127.0.0.1 with ephemeral ports, on either
//! backend: the gossip + QUIC mesh, or Redis (one `redis-server` per test).
//!
//! A cross-node test is written once, as `async fn name(backend: Backend)`, and listed in
//! [`backend_tests!`](crate::backend_tests), which runs it once per backend:
//! `gossip::name` and `redis::name`.

use std::{fmt, net::SocketAddr, time::Duration};

use socketioxide::{SocketIo, SocketIoBuilder, adapter::Emitter, extract::SocketRef};
#[cfg(feature = "cluster-gossip")]
use socketioxide_cluster::{Cluster, GossipAdapterConfig};
use socketioxide_cluster::{ClusterAdapter, ClusterAdapterCtr};

#[cfg(feature = "redis")]
use super::redis_server;

/// The adapter type of the test servers, whatever their backend.
pub type Adapter = ClusterAdapter<Emitter>;

/// The cluster secret of the test nodes: 64 hex characters, as `openssl rand -hex 32`
/// prints.
pub const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

/// Bound for remote state to settle, or an ack stream to end.
pub const SETTLES: Duration = Duration::from_secs(10);
/// Bound for a cluster to form: every node a verified member of every other.
pub const FORMS: Duration = Duration::from_secs(20);
/// An ack timeout far longer than any test: a stream that ends sooner ended because every
/// expected ack came, not because it timed out.
pub const LONG: Duration = Duration::from_secs(60);

/// For each `async fn name(backend: Backend)` listed, generate `gossip::name` (feature
/// `cluster-gossip`) and `redis::name` (feature `redis`), each a test that runs `name` on
/// that backend. The Redis test starts its own `redis-server`, and skips (outside CI) when
/// there is none to start.
///
/// Optional section: `; gossip_only: name, ..` for tests that only make sense on gossip (say
/// why at the function).
#[macro_export]
macro_rules! backend_tests {
    (
        $($name:ident),+ $(,)?
        $(; gossip_only: $($gossip_name:ident),+ $(,)?)?
    ) => {
        #[cfg(feature = "cluster-gossip")]
        mod gossip {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Gossip).await;
                }
            )+
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $gossip_name() {
                    super::$gossip_name($crate::common::Backend::Gossip).await;
                }
            )+)?
        }

        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = $crate::common::Backend::redis() else {
                        return;
                    };
                    super::$name(backend).await;
                }
            )+
        }
    };
}

/// The backend the nodes of a test run.
#[derive(Clone)]
pub enum Backend {
    /// Gossip discovery and the QUIC mesh.
    #[cfg(feature = "cluster-gossip")]
    Gossip,
    /// Redis pub/sub through the test's own `redis-server`, which lives as long as any
    /// node (or the test) holds it.
    #[cfg(feature = "redis")]
    Redis(std::sync::Arc<redis_server::RedisServer>),
}

impl Backend {
    /// The Redis backend on a fresh `redis-server`; `None` (skip the test) when
    /// `redis-server` is missing outside CI.
    #[cfg(feature = "redis")]
    pub fn redis() -> Option<Self> {
        redis_server::RedisServer::start().map(|s| Self::Redis(s.into()))
    }

    /// Whether a join, leave or disconnect of a remote socket is applied on every node when
    /// the call returns: on gossip it is; on Redis, which orders the change before any
    /// later message, a node applies it when it reads it.
    pub fn applies_on_return(&self) -> bool {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip => true,
            #[cfg(feature = "redis")]
            Self::Redis(_) => false,
        }
    }

    /// Whether `cond`, which a join, leave or disconnect that just returned should make
    /// true, holds: at once where the change is applied on return, within [`SETTLES`]
    /// otherwise.
    pub async fn applied(&self, mut cond: impl FnMut() -> bool) -> bool {
        if self.applies_on_return() {
            cond()
        } else {
            wait_until(SETTLES, cond).await
        }
    }

    /// `"gossip"` or `"redis"`.
    pub fn name(&self) -> &'static str {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip => "gossip",
            #[cfg(feature = "redis")]
            Self::Redis(_) => "redis",
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One node of a test cluster.
pub struct TestNode {
    pub io: SocketIo<Adapter>,
    /// The node's backend. With Redis it holds the test's `redis-server`, so that the
    /// server outlives every node of the test.
    pub backend: Backend,
    handle: Handle,
}

/// What the tests may look at below the adapter.
enum Handle {
    #[cfg(feature = "cluster-gossip")]
    Gossip(Cluster),
    /// The channel prefix of the node's cluster, and the node's name.
    #[cfg(feature = "redis")]
    Redis { prefix: String, name: String },
}

impl TestNode {
    /// The gossip cluster handle of the node. Panics on another backend: only gossip-only
    /// tests use it.
    #[cfg(feature = "cluster-gossip")]
    pub fn cluster(&self) -> &Cluster {
        match &self.handle {
            Handle::Gossip(cluster) => cluster,
            #[allow(unreachable_patterns)]
            _ => panic!("a {:?} node has no gossip cluster", self.backend),
        }
    }

    /// The node's name, as other nodes see it (in presence metas, server events).
    pub fn node_name(&self) -> String {
        match &self.handle {
            #[cfg(feature = "cluster-gossip")]
            Handle::Gossip(cluster) => cluster.node_name().to_string(),
            #[cfg(feature = "redis")]
            Handle::Redis { name, .. } => name.clone(),
        }
    }

    /// How many nodes, this one included, this node counts as hosting namespace `ns` (the
    /// nodes a request on `ns` waits for, plus itself). Gossip: the members gossiping `ns`.
    /// Redis: the subscribers of the namespace's request channel, which socketioxide-redis
    /// counts (`PUBSUB NUMSUB`) before each request.
    pub async fn hosting(&self, ns: &str) -> usize {
        match (&self.handle, &self.backend) {
            #[cfg(feature = "cluster-gossip")]
            (Handle::Gossip(cluster), _) => {
                let members = cluster.members().iter().filter(|m| m.hosts(ns)).count();
                members + usize::from(self.io.of(ns).is_some())
            }
            #[cfg(feature = "redis")]
            (Handle::Redis { prefix, .. }, Backend::Redis(server)) => {
                let client = ::redis::Client::open(server.url()).expect("redis url");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis reachable");
                let (_, count): (String, usize) = ::redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(format!("{prefix}-request#{ns}#"))
                    .query_async(&mut conn)
                    .await
                    .expect("PUBSUB NUMSUB");
                count
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("a node's handle matches its backend"),
        }
    }
}

/// The names of a gossip node's members, sorted.
#[cfg(feature = "cluster-gossip")]
pub fn names(node: &TestNode) -> Vec<String> {
    node.cluster()
        .members()
        .into_iter()
        .map(|m| m.node_name)
        .collect()
}

/// Gossip configuration of a test node: loopback, ephemeral ports, fast gossip, short peer
/// timeout.
#[cfg(feature = "cluster-gossip")]
pub fn config(cluster_id: &str, seed: Option<SocketAddr>) -> GossipAdapterConfig {
    let mut c = GossipAdapterConfig::new()
        .with_cluster_id(cluster_id)
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_gossip_interval(Duration::from_millis(50))
        .with_peer_timeout(Duration::from_millis(1000))
        .with_secret(SECRET);
    if let Some(seed) = seed {
        c = c.with_seeds([seed.to_string()]);
    }
    c
}

/// Start one gossip node from an explicit config (for the gossip-only tests).
#[cfg(feature = "cluster-gossip")]
pub async fn start_gossip(config: GossipAdapterConfig) -> TestNode {
    let ctr = ClusterAdapterCtr::gossip(config)
        .await
        .expect("node starts");
    let cluster = ctr.cluster().expect("a gossip node has a cluster");
    node(Backend::Gossip, Handle::Gossip(cluster), ctr, |b| b).0
}

/// The nodes of one test cluster, started one at a time: they share the backend and a
/// unique cluster id (with Redis, the channel prefix); with gossip the first node seeds the
/// others.
pub struct TestCluster {
    backend: Backend,
    id: String,
    /// The request timeout of the nodes started from now on (default: the library's).
    request_timeout: Option<Duration>,
    #[cfg(feature = "cluster-gossip")]
    seed: Option<SocketAddr>,
}

impl TestCluster {
    pub fn new(backend: &Backend) -> Self {
        init_tracing();
        Self {
            backend: backend.clone(),
            id: cluster_id(),
            request_timeout: None,
            #[cfg(feature = "cluster-gossip")]
            seed: None,
        }
    }

    /// Give the nodes started from now on this request timeout: a test that must see a
    /// request end because every expected answer came sets one far longer than its own
    /// bound, so that waiting for the timeout fails it.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Start one more node, its socket.io builder customised by `build`.
    pub async fn start(
        &mut self,
        build: impl FnOnce(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
    ) -> TestNode {
        self.start_node(build).await.0
    }

    /// Start one more node, its socket.io builder customised by `build`, and serve its
    /// socket.io service over HTTP on an ephemeral port of 127.0.0.1.
    pub async fn start_served(
        &mut self,
        build: impl FnOnce(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
    ) -> (TestNode, SocketAddr) {
        let (node, svc) = self.start_node(build).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let app = axum::Router::new().fallback_service(svc);
            let _ = axum::serve(listener, app).await;
        });
        (node, addr)
    }

    /// Start one more node with its session store.
    #[cfg(feature = "sessions")]
    pub async fn start_with_sessions(
        &mut self,
        config: socketioxide_cluster::sessions::SessionStoreConfig,
    ) -> (
        TestNode,
        socketioxide_cluster::sessions::ClusterSessionStore,
    ) {
        let (ctr, handle) = self.ctr().await;
        let store = ctr.session_store(config);
        (node(self.backend.clone(), handle, ctr, |b| b).0, store)
    }

    /// Start one more node with its server-to-server events.
    pub async fn start_with_events(
        &mut self,
    ) -> (TestNode, socketioxide_cluster::events::ServerEvents) {
        let (ctr, handle) = self.ctr().await;
        let events = ctr.server_events();
        (node(self.backend.clone(), handle, ctr, |b| b).0, events)
    }

    /// The cluster id (with Redis, the channel prefix).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Start one more node with its presence.
    pub async fn start_with_presence(
        &mut self,
        config: socketioxide_cluster::presence::PresenceConfig,
    ) -> (TestNode, socketioxide_cluster::presence::Presence) {
        let (ctr, handle) = self.ctr().await;
        let presence = ctr.presence(config);
        (node(self.backend.clone(), handle, ctr, |b| b).0, presence)
    }

    /// The gossip configuration of the next node of this cluster (seeded by the first).
    #[cfg(feature = "cluster-gossip")]
    pub fn next_config(&self) -> GossipAdapterConfig {
        let config = config(&self.id, self.seed);
        match self.request_timeout {
            Some(t) => config.with_request_timeout(t),
            None => config,
        }
    }

    async fn start_node(
        &mut self,
        build: impl FnOnce(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
    ) -> (TestNode, Svc) {
        let (ctr, handle) = self.ctr().await;
        node(self.backend.clone(), handle, ctr, build)
    }

    async fn ctr(&mut self) -> (ClusterAdapterCtr, Handle) {
        match &self.backend {
            #[cfg(feature = "cluster-gossip")]
            Backend::Gossip => {
                let ctr = ClusterAdapterCtr::gossip(self.next_config())
                    .await
                    .expect("node starts");
                let cluster = ctr.cluster().expect("a gossip node has a cluster");
                self.seed.get_or_insert(cluster.gossip_addr());
                (ctr, Handle::Gossip(cluster))
            }
            #[cfg(feature = "redis")]
            Backend::Redis(server) => {
                let mut config = socketioxide_cluster::redis::RedisAdapterConfig::new()
                    .with_prefix(self.id.clone());
                if let Some(t) = self.request_timeout {
                    config = config.with_request_timeout(t);
                }
                let ctr = ClusterAdapterCtr::redis(&server.url(), config)
                    .await
                    .expect("node connects to redis");
                let prefix = self.id.clone();
                let name = ctr
                    .redis_handle()
                    .expect("a redis node has a handle")
                    .node_name()
                    .to_string();
                (ctr, Handle::Redis { prefix, name })
            }
        }
    }
}

type Svc = socketioxide::service::SocketIoService<engineioxide::service::NotFoundService, Adapter>;

fn node(
    backend: Backend,
    handle: Handle,
    ctr: ClusterAdapterCtr,
    build: impl FnOnce(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
) -> (TestNode, Svc) {
    let (svc, io) = build(SocketIo::builder().with_adapter::<Adapter>(ctr)).build_svc();
    let node = TestNode {
        io,
        backend,
        handle,
    };
    (node, svc)
}

/// A unique cluster id per test, so concurrent tests never gossip with each other.
pub fn cluster_id() -> String {
    format!("test-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

pub(super) fn array<T, const N: usize>(v: Vec<T>) -> [T; N] {
    v.try_into().unwrap_or_else(|_| unreachable!())
}

/// Start `N` nodes of one cluster on `backend`. Register namespaces with
/// [`ns_everywhere`], or `io.ns` then [`wait_for_namespace`].
pub async fn spawn_cluster<const N: usize>(backend: &Backend) -> [TestNode; N] {
    spawn_cluster_with::<N>(backend, |b| b).await
}

/// Like [`spawn_cluster`], with each node's socket.io builder customised.
pub async fn spawn_cluster_with<const N: usize>(
    backend: &Backend,
    build: impl Fn(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
) -> [TestNode; N] {
    start_nodes(TestCluster::new(backend), build).await
}

/// Start `N` nodes of `cluster`, each socket.io builder customised by `build`.
pub async fn start_nodes<const N: usize>(
    mut cluster: TestCluster,
    build: impl Fn(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
) -> [TestNode; N] {
    let mut nodes = Vec::with_capacity(N);
    for _ in 0..N {
        nodes.push(cluster.start(&build).await);
    }
    array(nodes)
}

/// Like [`spawn_cluster_with`], with each node served over HTTP (addresses returned in node
/// order).
pub async fn spawn_served_cluster<const N: usize>(
    backend: &Backend,
    build: impl Fn(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
) -> ([TestNode; N], [SocketAddr; N]) {
    let mut cluster = TestCluster::new(backend);
    let (mut nodes, mut addrs) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for _ in 0..N {
        let (node, addr) = cluster.start_served(&build).await;
        nodes.push(node);
        addrs.push(addr);
    }
    (array(nodes), array(addrs))
}
/// A cluster whose nodes use the msgpack parser, served over HTTP (dummy sockets cannot
/// speak msgpack: connect clients with [`msgpack_client`](super::msgpack_client)).
pub async fn spawn_msgpack_cluster<const N: usize>(
    backend: &Backend,
) -> ([TestNode; N], [SocketAddr; N]) {
    spawn_served_cluster::<N>(backend, |b| {
        b.with_parser(socketioxide::ParserConfig::msgpack())
    })
    .await
}

/// Wait (bounded) until every node can reach the others on namespace `ns`.
///
/// Gossip: until every node sees `n - 1` members hosting `ns`. Redis: nothing to wait for,
/// a node has subscribed to the namespace's channels when `io.ns(..).await` returns (and a
/// dynamic namespace before its first CONNECT is sent), and each request counts the
/// subscribers anew.
pub async fn wait_for_namespace(nodes: &[&TestNode], ns: &str) {
    let what = format!("cluster did not converge on namespace {ns}");
    wait_members(nodes, Some(ns), Duration::from_secs(15), &what).await;
}

/// Wait (bounded) until every node counts every other as a member. Gossip: each node's
/// verified members are the others. Redis: nothing to wait for, a node that connected
/// has subscribed. Panics when the cluster does not form within [`FORMS`].
pub async fn wait_formed(nodes: &[&TestNode]) {
    wait_members(nodes, None, FORMS, "the cluster did not form").await;
}

/// What [`wait_for_namespace`] and [`wait_formed`] wait for. Gossip: until each of `nodes`
/// counts `n - 1` members, counting only those hosting `ns` with a known server id when
/// `ns` is given; panics with `what` and the counts seen once `limit` passed. Redis:
/// returns at once (see the callers for why there is nothing to wait for).
#[cfg_attr(not(feature = "cluster-gossip"), allow(unused_variables))]
async fn wait_members(nodes: &[&TestNode], ns: Option<&str>, limit: Duration, what: &str) {
    let Some(first) = nodes.first() else {
        return;
    };
    match first.backend {
        #[cfg(feature = "cluster-gossip")]
        Backend::Gossip => {
            let counted = |m: &socketioxide_cluster::Member| match ns {
                None => true,
                Some(ns) => m.hosts(ns) && m.server_id.is_some(),
            };
            let seen = || -> Vec<usize> {
                nodes
                    .iter()
                    .map(|node| {
                        node.cluster()
                            .members()
                            .iter()
                            .filter(|m| counted(m))
                            .count()
                    })
                    .collect()
            };
            let others = nodes.len() - 1;
            let ok = wait_until(limit, || seen().iter().all(|&c| c == others)).await;
            assert!(ok, "{what}: members seen {:?}", seen());
        }
        #[cfg(feature = "redis")]
        Backend::Redis(_) => {}
    }
}

/// Wait (bounded) until each of `nodes` counts `n` nodes hosting `ns`, itself included
/// (see [`TestNode::hosting`]).
pub async fn wait_hosting(nodes: &[&TestNode], ns: &str, n: usize) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut counts = Vec::with_capacity(nodes.len());
        for node in nodes {
            counts.push(node.hosting(ns).await);
        }
        if counts.iter().all(|&c| c == n) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("nodes count {counts:?} hosting {ns}, expected {n} each");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Register namespace `ns` with `handler` on every node, then wait until all see each other
/// hosting it.
pub async fn ns_everywhere<C, T>(nodes: &[&TestNode], ns: &'static str, handler: C)
where
    C: socketioxide::handler::ConnectHandler<Adapter, T> + Clone,
    T: Send + Sync + 'static,
{
    for n in nodes {
        n.io.ns(ns, handler.clone()).await.expect("namespace init");
    }
    wait_for_namespace(nodes, ns).await;
}

/// Start `N` nodes of one cluster on `backend`, each hosting `/` with a connect handler that
/// does nothing, and wait until they see each other hosting it.
pub async fn spawn_root_cluster<const N: usize>(backend: &Backend) -> [TestNode; N] {
    let nodes = spawn_cluster::<N>(backend).await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    ns_everywhere(&refs, "/", async |_: SocketRef<Adapter>| {}).await;
    nodes
}

/// The rooms the sockets of each node of a [`spawn_rooms_cluster_with`] join in their
/// connect handler, in node order: `a` joins `ra` and `common`, `b` joins `rb`, `c` joins
/// `rc` and `common`.
pub const NODE_ROOMS: [&[&str]; 3] = [&["ra", "common"], &["rb"], &["rc", "common"]];

/// Three nodes hosting `/`, whose sockets join the rooms of their node ([`NODE_ROOMS`]) in
/// their connect handler; each node's socket.io builder customised by `build`.
pub async fn spawn_rooms_cluster_with(
    backend: &Backend,
    build: impl Fn(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
) -> [TestNode; 3] {
    let [a, b, c] = spawn_cluster_with::<3>(backend, build).await;
    ns_per_node([&a, &b, &c], "/", NODE_ROOMS, |rooms| {
        async move |s: SocketRef<Adapter>| s.join(rooms)
    })
    .await;
    [a, b, c]
}

/// Register namespace `ns` on each of `nodes`, with the connect handler `handler` makes of
/// that node's entry in `per_node`, then wait until all see each other hosting it.
pub async fn ns_per_node<const N: usize, P, C, T>(
    nodes: [&TestNode; N],
    ns: &'static str,
    per_node: [P; N],
    handler: impl Fn(P) -> C,
) where
    C: socketioxide::handler::ConnectHandler<Adapter, T>,
    T: Send + Sync + 'static,
{
    for (n, p) in nodes.into_iter().zip(per_node) {
        n.io.ns(ns, handler(p)).await.expect("namespace init");
    }
    wait_for_namespace(&nodes, ns).await;
}

/// Await `fut` for at most `limit`: `None` if it has not completed by then. Unlike
/// `tokio::time::timeout`, `fut` is not polled once more at the deadline, so a future that
/// would complete only because the deadline woke its task (say, an ack stream that ended
/// without waking it) does not pass.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = tokio::time::sleep(limit) => None,
        out = fut => Some(out),
    }
}

/// Start something (a node) on a runtime of its own, from a thread of its own, so that a
/// test can later kill it the way SIGKILL does: `rt.shutdown_background()` stops every task
/// at once, and nothing is said to the peers.
pub fn on_own_runtime<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
    start: impl FnOnce() -> F + Send + 'static,
) -> (tokio::runtime::Runtime, T) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let started = rt.block_on(start());
        (rt, started)
    })
    .join()
    .unwrap()
}

/// Poll `cond` every 20 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
