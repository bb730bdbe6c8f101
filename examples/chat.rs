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
//! and chat (the page loads the Socket.IO browser client from the node itself, vendored in
//! `examples/shared/vendor/`); or put `examples/nginx/nginx.conf` in front and open <http://127.0.0.1:8080>.
//! Each node serves its metrics at `GET /metrics` in the Prometheus text format
//! (`examples/shared/prometheus.rs`; the README shows a scrape config and a dashboard).
//!
//! Events (all on `/`): `nick` (name) and `join` (room) answer through their ack with
//! `{nick, room, node}`; `message` (text) sends `{nick, text, node}` to everyone in the
//! room, the sender included; `notice` (text) tells the room who came, went or was renamed.
//! On either backend, who is in a room is tracked with cluster-wide presence (the room is
//! the topic, the socket id the key, `{"nick": …}` the meta): a socket gets `presence_state`
//! when it joins a room or changes its nickname, and the room gets `presence_diff` on every
//! change, which the page applies as the presence module documents (a rename is a new meta
//! of the same key: one diff, no one blinks out).
//!
//! A message `/admin <text>` is an admin notice for every connection of every node, rooms
//! aside: its node shows it to its own connections and sends it to the other nodes as a
//! server-to-server event (`socketioxide_cluster::events`); each logs it, shows it to its
//! connections and answers with how many it has, and the sender is told who answered.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, response::Html, routing::get};
use futures_util::StreamExt;
use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Data, SocketRef},
    handler::ConnectHandler,
    socket::DisconnectReason,
};
use socketioxide_cluster::{
    ClusterAdapter, ClusterAdapterCtr,
    events::{ServerEvent, ServerEvents},
    presence::{Presence, PresenceConfig},
};

/// A message starting with this is an admin notice for every node.
const ADMIN: &str = "/admin ";
/// Longest an admin notice waits for the other nodes' answers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

#[path = "shared/client_js.rs"]
mod client_js;
#[path = "shared/listen.rs"]
mod listen;
#[path = "shared/prometheus.rs"]
mod prometheus;

const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>chat · {NODE}</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}#log{min-height:10em}.n{color:#777}</style>
<h3>Chat — node <b>{NODE}</b>, room <b id="room">lobby</b> as <b id="nick"></b></h3>
<form id="who">nickname <input id="n" size="10"> room <input id="r" size="10" value="lobby"><button>Go</button></form>
<p>In the room: <span id="online"></span></p>
<ul id="log"></ul>
<form id="f"><input id="m" autocomplete="off" placeholder="message"><button>Send</button></form>
<script src="/socket.io.min.js"></script>
<script>
const $ = (id) => document.getElementById(id);
const line = (text, cls) => { const li = document.createElement("li"); li.textContent = text; if (cls) li.className = cls; $("log").append(li); };
const show = (me) => { $("nick").textContent = me.nick; $("room").textContent = me.room; $("n").value = me.nick; };
const s = io();
s.on("connect", () => s.emit("join", $("r").value, show));
s.on("message", (m) => line(`${m.nick}@${m.node}: ${m.text}`));
s.on("notice", (t) => line(t, "n"));
// Who is in the room, from cluster-wide presence, as the presence module documents it:
// start from `presence_state`, then apply each `presence_diff` of that topic (leaves, then
// joins, by socket). The topic is the one of the last state: diffs of the new room that
// come between its state and the answer to `join` count, and a rename (a new meta, one
// diff) replaces the name in place.
let topic = null;
const online = new Map();
const render = () => { $("online").textContent = [...online.values()].sort().join(", "); };
const add = (entries) => { for (const list of Object.values(entries)) for (const e of list) online.set(e.socket, e.meta.nick); };
s.on("presence_state", (p) => { topic = p.topic; online.clear(); add(p.state); render(); });
s.on("presence_diff", (d) => {
  if (d.topic !== topic) return;
  for (const list of Object.values(d.leaves)) for (const e of list) online.delete(e.socket);
  add(d.joins);
  render();
});
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

/// An admin notice from a connection of this node: shown to this node's connections, sent
/// to every other node; the sender is told which nodes answered.
async fn admin<A: Adapter>(
    io: &SocketIo<A>,
    socket: &SocketRef<A>,
    events: &ServerEvents,
    nick: &str,
    text: &str,
) {
    let notice = format!("[admin] {nick}@{}: {text}", events.node_name());
    if let Err(e) = io.local().emit("notice", &notice).await {
        tracing::warn!("cannot show an admin notice: {e}");
    }
    let answers: Vec<String> = match events.emit_with_ack("admin", &notice, ADMIN_TIMEOUT).await {
        Ok(acks) => {
            acks.map(|a| match a.result {
                Ok(n) => format!("{} ({n} connections)", a.node),
                Err(e) => format!("{} ({e})", a.node),
            })
            .collect()
            .await
        }
        Err(e) => vec![format!("not sent: {e}")],
    };
    let answers = if answers.is_empty() {
        "no other node".to_string()
    } else {
        answers.join(", ")
    };
    let _ = socket.emit("notice", &format!("admin notice answered by: {answers}"));
}

