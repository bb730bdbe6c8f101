//! A message larger than the cluster's maximum frame size is refused to the caller instead
//! of breaking the link to every peer.
#![cfg(feature = "cluster-gossip")]

use std::time::Duration;

use socketioxide::{SocketIo, adapter::Emitter, extract::SocketRef};
use socketioxide_cluster::{GossipAdapter, GossipAdapterConfig, GossipAdapterCtr};

type A = GossipAdapter<Emitter>;

const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

async fn node(
    id: &str,
    seed: Option<std::net::SocketAddr>,
) -> (SocketIo<A>, socketioxide_cluster::Cluster) {
    let mut c = GossipAdapterConfig::new()
        .with_cluster_id(id)
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_gossip_interval(Duration::from_millis(50))
        .with_max_frame_size(1024)
        .with_secret(SECRET);
    if let Some(seed) = seed {
        c = c.with_seeds([seed.to_string()]);
    }
    let ctr = GossipAdapterCtr::new(c).await.unwrap();
    let cluster = ctr.cluster();
    let (_svc, io) = SocketIo::builder().with_adapter::<A>(ctr).build_svc();
    io.ns("/", async |_: SocketRef<A>| {}).await.unwrap();
    (io, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_and_the_link_survives() {
    let id = format!("limits-{}", std::process::id());
    let (a, ca) = node(&id, None).await;
    let (b, cb) = node(&id, Some(ca.gossip_addr())).await;
    // Formed, and each node knows the other hosts `/`: the refusal below is the frame
    // size's doing, not an empty cluster's.
    let mut formed = false;
    for _ in 0..1000 {
        let sees = |c: &socketioxide_cluster::Cluster| {
            let m = c.members();
            m.len() == 1 && m[0].hosts("/") && m[0].server_id.is_some()
        };
        if sees(&ca) && sees(&cb) {
            formed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        formed,
        "the cluster formed: {:?} {:?}",
        ca.members(),
        cb.members()
    );
    let (_tb, mut rb) = b.new_dummy_sock("/", ()).await;
    tokio::time::timeout(Duration::from_secs(5), rb.recv())
        .await
        .unwrap();

    let big = "x".repeat(4096);
    let err = a.emit("big", &big).await.unwrap_err();
    assert!(err.to_string().contains("maximum frame size"), "{err}");

    a.emit("small", &1).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rb.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from(got),
        r#"42["small",1]"#,
        "the link to b still works"
    );
}
