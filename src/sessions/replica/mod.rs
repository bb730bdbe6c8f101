//! The replicated state of the session store, without I/O: the merge rule that makes
//! concurrent writes converge, bounded storage, expiry and tombstone purge, snapshot chunks.
//!
//! ## The merge rule
//!
//! Every write (a save or a delete) of a session carries a [`Version`]: the writer's wall
//! clock in ms, raised to one more than the version of the record it replaces when the
//! clock is behind it (a hybrid clock: a node's own writes of a session always order after
//! what it has seen of that session), and the writer's node name. Of two records of one
//! session, the one with the higher `(ts_ms, node)` wins; at an equal version a deletion
//! wins over a save, and two different saves (only possible with two nodes of the same
//! name) are ordered by their content. This is a total order, so applying the same records
//! in any order, any number of times, leaves every node with the same winner.
//!
//! A deletion is kept as a tombstone for [`tombstone_ttl`](Replica::new) so that an older
//! save still in flight cannot bring the session back. Only a record held gets one: a
//! deletion of an id this node does not hold leaves nothing behind (so deleting random ids
//! costs no memory).
//!
//! ## Bounds
//!
//! Live sessions and tombstones are bounded apart, so that neither can crowd out the other.
//! At `max_sessions`, a new session is refused ([`Applied::Full`], counted in
//! [`Replica::refused`]) once the expired ones are dropped: a live session is never evicted
//! for another (one client making the application create sessions would otherwise log real
//! users out), and a write of a session held always succeeds. Beyond `max_tombstones`, the
//! oldest tombstone is evicted and counted ([`Replica::evicted`]): a tombstone only guards a
//! deletion against an older save still in flight. A received record whose version is further ahead of this
//! node's clock than [`MAX_AHEAD_LIVE`] (a session) or [`MAX_AHEAD_DELETED`] (a tombstone)
//! is refused: a version at the end of time would win over every later write, log-outs
//! included. A deletion is allowed further ahead than a save, so that a log-out written
//! just after a save near the bound (one ms later) is still accepted everywhere.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use bytes::Bytes;

use super::wire::{self, SessionRecord, SessionState, Version};

/// How far ahead of this node's clock the version of a received session may be.
pub(crate) const MAX_AHEAD_LIVE: Duration = Duration::from_secs(5 * 60);
/// How far ahead of this node's clock the version of a received tombstone may be.
pub(crate) const MAX_AHEAD_DELETED: Duration = Duration::from_secs(10 * 60);

/// Whether `a` wins over `b`, two records of one session (see the module docs).
pub(crate) fn wins(a: &SessionRecord, b: &SessionRecord) -> bool {
    rank(a) > rank(b)
}

fn rank(r: &SessionRecord) -> (&Version, bool, i128, &[u8]) {
    match &r.state {
        SessionState::Live {
            expiry_unix_ns,
            data,
        } => (&r.version, false, *expiry_unix_ns, data),
        SessionState::Deleted => (&r.version, true, 0, &[]),
    }
}

/// What [`Replica::apply`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// A session this node did not hold.
    New,
    /// It won over the record held.
    Replaced,
    /// The record held wins, the record is already expired, or it deletes a session this
    /// node does not hold: nothing changed.
    Stale,
    /// Its version is too far ahead of this node's clock: refused.
    TooFarAhead,
    /// A session this node does not hold, while it holds `max_sessions` live ones: refused.
    Full,
}

/// Where a snapshot being sent stands: live sessions go first, by expiry, then tombstones,
/// by age; each chunk starts after the record the previous one ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Nothing sent yet.
    Start,
    /// After the live session `(expiry_unix_ns, id)`.
    Live(i128, i128),
    /// After the tombstone `(version ts_ms, id)`.
    Tombstone(u64, i128),
}

/// The records of one node.
#[derive(Debug)]
pub(crate) struct Replica {
    node: String,
    max_sessions: usize,
    max_tombstones: usize,
    tombstone_ttl_ms: u64,
    records: HashMap<i128, SessionRecord>,
    /// Live sessions by expiry: `(expiry_unix_ns, id)`.
    by_expiry: BTreeSet<(i128, i128)>,
    /// Tombstones by age: `(version ts_ms, id)`.
    by_age: BTreeSet<(u64, i128)>,
    /// Tombstones evicted to stay within the bound, since the replica started.
    evicted: u64,
    /// New sessions refused at the cap, since the replica started.
    refused: u64,
}

