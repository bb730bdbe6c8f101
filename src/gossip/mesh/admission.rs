//! Admission of incoming mesh connections before they prove anything: how many may be in
//! that state at once, when a remote address must first be validated (QUIC Retry), when a
//! connection is refused outright, the counts of each, and a log budget so that a stranger
//! cannot flood the log.
//!
//! Pure decisions and counters; the endpoint acts on them in [`super::Mesh::serve`].

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use tokio::time::{Duration, Instant};

/// Most incoming connections that may be between their first packet and a verified proof of
/// the cluster secret at once. Each costs a QUIC connection, a TLS session and a task until
/// it proves itself or its deadline (the peer timeout) passes; a cluster's own peers need
/// one each while they connect, so 64 leaves room for a burst of a large cluster restarting.
pub(crate) const MAX_UNPROVEN: usize = 64;

/// Above this many unproven connections, a new one must first show it can receive at its
/// address (QUIC Retry): a spoofed source address then costs one stateless packet.
pub(crate) const RETRY_ABOVE: usize = MAX_UNPROVEN / 4;

/// What to do with a new incoming connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Accept it and start the handshake.
    Accept,
    /// Answer with a Retry: the client must come back from a validated address.
    Retry,
    /// Refuse it: too many connections are still proving.
    Refuse,
}

/// The decision for a new connection, given how many are unproven and whether its address
/// has been validated (it came back with a Retry token).
pub(crate) fn admit(unproven: usize, address_validated: bool) -> Admission {
    if unproven >= MAX_UNPROVEN {
        Admission::Refuse
    } else if unproven >= RETRY_ABOVE && !address_validated {
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
    /// Refused at the cap.
    pub(crate) refused: u64,
    /// Closed because no valid proof arrived before the deadline, or a bad one did.
    pub(crate) failed: u64,
}

/// The live state of admission: the unproven connections and the counters.
#[derive(Default)]
pub(crate) struct Gate {
    unproven: Arc<AtomicUsize>,
    retried: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    /// Budget of the log lines about strangers (refusals, failed handshakes).
    pub(crate) log: LogBudget,
}

impl Gate {
    /// Decide for a new connection; an accepted one holds a slot until its [`Unproven`] is
    /// dropped.
    pub(crate) fn admit(&self, address_validated: bool) -> Result<Unproven, Admission> {
        // Only the accept loop takes slots, so the check and the increment do not race
        // with another taker; releases only make room.
        let now = self.unproven.load(Ordering::Acquire);
        match admit(now, address_validated) {
            Admission::Accept => {
                self.unproven.fetch_add(1, Ordering::AcqRel);
                Ok(Unproven(self.unproven.clone()))
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
        self.unproven.load(Ordering::Acquire)
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

/// A slot among the [`MAX_UNPROVEN`], released when dropped (proof verified, or the
/// connection gone).
#[derive(Debug)]
pub(crate) struct Unproven(Arc<AtomicUsize>);

impl Drop for Unproven {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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

    #[test]
    fn accept_then_retry_unvalidated_then_refuse_at_the_cap() {
        assert_eq!(admit(0, false), Admission::Accept);
        assert_eq!(admit(RETRY_ABOVE - 1, false), Admission::Accept);
        assert_eq!(admit(RETRY_ABOVE, false), Admission::Retry);
        assert_eq!(admit(RETRY_ABOVE, true), Admission::Accept);
        assert_eq!(admit(MAX_UNPROVEN - 1, true), Admission::Accept);
        assert_eq!(admit(MAX_UNPROVEN, true), Admission::Refuse);
        assert_eq!(admit(MAX_UNPROVEN, false), Admission::Refuse);
    }

    #[test]
    fn slots_are_counted_until_dropped_and_refusals_counted() {
        let gate = Gate::default();
        let mut held: Vec<Unproven> = (0..MAX_UNPROVEN)
            .map(|_| gate.admit(true).expect("room"))
            .collect();
        assert_eq!(gate.unproven(), MAX_UNPROVEN);
        assert!(matches!(gate.admit(true), Err(Admission::Refuse)));
        assert!(matches!(gate.admit(false), Err(Admission::Refuse)));
        held.truncate(RETRY_ABOVE);
        assert_eq!(gate.unproven(), RETRY_ABOVE);
        assert!(matches!(gate.admit(false), Err(Admission::Retry)));
        drop(held);
        assert_eq!(gate.unproven(), 0);
        gate.failed();
        assert_eq!(
            gate.counts(),
            StrangerCounts {
                retried: 1,
                refused: 2,
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
