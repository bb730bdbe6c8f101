//! The gossip transport: chitchat's envelopes sealed on the way out and opened on the way in
//! (see [`super::seal`]), checked before chitchat parses them (see [`super::envelope`] and
//! [`super::guard`]), so that chitchat never parses a byte that did not open under the
//! cluster key and pass the checks.
//!
//! Envelopes become bytes and back through chitchat's own sockets ([`super::codec`]). A
//! pump task receives at the gossip port, opens, checks what opened, has the decoder parse
//! it, and queues the envelope; chitchat takes it only once it passes the checks against
//! its state at that moment. The pump, the gossip port, the sealer's session and what the
//! receiver remembers outlive one run of chitchat: a run that stops is started again on
//! them (see [`super::Membership`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chitchat::{
    Chitchat, ChitchatEnvelope, ChitchatId,
    transport::{RecvOutcome, SendOutcome, Socket, Transport},
};
use tokio::{net::UdpSocket, sync::mpsc, sync::watch, task::JoinHandle};

use super::{
    clock::Clock,
    codec::{Decoder, Encoder},
    envelope::{self, Checked},
    guard,
    seal::{GossipKeys, MAX_DATAGRAM, Opener, Recipient, Sealer, Session},
};
use crate::rate_log::RateLog;

/// Envelopes opened and waiting for chitchat, at most; more are dropped (gossip tolerates
/// loss).
const INBOX: usize = 64;
/// Bytes the envelopes waiting for chitchat may hold once parsed, at most.
const INBOX_BYTES: usize = 4 << 20;
/// A session heard at an address this recently is what gossip to that address is sealed
/// for; else the address itself is.
const SESSION_FRESH_MS: u64 = 5_000;
/// Addresses whose session is remembered, at most.
const MAX_PEERS: usize = 4_096;
/// At most one log line per this period about refused datagrams.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Gossip datagrams counted by the transport (and recorded as
/// [`crate::metrics::GOSSIP_DATAGRAMS`]).
pub(crate) struct GossipCounters {
    /// Datagrams sealed and sent.
    pub(crate) sealed: AtomicU64,
    /// Datagrams that opened.
    pub(crate) opened: AtomicU64,
    /// Datagrams refused (did not open, stale, replayed, failed a check) or dropped after
    /// opening.
    pub(crate) refused: AtomicU64,
    /// Times chitchat's task stopped and was started again (any transport).
    pub(crate) restarts: AtomicU64,
    metrics: crate::metrics::GossipMetrics,
}

impl GossipCounters {
    /// Counters of the node named `node`.
    pub(crate) fn new(node: &Arc<str>) -> Self {
        Self {
            sealed: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            metrics: crate::metrics::GossipMetrics::new(node),
        }
    }

    fn sealed(&self) {
        self.sealed.fetch_add(1, Ordering::Relaxed);
        self.metrics.sealed.increment(1);
    }

    fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.metrics.opened.increment(1);
    }

    fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.metrics.refused.increment(1);
    }

    pub(crate) fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts refusals and logs them at a bounded rate.
struct Refusals {
    counters: Arc<GossipCounters>,
    log: RateLog,
}

impl Refusals {
    fn refused(&self, from: SocketAddr, why: &dyn std::fmt::Display) {
        self.counters.refused();
        if let Some(held) = self.log.allow() {
            tracing::warn!(
                %from,
                held_back = held,
                "gossip datagram refused: {why} (at most one such line every 10 s; `held_back` \
                 counts those not logged since the last)"
            );
        }
    }
}

/// The session last heard at each address (from datagrams that opened).
#[derive(Default)]
struct Peers(HashMap<SocketAddr, (Session, u64)>);

impl Peers {
    fn heard(&mut self, from: SocketAddr, session: Session, now: u64) {
        if self.0.len() >= MAX_PEERS && !self.0.contains_key(&from) {
            self.0
                .retain(|_, (_, at)| now.saturating_sub(*at) <= SESSION_FRESH_MS);
            if self.0.len() >= MAX_PEERS {
                let oldest = self
                    .0
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(a, _)| *a);
                if let Some(oldest) = oldest {
                    self.0.remove(&oldest);
                }
            }
        }
        self.0.insert(from, (session, now));
    }

    /// Whom what goes to `to` is sealed for.
    fn recipient(&self, to: SocketAddr, now: u64) -> Recipient {
        match self.0.get(&to) {
            Some((session, at)) if now.saturating_sub(*at) <= SESSION_FRESH_MS => {
                Recipient::Session(*session)
            }
            _ => Recipient::Addr(to),
        }
    }
}

/// A chitchat transport that seals gossip under the cluster key: what
/// [`SealedTransport::start`] makes of it once this node's identity is known.
pub(crate) struct SealedTransport {
    keys: Arc<GossipKeys>,
    counters: Arc<GossipCounters>,
}

