//! Sealed gossip datagrams: what chitchat sends is encrypted and authenticated
//! (ChaCha20-Poly1305) under the gossip key derived from the cluster secret, with the
//! cluster id as associated data. Pure: no I/O; the caller passes the time.
//!
//! A datagram is a header, then the ciphertext and its tag:
//!
//! ```text
//! "SXG" | version (1) | key id (4) | sent at, ms since the epoch (8)
//!       | message id (4) | part (1) | parts (1) | nonce (12) | ciphertext | tag (16)
//! ```
//!
//! The whole header is authenticated too. A receiver refuses, before anything reaches
//! chitchat, a datagram that does not open under the key its id names, that was sent more
//! than [`WINDOW_MS`] away from its own clock, or whose nonce it already opened (a replay).
//! An envelope that does not fit one datagram once sealed (chitchat fills datagrams up to
//! 65,507 bytes) travels in two parts, each sealed on its own, joined on arrival.

use std::{collections::HashMap, net::SocketAddr};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::gossip::keys::Keys;

const MAGIC: &[u8; 3] = b"SXG";
const VERSION: u8 = 1;
/// Header length: magic, version, key id, time, message id, part, parts, nonce.
const HEADER: usize = 3 + 1 + 4 + 8 + 4 + 1 + 1 + NONCE_LEN;
const TAG: usize = 16;
/// What sealing adds to one datagram.
pub(crate) const OVERHEAD: usize = HEADER + TAG;
/// Largest UDP payload over IPv4.
pub(crate) const MAX_DATAGRAM: usize = 65_507;
/// Largest part of an envelope one datagram carries.
const MAX_PART: usize = MAX_DATAGRAM - OVERHEAD;
/// An envelope travels in at most this many datagrams.
const MAX_PARTS: u8 = 2;
/// Largest envelope: chitchat's own datagram limit.
pub(crate) const MAX_ENVELOPE: usize = MAX_DATAGRAM;

/// How far a datagram's sending time may be from the receiver's clock (nodes' clocks must
/// agree within this; keep NTP). A replay older than this is refused as stale; a younger one
/// by its nonce.
pub(crate) const WINDOW_MS: u64 = 60_000;
/// Most nonces remembered (the last [`WINDOW_MS`] worth of datagrams; far above what a
/// 100-node cluster sends one node in that time).
const MAX_SEEN: usize = 200_000;
/// Most envelopes waiting for their second part, and how long one waits.
const MAX_PARTIAL: usize = 16;
const PARTIAL_TTL_MS: u64 = 5_000;

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Too short, or not our magic and version.
    #[error("not a sealed gossip datagram")]
    Malformed,
    /// Sealed under a key this node does not hold (another secret or cluster).
    #[error("sealed under an unknown key (another secret or cluster id)")]
    UnknownKey,
    /// Does not open: tampered with, truncated, or another cluster id.
    #[error("does not open under the cluster key (tampered, truncated, or another cluster id)")]
    BadSeal,
    /// Sent too long ago, or too far in the future: a replay, or clocks that disagree.
    #[error("sent too far from this node's clock (a replay, or clocks more than 60 s apart)")]
    Stale,
    /// Already opened once.
    #[error("a replay of a datagram already received")]
    Replayed,
    /// The part numbers do not make sense.
    #[error("bad part numbering")]
    BadParts,
    /// The replay memory is full (only under an implausible rate of genuine gossip).
    #[error("too many datagrams in the replay window")]
    Busy,
}

/// The gossip keys of a keyring: the first seals, every key opens.
pub(crate) struct GossipKeys {
    cluster_id: Vec<u8>,
    keys: Vec<([u8; 4], LessSafeKey)>,
}

/// The fields of a header that matter once it opened.
struct Header {
    sent_at: u64,
    msg_id: u32,
    part: u8,
    parts: u8,
    nonce: [u8; NONCE_LEN],
}

impl GossipKeys {
    /// The gossip keys of `keys`, for `cluster_id`. `None` if `keys` is empty.
    pub(crate) fn new(cluster_id: &str, keys: &[Keys]) -> Option<Self> {
        let keys: Vec<([u8; 4], LessSafeKey)> = keys
            .iter()
            .filter_map(|k| {
                let key = UnboundKey::new(&CHACHA20_POLY1305, &k.gossip).ok()?;
                Some((k.gossip_id, LessSafeKey::new(key)))
            })
            .collect();
        (!keys.is_empty()).then(|| Self {
            cluster_id: cluster_id.as_bytes().to_vec(),
            keys,
        })
    }

