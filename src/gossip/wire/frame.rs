//! The frames one node sends another over the mesh ([`Frame`]), what a node says of itself
//! ([`NodeMeta`], [`Parser`]), a message of a cluster-wide service ([`ServiceFrame`]), and
//! the first message of a connection ([`Hello`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    LEN_PREFIX, MAGIC, MAX_NAMESPACE_LEN, MAX_NAMESPACES, Request, Response, Value, bounded,
};
#[cfg(doc)]
use super::{ResponseBody, encode_body};

/// A 16-byte identifier: a socket id, a socketioxide server id or a request id, as the
/// 16 ASCII characters socketioxide uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
