//! The Redis fallback backend (feature `redis`), for deployments where gossip cannot reach:
//! several datacenters, no UDP between hosts, or a platform that already runs Redis.
//!
//! The protocol is `socketioxide-redis`'s, unchanged: this module only provides the
//! connection under it, [`RedisDriver`], built on the `redis` crate's `ConnectionManager` so
//! that a lost Redis is reconnected to and every subscription restored, by itself.
//!
//! ## When Redis is lost while running
//!
//! - **Emits** (`emit`, `to(..).emit`, `join`/`leave` on other nodes, `disconnect`) still
//!   reach the local sockets; the part for other nodes fails: the call returns an
//!   `Adapter` error after at most the response timeout (never hangs), and the failure is
//!   logged. Nothing is queued for later: messages sent during the outage are not replayed.
//! - **Requests** (`fetch_sockets`, `rooms`, `emit_with_ack`) return an adapter error, after
//!   at most the response timeout.
//! - **Reconnection**: a health check pings Redis every second; the connection is re-opened
//!   with exponential backoff (up to 2 s between attempts) and every channel is subscribed
//!   again, so cross-node traffic resumes by itself once Redis is back. Loss and recovery are
//!   logged (`warn` and `info`).
//!
//! ## TLS
//!
//! A `rediss://` URL connects over TLS (rustls), checking Redis's certificate against the
//! system's root certificates, or against the CA given by [`RedisTls::with_ca_cert_pem`]
//! (`SOCKETIO_CLUSTER_REDIS_CA_CERT`, a PEM file). A Redis that asks for client
//! certificates (mutual TLS) gets the one of [`RedisTls::with_client_cert_pem`]
//! (`SOCKETIO_CLUSTER_REDIS_CLIENT_CERT` and `SOCKETIO_CLUSTER_REDIS_CLIENT_KEY`).

mod live_nodes;
pub(crate) mod outage;

pub(crate) use live_nodes::subscribed_under;

use std::{
    any::Any,
    collections::HashMap,
    fmt,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use redis::{AsyncCommands, FromRedisValue, PushInfo, PushKind, aio::ConnectionManager};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

pub use socketioxide_redis::RedisAdapterConfig;

/// The Redis adapter type (socketioxide-redis's adapter over [`RedisDriver`]).
pub type RedisAdapter<E> = socketioxide_redis::CustomRedisAdapter<E, RedisDriver>;
/// The Redis adapter constructor.
pub type RedisAdapterCtr = socketioxide_redis::RedisAdapterCtr<RedisDriver>;

/// How long one Redis command may take before it fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval of the health check that notices a lost Redis and triggers reconnection.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// TLS settings of a `rediss://` connection, for a Redis whose certificate is not signed
/// by a root the system trusts (a managed Redis with its own CA, a self-hosted one), or
/// that asks for a client certificate. The default trusts the system's roots and sends no
/// client certificate.
#[derive(Clone, Default)]
pub struct RedisTls {
    ca_cert_pem: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_cert", &self.ca_cert_pem.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

/// Environment variable: path of the PEM file of the CA that signed Redis's certificate.
pub const CA_CERT_VAR: &str = "SOCKETIO_CLUSTER_REDIS_CA_CERT";
/// Environment variable: path of the PEM file of the client certificate (mutual TLS).
pub const CLIENT_CERT_VAR: &str = "SOCKETIO_CLUSTER_REDIS_CLIENT_CERT";
/// Environment variable: path of the PEM file of the client certificate's private key.
pub const CLIENT_KEY_VAR: &str = "SOCKETIO_CLUSTER_REDIS_CLIENT_KEY";

impl RedisTls {
    /// The default: the system's root certificates, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust only this CA (PEM, one or more certificates) for Redis's certificate, instead
    /// of the system's roots.
    pub fn with_ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert_pem = Some(pem.into());
        self
    }

    /// Present this client certificate and its private key (both PEM) to a Redis that
    /// asks for one (`tls-auth-clients yes`).
    pub fn with_client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Read the PEM files named by [`CA_CERT_VAR`], [`CLIENT_CERT_VAR`] and
    /// [`CLIENT_KEY_VAR`], when set. The client certificate and key go together.
    pub fn from_env() -> Result<Self, crate::error::ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, crate::error::ConfigError> {
        let read = |var: &'static str| -> Result<Option<Vec<u8>>, crate::error::ConfigError> {
            get(var)
                .map(|path| {
                    std::fs::read(path.trim()).map_err(|e| crate::error::ConfigError::Invalid {
                        var,
                        reason: format!("cannot read {path:?}: {e}"),
                    })
                })
                .transpose()
        };
        let mut tls = Self::new();
        if let Some(ca) = read(CA_CERT_VAR)? {
            tls = tls.with_ca_cert_pem(ca);
        }
        match (read(CLIENT_CERT_VAR)?, read(CLIENT_KEY_VAR)?) {
            (Some(cert), Some(key)) => tls = tls.with_client_cert_pem(cert, key),
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(crate::error::ConfigError::Invalid {
                    var: CLIENT_CERT_VAR,
                    reason: format!("set both {CLIENT_CERT_VAR} and {CLIENT_KEY_VAR}, or neither"),
                });
            }
        }
        Ok(tls)
    }

    fn is_default(&self) -> bool {
        self.ca_cert_pem.is_none() && self.client.is_none()
    }

    fn client(&self, url: &str) -> Result<redis::Client, redis::RedisError> {
        if self.is_default() {
            return redis::Client::open(url);
        }
        if !url.starts_with("rediss://") {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "TLS certificates are set, but the URL is not rediss://",
            )));
        }
        let certs = redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca_cert_pem.clone(),
        };
        redis::Client::build_with_tls(url, certs)
    }
}