    /// Seal one envelope into one datagram, or two if it does not fit one.
    pub(crate) fn seal(&self, envelope: &[u8], now_ms: u64) -> Vec<Vec<u8>> {
        let (key_id, key) = &self.keys[0];
        let chunks: Vec<&[u8]> = if envelope.len() <= MAX_PART {
            vec![envelope]
        } else {
            envelope.chunks(envelope.len().div_ceil(2)).collect()
        };
        let msg_id: u32 = rand::random();
        let parts = chunks.len() as u8;
        chunks
            .into_iter()
            .enumerate()
            .map(|(part, chunk)| {
                let nonce: [u8; NONCE_LEN] = rand::random();
                let mut out = Vec::with_capacity(OVERHEAD + chunk.len());
                out.extend_from_slice(MAGIC);
                out.push(VERSION);
                out.extend_from_slice(key_id);
                out.extend_from_slice(&now_ms.to_be_bytes());
                out.extend_from_slice(&msg_id.to_be_bytes());
                out.push(part as u8);
                out.push(parts);
                out.extend_from_slice(&nonce);
                let mut body = chunk.to_vec();
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        self.aad(&out),
                        &mut body,
                    )
                    .unwrap_or_else(|_| unreachable!("a datagram is far below the AEAD limit"));
                out.extend_from_slice(&body);
                out.extend_from_slice(tag.as_ref());
                out
            })
            .collect()
    }

    fn aad(&self, header: &[u8]) -> Aad<Vec<u8>> {
        let mut aad = Vec::with_capacity(header.len() + 8 + self.cluster_id.len());
        aad.extend_from_slice(header);
        aad.extend_from_slice(&(self.cluster_id.len() as u64).to_be_bytes());
        aad.extend_from_slice(&self.cluster_id);
        Aad::from(aad)
    }

    /// Check a datagram's header and time, and open it unless `seen` already holds its nonce.
    fn open(
        &self,
        datagram: &[u8],
        now_ms: u64,
        seen: &HashMap<[u8; NONCE_LEN], u64>,
    ) -> Result<(Header, Vec<u8>), Refused> {
        if datagram.len() < OVERHEAD || &datagram[..3] != MAGIC || datagram[3] != VERSION {
            return Err(Refused::Malformed);
        }
        let (header, body) = datagram.split_at(HEADER);
        let field = |at: usize, len: usize| &header[at..at + len];
        let key_id = field(4, 4);
        let sent_at = u64::from_be_bytes(field(8, 8).try_into().map_err(|_| Refused::Malformed)?);
        let msg_id = u32::from_be_bytes(field(16, 4).try_into().map_err(|_| Refused::Malformed)?);
        let (part, parts) = (header[20], header[21]);
        let nonce: [u8; NONCE_LEN] = field(22, NONCE_LEN)
            .try_into()
            .map_err(|_| Refused::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, k)| k)
            .ok_or(Refused::UnknownKey)?;
        if now_ms.abs_diff(sent_at) > WINDOW_MS {
            return Err(Refused::Stale);
        }
        if seen.contains_key(&nonce) {
            return Err(Refused::Replayed);
        }
        let mut body = body.to_vec();
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                self.aad(header),
                &mut body,
            )
            .map_err(|_| Refused::BadSeal)?
            .len();
        body.truncate(len);
        if parts == 0 || parts > MAX_PARTS || part >= parts {
            return Err(Refused::BadParts);
        }
        Ok((
            Header {
                sent_at,
                msg_id,
                part,
                parts,
                nonce,
            },
            body,
        ))
    }
}

/// The receiving side: keys, the nonces already opened, envelopes waiting for a part.
pub(crate) struct Opener {
    keys: std::sync::Arc<GossipKeys>,
    /// Nonces opened within the window, with their sending time.
    seen: HashMap<[u8; NONCE_LEN], u64>,
    /// First parts waiting for their second: (sender, message id) → (arrival, part).
    partial: HashMap<(SocketAddr, u32), (u64, u8, Vec<u8>)>,
}

impl Opener {
    pub(crate) fn new(keys: std::sync::Arc<GossipKeys>) -> Self {
        Self {
            keys,
            seen: HashMap::new(),
            partial: HashMap::new(),
        }
    }

