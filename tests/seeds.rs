//! Seeds are names resolved again while a node runs: a node whose seed's name does not
//! resolve when it starts joins the cluster once the name resolves.
//!
//! The name lives in a hosts file this test controls: the scenario runs in a child process
//! of this test, in a mount namespace of its own (`unshare -m`) where that file is mounted
//! over `/etc/hosts`. Nothing outside the child sees it. Needs `unshare` and the right to
//! make a mount namespace (root, or unprivileged user namespaces).
#![cfg(feature = "cluster-gossip")]

mod common;
#[path = "common/external.rs"]
mod external;

use std::{process::Command, time::Duration};

use common::*;
use external::skip_or_fail;

/// Set in the child: the hosts file mounted over `/etc/hosts`.
const HOSTS_ENV: &str = "SEEDS_TEST_HOSTS";
/// The seed's name: resolved from the hosts file only (`.invalid` is never in DNS).
const SEED_NAME: &str = "seed-later.invalid";
/// Gossip resolves seed names once a minute: the join is bounded by that and a margin.
const JOIN_LIMIT: Duration = Duration::from_secs(150);

#[test]
fn a_seed_that_resolves_later_is_joined_through() {
    if std::env::var_os(HOSTS_ENV).is_some() {
        return child();
    }
    let dir = std::env::temp_dir().join(format!("seeds-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("hosts file");
    // The child mounts the file over /etc/hosts, then runs this very test again.
    let script = r#"mount --bind "$0" /etc/hosts && exec "$@""#;
    let exe = std::env::current_exe().expect("test executable");
    // As root, a mount namespace alone; otherwise (or without the capability), inside a
    // user namespace of its own.
    let unshare = |flags: &[&str]| {
        let mut cmd = Command::new("unshare");
        cmd.args(flags)
            .args(["--propagation", "private", "sh", "-c", script])
            .arg(&hosts);
        cmd
    };
    let Some(flags) = [&["-m"][..], &["-r", "-m"][..]].into_iter().find(|flags| {
        unshare(flags)
            .arg("true")
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        skip_or_fail("cannot mount a hosts file in a mount namespace of its own (unshare -m)");
        return;
    };
    let status = unshare(flags)
        .arg(exe)
        .args([
            "--exact",
            "a_seed_that_resolves_later_is_joined_through",
            "--nocapture",
        ])
        .env(HOSTS_ENV, &hosts)
        .status()
        .expect("run the child");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.success(),
        "the scenario failed in the child: {status}"
    );
}

/// The scenario, in the child's mount namespace.
fn child() {
    let hosts = std::env::var(HOSTS_ENV).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        init_tracing();
        assert!(
            tokio::net::lookup_host((SEED_NAME, 1)).await.is_err(),
            "{SEED_NAME} does not resolve yet"
        );
        let id = cluster_id();
        let a = start_gossip(config(&id, None)).await;
        let port = a.cluster().gossip_addr().port();
        let b = start_gossip(
            config(&id, None)
                .with_seeds([format!("{SEED_NAME}:{port}")])
                .with_join_timeout(Duration::from_millis(500)),
        )
        .await;
        assert!(
            b.cluster().ready(),
            "b starts alone when its seed does not resolve"
        );
        assert!(b.cluster().members().is_empty());

        // The name now resolves (the file is written in place: the mount holds its inode).
        std::fs::write(
            &hosts,
            format!("127.0.0.1 localhost\n127.0.0.1 {SEED_NAME}\n"),
        )
        .expect("rewrite the hosts file");
        assert!(
            tokio::net::lookup_host((SEED_NAME, 1)).await.is_ok(),
            "{SEED_NAME} resolves now"
        );
        assert!(
            b.cluster().wait_for_members(1, JOIN_LIMIT).await,
            "b joined a through its seed once the name resolved"
        );
        assert!(
            a.cluster()
                .wait_for_members(1, Duration::from_secs(10))
                .await
        );
        assert_eq!(
            b.cluster().members()[0].node_name,
            a.cluster().node_name(),
            "b's member is a"
        );
    });
}
