//! Broadcasts across an in-process cluster: to all, to rooms, `except`, sender exclusion,
//! `local`, `volatile`, binary attachments, the msgpack parser, and ordering.
mod common;
use bytes::Bytes;
use common::*;
use serde_json::{Value, json};
use socketioxide::extract::{Data, SocketRef};

backend_tests! {
    broadcast_reaches_every_node,
    broadcast_from_each_node_reaches_all_clients_once,
    broadcast_to_rooms_reaches_only_members_on_every_node,
    broadcast_except_excludes_room_members_on_every_node,
    socket_broadcast_excludes_only_the_sender,
    local_broadcast_stays_on_its_node,
    volatile_broadcast_reaches_every_node,
    binary_attachments_reach_remote_clients,
    large_payloads_reach_remote_clients,
    msgpack_broadcasts_reach_every_node,
    emits_from_one_node_arrive_in_order_on_another,
    emits_arrive_complete_with_the_default_client_buffer,
}

async fn broadcast_reaches_every_node(backend: Backend) {
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let (_ta, mut ra) = a.io.new_dummy_sock("/", ()).await;
    let (_tb, mut rb) = b.io.new_dummy_sock("/", ()).await;
    let (_tc, mut rc) = c.io.new_dummy_sock("/", ()).await;
    for r in [&mut ra, &mut rb, &mut rc] {
        recv(r, 1000).await; // connect packet
    }
    a.io.emit("hello", &1).await.unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(recv(r, 2000).await, r#"42["hello",1]"#);
    }
    assert_eq!(a.io.sockets().len(), 1);
    let all = a.io.fetch_sockets().await.unwrap();
    assert_eq!(all.len(), 3);
}

