//! A small subset of the scenarios, in deterministic mode (simulated network and clock), run
//! by the project's test command. Durations asserted here are simulated time, not wall-clock.

use std::time::Duration;

use simulations::{node::Timings, run_seeded, scenarios};

#[test]
fn the_same_seed_replays_the_same_run() {
    let run = |seed| run_seeded(seed, move || scenarios::partition(6, seed));
    let (first, trace_a) = run(11).unwrap();
    let (_, trace_b) = run(11).unwrap();
    assert!(trace_a.len() > 10, "a trace worth comparing: {trace_a:?}");
    assert_eq!(trace_a, trace_b, "same seed, different runs");
    // The trace holds the membership changes, with their simulated times.
    assert!(
        trace_a
            .iter()
            .any(|l| l.contains("each side sees only itself"))
    );
    assert_eq!(first.after_heal_delivered.0, first.after_heal_delivered.1);
}

#[test]
fn ten_nodes_split_in_two_then_healed_deliver_everything() {
    let (p, trace) = run_seeded(3, || scenarios::partition(10, 3)).unwrap();
    let trace = trace.join("\n");
    assert_eq!(
        p.split_delivered.0, p.split_delivered.1,
        "during the split:\n{trace}"
    );
    assert_eq!(
        p.after_heal_delivered.0, p.after_heal_delivered.1,
        "after healing:\n{trace}"
    );
}

#[test]
fn a_request_pending_when_a_node_crashes_ends_with_the_live_nodes_answers() {
    let (c, trace) = run_seeded(5, || scenarios::crash(5, 1, 5)).unwrap();
    let trace = trace.join("\n");
    assert_eq!(c.sockets, c.expected_sockets, "{trace}");
    // Promptly: well before the request timeout, which is what the Redis adapter waits.
    let timeout = Timings::default().request_timeout;
    assert!(
        c.request < timeout / 2,
        "took {:?} of {timeout:?}\n{trace}",
        c.request
    );
}

#[test]
fn churn_delivers_to_stable_nodes_once_each() {
    let (c, trace) = run_seeded(9, || scenarios::churn(6, 9)).unwrap();
    let trace = trace.join("\n");
    assert!(c.changes >= 10, "{trace}");
    assert_eq!(c.duplicates, 0, "{trace}");
    assert_eq!(c.delivered.0, c.delivered.1, "{trace}");
}

#[test]
fn a_hung_node_is_dropped_and_the_others_keep_their_rate() {
    let (s, trace) = run_seeded(13, || scenarios::slow_peer(3, 13)).unwrap();
    let trace = trace.join("\n");
    let evicted = s
        .evicted
        .expect("the hung node was dropped from the members");
    assert!(evicted < Duration::from_secs(5), "{trace}");
    assert!(s.during >= 0.5 * s.before, "{s:?}\n{trace}");
}
