//! The table of this node's outgoing connections: one slot per peer, holding the link once
//! made and the send queue its frames wait in while it is made. One caller at a time makes
//! the connection to a peer; the others queue their frames meanwhile. Knows nothing of
//! membership: the node says which slots to drop or forget.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::OwnedMutexGuard;

use super::lock;
use crate::gossip::{
    mesh::{self, Link},
    peer::PeerId,
};

/// What the table needs of a link (a [`mesh::Link`], or a stand-in in tests).
pub(super) trait OutLink: Clone + Send + 'static {
    /// Whether the connection is still open.
    fn is_open(&self) -> bool;
    /// Close the connection as unused, with `reason`.
    fn close_unused(&self, reason: &[u8]);
}

impl OutLink for Link {
    fn is_open(&self) -> bool {
        Link::is_open(self)
    }
    fn close_unused(&self, reason: &[u8]) {
        self.close(mesh::CLOSE_UNUSED, reason);
    }
}

/// The outgoing connection to one peer.
struct Slot<L> {
    /// The link once made. Held by whoever connects to the peer: one attempt at a time.
    link: Arc<tokio::sync::Mutex<Option<L>>>,
    /// The send queue of the connection open or being made to the peer: frames wait in it
    /// while the connection is made. Changed only by the holder of `link`.
    queue: Mutex<Option<mesh::Sender>>,
}

impl<L> Default for Slot<L> {
    fn default() -> Self {
        Self {
            link: Arc::default(),
            queue: Mutex::default(),
        }
    }
}

impl<L> Slot<L> {
    /// The send queue, if it still takes frames.
    fn open_queue(&self) -> Option<mesh::Sender> {
        lock(&self.queue).clone().filter(|q| !q.is_closed())
    }
}

impl<L: OutLink> Slot<L> {
    /// Close the link made, if any; one being made is refused when made.
    fn close(&self, reason: &[u8]) {
        if let Ok(link) = self.link.try_lock()
            && let Some(link) = link.as_ref()
        {
            link.close_unused(reason);
        }
    }
}

/// Where a frame for a peer goes now.
pub(super) enum Route<L = Link> {
    /// Into the queue of the connection open or being made.
    Queue(mesh::Sender),
    /// Nowhere yet: the caller makes the connection (and holds the right to).
    Connect(Connecting<L>),
}

/// The right to make the connection to one peer, held by one caller at a time.
pub(super) struct Connecting<L = Link> {
    slot: Arc<Slot<L>>,
    link: OwnedMutexGuard<Option<L>>,
}

impl<L: OutLink> Connecting<L> {
    /// The link made before, if it is still open.
    pub(super) fn open_link(&self) -> Option<L> {
        self.link.as_ref().filter(|l| l.is_open()).cloned()
    }

    /// Frames for the peer go to `queue` from now on, while its connection is made.
    pub(super) fn queue_in(&self, queue: mesh::Sender) {
        *lock(&self.slot.queue) = Some(queue);
    }

    /// The connection is made and admitted: the link goes in the slot. A slot dropped
    /// meanwhile keeps it (and writes what waited in its queue) while the table starts
    /// afresh for the peer.
    pub(super) fn connected(mut self, link: L) -> L {
        *self.link = Some(link.clone());
        link
    }

    /// The connection could not be made: its queue takes no more frames from the table.
    pub(super) fn failed(self) {
        *lock(&self.slot.queue) = None;
    }
}

/// This node's outgoing connections, by peer.
pub(super) struct Outgoing<L = Link> {
    slots: Mutex<HashMap<PeerId, Arc<Slot<L>>>>,
}

impl<L> Default for Outgoing<L> {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
        }
    }
}

impl<L: OutLink> Outgoing<L> {
    fn slot(&self, peer: &PeerId) -> Arc<Slot<L>> {
        lock(&self.slots).entry(peer.clone()).or_default().clone()
    }

