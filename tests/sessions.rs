//! The shared session store on real clusters: three nodes on 127.0.0.1 (gossip + QUIC mesh,
//! or Redis through a real `redis-server`). Every wait is a bounded poll.
#![cfg(feature = "sessions")]

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::*;
use socketioxide_cluster::sessions::{ClusterSessionStore, SessionStoreConfig};
use time::OffsetDateTime;
use tower_sessions::{
    SessionStore,
    session::{Id, Record},
};

/// Bound for a write to reach every node, or a node to catch up.
const SPREADS: Duration = Duration::from_secs(15);

fn record(user: &str, ttl: time::Duration) -> Record {
    Record {
        id: Id::default(),
        data: HashMap::from([("user".to_string(), serde_json::json!(user))]),
        expiry_date: OffsetDateTime::now_utc() + ttl,
    }
}

fn hour(user: &str) -> Record {
    record(user, time::Duration::hours(1))
}

/// The user of session `id` on `store`, if it holds a live one.
async fn user(store: &ClusterSessionStore, id: &Id) -> Option<String> {
    let r = store.load(id).await.expect("store readable")?;
    Some(r.data.get("user")?.as_str()?.to_string())
}

/// Poll until every store answers `want` for session `id`; false after `limit`.
async fn converge(
    stores: &[&ClusterSessionStore],
    id: &Id,
    want: Option<&str>,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        for s in stores {
            all &= user(s, id).await.as_deref() == want;
        }
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn three(
    backend: &Backend,
    config: SessionStoreConfig,
) -> (TestCluster, Vec<(TestNode, ClusterSessionStore)>) {
    let mut cluster = TestCluster::new(backend);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(cluster.start_with_sessions(config.clone()).await);
    }
    let refs: Vec<&TestNode> = nodes.iter().map(|(n, _)| n).collect();
    wait_formed(&refs).await;
    (cluster, nodes)
}

/// Each store's user for session `id`, in order.
async fn users(stores: &[&ClusterSessionStore], id: &Id) -> Vec<Option<String>> {
    let mut seen = Vec::with_capacity(stores.len());
    for s in stores {
        seen.push(user(s, id).await);
    }
    seen
}

/// A save on A is read on B and C; a delete on B is gone on A and C; a save on C after
/// that is read everywhere again. Each checked once, as soon as the write returned: a
/// save or a delete returns once every node holds it.
async fn saved_anywhere_read_everywhere_deleted_everywhere(backend: Backend) {
    let (_cluster, nodes) = three(&backend, SessionStoreConfig::new()).await;
    let [a, b, c] = [&nodes[0].1, &nodes[1].1, &nodes[2].1];
    let mut rec = hour("ada");
    a.create(&mut rec).await.unwrap();
    let ada = Some("ada".to_string());
    assert_eq!(
        users(&[a, b, c], &rec.id).await,
        [ada.clone(), ada.clone(), ada],
        "save on A read on B and C as it returns"
    );
    let loaded = b.load(&rec.id).await.unwrap().unwrap();
    assert_eq!(loaded, rec, "the very record, expiry included");

    b.delete(&rec.id).await.unwrap();
    assert_eq!(
        users(&[a, b, c], &rec.id).await,
        [None, None, None],
        "delete on B gone on A and C as it returns"
    );

    let again = Record {
        data: HashMap::from([("user".into(), serde_json::json!("bob"))]),
        ..rec.clone()
    };
    c.save(&again).await.unwrap();
    let bob = Some("bob".to_string());
    assert_eq!(
        users(&[a, b, c], &rec.id).await,
        [bob.clone(), bob.clone(), bob],
        "a later save wins over the tombstone, everywhere as it returns"
    );
}

