//! Publisher back-pressure: a sender into a chat whose readers fall behind is slowed down,
//! briefly and boundedly, so a burst is spread out instead of queued in full.
//!
//! The worker that queues a reliable event for a recipient that is over its high-water mark
//! and still draining [`Pressure::mark`]s the event's chats for [`HOLD_MS`]. The worker that
//! read a message from a sender asks [`Pressure::pause`] for the chat it published to and
//! stops reading from that sender for the answer (at most [`MAX_PAUSE_MS`] per message). The
//! table is shared by every worker, so this holds whichever workers the sender and its
//! readers are on.
//!
//! A sender that does not read while it writes (a script bursting messages, a blocking
//! client) cannot drain its own queue while it is paused, so pauses could make the stall rule
//! close the very sender they slow down. Each connection's [`PaceBudget`] therefore lets
//! pauses take at most a quarter of any stall window (`STALL_TIMEOUT`).
//!
//! Guarantees: a pause is never longer than [`MAX_PAUSE_MS`]; a sender spends at most a
//! quarter of any `STALL_TIMEOUT` window paused; pressure ends [`HOLD_MS`] after
//! the last mark, so a sender is slowed only while deliveries keep finding a draining reader
//! behind (a reader that stops draining stops marking, and the stall rule takes it). Not
//! guaranteed: exactness per chat. Chats share [`SLOTS`] slots by hash, so a chat that
//! collides with a pressed one is slowed too, by the same bounded pauses. Times are
//! milliseconds on the caller's clock (wrapping `u32`); nothing here reads a clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Slots of the table (a power of two): 16 KiB, shared by all workers.
pub const SLOTS: usize = 4096;
/// How long one mark keeps a chat pressed. Long enough that a reader a quarter of its cap
/// behind is still behind when it expires, short enough that senders resume soon after.
pub const HOLD_MS: u32 = 100;
/// Longest pause after one message: a sender into a pressed chat sends at most 20 messages
/// per second.
pub const MAX_PAUSE_MS: u32 = 50;

/// Which chats are pressed, until when.
pub struct Pressure {
    /// Deadline per slot in caller milliseconds; 0 = not pressed.
    slots: Box<[AtomicU32]>,
}

impl Default for Pressure {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

/// FNV-1a: chat ids are short, and this runs once per message read.
fn slot_of(chat: &str) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in chat.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h as usize & (SLOTS - 1)
}

impl Pressure {
    /// Presses `chat` until `now_ms + HOLD_MS`.
    pub fn mark(&self, chat: &str, now_ms: u32) {
        let until = now_ms.wrapping_add(HOLD_MS).max(1);
        let slot = &self.slots[slot_of(chat)];
        // Only write when it changes: many deliveries mark the same chat in the same ms.
        if slot.load(Ordering::Relaxed) != until {
            slot.store(until, Ordering::Relaxed);
        }
    }

    /// How long a sender that just published to `chat` should pause, if at all. `now_ms` is
    /// called only when the chat was pressed lately, so an unpressed chat costs no clock read.
    pub fn pause(&self, chat: &str, now_ms: impl FnOnce() -> u32) -> Option<Duration> {
        let slot = &self.slots[slot_of(chat)];
        let until = slot.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let left = until.wrapping_sub(now_ms()) as i32;
        if left <= 0 {
            // Expired: clear it (unless someone pressed it again meanwhile) so the next
            // message does not read the clock.
            let _ = slot.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
            return None;
        }
        Some(Duration::from_millis(u64::from(
            (left as u32).min(MAX_PAUSE_MS),
        )))
    }
}

/// How much of the current stall window a connection has spent paused (8 bytes, in every
/// connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PaceBudget {
    /// Start of the current window, caller milliseconds.
    window_start: u32,
    /// Milliseconds paused in it.
    spent: u32,
}

impl PaceBudget {
    /// Whether a pause of `pause_ms` may be taken now, within windows of `window_ms` of which
    /// at most a quarter may be spent paused; counts it if so.
    pub fn take(&mut self, now_ms: u32, pause_ms: u32, window_ms: u32) -> bool {
        if now_ms.wrapping_sub(self.window_start) >= window_ms {
            *self = PaceBudget {
                window_start: now_ms,
                spent: 0,
            };
        }
        if self.spent.saturating_add(pause_ms) > window_ms / 4 {
            return false;
        }
        self.spent += pause_ms;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpressed_chat_needs_no_clock_and_no_pause() {
        let p = Pressure::default();
        assert_eq!(p.pause("general", || panic!("clock read")), None);
    }

    #[test]
    fn a_mark_pauses_senders_until_it_expires_and_never_longer_than_the_bound() {
        let p = Pressure::default();
        p.mark("general", 1000);
        assert_eq!(
            p.pause("general", || 1000),
            Some(Duration::from_millis(u64::from(HOLD_MS.min(MAX_PAUSE_MS))))
        );
        assert_eq!(
            p.pause("general", || 1000 + HOLD_MS - MAX_PAUSE_MS - 7),
            Some(Duration::from_millis(u64::from(MAX_PAUSE_MS))),
            "never longer than the bound"
        );
        assert_eq!(
            p.pause("general", || 1000 + HOLD_MS - 3),
            Some(Duration::from_millis(3))
        );
        assert_eq!(p.pause("general", || 1000 + HOLD_MS), None);
        // Cleared once seen expired: no clock read afterwards.
        assert_eq!(p.pause("general", || panic!("clock read")), None);
    }

    #[test]
    fn marks_survive_the_clock_wrapping() {
        let p = Pressure::default();
        p.mark("general", u32::MAX - 2);
        assert!(p.pause("general", || u32::MAX).is_some());
        assert!(p.pause("general", || 3).is_some());
        assert_eq!(p.pause("general", || HOLD_MS), None);
    }

    #[test]
    fn pauses_take_at_most_a_quarter_of_any_window() {
        let mut b = PaceBudget::default();
        let window = 1000;
        let mut now = 5;
        let mut taken = 0;
        for _ in 0..100 {
            if b.take(now, 50, window) {
                taken += 50;
            }
            now += 1;
        }
        assert_eq!(taken, 250, "a quarter of the window, then no more");
        assert!(!b.take(now, 50, window));
        // The next window starts afresh.
        assert!(b.take(now + window, 50, window));
    }

    #[test]
    fn other_chats_are_not_pressed_unless_they_share_a_slot() {
        let p = Pressure::default();
        p.mark("general", 50);
        let unrelated = (0..100)
            .map(|i| format!("chat-{i}"))
            .find(|c| slot_of(c) != slot_of("general"))
            .expect("a chat in another slot");
        assert_eq!(p.pause(&unrelated, || 50), None);
    }
}
