//! Test clients and their packets: dummy sockets (in process, text parser), clients over
//! HTTP long-polling (text or msgpack parser), and the helpers that send, receive and check
//! what they exchange with the nodes.

use std::time::Duration;

use engineioxide::Packet as EioPacket;
use socketioxide::{SocketIo, socket::Sid};
use tokio::sync::mpsc;

use super::{
    cluster::{Adapter, Backend, TestNode, array, spawn_rooms_cluster_with},
    msgpack, polling,
};

/// Bound (ms) for a packet that must arrive.
pub const ARRIVES: u64 = 10_000;
/// How long (ms) a client is watched for a packet that must not arrive.
pub const NOTHING: u64 = 300;

/// The sending half of a test client: engine.io packets to the server.
pub type ClientTx = mpsc::Sender<EioPacket>;
/// The receiving half of a test client: engine.io packets from the server.
pub type ClientRx = mpsc::Receiver<EioPacket>;

/// A test client: its sending and receiving halves, and its socket id.
pub type Client = (ClientTx, ClientRx, Sid);

/// The socket id in a text CONNECT packet (`40{"sid":"..."}` or `40/ns,{"sid":"..."}`).
pub fn sid_of(connect: &str) -> Sid {
    let sid = connect
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no sid in {connect}"));
    sid.parse()
        .unwrap_or_else(|_| panic!("bad sid in {connect}"))
}

/// Connect a dummy socket to `ns` of `io`; returns its halves and its socket id once the
/// CONNECT packet has arrived.
pub async fn dummy(io: &SocketIo<Adapter>, ns: &'static str) -> (ClientTx, ClientRx, Sid) {
    let (tx, mut rx) = io.new_dummy_sock(ns, ()).await;
    let connect = recv(&mut rx, 2000).await;
    assert!(connect.starts_with("40"), "expected CONNECT, got {connect}");
    (tx, rx, sid_of(&connect))
}

/// Connect one dummy socket to `ns` of each of `nodes`, one after the other.
pub async fn one_per_node<const N: usize>(nodes: [&TestNode; N], ns: &'static str) -> [Client; N] {
    let mut clients = Vec::with_capacity(N);
    for n in nodes {
        clients.push(dummy(&n.io, ns).await);
    }
    array(clients)
}

/// A [`spawn_rooms_cluster_with`] of default nodes, with one dummy client on `/` per node.
pub async fn rooms_cluster(backend: &Backend) -> ([TestNode; 3], [Client; 3]) {
    let [a, b, c] = spawn_rooms_cluster_with(backend, |b| b).await;
    let clients = one_per_node([&a, &b, &c], "/").await;
    ([a, b, c], clients)
}

/// Receive the next text packet of a dummy socket within `ms`.
pub async fn recv(rx: &mut tokio::sync::mpsc::Receiver<engineioxide::Packet>, ms: u64) -> String {
    let p = tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .expect("packet in time")
        .expect("socket open");
    String::from(p)
}

/// Assert nothing arrives within `ms`.
pub async fn recv_none(rx: &mut tokio::sync::mpsc::Receiver<engineioxide::Packet>, ms: u64) {
    if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(ms), rx.recv()).await {
        panic!("unexpected packet {p:?}");
    }
}

/// Assert that nothing reached the `watched` clients of namespace `/` (see
/// [`nothing_arrives_on`]).
pub async fn nothing_arrives<'a>(
    nodes: &[&TestNode],
    watched: impl IntoIterator<Item = (&'a mut ClientRx, Sid)>,
) {
    nothing_arrives_on(nodes, "/", watched).await;
}

