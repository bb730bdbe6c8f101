//! Faults: a node killed while a request is pending, a node restarted, a graceful leave, and
//! a node that does not host the namespace. Real nodes on 127.0.0.1.
//!
//! Gossip only: membership, failure detection and leaves are the gossip backend's own.
#![cfg(feature = "cluster-gossip")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use socketioxide::extract::SocketRef;
use socketioxide_cluster::{GossipAdapterConfig, MembershipEvent};

/// A request timeout long enough that returning "well before" it cannot be an accident.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A node on its own runtime, so that the test can kill it the way SIGKILL does: every task
/// stops at once and nothing is said to the peers.
struct Victim {
    rt: tokio::runtime::Runtime,
    node: TestNode,
    _tx: ClientTx,
    rx: ClientRx,
}

fn spawn_victim(config: GossipAdapterConfig) -> Victim {
    let (rt, (node, tx, rx)) = on_own_runtime(|| node_with_socket(config));
    Victim {
        rt,
        node,
        _tx: tx,
        rx,
    }
}

impl Victim {
    /// Stop every task of the node without a word to its peers, like SIGKILL.
    fn kill(self) {
        let Victim { rt, node, .. } = self;
        rt.shutdown_background();
        // Its sockets died with the runtime; the handles are inert now.
        std::mem::forget(node);
    }
}

async fn node_with_socket(config: GossipAdapterConfig) -> (TestNode, ClientTx, ClientRx) {
    let node = start_gossip(config).await;
    node.io
        .ns("/", async |_: SocketRef<Adapter>| {})
        .await
        .unwrap();
    let (tx, mut rx) = node.io.new_dummy_sock("/", ()).await;
    recv(&mut rx, ARRIVES).await;
    (node, tx, rx)
}

