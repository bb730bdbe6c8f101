//! Server events on the Redis backend, over Redis pub/sub on the backend's connection:
//!
//! - every node subscribes to `<prefix>-server-events` (events to all) and to
//!   `<prefix>-server-events#<node name>` (answers to its own events);
//! - an event is published on the first, with a request id when its sender waits for
//!   answers, which the receivers publish on the sender's channel;
//! - the nodes waited for are those subscribed to a channel of their name when the event
//!   is sent (`PUBSUB CHANNELS`); listed again while waiting, a node whose channel
//!   vanished is no longer waited for.
//!
//! Messages are msgpack (`rmp-serde`, the codec of socketioxide-redis); one larger than
//! [`MAX_MESSAGE`] is refused before it is decoded.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use socketioxide_redis::drivers::Driver;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Answer, Handlers, Replier, ServerAck, ServerAckError, ServerAcks, ServerEventError};
use crate::{
    rate_log::RateLog,
    redis::{RedisDriver, RedisHandle},
};

/// Largest message accepted from Redis, in bytes.
pub(crate) const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Messages received and not yet read, per channel.
const QUEUE: usize = 1024;
/// How often an ack request lists the nodes still subscribed.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// Longest node name accepted in a message: it names a channel.
const MAX_NAME: usize = 256;

