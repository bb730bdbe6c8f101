//! An attacker on the nodes' network, without the secret, sends genuine chitchat (V0)
//! datagrams to the gossip ports of three real nodes on 127.0.0.1: the attacker is a real
//! chitchat node speaking plain UDP, given the state each attack needs. Against a cluster
//! with a secret none of it is read, none of it is answered, and nothing changes. Each attack
//! is also run against a cluster in `insecure_no_auth` mode (plain gossip), to show that the
//! bytes are real: there the attack reaches chitchat.
#![cfg(feature = "cluster-gossip")]

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, DeletionStatus, FailureDetectorConfig,
    ProtocolVersion, VersionedValue, spawn_chitchat, transport::UdpTransport,
};
use socketioxide_cluster::{Cluster, GossipAdapterConfig, GossipAdapterCtr, GossipStats};

const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";
const GOSSIP: Duration = Duration::from_millis(50);

fn cluster_id(test: &str) -> String {
    format!("attack-{test}-{}", std::process::id())
}

async fn node(id: &str, name: &str, seed: Option<SocketAddr>, sealed: bool) -> Cluster {
    node_at(id, name, seed, sealed, |c| c).await
}

/// A node whose configuration `adjust` changes first.
async fn node_at(
    id: &str,
    name: &str,
    seed: Option<SocketAddr>,
    sealed: bool,
    adjust: impl FnOnce(GossipAdapterConfig) -> GossipAdapterConfig,
) -> Cluster {
    let mut c = GossipAdapterConfig::new()
        .with_cluster_id(id)
        .with_node_name(name)
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_gossip_interval(GOSSIP)
        .with_peer_timeout(Duration::from_secs(2));
    c = if sealed {
        c.with_secret(SECRET)
    } else {
        c.insecure_no_auth()
    };
    if let Some(seed) = seed {
        c = c.with_seeds([seed.to_string()]);
    }
    GossipAdapterCtr::new(adjust(c)).await.unwrap().cluster()
}

/// Three nodes that all see each other.
async fn three(id: &str, sealed: bool) -> [Cluster; 3] {
    let a = node(id, "node-a", None, sealed).await;
    let b = node(id, "node-b", Some(a.gossip_addr()), sealed).await;
    let c = node(id, "node-c", Some(a.gossip_addr()), sealed).await;
    let nodes = [a, b, c];
    assert!(
        wait_until(Duration::from_secs(10), || formed(&nodes)).await,
        "the cluster formed"
    );
    nodes
}

