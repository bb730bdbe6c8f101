//! The binary encoding every layer shares: postcard bodies whose lists are bounded on both
//! sides of the wire ([`bounded`]). Pure: no I/O. The mesh's frames add their header and
//! length prefix on top (`gossip::wire`); the cluster-wide features encode their messages
//! with [`encode_body`] whichever backend carries them.

pub(crate) mod bounded;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

/// Why a value cannot be sent to a peer: what the peer's decoder would refuse is refused
/// here, before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A list goes beyond the bound a node accepts.
    #[error("it holds {} {}, more than the {} a node accepts", .0.len, .0.what, .0.max)]
    Bound(bounded::Exceeded),
    /// The encoded frame is larger than the maximum frame size.
    #[cfg_attr(not(feature = "cluster-gossip"), allow(dead_code))]
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

/// Encode a message body (no header). Refuses a list beyond its bound.
pub(crate) fn encode_body<T: Serialize>(value: &T) -> Result<Bytes, EncodeError> {
    encode_after(&[], value).map(Bytes::from)
}

/// `header` followed by the encoding of `value`, in one allocation of the exact size (a
/// buffer grown as the encoder writes is reallocated and copied about ten times for a
/// frame of a few hundred bytes). Refuses a list beyond its bound.
pub(crate) fn encode_after<T: Serialize + ?Sized>(
    header: &[u8],
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    bounded::take_exceeded();
    let size = postcard::experimental::serialized_size(value)?;
    let mut out = Vec::with_capacity(header.len() + size);
    out.extend_from_slice(header);
    Ok(postcard::to_extend(value, out)?)
}

/// Decode what [`encode_body`] encoded; trailing bytes are an error (said in the message).
pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(value)
}
