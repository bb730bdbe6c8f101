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
//! Live sessions and tombstones are bounded apart, so that neither can crowd out the other:
//! beyond `max_sessions`, the session closest to expiry is evicted; beyond
//! `max_tombstones`, the oldest tombstone. Both are counted ([`Replica::evicted`]); a save
//! is never refused for room. A received record whose version is further ahead of this
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
}

/// Records evicted to stay within the bounds, since the replica started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// Live sessions evicted (those closest to expiry first).
    pub(crate) sessions: u64,
    /// Tombstones evicted (the oldest first).
    pub(crate) tombstones: u64,
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
    evicted: Evicted,
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
            evicted: Evicted::default(),
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
        self.remove(id);
        self.insert(record);
        self.evict_beyond_bounds(id);
        applied
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

    /// Evict the sessions closest to expiry and the oldest tombstones beyond the bounds,
    /// never `keep` (the record just written).
    fn evict_beyond_bounds(&mut self, keep: i128) {
        while self.by_expiry.len() > self.max_sessions {
            let Some(&(_, id)) = self.by_expiry.iter().find(|(_, id)| *id != keep) else {
                break;
            };
            self.remove(id);
            self.evicted.sessions += 1;
        }
        while self.by_age.len() > self.max_tombstones {
            let Some(&(_, id)) = self.by_age.iter().find(|(_, id)| *id != keep) else {
                break;
            };
            self.remove(id);
            self.evicted.tombstones += 1;
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

    /// Every record worth sending to a node that catches up: live sessions and tombstones.
    pub(crate) fn snapshot(&self, now_ns: i128) -> Vec<SessionRecord> {
        self.records
            .values()
            .filter(|r| !self.is_dead(r, now_ns))
            .cloned()
            .collect()
    }

    /// How many records (sessions and tombstones) are held.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// How many live sessions and tombstones are held.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.by_expiry.len(), self.by_age.len())
    }

    /// How many records were evicted to stay within the bounds.
    pub(crate) fn evicted(&self) -> Evicted {
        self.evicted
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

/// Split `records` into chunks whose encoding stays within `budget` bytes each (at least
/// one chunk, possibly empty); records that alone exceed the budget are returned apart.
pub(crate) fn chunks(
    records: Vec<SessionRecord>,
    budget: usize,
) -> (Vec<Vec<SessionRecord>>, Vec<SessionRecord>) {
    /// Room for the message and vector headers around the records.
    const OVERHEAD: usize = 16;
    let mut out = vec![Vec::new()];
    let mut too_large = Vec::new();
    let mut used = OVERHEAD;
    for r in records {
        let size = wire::encode_body(&r).map_or(usize::MAX, |b| b.len());
        if size.saturating_add(OVERHEAD) > budget {
            too_large.push(r);
            continue;
        }
        let full = out
            .last()
            .is_some_and(|c| c.len() >= wire::sessions::MAX_RECORDS);
        if used + size > budget || full {
            out.push(Vec::new());
            used = OVERHEAD;
        }
        used += size;
        if let Some(last) = out.last_mut() {
            last.push(r);
        }
    }
    (out, too_large)
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
        assert!(r.snapshot(HOUR_NS).is_empty());
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

    #[test]
    fn at_the_cap_the_session_closest_to_expiry_is_evicted_and_counted() {
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
        assert_eq!(
            r.apply_own(third, 0),
            Applied::New,
            "a save is never refused"
        );
        assert!(r.get(3, 0).is_some() && r.get(1, 0).is_some());
        assert!(r.get(2, 0).is_none(), "the one closest to expiry went");
        assert_eq!(r.evicted().sessions, 1);
        // Even a new session closer to expiry than every other is kept: the one written.
        assert_eq!(r.apply(expiring(4, 1), 0), Applied::New);
        assert!(r.get(4, 0).is_some());
        assert_eq!(r.evicted().sessions, 2);
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
        assert_eq!(r.evicted().tombstones, 1);
        for id in 10..13 {
            assert_eq!(r.apply(live(id, 1, "a", "x"), 0), Applied::New);
        }
        assert_eq!(r.len(), 5, "three sessions beside the tombstones");
        assert_eq!(r.evicted().sessions, 0);
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

    #[test]
    fn chunks_stay_within_the_budget_and_keep_every_record() {
        let records: Vec<SessionRecord> = (0..50).map(|i| live(i, 1, "n", "0123456789")).collect();
        let budget = 200;
        let (split, too_large) = chunks(records.clone(), budget);
        assert!(too_large.is_empty());
        assert!(split.len() > 1);
        let mut seen = 0;
        for c in &split {
            let msg = SessionMsg::Snapshot {
                records: c.clone(),
                last: true,
            };
            assert!(wire::encode_body(&msg).unwrap().len() <= budget);
            seen += c.len();
        }
        assert_eq!(seen, records.len());
        let big = live(99, 1, "n", &"x".repeat(500));
        assert_eq!(chunks(vec![big.clone()], budget), (vec![vec![]], vec![big]));
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
