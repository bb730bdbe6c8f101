//! End-to-end suite driven by the official JavaScript `socket.io-client`.
//!
//! This test builds the `cluster_node` test server (`tests/server/`, an example target),
//! then runs `node --test` in `tests/js`, which starts clusters of `cluster_node`
//! processes on loopback ports and drives them with real Socket.IO clients (see
//! `tests/js/cluster.mjs`). Two more files there run on their own: `nginx.e2e.mjs` (a real
//! nginx in front of three nodes), and `chat.e2e.mjs` and `minimal.e2e.mjs` (three
//! processes of those examples).
//!
//! Needs `node` (>= 20), `nginx` for the nginx test and, the first time, `npm` (to install
//! `tests/js/node_modules` from the lock file). Without them the test is skipped, unless
//! the `CI` variable is set: then it fails.
//!
//! `cargo test --test e2e_js -- --nocapture` shows the figures printed by the suite.
//! `E2E_BACKEND`, `E2E_REDIS_URL`, `E2E_RUST_LOG` and `E2E_VERBOSE` are passed through
//! to the suite.

#![cfg(feature = "cluster-gossip")]

use std::{
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The cluster secret of the example processes started here.
const SECRET: &str = "8f3a9c1e5b7d2046a1c3e5f7092b4d6e8fa0c2e4b6d8f0a1c3e5b7d9f1a3c5e7";

/// Upper bound of the whole JS suite.
const SUITE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[path = "common/external.rs"]
mod external;
#[path = "common/redis_server.rs"]
mod redis_server;

use external::{build_example, js_setup, ready_lines, run_node};

/// The suites share the machine's two cores and the example binary: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs the JS dependencies and builds the example, once; `None` when the test must be
/// skipped (node missing outside CI).
fn setup() -> Option<PathBuf> {
    static SETUP: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    SETUP
        .get_or_init(|| {
            if !js_setup() {
                return None;
            }
            Some(match std::env::var_os("CLUSTER_NODE_BIN") {
                Some(bin) => PathBuf::from(bin),
                None => build_example("cluster_node", &[]),
            })
        })
        .clone()
}

/// Runs the whole JS suite against one backend.
fn run_suite(bin: &std::path::Path, env: &[(&str, &str)]) {
    let bin = bin.to_string_lossy();
    let mut env = env.to_vec();
    env.push(("CLUSTER_NODE_BIN", &bin));
    // The shared-sessions suite runs the `sessions` example (feature `sessions`).
    let sessions_bin = cfg!(feature = "sessions").then(|| {
        build_example("sessions", &[])
            .to_string_lossy()
            .into_owned()
    });
    if let Some(b) = &sessions_bin {
        env.push(("SESSIONS_NODE_BIN", b));
    }
    run_node(&["--test"], &env, SUITE_TIMEOUT);
}

#[test]
fn e2e_js_suite_gossip() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bin) = setup() else { return };
    run_suite(&bin, &[("E2E_BACKEND", "gossip")]);
}

#[cfg(feature = "redis")]
#[test]
fn e2e_js_suite_redis() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bin) = setup() else { return };
    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    run_suite(
        &bin,
        &[("E2E_BACKEND", "redis"), ("E2E_REDIS_URL", &redis.url())],
    );
}

/// nginx in front of three nodes, configured by `examples/nginx/nginx.conf`: polling-only
/// and WebSocket clients through it, on every node (`tests/js/nginx.e2e.mjs`).
#[test]
fn e2e_nginx_in_front_of_three_nodes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !external::require("nginx") {
        return;
    }
    let Some(bin) = setup() else { return };
    let bin = bin.to_string_lossy();
    run_node(
        &["--test", "nginx.e2e.mjs"],
        &[("CLUSTER_NODE_BIN", &bin)],
        SUITE_TIMEOUT,
    );
}

