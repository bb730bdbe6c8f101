//! Admission of incoming mesh connections before they prove anything: how many may be in
//! that state at once, in all and from one source, how much of that room only addresses the
//! node knows may take, when a remote address must first be validated (QUIC Retry), when a
//! connection is refused outright, how long it has to prove the secret, the counts of each,
//! and a log budget so that a stranger cannot flood the log.
//!
//! A stranger can open connections that complete TLS and never prove the secret, from
//! several addresses, and dial again each one that is cut. It gets a small share per source
//! ([`MAX_PER_SOURCE`]), at most [`MAX_UNPROVEN`] `-` [`RESERVED_FOR_KNOWN`] in all, and
//! each for the handshake deadline only ([`HANDSHAKE_TIMEOUT`]). The rest is kept for the
//! addresses the node knows from sealed gossip or from members (their mesh addresses),
//! which a stranger cannot take from them: beyond a few connections an address must show
//! it receives at what it claims (Retry) before it gets a slot.
//!
//! Pure decisions and counters; the endpoint acts on them in [`super::Mesh::serve`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::time::{Duration, Instant};

/// Most incoming connections that may be between their first packet and a verified proof of
/// the cluster secret at once. Each costs a QUIC connection, a TLS session and a task until
/// it proves itself or its deadline passes; a cluster's own peers need one each while they
/// connect, so 64 leaves room for a burst of a large cluster restarting.
pub(crate) const MAX_UNPROVEN: usize = 64;

/// Of [`MAX_UNPROVEN`], the room only addresses the node knows (members' and gossip-listed
/// nodes' mesh addresses) may take: strangers, however many addresses they use, leave it.
pub(crate) const RESERVED_FOR_KNOWN: usize = 16;

/// Most unproven connections from one source at once: one IPv4 address, one IPv6 /64 (what
/// one host usually has), or one known mesh address (counted apart from strangers sharing
/// its host).
pub(crate) const MAX_PER_SOURCE: usize = 4;

/// Above this many unproven connections, or with another one from the same source already
/// unproven, a new one must first show it can receive at its address (QUIC Retry): a
/// spoofed source address then costs one stateless packet, and cannot take a known
/// address's share.
pub(crate) const RETRY_ABOVE: usize = MAX_UNPROVEN / 4;

/// Default time an incoming connection has from its first packet to a verified proof of the
/// secret (TLS, then its hello): a handshake takes two round trips, a few milliseconds
/// within a datacenter. Separate from the peer timeout, which only applies to proven peers.
/// See `GossipAdapterConfig::with_handshake_timeout`.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// What to do with a new incoming connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Accept it and start the handshake.
    Accept,
    /// Answer with a Retry: the client must come back from a validated address.
    Retry,
    /// Refuse it, for this reason.
    Refuse(Full),
}

/// Which room is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// [`MAX_UNPROVEN`].
    All,
    /// The room of unknown addresses ([`MAX_UNPROVEN`] `-` [`RESERVED_FOR_KNOWN`]).
    Strangers,
    /// [`MAX_PER_SOURCE`].
    Source,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::All => "too many connections still proving the cluster secret",
            Self::Strangers => {
                "too many connections from unknown addresses still proving the cluster secret \
                 (the rest is kept for known nodes)"
            }
            Self::Source => {
                "too many connections from this source still proving the cluster secret"
            }
        })
    }
}

/// Where an incoming connection comes from, for its share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// The mesh address of a member or of a node gossip lists.
    Known(IpAddr, u16),
    /// Any other address: its host (an IPv4 address, an IPv6 /64).
    Host(IpAddr),
}

impl Source {
    /// The source of a connection from `remote`, `known` if the node knows that address.
    pub(crate) fn of(remote: SocketAddr, known: bool) -> Self {
        let ip = remote.ip().to_canonical();
        if known {
            return Self::Known(ip, remote.port());
        }
        match ip {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !(u128::MAX >> 64);
                Self::Host(IpAddr::V6(prefix.into()))
            }
            v4 => Self::Host(v4),
        }
    }

    fn is_known(self) -> bool {
        matches!(self, Self::Known(..))
    }
}

/// How many connections are unproven: in all, from unknown addresses, from one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unproven {
    /// In all.
    pub(crate) all: usize,
    /// From unknown addresses.
    pub(crate) strangers: usize,
    /// From the new connection's source.
    pub(crate) from_source: usize,
}

