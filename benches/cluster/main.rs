//! Side by side, in one run on this machine: (a) the gossip adapter, (b) socketioxide-redis on
//! a local `redis-server` (and this crate's Redis backend), (c) one node with the local adapter
//! (the ceiling), plus the floors: one bare quinn stream hop and one loopback TCP hop, and the
//! CPU bare quinn takes to carry the floods' payloads to node A's peers. The ceiling is
//! measured twice: with the clients of one node of the cluster, and with as many clients as
//! the whole cluster has (c6), the same deliveries as a cluster's on the same cores. Every
//! column is up at once, and they take turns at every step of the plan, so that a ratio of
//! two columns compares measurements taken side by side; each throughput run is made
//! [`Plan::flood_rounds`] times per column.
//!
//! `cargo bench --all-features --bench cluster` (needs `redis-server` on the `PATH` for the
//! Redis columns). `CLUSTER_BENCH_SMOKE=1` runs a few rounds of everything only.
//! `CLUSTER_BENCH_BASELINE=<another build of this bench binary>` adds a column "gossip
//! (baseline)" whose nodes run that build, taking turns with the others with the same
//! clients, and the report gives this build / the baseline for latency, throughput and
//! requests. `CLUSTER_BENCH_METRICS=1` adds a column "gossip + metrics" whose nodes record
//! the library's metrics into a Prometheus recorder (the gossip mesh column records into
//! none), and the report gives recording on / off.
//!
//! Every node is a separate process (this binary, started again as a node), so CPU time and
//! memory are per node; the driver holds real WebSocket clients (Engine.IO v4 / Socket.IO
//! text frames) on every node. Latency runs from the emit on node A (a timestamp in the
//! payload) to the moment a client reads the frame, on the one wall clock of the machine.

mod client;
mod floor;
#[path = "../../examples/shared/listen.rs"]
mod listen;
mod node;
mod procs;
mod report;

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use client::Client;
use node::BoxError;
use procs::{Node, cpu_seconds, memory_mib};

/// Real WebSocket clients on every node.
const CLIENTS_PER_NODE: usize = 2;
/// Nodes of a cluster.
pub const CLUSTER_NODES: usize = 3;
/// Per-socket buffer (`max_buffer_size`) and Redis subscriber queue, in every setup: larger
/// than any burst, so that a socket's or Redis's queue is not what is measured. The mesh's
/// send queues keep their defaults (bounded in bytes), which hold every burst of the plan.
const BUFFER: usize = 200_000;

/// How much of everything to run.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Sequential latency rounds.
    pub rounds: u64,
    /// Messages of each throughput run, by payload size.
    pub floods: [(usize, u64); 2],
    /// Throughput runs of each size, in turns with the other columns: the report gives the
    /// median rate, and the CPU of them all.
    pub flood_rounds: u64,
    /// In-process sockets per node for `fetch_sockets` and `broadcast_with_ack`.
    pub sockets: u64,
    /// Rounds of each request.
    pub requests: u64,
    /// Rounds of the floor.
    pub floor: usize,
}

const FULL: Plan = Plan {
    rounds: 5_000,
    floods: [(100, 50_000), (10 * 1024, 5_000)],
    flood_rounds: 3,
    sockets: 1_000,
    requests: 100,
    floor: 5_000,
};
const SMOKE: Plan = Plan {
    rounds: 50,
    floods: [(100, 200), (10 * 1024, 20)],
    flood_rounds: 1,
    sockets: 20,
    requests: 5,
    floor: 50,
};

/// Latency and request rounds are cut in this many slices, so that setups measured side by
/// side take turns often.
const SLICES: u64 = 10;

/// One step of the plan, run on each setup in turn.
#[derive(Clone, Copy)]
enum Step {
    /// Sequential latency rounds.
    Latency(u64),
    /// One throughput run: payload bytes, messages.
    Flood(usize, u64),
    /// In-process sockets per node, then wait until `fetch_sockets` finds them all.
    Sockets(u64),
    /// `fetch_sockets` rounds.
    Fetch(u64),
    /// `broadcast_with_ack` rounds.
    Ack(u64),
    /// Rounds of a join then a leave of a socket of another node.
    Rooms(u64),
}

