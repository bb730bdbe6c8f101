//! Clusters are kept apart by their cluster id: two clusters whose nodes share a gossip
//! seed, or one Redis server, never see each other's nodes, sockets or broadcasts.
mod common;

use common::*;

/// Nodes `x` of one cluster and `y` of another, each hosting `/` with one client per node:
/// the requests of each cluster see only its own sockets, and a broadcast in each reaches
/// only its own clients.
async fn clusters_stay_apart(x: [&TestNode; 2], y: [&TestNode; 2]) {
    let mut xc = one_per_node(x, "/").await;
    let mut yc = one_per_node(y, "/").await;
    let ids = |cs: &[Client; 2]| sorted(cs.iter().map(|c| c.2));
    for (nodes, clients, other) in [(x, &xc, &yc), (y, &yc, &xc)] {
        for n in nodes {
            let fetched = within(SETTLES, n.io.fetch_sockets())
                .await
                .expect("fetch_sockets completes")
                .unwrap();
            assert_eq!(sorted(fetched.iter().map(|s| s.data().id)), ids(clients));
            assert!(
                fetched
                    .iter()
                    .all(|s| !ids(other).contains(&s.data().id.to_string()))
            );
        }
    }
    x[0].io.emit("m", "x").await.unwrap();
    y[0].io.emit("m", "y").await.unwrap();
    for (_, rx, _) in &mut xc {
        assert_eq!(recv(rx, ARRIVES).await, r#"42["m","x"]"#);
    }
    for (_, rx, _) in &mut yc {
        assert_eq!(recv(rx, ARRIVES).await, r#"42["m","y"]"#);
    }
    // Markers from the nodes of each cluster to its own clients: nothing else came (the
    // other cluster's nodes, never members, have no link to send on).
    nothing_arrives(&x, xc.iter_mut().map(|(_, rx, sid)| (rx, *sid))).await;
    nothing_arrives(&y, yc.iter_mut().map(|(_, rx, sid)| (rx, *sid))).await;
}

/// Two clusters on one `redis-server`, each with its own id (its channel prefix).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_on_one_redis_stay_apart() {
    let Some(backend) = Backend::redis() else {
        return;
    };
    let [x1, x2] = spawn_root_cluster::<2>(&backend).await;
    let [y1, y2] = spawn_root_cluster::<2>(&backend).await;
    assert_eq!(x1.hosting("/").await, 2, "x counts its own two nodes only");
    assert_eq!(y1.hosting("/").await, 2, "y counts its own two nodes only");
    clusters_stay_apart([&x1, &x2], [&y1, &y2]).await;
}

/// Two clusters whose nodes all list the same seed, a node of the first cluster.
#[cfg(feature = "cluster-gossip")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_sharing_a_seed_stay_apart() {
    init_tracing();
    let (x_id, y_id) = (cluster_id(), cluster_id());
    let start = async |config: socketioxide_cluster::GossipAdapterConfig| {
        let node = start_gossip(config).await;
        node.io
            .ns("/", async |_: socketioxide::extract::SocketRef<Adapter>| {})
            .await
            .unwrap();
        node
    };
    let x1 = start(config(&x_id, None)).await;
    let seed = x1.cluster().gossip_addr();
    let x2 = start(config(&x_id, Some(seed))).await;
    let y1 = start(config(&y_id, Some(seed))).await;
    // The second node of y finds the first through their own seed, next to the shared one.
    let y_seed = y1.cluster().gossip_addr().to_string();
    let y2 = start(config(&y_id, Some(seed)).with_seeds([seed.to_string(), y_seed])).await;
    wait_for_namespace(&[&x1, &x2], "/").await;
    wait_for_namespace(&[&y1, &y2], "/").await;
    let names = |n: &TestNode| sorted(n.cluster().members().iter().map(|m| m.node_name.clone()));
    let name = |n: &TestNode| vec![n.cluster().node_name().to_string()];
    assert_eq!(names(&x1), name(&x2));
    assert_eq!(names(&x2), name(&x1));
    assert_eq!(names(&y1), name(&y2));
    assert_eq!(names(&y2), name(&y1));
    clusters_stay_apart([&x1, &x2], [&y1, &y2]).await;
    // Still apart after many gossip rounds through the shared seed.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for n in [&x1, &x2, &y1, &y2] {
        assert_eq!(
            n.cluster().members().len(),
            1,
            "{:?}",
            n.cluster().members()
        );
    }
}
