//! What a receiver remembers of the sealed datagrams it opened, to refuse them a second
//! time. Pure: no I/O; the caller passes the time (of [`super::clock::Clock`], which never
//! goes back).
//!
//! Each sender seals under a session of its own and numbers its datagrams (see
//! [`super::seal`]). Per session the receiver keeps the highest number opened and which of
//! the [`WINDOW`] numbers below it were opened (the sliding window of IPsec and WireGuard):
//! a number below the window, or one already in it, is a replay. A session is forgotten
//! once it sent nothing for longer than a datagram stays fresh ([`FRESH_MS`]): every
//! datagram of it opened before is stale by then, and stays stale, since the time never
//! goes back. When [`MAX_SESSIONS`] are remembered, the one silent longest is forgotten,
//! and datagrams of sessions not remembered must have been sent after its last one.

use std::collections::HashMap;

/// How far a datagram's sending time may be from the receiver's time (nodes' clocks must
/// agree within this; keep NTP).
pub(crate) const FRESH_MS: u64 = 60_000;
/// Numbers of a session remembered below its highest one.
pub(crate) const WINDOW: u64 = 1_024;
/// Sessions remembered at most (one per node process that sent to this node recently).
pub(crate) const MAX_SESSIONS: usize = 4_096;

/// A session: 16 random bytes drawn by a sender when it starts.
pub(crate) type Session = [u8; 16];

/// Why a datagram is a replay, or too old to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Opened before.
    Replayed,
    /// Sent too long ago (or too far ahead) for the window or the receiver's time.
    Stale,
}

/// The numbers of one session seen: bit `i` of the window is number `top - i`.
#[derive(Clone, Debug)]
struct Window {
    top: u64,
    bits: [u64; (WINDOW / 64) as usize],
    /// The latest sending time of the session opened.
    last_sent: u64,
}

impl Window {
    fn new(counter: u64, sent: u64) -> Self {
        let mut bits = [0; (WINDOW / 64) as usize];
        bits[0] = 1;
        Self {
            top: counter,
            bits,
            last_sent: sent,
        }
    }

    fn check(&self, counter: u64) -> Result<(), Seen> {
        if counter > self.top {
            return Ok(());
        }
        let back = self.top - counter;
        if back >= WINDOW {
            return Err(Seen::Stale);
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        if self.bits[word] & (1 << bit) != 0 {
            Err(Seen::Replayed)
        } else {
            Ok(())
        }
    }

    fn record(&mut self, counter: u64, sent: u64) {
        self.last_sent = self.last_sent.max(sent);
        if counter > self.top {
            self.shift(counter - self.top);
            self.top = counter;
        }
        let back = self.top - counter;
        if back < WINDOW {
            self.bits[(back / 64) as usize] |= 1 << (back % 64);
        }
    }

    /// Move the window up by `by` numbers.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = [0; (WINDOW / 64) as usize];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..self.bits.len()).rev() {
            let from = |j: usize| i.checked_sub(j).map_or(0, |k| self.bits[k]);
            let high = from(words);
            let low = if bits == 0 {
                0
            } else {
                from(words + 1) >> (64 - bits)
            };
            self.bits[i] = (high << bits) | low;
        }
    }
}

/// The sessions a receiver heard from, and what each sent.
#[derive(Debug, Default)]
pub(crate) struct Replays {
    sessions: HashMap<Session, Window>,
    /// Datagrams of sessions not remembered must have been sent after this (the last
    /// sending time of the sessions forgotten to make room).
    floor: u64,
    /// Records since the last sweep of silent sessions.
    since_sweep: usize,
}

impl Replays {
    /// Whether datagram `counter` of `session`, sent at `sent`, may be opened at `now`.
    /// Nothing is recorded: see [`record`](Self::record), once it opened.
    pub(crate) fn check(
        &self,
        session: &Session,
        counter: u64,
        sent: u64,
        now: u64,
    ) -> Result<(), Seen> {
        if now.abs_diff(sent) > FRESH_MS {
            return Err(Seen::Stale);
        }
        match self.sessions.get(session) {
            Some(w) => w.check(counter),
            None if sent <= self.floor => Err(Seen::Stale),
            None => Ok(()),
        }
    }

