//! The broker-less backend: a node that finds the others by gossip and talks to them over
//! an authenticated QUIC mesh.
//!
//! From the bottom up (imports only run down):
//! - [`peer`] (the crate's, shared with the bus), [`keys`], [`wire`]: leaves. Who a node
//!   is; the keys derived from the cluster secret; the frames nodes exchange and their
//!   binary encoding.
//! - [`membership`]: gossip (chitchat over sealed UDP datagrams): which nodes exist and
//!   where their mesh listens. Input only, never proof.
//! - [`mesh`]: QUIC connections whose peers proved the secret, one ordered stream of frames
//!   per direction, and why each connection closed.
//! - [`node`]: the running node. Its view of the members (proven over the mesh), its links
//!   to them, the request ledger, and the routing of incoming frames to namespaces and
//!   services; the public [`Cluster`](node::Cluster) handle.
//! - [`adapter`]: the socketioxide adapter that turns a namespace's calls into requests
//!   to the node's peers, and applies theirs to its local sockets.
//! - [`config`]: what a node is started with.

pub(crate) mod adapter;
pub(crate) mod config;
pub(crate) mod keys;
pub(crate) mod membership;
pub(crate) mod mesh;
#[cfg(not(feature = "custom-network"))]
pub(crate) mod network;
#[cfg(feature = "custom-network")]
pub mod network;
pub(crate) mod node;
pub(crate) use crate::peer;
pub(crate) mod wire;
