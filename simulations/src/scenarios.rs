//! The scenarios, in deterministic mode: each builds a [`World`], acts on it and measures in
//! simulated time. Every wait is bounded in simulated time.

use std::{collections::HashSet, time::Duration};

use crate::{
    node::{Awaited, Command, FirstSeen, Timings},
    world::{World, host_name},
};

/// Longest a cluster may take to form or heal before the scenario gives up.
const FORM_LIMIT: Duration = Duration::from_secs(120);

/// Start `n` hosts at once and wait until each sees all others.
fn formed(n: usize, seed: u64, timings: Timings) -> anyhow::Result<(World, Duration)> {
    let mut w = World::new(seed, timings);
    for i in 0..n {
        w.add(i);
    }
    let all: Vec<usize> = (0..n).collect();
    let took = w
        .run_until(FORM_LIMIT, |w| w.sees_exactly(&all))?
        .ok_or_else(|| anyhow::anyhow!("{n} nodes did not form a cluster in {FORM_LIMIT:?}"))?;
    w.log(format!("all {n} nodes see each other"));
    Ok((w, took))
}

/// `join`: how long `n` nodes started at once take until every node sees every other.
#[derive(Debug, Clone)]
pub struct Join {
    /// Nodes.
    pub nodes: usize,
    /// Until every node saw every other.
    pub converged: Duration,
}

/// Run `join`.
pub fn join(n: usize, seed: u64, timings: Timings) -> anyhow::Result<(Join, Vec<String>)> {
    let (w, converged) = formed(n, seed, timings)?;
    Ok((
        Join {
            nodes: n,
            converged,
        },
        w.trace(),
    ))
}

/// `crash`: `killed` nodes vanish; how long until the others notice, and how a request
/// made at that moment ends.
#[derive(Debug, Clone)]
pub struct Crash {
    /// Nodes at the start.
    pub nodes: usize,
    /// Nodes killed.
    pub killed: usize,
    /// Until every survivor saw exactly the survivors.
    pub detected: Duration,
    /// How long `fetch_sockets`, sent by a survivor right after the crash, took: about as long
    /// as it takes the survivors to know the node is gone, not the request timeout.
    pub request: Duration,
    /// Sockets it returned (each node has one client).
    pub sockets: usize,
    /// Sockets alive (one per survivor).
    pub expected_sockets: usize,
}

/// Run `crash`.
pub fn crash(
    n: usize,
    killed: usize,
    seed: u64,
    timings: Timings,
) -> anyhow::Result<(Crash, Vec<String>)> {
    anyhow::ensure!(killed < n, "cannot kill {killed} of {n} nodes and keep one");
    let (mut w, _) = formed(n, seed, timings)?;
    let victims: Vec<usize> = (n - killed..n).collect();
    let survivors: Vec<usize> = (0..n - killed).collect();
    for &v in &victims {
        w.crash(v);
    }
    let started = w.now();
    let mut answer = Awaited::new(
        w.fetch_sockets(0)
            .ok_or_else(|| anyhow::anyhow!("node-0 is not up"))?,
    );
    let mut seen = FirstSeen::default();
    w.run_until(FORM_LIMIT, |w| {
        let elapsed = w.now() - started;
        let answered = answer.arrived(elapsed);
        seen.check(w.sees_exactly(&survivors), elapsed) && answered
    })?;
    let detected = seen
        .at()
        .ok_or_else(|| anyhow::anyhow!("survivors did not notice the crash"))?;
    let (request, sockets) = answer.answer()?;
    w.log(format!(
        "survivors see each other only, after {detected:?}; fetch_sockets returned {sockets} in {request:?}"
    ));
    Ok((
        Crash {
            nodes: n,
            killed,
            detected,
            request,
            sockets,
            expected_sockets: survivors.len(),
        },
        w.trace(),
    ))
}

