//! A circuit breaker for the REST API, sans-IO (explicit `now`).
//!
//! Closed: calls go through; `threshold` consecutive failures (timeouts, unreachable, 5xx)
//! open it. Open: calls fail fast with `HTTP_ERROR` for `cooldown`, so a dead API costs the
//! gateway nothing and is not hammered. Half-open: after the cooldown one probe call goes
//! through; success closes the breaker, failure opens it for another cooldown. Client errors
//! (4xx) are answers, not failures: they never trip it.
//!
//! Guarantees: with `threshold` 0 it never opens; half-open lets exactly one call through until
//! its outcome is recorded; a recorded success always closes it and resets the count.
//! Not guaranteed / not here: no locking (`&mut self`: the caller serialises), no clock, and no
//! judgement of outcomes (the caller decides what a failure is). A probe whose outcome is never
//! recorded leaves it half-open, refusing every call.

use std::time::{Duration, Instant};

/// The breaker's state, as exported in metrics (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through.
    Closed = 0,
    /// Calls fail fast until the cooldown ends.
    Open = 1,
    /// One probe is in flight.
    HalfOpen = 2,
}

/// Counts failures and decides whether a call may go out.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: State,
    opened_at: Option<Instant>,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures (0 disables), for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            failures: 0,
            state: State::Closed,
            opened_at: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call may go out at `now`. In half-open state only the first caller (the
    /// probe) is let through.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::HalfOpen => false,
            State::Open => {
                let cooled = self
                    .opened_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.cooldown);
                if cooled {
                    self.state = State::HalfOpen;
                }
                cooled
            }
        }
    }

    /// Records the outcome of a call that was allowed.
    pub fn record(&mut self, success: bool, now: Instant) {
        if success {
            self.failures = 0;
            self.state = State::Closed;
            self.opened_at = None;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let trip = self.threshold > 0 && self.failures >= self.threshold;
        if self.state == State::HalfOpen || trip {
            self.state = State::Open;
            self.opened_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_fails_fast_then_probes_back() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Breaker::new(3, s(5));
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.record(false, t0);
        }
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow(t0));
        b.record(false, t0);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow(t0 + s(4)));
        // Cooldown over: exactly one probe.
        assert!(b.allow(t0 + s(5)));
        assert!(!b.allow(t0 + s(5)));
        b.record(false, t0 + s(5));
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow(t0 + s(9)));
        assert!(b.allow(t0 + s(10)));
        b.record(true, t0 + s(10));
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow(t0 + s(10)));
    }

    #[test]
    fn successes_reset_the_count_and_zero_disables() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        assert_eq!(b.state(), State::Closed);
        let mut off = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            off.record(false, t0);
        }
        assert!(off.allow(t0));
    }
}
