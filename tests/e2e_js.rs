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

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Upper bound of the whole JS suite.
const SUITE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Upper bound of `npm ci` and of the example build.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[test]
fn e2e_js_suite() {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let js_dir = manifest_dir.join("tests").join("js");

    if let Err(why) = check_node() {
        skip_or_fail(&format!("node >= 20 is not available: {why}"));
        return;
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
            return;
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

    let bin = build_example();
    assert!(
        bin.is_file(),
        "cluster_node example not found at {}",
        bin.display()
    );

    let mut suite = Command::new("node");
    suite
        .arg("--test")
        .current_dir(&js_dir)
        .env("CLUSTER_NODE_BIN", &bin);
    let status = run_bounded(suite, SUITE_TIMEOUT, "node --test");
    assert!(
        status.success(),
        "the JavaScript end-to-end suite failed: {status}"
    );
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

/// Builds the `cluster_node` example with the features and profile of this test and
/// returns its path. The test executable lives in `<target>/<profile>/deps`, the
/// example is built into `<target>/<profile>/examples`.
fn build_example() -> PathBuf {
    if let Some(bin) = std::env::var_os("CLUSTER_NODE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let deps = exe.parent().expect("deps dir");
    let profile_dir = deps.parent().expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile dir name");

    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--example", "cluster_node", "--target-dir"])
        .arg(target_dir)
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
    // Same features as this test was compiled with.
    let mut features = vec![];
    if cfg!(feature = "cluster-gossip") {
        features.push("cluster-gossip");
    }
    if cfg!(feature = "redis") {
        features.push("redis");
    }
    cargo.arg("--no-default-features");
    if !features.is_empty() {
        cargo.args(["--features", &features.join(",")]);
    }
    let status = run_bounded(cargo, SETUP_TIMEOUT, "cargo build --example cluster_node");
    assert!(
        status.success(),
        "building the cluster_node example failed: {status}"
    );

    profile_dir
        .join("examples")
        .join(format!("cluster_node{}", std::env::consts::EXE_SUFFIX))
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
