//! The bus on the Redis backend, over pub/sub on the backend's connection:
//!
//! - every node subscribes, before its constructor (`ClusterAdapterCtr::redis`) returns,
//!   to `<prefix>-bus` (messages to all) and to its own channel
//!   `<prefix>-bus#<name>#<generation>` (messages to it, and the answers to its requests);
//! - the members are the nodes subscribed to a channel of their own ([`members`]), listed
//!   with `PUBSUB CHANNELS` when a request is sent and every [`POLL`] while a request
//!   waits or a feature follows the members; a node is also a member from its first
//!   message on;
//! - a request is numbered and booked in the crate's one request ledger ([`requests`])
//!   before it is published; each node asked answers on the sender's channel, and a node
//!   whose channel vanished is no longer waited for.
//!
//! Messages are [`envelope`]s; what cannot be read is dropped, counted
//! ([`REDIS_DROPPED`](crate::metrics::REDIS_DROPPED), reason `unreadable`) and logged at a
//! bounded rate.

pub(crate) mod envelope;
pub(crate) mod members;
pub(crate) mod requests;

use std::{
    any::Any,
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_core::{future::BoxFuture, stream::BoxStream};
use futures_util::{FutureExt, StreamExt};
use redis::aio::ConnectionManager;
use socketioxide_redis::drivers::Driver;
use tokio::sync::{broadcast, oneshot, watch};

use super::{Bus, BusError, Handler, MemberChange, NodeId, Registration, Replies, Reply, To};
use crate::{
    rate_log::RateLog,
    redis::{RedisDriver, RedisHandle},
};
use envelope::{Answer, Envelope, Frame, MAX_MESSAGE, OVERHEAD};
use members::Known;
use requests::{Answered, Requests};

/// How often the members are listed while someone needs them.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// Messages received and not yet read, per channel.
const QUEUE: usize = 1024;
/// Membership changes a feature may lag behind.
const CHANGES: usize = 1024;
/// At most one log line per kind in this period.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Messages that could not be read, answers not sent: a node or anyone with access to
/// Redis can cause them at will.
static UNREADABLE_LOG: RateLog = RateLog::new(LOG_PERIOD);
static NOT_SENT_LOG: RateLog = RateLog::new(LOG_PERIOD);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bus of one node on Redis.
pub(crate) struct RedisBus {
    driver: RedisDriver,
    conn: ConnectionManager,
    me: NodeId,
    /// `<prefix>-bus`: messages to all.
    all: String,
    /// `<prefix>-bus#`: what every node's own channel starts with.
    own_prefix: String,
    services: RwLock<HashMap<&'static str, Weak<dyn Handler>>>,
    requests: Requests,
    known: Mutex<Known>,
    changes: broadcast::Sender<MemberChange>,
    /// One listing at a time: each is applied in the order it was taken.
    listing: tokio::sync::Mutex<()>,
    /// How long a confirmed send waits, at most.
    request_timeout: Duration,
    /// Set once both channels are subscribed (or that failed, with why).
    ready: watch::Receiver<Option<Result<(), String>>>,
    /// Dropped with the bus: its receiving task unsubscribes and ends.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// The bus of the Redis backend of `handle`: one per connection, started (subscribing
    /// in the background, see [`RedisBus::subscribed`]) by the first feature that asks.
    pub(crate) fn of(handle: &RedisHandle) -> Arc<Self> {
        let kept = handle
            .features()
            .get_or_init(|| Self::start(handle) as Arc<dyn Any + Send + Sync>)
            .clone();
        // Only this function fills the slot, with a bus.
        kept.downcast::<Self>()
            .unwrap_or_else(|_| Self::start(handle))
    }

    fn start(handle: &RedisHandle) -> Arc<Self> {
        let generation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let me = NodeId {
            name: handle.node_name().into(),
            generation,
        };
        let all = format!("{}-bus", handle.prefix());
        let own_prefix = format!("{all}#");
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready) = watch::channel(None);
        let bus = Arc::new(Self {
            driver: handle.driver(),
            conn: handle.connection(),
            me,
            all,
            own_prefix,
            services: RwLock::default(),
            requests: Requests::default(),
            known: Mutex::default(),
            changes: broadcast::channel(CHANGES).0,
            listing: tokio::sync::Mutex::new(()),
            request_timeout: handle.request_timeout(),
            ready,
            _stop: stop,
        });
        tokio::spawn(receive(Arc::downgrade(&bus), ready_tx, stopped));
        tokio::spawn(watch_members(Arc::downgrade(&bus)));
        bus
    }

    /// Wait (at most `limit`) until the bus's channels are subscribed: from then on, this
    /// node hears every message to all, and the others list it as a member.
    pub(crate) async fn subscribed(&self, limit: Duration) -> Result<(), BusError> {
        let mut ready = self.ready.clone();
        let state = tokio::time::timeout(limit, ready.wait_for(Option::is_some)).await;
        match state {
            Ok(Ok(state)) => state.clone().unwrap_or(Ok(())),
            Ok(Err(_)) => Err("the bus's receiving task ended".into()),
            Err(_) => Err("not subscribed to Redis in time".into()),
        }
        .map_err(BusError::Backend)
    }

    /// List the nodes subscribed to their channel, and apply what changed: the members
    /// after it.
    async fn refresh(&self) -> Result<Vec<NodeId>, String> {
        let _one = self.listing.lock().await;
        let at = tokio::time::Instant::now();
        let chans = crate::redis::subscribed_under(&self.conn, &self.own_prefix).await?;
        let live: BTreeSet<NodeId> = chans
            .iter()
            .filter_map(|c| members::node_of(c))
            .filter(|n| *n != self.me)
            .collect();
        let (changes, members) = {
            let mut known = lock(&self.known);
            (known.listed(&live, at), known.members())
        };
        self.apply(changes);
        Ok(members)
    }

    /// Tell the features, and the requests waiting for a node that left.
    fn apply(&self, changes: impl IntoIterator<Item = MemberChange>) {
        for change in changes {
            match &change {
                MemberChange::Joined(node) => tracing::debug!(%node, "bus: a node joined"),
                MemberChange::Left(node) => {
                    tracing::info!(%node, "bus: a node's channel vanished, it left");
                    self.requests.gone(node);
                }
            }
            // No feature following the members is no error.
            let _ = self.changes.send(change);
        }
    }

    /// Publish `frame` on `chan`.
    async fn publish(&self, chan: String, frame: Frame) -> Result<(), BusError> {
        let env = Envelope {
            from: self.me.name.to_string(),
            generation: self.me.generation,
            frame,
        };
        let bytes = envelope::encode(&env).map_err(BusError::Backend)?;
        self.driver
            .publish(chan, bytes)
            .await
            .map_err(|e| BusError::Backend(e.to_string()))
    }

    fn check_size(&self, body: &Bytes) -> Result<(), BusError> {
        let max = self.max_body();
        if body.len() > max {
            return Err(BusError::TooLarge {
                size: body.len(),
                max,
            });
        }
        Ok(())
    }

    /// Publish the answer to request `id` of `to`, from a task of its own (an answer never
    /// waits); one too large to publish is replaced by why.
    fn answer(self: &Arc<Self>, to: &NodeId, id: u64, answer: Answer) {
        let bus = self.clone();
        let chan = members::channel(&self.own_prefix, to);
        tokio::spawn(async move {
            let answer = match answer {
                Answer::Body(body) if body.len() > bus.max_body() => Answer::Refused(format!(
                    "answer of {} bytes exceeds the maximum of {} bytes",
                    body.len(),
                    bus.max_body()
                )),
                other => other,
            };
            if let Err(e) = bus.publish(chan, Frame::Answer { id, answer }).await
                && let Some(held_back) = NOT_SENT_LOG.allow()
            {
                tracing::warn!(held_back, "bus: answer not sent: {e}");
            }
        });
    }

    fn handler(&self, service: &str) -> Option<Arc<dyn Handler>> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .and_then(Weak::upgrade)
    }

    /// A message received from Redis.
    fn on_payload(self: &Arc<Self>, payload: &[u8]) {
        let env = match envelope::decode(payload) {
            Ok(env) => env,
            Err(e) => {
                metrics::counter!(crate::metrics::REDIS_DROPPED, "reason" => "unreadable")
                    .increment(1);
                if let Some(held_back) = UNREADABLE_LOG.allow() {
                    tracing::warn!(held_back, "bus: message from redis dropped: {e}");
                }
                return;
            }
        };
        let from = env.sender();
        // This node's own messages to all come back to it.
        if from == self.me {
            return;
        }
        let joined = lock(&self.known).heard(&from, tokio::time::Instant::now());
        self.apply(joined);
        match env.frame {
            Frame::Message { service, body } => match self.handler(&service) {
                Some(h) => h.on_message(&from, body),
                None => {
                    tracing::debug!(%from, %service, "bus: message for a service not running here dropped");
                }
            },
            Frame::Request { service, id, body } => match self.handler(&service) {
                Some(h) => {
                    let bus = Arc::downgrade(self);
                    let to = from.clone();
                    let reply = Reply::new(move |answer| {
                        if let Some(bus) = bus.upgrade() {
                            bus.answer(&to, id, answer.map_or(Answer::Done, Answer::Body));
                        }
                    });
                    h.on_request(&from, body, reply);
                }
                None => self.answer(&from, id, Answer::NotHosted),
            },
            Frame::Answer { id, answer } => {
                let answer = match answer {
                    Answer::Body(body) => Answered::Body(body),
                    Answer::Done | Answer::NotHosted => Answered::Done,
                    Answer::Refused(why) => Answered::Refused(why),
                };
                // One that no request waits for (say, after its deadline) is dropped and
                // logged by the ledger.
                self.requests.answer(&from, id, answer);
            }
        }
    }
}

