//! The metrics as an operator sees them.
//!
//! `the_dashboard_uses_only_documented_metrics` reads `examples/grafana-dashboard.json`: every
//! metric name a panel's query uses is one the library documents (`metrics::ALL`).
//!
//! `scraped_counters_follow_traffic_and_a_killed_node` runs three `minimal` example
//! processes on loopback, sends traffic through a client of the first, and scrapes its
//! `GET /metrics` (the Prometheus text format): members, frames, requests and gossip
//! counters moved; then the third node is stopped while a request waits for it and killed
//! with SIGKILL: members go down by one and requests that ended early up by at least one.
//!
//! `requests_run_in_a_span_and_peer_log_lines_name_this_node` captures the log lines of two
//! nodes in this process while one asks the other and then leaves: each request has its
//! `cluster_request` span, and every line naming a peer names the local node too.

#![cfg(feature = "cluster-gossip")]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

mod common;
#[path = "common/external.rs"]
mod external;
#[path = "common/logs.rs"]
mod logs;

use common::{ClientRx, ClientTx, polling};
use external::{Spawned, build_example, free_udp_port, signal_group, wait_stopped};
use socketioxide_cluster::metrics::{self, MetricType};

/// Upper bound for the nodes to start, form and notice changes.
const SETTLE: Duration = Duration::from_secs(30);

/// Every metric name in a PromQL expression: words starting with the library's prefix.
fn names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("socketioxide_cluster_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        names.push(word);
    }
    names
}

/// Whether `name`, as Prometheus exposes it, is a documented metric: a histogram is exposed
/// as `_bucket`, `_sum` and `_count` series.
fn documented(name: &str) -> bool {
    metrics::ALL.iter().any(|m| {
        m.name == name
            || (m.kind == MetricType::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(m.name)))
    })
}

#[test]
fn the_dashboard_uses_only_documented_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("examples/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut used = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"].as_array().expect("targets");
        let names: Vec<String> = targets
            .iter()
            .flat_map(|t| names_in(t["expr"].as_str().unwrap_or_default()))
            .collect();
        assert!(
            !names.is_empty(),
            "panel {title:?} shows no metric of the library"
        );
        for name in &names {
            assert!(
                documented(name),
                "panel {title:?} uses {name}, which the library does not document"
            );
        }
        used.extend(names);
    }
    assert!(used.iter().any(|n| n == metrics::MEMBERS));
    // The check itself refuses what it should.
    assert!(!documented("socketioxide_cluster_members_total"));
    assert!(!documented("socketioxide_cluster_members_bucket"));
    assert!(documented(
        "socketioxide_cluster_request_duration_seconds_bucket"
    ));
}

/// One `minimal` node: its process, log and HTTP address.
struct Node {
    process: Spawned,
    log: PathBuf,
    http: SocketAddr,
}