/// Assert that nothing sent so far reached the `watched` clients of namespace `ns`, and
/// nothing will: every node of `nodes` sends each watched socket a marker, and the next
/// packets of each client must be exactly those markers. Two emits from one node reach a
/// client in the order they were made, so a packet a node sent (or relayed) before its
/// marker would arrive first, however late. Text and msgpack clients alike.
pub async fn nothing_arrives_on<'a>(
    nodes: &[&TestNode],
    ns: &'static str,
    watched: impl IntoIterator<Item = (&'a mut ClientRx, Sid)>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let watched: Vec<(&mut ClientRx, Sid)> = watched.into_iter().collect();
    // The watched sockets, and only they, join a room of their own for the markers.
    let room = format!("marker-room-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let sockets: Vec<_> = watched
        .iter()
        .map(|(_, sid)| {
            nodes
                .iter()
                .find_map(|n| n.io.of(ns)?.get_socket(*sid))
                .unwrap_or_else(|| panic!("no node of the list holds {sid}"))
        })
        .collect();
    for s in &sockets {
        s.join(room.clone());
    }
    let mut markers = Vec::with_capacity(nodes.len());
    // A node without the namespace has nothing to send in it.
    for op in nodes.iter().filter_map(|n| n.io.of(ns)) {
        let marker = NEXT.fetch_add(1, Ordering::Relaxed);
        op.to(room.clone())
            .emit("marker", &marker)
            .await
            .expect("marker sent");
        markers.push(marker);
    }
    for (rx, sid) in watched {
        let mut expected = markers.clone();
        while !expected.is_empty() {
            let p = recv_packet(rx, ARRIVES).await;
            let marker = match &p {
                EioPacket::Message(text) => text
                    .strip_prefix(&format!(r#"2{}["marker","#, ns_prefix(ns)))
                    .and_then(|m| m.strip_suffix(']'))
                    .and_then(|m| m.parse::<u64>().ok()),
                EioPacket::Binary(bin) => {
                    let v = msgpack::decode(bin);
                    (v["data"][0] == "marker")
                        .then(|| v["data"][1].as_u64())
                        .flatten()
                }
                _ => None,
            };
            match marker.and_then(|m| expected.iter().position(|e| *e == m)) {
                Some(i) => {
                    expected.swap_remove(i);
                }
                None => panic!("{sid} got {p:?} where only markers {expected:?} were due"),
            }
        }
    }
    for s in &sockets {
        s.leave(room.clone());
    }
}

/// `rooms` as strings, sorted.
pub fn sorted(rooms: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    let mut r: Vec<String> = rooms.into_iter().map(|r| r.to_string()).collect();
    r.sort();
    r
}

/// Receive the next engine.io packet of a client within `ms`.
pub async fn recv_packet(rx: &mut ClientRx, ms: u64) -> EioPacket {
    tokio::time::timeout(Duration::from_millis(ms), rx.recv())
        .await
        .expect("packet in time")
        .expect("socket open")
}

/// Receive the next binary engine.io packet (a msgpack packet or an attachment) within `ms`.
pub async fn recv_bin(rx: &mut ClientRx, ms: u64) -> bytes::Bytes {
    match recv_packet(rx, ms).await {
        EioPacket::Binary(b) => b,
        other => panic!("expected a binary packet, got {other:?}"),
    }
}

/// Receive the next msgpack socket.io packet within `ms`, decoded to JSON.
pub async fn recv_msgpack(rx: &mut ClientRx, ms: u64) -> serde_json::Value {
    msgpack::decode(&recv_bin(rx, ms).await)
}

/// `"/chat,"` for a namespace other than `/`, as text packets spell it.
pub(super) fn ns_prefix(ns: &str) -> String {
    if ns == "/" {
        String::new()
    } else {
        format!("{ns},")
    }
}

/// The ack id of a text EVENT or BINARY_EVENT packet that asks for one (`421["ev",..]`,
/// `42/ns,7["ev",..]`, `451-3["ev",{"_placeholder":true,"num":0}]`).
pub fn ack_id(packet: &str) -> i64 {
    let rest = packet
        .strip_prefix("42")
        .or_else(|| {
            let bin = packet.strip_prefix("45")?;
            Some(bin.split_once('-')?.1)
        })
        .unwrap_or_else(|| panic!("not an event: {packet}"));
    let rest = match rest.split_once(',') {
        Some((ns, tail)) if ns.starts_with('/') => tail,
        _ => rest,
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no ack id in {packet}"))
}

/// Answer ack `id` on namespace `ns` with the JSON array `args` (e.g. `["ok"]`).
pub async fn answer(tx: &ClientTx, ns: &str, id: i64, args: &str) {
    let p = EioPacket::Message(format!("3{}{id}{args}", ns_prefix(ns)).into());
    tx.send(p).await.expect("client open");
}

/// Send an EVENT from a client on namespace `ns`; `args` is the JSON array
/// `["event", ...]`.
pub async fn client_emit(tx: &ClientTx, ns: &str, args: &str) {
    let p = EioPacket::Message(format!("2{}{args}", ns_prefix(ns)).into());
    tx.send(p).await.expect("client open");
}

/// Connect a text-parser client over HTTP long-polling to `ns` of the node at `addr`;
/// returns its halves and socket id once the CONNECT packet has arrived.
pub async fn polling_client(addr: std::net::SocketAddr, ns: &str) -> (ClientTx, ClientRx, Sid) {
    let connect = EioPacket::Message(format!("0{}", ns_prefix(ns)).into());
    let (tx, mut rx) = polling::connect(addr, connect).await;
    let connect = recv(&mut rx, 5000).await;
    assert!(connect.starts_with("40"), "expected CONNECT, got {connect}");
    (tx, rx, sid_of(&connect))
}

/// Connect a msgpack-parser client over HTTP long-polling to `ns` of the node at `addr`;
/// returns its halves and socket id once the CONNECT packet has arrived.
pub async fn msgpack_client(addr: std::net::SocketAddr, ns: &str) -> (ClientTx, ClientRx, Sid) {
    let connect = msgpack::encode(&serde_json::json!({ "type": 0, "nsp": ns }));
    let (tx, mut rx) = polling::connect(addr, EioPacket::Binary(connect.into())).await;
    let p = recv_msgpack(&mut rx, 5000).await;
    assert_eq!(p["type"], 0, "expected CONNECT, got {p}");
    let sid = p["data"]["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("no sid in {p}"))
        .parse()
        .unwrap();
    (tx, rx, sid)
}

/// Send a msgpack socket.io packet (given as JSON) from a msgpack client.
pub async fn msgpack_send(tx: &ClientTx, packet: serde_json::Value) {
    let bin = msgpack::encode(&packet);
    tx.send(EioPacket::Binary(bin.into()))
        .await
        .expect("client open");
}