/// An error of the Redis connection.
#[derive(Debug)]
pub struct RedisError(redis::RedisError);

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis: {}", self.0)
    }
}
impl std::error::Error for RedisError {}
impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        Self(e)
    }
}

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

/// Messages received from Redis and not yet handed to their channel's stream.
const ORDERED_QUEUE: usize = 4096;
/// Longest a message waits for the message before it, on another channel, to be taken.
const ORDER_WAIT: Duration = Duration::from_secs(1);

/// A `socketioxide-redis` driver that survives a Redis restart: it reconnects with backoff
/// and subscribes to every channel again.
#[derive(Clone)]
pub struct RedisDriver {
    conn: ConnectionManager,
    handlers: Handlers,
}

impl fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriver").finish_non_exhaustive()
    }
}

impl RedisDriver {
    /// Connect to Redis (RESP3 is required: Redis 7 or later; `?protocol=resp3` is added to
    /// the URL when missing). Fails at once if Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Self::connect_tls(url, &RedisTls::default()).await
    }

    /// Like [`RedisDriver::connect`], with the TLS settings of a `rediss://` URL.
    pub async fn connect_tls(url: &str, tls: &RedisTls) -> Result<Self, RedisError> {
        let client = tls.client(&with_resp3(url))?;
        let handlers: Handlers = Arc::default();
        let (ordered_tx, ordered_rx) = mpsc::channel(ORDERED_QUEUE);
        tokio::spawn(dispatch(ordered_rx, Arc::downgrade(&handlers)));
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2))
            .set_push_sender(move |msg: PushInfo| {
                if let Some(item) = message(msg)
                    && let Err(e) = ordered_tx.try_send(item)
                {
                    metrics::counter!(crate::metrics::REDIS_DROPPED, "reason" => "queue_full")
                        .increment(1);
                    tracing::warn!("redis message dropped, the receive queue is full: {e}");
                }
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        let conn = ConnectionManager::new_with_config(client, config).await?;
        let driver = Self { conn, handlers };
        tokio::spawn(health_check(
            driver.conn.clone(),
            Arc::downgrade(&driver.handlers),
        ));
        Ok(driver)
    }
}
/// The Redis backend's settings from the environment: `SOCKETIO_CLUSTER_ID` is the channel
/// prefix (so clusters sharing a Redis stay apart); the request timeout and buffers come
/// from the same variables as for gossip, checked against the same ranges.
pub(crate) fn config_from_env() -> Result<RedisAdapterConfig, crate::error::ConfigError> {
    use crate::ranges::{self, env_count, env_ms};
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let mut config = RedisAdapterConfig::new();
    if let Some(id) = get("SOCKETIO_CLUSTER_ID") {
        config = config.with_prefix(id);
    }
    if let Some(d) = env_ms(&ranges::REQUEST_TIMEOUT, get)? {
        config.request_timeout = d;
    }
    if let Some(n) = env_count(&ranges::ACK_RESPONSE_BUFFER, get)? {
        config.ack_response_buffer = n;
    }
    if let Some(n) = env_count(&ranges::STREAM_BUFFER, get)? {
        config.stream_buffer = n;
    }
    Ok(config)
}