impl Plan {
    fn steps(&self) -> Vec<Step> {
        let sliced = |n: u64, step: fn(u64) -> Step| {
            (0..SLICES)
                .map(move |i| n * (i + 1) / SLICES - n * i / SLICES)
                .filter(|&k| k > 0)
                .map(step)
        };
        let mut steps: Vec<_> = sliced(self.rounds, Step::Latency).collect();
        for _ in 0..self.flood_rounds {
            steps.extend(self.floods.map(|(size, n)| Step::Flood(size, n)));
        }
        steps.push(Step::Sockets(self.sockets));
        steps.extend(sliced(self.requests, Step::Fetch));
        steps.extend(sliced(self.requests, Step::Ack));
        steps.extend(sliced(self.requests, Step::Rooms));
        steps
    }
}

/// Column title of the single node serving as many clients as a whole cluster.
pub const SINGLE_ALL: &str = "single node, clients of 3 (c6)";
/// Column title of the gossip mesh.
pub const GOSSIP: &str = "gossip mesh (a)";
/// Column title of the same mesh run by the baseline build.
pub const GOSSIP_BASELINE: &str = "gossip (baseline)";
/// Column title of the same mesh recording its metrics.
pub const GOSSIP_METRICS: &str = "gossip + metrics";

/// What one setup measured.
#[derive(Default)]
pub struct Figures {
    /// Column title.
    pub name: &'static str,
    /// Latency (ns) to clients on the emitting node.
    pub same: Vec<u64>,
    /// Latency (ns) to clients on the other nodes.
    pub remote: Vec<u64>,
    /// Latency rounds a client never saw.
    pub lost_pings: u64,
    /// Throughput runs.
    pub floods: Vec<Flood>,
    /// `fetch_sockets` round trips (ns) and the fewest sockets one returned.
    pub fetch: (Vec<u64>, u64),
    /// `broadcast_with_ack` round trips (ns) and the fewest acks one collected.
    pub ack: (Vec<u64>, u64),
    /// Remote join and leave round trips (ns), each one a sample.
    pub rooms: Vec<u64>,
    /// Resident memory of each node at rest, MiB.
    pub rest_mib: Vec<f64>,
    /// Peak resident memory of each node, MiB.
    pub peak_mib: Vec<f64>,
    /// CPU seconds of each node during the throughput runs.
    pub cpu_s: Vec<f64>,
    /// CPU seconds of `redis-server` during the throughput runs.
    pub redis_cpu_s: Option<f64>,
}

/// The throughput runs of one payload size.
#[derive(Default)]
pub struct Flood {
    /// Payload bytes.
    pub size: usize,
    /// Messages per second delivered to each receiving client, per run.
    pub rates: Vec<f64>,
    /// Messages per second node A emitted at, per run.
    pub emit_rates: Vec<f64>,
    /// Messages not delivered, summed over the receiving clients and the runs.
    pub lost: u64,
    /// Messages received out of order, summed.
    pub out_of_order: u64,
    /// Emits that returned an error.
    pub errors: u64,
}

impl Flood {
    /// The median of the runs' rates per receiving client.
    pub fn rate(&self) -> f64 {
        median(&self.rates)
    }

    /// The median of the runs' emit rates of node A.
    pub fn emit_rate(&self) -> f64 {
        median(&self.emit_rates)
    }
}

/// The median of `values` (the mean of the middle two of an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> Result<(), BoxError> {
    if std::env::var_os(node::ENV_BACKEND).is_some() {
        return node::main();
    }
    let plan = if std::env::var_os("CLUSTER_BENCH_SMOKE").is_some() {
        SMOKE
    } else {
        FULL
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(drive(plan))
}

