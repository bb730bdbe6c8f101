#![warn(missing_docs)]
// The crate's pages describe the gossip backend and link to its items: built with Redis
// alone, those links have nothing to point at and show as plain text.
#![cfg_attr(
    not(feature = "cluster-gossip"),
    allow(rustdoc::broken_intra_doc_links)
)]
//! # socketioxide-cluster
//!
//! Run many [`socketioxide`] (Socket.IO) server processes as one, without a broker.
//!
//! Nodes find each other by gossip ([`chitchat`]) and send broadcasts and requests straight to
//! each other over an authenticated QUIC mesh ([`quinn`]). The API has the shape of
//! `socketioxide-redis`: whatever a handler does — `io.emit`, rooms, `except`, `volatile`,
//! `emit_with_ack`, `fetch_sockets` and every operation on a remote socket, `join`/`leave`
//! on other nodes, `disconnect`, binary payloads, the msgpack parser — works across nodes.
//!
//! ```no_run
//! use socketioxide::{SocketIo, extract::SocketRef};
//! use socketioxide_cluster::{GossipAdapter, GossipAdapterConfig, GossipAdapterCtr};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GossipAdapterConfig::new()
//!     .with_cluster_id("chat")
//!     .with_gossip_addr("0.0.0.0:7946".parse()?)
//!     .with_mesh_addr("0.0.0.0:7947".parse()?)
//!     .with_seeds(["chat-0.chat.svc:7946"])
//!     .with_secret(std::env::var("CLUSTER_SECRET")?);
//! let ctr = GossipAdapterCtr::new(config).await?;
//! let cluster = ctr.cluster();
//! let (layer, io) = SocketIo::builder()
//!     .with_adapter::<GossipAdapter<_>>(ctr)
//!     .build_layer();
//! io.ns("/", async |s: SocketRef<GossipAdapter<_>>| {
//!     s.broadcast().emit("joined", s.id.as_str()).await.ok();
//! })
//! .await?;
//! // ... serve `layer` with axum or hyper; on SIGTERM:
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Choosing the backend at run time
//!
//! [`ClusterAdapter`] runs on gossip or on Redis (feature `redis`, module `redis`),
//! chosen by [`ClusterAdapterCtr`]; [`ClusterAdapterCtr::from_env`] reads
//! `SOCKETIO_CLUSTER_BACKEND` (`gossip`, or a `redis://` URL), so one binary deploys either
//! way. Built without the `redis` feature, asking for Redis is an error naming the feature.
//!
//! ```no_run
//! use socketioxide::SocketIo;
//! use socketioxide_cluster::{ClusterAdapter, ClusterAdapterCtr};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ctr = ClusterAdapterCtr::from_env().await?;
//! let (layer, io) = SocketIo::builder()
//!     .with_adapter::<ClusterAdapter<_>>(ctr)
//!     .build_layer();
//! # Ok(()) }
//! ```
//!
//! ## Shared login sessions
//!
//! With the `sessions` feature, `ClusterAdapterCtr::session_store` gives a
//! `tower-sessions` store shared by every node (replicated over the mesh, or in Redis), and
//! `sessions::SessionAuth` authenticates Socket.IO connections from it on whichever node
//! they land. See the `sessions` module.
//!
//! ## Server-to-server events
//!
//! `ClusterAdapterCtr::server_events` (either backend) gives a handle to emit events with
//! data to every other node, and to handle them there; with acks, a stream of one answer
//! per node that ends once every node waited for answered or was found gone, or at the
//! timeout. See the [`events`] module.
//!
//! ## Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `cluster-gossip` (default) | the broker-less backend: gossip and the QUIC mesh |
//! | `redis` | the Redis backend, and choosing the backend at run time |
//! | `sessions` | the shared `tower-sessions` store and its Socket.IO middleware |
//! | `custom-network` | the `network` module: run a node on sockets you provide, such as a simulated network, so a whole cluster can be replayed from a seed |
//!
//! ## How it works
//!
//! Four layers run inside every node, next to socketioxide, each built only on those
//! below it:
//!
//! - **Membership** (gossip, UDP): each node publishes its name and its mesh address, and
//!   learns those of every other node through periodic gossip rounds with a few peers
//!   (chitchat's scuttlebutt anti-entropy). Seeds are only the first contacts: once in, a
//!   node hears of every other. Every datagram is sealed (encrypted and authenticated)
//!   under a key derived from the cluster secret, for its recipient alone, and checked
//!   before the gossip library reads it. Gossip only says where to find nodes: membership
//!   itself is decided by the mesh.
//! - **Mesh** (QUIC, UDP): for each member it learns of, a node opens one QUIC connection
//!   (TLS 1.3, ephemeral certificate) and both sides prove the cluster secret with an HMAC
//!   bound to that TLS session before any frame is read. Only then does the peer count as
//!   a member ([`Cluster::members`], [`MembershipEvent::Joined`]), until its last
//!   connection closes or it says it leaves; it tells the others its socketioxide server
//!   id and namespaces over its own connection. A node sends everything
//!   it has for a peer — requests, responses, broadcasts — as length-prefixed,
//!   versioned frames on one stream of its own connection to that peer, so two emits from
//!   one node reach a client on another node in the order they were made. QUIC
//!   keep-alives with a short idle timeout (the peer timeout) notice a hung peer in
//!   seconds. On Linux a crashed peer is noticed at once: the mesh socket keeps the ICMP
//!   *port unreachable* its datagrams to a dead process bring back (`IP_RECVERR`), and one
//!   about exactly a peer's address that quotes a datagram this node sent there closes that
//!   peer's connections as lost.
//!   An emit never waits on one peer: each peer's send queue is bounded in bytes, and a
//!   peer that falls behind past its budget, or takes nothing for the peer timeout while
//!   staying connected, is disconnected as a slow consumer and connected to afresh (see
//!   [Send queues and slow consumers](#send-queues-and-slow-consumers)).
//! - **Node**: decides who is a member (a peer proven over the mesh, whatever gossip
//!   says), keeps one link per member, routes incoming frames to namespaces and services,
//!   and keeps the one ledger of requests: whom each still waits for, and what each peer
//!   asked may still send back. It knows nothing of socket.io.
//! - **Adapter** (per namespace): turns socketioxide's adapter calls into requests to the
//!   other members, and applies the requests it receives to its local sockets, as
//!   `socketioxide-redis` does over Redis channels.
//!
//! In the source, the gossip backend is `src/gossip/` (`membership`, `mesh`, `node`,
//! `adapter`, over the leaves `peer`, `keys` and `wire`), the Redis backend `src/redis/`,
//! and [`ClusterAdapter`], which dispatches to either, `src/backend.rs`. The cluster-wide
//! features ([`events`], [`presence`], `sessions`) are written once over a bus
//! (`src/bus/`: members and their changes, publish, request with answers) with a gossip
//! and a Redis implementation, and started in one place (`src/features.rs`).
//!
//! A broadcast is sent to every member and answered by none. A request that expects
//! answers (`fetch_sockets`, `rooms`, acks, and `join`, `leave` and `disconnect` of other
//! nodes' sockets, answered `Done` once applied so that they are in force when the call
//! returns) goes to every live member (or to the one member
//! hosting a targeted socket) and waits for exactly those: a member that does not host the
//! namespace says so at once, and a member found dead — its connection closed, its port
//! answering ICMP port unreachable (Linux), its QUIC keep-alives silent for the peer
//! timeout, or a graceful leave — is no longer waited for. The request returns what it has, never later than the request
//! timeout.
//!
//! Two orders hold on both backends:
//!
//! - **Per-sender order**: two emits made on one node reach a client on another node in the
//!   order they were made (one stream per pair of nodes on gossip, Redis's order on Redis).
//! - **One order for what has returned**: an emit that returned on one node is applied on
//!   every node before a `join`, `leave` or `disconnect` that any node starts afterwards.
//!   Kick a user out of a room right after a post to it returned on another node: the user
//!   gets the post. On gossip, an emit returns once its frames are queued for each peer, so
//!   a node that receives such a change, and the node that starts it for its own sockets,
//!   applies it only once every other member has answered a flush; each member answers on
//!   its own stream, behind everything it had queued for that node, so those frames have
//!   been applied first. Emits pay nothing for it; a state change pays one more round trip
//!   (a node none of whose sockets it selects answers at once while it holds nothing
//!   else), and one flush round serves every change that arrived before it was sent. At most 4,096 changes (64 MiB) wait on a
//!   node; past that they are applied at once, in order, and logged. Emits and requests that
//!   arrive while a change waits are not held behind it: only what returned before the change
//!   started comes first, and the change is in force when it returns. On Redis, an emit
//!   returns once Redis has it and every node applies its channels in Redis's order, so it
//!   holds at no further cost. Operations on the local sockets only (`socket.join` in a
//!   handler, `io.local()`) are applied at once on both backends, as with socketioxide-redis.
//!
//! ```text
//!  node A                         node B                         node C
//!    |  joining: gossip rounds (UDP) with a seed, then with everyone  |
//!    |<=========== names, mesh addresses, server ids ==============>|
//!    |                              |                               |
//!    |== QUIC connect, TLS 1.3 ====>|                               |
//!    |<-- HMAC(secret, TLS exporter) --> each side checks the other |
//!    |   B is a member for A now (MembershipEvent::Joined)          |
//!    |                              |                               |
//!  io.emit("msg"): A sends to every member, then emits locally      |
//!    |---- Request(Broadcast) ----->|  B emits to its sockets       |
//!    |---- Request(Broadcast) --------------------------------------->|
//!    |                              |                               |
//!  io.fetch_sockets(): A waits for B and C, nobody else             |
//!    |---- Request(FetchSockets) -->|                               |
//!    |---- Request(FetchSockets) ------------------------------------>|
//!    |<--- Response(Sockets[..]) ---|                          (process hung)
//!    |   ... no keep-alive from C for the peer timeout (2 s) ...    |
//!    |   A stops waiting for C: returns its own + B's sockets       |
//!    |                              |                               |
//!  io.to("user-1").leave("room"): in force on B and C when it returns
//!    |---- Request(DelSockets) ---->|  B holds it (its socket is in the room)
//!    |                              |---- Flush ------------------->|
//!    |                              |<--- Response(Done) -----------| behind C's emits
//!    |<--- Response(Done) ----------|  B applied C's emits, then it |
//!    |                              |                               |
//!  io.emit_with_ack("ask"):                                         |
//!    |---- Request(BroadcastWithAck) ->|                            |
//!    |<--- Response(AckCount(2)) ------|   then exactly 2 acks      |
//!    |<--- Response(Ack(sid1, ..)) ----|                            |
//!    |<--- Response(Ack(sid2, ..)) ----|                            |
//!    |                              |                               |
//!  cluster.shutdown() on B:                                         |
//!    |<--------- Leave -------------|---------- Leave ------------->|
//!    |   B is dropped at once (MembershipEvent::Left)               |
//! ```
//!
//! ## Send queues and slow consumers
//!
//! Frames wait for a peer in its send queue while its connection takes them. The queue is
//! bounded in bytes, as Redis bounds a pub/sub client (`client-output-buffer-limit pubsub`,
//! 32 MB by default) and NATS a subscriber (64 MiB pending):
//!
//! - **Per peer**: at most 64 MiB of frames
//!   ([`with_peer_queue_bytes`](GossipAdapterConfig::with_peer_queue_bytes),
//!   `SOCKETIO_CLUSTER_PEER_QUEUE_BYTES`), enough for any burst a Redis deployment with its
//!   default limits delivers: the benchmark's floods (50,000 emits of 100 bytes, 5,000 of
//!   10 KiB, as fast as one node makes them) lose nothing.
//! - **Per node**: at most 256 MiB for all peers together
//!   ([`with_node_queue_bytes`](GossipAdapterConfig::with_node_queue_bytes),
//!   `SOCKETIO_CLUSTER_NODE_QUEUE_BYTES`); a broadcast queued for every peer is held, and
//!   counted, once.
//!
//! An emit never waits for room. A peer whose queue would go past its budget — it stays
//! behind while frames for it keep coming — is disconnected as a slow consumer (NATS's
//! rule; QUIC close code 7), as is a peer that takes nothing for the peer timeout while
//! its connection stays alive: the frame that did not fit and those still queued for it
//! are dropped, requests stop waiting for it, and the node connects to it afresh when it
//! next has something for it (what it missed is not replayed). A frame that does not fit
//! the node budget is queued for no one, and the peer whose queue holds the most is cut.
//! Responses to other nodes' requests go through the same queues and never wait either.
//! Every dropped frame is counted ([`Cluster::frames_dropped`], and by peer and reason in
//! [`metrics::FRAMES_DROPPED`]: `queue_full`, `node_full`, `slow_consumer`, `peer_gone`),
//! every cut peer too ([`Cluster::slow_peers_disconnected`]), and both are logged at a
//! bounded rate. [`Cluster::queued_bytes`] and [`PeerStats`] show what is held now.
//!
//! Frames already handed to QUIC when a peer crashes are not counted: quinn tells when a
//! *finished* stream was acknowledged, not how far an open one was, and a node's frames
//! to a peer travel on one stream that stays open. What is in doubt is bounded: the peer's
//! flow control lets at most its stream window (1.25 MB) be written beyond what its
//! application has read.
//!
//! `with_stream_buffer` and `SOCKETIO_CLUSTER_STREAM_BUFFER`, which counted frames, are
//! deprecated for this backend: they are still checked, a node given either logs at start
//! that they bound nothing, and the variable still sizes the Redis backend's queue.
//!
//! ## One parser per cluster
//!
//! Every node of a cluster must use the same socket.io parser (socketioxide's default
//! common/JSON parser, or `SocketIo::builder().with_parser(ParserConfig::msgpack())` on
//! every node): payloads travel between nodes already encoded by the sender's parser, and
//! the other parser can neither read nor send them. Each node tells its peers its parser
//! with its metadata once its first namespace exists; two nodes with different parsers
//! refuse each other, each logging one line that names both parsers
//! (`peer refused: it uses the msgpack parser and this node the common (JSON) parser; …`).
//! A refused peer is no member ([`Cluster::members`], [`MembershipEvent::Left`]), nothing
//! but this node's metadata is sent to it and nothing it sends is applied; the nodes that
//! agree keep working together. Until the two nodes' metadata has crossed (right after
//! they connect), a peer counts as a member; a request whose payload this node's parser
//! cannot send is then refused before it reaches any socket, and the connection it came on
//! is closed with the reason logged (`closing mesh connection: request for namespace /
//! refused: a payload of the msgpack parser, …`).
//!
//! The Redis backend cannot tell: its protocol is socketioxide-redis's, which carries no
//! parser. There, nodes with different parsers must not share a Redis and a prefix (see
//! `docs/semantics.md`).
//!
//! Watching the membership, e.g. to show it on a page (as the `demo` example does):
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use socketioxide_cluster::{GossipAdapterConfig, GossipAdapterCtr, MembershipEvent};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ctr = GossipAdapterCtr::new(GossipAdapterConfig::from_env()?).await?;
//! let cluster = ctr.cluster();
//! let mut events = cluster.membership_events();
//! tokio::spawn(async move {
//!     while let Some(event) = events.next().await {
//!         match event {
//!             MembershipEvent::Joined(m) => println!("{} joined at {}", m.node_name, m.mesh_addr),
//!             MembershipEvent::Left(m) => println!("{} left", m.node_name),
//!         }
//!     }
//! });
//! let names: Vec<String> = cluster.members().into_iter().map(|m| m.node_name).collect();
//! println!("{} sees {names:?}", cluster.node_name());
//! # Ok(()) }
//! ```
//!
//! ## Metrics
//!
//! The library records metrics through the [`metrics`](https://docs.rs/metrics) facade and
//! never installs an exporter: install the one you pick (say `metrics-exporter-prometheus`,
//! as the `minimal` and `chat` examples do to serve `GET /metrics`) before the node starts.
//! Every name starts with `socketioxide_cluster_`: members
//! (`socketioxide_cluster_members`), membership changes, links up, frames and bytes in and
//! out by kind, frames dropped by peer and reason, requests by kind with their duration and
//! how many ended early because a peer was lost, round-trip times per peer, gossip
//! datagrams, session store records. The [`metrics`](mod@metrics) module lists each with
//! its type, unit and labels ([`metrics::ALL`]). Labels name nodes at most, never a socket
//! or a room.
//!
//! Each cluster request also runs in a `tracing` span, `cluster_request`, with its kind,
//! id, the peers it waits for and how it ended (`outcome`).
//!
//! ## Security
//!
//! Gossip datagrams are sealed (ChaCha20-Poly1305 under a key of the sender's session, the
//! cluster id and the recipient bound in: a datagram opens at the node it was sealed for,
//! once, within 60 s of its sending time) and checked before chitchat reads them (node
//! names, keys, compressed sizes, and what they may add to its state), so that a host
//! holding the secret cannot crash another node's gossip or grow its state without bound;
//! should chitchat's task stop all the same, it is started again. Mesh traffic is TLS 1.3
//! (QUIC) with an ephemeral
//! certificate per node, on which both sides prove the shared secret with an HMAC bound to
//! the TLS session's exporter secret. Both keys come from the secret through Argon2id; a
//! secret shorter than 32 characters or easy to guess is refused at start
//! ([`Error::WeakSecret`]). A node is a member while its authenticated mesh connection is
//! open, whatever gossip says. Rotate secrets with [`GossipAdapterConfig::with_secrets`].
//! ICMP is not authenticated, so it is a hint: a *port unreachable* closes a peer's links
//! only if it quotes the start of a datagram this node sent to that peer lately, which
//! anyone off the path cannot guess (the start of a QUIC packet: the peer's connection id
//! and encrypted bytes); any other is counted, logged at a bounded rate, and left to the
//! peer timeout. `docs/security.md` says what an attacker with and without the
//! secret can do.
//!
//! A web client can hurt only itself: whatever it sends or answers is checked, on the node
//! that holds it, against every bound peers accept (binary attachments, room names,
//! sockets, the frame size) before anything crosses the cluster, and what cannot cross is
//! refused for that one emit, ack or answer with an error to its caller
//! ([`RequestError::OverBound`], [`RequestError::AnswerRefused`]; an ack that cannot
//! cross is an error for that socket's answer). No link between nodes is closed for a
//! client's payload. Quotas refuse new records, never evict other users' live ones
//! (sessions, presence entries, with a share per socket).
//!
//! A member holding the secret is trusted for its own identity only, but the data it
//! replicates is taken as written: with the `sessions` feature, **any member can write any
//! session** (and so log anyone in as anyone), as any client of Redis can with the Redis
//! backend. Keep the secret as you would the Redis password.
//!
//! A connection that has not proved the secret gets no room for data (one stream, 8 KiB for
//! its proof). At most 64 are served at once, 4 per source (an IPv4 address, an IPv6 /64),
//! with 16 of the 64 kept for the mesh addresses of members and of the nodes gossip lists,
//! so that strangers cannot crowd out the cluster's own nodes; each has the handshake
//! deadline ([`GossipAdapterConfig::with_handshake_timeout`], 1 s) to prove the secret, and
//! beyond 16 at once, or for a source's second one, a client must validate its address
//! (QUIC Retry). What a member can make a node hold is bounded: every list of a frame
//! (rooms, sockets, attachments, the namespaces a node announces: 4,096 of at most 256
//! bytes), the server ids kept per member, an ack timeout (10 minutes at most). With
//! [`GossipAdapterConfig::with_tls_ca`], each node also has a certificate of the cluster's
//! CA naming it, exactly (no case folding, no wildcard): both sides verify the other's
//! (mutual TLS), and a node cannot claim another's name.