fn formed(nodes: &[Cluster]) -> bool {
    nodes.iter().all(|n| n.members().len() == nodes.len() - 1)
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Holds `cond` for all of `period`; false as soon as it fails.
async fn holds_for(period: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < period {
        if !cond() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A genuine chitchat node that gossips in clear with `victims`, named `name`, publishing
/// `keys` about itself; `forge` may add state about other nodes before it starts talking.
async fn attacker(
    cluster_id: &str,
    name: String,
    victims: &[&Cluster],
    keys: Vec<(String, String)>,
) -> ChitchatHandle {
    let addr = free_udp_addr();
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(name, 1, addr),
        cluster_id: cluster_id.to_string(),
        gossip_interval: GOSSIP,
        listen_addr: addr,
        seed_nodes: victims
            .iter()
            .map(|v| v.gossip_addr().to_string())
            .collect(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V0,
    };
    spawn_chitchat(config, keys, &UdpTransport).await.unwrap()
}

/// Make the attacker hold (and so gossip) state about `victim`, at a version far ahead of
/// the victim's own: `leaving` set, and its mesh address moved to `mesh`. The attacker
/// learns the victim's generation from gossip in a real attack; here `witness`, another
/// node, tells it.
async fn forge_leaving(
    attacker: &ChitchatHandle,
    victim: &Cluster,
    witness: &Cluster,
    mesh: SocketAddr,
) {
    let generation = witness
        .members()
        .into_iter()
        .find(|m| m.node_name == victim.node_name())
        .expect("the witness sees the victim")
        .generation;
    let version = 1_000_000;
    let kv = |k: &str, v: String, version| {
        (
            k.to_string(),
            VersionedValue {
                value: v,
                version,
                status: DeletionStatus::Set,
            },
        )
    };
    let id = ChitchatId::new(
        victim.node_name().to_string(),
        generation,
        victim.gossip_addr(),
    );
    attacker
        .with_chitchat(|c| {
            c.reset_node_state_if_update(
                &id,
                [
                    kv("mesh", mesh.to_string(), version - 1),
                    kv("leaving", "1".into(), version),
                ]
                .into_iter(),
                version,
                0,
            );
        })
        .await;
}

/// Whether the attacker heard anything back: nodes other than itself in its state.
async fn attacker_heard_back(attacker: &ChitchatHandle, victims: &[&Cluster]) -> bool {
    let names: Vec<String> = victims.iter().map(|v| v.node_name().to_string()).collect();
    attacker
        .with_chitchat(|c| {
            c.node_states().iter().any(|(id, state)| {
                // Forged states carry no heartbeat; real ones do.
                names.iter().any(|n| **n == *id.node_id) && u64::from(state.heartbeat()) > 0
            })
        })
        .await
}

fn stats(nodes: &[Cluster]) -> Vec<GossipStats> {
    nodes.iter().map(Cluster::gossip_stats).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_that_stops_gossip_in_clear_is_refused_unread_when_sealed() {
    let id = cluster_id("bloat");
    let nodes = three(&id, true).await;
    // A made-up node whose 65,400-byte name pushes a victim's own gossip state past the
    // datagram limit: chitchat asserts on it and its task dies.
    let attack = attacker(&id, "x".repeat(65_400), &[&nodes[0]], vec![]).await;
    let calm = holds_for(Duration::from_secs(3), || {
        formed(&nodes) && nodes.iter().all(|n| n.failure().is_none())
    })
    .await;
    assert!(calm, "members stay, gossip runs: {:?}", stats(&nodes));
    assert!(nodes[0].gossip_stats().refused > 0, "counted");
    assert!(
        !attacker_heard_back(&attack, &[&nodes[0]]).await,
        "no answer at all"
    );
    attack.abort();

    // The same bytes against plain gossip reach chitchat: its task dies; the node says so
    // and leaves instead of running on with a frozen view.
    let plain_id = cluster_id("bloat-plain");
    let plain = three(&plain_id, false).await;
    let attack = attacker(&plain_id, "x".repeat(65_400), &[&plain[0]], vec![]).await;
    assert!(
        wait_until(Duration::from_secs(10), || plain[0].failure().is_some()).await,
        "the attack is real: it stops plain gossip"
    );
    let failure = plain[0].failure().unwrap();
    assert!(failure.contains("gossip stopped"), "{failure}");
    assert!(
        wait_until(Duration::from_secs(10), || plain[1].members().len() == 1).await,
        "the failed node left; its peers dropped it"
    );
    attack.abort();
    for n in nodes.iter().chain(&plain) {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_members_and_forged_leaving_change_nothing() {
    for sealed in [true, false] {
        let id = cluster_id(if sealed { "forge" } else { "forge-plain" });
        let nodes = three(&id, sealed).await;
        // A QUIC listener of the attacker's: would a node connect to it, it would get the
        // node's proof of the secret to attack offline.
        let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let trap_addr = trap.local_addr().unwrap();
        let attack = attacker(
            &id,
            "fake-member".into(),
            &[&nodes[0], &nodes[1]],
            vec![("mesh".into(), trap_addr.to_string())],
        )
        .await;
        // node-b is leaving, and its mesh moved to the trap, says the attacker.
        forge_leaving(&attack, &nodes[1], &nodes[0], trap_addr).await;
        let mut buf = [0u8; 2048];
        let contacted = tokio::time::timeout(Duration::from_secs(3), trap.recv_from(&mut buf))
            .await
            .is_ok();
        let members = nodes.iter().map(|n| n.members().len()).collect::<Vec<_>>();
        if sealed {
            assert!(!contacted, "no node connected to the fake member");
            assert!(
                formed(&nodes),
                "node-b is still a member everywhere: {members:?}"
            );
            assert!(!attacker_heard_back(&attack, &[&nodes[0], &nodes[1]]).await);
            assert!(nodes[0].gossip_stats().refused > 0 && nodes[1].gossip_stats().refused > 0);
        } else {
            // In clear the forged gossip is read (the nodes try the fake member's address)
            // but still does not evict node-b: its mesh connections are alive, and gossip
            // is input, never proof.
            assert!(
                contacted,
                "the forged gossip is real: a node tried the trap"
            );
            assert!(
                formed(&nodes),
                "a member with a live connection stays, whatever gossip says: {members:?}"
            );
            assert!(
                nodes
                    .iter()
                    .all(|n| n.members().iter().all(|m| m.node_name != "fake-member")),
                "the fake member never became one"
            );
        }
        attack.abort();
        for n in &nodes {
            n.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_gossip_shows_nothing_and_a_replay_is_refused() {
    for sealed in [true, false] {
        let id = cluster_id(if sealed { "capture" } else { "capture-plain" });
        // A node whose seed is a socket of the test: the test captures its gossip.
        let capture = UdpSocket::bind("127.0.0.1:0").unwrap();
        capture
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let name = "node-with-a-recognisable-name";
        let a = node(&id, name, Some(capture.local_addr().unwrap()), sealed).await;
        let mut buf = vec![0u8; 70_000];
        let (len, _) = capture.recv_from(&mut buf).expect("a gossip datagram");
        let datagram = buf[..len].to_vec();
        let contains = |needle: &[u8]| datagram.windows(needle.len()).any(|w| w == needle);
        let mesh = a.mesh_addr().to_string();
        let visible = contains(name.as_bytes()) || contains(id.as_bytes());
        if !sealed {
            assert!(visible, "in clear the name and cluster id show");
            a.shutdown().await;
            continue;
        }
        assert!(!visible, "no node name or cluster id in clear");
        assert!(!contains(mesh.as_bytes()), "no address in clear");

        // Delivered to a node at the address it was sealed for, it opens once; delivered
        // again it is a replay. (It opens at no other address: see
        // `datagrams_replayed_to_another_node_get_no_answer`.)
        let seed_addr = capture.local_addr().unwrap();
        drop(capture);
        let b = node_at(&id, "node-b", None, true, |c| c.with_gossip_addr(seed_addr)).await;
        let before = b.gossip_stats();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(&datagram, b.gossip_addr()).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || b.gossip_stats().opened
                > before.opened)
            .await,
            "a genuine datagram opens: {:?}",
            b.gossip_stats()
        );
        assert_eq!(
            b.gossip_stats().refused,
            before.refused,
            "nothing refused so far"
        );
        stranger.send_to(&datagram, b.gossip_addr()).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || b.gossip_stats().refused
                > before.refused)
            .await,
            "the replay is refused"
        );
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// The heartbeat of `id` as `observer` holds it, if it holds the node.
async fn heartbeat_seen(observer: &ChitchatHandle, id: &ChitchatId) -> Option<u64> {
    observer
        .with_chitchat(|c| c.node_state(id).map(|s| u64::from(s.heartbeat())))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_cannot_silence_a_member() {
    // 2^62: every real heartbeat of the victim after it looks old, so chitchat stops
    // hearing the victim and declares it dead.
    let forged: chitchat::Heartbeat = serde_json::from_str("4611686018427387904").unwrap();
    for sealed in [true, false] {
        let id = cluster_id(if sealed {
            "heartbeat"
        } else {
            "heartbeat-plain"
        });
        let nodes = three(&id, sealed).await;
        let victim = &nodes[1];
        let generation = nodes[0]
            .members()
            .into_iter()
            .find(|m| m.node_name == victim.node_name())
            .expect("node-a sees node-b")
            .generation;
        let victim_id = ChitchatId::new(
            victim.node_name().to_string(),
            generation,
            victim.gossip_addr(),
        );
        // The attacker speaks as the victim itself (its name, generation and gossip
        // address, learnt from gossip in a real attack), with the forged heartbeat.
        let attack = {
            let addr = free_udp_addr();
            let config = ChitchatConfig {
                chitchat_id: victim_id.clone(),
                cluster_id: id.clone(),
                gossip_interval: GOSSIP,
                listen_addr: addr,
                seed_nodes: vec![nodes[0].gossip_addr().to_string()],
                failure_detector_config: FailureDetectorConfig::default(),
                marked_for_deletion_grace_period: Duration::from_secs(3600),
                catchup_callback: None,
                extra_liveness_predicate: None,
                protocol_version: ProtocolVersion::V0,
            };
            let handle = spawn_chitchat(config, vec![], &UdpTransport).await.unwrap();
            handle
                .with_chitchat(|c| c.self_node_state().try_set_heartbeat(forged))
                .await;
            handle
        };
        // An honest-looking observer in clear: what node-a tells it is what node-a holds.
        let observer = attacker(&id, "observer".into(), &[&nodes[0]], vec![]).await;
        let forged = u64::from(forged);
        let mut taken = false;
        // Only in clear can the observer see what node-a holds.
        let looks = if sealed { 0 } else { 150 };
        for _ in 0..looks {
            if heartbeat_seen(&observer, &victim_id)
                .await
                .is_some_and(|h| h >= forged)
            {
                taken = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let members = nodes.iter().map(|n| n.members().len()).collect::<Vec<_>>();
        if sealed {
            // The observer speaks in clear, so a sealed node-a tells it nothing either way:
            // what shows the forgery was not taken is that node-b stays a member and that
            // node-a counted the attacker's datagrams as refused.
            assert!(
                holds_for(Duration::from_secs(3), || formed(&nodes)).await,
                "node-b stays a member everywhere: {members:?}"
            );
            assert!(!attacker_heard_back(&observer, &[&nodes[0]]).await);
            assert!(nodes[0].gossip_stats().refused > 0, "{:?}", stats(&nodes));
        } else {
            // In clear the forgery is real: node-a takes it and passes it on.
            assert!(taken, "the forged heartbeat reached node-a's chitchat");
            // Still no eviction: node-b proves itself over the mesh, not through gossip.
            assert!(
                holds_for(Duration::from_secs(3), || formed(&nodes)).await,
                "a member with a live connection stays: {members:?}"
            );
        }
        attack.abort();
        observer.abort();
        for n in &nodes {
            n.shutdown().await;
        }
    }
}

/// A stranger captures sealed datagrams from node-a to node-b (node-b advertises a relay in
/// front of its port, where they are copied) and replays them to node-c from a port of its
/// own: node-c answers none of them (a datagram opens only at the node it was sealed for),
/// and node-b, their recipient, answers none either (it opened them once already).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_replayed_to_another_node_get_no_answer() {
    let id = cluster_id("replay-elsewhere");
    let a = node(&id, "node-a", None, true).await;
    let b_bind = free_udp_addr();
    let relay = common::relay::Relay::start(b_bind).await;
    let b = node_at(&id, "node-b", Some(a.gossip_addr()), true, |c| {
        c.with_gossip_addr(b_bind)
            .with_gossip_advertise_addr(relay.addr)
    })
    .await;
    let c = node(&id, "node-c", Some(a.gossip_addr()), true).await;
    let nodes = [a, b, c];
    assert!(
        wait_until(Duration::from_secs(10), || formed(&nodes)).await,
        "the cluster formed"
    );
    let from_a = || -> Vec<Vec<u8>> {
        relay
            .captured()
            .into_iter()
            .filter(|(from, _)| *from == nodes[0].gossip_addr())
            .map(|(_, d)| d)
            .take(4)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || from_a().len() == 4).await,
        "four datagrams from node-a to node-b captured"
    );
    let captured = from_a();
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 70_000];
    for (target, who) in [(&nodes[2], "node-c"), (&nodes[1], "node-b")] {
        let before = target.gossip_stats().refused;
        let to = if who == "node-b" {
            b_bind
        } else {
            target.gossip_addr()
        };
        for d in &captured {
            stranger.send_to(d, to).await.unwrap();
        }
        let mut answered = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok((n, _))) =
            tokio::time::timeout_at(deadline, stranger.recv_from(&mut buf)).await
        {
            answered += n;
        }
        assert_eq!(answered, 0, "{who} answered {answered} bytes to the replay");
        assert!(
            wait_until(Duration::from_secs(2), || target.gossip_stats().refused
                >= before + captured.len() as u64)
            .await,
            "{who} refused the {} datagrams: {:?}",
            captured.len(),
            target.gossip_stats()
        );
    }
    for n in &nodes {
        n.shutdown().await;
    }
}
