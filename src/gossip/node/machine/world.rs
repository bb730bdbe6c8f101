//! An in-memory world for the node's state machine: several machines wired together by
//! links that keep each sender's order, under one clock the test moves, with the faults a
//! real network and real processes have (delay, loss, partition, crash, a restart under a
//! newer generation). What the shell would carry out is done here by hand: frames go to
//! the send queue the machine names, a connection attempt the machine starts takes a
//! handshake (a round trip) and comes back made or failed, queued frames go out once it is
//! made, the flush and requests are answered, and what requesters are told is recorded.
//! Every race is then a plain, deterministic test that runs in milliseconds (see
//! `world_tests`).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{Effect, Input, Machine, MakeQueue, Scope, SendQueue, To};
use crate::{
    gossip::{
        membership::GossipNodes,
        mesh::{self, ConnId, PeerAddrs},
        peer::PeerId,
        wire::{
            Frame, Id, Opts, PacketData, Request, RequestKind, Response, ResponseBody, WirePacket,
        },
    },
    ledger::Progress,
};

/// How long a request waits, and twice how long a flush round does.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a link takes by default, one way.
pub(super) const LATENCY: Duration = Duration::from_millis(1);
/// How long a node takes to find a silent peer's connection dead, and to give up
/// connecting to a peer that does not answer.
pub(super) const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most steps one [`World::run_for`] takes: every run ends.
const MAX_STEPS: usize = 100_000;

/// What one node did, as its namespace and requesters saw it.
#[derive(Default)]
pub(super) struct Seen {
    /// The requests its namespace was handed, in order: their first id byte, and the kind.
    pub(super) handed: Vec<(u8, &'static str)>,
    /// What the requesters of its requests were told, by request.
    pub(super) told: HashMap<Id, Vec<String>>,
    /// Its requests that ended.
    pub(super) ended: HashSet<Id>,
    /// Its own parts of state changes resumed.
    pub(super) resumed: Vec<u64>,
    /// Members that joined and left, in order (`+a#1`, `-a#1`).
    pub(super) members: Vec<String>,
    /// Connections it refused, and why.
    pub(super) refused: Vec<String>,
    /// Whether it became ready.
    pub(super) ready: bool,
    /// What it did with its own links, in order, since the world was made: `connect b#1`,
    /// `abort b#1`, `close b#1 (Late)`.
    pub(super) links: Vec<String>,
}

/// A send queue of the world: frames wait in it until its connection is made.
#[derive(Clone, Default)]
pub(super) struct Queue(Arc<Mutex<Waiting>>);

#[derive(Default)]
struct Waiting {
    frames: VecDeque<Frame>,
    /// Its connection, once made.
    conn: Option<u64>,
    closed: bool,
}

impl Queue {
    fn with<T>(&self, f: impl FnOnce(&mut Waiting) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn close(&self) {
        self.with(|w| {
            w.closed = true;
            w.frames.clear();
        });
    }
}

impl SendQueue for Queue {
    fn is_closed(&self) -> bool {
        self.with(|w| w.closed)
    }
}

/// The queues a machine had made for its attempts, by attempt, until started.
type Made = Arc<Mutex<HashMap<u64, Queue>>>;

/// One node of the world.
struct Host {
    machine: Machine<Queue>,
    made: Made,
    addrs: PeerAddrs,
    /// Whether its process runs.
    up: bool,
    seen: Seen,
}

/// Something that happens at a time.
enum Event {
    /// A frame arrives at `to` from `from` on connection `conn` (`from`'s outgoing one).
    Frame {
        from: PeerId,
        to: PeerId,
        conn: u64,
        frame: Box<Frame>,
    },
    /// A connection closes at `at`, for this reason.
    Closed {
        at: PeerId,
        peer: PeerId,
        conn: ConnId,
        reason: mesh::Closed,
    },
    /// The handshake of `from`'s connection attempt `attempt` to `to` ends.
    Handshake {
        from: PeerId,
        to: PeerId,
        attempt: u64,
    },
    /// `from`'s connection attempt `attempt` to `to` gives up.
    GiveUp {
        from: PeerId,
        to: PeerId,
        attempt: u64,
    },
}

/// The world.
pub(super) struct World {
    now: Instant,
    hosts: BTreeMap<PeerId, Host>,
    /// Events to come, by time and then by the order they were made in.
    events: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    /// The open connections, by id: who made it, to whom.
    conns: BTreeMap<u64, (PeerId, PeerId)>,
    /// The send queue each open connection writes.
    queues: HashMap<u64, Queue>,
    /// Connection attempts under way, by node and attempt, with their queue.
    attempts: HashMap<(PeerId, u64), Queue>,
    /// When the last frame on each connection arrives: a link keeps its sender's order.
    last: HashMap<u64, Instant>,
    /// One-way latency of the links from one node to another, when not [`LATENCY`].
    latency: HashMap<(PeerId, PeerId), Duration>,
    /// Node pairs that reach each other no more (both ways).
    cut: HashSet<(PeerId, PeerId)>,
    /// Frames to drop, by sender and receiver: the next `n` frames on that link.
    lose: HashMap<(PeerId, PeerId), usize>,
    /// New connections refused, by maker and peer (those open live on).
    refuse: HashSet<(PeerId, PeerId)>,
    /// Nodes whose aborts come too late to stop an attempt (its task already finished):
    /// the attempt ends as it would have.
    late_aborts: HashSet<PeerId>,
    next_conn: u64,
    next_token: u64,
}

impl World {
    /// A world of nodes named `names`, generation 1, each started without seeds and every
    /// pair connected (gossip showed them to each other).
    pub(super) fn new(names: &[&str]) -> Self {
        let mut world = Self {
            now: Instant::now(),
            hosts: BTreeMap::new(),
            events: BTreeMap::new(),
            seq: 0,
            conns: BTreeMap::new(),
            queues: HashMap::new(),
            attempts: HashMap::new(),
            last: HashMap::new(),
            latency: HashMap::new(),
            cut: HashSet::new(),
            lose: HashMap::new(),
            refuse: HashSet::new(),
            late_aborts: HashSet::new(),
            next_conn: 0,
            next_token: 0,
        };
        for name in names {
            world.boot(id(name, 1), false);
        }
        world.gossip();
        world.run_for(Duration::from_millis(50));
        for host in world.hosts.values_mut() {
            host.seen.links.clear();
        }
        world
    }

