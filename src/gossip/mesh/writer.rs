//! A link's writer: the task that writes the frames queued for a peer on the link's stream,
//! in batches, and disconnects a peer that takes nothing or falls past its budget as a slow
//! consumer.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use quinn::{Connection, VarInt};

use super::link::Queue;
use super::{CLOSE_SLOW, CLOSE_UNUSED, Closed, ConnId, Cut, Inbound, PeerId, queue};
use crate::gossip::wire;
use crate::metrics::{DropReason, FrameTally};
use crate::rate_log::RateLog;

/// Most frames handed to quinn in one write.
const WRITE_BATCH: usize = 64;
/// Frames shorter than this are copied, in order, into buffers of up to this size before
/// they go to quinn; longer ones go as they are. quinn keeps every buffer it was handed
/// until the peer acknowledged it, and finds the bytes of each packet it builds by walking
/// those buffers from the oldest: handed one buffer per 100-byte frame, a node flooding a
/// peer spent over 40 % of its CPU in that walk. The copy costs a memcpy of what is
/// written.
const COALESCE: usize = 64 * 1024;

/// What bounds a link's writer: how long a peer may take nothing while frames wait for it,
/// and the rate of the warnings its end writes (a member can open and end links at will).
pub(super) struct WriterLimits {
    pub(super) stall: Duration,
    pub(super) log: Arc<RateLog>,
}

/// Write the frames queued for `peer` until the connection closes or the link is dropped.
/// A peer is disconnected as a slow consumer ([`CLOSE_SLOW`]), so that nothing waits on it
/// and the node holds no more than its budget for it, when it takes no byte for `stall`
/// while frames wait for it (its reader is stuck, its connection alive), or when its queue
/// is cut (see [`queue`]). The node connects afresh when it next has something for it.
pub(super) async fn write_frames(
    conn: Connection,
    id: ConnId,
    mut stream: quinn::SendStream,
    mut queue: Queue,
    peer: PeerId,
    inbound: Arc<dyn Inbound>,
    WriterLimits { stall, log }: WriterLimits,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut chunks = Coalesced::new();
    let cut = queue.rx.watch();
    let mut tally = FrameTally::default();
    let failure = loop {
        tokio::select! {
            // Everything queued goes in one write: quinn packs the frames into as few
            // packets as fit, and takes the buffers without copying them.
            n = queue.rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    // Link dropped: nothing more to send; the connection goes with it.
                    let _ = stream.finish();
                    conn.close(VarInt::from_u32(CLOSE_UNUSED), b"link dropped");
                    inbound.on_connection_closed(&peer, id, &Closed::Locally);
                    return;
                }
                // Kinds and sizes taken now: quinn takes the buffers it writes.
                tally.clear();
                for queued in &batch {
                    let frame = queued.frame();
                    tally.add(wire::encoded_kind(frame).unwrap_or(usize::MAX), frame.len());
                }
                coalesce(&batch, &mut chunks);
                let written = write_all(&mut stream, &mut chunks, stall, &cut).await;
                // The frames leave the queue, giving back their budget, once written.
                batch.clear();
                match written {
                    Ok(()) => queue.counters.metrics.sent.record(&mut tally),
                    Err(failure) => {
                        // Written buffers are left empty; the frames of the others are
                        // lost (those of a buffer written in part, all of them).
                        let unwritten = (chunks.iter())
                            .filter(|(b, _)| !b.is_empty())
                            .map(|(_, frames)| frames)
                            .sum();
                        let reason = match &failure {
                            WriteFailure::Error(_) => DropReason::PeerGone,
                            WriteFailure::Cut(_) => DropReason::SlowConsumer,
                        };
                        queue.counters.lost(queue.rx.peer(), unwritten, reason);
                        break (failure, unwritten);
                    }
                }
            }
            why = cut.cut() => break (WriteFailure::Cut(why), 0),
            reason = conn.closed() => {
                let dropped = queue.close();
                if dropped > 0
                    && let Some(held_back) = log.allow()
                {
                    tracing::warn!(%peer, dropped, held_back, "mesh link closed with frames still queued: {reason}");
                }
                inbound.on_connection_closed(&peer, id, &(&reason).into());
                return;
            }
        }
    };
    let (failure, unwritten) = failure;
    let reason = match failure {
        WriteFailure::Cut(why) => {
            // What is still queued is lost with a slow consumer.
            let why = queue.rx.cut_now(why);
            let dropped = unwritten + queue.close();
            queue.counters.slow.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = log.allow() {
                tracing::warn!(%peer, dropped, held_back, "mesh peer disconnected as a slow consumer: {why}");
            }
            conn.close(VarInt::from_u32(CLOSE_SLOW), b"slow consumer");
            Closed::Slow
        }
        WriteFailure::Error(e) => {
            let dropped = unwritten + queue.close();
            if let Some(held_back) = log.allow() {
                tracing::warn!(%peer, dropped, held_back, "mesh write failed, closing link: {e}");
            }
            conn.close(VarInt::from_u32(CLOSE_UNUSED), b"write failed");
            (&conn.closed().await).into()
        }
    };
    inbound.on_connection_closed(&peer, id, &reason);
}

