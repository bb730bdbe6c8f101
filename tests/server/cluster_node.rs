//! # `cluster_node`: one Socket.IO server of a cluster
//!
//! This example is a complete [axum] + [socketioxide] server whose adapter is
//! `socketioxide-cluster`: start it several times and the processes behave like one
//! big Socket.IO server. A broadcast on one node reaches the clients of every node,
//! rooms are cluster-wide, `fetch_sockets` lists the sockets of all nodes, and so on.
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
//! | `broadcast`             | `{event, data?, to?, except?, binary?}`              | `{ok}` once sent           |
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
//! | `emit_seq`              | `{count, event, to?}`                                | `{sent}`, after emitting `0..count` in order |
//! | `disconnect_all`        | `{to?, except?}`                                     | `{ok}`                     |
//!
//! `to` and `except` accept a room name or a list of room names. `binary` is a
//! binary buffer: the event is then emitted with two arguments, `(data, binary)`.

use std::{
    convert::Infallible,
    error::Error as StdError,
    io::{IsTerminal, Write},
    net::SocketAddr,
    time::Duration,
};

use axum::{Router, routing::get};
use bytes::Bytes;
use futures_util::{StreamExt, future::join_all};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::{
    ParserConfig, SocketIo,
    adapter::Adapter,
    extract::{AckSender, SocketRef, TryData},
    handler::ConnectHandler,
    operators::BroadcastOperators,
    socket::{DisconnectReason, RemoteSocket},
};
use socketioxide_cluster::{Cluster, ClusterAdapter, ClusterAdapterCtr};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The namespaces served by every node. All of them get the same handlers.
const NAMESPACES: [&str; 2] = ["/", "/admin"];

/// Upper bound of `emit_seq` (keeps a single request bounded).
const MAX_SEQ: u64 = 100_000;

/// Upper bound for every ack collection done by a handler.
const MAX_ACK_WAIT: Duration = Duration::from_secs(30);

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

/// Socket.IO settings that do not depend on the cluster backend.
struct SocketIoOptions {
    /// `PARSER=msgpack`: use the msgpack parser instead of the common JSON one.
    msgpack: bool,
    /// `MAX_BUFFER_SIZE`: per-socket buffer of outgoing packets. When a client reads
    /// slower than events are emitted to it, packets beyond this buffer are dropped
    /// (a local emit reports it; for a broadcast coming from another node the receiving
    /// node can only log it).
    max_buffer_size: Option<usize>,
}

impl SocketIoOptions {
    fn from_env() -> Result<Self, BoxError> {
        let msgpack = std::env::var("PARSER").is_ok_and(|p| p.eq_ignore_ascii_case("msgpack"));
        let max_buffer_size = match std::env::var("MAX_BUFFER_SIZE") {
            Ok(v) => Some(
                v.parse::<usize>()
                    .map_err(|e| format!("invalid MAX_BUFFER_SIZE {v:?}: {e}"))?,
            ),
            Err(_) => None,
        };
        Ok(Self {
            msgpack,
            max_buffer_size,
        })
    }
}

