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
//!
//! The files of the mesh:
//! - [`endpoint`]: the node's endpoint ([`Mesh`]), its socket, what it counts, its closing;
//! - [`accept`]: the loop that admits incoming connections, and the server side of the
//!   handshake; [`dial`]: connecting to a peer, the client side;
//! - [`handshake`]: the limits before and after the proof, the transports, the signed hello;
//! - [`link`]: an outgoing connection and its send queue; [`queue`]: the queues' byte
//!   budgets; [`writer`]: the task that writes a link's frames; [`reader`]: the task that
//!   reads a peer's frames;
//! - [`close`]: the close codes, and why a connection closed ([`Closed`]);
//! - [`admission`], [`auth`], [`tls`]: who may connect and how a peer proves the secret;
//!   [`links`], [`recverr`], [`sent`]: a crashed peer seen from the ICMP errors it causes;
//! - [`floor`]: quinn set up as the mesh sets it up, for the benchmark's floor.

mod accept;
pub(crate) mod admission;
pub(crate) mod auth;
mod close;
mod dial;
mod endpoint;
#[doc(hidden)]
pub mod floor;
mod handshake;
mod link;
mod links;
mod queue;
mod reader;
#[cfg(target_os = "linux")]
mod recverr;
mod sent;
mod tls;
mod writer;

use std::net::SocketAddr;

pub(crate) use crate::gossip::peer::PeerId;
use crate::gossip::wire::Frame;
#[cfg(doc)]
use crate::gossip::wire::Hello;
pub(crate) use admission::HANDSHAKE_TIMEOUT;
use auth::AuthError;
pub(crate) use close::{
    CLOSE_AUTH, CLOSE_LEAVING, CLOSE_PROTOCOL, CLOSE_REFUSED, CLOSE_SLOW, CLOSE_UNUSED, Closed,
};
pub(crate) use endpoint::{Clock, CustomSocket, Mesh};
pub(crate) use handshake::DEFAULT_PEER_TIMEOUT;
#[cfg(any(test, doc))]
pub(crate) use handshake::HANDSHAKE_WINDOW;
pub(crate) use link::{Link, Queue};
pub(crate) use queue::{Budgets, Charged, Cut, SendError, Sender};
pub(crate) use tls::TlsFiles;

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

#[cfg(test)]
pub(crate) mod tests;
