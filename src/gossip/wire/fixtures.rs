//! Golden fixtures of the mesh protocol: one file of bytes per kind of message, kept per
//! protocol version in `tests/wire/v{VERSION}/` (see `docs/wire-compatibility.md`).
//!
//! Each fixture is what goes on a mesh stream: a whole frame with its length prefix (the
//! first message of a connection, [`Hello`], without one), service messages inside the
//! [`ServiceFrame`] or [`ResponseBody::Service`] that carries them. The test decodes every
//! file and encodes the result again: the bytes must be identical, and equal to what this
//! build encodes for the same message. A variant added to a frame type without a fixture
//! fails to compile here ([`variants`] matches every type exhaustively) or fails the test.
//!
//! `UPDATE_WIRE_FIXTURES=1 cargo test --all-features --lib wire::fixtures` writes the
//! files of the current version anew (and removes the ones no message makes any more). A
//! directory holding a `RELEASED` file belongs to a published version: it is never
//! rewritten, so a change to its bytes needs a new protocol version.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use super::{
    AckResult, DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder, Hello, Id, NodeMeta, Opts, PacketData,
    Parser, Request, RequestKind, Response, ResponseBody, ServiceFrame, VERSION, Value, WirePacket,
    decode_body, decode_hello, encode, encode_body, encode_hello, events, presence,
};

/// The environment variable that rewrites the fixtures of the current version.
const UPDATE: &str = "UPDATE_WIRE_FIXTURES";

/// One message of the protocol, as a file of bytes.
struct Fixture {
    /// File name, without `.bin`.
    name: String,
    /// The bytes this build sends for it.
    bytes: Vec<u8>,
    /// Decodes bytes as this kind of message and encodes the result again.
    reencode: fn(&[u8]) -> Result<Vec<u8>, String>,
    /// The variants of the protocol's types it shows (see [`variants`]).
    shows: Vec<&'static str>,
}

fn id(c: u8) -> Id {
    Id([c; 16])
}

fn frame_bytes(frame: &Frame) -> Vec<u8> {
    encode(frame).expect("a sample frame encodes").to_vec()
}

/// Decodes one whole frame (length prefix included), refusing trailing bytes.
fn read_frame(bytes: &[u8]) -> Result<Frame, String> {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    dec.extend(bytes);
    let frame = dec
        .next_frame()
        .map_err(|e| e.to_string())?
        .ok_or("an incomplete frame")?;
    if dec.last_size() != bytes.len() {
        return Err(format!(
            "{} bytes after the frame",
            bytes.len() - dec.last_size()
        ));
    }
    Ok(frame)
}

fn reencode_frame(bytes: &[u8]) -> Result<Vec<u8>, String> {
    Ok(frame_bytes(&read_frame(bytes)?))
}

fn reencode_hello(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let hello = decode_hello(bytes).map_err(|e| e.to_string())?;
    encode_hello(&hello).map_err(|e| e.to_string())
}

/// A service message of type `T` inside the frame that carries it: a [`ServiceFrame`] or
/// the [`ResponseBody::Service`] of a response.
fn reencode_service<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let again = |body: &Bytes| -> Result<Bytes, String> {
        let msg: T = decode_body(body).map_err(|e| e.to_string())?;
        encode_body(&msg).map_err(|e| e.to_string())
    };
    let frame = match read_frame(bytes)? {
        Frame::Service(s) => Frame::Service(ServiceFrame {
            body: again(&s.body)?,
            ..s
        }),
        Frame::Response(Response {
            id,
            body: ResponseBody::Service(body),
        }) => Frame::Response(Response {
            id,
            body: ResponseBody::Service(again(&body)?),
        }),
        other => return Err(format!("not a service message: {other:?}")),
    };
    Ok(frame_bytes(&frame))
}

