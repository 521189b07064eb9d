//! The benchmark fixture (`--bench-fixture USERS:ROOMS`), following the Bun reference peer's
//! convention: token `t<i>` (or `t<i>.<device>`, a second device of the same user) is user
//! `u<i>` named `User <i>`, member of chat `c<i mod ROOMS>`.
//!
//! Everything is in memory and answered inline on the calling worker, so a benchmark measures
//! the gateway, not a database. Messages are still stored (the last [`KEEP_PER_CHAT`] per chat,
//! in the calling worker's own memory), so the gateway does the same work per message as the
//! peer, and `chat:history` pages through them (per worker: a history request sees the
//! messages stored through its own worker). Nothing here touches real data.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, BackendError, History, NewMessage, Profile, Reply};
use crate::config::FixtureSize;
use crate::protocol::{timestamp, ChatMessage, HistoryPage};

/// Messages kept per chat (per worker), as the peer's in-memory history bound.
pub const KEEP_PER_CHAT: usize = 1000;

thread_local! {
    static HISTORY: RefCell<HashMap<String, VecDeque<ChatMessage>>> = RefCell::new(HashMap::new());
}

/// The in-memory fixture backend.
pub struct Fixture {
    size: FixtureSize,
    next_id: AtomicU64,
}

impl Fixture {
    /// A fixture of the given size.
    pub fn new(size: FixtureSize) -> Self {
        Self {
            size,
            next_id: AtomicU64::new(0),
        }
    }

    /// The user index behind a token, if the token is valid.
    fn user_index(&self, token: &str) -> Option<u64> {
        let rest = token.strip_prefix('t')?;
        let digits = rest.split_once('.').map_or(rest, |(d, _)| d);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u64>().ok().filter(|i| *i < self.size.users)
    }

    fn chat_of(&self, i: u64) -> String {
        format!("c{}", i % self.size.rooms)
    }
}

fn rejected() -> BackendError {
    BackendError::TokenRejected("Invalid token".into())
}

impl Backend for Fixture {
    fn name(&self) -> &'static str {
        "fixture"
    }

    fn authenticate(&self, token: &str) -> Reply<Profile> {
        Reply::ready(
            self.user_index(token)
                .map(|i| Profile {
                    user_id: format!("u{i}"),
                    email: String::new(),
                    name: format!("User {i}"),
                    role: "user".into(),
                })
                .ok_or_else(rejected),
        )
    }

    fn chats(&self, token: &str) -> Reply<Vec<String>> {
        Reply::ready(
            self.user_index(token)
                .map(|i| vec![self.chat_of(i)])
                .ok_or_else(rejected),
        )
    }

    fn create_message(&self, token: &str, m: NewMessage) -> Reply<ChatMessage> {
        let Some(i) = self.user_index(token) else {
            return Reply::ready(Err(rejected()));
        };
        if self.chat_of(i) != m.chat_id {
            return Reply::ready(Err(BackendError::NotParticipant(
                "Not a participant".into(),
            )));
        }
        let msg = ChatMessage {
            id: format!("m{}", self.next_id.fetch_add(1, Ordering::Relaxed)),
            chat_id: m.chat_id,
            sender_id: m.sender_id,
            sender_name: m.sender_name,
            content: m.content,
            created_at: timestamp::now(),
            client_message_id: m.client_message_id,
        };
        HISTORY.with(|h| {
            let mut h = h.borrow_mut();
            let list = h.entry(msg.chat_id.clone()).or_default();
            if list.len() == KEEP_PER_CHAT {
                list.pop_front();
            }
            list.push_back(msg.clone());
        });
        Reply::ready(Ok(msg))
    }

    fn mark_read(&self, token: &str, chat_id: &str, _message_id: &str) -> Reply<Option<String>> {
        match self.user_index(token) {
            Some(i) if self.chat_of(i) == chat_id => Reply::ready(Ok(Some(timestamp::now()))),
            Some(_) => Reply::ready(Err(BackendError::NotParticipant(
                "Not a participant".into(),
            ))),
            None => Reply::ready(Err(rejected())),
        }
    }

    fn history(&self, token: &str, chat_id: &str, page: &HistoryPage) -> Reply<History> {
        match self.user_index(token) {
            Some(i) if self.chat_of(i) == chat_id => {}
            Some(_) => {
                return Reply::ready(Err(BackendError::NotParticipant(
                    "Not a participant".into(),
                )))
            }
            None => return Reply::ready(Err(rejected())),
        }
        Reply::ready(HISTORY.with(|h| {
            let h = h.borrow();
            let list: Vec<&ChatMessage> = h
                .get(chat_id)
                .map(|l| l.iter().collect())
                .unwrap_or_default();
            page_of(&list, page)
        }))
    }

    fn probe(&self) -> Reply<()> {
        Reply::ready(Ok(()))
    }
}

