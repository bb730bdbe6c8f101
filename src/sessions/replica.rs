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

use crate::gossip::wire::{
    self,
    sessions::{SessionRecord, SessionState, Version},
};

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
    /// [`MAX_RECORDS`](wire::sessions::MAX_RECORDS) of them, whose encoding stays within
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
            if used + size > budget || chunk.len() >= wire::sessions::MAX_RECORDS {
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
    wire::encode_body(record).map_or(usize::MAX, |b| b.len())
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
mod tests {
    use super::*;
    use crate::gossip::wire::sessions::SessionMsg;
    use proptest::prelude::*;

    const HOUR_NS: i128 = 3_600_000_000_000;

    fn live(id: i128, ts_ms: u64, node: &str, data: &str) -> SessionRecord {
        SessionRecord {
            id,
            version: Version {
                ts_ms,
                node: node.into(),
            },
            state: SessionState::Live {
                expiry_unix_ns: i128::from(ts_ms) * 1_000_000 + HOUR_NS,
                data: Bytes::copy_from_slice(data.as_bytes()),
            },
        }
    }

    fn deleted(id: i128, ts_ms: u64, node: &str) -> SessionRecord {
        SessionRecord {
            id,
            version: Version {
                ts_ms,
                node: node.into(),
            },
            state: SessionState::Deleted,
        }
    }

    fn replica(node: &str) -> Replica {
        Replica::new(node, 100, 100, Duration::from_secs(60))
    }

    fn data(r: &Replica, id: i128, now_ns: i128) -> Option<String> {
        r.get(id, now_ns)
            .map(|(_, d)| String::from_utf8(d.to_vec()).unwrap())
    }

    #[test]
    fn the_later_write_wins_then_the_node_name_then_a_deletion() {
        assert!(wins(&live(1, 2, "a", "x"), &live(1, 1, "z", "y")));
        assert!(wins(&live(1, 2, "b", "x"), &live(1, 2, "a", "y")));
        assert!(wins(&deleted(1, 2, "a"), &live(1, 2, "a", "y")));
        assert!(
            !wins(&deleted(1, 1, "a"), &live(1, 2, "a", "y")),
            "older delete loses"
        );
        let (a, b) = (live(1, 2, "a", "x"), live(1, 2, "a", "y"));
        assert!(
            wins(&a, &b) != wins(&b, &a),
            "same version: still one winner"
        );
    }

    #[test]
    fn a_local_write_orders_after_what_the_node_has_seen_even_with_a_slow_clock() {
        let mut r = replica("slow");
        r.apply(live(1, 5_000, "fast", "theirs"), 0);
        let mine = r.write(1, SessionState::Deleted, 1_000);
        assert_eq!(mine.version.ts_ms, 5_001);
        assert_eq!(r.apply(mine, 0), Applied::Replaced);
        assert_eq!(data(&r, 1, 0), None);
    }

    #[test]
    fn a_tombstone_beats_an_older_save_arriving_late() {
        let mut r = replica("a");
        assert_eq!(r.apply(live(1, 5, "c", "first"), 0), Applied::New);
        assert_eq!(r.apply(deleted(1, 10, "b"), 0), Applied::Replaced);
        assert_eq!(r.apply(live(1, 9, "c", "old"), 0), Applied::Stale);
        assert_eq!(data(&r, 1, 0), None);
        assert_eq!(r.apply(live(1, 11, "c", "new"), 0), Applied::Replaced);
        assert_eq!(data(&r, 1, 0).as_deref(), Some("new"));
    }

    #[test]
    fn expiry_hides_then_purge_removes_sessions_and_old_tombstones() {
        let mut r = Replica::new("a", 100, 100, Duration::from_millis(10));
        r.apply(live(1, 0, "a", "x"), 0);
        r.apply(live(2, 0, "a", "x"), 0);
        r.apply(deleted(2, 0, "b"), 0);
        assert!(data(&r, 1, HOUR_NS - 1).is_some());
        assert!(data(&r, 1, HOUR_NS).is_none(), "expired: not loaded");
        assert_eq!(r.purge(5_000_000), (0, 0), "tombstone younger than its TTL");
        assert_eq!(r.purge(HOUR_NS), (1, 1));
        assert_eq!(r.len(), 0);
        assert_eq!(
            r.apply(live(3, 0, "b", "x"), HOUR_NS),
            Applied::Stale,
            "arrives expired"
        );
        assert_eq!(r.snapshot_chunk(Cursor::Start, HOUR_NS, 1 << 20).0, vec![]);
    }

    #[test]
    fn deleting_an_id_not_held_leaves_nothing() {
        let mut r = replica("a");
        for id in 0..1_000 {
            let del = r.write(id, SessionState::Deleted, 1);
            assert_eq!(r.apply_own(del, 0), Applied::Stale);
            assert_eq!(r.apply(deleted(id, 1, "b"), 0), Applied::Stale);
        }
        assert_eq!(
            r.len(),
            0,
            "a flood of log-outs of random ids costs no memory"
        );
    }

    /// At the cap a new session is refused, whoever wrote it, and counted; a write of a
    /// session held still succeeds; an expired session makes room.
    #[test]
    fn at_the_cap_a_new_session_is_refused_and_no_live_one_evicted() {
        let mut r = Replica::new("a", 2, 100, Duration::from_secs(60));
        let expiring = |id, expiry_ns| SessionRecord {
            state: SessionState::Live {
                expiry_unix_ns: expiry_ns,
                data: Bytes::new(),
            },
            ..live(id, 1, "a", "")
        };
        r.apply(expiring(1, 3 * HOUR_NS), 0);
        r.apply(expiring(2, HOUR_NS), 0);
        let third = r.write(
            3,
            SessionState::Live {
                expiry_unix_ns: 2 * HOUR_NS,
                data: Bytes::new(),
            },
            1,
        );
        assert_eq!(r.apply_own(third, 0), Applied::Full);
        assert_eq!(
            r.apply(expiring(4, 4 * HOUR_NS), 0),
            Applied::Full,
            "from a peer too"
        );
        assert!(r.get(1, 0).is_some() && r.get(2, 0).is_some(), "both kept");
        assert!(!r.holds(3) && !r.holds(4));
        assert_eq!(r.refused(), 2);
        // A write of a session held needs no room, a deletion neither.
        let update = r.write(
            2,
            SessionState::Live {
                expiry_unix_ns: 5 * HOUR_NS,
                data: Bytes::new(),
            },
            2,
        );
        assert_eq!(r.apply_own(update, 0), Applied::Replaced);
        let logout = r.write(1, SessionState::Deleted, 3);
        assert_eq!(r.apply_own(logout, 0), Applied::Replaced);
        assert_eq!(
            r.apply(expiring(5, 4 * HOUR_NS), 0),
            Applied::New,
            "the log-out made room"
        );
        // Once a session expired, it makes room for a new one.
        assert_eq!(r.apply(expiring(6, 4 * HOUR_NS), 0), Applied::Full);
        assert_eq!(r.apply(expiring(6, 6 * HOUR_NS), 4 * HOUR_NS), Applied::New);
        assert!(!r.holds(5), "the expired one went");
    }

    #[test]
    fn tombstones_are_bounded_apart_and_never_crowd_out_sessions() {
        let mut r = Replica::new("a", 3, 2, Duration::from_secs(60));
        for id in 0..3 {
            r.apply(live(id, 1, "a", "x"), 0);
        }
        for (ts, id) in [(2, 0), (3, 1), (4, 2)] {
            assert_eq!(r.apply(deleted(id, ts, "a"), 0), Applied::Replaced);
        }
        assert_eq!(r.len(), 2, "two tombstones at most");
        assert!(!r.holds(0), "the oldest tombstone went");
        assert_eq!(r.evicted(), 1);
        for id in 10..13 {
            assert_eq!(r.apply(live(id, 1, "a", "x"), 0), Applied::New);
        }
        assert_eq!(r.len(), 5, "three sessions beside the tombstones");
        assert_eq!(r.refused(), 0);
    }

    #[test]
    fn a_version_far_ahead_of_the_clock_is_refused() {
        let now_ms: u64 = 1_000_000_000;
        let now_ns = i128::from(now_ms) * 1_000_000;
        let mut r = replica("a");
        let ahead = |d: Duration| now_ms + d.as_millis() as u64;
        assert_eq!(
            r.apply(live(1, u64::MAX, "z", "pinned"), now_ns),
            Applied::TooFarAhead
        );
        assert_eq!(
            r.apply(live(1, ahead(MAX_AHEAD_LIVE) + 1, "z", "pinned"), now_ns),
            Applied::TooFarAhead
        );
        assert_eq!(r.len(), 0);
        assert_eq!(
            r.apply(live(1, ahead(MAX_AHEAD_LIVE), "z", "near"), now_ns),
            Applied::New
        );
        // A log-out written here after it wins, and is accepted by a peer with the same clock.
        let logout = r.write(1, SessionState::Deleted, now_ms);
        assert_eq!(logout.version.ts_ms, ahead(MAX_AHEAD_LIVE) + 1);
        let mut peer = replica("b");
        peer.apply(live(1, ahead(MAX_AHEAD_LIVE), "z", "near"), now_ns);
        assert_eq!(peer.apply(logout.clone(), now_ns), Applied::Replaced);
        assert_eq!(r.apply_own(logout, now_ns), Applied::Replaced);
        assert_eq!(data(&r, 1, now_ns), None);
        assert_eq!(
            r.apply(deleted(1, u64::MAX, "z"), now_ns),
            Applied::TooFarAhead
        );
    }

    /// A snapshot read chunk by chunk: each within the budget, every record once, those
    /// too large for a chunk left out and counted.
    #[test]
    fn snapshot_chunks_stay_within_the_budget_and_keep_every_record() {
        let mut r = Replica::new("n", 1_000, 1_000, Duration::from_secs(3600));
        for i in 0..50 {
            r.apply(live(i, 1, "n", "0123456789"), 0);
        }
        for i in 0..10 {
            r.apply(deleted(i, 2, "n"), 0);
        }
        r.apply(live(99, 1, "n", &"x".repeat(500)), 0);
        let budget = 200;
        let (mut cursor, mut seen, mut chunks, mut skipped) = (Cursor::Start, Vec::new(), 0, 0);
        loop {
            let (records, next, too_large) = r.snapshot_chunk(cursor, 0, budget);
            chunks += 1;
            skipped += too_large;
            let msg = SessionMsg::Snapshot {
                records: records.clone(),
                last: next.is_none(),
            };
            assert!(wire::encode_body(&msg).unwrap().len() <= budget);
            seen.extend(records.iter().map(|r| r.id));
            match next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<i128>>(), "every record once");
        assert!(chunks > 2, "{chunks}");
        assert_eq!(skipped, 1, "the one too large for a chunk");
        assert_eq!(fits_a_chunk(&live(1, 1, "n", "x"), budget), Ok(()));
        assert!(fits_a_chunk(&live(99, 1, "n", &"x".repeat(500)), budget).is_err());
    }

    fn arb_record() -> impl Strategy<Value = SessionRecord> {
        (0u64..4, prop_oneof!["a", "b"], any::<bool>(), 0u8..3).prop_map(|(ts, node, del, d)| {
            if del {
                deleted(7, ts, &node)
            } else {
                live(7, ts, &node, &d.to_string())
            }
        })
    }

    proptest! {
        /// Convergence: two nodes that receive the same writes in any order, with
        /// duplicates, end with the same record, and it is the greatest of them.
        #[test]
        fn any_order_of_the_same_writes_converges(
            writes in proptest::collection::vec(arb_record(), 1..8),
            order in any::<u64>(),
        ) {
            let mut a = replica("a");
            let mut b = replica("b");
            // The session is held first: a deletion of an id not held leaves nothing.
            let base = live(7, 0, "", "");
            a.apply(base.clone(), 0);
            b.apply(base, 0);
            for w in &writes {
                a.apply(w.clone(), 0);
            }
            let mut shuffled = writes.clone();
            let n = shuffled.len();
            for i in 0..n {
                shuffled.swap(i, (order as usize).wrapping_add(i * 7) % n);
            }
            shuffled.extend(writes.iter().take(2).cloned());
            for w in shuffled {
                b.apply(w, 0);
            }
            let winner = writes.iter().fold(writes[0].clone(), |m, w| if wins(w, &m) { w.clone() } else { m });
            prop_assert_eq!(a.records.get(&7), Some(&winner));
            prop_assert_eq!(b.records.get(&7), Some(&winner));
        }
    }
}
