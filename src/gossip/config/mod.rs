//! Configuration of the gossip backend: [`GossipAdapterConfig`], its builder, defaults and
//! range checks (read from the environment in `env.rs`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use crate::gossip::keys::Secret;
use crate::{
    error::ConfigError,
    gossip::mesh::TlsFiles,
    gossip::wire::{DEFAULT_MAX_FRAME_SIZE, LEN_PREFIX},
    ranges,
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
            peer_timeout: crate::gossip::mesh::DEFAULT_PEER_TIMEOUT,
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

    /// Warn when the keys derived from the secrets are salted with the default cluster id:
    /// a cluster that keeps it shares its salt with every other that does, so that a guess
    /// at the secret tried against one is tried against all of them at once.
    pub(crate) fn warn_if_default_salt(&self) {
        let keyring = matches!(&self.auth, Auth::Secrets(secrets) if !secrets.is_empty());
        if keyring && self.cluster_id == DEFAULT_CLUSTER_ID {
            tracing::warn!(
                "the cluster id is the default one ({DEFAULT_CLUSTER_ID:?}): it salts the keys \
                 derived from the secret, and every deployment that keeps it shares that salt; \
                 give the cluster an id of its own (`with_cluster_id`, SOCKETIO_CLUSTER_ID), the \
                 same on every node"
            );
        }
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

mod env;
#[cfg(test)]
mod tests;
