//! Messages of the replicated session store (feature `sessions`), in the bus's bodies
//! under the service [`SERVICE`].
//!
//! Same rules as the mesh's wire types: owned types, postcard ([`crate::codec`]), a
//! round-trip and a golden-bytes test for each.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The service name session messages travel under.
pub const SERVICE: &str = "sessions";

/// Most records in one session message (a record takes a few bytes on the wire and about
/// 100 in memory: the bound keeps a message from growing many times its size once
/// decoded). Snapshot chunks are cut to stay within it.
pub const MAX_RECORDS: usize = 16_384;

crate::codec::bounded::bound!(
    /// The records of a message.
    records, SessionRecord, MAX_RECORDS, "session records"
);

/// What one node's session store tells another's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionMsg {
    /// Records saved or deleted on the sender: the receiver merges each.
    Put(#[serde(with = "records")] Vec<SessionRecord>),
    /// The sender asks for every record the receiver holds (catch-up after a join).
    SnapshotRequest,
    /// One chunk of the answer to a [`SessionMsg::SnapshotRequest`]; `last` on the final one.
    Snapshot {
        /// Records of this chunk.
        #[serde(with = "records")]
        records: Vec<SessionRecord>,
        /// Whether this is the final chunk.
        last: bool,
    },
}

/// One session, or the tombstone of a deleted one, with the version that orders writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The `tower-sessions` session id.
    pub id: i128,
    /// Which write this is.
    pub version: Version,
    /// The session, or its deletion.
    pub state: SessionState,
}

/// The version of a write: the writer's clock (ms since the Unix epoch, never lower than
/// one more than the version it replaces) and the writer's node name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Hybrid timestamp, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Name of the node that wrote it.
    pub node: String,
}

/// A session's content, or its deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// A live session.
    Live {
        /// Expiry, ns since the Unix epoch.
        expiry_unix_ns: i128,
        /// The session's data (JSON of its key-value map).
        data: Bytes,
    },
    /// The session was deleted.
    Deleted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_body, encode_body};
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = SessionRecord> {
        let state = prop_oneof![
            (any::<i128>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(
                |(expiry_unix_ns, d)| SessionState::Live {
                    expiry_unix_ns,
                    data: Bytes::from(d)
                }
            ),
            Just(SessionState::Deleted),
        ];
        (any::<i128>(), any::<u64>(), ".{0,6}", state).prop_map(|(id, ts_ms, node, state)| {
            SessionRecord {
                id,
                version: Version { ts_ms, node },
                state,
            }
        })
    }

    fn arb_msg() -> impl Strategy<Value = SessionMsg> {
        let records = || proptest::collection::vec(arb_record(), 0..4);
        prop_oneof![
            records().prop_map(SessionMsg::Put),
            Just(SessionMsg::SnapshotRequest),
            (records(), any::<bool>())
                .prop_map(|(records, last)| SessionMsg::Snapshot { records, last }),
        ]
    }

    proptest! {
        #[test]
        fn every_session_message_round_trips(msg in arb_msg()) {
            let bytes = encode_body(&msg).unwrap();
            prop_assert_eq!(decode_body::<SessionMsg>(&bytes).unwrap(), msg);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_body::<SessionMsg>(&data);
        }
    }

    /// The exact bytes of each message. A change here is a wire protocol change.
    #[test]
    fn golden_bytes() {
        let live = SessionRecord {
            id: -1,
            version: Version {
                ts_ms: 300,
                node: "a".into(),
            },
            state: SessionState::Live {
                expiry_unix_ns: 2,
                data: Bytes::from_static(b"{}"),
            },
        };
        let deleted = SessionRecord {
            id: 1,
            version: Version {
                ts_ms: 1,
                node: "b".into(),
            },
            state: SessionState::Deleted,
        };
        let cases = [
            (
                SessionMsg::Put(vec![live]),
                "00 01 01 ac02 0161 00 04 02 7b7d",
            ),
            (SessionMsg::SnapshotRequest, "01"),
            (
                SessionMsg::Snapshot {
                    records: vec![deleted],
                    last: true,
                },
                "02 01 02 01 0162 01 01",
            ),
        ];
        for (msg, hex) in cases {
            let want: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = encode_body(&msg).unwrap();
            let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, want, "{msg:?}");
            assert_eq!(decode_body::<SessionMsg>(&bytes).unwrap(), msg);
        }
        assert!(
            decode_body::<SessionMsg>(&[1, 0]).is_err(),
            "trailing bytes"
        );
    }

    #[test]
    fn more_records_than_the_bound_are_refused() {
        let record = SessionRecord {
            id: 0,
            version: Version {
                ts_ms: 0,
                node: String::new(),
            },
            state: SessionState::Deleted,
        };
        let at_bound = SessionMsg::Put(vec![record.clone(); MAX_RECORDS]);
        assert!(decode_body::<SessionMsg>(&encode_body(&at_bound).unwrap()).is_ok());
        let over = SessionMsg::Snapshot {
            records: vec![record; MAX_RECORDS + 1],
            last: true,
        };
        let raw = crate::codec::bounded::unchecked(|| encode_body(&over).unwrap());
        assert!(decode_body::<SessionMsg>(&raw).is_err());
        let err = encode_body(&over).unwrap_err();
        assert!(err.to_string().contains("16385 session records"), "{err}");
    }
}
