//! Presence: how many connections each user has open, reporting only the transitions.
//!
//! Guarantees: `connect` reports `true` only for a user's first connection and `disconnect`
//! only for the last, so a second tab never toggles presence and closing it never marks the
//! user offline while the first tab lives. In the shell, each user's count lives on exactly one
//! worker (chosen by hashing the user id), so counts stay exact across workers without locks.
//! Not guaranteed: a disconnect for a user never connected is ignored rather than reported.

use std::sync::Arc;

use super::table::{table, Table};

/// Connection counts per user.
#[derive(Debug)]
pub struct Presence {
    counts: Table<Arc<str>, u32>,
}

impl Default for Presence {
    fn default() -> Self {
        Self { counts: table() }
    }
}

impl Presence {
    /// Counts a new connection; `true` when the user just came online.
    pub fn connect(&mut self, user: &Arc<str>) -> bool {
        let n = self.counts.entry(user.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts a closed connection; `true` when the user just went offline.
    pub fn disconnect(&mut self, user: &str) -> bool {
        match self.counts.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(user);
                true
            }
            None => false,
        }
    }

    /// Whether the user has any connection open.
    pub fn is_online(&self, user: &str) -> bool {
        self.counts.contains_key(user)
    }

    /// Number of users online.
    pub fn online_users(&self) -> usize {
        self.counts.len()
    }
}

/// A 64-bit hash of `s` that is the same in every process and build (FNV-1a: cheap for
/// short ids). Used for presence owners and node ids.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The worker that owns `user`'s presence count, out of `workers`.
pub fn owner_of(user: &str, workers: usize) -> usize {
    (stable_hash(user) % workers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_first_open_and_last_close_are_reported() {
        let mut p = Presence::default();
        let u: Arc<str> = "u1".into();
        assert!(p.connect(&u));
        assert!(!p.connect(&u));
        assert!(!p.disconnect("u1"));
        assert!(p.is_online("u1"));
        assert!(p.disconnect("u1"));
        assert!(!p.is_online("u1"));
        assert!(!p.disconnect("u1"));
        assert_eq!(p.online_users(), 0);
    }

    #[test]
    fn owner_is_stable_and_in_range() {
        for w in 1..8 {
            let o = owner_of("user-42", w);
            assert!(o < w);
            assert_eq!(o, owner_of("user-42", w));
        }
    }
}
