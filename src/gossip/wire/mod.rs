//! Versioned frame types exchanged between nodes, and their encoding.
//!
//! Pure: no I/O. Every frame on the mesh is `MAGIC ‖ VERSION ‖ postcard(Frame)`, carried in a
//! length-prefixed envelope (see [`FrameDecoder`]). The wire types here are our own — they are
//! converted to and from `socketioxide-core` types by the adapter — so that a change in core's
//! serde implementations can never silently change what crosses the network.
//!
//! Rules for every type in this module: no `untagged`, `flatten` or `skip_serializing_if`
//! (postcard is not self-describing), and every type has a round-trip and a golden-bytes test.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub mod events;
#[cfg(test)]
mod fixtures;
pub mod presence;
#[cfg(feature = "sessions")]
pub mod sessions;

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

/// Most room names in one list of a frame (target rooms, excepted rooms, rooms to join or
/// leave, rooms answered). An empty name takes one byte on the wire but 24 in memory: this
/// bound, checked before the list is allocated, keeps a frame from growing many times its
/// size once decoded.
pub const MAX_ROOMS: usize = 65_536;
/// Most binary attachments of one payload (one byte on the wire, 32 in memory each).
pub const MAX_ATTACHMENTS: usize = 4_096;
/// Most sockets in one answer to a `fetch_sockets` request.
pub const MAX_SOCKETS: usize = 1_048_576;
/// Most namespaces a node announces it hosts ([`NodeMeta::namespaces`]).
pub const MAX_NAMESPACES: usize = 4_096;
/// Longest namespace name a node announces, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 256;
/// Longest ack timeout a request carries, in milliseconds (10 minutes): a longer one is cut
/// to it, on the sending node and again on decoding, so that no peer can make the node keep
/// the ack state of its sockets for good. An emit with a longer timeout waits that long on
/// its own node; sockets of other nodes time out after this.
pub const MAX_ACK_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// Lists with a bound on their length, checked on both sides of the wire: encoding refuses
/// a list longer than its bound (so that a node never sends what its peers refuse), and
/// decoding refuses one from its length prefix, before anything is allocated. Same bytes on
/// the wire as a plain `Vec`.
///
/// Every bound of the decoder is declared here, with `bound!` or as a module of the same
/// shape, and used with `#[serde(with = "...")]`, so that the encoder checks it too; a bound
/// given to the decoder alone (a `deserialize_with`) fails a test of this module.
pub(crate) mod bounded {
    use std::{cell::Cell, fmt, marker::PhantomData};

    use serde::{
        Deserialize, Deserializer, Serialize, Serializer,
        de::{Error as _, SeqAccess, Visitor},
        ser::Error as _,
    };

