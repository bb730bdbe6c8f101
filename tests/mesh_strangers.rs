//! The mesh gives strangers nothing: a node in a child process (the `cluster_node` test server)
//! is hit with 200 QUIC connections from 16 addresses that complete TLS with the mesh ALPN but
//! never prove the cluster secret, each sending unreliable datagrams if the node takes any,
//! a quarter of them also opening streams and pushing junk.
//! Its resident memory (`VmRSS`, /proc) must grow by less than 6 MB (about 3 MB measured), while a real peer with
//! the secret keeps exchanging broadcasts with it both ways.
//!
//! Nor can strangers crowd out the cluster's nodes: while 192 such connections from 16
//! addresses are dialled again as soon as the node cuts them, a new node with the secret
//! joins through it, and exchanges every broadcast with it both ways.
//!
//! Linux only (it reads /proc). `cargo test --all-features --test mesh_strangers -- --nocapture`
//! prints the memory figures.
#![cfg(all(feature = "cluster-gossip", target_os = "linux"))]

mod common;
#[path = "common/external.rs"]
mod external;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use external::{Spawned, free_udp_port, start_cluster_node};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use socketioxide::extract::SocketRef;
use socketioxide_cluster::{GossipAdapterConfig, MESH_ALPN as ALPN};

/// A strong test secret (64 hex characters).
const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";
/// Connections opened by the attacker.
const STRANGERS: usize = 200;
/// Of which this many also open streams and send junk.
const JUNK_SENDERS: usize = 50;
/// Junk written per unidirectional stream (more than quinn's default stream window of
/// 1.25 MB).
const JUNK_PER_STREAM: usize = 2 * 1024 * 1024;
/// How long the attack lasts.
const ATTACK: Duration = Duration::from_secs(4);
/// The bound on the node's growth: docs/deploying.md says about 3 MB (2,448 to 3,072 kB
/// measured), this leaves room for a loaded machine.
const MAX_GROWTH_KB: u64 = 6 * 1024;
/// Unreliable datagrams each stranger tries to send (more than quinn buffers by default
/// per connection, 1.25 MB).
const DATAGRAM_JUNK: usize = 2 * 1024 * 1024;
/// Most stream bytes one stranger may push before proving anything: the 8 KiB of the proof
/// stream the docs state (none was granted in three runs).
const MAX_CREDIT_PER_STRANGER: usize = 8 * 1024;

/// Resident memory of `pid` in kB.
fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// The victim: `cluster_node` in a child process, with `more` settings, and its HTTP
/// address.
fn start_victim(
    cluster_id: &str,
    gossip: SocketAddr,
    mesh: SocketAddr,
    more: &[(&str, String)],
) -> (Spawned, SocketAddr) {
    let log = std::env::temp_dir().join(format!("mesh-strangers-{cluster_id}.log"));
    let mut env = vec![
        ("RUST_LOG", "info".into()),
        ("SOCKETIO_CLUSTER_ID", cluster_id.into()),
        ("SOCKETIO_CLUSTER_NODE_NAME", "victim".into()),
        ("SOCKETIO_CLUSTER_GOSSIP_ADDR", gossip.to_string()),
        ("SOCKETIO_CLUSTER_MESH_ADDR", mesh.to_string()),
        ("SOCKETIO_CLUSTER_SECRET", SECRET.into()),
    ];
    env.extend(more.iter().cloned());
    let started = start_cluster_node(&env, &log);
    eprintln!("victim log: {}", log.display());
    started
}

/// Accepts any server certificate: the attacker does not care who it talks to.
#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A QUIC client bound at `bind` that speaks the mesh's ALPN but has no secret.
fn stranger_endpoint_at(bind: SocketAddr) -> quinn::Endpoint {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAnything))
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut client =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("QUIC TLS")));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));

    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(bind).expect("endpoint");
    endpoint.set_default_client_config(client);
    endpoint
}

