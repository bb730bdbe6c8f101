//! A link's writer: the task that writes the frames queued for a peer on the link's stream,
//! in batches, and disconnects a peer that takes nothing or falls past its budget as a slow
//! consumer.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use quinn::{Connection, VarInt};

use super::link::Queue;
use super::{CLOSE_SLOW, CLOSE_UNUSED, Closed, ConnId, Cut, Inbound, PeerId, queue};
use crate::gossip::wire;
use crate::metrics::{DropReason, FrameTally};
use crate::rate_log::RateLog;

/// Most frames handed to quinn in one write.
const WRITE_BATCH: usize = 64;

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
    let mut chunks = Vec::with_capacity(WRITE_BATCH);
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
                chunks.clear();
                for queued in &batch {
                    let frame = queued.frame();
                    tally.add(wire::encoded_kind(frame).unwrap_or(usize::MAX), frame.len());
                    chunks.push(frame.clone());
                }
                let written = write_all(&mut stream, &mut chunks, stall, &cut).await;
                // The frames leave the queue, giving back their budget, once written.
                batch.clear();
                match written {
                    Ok(()) => queue.counters.metrics.sent.record(&mut tally),
                    Err(failure) => {
                        // Written frames are left empty; the rest of the batch is lost.
                        let unwritten = chunks.iter().filter(|f| !f.is_empty()).count();
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

/// Write every frame of `batch`, failing when the stream takes no byte for `stall` or the
/// queue is `cut`. Written frames are left empty.
async fn write_all(
    stream: &mut quinn::SendStream,
    batch: &mut [Bytes],
    stall: Duration,
    cut: &queue::CutWatch,
) -> Result<(), WriteFailure> {
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