    /// A bound a value went beyond while it was being encoded.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Exceeded {
        /// What the list holds, as a plural noun (`"binary attachments"`).
        pub what: &'static str,
        /// How many it holds.
        pub len: usize,
        /// How many a node accepts.
        pub max: usize,
    }

    thread_local! {
        /// The bound the value being encoded on this thread went beyond: the encoder's error
        /// carries no message, so [`super::encode`] reads it here.
        static EXCEEDED: Cell<Option<Exceeded>> = const { Cell::new(None) };
        /// Set while a test encodes, on purpose, what a node must refuse.
        #[cfg(test)]
        static UNCHECKED: Cell<bool> = const { Cell::new(false) };
    }

    /// The bound the last encoding on this thread went beyond, if any (and forget it).
    pub(super) fn take_exceeded() -> Option<Exceeded> {
        EXCEEDED.with(Cell::take)
    }

    /// Encode with `f` without checking bounds: what a misbehaving peer would send.
    #[cfg(test)]
    pub(crate) fn unchecked<R>(f: impl FnOnce() -> R) -> R {
        UNCHECKED.with(|u| u.set(true));
        let out = f();
        UNCHECKED.with(|u| u.set(false));
        out
    }

    /// Refuse, while encoding, a list of `len` elements with a bound of `max`.
    pub(crate) fn check<S: Serializer>(
        what: &'static str,
        len: usize,
        max: usize,
    ) -> Result<(), S::Error> {
        #[cfg(test)]
        if UNCHECKED.with(Cell::get) {
            return Ok(());
        }
        if len <= max {
            return Ok(());
        }
        EXCEEDED.with(|e| e.set(Some(Exceeded { what, len, max })));
        Err(S::Error::custom(format!("{len} {what}, more than {max}")))
    }

    /// A list of at most `MAX` elements.
    pub(crate) struct Bounded<T, const MAX: usize>(pub(crate) Vec<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Bounded<T, MAX> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T, const MAX: usize>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for V<T, MAX> {
                type Value = Vec<T>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "a list of at most {MAX} elements")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                    let announced = seq.size_hint().unwrap_or(0);
                    if announced > MAX {
                        return Err(A::Error::invalid_length(announced, &self));
                    }
                    let mut out = Vec::with_capacity(announced.min(1024));
                    while let Some(x) = seq.next_element()? {
                        if out.len() == MAX {
                            return Err(A::Error::invalid_length(MAX + 1, &self));
                        }
                        out.push(x);
                    }
                    Ok(out)
                }
            }
            d.deserialize_seq(V::<T, MAX>(PhantomData)).map(Bounded)
        }
    }

    /// A module `$name` for `#[serde(with = "...")]` on a `Vec<$t>` field: at most `$max`
    /// elements, `$what` naming them in errors.
    macro_rules! bound {
        ($(#[$doc:meta])* $name:ident, $t:ty, $max:expr, $what:literal) => {
            $(#[$doc])*
            pub(crate) mod $name {
                #[allow(unused_imports)]
                use super::*;

                pub(crate) fn serialize<S: serde::Serializer>(
                    v: &[$t],
                    s: S,
                ) -> Result<S::Ok, S::Error> {
                    $crate::gossip::wire::bounded::check::<S>($what, v.len(), $max)?;
                    serde::Serialize::serialize(v, s)
                }

                pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
                    d: D,
                ) -> Result<Vec<$t>, D::Error> {
                    <$crate::gossip::wire::bounded::Bounded<$t, { $max }> as serde::Deserialize>::deserialize(d)
                        .map(|b| b.0)
                }
            }
        };
    }
    pub(crate) use bound;

    bound!(
        /// Room names (target, excepted, joined, left, answered).
        rooms,
        String,
        crate::gossip::wire::MAX_ROOMS,
        "room names"
    );
    bound!(
        /// Sockets answered to `fetch_sockets`.
        sockets,
        (crate::gossip::wire::Id, crate::gossip::wire::Id),
        crate::gossip::wire::MAX_SOCKETS,
        "sockets"
    );

    /// The binary attachments of a payload, if any.
    pub(crate) mod attachments {
        use bytes::Bytes;

        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            v: &Option<Vec<Bytes>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let len = v.as_ref().map_or(0, Vec::len);
            check::<S>("binary attachments", len, super::super::MAX_ATTACHMENTS)?;
            v.serialize(s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<Bytes>>, D::Error> {
            Option::<Bounded<Bytes, { super::super::MAX_ATTACHMENTS }>>::deserialize(d)
                .map(|o| o.map(|b| b.0))
        }
    }

    /// A string of at most `MAX` bytes, refused before it is copied.
    pub(crate) struct Name<const MAX: usize>(String);

    impl<'de, const MAX: usize> Deserialize<'de> for Name<MAX> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<const MAX: usize>;
            impl<const MAX: usize> Visitor<'_> for V<MAX> {
                type Value = String;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "a string of at most {MAX} bytes")
                }
                fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<String, E> {
                    if s.len() > MAX {
                        return Err(E::invalid_length(s.len(), &self));
                    }
                    Ok(s.to_string())
                }
            }
            d.deserialize_str(V::<MAX>).map(Name)
        }
    }

    /// The namespaces a node announces: at most [`super::MAX_NAMESPACES`] names of at most
    /// [`super::MAX_NAMESPACE_LEN`] bytes.
    pub(crate) mod namespaces {
        use super::*;
        use crate::gossip::wire::{MAX_NAMESPACE_LEN, MAX_NAMESPACES};

        pub(crate) fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
            check::<S>("namespaces", v.len(), MAX_NAMESPACES)?;
            let longest = v.iter().map(String::len).max().unwrap_or(0);
            check::<S>("bytes in a namespace name", longest, MAX_NAMESPACE_LEN)?;
            v.serialize(s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<String>, D::Error> {
            Bounded::<Name<MAX_NAMESPACE_LEN>, MAX_NAMESPACES>::deserialize(d)
                .map(|b| b.0.into_iter().map(|n| n.0).collect())
        }
    }

    /// An ack timeout, cut to [`super::MAX_ACK_TIMEOUT_MS`] on both sides of the wire.
    pub(crate) mod ack_timeout {
        use super::*;
        use crate::gossip::wire::MAX_ACK_TIMEOUT_MS;

        pub(crate) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            v.map(|ms| ms.min(MAX_ACK_TIMEOUT_MS)).serialize(s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<u64>, D::Error> {
            Option::<u64>::deserialize(d).map(|t| t.map(|ms| ms.min(MAX_ACK_TIMEOUT_MS)))
        }
    }
}

/// A 16-byte identifier: a socket id, a socketioxide server id or a request id, as the
/// 16 ASCII characters socketioxide uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Id(pub [u8; 16]);

/// In hex: a request id is 16 random bytes, which may hold a line break or any control
/// character, and a log line must stay one line.
impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Everything one node sends another over the mesh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// A request addressed to one namespace of the receiving node.
    Request(Request),
    /// A response to a request the receiving node made.
    Response(Response),
    /// The sender leaves the cluster gracefully; drop it now.
    Leave,
    /// A message for a cluster-wide service of the receiving node (say, the session
    /// store), routed by service name; the body is that service's own encoding.
    Service(ServiceFrame),
    /// What the sender says about itself (its server id, the namespaces it hosts). Only
    /// ever applied to the sender: it travels on the sender's own connection.
    Meta(NodeMeta),
    /// The sender holds a join, leave or disconnect until the receiver answered this request
    /// id with [`ResponseBody::Done`]. The receiver answers at once, on its own connection
    /// to the sender, behind every frame it queued for the sender before: once the answer
    /// is in, the sender has applied all of them.
    Flush(Id),
}

impl Frame {
    /// Which variant this is, as its tag on the wire: 0 `Request`, 1 `Response`, 2 `Leave`,
    /// 3 `Service`, 4 `Meta`, 5 `Flush`.
    pub fn kind(&self) -> usize {
        match self {
            Self::Request(_) => 0,
            Self::Response(_) => 1,
            Self::Leave => 2,
            Self::Service(_) => 3,
            Self::Meta(_) => 4,
            Self::Flush(_) => 5,
        }
    }
}

/// The [`Frame::kind`] of an encoded frame (length prefix included), read from its tag
/// without decoding it.
pub fn encoded_kind(encoded: &[u8]) -> Option<usize> {
    encoded
        .get(LEN_PREFIX + MAGIC.len() + 1)
        .map(|&tag| usize::from(tag))
}

/// What a node tells its peers about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Grows with every change: a receiver ignores anything older than what it applied.
    pub version: u64,
    /// socketioxide server id of the node, once it created a namespace.
    pub server_id: Option<Id>,
    /// Namespaces the node hosts: at most [`MAX_NAMESPACES`] names of at most
    /// [`MAX_NAMESPACE_LEN`] bytes (see [`NodeMeta::host`]).
    #[serde(with = "bounded::namespaces")]
    pub namespaces: Vec<String>,
    /// The socket.io parser of the node's namespaces, once it created one. Nodes with
    /// different parsers cannot exchange packets: each refuses the other.
    pub parser: Option<Parser>,
}

