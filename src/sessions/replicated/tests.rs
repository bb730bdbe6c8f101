//! Tests of the gossip session store on real nodes over loopback: replication of saves
//! and deletes, catch-up of a joiner, the bounds and what they log.

use std::collections::HashMap;

use super::*;
use crate::{
    bus::gossip::GossipBus,
    gossip::node::{
        Node,
        tests::{Recorder, lines_with, pair, send_garbage},
    },
    sessions::{SessionStoreConfig, wire::Version},
};

fn user(name: &str) -> Record {
    Record {
        id: Id::default(),
        data: HashMap::from([("user".to_string(), serde_json::json!(name))]),
        expiry_date: OffsetDateTime::now_utc() + time::Duration::hours(1),
    }
}

async fn user_of(store: &GossipSessionStore, id: &Id) -> Option<String> {
    let r = store.load(id).await.unwrap()?;
    Some(r.data.get("user")?.as_str()?.to_string())
}

/// Two nodes `a` and `b` of `cluster`, each a member of the other, with a store each.
async fn stores(
    cluster: &str,
    config: &SessionStoreConfig,
) -> (Arc<Node>, GossipSessionStore, Arc<Node>, GossipSessionStore) {
    let (a, b) = pair(cluster).await;
    let (sa, sb) = (
        GossipSessionStore::start(GossipBus::start(a.clone()), config),
        GossipSessionStore::start(GossipBus::start(b.clone()), config),
    );
    (a, sa, b, sb)
}

/// At the cap, a new session is refused with a clear error (anonymous visitors or a
/// login endpoint hammered by one client cannot log real users out); the sessions held
/// still load on every node, and an update of one of them still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_new_session_is_refused_and_live_ones_load_everywhere() {
    let cluster = format!("sessions-cap-{}", std::process::id());
    let config = SessionStoreConfig::new().with_max_sessions(2);
    let (a, sa, b, sb) = stores(&cluster, &config).await;
    let mut live = Vec::new();
    for name in ["ada", "bob"] {
        let mut rec = user(name);
        sa.create(&mut rec).await.unwrap();
        live.push((rec, name));
    }
    let mut visitor = user("visitor");
    let err = sa.create(&mut visitor).await.expect_err("beyond the cap");
    assert!(err.to_string().contains("2 sessions"), "{err}");
    for store in [&sa, &sb] {
        for (rec, name) in &live {
            assert_eq!(user_of(store, &rec.id).await.as_deref(), Some(*name));
        }
        assert_eq!(user_of(store, &visitor.id).await, None);
    }
    // An update needs no room.
    let (mut ada, _) = live[0].clone();
    ada.data.insert("user".into(), serde_json::json!("ada2"));
    sa.save(&ada).await.unwrap();
    assert_eq!(user_of(&sb, &ada.id).await.as_deref(), Some("ada2"));
    // A session written on b at its cap: refused there too.
    let mut other = user("other");
    assert!(sb.create(&mut other).await.is_err());
    assert_eq!(sa.refused() + sb.refused(), 2, "both refusals counted");
    b.shutdown().await;
    a.shutdown().await;
}

/// A session larger than a snapshot chunk could be saved but never reached a node that
/// catches up: it is refused at save, with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_too_large_for_a_snapshot_is_refused_at_save() {
    let cluster = format!("sessions-large-{}", std::process::id());
    let (a, sa, b, sb) = stores(&cluster, &SessionStoreConfig::new()).await;
    let mut big = user("big");
    big.data
        .insert("blob".into(), serde_json::json!("x".repeat(MAX_CHUNK)));
    let err = sa
        .create(&mut big)
        .await
        .expect_err("too large to catch up with");
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(user_of(&sa, &big.id).await, None);
    assert_eq!(user_of(&sb, &big.id).await, None);
    let mut small = user("small");
    sa.create(&mut small).await.unwrap();
    assert_eq!(user_of(&sb, &small.id).await.as_deref(), Some("small"));
    b.shutdown().await;
    a.shutdown().await;
}

