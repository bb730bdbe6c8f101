//! Errors.

use std::net::SocketAddr;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No secret was configured, and authentication was not explicitly turned off.
    #[error(
        "no cluster secret: set one with GossipAdapterConfig::with_secret (or \
         SOCKETIO_CLUSTER_SECRET), or call insecure_no_auth() to run without authentication"
    )]
    MissingSecret,
    /// The gossip UDP port could not be bound (in use, or not a local address).
    #[error("cannot start gossip on {addr}/UDP: {reason}")]
    GossipBind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The mesh UDP port could not be bound (in use, or not a local address).
    #[error("cannot bind the mesh to {addr}/UDP: {source}")]
    MeshBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A seed is not a usable address.
    #[error("unusable seed {seed:?}: {reason}")]
    Seed {
        /// The seed as given.
        seed: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A frame could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(#[from] postcard::Error),
}

impl From<RequestError> for socketioxide_core::adapter::errors::AdapterError {
    fn from(e: RequestError) -> Self {
        Self(Box::new(e))
    }
}