/// Run `n` strangers on a runtime of their own (its threads, not the nodes'), from a thread
/// of its own: stranger `i` is `each(endpoint, i)`, its endpoint one of `sources` bound at
/// 127.0.0.2 and up, to look like that many hosts. The thread ends once every stranger
/// ended or was waited for `wait`.
fn attack<F: Future<Output = ()> + Send + 'static>(
    sources: usize,
    n: usize,
    wait: Duration,
    each: impl Fn(quinn::Endpoint, usize) -> F + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("attacker runtime");
        rt.block_on(async move {
            let endpoints: Vec<quinn::Endpoint> = (0..sources)
                .map(|i| {
                    let ip = std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8);
                    stranger_endpoint_at(SocketAddr::from((ip, 0)))
                })
                .collect();
            let strangers: Vec<_> = (0..n)
                .map(|i| tokio::spawn(each(endpoints[i % sources].clone(), i)))
                .collect();
            for s in strangers {
                let _ = tokio::time::timeout(wait, s).await;
            }
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    })
}

/// One stranger: connect, send datagrams if the node takes any, maybe push junk on every
/// stream the node lets it open, then hold the connection until `until`. Counts completed
/// handshakes in `connected`, junk accepted by the node's flow control in `junk_written`,
/// and datagram bytes sent in `datagrams_sent`.
async fn stranger(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    junk: bool,
    until: Instant,
    connected: Arc<AtomicUsize>,
    junk_written: Arc<AtomicUsize>,
    datagrams_sent: Arc<AtomicUsize>,
) {
    let left = until.saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(left, async {
        let Ok(connecting) = endpoint.connect(addr, "socketioxide-cluster") else {
            return;
        };
        let Ok(conn) = connecting.await else {
            return;
        };
        connected.fetch_add(1, Ordering::Relaxed);
        // Unreliable datagrams, which flow control does not cover: whatever the node lets
        // through it would buffer until read, and nothing of the mesh reads them.
        if let Some(size) = conn.max_datagram_size() {
            let datagram = bytes::Bytes::from(vec![0x5a; size.min(1200)]);
            for _ in 0..DATAGRAM_JUNK / datagram.len() {
                if conn.send_datagram_wait(datagram.clone()).await.is_err() {
                    break;
                }
                datagrams_sent.fetch_add(datagram.len(), Ordering::Relaxed);
            }
        }
        if junk {
            let block = bytes::Bytes::from(vec![0x5a; 64 * 1024]);
            // A few bytes on the handshake stream, never finished: the node keeps waiting
            // for the rest of a proof while junk arrives on every other stream.
            let mut writers = Vec::new();
            let _handshake = match conn.open_bi().await {
                Ok((mut send, recv)) => {
                    let _ = send.write_all(&[0x5a; 16]).await;
                    Some((send, recv))
                }
                Err(_) => None,
            };
            for _ in 0..2 {
                if let Ok(send) = conn.open_uni().await {
                    writers.push(send);
                }
            }
            let pushes = writers.into_iter().map(|mut send| {
                let block = block.clone();
                let junk_written = junk_written.clone();
                async move {
                    for _ in 0..JUNK_PER_STREAM / block.len() {
                        if send.write_all(&block).await.is_err() {
                            return;
                        }
                        junk_written.fetch_add(block.len(), Ordering::Relaxed);
                    }
                }
            });
            futures_util::future::join_all(pushes).await;
        }
        // Hold the connection, proving nothing.
        conn.closed().await;
    })
    .await;
}

