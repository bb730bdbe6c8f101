//! The send queues of the mesh, bounded in bytes: one queue per outgoing connection, which
//! holds at most the peer budget (the bytes of the frames waiting in it), and all the queues
//! of a node together hold at most the node budget, where a frame queued for several peers
//! (a broadcast) counts once, as it is held once.
//!
//! Both budgets are tokio semaphores of bytes: a frame takes permits for its length when it
//! is queued and gives them back when it leaves the queue (handed to the connection, or
//! dropped with the queue), so that queuing never waits and no count can drift. Like Redis's
//! `client-output-buffer-limit pubsub` and NATS's slow-consumer rule, a peer whose queue
//! would go past its budget is cut: the frame is not queued, the queue takes no more, and
//! its writer closes the connection as a slow consumer ([`super::CLOSE_SLOW`]). A frame
//! that does not fit the node budget is queued for no one, and the queue holding the most
//! bytes is cut the same way.

use std::sync::{
    Arc, Mutex, OnceLock, Weak,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};

/// Why a queue was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// A frame for the peer did not fit its budget.
    PeerBudget,
    /// A frame did not fit the node budget, and this queue held the most bytes.
    NodeBudget,
    /// The peer took no byte of what was written to it for the peer timeout.
    Stalled,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PeerBudget => "its send queue went past the peer budget",
            Self::NodeBudget => {
                "the node's send queues went past the node budget, and its queue held the most"
            }
            Self::Stalled => "it took nothing for the peer timeout",
        })
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    /// The queue takes no more frames: its connection closed, or it was cut.
    #[error("connection closed")]
    Closed,
    /// The frame did not fit the peer's budget: the peer is cut as a slow consumer.
    #[error("the peer's send queue is past its budget: disconnected as a slow consumer")]
    PeerBudget,
    /// The frame did not fit the node budget: it is queued for no one.
    #[error("the node's send queues are past the node budget")]
    NodeBudget,
}

/// The byte budgets of one node's send queues, and the queues alive (to cut the largest
/// when the node budget is spent).
pub(crate) struct Budgets {
    /// Bytes one queue may hold.
    per_peer: usize,
    /// Bytes all the queues may hold, each frame counted once: its permits are the bytes
    /// still free.
    node: Arc<Semaphore>,
    node_budget: usize,
    /// The queues alive.
    queues: Mutex<Vec<Weak<Shared>>>,
}

