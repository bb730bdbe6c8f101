//! Advertise addresses: a node is reached through the addresses it advertises, not the
//! ones it binds; and a node bound to `0.0.0.0` advertises this host's outbound IP.
//!
//! Gossip only: the advertised addresses are gossip's and the mesh's.
#![cfg(feature = "cluster-gossip")]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use common::{relay::Relay, *};
use socketioxide::extract::SocketRef;

/// A free UDP port of 127.0.0.1 (free when probed).
fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
}

/// Node `c` binds two loopback ports but advertises two relays in front of them: the
/// cluster forms, broadcasts cross both ways, the other node's view of `c` holds the
/// advertised addresses, and the traffic went through the relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_reached_through_its_advertised_addresses() {
    init_tracing();
    let id = cluster_id();
    let a = start_gossip(config(&id, None)).await;
    let (gossip_bind, mesh_bind) = (free_udp(), free_udp());
    let gossip_relay = Relay::start(gossip_bind).await;
    let mesh_relay = Relay::start(mesh_bind).await;
    let c = start_gossip(
        config(&id, Some(a.cluster().gossip_addr()))
            .with_gossip_addr(gossip_bind)
            .with_mesh_addr(mesh_bind)
            .with_gossip_advertise_addr(gossip_relay.addr)
            .with_mesh_advertise_addr(mesh_relay.addr),
    )
    .await;
    assert_eq!(c.cluster().gossip_addr(), gossip_relay.addr);
    assert_eq!(c.cluster().mesh_addr(), mesh_relay.addr);
    ns_everywhere(&[&a, &c], "/", async |_: SocketRef<Adapter>| {}).await;

    let seen = a.cluster().members();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].gossip_addr, gossip_relay.addr, "{seen:?}");
    assert_eq!(seen[0].mesh_addr, mesh_relay.addr, "{seen:?}");

    let [(_, mut ra, _), (_, mut rc, _)] = one_per_node([&a, &c], "/").await;
    a.io.emit("m", "from a").await.unwrap();
    c.io.emit("m", "from c").await.unwrap();
    for rx in [&mut ra, &mut rc] {
        let mut got = vec![recv(rx, ARRIVES).await, recv(rx, ARRIVES).await];
        got.sort();
        assert_eq!(got, [r#"42["m","from a"]"#, r#"42["m","from c"]"#]);
    }
    assert!(
        gossip_relay.forwarded() > 0,
        "gossip went through the relay"
    );
    assert!(
        mesh_relay.forwarded() > 0,
        "the mesh went through the relay"
    );
    println!(
        "through the relays: {} gossip and {} mesh datagrams",
        gossip_relay.forwarded(),
        mesh_relay.forwarded()
    );
}

/// Bound to `0.0.0.0` without advertise addresses, a node advertises the IP of this host's
/// outbound interface (the one a UDP socket connected outwards gets; connecting sends
/// nothing) with its bound ports. Nothing is sent: the node has no peer.
#[tokio::test]
async fn unspecified_bind_addresses_advertise_the_outbound_ip() {
    init_tracing();
    let outbound = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(Ipv4Addr::LOCALHOST.into());
    let node = start_gossip(
        config(&cluster_id(), None)
            .with_gossip_addr("0.0.0.0:0".parse().unwrap())
            .with_mesh_addr("0.0.0.0:0".parse().unwrap()),
    )
    .await;
    for addr in [node.cluster().gossip_addr(), node.cluster().mesh_addr()] {
        assert_eq!(addr.ip(), outbound, "{addr}");
        assert_ne!(addr.port(), 0, "{addr}");
    }
    node.cluster().shutdown().await;
}
