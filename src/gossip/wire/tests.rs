//! Every frame round-trips through the encoder and the decoder, and encodes to its golden
//! bytes; a bad header is refused. The helpers here serve the other tests of the wire.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

pub(super) fn id(c: u8) -> Id {
    Id([c; 16])
}

/// A request of `kind` on `/`, to the sockets `opts` select.
pub(super) fn request(kind: RequestKind, opts: Opts) -> Frame {
    Frame::Request(Request {
        ns: "/".into(),
        id: id(1),
        origin: id(2),
        kind,
        opts,
        ack_timeout_ms: None,
    })
}

pub(super) fn body(frame: &Frame) -> Vec<u8> {
    encode(frame).unwrap()[LEN_PREFIX..].to_vec()
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}
fn arb_id() -> impl Strategy<Value = Id> {
    any::<[u8; 16]>().prop_map(Id)
}
fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (
            ".{0,8}",
            proptest::option::of(proptest::collection::vec(arb_bytes(), 0..3))
        )
            .prop_map(|(s, b)| Value::Str(s.into(), b)),
        arb_bytes().prop_map(Value::Bytes),
    ]
}
fn arb_packet() -> impl Strategy<Value = WirePacket> {
    let data = prop_oneof![
        proptest::option::of(arb_value()).prop_map(PacketData::Connect),
        Just(PacketData::Disconnect),
        (arb_value(), any::<Option<i64>>()).prop_map(|(v, a)| PacketData::Event(v, a)),
        (arb_value(), any::<i64>()).prop_map(|(v, a)| PacketData::EventAck(v, a)),
        ".{0,8}".prop_map(PacketData::ConnectError),
        (arb_value(), any::<Option<i64>>()).prop_map(|(v, a)| PacketData::BinaryEvent(v, a)),
        (arb_value(), any::<i64>()).prop_map(|(v, a)| PacketData::BinaryAck(v, a)),
    ];
    (".{0,8}", data).prop_map(|(ns, data)| WirePacket { ns, data })
}
fn arb_rooms() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(".{0,6}", 0..4)
}
fn arb_opts() -> impl Strategy<Value = Opts> {
    (
        any::<u8>(),
        arb_rooms(),
        arb_rooms(),
        proptest::option::of(arb_id()),
        proptest::option::of(arb_id()),
    )
        .prop_map(|(flags, rooms, except, sid, server_id)| Opts {
            flags,
            rooms,
            except,
            sid,
            server_id,
        })
}
fn arb_kind() -> impl Strategy<Value = RequestKind> {
    prop_oneof![
        arb_packet().prop_map(RequestKind::Broadcast),
        arb_packet().prop_map(RequestKind::BroadcastWithAck),
        Just(RequestKind::DisconnectSockets),
        Just(RequestKind::AllRooms),
        arb_rooms().prop_map(RequestKind::AddSockets),
        arb_rooms().prop_map(RequestKind::DelSockets),
        Just(RequestKind::FetchSockets),
    ]
}
fn arb_body() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        Just(ResponseBody::NotHosted),
        any::<u32>().prop_map(ResponseBody::AckCount),
        (arb_id(), arb_value()).prop_map(|(i, v)| ResponseBody::Ack(i, AckResult::Ok(v))),
        (arb_id(), arb_bytes()).prop_map(|(i, e)| ResponseBody::Ack(i, AckResult::Err(e))),
        arb_rooms().prop_map(ResponseBody::Rooms),
        proptest::collection::vec((arb_id(), arb_id()), 0..3).prop_map(ResponseBody::Sockets),
        Just(ResponseBody::Done),
        arb_bytes().prop_map(ResponseBody::Service),
        ".{0,8}".prop_map(ResponseBody::Refused),
    ]
}
fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            ".{0,8}",
            arb_id(),
            arb_id(),
            arb_kind(),
            arb_opts(),
            proptest::option::of(0..=MAX_ACK_TIMEOUT_MS)
        )
            .prop_map(|(ns, id, origin, kind, opts, ack_timeout_ms)| {
                Frame::Request(Request {
                    ns,
                    id,
                    origin,
                    kind,
                    opts,
                    ack_timeout_ms,
                })
            }),
        (arb_id(), arb_body()).prop_map(|(id, body)| Frame::Response(Response { id, body })),
        Just(Frame::Leave),
        arb_id().prop_map(Frame::Flush),
        (".{0,8}", proptest::option::of(arb_id()), arb_bytes()).prop_map(
            |(service, confirm, body)| Frame::Service(ServiceFrame {
                service,
                confirm,
                body
            })
        ),
        (
            any::<u64>(),
            proptest::option::of(arb_id()),
            arb_rooms(),
            proptest::option::of(prop_oneof![Just(Parser::Common), Just(Parser::MsgPack)])
        )
            .prop_map(
                |(version, server_id, namespaces, parser)| Frame::Meta(NodeMeta {
                    version,
                    server_id,
                    namespaces,
                    parser,
                })
            ),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips(frame in arb_frame()) {
        prop_assert_eq!(decode(&body(&frame)).unwrap(), frame);
    }

    #[test]
    fn the_kind_and_size_of_a_frame_read_from_its_bytes(frame in arb_frame()) {
        let encoded = encode(&frame).unwrap();
        prop_assert_eq!(encoded_kind(&encoded), Some(frame.kind()));
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        dec.extend(&encoded);
        prop_assert_eq!(dec.next_frame().unwrap().map(|f| f.kind()), Some(frame.kind()));
        prop_assert_eq!(dec.last_size(), encoded.len());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&data);
        let mut with_header = vec![MAGIC[0], MAGIC[1], VERSION];
        with_header.extend_from_slice(&data);
        let _ = decode(&with_header);
        let mut dec = FrameDecoder::new(1024);
        dec.extend(&data);
        let _ = dec.next_frame();
    }

    #[test]
    fn decoder_reassembles_split_streams(frames in proptest::collection::vec(arb_frame(), 1..4), cut in 1usize..7) {
        let stream: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap().to_vec()).collect();
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut out = Vec::new();
        for chunk in stream.chunks(cut) {
            dec.extend(chunk);
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(f);
            }
        }
        prop_assert_eq!(out, frames);
    }
}

