//! Presence on the Redis backend, over Redis pub/sub on the backend's connection:
//!
//! - every node subscribes to `<prefix>-presence` (deltas, states and announcements, for
//!   all) and to `<prefix>-presence#<node name>` (requests for its state, and states it
//!   asked for);
//! - a node broadcasts its deltas and announcements on the first, in order, from one task;
//!   a node that sees a gap or a new node asks the owner for its state on the owner's
//!   channel, and the owner answers on the asker's channel;
//! - the live nodes are those subscribed to a channel of their name (`PUBSUB CHANNELS`,
//!   listed every [`POLL`]): a node whose channel vanished (its process died and Redis
//!   closed its connection, or it stopped) is found dead, and its entries go with leave
//!   diffs; a node whose channel appears gets this node's state and is asked for its own.
//!
//! No authenticated link tells who sent a message: each names its sender and the
//! sender's generation (the time it started, so that a restarted node replaces the old
//! one). Messages are msgpack (`rmp-serde`, the codec of socketioxide-redis); one larger
//! than [`MAX_MESSAGE`] is refused before it is decoded.

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use socketioxide_redis::drivers::Driver;
use tokio::sync::{mpsc, watch};

use super::{
    Presence, PresenceConfig, Shared,
    queue::{Item, Queue, Target, Transport},
    replica::{Origin, Replica},
};
use crate::{
    gossip::wire::presence::PresenceMsg,
    rate_log::RateLog,
    redis::{RedisDriver, RedisHandle},
};

/// Presence messages this node could not send (none are expected: every entry fits a
/// message): logged at most once per period, node-wide.
static NOT_SENT_LOG: RateLog = RateLog::new(Duration::from_secs(10));

/// Largest message accepted from Redis, in bytes.
pub(crate) const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// About the most bytes of entries in one message (a quarter of [`MAX_MESSAGE`]).
const BUDGET: usize = 1024 * 1024;
/// Messages received and not yet read, per channel.
const QUEUE: usize = 1024;
/// How often the live nodes are listed.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// Longest node name accepted in a message: it names a channel.
const MAX_NAME: usize = 256;

/// A presence message with its sender, as published on Redis.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Envelope {
    /// The sender's node name.
    from: String,
    /// The sender's generation.
    generation: u64,
    msg: PresenceMsg,
}

