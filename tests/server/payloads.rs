//! The request payloads of the events, as the clients send them.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// A room name or a list of room names.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Rooms {
    One(String),
    Many(Vec<String>),
}

impl Rooms {
    pub(crate) fn list(rooms: Option<Rooms>) -> Vec<String> {
        match rooms {
            None => vec![],
            Some(Rooms::One(room)) => vec![room],
            Some(Rooms::Many(rooms)) => rooms,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct BroadcastReq {
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) data: Value,
    pub(crate) to: Option<Rooms>,
    pub(crate) except: Option<Rooms>,
    /// Optional binary attachment, emitted as a second argument when not empty.
    /// (Not an `Option`: the common parser only resolves binary placeholders of plain
    /// `Bytes` fields.)
    #[serde(default)]
    pub(crate) binary: Bytes,
    /// Optional binary attachments, emitted as a second argument (a list) when not empty:
    /// a client's event with many attachments that the handler relays.
    #[serde(default)]
    pub(crate) binaries: Vec<Bytes>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmitWithAckReq {
    #[serde(default = "default_ack_event")]
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) data: Value,
    pub(crate) to: Option<Rooms>,
    pub(crate) except: Option<Rooms>,
    pub(crate) timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FetchSocketsReq {
    pub(crate) to: Option<Rooms>,
    pub(crate) except: Option<Rooms>,
    /// Whether to fetch the rooms of every socket (default true).
    pub(crate) rooms: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RemoteRoomReq {
    pub(crate) sid: String,
    pub(crate) room: Rooms,
    /// Whether to answer with the socket's rooms (default true); `false` answers as soon as
    /// the join or leave returns, with nothing after it that could hide a late one.
    pub(crate) rooms: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SocketsRoomReq {
    pub(crate) to: Rooms,
    pub(crate) room: Rooms,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RemoteReq {
    pub(crate) sid: String,
    #[serde(default = "default_ack_event")]
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) data: Value,
    pub(crate) timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmitSeqReq {
    pub(crate) count: u64,
    #[serde(default = "default_seq_event")]
    pub(crate) event: String,
    pub(crate) to: Option<Rooms>,
    /// Characters of padding sent as a second argument of each event (none by default).
    #[serde(default)]
    pub(crate) pad: usize,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct TargetReq {
    pub(crate) to: Option<Rooms>,
    pub(crate) except: Option<Rooms>,
}

fn default_ack_event() -> String {
    "ask".into()
}
fn default_seq_event() -> String {
    "seq".into()
}

/// `presence_track`: track the sending socket under `key` in `topic`.
#[derive(Debug, Deserialize)]
pub(crate) struct PresenceTrackReq {
    pub(crate) topic: String,
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) meta: Value,
}
