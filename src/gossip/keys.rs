//! The cluster secret and the keys derived from it.
//!
//! A secret must resist offline guessing: at least [`MIN_SECRET_LEN`] characters, and not
//! guessable by a password-strength estimator (`zxcvbn`): no repeated phrase, keyboard walk
//! or dictionary word run. A generated secret (hex or base64 of at least 256 bits with no
//! repeat, run or sequence in it) is accepted without the estimator: its dictionaries take
//! about 6 MiB for the life of the process once loaded. From each secret of the keyring,
//! Argon2id (memory-hard) derives once, at start, a master key; HKDF-SHA256 splits it into
//! the key of the mesh proof and the key that seals gossip. Whoever tests a guess against
//! anything seen on the network pays one Argon2id run per guess.

use std::{fmt, sync::Arc};

use ring::hkdf;

/// Fewest characters a secret may have.
pub(crate) const MIN_SECRET_LEN: usize = 32;
/// Fewest guesses (as a power of ten) the strength estimator must put on a secret: about
/// 2^60, far beyond offline guessing when each guess costs an Argon2id run. (The estimator
/// tops out just above 10^19, where every random secret of 32 characters lands.)
const MIN_GUESSES_LOG10: f64 = 18.0;
/// Only this many leading characters go through the estimator (its cost grows with length;
/// a longer secret is judged by its start).
const ESTIMATE_PREFIX: usize = 128;

/// Argon2id cost: 19 MiB of memory, 2 passes, 1 lane (the OWASP recommendation).
pub(crate) const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
pub(crate) const ARGON2_PASSES: u32 = 2;

/// A cluster secret. Its bytes never appear in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Whether the secret is strong enough; the reason if it is not. A secret that is not
    /// UTF-8 is judged as text too, one character per byte (Latin-1): repeated or running
    /// bytes are as guessable as repeated or running letters.
    pub(crate) fn check(&self) -> Result<(), String> {
        let text: String = match std::str::from_utf8(&self.0) {
            Ok(t) => t.to_owned(),
            Err(_) => self.0.iter().map(|&b| char::from(b)).collect(),
        };
        let len = text.chars().count();
        if len < MIN_SECRET_LEN {
            return Err(format!(
                "it has {len} characters, fewer than {MIN_SECRET_LEN}"
            ));
        }
        if generated(&text) {
            return Ok(());
        }
        let start: String = text.chars().take(ESTIMATE_PREFIX).collect();
        // On a thread of its own: the estimator builds hash tables and caches, which would
        // otherwise draw on this thread's random state and change the order of its hash
        // maps (a seeded simulation would then not repeat).
        let guesses = std::thread::scope(|s| {
            s.spawn(|| zxcvbn::zxcvbn(&start, &[]).guesses_log10())
                .join()
                .unwrap_or(0.0)
        });
        if guesses < MIN_GUESSES_LOG10 {
            return Err(format!(
                "it is too easy to guess (about 10^{guesses:.0} guesses: repeated text, \
                 words or keyboard patterns)"
            ));
        }
        Ok(())
    }
}

/// Fewest bits a secret must carry, at the size of its alphabet, to be taken as generated.
const GENERATED_BITS: usize = 256;

