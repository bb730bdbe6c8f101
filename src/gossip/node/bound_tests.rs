//! The node's bounds with real sockets: server ids and link slots a peer can make it keep,
//! and the peak memory of the largest frames.

use super::*;
use crate::gossip::node::tests::{pair, start as node};
use bytes::Bytes;

fn ids_of(node: &Node, peer: &PeerId) -> usize {
    lock(&node.state).machine.server_ids_of(peer)
}

/// A member sending requests from 1,000 server ids: the node keeps 16 of them, and
/// none once the member left. Two real nodes on 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_ids_a_peer_sends_are_bounded_and_forgotten() {
    let (a, b) = pair(&format!("server-ids-{}", std::process::id())).await;
    let to_a = [a.me().clone()];
    for i in 0..1_000u32 {
        let mut origin = [b'x'; 16];
        origin[..4].copy_from_slice(&i.to_be_bytes());
        let frame = Frame::Request(wire::Request {
            ns: "/not-hosted".into(),
            id: Id([0; 16]),
            origin: Id(origin),
            kind: wire::RequestKind::DisconnectSockets,
            opts: wire::Opts::default(),
            ack_timeout_ms: None,
        });
        b.send(To::Peers(&to_a), &frame, false).await.unwrap();
    }
    // Frames are handled in order: once a confirmed message is handled, so are they.
    b.send_service(&to_a, "none", bytes::Bytes::new(), true)
        .await
        .unwrap();
    let b_id = b.me().clone();
    assert_eq!(ids_of(&a, &b_id), MAX_SERVER_IDS_PER_PEER);
    b.shutdown().await;
    let mut forgotten = false;
    for _ in 0..500 {
        if ids_of(&a, &b_id) == 0 {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        forgotten,
        "the server ids of a peer that left are forgotten"
    );
    a.shutdown().await;
}

/// The links to peers gossip showed (here: nodes that never answer, on sockets of this
/// test that read nothing) are dropped, their connection attempts abandoned, once gossip
/// no longer shows them.
#[tokio::test]
async fn links_to_peers_only_seen_in_gossip_are_forgotten() {
    let a = node(&format!("slots-{}", std::process::id()), None).await;
    let mut silent = Vec::new();
    let mut reachable = std::collections::HashMap::new();
    for i in 0..10 {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ghost = PeerId {
            name: format!("ghost-{i}").into(),
            generation: 1,
        };
        reachable.insert(ghost, socket.local_addr().unwrap());
        silent.push(socket);
    }
    let listed = reachable.keys().cloned().collect();
    let shown = crate::gossip::membership::GossipNodes { reachable, listed };
    a.feed(Input::Gossip(shown)).unwrap();
    let slots = |a: &Node| {
        let state = lock(&a.state);
        (state.machine.link_count(), state.attempts.len())
    };
    assert_eq!(slots(&a), (10, 10), "a connection is being made to each");
    a.refresh_from_gossip().await;
    assert_eq!(slots(&a), (0, 0), "links to unknown peers dropped");
    a.shutdown().await;
}

/// The peak memory (VmHWM) of one node that receives the largest frame a peer can
/// send: 16 MiB (the default maximum) of empty room names. The node runs in a child
/// process (this test again, with `PEAK_CHILD_SEED` set) that prints its VmHWM as it
/// changes; this process is the peer. A measurement, not an assertion: run it with
/// `cargo test --all-features --lib -- --ignored --nocapture peak_memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn peak_memory_under_the_largest_frame() {
    let hwm = || {
        let kib = crate::proc_status::status_bytes("VmHWM") / 1024;
        format!("VmHWM: {kib} kB")
    };
    if let Ok(seed) = std::env::var("PEAK_CHILD_SEED") {
        let cluster = std::env::var("PEAK_CLUSTER").unwrap();
        // A name of its own: the parent's first node is `node-0` too, and a node of the
        // same name would replace it instead of joining.
        let config =
            crate::gossip::node::tests::config(&cluster, "child", Some(seed.parse().unwrap()));
        let _node = Node::start(&config).await.unwrap();
        let mut last = String::new();
        for _ in 0..600 {
            let now = hwm();
            if now != last {
                println!("{now}");
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return;
    }
    let cluster = format!("peak-{}", std::process::id());
    let peer = node(&cluster, None).await;
    let seed = peer.addrs().0.to_string();
    let (mut child, lines) = crate::proc_status::child_test(
        "gossip::node::bound_tests::peak_memory_under_the_largest_frame",
        &[("PEAK_CHILD_SEED", &seed), ("PEAK_CLUSTER", &cluster)],
        true,
    );
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    std::thread::spawn(move || {
        for line in lines {
            // The first line follows the test harness's own "test ... " on the same line.
            if let Some(kb) = line
                .split_once("VmHWM:")
                .and_then(|(_, v)| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                let _ = tx.send(kb);
            }
        }
    });
    let mut member = None;
    for _ in 0..500 {
        member = peer.members().first().map(|m| m.peer_id());
        if member.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let member = member.expect("the child node joined");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rx.try_iter().last().unwrap_or_default();

    // AddSockets with n empty room names, filling the largest frame.
    let empty = wire::encode(&Frame::Request(wire::Request {
        ns: "/".into(),
        id: Id([1; 16]),
        origin: Id([2; 16]),
        kind: wire::RequestKind::AddSockets(vec![]),
        opts: wire::Opts::default(),
        ack_timeout_ms: None,
    }))
    .unwrap();
    let at = wire::LEN_PREFIX + 3 + 1 + 2 + 32;
    assert_eq!(empty[at..at + 2], [4, 0]);
    let n = wire::DEFAULT_MAX_FRAME_SIZE - (empty.len() - wire::LEN_PREFIX) - 4;
    let mut body = empty[wire::LEN_PREFIX..at + 1].to_vec();
    let mut v = n;
    while v >= 0x80 {
        body.push((v as u8) | 0x80);
        v >>= 7;
    }
    body.push(v as u8);
    body.resize(body.len() + n, 0);
    body.extend_from_slice(&empty[at + 2..]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    assert!(body.len() <= wire::DEFAULT_MAX_FRAME_SIZE);
    let mut link = None;
    for _ in 0..500 {
        link = peer.link_to(&member);
        if link.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let link = link.expect("the link to the child node");
    link.send(Bytes::from(frame)).unwrap();
    // Wait until the child's peak has not moved for 3 s (bounded: 60 s).
    let mut peak = before;
    let mut still = 0;
    for _ in 0..600 {
        match rx.try_iter().last() {
            Some(kb) => {
                peak = kb;
                still = 0;
            }
            None => still += 1,
        }
        if still >= 30 && peak > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "frame of {} bytes ({n} empty room names): node VmHWM {before} kB before, {peak} kB after",
        body.len()
    );
}
