//! `emit_with_ack` across an in-process cluster: acks from the sockets of every node, the ack
//! timeout applied to remote sockets, binary and msgpack acks.
mod common;
use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use socketioxide::{
    AckError,
    extract::{Data, SocketRef},
    socket::Sid,
};

/// Bound for an ack stream to end.
const ENDS: Duration = Duration::from_secs(15);

backend_tests! {
    emit_with_ack_collects_acks_from_every_node,
    room_ack_from_a_socket_handler_collects_remote_acks,
    ack_stream_ends_after_the_timeout_when_a_remote_socket_is_silent,
    ack_timeout_applies_to_the_sockets_of_every_node,
    binary_ack_from_a_remote_client,
    msgpack_acks_from_every_node,
    concurrent_ack_requests_get_their_own_answers,
    remote_socket_disconnecting_before_answering_yields_an_error,
    ack_request_to_an_empty_room_ends_empty;
    gossip_only: ack_stream_polled_late_keeps_every_remote_ack,
}

/// Collect an ack stream, failing if it does not end within [`ENDS`].
async fn collect<S, V>(stream: S) -> HashMap<Sid, Result<V, AckError>>
where
    S: futures_util::Stream<Item = (Sid, Result<V, AckError>)>,
{
    let items: Vec<_> = within(ENDS, stream.collect())
        .await
        .expect("the ack stream ends");
    let n = items.len();
    let map: HashMap<_, _> = items.into_iter().collect();
    assert_eq!(map.len(), n, "a socket acked twice");
    map
}

/// Read the ack request a text client got, check its event, and return its ack id.
async fn ack_request(rx: &mut ClientRx, expected: &str) -> i64 {
    let p = recv(rx, ARRIVES).await;
    let id = ack_id(&p);
    assert_eq!(p, format!("42{id}{expected}"), "unexpected ack request");
    id
}

