//! # The demo: a three-node cluster on this machine, no Redis
//!
//! ```sh
//! cargo run --example demo
//! ```
//!
//! Starts three Socket.IO servers in one process — three separate cluster nodes, each with
//! its own gossip and QUIC mesh ports on 127.0.0.1 — serving a small chat page on
//! <http://127.0.0.1:3001>, <http://127.0.0.1:3002> and <http://127.0.0.1:3003>. Open two of
//! them in two browser tabs: a message typed on one node's page appears on the others'. Each
//! page shows the node that served it, the live members of the cluster and who is online
//! (every open page, on any node, from cluster-wide presence: a tab that closes or a node that
//! stops drops off the list); the console shows
//! the nodes finding each other. Stop with Ctrl-C: the nodes leave the cluster gracefully.
//!
//! An *admin broadcast* typed on a page goes from its node to every other node as a
//! server-to-server event (`socketioxide_cluster::events`): each node logs it on the
//! console, shows it on its own pages and answers with how many pages it showed it on; the
//! sending page lists those answers, one per node.
//!
//! `DEMO_PORTS=4001,4002,4003` picks other HTTP ports (`0` lets the system choose one; the
//! URLs printed are the real ones). `GET /members` on any node answers
//! `{"node": "node-1", "members": ["node-1", "node-2", "node-3"]}`, and `GET /cluster/peers`
//! is an operator's view of the other members as this node sees them:
//! `{"node": "node-1", "peers": [{"node": "node-2", "mesh_addr": "127.0.0.1:…", "rtt_ms": 0.3,
//! "queue_depth": 0, "frames_dropped": 0}, …]}` (`rtt_ms` is `null` while a connection is
//! being made).
//!
//! The nodes share a fresh random secret, unless `SOCKETIO_CLUSTER_SECRET` is set: then they
//! use it, and a node of your own started with the same secret, the cluster id `demo` and
//! the gossip seed the demo prints joins them; the pages list it while it runs:
//!
//! ```sh
//! export SOCKETIO_CLUSTER_SECRET=$(openssl rand -hex 32)
//! cargo run --example demo     # prints "gossip seed: 127.0.0.1:PORT"
//! SOCKETIO_CLUSTER_ID=demo SOCKETIO_CLUSTER_SEEDS=127.0.0.1:PORT \
//!   SOCKETIO_CLUSTER_GOSSIP_ADDR=127.0.0.1:0 SOCKETIO_CLUSTER_MESH_ADDR=127.0.0.1:0 \
//!   SOCKETIO_CLUSTER_NODE_NAME=node-4 BIND=127.0.0.1:3004 cargo run --example minimal
//! ```
//!
//! The page loads the official Socket.IO browser client from the node itself (vendored in
//! `examples/shared/vendor/`): the demo needs no outside network. In production each node
//! is its own process: see `examples/minimal.rs` and `examples/chat.rs`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use axum::{Json, Router, response::Html, routing::get};
use futures_util::StreamExt;
use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Data, SocketRef},
    handler::ConnectHandler,
};
use socketioxide_cluster::{
    Cluster, GossipAdapter, GossipAdapterConfig, GossipAdapterCtr, MembershipEvent,
    events::{ServerEvent, ServerEvents},
    presence::{Presence, PresenceConfig},
};

#[path = "shared/client_js.rs"]
mod client_js;
#[path = "shared/listen.rs"]
mod listen;

