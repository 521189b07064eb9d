//! Open-loop send schedule for the latency scenario (coordinated-omission safe).
//!
//! Guarantees:
//! - Message `k` (counting from 0 over all senders) is *scheduled* at
//!   `start + round(k * 1e9 / rate)` ns, for `k` while that time is before `end`: the total
//!   rate is exact and does not drift, whatever the timers do.
//! - Message `k` belongs to sender `k mod senders`, so each sender sends every `senders`-th
//!   slot and the merged stream is evenly spaced.
//! - [`Schedule::due_for_sender`] says how many of a sender's messages are due at a time, so a
//!   sender that woke late sends all it owes at once, each stamped with its *scheduled* time.
//!   Latency is then measured from the scheduled time: a stall (in the server, or in this
//!   tool) shows up in the latency of every message it delayed, not only the first.

/// Nanoseconds since the process-wide epoch (a monotonic clock), the unit of every timestamp.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The process-wide epoch behind [`now_ns`].
pub fn epoch() -> std::time::Instant {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// A fixed-rate schedule shared by `senders` senders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Time of message 0, ns since the epoch.
    pub start_ns: u64,
    /// No message is scheduled at or after this time.
    pub end_ns: u64,
    /// Messages per second, all senders together.
    pub rate: f64,
    /// Number of senders.
    pub senders: u64,
}

impl Schedule {
    /// A schedule of `rate` msgs/s from `start_ns` until `end_ns`.
    pub fn new(start_ns: u64, end_ns: u64, rate: f64, senders: u64) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        assert!(senders > 0, "at least one sender");
        Self {
            start_ns,
            end_ns,
            rate,
            senders,
        }
    }

    /// Scheduled time of global message `k`.
    pub fn due_ns(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * 1e9 / self.rate).round() as u64
    }

    /// Number of messages in the whole schedule.
    pub fn total(&self) -> u64 {
        self.count_before(self.end_ns)
    }

    /// How many messages are scheduled strictly before `t_ns`.
    pub fn count_before(&self, t_ns: u64) -> u64 {
        if t_ns <= self.start_ns {
            return 0;
        }
        // Estimate, then correct for rounding at the boundary.
        let mut k = (((t_ns - self.start_ns) as f64) * self.rate / 1e9).floor() as u64;
        while k > 0 && self.due_ns(k - 1) >= t_ns {
            k -= 1;
        }
        while self.due_ns(k) < t_ns {
            k += 1;
        }
        k
    }

    /// How many messages are due at `now_ns` (scheduled at or before it), capped at the end.
    pub fn due_by(&self, now_ns: u64) -> u64 {
        self.count_before(now_ns.saturating_add(1).min(self.end_ns))
    }

    /// Sender of global message `k`.
    pub fn sender_of(&self, k: u64) -> u64 {
        k % self.senders
    }

    /// Global index of sender `i`'s `j`-th message.
    pub fn global_index(&self, i: u64, j: u64) -> u64 {
        j * self.senders + i
    }

    /// How many of sender `i`'s messages are due at `now_ns`.
    pub fn due_for_sender(&self, i: u64, now_ns: u64) -> u64 {
        let due = self.due_by(now_ns);
        if due > i {
            (due - i).div_ceil(self.senders)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_over_senders() {
        let s = Schedule::new(1_000, u64::MAX, 1000.0, 4);
        // Global slots every 1 ms; sender i owns slots i, i+4, ...
        for k in 0..100 {
            assert_eq!(s.due_ns(k), 1_000 + k * 1_000_000);
            assert_eq!(s.sender_of(k), k % 4);
        }
        assert_eq!(s.global_index(2, 3), 14);
        assert_eq!(s.due_ns(s.global_index(2, 3)), 1_000 + 14_000_000);
    }

    #[test]
    fn due_counts() {
        let s = Schedule::new(0, 10_000_000_000, 1000.0, 4);
        assert_eq!(s.due_by(0), 1); // message 0 is due at start
        assert_eq!(s.due_by(999_999), 1);
        assert_eq!(s.due_by(1_000_000), 2);
        assert_eq!(s.due_by(4_500_000), 5);
        // Per sender at t = 4.5 ms: slots 0..=4 due -> sender 0 owns 0 and 4.
        assert_eq!(s.due_for_sender(0, 4_500_000), 2);
        assert_eq!(s.due_for_sender(1, 4_500_000), 1);
        assert_eq!(s.due_for_sender(3, 4_500_000), 1);
        assert_eq!(s.due_for_sender(3, 2_500_000), 0);
        // The senders' shares add up to the total at every instant.
        for t in (0..20_000_000u64).step_by(333_333) {
            let sum: u64 = (0..4).map(|i| s.due_for_sender(i, t)).sum();
            assert_eq!(sum, s.due_by(t), "t={t}");
        }
    }

    #[test]
    fn total_matches_rate_times_duration_without_drift() {
        let s = Schedule::new(5, 5 + 10_000_000_000, 3125.0, 8);
        assert_eq!(s.total(), 31_250);
        // A late wake-up sees every owed message at once, each with its own scheduled time.
        assert_eq!(s.due_by(5 + 1_000_000_000), 3126);
        assert_eq!(s.due_by(u64::MAX), 31_250);
        let s = Schedule::new(0, 1_000_000_000, 7.0, 3);
        assert_eq!(s.total(), 7);
        assert_eq!(s.due_ns(6), 857_142_857);
        assert_eq!(s.count_before(857_142_857), 6);
        assert_eq!(s.count_before(857_142_858), 7);
    }

    #[test]
    fn fractional_and_high_rates() {
        let s = Schedule::new(0, 2_000_000_000, 0.5, 1);
        assert_eq!(s.total(), 1);
        let s = Schedule::new(0, 1_000_000_000, 3_000_000.0, 32);
        assert_eq!(s.total(), 3_000_000);
        let per_sender: u64 = (0..32).map(|i| s.due_for_sender(i, u64::MAX)).sum();
        assert_eq!(per_sender, 3_000_000);
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
