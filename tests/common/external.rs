//! External programs the end-to-end tests drive: `node` with the JS suite's dependencies,
//! `nginx`, `chromium`, the example binaries, all bounded in time.
//!
//! A program that is missing skips the test with a printed reason, unless the `CI`
//! variable is set: then the test fails (`.ci/run` installs everything).
#![allow(dead_code)]

use std::{
    io::BufRead,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Upper bound of `npm ci` and of an example build.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Skips (returns) outside CI, fails in CI.
pub fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why} (CI is set, this end-to-end test cannot be skipped)");
    }
    eprintln!("SKIPPED: {why}");
}

/// What `program --version` prints (`nginx -v` for nginx), or why it cannot run.
pub fn tool_version(program: &str) -> Result<String, String> {
    let flag = if program.ends_with("nginx") {
        "-v"
    } else {
        "--version"
    };
    let out = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{program} {flag}`: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{program} {flag}` failed: {}", out.status));
    }
    // nginx prints its version on stderr.
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Ok(String::from_utf8_lossy(&text).trim().to_string())
}

/// Whether `program` runs; otherwise skips (outside CI) or fails (in CI).
pub fn require(program: &str) -> bool {
    match tool_version(program) {
        Ok(_) => true,
        Err(why) => {
            skip_or_fail(&format!("{program} is not available: {why}"));
            false
        }
    }
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

/// The JS suite's directory, `tests/js`.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Checks `node` (>= 20) and installs `tests/js/node_modules` from the lock file when it
/// is missing; `false` when the test must be skipped.
pub fn js_setup() -> bool {
    static SETUP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SETUP.get_or_init(|| {
        let js_dir = js_dir();
        if let Err(why) = check_node() {
            skip_or_fail(&format!("node >= 20 is not available: {why}"));
            return false;
        }
        let installed = ["socket.io-client", "playwright-core"]
            .iter()
            .all(|pkg| js_dir.join("node_modules").join(pkg).is_dir());
        if installed {
            return true;
        }
        if let Err(why) = tool_version("npm") {
            skip_or_fail(&format!(
                "tests/js/node_modules is missing and npm is not available: {why}"
            ));
            return false;
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
        true
    })
}

/// Runs `node <args>` in `tests/js` with `env`, bounded by `limit`, and asserts success.
pub fn run_node(args: &[&str], env: &[(&str, &str)], limit: Duration) {
    let mut node = Command::new("node");
    node.args(args).current_dir(js_dir());
    for (k, v) in env {
        node.env(k, v);
    }
    let status = run_bounded(node, limit, &format!("node {}", args.join(" ")));
    assert!(status.success(), "node {args:?} failed ({env:?}): {status}");
}

/// Builds the example `name` and returns its path. Without `args`, with the features and
/// profile of this test, into the test's target dir (the test executable lives in
/// `<target>/<profile>/deps`, examples in `<target>/<profile>/examples`). With `args` (other
/// features), into a target dir of its own under it, so the two builds do not overwrite
/// each other.
pub fn build_example(name: &str, args: &[&str]) -> PathBuf {
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

    let mut cargo = cargo();
    cargo
        .args([
            "build",
            "-p",
            "socketioxide-cluster",
            "--example",
            name,
            "--target-dir",
        ])
        .arg(&target_dir);
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
        cargo.args(test_features());
    } else {
        cargo.args(args);
    }
    let status = run_bounded(
        cargo,
        SETUP_TIMEOUT,
        &format!("cargo build --example {name}"),
    );
    assert!(
        status.success(),
        "building the {name} example failed: {status}"
    );

    let bin = target_dir
        .join(profile)
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{name} example not found at {}",
        bin.display()
    );
    bin
}

/// `cargo` in the package directory, without the variables `cargo test` sets for this test
/// (`CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, ...): build scripts such as ring's rerun when
/// those change, so an inner build seeing them would rebuild half the dependency tree, and
/// the next `cargo test` again.
pub fn cargo() -> Command {
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo_test = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&key);
        if set_by_cargo_test {
            cargo.env_remove(key);
        }
    }
    cargo
}