/// Why a batch was not written.
enum WriteFailure {
    /// The queue was cut, or the stream took no byte for the whole stall limit
    /// ([`Cut::Stalled`]).
    Cut(Cut),
    /// The stream or its connection failed.
    Error(quinn::WriteError),
}

/// Write every buffer of `chunks`, failing when the stream takes no byte for `stall` or
/// the queue is `cut`. Written buffers are left empty.
async fn write_all(
    stream: &mut quinn::SendStream,
    chunks: &mut Coalesced,
    stall: Duration,
    cut: &queue::CutWatch,
) -> Result<(), WriteFailure> {
    let batch = &mut chunks.buffers;
    let mut next = 0;
    // Each round writes at least one byte (or fails): the batch bounds the rounds.
    while next < batch.len() {
        if batch[next].is_empty() {
            next += 1;
            continue;
        }
        tokio::select! {
            written = tokio::time::timeout(stall, stream.write_chunks(&mut batch[next..])) => {
                match written {
                    Ok(Ok(written)) => next += written.chunks,
                    Ok(Err(e)) => return Err(WriteFailure::Error(e)),
                    Err(_) => return Err(WriteFailure::Cut(Cut::Stalled)),
                }
            }
            why = cut.cut() => return Err(WriteFailure::Cut(why)),
        }
    }
    Ok(())
}

/// The buffers one write hands quinn, and how many frames each holds.
struct Coalesced {
    buffers: Vec<Bytes>,
    frames: Vec<usize>,
}

impl Coalesced {
    fn new() -> Self {
        Self {
            buffers: Vec::with_capacity(WRITE_BATCH),
            frames: Vec::with_capacity(WRITE_BATCH),
        }
    }

    /// Each buffer, with how many frames it holds.
    fn iter(&self) -> impl Iterator<Item = (&Bytes, usize)> {
        self.buffers.iter().zip(self.frames.iter().copied())
    }
}

/// Put the frames of `batch` into `out`, in order: those shorter than [`COALESCE`] copied
/// together into buffers of at most that size, the others as they are.
fn coalesce(batch: &[queue::Queued], out: &mut Coalesced) {
    out.buffers.clear();
    out.frames.clear();
    let small: usize = (batch.iter())
        .map(|q| q.frame().len())
        .filter(|len| *len < COALESCE)
        .sum();
    let mut joined = BytesMut::with_capacity(small.min(COALESCE));
    let mut in_joined = 0;
    let flush = |joined: &mut BytesMut, in_joined: &mut usize, out: &mut Coalesced| {
        if *in_joined > 0 {
            out.buffers.push(joined.split().freeze());
            out.frames.push(std::mem::take(in_joined));
        }
    };
    for queued in batch {
        let frame = queued.frame();
        if frame.len() >= COALESCE {
            flush(&mut joined, &mut in_joined, out);
            out.buffers.push(frame.clone());
            out.frames.push(1);
            continue;
        }
        if joined.len() + frame.len() > COALESCE {
            flush(&mut joined, &mut in_joined, out);
        }
        joined.extend_from_slice(frame);
        in_joined += 1;
    }
    flush(&mut joined, &mut in_joined, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::mesh::queue::Budgets;

    /// Frames of these lengths, each filled with its index, as the writer reads them.
    async fn queued(lens: &[usize]) -> Vec<queue::Queued> {
        let budgets = Budgets::new(1 << 30, 1 << 30);
        let (tx, mut rx) = budgets.queue("a".into());
        for (i, len) in lens.iter().enumerate() {
            let frame = budgets.charge(Bytes::from(vec![i as u8; *len])).unwrap();
            tx.try_send(&frame).unwrap();
        }
        let mut batch = Vec::new();
        rx.recv_many(&mut batch, lens.len()).await;
        batch
    }

    /// Small frames share buffers of at most [`COALESCE`] bytes, a large one goes as it is,
    /// and the bytes leave in the order queued.
    #[tokio::test]
    async fn small_frames_are_joined_in_order_and_large_ones_go_as_they_are() {
        let lens = [100, 100, COALESCE - 250, 100, COALESCE, 7];
        let batch = queued(&lens).await;
        let mut out = Coalesced::new();
        coalesce(&batch, &mut out);
        let shape: Vec<(usize, usize)> = out.iter().map(|(b, n)| (b.len(), n)).collect();
        assert_eq!(shape, [(COALESCE - 50, 3), (100, 1), (COALESCE, 1), (7, 1)]);
        let joined: Vec<u8> = out.buffers.iter().flat_map(|b| b.to_vec()).collect();
        let queued: Vec<u8> = batch.iter().flat_map(|q| q.frame().to_vec()).collect();
        assert_eq!(joined, queued);
    }
}