/// The name of every variant `frame` shows, down to the payloads. Exhaustive matches: a
/// variant added to any of these types does not compile until it is named here (and then
/// [`ALL_VARIANTS`] lists it, and a fixture shows it).
fn variants(frame: &Frame) -> Vec<&'static str> {
    fn value(v: &Value) -> &'static str {
        match v {
            Value::Str(_, None) => "Value::Str",
            Value::Str(_, Some(_)) => "Value::Str+attachments",
            Value::Bytes(_) => "Value::Bytes",
        }
    }
    fn packet(p: &WirePacket) -> Vec<&'static str> {
        match &p.data {
            PacketData::Connect(None) => vec!["PacketData::Connect"],
            PacketData::Connect(Some(v)) => vec!["PacketData::Connect", value(v)],
            PacketData::Disconnect => vec!["PacketData::Disconnect"],
            PacketData::Event(v, _) => vec!["PacketData::Event", value(v)],
            PacketData::EventAck(v, _) => vec!["PacketData::EventAck", value(v)],
            PacketData::ConnectError(_) => vec!["PacketData::ConnectError"],
            PacketData::BinaryEvent(v, _) => vec!["PacketData::BinaryEvent", value(v)],
            PacketData::BinaryAck(v, _) => vec!["PacketData::BinaryAck", value(v)],
        }
    }
    match frame {
        Frame::Request(r) => {
            let mut out = vec!["Frame::Request"];
            match &r.kind {
                RequestKind::Broadcast(p) => {
                    out.push("RequestKind::Broadcast");
                    out.extend(packet(p));
                }
                RequestKind::BroadcastWithAck(p) => {
                    out.push("RequestKind::BroadcastWithAck");
                    out.extend(packet(p));
                }
                RequestKind::DisconnectSockets => out.push("RequestKind::DisconnectSockets"),
                RequestKind::AllRooms => out.push("RequestKind::AllRooms"),
                RequestKind::AddSockets(_) => out.push("RequestKind::AddSockets"),
                RequestKind::DelSockets(_) => out.push("RequestKind::DelSockets"),
                RequestKind::FetchSockets => out.push("RequestKind::FetchSockets"),
            }
            out
        }
        Frame::Response(r) => {
            let body = match &r.body {
                ResponseBody::NotHosted => vec!["ResponseBody::NotHosted"],
                ResponseBody::AckCount(_) => vec!["ResponseBody::AckCount"],
                ResponseBody::Ack(_, AckResult::Ok(v)) => {
                    vec!["ResponseBody::Ack", "AckResult::Ok", value(v)]
                }
                ResponseBody::Ack(_, AckResult::Err(_)) => {
                    vec!["ResponseBody::Ack", "AckResult::Err"]
                }
                ResponseBody::Rooms(_) => vec!["ResponseBody::Rooms"],
                ResponseBody::Sockets(_) => vec!["ResponseBody::Sockets"],
                ResponseBody::Done => vec!["ResponseBody::Done"],
                ResponseBody::Refused(_) => vec!["ResponseBody::Refused"],
                ResponseBody::Service(_) => vec!["ResponseBody::Service"],
            };
            [vec!["Frame::Response"], body].concat()
        }
        Frame::Leave => vec!["Frame::Leave"],
        Frame::Flush(_) => vec!["Frame::Flush"],
        Frame::Service(_) => vec!["Frame::Service"],
        Frame::Meta(m) => match m.parser {
            None => vec!["Frame::Meta", "Parser::None"],
            Some(Parser::Common) => vec!["Frame::Meta", "Parser::Common"],
            Some(Parser::MsgPack) => vec!["Frame::Meta", "Parser::MsgPack"],
        },
    }
}