impl NodeMeta {
    /// Announce that the node hosts `ns`, if the bounds a peer decodes leave room for it;
    /// whether it is announced.
    pub fn host(&mut self, ns: &str) -> bool {
        if self.namespaces.iter().any(|n| n == ns) {
            return true;
        }
        if ns.len() > MAX_NAMESPACE_LEN || self.namespaces.len() >= MAX_NAMESPACES {
            return false;
        }
        self.namespaces.push(ns.to_string());
        true
    }
}

/// The socket.io parser a node's server uses: it decides how every payload a node sends
/// its peers is encoded ([`Value::Str`] or [`Value::Bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Parser {
    /// socket.io's default parser: JSON text, binary data as attachments
    /// ([`Value::Str`]).
    Common,
    /// The msgpack parser ([`Value::Bytes`]).
    MsgPack,
}

impl Parser {
    /// Whether `value` is a payload of this parser: what it can send to its sockets.
    pub fn accepts(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (Self::Common, Value::Str(..)) | (Self::MsgPack, Value::Bytes(_))
        )
    }
}

impl std::fmt::Display for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Common => "common (JSON)",
            Self::MsgPack => "msgpack",
        })
    }
}

/// A message between the instances of one service on two nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceFrame {
    /// Name of the service it is for.
    pub service: String,
    /// When set, the receiver answers this request id once its service has handled the
    /// message: [`ResponseBody::Done`], or the service's own [`ResponseBody::Service`]
    /// answer ([`ResponseBody::NotHosted`] if it runs no such service).
    pub confirm: Option<Id>,
    /// The message, encoded by the service (see [`encode_body`]).
    pub body: Bytes,
}

/// A request from one node to the others, for one namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Namespace path.
    pub ns: String,
    /// Request id; responses carry it back.
    pub id: Id,
    /// socketioxide server id of the requesting node.
    pub origin: Id,
    /// What to do.
    pub kind: RequestKind,
    /// Which sockets it applies to.
    pub opts: Opts,
    /// Ack timeout chosen by the caller, in milliseconds, at most
    /// [`MAX_ACK_TIMEOUT_MS`] (a longer one decodes as that).
    #[serde(with = "bounded::ack_timeout")]
    pub ack_timeout_ms: Option<u64>,
}

/// The operations a node can ask of another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RequestKind {
    /// Send a packet to the matching sockets.
    Broadcast(WirePacket),
    /// Send a packet to the matching sockets and stream their acks back.
    BroadcastWithAck(WirePacket),
    /// Disconnect the matching sockets.
    DisconnectSockets,
    /// Answer with the rooms of the matching sockets.
    AllRooms,
    /// Make the matching sockets join rooms.
    AddSockets(#[serde(with = "bounded::rooms")] Vec<String>),
    /// Make the matching sockets leave rooms.
    DelSockets(#[serde(with = "bounded::rooms")] Vec<String>),
    /// Answer with the matching sockets.
    FetchSockets,
}

impl RequestKind {
    /// Whether the requester waits for responses to this request. A request that changes
    /// state (join, leave, disconnect) is answered with [`ResponseBody::Done`] once applied,
    /// so that it is in force on every node when the call that made it returns.
    pub fn expects_response(&self) -> bool {
        !matches!(self, Self::Broadcast(_))
    }

    /// Whether the request changes state (join, leave, disconnect): the receiver applies it
    /// only after what every other member queued for it before (see [`Frame::Flush`]).
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Self::AddSockets(_) | Self::DelSockets(_) | Self::DisconnectSockets
        )
    }

    /// The kind's name, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Broadcast(_) => "broadcast",
            Self::BroadcastWithAck(_) => "broadcast_with_ack",
            Self::DisconnectSockets => "disconnect_sockets",
            Self::AllRooms => "rooms",
            Self::AddSockets(_) => "add_sockets",
            Self::DelSockets(_) => "del_sockets",
            Self::FetchSockets => "fetch_sockets",
        }
    }
}

/// Broadcast options: which sockets a request applies to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Opts {
    /// Flag bits (local, broadcast, volatile).
    pub flags: u8,
    /// Target rooms; empty means every socket.
    #[serde(with = "bounded::rooms")]
    pub rooms: Vec<String>,
    /// Rooms whose sockets are excluded.
    #[serde(with = "bounded::rooms")]
    pub except: Vec<String>,
    /// The sender socket, excluded from broadcasts or targeted alone.
    pub sid: Option<Id>,
    /// The server that hosts the targeted socket.
    pub server_id: Option<Id>,
}

/// A socket.io packet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WirePacket {
    /// Namespace path.
    pub ns: String,
    /// Type and payload.
    pub data: PacketData,
}

/// The socket.io packet types an adapter forwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PacketData {
    /// CONNECT with an optional payload.
    Connect(Option<Value>),
    /// DISCONNECT.
    Disconnect,
    /// EVENT with an optional ack id.
    Event(Value, Option<i64>),
    /// ACK.
    EventAck(Value, i64),
    /// CONNECT_ERROR with its message.
    ConnectError(String),
    /// BINARY_EVENT with an optional ack id.
    BinaryEvent(Value, Option<i64>),
    /// BINARY_ACK.
    BinaryAck(Value, i64),
}

/// A payload already encoded by the socket.io parser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A text payload with optional binary attachments.
    Str(
        String,
        #[serde(with = "bounded::attachments")] Option<Vec<Bytes>>,
    ),
    /// A binary payload (msgpack parser).
    Bytes(Bytes),
}

/// A response to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The id of the request answered.
    pub id: Id,
    /// What the responder says.
    pub body: ResponseBody,
}

