// This page links to the Redis store: built with gossip alone, that link has nothing to
// point at and shows as plain text.
#![cfg_attr(not(feature = "redis"), allow(rustdoc::broken_intra_doc_links))]
//! Login sessions shared by every node (feature `sessions`): a [`tower-sessions`] store
//! that any node can read and write, and a Socket.IO connect middleware that accepts a
//! connection only with a live login session, on whichever node the connection lands.
//!
//! [`ClusterSessionStore`] comes from the same configuration as the adapter
//! ([`ClusterAdapterCtr::session_store`](crate::ClusterAdapterCtr::session_store)):
//!
//! - **gossip** ([`GossipSessionStore`]): every node holds every session, replicated over
//!   the authenticated QUIC mesh — never over gossip. A save or delete
//!   returns once every member has merged it (a member found dead is not waited for, a
//!   silent one at most the request timeout), so losing any node, even the one that took
//!   the save, loses no session; an expiry applies everywhere; a node that joins exchanges
//!   snapshots with each member. Memory is bounded by expiry (a periodic purge), by
//!   [`SessionStoreConfig::with_max_sessions`] and, apart, by
//!   [`SessionStoreConfig::with_max_tombstones`] (the oldest tombstone is evicted). At the
//!   cap of sessions a **new** session is refused with an error (the save fails where it is
//!   made; a node that receives one is counted, [`GossipSessionStore::refused`], and logs
//!   it): a live session is never evicted for another, so a client that makes the
//!   application create sessions (anonymous visitors, a login endpoint) cannot log real
//!   users out. A save of a session held, and a deletion, always succeed. A session's
//!   record is at most half the maximum frame size, and at most 1 MiB: a larger one is
//!   refused at save, since it could never reach a node that catches up. Deleting
//!   a session a node does not hold leaves nothing behind, so log-outs with made-up cookies
//!   cost no memory.
//!
//!   Every node of the cluster should run the store: a member without it answers that it
//!   has none (so saves do not wait for it) and holds nothing. The store is written over
//!   the node's bus (the crate's `bus` module, as server events and presence are), not
//!   over the mesh itself.
//! - **Redis** ([`RedisSessionStore`]): one key per session on the backend's Redis
//!   connection, expiring with the session. There is no cap of this library's: Redis's
//!   own `maxmemory` bounds the store, and its eviction policy decides what happens at
//!   the bound (`noeviction` refuses new writes; an `allkeys-*` or `volatile-*` policy
//!   evicts live sessions, logging users out). Redis itself is the store, so nothing is
//!   replicated and this store uses no bus.
//!
//! Any node holding the cluster secret (or, in cluster-CA mode, a certificate of the CA)
//! can write any session, as any client of the Redis can on that backend: protect the
//! secret as you would the Redis password.
//!
//! ## Concurrent writes
//!
//! Two nodes saving the same session at the same time end with one value everywhere: the
//! write with the later version wins. A version is the writing node's clock in ms — but
//! always later than the version of the session that node already holds, so a node's own
//! writes order after whatever it has seen — then the node name to break ties. A deletion
//! is a tombstone with a version of its own: it wins over every older save, including one
//! still in flight, and over a save of the same version. Tombstones are purged after
//! [`SessionStoreConfig::with_tombstone_ttl`] (1 hour). So "last writer wins" per session,
//! where "last" is by the writers' clocks: keep them synchronised (NTP), as for the
//! expiry of sessions. A node refuses (and logs) a record whose version is more than 5
//! minutes ahead of its own clock (10 minutes for a deletion): a version at the end of
//! time would otherwise win over every later write, log-outs included.
//!
//! Only a node that holds a session keeps a tombstone for it. So a deletion that reaches
//! a node before the save it overrides (the two made at the same time on two nodes) is
//! lost there, and the save survives on that node until it expires or is written again.
//!
//! ## Example
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use socketioxide::{SocketIo, extract::{Extension, SocketRef}, handler::ConnectHandler};
//! use socketioxide_cluster::{
//!     ClusterAdapter, ClusterAdapterCtr,
//!     sessions::{HandshakeSession, SessionAuth, SessionStoreConfig},
//! };
//! use tower_sessions::{Session, SessionManagerLayer};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ctr = ClusterAdapterCtr::from_env().await?;
//! let store = ctr.session_store(SessionStoreConfig::default());
//! let (io_layer, io) = SocketIo::builder()
//!     .with_adapter::<ClusterAdapter<_>>(ctr)
//!     .build_layer();
//!
//! // Socket.IO: only logged-in users, on whichever node they land.
//! let auth = SessionAuth::new(store.clone()).require_key("user");
//! let on_connect = async |s: SocketRef<ClusterAdapter<_>>,
//!                         Extension(session): Extension<HandshakeSession>| {
//!     let user: String = session.get("user").unwrap_or_default();
//!     s.emit("welcome", &user).ok();
//! };
//! io.ns("/", on_connect.with(auth.middleware())).await?;
//!
//! // HTTP: log in on any node.
//! let app: Router = Router::new()
//!     .route("/login", post(async |session: Session| {
//!         session.insert("user", "ada").await.ok();
//!     }))
//!     .layer(io_layer)
//!     .layer(SessionManagerLayer::new(store));
//! # Ok(()) }
//! ```
//!
//! [`tower-sessions`]: https://docs.rs/tower-sessions

