//! Presence as a service of the bus, one code path for both backends: the replica's
//! messages go out in order from one task (deltas and announcements to all, states and
//! state requests to one node), the members' changes drive the state exchange with a
//! joiner and the removal of a leaver's entries, and a timer sweeps disconnected sockets
//! and announces this node's sequence number.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{
    Presence, PresenceConfig, Shared,
    queue::{Item, Queue, Target},
    replica::Replica,
    wire::{PresenceMsg, SERVICE},
};
use crate::{
    bus::{self, Bus, MemberChange, NodeId, Registration, To},
    codec,
    rate_log::RateLog,
};

/// Presence messages this node could not send (none are expected: every entry fits a
/// message): logged at most once per period, node-wide.
static NOT_SENT_LOG: RateLog = RateLog::new(std::time::Duration::from_secs(10));

/// Largest state chunk, whatever the bus carries.
const MAX_CHUNK: usize = 1024 * 1024;

impl bus::Handler for Shared {
    fn on_message(&self, from: &NodeId, body: Bytes) {
        match codec::decode_body::<PresenceMsg>(&body) {
            Ok(msg) => self.take_in(from, msg),
            Err(e) => self.refused(1, &format!("it does not decode: {e}"), &from.to_string()),
        }
    }
}

impl Presence {
    /// This node's presence on `bus` (one per node: a second one replaces the first).
    pub(crate) fn start(bus: Arc<dyn Bus>, config: &PresenceConfig) -> Self {
        let me = bus.me().clone();
        let budget = (bus.max_body() / 2).min(MAX_CHUNK);
        let replica = Replica::new(me.clone(), config.clone(), budget);
        let (queue, rx) = Queue::new(config, &me.name);
        let presence = Presence::new(replica, queue.clone(), config);
        let handler: Weak<dyn bus::Handler> = Arc::downgrade(&presence.shared) as _;
        let registration = bus.register(SERVICE, handler);
        // Follow the changes before asking the current members, so that no join falls in
        // between.
        let changes = bus.changes();
        {
            let _replica = presence.shared.lock();
            for node in bus.members() {
                queue.push_state(node.clone());
                queue.push(Target::Peer(node), PresenceMsg::StateRequest);
            }
        }
        let shared = Arc::downgrade(&presence.shared);
        bus.spawn(Box::pin(run(
            shared.clone(),
            changes,
            config.clone(),
            registration,
        )));
        bus.spawn(Box::pin(send(bus.clone(), shared, queue, budget, rx)));
        presence
    }
}

/// Send the queued messages, in order; a queued state is taken as it is sent. Ends with
/// the presence (its queue closes).
async fn send(
    bus: Arc<dyn Bus>,
    shared: Weak<Shared>,
    queue: Arc<Queue<NodeId>>,
    budget: usize,
    mut rx: mpsc::Receiver<(Target<NodeId>, Item)>,
) {
    // The queue's sender lives in the presence: this task holds only its receiver.
    let queue = Arc::downgrade(&queue);
    while let Some((to, item)) = rx.recv().await {
        let Some(msgs) = queue
            .upgrade()
            .and_then(|q| q.messages(&to, item, &shared, budget))
        else {
            return;
        };
        let to = match to {
            Target::Members => To::All,
            Target::Peer(node) => To::One(node),
        };
        for msg in msgs {
            let sent = match codec::encode_body(&msg) {
                Ok(body) => bus.send(to.clone(), SERVICE, body, false).await,
                Err(e) => Err(bus::BusError::Backend(e.to_string())),
            };
            // On Redis the bus logs a failed publish too; peers repair a loss from the
            // announcements.
            if let Err(e) = sent
                && let Some(held_back) = NOT_SENT_LOG.allow()
            {
                tracing::warn!(held_back, "presence message not sent: {e}");
            }
        }
    }
}

/// React to membership changes, sweep disconnected sockets, announce this node's sequence
/// number; stop with the presence (and with it, its registration on the bus).
async fn run(
    shared: Weak<Shared>,
    mut changes: BoxStream<'static, MemberChange>,
    config: PresenceConfig,
    _registration: Registration,
) {
    let mut sweep = tokio::time::interval(config.sweep_interval);
    let mut announce = tokio::time::interval(config.announce_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.next() => {
                let Some(shared) = shared.upgrade() else { return };
                match change {
                    Some(MemberChange::Joined(node)) => {
                        let mut replica = shared.lock();
                        replica.joined(&node);
                        // Push this node's entries and pull the joiner's: a new node catches
                        // up, and so do the two sides of a healed partition.
                        shared.queue.push_state(node.clone());
                        shared.queue.push(Target::Peer(node), PresenceMsg::StateRequest);
                    }
                    Some(MemberChange::Left(node)) => {
                        let mut replica = shared.lock();
                        let diffs = replica.left(&node);
                        if !diffs.is_empty() {
                            tracing::info!(%node, removed = diffs.iter().map(|d| d.leaves.len()).sum::<usize>(),
                                "presence: the entries of a node that left removed");
                        }
                        shared.publish(&replica, diffs);
                    }
                    None => return,
                }
            }
            _ = sweep.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.sweep();
            }
            _ = announce.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.announce();
            }
        }
    }
}
