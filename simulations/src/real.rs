//! Real-socket mode: every node on its own runtime with real UDP sockets on 127.0.0.1, in one
//! process, timed with the real clock. This is where the scale figures come from; it cannot
//! partition a network (that takes namespaces) and does not repeat exactly.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use crate::{
    node::{self, Awaited, FirstSeen, Handle, Spec, Timings},
    scenarios::{Crash, Join, SLOW_PEER_BURST, SLOW_PEER_EVERY, SLOW_PEER_PHASE, SlowPeer},
    world::host_name,
};

/// A node on a runtime of its own, so that it can be killed the way SIGKILL kills a process.
struct RealNode {
    rt: tokio::runtime::Runtime,
    handle: Handle,
    gossip: SocketAddr,
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How often the driver looks at the nodes.
const POLL: Duration = Duration::from_millis(5);

/// Whether gossip is sealed under the secret (the default) or sent in clear.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gossip {
    Sealed,
    Plain,
}

fn spawn(
    i: usize,
    seed: Option<SocketAddr>,
    timings: Timings,
    gossip: Gossip,
) -> anyhow::Result<RealNode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let spec = Spec {
        name: host_name(i),
        gossip: SocketAddr::new(LOOPBACK, 0),
        mesh: SocketAddr::new(LOOPBACK, 0),
        advertise_ip: LOOPBACK,
        seeds: seed.map(|s| s.to_string()).into_iter().collect(),
        timings,
    };
    let (handle, serve) = rt.block_on(node::start(spec, move |c| match gossip {
        Gossip::Sealed => c,
        Gossip::Plain => c.insecure_no_auth(),
    }))?;
    rt.spawn(serve);
    let gossip = handle.cluster.gossip_addr();
    Ok(RealNode { rt, handle, gossip })
}

impl RealNode {
    /// Stop every task at once, without a word to the peers.
    fn kill(self) {
        self.rt.shutdown_background();
        // Its sockets died with the runtime; dropping the handle would try to say goodbye.
        std::mem::forget(self.handle);
    }
}

fn sees_exactly(nodes: &[&RealNode]) -> bool {
    nodes.iter().all(|n| {
        let mut have: Vec<String> = n
            .handle
            .cluster
            .members()
            .into_iter()
            .map(|m| m.node_name)
            .collect();
        let mut want: Vec<String> = nodes
            .iter()
            .filter(|o| o.handle.cluster.node_name() != n.handle.cluster.node_name())
            .map(|o| o.handle.cluster.node_name().to_string())
            .collect();
        have.sort();
        want.sort();
        have == want
    })
}

/// Poll `done` until it holds or `limit` passes; returns the time it took.
fn wait(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(POLL);
    }
    done().then(|| start.elapsed())
}

const FORM_LIMIT: Duration = Duration::from_secs(120);

fn form(n: usize, timings: Timings) -> anyhow::Result<(Vec<RealNode>, Duration)> {
    form_with(n, timings, Gossip::Sealed)
}

fn form_with(
    n: usize,
    timings: Timings,
    gossip: Gossip,
) -> anyhow::Result<(Vec<RealNode>, Duration)> {
    let first = spawn(0, None, timings, gossip)?;
    let seed = first.gossip;
    let start = Instant::now();
    // The others start together, each on a thread of its own: a node's constructor returns
    // once it has joined.
    let others: Vec<anyhow::Result<RealNode>> = std::thread::scope(|s| {
        let started: Vec<_> = (1..n)
            .map(|i| s.spawn(move || spawn(i, Some(seed), timings, gossip)))
            .collect();
        started
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a node panicked while starting")))
            })
            .collect()
    });
    let mut nodes = vec![first];
    for node in others {
        nodes.push(node?);
    }
    let refs: Vec<&RealNode> = nodes.iter().collect();
    wait(FORM_LIMIT, || sees_exactly(&refs))
        .ok_or_else(|| anyhow::anyhow!("{n} nodes did not form a cluster in {FORM_LIMIT:?}"))?;
    Ok((nodes, start.elapsed()))
}

