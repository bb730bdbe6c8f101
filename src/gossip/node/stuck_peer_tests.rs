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
    gossip::config::GossipAdapterConfig,
    gossip::peer::PeerId,
    gossip::wire::{self, Frame, Id, Opts, PacketData, RequestKind, Value, WirePacket},
};

/// The default peer timeout.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
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

    fn selects_sockets(&self, _: &wire::Request) -> bool {
        true
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
            data: PacketData::Event(Value::Str(body.into(), None), None),
        }),
        opts: Opts::default(),
        ack_timeout_ms: None,
    })
}

async fn start_with(
    cluster: &str,
    name: &str,
    seed: Option<std::net::SocketAddr>,
    settings: impl FnOnce(GossipAdapterConfig) -> GossipAdapterConfig,
) -> Arc<Node> {
    let config = settings(config(cluster, name, seed).with_request_timeout(REQUEST_TIMEOUT));
    Node::start(&config).await.expect("node starts")
}

/// Nodes `a`, `b` and `stuck`, each started with `settings`, once they formed a cluster and
/// a first broadcast from `a` reached the handlers of both others.
struct Three {
    a: Arc<Node>,
    b: Arc<Node>,
    stuck: Arc<Node>,
    on_b: Arc<Handler>,
    on_stuck: Arc<Handler>,
    /// `b` and `stuck`.
    targets: Vec<PeerId>,
}

async fn three(
    cluster: &str,
    settings: impl Fn(GossipAdapterConfig) -> GossipAdapterConfig + Copy,
) -> Three {
    let a = start_with(cluster, "a", None, settings).await;
    let seed = Some(a.addrs().0);
    let b = start_with(cluster, "b", seed, settings).await;
    let stuck = start_with(cluster, "stuck", seed, settings).await;
    let (on_b, on_stuck) = (Arc::new(Handler::default()), Arc::new(Handler::default()));
    // The nodes hold their handlers weakly: `on_b` and `on_stuck` keep them alive.
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
    a.send(To::Peers(&targets), &broadcast("first".into()), false)
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(10), || got(&on_b) == 1
            && got(&on_stuck) == 1)
        .await,
        "the first broadcast reached both"
    );
    Three {
        a,
        b,
        stuck,
        on_b,
        on_stuck,
        targets,
    }
}

/// Broadcasts a handler received.
fn got(h: &Handler) -> u64 {
    h.broadcasts.load(Ordering::Relaxed)
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
    let Three {
        a,
        b,
        stuck,
        on_b,
        on_stuck,
        targets,
    } = three(&cluster, |c| c.with_peer_timeout(PEER_TIMEOUT)).await;

    // The stuck node stops reading. A burst of 20,000 broadcasts of 1 KiB, each sent at its
    // first poll and none waiting for anyone: far more than the stuck node's QUIC windows
    // hold, within the default budget of each peer's send queue. The healthy peer gets
    // every one.
    let stall = Stall::start(&on_stuck);
    let frame = broadcast("x".repeat(1024));
    let sent = 20_000;
    for i in 0..sent {
        send_at_once(&a, &targets, &frame, &format!("broadcast {i}"));
    }
    assert!(
        until(Duration::from_secs(30), || got(&on_b) == sent + 1).await,
        "b got every broadcast: {} of {} ({} dropped for b, {} slow peers cut)",
        got(&on_b),
        sent + 1,
        a.mesh.metrics().drops.of(&b.me().name),
        a.slow_peers_disconnected()
    );

    // A request to both, for a namespace neither hosts: b says so, and the stuck node is
    // no longer waited for (it was disconnected) well before the request timeout, while a
    // keeps broadcasting (as an application would), every send done at once. A broadcast
    // goes first: if the stuck peer was already cut and is connected to afresh, its reader
    // blocks on that broadcast on the new connection, before the request.
    send_at_once(&a, &targets, &frame, "a broadcast before the request");
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
    // The broadcast before the request, and those sent while it waits.
    let mut sent_meanwhile = 1;
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
    let dropped = a.frames_dropped();
    assert!(dropped > 0, "the drops for the stuck peer are counted");
    assert_eq!(
        a.mesh.metrics().drops.of(&b.me().name),
        0,
        "nothing for the healthy peer was dropped"
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
         dropped once the stuck peer was cut, {} in all; {} slow peers disconnected",
        a.frames_dropped(),
        a.slow_peers_disconnected()
    );
    for node in [a, b, stuck] {
        node.shutdown().await;
    }
}

