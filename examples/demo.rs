//! # The demo: a three-node cluster on this machine, no Redis
//!
//! ```sh
//! cargo run --example demo
//! ```
//!
//! Starts three Socket.IO servers in one process — three separate cluster nodes, each with
//! its own gossip and QUIC mesh ports on 127.0.0.1 — serving a small chat page on
//! <http://127.0.0.1:3001>, <http://127.0.0.1:3002> and <http://127.0.0.1:3003>. Open two of
//! them in two browser tabs: a message typed on one node appears on the others. The console
//! shows the nodes finding each other. Stop with Ctrl-C: the nodes leave the cluster
//! gracefully.
//!
//! In production each node is its own process; see `examples/cluster_node.rs`.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, response::Html, routing::get};
use futures_util::StreamExt;
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{Data, SocketRef},
};
use socketioxide_cluster::{Cluster, GossipAdapter, GossipAdapterConfig, GossipAdapterCtr};

const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>socketioxide-cluster demo</title>
<h3>socketioxide-cluster demo — this page is served by <span id="node"></span></h3>
<ul id="log"></ul><form id="f"><input id="m" autocomplete="off" placeholder="say something"><button>Send</button></form>
<script src="https://cdn.socket.io/4.8.1/socket.io.min.js"></script>
<script>
const s = io({ transports: ["websocket"] });
const log = (t) => { const li = document.createElement("li"); li.textContent = t; document.getElementById("log").append(li); };
document.getElementById("node").textContent = location.host;
s.on("message", (m) => log(m));
document.getElementById("f").onsubmit = (e) => { e.preventDefault(); const m = document.getElementById("m"); s.emit("message", m.value); log("me: " + m.value); m.value = ""; };
</script>"#;

async fn on_connect<A: Adapter>(socket: SocketRef<A>, node: String) {
    socket.on(
        "message",
        async move |s: SocketRef<A>, Data::<String>(text)| {
            // Reaches the sockets of every node but the sender.
            let _ = s
                .broadcast()
                .emit("message", &format!("{node}: {text}"))
                .await;
        },
    );
}

async fn start_node(
    i: u16,
    seed: Option<SocketAddr>,
) -> Result<Cluster, Box<dyn std::error::Error>> {
    let mut config = GossipAdapterConfig::new()
        .with_cluster_id("demo")
        .with_node_name(format!("node-{i}"))
        .with_gossip_addr("127.0.0.1:0".parse()?)
        .with_mesh_addr("127.0.0.1:0".parse()?)
        .with_secret("demo secret: use a long random one in production");
    if let Some(seed) = seed {
        config = config.with_seeds([seed.to_string()]);
    }
    let ctr = GossipAdapterCtr::new(config).await?;
    let cluster = ctr.cluster();
    let (layer, io) = SocketIo::builder()
        .with_adapter::<GossipAdapter<_>>(ctr)
        .build_layer();
    let name = format!("node-{i}");
    io.ns("/", async move |s: SocketRef<GossipAdapter<_>>| {
        on_connect(s, name).await
    })
    .await?;
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 3000 + i)).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "node-{i}: http://127.0.0.1:{}  (gossip {}, mesh {})",
        3000 + i,
        cluster.gossip_addr(),
        cluster.mesh_addr()
    );
    Ok(cluster)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,socketioxide_cluster=info".into()),
        )
        .init();
    let first = start_node(1, None).await?;
    let seed = Some(first.gossip_addr());
    let nodes = [
        first,
        start_node(2, seed).await?,
        start_node(3, seed).await?,
    ];

    let mut events = nodes[0].membership_events();
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            println!("node-1 sees: {ev:?}");
        }
    });
    for _ in 0..100 {
        if nodes.iter().all(|n| n.members().len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &nodes {
        let names: Vec<String> = n.members().into_iter().map(|m| m.node_name).collect();
        println!("{} sees members {names:?}", n.node_name());
    }
    println!("Open two of the URLs above in a browser and chat across nodes. Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}
