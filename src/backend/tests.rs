//! Unit tests of `backend`.

use super::*;

#[cfg(feature = "redis")]
#[test]
fn redis_numbers_outside_their_range_name_the_method() {
    use crate::redis::RedisAdapterConfig;
    let good = RedisAdapterConfig::new();
    crate::redis::check_ranges(&good).expect("the defaults are in range");
    let cases = [
        (
            RedisAdapterConfig {
                request_timeout: Duration::ZERO,
                ..good.clone()
            },
            "RedisAdapterConfig::with_request_timeout",
        ),
        (
            RedisAdapterConfig {
                ack_response_buffer: 0,
                ..good.clone()
            },
            "RedisAdapterConfig::with_ack_response_buffer",
        ),
        (
            RedisAdapterConfig {
                stream_buffer: 2_000_000,
                ..good.clone()
            },
            "RedisAdapterConfig::with_stream_buffer",
        ),
    ];
    for (config, name) in cases {
        let e = crate::redis::check_ranges(&config).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("allowed range"), "{e}");
    }
}

/// Every form of Redis URL that can carry a password.
const WITH_PASSWORD: [&str; 9] = [
    "redis://user:hunter2@127.0.0.1:1/0",
    "redis://:hunter2@127.0.0.1:1",
    "rediss://default:hunter2@127.0.0.1:1/?protocol=resp3",
    "redis://u:hunter2@h@127.0.0.1:1",
    "unix:///nonexistent/redis.sock?pass=hunter2",
    "unix:///nonexistent/redis.sock?db=1&user=me&pass=hunter2",
    "redis+unix:///nonexistent/redis.sock?PASSWORD=hunter2&db=2",
    "redis+unix:///nonexistent/redis.sock?password=hunter2",
    "rediss://127.0.0.1:1?pass=hunter2",
];

#[test]
fn credentials_never_appear_in_messages() {
    // A well-formed URL is shown but for its credentials (parsed by the Redis client's
    // own parser, with the Redis backend).
    #[cfg(feature = "redis")]
    {
        assert_eq!(
            redact("redis://user:pw@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact("unix:///run/r.sock?db=1&pass=pw"),
            "unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
    assert_eq!(redact("gosip"), "gosip", "a plain word is shown");
    for url in WITH_PASSWORD {
        let shown = redact(url);
        assert!(!shown.contains("hunter2"), "{url} -> {shown}");
        assert!(shown.contains("***"), "{url} -> {shown}");
    }
    assert!(is_redis_url("rediss://h") && !is_redis_url("gossip") && !is_redis_url("http://x"));
}

/// Passwords and user names holding the characters that delimit a URL (`@`, `?`, `#`,
/// `/`), raw as an operator may paste them, and IPv6 hosts: no part of a credential is
/// shown, and what is shown of a well-formed URL still names its host.
#[test]
fn credentials_with_delimiters_never_appear_in_messages() {
    let hidden = |url: &str, secrets: &[&str]| {
        let shown = redact(url);
        for secret in secrets {
            assert!(
                !shown.contains(secret),
                "{url} -> {shown}: shows {secret:?}"
            );
        }
        assert!(shown.contains("***"), "{url} -> {shown}");
        shown
    };
    for (url, secrets) in [
        ("redis://:hun?ter2@h:6379", &["hun", "ter2"][..]),
        ("redis://:hun#ter2@h:6379", &["hun", "ter2"]),
        ("redis://:hun/ter2@h:6379/0", &["hun", "ter2"]),
        ("redis://:hun@ter2@h:6379", &["hun", "ter2"]),
        ("redis://usr@nm:hunter2@h", &["usr", "nm", "hunter2"]),
        ("redis://usr?nm:hunter2@h", &["usr", "nm", "hunter2"]),
        ("redis://usr#nm:hunter2@h", &["usr", "nm", "hunter2"]),
        ("redis://usr/nm:hunter2@h", &["usr", "nm", "hunter2"]),
        ("redis://usr:12#ter2@h", &["usr", "12", "ter2"]),
        ("redis://usr:6379/ter2@h", &["usr", "6379", "ter2"]),
        ("redis://:hun?ter2", &["hun", "ter2"]),
        ("redis://[::1]:6379/0?password=hun@ter2", &["hun", "ter2"]),
        ("unix:///run/r.sock?pass=hun#ter2", &["hun", "ter2"]),
        (
            "rediss://usr:hun%3Fter2@[::1]:6380",
            &["usr", "hun", "ter2"],
        ),
    ] {
        hidden(url, secrets);
    }
    // A well-formed URL still names its host (with the Redis backend, which parses it).
    #[cfg(feature = "redis")]
    {
        assert_eq!(
            hidden("redis://usr:hunter2@[::1]:6379/0", &["usr", "hunter2"]),
            "redis://***@[::1]:6379/0"
        );
        assert_eq!(
            hidden(
                "rediss://usr:hun%40ter2@[fe80::1]:6380/?protocol=resp3",
                &["usr", "hun", "ter2"]
            ),
            "rediss://***@[fe80::1]:6380/?protocol=resp3"
        );
        assert_eq!(redact("redis://[::1]:6379/2"), "redis://[::1]:6379/2");
    }
}

/// The start-up error of every URL form names the URL, never its password.
#[cfg(feature = "redis")]
#[tokio::test]
async fn start_up_errors_never_print_a_password() {
    use crate::redis::RedisAdapterConfig;
    for url in WITH_PASSWORD {
        let err = ClusterAdapterCtr::redis(url, RedisAdapterConfig::new())
            .await
            .expect_err("nothing listens there");
        let msg = format!("{err} / {err:?}");
        assert!(!msg.contains("hunter2"), "{url}: {msg}");
    }
}