/// Whether `text` reads as a secret drawn at random (`openssl rand -hex 32`, `openssl rand
/// -base64 32`): hex or base64 carrying at least [`GENERATED_BITS`], with a dozen distinct
/// characters or more and no trace of a pattern: no character five times in a row, no
/// five characters in a step (`12345`, `acegi`), no eight characters twice. About one
/// random hex secret in 500 shows such a trace by chance; it then goes through the
/// estimator, as every other secret does.
fn generated(text: &str) -> bool {
    let body = text.trim_end_matches('=').as_bytes();
    let bits_per_char = if body.iter().all(u8::is_ascii_hexdigit) {
        4
    } else if body
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"+/-_".contains(&b))
    {
        6
    } else {
        return false;
    };
    let distinct: std::collections::HashSet<u8> = body.iter().map(u8::to_ascii_lowercase).collect();
    let repeat = body.windows(5).any(|w| w.iter().all(|&b| b == w[0]));
    let step = body.windows(5).any(|w| {
        let d = i16::from(w[1]) - i16::from(w[0]);
        d != 0 && w.windows(2).all(|p| i16::from(p[1]) - i16::from(p[0]) == d)
    });
    let mut eights = std::collections::HashSet::new();
    let twice = body.windows(8).any(|w| !eights.insert(w));
    body.len() * bits_per_char >= GENERATED_BITS
        && distinct.len() >= 12
        && !repeat
        && !step
        && !twice
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s.into_bytes().into())
    }
}
impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().into())
    }
}
impl From<Vec<u8>> for Secret {
    fn from(s: Vec<u8>) -> Self {
        Self(s.into())
    }
}
impl From<&[u8]> for Secret {
    fn from(s: &[u8]) -> Self {
        Self(s.into())
    }
}

/// The keys derived from one secret for one cluster id.
#[derive(Clone)]
pub(crate) struct Keys {
    /// Key of the mesh proof (HMAC-SHA256).
    pub(crate) mesh: [u8; 32],
    /// Key that seals gossip (ChaCha20-Poly1305).
    pub(crate) gossip: [u8; 32],
    /// Names the gossip key in a sealed datagram, so that the receiver tries one key only.
    pub(crate) gossip_id: [u8; 4],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// Why keys could not be derived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// A secret of the keyring is too weak.
    #[error("secret {index} of the keyring is too weak: {reason}")]
    Weak {
        /// Position in the keyring (0 signs).
        index: usize,
        /// Why.
        reason: String,
    },
    /// The KDF failed (it does not, with the fixed parameters used here).
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

impl Keys {
    /// Derive the keys of `secret` for `cluster_id`.
    fn derive(cluster_id: &str, secret: &Secret) -> Result<Self, KeyError> {
        let params = argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, 1, Some(32))
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        // The cluster id salts the derivation: the same secret gives other keys elsewhere.
        let mut salt = b"socketioxide-cluster v1 salt\0".to_vec();
        salt.extend_from_slice(cluster_id.as_bytes());
        let mut master = [0u8; 32];
        argon
            .hash_password_into(&secret.0, &salt, &mut master)
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"socketioxide-cluster v1").extract(&master);
        let expand = |label: &[u8], out: &mut [u8]| {
            prk.expand(&[label], Len(out.len()))
                .and_then(|okm| okm.fill(out))
                .map_err(|_| KeyError::Kdf("HKDF output length".into()))
        };
        let mut keys = Keys {
            mesh: [0; 32],
            gossip: [0; 32],
            gossip_id: [0; 4],
        };
        expand(b"mesh proof", &mut keys.mesh)?;
        expand(b"gossip seal", &mut keys.gossip)?;
        expand(b"gossip key id", &mut keys.gossip_id)?;
        Ok(keys)
    }
}

