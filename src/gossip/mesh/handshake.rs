//! What the handshake of a connection needs: the flow-control limits a connection has
//! before and after its peer proved the secret, the QUIC transport of either side, and the
//! [`Hello`] each side signs and reads.

use std::{net::SocketAddr, time::Duration};

use quinn::{Connection, TransportConfig, VarInt};

use super::auth::{EXPORTER_LABEL, Role};
use super::{Mesh, PeerAddrs};
use crate::gossip::wire::{self, Hello};

/// Largest [`Hello`] accepted.
pub(super) const MAX_HELLO: usize = 4096;

/// Connection-level receive window of a connection whose peer has not proved the secret
/// yet: room for the peer's [`Hello`] and nothing more. An outgoing connection keeps it for
/// good, as the other side only ever sends its [`Hello`] on it.
pub(crate) const HANDSHAKE_WINDOW: u32 = 2 * MAX_HELLO as u32;

/// Receive window of one stream (quinn's default): what a verified peer may have in flight
/// on its frame stream.
const STREAM_WINDOW: u32 = 1_250_000;

/// Packets the peer may receive without acknowledging them at once (QUIC's ack-frequency
/// extension; QUIC's default, 1, acknowledges every second packet): fewer
/// acknowledgements, fewer wake-ups of both sides per frame. The peer still acknowledges
/// within [`ACK_DELAY`], and at once when packets go missing.
pub(super) const ACK_ELICITING_THRESHOLD: u32 = 10;

/// The longest the peer may hold an acknowledgement back when fewer packets came (QUIC's
/// default is 25 ms). A sender whose congestion window is full waits for it, and a quiet
/// link's window is quinn's initial one (12,000 bytes): with 25 ms, a burst larger than that
/// went in flights 25 ms apart. 1 ms is the least quinn takes (its timer granularity).
pub(super) const ACK_DELAY: Duration = Duration::from_millis(1);

/// Unidirectional streams a verified peer may have open at once (its frame stream, and the
/// next one while the previous finishes).
pub(super) const PEER_UNI_STREAMS: u32 = 2;

/// Connection-level receive window once the peer is verified.
pub(super) const PEER_WINDOW: u32 = PEER_UNI_STREAMS * STREAM_WINDOW + HANDSHAKE_WINDOW;

impl Mesh {
    /// This node's [`Hello`], signed for `role` with the connection's TLS `exporter`.
    pub(super) fn signed_hello(&self, role: Role, exporter: &[u8]) -> Vec<u8> {
        let mut hello = self.me.clone();
        hello.mac = self.keyring.sign(role, exporter, &hello);
        wire::encode_hello(&hello).unwrap_or_else(|_| unreachable!("a hello always fits in a Vec"))
    }
}

/// How long a peer may stay silent before its connections are found dead, by default
/// (`GossipAdapterConfig::with_peer_timeout`).
pub(crate) const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// What both sides of a mesh connection share: a peer silent for `peer_timeout` is gone;
/// keep-alives keep healthy idle links open; no datagrams.
pub(super) fn base_transport(peer_timeout: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(peer_timeout).ok());
    t.keep_alive_interval(Some(peer_timeout / 4));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(HANDSHAKE_WINDOW));
    // The mesh sends no unreliable datagrams, and flow control does not cover them: quinn
    // would buffer up to 1.25 MB of them per connection, a stranger's included.
    t.datagram_receive_buffer_size(None);
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    acks.max_ack_delay(Some(ACK_DELAY));
    t.ack_frequency_config(Some(acks));
    t
}

/// Incoming connections start with what the handshake needs: one bidirectional stream and
/// [`HANDSHAKE_WINDOW`] bytes. [`Mesh::accept_hello`] raises the limits once the proof
/// verified.
pub(super) fn server_transport(peer_timeout: Duration) -> TransportConfig {
    let mut t = base_transport(peer_timeout);
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

/// On an outgoing connection the other side only answers the [`Hello`] on the stream this
/// node opened: it may open no stream, and send [`HANDSHAKE_WINDOW`] bytes in all.
pub(super) fn client_transport(peer_timeout: Duration) -> TransportConfig {
    let mut t = base_transport(peer_timeout);
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

/// The addresses in a peer's hello (signed with it).
pub(super) fn peer_addrs(hello: &Hello) -> Result<PeerAddrs, String> {
    let parse = |what: &str, v: &str| {
        v.parse::<SocketAddr>()
            .map_err(|e| format!("bad {what} address {v:?} in hello: {e}"))
    };
    Ok(PeerAddrs {
        mesh: parse("mesh", &hello.mesh_addr)?,
        gossip: parse("gossip", &hello.gossip_addr)?,
    })
}

pub(super) fn exporter(conn: &Connection) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    Ok(out)
}
