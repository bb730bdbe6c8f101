//! The entries of one node generation as a replica holds them ([`Owned`]), within the
//! presence limits, and the diffs ([`Diffs`]) that changing them makes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bytes::Bytes;

use super::{Change, Diff};
use crate::{
    presence::wire::PresenceEntry,
    presence::{PresenceConfig, PresenceError},
};

/// Diffs being collected, one per topic.
#[derive(Default)]
pub(super) struct Diffs(BTreeMap<String, Diff>);

impl Diffs {
    fn entry(&mut self, topic: &str) -> &mut Diff {
        self.0.entry(topic.to_string()).or_insert_with(|| Diff {
            topic: topic.to_string(),
            ..Diff::default()
        })
    }
    pub(super) fn join(
        &mut self,
        topic: &str,
        node: &Arc<str>,
        (key, socket): &EntryKey,
        meta: &Bytes,
    ) {
        self.entry(topic)
            .joins
            .push(change(node, key, socket, meta));
    }
    pub(super) fn leave(
        &mut self,
        topic: &str,
        node: &Arc<str>,
        (key, socket): &EntryKey,
        meta: &Bytes,
    ) {
        self.entry(topic)
            .leaves
            .push(change(node, key, socket, meta));
    }
    pub(super) fn into_vec(self) -> Vec<Diff> {
        self.0.into_values().collect()
    }
}

pub(super) fn change(node: &Arc<str>, key: &str, socket: &str, meta: &Bytes) -> Change {
    Change {
        key: key.to_string(),
        node: node.clone(),
        socket: socket.to_string(),
        meta: meta.clone(),
    }
}

/// An entry's place within its topic: its key, then its socket.
pub(super) type EntryKey = (String, String);

/// The entries of one node generation, as a replica holds them.
#[derive(Debug)]
pub(super) struct Owned {
    pub(super) generation: u64,
    /// The number of the last delta applied (or of the state that replaced the entries).
    pub(super) seq: u64,
    pub(super) topics: BTreeMap<String, BTreeMap<EntryKey, Bytes>>,
    pub(super) len: usize,
    /// How many entries each socket has.
    pub(super) sockets: HashMap<String, usize>,
    /// A delta was missed: deltas are ignored until a state arrives.
    pub(super) awaiting_state: bool,
    /// A state being received, chunk by chunk.
    pub(super) pending: Option<Pending>,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) next_chunk: u32,
    pub(super) entries: Vec<PresenceEntry>,
}

impl Owned {
    pub(super) fn new(generation: u64) -> Self {
        Self {
            generation,
            seq: 0,
            topics: BTreeMap::new(),
            len: 0,
            sockets: HashMap::new(),
            awaiting_state: false,
            pending: None,
        }
    }

    pub(super) fn topic_len(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, BTreeMap::len)
    }

    pub(super) fn socket_len(&self, socket: &str) -> usize {
        self.sockets.get(socket).copied().unwrap_or(0)
    }

    /// Why a new entry of `socket` in `topic` does not fit, if it does not.
    pub(super) fn room_for(
        &self,
        limits: &PresenceConfig,
        topic: &str,
        socket: &str,
    ) -> Result<(), PresenceError> {
        if self.socket_len(socket) >= limits.max_per_socket {
            return Err(PresenceError::SocketFull {
                max: limits.max_per_socket,
            });
        }
        if self.topic_len(topic) >= limits.max_per_topic {
            return Err(PresenceError::TopicFull {
                topic: topic.to_string(),
                max: limits.max_per_topic,
            });
        }
        if self.len >= limits.max_per_node {
            return Err(PresenceError::NodeFull {
                max: limits.max_per_node,
            });
        }
        Ok(())
    }

    /// Put an entry, within the limits: whether it changed anything, or `Err` (nothing
    /// changed) when beyond the limits.
    pub(super) fn put(
        &mut self,
        limits: &PresenceConfig,
        node: &Arc<str>,
        e: PresenceEntry,
        diffs: &mut Diffs,
    ) -> Result<bool, ()> {
        if limits
            .check_entry(&e.topic, &e.key, &e.socket, &e.meta)
            .is_err()
        {
            return Err(());
        }
        let k = (e.key, e.socket);
        let exists = self
            .topics
            .get(&e.topic)
            .is_some_and(|t| t.contains_key(&k));
        if !exists && self.room_for(limits, &e.topic, &k.1).is_err() {
            return Err(());
        }
        let topic = self.topics.entry(e.topic.clone()).or_default();
        match topic.insert(k.clone(), e.meta.clone()) {
            Some(old) if old == e.meta => return Ok(false),
            Some(old) => {
                diffs.leave(&e.topic, node, &k, &old);
                diffs.join(&e.topic, node, &k, &e.meta);
            }
            None => {
                self.len += 1;
                *self.sockets.entry(k.1.clone()).or_default() += 1;
                diffs.join(&e.topic, node, &k, &e.meta);
            }
        }
        Ok(true)
    }

    pub(super) fn remove(
        &mut self,
        node: &Arc<str>,
        topic: &str,
        k: EntryKey,
        diffs: &mut Diffs,
    ) -> bool {
        let Some(t) = self.topics.get_mut(topic) else {
            return false;
        };
        let Some(meta) = t.remove(&k) else {
            return false;
        };
        if t.is_empty() {
            self.topics.remove(topic);
        }
        self.len -= 1;
        if let Some(n) = self.sockets.get_mut(&k.1) {
            *n -= 1;
            if *n == 0 {
                self.sockets.remove(&k.1);
            }
        }
        diffs.leave(topic, node, &k, &meta);
        true
    }

    pub(super) fn clear(&mut self, node: &Arc<str>, diffs: &mut Diffs) {
        for (topic, entries) in std::mem::take(&mut self.topics) {
            for (k, meta) in entries {
                diffs.leave(&topic, node, &k, &meta);
            }
        }
        self.len = 0;
        self.sockets.clear();
    }

    /// Replace every entry by `entries`, with the diff between the two.
    pub(super) fn replace(
        &mut self,
        limits: &PresenceConfig,
        node: &Arc<str>,
        entries: Vec<PresenceEntry>,
        diffs: &mut Diffs,
    ) -> u64 {
        let old = std::mem::take(&mut self.topics);
        self.len = 0;
        self.sockets.clear();
        let mut scratch = Diffs::default();
        let mut dropped = 0;
        for e in entries {
            if self.put(limits, node, e, &mut scratch).is_err() {
                dropped += 1;
            }
        }
        for (topic, entries) in &old {
            let new = self.topics.get(topic);
            for (k, meta) in entries {
                match new.and_then(|n| n.get(k)) {
                    Some(m) if m == meta => {}
                    _ => diffs.leave(topic, node, k, meta),
                }
            }
        }
        for (topic, entries) in &self.topics {
            let was = old.get(topic);
            for (k, meta) in entries {
                match was.and_then(|w| w.get(k)) {
                    Some(m) if m == meta => {}
                    _ => diffs.join(topic, node, k, meta),
                }
            }
        }
        dropped
    }
}