/// HTTP address from `BIND`, else `127.0.0.1:$PORT`, else `127.0.0.1:3000`.
fn http_addr() -> Result<SocketAddr, BoxError> {
    if let Ok(bind) = std::env::var("BIND") {
        return Ok(bind
            .parse()
            .map_err(|e| format!("invalid BIND {bind:?}: {e}"))?);
    }
    let port = match std::env::var("PORT") {
        Ok(p) => p
            .parse::<u16>()
            .map_err(|e| format!("invalid PORT {p:?}: {e}"))?,
        Err(_) => 3000,
    };
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
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

// ---------------------------------------------------------------------------
// Cluster wiring: the ONE place that knows which cluster backend is used.
// ---------------------------------------------------------------------------

/// A handle on the cluster this node belongs to, independent of the backend: the gossip
/// cluster handle, or nothing with Redis (Redis keeps no membership view).
#[derive(Clone)]
struct ClusterHandle(Option<Cluster>);

impl ClusterHandle {
    /// Names of the other live nodes of the cluster (this node excluded); `None` with Redis.
    fn member_names(&self) -> Option<Vec<String>> {
        let cluster = self.0.as_ref()?;
        Some(cluster.members().into_iter().map(|m| m.node_name).collect())
    }

    /// Leaves the cluster.
    async fn shutdown(&self) {
        if let Some(cluster) = &self.0 {
            cluster.shutdown().await;
        }
    }
}

/// Builds the cluster adapter and the Socket.IO layer, registers the namespaces and
/// wraps `app` with the layer.
///
/// The adapter type does not leak out of this function (it returns the axum [`Router`]
/// carrying the Socket.IO layer), so another backend can be selected at runtime in this
/// single place.
async fn build_io(
    opts: &SocketIoOptions,
    app: Router,
) -> Result<(Router, ClusterHandle), BoxError> {
    // 1. Join the cluster. SOCKETIO_CLUSTER_BACKEND picks the backend: `gossip` (default,
    //    configured by the other SOCKETIO_CLUSTER_* variables) or a redis:// URL.
    let ctr = ClusterAdapterCtr::from_env()
        .await
        .map_err(|e| format!("cannot start the cluster: {e}"))?;
    tracing::info!(backend = ctr.backend(), "cluster backend selected");
    let cluster = ClusterHandle(ctr.cluster());

    // 2. The Socket.IO server, with the cluster adapter.
    let mut builder = SocketIo::builder().with_adapter::<ClusterAdapter<_>>(ctr);
    if opts.msgpack {
        builder = builder.with_parser(ParserConfig::msgpack());
    }
    if let Some(size) = opts.max_buffer_size {
        builder = builder.max_buffer_size(size);
    }
    let (layer, io) = builder.build_layer();

    // 3. Namespaces. With a remote adapter `ns` returns a future that resolves once the
    //    namespace is known to the cluster.
    for path in NAMESPACES {
        let node = cluster.clone();
        // The event handlers are registered by a connect *middleware*: middlewares run
        // before the client is told that it is connected, whereas the connect handler
        // runs in a task spawned after that. A client that emits right after its
        // `connect` event could otherwise beat the registration and lose its event.
        let register = move |socket: SocketRef<_>| async move {
            register_handlers(socket, node);
            Ok::<_, Infallible>(())
        };
        io.ns(path, on_connect.with(register))
            .await
            .map_err(|e| format!("cannot register namespace {path}: {e}"))?;
    }

    Ok((app.layer(layer), cluster))
}

// ---------------------------------------------------------------------------
// Socket.IO handlers. They are generic over the adapter, they work with any backend.
// ---------------------------------------------------------------------------

/// Name of this node, as given to the cluster.
fn node_name() -> String {
    std::env::var("SOCKETIO_CLUSTER_NODE_NAME").unwrap_or_else(|_| "node".into())
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    tracing::info!(sid = %socket.id, ns = socket.ns(), "socket connected");
}

/// Registers the event handlers of a new socket.
fn register_handlers<A: Adapter>(socket: SocketRef<A>, cluster: ClusterHandle) {
    // The chat demo: a message is relayed to every other client of the cluster.
    socket.on("message", on_message::<A>);

    socket.on("whoami", on_whoami::<A>);
    socket.on("join", on_join::<A>);
    socket.on("leave", on_leave::<A>);
    socket.on("broadcast", on_broadcast::<A>);
    socket.on("broadcast_from_socket", on_broadcast_from_socket::<A>);
    socket.on("emit_with_ack", on_emit_with_ack::<A>);
    socket.on("fetch_sockets", on_fetch_sockets::<A>);
    socket.on("remote_join", on_remote_join::<A>);
    socket.on("remote_leave", on_remote_leave::<A>);
    socket.on("remote_disconnect", on_remote_disconnect::<A>);
    socket.on(
        "sockets_join",
        |io: SocketIo<A>, s: SocketRef<A>, ack: AckSender<A>, d: TryData<SocketsRoomReq>| {
            on_sockets_room(io, s, ack, d, true)
        },
    );
    socket.on(
        "sockets_leave",
        |io: SocketIo<A>, s: SocketRef<A>, ack: AckSender<A>, d: TryData<SocketsRoomReq>| {
            on_sockets_room(io, s, ack, d, false)
        },
    );
    socket.on("remote_emit", on_remote_emit::<A>);
    socket.on("remote_emit_with_ack", on_remote_emit_with_ack::<A>);
    socket.on("rooms", on_rooms::<A>);
    socket.on("emit_seq", on_emit_seq::<A>);
    socket.on("disconnect_all", on_disconnect_all::<A>);
    socket.on("members", move |ack: AckSender<A>| async move {
        let reply_json = match cluster.member_names() {
            Some(names) => json!({ "count": names.len(), "names": names }),
            None => json!({ "count": null, "names": [], "backend": "redis" }),
        };
        reply(ack, Ok(reply_json));
    });

    socket.on_disconnect(
        |socket: SocketRef<A>, reason: DisconnectReason| async move {
            tracing::info!(sid = %socket.id, ns = socket.ns(), %reason, "socket disconnected");
        },
    );
}

// ---- payloads ----

/// A room name or a list of room names.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Rooms {
    One(String),
    Many(Vec<String>),
}

