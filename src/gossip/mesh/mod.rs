//! The QUIC mesh: one endpoint per node, an authenticated connection per peer and direction,
//! and length-prefixed [`Frame`]s on one unidirectional stream per connection (so frames from
//! one node to another arrive in the order they were sent).
//!
//! A node sends everything it has for a peer (requests, responses, broadcasts) on its own
//! outgoing connection to that peer ([`Link`]), and reads what the peer sends on the
//! connection the peer opened. Nothing of a connection is read before its [`Hello`] verified.
//!
//! A stranger gets nothing before its proof: an incoming connection may open one
//! bidirectional stream and send [`HANDSHAKE_WINDOW`] bytes in all (its [`Hello`]), and only
//! a verified peer is given stream credit ([`Mesh::serve`]). At most
//! [`admission::MAX_UNPROVEN`] connections may be proving at once, a few per source, part of
//! them kept for the addresses the node knows, each for at most the handshake deadline
//! ([`admission`]).

pub(crate) mod admission;
pub(crate) mod auth;
mod links;
mod queue;
#[cfg(target_os = "linux")]
mod recverr;
mod sent;
mod tls;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use tracing::Instrument;

pub(crate) use crate::gossip::peer::PeerId;
use crate::gossip::wire::{self, Frame, FrameDecoder, Hello};
use crate::metrics::{DropReason, FrameTally, MeshMetrics};
use crate::rate_log::RateLog;
pub(crate) use admission::HANDSHAKE_TIMEOUT;
use auth::{AuthError, EXPORTER_LABEL, Keyring, Role};
pub(crate) use queue::{Budgets, Charged, Cut, SendError, Sender};
pub(crate) use tls::TlsFiles;

/// Close code: the peer left the cluster on purpose. Not 0: quinn closes a connection whose
/// handles were all dropped with code 0, which says nothing about the node leaving.
pub(crate) const CLOSE_LEAVING: u32 = 4;
/// Close code: authentication failed.
pub(crate) const CLOSE_AUTH: u32 = 1;
/// Close code: the peer sent something that is not a valid frame.
pub(crate) const CLOSE_PROTOCOL: u32 = 2;
/// Close code: the connection is replaced or no longer needed.
pub(crate) const CLOSE_UNUSED: u32 = 3;
/// Close code: the peer proved the secret, but the node does not admit it (see
/// [`Inbound::on_peer_connected`]).
pub(crate) const CLOSE_REFUSED: u32 = 5;
/// Close code: the peer took no byte of what was sent to it for the peer timeout while its
/// connection stayed alive, or fell so far behind that its send queue went past its byte
/// budget (a slow consumer, as NATS calls it).
pub(crate) const CLOSE_SLOW: u32 = 7;

/// The period of the log lines a proven peer can cause at will (see [`Mesh`]'s `peer_log`).
const PEER_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Largest [`Hello`] accepted.
const MAX_HELLO: usize = 4096;

/// Connection-level receive window of a connection whose peer has not proved the secret
/// yet: room for the peer's [`Hello`] and nothing more. An outgoing connection keeps it for
/// good, as the other side only ever sends its [`Hello`] on it.
pub(crate) const HANDSHAKE_WINDOW: u32 = 2 * MAX_HELLO as u32;

/// Receive window of one stream (quinn's default): what a verified peer may have in flight
/// on its frame stream.
const STREAM_WINDOW: u32 = 1_250_000;

/// Unidirectional streams a verified peer may have open at once (its frame stream, and the
/// next one while the previous finishes).
const PEER_UNI_STREAMS: u32 = 2;

/// Connection-level receive window once the peer is verified.
const PEER_WINDOW: u32 = PEER_UNI_STREAMS * STREAM_WINDOW + HANDSHAKE_WINDOW;

/// One authenticated connection: which, and in which direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnId {
    /// Unique among all the connections of the node's life (quinn's `stable_id` is not: it
    /// is an address, reused once a connection is freed, so a late close notice of an old
    /// connection could be taken for a new one's).
    pub(crate) id: u64,
    /// Opened by the peer.
    pub(crate) incoming: bool,
}

/// The addresses a peer signed in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerAddrs {
    /// Where its mesh listens.
    pub(crate) mesh: SocketAddr,
    /// Where its gossip listens.
    pub(crate) gossip: SocketAddr,
}

/// What the mesh tells the layer above.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// A frame arrived from an authenticated peer. An error refuses it: the connection
    /// it came on is closed with that reason ([`CLOSE_PROTOCOL`]), and nothing more of it
    /// is read.
    fn on_frame(&self, from: &PeerId, frame: Frame) -> Result<(), String>;
    /// Whether `addr` is the mesh address of a member or of a node gossip lists: a
    /// connection from it gets room at admission that strangers cannot take.
    fn knows_address(&self, _addr: SocketAddr) -> bool {
        false
    }
    /// A peer authenticated an incoming connection. An error refuses it: the connection
    /// closes, and nothing of it is read.
    fn on_peer_connected(
        &self,
        peer: &PeerId,
        conn: ConnId,
        addrs: PeerAddrs,
    ) -> Result<(), String>;
    /// Connection `conn` to or from `peer` closed. Called once for every connection that
    /// was admitted (incoming) or handed out as a [`Link`] (outgoing).
    fn on_connection_closed(&self, peer: &PeerId, conn: ConnId, reason: &Closed);
}

/// Why a mesh connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The peer closed it to leave the cluster.
    Leaving,
    /// The peer closed it as replaced or no longer needed.
    Unused,
    /// This node closed it.
    Locally,
    /// One side took nothing of what the other sent for the peer timeout while the
    /// connection stayed alive, and the sender closed it (a slow consumer).
    Slow,
    /// The peer proved the secret, but does not admit this node.
    Refused,
    /// It was lost: timed out, reset, the peer's port unreachable, or closed for a
    /// protocol or authentication error. Says how.
    Lost(String),
}

