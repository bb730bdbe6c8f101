//! Tests of presence over the bus on two real gossip nodes (127.0.0.1): what a member
//! sends that presence must bound.

use std::time::Duration;

use super::{
    Presence, PresenceConfig,
    wire::{PresenceMsg, SERVICE},
};
use crate::{
    bus::gossip::GossipBus,
    gossip::{
        mesh::tests::capture_logs,
        node::tests::{Recorder, lines_with, pair, send_garbage, until},
    },
};
use bytes::Bytes;

/// How many whole states `r` received.
fn states(r: &Recorder<PresenceMsg>) -> usize {
    r.count(|m| matches!(m, PresenceMsg::State { last: true, .. }))
}

/// A member that asks for the state again and again (a few bytes each time) gets it
/// once for all the requests that came while one was waiting to be sent, not once per
/// request: a request costs nothing like a copy of every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_state_requests_is_answered_by_one_state() {
    let (a, b) = pair(&format!("presence-burst-{}", std::process::id())).await;
    let recorder = Recorder::<PresenceMsg>::on(&b, SERVICE);
    let presence = Presence::start(GossipBus::start(a.clone()), &PresenceConfig::default());
    {
        let mut replica = presence.shared.lock();
        for i in 0..5_000 {
            replica
                .track(
                    "lobby",
                    &format!("user-{i}"),
                    &format!("{i:016}"),
                    Bytes::from_static(b"{}"),
                )
                .unwrap();
        }
    }
    // The state a pushes to b when its presence starts.
    assert!(until(Duration::from_secs(10), || states(&recorder) >= 1).await);
    let before = states(&recorder);

    let request = crate::codec::encode_body(&PresenceMsg::StateRequest).unwrap();
    let to_a = [a.me().clone()];
    for _ in 0..50 {
        b.send_service(&to_a, SERVICE, request.clone(), false)
            .await
            .unwrap();
    }
    assert!(until(Duration::from_secs(10), || states(&recorder) > before).await);
    // Whatever still comes for the burst comes within this.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answered = states(&recorder) - before;
    assert!(
        answered <= 2,
        "{answered} states sent for one burst of 50 requests"
    );
    drop(presence);
    b.shutdown().await;
    a.shutdown().await;
}

/// A member that sends what presence cannot read, over and over: one warning per period,
/// with the count held back, not one per message.
#[tokio::test]
async fn unreadable_messages_from_a_member_are_logged_at_a_bounded_rate() {
    let (logs, _guard) = capture_logs();
    let (a, b) = pair(&format!("presence-garbage-{}", std::process::id())).await;
    let presence = Presence::start(GossipBus::start(a.clone()), &PresenceConfig::default());
    send_garbage(&b, &a, SERVICE, 20).await;
    let warned = lines_with(&logs, "presence message dropped");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(presence.dropped(), 20, "each counted");
    drop(presence);
    b.shutdown().await;
    a.shutdown().await;
}
