//! ICMP is a hint, never proof: anyone who can send to a host can forge a *port
//! unreachable* that quotes a mesh link's addresses (no position on the path needed). Two
//! real nodes on 127.0.0.1, `a` in this process and `b` a `cluster_node` process, exchange
//! broadcasts while a raw socket sends such messages to each, quoting its own mesh port and
//! the other's: no link closes, no member is dropped, no broadcast is lost. Then `b` is
//! killed with SIGKILL, and `a` still notices at once, from the kernel's answer to its next
//! datagram, long before the peer timeout.
//!
//! Linux only (ICMP errors of unconnected UDP sockets), and the raw socket needs
//! `CAP_NET_RAW`: without it the test says so and skips, unless `CI` is set. Run it with
//! `cargo test --all-features --test forged_icmp -- --nocapture` for the figures.
#![cfg(all(feature = "cluster-gossip", target_os = "linux"))]

mod common;
#[path = "common/external.rs"]
mod external;
#[path = "common/logs.rs"]
mod logs;

use std::{
    hash::{BuildHasher, RandomState},
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use futures_util::StreamExt;
use socketioxide::extract::SocketRef;
use socketioxide_cluster::MembershipEvent;

/// Far longer than anything here takes: a link closed or a crash noticed before it was
/// closed by something else than the peer timeout.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer still.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Broadcasts each way during the forgeries.
const BROADCASTS: usize = 100;
/// A forged message each way every this many broadcasts.
const FORGE_EVERY: usize = 5;

/// A raw ICMP socket (needs `CAP_NET_RAW`).
struct RawIcmp(OwnedFd);

impl RawIcmp {
    fn open() -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, open descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Send to the host of `victim` an ICMP port unreachable quoting a UDP datagram from
    /// `victim` to `peer` whose first bytes are `quoted`: as the kernel at `peer` would if
    /// nothing listened there.
    fn port_unreachable(&self, victim: SocketAddr, peer: SocketAddr, quoted: &[u8]) {
        let (SocketAddr::V4(victim), SocketAddr::V4(peer)) = (victim, peer) else {
            panic!("IPv4 only");
        };
        // The quoted datagram: IPv4 header, UDP header, the start of its payload.
        let mut inner = Vec::new();
        let total = (20 + 8 + 1200u16).to_be_bytes(); // as long as a QUIC datagram
        inner.extend_from_slice(&[
            0x45, 0, total[0], total[1], 0x12, 0x34, 0x40, 0, 64, 17, 0, 0,
        ]);
        inner.extend_from_slice(&victim.ip().octets());
        inner.extend_from_slice(&peer.ip().octets());
        let sum = checksum(&inner).to_be_bytes();
        inner[10..12].copy_from_slice(&sum);
        inner.extend_from_slice(&victim.port().to_be_bytes());
        inner.extend_from_slice(&peer.port().to_be_bytes());
        inner.extend_from_slice(&(8 + 1200u16).to_be_bytes());
        inner.extend_from_slice(&[0, 0]);
        inner.extend_from_slice(quoted);
        // Destination unreachable (3), port unreachable (3).
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&inner);
        let sum = checksum(&icmp).to_be_bytes();
        icmp[2..4].copy_from_slice(&sum);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*victim.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and the address are live and of the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                icmp.as_ptr().cast(),
                icmp.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            sent,
            icmp.len() as isize,
            "raw send: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Bytes an attacker off the path would quote: it never saw a datagram of the link. The
/// start of a QUIC short-header packet, the rest random.
fn guessed_quic_bytes() -> Vec<u8> {
    let state = RandomState::new();
    let mut out = vec![0x40];
    for i in 0..5u64 {
        out.extend_from_slice(&state.hash_one(i).to_be_bytes());
    }
    out
}

/// A node with a socket on `/`.
async fn node_with_socket(id: &str) -> (TestNode, ClientTx, ClientRx) {
    let node = start_gossip(
        config(id, None)
            .with_node_name("a")
            .with_peer_timeout(PEER_TIMEOUT)
            .with_request_timeout(REQUEST_TIMEOUT),
    )
    .await;
    node.io
        .ns("/", async |_: SocketRef<Adapter>| {})
        .await
        .unwrap();
    let (tx, rx, _) = dummy(&node.io, "/").await;
    (node, tx, rx)
}

/// `b`: a `cluster_node` process of cluster `id` seeded with `seed`, its mesh at `mesh`;
/// the process and its HTTP address.
fn start_b(id: &str, seed: SocketAddr, mesh: SocketAddr) -> (external::Spawned, SocketAddr) {
    let log = std::env::temp_dir().join(format!("forged-icmp-b-{id}.log"));
    let env = [
        ("RUST_LOG", "info".to_string()),
        ("SOCKETIO_CLUSTER_ID", id.to_string()),
        ("SOCKETIO_CLUSTER_NODE_NAME", "b".to_string()),
        (
            "SOCKETIO_CLUSTER_GOSSIP_ADDR",
            external::free_udp_port().to_string(),
        ),
        ("SOCKETIO_CLUSTER_MESH_ADDR", mesh.to_string()),
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
    external::start_cluster_node(&env, &log)
}

/// Every membership event of `node` from now on, collected.
fn record_events(node: &TestNode) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut events = node.cluster().membership_events();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            let line = match e {
                MembershipEvent::Joined(m) => format!("joined {}", m.node_name),
                MembershipEvent::Left(m) => format!("left {}", m.node_name),
            };
            out.lock().unwrap().push(line);
        }
    });
    seen
}

