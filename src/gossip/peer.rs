//! Who a node is: its name and its generation. Proven by a peer over the mesh, announced
//! in gossip; a leaf every layer names.

use std::{fmt, sync::Arc};

/// A node's identity: its name and generation (a restarted node is a new peer).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PeerId {
    /// Node name.
    pub(crate) name: Arc<str>,
    /// Generation: start time of the process, in ms since the Unix epoch.
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
