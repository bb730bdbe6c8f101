//! Server-to-server events: a node emits an event with data to every other node of the
//! cluster, where a handler of that event gets it; with an ack, each node's handler
//! answers, and the sender reads one answer per node as they come.
//!
//! Get the handle with [`ClusterAdapterCtr::server_events`](crate::ClusterAdapterCtr::server_events)
//! (either backend) or [`Cluster::server_events`](crate::Cluster::server_events) (gossip),
//! once per node, before the constructor goes to socketioxide; clone it freely. Handlers
//! run while a clone of the handle lives.
//!
//! - **Gossip**: events travel over the authenticated QUIC mesh, never over gossip, to
//!   every live member. An ack request waits for exactly those members, and stops waiting
//!   for one the moment it is found gone (its connection closed, its port unreachable, its
//!   keep-alives silent for the peer timeout, or a graceful leave): a killed or hung node
//!   costs at most the peer timeout, not the ack timeout.
//! - **Redis**: events go through Redis pub/sub on channels under the backend's prefix.
//!   Each node also subscribes to a channel of its own name; an ack request lists those
//!   channels (`PUBSUB CHANNELS`) to know which nodes to wait for, and checks them again
//!   while it waits, so a node whose subscription vanished (its process died, its
//!   connection to Redis closed) is no longer waited for. A hung node whose connection
//!   stays open is waited for until the timeout. The node name is
//!   `SOCKETIO_CLUSTER_NODE_NAME` when set, else a random one; give every node its own.
//!
//! The data of an event and of an answer is any `serde` value, sent as JSON. Event names
//! are 1 to [`MAX_EVENT_NAME`] bytes. Handlers never run on the node's receiving path:
//! each event is handed to a task of its own, at most [`MAX_RUNNING`] at a time per node;
//! beyond that, an event is dropped, counted ([`ServerEvents::dropped`]) and logged, and
//! its sender gets [`ServerAckError::Overloaded`].
//!
//! ```no_run
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use socketioxide::SocketIo;
//! use socketioxide_cluster::{ClusterAdapter, ClusterAdapterCtr, events::ServerEvent};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ctr = ClusterAdapterCtr::from_env().await?;
//! let events = ctr.server_events();
//! // Every node logs the admin broadcasts of the others, and answers with its name.
//! let me = events.node_name().to_string();
//! events.on("admin", move |ev: ServerEvent| {
//!     let me = me.clone();
//!     async move {
//!         let text: String = ev.data().unwrap_or_default();
//!         println!("admin broadcast from {}: {text}", ev.from());
//!         ev.ack(&me).ok();
//!     }
//! });
//! let (layer, io) = SocketIo::builder().with_adapter::<ClusterAdapter<_>>(ctr).build_layer();
//!
//! events.emit("admin", &"maintenance at 10:00").await?;
//! let mut acks = events.emit_with_ack("admin", &"who is there?", Duration::from_secs(2)).await?;
//! while let Some(ack) = acks.next().await {
//!     match ack.result {
//!         Ok(answer) => println!("{} answered {answer}", ack.node),
//!         Err(e) => println!("{}: {e}", ack.node),
//!     }
//! }
//! # Ok(()) }
//! ```

#[cfg(feature = "cluster-gossip")]
mod gossip;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_core::Stream;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Semaphore;

use crate::rate_log::RateLog;

/// Longest event name, in bytes.
pub const MAX_EVENT_NAME: usize = 256;
/// Most handlers of incoming events running at once on one node.
pub const MAX_RUNNING: usize = 1024;

/// At most one log line per kind of dropped event in this period.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// An error of emitting an event, or of reading or answering one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerEventError {
    /// The event name is empty or longer than [`MAX_EVENT_NAME`] bytes.
    #[error("event name of {0} bytes: 1 to {MAX_EVENT_NAME} bytes allowed")]
    EventName(usize),
    /// The data cannot be encoded as JSON.
    #[error("cannot encode the data as JSON: {0}")]
    Encode(String),
    /// The data does not decode into the type asked for.
    #[error("cannot decode the data: {0}")]
    Decode(String),
    /// The message is larger than the cluster accepts.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// The backend could not send it (say, Redis is unreachable).
    #[error("cannot send the event: {0}")]
    Backend(String),
}

