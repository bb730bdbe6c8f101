//! Checks on chitchat envelopes before chitchat parses them. Pure: bytes in, a verdict out.
//!
//! chitchat (0.13) trusts what it parses: it asserts on a digest too large to answer (a
//! node name of 65 KB), inflates compressed blocks with no cap on the total, applies any
//! delta, and logs what it refuses, peer input included, at no bounded rate. So what opened
//! under the cluster key is read here first, by a reader of chitchat's wire format that
//! refuses more than chitchat does and never less (a property test holds the two to it),
//! and only what passes reaches chitchat:
//!
//! - protocol V0 only (this cluster's nodes never send V1, whose digest is compressed), and
//!   no BadCluster message (the key already binds the cluster id); a Syn names this
//!   cluster's id;
//! - node names of 1 to [`MAX_NAME`] bytes, keys of 1 to [`MAX_KEY`], values of at most
//!   [`MAX_VALUE`], at most [`MAX_KEYS`] keys in one node's delta, each once;
//! - no deletion: this cluster's nodes never delete a key, so no tombstone and no garbage
//!   collection version (which is what makes chitchat reset a node's state, and warn);
//! - a delta's compressed blocks inflate to at most [`MAX_DECODED`] bytes in all;
//! - a delta chitchat would take (nodes once each, versions rising, a max version only for a
//!   node without keys) and no byte after the message.
//!
//! What an envelope may change in chitchat's state is judged against that state just
//! before chitchat handles it (see [`super::guard`]), from the [`Checked`] summary.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use chitchat::ChitchatId;

/// Longest node name, in bytes.
pub(crate) const MAX_NAME: usize = 128;
/// Longest key, in bytes.
pub(crate) const MAX_KEY: usize = 64;
/// Longest value, in bytes.
pub(crate) const MAX_VALUE: usize = 256;
/// Most keys a node holds (this cluster's nodes hold two).
pub(crate) const MAX_KEYS: usize = 8;
/// Most bytes a delta's blocks inflate to, in all (an honest delta of a cluster at the
/// digest budget, with names of the longest, holds a quarter of it).
pub(crate) const MAX_DECODED: usize = 256 * 1024;

const MAGIC: u16 = 45_139;
/// A compressed block inflates to at most this (chitchat's own bound).
const MAX_BLOCK: usize = u16::MAX as usize;

/// Why an envelope is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Invalid {
    /// It ends before the message does.
    #[error("a truncated chitchat envelope")]
    Truncated,
    /// Not chitchat's magic number.
    #[error("not a chitchat envelope")]
    NotEnvelope,
    /// Another protocol version.
    #[error("chitchat protocol version {0} (this cluster speaks V0 only)")]
    Version(u8),
    /// A message type this cluster never sends.
    #[error("chitchat message type {0} (never sent within a cluster)")]
    Kind(u8),
    /// A Syn of another cluster.
    #[error("a Syn of another cluster id")]
    ClusterId,
    /// A node name that is empty or too long.
    #[error("a node name of {0} bytes (1 to {MAX_NAME})")]
    Name(usize),
    /// A key that is empty or too long.
    #[error("a key of {0} bytes (1 to {MAX_KEY})")]
    Key(usize),
    /// A value too long.
    #[error("a value of {0} bytes (at most {MAX_VALUE})")]
    Value(usize),
    /// Too many keys, or one twice, for a node.
    #[error("more than {MAX_KEYS} keys, or a key twice, for one node")]
    Keys,
    /// Text that is not UTF-8.
    #[error("text that is not UTF-8")]
    Utf8,
    /// An IP version other than 4 and 6.
    #[error("an address of IP version {0}")]
    Addr(u8),
    /// A node twice in a digest.
    #[error("a node twice in a digest")]
    Twice,
    /// A deletion, or a garbage collection version.
    #[error("a deletion (this cluster's nodes never delete a key)")]
    Deletion,
    /// A delta chitchat would not take, or one it could assert on.
    #[error("a malformed delta: {0}")]
    Delta(&'static str),
    /// Compressed data that does not inflate.
    #[error("compressed data that does not inflate")]
    Inflate,
    /// A delta that inflates beyond [`MAX_DECODED`].
    #[error("a delta inflating beyond {MAX_DECODED} bytes")]
    TooLarge,
    /// Bytes after the message.
    #[error("bytes after the message")]
    Trailing,
}

