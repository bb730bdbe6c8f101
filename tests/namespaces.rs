//! Several namespaces on an in-process cluster, static and dynamic, hosted by every node or
//! only some: every operation stays within its namespace.
mod common;
use common::*;
use futures_util::StreamExt;
use socketioxide::{extract::SocketRef, socket::Sid};

backend_tests! {
    broadcasts_never_cross_namespaces,
    every_operation_stays_in_its_namespace,
    namespace_hosted_by_some_nodes_only,
    dynamic_namespace_spans_nodes_and_is_isolated,
    deleted_namespace_leaves_the_cluster,
}

fn sorted_ids(it: impl IntoIterator<Item = Sid>) -> Vec<Sid> {
    let mut v: Vec<Sid> = it.into_iter().collect();
    v.sort();
    v
}

/// `/` and `/chat` on every node; on each node one client per namespace. Sockets of `/`
/// join `r` and `main`, sockets of `/chat` join `r` and `chat`.
async fn two_namespaces(backend: &Backend) -> ([TestNode; 3], [Client; 3], [Client; 3]) {
    let [a, b, c] = spawn_cluster::<3>(backend).await;
    let nodes = [&a, &b, &c];
    ns_everywhere(&nodes, "/", async |s: SocketRef<Adapter>| {
        s.join(["r", "main"])
    })
    .await;
    ns_everywhere(&nodes, "/chat", async |s: SocketRef<Adapter>| {
        s.join(["r", "chat"])
    })
    .await;
    let main = one_per_node([&a, &b, &c], "/").await;
    let chat = one_per_node([&a, &b, &c], "/chat").await;
    ([a, b, c], main, chat)
}