fn encode(env: &Envelope) -> Result<Vec<u8>, String> {
    let bytes = rmp_serde::to_vec(env).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_MESSAGE {
        return Err(format!(
            "message of {} bytes exceeds the maximum of {MAX_MESSAGE} bytes",
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn decode(payload: &[u8]) -> Result<Envelope, String> {
    if payload.len() > MAX_MESSAGE {
        return Err(format!(
            "message of {} bytes exceeds the maximum of {MAX_MESSAGE} bytes",
            payload.len()
        ));
    }
    let env: Envelope = rmp_serde::from_slice(payload).map_err(|e| e.to_string())?;
    if env.from.is_empty() || env.from.len() > MAX_NAME {
        return Err("its sender's name is empty or too long".into());
    }
    Ok(env)
}

/// The channels of one presence.
#[derive(Clone)]
struct Channels {
    /// `<prefix>-presence`.
    all: String,
    /// This node's name.
    me: String,
}

impl Channels {
    fn of(&self, name: &str) -> String {
        format!("{}#{name}", self.all)
    }
}

/// The transport a [`Shared`] holds: dropped with the presence, which stops its tasks.
struct RedisTransport {
    queue: Arc<Queue<String>>,
    _stop: watch::Sender<()>,
}

impl Transport for RedisTransport {
    fn broadcast(&self, msgs: Vec<PresenceMsg>) {
        self.queue.broadcast(msgs);
    }
}

impl Presence {
    /// This node's presence on the Redis backend of `handle`.
    pub(crate) fn redis(handle: &RedisHandle, config: &PresenceConfig) -> Self {
        let generation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let me = Origin {
            name: handle.node_name().into(),
            generation,
        };
        let chans = Channels {
            all: format!("{}-presence", handle.prefix()),
            me: handle.node_name().to_string(),
        };
        let replica = Replica::new(me.clone(), config.clone(), BUDGET);
        let (queue, rx) = Queue::new(config, &me.name);
        let (stop, stopped) = watch::channel(());
        let presence = Presence::new(
            replica,
            Arc::new(RedisTransport {
                queue: queue.clone(),
                _stop: stop,
            }),
            config,
        );
        let shared = Arc::downgrade(&presence.shared);
        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(send(
            handle.driver(),
            chans.clone(),
            generation,
            (shared.clone(), queue.clone()),
            rx,
        ));
        tokio::spawn(receive(
            handle.driver(),
            chans.clone(),
            shared.clone(),
            queue.clone(),
            ready_tx,
            stopped.clone(),
        ));
        tokio::spawn(run(
            handle.clone(),
            chans,
            shared,
            queue,
            config.clone(),
            ready,
            stopped,
        ));
        presence
    }
}

/// Publish the queued messages, in order; a queued state is taken as it is published.
async fn send(
    driver: RedisDriver,
    chans: Channels,
    generation: u64,
    (shared, queue): (Weak<Shared>, Arc<Queue<String>>),
    mut rx: mpsc::Receiver<(Target<String>, Item)>,
) {
    while let Some((to, item)) = rx.recv().await {
        let Some(msgs) = queue.messages(&to, item, &shared, BUDGET) else {
            return;
        };
        let chan = match to {
            Target::Members => chans.all.clone(),
            Target::Peer(name) => chans.of(&name),
        };
        for msg in msgs {
            let env = Envelope {
                from: chans.me.clone(),
                generation,
                msg,
            };
            let bytes = match encode(&env) {
                Ok(bytes) => bytes,
                Err(e) => {
                    if let Some(held_back) = NOT_SENT_LOG.allow() {
                        tracing::warn!(held_back, "presence message not sent: {e}");
                    }
                    continue;
                }
            };
            // The driver logs a failed publish; peers repair the loss from the announcements.
            let _ = driver.publish(chan.clone(), bytes).await;
        }
    }
}

/// Subscribe to this node's channels, then take in what arrives while the presence lives;
/// unsubscribe when it is dropped.
async fn receive(
    driver: RedisDriver,
    chans: Channels,
    shared: Weak<Shared>,
    queue: Arc<Queue<String>>,
    ready: watch::Sender<bool>,
    mut stopped: watch::Receiver<()>,
) {
    let names = [chans.all.clone(), chans.of(&chans.me)];
    let mut streams = Vec::new();
    for chan in &names {
        match driver.subscribe(chan.clone(), QUEUE).await {
            Ok(s) => streams.push(s),
            Err(e) => {
                tracing::warn!(%chan, "presence: cannot subscribe, this node gets no presence from others: {e}");
                for chan in names {
                    let _ = driver.unsubscribe(chan).await;
                }
                return;
            }
        }
    }
    let _ = ready.send(true);
    let mut merged = futures_util::stream::select_all(streams);
    loop {
        tokio::select! {
            item = merged.next() => {
                let Some((chan, payload)) = item else { break };
                let Some(shared) = shared.upgrade() else { break };
                let env = match decode(&payload) {
                    Ok(env) => env,
                    Err(e) => {
                        shared.refused(1, &format!("it does not decode: {e}"), &chan);
                        continue;
                    }
                };
                // This node's own broadcasts come back on the channel for all.
                if env.from == chans.me {
                    continue;
                }
                let from = Origin { name: env.from.as_str().into(), generation: env.generation };
                let peer = env.from;
                shared.take_in(&queue, &from, &peer, env.msg);
            }
            _ = stopped.changed() => break,
        }
    }
    for chan in names {
        let _ = driver.unsubscribe(chan).await;
    }
}

/// The names of the nodes subscribed to a channel of their own, this one excepted.
async fn live_nodes(handle: &RedisHandle, chans: &Channels) -> Result<HashSet<String>, String> {
    let chans_now = crate::redis::subscribed_under(&handle.connection(), &chans.of("")).await?;
    Ok(chans_now.into_iter().filter(|n| *n != chans.me).collect())
}

/// List the live nodes, sweep disconnected sockets, announce this node's sequence number;
/// stop with the presence.
async fn run(
    handle: RedisHandle,
    chans: Channels,
    shared: Weak<Shared>,
    queue: Arc<Queue<String>>,
    config: PresenceConfig,
    mut ready: watch::Receiver<bool>,
    mut stopped: watch::Receiver<()>,
) {
    // List the nodes once subscribed: the state a node sends when asked then reaches us.
    tokio::select! {
        _ = ready.wait_for(|r| *r) => {}
        _ = stopped.changed() => return,
    }
    let mut sweep = tokio::time::interval(config.sweep_interval);
    let mut announce = tokio::time::interval(config.announce_interval);
    let mut poll = tokio::time::interval(POLL);
    for t in [&mut sweep, &mut announce, &mut poll] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut known: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = sweep.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.sweep();
            }
            _ = announce.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.announce(&queue);
            }
            _ = poll.tick() => {
                // The nodes held before listing: one whose message came in before the
                // listing was subscribed before it, so it is listed unless gone.
                let Some(held) = shared.upgrade().map(|s| s.lock().others()) else { return };
                let live = match live_nodes(&handle, &chans).await {
                    Ok(live) => live,
                    Err(e) => {
                        tracing::debug!("presence: cannot list the nodes on redis: {e}");
                        continue;
                    }
                };
                let Some(shared) = shared.upgrade() else { return };
                let mut replica = shared.lock();
                for origin in held.iter().filter(|o| !live.contains(&*o.name)) {
                    let diffs = replica.left(origin);
                    tracing::info!(node = %origin.name, removed = diffs.iter().map(|d| d.leaves.len()).sum::<usize>(),
                        "presence: a node's channel vanished, its entries removed");
                    shared.publish(&replica, diffs);
                }
                let mut joined: Vec<&String> = live.difference(&known).collect();
                joined.sort();
                for name in joined {
                    tracing::debug!(node = %name, "presence: a node appeared, exchanging states");
                    replica.joined(&Origin { name: name.as_str().into(), generation: u64::MAX });
                    queue.push_state(name.clone());
                    queue.push(Target::Peer(name.clone()), PresenceMsg::StateRequest);
                }
                drop(replica);
                known = live;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::gossip::wire::presence::{PresenceEntry, PresenceOp};

    fn delta() -> Envelope {
        Envelope {
            from: "n1".into(),
            generation: 7,
            msg: PresenceMsg::Delta {
                seq: 1,
                ops: vec![PresenceOp::Put(PresenceEntry {
                    topic: "t".into(),
                    key: "k".into(),
                    socket: "s".into(),
                    meta: Bytes::from_static(b"{}"),
                })],
            },
        }
    }

    #[test]
    fn messages_have_stable_bytes_and_round_trip() {
        let cases: [(Envelope, &str); 3] = [
            (
                delta(),
                "93a26e310781a544656c746192019181a350757494a174a16ba173c4027b7d",
            ),
            (
                Envelope {
                    from: "n2".into(),
                    generation: 1,
                    msg: PresenceMsg::StateRequest,
                },
                "93a26e3201ac537461746552657175657374",
            ),
            (
                Envelope {
                    from: "n2".into(),
                    generation: 1,
                    msg: PresenceMsg::Seq(3),
                },
                "93a26e320181a353657103",
            ),
        ];
        for (env, golden) in cases {
            let bytes = encode(&env).unwrap();
            assert_eq!(hex(&bytes), golden, "{env:?}");
            assert_eq!(decode(&bytes).unwrap(), env);
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn refused_input_is_an_error_not_a_panic() {
        assert!(decode(&[0xc1]).is_err());
        assert!(decode(&[]).is_err());
        let err = decode(&vec![0; MAX_MESSAGE + 1]).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
        for from in [String::new(), "x".repeat(MAX_NAME + 1)] {
            let mut env = delta();
            env.from = from;
            let err = decode(&rmp_serde::to_vec(&env).unwrap()).unwrap_err();
            assert!(err.contains("name"), "{err}");
        }
        // More items than a message may hold are refused while decoding, and this node
        // never sends them.
        let mut env = delta();
        if let PresenceMsg::Delta { ops, .. } = &mut env.msg {
            let op = ops[0].clone();
            ops.resize(crate::gossip::wire::presence::MAX_ITEMS + 1, op);
        }
        let raw = crate::gossip::wire::bounded::unchecked(|| rmp_serde::to_vec(&env).unwrap());
        assert!(decode(&raw).is_err());
        let err = encode(&env).unwrap_err();
        assert!(err.contains("4097 presence operations"), "{err}");
    }
}
