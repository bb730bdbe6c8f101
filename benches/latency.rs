//! Cross-node broadcast latency: gossip mesh vs Redis vs one node (the ceiling), measured in
//! the same run and reported as ratios.
//!
//! `cargo bench --all-features --bench latency` (needs `redis-server` for the Redis column).
//! Each round: node A broadcasts, a socket on node B receives; rounds are sequential.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use socketioxide::{SocketIo, adapter::Emitter, extract::SocketRef};
use socketioxide_cluster::{ClusterAdapter, ClusterAdapterCtr, GossipAdapterConfig};

type A = ClusterAdapter<Emitter>;
const ROUNDS: usize = 2000;

async fn io(ctr: ClusterAdapterCtr) -> SocketIo<A> {
    let (_svc, io) = SocketIo::builder()
        .max_buffer_size(ROUNDS * 2)
        .with_adapter::<A>(ctr)
        .build_svc();
    io.ns("/", async |_: SocketRef<A>| {}).await.unwrap();
    io
}

/// Median and p99 of `ROUNDS` broadcasts from `from` to a socket on `to`.
async fn measure(from: &SocketIo<A>, to: &SocketIo<A>) -> (Duration, Duration) {
    let (_tx, mut rx) = to.new_dummy_sock("/", ()).await;
    rx.recv().await.unwrap();
    let mut samples = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS + 100 {
        let t = Instant::now();
        from.emit("m", &i).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("delivered")
            .unwrap();
        if i >= 100 {
            samples.push(t.elapsed());
        }
    }
    samples.sort();
    (samples[ROUNDS / 2], samples[ROUNDS * 99 / 100])
}

async fn gossip_pair() -> (SocketIo<A>, SocketIo<A>) {
    let cfg = |seed: Option<String>| {
        let c = GossipAdapterConfig::new()
            .with_cluster_id(format!("bench-{}", std::process::id()))
            .with_gossip_addr("127.0.0.1:0".parse().unwrap())
            .with_mesh_addr("127.0.0.1:0".parse().unwrap())
            .with_gossip_interval(Duration::from_millis(50))
            .with_secret("bench");
        match seed {
            Some(s) => c.with_seeds([s]),
            None => c,
        }
    };
    let a = ClusterAdapterCtr::gossip(cfg(None)).await.unwrap();
    let ca = a.cluster().unwrap();
    let b = ClusterAdapterCtr::gossip(cfg(Some(ca.gossip_addr().to_string())))
        .await
        .unwrap();
    let cb = b.cluster().unwrap();
    let (a, b) = (io(a).await, io(b).await);
    for _ in 0..500 {
        if ca.members().iter().any(|m| m.hosts("/")) && cb.members().iter().any(|m| m.hosts("/")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (a, b)
}

fn fmt(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let local = io(ClusterAdapterCtr::gossip(
        GossipAdapterConfig::new()
            .with_gossip_addr("127.0.0.1:0".parse().unwrap())
            .with_mesh_addr("127.0.0.1:0".parse().unwrap())
            .with_secret("bench"),
    )
    .await
    .unwrap())
    .await;
    let (l50, l99) = measure(&local, &local).await;
    println!("one node (ceiling): median {}, p99 {}", fmt(l50), fmt(l99));

    let (a, b) = gossip_pair().await;
    let (g50, g99) = measure(&a, &b).await;
    println!(
        "gossip mesh:        median {}, p99 {}  ({:.1}x the ceiling)",
        fmt(g50),
        fmt(g99),
        g50.as_secs_f64() / l50.as_secs_f64()
    );

    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        println!("redis-server not found: Redis column skipped");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let mut ctrs = Vec::new();
    for _ in 0..2 {
        let mut last = None;
        for _ in 0..100 {
            match ClusterAdapterCtr::redis(&url, Default::default()).await {
                Ok(c) => {
                    last = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        ctrs.push(last.expect("redis-server up"));
    }
    let rb = io(ctrs.pop().unwrap()).await;
    let ra = io(ctrs.pop().unwrap()).await;
    let (r50, r99) = measure(&ra, &rb).await;
    println!(
        "redis:              median {}, p99 {}  ({:.1}x the ceiling)",
        fmt(r50),
        fmt(r99),
        r50.as_secs_f64() / l50.as_secs_f64()
    );
    println!(
        "gossip / redis median latency ratio: {:.2}",
        g50.as_secs_f64() / r50.as_secs_f64()
    );
    let _ = server.kill();
    let _ = server.wait();
}
