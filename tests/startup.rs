//! Start-up errors of the gossip backend are clear and name what is wrong.
#![cfg(feature = "cluster-gossip")]

use std::{net::SocketAddr, time::Duration};

use socketioxide::{SocketIo, adapter::Emitter, extract::SocketRef};
use socketioxide_cluster::{Error, GossipAdapter, GossipAdapterConfig, GossipAdapterCtr};

#[path = "common/logs.rs"]
mod logs;

/// The secret of these tests' nodes: it must never be printed.
const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";
/// The second secret of a keyring, never printed either.
const OTHER_SECRET: &str = "2c4e6a8b0d1f3a5c7e9b1d3f5a7c9e0b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a13";

fn config() -> GossipAdapterConfig {
    GossipAdapterConfig::new()
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_secret(SECRET)
}

#[tokio::test]
async fn missing_secret_is_refused() {
    let err = GossipAdapterCtr::new(config().with_secrets(Vec::<String>::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingSecret), "{err}");
    assert!(
        err.to_string().contains("insecure_no_auth"),
        "the way out is named: {err}"
    );
}

#[tokio::test]
async fn weak_secrets_are_refused_with_a_way_to_make_a_strong_one() {
    let strong = SECRET;
    for (secrets, what) in [
        (vec!["change-me"], "characters"),
        (vec!["change-me-change-me-change-me-change-me"], "guess"),
        (vec![strong, "old-short-one"], "secret 1"),
    ] {
        let err = GossipAdapterCtr::new(config().with_secrets(secrets.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::WeakSecret { .. }),
            "{secrets:?}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(what), "{secrets:?}: {msg}");
        assert!(msg.contains("openssl rand -hex 32"), "{msg}");
        assert!(
            !msg.contains("change-me") && !msg.contains("old-short"),
            "no secret in it: {msg}"
        );
    }
}

/// Start a node on a UDP port another socket holds, set by `on` in the test config: the
/// start-up error, and the address of that port.
async fn start_on_taken_port(
    on: impl FnOnce(GossipAdapterConfig, SocketAddr) -> GossipAdapterConfig,
) -> (Error, SocketAddr) {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = GossipAdapterCtr::new(on(config(), addr)).await.unwrap_err();
    (err, addr)
}

#[tokio::test]
async fn mesh_port_in_use_is_named() {
    let (err, addr) = start_on_taken_port(GossipAdapterConfig::with_mesh_addr).await;
    assert!(matches!(err, Error::MeshBind { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn gossip_port_in_use_is_named() {
    let (err, addr) = start_on_taken_port(GossipAdapterConfig::with_gossip_addr).await;
    assert!(matches!(err, Error::GossipBind { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn unusable_seeds_are_refused() {
    for seed in ["no-port-here", ":7946", "host:notaport", "host:99999"] {
        let err = GossipAdapterCtr::new(config().with_seeds([seed]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Seed { .. }), "{seed}: {err}");
        assert!(err.to_string().contains(seed), "{err}");
    }
}

#[tokio::test]
async fn host_name_seeds_and_insecure_mode_start() {
    let ctr = GossipAdapterCtr::new(
        config()
            .insecure_no_auth()
            .with_seeds(["localhost:7946", "127.0.0.1:7946"]),
    )
    .await
    .expect("host names are fine, resolved again later");
    let cluster = ctr.cluster();
    assert!(cluster.members().is_empty());
    cluster.shutdown().await;
}

/// A numeric setting that cannot work stops the start with an error naming the builder
/// method, its variable and the range, before any port is bound.
#[tokio::test]
async fn numeric_settings_outside_their_range_are_refused() {
    use std::time::Duration;
    type C = GossipAdapterConfig;
    type Set = fn(C) -> C;
    let cases: [(Set, &str); 4] = [
        (
            |c| c.with_gossip_interval(Duration::ZERO),
            "with_gossip_interval (SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS)",
        ),
        (
            |c| c.with_peer_timeout(Duration::ZERO),
            "with_peer_timeout (SOCKETIO_CLUSTER_PEER_TIMEOUT_MS)",
        ),
        (
            |c| c.with_request_timeout(Duration::from_secs(7200)),
            "with_request_timeout",
        ),
        (|c| c.with_max_frame_size(0), "with_max_frame_size"),
    ];
    for (set, named) in cases {
        let err = GossipAdapterCtr::new(set(config())).await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(named) && msg.contains("allowed range"),
            "{msg}"
        );
    }
}

type A = GossipAdapter<Emitter>;

/// The secret appears neither in `Debug` output (configuration, constructor, cluster
/// handle) nor in any log line at any level, through start-up, a cluster forming with a
/// keyring of two secrets, a message crossing it, a node with a wrong secret refused, and
/// a graceful leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_never_printed() {
    logs::capture();
    let id = format!("startup-{}", std::process::id());
    let keyring = || {
        config()
            .with_cluster_id(&id)
            .with_gossip_interval(Duration::from_millis(50))
            .with_secrets([SECRET, OTHER_SECRET])
    };
    let config_a = keyring();
    let debug_config = format!("{config_a:?}");
    let a = GossipAdapterCtr::new(config_a).await.expect("a starts");
    let seed = a.cluster().gossip_addr().to_string();
    let b = GossipAdapterCtr::new(keyring().with_seeds([seed.clone()]))
        .await
        .expect("b starts");
    let (ca, cb) = (a.cluster(), b.cluster());
    let debug_ctr = format!("{a:?} {ca:?}");

    // A node with another secret is refused (its gossip, or its mesh proof), which is
    // logged.
    let intruder = GossipAdapterCtr::new(
        config()
            .with_cluster_id(&id)
            .with_gossip_interval(Duration::from_millis(50))
            .with_secret("d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2")
            .with_seeds([seed]),
    )
    .await
    .expect("the intruder starts");

    let (_svc_a, io_a) = SocketIo::builder().with_adapter::<A>(a).build_svc();
    let (_svc_b, io_b) = SocketIo::builder().with_adapter::<A>(b).build_svc();
    io_a.ns("/", async |_: SocketRef<A>| {}).await.unwrap();
    io_b.ns("/", async |_: SocketRef<A>| {}).await.unwrap();
    let (_tx, mut rx) = io_b.new_dummy_sock("/", ()).await;
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("connect in time");
    // Both constructors returned, so a and b verified each other with the keyring: the
    // first message crosses the cluster (sent once).
    io_a.emit("m", &1).await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message crossed the cluster")
        .expect("b's socket is open");
    assert_eq!(String::from(p), r#"42["m",1]"#);
    // The intruder was refused at least once, with its reason logged.
    let mut refused = false;
    for _ in 0..250 {
        // Refused at the gossip port (sealed with another key), or at the mesh.
        if !logs::lines_with("gossip datagram refused").is_empty()
            || !logs::lines_with("does not match any cluster secret").is_empty()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the intruder's refusal is logged");
    intruder.cluster().shutdown().await;
    cb.shutdown().await;
    ca.shutdown().await;

    for secret in [SECRET, OTHER_SECRET] {
        assert!(!debug_config.contains(secret), "{debug_config}");
        assert!(!debug_ctr.contains(secret), "{debug_ctr}");
        let leaked = logs::lines_with(secret);
        assert!(leaked.is_empty(), "the secret is logged: {leaked:?}");
    }
    assert!(debug_config.contains("redacted"), "{debug_config}");
    assert!(
        logs::text().lines().count() > 20,
        "the logs were captured, TRACE included"
    );
}