impl Rooms {
    fn list(rooms: Option<Rooms>) -> Vec<String> {
        match rooms {
            None => vec![],
            Some(Rooms::One(room)) => vec![room],
            Some(Rooms::Many(rooms)) => rooms,
        }
    }
}

#[derive(Debug, Deserialize)]
struct BroadcastReq {
    event: String,
    #[serde(default)]
    data: Value,
    to: Option<Rooms>,
    except: Option<Rooms>,
    /// Optional binary attachment, emitted as a second argument when not empty.
    /// (Not an `Option`: the common parser only resolves binary placeholders of plain
    /// `Bytes` fields.)
    #[serde(default)]
    binary: Bytes,
}

#[derive(Debug, Deserialize)]
struct EmitWithAckReq {
    #[serde(default = "default_ack_event")]
    event: String,
    #[serde(default)]
    data: Value,
    to: Option<Rooms>,
    except: Option<Rooms>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct FetchSocketsReq {
    to: Option<Rooms>,
    except: Option<Rooms>,
    /// Whether to fetch the rooms of every socket (default true).
    rooms: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RemoteRoomReq {
    sid: String,
    room: Rooms,
    /// Whether to answer with the socket's rooms (default true); `false` answers as soon as
    /// the join or leave returns, with nothing after it that could hide a late one.
    rooms: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct SocketsRoomReq {
    to: Rooms,
    room: Rooms,
}

#[derive(Debug, Deserialize)]
struct RemoteReq {
    sid: String,
    #[serde(default = "default_ack_event")]
    event: String,
    #[serde(default)]
    data: Value,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct EmitSeqReq {
    count: u64,
    #[serde(default = "default_seq_event")]
    event: String,
    to: Option<Rooms>,
}

#[derive(Debug, Default, Deserialize)]
struct TargetReq {
    to: Option<Rooms>,
    except: Option<Rooms>,
}

fn default_ack_event() -> String {
    "ask".into()
}
fn default_seq_event() -> String {
    "seq".into()
}

// ---- helpers ----

/// Answers the client's ack callback with the result, errors as `{error}`.
fn reply<A: Adapter>(ack: AckSender<A>, res: Result<Value, String>) {
    let value = res.unwrap_or_else(|error| {
        tracing::warn!(%error, "request failed");
        json!({ "error": error })
    });
    if let Err(e) = ack.send(&value) {
        tracing::debug!("cannot send ack: {e}");
    }
}

/// Unwraps a [`TryData`] payload, turning a decoding failure into an error message.
fn payload<T>(data: TryData<T>) -> Result<T, String> {
    data.0.map_err(|e| format!("invalid payload: {e}"))
}

/// Broadcast operators on the namespace of `socket`, to every node of the cluster.
fn ns_op<A: Adapter>(
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
) -> Result<BroadcastOperators<A>, String> {
    io.of(socket.ns())
        .ok_or_else(|| format!("unknown namespace {}", socket.ns()))
}

/// Emits `data` (plus the binary attachment, if any) with the given operators.
async fn emit_payload<A: Adapter>(
    op: BroadcastOperators<A>,
    event: &str,
    data: &Value,
    binary: Bytes,
) -> Result<(), String> {
    let res = if binary.is_empty() {
        op.emit(event, data).await
    } else {
        op.emit(event, &(data, binary)).await
    };
    res.map_err(|e| format!("broadcast failed: {e}"))
}

/// Finds a socket by id anywhere in the cluster (in the namespace of `socket`).
async fn find_remote<A: Adapter>(
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    sid: &str,
) -> Result<RemoteSocket<A>, String> {
    let sockets = ns_op(io, socket)?
        .fetch_sockets()
        .await
        .map_err(|e| format!("fetch_sockets failed: {e}"))?;
    sockets
        .into_iter()
        .find(|s| s.data().id.to_string() == sid)
        .ok_or_else(|| format!("socket {sid} not found in the cluster"))
}

fn sorted(rooms: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    let mut rooms: Vec<String> = rooms.into_iter().map(|r| r.to_string()).collect();
    rooms.sort();
    rooms
}

// ---- handlers ----

async fn on_message<A: Adapter>(socket: SocketRef<A>, TryData(text): TryData<Value>) {
    let Ok(text) = text else { return };
    let msg = json!({ "from": socket.id.to_string(), "node": node_name(), "text": text });
    if let Err(e) = socket.broadcast().emit("message", &msg).await {
        tracing::warn!("cannot relay chat message: {e}");
    }
}

async fn on_whoami<A: Adapter>(socket: SocketRef<A>, ack: AckSender<A>) {
    let info = json!({
        "id": socket.id.to_string(),
        "ns": socket.ns(),
        "node": node_name(),
        "rooms": sorted(socket.rooms()),
    });
    reply(ack, Ok(info));
}

async fn on_join<A: Adapter>(socket: SocketRef<A>, ack: AckSender<A>, data: TryData<Rooms>) {
    let res = payload(data).map(|rooms| {
        socket.join(Rooms::list(Some(rooms)));
        json!({ "rooms": sorted(socket.rooms()) })
    });
    reply(ack, res);
}

async fn on_leave<A: Adapter>(socket: SocketRef<A>, ack: AckSender<A>, data: TryData<Rooms>) {
    let res = payload(data).map(|rooms| {
        socket.leave(Rooms::list(Some(rooms)));
        json!({ "rooms": sorted(socket.rooms()) })
    });
    reply(ack, res);
}

/// io-level broadcast: every matching socket of the cluster, the sender included.
async fn on_broadcast<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<BroadcastReq>,
) {
    let res = async {
        let req = payload(data)?;
        let op = ns_op(&io, &socket)?
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except));
        emit_payload(op, &req.event, &req.data, req.binary).await?;
        Ok(json!({ "ok": true }))
    };
    reply(ack, res.await);
}

/// socket-level broadcast: like `on_broadcast` but the sender is excluded.
async fn on_broadcast_from_socket<A: Adapter>(
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<BroadcastReq>,
) {
    let res = async {
        let req = payload(data)?;
        let op = socket
            .broadcast()
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except));
        emit_payload(op, &req.event, &req.data, req.binary).await?;
        Ok(json!({ "ok": true }))
    };
    reply(ack, res.await);
}

