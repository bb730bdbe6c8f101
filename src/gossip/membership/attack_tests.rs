//! Attacks by a member holding the secret, against real nodes on 127.0.0.1: the attacker
//! seals what it sends exactly as the nodes seal (with the crate's own sealing), so every
//! datagram opens; what it seals is chitchat envelopes written byte by byte.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;

use super::{
    clock::Clock,
    envelope::craft::{self, Id},
    seal::{GossipKeys, MAX_DATAGRAM, Recipient, Sealer},
};
use crate::{
    Cluster, GossipAdapterConfig, GossipAdapterCtr,
    gossip::keys::{Secret, derive_keyring, tests::SECRET},
};

const GOSSIP: Duration = Duration::from_millis(50);

fn cluster_id(test: &str) -> String {
    format!("member-attack-{test}-{}", std::process::id())
}

async fn node(cluster: &str, name: &str, seed: Option<SocketAddr>) -> Cluster {
    node_in(cluster, name, seed, true).await
}

/// A node, sealed or in clear (`insecure_no_auth`).
async fn node_in(cluster: &str, name: &str, seed: Option<SocketAddr>, sealed: bool) -> Cluster {
    let mut c = GossipAdapterConfig::new()
        .with_cluster_id(cluster)
        .with_node_name(name)
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_gossip_interval(GOSSIP);
    c = if sealed {
        c.with_secret(SECRET)
    } else {
        c.insecure_no_auth()
    };
    if let Some(seed) = seed {
        c = c.with_seeds([seed.to_string()]);
    }
    GossipAdapterCtr::new(c).await.unwrap().cluster()
}

async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn formed(nodes: &[Cluster]) -> bool {
    nodes.iter().all(|n| n.members().len() == nodes.len() - 1)
}

/// Three nodes that see each other.
async fn three(cluster: &str) -> [Cluster; 3] {
    three_in(cluster, true).await
}

async fn three_in(cluster: &str, sealed: bool) -> [Cluster; 3] {
    let a = node_in(cluster, "node-a", None, sealed).await;
    let b = node_in(cluster, "node-b", Some(a.gossip_addr()), sealed).await;
    let c = node_in(cluster, "node-c", Some(a.gossip_addr()), sealed).await;
    let nodes = [a, b, c];
    assert!(
        until(Duration::from_secs(10), || formed(&nodes)).await,
        "the cluster formed"
    );
    nodes
}

/// A member holding the secret, on a UDP socket of its own.
struct Member {
    socket: UdpSocket,
    sealer: std::sync::Mutex<Sealer>,
    clock: Clock,
}

