//! The Redis backend configured from the environment, as deployments do
//! (`ClusterAdapterCtr::from_env`): the cluster id is the channel prefix, and the request
//! timeout, the ack buffer and the stream buffer apply; an invalid value is an error naming
//! its variable.
//!
//! One test in its own binary: it sets process-wide environment variables.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use socketioxide::{SocketIo, extract::SocketRef};
use socketioxide_cluster::ClusterAdapterCtr;

async fn node_from_env() -> SocketIo<Adapter> {
    node_from_env_with(None).await
}

/// A node from the environment; `max_buffer_size`, if given, bounds each socket's queue.
async fn node_from_env_with(max_buffer_size: Option<usize>) -> SocketIo<Adapter> {
    let ctr = ClusterAdapterCtr::from_env().await.expect("node starts");
    let mut builder = SocketIo::builder();
    if let Some(n) = max_buffer_size {
        builder = builder.max_buffer_size(n);
    }
    let (_svc, io) = builder.with_adapter::<Adapter>(ctr).build_svc();
    io.ns("/", async |_: SocketRef<Adapter>| {}).await.unwrap();
    io
}

fn set(vars: &[(&str, &str)]) {
    for (k, v) in vars {
        // SAFETY: this binary's only test sets them, before any thread reads them.
        unsafe { std::env::set_var(k, v) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_settings_come_from_the_environment() {
    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let id = cluster_id();

    set(&[
        ("SOCKETIO_CLUSTER_BACKEND", &url),
        ("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS", "not-a-number"),
    ]);
    let err = ClusterAdapterCtr::from_env().await.unwrap_err().to_string();
    assert!(
        err.contains("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS"),
        "the error names the variable: {err}"
    );

    set(&[
        ("SOCKETIO_CLUSTER_ID", &id),
        ("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS", "500"),
        ("SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER", "4"),
    ]);
    let a = node_from_env().await;
    let b = node_from_env().await;

    // The cluster id is the channel prefix: both nodes listen on its request channel.
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{id}-request#/#");
    let (_, subscribers): (String, usize) = ::redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&channel)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(subscribers, 2, "both nodes subscribed to {channel}");

    stream_buffer(&a).await;

    // The ack buffer: 20 sockets of b answer at once, the caller reads late; the Redis
    // adapter keeps at most the buffer (plus one) of the responses it did not read yet.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(dummy(&b, "/").await);
    }
    let stream = a
        .timeout(Duration::from_secs(2))
        .emit_with_ack::<_, String>("q", &1)
        .await
        .unwrap();
    for (tx, rx, _) in &mut clients {
        let id = ack_id(&recv(rx, ARRIVES).await);
        answer(tx, "/", id, r#"["ok"]"#).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks: Vec<_> = within(SETTLES, stream.collect())
        .await
        .expect("the ack stream ends");
    let answered = acks.iter().filter(|(_, r)| r.is_ok()).count();
    println!("{answered} of 20 acks kept with an ack response buffer of 4");
    assert!(
        (1..=5).contains(&answered),
        "the buffer of 4 applies: {answered} answers kept"
    );

    // The request timeout: a third subscriber of the request channel never answers, so a
    // fetch_sockets waits for it until the 500 ms timeout, not the default 5 s.
    let mut silent = client.get_async_pubsub().await.unwrap();
    silent.subscribe(&channel).await.unwrap();
    let started = Instant::now();
    let res = within(Duration::from_secs(4), a.fetch_sockets())
        .await
        .expect("fetch_sockets ends before the default request timeout");
    let took = started.elapsed();
    println!(
        "fetch_sockets with a silent subscriber: {took:?}, {:?}",
        res.map(|s| s.len())
    );
    assert!(took >= Duration::from_millis(500), "it waited: {took:?}");
    drop(silent);
}

/// Broadcasts of one burst.
const BURST: usize = 500;

/// The stream buffer: how many messages of one channel a node queues between Redis and the
/// adapter. Two more nodes, each on a runtime of its own with one thread, one with a
/// buffer of 1,000 and one with a buffer of 2, are held (their thread blocked) while `a`
/// emits a burst of 500 broadcasts, then let go: the first hands all 500 to its client,
/// the second drops what its buffer cannot hold (and logs it).
async fn stream_buffer(a: &SocketIo<Adapter>) {
    let mut held = Vec::new();
    for buffer in ["1000", "2"] {
        set(&[("SOCKETIO_CLUSTER_STREAM_BUFFER", buffer)]);
        let (rt, (io, client)) = on_own_runtime(|| async {
            let io = node_from_env_with(Some(4 * BURST)).await;
            let client = dummy(&io, "/").await;
            (io, client)
        });
        // The runtime's one thread is blocked until `release` is dropped (at most 60 s).
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        rt.spawn(async move {
            let _ = started_tx.send(());
            let _ = blocked.recv_timeout(Duration::from_secs(60));
        });
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the node's thread is held");
        held.push((rt, io, client, release));
    }
    for i in 0..BURST {
        a.emit("burst", &i).await.unwrap();
    }
    let mut delivered = Vec::new();
    for (rt, io, mut client, release) in held {
        drop(release);
        delivered.push(burst_until_marker(a, &mut client.1).await);
        rt.shutdown_background();
        // Its tasks died with the runtime; the handles are inert now.
        std::mem::forget((io, client));
    }
    println!("of a burst of {BURST}: {delivered:?} delivered with stream buffers of 1000 and 2");
    assert_eq!(
        delivered[0], BURST,
        "a buffer of 1,000 holds the whole burst"
    );
    assert!(
        delivered[1] < BURST / 2,
        "a buffer of 2 cannot: {} delivered",
        delivered[1]
    );
}

/// How many `burst` broadcasts `rx` gets before a `marker` one. Two broadcasts of one node
/// arrive in the order they were made, so none of the burst comes after the marker; the
/// marker is sent again until one arrives (a full queue may drop it too).
async fn burst_until_marker(a: &SocketIo<Adapter>, rx: &mut ClientRx) -> usize {
    let mut burst = 0;
    for _ in 0..100 {
        a.emit("marker", &0).await.unwrap();
        while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            let text = String::from(p);
            if text.starts_with(r#"42["marker""#) {
                return burst;
            }
            assert!(
                text.starts_with(r#"42["burst""#),
                "unexpected packet {text}"
            );
            burst += 1;
        }
    }
    panic!("no marker arrived; {burst} of the burst did");
}