impl Bus for RedisBus {
    fn me(&self) -> &NodeId {
        &self.me
    }

    fn members(&self) -> Vec<NodeId> {
        lock(&self.known).members()
    }

    fn changes(&self) -> BoxStream<'static, MemberChange> {
        crate::lagging::stream(self.changes.subscribe(), "bus: membership changes").boxed()
    }

    fn max_body(&self) -> usize {
        MAX_MESSAGE - OVERHEAD
    }

    fn ready(&self, limit: Duration) -> BoxFuture<'_, Result<(), BusError>> {
        self.subscribed(limit).boxed()
    }

    fn register(&self, service: &'static str, handler: Weak<dyn Handler>) -> Registration {
        let replaced = self
            .services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service, handler);
        if replaced.is_some_and(|h| h.strong_count() > 0) {
            tracing::warn!(%service, "service registered again; the earlier instance stops receiving");
        }
        Registration::new(Arc::new(()))
    }

    fn send(
        &self,
        to: To,
        service: &'static str,
        body: Bytes,
        confirm: bool,
    ) -> BoxFuture<'_, Result<(), BusError>> {
        async move {
            if confirm {
                let mut replies = self
                    .request(to, service, body, self.request_timeout)
                    .await?;
                // Whatever each node answered: it handled the message, or is not waited for.
                while replies.next().await.is_some() {}
                return Ok(());
            }
            self.check_size(&body)?;
            let chan = match to {
                To::All => self.all.clone(),
                To::One(node) => members::channel(&self.own_prefix, &node),
            };
            let service = service.to_string();
            self.publish(chan, Frame::Message { service, body }).await
        }
        .boxed()
    }

    fn request(
        &self,
        to: To,
        service: &'static str,
        body: Bytes,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Replies, BusError>> {
        async move {
            self.check_size(&body)?;
            let deadline = std::time::Instant::now() + wait;
            self.subscribed(wait).await?;
            let (chan, nodes) = match to {
                To::All => (
                    self.all.clone(),
                    self.refresh().await.map_err(BusError::Backend)?,
                ),
                To::One(node) => (members::channel(&self.own_prefix, &node), vec![node]),
            };
            // Booked before publishing: an answer can come before the publish returns.
            // Should the publish fail, the replies are dropped: the request is forgotten.
            let (id, replies) = self.requests.book(&nodes, deadline);
            let service = service.to_string();
            self.publish(chan, Frame::Request { service, id, body })
                .await?;
            Ok(replies)
        }
        .boxed()
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }
}

