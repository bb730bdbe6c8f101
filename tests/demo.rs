//! The README's first command: the three-node demo.
//!
//! `readme_demo_command_forms_one_cluster` runs the `cargo run` line of README.md itself
//! (so this test breaks when the README changes; only the features of this test are
//! added), with `DEMO_PORTS=0,0,0` so that the system picks free HTTP ports, and checks that the three nodes answer the Socket.IO
//! handshake, form one cluster, carry an admin broadcast (a server-to-server event) from
//! a page of one node to the two other nodes, which log it, show it on their pages and
//! answer, and stop cleanly on Ctrl-C (SIGINT).
//!
//! `browser_chat_across_two_nodes` opens the demo page of two nodes in headless Chromium
//! (`tests/js/browser.e2e.mjs`, with `playwright-core`), sends a message on one and sees
//! it on the other, then an admin broadcast, which the other page shows and whose answers
//! (one per other node) the sending page lists. It needs `chromium` and `node`: outside CI a missing one skips the
//! test with a message, in CI it fails.
//!
//! `members_follow_nodes_that_come_and_go` joins a fourth node (the `minimal` example, as
//! the demo's header shows) to the demo, and watches the member list of every demo node,
//! both as its page gets it (the `members` event pushed to a Socket.IO client) and as
//! `GET /members` answers: the node appears when it starts, and drops off when it stops,
//! once gracefully (SIGTERM) and once killed (SIGKILL).
//!
//! Running `cargo run` from inside `cargo test` does not wait on the build directory lock:
//! cargo holds it only while it compiles, not while the tests run.

#![cfg(feature = "cluster-gossip")]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

mod common;
#[path = "common/external.rs"]
mod external;

use common::{ClientRx, polling};
use external::{SETUP_TIMEOUT, Spawned, build_example, js_setup, own_group, require, run_node};

/// Upper bound for the demo to print its URLs, once built.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for the three nodes to see each other, and to stop.
const SETTLE: Duration = Duration::from_secs(30);

/// The demos of this file share the machine's two cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The first `cargo run` line of README.md, without its comment, as words.
fn readme_demo_command() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let line = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo run"))
        .expect("README.md has a `cargo run` line");
    let command = line.split('#').next().unwrap_or(line);
    command.split_whitespace().map(String::from).collect()
}

/// The demo, started by the README's command; killed (with its process group) on drop.
struct Demo {
    process: Spawned,
    lines: mpsc::Receiver<String>,
    /// Every line printed on stdout so far.
    stdout: Vec<String>,
    /// The HTTP address of each node, as printed.
    nodes: Vec<SocketAddr>,
    log: std::path::PathBuf,
}

impl Demo {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the demo with `env` added to its environment, logging at `info`.
    fn start_with(env: &[(&str, &str)]) -> Self {
        Self::start_logging(Some("info"), env)
    }

    /// Starts the demo as a newcomer does: no `RUST_LOG`.
    fn start_as_is() -> Self {
        Self::start_logging(None, &[])
    }

    /// Starts the demo with `RUST_LOG` set to `log` (or unset), and `env`.
    fn start_logging(log_filter: Option<&str>, env: &[(&str, &str)]) -> Self {
        let words = readme_demo_command();
        assert_eq!(words[..2], ["cargo", "run"], "{words:?}");
        let log = std::env::temp_dir().join(format!("demo-{}.log", std::process::id()));
        // The README's command, plus the features this test was built with: cargo then
        // reuses the demo `cargo test` just built. With the default features, syn and
        // tokio-util get other features, and most of the dependency tree would be compiled
        // a second time.
        let mut cmd = external::cargo();
        cmd.args(&words[1..])
            .args(external::test_features())
            .env("DEMO_PORTS", "0,0,0")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(filter) = log_filter {
            cmd.env("RUST_LOG", filter);
        }
        own_group(&mut cmd);
        let mut child = cmd.spawn().expect("cargo starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut demo = Self {
            process: Spawned(child),
            lines,
            stdout: vec![],
            nodes: vec![],
            log,
        };
        // Building may take a while the first time; then the URLs come at once.
        demo.wait_line(SETUP_TIMEOUT + START_TIMEOUT, |l| l.starts_with("node-3: "));
        demo.nodes = demo
            .stdout
            .iter()
            .filter_map(|l| l.split("http://").nth(1))
            .map(|a| a.trim_end_matches('/').parse().expect("node address"))
            .collect();
        assert_eq!(demo.nodes.len(), 3, "{:?}", demo.stdout);
        demo
    }

