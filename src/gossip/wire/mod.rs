//! Versioned frame types exchanged between nodes, and their encoding.
//!
//! Pure: no I/O. Every frame on the mesh is `MAGIC ‖ VERSION ‖ postcard(Frame)`, carried in a
//! length-prefixed envelope (see [`FrameDecoder`]). The wire types here are our own — they are
//! converted to and from `socketioxide-core` types by the adapter — so that a change in core's
//! serde implementations can never silently change what crosses the network.
//!
//! Rules for every type in this module: no `untagged`, `flatten` or `skip_serializing_if`
//! (postcard is not self-describing), and every type has a round-trip and a golden-bytes test.
//!
//! - [`frame`]: the frames, what a node says of itself ([`NodeMeta`]), and the first
//!   message of a connection ([`Hello`]);
//! - [`request`]: requests to a namespace, their responses, and the socket.io packets
//!   they carry;
//! - [`bounded`]: the bound of every list a frame holds, checked on both sides;
//! - [`codec`]: encoding and decoding, and why either fails; [`decoder`]: a stream cut
//!   into frames.
//!
//! The cluster-wide features' messages live beside them (`events::wire`,
//! `presence::wire`, `sessions::wire`) and travel in [`ServiceFrame`]s as bodies this module
//! never reads.

pub(crate) mod bounded;
mod codec;
mod decoder;
#[cfg(test)]
mod fixtures;
mod frame;
mod request;
#[cfg(test)]
mod tests;

pub use bounded::{
    MAX_ACK_TIMEOUT_MS, MAX_ATTACHMENTS, MAX_NAMESPACE_LEN, MAX_NAMESPACES, MAX_ROOMS, MAX_SOCKETS,
};
pub use codec::{
    DecodeError, EncodeError, decode, decode_body, decode_hello, encode, encode_body, encode_hello,
    encode_within,
};
pub use decoder::FrameDecoder;
pub use frame::{Frame, Hello, Id, NodeMeta, Parser, ServiceFrame, encoded_kind};
pub use request::{
    AckResult, Opts, PacketData, Request, RequestKind, Response, ResponseBody, Value, WirePacket,
};

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SX";
/// The protocol version carried by every frame. Bumped on any incompatible change.
pub const VERSION: u8 = 4;
/// The ALPN protocol identifier of the QUIC mesh.
pub const ALPN: &[u8] = b"socketioxide-cluster/4";
/// Size of the length prefix of each frame on a stream.
pub const LEN_PREFIX: usize = 4;
/// Default largest frame accepted, in bytes (16 MiB).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;
