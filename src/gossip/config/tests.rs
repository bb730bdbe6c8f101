//! Unit tests of the gossip backend's configuration: the environment, the ranges, the\n//! byte budgets, the cluster-CA files and the redacted secret.

use super::*;
use std::collections::HashMap;

fn from(vars: &[(&str, &str)]) -> Result<GossipAdapterConfig, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    GossipAdapterConfig::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn env_sets_every_field() {
    let c = from(&[
        ("SOCKETIO_CLUSTER_ID", "chat"),
        ("SOCKETIO_CLUSTER_NODE_NAME", "n1"),
        ("SOCKETIO_CLUSTER_GOSSIP_ADDR", "127.0.0.1:1000"),
        ("SOCKETIO_CLUSTER_MESH_ADDR", "127.0.0.1:1001"),
        ("SOCKETIO_CLUSTER_MESH_ADVERTISE_ADDR", "10.0.0.1:1001"),
        ("SOCKETIO_CLUSTER_SEEDS", "a:1, b:2,,"),
        ("SOCKETIO_CLUSTER_SECRET", "s1"),
        ("SOCKETIO_CLUSTER_SECRETS_VERIFY", "s0"),
        ("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS", "1500"),
        ("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS", "700"),
        ("SOCKETIO_CLUSTER_HANDSHAKE_TIMEOUT_MS", "1500"),
    ])
    .unwrap();
    assert_eq!(c.cluster_id, "chat");
    assert_eq!(c.node_name.as_deref(), Some("n1"));
    assert_eq!(c.gossip_addr.port(), 1000);
    assert_eq!(c.mesh_advertise_addr.unwrap().port(), 1001);
    assert_eq!(c.seeds, ["a:1", "b:2"]);
    assert_eq!(
        c.auth,
        Auth::Secrets(vec![Secret::from("s1"), Secret::from("s0")])
    );
    assert_eq!(c.request_timeout, Duration::from_millis(1500));
    assert_eq!(c.peer_timeout, Duration::from_millis(700));
    assert_eq!(c.handshake_timeout, Duration::from_millis(1500));
}

#[test]
fn env_errors_name_the_variable() {
    let e = from(&[("SOCKETIO_CLUSTER_MESH_ADDR", "nope")]).unwrap_err();
    assert!(e.to_string().contains("SOCKETIO_CLUSTER_MESH_ADDR"), "{e}");
    let e = from(&[
        ("SOCKETIO_CLUSTER_INSECURE", "1"),
        ("SOCKETIO_CLUSTER_SECRET", "x"),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("choose one"), "{e}");
    assert_eq!(from(&[]).unwrap().auth, Auth::Missing);
    assert_eq!(
        from(&[("SOCKETIO_CLUSTER_INSECURE", "true")]).unwrap().auth,
        Auth::Insecure
    );
}

#[test]
fn numbers_outside_their_range_are_refused_naming_the_variable() {
    for (var, bad) in [
        ("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS", "0"),
        ("SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS", "3600001"),
        ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "0"),
        ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "60001"),
        ("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS", "0"),
        ("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS", "99"),
        ("SOCKETIO_CLUSTER_HANDSHAKE_TIMEOUT_MS", "99"),
        ("SOCKETIO_CLUSTER_HANDSHAKE_TIMEOUT_MS", "60001"),
        ("SOCKETIO_CLUSTER_MAX_FRAME_SIZE", "0"),
        ("SOCKETIO_CLUSTER_MAX_FRAME_SIZE", "4294967296"),
        ("SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER", "0"),
        ("SOCKETIO_CLUSTER_STREAM_BUFFER", "0"),
        ("SOCKETIO_CLUSTER_STREAM_BUFFER", "1000001"),
    ] {
        let e = from(&[(var, bad)]).unwrap_err().to_string();
        assert!(
            e.contains(var) && e.contains("allowed range"),
            "{var}={bad}: {e}"
        );
    }
    let c = from(&[
        ("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS", "10"),
        ("SOCKETIO_CLUSTER_MAX_FRAME_SIZE", "1024"),
        ("SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER", "1"),
        ("SOCKETIO_CLUSTER_STREAM_BUFFER", "1000000"),
    ])
    .unwrap();
    assert_eq!(c.gossip_interval, Duration::from_millis(10));
    assert_eq!(
        (c.max_frame_size, c.ack_response_buffer, c.stream_buffer),
        (1024, 1, Some(1_000_000))
    );
    c.check_ranges().expect("the ends of the ranges are fine");
    GossipAdapterConfig::new()
        .check_ranges()
        .expect("the defaults are in range");
}

