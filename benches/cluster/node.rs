//! A node process: one Socket.IO server on a loopback port with the backend the driver names,
//! driven by one-line commands on stdin and answering one line per command on stdout.
//!
//! | command                  | what the node does                                   | answer                      |
//! |--------------------------|------------------------------------------------------|-----------------------------|
//! | `ping <seq>`             | `io.emit("m", (seq, now_ns, ""))`                    | `ok`                        |
//! | `flood <base> <n> <size>`| emits `n` such messages with a `size`-byte payload    | `ok <first_ns> <last_ns> <errors>` |
//! | `dummies <n>`            | connects `n` in-process sockets to `/many` that ack  | `ok`                        |
//! | `fetch <rounds>`         | `fetch_sockets()` on `/many`, one after the other    | `ok <sockets> <ns>...`      |
//! | `ack <rounds>`           | `emit_with_ack` on `/many`, waiting for every ack    | `ok <min acks> <ns>...`     |
//! | `rooms <rounds>`         | `join(room)`, then `leave(room)`, of a socket of `/many` on another node (on this one, alone), found with `fetch_sockets` | `ok 1 <ns>...` (one sample per join and per leave) |
//!
//! Timestamps are `CLOCK_REALTIME` in ns, the clock the driver's clients read too.

use std::{
    error::Error,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use socketioxide::{
    SocketIo, SocketIoBuilder,
    adapter::{Adapter, Emitter},
    extract::SocketRef,
    layer::SocketIoLayer,
};
use socketioxide_cluster::{
    ClusterAdapter, ClusterAdapterCtr, GossipAdapter, GossipAdapterConfig, GossipAdapterCtr,
};
use socketioxide_core::adapter::DefinedAdapter;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub type BoxError = Box<dyn Error + Send + Sync>;

/// Names the backend of a node process; its presence makes the binary a node.
pub const ENV_BACKEND: &str = "CLUSTER_BENCH_NODE";
/// Gossip seed address, or Redis URL.
pub const ENV_PEER: &str = "CLUSTER_BENCH_PEER";
/// Cluster id (gossip) or channel prefix (Redis), unique per run.
pub const ENV_CLUSTER: &str = "CLUSTER_BENCH_ID";
/// Per-socket buffer and Redis subscriber queue size.
pub const ENV_BUFFER: &str = "CLUSTER_BENCH_BUFFER";

/// The namespace of the many in-process sockets.
const MANY: &str = "/many";

/// The wall clock in ns, shared by every process on the machine.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

pub fn main() -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let backend = std::env::var(ENV_BACKEND)?;
    match backend.as_str() {
        crate::floor::BETWEEN_PROCESSES => return crate::floor::serve_between_processes().await,
        crate::floor::SINK => return crate::floor::serve_sink().await,
        crate::floor::SOURCE => return crate::floor::serve_source().await,
        _ => {}
    }
    let peer = std::env::var(ENV_PEER).unwrap_or_default();
    let cluster = std::env::var(ENV_CLUSTER).unwrap_or_else(|_| "bench".into());
    let buffer: usize = std::env::var(ENV_BUFFER)?.parse()?;
    let builder = SocketIo::builder().max_buffer_size(buffer);
    match backend.as_str() {
        "local" => {
            let (layer, io) = builder.build_layer();
            for path in ["/", MANY] {
                io.ns(path, async |_: SocketRef| {});
            }
            serve((layer, io), None).await
        }
        "gossip" | "gossip-metrics" => {
            if backend == "gossip-metrics" {
                record_metrics()?;
            }
            let mut config = GossipAdapterConfig::new()
                .with_cluster_id(cluster)
                .with_gossip_addr("127.0.0.1:0".parse()?)
                .with_mesh_addr("127.0.0.1:0".parse()?)
                .with_gossip_interval(Duration::from_millis(50))
                .with_secret("8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7");
            if !peer.is_empty() {
                config = config.with_seeds([peer]);
            }
            let ctr = GossipAdapterCtr::new(config).await?;
            let gossip = ctr.cluster().gossip_addr().to_string();
            serve(
                namespaces(builder.with_adapter::<GossipAdapter<Emitter>>(ctr)).await?,
                Some(gossip),
            )
            .await
        }
        "redis" => {
            let client = redis::Client::open(format!("{peer}?protocol=resp3"))?;
            let config = socketioxide_redis::RedisAdapterConfig::new()
                .with_prefix(cluster)
                .with_stream_buffer(buffer);
            let ctr =
                socketioxide_redis::RedisAdapterCtr::new_with_redis_config(&client, config).await?;
            let adapter = builder.with_adapter::<socketioxide_redis::RedisAdapter<Emitter>>(ctr);
            serve(namespaces(adapter).await?, None).await
        }
        "cluster-redis" => {
            let config = socketioxide_cluster::redis::RedisAdapterConfig::new()
                .with_prefix(cluster)
                .with_stream_buffer(buffer);
            let ctr = ClusterAdapterCtr::redis(&peer, config).await?;
            serve(
                namespaces(builder.with_adapter::<ClusterAdapter<Emitter>>(ctr)).await?,
                None,
            )
            .await
        }
        other => Err(format!("unknown backend {other:?}").into()),
    }
}

/// Record the library's metrics as an application serving them to Prometheus would: the
/// Prometheus recorder installed, its upkeep every 5 s and a scrape (a rendering of the
/// page) every 15 s.
fn record_metrics() -> Result<(), BoxError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        for i in 0u64.. {
            tick.tick().await;
            handle.run_upkeep();
            if i % 3 == 0 {
                std::hint::black_box(handle.render());
            }
        }
    });
    Ok(())
}

