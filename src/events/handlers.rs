//! The handlers of server events on one node: the table of handlers by event name, the
//! event handed to one ([`ServerEvent`], which answers its sender once), and the bound on
//! how many run at once. No I/O: the service hands events in and sends the answers out.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Semaphore;

use super::{MAX_EVENT_NAME, MAX_RUNNING, ServerEventError, wire::EventReply};
use crate::rate_log::RateLog;

/// At most one log line per kind of dropped event in this period.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Sends a node's answer back to the sender of an event, once.
pub(crate) type Replier = Box<dyn FnOnce(EventReply) + Send>;

/// An event received from another node, handed to the handler of its name.
pub struct ServerEvent {
    pub(super) from: String,
    pub(super) event: String,
    pub(super) data: Bytes,
    pub(super) reply: Option<Replier>,
    pub(super) max_ack: usize,
}

impl std::fmt::Debug for ServerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerEvent")
            .field("from", &self.from)
            .field("event", &self.event)
            .field("data_len", &self.data.len())
            .field("wants_ack", &self.wants_ack())
            .finish()
    }
}

impl ServerEvent {
    /// The name of the node that emitted it.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// The event's name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The data, decoded from its JSON.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, ServerEventError> {
        serde_json::from_slice(&self.data).map_err(|e| ServerEventError::Decode(e.to_string()))
    }

    /// The data as JSON text.
    pub fn raw_data(&self) -> &[u8] {
        &self.data
    }

    /// Whether the sender waits for an answer.
    pub fn wants_ack(&self) -> bool {
        self.reply.is_some()
    }

    /// Answer the sender with `data` (nothing happens if it waits for none). An event
    /// dropped without an answer answers [`ServerAckError::NoAck`](super::ServerAckError::NoAck).
    pub fn ack(mut self, data: &impl Serialize) -> Result<(), ServerEventError> {
        let json = serde_json::to_vec(data).map_err(|e| ServerEventError::Encode(e.to_string()))?;
        if json.len() > self.max_ack {
            return Err(ServerEventError::TooLarge {
                size: json.len(),
                max: self.max_ack,
            });
        }
        if let Some(reply) = self.reply.take() {
            reply(EventReply::Ack(Bytes::from(json)));
        }
        Ok(())
    }
}

impl Drop for ServerEvent {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply(EventReply::NoAck);
        }
    }
}

pub(super) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub(super) type Handler = Arc<dyn Fn(ServerEvent) -> BoxFuture + Send + Sync>;

/// The handlers of one node and what bounds them.
pub(crate) struct Handlers {
    pub(super) table: RwLock<HashMap<String, Handler>>,
    running: Arc<Semaphore>,
    pub(super) dropped: AtomicU64,
    dropped_log: RateLog,
}

impl Handlers {
    pub(super) fn new() -> Self {
        Self {
            table: RwLock::default(),
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
            dropped: AtomicU64::new(0),
            dropped_log: RateLog::new(LOG_PERIOD),
        }
    }

    /// An event from `from`: run its handler in a task of its own, or answer why not.
    /// Never waits.
    pub(crate) fn deliver(
        &self,
        from: String,
        event: String,
        data: Bytes,
        reply: Option<Replier>,
        max_ack: usize,
    ) {
        if check_name(&event).is_err() {
            self.refuse(&from, "its event name is empty or too long");
            if let Some(reply) = reply {
                reply(EventReply::NoHandler);
            }
            return;
        }
        let handler = self
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&event)
            .cloned();
        let Some(handler) = handler else {
            tracing::debug!(%from, %event, "server event without a handler here");
            if let Some(reply) = reply {
                reply(EventReply::NoHandler);
            }
            return;
        };
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            self.refuse(&from, "as many handlers as allowed are running");
            if let Some(reply) = reply {
                reply(EventReply::Overloaded);
            }
            return;
        };
        let ev = ServerEvent {
            from,
            event,
            data,
            reply,
            max_ack,
        };
        tokio::spawn(async move {
            handler(ev).await;
            drop(permit);
        });
    }

    /// Count and log (at a bounded rate) an event from `from` dropped for `why`.
    pub(crate) fn refuse(&self, from: &str, why: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(held_back) = self.dropped_log.allow() {
            tracing::warn!(%from, held_back, "server event dropped: {why}");
        }
    }
}

pub(super) fn check_name(event: &str) -> Result<(), ServerEventError> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME {
        return Err(ServerEventError::EventName(event.len()));
    }
    Ok(())
}

pub(super) fn to_json(data: &impl Serialize) -> Result<Bytes, ServerEventError> {
    serde_json::to_vec(data)
        .map(Bytes::from)
        .map_err(|e| ServerEventError::Encode(e.to_string()))
}
