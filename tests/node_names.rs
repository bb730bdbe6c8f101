//! Node names are unique among live nodes. A node started with the name of a live one is
//! taken for its restart (a newer generation): it replaces the older one on every node, and
//! the older one leaves the cluster, says why in an error log line and in
//! `Cluster::failure()`, instead of lingering half-connected.
#![cfg(feature = "cluster-gossip")]
mod common;

use common::*;
use socketioxide::extract::SocketRef;

/// The names and generations of the members `node` sees.
fn seen(node: &TestNode) -> Vec<(String, u64)> {
    node.cluster()
        .members()
        .into_iter()
        .map(|m| (m.node_name, m.generation))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_the_same_name_replaces_the_first() {
    init_tracing();
    let id = cluster_id();
    let first = start_gossip(config(&id, None).with_node_name("twin")).await;
    let seed = first.cluster().gossip_addr();
    let other = start_gossip(config(&id, Some(seed)).with_node_name("other")).await;
    wait_formed(&[&first, &other]).await;
    let first_generation = seen(&other)[0].1;

    let second = start_gossip(config(&id, Some(seed)).with_node_name("twin")).await;
    let second_generation = seen(&other)
        .iter()
        .map(|(_, g)| *g)
        .find(|g| *g != first_generation);

    // The first twin finds out and steps out of the cluster.
    let stepped_out = wait_until(FORMS, || first.cluster().failure().is_some()).await;
    let views = || {
        format!(
            "first sees {:?}, second {:?}, other {:?}; first ready: {}, failure: {:?}",
            seen(&first),
            seen(&second),
            seen(&other),
            first.cluster().ready(),
            first.cluster().failure()
        )
    };
    assert!(
        stepped_out,
        "the first twin reports no failure: {}",
        views()
    );
    let failure = first.cluster().failure().unwrap_or_default();
    assert!(
        failure.contains("twin") && failure.contains("same name"),
        "the failure names the newer node and why: {failure}"
    );
    assert!(!first.cluster().ready(), "{}", views());

    // The views of the others agree: `other` and the second twin see each other only.
    let agreed = wait_until(SETTLES, || {
        let others = seen(&other);
        others.len() == 1
            && Some(others[0].1) == second_generation
            && seen(&second).iter().map(|(n, _)| n.as_str()).eq(["other"])
    })
    .await;
    assert!(agreed, "{}", views());

    // And the cluster of the two works: a broadcast from `other` reaches the second twin's
    // client, and a request from `other` counts the second twin's socket, not the first's.
    ns_everywhere(&[&second, &other], "/", async |_: SocketRef<Adapter>| {}).await;
    first
        .io
        .ns("/", async |_: SocketRef<Adapter>| {})
        .await
        .unwrap();
    let [_on_first, mut on_second] = one_per_node([&first, &second], "/").await;
    other.io.emit("m", "hello").await.unwrap();
    assert_eq!(recv(&mut on_second.1, ARRIVES).await, r#"42["m","hello"]"#);
    let fetched = within(SETTLES, other.io.fetch_sockets())
        .await
        .expect("fetch_sockets completes")
        .unwrap();
    assert_eq!(
        sorted(fetched.iter().map(|s| s.data().id)),
        sorted([on_second.2])
    );
}
