//! Unit tests of the session replica, without I/O: the merge rule, bounds, expiry,
//! tombstone purge and snapshot chunks.

use super::*;
use crate::sessions::wire::SessionMsg;
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
        assert!(crate::codec::encode_body(&msg).unwrap().len() <= budget);
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