impl Budgets {
    /// `per_peer` bytes for each queue, `node` bytes for all of them (at most
    /// [`Semaphore::MAX_PERMITS`] each: the settings' ranges see to it).
    pub(crate) fn new(per_peer: usize, node: usize) -> Arc<Self> {
        let cap = |n: usize| n.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            per_peer: cap(per_peer),
            node: Arc::new(Semaphore::new(cap(node))),
            node_budget: cap(node),
            queues: Mutex::default(),
        })
    }

    /// Take the node budget for `frame`, once for every queue it goes to. When it does not
    /// fit, the queue holding the most bytes is cut (see [`Cut::NodeBudget`]).
    pub(crate) fn charge(&self, frame: Bytes) -> Result<Charged, SendError> {
        let n = u32::try_from(frame.len()).map_err(|_| SendError::NodeBudget)?;
        match self.node.clone().try_acquire_many_owned(n) {
            Ok(permit) => Ok(Charged(Arc::new((frame, Some(permit))))),
            Err(_) => {
                self.cut_largest();
                Err(SendError::NodeBudget)
            }
        }
    }

    /// Bytes held by all the queues, each frame counted once.
    pub(crate) fn node_bytes(&self) -> usize {
        self.node_budget
            .saturating_sub(self.node.available_permits())
    }

    /// A new, empty queue for `peer`.
    pub(crate) fn queue(&self, peer: Arc<str>) -> (Sender, Receiver) {
        let shared = Arc::new(Shared {
            peer,
            bytes: Arc::new(Semaphore::new(self.per_peer)),
            budget: self.per_peer,
            frames: AtomicUsize::new(0),
            cut: OnceLock::new(),
            cut_notice: Notify::new(),
        });
        {
            let mut queues = lock(&self.queues);
            queues.retain(|q| q.strong_count() > 0);
            queues.push(Arc::downgrade(&shared));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Sender {
                tx,
                shared: shared.clone(),
            },
            Receiver { rx, shared },
        )
    }

    /// Cut the queue that holds the most bytes and is not cut yet.
    fn cut_largest(&self) {
        let largest = lock(&self.queues)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|q| q.cut.get().is_none())
            .max_by_key(|q| q.bytes());
        if let Some(queue) = largest {
            queue.cut(Cut::NodeBudget);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A frame that took its share of the node budget, which it gives back once no queue holds
/// it any more. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Charged(Arc<(Bytes, Option<OwnedSemaphorePermit>)>);

impl Charged {
    /// The encoded frame.
    pub(crate) fn frame(&self) -> &Bytes {
        &self.0.0
    }
}

/// A frame in a queue, holding its bytes of the peer budget (and its share of the node's).
pub(crate) struct Queued {
    frame: Charged,
    _peer: OwnedSemaphorePermit,
}

impl Queued {
    /// The encoded frame.
    pub(crate) fn frame(&self) -> &Bytes {
        self.frame.frame()
    }
}

/// What the two ends of a queue share.
struct Shared {
    /// Whom the queue is for.
    peer: Arc<str>,
    /// The peer budget: its permits are the bytes the queue may still take. Closed once the
    /// queue is cut.
    bytes: Arc<Semaphore>,
    budget: usize,
    /// Frames in the queue.
    frames: AtomicUsize,
    /// Why the queue was cut, once it is.
    cut: OnceLock<Cut>,
    /// Wakes the writer of a cut queue.
    cut_notice: Notify,
}

impl Shared {
    /// Bytes in the queue.
    fn bytes(&self) -> usize {
        self.budget.saturating_sub(self.bytes.available_permits())
    }

    /// Cut the queue (once): it takes no more frames, and its writer is told.
    fn cut(&self, why: Cut) {
        if self.cut.set(why).is_ok() {
            self.bytes.close();
            self.cut_notice.notify_one();
        }
    }
}

/// Queues frames for one outgoing connection, open or being made. Never waits.
#[derive(Clone)]
pub(crate) struct Sender {
    tx: mpsc::UnboundedSender<Queued>,
    shared: Arc<Shared>,
}

impl Sender {
    /// Queue `frame` if it fits the peer budget; if not, the queue is cut (its writer
    /// disconnects the peer as a slow consumer) and takes no more frames.
    pub(crate) fn try_send(&self, frame: &Charged) -> Result<(), SendError> {
        let n = u32::try_from(frame.frame().len()).map_err(|_| SendError::PeerBudget)?;
        let permit = match self.shared.bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(SendError::Closed),
            Err(TryAcquireError::NoPermits) => {
                self.shared.cut(Cut::PeerBudget);
                return Err(SendError::PeerBudget);
            }
        };
        // Counted before it can be received, so that the count never goes below zero.
        self.shared.frames.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Queued {
                frame: frame.clone(),
                _peer: permit,
            })
            .map_err(|_| {
                self.shared.frames.fetch_sub(1, Ordering::Relaxed);
                SendError::Closed
            })
    }

    /// Whether the queue takes no more frames (its connection closed or was never made, or
    /// it was cut).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.shared.bytes.is_closed()
    }

    /// Frames waiting in the queue.
    pub(crate) fn depth(&self) -> usize {
        self.shared.frames.load(Ordering::Relaxed)
    }

    /// Bytes waiting in the queue.
    pub(crate) fn bytes(&self) -> usize {
        self.shared.bytes()
    }
}

/// Tells whether a queue was cut, apart from its [`Receiver`] (which the writer borrows
/// to read the queue meanwhile).
pub(crate) struct CutWatch(Arc<Shared>);

impl CutWatch {
    /// Resolves once the queue is cut, with why.
    pub(crate) async fn cut(&self) -> Cut {
        loop {
            // Registered before looking, so that a cut in between is not missed.
            let notice = self.0.cut_notice.notified();
            if let Some(why) = self.0.cut.get() {
                return *why;
            }
            notice.await;
        }
    }
}

/// The receiving end of a queue, read by the connection's writer.
pub(crate) struct Receiver {
    rx: mpsc::UnboundedReceiver<Queued>,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Whom the queue is for.
    pub(crate) fn peer(&self) -> &Arc<str> {
        &self.shared.peer
    }

