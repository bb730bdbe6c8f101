//! Membership by gossip (chitchat): who is alive, and what each node publishes about itself
//! (mesh address, socketioxide server id, hosted namespaces).
//!
//! Gossip is plain UDP without authentication. Nothing here is trusted for security: a member
//! only takes part once its mesh connection proved the cluster secret.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, spawn_chitchat,
    transport::UdpTransport,
};
use tokio::sync::watch;

use crate::mesh::PeerId;

/// Key holding the node's advertised mesh address.
pub(crate) const KEY_MESH: &str = "mesh";
/// Key holding the node's socketioxide server id.
pub(crate) const KEY_SERVER_ID: &str = "server_id";
/// Prefix of the keys naming each hosted namespace.
pub(crate) const KEY_NS_PREFIX: &str = "ns:";
/// Key set by a node that is leaving on purpose.
pub(crate) const KEY_LEAVING: &str = "leaving";

/// A live node of the cluster, as seen by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node name.
    pub node_name: String,
    /// Generation of the node (its start time, ms since the Unix epoch): a restarted node
    /// comes back with a new one.
    pub generation: u64,
    /// Gossip (UDP) address.
    pub gossip_addr: SocketAddr,
    /// Mesh (QUIC) address.
    pub mesh_addr: SocketAddr,
    /// socketioxide server id of the node's `SocketIo`, once it has created a namespace.
    pub server_id: Option<socketioxide_core::Uid>,
    /// Namespaces the node hosts.
    pub namespaces: Vec<String>,
}

impl Member {
    pub(crate) fn peer_id(&self) -> PeerId {
        PeerId {
            name: self.node_name.as_str().into(),
            generation: self.generation,
        }
    }

    /// Whether the node hosts the namespace `ns`.
    pub fn hosts(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| n == ns)
    }
}

/// Read a member from the keys a node publishes. `None` for nodes that are leaving or not
/// (yet) usable.
pub(crate) fn parse_member<'a>(
    id: &ChitchatId,
    key_values: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<Member> {
    let mut mesh_addr = None;
    let mut server_id = None;
    let mut namespaces = Vec::new();
    for (k, v) in key_values {
        match k {
            KEY_LEAVING => return None,
            KEY_MESH => mesh_addr = v.parse().ok(),
            KEY_SERVER_ID => server_id = v.parse().ok(),
            _ => {
                if let Some(ns) = k.strip_prefix(KEY_NS_PREFIX) {
                    namespaces.push(ns.to_string());
                }
            }
        }
    }
    Some(Member {
        node_name: id.node_id.to_string(),
        generation: id.generation_id,
        gossip_addr: id.gossip_advertise_addr,
        mesh_addr: mesh_addr?,
        server_id,
        namespaces,
    })
}

/// The running gossip instance.
pub(crate) struct Membership {
    handle: ChitchatHandle,
}

/// Settings for [`Membership::start`].
pub(crate) struct GossipSettings {
    pub(crate) cluster_id: String,
    pub(crate) me: PeerId,
    pub(crate) bind: SocketAddr,
    pub(crate) advertise: SocketAddr,
    pub(crate) seeds: Vec<String>,
    pub(crate) interval: Duration,
    pub(crate) mesh_advertise: SocketAddr,
}

impl Membership {
    /// Start gossiping, on `transport` if given, else on a UDP socket.
    pub(crate) async fn start(
        s: GossipSettings,
        transport: Option<&dyn chitchat::transport::Transport>,
    ) -> Result<Self, String> {
        let chitchat_id = ChitchatId::new(s.me.name.to_string(), s.me.generation, s.advertise);
        // Phi-accrual detection; suspicion grows after a few missed intervals.
        let failure_detector_config = FailureDetectorConfig {
            initial_interval: s.interval,
            dead_node_grace_period: Duration::from_secs(3600),
            ..FailureDetectorConfig::default()
        };
        let config = ChitchatConfig {
            chitchat_id,
            cluster_id: s.cluster_id,
            gossip_interval: s.interval,
            listen_addr: s.bind,
            seed_nodes: s.seeds,
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial = vec![(KEY_MESH.to_string(), s.mesh_advertise.to_string())];
        let handle = spawn_chitchat(config, initial, transport.unwrap_or(&UdpTransport))
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(Self { handle })
    }

    /// Live nodes, including this one, with their state.
    pub(crate) async fn watcher(&self) -> watch::Receiver<BTreeMap<ChitchatId, NodeState>> {
        self.handle.chitchat().lock().await.live_nodes_watcher()
    }

    /// Publish a key about this node.
    pub(crate) async fn set(&self, key: &str, value: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(key, value))
            .await;
    }

    /// Withdraw a key about this node.
    pub(crate) async fn delete(&self, key: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().delete(key))
            .await;
    }

    /// Tell the seeds and peers right away (one gossip round to each).
    pub(crate) fn gossip_now(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for addr in addrs {
            let _ = self.handle.gossip(addr);
        }
    }

    /// Stop gossiping.
    pub(crate) fn shutdown(&self) {
        // Fails only if the gossip task already stopped.
        let _ = self.handle.initiate_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_published_keys_and_skips_leaving_or_incomplete_nodes() {
        let id = ChitchatId::new("n1", 5, "127.0.0.1:1".parse().unwrap());
        assert_eq!(
            parse_member(&id, [("ns:/", "")]),
            None,
            "no mesh address yet"
        );
        let mut kv = vec![
            (KEY_MESH, "127.0.0.1:2"),
            ("ns:/", ""),
            ("ns:/chat", ""),
            (KEY_SERVER_ID, "AAAAAAAAAAAAAAAA"),
        ];
        let m = parse_member(&id, kv.clone()).unwrap();
        assert_eq!(m.node_name, "n1");
        assert_eq!(m.generation, 5);
        assert_eq!(m.mesh_addr.port(), 2);
        assert!(m.hosts("/chat") && m.hosts("/") && !m.hosts("/x"));
        assert_eq!(m.server_id.unwrap().to_string(), "AAAAAAAAAAAAAAAA");
        kv.push((KEY_LEAVING, "1"));
        assert_eq!(parse_member(&id, kv), None);
    }
}
