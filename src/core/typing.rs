//! Typing indicators with deadlines, in the quinn-proto style: `start`/`stop` record state,
//! `poll_timeout` says when the next one expires, `handle_timeout(now)` returns the expired.
//!
//! Guarantees: an indicator renewed before its deadline moves its deadline; one that is
//! stopped never expires later; each expiry is reported once. The caller broadcasts the
//! `isTyping:false` for expired keys.
//! Not guaranteed / not here: no timer or clock of its own (an indicator expires only when the
//! caller passes a later `now` to `handle_timeout`), and no bound on the number of keys.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Active typing indicators keyed by `K` (a connection and a chat, in the shell).
#[derive(Debug)]
pub struct Typing<K> {
    timeout: Duration,
    deadlines: BTreeSet<(Instant, K)>,
    active: HashMap<K, Instant>,
}

impl<K: Clone + Ord + Hash> Typing<K> {
    /// Indicators expire `timeout` after their last `start`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadlines: BTreeSet::new(),
            active: HashMap::new(),
        }
    }

    /// Starts or renews an indicator; returns `true` if it was not active before.
    pub fn start(&mut self, key: K, now: Instant) -> bool {
        let deadline = now + self.timeout;
        let fresh = match self.active.insert(key.clone(), deadline) {
            Some(old) => {
                self.deadlines.remove(&(old, key.clone()));
                false
            }
            None => true,
        };
        self.deadlines.insert((deadline, key));
        fresh
    }

    /// Stops an indicator; returns `true` if it was active.
    pub fn stop(&mut self, key: &K) -> bool {
        match self.active.remove(key) {
            Some(deadline) => {
                self.deadlines.remove(&(deadline, key.clone()));
                true
            }
            None => false,
        }
    }

    /// When the earliest active indicator expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Removes and returns every indicator whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<K> {
        let mut expired = Vec::new();
        while let Some((t, _)) = self.deadlines.first() {
            if *t > now {
                break;
            }
            if let Some((_, key)) = self.deadlines.pop_first() {
                self.active.remove(&key);
                expired.push(key);
            }
        }
        expired
    }

    /// Number of active indicators.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether no indicator is active.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_after_timeout_and_renewal_moves_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Typing::new(ms(3000));
        assert!(t.start("a", t0));
        assert_eq!(t.poll_timeout(), Some(t0 + ms(3000)));
        assert!(!t.start("a", t0 + ms(1000)));
        assert!(t.handle_timeout(t0 + ms(3000)).is_empty());
        assert_eq!(t.handle_timeout(t0 + ms(4000)), vec!["a"]);
        assert!(t.is_empty());
        assert!(t.handle_timeout(t0 + ms(9000)).is_empty());
    }

    #[test]
    fn stopped_indicators_never_expire() {
        let t0 = Instant::now();
        let mut t = Typing::new(Duration::from_millis(10));
        t.start(1, t0);
        t.start(2, t0);
        assert!(t.stop(&1));
        assert!(!t.stop(&1));
        assert_eq!(t.handle_timeout(t0 + Duration::from_secs(1)), vec![2]);
        assert_eq!(t.poll_timeout(), None);
    }
}
