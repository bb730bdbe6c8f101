//! What the Redis bus publishes: an [`Envelope`] naming its sender and carrying one
//! [`Frame`] — a service's message, a request, or the answer to one — whose body is the
//! service's own encoding, never read here. Pure: no I/O.
//!
//! Bytes: `MAGIC ‖ VERSION ‖ postcard(Envelope)` ([`crate::codec`], as the mesh's frames). No
//! authenticated link tells who published a message: each names its sender, which is
//! checked (a name of 1 to [`MAX_NAME`] bytes, a service name of at most
//! [`MAX_SERVICE`]); a message larger than [`MAX_MESSAGE`] is refused before it is
//! decoded.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{bus::NodeId, codec};

/// The first two bytes of every message of the bus.
pub(crate) const MAGIC: [u8; 2] = *b"SB";
/// The version of the bus's messages. Bumped on any incompatible change.
pub(crate) const VERSION: u8 = 1;
/// Largest message published or accepted, in bytes.
pub(crate) const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Longest node name accepted: it names a channel.
pub(crate) const MAX_NAME: usize = 256;
/// Longest service name accepted.
pub(crate) const MAX_SERVICE: usize = 64;
/// Room for the header, the sender and the frame around a body.
pub(crate) const OVERHEAD: usize = MAX_NAME + MAX_SERVICE + 64;

/// One message of the bus, with its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The sender's node name.
    pub(crate) from: String,
    /// The sender's generation (when its bus started, ns since the Unix epoch).
    pub(crate) generation: u64,
    pub(crate) frame: Frame,
}

/// What an envelope carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// A message of `service`, to all nodes or to the node whose channel it is on.
    Message {
        /// The service it is for.
        service: String,
        /// The service's own encoding.
        body: Bytes,
    },
    /// A message whose sender waits for an answer on its own channel.
    Request {
        /// The service it is for.
        service: String,
        /// The sender's number for the request.
        id: u64,
        /// The service's own encoding.
        body: Bytes,
    },
    /// The answer to the request `id` of the node whose channel it is on.
    Answer {
        /// The request's number.
        id: u64,
        /// What the service answered.
        answer: Answer,
    },
}

/// How a node answers a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// The service's answer, in its own encoding.
    Body(Bytes),
    /// Handled, without an answer.
    Done,
    /// The node runs no such service.
    NotHosted,
    /// The service's answer could not be sent (larger than a message), and why.
    Refused(String),
}

impl Envelope {
    /// The sender, as the bus names nodes.
    pub(crate) fn sender(&self) -> NodeId {
        NodeId {
            name: self.from.as_str().into(),
            generation: self.generation,
        }
    }
}

/// Encode an envelope; refused when larger than [`MAX_MESSAGE`].
pub(crate) fn encode(env: &Envelope) -> Result<Vec<u8>, String> {
    let body = codec::encode_body(env).map_err(|e| e.to_string())?;
    let size = MAGIC.len() + 1 + body.len();
    if size > MAX_MESSAGE {
        return Err(format!(
            "message of {size} bytes exceeds the maximum of {MAX_MESSAGE} bytes"
        ));
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a message published on the bus, checking its size, header and sender.
pub(crate) fn decode(payload: &[u8]) -> Result<Envelope, String> {
    if payload.len() > MAX_MESSAGE {
        return Err(format!(
            "message of {} bytes exceeds the maximum of {MAX_MESSAGE} bytes",
            payload.len()
        ));
    }
    match payload {
        [m0, m1, version, body @ ..] if [*m0, *m1] == MAGIC => {
            if *version != VERSION {
                return Err(format!(
                    "message of version {version} (this node speaks {VERSION})"
                ));
            }
            let env: Envelope = codec::decode_body(body)?;
            if env.from.is_empty() || env.from.len() > MAX_NAME {
                return Err("its sender's name is empty or too long".into());
            }
            let service = match &env.frame {
                Frame::Message { service, .. } | Frame::Request { service, .. } => service,
                Frame::Answer { .. } => "",
            };
            if service.len() > MAX_SERVICE {
                return Err("its service name is too long".into());
            }
            Ok(env)
        }
        _ => Err("not a message of the bus (bad magic bytes)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn env(frame: Frame) -> Envelope {
        Envelope {
            from: "n1".into(),
            generation: 7,
            frame,
        }
    }

    /// The exact bytes of each message. A change here is a protocol change of the bus.
    #[test]
    fn messages_have_stable_bytes_and_round_trip() {
        let cases = [
            (
                env(Frame::Message {
                    service: "presence".into(),
                    body: Bytes::from_static(b"\x01"),
                }),
                "5342 01 026e31 07 00 0870726573656e6365 0101",
            ),
            (
                env(Frame::Request {
                    service: "events".into(),
                    id: 300,
                    body: Bytes::from_static(b"ab"),
                }),
                "5342 01 026e31 07 01 066576656e7473 ac02 026162",
            ),
            (
                env(Frame::Answer {
                    id: 1,
                    answer: Answer::Body(Bytes::from_static(b"{}")),
                }),
                "5342 01 026e31 07 02 01 00 027b7d",
            ),
            (
                env(Frame::Answer {
                    id: 2,
                    answer: Answer::Done,
                }),
                "5342 01 026e31 07 02 02 01",
            ),
            (
                env(Frame::Answer {
                    id: 3,
                    answer: Answer::NotHosted,
                }),
                "5342 01 026e31 07 02 03 02",
            ),
            (
                env(Frame::Answer {
                    id: 4,
                    answer: Answer::Refused("big".into()),
                }),
                "5342 01 026e31 07 02 04 03 03626967",
            ),
        ];
        for (env, golden) in cases {
            let want: String = golden.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = encode(&env).unwrap();
            assert_eq!(hex(&bytes), want, "{env:?}");
            assert_eq!(decode(&bytes).unwrap(), env);
        }
    }

    #[test]
    fn refused_input_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0xc1]).is_err());
        let good = encode(&env(Frame::Answer {
            id: 1,
            answer: Answer::Done,
        }))
        .unwrap();
        let mut other_version = good.clone();
        other_version[2] = VERSION + 1;
        assert!(decode(&other_version).unwrap_err().contains("version"));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        let err = decode(&vec![0; MAX_MESSAGE + 1]).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
        for from in [String::new(), "x".repeat(MAX_NAME + 1)] {
            let mut e = env(Frame::Answer {
                id: 1,
                answer: Answer::Done,
            });
            e.from = from;
            let raw = encode(&e).unwrap();
            assert!(decode(&raw).unwrap_err().contains("name"));
        }
        let long_service = env(Frame::Message {
            service: "s".repeat(MAX_SERVICE + 1),
            body: Bytes::new(),
        });
        assert!(decode(&encode(&long_service).unwrap()).is_err());
        let too_large = env(Frame::Message {
            service: "s".into(),
            body: Bytes::from(vec![0; MAX_MESSAGE]),
        });
        assert!(encode(&too_large).unwrap_err().contains("exceeds"));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&data);
            let mut framed = MAGIC.to_vec();
            framed.push(VERSION);
            framed.extend_from_slice(&data);
            let _ = decode(&framed);
        }
    }
}
