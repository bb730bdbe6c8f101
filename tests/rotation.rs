//! The secret rotation the README documents, between live nodes: three nodes on `[old]`
//! are restarted one at a time to `[old, new]`, then `[new, old]`, then `[new]`. After
//! every single restart the nodes form one cluster and a broadcast from each node reaches
//! a client on every node.
//!
//! Gossip only: the keyring authenticates the mesh.
#![cfg(feature = "cluster-gossip")]

mod common;

use common::*;
use socketioxide::extract::SocketRef;

const OLD: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";
const NEW: &str = "2c4e6a8b0d1f3a5c7e9b1d3f5a7c9e0b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a13";

/// A node of the test and the client connected to it.
struct Member {
    node: TestNode,
    client: Client,
}

async fn start(id: &str, seed: Option<std::net::SocketAddr>, secrets: &[&str]) -> Member {
    let node = start_gossip(config(id, seed).with_secrets(secrets.iter().copied())).await;
    node.io
        .ns("/", async |_: SocketRef<Adapter>| {})
        .await
        .expect("namespace");
    let client = dummy(&node.io, "/").await;
    Member { node, client }
}

/// Every node counts the others as members (verified over the mesh) hosting `/`, then a
/// broadcast from each node reaches the client of every node.
async fn traffic_flows(members: &mut [Member], step: &str) {
    eprintln!("rotation: {step}");
    let nodes: Vec<&TestNode> = members.iter().map(|m| &m.node).collect();
    wait_for_namespace(&nodes, "/").await;
    for i in 0..members.len() {
        let tag = format!("{step}, from node {i}");
        members[i].node.io.emit("step", &tag).await.unwrap();
        for (j, m) in members.iter_mut().enumerate() {
            let got = recv(&mut m.client.1, ARRIVES).await;
            assert_eq!(got, format!(r#"42["step","{tag}"]"#), "client of node {j}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_in_three_rolling_steps_keeps_the_cluster_whole() {
    init_tracing();
    let id = cluster_id();
    let mut members = Vec::new();
    for _ in 0..3 {
        let seed = members
            .first()
            .map(|m: &Member| m.node.cluster().gossip_addr());
        members.push(start(&id, seed, &[OLD]).await);
    }
    traffic_flows(&mut members, "[old] everywhere").await;

    let steps: [(&str, &[&str]); 3] = [
        ("[old, new]", &[OLD, NEW]),
        ("[new, old]", &[NEW, OLD]),
        ("[new]", &[NEW]),
    ];
    for (name, keyring) in steps {
        // A rolling deploy: one node at a time leaves and comes back with the new keyring,
        // seeded by a node that stays.
        for i in 0..members.len() {
            let seed = members[(i + 1) % members.len()]
                .node
                .cluster()
                .gossip_addr();
            members[i].node.cluster().shutdown().await;
            members[i] = start(&id, Some(seed), keyring).await;
            let step = format!("step {name}, node {i} restarted");
            traffic_flows(&mut members, &step).await;
        }
    }
    for m in &members {
        m.node.cluster().shutdown().await;
    }
}