/// Emits with ack to every matching socket of the cluster and collects all the answers.
async fn on_emit_with_ack<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<EmitWithAckReq>,
) {
    let res = async {
        let req = payload(data)?;
        let mut op = ns_op(&io, &socket)?
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except));
        if let Some(ms) = req.timeout_ms {
            op = op.timeout(Duration::from_millis(ms));
        }
        let stream = op
            .emit_with_ack::<_, Value>(&req.event, &req.data)
            .await
            .map_err(|e| format!("emit_with_ack failed: {e}"))?;
        let results = tokio::time::timeout(MAX_ACK_WAIT, stream.collect::<Vec<_>>())
            .await
            .map_err(|_| "acks not complete in time".to_string())?;
        let (mut acks, mut errors) = (vec![], vec![]);
        for (sid, result) in results {
            match result {
                Ok(data) => acks.push(json!({ "id": sid.to_string(), "data": data })),
                Err(e) => errors.push(json!({ "id": sid.to_string(), "error": e.to_string() })),
            }
        }
        Ok(json!({ "acks": acks, "errors": errors }))
    };
    reply(ack, res.await);
}

/// Lists the sockets of the whole cluster, with their rooms.
async fn on_fetch_sockets<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<FetchSocketsReq>,
) {
    let res = async {
        let req = payload(data).unwrap_or_default();
        let sockets = ns_op(&io, &socket)?
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except))
            .fetch_sockets()
            .await
            .map_err(|e| format!("fetch_sockets failed: {e}"))?;
        let with_rooms = req.rooms.unwrap_or(true);
        let entries = join_all(sockets.iter().map(|s| async move {
            let rooms = if with_rooms {
                match s.rooms().await {
                    Ok(rooms) => json!(sorted(rooms)),
                    Err(e) => json!({ "error": e.to_string() }),
                }
            } else {
                Value::Null
            };
            let data = s.data();
            json!({
                "id": data.id.to_string(),
                "ns": data.ns.to_string(),
                "server_id": data.server_id.to_string(),
                "rooms": rooms,
            })
        }))
        .await;
        Ok(json!({ "sockets": entries }))
    };
    reply(ack, res.await);
}

