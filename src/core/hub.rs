//! The hub: every chat rule of one worker, sans-IO.
//!
//! A worker's connections, the rooms they are in, their typing indicators, the presence counts
//! of the users this worker owns and each connection's [`Session`] live here. The shell feeds
//! the hub explicit inputs, each with an explicit `now`:
//! - a connection opened ([`Hub::open`]) or closed ([`Hub::close`]);
//! - a frame arrived ([`Hub::seen`]), a message passed or failed the rate limit
//!   ([`Hub::admit`]), a parsed command ([`Hub::command`]) or an invalid one ([`Hub::reject`]);
//! - a backend reply to a call the hub asked for ([`Hub::reply`]);
//! - a presence change from the bus ([`Hub::presence`]);
//! - a server API change ([`Hub::join`], [`Hub::leave`]);
//! - a timeout ([`Hub::handle_timeout`], when [`Hub::poll_timeout`] said).
//!
//! It answers with [`Effect`]s, taken with [`Hub::poll`] right after each input (send a frame,
//! publish to rooms, close, count a presence change at the user's owner, open or close a
//! room's interest), and with a [`Step`] for the one connection whose command it handles: done,
//! call the backend and hand the answer back, or pace the sender. One command never needs more
//! than one backend call in flight, so the shell's read loop awaits each step in turn and a
//! connection's commands are carried out in arrival order.
//!
//! Guarantees: `connected` is the first frame of a connection and no room event precedes it;
//! only typing excludes its sender; a typing indicator ends (for the others) when it expires,
//! when the connection leaves the chat or when it closes, exactly once; presence reports only
//! a user's first open and last close on the owner; nothing is announced while draining.
//! Not here: frames on the wire, the bus, the clock (the shell passes `now` and a wall clock).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use super::event::EventKind;
use super::history;
use super::presence::Presence;
use super::rate::{Admission, RateRule};
use super::room::Rooms;
use super::session::{Decision, Heartbeat, Rules, Session, User};
use super::typing::Typing;
use crate::protocol::outbound::Outbound;
use crate::protocol::{ChatMessage, CloseCode, Command, ErrorCode, HistoryRequest};

/// The hub's rules, in the units they are enforced in.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long a typing indicator lasts without a renewal (`TYPING_TIMEOUT`).
    pub typing_timeout: Duration,
    /// How often every connection is pinged (`HEARTBEAT_INTERVAL`).
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is closed 4000 (`CONNECTION_TIMEOUT`).
    pub connection_timeout: Duration,
    /// Least time between two re-fetches of a user's chat list (`CHATS_REFETCH_INTERVAL`).
    pub refetch_interval: Duration,
    /// Messages per second per connection; 0 turns the limit off (`RATE_LIMIT`).
    pub rate_limit: u32,
    /// Burst over the rate (`RATE_BURST`).
    pub rate_burst: u32,
    /// Most bytes of one `chat:history` answer (half the outbox cap: it is one frame).
    pub history_budget: usize,
}

/// What the shell must do, in the order the hub says.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Queue `frame` for one connection (reliable).
    Send {
        /// The connection.
        conn: usize,
        /// A complete frame.
        frame: Bytes,
    },
    /// Queue a WebSocket ping for one connection (may be dropped if it is behind).
    Ping {
        /// The connection.
        conn: usize,
    },
    /// Answer one connection with an error frame (and count it).
    Error {
        /// The connection.
        conn: usize,
        /// The wire code.
        code: ErrorCode,
        /// The text.
        message: String,
        /// The upstream HTTP status, when there is one.
        status: Option<u16>,
    },
    /// Close one connection with `code` (after what is queued).
    Close {
        /// The connection.
        conn: usize,
        /// The close code.
        code: CloseCode,
    },
    /// Deliver to the local members of `rooms` (but `exclude`) and to every other worker.
    Publish {
        /// Target chats.
        rooms: Vec<Arc<str>>,
        /// The encoded frame.
        frame: Bytes,
        /// A local connection that must not get it.
        exclude: Option<usize>,
        /// What it is.
        kind: EventKind,
    },
    /// A user's connection opened or closed: count it at the user's owner.
    Presence(PresenceChange),
    /// This worker's first member of `room` joined (`true`) or its last left (`false`).
    Interest {
        /// The chat.
        room: Arc<str>,
        /// Opened or closed.
        joined: bool,
    },
}

