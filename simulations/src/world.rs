//! Deterministic mode: a cluster on turmoil's simulated network and clock, driven step by
//! step from outside so a scenario can crash, partition and heal hosts between steps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use socketioxide_cluster::MembershipEvent;

use crate::{
    node::{self, GOSSIP_PORT, Handle, MESH_PORT, Spec, Timings},
    seeded,
    sim_net::SimNetwork,
};

/// Hosts currently up, by number. A host removes itself when turmoil drops it (crash) or it
/// stops: the last reference to a node must go inside the simulation, where turmoil releases
/// the node's simulated ports; the driver only borrows handles for a moment.
type Registry = Arc<Mutex<BTreeMap<usize, Handle>>>;

/// One line per event, stamped with simulated time.
pub type Trace = Vec<String>;

/// A simulated cluster.
pub struct World {
    sim: turmoil::Sim<'static>,
    up: Registry,
    net: SimNetwork,
    seed: u64,
    timings: Timings,
    trace: Arc<Mutex<Trace>>,
}

/// Removes a host from the registry when its runtime is dropped.
struct Registered(Registry, usize);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut up) = self.0.lock() {
            up.remove(&self.1);
        }
    }
}

/// A trace line: `line` at simulated time `at`.
fn stamp(at: Duration, line: impl std::fmt::Display) -> String {
    format!("{:>8} ms  {line}", at.as_millis())
}

/// The name of host `i`.
pub fn host_name(i: usize) -> String {
    format!("node-{i}")
}

