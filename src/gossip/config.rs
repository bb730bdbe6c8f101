//! Configuration of the gossip backend: [`GossipAdapterConfig`].

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

pub use crate::gossip::keys::Secret;
use crate::{
    error::ConfigError,
    gossip::mesh::TlsFiles,
    gossip::wire::{DEFAULT_MAX_FRAME_SIZE, LEN_PREFIX},
    ranges::{self, env_count, env_ms},
};

/// Default budget of one peer's send queue, in bytes: 64 MiB, NATS's slow-consumer limit,
/// and twice Redis's `client-output-buffer-limit pubsub` hard limit (32 MB), so that any
/// burst a Redis deployment with its default limits delivers is held.
pub const DEFAULT_PEER_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// Default budget of all the send queues of a node together, in bytes (a frame queued for
/// several peers counted once): 256 MiB, four peers' budgets.
pub const DEFAULT_NODE_QUEUE_BYTES: usize = 256 * 1024 * 1024;

/// The cluster id of a configuration that does not set one.
pub(crate) const DEFAULT_CLUSTER_ID: &str = "socketioxide";
/// Longest cluster id, in bytes.
pub(crate) const MAX_CLUSTER_ID: usize = 255;
/// Longest node name, in bytes: what gossip carries (see the membership checks).
pub(crate) const MAX_NODE_NAME: usize = crate::gossip::membership::envelope::MAX_NAME;

/// How nodes prove to each other that they belong to the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    /// No secret configured yet: [`GossipAdapterCtr::new`](crate::GossipAdapterCtr::new) refuses to start.
    Missing,
    /// A keyring: the first secret signs, every secret verifies.
    Secrets(Vec<Secret>),
    /// Explicitly no authentication.
    Insecure,
}

/// The configuration of the gossip backend, in the shape of `socketioxide-redis`'s
/// `RedisAdapterConfig`.
///
/// Every node of a cluster needs the same cluster id and secret, and at least one seed
/// (the gossip address of any other node; a node may list itself).
///
/// ```
/// use socketioxide_cluster::GossipAdapterConfig;
/// let config = GossipAdapterConfig::new()
///     .with_cluster_id("chat")
///     .with_gossip_addr("127.0.0.1:7946".parse().unwrap())
///     .with_mesh_addr("127.0.0.1:7947".parse().unwrap())
///     .with_seeds(["127.0.0.1:7946"])
///     .with_secret("8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7");
/// ```
#[derive(Clone, Debug)]
pub struct GossipAdapterConfig {
    pub(crate) cluster_id: String,
    pub(crate) node_name: Option<String>,
    pub(crate) gossip_addr: SocketAddr,
    pub(crate) gossip_advertise_addr: Option<SocketAddr>,
    pub(crate) mesh_addr: SocketAddr,
    pub(crate) mesh_advertise_addr: Option<SocketAddr>,
    pub(crate) seeds: Vec<String>,
    pub(crate) auth: Auth,
    pub(crate) request_timeout: Duration,
    pub(crate) ack_response_buffer: usize,
    /// Set by the deprecated `with_stream_buffer` or `SOCKETIO_CLUSTER_STREAM_BUFFER`:
    /// checked, and bounds nothing.
    pub(crate) stream_buffer: Option<usize>,
    pub(crate) peer_queue_bytes: usize,
    pub(crate) node_queue_bytes: usize,
    pub(crate) gossip_interval: Duration,
    pub(crate) max_frame_size: usize,
    pub(crate) peer_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) join_timeout: Duration,
    pub(crate) network: Option<crate::gossip::network::Custom>,
}

impl Default for GossipAdapterConfig {
    fn default() -> Self {
        Self {
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            node_name: None,
            gossip_addr: SocketAddr::from(([0, 0, 0, 0], 7946)),
            gossip_advertise_addr: None,
            mesh_addr: SocketAddr::from(([0, 0, 0, 0], 7947)),
            mesh_advertise_addr: None,
            seeds: Vec::new(),
            auth: Auth::Missing,
            request_timeout: Duration::from_secs(5),
            ack_response_buffer: 255,
            stream_buffer: None,
            peer_queue_bytes: DEFAULT_PEER_QUEUE_BYTES,
            node_queue_bytes: DEFAULT_NODE_QUEUE_BYTES,
            gossip_interval: Duration::from_millis(500),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            peer_timeout: Duration::from_secs(2),
            handshake_timeout: crate::gossip::mesh::HANDSHAKE_TIMEOUT,
            tls: None,
            join_timeout: Duration::from_secs(3),
            network: None,
        }
    }
}