async fn wait_members(nodes: &[&TestNode], n: usize) -> bool {
    wait_until(FORMS, || {
        nodes.iter().all(|node| {
            node.cluster()
                .members()
                .iter()
                .filter(|m| m.hosts("/") && m.server_id.is_some())
                .count()
                == n
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_does_not_hold_up_requests_and_a_restarted_node_rejoins() {
    init_tracing();
    let id = cluster_id();
    let cfg = |seed| config(&id, seed).with_request_timeout(REQUEST_TIMEOUT);
    let (a, _ta, mut ra) = node_with_socket(cfg(None)).await;
    let seed = Some(a.cluster().gossip_addr());
    let (b, _tb, mut rb) = node_with_socket(cfg(seed)).await;
    let c = spawn_victim(cfg(seed));
    assert!(wait_members(&[&a, &b, &c.node], 2).await, "cluster formed");
    assert_eq!(a.io.fetch_sockets().await.unwrap().len(), 3);

    c.kill();
    // Let its runtime's threads wind down: from now on it answers nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let sockets = a.io.fetch_sockets().await.unwrap();
    let took = started.elapsed();
    println!(
        "fetch_sockets with a killed peer took {took:?} (request timeout {REQUEST_TIMEOUT:?})"
    );
    assert_eq!(sockets.len(), 2, "the sockets of the live nodes");
    assert!(
        took < REQUEST_TIMEOUT / 2,
        "returned well before the request timeout: {took:?}"
    );

    // An ack request made while the node is dead completes with the live nodes' acks.
    let acks = a.io.emit_with_ack::<_, String>("ping", "x").await.unwrap();
    for (tx, rx) in [(&_ta, &mut ra), (&_tb, &mut rb)] {
        let id = ack_id(&recv(rx, ARRIVES).await);
        answer(tx, "/", id, r#"["pong"]"#).await;
    }
    let started = Instant::now();
    let got: Vec<_> = acks.collect().await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|s| s == "pong")),
        "{got:?}"
    );
    assert!(started.elapsed() < REQUEST_TIMEOUT / 2);

    // The dead node is dropped from the view, and a restarted node rejoins by itself.
    assert!(
        wait_members(&[&a, &b], 1).await,
        "the killed node is no longer a member"
    );
    let mut c2 = spawn_victim(cfg(seed));
    assert!(
        wait_members(&[&a, &b, &c2.node], 2).await,
        "restarted node rejoined"
    );
    a.io.emit("again", &1).await.unwrap();
    assert_eq!(recv(&mut c2.rx, ARRIVES).await, r#"42["again",1]"#);
    assert_eq!(recv(&mut rb, ARRIVES).await, r#"42["again",1]"#);
    c2.node.cluster().shutdown().await;
    c2.kill();
}

/// The other order: requests already wait on a node when it dies. An ack request pending
/// on a node's silent socket ends, with the live nodes' acks, once the node is killed; a
/// `fetch_sockets` pending on a node that hangs (its one runtime thread blocked, like
/// SIGSTOP: its connections stay open but silent) ends once the peer timeout cuts it.
/// Neither waits for the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_requests_are_pending_is_not_waited_for() {
    init_tracing();
    let id = cluster_id();
    let cfg = |seed| config(&id, seed).with_request_timeout(REQUEST_TIMEOUT);
    let (a, ta, mut ra) = node_with_socket(cfg(None)).await;
    let seed = Some(a.cluster().gossip_addr());
    let (b, tb, mut rb) = node_with_socket(cfg(seed)).await;

    // Acks: the victim's socket gets the request and never answers.
    let mut c = spawn_victim(cfg(seed));
    assert!(wait_members(&[&a, &b, &c.node], 2).await, "cluster formed");
    let acks =
        a.io.timeout(LONG)
            .emit_with_ack::<_, String>("ping", "x")
            .await
            .unwrap();
    for (tx, rx) in [(&ta, &mut ra), (&tb, &mut rb)] {
        let id = ack_id(&recv(rx, ARRIVES).await);
        answer(tx, "/", id, r#"["pong"]"#).await;
    }
    recv(&mut c.rx, ARRIVES).await; // pending on the victim's socket from now on
    let started = Instant::now();
    let collecting = tokio::spawn(acks.collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !collecting.is_finished(),
        "the ack request waits for the victim"
    );
    c.kill();
    let got = within(SETTLES, collecting)
        .await
        .expect("the ack stream ends once the node is dead")
        .unwrap();
    assert_eq!(got.len(), 2, "the live nodes' acks: {got:?}");
    assert!(
        got.iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|s| s == "pong"))
    );
    println!(
        "acks pending on a killed node ended after {:?}",
        started.elapsed()
    );
    assert!(wait_members(&[&a, &b], 1).await, "the dead node is dropped");

    // fetch_sockets: a new victim hangs, the request waits on it until the peer timeout.
    let c = spawn_victim(cfg(seed));
    assert!(
        wait_members(&[&a, &b, &c.node], 2).await,
        "the new node joined"
    );
    assert_eq!(a.io.fetch_sockets().await.unwrap().len(), 3);
    let (hung_tx, hung_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    c.rt.spawn(async move {
        hung_tx.send(()).unwrap();
        // Blocks the node's only runtime thread: nothing of it runs any more.
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
    });
    tokio::task::spawn_blocking(move || hung_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the victim hangs");
    let started = Instant::now();
    let fetch = tokio::spawn({
        let io = a.io.clone();
        async move { io.fetch_sockets().await.map(|s| s.len()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !fetch.is_finished(),
        "fetch_sockets waits for the hung node"
    );
    let n = within(REQUEST_TIMEOUT / 2, fetch)
        .await
        .expect("fetch_sockets ends well before the request timeout")
        .unwrap()
        .unwrap();
    assert_eq!(n, 2, "the sockets of the live nodes");
    println!(
        "fetch_sockets pending on a hung node ended after {:?} (peer timeout 1 s, request \
         timeout {REQUEST_TIMEOUT:?})",
        started.elapsed()
    );
    // Kill it for good; released only then, its thread finds the runtime shut down.
    c.kill();
    let _ = release_tx.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_is_seen_at_once() {
    init_tracing();
    let id = cluster_id();
    // Slow gossip and a long peer timeout: failure detection, or a connection that merely
    // went silent, would take 10 s, so a drop within the bound below can only come from
    // the leave itself.
    let cfg = |seed| {
        config(&id, seed)
            .with_gossip_interval(Duration::from_millis(2000))
            .with_peer_timeout(PEER_TIMEOUT)
    };
    let (a, _ta, _ra) = node_with_socket(cfg(None)).await;
    let seed = Some(a.cluster().gossip_addr());
    let (b, _tb, _rb) = node_with_socket(cfg(seed)).await;
    let (c, _tc, _rc) = node_with_socket(cfg(seed)).await;
    assert!(wait_members(&[&a, &b, &c], 2).await);
    let mut events = a.cluster().membership_events();

    let leaving = c.cluster().node_name().to_string();
    c.cluster().shutdown().await;
    // A silent node is dropped after the peer timeout (10 s); a leave is seen at once. The
    // bound, under a third of the peer timeout, leaves room for a loaded machine.
    const PEER_TIMEOUT: Duration = Duration::from_secs(10);
    let started = Instant::now();
    let dropped = wait_until(PEER_TIMEOUT / 3, || {
        [&a, &b]
            .iter()
            .all(|n| n.cluster().members().iter().all(|m| m.node_name != leaving))
    })
    .await;
    assert!(dropped, "peers dropped the leaving node at once");
    println!("a graceful leave was seen after {:?}", started.elapsed());
    let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, MembershipEvent::Left(m) if m.node_name == leaving));
    assert_eq!(a.io.fetch_sockets().await.unwrap().len(), 2);
}

/// `membership_events()` of a real cluster: `Joined` for each node that comes, with its
/// name and addresses, `Left` for a node that leaves and for one that is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_events_follow_nodes_coming_and_going() {
    init_tracing();
    let id = cluster_id();
    let (a, _ta, _ra) = node_with_socket(config(&id, None)).await;
    let mut events = a.cluster().membership_events();
    let seed = Some(a.cluster().gossip_addr());
    let next = async |events: &mut (dyn futures_util::Stream<Item = MembershipEvent> + Unpin)| {
        within(FORMS, events.next())
            .await
            .expect("a membership event in time")
            .expect("the event stream is open")
    };

    let (b, _tb, _rb) = node_with_socket(config(&id, seed)).await;
    match next(&mut events).await {
        MembershipEvent::Joined(m) => {
            assert_eq!(m.node_name, b.cluster().node_name());
            assert_eq!(m.gossip_addr, b.cluster().gossip_addr());
            assert_eq!(m.mesh_addr, b.cluster().mesh_addr());
        }
        other => panic!("expected b to join, got {other:?}"),
    }
    let c = spawn_victim(config(&id, seed));
    let c_name = c.node.cluster().node_name().to_string();
    match next(&mut events).await {
        MembershipEvent::Joined(m) => assert_eq!(m.node_name, c_name),
        other => panic!("expected c to join, got {other:?}"),
    }

    b.cluster().shutdown().await;
    match next(&mut events).await {
        MembershipEvent::Left(m) => assert_eq!(m.node_name, b.cluster().node_name()),
        other => panic!("expected b to leave, got {other:?}"),
    }
    c.kill();
    match next(&mut events).await {
        MembershipEvent::Left(m) => assert_eq!(m.node_name, c_name),
        other => panic!("expected the killed c to be found gone, got {other:?}"),
    }
    assert!(a.cluster().members().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_only_for_nodes_hosting_the_namespace() {
    init_tracing();
    let id = cluster_id();
    let cfg = |seed| config(&id, seed).with_request_timeout(REQUEST_TIMEOUT);
    let (a, _ta, _ra) = node_with_socket(cfg(None)).await;
    let seed = Some(a.cluster().gossip_addr());
    let (b, _tb, _rb) = node_with_socket(cfg(seed)).await;
    let (c, _tc, _rc) = node_with_socket(cfg(seed)).await;
    assert!(wait_members(&[&a, &b, &c], 2).await);
    for n in [&a, &b] {
        n.io.ns("/partial", async |_: SocketRef<Adapter>| {})
            .await
            .unwrap();
    }
    let (_t, mut r) = b.io.new_dummy_sock("/partial", ()).await;
    recv(&mut r, ARRIVES).await;
    assert!(
        wait_until(Duration::from_secs(10), || {
            a.cluster()
                .members()
                .iter()
                .filter(|m| m.hosts("/partial"))
                .count()
                == 1
        })
        .await
    );
    let started = Instant::now();
    let sockets = a.io.of("/partial").unwrap().fetch_sockets().await.unwrap();
    assert_eq!(sockets.len(), 1);
    assert!(
        started.elapsed() < REQUEST_TIMEOUT / 2,
        "C said at once that it does not host /partial"
    );
}