/// HTTP ports of the three nodes, unless `DEMO_PORTS` says otherwise.
const DEFAULT_PORTS: [u16; 3] = [3001, 3002, 3003];
/// Set once the three nodes see each other: membership changes are printed from then on.
static FORMED: AtomicBool = AtomicBool::new(false);
/// Longest an admin broadcast waits for the other nodes' answers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The chat page; `{NODE}` is replaced by the name of the node serving it.
const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>{NODE} · socketioxide-cluster demo</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}#log{min-height:8em}</style>
<h3>socketioxide-cluster demo — served by <b id="node">{NODE}</b> (<span id="status">connecting…</span>)</h3>
<p>Live cluster members: <span id="members">…</span></p>
<p>Online (you are <b id="me">…</b>): <span id="online">…</span></p>
<ul id="log"></ul>
<form id="f"><input id="m" autocomplete="off" placeholder="say something"><button>Send</button></form>
<form id="a"><input id="t" autocomplete="off" placeholder="admin broadcast to every node"><button>Broadcast</button></form>
<script src="/socket.io.min.js"></script>
<script>
const $ = (id) => document.getElementById(id);
const log = (t) => { const li = document.createElement("li"); li.textContent = t; $("log").append(li); };
const s = io();
s.on("connect", () => { $("status").textContent = "connected"; });
s.on("disconnect", () => { $("status").textContent = "disconnected"; });
s.on("members", (names) => { $("members").textContent = names.join(", "); });
s.on("message", (m) => log(m.node + ": " + m.text));
s.on("admin", (m) => log("[admin broadcast from " + m.from + "] " + m.text));
const answer = (a) => a.node + (a.error ? " (" + a.error + ")" : " (" + a.pages + " pages)");
$("a").onsubmit = (e) => {
  e.preventDefault();
  const t = $("t");
  if (!t.value) return;
  s.emit("admin", t.value, (answers) => log("admin broadcast answered by: " + (answers.map(answer).join(", ") || "no other node")));
  t.value = "";
};
// Who is online, from cluster-wide presence: the state, then every diff, by socket.
const online = new Map();
const render = () => { $("online").textContent = [...new Set(online.values())].sort().join(", "); };
const add = (metas) => { for (const [key, list] of Object.entries(metas)) for (const m of list) online.set(m.socket, key + "@" + m.node); };
s.on("presence_state", (p) => { online.clear(); add(p.state); render(); });
s.on("presence_diff", (d) => { for (const list of Object.values(d.leaves)) for (const m of list) online.delete(m.socket); add(d.joins); render(); });
s.on("me", (key) => { $("me").textContent = key; });
$("f").onsubmit = (e) => {
  e.preventDefault();
  const m = $("m");
  if (!m.value) return;
  s.emit("message", m.value);
  log("me: " + m.value);
  m.value = "";
};
</script>"#;

/// Names of every live node of the cluster, this one included, sorted.
fn member_names(cluster: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = cluster.members().into_iter().map(|m| m.node_name).collect();
    names.push(cluster.node_name().to_owned());
    names.sort();
    names
}

/// Registers the event handlers of a new socket.
fn register<A: Adapter>(socket: SocketRef<A>, cluster: &Cluster, events: &ServerEvents) {
    let node = cluster.node_name().to_owned();
    let events = events.clone();
    socket.on(
        "admin",
        async move |Data::<String>(text), ack: AckSender<A>| {
            // One answer per other node, once each answered or was found gone.
            let answers: Vec<Value> =
                match events.emit_with_ack("admin", &text, ADMIN_TIMEOUT).await {
                    Ok(acks) => {
                        acks.map(|a| match a.result {
                            Ok(answer) => json!({ "node": a.node, "pages": answer["pages"] }),
                            Err(e) => json!({ "node": a.node, "error": e.to_string() }),
                        })
                        .collect()
                        .await
                    }
                    Err(e) => vec![json!({ "node": "-", "error": e.to_string() })],
                };
            let _ = ack.send(&answers);
        },
    );
    socket.on(
        "message",
        async move |s: SocketRef<A>, Data::<String>(text)| {
            // Reaches the sockets of every node but the sender.
            let msg = json!({ "node": node, "text": text });
            if let Err(e) = s.broadcast().emit("message", &msg).await {
                tracing::warn!("cannot relay the message: {e}");
            }
        },
    );
}

