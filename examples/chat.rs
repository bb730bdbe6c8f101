//! # A chat with rooms and nicknames, one node per process
//!
//! Each process is one node of the cluster, configured from the environment like
//! `examples/minimal.rs` (`BIND`, default `127.0.0.1:3000`, and the `SOCKETIO_CLUSTER_*`
//! variables), and serves its own chat page. Users pick a nickname and a room; a message
//! reaches everyone in that room, whichever node they are connected to.
//!
//! Three nodes by hand, in three terminals (or with `&`):
//!
//! ```sh
//! cargo build --example chat
//! export SOCKETIO_CLUSTER_ID=chat SOCKETIO_CLUSTER_SECRET=$(openssl rand -hex 32)
//! export SOCKETIO_CLUSTER_SEEDS=127.0.0.1:7001
//! BIND=127.0.0.1:3001 SOCKETIO_CLUSTER_NODE_NAME=chat-1 SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:7001 \
//!   SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:8001 target/debug/examples/chat
//! BIND=127.0.0.1:3002 SOCKETIO_CLUSTER_NODE_NAME=chat-2 SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:7002 \
//!   SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:8002 target/debug/examples/chat
//! BIND=127.0.0.1:3003 SOCKETIO_CLUSTER_NODE_NAME=chat-3 SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:7003 \
//!   SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:8003 target/debug/examples/chat
//! ```
//!
//! Open <http://127.0.0.1:3001> and <http://127.0.0.1:3003>, pick the same room in both,
//! and chat; or put `examples/nginx/nginx.conf` in front and open <http://127.0.0.1:8080>.
//! Each node serves its metrics at `GET /metrics` in the Prometheus text format
//! (`examples/shared/prometheus.rs`; the README shows a scrape config and a dashboard).
//!
//! Events (all on `/`): `nick` (name) and `join` (room) answer through their ack with
//! `{nick, room, node}`; `message` (text) sends `{nick, text, node}` to everyone in the
//! room, the sender included; `notice` (text) tells the room who came, went or was renamed.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use axum::{Router, response::Html, routing::get};
use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Data, SocketRef},
    handler::ConnectHandler,
    socket::DisconnectReason,
};
use socketioxide_cluster::{ClusterAdapter, ClusterAdapterCtr};

#[path = "shared/prometheus.rs"]
mod prometheus;

const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>chat · {NODE}</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}#log{min-height:10em}.n{color:#777}</style>
<h3>Chat — node <b>{NODE}</b>, room <b id="room">lobby</b> as <b id="nick"></b></h3>
<form id="who">nickname <input id="n" size="10"> room <input id="r" size="10" value="lobby"><button>Go</button></form>
<ul id="log"></ul>
<form id="f"><input id="m" autocomplete="off" placeholder="message"><button>Send</button></form>
<script src="https://cdn.socket.io/4.8.1/socket.io.min.js"></script>
<script>
const $ = (id) => document.getElementById(id);
const line = (text, cls) => { const li = document.createElement("li"); li.textContent = text; if (cls) li.className = cls; $("log").append(li); };
const show = (me) => { $("nick").textContent = me.nick; $("room").textContent = me.room; $("n").value = me.nick; };
const s = io();
s.on("connect", () => s.emit("join", $("r").value, show));
s.on("message", (m) => line(`${m.nick}@${m.node}: ${m.text}`));
s.on("notice", (t) => line(t, "n"));
$("who").onsubmit = (e) => {
  e.preventDefault();
  s.emit("nick", $("n").value, (me) => s.emit("join", $("r").value, show));
};
$("f").onsubmit = (e) => { e.preventDefault(); if ($("m").value) s.emit("message", $("m").value); $("m").value = ""; };
</script>"#;

/// What a connection chose: its nickname and its room.
#[derive(Clone)]
struct Member {
    node: String,
    state: Arc<Mutex<(String, String)>>,
}