/// How many whole snapshots `r` received.
fn snapshots(r: &Recorder<SessionMsg>) -> usize {
    r.count(|m| matches!(m, SessionMsg::Snapshot { last: true, .. }))
}

/// A member that asks for a snapshot again and again (one byte each time) gets one for
/// all the requests that came while one was being sent, not one per request: a request
/// costs nothing like a copy of every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_snapshot_requests_is_answered_by_one_snapshot() {
    let (a, b) = pair(&format!("sessions-burst-{}", std::process::id())).await;
    let recorder = Recorder::<SessionMsg>::on(&b, SERVICE);
    let store = GossipSessionStore::start(GossipBus::start(a.clone()), &SessionStoreConfig::new());
    for i in 0..2_000 {
        let mut rec = user(&format!("user-{i}"));
        rec.data
            .insert("pad".into(), serde_json::json!("x".repeat(200)));
        store.create(&mut rec).await.unwrap();
    }
    let request = codec::encode_body(&SessionMsg::SnapshotRequest).unwrap();
    let to_a = [a.me().clone()];
    for _ in 0..50 {
        b.send_service(&to_a, SERVICE, request.clone(), false)
            .await
            .unwrap();
    }
    let mut answered = false;
    for _ in 0..500 {
        if snapshots(&recorder) > 0 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "a snapshot came");
    // Whatever still comes for the burst comes within this.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snapshots = snapshots(&recorder);
    assert!(
        snapshots <= 2,
        "{snapshots} snapshots sent for one burst of 50 requests"
    );
    b.shutdown().await;
    a.shutdown().await;
}

/// A member that sends what the store cannot read, over and over: one warning per
/// period, with the count held back, not one per message.
#[tokio::test]
async fn unreadable_messages_from_a_member_are_logged_at_a_bounded_rate() {
    let (logs, _guard) = crate::gossip::mesh::tests::capture_logs();
    let cluster = format!("sessions-garbage-{}", std::process::id());
    let (a, _sa, b, _sb) = stores(&cluster, &SessionStoreConfig::new()).await;
    send_garbage(&b, &a, SERVICE, 20).await;
    let warned = lines_with(&logs, "session message dropped");
    assert_eq!(warned.len(), 1, "{warned:?}");
    b.shutdown().await;
    a.shutdown().await;
}

/// A member (it holds the secret) sends a session whose version is at the end of time,
/// so that no later write could win over it: the receiving node refuses it, and a
/// log-out there still deletes the session. Two real nodes on 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_at_the_end_of_time_from_a_member_is_refused() {
    let cluster = format!("far-future-{}", std::process::id());
    let (a, b) = pair(&cluster).await;
    let store = GossipSessionStore::start(GossipBus::start(a.clone()), &SessionStoreConfig::new());

    let mut rec = user("ada");
    store.create(&mut rec).await.unwrap();
    assert_eq!(user_of(&store, &rec.id).await.as_deref(), Some("ada"));

    // B pins the session (and a session A never held) with the largest version.
    let pinned = |id: i128| SessionRecord {
        id,
        version: Version {
            ts_ms: u64::MAX,
            node: "zzz".into(),
        },
        state: SessionState::Live {
            expiry_unix_ns: rec.expiry_date.unix_timestamp_nanos(),
            data: Bytes::from_static(br#"{"user":"mallory"}"#),
        },
    };
    let body = codec::encode_body(&SessionMsg::Put(vec![pinned(rec.id.0), pinned(7)])).unwrap();
    let a_id = a.me().clone();
    b.send_service(&[a_id], SERVICE, body, true).await.unwrap();

    assert_eq!(
        user_of(&store, &rec.id).await.as_deref(),
        Some("ada"),
        "the pinned version was refused"
    );
    assert!(!store.inner.lock().holds(7));
    store.delete(&rec.id).await.unwrap();
    assert_eq!(user_of(&store, &rec.id).await, None, "the log-out won");
    b.shutdown().await;
    a.shutdown().await;
}