/// The kind of message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Scuttlebutt Syn: a digest.
    Syn,
    /// SynAck: a digest and a delta.
    SynAck,
    /// Ack: a delta.
    Ack,
}

/// What a delta says of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeDelta {
    pub(crate) id: ChitchatId,
    /// The version the delta starts after.
    pub(crate) from_version: u64,
    /// The keys it sets.
    pub(crate) keys: Vec<String>,
}

/// An envelope that passed: what the state checks need of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checked {
    pub(crate) kind: Kind,
    /// The nodes its digest names.
    pub(crate) digest: Vec<ChitchatId>,
    /// What its delta says, node by node.
    pub(crate) deltas: Vec<NodeDelta>,
    /// Bytes chitchat holds once it parsed it: the envelope and what its blocks inflate to.
    pub(crate) decoded: usize,
}

/// Reads chitchat's wire format; every read fails rather than run past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if self.0.len() < n {
            return Err(Invalid::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Invalid> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, Invalid> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn str(&mut self) -> Result<&'a str, Invalid> {
        let len = self.u16()? as usize;
        std::str::from_utf8(self.bytes(len)?).map_err(|_| Invalid::Utf8)
    }

    fn id(&mut self) -> Result<ChitchatId, Invalid> {
        let name = self.str()?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(Invalid::Name(name.len()));
        }
        let generation = self.u64()?;
        let ip = match self.u8()? {
            4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(self.bytes(4)?);
                Ipv4Addr::from(b).into()
            }
            6 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(self.bytes(16)?);
                Ipv6Addr::from(b).into()
            }
            v => return Err(Invalid::Addr(v)),
        };
        let port = self.u16()?;
        Ok(ChitchatId::new(name, generation, SocketAddr::new(ip, port)))
    }
}

/// Check `bytes`, an envelope opened under the cluster key, for cluster `cluster_id`.
pub(crate) fn check(bytes: &[u8], cluster_id: &str) -> Result<Checked, Invalid> {
    let mut r = Reader(bytes);
    if r.u16()? != MAGIC {
        return Err(Invalid::NotEnvelope);
    }
    match r.u8()? {
        0 => {}
        v => return Err(Invalid::Version(v)),
    }
    let kind = match r.u8()? {
        0 => Kind::Syn,
        1 => Kind::SynAck,
        2 => Kind::Ack,
        k => return Err(Invalid::Kind(k)),
    };
    let digest = match kind {
        Kind::Syn | Kind::SynAck => digest(&mut r)?,
        Kind::Ack => Vec::new(),
    };
    let (deltas, inflated) = match kind {
        Kind::Syn => {
            if r.str()? != cluster_id {
                return Err(Invalid::ClusterId);
            }
            (Vec::new(), 0)
        }
        Kind::SynAck | Kind::Ack => delta(&mut r)?,
    };
    if !r.0.is_empty() {
        return Err(Invalid::Trailing);
    }
    Ok(Checked {
        kind,
        digest,
        deltas,
        decoded: bytes.len() + inflated,
    })
}

/// A V0 digest: the nodes it names, each once, none with a garbage collection version.
fn digest(r: &mut Reader<'_>) -> Result<Vec<ChitchatId>, Invalid> {
    let n = r.u16()? as usize;
    let mut ids = Vec::with_capacity(n.min(r.0.len() / 40));
    let mut seen = HashSet::with_capacity(ids.capacity());
    for _ in 0..n {
        let id = r.id()?;
        let _heartbeat = r.u64()?;
        let last_gc_version = r.u64()?;
        let _max_version = r.u64()?;
        if last_gc_version != 0 {
            return Err(Invalid::Deletion);
        }
        if !seen.insert(id.clone()) {
            return Err(Invalid::Twice);
        }
        ids.push(id);
    }
    Ok(ids)
}