/// Why a node's answer to an event sent with an ack is missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerAckError {
    /// The node was found gone (dead, hung past the peer timeout, left, or, on Redis, its
    /// subscription vanished) before it answered.
    #[error("the node was found gone before it answered")]
    Gone,
    /// The node did not answer within the timeout.
    #[error("the node did not answer in time")]
    Timeout,
    /// The node has no handler for the event.
    #[error("the node has no handler for this event")]
    NoHandler,
    /// The node's handler ended without answering.
    #[error("the node's handler did not answer")]
    NoAck,
    /// The node runs no server events, or could not read the event.
    #[error("the node runs no server events, or could not read the event")]
    NotRunning,
    /// The node was running as many handlers as it allows and dropped the event.
    #[error("the node was overloaded and dropped the event")]
    Overloaded,
    /// The answer is not valid JSON.
    #[error("the answer does not decode: {0}")]
    Malformed(String),
    /// The node could not send its answer (larger than the cluster carries), and said why.
    #[error("the node could not send its answer: {0}")]
    Refused(String),
}

/// One node's answer to an event sent with [`ServerEvents::emit_with_ack`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ServerAck {
    /// The node's name.
    pub node: String,
    /// What its handler answered, or why there is no answer.
    pub result: Result<serde_json::Value, ServerAckError>,
}

impl ServerAck {
    fn new(node: impl Into<String>, result: Result<serde_json::Value, ServerAckError>) -> Self {
        Self {
            node: node.into(),
            result,
        }
    }

    /// The ack of `node` from what it replied.
    fn from_answer(node: impl Into<String>, answer: Answer) -> Self {
        let result = match answer {
            Answer::Ack(json) => {
                serde_json::from_slice(&json).map_err(|e| ServerAckError::Malformed(e.to_string()))
            }
            Answer::NoAck => Err(ServerAckError::NoAck),
            Answer::NoHandler => Err(ServerAckError::NoHandler),
            Answer::Overloaded => Err(ServerAckError::Overloaded),
        };
        Self::new(node, result)
    }
}

/// The answers to an event sent with an ack: one [`ServerAck`] per node, as they come. It
/// ends once every node waited for answered or was found gone, or at the timeout (then
/// each node still waited for gets a [`ServerAckError::Timeout`] item).
pub struct ServerAcks(Pin<Box<dyn Stream<Item = ServerAck> + Send>>);

impl std::fmt::Debug for ServerAcks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAcks").finish_non_exhaustive()
    }
}

impl Stream for ServerAcks {
    type Item = ServerAck;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ServerAck>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// What a node answers to an event sent with an ack (each backend has its own encoding).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    Ack(Bytes),
    NoAck,
    NoHandler,
    Overloaded,
}

/// Sends a node's answer back to the sender of an event, once.
pub(crate) type Replier = Box<dyn FnOnce(Answer) + Send>;

/// An event received from another node, handed to the handler of its name.
pub struct ServerEvent {
    from: String,
    event: String,
    data: Bytes,
    reply: Option<Replier>,
    max_ack: usize,
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
    /// dropped without an answer answers [`ServerAckError::NoAck`].
    pub fn ack(mut self, data: &impl Serialize) -> Result<(), ServerEventError> {
        let json = serde_json::to_vec(data).map_err(|e| ServerEventError::Encode(e.to_string()))?;
        if json.len() > self.max_ack {
            return Err(ServerEventError::TooLarge {
                size: json.len(),
                max: self.max_ack,
            });
        }
        if let Some(reply) = self.reply.take() {
            reply(Answer::Ack(Bytes::from(json)));
        }
        Ok(())
    }
}

impl Drop for ServerEvent {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply(Answer::NoAck);
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Handler = Arc<dyn Fn(ServerEvent) -> BoxFuture + Send + Sync>;

/// The handlers of one node and what bounds them; shared by both backends.
pub(crate) struct Handlers {
    table: RwLock<HashMap<String, Handler>>,
    running: Arc<Semaphore>,
    dropped: AtomicU64,
    dropped_log: RateLog,
}

impl Handlers {
    fn new() -> Self {
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
                reply(Answer::NoHandler);
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
                reply(Answer::NoHandler);
            }
            return;
        };
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            self.refuse(&from, "as many handlers as allowed are running");
            if let Some(reply) = reply {
                reply(Answer::Overloaded);
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

fn check_name(event: &str) -> Result<(), ServerEventError> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME {
        return Err(ServerEventError::EventName(event.len()));
    }
    Ok(())
}

fn to_json(data: &impl Serialize) -> Result<Bytes, ServerEventError> {
    serde_json::to_vec(data)
        .map(Bytes::from)
        .map_err(|e| ServerEventError::Encode(e.to_string()))
}

#[derive(Clone)]
enum Backend {
    #[cfg(feature = "cluster-gossip")]
    Gossip(Arc<gossip::GossipEvents>),
    #[cfg(feature = "redis")]
    Redis(Arc<redis::RedisEvents>),
}

/// Server-to-server events of one node (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct ServerEvents {
    handlers: Arc<Handlers>,
    backend: Backend,
}

