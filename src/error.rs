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
    /// A secret of the keyring is too short or too easy to guess.
    #[error(
        "the cluster secret is too weak: {reason}. Use at least 32 random characters, \
         for example the output of `openssl rand -hex 32`"
    )]
    WeakSecret {
        /// Which secret, and what is wrong with it.
        reason: String,
    },
    /// Keys could not be derived from the secret.
    #[error("cannot derive keys from the cluster secret: {0}")]
    KeyDerivation(String),
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
    /// A file of the cluster-CA mode (`with_tls_ca`, `SOCKETIO_CLUSTER_TLS_*`) is unreadable,
    /// is not what it should be, or does not fit the others.
    #[error("cluster TLS file {}: {reason}", path.display())]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration asks for a backend this binary was built without.
    #[error(
        "the {backend} backend was requested, but this binary was built without the \
         `{feature}` feature of socketioxide-cluster"
    )]
    FeatureDisabled {
        /// The backend asked for.
        backend: &'static str,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
    /// Redis could not be reached at start.
    #[error("cannot connect to Redis at {url}: {reason}")]
    Redis {
        /// The URL, credentials redacted.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why a cluster operation failed.
#[cfg(feature = "cluster-gossip")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A frame could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// The message is larger than the maximum frame size nodes accept.
    #[error(
        "message of {size} bytes exceeds the cluster's maximum frame size of {max} bytes \
         (GossipAdapterConfig::with_max_frame_size)"
    )]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A list of the message goes beyond the bound a node accepts from a peer (say, a
    /// client's event or answer with more binary attachments than that): nothing was sent.
    #[error("message holds {len} {what}, more than the {max} a node accepts from a peer")]
    OverBound {
        /// What the list holds (`"binary attachments"`, `"room names"`, ...).
        what: &'static str,
        /// How many it holds.
        len: usize,
        /// How many a node accepts.
        max: usize,
    },
    /// A node could not send its answer to this request (a list beyond a bound of the wire,
    /// or larger than a frame), and said why instead.
    #[error("node {node} could not send its answer: {reason}")]
    AnswerRefused {
        /// The node's name.
        node: String,
        /// Why, as that node tells it.
        reason: String,
    },
}

#[cfg(feature = "cluster-gossip")]
impl From<RequestError> for socketioxide_core::adapter::errors::AdapterError {
    fn from(e: RequestError) -> Self {
        Self(Box::new(e))
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An environment variable holds a value that does not parse.
    #[error("invalid {var}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric setting is outside the range that works.
    #[error("invalid {setting}: {value} is outside the allowed range {range}")]
    OutOfRange {
        /// The setting: its builder method and variable, or the variable it was read from.
        setting: String,
        /// The value given.
        value: String,
        /// The allowed range.
        range: String,
    },
}