/// Refuse a numeric setting of the Redis backend outside the range that works.
pub(crate) fn check_ranges(config: &RedisAdapterConfig) -> Result<(), crate::error::ConfigError> {
    use crate::ranges;
    const B: &str = "RedisAdapterConfig";
    ranges::REQUEST_TIMEOUT.check(B, config.request_timeout)?;
    ranges::ACK_RESPONSE_BUFFER.check(B, config.ack_response_buffer)?;
    ranges::STREAM_BUFFER.check(B, config.stream_buffer)?;
    Ok(())
}

/// Build the Redis adapter constructor: connect, then wrap in socketioxide-redis's
/// constructor with `config`. A number of `config` outside its range (see the README's
/// configuration table) is refused before connecting, with an error naming the setting.
pub async fn connect(url: &str, config: RedisAdapterConfig) -> Result<RedisAdapterCtr, RedisError> {
    check_ranges(&config).map_err(|e| {
        RedisError(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "setting out of range",
            e.to_string(),
        )))
    })?;
    connect_with_handle(url, config, &RedisTls::default())
        .await
        .map(|(ctr, _)| ctr)
}

/// Like [`connect`], also returning the handle of the connection.
pub(crate) async fn connect_with_handle(
    url: &str,
    config: RedisAdapterConfig,
    tls: &RedisTls,
) -> Result<(RedisAdapterCtr, RedisHandle), RedisError> {
    let driver = RedisDriver::connect_tls(url, tls).await?;
    let node_name = std::env::var("SOCKETIO_CLUSTER_NODE_NAME")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| socketioxide_core::Uid::new().to_string());
    let handle = RedisHandle {
        conn: driver.conn.clone(),
        prefix: config.prefix.to_string(),
        driver: driver.clone(),
        node_name,
        request_timeout: config.request_timeout,
        features: Arc::default(),
    };
    Ok((RedisAdapterCtr::new_with_driver(driver, config), handle))
}

/// The Redis connection of a running Redis backend and the prefix of its channels (and of
/// its other keys, such as sessions). Cheap to clone.
#[derive(Clone)]
pub struct RedisHandle {
    conn: ConnectionManager,
    prefix: String,
    driver: RedisDriver,
    node_name: String,
    request_timeout: Duration,
    /// What the layers above keep per connection (the bus of the cluster-wide features).
    features: Arc<OnceLock<Arc<dyn Any + Send + Sync>>>,
}

impl fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHandle")
            .field("prefix", &self.prefix)
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl RedisHandle {
    /// This node's name on Redis: `SOCKETIO_CLUSTER_NODE_NAME` when set, else a random
    /// one (what other nodes see of it in server events).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The driver, whose subscriptions survive a Redis restart.
    pub(crate) fn driver(&self) -> RedisDriver {
        self.driver.clone()
    }

    /// The backend's request timeout.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// What the layers above keep per connection, shared by every clone of the handle.
    pub(crate) fn features(&self) -> &OnceLock<Arc<dyn Any + Send + Sync>> {
        &self.features
    }

    /// The prefix of the backend's channels and keys (the cluster id).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The connection (reconnects by itself), for commands of other services.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// Ping Redis while the driver lives, so that a lost connection is noticed, re-opened and
/// resubscribed even when the application sends nothing; log loss and recovery.
async fn health_check(
    mut conn: ConnectionManager,
    handlers: std::sync::Weak<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>,
) {
    let mut healthy = true;
    let up = metrics::gauge!(crate::metrics::REDIS_UP);
    up.set(1.0);
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tick.tick().await;
        if handlers.strong_count() == 0 {
            return;
        }
        let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        up.set(if ping.is_ok() { 1.0 } else { 0.0 });
        match (ping, healthy) {
            (Err(e), true) => {
                tracing::warn!("redis connection lost, reconnecting: {e}");
                healthy = false;
            }
            (Ok(_), false) => {
                tracing::info!("redis connection restored; channels resubscribed");
                healthy = true;
            }
            _ => {}
        }
    }
}

