//! The node with real sockets on loopback, against a peer that holds the secret but lies
//! about who it is.

use std::{sync::Arc, time::Duration};

use super::*;
use crate::gossip::mesh::auth::Keyring;
use crate::{
    gossip::config::GossipAdapterConfig,
    gossip::keys::{Secret, derive_keyring, tests::SECRET},
    gossip::mesh::Mesh,
    proc_status::status_bytes,
};
use bytes::Bytes;

pub(crate) fn config(cluster: &str, name: &str, seed: Option<SocketAddr>) -> GossipAdapterConfig {
    let mut c = GossipAdapterConfig::new()
        .with_cluster_id(cluster)
        .with_node_name(name)
        .with_gossip_addr("127.0.0.1:0".parse().unwrap())
        .with_mesh_addr("127.0.0.1:0".parse().unwrap())
        .with_gossip_interval(Duration::from_millis(50))
        .with_secret(SECRET);
    if let Some(seed) = seed {
        c = c.with_seeds([seed.to_string()]);
    }
    c
}

/// A node of `cluster` with a name of its own, seeded with `seed`.
pub(crate) async fn start(cluster: &str, seed: Option<SocketAddr>) -> Arc<Node> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Node::start(&config(cluster, &format!("node-{n}"), seed))
        .await
        .unwrap()
}

/// Two nodes `a` and `b` of `cluster`, once each is a member of the other.
pub(crate) async fn pair(cluster: &str) -> (Arc<Node>, Arc<Node>) {
    let a = Node::start(&config(cluster, "a", None)).await.unwrap();
    let b = Node::start(&config(cluster, "b", Some(a.addrs().0)))
        .await
        .unwrap();
    let formed = until(Duration::from_secs(20), || {
        a.members().len() == 1 && b.members().len() == 1
    })
    .await;
    assert!(formed, "cluster {cluster} formed");
    (a, b)
}

/// Records the messages of type `M` a node receives for a service, in place of the service.
pub(crate) struct Recorder<M>(std::sync::Mutex<Vec<M>>);

impl<M> Default for Recorder<M> {
    fn default() -> Self {
        Self(std::sync::Mutex::default())
    }
}

impl<M: serde::de::DeserializeOwned + Send + 'static> ServiceHandler for Recorder<M> {
    fn on_message(&self, _: &PeerId, body: Bytes) {
        if let Ok(msg) = wire::decode_body::<M>(&body) {
            lock(&self.0).push(msg);
        }
    }
}

impl<M: serde::de::DeserializeOwned + Send + 'static> Recorder<M> {
    /// A recorder of the messages `node` receives for `service`, in place of the service.
    pub(crate) fn on(node: &Node, service: &str) -> Arc<Self> {
        let recorder = Arc::new(Self::default());
        node.register_service(
            service,
            Arc::downgrade(&recorder) as Weak<dyn ServiceHandler>,
        );
        recorder
    }
}

impl<M> Recorder<M> {
    /// How many of the messages received so far `pred` holds for.
    pub(crate) fn count(&self, pred: impl Fn(&M) -> bool) -> usize {
        lock(&self.0).iter().filter(|m| pred(m)).count()
    }
}

/// `from` sends `n` messages no service can read to the instance of `service` on `to`,
/// each confirmed: once this returns, `to` handled them all.
pub(crate) async fn send_garbage(from: &Arc<Node>, to: &Node, service: &str, n: usize) {
    let to = [to.me().clone()];
    for _ in 0..n {
        from.send_service(&to, service, Bytes::from_static(&[0xff, 0xff]), true)
            .await
            .unwrap();
    }
}

/// The lines of `logs` (see `capture_logs`) holding `needle`.
pub(crate) fn lines_with(logs: &std::sync::Mutex<Vec<u8>>, needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&lock(logs))
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

pub(crate) async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A mesh that holds the secret of `cluster` and says it is `who`, sending frames of up to
/// `max_frame_size` bytes.
fn peer_mesh(cluster: &str, who: &PeerId, max_frame_size: usize) -> Mesh {
    let keys = derive_keyring(cluster, &[Secret::from(SECRET)]).unwrap();
    let keyring = Keyring::new(cluster.to_string(), Some(vec![keys[0].mesh]));
    let mut mesh = Mesh::bind(
        "127.0.0.1:0".parse().unwrap(),
        None,
        keyring,
        None,
        max_frame_size,
        Duration::from_secs(2),
        mesh::Budgets::new(
            crate::gossip::config::DEFAULT_PEER_QUEUE_BYTES,
            crate::gossip::config::DEFAULT_NODE_QUEUE_BYTES,
        ),
    )
    .unwrap();
    let own = mesh.local_addr().unwrap();
    mesh.set_identity(
        who,
        PeerAddrs {
            mesh: own,
            gossip: own,
        },
    );
    mesh
}

/// Records what the mesh tells an impostor.
struct Closes(tokio::sync::mpsc::UnboundedSender<mesh::Closed>);

