//! Tests that what the README and `docs/` state about defaults, ranges and bounds is what
//! the code does: each documented value is read from the page (the configuration tables),
//! or its sentence is formed from the code's own value and looked for in the page. Change a
//! default and its page must change with it.

use std::{path::Path, time::Duration};

use crate::{
    GossipAdapterConfig,
    gossip::{keys, membership::replay, mesh::admission, node::MAX_SERVER_IDS_PER_PEER, wire},
    presence::PresenceConfig,
    ranges::{self, Setting},
};

/// A page of the repository, its lines joined so that a sentence wrapped over two lines is
/// found.
fn page(path: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Asserts that `path` says `sentence` (whitespace aside).
#[track_caller]
fn says(path: &str, sentence: &str) {
    let text = page(path);
    let sentence = sentence.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains(&sentence),
        "{path} does not say {sentence:?}: the code and the page disagree"
    );
}

/// `n` with thousands separated by commas, as the pages write numbers.
fn commas(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration as the pages write it: `500 ms`, `2 s`, `10 min`, `1 h`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0".into(),
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms >= 600_000 => format!("{} min", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{} s", ms / 1_000),
        ms => format!("{ms} ms"),
    }
}

/// A size in bytes as the pages write it: `16 MiB`, `1 KiB`.
fn bytes(n: usize) -> String {
    match n {
        n if n % (1024 * 1024 * 1024) == 0 => format!("{} GiB", n / (1024 * 1024 * 1024)),
        n if n % (1024 * 1024) == 0 => format!("{} MiB", n / (1024 * 1024)),
        n if n % 1024 == 0 => format!("{} KiB", n / 1024),
        n => commas(n),
    }
}

/// The cells of the row of `method` in the first table of `path` that has one.
fn row(path: &str, method: &str) -> Vec<String> {
    row_of(path, &format!("`{method}`"))
}

/// The cells of the row whose first cell is `first` in the first table of `path` that has one.
fn row_of(path: &str, first: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let first = format!("| {first} |");
    let line = text
        .lines()
        .find(|l| l.starts_with(&first))
        .unwrap_or_else(|| panic!("{path} has no row for {first}"));
    line.trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().to_owned())
        .collect()
}

/// `default (min – max)` of a numeric setting, as the configuration tables write it.
fn default_and_range<T>(default: T, s: &Setting<T>, show: impl Fn(T) -> String) -> String
where
    T: Copy,
{
    format!("{} ({} – {})", show(default), show(s.min), show(s.max))
}

fn count(n: usize) -> String {
    if n < 10_000 { n.to_string() } else { commas(n) }
}

