//! Fingerprints of the last datagrams the mesh socket sent to each peer's address, to tell
//! the kernel's answer about a crashed peer from a forged one.
//!
//! An ICMP error quotes the start of the datagram that caused it. The genuine answer of a
//! host where nothing listens any more quotes a datagram this node sent; a forger that is
//! not on the path never saw one, and cannot guess it: a QUIC packet starts with the
//! connection id the peer chose and bytes encrypted under the connection's keys. So a *port
//! unreachable* proves the peer gone only when its first [`QUOTED`] bytes are those of one
//! of the last [`KEPT`] datagrams sent to that address ([`Sent::quotes_one`]); any other is
//! a hint, left to the peer timeout to confirm.
//!
//! Only the addresses of authenticated connections are watched ([`Sent::watch`]), so the
//! memory is [`KEPT`] fingerprints per peer address, whoever else the socket talks to.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::{IpAddr, SocketAddr},
    sync::{Mutex, RwLock},
};

/// Bytes of a datagram compared with what an ICMP error quotes: the QUIC header (flags, an
/// 8-byte connection id, the packet number) and the first encrypted bytes.
pub(crate) const QUOTED: usize = 24;

/// Fingerprints kept per address: the datagrams sent to it between a crash and the
/// kernel's answer must not push the one answered out.
pub(crate) const KEPT: usize = 256;

/// The datagrams sent to the watched addresses.
#[derive(Default)]
pub(crate) struct Sent {
    /// Keyed at random per process: a fingerprint cannot be made to collide on purpose.
    hasher: RandomState,
    watched: RwLock<HashMap<(IpAddr, u16), Watched>>,
}

/// One watched address.
struct Watched {
    /// Connections to it that asked for it to be watched.
    links: usize,
    recent: Mutex<Ring>,
}

/// The last [`KEPT`] fingerprints.
struct Ring {
    prints: Vec<u64>,
    next: usize,
}

impl Sent {
    /// Keep the fingerprints of what is sent to `addr` from now on, until as many
    /// [`Sent::unwatch`] calls.
    pub(crate) fn watch(&self, addr: SocketAddr) {
        let mut watched = self.watched.write().unwrap_or_else(|p| p.into_inner());
        watched
            .entry(key(addr))
            .or_insert_with(|| Watched {
                links: 0,
                recent: Mutex::new(Ring {
                    prints: Vec::new(),
                    next: 0,
                }),
            })
            .links += 1;
    }

    /// One connection to `addr` no longer needs it watched.
    pub(crate) fn unwatch(&self, addr: SocketAddr) {
        let mut watched = self.watched.write().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = watched.get_mut(&key(addr)) {
            w.links -= 1;
            if w.links == 0 {
                watched.remove(&key(addr));
            }
        }
    }

    /// Datagrams were sent to `dest`: one, or a batch of several, each `segment` bytes long
    /// but the last (what the socket sends at once with segmentation offload).
    pub(crate) fn record(&self, dest: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let size = segment.unwrap_or(contents.len()).max(1);
        let watched = self.watched.read().unwrap_or_else(|p| p.into_inner());
        let Some(w) = watched.get(&key(dest)) else {
            return;
        };
        let mut ring = w.recent.lock().unwrap_or_else(|p| p.into_inner());
        for start in contents.chunks(size).filter_map(|d| d.get(..QUOTED)) {
            let print = self.hasher.hash_one(start);
            if ring.prints.len() < KEPT {
                ring.prints.push(print);
            } else {
                let at = ring.next;
                ring.prints[at] = print;
            }
            ring.next = (ring.next + 1) % KEPT;
        }
    }

