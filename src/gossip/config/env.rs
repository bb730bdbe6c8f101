//! A [`GossipAdapterConfig`] read from the `SOCKETIO_CLUSTER_*` environment variables.

use std::net::SocketAddr;

use super::{Auth, GossipAdapterConfig, Secret};
use crate::{
    error::ConfigError,
    gossip::mesh::TlsFiles,
    ranges::{self, env_count, env_ms, parse},
};

impl GossipAdapterConfig {
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
