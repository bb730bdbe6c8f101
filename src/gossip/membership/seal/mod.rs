//! Sealed gossip datagrams: what chitchat sends is encrypted and authenticated
//! (ChaCha20-Poly1305) under a key derived from the cluster secret, for one recipient.
//! Pure: no I/O; the caller passes the time (of [`super::clock::Clock`]).
//!
//! A datagram is a header, then the ciphertext and its tag (format version 2):
//!
//! ```text
//! "SXG" | version (1) | key id (4) | session (16) | number (8) | sent at, ms since the epoch (8)
//!       | flags (1) | ciphertext | tag (16)
//! ```
//!
//! - **Session and number.** A node draws a random session when it starts and seals under a
//!   key of that session only (HKDF-SHA256 of the gossip key the key id names, and the
//!   session); it numbers its datagrams, and the number is the nonce. A nonce never repeats
//!   under a key, whatever the traffic and however long the secret lives (2^64 datagrams per
//!   session), and the receiver refuses a number it already opened (see [`super::replay`]).
//! - **Recipient.** What is authenticated (the associated data) is the header, the cluster
//!   id and the recipient: either the recipient's session, once the sender heard from it at
//!   the address it sends to (replies, and gossip to a node it hears from), or the address
//!   it sends to (first contact: seeds). A node opens only what was sealed for its own
//!   session, its advertised gossip address, or the address it binds: a datagram captured on
//!   its way to one node does not open at another. The recipient is not sent: each node
//!   knows its own.
//! - **Flags.** Bits 0–1: the part (0: the whole envelope; 1, 2: first or second of two).
//!   Bit 2: sealed for an address (else for a session). Other bits are zero.
//!
//! A receiver refuses, before anything reaches chitchat, a datagram of another format
//! version, under a key it does not hold, that does not open for it, that was sent more
//! than [`FRESH_MS`](super::replay::FRESH_MS) away from its own time, or that it already opened. An envelope that
//! does not fit one datagram once sealed (chitchat fills datagrams up to 65,507 bytes)
//! travels in two parts with consecutive numbers, each sealed on its own, joined on
//! arrival.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use ring::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hkdf,
};

#[cfg(test)]
use super::replay::FRESH_MS;
pub(crate) use super::replay::Session;
use super::replay::{Replays, Seen};
use crate::gossip::keys::Keys;

const MAGIC: &[u8; 3] = b"SXG";
/// The format version of sealed datagrams; another version is refused as such.
pub(crate) const VERSION: u8 = 2;
/// Header length: magic, version, key id, session, number, time, flags.
const HEADER: usize = 3 + 1 + 4 + 16 + 8 + 8 + 1;
const TAG: usize = 16;
/// What sealing adds to one datagram.
pub(crate) const OVERHEAD: usize = HEADER + TAG;
/// Largest UDP payload over IPv4.
pub(crate) const MAX_DATAGRAM: usize = 65_507;
/// Largest part of an envelope one datagram carries.
const MAX_PART: usize = MAX_DATAGRAM - OVERHEAD;
/// Largest envelope: chitchat's own datagram limit.
pub(crate) const MAX_ENVELOPE: usize = MAX_DATAGRAM;
/// Flag: sealed for an address.
const FOR_ADDRESS: u8 = 0b100;
/// Flags: the part.
const PART: u8 = 0b011;
/// Most envelopes waiting for their second part, and how long one waits.
const MAX_PARTIAL: usize = 16;
const PARTIAL_TTL_MS: u64 = 5_000;
/// Session keys kept derived at most (one per sender heard from recently).
const MAX_SESSION_KEYS: usize = 1_024;

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Too short, not our magic, or bad flags.
    #[error("not a sealed gossip datagram")]
    Malformed,
    /// Sealed in another format version (a node of another release).
    #[error("sealed in format version {0}, this node reads version {VERSION}")]
    Version(u8),
    /// Sealed under a key this node does not hold (another secret or cluster).
    #[error("sealed under an unknown key (another secret or cluster id)")]
    UnknownKey,
    /// Does not open: tampered with, truncated, another cluster id, or sealed for another
    /// node.
    #[error(
        "does not open for this node (sealed for another node, tampered with, or another cluster id)"
    )]
    BadSeal,
    /// Sent too long ago, or too far in the future: a replay, or clocks that disagree.
    #[error("stale (a replay, or node clocks more than 60 s apart)")]
    Stale,
    /// Already opened once.
    #[error("a replay of a datagram already received")]
    Replayed,
    /// The part numbers do not make sense.
    #[error("bad part numbering")]
    BadParts,
}

impl From<Seen> for Refused {
    fn from(s: Seen) -> Self {
        match s {
            Seen::Replayed => Refused::Replayed,
            Seen::Stale => Refused::Stale,
        }
    }
}

/// Whom a datagram is sealed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recipient {
    /// The node process of this session.
    Session(Session),
    /// The node whose advertised or bound gossip address this is.
    Addr(SocketAddr),
}

/// The gossip keys of a keyring: the first seals, every key opens.
pub(crate) struct GossipKeys {
    cluster_id: Vec<u8>,
    keys: Vec<([u8; 4], hkdf::Prk)>,
}