/// Cargo arguments selecting the features this test was compiled with. With no `-p`, the
/// build resolves features for the workspace's default members as `cargo test` did, so it
/// reuses every compiled dependency.
pub fn test_features() -> Vec<String> {
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
    if cfg!(feature = "custom-network") {
        features.push("custom-network");
    }
    let mut args = vec!["--no-default-features".to_string()];
    if !features.is_empty() {
        args.push("--features".into());
        args.push(features.join(","));
    }
    args
}

/// Puts `cmd` in a process group of its own, so that [`kill_tree`] reaches whatever it
/// starts.
pub fn own_group(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
}

/// Runs `cmd` with inherited stdout/stderr, killing it (and on unix its whole process
/// group, i.e. the servers it started) once `limit` is exceeded.
pub fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> ExitStatus {
    cmd.stdin(Stdio::null());
    own_group(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let status = wait_bounded(&mut child, limit);
    // Whatever happened, nothing started by the command survives it.
    kill_tree(&mut child);
    status.unwrap_or_else(|| panic!("{what} did not finish within {limit:?}"))
}

/// Waits for `child` to exit, at most `limit`; `None` if it is still running.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for a child process failed: {e}"),
        }
    }
}

/// Sends `signal` (e.g. `INT`, `KILL`) to the process group led by `child` (see
/// [`own_group`]).
pub fn signal_group(child: &Child, signal: &str) {
    #[cfg(unix)]
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `child` is stopped (SIGSTOP took effect), waiting at most 5 s: a signal is
/// delivered, not acted on, when `kill` returns. Reads the state in `/proc` (Linux); true
/// at once elsewhere.
pub fn wait_stopped(child: &Child) -> bool {
    let stat = format!("/proc/{}/stat", child.id());
    if !Path::new("/proc/self/stat").exists() {
        return true;
    }
    for _ in 0..500 {
        // The state follows the parenthesised command name.
        let state = std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next()));
        if matches!(state, Some(Some('T'))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Kills `child` and, on unix, its whole process group.
pub fn kill_tree(child: &mut Child) {
    signal_group(child, "KILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process (leading its own group) killed with everything it started on drop.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        kill_tree(&mut self.0);
    }
}

/// A UDP address on 127.0.0.1 that was free a moment ago (for a child process to bind).
pub fn free_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
}

/// Starts the `minimal` example (`bin`) in a process group of its own, on loopback with
/// ports the system picks (gossip, mesh, HTTP), logging at `info` without colours to `log`
/// (its stdout), with `env` on top (say the cluster id, secret, seeds and node name).
pub fn start_minimal(bin: &Path, env: &[(&str, String)], log: &Path) -> Spawned {
    let mut cmd = Command::new(bin);
    cmd.env("SOCKETIO_CLUSTER_GOSSIP_ADDR", "127.0.0.1:0")
        .env("SOCKETIO_CLUSTER_MESH_ADDR", "127.0.0.1:0")
        .env("BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(log).expect("log file"))
        .stderr(Stdio::null());
    own_group(&mut cmd);
    Spawned(cmd.spawn().expect("the minimal example starts"))
}

/// The `READY <port>` lines of `child`'s piped stdout, as they come: the port, if it
/// parses.
pub fn ready_lines(child: &mut Child) -> std::sync::mpsc::Receiver<Option<u16>> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(port) = line.strip_prefix("READY") {
                let _ = tx.send(port.trim().parse::<u16>().ok());
            }
        }
    });
    rx
}

/// Starts the `cluster_node` test server (`tests/server/`, built as an example) in a
/// process group of its own, with `env` on top of `PORT=0` and `NO_COLOR=1`, its stderr
/// written to `log`, and waits (at most a minute) for its `READY <port>` line: the process
/// and its HTTP address.
pub fn start_cluster_node(env: &[(&str, String)], log: &Path) -> (Spawned, SocketAddr) {
    let bin = build_example("cluster_node", &[]);
    let mut cmd = Command::new(bin);
    cmd.env("PORT", "0").env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"));
    own_group(&mut cmd);
    let mut child = cmd.spawn().expect("cluster_node starts");
    let rx = ready_lines(&mut child);
    let child = Spawned(child);
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("cluster_node did not print READY in time; its log:\n{log}")
        });
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}
