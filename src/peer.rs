//! Who a node is: its name and its generation. On gossip, proven by a peer over the mesh
//! and announced in gossip; on Redis, named by the node's channel on the bus. A leaf every
//! layer names.

use std::{fmt, sync::Arc};

/// A node's identity: its name and generation (a restarted node is a new peer).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PeerId {
    /// Node name.
    pub(crate) name: Arc<str>,
    /// Generation: when the node started (gossip: its process, in ms since the Unix epoch;
    /// Redis: its bus, in ns), so that a restarted node has a higher one.
    pub(crate) generation: u64,
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.generation)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