impl Member {
    fn new(node: &str, sid: &str) -> Self {
        let nick = format!("guest-{}", &sid[..4.min(sid.len())]);
        Self {
            node: node.to_owned(),
            state: Arc::new(Mutex::new((nick, "lobby".to_owned()))),
        }
    }
    fn get(&self) -> (String, String) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, nick: Option<String>, room: Option<String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(nick) = nick {
            state.0 = nick;
        }
        if let Some(room) = room {
            state.1 = room;
        }
    }
    fn info(&self) -> Value {
        let (nick, room) = self.get();
        json!({ "nick": nick, "room": room, "node": self.node })
    }
}

/// A name given by a user: trimmed, at most 32 characters, never empty.
fn clean(name: &str, fallback: &str) -> String {
    let name: String = name.trim().chars().take(32).collect();
    if name.is_empty() {
        fallback.to_owned()
    } else {
        name
    }
}

/// Tells everyone in `room`, on every node.
async fn notice<A: Adapter>(socket: &SocketRef<A>, room: String, text: String) {
    if let Err(e) = socket.within(room).emit("notice", &text).await {
        tracing::warn!("cannot send a notice: {e}");
    }
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    tracing::info!(sid = %socket.id, "connected");
}

/// Registers the event handlers of a new socket, in the lobby.
fn register<A: Adapter>(socket: SocketRef<A>, node: &str) {
    let me = Member::new(node, socket.id.as_str());
    socket.join(me.get().1);

    let m = me.clone();
    socket.on(
        "nick",
        async move |s: SocketRef<A>, Data::<String>(nick), ack: AckSender<A>| {
            let (old, room) = m.get();
            let nick = clean(&nick, &old);
            m.set(Some(nick.clone()), None);
            if nick != old {
                notice(&s, room, format!("{old} is now {nick}")).await;
            }
            let _ = ack.send(&m.info());
        },
    );

    let m = me.clone();
    socket.on(
        "join",
        async move |s: SocketRef<A>, Data::<String>(room), ack: AckSender<A>| {
            let (nick, old) = m.get();
            let room = clean(&room, &old);
            if room != old {
                s.leave(old.clone());
                notice(&s, old, format!("{nick} left")).await;
                s.join(room.clone());
                m.set(None, Some(room.clone()));
            }
            notice(&s, room, format!("{nick} is here")).await;
            let _ = ack.send(&m.info());
        },
    );

    let m = me.clone();
    socket.on(
        "message",
        async move |s: SocketRef<A>, Data::<String>(text)| {
            let (nick, room) = m.get();
            let msg = json!({ "nick": nick, "text": text, "node": m.node });
            if let Err(e) = s.within(room).emit("message", &msg).await {
                tracing::warn!("cannot send the message: {e}");
            }
        },
    );

    socket.on_disconnect(async move |s: SocketRef<A>, _: DisconnectReason| {
        let (nick, room) = me.get();
        notice(&s, room, format!("{nick} left")).await;
    });
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Before the node starts: it takes its metric handles from the recorder then.
    let metrics = prometheus::install()?;

    let ctr = ClusterAdapterCtr::from_env().await?;
    let cluster = ctr.cluster();
    let node = std::env::var("SOCKETIO_CLUSTER_NODE_NAME")
        .ok()
        .or_else(|| cluster.as_ref().map(|c| c.node_name().to_owned()))
        .unwrap_or_else(|| "chat".into());
    let (layer, io) = SocketIo::builder()
        .with_adapter::<ClusterAdapter<_>>(ctr)
        .build_layer();
    let name = node.clone();
    // The event handlers are registered by a connect middleware: it runs before the
    // client is told it is connected, whereas the connect handler runs after that, in a
    // task of its own. The page's first `join` could otherwise come first.
    let register = move |s: SocketRef<ClusterAdapter<_>>| {
        register(s, &name);
        async { Ok::<_, Infallible>(()) }
    };
    io.ns("/", on_connect.with(register)).await?;

    let page = PAGE.replace("{NODE}", &node);
    let app = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .merge(prometheus::router(metrics))
        .layer(layer);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("{node} listening on http://{}", listener.local_addr()?);
    tokio::select! {
        res = axum::serve(listener, app) => res?,
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    Ok(())
}