impl From<&quinn::ConnectionError> for Closed {
    fn from(e: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::ApplicationClosed(c) => match u32::try_from(c.error_code.into_inner()) {
                Ok(CLOSE_LEAVING) => Self::Leaving,
                Ok(CLOSE_UNUSED) => Self::Unused,
                Ok(CLOSE_SLOW) => Self::Slow,
                Ok(CLOSE_REFUSED) => Self::Refused,
                _ => Self::Lost(e.to_string()),
            },
            E::LocallyClosed => Self::Locally,
            other => Self::Lost(other.to_string()),
        }
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Leaving => f.write_str("the peer left the cluster"),
            Self::Unused => f.write_str("the peer no longer needs it"),
            Self::Locally => f.write_str("this node closed it"),
            Self::Slow => f.write_str("a slow consumer: it took nothing for the peer timeout"),
            Self::Refused => f.write_str("the peer refused this node"),
            Self::Lost(how) => f.write_str(how),
        }
    }
}

/// Errors of the mesh.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MeshError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the mesh to {addr}/UDP: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error("TLS set-up failed: {0}")]
    Tls(tls::TlsError),
    /// A file of the cluster-CA mode is unusable.
    #[error("{}: {reason}", path.display())]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        reason: String,
    },
    /// The peer failed authentication.
    #[error("peer at {addr} refused: {source}")]
    Auth {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: AuthError,
    },
}

