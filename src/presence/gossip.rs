//! Presence on the gossip backend: the replica's messages travel over the authenticated
//! QUIC mesh as a cluster service, one ordered queue for all of them; membership events
//! drive the state exchange with a joiner and the removal of a leaver's entries.

use std::{sync::Arc, sync::Weak};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{
    Presence, PresenceConfig, Queue, Shared, Target,
    replica::{Origin, Replica},
};
use crate::{
    gossip::node::{MembershipEvent, Node, ServiceHandler},
    gossip::peer::PeerId,
    gossip::wire::{
        self,
        presence::{PresenceMsg, SERVICE},
    },
};

/// Largest state chunk, whatever the frame limit.
const MAX_CHUNK: usize = 1024 * 1024;

fn origin(peer: &PeerId) -> Origin {
    Origin {
        name: peer.name.clone(),
        generation: peer.generation,
    }
}

/// Receives the presence messages of peers.
struct Handler {
    shared: Weak<Shared>,
    queue: Arc<Queue<PeerId>>,
    budget: usize,
}

impl Handler {
    /// Queue this node's state for `peer` (call with the replica locked).
    fn push_state(&self, replica: &Replica, peer: &PeerId) {
        for m in replica.own_state(self.budget) {
            self.queue.push(Target::Peer(peer.clone()), m);
        }
    }
}

/// Presence messages from peers that do not decode: logged at most once per period.
static UNDECODED_LOG: crate::rate_log::RateLog =
    crate::rate_log::RateLog::new(std::time::Duration::from_secs(10));

impl ServiceHandler for Handler {
    fn on_message(&self, from: &PeerId, body: Bytes) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let msg = match wire::decode_body::<PresenceMsg>(&body) {
            Ok(msg) => msg,
            Err(e) => {
                if let Some(held_back) = UNDECODED_LOG.allow() {
                    tracing::warn!(peer = %from, held_back, "presence message dropped: {e}");
                }
                return;
            }
        };
        shared.take_in(
            &self.queue,
            &origin(from),
            from,
            || Target::Peer(from.clone()),
            self.budget,
            msg,
        );
    }
}

impl crate::Cluster {
    /// Start this node's presence (see [`presence`](crate::presence)). Start one per
    /// node: a second one replaces the first.
    pub fn presence(&self, config: PresenceConfig) -> Presence {
        start(self.node().clone(), &config)
    }
}

fn start(node: Arc<Node>, config: &PresenceConfig) -> Presence {
    let me = node.me();
    let budget = (node.max_frame_size() / 2).min(MAX_CHUNK);
    let replica = Replica::new(origin(me), config.clone(), budget);
    let (queue, rx) = Queue::new(config, &me.name);
    let presence = Presence::new(replica, queue.clone(), config);
    let handler = Arc::new(Handler {
        shared: Arc::downgrade(&presence.shared),
        queue,
        budget,
    });
    node.register_service(
        SERVICE,
        Arc::downgrade(&handler) as Weak<dyn ServiceHandler>,
    );
    // Subscribe before asking the current members, so that no join falls in between.
    let events = node.events();
    {
        let replica = presence.shared.lock();
        for m in node.members() {
            let peer = m.peer_id();
            handler.push_state(&replica, &peer);
            handler
                .queue
                .push(Target::Peer(peer), PresenceMsg::StateRequest);
        }
    }
    node.spawn(send(Arc::downgrade(&node), rx));
    node.spawn(run(handler, events, config.clone()));
    presence
}

/// Send the queued messages, in order.
async fn send(node: Weak<Node>, mut rx: mpsc::Receiver<(Target<PeerId>, PresenceMsg)>) {
    while let Some((to, msg)) = rx.recv().await {
        let Some(node) = node.upgrade() else { return };
        let body = match wire::encode_body(&msg) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!("presence message not encoded: {e}");
                continue;
            }
        };
        let targets = match to {
            Target::Members => node.members().iter().map(|m| m.peer_id()).collect(),
            Target::Peer(p) => vec![p],
        };
        if targets.is_empty() {
            continue;
        }
        if let Err(e) = node.send_service(&targets, SERVICE, body, false).await {
            tracing::warn!("presence message not sent: {e}");
        }
    }
}

/// React to membership changes, sweep disconnected sockets, announce this node's sequence
/// number; stop with the presence.
async fn run(
    handler: Arc<Handler>,
    mut events: std::pin::Pin<Box<dyn futures_core::Stream<Item = MembershipEvent> + Send>>,
    config: PresenceConfig,
) {
    let mut sweep = tokio::time::interval(config.sweep_interval);
    let mut announce = tokio::time::interval(config.announce_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.next() => {
                let Some(shared) = handler.shared.upgrade() else { return };
                match ev {
                    Some(MembershipEvent::Joined(m)) => {
                        let peer = m.peer_id();
                        let mut replica = shared.lock();
                        replica.joined(&origin(&peer));
                        // Push this node's entries and pull the joiner's: a new node catches
                        // up, and so do the two sides of a healed partition.
                        handler.push_state(&replica, &peer);
                        handler.queue.push(Target::Peer(peer), PresenceMsg::StateRequest);
                    }
                    Some(MembershipEvent::Left(m)) => {
                        let mut replica = shared.lock();
                        let diffs = replica.left(&origin(&m.peer_id()));
                        if !diffs.is_empty() {
                            tracing::debug!(node = %m.node_name, "presence: the entries of a node that left removed");
                        }
                        shared.publish(&replica, diffs);
                    }
                    None => return,
                }
            }
            _ = sweep.tick() => {
                let Some(shared) = handler.shared.upgrade() else { return };
                shared.sweep();
            }
            _ = announce.tick() => {
                let Some(shared) = handler.shared.upgrade() else { return };
                shared.announce(&handler.queue);
            }
        }
    }
}