/// `partition`: the cluster split in two, broadcasts on both sides, then healed.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Nodes.
    pub nodes: usize,
    /// Until each side saw only itself.
    pub split_seen: Duration,
    /// Broadcasts sent during the split that reached every client on the sender's side.
    pub split_delivered: (usize, usize),
    /// Until every node saw every other again, after healing.
    pub healed: Duration,
    /// Broadcasts sent after healing that reached every client.
    pub after_heal_delivered: (usize, usize),
}

/// Broadcasts sent from each side in the `partition` and `churn` scenarios.
const ROUNDS: u64 = 20;
/// Room given to the last broadcast to arrive.
const DELIVERY_LIMIT: Duration = Duration::from_secs(10);

/// Run `partition`.
pub fn partition(
    n: usize,
    seed: u64,
    timings: Timings,
) -> anyhow::Result<(Partition, Vec<String>)> {
    anyhow::ensure!(n >= 2, "a partition needs two nodes");
    let (mut w, _) = formed(n, seed, timings)?;
    let a: Vec<usize> = (0..n / 2).collect();
    let b: Vec<usize> = (n / 2..n).collect();
    w.partition(&a, &b);
    let split_seen = w
        .run_until(FORM_LIMIT, |w| w.sees_exactly(&a) && w.sees_exactly(&b))?
        .ok_or_else(|| anyhow::anyhow!("the sides did not notice the split"))?;
    w.log(format!("each side sees only itself after {split_seen:?}"));

    // During the split: broadcasts from one node of each side reach their own side.
    let mut id = 0;
    let mut sent = Vec::new();
    for _ in 0..ROUNDS {
        for side in [&a, &b] {
            id += 1;
            w.broadcast(side[0], id);
            sent.push((id, side.clone()));
        }
        w.run_for(Duration::from_millis(20))?;
    }
    w.run_until(DELIVERY_LIMIT, |w| {
        sent.iter()
            .all(|(id, side)| covers(&w.received_by(*id), side))
    })?;
    let split_ok = sent
        .iter()
        .filter(|(id, side)| covers(&w.received_by(*id), side))
        .count();
    w.log(format!(
        "during the split {split_ok}/{} broadcasts reached their side",
        sent.len()
    ));

    w.repair(&a, &b);
    let all: Vec<usize> = (0..n).collect();
    let healed = w
        .run_until(FORM_LIMIT, |w| w.sees_exactly(&all))?
        .ok_or_else(|| anyhow::anyhow!("the cluster did not heal"))?;
    w.log(format!(
        "all {n} nodes see each other again after {healed:?}"
    ));

    let mut after = Vec::new();
    for r in 0..ROUNDS {
        id += 1;
        w.broadcast((r as usize) % n, id);
        after.push(id);
        w.run_for(Duration::from_millis(20))?;
    }
    w.run_until(DELIVERY_LIMIT, |w| {
        after.iter().all(|id| covers(&w.received_by(*id), &all))
    })?;
    let heal_ok = after
        .iter()
        .filter(|id| covers(&w.received_by(**id), &all))
        .count();
    w.log(format!(
        "after healing {heal_ok}/{} broadcasts reached every client",
        after.len()
    ));
    Ok((
        Partition {
            nodes: n,
            split_seen,
            split_delivered: (split_ok, sent.len()),
            healed,
            after_heal_delivered: (heal_ok, after.len()),
        },
        w.trace(),
    ))
}

fn covers(got: &[usize], want: &[usize]) -> bool {
    want.iter().all(|x| got.contains(x))
}

/// Host names for a trace line.
pub fn names(hosts: &[usize]) -> String {
    hosts
        .iter()
        .map(|&i| host_name(i))
        .collect::<Vec<_>>()
        .join(",")
}

