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
//! save still in flight cannot bring the session back; expired sessions and old tombstones
//! are purged.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;

use crate::wire::{
    self,
    sessions::{SessionRecord, SessionState, Version},
};

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
    /// The record held wins, or the record is already expired: nothing changed.
    Stale,
    /// A new session, refused: the store holds its maximum.
    Full,
}

/// The records of one node.
#[derive(Debug)]
pub(crate) struct Replica {
    node: String,
    max_records: usize,
    tombstone_ttl_ms: u64,
    records: HashMap<i128, SessionRecord>,
}

impl Replica {
    /// An empty replica of node `node`, holding at most `max_records` records (tombstones
    /// included), keeping tombstones for `tombstone_ttl`.
    pub(crate) fn new(
        node: impl Into<String>,
        max_records: usize,
        tombstone_ttl: Duration,
    ) -> Self {
        Self {
            node: node.into(),
            max_records,
            tombstone_ttl_ms: u64::try_from(tombstone_ttl.as_millis()).unwrap_or(u64::MAX),
            records: HashMap::new(),
        }
    }

    /// A write of session `id` by this node at `now_ms`, not applied yet: its version is
    /// later than any held for `id`. `None` when `id` is a new session and the replica is
    /// full (a deletion is always written: other nodes may hold the session).
    pub(crate) fn write(
        &self,
        id: i128,
        state: SessionState,
        now_ms: u64,
    ) -> Option<SessionRecord> {
        let held = self.records.get(&id);
        if held.is_none() && self.is_full() && state != SessionState::Deleted {
            return None;
        }
        let ts_ms = held.map_or(now_ms, |r| now_ms.max(r.version.ts_ms.saturating_add(1)));
        Some(SessionRecord {
            id,
            version: Version {
                ts_ms,
                node: self.node.clone(),
            },
            state,
        })
    }

    /// Merge a record (written here or received) by the rule of the module docs.
    pub(crate) fn apply(&mut self, record: SessionRecord, now_ns: i128) -> Applied {
        if let Some(held) = self.records.get_mut(&record.id) {
            if wins(&record, held) {
                *held = record;
                return Applied::Replaced;
            }
            return Applied::Stale;
        }
        if self.is_dead(&record, now_ns) {
            return Applied::Stale;
        }
        if self.is_full() {
            return Applied::Full;
        }
        self.records.insert(record.id, record);
        Applied::New
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
        let (mut expired, mut tombstones) = (0, 0);
        let ttl = self.tombstone_ttl_ms;
        self.records.retain(|_, r| match &r.state {
            SessionState::Live { expiry_unix_ns, .. } if *expiry_unix_ns <= now_ns => {
                expired += 1;
                false
            }
            SessionState::Deleted if tombstone_expired(r, ttl, now_ns) => {
                tombstones += 1;
                false
            }
            _ => true,
        });
        (expired, tombstones)
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

    fn is_full(&self) -> bool {
        self.records.len() >= self.max_records
    }

    /// An expired session, or a tombstone past its TTL.
    fn is_dead(&self, r: &SessionRecord, now_ns: i128) -> bool {
        match &r.state {
            SessionState::Live { expiry_unix_ns, .. } => *expiry_unix_ns <= now_ns,
            SessionState::Deleted => tombstone_expired(r, self.tombstone_ttl_ms, now_ns),
        }
    }
}

fn tombstone_expired(r: &SessionRecord, ttl_ms: u64, now_ns: i128) -> bool {
    i128::from(r.version.ts_ms.saturating_add(ttl_ms)) * 1_000_000 <= now_ns
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
        if used + size > budget {
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
    use crate::wire::sessions::SessionMsg;
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
        Replica::new(node, 100, Duration::from_secs(60))
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
        let mine = r.write(1, SessionState::Deleted, 1_000).expect("not full");
        assert_eq!(mine.version.ts_ms, 5_001);
        assert_eq!(r.apply(mine, 0), Applied::Replaced);
        assert_eq!(data(&r, 1, 0), None);
    }

    #[test]
    fn a_tombstone_beats_an_older_save_arriving_late() {
        let mut r = replica("a");
        assert_eq!(r.apply(deleted(1, 10, "b"), 0), Applied::New);
        assert_eq!(r.apply(live(1, 9, "c", "old"), 0), Applied::Stale);
        assert_eq!(data(&r, 1, 0), None);
        assert_eq!(r.apply(live(1, 11, "c", "new"), 0), Applied::Replaced);
        assert_eq!(data(&r, 1, 0).as_deref(), Some("new"));
    }

    #[test]
    fn expiry_hides_then_purge_removes_sessions_and_old_tombstones() {
        let mut r = Replica::new("a", 100, Duration::from_millis(10));
        r.apply(live(1, 0, "a", "x"), 0);
        r.apply(deleted(2, 0, "a"), 0);
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
    fn the_cap_refuses_new_sessions_but_not_updates() {
        let mut r = Replica::new("a", 2, Duration::from_secs(60));
        r.apply(live(1, 1, "a", "x"), 0);
        r.apply(live(2, 1, "a", "x"), 0);
        assert_eq!(r.apply(live(3, 1, "a", "x"), 0), Applied::Full);
        let new_session = SessionState::Live {
            expiry_unix_ns: HOUR_NS,
            data: Bytes::new(),
        };
        assert!(r.write(3, new_session, 1).is_none());
        let del = r
            .write(3, SessionState::Deleted, 1)
            .expect("a deletion is always written");
        assert_eq!(r.apply(del, 0), Applied::Full, "but not held");
        assert_eq!(r.apply(live(2, 2, "b", "y"), 0), Applied::Replaced);
        let del = r.write(1, SessionState::Deleted, 5).unwrap();
        assert_eq!(r.apply(del, 0), Applied::Replaced);
        assert_eq!(r.len(), 2);
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