    /// Start node `me`; with `seeds`, it joins through gossip (see [`World::gossip`]).
    pub(super) fn boot(&mut self, me: PeerId, seeds: bool) {
        let port = 1000 + 2 * self.hosts.len() as u16;
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let addrs = PeerAddrs {
            mesh: addr(port),
            gossip: addr(port + 1),
        };
        let made = Made::default();
        let make: MakeQueue<Queue> = {
            let made = made.clone();
            Box::new(move |_, attempt| {
                let queue = Queue::default();
                let mut made = made.lock().unwrap_or_else(|p| p.into_inner());
                made.insert(attempt, queue.clone());
                queue
            })
        };
        let host = Host {
            machine: Machine::new(me.clone(), self.now, REQUEST_TIMEOUT / 2, make),
            made,
            addrs,
            up: true,
            seen: Seen::default(),
        };
        self.hosts.insert(me.clone(), host);
        let timeout = REQUEST_TIMEOUT;
        self.input(&me, Input::Start { seeds, timeout });
    }

    /// What `node` saw.
    pub(super) fn seen(&self, node: &PeerId) -> &Seen {
        &self.hosts[node].seen
    }

    /// The machine of `node`.
    pub(super) fn machine(&self, node: &PeerId) -> &Machine<Queue> {
        &self.hosts[node].machine
    }

    /// `a` and `b` reach each other again.
    pub(super) fn heal(&mut self, a: &PeerId, b: &PeerId) {
        self.cut.remove(&(a.clone(), b.clone()));
        self.cut.remove(&(b.clone(), a.clone()));
    }

