//! The allowed range of every numeric setting, and the check that refuses a value outside
//! it with an error naming the setting (builder method or environment variable) and the
//! range. Pure; shared by both backends.

use std::{fmt, time::Duration};

use crate::error::ConfigError;

/// A numeric setting: how users set it, and the values that work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting<T> {
    /// The builder method that sets it.
    pub(crate) method: &'static str,
    /// The environment variable that sets it.
    pub(crate) var: &'static str,
    /// Smallest value that works.
    pub(crate) min: T,
    /// Largest value that works.
    pub(crate) max: T,
}

const fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Longest wait of a request for the other nodes: below 10 ms every request to a peer
/// times out; an hour is already far beyond any useful wait.
pub(crate) const REQUEST_TIMEOUT: Setting<Duration> = Setting {
    method: "with_request_timeout",
    var: "SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS",
    min: ms(10),
    max: ms(3_600_000),
};

/// Time between gossip rounds: 0 stops gossip (chitchat panics on it); beyond a minute a
/// cluster takes minutes to form and to notice a dead node.
pub(crate) const GOSSIP_INTERVAL: Setting<Duration> = Setting {
    method: "with_gossip_interval",
    var: "SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS",
    min: ms(10),
    max: ms(60_000),
};

/// QUIC idle timeout of mesh connections (keep-alives at a quarter of it): below 100 ms a
/// loaded node drops healthy connections; beyond 10 min a hung peer is waited for too long.
pub(crate) const PEER_TIMEOUT: Setting<Duration> = Setting {
    method: "with_peer_timeout",
    var: "SOCKETIO_CLUSTER_PEER_TIMEOUT_MS",
    min: ms(100),
    max: ms(600_000),
};

/// Time an incoming mesh connection has to prove the secret: below 100 ms a loaded node
/// cuts its own peers' handshakes; beyond a minute a stranger holds a slot too long.
pub(crate) const HANDSHAKE_TIMEOUT: Setting<Duration> = Setting {
    method: "with_handshake_timeout",
    var: "SOCKETIO_CLUSTER_HANDSHAKE_TIMEOUT_MS",
    min: ms(100),
    max: ms(60_000),
};

/// Longest wait at start to join through the seeds: 0 starts at once (a node then joins in
/// the background); beyond 10 min a start-up hangs too long.
pub(crate) const JOIN_TIMEOUT: Setting<Duration> = Setting {
    method: "with_join_timeout",
    var: "SOCKETIO_CLUSTER_JOIN_TIMEOUT_MS",
    min: ms(0),
    max: ms(600_000),
};

/// Largest frame, in bytes: below 1 KiB ordinary requests do not fit; the upper bound
/// bounds what one peer can make a node hold for one frame.
pub(crate) const MAX_FRAME_SIZE: Setting<usize> = Setting {
    method: "with_max_frame_size",
    var: "SOCKETIO_CLUSTER_MAX_FRAME_SIZE",
    min: 1024,
    max: 64 * 1024 * 1024,
};

/// Remote acks buffered per `emit_with_ack`.
pub(crate) const ACK_RESPONSE_BUFFER: Setting<usize> = Setting {
    method: "with_ack_response_buffer",
    var: "SOCKETIO_CLUSTER_ACK_RESPONSE_BUFFER",
    min: 1,
    max: 1_000_000,
};

/// Messages queued per channel (Redis); for gossip, checked but no longer used (its peer
/// queues are bounded in bytes: [`PEER_QUEUE_BYTES`]).
pub(crate) const STREAM_BUFFER: Setting<usize> = Setting {
    method: "with_stream_buffer",
    var: "SOCKETIO_CLUSTER_STREAM_BUFFER",
    min: 1,
    max: 1_000_000,
};

const MIB: u64 = 1024 * 1024;

/// `n` bytes as a `usize`, at most what a tokio semaphore holds (the byte budgets are
/// semaphores of bytes; on 64-bit targets far above any of these bounds).
const fn bytes(n: u64) -> usize {
    let max = tokio::sync::Semaphore::MAX_PERMITS as u64;
    (if n < max { n } else { max }) as usize
}

