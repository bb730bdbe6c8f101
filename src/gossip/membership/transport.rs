//! The gossip transport: chitchat's envelopes sealed on the way out and opened on the way in
//! (see [`super::seal`]), so that chitchat never parses a byte that did not open under the
//! cluster key.
//!
//! chitchat keeps its envelope encoding to itself, but its public UDP socket encodes on
//! `send` and decodes on `recv`. So each node runs two of them on 127.0.0.1 as codecs: the
//! encoder sends each outgoing envelope to a loopback tap of ours, which seals it and sends
//! it from the gossip port; a pump task opens what arrives at the gossip port and hands the
//! plain bytes to the decoder, whose envelope goes to chitchat with the real sender's
//! address.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as CodecSocket};
use tokio::{net::UdpSocket, sync::mpsc, task::JoinHandle};

use super::seal::{GossipKeys, MAX_DATAGRAM, MAX_ENVELOPE, Opener};

/// Envelopes opened and waiting for chitchat; more are dropped (gossip tolerates loss).
const INBOX: usize = 256;
/// How long the loopback codecs may take (they answer at once unless the bytes are not an
/// envelope, which the decoder drops in silence).
const CODEC_WAIT: Duration = Duration::from_secs(1);
/// At most one log line per this period about refused datagrams.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Gossip datagrams counted by the transport (and recorded as
/// [`crate::metrics::GOSSIP_DATAGRAMS`]).
pub(crate) struct GossipCounters {
    /// Datagrams sealed and sent.
    pub(crate) sealed: AtomicU64,
    /// Datagrams that opened.
    pub(crate) opened: AtomicU64,
    /// Datagrams refused (did not open, stale, replayed) or dropped after opening.
    pub(crate) refused: AtomicU64,
    metrics: crate::metrics::GossipMetrics,
}

impl GossipCounters {
    /// Counters of the node named `node`.
    pub(crate) fn new(node: &Arc<str>) -> Self {
        Self {
            sealed: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            refused: AtomicU64::new(0),
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
}

/// A chitchat transport that seals gossip under the cluster key.
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
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let outer =
            Arc::new(UdpSocket::bind(listen_addr).await.map_err(|e| {
                anyhow::anyhow!("failed to bind to {listen_addr}/UDP for gossip: {e}")
            })?);
        let encoder = CodecSocket::open(loopback()).await?;
        let tap = UdpSocket::bind(loopback()).await?;
        // Only the encoder's datagrams reach the tap.
        tap.connect(encoder.local_addr()?).await?;
        let decoder = CodecSocket::open(loopback()).await?;
        let inject = UdpSocket::bind(loopback()).await?;
        inject.connect(decoder.local_addr()?).await?;
        let (tx, rx) = mpsc::channel(INBOX);
        let pump = tokio::spawn(pump(
            outer.clone(),
            Opener::new(self.keys.clone()),
            decoder,
            inject,
            tx,
            self.counters.clone(),
        ));
        Ok(Box::new(SealedSocket {
            outer,
            encoder,
            tap,
            keys: self.keys.clone(),
            inbox: rx,
            pump,
            counters: self.counters.clone(),
            buf: vec![0; MAX_ENVELOPE + 1].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    outer: Arc<UdpSocket>,
    encoder: CodecSocket,
    tap: UdpSocket,
    keys: Arc<GossipKeys>,
    inbox: mpsc::Receiver<RecvOutcome>,
    pump: JoinHandle<()>,
    counters: Arc<GossipCounters>,
    buf: Box<[u8]>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.pump.abort();
    }
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
        // Bytes an earlier, interrupted send left at the tap are not this envelope's.
        while self.tap.try_recv(&mut self.buf).is_ok() {}
        let tap_addr = self.tap.local_addr()?;
        let SendOutcome { num_bytes_sent } = self.encoder.send(tap_addr, envelope).await?;
        let len = tokio::time::timeout(CODEC_WAIT, self.tap.recv(&mut self.buf))
            .await
            .map_err(|_| anyhow::anyhow!("gossip encoder did not answer"))??;
        if len != num_bytes_sent {
            anyhow::bail!(
                "gossip encoder answered {len} bytes for an envelope of {num_bytes_sent}"
            );
        }
        let mut sent = 0;
        for datagram in self.keys.seal(&self.buf[..len], now_ms()) {
            sent += self.outer.send_to(&datagram, to).await?;
            self.counters.sealed();
        }
        Ok(SendOutcome {
            num_bytes_sent: sent,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        // Cancel-safe: chitchat drops this future at every gossip tick.
        self.inbox
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the gossip receive task stopped"))
    }
}

/// Counts refusals and logs them at most once per [`LOG_EVERY`].
struct RefusalLog {
    counters: Arc<GossipCounters>,
    last: Option<tokio::time::Instant>,
    since: u64,
}

impl RefusalLog {
    fn refused(&mut self, from: SocketAddr, why: &dyn std::fmt::Display) {
        self.counters.refused();
        self.since += 1;
        let now = tokio::time::Instant::now();
        if self.last.is_none_or(|l| now.duration_since(l) >= LOG_EVERY) {
            tracing::warn!(
                %from,
                refused = self.since,
                "gossip datagram refused: {why} (at most one such line every 10 s; `refused` counts them since the last)"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}

/// Receives at the gossip port, opens, and has the decoder turn what opened into envelopes.
async fn pump(
    outer: Arc<UdpSocket>,
    mut opener: Opener,
    mut decoder: CodecSocket,
    inject: UdpSocket,
    inbox: mpsc::Sender<RecvOutcome>,
    counters: Arc<GossipCounters>,
) {
    let inject_addr = match inject.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("gossip receive task cannot start: {e}");
            return;
        }
    };
    let mut log = RefusalLog {
        counters: counters.clone(),
        last: None,
        since: 0,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (len, from) = match outer.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors and the like; never fatal for a UDP socket that is still open.
                tracing::debug!("gossip receive error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let envelope = match opener.open(&buf[..len], from, now_ms()) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(why) => {
                log.refused(from, &why);
                continue;
            }
        };
        counters.opened();
        if let Err(e) = inject.send(&envelope).await {
            log.refused(from, &format_args!("cannot hand it to the decoder: {e}"));
            continue;
        }
        match decode(&mut decoder, inject_addr, envelope.len()).await {
            Some(env) => {
                let outcome = RecvOutcome {
                    from_addr: from,
                    envelope: env,
                    num_bytes_received: len,
                };
                if inbox.try_send(outcome).is_err() {
                    log.refused(from, &"gossip inbox full, datagram dropped");
                }
            }
            None => log.refused(from, &"it opened, but is not a chitchat envelope"),
        }
    }
}

/// The decoder's envelope for the `len` bytes just injected; `None` if it dropped them.
async fn decode(
    decoder: &mut CodecSocket,
    inject_addr: SocketAddr,
    len: usize,
) -> Option<ChitchatEnvelope> {
    let deadline = tokio::time::Instant::now() + CODEC_WAIT;
    // Bounded: each turn consumes one datagram, and the deadline ends the wait.
    for _ in 0..16 {
        let got = tokio::time::timeout_at(deadline, decoder.recv())
            .await
            .ok()?;
        match got {
            Ok(r) if r.from_addr == inject_addr && r.num_bytes_received == len => {
                return Some(r.envelope);
            }
            // Something else on the loopback port (not ours), or a leftover: skip it.
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}