/// `join` on real sockets.
pub fn join(n: usize, timings: Timings) -> anyhow::Result<Join> {
    let (_nodes, converged) = form(n, timings)?;
    Ok(Join {
        nodes: n,
        converged,
    })
}

/// `crash` on real sockets.
pub fn crash(n: usize, killed: usize, timings: Timings) -> anyhow::Result<Crash> {
    anyhow::ensure!(killed < n, "cannot kill {killed} of {n} nodes and keep one");
    let (mut nodes, _) = form(n, timings)?;
    let victims = nodes.split_off(n - killed);
    for v in victims {
        v.kill();
    }
    let start = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    nodes[0]
        .handle
        .commands
        .try_send(node::Command::FetchSockets(tx))
        .map_err(|_| anyhow::anyhow!("node-0 does not take commands"))?;
    let mut answer = Awaited::new(rx);
    let refs: Vec<&RealNode> = nodes.iter().collect();
    let mut seen = FirstSeen::default();
    wait(FORM_LIMIT, || {
        let elapsed = start.elapsed();
        let answered = answer.arrived(elapsed);
        seen.check(sees_exactly(&refs), elapsed) && answered
    });
    let detected = seen
        .at()
        .ok_or_else(|| anyhow::anyhow!("survivors did not notice the crash"))?;
    let (request, sockets) = answer.answer()?;
    Ok(Crash {
        nodes: n,
        killed,
        detected,
        request,
        sockets,
        expected_sockets: nodes.len(),
    })
}

/// `slow-peer` on real sockets: the hung node's runtime is blocked (it reads nothing, its
/// sockets stay open, as with SIGSTOP), while node 0 broadcasts at a fixed rate. Also reports
/// how much this process's resident memory grew while the node hung.
pub fn slow_peer(n: usize, timings: Timings) -> anyhow::Result<SlowPeer> {
    anyhow::ensure!(n >= 3, "slow-peer needs at least 3 nodes");
    let (nodes, _) = form(n, timings)?;
    let (healthy, victim) = nodes.split_at(n - 1);
    let victim = &victim[0];
    let mut id = 0;
    let mut phase = |evicted: &mut Option<Duration>, peak_rss: &mut u64, peak_queued: &mut u64| {
        let (start, first) = (Instant::now(), id + 1);
        // Paced by the clock, not by the sleeps (which overshoot on a loaded machine): by
        // the end of the phase exactly the offered rate was asked for.
        let offered =
            SLOW_PEER_BURST * (SLOW_PEER_PHASE.as_millis() / SLOW_PEER_EVERY.as_millis()) as u64;
        let phase_secs = SLOW_PEER_PHASE.as_secs_f64();
        while id + 1 - first < offered {
            let due =
                ((start.elapsed().as_secs_f64() / phase_secs).min(1.0) * offered as f64) as u64;
            while id + 1 - first < due {
                id += 1;
                // A full command queue means node 0 is not keeping up: that broadcast is
                // never made, and counts as not delivered.
                let _ = healthy[0]
                    .handle
                    .commands
                    .try_send(node::Command::Broadcast(id));
            }
            std::thread::sleep(SLOW_PEER_EVERY);
            if evicted.is_none() && sees_exactly(&healthy.iter().collect::<Vec<_>>()) {
                *evicted = Some(start.elapsed());
            }
            *peak_rss = (*peak_rss).max(resident_bytes());
            for h in healthy {
                *peak_queued = (*peak_queued).max(h.handle.cluster.queued_bytes() as u64);
            }
        }
        // Room for the last ones to arrive.
        std::thread::sleep(Duration::from_millis(500));
        let delivered = (first..=id)
            .filter(|id| {
                healthy
                    .iter()
                    .all(|h| h.handle.inbox.lock().expect("inbox").has(*id))
            })
            .count();
        delivered as f64 / phase_secs
    };
    let (mut never, mut rss_before, mut queued_before) = (Some(Duration::ZERO), 0, 0);
    let before = phase(&mut never, &mut rss_before, &mut queued_before);
    // Block the victim's only worker: it stops reading, its sockets stay open.
    victim
        .rt
        .spawn(async { std::thread::sleep(SLOW_PEER_PHASE + Duration::from_secs(1)) });
    let (mut evicted, mut rss_during, mut peak_queued) = (None, 0, 0);
    let during = phase(&mut evicted, &mut rss_during, &mut peak_queued);
    let dropped = healthy
        .iter()
        .map(|h| h.handle.cluster.frames_dropped())
        .sum();
    Ok(SlowPeer {
        nodes: n,
        before,
        during,
        dropped,
        evicted,
        memory_growth: Some(rss_during.saturating_sub(rss_before)),
        peak_queued,
    })
}

