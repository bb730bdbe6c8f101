//! The mesh's authenticated connections by remote address, so that the kernel's word that
//! nothing listens at a peer's address any more closes that peer's connections at once.
//!
//! On Linux the mesh socket keeps the ICMP errors its datagrams cause ([`super::recverr`]).
//! A *port unreachable* for exactly the remote address of authenticated connections closes
//! them, and their close notice reads as a lost connection whose reason names the port
//! unreachable: pending requests stop waiting for that peer then and there, instead of after
//! the peer timeout. Any other report (another address, another kind) is counted and
//! ignored. Connections still being set up are left alone: a node restarted on the same port
//! is reached normally, whatever an earlier answer said.
//!
//! ICMP is not authenticated: anyone who can send to the host can forge a port unreachable
//! naming a link's addresses. So one closes links only if it quotes the start of a datagram
//! this node sent to that address lately ([`super::sent`]), which only the kernel that got
//! it (or someone on the path, who can cut the link anyway) knows. Any other is a hint:
//! counted, logged at a bounded rate, and left to the peer timeout, which closes a peer
//! that is gone all the same.
//!
//! Elsewhere nothing reports ICMP errors: connections are tracked, and never closed here.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use quinn::{Connection, VarInt};

use super::{
    Closed, ConnId, Inbound, PeerAddrs, PeerId,
    sent::{Sent, key},
};
use crate::{gossip::wire::Frame, rate_log::RateLog};

/// Close code: the peer's port answered unreachable. The peer never reads it unless the
/// answer was forged; then it sees its connection lost, and reconnects.
pub(crate) const CLOSE_UNREACHABLE: u32 = 6;

/// Connections closed for a port unreachable: logged at most once per period.
static CLOSED_LOG: RateLog = RateLog::new(Duration::from_secs(10));
/// Reports ignored: logged at most once per period.
static IGNORED_LOG: RateLog = RateLog::new(Duration::from_secs(10));
/// Port unreachables about a peer that quote no datagram sent to it: logged at most once
/// per period.
static UNCONFIRMED_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// The authenticated connections of a mesh, and what error reports did to them.
#[derive(Default)]
pub(crate) struct Links {
    conns: Mutex<HashMap<u64, Entry>>,
    /// What the socket sent to the addresses of these connections.
    sent: Arc<Sent>,
    /// Connections closed because their peer's port was unreachable.
    closed: AtomicU64,
    /// Reports that concerned no connection, or were not a port unreachable.
    ignored: AtomicU64,
    /// Port unreachables for a connection's address that quoted no datagram sent there.
    unconfirmed: AtomicU64,
    /// The span naming this node, for the log lines of reports (read by a task started
    /// before the node has a name).
    span: std::sync::OnceLock<tracing::Span>,
}

struct Entry {
    peer: PeerId,
    conn: Connection,
    /// Its remote address when it was tracked, watched in [`Sent`] until it closes.
    watched: SocketAddr,
    /// Closed here for a port unreachable.
    unreachable: bool,
}

impl Links {
    /// No connection yet; what the socket sends is recorded in `sent`.
    pub(crate) fn new(sent: Arc<Sent>) -> Self {
        Self {
            sent,
            ..Self::default()
        }
    }

    /// Keep `conn` (to or from `peer`) until it closes; its events go through the returned
    /// inbound. `up` counts it while it is open.
    pub(crate) fn track(
        self: &Arc<Self>,
        id: ConnId,
        peer: &PeerId,
        conn: &Connection,
        inbound: Arc<dyn Inbound>,
        up: metrics::Gauge,
    ) -> Arc<dyn Inbound> {
        up.increment(1.0);
        let watched = conn.remote_address();
        self.sent.watch(watched);
        self.lock().insert(
            id.id,
            Entry {
                peer: peer.clone(),
                conn: conn.clone(),
                watched,
                unreachable: false,
            },
        );
        Arc::new(Tracked {
            links: self.clone(),
            inner: inbound,
            up,
        })
    }