async fn emit_with_ack_collects_acks_from_every_node(backend: Backend) {
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let mut clients = [
        dummy(&a.io, "/").await,
        dummy(&b.io, "/").await,
        dummy(&b.io, "/").await,
        dummy(&c.io, "/").await,
    ];

    let stream =
        a.io.timeout(LONG)
            .emit_with_ack::<_, String>("q", &1)
            .await
            .unwrap();
    for (i, (tx, rx, _)) in clients.iter_mut().enumerate() {
        let id = ack_request(rx, r#"["q",1]"#).await;
        answer(tx, "/", id, &format!(r#"["ans{i}"]"#)).await;
    }
    let acks = collect(stream).await;
    assert_eq!(acks.len(), clients.len(), "{acks:?}");
    for (i, (_, _, sid)) in clients.iter().enumerate() {
        assert_eq!(acks[sid].as_ref().unwrap(), &format!("ans{i}"));
    }
    let watched = clients.iter_mut().map(|(_, rx, sid)| (rx, *sid));
    nothing_arrives(&[&a, &b, &c], watched).await;
}

/// Sockets in a room on two remote nodes answer an ack request sent from a socket's handler
/// with `socket.to(room)`; the sender and sockets outside the room are not asked.
async fn room_ack_from_a_socket_handler_collects_remote_acks(backend: Backend) {
    let [a, b, c] = spawn_cluster::<3>(&backend).await;
    ns_everywhere(&[&a, &b, &c], "/", async |s: SocketRef<Adapter>| {
        s.on(
            "join",
            async |s: SocketRef<Adapter>, Data(room): Data<String>| {
                s.join(room);
                s.emit("joined", &()).unwrap();
            },
        );
        s.on(
            "ask",
            async |s: SocketRef<Adapter>, Data(room): Data<String>| {
                let stream = s
                    .to(room)
                    .timeout(LONG)
                    .emit_with_ack::<_, String>("q", "?")
                    .await
                    .unwrap();
                let mut answers: Vec<String> =
                    stream.filter_map(async |(_, r)| r.ok()).collect().await;
                answers.sort();
                s.emit("answers", &answers).unwrap();
            },
        );
    })
    .await;
    let [(ta, mut ra, sa), (tb, mut rb, sb), (tc, mut rc, sc)] =
        one_per_node([&a, &b, &c], "/").await;
    let (_tc2, mut rc2, sc2) = dummy(&c.io, "/").await; // not in the room
    for (tx, rx) in [(&ta, &mut ra), (&tb, &mut rb), (&tc, &mut rc)] {
        client_emit(tx, "/", r#"["join","r"]"#).await;
        assert_eq!(recv(rx, ARRIVES).await, r#"42["joined",null]"#);
    }

    client_emit(&ta, "/", r#"["ask","r"]"#).await;
    for (name, tx, rx) in [("b", &tb, &mut rb), ("c", &tc, &mut rc)] {
        let id = ack_request(rx, r#"["q","?"]"#).await;
        answer(tx, "/", id, &format!(r#"["from {name}"]"#)).await;
    }
    assert_eq!(
        recv(&mut ra, ARRIVES).await,
        r#"42["answers",["from b","from c"]]"#
    );
    let watched = [(&mut ra, sa), (&mut rb, sb), (&mut rc, sc), (&mut rc2, sc2)];
    nothing_arrives(&[&a, &b, &c], watched).await;
}

/// One remote socket never answers: the stream yields the answers that came and a timeout
/// error for the silent socket, and ends after the ack timeout. The timeout leaves the
/// answering sockets' round trips a margin a loaded machine does not exhaust.
async fn ack_stream_ends_after_the_timeout_when_a_remote_socket_is_silent(backend: Backend) {
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let [(ta, mut ra, sa), (tb, mut rb, sb), (_tc, mut rc, sc)] =
        one_per_node([&a, &b, &c], "/").await;

    let stream =
        a.io.timeout(Duration::from_secs(3))
            .emit_with_ack::<_, String>("q", &2)
            .await
            .unwrap();
    for (tx, rx, ans) in [(&ta, &mut ra, "a"), (&tb, &mut rb, "b")] {
        let id = ack_request(rx, r#"["q",2]"#).await;
        answer(tx, "/", id, &format!(r#"["{ans}"]"#)).await;
    }
    ack_request(&mut rc, r#"["q",2]"#).await; // c never answers
    let acks = collect(stream).await;
    assert_eq!(acks[&sa].as_ref().unwrap(), "a");
    assert_eq!(acks[&sb].as_ref().unwrap(), "b");
    assert!(
        matches!(acks.get(&sc), Some(Err(AckError::Timeout))),
        "the silent socket times out: {acks:?}"
    );
    assert_eq!(acks.len(), 3);
}

/// Sockets on several nodes are silent, a local one too: every one of them times out.
async fn ack_timeout_applies_to_the_sockets_of_every_node(backend: Backend) {
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let clients = one_per_node([&a, &b, &c], "/").await;
    // The nodes' default ack timeout is 5 s; the caller's 300 ms applies everywhere.
    let stream =
        b.io.timeout(Duration::from_millis(300))
            .emit_with_ack::<_, String>("q", &3)
            .await
            .unwrap();
    let acks = collect(stream).await;
    assert_eq!(acks.len(), 3, "{acks:?}");
    for (_, _, sid) in &clients {
        assert!(matches!(acks[sid], Err(AckError::Timeout)), "{acks:?}");
    }
}

/// An ack request no socket matches ends without waiting for the ack timeout. (On Redis this
/// guards `ClusterAdapter`'s fix for socketioxide-core's ack stream, which otherwise stays
/// pending after a last ack count of 0.)
async fn ack_request_to_an_empty_room_ends_empty(backend: Backend) {
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let mut clients = one_per_node([&a, &b, &c], "/").await;
    let stream =
        c.io.to("nobody")
            .timeout(LONG)
            .emit_with_ack::<_, String>("q", &4)
            .await
            .unwrap();
    assert!(collect(stream).await.is_empty());
    let watched = clients.iter_mut().map(|(_, rx, sid)| (rx, *sid));
    nothing_arrives(&[&a, &b, &c], watched).await;
}

/// A remote client answers with a binary attachment; the requester gets the bytes.
async fn binary_ack_from_a_remote_client(backend: Backend) {
    let [a, b, _c] = spawn_root_cluster::<3>(&backend).await;
    let (tb, mut rb, sb) = dummy(&b.io, "/").await;
    let stream =
        a.io.timeout(LONG)
            .emit_with_ack::<_, Bytes>("bin_q", &Bytes::from_static(&[1]))
            .await
            .unwrap();
    let p = recv(&mut rb, ARRIVES).await;
    let id = ack_id(&p);
    assert_eq!(
        p,
        format!(r#"451-{id}["bin_q",{{"_placeholder":true,"num":0}}]"#)
    );
    assert_eq!(recv_bin(&mut rb, ARRIVES).await, Bytes::from_static(&[1]));
    let msg = format!(r#"61-{id}[{{"_placeholder":true,"num":0}}]"#);
    tb.send(engineioxide::Packet::Message(msg.into()))
        .await
        .unwrap();
    tb.send(engineioxide::Packet::Binary(Bytes::from_static(&[7, 7])))
        .await
        .unwrap();
    let acks = collect(stream).await;
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[&sb].as_ref().unwrap(), &Bytes::from_static(&[7, 7]));
}

/// With the msgpack parser, acks from the clients of every node are collected.
async fn msgpack_acks_from_every_node(backend: Backend) {
    let ([a, b, c], addrs) = spawn_msgpack_cluster::<3>(&backend).await;
    ns_everywhere(&[&a, &b, &c], "/", async |_: SocketRef<Adapter>| {}).await;
    let mut clients = Vec::new();
    for addr in addrs {
        clients.push(msgpack_client(addr, "/").await);
    }
    let stream =
        c.io.timeout(LONG)
            .emit_with_ack::<_, Value>("q", &json!({"k": [1, 2]}))
            .await
            .unwrap();
    for (i, (tx, rx, _)) in clients.iter_mut().enumerate() {
        let p = recv_msgpack(rx, ARRIVES).await;
        assert_eq!(p["type"], 2, "{p}");
        assert_eq!(p["data"], json!(["q", {"k": [1, 2]}]), "{p}");
        let id = p["id"].clone();
        assert!(id.is_u64(), "an ack id: {p}");
        let ack = json!({"type": 3, "nsp": "/", "id": id, "data": [{"node": i}]});
        msgpack_send(tx, ack).await;
    }
    let acks = collect(stream).await;
    assert_eq!(acks.len(), 3, "{acks:?}");
    for (i, (_, _, sid)) in clients.iter().enumerate() {
        assert_eq!(acks[sid].as_ref().unwrap(), &json!({"node": i}));
    }
}

/// More remote acks than `ack_response_buffer` (default 255) arrive before the caller polls
/// its ack stream: like a single server, the cluster keeps every one for the late reader.
///
/// Gossip only: socketioxide-redis by design buffers at most `ack_response_buffer` + 1
/// unread responses per request and drops the rest (`error sending response to handler: no
/// available capacity`), ending with 255 of 300 acks.
#[cfg(feature = "cluster-gossip")]
async fn ack_stream_polled_late_keeps_every_remote_ack(backend: Backend) {
    const SOCKETS: usize = 300;
    let [a, b] = spawn_root_cluster::<2>(&backend).await;
    let mut clients = futures_util::future::join_all((0..SOCKETS).map(|_| dummy(&b.io, "/"))).await;
    // The stream ends when the last ack came, so a long timeout costs nothing; a short
    // one would fail on a loaded machine before 300 answers are in.
    let stream =
        a.io.timeout(LONG)
            .emit_with_ack::<_, String>("q", &1)
            .await
            .unwrap();
    for (tx, rx, _) in &mut clients {
        let id = ack_request(rx, r#"["q",1]"#).await;
        answer(tx, "/", id, r#"["ok"]"#).await;
    }
    // The caller reads its stream a little later (it was busy elsewhere).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = collect(stream).await;
    let answered = acks.values().filter(|r| r.is_ok()).count();
    assert_eq!(answered, SOCKETS, "{} acks, {answered} answers", acks.len());
}

/// Ten ack requests in flight at once, from every node: each stream gets exactly the answers
/// to its own request, from the sockets of every node.
async fn concurrent_ack_requests_get_their_own_answers(backend: Backend) {
    const REQUESTS: usize = 10;
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let nodes = [&a, &b, &c];
    let mut clients = Vec::new();
    for n in nodes {
        clients.push(dummy(&n.io, "/").await);
    }
    let mut streams = Vec::new();
    for i in 0..REQUESTS {
        let n = nodes[i % 3];
        let s =
            n.io.timeout(LONG)
                .emit_with_ack::<_, usize>("q", &i)
                .await
                .unwrap();
        streams.push(s);
    }
    // Every client gets every request (in the order each node made them) and answers each
    // with the number it carries, times ten.
    for (tx, rx, _) in &mut clients {
        let mut seen = Vec::new();
        for _ in 0..REQUESTS {
            let p = recv(rx, ARRIVES).await;
            let id = ack_id(&p);
            let n: usize = p
                .strip_prefix(&format!(r#"42{id}["q","#))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unexpected packet {p}"));
            seen.push(n);
            answer(tx, "/", id, &format!("[{}]", n * 10)).await;
        }
        seen.sort();
        assert_eq!(seen, (0..REQUESTS).collect::<Vec<_>>());
    }
    nothing_arrives(&nodes, clients.iter_mut().map(|(_, rx, sid)| (rx, *sid))).await;
    let results = futures_util::future::join_all(streams.into_iter().map(collect)).await;
    for (i, acks) in results.into_iter().enumerate() {
        assert_eq!(acks.len(), 3, "request {i}: {acks:?}");
        for (_, _, sid) in &clients {
            assert_eq!(*acks[sid].as_ref().unwrap(), i * 10, "request {i}");
        }
    }
}

/// A remote socket disconnects while its ack is awaited: the stream yields an error for it
/// (as it would for a local socket) and ends without waiting for the ack timeout.
async fn remote_socket_disconnecting_before_answering_yields_an_error(backend: Backend) {
    let [a, b, _c] = spawn_root_cluster::<3>(&backend).await;
    let (ta, mut ra, sa) = dummy(&a.io, "/").await;
    let (_tb, mut rb, sb) = dummy(&b.io, "/").await;
    let stream =
        a.io.timeout(LONG)
            .emit_with_ack::<_, String>("q", &5)
            .await
            .unwrap();
    let id = ack_request(&mut ra, r#"["q",5]"#).await;
    answer(&ta, "/", id, r#"["a"]"#).await;
    ack_request(&mut rb, r#"["q",5]"#).await;
    b.io.get_socket(sb).unwrap().disconnect().unwrap();
    let acks = collect(stream).await;
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert_eq!(acks[&sa].as_ref().unwrap(), "a");
    assert!(acks[&sb].is_err(), "{acks:?}");
}
