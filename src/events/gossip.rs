//! Server events on the gossip backend: a cluster-wide service of the node, over the
//! authenticated mesh. An event is a [`ServiceFrame`](crate::gossip::wire::ServiceFrame)
//! to every live member; with an ack it is a request of the node's one ledger, which
//! stops waiting for a member the moment it is found gone.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;

use super::{Answer, Handlers, Replier, ServerAck, ServerAckError, ServerAcks, ServerEventError};
use crate::{
    error::RequestError,
    gossip::{
        node::{Node, Outcome, Pending, ServiceHandler, ServiceReply},
        peer::PeerId,
        wire::{
            self, ResponseBody,
            events::{EventMsg, EventReply, SERVICE},
        },
    },
};

impl crate::Cluster {
    /// Start this node's server-to-server events (see [`events`](crate::events)). Start
    /// them once per node and keep (a clone of) the handle: a second start replaces the
    /// first, whose handlers stop receiving.
    pub fn server_events(&self) -> super::ServerEvents {
        super::ServerEvents::gossip(self.node().clone())
    }
}

/// Room for the frame header and service name around an event message.
const FRAME_OVERHEAD: usize = 64;

/// The events service of one node.
pub(crate) struct GossipEvents {
    node: Arc<Node>,
    handlers: Arc<Handlers>,
}

impl From<RequestError> for ServerEventError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::TooLarge { size, max } => Self::TooLarge { size, max },
            other => Self::Backend(other.to_string()),
        }
    }
}

impl GossipEvents {
    pub(crate) fn start(node: Arc<Node>, handlers: Arc<Handlers>) -> Arc<Self> {
        let events = Arc::new(Self { node, handlers });
        let handler: std::sync::Weak<dyn ServiceHandler> = Arc::downgrade(&events) as _;
        events.node.register_service(SERVICE, handler);
        events
    }

    pub(crate) fn node_name(&self) -> &str {
        &self.node.me().name
    }

    /// The largest message body peers accept.
    fn max_body(&self) -> usize {
        self.node.max_frame_size().saturating_sub(FRAME_OVERHEAD)
    }

    fn body(&self, event: &str, data: Bytes) -> Result<Bytes, ServerEventError> {
        let msg = EventMsg {
            event: event.to_string(),
            data,
        };
        let body = wire::encode_body(&msg).map_err(|e| ServerEventError::Encode(e.to_string()))?;
        let max = self.max_body();
        if body.len() > max {
            return Err(ServerEventError::TooLarge {
                size: body.len(),
                max,
            });
        }
        Ok(body)
    }

    fn members(&self) -> Vec<PeerId> {
        self.node.members().iter().map(|m| m.peer_id()).collect()
    }

    pub(crate) async fn emit(&self, event: &str, data: Bytes) -> Result<(), ServerEventError> {
        let body = self.body(event, data)?;
        Ok(self
            .node
            .send_service(&self.members(), SERVICE, body, false)
            .await?)
    }

    pub(crate) async fn emit_with_ack(
        &self,
        event: &str,
        data: Bytes,
        timeout: Duration,
    ) -> Result<ServerAcks, ServerEventError> {
        let body = self.body(event, data)?;
        let pending = self
            .node
            .request_service(&self.members(), SERVICE, body, timeout)
            .await?;
        Ok(acks(pending))
    }

    fn receive(&self, from: &PeerId, body: &[u8], reply: Option<ServiceReply>) {
        let from_name = from.name.to_string();
        let msg = match wire::decode_body::<EventMsg>(body) {
            Ok(msg) => msg,
            Err(e) => {
                // A reply dropped unanswered tells the sender the event was not read.
                self.handlers
                    .refuse(&from_name, &format!("it does not decode: {e}"));
                return;
            }
        };
        let replier = reply.map(|reply| -> Replier {
            Box::new(move |answer| match wire::encode_body(&to_wire(answer)) {
                Ok(body) => reply.send(body),
                Err(e) => tracing::warn!("server event answer not sent: {e}"),
            })
        });
        self.handlers
            .deliver(from_name, msg.event, msg.data, replier, self.max_body());
    }
}

