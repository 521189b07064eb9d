//! The stall rule: progress, not queue size, tells a slow reader from a stuck one.
//!
//! A connection's writer counts the bytes its socket accepts. The worker looks at every
//! connection once per check period (`STALL_TIMEOUT` / [`PASSES`]): a connection with bytes
//! waiting whose counter has not moved for [`PASSES`] looks in a row is stuck, and is closed;
//! one whose counter moved is alive, whatever its client sent lately (a client draining a long
//! backlog cannot answer a ping queued behind it, so accepted bytes count as liveness).
//! Guarantees: a stuck connection is detected between `STALL_TIMEOUT` and `STALL_TIMEOUT` plus
//! one period after its last progress; nothing waiting, never stuck. Not here: measuring time
//! (the caller's period does), and what a close means.

/// Looks in a row without progress that make a connection stuck.
pub const PASSES: u8 = 4;

/// One connection's stall state (a few bytes: it lives in every connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StallWatch {
    /// The written-bytes counter at the last look (wrapping; only change matters).
    mark: u32,
    /// Looks in a row with bytes waiting and no progress.
    still: u8,
}

/// What a look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Nothing waiting.
    Idle,
    /// The socket accepted bytes since the last look: the client is reading.
    Progress,
    /// Bytes waiting, no progress yet, not long enough to be stuck.
    Waiting,
    /// Bytes waiting and no progress for [`PASSES`] looks: close it.
    Stuck,
}

impl StallWatch {
    /// Whether the connection counts as draining for the budget: its counter moved since the
    /// last look, or the last look did not find it waiting without progress.
    pub fn draining(&self, written: u32) -> bool {
        written != self.mark || self.still == 0
    }

    /// One look: `written` is the connection's counter of accepted bytes, `pending` whether
    /// bytes wait to be written.
    pub fn look(&mut self, written: u32, pending: bool) -> Look {
        let moved = written != self.mark;
        self.mark = written;
        if moved {
            self.still = 0;
            return Look::Progress;
        }
        if !pending {
            self.still = 0;
            return Look::Idle;
        }
        self.still = self.still.saturating_add(1);
        if self.still >= PASSES {
            Look::Stuck
        } else {
            Look::Waiting
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_only_after_passes_without_progress_while_bytes_wait() {
        let mut w = StallWatch::default();
        assert_eq!(w.look(0, false), Look::Idle);
        for _ in 1..PASSES {
            assert_eq!(w.look(0, true), Look::Waiting);
        }
        assert_eq!(w.look(0, true), Look::Stuck);
    }

    #[test]
    fn draining_until_a_look_finds_no_progress() {
        let mut w = StallWatch::default();
        assert!(w.draining(0));
        w.look(0, true);
        assert!(!w.draining(0), "waiting without progress");
        assert!(w.draining(7), "bytes went out since");
    }

    #[test]
    fn any_progress_resets_and_counts_as_alive() {
        let mut w = StallWatch::default();
        for _ in 1..PASSES {
            w.look(100, true);
        }
        assert_eq!(
            w.look(101, true),
            Look::Progress,
            "one more byte is progress"
        );
        for _ in 1..PASSES {
            assert_eq!(w.look(101, true), Look::Waiting);
        }
        // Nothing waiting in between also resets.
        assert_eq!(w.look(101, false), Look::Idle);
        assert_eq!(w.look(101, true), Look::Waiting);
        // The counter wraps; only change matters.
        assert_eq!(w.look(u32::MAX.wrapping_add(5), true), Look::Progress);
    }
}
