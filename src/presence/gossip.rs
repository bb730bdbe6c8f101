//! Presence on the gossip backend: the replica's messages travel over the authenticated
//! QUIC mesh as a cluster service, one ordered queue for all of them; membership events
//! drive the state exchange with a joiner and the removal of a leaver's entries.

use std::{sync::Arc, sync::Weak};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{
    Presence, PresenceConfig, Shared,
    queue::{Item, Queue, Target},
    replica::{Origin, Replica},
};
use crate::{
    gossip::node::{MembershipEvent, Node, ServiceHandler},
    gossip::peer::PeerId,
    gossip::wire::{
        self,
        presence::{PresenceMsg, SERVICE},
    },
    rate_log::RateLog,
};

/// Presence messages this node could not send (none are expected: every entry fits a
/// message): logged at most once per period, node-wide.
static NOT_SENT_LOG: RateLog = RateLog::new(std::time::Duration::from_secs(10));

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
}

impl Handler {
    /// Queue this node's state for `peer`, as of its place in the queue (call with the
    /// replica locked, so that it is placed among the deltas as they are made).
    fn push_state(&self, _locked: &Replica, peer: &PeerId) {
        self.queue.push_state(peer.clone());
    }
}

impl ServiceHandler for Handler {
    fn on_message(&self, from: &PeerId, body: Bytes) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let msg = match wire::decode_body::<PresenceMsg>(&body) {
            Ok(msg) => msg,
            Err(e) => {
                let from = from.to_string();
                shared.refused(1, &format!("it does not decode: {e}"), &from);
                return;
            }
        };
        shared.take_in(&self.queue, &origin(from), from, msg);
    }
}

impl crate::gossip::node::Cluster {
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
        queue: queue.clone(),
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
    node.spawn(send(
        Arc::downgrade(&node),
        Arc::downgrade(&presence.shared),
        queue,
        budget,
        rx,
    ));
    node.spawn(run(handler, events, config.clone()));
    presence
}

/// Send the queued messages, in order; a queued state is taken as it is sent.
async fn send(
    node: Weak<Node>,
    shared: Weak<Shared>,
    queue: Arc<Queue<PeerId>>,
    budget: usize,
    mut rx: mpsc::Receiver<(Target<PeerId>, Item)>,
) {
    while let Some((to, item)) = rx.recv().await {
        let Some(node) = node.upgrade() else { return };
        let Some(msgs) = queue.messages(&to, item, &shared, budget) else {
            return;
        };
        let targets = match to {
            Target::Members => node.members().iter().map(|m| m.peer_id()).collect(),
            Target::Peer(p) => vec![p],
        };
        if targets.is_empty() {
            continue;
        }
        for msg in msgs {
            let sent = match wire::encode_body(&msg) {
                Ok(body) => node.send_service(&targets, SERVICE, body, false).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = sent
                && let Some(held_back) = NOT_SENT_LOG.allow()
            {
                tracing::warn!(held_back, "presence message not sent: {e}");
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gossip::{
        mesh::tests::capture_logs,
        node::tests::{Recorder, lines_with, pair, send_garbage, until},
    };

    /// How many whole states `r` received.
    fn states(r: &Recorder<PresenceMsg>) -> usize {
        r.count(|m| matches!(m, PresenceMsg::State { last: true, .. }))
    }

    /// A member that asks for the state again and again (a few bytes each time) gets it
    /// once for all the requests that came while one was waiting to be sent, not once per
    /// request: a request costs nothing like a copy of every entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_state_requests_is_answered_by_one_state() {
        let (a, b) = pair(&format!("presence-burst-{}", std::process::id())).await;
        let recorder = Recorder::<PresenceMsg>::on(&b, SERVICE);
        let presence = start(a.clone(), &PresenceConfig::default());
        {
            let mut replica = presence.shared.lock();
            for i in 0..5_000 {
                replica
                    .track(
                        "lobby",
                        &format!("user-{i}"),
                        &format!("{i:016}"),
                        Bytes::from_static(b"{}"),
                    )
                    .unwrap();
            }
        }
        // The state a pushes to b when its presence starts.
        assert!(until(Duration::from_secs(10), || states(&recorder) >= 1).await);
        let before = states(&recorder);

        let request = wire::encode_body(&PresenceMsg::StateRequest).unwrap();
        let to_a = [a.me().clone()];
        for _ in 0..50 {
            b.send_service(&to_a, SERVICE, request.clone(), false)
                .await
                .unwrap();
        }
        assert!(until(Duration::from_secs(10), || states(&recorder) > before).await);
        // Whatever still comes for the burst comes within this.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let answered = states(&recorder) - before;
        assert!(
            answered <= 2,
            "{answered} states sent for one burst of 50 requests"
        );
        drop(presence);
        b.shutdown().await;
        a.shutdown().await;
    }

    /// A member that sends what presence cannot read, over and over: one warning per period,
    /// with the count held back, not one per message.
    #[tokio::test]
    async fn unreadable_messages_from_a_member_are_logged_at_a_bounded_rate() {
        let (logs, _guard) = capture_logs();
        let (a, b) = pair(&format!("presence-garbage-{}", std::process::id())).await;
        let presence = start(a.clone(), &PresenceConfig::default());
        send_garbage(&b, &a, SERVICE, 20).await;
        let warned = lines_with(&logs, "presence message dropped");
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert_eq!(presence.dropped(), 20, "each counted");
        drop(presence);
        b.shutdown().await;
        a.shutdown().await;
    }
}
