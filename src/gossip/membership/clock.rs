//! The clock of sealed gossip: wall-clock milliseconds that never go back.
//!
//! A sealed datagram carries the time it was sent, and a receiver refuses one sent too long
//! ago; the replays it remembers are forgotten once that long has passed. Were the time
//! read from the wall clock as is, a step back of the clock would make datagrams sent
//! minutes ago, long forgotten, look fresh again. So the clock follows the wall clock
//! forward (steps included), and when the wall clock goes back it runs on from where it
//! was, by the monotonic clock, until the wall clock catches up.

use std::{
    sync::Mutex,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

/// Milliseconds since the Unix epoch, never going back.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    last: Mutex<Option<Reading>>,
}

/// The last time told, and when (by the monotonic clock).
#[derive(Clone, Copy, Debug)]
struct Reading {
    ms: u64,
    at: Instant,
}

impl Clock {
    /// The time now.
    pub(crate) fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.at(wall, Instant::now())
    }

    /// The time when the wall clock says `wall_ms` at `now` (monotonic).
    pub(crate) fn at(&self, wall_ms: u64, now: Instant) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let ms = match *last {
            Some(r) => {
                let ran = now.saturating_duration_since(r.at).as_millis() as u64;
                wall_ms.max(r.ms.saturating_add(ran))
            }
            None => wall_ms,
        };
        *last = Some(Reading { ms, at: now });
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn follows_the_wall_clock_forward_and_never_goes_back() {
        let clock = Clock::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(clock.at(1_000_000, t0), 1_000_000);
        assert_eq!(clock.at(1_001_000, t0 + s), 1_001_000);
        // A step forward is taken.
        assert_eq!(clock.at(1_301_000, t0 + 2 * s), 1_301_000);
        // A step back of 120 s is not: the clock runs on by the monotonic clock...
        assert_eq!(clock.at(1_182_000, t0 + 3 * s), 1_302_000);
        assert_eq!(clock.at(1_183_000, t0 + 4 * s), 1_303_000);
        // ... until the wall clock catches up.
        assert_eq!(clock.at(1_400_000, t0 + 5 * s), 1_400_000);
        // The monotonic clock itself never goes back.
        assert_eq!(clock.at(0, t0), 1_400_000);
    }
}
