//! A member that holds the secret and stays connected but stops reading: three real nodes
//! on loopback, one of which blocks in its frame handling (its QUIC stack keeps running,
//! so its connections stay alive and acknowledged: only the reading stops, as in a process
//! whose handler is stuck).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::FutureExt;

use super::{
    NamespaceHandler, Node, To,
    tests::{config, until},
};
use crate::{
    gossip::peer::PeerId,
    gossip::wire::{self, Frame, Id, Opts, PacketData, RequestKind, Value, WirePacket},
};

const PEER_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a blocked handler stays blocked, whatever the test does.
const MAX_STALL: Duration = Duration::from_secs(30);

/// Counts the broadcasts a node receives, by their first character; blocks (off the
/// runtime's workers) while `stalled` is set, at most [`MAX_STALL`] per frame.
#[derive(Default)]
struct Handler {
    broadcasts: AtomicU64,
    markers: AtomicU64,
    stalled: AtomicBool,
}

impl NamespaceHandler for Handler {
    fn on_request(&self, _: &PeerId, req: wire::Request) -> Result<(), String> {
        if self.stalled.load(Ordering::Relaxed) {
            tokio::task::block_in_place(|| {
                let since = std::time::Instant::now();
                while self.stalled.load(Ordering::Relaxed) && since.elapsed() < MAX_STALL {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        if let RequestKind::Broadcast(WirePacket {
            data: PacketData::Event(Value::Str(s, _), _),
            ..
        }) = req.kind
        {
            self.broadcasts.fetch_add(1, Ordering::Relaxed);
            if s.starts_with('m') {
                self.markers.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Blocks a node's handler until dropped (also when the test fails).
struct Stall(Arc<Handler>);

impl Stall {
    fn start(handler: &Arc<Handler>) -> Self {
        handler.stalled.store(true, Ordering::Relaxed);
        Self(handler.clone())
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.0.stalled.store(false, Ordering::Relaxed);
    }
}

fn broadcast(body: String) -> Frame {
    Frame::Request(wire::Request {
        ns: "/".into(),
        id: Id([b'b'; 16]),
        origin: Id([b'o'; 16]),
        kind: RequestKind::Broadcast(WirePacket {
            ns: "/".into(),
            data: PacketData::Event(Value::Str(body, None), None),
        }),
        opts: Opts::default(),
        ack_timeout_ms: None,
    })
}

async fn start(cluster: &str, name: &str, seed: Option<std::net::SocketAddr>) -> Arc<Node> {
    let config = config(cluster, name, seed)
        .with_peer_timeout(PEER_TIMEOUT)
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_stream_buffer(64);
    Node::start(&config).await.expect("node starts")
}

/// Send `frame` from `from` to `targets`: the send must be done at its first poll, that
/// is without waiting on any peer.
fn send_at_once(from: &Node, targets: &[PeerId], frame: &Frame, what: &str) {
    let sent = from.send(To::Peers(targets), frame, false).now_or_never();
    assert!(sent.is_some(), "{what}: the send waited");
    sent.unwrap().expect("encodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_stops_reading_never_slows_emits_to_the_others_and_is_disconnected() {
    let cluster = format!("stuck-peer-{}", std::process::id());
    let a = start(&cluster, "a", None).await;
    let b = start(&cluster, "b", Some(a.addrs().0)).await;
    let stuck = start(&cluster, "stuck", Some(a.addrs().0)).await;
    let (on_b, on_stuck) = (Arc::new(Handler::default()), Arc::new(Handler::default()));
    let (hb, hs): (Arc<dyn NamespaceHandler>, Arc<dyn NamespaceHandler>) =
        (on_b.clone(), on_stuck.clone());
    b.register(
        "/",
        "bbbbbbbbbbbbbbbb",
        wire::Parser::Common,
        Arc::downgrade(&hb),
    )
    .await;
    stuck
        .register(
            "/",
            "ssssssssssssssss",
            wire::Parser::Common,
            Arc::downgrade(&hs),
        )
        .await;
    assert!(
        until(Duration::from_secs(20), || [&a, &b, &stuck]
            .iter()
            .all(|n| n.members().len() == 2))
        .await,
        "the three nodes formed a cluster"
    );
    let targets = vec![b.me().clone(), stuck.me().clone()];
    // Both links are up and read: a first broadcast reaches both.
    let got = |h: &Handler| h.broadcasts.load(Ordering::Relaxed);
    a.send(To::Peers(&targets), &broadcast("first".into()), false)
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(10), || got(&on_b) == 1
            && got(&on_stuck) == 1)
        .await,
        "the first broadcast reached both"
    );

    // The stuck node stops reading. 1,000 broadcasts of 8 KiB: far more than its QUIC
    // windows and its send queue (64 frames) hold. Every send is done at its first poll;
    // the healthy peer gets every one (the sender waits for it to catch up every 50).
    let stall = Stall::start(&on_stuck);
    let frame = broadcast("x".repeat(8 * 1024));
    let sent = 1000;
    for i in 0..sent {
        send_at_once(&a, &targets, &frame, &format!("broadcast {i}"));
        if i % 50 == 49 {
            assert!(
                until(Duration::from_secs(10), || got(&on_b) > i).await,
                "b got broadcast {i}"
            );
        }
    }
    assert!(
        until(Duration::from_secs(10), || got(&on_b) == sent + 1).await,
        "b got every broadcast: {}",
        got(&on_b)
    );
    let dropped = a.frames_dropped();
    assert!(dropped > 0, "the drops for the stuck peer are counted");

    // A request to both, for a namespace neither hosts: b says so, and the stuck node is
    // no longer waited for (its frame could not be queued, or it was disconnected) well
    // before the request timeout, while a keeps broadcasting (as an application would),
    // every send done at once.
    let request = |id| {
        Frame::Request(wire::Request {
            ns: "/none".into(),
            id,
            origin: Id([b'o'; 16]),
            kind: RequestKind::FetchSockets,
            opts: Opts::default(),
            ack_timeout_ms: None,
        })
    };
    let mut pending = a
        .request(To::Peers(&targets), REQUEST_TIMEOUT, request)
        .now_or_never()
        .expect("the request: the send waited")
        .expect("encodes");
    let mut sent_meanwhile = 0;
    let mut ended = false;
    while !ended {
        tokio::select! {
            next = pending.next() => ended = next.is_none(),
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                send_at_once(&a, &targets, &frame, "a broadcast while the request waits");
                sent_meanwhile += 1;
            }
        }
    }
    assert_eq!(pending.answered(), [b.me().clone()]);
    assert_eq!(
        pending.gone(),
        [stuck.me().clone()],
        "not timed out: the stuck peer is gone"
    );
    drop(pending);

    // The stuck peer is disconnected as a slow consumer (once its link took nothing for the
    // peer timeout), while a keeps broadcasting: its QUIC stack answers all along, so no
    // idle timeout is what cut it.
    for _ in 0..1000 {
        if a.slow_peers_disconnected() > 0 {
            break;
        }
        send_at_once(
            &a,
            &targets,
            &frame,
            "a broadcast while the stuck peer is cut",
        );
        sent_meanwhile += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        a.slow_peers_disconnected() > 0,
        "the stuck peer was disconnected as a slow consumer"
    );
    assert!(
        until(Duration::from_secs(10), || got(&on_b)
            == sent + 1 + sent_meanwhile)
        .await,
        "b got every broadcast"
    );

    // Once it reads again, it gets what a sends on a fresh connection.
    drop(stall);
    let markers = || on_stuck.markers.load(Ordering::Relaxed);
    let marker = broadcast("marker".into());
    for _ in 0..500 {
        if markers() > 0 {
            break;
        }
        send_at_once(&a, &targets, &marker, "a marker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        markers() > 0,
        "the stuck peer, reading again, gets new broadcasts"
    );
    println!(
        "{sent} broadcasts to a healthy and a stuck peer, each sent at once; {dropped} frames \
         dropped by then, {} in all; {} slow peers disconnected",
        a.frames_dropped(),
        a.slow_peers_disconnected()
    );
    for node in [a, b, stuck] {
        node.shutdown().await;
    }
}
