//! An in-memory world for the node's state machine: several machines wired together by
//! links that keep each sender's order, under one clock the test moves, with the faults a
//! real network and real processes have (delay, loss, partition, crash, a restart under a
//! newer generation). What the shell would carry out is done here by hand: frames go on
//! links, a connection is made when a frame needs one, the flush and requests are answered,
//! and what requesters are told is recorded. Every race is then a plain, deterministic test
//! that runs in milliseconds (see `world_tests`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{Effect, Input, Machine, Scope, To};
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
/// How long a node takes to find a silent peer's connection dead.
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
}

/// One node of the world.
struct Host {
    machine: Machine,
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
}

/// The world.
pub(super) struct World {
    now: Instant,
    hosts: BTreeMap<PeerId, Host>,
    /// Events to come, by time and then by the order they were made in.
    events: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    /// The open connection from one node to another, by its id.
    conns: BTreeMap<(PeerId, PeerId), u64>,
    /// When the last frame on each connection arrives: a link keeps its sender's order.
    last: HashMap<u64, Instant>,
    /// One-way latency of the links from one node to another, when not [`LATENCY`].
    latency: HashMap<(PeerId, PeerId), Duration>,
    /// Node pairs that reach each other no more (both ways).
    cut: HashSet<(PeerId, PeerId)>,
    /// Frames to drop, by sender and receiver: the next `n` frames on that link.
    lose: HashMap<(PeerId, PeerId), usize>,
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
            last: HashMap::new(),
            latency: HashMap::new(),
            cut: HashSet::new(),
            lose: HashMap::new(),
            next_conn: 0,
            next_token: 0,
        };
        for name in names {
            world.boot(id(name, 1), false);
        }
        world.gossip();
        world.run_for(Duration::from_millis(50));
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
        let host = Host {
            machine: Machine::new(me.clone(), self.now, REQUEST_TIMEOUT / 2),
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
    pub(super) fn machine(&self, node: &PeerId) -> &Machine {
        &self.hosts[node].machine
    }

    /// `a` and `b` reach each other again.
    pub(super) fn heal(&mut self, a: &PeerId, b: &PeerId) {
        self.cut.remove(&(a.clone(), b.clone()));
        self.cut.remove(&(b.clone(), a.clone()));
    }

    /// `from` connects to `to` now, as a connection attempt already under way would.
    pub(super) fn connect_now(&mut self, from: &PeerId, to: &PeerId) -> bool {
        self.connect(from, to).is_some()
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
        for (from, to) in [(a, b), (b, a)] {
            let Some(conn) = self.conns.remove(&(from.clone(), to.clone())) else {
                continue;
            };
            for (at, peer) in [(from, to), (to, from)] {
                let event = Event::Closed {
                    at: at.clone(),
                    peer: peer.clone(),
                    conn: ConnId {
                        id: conn,
                        incoming: at == to,
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

    /// `from` broadcasts emit `n` to every member it knows (nothing waits for it).
    pub(super) fn emit(&mut self, from: &PeerId, n: u8) {
        let packet = WirePacket {
            ns: "/".into(),
            data: PacketData::Disconnect,
        };
        let frame = Frame::Request(request(n, RequestKind::Broadcast(packet)));
        for to in self.hosts[from].machine.targets(To::All) {
            self.send(from, &to, frame.clone());
        }
    }

    /// `from` asks every member it knows with request `n` of `kind`; this node's own part
    /// of a state change waits for its order (as the adapter does). The request's id.
    pub(super) fn ask(&mut self, from: &PeerId, n: u8, kind: RequestKind) -> Id {
        let changes = kind.changes_state();
        let req = request(n, kind);
        let id = req.id;
        let targets = self.hosts[from].machine.targets(To::All);
        let wait = REQUEST_TIMEOUT;
        let asked = Input::Asked {
            id,
            targets: targets.clone(),
            wait,
        };
        self.input(from, asked);
        for to in &targets {
            self.send(from, to, Frame::Request(req.clone()));
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
                if self.conns.get(&(from.clone(), to.clone())) != Some(&conn) {
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
                self.conns.retain(|_, c| *c != conn.id);
                self.input(&at, Input::Closed(peer, conn, reason));
            }
        }
    }

    /// Send `frame` from `from` to `to` on `from`'s connection to it, made first if there
    /// is none (both ends prove themselves, as the mesh's handshake does).
    fn send(&mut self, from: &PeerId, to: &PeerId, frame: Frame) {
        if !self.hosts.get(from).is_some_and(|h| h.up) {
            return;
        }
        let key = (from.clone(), to.clone());
        if self.cut.contains(&key) {
            return;
        }
        if let Some(n) = self.lose.get_mut(&key)
            && *n > 0
        {
            *n -= 1;
            return;
        }
        let conn = match self.conns.get(&key) {
            Some(conn) => *conn,
            None => match self.connect(from, to) {
                Some(conn) => conn,
                None => return,
            },
        };
        let latency = self.latency.get(&key).copied().unwrap_or(LATENCY);
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

    /// Connect `from` to `to`: each proves itself to the other at once. `None` when `to` is
    /// down or either refuses.
    fn connect(&mut self, from: &PeerId, to: &PeerId) -> Option<u64> {
        if !self.hosts.get(to).is_some_and(|h| h.up)
            || self.cut.contains(&(from.clone(), to.clone()))
        {
            return None;
        }
        self.next_conn += 1;
        let id = self.next_conn;
        let (from_addrs, to_addrs) = (self.hosts[from].addrs, self.hosts[to].addrs);
        self.conns.insert((from.clone(), to.clone()), id);
        let incoming = ConnId { id, incoming: true };
        let outgoing = ConnId {
            id,
            incoming: false,
        };
        let refused = self.input(to, Input::Proven(from.clone(), incoming, from_addrs))
            || self.input(from, Input::Proven(to.clone(), outgoing, to_addrs));
        if refused {
            self.conns.remove(&(from.clone(), to.clone()));
            return None;
        }
        Some(id)
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
        let seen = &mut self.hosts.get_mut(node).expect("a host").seen;
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
            Effect::SendMeta(to, meta) => {
                for peer in to {
                    self.send(node, &peer, Frame::Meta(meta.clone()));
                }
            }
            Effect::Flush { id, to } => {
                for peer in to {
                    self.send(node, &peer, Frame::Flush(id));
                }
            }
            Effect::AnswerFlush(to, id) => {
                let body = ResponseBody::Done;
                self.send(node, &to, Frame::Response(Response { id, body }));
            }
            Effect::Connect { peer, .. } => {
                if !self.conns.contains_key(&(node.clone(), peer.clone())) {
                    self.connect(node, &peer);
                }
            }
            Effect::DropLink(peer) => {
                self.conns.remove(&(node.clone(), peer));
            }
            Effect::Leave => self.leave(node),
            Effect::Service(..) | Effect::Refused(_) => {}
        }
    }

    /// `node` leaves: it says so on each of its connections, behind what they carry, then
    /// closes every connection; each peer sees them close as leaving.
    fn leave(&mut self, node: &PeerId) {
        let conns: Vec<((PeerId, PeerId), u64)> = (self.conns.iter())
            .filter(|((from, to), _)| from == node || to == node)
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        for ((from, to), conn) in conns {
            let (peer, incoming) = if from == *node {
                self.send(node, &to, Frame::Leave);
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