/// The chat and minimal examples, each as a cluster of three processes
/// (`tests/js/chat.e2e.mjs`, `tests/js/minimal.e2e.mjs`).
#[test]
fn e2e_examples_chat_and_minimal() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !js_setup() {
        return;
    }
    let chat = build_example("chat", &[]);
    let minimal = build_example("minimal", &[]);
    // The chat's page in a browser (skipped, or failed in CI, without one).
    let chromium = if external::require("chromium") {
        "/usr/bin/chromium"
    } else {
        ""
    };
    run_node(
        &["--test", "chat.e2e.mjs", "minimal.e2e.mjs"],
        &[
            ("CHAT_BIN", &chat.to_string_lossy()),
            ("MINIMAL_BIN", &minimal.to_string_lossy()),
            ("CHROMIUM", chromium),
        ],
        SUITE_TIMEOUT,
    );
    // The chat on Redis too, where pages that join at the same moment are most likely to
    // fall in each other's gap between `presence_state` and the answer to `join`.
    #[cfg(feature = "redis")]
    if let Some(redis) = redis_server::RedisServer::start() {
        run_node(
            &["--test", "chat.e2e.mjs"],
            &[
                ("CHAT_BIN", &chat.to_string_lossy()),
                ("CHROMIUM", chromium),
                ("E2E_BACKEND", "redis"),
                ("E2E_REDIS_URL", &redis.url()),
            ],
            SUITE_TIMEOUT,
        );
    }
}

/// Starts the example with `env` and returns (exit status or `None` if it became READY,
/// its stderr).
fn run_example(bin: &PathBuf, env: &[(&str, &str)]) -> (Option<ExitStatus>, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = std::env::temp_dir().join(format!("cluster_node-{}-{port}.log", std::process::id()));
    let mut cmd = Command::new(bin);
    cmd.env("PORT", port.to_string())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("example starts");
    let rx = ready_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if rx.try_recv().is_ok() {
            break None;
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        assert!(
            Instant::now() < deadline,
            "example neither READY nor exited in time"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status, stderr)
}

/// The same binary deploys on either backend, chosen by SOCKETIO_CLUSTER_BACKEND; a binary
/// built without the `redis` feature refuses Redis with an error naming the feature.
#[test]
fn example_selects_the_backend_from_the_environment() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(bin) = setup() else { return };

    let gossip = [
        ("SOCKETIO_CLUSTER_GOSSIP_ADDR", "127.0.0.1:0"),
        ("SOCKETIO_CLUSTER_MESH_ADDR", "127.0.0.1:0"),
        ("SOCKETIO_CLUSTER_SECRET", SECRET),
    ];
    let (status, log) = run_example(&bin, &gossip);
    assert!(status.is_none(), "gossip by default: {status:?}\n{log}");
    assert!(
        log.contains("backend=\"gossip\"") || log.contains("backend=gossip"),
        "{log}"
    );

    let (status, log) = run_example(&bin, &[("SOCKETIO_CLUSTER_BACKEND", "carrier-pigeon")]);
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(
        log.contains("SOCKETIO_CLUSTER_BACKEND"),
        "the error names the variable: {log}"
    );

    // Without redis-server this part is skipped (with a message; a failure under CI),
    // not the rest of the test.
    if cfg!(feature = "redis")
        && let Some(redis) = redis_server::RedisServer::start()
    {
        let url = redis.url();
        let (status, log) = run_example(&bin, &[("SOCKETIO_CLUSTER_BACKEND", &url)]);
        assert!(
            status.is_none(),
            "redis selected and reachable: {status:?}\n{log}"
        );
        assert!(
            log.contains("backend=\"redis\"") || log.contains("backend=redis"),
            "{log}"
        );

        let dead = format!("redis://127.0.0.1:{}", free_port());
        let (status, log) = run_example(&bin, &[("SOCKETIO_CLUSTER_BACKEND", &dead)]);
        assert!(status.is_some_and(|s| !s.success()), "{log}");
        assert!(log.contains("cannot connect to Redis"), "{log}");
    }

    // Built with the gossip backend only, asking for Redis is a clear error.
    let gossip_only = build_example(
        "cluster_node",
        &["--no-default-features", "--features", "cluster-gossip"],
    );
    let (status, log) = run_example(
        &gossip_only,
        &[("SOCKETIO_CLUSTER_BACKEND", "redis://127.0.0.1:6379")],
    );
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(
        log.contains("`redis` feature"),
        "the error names the feature: {log}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
