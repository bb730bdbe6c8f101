//! Cluster-CA mode: every node has a certificate signed by the cluster's CA naming it, both
//! sides of a mesh connection verify the other's (mutual TLS), and a node cannot claim
//! another's name. Real nodes on 127.0.0.1; certificates made here with rcgen.
#![cfg(feature = "cluster-gossip")]

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use socketioxide::extract::SocketRef;
use socketioxide_cluster::{ClusterAdapterCtr, GossipAdapterConfig};

/// A strong test secret (64 hex characters).
const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

/// Everything logged by this test binary, for the tests that check a refusal's reason.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;
impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,socketioxide_cluster=debug")
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|p| p.into_inner())).contains(needle)
}

/// A directory of PEM files for one test, removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The three files of one node.
struct NodeFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A cluster CA, able to issue node certificates into `dir`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cluster-ca-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn ca(&self, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = self.write(&format!("{name}.pem"), &issuer.pem());
        Ca { issuer, pem }
    }

    /// A certificate naming `dns_name`, issued by `ca`, stored as `file`.pem / `file`.key.
    fn node(&self, ca: &Ca, dns_name: &str, file: &str) -> NodeFiles {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![dns_name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, dns_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        NodeFiles {
            ca: ca.pem.clone(),
            cert: self.write(&format!("{file}.pem"), &cert.pem()),
            key: self.write(&format!("{file}.key"), &key.serialize_pem()),
        }
    }
}

fn ca_config(
    id: &str,
    name: &str,
    files: &NodeFiles,
    seed: Option<std::net::SocketAddr>,
) -> GossipAdapterConfig {
    config(id, seed)
        .with_secret(SECRET)
        .with_node_name(name)
        .with_tls_ca(&files.ca, &files.cert, &files.key)
}

/// CA-mode nodes of cluster `id`, each with a certificate of `ca` giving its name, the
/// first the seed of the others; formed: each sees exactly the others.
async fn ca_cluster<const N: usize>(
    id: &str,
    pki: &Pki,
    ca: &Ca,
    named: [&str; N],
) -> [TestNode; N] {
    let mut nodes = Vec::with_capacity(N);
    let mut seed = None;
    for name in named {
        let node = start_gossip(ca_config(id, name, &pki.node(ca, name, name), seed)).await;
        seed = seed.or(Some(node.cluster().gossip_addr()));
        nodes.push(node);
    }
    let sees_the_others = |node: &TestNode, me: &str| {
        let mut have = names(node);
        have.sort();
        let mut want: Vec<&str> = named.iter().filter(|n| **n != me).copied().collect();
        want.sort();
        have == want
    };
    assert!(
        wait_until(Duration::from_secs(20), || nodes
            .iter()
            .zip(named)
            .all(|(n, me)| sees_the_others(n, me)))
        .await,
        "the CA-mode nodes {named:?} did not form a cluster: {:?}",
        nodes.iter().map(names).collect::<Vec<_>>()
    );
    nodes
        .try_into()
        .map_err(|_| ())
        .expect("as many nodes as names")
}

/// The node `name` stays out of the cluster of `members` for several gossip rounds, and the
/// cluster keeps its own members. (An intruder holding a certificate of the CA may still
/// count the honest nodes as members: their proofs to it are genuine.)
async fn stays_out(members: &[&TestNode], name: &str) {
    // Long enough for gossip to show the intruder and for several connection attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for m in members {
        assert!(
            !names(m).iter().any(|n| n == name),
            "{name} was accepted: {:?}",
            names(m)
        );
        assert_eq!(names(m).len(), members.len() - 1, "{:?}", names(m));
    }
}