/// A user's connection opened or closed, for the user's presence owner to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The user.
    pub user: Arc<str>,
    /// The chats to announce a transition in (the connection's chats).
    pub chats: Vec<Arc<str>>,
    /// Opened or closed.
    pub opened: bool,
}

/// What the connection that sent a command waits for next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing: read the next frame.
    Done,
    /// Make this backend call, then hand its answer to [`Hub::reply`].
    Call(Call),
    /// Pause reading this sender if a reader of `chat` asked for it (publisher back-pressure).
    Pace(Arc<str>),
}

/// A backend call the hub asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// Re-fetch the user's chats, then carry out `then` (a command for a chat the session did
    /// not know), or only apply the list (`None`: a `NOT_PARTICIPANT` for a known chat).
    Chats {
        /// The command waiting for the list.
        then: Option<Command>,
    },
    /// Store a message.
    CreateMessage {
        /// The chat.
        chat: Arc<str>,
        /// The text.
        content: String,
        /// The client's own id for it.
        client_message_id: Option<String>,
        /// The sender.
        sender: User,
    },
    /// Record a read receipt.
    MarkRead {
        /// The chat.
        chat: Arc<str>,
        /// The message read.
        message_id: String,
    },
    /// Read a page of history.
    History(Box<HistoryRequest>),
}

/// A successful backend answer, by call.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The user's chat ids.
    Chats(Vec<String>),
    /// The stored message.
    Created(ChatMessage),
    /// When the message was read, if the backend says.
    Read(Option<String>),
    /// A page of messages, oldest first.
    History {
        /// The messages.
        messages: Vec<ChatMessage>,
        /// Whether older (or newer) ones remain.
        has_more: bool,
    },
}

/// A failed backend call, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The wire code.
    pub code: ErrorCode,
    /// The text.
    pub message: String,
    /// The upstream HTTP status, when there is one.
    pub status: Option<u16>,
}

/// One connection in the hub: its session and the shell's handle for it.
#[derive(Debug)]
pub struct Member<T> {
    session: Session,
    /// The shell's handle (its queues).
    pub io: T,
}

impl<T> Member<T> {
    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The user.
    pub fn user(&self) -> &User {
        self.session.user()
    }

    /// Records activity from the client, under the hub's `rules` ([`Hub::rules`]).
    pub fn seen(&mut self, now: Instant, rules: &Rules) {
        self.session.seen(now, rules);
    }

    /// Whether this sender may be paused for `pause_ms` now; see [`Session::take_pause`].
    pub fn take_pause(&mut self, now_ms: u32, pause_ms: u32, window_ms: u32) -> bool {
        self.session.take_pause(now_ms, pause_ms, window_ms)
    }
}

/// The chat rules of one worker; `T` is the shell's per-connection handle.
pub struct Hub<T> {
    config: HubConfig,
    /// The sessions' rules, from `config`, kept once.
    rules: Rules,
    conns: Slab<Member<T>>,
    /// Room members by [`room_key`]: 4 bytes each, so a room's first members fit a 16-byte
    /// allocation (rooms with one or two members, direct messages, are common).
    rooms: Rooms<u32>,
    typing: Typing<(usize, Arc<str>)>,
    presence: Presence,
    effects: VecDeque<Effect>,
    draining: bool,
    next_heartbeat: Instant,
    wall: fn() -> String,
    scratch: Vec<u32>,
}

