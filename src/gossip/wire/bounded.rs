//! Lists with a bound on their length, checked on both sides of the wire (see
//! [`crate::codec::bounded`]): the bounds of the mesh's frames. Same bytes on the wire as a
//! plain `Vec`.
//!
//! Every bound of the decoder is declared here, with `bound!` or as a module of the same
//! shape, and used with `#[serde(with = "...")]`, so that the encoder checks it too; a bound
//! given to the decoder alone (a `deserialize_with`) fails a test of this module.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[cfg(doc)]
use super::NodeMeta;
#[cfg(test)]
pub(crate) use crate::codec::bounded::unchecked;
pub(crate) use crate::codec::bounded::{Bounded, Name, bound, check};

#[cfg(test)]
mod tests;

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

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<u64>::deserialize(d).map(|t| t.map(|ms| ms.min(MAX_ACK_TIMEOUT_MS)))
    }
}