/// The content of a [`Response`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ResponseBody {
    /// The responder does not host the namespace: expect nothing more from it.
    NotHosted,
    /// How many acks will follow from the responder.
    AckCount(u32),
    /// One ack from one socket.
    Ack(Id, AckResult),
    /// Rooms of the matching sockets.
    Rooms(#[serde(with = "bounded::rooms")] Vec<String>),
    /// The matching sockets, by socket id and socketioxide server id.
    Sockets(#[serde(with = "bounded::sockets")] Vec<(Id, Id)>),
    /// A confirmed service message was handled, or a join, leave or disconnect applied.
    Done,
    /// A service's answer to a confirmed message, in the service's own encoding (see
    /// [`encode_body`]).
    Service(Bytes),
    /// The responder's answer cannot cross (beyond a bound of the wire, or larger than a
    /// frame): why, instead of it. Nothing more follows from the responder.
    Refused(String),
}

/// The result of one ack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AckResult {
    /// The socket answered.
    Ok(Value),
    /// The ack failed; the error, postcard-encoded.
    Err(Bytes),
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is shorter than its header.
    #[error("frame too short ({0} bytes)")]
    TooShort(usize),
    /// The magic bytes do not match.
    #[error("bad magic bytes")]
    BadMagic,
    /// The frame was made by an incompatible protocol version.
    #[error("unsupported protocol version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// The length prefix announces more than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The body is not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Why a value cannot be sent to a peer: what the peer's decoder would refuse is refused
/// here, before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A list goes beyond the bound a node accepts.
    #[error("it holds {} {}, more than the {} a node accepts", .0.len, .0.what, .0.max)]
    Bound(bounded::Exceeded),
    /// The encoded frame is larger than the maximum frame size.
    #[error("message of {size} bytes exceeds the cluster's maximum frame size of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The value cannot be encoded (say, a serializer error of an application's ack error
    /// type).
    #[error("{0}")]
    Codec(postcard::Error),
}

impl From<postcard::Error> for EncodeError {
    fn from(e: postcard::Error) -> Self {
        match bounded::take_exceeded() {
            Some(exceeded) => Self::Bound(exceeded),
            None => Self::Codec(e),
        }
    }
}

/// Encode a frame with its header and length prefix, ready to write on a stream. Refuses a
/// list beyond its bound (see [`encode_within`] for the frame size too).
pub fn encode(frame: &Frame) -> Result<Bytes, EncodeError> {
    bounded::take_exceeded();
    let mut out = vec![0u8; LEN_PREFIX];
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let mut out = postcard::to_extend(frame, out)?;
    let len =
        u32::try_from(out.len() - LEN_PREFIX).map_err(|_| postcard::Error::SerializeBufferFull)?;
    out[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(Bytes::from(out))
}

/// Encode a frame for peers that accept frames of at most `max_frame_size` bytes: what this
/// returns, a peer's [`FrameDecoder`] of that size decodes; what a peer would refuse (a list
/// beyond its bound, a frame too large) is refused here. The one check every sender uses.
pub fn encode_within(frame: &Frame, max_frame_size: usize) -> Result<Bytes, EncodeError> {
    let bytes = encode(frame)?;
    let size = bytes.len() - LEN_PREFIX;
    if size > max_frame_size {
        return Err(EncodeError::TooLarge {
            size,
            max: max_frame_size,
        });
    }
    Ok(bytes)
}

/// Decode one frame body (without the length prefix).
pub fn decode(body: &[u8]) -> Result<Frame, DecodeError> {
    decode_versioned(body)
}

/// The first message each side sends on a new mesh connection: who it is, and its proof that
/// it holds the cluster secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Node name.
    pub node_name: String,
    /// Node generation (start time); a restarted node has a new one.
    pub generation: u64,
    /// Mesh address the sender can be reached at.
    pub mesh_addr: String,
    /// Gossip address of the sender.
    pub gossip_addr: String,
    /// HMAC proof of the secret; `None` from a node running without authentication.
    pub mac: Option<[u8; 32]>,
}

/// Encode a [`Hello`] with the frame header (no length prefix: it travels alone on its
/// stream).
pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, EncodeError> {
    Ok(postcard::to_extend(
        hello,
        vec![MAGIC[0], MAGIC[1], VERSION],
    )?)
}

/// Decode a [`Hello`].
pub fn decode_hello(body: &[u8]) -> Result<Hello, DecodeError> {
    decode_versioned(body)
}

/// Encode the body of a [`ServiceFrame`], or an application's ack error (no header: the
/// frame carries it). Refuses a list beyond its bound, as [`encode`] does.
pub fn encode_body<T: Serialize>(value: &T) -> Result<Bytes, EncodeError> {
    bounded::take_exceeded();
    Ok(postcard::to_allocvec(value).map(Bytes::from)?)
}

/// Decode what [`encode_body`] encoded; trailing bytes are an error.
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

fn decode_versioned<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    if body.len() < MAGIC.len() + 1 {
        return Err(DecodeError::TooShort(body.len()));
    }
    if body[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if body[2] != VERSION {
        return Err(DecodeError::Version(body[2]));
    }
    decode_body(&body[3..])
}

