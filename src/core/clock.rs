//! Four-byte timestamps for state kept per connection.
//!
//! A [`Stamp`] is a moment as whole milliseconds since an epoch (the hub's creation), in a
//! wrapping `u32`: 4 bytes where an `Instant` takes 16, which matters for fields that every
//! idle connection keeps (its last activity, its last re-fetch, its rate limit's clock).
//!
//! Guarantees: [`Stamp::since`] is exact (to the millisecond) for spans shorter than about
//! 24.8 days, whatever the uptime, because stamps wrap and differences are taken modulo 2^32;
//! whole-millisecond steps between `Instant`s give exactly those steps between their stamps
//! (stamps are floored, also before the epoch), so rules that compare a span with an interval
//! behave as they would on `Instant`s rounded down to the millisecond. A moment that is not
//! after the earlier one gives a zero span.
//! Not guaranteed: spans of 24.8 days or more (they read as zero or as a shorter span); no
//! interval kept per connection comes near that (the longest is the connection timeout).

use std::time::{Duration, Instant};

/// A moment in milliseconds since an epoch, wrapping every ~49.7 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u32);

impl Stamp {
    /// `now` on the clock that started at `epoch` (floored to the millisecond; `now` may be
    /// before `epoch`).
    pub fn at(now: Instant, epoch: Instant) -> Stamp {
        let ms = if now >= epoch {
            (now - epoch).as_millis() as i128
        } else {
            // Floor, not truncation: one millisecond step between two instants must stay one
            // step however they sit around the epoch.
            let before = (epoch - now).as_nanos() as i128;
            -((before + 999_999) / 1_000_000)
        };
        // Wrapping on purpose: only differences are read.
        Stamp(ms as u32)
    }

    /// The stamp `ms` milliseconds after the epoch (tests and callers with their own clock).
    pub const fn from_millis(ms: u32) -> Stamp {
        Stamp(ms)
    }

    /// The stamp `d` later (wrapping).
    pub fn after(self, d: Duration) -> Stamp {
        Stamp(self.0.wrapping_add(d.as_millis() as u32))
    }

    /// The stamp `d` earlier (wrapping).
    pub fn before(self, d: Duration) -> Stamp {
        Stamp(self.0.wrapping_sub(d.as_millis() as u32))
    }

    /// The time from `earlier` to this moment; zero if this moment is not after it.
    pub fn since(self, earlier: Stamp) -> Duration {
        let delta = self.0.wrapping_sub(earlier.0) as i32;
        Duration::from_millis(u64::from(delta.max(0).unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_exact_in_whole_milliseconds_around_the_epoch() {
        let epoch = Instant::now();
        for offset_ns in [0u64, 1, 300_000, 999_999, 1_000_000, 7_654_321] {
            for before in [false, true] {
                let t0 = if before {
                    epoch - Duration::from_nanos(offset_ns)
                } else {
                    epoch + Duration::from_nanos(offset_ns)
                };
                let a = Stamp::at(t0, epoch);
                let b = Stamp::at(t0 + Duration::from_secs(2), epoch);
                assert_eq!(b.since(a), Duration::from_secs(2), "{offset_ns} {before}");
            }
        }
    }

    #[test]
    fn spans_survive_the_wrap_and_backwards_reads_are_zero() {
        let late = Stamp::from_millis(u32::MAX - 500);
        let later = late.after(Duration::from_millis(1_500));
        assert_eq!(later.since(late), Duration::from_millis(1_500));
        let early = Stamp::from_millis(200).before(Duration::from_millis(1_000));
        assert_eq!(
            Stamp::from_millis(200).since(early),
            Duration::from_millis(1_000)
        );
        assert_eq!(late.since(later), Duration::ZERO);
        let day = Duration::from_secs(86_400);
        assert_eq!(late.after(day * 20).since(late), day * 20);
    }
}
