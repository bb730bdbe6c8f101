//! Start-up errors of the gossip backend are clear and name what is wrong.
#![cfg(feature = "cluster-gossip")]

use std::net::SocketAddr;

use socketioxide_cluster::{Error, GossipAdapterConfig, GossipAdapterCtr};

fn config() -> GossipAdapterConfig {
    GossipAdapterConfig::new()
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_secret("5d1f3b7a9c2e4068b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7")
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
    let strong = "5d1f3b7a9c2e4068b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7";
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
    assert!(
        !format!("{ctr:?}")
            .contains("5d1f3b7a9c2e4068b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7")
    );
    cluster.shutdown().await;
}