/// Every variant a fixture must show.
const ALL_VARIANTS: &[&str] = &[
    "Frame::Request",
    "Frame::Response",
    "Frame::Leave",
    "Frame::Service",
    "Frame::Meta",
    "Frame::Flush",
    "RequestKind::Broadcast",
    "RequestKind::BroadcastWithAck",
    "RequestKind::DisconnectSockets",
    "RequestKind::AllRooms",
    "RequestKind::AddSockets",
    "RequestKind::DelSockets",
    "RequestKind::FetchSockets",
    "PacketData::Connect",
    "PacketData::Disconnect",
    "PacketData::Event",
    "PacketData::EventAck",
    "PacketData::ConnectError",
    "PacketData::BinaryEvent",
    "PacketData::BinaryAck",
    "Value::Str",
    "Value::Str+attachments",
    "Value::Bytes",
    "ResponseBody::NotHosted",
    "ResponseBody::AckCount",
    "ResponseBody::Ack",
    "ResponseBody::Rooms",
    "ResponseBody::Sockets",
    "ResponseBody::Done",
    "ResponseBody::Refused",
    "ResponseBody::Service",
    "AckResult::Ok",
    "AckResult::Err",
    "Parser::None",
    "Parser::Common",
    "Parser::MsgPack",
    "Hello",
    "Hello+insecure",
    "EventMsg",
    "EventReply::Ack",
    "EventReply::NoAck",
    "EventReply::NoHandler",
    "EventReply::Overloaded",
    "PresenceMsg::Delta",
    "PresenceMsg::StateRequest",
    "PresenceMsg::State",
    "PresenceMsg::Seq",
    #[cfg(feature = "sessions")]
    "SessionMsg::Put",
    #[cfg(feature = "sessions")]
    "SessionMsg::SnapshotRequest",
    #[cfg(feature = "sessions")]
    "SessionMsg::Snapshot",
];

fn frame(name: &str, frame: Frame) -> Fixture {
    Fixture {
        name: name.into(),
        bytes: frame_bytes(&frame),
        reencode: reencode_frame,
        shows: variants(&frame),
    }
}

/// A service message in the frame that carries it.
fn service<T: Serialize + DeserializeOwned>(
    name: &str,
    service: &str,
    confirm: Option<Id>,
    msg: &T,
    shows: &'static str,
) -> Fixture {
    let f = Frame::Service(ServiceFrame {
        service: service.into(),
        confirm,
        body: encode_body(msg).expect("a sample message encodes"),
    });
    Fixture {
        name: name.into(),
        bytes: frame_bytes(&f),
        reencode: reencode_service::<T>,
        shows: [variants(&f), vec![shows]].concat(),
    }
}

/// A service's answer in the response that carries it.
fn service_answer<T: Serialize + DeserializeOwned>(
    name: &str,
    msg: &T,
    shows: &'static str,
) -> Fixture {
    let f = Frame::Response(Response {
        id: id(b'q'),
        body: ResponseBody::Service(encode_body(msg).expect("a sample message encodes")),
    });
    Fixture {
        name: name.into(),
        bytes: frame_bytes(&f),
        reencode: reencode_service::<T>,
        shows: [variants(&f), vec![shows]].concat(),
    }
}

fn request(kind: RequestKind, opts: Opts, ack_timeout_ms: Option<u64>) -> Frame {
    Frame::Request(Request {
        ns: "/chat".into(),
        id: id(b'r'),
        origin: id(b'o'),
        kind,
        opts,
        ack_timeout_ms,
    })
}

fn packet(data: PacketData) -> WirePacket {
    WirePacket {
        ns: "/chat".into(),
        data,
    }
}

fn response(body: ResponseBody) -> Frame {
    Frame::Response(Response { id: id(b'q'), body })
}