/// A delta: its block stream inflated (bounded), then its operations, node by node; and how
/// many bytes its blocks inflated to.
fn delta(r: &mut Reader<'_>) -> Result<(Vec<NodeDelta>, usize), Invalid> {
    let data = blocks(r)?;
    let mut ops = Reader(&data);
    let mut nodes: Vec<NodeDelta> = Vec::new();
    let mut ids = HashSet::new();
    // Of the node being read: its highest version so far, whether it had a max version op.
    let mut current: Option<(u64, bool)> = None;
    while !ops.0.is_empty() {
        match ops.u8()? {
            0 => {
                let id = ops.id()?;
                let last_gc_version = ops.u64()?;
                let from_version = ops.u64()?;
                if last_gc_version != 0 {
                    return Err(Invalid::Deletion);
                }
                if !ids.insert(id.clone()) {
                    return Err(Invalid::Delta("a node twice"));
                }
                nodes.push(NodeDelta {
                    id,
                    from_version,
                    keys: Vec::new(),
                });
                current = Some((0, false));
            }
            1 => {
                let (Some((max, set_max)), Some(node)) = (current.as_mut(), nodes.last_mut())
                else {
                    return Err(Invalid::Delta("a key before any node"));
                };
                let key = ops.str()?;
                let value = ops.str()?;
                let version = ops.u64()?;
                let status = ops.u8()?;
                if key.is_empty() || key.len() > MAX_KEY {
                    return Err(Invalid::Key(key.len()));
                }
                if value.len() > MAX_VALUE {
                    return Err(Invalid::Value(value.len()));
                }
                match status {
                    0 => {}
                    1 | 2 => return Err(Invalid::Deletion),
                    _ => return Err(Invalid::Delta("a deletion status")),
                }
                if *set_max {
                    return Err(Invalid::Delta("a key after a max version"));
                }
                if version <= *max {
                    return Err(Invalid::Delta("versions that do not rise"));
                }
                if node.keys.len() >= MAX_KEYS || node.keys.iter().any(|k| k == key) {
                    return Err(Invalid::Keys);
                }
                *max = version;
                node.keys.push(key.to_owned());
            }
            2 => {
                let Some((max, set_max)) = current.as_mut() else {
                    return Err(Invalid::Delta("a max version before any node"));
                };
                let version = ops.u64()?;
                if *set_max || *max > 0 || version == 0 {
                    return Err(Invalid::Delta("a max version but for a node without keys"));
                }
                *set_max = true;
                *max = version;
            }
            _ => return Err(Invalid::Delta("an operation type")),
        }
    }
    Ok((nodes, data.len()))
}

/// A block stream, inflated: at most [`MAX_DECODED`] bytes in all.
fn blocks(r: &mut Reader<'_>) -> Result<Vec<u8>, Invalid> {
    let mut data = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    loop {
        match r.u8()? {
            0 => return Ok(data),
            1 => {
                let len = r.u16()? as usize;
                let compressed = r.bytes(len)?;
                if scratch.is_empty() {
                    scratch = vec![0; MAX_BLOCK];
                }
                let n = zstd::bulk::decompress_to_buffer(compressed, &mut scratch[..])
                    .map_err(|_| Invalid::Inflate)?;
                if data.len() + n > MAX_DECODED {
                    return Err(Invalid::TooLarge);
                }
                data.extend_from_slice(&scratch[..n]);
            }
            2 => {
                let len = r.u16()? as usize;
                let block = r.bytes(len)?;
                if data.len() + len > MAX_DECODED {
                    return Err(Invalid::TooLarge);
                }
                data.extend_from_slice(block);
            }
            _ => return Err(Invalid::Delta("a block type")),
        }
    }
}

/// chitchat 0.13 envelopes written by hand, byte by byte, as an attacker would: tests send
/// them to real nodes, and feed them to the checks.
#[cfg(test)]
pub(crate) mod craft {
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
            (ident, gc, version.clone()).prop_map(|(id, last_gc, from)| Op::Node {
                id,
                last_gc,
                from
            }),
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
}

#[cfg(test)]
mod tests {
    use super::{
        craft::{self, Id, Op},
        *,
    };
    use crate::gossip::membership::codec::Decoder;
    use proptest::prelude::*;

    const CLUSTER: &str = "chat";

    fn id(name: &str) -> Id {
        Id {
            name: name.into(),
            generation: 7,
            addr: "127.0.0.1:7946".parse().unwrap(),
        }
    }

