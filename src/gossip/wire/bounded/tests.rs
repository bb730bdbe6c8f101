//! Every bound of the wire, on both sides: the encoder refuses exactly what a peer's
//! decoder refuses, before anything is allocated.

use bytes::Bytes;

use crate::gossip::wire::{
    tests::{body, id, request},
    *,
};

/// A frame whose lists announce more elements than allowed (say, millions of empty
/// room names: one byte each on the wire, 24 in memory) is refused from the length
/// prefix, before the list is allocated; one at the bound decodes.
#[test]
fn lists_longer_than_their_bound_are_refused_before_allocation() {
    let rooms = |n: usize| vec![String::new(); n];
    let at_bound = request(RequestKind::AddSockets(rooms(MAX_ROOMS)), Opts::default());
    assert_eq!(decode(&body(&at_bound)).unwrap(), at_bound);
    let too_many: Vec<Frame> = vec![
        request(
            RequestKind::AddSockets(rooms(MAX_ROOMS + 1)),
            Opts::default(),
        ),
        request(
            RequestKind::DelSockets(rooms(MAX_ROOMS + 1)),
            Opts::default(),
        ),
        request(
            RequestKind::FetchSockets,
            Opts {
                rooms: rooms(MAX_ROOMS + 1),
                ..Opts::default()
            },
        ),
        request(
            RequestKind::FetchSockets,
            Opts {
                except: rooms(MAX_ROOMS + 1),
                ..Opts::default()
            },
        ),
        Frame::Response(Response {
            id: id(1),
            body: ResponseBody::Rooms(rooms(MAX_ROOMS + 1)),
        }),
        Frame::Response(Response {
            id: id(1),
            body: ResponseBody::Ack(
                id(2),
                AckResult::Ok(Value::Str(
                    "[]".into(),
                    Some(vec![Bytes::new(); MAX_ATTACHMENTS + 1]),
                )),
            ),
        }),
    ];
    for frame in too_many {
        // A misbehaving peer's frame: refused by the decoder.
        let raw = bounded::unchecked(|| body(&frame));
        let err = decode(&raw).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
        // This node's own: refused before it is sent, naming the bound.
        let err = encode(&frame).unwrap_err();
        assert!(matches!(err, EncodeError::Bound(_)), "{err}");
    }
    // A length prefix announcing 2^32 rooms in a tiny frame: refused, nothing allocated.
    let mut huge = body(&request(RequestKind::AddSockets(vec![]), Opts::default()));
    let at = 3 + 1 + 2 + 32;
    assert_eq!(huge[at..at + 2], [4, 0], "AddSockets with an empty list");
    huge.splice(at + 1..at + 2, [0x80, 0x80, 0x80, 0x80, 0x10]);
    assert!(matches!(decode(&huge), Err(DecodeError::Malformed(_))));
}

