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
mod tests {
    use super::*;
    use crate::gossip::{
        keys::{Secret, derive_keyring, tests::OTHER, tests::SECRET},
        membership::clock::Clock,
    };
    use std::sync::{Mutex, OnceLock};

    const NOW: u64 = 1_800_000_000_000;

    pub(crate) fn keys(cluster: &str, secrets: &[&str]) -> Arc<GossipKeys> {
        // Derivation is the slow part: derive each (cluster, secret) once for all tests.
        static CACHE: OnceLock<Mutex<HashMap<(String, String), Keys>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let derived: Vec<Keys> = secrets
            .iter()
            .map(|s| {
                let mut cache = cache.lock().unwrap();
                cache
                    .entry((cluster.to_string(), s.to_string()))
                    .or_insert_with(|| {
                        derive_keyring(cluster, &[Secret::from(*s)]).unwrap()[0].clone()
                    })
                    .clone()
            })
            .collect();
        Arc::new(GossipKeys::new(cluster, &derived).unwrap())
    }

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    /// A node: its sealer, and its opener at `port`.
    fn node(keys: &Arc<GossipKeys>, port: u16) -> (Sealer, Opener) {
        let sealer = Sealer::new(keys.clone());
        let opener = Opener::new(keys.clone(), sealer.session(), vec![addr(port)]);
        (sealer, opener)
    }

    fn opened(o: Result<Opened, Refused>) -> Result<Option<Vec<u8>>, Refused> {
        o.map(|o| o.envelope)
    }

