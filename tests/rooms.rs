//! Rooms across an in-process cluster: `rooms()` as the union of every node, `join`/`leave`
//! of sockets on other nodes, and `disconnect` of sockets on other nodes.
mod common;

use common::*;
use socketioxide::{
    extract::SocketRef,
    socket::{DisconnectReason, Sid},
};
use tokio::sync::mpsc;

backend_tests! {
    rooms_is_the_union_of_every_node,
    join_applies_to_sockets_on_other_nodes,
    leave_applies_to_sockets_on_other_nodes,
    disconnect_applies_to_sockets_on_other_nodes,
}

/// The rooms of the socket `sid` living on `node`, as that node sees them.
fn local_rooms(node: &TestNode, sid: Sid) -> Vec<String> {
    let s = node.io.get_socket(sid).expect("socket lives on this node");
    sorted(s.rooms())
}

/// The socket `sid` on `node` is in exactly `rooms`: at once on gossip, where a change is
/// applied on every node when the call returns; on Redis, where Redis orders the change
/// before any later message but a node applies it when it reads it, once it is read.
async fn rooms_now(backend: &Backend, node: &TestNode, sid: Sid, rooms: &[&str]) {
    if backend.applies_on_return() {
        assert_eq!(
            local_rooms(node, sid),
            rooms,
            "applied when the call returned"
        );
    } else {
        wait_rooms(node, sid, rooms).await;
    }
}

/// Wait until the socket `sid` on `node` is in exactly `rooms`.
async fn wait_rooms(node: &TestNode, sid: Sid, rooms: &[&str]) {
    let ok = wait_until(SETTLES, || local_rooms(node, sid) == rooms).await;
    assert!(
        ok,
        "rooms of {sid}: {:?}, expected {rooms:?}",
        local_rooms(node, sid)
    );
}

async fn rooms_is_the_union_of_every_node(backend: Backend) {
    let ([a, b, c], _clients) = rooms_cluster(&backend).await;
    for n in [&a, &b, &c] {
        assert_eq!(
            sorted(n.io.rooms().await.unwrap()),
            ["common", "ra", "rb", "rc"]
        );
    }
    // The rooms of the sockets a broadcast would reach.
    assert_eq!(
        sorted(b.io.to("common").rooms().await.unwrap()),
        ["common", "ra", "rc"]
    );
    assert_eq!(sorted(a.io.except("common").rooms().await.unwrap()), ["rb"]);
    assert_eq!(sorted(c.io.to("rb").rooms().await.unwrap()), ["rb"]);
    assert!(a.io.to("nobody").rooms().await.unwrap().is_empty());
    // `local` keeps to the node.
    assert_eq!(
        sorted(c.io.local().rooms().await.unwrap()),
        ["common", "rc"]
    );
}

