//! One connection's rules after authentication: which chats it may act in, when it may re-fetch
//! its chat list, and whether it is still alive.
//!
//! The session decides; the shell carries out. A command for a chat the connection is not
//! known to be in triggers one re-fetch of the user's chats (so chats created after connect
//! work), at most once per `refetch_interval`; only if the chat is still missing is the answer
//! `NOT_PARTICIPANT`. A `NOT_PARTICIPANT` from the backend for a chat the session knows may
//! mean the user was removed from it: the shell then re-fetches the list too (same budget), and
//! the re-fetched list decides which rooms the connection stays in. Liveness: any frame from the client counts as activity; the heartbeat
//! either pings or, after `connection_timeout` of silence, closes.
//!
//! Frames that arrive before authentication finishes are not read from the socket until it
//! finishes, so they wait in order in the kernel's receive buffer (bounded by it, applying TCP
//! back-pressure) and are processed afterwards; nothing is answered with 4001 for arriving early.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::Stamp;
use super::pressure::PaceBudget;
use super::rate::{Admission, RateLimit, RateRule};
use crate::protocol::Command;

/// The authenticated user behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id from the backend.
    pub id: Arc<str>,
    /// Display name.
    pub name: Arc<str>,
}

/// What to do with a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Carry it out.
    Execute(Command),
    /// Re-fetch the user's chats, then call [`Session::after_refetch`] with the command.
    Refetch(Command),
    /// Answer `NOT_PARTICIPANT`.
    NotParticipant(Command),
}

/// What the heartbeat should do for this connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Send a WebSocket ping.
    Ping,
    /// The client has been silent too long: close it.
    Expire,
}

/// Server API membership changes, in order: `(chat, joined)`.
type ApiChanges = Vec<(Arc<str>, bool)>;

/// Per-connection state after authentication.
#[derive(Debug)]
pub struct Session {
    user: User,
    /// A boxed slice, not a `Vec`: 8 bytes less in every session; it changes only on joins,
    /// leaves and re-fetches, which rebuild it.
    chats: Box<[Arc<str>]>,
    /// When the last re-fetch started; at creation, one `refetch_interval` before it, so the
    /// first may start at once (4 bytes where an `Option` took 8).
    last_refetch: Stamp,
    last_seen: Stamp,
    rate: RateLimit,
    /// Server API joins (`true`) and leaves made while a re-fetch is out: the fetched list
    /// predates them, so they are applied on top of it. Boxed: 8 bytes per idle connection
    /// instead of 24, for a list that exists only while a re-fetch is out.
    since_refetch: Option<Box<ApiChanges>>,
    /// How much of the current stall window publisher back-pressure paused this sender.
    paced: PaceBudget,
}

/// The change in chat membership after a re-fetch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// Chats the connection must join.
    pub joined: Vec<Arc<str>>,
    /// Chats the connection must leave.
    pub left: Vec<Arc<str>>,
}

/// The rules every session of a hub follows. The same for all of them, so the hub keeps one
/// copy and hands it in (48 bytes per connection fewer than a copy in each session).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Least time between two re-fetches of the chat list.
    pub refetch_interval: Duration,
    /// Silence after which the heartbeat expires the connection.
    pub connection_timeout: Duration,
    /// The message rate limit.
    pub rate: RateRule,
    /// Where the sessions' clock starts: they keep moments as 4-byte [`Stamp`]s from here.
    pub epoch: Instant,
}

impl Rules {
    fn stamp(&self, now: Instant) -> Stamp {
        Stamp::at(now, self.epoch)
    }
}

impl Session {
    /// A session for `user` in `chats`, seen at `now`, under `rules`.
    pub fn new(user: User, chats: Vec<Arc<str>>, now: Instant, rules: &Rules) -> Self {
        Self {
            rate: RateLimit::new(rules.rate, rules.stamp(now)),
            user,
            chats: chats.into_boxed_slice(),
            last_refetch: rules.stamp(now).before(rules.refetch_interval),
            last_seen: rules.stamp(now),
            since_refetch: None,
            paced: PaceBudget::default(),
        }
    }

    /// The user.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// The chats the connection is in.
    pub fn chats(&self) -> &[Arc<str>] {
        &self.chats
    }

    /// Whether the connection is known to be in `chat`.
    pub fn is_member(&self, chat: &str) -> bool {
        self.chats.iter().any(|c| &**c == chat)
    }

