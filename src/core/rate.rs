//! A per-connection message rate limit: a token bucket, driven by an explicit `now`.
//!
//! The bucket holds up to `burst` tokens and refills at `rate` per second; each client message
//! takes one. A message finding the bucket empty is rejected (`RATE_LIMITED`). Rejections are
//! remembered: a connection that collects `burst` rejections without a pause (the bucket never
//! recovering to full) is abusive and is closed (4029). A rate of 0 disables the limit.

use std::time::Instant;

/// What to do with one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the limit.
    Allowed,
    /// Over the limit: answer `RATE_LIMITED`, drop the message.
    Rejected,
    /// Far over the limit for too long: close the connection.
    Abusive,
}

/// A token bucket with a memory of rejections.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
}

impl RateLimit {
    /// `rate` messages per second sustained, `burst` at once; full at `now`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
            strikes: 0,
        }
    }

    /// Admits (or not) one message arriving at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        if self.rate == 0.0 {
            return Admission::Allowed;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= self.burst {
            self.strikes = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admission::Allowed;
        }
        self.strikes += 1;
        if f64::from(self.strikes) > self.burst {
            Admission::Abusive
        } else {
            Admission::Rejected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, 5, t0);
        for _ in 0..5 {
            assert_eq!(r.admit(t0), Admission::Allowed);
        }
        assert_eq!(r.admit(t0), Admission::Rejected);
        // 100 ms later one token is back.
        assert_eq!(r.admit(t0 + Duration::from_millis(100)), Admission::Allowed);
        assert_eq!(
            r.admit(t0 + Duration::from_millis(100)),
            Admission::Rejected
        );
    }

    #[test]
    fn sustained_abuse_is_reported_and_a_pause_forgives() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, 3, t0);
        let verdicts: Vec<Admission> = (0..7).map(|_| r.admit(t0)).collect();
        assert_eq!(&verdicts[..3], &[Admission::Allowed; 3]);
        assert_eq!(&verdicts[3..6], &[Admission::Rejected; 3]);
        assert_eq!(verdicts[6], Admission::Abusive);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(r.admit(later), Admission::Allowed);
        assert_eq!(r.admit(later), Admission::Allowed);
    }

    #[test]
    fn zero_rate_disables() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(0, 0, t0);
        assert!((0..1000).all(|_| r.admit(t0) == Admission::Allowed));
    }
}