/// Add the namespaces, waiting until a remote adapter has set them up.
async fn namespaces<A, E>(
    builder: SocketIoBuilder<A>,
) -> Result<(SocketIoLayer<A>, SocketIo<A>), BoxError>
where
    A: Adapter + DefinedAdapter,
    A::InitRes: IntoFuture<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let (layer, io) = builder.build_layer();
    for path in ["/", MANY] {
        io.ns(path, async |_: SocketRef<A>| {})
            .await
            .map_err(|e| format!("namespace {path}: {e}"))?;
    }
    Ok((layer, io))
}

async fn serve<A: Adapter>(
    (layer, io): (SocketIoLayer<A>, SocketIo<A>),
    gossip: Option<String>,
) -> Result<(), BoxError> {
    let app = axum::Router::new()
        .fallback(async || "bench node")
        .layer(layer);
    // With TCP_NODELAY, as a latency-minded deployment serves.
    let (listener, addr) = crate::listen::bind("127.0.0.1:0").await?;
    let port = addr.port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut out = tokio::io::stdout();
    let ready = format!("READY {port} {}\n", gossip.as_deref().unwrap_or("-"));
    out.write_all(ready.as_bytes()).await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match command(&io, &line).await {
            Ok(reply) => reply,
            Err(e) => format!("err {e}"),
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        out.flush().await?;
    }
    // The driver is gone: stop at once, whatever tasks still run.
    std::process::exit(0)
}

async fn command<A: Adapter>(io: &SocketIo<A>, line: &str) -> Result<String, BoxError> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let mut num =
        || -> Result<u64, BoxError> { Ok(words.next().ok_or("missing argument")?.parse()?) };
    match verb {
        "ping" => {
            let seq = num()?;
            io.emit("m", &(seq, now_ns(), ""))
                .await
                .map_err(|e| format!("emit: {e:?}"))?;
            Ok("ok".into())
        }
        "flood" => {
            let (base, n, size) = (num()?, num()?, num()? as usize);
            let payload = "x".repeat(size);
            let mut errors = 0u64;
            let first = now_ns();
            for seq in base..base + n {
                if io.emit("m", &(seq, now_ns(), &payload)).await.is_err() {
                    errors += 1;
                }
            }
            Ok(format!("ok {first} {} {errors}", now_ns()))
        }
        "dummies" => {
            for _ in 0..num()? {
                answering_socket(io).await;
            }
            Ok("ok".into())
        }
        "fetch" => {
            let ns = io.of(MANY).ok_or("no /many namespace")?;
            timed(num()?, || {
                let ns = ns.clone();
                async move {
                    let sockets = ns.fetch_sockets().await;
                    Ok(sockets.map_err(|e| format!("fetch_sockets: {e:?}"))?.len())
                }
            })
            .await
        }
        "ack" => {
            let ns = io.of(MANY).ok_or("no /many namespace")?;
            timed(num()?, || {
                let ns = ns.clone().timeout(Duration::from_secs(2));
                async move {
                    let acks = ns.emit_with_ack::<_, u8>("q", &()).await;
                    let acks = acks.map_err(|e| format!("emit_with_ack: {e:?}"))?;
                    Ok(acks
                        .filter(|(_, r)| std::future::ready(r.is_ok()))
                        .count()
                        .await)
                }
            })
            .await
        }
        "rooms" => {
            let ns = io.of(MANY).ok_or("no /many namespace")?;
            let socket = std::sync::Arc::new(remote_socket(&ns).await?);
            let mut join = true;
            timed(num()? * 2, || {
                let (socket, first) = (socket.clone(), join);
                join = !join;
                async move {
                    let res = if first {
                        socket.join("bench-room").await
                    } else {
                        socket.leave("bench-room").await
                    };
                    res.map_err(|e| format!("join/leave: {e:?}"))?;
                    Ok(1)
                }
            })
            .await
        }
        other => Err(format!("unknown command {other:?}").into()),
    }
}

/// A socket of `/many` on another node (on this one, for a single node).
async fn remote_socket<A: Adapter>(
    ns: &socketioxide::operators::BroadcastOperators<A>,
) -> Result<socketioxide::socket::RemoteSocket<A>, BoxError> {
    let local: Vec<_> = ns
        .clone()
        .local()
        .sockets()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let all = ns.clone().fetch_sockets().await;
    let mut all = all.map_err(|e| format!("fetch_sockets: {e:?}"))?;
    let at = all
        .iter()
        .position(|s| !local.contains(&s.data().id))
        .or((!all.is_empty()).then_some(0))
        .ok_or("no socket on /many")?;
    Ok(all.swap_remove(at))
}

/// Run `round` `rounds` times, one after the other: `ok <fewest items> <ns>...`.
async fn timed<F, Fut>(rounds: u64, mut round: F) -> Result<String, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, BoxError>>,
{
    let mut fewest = usize::MAX;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        fewest = fewest.min(round().await?);
        samples.push(t.elapsed().as_nanos().to_string());
    }
    Ok(format!("ok {fewest} {}", samples.join(" ")))
}

/// An in-process socket on `/many` that answers every ack request with `1`, for as long as
/// the process runs.
async fn answering_socket<A: Adapter>(io: &SocketIo<A>) {
    let (tx, mut rx) = io.new_dummy_sock(MANY, ()).await;
    tokio::spawn(async move {
        while let Some(packet) = rx.recv().await {
            let engineioxide::Packet::Message(msg) = packet else {
                continue;
            };
            // An EVENT with an ack id: `2/many,<id>[...]`.
            let Some(rest) = msg.strip_prefix("2/many,") else {
                continue;
            };
            let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if id.is_empty() {
                continue;
            }
            let ack = engineioxide::Packet::Message(format!("3/many,{id}[1]").into());
            if tx.send(ack).await.is_err() {
                return;
            }
        }
    });
}
