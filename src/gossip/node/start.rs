//! Starting a node: its keys, both ports, gossip and the mesh, its machine, and the
//! tasks that serve it; then the join through its seeds.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::broadcast;

use super::{
    Node, State, WeakInbound, lock,
    machine::Machine,
    startup::{advertised, check_seed, gossip_addrs},
    tasks::{now, wake_machine, watch_membership},
};
use crate::{
    error::Error,
    gossip::config::{Auth, GossipAdapterConfig},
    gossip::keys,
    gossip::membership::{
        GossipSettings, GossipTransport, Membership,
        seal::GossipKeys,
        transport::{GossipCounters, SealedTransport},
    },
    gossip::mesh::{self, Mesh, PeerAddrs, PeerId, auth::Keyring},
};

impl Node {
    /// Bind both ports, start gossip and the mesh.
    pub(crate) async fn start(config: &GossipAdapterConfig) -> Result<Arc<Self>, Error> {
        let keys = match &config.auth {
            Auth::Missing => return Err(Error::MissingSecret),
            Auth::Insecure => {
                tracing::warn!(
                    "socketioxide-cluster runs WITHOUT AUTHENTICATION (insecure_no_auth): gossip \
                     travels in clear, and any host that reaches the gossip or mesh port can \
                     join the cluster and act on every socket"
                );
                None
            }
            Auth::Secrets(secrets) => {
                config.warn_if_default_salt();
                let (cluster_id, secrets) = (config.cluster_id.clone(), secrets.clone());
                let derive = move || keys::derive_keyring(&cluster_id, &secrets);
                let derived = if config.network.is_some() {
                    // A simulated network runs on one thread, in simulated time: a thread
                    // of the blocking pool would make its runs differ.
                    derive()
                } else {
                    tokio::task::spawn_blocking(derive)
                        .await
                        .map_err(|e| Error::KeyDerivation(e.to_string()))?
                };
                Some(derived.map_err(|e| match e {
                    keys::KeyError::Weak { .. } => Error::WeakSecret {
                        reason: e.to_string(),
                    },
                    keys::KeyError::Kdf(reason) => Error::KeyDerivation(reason),
                })?)
            }
        };
        for seed in &config.seeds {
            check_seed(seed).await?;
        }
        for line in config.deprecations() {
            tracing::warn!("{line}");
        }
        let network = config.network.as_ref().map(|n| &n.0);
        let now = network.map_or_else(SystemTime::now, |n| n.wall_clock());
        let generation = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let name = config
            .node_name
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
        let me = PeerId {
            name: name.into(),
            generation,
        };

        let keyring = Keyring::new(
            config.cluster_id.clone(),
            keys.as_ref().map(|k| k.iter().map(|k| k.mesh).collect()),
        );
        let custom_socket = match network {
            Some(network) => Some(mesh::CustomSocket {
                socket: network
                    .bind_mesh(config.mesh_addr)
                    .await
                    .map_err(|source| Error::MeshBind {
                        addr: config.mesh_addr,
                        source,
                    })?,
                runtime: network.runtime(),
                rng_seed: network.rng_seed(),
                clock: Arc::new(mesh::Clock({
                    let network = network.clone();
                    move || network.wall_clock()
                })),
            }),
            None => None,
        };
        let mut mesh = Mesh::bind(
            config.mesh_addr,
            custom_socket,
            keyring,
            config.tls.as_ref(),
            config.max_frame_size,
            config.peer_timeout,
            mesh::Budgets::new(config.peer_queue_bytes, config.node_queue_bytes),
        )
        .map_err(|e| match e {
            mesh::MeshError::Bind { addr, source } => Error::MeshBind { addr, source },
            mesh::MeshError::TlsFile { path, reason } => Error::TlsFile { path, reason },
            other => Error::Tls(other.to_string()),
        })?;
        mesh.set_handshake_timeout(config.handshake_timeout);
        let mesh_bound = mesh.local_addr().map_err(|source| Error::MeshBind {
            addr: config.mesh_addr,
            source,
        })?;
        let mesh_addr = config
            .mesh_advertise_addr
            .unwrap_or_else(|| advertised(mesh_bound));
        let (gossip_bind, gossip_addr) = gossip_addrs(config)?;
        mesh.set_identity(
            &me,
            PeerAddrs {
                mesh: mesh_addr,
                gossip: gossip_addr,
            },
        );

        let settings = GossipSettings {
            cluster_id: config.cluster_id.clone(),
            me: me.clone(),
            bind: gossip_bind,
            advertise: gossip_addr,
            seeds: config.seeds.clone(),
            interval: config.gossip_interval,
            mesh_advertise: mesh_addr,
        };
        crate::metrics::describe();
        let gossip_counters = Arc::new(GossipCounters::new(&me.name));
        let transport = match (network, &keys) {
            (Some(network), _) => GossipTransport::Custom(network.clone()),
            (None, Some(keys)) => match GossipKeys::new(&config.cluster_id, keys) {
                Some(k) => {
                    GossipTransport::Sealed(SealedTransport::new(k, gossip_counters.clone()))
                }
                None => return Err(Error::MissingSecret),
            },
            (None, None) => GossipTransport::Plain,
        };
        let membership = Membership::start(settings, transport, gossip_counters.clone())
            .await
            .map_err(|reason| Error::GossipBind {
                addr: gossip_bind,
                reason,
            })?;
        let changes = membership.changes().await;

        let me_name = me.name.clone();
        let mesh = Arc::new(mesh);
        let made: Arc<Mutex<HashMap<u64, (mesh::Sender, mesh::Queue)>>> = Arc::default();
        let make = {
            let (mesh, made) = (mesh.clone(), made.clone());
            move |peer: &PeerId, attempt: u64| {
                let (tx, rx) = mesh.queue(&peer.name);
                lock(&made).insert(attempt, (tx.clone(), rx));
                tx
            }
        };
        let round = config.request_timeout / 2;
        let machine = Machine::new(me.clone(), self::now(), round, Box::new(make));
        let node = Arc::new_cyclic(|self_weak| Node {
            self_weak: self_weak.clone(),
            state: Mutex::new(State {
                machine,
                links: HashMap::new(),
                attempts: HashMap::new(),
                requesters: HashMap::new(),
                resumes: HashMap::new(),
                next_token: 0,
                wake_at: None,
            }),
            timer: Arc::default(),
            me,
            gossip_addr,
            gossip_bind,
            mesh_addr,
            request_timeout: config.request_timeout,
            max_frame_size: config.max_frame_size,
            mesh,
            membership,
            gossip: gossip_counters,
            made,
            handlers: RwLock::default(),
            services: RwLock::default(),
            events: broadcast::channel(256).0,
            dropped: AtomicU64::new(0),
            metrics: crate::metrics::NodeMetrics::new(&me_name),
        });
        node.mesh
            .serve(Arc::new(WeakInbound(Arc::downgrade(&node))));
        node.spawn(watch_membership(
            Arc::downgrade(&node),
            changes,
            node.membership.stopped(),
        ));
        node.spawn(wake_machine(Arc::downgrade(&node), node.timer.clone()));
        tracing::info!(
            node = %node.me, gossip = %gossip_addr, mesh = %mesh_addr, cluster = %config.cluster_id,
            "cluster node started"
        );
        node.join(&config.seeds, config.join_timeout).await;
        Ok(node)
    }
}
