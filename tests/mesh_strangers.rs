//! The mesh gives strangers nothing: a node in a child process (the `cluster_node` test server)
//! is hit with 200 QUIC connections that complete TLS with the mesh ALPN but never prove the
//! cluster secret, a quarter of them also opening streams and pushing junk. Its resident
//! memory (`VmRSS`, /proc) must grow by less than 6 MB (about 3 MB measured), while a real peer with the secret
//! keeps exchanging broadcasts with it both ways.
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
        atomic::{AtomicUsize, Ordering},
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
/// The bound on the node's growth: docs/deploying.md says about 3 MB (2,640 to 3,072 kB
/// over three runs), this leaves room for a loaded machine.
const MAX_GROWTH_KB: u64 = 6 * 1024;
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

/// The victim: `cluster_node` in a child process, and its HTTP address.
fn start_victim(cluster_id: &str, gossip: SocketAddr, mesh: SocketAddr) -> (Spawned, SocketAddr) {
    let log = std::env::temp_dir().join(format!("mesh-strangers-{}.log", std::process::id()));
    let started = start_cluster_node(
        &[
            ("RUST_LOG", "info".into()),
            ("SOCKETIO_CLUSTER_ID", cluster_id.into()),
            ("SOCKETIO_CLUSTER_NODE_NAME", "victim".into()),
            ("SOCKETIO_CLUSTER_GOSSIP_ADDR", gossip.to_string()),
            ("SOCKETIO_CLUSTER_MESH_ADDR", mesh.to_string()),
            ("SOCKETIO_CLUSTER_SECRET", SECRET.into()),
        ],
        &log,
    );
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

/// A QUIC client that speaks the mesh's ALPN but has no secret.
fn stranger_endpoint() -> quinn::Endpoint {
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
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    endpoint.set_default_client_config(client);
    endpoint
}

/// One stranger: connect, maybe push junk on every stream the node lets it open, then hold
/// the connection until `until`. Counts completed handshakes in `connected`, and junk
/// accepted by the node's flow control in `junk_written`.
async fn stranger(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    junk: bool,
    until: Instant,
    connected: Arc<AtomicUsize>,
    junk_written: Arc<AtomicUsize>,
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
    let (victim, victim_http) = start_victim(&cluster_id, victim_gossip, victim_mesh);
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
    let attack = {
        let (connected, junk_written) = (connected.clone(), junk_written.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("attacker runtime");
            rt.block_on(async move {
                let endpoints: Vec<quinn::Endpoint> = (0..4).map(|_| stranger_endpoint()).collect();
                let attackers: Vec<_> = (0..STRANGERS)
                    .map(|i| {
                        tokio::spawn(stranger(
                            endpoints[i % endpoints.len()].clone(),
                            victim_mesh,
                            i < JUNK_SENDERS,
                            until,
                            connected.clone(),
                            junk_written.clone(),
                        ))
                    })
                    .collect();
                for a in attackers {
                    let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
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
    tokio::task::spawn_blocking(move || attack.join())
        .await
        .expect("join")
        .expect("the attack ran");

    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "victim VmRSS: baseline {baseline} kB, peak {peak} kB during the attack (+{growth} kB); \
         {} of {STRANGERS} strangers completed TLS, {} kB of junk the node gave credit for; {sent} broadcasts each way",
        connected.load(Ordering::Relaxed),
        junk_written.load(Ordering::Relaxed) / 1024,
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
