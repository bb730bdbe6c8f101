//! A request from one node to the others for one namespace ([`Request`]: which sockets,
//! what to do), the socket.io packets it carries ([`WirePacket`]), and the responses to it
//! ([`Response`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use socketioxide_core::Str;

#[cfg(doc)]
use super::{Frame, MAX_ACK_TIMEOUT_MS, encode_body};
use super::{Id, bounded};

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
    /// A text payload with optional binary attachments. The text is socketioxide's own
    /// (reference-counted) string, encoded as a plain string: a broadcast's payload goes to
    /// its frame without a copy of its own.
    Str(
        Str,
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
