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
    members: Table<Arc<str>, Members<K>>,
}

/// The local members of one room, in join order until one leaves. Most rooms have one or two
/// local connections (a direct chat; a room with one member per worker), so up to two are
/// kept inline: no allocation for them, and 16 bytes in the table's bucket for `u32` keys,
/// where a `Vec` took 24 and a 16-byte allocation (measured: the idle-memory benchmark, one
/// room per connection, in BENCHMARKS.md). Larger rooms keep a boxed `Vec`, 8 bytes inline.
#[derive(Debug)]
enum Members<K> {
    /// `len` (1 or 2) keys; a slot past `len` repeats the first key and means nothing.
    Inline { len: u8, keys: [K; 2] },
    /// Three or more. The `Vec` is boxed so that this variant is one pointer and the enum 16
    /// bytes; its extra allocation is shared by three members or more.
    #[allow(clippy::box_collection)]
    Heap(Box<Vec<K>>),
}

// The point of the type: a bucket of the rooms table is a 16-byte key and this.
const _: () = assert!(std::mem::size_of::<Members<u32>>() == 16);

impl<K: Copy> Members<K> {
    fn one(k: K) -> Self {
        Members::Inline {
            len: 1,
            keys: [k, k],
        }
    }

    fn as_slice(&self) -> &[K] {
        match self {
            Members::Inline { len, keys } => &keys[..usize::from(*len)],
            Members::Heap(list) => list,
        }
    }

    fn push(&mut self, k: K) {
        match self {
            Members::Inline { len: 1, keys } => {
                keys[1] = k;
                *self = Members::Inline {
                    len: 2,
                    keys: *keys,
                };
            }
            Members::Inline { keys, .. } => {
                *self = Members::Heap(Box::new(vec![keys[0], keys[1], k]));
            }
            Members::Heap(list) => list.push(k),
        }
    }

    /// Removes the key at `i` (the last takes its place); whether none is left.
    fn swap_remove(&mut self, i: usize) -> bool {
        match self {
            Members::Inline { len, keys } => {
                if i == 0 {
                    keys[0] = keys[1];
                }
                *len -= 1;
                *len == 0
            }
            Members::Heap(list) => {
                list.swap_remove(i);
                if let [a, b] = list[..] {
                    // Back inline: a room that shrank frees its list.
                    *self = Members::Inline {
                        len: 2,
                        keys: [a, b],
                    };
                }
                false
            }
        }
    }
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
        match self.members.get_mut(&**chat) {
            Some(list) if list.as_slice().contains(&conn) => false,
            Some(list) => {
                list.push(conn);
                false
            }
            None => {
                self.members.insert(chat.clone(), Members::one(conn));
                true
            }
        }
    }

    /// Removes `conn` from `chat`; drops the room when it empties and returns `true` then.
    pub fn leave(&mut self, chat: &str, conn: K) -> bool {
        let Some(list) = self.members.get_mut(chat) else {
            return false;
        };
        let Some(i) = list.as_slice().iter().position(|c| *c == conn) else {
            return false;
        };
        if list.swap_remove(i) {
            self.members.remove(chat);
            return true;
        }
        false
    }

    /// The local members of `chat`.
    pub fn members(&self, chat: &str) -> &[K] {
        self.members.get(chat).map(Members::as_slice).unwrap_or(&[])
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
    fn rooms_grow_past_two_members_and_shrink_back_in_any_order() {
        let mut r = Rooms::default();
        let a: Arc<str> = "a".into();
        for k in 1..=5 {
            assert_eq!(r.join(&a, k), k == 1);
        }
        assert!(!r.join(&a, 4), "already in");
        assert_eq!(collect(&r, &["a"], None), vec![1, 2, 3, 4, 5]);
        for (gone, left) in [
            (2, vec![1, 3, 4, 5]),
            (5, vec![1, 3, 4]),
            (1, vec![3, 4]),
            (9, vec![3, 4]),
            (3, vec![4]),
        ] {
            assert!(!r.leave("a", gone));
            assert_eq!(collect(&r, &["a"], None), left, "after {gone} left");
        }
        assert!(!r.join(&a, 6) && !r.join(&a, 7));
        assert_eq!(collect(&r, &["a"], None), vec![4, 6, 7]);
        for k in [4, 7] {
            assert!(!r.leave("a", k));
        }
        assert!(r.leave("a", 6), "the room closes with its last member");
        assert!(r.is_empty());
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
