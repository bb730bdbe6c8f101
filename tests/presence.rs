//! Cluster-wide presence on real nodes (127.0.0.1): entries tracked on each node are listed
//! on every node, several metas per key; a socket that disconnects is a leave everywhere; a
//! node that joins late gets the whole state; a node killed with SIGKILL loses its entries
//! everywhere once it is found dead (that node is a `cluster_node` process). Each scenario
//! runs on both backends: gossip, and Redis (a `redis-server` of the test's own), and the
//! Redis ones in a build without gossip too.

mod common;
#[cfg(all(target_os = "linux", feature = "cluster-gossip"))]
#[path = "common/external.rs"]
mod external;

use std::{collections::BTreeMap, pin::Pin};

use common::*;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use socketioxide_cluster::presence::{Presence, PresenceConfig, PresenceDiff};

#[cfg(feature = "cluster-gossip")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_entries_are_listed_everywhere_and_a_disconnect_is_a_leave_everywhere() {
    entries_are_listed_everywhere_and_a_disconnect_is_a_leave_everywhere(Backend::Gossip).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_entries_are_listed_everywhere_and_a_disconnect_is_a_leave_everywhere() {
    let Some(backend) = Backend::redis() else {
        return;
    };
    entries_are_listed_everywhere_and_a_disconnect_is_a_leave_everywhere(backend).await;
}

#[cfg(all(target_os = "linux", feature = "cluster-gossip"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_a_killed_node_loses_its_entries_everywhere() {
    a_killed_node_loses_its_entries_everywhere(Backend::Gossip).await;
}

// The killed node is a `cluster_node` process, an example that needs the gossip feature.
#[cfg(all(target_os = "linux", feature = "redis", feature = "cluster-gossip"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_killed_node_loses_its_entries_everywhere() {
    let Some(backend) = Backend::redis() else {
        return;
    };
    a_killed_node_loses_its_entries_everywhere(backend).await;
}

#[cfg(feature = "cluster-gossip")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_one_socket_cannot_take_more_than_its_share() {
    one_socket_cannot_take_more_than_its_share(Backend::Gossip).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_socket_cannot_take_more_than_its_share() {
    let Some(backend) = Backend::redis() else {
        return;
    };
    one_socket_cannot_take_more_than_its_share(backend).await;
}

type Diffs = Pin<Box<dyn Stream<Item = PresenceDiff> + Send>>;

/// A node of the test cluster with its presence, serving `/`.
async fn start(cluster: &mut TestCluster) -> (TestNode, Presence) {
    let (node, presence) = cluster.start_with_presence(PresenceConfig::default()).await;
    node.io
        .ns("/", async |_: SocketRef<Adapter>| {})
        .await
        .unwrap();
    (node, presence)
}

/// `topic` as listed by `p`: key to the sorted `(node, meta)` pairs.
fn listed(p: &Presence, topic: &str) -> BTreeMap<String, Vec<(String, Value)>> {
    p.list(topic)
        .into_iter()
        .map(|(key, metas)| {
            let mut metas: Vec<_> = metas.into_iter().map(|m| (m.node, m.meta)).collect();
            metas.sort_by_key(|(n, m)| (n.clone(), m.to_string()));
            (key, metas)
        })
        .collect()
}

/// Wait until every one of `presences` lists `want` in `lobby`; panics with `what` and what
/// each lists after `SETTLES`.
async fn listed_everywhere(
    presences: &[&Presence],
    want: &BTreeMap<String, Vec<(String, Value)>>,
    what: &str,
) {
    let all = || presences.iter().all(|p| listed(p, "lobby") == *want);
    if !wait_until(SETTLES, all).await {
        let seen: Vec<_> = presences.iter().map(|p| listed(p, "lobby")).collect();
        panic!("{what}: want {want:?} everywhere, listed {seen:?}");
    }
}

fn node_name(node: &TestNode) -> String {
    node.node_name()
}