/// A request naming a socket that may live on any node.
trait NamesSocket {
    fn sid(&self) -> &str;
}
impl NamesSocket for RemoteRoomReq {
    fn sid(&self) -> &str {
        &self.sid
    }
}
impl NamesSocket for RemoteReq {
    fn sid(&self) -> &str {
        &self.sid
    }
}

/// What every `remote_*` event does: find the socket the request names, wherever it lives
/// (`fetch_sockets`), apply `op` to it, and answer through the ack.
async fn on_remote<A: Adapter, R: NamesSocket>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<R>,
    op: impl AsyncFnOnce(RemoteSocket<A>, R) -> Result<Value, String>,
) {
    let res = async {
        let req = payload(data)?;
        let remote = find_remote(&io, &socket, req.sid()).await?;
        op(remote, req).await
    };
    reply(ack, res.await);
}

/// The socket's rooms after a remote join or leave, unless the request asked for none.
async fn rooms_of<A: Adapter>(
    remote: &RemoteSocket<A>,
    req: &RemoteRoomReq,
) -> Result<Value, String> {
    if req.rooms == Some(false) {
        return Ok(json!({ "ok": true }));
    }
    let rooms = remote.rooms().await.map_err(|e| e.to_string())?;
    Ok(json!({ "rooms": sorted(rooms) }))
}

async fn on_remote_join<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteRoomReq>,
) {
    on_remote(io, socket, ack, data, async |remote, req| {
        remote
            .join(Rooms::list(Some(req.room.clone())))
            .await
            .map_err(|e| format!("remote join failed: {e}"))?;
        rooms_of(&remote, &req).await
    })
    .await;
}