/// A peer whose send queue goes past its byte budget is cut as a slow consumer at once,
/// long before the peer timeout could cut it (here 30 s), and the node never holds more
/// than the budget for it; the healthy peer, whose queue stays within the budget, gets
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_past_its_byte_budget_is_cut_as_a_slow_consumer_and_the_other_gets_everything() {
    const BUDGET: usize = 1024 * 1024;
    let cluster = format!("budget-peer-{}", std::process::id());
    let settings = |c: GossipAdapterConfig| {
        c.with_peer_timeout(Duration::from_secs(30))
            .with_max_frame_size(64 * 1024)
            .with_peer_queue_bytes(BUDGET)
    };
    let Three {
        a,
        b,
        stuck,
        on_b,
        on_stuck,
        targets,
    } = three(&cluster, settings).await;

    // The stuck node stops reading; 8 MiB go to both in slices of 256 KiB (a quarter of the
    // budget), each sent at once, the healthy peer catching up between slices.
    let stall = Stall::start(&on_stuck);
    let frame = broadcast("x".repeat(1024));
    let (slices, per_slice) = (32, 256);
    let mut most_held = 0;
    let started = std::time::Instant::now();
    for slice in 0..slices {
        for _ in 0..per_slice {
            send_at_once(&a, &targets, &frame, "a broadcast");
            let held = a
                .peer_stats()
                .iter()
                .find(|p| p.member.node_name == "stuck")
                .map_or(0, |p| p.queue_bytes);
            most_held = most_held.max(held);
        }
        assert!(
            until(Duration::from_secs(10), || got(&on_b)
                == 1 + (slice + 1) * per_slice)
            .await,
            "b got slice {slice}: {}",
            got(&on_b)
        );
    }
    let sent = slices * per_slice;
    assert!(
        until(Duration::from_secs(10), || a.slow_peers_disconnected() >= 1).await,
        "the stuck peer was cut as a slow consumer"
    );
    let cut_after = started.elapsed();
    assert!(
        cut_after < Duration::from_secs(30),
        "cut by its budget, not by the peer timeout (30 s): {cut_after:?}"
    );
    assert!(most_held <= BUDGET, "held {most_held} bytes for it");
    assert!(
        a.mesh.metrics().drops.of("stuck") > 0,
        "its drops are counted"
    );
    assert_eq!(
        a.mesh.metrics().drops.of("b"),
        0,
        "nothing for b was dropped"
    );
    assert_eq!(got(&on_b), 1 + sent, "b got everything");
    println!(
        "{sent} broadcasts of 1 KiB to a healthy and a stuck peer (budget {BUDGET} bytes): \
         at most {most_held} bytes held for the stuck one, cut after {cut_after:?}; {} \
         frames dropped for it",
        a.mesh.metrics().drops.of("stuck")
    );
    drop(stall);
    for node in [a, b, stuck] {
        node.shutdown().await;
    }
}

/// The memory a node takes while a peer hangs, with the default budgets: 3 nodes in this
/// process, one stops reading, and 160 MiB of broadcasts of 16 KiB go to both others in
/// slices of 8 MiB (the healthy peer catching up between slices). Prints the most bytes
/// held for the hung peer and the growth of the process's peak memory (VmHWM, all three
/// nodes). A measurement, not an assertion beyond the budget: run it with
/// `cargo test --all-features --release --lib -- --ignored --nocapture memory_during_a_hang`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, run by hand"]
async fn memory_during_a_hang() {
    use crate::proc_status::status_bytes;
    let cluster = format!("hang-memory-{}", std::process::id());
    let Three {
        a,
        b,
        stuck,
        on_b,
        on_stuck,
        targets,
    } = three(&cluster, |c| c).await;
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (rss_before, hwm_before) = (status_bytes("VmRSS"), status_bytes("VmHWM"));

    let stall = Stall::start(&on_stuck);
    let frame = broadcast("x".repeat(16 * 1024));
    let (slices, per_slice) = (20, 512);
    let (mut held_for_stuck, mut held_by_a) = (0, 0);
    for slice in 0..slices {
        for _ in 0..per_slice {
            send_at_once(&a, &targets, &frame, "a broadcast");
        }
        let caught_up = 1 + (slice + 1) * per_slice;
        for _ in 0..1000 {
            let stuck_bytes = a
                .peer_stats()
                .iter()
                .find(|p| p.member.node_name == "stuck")
                .map_or(0, |p| p.queue_bytes);
            held_for_stuck = held_for_stuck.max(stuck_bytes);
            held_by_a = held_by_a.max(a.queued_bytes());
            if got(&on_b) >= caught_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let hwm = status_bytes("VmHWM");
    drop(stall);
    println!(
        "{} MiB of 16 KiB broadcasts to a healthy and a hung peer: at most {} KiB queued for \
         the hung one (budget {} KiB), {} KiB by node a in all; {} slow peers cut, {} frames \
         dropped for it, b got {} of {}; process VmHWM {} KiB before ({} KiB resident), {} KiB \
         during the hang (+{} KiB)",
        slices * per_slice * 16 / 1024,
        held_for_stuck / 1024,
        crate::gossip::config::DEFAULT_PEER_QUEUE_BYTES / 1024,
        held_by_a / 1024,
        a.slow_peers_disconnected(),
        a.mesh.metrics().drops.of("stuck"),
        got(&on_b),
        1 + slices * per_slice,
        hwm_before / 1024,
        rss_before / 1024,
        hwm / 1024,
        hwm.saturating_sub(hwm_before) / 1024,
    );
    assert!(held_for_stuck <= crate::gossip::config::DEFAULT_PEER_QUEUE_BYTES);
    for node in [a, b, stuck] {
        node.shutdown().await;
    }
}
