//! The mesh endpoint of a node ([`Mesh`]): its UDP socket (quinn's, one given, or one
//! that keeps the ICMP errors its datagrams cause), who the node tells peers it is, what it
//! counts and records, the send queues it hands out, and its closing. Accepting connections
//! is in [`super::accept`], dialing peers in [`super::dial`].

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use quinn::{Endpoint, VarInt};

use super::auth::Keyring;
use super::handshake::{client_transport, server_transport};
use super::link::{Counters, Queue};
#[cfg(target_os = "linux")]
use super::recverr;
use super::{
    Budgets, Charged, MeshError, PeerAddrs, PeerId, SendError, Sender, TlsFiles, admission, links,
    sent, tls,
};
use crate::gossip::wire::Hello;
use crate::metrics::MeshMetrics;
use crate::rate_log::RateLog;

/// The period of the log lines a proven peer can cause at will (see [`Mesh`]'s `peer_log`).
const PEER_LOG_PERIOD: Duration = Duration::from_secs(10);

/// This node's side of the mesh.
pub(crate) struct Mesh {
    pub(super) endpoint: Endpoint,
    pub(super) client: quinn::ClientConfig,
    pub(super) keyring: Keyring,
    pub(super) me: Hello,
    pub(super) max_frame_size: usize,
    pub(super) peer_timeout: Duration,
    /// The byte budgets of the send queues.
    pub(super) budgets: Arc<Budgets>,
    /// Time an incoming connection has to prove the secret.
    pub(super) handshake_timeout: Duration,
    /// Frames given up on in send queues, and links closed as slow consumers.
    pub(super) counters: Arc<Counters>,
    /// Numbers the connections.
    pub(super) next_conn: AtomicU64,
    /// Incoming connections that have not proved anything yet.
    pub(super) gate: admission::Gate,
    /// Log lines about proven peers that a peer can cause at will (protocol violations,
    /// refusals): one per period, with how many were held back.
    pub(super) peer_log: Arc<RateLog>,
    /// Log lines of links that end with frames lost (closed with frames queued, a slow
    /// consumer cut, a failed write): one per period, with how many were held back, apart
    /// from `peer_log` so that neither kind hides the other.
    pub(super) link_end_log: Arc<RateLog>,
    /// Cluster-CA mode: a peer's certificate must name the node its hello claims.
    pub(super) ca_mode: bool,
    /// The span every task of the mesh runs in: it names this node in every log line.
    pub(super) span: tracing::Span,
    /// The authenticated connections, for the socket's error reports (Linux).
    pub(super) links: Arc<links::Links>,
    /// Stops the reader of the socket's error reports when the mesh goes.
    pub(super) _stop_reports: Option<tokio::sync::oneshot::Sender<()>>,
    /// The count of datagrams the kernel dropped for the socket (Linux, the operating
    /// system's socket).
    #[cfg(target_os = "linux")]
    pub(super) socket_drops: Option<recverr::SocketDrops>,
}

/// A UDP socket that does not come from the operating system, with what drives it.
pub(crate) struct CustomSocket {
    pub(crate) socket: Arc<dyn quinn::AsyncUdpSocket>,
    pub(crate) runtime: Arc<dyn quinn::Runtime>,
    pub(crate) rng_seed: Option<[u8; 32]>,
    /// The network's wall clock: QUIC Retry tokens are stamped and checked with it (on a
    /// simulated network, real time and the network's time differ).
    pub(crate) clock: Arc<dyn quinn::TimeSource>,
}

/// A wall clock given as a function, for [`CustomSocket::clock`].
pub(crate) struct Clock<F>(pub(crate) F);

impl<F: Fn() -> std::time::SystemTime + Send + Sync> quinn::TimeSource for Clock<F> {
    fn now(&self) -> std::time::SystemTime {
        (self.0)()
    }
}