/// The channel and payload of a message pushed by Redis; `None` for other pushes.
fn message(msg: PushInfo) -> Option<ChanItem> {
    if !matches!(msg.kind, PushKind::Message | PushKind::SMessage) {
        return None;
    }
    let mut data = msg.data.into_iter();
    let (Some(chan), Some(payload)) = (data.next(), data.next()) else {
        tracing::warn!("redis message without channel or payload dropped");
        return None;
    };
    let (Ok(chan), Ok(payload)) = (
        String::from_redis_value(chan),
        Vec::<u8>::from_redis_value(payload),
    ) else {
        tracing::warn!("redis message of unexpected shape dropped");
        return None;
    };
    Some((chan, payload))
}

/// Hand the messages received from Redis to their channels' streams, in the order Redis
/// sent them, until the driver is gone.
///
/// socketioxide-redis reads a namespace's channels (requests to all nodes, requests to this
/// node, responses) through one `select`, which takes from whichever stream is ready: had
/// two channels a message each, a broadcast to all nodes could be applied before a join
/// aimed at this node that Redis delivered first. So a message for another channel than
/// the previous one waits until that one was taken (at most [`ORDER_WAIT`]).
async fn dispatch(
    mut rx: mpsc::Receiver<ChanItem>,
    handlers: std::sync::Weak<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>,
) {
    let mut previous: Option<(String, mpsc::Sender<ChanItem>)> = None;
    while let Some((chan, payload)) = rx.recv().await {
        let Some(handlers) = handlers.upgrade() else {
            return;
        };
        let tx = handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&chan)
            .cloned();
        drop(handlers);
        let Some(tx) = tx else {
            tracing::debug!(%chan, "redis message for a channel no longer subscribed");
            continue;
        };
        if let Some((prev_chan, prev_tx)) = previous.take()
            && prev_chan != chan
        {
            taken(&prev_chan, &prev_tx).await;
        }
        let len = payload.len();
        if let Err(e) = tx.try_send((chan.clone(), payload)) {
            metrics::counter!(crate::metrics::REDIS_DROPPED, "reason" => "queue_full").increment(1);
            tracing::warn!(%chan, "redis message dropped, subscriber queue full: {e}");
        } else {
            redis_message("received", len);
        }
        previous = Some((chan, tx));
    }
}

/// Record one message of `len` payload bytes published or received.
fn redis_message(direction: &'static str, len: usize) {
    metrics::counter!(crate::metrics::REDIS_MESSAGES, "direction" => direction).increment(1);
    metrics::counter!(crate::metrics::REDIS_BYTES, "direction" => direction).increment(len as u64);
}

/// Wait until every message queued on `tx` was taken by its stream (bounded).
async fn taken(chan: &str, tx: &mpsc::Sender<ChanItem>) {
    let wait = tx.reserve_many(tx.max_capacity());
    match tokio::time::timeout(ORDER_WAIT, wait).await {
        // All permits free: the queue is empty. Give them back at once.
        Ok(Ok(permits)) => drop(permits),
        // The stream is gone: nothing to wait for.
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!(
            %chan,
            "redis messages not taken in time; the next message, on another channel, may overtake them"
        ),
    }
}

impl Driver for RedisDriver {
    type Error = RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let len = val.len();
        let res: redis::RedisResult<redis::Value> = self.conn.clone().publish(&chan, val).await;
        res.map(|_| redis_message("published", len)).map_err(|e| {
            tracing::warn!(%chan, "redis publish failed, message not delivered to other nodes: {e}");
            e.into()
        })
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        if let Err(e) = self.conn.clone().subscribe(&chan).await {
            self.handlers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&chan);
            return Err(e.into());
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        // socketioxide polls the adapter's `close` only once, and redis-rs drops a queued
        // command whose caller is gone: send the UNSUBSCRIBE from a task of its own so it
        // always reaches Redis (else other nodes keep counting this node for the namespace).
        let mut conn = self.conn.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.unsubscribe(&chan).await {
                tracing::warn!(%chan, "redis unsubscribe failed: {e}");
            }
        });
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests;