    /// Open a datagram from `from`: the whole envelope, `None` while a part is missing, or
    /// why it was refused. Only what opened is remembered.
    pub(crate) fn open(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, Refused> {
        let (header, body) = self.keys.open(datagram, now_ms, &self.seen)?;
        // Forget what the window no longer covers now and then, and whenever full.
        if self.seen.len() >= MAX_SEEN || self.seen.len().is_multiple_of(1024) {
            self.seen
                .retain(|_, sent_at| now_ms.abs_diff(*sent_at) <= WINDOW_MS);
        }
        if self.seen.len() >= MAX_SEEN {
            return Err(Refused::Busy);
        }
        self.seen.insert(header.nonce, header.sent_at);
        if header.parts == 1 {
            return Ok(Some(body));
        }
        let key = (from, header.msg_id);
        match self.partial.remove(&key) {
            Some((_, part, first)) if part != header.part => {
                let (a, b) = if part < header.part {
                    (first, body)
                } else {
                    (body, first)
                };
                let mut whole = a;
                whole.extend_from_slice(&b);
                if whole.len() > MAX_ENVELOPE {
                    return Err(Refused::BadParts);
                }
                Ok(Some(whole))
            }
            Some(_) => Err(Refused::BadParts),
            None => {
                self.partial
                    .retain(|_, (at, _, _)| now_ms.saturating_sub(*at) <= PARTIAL_TTL_MS);
                if self.partial.len() >= MAX_PARTIAL {
                    let oldest = self
                        .partial
                        .iter()
                        .min_by_key(|(_, (at, _, _))| *at)
                        .map(|(k, _)| *k);
                    if let Some(oldest) = oldest {
                        self.partial.remove(&oldest);
                    }
                }
                self.partial.insert(key, (now_ms, header.part, body));
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::keys::{Secret, derive_keyring, tests::OTHER, tests::SECRET};
    use std::sync::{Arc, OnceLock};

    const NOW: u64 = 1_800_000_000_000;

    fn keys(cluster: &str, secrets: &[&str]) -> Arc<GossipKeys> {
        // Derivation is the slow part: derive each (cluster, secret) once for all tests.
        static CACHE: OnceLock<std::sync::Mutex<HashMap<(String, String), Keys>>> = OnceLock::new();
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

    fn from() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn open_one(opener: &mut Opener, d: &[u8]) -> Result<Option<Vec<u8>>, Refused> {
        opener.open(d, from(), NOW)
    }

    #[test]
    fn seals_and_opens_and_hides_the_envelope() {
        let k = keys("c", &[SECRET]);
        let envelope = b"node-1 127.0.0.1:7947 server id ABCDEFGHIJKLMNOP".to_vec();
        let sealed = k.seal(&envelope, NOW);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].len(), envelope.len() + OVERHEAD);
        assert!(
            !sealed[0].windows(6).any(|w| w == b"node-1"),
            "nothing in clear"
        );
        let mut opener = Opener::new(k);
        assert_eq!(open_one(&mut opener, &sealed[0]), Ok(Some(envelope)));
    }

    #[test]
    fn wrong_key_other_cluster_tampering_and_truncation_are_refused() {
        let k = keys("c", &[SECRET]);
        let d = k.seal(b"hello gossip", NOW).remove(0);
        assert_eq!(
            open_one(&mut Opener::new(keys("c", &[OTHER])), &d),
            Err(Refused::UnknownKey)
        );
        assert_eq!(
            open_one(&mut Opener::new(keys("d", &[SECRET])), &d),
            Err(Refused::UnknownKey),
            "another cluster id derives other keys"
        );
        let mut opener = Opener::new(k.clone());
        for at in [5, 10, 20, 21, HEADER + 2, d.len() - 1] {
            let mut bad = d.clone();
            bad[at] ^= 0x40;
            let r = open_one(&mut opener, &bad);
            assert!(r.is_err(), "flipped byte {at}: {r:?}");
        }
        for len in [0, 3, OVERHEAD - 1, d.len() - 1] {
            assert!(
                open_one(&mut opener, &d[..len]).is_err(),
                "truncated to {len}"
            );
        }
        // Same key, but the receiver belongs to another cluster id: the seal does not open.
        let other_cluster_same_key = GossipKeys {
            cluster_id: b"d".to_vec(),
            keys: vec![(
                k.keys[0].0,
                LessSafeKey::new(
                    UnboundKey::new(
                        &CHACHA20_POLY1305,
                        &derive_keyring("c", &[Secret::from(SECRET)]).unwrap()[0].gossip,
                    )
                    .unwrap(),
                ),
            )],
        };
        assert_eq!(
            open_one(&mut Opener::new(Arc::new(other_cluster_same_key)), &d),
            Err(Refused::BadSeal)
        );
        assert_eq!(
            open_one(&mut opener, &d),
            Ok(Some(b"hello gossip".to_vec()))
        );
    }

    #[test]
    fn rotation_works_both_ways() {
        let old = keys("c", &[OTHER]);
        let mixed_old_first = keys("c", &[OTHER, SECRET]);
        let mixed_new_first = keys("c", &[SECRET, OTHER]);
        let new = keys("c", &[SECRET]);
        for (sender, receiver) in [
            (&old, &mixed_old_first),
            (&mixed_old_first, &mixed_new_first),
            (&mixed_new_first, &mixed_old_first),
            (&mixed_new_first, &new),
            (&new, &mixed_new_first),
        ] {
            let d = sender.seal(b"x", NOW).remove(0);
            assert_eq!(
                open_one(&mut Opener::new(receiver.clone()), &d),
                Ok(Some(b"x".to_vec()))
            );
        }
        let d = old.seal(b"x", NOW).remove(0);
        assert_eq!(
            open_one(&mut Opener::new(new), &d),
            Err(Refused::UnknownKey),
            "the old key is gone at the last step"
        );
    }

    #[test]
    fn replays_and_stale_datagrams_are_refused() {
        let k = keys("c", &[SECRET]);
        let mut opener = Opener::new(k.clone());
        let d = k.seal(b"syn", NOW).remove(0);
        assert!(open_one(&mut opener, &d).unwrap().is_some());
        assert_eq!(open_one(&mut opener, &d), Err(Refused::Replayed));
        let old = k.seal(b"syn", NOW - WINDOW_MS - 1).remove(0);
        assert_eq!(open_one(&mut opener, &old), Err(Refused::Stale));
        let future = k.seal(b"syn", NOW + WINDOW_MS + 1).remove(0);
        assert_eq!(open_one(&mut opener, &future), Err(Refused::Stale));
        // Just inside the window both ways.
        let skewed = k.seal(b"syn", NOW + WINDOW_MS).remove(0);
        assert!(open_one(&mut opener, &skewed).unwrap().is_some());
    }

    #[test]
    fn an_envelope_near_the_datagram_limit_travels_in_two_parts() {
        let k = keys("c", &[SECRET]);
        let envelope: Vec<u8> = (0..MAX_ENVELOPE).map(|i| (i * 7 % 251) as u8).collect();
        let sealed = k.seal(&envelope, NOW);
        assert_eq!(sealed.len(), 2);
        assert!(sealed.iter().all(|d| d.len() <= MAX_DATAGRAM));
        // Either order.
        for order in [[0, 1], [1, 0]] {
            let mut opener = Opener::new(k.clone());
            assert_eq!(open_one(&mut opener, &sealed[order[0]]), Ok(None));
            assert_eq!(
                open_one(&mut opener, &sealed[order[1]]),
                Ok(Some(envelope.clone()))
            );
        }
        // The largest envelope that fits one datagram.
        let one = vec![1u8; MAX_PART];
        let sealed = k.seal(&one, NOW);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].len(), MAX_DATAGRAM);
        // A part from another sender does not complete an envelope.
        let parts = k.seal(&envelope, NOW);
        let mut opener = Opener::new(k.clone());
        assert_eq!(opener.open(&parts[0], from(), NOW), Ok(None));
        assert_eq!(
            opener.open(&parts[1], "127.0.0.1:10".parse().unwrap(), NOW),
            Ok(None)
        );
    }

    #[test]
    fn waiting_parts_are_bounded() {
        let k = keys("c", &[SECRET]);
        let envelope = vec![3u8; MAX_PART + 10];
        let mut opener = Opener::new(k.clone());
        for _ in 0..100 {
            let parts = k.seal(&envelope, NOW);
            assert_eq!(open_one(&mut opener, &parts[0]), Ok(None));
        }
        assert!(opener.partial.len() <= MAX_PARTIAL);
    }
}