impl Mesh {
    /// Bind the mesh endpoint, on `socket` if given, else on a UDP socket at `addr`; with
    /// `ca`, in cluster-CA mode (see [`tls`]).
    pub(crate) fn bind(
        addr: SocketAddr,
        socket: Option<CustomSocket>,
        keyring: Keyring,
        ca: Option<&TlsFiles>,
        max_frame_size: usize,
        peer_timeout: Duration,
        budgets: Arc<Budgets>,
    ) -> Result<Self, MeshError> {
        let (server_crypto, client_crypto) = tls::configs(ca).map_err(|e| match e {
            tls::TlsError::File { path, reason } => MeshError::TlsFile { path, reason },
            other => MeshError::Tls(other),
        })?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Arc::new(server_transport(peer_timeout)));
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(Arc::new(client_transport(peer_timeout)));
        let sent = Arc::new(sent::Sent::default());
        let links = Arc::new(links::Links::new(sent.clone()));
        #[cfg(target_os = "linux")]
        let mut socket_drops = None;
        let (endpoint, stop_reports) = match socket {
            #[cfg(target_os = "linux")]
            None => {
                // quinn's socket, keeping the ICMP errors its datagrams cause: a peer whose
                // port answers unreachable, quoting what was sent to it, has crashed (see
                // `links`). Its receive buffer holds a burst (`recverr::RECEIVE_BUFFER`).
                let runtime = Arc::new(quinn::TokioRuntime);
                recverr::bind(addr, &*runtime, sent).and_then(|(socket, reports, drops)| {
                    socket_drops = Some(drops);
                    let (stop, stopped) = tokio::sync::oneshot::channel();
                    tokio::spawn(links::watch(reports, links.clone(), stopped));
                    let endpoint = Endpoint::new_with_abstract_socket(
                        quinn::EndpointConfig::default(),
                        Some(server),
                        socket,
                        runtime,
                    )?;
                    Ok((endpoint, Some(stop)))
                })
            }
            #[cfg(not(target_os = "linux"))]
            None => Endpoint::server(server, addr).map(|e| (e, None)),
            Some(CustomSocket {
                socket,
                runtime,
                rng_seed,
                clock,
            }) => {
                server.time_source(clock);
                let mut config = quinn::EndpointConfig::default();
                config.rng_seed(rng_seed);
                Endpoint::new_with_abstract_socket(config, Some(server), socket, runtime)
                    .map(|e| (e, None))
            }
        }
        .map_err(|source| MeshError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            client,
            keyring,
            me: Hello {
                node_name: String::new(),
                generation: 0,
                mesh_addr: String::new(),
                gossip_addr: String::new(),
                mac: None,
            },
            max_frame_size,
            peer_timeout,
            budgets,
            handshake_timeout: admission::HANDSHAKE_TIMEOUT,
            counters: Arc::new(Counters::new(MeshMetrics::new(&"".into()))),
            next_conn: AtomicU64::new(1),
            gate: admission::Gate::default(),
            peer_log: Arc::new(RateLog::new(PEER_LOG_PERIOD)),
            link_end_log: Arc::new(RateLog::new(PEER_LOG_PERIOD)),
            ca_mode: ca.is_some(),
            span: tracing::Span::none(),
            links,
            _stop_reports: stop_reports,
            #[cfg(target_os = "linux")]
            socket_drops,
        })
    }

    /// Set who this node is, as told to peers: its identity and advertised addresses.
    pub(crate) fn set_identity(&mut self, me: &PeerId, addrs: PeerAddrs) {
        self.me = Hello {
            node_name: me.name.to_string(),
            generation: me.generation,
            mesh_addr: addrs.mesh.to_string(),
            gossip_addr: addrs.gossip.to_string(),
            mac: None,
        };
        // No queue exists yet: every one records under this node's name.
        self.counters = Arc::new(Counters::new(MeshMetrics::new(&me.name)));
        // At the error level, so that it is enabled whenever any log line is.
        self.span = tracing::error_span!("cluster_node", node = %me);
        self.links.set_span(self.span.clone());
    }

    /// Give incoming connections `timeout` from their first packet to a verified proof of
    /// the secret (default [`admission::HANDSHAKE_TIMEOUT`]).
    pub(crate) fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// The span that names this node, for the tasks of the layers above.
    pub(crate) fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// Count the datagrams the kernel dropped for this node's socket since the last call
    /// ([`crate::metrics::SOCKET_DROPS`]), and warn of them.
    pub(crate) fn record_socket_drops(&self) {
        #[cfg(target_os = "linux")]
        if let Some(drops) = &self.socket_drops {
            match drops.since_last() {
                Ok(0) => {}
                Ok(dropped) => {
                    self.counters
                        .metrics
                        .socket_drops
                        .increment(u64::from(dropped));
                    tracing::warn!(
                        parent: &self.span, dropped,
                        "the kernel dropped datagrams for the mesh socket, its receive buffer \
                         full: QUIC sends what they carried again, late (raise \
                         net.core.rmem_max, see the deployment guide)"
                    );
                }
                Err(e) => tracing::debug!(parent: &self.span, "socket drops not read: {e}"),
            }
        }
    }

    /// What the mesh records.
    pub(crate) fn metrics(&self) -> &MeshMetrics {
        &self.counters.metrics
    }

    /// Frames that were still queued for a peer when its connection closed or could not be
    /// made, or when it was cut as a slow consumer.
    pub(crate) fn frames_dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Outgoing links closed as slow consumers: their peer took nothing for the peer
    /// timeout, or its send queue went past its budget.
    pub(crate) fn slow_peers_disconnected(&self) -> u64 {
        self.counters.slow.load(Ordering::Relaxed)
    }

    /// A new send queue for an outgoing connection to `peer`, to hand to
    /// [`Mesh::connect_with`]: frames may be queued in it while the connection is made.
    pub(crate) fn queue(&self, peer: &Arc<str>) -> (Sender, Queue) {
        let (tx, rx) = self.budgets.queue(peer.clone());
        let queue = Queue {
            rx,
            counters: self.counters.clone(),
        };
        (tx, queue)
    }

    /// Take the node budget for an encoded frame, to queue it for one peer or several
    /// ([`Sender::try_send`]); fails when it does not fit (then the queue holding the most
    /// bytes is cut as a slow consumer).
    pub(crate) fn charge(&self, frame: Bytes) -> Result<Charged, SendError> {
        self.budgets.charge(frame)
    }

    /// Bytes queued for all peers, each frame counted once.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.budgets.node_bytes()
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Close every connection with `code` and stop accepting, without waiting.
    pub(crate) fn close_now(&self, code: u32, reason: &[u8]) {
        self.endpoint.close(VarInt::from_u32(code), reason);
    }

    /// Close every connection with `code`, then wait (bounded) for peers to be told.
    pub(crate) async fn close(&self, code: u32, reason: &[u8]) {
        self.endpoint.close(VarInt::from_u32(code), reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
