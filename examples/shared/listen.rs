//! The HTTP listener of the examples and of the benchmark's nodes, with Nagle's algorithm
//! off on every connection it accepts (docs/deploying.md, "TCP_NODELAY on the HTTP port"):
//! a node writes what other nodes send to its clients in many small writes, which Nagle
//! would hold back up to 40 ms.

use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt};
use tokio::net::{TcpListener, ToSocketAddrs};

/// Bind `addr` for `axum::serve`, with the address bound; each accepted connection sets
/// `TCP_NODELAY`.
pub async fn bind(
    addr: impl ToSocketAddrs,
) -> std::io::Result<(impl Listener<Addr = SocketAddr>, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        // Only a socket already closed refuses it: the connection fails on its own.
        let _ = tcp.set_nodelay(true);
    });
    Ok((listener, bound))
}