async fn drive(plan: Plan) -> Result<(), BoxError> {
    // `CLUSTER_BENCH_ONLY=gossip` (or `redis`, `cluster-redis`) measures the single node and
    // that backend only, e.g. to profile it.
    let only = std::env::var("CLUSTER_BENCH_ONLY").ok();
    let wanted = |backend: &str| only.as_deref().is_none_or(|o| o == backend);
    let this = std::env::current_exe()?;
    let baseline = std::env::var_os("CLUSTER_BENCH_BASELINE").map(PathBuf::from);
    if let Some(b) = baseline.as_deref().filter(|b| !b.is_file()) {
        return Err(format!("CLUSTER_BENCH_BASELINE names no file: {}", b.display()).into());
    }
    let floors = report::Floors {
        quinn: floor::quinn_hop(plan.floor).await?,
        quinn_apart: floor::quinn_hop_between_processes(&this, plan.floor).await?,
        tcp: floor::tcp_hop(plan.floor).await?,
        quinn_cpu: floor::quinn_cpu(&this, &plan.floods, plan.flood_rounds, CLUSTER_NODES - 1)
            .await?,
    };
    // Every column is up at once and they take turns at every step of the plan, so that a
    // ratio between two columns compares measurements taken side by side.
    let mut setups = vec![
        ("single node (c)", "local", this.as_path()),
        (SINGLE_ALL, "local-all", this.as_path()),
    ];
    if wanted("gossip") {
        setups.push((GOSSIP, "gossip", this.as_path()));
        if let Some(b) = &baseline {
            setups.push((GOSSIP_BASELINE, "gossip", b));
        }
        if std::env::var_os("CLUSTER_BENCH_METRICS").is_some() {
            setups.push((GOSSIP_METRICS, "gossip-metrics", this.as_path()));
        }
    }
    let redis_columns: Vec<_> = [
        ("socketioxide-redis (b)", "redis"),
        ("this crate on Redis", "cluster-redis"),
    ]
    .into_iter()
    .filter(|(_, b)| wanted(b))
    .collect();
    let redis = (!redis_columns.is_empty())
        .then(RedisServer::start)
        .flatten();
    if redis.is_some() {
        setups
            .extend((redis_columns.iter()).map(|&(name, backend)| (name, backend, this.as_path())));
    } else if !redis_columns.is_empty() {
        eprintln!("redis-server not found: the Redis columns are skipped");
    }
    let columns = measure(&setups, redis.as_ref(), plan).await?;
    report::print(&columns, &floors, plan);
    Ok(())
}