/// The next chat message a dummy socket of the peer receives (the peer's own ticks reach it
/// too: they are skipped).
async fn next_message(rx: &mut ClientRx) -> String {
    for _ in 0..1000 {
        let p = recv(rx, 5000).await;
        if !p.contains("\"tick\"") {
            return p;
        }
    }
    panic!("only ticks arrived")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_cost_little_and_traffic_continues() {
    init_tracing();
    let cluster_id = format!("strangers-{}", std::process::id());
    let (victim_gossip, victim_mesh) = (free_udp_port(), free_udp_port());
    let (victim, victim_http) = start_victim(&cluster_id, victim_gossip, victim_mesh, &[]);
    let pid = victim.0.id();

    // A real peer in this process, with the secret.
    let peer = start_gossip(
        GossipAdapterConfig::new()
            .with_cluster_id(&cluster_id)
            .with_node_name("peer")
            .with_gossip_addr("127.0.0.1:0".parse().unwrap())
            .with_mesh_addr("127.0.0.1:0".parse().unwrap())
            .with_seeds([victim_gossip.to_string()])
            .with_secret(SECRET),
    )
    .await;
    peer.io
        .ns("/", async |_: SocketRef<Adapter>| {})
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || peer
            .cluster()
            .members()
            .iter()
            .any(|m| m.node_name == "victim"))
        .await,
        "the peer never saw the victim"
    );
    let (_peer_tx, mut peer_rx, _) = dummy(&peer.io, "/").await;
    let (client_tx, mut client_rx, _) = polling_client(victim_http, "/").await;

    // Traffic flows before the attack: one broadcast each way.
    peer.io.emit("tick", &0).await.unwrap();
    assert_eq!(recv(&mut client_rx, 5000).await, r#"42["tick",0]"#);
    client_emit(&client_tx, "/", r#"["message","m0"]"#).await;
    assert!(next_message(&mut peer_rx).await.contains("\"m0\""));

    // Let the victim settle, then take its baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = vm_rss_kb(pid);

    // The attack, from a runtime of its own (its threads, not the peer's).
    let until = Instant::now() + ATTACK;
    let connected = Arc::new(AtomicUsize::new(0));
    let junk_written = Arc::new(AtomicUsize::new(0));
    let datagrams_sent = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (connected, junk_written) = (connected.clone(), junk_written.clone());
        let datagrams_sent = datagrams_sent.clone();
        // From several hosts (127.0.0.2 and up): one host gets a few slots only.
        attack(16, STRANGERS, Duration::from_secs(5), move |endpoint, i| {
            stranger(
                endpoint,
                victim_mesh,
                i < JUNK_SENDERS,
                until,
                connected.clone(),
                junk_written.clone(),
                datagrams_sent.clone(),
            )
        })
    };

    // Meanwhile: broadcasts both ways every 100 ms, and the victim's memory sampled.
    let mut peak = baseline;
    let mut sent = 0u32;
    while Instant::now() < until {
        sent += 1;
        peer.io.emit("tick", &sent).await.unwrap();
        client_emit(&client_tx, "/", &format!(r#"["message","m{sent}"]"#)).await;
        peak = peak.max(vm_rss_kb(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(vm_rss_kb(pid));
    tokio::task::spawn_blocking(move || attacker.join())
        .await
        .expect("join")
        .expect("the attack ran");

    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "victim VmRSS: baseline {baseline} kB, peak {peak} kB during the attack (+{growth} kB); \
         {} of {STRANGERS} strangers completed TLS, {} kB of junk the node gave credit for, \
         {} kB of datagrams sent; {sent} broadcasts each way",
        connected.load(Ordering::Relaxed),
        junk_written.load(Ordering::Relaxed) / 1024,
        datagrams_sent.load(Ordering::Relaxed) / 1024,
    );

    // Every broadcast made during the attack arrived, in order, both ways.
    let mut ticks = 0;
    let mut messages = 0;
    for i in 1..=sent {
        match tokio::time::timeout(Duration::from_secs(5), client_rx.recv()).await {
            Ok(Some(p)) if String::from(p.clone()) == format!(r#"42["tick",{i}]"#) => ticks += 1,
            other => panic!("peer → victim's client, broadcast {i} of {sent}: got {other:?}"),
        }
    }
    for i in 1..=sent {
        let got = within(Duration::from_secs(6), next_message(&mut peer_rx)).await;
        match got {
            Some(got) if got.contains(&format!("\"m{i}\"")) => messages += 1,
            other => panic!("victim's client → peer, message {i} of {sent}: got {other:?}"),
        }
    }
    eprintln!("delivered during the attack: {ticks} ticks, {messages} messages of {sent}");
    // The attack reached the mesh: strangers did complete TLS (at least as many as the node
    // serves at once, halved for the ones cut at their deadline).
    let connected = connected.load(Ordering::Relaxed);
    assert!(
        connected >= 32,
        "only {connected} strangers completed TLS: the attack did not reach the mesh"
    );
    // A write only completes within the flow-control credit the node grants: junk written
    // is junk the node agreed to buffer for a stranger.
    let junk = junk_written.load(Ordering::Relaxed);
    assert!(
        junk <= JUNK_SENDERS * MAX_CREDIT_PER_STRANGER,
        "strangers got credit for {junk} bytes of junk before proving anything"
    );
    assert!(
        growth < MAX_GROWTH_KB,
        "200 unauthenticated connections grew the node by {growth} kB (baseline {baseline} kB, \
         peak {peak} kB)"
    );
    drop(victim);
}

/// Connections the flooding stranger keeps open, dialling again each one the node closes.
const FLOOD_CONNECTIONS: usize = 192;
/// Source addresses (127.0.0.2 and up) the flood comes from, to look like several hosts.
const FLOOD_SOURCES: usize = 16;
/// Broadcasts each way once the new node can be reached.
const FLOOD_BROADCASTS: usize = 20;
/// Bound for the new node's broadcasts to reach the victim at all: generous, as is every
/// bound of this test (the outcome is checked, not the speed).
const FLOOD_REACH: Duration = Duration::from_secs(30);

/// What the flooding stranger did.
#[derive(Default)]
struct FloodCounts {
    /// Connections dialled.
    attempts: AtomicUsize,
    /// Connections that completed TLS with the node.
    completed: AtomicUsize,
    /// Of which the node has not closed yet.
    held: AtomicUsize,
}

/// One connection of the flood: dial, complete TLS, hold the connection proving nothing
/// until the node closes it, dial again; until `stop` (bounded in count too).
async fn flooder(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<FloodCounts>,
) {
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        counts.attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(connecting) = endpoint.connect(addr, "socketioxide-cluster") else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match connecting.await {
            Ok(conn) => {
                counts.completed.fetch_add(1, Ordering::Relaxed);
                counts.held.fetch_add(1, Ordering::Relaxed);
                while !stop.load(Ordering::Relaxed) {
                    if tokio::time::timeout(Duration::from_millis(100), conn.closed())
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
                counts.held.fetch_sub(1, Ordering::Relaxed);
            }
            // Refused: dial again at once (a few ms apart, not to spin).
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Strangers that complete TLS and never prove the secret hold every connection they can at
/// the victim's mesh and redial each one it closes, from several source addresses, while a
/// new node with the secret joins through the victim. Its constructor returns, and from then
/// on its broadcasts reach the victim's client, the first one included, and the victim's
/// client's reach it: the strangers crowd out nobody.
///
/// The victim's peer timeout is 10 s, as an operator may set it for a slow network: it is
/// for proven peers, and must not lengthen what a stranger holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_and_broadcasts_through_a_stranger_flood() {
    init_tracing();
    let cluster_id = format!("flood-{}", std::process::id());
    let (victim_gossip, victim_mesh) = (free_udp_port(), free_udp_port());
    let (victim, victim_http) = start_victim(
        &cluster_id,
        victim_gossip,
        victim_mesh,
        &[("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS", "10000".into())],
    );
    let (client_tx, mut client_rx, _) = polling_client(victim_http, "/").await;

    // The flood, from a runtime of its own (its threads, not the new node's).
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let attacker = {
        let (stop, counts) = (stop.clone(), counts.clone());
        attack(
            FLOOD_SOURCES,
            FLOOD_CONNECTIONS,
            Duration::from_secs(120),
            move |endpoint, _| flooder(endpoint, victim_mesh, stop.clone(), counts.clone()),
        )
    };
    // The flood holds all the room the node gives strangers for connections still proving
    // the secret (48 of 64; all 64 before strangers were kept out of the rest), and soon
    // whatever else it gets.
    assert!(
        wait_until(Duration::from_secs(20), || counts
            .held
            .load(Ordering::Relaxed)
            >= 48)
        .await,
        "the flood did not reach the mesh: {} connections held",
        counts.held.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = counts.held.load(Ordering::Relaxed);

    // A new node with the secret, with the defaults a user gets, joins through the victim.
    let started = Instant::now();
    let newcomer = start_gossip(
        GossipAdapterConfig::new()
            .with_cluster_id(&cluster_id)
            .with_node_name("newcomer")
            .with_gossip_addr("127.0.0.1:0".parse().unwrap())
            .with_mesh_addr("127.0.0.1:0".parse().unwrap())
            .with_seeds([victim_gossip.to_string()])
            .with_secret(SECRET),
    )
    .await;
    let constructed = started.elapsed();
    newcomer
        .io
        .ns("/", async |_: SocketRef<Adapter>| {})
        .await
        .unwrap();
    let (_newcomer_tx, mut newcomer_rx, _) = dummy(&newcomer.io, "/").await;

    // Its broadcasts, re-sent until one reaches the victim's client: the first one must.
    let mut sent = 0usize;
    let mut first = None;
    let reach_by = Instant::now() + FLOOD_REACH;
    while first.is_none() && Instant::now() < reach_by {
        sent += 1;
        newcomer.io.emit("tick", &sent).await.unwrap();
        if let Ok(Some(p)) =
            tokio::time::timeout(Duration::from_millis(200), client_rx.recv()).await
        {
            first = Some((String::from(p), started.elapsed()));
        }
    }
    let flood = (
        counts.attempts.load(Ordering::Relaxed),
        counts.completed.load(Ordering::Relaxed),
    );
    eprintln!(
        "during a flood of {FLOOD_CONNECTIONS} stranger connections from {FLOOD_SOURCES} \
         addresses ({held} held open when the new node started, {} dialled and {} completed \
         TLS by now): the new node's constructor returned after {constructed:?}; its first \
         broadcast to arrive at the victim: {:?}",
        flood.0, flood.1, first,
    );
    let Some((got, _)) = first else {
        panic!("none of the new node's {sent} broadcasts reached the victim in {FLOOD_REACH:?}")
    };
    assert_eq!(
        got, r#"42["tick",1]"#,
        "the new node's first broadcast was lost ({sent} sent)"
    );

    // Both ways from now on, every broadcast arrives, in order.
    for i in 2..=sent {
        assert_eq!(
            recv(&mut client_rx, 5000).await,
            format!(r#"42["tick",{i}]"#)
        );
    }
    for i in sent + 1..=sent + FLOOD_BROADCASTS {
        newcomer.io.emit("tick", &i).await.unwrap();
        client_emit(&client_tx, "/", &format!(r#"["message","m{i}"]"#)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in sent + 1..=sent + FLOOD_BROADCASTS {
        assert_eq!(
            recv(&mut client_rx, 5000).await,
            format!(r#"42["tick",{i}]"#)
        );
        // The new node's socket gets its own node's ticks too: skipped.
        let got = next_message(&mut newcomer_rx).await;
        assert!(got.contains(&format!("\"m{i}\"")), "message {i}: got {got}");
    }

    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || attacker.join())
        .await
        .expect("join")
        .expect("the flood ran");
    eprintln!(
        "flood: {} connections dialled, {} completed TLS",
        counts.attempts.load(Ordering::Relaxed),
        counts.completed.load(Ordering::Relaxed)
    );
    drop(victim);
}