    /// `from` connects to `to` now, as a connection attempt already under way would (both
    /// ends prove themselves at once; no link slot of `from` holds it).
    pub(super) fn connect_now(&mut self, from: &PeerId, to: &PeerId) -> bool {
        if !self.reaches(from, to) {
            return false;
        }
        let Some(id) = self.handshake(from, to) else {
            return false;
        };
        let outgoing = ConnId {
            id,
            incoming: false,
        };
        let addrs = self.hosts[to].addrs;
        if self.input(from, Input::Proven(to.clone(), outgoing, addrs)) {
            self.conns.remove(&id);
            return false;
        }
        true
    }

    /// The connection `from` made to `to`, if one is open.
    pub(super) fn conn(&self, from: &PeerId, to: &PeerId) -> Option<u64> {
        (self.conns.iter())
            .find(|(_, (f, t))| f == from && t == to)
            .map(|(id, _)| *id)
    }

    /// Every connection `from` made to `to` closes now, as if `from`'s shell closed it (each
    /// end hears of it: `from` at once, `to` a link's latency later).
    pub(super) fn close(&mut self, from: &PeerId, to: &PeerId) {
        while let Some(conn) = self.conn(from, to) {
            self.close_conn(conn, mesh::Closed::Unused);
        }
    }

    /// New connections from `from` to `to` are refused (`refuse`), or no longer; those
    /// open live on.
    pub(super) fn refuse(&mut self, from: &PeerId, to: &PeerId, refuse: bool) {
        let key = (from.clone(), to.clone());
        if refuse {
            self.refuse.insert(key);
        } else {
            self.refuse.remove(&key);
        }
    }

    /// The connection attempts `node` aborts finish anyway (its aborts come too late).
    pub(super) fn late_aborts(&mut self, node: &PeerId) {
        self.late_aborts.insert(node.clone());
    }

    /// Links from `from` to `to` take `latency` one way from now on.
    pub(super) fn delay(&mut self, from: &PeerId, to: &PeerId, latency: Duration) {
        self.latency.insert((from.clone(), to.clone()), latency);
    }

    /// The next `n` frames from `from` to `to` are lost.
    pub(super) fn lose(&mut self, from: &PeerId, to: &PeerId, n: usize) {
        self.lose.insert((from.clone(), to.clone()), n);
    }

    /// `a` and `b` reach each other no more: what they send each other is lost, and each
    /// finds the other's connections dead after [`PEER_TIMEOUT`].
    pub(super) fn partition(&mut self, a: &PeerId, b: &PeerId) {
        self.cut.insert((a.clone(), b.clone()));
        self.cut.insert((b.clone(), a.clone()));
        self.lost_after(a, b, PEER_TIMEOUT, "timed out");
    }

    /// `node`'s process dies: it sends and takes nothing more; the others find its
    /// connections dead after `detect`.
    pub(super) fn crash(&mut self, node: &PeerId, detect: Duration) {
        if let Some(host) = self.hosts.get_mut(node) {
            host.up = false;
        }
        let others: Vec<PeerId> = self.hosts.keys().filter(|p| *p != node).cloned().collect();
        for other in others {
            self.lost_after(&other, node, detect, "connection reset");
        }
    }

    /// Every connection between `a` and `b` ends, lost: each side finds it after `after`
    /// (a node that crashed finds nothing).
    fn lost_after(&mut self, a: &PeerId, b: &PeerId, after: Duration, why: &str) {
        let between: Vec<(u64, PeerId, PeerId)> = (self.conns.iter())
            .filter(|(_, (f, t))| (f == a && t == b) || (f == b && t == a))
            .map(|(id, (f, t))| (*id, f.clone(), t.clone()))
            .collect();
        for (id, from, to) in between {
            self.conns.remove(&id);
            for (at, peer) in [(&from, &to), (&to, &from)] {
                let event = Event::Closed {
                    at: at.clone(),
                    peer: peer.clone(),
                    conn: ConnId {
                        id,
                        incoming: *at == to,
                    },
                    reason: mesh::Closed::Lost(why.into()),
                };
                self.schedule(self.now + after, event);
            }
        }
    }

