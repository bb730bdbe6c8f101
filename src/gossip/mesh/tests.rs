//! The mesh over real QUIC sockets on 127.0.0.1: handshakes, refusals, frame order, close
//! reasons, and the logs a peer can cause.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use quinn::{Connection, VarInt};

use super::auth::Keyring;
use super::*;
use crate::gossip::wire::{self, Frame, LEN_PREFIX, MAGIC, VERSION};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

#[derive(Debug)]
enum Event {
    Frame(PeerId, Box<Frame>),
    Connected(PeerId),
    Closed(PeerId, super::Closed),
}

struct Recorder(UnboundedSender<Event>);

impl Inbound for Recorder {
    fn on_frame(&self, from: &PeerId, frame: Frame) -> Result<(), String> {
        let _ = self.0.send(Event::Frame(from.clone(), Box::new(frame)));
        Ok(())
    }
    fn on_peer_connected(&self, peer: &PeerId, _: ConnId, _: PeerAddrs) -> Result<(), String> {
        let _ = self.0.send(Event::Connected(peer.clone()));
        Ok(())
    }
    fn on_connection_closed(&self, peer: &PeerId, _: ConnId, reason: &super::Closed) {
        let _ = self.0.send(Event::Closed(peer.clone(), reason.clone()));
    }
}

fn peer(name: &str) -> PeerId {
    PeerId {
        name: name.into(),
        generation: 1,
    }
}

/// A mesh on loopback with an event recorder.
fn node(name: &str, secret: Option<&str>) -> (Arc<Mesh>, Arc<Recorder>, UnboundedReceiver<Event>) {
    let keyring = Keyring::new("c".into(), secret.map(|s| vec![auth::key(s)]));
    let mut mesh = Mesh::bind(
        "127.0.0.1:0".parse().unwrap(),
        None,
        keyring,
        None,
        1024,
        Duration::from_secs(2),
        Budgets::new(64 * 1024, 256 * 1024),
    )
    .unwrap();
    let addr = mesh.local_addr().unwrap();
    mesh.set_identity(
        &peer(name),
        PeerAddrs {
            mesh: addr,
            gossip: addr,
        },
    );
    let (tx, rx) = unbounded_channel();
    (Arc::new(mesh), Arc::new(Recorder(tx)), rx)
}

async fn next(rx: &mut UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("event in time")
        .expect("recorder open")
}

/// The next event that is not a connection notice.
async fn next_frame_or_close(rx: &mut UnboundedReceiver<Event>) -> Event {
    loop {
        match next(rx).await {
            Event::Connected(_) => continue,
            other => return other,
        }
    }
}

fn raw(body: &[u8]) -> Bytes {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A serving "server" and a "client" connected to it with the same secret: the meshes
/// (kept alive), the client's link and the server's events.
async fn connected_pair() -> ([Arc<Mesh>; 2], Link, UnboundedReceiver<Event>) {
    let (server, server_in, server_rx) = node("server", Some("s3cret"));
    server.serve(server_in);
    let (client, client_in, _client_rx) = node("client", Some("s3cret"));
    let (who, link) = client
        .connect(
            server.local_addr().unwrap(),
            Some(&peer("server")),
            client_in,
        )
        .await
        .unwrap();
    assert_eq!(who, peer("server"));
    ([server, client], link, server_rx)
}

/// A strong secret for the tests below.
const STRONG: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

/// A raw connection from `from` to `to` that completes TLS with the mesh's ALPN and
/// proves nothing.
async fn stranger(from: &Mesh, to: &Mesh) -> Connection {
    from.endpoint
        .connect_with(
            from.client.clone(),
            to.local_addr().unwrap(),
            tls::SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_stranger_gets_no_stream_credit_and_is_cut_at_the_handshake_deadline() {
    let (server, server_in, mut server_rx) = node("server", Some(STRONG));
    server.serve(server_in);
    let (attacker, _, _) = node("stranger", Some(STRONG));

    // A stranger may open no stream for frames; it holds a slot until cut at the
    // handshake deadline (1 s), with its reason.
    let started = tokio::time::Instant::now();
    let idle = stranger(&attacker, &server).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), idle.open_uni())
            .await
            .is_err(),
        "a stranger opened a unidirectional stream"
    );
    assert_eq!(server.gate.unproven(), 1);
    let reason = tokio::time::timeout(Duration::from_secs(10), idle.closed())
        .await
        .expect("closed");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "cut after {waited:?}");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, VarInt::from_u32(CLOSE_AUTH));
            assert_eq!(&c.reason[..], b"authentication timeout");
        }
        other => panic!("expected an authentication timeout, got {other:?}"),
    }
    assert_eq!(server.gate.unproven(), 0);

    // On the handshake stream, no more than the handshake window is taken, and junk
    // longer than a hello is refused.
    let junk = stranger(&attacker, &server).await;
    let (mut send, _recv) = junk.open_bi().await.unwrap();
    let mut taken = 0;
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(200), send.write(&[0; 1000])).await {
            Ok(Ok(n)) => taken += n,
            _ => break,
        }
    }
    assert!(taken <= HANDSHAKE_WINDOW as usize, "{taken} bytes taken");
    match tokio::time::timeout(Duration::from_secs(10), junk.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, VarInt::from_u32(CLOSE_AUTH));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(server.gate.counts().failed, 2);
    assert!(server_rx.try_recv().is_err(), "a stranger became a peer");
}