    /// Act on what the kernel said about a datagram to `dest`, quoting `quoted` of it: a
    /// port unreachable that quotes a datagram this node sent to `dest` closes every
    /// authenticated connection whose remote address is exactly `dest`. Returns how many
    /// were closed.
    pub(crate) fn on_report(
        &self,
        dest: SocketAddr,
        port_unreachable: bool,
        quoted: Option<&[u8]>,
        what: &str,
    ) -> usize {
        let _in = self.span.get().map(tracing::Span::enter);
        let mut closed = Vec::new();
        if port_unreachable {
            let to = key(dest);
            let mut conns = self.lock();
            let matching = || {
                conns
                    .values()
                    .any(|e| !e.unreachable && key(e.conn.remote_address()) == to)
            };
            if matching() && !quoted.is_some_and(|q| self.sent.quotes_one(dest, q)) {
                drop(conns);
                let unconfirmed = self.unconfirmed.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(held_back) = UNCONFIRMED_LOG.allow() {
                    tracing::warn!(
                        %dest, unconfirmed, held_back,
                        "ICMP port unreachable for a mesh peer's address ignored: it quotes no \
                         datagram this node sent there (forged, or too short to check); the \
                         peer timeout still closes a peer that is gone"
                    );
                }
                return 0;
            }
            for entry in conns.values_mut() {
                if !entry.unreachable && key(entry.conn.remote_address()) == to {
                    entry.unreachable = true;
                    closed.push((entry.peer.clone(), entry.conn.clone()));
                }
            }
        }
        if closed.is_empty() {
            let ignored = self.ignored.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(held_back) = IGNORED_LOG.allow() {
                tracing::debug!(
                    %dest, ignored, held_back,
                    "ICMP error report ignored ({what}): no mesh connection to that address"
                );
            }
            return 0;
        }
        for (peer, conn) in &closed {
            self.closed.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = CLOSED_LOG.allow() {
                tracing::warn!(
                    %peer, remote = %dest, held_back,
                    "closing mesh connection: port unreachable (ICMP, quoting a datagram this \
                     node sent), the peer's process is gone"
                );
            }
            conn.close(VarInt::from_u32(CLOSE_UNREACHABLE), b"port unreachable");
        }
        closed.len()
    }

    /// Log what reports do in `span` (it names this node).
    pub(crate) fn set_span(&self, span: tracing::Span) {
        let _ = self.span.set(span);
    }

    /// Connections closed for a port unreachable, reports ignored, and port unreachables
    /// for a connection's address that quoted no datagram sent there, so far.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.closed.load(Ordering::Relaxed),
            self.ignored.load(Ordering::Relaxed),
            self.unconfirmed.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The reason a connection closed for a port unreachable reads as: lost, not closed by this
/// node.
fn unreachable_reason(remote: SocketAddr) -> Closed {
    Closed::Lost(format!("port unreachable (ICMP) at {remote}"))
}

/// One connection's events, on their way to the mesh's inbound.
struct Tracked {
    links: Arc<Links>,
    inner: Arc<dyn Inbound>,
    /// Counts the connection while it is open.
    up: metrics::Gauge,
}

impl Inbound for Tracked {
    fn on_frame(&self, from: &PeerId, frame: Frame) -> Result<(), String> {
        self.inner.on_frame(from, frame)
    }
    fn on_peer_connected(
        &self,
        peer: &PeerId,
        conn: ConnId,
        addrs: PeerAddrs,
    ) -> Result<(), String> {
        self.inner.on_peer_connected(peer, conn, addrs)
    }
    fn on_connection_closed(&self, peer: &PeerId, conn: ConnId, reason: &Closed) {
        // The lock is released before the node hears of it.
        let entry = self.links.lock().remove(&conn.id);
        if let Some(entry) = &entry {
            self.links.sent.unwatch(entry.watched);
            self.up.decrement(1.0);
        }
        match entry {
            Some(entry) if entry.unreachable => self.inner.on_connection_closed(
                peer,
                conn,
                &unreachable_reason(entry.conn.remote_address()),
            ),
            _ => self.inner.on_connection_closed(peer, conn, reason),
        }
    }
}

/// Read the socket's error reports until `stop` resolves (the mesh is gone), acting on each.
#[cfg(target_os = "linux")]
pub(crate) async fn watch(
    queue: super::recverr::ErrorQueue,
    links: Arc<Links>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use super::recverr::Kind;
    let mut reports = Vec::new();
    loop {
        tokio::select! {
            read = queue.next(&mut reports) => {
                if let Err(e) = read {
                    tracing::warn!(
                        "cannot read the mesh socket's error queue, crashed peers are found by \
                         the peer timeout only: {e}"
                    );
                    return;
                }
            }
            _ = &mut stop => return,
        }
        for report in reports.drain(..) {
            let what = report.kind.to_string();
            let unreachable = report.kind == Kind::PortUnreachable;
            let quoted = report.quoted.as_ref().map(|q| &q[..]);
            links.on_report(report.dest, unreachable, quoted, &what);
        }
        tokio::task::yield_now().await;
    }
}
