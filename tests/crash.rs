//! A node killed with SIGKILL is found gone by the kernel's answer: its port answers the
//! next datagram with ICMP port unreachable, and a request returns at once instead of
//! waiting for the peer timeout (10 s here). A node that hangs (SIGSTOP) keeps its socket
//! open, so nothing answers for it: it is still waited for. A node restarted on the same
//! ports joins again as usual.
//!
//! The two peers are `cluster_node` processes; the node asking is in this process, its log
//! captured so that the test can tell how the crash was noticed.
//!
//! Linux only: other systems do not report ICMP errors on an unconnected UDP socket. Run it
//! with `cargo test --all-features --test crash -- --nocapture` for the figures.
#![cfg(all(feature = "cluster-gossip", target_os = "linux"))]

mod common;
#[path = "common/external.rs"]
mod external;
#[path = "common/logs.rs"]
mod logs;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::*;
use external::{Spawned, free_udp_port, signal_group, start_cluster_node, wait_stopped};
use socketioxide::extract::SocketRef;

/// Far longer than a request needs: returning before it is no accident.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer still, so that only the peer timeout could end a request early.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A `cluster_node` process of the cluster `id`, seeded with `seed`, on fixed ports.
struct Peer {
    name: &'static str,
    gossip: SocketAddr,
    mesh: SocketAddr,
}

impl Peer {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            gossip: free_udp_port(),
            mesh: free_udp_port(),
        }
    }

    fn start(&self, id: &str, seed: SocketAddr) -> Spawned {
        let log = std::env::temp_dir().join(format!("crash-{}-{}.log", self.name, id));
        let env = [
            ("RUST_LOG", "info".to_string()),
            ("SOCKETIO_CLUSTER_ID", id.to_string()),
            ("SOCKETIO_CLUSTER_NODE_NAME", self.name.to_string()),
            ("SOCKETIO_CLUSTER_GOSSIP_ADDR", self.gossip.to_string()),
            ("SOCKETIO_CLUSTER_MESH_ADDR", self.mesh.to_string()),
            ("SOCKETIO_CLUSTER_SEEDS", seed.to_string()),
            ("SOCKETIO_CLUSTER_SECRET", SECRET.to_string()),
            ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "50".to_string()),
            (
                "SOCKETIO_CLUSTER_PEER_TIMEOUT_MS",
                PEER_TIMEOUT.as_millis().to_string(),
            ),
            (
                "SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS",
                REQUEST_TIMEOUT.as_millis().to_string(),
            ),
        ];
        start_cluster_node(&env, &log).0
    }
}

/// Whether `node` has every name of `names` as a member hosting `/`, and no other.
fn members_are(node: &TestNode, names: &[&str]) -> bool {
    let members = node.cluster().members();
    members.len() == names.len()
        && names.iter().all(|n| {
            members
                .iter()
                .any(|m| m.node_name == *n && m.hosts("/") && m.server_id.is_some())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_dropped_on_the_kernels_answer_and_a_hung_one_is_waited_for() {
    logs::capture();
    let id = cluster_id();
    let a = start_gossip(
        config(&id, None)
            .with_node_name("asker")
            .with_peer_timeout(PEER_TIMEOUT)
            .with_request_timeout(REQUEST_TIMEOUT),
    )
    .await;
    a.io.ns("/", async |_: SocketRef<Adapter>| {})
        .await
        .unwrap();
    let seed = a.cluster().gossip_addr();
    let (victim, sleeper) = (Peer::new("victim"), Peer::new("sleeper"));
    let mut victim_proc = victim.start(&id, seed);
    let sleeper_proc = sleeper.start(&id, seed);
    assert!(
        wait_until(FORMS, || members_are(&a, &["sleeper", "victim"])).await,
        "cluster formed: {:?}",
        a.cluster().members()
    );
    a.io.fetch_sockets().await.unwrap();
    let unreachable = || logs::lines_with("closing mesh connection: port unreachable");

    // A hung node sends no ICMP: the request waits for it, and gets its answer once it
    // runs again.
    signal_group(&sleeper_proc.0, "STOP");
    assert!(wait_stopped(&sleeper_proc.0), "the sleeper is stopped");
    let fetch = tokio::spawn({
        let io = a.io.clone();
        async move { io.fetch_sockets().await.map(|s| s.len()) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !fetch.is_finished(),
        "fetch_sockets waits for the hung node"
    );
    assert!(unreachable().is_empty(), "{:?}", unreachable());
    signal_group(&sleeper_proc.0, "CONT");
    within(REQUEST_TIMEOUT, fetch)
        .await
        .expect("fetch_sockets ends once the hung node runs again")
        .unwrap()
        .unwrap();
    assert!(members_are(&a, &["sleeper", "victim"]), "nobody dropped");

    // SIGKILL: the next datagram to the victim's port is answered port unreachable.
    signal_group(&victim_proc.0, "KILL");
    assert!(
        external::wait_bounded(&mut victim_proc.0, Duration::from_secs(10)).is_some(),
        "the victim is dead"
    );
    let started = Instant::now();
    a.io.fetch_sockets().await.unwrap();
    let took = started.elapsed();
    println!(
        "fetch_sockets right after SIGKILL of a peer took {took:?} (peer timeout \
         {PEER_TIMEOUT:?})"
    );
    assert!(
        took < PEER_TIMEOUT / 2,
        "fetch_sockets returned well before the peer timeout: {took:?}"
    );
    let noticed = unreachable();
    assert!(
        noticed.iter().any(|l| l.contains("victim#")),
        "the victim's connections were closed on the kernel's answer: {noticed:?}"
    );
    assert!(
        noticed.iter().all(|l| !l.contains("sleeper#")),
        "{noticed:?}"
    );
    assert!(
        wait_until(SETTLES, || members_are(&a, &["sleeper"])).await,
        "the victim is no longer a member: {:?}",
        a.cluster().members()
    );

    // Restarted on the same ports, it is a new node and joins as usual.
    let _victim_again = victim.start(&id, seed);
    assert!(
        wait_until(FORMS, || members_are(&a, &["sleeper", "victim"])).await,
        "the restarted victim joined: {:?}",
        a.cluster().members()
    );
    let started = Instant::now();
    a.io.fetch_sockets().await.unwrap();
    assert!(started.elapsed() < PEER_TIMEOUT / 2);
    drop(sleeper_proc);
}