    #[test]
    fn seals_and_opens_and_hides_the_envelope() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        let (_, mut b) = node(&k, 2);
        let envelope = b"node-1 127.0.0.1:7947 server id ABCDEFGHIJKLMNOP".to_vec();
        let sealed = a.seal(&envelope, &Recipient::Addr(addr(2)), NOW);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].len(), envelope.len() + OVERHEAD);
        assert!(
            !sealed[0].windows(6).any(|w| w == b"node-1"),
            "nothing in clear"
        );
        let o = b.open(&sealed[0], NOW).unwrap();
        assert_eq!(
            o,
            Opened {
                envelope: Some(envelope),
                session: a.session()
            }
        );
    }

    /// What sealing adds to a datagram, printed: `cargo test --all-features --lib --
    /// --nocapture seal::tests::the_cost`.
    #[test]
    fn the_cost_of_sealing_per_datagram() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        for len in [5, 100, 1_000, 60_000] {
            let sealed = a.seal(&vec![7u8; len], &Recipient::Addr(addr(2)), NOW);
            assert_eq!(sealed[0].len() - len, OVERHEAD);
        }
        println!("sealing adds {OVERHEAD} bytes to a datagram (header {HEADER}, tag {TAG})");
    }

    #[test]
    fn a_datagram_opens_only_at_its_recipient() {
        let k = keys("c", &[SECRET]);
        let (mut a, mut a_open) = node(&k, 1);
        let (mut b, mut b_open) = node(&k, 2);
        let (_, mut c_open) = node(&k, 3);
        // For an address: only the node with that address opens it.
        let d = a.seal(b"syn", &Recipient::Addr(addr(2)), NOW).remove(0);
        assert_eq!(opened(c_open.open(&d, NOW)), Err(Refused::BadSeal));
        assert!(opened(b_open.open(&d, NOW)).unwrap().is_some());
        // For a session: only the node of that session.
        let d = b
            .seal(b"syn-ack", &Recipient::Session(a.session()), NOW)
            .remove(0);
        assert_eq!(opened(c_open.open(&d, NOW)), Err(Refused::BadSeal));
        assert!(opened(a_open.open(&d, NOW)).unwrap().is_some());
        // A node at the same address, restarted (another session), does not open what was
        // sealed for the session of the one before.
        let (_, mut b_again) = node(&k, 2);
        let d = a
            .seal(b"ack", &Recipient::Session(b.session()), NOW)
            .remove(0);
        assert_eq!(opened(b_again.open(&d, NOW)), Err(Refused::BadSeal));
        // The bound address counts as well as the advertised one.
        let mut both = Opener::new(k.clone(), [0; 16], vec![addr(4), addr(5)]);
        let d = a.seal(b"syn", &Recipient::Addr(addr(5)), NOW).remove(0);
        assert!(opened(both.open(&d, NOW)).unwrap().is_some());
    }

    #[test]
    fn numbers_never_repeat_and_sessions_differ() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        let (b, _) = node(&k, 2);
        assert_ne!(a.session(), b.session());
        let numbers: Vec<u64> = (0..10)
            .flat_map(|_| a.seal(&[1; 70_000], &Recipient::Addr(addr(2)), NOW))
            .map(|d| header(&d).unwrap().number)
            .collect();
        assert_eq!(numbers, (0..20).collect::<Vec<_>>());
        a.next = u64::MAX;
        assert!(
            a.seal(b"x", &Recipient::Addr(addr(2)), NOW).is_empty(),
            "no wrap"
        );
    }

    #[test]
    fn wrong_key_other_cluster_tampering_and_truncation_are_refused() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        let to = Recipient::Addr(addr(2));
        let d = a.seal(b"hello gossip", &to, NOW).remove(0);
        let other = keys("c", &[OTHER]);
        assert_eq!(
            opened(Opener::new(other, [0; 16], vec![addr(2)]).open(&d, NOW)),
            Err(Refused::UnknownKey)
        );
        assert_eq!(
            opened(Opener::new(keys("d", &[SECRET]), [0; 16], vec![addr(2)]).open(&d, NOW)),
            Err(Refused::UnknownKey),
            "another cluster id derives other keys"
        );
        let (_, mut b) = node(&k, 2);
        for at in [5, 10, 30, 35, HEADER - 1, HEADER + 2, d.len() - 1] {
            let mut bad = d.clone();
            bad[at] ^= 0x40;
            let r = b.open(&bad, NOW);
            assert!(r.is_err(), "flipped byte {at}: {r:?}");
        }
        for len in [0, 3, OVERHEAD - 1, d.len() - 1] {
            assert!(b.open(&d[..len], NOW).is_err(), "truncated to {len}");
        }
        // Same key, but the receiver belongs to another cluster id: the seal does not open.
        let same_key_other_cluster = Arc::new(GossipKeys {
            cluster_id: b"d".to_vec(),
            keys: vec![(
                k.keys[0].0,
                hkdf::Prk::new_less_safe(
                    hkdf::HKDF_SHA256,
                    &derive_keyring("c", &[Secret::from(SECRET)]).unwrap()[0].gossip,
                ),
            )],
        });
        assert_eq!(
            opened(Opener::new(same_key_other_cluster, [0; 16], vec![addr(2)]).open(&d, NOW)),
            Err(Refused::BadSeal)
        );
        assert_eq!(opened(b.open(&d, NOW)), Ok(Some(b"hello gossip".to_vec())));
    }

    #[test]
    fn other_format_versions_are_told_apart() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        let (_, mut b) = node(&k, 2);
        let mut d = a.seal(b"x", &Recipient::Addr(addr(2)), NOW).remove(0);
        d[3] = 1;
        assert_eq!(opened(b.open(&d, NOW)), Err(Refused::Version(1)));
        assert_eq!(opened(b.open(b"XYZ\x02", NOW)), Err(Refused::Malformed));
    }

    #[test]
    fn rotation_works_both_ways() {
        let old = keys("c", &[OTHER]);
        let mixed_old_first = keys("c", &[OTHER, SECRET]);
        let mixed_new_first = keys("c", &[SECRET, OTHER]);
        let new = keys("c", &[SECRET]);
        let to = Recipient::Addr(addr(2));
        for (sender, receiver) in [
            (&old, &mixed_old_first),
            (&mixed_old_first, &mixed_new_first),
            (&mixed_new_first, &mixed_old_first),
            (&mixed_new_first, &new),
            (&new, &mixed_new_first),
        ] {
            let d = Sealer::new(sender.clone()).seal(b"x", &to, NOW).remove(0);
            let mut o = Opener::new(receiver.clone(), [0; 16], vec![addr(2)]);
            assert_eq!(opened(o.open(&d, NOW)), Ok(Some(b"x".to_vec())));
        }
        let d = Sealer::new(old).seal(b"x", &to, NOW).remove(0);
        assert_eq!(
            opened(Opener::new(new, [0; 16], vec![addr(2)]).open(&d, NOW)),
            Err(Refused::UnknownKey),
            "the old key is gone at the last step"
        );
    }

    #[test]
    fn replays_and_stale_datagrams_are_refused() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        let (_, mut b) = node(&k, 2);
        let to = Recipient::Addr(addr(2));
        let d = a.seal(b"syn", &to, NOW).remove(0);
        assert!(opened(b.open(&d, NOW)).unwrap().is_some());
        assert_eq!(opened(b.open(&d, NOW)), Err(Refused::Replayed));
        let old = a.seal(b"syn", &to, NOW - FRESH_MS - 1).remove(0);
        assert_eq!(opened(b.open(&old, NOW)), Err(Refused::Stale));
        let future = a.seal(b"syn", &to, NOW + FRESH_MS + 1).remove(0);
        assert_eq!(opened(b.open(&future, NOW)), Err(Refused::Stale));
        // Just inside the window both ways.
        let skewed = a.seal(b"syn", &to, NOW + FRESH_MS).remove(0);
        assert!(opened(b.open(&skewed, NOW)).unwrap().is_some());
    }

    #[test]
    fn a_wall_clock_step_back_does_not_reopen_replays() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        let (_, mut b) = node(&k, 2);
        let clock = Clock::default();
        let t0 = std::time::Instant::now();
        let to = Recipient::Addr(addr(2));
        let captured = a.seal(b"syn", &to, NOW).remove(0);
        assert!(
            opened(b.open(&captured, clock.at(NOW, t0)))
                .unwrap()
                .is_some()
        );
        // Two minutes of gossip from many nodes later, the receiver forgot that session...
        let s = std::time::Duration::from_secs(1);
        let later = clock.at(NOW + 130_000, t0 + 130 * s);
        for _ in 0..300 {
            let d = Sealer::new(k.clone()).seal(b"x", &to, later).remove(0);
            assert!(opened(b.open(&d, later)).unwrap().is_some());
        }
        // ... then its wall clock steps back by two minutes, and the capture is replayed.
        let stepped = clock.at(NOW + 10_000, t0 + 131 * s);
        assert_eq!(opened(b.open(&captured, stepped)), Err(Refused::Stale));
    }

    #[test]
    fn an_envelope_near_the_datagram_limit_travels_in_two_parts() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        let to = Recipient::Addr(addr(2));
        let envelope: Vec<u8> = (0..MAX_ENVELOPE).map(|i| (i * 7 % 251) as u8).collect();
        // Either order.
        for order in [[0, 1], [1, 0]] {
            let sealed = a.seal(&envelope, &to, NOW);
            assert_eq!(sealed.len(), 2);
            assert!(sealed.iter().all(|d| d.len() <= MAX_DATAGRAM));
            let (_, mut b) = node(&k, 2);
            assert_eq!(opened(b.open(&sealed[order[0]], NOW)), Ok(None));
            assert_eq!(
                opened(b.open(&sealed[order[1]], NOW)),
                Ok(Some(envelope.clone()))
            );
        }
        // The largest envelope that fits one datagram.
        let sealed = a.seal(&vec![1u8; MAX_PART], &to, NOW);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].len(), MAX_DATAGRAM);
        // A part from another session does not complete an envelope.
        let (_, mut b) = node(&k, 2);
        let first = a.seal(&envelope, &to, NOW).remove(0);
        let second = Sealer::new(k.clone()).seal(&envelope, &to, NOW).remove(1);
        assert_eq!(opened(b.open(&first, NOW)), Ok(None));
        assert_eq!(opened(b.open(&second, NOW)), Ok(None));
    }

    #[test]
    fn waiting_parts_are_bounded() {
        let k = keys("c", &[SECRET]);
        let (mut a, _) = node(&k, 1);
        let (_, mut b) = node(&k, 2);
        let envelope = vec![3u8; MAX_PART + 10];
        for _ in 0..100 {
            let parts = a.seal(&envelope, &Recipient::Addr(addr(2)), NOW);
            assert_eq!(opened(b.open(&parts[0], NOW)), Ok(None));
        }
        assert!(b.partial.len() <= MAX_PARTIAL);
    }
}
