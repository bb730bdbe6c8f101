//! Server events as a service of the bus, one code path for both backends: an event is a
//! message to every member, an event with an ack a request of the bus, whose outcomes
//! become one [`ServerAck`] per member asked.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{
    EventReply, Handlers, ServerAck, ServerAckError, ServerAcks, ServerEventError,
    handlers::Replier,
    wire::{EventMsg, SERVICE},
};
use crate::{
    bus::{self, Bus, BusError, NodeId, Outcome, Registration, Reply, To},
    codec,
};

/// Room for the encoding of an answer around its JSON.
const REPLY_OVERHEAD: usize = 16;

/// A refused cluster request, as the error of an event (kept for callers that convert).
#[cfg(feature = "cluster-gossip")]
impl From<crate::error::RequestError> for ServerEventError {
    fn from(e: crate::error::RequestError) -> Self {
        match e {
            crate::error::RequestError::TooLarge { size, max } => Self::TooLarge { size, max },
            other => Self::Backend(other.to_string()),
        }
    }
}

impl From<BusError> for ServerEventError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::TooLarge { size, max } => Self::TooLarge { size, max },
            BusError::Backend(why) => Self::Backend(why),
        }
    }
}

/// The events service of one node.
pub(super) struct EventService {
    bus: Arc<dyn Bus>,
    handlers: Arc<Handlers>,
    /// Dropped with the service: the bus stops routing events to it.
    _registration: Registration,
}

impl EventService {
    pub(super) fn start(bus: Arc<dyn Bus>, handlers: Arc<Handlers>) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<Self>| {
            let handler: Weak<dyn bus::Handler> = me.clone();
            let _registration = bus.register(SERVICE, handler);
            Self {
                bus,
                handlers,
                _registration,
            }
        })
    }

    pub(super) fn node_name(&self) -> &str {
        &self.bus.me().name
    }

    pub(super) async fn ready(&self, limit: Duration) -> Result<(), BusError> {
        self.bus.ready(limit).await
    }

    fn body(&self, event: &str, data: Bytes) -> Result<Bytes, ServerEventError> {
        let msg = EventMsg {
            event: event.to_string(),
            data,
        };
        let body = codec::encode_body(&msg).map_err(|e| ServerEventError::Encode(e.to_string()))?;
        let max = self.bus.max_body();
        if body.len() > max {
            return Err(ServerEventError::TooLarge {
                size: body.len(),
                max,
            });
        }
        Ok(body)
    }

    pub(super) async fn emit(&self, event: &str, data: Bytes) -> Result<(), ServerEventError> {
        let body = self.body(event, data)?;
        Ok(self.bus.send(To::All, SERVICE, body, false).await?)
    }

    pub(super) async fn emit_with_ack(
        &self,
        event: &str,
        data: Bytes,
        timeout: Duration,
    ) -> Result<ServerAcks, ServerEventError> {
        let body = self.body(event, data)?;
        let replies = self.bus.request(To::All, SERVICE, body, timeout).await?;
        Ok(acks(replies))
    }

    fn receive(&self, from: &NodeId, body: &[u8], reply: Option<Reply>) {
        let from_name = from.name.to_string();
        let msg = match codec::decode_body::<EventMsg>(body) {
            Ok(msg) => msg,
            Err(e) => {
                // A reply dropped unanswered tells the sender the event was not read.
                self.handlers
                    .refuse(&from_name, &format!("it does not decode: {e}"));
                return;
            }
        };
        let replier = reply.map(|reply| -> Replier {
            Box::new(move |answer| match codec::encode_body(&answer) {
                Ok(body) => reply.send(body),
                Err(e) => tracing::warn!("server event answer not sent: {e}"),
            })
        });
        let max_ack = self.bus.max_body().saturating_sub(REPLY_OVERHEAD);
        self.handlers
            .deliver(from_name, msg.event, msg.data, replier, max_ack);
    }
}

impl bus::Handler for EventService {
    fn on_message(&self, from: &NodeId, body: Bytes) {
        self.receive(from, &body, None);
    }

    fn on_request(&self, from: &NodeId, body: Bytes, reply: Reply) {
        self.receive(from, &body, Some(reply));
    }
}

/// The acks one outcome of an event's request makes: one per node it names.
pub(super) fn acks_of(outcome: Outcome) -> Vec<ServerAck> {
    let one = |node: NodeId, result| vec![ServerAck::new(node.name.to_string(), result)];
    match outcome {
        Outcome::Answer(node, body) => match codec::decode_body::<EventReply>(&body) {
            Ok(reply) => vec![ServerAck::from_answer(node.name.to_string(), reply)],
            Err(e) => one(node, Err(ServerAckError::Malformed(e))),
        },
        Outcome::Refused(node, why) => one(node, Err(ServerAckError::Refused(why))),
        Outcome::Done(node) => one(node, Err(ServerAckError::NotRunning)),
        Outcome::Gone(node) => one(node, Err(ServerAckError::Gone)),
        Outcome::TimedOut(nodes) => nodes
            .into_iter()
            .map(|n| ServerAck::new(n.name.to_string(), Err(ServerAckError::Timeout)))
            .collect(),
    }
}

/// The acks of an event's request, as its outcomes come.
pub(super) fn acks(replies: bus::Replies) -> ServerAcks {
    ServerAcks(Box::pin(
        replies.flat_map(|outcome| futures_util::stream::iter(acks_of(outcome))),
    ))
}
