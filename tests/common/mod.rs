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
    let dbg = format!("{p:?}");
    TryInto::<String>::try_into(p).unwrap_or(dbg)
}

/// Assert nothing arrives within `ms`.
pub async fn recv_none(rx: &mut tokio::sync::mpsc::Receiver<engineioxide::Packet>, ms: u64) {
    if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(ms), rx.recv()).await {
        panic!("unexpected packet {p:?}");
    }
}