impl std::fmt::Debug for ServerEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerEvents")
            .field("node", &self.node_name())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl ServerEvents {
    #[cfg(feature = "cluster-gossip")]
    pub(crate) fn gossip(node: Arc<crate::gossip::node::Node>) -> Self {
        let handlers = Arc::new(Handlers::new());
        let backend = Backend::Gossip(gossip::GossipEvents::start(node, handlers.clone()));
        Self { handlers, backend }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis(handle: &crate::redis::RedisHandle) -> Self {
        let handlers = Arc::new(Handlers::new());
        let backend = Backend::Redis(redis::RedisEvents::start(handle, handlers.clone()));
        Self { handlers, backend }
    }

    /// This node's name, as other nodes see it in [`ServerEvent::from`] and
    /// [`ServerAck::node`].
    pub fn node_name(&self) -> &str {
        match &self.backend {
            #[cfg(feature = "cluster-gossip")]
            Backend::Gossip(g) => g.node_name(),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.node_name(),
        }
    }

    /// Wait (at most `limit`) until this handle hears the events other nodes emit. On
    /// gossip it does from the moment it is made ([`server_events`] returns a serving
    /// handle), and this returns at once. On Redis the handle subscribes in the
    /// background (making it cannot wait): an event emitted elsewhere before that is done
    /// may not reach this node, and this returns once it is, or an error if subscribing
    /// failed or took longer than `limit`. Await it before telling other nodes this one is
    /// ready.
    ///
    /// [`server_events`]: crate::ClusterAdapterCtr::server_events
    pub async fn ready(&self, limit: Duration) -> Result<(), ServerEventError> {
        match &self.backend {
            #[cfg(feature = "cluster-gossip")]
            Backend::Gossip(_) => {
                let _ = limit;
                Ok(())
            }
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.subscribed(limit).await,
        }
    }

    /// Handle the events named `event` that other nodes emit (replacing an earlier
    /// handler of that name). Each runs in a task of its own; answer with
    /// [`ServerEvent::ack`].
    pub fn on<F, Fut>(&self, event: impl Into<String>, handler: F)
    where
        F: Fn(ServerEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ev| Box::pin(handler(ev)));
        self.handlers
            .table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(event.into(), handler);
    }

    /// Stop handling the events named `event`.
    pub fn off(&self, event: &str) {
        self.handlers
            .table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(event);
    }

    /// Emit `event` with `data` to every other node; returns once it is sent (gossip:
    /// queued for each live member; Redis: published).
    pub async fn emit(&self, event: &str, data: &impl Serialize) -> Result<(), ServerEventError> {
        check_name(event)?;
        let data = to_json(data)?;
        match &self.backend {
            #[cfg(feature = "cluster-gossip")]
            Backend::Gossip(g) => g.emit(event, data).await,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.emit(event, data).await,
        }
    }

    /// Emit `event` with `data` to every other node and read their answers: one
    /// [`ServerAck`] per node, ending once every node waited for answered or was found
    /// gone, or at `timeout`.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        data: &impl Serialize,
        timeout: Duration,
    ) -> Result<ServerAcks, ServerEventError> {
        check_name(event)?;
        let data = to_json(data)?;
        match &self.backend {
            #[cfg(feature = "cluster-gossip")]
            Backend::Gossip(g) => g.emit_with_ack(event, data, timeout).await,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.emit_with_ack(event, data, timeout).await,
        }
    }

    /// Events from other nodes this node dropped since the handle was made: unreadable,
    /// with a bad name, or beyond [`MAX_RUNNING`] running handlers. Each kind is also
    /// logged, at most once every 10 s.
    pub fn dropped(&self) -> u64 {
        self.handlers.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