/// Bytes of frames waiting for one peer (gossip): below 64 KiB a few ordinary frames fill
/// it; 4 GiB is beyond any burst a peer should be held for. It must also hold the largest
/// frame ([`MAX_FRAME_SIZE`]), checked with the other settings.
pub(crate) const PEER_QUEUE_BYTES: Setting<usize> = Setting {
    method: "with_peer_queue_bytes",
    var: "SOCKETIO_CLUSTER_PEER_QUEUE_BYTES",
    min: bytes(64 * 1024),
    max: bytes(4096 * MIB),
};

/// Bytes of frames waiting for all peers of a node together (gossip), each frame counted
/// once: it must hold one peer's budget, checked with the other settings; 64 GiB is beyond
/// any node's memory for queues.
pub(crate) const NODE_QUEUE_BYTES: Setting<usize> = Setting {
    method: "with_node_queue_bytes",
    var: "SOCKETIO_CLUSTER_NODE_QUEUE_BYTES",
    min: bytes(64 * 1024),
    max: bytes(64 * 1024 * MIB),
};

/// How a value of a setting is shown in an error.
pub(crate) trait Shown: Copy + PartialOrd {
    /// The value with its unit.
    fn show(self) -> String;
}

impl Shown for Duration {
    fn show(self) -> String {
        format!("{} ms", self.as_millis())
    }
}

impl Shown for usize {
    fn show(self) -> String {
        self.to_string()
    }
}

impl<T: Shown> Setting<T> {
    /// The range as shown in errors and docs: `10 ms ..= 60000 ms`.
    pub(crate) fn range(&self) -> String {
        format!("{} ..= {}", self.min.show(), self.max.show())
    }

    /// `value` if it is in range, else an error naming the builder method of `builder`
    /// (`GossipAdapterConfig`, `RedisAdapterConfig`) and the variable.
    pub(crate) fn check(&self, builder: &str, value: T) -> Result<T, ConfigError> {
        self.check_as(
            || format!("{builder}::{} ({})", self.method, self.var),
            value,
        )
    }

    /// As [`check`](Self::check), with the smallest value raised to `min` (set by another
    /// setting, which `why` names, shown with the range).
    pub(crate) fn check_at_least(
        &self,
        builder: &str,
        value: T,
        min: T,
        why: &str,
    ) -> Result<T, ConfigError> {
        if min > self.min && value < min {
            return Err(ConfigError::OutOfRange {
                setting: format!("{builder}::{} ({})", self.method, self.var),
                value: value.show(),
                range: format!("{} ({why}) ..= {}", min.show(), self.max.show()),
            });
        }
        self.check(builder, value)
    }

    /// `value`, read from the environment variable, if it is in range.
    pub(crate) fn check_var(&self, value: T) -> Result<T, ConfigError> {
        self.check_as(|| self.var.to_string(), value)
    }

    fn check_as(&self, name: impl FnOnce() -> String, value: T) -> Result<T, ConfigError> {
        if value < self.min || value > self.max {
            return Err(ConfigError::OutOfRange {
                setting: name(),
                value: value.show(),
                range: self.range(),
            });
        }
        Ok(value)
    }
}

impl<T: Shown> fmt::Display for Setting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.method, self.var, self.range())
    }
}

/// Read the environment variable of a duration `setting` (in ms) through `get`, checked.
pub(crate) fn env_ms(
    setting: &Setting<Duration>,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = get(setting.var) else {
        return Ok(None);
    };
    let ms: u64 = parse(setting.var, &v)?;
    setting.check_var(Duration::from_millis(ms)).map(Some)
}