/// Each node broadcasts in turn; every client on every node gets each broadcast exactly once.
async fn broadcast_from_each_node_reaches_all_clients_once(backend: Backend) {
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let mut clients = Vec::new();
    for n in [&a, &b, &c] {
        // Two clients per node.
        clients.push(dummy(&n.io, "/").await);
        clients.push(dummy(&n.io, "/").await);
    }
    for (i, n) in [&a, &b, &c].into_iter().enumerate() {
        n.io.emit("from", &i).await.unwrap();
        for (_, rx, _) in &mut clients {
            assert_eq!(recv(rx, ARRIVES).await, format!(r#"42["from",{i}]"#));
        }
    }
    let watched = clients.iter_mut().map(|(_, rx, sid)| (rx, *sid));
    nothing_arrives(&[&a, &b, &c], watched).await;
}

async fn broadcast_to_rooms_reaches_only_members_on_every_node(backend: Backend) {
    let ([a, b, c], [(_ta, mut ra, sa), (_tb, mut rb, sb), (_tc, mut rc, sc)]) =
        rooms_cluster(&backend).await;
    let nodes = [&a, &b, &c];

    // A room whose only member lives on another node.
    a.io.to("rb").emit("m", "to rb").await.unwrap();
    assert_eq!(recv(&mut rb, ARRIVES).await, r#"42["m","to rb"]"#);
    nothing_arrives(&nodes, [(&mut ra, sa), (&mut rc, sc)]).await;

    // A room with members on two nodes, none on the sender's.
    b.io.to("common").emit("m", "to common").await.unwrap();
    assert_eq!(recv(&mut ra, ARRIVES).await, r#"42["m","to common"]"#);
    assert_eq!(recv(&mut rc, ARRIVES).await, r#"42["m","to common"]"#);
    nothing_arrives(&nodes, [(&mut rb, sb)]).await;

    // Several rooms: a socket in more than one of them gets the packet once.
    c.io.to(["ra", "rb", "common"])
        .emit("m", "to many")
        .await
        .unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(recv(r, ARRIVES).await, r#"42["m","to many"]"#);
    }
    nothing_arrives(&nodes, [(&mut ra, sa), (&mut rb, sb), (&mut rc, sc)]).await;

    // `within` is `to`.
    a.io.within("rc").emit("m", "within rc").await.unwrap();
    assert_eq!(recv(&mut rc, ARRIVES).await, r#"42["m","within rc"]"#);

    // A room nobody is in.
    b.io.to("nobody").emit("m", "lost").await.unwrap();
    nothing_arrives(&nodes, [(&mut ra, sa), (&mut rb, sb), (&mut rc, sc)]).await;
}

async fn broadcast_except_excludes_room_members_on_every_node(backend: Backend) {
    let ([a, b, c], [(_ta, mut ra, sa), (_tb, mut rb, sb), (_tc, mut rc, sc)]) =
        rooms_cluster(&backend).await;
    let nodes = [&a, &b, &c];

    a.io.except("rb").emit("m", "not rb").await.unwrap();
    assert_eq!(recv(&mut ra, ARRIVES).await, r#"42["m","not rb"]"#);
    assert_eq!(recv(&mut rc, ARRIVES).await, r#"42["m","not rb"]"#);
    nothing_arrives(&nodes, [(&mut rb, sb)]).await;

    // Excluding a room with members on the sender's node and on another.
    b.io.except("common").emit("m", "not common").await.unwrap();
    assert_eq!(recv(&mut rb, ARRIVES).await, r#"42["m","not common"]"#);
    nothing_arrives(&nodes, [(&mut ra, sa), (&mut rc, sc)]).await;

    // `to` and `except` together.
    c.io.to("common")
        .except("ra")
        .emit("m", "common but ra")
        .await
        .unwrap();
    assert_eq!(recv(&mut rc, ARRIVES).await, r#"42["m","common but ra"]"#);
    nothing_arrives(&nodes, [(&mut ra, sa), (&mut rb, sb)]).await;

    // Excluding every room: nobody.
    a.io.except(["ra", "rb", "rc"])
        .emit("m", "nobody")
        .await
        .unwrap();
    nothing_arrives(&nodes, [(&mut ra, sa), (&mut rb, sb), (&mut rc, sc)]).await;
}

/// `socket.broadcast()` and `socket.to(room)` reach every other socket of the cluster but
/// never the sender, including sockets on the sender's own node.
async fn socket_broadcast_excludes_only_the_sender(backend: Backend) {
    let [a, b, c] = spawn_cluster::<3>(&backend).await;
    ns_everywhere(&[&a, &b, &c], "/", async |s: SocketRef<Adapter>| {
        s.join("all");
        s.on(
            "relay",
            async |s: SocketRef<Adapter>, Data(v): Data<Value>| {
                s.broadcast().emit("relayed", &v).await.unwrap();
            },
        );
        s.on(
            "relay_room",
            async |s: SocketRef<Adapter>, Data(v): Data<Value>| {
                s.to("all").emit("in_room", &v).await.unwrap();
            },
        );
    })
    .await;
    let (tb1, mut rb1, sb1) = dummy(&b.io, "/").await;
    let (_tb2, mut rb2, sb2) = dummy(&b.io, "/").await;
    let (_ta, mut ra, sa) = dummy(&a.io, "/").await;
    let (tc, mut rc, sc) = dummy(&c.io, "/").await;
    let nodes = [&a, &b, &c];

    client_emit(&tb1, "/", r#"["relay","x"]"#).await;
    for r in [&mut rb2, &mut ra, &mut rc] {
        assert_eq!(recv(r, ARRIVES).await, r#"42["relayed","x"]"#);
    }
    nothing_arrives(&nodes, [(&mut rb1, sb1)]).await;

    client_emit(&tc, "/", r#"["relay_room","y"]"#).await;
    for r in [&mut rb1, &mut rb2, &mut ra] {
        assert_eq!(recv(r, ARRIVES).await, r#"42["in_room","y"]"#);
    }
    let watched = [
        (&mut rc, sc),
        (&mut rb1, sb1),
        (&mut rb2, sb2),
        (&mut ra, sa),
    ];
    nothing_arrives(&nodes, watched).await;
}

/// `local()` keeps a broadcast on the sender's node.
async fn local_broadcast_stays_on_its_node(backend: Backend) {
    let ([a, b, c], [(_ta, mut ra, sa), (_tb, mut rb, sb), (_tc, mut rc, sc)]) =
        rooms_cluster(&backend).await;
    let nodes = [&a, &b, &c];
    a.io.local().emit("m", "local").await.unwrap();
    assert_eq!(recv(&mut ra, ARRIVES).await, r#"42["m","local"]"#);
    nothing_arrives(&nodes, [(&mut rb, sb), (&mut rc, sc)]).await;

    b.io.local().to("common").emit("m", "nobody").await.unwrap();
    nothing_arrives(&nodes, [(&mut ra, sa), (&mut rb, sb), (&mut rc, sc)]).await;
}

/// Volatile broadcasts reach the clients of every node when nothing is congested. Dummy
/// sockets never deliver volatile packets, so the clients use HTTP long-polling.
async fn volatile_broadcast_reaches_every_node(backend: Backend) {
    let ([a, b, c], [addr_a, addr_b, addr_c]) = spawn_served_cluster::<3>(&backend, |b| b).await;
    ns_per_node([&a, &b, &c], "/", ["ra", "rb", "rc"], |room| {
        async move |s: SocketRef<Adapter>| s.join(room)
    })
    .await;
    let (_ta, mut ra, sa) = polling_client(addr_a, "/").await;
    let (_tb, mut rb, sb) = polling_client(addr_b, "/").await;
    let (_tc, mut rc, _) = polling_client(addr_c, "/").await;

    a.io.volatile().emit("v", &1).await.unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(recv(r, ARRIVES).await, r#"42["v",1]"#);
    }

    b.io.volatile().to("rc").emit("v", &2).await.unwrap();
    assert_eq!(recv(&mut rc, ARRIVES).await, r#"42["v",2]"#);
    nothing_arrives(&[&a, &b, &c], [(&mut ra, sa), (&mut rb, sb)]).await;
}

/// A payload with binary attachments arrives on remote clients as the placeholder packet
/// followed by each attachment, in order.
async fn binary_attachments_reach_remote_clients(backend: Backend) {
    let [a, b, c] = spawn_cluster::<3>(&backend).await;
    ns_everywhere(&[&a, &b, &c], "/", async |s: SocketRef<Adapter>| {
        s.on(
            "relay_bin",
            async |s: SocketRef<Adapter>, Data(v): Data<Value>| {
                let tag = v.as_str().unwrap_or_default().to_string();
                s.broadcast()
                    .emit("bin", &(tag, Bytes::from_static(&[9, 8, 7])))
                    .await
                    .unwrap();
            },
        );
    })
    .await;
    let [(_ta, mut ra, sa), (_tb, mut rb, sb), (tc, mut rc, sc)] =
        one_per_node([&a, &b, &c], "/").await;

    a.io.emit("bin", &Bytes::from_static(&[1, 2, 3]))
        .await
        .unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(
            recv(r, ARRIVES).await,
            r#"451-["bin",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(recv_bin(r, ARRIVES).await, Bytes::from_static(&[1, 2, 3]));
    }

    let two = (Bytes::from_static(&[1]), Bytes::from_static(&[2, 2]));
    b.io.emit("bins", &two).await.unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(
            recv(r, ARRIVES).await,
            r#"452-["bins",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
        );
        assert_eq!(recv_bin(r, ARRIVES).await, Bytes::from_static(&[1]));
        assert_eq!(recv_bin(r, ARRIVES).await, Bytes::from_static(&[2, 2]));
    }

    // From a socket's handler, excluding the sender.
    client_emit(&tc, "/", r#"["relay_bin","t"]"#).await;
    for r in [&mut ra, &mut rb] {
        assert_eq!(
            recv(r, ARRIVES).await,
            r#"451-["bin","t",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(recv_bin(r, ARRIVES).await, Bytes::from_static(&[9, 8, 7]));
    }
    nothing_arrives(&[&a, &b, &c], [(&mut ra, sa), (&mut rb, sb), (&mut rc, sc)]).await;
}

/// Payloads of a few MiB (text and binary) cross the mesh intact.
async fn large_payloads_reach_remote_clients(backend: Backend) {
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let (_tb, mut rb, _) = dummy(&b.io, "/").await;
    let (_tc, mut rc, _) = dummy(&c.io, "/").await;

    let bin: Bytes = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    a.io.emit("big", &bin).await.unwrap();
    for r in [&mut rb, &mut rc] {
        assert_eq!(
            recv(r, ARRIVES).await,
            r#"451-["big",{"_placeholder":true,"num":0}]"#
        );
        assert!(
            recv_bin(r, ARRIVES).await == bin,
            "the attachment arrives intact"
        );
    }

    let text = "é".repeat(1024 * 1024);
    a.io.emit("big", &text).await.unwrap();
    for r in [&mut rb, &mut rc] {
        let p = recv(r, ARRIVES).await;
        assert!(
            p == format!(r#"42["big","{text}"]"#),
            "the text arrives intact"
        );
    }
}

/// With the msgpack parser, broadcasts (text and binary payloads, all and rooms) reach the
/// clients of every node as msgpack packets.
async fn msgpack_broadcasts_reach_every_node(backend: Backend) {
    let ([a, b, c], [addr_a, addr_b, addr_c]) = spawn_msgpack_cluster::<3>(&backend).await;
    ns_per_node([&a, &b, &c], "/", ["ra", "rb", "rc"], |room| {
        async move |s: SocketRef<Adapter>| {
            s.join(room);
            s.on(
                "relay",
                async |s: SocketRef<Adapter>, Data(v): Data<Value>| {
                    s.broadcast().emit("relayed", &v).await.unwrap();
                },
            );
        }
    })
    .await;
    let (_ta, mut ra, _) = msgpack_client(addr_a, "/").await;
    let (_tb, mut rb, sb) = msgpack_client(addr_b, "/").await;
    let (tc, mut rc, sc) = msgpack_client(addr_c, "/").await;
    let nodes = [&a, &b, &c];

    a.io.emit("hello", &json!({"n": 1, "s": "x"}))
        .await
        .unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        let p = recv_msgpack(r, ARRIVES).await;
        assert_eq!(
            p,
            json!({"type": 2, "nsp": "/", "data": ["hello", {"n": 1, "s": "x"}]})
        );
    }

    b.io.emit("bin", &Bytes::from_static(&[1, 2, 3]))
        .await
        .unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        let p = recv_msgpack(r, ARRIVES).await;
        assert_eq!(p["data"], json!(["bin", msgpack::bin(&[1, 2, 3])]), "{p}");
    }

    c.io.to("ra").emit("room", &5).await.unwrap();
    assert_eq!(
        recv_msgpack(&mut ra, ARRIVES).await["data"],
        json!(["room", 5])
    );
    nothing_arrives(&nodes, [(&mut rb, sb), (&mut rc, sc)]).await;

    // A client's event, relayed by its socket to every other socket.
    msgpack_send(&tc, json!({"type": 2, "nsp": "/", "data": ["relay", "hi"]})).await;
    for r in [&mut ra, &mut rb] {
        assert_eq!(
            recv_msgpack(r, ARRIVES).await["data"],
            json!(["relayed", "hi"])
        );
    }
    nothing_arrives(&nodes, [(&mut rc, sc)]).await;
}

/// Emit `N` numbered events from `a`, each awaited, and check that the client on `b` gets
/// them all, in order.
async fn numbered_emits_arrive_in_order(a: &TestNode, b: &TestNode) {
    const N: u32 = 1000;
    let (_tb, mut rb, _) = dummy(&b.io, "/").await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N as usize);
        while got.len() < N as usize {
            let wait = std::time::Duration::from_secs(10);
            let Ok(Some(p)) = tokio::time::timeout(wait, rb.recv()).await else {
                break; // what is missing shows in the assertion below
            };
            let p = String::from(p);
            let n: u32 = p
                .strip_prefix(r#"42["n","#)
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unexpected packet {p}"));
            got.push(n);
        }
        recv_none(&mut rb, NOTHING).await;
        got
    });
    for i in 0..N {
        a.io.emit("n", &i).await.unwrap();
    }
    let got = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
        .await
        .expect("the reader ends")
        .unwrap();
    let first_gap = got.iter().enumerate().find(|(i, n)| **n != *i as u32);
    let increasing = got.windows(2).all(|w| w[0] < w[1]);
    assert!(
        got.len() == N as usize && first_gap.is_none(),
        "{} of {N} emits arrived (in increasing order: {increasing}); first out of place \
         (index, value): {first_gap:?}; last: {:?}",
        got.len(),
        got.last()
    );
}

/// 1,000 numbered emits from one node, each awaited, reach a client on another node complete
/// and in order, when the client's buffer can hold them (socketioxide drops packets for a
/// client whose buffer is full, cluster or not).
async fn emits_from_one_node_arrive_in_order_on_another(backend: Backend) {
    let [a, b, c] = spawn_cluster_with::<3>(&backend, |b| b.max_buffer_size(2048)).await;
    ns_everywhere(&[&a, &b, &c], "/", async |_: SocketRef<Adapter>| {}).await;
    numbered_emits_arrive_in_order(&a, &b).await;
}

/// The same with socketioxide's default client buffer (128 packets), as a single server
/// delivers all 1,000 awaited emits to its own client: the receiving node must not apply a
/// burst of remote broadcasts faster than the client's writer drains them
/// (`remote broadcast: [InternalChannelFull]`).
async fn emits_arrive_complete_with_the_default_client_buffer(backend: Backend) {
    let [a, b, _c] = spawn_root_cluster::<3>(&backend).await;
    numbered_emits_arrive_in_order(&a, &b).await;
}