    /// Wait for frames and move up to `limit` of them into `batch`; 0 once every sender is
    /// gone and the queue is empty. The frames keep their budget until dropped.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Queued>, limit: usize) -> usize {
        let n = self.rx.recv_many(batch, limit).await;
        self.shared.frames.fetch_sub(n, Ordering::Relaxed);
        n
    }

    /// What tells the writer that the queue was cut.
    pub(crate) fn watch(&self) -> CutWatch {
        CutWatch(self.shared.clone())
    }

    /// Cut the queue from its own end (its peer stalled): it takes no more frames. Why it
    /// was cut first, if it already was.
    pub(crate) fn cut_now(&self, why: Cut) -> Cut {
        self.shared.cut(why);
        self.was_cut().unwrap_or(why)
    }

    /// Why the queue was cut, if it was.
    pub(crate) fn was_cut(&self) -> Option<Cut> {
        self.shared.cut.get().copied()
    }

    /// Take no more frames, and drop those queued (giving back their budget); how many.
    pub(crate) fn close(&mut self) -> usize {
        self.rx.close();
        self.shared.bytes.close();
        let mut dropped = 0;
        while self.rx.try_recv().is_ok() {
            dropped += 1;
        }
        self.shared.frames.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![7; len])
    }

    /// Frames of `len` bytes into `tx`, charged to `budgets`.
    fn send(budgets: &Budgets, tx: &Sender, len: usize) -> Result<(), SendError> {
        tx.try_send(&budgets.charge(frame(len)).expect("fits the node budget"))
    }

    #[tokio::test]
    async fn a_queue_holds_its_peer_budget_in_bytes_and_is_cut_past_it() {
        let budgets = Budgets::new(1000, 10_000);
        let (tx, mut rx) = budgets.queue("a".into());
        for _ in 0..9 {
            send(&budgets, &tx, 100).unwrap();
        }
        // Exactly the budget fits: 900 + 100.
        send(&budgets, &tx, 100).unwrap();
        assert_eq!(
            (tx.depth(), tx.bytes(), budgets.node_bytes()),
            (10, 1000, 1000)
        );
        // One byte more does not: the queue is cut, and takes nothing from then on.
        assert_eq!(send(&budgets, &tx, 1), Err(SendError::PeerBudget));
        assert!(tx.is_closed());
        assert_eq!(rx.was_cut(), Some(Cut::PeerBudget));
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(1), rx.watch().cut()).await,
            Ok(Cut::PeerBudget),
            "the writer learns it"
        );
        assert_eq!(send(&budgets, &tx, 1), Err(SendError::Closed));
        // What was queued gives its bytes back when dropped.
        assert_eq!(rx.close(), 10);
        assert_eq!((tx.depth(), tx.bytes(), budgets.node_bytes()), (0, 0, 0));
    }

    #[tokio::test]
    async fn bytes_are_given_back_as_frames_leave_the_queue() {
        let budgets = Budgets::new(1000, 10_000);
        let (tx, mut rx) = budgets.queue("a".into());
        // Many times the budget goes through a queue that is read.
        for round in 0..50 {
            for _ in 0..5 {
                send(&budgets, &tx, 200).unwrap();
            }
            let mut batch = Vec::new();
            assert_eq!(rx.recv_many(&mut batch, 64).await, 5, "round {round}");
            assert_eq!(tx.depth(), 0);
            // Read, but not written yet: still counted.
            assert_eq!(tx.bytes(), 1000);
            drop(batch);
            assert_eq!((tx.bytes(), budgets.node_bytes()), (0, 0));
        }
        assert!(!tx.is_closed());
    }

    #[test]
    fn a_frame_for_several_queues_counts_once_against_the_node_budget() {
        let budgets = Budgets::new(1000, 1500);
        let queues: Vec<_> = (0..5)
            .map(|i| budgets.queue(format!("p{i}").into()))
            .collect();
        let broadcast = budgets.charge(frame(800)).unwrap();
        for (tx, _) in &queues {
            tx.try_send(&broadcast).unwrap();
        }
        drop(broadcast);
        assert_eq!(budgets.node_bytes(), 800, "held once");
        assert!(queues.iter().all(|(tx, _)| tx.bytes() == 800));
        // Given back once no queue holds it.
        let mut queues = queues;
        for (i, (_, rx)) in queues.iter_mut().enumerate() {
            assert_eq!(budgets.node_bytes(), 800, "still held by {} queues", 5 - i);
            assert_eq!(rx.close(), 1);
        }
        assert_eq!(budgets.node_bytes(), 0);
    }

    #[test]
    fn past_the_node_budget_nothing_is_queued_and_the_largest_queue_is_cut() {
        let budgets = Budgets::new(1000, 1500);
        let (small, small_rx) = budgets.queue("small".into());
        let (large, large_rx) = budgets.queue("large".into());
        send(&budgets, &small, 300).unwrap();
        send(&budgets, &large, 900).unwrap();
        // 1,200 of 1,500 held: 400 more do not fit, for anyone.
        assert_eq!(
            budgets.charge(frame(400)).err(),
            Some(SendError::NodeBudget)
        );
        assert_eq!(large_rx.was_cut(), Some(Cut::NodeBudget));
        assert_eq!(small_rx.was_cut(), None);
        assert!(large.is_closed() && !small.is_closed());
        // Once the cut queue is gone, its bytes are free again.
        drop(large_rx);
        assert_eq!(budgets.node_bytes(), 300);
        send(&budgets, &small, 400).unwrap();
        assert_eq!(budgets.node_bytes(), 700);
    }

    #[test]
    fn the_queues_of_closed_connections_are_forgotten() {
        let budgets = Budgets::new(1000, 1000);
        for i in 0..100 {
            drop(budgets.queue(format!("p{i}").into()));
        }
        let _live = budgets.queue("live".into());
        assert_eq!(lock(&budgets.queues).len(), 1);
    }
}