    /// Decides what to do with a validated command.
    pub fn decide(&mut self, cmd: Command, now: Instant, rules: &Rules) -> Decision {
        let Some(chat) = cmd.chat_id() else {
            return Decision::Execute(cmd);
        };
        if self.is_member(chat) {
            return Decision::Execute(cmd);
        }
        if self.start_refetch(now, rules) {
            Decision::Refetch(cmd)
        } else {
            Decision::NotParticipant(cmd)
        }
    }

    /// Whether a re-fetch of the chat list may start at `now` (at most one per
    /// `refetch_interval`); if so, it counts as started.
    pub fn start_refetch(&mut self, now: Instant, rules: &Rules) -> bool {
        let now = rules.stamp(now);
        let allowed = now.since(self.last_refetch) >= rules.refetch_interval;
        if allowed {
            self.last_refetch = now;
            self.since_refetch = Some(Box::default());
        }
        allowed
    }

    /// Applies a re-fetched chat list; returns which rooms to join and leave. Server API joins
    /// and leaves made since the re-fetch started win over the (older) fetched list.
    pub fn refetched(&mut self, mut chats: Vec<Arc<str>>) -> MembershipChange {
        for (chat, joined) in self.since_refetch.take().map(|b| *b).unwrap_or_default() {
            let at = chats.iter().position(|c| *c == chat);
            match (joined, at) {
                (true, None) => chats.push(chat),
                (false, Some(i)) => {
                    chats.swap_remove(i);
                }
                _ => {}
            }
        }
        let joined = chats
            .iter()
            .filter(|c| !self.chats.contains(c))
            .cloned()
            .collect();
        let left = self
            .chats
            .iter()
            .filter(|c| !chats.contains(c))
            .cloned()
            .collect();
        self.chats = chats.into_boxed_slice();
        MembershipChange { joined, left }
    }

    /// Adds `chat` (the server API added the user to it); `false` if already in it.
    pub fn join(&mut self, chat: &Arc<str>) -> bool {
        if self.is_member(chat) {
            return false;
        }
        let mut chats = std::mem::take(&mut self.chats).into_vec();
        chats.push(chat.clone());
        self.chats = chats.into_boxed_slice();
        if let Some(log) = &mut self.since_refetch {
            log.push((chat.clone(), true));
        }
        true
    }

    /// Removes `chat` (the server API removed the user from it); the shared id it was stored
    /// under (the rooms are keyed by it), or `None` if it was not in it.
    pub fn leave(&mut self, chat: &str) -> Option<Arc<str>> {
        let i = self.chats.iter().position(|c| &**c == chat)?;
        let mut chats = std::mem::take(&mut self.chats).into_vec();
        let left = chats.swap_remove(i);
        self.chats = chats.into_boxed_slice();
        if let Some(log) = &mut self.since_refetch {
            log.push((left.clone(), false));
        }
        Some(left)
    }

    /// Decides again after a re-fetch: execute if the chat is now known, else reject.
    pub fn after_refetch(&self, cmd: Command) -> Decision {
        match cmd.chat_id() {
            Some(chat) if !self.is_member(chat) => Decision::NotParticipant(cmd),
            _ => Decision::Execute(cmd),
        }
    }

    /// Applies the rate limit to one client message arriving at `now`.
    pub fn admit(&mut self, now: Instant, rules: &Rules) -> Admission {
        self.rate.admit(rules.rate, rules.stamp(now))
    }

    /// Whether this sender may be paused for `pause_ms` now (`core::pressure`): at most a
    /// quarter of any `window_ms` window; counts the pause if so. Milliseconds on the
    /// caller's wrapping clock.
    pub fn take_pause(&mut self, now_ms: u32, pause_ms: u32, window_ms: u32) -> bool {
        self.paced.take(now_ms, pause_ms, window_ms)
    }

    /// Records activity from the client (any frame, including pongs).
    pub fn seen(&mut self, now: Instant, rules: &Rules) {
        self.last_seen = rules.stamp(now);
    }

