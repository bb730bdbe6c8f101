//! The replicated state of presence, without I/O: each node's own entries, the copies of
//! every other node's, and the rules that make the copies converge.
//!
//! ## Ownership and order
//!
//! A node only ever changes its own entries. It numbers its changes (a [`PresenceMsg::Delta`]
//! per number, from 1, for one generation of the node); a replica applies a node's deltas in
//! that order only. A delta that skips a number (one was lost: a full peer queue drops
//! frames) makes the replica stop applying that node's deltas and ask for its state; the
//! state (in chunks) replaces everything held of that node, and deltas resume after its
//! number. A node also announces its latest number periodically ([`PresenceMsg::Seq`]), so
//! that a lost last delta is noticed too. A restarted node (a new generation) replaces what
//! was held of the old one.
//!
//! When a node leaves or is found dead, all its entries are removed and it is remembered as
//! gone, so that a message of it still in flight cannot bring them back; it is forgotten
//! when it joins again, and then sends its state. Since each node's entries are written by
//! that node alone, replicas that received the same deltas and states hold the same entries:
//! there is nothing to merge.
//!
//! ## Bounds
//!
//! A socket has at most `max_per_socket` entries, and a node at most `max_per_topic` in one
//! topic and `max_per_node` in all; a local track beyond them is refused with a
//! [`PresenceError`], and nothing is evicted for it. What peers send is held to the same
//! bounds (and to the size limits of topics, keys, socket ids and metas), each entry as it
//! arrives, state chunks included: what is beyond them is dropped and counted
//! ([`Replica::dropped`]). At most [`MAX_ORIGINS`] other nodes are
//! held and [`MAX_GONE`] gone ones remembered.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use bytes::Bytes;

use super::{PresenceConfig, PresenceError};
use crate::presence::wire::{MAX_ITEMS, PresenceEntry, PresenceMsg, PresenceOp};
use owned::{Diffs, Owned, Pending, change};

mod owned;

/// Most other nodes whose entries a replica holds.
pub(crate) const MAX_ORIGINS: usize = 4_096;
/// Most gone nodes a replica remembers.
pub(crate) const MAX_GONE: usize = 1_024;
/// Bytes counted per entry on top of its strings, when cutting state chunks.
const ENTRY_OVERHEAD: usize = 16;

/// A node generation, the owner of entries: a node as the bus names it (a restarted node
/// has a new, higher generation).
pub(crate) use crate::bus::NodeId as Origin;

/// One entry seen in a diff or a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) key: String,
    pub(crate) node: Arc<str>,
    pub(crate) socket: String,
    pub(crate) meta: Bytes,
}

/// What changed in one topic: entries that appeared (or whose meta changed: the old one
/// is a leave, the new one a join) and entries that disappeared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    pub(crate) topic: String,
    pub(crate) joins: Vec<Change>,
    pub(crate) leaves: Vec<Change>,
}

fn op_size(op: &PresenceOp) -> usize {
    ENTRY_OVERHEAD
        + match op {
            PresenceOp::Put(e) => e.topic.len() + e.key.len() + e.socket.len() + e.meta.len(),
            PresenceOp::Remove { topic, key, socket } => topic.len() + key.len() + socket.len(),
        }
}

/// What a replica wants done after taking in a message.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reaction {
    /// Changes to the entries held, for subscribers.
    pub(crate) diffs: Vec<Diff>,
    /// Ask the sender for its state.
    pub(crate) request_state: bool,
    /// Send this node's state to the sender.
    pub(crate) send_state: bool,
    /// Items of the message dropped (beyond a bound, or from a node that is gone or stale),
    /// with the reason.
    pub(crate) dropped: Option<(u64, &'static str)>,
}

/// Presence as one node holds it (see the module docs).
#[derive(Debug)]
pub(crate) struct Replica {
    me: Origin,
    limits: PresenceConfig,
    /// About the most bytes of entries in one message.
    budget: usize,
    /// Every node's entries, this node's included.
    nodes: BTreeMap<Arc<str>, Owned>,
    gone: VecDeque<Origin>,
    dropped: u64,
}