    /// Remember that datagram `counter` of `session`, sent at `sent`, opened at `now`.
    pub(crate) fn record(&mut self, session: &Session, counter: u64, sent: u64, now: u64) {
        if let Some(w) = self.sessions.get_mut(session) {
            w.record(counter, sent);
            return;
        }
        self.since_sweep += 1;
        if self.sessions.len() >= MAX_SESSIONS || self.since_sweep >= 256 {
            self.since_sweep = 0;
            self.sessions
                .retain(|_, w| now.saturating_sub(w.last_sent) <= FRESH_MS);
        }
        if self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, w)| w.last_sent)
                .map(|(s, w)| (*s, w.last_sent));
            if let Some((s, last_sent)) = oldest {
                self.sessions.remove(&s);
                self.floor = self.floor.max(last_sent);
            }
        }
        self.sessions.insert(*session, Window::new(counter, sent));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_number_opens_once_and_the_window_slides() {
        let mut r = Replays::default();
        let s = [1; 16];
        for n in [5, 3, 4, 2_000, 1_500] {
            assert_eq!(r.check(&s, n, NOW, NOW), Ok(()), "{n}");
            r.record(&s, n, NOW, NOW);
            assert_eq!(r.check(&s, n, NOW, NOW), Err(Seen::Replayed), "{n}");
        }
        assert_eq!(
            r.check(&s, 4, NOW, NOW),
            Err(Seen::Stale),
            "below the window"
        );
        assert_eq!(r.check(&s, 2_000 - WINDOW + 1, NOW, NOW), Ok(()));
        assert_eq!(r.check(&[2; 16], 4, NOW, NOW), Ok(()), "another session");
    }

    #[test]
    fn stale_datagrams_and_forgotten_sessions() {
        let mut r = Replays::default();
        let s = [1; 16];
        assert_eq!(r.check(&s, 0, NOW - FRESH_MS - 1, NOW), Err(Seen::Stale));
        assert_eq!(r.check(&s, 0, NOW + FRESH_MS + 1, NOW), Err(Seen::Stale));
        r.record(&s, 0, NOW, NOW);
        // Long silent sessions are swept; their datagrams are stale by then.
        let later = NOW + FRESH_MS + 1;
        for i in 0..300u32 {
            let mut other = [0; 16];
            other[..4].copy_from_slice(&i.to_be_bytes());
            r.record(&other, 0, later, later);
        }
        assert!(!r.sessions.contains_key(&s));
        assert_eq!(r.check(&s, 0, NOW, later), Err(Seen::Stale));
    }

    #[test]
    fn sessions_are_bounded_and_forgetting_one_reopens_nothing() {
        let mut r = Replays::default();
        let first = [0xff; 16];
        r.record(&first, 7, NOW, NOW);
        for i in 0..MAX_SESSIONS as u32 {
            let mut s = [0; 16];
            s[..4].copy_from_slice(&i.to_be_bytes());
            r.record(&s, 0, NOW + 1, NOW + 1);
        }
        assert_eq!(r.len(), MAX_SESSIONS);
        assert!(!r.sessions.contains_key(&first), "the oldest went");
        assert_eq!(r.check(&first, 7, NOW, NOW + 1), Err(Seen::Stale));
        assert_eq!(
            r.check(&first, 8, NOW + 2, NOW + 2),
            Ok(()),
            "its new datagrams open"
        );
    }

    proptest! {
        /// Against a plain set of every number opened: the window never lets one open twice,
        /// and refuses a fresh one only when it is more than the window below the highest.
        #[test]
        fn the_window_agrees_with_a_set(numbers in proptest::collection::vec(0u64..5_000, 1..400)) {
            let mut r = Replays::default();
            let mut seen = std::collections::HashSet::new();
            let mut top = None::<u64>;
            let s = [9; 16];
            for n in numbers {
                let verdict = r.check(&s, n, NOW, NOW);
                if seen.contains(&n) {
                    prop_assert!(verdict.is_err());
                } else if top.is_some_and(|t| n + WINDOW <= t) {
                    prop_assert_eq!(verdict, Err(Seen::Stale));
                } else {
                    prop_assert_eq!(verdict, Ok(()));
                    r.record(&s, n, NOW, NOW);
                    seen.insert(n);
                    top = Some(top.map_or(n, |t| t.max(n)));
                }
            }
        }
    }
}