/// The decision for a new connection from a known address or not, given what is unproven
/// and whether its address has been validated (it came back with a Retry token).
pub(crate) fn admit(now: Unproven, known: bool, address_validated: bool) -> Admission {
    if now.all >= MAX_UNPROVEN {
        Admission::Refuse(Full::All)
    } else if !known && now.strangers >= MAX_UNPROVEN - RESERVED_FOR_KNOWN {
        Admission::Refuse(Full::Strangers)
    } else if now.from_source >= MAX_PER_SOURCE {
        Admission::Refuse(Full::Source)
    } else if !address_validated && (now.all >= RETRY_ABOVE || now.from_source > 0) {
        Admission::Retry
    } else {
        Admission::Accept
    }
}

/// Counts of what happened to connections that had not proved anything yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StrangerCounts {
    /// Sent a Retry to validate the address.
    pub(crate) retried: u64,
    /// Refused, a room being full.
    pub(crate) refused: u64,
    /// Closed because no valid proof arrived before the deadline, or a bad one did.
    pub(crate) failed: u64,
}

/// The connections unproven now, by source.
#[derive(Default)]
struct Slots {
    all: usize,
    strangers: usize,
    by_source: HashMap<Source, usize>,
}

/// The live state of admission: the unproven connections and the counters.
#[derive(Default)]
pub(crate) struct Gate {
    slots: Arc<Mutex<Slots>>,
    retried: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    /// Budget of the log lines about strangers (refusals, failed handshakes).
    pub(crate) log: LogBudget,
}

impl Gate {
    /// Decide for a new connection from `source`; an accepted one holds a slot until its
    /// [`Slot`] is dropped.
    pub(crate) fn admit(&self, source: Source, address_validated: bool) -> Result<Slot, Admission> {
        let mut slots = lock(&self.slots);
        let now = Unproven {
            all: slots.all,
            strangers: slots.strangers,
            from_source: slots.by_source.get(&source).copied().unwrap_or(0),
        };
        match admit(now, source.is_known(), address_validated) {
            Admission::Accept => {
                slots.all += 1;
                if !source.is_known() {
                    slots.strangers += 1;
                }
                *slots.by_source.entry(source).or_default() += 1;
                Ok(Slot {
                    slots: self.slots.clone(),
                    source,
                })
            }
            other => {
                match other {
                    Admission::Retry => &self.retried,
                    _ => &self.refused,
                }
                .fetch_add(1, Ordering::Relaxed);
                Err(other)
            }
        }
    }

    /// Count a connection that failed to prove itself.
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections between their first packet and a verified proof right now.
    pub(crate) fn unproven(&self) -> usize {
        lock(&self.slots).all
    }

    /// The counters so far.
    pub(crate) fn counts(&self) -> StrangerCounts {
        StrangerCounts {
            retried: self.retried.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// A slot of an unproven connection, released when dropped (proof verified, or the
/// connection gone).
pub(crate) struct Slot {
    slots: Arc<Mutex<Slots>>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = lock(&self.slots);
        slots.all -= 1;
        if !self.source.is_known() {
            slots.strangers -= 1;
        }
        if let Some(n) = slots.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                slots.by_source.remove(&self.source);
            }
        }
    }
}

/// Lines logged per [`LOG_PERIOD`] about strangers, at most.
const LOG_BURST: u32 = 10;
/// The period of [`LOG_BURST`].
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// At most [`LOG_BURST`] lines per [`LOG_PERIOD`]; lines beyond it are counted, and the next
/// line that gets through says how many were suppressed.
#[derive(Default)]
pub(crate) struct LogBudget(Mutex<BudgetState>);