#[test]
fn node_names_and_cluster_ids_gossip_cannot_carry_are_refused() {
    type C = GossipAdapterConfig;
    let long_name = "n".repeat(MAX_NODE_NAME + 1);
    let long_id = "c".repeat(MAX_CLUSTER_ID + 1);
    for (c, method) in [
        (C::new().with_node_name(""), "with_node_name"),
        (C::new().with_node_name(long_name), "with_node_name"),
        (C::new().with_cluster_id(""), "with_cluster_id"),
        (C::new().with_cluster_id(long_id), "with_cluster_id"),
    ] {
        let e = c.check_ranges().unwrap_err().to_string();
        assert!(e.contains(method) && e.contains("bytes"), "{e}");
    }
    C::new()
        .with_node_name("n".repeat(MAX_NODE_NAME))
        .with_cluster_id("c".repeat(MAX_CLUSTER_ID))
        .check_ranges()
        .unwrap();
}

#[test]
#[allow(deprecated)]
fn builder_values_outside_their_range_name_the_method() {
    type C = GossipAdapterConfig;
    let cases: [(C, &str); 7] = [
        (
            C::new().with_request_timeout(Duration::ZERO),
            "with_request_timeout",
        ),
        (
            C::new().with_gossip_interval(Duration::ZERO),
            "with_gossip_interval",
        ),
        (
            C::new().with_peer_timeout(Duration::ZERO),
            "with_peer_timeout",
        ),
        (
            C::new().with_handshake_timeout(Duration::from_secs(61)),
            "with_handshake_timeout",
        ),
        (C::new().with_max_frame_size(10), "with_max_frame_size"),
        (
            C::new().with_ack_response_buffer(0),
            "with_ack_response_buffer",
        ),
        (C::new().with_stream_buffer(0), "with_stream_buffer"),
    ];
    for (c, method) in cases {
        let e = c.check_ranges().unwrap_err().to_string();
        assert!(
            e.contains(&format!("GossipAdapterConfig::{method}"))
                && e.contains("SOCKETIO_CLUSTER_"),
            "{e}"
        );
    }
}

#[test]
fn the_send_queues_are_bounded_in_bytes_by_default() {
    let c = GossipAdapterConfig::new();
    assert_eq!(c.peer_queue_bytes, 64 * 1024 * 1024);
    assert_eq!(c.node_queue_bytes, 256 * 1024 * 1024);
    assert_eq!(DEFAULT_PEER_QUEUE_BYTES, 64 * 1024 * 1024);
    assert_eq!(DEFAULT_NODE_QUEUE_BYTES, 256 * 1024 * 1024);
    // At least Redis's default pub/sub hard limit (32 MB), and the largest frame.
    assert!(c.peer_queue_bytes >= 32 * 1024 * 1024);
    assert!(c.peer_queue_bytes >= c.max_frame_size + LEN_PREFIX);
    assert_eq!(c.stream_buffer, None);
    assert!(c.deprecations().is_empty());
    c.check_ranges().expect("the defaults are in range");
}

#[test]
fn the_byte_budgets_are_read_from_the_environment_and_checked() {
    let c = from(&[
        ("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES", "1048576"),
        ("SOCKETIO_CLUSTER_MAX_FRAME_SIZE", "65536"),
        ("SOCKETIO_CLUSTER_NODE_QUEUE_BYTES", "8388608"),
    ])
    .unwrap();
    assert_eq!((c.peer_queue_bytes, c.node_queue_bytes), (1 << 20, 8 << 20));
    c.check_ranges().unwrap();
    for (var, bad) in [
        ("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES", "65535"),
        ("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES", "4294967297"),
        ("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES", "-1"),
        ("SOCKETIO_CLUSTER_NODE_QUEUE_BYTES", "0"),
        ("SOCKETIO_CLUSTER_NODE_QUEUE_BYTES", "68719476737"),
        ("SOCKETIO_CLUSTER_NODE_QUEUE_BYTES", "lots"),
    ] {
        let e = from(&[(var, bad)]).unwrap_err().to_string();
        assert!(e.contains(var), "{var}={bad}: {e}");
    }
    // A peer budget that cannot hold the largest frame, a node budget that cannot hold
    // one peer's: refused at start, naming the setting and the one that bounds it.
    type C = GossipAdapterConfig;
    let e = C::new()
        .with_peer_queue_bytes(1 << 20)
        .check_ranges()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GossipAdapterConfig::with_peer_queue_bytes")
            && e.contains("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES")
            && e.contains("with_max_frame_size")
            && e.contains("16777220"),
        "{e}"
    );
    let e = C::new()
        .with_node_queue_bytes(32 << 20)
        .check_ranges()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GossipAdapterConfig::with_node_queue_bytes")
            && e.contains("with_peer_queue_bytes")
            && e.contains("67108864"),
        "{e}"
    );
    C::new()
        .with_max_frame_size(1024)
        .with_peer_queue_bytes(64 * 1024)
        .with_node_queue_bytes(64 * 1024)
        .check_ranges()
        .expect("the smallest budgets, with small frames");
}

