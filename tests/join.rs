//! A node is joined when its constructor returns: its first broadcast reaches every member.
#![cfg(feature = "cluster-gossip")]

use std::time::Duration;

use socketioxide::{SocketIo, adapter::Emitter, extract::SocketRef};
use socketioxide_cluster::{Cluster, GossipAdapter, GossipAdapterConfig, GossipAdapterCtr};

type A = GossipAdapter<Emitter>;
const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

fn config(id: &str, seed: Option<std::net::SocketAddr>) -> GossipAdapterConfig {
    let mut c = GossipAdapterConfig::new()
        .with_cluster_id(id)
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_secret(SECRET);
    if let Some(seed) = seed {
        c = c.with_seeds([seed.to_string()]);
    }
    c
}

async fn node(config: GossipAdapterConfig) -> (SocketIo<A>, Cluster) {
    let ctr = GossipAdapterCtr::new(config).await.unwrap();
    let cluster = ctr.cluster();
    let (_svc, io) = SocketIo::builder().with_adapter::<A>(ctr).build_svc();
    io.ns("/", async |_: SocketRef<A>| {}).await.unwrap();
    (io, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_broadcasts_to_every_member_as_soon_as_it_started() {
    for round in 0..5 {
        // The default gossip interval (500 ms): joining must not wait for gossip rounds.
        let id = format!("join-{}-{round}", std::process::id());
        let (a, ca) = node(config(&id, None)).await;
        let (b, cb) = node(config(&id, Some(ca.gossip_addr()))).await;
        assert!(ca.ready() && cb.ready());
        let (_ta, mut ra) = a.new_dummy_sock("/", ()).await;
        let (_tb, mut rb) = b.new_dummy_sock("/", ()).await;
        for rx in [&mut ra, &mut rb] {
            tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("connect packet")
                .unwrap();
        }
        // A third node emits the moment it is built.
        let started = std::time::Instant::now();
        let (c, cc) = node(config(&id, Some(ca.gossip_addr()))).await;
        // A figure, not a check: how long joining took.
        eprintln!(
            "round {round}: the third node joined in {:?}",
            started.elapsed()
        );
        assert!(cc.ready(), "joined");
        c.emit("hello", &round).await.unwrap();
        for (name, rx) in [("a", &mut ra), ("b", &mut rb)] {
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: node {name} got the first broadcast"))
                .unwrap();
            assert_eq!(String::from(got), format!(r#"42["hello",{round}]"#));
        }
        for n in [&ca, &cb, &cc] {
            n.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_first_node_whose_seed_does_not_answer_starts_after_the_join_timeout() {
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let id = format!("join-alone-{}", std::process::id());
    let (_io, c) = node(
        config(&id, Some(nobody.local_addr().unwrap()))
            .with_join_timeout(Duration::from_millis(300)),
    )
    .await;
    assert!(c.ready(), "started alone");
    assert!(c.members().is_empty());
    assert!(!c.wait_for_members(1, Duration::from_millis(200)).await);
    c.shutdown().await;
    assert!(!c.ready(), "not ready once it left");
}

/// Two nodes that reach the seed at the same moment are each missing from the seed's first
/// answer to the other; and chitchat calls a node just heard of dead at its next round.
/// Neither may make a constructor return before the other node is a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_started_together_reach_each_other_with_their_first_broadcast() {
    for round in 0..20 {
        let id = format!("join-together-{}-{round}", std::process::id());
        let (_a, ca) = node(config(&id, None)).await;
        let seed = Some(ca.gossip_addr());
        let ((b, cb), (c, cc)) = tokio::join!(node(config(&id, seed)), node(config(&id, seed)));
        let (_tb, mut rb) = b.new_dummy_sock("/", ()).await;
        let (_tc, mut rc) = c.new_dummy_sock("/", ()).await;
        for rx in [&mut rb, &mut rc] {
            tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("connect packet")
                .unwrap();
        }
        b.emit("from-b", &round).await.unwrap();
        c.emit("from-c", &round).await.unwrap();
        for (name, rx, event) in [("c", &mut rc, "from-b"), ("b", &mut rb, "from-c")] {
            // Each node's socket gets its own node's broadcast and the other's, in any order.
            let mut got = Vec::new();
            for _ in 0..2 {
                let packet = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("round {round}: node {name} missed a broadcast: got {got:?}")
                    })
                    .unwrap();
                got.push(String::from(packet));
            }
            let want = format!(r#"42["{event}",{round}]"#);
            assert!(
                got.contains(&want),
                "round {round}: node {name} got {got:?}, not {want}"
            );
        }
        for n in [&ca, &cb, &cc] {
            n.shutdown().await;
        }
    }
}