    /// What gossip shows every node now: every node up and not left, but itself.
    pub(super) fn gossip(&mut self) {
        let live: HashMap<PeerId, SocketAddr> = (self.hosts.iter())
            .filter(|(_, h)| h.up && !h.machine.has_left())
            .map(|(p, h)| (p.clone(), h.addrs.mesh))
            .collect();
        let nodes: Vec<PeerId> = self.hosts.keys().cloned().collect();
        for node in nodes {
            let mut reachable = live.clone();
            reachable.remove(&node);
            let listed = self.hosts.keys().cloned().collect();
            self.input(&node, Input::Gossip(GossipNodes { reachable, listed }));
            self.input(&node, Input::Known(live.keys().cloned().collect()));
        }
    }

    /// What gossip shows `node` now: `shown`, at their addresses.
    pub(super) fn gossip_to(&mut self, node: &PeerId, shown: &[&PeerId]) {
        let reachable = (shown.iter())
            .map(|p| ((*p).clone(), self.hosts[*p].addrs.mesh))
            .collect();
        let listed = shown.iter().map(|p| (*p).clone()).collect();
        self.input(node, Input::Gossip(GossipNodes { reachable, listed }));
    }

    /// `from` broadcasts emit `n` to every member it knows (nothing waits for it).
    pub(super) fn emit(&mut self, from: &PeerId, n: u8) {
        let packet = WirePacket {
            ns: "/".into(),
            data: PacketData::Disconnect,
        };
        let frame = Frame::Request(request(n, RequestKind::Broadcast(packet)));
        self.send_to(from, To::All, frame);
    }

    /// `from` asks every member it knows with request `n` of `kind`; this node's own part
    /// of a state change waits for its order (as the adapter does). The request's id.
    pub(super) fn ask(&mut self, from: &PeerId, n: u8, kind: RequestKind) -> Id {
        let changes = kind.changes_state();
        let req = request(n, kind);
        let id = req.id;
        let Some(host) = self.hosts.get_mut(from).filter(|h| h.up) else {
            return id;
        };
        let mut routes = Vec::new();
        let effects = host.machine.routes(To::All, &mut routes);
        let targets = routes.iter().map(|(p, _)| p.clone()).collect();
        let wait = REQUEST_TIMEOUT;
        self.input(from, Input::Asked { id, targets, wait });
        for effect in effects {
            self.carry_out(from, effect);
        }
        let frame = Frame::Request(req);
        for (to, route) in routes {
            match route {
                Ok(queue) => self.push(from, &to, &queue, frame.clone()),
                Err(_) => {
                    self.input(from, Input::NotSent(id, to));
                }
            }
        }
        if changes {
            let token = self.next_token;
            self.next_token += 1;
            self.input(
                from,
                Input::Ordered {
                    token,
                    sockets: true,
                },
            );
        }
        id
    }

    /// `node` leaves the cluster.
    pub(super) fn shut_down(&mut self, node: &PeerId) {
        self.input(node, Input::Shutdown);
    }

