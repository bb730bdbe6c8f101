#![allow(missing_docs)]
//! What the integration tests share, re-exported here so that `use common::*` brings it all:
//!
//! - [`cluster`]: in-process clusters of real nodes on 127.0.0.1 with ephemeral ports, on
//!   either backend, and the [`backend_tests!`](crate::backend_tests) macro that runs a test
//!   once per backend;
//! - [`client`]: test clients (dummy sockets, HTTP long-polling with the text or the msgpack
//!   parser) and the helpers that send, receive and check their packets.
//!
//! The other modules are used by name (`common::polling`, `common::redis_server`, ...).
//! `external.rs` (child processes: the example servers, `node`, `nginx`) and `logs.rs` are
//! included with `#[path]` by the tests that need them.
#![allow(dead_code)]

pub mod client;
pub mod cluster;
pub mod msgpack;
pub mod polling;
pub mod redis_server;
pub mod relay;

// Each test file uses a part of them, some none of one module.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use cluster::*;
