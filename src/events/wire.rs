//! The messages of server events, in the bus's bodies (whichever backend carries them):
//! an event ([`EventMsg`]) under the service [`SERVICE`], and the answer to one sent with
//! an ack ([`EventReply`]).
//!
//! Same rules as the mesh's wire types: owned types, postcard ([`crate::codec`]), a
//! round-trip and a golden-bytes test for each.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The service name server events travel under.
pub(crate) const SERVICE: &str = "events";

/// An event emitted by the sending node to the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct EventMsg {
    /// The event's name.
    pub(crate) event: String,
    /// Its data, as JSON.
    pub(crate) data: Bytes,
}

/// What a node answers to an event sent with an ack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum EventReply {
    /// The handler's answer, as JSON.
    Ack(Bytes),
    /// The handler ended without answering.
    NoAck,
    /// The node has no handler for the event.
    NoHandler,
    /// The node was running as many handlers as it allows: the event was dropped there.
    Overloaded,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_body, encode_body};
    use proptest::prelude::*;

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
    }

    fn arb_reply() -> impl Strategy<Value = EventReply> {
        prop_oneof![
            arb_bytes().prop_map(EventReply::Ack),
            Just(EventReply::NoAck),
            Just(EventReply::NoHandler),
            Just(EventReply::Overloaded),
        ]
    }

    proptest! {
        #[test]
        fn every_event_message_round_trips(event in ".{0,8}", data in arb_bytes()) {
            let msg = EventMsg { event, data };
            let bytes = encode_body(&msg).unwrap();
            prop_assert_eq!(decode_body::<EventMsg>(&bytes).unwrap(), msg);
        }

        #[test]
        fn every_reply_round_trips(reply in arb_reply()) {
            let bytes = encode_body(&reply).unwrap();
            prop_assert_eq!(decode_body::<EventReply>(&bytes).unwrap(), reply);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_body::<EventMsg>(&data);
            let _ = decode_body::<EventReply>(&data);
        }
    }

    /// The exact bytes of each message. A change here is a wire protocol change.
    #[test]
    fn golden_bytes() {
        let msg = EventMsg {
            event: "a".into(),
            data: Bytes::from_static(b"1"),
        };
        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(&encode_body(&msg).unwrap()), "0161".to_owned() + "0131");
        let cases = [
            (EventReply::Ack(Bytes::from_static(b"{}")), "00027b7d"),
            (EventReply::NoAck, "01"),
            (EventReply::NoHandler, "02"),
            (EventReply::Overloaded, "03"),
        ];
        for (reply, want) in cases {
            let bytes = encode_body(&reply).unwrap();
            assert_eq!(hex(&bytes), want, "{reply:?}");
            assert_eq!(decode_body::<EventReply>(&bytes).unwrap(), reply);
        }
        assert!(decode_body::<EventReply>(&[4]).is_err(), "unknown variant");
        assert!(
            decode_body::<EventReply>(&[1, 0]).is_err(),
            "trailing bytes"
        );
    }
}