/// Every fixture of the current version.
fn fixtures() -> Vec<Fixture> {
    let json = || Value::Str(r#"["msg","hi"]"#.into(), None);
    let with_attachment = || {
        Value::Str(
            r#"["file",{"_placeholder":true,"num":0}]"#.into(),
            Some(vec![Bytes::from_static(&[0, 1, 2, 255])]),
        )
    };
    let msgpack = || Value::Bytes(Bytes::from_static(&[0x92, 0xa3, b'm', b's', b'g', 0x01]));
    let every_opt = Opts {
        flags: 0b111,
        rooms: vec!["room-a".into(), "room-b".into()],
        except: vec!["banned".into()],
        sid: Some(id(b's')),
        server_id: Some(id(b'v')),
    };
    let hello = Hello {
        node_name: "node-1".into(),
        generation: 1_700_000_000_123,
        mesh_addr: "10.0.0.1:7947".into(),
        gossip_addr: "10.0.0.1:7946".into(),
        mac: Some([0xab; 32]),
    };
    let entry = presence::PresenceEntry {
        topic: "lobby".into(),
        key: "ada".into(),
        socket: "AAAAAAAAAAAAAAAA".into(),
        meta: Bytes::from_static(br#"{"device":"phone"}"#),
    };
    let mut out = vec![
        Fixture {
            name: "hello".into(),
            bytes: encode_hello(&hello).expect("encodes"),
            reencode: reencode_hello,
            shows: vec!["Hello"],
        },
        Fixture {
            name: "hello-insecure".into(),
            bytes: encode_hello(&Hello { mac: None, ..hello }).expect("encodes"),
            reencode: reencode_hello,
            shows: vec!["Hello+insecure"],
        },
        frame("leave", Frame::Leave),
        frame("flush", Frame::Flush(id(b'f'))),
        frame(
            "meta-common",
            Frame::Meta(NodeMeta {
                version: 3,
                server_id: Some(id(b'v')),
                namespaces: vec!["/".into(), "/chat".into()],
                parser: Some(Parser::Common),
            }),
        ),
        frame(
            "meta-msgpack",
            Frame::Meta(NodeMeta {
                version: 300,
                server_id: Some(id(b'v')),
                namespaces: vec!["/".into()],
                parser: Some(Parser::MsgPack),
            }),
        ),
        frame(
            "meta-empty",
            Frame::Meta(NodeMeta {
                version: 1,
                server_id: None,
                namespaces: vec![],
                parser: None,
            }),
        ),
        frame(
            "request-broadcast-event",
            request(
                RequestKind::Broadcast(packet(PacketData::Event(json(), None))),
                every_opt.clone(),
                None,
            ),
        ),
        frame(
            "request-broadcast-binary-event",
            request(
                RequestKind::Broadcast(packet(PacketData::BinaryEvent(with_attachment(), None))),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-broadcast-msgpack-event",
            request(
                RequestKind::Broadcast(packet(PacketData::Event(msgpack(), None))),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-broadcast-connect",
            request(
                RequestKind::Broadcast(packet(PacketData::Connect(Some(json())))),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-broadcast-connect-empty",
            request(
                RequestKind::Broadcast(packet(PacketData::Connect(None))),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-broadcast-disconnect",
            request(
                RequestKind::Broadcast(packet(PacketData::Disconnect)),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-broadcast-connect-error",
            request(
                RequestKind::Broadcast(packet(PacketData::ConnectError("refused".into()))),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-broadcast-event-ack",
            request(
                RequestKind::Broadcast(packet(PacketData::EventAck(json(), 7))),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-broadcast-binary-ack",
            request(
                RequestKind::Broadcast(packet(PacketData::BinaryAck(with_attachment(), 8))),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-broadcast-with-ack",
            request(
                RequestKind::BroadcastWithAck(packet(PacketData::Event(json(), Some(1)))),
                every_opt.clone(),
                Some(5_000),
            ),
        ),
        frame(
            "request-disconnect-sockets",
            request(RequestKind::DisconnectSockets, every_opt.clone(), None),
        ),
        frame(
            "request-all-rooms",
            request(RequestKind::AllRooms, Opts::default(), None),
        ),
        frame(
            "request-add-sockets",
            request(
                RequestKind::AddSockets(vec!["room-c".into(), String::new()]),
                every_opt.clone(),
                None,
            ),
        ),
        frame(
            "request-del-sockets",
            request(
                RequestKind::DelSockets(vec!["room-a".into()]),
                Opts::default(),
                None,
            ),
        ),
        frame(
            "request-fetch-sockets",
            request(RequestKind::FetchSockets, every_opt, None),
        ),
        frame("response-not-hosted", response(ResponseBody::NotHosted)),
        frame("response-ack-count", response(ResponseBody::AckCount(300))),
        frame(
            "response-ack-ok",
            response(ResponseBody::Ack(
                id(b's'),
                AckResult::Ok(with_attachment()),
            )),
        ),
        frame(
            "response-ack-ok-msgpack",
            response(ResponseBody::Ack(id(b's'), AckResult::Ok(msgpack()))),
        ),
        frame(
            "response-ack-err",
            response(ResponseBody::Ack(
                id(b's'),
                AckResult::Err(Bytes::from_static(&[1, 2, 3])),
            )),
        ),
        frame(
            "response-rooms",
            response(ResponseBody::Rooms(vec!["room-a".into(), "room-b".into()])),
        ),
        frame(
            "response-sockets",
            response(ResponseBody::Sockets(vec![
                (id(b'1'), id(b'v')),
                (id(b'2'), id(b'v')),
            ])),
        ),
        frame("response-done", response(ResponseBody::Done)),
        frame(
            "response-refused",
            response(ResponseBody::Refused(
                "message holds 4097 binary attachments, more than the 4096 a node accepts".into(),
            )),
        ),
        service(
            "events-event",
            events::SERVICE,
            None,
            &events::EventMsg {
                event: "admin".into(),
                data: Bytes::from_static(br#""maintenance at 10:00""#),
            },
            "EventMsg",
        ),
        service(
            "events-event-with-ack",
            events::SERVICE,
            Some(id(b'q')),
            &events::EventMsg {
                event: "admin".into(),
                data: Bytes::from_static(b"null"),
            },
            "EventMsg",
        ),
        service_answer(
            "events-reply-ack",
            &events::EventReply::Ack(Bytes::from_static(br#""seen""#)),
            "EventReply::Ack",
        ),
        service_answer(
            "events-reply-no-ack",
            &events::EventReply::NoAck,
            "EventReply::NoAck",
        ),
        service_answer(
            "events-reply-no-handler",
            &events::EventReply::NoHandler,
            "EventReply::NoHandler",
        ),
        service_answer(
            "events-reply-overloaded",
            &events::EventReply::Overloaded,
            "EventReply::Overloaded",
        ),
        service(
            "presence-delta",
            presence::SERVICE,
            None,
            &presence::PresenceMsg::Delta {
                seq: 300,
                ops: vec![
                    presence::PresenceOp::Put(entry.clone()),
                    presence::PresenceOp::Remove {
                        topic: "lobby".into(),
                        key: "bob".into(),
                        socket: "BBBBBBBBBBBBBBBB".into(),
                    },
                ],
            },
            "PresenceMsg::Delta",
        ),
        service(
            "presence-state-request",
            presence::SERVICE,
            None,
            &presence::PresenceMsg::StateRequest,
            "PresenceMsg::StateRequest",
        ),
        service(
            "presence-state",
            presence::SERVICE,
            None,
            &presence::PresenceMsg::State {
                seq: 300,
                chunk: 0,
                last: true,
                entries: vec![entry],
            },
            "PresenceMsg::State",
        ),
        service(
            "presence-seq",
            presence::SERVICE,
            None,
            &presence::PresenceMsg::Seq(300),
            "PresenceMsg::Seq",
        ),
    ];
    #[cfg(feature = "sessions")]
    out.extend(session_fixtures());
    out
}

#[cfg(feature = "sessions")]
fn session_fixtures() -> Vec<Fixture> {
    use super::sessions::{SERVICE, SessionMsg, SessionRecord, SessionState, Version};
    let live = SessionRecord {
        id: -170_141_183_460_469_231_731_687_303_715_884_105_728,
        version: Version {
            ts_ms: 1_700_000_000_123,
            node: "node-1".into(),
        },
        state: SessionState::Live {
            expiry_unix_ns: 1_700_000_600_000_000_000,
            data: Bytes::from_static(br#"{"user":"ada"}"#),
        },
    };
    let deleted = SessionRecord {
        id: 42,
        version: Version {
            ts_ms: 1_700_000_000_124,
            node: "node-2".into(),
        },
        state: SessionState::Deleted,
    };
    vec![
        service(
            "sessions-put",
            SERVICE,
            Some(id(b'q')),
            &SessionMsg::Put(vec![live.clone(), deleted.clone()]),
            "SessionMsg::Put",
        ),
        service(
            "sessions-snapshot-request",
            SERVICE,
            None,
            &SessionMsg::SnapshotRequest,
            "SessionMsg::SnapshotRequest",
        ),
        service(
            "sessions-snapshot",
            SERVICE,
            None,
            &SessionMsg::Snapshot {
                records: vec![live, deleted],
                last: true,
            },
            "SessionMsg::Snapshot",
        ),
    ]
}

/// The fixtures of protocol version `version`.
fn dir(version: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/wire")
        .join(format!("v{version}"))
}

/// Whether a fixture file belongs to a feature this build lacks (so it has no sample here).
fn of_a_missing_feature(name: &str) -> bool {
    name.starts_with("sessions-") && !cfg!(feature = "sessions")
}

fn write_fixtures(dir: &Path, fixtures: &[Fixture]) {
    assert!(
        !dir.join("RELEASED").exists(),
        "{} belongs to a released protocol version: its bytes never change. Bump \
         wire::VERSION (and the ALPN) for an incompatible change",
        dir.display()
    );
    std::fs::create_dir_all(dir).expect("create the fixture directory");
    for f in fixtures {
        std::fs::write(dir.join(format!("{}.bin", f.name)), &f.bytes).expect("write a fixture");
    }
    for file in std::fs::read_dir(dir).expect("list the fixtures").flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".bin")
            && !of_a_missing_feature(stem)
            && !fixtures.iter().any(|f| f.name == stem)
        {
            std::fs::remove_file(file.path()).expect("remove a stale fixture");
        }
    }
}

/// Every fixture file of this version decodes and encodes again to the very same bytes,
/// which are also what this build sends for the same message; every kind of message has
/// one.
#[test]
fn every_fixture_decodes_and_encodes_again_identically() {
    let fixtures = fixtures();
    let dir = dir(VERSION);
    if std::env::var_os(UPDATE).is_some() {
        write_fixtures(&dir, &fixtures);
    }
    let hint =
        format!("(`{UPDATE}=1 cargo test --all-features --lib wire::fixtures` rewrites them)");
    for f in &fixtures {
        let path = dir.join(format!("{}.bin", f.name));
        let kept =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} {hint}", path.display()));
        assert_eq!(
            (f.reencode)(&kept).as_deref(),
            Ok(&kept[..]),
            "{}: decoded and encoded again, the bytes differ",
            path.display()
        );
        assert_eq!(
            kept,
            f.bytes,
            "{}: this build encodes the same message otherwise: a change of the mesh \
             protocol {hint}",
            path.display()
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("list the fixtures")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".bin").map(str::to_owned))
        .filter(|n| !of_a_missing_feature(n))
        .collect();
    files.sort();
    let mut names: Vec<String> = fixtures.iter().map(|f| f.name.clone()).collect();
    names.sort();
    assert_eq!(
        files, names,
        "a fixture file without a message, or the reverse {hint}"
    );
    let shown: Vec<&str> = fixtures.iter().flat_map(|f| f.shows.clone()).collect();
    for variant in ALL_VARIANTS {
        assert!(shown.contains(variant), "no fixture shows {variant}");
    }
}

/// A fixture with a byte changed or cut short does not decode back to itself: the test
/// above can fail.
#[test]
fn a_damaged_fixture_is_caught() {
    for f in fixtures() {
        let mut cut = f.bytes.clone();
        cut.pop();
        assert!(
            (f.reencode)(&cut).as_deref() != Ok(&f.bytes[..]),
            "{}: cut short",
            f.name
        );
        let mut version = f.bytes.clone();
        // The version byte: after the length prefix, if any, and the magic.
        let at = if f.name.starts_with("hello") { 2 } else { 6 };
        version[at] = VERSION.wrapping_add(1);
        assert!(
            (f.reencode)(&version).is_err(),
            "{}: another version",
            f.name
        );
    }
}
