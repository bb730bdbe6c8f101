//! Answers that cannot cross to the requester (beyond a list bound of the wire, or larger
//! than a frame) are refused by the node that would send them: the requester gets a clear
//! error at once, instead of a closed link (a list beyond its bound) or a wait for the
//! whole request timeout (a frame too large). Two real nodes on 127.0.0.1.

use std::time::Duration;

use socketioxide::{SocketIo, adapter::Emitter, extract::SocketRef};

use super::*;
use crate::{
    gossip::mesh::tests::capture_logs,
    gossip::node::tests::{config, lines_with, until},
};

type A = GossipAdapter<Emitter>;

/// A node of `cluster` serving `/`, with its adapter's node.
async fn node(
    cluster: &str,
    name: &str,
    seed: Option<std::net::SocketAddr>,
    max_frame_size: Option<usize>,
) -> (Arc<Node>, SocketIo<A>) {
    let mut c = config(cluster, name, seed);
    if let Some(max) = max_frame_size {
        c = c.with_max_frame_size(max);
    }
    let ctr = GossipAdapterCtr::new(c).await.unwrap();
    let node = ctr.node.clone();
    let (_svc, io) = SocketIo::builder().with_adapter::<A>(ctr).build_svc();
    io.ns("/", async |_: SocketRef<A>| {}).await.unwrap();
    (node, io)
}

/// Nodes `a` and `b`, once each knows the other hosts `/`.
async fn pair(
    cluster: &str,
    max_frame_size: Option<usize>,
) -> (Arc<Node>, SocketIo<A>, Arc<Node>, SocketIo<A>) {
    let (a, io_a) = node(cluster, "a", None, max_frame_size).await;
    let (b, io_b) = node(cluster, "b", Some(a.addrs().0), max_frame_size).await;
    let hosts = |n: &Node| {
        n.members()
            .first()
            .is_some_and(|m| m.hosts("/") && m.server_id.is_some())
    };
    let formed = until(Duration::from_secs(20), || hosts(&a) && hosts(&b)).await;
    assert!(formed, "a and b host / for each other");
    (a, io_a, b, io_b)
}

/// A socket of `io`, connected.
async fn socket(io: &SocketIo<A>) -> tokio::sync::mpsc::Receiver<engineioxide::Packet> {
    let (tx, mut rx) = io.new_dummy_sock("/", ()).await;
    std::mem::forget(tx);
    let connected = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(matches!(connected, Ok(Some(_))), "the socket connected");
    rx
}

/// The link `from` sends its frames to `to` on.
fn link_id(from: &Node, to: &Node) -> Option<crate::gossip::mesh::ConnId> {
    from.link_to(to.me()).map(|l| l.id())
}

/// Every log line about a link between nodes closed.
fn closed_links(logs: &std::sync::Mutex<Vec<u8>>) -> Vec<String> {
    let mut lines = lines_with(logs, "closing mesh connection");
    lines.extend(lines_with(logs, "mesh connection lost"));
    lines
}

/// The link from b to a is the one it was (`link`) and carries what a sends next to
/// `on_b`, a socket of b; no node logged a link closed. Then both nodes stop.
async fn still_linked(
    io_a: &SocketIo<A>,
    on_b: &mut tokio::sync::mpsc::Receiver<engineioxide::Packet>,
    (a, b, link): (&Node, &Node, Option<crate::gossip::mesh::ConnId>),
    logs: &std::sync::Mutex<Vec<u8>>,
) {
    io_a.emit("after", &1).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), on_b.recv()).await;
    assert_eq!(
        got.ok().flatten().map(String::from).as_deref(),
        Some(r#"42["after",1]"#)
    );
    assert_eq!(link_id(b, a), link, "the same link");
    assert_eq!(closed_links(logs), Vec::<String>::new());
    b.shutdown().await;
    a.shutdown().await;
}

/// b's sockets are in one room more than a list of the wire holds: b refuses its answer to
/// `rooms()`, a's call fails naming why, and the link b answers on stays open.
#[tokio::test]
async fn a_rooms_answer_beyond_the_list_bound_is_refused_by_its_sender() {
    let (logs, _guard) = capture_logs();
    let cluster = format!("rooms-bound-{}", std::process::id());
    let (a, io_a, b, io_b) = pair(&cluster, None).await;
    let mut on_b = socket(&io_b).await;
    let rooms: Vec<String> = (0..=wire::MAX_ROOMS).map(|i| format!("r{i}")).collect();
    io_b.local().join(rooms).await.unwrap();
    let link = link_id(&b, &a);
    assert!(link.is_some(), "b has a link to a");

    let err = io_a.rooms().await.expect_err("b's answer cannot cross");
    let text = err.to_string();
    assert!(
        text.contains("65537 room names") && text.contains("65536"),
        "{text}"
    );

    still_linked(&io_a, &mut on_b, (&a, &b, link), &logs).await;
}

/// b's answer to `fetch_sockets()` is larger than a frame: b refuses it, and a's call fails
/// naming why, at once rather than after the request timeout.
#[tokio::test]
async fn a_fetch_sockets_answer_larger_than_a_frame_is_refused_by_its_sender() {
    let (logs, _guard) = capture_logs();
    let cluster = format!("sockets-bound-{}", std::process::id());
    let (a, io_a, b, io_b) = pair(&cluster, Some(4096)).await;
    let mut sockets = Vec::new();
    for _ in 0..200 {
        sockets.push(socket(&io_b).await);
    }
    let link = link_id(&b, &a);

    let err = io_a
        .fetch_sockets()
        .await
        .expect_err("b's answer cannot cross");
    let text = err.to_string();
    assert!(text.contains("maximum frame size of 4096"), "{text}");

    still_linked(&io_a, &mut sockets[0], (&a, &b, link), &logs).await;
}
