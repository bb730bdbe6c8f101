//! TLS 1.3 for the mesh, in one of two modes.
//!
//! - **Shared secret** (default): an ephemeral self-signed certificate per node, and a
//!   verifier that accepts any certificate but still checks the handshake signature.
//!   Identity is not proven by certificates: both sides prove the cluster secret afterwards,
//!   bound to this very TLS session (see [`super::auth`]). The certificate only has to be
//!   valid for the handshake, so that the session keys are authentic for whoever holds the key.
//! - **Cluster CA** ([`TlsFiles`]): every node has a certificate signed by the cluster's CA
//!   naming it (a DNS name in its subject alternative names). Both sides require and verify
//!   the other's chain to the CA (mutual TLS); once the peer's [`Hello`](crate::gossip::wire::Hello)
//!   says which node it is, [`check_peer_name`] makes sure its certificate names that very
//!   node, exactly, so that no node can speak for another. The secret's proof still runs.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::{
    DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{CryptoProvider, verify_tls13_signature},
    pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime, pem::PemObject,
    },
    server::{ParsedCertificate, WebPkiClientVerifier},
};

use crate::gossip::wire::ALPN;

/// The PEM files of the cluster-CA mode (see `GossipAdapterConfig::with_tls_ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// The cluster CA's certificate(s): the only issuer peers' certificates may come from.
    pub(crate) ca: PathBuf,
    /// This node's certificate, signed by the CA (then any intermediates).
    pub(crate) cert: PathBuf,
    /// This node's private key.
    pub(crate) key: PathBuf,
}

/// The server name every node uses for every other (names are checked against the
/// [`Hello`](crate::gossip::wire::Hello) instead, see [`check_peer_name`]).
pub(crate) const SERVER_NAME: &str = "socketioxide-cluster";

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A file of the cluster-CA mode is unreadable, not PEM, or does not fit the others.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls, quinn or rcgen refused the configuration.
    #[error("{0}")]
    Setup(Box<dyn std::error::Error + Send + Sync>),
}

impl TlsError {
    fn setup(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Setup(e.into())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server and client crypto configs for one node: with a fresh self-signed certificate, or
/// with the cluster CA's files.
pub(crate) fn configs(
    ca: Option<&TlsFiles>,
) -> Result<(QuicServerConfig, QuicClientConfig), TlsError> {
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::setup)?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::setup)?
        .dangerous();
    let (mut server, mut client) = match ca {
        None => {
            let key = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
                .map_err(TlsError::setup)?;
            let cert = CertificateDer::from(key.cert.der().to_vec());
            let der =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
            let server = server
                .with_no_client_auth()
                .with_single_cert(vec![cert], der)
                .map_err(TlsError::setup)?;
            let client = client
                .with_custom_certificate_verifier(Arc::new(ServerCert {
                    roots: None,
                    provider: provider(),
                }))
                .with_no_client_auth();
            (server, client)
        }
        Some(files) => {
            let identity = Identity::load(files)?;
            let roots = Arc::new(identity.roots);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::File {
                    path: files.ca.clone(),
                    reason: e.to_string(),
                })?;
            let key_mismatch = |e: rustls::Error| TlsError::File {
                path: files.key.clone(),
                reason: format!("does not fit the certificate {}: {e}", files.cert.display()),
            };
            let server = server
                .with_client_cert_verifier(verifier)
                .with_single_cert(identity.chain.clone(), identity.key.clone_key())
                .map_err(key_mismatch)?;
            let client = client
                .with_custom_certificate_verifier(Arc::new(ServerCert {
                    roots: Some(roots),
                    provider: provider(),
                }))
                .with_client_auth_cert(identity.chain, identity.key)
                .map_err(key_mismatch)?;
            (server, client)
        }
    };
    server.alpn_protocols = vec![ALPN.to_vec()];
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((
        QuicServerConfig::try_from(server).map_err(TlsError::setup)?,
        QuicClientConfig::try_from(client).map_err(TlsError::setup)?,
    ))
}

/// This node's certificate chain and key, and the CA it trusts, read from their files.
struct Identity {
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let bad = |path: &Path, reason: String| TlsError::File {
            path: path.to_path_buf(),
            reason,
        };
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let pem = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(path, format!("not a PEM certificate file: {e}")))?;
            if certs.is_empty() {
                return Err(bad(path, "holds no PEM certificate".into()));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for cert in certs(&files.ca)? {
            roots
                .add(cert)
                .map_err(|e| bad(&files.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let chain = certs(&files.cert)?;
        let key_pem =
            std::fs::read(&files.key).map_err(|e| bad(&files.key, format!("cannot read: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| bad(&files.key, format!("not a PEM private key: {e}")))?;
        // A certificate the CA did not sign would be refused by every peer: say so now.
        let leaf = ParsedCertificate::try_from(&chain[0])
            .map_err(|e| bad(&files.cert, format!("unusable certificate: {e}")))?;
        verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|e| {
            bad(
                &files.cert,
                format!("not valid under the CA {}: {e}", files.ca.display()),
            )
        })?;
        Ok(Self { roots, chain, key })
    }
}

/// Cluster-CA mode: the certificate of the peer on `conn` must name `node`: one of the DNS
/// names in its subject alternative names is `node`, byte for byte. Not DNS matching, which
/// ignores case and a final dot and expands wildcards: one certificate names exactly the
/// node names it holds (`chat-0` does not name `CHAT-0` nor `chat-0.`, and `*.chat.svc`
/// names no node). Its chain to the CA was verified during the handshake.
pub(crate) fn check_peer_name(conn: &quinn::Connection, node: &str) -> Result<(), String> {
    let identity = conn
        .peer_identity()
        .ok_or("the peer presented no certificate")?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "the peer's certificate is of an unknown kind")?;
    let leaf = chain.first().ok_or("the peer presented no certificate")?;
    let cert =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("unusable certificate: {e}"))?;
    if cert.valid_dns_names().any(|name| name == node) {
        Ok(())
    } else {
        Err(format!("its certificate does not name node {node:?}"))
    }
}

/// The connecting side's check of the server certificate. Without a CA (shared-secret
/// mode) any certificate goes: identity is proven by the secret afterwards. In cluster-CA
/// mode the chain must lead to the CA; its name is checked once its
/// [`Hello`](crate::gossip::wire::Hello) says who it is ([`check_peer_name`]). Either way the TLS 1.3
/// handshake signature made with the certificate is verified.
#[derive(Debug)]
struct ServerCert {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
