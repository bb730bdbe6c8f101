//! # A minimal cluster node, configured only from the environment
//!
//! The smallest useful server to copy: axum + socketioxide with the cluster adapter, one
//! node per process, every setting from `SOCKETIO_CLUSTER_*` variables (see the README's
//! configuration table) and `BIND` (the HTTP address, default `0.0.0.0:3000`). A
//! `message` event is relayed to every other client of the cluster; a `count` event is
//! answered (through its ack) with the number of clients on every node, a request to the
//! whole cluster. `GET /metrics` serves the library's metrics in the Prometheus text format
//! (`examples/shared/prometheus.rs`). SIGTERM or Ctrl-C leaves the cluster gracefully.
//!
//! It prints two lines once its node joined: whom it sees, and where it listens
//! (`node-4 joined the cluster; it sees node-1, node-2, node-3`, then
//! `node-4 listening on http://127.0.0.1:3004`). Logs stay quiet but for warnings:
//! `RUST_LOG=info` (or `debug`) shows more.
//!
//! Two nodes on one machine:
//!
//! ```sh
//! export SOCKETIO_CLUSTER_SECRET=$(openssl rand -hex 32) SOCKETIO_CLUSTER_SEEDS=127.0.0.1:7946
//! BIND=127.0.0.1:3001 SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:7946 \
//!   SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:7947 cargo run --example minimal &
//! BIND=127.0.0.1:3002 SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:7956 \
//!   SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:7957 cargo run --example minimal &
//! ```
//!
//! `SOCKETIO_CLUSTER_BACKEND=redis://127.0.0.1:6379` runs the same binary on Redis
//! (built with the `redis` feature).

use std::convert::Infallible;

#[path = "shared/listen.rs"]
mod listen;
#[path = "shared/prometheus.rs"]
mod prometheus;

use serde_json::Value;
use socketioxide::{
    SocketIo,
    extract::{AckSender, Data, SocketRef},
    handler::ConnectHandler,
};
use socketioxide_cluster::{ClusterAdapter, ClusterAdapterCtr};

type Adapter = ClusterAdapter<socketioxide::adapter::Emitter>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Warnings and errors only, unless RUST_LOG says otherwise.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Before the node starts: it takes its metric handles from the recorder then.
    let metrics = prometheus::install()?;

    let ctr = ClusterAdapterCtr::from_env().await?;
    let cluster = ctr.cluster(); // `None` on Redis, which keeps no membership
    // The constructor returned: the node has joined (or, seeing no other, started alone).
    let name = match &cluster {
        Some(cluster) => {
            let mut seen: Vec<String> =
                cluster.members().into_iter().map(|m| m.node_name).collect();
            seen.sort();
            let seen = if seen.is_empty() {
                "no other node yet".to_owned()
            } else {
                seen.join(", ")
            };
            println!("{} joined the cluster; it sees {seen}", cluster.node_name());
            cluster.node_name().to_owned()
        }
        None => {
            println!("joined the cluster through Redis");
            "node".to_owned()
        }
    };
    let (layer, io) = SocketIo::builder()
        .with_adapter::<Adapter>(ctr)
        .build_layer();
    // The event handlers are registered by a connect middleware: it runs before the
    // client is told it is connected, whereas the connect handler runs after that, in a
    // task of its own. An event the client sends at once could otherwise come first.
    io.ns("/", on_connect.with(register)).await?;

    let app = prometheus::router(metrics).layer(layer);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "0.0.0.0:3000".into());
    let (listener, addr) = listen::bind(&bind).await?;
    println!("{name} listening on http://{addr}");
    // Not axum's graceful shutdown: it would wait for every WebSocket to close.
    tokio::select! {
        res = axum::serve(listener, app) => res?,
        _ = shutdown_signal() => {}
    }
    if let Some(cluster) = cluster {
        cluster.shutdown().await; // peers drop this node at once
    }
    Ok(())
}

/// Registers the event handlers of a new socket.
async fn register(socket: SocketRef<Adapter>) -> Result<(), Infallible> {
    socket.on(
        "message",
        async |socket: SocketRef<Adapter>, Data::<Value>(msg)| {
            // Every client of every node but the sender.
            if let Err(e) = socket.broadcast().emit("message", &msg).await {
                tracing::warn!("cannot relay the message: {e}");
            }
        },
    );
    socket.on(
        "count",
        async |socket: SocketRef<Adapter>, ack: AckSender<Adapter>| {
            // The other clients, on every node (a cluster request), and this one.
            match socket.broadcast().fetch_sockets().await {
                Ok(others) => drop(ack.send(&(others.len() + 1))),
                Err(e) => tracing::warn!("cannot count the clients: {e}"),
            }
        },
    );
    Ok(())
}

async fn on_connect(socket: SocketRef<Adapter>) {
    tracing::info!(sid = %socket.id, "connected");
}

/// Ctrl-C, or SIGTERM (what Kubernetes and systemd send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
