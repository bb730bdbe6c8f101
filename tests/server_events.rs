//! Server-to-server events, on both backends.
//!
//! - Three nodes in this process: an event reaches the two other nodes (and not its
//!   sender); an ack request yields one answer per other node and ends once both answered
//!   (its timeout is far longer than the test's bound); a node without a handler, or whose
//!   handler does not answer, says so; a node that runs no server events says so too.
//! - A node asking two `cluster_node` processes (Linux): a node killed while the request
//!   runs is not waited for; a hung one (SIGSTOP) is found gone after the peer timeout on
//!   gossip (its item says `Gone`, not `Timeout`), and costs the timeout on Redis, where
//!   nothing notices a hung subscriber.

mod common;
#[cfg(all(target_os = "linux", feature = "cluster-gossip"))]
#[path = "common/external.rs"]
mod external;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use socketioxide_cluster::events::{
    ServerAck, ServerAckError, ServerEvent, ServerEventError, ServerEvents,
};
use tokio::sync::mpsc;

/// Far longer than any test waits: a stream that ends ended because every node answered.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// Three nodes of one cluster with their events, each seeing the two others.
async fn three(backend: &Backend) -> (Vec<TestNode>, Vec<ServerEvents>) {
    let mut cluster = TestCluster::new(backend);
    let (mut nodes, mut events) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (node, ev) = cluster.start_with_events().await;
        ev.on("ready", async |ev: ServerEvent| {
            ev.ack(&true).ok();
        });
        nodes.push(node);
        events.push(ev);
    }
    wait_formed(&nodes.iter().collect::<Vec<_>>()).await;
    // Once each handle is ready (on gossip at once, on Redis once subscribed), the first
    // event of each node is answered by both others (asked once).
    for ev in &events {
        ev.ready(SETTLES).await.expect("subscribed");
    }
    for ev in &events {
        let acks = answers(ev, "ready", &(), Duration::from_secs(5)).await;
        assert!(
            acks.len() == 2 && acks.values().all(Result::is_ok),
            "{} hears from both others at once: {acks:?}",
            ev.node_name()
        );
    }
    (nodes, events)
}

/// Every ack of an event, by node; bounded by [`SETTLES`] beyond `timeout`.
async fn answers(
    ev: &ServerEvents,
    event: &str,
    data: &(impl serde::Serialize + Sync),
    timeout: Duration,
) -> BTreeMap<String, Result<Value, ServerAckError>> {
    let acks = ev
        .emit_with_ack(event, data, timeout)
        .await
        .expect("event sent");
    let acks: Vec<ServerAck> = within(timeout + SETTLES, acks.collect())
        .await
        .expect("the ack stream ends");
    let n = acks.len();
    let by_node: BTreeMap<_, _> = acks.into_iter().map(|a| (a.node, a.result)).collect();
    assert_eq!(by_node.len(), n, "one ack per node: {by_node:?}");
    by_node
}

fn names_of(events: &[&ServerEvents]) -> Vec<String> {
    let mut names: Vec<String> = events.iter().map(|e| e.node_name().to_string()).collect();
    names.sort();
    names
}

async fn an_event_reaches_every_other_node(backend: Backend) {
    let (_nodes, events) = three(&backend).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    for ev in &events {
        let tx = tx.clone();
        let me = ev.node_name().to_string();
        ev.on("note", move |ev: ServerEvent| {
            let (tx, me) = (tx.clone(), me.clone());
            async move {
                let data: Value = ev.data().unwrap();
                let _ = tx.send((me, ev.from().to_string(), data));
            }
        });
    }
    events[0].emit("note", &json!({"n": 1})).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let note = within(SETTLES, rx.recv()).await.flatten();
        got.push(note.expect("a node got the event"));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let sender = events[0].node_name().to_string();
    let want: Vec<_> = names_of(&[&events[1], &events[2]])
        .into_iter()
        .map(|n| (n, sender.clone(), json!({"n": 1})))
        .collect();
    assert_eq!(got, want);
    // The sender does not get its own event: a second one is the next to arrive.
    events[1].emit("note", &json!({"n": 2})).await.unwrap();
    for _ in 0..2 {
        let (_, from, data) = within(SETTLES, rx.recv()).await.flatten().unwrap();
        assert_eq!(
            (from.as_str(), data),
            (events[1].node_name(), json!({"n": 2}))
        );
    }
    assert_eq!(events.iter().map(ServerEvents::dropped).sum::<u64>(), 0);
}

async fn acks_give_one_answer_per_node_and_end_when_all_answered(backend: Backend) {
    let (_nodes, events) = three(&backend).await;
    for (i, ev) in events.iter().enumerate() {
        ev.on("add", move |ev: ServerEvent| async move {
            let n: u64 = ev.data().unwrap();
            ev.ack(&(n + i as u64)).unwrap();
        });
    }
    let acks = answers(&events[0], "add", &10, ACK_TIMEOUT).await;
    let want: BTreeMap<String, Result<Value, ServerAckError>> = [
        (events[1].node_name().to_string(), Ok(json!(11))),
        (events[2].node_name().to_string(), Ok(json!(12))),
    ]
    .into();
    assert_eq!(acks, want);
}

