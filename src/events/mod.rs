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
//!   Each node is subscribed to a channel of its own; an ack request lists those channels
//!   (`PUBSUB CHANNELS`) to know which nodes to wait for, and checks them again while it
//!   waits, so a node whose subscription vanished (its process died, its connection to
//!   Redis closed) is no longer waited for. A hung node whose connection stays open is
//!   waited for until the timeout. The node name is `SOCKETIO_CLUSTER_NODE_NAME` when set,
//!   else a random one; give every node its own.
//!
//! Both are the node's bus (the crate's `bus` module): this module is written once over
//! it. A node that runs no server events answers [`ServerAckError::NotRunning`] at once.
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

mod handlers;
mod service;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use serde::Serialize;

pub use handlers::ServerEvent;
use handlers::{Handler, Handlers, check_name, to_json};
use service::EventService;
use wire::EventReply;

/// Longest event name, in bytes.
pub const MAX_EVENT_NAME: usize = 256;
/// Most handlers of incoming events running at once on one node.
pub const MAX_RUNNING: usize = 1024;

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
    fn from_answer(node: impl Into<String>, answer: EventReply) -> Self {
        let result = match answer {
            EventReply::Ack(json) => {
                serde_json::from_slice(&json).map_err(|e| ServerAckError::Malformed(e.to_string()))
            }
            EventReply::NoAck => Err(ServerAckError::NoAck),
            EventReply::NoHandler => Err(ServerAckError::NoHandler),
            EventReply::Overloaded => Err(ServerAckError::Overloaded),
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

/// Server-to-server events of one node (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct ServerEvents {
    handlers: Arc<Handlers>,
    service: Arc<EventService>,
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
    /// Start this node's server events on `bus`. A second start on one node replaces the
    /// first, whose handlers stop receiving.
    pub(crate) fn start(bus: Arc<dyn crate::bus::Bus>) -> Self {
        let handlers = Arc::new(Handlers::new());
        let service = EventService::start(bus, handlers.clone());
        Self { handlers, service }
    }

    /// This node's name, as other nodes see it in [`ServerEvent::from`] and
    /// [`ServerAck::node`].
    pub fn node_name(&self) -> &str {
        self.service.node_name()
    }

    /// Wait (at most `limit`) until this handle hears the events other nodes emit. A node
    /// is on its bus once its constructor returned (on Redis, subscribed to the bus's
    /// channels), so a handle hears events from the moment it is made and this returns
    /// at once; it fails, saying why, only if the node's subscription to Redis failed.
    pub async fn ready(&self, limit: Duration) -> Result<(), ServerEventError> {
        Ok(self.service.ready(limit).await?)
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
        self.service.emit(event, to_json(data)?).await
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
        self.service
            .emit_with_ack(event, to_json(data)?, timeout)
            .await
    }

    /// Events from other nodes this node dropped since the handle was made: unreadable,
    /// with a bad name, or beyond [`MAX_RUNNING`] running handlers. Each kind is also
    /// logged, at most once every 10 s.
    pub fn dropped(&self) -> u64 {
        self.handlers.dropped.load(Ordering::Relaxed)
    }
}
