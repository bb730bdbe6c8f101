//! `fetch_sockets` across an in-process cluster, and every operation on a `RemoteSocket`
//! living on another node: emit, emit_with_ack, join, leave, rooms, disconnect.
mod common;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use socketioxide::{AckError, socket::RemoteSocket, socket::Sid};

backend_tests! {
    fetch_sockets_returns_the_sockets_of_every_node,
    remote_socket_emit_reaches_only_that_socket,
    remote_socket_emit_with_ack_gets_its_answer,
    remote_socket_emit_with_ack_times_out,
    remote_socket_join_leave_and_rooms,
    remote_socket_disconnect_disconnects_only_that_socket,
    concurrent_requests_from_every_node_each_get_everything,
    stale_remote_socket_operations_are_harmless,
}

/// A [`spawn_rooms_cluster_with`] (sockets join the rooms of their node, [`NODE_ROOMS`]).
/// Clients: one on `a`, two on `b`, one on `c`.
async fn cluster_with_clients(
    backend: &Backend,
    build: impl Fn(socketioxide::SocketIoBuilder<Adapter>) -> socketioxide::SocketIoBuilder<Adapter>,
) -> ([TestNode; 3], [Client; 4]) {
    let [a, b, c] = spawn_rooms_cluster_with(backend, build).await;
    let ca = dummy(&a.io, "/").await;
    let cb1 = dummy(&b.io, "/").await;
    let cb2 = dummy(&b.io, "/").await;
    let cc = dummy(&c.io, "/").await;
    ([a, b, c], [ca, cb1, cb2, cc])
}

/// `(socket id, server id, namespace)` of each socket, sorted.
fn ids(sockets: &[RemoteSocket<Adapter>]) -> Vec<(Sid, String, String)> {
    let mut v: Vec<_> = sockets
        .iter()
        .map(|s| {
            let d = s.data();
            (d.id, d.server_id.to_string(), d.ns.to_string())
        })
        .collect();
    v.sort();
    v
}

fn expected(of: &[(&TestNode, Sid)]) -> Vec<(Sid, String, String)> {
    let mut v: Vec<_> = of
        .iter()
        .map(|(n, sid)| (*sid, n.io.config().server_id.to_string(), "/".to_string()))
        .collect();
    v.sort();
    v
}

/// The socket `sid` as fetched from `from`.
async fn fetch_one(from: &TestNode, sid: Sid) -> RemoteSocket<Adapter> {
    let all = from.io.fetch_sockets().await.unwrap();
    all.into_iter()
        .find(|s| s.data().id == sid)
        .unwrap_or_else(|| panic!("{sid} fetched"))
}

async fn fetch_sockets_returns_the_sockets_of_every_node(backend: Backend) {
    let ([a, b, c], [(_, _, sa), (_, _, sb1), (_, _, sb2), (_, _, sc)]) =
        cluster_with_clients(&backend, |b| b).await;
    let all = expected(&[(&a, sa), (&b, sb1), (&b, sb2), (&c, sc)]);
    for n in [&a, &b, &c] {
        assert_eq!(ids(&n.io.fetch_sockets().await.unwrap()), all);
    }
    assert_eq!(
        ids(&b.io.to("common").fetch_sockets().await.unwrap()),
        expected(&[(&a, sa), (&c, sc)])
    );
    assert_eq!(
        ids(&a.io.to("rb").fetch_sockets().await.unwrap()),
        expected(&[(&b, sb1), (&b, sb2)])
    );
    assert_eq!(
        ids(&c.io.except("common").fetch_sockets().await.unwrap()),
        expected(&[(&b, sb1), (&b, sb2)])
    );
    assert_eq!(
        ids(&c
            .io
            .to(["ra", "rb"])
            .except("common")
            .fetch_sockets()
            .await
            .unwrap()),
        expected(&[(&b, sb1), (&b, sb2)])
    );
    assert!(a.io.to("nobody").fetch_sockets().await.unwrap().is_empty());
    assert_eq!(
        ids(&b.io.local().fetch_sockets().await.unwrap()),
        expected(&[(&b, sb1), (&b, sb2)])
    );
}