/// A session that expires is loaded nowhere once its expiry passed; the gossip store also
/// drops it from memory.
async fn expiry_applies_everywhere(backend: Backend) {
    let config = SessionStoreConfig::new().with_purge_interval(Duration::from_millis(100));
    let (_cluster, nodes) = three(&backend, config).await;
    let [a, b, c] = [&nodes[0].1, &nodes[1].1, &nodes[2].1];
    let mut rec = record("eve", time::Duration::seconds(4));
    a.create(&mut rec).await.unwrap();
    // Held everywhere as the save returns, well before its expiry.
    let eve = Some("eve".to_string());
    assert_eq!(
        users(&[a, b, c], &rec.id).await,
        [eve.clone(), eve.clone(), eve]
    );
    let mut long = hour("long");
    a.create(&mut long).await.unwrap();
    assert!(
        converge(&[a, b, c], &rec.id, None, SPREADS).await,
        "expired everywhere"
    );
    assert!(
        converge(&[a, b, c], &long.id, Some("long"), SPREADS).await,
        "the other one lives"
    );
    #[cfg(feature = "cluster-gossip")]
    if let [
        ClusterSessionStore::Gossip(a),
        ClusterSessionStore::Gossip(b),
        ClusterSessionStore::Gossip(c),
    ] = [a, b, c]
    {
        let purged = wait_until(SPREADS, || [a, b, c].iter().all(|s| s.len() == 1)).await;
        assert!(
            purged,
            "expired record purged from memory: {} {} {}",
            a.len(),
            b.len(),
            c.len()
        );
    }
}