/// Every default and range of the configuration table (`docs/configuration.md`), and the
/// defaults of the README's table, against `GossipAdapterConfig::default()` and the ranges
/// the code checks.
#[test]
fn configuration_defaults_and_ranges_are_the_documented_ones() {
    let c = GossipAdapterConfig::default();
    let table = "docs/configuration.md";
    // Settings with a range: the variable, the default and the range, by name.
    let timed = [
        (
            "request timeout",
            &ranges::REQUEST_TIMEOUT,
            c.request_timeout,
        ),
        ("peer timeout", &ranges::PEER_TIMEOUT, c.peer_timeout),
        (
            "gossip interval",
            &ranges::GOSSIP_INTERVAL,
            c.gossip_interval,
        ),
        ("join timeout", &ranges::JOIN_TIMEOUT, c.join_timeout),
        (
            "handshake timeout",
            &ranges::HANDSHAKE_TIMEOUT,
            c.handshake_timeout,
        ),
    ];
    for (what, s, default) in timed {
        let cells = row(table, s.method);
        assert_eq!(cells[1], format!("`{}`", s.var), "{what}: the variable");
        assert_eq!(
            cells[2],
            default_and_range(default, s, duration),
            "{what}: default (allowed range)"
        );
    }
    let counted = [(
        "ack response buffer",
        &ranges::ACK_RESPONSE_BUFFER,
        c.ack_response_buffer,
    )];
    for (what, s, default) in counted {
        let cells = row(table, s.method);
        assert_eq!(cells[1], format!("`{}`", s.var), "{what}: the variable");
        assert_eq!(cells[2], default_and_range(default, s, count), "{what}");
    }
    // The deprecated stream buffer has a range and no default of its own.
    let s = &ranges::STREAM_BUFFER;
    let cells = row_of(table, &format!("`{}` (deprecated for gossip)", s.method));
    assert_eq!(
        cells[1],
        format!("`{}`", s.var),
        "stream buffer: the variable"
    );
    assert_eq!(
        cells[2],
        format!("— ({} – {})", count(s.min), count(s.max)),
        "stream buffer"
    );
    assert!(
        c.stream_buffer.is_none(),
        "the stream buffer has no default"
    );
    // The byte budgets: default and range, then the cross-check the table names.
    let budgets = [
        ("peer queue", &ranges::PEER_QUEUE_BYTES, c.peer_queue_bytes),
        ("node queue", &ranges::NODE_QUEUE_BYTES, c.node_queue_bytes),
    ];
    for (what, s, default) in budgets {
        let cells = row(table, s.method);
        assert_eq!(cells[1], format!("`{}`", s.var), "{what}: the variable");
        let documented = default_and_range(default, s, bytes);
        assert!(
            cells[2].starts_with(documented.trim_end_matches(')')),
            "{what}: {:?} does not start with {documented:?}",
            cells[2]
        );
    }
    let s = &ranges::MAX_FRAME_SIZE;
    let cells = row(table, s.method);
    assert_eq!(
        cells[1],
        format!("`{}`", s.var),
        "max frame size: the variable"
    );
    assert_eq!(
        cells[2],
        default_and_range(c.max_frame_size, s, bytes),
        "max frame size"
    );
    assert_eq!(c.max_frame_size, wire::DEFAULT_MAX_FRAME_SIZE);

    // Settings without a range, in both tables.
    let plain = [
        (
            "with_cluster_id",
            "SOCKETIO_CLUSTER_ID",
            format!("`{}`", c.cluster_id),
        ),
        (
            "with_gossip_addr",
            "SOCKETIO_CLUSTER_GOSSIP_ADDR",
            format!("`{}`", c.gossip_addr),
        ),
        (
            "with_mesh_addr",
            "SOCKETIO_CLUSTER_MESH_ADDR",
            format!("`{}`", c.mesh_addr),
        ),
    ];
    for (method, var, default) in &plain {
        for path in [table, "README.md"] {
            let cells = row(path, method);
            assert_eq!(cells[1], format!("`{var}`"), "{path}: {method}");
            assert!(
                cells[2] == *default || cells[2].starts_with(&format!("{default} (")),
                "{path}: default of {method}: {:?}",
                cells[2]
            );
        }
    }
    // The lengths gossip can carry.
    assert_eq!(
        row(table, "with_cluster_id")[2],
        format!(
            "`{}` (1 – {} bytes)",
            c.cluster_id,
            crate::gossip::config::MAX_CLUSTER_ID
        )
    );
    assert_eq!(
        row(table, "with_node_name")[2],
        format!(
            "random (1 – {} bytes)",
            crate::gossip::config::MAX_NODE_NAME
        )
    );
    assert!(c.seeds.is_empty() && row("README.md", "with_seeds")[2] == "none");
    assert!(c.node_name.is_none() && row("README.md", "with_node_name")[2] == "random");
    assert!(matches!(c.auth, crate::gossip::config::Auth::Missing));
    assert_eq!(row("README.md", "with_secret")[2], "**required**");

    // The Redis backend's defaults, which the table says apply there too.
    #[cfg(feature = "redis")]
    {
        let r = crate::redis::RedisAdapterConfig::new();
        assert_eq!(
            r.request_timeout, c.request_timeout,
            "request timeout on Redis"
        );
        assert_eq!(
            r.ack_response_buffer, c.ack_response_buffer,
            "ack buffer on Redis"
        );
    }
}