/// Answers to an ack request beyond what the nodes asked owe: logged at a bounded rate.
static STRAY_LOG: RateLog = RateLog::new(Duration::from_secs(10));

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    /// An event; `id` when the sender waits for answers.
    Event {
        from: String,
        id: Option<u64>,
        event: String,
        data: Bytes,
    },
    /// A node's answer to the event `id` of the node whose channel it is published on.
    Reply {
        from: String,
        id: u64,
        answer: WireAnswer,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum WireAnswer {
    Ack(Bytes),
    NoAck,
    NoHandler,
    Overloaded,
}

impl From<Answer> for WireAnswer {
    fn from(a: Answer) -> Self {
        match a {
            Answer::Ack(json) => Self::Ack(json),
            Answer::NoAck => Self::NoAck,
            Answer::NoHandler => Self::NoHandler,
            Answer::Overloaded => Self::Overloaded,
        }
    }
}

impl From<WireAnswer> for Answer {
    fn from(a: WireAnswer) -> Self {
        match a {
            WireAnswer::Ack(json) => Self::Ack(json),
            WireAnswer::NoAck => Self::NoAck,
            WireAnswer::NoHandler => Self::NoHandler,
            WireAnswer::Overloaded => Self::Overloaded,
        }
    }
}

fn encode(msg: &Msg) -> Result<Vec<u8>, ServerEventError> {
    rmp_serde::to_vec(msg).map_err(|e| ServerEventError::Encode(e.to_string()))
}

fn decode(payload: &[u8]) -> Result<Msg, String> {
    if payload.len() > MAX_MESSAGE {
        return Err(format!(
            "message of {} bytes exceeds the maximum of {MAX_MESSAGE} bytes",
            payload.len()
        ));
    }
    rmp_serde::from_slice(payload).map_err(|e| e.to_string())
}

type Waiting = Arc<Mutex<HashMap<u64, mpsc::Sender<(String, Answer)>>>>;

/// The events service of one node on Redis.
pub(crate) struct RedisEvents {
    driver: RedisDriver,
    conn: ConnectionManager,
    name: String,
    /// `<prefix>-server-events`.
    all: String,
    handlers: Arc<Handlers>,
    waiting: Waiting,
    next_id: AtomicU64,
    /// Set once both channels are subscribed (or that failed, with why).
    ready: watch::Receiver<Option<Result<(), String>>>,
    /// Dropped with the service: its receiving task unsubscribes and ends.
    _stop: oneshot::Sender<()>,
}

impl RedisEvents {
    pub(crate) fn start(handle: &RedisHandle, handlers: Arc<Handlers>) -> Arc<Self> {
        let all = format!("{}-server-events", handle.prefix());
        let name = handle.node_name().to_string();
        let (ready_tx, ready) = watch::channel(None);
        let (stop, stopped) = oneshot::channel();
        let events = Arc::new(Self {
            driver: handle.driver(),
            conn: handle.connection(),
            name,
            all,
            handlers,
            waiting: Arc::default(),
            next_id: AtomicU64::new(1),
            ready,
            _stop: stop,
        });
        tokio::spawn(receive(Arc::downgrade(&events), ready_tx, stopped));
        events
    }

    pub(crate) fn node_name(&self) -> &str {
        &self.name
    }

    fn own_channel(&self, name: &str) -> String {
        format!("{}#{name}", self.all)
    }

    /// Wait (at most `limit`) until this node's channels are subscribed.
    pub(crate) async fn subscribed(&self, limit: Duration) -> Result<(), ServerEventError> {
        let mut ready = self.ready.clone();
        let state = tokio::time::timeout(limit, ready.wait_for(Option::is_some)).await;
        match state {
            Ok(Ok(state)) => state.clone().unwrap_or(Ok(())),
            Ok(Err(_)) => Err("the receiving task ended".into()),
            Err(_) => Err("not subscribed to Redis in time".into()),
        }
        .map_err(ServerEventError::Backend)
    }

    async fn publish(&self, chan: String, msg: &Msg) -> Result<(), ServerEventError> {
        let bytes = encode(msg)?;
        if bytes.len() > MAX_MESSAGE {
            return Err(ServerEventError::TooLarge {
                size: bytes.len(),
                max: MAX_MESSAGE,
            });
        }
        self.driver
            .publish(chan, bytes)
            .await
            .map_err(|e| ServerEventError::Backend(e.to_string()))
    }

    /// The names of the other nodes subscribed to a channel of their own.
    async fn nodes(&self) -> Result<HashSet<String>, String> {
        crate::redis::live_nodes(&self.conn, &self.own_channel(""), &self.name).await
    }

    pub(crate) async fn emit(&self, event: &str, data: Bytes) -> Result<(), ServerEventError> {
        let msg = Msg::Event {
            from: self.name.clone(),
            id: None,
            event: event.to_string(),
            data,
        };
        self.publish(self.all.clone(), &msg).await
    }

    pub(crate) async fn emit_with_ack(
        self: &Arc<Self>,
        event: &str,
        data: Bytes,
        timeout: Duration,
    ) -> Result<ServerAcks, ServerEventError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.subscribed(timeout).await?;
        let nodes = self.nodes().await.map_err(ServerEventError::Backend)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Each node answers once; the slack takes the answers of nodes that subscribed
        // after the listing (not waited for, dropped by the stream). More only comes from
        // a node that misbehaves.
        let (tx, rx) = mpsc::channel(2 * nodes.len() + 8);
        let guard = Booked {
            id,
            waiting: self.waiting.clone(),
        };
        if !nodes.is_empty() {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
        }
        let msg = Msg::Event {
            from: self.name.clone(),
            id: Some(id),
            event: event.to_string(),
            data,
        };
        self.publish(self.all.clone(), &msg).await?;
        let state = AckState {
            events: self.clone(),
            waiting: nodes,
            rx,
            deadline,
            ready: VecDeque::new(),
            _guard: guard,
        };
        Ok(ServerAcks(Box::pin(futures_util::stream::unfold(
            state,
            AckState::next,
        ))))
    }

    fn on_message(self: &Arc<Self>, payload: &[u8]) {
        let msg = match decode(payload) {
            Ok(msg) => msg,
            Err(e) => {
                self.handlers
                    .refuse("a node on redis", &format!("it does not decode: {e}"));
                return;
            }
        };
        match msg {
            Msg::Event { from, .. } if from == self.name => {}
            Msg::Event { from, .. } if from.is_empty() || from.len() > MAX_NAME => {
                self.handlers
                    .refuse("a node on redis", "its sender's name is empty or too long");
            }
            Msg::Event {
                from,
                id,
                event,
                data,
            } => {
                let replier = id.map(|id| -> Replier {
                    let events = self.clone();
                    let to = self.own_channel(&from);
                    Box::new(move |answer: Answer| {
                        let msg = Msg::Reply {
                            from: events.name.clone(),
                            id,
                            answer: answer.into(),
                        };
                        tokio::spawn(async move {
                            if let Err(e) = events.publish(to, &msg).await {
                                tracing::warn!("server event answer not sent: {e}");
                            }
                        });
                    })
                });
                self.handlers
                    .deliver(from, event, data, replier, MAX_MESSAGE - MAX_NAME - 64);
            }
            Msg::Reply { from, id, answer } => {
                let tx = self
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .cloned();
                match tx.map(|tx| tx.try_send((from.clone(), answer.into()))) {
                    Some(Ok(())) => {}
                    // Say, an answer that came after the request's timeout.
                    None | Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                        tracing::debug!(%from, "server event answer to no request pending here");
                    }
                    Some(Err(mpsc::error::TrySendError::Full(_))) => self
                        .handlers
                        .refuse(&from, "an answer beyond what the request waits for"),
                }
            }
        }
    }
}