/// `io.to(room).join(..)` makes the sockets of other nodes join, in force when it returns:
/// the rooms are already joined there, and a broadcast sent right after from a third node
/// (which per-sender order does not cover) reaches them.
async fn join_applies_to_sockets_on_other_nodes(backend: Backend) {
    let ([a, b, c], [(_ta, mut ra, sa), (_tb, mut rb, sb), (_tc, mut rc, sc)]) =
        rooms_cluster(&backend).await;

    // From a node whose own socket does not match.
    a.io.to("rb").join("new").await.unwrap();
    rooms_now(&backend, &b, sb, &["new", "rb"]).await;
    c.io.to("new").emit("m", "to new").await.unwrap();
    assert_eq!(recv(&mut rb, ARRIVES).await, r#"42["m","to new"]"#);
    nothing_arrives(&[&a, &b, &c], [(&mut ra, sa), (&mut rc, sc)]).await;
    assert_eq!(local_rooms(&a, sa), ["common", "ra"]);
    assert_eq!(local_rooms(&c, sc), ["common", "rc"]);

    // A room with members on the sender's node and another.
    b.io.to("common").join(["x", "y"]).await.unwrap();
    rooms_now(&backend, &a, sa, &["common", "ra", "x", "y"]).await;
    rooms_now(&backend, &c, sc, &["common", "rc", "x", "y"]).await;
    assert_eq!(local_rooms(&b, sb), ["new", "rb"]);
    c.io.to("y").emit("m", "to y").await.unwrap();
    assert_eq!(recv(&mut ra, ARRIVES).await, r#"42["m","to y"]"#);
    assert_eq!(recv(&mut rc, ARRIVES).await, r#"42["m","to y"]"#);
    nothing_arrives(&[&a, &b, &c], [(&mut rb, sb)]).await;

    // Every socket.
    c.io.clone().join("everyone").await.unwrap();
    for (n, sid) in [(&a, sa), (&b, sb), (&c, sc)] {
        let joined = || local_rooms(n, sid).contains(&"everyone".into());
        assert!(backend.applied(joined).await, "{sid} joined everyone");
    }
    assert_eq!(
        sorted(a.io.rooms().await.unwrap()),
        ["common", "everyone", "new", "ra", "rb", "rc", "x", "y"]
    );
}

/// `io.to(room).leave(..)` makes the sockets of other nodes leave, in force when it
/// returns: a broadcast sent right after from another node no longer reaches them.
async fn leave_applies_to_sockets_on_other_nodes(backend: Backend) {
    let ([a, b, c], [(_ta, mut ra, sa), (_tb, mut rb, sb), (_tc, mut rc, sc)]) =
        rooms_cluster(&backend).await;

    // Every socket of `common` (on a and c) leaves it, asked by b which has none.
    b.io.to("common").leave("common").await.unwrap();
    rooms_now(&backend, &a, sa, &["ra"]).await;
    rooms_now(&backend, &c, sc, &["rc"]).await;
    a.io.to("common").emit("m", "lost").await.unwrap();
    assert_eq!(sorted(b.io.rooms().await.unwrap()), ["ra", "rb", "rc"]);
    nothing_arrives(&[&a, &b, &c], [(&mut ra, sa), (&mut rb, sb), (&mut rc, sc)]).await;

    // Leaving a room selected by another.
    a.io.to("rb").leave(["rb", "not-joined"]).await.unwrap();
    rooms_now(&backend, &b, sb, &[]).await;
    assert_eq!(sorted(c.io.rooms().await.unwrap()), ["ra", "rc"]);

    // Every socket leaves its rooms: nothing left anywhere.
    c.io.clone().leave(["ra", "rc"]).await.unwrap();
    rooms_now(&backend, &a, sa, &[]).await;
    rooms_now(&backend, &c, sc, &[]).await;
    for n in [&a, &b, &c] {
        assert!(n.io.rooms().await.unwrap().is_empty());
    }
    // The sockets are still connected: a broadcast to all reaches them.
    a.io.emit("m", "all").await.unwrap();
    for r in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(recv(r, ARRIVES).await, r#"42["m","all"]"#);
    }
}

/// `io.to(room).disconnect()` disconnects the matching sockets of every node, and only them,
/// in force when it returns: they are gone from their nodes, and a broadcast sent right
/// after from a third node does not reach them.
async fn disconnect_applies_to_sockets_on_other_nodes(backend: Backend) {
    let [a, b, c] = spawn_cluster::<3>(&backend).await;
    let (dtx, mut drx) = mpsc::unbounded_channel::<(Sid, DisconnectReason)>();
    ns_per_node([&a, &b, &c], "/", ["ra", "rb", "rc"], |room| {
        let dtx = dtx.clone();
        async move |s: SocketRef<Adapter>| {
            s.join(["all", room]);
            let dtx = dtx.clone();
            s.on_disconnect(
                async move |s: SocketRef<Adapter>, reason: DisconnectReason| {
                    dtx.send((s.id, reason)).unwrap();
                },
            );
        }
    })
    .await;
    let [(_ta, mut ra, sa), (_tb, mut rb, sb), (_tc, mut rc, sc)] =
        one_per_node([&a, &b, &c], "/").await;
    let (_tc2, mut rc2, sc2) = dummy(&c.io, "/").await;
    // The second socket of c is in `all` and `rc2` only.
    let s = c.io.get_socket(sc2).unwrap();
    s.leave("rc");
    s.join("rc2");

    // A socket of another node, selected by room.
    a.io.to("rb").disconnect().await.unwrap();
    let gone = || b.io.sockets().is_empty();
    assert!(
        backend.applied(gone).await,
        "{backend:?}: gone after disconnect returned"
    );
    c.io.to("rb").emit("m", "too late").await.unwrap();
    assert_eq!(recv(&mut rb, ARRIVES).await, "41");
    let (sid, reason) = tokio::time::timeout(SETTLES, drx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((sid, reason), (sb, DisconnectReason::ServerNSDisconnect));
    nothing_arrives(
        &[&a, &b, &c],
        [(&mut ra, sa), (&mut rc, sc), (&mut rc2, sc2)],
    )
    .await;
    let left = a.io.fetch_sockets().await.unwrap();
    let mut left: Vec<Sid> = left.iter().map(|s| s.data().id).collect();
    left.sort();
    let mut expected = vec![sa, sc, sc2];
    expected.sort();
    assert_eq!(left, expected);

    // Every socket but those of a room, on the sender's node and another.
    b.io.except("rc").disconnect().await.unwrap();
    let gone = || a.io.sockets().is_empty() && c.io.sockets().len() == 1;
    assert!(
        backend.applied(gone).await,
        "{backend:?}: gone after disconnect returned"
    );
    c.io.except("rc").emit("m", "too late").await.unwrap();
    assert_eq!(recv(&mut ra, ARRIVES).await, "41");
    assert_eq!(recv(&mut rc2, ARRIVES).await, "41");
    nothing_arrives(&[&a, &b, &c], [(&mut rc, sc)]).await;
    let mut gone = Vec::new();
    for _ in 0..2 {
        let (sid, reason) = tokio::time::timeout(SETTLES, drx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reason, DisconnectReason::ServerNSDisconnect);
        gone.push(sid);
    }
    gone.sort();
    let mut expected = vec![sa, sc2];
    expected.sort();
    assert_eq!(gone, expected);
    let left = b.io.fetch_sockets().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].data().id, sc);
    assert!(drx.try_recv().is_err(), "no other socket disconnected");
}
