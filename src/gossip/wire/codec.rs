//! Encoding and decoding: a frame with its header (`MAGIC ‖ VERSION`) and length prefix, a
//! [`Hello`], the body of a service message. Why either fails ([`EncodeError`],
//! [`DecodeError`]), and what a refused encoding tells the caller of a cluster operation
//! ([`RequestError`]).

use bytes::Bytes;
use serde::Serialize;

use super::{Frame, Hello, LEN_PREFIX, MAGIC, VERSION};
#[cfg(doc)]
use super::{FrameDecoder, ServiceFrame};
pub use crate::codec::EncodeError;
use crate::error::RequestError;

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

/// What a sender that refuses to encode tells its caller: the same refusal, as the error of
/// a cluster operation.
impl From<EncodeError> for RequestError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::Bound(b) => Self::OverBound {
                what: b.what,
                len: b.len,
                max: b.max,
            },
            EncodeError::TooLarge { size, max } => Self::TooLarge { size, max },
            EncodeError::Codec(e) => Self::Encode(e.to_string()),
        }
    }
}

/// Encode a frame with its header and length prefix, ready to write on a stream. Refuses a
/// list beyond its bound (see [`encode_within`] for the frame size too).
pub fn encode(frame: &Frame) -> Result<Bytes, EncodeError> {
    let mut header = [0u8; LEN_PREFIX + 3];
    header[LEN_PREFIX..].copy_from_slice(&[MAGIC[0], MAGIC[1], VERSION]);
    let mut out = crate::codec::encode_after(&header, frame)?;
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

/// Encode a [`Hello`] with the frame header (no length prefix: it travels alone on its
/// stream).
pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, EncodeError> {
    crate::codec::encode_after(&[MAGIC[0], MAGIC[1], VERSION], hello)
}

/// Decode a [`Hello`].
pub fn decode_hello(body: &[u8]) -> Result<Hello, DecodeError> {
    decode_versioned(body)
}

/// Encode the body of a [`ServiceFrame`], or an application's ack error (no header: the
/// frame carries it). Refuses a list beyond its bound, as [`encode`] does.
pub fn encode_body<T: Serialize>(value: &T) -> Result<Bytes, EncodeError> {
    crate::codec::encode_body(value)
}

/// Decode what [`encode_body`] encoded; trailing bytes are an error.
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    crate::codec::decode_body(body).map_err(DecodeError::Malformed)
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