/// This node's side of the mesh.
pub(crate) struct Mesh {
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    keyring: Keyring,
    me: Hello,
    max_frame_size: usize,
    peer_timeout: Duration,
    /// The byte budgets of the send queues.
    budgets: Arc<Budgets>,
    /// Time an incoming connection has to prove the secret.
    handshake_timeout: Duration,
    /// Frames given up on in send queues, and links closed as slow consumers.
    counters: Arc<Counters>,
    /// Numbers the connections.
    next_conn: AtomicU64,
    /// Incoming connections that have not proved anything yet.
    gate: admission::Gate,
    /// Log lines about proven peers that a peer can cause at will (protocol violations,
    /// refusals): one per period, with how many were held back.
    peer_log: Arc<RateLog>,
    /// Cluster-CA mode: a peer's certificate must name the node its hello claims.
    ca_mode: bool,
    /// The span every task of the mesh runs in: it names this node in every log line.
    span: tracing::Span,
    /// The authenticated connections, for the socket's error reports (Linux).
    links: Arc<links::Links>,
    /// Stops the reader of the socket's error reports when the mesh goes.
    _stop_reports: Option<tokio::sync::oneshot::Sender<()>>,
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
        let (endpoint, stop_reports) = match socket {
            #[cfg(target_os = "linux")]
            None => {
                // quinn's socket, keeping the ICMP errors its datagrams cause: a peer whose
                // port answers unreachable, quoting what was sent to it, has crashed (see
                // `links`).
                let runtime = Arc::new(quinn::TokioRuntime);
                recverr::bind(addr, &*runtime, sent).and_then(|(socket, reports)| {
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
            ca_mode: ca.is_some(),
            span: tracing::Span::none(),
            links,
            _stop_reports: stop_reports,
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

    /// Accept connections until the endpoint closes.
    ///
    /// Each incoming connection is admitted by [`admission::admit`], by its source (the
    /// mesh address of a node `inbound` knows, or a host): asked to validate its address
    /// (Retry) when many are proving or its source has one proving already, refused when
    /// the room of its source, of strangers or of all is full. An accepted one must complete
    /// TLS and prove the secret within the handshake deadline.
    pub(crate) fn serve(self: &Arc<Self>, inbound: Arc<dyn Inbound>) {
        let mesh = self.clone();
        let span = self.span();
        let serve = async move {
            while let Some(incoming) = mesh.endpoint.accept().await {
                let remote = incoming.remote_address();
                let known = inbound.knows_address(remote);
                let source = admission::Source::of(remote, known);
                let slot = match mesh.gate.admit(source, incoming.remote_address_validated()) {
                    Ok(slot) => slot,
                    Err(admission::Admission::Retry) => {
                        if let Err(e) = incoming.retry() {
                            // Only possible for a validated address, which is not retried.
                            e.into_incoming().refuse();
                        }
                        continue;
                    }
                    Err(refusal) => {
                        incoming.refuse();
                        if let Some(suppressed) = mesh.gate.log.take() {
                            let counts = mesh.gate.counts();
                            let why = match refusal {
                                admission::Admission::Refuse(full) => full.to_string(),
                                other => format!("{other:?}"),
                            };
                            tracing::warn!(
                                %remote,
                                known,
                                suppressed,
                                refused = counts.refused,
                                retried = counts.retried,
                                unproven = mesh.gate.unproven(),
                                "refused mesh connection: {why}"
                            );
                        }
                        continue;
                    }
                };
                let mesh = mesh.clone();
                let inbound = inbound.clone();
                let span = mesh.span();
                let admit = async move {
                    let deadline = tokio::time::Instant::now() + mesh.handshake_timeout;
                    let conn = match tokio::time::timeout_at(deadline, incoming).await {
                        Ok(Ok(conn)) => conn,
                        Ok(Err(e)) => return mesh.refused(remote, &format!("TLS: {e}")),
                        // Dropping the handshake abandons the connection.
                        Err(_) => return mesh.refused(remote, "no TLS handshake in time"),
                    };
                    let peer =
                        match tokio::time::timeout_at(deadline, mesh.accept_hello(&conn)).await {
                            Ok(Ok(peer)) => peer,
                            Ok(Err(reason)) => {
                                conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
                                return mesh.refused(remote, &reason);
                            }
                            Err(_) => {
                                conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication timeout");
                                return mesh.refused(remote, "no authentication in time");
                            }
                        };
                    drop(slot);
                    mesh.serve_connection(conn, peer, inbound).await;
                };
                tokio::spawn(admit.instrument(span));
            }
        };
        tokio::spawn(serve.instrument(span));
    }

    /// Count and log (at a bounded rate) an incoming connection that did not prove itself.
    fn refused(&self, remote: SocketAddr, reason: &str) {
        self.gate.failed();
        if let Some(suppressed) = self.gate.log.take() {
            let counts = self.gate.counts();
            tracing::warn!(
                %remote,
                suppressed,
                failed = counts.failed,
                unproven = self.gate.unproven(),
                "refused mesh connection: {reason}"
            );
        }
    }

    async fn serve_connection(
        &self,
        conn: Connection,
        (peer, addrs): (PeerId, PeerAddrs),
        inbound: Arc<dyn Inbound>,
    ) {
        let remote = conn.remote_address();
        let id = ConnId {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            incoming: true,
        };
        if let Err(reason) = inbound.on_peer_connected(&peer, id, addrs) {
            if let Some(held_back) = self.peer_log.allow() {
                tracing::warn!(%peer, %remote, held_back, "refused mesh connection: {reason}");
            }
            conn.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
            return;
        }
        tracing::debug!(%peer, %remote, "mesh peer authenticated (incoming)");
        let up = self.counters.metrics.links(id.incoming).clone();
        let inbound = self.links.track(id, &peer, &conn, inbound, up);
        loop {
            let stream = tokio::select! {
                s = conn.accept_uni() => s,
                reason = conn.closed() => {
                    inbound.on_connection_closed(&peer, id, &(&reason).into());
                    return;
                }
            };
            match stream {
                Ok(stream) => {
                    let conn = conn.clone();
                    let peer = peer.clone();
                    let inbound = inbound.clone();
                    let max = self.max_frame_size;
                    let counters = self.counters.clone();
                    let log = self.peer_log.clone();
                    let read = read_frames(conn, stream, peer, inbound, max, counters, log);
                    tokio::spawn(read.instrument(self.span()));
                }
                Err(reason) => {
                    inbound.on_connection_closed(&peer, id, &(&reason).into());
                    return;
                }
            }
        }
    }

    /// Server side of the handshake: read and check the client's [`Hello`], answer with ours.
    async fn accept_hello(&self, conn: &Connection) -> Result<(PeerId, PeerAddrs), String> {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let refuse = |msg: String| {
            conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
            msg
        };
        let bytes = recv
            .read_to_end(MAX_HELLO)
            .await
            .map_err(|e| refuse(format!("reading hello: {e}")))?;
        let hello = wire::decode_hello(&bytes).map_err(|e| refuse(format!("bad hello: {e}")))?;
        let exporter = exporter(conn).map_err(&refuse)?;
        self.keyring
            .verify(Role::Client, &exporter, &hello)
            .map_err(|e| refuse(format!("node {:?}: {e}", hello.node_name)))?;
        if self.ca_mode {
            tls::check_peer_name(conn, &hello.node_name)
                .map_err(|e| refuse(format!("claims to be node {:?}, but {e}", hello.node_name)))?;
        }
        let addrs = peer_addrs(&hello).map_err(refuse)?;
        // Proven: now, and only now, the peer gets room for its frames.
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(PEER_UNI_STREAMS));
        conn.set_receive_window(VarInt::from_u32(PEER_WINDOW));
        let reply = self.signed_hello(Role::Server, &exporter);
        send.write_all(&reply).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        Ok((
            PeerId {
                name: hello.node_name.into(),
                generation: hello.generation,
            },
            addrs,
        ))
    }

    fn signed_hello(&self, role: Role, exporter: &[u8]) -> Vec<u8> {
        let mut hello = self.me.clone();
        hello.mac = self.keyring.sign(role, exporter, &hello);
        wire::encode_hello(&hello).unwrap_or_else(|_| unreachable!("a hello always fits in a Vec"))
    }

    /// Open an authenticated connection to the node at `addr`, and its outgoing [`Link`].
    /// With `expect`, the node there must be that peer.
    #[cfg(test)]
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        expect: Option<&PeerId>,
        inbound: Arc<dyn Inbound>,
    ) -> Result<(PeerId, Link), MeshError> {
        let name = expect.map_or_else(|| "".into(), |p| p.name.clone());
        self.connect_with(addr, expect, inbound, self.queue(&name))
            .await
    }

    /// Open an authenticated connection to the node at `addr`, and its outgoing [`Link`],
    /// which writes the frames of `queue` (those queued while connecting first). With
    /// `expect`, the node there must be that peer. If the connection cannot be made, what
    /// was queued is dropped (and counted).
    pub(crate) async fn connect_with(
        &self,
        addr: SocketAddr,
        expect: Option<&PeerId>,
        inbound: Arc<dyn Inbound>,
        (tx, queue): (Sender, Queue),
    ) -> Result<(PeerId, Link), MeshError> {
        let fail = |reason: String| MeshError::Connect { addr, reason };
        let conn = tokio::time::timeout(self.peer_timeout, async {
            let connecting = self
                .endpoint
                .connect_with(self.client.clone(), addr, tls::SERVER_NAME)
                .map_err(|e| fail(e.to_string()))?;
            let conn = connecting.await.map_err(|e| fail(e.to_string()))?;
            let exporter = exporter(&conn).map_err(fail)?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
            send.write_all(&self.signed_hello(Role::Client, &exporter))
                .await
                .map_err(|e| fail(e.to_string()))?;
            send.finish().map_err(|e| fail(e.to_string()))?;
            let bytes = recv.read_to_end(MAX_HELLO).await.map_err(|e| {
                // A refusing peer closes the connection with its reason: say it.
                match conn.close_reason() {
                    Some(closed) => fail(format!("no hello from peer: {closed}")),
                    None => fail(format!("no hello from peer: {e}")),
                }
            })?;
            let hello = wire::decode_hello(&bytes).map_err(|e| fail(format!("bad hello: {e}")))?;
            if let Err(source) = self.keyring.verify(Role::Server, &exporter, &hello) {
                conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
                return Err(MeshError::Auth { addr, source });
            }
            if self.ca_mode
                && let Err(e) = tls::check_peer_name(&conn, &hello.node_name)
            {
                conn.close(VarInt::from_u32(CLOSE_AUTH), b"authentication failed");
                return Err(fail(format!(
                    "claims to be node {:?}, but {e}",
                    hello.node_name
                )));
            }
            Ok((conn, hello))
        })
        .await
        .map_err(|_| fail("timed out".into()))??;
        let (conn, hello) = conn;
        let addrs = peer_addrs(&hello).map_err(|reason| {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"bad hello");
            fail(reason)
        })?;
        let peer = PeerId {
            name: hello.node_name.into(),
            generation: hello.generation,
        };
        if let Some(expect) = expect
            && expect != &peer
        {
            conn.close(VarInt::from_u32(CLOSE_UNUSED), b"unexpected peer");
            return Err(fail(format!("expected {expect}, found {peer}")));
        }
        let stream = conn.open_uni().await.map_err(|e| fail(e.to_string()))?;
        let id = ConnId {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            incoming: false,
        };
        let up = self.counters.metrics.links(id.incoming).clone();
        let inbound = self.links.track(id, &peer, &conn, inbound, up);
        tokio::spawn(
            write_frames(
                conn.clone(),
                id,
                stream,
                queue,
                peer.clone(),
                inbound,
                WriterLimits {
                    stall: self.peer_timeout,
                    log: self.peer_log.clone(),
                },
            )
            .instrument(self.span()),
        );
        Ok((
            peer,
            Link {
                conn,
                id,
                addrs,
                tx,
                budgets: self.budgets.clone(),
            },
        ))
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

/// What both sides of a mesh connection share: a peer silent for `peer_timeout` is gone;
/// keep-alives keep healthy idle links open; no datagrams.
fn base_transport(peer_timeout: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(peer_timeout).ok());
    t.keep_alive_interval(Some(peer_timeout / 4));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(HANDSHAKE_WINDOW));
    // The mesh sends no unreliable datagrams, and flow control does not cover them: quinn
    // would buffer up to 1.25 MB of them per connection, a stranger's included.
    t.datagram_receive_buffer_size(None);
    t
}

/// Incoming connections start with what the handshake needs: one bidirectional stream and
/// [`HANDSHAKE_WINDOW`] bytes. [`Mesh::accept_hello`] raises the limits once the proof
/// verified.
fn server_transport(peer_timeout: Duration) -> TransportConfig {
    let mut t = base_transport(peer_timeout);
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

/// On an outgoing connection the other side only answers the [`Hello`] on the stream this
/// node opened: it may open no stream, and send [`HANDSHAKE_WINDOW`] bytes in all.
fn client_transport(peer_timeout: Duration) -> TransportConfig {
    let mut t = base_transport(peer_timeout);
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

/// The addresses in a peer's hello (signed with it).
fn peer_addrs(hello: &Hello) -> Result<PeerAddrs, String> {
    let parse = |what: &str, v: &str| {
        v.parse::<SocketAddr>()
            .map_err(|e| format!("bad {what} address {v:?} in hello: {e}"))
    };
    Ok(PeerAddrs {
        mesh: parse("mesh", &hello.mesh_addr)?,
        gossip: parse("gossip", &hello.gossip_addr)?,
    })
}

fn exporter(conn: &Connection) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    Ok(out)
}

/// This node's outgoing connection to one peer, with its send queue (bounded in bytes).
#[derive(Clone)]
pub(crate) struct Link {
    conn: Connection,
    id: ConnId,
    addrs: PeerAddrs,
    tx: Sender,
    budgets: Arc<Budgets>,
}

/// What the mesh counts of its send queues, and records.
struct Counters {
    /// Frames left in a send queue when it went (its connection closed, was never made, or
    /// was cut as a slow consumer).
    dropped: AtomicU64,
    /// Links closed as slow consumers.
    slow: AtomicU64,
    metrics: MeshMetrics,
}

impl Counters {
    fn new(metrics: MeshMetrics) -> Self {
        Self {
            dropped: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            metrics,
        }
    }

    /// `n` frames queued for `peer` lost for `reason`.
    fn lost(&self, peer: &Arc<str>, n: usize, reason: DropReason) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.drops.record(peer, reason, n as u64);
    }
}

/// The receiving end of a send queue (see [`Mesh::queue`]). The frames still in it when it
/// is dropped are counted as dropped: as lost with a slow consumer if it was cut, else as
/// lost with their peer.
pub(crate) struct Queue {
    rx: queue::Receiver,
    counters: Arc<Counters>,
}

impl Queue {
    /// Take no more frames and drop those queued, counting them; how many.
    fn close(&mut self) -> usize {
        let left = self.rx.close();
        let reason = match self.rx.was_cut() {
            Some(_) => DropReason::SlowConsumer,
            None => DropReason::PeerGone,
        };
        self.counters.lost(self.rx.peer(), left, reason);
        left
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.close();
    }
}

impl Link {
    /// Queue an encoded frame; never waits. Past the peer's budget the link is cut as a
    /// slow consumer.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), SendError> {
        self.tx.try_send(&self.budgets.charge(frame)?)
    }

