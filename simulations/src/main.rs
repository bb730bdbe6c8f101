//! `cargo run -p simulations --release -- <scenario> [--nodes N]... [--seed S] [--mode M]`
//!
//! Runs a scenario for each cluster size, prints a markdown table and writes a plot of the
//! figures against the number of nodes.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use simulations::{
    node::Timings,
    real,
    report::{self, Row},
    run_seeded, scenarios,
};

/// Many-node socketioxide-cluster scenarios under faults.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// What to run.
    scenario: Scenario,
    /// Cluster sizes (repeat the flag for several); each scenario has its own default.
    #[arg(long = "nodes", short = 'n')]
    nodes: Vec<usize>,
    /// Seed of the deterministic mode: the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `sim`: everything on a simulated network and clock, reproducible from the seed;
    /// `real`: real UDP sockets on 127.0.0.1 and the real clock (join, crash, slow-peer,
    /// gossip-cost).
    #[arg(long, value_enum, default_value_t = Mode::Sim)]
    mode: Mode,
    /// Nodes killed in `crash`.
    #[arg(long, default_value_t = 1)]
    killed: usize,
    /// Where plots go.
    #[arg(long, default_value = "target/simulations")]
    out: PathBuf,
    /// Gossip interval, ms (default: the library's, 500).
    #[arg(long)]
    gossip_interval_ms: Option<u64>,
    /// Mesh peer timeout, ms (default: the library's, 2,000).
    #[arg(long)]
    peer_timeout_ms: Option<u64>,
    /// Print each run's event trace.
    #[arg(long)]
    trace: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    Join,
    Crash,
    Partition,
    Churn,
    SlowPeer,
    /// What sealing gossip costs an idle cluster (real mode only).
    GossipCost,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Mode {
    Sim,
    Real,
}

impl Scenario {
    fn default_sizes(self) -> Vec<usize> {
        match self {
            Scenario::Join | Scenario::Crash => vec![3, 10, 50, 100],
            Scenario::Partition | Scenario::Churn => vec![4, 10, 20, 50],
            Scenario::SlowPeer => vec![3, 10, 20],
            Scenario::GossipCost => vec![10, 100],
        }
    }
    fn name(self) -> &'static str {
        match self {
            Scenario::Join => "join",
            Scenario::Crash => "crash",
            Scenario::Partition => "partition",
            Scenario::Churn => "churn",
            Scenario::SlowPeer => "slow-peer",
            Scenario::GossipCost => "gossip-cost",
        }
    }
}

impl Args {
    fn timings(&self) -> Timings {
        let mut t = Timings::default();
        if let Some(ms) = self.gossip_interval_ms {
            t.gossip_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = self.peer_timeout_ms {
            t.peer_timeout = Duration::from_millis(ms);
        }
        t
    }
}

fn run(args: &Args, n: usize) -> anyhow::Result<Box<dyn Row>> {
    let (scenario, seed, killed, t) = (args.scenario, args.seed, args.killed, args.timings());
    if args.mode == Mode::Real {
        return Ok(match scenario {
            Scenario::Join => Box::new(real::join(n, t)?),
            Scenario::Crash => Box::new(real::crash(n, killed, t)?),
            Scenario::SlowPeer => Box::new(real::slow_peer(n, t)?),
            Scenario::GossipCost => Box::new(real::gossip_cost(n, t)?),
            other => anyhow::bail!("{} runs in sim mode only", other.name()),
        });
    }
    let (row, trace) = run_seeded(seed, move || {
        Ok(match scenario {
            Scenario::Join => boxed(scenarios::join(n, seed, t)?),
            Scenario::Crash => boxed(scenarios::crash(n, killed, seed, t)?),
            Scenario::Partition => boxed(scenarios::partition(n, seed, t)?),
            Scenario::Churn => boxed(scenarios::churn(n, seed, t)?),
            Scenario::SlowPeer => boxed(scenarios::slow_peer(n, seed, t)?),
            Scenario::GossipCost => {
                anyhow::bail!("gossip-cost runs in real mode only (--mode real)")
            }
        })
    })?;
    if args.trace {
        println!("trace of {} with {n} nodes, seed {seed}:", scenario.name());
        for line in trace {
            println!("    {line}");
        }
    }
    Ok(row)
}

fn boxed<R: Row + Send + 'static>(
    (row, trace): (R, Vec<String>),
) -> (Box<dyn Row + Send>, Vec<String>) {
    (Box::new(row), trace)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .without_time()
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let sizes = if args.nodes.is_empty() {
        args.scenario.default_sizes()
    } else {
        args.nodes.clone()
    };
    let mut rows = Vec::new();
    for &n in &sizes {
        let started = std::time::Instant::now();
        rows.push(run(&args, n)?);
        eprintln!(
            "{} with {n} nodes: done in {:.1?} of real time",
            args.scenario.name(),
            started.elapsed()
        );
    }
    let mode = match args.mode {
        Mode::Sim => format!("simulated network, seed {}", args.seed),
        Mode::Real => "real sockets on 127.0.0.1".to_string(),
    };
    println!("### {} ({mode})\n", args.scenario.name());
    println!("{}", report::table(&rows));
    std::fs::create_dir_all(&args.out)?;
    let mode_tag = match args.mode {
        Mode::Sim => "sim",
        Mode::Real => "real",
    };
    let path = args
        .out
        .join(format!("{}-{mode_tag}.png", args.scenario.name()));
    match report::plot(&format!("{} ({mode})", args.scenario.name()), &rows, &path) {
        Ok(()) => println!("plot: {}", path.display()),
        Err(e) => eprintln!("no plot: {e}"),
    }
    Ok(())
}