impl GossipKeys {
    /// The gossip keys of `keys`, for `cluster_id`. `None` if `keys` is empty.
    pub(crate) fn new(cluster_id: &str, keys: &[Keys]) -> Option<Self> {
        let keys: Vec<([u8; 4], hkdf::Prk)> = keys
            .iter()
            .map(|k| {
                (
                    k.gossip_id,
                    hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &k.gossip),
                )
            })
            .collect();
        (!keys.is_empty()).then(|| Self {
            cluster_id: cluster_id.as_bytes().to_vec(),
            keys,
        })
    }

    /// The key of `session` under gossip key `prk`.
    fn session_key(prk: &hkdf::Prk, session: &Session) -> LessSafeKey {
        let info: [&[u8]; 2] = [b"socketioxide-cluster gossip session", session];
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .unwrap_or_else(|_| unreachable!("32 bytes are far below the HKDF limit"));
        LessSafeKey::new(UnboundKey::from(okm))
    }

    /// What is authenticated besides the ciphertext.
    fn aad(&self, header: &[u8], to: &Recipient) -> Aad<Vec<u8>> {
        let mut aad = Vec::with_capacity(header.len() + 8 + self.cluster_id.len() + 20);
        aad.extend_from_slice(header);
        aad.extend_from_slice(&(self.cluster_id.len() as u64).to_be_bytes());
        aad.extend_from_slice(&self.cluster_id);
        match to {
            Recipient::Session(s) => {
                aad.push(0);
                aad.extend_from_slice(s);
            }
            Recipient::Addr(SocketAddr::V4(a)) => {
                aad.push(4);
                aad.extend_from_slice(&a.ip().octets());
                aad.extend_from_slice(&a.port().to_be_bytes());
            }
            Recipient::Addr(SocketAddr::V6(a)) => {
                aad.push(6);
                aad.extend_from_slice(&a.ip().octets());
                aad.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        Aad::from(aad)
    }
}

fn nonce(number: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&number.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The sending side: a session of its own, numbered datagrams.
pub(crate) struct Sealer {
    keys: Arc<GossipKeys>,
    session: Session,
    key: LessSafeKey,
    next: u64,
}

impl Sealer {
    /// A sealer with a new random session, sealing under the first key of `keys`.
    pub(crate) fn new(keys: Arc<GossipKeys>) -> Self {
        let session: Session = rand::random();
        let key = GossipKeys::session_key(&keys.keys[0].1, &session);
        Self {
            keys,
            session,
            key,
            next: 0,
        }
    }

    /// The session this sealer seals under (what peers seal their answers for).
    pub(crate) fn session(&self) -> Session {
        self.session
    }

    /// Seal one envelope for `to` into one datagram, or two if it does not fit one. Empty
    /// once the session's 2^64 numbers are used up.
    pub(crate) fn seal(&mut self, envelope: &[u8], to: &Recipient, now_ms: u64) -> Vec<Vec<u8>> {
        let chunks: Vec<&[u8]> = if envelope.len() <= MAX_PART {
            vec![envelope]
        } else {
            envelope.chunks(envelope.len().div_ceil(2)).collect()
        };
        let two = chunks.len() == 2;
        let mut out = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.into_iter().enumerate() {
            let Some(next) = self.next.checked_add(1) else {
                return Vec::new();
            };
            let number = std::mem::replace(&mut self.next, next);
            let part = if two { i as u8 + 1 } else { 0 };
            let flags = part
                | if matches!(to, Recipient::Addr(_)) {
                    FOR_ADDRESS
                } else {
                    0
                };
            let mut d = Vec::with_capacity(OVERHEAD + chunk.len());
            d.extend_from_slice(MAGIC);
            d.push(VERSION);
            d.extend_from_slice(&self.keys.keys[0].0);
            d.extend_from_slice(&self.session);
            d.extend_from_slice(&number.to_be_bytes());
            d.extend_from_slice(&now_ms.to_be_bytes());
            d.push(flags);
            let mut body = chunk.to_vec();
            let tag = self
                .key
                .seal_in_place_separate_tag(nonce(number), self.keys.aad(&d, to), &mut body)
                .unwrap_or_else(|_| unreachable!("a datagram is far below the AEAD limit"));
            d.extend_from_slice(&body);
            d.extend_from_slice(tag.as_ref());
            out.push(d);
        }
        out
    }
}

/// The fields of a header.
struct Header {
    key_id: [u8; 4],
    session: Session,
    number: u64,
    sent_at: u64,
    part: u8,
    for_address: bool,
}

fn header(datagram: &[u8]) -> Result<Header, Refused> {
    if datagram.len() < 4 || &datagram[..3] != MAGIC {
        return Err(Refused::Malformed);
    }
    if datagram[3] != VERSION {
        return Err(Refused::Version(datagram[3]));
    }
    if datagram.len() < OVERHEAD {
        return Err(Refused::Malformed);
    }
    let field = |at: usize, len: usize| &datagram[at..at + len];
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(field(at, 8));
        u64::from_be_bytes(b)
    };
    let flags = datagram[HEADER - 1];
    if flags & !(PART | FOR_ADDRESS) != 0 || flags & PART == PART {
        return Err(Refused::Malformed);
    }
    let mut key_id = [0u8; 4];
    key_id.copy_from_slice(field(4, 4));
    let mut session = [0u8; 16];
    session.copy_from_slice(field(8, 16));
    Ok(Header {
        key_id,
        session,
        number: word(24),
        sent_at: word(32),
        part: flags & PART,
        for_address: flags & FOR_ADDRESS != 0,
    })
}

/// What opened: the envelope (`None` while a part is missing) and the sender's session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Opened {
    pub(crate) envelope: Option<Vec<u8>>,
    pub(crate) session: Session,
}