impl<T> Hub<T> {
    /// An empty hub at `now`; `wall` gives the wall-clock timestamp of `pong` and of read
    /// receipts the backend did not date.
    pub fn new(config: HubConfig, now: Instant, wall: fn() -> String) -> Self {
        Self {
            typing: Typing::new(config.typing_timeout),
            next_heartbeat: now + config.heartbeat_interval,
            rules: Rules {
                refetch_interval: config.refetch_interval,
                connection_timeout: config.connection_timeout,
                rate: RateRule::new(config.rate_limit, config.rate_burst),
                epoch: now,
            },
            config,
            conns: Slab::new(),
            rooms: Rooms::default(),
            presence: Presence::default(),
            effects: VecDeque::new(),
            draining: false,
            wall,
            scratch: Vec::new(),
        }
    }

    /// The next effect to carry out.
    pub fn poll(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// One connection.
    pub fn get(&self, conn: usize) -> Option<&Member<T>> {
        self.conns.get(conn)
    }

    /// The rules every session here follows.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// One connection, to update.
    pub fn get_mut(&mut self, conn: usize) -> Option<&mut Member<T>> {
        self.conns.get_mut(conn)
    }

    /// Every connection.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Member<T>)> {
        self.conns.iter()
    }

    /// Every connection, to record activity.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Member<T>)> {
        self.conns.iter_mut()
    }

    /// Calls `deliver` once for every local member of `rooms` but `exclude`.
    pub fn for_each_member(
        &mut self,
        rooms: &[Arc<str>],
        exclude: Option<usize>,
        mut deliver: impl FnMut(usize, &Member<T>),
    ) {
        let conns = &self.conns;
        self.rooms
            .for_each_member(rooms, exclude.map(room_key), &mut self.scratch, |key| {
                let slot = key as usize;
                if let Some(m) = conns.get(slot) {
                    deliver(slot, m);
                }
            });
    }

    /// From now on nothing is announced: every connection is about to be closed anyway.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// An authenticated connection opens: `connected` first, then its rooms, then its
    /// presence. Returns its id.
    pub fn open(&mut self, user: User, chats: Vec<Arc<str>>, io: T, now: Instant) -> usize {
        let slot = self.conns.vacant_key();
        let frame = Outbound::Connected {
            user_id: &user.id,
            chat_ids: &chats,
        }
        .to_frame();
        self.effects.push_back(Effect::Send { conn: slot, frame });
        for chat in &chats {
            self.join_room(chat, slot);
        }
        self.effects.push_back(Effect::Presence(PresenceChange {
            user: user.id.clone(),
            chats: chats.clone(),
            opened: true,
        }));
        let session = Session::new(user, chats, now, &self.rules);
        self.conns.insert(Member { session, io })
    }

    /// A connection closes: it leaves its rooms, its typing indicators end for the others and
    /// its presence is counted down (neither announced while draining). Returns its handle.
    pub fn close(&mut self, conn: usize) -> Option<T> {
        let member = self.conns.try_remove(conn)?;
        let session = member.session;
        for chat in session.chats() {
            self.leave_room(chat, conn);
        }
        for chat in session.chats() {
            if self.typing.stop(&(conn, chat.clone())) && !self.draining {
                self.typing_stopped(session.user(), chat.clone(), None);
            }
        }
        if !self.draining {
            self.effects.push_back(Effect::Presence(PresenceChange {
                user: session.user().id.clone(),
                chats: session.chats().to_vec(),
                opened: false,
            }));
        }
        Some(member.io)
    }

    /// A frame arrived from the client (any frame counts as alive).
    pub fn seen(&mut self, conn: usize, now: Instant) {
        if let Some(m) = self.conns.get_mut(conn) {
            m.session.seen(now, &self.rules);
        }
    }

    /// The rate limit for one complete message: `true` if it may be handled; otherwise the
    /// answer (`RATE_LIMITED`, and 4029 for sustained abuse) is queued.
    pub fn admit(&mut self, conn: usize, now: Instant) -> bool {
        let Some(m) = self.conns.get_mut(conn) else {
            return false;
        };
        match m.session.admit(now, &self.rules) {
            Admission::Allowed => true,
            Admission::Rejected => {
                self.error(conn, ErrorCode::RateLimited, "Too many messages; slow down");
                false
            }
            Admission::Abusive => {
                tracing::warn!(user_id = %m.session.user().id, "Rate limit abuse, closing");
                self.error(conn, ErrorCode::RateLimited, "Too many messages");
                self.effects.push_back(Effect::Close {
                    conn,
                    code: CloseCode::RateLimited,
                });
                false
            }
        }
    }

    /// A message that is not a valid command: answered with its code.
    pub fn reject(&mut self, conn: usize, code: ErrorCode, message: String) {
        self.failed(
            conn,
            Failure {
                code,
                message,
                status: None,
            },
        );
    }

    /// A valid command, after the membership rule: carried out, or first a re-fetch of the
    /// chat list (at most one per `refetch_interval`), or `NOT_PARTICIPANT`.
    pub fn command(&mut self, conn: usize, cmd: Command, now: Instant) -> Step {
        let Some(m) = self.conns.get_mut(conn) else {
            return Step::Done;
        };
        match m.session.decide(cmd, now, &self.rules) {
            Decision::Execute(cmd) => self.execute(conn, cmd, now),
            Decision::Refetch(cmd) => Step::Call(Call::Chats { then: Some(cmd) }),
            Decision::NotParticipant(_) => {
                self.not_participant(conn);
                Step::Done
            }
        }
    }

    /// The backend's answer to `call`, made for `conn`.
    pub fn reply(
        &mut self,
        conn: usize,
        call: Call,
        answer: Result<Answer, Failure>,
        now: Instant,
    ) -> Step {
        if !self.conns.contains(conn) {
            return Step::Done;
        }
        match (call, answer) {
            (Call::Chats { then }, Ok(Answer::Chats(chats))) => {
                self.refetched(conn, chats);
                let Some(cmd) = then else {
                    return Step::Done;
                };
                match self.conns[conn].session.after_refetch(cmd) {
                    Decision::Execute(cmd) => self.execute(conn, cmd, now),
                    _ => {
                        self.not_participant(conn);
                        Step::Done
                    }
                }
            }
            // A re-fetch only to verify membership: its failure changes nothing.
            (Call::Chats { then: None }, Err(_)) => Step::Done,
            (Call::Chats { then: Some(_) }, Err(e)) => {
                self.failed(conn, e);
                Step::Done
            }
            (Call::CreateMessage { sender, .. }, Ok(Answer::Created(m))) => {
                self.message_stored(conn, &sender, &m)
            }
            (Call::MarkRead { chat, message_id }, Ok(Answer::Read(read_at))) => {
                self.read_recorded(conn, chat, &message_id, read_at)
            }
            (Call::History(req), Ok(Answer::History { messages, has_more })) => {
                self.history_page(conn, &req, messages, has_more)
            }
            (Call::CreateMessage { chat, .. } | Call::MarkRead { chat, .. }, Err(e)) => {
                self.chat_failed(conn, &chat, e, now)
            }
            (Call::History(req), Err(e)) => self.chat_failed(conn, &req.chat_id, e, now),
            (call, Ok(answer)) => {
                // A backend that answers a call with another call's shape: a bug upstream of
                // the hub, told to the client as an internal error rather than guessed at.
                tracing::error!(?call, ?answer, "Backend answer does not match its call");
                self.error(conn, ErrorCode::InternalError, "Internal error");
                Step::Done
            }
        }
    }

    /// A stored message goes to its chat, the sender's devices included; then the sender is
    /// paced.
    fn message_stored(&mut self, conn: usize, sender: &User, m: &ChatMessage) -> Step {
        tracing::debug!(user_id = %sender.id, chat_id = %m.chat_id, message_id = %m.id, "Message sent");
        let frame = Outbound::ChatMessage {
            chat_id: &m.chat_id,
            message: m,
        }
        .to_frame();
        let room = self.chat_arc(conn, &m.chat_id);
        self.publish(room.clone(), frame, None, EventKind::Message);
        Step::Pace(room)
    }

    /// A recorded receipt goes to its chat (dated now if the backend did not say when); then
    /// the sender is paced.
    fn read_recorded(
        &mut self,
        conn: usize,
        chat: Arc<str>,
        message_id: &str,
        read_at: Option<String>,
    ) -> Step {
        let user = self.conns[conn].session.user();
        // The seed's fallback when the API does not say when.
        let read_at = read_at.unwrap_or_else(self.wall);
        tracing::debug!(user_id = %user.id, chat_id = %chat, message_id = %message_id, "Read receipt");
        let frame = Outbound::ChatRead {
            chat_id: &chat,
            message_id,
            user_id: &user.id,
            read_at: &read_at,
        }
        .to_frame();
        self.publish(chat.clone(), frame, None, EventKind::Read);
        Step::Pace(chat)
    }

    /// A page of history, cut to one frame well under the cap, to the asker only.
    fn history_page(
        &mut self,
        conn: usize,
        req: &HistoryRequest,
        mut messages: Vec<ChatMessage>,
        mut has_more: bool,
    ) -> Step {
        let budget = self.config.history_budget;
        history::fit(&req.page, &mut messages, &mut has_more, budget);
        let frame = Outbound::ChatHistory {
            chat_id: &req.chat_id,
            messages: &messages,
            has_more,
            request_id: req.request_id.as_deref(),
        }
        .to_frame();
        self.effects.push_back(Effect::Send { conn, frame });
        Step::Done
    }

    /// A presence change for a user this worker owns: `user:online` in the user's chats on
    /// the first open and the last close.
    pub fn presence(&mut self, change: PresenceChange) {
        let changed = if change.opened {
            self.presence.connect(&change.user)
        } else {
            self.presence.disconnect(&change.user)
        };
        if changed && !self.draining && !change.chats.is_empty() {
            tracing::debug!(user_id = %change.user, online = change.opened, "Presence changed");
            let frame = Outbound::UserOnline {
                user_id: &change.user,
                online: change.opened,
            }
            .to_frame();
            self.effects.push_back(Effect::Publish {
                rooms: change.chats,
                frame,
                exclude: None,
                kind: EventKind::Presence,
            });
        }
    }

    /// The server API added the user of `conn` to `chat`: `frame` (`chat:new`) first, then
    /// every event of the chat. `false` if it was in it already.
    pub fn join(&mut self, conn: usize, chat: &Arc<str>, frame: &Bytes) -> bool {
        let Some(m) = self.conns.get_mut(conn) else {
            return false;
        };
        if !m.session.join(chat) {
            return false;
        }
        self.effects.push_back(Effect::Send {
            conn,
            frame: frame.clone(),
        });
        self.join_room(chat, conn);
        true
    }

    /// The server API removed the user of `conn` from `chat`: nothing of the chat after
    /// `frame` (`chat:removed`). `false` if it was not in it.
    pub fn leave(&mut self, conn: usize, chat: &str, frame: &Bytes) -> bool {
        let Some(m) = self.conns.get_mut(conn) else {
            return false;
        };
        let Some(stored) = m.session.leave(chat) else {
            return false;
        };
        self.left(conn, &stored);
        self.effects.push_back(Effect::Send {
            conn,
            frame: frame.clone(),
        });
        true
    }

    /// Events of `chats` may have been lost between nodes: every connection in any of them is
    /// told which of its chats to recover (`chat:resync`, before anything newer).
    pub fn resync(&mut self, chats: &[Arc<str>]) {
        for (conn, m) in &self.conns {
            let gaps: Vec<Arc<str>> = m
                .session
                .chats()
                .iter()
                .filter(|c| chats.contains(c))
                .cloned()
                .collect();
            if !gaps.is_empty() {
                let frame = Outbound::ChatResync { chat_ids: &gaps }.to_frame();
                self.effects.push_back(Effect::Send { conn, frame });
            }
        }
    }

    /// The users with connections here in `chat`, with their connection counts.
    pub fn users_in(&self, chat: &str) -> HashMap<Arc<str>, usize> {
        let mut users: HashMap<Arc<str>, usize> = HashMap::new();
        for &key in self.rooms.members(chat) {
            if let Some(m) = self.conns.get(key as usize) {
                *users.entry(m.user().id.clone()).or_insert(0) += 1;
            }
        }
        users
    }

    /// When the hub next needs [`Hub::handle_timeout`]: the earliest typing expiry or the next
    /// heartbeat.
    pub fn poll_timeout(&self) -> Instant {
        match self.typing.poll_timeout() {
            Some(t) => t.min(self.next_heartbeat),
            None => self.next_heartbeat,
        }
    }

    /// Timers due at `now`: expired typing indicators end for the others (not the typing
    /// connection, like the `chat:typing` they end); every `heartbeat_interval`, each
    /// connection is pinged, or closed 4000 after `connection_timeout` of silence.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        for (slot, chat) in self.typing.handle_timeout(now) {
            if let Some(m) = self.conns.get(slot) {
                let user = m.session.user().clone();
                self.typing_stopped(&user, chat, Some(slot));
            }
        }
        if now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + self.config.heartbeat_interval;
        for (conn, m) in &self.conns {
            match m.session.heartbeat(now, &self.rules) {
                Heartbeat::Ping => self.effects.push_back(Effect::Ping { conn }),
                Heartbeat::Expire => {
                    tracing::info!(user_id = %m.session.user().id, "Connection timed out");
                    self.effects.push_back(Effect::Close {
                        conn,
                        code: CloseCode::IdleTimeout,
                    });
                }
            }
        }
    }

    fn execute(&mut self, conn: usize, cmd: Command, now: Instant) -> Step {
        match cmd {
            Command::Ping => {
                let ts = (self.wall)();
                let frame = Outbound::Pong { timestamp: &ts }.to_frame();
                self.effects.push_back(Effect::Send { conn, frame });
                Step::Done
            }
            Command::SendMessage {
                chat_id,
                content,
                client_message_id,
            } => Step::Call(Call::CreateMessage {
                chat: self.chat_arc(conn, &chat_id),
                content,
                client_message_id,
                sender: self.conns[conn].session.user().clone(),
            }),
            Command::MarkRead {
                chat_id,
                message_id,
            } => Step::Call(Call::MarkRead {
                chat: self.chat_arc(conn, &chat_id),
                message_id,
            }),
            Command::History(req) => Step::Call(Call::History(req)),
            Command::Typing { chat_id, is_typing } => {
                self.typing(conn, &chat_id, is_typing, now);
                Step::Done
            }
        }
    }

    /// `chat:typing`: the timer starts or stops, and the chat hears it, except this
    /// connection (the only event that excludes its sender).
    fn typing(&mut self, conn: usize, chat_id: &str, is_typing: bool, now: Instant) {
        let room = self.chat_arc(conn, chat_id);
        if is_typing {
            self.typing.start((conn, room.clone()), now);
        } else {
            self.typing.stop(&(conn, room.clone()));
        }
        let user = self.conns[conn].session.user();
        tracing::debug!(user_id = %user.id, chat_id = %chat_id, is_typing, "Typing");
        let frame = Outbound::ChatTyping {
            chat_id,
            user_id: &user.id,
            user_name: &user.name,
            is_typing,
        }
        .to_frame();
        self.publish(room, frame, Some(conn), EventKind::Typing);
    }

    /// Applies a re-fetched chat list: the connection joins and leaves rooms to match it.
    fn refetched(&mut self, conn: usize, chats: Vec<String>) {
        let chats = chats.into_iter().map(Arc::from).collect();
        let change = self.conns[conn].session.refetched(chats);
        for chat in &change.joined {
            self.join_room(chat, conn);
        }
        for chat in &change.left {
            self.left(conn, chat);
        }
    }

    /// `conn` left `chat`: its room, and its typing indicator there ends for the others now,
    /// not at its expiry.
    fn left(&mut self, conn: usize, chat: &Arc<str>) {
        self.leave_room(chat, conn);
        if self.typing.stop(&(conn, chat.clone())) {
            if let Some(m) = self.conns.get(conn) {
                let user = m.session.user().clone();
                self.typing_stopped(&user, chat.clone(), None);
            }
        }
    }

    /// A backend failure for an action in `chat`. `NOT_PARTICIPANT` for a chat the session
    /// believed it was in may mean the user was removed from it (or only that this action is
    /// not allowed, e.g. a receipt for a missing message): the chat list is re-fetched (within
    /// the session's budget) and decides which rooms the connection stays in, so a removed
    /// user stops receiving the chat without waiting for a reconnect.
    fn chat_failed(&mut self, conn: usize, chat: &str, e: Failure, now: Instant) -> Step {
        let verify = e.code == ErrorCode::NotParticipant;
        self.failed(conn, e);
        let Some(m) = self.conns.get_mut(conn) else {
            return Step::Done;
        };
        if verify && m.session.is_member(chat) && m.session.start_refetch(now, &self.rules) {
            Step::Call(Call::Chats { then: None })
        } else {
            Step::Done
        }
    }

    fn not_participant(&mut self, conn: usize) {
        self.error(
            conn,
            ErrorCode::NotParticipant,
            "Not a participant of this chat",
        );
    }

    fn error(&mut self, conn: usize, code: ErrorCode, message: &str) {
        self.failed(
            conn,
            Failure {
                code,
                message: message.to_owned(),
                status: None,
            },
        );
    }

    /// An error frame; codes that end the connection (the catalogue says which) close it.
    fn failed(&mut self, conn: usize, e: Failure) {
        let close = e.code.close_code();
        self.effects.push_back(Effect::Error {
            conn,
            code: e.code,
            message: e.message,
            status: e.status,
        });
        if let Some(code) = close {
            self.effects.push_back(Effect::Close { conn, code });
        }
    }

    fn publish(&mut self, room: Arc<str>, frame: Bytes, exclude: Option<usize>, kind: EventKind) {
        self.effects.push_back(Effect::Publish {
            rooms: vec![room],
            frame,
            exclude,
            kind,
        });
    }

    fn typing_stopped(&mut self, user: &User, chat: Arc<str>, exclude: Option<usize>) {
        let frame = Outbound::ChatTyping {
            chat_id: &chat,
            user_id: &user.id,
            user_name: &user.name,
            is_typing: false,
        }
        .to_frame();
        self.publish(chat, frame, exclude, EventKind::Typing);
    }

    fn join_room(&mut self, chat: &Arc<str>, conn: usize) {
        if self.rooms.join(chat, room_key(conn)) {
            self.effects.push_back(Effect::Interest {
                room: chat.clone(),
                joined: true,
            });
        }
    }

    fn leave_room(&mut self, chat: &Arc<str>, conn: usize) {
        if self.rooms.leave(chat, room_key(conn)) {
            self.effects.push_back(Effect::Interest {
                room: chat.clone(),
                joined: false,
            });
        }
    }

    /// The session's shared id for `chat` (so rooms keyed by it match), or a new one.
    fn chat_arc(&self, conn: usize, chat: &str) -> Arc<str> {
        self.conns
            .get(conn)
            .and_then(|m| m.session.chats().iter().find(|c| &***c == chat).cloned())
            .unwrap_or_else(|| chat.into())
    }
}

/// A connection's key in the rooms: its slot, in 32 bits. Slots stay below the number of
/// connections open at once, and Linux caps a process's open files at `fs.nr_open` (at most
/// 2^30), so the conversion is exact.
fn room_key(conn: usize) -> u32 {
    conn as u32
}

#[cfg(test)]
mod tests;