/// Splits a byte stream into frames, refusing any frame larger than its limit before
/// buffering it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
    /// Size of the last frame taken, length prefix included.
    last: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
            last: 0,
        }
    }

    /// Size of the last frame [`FrameDecoder::next_frame`] returned, length prefix included.
    pub fn last_size(&self) -> usize {
        self.last
    }

    /// Append bytes read from the stream. Once the length of the frame being read is
    /// known, room for all of it is made at once: grown by doubling, a large frame would be
    /// copied several times, and the last copy would hold up to twice its size.
    pub fn extend(&mut self, mut data: &[u8]) {
        if self.buf.len() < LEN_PREFIX {
            let head = (LEN_PREFIX - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..head]);
            data = &data[head..];
        }
        if let Some(prefix) = self.buf.first_chunk::<LEN_PREFIX>() {
            let size = u32::from_be_bytes(*prefix) as usize;
            let want = LEN_PREFIX + size;
            if size <= self.max && want > self.buf.len() {
                self.buf.reserve(want - self.buf.len());
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LEN_PREFIX];
        prefix.copy_from_slice(&self.buf[..LEN_PREFIX]);
        let size = u32::from_be_bytes(prefix) as usize;
        if size > self.max {
            return Err(DecodeError::TooLarge {
                size,
                max: self.max,
            });
        }
        if self.buf.len() < LEN_PREFIX + size {
            return Ok(None);
        }
        self.buf.advance(LEN_PREFIX);
        self.last = LEN_PREFIX + size;
        let body = self.buf.split_to(size);
        decode(&body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(c: u8) -> Id {
        Id([c; 16])
    }

    /// A request of `kind` on `/`, to the sockets `opts` select.
    fn request(kind: RequestKind, opts: Opts) -> Frame {
        Frame::Request(Request {
            ns: "/".into(),
            id: id(1),
            origin: id(2),
            kind,
            opts,
            ack_timeout_ms: None,
        })
    }

    fn body(frame: &Frame) -> Vec<u8> {
        encode(frame).unwrap()[LEN_PREFIX..].to_vec()
    }

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
    }
    fn arb_id() -> impl Strategy<Value = Id> {
        any::<[u8; 16]>().prop_map(Id)
    }
    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            (
                ".{0,8}",
                proptest::option::of(proptest::collection::vec(arb_bytes(), 0..3))
            )
                .prop_map(|(s, b)| Value::Str(s, b)),
            arb_bytes().prop_map(Value::Bytes),
        ]
    }
    fn arb_packet() -> impl Strategy<Value = WirePacket> {
        let data = prop_oneof![
            proptest::option::of(arb_value()).prop_map(PacketData::Connect),
            Just(PacketData::Disconnect),
            (arb_value(), any::<Option<i64>>()).prop_map(|(v, a)| PacketData::Event(v, a)),
            (arb_value(), any::<i64>()).prop_map(|(v, a)| PacketData::EventAck(v, a)),
            ".{0,8}".prop_map(PacketData::ConnectError),
            (arb_value(), any::<Option<i64>>()).prop_map(|(v, a)| PacketData::BinaryEvent(v, a)),
            (arb_value(), any::<i64>()).prop_map(|(v, a)| PacketData::BinaryAck(v, a)),
        ];
        (".{0,8}", data).prop_map(|(ns, data)| WirePacket { ns, data })
    }
    fn arb_rooms() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(".{0,6}", 0..4)
    }
    fn arb_opts() -> impl Strategy<Value = Opts> {
        (
            any::<u8>(),
            arb_rooms(),
            arb_rooms(),
            proptest::option::of(arb_id()),
            proptest::option::of(arb_id()),
        )
            .prop_map(|(flags, rooms, except, sid, server_id)| Opts {
                flags,
                rooms,
                except,
                sid,
                server_id,
            })
    }
    fn arb_kind() -> impl Strategy<Value = RequestKind> {
        prop_oneof![
            arb_packet().prop_map(RequestKind::Broadcast),
            arb_packet().prop_map(RequestKind::BroadcastWithAck),
            Just(RequestKind::DisconnectSockets),
            Just(RequestKind::AllRooms),
            arb_rooms().prop_map(RequestKind::AddSockets),
            arb_rooms().prop_map(RequestKind::DelSockets),
            Just(RequestKind::FetchSockets),
        ]
    }
    fn arb_body() -> impl Strategy<Value = ResponseBody> {
        prop_oneof![
            Just(ResponseBody::NotHosted),
            any::<u32>().prop_map(ResponseBody::AckCount),
            (arb_id(), arb_value()).prop_map(|(i, v)| ResponseBody::Ack(i, AckResult::Ok(v))),
            (arb_id(), arb_bytes()).prop_map(|(i, e)| ResponseBody::Ack(i, AckResult::Err(e))),
            arb_rooms().prop_map(ResponseBody::Rooms),
            proptest::collection::vec((arb_id(), arb_id()), 0..3).prop_map(ResponseBody::Sockets),
            Just(ResponseBody::Done),
            arb_bytes().prop_map(ResponseBody::Service),
            ".{0,8}".prop_map(ResponseBody::Refused),
        ]
    }
    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                ".{0,8}",
                arb_id(),
                arb_id(),
                arb_kind(),
                arb_opts(),
                proptest::option::of(0..=MAX_ACK_TIMEOUT_MS)
            )
                .prop_map(|(ns, id, origin, kind, opts, ack_timeout_ms)| {
                    Frame::Request(Request {
                        ns,
                        id,
                        origin,
                        kind,
                        opts,
                        ack_timeout_ms,
                    })
                }),
            (arb_id(), arb_body()).prop_map(|(id, body)| Frame::Response(Response { id, body })),
            Just(Frame::Leave),
            arb_id().prop_map(Frame::Flush),
            (".{0,8}", proptest::option::of(arb_id()), arb_bytes()).prop_map(
                |(service, confirm, body)| Frame::Service(ServiceFrame {
                    service,
                    confirm,
                    body
                })
            ),
            (
                any::<u64>(),
                proptest::option::of(arb_id()),
                arb_rooms(),
                proptest::option::of(prop_oneof![Just(Parser::Common), Just(Parser::MsgPack)])
            )
                .prop_map(|(version, server_id, namespaces, parser)| Frame::Meta(
                    NodeMeta {
                        version,
                        server_id,
                        namespaces,
                        parser,
                    }
                )),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in arb_frame()) {
            prop_assert_eq!(decode(&body(&frame)).unwrap(), frame);
        }

        #[test]
        fn the_kind_and_size_of_a_frame_read_from_its_bytes(frame in arb_frame()) {
            let encoded = encode(&frame).unwrap();
            prop_assert_eq!(encoded_kind(&encoded), Some(frame.kind()));
            let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
            dec.extend(&encoded);
            prop_assert_eq!(dec.next_frame().unwrap().map(|f| f.kind()), Some(frame.kind()));
            prop_assert_eq!(dec.last_size(), encoded.len());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&data);
            let mut with_header = vec![MAGIC[0], MAGIC[1], VERSION];
            with_header.extend_from_slice(&data);
            let _ = decode(&with_header);
            let mut dec = FrameDecoder::new(1024);
            dec.extend(&data);
            let _ = dec.next_frame();
        }

        #[test]
        fn decoder_reassembles_split_streams(frames in proptest::collection::vec(arb_frame(), 1..4), cut in 1usize..7) {
            let stream: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap().to_vec()).collect();
            let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
            let mut out = Vec::new();
            for chunk in stream.chunks(cut) {
                dec.extend(chunk);
                while let Some(f) = dec.next_frame().unwrap() {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, frames);
        }
    }

    /// A random request id, shown in a log line, keeps that line one line.
    #[test]
    fn an_id_is_shown_in_hex() {
        let mut raw = *b"0123456789abcde\n";
        raw[0] = 0x1b;
        assert_eq!(Id(raw).to_string(), "1b31323334353637383961626364650a");
    }

    /// The exact bytes of each frame type. A change here is a wire protocol change: bump
    /// [`VERSION`].
    #[test]
    fn golden_bytes() {
        let packet = WirePacket {
            ns: "/".into(),
            data: PacketData::Event(Value::Str("[\"a\"]".into(), None), Some(3)),
        };
        let cases: Vec<(Frame, &str)> = vec![
            (Frame::Leave, "535804 02"),
            (
                Frame::Flush(id(9)),
                "535804 05 09090909090909090909090909090909",
            ),
            (
                Frame::Meta(NodeMeta {
                    version: 300,
                    server_id: Some(id(1)),
                    namespaces: vec!["/".into()],
                    parser: Some(Parser::MsgPack),
                }),
                "535804 04 ac02 01 01010101010101010101010101010101 01 012f 01 01",
            ),
            (
                Frame::Meta(NodeMeta {
                    version: 1,
                    server_id: None,
                    namespaces: vec![],
                    parser: None,
                }),
                "535804 04 01 00 00 00",
            ),
            (
                Frame::Service(ServiceFrame {
                    service: "s".into(),
                    confirm: None,
                    body: Bytes::from_static(&[1, 2]),
                }),
                "535804 03 0173 00 020102",
            ),
            (
                Frame::Service(ServiceFrame {
                    service: "s".into(),
                    confirm: Some(id(1)),
                    body: Bytes::new(),
                }),
                "535804 03 0173 01 01010101010101010101010101010101 00",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Done,
                }),
                "535804 01 01010101010101010101010101010101 05",
            ),
            (
                Frame::Request(Request {
                    ns: "/".into(),
                    id: id(b'r'),
                    origin: id(b'o'),
                    kind: RequestKind::Broadcast(packet.clone()),
                    opts: Opts {
                        flags: 2,
                        rooms: vec!["x".into()],
                        except: vec![],
                        sid: None,
                        server_id: Some(id(b's')),
                    },
                    ack_timeout_ms: None,
                }),
                "535804 00 012f 72727272727272727272727272727272 6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f \
                 00 012f 02 00 055b2261225d 00 01 06 \
                 02 01 0178 00 00 01 73737373737373737373737373737373 00",
            ),
            (
                Frame::Request(Request {
                    ns: "/n".into(),
                    id: id(1),
                    origin: id(2),
                    kind: RequestKind::AddSockets(vec!["r".into()]),
                    opts: Opts::default(),
                    ack_timeout_ms: Some(300),
                }),
                "535804 00 022f6e 01010101010101010101010101010101 02020202020202020202020202020202 \
                 04 01 0172 00 00 00 00 00 01 ac02",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Service(Bytes::from_static(&[7, 8])),
                }),
                "535804 01 01010101010101010101010101010101 06 020708",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Refused("no".into()),
                }),
                "535804 01 01010101010101010101010101010101 07 026e6f",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::NotHosted,
                }),
                "535804 01 01010101010101010101010101010101 00",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::AckCount(300),
                }),
                "535804 01 01010101010101010101010101010101 01 ac02",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Ack(
                        id(2),
                        AckResult::Ok(Value::Str("1".into(), Some(vec![Bytes::from_static(&[9])]))),
                    ),
                }),
                "535804 01 01010101010101010101010101010101 02 02020202020202020202020202020202 \
                 00 00 0131 01 01 0109",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Ack(id(2), AckResult::Err(Bytes::from_static(&[7]))),
                }),
                "535804 01 01010101010101010101010101010101 02 02020202020202020202020202020202 \
                 01 0107",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Rooms(vec!["a".into()]),
                }),
                "535804 01 01010101010101010101010101010101 03 01 0161",
            ),
            (
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Sockets(vec![(id(3), id(4))]),
                }),
                "535804 01 01010101010101010101010101010101 04 01 \
                 03030303030303030303030303030303 04040404040404040404040404040404",
            ),
        ];
        for (frame, hex) in cases {
            let want: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
            let got: String = body(&frame).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, want, "{frame:?}");
            assert_eq!(decode(&body(&frame)).unwrap(), frame);
        }
    }

    #[test]
    fn hello_round_trips_with_golden_bytes() {
        let hello = Hello {
            node_name: "a".into(),
            generation: 300,
            mesh_addr: "b".into(),
            gossip_addr: "c".into(),
            mac: Some([7; 32]),
        };
        let bytes = encode_hello(&hello).unwrap();
        let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            got,
            format!("535804 0161 ac02 0162 0163 01{}", "07".repeat(32)).replace(' ', "")
        );
        assert_eq!(decode_hello(&bytes).unwrap(), hello);
        let insecure = Hello { mac: None, ..hello };
        assert_eq!(
            decode_hello(&encode_hello(&insecure).unwrap()).unwrap(),
            insecure
        );
    }

    #[test]
    fn binary_value_golden_bytes() {
        let frame = Frame::Request(Request {
            ns: "/".into(),
            id: id(0),
            origin: id(0),
            kind: RequestKind::BroadcastWithAck(WirePacket {
                ns: "/".into(),
                data: PacketData::BinaryEvent(Value::Bytes(Bytes::from_static(&[1, 2])), None),
            }),
            opts: Opts::default(),
            ack_timeout_ms: None,
        });
        let got: String = body(&frame).iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            got.ends_with(
                "01 012f 05 01 020102 00 00 00 00 00 00 00"
                    .replace(' ', "")
                    .as_str()
            ),
            "{got}"
        );
    }

    #[test]
    fn rejects_bad_header_version_and_garbage() {
        let good = body(&Frame::Leave);
        assert_eq!(decode(&good[..2]), Err(DecodeError::TooShort(2)));
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(decode(&bad_magic), Err(DecodeError::BadMagic));
        let mut bad_version = good.clone();
        bad_version[2] = VERSION + 1;
        assert_eq!(decode(&bad_version), Err(DecodeError::Version(VERSION + 1)));
        let mut garbage = good.clone();
        garbage[3] = 0xee;
        assert!(matches!(decode(&garbage), Err(DecodeError::Malformed(_))));
        let mut trailing = good;
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(DecodeError::Malformed(_))));
    }

    /// A frame whose lists announce more elements than allowed (say, millions of empty
    /// room names: one byte each on the wire, 24 in memory) is refused from the length
    /// prefix, before the list is allocated; one at the bound decodes.
    #[test]
    fn lists_longer_than_their_bound_are_refused_before_allocation() {
        let rooms = |n: usize| vec![String::new(); n];
        let at_bound = request(RequestKind::AddSockets(rooms(MAX_ROOMS)), Opts::default());
        assert_eq!(decode(&body(&at_bound)).unwrap(), at_bound);
        let too_many: Vec<Frame> = vec![
            request(
                RequestKind::AddSockets(rooms(MAX_ROOMS + 1)),
                Opts::default(),
            ),
            request(
                RequestKind::DelSockets(rooms(MAX_ROOMS + 1)),
                Opts::default(),
            ),
            request(
                RequestKind::FetchSockets,
                Opts {
                    rooms: rooms(MAX_ROOMS + 1),
                    ..Opts::default()
                },
            ),
            request(
                RequestKind::FetchSockets,
                Opts {
                    except: rooms(MAX_ROOMS + 1),
                    ..Opts::default()
                },
            ),
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Rooms(rooms(MAX_ROOMS + 1)),
            }),
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Ack(
                    id(2),
                    AckResult::Ok(Value::Str(
                        "[]".into(),
                        Some(vec![Bytes::new(); MAX_ATTACHMENTS + 1]),
                    )),
                ),
            }),
        ];
        for frame in too_many {
            // A misbehaving peer's frame: refused by the decoder.
            let raw = bounded::unchecked(|| body(&frame));
            let err = decode(&raw).unwrap_err();
            assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
            // This node's own: refused before it is sent, naming the bound.
            let err = encode(&frame).unwrap_err();
            assert!(matches!(err, EncodeError::Bound(_)), "{err}");
        }
        // A length prefix announcing 2^32 rooms in a tiny frame: refused, nothing allocated.
        let mut huge = body(&request(RequestKind::AddSockets(vec![]), Opts::default()));
        let at = 3 + 1 + 2 + 32;
        assert_eq!(huge[at..at + 2], [4, 0], "AddSockets with an empty list");
        huge.splice(at + 1..at + 2, [0x80, 0x80, 0x80, 0x80, 0x10]);
        assert!(matches!(decode(&huge), Err(DecodeError::Malformed(_))));
    }

    /// What a node says it hosts is bounded like every list: in count and in the length
    /// of each name, refused before anything is copied; a node announces no more than that.
    #[test]
    fn namespaces_are_bounded_in_count_and_length() {
        let meta = |namespaces| {
            Frame::Meta(NodeMeta {
                version: 1,
                server_id: None,
                namespaces,
                parser: None,
            })
        };
        let long = "n".repeat(MAX_NAMESPACE_LEN);
        let at_bound = meta(vec![long.clone(); MAX_NAMESPACES]);
        assert_eq!(decode(&body(&at_bound)).unwrap(), at_bound);
        for too_much in [
            meta(vec![String::new(); MAX_NAMESPACES + 1]),
            meta(vec![format!("{long}n")]),
        ] {
            assert!(encode(&too_much).is_err(), "a node never sends it");
            let err = decode(&bounded::unchecked(|| body(&too_much))).unwrap_err();
            assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
        }

        let mut mine = NodeMeta {
            version: 1,
            server_id: None,
            namespaces: Vec::new(),
            parser: None,
        };
        assert!(!mine.host(&format!("{long}n")), "too long to announce");
        for i in 0..MAX_NAMESPACES {
            assert!(mine.host(&format!("/{i}")));
        }
        assert!(mine.host("/0"), "announced already");
        assert!(!mine.host("/one-too-many"));
        assert_eq!(mine.namespaces.len(), MAX_NAMESPACES);
        assert_eq!(
            decode(&body(&Frame::Meta(mine.clone()))).unwrap(),
            Frame::Meta(mine)
        );
    }

    /// A peer's ack timeout is cut to its bound: `u64::MAX` would keep the ack state of
    /// every socket the request reaches for good.
    #[test]
    fn ack_timeouts_are_cut_to_their_bound() {
        let request = |ms| {
            Frame::Request(Request {
                ns: "/".into(),
                id: id(1),
                origin: id(2),
                kind: RequestKind::FetchSockets,
                opts: Opts::default(),
                ack_timeout_ms: ms,
            })
        };
        let max = MAX_ACK_TIMEOUT_MS;
        for (sent, got) in [
            (None, None),
            (Some(0), Some(0)),
            (Some(max), Some(max)),
            (Some(max + 1), Some(max)),
            (Some(u64::MAX), Some(max)),
        ] {
            let Ok(Frame::Request(r)) = decode(&body(&request(sent))) else {
                panic!("{sent:?} decodes");
            };
            assert_eq!(r.ack_timeout_ms, got, "sent {sent:?}");
        }
    }

    /// A large frame arriving in small chunks is buffered in one allocation of its size,
    /// not grown by doubling (which copies it several times and can hold twice its size).
    #[test]
    fn decoder_makes_room_for_a_frame_once_its_length_is_known() {
        let frame = encode(&Frame::Service(ServiceFrame {
            service: "s".into(),
            confirm: None,
            body: Bytes::from(vec![7; 1_000_000]),
        }))
        .unwrap();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        for chunk in frame.chunks(1000) {
            dec.extend(chunk);
            assert!(
                dec.buf.capacity() <= frame.len() + 1000,
                "{}",
                dec.buf.capacity()
            );
        }
        assert!(matches!(dec.next_frame(), Ok(Some(Frame::Service(_)))));
    }

    /// What the encoder accepts, a peer decodes, and what it refuses, a peer would refuse:
    /// for every bounded list at its bound and one beyond, and for a frame at the maximum
    /// size and one byte beyond.
    #[test]
    fn the_encoder_refuses_exactly_what_a_peer_decoder_refuses() {
        let ack = |n: usize| {
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Ack(
                    id(2),
                    AckResult::Ok(Value::Str("[]".into(), Some(vec![Bytes::new(); n]))),
                ),
            })
        };
        let packet = |n: usize| WirePacket {
            ns: "/".into(),
            data: PacketData::BinaryEvent(
                Value::Str("[]".into(), Some(vec![Bytes::new(); n])),
                None,
            ),
        };
        let rooms = |n: usize| vec![String::new(); n];
        let targeted = move |rooms: Vec<String>, except: Vec<String>| {
            let opts = Opts {
                rooms,
                except,
                ..Opts::default()
            };
            request(RequestKind::AllRooms, opts)
        };
        /// What a case is, the frame with a list of `n` elements, and the list's bound.
        type Case = (&'static str, Box<dyn Fn(usize) -> Frame>, usize);
        let cases: Vec<Case> = vec![
            (
                "add",
                Box::new(move |n| request(RequestKind::AddSockets(rooms(n)), Opts::default())),
                MAX_ROOMS,
            ),
            (
                "del",
                Box::new(move |n| request(RequestKind::DelSockets(rooms(n)), Opts::default())),
                MAX_ROOMS,
            ),
            (
                "rooms",
                Box::new(move |n| targeted(rooms(n), vec![])),
                MAX_ROOMS,
            ),
            (
                "except",
                Box::new(move |n| targeted(vec![], rooms(n))),
                MAX_ROOMS,
            ),
            (
                "answer",
                Box::new(move |n| {
                    Frame::Response(Response {
                        id: id(1),
                        body: ResponseBody::Rooms(rooms(n)),
                    })
                }),
                MAX_ROOMS,
            ),
            (
                "sockets",
                Box::new(|n| {
                    Frame::Response(Response {
                        id: id(1),
                        body: ResponseBody::Sockets(vec![(id(3), id(4)); n]),
                    })
                }),
                MAX_SOCKETS,
            ),
            ("ack", Box::new(ack), MAX_ATTACHMENTS),
            (
                "broadcast",
                Box::new(move |n| request(RequestKind::Broadcast(packet(n)), Opts::default())),
                MAX_ATTACHMENTS,
            ),
            (
                "with ack",
                Box::new(move |n| {
                    request(RequestKind::BroadcastWithAck(packet(n)), Opts::default())
                }),
                MAX_ATTACHMENTS,
            ),
        ];
        for (what, frame, max) in cases {
            for n in [max, max + 1] {
                let frame = frame(n);
                let raw = bounded::unchecked(|| encode(&frame).unwrap());
                let mut peer = FrameDecoder::new(usize::MAX);
                peer.extend(&raw);
                let decoded = peer.next_frame();
                let sent = encode(&frame);
                assert_eq!(sent.is_ok(), decoded.is_ok(), "{what} of {n}: {sent:?}");
                if let Err(e) = sent {
                    assert!(e.to_string().contains(&format!("{n} ")), "{e}");
                }
            }
        }
        // The frame size: at the maximum, and one byte beyond.
        let frame = Frame::Service(ServiceFrame {
            service: "s".into(),
            confirm: None,
            body: Bytes::from(vec![0; 100]),
        });
        let size = encode(&frame).unwrap().len() - LEN_PREFIX;
        for max in [size, size - 1] {
            let mut peer = FrameDecoder::new(max);
            peer.extend(&encode(&frame).unwrap());
            let sent = encode_within(&frame, max);
            assert_eq!(sent.is_ok(), peer.next_frame().is_ok(), "max {max}");
            if let Err(e) = sent {
                assert!(matches!(e, EncodeError::TooLarge { .. }), "{e}");
            }
        }
    }

    /// Every bound of the decoder is one of `bounded`'s, checked by the encoder too: a field
    /// bounded for decoding alone (`deserialize_with`) would let this node send what its
    /// peers refuse, closing its links.
    #[test]
    fn no_bound_is_checked_on_decoding_alone() {
        for (file, text) in [
            ("mod.rs", include_str!("mod.rs")),
            ("events.rs", include_str!("events.rs")),
            ("presence.rs", include_str!("presence.rs")),
            ("sessions.rs", include_str!("sessions.rs")),
        ] {
            let attr = concat!("deserialize", "_with =");
            assert!(
                !text.contains(attr),
                "{file} bounds a field for decoding alone"
            );
        }
    }

    #[test]
    fn decoder_refuses_oversized_frames_before_buffering_them() {
        let mut dec = FrameDecoder::new(10);
        dec.extend(&1000u32.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(DecodeError::TooLarge {
                size: 1000,
                max: 10
            })
        );
    }
}