    /// Which connection this is.
    pub(crate) fn id(&self) -> ConnId {
        self.id
    }

    /// The addresses the peer signed.
    pub(crate) fn addrs(&self) -> PeerAddrs {
        self.addrs
    }

    /// QUIC's current estimate of the round-trip time to the peer.
    pub(crate) fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Whether the connection is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.conn.close_reason().is_none() && !self.tx.is_closed()
    }

    /// Close the connection.
    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(VarInt::from_u32(code), reason);
    }
}

/// Frames applied between two yields to the tasks that drain local sockets (well below
/// socketioxide's default per-socket buffer of 128 packets).
const YIELD_EVERY: u32 = 16;

/// Most frames handed to quinn in one write.
const WRITE_BATCH: usize = 64;

/// What bounds a link's writer: how long a peer may take nothing while frames wait for it,
/// and the rate of the warnings its end writes (a member can open and end links at will).
struct WriterLimits {
    stall: Duration,
    log: Arc<RateLog>,
}

/// Write the frames queued for `peer` until the connection closes or the link is dropped.
/// A peer is disconnected as a slow consumer ([`CLOSE_SLOW`]), so that nothing waits on it
/// and the node holds no more than its budget for it, when it takes no byte for `stall`
/// while frames wait for it (its reader is stuck, its connection alive), or when its queue
/// is cut (see [`queue`]). The node connects afresh when it next has something for it.
async fn write_frames(
    conn: Connection,
    id: ConnId,
    mut stream: quinn::SendStream,
    mut queue: Queue,
    peer: PeerId,
    inbound: Arc<dyn Inbound>,
    WriterLimits { stall, log }: WriterLimits,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut chunks = Vec::with_capacity(WRITE_BATCH);
    let cut = queue.rx.watch();
    let mut tally = FrameTally::default();
    let failure = loop {
        tokio::select! {
            // Everything queued goes in one write: quinn packs the frames into as few
            // packets as fit, and takes the buffers without copying them.
            n = queue.rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    // Link dropped: nothing more to send; the connection goes with it.
                    let _ = stream.finish();
                    conn.close(VarInt::from_u32(CLOSE_UNUSED), b"link dropped");
                    inbound.on_connection_closed(&peer, id, &Closed::Locally);
                    return;
                }
                // Kinds and sizes taken now: quinn takes the buffers it writes.
                tally.clear();
                chunks.clear();
                for queued in &batch {
                    let frame = queued.frame();
                    tally.add(wire::encoded_kind(frame).unwrap_or(usize::MAX), frame.len());
                    chunks.push(frame.clone());
                }
                let written = write_all(&mut stream, &mut chunks, stall, &cut).await;
                // The frames leave the queue, giving back their budget, once written.
                batch.clear();
                match written {
                    Ok(()) => queue.counters.metrics.sent.record(&mut tally),
                    Err(failure) => {
                        // Written frames are left empty; the rest of the batch is lost.
                        let unwritten = chunks.iter().filter(|f| !f.is_empty()).count();
                        let reason = match &failure {
                            WriteFailure::Error(_) => DropReason::PeerGone,
                            WriteFailure::Cut(_) => DropReason::SlowConsumer,
                        };
                        queue.counters.lost(queue.rx.peer(), unwritten, reason);
                        break (failure, unwritten);
                    }
                }
            }
            why = cut.cut() => break (WriteFailure::Cut(why), 0),
            reason = conn.closed() => {
                let dropped = queue.close();
                if dropped > 0
                    && let Some(held_back) = log.allow()
                {
                    tracing::warn!(%peer, dropped, held_back, "mesh link closed with frames still queued: {reason}");
                }
                inbound.on_connection_closed(&peer, id, &(&reason).into());
                return;
            }
        }
    };
    let (failure, unwritten) = failure;
    let reason = match failure {
        WriteFailure::Cut(why) => {
            // What is still queued is lost with a slow consumer.
            let why = queue.rx.cut_now(why);
            let dropped = unwritten + queue.close();
            queue.counters.slow.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = log.allow() {
                tracing::warn!(%peer, dropped, held_back, "mesh peer disconnected as a slow consumer: {why}");
            }
            conn.close(VarInt::from_u32(CLOSE_SLOW), b"slow consumer");
            Closed::Slow
        }
        WriteFailure::Error(e) => {
            let dropped = unwritten + queue.close();
            if let Some(held_back) = log.allow() {
                tracing::warn!(%peer, dropped, held_back, "mesh write failed, closing link: {e}");
            }
            conn.close(VarInt::from_u32(CLOSE_UNUSED), b"write failed");
            (&conn.closed().await).into()
        }
    };
    inbound.on_connection_closed(&peer, id, &reason);
}