    /// Where a frame for `peer` goes now; never waits. Fails while another caller replaces
    /// a connection that closed.
    pub(super) fn route(&self, peer: &PeerId) -> Result<Route<L>, String> {
        let slot = self.slot(peer);
        if let Some(queue) = slot.open_queue() {
            return Ok(Route::Queue(queue));
        }
        let link = slot
            .link
            .clone()
            .try_lock_owned()
            .map_err(|_| "its connection is being replaced".to_string())?;
        // A connection may have been made since the first look.
        if let Some(queue) = slot.open_queue() {
            return Ok(Route::Queue(queue));
        }
        Ok(Route::Connect(Connecting { slot, link }))
    }

    /// The right to connect to `peer`, once a connection being made by another caller is.
    pub(super) async fn connecting(&self, peer: &PeerId) -> Connecting<L> {
        let slot = self.slot(peer);
        let link = slot.link.clone().lock_owned().await;
        Connecting { slot, link }
    }

    /// Drop the slot of `peer`, closing its link (with `reason`) unless one is being made:
    /// that one is refused when made (see [`Connecting::connected`]).
    pub(super) fn drop_slot(&self, peer: &PeerId, reason: &[u8]) {
        let slot = lock(&self.slots).remove(peer);
        if let Some(slot) = slot {
            slot.close(reason);
        }
    }

    /// Drop the slots of the peers `known` says nothing of; a slot whose connection is
    /// being made stays (dropping it would start a second connection to the same peer).
    /// The peers forgotten.
    pub(super) fn forget(&self, known: impl Fn(&PeerId) -> bool) -> Vec<PeerId> {
        let peers: Vec<PeerId> = lock(&self.slots).keys().cloned().collect();
        let unknown: Vec<PeerId> = peers.into_iter().filter(|p| !known(p)).collect();
        let mut forgotten = Vec::new();
        for peer in unknown {
            // Looked at and removed under one lock: no connection starts in between.
            let idle = {
                let mut slots = lock(&self.slots);
                let idle = slots
                    .get(&peer)
                    .is_some_and(|slot| slot.link.try_lock().is_ok());
                idle.then(|| slots.remove(&peer)).flatten()
            };
            if let Some(slot) = idle {
                slot.close(b"forgotten");
                forgotten.push(peer);
            }
        }
        forgotten
    }

    /// What the slot of `peer` holds now, without waiting or making one: its open send
    /// queue, and its link unless a connection is being made.
    pub(super) fn peek(&self, peer: &PeerId) -> (Option<mesh::Sender>, Option<L>) {
        let Some(slot) = lock(&self.slots).get(peer).cloned() else {
            return (None, None);
        };
        let link = slot.link.try_lock().ok().and_then(|l| l.clone());
        (slot.open_queue(), link)
    }

