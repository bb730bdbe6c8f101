//! The Redis backend over TLS (`rediss://`) against a real `redis-server` with TLS on: its
//! CA, server and client certificates are made here (rcgen), and it asks for a client
//! certificate, as managed Redis services with mutual TLS do. A broadcast reaches the other
//! node and the session store works; without the CA, or without the client certificate,
//! the start fails with a clear error.
#![cfg(all(feature = "redis", feature = "sessions"))]

#[path = "common/redis_server.rs"]
mod redis_server;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use socketioxide::{SocketIo, adapter::Emitter, extract::SocketRef};
use socketioxide_cluster::{
    ClusterAdapter, ClusterAdapterCtr,
    redis::{RedisAdapterConfig, RedisTls},
    sessions::SessionStoreConfig,
};
use tower_sessions::{SessionStore, session::Record};

type A = ClusterAdapter<Emitter>;

/// PEM files of a test CA, a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    dir: PathBuf,
    ca: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "socketioxide-cluster test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let leaf = |san: Vec<SanType>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = san;
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth);

        let dir = std::env::temp_dir().join(format!("redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, pem) in [
            ("ca.crt", ca.pem()),
            ("server.crt", server_cert),
            ("server.key", server_key),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        Self {
            dir,
            ca: ca.pem(),
            client_cert,
            client_key,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn tls(&self) -> RedisTls {
        RedisTls::new()
            .with_ca_cert_pem(self.ca.clone())
            .with_client_cert_pem(self.client_cert.clone(), self.client_key.clone())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` listening with TLS only, asking every client for a certificate.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(pki: &Pki) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &pki.path("server.crt")])
            .args(["--tls-key-file", &pki.path("server.key")])
            .args(["--tls-ca-cert-file", &pki.path("ca.crt")])
            .args(["--tls-auth-clients", "yes"])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen in time (built without TLS?)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(prefix: &str) -> RedisAdapterConfig {
    RedisAdapterConfig::new()
        .with_prefix(prefix.to_string())
        .with_request_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_carries_broadcasts_and_sessions() {
    if !redis_server::require("redis-server") {
        return;
    }
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let prefix = format!("tls-{}", std::process::id());

    // Without the CA the server's certificate is not trusted: the client has its
    // certificate, so only the check of the server's certificate can refuse it (the
    // system's roots do not hold the test CA).
    let without_ca =
        RedisTls::new().with_client_cert_pem(pki.client_cert.clone(), pki.client_key.clone());
    let untrusted =
        ClusterAdapterCtr::redis_with_tls(&redis.url(), config(&prefix), without_ca).await;
    let Err(e) = untrusted else {
        panic!("a certificate from an unknown CA is refused");
    };
    assert!(
        e.to_string().contains("UnknownIssuer"),
        "refused for the server's certificate: {e}"
    );
    // Without a client certificate the server refuses the connection.
    let no_client_cert = RedisTls::new().with_ca_cert_pem(pki.ca.clone());
    let refused =
        ClusterAdapterCtr::redis_with_tls(&redis.url(), config(&prefix), no_client_cert).await;
    assert!(refused.is_err(), "Redis asks for a client certificate");

    let mut nodes = Vec::new();
    for _ in 0..2 {
        let ctr = ClusterAdapterCtr::redis_with_tls(&redis.url(), config(&prefix), pki.tls())
            .await
            .expect("rediss:// with the test CA and client certificate");
        let store = ctr.session_store(SessionStoreConfig::new());
        let (_svc, io) = SocketIo::builder().with_adapter::<A>(ctr).build_svc();
        io.ns("/", async |_: SocketRef<A>| {}).await.unwrap();
        nodes.push((io, store));
    }
    let (a, b) = (&nodes[0], &nodes[1]);

    let (_tb, mut rb) = b.0.new_dummy_sock("/", ()).await;
    tokio::time::timeout(Duration::from_secs(2), rb.recv())
        .await
        .expect("connect packet");
    // Both constructors returned, and both namespaces exist: the first broadcast arrives
    // (sent once).
    a.0.emit("over-tls", &0).await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), rb.recv())
        .await
        .expect("a broadcast from A reached B's socket over rediss://")
        .expect("B's socket is open");
    assert_eq!(String::from(p), r#"42["over-tls",0]"#);

    let mut rec = Record {
        id: Default::default(),
        data: HashMap::from([("user".to_string(), serde_json::json!("ada"))]),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    a.1.create(&mut rec).await.expect("session saved over TLS");
    let on_b = b.1.load(&rec.id).await.expect("loaded over TLS");
    assert_eq!(
        on_b.and_then(|r| r.data.get("user").cloned()),
        Some(serde_json::json!("ada"))
    );
    b.1.delete(&rec.id).await.unwrap();
    assert!(a.1.load(&rec.id).await.unwrap().is_none());
}