/// `churn`: half the nodes come and go (crash, graceful leave, restart) while the other half
/// broadcast; what reaches the nodes alive throughout.
#[derive(Debug, Clone)]
pub struct Churn {
    /// Nodes.
    pub nodes: usize,
    /// Joins, leaves and crashes made.
    pub changes: usize,
    /// Crashes among the changes.
    pub crashes: usize,
    /// Graceful leaves among the changes.
    pub leaves: usize,
    /// Restarted nodes that came up again (their constructor returned) before the run ended.
    pub rejoined: usize,
    /// Broadcasts from stable nodes.
    pub broadcasts: usize,
    /// Deliveries to stable nodes' clients, and how many were expected.
    pub delivered: (usize, usize),
    /// Broadcasts a client received more than once (must be 0).
    pub duplicates: u64,
    /// Frames the stable nodes dropped (to nodes that had just gone), counted by the library.
    pub dropped: u64,
}

/// How long `churn` runs, and how often it changes a node and broadcasts.
const CHURN_FOR: Duration = Duration::from_secs(10);
const CHURN_EVERY: Duration = Duration::from_millis(250);
const BROADCAST_EVERY: Duration = Duration::from_millis(50);

/// Run `churn`.
pub fn churn(n: usize, seed: u64, timings: Timings) -> anyhow::Result<(Churn, Vec<String>)> {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    anyhow::ensure!(n >= 4, "churn needs at least 4 nodes");
    let (mut w, _) = formed(n, seed, timings)?;
    let stable: Vec<usize> = (0..n / 2).collect();
    let churners: Vec<usize> = (n / 2..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xc4u64);
    let (mut changes, mut id, mut sent) = (0, 0u64, Vec::new());
    let (mut crashes, mut leaves, mut rejoined) = (0, 0, 0);
    // Restarted nodes not up yet.
    let mut starting = HashSet::new();
    let start = w.now();
    let mut next_change = start;
    while w.now() - start < CHURN_FOR {
        starting.retain(|&c| {
            let up = w.node(c).is_some();
            rejoined += usize::from(up);
            !up
        });
        if w.now() >= next_change {
            let c = churners[rng.next_u32() as usize % churners.len()];
            if w.node(c).is_some() {
                if rng.next_u32() % 2 == 0 {
                    w.crash(c);
                    crashes += 1;
                } else {
                    w.leave(c);
                    leaves += 1;
                }
            } else {
                w.restart(c);
                starting.insert(c);
            }
            changes += 1;
            next_change += CHURN_EVERY;
        }
        id += 1;
        let from = stable[rng.next_u32() as usize % stable.len()];
        w.broadcast(from, id);
        sent.push(id);
        w.run_for(BROADCAST_EVERY)?;
    }
    w.run_until(DELIVERY_LIMIT, |w| {
        sent.iter().all(|id| covers(&w.received_by(*id), &stable))
    })?;
    let delivered = sent
        .iter()
        .map(|id| {
            w.received_by(*id)
                .iter()
                .filter(|i| stable.contains(i))
                .count()
        })
        .sum();
    let duplicates = w.duplicates();
    let dropped = stable.iter().map(|&i| w.frames_dropped(i)).sum();
    let expected = sent.len() * stable.len();
    w.log(format!(
        "{changes} changes; {delivered}/{expected} deliveries to stable nodes; {duplicates} duplicates; \
         {dropped} frames dropped"
    ));
    Ok((
        Churn {
            nodes: n,
            changes,
            crashes,
            leaves,
            rejoined,
            broadcasts: sent.len(),
            delivered: (delivered, expected),
            duplicates,
            dropped,
        },
        w.trace(),
    ))
}

/// `slow-peer`: one node hangs (nothing in or out, nothing lost); the others keep
/// broadcasting at a fixed rate.
#[derive(Debug, Clone)]
pub struct SlowPeer {
    /// Nodes.
    pub nodes: usize,
    /// Broadcasts per second delivered to every healthy node before the hang.
    pub before: f64,
    /// The same while the node hangs.
    pub during: f64,
    /// Frames the healthy nodes dropped for the hung one (counted by the library).
    pub dropped: u64,
    /// Until the healthy nodes stopped counting the hung one as a member.
    pub evicted: Option<Duration>,
    /// Growth of the process's resident memory while the node hung (real-socket mode only).
    pub memory_growth: Option<u64>,
    /// The most bytes any healthy node held in its send queues while the node hung
    /// (sampled every tick; at most the peer budget for the hung node, 64 MiB by default).
    pub peak_queued: u64,
}