    fn kv(key: &str, value: &str, version: u64) -> Op {
        Op::Kv {
            key: key.into(),
            value: value.into(),
            version,
            status: 0,
        }
    }

    fn node(name: &str, from: u64) -> Op {
        Op::Node {
            id: id(name),
            last_gc: 0,
            from,
        }
    }

    fn chitchat_id(i: &Id) -> ChitchatId {
        ChitchatId::new(i.name.clone(), i.generation, i.addr)
    }

    #[test]
    fn what_the_nodes_send_passes() {
        let digest = [(id("a"), 5, 0, 2), (id("b"), 9, 0, 1)];
        let syn = check(&craft::syn(CLUSTER, &digest), CLUSTER).unwrap();
        assert_eq!(syn.kind, Kind::Syn);
        assert_eq!(
            syn.digest,
            vec![chitchat_id(&id("a")), chitchat_id(&id("b"))]
        );
        let ops = [
            node("a", 0),
            kv("mesh", "127.0.0.1:7947", 1),
            kv("leaving", "1", 2),
            node("b", 3),
            Op::SetMax(4),
        ];
        let syn_ack = check(&craft::syn_ack(&digest, &ops), CLUSTER).unwrap();
        assert_eq!(syn_ack.kind, Kind::SynAck);
        assert_eq!(syn_ack.deltas.len(), 2);
        assert_eq!(syn_ack.deltas[0].keys, ["mesh", "leaving"]);
        assert_eq!(syn_ack.deltas[1].from_version, 3);
        let ack = check(&craft::ack(&ops), CLUSTER).unwrap();
        assert_eq!(ack.kind, Kind::Ack);
        assert!(ack.digest.is_empty());
        // Compressed blocks too, as chitchat writes them.
        let data = craft::ops(&ops);
        let mut compressed = vec![0x53, 0xb0, 0, 2, 1];
        let block = zstd::bulk::compress(&data, 0).unwrap();
        compressed.extend_from_slice(&(block.len() as u16).to_le_bytes());
        compressed.extend_from_slice(&block);
        compressed.push(0);
        assert_eq!(check(&compressed, CLUSTER).unwrap().deltas, ack.deltas);
    }