impl Member {
    async fn new(cluster: &str) -> Self {
        let keys = derive_keyring(cluster, &[Secret::from(SECRET)]).unwrap();
        let keys = Arc::new(GossipKeys::new(cluster, &keys).unwrap());
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            sealer: std::sync::Mutex::new(Sealer::new(keys)),
            clock: Clock::default(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// Seal `envelope` for the node at `to` as a node does (first contact: for its
    /// address), and send it.
    async fn send(&self, envelope: &[u8], to: SocketAddr) {
        let now = self.clock.now_ms();
        let datagrams = self
            .sealer
            .lock()
            .unwrap()
            .seal(envelope, &Recipient::Addr(to), now);
        for datagram in datagrams {
            self.socket.send_to(&datagram, to).await.unwrap();
        }
    }

    /// Whether anything arrives within `wait`, and how many bytes.
    async fn answer(&self, wait: Duration) -> Option<usize> {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut total = None;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok((len, _))) =
            tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await
        {
            *total.get_or_insert(0) += len;
        }
        total
    }
}

/// Every node asks the others over the mesh (server events with an ack); true when each
/// got both answers.
async fn broadcasts_flow(nodes: &[Cluster], events: &[crate::events::ServerEvents]) -> bool {
    use futures_util::StreamExt;
    for (n, ev) in nodes.iter().zip(events) {
        let Ok(acks) = ev
            .emit_with_ack("ping", &n.node_name(), Duration::from_secs(5))
            .await
        else {
            return false;
        };
        let answers: Vec<_> = acks.collect().await;
        if answers.iter().filter(|a| a.result.is_ok()).count() != nodes.len() - 1 {
            return false;
        }
    }
    true
}

/// Server events on each node, answering "ping" with the node's name.
fn answering(nodes: &[Cluster]) -> Vec<crate::events::ServerEvents> {
    let events: Vec<_> = nodes.iter().map(Cluster::server_events).collect();
    for (n, ev) in nodes.iter().zip(&events) {
        let name = n.node_name().to_string();
        ev.on("ping", move |e| {
            let name = name.clone();
            async move {
                e.ack(&name).ok();
            }
        });
    }
    events
}

/// Holds for `period` unless a node fails or loses a member.
async fn calm_for(nodes: &[Cluster], period: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < period {
        if nodes.iter().any(|n| n.failure().is_some()) || !formed(nodes) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// A Syn whose digest names one node with a 65,400-byte name, and the matching SynAck,
/// sealed by a member, sent to every node: chitchat asserts on such a digest (its answer
/// leaves less than 100 bytes for a delta) and its task dies. No node's gossip may fail (or
/// need starting again), and broadcasts keep flowing between all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_digest_with_a_huge_node_name_stops_no_node() {
    let cluster = cluster_id("long-name");
    let nodes = three(&cluster).await;
    let events = answering(&nodes);
    assert!(broadcasts_flow(&nodes, &events).await, "broadcasts flow");

    let member = Member::new(&cluster).await;
    // The control: a sealed empty Syn is answered, so the sealing is right.
    member
        .send(&craft::syn(&cluster, &[]), nodes[0].gossip_addr())
        .await;
    assert!(
        member.answer(Duration::from_secs(2)).await.is_some(),
        "a sealed empty Syn is answered"
    );

    let long = Id {
        name: "x".repeat(65_400),
        generation: 1,
        addr: member.addr(),
    };
    let digest = [(long, 1, 0, 0)];
    for n in &nodes {
        member
            .send(&craft::syn(&cluster, &digest), n.gossip_addr())
            .await;
        member
            .send(&craft::syn_ack(&digest, &[]), n.gossip_addr())
            .await;
    }
    let calm = calm_for(&nodes, Duration::from_secs(10)).await;
    let failures: Vec<_> = nodes.iter().map(Cluster::failure).collect();
    assert!(calm, "no node's gossip fails: {failures:?}");
    let stats: Vec<_> = nodes.iter().map(Cluster::gossip_stats).collect();
    assert!(stats.iter().all(|s| s.restarts == 0), "{stats:?}");
    assert!(stats.iter().all(|s| s.refused >= 2), "refused: {stats:?}");
    assert!(
        broadcasts_flow(&nodes, &events).await,
        "broadcasts still flow between every pair"
    );
    for n in &nodes {
        n.shutdown().await;
    }
}

/// The UDP ports of 127.0.0.1 that process `pid` holds open (from `/proc`: its socket
/// inodes, matched in the table of UDP sockets), as any local process can find them.
fn udp_ports_of(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (ip, port) = f.get(1)?.split_once(':')?;
            (ip == "0100007F" && inodes.iter().any(|i| Some(&i.as_str()) == f.get(9)))
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

/// A node in a child process (the calling test again, run with `BOMB_CHILD_CLUSTER` set),
/// printing its gossip and mesh addresses, then its VmHWM as it changes; `None` in the
/// child itself, once the node ran its course.
struct Child {
    process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    cluster: String,
    gossip: SocketAddr,
    mesh: SocketAddr,
}

impl Child {
    async fn start(test: &str) -> Option<Self> {
        if let Ok(cluster) = std::env::var("BOMB_CHILD_CLUSTER") {
            let node = node(&cluster, "target", None).await;
            // On a line of its own: the test harness has begun one with the test's name.
            println!();
            println!("gossip {}", node.gossip_addr());
            println!("mesh {}", node.mesh_addr());
            let mut last = 0;
            for _ in 0..1_200 {
                let hwm = crate::proc_status::status_bytes("VmHWM");
                if hwm != last {
                    println!("hwm {hwm}");
                    last = hwm;
                }
                if let Some(f) = node.failure() {
                    println!("failure {f}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return None;
        }
        let cluster = cluster_id(test.rsplit("::").next().unwrap_or("bomb"));
        let (process, lines) =
            crate::proc_status::child_test(test, &[("BOMB_CHILD_CLUSTER", &cluster)], false);
        let mut child = Self {
            process,
            lines,
            seen: Vec::new(),
            cluster,
            gossip: ([0, 0, 0, 0], 0).into(),
            mesh: ([0, 0, 0, 0], 0).into(),
        };
        let addr = |seen: &[String], what: &str| -> Option<SocketAddr> {
            seen.iter()
                .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
        };
        for _ in 0..100 {
            child.read(Duration::from_millis(100));
            if let (Some(g), Some(m)) = (addr(&child.seen, "gossip "), addr(&child.seen, "mesh ")) {
                (child.gossip, child.mesh) = (g, m);
                return Some(child);
            }
        }
        panic!("the child node did not start: {:?}", child.seen);
    }

    /// Read what the child printed for `wait`.
    fn read(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => break,
            }
        }
    }

    /// The peak memory of the child so far, in bytes.
    fn peak(&self) -> u64 {
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix("hwm ")?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// A member of the child's cluster, once a sealed Syn of it is answered (the control),
    /// and the child's peak memory then.
    async fn attacked(&mut self) -> (Member, u64) {
        let member = Member::new(&self.cluster).await;
        assert!(
            answers(&member, &self.cluster, self.gossip).await,
            "the control is answered"
        );
        self.read(Duration::from_millis(500));
        (member, self.peak())
    }

    fn failures(&self) -> Vec<&String> {
        self.seen
            .iter()
            .filter(|l| l.starts_with("failure"))
            .collect()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A V1 Syn and a V0 Ack whose compressed blocks inflate to about 250 MB each, in about
/// 64 KB: the largest bombs one datagram carries.
fn bombs(cluster: &str) -> (Vec<u8>, Vec<u8>) {
    let probe = zstd::bulk::compress(&[0u8; 65_535], 19).unwrap().len() + 3;
    let blocks = (64_000 - cluster.len()) / probe;
    let bombs = (craft::v1_syn_bomb(cluster, blocks), craft::ack_bomb(blocks));
    println!(
        "bombs of {} and {} bytes: {blocks} blocks of {probe} bytes, {} MB once inflated",
        bombs.0.len(),
        bombs.1.len(),
        blocks * 65_535 / 1_000_000
    );
    bombs
}

/// Whether the node still answers a sealed Syn (three tries).
async fn answers(member: &Member, cluster: &str, to: SocketAddr) -> bool {
    for _ in 0..3 {
        member.send(&craft::syn(cluster, &[]), to).await;
        if member.answer(Duration::from_secs(2)).await.is_some() {
            return true;
        }
    }
    false
}

/// A member seals decompression bombs: a V1 Syn whose compressed digest inflates to about
/// 250 MB, and an Ack whose delta does. The peak memory (VmHWM) of the node that opens
/// them stays bounded, and its gossip still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_decompression_bombs_leave_the_peak_memory_bounded() {
    let Some(mut child) =
        Child::start("gossip::membership::attack_tests::sealed_decompression_bombs_leave_the_peak_memory_bounded").await
    else {
        return;
    };
    let (member, before) = child.attacked().await;
    let (syn_bomb, ack_bomb) = bombs(&child.cluster);
    member.send(&syn_bomb, child.gossip).await;
    member.send(&ack_bomb, child.gossip).await;
    still_bounded(&mut child, &member, before, "the sealed bombs").await;
}

/// The node still answers a Syn, did not fail, and its peak memory grew by less than
/// 64 MiB since `before` (the bombs inflate to 190 MB).
async fn still_bounded(child: &mut Child, member: &Member, before: u64, what: &str) {
    let answered = answers(member, &child.cluster, child.gossip).await;
    child.read(Duration::from_secs(2));
    let after = child.peak();
    println!(
        "node VmHWM {} kB before {what}, {} kB after",
        before / 1024,
        after / 1024
    );
    assert!(answered, "gossip still answers after {what}");
    assert!(child.failures().is_empty(), "{:?}", child.failures());
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "the peak grew by {} MB",
        after.saturating_sub(before) >> 20
    );
}

/// Any local process, without the secret, sends the bomb unsealed to every 127.0.0.1 UDP
/// port of the node but its gossip and mesh ports (chitchat's codec sockets among them):
/// the peak memory of the node stays bounded, and its gossip still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsealed_bomb_to_the_codec_sockets_leaves_the_peak_memory_bounded() {
    let Some(mut child) =
        Child::start("gossip::membership::attack_tests::an_unsealed_bomb_to_the_codec_sockets_leaves_the_peak_memory_bounded").await
    else {
        return;
    };
    let (member, before) = child.attacked().await;
    let (syn_bomb, _) = bombs(&child.cluster);
    let ports: Vec<u16> = udp_ports_of(child.process.id())
        .into_iter()
        .filter(|p| *p != child.gossip.port() && *p != child.mesh.port())
        .collect();
    assert!(!ports.is_empty(), "the node's other ports are found");
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for port in &ports {
        let _ = stranger.send_to(&syn_bomb, ("127.0.0.1", *port));
    }
    // The codec parses what reached it when the node next opens a datagram.
    let what = format!("the unsealed bomb to {} ports", ports.len());
    still_bounded(&mut child, &member, before, &what).await;
}

/// Should chitchat's task panic all the same, gossip goes on: the task is started again, on
/// the same port and identity, and the node stays a member with working broadcasts. Shown
/// in clear (`insecure_no_auth`), where one plain Syn naming a node of 65,400 bytes makes
/// chitchat assert; the same datagram stopped gossip for good before (see
/// `a_datagram_that_stops_gossip_in_clear_is_refused_unread_when_sealed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_of_the_gossip_task_does_not_stop_gossip() {
    let cluster = cluster_id("restart");
    let nodes = three_in(&cluster, false).await;
    let events = answering(&nodes);
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let long = Id {
        name: "x".repeat(65_400),
        generation: 1,
        addr: stranger.local_addr().unwrap(),
    };
    let syn = craft::syn(&cluster, &[(long, 1, 0, 0)]);
    stranger
        .send_to(&syn, nodes[0].gossip_addr())
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(10), || nodes[0].gossip_stats().restarts
            == 1)
        .await,
        "the gossip task was started again: {:?}",
        nodes[0].gossip_stats()
    );
    let failures: Vec<_> = nodes.iter().map(Cluster::failure).collect();
    assert!(
        calm_for(&nodes, Duration::from_secs(3)).await,
        "members stay, no failure: {failures:?}"
    );
    assert!(
        broadcasts_flow(&nodes, &events).await,
        "broadcasts flow between every pair"
    );
    // Gossip itself works again: a node that joins now is seen by all, through node-a.
    let d = node_in(&cluster, "node-d", Some(nodes[0].gossip_addr()), false).await;
    let all = [nodes[0].clone(), nodes[1].clone(), nodes[2].clone(), d];
    assert!(
        until(Duration::from_secs(10), || formed(&all)).await,
        "a new node joins through the restarted one"
    );
    assert_eq!(nodes[0].gossip_stats().restarts, 1);
    for n in &all {
        n.shutdown().await;
    }
}

/// Random envelopes (honest, malformed, mangled, at and beyond every bound; see
/// `craft::envelopes`), sealed by a member and sent to a real node, in batches: whatever
/// gets through the checks, chitchat's task never stops (no restart, no failure), and it
/// answers a Syn after each batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_random_envelopes_never_stop_chitchat() {
    use proptest::strategy::{Strategy, ValueTree};
    let cluster: &'static str = Box::leak(cluster_id("fuzz").into_boxed_str());
    let target = node(cluster, "node-a", None).await;
    let member = Member::new(cluster).await;
    let strategy = craft::envelopes(cluster);
    let mut runner = proptest::test_runner::TestRunner::default();
    let mut sent = 0;
    for batch in 0..24 {
        for _ in 0..16 {
            let envelope = strategy.new_tree(&mut runner).unwrap().current();
            member.send(&envelope, target.gossip_addr()).await;
            sent += 1;
        }
        assert!(
            answers(&member, cluster, target.gossip_addr()).await,
            "batch {batch}: the node no longer answers: {:?} {:?}",
            target.gossip_stats(),
            target.failure()
        );
    }
    let stats = target.gossip_stats();
    println!("{sent} random envelopes sent: {stats:?}");
    assert_eq!(stats.restarts, 0, "{stats:?}");
    assert_eq!(target.failure(), None);
    assert!(stats.refused > 0 && stats.opened > 24, "{stats:?}");
    target.shutdown().await;
}