async fn broadcasts_never_cross_namespaces(backend: Backend) {
    let ([a, b, c], mut main, mut chat) = two_namespaces(&backend).await;

    a.io.of("/chat").unwrap().emit("m", "chat").await.unwrap();
    for (_, rx, _) in &mut chat {
        assert_eq!(recv(rx, ARRIVES).await, r#"42/chat,["m","chat"]"#);
    }
    let nodes = [&a, &b, &c];
    nothing_arrives(&nodes, main.iter_mut().map(|(_, rx, sid)| (rx, *sid))).await;

    b.io.emit("m", "main").await.unwrap();
    for (_, rx, _) in &mut main {
        assert_eq!(recv(rx, ARRIVES).await, r#"42["m","main"]"#);
    }
    let watched = chat.iter_mut().map(|(_, rx, sid)| (rx, *sid));
    nothing_arrives_on(&nodes, "/chat", watched).await;

    // A room of the same name in both namespaces.
    c.io.of("/chat")
        .unwrap()
        .to("r")
        .emit("m", "chat r")
        .await
        .unwrap();
    for (_, rx, _) in &mut chat {
        assert_eq!(recv(rx, ARRIVES).await, r#"42/chat,["m","chat r"]"#);
    }
    a.io.to("r")
        .except("chat")
        .emit("m", "main r")
        .await
        .unwrap();
    for (_, rx, _) in &mut main {
        assert_eq!(recv(rx, ARRIVES).await, r#"42["m","main r"]"#);
    }
    nothing_arrives(&nodes, main.iter_mut().map(|(_, rx, sid)| (rx, *sid))).await;
    let watched = chat.iter_mut().map(|(_, rx, sid)| (rx, *sid));
    nothing_arrives_on(&nodes, "/chat", watched).await;
}

/// `fetch_sockets`, `rooms`, `join`, `disconnect` and acks on one namespace never see or
/// touch the sockets of another.
async fn every_operation_stays_in_its_namespace(backend: Backend) {
    let ([a, b, c], mut main, mut chat) = two_namespaces(&backend).await;
    let chat_op = |n: &TestNode| n.io.of("/chat").unwrap();

    let fetched = chat_op(&a).fetch_sockets().await.unwrap();
    assert_eq!(
        sorted_ids(fetched.iter().map(|s| s.data().id)),
        sorted_ids(chat.iter().map(|c| c.2))
    );
    assert!(fetched.iter().all(|s| s.data().ns == "/chat"));
    assert_eq!(sorted(chat_op(&b).rooms().await.unwrap()), ["chat", "r"]);
    assert_eq!(sorted(c.io.rooms().await.unwrap()), ["main", "r"]);

    chat_op(&b).join("only-chat").await.unwrap();
    let ok = wait_until(SETTLES, || {
        [&a, &b, &c].iter().zip(&chat).all(|(n, (_, _, sid))| {
            let s = n.io.of("/chat").unwrap().get_socket(*sid).unwrap();
            s.rooms().contains(&"only-chat".into())
        })
    })
    .await;
    assert!(ok, "every /chat socket joined");
    assert_eq!(sorted(a.io.rooms().await.unwrap()), ["main", "r"]);

    // Acks in /chat: the request and the answer carry the namespace.
    let stream = chat_op(&c)
        .timeout(LONG)
        .emit_with_ack::<_, String>("q", &1)
        .await
        .unwrap();
    for (i, (tx, rx, _)) in chat.iter_mut().enumerate() {
        let p = recv(rx, ARRIVES).await;
        let id = ack_id(&p);
        assert_eq!(p, format!(r#"42/chat,{id}["q",1]"#));
        answer(tx, "/chat", id, &format!(r#"["chat{i}"]"#)).await;
    }
    let acks: Vec<_> = within(SETTLES, stream.collect())
        .await
        .expect("the ack stream ends");
    assert_eq!(acks.len(), 3, "{acks:?}");

    // Disconnecting every /chat socket leaves the / sockets connected.
    chat_op(&a).disconnect().await.unwrap();
    for (_, rx, _) in &mut chat {
        assert_eq!(recv(rx, ARRIVES).await, "41/chat,");
    }
    let watched = main.iter_mut().map(|(_, rx, sid)| (rx, *sid));
    nothing_arrives(&[&a, &b, &c], watched).await;
    assert_eq!(a.io.fetch_sockets().await.unwrap().len(), 3);
    let ok = wait_until(SETTLES, || {
        [&a, &b, &c]
            .iter()
            .all(|n| n.io.of("/chat").unwrap().sockets().is_empty())
    })
    .await;
    assert!(ok, "every /chat socket is gone");
    assert!(chat_op(&b).fetch_sockets().await.unwrap().is_empty());
}

/// A namespace hosted by two nodes of three: operations on it reach the nodes that host it,
/// and requests expecting answers complete at once: the third node is not waited for. The
/// request timeout is a minute, far beyond the test's bounds, so a request that waited for
/// the third node would fail the test instead of ending late.
async fn namespace_hosted_by_some_nodes_only(backend: Backend) {
    let cluster = TestCluster::new(&backend).with_request_timeout(LONG);
    let [a, b, c] = start_nodes::<3>(cluster, |b| b).await;
    ns_everywhere(&[&a, &b, &c], "/", async |_: SocketRef<Adapter>| {}).await;
    ns_everywhere(&[&a, &b], "/admin", async |_: SocketRef<Adapter>| {}).await;
    let (ta, mut ra, sa) = dummy(&a.io, "/admin").await;
    let (tb, mut rb, sb) = dummy(&b.io, "/admin").await;
    let (_, mut rc, sc) = dummy(&c.io, "/").await;

    let admin = a.io.of("/admin").unwrap();
    admin.clone().emit("m", "admins").await.unwrap();
    assert_eq!(recv(&mut ra, ARRIVES).await, r#"42/admin,["m","admins"]"#);
    assert_eq!(recv(&mut rb, ARRIVES).await, r#"42/admin,["m","admins"]"#);
    nothing_arrives(&[&a, &b, &c], [(&mut rc, sc)]).await;

    let fetched = within(SETTLES, admin.clone().fetch_sockets())
        .await
        .expect("fetch_sockets completes")
        .unwrap();
    assert_eq!(
        sorted_ids(fetched.iter().map(|s| s.data().id)),
        sorted_ids([sa, sb])
    );
    let rooms = within(SETTLES, admin.clone().rooms())
        .await
        .expect("rooms completes")
        .unwrap();
    assert!(rooms.is_empty());

    // c does not host /admin: the ack stream still ends once a and b have answered.
    let stream = admin
        .timeout(LONG)
        .emit_with_ack::<_, String>("q", &1)
        .await
        .unwrap();
    for (tx, rx, name) in [(&ta, &mut ra, "a"), (&tb, &mut rb, "b")] {
        let p = recv(rx, ARRIVES).await;
        let id = ack_id(&p);
        assert_eq!(p, format!(r#"42/admin,{id}["q",1]"#));
        answer(tx, "/admin", id, &format!(r#"["{name}"]"#)).await;
    }
    let acks: std::collections::HashMap<_, _> = within(SETTLES, stream.collect())
        .await
        .expect("the ack stream ends");
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert_eq!(acks[&sa].as_ref().unwrap(), "a");
    assert_eq!(acks[&sb].as_ref().unwrap(), "b");
    nothing_arrives(&[&a, &b, &c], [(&mut rc, sc)]).await;
}

/// A dynamic namespace: every node creates `/dyn/x` when a client connects to it. Its
/// broadcasts, fetches and acks span the nodes, and never reach `/dyn/y` nor `/`.
async fn dynamic_namespace_spans_nodes_and_is_isolated(backend: Backend) {
    let [a, b, c] = spawn_root_cluster::<3>(&backend).await;
    let nodes = [&a, &b, &c];
    for n in nodes {
        n.io.dyn_ns("/dyn/{id}", async |s: SocketRef<Adapter>| {
            s.join("dyn-room")
        })
        .unwrap();
    }
    let mut x = Vec::new();
    for n in nodes {
        x.push(dummy(&n.io, "/dyn/x").await);
    }
    let (_, mut ya, sya) = dummy(&a.io, "/dyn/y").await;
    let (_, mut yb, syb) = dummy(&b.io, "/dyn/y").await;
    let (_, mut root_c, sroot_c) = dummy(&c.io, "/").await;
    wait_for_namespace(&nodes, "/dyn/x").await;
    wait_for_namespace(&[&a, &b], "/dyn/y").await;

    b.io.of("/dyn/x").unwrap().emit("m", "x").await.unwrap();
    for (_, rx, _) in &mut x {
        assert_eq!(recv(rx, ARRIVES).await, r#"42/dyn/x,["m","x"]"#);
    }
    nothing_arrives_on(&nodes, "/dyn/y", [(&mut ya, sya), (&mut yb, syb)]).await;
    nothing_arrives(&nodes, [(&mut root_c, sroot_c)]).await;

    a.io.of("/dyn/y")
        .unwrap()
        .to("dyn-room")
        .emit("m", "y")
        .await
        .unwrap();
    assert_eq!(recv(&mut ya, ARRIVES).await, r#"42/dyn/y,["m","y"]"#);
    assert_eq!(recv(&mut yb, ARRIVES).await, r#"42/dyn/y,["m","y"]"#);
    nothing_arrives_on(
        &nodes,
        "/dyn/x",
        x.iter_mut().map(|(_, rx, sid)| (rx, *sid)),
    )
    .await;

    let fetched = c.io.of("/dyn/x").unwrap().fetch_sockets().await.unwrap();
    assert_eq!(
        sorted_ids(fetched.iter().map(|s| s.data().id)),
        sorted_ids(x.iter().map(|c| c.2))
    );
    assert!(fetched.iter().all(|s| s.data().ns == "/dyn/x"));

    let stream =
        a.io.of("/dyn/x")
            .unwrap()
            .timeout(LONG)
            .emit_with_ack::<_, String>("q", &1)
            .await
            .unwrap();
    for (tx, rx, _) in &mut x {
        let p = recv(rx, ARRIVES).await;
        let id = ack_id(&p);
        assert_eq!(p, format!(r#"42/dyn/x,{id}["q",1]"#));
        answer(tx, "/dyn/x", id, r#"["ok"]"#).await;
    }
    let acks: Vec<_> = within(SETTLES, stream.collect())
        .await
        .expect("the ack stream ends");
    assert_eq!(acks.len(), 3, "{acks:?}");
    assert!(acks.iter().all(|(_, r)| r.as_ref().unwrap() == "ok"));
}

/// A namespace deleted on one node no longer gets the cluster's broadcasts there, and the
/// other nodes stop counting on it.
/// (On Redis this guards `RedisDriver::unsubscribe`, which must reach Redis although
/// socketioxide polls the adapter's `close` only once.)
async fn deleted_namespace_leaves_the_cluster(backend: Backend) {
    let ([a, b, c], _main, mut chat) = two_namespaces(&backend).await;
    c.io.delete_ns("/chat");
    let [(_, ca, _), (_, cb, _), (_, _, sc)] = &mut chat;
    assert!(c.io.of("/chat").is_none());
    let ok = wait_hosting(&[&a, &b], "/chat", 2).await;
    assert!(ok, "a and b see c no longer hosting /chat");
    a.io.of("/chat").unwrap().emit("m", "after").await.unwrap();
    assert_eq!(recv(ca, ARRIVES).await, r#"42/chat,["m","after"]"#);
    assert_eq!(recv(cb, ARRIVES).await, r#"42/chat,["m","after"]"#);
    let fetched = within(SETTLES, b.io.of("/chat").unwrap().fetch_sockets())
        .await
        .expect("fetch_sockets completes")
        .unwrap();
    assert_eq!(fetched.len(), 2);
    assert!(fetched.iter().all(|s| s.data().id != *sc));
}