impl GossipAdapterConfig {
    /// The default configuration: cluster id `socketioxide`, gossip on UDP `0.0.0.0:7946`,
    /// mesh on UDP `0.0.0.0:7947`, no seeds, no secret (set one, or call
    /// [`insecure_no_auth`](Self::insecure_no_auth)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Nodes only gossip with nodes of the same cluster id (1 to 255 bytes). Default
    /// `socketioxide`.
    ///
    /// With a secret, give every cluster an id of its own: the id salts the keys derived
    /// from the secret, and clusters that keep the default share that salt (a warning is
    /// logged at start).
    pub fn with_cluster_id(mut self, id: impl Into<String>) -> Self {
        self.cluster_id = id.into();
        self
    }

    /// The name of this node in the cluster (1 to 128 bytes). Default: a random name. Two
    /// live nodes must not share a name: a node started with the name of a live one is taken
    /// for its restart and replaces it, and the older one leaves the cluster and reports it
    /// in [`Cluster::failure`](crate::Cluster::failure).
    pub fn with_node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = Some(name.into());
        self
    }

    /// UDP address the gossip protocol binds to. Port 0 picks a free port.
    pub fn with_gossip_addr(mut self, addr: SocketAddr) -> Self {
        self.gossip_addr = addr;
        self
    }

    /// Gossip address other nodes should use to reach this one (behind NAT, or when binding
    /// `0.0.0.0`). Default: the bound address, with an unspecified IP replaced by this
    /// host's outbound IP.
    pub fn with_gossip_advertise_addr(mut self, addr: SocketAddr) -> Self {
        self.gossip_advertise_addr = Some(addr);
        self
    }

    /// UDP address the QUIC mesh binds to. Port 0 picks a free port.
    pub fn with_mesh_addr(mut self, addr: SocketAddr) -> Self {
        self.mesh_addr = addr;
        self
    }

    /// Mesh address other nodes should use to reach this one. Default as for gossip.
    pub fn with_mesh_advertise_addr(mut self, addr: SocketAddr) -> Self {
        self.mesh_advertise_addr = Some(addr);
        self
    }

    /// Gossip addresses of nodes to join through, as `ip:port` or `host:port` (host names are
    /// resolved again periodically, so a headless service name works).
    ///
    /// Each must be an address the seed node advertises (or binds, if it binds a specific
    /// IP): gossip to a seed is sealed for the address it is sent to, and a node opens only
    /// what is sealed for its own addresses. A load-balanced address in front of several
    /// nodes (a Kubernetes `ClusterIP` service) does not work as a seed; a headless service
    /// does.
    pub fn with_seeds<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The shared cluster secret: it authenticates every mesh connection and seals every
    /// gossip datagram. It must be at least 32 characters and hard to guess (no repeated
    /// phrase, words or keyboard pattern): make one with `openssl rand -hex 32`. A weak
    /// secret is refused at start ([`Error::WeakSecret`](crate::Error::WeakSecret)).
    pub fn with_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.auth = Auth::Secrets(vec![secret.into()]);
        self
    }

    /// A keyring for rotating the secret: the first signs (and seals gossip), all verify
    /// (and open gossip). Each must meet the rule of [`with_secret`](Self::with_secret). To
    /// rotate, deploy
    /// `[old, new]`… then `[new, old]`, then `[new]`.
    pub fn with_secrets<S: Into<Secret>>(mut self, secrets: impl IntoIterator<Item = S>) -> Self {
        let secrets: Vec<Secret> = secrets.into_iter().map(Into::into).collect();
        self.auth = if secrets.is_empty() {
            Auth::Missing
        } else {
            Auth::Secrets(secrets)
        };
        self
    }

    /// Turn authentication off. Any host that can reach the gossip or mesh port can then act
    /// as a node, and gossip travels in clear. Mesh traffic stays encrypted, but anyone can
    /// join. A warning is logged at start.
    pub fn insecure_no_auth(mut self) -> Self {
        self.auth = Auth::Insecure;
        self
    }

    /// How long a request (`fetch_sockets`, `rooms`, acks) waits for the other nodes.
    /// Default 5 s; 10 ms to 1 h.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Capacity of the channel receiving remote acks of one `emit_with_ack`, as in
    /// `socketioxide-redis`. Default 255; 1 to 1,000,000. The gossip backend checks it but
    /// needs no such buffer: a request holds exactly the responses each peer it asked
    /// announced.
    pub fn with_ack_response_buffer(mut self, buffer: usize) -> Self {
        self.ack_response_buffer = buffer;
        self
    }

    /// Formerly the capacity of the outgoing queue to each peer, in frames. The queues are
    /// bounded in bytes now ([`with_peer_queue_bytes`](Self::with_peer_queue_bytes),
    /// [`with_node_queue_bytes`](Self::with_node_queue_bytes)): the value is still checked
    /// (1 to 1,000,000) and a warning logged at start, but it bounds nothing.
    #[deprecated(
        note = "peer send queues are bounded in bytes: use with_peer_queue_bytes (default \
                64 MiB) and with_node_queue_bytes (default 256 MiB); this value bounds nothing"
    )]
    pub fn with_stream_buffer(mut self, buffer: usize) -> Self {
        self.stream_buffer = Some(buffer);
        self
    }

    /// Most bytes of frames waiting to be sent to one peer. Default 64 MiB
    /// ([`DEFAULT_PEER_QUEUE_BYTES`]); 64 KiB to 4 GiB, and at least the largest frame
    /// ([`with_max_frame_size`](Self::with_max_frame_size)).
    ///
    /// An emit never waits for a peer. A peer whose queue would go past this budget (it
    /// stays behind while frames for it keep coming) is disconnected as a slow consumer, as
    /// Redis cuts a pub/sub client past its `client-output-buffer-limit` and NATS a slow
    /// consumer past its pending limit: the frame that did not fit and those still queued
    /// are dropped and counted ([`Cluster::frames_dropped`](crate::Cluster::frames_dropped),
    /// metric reasons `queue_full` and `slow_consumer`), requests stop waiting for it, and the
    /// node connects to it afresh for its next frame.
    pub fn with_peer_queue_bytes(mut self, bytes: usize) -> Self {
        self.peer_queue_bytes = bytes;
        self
    }

    /// Most bytes of frames waiting to be sent to all peers together, a frame queued for
    /// several peers (a broadcast) counted once. Default 256 MiB
    /// ([`DEFAULT_NODE_QUEUE_BYTES`]); 64 KiB to 64 GiB, and at least the peer budget
    /// ([`with_peer_queue_bytes`](Self::with_peer_queue_bytes)).
    ///
    /// A frame that does not fit is queued for no peer (counted, metric reason
    /// `node_full`), and the peer whose queue holds the most bytes is disconnected as a slow
    /// consumer, which frees its queue.
    pub fn with_node_queue_bytes(mut self, bytes: usize) -> Self {
        self.node_queue_bytes = bytes;
        self
    }

    /// Interval between gossip rounds. Default 500 ms; 10 ms to 60 s.
    pub fn with_gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval;
        self
    }

    /// Largest frame accepted from a peer. Default 16 MiB; 1 KiB to 64 MiB. A peer sending
    /// more is disconnected.
    pub fn with_max_frame_size(mut self, size: usize) -> Self {
        self.max_frame_size = size;
        self
    }

    /// How long a silent peer connection lives before it is considered dead (QUIC idle
    /// timeout; keep-alives are sent at a quarter of it). Pending requests stop waiting for
    /// such a peer. Default 2 s; 100 ms to 10 min.
    pub fn with_peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
        self
    }

    /// How long an incoming mesh connection has, from its first packet, to complete TLS and
    /// prove the cluster secret; one that does not is closed, and its slot given to the
    /// next. A handshake takes two round trips (a few milliseconds within a datacenter):
    /// raise it only for links whose round trip nears 100 ms. Apart from the peer timeout,
    /// which applies to proven peers only. Default 1 s; 100 ms to 1 min.
    ///
    /// Connections still proving the secret are bounded besides: 64 at once, 4 per source
    /// (an IPv4 address, an IPv6 /64), and 16 of the 64 kept for the mesh addresses of
    /// members and of the nodes gossip lists, so that strangers dialling without end crowd
    /// out no node of the cluster.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Cluster-CA mode: each node gets its own certificate, signed by a CA of the cluster and
    /// naming the node (its node name as a DNS name in the subject alternative names), so
    /// that no node can speak for another. Paths of PEM files: the CA's certificate, this
    /// node's certificate (then any intermediates) and its private key (PKCS#8, PKCS#1 or
    /// SEC1).
    ///
    /// Both sides of every mesh connection then present their certificate and verify the
    /// other's chain to the CA (mutual TLS), and a peer whose certificate does not name the
    /// node it claims to be is refused. The node name must be a DNS name (letters, digits,
    /// `-`, `.`), and [`with_node_name`](Self::with_node_name) set to the name in the
    /// certificate, byte for byte: names are compared exactly, not as DNS compares them (a
    /// certificate for `chat-0` does not name `CHAT-0` nor `chat-0.`, and a wildcard
    /// `*.chat.svc` names no node), so that one certificate names exactly one node. The secret is still required: it seals gossip and its proof still runs.
    /// Unreadable files, or a certificate the CA did not sign or that does not fit the key,
    /// stop the node at start with an error naming the file.
    ///
    /// ```
    /// use socketioxide_cluster::GossipAdapterConfig;
    /// let config = GossipAdapterConfig::new()
    ///     .with_node_name("chat-0")
    ///     .with_tls_ca("/etc/cluster/ca.pem", "/etc/cluster/chat-0.pem", "/etc/cluster/chat-0.key");
    /// ```
    pub fn with_tls_ca(
        mut self,
        ca_pem: impl Into<PathBuf>,
        cert_pem: impl Into<PathBuf>,
        key_pem: impl Into<PathBuf>,
    ) -> Self {
        self.tls = Some(TlsFiles {
            ca: ca_pem.into(),
            cert: cert_pem.into(),
            key: key_pem.into(),
        });
        self
    }

    /// How long [`GossipAdapterCtr::new`](crate::GossipAdapterCtr::new) waits to join: it
    /// returns once the seeds answered and every node they know of proved itself over the
    /// mesh, so that the node's first broadcast reaches every member. A node whose seeds do
    /// not answer (the first node of a cluster) starts when this expires, and says so in a
    /// log line. Default 3 s.
    pub fn with_join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// Run gossip and the mesh on the sockets `network` provides instead of binding UDP
    /// sockets from the operating system: for simulations on a simulated network and clock.
    /// The addresses set by the other methods are passed to `network` as they are.
    #[cfg(feature = "custom-network")]
    pub fn with_network(mut self, network: impl crate::gossip::network::Network) -> Self {
        self.network = Some(crate::gossip::network::Custom(std::sync::Arc::new(network)));
        self
    }

    /// Read the configuration from `SOCKETIO_CLUSTER_*` environment variables, on top of the
    /// defaults:
    ///
    /// | variable | meaning |
    /// | --- | --- |
    /// | `SOCKETIO_CLUSTER_ID` | cluster id |
    /// | `SOCKETIO_CLUSTER_NODE_NAME` | node name |
    /// | `SOCKETIO_CLUSTER_GOSSIP_ADDR` | gossip bind address `ip:port` |
    /// | `SOCKETIO_CLUSTER_GOSSIP_ADVERTISE_ADDR` | advertised gossip address |
    /// | `SOCKETIO_CLUSTER_MESH_ADDR` | mesh bind address `ip:port` |
    /// | `SOCKETIO_CLUSTER_MESH_ADVERTISE_ADDR` | advertised mesh address |
    /// | `SOCKETIO_CLUSTER_SEEDS` | comma-separated seeds `host:port` |
    /// | `SOCKETIO_CLUSTER_SECRET` | the secret that signs (and verifies) |
    /// | `SOCKETIO_CLUSTER_SECRETS_VERIFY` | comma-separated extra secrets that only verify (rotation) |
    /// | `SOCKETIO_CLUSTER_INSECURE` | `1`/`true`: no authentication |
    /// | `SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS` | request timeout, 10 to 3,600,000 |
    /// | `SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS` | gossip interval, 10 to 60,000 |
    /// | `SOCKETIO_CLUSTER_PEER_TIMEOUT_MS` | peer idle timeout, 100 to 600,000 |
    /// | `SOCKETIO_CLUSTER_HANDSHAKE_TIMEOUT_MS` | time a mesh connection has to prove the secret, 100 to 60,000 |
    /// | `SOCKETIO_CLUSTER_JOIN_TIMEOUT_MS` | longest wait to join at start, 0 to 600,000 |
    /// | `SOCKETIO_CLUSTER_MAX_FRAME_SIZE` | largest frame in bytes, 1,024 to 67,108,864 |
    /// | `SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER` | ack buffer, 1 to 1,000,000 |
    /// | `SOCKETIO_CLUSTER_PEER_QUEUE_BYTES` | bytes queued for one peer at most, 65,536 to 4,294,967,296 |
    /// | `SOCKETIO_CLUSTER_NODE_QUEUE_BYTES` | bytes queued for all peers at most, 65,536 to 68,719,476,736 |
    /// | `SOCKETIO_CLUSTER_STREAM_BUFFER` | deprecated for this backend (it sizes the Redis backend's queue): checked, 1 to 1,000,000, logged at start, bounds nothing |
    /// | `SOCKETIO_CLUSTER_TLS_CA`, `SOCKETIO_CLUSTER_TLS_CERT`, `SOCKETIO_CLUSTER_TLS_KEY` | cluster-CA mode: the three PEM files of [`with_tls_ca`](Self::with_tls_ca), all three or none |
    ///
    /// A value that does not parse, or a number outside its range, is an error naming the
    /// variable (and the range).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Self::new();
        let addr = |k: &'static str| -> Result<Option<SocketAddr>, ConfigError> {
            get(k).map(|v| parse(k, &v)).transpose()
        };
        if let Some(v) = get("SOCKETIO_CLUSTER_ID") {
            c.cluster_id = v;
        }
        c.node_name = get("SOCKETIO_CLUSTER_NODE_NAME").or(c.node_name);
        if let Some(a) = addr("SOCKETIO_CLUSTER_GOSSIP_ADDR")? {
            c.gossip_addr = a;
        }
        c.gossip_advertise_addr = addr("SOCKETIO_CLUSTER_GOSSIP_ADVERTISE_ADDR")?;
        if let Some(a) = addr("SOCKETIO_CLUSTER_MESH_ADDR")? {
            c.mesh_addr = a;
        }
        c.mesh_advertise_addr = addr("SOCKETIO_CLUSTER_MESH_ADVERTISE_ADDR")?;
        if let Some(v) = get("SOCKETIO_CLUSTER_SEEDS") {
            c.seeds = split_list(&v);
        }
        let insecure = match get("SOCKETIO_CLUSTER_INSECURE").as_deref() {
            None | Some("" | "0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "SOCKETIO_CLUSTER_INSECURE",
                    reason: format!("expected 1/true or 0/false, got {other:?}"),
                });
            }
        };
        let mut secrets: Vec<Secret> = get("SOCKETIO_CLUSTER_SECRET")
            .filter(|s| !s.is_empty())
            .map(Secret::from)
            .into_iter()
            .collect();
        if let Some(v) = get("SOCKETIO_CLUSTER_SECRETS_VERIFY") {
            if secrets.is_empty() {
                return Err(ConfigError::Invalid {
                    var: "SOCKETIO_CLUSTER_SECRETS_VERIFY",
                    reason: "set SOCKETIO_CLUSTER_SECRET too: it is the one that signs".into(),
                });
            }
            secrets.extend(split_list(&v).into_iter().map(Secret::from));
        }
        c.auth = match (insecure, secrets.is_empty()) {
            (true, true) => Auth::Insecure,
            (true, false) => {
                return Err(ConfigError::Invalid {
                    var: "SOCKETIO_CLUSTER_INSECURE",
                    reason: "a secret is set too: choose one".into(),
                });
            }
            (false, true) => Auth::Missing,
            (false, false) => Auth::Secrets(secrets),
        };
        let get = &get;
        if let Some(d) = env_ms(&ranges::REQUEST_TIMEOUT, get)? {
            c.request_timeout = d;
        }
        if let Some(d) = env_ms(&ranges::GOSSIP_INTERVAL, get)? {
            c.gossip_interval = d;
        }
        if let Some(d) = env_ms(&ranges::PEER_TIMEOUT, get)? {
            c.peer_timeout = d;
        }
        if let Some(d) = env_ms(&ranges::HANDSHAKE_TIMEOUT, get)? {
            c.handshake_timeout = d;
        }
        if let Some(d) = env_ms(&ranges::JOIN_TIMEOUT, get)? {
            c.join_timeout = d;
        }
        if let Some(n) = env_count(&ranges::MAX_FRAME_SIZE, get)? {
            c.max_frame_size = n;
        }
        if let Some(n) = env_count(&ranges::ACK_RESPONSE_BUFFER, get)? {
            c.ack_response_buffer = n;
        }
        if let Some(n) = env_count(&ranges::STREAM_BUFFER, get)? {
            c.stream_buffer = Some(n);
        }
        if let Some(n) = env_count(&ranges::PEER_QUEUE_BYTES, get)? {
            c.peer_queue_bytes = n;
        }
        if let Some(n) = env_count(&ranges::NODE_QUEUE_BYTES, get)? {
            c.node_queue_bytes = n;
        }
        c.tls = tls_from(&get)?;
        Ok(c)
    }

    /// Refuse a numeric setting outside the range that works, or a node name or cluster id
    /// of a length gossip cannot carry, naming its builder method and variable, and the
    /// range.
    pub(crate) fn check_ranges(&self) -> Result<(), ConfigError> {
        const B: &str = "GossipAdapterConfig";
        let length = |setting: &str, len: usize, max: usize| {
            if (1..=max).contains(&len) {
                return Ok(());
            }
            Err(ConfigError::OutOfRange {
                setting: setting.to_string(),
                value: format!("{len} bytes"),
                range: format!("1..={max} bytes"),
            })
        };
        if let Some(name) = &self.node_name {
            length(
                "GossipAdapterConfig::with_node_name (SOCKETIO_CLUSTER_NODE_NAME)",
                name.len(),
                MAX_NODE_NAME,
            )?;
        }
        length(
            "GossipAdapterConfig::with_cluster_id (SOCKETIO_CLUSTER_ID)",
            self.cluster_id.len(),
            MAX_CLUSTER_ID,
        )?;
        ranges::REQUEST_TIMEOUT.check(B, self.request_timeout)?;
        ranges::GOSSIP_INTERVAL.check(B, self.gossip_interval)?;
        ranges::PEER_TIMEOUT.check(B, self.peer_timeout)?;
        ranges::HANDSHAKE_TIMEOUT.check(B, self.handshake_timeout)?;
        ranges::JOIN_TIMEOUT.check(B, self.join_timeout)?;
        ranges::MAX_FRAME_SIZE.check(B, self.max_frame_size)?;
        ranges::ACK_RESPONSE_BUFFER.check(B, self.ack_response_buffer)?;
        if let Some(n) = self.stream_buffer {
            ranges::STREAM_BUFFER.check(B, n)?;
        }
        // A peer's queue holds the largest frame; the node's, one peer's queue.
        ranges::PEER_QUEUE_BYTES.check_at_least(
            B,
            self.peer_queue_bytes,
            self.max_frame_size + LEN_PREFIX,
            "the largest frame (with_max_frame_size) with its length prefix",
        )?;
        ranges::NODE_QUEUE_BYTES.check_at_least(
            B,
            self.node_queue_bytes,
            self.peer_queue_bytes,
            "the peer budget (with_peer_queue_bytes)",
        )?;
        Ok(())
    }

    /// What the configuration asks for that no longer has an effect, each as the line to
    /// log at start.
    pub(crate) fn deprecations(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(n) = self.stream_buffer {
            lines.push(format!(
                "the stream buffer ({n}, GossipAdapterConfig::with_stream_buffer or \
                 SOCKETIO_CLUSTER_STREAM_BUFFER) no longer bounds the gossip backend's peer \
                 queues, which are bounded in bytes: {} bytes per peer \
                 (with_peer_queue_bytes, SOCKETIO_CLUSTER_PEER_QUEUE_BYTES) and {} for all \
                 peers (with_node_queue_bytes, SOCKETIO_CLUSTER_NODE_QUEUE_BYTES); a peer past \
                 its budget is disconnected as a slow consumer. The variable still sizes the \
                 Redis backend's queue.",
                self.peer_queue_bytes, self.node_queue_bytes
            ));
        }
        lines
    }
}

