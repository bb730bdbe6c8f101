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

#[cfg(test)]
pub(crate) mod craft;

#[cfg(test)]
mod tests;