/// The defaults of presence (`docs/presence.md`): entries per topic and per node, meta
/// size, the sweep and announce intervals.
#[test]
fn presence_defaults_are_the_documented_ones() {
    let p = PresenceConfig::default();
    let doc = "docs/presence.md";
    says(
        doc,
        &format!(
            "A socket has at most {} entries, a node at most {} per topic and {} in all",
            commas(p.max_per_socket),
            commas(p.max_per_topic),
            commas(p.max_per_node)
        ),
    );
    says(
        doc,
        &format!("metas are JSON of at most {}", bytes(p.max_meta_bytes)),
    );
    says(
        doc,
        &format!("(noticed within {})", duration(p.sweep_interval)),
    );
    assert_eq!(p.announce_interval, Duration::from_secs(1));
    says(doc, "the number each node announces every second");
    #[cfg(feature = "redis")]
    says(
        doc,
        &format!(
            "(listed every {}; Redis drops it",
            duration(crate::bus::redis::POLL)
        ),
    );
}

/// The bounds the security model states (`docs/security.md`, `docs/deploying.md`).
#[test]
fn security_bounds_are_the_documented_ones() {
    let sec = "docs/security.md";
    says(
        sec,
        &format!(
            "Frames are at most `with_max_frame_size` ({})",
            bytes(wire::DEFAULT_MAX_FRAME_SIZE)
        ),
    );
    says(
        sec,
        &format!(
            "({} room names, {} sockets in an answer, {} attachments, {} namespaces a node \
             announces, of at most {} bytes each)",
            commas(wire::MAX_ROOMS),
            commas(wire::MAX_SOCKETS),
            commas(wire::MAX_ATTACHMENTS),
            commas(wire::MAX_NAMESPACES),
            wire::MAX_NAMESPACE_LEN
        ),
    );
    says(
        sec,
        &format!("server ids are kept per peer ({MAX_SERVER_IDS_PER_PEER})"),
    );
    says(
        sec,
        &format!(
            "was sent more than {} from the receiver's clock",
            duration(Duration::from_millis(replay::FRESH_MS))
        ),
    );
    says(
        sec,
        &format!("at least {} characters", keys::MIN_SECRET_LEN),
    );
    says(
        sec,
        &format!(
            "with Argon2id ({} MiB, {} passes)",
            keys::ARGON2_MEMORY_KIB / 1024,
            keys::ARGON2_PASSES
        ),
    );
    says(
        sec,
        &format!(
            "at most {} such connections are served at once",
            admission::MAX_UNPROVEN
        ),
    );
    let dep = "docs/deploying.md";
    says(
        dep,
        &format!(
            "one stream and {} for its proof",
            bytes(crate::gossip::mesh::HANDSHAKE_WINDOW as usize)
        ),
    );
    says(
        dep,
        &format!(
            "At most {} such connections are served at once, {} per source address (an \
             IPv4 address, an IPv6 /64), {} of them kept for the mesh addresses of the \
             cluster's nodes, each for at most the handshake deadline ({}); beyond {} at \
             once, or for a source's second one, a client must first show it receives at its \
             address",
            admission::MAX_UNPROVEN,
            admission::MAX_PER_SOURCE,
            admission::RESERVED_FOR_KNOWN,
            duration(admission::HANDSHAKE_TIMEOUT),
            admission::RETRY_ABOVE
        ),
    );
}

/// The figures of the README's security table: a socket's share of presence, a stranger's
/// share of the mesh's admission and how long it holds it.
#[test]
fn the_security_table_states_the_code_s_values() {
    let readme = "README.md";
    says(
        readme,
        &format!(
            "fill its socket's presence share ({})",
            commas(PresenceConfig::default().max_per_socket)
        ),
    );
    says(
        readme,
        &format!(
            "hold {} mesh handshakes per address, each for {}",
            admission::MAX_PER_SOURCE,
            duration(admission::HANDSHAKE_TIMEOUT)
        ),
    );
}

/// The bounds of server events (`docs/server-events.md`).
#[test]
fn server_event_bounds_are_the_documented_ones() {
    says(
        "docs/server-events.md",
        &format!(
            "at most {} run at once per node",
            commas(crate::events::MAX_RUNNING)
        ),
    );
    #[cfg(feature = "redis")]
    says(
        "docs/server-events.md",
        &format!("checks again every {}", duration(crate::bus::redis::POLL)),
    );
}