impl SlowPeer {
    /// Broadcasts per second node 0 is asked to make, in every phase.
    pub fn offered(&self) -> f64 {
        SLOW_PEER_BURST as f64 / SLOW_PEER_EVERY.as_secs_f64()
    }
}

/// How long `slow-peer` broadcasts before and during the hang.
pub(crate) const SLOW_PEER_PHASE: Duration = Duration::from_secs(5);
pub(crate) const SLOW_PEER_EVERY: Duration = Duration::from_millis(10);
/// Broadcasts made every [`SLOW_PEER_EVERY`]: 2,000 a second, enough to fill a hung peer's
/// send queue (1,024 frames) before its connection times out.
pub(crate) const SLOW_PEER_BURST: u64 = 20;

/// Run `slow-peer`.
pub fn slow_peer(n: usize, seed: u64, timings: Timings) -> anyhow::Result<(SlowPeer, Vec<String>)> {
    anyhow::ensure!(n >= 3, "slow-peer needs at least 3 nodes");
    let (mut w, _) = formed(n, seed, timings)?;
    let victim = n - 1;
    let healthy: Vec<usize> = (0..victim).collect();
    let mut id = 0;
    let mut peak_queued = 0;
    let mut phase = |w: &mut World, evicted: &mut Option<Duration>| -> anyhow::Result<f64> {
        let (start, first) = (w.now(), id + 1);
        while w.now() - start < SLOW_PEER_PHASE {
            for _ in 0..SLOW_PEER_BURST {
                id += 1;
                w.broadcast(0, id);
            }
            w.run_for(SLOW_PEER_EVERY)?;
            for &i in &healthy {
                let queued = w.node(i).map_or(0, |h| h.cluster.queued_bytes());
                peak_queued = peak_queued.max(queued as u64);
            }
            if evicted.is_none() && w.sees_exactly(&healthy) {
                *evicted = Some(w.now() - start);
            }
        }
        let elapsed = (w.now() - start).as_secs_f64();
        let delivered = (first..=id)
            .filter(|id| covers(&w.received_by(*id), &healthy))
            .count();
        Ok(delivered as f64 / elapsed)
    };
    let mut never = Some(Duration::ZERO);
    let before = phase(&mut w, &mut never)?;
    w.hang(victim, &healthy);
    let mut evicted = None;
    let during = phase(&mut w, &mut evicted)?;
    let dropped = healthy.iter().map(|&i| w.frames_dropped(i)).sum();
    w.log(format!(
        "rate delivered to healthy nodes {before:.0}/s before, {during:.0}/s during the hang; \
         {dropped} frames dropped for the hung node"
    ));
    w.release(victim, &healthy);
    Ok((
        SlowPeer {
            nodes: n,
            before,
            during,
            dropped,
            evicted,
            memory_growth: None,
            peak_queued,
        },
        w.trace(),
    ))
}

/// What [`presence_partition`] saw.
#[derive(Debug)]
pub struct PresencePartition {
    /// Whether every node listed exactly the entries the nodes held, once healed.
    pub converged: bool,
    /// Simulated time from the heal until they did.
    pub after_heal: Option<Duration>,
    /// Entries tracked at the end, cluster-wide.
    pub entries: usize,
}