/// Why a batch was not written.
enum WriteFailure {
    /// The queue was cut, or the stream took no byte for the whole stall limit
    /// ([`Cut::Stalled`]).
    Cut(Cut),
    /// The stream or its connection failed.
    Error(quinn::WriteError),
}

/// Write every frame of `batch`, failing when the stream takes no byte for `stall` or the
/// queue is `cut`. Written frames are left empty.
async fn write_all(
    stream: &mut quinn::SendStream,
    batch: &mut [Bytes],
    stall: Duration,
    cut: &queue::CutWatch,
) -> Result<(), WriteFailure> {
    let mut next = 0;
    // Each round writes at least one byte (or fails): the batch bounds the rounds.
    while next < batch.len() {
        if batch[next].is_empty() {
            next += 1;
            continue;
        }
        tokio::select! {
            written = tokio::time::timeout(stall, stream.write_chunks(&mut batch[next..])) => {
                match written {
                    Ok(Ok(written)) => next += written.chunks,
                    Ok(Err(e)) => return Err(WriteFailure::Error(e)),
                    Err(_) => return Err(WriteFailure::Cut(Cut::Stalled)),
                }
            }
            why = cut.cut() => return Err(WriteFailure::Cut(why)),
        }
    }
    Ok(())
}

async fn read_frames(
    conn: Connection,
    mut stream: quinn::RecvStream,
    peer: PeerId,
    inbound: Arc<dyn Inbound>,
    max_frame_size: usize,
    counters: Arc<Counters>,
    log: Arc<RateLog>,
) {
    let mut decoder = FrameDecoder::new(max_frame_size);
    let mut applied: u32 = 0;
    let mut tally = FrameTally::default();
    loop {
        match stream.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                decoder.extend(&chunk.bytes);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => {
                            tally.add(frame.kind(), decoder.last_size());
                            if let Err(reason) = inbound.on_frame(&peer, frame) {
                                protocol_violation(&conn, &peer, &reason, &log);
                                return;
                            }
                            // Let the tasks that drain local sockets run every few frames: a
                            // burst from a peer must not overflow their buffers, and each of
                            // their writes should carry several messages, not one.
                            applied = applied.wrapping_add(1);
                            if applied.is_multiple_of(YIELD_EVERY) {
                                counters.metrics.received.record(&mut tally);
                                tokio::task::yield_now().await;
                            }
                        }
                        Ok(None) => {
                            // The chunk is used up: record what it held.
                            counters.metrics.received.record(&mut tally);
                            break;
                        }
                        Err(e) => {
                            protocol_violation(&conn, &peer, &e.to_string(), &log);
                            return;
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, "mesh stream ended: {e}");
                return;
            }
        }
    }
}

