//! The table of absolute figures, the ratios against (b) and (c), the goals, and the ratios
//! against a baseline build when one ran.

use crate::{Figures, Plan};

/// The `q` quantile of `samples` (ns), sorted in place; NaN when empty.
fn quantile(samples: &mut [u64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
    samples[i] as f64
}

const QS: [f64; 3] = [0.5, 0.99, 0.999];

fn pcts(samples: &[u64]) -> [f64; 3] {
    let mut s = samples.to_vec();
    QS.map(|q| quantile(&mut s, q) / 1e3)
}

fn us3(v: [f64; 3]) -> String {
    if v[0].is_nan() {
        return "-".into();
    }
    format!("{:.0} / {:.0} / {:.0}", v[0], v[1], v[2])
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn row(title: &str, cells: impl Iterator<Item = String>) {
    let cells: Vec<String> = cells.collect();
    println!("| {title} | {} |", cells.join(" | "));
}

/// The floors (see [`crate::floor`]).
pub struct Floors {
    /// Latencies (ns) of the quinn hop in one process.
    pub quinn: Vec<u64>,
    /// Latencies (ns) of the quinn hop between two processes.
    pub quinn_apart: Vec<u64>,
    /// Latencies (ns) of the TCP hop in one process.
    pub tcp: Vec<u64>,
    /// CPU seconds bare quinn takes to carry the floods' payloads from node A to its peers,
    /// at both ends.
    pub quinn_cpu: crate::floor::QuinnCpu,
}

/// Print everything.
pub fn print(cols: &[Figures], floors: &Floors, plan: Plan) {
    let Floors {
        quinn,
        quinn_apart,
        tcp,
        quinn_cpu,
    } = floors;
    let ceiling = &cols[0];
    let c_same = pcts(&ceiling.same);
    // What a backend adds: a client on another node against a client of the single node,
    // the same clients in the same run.
    let added = |f: &Figures| sub(pcts(&f.remote), c_same);
    println!();
    println!(
        "{} latency rounds, {} real WebSocket clients per node, {} sockets per node for the requests; \
         latency in µs as p50 / p99 / p99.9",
        plan.rounds,
        crate::CLIENTS_PER_NODE,
        plan.sockets
    );
    println!();
    row("", cols.iter().map(|f| f.name.to_string()));
    row("---", cols.iter().map(|_| "---".to_string()));
    row(
        "emit → client on the same node",
        cols.iter().map(|f| us3(pcts(&f.same))),
    );
    row(
        "emit → client on another node",
        cols.iter().map(|f| us3(pcts(&f.remote))),
    );
    row(
        "added: another node − single node (c)",
        cols.iter().map(|f| us3(added(f))),
    );
    row(
        "another node − same node, same cluster",
        cols.iter()
            .map(|f| us3(sub(pcts(&f.remote), pcts(&f.same)))),
    );
    row(
        "latency rounds lost",
        cols.iter().map(|f| f.lost_pings.to_string()),
    );
    for (i, (size, n)) in plan.floods.iter().enumerate() {
        row(
            &format!(
                "throughput {size} B, msg/s per receiving client, median of {} × {n} sent \
                 (lost, reordered in all)",
                plan.flood_rounds
            ),
            cols.iter().map(|f| {
                let fl = &f.floods[i];
                format!(
                    "{:.0} ({}, {}; A emitted {:.0}/s)",
                    fl.rate(),
                    fl.lost + fl.errors,
                    fl.out_of_order,
                    fl.emit_rate()
                )
            }),
        );
    }
    let ms = |f: &(Vec<u64>, u64)| {
        let p = pcts(&f.0);
        format!("{:.2} / {:.2} ms ({})", p[0] / 1e3, p[1] / 1e3, f.1)
    };
    row(
        "fetch_sockets p50 / p99 (sockets)",
        cols.iter().map(|f| ms(&f.fetch)),
    );
    row(
        "broadcast_with_ack p50 / p99 (acks)",
        cols.iter().map(|f| ms(&f.ack)),
    );
    row(
        "remote join / leave of one socket p50 / p99",
        cols.iter().map(|f| {
            let p = pcts(&f.rooms);
            format!("{:.2} / {:.2} ms", p[0] / 1e3, p[1] / 1e3)
        }),
    );
    row(
        "memory at rest per node, MiB (max)",
        cols.iter().map(|f| format!("{:.1}", max(&f.rest_mib))),
    );
    row(
        "peak memory per node, MiB (max)",
        cols.iter().map(|f| format!("{:.1}", max(&f.peak_mib))),
    );
    row(
        "CPU s in the throughput runs: node A / other nodes / redis-server",
        cols.iter().map(|f| {
            let others = match &f.cpu_s[1..] {
                [] => "-".to_string(),
                rest => format!("{:.2}", rest.iter().sum::<f64>()),
            };
            let redis = f.redis_cpu_s.map_or("-".into(), |r| format!("{r:.2}"));
            format!("{:.2} / {others} / {redis}", f.cpu_s[0])
        }),
    );
    let q = pcts(quinn);
    let q_apart = pcts(quinn_apart);
    let t = pcts(tcp);
    println!();
    println!(
        "floor, one-way {} B messages: quinn stream in one process {} µs, between two processes {} µs; loopback TCP in one process {} µs",
        crate::floor::MESSAGE,
        us3(q),
        us3(q_apart),
        us3(t)
    );
    println!(
        "floor, CPU: a bare quinn stream to each of {} other processes, carrying the floods' \
         payloads ({}, each {} times) in writes of {} KiB, took {:.2} s of its \
         process, and {:.2} s of the receiving ones together",
        crate::CLUSTER_NODES - 1,
        (plan.floods.iter())
            .map(|(size, n)| format!("{n} × {size} B"))
            .collect::<Vec<_>>()
            .join(" and "),
        plan.flood_rounds,
        crate::floor::CHUNK / 1024,
        quinn_cpu.source,
        quinn_cpu.sinks,
    );

    let Some(gossip) = cols.iter().find(|f| f.name == crate::GOSSIP) else {
        return;
    };
    let g_added = added(gossip);
    println!();
    println!("gossip mesh (a) against the others:");
    if let Some(redis) = cols
        .iter()
        .find(|f| f.name.starts_with("socketioxide-redis"))
    {
        let r_added = added(redis);
        goal(
            "added latency p50, gossip / redis",
            g_added[0] / r_added[0],
            AtMost(0.8),
        );
        goal(
            "added latency p99, gossip / redis",
            g_added[1] / r_added[1],
            AtMost(0.8),
        );
        let (g_rooms, r_rooms) = (pcts(&gossip.rooms), pcts(&redis.rooms));
        println!(
            "  remote join / leave p50 / p99, gossip / redis: {:.2} / {:.2}",
            g_rooms[0] / r_rooms[0],
            g_rooms[1] / r_rooms[1]
        );
        for (g, r) in gossip.floods.iter().zip(&redis.floods) {
            goal(
                &format!("throughput {} B, gossip / redis", g.size),
                g.rate() / r.rate(),
                AtLeast(2.0),
            );
        }
    }
    // Nodes are processes: the hop between two of them also wakes the receiving one.
    for (hop, floor) in [("in one process", q), ("between two processes", q_apart)] {
        goal(
            &format!("added latency p50 / quinn hop {hop} p50"),
            g_added[0] / floor[0],
            AtMost(2.0),
        );
        println!(
            "  added latency p99 / quinn hop {hop} p99: {:.2}",
            g_added[1] / floor[1]
        );
    }
    // A smoke run's floods are too short for the CPU clock's ticks.
    if gossip.cpu_s[0] > 0.0 && ceiling.cpu_s[0] > 0.0 {
        goal(
            "node A's CPU seconds in the floods, gossip / single node",
            gossip.cpu_s[0] / ceiling.cpu_s[0],
            AtMost(2.0),
        );
        // What the goal leaves the mesh on node A (the single node's own CPU), against what
        // quinn alone takes to carry the same payloads to the same peers.
        println!(
            "  node A's CPU seconds beyond the single node's: {:.2}, the goal allows {:.2}; \
             the CPU floor (bare quinn, the payloads alone): {:.2}",
            gossip.cpu_s[0] - ceiling.cpu_s[0],
            ceiling.cpu_s[0],
            quinn_cpu.source,
        );
    }
    for (g, c) in gossip.floods.iter().zip(&ceiling.floods) {
        goal(
            &format!("throughput {} B, gossip / single node", g.size),
            g.rate() / c.rate(),
            AtLeast(0.6),
        );
        goal(
            &format!("messages lost or reordered, {} B", g.size),
            (g.lost + g.errors + g.out_of_order) as f64,
            AtMost(0.0),
        );
    }
    // The same deliveries on the same cores: a cluster of three on one machine delivers to
    // three nodes' clients where the single node (c) delivers to one node's.
    if let Some(all) = cols.iter().find(|f| f.name == crate::SINGLE_ALL) {
        for (g, c) in gossip.floods.iter().zip(&all.floods) {
            goal(
                &format!(
                    "throughput {} B, gossip / single node serving as many clients",
                    g.size
                ),
                g.rate() / c.rate(),
                AtLeast(0.6),
            );
        }
        // Both deliver the same messages on the same cores; the cluster also carries them
        // from node to node, which costs at least what bare quinn takes at both ends.
        if all.cpu_s[0] > 0.0 {
            println!(
                "  CPU seconds in the floods: the cluster's nodes {:.2}, the single node serving \
                 as many clients {:.2}; the CPU floor at both ends (bare quinn's sender and \
                 receivers): {:.2}",
                gossip.cpu_s.iter().sum::<f64>(),
                all.cpu_s[0],
                quinn_cpu.source + quinn_cpu.sinks,
            );
        }
    }
    goal(
        "memory at rest, gossip node − single node (MiB)",
        max(&gossip.rest_mib) - max(&ceiling.rest_mib),
        AtMost(6.0),
    );
    if let Some(base) = cols.iter().find(|f| f.name == crate::GOSSIP_BASELINE) {
        against_baseline(gossip, base, "this build / baseline");
    }
    if let Some(on) = cols.iter().find(|f| f.name == crate::GOSSIP_METRICS) {
        against_baseline(on, gossip, "metrics recorded / not recorded");
    }
}

/// `this` / `base`, for the same gossip mesh measured in turns (`ratio` says what is
/// divided by what).
fn against_baseline(this: &Figures, base: &Figures, ratio: &str) {
    println!();
    println!(
        "{} against {}, {ratio} (latency: below 1 is faster; throughput: above 1 is more):",
        this.name, base.name
    );
    let latency = |what: &str, this: &[u64], base: &[u64]| {
        let (t, b) = (pcts(this), pcts(base));
        println!(
            "  {what} p50 / p99: {:.2} / {:.2}",
            t[0] / b[0],
            t[1] / b[1]
        );
    };
    latency("emit → client on the same node", &this.same, &base.same);
    latency("emit → client on another node", &this.remote, &base.remote);
    for (t, b) in this.floods.iter().zip(&base.floods) {
        println!("  throughput {} B: {:.2}", t.size, t.rate() / b.rate());
    }
    // Both columns flood the same messages: on a CPU-bound node, throughput goes as the
    // inverse of this, which the scheduling noise of one flood does not blur.
    let cpu = |f: &Figures| f.cpu_s.iter().sum::<f64>();
    println!(
        "  CPU seconds of the nodes over all floods: {:.2}",
        cpu(this) / cpu(base)
    );
    latency("fetch_sockets", &this.fetch.0, &base.fetch.0);
    latency("broadcast_with_ack", &this.ack.0, &base.ack.0);
    latency("remote join / leave", &this.rooms, &base.rooms);
}

/// A goal of the benchmark.
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}
use Goal::{AtLeast, AtMost};

fn goal(what: &str, value: f64, goal: Goal) {
    let (met, target) = match goal {
        AtMost(x) => (value <= x, format!("≤ {x}")),
        AtLeast(x) => (value >= x, format!("≥ {x}")),
    };
    let verdict = if met { "met" } else { "NOT met" };
    println!("  {what}: {value:.2} (goal {target}: {verdict})");
}