/// What a node says it hosts is bounded like every list: in count and in the length
/// of each name, refused before anything is copied; a node announces no more than that.
#[test]
fn namespaces_are_bounded_in_count_and_length() {
    let meta = |namespaces| {
        Frame::Meta(NodeMeta {
            version: 1,
            server_id: None,
            namespaces,
            parser: None,
        })
    };
    let long = "n".repeat(MAX_NAMESPACE_LEN);
    let at_bound = meta(vec![long.clone(); MAX_NAMESPACES]);
    assert_eq!(decode(&body(&at_bound)).unwrap(), at_bound);
    for too_much in [
        meta(vec![String::new(); MAX_NAMESPACES + 1]),
        meta(vec![format!("{long}n")]),
    ] {
        assert!(encode(&too_much).is_err(), "a node never sends it");
        let err = decode(&bounded::unchecked(|| body(&too_much))).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    let mut mine = NodeMeta {
        version: 1,
        server_id: None,
        namespaces: Vec::new(),
        parser: None,
    };
    assert!(!mine.host(&format!("{long}n")), "too long to announce");
    for i in 0..MAX_NAMESPACES {
        assert!(mine.host(&format!("/{i}")));
    }
    assert!(mine.host("/0"), "announced already");
    assert!(!mine.host("/one-too-many"));
    assert_eq!(mine.namespaces.len(), MAX_NAMESPACES);
    assert_eq!(
        decode(&body(&Frame::Meta(mine.clone()))).unwrap(),
        Frame::Meta(mine)
    );
}

/// A peer's ack timeout is cut to its bound: `u64::MAX` would keep the ack state of
/// every socket the request reaches for good.
#[test]
fn ack_timeouts_are_cut_to_their_bound() {
    let request = |ms| {
        Frame::Request(Request {
            ns: "/".into(),
            id: id(1),
            origin: id(2),
            kind: RequestKind::FetchSockets,
            opts: Opts::default(),
            ack_timeout_ms: ms,
        })
    };
    let max = MAX_ACK_TIMEOUT_MS;
    for (sent, got) in [
        (None, None),
        (Some(0), Some(0)),
        (Some(max), Some(max)),
        (Some(max + 1), Some(max)),
        (Some(u64::MAX), Some(max)),
    ] {
        let Ok(Frame::Request(r)) = decode(&body(&request(sent))) else {
            panic!("{sent:?} decodes");
        };
        assert_eq!(r.ack_timeout_ms, got, "sent {sent:?}");
    }
}

/// What the encoder accepts, a peer decodes, and what it refuses, a peer would refuse:
/// for every bounded list at its bound and one beyond, and for a frame at the maximum
/// size and one byte beyond.
#[test]
fn the_encoder_refuses_exactly_what_a_peer_decoder_refuses() {
    let ack = |n: usize| {
        Frame::Response(Response {
            id: id(1),
            body: ResponseBody::Ack(
                id(2),
                AckResult::Ok(Value::Str("[]".into(), Some(vec![Bytes::new(); n]))),
            ),
        })
    };
    let packet = |n: usize| WirePacket {
        ns: "/".into(),
        data: PacketData::BinaryEvent(Value::Str("[]".into(), Some(vec![Bytes::new(); n])), None),
    };
    let rooms = |n: usize| vec![String::new(); n];
    let targeted = move |rooms: Vec<String>, except: Vec<String>| {
        let opts = Opts {
            rooms,
            except,
            ..Opts::default()
        };
        request(RequestKind::AllRooms, opts)
    };
    /// What a case is, the frame with a list of `n` elements, and the list's bound.
    type Case = (&'static str, Box<dyn Fn(usize) -> Frame>, usize);
    let cases: Vec<Case> = vec![
        (
            "add",
            Box::new(move |n| request(RequestKind::AddSockets(rooms(n)), Opts::default())),
            MAX_ROOMS,
        ),
        (
            "del",
            Box::new(move |n| request(RequestKind::DelSockets(rooms(n)), Opts::default())),
            MAX_ROOMS,
        ),
        (
            "rooms",
            Box::new(move |n| targeted(rooms(n), vec![])),
            MAX_ROOMS,
        ),
        (
            "except",
            Box::new(move |n| targeted(vec![], rooms(n))),
            MAX_ROOMS,
        ),
        (
            "answer",
            Box::new(move |n| {
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Rooms(rooms(n)),
                })
            }),
            MAX_ROOMS,
        ),
        (
            "sockets",
            Box::new(|n| {
                Frame::Response(Response {
                    id: id(1),
                    body: ResponseBody::Sockets(vec![(id(3), id(4)); n]),
                })
            }),
            MAX_SOCKETS,
        ),
        ("ack", Box::new(ack), MAX_ATTACHMENTS),
        (
            "broadcast",
            Box::new(move |n| request(RequestKind::Broadcast(packet(n)), Opts::default())),
            MAX_ATTACHMENTS,
        ),
        (
            "with ack",
            Box::new(move |n| request(RequestKind::BroadcastWithAck(packet(n)), Opts::default())),
            MAX_ATTACHMENTS,
        ),
    ];
    for (what, frame, max) in cases {
        for n in [max, max + 1] {
            let frame = frame(n);
            let raw = bounded::unchecked(|| encode(&frame).unwrap());
            let mut peer = FrameDecoder::new(usize::MAX);
            peer.extend(&raw);
            let decoded = peer.next_frame();
            let sent = encode(&frame);
            assert_eq!(sent.is_ok(), decoded.is_ok(), "{what} of {n}: {sent:?}");
            if let Err(e) = sent {
                assert!(e.to_string().contains(&format!("{n} ")), "{e}");
            }
        }
    }
    // The frame size: at the maximum, and one byte beyond.
    let frame = Frame::Service(ServiceFrame {
        service: "s".into(),
        confirm: None,
        body: Bytes::from(vec![0; 100]),
    });
    let size = encode(&frame).unwrap().len() - LEN_PREFIX;
    for max in [size, size - 1] {
        let mut peer = FrameDecoder::new(max);
        peer.extend(&encode(&frame).unwrap());
        let sent = encode_within(&frame, max);
        assert_eq!(sent.is_ok(), peer.next_frame().is_ok(), "max {max}");
        if let Err(e) = sent {
            assert!(matches!(e, EncodeError::TooLarge { .. }), "{e}");
        }
    }
}

/// Every bound of the decoder is one of `bounded`'s, checked by the encoder too: a field
/// bounded for decoding alone (`deserialize_with`) would let this node send what its
/// peers refuse, closing its links.
#[test]
fn no_bound_is_checked_on_decoding_alone() {
    // Every file of the wire, and the features' messages, so that a file added later is
    // read too.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wire = root.join("src");
    let mut dirs = vec![root.join("src/gossip/wire")];
    let mut files: Vec<_> = [
        "src/events/wire.rs",
        "src/presence/wire.rs",
        "src/sessions/wire.rs",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("list the wire's files")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for types in [
        "gossip/wire/frame.rs",
        "gossip/wire/request.rs",
        "events/wire.rs",
        "presence/wire.rs",
        "sessions/wire.rs",
    ] {
        assert!(files.contains(&wire.join(types)), "{types} is read");
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a file of the wire");
        let attr = concat!("deserialize", "_with =");
        assert!(
            !text.contains(attr),
            "{} bounds a field for decoding alone",
            file.strip_prefix(&wire).unwrap_or(&file).display()
        );
    }
}
