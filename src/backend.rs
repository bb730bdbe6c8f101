//! One adapter type whose backend — gossip or Redis — is chosen at run time, so that the same
//! binary deploys either way: [`ClusterAdapter`] and [`ClusterAdapterCtr`].

use std::{sync::Arc, time::Duration};

use futures_core::stream::BoxStream;
#[cfg(feature = "redis")]
use futures_util::StreamExt;
use futures_util::{FutureExt, stream::Fuse};
use socketioxide_core::adapter::{
    AckStreamItem, BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter,
    RemoteSocketData, Room, RoomParam, SocketEmitter,
    errors::{AdapterError, BroadcastError},
};
use socketioxide_core::packet::Packet;

#[cfg(feature = "redis")]
use crate::redis::outage::{EndWhenTerminated, also_local, is_remote_failure, log_local};
#[cfg(feature = "cluster-gossip")]
use crate::{Cluster, GossipAdapter, GossipAdapterConfig, GossipAdapterCtr, RequestError};
use crate::{error::Error, init::InitRes};

/// The environment variable choosing the backend: `gossip` (the default) or a Redis URL
/// (`redis://…`, `rediss://…`).
pub const BACKEND_VAR: &str = "SOCKETIO_CLUSTER_BACKEND";

/// Longest a Redis node waits, at start, for the features' bus to be subscribed.
#[cfg(feature = "redis")]
const BUS_SUBSCRIBED: Duration = Duration::from_secs(5);

/// The constructor of a [`ClusterAdapter`]: the running backend.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterAdapterCtr {
    /// Gossip discovery and the QUIC mesh.
    #[cfg(feature = "cluster-gossip")]
    Gossip(GossipAdapterCtr),
    /// Redis pub/sub, and the handle of its connection.
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisAdapterCtr, crate::redis::RedisHandle),
}

impl ClusterAdapterCtr {
    /// Choose and start the backend from the environment: [`BACKEND_VAR`] is `gossip` (or
    /// unset) for gossip, configured by the `SOCKETIO_CLUSTER_*` variables of
    /// [`GossipAdapterConfig::from_env`]; or a Redis URL. With Redis,
    /// `SOCKETIO_CLUSTER_ID` is the channel prefix (so clusters sharing a Redis stay apart),
    /// and the request timeout and buffers come from the same variables as for gossip.
    pub async fn from_env() -> Result<Self, Error> {
        let backend = std::env::var(BACKEND_VAR).unwrap_or_default();
        match backend.trim() {
            "" | "gossip" => Self::gossip_from_env().await,
            url if is_redis_url(url) => Self::redis_from_env(url).await,
            other => Err(Error::Config(crate::ConfigError::Invalid {
                var: BACKEND_VAR,
                reason: format!(
                    "expected `gossip` or a redis:// URL, got {:?}",
                    redact(other)
                ),
            })),
        }
    }

    #[cfg(feature = "cluster-gossip")]
    async fn gossip_from_env() -> Result<Self, Error> {
        Self::gossip(GossipAdapterConfig::from_env()?).await
    }
    #[cfg(not(feature = "cluster-gossip"))]
    async fn gossip_from_env() -> Result<Self, Error> {
        Err(Error::FeatureDisabled {
            backend: "gossip",
            feature: "cluster-gossip",
        })
    }

    #[cfg(feature = "redis")]
    async fn redis_from_env(url: &str) -> Result<Self, Error> {
        let config = crate::redis::config_from_env()?;
        let tls = crate::redis::RedisTls::from_env()?;
        Self::redis_with_tls(url, config, tls).await
    }
    #[cfg(not(feature = "redis"))]
    async fn redis_from_env(_url: &str) -> Result<Self, Error> {
        Err(Error::FeatureDisabled {
            backend: "redis",
            feature: "redis",
        })
    }

    /// Start the gossip backend.
    #[cfg(feature = "cluster-gossip")]
    pub async fn gossip(config: GossipAdapterConfig) -> Result<Self, Error> {
        Ok(Self::Gossip(GossipAdapterCtr::new(config).await?))
    }

    /// Connect to Redis at `url`. Fails at once, naming the (password-redacted) URL, when
    /// Redis cannot be reached, and before connecting when a numeric setting of `config` is
    /// outside its range (request timeout 10 ms to 1 h, buffers 1 to 1,000,000).
    #[cfg(feature = "redis")]
    pub async fn redis(url: &str, config: crate::redis::RedisAdapterConfig) -> Result<Self, Error> {
        Self::redis_with_tls(url, config, crate::redis::RedisTls::default()).await
    }