/// Start every setup (title, backend, the binary its nodes run), then run each step of the
/// plan on one setup after the other, the first of them changing from step to step.
async fn measure(
    setups: &[(&'static str, &str, &Path)],
    redis: Option<&RedisServer>,
    plan: Plan,
) -> Result<Vec<Figures>, BoxError> {
    let mut running = Vec::new();
    for (i, &(name, backend, exe)) in setups.iter().enumerate() {
        let redis = redis.filter(|_| backend.ends_with("redis"));
        running.push(Setup::start(name, backend, exe, i, redis, &plan.floods).await?);
    }
    let n = running.len();
    for (i, step) in plan.steps().into_iter().enumerate() {
        for k in 0..n {
            running[(i + k) % n].run(step).await?;
        }
    }
    let mut figures = Vec::new();
    for setup in running {
        figures.push(setup.stop().await);
    }
    Ok(figures)
}

/// The nodes and clients of one setup, and what was measured so far.
struct Setup<'r> {
    fig: Figures,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    redis: Option<&'r RedisServer>,
    /// The last sequence number emitted.
    seq: u64,
}

impl<'r> Setup<'r> {
    /// Start the nodes from `exe`, connect the clients, warm up, note the memory at rest;
    /// the figures get an entry for each of the plan's `floods`.
    async fn start(
        name: &'static str,
        backend: &str,
        exe: &Path,
        index: usize,
        redis: Option<&'r RedisServer>,
        floods: &[(usize, u64)],
    ) -> Result<Self, BoxError> {
        eprintln!("measuring {name} ...");
        let cluster = format!("bench-{}-{backend}-{index}", std::process::id());
        // `local-all`: one node with the clients of a whole cluster.
        let (backend, count, per_node) = match backend {
            "local" => ("local", 1, CLIENTS_PER_NODE),
            "local-all" => ("local", 1, CLIENTS_PER_NODE * CLUSTER_NODES),
            other => (other, CLUSTER_NODES, CLIENTS_PER_NODE),
        };
        let mut nodes: Vec<Node> = Vec::new();
        for _ in 0..count {
            let peer = match (redis, nodes.first()) {
                (Some(r), _) => r.url(),
                (None, Some(first)) => first.extra.clone().unwrap_or_default(),
                (None, None) => String::new(),
            };
            nodes.push(Node::start(exe, backend, &peer, &cluster, BUFFER).await?);
        }
        let mut clients = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            for _ in 0..per_node {
                clients.push(Client::connect(i, n.port).await?);
            }
        }
        let seq = warm_up(&mut nodes[0], &mut clients).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fig = Figures {
            name,
            rest_mib: nodes.iter().map(|n| memory_mib(n.pid).0).collect(),
            cpu_s: vec![0.0; count],
            redis_cpu_s: redis.map(|_| 0.0),
            fetch: (Vec::new(), u64::MAX),
            ack: (Vec::new(), u64::MAX),
            floods: (floods.iter())
                .map(|&(size, _)| Flood {
                    size,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Ok(Self {
            fig,
            nodes,
            clients,
            redis,
            seq,
        })
    }

    async fn run(&mut self, step: Step) -> Result<(), BoxError> {
        match step {
            Step::Latency(rounds) => self.latency(rounds).await,
            Step::Flood(size, n) => self.flood(size, n).await,
            Step::Sockets(n) => self.sockets(n).await,
            Step::Fetch(rounds) => {
                let (fetch, found) =
                    samples(&self.nodes[0].cmd(&format!("fetch {rounds}")).await?)?;
                self.fig.fetch.0.extend(fetch);
                self.fig.fetch.1 = self.fig.fetch.1.min(found);
                Ok(())
            }
            Step::Ack(rounds) => {
                let (ack, acks) = samples(&self.nodes[0].cmd(&format!("ack {rounds}")).await?)?;
                self.fig.ack.0.extend(ack);
                self.fig.ack.1 = self.fig.ack.1.min(acks);
                Ok(())
            }
            Step::Rooms(rounds) => {
                let (rooms, _) = samples(&self.nodes[0].cmd(&format!("rooms {rounds}")).await?)?;
                self.fig.rooms.extend(rooms);
                Ok(())
            }
        }
    }

    /// Latency: one emit at a time, every client receives it before the next.
    async fn latency(&mut self, rounds: u64) -> Result<(), BoxError> {
        for c in &self.clients {
            c.reset(true);
        }
        for _ in 0..rounds {
            self.seq += 1;
            self.nodes[0].cmd(&format!("ping {}", self.seq)).await?;
            for c in &mut self.clients {
                if !c.wait_for(self.seq, Duration::from_secs(2)).await {
                    self.fig.lost_pings += 1;
                }
            }
        }
        for c in &self.clients {
            let seen = c.take();
            if c.node == 0 {
                self.fig.same.extend(seen.latencies);
            } else {
                self.fig.remote.extend(seen.latencies);
            }
        }
        Ok(())
    }

    /// Throughput: node A emits as fast as it can; the clients of the other nodes (of A
    /// itself for the single node) count what arrives.
    async fn flood(&mut self, size: usize, n: u64) -> Result<(), BoxError> {
        let clients = &self.clients;
        let receivers: Vec<usize> = (0..clients.len())
            .filter(|&i| self.nodes.len() == 1 || clients[i].node != 0)
            .collect();
        let cpu_before: Vec<f64> = self.nodes.iter().map(|n| cpu_seconds(n.pid)).collect();
        let redis_before = self.redis.map(|r| cpu_seconds(r.pid()));
        for c in clients {
            c.reset(false);
        }
        let base = self.seq + 1;
        self.seq += n;
        let reply = self.nodes[0]
            .cmd(&format!("flood {base} {n} {size}"))
            .await?;
        let words: Vec<u64> = reply
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [first_ns, last_emit_ns, errors] = words[..] else {
            return Err(format!("bad flood answer {reply:?}").into());
        };
        settle(clients, &receivers, n).await;
        let seen: Vec<_> = receivers.iter().map(|&i| clients[i].take()).collect();
        let received: u64 = seen.iter().map(|s| s.received).sum();
        let last = seen.iter().map(|s| s.last_ns).max().unwrap_or(first_ns);
        let secs = (last.saturating_sub(first_ns)) as f64 / 1e9;
        let flood = (self.fig.floods.iter_mut())
            .find(|f| f.size == size)
            .ok_or("a flood of a size not in the plan")?;
        flood
            .rates
            .push(received as f64 / receivers.len() as f64 / secs);
        flood
            .emit_rates
            .push(n as f64 / (last_emit_ns.saturating_sub(first_ns) as f64 / 1e9));
        flood.lost += n * receivers.len() as u64 - received.min(n * receivers.len() as u64);
        flood.out_of_order += seen.iter().map(|s| s.out_of_order).sum::<u64>();
        flood.errors += errors;
        for ((cpu, n), before) in self.fig.cpu_s.iter_mut().zip(&self.nodes).zip(cpu_before) {
            *cpu += cpu_seconds(n.pid) - before;
        }
        if let (Some(cpu), Some(r), Some(before)) =
            (&mut self.fig.redis_cpu_s, self.redis, redis_before)
        {
            *cpu += cpu_seconds(r.pid()) - before;
        }
        Ok(())
    }

    /// `n` in-process sockets on every node, and a wait until node A's `fetch_sockets` sees
    /// them all.
    async fn sockets(&mut self, n: u64) -> Result<(), BoxError> {
        for node in &mut self.nodes {
            node.cmd(&format!("dummies {n}")).await?;
        }
        let all = n * self.nodes.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, found) = samples(&self.nodes[0].cmd("fetch 1").await?)?;
            if found >= all || Instant::now() > deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Note the peak memory, stop the nodes.
    async fn stop(mut self) -> Figures {
        self.fig.peak_mib = self.nodes.iter().map(|n| memory_mib(n.pid).1).collect();
        drop(self.clients);
        for n in self.nodes {
            n.stop().await;
        }
        self.fig
    }
}

/// Emit until every client receives (the cluster may still be forming); the last sequence
/// number used.
async fn warm_up(a: &mut Node, clients: &mut [Client]) -> Result<u64, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seq = 0;
    loop {
        seq += 1;
        a.cmd(&format!("ping {seq}")).await?;
        let mut all = true;
        for c in clients.iter_mut() {
            all &= c.wait_for(seq, Duration::from_millis(200)).await;
        }
        if all && seq > 100 {
            return Ok(seq);
        }
        if Instant::now() > deadline {
            return Err("the clients of every node did not receive broadcasts in 30 s".into());
        }
    }
}

/// Wait until every receiver has `n` messages, or nothing arrived for 3 s (bounded: 180 s).
async fn settle(clients: &[Client], receivers: &[usize], n: u64) {
    let want = n * receivers.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let got: u64 = receivers.iter().map(|&i| clients[i].received()).sum();
        if got >= want || Instant::now() > deadline || since.elapsed() > Duration::from_secs(3) {
            return;
        }
        if got != last {
            (last, since) = (got, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `<count> <ns>...` → samples and count.
fn samples(reply: &str) -> Result<(Vec<u64>, u64), BoxError> {
    let mut words = reply.split_whitespace();
    let count = words.next().ok_or("empty answer")?.parse()?;
    let samples = words.map(str::parse).collect::<Result<_, _>>()?;
    Ok((samples, count))
}

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