    /// Reads stdout until a line matches `pred`, at most `limit`.
    fn wait_line(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = pred(&line);
                    self.stdout.push(line);
                    if done {
                        return;
                    }
                }
                Err(e) => panic!(
                    "the demo did not print the expected line ({e}); stdout: {:?}\nlog:\n{}",
                    self.stdout,
                    self.log_text()
                ),
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|a| format!("http://{a}/")).collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn get(addr: SocketAddr, target: &str) -> (u16, String) {
    tokio::time::timeout(
        Duration::from_secs(5),
        polling::http(addr, "GET", target, ""),
    )
    .await
    .unwrap_or_else(|_| panic!("GET {target} on {addr} in time"))
    .unwrap_or_else(|e| panic!("GET {target} on {addr}: {e}"))
}

/// The member names `GET /members` of `addr` lists.
async fn members(addr: SocketAddr) -> Vec<String> {
    let (status, body) = get(addr, "/members").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    serde_json::from_value(json["members"].clone()).expect("a list of names")
}

#[test]
fn readme_demo_command_forms_one_cluster() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // As a newcomer runs it: no RUST_LOG.
    let mut demo = Demo::start_as_is();
    demo.wait_line(SETTLE, |l| l.starts_with("Open two of the URLs"));
    let expected = readme_demo_output();
    assert!(
        expected.len() >= 5,
        "README.md shows the demo's output: {expected:?}"
    );
    let printed: Vec<String> = demo.stdout.iter().map(|l| digits_as_hash(l)).collect();
    assert_eq!(
        printed[..expected.len().min(printed.len())],
        expected[..],
        "the demo prints what README.md shows (digits aside)"
    );
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(answers_and_forms_one_cluster(&demo));
    rt.block_on(admin_broadcast_reaches_the_other_nodes(&demo));
    // node-2 and node-3 print it on the console.
    let printed = |demo: &Demo| {
        demo.stdout
            .iter()
            .filter(|l| l.ends_with(": admin broadcast from node-1: maintenance at 10:00"))
            .count()
    };
    while printed(&demo) < 2 {
        demo.wait_line(SETTLE, |l| l.contains("admin broadcast from node-1"));
    }

    // Ctrl-C: every node leaves the cluster, the process ends by itself.
    external::signal_group(&demo.process.0, "INT");
    demo.wait_line(SETTLE, |l| l == "stopped");
    let status = external::wait_bounded(&mut demo.process.0, SETTLE);
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after Ctrl-C: {status:?}\n{}",
        demo.log_text()
    );
    // The console held the lines above and no log line below a warning (cargo's own
    // lines go to the same stderr).
    let log = demo.log_text();
    let chatty: Vec<&str> = log
        .lines()
        .filter(|l| {
            [" INFO ", " DEBUG ", " TRACE "]
                .iter()
                .any(|lvl| l.contains(lvl))
        })
        .collect();
    assert!(chatty.is_empty(), "quiet logs by default: {chatty:#?}");
    assert_eq!(printed(&demo), 2, "{:?}", demo.stdout);
}

/// The lines of README.md's first `text` block, the demo's output, digits as `#`.
fn readme_demo_output() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    readme
        .lines()
        .skip_while(|l| l.trim() != "```text")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .map(digits_as_hash)
        .collect()
}