#[derive(Default)]
struct BudgetState {
    since: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Whether a line may be logged now: `Some(lines suppressed since the last one)`.
    pub(crate) fn take(&self) -> Option<u64> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.since.is_none_or(|t| now.duration_since(t) >= LOG_PERIOD) {
            s.since = Some(now);
            s.used = 0;
        }
        if s.used < LOG_BURST {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unproven(all: usize, strangers: usize, from_source: usize) -> Unproven {
        Unproven {
            all,
            strangers,
            from_source,
        }
    }

    #[test]
    fn accept_then_retry_unvalidated_then_refuse_at_the_caps() {
        let stranger = |now| admit(now, false, true);
        assert_eq!(admit(unproven(0, 0, 0), false, false), Admission::Accept);
        assert_eq!(
            admit(unproven(RETRY_ABOVE - 1, 0, 0), false, false),
            Admission::Accept
        );
        // Validate the address above a few connections, or for a source's second one.
        assert_eq!(
            admit(unproven(RETRY_ABOVE, 0, 0), false, false),
            Admission::Retry
        );
        assert_eq!(admit(unproven(1, 1, 1), true, false), Admission::Retry);
        assert_eq!(stranger(unproven(RETRY_ABOVE, 0, 1)), Admission::Accept);
        // A source's share.
        assert_eq!(
            stranger(unproven(8, 8, MAX_PER_SOURCE)),
            Admission::Refuse(Full::Source)
        );
        assert_eq!(
            admit(unproven(8, 8, MAX_PER_SOURCE), true, true),
            Admission::Refuse(Full::Source)
        );
        // Strangers leave the reserved room to known addresses.
        let strangers_full = MAX_UNPROVEN - RESERVED_FOR_KNOWN;
        assert_eq!(
            stranger(unproven(strangers_full, strangers_full, 0)),
            Admission::Refuse(Full::Strangers)
        );
        assert_eq!(
            admit(unproven(strangers_full, strangers_full, 0), true, true),
            Admission::Accept
        );
        assert_eq!(
            admit(unproven(MAX_UNPROVEN - 1, strangers_full, 0), true, true),
            Admission::Accept
        );
        assert_eq!(
            admit(unproven(MAX_UNPROVEN, strangers_full, 0), true, true),
            Admission::Refuse(Full::All)
        );
    }

    #[test]
    fn a_source_is_a_host_or_a_known_address() {
        let v4: SocketAddr = "10.0.0.5:7947".parse().unwrap();
        let other_port: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:1".parse().unwrap();
        assert_eq!(Source::of(v4, false), Source::of(other_port, false));
        assert_eq!(Source::of(v4, false), Source::of(mapped, false));
        assert_ne!(Source::of(v4, true), Source::of(v4, false));
        assert_ne!(Source::of(v4, true), Source::of(other_port, true));
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().unwrap();
        let same_64: SocketAddr = "[2001:db8:1:2:bbbb::9]:2".parse().unwrap();
        let other_64: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(Source::of(a, false), Source::of(same_64, false));
        assert_ne!(Source::of(a, false), Source::of(other_64, false));
    }

    #[test]
    fn slots_are_counted_by_source_until_dropped_and_refusals_counted() {
        let gate = Gate::default();
        let host = |i: u8| Source::of(SocketAddr::from(([10, 0, 0, i], 1)), false);
        let known = Source::of(SocketAddr::from(([10, 0, 0, 1], 7947)), true);
        // Strangers from many hosts fill their room, a few per host.
        let mut held = Vec::new();
        for i in 0..(MAX_UNPROVEN - RESERVED_FOR_KNOWN) as u8 {
            held.push(gate.admit(host(i / 2), true).expect("room"));
        }
        assert!(matches!(
            gate.admit(host(200), true),
            Err(Admission::Refuse(Full::Strangers))
        ));
        // A known address on a host strangers use still gets in.
        let mut mine: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| gate.admit(known, true).expect("reserved room"))
            .collect();
        assert!(matches!(
            gate.admit(known, true),
            Err(Admission::Refuse(Full::Source))
        ));
        assert!(matches!(
            gate.admit(known, false),
            Err(Admission::Refuse(Full::Source))
        ));
        assert_eq!(
            gate.unproven(),
            MAX_UNPROVEN - RESERVED_FOR_KNOWN + MAX_PER_SOURCE
        );
        mine.clear();
        held.truncate(RETRY_ABOVE);
        assert!(matches!(gate.admit(host(0), false), Err(Admission::Retry)));
        drop(held);
        assert_eq!(gate.unproven(), 0);
        assert!(
            lock(&gate.slots).by_source.is_empty(),
            "nothing left behind"
        );
        gate.failed();
        assert_eq!(
            gate.counts(),
            StrangerCounts {
                retried: 1,
                refused: 3,
                failed: 1
            }
        );
    }

    #[test]
    fn log_budget_bounds_lines_and_reports_what_it_suppressed() {
        let budget = LogBudget::default();
        let t0 = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(budget.take_at(t0), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(budget.take_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(budget.take_at(t0 + LOG_PERIOD), Some(25));
        assert_eq!(budget.take_at(t0 + LOG_PERIOD), Some(0));
    }
}