/// Saves of the same sessions on A and B at the same time end with one value, the same on
/// every node, and it is one of the values written.
async fn concurrent_saves_converge(backend: Backend) {
    let (_cluster, nodes) = three(&backend, SessionStoreConfig::new()).await;
    let [a, b, c] = [&nodes[0].1, &nodes[1].1, &nodes[2].1];
    for round in 0..20 {
        let mut base = hour("start");
        a.create(&mut base).await.unwrap();
        assert!(converge(&[a, b, c], &base.id, Some("start"), SPREADS).await);
        let from_a = Record {
            data: HashMap::from([("user".into(), serde_json::json!(format!("a{round}")))]),
            ..base.clone()
        };
        let from_b = Record {
            data: HashMap::from([("user".into(), serde_json::json!(format!("b{round}")))]),
            ..base.clone()
        };
        let (ra, rb) = tokio::join!(a.save(&from_a), b.save(&from_b));
        ra.unwrap();
        rb.unwrap();
        // Whatever A ends with, every node must end with it too.
        let deadline = Instant::now() + SPREADS;
        let winner = loop {
            let seen = [
                user(a, &base.id).await,
                user(b, &base.id).await,
                user(c, &base.id).await,
            ];
            if seen[0] == seen[1] && seen[1] == seen[2] && seen[0].as_deref() != Some("start") {
                break seen[0].clone().expect("a live session");
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no convergence: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(
            winner == format!("a{round}") || winner == format!("b{round}"),
            "{winner}"
        );
    }
}

/// A node that joins later reads the sessions saved before it existed.
async fn a_new_node_sees_existing_sessions(backend: Backend) {
    let mut cluster = TestCluster::new(&backend);
    let (a_node, a) = cluster.start_with_sessions(SessionStoreConfig::new()).await;
    let (b_node, b) = cluster.start_with_sessions(SessionStoreConfig::new()).await;
    wait_formed(&[&a_node, &b_node]).await;
    const K: usize = 1000;
    let mut ids = Vec::with_capacity(K);
    for i in 0..K {
        let mut rec = hour(&format!("u{i}"));
        if i % 2 == 0 { &a } else { &b }
            .create(&mut rec)
            .await
            .unwrap();
        ids.push(rec.id);
    }
    let mut gone = hour("gone");
    a.create(&mut gone).await.unwrap();
    a.delete(&gone.id).await.unwrap();
    let started = Instant::now();
    let (_c, c) = cluster.start_with_sessions(SessionStoreConfig::new()).await;
    let deadline = Instant::now() + SPREADS;
    let mut missing = ids.clone();
    while !missing.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {K} sessions missing on the new node",
            missing.len()
        );
        let mut still = Vec::new();
        for id in missing {
            if c.load(&id).await.unwrap().is_none() {
                still.push(id);
            }
        }
        missing = still;
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    println!(
        "[{backend:?}] a new node read all {K} existing sessions {:?} after it started",
        started.elapsed()
    );
    assert_eq!(user(&c, &ids[7]).await.as_deref(), Some("u7"));
    assert_eq!(
        user(&c, &gone.id).await,
        None,
        "a deleted session stays deleted"
    );
}

#[cfg(feature = "cluster-gossip")]
mod gossip_only {
    use super::*;
    use socketioxide_cluster::ClusterAdapterCtr;

    /// A node on its own runtime, killed the way SIGKILL kills: every task stops at once,
    /// nothing is said to the peers.
    struct Victim {
        rt: tokio::runtime::Runtime,
        cluster: socketioxide_cluster::Cluster,
        store: ClusterSessionStore,
    }

    impl Victim {
        fn spawn(config: socketioxide_cluster::GossipAdapterConfig) -> Self {
            let (rt, (cluster, store)) = on_own_runtime(|| async {
                let ctr = ClusterAdapterCtr::gossip(config)
                    .await
                    .expect("victim starts");
                let cluster = ctr.cluster().expect("gossip");
                (cluster, ctr.session_store(SessionStoreConfig::new()))
            });
            Victim { rt, cluster, store }
        }

        /// Run `f` on the victim's runtime.
        async fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
            self.rt.spawn(f).await.expect("victim task")
        }

        fn kill(self) {
            let Victim { rt, cluster, store } = self;
            rt.shutdown_background();
            // Its sockets died with the runtime; the handles are inert now.
            std::mem::forget((cluster, store));
        }
    }

    /// Kill the node that received the save the moment the save returns: the others already
    /// hold the session, delete it, and a node that joins afterwards learns both from them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_node_loses_no_session() {
        let mut cluster = TestCluster::new(&Backend::Gossip);
        let (a_node, a) = cluster.start_with_sessions(SessionStoreConfig::new()).await;
        let (b_node, b) = cluster.start_with_sessions(SessionStoreConfig::new()).await;
        let victim = Victim::spawn(cluster.next_config());
        let formed = wait_until(SPREADS, || {
            victim.cluster.members().len() == 2
                && a_node.cluster().members().len() == 2
                && b_node.cluster().members().len() == 2
        })
        .await;
        assert!(formed, "cluster formed");
        let store = victim.store.clone();
        let saved = victim
            .run(async move {
                let mut rec = hour("kim");
                store.create(&mut rec).await.unwrap();
                rec
            })
            .await;
        victim.kill();
        // No waiting: a save that returned is held by every member.
        assert_eq!(user(&a, &saved.id).await.as_deref(), Some("kim"));
        assert_eq!(user(&b, &saved.id).await.as_deref(), Some("kim"));
        let (_c, c) = cluster.start_with_sessions(SessionStoreConfig::new()).await;
        assert!(
            converge(&[&c], &saved.id, Some("kim"), SPREADS).await,
            "a new node learns it from the survivors"
        );
        b.delete(&saved.id).await.unwrap();
        assert!(converge(&[&a, &b, &c], &saved.id, None, SPREADS).await);
    }

    /// Saves of one session on A and B at the same time, B's started once the clock has
    /// moved two milliseconds past A's write (so B's version is later), while A's is on its
    /// way: B's wins on every node, whichever reached it first. A's save carries 768 KiB more (a session is at most 1 MiB),
    /// so that it tends to reach C after B's. Checked once, right after both saves returned.
    /// Rounds go on until five of them overlapped (at most 40): a round where A's save
    /// returned before B's started is still checked, but proves nothing of concurrency.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_later_write_by_the_writers_clocks_wins() {
        const OVERLAPS: usize = 5;
        const MAX_ROUNDS: usize = 40;
        let (_cluster, nodes) = three(&Backend::Gossip, SessionStoreConfig::new()).await;
        let [a, b, c] = [&nodes[0].1, &nodes[1].1, &nodes[2].1];
        let padding = serde_json::json!("x".repeat(768 * 1024));
        let with_user = |base: &Record, user: String| Record {
            data: HashMap::from([("user".to_string(), serde_json::json!(user))]),
            ..base.clone()
        };
        let wall_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_millis()
        };
        let mut overlapping = 0;
        let mut rounds = 0;
        while overlapping < OVERLAPS && rounds < MAX_ROUNDS {
            let round = rounds;
            rounds += 1;
            let mut base = hour("start");
            a.create(&mut base).await.unwrap();
            let mut from_a = with_user(&base, format!("a{round}"));
            from_a.data.insert("padding".into(), padding.clone());
            let from_b = with_user(&base, format!("b{round}"));
            let a_done = std::sync::atomic::AtomicBool::new(false);
            // `join!` polls A's save first: it writes its version before its first await, so
            // the clock read at B's first poll is at least A's, and two milliseconds later
            // B's version is later than A's (which is at most one past the base's).
            let (ra, rb) = tokio::join!(
                async {
                    let r = a.save(&from_a).await;
                    a_done.store(true, std::sync::atomic::Ordering::SeqCst);
                    r
                },
                async {
                    let after_a = wall_ms();
                    for _ in 0..1_000 {
                        if wall_ms() > after_a + 1 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if !a_done.load(std::sync::atomic::Ordering::SeqCst) {
                        overlapping += 1;
                    }
                    b.save(&from_b).await
                }
            );
            ra.unwrap();
            rb.unwrap();
            let later = Some(format!("b{round}"));
            assert_eq!(
                users(&[a, b, c], &base.id).await,
                [later.clone(), later.clone(), later],
                "round {round}: the later write wins everywhere"
            );
        }
        println!("B's save started while A's was on its way in {overlapping} of {rounds} rounds");
        // Without an overlap the saves were not concurrent and the rounds proved nothing.
        assert!(
            overlapping >= OVERLAPS,
            "B's save overlapped A's in only {overlapping} of {rounds} rounds"
        );
    }

    /// The cap: a node holds at most `max_sessions` sessions; beyond it, a new session is
    /// refused (where it is saved, the save fails; where it is received, it is counted) and
    /// no live session is evicted for it; existing sessions can still be saved and deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cap_bounds_every_node() {
        let mut cluster = TestCluster::new(&Backend::Gossip);
        let (a_node, a) = cluster
            .start_with_sessions(SessionStoreConfig::new().with_max_sessions(3))
            .await;
        let (b_node, b) = cluster
            .start_with_sessions(SessionStoreConfig::new().with_max_sessions(2))
            .await;
        let formed = wait_until(SPREADS, || {
            a_node.cluster().members().len() == 1 && b_node.cluster().members().len() == 1
        })
        .await;
        assert!(formed, "cluster formed");
        let (ClusterSessionStore::Gossip(ga), ClusterSessionStore::Gossip(gb)) = (&a, &b) else {
            unreachable!("gossip stores");
        };
        let mut ids = Vec::new();
        for i in 0..3 {
            // The later the session, the later its expiry.
            let mut rec = record(&format!("c{i}"), time::Duration::minutes(10 + i));
            a.create(&mut rec).await.unwrap();
            ids.push(rec);
        }
        assert_eq!((ga.len(), gb.len()), (3, 2), "B refused one beyond its cap");
        assert_eq!((gb.refused(), gb.tombstones_evicted()), (1, 0));
        for (i, rec) in ids.iter().enumerate().take(2) {
            let name = format!("c{i}");
            assert_eq!(user(&b, &rec.id).await, Some(name), "kept on B");
        }
        assert_eq!(user(&b, &ids[2].id).await, None, "the new one");
        let mut fourth = hour("c3");
        let err = a.create(&mut fourth).await.expect_err("A is full");
        assert!(err.to_string().contains("3 sessions"), "{err}");
        assert_eq!(user(&a, &fourth.id).await, None);
        assert_eq!((ga.len(), ga.refused()), (3, 1));
        let mut updated = ids[1].clone();
        updated
            .data
            .insert("user".into(), serde_json::json!("c1-bis"));
        a.save(&updated).await.expect("an update needs no room");
        assert_eq!(user(&b, &ids[1].id).await.as_deref(), Some("c1-bis"));
        a.delete(&ids[1].id).await.unwrap();
        assert_eq!(user(&a, &ids[1].id).await, None);
        assert_eq!(user(&b, &ids[1].id).await, None);
        a.create(&mut fourth).await.expect("the log-out made room");
    }

    /// 500 log-outs with made-up session ids (as a client without a session can send), on
    /// every node, then log-ins on every node: the flood leaves nothing behind, so every
    /// log-in works and is read everywhere; then log-ins up to the cap work, the ones
    /// beyond it fail, and every session in still loads on every node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_out_flood_then_log_ins_work_on_every_node() {
        const CAP: usize = 20;
        let config = SessionStoreConfig::new().with_max_sessions(CAP);
        let (_cluster, nodes) = three(&Backend::Gossip, config).await;
        let formed = wait_until(SPREADS, || {
            nodes.iter().all(|(n, _)| n.cluster().members().len() == 2)
        })
        .await;
        assert!(formed, "cluster formed");
        let stores: Vec<&ClusterSessionStore> = nodes.iter().map(|(_, s)| s).collect();
        for i in 0..500 {
            stores[i % 3].delete(&Id::default()).await.unwrap();
        }
        for (i, store) in stores.iter().enumerate() {
            let name = format!("user{i}");
            let mut rec = hour(&name);
            // An anonymous session logging in: tower-sessions cycles its id, deleting the
            // old one, never stored.
            store.delete(&Id::default()).await.unwrap();
            store
                .create(&mut rec)
                .await
                .expect("log-in after the flood");
            assert!(
                converge(&stores, &rec.id, Some(&name), SPREADS).await,
                "{name}"
            );
        }
        let mut kept = Vec::new();
        for i in 3..CAP {
            let mut rec = hour(&format!("many{i}"));
            stores[i % 3]
                .create(&mut rec)
                .await
                .expect("a log-in below the cap");
            kept.push((rec, format!("many{i}")));
        }
        for i in 0..CAP {
            let mut rec = hour(&format!("beyond{i}"));
            let refused = stores[i % 3].create(&mut rec).await;
            assert!(refused.is_err(), "a log-in beyond the cap fails");
        }
        for (rec, name) in &kept {
            assert!(
                converge(&stores, &rec.id, Some(name.as_str()), SPREADS).await,
                "{name}"
            );
        }
        for store in &stores {
            let ClusterSessionStore::Gossip(g) = store else {
                unreachable!("gossip stores");
            };
            assert_eq!(g.len(), CAP, "{} records held", g.len());
        }
    }

    /// A member that runs no session store answers at once that it has none: a save does
    /// not wait the request timeout for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_without_the_store_does_not_hold_up_saves() {
        // A request timeout far beyond the bound below: a save that waited for the
        // member without a store would fail the test.
        let mut cluster = TestCluster::new(&Backend::Gossip).with_request_timeout(LONG);
        let (a_node, a) = cluster.start_with_sessions(SessionStoreConfig::new()).await;
        let plain = cluster.start(|b| b).await;
        let formed = wait_until(SPREADS, || {
            a_node.cluster().members().len() == 1 && plain.cluster().members().len() == 1
        })
        .await;
        assert!(formed, "cluster formed");
        let mut rec = hour("solo");
        let saved = within(SETTLES, a.create(&mut rec)).await;
        assert!(matches!(saved, Some(Ok(()))), "{saved:?}");
        assert_eq!(user(&a, &rec.id).await.as_deref(), Some("solo"));
    }
}

