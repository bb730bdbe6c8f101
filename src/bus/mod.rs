//! The one bus every cluster-wide feature (server events, presence, the replicated session
//! store) runs on: what a feature needs of a backend, written once as the [`Bus`] trait,
//! with a gossip implementation (`gossip`, over the node's services and its one request
//! ledger) and a Redis one (`redis`, over pub/sub on the backend's connection).
//!
//! A feature is a *service*: it registers a [`Handler`] under its name, and exchanges its
//! own encoded messages (bytes the bus never reads) with its instances on the other
//! members:
//!
//! - **members and their changes**: [`Bus::members`], [`Bus::changes`];
//! - **publish**: [`Bus::send`] to every member or to one, in order per target;
//! - **request with answers**: [`Bus::request`], whose [`Replies`] wait for exactly the
//!   members asked and stop waiting for one the moment the bus finds it gone.
//!
//! Above: the features. Below: the gossip node and the Redis backend. Nothing here knows
//! what a feature's messages mean.

#[cfg(feature = "cluster-gossip")]
pub(crate) mod gossip;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::{
    any::Any,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_core::{Stream, future::BoxFuture, stream::BoxStream};

/// A node of the cluster, as the bus names it: its name and its generation (a restarted
/// node is a new one). The gossip node's peer id, the same on both backends.
pub(crate) use crate::peer::PeerId as NodeId;

/// A change of the live members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemberChange {
    /// A node joined (or came back with a new generation).
    Joined(NodeId),
    /// A node left, or was found gone.
    Left(NodeId),
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum To {
    /// Every live member, as the bus knows them when it sends.
    All,
    /// One node.
    One(NodeId),
}

/// Receives the messages of one service from its instances on other nodes. Must not
/// block: the bus calls it on its receiving path.
pub(crate) trait Handler: Send + Sync + 'static {
    /// A message from `from`.
    fn on_message(&self, from: &NodeId, body: Bytes);

    /// A message whose sender waits for an answer: answer through `reply`, at once or
    /// later. By default, handled as [`on_message`](Self::on_message) and answered
    /// [`Outcome::Done`].
    fn on_request(&self, from: &NodeId, body: Bytes, reply: Reply) {
        self.on_message(from, body);
        drop(reply);
    }
}

/// The answer still owed to the sender of a request. Dropped without
/// [`send`](Self::send), it answers [`Outcome::Done`] (handled, no answer).
pub(crate) struct Reply(Option<Box<dyn FnOnce(Option<Bytes>) + Send>>);

impl Reply {
    /// A reply that hands the answer (`None`: done without one) to `answer`, once.
    pub(crate) fn new(answer: impl FnOnce(Option<Bytes>) + Send + 'static) -> Self {
        Self(Some(Box::new(answer)))
    }

    /// Answer with the service's own `body`; never waits.
    pub(crate) fn send(mut self, body: Bytes) {
        if let Some(answer) = self.0.take() {
            answer(Some(body));
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(answer) = self.0.take() {
            answer(None);
        }
    }
}

/// What happened next to a request, one node at a time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The node's service answered `body`.
    Answer(NodeId, Bytes),
    /// The node could not send its answer (larger than the bus carries), and said why.
    Refused(NodeId, String),
    /// The node owes nothing more: its service handled the message without an answer, or
    /// it runs no such service.
    Done(NodeId),
    /// The node was found gone: the request no longer waits for it.
    Gone(NodeId),
    /// The deadline passed while these nodes still owed an answer.
    TimedOut(Vec<NodeId>),
}

/// The outcomes of one request, as they come: one per node asked (the nodes left by the
/// deadline together), then the end. Dropping it forgets the request.
pub(crate) struct Replies(BoxStream<'static, Outcome>);

impl Replies {
    pub(crate) fn new(outcomes: impl Stream<Item = Outcome> + Send + 'static) -> Self {
        Self(Box::pin(outcomes))
    }
}

impl Stream for Replies {
    type Item = Outcome;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outcome>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// Why the bus could not send a message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BusError {
    /// The message is larger than the other nodes accept.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// The backend failed to send it (say, Redis is unreachable), or it cannot be encoded.
    #[error("{0}")]
    Backend(String),
}

/// Keeps a service registered: dropped, the service stops receiving (a node then answers
/// its requests as one that runs no such service).
pub(crate) struct Registration(#[allow(dead_code)] Arc<dyn Any + Send + Sync>);

impl Registration {
    pub(crate) fn new(keep: Arc<dyn Any + Send + Sync>) -> Self {
        Self(keep)
    }
}

/// What every cluster-wide feature needs of a backend (see the [module docs](self)).
pub(crate) trait Bus: Send + Sync + 'static {
    /// This node.
    fn me(&self) -> &NodeId;

    /// The live members other than this node, as the bus knows them now.
    fn members(&self) -> Vec<NodeId>;

    /// The changes of the members from now on. Subscribe before reading
    /// [`members`](Self::members), so that no change falls in between.
    fn changes(&self) -> BoxStream<'static, MemberChange>;

    /// The largest message body the other nodes accept, in bytes.
    fn max_body(&self) -> usize;

    /// Wait (at most `limit`) until this node hears what the others send: at once on
    /// gossip; on Redis, once its channels are subscribed (or an error saying why not).
    fn ready(&self, limit: Duration) -> BoxFuture<'_, Result<(), BusError>>;

    /// Route the messages of `service` to `handler` while the registration lives
    /// (replacing an earlier handler of that service).
    fn register(&self, service: &'static str, handler: Weak<dyn Handler>) -> Registration;

    /// Send `body` to `service` on `to`, in order per target. With `confirm`, also wait
    /// until each target handled it, was found gone, or runs no such service, at most the
    /// backend's request timeout. Fails, sending nothing, when the body is larger than
    /// [`max_body`](Self::max_body).
    fn send(
        &self,
        to: To,
        service: &'static str,
        body: Bytes,
        confirm: bool,
    ) -> BoxFuture<'_, Result<(), BusError>>;

    /// Send `body` to `service` on `to` and read the answers, waiting at most `wait`.
    fn request(
        &self,
        to: To,
        service: &'static str,
        body: Bytes,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Replies, BusError>>;

    /// Run `task` in a task of its own (in the node's log span, on gossip).
    fn spawn(&self, task: BoxFuture<'static, ()>);
}