impl Replica {
    /// An empty replica of node `node`, holding at most `max_sessions` live sessions and
    /// `max_tombstones` tombstones, keeping tombstones for `tombstone_ttl`.
    pub(crate) fn new(
        node: impl Into<String>,
        max_sessions: usize,
        max_tombstones: usize,
        tombstone_ttl: Duration,
    ) -> Self {
        Self {
            node: node.into(),
            max_sessions: max_sessions.max(1),
            max_tombstones,
            tombstone_ttl_ms: u64::try_from(tombstone_ttl.as_millis()).unwrap_or(u64::MAX),
            records: HashMap::new(),
            by_expiry: BTreeSet::new(),
            by_age: BTreeSet::new(),
            evicted: 0,
            refused: 0,
        }
    }

    /// A write of session `id` by this node at `now_ms`, not applied yet: its version is
    /// later than any held for `id`.
    pub(crate) fn write(&self, id: i128, state: SessionState, now_ms: u64) -> SessionRecord {
        let held = self.records.get(&id);
        let ts_ms = held.map_or(now_ms, |r| now_ms.max(r.version.ts_ms.saturating_add(1)));
        SessionRecord {
            id,
            version: Version {
                ts_ms,
                node: self.node.clone(),
            },
            state,
        }
    }

    /// Merge a record received from a peer by the rule of the module docs; refused when
    /// its version is too far ahead of `now_ns`, this node's clock.
    pub(crate) fn apply(&mut self, record: SessionRecord, now_ns: i128) -> Applied {
        let ahead = match record.state {
            SessionState::Live { .. } => MAX_AHEAD_LIVE,
            SessionState::Deleted => MAX_AHEAD_DELETED,
        };
        let limit_ms = now_ns.saturating_add(ahead.as_nanos() as i128) / 1_000_000;
        if i128::from(record.version.ts_ms) > limit_ms {
            return Applied::TooFarAhead;
        }
        self.apply_own(record, now_ns)
    }

    /// Merge a record written by this node ([`Replica::write`]).
    pub(crate) fn apply_own(&mut self, record: SessionRecord, now_ns: i128) -> Applied {
        let id = record.id;
        let applied = match self.records.get(&id) {
            Some(held) if !wins(&record, held) => return Applied::Stale,
            Some(_) => Applied::Replaced,
            None if record.state == SessionState::Deleted || self.is_dead(&record, now_ns) => {
                return Applied::Stale;
            }
            None => Applied::New,
        };
        if applied == Applied::New && !self.room_for_a_session(now_ns) {
            self.refused += 1;
            return Applied::Full;
        }
        self.remove(id);
        self.insert(record);
        self.evict_tombstones_beyond_bound(id);
        applied
    }

    /// Whether a new live session fits, once the expired ones are dropped.
    fn room_for_a_session(&mut self, now_ns: i128) -> bool {
        while self.by_expiry.len() >= self.max_sessions {
            match self.by_expiry.first() {
                Some(&(expiry, id)) if expiry <= now_ns => {
                    self.remove(id);
                }
                _ => return false,
            }
        }
        true
    }

    fn insert(&mut self, record: SessionRecord) {
        match &record.state {
            SessionState::Live { expiry_unix_ns, .. } => {
                self.by_expiry.insert((*expiry_unix_ns, record.id));
            }
            SessionState::Deleted => {
                self.by_age.insert((record.version.ts_ms, record.id));
            }
        }
        self.records.insert(record.id, record);
    }

    fn remove(&mut self, id: i128) -> Option<SessionRecord> {
        let record = self.records.remove(&id)?;
        match &record.state {
            SessionState::Live { expiry_unix_ns, .. } => {
                self.by_expiry.remove(&(*expiry_unix_ns, id));
            }
            SessionState::Deleted => {
                self.by_age.remove(&(record.version.ts_ms, id));
            }
        }
        Some(record)
    }

    /// Evict the oldest tombstones beyond their bound, never `keep` (the record just
    /// written). Live sessions are never evicted: a new one beyond theirs is refused.
    fn evict_tombstones_beyond_bound(&mut self, keep: i128) {
        while self.by_age.len() > self.max_tombstones {
            let Some(&(_, id)) = self.by_age.iter().find(|(_, id)| *id != keep) else {
                break;
            };
            self.remove(id);
            self.evicted += 1;
        }
    }

    /// The live session `id` at `now_ns`: its expiry (ns since the Unix epoch) and data.
    pub(crate) fn get(&self, id: i128, now_ns: i128) -> Option<(i128, &Bytes)> {
        match &self.records.get(&id)?.state {
            SessionState::Live {
                expiry_unix_ns,
                data,
            } if *expiry_unix_ns > now_ns => Some((*expiry_unix_ns, data)),
            _ => None,
        }
    }

    /// Whether any record (a session or a tombstone) of `id` is held.
    pub(crate) fn holds(&self, id: i128) -> bool {
        self.records.contains_key(&id)
    }