impl World {
    /// An empty simulation whose every random choice follows `seed`. Call it on the thread
    /// that will step it (see [`crate::run_seeded`]).
    pub fn new(seed: u64, timings: Timings) -> Self {
        seeded::seed_this_thread(seed);
        let sim = turmoil::Builder::new()
            .rng_seed(seed)
            // The simulated wall clock starts at the same instant in every run
            // (2026-01-01T00:00:00Z); turmoil's default is the real time.
            .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
            .simulation_duration(Duration::from_secs(24 * 3600))
            .min_message_latency(Duration::from_millis(1))
            .max_message_latency(Duration::from_millis(5))
            .udp_capacity(4096)
            .build();
        Self {
            sim,
            up: Registry::default(),
            net: SimNetwork::root(seed),
            seed,
            timings,
            trace: Arc::default(),
        }
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Record an event in the trace.
    pub fn log(&self, line: impl std::fmt::Display) {
        let line = stamp(self.sim.elapsed(), line);
        tracing::debug!(target: "simulation", "{line}");
        self.trace.lock().expect("trace").push(line);
    }

    /// The trace so far.
    pub fn trace(&self) -> Trace {
        self.trace.lock().expect("trace").clone()
    }

    /// Add host `i`, seeded with host 0 (unless it is host 0). It starts on the next step;
    /// after a crash, [`World::restart`] brings it back.
    pub fn add(&mut self, i: usize) {
        let name = host_name(i);
        let net = SimNetwork::new(&self.net, self.seed.wrapping_add(i as u64));
        let up = self.up.clone();
        let trace = self.trace.clone();
        let timings = self.timings;
        let seeds = if i == 0 {
            Vec::new()
        } else {
            vec![format!("{}:{GOSSIP_PORT}", self.sim.lookup(host_name(0)))]
        };
        self.sim.host(name.clone(), move || {
            let (net, up, trace, seeds, name) = (
                net.clone(),
                up.clone(),
                trace.clone(),
                seeds.clone(),
                name.clone(),
            );
            async move {
                let ip = turmoil::lookup(name.as_str());
                let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                let spec = Spec {
                    name: name.clone(),
                    gossip: SocketAddr::new(unspecified, GOSSIP_PORT),
                    mesh: SocketAddr::new(unspecified, MESH_PORT),
                    advertise_ip: ip,
                    seeds,
                    timings,
                };
                let (handle, serve) = match node::start(spec, |c| {
                    // Nothing to authenticate against on a simulated network; and deriving
                    // keys (Argon2id) would put real CPU time into simulated time.
                    c.with_network(net).insecure_no_auth()
                })
                .await
                {
                    Ok(started) => started,
                    Err(e) => {
                        let line = format!("{name} failed to start: {e:#}");
                        trace
                            .lock()
                            .expect("trace")
                            .push(stamp(turmoil::elapsed(), line));
                        return Err(e.to_string().into());
                    }
                };
                // Every membership change each node sees goes into the trace, with its
                // simulated time: the event trace two runs of one seed must share.
                let mut events = Box::pin(handle.cluster.membership_events());
                let watcher = trace.clone();
                let me = name.clone();
                tokio::spawn(async move {
                    use futures_util::StreamExt;
                    while let Some(event) = events.next().await {
                        let line = match event {
                            MembershipEvent::Joined(m) => format!("{me}: {} joined", m.node_name),
                            MembershipEvent::Left(m) => format!("{me}: {} left", m.node_name),
                        };
                        watcher
                            .lock()
                            .expect("trace")
                            .push(stamp(turmoil::elapsed(), line));
                    }
                });
                up.lock().expect("registry").insert(i, handle);
                let _registered = Registered(up, i);
                serve.await;
                Ok(())
            }
        });
    }

    /// Crash host `i`: its runtime, sockets and tasks vanish without a word.
    pub fn crash(&mut self, i: usize) {
        // Dropping the host's runtime drops its registration too, inside the simulation, as
        // turmoil needs for the host's sockets to be released.
        self.sim.crash(host_name(i));
        self.log(format!("{} crashed", host_name(i)));
    }

    /// Host `i` leaves gracefully (its application calls `shutdown`) and stops.
    pub fn leave(&mut self, i: usize) {
        if let Some(h) = self.node(i) {
            let _ = h.commands.try_send(node::Command::Leave);
        }
        self.log(format!("{} leaves", host_name(i)));
    }

    /// Stop every packet between host `i` and the others, in both directions, as if its
    /// process hung: nothing is lost, all of it waits until [`World::release`].
    pub fn hang(&mut self, i: usize, others: &[usize]) {
        for &o in others {
            self.sim.hold(host_name(i), host_name(o));
        }
        self.log(format!("{} hangs", host_name(i)));
    }

    /// Deliver what [`World::hang`] held, and let traffic flow again.
    pub fn release(&mut self, i: usize, others: &[usize]) {
        for &o in others {
            self.sim.release(host_name(i), host_name(o));
        }
        self.log(format!("{} resumes", host_name(i)));
    }

    /// Frames host `i` has dropped.
    pub fn frames_dropped(&self, i: usize) -> u64 {
        self.node(i).map_or(0, |h| h.cluster.frames_dropped())
    }

    /// Restart a crashed host: a new process on the same address.
    pub fn restart(&mut self, i: usize) {
        self.sim.bounce(host_name(i));
        self.log(format!("{} restarted", host_name(i)));
    }

    /// Cut every link between the hosts of `a` and those of `b`.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.sim.partition(host_name(x), host_name(y));
            }
        }
        self.log(format!("partition {a:?} | {b:?}"));
    }

    /// Restore every link between the hosts of `a` and those of `b`.
    pub fn repair(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.sim.repair(host_name(x), host_name(y));
            }
        }
        self.log(format!("healed {a:?} | {b:?}"));
    }

    /// The handle of host `i`, if it is up.
    pub fn node(&self, i: usize) -> Option<Handle> {
        self.up.lock().expect("registry").get(&i).cloned()
    }

    /// Hosts that are up.
    pub fn up(&self) -> Vec<usize> {
        self.up.lock().expect("registry").keys().copied().collect()
    }

    /// Names of the members host `i` sees (other than itself).
    pub fn members_of(&self, i: usize) -> Vec<String> {
        self.node(i)
            .map(|h| {
                h.cluster
                    .members()
                    .into_iter()
                    .map(|m| m.node_name)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether each host of `hosts` sees exactly the others of `hosts` as members.
    pub fn sees_exactly(&self, hosts: &[usize]) -> bool {
        hosts.iter().all(|&i| {
            let mut want: Vec<String> = hosts
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| host_name(j))
                .collect();
            want.sort();
            let mut have = self.members_of(i);
            have.sort();
            have == want
        })
    }

    /// Advance the simulation by `d`.
    pub fn run_for(&mut self, d: Duration) -> anyhow::Result<()> {
        let end = self.now() + d;
        while self.now() < end {
            self.step()?;
        }
        Ok(())
    }

    /// Step until `done` holds or `limit` of simulated time passes; returns the time it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&World) -> bool,
    ) -> anyhow::Result<Option<Duration>> {
        let start = self.now();
        while self.now() - start < limit {
            if done(self) {
                return Ok(Some(self.now() - start));
            }
            self.step()?;
        }
        Ok(done(self).then(|| self.now() - start))
    }

    fn step(&mut self) -> anyhow::Result<()> {
        self.sim
            .step()
            .map_err(|e| anyhow::anyhow!("simulation failed: {e}"))?;
        Ok(())
    }

    /// Ask host `i` to broadcast number `id`.
    pub fn broadcast(&self, i: usize, id: u64) -> bool {
        self.node(i)
            .is_some_and(|h| h.commands.try_send(node::Command::Broadcast(id)).is_ok())
    }

    /// Ask host `i` to fetch every socket; the answer arrives as the simulation runs.
    pub fn fetch_sockets(
        &self,
        i: usize,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<usize, String>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = self.node(i)?;
        h.commands.try_send(node::Command::FetchSockets(tx)).ok()?;
        Some(rx)
    }

    /// Which hosts' clients received broadcast `id`.
    pub fn received_by(&self, id: u64) -> Vec<usize> {
        let up = self.up.lock().expect("registry");
        up.iter()
            .filter(|(_, h)| h.inbox.lock().expect("inbox").has(id))
            .map(|(&i, _)| i)
            .collect()
    }

    /// Duplicate deliveries over every client that is up.
    pub fn duplicates(&self) -> u64 {
        let up = self.up.lock().expect("registry");
        up.values()
            .map(|h| h.inbox.lock().expect("inbox").duplicates())
            .sum()
    }
}
