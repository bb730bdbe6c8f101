//! How a mesh connection ends: the close codes a node sends its peer, and why a connection
//! closed ([`Closed`]) as the layer above is told it.

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
/// [`Inbound::on_peer_connected`](super::Inbound::on_peer_connected)).
pub(crate) const CLOSE_REFUSED: u32 = 5;
/// Close code: the peer took no byte of what was sent to it for the peer timeout while its
/// connection stayed alive, or fell so far behind that its send queue went past its byte
/// budget (a slow consumer, as NATS calls it).
pub(crate) const CLOSE_SLOW: u32 = 7;

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
