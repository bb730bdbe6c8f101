#![allow(missing_docs)]
//! Fixture: in-process clusters of real nodes on 127.0.0.1 with ephemeral ports.
#![allow(dead_code)]

use std::time::Duration;

use socketioxide::{SocketIo, adapter::Emitter};
use socketioxide_cluster::{Cluster, GossipAdapter, GossipAdapterConfig, GossipAdapterCtr};

/// The adapter type of the test servers.
pub type Adapter = GossipAdapter<Emitter>;

/// One node of a test cluster.
pub struct TestNode {
    pub io: SocketIo<Adapter>,
    pub cluster: Cluster,
}

/// Configuration of a test node: loopback, ephemeral ports, fast gossip, short peer timeout.
pub fn config(cluster_id: &str, seed: Option<std::net::SocketAddr>) -> GossipAdapterConfig {
    let mut c = GossipAdapterConfig::new()
        .with_cluster_id(cluster_id)
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_gossip_interval(Duration::from_millis(50))
        .with_peer_timeout(Duration::from_millis(1000))
        .with_secret("test-secret-0123456789");
    if let Some(seed) = seed {
        c = c.with_seeds([seed.to_string()]);
    }
    c
}

/// Start one node from a config.
pub async fn start(config: GossipAdapterConfig) -> TestNode {
    let ctr = GossipAdapterCtr::new(config).await.expect("node starts");
    let cluster = ctr.cluster();
    let (_svc, io) = SocketIo::builder().with_adapter::<Adapter>(ctr).build_svc();
    TestNode { io, cluster }
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

/// Start `N` nodes seeded by the first, with namespace `/` on each (registered by `setup`),
/// and wait until every node sees every other hosting it.
pub async fn spawn_cluster<const N: usize>() -> [TestNode; N] {
    init_tracing();
    let id = cluster_id();
    let first = start(config(&id, None)).await;
    let seed = first.cluster.gossip_addr();
    let mut nodes = vec![first];
    for _ in 1..N {
        nodes.push(start(config(&id, Some(seed))).await);
    }
    nodes.try_into().unwrap_or_else(|_| unreachable!())
}

/// Wait (bounded) until every node sees `n - 1` members hosting `ns`.
pub async fn wait_for_namespace(nodes: &[&TestNode], ns: &str) {
    let n = nodes.len();
    let ok = wait_until(Duration::from_secs(15), || {
        nodes.iter().all(|node| {
            node.cluster
                .members()
                .iter()
                .filter(|m| m.hosts(ns) && m.server_id.is_some())
                .count()
                == n - 1
        })
    })
    .await;
    assert!(ok, "cluster did not converge on namespace {ns}");
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

/// Receive the next text packet of a dummy socket within `ms`.
pub async fn recv(rx: &mut tokio::sync::mpsc::Receiver<engineioxide::Packet>, ms: u64) -> String {
    let p = tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .expect("packet in time")
        .expect("socket open");
    String::from(p)
}

/// Assert nothing arrives within `ms`.
pub async fn recv_none(rx: &mut tokio::sync::mpsc::Receiver<engineioxide::Packet>, ms: u64) {
    if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(ms), rx.recv()).await {
        panic!("unexpected packet {p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Additions for the adapter-operation tests: nodes served over HTTP, builder and config
// variants (msgpack parser, timeouts), and client helpers.
// ---------------------------------------------------------------------------------------------

pub mod msgpack;
pub mod polling;

use engineioxide::Packet as EioPacket;
use socketioxide::{SocketIoBuilder, socket::Sid};
use tokio::sync::mpsc;

/// The sending half of a test client: engine.io packets to the server.
pub type ClientTx = mpsc::Sender<EioPacket>;
/// The receiving half of a test client: engine.io packets from the server.
pub type ClientRx = mpsc::Receiver<EioPacket>;

/// Start one node from a config and a customised socket.io builder, and serve its socket.io
/// service over HTTP on an ephemeral port of 127.0.0.1.
pub async fn start_served(
    config: GossipAdapterConfig,
    build: impl FnOnce(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
) -> (TestNode, std::net::SocketAddr) {
    let ctr = GossipAdapterCtr::new(config).await.expect("node starts");
    let cluster = ctr.cluster();
    let (svc, io) = build(SocketIo::builder().with_adapter::<Adapter>(ctr)).build_svc();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind http");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().fallback_service(svc);
        let _ = axum::serve(listener, app).await;
    });
    (TestNode { io, cluster }, addr)
}

/// Like [`spawn_cluster`], with each node's config and socket.io builder customised, and
/// each node served over HTTP (addresses returned in node order).
pub async fn spawn_served_cluster<const N: usize>(
    cfg: impl Fn(GossipAdapterConfig) -> GossipAdapterConfig,
    build: impl Fn(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
) -> ([TestNode; N], [std::net::SocketAddr; N]) {
    init_tracing();
    let id = cluster_id();
    let (first, first_addr) = start_served(cfg(config(&id, None)), &build).await;
    let seed = first.cluster.gossip_addr();
    let mut nodes = vec![first];
    let mut addrs = vec![first_addr];
    for _ in 1..N {
        let (node, addr) = start_served(cfg(config(&id, Some(seed))), &build).await;
        nodes.push(node);
        addrs.push(addr);
    }
    (
        nodes.try_into().unwrap_or_else(|_| unreachable!()),
        addrs.try_into().unwrap_or_else(|_| unreachable!()),
    )
}

/// Like [`spawn_cluster`], with each node's config and socket.io builder customised.
pub async fn spawn_cluster_with<const N: usize>(
    cfg: impl Fn(GossipAdapterConfig) -> GossipAdapterConfig,
    build: impl Fn(SocketIoBuilder<Adapter>) -> SocketIoBuilder<Adapter>,
) -> [TestNode; N] {
    spawn_served_cluster::<N>(cfg, build).await.0
}

/// A cluster whose nodes use the msgpack parser, served over HTTP (dummy sockets cannot
/// speak msgpack: connect clients with [`msgpack_client`]).
pub async fn spawn_msgpack_cluster<const N: usize>() -> ([TestNode; N], [std::net::SocketAddr; N]) {
    spawn_served_cluster::<N>(
        |c| c,
        |b| b.with_parser(socketioxide::ParserConfig::msgpack()),
    )
    .await
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

/// The socket id in a text CONNECT packet (`40{"sid":"..."}` or `40/ns,{"sid":"..."}`).
pub fn sid_of(connect: &str) -> Sid {
    let sid = connect
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no sid in {connect}"));
    sid.parse()
        .unwrap_or_else(|_| panic!("bad sid in {connect}"))
}

/// Connect a dummy socket to `ns` of `io`; returns its halves and its socket id once the
/// CONNECT packet has arrived.
pub async fn dummy(io: &SocketIo<Adapter>, ns: &'static str) -> (ClientTx, ClientRx, Sid) {
    let (tx, mut rx) = io.new_dummy_sock(ns, ()).await;
    let connect = recv(&mut rx, 2000).await;
    assert!(connect.starts_with("40"), "expected CONNECT, got {connect}");
    (tx, rx, sid_of(&connect))
}

/// Receive the next engine.io packet of a client within `ms`.
pub async fn recv_packet(rx: &mut ClientRx, ms: u64) -> EioPacket {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .expect("packet in time")
        .expect("socket open")
}

/// Receive the next binary engine.io packet (a msgpack packet or an attachment) within `ms`.
pub async fn recv_bin(rx: &mut ClientRx, ms: u64) -> bytes::Bytes {
    match recv_packet(rx, ms).await {
        EioPacket::Binary(b) => b,
        other => panic!("expected a binary packet, got {other:?}"),
    }
}

/// Receive the next msgpack socket.io packet within `ms`, decoded to JSON.
pub async fn recv_msgpack(rx: &mut ClientRx, ms: u64) -> serde_json::Value {
    msgpack::decode(&recv_bin(rx, ms).await)
}

/// `"/chat,"` for a namespace other than `/`, as text packets spell it.
fn ns_prefix(ns: &str) -> String {
    if ns == "/" {
        String::new()
    } else {
        format!("{ns},")
    }
}

/// The ack id of a text EVENT or BINARY_EVENT packet that asks for one (`421["ev",..]`,
/// `42/ns,7["ev",..]`, `451-3["ev",{"_placeholder":true,"num":0}]`).
pub fn ack_id(packet: &str) -> i64 {
    let rest = packet
        .strip_prefix("42")
        .or_else(|| {
            let bin = packet.strip_prefix("45")?;
            Some(bin.split_once('-')?.1)
        })
        .unwrap_or_else(|| panic!("not an event: {packet}"));
    let rest = match rest.split_once(',') {
        Some((ns, tail)) if ns.starts_with('/') => tail,
        _ => rest,
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no ack id in {packet}"))
}

/// Answer ack `id` on namespace `ns` with the JSON array `args` (e.g. `["ok"]`).
pub async fn answer(tx: &ClientTx, ns: &str, id: i64, args: &str) {
    let p = EioPacket::Message(format!("3{}{id}{args}", ns_prefix(ns)).into());
    tx.send(p).await.expect("client open");
}

/// Send an EVENT from a client on namespace `ns`; `args` is the JSON array
/// `["event", ...]`.
pub async fn client_emit(tx: &ClientTx, ns: &str, args: &str) {
    let p = EioPacket::Message(format!("2{}{args}", ns_prefix(ns)).into());
    tx.send(p).await.expect("client open");
}

/// Connect a text-parser client over HTTP long-polling to `ns` of the node at `addr`;
/// returns its halves and socket id once the CONNECT packet has arrived.
pub async fn polling_client(addr: std::net::SocketAddr, ns: &str) -> (ClientTx, ClientRx, Sid) {
    let connect = EioPacket::Message(format!("0{}", ns_prefix(ns)).into());
    let (tx, mut rx) = polling::connect(addr, connect).await;
    let connect = recv(&mut rx, 5000).await;
    assert!(connect.starts_with("40"), "expected CONNECT, got {connect}");
    (tx, rx, sid_of(&connect))
}

/// Connect a msgpack-parser client over HTTP long-polling to `ns` of the node at `addr`;
/// returns its halves and socket id once the CONNECT packet has arrived.
pub async fn msgpack_client(addr: std::net::SocketAddr, ns: &str) -> (ClientTx, ClientRx, Sid) {
    let connect = msgpack::encode(&serde_json::json!({ "type": 0, "nsp": ns }));
    let (tx, mut rx) = polling::connect(addr, EioPacket::Binary(connect.into())).await;
    let p = recv_msgpack(&mut rx, 5000).await;
    assert_eq!(p["type"], 0, "expected CONNECT, got {p}");
    let sid = p["data"]["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("no sid in {p}"))
        .parse()
        .unwrap();
    (tx, rx, sid)
}

/// Send a msgpack socket.io packet (given as JSON) from a msgpack client.
pub async fn msgpack_send(tx: &ClientTx, packet: serde_json::Value) {
    let bin = msgpack::encode(&packet);
    tx.send(EioPacket::Binary(bin.into()))
        .await
        .expect("client open");
}