mod auth;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "cluster-gossip")]
mod replica;
#[cfg(feature = "cluster-gossip")]
mod replicated;
#[cfg(feature = "cluster-gossip")]
pub(crate) mod wire;

use std::time::Duration;

use tower_sessions_core::{
    SessionStore,
    session::{Id, Record},
    session_store,
};

pub use auth::{AuthError, HandshakeSession, SessionAuth};
#[cfg(feature = "redis")]
pub use redis::RedisSessionStore;
#[cfg(feature = "cluster-gossip")]
pub use replicated::GossipSessionStore;

/// Settings of the gossip session store (the Redis store has none: Redis expires keys).
#[derive(Clone, Debug)]
pub struct SessionStoreConfig {
    max_sessions: usize,
    max_tombstones: usize,
    tombstone_ttl: Duration,
    purge_interval: Duration,
}

impl Default for SessionStoreConfig {
    fn default() -> Self {
        Self {
            max_sessions: 100_000,
            max_tombstones: 100_000,
            tombstone_ttl: Duration::from_secs(3600),
            purge_interval: Duration::from_secs(30),
        }
    }
}

impl SessionStoreConfig {
    /// The defaults: 100,000 sessions and 100,000 tombstones, tombstones kept 1 hour,
    /// purge every 30 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Most live sessions a node holds (at least 1). At the cap, a new session is refused:
    /// its save fails with an error naming this setting, or, received from a peer, it is
    /// counted ([`GossipSessionStore::refused`]) and logged; expired sessions make room
    /// first, and no live session is ever evicted for a new one. A save of a session held
    /// always succeeds. Give every node the same cap, so that they hold the same sessions.
    pub fn with_max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max.max(1);
        self
    }

    /// Most tombstones (of deleted sessions) a node holds, apart from the sessions: beyond
    /// it, the oldest is evicted and counted. A tombstone only protects a deletion from an
    /// older save still in flight, so evicting old ones early is harmless in practice.
    pub fn with_max_tombstones(mut self, max: usize) -> Self {
        self.max_tombstones = max;
        self
    }

    /// How long a deletion is remembered, so that an older save still in flight (or held
    /// by a node cut off from the others) cannot bring the session back.
    pub fn with_tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// How often expired sessions and old tombstones are dropped from memory (an expired
    /// session is never loaded, purged or not).
    pub fn with_purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval.max(Duration::from_millis(1));
        self
    }
}

/// The session store of the backend chosen at run time (see the [module docs](self)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClusterSessionStore {
    /// Replicated over the QUIC mesh.
    #[cfg(feature = "cluster-gossip")]
    Gossip(GossipSessionStore),
    /// Kept in Redis.
    #[cfg(feature = "redis")]
    Redis(RedisSessionStore),
}

impl ClusterSessionStore {
    /// The store of the backend.
    fn store(&self) -> &dyn SessionStore {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(s) => s,
            #[cfg(feature = "redis")]
            Self::Redis(s) => s,
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for ClusterSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.store().create(record).await
    }
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.store().save(record).await
    }
    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        self.store().load(session_id).await
    }
    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        self.store().delete(session_id).await
    }
}