/// A page of `list` (oldest first), as the store pages.
fn page_of(list: &[&ChatMessage], page: &HistoryPage) -> Result<History, BackendError> {
    let find = |id: &str| {
        list.iter()
            .position(|m| m.id == id)
            .ok_or_else(|| BackendError::InvalidRequest("Message not found in this chat".into()))
    };
    let limit = page.limit as usize;
    let (range, has_more) = match (&page.after, &page.before) {
        (Some(after), _) => {
            let start = find(after)? + 1;
            let end = (start + limit).min(list.len());
            (start..end, end < list.len())
        }
        (None, before) => {
            let end = match before {
                Some(b) => find(b)?,
                None => list.len(),
            };
            let start = end.saturating_sub(limit);
            (start..end, start > 0)
        }
    };
    Ok(History {
        messages: list[range].iter().map(|m| (*m).clone()).collect(),
        has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_peer_convention() {
        let f = Fixture::new(FixtureSize {
            users: 10,
            rooms: 3,
        });
        assert_eq!(f.user_index("t7"), Some(7));
        assert_eq!(f.user_index("t7.phone"), Some(7));
        assert_eq!(f.user_index("t10"), None);
        assert_eq!(f.user_index("t"), None);
        assert_eq!(f.user_index("x1"), None);
        assert_eq!(f.user_index("t-1"), None);
        assert_eq!(f.chat_of(7), "c1");
    }

    #[test]
    fn history_pages_like_the_store() {
        let f = Fixture::new(FixtureSize { users: 2, rooms: 1 });
        let send = |i: usize| {
            let m = NewMessage {
                chat_id: "c0".into(),
                content: format!("{i}"),
                client_message_id: None,
                sender_id: "u0".into(),
                sender_name: "User 0".into(),
            };
            futures_lite_block(f.create_message("t0", m))
                .expect("stored")
                .id
        };
        let ids: Vec<String> = (0..5).map(send).collect();
        let page = |after: Option<&str>, before: Option<&str>, limit| HistoryPage {
            after: after.map(Into::into),
            before: before.map(Into::into),
            limit,
        };
        let got = |p: HistoryPage| {
            let h = futures_lite_block(f.history("t1", "c0", &p)).expect("page");
            let c: Vec<String> = h.messages.iter().map(|m| m.content.clone()).collect();
            (c, h.has_more)
        };
        assert_eq!(
            got(page(None, None, 2)),
            (vec!["3".into(), "4".into()], true)
        );
        assert_eq!(got(page(None, Some(&ids[1]), 2)), (vec!["0".into()], false));
        assert_eq!(
            got(page(Some(&ids[1]), None, 2)),
            (vec!["2".into(), "3".into()], true)
        );
        assert_eq!(got(page(Some(&ids[3]), None, 2)), (vec!["4".into()], false));
        assert!(matches!(
            futures_lite_block(f.history("t0", "c0", &page(Some("nope"), None, 2))),
            Err(BackendError::InvalidRequest(_))
        ));
    }

    /// The fixture answers inline: its replies are complete when returned.
    fn futures_lite_block<T>(r: Reply<T>) -> Result<T, BackendError> {
        use std::future::Future;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::pin!(r).poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the fixture answers inline"),
        }
    }
}