impl ServiceHandler for GossipEvents {
    fn on_message(&self, from: &PeerId, body: Bytes) {
        self.receive(from, &body, None);
    }

    fn on_request(&self, from: &PeerId, body: Bytes, reply: ServiceReply) {
        self.receive(from, &body, Some(reply));
    }
}

fn to_wire(answer: Answer) -> EventReply {
    match answer {
        Answer::Ack(json) => EventReply::Ack(json),
        Answer::NoAck => EventReply::NoAck,
        Answer::NoHandler => EventReply::NoHandler,
        Answer::Overloaded => EventReply::Overloaded,
    }
}

fn from_wire(reply: EventReply) -> Answer {
    match reply {
        EventReply::Ack(json) => Answer::Ack(json),
        EventReply::NoAck => Answer::NoAck,
        EventReply::NoHandler => Answer::NoHandler,
        EventReply::Overloaded => Answer::Overloaded,
    }
}

/// What the request of an event tells, as acks: one per member asked.
struct AckState {
    pending: Pending,
    /// The members whose ack was yielded.
    done: HashSet<PeerId>,
    /// Acks ready to be yielded (the members a timeout left).
    ready: VecDeque<ServerAck>,
}

impl AckState {
    /// The ack `outcome` makes, if any.
    fn ack(&mut self, outcome: Outcome) -> Option<ServerAck> {
        let (peer, result) = match outcome {
            Outcome::Kept(peer, ResponseBody::Service(body)) => {
                let ack = match wire::decode_body::<EventReply>(&body) {
                    Ok(reply) => ServerAck::from_answer(peer.name.to_string(), from_wire(reply)),
                    Err(e) => ServerAck::new(
                        peer.name.to_string(),
                        Err(ServerAckError::Malformed(e.to_string())),
                    ),
                };
                return self.done.insert(peer).then_some(ack);
            }
            Outcome::Kept(peer, ResponseBody::Refused(why)) => {
                (peer, Err(ServerAckError::Refused(why)))
            }
            // Nothing else belongs to an event's request.
            Outcome::Kept(..) => return None,
            Outcome::Answered(peer) => (peer, Err(ServerAckError::NotRunning)),
            Outcome::Gone(peer) => (peer, Err(ServerAckError::Gone)),
            Outcome::TimedOut(peers) => {
                for peer in peers {
                    if self.done.insert(peer.clone()) {
                        self.ready.push_back(ServerAck::new(
                            peer.name.to_string(),
                            Err(ServerAckError::Timeout),
                        ));
                    }
                }
                return None;
            }
        };
        let ack = ServerAck::new(peer.name.to_string(), result);
        self.done.insert(peer).then_some(ack)
    }
}

fn acks(pending: Pending) -> ServerAcks {
    let state = AckState {
        pending,
        done: HashSet::new(),
        ready: VecDeque::new(),
    };
    ServerAcks(Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(ack) = state.ready.pop_front() {
                    return Some((ack, state));
                }
                let outcome = state.pending.next_outcome().await?;
                if let Some(ack) = state.ack(outcome) {
                    return Some((ack, state));
                }
            }
        },
    )))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::{
        events::ServerEvents,
        gossip::node::tests::{pair, until},
    };

    /// A member that sends bytes the events service cannot read: dropped, counted, and
    /// its request answered at once, whether or not it waits. Two real nodes on 127.0.0.1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_event_from_a_member_is_dropped_counted_and_answered() {
        let cluster = format!("events-garbage-{}", std::process::id());
        let (a, b) = pair(&cluster).await;
        let events = ServerEvents::gossip(a.clone());
        let garbage = Bytes::from_static(&[0xff, 0xff, 0xff]);
        let a_id = [a.me().clone()];
        b.send_service(&a_id, SERVICE, garbage.clone(), false)
            .await
            .unwrap();
        let pending = b
            .request_service(&a_id, SERVICE, garbage, Duration::from_secs(60))
            .await
            .unwrap();
        let acks: Vec<ServerAck> =
            tokio::time::timeout(Duration::from_secs(20), acks(pending).collect())
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
}
