//! A link: this node's outgoing connection to one peer ([`Link`]), the receiving end of its
//! send queue that the link's writer drains ([`Queue`]), and what the mesh counts of its
//! send queues ([`Counters`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use quinn::{Connection, VarInt};

use super::{Budgets, ConnId, PeerAddrs, SendError, Sender, queue};
use crate::metrics::{DropReason, MeshMetrics};

/// This node's outgoing connection to one peer, with its send queue (bounded in bytes).
#[derive(Clone)]
pub(crate) struct Link {
    pub(super) conn: Connection,
    pub(super) id: ConnId,
    pub(super) addrs: PeerAddrs,
    pub(super) tx: Sender,
    pub(super) budgets: Arc<Budgets>,
}

/// What the mesh counts of its send queues, and records.
pub(super) struct Counters {
    /// Frames left in a send queue when it went (its connection closed, was never made, or
    /// was cut as a slow consumer).
    pub(super) dropped: AtomicU64,
    /// Links closed as slow consumers.
    pub(super) slow: AtomicU64,
    pub(super) metrics: MeshMetrics,
}

impl Counters {
    pub(super) fn new(metrics: MeshMetrics) -> Self {
        Self {
            dropped: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            metrics,
        }
    }

    /// `n` frames queued for `peer` lost for `reason`.
    pub(super) fn lost(&self, peer: &Arc<str>, n: usize, reason: DropReason) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.drops.record(peer, reason, n as u64);
    }
}

/// The receiving end of a send queue (see [`Mesh::queue`](super::Mesh::queue)). The frames still in it when it
/// is dropped are counted as dropped: as lost with a slow consumer if it was cut, else as
/// lost with their peer.
pub(crate) struct Queue {
    pub(super) rx: queue::Receiver,
    pub(super) counters: Arc<Counters>,
}

impl Queue {
    /// Take no more frames and drop those queued, counting them; how many.
    pub(super) fn close(&mut self) -> usize {
        let left = self.rx.close();
        let reason = match self.rx.was_cut() {
            Some(_) => DropReason::SlowConsumer,
            None => DropReason::PeerGone,
        };
        self.counters.lost(self.rx.peer(), left, reason);
        left
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.close();
    }
}

impl Link {
    /// Queue an encoded frame; never waits. Past the peer's budget the link is cut as a
    /// slow consumer.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), SendError> {
        self.tx.try_send(&self.budgets.charge(frame)?)
    }

    /// Which connection this is.
    pub(crate) fn id(&self) -> ConnId {
        self.id
    }

    /// The addresses the peer signed.
    pub(crate) fn addrs(&self) -> PeerAddrs {
        self.addrs
    }

    /// QUIC's current estimate of the round-trip time to the peer.
    pub(crate) fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Whether the connection is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.conn.close_reason().is_none() && !self.tx.is_closed()
    }

    /// Close the connection.
    pub(crate) fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(VarInt::from_u32(code), reason);
    }
}
