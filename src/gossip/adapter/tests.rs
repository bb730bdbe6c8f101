//! The adapter on a real node, against a peer (a node holding the secret) that sends what a
//! well-behaved node never would.

use std::{cell::Cell, time::Duration};

use socketioxide::{SocketIo, adapter::Emitter, extract::SocketRef};

use super::*;
use crate::{
    gossip::mesh::tests::capture_logs,
    gossip::node::tests::{config, until},
    gossip::wire::{PacketData, Request, Value, WirePacket},
};

type A = GossipAdapter<Emitter>;

thread_local! {
    /// Panics on this thread (a current-thread runtime runs every task of the test on it).
    static PANICS: Cell<u32> = const { Cell::new(0) };
}

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.with(|p| p.set(p.get() + 1));
        previous(info);
    }));
}

/// A broadcast to every socket of `/`, as `io.emit` sends it.
fn broadcast(data: PacketData) -> Frame {
    let mut opts = BroadcastOptions::default();
    opts.add_flag(BroadcastFlags::Broadcast);
    Frame::Request(Request {
        ns: "/".into(),
        id: Id(*b"rrrrrrrrrrrrrrrr"),
        origin: Id(*b"oooooooooooooooo"),
        kind: RequestKind::Broadcast(WirePacket {
            ns: "/".into(),
            data,
        }),
        opts: convert::opts(&opts),
        ack_timeout_ms: None,
    })
}

/// Node `a` of `cluster`, serving `/` through this adapter with a socket connected there
/// (its halves), and node `b`, a bare node that sends what a test crafts, once each is a
/// member of the other.
async fn a_and_b(
    cluster: &str,
) -> (
    impl Sized + use<>,
    impl Sized + use<>,
    tokio::sync::mpsc::Receiver<engineioxide::Packet>,
    Arc<Node>,
    Arc<Node>,
) {
    let ctr = GossipAdapterCtr::new(config(cluster, "a", None))
        .await
        .unwrap();
    let a = ctr.node.clone();
    let (svc, io) = SocketIo::builder().with_adapter::<A>(ctr).build_svc();
    io.ns("/", async |_: SocketRef<A>| {}).await.unwrap();
    let (tx, mut rx) = io.new_dummy_sock("/", ()).await;
    let connect = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(matches!(connect, Ok(Some(_))), "the socket connected");

    let b = Node::start(&config(cluster, "b", Some(a.addrs().0)))
        .await
        .unwrap();
    let formed = until(Duration::from_secs(20), || {
        a.members().len() == 1 && b.members().first().is_some_and(|m| m.hosts("/"))
    })
    .await;
    assert!(formed, "a and b are members of each other");
    ((svc, io), tx, rx, a, b)
}

/// A peer broadcasts a msgpack payload to a node whose namespace uses the common (JSON)
/// parser, which panics on one. The node refuses it: the link closes with a logged reason,
/// nothing panics, nothing reaches the local socket, and the peer's next (valid) broadcast
/// arrives over a new connection.
#[tokio::test]
async fn a_payload_of_another_parser_closes_the_link_without_a_panic() {
    let (logs, _guard) = capture_logs();
    count_panics();
    let (_io, _tx, mut rx, a, b) = a_and_b(&format!("crafted-{}", std::process::id())).await;

    let to_a = [a.me().clone()];
    let msgpack = Value::Bytes(Bytes::from_static(&[0x92, 0xa1, 0x65, 0x01]));
    b.send(
        To::Peers(&to_a),
        &broadcast(PacketData::Event(msgpack, None)),
        false,
    )
    .await
    .unwrap();
    // Re-sent until it arrives: the frames right after the bad one die with its link.
    let mut got = None;
    for i in 0..100 {
        let text = Value::Str(format!("[\"ok\",{i}]").into(), None);
        b.send(
            To::Peers(&to_a),
            &broadcast(PacketData::Event(text, None)),
            false,
        )
        .await
        .unwrap();
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            got = Some(String::from(p));
            break;
        }
    }
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let got = got.unwrap_or_else(|| panic!("a valid broadcast reaches the socket again:\n{text}"));
    assert!(got.starts_with(r#"42["ok","#), "only the valid one: {got}");
    assert_eq!(PANICS.with(Cell::get), 0, "nothing panicked");
    assert!(
        text.lines().any(|l| l.contains("closing mesh connection")
            && l.contains("msgpack parser")
            && l.contains("common (JSON) parser")),
        "the reason is logged:\n{text}"
    );
    b.shutdown().await;
    a.shutdown().await;
}

/// A peer sends requests this node cannot apply (a socket id that is none), again and
/// again: each is dropped, and the node logs them at a bounded rate, not once each.
#[tokio::test]
async fn requests_dropped_are_logged_at_a_bounded_rate() {
    let (logs, _guard) = capture_logs();
    let (_io, _tx, _rx, a, b) = a_and_b(&format!("dropped-{}", std::process::id())).await;

    let to_a = [a.me().clone()];
    let Frame::Request(mut bad) =
        broadcast(PacketData::Event(Value::Str("[\"x\"]".into(), None), None))
    else {
        unreachable!()
    };
    bad.opts.sid = Some(Id([0xff; 16]));
    for _ in 0..50 {
        b.send(To::Peers(&to_a), &Frame::Request(bad.clone()), false)
            .await
            .unwrap();
    }
    // Frames are handled in order: once a confirmed message is handled, so are they.
    b.send_service(&to_a, "none", Bytes::new(), true)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request dropped"))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "50 requests dropped, logged in {} lines: {lines:#?}",
        lines.len()
    );
    b.shutdown().await;
    a.shutdown().await;
}
