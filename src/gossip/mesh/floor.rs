//! quinn set up as the mesh sets it up, for the benchmark's floor: bare quinn streams
//! carrying the same bytes, measured against the mesh, must differ from it in what the mesh
//! adds (frames, routing, queues), not in quinn's settings. Not part of the API.

use std::{io, net::SocketAddr};

/// The transport of a mesh connection whose peer proved the secret, with the default peer
/// timeout: its receive windows, acknowledgement frequency and keep-alives.
pub fn transport() -> quinn::TransportConfig {
    let mut t = super::handshake::base_transport(super::DEFAULT_PEER_TIMEOUT);
    t.receive_window(quinn::VarInt::from_u32(super::handshake::PEER_WINDOW));
    t
}

/// A UDP socket bound to `addr`, as the mesh binds its own: with the receive buffer it
/// asks for on Linux.
pub fn socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    #[cfg(target_os = "linux")]
    return super::recverr::udp_socket(addr);
    #[cfg(not(target_os = "linux"))]
    std::net::UdpSocket::bind(addr)
}