async fn missing_handlers_and_silent_ones_are_told(backend: Backend) {
    let (_nodes, events) = three(&backend).await;
    events[2].on("quiet", async |_: ServerEvent| {});
    let acks = answers(&events[0], "quiet", &(), ACK_TIMEOUT).await;
    let want: BTreeMap<String, Result<Value, ServerAckError>> = [
        (
            events[1].node_name().to_string(),
            Err(ServerAckError::NoHandler),
        ),
        (
            events[2].node_name().to_string(),
            Err(ServerAckError::NoAck),
        ),
    ]
    .into();
    assert_eq!(acks, want);
    let long = "x".repeat(socketioxide_cluster::events::MAX_EVENT_NAME + 1);
    for name in ["", long.as_str()] {
        let err = events[0].emit(name, &()).await.unwrap_err();
        assert!(matches!(err, ServerEventError::EventName(_)), "{err}");
    }
}

/// A node that runs no server events is still a member: asked, it answers `NotRunning` at
/// once, on both backends (its ack is neither missing nor a `Timeout`).
async fn a_node_without_server_events_answers_not_running(backend: Backend) {
    let mut cluster = TestCluster::new(&backend);
    let (asker, events) = cluster.start_with_events().await;
    let plain = cluster.start(|b| b).await;
    wait_formed(&[&asker, &plain]).await;
    events.ready(SETTLES).await.expect("subscribed");
    let acks = answers(&events, "anyone", &(), ACK_TIMEOUT).await;
    let want: BTreeMap<String, Result<Value, ServerAckError>> =
        [(plain.node_name(), Err(ServerAckError::NotRunning))].into();
    assert_eq!(acks, want);
}

backend_tests!(
    an_event_reaches_every_other_node,
    acks_give_one_answer_per_node_and_end_when_all_answered,
    missing_handlers_and_silent_ones_are_told,
    a_node_without_server_events_answers_not_running,
);

/// A node of this process asking two `cluster_node` processes (an example that needs the
/// gossip feature).
#[cfg(all(target_os = "linux", feature = "cluster-gossip"))]
mod processes {
    use std::{net::SocketAddr, path::PathBuf};

    use super::*;
    use crate::external::{
        self, Spawned, free_udp_port, signal_group, start_cluster_node, wait_stopped,
    };
    use socketioxide_cluster::ClusterAdapterCtr;

    /// QUIC keep-alives notice a hung peer after this (gossip).
    const PEER_TIMEOUT: Duration = Duration::from_secs(2);
    /// How long a `slow` answer takes: the kill lands while it runs.
    const SLOW_MS: u64 = 1000;

    struct Proc {
        name: &'static str,
        log: PathBuf,
        proc: Spawned,
    }

    impl Proc {
        fn start(name: &'static str, id: &str, backend_env: &[(&str, String)]) -> Self {
            let log = std::env::temp_dir().join(format!("server-events-{name}-{id}.log"));
            let mut env = vec![
                ("RUST_LOG", "info".to_string()),
                ("SOCKETIO_CLUSTER_ID", id.to_string()),
                ("SOCKETIO_CLUSTER_NODE_NAME", name.to_string()),
            ];
            env.extend(backend_env.iter().cloned());
            let proc = start_cluster_node(&env, &log).0;
            Self { name, log, proc }
        }

