//! The node's settings, read from the environment (the variables are listed in the
//! crate docs).

use std::net::SocketAddr;

use crate::BoxError;

/// Socket.IO settings that do not depend on the cluster backend.
pub(crate) struct SocketIoOptions {
    /// `PARSER=msgpack`: use the msgpack parser instead of the common JSON one.
    pub(crate) msgpack: bool,
    /// `MAX_BUFFER_SIZE`: per-socket buffer of outgoing packets. When a client reads
    /// slower than events are emitted to it, packets beyond this buffer are dropped
    /// (a local emit reports it; for a broadcast coming from another node the receiving
    /// node can only log it).
    pub(crate) max_buffer_size: Option<usize>,
}

impl SocketIoOptions {
    pub(crate) fn from_env() -> Result<Self, BoxError> {
        let msgpack = std::env::var("PARSER").is_ok_and(|p| p.eq_ignore_ascii_case("msgpack"));
        let max_buffer_size = match std::env::var("MAX_BUFFER_SIZE") {
            Ok(v) => Some(
                v.parse::<usize>()
                    .map_err(|e| format!("invalid MAX_BUFFER_SIZE {v:?}: {e}"))?,
            ),
            Err(_) => None,
        };
        Ok(Self {
            msgpack,
            max_buffer_size,
        })
    }
}

/// HTTP address from `BIND`, else `127.0.0.1:$PORT`, else `127.0.0.1:3000`.
pub(crate) fn http_addr() -> Result<SocketAddr, BoxError> {
    if let Ok(bind) = std::env::var("BIND") {
        return Ok(bind
            .parse()
            .map_err(|e| format!("invalid BIND {bind:?}: {e}"))?);
    }
    let port = match std::env::var("PORT") {
        Ok(p) => p
            .parse::<u16>()
            .map_err(|e| format!("invalid PORT {p:?}: {e}"))?,
        Err(_) => 3000,
    };
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Name of this node, as given to the cluster.
pub(crate) fn node_name() -> String {
    std::env::var("SOCKETIO_CLUSTER_NODE_NAME").unwrap_or_else(|_| "node".into())
}
