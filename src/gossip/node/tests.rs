//! The node with real sockets on loopback, against a peer that holds the secret but lies
//! about who it is.

use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    gossip::config::GossipAdapterConfig,
    gossip::keys::{Secret, derive_keyring, tests::SECRET},
    gossip::mesh::Mesh,
};

pub(crate) fn config(cluster: &str, name: &str, seed: Option<SocketAddr>) -> GossipAdapterConfig {
    let mut c = GossipAdapterConfig::new()
        .with_cluster_id(cluster)
        .with_node_name(name)
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_gossip_interval(Duration::from_millis(50))
        .with_secret(SECRET);
    if let Some(seed) = seed {
        c = c.with_seeds([seed.to_string()]);
    }
    c
}

/// Two nodes `a` and `b` of `cluster`, once each is a member of the other.
pub(crate) async fn pair(cluster: &str) -> (Arc<Node>, Arc<Node>) {
    let a = Node::start(&config(cluster, "a", None)).await.unwrap();
    let b = Node::start(&config(cluster, "b", Some(a.addrs().0)))
        .await
        .unwrap();
    let formed = until(Duration::from_secs(20), || {
        a.members().len() == 1 && b.members().len() == 1
    })
    .await;
    assert!(formed, "cluster {cluster} formed");
    (a, b)
}

pub(crate) async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Records what the mesh tells an impostor.
struct Closes(tokio::sync::mpsc::UnboundedSender<mesh::Closed>);

impl Inbound for Closes {
    fn on_frame(&self, _: &PeerId, _: Frame) -> Result<(), String> {
        Ok(())
    }
    fn on_peer_connected(&self, _: &PeerId, _: ConnId, _: PeerAddrs) -> Result<(), String> {
        Ok(())
    }
    fn on_connection_closed(&self, _: &PeerId, _: ConnId, reason: &mesh::Closed) {
        let _ = self.0.send(reason.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_a_connected_member_cannot_make_it_leave() {
    let cluster = format!("impostor-{}", std::process::id());
    let a = Node::start(&config(&cluster, "a", None)).await.unwrap();
    let b = Node::start(&config(&cluster, "b", Some(a.addrs().0)))
        .await
        .unwrap();
    let b_id = b.me().clone();
    assert!(
        until(Duration::from_secs(10), || {
            lock(&a.core).view().has_incoming(&b_id) && b.members().len() == 1
        })
        .await,
        "a and b are members of each other, b connected to a"
    );

    // The impostor holds the secret and claims b's name and generation.
    let keys = derive_keyring(&cluster, &[Secret::from(SECRET)]).unwrap();
    let keyring = Keyring::new(cluster.clone(), Some(vec![keys[0].mesh]));
    let mut impostor = Mesh::bind(
        "127.0.0.1:0".parse().unwrap(),
        None,
        keyring,
        None,
        1 << 20,
        Duration::from_secs(2),
        16,
    )
    .unwrap();
    let own = impostor.local_addr().unwrap();
    impostor.set_identity(
        &b_id,
        PeerAddrs {
            mesh: own,
            gossip: own,
        },
    );
    let (tx, mut closes) = tokio::sync::mpsc::unbounded_channel();
    // a refuses it once it proved the secret: at once (the handshake fails), or right
    // after (the connection closes as refused); a Leave it sends is never read.
    match impostor
        .connect(a.addrs().1, None, Arc::new(Closes(tx)))
        .await
    {
        Err(e) => assert!(
            e.to_string()
                .contains(&format!("refused (code {})", mesh::CLOSE_REFUSED)),
            "{e}"
        ),
        Ok((_, link)) => {
            let _ = link
                .send(wire::encode(&Frame::Leave).unwrap(), Duration::from_secs(1))
                .await;
            let reason = tokio::time::timeout(Duration::from_secs(5), closes.recv())
                .await
                .expect("a closes the impostor's connection")
                .unwrap();
            assert_eq!(reason, mesh::Closed::Refused);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.members().iter().map(Member::peer_id).collect::<Vec<_>>(),
        [b_id],
        "b is still a member of a"
    );
    a.shutdown().await;
    b.shutdown().await;
}
