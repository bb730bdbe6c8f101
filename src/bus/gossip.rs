//! The bus on the gossip backend: the node's services over the authenticated QUIC mesh.
//! Members are the node's verified members; a request is one of the node's one ledger,
//! which stops waiting for a member the moment it is found gone (closed link, confirmed
//! unreachable, keep-alives silent, leave).

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use futures_core::{future::BoxFuture, stream::BoxStream};
use futures_util::{FutureExt, StreamExt};

use super::{
    Bus, BusError, Handler, MemberChange, NodeId, Outcome, Registration, Replies, Reply, To,
};
use crate::{
    error::RequestError,
    gossip::{
        node::{Cluster, MembershipEvent, Node, Pending, ServiceHandler, ServiceReply},
        peer::PeerId,
        wire::ResponseBody,
    },
};

/// Room for the frame header and the service name around a message body.
const FRAME_OVERHEAD: usize = 64;

/// The bus of one gossip node.
pub(crate) struct GossipBus {
    node: Arc<Node>,
    me: NodeId,
}

impl GossipBus {
    /// The bus of `node`.
    pub(crate) fn start(node: Arc<Node>) -> Arc<dyn Bus> {
        let me = node.me().clone();
        Arc::new(Self { node, me })
    }
}

impl Cluster {
    /// The bus the cluster-wide features of this node run on.
    pub(crate) fn bus(&self) -> Arc<dyn Bus> {
        GossipBus::start(self.node().clone())
    }
}

impl From<RequestError> for BusError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::TooLarge { size, max } => Self::TooLarge { size, max },
            other => Self::Backend(other.to_string()),
        }
    }
}

impl GossipBus {
    fn targets(&self, to: To) -> Vec<PeerId> {
        match to {
            To::All => self.node.members().iter().map(|m| m.peer_id()).collect(),
            To::One(node) => vec![node],
        }
    }
}

/// Hands the messages of one service, as the node routes them, to the feature's handler.
struct Route(Weak<dyn Handler>);

impl ServiceHandler for Route {
    fn on_message(&self, from: &PeerId, body: Bytes) {
        if let Some(handler) = self.0.upgrade() {
            handler.on_message(from, body);
        }
    }

    fn on_request(&self, from: &PeerId, body: Bytes, reply: ServiceReply) {
        let Some(handler) = self.0.upgrade() else {
            return;
        };
        let reply = Reply::new(move |answer| {
            if let Some(body) = answer {
                reply.send(body);
            }
        });
        handler.on_request(from, body, reply);
    }
}

impl Bus for GossipBus {
    fn me(&self) -> &NodeId {
        &self.me
    }

    fn members(&self) -> Vec<NodeId> {
        self.node.members().iter().map(|m| m.peer_id()).collect()
    }

    fn changes(&self) -> BoxStream<'static, MemberChange> {
        self.node
            .events()
            .map(|ev| match ev {
                MembershipEvent::Joined(m) => MemberChange::Joined(m.peer_id()),
                MembershipEvent::Left(m) => MemberChange::Left(m.peer_id()),
            })
            .boxed()
    }

    fn max_body(&self) -> usize {
        self.node.max_frame_size().saturating_sub(FRAME_OVERHEAD)
    }

    fn ready(&self, _limit: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        // A node serves from the moment it is made.
        async { Ok(()) }.boxed()
    }

    fn register(&self, service: &'static str, handler: Weak<dyn Handler>) -> Registration {
        let route = Arc::new(Route(handler));
        let weak: Weak<dyn ServiceHandler> = Arc::downgrade(&route) as _;
        self.node.register_service(service, weak);
        Registration::new(route)
    }

    fn send(
        &self,
        to: To,
        service: &'static str,
        body: Bytes,
        confirm: bool,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let targets = self.targets(to);
        async move {
            if targets.is_empty() {
                return Ok(());
            }
            Ok(self
                .node
                .send_service(&targets, service, body, confirm)
                .await?)
        }
        .boxed()
    }

    fn request(
        &self,
        to: To,
        service: &'static str,
        body: Bytes,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Replies, BusError>> {
        let targets = self.targets(to);
        async move {
            let pending = self
                .node
                .request_service(&targets, service, body, wait)
                .await?;
            Ok(outcomes(pending))
        }
        .boxed()
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.node.spawn(task);
    }
}

/// The outcomes of a request of the node's ledger, as the bus tells them: one per node
/// (the ledger tells a node that answered with a body twice: its answer, then that it owes
/// nothing more).
fn outcomes(pending: Pending) -> Replies {
    use crate::gossip::node::Outcome as Ledger;
    let state = (pending, HashSet::<PeerId>::new());
    Replies::new(futures_util::stream::unfold(
        state,
        |(mut pending, mut told)| async move {
            loop {
                let outcome = match pending.next_outcome().await? {
                    Ledger::Kept(peer, ResponseBody::Service(body))
                        if told.insert(peer.clone()) =>
                    {
                        Outcome::Answer(peer, body)
                    }
                    Ledger::Kept(peer, ResponseBody::Refused(why)) if told.insert(peer.clone()) => {
                        Outcome::Refused(peer, why)
                    }
                    // Nothing else answers a service's request.
                    Ledger::Kept(..) => continue,
                    Ledger::Answered(peer) if told.contains(&peer) => continue,
                    Ledger::Answered(peer) => Outcome::Done(peer),
                    Ledger::Gone(peer) if told.contains(&peer) => continue,
                    Ledger::Gone(peer) => Outcome::Gone(peer),
                    Ledger::TimedOut(peers) => {
                        Outcome::TimedOut(peers.into_iter().filter(|p| !told.contains(p)).collect())
                    }
                };
                return Some((outcome, (pending, told)));
            }
        },
    ))
}
