//! Conversions between socketioxide-core types and wire types, at the edge of the adapter.

use std::{collections::VecDeque, str::FromStr};

use socketioxide_core::{
    Sid, Str, Uid, Value,
    adapter::{BroadcastFlags, BroadcastOptions, RemoteSocketData, Room},
    packet::{Packet, PacketData},
    parser::Parse,
};

use crate::gossip::wire::{self, Id};

/// A wire value that does not map back to a core value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    /// A field that is not what it must be (an id that is not one).
    #[error("invalid {0} in frame")]
    Field(&'static str),
    /// A payload this node's parser cannot send: socketioxide's parsers panic on one.
    #[error("a payload of the {found} parser, but this node uses the {local} parser")]
    Parser {
        /// The parser the payload is encoded for.
        found: wire::Parser,
        /// This node's parser.
        local: wire::Parser,
    },
}

/// Which socket.io parser `parser` is: socketioxide has two, one encodes packets as text,
/// the other as bytes.
pub(crate) fn parser_kind(parser: impl Parse) -> wire::Parser {
    match parser.encode(Packet::disconnect("/")) {
        Value::Str(..) => wire::Parser::Common,
        Value::Bytes(_) => wire::Parser::MsgPack,
    }
}

pub(crate) fn id(sid: Sid) -> Id {
    let mut out = [0u8; 16];
    let s = sid.as_str().as_bytes();
    let n = s.len().min(16);
    out[..n].copy_from_slice(&s[..n]);
    Id(out)
}

pub(crate) fn uid_id(uid: Uid) -> Id {
    id(*uid)
}

pub(crate) fn sid(id: &Id) -> Result<Sid, Invalid> {
    std::str::from_utf8(&id.0)
        .ok()
        .and_then(|s| Sid::from_str(s).ok())
        .ok_or(Invalid::Field("socket id"))
}

pub(crate) fn uid(id: &Id) -> Result<Uid, Invalid> {
    std::str::from_utf8(&id.0)
        .ok()
        .and_then(|s| Uid::from_str(s).ok())
        .ok_or(Invalid::Field("server id"))
}

const FLAGS: [BroadcastFlags; 3] = [
    BroadcastFlags::Local,
    BroadcastFlags::Broadcast,
    BroadcastFlags::Volatile,
];

pub(crate) fn opts(o: &BroadcastOptions) -> wire::Opts {
    wire::Opts {
        flags: o.flags(),
        rooms: o.rooms.iter().map(|r| r.to_string()).collect(),
        except: o.except.iter().map(|r| r.to_string()).collect(),
        sid: o.sid.map(id),
        server_id: o.server_id.map(uid_id),
    }
}

pub(crate) fn opts_from(o: wire::Opts) -> Result<BroadcastOptions, Invalid> {
    let mut out = BroadcastOptions::default();
    for flag in FLAGS {
        if o.flags & flag as u8 != 0 {
            out.add_flag(flag);
        }
    }
    out.rooms = o.rooms.into_iter().map(Room::from).collect();
    out.except = o.except.into_iter().map(Room::from).collect();
    out.sid = o.sid.as_ref().map(sid).transpose()?;
    out.server_id = o.server_id.as_ref().map(uid).transpose()?;
    Ok(out)
}

pub(crate) fn rooms_from(rooms: Vec<String>) -> Vec<Room> {
    rooms.into_iter().map(Room::from).collect()
}

pub(crate) fn value(v: &Value) -> wire::Value {
    match v {
        Value::Str(s, bins) => wire::Value::Str(
            s.clone(),
            bins.as_ref().map(|b| b.iter().cloned().collect()),
        ),
        Value::Bytes(b) => wire::Value::Bytes(b.clone()),
    }
}

pub(crate) fn value_from(v: wire::Value) -> Value {
    match v {
        wire::Value::Str(s, bins) => Value::Str(s, bins.map(VecDeque::from)),
        wire::Value::Bytes(b) => Value::Bytes(b),
    }
}

pub(crate) fn packet(p: &Packet) -> wire::WirePacket {
    use wire::PacketData as W;
    let data = match &p.inner {
        PacketData::Connect(v) => W::Connect(v.as_ref().map(value)),
        PacketData::Disconnect => W::Disconnect,
        PacketData::Event(v, a) => W::Event(value(v), *a),
        PacketData::EventAck(v, a) => W::EventAck(value(v), *a),
        PacketData::ConnectError(e) => W::ConnectError(e.clone()),
        PacketData::BinaryEvent(v, a) => W::BinaryEvent(value(v), *a),
        PacketData::BinaryAck(v, a) => W::BinaryAck(value(v), *a),
    };
    wire::WirePacket {
        ns: p.ns.as_str().to_string(),
        data,
    }
}

