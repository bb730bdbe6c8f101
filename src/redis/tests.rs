//! Unit tests of `redis`.

use super::*;

#[tokio::test]
async fn connect_refuses_a_setting_out_of_range_before_connecting() {
    // Nothing listens on port 1: an error naming the setting shows none was tried.
    let config = RedisAdapterConfig {
        stream_buffer: 0,
        ..RedisAdapterConfig::new()
    };
    let e = match connect("redis://127.0.0.1:1", config).await {
        Ok(_) => panic!("a stream buffer of 0 was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("RedisAdapterConfig::with_stream_buffer") && e.contains("allowed range"),
        "{e}"
    );
}

#[test]
fn resp3_is_requested_unless_set() {
    assert_eq!(with_resp3("redis://h:1"), "redis://h:1?protocol=resp3");
    assert_eq!(
        with_resp3("redis://h:1/?db=2"),
        "redis://h:1/?db=2&protocol=resp3"
    );
    assert_eq!(
        with_resp3("redis://h?protocol=resp2"),
        "redis://h?protocol=resp2"
    );
}

fn push(chan: &str, payload: &[u8]) -> PushInfo {
    PushInfo {
        kind: PushKind::Message,
        data: vec![
            redis::Value::BulkString(chan.as_bytes().to_vec()),
            redis::Value::BulkString(payload.to_vec()),
        ],
    }
}

#[test]
fn only_well_formed_messages_are_kept() {
    assert_eq!(
        message(push("c", b"x")),
        Some(("c".to_string(), b"x".to_vec()))
    );
    let empty = PushInfo {
        kind: PushKind::Message,
        data: vec![],
    };
    assert_eq!(message(empty), None);
    let other = PushInfo {
        kind: PushKind::Subscribe,
        data: vec![redis::Value::BulkString(b"c".to_vec())],
    };
    assert_eq!(message(other), None);
}

#[tokio::test]
async fn messages_reach_their_channel_full_queues_drop_unknown_channels_are_skipped() {
    let handlers: Handlers = Arc::default();
    let (tx, mut rx) = mpsc::channel(1);
    handlers.write().unwrap().insert("c".into(), tx);
    let (in_tx, in_rx) = mpsc::channel(8);
    for item in [("c", "1"), ("c", "2"), ("other", "3")] {
        in_tx
            .try_send((item.0.to_string(), item.1.as_bytes().to_vec()))
            .unwrap();
    }
    drop(in_tx);
    dispatch(in_rx, Arc::downgrade(&handlers)).await;
    assert_eq!(rx.try_recv().unwrap(), ("c".to_string(), b"1".to_vec()));
    assert!(
        rx.try_recv().is_err(),
        "the second one found the queue full"
    );
}

/// socketioxide-redis reads a namespace's channels through `select`: messages of two
/// channels must still be applied in the order Redis sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_several_channels_are_taken_in_the_order_redis_sent_them() {
    use futures_util::StreamExt;
    let handlers: Handlers = Arc::default();
    let mut streams = Vec::new();
    for chan in ["all", "me"] {
        let (tx, rx) = mpsc::channel(256);
        handlers.write().unwrap().insert(chan.into(), tx);
        streams.push(tokio_stream_of(rx));
    }
    let me = streams.pop().unwrap();
    let all = streams.pop().unwrap();
    // As socketioxide-redis does: requests to all nodes, then requests to this node.
    let mut merged = futures_util::stream::select(all, me);
    let (in_tx, in_rx) = mpsc::channel(ORDERED_QUEUE);
    let sent: Vec<ChanItem> = (0..200u32)
        .map(|i| {
            let chan = if i % 3 == 0 { "all" } else { "me" };
            (chan.to_string(), i.to_be_bytes().to_vec())
        })
        .collect();
    for item in &sent {
        in_tx.try_send(item.clone()).unwrap();
    }
    tokio::spawn(dispatch(in_rx, Arc::downgrade(&handlers)));
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let item = tokio::time::timeout(Duration::from_secs(5), merged.next())
            .await
            .expect("message in time")
            .expect("stream open");
        got.push(item);
        // The reader is slower than Redis: whatever is ready is ready together.
        tokio::task::yield_now().await;
    }
    let first_wrong = got.iter().zip(&sent).position(|(g, s)| g != s);
    assert_eq!(
        first_wrong, None,
        "message {first_wrong:?} taken out of order"
    );
}

fn tokio_stream_of(
    mut rx: mpsc::Receiver<ChanItem>,
) -> std::pin::Pin<Box<dyn futures_core::Stream<Item = ChanItem> + Send>> {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
