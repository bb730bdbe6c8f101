//! The node's own tasks: the timer that wakes the machine at its deadlines, and the watch
//! on gossip.

use std::sync::{Arc, Weak};

use super::{GOSSIP_POLL, Input, Node, lock, stats};
use crate::gossip::membership;

/// The time now, as the machine takes it (tokio's clock: simulated time in simulations).
pub(super) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Hand the machine [`Input::Tick`] at each deadline it gives, while the node lives;
/// `timer` wakes it when the machine needs waking earlier.
pub(super) async fn wake_machine(node: Weak<Node>, timer: Arc<tokio::sync::Notify>) {
    loop {
        let at = {
            let Some(node) = node.upgrade() else { return };
            if node.has_left() {
                return;
            }
            let mut state = lock(&node.state);
            let at = state.machine.next_timeout();
            state.wake_at = at;
            at.map(tokio::time::Instant::from_std)
        };
        let sleep = async {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {
                let Some(node) = node.upgrade() else { return };
                let _ = node.feed(Input::Tick);
            }
            () = timer.notified() => {}
        }
    }
}

pub(super) async fn watch_membership(
    node: Weak<Node>,
    mut changes: membership::Changes,
    gossip_stopped: impl std::future::Future<Output = String> + Send,
) {
    // New nodes are connected to on the next tick: gossip tells only of changes in the
    // live set, which it judges once a gossip round.
    let mut tick = tokio::time::interval(GOSSIP_POLL);
    let mut sample_tick = tokio::time::interval(stats::SAMPLE_EVERY);
    let mut gossip_stopped = std::pin::pin!(gossip_stopped);
    loop {
        {
            let Some(node) = node.upgrade() else { return };
            if node.has_left() {
                return;
            }
            node.refresh_from_gossip().await;
        }
        tokio::select! {
            changed = changes.changed() => {
                if !changed {
                    return;
                }
            }
            _ = tick.tick() => {}
            _ = sample_tick.tick() => node.upgrade().iter().for_each(|n| n.record_samples()),
            why = &mut gossip_stopped => {
                if let Some(node) = node.upgrade()
                {
                    let _ = node.feed(Input::GossipStopped(why));
                }
                return;
            }
        }
    }
}
