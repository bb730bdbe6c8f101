//! # `cluster_node`: one Socket.IO server of a cluster
//!
//! The server the end-to-end tests drive (`tests/js`, `tests/e2e_js.rs`, `tests/crash.rs`,
//! `tests/mesh_strangers.rs`), built as the `cluster_node` example target. It is a
//! complete [axum] + [socketioxide] server whose adapter is `socketioxide-cluster`: start
//! it several times and the processes behave like one big Socket.IO server. A broadcast
//! on one node reaches the clients of every node, rooms are cluster-wide,
//! `fetch_sockets` lists the sockets of all nodes, and so on.
//!
//! Everything is configured through environment variables:
//!
//! | variable                        | meaning                                                   |
//! |---------------------------------|-----------------------------------------------------------|
//! | `PORT`                          | HTTP port, bound on 127.0.0.1 (default 3000, 0 = any)     |
//! | `BIND`                          | full HTTP bind address, e.g. `127.0.0.1:3000` (wins over `PORT`) |
//! | `PARSER`                        | `msgpack` selects the msgpack parser (default: the common JSON parser) |
//! | `MAX_BUFFER_SIZE`               | per-socket outgoing packet buffer (socketioxide's default: 128) |
//! | `RUST_LOG`                      | log filter, e.g. `info,socketioxide_cluster=debug` (logs go to stderr) |
//! | `SOCKETIO_CLUSTER_ID`           | name of the cluster; nodes only talk to nodes of the same cluster |
//! | `SOCKETIO_CLUSTER_NODE_NAME`    | unique name of this node                                  |
//! | `SOCKETIO_CLUSTER_GOSSIP_ADDR`  | UDP `ip:port` of the gossip (membership) protocol         |
//! | `SOCKETIO_CLUSTER_MESH_ADDR`    | UDP `ip:port` of the QUIC mesh carrying adapter traffic   |
//! | `SOCKETIO_CLUSTER_SEEDS`        | comma separated gossip addresses of nodes to join         |
//! | `SOCKETIO_CLUSTER_SECRET`       | shared secret authenticating the nodes                    |
//! | `SOCKETIO_CLUSTER_INSECURE`     | `1` disables authentication (local experiments only)      |
//! | `SOCKETIO_CLUSTER_TLS_CA`, `SOCKETIO_CLUSTER_TLS_CERT`, `SOCKETIO_CLUSTER_TLS_KEY` | cluster-CA mode: PEM files of the CA, this node's certificate and key |
//! | `SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS`, `SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS`, `SOCKETIO_CLUSTER_PEER_TIMEOUT_MS` | tuning |
//!
//! A three node cluster on one machine:
//!
//! ```sh
//! export SOCKETIO_CLUSTER_ID=demo SOCKETIO_CLUSTER_SECRET=$(openssl rand -hex 32)
//! export SOCKETIO_CLUSTER_SEEDS=127.0.0.1:7001
//! PORT=3001 SOCKETIO_CLUSTER_NODE_NAME=n1 SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:7001 \
//!   SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:8001 cargo run --example cluster_node &
//! PORT=3002 SOCKETIO_CLUSTER_NODE_NAME=n2 SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:7002 \
//!   SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:8002 cargo run --example cluster_node &
//! PORT=3003 SOCKETIO_CLUSTER_NODE_NAME=n3 SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:7003 \
//!   SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:8003 cargo run --example cluster_node &
//! ```
//!
//! Then connect Socket.IO clients to any of the ports and send a `message` event:
//! the clients of every node receive it.
//!
//! Once the HTTP listener is bound and the cluster is up, the process prints exactly one
//! line `READY <http_port>` on stdout (the end-to-end tests wait for it).
//!
//! ## Events (on `/` and on `/admin`)
//!
//! Besides the chat `message` event, the node exposes one event per adapter operation
//! so that the end-to-end suite (`tests/js`) can drive them from a plain Socket.IO
//! client. Every event answers through the acknowledgement callback; failures are
//! answered as `{ "error": "..." }`.
//!
//! | event                   | payload                                              | ack                        |
//! |-------------------------|------------------------------------------------------|----------------------------|
//! | `message`               | any text                                             | - (broadcast to everyone else) |
//! | `whoami`                | -                                                    | `{id, ns, node, rooms}`    |
//! | `join` / `leave`        | room or [rooms]                                      | `{rooms}` of the socket    |
//! | `broadcast`             | `{event, data?, to?, except?, binary?, binaries?}`   | `{ok}` once sent           |
//! | `broadcast_from_socket` | `{event, data?, to?, except?, binary?}`              | `{ok}` (sender excluded)   |
//! | `emit_with_ack`         | `{event?, data?, to?, except?, timeout_ms?}`         | `{acks: [{id, data}], errors: [{id, error}]}` |
//! | `fetch_sockets`         | `{to?, except?, rooms?}`                             | `{sockets: [{id, ns, server_id, rooms}]}` |
//! | `remote_join` / `remote_leave` | `{sid, room, rooms?}`                         | `{rooms}` of that socket (`{ok}` with `rooms: false`) |
//! | `sockets_join` / `sockets_leave` | `{to, room}`                                | `{ok}`, once every node holding a matching socket applied it |
//! | `remote_disconnect`     | `{sid}`                                              | `{ok}`                     |
//! | `remote_emit`           | `{sid, event, data?}`                                | `{ok}`                     |
//! | `remote_emit_with_ack`  | `{sid, event?, data?, timeout_ms?}`                  | `{data}`                   |
//! | `rooms`                 | -                                                    | `{rooms}` of the namespace, cluster-wide |
//! | `members`               | -                                                    | `{count, names}` of the other live nodes |
//! | `emit_seq`              | `{count, event, to?, pad?}`                          | `{sent}`, after emitting `0..count` in order (with `pad` characters as a second argument) |
//! | `disconnect_all`        | `{to?, except?}`                                     | `{ok}`                     |
//! | `presence_track`        | `{topic, key, meta?}`                                | `{ok}`, the socket tracked (cluster-wide presence; it then gets `presence_state` and `presence_diff` events) |
//! | `presence_list`         | topic                                                | `{key: [{node, socket, meta}]}` from this node's replica |
//!
//! `to` and `except` accept a room name or a list of room names. `binary` is a
//! binary buffer: the event is then emitted with two arguments, `(data, binary)`;
//! `binaries` a list of them, emitted as `(data, [binaries])`.
//!
//! ## Files
//!
//! | file          | what it owns                                                        |
//! |---------------|---------------------------------------------------------------------|
//! | `config.rs`   | the settings read from the environment (HTTP address, parser, ...)  |
//! | `cluster.rs`  | joining the cluster, the Socket.IO layer, its namespaces and events |
//! | `handlers.rs` | the events on the socket itself and on many sockets of the cluster  |
//! | `remote.rs`   | the events on one socket, wherever it lives in the cluster          |
//! | `reply.rs`    | what every handler shares: decoding the payload, answering the ack  |
//! | `payloads.rs` | the request payloads of the events                                  |
//! | `server_events.rs` | the server-to-server events the node handles (`note`, `ping`, `slow`) |