/// The cluster-CA files from `SOCKETIO_CLUSTER_TLS_*`: all three, or none.
fn tls_from(get: &impl Fn(&str) -> Option<String>) -> Result<Option<TlsFiles>, ConfigError> {
    const VARS: [&str; 3] = [
        "SOCKETIO_CLUSTER_TLS_CA",
        "SOCKETIO_CLUSTER_TLS_CERT",
        "SOCKETIO_CLUSTER_TLS_KEY",
    ];
    let [ca, cert, key] = VARS.map(|var| get(var).filter(|v| !v.trim().is_empty()));
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        })),
        (ca, cert, key) => {
            let given = [ca.is_some(), cert.is_some(), key.is_some()];
            let missing = VARS
                .iter()
                .zip(given)
                .find_map(|(var, set)| (!set).then_some(*var))
                .unwrap_or(VARS[0]);
            Err(ConfigError::Invalid {
                var: missing,
                reason: "the cluster-CA mode needs SOCKETIO_CLUSTER_TLS_CA, \
                         SOCKETIO_CLUSTER_TLS_CERT and SOCKETIO_CLUSTER_TLS_KEY together: \
                         set the missing one, or none"
                    .into(),
            })
        }
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
        var,
        reason: format!("{v:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<GossipAdapterConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GossipAdapterConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn env_sets_every_field() {
        let c = from(&[
            ("SOCKETIO_CLUSTER_ID", "chat"),
            ("SOCKETIO_CLUSTER_NODE_NAME", "n1"),
            ("SOCKETIO_CLUSTER_GOSSIP_ADDR", "127.0.0.1:1000"),
            ("SOCKETIO_CLUSTER_MESH_ADDR", "127.0.0.1:1001"),
            ("SOCKETIO_CLUSTER_MESH_ADVERTISE_ADDR", "10.0.0.1:1001"),
            ("SOCKETIO_CLUSTER_SEEDS", "a:1, b:2,,"),
            ("SOCKETIO_CLUSTER_SECRET", "s1"),
            ("SOCKETIO_CLUSTER_SECRETS_VERIFY", "s0"),
            ("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS", "1500"),
            ("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS", "700"),
            ("SOCKETIO_CLUSTER_HANDSHAKE_TIMEOUT_MS", "1500"),
        ])
        .unwrap();
        assert_eq!(c.cluster_id, "chat");
        assert_eq!(c.node_name.as_deref(), Some("n1"));
        assert_eq!(c.gossip_addr.port(), 1000);
        assert_eq!(c.mesh_advertise_addr.unwrap().port(), 1001);
        assert_eq!(c.seeds, ["a:1", "b:2"]);
        assert_eq!(
            c.auth,
            Auth::Secrets(vec![Secret::from("s1"), Secret::from("s0")])
        );
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.peer_timeout, Duration::from_millis(700));
        assert_eq!(c.handshake_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = from(&[("SOCKETIO_CLUSTER_MESH_ADDR", "nope")]).unwrap_err();
        assert!(e.to_string().contains("SOCKETIO_CLUSTER_MESH_ADDR"), "{e}");
        let e = from(&[
            ("SOCKETIO_CLUSTER_INSECURE", "1"),
            ("SOCKETIO_CLUSTER_SECRET", "x"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("choose one"), "{e}");
        assert_eq!(from(&[]).unwrap().auth, Auth::Missing);
        assert_eq!(
            from(&[("SOCKETIO_CLUSTER_INSECURE", "true")]).unwrap().auth,
            Auth::Insecure
        );
    }

    #[test]
    fn numbers_outside_their_range_are_refused_naming_the_variable() {
        for (var, bad) in [
            ("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS", "0"),
            ("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS", "3600001"),
            ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "0"),
            ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "60001"),
            ("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS", "0"),
            ("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS", "99"),
            ("SOCKETIO_CLUSTER_HANDSHAKE_TIMEOUT_MS", "99"),
            ("SOCKETIO_CLUSTER_HANDSHAKE_TIMEOUT_MS", "60001"),
            ("SOCKETIO_CLUSTER_MAX_FRAME_SIZE", "0"),
            ("SOCKETIO_CLUSTER_MAX_FRAME_SIZE", "4294967296"),
            ("SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER", "0"),
            ("SOCKETIO_CLUSTER_STREAM_BUFFER", "0"),
            ("SOCKETIO_CLUSTER_STREAM_BUFFER", "1000001"),
        ] {
            let e = from(&[(var, bad)]).unwrap_err().to_string();
            assert!(
                e.contains(var) && e.contains("allowed range"),
                "{var}={bad}: {e}"
            );
        }
        let c = from(&[
            ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "10"),
            ("SOCKETIO_CLUSTER_MAX_FRAME_SIZE", "1024"),
            ("SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER", "1"),
            ("SOCKETIO_CLUSTER_STREAM_BUFFER", "1000000"),
        ])
        .unwrap();
        assert_eq!(c.gossip_interval, Duration::from_millis(10));
        assert_eq!(
            (c.max_frame_size, c.ack_response_buffer, c.stream_buffer),
            (1024, 1, Some(1_000_000))
        );
        c.check_ranges().expect("the ends of the ranges are fine");
        GossipAdapterConfig::new()
            .check_ranges()
            .expect("the defaults are in range");
    }

    #[test]
    fn node_names_and_cluster_ids_gossip_cannot_carry_are_refused() {
        type C = GossipAdapterConfig;
        let long_name = "n".repeat(MAX_NODE_NAME + 1);
        let long_id = "c".repeat(MAX_CLUSTER_ID + 1);
        for (c, method) in [
            (C::new().with_node_name(""), "with_node_name"),
            (C::new().with_node_name(long_name), "with_node_name"),
            (C::new().with_cluster_id(""), "with_cluster_id"),
            (C::new().with_cluster_id(long_id), "with_cluster_id"),
        ] {
            let e = c.check_ranges().unwrap_err().to_string();
            assert!(e.contains(method) && e.contains("bytes"), "{e}");
        }
        C::new()
            .with_node_name("n".repeat(MAX_NODE_NAME))
            .with_cluster_id("c".repeat(MAX_CLUSTER_ID))
            .check_ranges()
            .unwrap();
    }

    #[test]
    #[allow(deprecated)]
    fn builder_values_outside_their_range_name_the_method() {
        type C = GossipAdapterConfig;
        let cases: [(C, &str); 7] = [
            (
                C::new().with_request_timeout(Duration::ZERO),
                "with_request_timeout",
            ),
            (
                C::new().with_gossip_interval(Duration::ZERO),
                "with_gossip_interval",
            ),
            (
                C::new().with_peer_timeout(Duration::ZERO),
                "with_peer_timeout",
            ),
            (
                C::new().with_handshake_timeout(Duration::from_secs(61)),
                "with_handshake_timeout",
            ),
            (C::new().with_max_frame_size(10), "with_max_frame_size"),
            (
                C::new().with_ack_response_buffer(0),
                "with_ack_response_buffer",
            ),
            (C::new().with_stream_buffer(0), "with_stream_buffer"),
        ];
        for (c, method) in cases {
            let e = c.check_ranges().unwrap_err().to_string();
            assert!(
                e.contains(&format!("GossipAdapterConfig::{method}"))
                    && e.contains("SOCKETIO_CLUSTER_"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_send_queues_are_bounded_in_bytes_by_default() {
        let c = GossipAdapterConfig::new();
        assert_eq!(c.peer_queue_bytes, 64 * 1024 * 1024);
        assert_eq!(c.node_queue_bytes, 256 * 1024 * 1024);
        assert_eq!(DEFAULT_PEER_QUEUE_BYTES, 64 * 1024 * 1024);
        assert_eq!(DEFAULT_NODE_QUEUE_BYTES, 256 * 1024 * 1024);
        // At least Redis's default pub/sub hard limit (32 MB), and the largest frame.
        assert!(c.peer_queue_bytes >= 32 * 1024 * 1024);
        assert!(c.peer_queue_bytes >= c.max_frame_size + LEN_PREFIX);
        assert_eq!(c.stream_buffer, None);
        assert!(c.deprecations().is_empty());
        c.check_ranges().expect("the defaults are in range");
    }

    #[test]
    fn the_byte_budgets_are_read_from_the_environment_and_checked() {
        let c = from(&[
            ("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES", "1048576"),
            ("SOCKETIO_CLUSTER_MAX_FRAME_SIZE", "65536"),
            ("SOCKETIO_CLUSTER_NODE_QUEUE_BYTES", "8388608"),
        ])
        .unwrap();
        assert_eq!((c.peer_queue_bytes, c.node_queue_bytes), (1 << 20, 8 << 20));
        c.check_ranges().unwrap();
        for (var, bad) in [
            ("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES", "65535"),
            ("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES", "4294967297"),
            ("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES", "-1"),
            ("SOCKETIO_CLUSTER_NODE_QUEUE_BYTES", "0"),
            ("SOCKETIO_CLUSTER_NODE_QUEUE_BYTES", "68719476737"),
            ("SOCKETIO_CLUSTER_NODE_QUEUE_BYTES", "lots"),
        ] {
            let e = from(&[(var, bad)]).unwrap_err().to_string();
            assert!(e.contains(var), "{var}={bad}: {e}");
        }
        // A peer budget that cannot hold the largest frame, a node budget that cannot hold
        // one peer's: refused at start, naming the setting and the one that bounds it.
        type C = GossipAdapterConfig;
        let e = C::new()
            .with_peer_queue_bytes(1 << 20)
            .check_ranges()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GossipAdapterConfig::with_peer_queue_bytes")
                && e.contains("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES")
                && e.contains("with_max_frame_size")
                && e.contains("16777220"),
            "{e}"
        );
        let e = C::new()
            .with_node_queue_bytes(32 << 20)
            .check_ranges()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GossipAdapterConfig::with_node_queue_bytes")
                && e.contains("with_peer_queue_bytes")
                && e.contains("67108864"),
            "{e}"
        );
        C::new()
            .with_max_frame_size(1024)
            .with_peer_queue_bytes(64 * 1024)
            .with_node_queue_bytes(64 * 1024)
            .check_ranges()
            .expect("the smallest budgets, with small frames");
    }

    #[test]
    #[allow(deprecated)]
    fn the_stream_buffer_is_still_checked_and_its_use_is_told() {
        // From the environment: still checked, kept, and told at start.
        let e = from(&[("SOCKETIO_CLUSTER_STREAM_BUFFER", "0")]).unwrap_err();
        assert!(
            e.to_string().contains("SOCKETIO_CLUSTER_STREAM_BUFFER"),
            "{e}"
        );
        let c = from(&[("SOCKETIO_CLUSTER_STREAM_BUFFER", "500")]).unwrap();
        assert_eq!(c.stream_buffer, Some(500));
        c.check_ranges()
            .expect("a value in its range is still accepted");
        let told = c.deprecations();
        assert_eq!(told.len(), 1, "{told:?}");
        for words in [
            "SOCKETIO_CLUSTER_STREAM_BUFFER",
            "with_stream_buffer",
            "no longer bounds",
            "SOCKETIO_CLUSTER_PEER_QUEUE_BYTES",
            "SOCKETIO_CLUSTER_NODE_QUEUE_BYTES",
            "67108864",
            "slow consumer",
        ] {
            assert!(told[0].contains(words), "{words}: {}", told[0]);
        }
        // From the builder: the same, and the queues keep their byte budgets.
        let c = GossipAdapterConfig::new().with_stream_buffer(10);
        assert_eq!(c.deprecations().len(), 1);
        assert_eq!(c.peer_queue_bytes, DEFAULT_PEER_QUEUE_BYTES);
        c.check_ranges().unwrap();
        assert!(
            GossipAdapterConfig::new()
                .with_stream_buffer(0)
                .check_ranges()
                .is_err()
        );
    }

    #[test]
    fn tls_files_come_all_three_or_not_at_all() {
        assert_eq!(from(&[]).unwrap().tls, None);
        let c = from(&[
            ("SOCKETIO_CLUSTER_TLS_CA", "ca.pem"),
            ("SOCKETIO_CLUSTER_TLS_CERT", "n1.pem"),
            ("SOCKETIO_CLUSTER_TLS_KEY", "n1.key"),
        ])
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                ca: "ca.pem".into(),
                cert: "n1.pem".into(),
                key: "n1.key".into(),
            })
        );
        let e = from(&[
            ("SOCKETIO_CLUSTER_TLS_CA", "ca.pem"),
            ("SOCKETIO_CLUSTER_TLS_KEY", "n1.key"),
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains("invalid SOCKETIO_CLUSTER_TLS_CERT"),
            "{e}"
        );
        let e = from(&[("SOCKETIO_CLUSTER_TLS_KEY", "n1.key")]).unwrap_err();
        assert!(
            e.to_string().contains("invalid SOCKETIO_CLUSTER_TLS_CA"),
            "{e}"
        );
    }

    #[test]
    fn secret_is_redacted_in_debug() {
        let c = GossipAdapterConfig::new().with_secrets(["hunter2-very-secret", "other-one"]);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("other-one"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }
}