    /// What the periodic heartbeat should do.
    pub fn heartbeat(&self, now: Instant, rules: &Rules) -> Heartbeat {
        if rules.stamp(now).since(self.last_seen) >= rules.connection_timeout {
            Heartbeat::Expire
        } else {
            Heartbeat::Ping
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' rules. The epoch is whenever this is first called, so some tests run their
    /// moments before it and some after: both must behave the same.
    fn rules() -> Rules {
        static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        Rules {
            refetch_interval: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(60),
            rate: RateRule::ONE_PER_SECOND,
            epoch: *EPOCH,
        }
    }

    fn session(now: Instant) -> Session {
        Session::new(
            User {
                id: "u1".into(),
                name: "Ann".into(),
            },
            vec!["c1".into()],
            now,
            &rules(),
        )
    }

    #[test]
    fn refetches_are_spaced_by_the_interval_whoever_asks() {
        let now = Instant::now();
        let mut s = session(now);
        assert!(s.start_refetch(now, &rules()));
        assert!(!s.start_refetch(now + Duration::from_secs(1), &rules()));
        // A command for an unknown chat shares the same budget.
        assert_eq!(
            s.decide(msg("c9"), now + Duration::from_secs(1), &rules()),
            Decision::NotParticipant(msg("c9"))
        );
        assert!(s.start_refetch(now + Duration::from_secs(2), &rules()));
    }

    fn msg(chat: &str) -> Command {
        Command::SendMessage {
            chat_id: chat.into(),
            content: "x".into(),
            client_message_id: None,
        }
    }

    #[test]
    fn known_chats_execute_and_ping_needs_no_chat() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(
            s.decide(msg("c1"), t0, &rules()),
            Decision::Execute(msg("c1"))
        );
        assert_eq!(
            s.decide(Command::Ping, t0, &rules()),
            Decision::Execute(Command::Ping)
        );
    }

    #[test]
    fn unknown_chat_refetches_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut s = session(t0);
        // The first unknown chat always re-fetches; the next one waits for the interval.
        assert_eq!(
            s.decide(msg("c2"), t0, &rules()),
            Decision::Refetch(msg("c2"))
        );
        assert_eq!(
            s.decide(msg("c2"), t0, &rules()),
            Decision::NotParticipant(msg("c2"))
        );
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            s.decide(msg("c2"), t1, &rules()),
            Decision::Refetch(msg("c2"))
        );
        let change = s.refetched(vec!["c2".into()]);
        assert_eq!(change.joined, vec![Arc::<str>::from("c2")]);
        assert_eq!(change.left, vec![Arc::<str>::from("c1")]);
        assert_eq!(s.after_refetch(msg("c2")), Decision::Execute(msg("c2")));
        assert_eq!(
            s.after_refetch(msg("c1")),
            Decision::NotParticipant(msg("c1"))
        );
    }

    #[test]
    fn chats_joined_and_left_one_at_a_time() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let c2: Arc<str> = "c2".into();
        assert!(s.join(&c2));
        assert!(!s.join(&c2), "joining twice is a no-op");
        assert_eq!(
            s.decide(msg("c2"), t0, &rules()),
            Decision::Execute(msg("c2"))
        );
        assert_eq!(s.leave("c1").as_deref(), Some("c1"));
        assert_eq!(s.leave("c1"), None);
        assert_eq!(s.chats(), &[c2]);
    }

    #[test]
    fn api_changes_during_a_refetch_win_over_the_older_list() {
        let t0 = Instant::now();
        let mut s = session(t0); // in c1
        assert!(s.start_refetch(t0, &rules()));
        // While the fetch is out, the backend's API removes c1 and adds c3.
        assert!(s.leave("c1").is_some());
        assert!(s.join(&"c3".into()));
        // The fetch answers with the list from before those changes.
        let change = s.refetched(vec!["c1".into(), "c2".into()]);
        let mut chats: Vec<&str> = s.chats().iter().map(|c| &**c).collect();
        chats.sort();
        assert_eq!(chats, vec!["c2", "c3"]);
        assert_eq!(change.joined, vec![Arc::<str>::from("c2")]);
        assert!(
            change.left.is_empty(),
            "c1 was already left, c3 stays: {change:?}"
        );
        // Outside a re-fetch nothing is recorded: the next list is taken as it is.
        assert!(s.join(&"c9".into()));
        assert!(s.start_refetch(t0 + Duration::from_secs(2), &rules()));
        let change = s.refetched(vec!["c2".into()]);
        assert_eq!(s.chats(), &[Arc::<str>::from("c2")]);
        assert_eq!(change.left.len(), 2);
    }

    #[test]
    fn messages_past_the_rate_are_refused() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(s.admit(t0, &rules()), Admission::Allowed);
        assert_eq!(s.admit(t0, &rules()), Admission::Rejected);
        assert_eq!(s.admit(t0, &rules()), Admission::Abusive);
    }

    #[test]
    fn silence_past_the_timeout_expires() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(
            s.heartbeat(t0 + Duration::from_secs(59), &rules()),
            Heartbeat::Ping
        );
        s.seen(t0 + Duration::from_secs(30), &rules());
        assert_eq!(
            s.heartbeat(t0 + Duration::from_secs(89), &rules()),
            Heartbeat::Ping
        );
        assert_eq!(
            s.heartbeat(t0 + Duration::from_secs(90), &rules()),
            Heartbeat::Expire
        );
    }
}