/// `n` nodes split in two; on both sides nodes track and untrack keys of one topic (a seeded
/// random sequence); the split heals: every node's replica must end with exactly the entries
/// the nodes hold.
pub fn presence_partition(
    n: usize,
    seed: u64,
    timings: Timings,
) -> anyhow::Result<(PresencePartition, Vec<String>)> {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use std::collections::BTreeSet;

    anyhow::ensure!(n >= 2, "a partition needs two nodes");
    let (mut w, _) = formed(n, seed, timings)?;
    let a: Vec<usize> = (0..n / 2).collect();
    let b: Vec<usize> = (n / 2..n).collect();
    w.partition(&a, &b);
    w.run_until(FORM_LIMIT, |w| w.sees_exactly(&a) && w.sees_exactly(&b))?
        .ok_or_else(|| anyhow::anyhow!("the sides did not notice the split"))?;

    // What each node holds: (node, key).
    let mut held: BTreeSet<(usize, String)> = BTreeSet::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x9e5e);
    for _ in 0..4 * ROUNDS {
        let node = (rng.next_u32() as usize) % n;
        let key = format!("k{}", rng.next_u32() % 6);
        let Some(h) = w.node(node) else { continue };
        let command = if rng.next_u32() % 3 == 0 {
            held.remove(&(node, key.clone()));
            Command::Untrack("t".into(), key)
        } else {
            held.insert((node, key.clone()));
            Command::Track("t".into(), key)
        };
        h.commands.try_send(command)?;
        w.run_for(Duration::from_millis(10))?;
    }
    w.run_for(Duration::from_millis(500))?;
    w.repair(&a, &b);
    let all: Vec<usize> = (0..n).collect();
    w.run_until(FORM_LIMIT, |w| w.sees_exactly(&all))?
        .ok_or_else(|| anyhow::anyhow!("the cluster did not heal"))?;
    let want: BTreeSet<(String, String)> = held
        .iter()
        .map(|(node, key)| (crate::world::host_name(*node), key.clone()))
        .collect();
    let listed = |h: &crate::node::Handle| -> BTreeSet<(String, String)> {
        h.presence
            .list("t")
            .into_iter()
            .flat_map(|(key, metas)| metas.into_iter().map(move |m| (m.node, key.clone())))
            .collect()
    };
    let after_heal = w.run_until(DELIVERY_LIMIT, |w| {
        all.iter()
            .all(|i| w.node(*i).is_some_and(|h| listed(&h) == want))
    })?;
    let converged = all
        .iter()
        .all(|i| w.node(*i).is_some_and(|h| listed(&h) == want));
    if !converged {
        for i in &all {
            if let Some(h) = w.node(*i) {
                w.log(format!("node {i} lists {:?}, want {want:?}", listed(&h)));
            }
        }
    }
    Ok((
        PresencePartition {
            converged,
            after_heal,
            entries: want.len(),
        },
        w.trace(),
    ))
}

/// `burst`: a burst of broadcasts from one node after a quiet spell, as a chat room's catch-up
/// or a game's state sync sends.
#[derive(Debug, Clone)]
pub struct Burst {
    /// From the burst of [`BURST`] broadcasts until every node's client had all of it.
    pub delivered: Duration,
}

/// Broadcasts of a [`burst`]: more bytes than a quiet QUIC connection's congestion window
/// (quinn's initial one, 12,000 bytes) holds, so that the burst goes in several flights.
pub const BURST: u64 = 300;

/// `n` nodes formed, quiet for five seconds (keep-alives only), then node 0 broadcasts
/// [`BURST`] messages at once.
pub fn burst(n: usize, seed: u64, timings: Timings) -> anyhow::Result<(Burst, Vec<String>)> {
    let (mut w, _) = formed(n, seed, timings)?;
    w.run_for(Duration::from_secs(5))?;
    for id in 1..=BURST {
        anyhow::ensure!(w.broadcast(0, id), "node 0 took no broadcast command");
    }
    let all: Vec<usize> = (0..n).collect();
    let delivered = w
        .run_until(DELIVERY_LIMIT, |w| {
            (1..=BURST).all(|id| covers(&w.received_by(id), &all))
        })?
        .ok_or_else(|| anyhow::anyhow!("the burst was not delivered in {DELIVERY_LIMIT:?}"))?;
    w.log(format!(
        "{BURST} broadcasts delivered everywhere after {delivered:?}"
    ));
    Ok((Burst { delivered }, w.trace()))
}
