//! Mutual authentication of a mesh connection with the cluster secret.
//!
//! Each side sends a [`Hello`] whose MAC is an HMAC-SHA256, under the mesh key derived from
//! the cluster secret (Argon2id, see `keys`), of the role, the TLS exporter secret of this
//! very connection, the cluster id and the sender's identity. A relay in the middle
//! terminates two TLS sessions with two different exporter secrets, so the proofs it forwards
//! do not verify; testing a guess of the secret against a proof costs an Argon2id run.
//! Verification is constant-time and tries every key of the keyring; signing uses the first.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::gossip::wire::Hello;

/// TLS exporter label for the authentication key material.
pub(crate) const EXPORTER_LABEL: &[u8] = b"EXPORTER-socketioxide-cluster-auth";

/// Which side of the connection made a [`Hello`]: a proof cannot be replayed the other way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The side that opened the connection.
    Client,
    /// The side that accepted it.
    Server,
}

/// Why a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// The peer runs without authentication while this node requires it.
    #[error("peer sent no proof of the cluster secret (is it running with insecure_no_auth?)")]
    MissingProof,
    /// The proof does not verify with any secret of the keyring.
    #[error("peer's proof does not match any cluster secret (wrong secret or cluster id)")]
    BadProof,
}

/// A mesh key: derived from one secret of the cluster's keyring.
pub(crate) type MeshKey = [u8; 32];

/// The mesh keys of this node, or none in insecure mode.
#[derive(Clone)]
pub(crate) struct Keyring {
    cluster_id: String,
    secrets: Option<Vec<MeshKey>>,
}

impl Keyring {
    /// A keyring; `None` means authentication is off.
    pub(crate) fn new(cluster_id: String, secrets: Option<Vec<MeshKey>>) -> Self {
        Self {
            cluster_id,
            secrets,
        }
    }

    /// The proof to put in our own [`Hello`].
    pub(crate) fn sign(&self, role: Role, exporter: &[u8], hello: &Hello) -> Option<[u8; 32]> {
        let key = self.secrets.as_ref()?.first()?;
        Some(
            self.mac(key, role, exporter, hello)
                .finalize()
                .into_bytes()
                .into(),
        )
    }

    /// Check the proof in a peer's [`Hello`].
    pub(crate) fn verify(
        &self,
        role: Role,
        exporter: &[u8],
        hello: &Hello,
    ) -> Result<(), AuthError> {
        let Some(secrets) = &self.secrets else {
            return Ok(());
        };
        let proof = hello.mac.ok_or(AuthError::MissingProof)?;
        let ok = secrets.iter().any(|key| {
            self.mac(key, role, exporter, hello)
                .verify_slice(&proof)
                .is_ok()
        });
        if ok { Ok(()) } else { Err(AuthError::BadProof) }
    }

    fn mac(&self, key: &MeshKey, role: Role, exporter: &[u8], hello: &Hello) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any size"));
        mac.update(b"socketioxide-cluster auth v1\0");
        mac.update(match role {
            Role::Client => b"C",
            Role::Server => b"S",
        });
        for field in [
            exporter,
            self.cluster_id.as_bytes(),
            hello.node_name.as_bytes(),
            hello.mesh_addr.as_bytes(),
            hello.gossip_addr.as_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.update(&hello.generation.to_be_bytes());
        mac
    }
}

/// A stand-in mesh key for tests, named by a string (its SHA-256).
#[cfg(test)]
pub(crate) fn key(name: &str) -> MeshKey {
    use sha2::Digest;
    Sha256::digest(name.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            node_name: "n1".into(),
            generation: 7,
            mesh_addr: "127.0.0.1:1".into(),
            gossip_addr: "127.0.0.1:2".into(),
            mac: None,
        }
    }

    /// A keyring of stand-in keys, one per name.
    fn ring(secrets: &[&str]) -> Keyring {
        Keyring::new("c".into(), Some(secrets.iter().map(|s| key(s)).collect()))
    }

    fn signed(ring: &Keyring, role: Role, exporter: &[u8]) -> Hello {
        let mut h = hello();
        h.mac = ring.sign(role, exporter, &h);
        h
    }

    #[test]
    fn same_secret_verifies_and_rotation_keyring_accepts_old_and_new() {
        let h = signed(&ring(&["new"]), Role::Client, &[1; 32]);
        assert_eq!(ring(&["new"]).verify(Role::Client, &[1; 32], &h), Ok(()));
        assert_eq!(
            ring(&["old", "new"]).verify(Role::Client, &[1; 32], &h),
            Ok(())
        );
        let old = signed(&ring(&["old", "new"]), Role::Client, &[1; 32]);
        assert_eq!(
            ring(&["new", "old"]).verify(Role::Client, &[1; 32], &old),
            Ok(())
        );
    }

    #[test]
    fn wrong_secret_other_session_other_role_or_tampering_fail() {
        let h = signed(&ring(&["s"]), Role::Client, &[1; 32]);
        let verifier = ring(&["s"]);
        assert_eq!(
            ring(&["t"]).verify(Role::Client, &[1; 32], &h),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            verifier.verify(Role::Client, &[2; 32], &h),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            verifier.verify(Role::Server, &[1; 32], &h),
            Err(AuthError::BadProof)
        );
        let mut renamed = h.clone();
        renamed.node_name = "n2".into();
        assert_eq!(
            verifier.verify(Role::Client, &[1; 32], &renamed),
            Err(AuthError::BadProof)
        );
        let other_cluster = Keyring::new("d".into(), Some(vec![key("s")]));
        assert_eq!(
            other_cluster.verify(Role::Client, &[1; 32], &h),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            verifier.verify(Role::Client, &[1; 32], &hello()),
            Err(AuthError::MissingProof)
        );
    }

    #[test]
    fn insecure_keyring_signs_nothing_and_accepts_anything() {
        let insecure = Keyring::new("c".into(), None);
        assert_eq!(insecure.sign(Role::Client, &[1; 32], &hello()), None);
        assert_eq!(insecure.verify(Role::Client, &[1; 32], &hello()), Ok(()));
    }
}
