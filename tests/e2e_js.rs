//! End-to-end suite driven by the official JavaScript `socket.io-client`.
//!
//! This test builds the `cluster_node` example, then runs `node --test` in `tests/js`,
//! which starts clusters of `cluster_node` processes on loopback ports and drives them
//! with real Socket.IO clients (see `tests/js/cluster.mjs`).
//!
//! Needs `node` (>= 20) and, the first time, `npm` (to install `tests/js/node_modules`
//! from the lock file). Without them the test is skipped, unless the `CI` variable is
//! set: then it fails.
//!
//! `cargo test --test e2e_js -- --nocapture` shows the figures printed by the suite.
//! `E2E_BACKEND`, `E2E_REDIS_URL`, `E2E_RUST_LOG` and `E2E_VERBOSE` are passed through
//! to the suite.

#![cfg(feature = "cluster-gossip")]

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Upper bound of the whole JS suite.
const SUITE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Upper bound of `npm ci` and of the example build.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[path = "common/redis_server.rs"]
mod redis_server;

/// The suites share the machine's two cores and the example binary: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs the JS dependencies and builds the example, once; `None` when the test must be
/// skipped (node missing outside CI).
fn setup() -> Option<PathBuf> {
    static SETUP: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    SETUP
        .get_or_init(|| {
            let js_dir = js_dir();
            if let Err(why) = check_node() {
                skip_or_fail(&format!("node >= 20 is not available: {why}"));
                return None;
            }
            if !js_dir
                .join("node_modules")
                .join("socket.io-client")
                .is_dir()
            {
                if let Err(why) = tool_version("npm") {
                    skip_or_fail(&format!(
                        "tests/js/node_modules is missing and npm is not available: {why}"
                    ));
                    return None;
                }
                let mut npm = Command::new("npm");
                npm.args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&js_dir);
                let status = run_bounded(npm, SETUP_TIMEOUT, "npm ci");
                assert!(
                    status.success(),
                    "npm ci failed in {}: {status}",
                    js_dir.display()
                );
            }
            let bin = build_example("cluster_node", &[]);
            assert!(
                bin.is_file(),
                "cluster_node example not found at {}",
                bin.display()
            );
            Some(bin)
        })
        .clone()
}

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Runs the whole JS suite against one backend.
fn run_suite(bin: &PathBuf, env: &[(&str, &str)]) {
    let mut suite = Command::new("node");
    suite
        .arg("--test")
        .current_dir(js_dir())
        .env("CLUSTER_NODE_BIN", bin);
    // The shared-sessions suite runs the `sessions` example (feature `sessions`).
    if cfg!(feature = "sessions") {
        suite.env("SESSIONS_NODE_BIN", build_example("sessions", &[]));
    }
    for (k, v) in env {
        suite.env(k, v);
    }
    let status = run_bounded(suite, SUITE_TIMEOUT, "node --test");
    assert!(
        status.success(),
        "the JavaScript end-to-end suite failed ({env:?}): {status}"
    );
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
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("READY") {
                let _ = tx.send(());
            }
        }
    });
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
        ("SOCKETIO_CLUSTER_SECRET", "example-backend-test"),
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

    if cfg!(feature = "redis") {
        let Some(redis) = redis_server::RedisServer::start() else {
            return;
        };
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

/// Skips (returns) outside CI, fails in CI.
fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why} (CI is set, the end-to-end suite cannot be skipped)");
    }
    eprintln!("SKIPPED e2e_js: {why}");
}

fn tool_version(tool: &str) -> Result<String, String> {
    let out = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{tool} --version`: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{tool} --version` failed: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn check_node() -> Result<(), String> {
    let version = tool_version("node")?;
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("unexpected node version {version:?}"))?;
    if major < 20 {
        return Err(format!("node {version} is too old"));
    }
    Ok(())
}

/// Builds the example `example` and returns its path. Without `args`, with the
/// features and profile of this test, into the test's target dir (the test executable
/// lives in `<target>/<profile>/deps`, examples in `<target>/<profile>/examples`). With
/// `args` (other features), into a target dir of its own under it, so the two builds do
/// not overwrite each other.
fn build_example(example: &str, args: &[&str]) -> PathBuf {
    if args.is_empty()
        && example == "cluster_node"
        && let Some(bin) = std::env::var_os("CLUSTER_NODE_BIN")
    {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let deps = exe.parent().expect("deps dir");
    let profile_dir = deps.parent().expect("profile dir");
    let mut target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile dir name");
    if !args.is_empty() {
        target_dir = target_dir.join("other-features");
    }

    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "-p", "socketioxide-cluster", "--example", example])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    if args.is_empty() {
        // Same features as this test was compiled with.
        let mut features = vec![];
        if cfg!(feature = "cluster-gossip") {
            features.push("cluster-gossip");
        }
        if cfg!(feature = "redis") {
            features.push("redis");
        }
        if cfg!(feature = "sessions") {
            features.push("sessions");
        }
        cargo.arg("--no-default-features");
        if !features.is_empty() {
            cargo.args(["--features", &features.join(",")]);
        }
    } else {
        cargo.args(args);
    }
    let status = run_bounded(
        cargo,
        SETUP_TIMEOUT,
        &format!("cargo build --example {example}"),
    );
    assert!(
        status.success(),
        "building the {example} example failed: {status}"
    );

    target_dir
        .join(profile)
        .join("examples")
        .join(format!("{example}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `cmd` with inherited stdout/stderr, killing it (and on unix its whole process
/// group, i.e. the servers it started) once `limit` is exceeded.
fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> ExitStatus {
    cmd.stdin(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                kill_tree(&mut child);
                panic!("waiting for {what} failed: {e}");
            }
        }
    };
    // Whatever happened, nothing started by the command survives it.
    kill_tree(&mut child);
    match status {
        Some(status) => status,
        None => panic!("{what} did not finish within {limit:?}"),
    }
}

fn kill_tree(child: &mut Child) {
    #[cfg(unix)]
    {
        // The child leads its own process group: signal the whole group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}