#[cfg(not(any(feature = "cluster-gossip", feature = "redis")))]
compile_error!("enable at least one backend: the `cluster-gossip` feature (default) or `redis`");

mod backend;
mod bus;
mod codec;
#[cfg(all(test, feature = "cluster-gossip"))]
mod documented;
mod error;
pub mod events;
mod features;
#[cfg(feature = "cluster-gossip")]
mod gossip;
mod init;
mod lagging;
mod peer;
// Flush rounds and ack counts are the gossip node's: a Redis-only build uses the rest.
#[cfg_attr(not(feature = "cluster-gossip"), allow(dead_code))]
mod ledger;
// What records frames, links and requests serves the gossip backend only.
#[cfg_attr(not(feature = "cluster-gossip"), allow(dead_code, unused_imports))]
pub mod metrics;
pub mod presence;
#[cfg(test)]
mod proc_status;
#[cfg_attr(not(feature = "cluster-gossip"), allow(dead_code))]
mod ranges;
mod rate_log;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sessions")]
pub mod sessions;

pub use backend::{BACKEND_VAR, ClusterAdapter, ClusterAdapterCtr, ClusterError};
#[cfg(feature = "cluster-gossip")]
pub use error::RequestError;
pub use error::{ConfigError, Error};
#[cfg(feature = "cluster-gossip")]
pub use gossip::adapter::{GossipAdapter, GossipAdapterCtr};
#[cfg(feature = "cluster-gossip")]
pub use gossip::config::{
    DEFAULT_NODE_QUEUE_BYTES, DEFAULT_PEER_QUEUE_BYTES, GossipAdapterConfig, Secret,
};
#[cfg(feature = "cluster-gossip")]
pub use gossip::membership::Member;
/// quinn set up as the mesh sets it up, for the benchmark's floor. Not part of the API.
#[cfg(feature = "cluster-gossip")]
#[doc(hidden)]
pub use gossip::mesh::floor as mesh_floor;
#[cfg(feature = "custom-network")]
pub use gossip::network;
#[cfg(feature = "cluster-gossip")]
pub use gossip::node::{Cluster, GossipStats, MembershipEvent, PeerStats};
/// The ALPN protocol identifier of the mesh's QUIC connections (it names the protocol
/// version: nodes of incompatible versions do not connect), for a firewall or a probe that
/// must recognise mesh traffic.
#[cfg(feature = "cluster-gossip")]
pub use gossip::wire::ALPN as MESH_ALPN;
pub use init::InitRes;