/// Admin notices from the other nodes: logged, shown to this node's connections, and
/// answered with how many connections this node has.
fn on_admin<A: Adapter>(events: &ServerEvents, io: SocketIo<A>) {
    events.on("admin", move |ev: ServerEvent| {
        let io = io.clone();
        async move {
            let notice: String = ev.data().unwrap_or_default();
            tracing::info!(from = ev.from(), "admin notice: {notice}");
            let connections = io.local().sockets().len();
            if let Err(e) = io.local().emit("notice", &notice).await {
                tracing::warn!("cannot show an admin notice: {e}");
            }
            let _ = ev.ack(&connections);
        }
    });
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    tracing::info!(sid = %socket.id, "connected");
}

/// Registers the event handlers of a new socket, in the lobby.
fn register<A: Adapter>(
    socket: SocketRef<A>,
    node: &str,
    events: &ServerEvents,
    presence: Presence,
) {
    let presence_of_untrack = presence.clone();
    let me = Member::new(node, socket.id.as_str());
    socket.join(me.get().1);
    // Presence: the socket is tracked in its room under its socket id, with its nickname
    // as the meta. A rename tracks the same key again with the new meta: one diff (the old
    // meta leaves, the new one joins) that pages apply at once, so nobody blinks out.
    let key = socket.id.to_string();
    let track = move |s: &SocketRef<A>, room: &str, nick: &str| {
        if let Err(e) = presence.track(s, room, &key, &json!({ "nick": nick })) {
            tracing::warn!("cannot track {nick} in {room}: {e}");
        }
    };
    let untrack = {
        let (presence, key) = (presence_of_untrack, socket.id.to_string());
        move |s: &SocketRef<A>, room: &str| presence.untrack(s, room, &key)
    };

    let m = me.clone();
    let renamed = track.clone();
    socket.on(
        "nick",
        async move |s: SocketRef<A>, Data::<String>(nick), ack: AckSender<A>| {
            let (old, room) = m.get();
            let nick = clean(&nick, &old);
            m.set(Some(nick.clone()), None);
            if nick != old {
                renamed(&s, &room, &nick);
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
                untrack(&s, &old);
                notice(&s, old.clone(), format!("{nick} left")).await;
                s.join(room.clone());
                m.set(None, Some(room.clone()));
            }
            track(&s, &room, &nick);
            notice(&s, room, format!("{nick} is here")).await;
            let _ = ack.send(&m.info());
        },
    );

    let m = me.clone();
    let events = events.clone();
    socket.on(
        "message",
        async move |io: SocketIo<A>, s: SocketRef<A>, Data::<String>(text)| {
            let (nick, room) = m.get();
            if let Some(text) = text.strip_prefix(ADMIN) {
                return admin(&io, &s, &events, &nick, text).await;
            }
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
    let events = ctr.server_events();
    let node = std::env::var("SOCKETIO_CLUSTER_NODE_NAME")
        .ok()
        .or_else(|| cluster.as_ref().map(|c| c.node_name().to_owned()))
        .unwrap_or_else(|| "chat".into());
    let presence = ctr.presence(PresenceConfig::default());
    let (layer, io) = SocketIo::builder()
        .with_adapter::<ClusterAdapter<_>>(ctr)
        .build_layer();
    on_admin(&events, io.clone());
    presence.emit_events(io.clone());
    let name = node.clone();
    // The event handlers are registered by a connect middleware: it runs before the
    // client is told it is connected, whereas the connect handler runs after that, in a
    // task of its own. The page's first `join` could otherwise come first.
    let register = move |s: SocketRef<ClusterAdapter<_>>| {
        register(s, &name, &events, presence.clone());
        async { Ok::<_, Infallible>(()) }
    };
    io.ns("/", on_connect.with(register)).await?;

    let page = PAGE.replace("{NODE}", &node);
    let app = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .merge(prometheus::router(metrics))
        .merge(client_js::router())
        .layer(layer);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let (listener, addr) = listen::bind(&bind).await?;
    println!("{node} listening on http://{addr}");
    tokio::select! {
        res = axum::serve(listener, app) => res?,
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    Ok(())
}
