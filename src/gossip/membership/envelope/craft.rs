//! chitchat 0.13 envelopes written by hand, byte by byte, as an attacker would: tests send
//! them to real nodes, and feed them to the checks.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::{MAX_KEY, MAX_NAME, MAX_VALUE};

const MAGIC: u16 = 45_139;

/// A node as chitchat names it: name, generation, gossip address.
#[derive(Clone, Debug)]
pub(crate) struct Id {
    pub(crate) name: String,
    pub(crate) generation: u64,
    pub(crate) addr: SocketAddr,
}

fn str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn id(out: &mut Vec<u8>, id: &Id) {
    str(out, &id.name);
    out.extend_from_slice(&id.generation.to_le_bytes());
    match id.addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&id.addr.port().to_le_bytes());
}

fn header(version: u8, kind: u8) -> Vec<u8> {
    let mut out = MAGIC.to_le_bytes().to_vec();
    out.push(version);
    out.push(kind);
    out
}

/// A V0 digest: (node, heartbeat, last gc version, max version) per entry.
pub(crate) fn digest(out: &mut Vec<u8>, entries: &[(Id, u64, u64, u64)]) {
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (n, heartbeat, gc, max) in entries {
        id(out, n);
        for v in [heartbeat, gc, max] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// One operation of a delta.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Node {
        id: Id,
        last_gc: u64,
        from: u64,
    },
    Kv {
        key: String,
        value: String,
        version: u64,
        status: u8,
    },
    SetMax(u64),
}

/// The bytes of delta operations, before they are cut into blocks.
pub(crate) fn ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Node {
                id: n,
                last_gc,
                from,
            } => {
                out.push(0);
                id(&mut out, n);
                out.extend_from_slice(&last_gc.to_le_bytes());
                out.extend_from_slice(&from.to_le_bytes());
            }
            Op::Kv {
                key,
                value,
                version,
                status,
            } => {
                out.push(1);
                str(&mut out, key);
                str(&mut out, value);
                out.extend_from_slice(&version.to_le_bytes());
                out.push(*status);
            }
            Op::SetMax(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

/// A block stream holding `data` in uncompressed blocks (up to 16 KiB each, as chitchat
/// cuts them).
pub(crate) fn stream(out: &mut Vec<u8>, data: &[u8]) {
    for block in data.chunks(16_384) {
        out.push(2);
        out.extend_from_slice(&(block.len() as u16).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.push(0);
}

/// A block stream of `blocks` compressed blocks, each inflating to 65,535 zero bytes
/// (about 20 bytes each): a decompression bomb.
pub(crate) fn bomb_stream(out: &mut Vec<u8>, blocks: usize) {
    let block = zstd::bulk::compress(&[0u8; 65_535], 19).expect("zstd compresses");
    for _ in 0..blocks {
        out.push(1);
        out.extend_from_slice(&(block.len() as u16).to_le_bytes());
        out.extend_from_slice(&block);
    }
    out.push(0);
}

/// A Syn (protocol V0).
pub(crate) fn syn(cluster_id: &str, entries: &[(Id, u64, u64, u64)]) -> Vec<u8> {
    let mut out = header(0, 0);
    digest(&mut out, entries);
    str(&mut out, cluster_id);
    out
}

/// A SynAck (protocol V0) with a delta of `delta_ops`.
pub(crate) fn syn_ack(entries: &[(Id, u64, u64, u64)], delta_ops: &[Op]) -> Vec<u8> {
    let mut out = header(0, 1);
    digest(&mut out, entries);
    stream(&mut out, &ops(delta_ops));
    out
}

/// An Ack (protocol V0) with a delta of `delta_ops`.
pub(crate) fn ack(delta_ops: &[Op]) -> Vec<u8> {
    let mut out = header(0, 2);
    stream(&mut out, &ops(delta_ops));
    out
}

/// A V1 Syn whose compressed digest is a bomb of `blocks` blocks.
pub(crate) fn v1_syn_bomb(cluster_id: &str, blocks: usize) -> Vec<u8> {
    let mut out = header(1, 0);
    bomb_stream(&mut out, blocks);
    str(&mut out, cluster_id);
    out
}

/// A V0 Ack whose delta is a bomb of `blocks` blocks.
pub(crate) fn ack_bomb(blocks: usize) -> Vec<u8> {
    let mut out = header(0, 2);
    bomb_stream(&mut out, blocks);
    out
}

/// Envelopes as chitchat writes them, honest or not: random digests, deltas, lengths
/// at and beyond the bounds, huge versions, deletions, V1.
pub(crate) fn envelopes(cluster: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        4 => Just("node-a".to_string()),
        4 => Just("node-b".to_string()),
        4 => "[a-z]{1,12}",
        1 => Just(String::new()),
        1 => (MAX_NAME - 1..MAX_NAME + 2).prop_map(|n| "n".repeat(n)),
    ];
    let ident = (name, 0u64..3, prop_oneof![Just(4u8), Just(6u8)], 1u16..4).prop_map(
        |(name, generation, ip, port)| Id {
            name,
            generation,
            addr: if ip == 4 {
                ([127, 0, 0, 1], 7_000 + port).into()
            } else {
                (std::net::Ipv6Addr::LOCALHOST, 7_000 + port).into()
            },
        },
    );
    let version = prop_oneof![0u64..6, Just(u64::MAX), any::<u64>()];
    let gc = prop_oneof![8 => Just(0u64), 1 => 0u64..3];
    let entry = (ident.clone(), version.clone(), gc.clone(), version.clone());
    let digest = proptest::collection::vec(entry, 0..4);
    let text = |max: usize| {
        prop_oneof![
            1 => Just(String::new()),
            8 => "[a-z]{1,8}",
            1 => (max - 1..max + 2).prop_map(|n| "k".repeat(n))
        ]
    };
    let op = prop_oneof![
        (ident, gc, version.clone()).prop_map(|(id, last_gc, from)| Op::Node { id, last_gc, from }),
        (
            text(MAX_KEY),
            text(MAX_VALUE),
            version.clone(),
            prop_oneof![8 => Just(0u8), 1 => 0u8..4]
        )
            .prop_map(|(key, value, version, status)| Op::Kv {
                key,
                value,
                version,
                status
            }),
        version.prop_map(Op::SetMax),
    ];
    let ops = proptest::collection::vec(op, 0..8);
    let message = prop_oneof![
        (digest.clone(), any::<bool>())
            .prop_map(move |(d, ours)| syn(if ours { cluster } else { "other" }, &d)),
        (digest, ops.clone()).prop_map(|(d, o)| syn_ack(&d, &o)),
        ops.prop_map(|o| ack(&o)),
        (1usize..4).prop_map(move |n| v1_syn_bomb(cluster, n)),
    ];
    // Some mangled: a byte changed, or cut short.
    (message, any::<prop::sample::Index>(), any::<u8>(), 0u8..8).prop_map(
        |(mut bytes, at, byte, how)| {
            match how {
                0 if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                1 if !bytes.is_empty() => bytes.truncate(at.index(bytes.len())),
                _ => {}
            }
            bytes
        },
    )
}