    /// Like [`ClusterAdapterCtr::redis`], with the TLS settings of a `rediss://` URL: the
    /// CA that signed Redis's certificate, a client certificate (see
    /// [`RedisTls`](crate::redis::RedisTls)).
    #[cfg(feature = "redis")]
    pub async fn redis_with_tls(
        url: &str,
        config: crate::redis::RedisAdapterConfig,
        tls: crate::redis::RedisTls,
    ) -> Result<Self, Error> {
        crate::redis::check_ranges(&config)?;
        let failed = |reason: String| Error::Redis {
            url: redact(url),
            reason,
        };
        let (ctr, handle) = crate::redis::connect_with_handle(url, config, &tls)
            .await
            .map_err(|e| failed(e.to_string()))?;
        // The node is on the features' bus once this returns: listed by the others, and
        // hearing what they send.
        crate::bus::redis::RedisBus::of(&handle)
            .subscribed(BUS_SUBSCRIBED)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self::Redis(ctr, handle))
    }

    /// The gossip cluster handle, when running the gossip backend.
    #[cfg(feature = "cluster-gossip")]
    pub fn cluster(&self) -> Option<Cluster> {
        match self {
            Self::Gossip(ctr) => Some(ctr.cluster()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// `"gossip"` or `"redis"`.
    pub fn backend(&self) -> &'static str {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(_) => "gossip",
            #[cfg(feature = "redis")]
            Self::Redis(..) => "redis",
        }
    }

    /// The Redis handle, when running the Redis backend.
    #[cfg(feature = "redis")]
    pub fn redis_handle(&self) -> Option<crate::redis::RedisHandle> {
        match self {
            Self::Redis(_, handle) => Some(handle.clone()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

fn is_redis_url(s: &str) -> bool {
    ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// A Redis URL with every credential replaced by `***`: the user and password before `@`
/// (`redis://user:pw@host`), the `pass`/`password` query parameters
/// (`unix:///run/redis.sock?pass=pw`) and any fragment.
///
/// The URL is parsed as the Redis client parses it (the `url` crate). A credential that
/// holds a delimiter raw (`redis://:s3cr?t@h`: `?`, `#`, `/` end the authority early, so
/// part of it lands in the path, query or fragment) shows as an `@` past the authority, or
/// fails to parse: then nothing but the scheme is shown.
pub(crate) fn redact(url: &str) -> String {
    #[cfg(feature = "redis")]
    if let Some(shown) = redact_parsed(url) {
        return shown;
    }
    redact_unparsed(url)
}

/// A well-formed URL, its credentials hidden; `None` when it does not parse, or a
/// credential may have spilled past the authority.
#[cfg(feature = "redis")]
fn redact_parsed(raw: &str) -> Option<String> {
    /// Query parameters that carry a password.
    const SECRET_PARAMS: [&str; 4] = ["pass", "password", "passwd", "pwd"];
    let url = url::Url::parse(raw).ok()?;
    let spilled = url.path().contains('@') || url.fragment().is_some_and(|f| f.contains('@'));
    if url.cannot_be_a_base() || spilled {
        return None;
    }
    let mut out = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        out.push_str("***@");
    }
    out.push_str(url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    if let Some(query) = url.query() {
        let mut params = Vec::new();
        for param in query.split('&') {
            let key = param.split_once('=').map_or(param, |(k, _)| k);
            if SECRET_PARAMS.contains(&key.to_ascii_lowercase().as_str()) {
                params.push(format!("{key}=***"));
            } else if param.contains('@') {
                return None;
            } else {
                params.push(param.to_string());
            }
        }
        out.push('?');
        out.push_str(&params.join("&"));
    }
    if url.fragment().is_some() {
        out.push_str("#***");
    }
    Some(out)
}

/// What is shown of a string that is no well-formed URL: its scheme, if it has one; a
/// plain word as it is; otherwise nothing.
fn redact_unparsed(raw: &str) -> String {
    let is_scheme = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    };
    match raw.split_once("://") {
        Some((scheme, _)) if is_scheme(scheme) => format!("{scheme}://***"),
        None if !raw.contains(['@', ':', '/', '?', '#', '=', '&']) => raw.to_string(),
        _ => "***".to_string(),
    }
}

/// An adapter whose backend is chosen at run time by its [`ClusterAdapterCtr`]. Use it as
/// `SocketIo::builder().with_adapter::<ClusterAdapter<_>>(ctr)`.
#[non_exhaustive]
pub enum ClusterAdapter<E> {
    /// The gossip backend.
    #[cfg(feature = "cluster-gossip")]
    Gossip(Arc<GossipAdapter<E>>),
    /// The Redis backend.
    #[cfg(feature = "redis")]
    Redis(Arc<crate::redis::RedisAdapter<E>>),
}

impl<E> DefinedAdapter for ClusterAdapter<E> {}

/// An error of a [`ClusterAdapter`] operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// From the gossip backend.
    #[cfg(feature = "cluster-gossip")]
    #[error(transparent)]
    Gossip(#[from] RequestError),
    /// From the Redis backend (Redis unreachable, or a message that does not decode).
    #[cfg(feature = "redis")]
    #[error("redis backend: {0}")]
    Redis(#[from] socketioxide_redis::Error<crate::redis::RedisDriver>),
    /// The namespace could not be initialised on Redis.
    #[cfg(feature = "redis")]
    #[error("redis backend: cannot initialise the namespace: {0}")]
    RedisInit(String),
}

impl From<ClusterError> for AdapterError {
    fn from(e: ClusterError) -> Self {
        Self(Box::new(e))
    }
}

/// Run the same expression on whichever backend the adapter holds.
macro_rules! each {
    ($self:expr, $a:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "cluster-gossip")]
            ClusterAdapter::Gossip($a) => $body,
            #[cfg(feature = "redis")]
            ClusterAdapter::Redis($a) => $body,
        }
    };
}

impl<E: SocketEmitter> CoreAdapter<E> for ClusterAdapter<E> {
    type Error = ClusterError;
    type State = ClusterAdapterCtr;
    type AckStream = Fuse<BoxStream<'static, AckStreamItem<E::AckError>>>;
    type InitRes = InitRes<ClusterError>;

    fn new(state: &Self::State, local: CoreLocalAdapter<E>) -> Self {
        match state {
            #[cfg(feature = "cluster-gossip")]
            ClusterAdapterCtr::Gossip(ctr) => Self::Gossip(Arc::new(CoreAdapter::new(ctr, local))),
            #[cfg(feature = "redis")]
            ClusterAdapterCtr::Redis(ctr, _) => Self::Redis(Arc::new(CoreAdapter::new(ctr, local))),
        }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        InitRes::new(match &*self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(a) => a.clone().init(on_success).map(|r| Ok(r?)).boxed(),
            #[cfg(feature = "redis")]
            Self::Redis(a) => a
                .clone()
                .init(on_success)
                .map(|r| r.map_err(|e| ClusterError::RedisInit(e.to_string())))
                .boxed(),
        })
    }

    async fn close(&self) -> Result<(), Self::Error> {
        each!(self, a => Ok(a.close().await?))
    }

    async fn server_count(&self) -> Result<u16, Self::Error> {
        each!(self, a => Ok(a.server_count().await?))
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(a) => a.broadcast(packet, opts).await,
            #[cfg(feature = "redis")]
            Self::Redis(a) => {
                let res = a.broadcast(packet.clone(), opts.clone()).await;
                also_local(res, is_remote_failure, || {
                    log_local(a.get_local().broadcast(packet, opts))
                })
            }
        }
    }

    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<Self::AckStream, Self::Error> {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(a) => Ok(a.broadcast_with_ack(packet, opts, timeout).await?),
            #[cfg(feature = "redis")]
            Self::Redis(a) => {
                let acks = a.broadcast_with_ack(packet, opts, timeout).await?;
                Ok(EndWhenTerminated(Box::pin(acks)).boxed().fuse())
            }
        }
    }
    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(a) => Ok(a.add_sockets(opts, rooms).await?),
            #[cfg(feature = "redis")]
            Self::Redis(a) => {
                let rooms: Vec<Room> = rooms.into_room_iter().collect();
                let res = a.add_sockets(opts.clone(), rooms.clone()).await;
                also_local(
                    res.map_err(ClusterError::from),
                    |_| true,
                    || a.get_local().add_sockets(opts, rooms),
                )
            }
        }
    }

    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Self::Error> {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(a) => Ok(a.del_sockets(opts, rooms).await?),
            #[cfg(feature = "redis")]
            Self::Redis(a) => {
                let rooms: Vec<Room> = rooms.into_room_iter().collect();
                let res = a.del_sockets(opts.clone(), rooms.clone()).await;
                also_local(
                    res.map_err(ClusterError::from),
                    |_| true,
                    || a.get_local().del_sockets(opts, rooms),
                )
            }
        }
    }

    async fn disconnect_socket(&self, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        match self {
            #[cfg(feature = "cluster-gossip")]
            Self::Gossip(a) => a.disconnect_socket(opts).await,
            #[cfg(feature = "redis")]
            Self::Redis(a) => {
                let res = a.disconnect_socket(opts.clone()).await;
                also_local(res, is_remote_failure, || {
                    log_local(a.get_local().disconnect_socket(opts))
                })
            }
        }
    }

    async fn rooms(&self, opts: BroadcastOptions) -> Result<Vec<Room>, Self::Error> {
        each!(self, a => Ok(a.rooms(opts).await?))
    }

    async fn fetch_sockets(
        &self,
        opts: BroadcastOptions,
    ) -> Result<Vec<RemoteSocketData>, Self::Error> {
        each!(self, a => Ok(a.fetch_sockets(opts).await?))
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        each!(self, a => a.get_local())
    }
}

#[cfg(test)]
mod tests;