    /// Move time on by `span`, delivering what arrives and waking each machine at its
    /// deadlines. Bounded by [`MAX_STEPS`].
    pub(super) fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        for _ in 0..MAX_STEPS {
            let frame_at = self.events.keys().next().map(|(t, _)| *t);
            let tick_at = (self.hosts.iter_mut())
                .filter(|(_, h)| h.up)
                .filter_map(|(p, h)| h.machine.next_timeout().map(|t| (t, p.clone())))
                .min();
            let next = match (frame_at, &tick_at) {
                (Some(f), Some((t, _))) => f.min(*t),
                (Some(f), None) => f,
                (None, Some((t, _))) => *t,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if frame_at == Some(next) {
                let (_, event) = self.events.pop_first().expect("an event is due");
                self.happen(event);
            } else if let Some((_, node)) = tick_at {
                self.input(&node, Input::Tick);
            }
        }
        self.now = self.now.max(end);
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    fn happen(&mut self, event: Event) {
        match event {
            Event::Frame {
                from,
                to,
                conn,
                frame,
            } => {
                if !self.conns.contains_key(&conn) {
                    return; // Its connection closed: lost with it.
                }
                self.input(&to, Input::Frame(from, *frame, Scope::Sockets));
            }
            Event::Closed {
                at,
                peer,
                conn,
                reason,
            } => {
                self.conns.remove(&conn.id);
                if let Some(queue) = self.queues.remove(&conn.id) {
                    queue.close();
                }
                self.input(&at, Input::Closed(peer, conn, reason));
            }
            Event::Handshake { from, to, attempt } => self.handshake_ends(&from, &to, attempt),
            Event::GiveUp { from, to, attempt } => {
                if let Some(queue) = self.attempts.remove(&(from.clone(), attempt)) {
                    queue.close();
                    let reason = "timed out".into();
                    let failed = Input::ConnectFailed {
                        peer: to,
                        attempt,
                        reason,
                    };
                    self.input(&from, failed);
                }
            }
        }
    }

    /// Whether `from` and `to` are both up and reach each other.
    fn reaches(&self, from: &PeerId, to: &PeerId) -> bool {
        self.hosts.get(from).is_some_and(|h| h.up)
            && self.hosts.get(to).is_some_and(|h| h.up)
            && !self.cut.contains(&(from.clone(), to.clone()))
    }

    /// One way from `from` to `to`.
    fn latency(&self, from: &PeerId, to: &PeerId) -> Duration {
        let key = (from.clone(), to.clone());
        self.latency.get(&key).copied().unwrap_or(LATENCY)
    }

    /// The handshake of attempt `attempt` from `from` to `to` ends: if `to` answers, it
    /// proves itself and `from` hears the connection was made (what waited in its queue
    /// goes out, unless the machine closes it); if not, `from` gives up at the peer timeout.
    fn handshake_ends(&mut self, from: &PeerId, to: &PeerId, attempt: u64) {
        let key = (from.clone(), attempt);
        if !self.attempts.contains_key(&key) {
            return; // Aborted.
        }
        if !self.reaches(from, to) {
            let at = self.now + PEER_TIMEOUT.saturating_sub(self.latency(from, to) * 2);
            let (from, to) = (from.clone(), to.clone());
            self.schedule(at, Event::GiveUp { from, to, attempt });
            return;
        }
        let Some(queue) = self.attempts.remove(&key) else {
            return;
        };
        let refused = self.refuse.contains(&(from.clone(), to.clone()));
        let made = if refused {
            None
        } else {
            self.handshake(from, to)
        };
        let Some(id) = made else {
            queue.close();
            let reason = "refused by the peer".into();
            let failed = Input::ConnectFailed {
                peer: to.clone(),
                attempt,
                reason,
            };
            self.input(from, failed);
            return;
        };
        self.queues.insert(id, queue.clone());
        let connected = Input::Connected {
            peer: to.clone(),
            attempt,
            conn: ConnId {
                id,
                incoming: false,
            },
            addrs: self.hosts[to].addrs,
        };
        self.input(from, connected);
        if !self.conns.contains_key(&id) {
            return; // Closed by the machine, or refused.
        }
        let waiting: Vec<Frame> = queue.with(|w| {
            w.conn = Some(id);
            w.frames.drain(..).collect()
        });
        for frame in waiting {
            self.transmit(from, to, id, frame);
        }
    }

    /// A connection from `from` to `to`, proven to `to`: its id. `None` when `to` refuses.
    fn handshake(&mut self, from: &PeerId, to: &PeerId) -> Option<u64> {
        self.next_conn += 1;
        let id = self.next_conn;
        let addrs = self.hosts[from].addrs;
        self.conns.insert(id, (from.clone(), to.clone()));
        let incoming = ConnId { id, incoming: true };
        if self.input(to, Input::Proven(from.clone(), incoming, addrs)) {
            self.conns.remove(&id);
            return None;
        }
        Some(id)
    }

    /// Send `frame` from `from` to `to`, on the send queue `from`'s machine names.
    fn send(&mut self, from: &PeerId, to: &PeerId, frame: Frame) {
        self.send_to(from, To::Peers(std::slice::from_ref(to)), frame);
    }

    /// Send `frame` from `from` to the peers `to` names, on the send queues its machine
    /// names (connections started as it says).
    fn send_to(&mut self, from: &PeerId, to: To<'_>, frame: Frame) {
        let Some(host) = self.hosts.get_mut(from).filter(|h| h.up) else {
            return;
        };
        let mut routes = Vec::new();
        let effects = host.machine.routes(to, &mut routes);
        for effect in effects {
            self.carry_out(from, effect);
        }
        for (to, route) in routes {
            if let Ok(queue) = route {
                self.push(from, &to, &queue, frame.clone());
            }
        }
    }

    /// Put `frame` in `queue`: on its connection at once if it is made, else it waits.
    fn push(&mut self, from: &PeerId, to: &PeerId, queue: &Queue, frame: Frame) {
        let conn = queue.with(|w| match w.conn {
            _ if w.closed => None,
            Some(conn) => Some(conn),
            None => {
                w.frames.push_back(frame.clone());
                None
            }
        });
        if let Some(conn) = conn {
            self.transmit(from, to, conn, frame);
        }
    }

    /// `frame` goes on connection `conn` from `from` to `to`, behind what it carries (unless
    /// the network loses it).
    fn transmit(&mut self, from: &PeerId, to: &PeerId, conn: u64, frame: Frame) {
        let key = (from.clone(), to.clone());
        if !self.hosts.get(from).is_some_and(|h| h.up) || self.cut.contains(&key) {
            return;
        }
        if let Some(n) = self.lose.get_mut(&key)
            && *n > 0
        {
            *n -= 1;
            return;
        }
        let latency = self.latency(from, to);
        let at = (self.now + latency).max(self.last.get(&conn).copied().unwrap_or(self.now));
        self.last.insert(conn, at);
        let event = Event::Frame {
            from: from.clone(),
            to: to.clone(),
            conn,
            frame: Box::new(frame),
        };
        self.schedule(at, event);
    }

    /// Connection `conn` closes, closed by the node that made it: it hears so at once, its
    /// peer once what the connection carries arrived.
    fn close_conn(&mut self, conn: u64, reason: mesh::Closed) {
        let Some((from, to)) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(queue) = self.queues.remove(&conn) {
            queue.close();
        }
        let arrives = (self.now + self.latency(&from, &to))
            .max(self.last.get(&conn).copied().unwrap_or(self.now));
        let at_peer = Event::Closed {
            at: to.clone(),
            peer: from.clone(),
            conn: ConnId {
                id: conn,
                incoming: true,
            },
            reason,
        };
        self.schedule(arrives, at_peer);
        let here = Event::Closed {
            at: from,
            peer: to,
            conn: ConnId {
                id: conn,
                incoming: false,
            },
            reason: mesh::Closed::Locally,
        };
        self.schedule(self.now, here);
    }

    /// Hand `input` to `node`'s machine now and carry out its effects; whether it refused
    /// a connection.
    fn input(&mut self, node: &PeerId, input: Input) -> bool {
        let Some(host) = self.hosts.get_mut(node).filter(|h| h.up) else {
            return false;
        };
        let effects = host.machine.handle(input, self.now);
        let mut refused = false;
        for effect in effects {
            refused |= matches!(effect, Effect::Refuse(_));
            self.carry_out(node, effect);
        }
        refused
    }

    /// What the shell would do with `effect` of `node`.
    fn carry_out(&mut self, node: &PeerId, effect: Effect) {
        let host = self.hosts.get_mut(node).expect("a host");
        let seen = &mut host.seen;
        match effect {
            Effect::MemberJoined(m) => seen.members.push(format!("+{}", m.peer_id())),
            Effect::MemberLeft { member, .. } => {
                seen.members.push(format!("-{}", member.peer_id()))
            }
            Effect::Refuse(why) => seen.refused.push(why),
            Effect::Ready => seen.ready = true,
            Effect::Resume(token) => seen.resumed.push(token),
            Effect::Tell(id, Progress::Ended) => {
                seen.ended.insert(id);
            }
            Effect::Tell(id, progress) => seen.told.entry(id).or_default().push(match progress {
                Progress::Kept(p, _) => format!("kept {p}"),
                Progress::Answered(p) => format!("answered {p}"),
                Progress::Gone(p) => format!("gone {p}"),
                Progress::TimedOut(ps) => format!("timed out {ps:?}"),
                Progress::Ended => unreachable!("matched above"),
            }),
            Effect::Request(from, req) | Effect::Apply(from, req) => {
                seen.handed.push((req.id.0[0], req.kind.name()));
                if req.kind.expects_response() {
                    let body = match req.kind {
                        RequestKind::AllRooms => ResponseBody::Rooms(Vec::new()),
                        RequestKind::FetchSockets => ResponseBody::Sockets(Vec::new()),
                        RequestKind::BroadcastWithAck(_) => ResponseBody::AckCount(0),
                        _ => ResponseBody::Done,
                    };
                    self.send(node, &from, Frame::Response(Response { id: req.id, body }));
                }
            }
            Effect::SendMeta(to, meta) => self.send_to(node, To::Peers(&to), Frame::Meta(meta)),
            Effect::Flush { id, to } => self.send_to(node, To::Peers(&to), Frame::Flush(id)),
            Effect::AnswerFlush(to, id) => {
                let body = ResponseBody::Done;
                self.send(node, &to, Frame::Response(Response { id, body }));
            }
            Effect::Connect { peer, attempt, .. } => {
                seen.links.push(format!("connect {peer}"));
                let made = host
                    .made
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&attempt);
                let queue = made.expect("a queue made for the attempt");
                let handshake = self.latency(node, &peer) + self.latency(&peer, node);
                self.attempts.insert((node.clone(), attempt), queue);
                let from = node.clone();
                let event = Event::Handshake {
                    from,
                    to: peer,
                    attempt,
                };
                self.schedule(self.now + handshake, event);
            }
            Effect::Abort { peer, attempt } => {
                seen.links.push(format!("abort {peer}"));
                if !self.late_aborts.contains(node)
                    && let Some(queue) = self.attempts.remove(&(node.clone(), attempt))
                {
                    queue.close();
                }
            }
            Effect::CloseLink { peer, conn, why } => {
                seen.links.push(format!("close {peer} ({why:?})"));
                self.close_conn(conn.id, mesh::Closed::Unused);
            }
            Effect::Leave => self.leave(node),
            Effect::Service(..) | Effect::Refused(_) => {}
        }
    }