/// Check every secret of a keyring and derive its keys (the first signs and seals). Costs
/// about 50 ms of CPU per secret: call it from a blocking task.
///
/// The cluster id salts the derivation, and only it can: it is the one setting besides the
/// secret that every node has alike (a cluster that keeps the default id shares its salt
/// with every other that does: the configuration warns of it at start).
pub(crate) fn derive_keyring(cluster_id: &str, secrets: &[Secret]) -> Result<Vec<Keys>, KeyError> {
    secrets
        .iter()
        .enumerate()
        .map(|(index, s)| {
            s.check()
                .map_err(|reason| KeyError::Weak { index, reason })?;
            Keys::derive(cluster_id, s)
        })
        .collect()
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A strong secret for tests (64 hex characters).
    pub(crate) const SECRET: &str =
        "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";
    /// Another one.
    pub(crate) const OTHER: &str =
        "3c5e7a9b1d2f4061a8c0e2b4d6f8a0b2c4e6f8091b3d5f7a9c1e3b5d7f9a1c3e";

    #[test]
    fn short_or_guessable_secrets_are_refused_and_random_ones_accepted() {
        for weak in [
            "change-me",
            "hunter2",
            "change-me-change-me-change-me-change-me",
            "passwordpasswordpasswordpassword",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "0123456789012345678901234567890123456789",
            "qwertyuiopasdfghjklzxcvbnmqwertyuiop",
            "abcdefghijklmnopqrstuvwxyzabcdefghij",
        ] {
            let err = Secret::from(weak).check().expect_err(weak);
            assert!(
                err.contains("characters") || err.contains("guess"),
                "{weak}: {err}"
            );
        }
        for strong in [
            SECRET,
            OTHER,
            // `openssl rand -hex 16`, the shortest that passes.
            "b1946ac92492d2347c6235b4d2611184",
            // `openssl rand -base64 32`.
            "q8bM3xZ0u1wqkV7x0f1l2Jc8PqZr+X2bq9kq0o3yJcM=",
        ] {
            assert_eq!(Secret::from(strong).check(), Ok(()), "{strong}");
        }
        assert!(Secret::from(vec![0xffu8; 31]).check().is_err());
    }

    #[test]
    fn generated_secrets_skip_the_estimator_and_patterned_ones_do_not() {
        for random in [
            SECRET,
            OTHER,
            // `openssl rand -base64 32`.
            "q8bM3xZ0u1wqkV7x0f1l2Jc8PqZr+X2bq9kq0o3yJcM=",
        ] {
            assert!(generated(random), "{random}");
        }
        for patterned in [
            // Short of 256 bits.
            "b1946ac92492d2347c6235b4d2611184",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
            // A run of one character, a sequence, few distinct characters.
            "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1aeeeee",
            "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a56789",
            "abcdabdcadbcacbdacdbbacdbadcbcadbcdabdacbdcacabdcadbcbadcbdacdab",
            // Not hex or base64.
            "correct horse battery staple correct horse battery staple 123456",
        ] {
            assert!(!generated(patterned), "{patterned}");
        }
    }

    #[test]
    fn secrets_that_are_not_text_are_judged_too() {
        for weak in [
            vec![0xffu8; 40],
            (0x80u8..0xc0).collect::<Vec<u8>>(),
            [0xfe, 0xff].repeat(20),
        ] {
            assert!(
                Secret::from(weak.clone()).check().is_err(),
                "{weak:02x?} is accepted"
            );
        }
        // 32 random bytes (not UTF-8).
        let random: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&SECRET[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert!(std::str::from_utf8(&random).is_err());
        assert_eq!(Secret::from(random).check(), Ok(()));
    }

    #[test]
    fn keys_depend_on_secret_and_cluster_id_and_differ_per_use() {
        let a = Keys::derive("c", &Secret::from(SECRET)).unwrap();
        let again = Keys::derive("c", &Secret::from(SECRET)).unwrap();
        assert_eq!(a.mesh, again.mesh, "deterministic");
        assert_eq!(a.gossip_id, again.gossip_id);
        let other_cluster = Keys::derive("d", &Secret::from(SECRET)).unwrap();
        let other_secret = Keys::derive("c", &Secret::from(OTHER)).unwrap();
        assert_ne!(a.mesh, other_cluster.mesh);
        assert_ne!(a.mesh, other_secret.mesh);
        assert_ne!(a.mesh, a.gossip);
        assert_ne!(a.gossip_id, other_secret.gossip_id);
    }

    #[test]
    fn a_keyring_names_its_weak_secret() {
        let err = derive_keyring("c", &[Secret::from(SECRET), Secret::from("short")]).unwrap_err();
        assert!(err.to_string().contains("secret 1"), "{err}");
        assert_eq!(
            derive_keyring("c", &[Secret::from(SECRET), Secret::from(OTHER)])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn debug_output_redacts() {
        let k = Keys::derive("c", &Secret::from(SECRET)).unwrap();
        assert_eq!(format!("{k:?}"), "Keys(<redacted>)");
        assert!(!format!("{:?}", Secret::from(SECRET)).contains("8f3a"));
    }
}