    #[test]
    fn each_rule_refuses() {
        let long = Id {
            name: "x".repeat(MAX_NAME + 1),
            ..id("a")
        };
        let cases: Vec<(Vec<u8>, Invalid)> = vec![
            (b"\x01".to_vec(), Invalid::Truncated),
            (b"junk".to_vec(), Invalid::NotEnvelope),
            (craft::v1_syn_bomb(CLUSTER, 3), Invalid::Version(1)),
            (vec![0x53, 0xb0, 0, 3], Invalid::Kind(3)),
            (craft::syn("other", &[]), Invalid::ClusterId),
            (
                craft::syn(CLUSTER, &[(long.clone(), 1, 0, 0)]),
                Invalid::Name(MAX_NAME + 1),
            ),
            (craft::syn(CLUSTER, &[(id(""), 1, 0, 0)]), Invalid::Name(0)),
            (
                craft::syn(CLUSTER, &[(id("a"), 1, 0, 0), (id("a"), 2, 0, 0)]),
                Invalid::Twice,
            ),
            (
                craft::syn(CLUSTER, &[(id("a"), 1, 5, 0)]),
                Invalid::Deletion,
            ),
            (
                craft::ack(&[Op::Node {
                    id: id("a"),
                    last_gc: 3,
                    from: 0,
                }]),
                Invalid::Deletion,
            ),
            (
                craft::ack(&[
                    node("a", 0),
                    Op::Kv {
                        key: "k".into(),
                        value: String::new(),
                        version: 1,
                        status: 1,
                    },
                ]),
                Invalid::Deletion,
            ),
            (
                craft::ack(&[node("a", 0), kv(&"k".repeat(MAX_KEY + 1), "", 1)]),
                Invalid::Key(MAX_KEY + 1),
            ),
            (craft::ack(&[node("a", 0), kv("", "", 1)]), Invalid::Key(0)),
            (
                craft::ack(&[node("a", 0), kv("k", &"v".repeat(MAX_VALUE + 1), 1)]),
                Invalid::Value(MAX_VALUE + 1),
            ),
            (
                craft::ack(&[node("a", 0), kv("k", "", 1), kv("k", "", 2)]),
                Invalid::Keys,
            ),
            (
                craft::ack(
                    &std::iter::once(node("a", 0))
                        .chain((1..=MAX_KEYS as u64 + 1).map(|v| kv(&format!("k{v}"), "", v)))
                        .collect::<Vec<_>>(),
                ),
                Invalid::Keys,
            ),
            (
                craft::ack(&[kv("k", "", 1)]),
                Invalid::Delta("a key before any node"),
            ),
            (
                craft::ack(&[node("a", 0), node("a", 0)]),
                Invalid::Delta("a node twice"),
            ),
            (
                craft::ack(&[node("a", 0), kv("k", "", 2), kv("j", "", 2)]),
                Invalid::Delta("versions that do not rise"),
            ),
            (
                craft::ack(&[node("a", 0), kv("k", "", 1), Op::SetMax(1)]),
                Invalid::Delta("a max version but for a node without keys"),
            ),
            (
                craft::ack(&[node("a", 0), Op::SetMax(0)]),
                Invalid::Delta("a max version but for a node without keys"),
            ),
            (
                craft::ack(&[node("a", 0), Op::SetMax(3), kv("k", "", 4)]),
                Invalid::Delta("a key after a max version"),
            ),
            (craft::ack_bomb(8), Invalid::TooLarge),
            (
                {
                    let mut b = craft::syn(CLUSTER, &[]);
                    b.push(0);
                    b
                },
                Invalid::Trailing,
            ),
            (
                {
                    let mut b = vec![0x53, 0xb0, 0, 2, 1, 3, 0];
                    b.extend_from_slice(b"xyz");
                    b.push(0);
                    b
                },
                Invalid::Inflate,
            ),
        ];
        for (bytes, why) in cases {
            assert_eq!(check(&bytes, CLUSTER), Err(why.clone()), "{why}");
        }
    }

    #[test]
    fn a_bomb_is_refused_after_inflating_at_most_the_bound() {
        // The checker stops at the first block past the bound: five blocks of 64 KiB.
        let bomb = craft::ack_bomb(2_900);
        let mut r = Reader(&bomb[4..]);
        assert_eq!(blocks(&mut r), Err(Invalid::TooLarge));
        let consumed = bomb.len() - 4 - r.0.len();
        assert!(consumed < 10 * 32, "read {consumed} bytes of blocks");
    }

    /// Whatever the checker takes, chitchat parses too (it refuses more, never less); and
    /// what it takes keeps within the bounds. Each envelope goes through a real decoder,
    /// chitchat's own socket.
    #[test]
    fn chitchat_parses_all_the_checker_takes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let decoder = std::cell::RefCell::new(rt.block_on(Decoder::open()).unwrap());
        let taken = std::cell::Cell::new(0);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&craft::envelopes(CLUSTER), |bytes| {
                let Ok(c) = check(&bytes, CLUSTER) else {
                    return Ok(());
                };
                taken.set(taken.get() + 1);
                let parsed = rt.block_on(decoder.borrow_mut().decode(&bytes));
                prop_assert!(parsed.is_ok(), "taken but not parsed: {:?}", parsed.err());
                prop_assert!(c.decoded <= bytes.len() + MAX_DECODED);
                for id in c.digest.iter().chain(c.deltas.iter().map(|d| &d.id)) {
                    prop_assert!((1..=MAX_NAME).contains(&id.node_id.len()));
                }
                for d in &c.deltas {
                    prop_assert!(d.keys.len() <= MAX_KEYS);
                }
                Ok(())
            })
            .unwrap();
        println!("{} of 512 envelopes taken", taken.get());
        assert!(taken.get() > 50, "the strategy reaches past the checks");
    }

    proptest! {
        /// Any bytes at all: the checker never panics.
        #[test]
        fn the_checker_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = check(&bytes, CLUSTER);
            let mut enveloped = vec![0x53, 0xb0, 0];
            enveloped.extend_from_slice(&bytes);
            let _ = check(&enveloped, CLUSTER);
        }
    }
}