/// The packet of a peer's request, if `parser` can send it: every payload must be one of
/// `parser`'s.
pub(crate) fn packet_from(p: wire::WirePacket, parser: wire::Parser) -> Result<Packet, Invalid> {
    use wire::PacketData as W;
    let payload = match &p.data {
        W::Connect(v) => v.as_ref(),
        W::Event(v, _) | W::EventAck(v, _) | W::BinaryEvent(v, _) | W::BinaryAck(v, _) => Some(v),
        W::Disconnect | W::ConnectError(_) => None,
    };
    if let Some(v) = payload
        && !parser.accepts(v)
    {
        let found = match v {
            wire::Value::Str(..) => wire::Parser::Common,
            wire::Value::Bytes(_) => wire::Parser::MsgPack,
        };
        return Err(Invalid::Parser {
            found,
            local: parser,
        });
    }
    let inner = match p.data {
        W::Connect(v) => PacketData::Connect(v.map(value_from)),
        W::Disconnect => PacketData::Disconnect,
        W::Event(v, a) => PacketData::Event(value_from(v), a),
        W::EventAck(v, a) => PacketData::EventAck(value_from(v), a),
        W::ConnectError(e) => PacketData::ConnectError(e),
        W::BinaryEvent(v, a) => PacketData::BinaryEvent(value_from(v), a),
        W::BinaryAck(v, a) => PacketData::BinaryAck(value_from(v), a),
    };
    Ok(Packet {
        inner,
        ns: Str::from(p.ns),
    })
}

pub(crate) fn socket(s: &RemoteSocketData) -> (Id, Id) {
    (id(s.id), uid_id(s.server_id))
}

pub(crate) fn socket_from(
    ns: &Str,
    (sid_, server): &(Id, Id),
) -> Result<RemoteSocketData, Invalid> {
    Ok(RemoteSocketData {
        id: sid(sid_)?,
        server_id: uid(server)?,
        ns: ns.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn options_round_trip_with_every_flag() {
        let mut o = BroadcastOptions::new(Sid::new());
        o.add_flag(BroadcastFlags::Broadcast);
        o.add_flag(BroadcastFlags::Volatile);
        o.rooms.push("a".into());
        o.except.push("b".into());
        o.server_id = Some(Uid::new());
        assert_eq!(opts_from(opts(&o)).unwrap(), o);
        let mut local = BroadcastOptions::default();
        local.add_flag(BroadcastFlags::Local);
        assert_eq!(opts_from(opts(&local)).unwrap(), local);
    }

    #[test]
    fn packets_round_trip_including_binary_attachments() {
        let bin = Value::Str(
            "[\"e\",{\"_placeholder\":true,\"num\":0}]".into(),
            Some(vec![Bytes::from_static(&[1, 2, 3])].into()),
        );
        use wire::Parser::{Common, MsgPack};
        for (p, parser) in [
            (
                Packet::event("/chat", Value::Str("[\"e\",1]".into(), None)),
                Common,
            ),
            (Packet::event("/", bin.clone()), Common),
            (Packet::ack("/", bin, 4), Common),
            (
                Packet::event("/", Value::Bytes(Bytes::from_static(&[0x92, 0xa1, 0x65]))),
                MsgPack,
            ),
            (Packet::disconnect("/"), Common),
            (Packet::disconnect("/"), MsgPack),
            (Packet::connect_error("/", "nope"), MsgPack),
        ] {
            assert_eq!(packet_from(packet(&p), parser).unwrap(), p);
        }
    }

    /// A broadcast's payload goes to the peers without being copied: the request holds the
    /// emit's own bytes, text or binary.
    #[test]
    fn a_packet_shares_its_payload_with_the_request() {
        let text = Value::Str(Str::from("[\"e\",1]".to_string()), None);
        let binary = Value::Bytes(Bytes::from(vec![0x92, 0xa1, 0x65]));
        for v in [text, binary] {
            let ours = match &v {
                Value::Str(s, _) => s.as_bytes().as_ptr(),
                Value::Bytes(b) => b.as_ptr(),
            };
            let p = Packet::event("/", v);
            let wire::PacketData::Event(sent, _) = packet(&p).data else {
                panic!("an event");
            };
            let theirs = match &sent {
                wire::Value::Str(s, _) => s.as_bytes().as_ptr(),
                wire::Value::Bytes(b) => b.as_ptr(),
            };
            assert_eq!(theirs, ours, "{sent:?} copied");
        }
    }

    /// socketioxide's common parser panics on a binary payload (and the msgpack parser
    /// sends a broken packet for a text one): such a packet from a peer is refused.
    #[test]
    fn payloads_of_the_other_parser_are_refused() {
        use wire::Parser::{Common, MsgPack};
        let text = Value::Str("[\"e\"]".into(), None);
        let bytes = Value::Bytes(Bytes::from_static(&[0x91, 0xa1, 0x65]));
        for (p, local) in [
            (Packet::event("/", bytes.clone()), Common),
            (Packet::ack("/", bytes.clone(), 1), Common),
            (
                Packet {
                    inner: PacketData::BinaryEvent(bytes.clone(), Some(2)),
                    ns: "/".into(),
                },
                Common,
            ),
            (Packet::connect("/", Some(bytes)), Common),
            (Packet::event("/", text.clone()), MsgPack),
            (Packet::connect("/", Some(text)), MsgPack),
        ] {
            let err = packet_from(packet(&p), local).unwrap_err();
            assert!(
                matches!(err, Invalid::Parser { local: l, found } if l == local && found != local),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_ids_are_rejected_not_panicked_on() {
        assert!(sid(&Id([0xff; 16])).is_err());
        let o = wire::Opts {
            sid: Some(Id([0; 16])),
            ..Default::default()
        };
        assert!(opts_from(o).is_err());
        let s = Sid::new();
        assert_eq!(sid(&id(s)).unwrap(), s);
    }
}