/// Close the connection of a peer that broke the protocol, with the reason; logged at a
/// bounded rate (`log`): a peer can break it on every connection it makes.
fn protocol_violation(conn: &Connection, peer: &PeerId, reason: &str, log: &RateLog) {
    if let Some(held_back) = log.allow() {
        tracing::warn!(
            %peer, remote = %conn.remote_address(), held_back,
            "closing mesh connection: {reason}"
        );
    }
    conn.close(
        VarInt::from_u32(CLOSE_PROTOCOL),
        &reason.as_bytes()[..reason.len().min(100)],
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gossip::wire::{Frame, LEN_PREFIX, MAGIC, VERSION};
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    #[derive(Debug)]
    enum Event {
        Frame(PeerId, Box<Frame>),
        Connected(PeerId),
        Closed(PeerId, super::Closed),
    }

    struct Recorder(UnboundedSender<Event>);

    impl Inbound for Recorder {
        fn on_frame(&self, from: &PeerId, frame: Frame) -> Result<(), String> {
            let _ = self.0.send(Event::Frame(from.clone(), Box::new(frame)));
            Ok(())
        }
        fn on_peer_connected(&self, peer: &PeerId, _: ConnId, _: PeerAddrs) -> Result<(), String> {
            let _ = self.0.send(Event::Connected(peer.clone()));
            Ok(())
        }
        fn on_connection_closed(&self, peer: &PeerId, _: ConnId, reason: &super::Closed) {
            let _ = self.0.send(Event::Closed(peer.clone(), reason.clone()));
        }
    }

    fn peer(name: &str) -> PeerId {
        PeerId {
            name: name.into(),
            generation: 1,
        }
    }

    /// A mesh on loopback with an event recorder.
    fn node(
        name: &str,
        secret: Option<&str>,
    ) -> (Arc<Mesh>, Arc<Recorder>, UnboundedReceiver<Event>) {
        let keyring = Keyring::new("c".into(), secret.map(|s| vec![auth::key(s)]));
        let mut mesh = Mesh::bind(
            "127.0.0.1:0".parse().unwrap(),
            None,
            keyring,
            None,
            1024,
            Duration::from_secs(2),
            Budgets::new(64 * 1024, 256 * 1024),
        )
        .unwrap();
        let addr = mesh.local_addr().unwrap();
        mesh.set_identity(
            &peer(name),
            PeerAddrs {
                mesh: addr,
                gossip: addr,
            },
        );
        let (tx, rx) = unbounded_channel();
        (Arc::new(mesh), Arc::new(Recorder(tx)), rx)
    }

    async fn next(rx: &mut UnboundedReceiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("event in time")
            .expect("recorder open")
    }

    /// The next event that is not a connection notice.
    async fn next_frame_or_close(rx: &mut UnboundedReceiver<Event>) -> Event {
        loop {
            match next(rx).await {
                Event::Connected(_) => continue,
                other => return other,
            }
        }
    }

    fn raw(body: &[u8]) -> Bytes {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        Bytes::from(out)
    }

    /// A serving "server" and a "client" connected to it with the same secret: the meshes
    /// (kept alive), the client's link and the server's events.
    async fn connected_pair() -> ([Arc<Mesh>; 2], Link, UnboundedReceiver<Event>) {
        let (server, server_in, server_rx) = node("server", Some("s3cret"));
        server.serve(server_in);
        let (client, client_in, _client_rx) = node("client", Some("s3cret"));
        let (who, link) = client
            .connect(
                server.local_addr().unwrap(),
                Some(&peer("server")),
                client_in,
            )
            .await
            .unwrap();
        assert_eq!(who, peer("server"));
        ([server, client], link, server_rx)
    }

    /// A strong secret for the tests below.
    const STRONG: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

    /// A raw connection from `from` to `to` that completes TLS with the mesh's ALPN and
    /// proves nothing.
    async fn stranger(from: &Mesh, to: &Mesh) -> Connection {
        from.endpoint
            .connect_with(
                from.client.clone(),
                to.local_addr().unwrap(),
                tls::SERVER_NAME,
            )
            .unwrap()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_stranger_gets_no_stream_credit_and_is_cut_at_the_handshake_deadline() {
        let (server, server_in, mut server_rx) = node("server", Some(STRONG));
        server.serve(server_in);
        let (attacker, _, _) = node("stranger", Some(STRONG));

        // A stranger may open no stream for frames; it holds a slot until cut at the
        // handshake deadline (1 s), with its reason.
        let started = tokio::time::Instant::now();
        let idle = stranger(&attacker, &server).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(300), idle.open_uni())
                .await
                .is_err(),
            "a stranger opened a unidirectional stream"
        );
        assert_eq!(server.gate.unproven(), 1);
        let reason = tokio::time::timeout(Duration::from_secs(10), idle.closed())
            .await
            .expect("closed");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(3), "cut after {waited:?}");
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, VarInt::from_u32(CLOSE_AUTH));
                assert_eq!(&c.reason[..], b"authentication timeout");
            }
            other => panic!("expected an authentication timeout, got {other:?}"),
        }
        assert_eq!(server.gate.unproven(), 0);

        // On the handshake stream, no more than the handshake window is taken, and junk
        // longer than a hello is refused.
        let junk = stranger(&attacker, &server).await;
        let (mut send, _recv) = junk.open_bi().await.unwrap();
        let mut taken = 0;
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(200), send.write(&[0; 1000])).await {
                Ok(Ok(n)) => taken += n,
                _ => break,
            }
        }
        assert!(taken <= HANDSHAKE_WINDOW as usize, "{taken} bytes taken");
        match tokio::time::timeout(Duration::from_secs(10), junk.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
                assert_eq!(c.error_code, VarInt::from_u32(CLOSE_AUTH));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(server.gate.counts().failed, 2);
        assert!(server_rx.try_recv().is_err(), "a stranger became a peer");
    }

    #[tokio::test]
    async fn authenticated_peers_exchange_frames_in_order() {
        let (_meshes, link, mut server_rx) = connected_pair().await;
        assert!(matches!(next(&mut server_rx).await, Event::Connected(p) if p == peer("client")));
        for _ in 0..50 {
            link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
        }
        for _ in 0..50 {
            assert!(
                matches!(next(&mut server_rx).await, Event::Frame(p, f) if p == peer("client") && *f == Frame::Leave)
            );
        }
    }

    /// What the server sees when the client's connection ends `how`.
    async fn close_seen(how: impl FnOnce(Link)) -> super::Closed {
        let (_meshes, link, mut server_rx) = connected_pair().await;
        how(link);
        match next_frame_or_close(&mut server_rx).await {
            Event::Closed(p, reason) => {
                assert_eq!(p, peer("client"));
                reason
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_dropped_without_a_word_does_not_read_as_leaving() {
        // quinn closes a connection whose handles are all gone with code 0: a node that
        // merely dropped a connection (replaced, timed out, failed) must not look as if it
        // left the cluster, or its peers would ignore it from then on.
        let dropped = close_seen(drop).await;
        assert_ne!(dropped, super::Closed::Leaving);
        let left = close_seen(|link| link.close(CLOSE_LEAVING, b"leaving")).await;
        assert_eq!(left, super::Closed::Leaving);
    }

    /// Every log line written on this thread while the returned guard lives (a
    /// current-thread runtime polls every task of the test on it).
    pub(crate) fn capture_logs() -> (
        Arc<std::sync::Mutex<Vec<u8>>>,
        tracing::subscriber::DefaultGuard,
    ) {
        #[derive(Clone)]
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink(lines.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        (lines, tracing::subscriber::set_default(subscriber))
    }

    #[tokio::test]
    async fn wrong_or_missing_secret_is_refused_before_any_frame() {
        const RIGHT: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";
        const WRONG: &str = "2c4e6a8b0d1f3a5c7e9b1d3f5a7c9e0b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a13";
        let (logs, _guard) = capture_logs();
        let refusals = || {
            let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
            text.lines()
                .filter(|l| l.contains("refused mesh connection"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let (server, server_in, mut server_rx) = node("server", Some(RIGHT));
        server.serve(server_in);
        let addr = server.local_addr().unwrap();
        // The server closes a refused connection with the authentication code.
        let closed_for_auth = |err: &MeshError| {
            matches!(err, MeshError::Connect { reason, .. }
                if reason.contains("authentication failed")
                    && reason.contains(&CLOSE_AUTH.to_string()))
        };

        let (wrong, wrong_in, _) = node("wrong", Some(WRONG));
        let err = wrong
            .connect(addr, None, wrong_in)
            .await
            .err()
            .expect("refused");
        assert!(closed_for_auth(&err), "{err}");
        let logged = refusals();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(
            logged[0].contains(r#"node "wrong""#)
                && logged[0].contains(&AuthError::BadProof.to_string()),
            "{logged:?}"
        );

        let (insecure, insecure_in, _) = node("insecure", None);
        let err = insecure
            .connect(addr, None, insecure_in)
            .await
            .err()
            .expect("refused");
        assert!(closed_for_auth(&err), "{err}");
        let logged = refusals();
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(
            logged[1].contains(r#"node "insecure""#)
                && logged[1].contains(&AuthError::MissingProof.to_string()),
            "{logged:?}"
        );

        // The same server accepts a peer with the secret, which is the first peer it
        // sees: neither refused node was taken for a peer, nor sent it a frame.
        let (good, good_in, _) = node("good", Some(RIGHT));
        let (who, link) = good
            .connect(addr, Some(&peer("server")), good_in)
            .await
            .expect("the right secret is accepted");
        assert_eq!(who, peer("server"));
        assert!(matches!(next(&mut server_rx).await, Event::Connected(p) if p == peer("good")));
        link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
        assert!(
            matches!(next(&mut server_rx).await, Event::Frame(p, f) if p == peer("good") && *f == Frame::Leave)
        );

        // A client that expects another node name refuses the server.
        let (good, good_in, _) = node("good", Some(RIGHT));
        let err = good
            .connect(addr, Some(&peer("someone-else")), good_in)
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(&err, MeshError::Connect { reason, .. } if reason.contains("expected")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn garbage_oversized_and_wrong_version_close_only_that_connection() {
        let (server, server_in, mut server_rx) = node("server", Some("k"));
        server.serve(server_in);
        let addr = server.local_addr().unwrap();

        // Raw UDP garbage at the QUIC port is ignored.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.send_to(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3], addr)
            .unwrap();

        let mut wrong_version = wire::encode(&Frame::Leave).unwrap().to_vec();
        wrong_version[LEN_PREFIX + 2] = VERSION + 1;
        let cases: Vec<(&str, Bytes, &str)> = vec![
            (
                "garbage",
                raw(&[MAGIC[0], MAGIC[1], VERSION, 0xff, 0xff, 0xff]),
                "malformed",
            ),
            ("bad magic", raw(b"hello world"), "magic"),
            (
                "oversized",
                Bytes::from(100_000u32.to_be_bytes().to_vec()),
                "exceeds",
            ),
            ("wrong version", Bytes::from(wrong_version), "version"),
        ];
        for (what, bytes, expect) in cases {
            let (client, client_in, mut client_rx) = node(what, Some("k"));
            let (_, link) = client.connect(addr, None, client_in).await.unwrap();
            link.send(bytes).unwrap();
            // The server closes that connection with a protocol error and its reason.
            match next_frame_or_close(&mut client_rx).await {
                Event::Closed(_, super::Closed::Lost(reason)) => {
                    assert!(
                        reason.contains(&format!("(code {CLOSE_PROTOCOL})")),
                        "{what}: {reason}"
                    );
                    assert!(reason.contains(expect), "{what}: {reason}");
                }
                other => panic!("{what}: expected the connection closed, got {other:?}"),
            }
            match next_frame_or_close(&mut server_rx).await {
                Event::Closed(p, _) => assert_eq!(p, peer(what)),
                other => panic!("{what}: expected the server to drop the peer, got {other:?}"),
            }
        }

        // The node still serves a well-behaved peer.
        let (good, good_in, _) = node("good", Some("k"));
        let (_, link) = good.connect(addr, None, good_in).await.unwrap();
        link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
        assert!(
            matches!(next_frame_or_close(&mut server_rx).await, Event::Frame(p, f) if p == peer("good") && *f == Frame::Leave)
        );
    }

    /// A peer that breaks the protocol again and again has its connection closed every
    /// time, and the node logs it at a bounded rate, not once per connection.
    #[tokio::test]
    async fn protocol_violations_are_logged_at_a_bounded_rate() {
        let (logs, _guard) = capture_logs();
        let (server, server_in, _server_rx) = node("server", Some(STRONG));
        server.serve(server_in);
        let addr = server.local_addr().unwrap();
        let (client, client_in, mut client_rx) = node("client", Some(STRONG));
        for i in 0..20 {
            let (_, link) = client.connect(addr, None, client_in.clone()).await.unwrap();
            link.send(raw(b"hello world")).unwrap();
            match next_frame_or_close(&mut client_rx).await {
                Event::Closed(_, super::Closed::Lost(reason)) => {
                    assert!(reason.contains("magic"), "connection {i}: {reason}")
                }
                other => panic!("connection {i}: expected it closed, got {other:?}"),
            }
        }
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("closing mesh connection"))
            .collect();
        assert!(
            !lines.is_empty() && lines.len() <= 2,
            "20 violations logged in {} lines: {lines:#?}",
            lines.len()
        );
    }

    /// Linux: a peer whose process is gone (its runtime, and with it its socket, dropped
    /// without a word) is found out by the kernel's answer to the next datagram, port
    /// unreachable: its link closes as lost, with that reason, long before the peer
    /// timeout. An unreachable for any other address closes nothing, and the endpoint keeps
    /// working through both.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_port_unreachable_closes_the_links_to_that_address_only() {
        let (client, client_in, mut client_rx) = node("client", Some(STRONG));
        // The server on a runtime of its own, so that it can vanish like a killed process.
        let (rt, server_addr) = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let addr = rt.block_on(async {
                let (server, server_in, _) = node("server", Some(STRONG));
                server.serve(server_in);
                server.local_addr().unwrap()
            });
            (rt, addr)
        })
        .join()
        .unwrap();
        let (_, link) = client
            .connect(server_addr, Some(&peer("server")), client_in)
            .await
            .unwrap();

        // A datagram to a port nobody listens on: answered, and ignored.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let nobody = closed.local_addr().unwrap();
        drop(closed);
        let attempt = client
            .endpoint
            .connect_with(client.client.clone(), nobody, tls::SERVER_NAME)
            .unwrap();
        let ignored = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if client.links.counts().1 > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(ignored.is_ok(), "the answer for another address was read");
        drop(attempt);
        assert!(
            link.is_open(),
            "an answer about another address closes nothing"
        );
        assert_eq!(client.links.counts().0, 0);

        // The server vanishes; the next frame to it is answered port unreachable.
        let started = tokio::time::Instant::now();
        rt.shutdown_background();
        link.send(wire::encode(&Frame::Leave).unwrap()).unwrap();
        match next_frame_or_close(&mut client_rx).await {
            Event::Closed(p, super::Closed::Lost(e)) => {
                assert_eq!(p, peer("server"));
                assert!(e.contains("port unreachable"), "{e}");
            }
            other => panic!("expected the link lost to a port unreachable, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "before the peer timeout"
        );
        assert_eq!(client.links.counts().0, 1);
    }
}