mod cluster;
mod config;
mod handlers;
mod payloads;
mod remote;
mod reply;
mod server_events;

use std::{
    error::Error as StdError,
    io::{IsTerminal, Write},
    time::Duration,
};

use axum::{Router, routing::get};
use tracing_subscriber::EnvFilter;

use crate::{
    cluster::build_io,
    config::{SocketIoOptions, http_addr},
};

type BoxError = Box<dyn StdError + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Logs go to stderr, so that stdout only carries the `READY <port>` line.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let opts = SocketIoOptions::from_env()?;
    let http_addr = http_addr()?;

    // A plain HTTP route, then join the cluster and wrap the app with the Socket.IO layer.
    let app = Router::new().route("/", get(|| async { "socketioxide-cluster node\n" }));
    let (app, cluster) = build_io(&opts, app).await?;

    let listener = tokio::net::TcpListener::bind(http_addr).await?;
    let port = listener.local_addr()?.port();
    tracing::info!(%http_addr, port, msgpack = opts.msgpack, "node listening");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {port}")?;
        out.flush()?;
    }

    tokio::select! {
        res = axum::serve(listener, app) => res?,
        _ = shutdown_signal() => tracing::info!("shutdown signal received"),
    }

    // Leave the cluster gracefully, so the other nodes stop addressing this one at once.
    if tokio::time::timeout(Duration::from_secs(5), cluster.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("cluster shutdown timed out");
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
