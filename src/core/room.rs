//! Room membership on one worker: chat id → the local connections in it.
//!
//! Guarantees: a fan-out over several rooms reaches each connection once; a connection can be
//! excluded (the sender of a typing event). Membership is local to one worker: other workers
//! keep their own, and events reach them through their mailboxes.

use std::hash::Hash;
use std::sync::Arc;

use super::table::{table, Table};

/// Members of each chat, for one worker.
#[derive(Debug)]
pub struct Rooms<K> {
    members: Table<Arc<str>, Vec<K>>,
}

impl<K> Default for Rooms<K> {
    fn default() -> Self {
        Self { members: table() }
    }
}

impl<K: Copy + Eq + Ord + Hash> Rooms<K> {
    /// Adds `conn` to `chat` (no-op if already in it); `true` if it is the room's first
    /// member here (the room just opened).
    pub fn join(&mut self, chat: &Arc<str>, conn: K) -> bool {
        let list = self.members.entry(chat.clone()).or_default();
        if list.contains(&conn) {
            return false;
        }
        list.push(conn);
        list.len() == 1
    }

    /// Removes `conn` from `chat`; drops the room when it empties and returns `true` then.
    pub fn leave(&mut self, chat: &str, conn: K) -> bool {
        let Some(list) = self.members.get_mut(chat) else {
            return false;
        };
        let Some(i) = list.iter().position(|c| *c == conn) else {
            return false;
        };
        list.swap_remove(i);
        if list.is_empty() {
            self.members.remove(chat);
            return true;
        }
        false
    }

    /// The local members of `chat`.
    pub fn members(&self, chat: &str) -> &[K] {
        self.members.get(chat).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of rooms with at least one local member.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no room has a local member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Calls `deliver` once for every connection in any of `chats`, except `exclude`.
    /// `scratch` is reused between calls to avoid allocating on the common path.
    pub fn for_each_member(
        &self,
        chats: &[Arc<str>],
        exclude: Option<K>,
        scratch: &mut Vec<K>,
        mut deliver: impl FnMut(K),
    ) {
        if let [chat] = chats {
            // One room: members are already unique.
            for &k in self.members(chat) {
                if Some(k) != exclude {
                    deliver(k);
                }
            }
            return;
        }
        scratch.clear();
        for chat in chats {
            scratch.extend_from_slice(self.members(chat));
        }
        scratch.sort_unstable();
        scratch.dedup();
        for &k in scratch.iter() {
            if Some(k) != exclude {
                deliver(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(r: &Rooms<u32>, chats: &[&str], exclude: Option<u32>) -> Vec<u32> {
        let chats: Vec<Arc<str>> = chats.iter().map(|c| Arc::from(*c)).collect();
        let mut out = Vec::new();
        r.for_each_member(&chats, exclude, &mut Vec::new(), |k| out.push(k));
        out.sort();
        out
    }

    #[test]
    fn fan_out_reaches_each_member_once() {
        let mut r = Rooms::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        r.join(&a, 1);
        r.join(&a, 2);
        r.join(&a, 2);
        r.join(&b, 2);
        r.join(&b, 3);
        assert_eq!(collect(&r, &["a"], None), vec![1, 2]);
        assert_eq!(collect(&r, &["a", "b"], None), vec![1, 2, 3]);
        assert_eq!(collect(&r, &["a", "b"], Some(2)), vec![1, 3]);
        assert_eq!(collect(&r, &["a"], Some(1)), vec![2]);
    }

    #[test]
    fn leaving_the_last_member_drops_the_room() {
        let mut r = Rooms::default();
        let a: Arc<str> = "a".into();
        assert!(r.join(&a, 1), "the room opens with its first member");
        assert!(
            !r.join(&a, 1),
            "a second join of the same member opens nothing"
        );
        assert!(r.leave("a", 1), "the room closes with its last member");
        assert!(!r.leave("a", 1));
        assert!(!r.leave("missing", 1));
        assert!(r.is_empty());
        assert!(r.members("a").is_empty());
    }
}
