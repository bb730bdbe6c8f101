//! The queue of presence messages to peers, sent in order by one task of the backend:
//! what an item stands for ([`Item`]), where it goes ([`Target`]), and the states owed to
//! peers, at most one queued and one taken per peer per announce interval.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use super::{PresenceConfig, Shared};
use crate::{presence::wire::PresenceMsg, rate_log::RateLog};

/// Where a queued message goes.
pub(crate) enum Target<P> {
    /// Every member at the time it is sent.
    Members,
    /// One peer.
    Peer(P),
}

/// What waits in the queue to peers.
pub(crate) enum Item {
    /// A message, as it is.
    Msg(PresenceMsg),
    /// This node's state, taken when it is sent (see [`Shared::state`]): the queue holds
    /// no copy of the entries, and the state is as of its place in the queue.
    State,
}

/// The states owed to peers: at most one queued per peer, and at most one taken per peer
/// per announce interval, so that a request of a few bytes, however often a peer sends it,
/// costs no more than one state per interval.
/// Ordered sets and the runtime's clock: a simulated cluster replays the same run.
struct States<P> {
    /// Queued and not taken yet: it answers every request the peer makes meanwhile.
    queued: BTreeSet<P>,
    /// Asked for within an interval of the last one taken: queued at the next tick.
    owed: BTreeSet<P>,
    /// When the last state was taken, by peer (forgotten after an interval).
    taken: BTreeMap<P, tokio::time::Instant>,
}

impl<P> Default for States<P> {
    fn default() -> Self {
        Self {
            queued: BTreeSet::new(),
            owed: BTreeSet::new(),
            taken: BTreeMap::new(),
        }
    }
}

/// The queue of messages to peers, sent in order by one task of the backend.
pub(crate) struct Queue<P> {
    tx: mpsc::Sender<(Target<P>, Item)>,
    states: Mutex<States<P>>,
    /// The least time between two states taken for one peer.
    state_interval: Duration,
    dropped: AtomicU64,
    dropped_metric: metrics::Counter,
    log: RateLog,
}

impl<P: Clone + Ord> Queue<P> {
    /// A queue of at most `config.queue` messages, and its receiving end.
    pub(crate) fn new(
        config: &PresenceConfig,
        node: &Arc<str>,
    ) -> (Arc<Self>, mpsc::Receiver<(Target<P>, Item)>) {
        let (tx, rx) = mpsc::channel(config.queue);
        let queue = Self {
            tx,
            states: Mutex::default(),
            state_interval: config.announce_interval,
            dropped: AtomicU64::new(0),
            dropped_metric: metrics::counter!(crate::metrics::PRESENCE_DROPPED,
                "node" => crate::metrics::label(node), "reason" => "queue_full"),
            log: RateLog::new(Duration::from_secs(10)),
        };
        (Arc::new(queue), rx)
    }

    pub(crate) fn push(&self, to: Target<P>, msg: PresenceMsg) {
        self.push_item(to, Item::Msg(msg));
    }

    /// Queue deltas of this node's entries for every member, in order (call with the
    /// replica locked, so that the order of the queue is that of the deltas).
    pub(crate) fn broadcast(&self, msgs: Vec<PresenceMsg>) {
        for m in msgs {
            self.push(Target::Members, m);
        }
    }

    /// Queue this node's state for `peer`, unless one is queued for it already (it answers
    /// this request too); one taken for it less than an interval ago makes this one wait for
    /// [`Queue::push_owed_states`].
    pub(crate) fn push_state(&self, peer: P) {
        {
            let mut states = lock(&self.states);
            if states.queued.contains(&peer) {
                return;
            }
            let recent = states
                .taken
                .get(&peer)
                .is_some_and(|t| t.elapsed() < self.state_interval);
            if recent {
                states.owed.insert(peer);
                return;
            }
            states.queued.insert(peer.clone());
        }
        if !self.push_item(Target::Peer(peer.clone()), Item::State) {
            lock(&self.states).queued.remove(&peer);
        }
    }

    /// The state queued for `peer` is being taken: a request from now on asks for another.
    pub(crate) fn taking_state(&self, peer: &P) {
        let mut states = lock(&self.states);
        states.queued.remove(peer);
        states
            .taken
            .insert(peer.clone(), tokio::time::Instant::now());
    }

    /// The messages a queued item stands for as it is sent to `to`: itself, or this node's
    /// state now, in chunks of about `budget` bytes (`None`: the presence is gone).
    pub(crate) fn messages(
        &self,
        to: &Target<P>,
        item: Item,
        shared: &std::sync::Weak<Shared>,
        budget: usize,
    ) -> Option<Vec<PresenceMsg>> {
        match (to, item) {
            (_, Item::Msg(msg)) => Some(vec![msg]),
            (Target::Peer(peer), Item::State) => {
                self.taking_state(peer);
                Some(shared.upgrade()?.state(budget))
            }
            (Target::Members, Item::State) => Some(Vec::new()),
        }
    }

    /// Queue the states owed (asked for too soon after the last one), once their interval
    /// passed; call once an interval.
    pub(crate) fn push_owed_states(&self) {
        let due: Vec<P> = {
            let mut states = lock(&self.states);
            let interval = self.state_interval;
            states.taken.retain(|_, t| t.elapsed() < interval);
            let States { owed, taken, .. } = &mut *states;
            let due: Vec<P> = owed
                .iter()
                .filter(|p| !taken.contains_key(*p))
                .cloned()
                .collect();
            for p in &due {
                owed.remove(p);
            }
            due
        };
        for peer in due {
            self.push_state(peer);
        }
    }

    /// Whether it was queued (else dropped, counted and logged).
    fn push_item(&self, to: Target<P>, item: Item) -> bool {
        if self.tx.try_send((to, item)).is_ok() {
            return true;
        }
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        self.dropped_metric.increment(1);
        if let Some(held_back) = self.log.allow() {
            tracing::warn!(
                dropped_total = n,
                held_back,
                "presence message dropped: the queue to peers is full (peers will ask \
                 for this node's state)"
            );
        }
        false
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