#[tokio::test]
async fn authenticated_peers_exchange_frames_in_order() {
    let (_meshes, link, mut server_rx) = connected_pair().await;
    assert!(matches!(next(&mut server_rx).await, Event::Connected(p) if p == peer("client")));
    for _ in 0..50 {
        link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
    }
    for _ in 0..50 {
        assert!(
            matches!(next(&mut server_rx).await, Event::Frame(p, f) if p == peer("client") && *f == Frame::Leave)
        );
    }
}

/// The sender of frames asks its peer to acknowledge them less often than QUIC's every
/// second packet: 100 frames sent one at a time, each read before the next, bring the
/// sender an acknowledgement per 11 packets ([`handshake::ACK_ELICITING_THRESHOLD`] + 1)
/// and one per ack delay that passed
/// ([`handshake::ACK_DELAY`]), not the 50 that every second packet would. A run that took
/// so many ack delays that the two would look alike is made again, three times at most.
#[tokio::test]
async fn a_peer_is_asked_to_acknowledge_fewer_packets() {
    let (_meshes, link, mut server_rx) = connected_pair().await;
    assert!(matches!(next(&mut server_rx).await, Event::Connected(_)));
    for _ in 0..3 {
        let before = link.conn.stats();
        let started = std::time::Instant::now();
        for _ in 0..100 {
            link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
            assert!(matches!(next(&mut server_rx).await, Event::Frame(_, _)));
        }
        let delay = handshake::ACK_DELAY.as_micros() as u64;
        let delays = started.elapsed().as_micros() as u64 / delay + 1;
        let after = link.conn.stats();
        let sent = after.path.sent_packets - before.path.sent_packets;
        let acks = after.frame_rx.acks - before.frame_rx.acks;
        assert!(sent >= 100, "{sent} packets for 100 frames read one by one");
        assert!(
            after.frame_tx.ack_frequency >= 1,
            "no ACK_FREQUENCY frame sent"
        );
        // One acknowledgement once more packets than the threshold came.
        let most = sent / u64::from(handshake::ACK_ELICITING_THRESHOLD + 1) + delays + 6;
        assert!(
            acks <= most,
            "{acks} acknowledgements for {sent} packets in {delays} ack delays"
        );
        if most < sent / 2 {
            return;
        }
    }
    panic!("every run took too many ack delays to tell from an acknowledgement per second packet");
}