/// A new page: tell it the members, and track it as online (a key per tab).
async fn on_connect<A: Adapter>(socket: SocketRef<A>, cluster: Cluster, presence: Presence) {
    let _ = socket.emit("members", &member_names(&cluster));
    let sid = socket.id.to_string();
    let key = format!("tab-{}", &sid[..4.min(sid.len())]);
    let _ = socket.emit("me", &format!("{key}@{}", cluster.node_name()));
    if let Err(e) = presence.track(&socket, "online", &key, &json!({})) {
        tracing::warn!("cannot track the page: {e}");
    }
}

/// Starts one node: joins the cluster (through `seed`, if any) and serves the page on
/// `127.0.0.1:port`. Returns the cluster handle and the HTTP address bound.
async fn start_node(
    i: usize,
    port: u16,
    seed: Option<SocketAddr>,
    secret: &str,
) -> Result<(Cluster, SocketAddr), Box<dyn std::error::Error>> {
    let name = format!("node-{i}");
    let mut config = GossipAdapterConfig::new()
        .with_cluster_id("demo")
        .with_node_name(&name)
        .with_gossip_addr("127.0.0.1:0".parse()?)
        .with_mesh_addr("127.0.0.1:0".parse()?)
        .with_secret(secret);
    if let Some(seed) = seed {
        config = config.with_seeds([seed.to_string()]);
    }
    let ctr = GossipAdapterCtr::new(config).await?;
    let cluster = ctr.cluster();
    let presence = cluster.presence(PresenceConfig::default());
    let (layer, io) = SocketIo::builder()
        .with_adapter::<GossipAdapter<_>>(ctr)
        .build_layer();
    // Admin broadcasts from the other nodes: logged, shown on this node's pages, and
    // answered with how many pages showed it.
    let events = cluster.server_events();
    let admin_io = io.clone();
    let me = name.clone();
    events.on("admin", move |ev: ServerEvent| {
        let (io, me) = (admin_io.clone(), me.clone());
        async move {
            let text: String = ev.data().unwrap_or_default();
            println!("{me}: admin broadcast from {}: {text}", ev.from());
            let pages = io.local().sockets().len();
            let shown = json!({ "from": ev.from(), "text": text });
            let _ = io.local().emit("admin", &shown).await;
            let _ = ev.ack(&json!({ "pages": pages }));
        }
    });
    // Pages get `presence_state` when tracked and `presence_diff` on every change.
    presence.emit_events(io.clone());
    let on_cluster = cluster.clone();
    // The event handlers are registered by a connect middleware: it runs before the
    // client is told it is connected, whereas the connect handler runs after that, in a
    // task of its own. An event the client sends at once could otherwise come first.
    let register = move |s: SocketRef<GossipAdapter<_>>| {
        register(s, &on_cluster, &events);
        async { Ok::<_, Infallible>(()) }
    };
    let cluster_of_page = cluster.clone();
    let on_connect = move |s: SocketRef<GossipAdapter<_>>| {
        on_connect(s, cluster_of_page.clone(), presence.clone())
    };
    io.ns("/", on_connect.with(register)).await?;

    // Every membership change is pushed to this node's pages; node-1 also prints the
    // changes of a formed cluster (a node of yours joining, say).
    let mut events = cluster.membership_events();
    let on_change = cluster.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let names = member_names(&on_change);
            if i == 1 && FORMED.load(Ordering::Relaxed) {
                let (who, what) = match &event {
                    MembershipEvent::Joined(m) => (&m.node_name, "joined"),
                    MembershipEvent::Left(m) => (&m.node_name, "left"),
                };
                println!("{who} {what}; members: {}", names.join(", "));
            }
            let _ = io.local().emit("members", &names).await;
        }
    });

    let page = PAGE.replace("{NODE}", &name);
    let members = cluster.clone();
    let peers = cluster.clone();
    let app = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route(
            "/members",
            get(move || async move {
                let body: Value =
                    json!({ "node": members.node_name(), "members": member_names(&members) });
                Json(body)
            }),
        )
        .route(
            "/cluster/peers",
            get(move || async move { Json(peer_stats(&peers)) }),
        )
        .merge(client_js::router())
        .layer(layer);
    let (listener, addr) = listen::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((cluster, addr))
}

