//! Unit tests of `events`.

use super::*;
use bytes::Bytes;
use handlers::Replier;
use std::sync::Mutex;

fn recorder() -> (Replier, Arc<Mutex<Vec<EventReply>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (Box::new(move |a| s.lock().unwrap().push(a)), seen)
}

async fn settle(seen: &Arc<Mutex<Vec<EventReply>>>, n: usize) -> Vec<EventReply> {
    for _ in 0..500 {
        if seen.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen.lock().unwrap().clone()
}

fn handlers_with(event: &str, answer: bool) -> Handlers {
    let h = Handlers::new();
    let handler: Handler = Arc::new(move |ev: ServerEvent| {
        Box::pin(async move {
            if answer {
                let n: u32 = ev.data().unwrap();
                ev.ack(&(n + 1)).unwrap();
            }
        })
    });
    h.table.write().unwrap().insert(event.into(), handler);
    h
}

#[tokio::test]
async fn a_handler_answers_once_and_a_silent_one_answers_no_ack() {
    let cases = [
        ("inc", true, EventReply::Ack(Bytes::from_static(b"42"))),
        ("quiet", false, EventReply::NoAck),
    ];
    for (event, answers, want) in cases {
        let h = handlers_with(event, answers);
        let (reply, seen) = recorder();
        let data = Bytes::from_static(b"41");
        h.deliver("a".into(), event.into(), data, Some(reply), 100);
        assert_eq!(settle(&seen, 1).await, vec![want]);
    }
}

#[tokio::test]
async fn unknown_events_and_bad_names_are_answered_and_bad_names_counted() {
    let h = handlers_with("inc", true);
    let (reply, seen) = recorder();
    h.deliver("a".into(), "other".into(), Bytes::new(), Some(reply), 100);
    assert_eq!(seen.lock().unwrap().clone(), vec![EventReply::NoHandler]);
    assert_eq!(
        h.dropped.load(Ordering::Relaxed),
        0,
        "no handler is no drop"
    );
    let (reply, seen) = recorder();
    h.deliver(
        "a".into(),
        "x".repeat(MAX_EVENT_NAME + 1),
        Bytes::new(),
        Some(reply),
        100,
    );
    assert_eq!(seen.lock().unwrap().clone(), vec![EventReply::NoHandler]);
    assert_eq!(h.dropped.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_answer_larger_than_allowed_is_refused_and_answers_no_ack() {
    let (reply, seen) = recorder();
    let ev = ServerEvent {
        from: "a".into(),
        event: "e".into(),
        data: Bytes::new(),
        reply: Some(reply),
        max_ack: 4,
    };
    let err = ev.ack(&"too long").unwrap_err();
    assert!(
        matches!(err, ServerEventError::TooLarge { size: 10, max: 4 }),
        "{err}"
    );
    assert_eq!(seen.lock().unwrap().clone(), vec![EventReply::NoAck]);
}

/// Handlers beyond [`MAX_RUNNING`] are never started: the event is dropped, counted,
/// and its sender told.
#[tokio::test]
async fn events_beyond_the_running_handlers_bound_are_dropped_and_counted() {
    let h = Handlers::new();
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let handler: Handler = Arc::new(move |_ev: ServerEvent| {
        let g = g.clone();
        Box::pin(async move { g.notified().await })
    });
    h.table.write().unwrap().insert("hold".into(), handler);
    for _ in 0..MAX_RUNNING {
        h.deliver("a".into(), "hold".into(), Bytes::new(), None, 100);
    }
    assert_eq!(h.dropped.load(Ordering::Relaxed), 0);
    let (reply, seen) = recorder();
    h.deliver("a".into(), "hold".into(), Bytes::new(), Some(reply), 100);
    assert_eq!(seen.lock().unwrap().clone(), vec![EventReply::Overloaded]);
    assert_eq!(h.dropped.load(Ordering::Relaxed), 1);
    gate.notify_waiters();
}

#[test]
fn answers_become_acks() {
    let ack = ServerAck::from_answer("n", EventReply::Ack(Bytes::from_static(b"[1]")));
    assert_eq!(ack.result, Ok(serde_json::json!([1])));
    let bad = ServerAck::from_answer("n", EventReply::Ack(Bytes::from_static(b"{")));
    assert!(matches!(bad.result, Err(ServerAckError::Malformed(_))));
    for (a, e) in [
        (EventReply::NoAck, ServerAckError::NoAck),
        (EventReply::NoHandler, ServerAckError::NoHandler),
        (EventReply::Overloaded, ServerAckError::Overloaded),
    ] {
        assert_eq!(ServerAck::from_answer("n", a).result, Err(e));
    }
    assert!(check_name("").is_err() && check_name("a").is_ok());
}

/// A member that sends bytes the events service cannot read: dropped, counted, and its
/// request answered at once, whether or not it waits. Two real nodes on 127.0.0.1.
#[cfg(feature = "cluster-gossip")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_event_from_a_member_is_dropped_counted_and_answered() {
    use crate::{
        bus::{To, gossip::GossipBus},
        gossip::node::tests::{pair, until},
    };
    use futures_util::StreamExt;

    let cluster = format!("events-garbage-{}", std::process::id());
    let (a, b) = pair(&cluster).await;
    let events = ServerEvents::start(GossipBus::start(a.clone()));
    let bus_b = GossipBus::start(b.clone());
    let garbage = Bytes::from_static(&[0xff, 0xff, 0xff]);
    let to_a = To::One(bus_b.members()[0].clone());
    bus_b
        .send(to_a.clone(), wire::SERVICE, garbage.clone(), false)
        .await
        .unwrap();
    let replies = bus_b
        .request(to_a, wire::SERVICE, garbage, Duration::from_secs(60))
        .await
        .unwrap();
    let acks: Vec<ServerAck> =
        tokio::time::timeout(Duration::from_secs(20), service::acks(replies).collect())
            .await
            .expect("answered at once, not at the timeout");
    assert_eq!(acks, [ServerAck::new("a", Err(ServerAckError::NotRunning))]);
    assert!(
        until(Duration::from_secs(5), || events.dropped() == 2).await,
        "both counted: {}",
        events.dropped()
    );
    b.shutdown().await;
    a.shutdown().await;
}
