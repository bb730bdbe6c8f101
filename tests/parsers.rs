//! Nodes whose socket.io servers use different parsers (common/JSON and msgpack) cannot
//! exchange packets: each refuses the other, says so in one log line naming both parsers,
//! and the nodes that agree keep working together.
//!
//! Gossip only: the parser travels in the mesh's node metadata.
#![cfg(feature = "cluster-gossip")]

mod common;
#[path = "common/logs.rs"]
mod logs;

use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use socketioxide::{ParserConfig, extract::SocketRef};

/// Panics anywhere in this test binary (it holds one test).
static PANICS: AtomicU32 = AtomicU32::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

/// Two JSON nodes and a msgpack node in one cluster: the msgpack node and the JSON nodes
/// refuse each other (one log line on each side names both parsers), no node lists the
/// other kind as a member, the JSON nodes still exchange broadcasts, and the msgpack node's
/// broadcasts reach no JSON client and panic nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_parser_is_refused_and_the_others_keep_working() {
    logs::capture();
    count_panics();
    // Installed before any node starts: a node takes its metric handles when it starts.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the one recorder of this test binary");
    let mut cluster = TestCluster::new(&Backend::Gossip);
    let json_a = cluster.start(|b| b).await;
    let json_b = cluster.start(|b| b).await;
    let msgpack = cluster
        .start(|b| b.with_parser(ParserConfig::msgpack()))
        .await;
    for node in [&json_a, &json_b, &msgpack] {
        node.io
            .ns("/", async |_: SocketRef<Adapter>| {})
            .await
            .expect("namespace");
    }
    let name = |n: &TestNode| n.cluster().node_name().to_string();
    let settled = wait_until(FORMS, || {
        names(&json_a) == [name(&json_b)]
            && names(&json_b) == [name(&json_a)]
            && names(&msgpack).is_empty()
            && json_a.cluster().members()[0].hosts("/")
            && json_b.cluster().members()[0].hosts("/")
    })
    .await;
    assert!(
        settled,
        "members: json_a {:?}, json_b {:?}, msgpack {:?}",
        names(&json_a),
        names(&json_b),
        names(&msgpack)
    );

    // One line on each side, naming both parsers.
    for node in [&json_a, &json_b, &msgpack] {
        let me = format!("node={}#", name(node));
        let lines = logs::lines_with("peer refused");
        assert!(
            lines.iter().any(|l| l.contains(&me)
                && l.contains("msgpack parser")
                && l.contains("common (JSON) parser")),
            "{me} logged its refusal: {lines:#?}"
        );
    }

    let [mut a, mut b] = [dummy(&json_a.io, "/").await, dummy(&json_b.io, "/").await];
    json_a.io.emit("from-a", &1).await.expect("emit");
    json_b.io.emit("from-b", &2).await.expect("emit");
    for client in [&mut a, &mut b] {
        let mut got = [
            recv(&mut client.1, ARRIVES).await,
            recv(&mut client.1, ARRIVES).await,
        ];
        got.sort();
        assert_eq!(got, [r#"42["from-a",1]"#, r#"42["from-b",2]"#]);
    }

    for i in 0..5 {
        msgpack.io.emit("from-msgpack", &i).await.expect("emit");
    }
    nothing_arrives(&[&json_a, &json_b], [(&mut a.1, a.2), (&mut b.1, b.2)]).await;
    // The markers come from the JSON nodes, so they are not ordered after a msgpack
    // broadcast that would come late: what shows none will is that the msgpack node wrote
    // no request frame (a broadcast is one) to any peer, while the JSON nodes' were
    // counted.
    let page = metrics.render();
    assert!(requests_sent(&page, &name(&json_a)) > 0.0, "{page}");
    assert_eq!(requests_sent(&page, &name(&msgpack)), 0.0, "{page}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "nothing panicked");
    assert_eq!(
        names(&json_a),
        [name(&json_b)],
        "still refused, no flapping"
    );
    assert!(names(&msgpack).is_empty());
}

/// Request frames (broadcasts among them) `node` wrote to its peers, from a Prometheus page.
fn requests_sent(page: &str, node: &str) -> f64 {
    let labels = [format!("node=\"{node}\""), "kind=\"request\"".to_string()];
    page.lines()
        .filter(|l| l.starts_with("socketioxide_cluster_frames_sent_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
