//! Where a node's two UDP sockets come from (feature `custom-network`).
//!
//! A node normally binds gossip and mesh sockets from the operating system. With this
//! feature, [`GossipAdapterConfig::with_network`](crate::GossipAdapterConfig::with_network)
//! hands it a [`Network`] instead, which is how a whole cluster runs on a simulated network
//! and clock (for example `turmoil`) so that a failing run replays exactly.
//!
//! This ties the caller to the `chitchat` and `quinn` versions this crate uses; they are
//! re-exported here so that an implementation names the same types.

use std::{future::Future, io, net::SocketAddr, pin::Pin, sync::Arc};

pub use chitchat;
pub use quinn;

/// A future that binds the mesh socket.
pub type BindMesh<'a> =
    Pin<Box<dyn Future<Output = io::Result<Arc<dyn quinn::AsyncUdpSocket>>> + Send + 'a>>;

/// The sockets a node uses, when they do not come from the operating system.
pub trait Network: Send + Sync + 'static {
    /// The transport gossip (chitchat) runs on.
    fn gossip(&self) -> &dyn chitchat::transport::Transport;
    /// Bind the UDP socket the QUIC mesh runs on, at `addr`.
    fn bind_mesh(&self, addr: SocketAddr) -> BindMesh<'_>;
    /// The quinn runtime driving the mesh endpoint (timers and tasks).
    fn runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(quinn::TokioRuntime)
    }
    /// A seed for the QUIC endpoint's own randomness (connection ids, reset tokens), so a
    /// simulated run can repeat; `None` draws it from the operating system.
    fn rng_seed(&self) -> Option<[u8; 32]> {
        None
    }
    /// The wall clock, read once at start to make the node's generation.
    fn wall_clock(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }
}

/// A [`Network`] held by a configuration.
#[derive(Clone)]
#[cfg_attr(not(feature = "custom-network"), allow(dead_code))]
pub(crate) struct Custom(pub(crate) Arc<dyn Network>);

impl std::fmt::Debug for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("custom network")
    }
}