impl Replica {
    /// A replica of the node `me`, its messages of about `budget` bytes at most.
    pub(crate) fn new(me: Origin, limits: PresenceConfig, budget: usize) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(me.name.clone(), Owned::new(me.generation));
        Self {
            me,
            limits,
            budget,
            nodes,
            gone: VecDeque::new(),
            dropped: 0,
        }
    }

    /// This node's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.me.name
    }

    /// Items received from peers and dropped since the replica started.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Count items of peers dropped before they reached the replica (say, a message that
    /// does not decode).
    pub(crate) fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    fn own(&mut self) -> &mut Owned {
        self.nodes
            .entry(self.me.name.clone())
            .or_insert_with(|| Owned::new(self.me.generation))
    }

    /// This node's latest sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.nodes.get(&self.me.name).map_or(0, |o| o.seq)
    }

    /// Track (or update the meta of) an entry of this node: the deltas to send and the diffs.
    pub(crate) fn track(
        &mut self,
        topic: &str,
        key: &str,
        socket: &str,
        meta: Bytes,
    ) -> Result<(Vec<PresenceMsg>, Vec<Diff>), PresenceError> {
        self.limits.check_entry(topic, key, socket, &meta)?;
        // An entry larger than a message could be tracked here but never reach a peer.
        let size = ENTRY_OVERHEAD + topic.len() + key.len() + socket.len() + meta.len();
        if size > self.budget {
            return Err(PresenceError::TooLong {
                what: "entry",
                len: size,
                max: self.budget,
            });
        }
        let limits = self.limits.clone();
        let own = self.own();
        let exists = own
            .topics
            .get(topic)
            .is_some_and(|t| t.contains_key(&(key.to_string(), socket.to_string())));
        if !exists {
            own.room_for(&limits, topic, socket)?;
        }
        Ok(self.local(vec![PresenceOp::Put(PresenceEntry {
            topic: topic.to_string(),
            key: key.to_string(),
            socket: socket.to_string(),
            meta,
        })]))
    }

    /// Untrack entries of this node (`(topic, key, socket)`); those not tracked are skipped.
    pub(crate) fn untrack(
        &mut self,
        entries: impl IntoIterator<Item = (String, String, String)>,
    ) -> (Vec<PresenceMsg>, Vec<Diff>) {
        let ops = entries
            .into_iter()
            .map(|(topic, key, socket)| PresenceOp::Remove { topic, key, socket })
            .collect();
        self.local(ops)
    }

    /// Apply changes of this node's own entries: one delta per [`MAX_ITEMS`] changes that
    /// changed something.
    fn local(&mut self, ops: Vec<PresenceOp>) -> (Vec<PresenceMsg>, Vec<Diff>) {
        let limits = self.limits.clone();
        let node = self.me.name.clone();
        let budget = self.budget;
        let own = self.own();
        let mut diffs = Diffs::default();
        let mut applied = Vec::new();
        for op in ops {
            let changed = match &op {
                PresenceOp::Put(e) => own.put(&limits, &node, e.clone(), &mut diffs) == Ok(true),
                PresenceOp::Remove { topic, key, socket } => {
                    own.remove(&node, topic, (key.clone(), socket.clone()), &mut diffs)
                }
            };
            if changed {
                applied.push(op);
            }
        }
        let mut msgs = Vec::new();
        let mut ops = Vec::new();
        let mut size = 0;
        for op in applied {
            let n = op_size(&op);
            if !ops.is_empty() && (ops.len() >= MAX_ITEMS || size + n > budget) {
                own.seq += 1;
                msgs.push(PresenceMsg::Delta {
                    seq: own.seq,
                    ops: std::mem::take(&mut ops),
                });
                size = 0;
            }
            size += n;
            ops.push(op);
        }
        if !ops.is_empty() {
            own.seq += 1;
            msgs.push(PresenceMsg::Delta { seq: own.seq, ops });
        }
        (msgs, diffs.into_vec())
    }

    /// This node's entries as state chunks, each of at most [`MAX_ITEMS`] entries and about
    /// `budget` bytes (one entry larger than it makes a chunk of its own).
    pub(crate) fn own_state(&self, budget: usize) -> Vec<PresenceMsg> {
        let Some(own) = self.nodes.get(&self.me.name) else {
            return Vec::new();
        };
        let mut chunks: Vec<Vec<PresenceEntry>> = vec![Vec::new()];
        let mut size = 0;
        for (topic, entries) in &own.topics {
            for ((key, socket), meta) in entries {
                let n = topic.len() + key.len() + socket.len() + meta.len() + ENTRY_OVERHEAD;
                let last = chunks.last().map_or(0, Vec::len);
                if last > 0 && (last >= MAX_ITEMS || size + n > budget) {
                    chunks.push(Vec::new());
                    size = 0;
                }
                size += n;
                if let Some(c) = chunks.last_mut() {
                    c.push(PresenceEntry {
                        topic: topic.clone(),
                        key: key.clone(),
                        socket: socket.clone(),
                        meta: meta.clone(),
                    });
                }
            }
        }
        let n = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, entries)| PresenceMsg::State {
                seq: own.seq,
                chunk: u32::try_from(i).unwrap_or(u32::MAX),
                last: i + 1 == n,
                entries,
            })
            .collect()
    }

    /// The announcement of this node's latest sequence number.
    pub(crate) fn seq_msg(&self) -> PresenceMsg {
        PresenceMsg::Seq(self.seq())
    }

    /// The entries of `from` to apply a message to, creating them for a node seen first;
    /// `None` (with the reason) when its messages are not taken: it is this node's name,
    /// it is gone, it is an older generation than the one held, or too many nodes are held.
    fn origin(&mut self, from: &Origin, diffs: &mut Diffs) -> Result<&mut Owned, &'static str> {
        if from.name == self.me.name {
            return Err("a peer with this node's own name");
        }
        if self
            .gone
            .iter()
            .any(|g| g.name == from.name && g.generation >= from.generation)
        {
            return Err("from a node that left");
        }
        match self.nodes.get(&from.name).map(|o| o.generation) {
            Some(g) if g > from.generation => return Err("from an older generation of the node"),
            Some(g) if g < from.generation => {
                // Restarted: the old generation's entries go.
                if let Some(mut old) = self.nodes.remove(&from.name) {
                    old.clear(&from.name, diffs);
                }
            }
            Some(_) => {}
            None if self.nodes.len() > MAX_ORIGINS => return Err("too many nodes held"),
            None => {}
        }
        Ok(self
            .nodes
            .entry(from.name.clone())
            .or_insert_with(|| Owned::new(from.generation)))
    }

    /// Take in a message of the node `from`.
    pub(crate) fn on_message(&mut self, from: &Origin, msg: PresenceMsg) -> Reaction {
        let mut reaction = Reaction::default();
        if msg == PresenceMsg::StateRequest {
            reaction.send_state = true;
            return reaction;
        }
        let limits = self.limits.clone();
        let mut diffs = Diffs::default();
        let items = match &msg {
            PresenceMsg::Delta { ops, .. } => ops.len(),
            PresenceMsg::State { entries, .. } => entries.len(),
            _ => 0,
        };
        let mut dropped = 0;
        let mut reason = "";
        match self.origin(from, &mut diffs) {
            Err(why) => {
                dropped = items as u64;
                reason = why;
            }
            Ok(o) => match msg {
                PresenceMsg::Delta { seq, ops } => {
                    if o.awaiting_state || seq <= o.seq {
                        // Covered by the state awaited, or already applied.
                    } else if seq == o.seq + 1 {
                        o.seq = seq;
                        for op in ops {
                            let ok = match op {
                                PresenceOp::Put(e) => {
                                    o.put(&limits, &from.name, e, &mut diffs).is_ok()
                                }
                                PresenceOp::Remove { topic, key, socket } => {
                                    o.remove(&from.name, &topic, (key, socket), &mut diffs);
                                    true
                                }
                            };
                            if !ok {
                                dropped += 1;
                                reason = "beyond the presence limits";
                            }
                        }
                    } else {
                        o.awaiting_state = true;
                        reaction.request_state = true;
                    }
                }
                PresenceMsg::Seq(seq) => {
                    if o.awaiting_state || seq > o.seq {
                        o.awaiting_state = true;
                        reaction.request_state = true;
                    }
                }
                PresenceMsg::State {
                    seq,
                    chunk,
                    last,
                    entries,
                } => {
                    let room = limits.max_per_node;
                    let pending = match o.pending.take() {
                        _ if chunk == 0 => Some(Pending {
                            seq,
                            next_chunk: 0,
                            entries: Vec::new(),
                        }),
                        Some(p) if p.seq == seq && p.next_chunk == chunk => Some(p),
                        _ => {
                            // A chunk out of order: that state is lost, ask again.
                            dropped += entries.len() as u64;
                            reason = "a state chunk out of order";
                            o.awaiting_state = true;
                            reaction.request_state = true;
                            None
                        }
                    };
                    if let Some(mut p) = pending {
                        // Checked as they arrive: what is beyond the bounds is never held.
                        for e in entries {
                            let fits = limits
                                .check_entry(&e.topic, &e.key, &e.socket, &e.meta)
                                .is_ok();
                            if fits && p.entries.len() < room {
                                p.entries.push(e);
                            } else {
                                dropped += 1;
                                reason = "beyond the presence limits";
                            }
                        }
                        p.next_chunk = chunk.saturating_add(1);
                        if !last {
                            o.pending = Some(p);
                        } else if p.seq >= o.seq || o.awaiting_state {
                            dropped += o.replace(&limits, &from.name, p.entries, &mut diffs);
                            if dropped > 0 {
                                reason = "beyond the presence limits";
                            }
                            o.seq = p.seq;
                            o.awaiting_state = false;
                        }
                    }
                }
                PresenceMsg::StateRequest => {}
            },
        }
        if dropped > 0 {
            self.dropped += dropped;
            reaction.dropped = Some((dropped, reason));
        }
        reaction.diffs = diffs.into_vec();
        reaction
    }

    /// The node `who` left or was found dead: its entries go, and its messages are no longer
    /// taken until it joins again.
    pub(crate) fn left(&mut self, who: &Origin) -> Vec<Diff> {
        let mut diffs = Diffs::default();
        if who.name == self.me.name {
            return Vec::new();
        }
        if let Some(o) = self.nodes.get(&who.name)
            && o.generation <= who.generation
            && let Some(mut o) = self.nodes.remove(&who.name)
        {
            o.clear(&who.name, &mut diffs);
        }
        self.gone.retain(|g| g.name != who.name);
        if self.gone.len() >= MAX_GONE {
            self.gone.pop_front();
        }
        self.gone.push_back(who.clone());
        diffs.into_vec()
    }

    /// The node `who` joined (again): its messages are taken again.
    pub(crate) fn joined(&mut self, who: &Origin) {
        self.gone
            .retain(|g| !(g.name == who.name && g.generation <= who.generation));
    }

    /// The entries of `topic`, by key, then node, then socket.
    pub(crate) fn list(&self, topic: &str) -> Vec<Change> {
        let mut out: Vec<Change> = self
            .nodes
            .iter()
            .filter_map(|(node, o)| Some((node, o.topics.get(topic)?)))
            .flat_map(|(node, entries)| {
                entries
                    .iter()
                    .map(move |((key, socket), meta)| change(node, key, socket, meta))
            })
            .collect();
        out.sort_by(|a, b| (&a.key, &a.node, &a.socket).cmp(&(&b.key, &b.node, &b.socket)));
        out
    }

    /// Every entry held, by node, topic, key and socket (for tests and checks).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn view(&self) -> BTreeMap<(Arc<str>, String, String, String), Bytes> {
        let mut out = BTreeMap::new();
        for (node, o) in &self.nodes {
            for (topic, entries) in &o.topics {
                for ((key, socket), meta) in entries {
                    out.insert(
                        (node.clone(), topic.clone(), key.clone(), socket.clone()),
                        meta.clone(),
                    );
                }
            }
        }
        out
    }

    /// How many entries are held, of every node.
    pub(crate) fn len(&self) -> usize {
        self.nodes.values().map(|o| o.len).sum()
    }
}

#[cfg(test)]
mod convergence_tests;
#[cfg(test)]
mod tests;