/// `line` with every run of digits replaced by one `#` (ports, durations).
fn digits_as_hash(line: &str) -> String {
    let mut out = String::new();
    for c in line.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

/// Every node answers the Socket.IO handshake, serves the vendored browser client, and
/// lists the three nodes as members.
async fn answers_and_forms_one_cluster(demo: &Demo) {
    let vendored = include_str!("../examples/shared/vendor/socket.io.min.js");
    for &node in &demo.nodes {
        let (status, js) = get(node, "/socket.io.min.js").await;
        assert_eq!(status, 200, "{node} serves the browser client");
        assert!(
            js == vendored,
            "{node} serves the vendored socket.io.min.js"
        );
        let (status, page) = get(node, "/").await;
        assert_eq!(status, 200);
        assert!(
            page.contains(r#"<script src="/socket.io.min.js">"#) && !page.contains("://"),
            "the page loads its client from its node, and nothing from elsewhere: {page}"
        );
    }
    for &node in &demo.nodes {
        let (status, open) = get(node, polling::PATH).await;
        assert_eq!(status, 200, "handshake on {node}: {open}");
        assert!(
            open.starts_with("0{") && open.contains("\"sid\""),
            "an engine.io open packet from {node}: {open}"
        );
    }

    let all = ["node-1", "node-2", "node-3"];
    let deadline = Instant::now() + SETTLE;
    for &node in &demo.nodes {
        loop {
            let names = members(node).await;
            if names == all {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node} lists {names:?}, not the three nodes\n{}",
                demo.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The operator's view: the other two members, each with a round-trip time once its
    // connection is made, a queue depth and a dropped-frames count.
    let node = demo.nodes[0];
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = get(node, "/cluster/peers").await;
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(view["node"], "node-1", "{body}");
        let peers = view["peers"].as_array().expect("a list of peers");
        let names: Vec<&str> = peers.iter().filter_map(|p| p["node"].as_str()).collect();
        let measured = peers.iter().all(|p| {
            p["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0)
                && p["queue_depth"].is_u64()
                && p["frames_dropped"].is_u64()
        });
        if names == ["node-2", "node-3"] && measured {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GET /cluster/peers on node-1: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A page of node-1 sends an admin broadcast: node-2 and node-3 each print it, node-2 shows
/// it on its page, and the sending page gets one answer per other node.
async fn admin_broadcast_reaches_the_other_nodes(demo: &Demo) {
    let (tx1, mut rx1, _) = common::polling_client(demo.nodes[0], "/").await;
    let (_tx2, mut rx2, _) = common::polling_client(demo.nodes[1], "/").await;
    common::client_emit(&tx1, "/", r#"1["admin","maintenance at 10:00"]"#).await;
    let Some(answers) = common::within(SETTLE, next_event(&mut rx1, "431")).await else {
        panic!("no answer to the admin broadcast\n{}", demo.log_text());
    };
    let answers: Vec<serde_json::Value> =
        serde_json::from_value(answers[0].clone()).expect("a list of answers");
    let mut by_node: Vec<(String, serde_json::Value)> = answers
        .iter()
        .map(|a| {
            (
                a["node"].as_str().unwrap_or_default().to_string(),
                a["pages"].clone(),
            )
        })
        .collect();
    by_node.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        by_node,
        [
            ("node-2".to_string(), serde_json::json!(1)),
            ("node-3".to_string(), serde_json::json!(0))
        ],
        "{answers:?}"
    );
    let Some(shown) = common::within(SETTLE, next_event(&mut rx2, "42")).await else {
        panic!("node-2's page did not show it\n{}", demo.log_text());
    };
    assert_eq!(
        shown,
        [
            serde_json::json!("admin"),
            serde_json::json!({"from": "node-1", "text": "maintenance at 10:00"})
        ]
    );
}

/// The arguments of the next packet `rx` receives that starts with `prefix` (engine.io
/// message then socket.io packet: `42` an event, `431` the answer to ack 1) and, for an
/// event, is not one of the status events every page gets on its own (members, presence).
async fn next_event(rx: &mut ClientRx, prefix: &str) -> Vec<serde_json::Value> {
    loop {
        let packet = String::from(rx.recv().await.expect("the page's connection is open"));
        let Some(args) = packet.strip_prefix(prefix) else {
            continue;
        };
        let Ok(serde_json::Value::Array(args)) = serde_json::from_str(args) else {
            continue;
        };
        let status = ["members", "me", "presence_state", "presence_diff"];
        if !status.contains(&args.first().and_then(|e| e.as_str()).unwrap_or_default()) {
            return args;
        }
    }
}

#[test]
fn browser_chat_across_two_nodes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !require("chromium") || !js_setup() {
        return;
    }
    let demo = Demo::start();
    let urls = demo.urls();
    run_node(
        &["--test", "browser.e2e.mjs"],
        &[("DEMO_URL_A", &urls[0]), ("DEMO_URL_B", &urls[1])],
        Duration::from_secs(180),
    );
}

/// The names listed by the next `members` event a demo page (the client `rx`) receives
/// that satisfies `pred`; every other packet is skipped. Panics after `limit`.
async fn members_pushed(
    rx: &mut ClientRx,
    limit: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let packet = match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => panic!("the page's connection closed; lists seen: {seen:?}"),
            Err(_) => panic!("no expected member list within {limit:?}; lists seen: {seen:?}"),
        };
        let text = String::from(packet);
        let Some(args) = text.strip_prefix("42") else {
            continue;
        };
        let Ok(serde_json::Value::Array(event)) = serde_json::from_str(args) else {
            continue;
        };
        if event.first().and_then(|e| e.as_str()) != Some("members") {
            continue;
        }
        let names: Vec<String> = serde_json::from_value(event[1].clone()).expect("a list of names");
        if pred(&names) {
            return names;
        }
        seen.push(names);
    }
}

/// A node of our own for the demo's cluster: the `minimal` example, as the demo's header
/// shows, named `node-4`, on loopback. Returns it with its log file.
fn start_fourth_node(bin: &Path, seed: &str, secret: &str) -> (Spawned, std::path::PathBuf) {
    let log = std::env::temp_dir().join(format!("demo-node-4-{}.log", std::process::id()));
    let env = [
        ("SOCKETIO_CLUSTER_ID", "demo".to_string()),
        ("SOCKETIO_CLUSTER_SEEDS", seed.to_string()),
        ("SOCKETIO_CLUSTER_SECRET", secret.to_string()),
        ("SOCKETIO_CLUSTER_NODE_NAME", "node-4".to_string()),
    ];
    (external::start_minimal(bin, &env, &log), log)
}

#[test]
fn members_follow_nodes_that_come_and_go() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let minimal = build_example("minimal", &[]);
    let mut demo = Demo::start_with(&[("SOCKETIO_CLUSTER_SECRET", common::SECRET)]);
    demo.wait_line(SETTLE, |l| l.starts_with("gossip seed: "));
    let seed = demo
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("gossip seed: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the demo prints its gossip seed")
        .to_string();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        answers_and_forms_one_cluster(&demo).await;
        // One page per demo node; each gets the member list at once, then on every change.
        let mut pages = Vec::new();
        for &node in &demo.nodes {
            let (tx, mut rx, _) = common::polling_client(node, "/").await;
            members_pushed(&mut rx, SETTLE, |_| true).await;
            pages.push((node, tx, rx));
        }
        let three = ["node-1", "node-2", "node-3"];
        let four = ["node-1", "node-2", "node-3", "node-4"];

        for (round, stop) in ["TERM", "KILL"].into_iter().enumerate() {
            let (mut fourth, log) = start_fourth_node(&minimal, &seed, common::SECRET);
            let why = |what: &str| {
                format!(
                    "round {round}: {what}\ndemo log:\n{}\nnode-4 log:\n{}",
                    demo.log_text(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            };
            for (node, _, rx) in &mut pages {
                let names = members_pushed(rx, SETTLE, |n| n == four).await;
                assert_eq!(names, four, "{}", why("node-4 appears"));
                // `GET /members` reads the same view the push was made from.
                assert_eq!(members(*node).await, four, "{}", why("GET /members"));
            }
            // Once its constructor returned (the others may list it a little before), it
            // says whom it saw when it joined, as the README shows.
            let said = || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l == "node-4 joined the cluster; it sees node-1, node-2, node-3")
            };
            assert!(
                common::wait_until(SETTLE, said).await,
                "{}",
                why("node-4 prints whom it sees")
            );
            external::signal_group(&fourth.0, stop);
            for (node, _, rx) in &mut pages {
                let names = members_pushed(rx, SETTLE, |n| n == three).await;
                assert_eq!(names, three, "{}", why("node-4 drops off"));
                assert_eq!(members(*node).await, three, "{}", why("GET /members"));
            }
            let status = external::wait_bounded(&mut fourth.0, SETTLE);
            assert!(status.is_some(), "{}", why("node-4 exits"));
            let _ = std::fs::remove_file(&log);
        }
    });
}
