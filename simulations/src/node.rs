//! One cluster node as a simulated application runs it: a Socket.IO server with one
//! connected client that records every broadcast it receives, and a command loop through
//! which the scenario makes the node act.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use socketioxide::{SocketIo, adapter::Emitter, extract::SocketRef};
use socketioxide_cluster::{
    Cluster, GossipAdapter, GossipAdapterConfig, GossipAdapterCtr,
    presence::{Presence, PresenceConfig},
};
use tokio::sync::{mpsc, oneshot};

/// The adapter every simulated node uses.
pub type Adapter = GossipAdapter<Emitter>;

/// Ports a node binds when it has an address of its own (simulated hosts).
pub const GOSSIP_PORT: u16 = 7946;
/// See [`GOSSIP_PORT`].
pub const MESH_PORT: u16 = 7947;

/// The timings a node runs with. The default is the library's own defaults, so that the
/// figures are those a deployment that sets nothing gets.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// Gossip interval.
    pub gossip_interval: Duration,
    /// Mesh peer (QUIC idle) timeout.
    pub peer_timeout: Duration,
    /// Request timeout.
    pub request_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            gossip_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a node listens and whom it asks to join.
pub struct Spec {
    /// Node name.
    pub name: String,
    /// Gossip bind address; port 0 picks one.
    pub gossip: SocketAddr,
    /// Mesh bind address; port 0 picks one.
    pub mesh: SocketAddr,
    /// The address other nodes reach this one at (the bound IP when it is not unspecified).
    pub advertise_ip: IpAddr,
    /// Seeds (`ip:port`).
    pub seeds: Vec<String>,
    /// Timings.
    pub timings: Timings,
}

/// What a node's client received: broadcast numbers, and how many arrived twice.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Broadcast number -> times received.
    pub received: HashMap<u64, u32>,
}

impl Inbox {
    /// Broadcasts received more than once, counted once each extra time.
    pub fn duplicates(&self) -> u64 {
        self.received
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }
    /// Whether broadcast `id` arrived.
    pub fn has(&self, id: u64) -> bool {
        self.received.contains_key(&id)
    }
}

/// What a scenario asks a node to do.
pub enum Command {
    /// Broadcast number `id` to every client of the cluster.
    Broadcast(u64),
    /// Fetch every socket of the cluster; answers how many, or the error.
    FetchSockets(oneshot::Sender<Result<usize, String>>),
    /// Track the node's client under a key of a topic (presence).
    Track(String, String),
    /// Untrack the node's client from a key of a topic.
    Untrack(String, String),
    /// Leave the cluster gracefully and stop.
    Leave,
}

/// A running node as the scenario sees it.
#[derive(Clone)]
pub struct Handle {
    /// The cluster handle (members, events).
    pub cluster: Cluster,
    /// The node's client's inbox.
    pub inbox: Arc<Mutex<Inbox>>,
    /// Commands to the node.
    pub commands: mpsc::Sender<Command>,
    /// The node's presence.
    pub presence: Presence,
}

/// The cluster secret of every node on real sockets.
pub const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

