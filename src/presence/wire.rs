//! Messages of cluster-wide presence, in the bus's bodies (whichever backend carries them)
//! under the service [`SERVICE`].
//!
//! Each node owns its entries and numbers its changes (one sequence per node generation):
//! a [`PresenceMsg::Delta`] carries the changes of one sequence number, a
//! [`PresenceMsg::State`] all the entries of the sender (in chunks), a
//! [`PresenceMsg::Seq`] the sender's last sequence number so that a receiver that missed
//! the last delta notices. Who sent a message is known from the bus (on gossip, the
//! authenticated link): no message names its origin.
//!
//! Same rules as the mesh's wire types: owned types, postcard ([`crate::codec`]), a
//! round-trip and a golden-bytes test for each.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The service name presence messages travel under.
pub(crate) const SERVICE: &str = "presence";

/// Most operations or entries in one presence message (an entry takes a few bytes on the
/// wire and about 100 in memory: the bound keeps a message from growing many times its size
/// once decoded). Deltas and state chunks are cut to stay within it.
pub(crate) const MAX_ITEMS: usize = 4_096;

crate::codec::bounded::bound!(
    /// The operations of a delta.
    ops, PresenceOp, MAX_ITEMS, "presence operations"
);
crate::codec::bounded::bound!(
    /// The entries of a state chunk.
    entries, PresenceEntry, MAX_ITEMS, "presence entries"
);

/// What one node's presence tells another's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceMsg {
    /// The changes numbered `seq` of the sender's own entries (its sequence starts at 1).
    Delta {
        /// Sequence number: one more than the previous delta of the sender.
        seq: u64,
        /// The changes, applied in order.
        #[serde(with = "ops")]
        ops: Vec<PresenceOp>,
    },
    /// The sender asks for the receiver's own entries (a [`PresenceMsg::State`]).
    StateRequest,
    /// One chunk of the sender's own entries as of its sequence number `seq`: chunk 0
    /// starts a state, the chunk with `last` ends it, and the whole replaces what the
    /// receiver held of the sender.
    State {
        /// The sender's sequence number when the state was taken.
        seq: u64,
        /// Index of this chunk, from 0.
        chunk: u32,
        /// Whether this is the final chunk.
        last: bool,
        /// Entries of this chunk.
        #[serde(with = "entries")]
        entries: Vec<PresenceEntry>,
    },
    /// The sender's latest sequence number, sent periodically: a receiver behind it asks
    /// for the state.
    Seq(u64),
}

/// One change of a node's own entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceOp {
    /// The entry was tracked (or its meta replaced).
    Put(PresenceEntry),
    /// The entry was untracked.
    Remove {
        /// Topic.
        topic: String,
        /// Key within the topic.
        key: String,
        /// Id of the socket it was tracked for.
        socket: String,
    },
}

/// One tracked entry: a socket present under a key of a topic, with its meta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// Topic (a room name or any string).
    pub topic: String,
    /// Key within the topic (say, a user id).
    pub key: String,
    /// Id of the socket the entry is tracked for.
    pub socket: String,
    /// The meta, as JSON text.
    pub meta: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_body, encode_body};
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = PresenceEntry> {
        (
            ".{0,4}",
            ".{0,4}",
            ".{0,4}",
            proptest::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(topic, key, socket, meta)| PresenceEntry {
                topic,
                key,
                socket,
                meta: Bytes::from(meta),
            })
    }

    fn arb_msg() -> impl Strategy<Value = PresenceMsg> {
        let op =
            prop_oneof![
                arb_entry().prop_map(PresenceOp::Put),
                (".{0,4}", ".{0,4}", ".{0,4}")
                    .prop_map(|(topic, key, socket)| PresenceOp::Remove { topic, key, socket }),
            ];
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(op, 0..4))
                .prop_map(|(seq, ops)| PresenceMsg::Delta { seq, ops }),
            Just(PresenceMsg::StateRequest),
            (
                any::<u64>(),
                any::<u32>(),
                any::<bool>(),
                proptest::collection::vec(arb_entry(), 0..4)
            )
                .prop_map(|(seq, chunk, last, entries)| PresenceMsg::State {
                    seq,
                    chunk,
                    last,
                    entries
                }),
            any::<u64>().prop_map(PresenceMsg::Seq),
        ]
    }

    proptest! {
        #[test]
        fn every_presence_message_round_trips(msg in arb_msg()) {
            let bytes = encode_body(&msg).unwrap();
            prop_assert_eq!(decode_body::<PresenceMsg>(&bytes).unwrap(), msg);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_body::<PresenceMsg>(&data);
        }
    }

    /// The exact bytes of each message. A change here is a wire protocol change.
    #[test]
    fn golden_bytes() {
        let entry = PresenceEntry {
            topic: "t".into(),
            key: "k".into(),
            socket: "s".into(),
            meta: Bytes::from_static(b"{}"),
        };
        let cases = [
            (
                PresenceMsg::Delta {
                    seq: 300,
                    ops: vec![
                        PresenceOp::Put(entry.clone()),
                        PresenceOp::Remove {
                            topic: "t".into(),
                            key: "k".into(),
                            socket: "s".into(),
                        },
                    ],
                },
                "00 ac02 02 00 0174 016b 0173 02 7b7d 01 0174 016b 0173",
            ),
            (PresenceMsg::StateRequest, "01"),
            (
                PresenceMsg::State {
                    seq: 1,
                    chunk: 2,
                    last: true,
                    entries: vec![entry],
                },
                "02 01 02 01 01 0174 016b 0173 02 7b7d",
            ),
            (PresenceMsg::Seq(5), "03 05"),
        ];
        for (msg, hex) in cases {
            let want: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = encode_body(&msg).unwrap();
            let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, want, "{msg:?}");
            assert_eq!(decode_body::<PresenceMsg>(&bytes).unwrap(), msg);
        }
        assert!(
            decode_body::<PresenceMsg>(&[1, 0]).is_err(),
            "trailing bytes"
        );
    }

    #[test]
    fn more_items_than_the_bound_are_refused() {
        let entry = PresenceEntry {
            topic: String::new(),
            key: String::new(),
            socket: String::new(),
            meta: Bytes::new(),
        };
        let at_bound = PresenceMsg::State {
            seq: 0,
            chunk: 0,
            last: true,
            entries: vec![entry.clone(); MAX_ITEMS],
        };
        assert!(decode_body::<PresenceMsg>(&encode_body(&at_bound).unwrap()).is_ok());
        let over = PresenceMsg::Delta {
            seq: 1,
            ops: vec![PresenceOp::Put(entry); MAX_ITEMS + 1],
        };
        let raw = crate::codec::bounded::unchecked(|| encode_body(&over).unwrap());
        assert!(decode_body::<PresenceMsg>(&raw).is_err());
        let err = encode_body(&over).unwrap_err();
        assert!(
            err.to_string().contains("4097 presence operations"),
            "{err}"
        );
    }
}
