//! Many-node socketioxide-cluster scenarios under faults.
//!
//! Deterministic mode runs every node — gossip, QUIC mesh and adapter — on turmoil's
//! simulated network and clock, so a run is a function of its seed.

pub mod seeded;
pub mod sim_net;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use socketioxide::SocketIo;
use socketioxide_cluster::{GossipAdapter, GossipAdapterConfig, GossipAdapterCtr};

use sim_net::SimNetwork;

/// What happened in a run, in order: one line per event, stamped with simulated time.
pub type Trace = Arc<Mutex<Vec<String>>>;

fn log(trace: &Trace, line: String) {
    let at = turmoil::elapsed().as_millis();
    trace.lock().expect("trace").push(format!("{at:>7} ms  {line}"));
}

/// The simulated wall clock starts here in every run (turmoil's default is the real time).
/// (2026-01-01T00:00:00Z).
fn sim_epoch() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

const GOSSIP_PORT: u16 = 7946;
const MESH_PORT: u16 = 7947;

fn host_name(i: usize) -> String {
    format!("node-{i}")
}

/// Start one cluster node on the current simulated host and keep it serving.
async fn run_node(i: usize, net: SimNetwork, gossip_interval: Duration) -> anyhow::Result<(SocketIo<GossipAdapter<socketioxide::adapter::Emitter>>, socketioxide_cluster::Cluster)> {
    let ip = turmoil::lookup(host_name(i));
    let mut config = GossipAdapterConfig::new()
        .with_cluster_id("sim")
        .with_node_name(host_name(i))
        .with_gossip_addr(([0, 0, 0, 0], GOSSIP_PORT).into())
        .with_gossip_advertise_addr((ip, GOSSIP_PORT).into())
        .with_mesh_addr(([0, 0, 0, 0], MESH_PORT).into())
        .with_mesh_advertise_addr((ip, MESH_PORT).into())
        .with_gossip_interval(gossip_interval)
        .with_secret("simulation secret")
        .with_network(net);
    if i > 0 {
        let seed = turmoil::lookup(host_name(0));
        config = config.with_seeds([format!("{seed}:{GOSSIP_PORT}")]);
    }
    let ctr = GossipAdapterCtr::new(config).await?;
    let cluster = ctr.cluster();
    let (_svc, io) = SocketIo::builder()
        .with_adapter::<GossipAdapter<_>>(ctr)
        .build_svc();
    io.ns("/", async |_: socketioxide::extract::SocketRef<GossipAdapter<_>>| {})
        .await?;
    Ok((io, cluster))
}

/// `join`: `nodes` start at once; returns the simulated time until every node sees every
/// other as a member, and the trace.
pub fn join(nodes: usize, seed: u64) -> anyhow::Result<(Duration, Vec<String>)> {
    seeded::seed_this_thread(seed);
    let trace: Trace = Trace::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(sim_epoch())
        .simulation_duration(Duration::from_secs(300))
        .build();
    let root = SimNetwork::root(seed);
    for i in 0..nodes {
        let net = SimNetwork::new(&root, seed.wrapping_add(i as u64));
        let trace = trace.clone();
        sim.host(host_name(i), move || {
            let net = net.clone();
            let trace = trace.clone();
            async move {
                let (_io, cluster) = match run_node(i, net, Duration::from_millis(100)).await {
                    Ok(node) => node,
                    Err(e) => {
                        log(&trace, format!("{} failed to start: {e:#}", host_name(i)));
                        return Err(e.to_string().into());
                    }
                };
                log(&trace, format!("{} started", host_name(i)));
                let mut seen = 0;
                loop {
                    let members = cluster.members().len();
                    if members != seen {
                        seen = members;
                        log(&trace, format!("{} sees {members} members", host_name(i)));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    let done = Arc::new(Mutex::new(None));
    {
        let trace = trace.clone();
        let done = done.clone();
        sim.client("observer", async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let t = trace.lock().expect("trace");
                let converged = (0..nodes).all(|i| {
                    let me = format!("{} sees {} members", host_name(i), nodes - 1);
                    t.iter().any(|l| l.ends_with(&me))
                });
                if converged {
                    *done.lock().expect("done") = Some(turmoil::elapsed());
                    return Ok(());
                }
            }
        });
    }
    if let Err(e) = sim.run() {
        let lines = trace.lock().expect("trace").join("\n");
        anyhow::bail!("{e}\n{lines}");
    }
    let elapsed = done.lock().expect("done").ok_or_else(|| anyhow::anyhow!("did not converge"))?;
    let lines = trace.lock().expect("trace").clone();
    Ok((elapsed, lines))
}