/// What the server sees when the client's connection ends `how`.
async fn close_seen(how: impl FnOnce(Link)) -> super::Closed {
    let (_meshes, link, mut server_rx) = connected_pair().await;
    how(link);
    match next_frame_or_close(&mut server_rx).await {
        Event::Closed(p, reason) => {
            assert_eq!(p, peer("client"));
            reason
        }
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_connection_dropped_without_a_word_does_not_read_as_leaving() {
    // quinn closes a connection whose handles are all gone with code 0: a node that
    // merely dropped a connection (replaced, timed out, failed) must not look as if it
    // left the cluster, or its peers would ignore it from then on.
    let dropped = close_seen(drop).await;
    assert_ne!(dropped, super::Closed::Leaving);
    let left = close_seen(|link| link.close(CLOSE_LEAVING, b"leaving")).await;
    assert_eq!(left, super::Closed::Leaving);
}

/// Every log line written on this thread while the returned guard lives (a
/// current-thread runtime polls every task of the test on it).
pub(crate) fn capture_logs() -> (
    Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(lines.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (lines, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn wrong_or_missing_secret_is_refused_before_any_frame() {
    const RIGHT: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";
    const WRONG: &str = "2c4e6a8b0d1f3a5c7e9b1d3f5a7c9e0b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a13";
    let (logs, _guard) = capture_logs();
    let refusals = || {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains("refused mesh connection"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (server, server_in, mut server_rx) = node("server", Some(RIGHT));
    server.serve(server_in);
    let addr = server.local_addr().unwrap();
    // The server closes a refused connection with the authentication code.
    let closed_for_auth = |err: &MeshError| {
        matches!(err, MeshError::Connect { reason, .. }
            if reason.contains("authentication failed")
                && reason.contains(&CLOSE_AUTH.to_string()))
    };

    let (wrong, wrong_in, _) = node("wrong", Some(WRONG));
    let err = wrong
        .connect(addr, None, wrong_in)
        .await
        .err()
        .expect("refused");
    assert!(closed_for_auth(&err), "{err}");
    let logged = refusals();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains(r#"node "wrong""#)
            && logged[0].contains(&AuthError::BadProof.to_string()),
        "{logged:?}"
    );

    let (insecure, insecure_in, _) = node("insecure", None);
    let err = insecure
        .connect(addr, None, insecure_in)
        .await
        .err()
        .expect("refused");
    assert!(closed_for_auth(&err), "{err}");
    let logged = refusals();
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(
        logged[1].contains(r#"node "insecure""#)
            && logged[1].contains(&AuthError::MissingProof.to_string()),
        "{logged:?}"
    );

    // The same server accepts a peer with the secret, which is the first peer it
    // sees: neither refused node was taken for a peer, nor sent it a frame.
    let (good, good_in, _) = node("good", Some(RIGHT));
    let (who, link) = good
        .connect(addr, Some(&peer("server")), good_in)
        .await
        .expect("the right secret is accepted");
    assert_eq!(who, peer("server"));
    assert!(matches!(next(&mut server_rx).await, Event::Connected(p) if p == peer("good")));
    link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
    assert!(
        matches!(next(&mut server_rx).await, Event::Frame(p, f) if p == peer("good") && *f == Frame::Leave)
    );

    // A client that expects another node name refuses the server.
    let (good, good_in, _) = node("good", Some(RIGHT));
    let err = good
        .connect(addr, Some(&peer("someone-else")), good_in)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, MeshError::Connect { reason, .. } if reason.contains("expected")),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_oversized_and_wrong_version_close_only_that_connection() {
    let (server, server_in, mut server_rx) = node("server", Some("k"));
    server.serve(server_in);
    let addr = server.local_addr().unwrap();

    // Raw UDP garbage at the QUIC port is ignored.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3], addr)
        .unwrap();

    let mut wrong_version = wire::encode(&Frame::Leave).unwrap().to_vec();
    wrong_version[LEN_PREFIX + 2] = VERSION + 1;
    let cases: Vec<(&str, Bytes, &str)> = vec![
        (
            "garbage",
            raw(&[MAGIC[0], MAGIC[1], VERSION, 0xff, 0xff, 0xff]),
            "malformed",
        ),
        ("bad magic", raw(b"hello world"), "magic"),
        (
            "oversized",
            Bytes::from(100_000u32.to_be_bytes().to_vec()),
            "exceeds",
        ),
        ("wrong version", Bytes::from(wrong_version), "version"),
    ];
    for (what, bytes, expect) in cases {
        let (client, client_in, mut client_rx) = node(what, Some("k"));
        let (_, link) = client.connect(addr, None, client_in).await.unwrap();
        link.send(bytes).unwrap();
        // The server closes that connection with a protocol error and its reason.
        match next_frame_or_close(&mut client_rx).await {
            Event::Closed(_, super::Closed::Lost(reason)) => {
                assert!(
                    reason.contains(&format!("(code {CLOSE_PROTOCOL})")),
                    "{what}: {reason}"
                );
                assert!(reason.contains(expect), "{what}: {reason}");
            }
            other => panic!("{what}: expected the connection closed, got {other:?}"),
        }
        match next_frame_or_close(&mut server_rx).await {
            Event::Closed(p, _) => assert_eq!(p, peer(what)),
            other => panic!("{what}: expected the server to drop the peer, got {other:?}"),
        }
    }

    // The node still serves a well-behaved peer.
    let (good, good_in, _) = node("good", Some("k"));
    let (_, link) = good.connect(addr, None, good_in).await.unwrap();
    link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
    assert!(
        matches!(next_frame_or_close(&mut server_rx).await, Event::Frame(p, f) if p == peer("good") && *f == Frame::Leave)
    );
}

/// A peer that breaks the protocol again and again has its connection closed every
/// time, and the node logs it at a bounded rate, not once per connection.
#[tokio::test]
async fn protocol_violations_are_logged_at_a_bounded_rate() {
    let (logs, _guard) = capture_logs();
    let (server, server_in, _server_rx) = node("server", Some(STRONG));
    server.serve(server_in);
    let addr = server.local_addr().unwrap();
    let (client, client_in, mut client_rx) = node("client", Some(STRONG));
    for i in 0..20 {
        let (_, link) = client.connect(addr, None, client_in.clone()).await.unwrap();
        link.send(raw(b"hello world")).unwrap();
        match next_frame_or_close(&mut client_rx).await {
            Event::Closed(_, super::Closed::Lost(reason)) => {
                assert!(reason.contains("magic"), "connection {i}: {reason}")
            }
            other => panic!("connection {i}: expected it closed, got {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("closing mesh connection"))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "20 violations logged in {} lines: {lines:#?}",
        lines.len()
    );
}

/// Linux: a peer whose process is gone (its runtime, and with it its socket, dropped
/// without a word) is found out by the kernel's answer to the next datagram, port
/// unreachable: its link closes as lost, with that reason, long before the peer
/// timeout. An unreachable for any other address closes nothing, and the endpoint keeps
/// working through both.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_port_unreachable_closes_the_links_to_that_address_only() {
    let (client, client_in, mut client_rx) = node("client", Some(STRONG));
    // The server on a runtime of its own, so that it can vanish like a killed process.
    let (rt, server_addr) = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            let (server, server_in, _) = node("server", Some(STRONG));
            server.serve(server_in);
            server.local_addr().unwrap()
        });
        (rt, addr)
    })
    .join()
    .unwrap();
    let (_, link) = client
        .connect(server_addr, Some(&peer("server")), client_in)
        .await
        .unwrap();

    // A datagram to a port nobody listens on: answered, and ignored.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap();
    drop(closed);
    let attempt = client
        .endpoint
        .connect_with(client.client.clone(), nobody, tls::SERVER_NAME)
        .unwrap();
    let ignored = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if client.links.counts().1 > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ignored.is_ok(), "the answer for another address was read");
    drop(attempt);
    assert!(
        link.is_open(),
        "an answer about another address closes nothing"
    );
    assert_eq!(client.links.counts().0, 0);

    // The server vanishes; the next frame to it is answered port unreachable.
    let started = tokio::time::Instant::now();
    rt.shutdown_background();
    link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
    match next_frame_or_close(&mut client_rx).await {
        Event::Closed(p, super::Closed::Lost(e)) => {
            assert_eq!(p, peer("server"));
            assert!(e.contains("port unreachable"), "{e}");
        }
        other => panic!("expected the link lost to a port unreachable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "before the peer timeout"
    );
    assert_eq!(client.links.counts().0, 1);
}