    /// Drop expired sessions and tombstones older than the tombstone TTL; returns how many
    /// of each.
    pub(crate) fn purge(&mut self, now_ns: i128) -> (usize, usize) {
        let expired: Vec<i128> = self
            .by_expiry
            .iter()
            .take_while(|(expiry, _)| *expiry <= now_ns)
            .map(|(_, id)| *id)
            .collect();
        let ttl = self.tombstone_ttl_ms;
        let old: Vec<i128> = self
            .by_age
            .iter()
            .take_while(|(ts_ms, _)| tombstone_expired(*ts_ms, ttl, now_ns))
            .map(|(_, id)| *id)
            .collect();
        for id in expired.iter().chain(&old) {
            self.remove(*id);
        }
        (expired.len(), old.len())
    }

    /// The next chunk of a snapshot, after `cursor`: the records worth sending to a node
    /// that catches up (live sessions, then tombstones), at most
    /// [`MAX_RECORDS`](wire::MAX_RECORDS) of them, whose encoding stays within
    /// `budget` bytes; and where the next chunk starts, `None` after the last. A record
    /// alone larger than the budget (held from a peer with a larger frame size) is left
    /// out and counted in the third element. Records written meanwhile reach the peer on
    /// their own, as every write does: the chunks need not be taken at one instant.
    pub(crate) fn snapshot_chunk(
        &self,
        cursor: Cursor,
        now_ns: i128,
        budget: usize,
    ) -> (Vec<SessionRecord>, Option<Cursor>, usize) {
        use std::ops::Bound::{Excluded, Unbounded};
        let live = match cursor {
            Cursor::Start => Some(self.by_expiry.range(..)),
            Cursor::Live(expiry, id) => {
                Some(self.by_expiry.range((Excluded((expiry, id)), Unbounded)))
            }
            Cursor::Tombstone(..) => None,
        };
        let tombstones = match cursor {
            Cursor::Tombstone(ts, id) => self.by_age.range((Excluded((ts, id)), Unbounded)),
            _ => self.by_age.range(..),
        };
        let next = live
            .into_iter()
            .flatten()
            .map(|&(expiry, id)| (Cursor::Live(expiry, id), id))
            .chain(tombstones.map(|&(ts, id)| (Cursor::Tombstone(ts, id), id)));
        let mut chunk = Vec::new();
        let mut used = CHUNK_OVERHEAD;
        let mut at = cursor;
        let mut too_large = 0;
        for (position, id) in next {
            let Some(record) = self.records.get(&id).filter(|r| !self.is_dead(r, now_ns)) else {
                at = position;
                continue;
            };
            let size = record_size(record);
            if size.saturating_add(CHUNK_OVERHEAD) > budget {
                too_large += 1;
                at = position;
                continue;
            }
            if used + size > budget || chunk.len() >= wire::MAX_RECORDS {
                return (chunk, Some(at), too_large);
            }
            used += size;
            chunk.push(record.clone());
            at = position;
        }
        (chunk, None, too_large)
    }

    /// How many records (sessions and tombstones) are held.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// How many live sessions and tombstones are held.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.by_expiry.len(), self.by_age.len())
    }

    /// How many tombstones were evicted to stay within their bound.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The most live sessions held.
    pub(crate) fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// How many new sessions were refused at the cap.
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }

    /// An expired session, or a tombstone past its TTL.
    fn is_dead(&self, r: &SessionRecord, now_ns: i128) -> bool {
        match &r.state {
            SessionState::Live { expiry_unix_ns, .. } => *expiry_unix_ns <= now_ns,
            SessionState::Deleted => {
                tombstone_expired(r.version.ts_ms, self.tombstone_ttl_ms, now_ns)
            }
        }
    }
}

fn tombstone_expired(ts_ms: u64, ttl_ms: u64, now_ns: i128) -> bool {
    i128::from(ts_ms.saturating_add(ttl_ms)) * 1_000_000 <= now_ns
}

/// Room for the message and list headers around the records of a snapshot chunk.
const CHUNK_OVERHEAD: usize = 16;

/// The encoded size of `record`.
fn record_size(record: &SessionRecord) -> usize {
    crate::codec::encode_body(record).map_or(usize::MAX, |b| b.len())
}

/// Whether `record` fits a snapshot chunk of `budget` bytes: a record that does not could be
/// saved, but would never reach a node that catches up.
pub(crate) fn fits_a_chunk(record: &SessionRecord, budget: usize) -> Result<(), usize> {
    let size = record_size(record);
    if size.saturating_add(CHUNK_OVERHEAD) > budget {
        return Err(size);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