        /// Whether its log has a line with `needle` (waiting at most [`SETTLES`]).
        async fn logged(&self, needle: &str) -> bool {
            wait_until(SETTLES, || {
                std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(needle))
            })
            .await
        }
    }

    fn gossip_env(seed: SocketAddr) -> Vec<(&'static str, String)> {
        vec![
            ("SOCKETIO_CLUSTER_GOSSIP_ADDR", free_udp_port().to_string()),
            ("SOCKETIO_CLUSTER_MESH_ADDR", free_udp_port().to_string()),
            ("SOCKETIO_CLUSTER_SEEDS", seed.to_string()),
            ("SOCKETIO_CLUSTER_SECRET", SECRET.to_string()),
            ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "50".to_string()),
            (
                "SOCKETIO_CLUSTER_PEER_TIMEOUT_MS",
                PEER_TIMEOUT.as_millis().to_string(),
            ),
        ]
    }

    /// An event reaches both processes (each logs it), and pings get both answers.
    async fn both_hear(events: &ServerEvents, procs: &[&Proc]) {
        // Both processes are up and joined: the first ping gets both answers.
        let acks = answers(events, "ping", &"hi", Duration::from_secs(5)).await;
        for p in procs {
            assert_eq!(
                acks.get(p.name),
                Some(&Ok(json!({"node": p.name, "data": "hi"}))),
                "{acks:?}"
            );
        }
        events.emit("note", &"maintenance").await.unwrap();
        for p in procs {
            assert!(
                p.logged("server event note received").await,
                "{} logged the note",
                p.name
            );
        }
    }

    /// A `slow` request, one process killed while it runs: the other answers, the killed
    /// one is found gone.
    async fn kill_mid_request(events: &ServerEvents, answering: &Proc, killed: &mut Proc) {
        let acks = events
            .emit_with_ack("slow", &json!({"ms": SLOW_MS}), ACK_TIMEOUT)
            .await
            .unwrap();
        assert!(
            killed.logged("server event slow received").await,
            "the request reached the victim before it is killed"
        );
        signal_group(&killed.proc.0, "KILL");
        assert!(
            external::wait_bounded(&mut killed.proc.0, SETTLES).is_some(),
            "the victim is dead"
        );
        let started = std::time::Instant::now();
        let acks: Vec<ServerAck> = within(ACK_TIMEOUT / 2, acks.collect())
            .await
            .expect("the stream ends without waiting for the killed node");
        println!(
            "ack stream ended {:?} after the victim died (its `slow` answer takes {SLOW_MS} ms, \
             the timeout is {ACK_TIMEOUT:?})",
            started.elapsed()
        );
        let by_node: BTreeMap<_, _> = acks.into_iter().map(|a| (a.node, a.result)).collect();
        let want: BTreeMap<String, Result<Value, ServerAckError>> = [
            (
                answering.name.to_string(),
                Ok(json!({"node": answering.name})),
            ),
            (killed.name.to_string(), Err(ServerAckError::Gone)),
        ]
        .into();
        assert_eq!(by_node, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gossip_acks_stop_waiting_for_a_killed_or_hung_node() {
        init_tracing();
        let id = cluster_id();
        let ctr = ClusterAdapterCtr::gossip(
            config(&id, None)
                .with_node_name("asker")
                .with_peer_timeout(PEER_TIMEOUT),
        )
        .await
        .expect("node starts");
        let cluster = ctr.cluster().unwrap();
        let events = ctr.server_events();
        let seed = cluster.gossip_addr();
        let sleeper = Proc::start("sleeper", &id, &gossip_env(seed));
        let mut victim = Proc::start("victim", &id, &gossip_env(seed));
        let formed = wait_until(FORMS, || cluster.members().len() == 2).await;
        assert!(formed, "cluster formed: {:?}", cluster.members());
        both_hear(&events, &[&sleeper, &victim]).await;
        kill_mid_request(&events, &sleeper, &mut victim).await;

        // A hung node is found gone once its keep-alives stay silent for the peer
        // timeout, long before the request's own timeout: its ack says `Gone`.
        assert!(
            wait_until(SETTLES, || cluster.members().len() == 1).await,
            "the victim left"
        );
        signal_group(&sleeper.proc.0, "STOP");
        assert!(wait_stopped(&sleeper.proc.0), "the sleeper is stopped");
        let started = std::time::Instant::now();
        let acks = answers(&events, "ping", &"anyone?", ACK_TIMEOUT).await;
        println!(
            "gossip: a hung node was reported gone after {:?} (peer timeout {PEER_TIMEOUT:?}, \
             ack timeout {ACK_TIMEOUT:?})",
            started.elapsed()
        );
        let want: BTreeMap<String, Result<Value, ServerAckError>> =
            [("sleeper".to_string(), Err(ServerAckError::Gone))].into();
        assert_eq!(acks, want);
        drop(ctr);
    }

    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_acks_stop_waiting_for_a_killed_node_and_a_hung_one_costs_the_timeout() {
        use socketioxide_cluster::redis::RedisAdapterConfig;
        init_tracing();
        let Some(server) = common::redis_server::RedisServer::start() else {
            return;
        };
        let id = cluster_id();
        let ctr = ClusterAdapterCtr::redis(
            &server.url(),
            RedisAdapterConfig::new().with_prefix(id.clone()),
        )
        .await
        .expect("node connects");
        let events = ctr.server_events();
        let env = [("SOCKETIO_CLUSTER_BACKEND", server.url())];
        let sleeper = Proc::start("sleeper", &id, &env);
        let mut victim = Proc::start("victim", &id, &env);
        both_hear(&events, &[&sleeper, &victim]).await;
        kill_mid_request(&events, &sleeper, &mut victim).await;

        // Nothing tells Redis that a subscriber hangs: it is waited for until the timeout.
        signal_group(&sleeper.proc.0, "STOP");
        assert!(wait_stopped(&sleeper.proc.0), "the sleeper is stopped");
        let acks = answers(&events, "ping", &"anyone?", Duration::from_secs(2)).await;
        let want: BTreeMap<String, Result<Value, ServerAckError>> =
            [("sleeper".to_string(), Err(ServerAckError::Timeout))].into();
        assert_eq!(acks, want);
        drop(ctr);
    }
}
