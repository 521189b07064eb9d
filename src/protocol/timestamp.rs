//! Timestamps as the seed writes them: RFC 3339, UTC, milliseconds (`2024-01-01T12:00:00.000Z`).
//!
//! Guarantees: always UTC, with exactly three fractional digits and a `Z` suffix.
//! Not guaranteed: monotonicity: [`now`] reads the wall clock (`SystemTime`), which can step
//! backwards, so two timestamps taken in sequence are not necessarily increasing.

use std::time::SystemTime;

/// Formats a wall-clock time the way JavaScript's `toISOString()` does.
pub fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The current wall-clock time, formatted.
pub fn now() -> String {
    rfc3339_millis(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn matches_javascript_to_iso_string() {
        let t = UNIX_EPOCH + Duration::from_millis(1_704_110_400_123);
        assert_eq!(rfc3339_millis(t), "2024-01-01T12:00:00.123Z");
    }
}