async fn on_remote_leave<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteRoomReq>,
) {
    on_remote(io, socket, ack, data, async |remote, req| {
        remote
            .leave(Rooms::list(Some(req.room.clone())))
            .await
            .map_err(|e| format!("remote leave failed: {e}"))?;
        rooms_of(&remote, &req).await
    })
    .await;
}

/// `io.to(to).join(room)` (or `leave`): the sockets matching the selector, on every node,
/// join or leave `room`.
async fn on_sockets_room<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<SocketsRoomReq>,
    join: bool,
) {
    let res = async {
        let req = payload(data)?;
        let op = ns_op(&io, &socket)?.to(Rooms::list(Some(req.to)));
        let rooms = Rooms::list(Some(req.room));
        let res = if join {
            op.join(rooms).await
        } else {
            op.leave(rooms).await
        };
        res.map_err(|e| format!("sockets join/leave failed: {e}"))?;
        Ok(json!({ "ok": true }))
    };
    reply(ack, res.await);
}

async fn on_remote_disconnect<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteReq>,
) {
    on_remote(io, socket, ack, data, async |remote, _| {
        remote
            .disconnect()
            .await
            .map_err(|e| format!("remote disconnect failed: {e}"))?;
        Ok(json!({ "ok": true }))
    })
    .await;
}

async fn on_remote_emit<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteReq>,
) {
    on_remote(io, socket, ack, data, async |remote, req| {
        remote
            .emit(&req.event, &req.data)
            .await
            .map_err(|e| format!("remote emit failed: {e}"))?;
        Ok(json!({ "ok": true }))
    })
    .await;
}

async fn on_remote_emit_with_ack<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<RemoteReq>,
) {
    on_remote(io, socket, ack, data, async |remote, req| {
        let wait = req.timeout_ms.map_or(MAX_ACK_WAIT, Duration::from_millis);
        let stream = remote
            .emit_with_ack::<_, Value>(&req.event, &req.data)
            .await
            .map_err(|e| format!("remote emit_with_ack failed: {e}"))?;
        // The stream yields the answer of the single targeted socket.
        let answer = tokio::time::timeout(wait, stream)
            .await
            .map_err(|_| "no ack in time".to_string())?
            .map_err(|e| format!("ack error: {e}"))?;
        Ok(json!({ "data": answer }))
    })
    .await;
}

async fn on_rooms<A: Adapter>(io: SocketIo<A>, socket: SocketRef<A>, ack: AckSender<A>) {
    let res = async {
        let rooms = ns_op(&io, &socket)?
            .rooms()
            .await
            .map_err(|e| format!("rooms failed: {e}"))?;
        Ok(json!({ "rooms": sorted(rooms) }))
    };
    reply(ack, res.await);
}

/// Emits `count` numbered events, one after the other, each one awaited.
async fn on_emit_seq<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<EmitSeqReq>,
) {
    let res = async {
        let req = payload(data)?;
        if req.count > MAX_SEQ {
            return Err(format!("count must be at most {MAX_SEQ}"));
        }
        let op = ns_op(&io, &socket)?.to(Rooms::list(req.to));
        for i in 0..req.count {
            op.clone()
                .emit(&req.event, &i)
                .await
                .map_err(|e| format!("emit #{i} failed: {e}"))?;
        }
        Ok(json!({ "sent": req.count }))
    };
    reply(ack, res.await);
}

async fn on_disconnect_all<A: Adapter>(
    io: SocketIo<A>,
    socket: SocketRef<A>,
    ack: AckSender<A>,
    data: TryData<TargetReq>,
) {
    let res = async {
        let req = payload(data).unwrap_or_default();
        ns_op(&io, &socket)?
            .to(Rooms::list(req.to))
            .except(Rooms::list(req.except))
            .disconnect()
            .await
            .map_err(|e| format!("disconnect failed: {e}"))?;
        Ok(json!({ "ok": true }))
    };
    reply(ack, res.await);
}