impl Inbound for Closes {
    fn on_frame(&self, _: &PeerId, _: Frame) -> Result<(), String> {
        Ok(())
    }
    fn on_peer_connected(&self, _: &PeerId, _: ConnId, _: PeerAddrs) -> Result<(), String> {
        Ok(())
    }
    fn on_connection_closed(&self, _: &PeerId, _: ConnId, reason: &mesh::Closed) {
        let _ = self.0.send(reason.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_a_connected_member_cannot_make_it_leave() {
    let cluster = format!("impostor-{}", std::process::id());
    let a = Node::start(&config(&cluster, "a", None)).await.unwrap();
    let b = Node::start(&config(&cluster, "b", Some(a.addrs().0)))
        .await
        .unwrap();
    let b_id = b.me().clone();
    assert!(
        until(Duration::from_secs(10), || {
            lock(&a.state).machine.view().has_incoming(&b_id) && b.members().len() == 1
        })
        .await,
        "a and b are members of each other, b connected to a"
    );

    // The impostor holds the secret and claims b's name and generation.
    let impostor = peer_mesh(&cluster, &b_id, 1 << 20);
    let (tx, mut closes) = tokio::sync::mpsc::unbounded_channel();
    // a refuses it once it proved the secret: at once (the handshake fails), or right
    // after (the connection closes as refused); a Leave it sends is never read.
    match impostor
        .connect(a.addrs().1, None, Arc::new(Closes(tx)))
        .await
    {
        Err(e) => assert!(
            e.to_string()
                .contains(&format!("refused (code {})", mesh::CLOSE_REFUSED)),
            "{e}"
        ),
        Ok((_, link)) => {
            let _ = link.send(wire::encode(&Frame::Leave).unwrap());
            let reason = tokio::time::timeout(Duration::from_secs(5), closes.recv())
                .await
                .expect("a closes the impostor's connection")
                .unwrap();
            assert_eq!(reason, mesh::Closed::Refused);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.members().iter().map(|m| m.peer_id()).collect::<Vec<_>>(),
        [b_id],
        "b is still a member of a"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// An `AllRooms` request whose target rooms are `count` names of `len` bytes each (see
/// [`list_frame`]).
fn rooms_frame(count: usize, len: usize) -> bytes::Bytes {
    let request = |rooms| {
        Frame::Request(wire::Request {
            ns: "/".into(),
            id: wire::Id(*b"0000000000000001"),
            origin: wire::Id(*b"0000000000000002"),
            kind: wire::RequestKind::AllRooms,
            opts: wire::Opts {
                rooms,
                ..wire::Opts::default()
            },
            ack_timeout_ms: None,
        })
    };
    list_frame(request, count, len)
}

/// The frame `with` makes of a list of `count` names of `len` bytes each, put together from
/// encoded parts (a list is its length, then its elements), so that a list far beyond the
/// wire's bounds is never built in memory here.
fn list_frame(with: impl Fn(Vec<String>) -> Frame, count: usize, len: usize) -> bytes::Bytes {
    let encode = |names| wire::encode(&with(names)).unwrap();
    // The list's length is the first byte of the bodies (after the length prefix) where a
    // frame with one name differs from one with none.
    let (none, one) = (encode(Vec::new()), encode(vec![String::new()]));
    let (none, one) = (&none[wire::LEN_PREFIX..], &one[wire::LEN_PREFIX..]);
    let at = none.iter().zip(one).position(|(a, b)| a != b).unwrap();
    // A length is encoded as the integer alone would be.
    let length = |n: usize| wire::encode_body(&n).unwrap();
    let mut body = none[..at].to_vec();
    body.extend_from_slice(&length(count));
    body.reserve(count * (len + 2));
    for _ in 0..count {
        body.extend_from_slice(&length(len));
        body.resize(body.len() + len, b'n');
    }
    body.extend_from_slice(&none[at + 1..]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame.into()
}

/// Figures, not a check: the peak memory of a node (this process) while a peer that holds
/// the secret sends it the largest frames it can (16 MiB, the default bound). Before lists
/// were bounded, one frame of 16 Mi empty room names took the receiving node to a peak of
/// 431 MB. Run alone (peaks are per process):
/// `cargo test --all-features --lib peak_memory_under_the_largest_frames -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures"]
async fn peak_memory_under_the_largest_frames() {
    let cluster = format!("frames-{}", std::process::id());
    let a = Node::start(&config(&cluster, "a", None)).await.unwrap();
    let max = wire::DEFAULT_MAX_FRAME_SIZE;
    let peer = peer_mesh(&cluster, &machine::view::tests::peer("x", 1), max);
    let cases = [
        // The frame of the report: as many empty names as fit.
        ("16 MiB of empty room names", rooms_frame(max - 64, 0)),
        // The most names a list may hold, each as long as fits.
        (
            "65,536 room names of 250 bytes",
            rooms_frame(wire::MAX_ROOMS, 250),
        ),
    ];
    for (what, frame) in cases {
        assert!(
            frame.len() - wire::LEN_PREFIX <= max,
            "{what} fits the bound"
        );
        let (tx, mut closes) = tokio::sync::mpsc::unbounded_channel();
        let (_, link) = peer
            .connect(a.addrs().1, None, Arc::new(Closes(tx)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Reset the peak to what is resident now (Linux: 5 to clear_refs).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = status_bytes("VmRSS");
        link.send(frame).unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(3), closes.recv()).await;
        let peak = status_bytes("VmHWM");
        println!(
            "{what}: peak {} KiB above the {} KiB resident before ({})",
            peak.saturating_sub(before) / 1024,
            before / 1024,
            match closed {
                Ok(Some(reason)) => format!("the node closed the link: {reason:?}"),
                _ => "the link stayed open".into(),
            }
        );
        link.close(mesh::CLOSE_UNUSED, b"done");
    }
    a.shutdown().await;
}

/// A node started with the deprecated stream buffer says, at start, that it bounds nothing
/// and what bounds the queues now.
#[tokio::test]
#[allow(deprecated)]
async fn a_node_given_the_stream_buffer_logs_that_it_bounds_nothing() {
    let (logs, _guard) = crate::gossip::mesh::tests::capture_logs();
    let node = Node::start(
        &config(&format!("deprecated-{}", std::process::id()), "a", None).with_stream_buffer(64),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("with_stream_buffer"))
        .unwrap_or_else(|| panic!("no line about the stream buffer in:\n{text}"));
    assert!(
        line.contains("WARN") && line.contains("no longer bounds") && line.contains("(64,"),
        "{line}"
    );
    node.shutdown().await;
}

/// The child process of [`one_meta_frame_costs_a_node_less_than_twice_its_size`]: a node
/// that prints its mesh address, then its peak memory each time it changes.
const META_CHILD: &str = "META_FRAME_CHILD_CLUSTER";

/// A peer holding the secret sends a node one [`Frame::Meta`] of the largest size (16 MiB,
/// the default bound) made of empty namespace names. The node, in a child process (this
/// test again, with [`META_CHILD`] set) so that its peak memory is its own, must stay under
/// twice the frame's size above what it held before. Unbounded, such a list decoded to
/// hundreds of MiB, kept and copied on every gossip refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_meta_frame_costs_a_node_less_than_twice_its_size() {
    if let Ok(cluster) = std::env::var(META_CHILD) {
        let a = Node::start(&config(&cluster, "a", None)).await.unwrap();
        // Start-up (the key derivation) peaked higher than what the node holds: the peak
        // counts from what is resident now (Linux: 5 to clear_refs).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        println!("MESH {}", a.addrs().1);
        let mut last = 0;
        for _ in 0..1200 {
            let now = status_bytes("VmHWM");
            if now != last {
                println!("HWM {now}");
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return;
    }
    let cluster = format!("meta-{}", std::process::id());
    let (mut child, rx) = crate::proc_status::child_test(
        "gossip::node::tests::one_meta_frame_costs_a_node_less_than_twice_its_size",
        &[(META_CHILD, &cluster)],
        false,
    );
    let next_line = |prefix: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child node runs");
        // The first line follows the test harness's own words.
        if let Some(at) = line.find(prefix) {
            return line[at + prefix.len()..].trim().to_string();
        }
    };
    let mesh: SocketAddr = next_line("MESH").parse().unwrap();
    let max = wire::DEFAULT_MAX_FRAME_SIZE;
    let meta = |namespaces| {
        Frame::Meta(wire::NodeMeta {
            version: 2,
            server_id: None,
            namespaces,
            parser: None,
        })
    };
    let frame = list_frame(meta, max - 64, 0);
    assert!(
        frame.len() - wire::LEN_PREFIX <= max,
        "the frame fits the bound"
    );
    let peer = peer_mesh(&cluster, &machine::view::tests::peer("x", 1), max);
    let (tx_closed, mut closes) = tokio::sync::mpsc::unbounded_channel();
    let (_, link) = peer
        .connect(mesh, None, Arc::new(Closes(tx_closed)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hwm = |line: String| {
        line.strip_prefix("HWM")
            .map(|v| v.trim().parse::<u64>().unwrap())
    };
    let before = rx.try_iter().filter_map(hwm).last().unwrap_or(0);
    link.send(frame.clone()).unwrap();
    // The peak once it has not moved for 3 s, at most 60 s after sending.
    let mut peak = before;
    let mut still = 0;
    for _ in 0..600 {
        match rx.try_iter().filter_map(hwm).last() {
            Some(b) => {
                peak = peak.max(b);
                still = 0;
            }
            None => still += 1,
        }
        if still >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = closes.try_recv().ok();
    let _ = child.kill();
    let _ = child.wait();
    let grew = peak.saturating_sub(before);
    println!(
        "a Meta frame of {} bytes (empty namespace names): the node's peak rose {} KiB above \
         the {} KiB resident before; link: {closed:?}",
        frame.len(),
        grew / 1024,
        before / 1024,
    );
    assert!(before > 0, "the child reported its memory");
    assert!(
        grew < 2 * frame.len() as u64,
        "one frame of {} bytes took the node {} KiB",
        frame.len(),
        grew / 1024
    );
}
