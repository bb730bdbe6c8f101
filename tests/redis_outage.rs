//! The Redis backend when Redis dies and comes back mid-run: what happens to emits,
//! requests and the reconnection (documented in the crate's `redis` module).
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::{Adapter, ClientRx, redis_server};
use socketioxide::{SocketIo, extract::SocketRef};
use socketioxide_cluster::{ClusterAdapterCtr, redis::RedisAdapterConfig};

/// The README's bound while Redis is down: the Redis response timeout (2 s), with a margin
/// for a loaded machine that no hang fits in.
const OUTAGE_BOUND: Duration = Duration::from_secs(5);

async fn node(url: &str) -> SocketIo<Adapter> {
    let config = RedisAdapterConfig::new().with_request_timeout(Duration::from_secs(1));
    let ctr = ClusterAdapterCtr::redis(url, config)
        .await
        .expect("redis reachable");
    let (_svc, io) = SocketIo::builder().with_adapter::<Adapter>(ctr).build_svc();
    io.ns("/", async |_: SocketRef<Adapter>| {}).await.unwrap();
    io
}

async fn next(rx: &mut ClientRx, ms: u64) -> Option<String> {
    match tokio::time::timeout(Duration::from_millis(ms), rx.recv()).await {
        Ok(Some(p)) => Some(String::from(p)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_a_clear_error_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = ClusterAdapterCtr::redis(
        &format!("redis://user:hunter2@127.0.0.1:{port}"),
        RedisAdapterConfig::new(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot connect to Redis"), "{msg}");
    assert!(msg.contains(&port.to_string()), "{msg}");
    assert!(!msg.contains("hunter2"), "credentials leaked: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_and_restarted_mid_run() {
    let Some(mut redis) = redis_server::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let a = node(&url).await;
    let b = node(&url).await;
    let (_ta, mut ra) = a.new_dummy_sock("/", ()).await;
    let (_tb, mut rb) = b.new_dummy_sock("/", ()).await;
    next(&mut ra, 2000).await.expect("connect packet");
    next(&mut rb, 2000).await.expect("connect packet");

    a.emit("before", &1).await.unwrap();
    assert_eq!(
        next(&mut rb, 2000).await.as_deref(),
        Some(r#"42["before",1]"#)
    );
    assert_eq!(
        next(&mut ra, 2000).await.as_deref(),
        Some(r#"42["before",1]"#)
    );

    redis.kill();

    // Emits: an error for the other nodes, within the Redis response timeout (2 s, plus a
    // margin for a loaded machine); local sockets still get them.
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(OUTAGE_BOUND, a.emit("during", &2))
        .await
        .expect("emit does not hang while Redis is down");
    println!(
        "an emit with Redis down returned after {:?}",
        started.elapsed()
    );
    assert!(
        res.is_err(),
        "the caller learns other nodes were not reached"
    );
    assert_eq!(
        next(&mut ra, 2000).await.as_deref(),
        Some(r#"42["during",2]"#)
    );
    assert_eq!(
        next(&mut rb, 300).await,
        None,
        "nothing crossed while Redis was down"
    );

    // Requests: an error within the same bound, no hang.
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(OUTAGE_BOUND, a.fetch_sockets())
        .await
        .expect("fetch_sockets does not hang while Redis is down");
    println!(
        "a fetch_sockets with Redis down returned after {:?}",
        started.elapsed()
    );
    assert!(res.is_err());

    // Redis comes back: the nodes reconnect and resubscribe by themselves.
    redis.restart();
    let mut delivered = false;
    for i in 0..60 {
        let _ = a.emit("after", &i).await;
        if let Some(msg) = next(&mut rb, 250).await {
            assert!(msg.starts_with(r#"42["after","#), "{msg}");
            delivered = true;
            break;
        }
    }
    assert!(delivered, "cross-node emits resumed after Redis restarted");
    while next(&mut ra, 50).await.is_some() {}
    assert_eq!(
        a.fetch_sockets().await.unwrap().len(),
        2,
        "requests work again"
    );
}

/// A Redis that hangs (stopped: connections open, no answer) costs an emit or a request at
/// most the Redis response timeout, 2 s (the bound adds a margin for a loaded machine);
/// once it answers again, so does the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_at_most_the_response_timeout() {
    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    // A request timeout longer than the bound: only the response timeout can end a request
    // in time.
    let config = RedisAdapterConfig::new().with_request_timeout(Duration::from_secs(30));
    let a = {
        let ctr = ClusterAdapterCtr::redis(&url, config.clone())
            .await
            .unwrap();
        let (_svc, io) = SocketIo::builder().with_adapter::<Adapter>(ctr).build_svc();
        io.ns("/", async |_: SocketRef<Adapter>| {}).await.unwrap();
        io
    };
    let b = node(&url).await;
    let (_tb, mut rb) = b.new_dummy_sock("/", ()).await;
    next(&mut rb, 5000).await.expect("connect packet");
    a.emit("before", &1).await.unwrap();
    assert_eq!(
        next(&mut rb, 5000).await.as_deref(),
        Some(r#"42["before",1]"#)
    );

    redis.signal("STOP");
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(OUTAGE_BOUND, a.emit("during", &2))
        .await
        .expect("an emit returns within the bound while Redis hangs");
    println!(
        "an emit with Redis hung returned after {:?}: {res:?}",
        started.elapsed()
    );
    assert!(
        res.is_err(),
        "the caller learns other nodes were not reached"
    );
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(OUTAGE_BOUND, a.fetch_sockets())
        .await
        .expect("fetch_sockets returns within the bound while Redis hangs");
    println!(
        "a fetch_sockets with Redis hung returned after {:?}",
        started.elapsed()
    );
    assert!(res.is_err());

    redis.signal("CONT");
    // What was sent while Redis hung may still arrive (it was written to the connection
    // before the timeout): the caller was told it may not have.
    let mut delivered = false;
    for i in 0..60 {
        let _ = a.emit("after", &i).await;
        while let Some(msg) = next(&mut rb, 250).await {
            println!("after the hang, b got {msg}");
            delivered |= msg.starts_with(r#"42["after","#);
        }
        if delivered {
            break;
        }
    }
    assert!(delivered, "cross-node emits work again once Redis answers");
}