/// Read `diffs` until one has a leave of `key` (at most `SETTLES`).
async fn leave_of(diffs: &mut Diffs, key: &str) -> bool {
    within(SETTLES, async {
        while let Some(d) = diffs.next().await {
            if d.leaves.contains_key(key) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

async fn entries_are_listed_everywhere_and_a_disconnect_is_a_leave_everywhere(backend: Backend) {
    let mut cluster = TestCluster::new(&backend);
    let (a, pa) = start(&mut cluster).await;
    let (b, pb) = start(&mut cluster).await;
    let (c, pc) = start(&mut cluster).await;
    wait_for_namespace(&[&a, &b, &c], "/").await;
    let presences = [&pa, &pb, &pc];
    let mut subs: Vec<Diffs> = presences
        .iter()
        .map(|p| Box::pin(p.subscribe("lobby")) as Diffs)
        .collect();

    // One user on a phone (node a) and a laptop (node b), another on a tablet (node c).
    let mut sockets = Vec::new();
    for (node, p, key, device) in [
        (&a, &pa, "ada", "phone"),
        (&b, &pb, "ada", "laptop"),
        (&c, &pc, "bob", "tablet"),
    ] {
        let (_tx, _rx, sid) = dummy(&node.io, "/").await;
        let socket = node.io.get_socket(sid).expect("socket on its node");
        p.track(&socket, "lobby", key, &json!({ "device": device }))
            .unwrap();
        sockets.push((socket, _tx, _rx));
    }
    let mut want = BTreeMap::new();
    let mut ada = vec![
        (node_name(&a), json!({ "device": "phone" })),
        (node_name(&b), json!({ "device": "laptop" })),
    ];
    ada.sort_by_key(|(n, m)| (n.clone(), m.to_string()));
    want.insert("ada".to_string(), ada);
    want.insert(
        "bob".to_string(),
        vec![(node_name(&c), json!({ "device": "tablet" }))],
    );
    listed_everywhere(&presences, &want, "listed everywhere").await;
    assert!(pa.list("elsewhere").is_empty());

    // Bob's socket disconnects: a leave on every node.
    sockets[2].0.clone().disconnect().unwrap();
    for (i, sub) in subs.iter_mut().enumerate() {
        assert!(leave_of(sub, "bob").await, "node {i} saw bob leave");
    }
    want.remove("bob");
    listed_everywhere(&presences, &want, "bob gone everywhere").await;

    // Untracking the phone leaves the laptop.
    pa.untrack(&sockets[0].0, "lobby", "ada");
    want.insert(
        "ada".to_string(),
        vec![(node_name(&b), json!({ "device": "laptop" }))],
    );
    listed_everywhere(&presences, &want, "the phone untracked everywhere").await;

    // A node that joins late gets the whole state.
    let (d, pd) = start(&mut cluster).await;
    wait_for_namespace(&[&a, &b, &c, &d], "/").await;
    assert!(
        wait_until(SETTLES, || listed(&pd, "lobby") == want).await,
        "the late joiner has the state: {:?}",
        listed(&pd, "lobby")
    );
    assert_eq!(pa.dropped() + pb.dropped() + pc.dropped() + pd.dropped(), 0);
}

/// The node's process is killed: the others find it dead.
#[cfg(all(target_os = "linux", feature = "cluster-gossip"))]
async fn a_killed_node_loses_its_entries_everywhere(backend: Backend) {
    let mut cluster = TestCluster::new(&backend);
    let (a, pa) = start(&mut cluster).await;
    let (b, pb) = start(&mut cluster).await;
    let id = cluster.id().to_string();
    let mut env = vec![
        ("RUST_LOG", "info".to_string()),
        ("SOCKETIO_CLUSTER_ID", id.clone()),
        ("SOCKETIO_CLUSTER_NODE_NAME", "victim".to_string()),
    ];
    match &backend {
        #[cfg(feature = "redis")]
        Backend::Redis(server) => env.push(("SOCKETIO_CLUSTER_BACKEND", server.url())),
        #[allow(unreachable_patterns)]
        _ => env.extend([
            (
                "SOCKETIO_CLUSTER_GOSSIP_ADDR",
                external::free_udp_port().to_string(),
            ),
            (
                "SOCKETIO_CLUSTER_MESH_ADDR",
                external::free_udp_port().to_string(),
            ),
            (
                "SOCKETIO_CLUSTER_SEEDS",
                a.cluster().gossip_addr().to_string(),
            ),
            ("SOCKETIO_CLUSTER_SECRET", SECRET.to_string()),
            ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "50".to_string()),
            ("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS", "1000".to_string()),
        ]),
    }
    let log = std::env::temp_dir().join(format!("presence-victim-{id}.log"));
    let (mut victim, addr) = external::start_cluster_node(&env, &log);
    if backend.name() == "gossip" {
        assert!(
            wait_until(FORMS, || [&a, &b].iter().all(|n| n
                .cluster()
                .members()
                .len()
                == 2))
            .await,
            "cluster formed"
        );
    }

    // The victim tracks two sockets of one key; a and b track one each.
    let mut clients = Vec::new();
    for device in ["phone", "laptop"] {
        let (tx, mut rx, _) = polling_client(addr, "/").await;
        let ev = json!(["presence_track", { "topic": "lobby", "key": "vic", "meta": { "device": device } }]);
        client_emit(&tx, "/", &format!("1{ev}")).await;
        // The ack, after the `presence_state` event the server sends on tracking.
        let mut ack = String::new();
        for _ in 0..3 {
            ack = recv(&mut rx, ARRIVES).await;
            if ack.starts_with("431") {
                break;
            }
        }
        assert!(ack.contains(r#""ok":true"#), "{ack}");
        clients.push((tx, rx));
    }
    for (node, p, key) in [(&a, &pa, "ann"), (&b, &pb, "ben")] {
        let (_tx, _rx, sid) = dummy(&node.io, "/").await;
        let socket = node.io.get_socket(sid).expect("socket");
        p.track(&socket, "lobby", key, &json!({})).unwrap();
        clients.push((_tx, _rx));
    }
    let keys = |p: &Presence| -> Vec<(String, usize)> {
        p.list("lobby")
            .into_iter()
            .map(|(k, m)| (k, m.len()))
            .collect()
    };
    let all = vec![
        ("ann".to_string(), 1),
        ("ben".to_string(), 1),
        ("vic".to_string(), 2),
    ];
    assert!(
        wait_until(SETTLES, || keys(&pa) == all && keys(&pb) == all).await,
        "{:?} {:?}",
        keys(&pa),
        keys(&pb)
    );
    let mut sub: Diffs = Box::pin(pa.subscribe("lobby"));

    external::signal_group(&victim.0, "KILL");
    assert!(
        external::wait_bounded(&mut victim.0, std::time::Duration::from_secs(10)).is_some(),
        "the victim is dead"
    );
    assert!(
        leave_of(&mut sub, "vic").await,
        "a leave of the victim's key"
    );
    let rest = vec![("ann".to_string(), 1), ("ben".to_string(), 1)];
    assert!(
        wait_until(SETTLES, || keys(&pa) == rest && keys(&pb) == rest).await,
        "the victim's entries gone everywhere: {:?} {:?}",
        keys(&pa),
        keys(&pb)
    );
}

/// Figures, not a check: the time from `track` on one node to the join diff on another
/// (median and p99 over 500 tracks). Run alone:
/// `cargo test --all-features --test presence track_to_diff_latency -- --ignored --nocapture`.
#[cfg(feature = "cluster-gossip")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures"]
async fn track_to_diff_latency() {
    let mut cluster = TestCluster::new(&Backend::Gossip);
    let (a, pa) = start(&mut cluster).await;
    let (b, pb) = start(&mut cluster).await;
    wait_for_namespace(&[&a, &b], "/").await;
    let mut sub: Diffs = Box::pin(pb.subscribe("lobby"));
    let (_tx, _rx, sid) = dummy(&a.io, "/").await;
    let socket = a.io.get_socket(sid).unwrap();
    let mut took = Vec::new();
    for i in 0..500 {
        let key = format!("user-{i}");
        let started = std::time::Instant::now();
        pa.track(&socket, "lobby", &key, &json!({ "device": "phone" }))
            .unwrap();
        let seen = within(SETTLES, async {
            while let Some(d) = sub.next().await {
                if d.joins.contains_key(&key) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(seen, Some(true), "{key} arrived");
        took.push(started.elapsed());
    }
    took.sort();
    println!(
        "track -> diff on another node, {} tracks: median {:?}, p99 {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
}

/// A client whose socket the application tracks in topic after topic (say, one it names):
/// that socket is refused beyond its share of the node's entries (100 by default), with a
/// clear error, and the node's other sockets still track, listed on every node. The node's
/// bound is lowered to 300 here so that, without a share, one socket would fill it.
async fn one_socket_cannot_take_more_than_its_share(backend: Backend) {
    let mut cluster = TestCluster::new(&backend);
    let config = PresenceConfig::default().with_max_per_node(300);
    let (a, pa) = cluster.start_with_presence(config.clone()).await;
    let (b, pb) = cluster.start_with_presence(config).await;
    for n in [&a, &b] {
        n.io.ns("/", async |_: SocketRef<Adapter>| {})
            .await
            .unwrap();
    }
    wait_for_namespace(&[&a, &b], "/").await;
    let (_gtx, _grx, greedy) = dummy(&a.io, "/").await;
    let greedy = a.io.get_socket(greedy).expect("socket on its node");
    let mut refused = None;
    for i in 0..300 {
        if let Err(e) = pa.track(&greedy, &format!("topic-{i}"), "greedy", &json!({})) {
            refused = Some((i, e.to_string()));
            break;
        }
    }
    let (at, err) = refused.expect("the greedy socket is refused before the node is full");
    assert_eq!(at, 100, "refused at its share: {err}");
    assert!(err.contains("socket"), "{err}");

    let mut others = Vec::new();
    for i in 0..3 {
        let (tx, rx, sid) = dummy(&a.io, "/").await;
        let socket = a.io.get_socket(sid).expect("socket on its node");
        pa.track(&socket, "lobby", &format!("user-{i}"), &json!({ "i": i }))
            .expect("another socket still tracks");
        others.push((socket, tx, rx));
    }
    let listed_on_b = wait_until(SETTLES, || pb.list("lobby").len() == 3).await;
    assert!(listed_on_b, "listed on b: {:?}", pb.list("lobby"));
    assert_eq!(
        pb.len(),
        103,
        "the greedy socket's share and the others, on b"
    );
}