/// Removes an ack request from the pending ones when it ends or is dropped.
struct Booked {
    id: u64,
    waiting: Waiting,
}

impl Drop for Booked {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

struct AckState {
    events: Arc<RedisEvents>,
    /// The nodes that still owe an answer.
    waiting: HashSet<String>,
    rx: mpsc::Receiver<(String, Answer)>,
    deadline: tokio::time::Instant,
    /// Acks ready to be yielded (nodes found gone, or left by the timeout).
    ready: VecDeque<ServerAck>,
    _guard: Booked,
}

impl AckState {
    async fn next(mut self) -> Option<(ServerAck, Self)> {
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + POLL, POLL);
        loop {
            if let Some(ack) = self.ready.pop_front() {
                return Some((ack, self));
            }
            if self.waiting.is_empty() {
                return None;
            }
            tokio::select! {
                biased;
                answer = self.rx.recv() => {
                    let (from, answer) = answer?;
                    if self.waiting.remove(&from) {
                        return Some((ServerAck::from_answer(from, answer), self));
                    }
                    // Say, a node that subscribed after the nodes were listed.
                    if let Some(held_back) = STRAY_LOG.allow() {
                        tracing::debug!(%from, held_back, "server event answer dropped: not waited for");
                    }
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    let mut late: Vec<String> = self.waiting.drain().collect();
                    late.sort();
                    tracing::warn!(waiting = ?late, "server event timed out waiting for nodes");
                    self.ready.extend(
                        late.into_iter()
                            .map(|n| ServerAck::new(n, Err(ServerAckError::Timeout))),
                    );
                }
                _ = poll.tick() => match self.events.nodes().await {
                    Ok(live) => {
                        let mut gone: Vec<String> =
                            self.waiting.difference(&live).cloned().collect();
                        gone.sort();
                        for node in gone {
                            tracing::info!(%node, "server event stops waiting for a node whose subscription vanished");
                            self.waiting.remove(&node);
                            self.ready.push_back(ServerAck::new(node, Err(ServerAckError::Gone)));
                        }
                    }
                    Err(e) => tracing::debug!("cannot list the nodes on redis: {e}"),
                },
            }
        }
    }
}

/// Subscribe to this node's channels, then hand what arrives to the service while it
/// lives; unsubscribe when it is dropped.
async fn receive(
    events: Weak<RedisEvents>,
    ready: watch::Sender<Option<Result<(), String>>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Some(this) = events.upgrade() else { return };
    let driver = this.driver.clone();
    // Events first: a node listed (its own channel subscribed) hears every event sent
    // after the listing.
    let chans = [this.all.clone(), this.own_channel(&this.name)];
    drop(this);
    let mut streams = Vec::new();
    for chan in &chans {
        match driver.subscribe(chan.clone(), QUEUE).await {
            Ok(s) => streams.push(s),
            Err(e) => {
                tracing::warn!(%chan, "server events: cannot subscribe: {e}");
                let _ = ready.send(Some(Err(format!("cannot subscribe to {chan}: {e}"))));
                for chan in chans {
                    let _ = driver.unsubscribe(chan).await;
                }
                return;
            }
        }
    }
    let _ = ready.send(Some(Ok(())));
    let mut merged = futures_util::stream::select_all(streams);
    loop {
        tokio::select! {
            item = merged.next() => {
                let Some((_, payload)) = item else { break };
                let Some(this) = events.upgrade() else { break };
                this.on_message(&payload);
            }
            _ = &mut stopped => break,
        }
    }
    for chan in chans {
        let _ = driver.unsubscribe(chan).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_oversized_ones_are_refused_before_decoding() {
        let msgs = [
            Msg::Event {
                from: "a".into(),
                id: Some(7),
                event: "e".into(),
                data: Bytes::from_static(b"[1]"),
            },
            Msg::Reply {
                from: "b".into(),
                id: 7,
                answer: WireAnswer::Ack(Bytes::from_static(b"2")),
            },
            Msg::Reply {
                from: "b".into(),
                id: 8,
                answer: WireAnswer::NoHandler,
            },
        ];
        for msg in msgs {
            assert_eq!(decode(&encode(&msg).unwrap()).unwrap(), msg);
        }
        assert!(decode(&[0xc1]).is_err());
        let err = decode(&vec![0; MAX_MESSAGE + 1]).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
    }
}