/// `intruder` could not verify anyone either: the TLS handshake itself failed both ways.
fn sees_nobody(intruder: &TestNode) {
    assert!(
        intruder.cluster().members().is_empty(),
        "the intruder sees members: {:?}",
        names(intruder)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_certificates_of_the_cluster_ca_form_a_cluster_and_broadcast() {
    capture_logs();
    let pki = Pki::new("form");
    let ca = pki.ca("cluster-ca");
    let id = cluster_id();
    let nodes = ca_cluster(&id, &pki, &ca, ["a", "b", "c"]).await;
    ns_everywhere(
        &nodes.iter().collect::<Vec<_>>(),
        "/",
        async |_: SocketRef<Adapter>| {},
    )
    .await;
    let [(_, mut ra, _), (_, mut rb, _), (_, mut rc, _)] =
        one_per_node([&nodes[0], &nodes[1], &nodes[2]], "/").await;
    nodes[0].io.emit("hello", &"from a").await.unwrap();
    for rx in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(recv(rx, ARRIVES).await, r#"42["hello","from a"]"#);
    }
    nodes[2].io.emit("hello", &"from c").await.unwrap();
    for rx in [&mut ra, &mut rb, &mut rc] {
        assert_eq!(recv(rx, ARRIVES).await, r#"42["hello","from c"]"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_claim_a_name_its_certificate_does_not_give() {
    capture_logs();
    let pki = Pki::new("claim");
    let ca = pki.ca("cluster-ca");
    let id = cluster_id();
    let [a, b] = ca_cluster(&id, &pki, &ca, ["a", "b"]).await;
    let seed = Some(a.cluster().gossip_addr());
    // A certificate of the cluster CA naming "b", used by a node that claims to be "c".
    let stolen = pki.node(&ca, "b", "stolen-b");
    let _c = start_gossip(ca_config(&id, "c", &stolen, seed)).await;
    stays_out(&[&a, &b], "c").await;
    assert!(
        logged(r#"claims to be node "c", but its certificate does not name node "c""#),
        "no refusal with its reason was logged"
    );
}

/// A certificate names exactly one node: the one whose name it holds, byte for byte. The
/// holder of a's certificate cannot join as `A` or `a.` (the same name to DNS, which
/// ignores case and a final dot), and a wildcard certificate names no node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_names_one_node_exactly() {
    capture_logs();
    let pki = Pki::new("exact");
    let ca = pki.ca("cluster-ca");
    let id = cluster_id();
    let [a, b] = ca_cluster(&id, &pki, &ca, ["a.chat.svc", "b.chat.svc"]).await;
    let seed = Some(a.cluster().gossip_addr());
    let a_cert = pki.node(&ca, "a.chat.svc", "a-again");
    let wildcard = pki.node(&ca, "*.chat.svc", "wildcard");
    let claims = [
        ("A.CHAT.SVC", &a_cert),
        ("a.chat.svc.", &a_cert),
        ("c.chat.svc", &wildcard),
    ];
    let mut intruders = Vec::new();
    for (name, files) in claims {
        intruders.push(start_gossip(ca_config(&id, name, files, seed)).await);
    }
    for (name, _) in claims {
        stays_out(&[&a, &b], name).await;
        assert!(
            logged(&format!(
                r#"claims to be node "{name}", but its certificate does not name node "{name}""#
            )),
            "no refusal of {name} with its reason was logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_or_none_is_refused() {
    capture_logs();
    let pki = Pki::new("other");
    let ca = pki.ca("cluster-ca");
    let id = cluster_id();
    let [a, b] = ca_cluster(&id, &pki, &ca, ["a", "b"]).await;
    let seed = Some(a.cluster().gossip_addr());

    // A node whose certificate (and CA file) come from another CA, with the secret.
    let rogue_ca = pki.ca("rogue-ca");
    let rogue = start_gossip(ca_config(&id, "d", &pki.node(&rogue_ca, "d", "d"), seed)).await;
    stays_out(&[&a, &b], "d").await;
    sees_nobody(&rogue);
    drop(rogue);

    // A node with the secret but no certificate at all (shared-secret mode).
    let plain = start_gossip(config(&id, seed).with_secret(SECRET).with_node_name("e")).await;
    stays_out(&[&a, &b], "e").await;
    sees_nobody(&plain);
    assert!(
        logged("refused mesh connection: TLS"),
        "no TLS refusal was logged"
    );
}

#[tokio::test]
async fn unusable_files_stop_the_node_at_start_naming_the_file() {
    let pki = Pki::new("files");
    let ca = pki.ca("cluster-ca");
    let good = pki.node(&ca, "n1", "n1");
    let start = |ca: &Path, cert: &Path, key: &Path| {
        let config = config(&cluster_id(), None)
            .with_secret(SECRET)
            .with_node_name("n1")
            .with_tls_ca(ca, cert, key);
        async move {
            match ClusterAdapterCtr::gossip(config).await {
                Ok(_) => panic!("the node started"),
                Err(e) => e.to_string(),
            }
        }
    };
    let missing = pki.dir.join("missing.pem");
    let e = start(&missing, &good.cert, &good.key).await;
    assert!(
        e.contains(&missing.display().to_string()) && e.contains("cannot read"),
        "{e}"
    );

    let not_pem = pki.write("not-pem.pem", "hello");
    let e = start(&good.ca, &not_pem, &good.key).await;
    assert!(e.contains(&not_pem.display().to_string()), "{e}");

    // The key of another node: does not fit the certificate.
    let other = pki.node(&ca, "n2", "n2");
    let e = start(&good.ca, &good.cert, &other.key).await;
    assert!(
        e.contains(&other.key.display().to_string()) && e.contains("does not fit"),
        "{e}"
    );

    // A certificate the CA did not sign.
    let rogue_ca = pki.ca("rogue-ca");
    let rogue = pki.node(&rogue_ca, "n1", "rogue");
    let e = start(&good.ca, &rogue.cert, &rogue.key).await;
    assert!(
        e.contains(&rogue.cert.display().to_string()) && e.contains("not valid under the CA"),
        "{e}"
    );
}
