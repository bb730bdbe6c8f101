//! Log lines that a peer or a client can trigger at will, bounded in rate: at most one per
//! period is written, with how many were held back since the previous one.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// One kind of log line, written at most once per period.
#[derive(Debug)]
pub(crate) struct RateLog {
    period: Duration,
    /// When the last line was written, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLog {
    /// At most one line per `period`.
    pub(crate) const fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the previous line)` when a line may be written now; `None`
    /// (and counted) otherwise.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, held) = &mut *state;
        match last {
            Some(t) if now.saturating_duration_since(*t) < self.period => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let log = RateLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.allow_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(log.allow_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(log.allow_at(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(log.allow_at(t0 + Duration::from_secs(11)), None);
    }
}
