//! Where the cluster-wide features start: [`ClusterAdapterCtr`] (either backend) and
//! [`Cluster`] (gossip) each start every feature once, on the node's bus
//! ([`crate::bus`]); a feature itself never asks which backend runs it.

use std::sync::Arc;

#[cfg(feature = "cluster-gossip")]
use crate::Cluster;
#[cfg(all(feature = "sessions", feature = "cluster-gossip"))]
use crate::sessions::GossipSessionStore;
#[cfg(feature = "sessions")]
use crate::sessions::{ClusterSessionStore, SessionStoreConfig};
use crate::{
    ClusterAdapterCtr,
    bus::Bus,
    events::ServerEvents,
    presence::{Presence, PresenceConfig},
};

impl ClusterAdapterCtr {
    /// The bus of this node's backend.
    pub(crate) fn bus(&self) -> Arc<dyn Bus> {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(ctr) => ctr.cluster().bus(),
            #[cfg(feature = "redis")]
            Self::Redis(_, handle) => crate::bus::redis::RedisBus::of(handle),
        }
    }

    /// The server-to-server events of this node (see [`events`](crate::events)): over the
    /// mesh with gossip, over Redis pub/sub with Redis. Call it once per node, before the
    /// constructor goes to socketioxide, and keep (a clone of) the handle: its handlers run
    /// while it lives.
    pub fn server_events(&self) -> ServerEvents {
        ServerEvents::start(self.bus())
    }

    /// This node's cluster-wide presence (see [`presence`](crate::presence)), replicated
    /// over the mesh with gossip, over Redis pub/sub with Redis. Call it once per node.
    pub fn presence(&self, config: PresenceConfig) -> Presence {
        Presence::start(self.bus(), &config)
    }

    /// The login-session store of this backend (feature `sessions`): replicated over the
    /// mesh with gossip (on the bus), kept in Redis with Redis (Redis itself is the store:
    /// nothing to replicate, and `config` has no setting for it). Call it once per node.
    #[cfg(feature = "sessions")]
    pub fn session_store(&self, config: SessionStoreConfig) -> ClusterSessionStore {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(_) => {
                ClusterSessionStore::Gossip(GossipSessionStore::start(self.bus(), &config))
            }
            #[cfg(feature = "redis")]
            Self::Redis(_, handle) => {
                let _ = config;
                ClusterSessionStore::Redis(crate::sessions::RedisSessionStore::new(handle))
            }
        }
    }
}

#[cfg(feature = "cluster-gossip")]
impl Cluster {
    /// Start this node's server-to-server events (see [`events`](crate::events)). Start
    /// them once per node and keep (a clone of) the handle: a second start replaces the
    /// first, whose handlers stop receiving.
    pub fn server_events(&self) -> ServerEvents {
        ServerEvents::start(self.bus())
    }

    /// Start this node's presence (see [`presence`](crate::presence)). Start one per
    /// node: a second one replaces the first.
    pub fn presence(&self, config: PresenceConfig) -> Presence {
        Presence::start(self.bus(), &config)
    }

    /// Start this node's replicated session store (feature `sessions`; see
    /// [`sessions`](crate::sessions)). Start one per node: a second one replaces the first.
    #[cfg(feature = "sessions")]
    pub fn session_store(&self, config: SessionStoreConfig) -> GossipSessionStore {
        GossipSessionStore::start(self.bus(), &config)
    }
}
