//! Where the cluster-wide features start: [`ClusterAdapterCtr`] (either backend) and
//! [`Cluster`] (gossip) each start every feature once, on the node's bus
//! ([`crate::bus`]); a feature itself never asks which backend runs it.

use std::sync::Arc;

#[cfg(feature = "cluster-gossip")]
use crate::Cluster;
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
}
