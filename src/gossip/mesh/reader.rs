//! A connection's reader: the task that decodes the frames a proven peer sends on a stream
//! and hands them to the layer above, closing the connection of a peer that breaks the
//! protocol.

use std::sync::Arc;

use quinn::{Connection, VarInt};

use super::link::Counters;
use super::{CLOSE_PROTOCOL, Inbound, PeerId};
use crate::gossip::wire::FrameDecoder;
use crate::metrics::FrameTally;
use crate::rate_log::RateLog;

/// Frames applied between two yields to the tasks that drain local sockets (well below
/// socketioxide's default per-socket buffer of 128 packets).
const YIELD_EVERY: u32 = 16;

pub(super) async fn read_frames(
    conn: Connection,
    mut stream: quinn::RecvStream,
    peer: PeerId,
    inbound: Arc<dyn Inbound>,
    max_frame_size: usize,
    counters: Arc<Counters>,
    log: Arc<RateLog>,
) {
    let mut decoder = FrameDecoder::new(max_frame_size);
    let mut applied: u32 = 0;
    let mut tally = FrameTally::default();
    loop {
        match stream.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                decoder.extend(&chunk.bytes);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => {
                            tally.add(frame.kind(), decoder.last_size());
                            if let Err(reason) = inbound.on_frame(&peer, frame) {
                                protocol_violation(&conn, &peer, &reason, &log);
                                return;
                            }
                            // Let the tasks that drain local sockets run every few frames: a
                            // burst from a peer must not overflow their buffers, and each of
                            // their writes should carry several messages, not one.
                            applied = applied.wrapping_add(1);
                            if applied.is_multiple_of(YIELD_EVERY) {
                                counters.metrics.received.record(&mut tally);
                                tokio::task::yield_now().await;
                            }
                        }
                        Ok(None) => {
                            // The chunk is used up: record what it held.
                            counters.metrics.received.record(&mut tally);
                            break;
                        }
                        Err(e) => {
                            protocol_violation(&conn, &peer, &e.to_string(), &log);
                            return;
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, "mesh stream ended: {e}");
                return;
            }
        }
    }
}

/// Close the connection of a peer that broke the protocol, with the reason; logged at a
/// bounded rate (`log`): a peer can break it on every connection it makes.
fn protocol_violation(conn: &Connection, peer: &PeerId, reason: &str, log: &RateLog) {
    if let Some(held_back) = log.allow() {
        tracing::warn!(
            %peer, remote = %conn.remote_address(), held_back,
            "closing mesh connection: {reason}"
        );
    }
    conn.close(
        VarInt::from_u32(CLOSE_PROTOCOL),
        &reason.as_bytes()[..reason.len().min(100)],
    );
}