/// Every other member with its round-trip time, send queue depth and dropped frames.
fn peer_stats(cluster: &Cluster) -> Value {
    let peers: Vec<Value> = cluster
        .peer_stats()
        .into_iter()
        .map(|p| {
            json!({
                "node": p.member.node_name,
                "mesh_addr": p.member.mesh_addr.to_string(),
                "rtt_ms": p.rtt.map(|rtt| rtt.as_secs_f64() * 1_000.0),
                "queue_depth": p.queue_depth,
                "frames_dropped": p.frames_dropped,
            })
        })
        .collect();
    json!({ "node": cluster.node_name(), "peers": peers })
}

/// The HTTP ports: `DEMO_PORTS` (three comma-separated numbers) or the defaults.
fn ports() -> Result<[u16; 3], String> {
    let Ok(v) = std::env::var("DEMO_PORTS") else {
        return Ok(DEFAULT_PORTS);
    };
    let ports: Vec<u16> = v
        .split(',')
        .map(|p| p.trim().parse::<u16>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("DEMO_PORTS={v:?}: {e}"))?;
    ports
        .try_into()
        .map_err(|_| format!("DEMO_PORTS={v:?}: expected three ports"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The console shows the lines the README shows; the library's logs only from warnings
    // on, unless RUST_LOG asks for more (`RUST_LOG=info`).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Listen for Ctrl-C from the start: one pressed while the cluster forms stops it too.
    let stop = ctrl_c()?;
    tokio::pin!(stop);

    let started = Instant::now();
    // The nodes of this demo share a fresh random secret, or the one set in the environment
    // (so that a node of yours can join). A real cluster keeps one in its secret store
    // (`openssl rand -hex 32`), the same on every node.
    let secret: String = match std::env::var("SOCKETIO_CLUSTER_SECRET") {
        Ok(secret) => secret,
        Err(_) => rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    };
    let mut nodes = Vec::new();
    let mut seed = None;
    for (i, port) in ports()?.into_iter().enumerate() {
        let (cluster, addr) = start_node(i + 1, port, seed, &secret).await?;
        seed = seed.or(Some(cluster.gossip_addr()));
        println!("{}: http://{addr}/", cluster.node_name());
        nodes.push(cluster);
    }
    if let Some(seed) = seed {
        println!("gossip seed: {seed} (cluster id \"demo\")");
    }

    tokio::select! {
        _ = report_formation(&nodes, started) => {
            println!("Open two of the URLs above in a browser and chat across nodes. Ctrl-C to stop.");
            (&mut stop).await;
        }
        _ = &mut stop => {}
    }
    for n in &nodes {
        if tokio::time::timeout(Duration::from_secs(5), n.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(node = n.node_name(), "leaving the cluster timed out");
        }
    }
    println!("stopped");
    Ok(())
}

/// Waits (at most 30 s) for every node to see the two others, and says how long it took.
async fn report_formation(nodes: &[Cluster], started: Instant) {
    let deadline = started + Duration::from_secs(30);
    while nodes.iter().any(|n| n.members().len() < 2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if nodes.iter().all(|n| n.members().len() == 2) {
        FORMED.store(true, Ordering::Relaxed);
        println!(
            "cluster formed in {} ms: {}",
            started.elapsed().as_millis(),
            member_names(&nodes[0]).join(", ")
        );
    } else {
        println!("the cluster did not form within 30 s; see the log above");
    }
}

/// Resolves on Ctrl-C. The signal is listened for from this call on, not from the first
/// poll (until then a Ctrl-C would end the process at once).
fn ctrl_c() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            interrupt.recv().await;
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