/// The receiving side: keys, this node's identity, what it opened.
pub(crate) struct Opener {
    keys: Arc<GossipKeys>,
    /// This node's session (that of its [`Sealer`]).
    session: Session,
    /// The addresses this node opens datagrams sealed for: the advertised and the bound
    /// gossip address.
    addrs: Vec<SocketAddr>,
    replays: Replays,
    /// First parts waiting for their second: (session, number of the first) → (arrival,
    /// part).
    partial: HashMap<(Session, u64), (u64, Vec<u8>)>,
    /// Session keys derived: (key id, session) → key.
    session_keys: HashMap<([u8; 4], Session), LessSafeKey>,
}

impl Opener {
    /// The opener of the node whose sealer has `session` and whose gossip addresses are
    /// `addrs`.
    pub(crate) fn new(keys: Arc<GossipKeys>, session: Session, addrs: Vec<SocketAddr>) -> Self {
        Self {
            keys,
            session,
            addrs,
            replays: Replays::default(),
            partial: HashMap::new(),
            session_keys: HashMap::new(),
        }
    }

    /// Open a datagram: the whole envelope, `None` while a part is missing, or why it was
    /// refused. Only what opened is remembered.
    pub(crate) fn open(&mut self, datagram: &[u8], now_ms: u64) -> Result<Opened, Refused> {
        let h = header(datagram)?;
        let prk = self
            .keys
            .keys
            .iter()
            .find(|(id, _)| *id == h.key_id)
            .map(|(_, k)| k)
            .ok_or(Refused::UnknownKey)?;
        self.replays
            .check(&h.session, h.number, h.sent_at, now_ms)?;
        let derived;
        let key = match self.session_keys.get(&(h.key_id, h.session)) {
            Some(k) => k,
            None => {
                derived = GossipKeys::session_key(prk, &h.session);
                &derived
            }
        };
        let (head, sealed) = datagram.split_at(HEADER);
        let mut recipients: Vec<Recipient> = if h.for_address {
            self.addrs.iter().map(|a| Recipient::Addr(*a)).collect()
        } else {
            vec![Recipient::Session(self.session)]
        };
        recipients.dedup();
        let mut body = None;
        for to in recipients {
            let mut attempt = sealed.to_vec();
            if let Ok(plain) =
                key.open_in_place(nonce(h.number), self.keys.aad(head, &to), &mut attempt)
            {
                let len = plain.len();
                attempt.truncate(len);
                body = Some(attempt);
                break;
            }
        }
        let body = body.ok_or(Refused::BadSeal)?;
        if !self.session_keys.contains_key(&(h.key_id, h.session)) {
            if self.session_keys.len() >= MAX_SESSION_KEYS {
                self.session_keys.clear();
            }
            let key = GossipKeys::session_key(prk, &h.session);
            self.session_keys.insert((h.key_id, h.session), key);
        }
        self.replays.record(&h.session, h.number, h.sent_at, now_ms);
        let envelope = match h.part {
            0 => Some(body),
            part => self.join(&h, part, body, now_ms)?,
        };
        Ok(Opened {
            envelope,
            session: h.session,
        })
    }

    /// Join part `part` (1 or 2) of an envelope to the other one, once both came.
    fn join(
        &mut self,
        h: &Header,
        part: u8,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, Refused> {
        let first = if part == 1 {
            h.number
        } else {
            h.number.checked_sub(1).ok_or(Refused::BadParts)?
        };
        let key = (h.session, first);
        match self.partial.remove(&key) {
            Some((_, other)) => {
                let (mut whole, second) = if part == 1 {
                    (body, other)
                } else {
                    (other, body)
                };
                whole.extend_from_slice(&second);
                if whole.len() > MAX_ENVELOPE {
                    return Err(Refused::BadParts);
                }
                Ok(Some(whole))
            }
            None => {
                self.partial
                    .retain(|_, (at, _)| now_ms.saturating_sub(*at) <= PARTIAL_TTL_MS);
                if self.partial.len() >= MAX_PARTIAL {
                    let oldest = self
                        .partial
                        .iter()
                        .min_by_key(|(_, (at, _))| *at)
                        .map(|(k, _)| *k);
                    if let Some(oldest) = oldest {
                        self.partial.remove(&oldest);
                    }
                }
                self.partial.insert(key, (now_ms, body));
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests;
