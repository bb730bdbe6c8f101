//! A mesh stream cut into frames ([`FrameDecoder`]), each refused once its length prefix
//! announces more than the limit, before it is buffered.

use bytes::{Buf, BytesMut};

use super::{DecodeError, Frame, LEN_PREFIX, decode};

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
    use bytes::Bytes;

    use super::*;
    use crate::gossip::wire::{DEFAULT_MAX_FRAME_SIZE, ServiceFrame, encode};

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
