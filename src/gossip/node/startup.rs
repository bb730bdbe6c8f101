//! Checks and address choices made when a node starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use crate::{error::Error, gossip::config::GossipAdapterConfig};

/// A seed must be `ip:port` or `host:port`. A host name that does not resolve yet is only
/// logged: it is resolved again periodically.
pub(super) async fn check_seed(seed: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::Seed {
        seed: seed.to_string(),
        reason: reason.to_string(),
    };
    if seed.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = seed
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    if let Err(e) = tokio::net::lookup_host(seed).await {
        tracing::warn!(%seed, "seed does not resolve yet (will retry): {e}");
    }
    Ok(())
}

/// Replace an unspecified IP (0.0.0.0, ::) by the IP this host uses to reach other hosts.
pub(super) fn advertised(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel for a route.
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
        .and_then(|s| s.local_addr());
    let ip = match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => {
            tracing::warn!(
                "cannot find this host's IP; advertising 127.0.0.1 (set the advertise addresses)"
            );
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    };
    SocketAddr::new(ip, bound.port())
}

/// The gossip bind address (a free port picked for port 0) and the advertised one.
pub(super) fn gossip_addrs(
    config: &GossipAdapterConfig,
) -> Result<(SocketAddr, SocketAddr), Error> {
    let mut bind = config.gossip_addr;
    if bind.port() == 0 {
        // chitchat binds by itself; find a free port for it.
        let probe = UdpSocket::bind(bind).map_err(|e| Error::GossipBind {
            addr: bind,
            reason: e.to_string(),
        })?;
        bind = probe.local_addr().map_err(|e| Error::GossipBind {
            addr: bind,
            reason: e.to_string(),
        })?;
    }
    let advertise = config
        .gossip_advertise_addr
        .unwrap_or_else(|| advertised(bind));
    Ok((bind, advertise))
}