/// The Rust snippets of the README and of every page of `docs/`, compiled (and those
/// without `no_run` run) as doctests, with the features they need.
#[cfg(doctest)]
mod readme_and_docs {
    #[cfg_attr(feature = "cluster-gossip", doc = include_str!("../README.md"))]
    mod readme {}
    #[doc = include_str!("../docs/benchmarks.md")]
    mod benchmarks {}
    #[doc = include_str!("../docs/configuration.md")]
    mod configuration {}
    #[doc = include_str!("../docs/deploying.md")]
    mod deploying {}
    #[doc = include_str!("../docs/development.md")]
    mod development {}
    #[doc = include_str!("../docs/failures.md")]
    mod failures {}
    #[doc = include_str!("../docs/limits.md")]
    mod limits {}
    #[doc = include_str!("../docs/metrics.md")]
    mod metrics {}
    #[doc = include_str!("../docs/presence.md")]
    mod presence {}
    #[doc = include_str!("../docs/redis.md")]
    mod redis {}
    #[doc = include_str!("../docs/security.md")]
    mod security {}
    #[doc = include_str!("../docs/semantics.md")]
    mod semantics {}
    #[doc = include_str!("../docs/server-events.md")]
    mod server_events {}
    #[cfg_attr(feature = "sessions", doc = include_str!("../docs/sessions.md"))]
    mod sessions {}
    #[doc = include_str!("../docs/simulations.md")]
    mod simulations {}
    #[doc = include_str!("../docs/troubleshooting.md")]
    mod troubleshooting {}
    #[doc = include_str!("../docs/wire-compatibility.md")]
    mod wire_compatibility {}
}

/// Every page of `docs/` has its snippets compiled above.
#[cfg(test)]
#[test]
fn every_docs_page_is_a_doctest() {
    let lib = include_str!("lib.rs");
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for page in std::fs::read_dir(docs).expect("docs/").flatten() {
        let name = page.file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            let include = format!("include_str!(\"../docs/{name}\")");
            assert!(
                lib.contains(&include),
                "docs/{name} is not among the doctests of lib.rs"
            );
        }
    }
}