/// Subscribe to the bus's channels (both, or neither), list the members once, then hand
/// what arrives to the bus while it lives; unsubscribe when it is dropped.
async fn receive(
    bus: Weak<RedisBus>,
    ready: watch::Sender<Option<Result<(), String>>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Some(this) = bus.upgrade() else { return };
    let driver = this.driver.clone();
    // To all first: a node listed (its own channel subscribed) hears every message to all
    // sent after the listing.
    let chans = [
        this.all.clone(),
        members::channel(&this.own_prefix, &this.me),
    ];
    drop(this);
    let mut streams = Vec::new();
    for chan in &chans {
        match driver.subscribe(chan.clone(), QUEUE).await {
            Ok(s) => streams.push(s),
            Err(e) => {
                tracing::warn!(%chan, "bus: cannot subscribe, this node gets nothing from the others: {e}");
                let _ = ready.send(Some(Err(format!("cannot subscribe to {chan}: {e}"))));
                for chan in chans {
                    let _ = driver.unsubscribe(chan).await;
                }
                return;
            }
        }
    }
    if let Some(this) = bus.upgrade()
        && let Err(e) = this.refresh().await
    {
        tracing::warn!("bus: cannot list the nodes on redis: {e}");
    }
    let _ = ready.send(Some(Ok(())));
    let mut merged = futures_util::stream::select_all(streams);
    loop {
        tokio::select! {
            item = merged.next() => {
                let Some((_, payload)) = item else { break };
                let Some(bus) = bus.upgrade() else { break };
                bus.on_payload(&payload);
            }
            _ = &mut stopped => break,
        }
    }
    for chan in chans {
        let _ = driver.unsubscribe(chan).await;
    }
}

/// List the members every [`POLL`] while a request waits or a feature follows them, so
/// that a node whose channel vanished is found gone; stop with the bus.
async fn watch_members(bus: Weak<RedisBus>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(bus) = bus.upgrade() else { return };
        let needed = bus.changes.receiver_count() > 0 || !bus.requests.is_empty();
        if needed && let Err(e) = bus.refresh().await {
            tracing::debug!("bus: cannot list the nodes on redis: {e}");
        }
    }
}