async fn remote_socket_emit_reaches_only_that_socket(backend: Backend) {
    let (
        [a, b, c],
        [
            (_, mut ra, sa),
            (_, mut rb1, sb1),
            (_, mut rb2, sb2),
            (_, mut rc, sc),
        ],
    ) = cluster_with_clients(&backend, |b| b).await;
    fetch_one(&a, sb1).await.emit("m", "to b1").await.unwrap();
    assert_eq!(recv(&mut rb1, ARRIVES).await, r#"42["m","to b1"]"#);
    // A socket of the fetching node, through the same API.
    fetch_one(&c, sa).await.emit("m", "to a").await.unwrap();
    assert_eq!(recv(&mut ra, ARRIVES).await, r#"42["m","to a"]"#);
    fetch_one(&a, sa)
        .await
        .emit("m", "to a again")
        .await
        .unwrap();
    assert_eq!(recv(&mut ra, ARRIVES).await, r#"42["m","to a again"]"#);
    let watched = [
        (&mut ra, sa),
        (&mut rb1, sb1),
        (&mut rb2, sb2),
        (&mut rc, sc),
    ];
    nothing_arrives(&[&a, &b, &c], watched).await;
}

async fn remote_socket_emit_with_ack_gets_its_answer(backend: Backend) {
    let (
        [a, b, c],
        [
            (_, mut ra, sa),
            (_, mut rb1, sb1),
            (_, mut rb2, sb2),
            (tc, mut rc, sc),
        ],
    ) = cluster_with_clients(&backend, |b| b).await;
    let remote = fetch_one(&a, sc).await;
    let stream = remote.emit_with_ack::<_, String>("q", &"?").await.unwrap();
    let p = recv(&mut rc, ARRIVES).await;
    let id = ack_id(&p);
    assert_eq!(p, format!(r#"42{id}["q","?"]"#));
    answer(&tc, "/", id, r#"["from c"]"#).await;
    let acks: Vec<_> = within(SETTLES, stream.collect())
        .await
        .expect("the ack stream ends");
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].0, sc);
    assert_eq!(acks[0].1.as_ref().unwrap(), "from c");
    let watched = [
        (&mut ra, sa),
        (&mut rb1, sb1),
        (&mut rb2, sb2),
        (&mut rc, sc),
    ];
    nothing_arrives(&[&a, &b, &c], watched).await;
}

/// A remote socket that never answers: its ack stream yields a timeout error after the ack
/// timeout of the nodes (500 ms here), then ends.
async fn remote_socket_emit_with_ack_times_out(backend: Backend) {
    let ([a, b, _c], [_, (_, mut rb1, sb1), _, _]) =
        cluster_with_clients(&backend, |b| b.ack_timeout(Duration::from_millis(500))).await;
    let stream = fetch_one(&a, sb1)
        .await
        .emit_with_ack::<_, String>("q", &1)
        .await
        .unwrap();
    let p = recv(&mut rb1, ARRIVES).await;
    assert_eq!(p, format!(r#"42{}["q",1]"#, ack_id(&p)));
    let acks: Vec<_> = within(SETTLES, stream.collect())
        .await
        .expect("the ack stream ends");
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].0, sb1);
    assert!(matches!(acks[0].1, Err(AckError::Timeout)), "{acks:?}");
    drop(b);
}

async fn remote_socket_join_leave_and_rooms(backend: Backend) {
    let (
        [a, b, c],
        [
            (_, mut ra, sa),
            (_, mut rb1, sb1),
            (_, mut rb2, sb2),
            (_, mut rc, sc),
        ],
    ) = cluster_with_clients(&backend, |b| b).await;
    let local_rooms = |sid| sorted(b.io.get_socket(sid).unwrap().rooms());
    let remote = fetch_one(&a, sb1).await;
    assert_eq!(sorted(remote.rooms().await.unwrap()), ["rb"]);

    // In force when it returns: on gossip the rooms are joined on b at once; a broadcast
    // right after, from a third node (which per-sender order does not cover), reaches the
    // socket. On Redis, which orders the join before later messages, b applies it when it
    // reads it.
    let at_once = backend.applies_on_return();
    remote.join(["x", "y"]).await.unwrap();
    if at_once {
        assert_eq!(
            local_rooms(sb1),
            ["rb", "x", "y"],
            "joined when join returned"
        );
    }
    c.io.to("x").emit("m", "to x").await.unwrap();
    assert_eq!(recv(&mut rb1, ARRIVES).await, r#"42["m","to x"]"#);
    assert!(wait_until(SETTLES, || local_rooms(sb1) == ["rb", "x", "y"]).await);
    assert_eq!(sorted(remote.rooms().await.unwrap()), ["rb", "x", "y"]);
    // The other socket of that node is untouched.
    assert_eq!(local_rooms(sb2), ["rb"]);

    remote.leave("x").await.unwrap();
    if at_once {
        assert_eq!(local_rooms(sb1), ["rb", "y"], "left when leave returned");
    }
    c.io.to("x").emit("m", "lost").await.unwrap();
    assert!(wait_until(SETTLES, || local_rooms(sb1) == ["rb", "y"]).await);
    assert_eq!(sorted(remote.rooms().await.unwrap()), ["rb", "y"]);
    // The same socket fetched from a third node agrees.
    let from_c = fetch_one(&c, sb1).await;
    assert_eq!(sorted(from_c.rooms().await.unwrap()), ["rb", "y"]);
    assert_eq!(
        sorted(c.io.rooms().await.unwrap()),
        ["common", "ra", "rb", "rc", "y"]
    );
    let watched = [
        (&mut ra, sa),
        (&mut rb1, sb1),
        (&mut rb2, sb2),
        (&mut rc, sc),
    ];
    nothing_arrives(&[&a, &b, &c], watched).await;
}

async fn remote_socket_disconnect_disconnects_only_that_socket(backend: Backend) {
    let (
        [a, b, c],
        [
            (_, mut ra, sa),
            (_, mut rb1, sb1),
            (_, mut rb2, sb2),
            (_, mut rc, sc),
        ],
    ) = cluster_with_clients(&backend, |b| b).await;
    fetch_one(&c, sb2).await.disconnect().await.unwrap();
    // In force when it returns: on gossip the socket is gone from b at once, and a
    // broadcast right after from a (not the node that disconnected it) does not reach it.
    if backend.applies_on_return() {
        assert!(
            b.io.get_socket(sb2).is_none(),
            "gone when disconnect returned"
        );
    }
    a.io.emit("m", "after").await.unwrap();
    assert_eq!(recv(&mut rb2, ARRIVES).await, "41");
    assert!(wait_until(SETTLES, || b.io.get_socket(sb2).is_none()).await);
    for r in [&mut ra, &mut rb1, &mut rc] {
        assert_eq!(recv(r, ARRIVES).await, r#"42["m","after"]"#);
    }
    assert!(b.io.get_socket(sb1).is_some());
    nothing_arrives(
        &[&a, &b, &c],
        [(&mut ra, sa), (&mut rb1, sb1), (&mut rc, sc)],
    )
    .await;
    assert_eq!(
        ids(&a.io.fetch_sockets().await.unwrap()),
        expected(&[(&a, sa), (&b, sb1), (&c, sc)])
    );
}

/// Many `fetch_sockets` and `rooms` requests in flight at once, from every node, each get
/// the complete answer.
async fn concurrent_requests_from_every_node_each_get_everything(backend: Backend) {
    let ([a, b, c], [(_, _, sa), (_, _, sb1), (_, _, sb2), (_, _, sc)]) =
        cluster_with_clients(&backend, |b| b).await;
    let all = expected(&[(&a, sa), (&b, sb1), (&b, sb2), (&c, sc)]);
    let fetches = (0..30).map(|i| {
        let n = [&a, &b, &c][i % 3];
        async move { ids(&n.io.fetch_sockets().await.unwrap()) }
    });
    let rooms = (0..30).map(|i| {
        let n = [&a, &b, &c][i % 3];
        async move { sorted(n.io.rooms().await.unwrap()) }
    });
    let (fetched, rooms) = within(
        SETTLES,
        futures_util::future::join(
            futures_util::future::join_all(fetches),
            futures_util::future::join_all(rooms),
        ),
    )
    .await
    .expect("every request completes");
    for f in fetched {
        assert_eq!(f, all);
    }
    for r in rooms {
        assert_eq!(r, ["common", "ra", "rb", "rc"]);
    }
}

/// Operations on a fetched remote socket that has since disconnected do nothing and do not
/// hang: emit succeeds, rooms is empty, an ack stream ends empty without waiting for the ack
/// timeout (60 s here).
async fn stale_remote_socket_operations_are_harmless(backend: Backend) {
    let (
        [a, b, c],
        [
            (_, mut ra, sa),
            (_, _, sb1),
            (_, mut rb2, sb2),
            (_, mut rc, sc),
        ],
    ) = cluster_with_clients(&backend, |b| b.ack_timeout(Duration::from_secs(60))).await;
    let stale = fetch_one(&a, sb1).await;
    fetch_one(&a, sb1).await.disconnect().await.unwrap();
    assert!(wait_until(SETTLES, || b.io.get_socket(sb1).is_none()).await);

    stale.emit("m", "nobody").await.unwrap();
    assert!(stale.rooms().await.unwrap().is_empty());
    stale.join("x").await.unwrap();
    stale.leave("rb").await.unwrap();
    let stream = stale.emit_with_ack::<_, String>("q", &1).await.unwrap();
    let acks: Vec<_> = within(SETTLES, stream.collect())
        .await
        .expect("the ack stream ends");
    assert!(acks.is_empty(), "{acks:?}");
    stale.clone().disconnect().await.unwrap();
    nothing_arrives(
        &[&a, &b, &c],
        [(&mut ra, sa), (&mut rb2, sb2), (&mut rc, sc)],
    )
    .await;
    assert_eq!(
        sorted(a.io.rooms().await.unwrap()),
        ["common", "ra", "rb", "rc"]
    );
}