/// A random request id, shown in a log line, keeps that line one line.
#[test]
fn an_id_is_shown_in_hex() {
    let mut raw = *b"0123456789abcde\n";
    raw[0] = 0x1b;
    assert_eq!(Id(raw).to_string(), "1b31323334353637383961626364650a");
}

/// The exact bytes of each frame type. A change here is a wire protocol change: bump
/// [`VERSION`].
#[test]
fn golden_bytes() {
    let packet = WirePacket {
        ns: "/".into(),
        data: PacketData::Event(Value::Str("[\"a\"]".into(), None), Some(3)),
    };
    let cases: Vec<(Frame, &str)> = vec![
        (Frame::Leave, "535804 02"),
        (
            Frame::Flush(id(9)),
            "535804 05 09090909090909090909090909090909",
        ),
        (
            Frame::Meta(NodeMeta {
                version: 300,
                server_id: Some(id(1)),
                namespaces: vec!["/".into()],
                parser: Some(Parser::MsgPack),
            }),
            "535804 04 ac02 01 01010101010101010101010101010101 01 012f 01 01",
        ),
        (
            Frame::Meta(NodeMeta {
                version: 1,
                server_id: None,
                namespaces: vec![],
                parser: None,
            }),
            "535804 04 01 00 00 00",
        ),
        (
            Frame::Service(ServiceFrame {
                service: "s".into(),
                confirm: None,
                body: Bytes::from_static(&[1, 2]),
            }),
            "535804 03 0173 00 020102",
        ),
        (
            Frame::Service(ServiceFrame {
                service: "s".into(),
                confirm: Some(id(1)),
                body: Bytes::new(),
            }),
            "535804 03 0173 01 01010101010101010101010101010101 00",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Done,
            }),
            "535804 01 01010101010101010101010101010101 05",
        ),
        (
            Frame::Request(Request {
                ns: "/".into(),
                id: id(b'r'),
                origin: id(b'o'),
                kind: RequestKind::Broadcast(packet.clone()),
                opts: Opts {
                    flags: 2,
                    rooms: vec!["x".into()],
                    except: vec![],
                    sid: None,
                    server_id: Some(id(b's')),
                },
                ack_timeout_ms: None,
            }),
            "535804 00 012f 72727272727272727272727272727272 6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f \
             00 012f 02 00 055b2261225d 00 01 06 \
             02 01 0178 00 00 01 73737373737373737373737373737373 00",
        ),
        (
            Frame::Request(Request {
                ns: "/n".into(),
                id: id(1),
                origin: id(2),
                kind: RequestKind::AddSockets(vec!["r".into()]),
                opts: Opts::default(),
                ack_timeout_ms: Some(300),
            }),
            "535804 00 022f6e 01010101010101010101010101010101 02020202020202020202020202020202 \
             04 01 0172 00 00 00 00 00 01 ac02",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Service(Bytes::from_static(&[7, 8])),
            }),
            "535804 01 01010101010101010101010101010101 06 020708",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Refused("no".into()),
            }),
            "535804 01 01010101010101010101010101010101 07 026e6f",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::NotHosted,
            }),
            "535804 01 01010101010101010101010101010101 00",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::AckCount(300),
            }),
            "535804 01 01010101010101010101010101010101 01 ac02",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Ack(
                    id(2),
                    AckResult::Ok(Value::Str("1".into(), Some(vec![Bytes::from_static(&[9])]))),
                ),
            }),
            "535804 01 01010101010101010101010101010101 02 02020202020202020202020202020202 \
             00 00 0131 01 01 0109",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Ack(id(2), AckResult::Err(Bytes::from_static(&[7]))),
            }),
            "535804 01 01010101010101010101010101010101 02 02020202020202020202020202020202 \
             01 0107",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Rooms(vec!["a".into()]),
            }),
            "535804 01 01010101010101010101010101010101 03 01 0161",
        ),
        (
            Frame::Response(Response {
                id: id(1),
                body: ResponseBody::Sockets(vec![(id(3), id(4))]),
            }),
            "535804 01 01010101010101010101010101010101 04 01 \
             03030303030303030303030303030303 04040404040404040404040404040404",
        ),
    ];
    for (frame, hex) in cases {
        let want: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        let got: String = body(&frame).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want, "{frame:?}");
        assert_eq!(decode(&body(&frame)).unwrap(), frame);
    }
}