impl SealedTransport {
    pub(crate) fn new(keys: GossipKeys, counters: Arc<GossipCounters>) -> Self {
        Self {
            keys: Arc::new(keys),
            counters,
        }
    }

    /// The transport of the node `me` (its advertised gossip address included) in cluster
    /// `cluster_id`.
    pub(crate) fn start(self, cluster_id: String, me: ChitchatId) -> SealedGossip {
        SealedGossip {
            shared: Arc::new(Shared {
                sealer: Mutex::new(Sealer::new(self.keys.clone())),
                keys: self.keys,
                refusals: Arc::new(Refusals {
                    counters: self.counters.clone(),
                    log: RateLog::new(LOG_EVERY),
                }),
                counters: self.counters,
                unsent: RateLog::new(LOG_EVERY),
                clock: Arc::new(Clock::default()),
                peers: Arc::new(Mutex::new(Peers::default())),
                cluster_id,
                me,
                chitchat: watch::channel(None).0,
                running: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

/// The sealed transport of a node, across runs of chitchat.
pub(crate) struct SealedGossip {
    shared: Arc<Shared>,
}

impl SealedGossip {
    /// The chitchat instance now running on this transport (`None` while it starts
    /// again): envelopes are checked against its state, and wait while there is none.
    pub(crate) fn attach(&self, chitchat: Option<Arc<tokio::sync::Mutex<Chitchat>>>) {
        self.shared.chitchat.send_replace(chitchat);
    }

    /// Stop receiving and release the gossip port, once chitchat stopped for good.
    pub(crate) async fn close(&self) {
        self.shared.running.lock().await.take();
        self.shared.chitchat.send_replace(None);
    }
}

struct Shared {
    keys: Arc<GossipKeys>,
    counters: Arc<GossipCounters>,
    refusals: Arc<Refusals>,
    /// Datagrams that could not be sent, logged at a bounded rate.
    unsent: RateLog,
    sealer: Mutex<Sealer>,
    clock: Arc<Clock>,
    peers: Arc<Mutex<Peers>>,
    cluster_id: String,
    me: ChitchatId,
    chitchat: watch::Sender<Option<Arc<tokio::sync::Mutex<Chitchat>>>>,
    /// The gossip port and its pump, once opened.
    running: tokio::sync::Mutex<Option<Running>>,
}

/// The gossip port and the pump that receives on it.
struct Running {
    outer: Arc<UdpSocket>,
    /// Where the pump queues envelopes: the inbox of the socket chitchat now runs on.
    inbox: Arc<Mutex<mpsc::Sender<Item>>>,
    /// Bytes the envelopes in that inbox hold once parsed.
    inbox_bytes: Arc<AtomicUsize>,
    pump: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// An envelope waiting for chitchat.
struct Item {
    outcome: RecvOutcome,
    checked: Checked,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Transport for SealedGossip {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let s = &self.shared;
        let (tx, rx) = mpsc::channel(INBOX);
        let mut running = s.running.lock().await;
        let (outer, inbox_bytes) = match &*running {
            Some(r) => {
                // chitchat runs again on the same port: the pump now feeds this socket (what
                // waited for the run before is gone with its socket).
                *lock(&r.inbox) = tx;
                r.inbox_bytes.store(0, Ordering::Relaxed);
                (r.outer.clone(), r.inbox_bytes.clone())
            }
            None => {
                let inbox_bytes = Arc::new(AtomicUsize::new(0));
                let outer = Arc::new(UdpSocket::bind(listen_addr).await.map_err(|e| {
                    anyhow::anyhow!("failed to bind to {listen_addr}/UDP for gossip: {e}")
                })?);
                let mut addrs = vec![s.me.gossip_advertise_addr];
                if !listen_addr.ip().is_unspecified() {
                    addrs.push(outer.local_addr()?);
                }
                let opener = Opener::new(s.keys.clone(), lock(&s.sealer).session(), addrs);
                let inbox = Arc::new(Mutex::new(tx));
                let pump = tokio::spawn(pump(Pump {
                    outer: outer.clone(),
                    opener,
                    decoder: Decoder::open().await?,
                    inbox: inbox.clone(),
                    inbox_bytes: inbox_bytes.clone(),
                    peers: s.peers.clone(),
                    clock: s.clock.clone(),
                    refusals: s.refusals.clone(),
                    counters: s.counters.clone(),
                    cluster_id: s.cluster_id.clone(),
                }));
                *running = Some(Running {
                    outer: outer.clone(),
                    inbox,
                    inbox_bytes: inbox_bytes.clone(),
                    pump,
                });
                (outer, inbox_bytes)
            }
        };
        Ok(Box::new(SealedSocket {
            outer,
            encoder: Encoder::open().await?,
            shared: s.clone(),
            inbox: rx,
            inbox_bytes,
            chitchat: s.chitchat.subscribe(),
            waiting: None,
        }))
    }
}

struct SealedSocket {
    outer: Arc<UdpSocket>,
    encoder: Encoder,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Item>,
    inbox_bytes: Arc<AtomicUsize>,
    chitchat: watch::Receiver<Option<Arc<tokio::sync::Mutex<Chitchat>>>>,
    /// An envelope taken from the inbox, not yet checked against chitchat's state (kept
    /// when chitchat drops a `recv` at a gossip tick).
    waiting: Option<Item>,
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.outer.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let s = &self.shared;
        let bytes = self.encoder.encode(envelope).await?;
        let now = s.clock.now_ms();
        let recipient = lock(&s.peers).recipient(to, now);
        let datagrams = lock(&s.sealer).seal(bytes, &recipient, now);
        let mut sent = 0;
        for datagram in datagrams {
            match self.outer.send_to(&datagram, to).await {
                Ok(n) => {
                    sent += n;
                    s.counters.sealed();
                }
                // Not a broken transport: one address that cannot be reached (a peer may
                // gossip any address). Said here, at a bounded rate, rather than by
                // chitchat at every round.
                Err(e) => {
                    if let Some(held) = s.unsent.allow() {
                        tracing::warn!(
                            %to,
                            held_back = held,
                            "gossip datagram not sent: {e} (at most one such line every 10 s)"
                        );
                    }
                }
            }
        }
        Ok(SendOutcome {
            num_bytes_sent: sent,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        // Cancel-safe: chitchat drops this future at every gossip tick; an envelope taken
        // from the inbox waits in `self.waiting` until the next call.
        loop {
            if self.waiting.is_none() {
                let item = self
                    .inbox
                    .recv()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("the gossip receive task stopped"))?;
                self.waiting = Some(item);
            }
            let chitchat = self
                .chitchat
                .wait_for(Option::is_some)
                .await
                .map_err(|_| anyhow::anyhow!("the gossip transport stopped"))?
                .clone();
            let Some(chitchat) = chitchat else { continue };
            let verdict = {
                let c = chitchat.lock().await;
                let Some(item) = &self.waiting else { continue };
                guard::admit(c.node_states(), &self.shared.me, &item.checked)
            };
            let Some(item) = self.waiting.take() else {
                continue;
            };
            self.inbox_bytes
                .fetch_sub(item.checked.decoded, Ordering::Relaxed);
            match verdict {
                Ok(()) => return Ok(item.outcome),
                Err(why) => self.shared.refusals.refused(item.outcome.from_addr, &why),
            }
        }
    }
}

/// What the pump works with.
struct Pump {
    outer: Arc<UdpSocket>,
    opener: Opener,
    decoder: Decoder,
    inbox: Arc<Mutex<mpsc::Sender<Item>>>,
    inbox_bytes: Arc<AtomicUsize>,
    peers: Arc<Mutex<Peers>>,
    clock: Arc<Clock>,
    refusals: Arc<Refusals>,
    counters: Arc<GossipCounters>,
    cluster_id: String,
}

/// Receives at the gossip port, opens, checks, and has the decoder turn what passed into
/// envelopes for chitchat.
async fn pump(mut p: Pump) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (len, from) = match p.outer.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors and the like; never fatal for a UDP socket that is still open.
                tracing::debug!("gossip receive error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let now = p.clock.now_ms();
        let opened = match p.opener.open(&buf[..len], now) {
            Ok(o) => o,
            Err(why) => {
                p.refusals.refused(from, &why);
                continue;
            }
        };
        lock(&p.peers).heard(from, opened.session, now);
        let Some(bytes) = opened.envelope else {
            continue;
        };
        p.counters.opened();
        let checked = match envelope::check(&bytes, &p.cluster_id) {
            Ok(c) => c,
            Err(why) => {
                p.refusals.refused(from, &why);
                continue;
            }
        };
        if p.inbox_bytes.load(Ordering::Relaxed) + checked.decoded > INBOX_BYTES {
            p.refusals
                .refused(from, &"gossip is busy (its inbox is full)");
            continue;
        }
        let envelope = match p.decoder.decode(&bytes).await {
            Ok(e) => e,
            Err(why) => {
                p.refusals.refused(from, &why);
                continue;
            }
        };
        let decoded = checked.decoded;
        let item = Item {
            outcome: RecvOutcome {
                from_addr: from,
                envelope,
                num_bytes_received: len,
            },
            checked,
        };
        p.inbox_bytes.fetch_add(decoded, Ordering::Relaxed);
        if lock(&p.inbox).try_send(item).is_err() {
            p.inbox_bytes.fetch_sub(decoded, Ordering::Relaxed);
            p.refusals
                .refused(from, &"gossip is busy (its inbox is full)");
        }
    }
}