fn start_node(bin: &Path, cluster: &str, name: &str, gossip: SocketAddr, seed: SocketAddr) -> Node {
    let log = std::env::temp_dir().join(format!("metrics-{name}-{}.log", std::process::id()));
    let env = [
        ("SOCKETIO_CLUSTER_ID", cluster.to_string()),
        ("SOCKETIO_CLUSTER_SECRET", common::SECRET.to_string()),
        ("SOCKETIO_CLUSTER_SEEDS", seed.to_string()),
        ("SOCKETIO_CLUSTER_GOSSIP_ADDR", gossip.to_string()),
        ("SOCKETIO_CLUSTER_NODE_NAME", name.to_string()),
    ];
    let process = external::start_minimal(bin, &env, &log);
    let started = Instant::now();
    let http = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let addr = text.lines().find_map(|l| {
            let url = l.split("listening on http://").nth(1)?;
            url.split_whitespace().next()?.parse::<SocketAddr>().ok()
        });
        if let Some(addr) = addr {
            break addr;
        }
        assert!(
            started.elapsed() < SETTLE,
            "{name} did not say where it listens; its log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Node { process, log, http }
}

/// The sum of the samples of `name` whose labels include every one of `labels`
/// (`key="value"`), in a page of the Prometheus text format.
fn sample(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (series_name == name && labels.iter().all(|want| series_labels.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn scrape(node: &Node) -> String {
    let (status, page) = polling::http(node.http, "GET", "/metrics", "")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics: {page}");
    page
}

/// Scrape `node` until `cond` holds of its page (at most [`SETTLE`]); the last page.
async fn scrape_until(node: &Node, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let page = scrape(node).await;
        if cond(&page) {
            return page;
        }
        assert!(
            started.elapsed() < SETTLE,
            "{what}: not seen in time; last page:\n{page}\nlog:\n{}",
            std::fs::read_to_string(&node.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ask the node how many clients the cluster has (`count`, a request to every member):
/// sends the event with ack id `id`; the answer comes later, see [`count_answer`].
async fn ask_count(tx: &ClientTx, id: u32) {
    let packet = engineioxide::Packet::Message(format!("2{id}[\"count\"]").into());
    tx.send(packet).await.expect("client open");
}

/// The answer to ack `id`.
async fn count_answer(rx: &mut ClientRx, id: u32) -> String {
    let started = Instant::now();
    let prefix = format!("43{id}[");
    loop {
        let left = SETTLE.saturating_sub(started.elapsed()).as_millis() as u64;
        let packet = common::recv(rx, left.max(1)).await;
        if let Some(rest) = packet.strip_prefix(&prefix) {
            return rest.trim_end_matches(']').to_string();
        }
    }
}

#[test]
fn scraped_counters_follow_traffic_and_a_killed_node() {
    let bin = build_example("minimal", &[]);
    let cluster = format!("metrics-{}", std::process::id());
    let gossip: Vec<SocketAddr> = (0..3).map(|_| free_udp_port()).collect();
    let nodes: Vec<Node> = ["m-1", "m-2", "m-3"]
        .iter()
        .zip(&gossip)
        .map(|(name, addr)| start_node(&bin, &cluster, name, *addr, gossip[0]))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let first = &nodes[0];
        let members = |page: &str| sample(page, metrics::MEMBERS, &["node=\"m-1\""]);
        scrape_until(first, "m-1 counts two members", |p| members(p) == 2.0).await;
        for node in &nodes[1..] {
            scrape_until(node, "every node counts two members", |p| {
                sample(p, metrics::MEMBERS, &[]) == 2.0
            })
            .await;
        }

        // Traffic: broadcasts (frames) and a request to every member.
        let (tx, mut rx, _) = common::polling_client(first.http, "/").await;
        for i in 0..5 {
            common::client_emit(&tx, "/", &format!("[\"message\",{i}]")).await;
        }
        ask_count(&tx, 1).await;
        assert_eq!(
            count_answer(&mut rx, 1).await,
            "1",
            "one client in the cluster"
        );
        let page = scrape_until(first, "the broadcasts counted", |p| {
            sample(p, metrics::FRAMES_SENT, &["kind=\"request\""]) >= 2.0 * 6.0
        })
        .await;
        let fetch = ["kind=\"fetch_sockets\""];
        assert_eq!(
            sample(
                &page,
                metrics::REQUESTS,
                &["kind=\"fetch_sockets\"", "outcome=\"answered\""]
            ),
            1.0
        );
        let count = format!("{}_count", metrics::REQUEST_DURATION);
        assert_eq!(sample(&page, &count, &fetch), 1.0, "one duration observed");
        assert!(sample(&page, metrics::FRAMES_RECEIVED, &["kind=\"response\""]) >= 2.0);
        assert!(sample(&page, metrics::BYTES_SENT, &[]) > 0.0);
        assert!(sample(&page, metrics::GOSSIP_DATAGRAMS, &["outcome=\"sealed\""]) > 0.0);
        assert!(sample(&page, metrics::GOSSIP_DATAGRAMS, &["outcome=\"opened\""]) > 0.0);
        assert_eq!(
            sample(&page, metrics::LINKS_UP, &["direction=\"out\""]),
            2.0
        );
        assert_eq!(sample(&page, metrics::REQUESTS_ENDED_EARLY, &[]), 0.0);
        assert_eq!(
            sample(&page, metrics::MEMBERSHIP_CHANGES, &["change=\"left\""]),
            0.0
        );
        // Round-trip times are sampled every second.
        scrape_until(first, "round-trip times", |p| {
            sample(p, metrics::PEER_RTT, &["peer=\"m-3\""]) > 0.0
        })
        .await;

        // m-3 hangs while a request waits for it, then is killed.
        let third = &nodes[2];
        signal_group(&third.process.0, "STOP");
        assert!(wait_stopped(&third.process.0), "m-3 stopped");
        ask_count(&tx, 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal_group(&third.process.0, "KILL");
        assert_eq!(count_answer(&mut rx, 2).await, "1", "answered without m-3");
        let page = scrape_until(first, "m-3 gone", |p| members(p) == 1.0).await;
        assert!(
            sample(&page, metrics::REQUESTS_ENDED_EARLY, &fetch) >= 1.0,
            "the request that waited for m-3 ended early:\n{page}"
        );
        assert_eq!(
            sample(
                &page,
                metrics::REQUESTS,
                &["kind=\"fetch_sockets\"", "outcome=\"peer_lost\""]
            ),
            1.0
        );
        assert_eq!(
            sample(&page, metrics::MEMBERSHIP_CHANGES, &["change=\"left\""]),
            1.0
        );
        assert_eq!(
            sample(&page, metrics::LINKS_UP, &["direction=\"out\""]),
            1.0
        );
    });
    for node in &nodes {
        let _ = std::fs::remove_file(&node.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_in_a_span_and_peer_log_lines_name_this_node() {
    logs::capture();
    let [a, b] = common::spawn_cluster::<2>(&common::Backend::Gossip).await;
    common::ns_everywhere(
        &[&a, &b],
        "/",
        async |_: socketioxide::extract::SocketRef<common::Adapter>| {},
    )
    .await;
    let sockets = a.io.fetch_sockets().await.expect("fetch_sockets");
    assert!(sockets.is_empty());
    let b_name = b.cluster().node_name().to_string();
    b.cluster().shutdown().await;
    assert!(
        common::wait_until(SETTLE, || a.cluster().members().is_empty()).await,
        "b left"
    );

    let a_name = a.cluster().node_name();
    let spans = logs::lines_with("cluster_request{");
    assert!(
        spans.iter().any(|l| l.contains(&format!("node={a_name}"))
            && l.contains("kind=\"fetch_sockets\"")
            && l.contains(&format!("peers=[{b_name}#"))
            && l.contains("outcome=\"answered\"")),
        "the request's span names its node, kind, peers and outcome:\n{}",
        spans.join("\n")
    );
    let about_peers: Vec<String> = logs::text()
        .lines()
        .filter(|l| l.contains("socketioxide_cluster") && l.contains("peer="))
        .map(String::from)
        .collect();
    assert!(
        about_peers
            .iter()
            .any(|l| l.contains(&format!("peer={b_name}#"))),
        "a's log says something of b:\n{}",
        logs::text()
    );
    for line in &about_peers {
        assert!(
            line.contains("node="),
            "a line about a peer that names no node: {line}"
        );
    }
}