#[test]
#[allow(deprecated)]
fn the_stream_buffer_is_still_checked_and_its_use_is_told() {
    // From the environment: still checked, kept, and told at start.
    let e = from(&[("SOCKETIO_CLUSTER_STREAM_BUFFER", "0")]).unwrap_err();
    assert!(
        e.to_string().contains("SOCKETIO_CLUSTER_STREAM_BUFFER"),
        "{e}"
    );
    let c = from(&[("SOCKETIO_CLUSTER_STREAM_BUFFER", "500")]).unwrap();
    assert_eq!(c.stream_buffer, Some(500));
    c.check_ranges()
        .expect("a value in its range is still accepted");
    let told = c.deprecations();
    assert_eq!(told.len(), 1, "{told:?}");
    for words in [
        "SOCKETIO_CLUSTER_STREAM_BUFFER",
        "with_stream_buffer",
        "no longer bounds",
        "SOCKETIO_CLUSTER_PEER_QUEUE_BYTES",
        "SOCKETIO_CLUSTER_NODE_QUEUE_BYTES",
        "67108864",
        "slow consumer",
    ] {
        assert!(told[0].contains(words), "{words}: {}", told[0]);
    }
    // From the builder: the same, and the queues keep their byte budgets.
    let c = GossipAdapterConfig::new().with_stream_buffer(10);
    assert_eq!(c.deprecations().len(), 1);
    assert_eq!(c.peer_queue_bytes, DEFAULT_PEER_QUEUE_BYTES);
    c.check_ranges().unwrap();
    assert!(
        GossipAdapterConfig::new()
            .with_stream_buffer(0)
            .check_ranges()
            .is_err()
    );
}

#[test]
fn tls_files_come_all_three_or_not_at_all() {
    assert_eq!(from(&[]).unwrap().tls, None);
    let c = from(&[
        ("SOCKETIO_CLUSTER_TLS_CA", "ca.pem"),
        ("SOCKETIO_CLUSTER_TLS_CERT", "n1.pem"),
        ("SOCKETIO_CLUSTER_TLS_KEY", "n1.key"),
    ])
    .unwrap();
    assert_eq!(
        c.tls,
        Some(TlsFiles {
            ca: "ca.pem".into(),
            cert: "n1.pem".into(),
            key: "n1.key".into(),
        })
    );
    let e = from(&[
        ("SOCKETIO_CLUSTER_TLS_CA", "ca.pem"),
        ("SOCKETIO_CLUSTER_TLS_KEY", "n1.key"),
    ])
    .unwrap_err();
    assert!(
        e.to_string().contains("invalid SOCKETIO_CLUSTER_TLS_CERT"),
        "{e}"
    );
    let e = from(&[("SOCKETIO_CLUSTER_TLS_KEY", "n1.key")]).unwrap_err();
    assert!(
        e.to_string().contains("invalid SOCKETIO_CLUSTER_TLS_CA"),
        "{e}"
    );
}

#[test]
fn secret_is_redacted_in_debug() {
    let c = GossipAdapterConfig::new().with_secrets(["hunter2-very-secret", "other-one"]);
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(!dbg.contains("other-one"), "{dbg}");
    assert!(dbg.contains("redacted"));
}

/// Every log line written while `f` runs.
fn logs_of(f: impl FnOnce()) -> String {
    let (lines, guard) = crate::gossip::mesh::tests::capture_logs();
    f();
    drop(guard);
    String::from_utf8(lines.lock().unwrap().clone()).unwrap()
}

#[test]
fn a_secret_with_the_default_cluster_id_is_warned_about() {
    use crate::gossip::keys::tests::SECRET;
    let logs = logs_of(|| {
        GossipAdapterConfig::new()
            .with_secret(SECRET)
            .warn_if_default_salt()
    });
    assert!(
        logs.contains("WARN") && logs.contains("cluster id"),
        "no warning: {logs:?}"
    );
    let logs = logs_of(|| {
        GossipAdapterConfig::new()
            .with_cluster_id("chat-prod")
            .with_secret(SECRET)
            .warn_if_default_salt();
    });
    assert!(!logs.contains("WARN"), "{logs}");
    let logs = logs_of(|| {
        GossipAdapterConfig::new()
            .insecure_no_auth()
            .warn_if_default_salt()
    });
    assert!(
        !logs.contains("WARN"),
        "without a secret there is no salt: {logs}"
    );
}
