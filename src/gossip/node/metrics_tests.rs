//! What a node records, read back from a debugging recorder: two real nodes on loopback.

use std::{sync::OnceLock, time::Duration};

use super::tests::{config, until};
use super::*;
use crate::metrics::{self as m, tests::TestRecorder};
use bytes::Bytes;

/// The recorder of this test binary, installed once: nodes started from then on record
/// into it (each test's nodes have names of their own).
fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = TestRecorder::new();
        metrics::set_global_recorder(recorder.clone()).expect("no other recorder in this binary");
        recorder
    })
}

fn fetch(id: Id) -> Frame {
    Frame::Request(wire::Request {
        ns: "/not-hosted".into(),
        id,
        origin: Id([b'o'; 16]),
        kind: wire::RequestKind::FetchSockets,
        opts: wire::Opts::default(),
        ack_timeout_ms: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_records_members_links_frames_requests_drops_gossip_and_rtt() {
    let recorder = recorder();
    let v = |name: &str, labels: &[(&str, &str)]| recorder.value(name, labels);
    let cluster = format!("metrics-{}", std::process::id());
    let a = Node::start(&config(&cluster, "metrics-a", None))
        .await
        .unwrap();
    let b = Node::start(&config(&cluster, "metrics-b", Some(a.addrs().0)))
        .await
        .unwrap();
    let on_a = ("node", "metrics-a");
    assert!(
        until(Duration::from_secs(10), || {
            v(m::MEMBERS, &[on_a]) == 1.0 && v(m::MEMBERS, &[("node", "metrics-b")]) == 1.0
        })
        .await,
        "each node counts the other as a member"
    );
    assert_eq!(v(m::MEMBERSHIP_CHANGES, &[on_a, ("change", "joined")]), 1.0);
    assert!(
        until(Duration::from_secs(10), || {
            v(m::LINKS_UP, &[on_a, ("direction", "out")]) == 1.0
                && v(m::LINKS_UP, &[on_a, ("direction", "in")]) == 1.0
        })
        .await,
        "a's connection to b, and b's to a, counted up"
    );
    assert!(v(m::GOSSIP_DATAGRAMS, &[on_a, ("outcome", "sealed")]) > 0.0);
    assert!(v(m::GOSSIP_DATAGRAMS, &[on_a, ("outcome", "opened")]) > 0.0);

    // A request b answers (it hosts no such namespace): answered, one duration.
    let b_id = b.me().clone();
    let sent = v(m::FRAMES_SENT, &[on_a, ("kind", "request")]);
    let pending = a
        .request(
            To::Peers(std::slice::from_ref(&b_id)),
            Duration::from_secs(5),
            fetch,
        )
        .await
        .unwrap();
    assert!(pending.collect().await.is_empty());
    let fetch_on_a = [on_a, ("kind", "fetch_sockets")];
    assert_eq!(v(m::REQUESTS, &[on_a, ("outcome", "answered")]), 1.0);
    assert_eq!(v(m::REQUEST_DURATION, &fetch_on_a), 1.0);
    assert_eq!(v(m::REQUESTS_ENDED_EARLY, &fetch_on_a), 0.0);
    assert_eq!(v(m::FRAMES_SENT, &[on_a, ("kind", "request")]), sent + 1.0);
    assert!(v(m::BYTES_SENT, &[on_a, ("kind", "request")]) > 0.0);
    // Frames read are recorded once their chunk is handled, which may be just after the
    // response was delivered.
    assert!(
        until(Duration::from_secs(5), || {
            v(
                m::FRAMES_RECEIVED,
                &[("node", "metrics-b"), ("kind", "request")],
            ) >= 1.0
                && v(m::FRAMES_RECEIVED, &[on_a, ("kind", "response")]) >= 1.0
        })
        .await,
        "b counted the request read, a the response"
    );
    assert!(v(m::BYTES_RECEIVED, &[on_a, ("kind", "response")]) > 0.0);

    // A request to a peer that cannot be reached ends early, its frame dropped.
    let ghost = PeerId {
        name: "metrics-ghost".into(),
        generation: 1,
    };
    let pending = a
        .request(To::Peers(&[ghost]), Duration::from_secs(5), fetch)
        .await
        .unwrap();
    assert!(pending.collect().await.is_empty());
    assert_eq!(v(m::REQUESTS, &[on_a, ("outcome", "peer_lost")]), 1.0);
    assert_eq!(v(m::REQUESTS_ENDED_EARLY, &fetch_on_a), 1.0);
    let ghost_dropped = [on_a, ("peer", "metrics-ghost"), ("reason", "peer_gone")];
    assert_eq!(v(m::FRAMES_DROPPED, &ghost_dropped), 1.0);

    // A frame larger than peers accept: dropped for each peer it was for.
    let huge = Frame::Service(wire::ServiceFrame {
        service: "none".into(),
        confirm: None,
        body: Bytes::from(vec![0; wire::DEFAULT_MAX_FRAME_SIZE + 1]),
    });
    assert!(a.send(To::All, &huge, false).await.is_err());
    let too_large = [on_a, ("peer", "metrics-b"), ("reason", "too_large")];
    assert_eq!(v(m::FRAMES_DROPPED, &too_large), 1.0);

    // Round-trip times are sampled every second; the operator's view shows them too.
    assert!(
        until(Duration::from_secs(5), || {
            v(m::PEER_RTT, &[on_a, ("peer", "metrics-b")]) > 0.0
        })
        .await,
        "a's round-trip time to b recorded"
    );
    let stats = a.peer_stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].member.node_name, "metrics-b");
    assert!(stats[0].rtt.is_some_and(|rtt| rtt > Duration::ZERO));
    assert_eq!(stats[0].frames_dropped, 1, "the frame too large for b");

    // b leaves: a counts it gone.
    b.shutdown().await;
    assert!(
        until(Duration::from_secs(10), || v(m::MEMBERS, &[on_a]) == 0.0).await,
        "the members gauge went down"
    );
    assert_eq!(v(m::MEMBERSHIP_CHANGES, &[on_a, ("change", "left")]), 1.0);
    assert!(
        until(Duration::from_secs(5), || {
            v(m::LINKS_UP, &[on_a, ("direction", "out")]) == 0.0
                && v(m::LINKS_UP, &[on_a, ("direction", "in")]) == 0.0
        })
        .await,
        "no link up once b left"
    );
    a.shutdown().await;
}

/// Datagrams the kernel drops for want of room in a node's mesh socket are counted: a
/// burst sent at the socket while the node cannot read it (this test's thread is its
/// runtime's only one, and sends without yielding) overflows the socket's buffer, and the
/// next sample counts what the kernel dropped.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn a_node_counts_the_datagrams_the_kernel_dropped_for_its_mesh_socket() {
    let recorder = recorder();
    let cluster = format!("metrics-socket-{}", std::process::id());
    let a = Node::start(&config(&cluster, "metrics-socket", None))
        .await
        .unwrap();
    let on_a = [("node", "metrics-socket")];
    assert_eq!(recorder.value(m::SOCKET_DROPS, &on_a), 0.0);
    // 12 MB: more than the kernel holds for the 4 MiB asked for (twice that, with its
    // bookkeeping), whatever net.core.rmem_max allows.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagram = [0u8; 1200];
    for _ in 0..10_000 {
        let _ = junk.send_to(&datagram, a.addrs().1);
    }
    assert!(
        until(Duration::from_secs(10), || recorder
            .value(m::SOCKET_DROPS, &on_a)
            > 0.0)
        .await,
        "no dropped datagram counted"
    );
    a.shutdown().await;
}