/// What sealing gossip costs a cluster of `nodes`: the time until all see all once all but
/// the first start together (each derives its keys, then joins), then,
/// idle, the sealed datagrams per node and gossip round (each carries [`SEAL_OVERHEAD`]
/// bytes more than in clear) and this process's CPU time per node and round; with gossip in
/// clear and sealed, measured one after the other in the same run.
#[derive(Debug, Clone)]
pub struct GossipCost {
    /// Nodes in the run.
    pub nodes: usize,
    /// Until all see all, with gossip in clear.
    pub join_plain: Duration,
    /// Until all see all, with gossip sealed.
    pub join_sealed: Duration,
    /// Sealed datagrams sent, per node and gossip round.
    pub datagrams: f64,
    /// CPU time per node and round with gossip in clear.
    pub cpu_plain: Duration,
    /// CPU time per node and round with gossip sealed.
    pub cpu_sealed: Duration,
}

/// Bytes a sealed datagram carries on top of the gossip message: format tag, version, key
/// id, sender's session, datagram number, send time, flags and tag.
pub const SEAL_OVERHEAD: usize = 57;

/// How long the idle cluster is measured.
const COST_WINDOW: Duration = Duration::from_secs(10);

/// `gossip-cost` on real sockets (there is no sealing on the simulated network).
pub fn gossip_cost(n: usize, timings: Timings) -> anyhow::Result<GossipCost> {
    let rounds = COST_WINDOW.as_secs_f64() / timings.gossip_interval.as_secs_f64();
    let per_node_round = |cpu: Duration| cpu.div_f64(rounds * n as f64);
    let measure = |gossip| -> anyhow::Result<(Duration, Duration, u64)> {
        let (nodes, joined) = form_with(n, timings, gossip)?;
        // Let the joins settle: the window holds steady-state gossip only.
        std::thread::sleep(Duration::from_secs(2));
        let sealed = || -> u64 {
            nodes
                .iter()
                .map(|n| n.handle.cluster.gossip_stats().sealed)
                .sum()
        };
        let (cpu0, sealed0) = (cpu_time(), sealed());
        std::thread::sleep(COST_WINDOW);
        let (cpu, datagrams) = (cpu_time().saturating_sub(cpu0), sealed() - sealed0);
        for node in nodes {
            node.kill();
        }
        Ok((joined, cpu, datagrams))
    };
    let (join_plain, cpu_plain, _) = measure(Gossip::Plain)?;
    let (join_sealed, cpu_sealed, datagrams) = measure(Gossip::Sealed)?;
    Ok(GossipCost {
        nodes: n,
        join_plain,
        join_sealed,
        datagrams: datagrams as f64 / (rounds * n as f64),
        cpu_plain: per_node_round(cpu_plain),
        cpu_sealed: per_node_round(cpu_sealed),
    })
}

/// CPU time (user and system) this process has used so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; on failure it stays zeroed.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// This process's resident memory, from /proc (0 where there is none).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