/// Start a node with its client; the returned future (run it on the node's runtime) serves
/// commands until the sender is dropped. Returns the handle once the node is up.
pub async fn start(
    spec: Spec,
    configure: impl FnOnce(GossipAdapterConfig) -> GossipAdapterConfig,
) -> anyhow::Result<(Handle, impl std::future::Future<Output = ()>)> {
    let mut config = GossipAdapterConfig::new()
        .with_cluster_id("sim")
        .with_node_name(spec.name.clone())
        .with_gossip_addr(spec.gossip)
        .with_mesh_addr(spec.mesh)
        .with_seeds(spec.seeds)
        .with_gossip_interval(spec.timings.gossip_interval)
        .with_peer_timeout(spec.timings.peer_timeout)
        .with_request_timeout(spec.timings.request_timeout)
        .with_secret(SECRET);
    if spec.gossip.port() != 0 {
        config = config
            .with_gossip_advertise_addr((spec.advertise_ip, spec.gossip.port()).into())
            .with_mesh_advertise_addr((spec.advertise_ip, spec.mesh.port()).into());
    }
    let ctr = GossipAdapterCtr::new(configure(config)).await?;
    let cluster = ctr.cluster();
    let presence = cluster.presence(PresenceConfig::default());
    let (_svc, io) = SocketIo::builder()
        .max_buffer_size(100_000)
        .with_adapter::<Adapter>(ctr)
        .build_svc();
    let client = Arc::new(Mutex::new(None));
    let slot = client.clone();
    io.ns("/", async move |s: SocketRef<Adapter>| {
        slot.lock().expect("client").replace(s);
    })
    .await?;

    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let (client_tx, mut client_rx) = io.new_dummy_sock("/", ()).await;
    {
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let _keep_open = client_tx;
            while let Some(packet) = client_rx.recv().await {
                let text = String::from(packet);
                if let Some(id) = broadcast_number(&text) {
                    *inbox.lock().expect("inbox").received.entry(id).or_default() += 1;
                }
            }
        });
    }

    let (commands, mut rx) = mpsc::channel(1024);
    let leave = cluster.clone();
    let p = presence.clone();
    let serve = async move {
        while let Some(command) = rx.recv().await {
            match command {
                Command::Broadcast(id) => {
                    if let Err(e) = io.emit("b", &id).await {
                        tracing::warn!("broadcast {id} failed: {e}");
                    }
                }
                Command::FetchSockets(reply) => {
                    let io = io.clone();
                    tokio::spawn(async move {
                        let answer = io
                            .fetch_sockets()
                            .await
                            .map(|s| s.len())
                            .map_err(|e| e.to_string());
                        let _ = reply.send(answer);
                    });
                }
                Command::Track(topic, key) => {
                    let socket = client.lock().expect("client").clone();
                    if let Some(s) = socket
                        && let Err(e) = p.track(&s, &topic, &key, &())
                    {
                        tracing::warn!("track failed: {e}");
                    }
                }
                Command::Untrack(topic, key) => {
                    let socket = client.lock().expect("client").clone();
                    if let Some(s) = socket {
                        p.untrack(&s, &topic, &key);
                    }
                }
                Command::Leave => {
                    leave.shutdown().await;
                    return;
                }
            }
        }
    };
    Ok((
        Handle {
            cluster,
            inbox,
            commands,
            presence,
        },
        serve,
    ))
}

/// The number in a `42["b",<n>]` event packet.
fn broadcast_number(packet: &str) -> Option<u64> {
    packet
        .strip_prefix("42[\"b\",")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// When a condition the driver watches first held.
#[derive(Debug, Default)]
pub struct FirstSeen(Option<std::time::Duration>);

impl FirstSeen {
    /// Note whether the condition holds at `elapsed`; whether it has held yet.
    pub fn check(&mut self, holds: bool, elapsed: std::time::Duration) -> bool {
        if holds && self.0.is_none() {
            self.0 = Some(elapsed);
        }
        self.0.is_some()
    }

    /// When it first held.
    pub fn at(&self) -> Option<std::time::Duration> {
        self.0
    }
}

/// A `fetch_sockets` answer the driver waits for while it watches other things.
pub struct Awaited {
    rx: oneshot::Receiver<Result<usize, String>>,
    got: Option<(std::time::Duration, Result<usize, String>)>,
}

impl Awaited {
    /// Wait for the answer on `rx`.
    pub fn new(rx: oneshot::Receiver<Result<usize, String>>) -> Self {
        Self { rx, got: None }
    }

    /// Whether the answer is in; `elapsed` is recorded as its time when it is first seen.
    pub fn arrived(&mut self, elapsed: std::time::Duration) -> bool {
        if self.got.is_none()
            && let Ok(answer) = self.rx.try_recv()
        {
            self.got = Some((elapsed, answer));
        }
        self.got.is_some()
    }

    /// How long it took, and how many sockets came back.
    pub fn answer(self) -> anyhow::Result<(std::time::Duration, usize)> {
        let (took, answer) = self.got.ok_or_else(|| anyhow::anyhow!("no answer"))?;
        let sockets = answer.map_err(|e| anyhow::anyhow!("fetch_sockets failed: {e}"))?;
        Ok((took, sockets))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn broadcast_number() {
        assert_eq!(super::broadcast_number("42[\"b\",17]"), Some(17));
        assert_eq!(super::broadcast_number("42[\"x\",17]"), None);
        assert_eq!(super::broadcast_number("40{\"sid\":\"a\"}"), None);
    }
}
