//! Configuration of the gossip backend: [`GossipAdapterConfig`].

use std::{fmt, net::SocketAddr, time::Duration};

pub use crate::keys::Secret;
use crate::{error::ConfigError, wire::DEFAULT_MAX_FRAME_SIZE};

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
    pub(crate) stream_buffer: usize,
    pub(crate) gossip_interval: Duration,
    pub(crate) max_frame_size: usize,
    pub(crate) peer_timeout: Duration,
    pub(crate) join_timeout: Duration,
    pub(crate) network: Option<crate::network::Custom>,
}

impl Default for GossipAdapterConfig {
    fn default() -> Self {
        Self {
            cluster_id: "socketioxide".into(),
            node_name: None,
            gossip_addr: SocketAddr::from(([0, 0, 0, 0], 7946)),
            gossip_advertise_addr: None,
            mesh_addr: SocketAddr::from(([0, 0, 0, 0], 7947)),
            mesh_advertise_addr: None,
            seeds: Vec::new(),
            auth: Auth::Missing,
            request_timeout: Duration::from_secs(5),
            ack_response_buffer: 255,
            stream_buffer: 1024,
            gossip_interval: Duration::from_millis(500),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            peer_timeout: Duration::from_secs(2),
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

    /// Nodes only gossip with nodes of the same cluster id. Default `socketioxide`.
    pub fn with_cluster_id(mut self, id: impl Into<String>) -> Self {
        self.cluster_id = id.into();
        self
    }

    /// The name of this node in the cluster. Default: a random name. Two live nodes must not
    /// share a name.
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
    /// Default 5 s.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Capacity of the channel receiving remote acks of one `emit_with_ack`. Default 255.
    pub fn with_ack_response_buffer(mut self, buffer: usize) -> Self {
        self.ack_response_buffer = buffer.max(1);
        self
    }

    /// Capacity of the outgoing queue to each peer, in frames. Default 1024.
    pub fn with_stream_buffer(mut self, buffer: usize) -> Self {
        self.stream_buffer = buffer.max(1);
        self
    }

    /// Interval between gossip rounds. Default 500 ms.
    pub fn with_gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval;
        self
    }

    /// Largest frame accepted from a peer. Default 16 MiB. A peer sending more is
    /// disconnected.
    pub fn with_max_frame_size(mut self, size: usize) -> Self {
        self.max_frame_size = size;
        self
    }

    /// How long a silent peer connection lives before it is considered dead (QUIC idle
    /// timeout; keep-alives are sent at a quarter of it). Pending requests stop waiting for
    /// such a peer. Default 2 s.
    pub fn with_peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
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
    pub fn with_network(mut self, network: impl crate::network::Network) -> Self {
        self.network = Some(crate::network::Custom(std::sync::Arc::new(network)));
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
    /// | `SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS` | request timeout |
    /// | `SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS` | gossip interval |
    /// | `SOCKETIO_CLUSTER_PEER_TIMEOUT_MS` | peer idle timeout |
    /// | `SOCKETIO_CLUSTER_JOIN_TIMEOUT_MS` | longest wait to join at start |
    /// | `SOCKETIO_CLUSTER_MAX_FRAME_SIZE` | largest frame in bytes |
    /// | `SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER` | ack buffer |
    /// | `SOCKETIO_CLUSTER_STREAM_BUFFER` | per-peer queue |
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Self::new();
        let addr = |k: &'static str| -> Result<Option<SocketAddr>, ConfigError> {
            get(k).map(|v| parse(k, &v)).transpose()
        };
        let ms = |k: &'static str| -> Result<Option<Duration>, ConfigError> {
            get(k)
                .map(|v| parse::<u64>(k, &v).map(Duration::from_millis))
                .transpose()
        };
        let num = |k: &'static str| -> Result<Option<usize>, ConfigError> {
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
        if let Some(d) = ms("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS")? {
            c.request_timeout = d;
        }
        if let Some(d) = ms("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS")? {
            c.gossip_interval = d;
        }
        if let Some(d) = ms("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS")? {
            c.peer_timeout = d;
        }
        if let Some(d) = ms("SOCKETIO_CLUSTER_JOIN_TIMEOUT_MS")? {
            c.join_timeout = d;
        }
        if let Some(n) = num("SOCKETIO_CLUSTER_MAX_FRAME_SIZE")? {
            c.max_frame_size = n;
        }
        if let Some(n) = num("SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER")? {
            c = c.with_ack_response_buffer(n);
        }
        if let Some(n) = num("SOCKETIO_CLUSTER_STREAM_BUFFER")? {
            c = c.with_stream_buffer(n);
        }
        Ok(c)
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
    fn secret_is_redacted_in_debug() {
        let c = GossipAdapterConfig::new().with_secrets(["hunter2-very-secret", "other-one"]);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("other-one"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }
}