#[test]
fn hello_round_trips_with_golden_bytes() {
    let hello = Hello {
        node_name: "a".into(),
        generation: 300,
        mesh_addr: "b".into(),
        gossip_addr: "c".into(),
        mac: Some([7; 32]),
    };
    let bytes = encode_hello(&hello).unwrap();
    let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        got,
        format!("535804 0161 ac02 0162 0163 01{}", "07".repeat(32)).replace(' ', "")
    );
    assert_eq!(decode_hello(&bytes).unwrap(), hello);
    let insecure = Hello { mac: None, ..hello };
    assert_eq!(
        decode_hello(&encode_hello(&insecure).unwrap()).unwrap(),
        insecure
    );
}

#[test]
fn binary_value_golden_bytes() {
    let frame = Frame::Request(Request {
        ns: "/".into(),
        id: id(0),
        origin: id(0),
        kind: RequestKind::BroadcastWithAck(WirePacket {
            ns: "/".into(),
            data: PacketData::BinaryEvent(Value::Bytes(Bytes::from_static(&[1, 2])), None),
        }),
        opts: Opts::default(),
        ack_timeout_ms: None,
    });
    let got: String = body(&frame).iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        got.ends_with(
            "01 012f 05 01 020102 00 00 00 00 00 00 00"
                .replace(' ', "")
                .as_str()
        ),
        "{got}"
    );
}

#[test]
fn rejects_bad_header_version_and_garbage() {
    let good = body(&Frame::Leave);
    assert_eq!(decode(&good[..2]), Err(DecodeError::TooShort(2)));
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert_eq!(decode(&bad_magic), Err(DecodeError::BadMagic));
    let mut bad_version = good.clone();
    bad_version[2] = VERSION + 1;
    assert_eq!(decode(&bad_version), Err(DecodeError::Version(VERSION + 1)));
    let mut garbage = good.clone();
    garbage[3] = 0xee;
    assert!(matches!(decode(&garbage), Err(DecodeError::Malformed(_))));
    let mut trailing = good;
    trailing.push(0);
    assert!(matches!(decode(&trailing), Err(DecodeError::Malformed(_))));
}
