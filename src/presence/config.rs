//! The settings of presence ([`PresenceConfig`]): its bounds, intervals and queue, the
//! check of one entry against them, and why an entry is refused ([`PresenceError`]).

use std::time::Duration;

#[cfg(doc)]
use super::Presence;

/// Longest topic, key or socket id, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Settings of presence. Give every node the same.
#[derive(Clone, Debug)]
pub struct PresenceConfig {
    pub(crate) max_per_socket: usize,
    pub(crate) max_per_topic: usize,
    pub(crate) max_per_node: usize,
    pub(crate) max_meta_bytes: usize,
    pub(crate) sweep_interval: Duration,
    pub(crate) announce_interval: Duration,
    pub(crate) queue: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            max_per_socket: 100,
            max_per_topic: 10_000,
            max_per_node: 100_000,
            max_meta_bytes: 1024,
            sweep_interval: Duration::from_millis(100),
            announce_interval: Duration::from_secs(1),
            queue: 4_096,
        }
    }
}

impl PresenceConfig {
    /// The defaults: 100 entries per socket, 10,000 per topic and 100,000 in all per node,
    /// metas up to 1 KiB, disconnected sockets swept every 100 ms, sequence announced every
    /// second, 4,096 messages queued for peers and diffs for subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Most entries of one socket (at least 1): its share of the node's entries, in every
    /// topic and under every key. Beyond it, [`Presence::track`] fails with
    /// [`PresenceError::SocketFull`] for that socket only.
    pub fn with_max_per_socket(mut self, max: usize) -> Self {
        self.max_per_socket = max.max(1);
        self
    }

    /// Most entries one node tracks in one topic (at least 1).
    pub fn with_max_per_topic(mut self, max: usize) -> Self {
        self.max_per_topic = max.max(1);
        self
    }

    /// Most entries one node tracks in all topics (at least 1).
    pub fn with_max_per_node(mut self, max: usize) -> Self {
        self.max_per_node = max.max(1);
        self
    }

    /// Largest meta, in bytes of JSON (at least 2, for `{}`; at most 64 KiB).
    pub fn with_max_meta_bytes(mut self, max: usize) -> Self {
        self.max_meta_bytes = max.clamp(2, 64 * 1024);
        self
    }

    /// How often this node looks for disconnected sockets to untrack (at least 1 ms).
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often this node announces its latest change number, so that a peer that missed
    /// its last change asks for its state (at least 10 ms).
    pub fn with_announce_interval(mut self, interval: Duration) -> Self {
        self.announce_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How many messages wait to be sent to peers, and how many diffs a subscriber may lag
    /// behind (at least 16). A message beyond it is dropped (and counted): peers then ask
    /// for the state. A subscriber that lags further misses diffs (logged).
    pub fn with_queue(mut self, queue: usize) -> Self {
        self.queue = queue.max(16);
        self
    }

    pub(crate) fn check_entry(
        &self,
        topic: &str,
        key: &str,
        socket: &str,
        meta: &[u8],
    ) -> Result<(), PresenceError> {
        for (what, s) in [("topic", topic), ("key", key), ("socket id", socket)] {
            if s.len() > MAX_NAME_BYTES {
                return Err(PresenceError::TooLong {
                    what,
                    len: s.len(),
                    max: MAX_NAME_BYTES,
                });
            }
        }
        if meta.len() > self.max_meta_bytes {
            return Err(PresenceError::TooLong {
                what: "meta",
                len: meta.len(),
                max: self.max_meta_bytes,
            });
        }
        Ok(())
    }
}

/// Why an entry could not be tracked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceError {
    /// The socket already has the most entries allowed for one socket.
    #[error(
        "this socket already has {max} presence entries, the most one socket may have \
         (PresenceConfig::with_max_per_socket)"
    )]
    SocketFull {
        /// The limit.
        max: usize,
    },
    /// This node already tracks the most entries allowed in the topic.
    #[error(
        "this node already tracks {max} entries in topic {topic:?} (PresenceConfig::with_max_per_topic)"
    )]
    TopicFull {
        /// The topic.
        topic: String,
        /// The limit.
        max: usize,
    },
    /// This node already tracks the most entries allowed.
    #[error("this node already tracks {max} entries (PresenceConfig::with_max_per_node)")]
    NodeFull {
        /// The limit.
        max: usize,
    },
    /// The topic, key, socket id or meta is too long, or the whole entry larger than a
    /// message between nodes (half the maximum frame size, at most 1 MiB).
    #[error("{what} of {len} bytes is longer than the limit of {max} bytes")]
    TooLong {
        /// `"topic"`, `"key"`, `"socket id"`, `"meta"` or `"entry"`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The meta could not be serialized to JSON.
    #[error("meta not serializable to JSON: {0}")]
    Meta(String),
    /// The socket is no longer connected.
    #[error("the socket is not connected")]
    NotConnected,
}