/// Figures, not assertions on speed: how long a save on A takes to return, at which point
/// B and C already read it; once per backend, in the same run.
async fn save_latency_figures(backend: Backend) {
    let (_cluster, nodes) = three(&backend, SessionStoreConfig::new()).await;
    let [a, b, c] = [&nodes[0].1, &nodes[1].1, &nodes[2].1];
    #[cfg(feature = "cluster-gossip")]
    if backend.name() == "gossip" {
        let formed = wait_until(SPREADS, || {
            nodes.iter().all(|(n, _)| n.cluster().members().len() == 2)
        })
        .await;
        assert!(formed, "cluster formed");
    }
    const N: usize = 500;
    let (mut saves, mut loads) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..N {
        let mut rec = hour(&format!("r{i}"));
        let started = Instant::now();
        a.create(&mut rec).await.unwrap();
        saves.push(started.elapsed());
        let started = Instant::now();
        let on_b = b.load(&rec.id).await.unwrap();
        loads.push(started.elapsed());
        assert!(on_b.is_some(), "on B when save returned");
        assert!(
            c.load(&rec.id).await.unwrap().is_some(),
            "on C when save returned"
        );
    }
    let figures = [
        ("save on A (B and C hold it when it returns)", saves),
        ("load on B", loads),
    ];
    for (what, mut took) in figures {
        took.sort();
        println!(
            "[{backend:?}] {what}, {N} runs: median {:?}, p90 {:?}, max {:?}",
            took[N / 2],
            took[N * 9 / 10],
            took[N - 1]
        );
    }
}

backend_tests!(
    saved_anywhere_read_everywhere_deleted_everywhere,
    expiry_applies_everywhere,
    concurrent_saves_converge,
    a_new_node_sees_existing_sessions,
    save_latency_figures,
);