    /// `node` leaves: it says so on each of its connections, behind what they carry, then
    /// closes every connection; each peer sees them close as leaving.
    fn leave(&mut self, node: &PeerId) {
        let conns: Vec<(u64, PeerId, PeerId)> = (self.conns.iter())
            .filter(|(_, (from, to))| from == node || to == node)
            .map(|(id, (from, to))| (*id, from.clone(), to.clone()))
            .collect();
        for (conn, from, to) in conns {
            let (peer, incoming) = if from == *node {
                self.transmit(node, &to, conn, Frame::Leave);
                (to, true)
            } else {
                (from, false)
            };
            let at = self
                .last
                .get(&conn)
                .copied()
                .unwrap_or(self.now)
                .max(self.now);
            let event = Event::Closed {
                at: peer,
                peer: node.clone(),
                conn: ConnId { id: conn, incoming },
                reason: mesh::Closed::Leaving,
            };
            self.schedule(at, event);
        }
    }
}

/// Node `name` of generation `generation`.
pub(super) fn id(name: &str, generation: u64) -> PeerId {
    PeerId {
        name: name.into(),
        generation,
    }
}

/// Request `n` of `kind` (its id is `n` repeated).
pub(super) fn request(n: u8, kind: RequestKind) -> Request {
    Request {
        ns: "/".into(),
        id: Id([n; 16]),
        origin: Id([0; 16]),
        kind,
        opts: Opts::default(),
        ack_timeout_ms: None,
    }
}