/// Read the environment variable of a count `setting` through `get`, checked.
pub(crate) fn env_count(
    setting: &Setting<usize>,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<usize>, ConfigError> {
    let Some(v) = get(setting.var) else {
        return Ok(None);
    };
    let n: usize = parse(setting.var, &v)?;
    setting.check_var(n).map(Some)
}

/// The value of the variable `var`, trimmed and parsed; an error naming `var` otherwise.
pub(crate) fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
        var,
        reason: format!("{v:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_outside_the_range_names_the_setting_and_the_range() {
        let e = GOSSIP_INTERVAL
            .check("GossipAdapterConfig", Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GossipAdapterConfig::with_gossip_interval")
                && e.contains("SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS")
                && e.contains("10 ms ..= 60000 ms")
                && e.contains("0 ms"),
            "{e}"
        );
        let e = STREAM_BUFFER.check_var(0).unwrap_err().to_string();
        assert!(e.contains("SOCKETIO_CLUSTER_STREAM_BUFFER") && e.contains("1 ..= 1000000"));
        assert!(MAX_FRAME_SIZE.check_var(1023).is_err());
        assert!(MAX_FRAME_SIZE.check_var(64 * 1024 * 1024 + 1).is_err());
    }

    /// Both ends of every range are accepted, and just beyond refused. The ranges
    /// themselves are checked against the configuration table of `docs/configuration.md`
    /// (`documented::configuration_defaults_and_ranges_are_the_documented_ones`).
    #[test]
    fn both_ends_of_every_range_are_accepted() {
        for s in [REQUEST_TIMEOUT, GOSSIP_INTERVAL, PEER_TIMEOUT] {
            assert_eq!(s.check_var(s.min).unwrap(), s.min);
            assert_eq!(s.check_var(s.max).unwrap(), s.max);
            assert!(s.check_var(s.min - ms(1)).is_err(), "{s}");
            assert!(s.check_var(s.max + ms(1)).is_err(), "{s}");
        }
        for s in [
            MAX_FRAME_SIZE,
            ACK_RESPONSE_BUFFER,
            STREAM_BUFFER,
            PEER_QUEUE_BYTES,
            NODE_QUEUE_BYTES,
        ] {
            assert_eq!(s.check_var(s.min).unwrap(), s.min);
            assert_eq!(s.check_var(s.max).unwrap(), s.max);
            assert!(s.check_var(s.min - 1).is_err(), "{s}");
            assert!(s.check_var(s.max + 1).is_err(), "{s}");
        }
    }

    #[test]
    fn the_byte_budgets_have_their_ranges() {
        assert_eq!(
            (PEER_QUEUE_BYTES.min, PEER_QUEUE_BYTES.max),
            (64 * 1024, 4 << 30)
        );
        assert_eq!(
            (NODE_QUEUE_BYTES.min, NODE_QUEUE_BYTES.max),
            (64 * 1024, 64 << 30)
        );
        let e = PEER_QUEUE_BYTES.check_var(1000).unwrap_err().to_string();
        assert!(
            e.contains("SOCKETIO_CLUSTER_PEER_QUEUE_BYTES") && e.contains("65536 ..= 4294967296"),
            "{e}"
        );
    }

    #[test]
    fn a_minimum_set_by_another_setting_is_named_with_the_range() {
        let check = |v| PEER_QUEUE_BYTES.check_at_least("B", v, 1 << 20, "the largest frame");
        assert_eq!(check(1 << 20).unwrap(), 1 << 20);
        let e = check((1 << 20) - 1).unwrap_err().to_string();
        assert!(
            e.contains("B::with_peer_queue_bytes (SOCKETIO_CLUSTER_PEER_QUEUE_BYTES)")
                && e.contains("1048576 (the largest frame) ..= 4294967296"),
            "{e}"
        );
        // A minimum below the setting's own leaves its own range in force.
        let e = PEER_QUEUE_BYTES
            .check_at_least("B", 10, 1, "nothing")
            .unwrap_err()
            .to_string();
        assert!(e.contains("65536 ..= "), "{e}");
        assert!(
            PEER_QUEUE_BYTES
                .check_at_least("B", (4 << 30) + 1, 1, "x")
                .is_err()
        );
    }

    #[test]
    fn env_values_are_parsed_then_checked() {
        let get = |v: &'static str| move |_: &str| Some(v.to_string());
        assert_eq!(env_ms(&PEER_TIMEOUT, get("700")).unwrap(), Some(ms(700)));
        let e = env_ms(&PEER_TIMEOUT, get("0")).unwrap_err().to_string();
        assert!(
            e.contains("SOCKETIO_CLUSTER_PEER_TIMEOUT_MS") && e.contains("100 ms"),
            "{e}"
        );
        let e = env_count(&STREAM_BUFFER, get("-1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SOCKETIO_CLUSTER_STREAM_BUFFER"), "{e}");
        assert_eq!(env_count(&STREAM_BUFFER, |_| None).unwrap(), None);
    }
}