    /// Whether `quoted`, what an ICMP error about a datagram to `dest` quotes of it, is the
    /// start of one of the last datagrams sent there. Less than [`QUOTED`] bytes prove
    /// nothing.
    pub(crate) fn quotes_one(&self, dest: SocketAddr, quoted: &[u8]) -> bool {
        let Some(start) = quoted.get(..QUOTED) else {
            return false;
        };
        let print = self.hasher.hash_one(start);
        let watched = self.watched.read().unwrap_or_else(|p| p.into_inner());
        watched.get(&key(dest)).is_some_and(|w| {
            let ring = w.recent.lock().unwrap_or_else(|p| p.into_inner());
            ring.prints.contains(&print)
        })
    }

    /// Addresses watched now.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.watched.read().unwrap().len()
    }
}

/// `addr` with an IPv4-mapped IPv6 address written as IPv4, so that a dual-stack socket's
/// view of a peer compares equal to a plain IPv4 one.
pub(crate) fn key(addr: SocketAddr) -> (IpAddr, u16) {
    (addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(n: u32) -> Vec<u8> {
        let mut d = vec![0x40; 40];
        d[1..5].copy_from_slice(&n.to_be_bytes());
        d
    }

    #[test]
    fn only_the_start_of_a_recent_datagram_to_that_address_is_recognised() {
        let sent = Sent::default();
        let (peer, other): (SocketAddr, SocketAddr) = (
            "127.0.0.1:7".parse().unwrap(),
            "127.0.0.1:8".parse().unwrap(),
        );
        sent.record(peer, &datagram(0), None);
        assert!(!sent.quotes_one(peer, &datagram(0)), "not watched then");
        sent.watch(peer);
        sent.record(peer, &datagram(1), None);
        sent.record(other, &datagram(2), None);
        // A quote holds the datagram's start, maybe more of it, maybe all of it.
        assert!(sent.quotes_one(peer, &datagram(1)));
        assert!(sent.quotes_one(peer, &datagram(1)[..QUOTED]));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7".parse().unwrap();
        assert!(sent.quotes_one(mapped, &datagram(1)), "the same address");
        // Too short to tell, never sent, sent elsewhere.
        assert!(!sent.quotes_one(peer, &datagram(1)[..QUOTED - 1]));
        assert!(!sent.quotes_one(peer, &datagram(3)));
        assert!(!sent.quotes_one(other, &datagram(2)));
        assert!(!sent.quotes_one(peer, &datagram(2)));
    }

    #[test]
    fn every_datagram_of_a_batch_is_recorded() {
        let sent = Sent::default();
        let peer: SocketAddr = "127.0.0.1:7".parse().unwrap();
        sent.watch(peer);
        // Three datagrams of 40 bytes and a last one too short to be quoted in full.
        let mut batch: Vec<u8> = (1..=3).flat_map(datagram).collect();
        batch.extend_from_slice(&datagram(4)[..QUOTED - 1]);
        sent.record(peer, &batch, Some(40));
        for n in 1..=3 {
            assert!(sent.quotes_one(peer, &datagram(n)), "datagram {n}");
        }
        assert!(!sent.quotes_one(peer, &datagram(4)));
        assert_eq!(
            sent.watched.read().unwrap()[&key(peer)]
                .recent
                .lock()
                .unwrap()
                .prints
                .len(),
            3
        );
    }

    #[test]
    fn the_last_datagrams_are_kept_while_the_address_is_watched() {
        let sent = Sent::default();
        let peer: SocketAddr = "127.0.0.1:7".parse().unwrap();
        sent.watch(peer);
        sent.watch(peer);
        for n in 0..KEPT as u32 + 10 {
            sent.record(peer, &datagram(n), None);
        }
        assert!(!sent.quotes_one(peer, &datagram(9)), "pushed out");
        assert!(sent.quotes_one(peer, &datagram(10)));
        assert!(sent.quotes_one(peer, &datagram(KEPT as u32 + 9)));
        sent.unwatch(peer);
        assert!(sent.quotes_one(peer, &datagram(10)), "one connection left");
        sent.unwatch(peer);
        assert_eq!(sent.watched(), 0);
        assert!(!sent.quotes_one(peer, &datagram(10)));
    }
}