    /// How many peers have a slot.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    /// Every link made, once the connections being made are.
    pub(super) async fn links(&self) -> Vec<L> {
        let slots: Vec<Arc<Slot<L>>> = lock(&self.slots).values().cloned().collect();
        let mut links = Vec::new();
        for slot in slots {
            if let Some(link) = slot.link.lock().await.as_ref() {
                links.push(link.clone());
            }
        }
        links
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::gossip::node::machine::view::tests::peer;

    /// A link that only says whether it was closed.
    #[derive(Clone, Default)]
    struct FakeLink(Arc<AtomicBool>);

    impl FakeLink {
        fn closed(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl OutLink for FakeLink {
        fn is_open(&self) -> bool {
            !self.closed()
        }
        fn close_unused(&self, _: &[u8]) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    type Table = Outgoing<FakeLink>;

    fn frame(bytes: Vec<u8>) -> mesh::Charged {
        mesh::Charged::uncounted(Bytes::from(bytes))
    }

    impl<L> Route<L> {
        fn connecting(self) -> Connecting<L> {
            match self {
                Route::Connect(c) => c,
                Route::Queue(_) => panic!("a queue where a connection was expected"),
            }
        }

        fn queue(self) -> mesh::Sender {
            match self {
                Route::Queue(q) => q,
                Route::Connect(_) => panic!("a new connection where a queue was expected"),
            }
        }
    }

    fn connect(table: &Table, peer: &PeerId) -> Connecting<FakeLink> {
        table.route(peer).unwrap().connecting()
    }

    fn queue(table: &Table, peer: &PeerId) -> mesh::Sender {
        table.route(peer).unwrap().queue()
    }

    #[tokio::test]
    async fn frames_wait_in_the_queue_of_the_connection_being_made() {
        let table = Table::default();
        let a = peer("a", 1);
        let connecting = connect(&table, &a);
        let (tx, rx) = mesh::Sender::channel(1024);
        connecting.queue_in(tx);
        for i in 0..3u8 {
            queue(&table, &a).try_send(&frame(vec![i])).unwrap();
        }
        assert_eq!(rx.len(), 3, "every caller found the same queue");
        let link = FakeLink::default();
        connecting.connected(link.clone());
        assert!(!link.closed());
        queue(&table, &a).try_send(&frame(vec![])).unwrap();
        assert_eq!(rx.len(), 4, "the queue is the connection's");
        assert_eq!(table.links().await.len(), 1);
    }

    #[test]
    fn a_connection_not_made_leaves_the_next_caller_to_make_one() {
        let table = Table::default();
        let a = peer("a", 1);
        let connecting = connect(&table, &a);
        let (tx, _rx) = mesh::Sender::channel(1024);
        connecting.queue_in(tx);
        connecting.failed();
        assert!(matches!(table.route(&a), Ok(Route::Connect(_))));
    }

    #[test]
    fn a_queue_closed_while_its_connection_is_replaced_takes_no_frame() {
        let table = Table::default();
        let a = peer("a", 1);
        let connecting = connect(&table, &a);
        let (tx, rx) = mesh::Sender::channel(1024);
        connecting.queue_in(tx);
        // The connection closed (its queue with it) while its maker still holds the slot.
        drop(rx);
        assert_eq!(
            table.route(&a).err().as_deref(),
            Some("its connection is being replaced")
        );
        drop(connecting);
        assert!(matches!(table.route(&a), Ok(Route::Connect(_))));
    }

    #[tokio::test]
    async fn a_slot_dropped_while_frames_wait_starts_afresh() {
        let table = Table::default();
        let a = peer("a", 1);
        let old = connect(&table, &a);
        let (old_tx, mut old_rx) = mesh::Sender::channel(1024);
        old.queue_in(old_tx);
        queue(&table, &a).try_send(&frame(b"1".to_vec())).unwrap();
        queue(&table, &a).try_send(&frame(b"2".to_vec())).unwrap();

        // The link is replaced (say, the member restarted) while its connection is made.
        table.drop_slot(&a, b"replaced");
        // The next frame starts a connection of its own, in a new queue; the frames that
        // waited stay in the old queue, to go (or be counted dropped) with its connection.
        let new = connect(&table, &a);
        let (new_tx, new_rx) = mesh::Sender::channel(1024);
        new.queue_in(new_tx);
        queue(&table, &a).try_send(&frame(b"3".to_vec())).unwrap();
        assert_eq!((old_rx.len(), new_rx.len()), (2, 1));
        assert_eq!(old_rx.try_recv(), Some(Bytes::from_static(b"1")));

        // The old connection is made after all: it stays out of the table.
        let late = FakeLink::default();
        old.connected(late.clone());
        assert!(!late.closed());
        let current = FakeLink::default();
        new.connected(current.clone());
        assert_eq!(
            table.links().await.len(),
            1,
            "only the new link is the table's"
        );
        assert!(!current.closed());
        table.drop_slot(&a, b"replaced");
        assert!(current.closed(), "a made link closes with its slot");
    }

    #[test]
    fn forgetting_leaves_known_peers_and_connections_being_made() {
        let table = Table::default();
        let (a, b, c) = (peer("a", 1), peer("b", 1), peer("c", 1));
        for p in [&a, &b] {
            drop(connect(&table, p));
        }
        let connecting = connect(&table, &c);
        assert_eq!(table.forget(|p| *p == a), vec![b.clone()]);
        let mut left: Vec<PeerId> = lock(&table.slots).keys().cloned().collect();
        left.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(left, [a, c.clone()]);
        drop(connecting);
        assert_eq!(table.forget(|_| false).len(), 2);
        assert_eq!(table.len(), 0);
    }
}