/// The broadcasts `event` 1 to [`BROADCASTS`] arrive at `rx` in order, among others.
async fn in_order(rx: &mut ClientRx, event: &str) -> Result<(), String> {
    let mut next = 1;
    while next <= BROADCASTS {
        let Some(Some(p)) = within(Duration::from_secs(5), rx.recv()).await else {
            return Err(format!("broadcast {next} never arrived"));
        };
        let p = String::from(p);
        if !p.contains(&format!(r#"["{event}","#)) {
            continue;
        }
        // a's ticks are numbers, b's chat messages say which they are in their text.
        let want = [format!(r#"42["{event}",{next}]"#), format!(r#""m{next}""#)];
        if !want.iter().any(|w| p.contains(w.as_str())) {
            return Err(format!("broadcast {next} lost: got {p}"));
        }
        next += 1;
    }
    Ok(())
}

/// Whether `b` is a member of `a`, hosting `/`.
fn has_b(a: &TestNode) -> bool {
    a.cluster()
        .members()
        .iter()
        .any(|m| m.node_name == "b" && m.hosts("/") && m.server_id.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_port_unreachables_close_nothing_and_a_real_crash_is_still_seen_at_once() {
    logs::capture();
    let raw = match RawIcmp::open() {
        Ok(raw) => raw,
        Err(e) => {
            external::skip_or_fail(&format!(
                "a raw ICMP socket cannot be opened (CAP_NET_RAW is needed): {e}"
            ));
            return;
        }
    };
    let id = cluster_id();
    let (a, _ta, mut ra) = node_with_socket(&id).await;
    let b_mesh = external::free_udp_port();
    let (mut b, b_http) = start_b(&id, a.cluster().gossip_addr(), b_mesh);
    let (tb, mut rb, _) = polling_client(b_http, "/").await;
    assert!(wait_until(FORMS, || has_b(&a)).await, "b is a member of a");
    let a_mesh = a.cluster().mesh_addr();
    assert_eq!(a_mesh.ip(), Ipv4Addr::LOCALHOST, "a's mesh on 127.0.0.1");
    let events = record_events(&a);
    let dropped_before = a.cluster().frames_dropped();
    let unreachable = || logs::lines_with("closing mesh connection: port unreachable");
    let ignored = || logs::lines_with("ICMP port unreachable for a mesh peer's address ignored");
    // b's broadcasts reach a once its link to a is up: wait for the first.
    client_emit(&tb, "/", r#"["message","m0"]"#).await;
    let first = within(Duration::from_secs(10), ra.recv()).await.flatten();
    assert!(
        first.is_some_and(|p| String::from(p).contains(r#""m0""#)),
        "b's first message reached a"
    );

    // Broadcasts both ways, and every few of them a forged port unreachable to each node,
    // quoting its mesh port and the other's.
    let mut forged = 0;
    for i in 1..=BROADCASTS {
        a.io.emit("tick", &i).await.unwrap();
        client_emit(&tb, "/", &format!(r#"["message","m{i}"]"#)).await;
        if i % FORGE_EVERY == 0 {
            raw.port_unreachable(a_mesh, b_mesh, &guessed_quic_bytes());
            raw.port_unreachable(b_mesh, a_mesh, &guessed_quic_bytes());
            forged += 2;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every broadcast arrives, in order (a's socket also gets a's own).
    let mut lost = Vec::new();
    for (what, rx, event) in [("a → b", &mut rb, "tick"), ("b → a", &mut ra, "message")] {
        if let Err(e) = in_order(rx, event).await {
            lost.push(format!("{what}: {e}"));
        }
    }
    let closed = unreachable();
    let events = events.lock().unwrap().clone();
    let dropped = a.cluster().frames_dropped() - dropped_before;
    println!(
        "{forged} forged port unreachables: {} connections closed for them, a's membership \
         events {events:?}, frames dropped by a {dropped}, broadcasts lost: {lost:?}",
        closed.len()
    );
    assert!(closed.is_empty(), "links closed on forged ICMP: {closed:?}");
    assert!(events.is_empty(), "membership changed: {events:?}");
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(dropped, 0, "frames dropped");
    assert!(has_b(&a), "b is still a member of a");
    assert!(
        !ignored().is_empty(),
        "the forged messages reached a, and were logged as ignored"
    );

    // A real crash: SIGKILL. The kernel answers a's next datagram to b's port, quoting it:
    // a request from a does not wait for b.
    external::signal_group(&b.0, "KILL");
    assert!(
        external::wait_bounded(&mut b.0, Duration::from_secs(10)).is_some(),
        "b is dead"
    );
    let started = Instant::now();
    a.io.fetch_sockets().await.unwrap();
    let took = started.elapsed();
    println!(
        "fetch_sockets right after b was killed took {took:?} (peer timeout {PEER_TIMEOUT:?})"
    );
    assert!(
        took < PEER_TIMEOUT / 2,
        "the crash was noticed before the peer timeout: {took:?}"
    );
    let noticed = unreachable();
    assert!(
        noticed.iter().any(|l| l.contains("b#")),
        "b's connections were closed on the kernel's answer: {noticed:?}"
    );
    assert!(
        wait_until(SETTLES, || !has_b(&a)).await,
        "b is no longer a member of a: {:?}",
        a.cluster().members()
    );
}
