//! Workers: one thread per core, each a monoio runtime owning a shard of connections.
//!
//! A worker owns its listener (`SO_REUSEPORT`: the kernel spreads new connections over the
//! workers), its connection table, the local members of each room, the typing timers of its
//! connections and the presence counts of the users hashed to it. Other workers reach it only
//! through its [`Mailbox`]. Three long-lived tasks run on it: the accept loop, the mailbox loop
//! and the ticker (heartbeats and typing expiry); plus two tasks per connection.
//!
//! Drain (SIGTERM/SIGINT): stop accepting and reading, let backend calls in flight finish
//! (bounded by `SHUTDOWN_TIMEOUT`), then send every connection `SERVER_SHUTDOWN` and close 1001.
//! Presence and typing changes caused by the drain itself are not broadcast: everyone is being
//! disconnected anyway.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::{ListenerOpts, TcpListener};
use slab::Slab;

use super::connection;
use super::mailbox::{Bus, ConnRef, Envelope, EventKind, Mailbox, RoomEvent};
use super::outbox::{now_ms, Class, Outbox, Pushed};
use crate::api::{Action, ApiError, Outcome};
use crate::backend::Backend;
use crate::config::Config;
use crate::config::CLOSE_GRACE;
use crate::core::presence::{owner_of, Presence};
use crate::core::pressure::Pressure;
use crate::core::room::Rooms;
use crate::core::session::{Heartbeat, Session, User};
use crate::core::stall::Look;
use crate::core::typing::Typing;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::protocol::frame::control_frame;
use crate::protocol::outbound::error_frame;
use crate::protocol::{CloseCode, ErrorCode, Outbound};
use crate::systemd::Liveness;

/// Longest pause of the ticker; bounds how late a typing expiry or heartbeat can fire.
const MAX_TICK: Duration = Duration::from_millis(100);
/// Size of the worker's shared read buffer: the most one socket read takes in one go.
const READ_SCRATCH: usize = 16 * 1024;
/// Stack of a worker thread (virtual; only touched pages count). Generous, as parsing and
/// serialisation recurse.
const WORKER_STACK: usize = 8 << 20;
/// Most batches the drain closes connections in.
const DRAIN_BATCHES: usize = 10;
/// Shortest pause of the ticker.
const MIN_TICK: Duration = Duration::from_millis(5);
/// How long a server API request waits for every worker to confirm its actions.
const API_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by all workers (read-mostly; nothing here is locked on the message path).
pub struct Shared {
    /// Validated configuration.
    pub config: Config,
    /// Parsed `CORS_ORIGIN`.
    pub allowed_origins: Vec<String>,
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// Every worker's mailbox, by worker id.
    pub mailboxes: Vec<Arc<Mailbox>>,
    /// Where room events go beyond their worker.
    pub bus: Box<dyn Bus>,
    /// Workers whose listener is bound.
    pub listening: AtomicUsize,
    /// Set once shutdown begins.
    pub stopping: AtomicBool,
    /// Workers whose drain has finished the work already accepted (every connection parked,
    /// no backend call in flight). Each drain waits for all of them before its last mailbox
    /// pass, so a message still being stored on one worker reaches its chat's members on the
    /// others before they are closed. Touched only during shutdown.
    pub settled: AtomicUsize,
    /// Open connections, for `MAX_CONNECTIONS` and `MAX_CONNECTIONS_PER_IP`.
    pub counts: ConnectionCounts,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// When each worker's loop last ran (for the systemd watchdog).
    pub liveness: Arc<Liveness>,
    /// Held while a server API request is posted to every mailbox (see [`Worker::api`]).
    pub api_order: Mutex<()>,
    /// Which chats have a draining reader far behind (publisher back-pressure, all workers).
    pub pressure: Pressure,
}

/// Process-wide connection counts. Touched on connect and disconnect only, never per message.
#[derive(Default)]
pub struct ConnectionCounts {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connections over the caps being read for a health probe (`connection::serve_refused`).
    pub probes: AtomicUsize,
    /// Open connections on `API_PORT` (`net::api`).
    pub api: AtomicUsize,
}

impl ConnectionCounts {
    /// Open connections in the process.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.mailboxes.len()
    }

    /// Starts the drain on every worker.
    pub fn shutdown(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            crate::systemd::stopping();
            for mb in &self.mailboxes {
                mb.post(Envelope::Shutdown);
            }
        }
    }
}

/// The `chat:typing` frame that ends `user`'s indicator in `chat`.
fn typing_stopped_frame(user: &User, chat: &str) -> Bytes {
    Outbound::ChatTyping {
        chat_id: chat,
        user_id: &user.id,
        user_name: &user.name,
        is_typing: false,
    }
    .to_frame()
}

/// A one-shot, thread-local event that tasks can wait for.
///
/// Each [`Signal::wait`] future holds at most one registered waker, removed when the future
/// is dropped. The accept loop creates a fresh one per accepted connection; the earlier
/// version kept every waker past its future and relied on `will_wake` to skip duplicates,
/// which did not hold for monoio's wakers (waker identity is not guaranteed), so the list grew
/// by one waker per accept: a measured leak, in 2 MiB steps of live heap during the soak.
#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waiters: RefCell<Slab<Waker>>,
}

impl Signal {
    /// Fires the signal, waking every waiter.
    pub fn fire(&self) {
        self.set.set(true);
        let woken: Vec<Waker> = self.waiters.borrow_mut().drain().collect();
        for w in woken {
            w.wake();
        }
    }
    /// Whether it fired.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }
    /// Completes once fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            key: None,
        }
    }
    /// Wakers registered now (one per pending [`Wait`] that was polled).
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// The future of [`Signal::wait`]; deregisters its waker when dropped.
pub struct Wait<'a> {
    signal: &'a Signal,
    key: Option<usize>,
}

impl std::future::Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.set.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.signal.waiters.borrow_mut();
        match self.key.and_then(|k| waiters.get_mut(k)) {
            Some(w) => w.clone_from(cx.waker()),
            None => {
                let key = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            // After `fire` the slab was drained (and may hold other waiters' new keys only if
            // it was never fired: nothing registers once it is set), so removal is exact.
            if !self.signal.set.get() {
                self.signal.waiters.borrow_mut().try_remove(key);
            }
        }
    }
}

/// Local connections by user, for the users a server API request acts on.
type UserConns = HashMap<Arc<str>, Vec<(usize, Rc<Conn>)>>;

/// One authenticated connection, shared by its task and the worker's table.
pub struct Conn {
    /// Outgoing bytes.
    pub outbox: Rc<Outbox>,
    /// The sans-IO session.
    pub session: RefCell<Session>,
}

/// A worker's state. Lives on its thread only.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    conns: RefCell<Slab<Rc<Conn>>>,
    rooms: RefCell<Rooms<usize>>,
    typing: RefCell<Typing<(usize, Arc<str>)>>,
    presence: RefCell<Presence>,
    scratch: RefCell<Vec<usize>>,
    /// Where idle connections read into, one poll at a time (see `split::Input::fill`).
    pub read_scratch: RefCell<Vec<u8>>,
    /// Fired when the drain starts: stop accepting and reading.
    pub stop: Signal,
    inflight: Cell<usize>,
    tasks: Cell<usize>,
    parked: Cell<usize>,
    last_probe: Cell<Option<(Instant, bool)>>,
    /// This worker's metric handles.
    pub metrics: WorkerMetrics,
}

/// Counts a live connection task for the drain; decrements when dropped.
pub struct TaskGuard {
    worker: Rc<Worker>,
    ip: Option<IpAddr>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let w = &self.worker;
        w.tasks.set(w.tasks.get() - 1);
        w.shared.counts.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = w
                .shared
                .counts
                .per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A task the drain waits for; see [`Worker::track_task`].
pub struct TaskCount(Rc<Worker>);

impl Drop for TaskCount {
    fn drop(&mut self) {
        self.0.tasks.set(self.0.tasks.get() - 1);
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `MAX_CONNECTIONS` reached.
    #[error("too many connections")]
    ProcessFull,
    /// `MAX_CONNECTIONS_PER_IP` reached for this address.
    #[error("too many connections from this address")]
    AddressFull,
}

impl Worker {
    fn new(id: usize, shared: Arc<Shared>) -> Self {
        let typing = Typing::new(shared.config.typing_timeout());
        Self {
            id,
            metrics: shared.metrics.for_worker(id),
            shared,
            conns: RefCell::new(Slab::new()),
            rooms: RefCell::default(),
            typing: RefCell::new(typing),
            presence: RefCell::default(),
            scratch: RefCell::default(),
            read_scratch: RefCell::new(vec![0; READ_SCRATCH]),
            stop: Signal::default(),
            inflight: Cell::new(0),
            tasks: Cell::new(0),
            parked: Cell::new(0),
            last_probe: Cell::new(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Whether the drain has begun.
    pub fn draining(&self) -> bool {
        self.stop.is_set()
    }

    /// Number of connections on this worker.
    pub fn connections(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Marks a connection task as live until the guard drops (the drain waits for it).
    /// Admits a new connection from `ip` under the connection caps; the guard releases it.
    pub fn admit(self: &Rc<Self>, ip: Option<IpAddr>) -> Result<TaskGuard, Refused> {
        let cfg = self.config();
        let counts = &self.shared.counts;
        if counts.open.fetch_add(1, Ordering::Relaxed) >= cfg.max_connections {
            counts.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::ProcessFull);
        }
        let ip = ip.filter(|_| cfg.max_connections_per_ip > 0);
        if let Some(ip) = ip {
            let mut per_ip = counts.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= cfg.max_connections_per_ip {
                drop(per_ip);
                counts.open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refused::AddressFull);
            }
            *n += 1;
        }
        self.tasks.set(self.tasks.get() + 1);
        Ok(TaskGuard {
            worker: self.clone(),
            ip,
        })
    }

    /// Counts a task the drain must wait for (a server API request on `API_PORT`) until the
    /// guard drops. Not subject to the connection caps.
    pub fn track_task(self: &Rc<Self>) -> TaskCount {
        self.tasks.set(self.tasks.get() + 1);
        TaskCount(self.clone())
    }

    /// Runs a backend call (`call` indexes [`crate::metrics::CALLS`]), timed, and counted as
    /// in flight so the drain can wait for it.
    pub async fn backend_call<T>(&self, call: usize, f: impl std::future::Future<Output = T>) -> T {
        /// Counts the call down (and times it) even if the caller gives up on it (a timeout
        /// drops the future).
        struct InFlight<'a> {
            worker: &'a Worker,
            call: usize,
            started: Instant,
        }
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                let w = self.worker;
                w.metrics.backend[self.call].observe(self.started.elapsed().as_secs_f64());
                w.inflight.set(w.inflight.get() - 1);
            }
        }
        self.inflight.set(self.inflight.get() + 1);
        let _guard = InFlight {
            worker: self,
            call,
            started: Instant::now(),
        };
        f.await
    }

    /// Adds an authenticated connection: joins its rooms and counts its presence.
    pub fn register(&self, conn: Rc<Conn>) -> usize {
        let (user, chats) = {
            let s = conn.session.borrow();
            (s.user().id.clone(), s.chats().to_vec())
        };
        let slot = self.conns.borrow_mut().insert(conn);
        self.metrics.connections.inc();
        {
            let mut rooms = self.rooms.borrow_mut();
            for chat in &chats {
                rooms.join(chat, slot);
            }
        }
        self.presence_change(user, chats, true);
        slot
    }

    /// The user behind a registered connection.
    fn user_of(&self, slot: usize) -> Option<User> {
        let conns = self.conns.borrow();
        let user = conns.get(slot)?.session.borrow().user().clone();
        Some(user)
    }

    /// Removes a connection: leaves its rooms, ends its typing indicators and presence.
    pub fn unregister(&self, slot: usize) {
        let Some(conn) = self.conns.borrow_mut().try_remove(slot) else {
            return;
        };
        self.metrics.connections.dec();
        let session = conn.session.borrow();
        {
            let mut rooms = self.rooms.borrow_mut();
            for chat in session.chats() {
                rooms.leave(chat, slot);
            }
        }
        let user = session.user().clone();
        for chat in session.chats() {
            let was_typing = self.typing.borrow_mut().stop(&(slot, chat.clone()));
            if was_typing && !self.draining() {
                let frame = typing_stopped_frame(&user, chat);
                self.publish(vec![chat.clone()], frame, None, EventKind::Typing);
            }
        }
        if !self.draining() {
            self.presence_change(user.id.clone(), session.chats().to_vec(), false);
        }
    }

    /// Moves a connection between rooms after its chat list was re-fetched.
    pub fn rejoin(&self, slot: usize, joined: &[Arc<str>], left: &[Arc<str>]) {
        {
            let mut rooms = self.rooms.borrow_mut();
            for chat in joined {
                rooms.join(chat, slot);
            }
            for chat in left {
                rooms.leave(chat, slot);
            }
        }
        // An indicator in a chat the user left ends for the others now, not at its expiry.
        for chat in left {
            if self.typing.borrow_mut().stop(&(slot, chat.clone())) {
                let Some(user) = self.user_of(slot) else {
                    continue;
                };
                let frame = typing_stopped_frame(&user, chat);
                self.publish(vec![chat.clone()], frame, None, EventKind::Typing);
            }
        }
    }

    /// Starts or stops a connection's typing timer for `chat`.
    pub fn set_typing(&self, slot: usize, chat: &Arc<str>, typing: bool, now: Instant) {
        let mut t = self.typing.borrow_mut();
        if typing {
            t.start((slot, chat.clone()), now);
        } else {
            t.stop(&(slot, chat.clone()));
        }
    }

    /// Publishes an event to `rooms`: local members now, other workers through the bus.
    pub fn publish(
        &self,
        rooms: Vec<Arc<str>>,
        frame: Bytes,
        exclude: Option<ConnRef>,
        kind: EventKind,
    ) {
        let event = Arc::new(RoomEvent {
            rooms,
            frame,
            exclude,
            kind,
        });
        self.deliver(&event);
        if self.shared.workers() > 1 {
            self.shared.bus.publish(self.id, event);
        }
    }

    /// Queues `event` to its local members; returns how many got it.
    fn deliver(&self, event: &RoomEvent) -> usize {
        let exclude = event.exclude.filter(|(w, _)| *w == self.id).map(|(_, s)| s);
        let class = event.kind.class();
        let conns = self.conns.borrow();
        let rooms = self.rooms.borrow();
        let mut scratch = self.scratch.borrow_mut();
        let (mut queued, mut dropped) = (0u64, 0u64);
        let mut pressed = false;
        rooms.for_each_member(&event.rooms, exclude, &mut scratch, |slot| {
            let Some(c) = conns.get(slot) else { return };
            match c.outbox.push_event(&event.frame, class) {
                Pushed::Queued => {
                    queued += 1;
                    pressed = pressed || (class == Class::Reliable && c.outbox.pressing());
                }
                Pushed::Dropped => dropped += 1,
                Pushed::Overflow => {
                    self.metrics.slow_consumers.inc();
                    self.shared.metrics.closed(CloseCode::SlowConsumer);
                    tracing::warn!(user_id = %c.session.borrow().user().id, "Slow consumer closed");
                }
            }
        });
        self.metrics.deliveries[event.kind as usize].inc_by(queued);
        if dropped > 0 {
            self.metrics.dropped.inc_by(dropped);
        }
        drop((conns, rooms, scratch));
        if pressed {
            let now = now_ms();
            for room in &event.rooms {
                self.shared.pressure.mark(room, now);
            }
        }
        if super::outbox::queued_here() > self.config().outbox_budget {
            self.shed();
        }
        queued as usize
    }

    /// Publisher back-pressure (`core::pressure`): called by a connection's reader after it
    /// published to `chat`; pauses reading from that sender briefly while a reader of the
    /// chat, on any worker, is draining a long backlog.
    pub async fn pace(&self, chat: &str) {
        if let Some(pause) = self.shared.pressure.pause(chat, now_ms) {
            self.metrics.publisher_pauses.inc();
            monoio::time::sleep(pause).await;
        }
    }

    /// Brings this worker's queues back under 90% of `OUTBOX_BUDGET` by closing connections
    /// (4009, queue freed at once): the largest backlogs that are not draining first, then,
    /// only if that is not enough, draining ones, largest first.
    fn shed(&self) {
        let target = self.config().outbox_budget / 10 * 9;
        let conns = self.conns.borrow();
        let mut backlogs: Vec<(bool, std::cmp::Reverse<usize>, usize)> = conns
            .iter()
            .filter(|(_, c)| c.outbox.queued() > 0 && !c.outbox.is_closing())
            .map(|(slot, c)| {
                (
                    c.outbox.draining(),
                    std::cmp::Reverse(c.outbox.queued()),
                    slot,
                )
            })
            .collect();
        backlogs.sort_unstable();
        for (draining, std::cmp::Reverse(queued), slot) in backlogs {
            if super::outbox::queued_here() <= target {
                break;
            }
            let Some(c) = conns.get(slot) else { continue };
            tracing::warn!(user_id = %c.session.borrow().user().id, queued, draining, "Slow consumer closed: over the worker's OUTBOX_BUDGET");
            self.metrics.budget_sheds.inc();
            self.shared.metrics.closed(CloseCode::SlowConsumer);
            c.outbox.discard();
        }
    }

    /// Carries out server API actions on every worker, this one included, and completes once
    /// every worker confirmed, with the outcomes merged per action. Every worker applies every
    /// request in the same order: requests are posted to all mailboxes (FIFO) under one
    /// process-wide lock, so two concurrent requests arriving on different workers cannot
    /// interleave differently on each.
    pub async fn api(&self, actions: Vec<Action>) -> Result<Vec<Outcome>, ApiError> {
        if self.draining() {
            return Err(ApiError::ShuttingDown);
        }
        let actions: Arc<[Action]> = actions.into();
        let mut replies = Vec::with_capacity(self.shared.workers());
        {
            let _order = self
                .shared
                .api_order
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for mb in &self.shared.mailboxes {
                let (reply, rx) = futures_channel::oneshot::channel();
                mb.post(Envelope::Api {
                    actions: actions.clone(),
                    reply,
                });
                replies.push(rx);
            }
        }
        let mut outcomes: Vec<Outcome> = actions.iter().map(Action::nothing).collect();
        // One deadline for all the workers' answers, not one per worker.
        let deadline = Instant::now() + API_CONFIRM_TIMEOUT;
        for rx in replies {
            let left = deadline.saturating_duration_since(Instant::now());
            match monoio::time::timeout(left, rx).await {
                Ok(Ok(theirs)) => {
                    for (mine, other) in outcomes.iter_mut().zip(theirs) {
                        mine.merge(other);
                    }
                }
                // A worker that already ended (its mailbox closed and dropped the request)
                // has no connections left to act on.
                Ok(Err(_canceled)) => {}
                Err(_) => {
                    return Err(ApiError::WorkerTimeout(
                        API_CONFIRM_TIMEOUT.as_millis() as u64
                    ))
                }
            }
        }
        for (chat, frame) in crate::api::announcements(&actions, &outcomes) {
            self.publish(vec![chat], frame, None, EventKind::Presence);
        }
        Ok(outcomes)
    }

    /// Applies server API actions to this worker's connections.
    ///
    /// The connections of the users a batch names are found with one pass over the connection
    /// table per batch, not through an index by user: an index cost ~200 bytes per idle
    /// connection (measured, 15,000 connections: 2,158-2,186 B against 1,957-1,964 B), while
    /// a pass costs well under a millisecond per 100,000 connections, once per API request.
    fn apply_api(&self, actions: &[Action]) -> Vec<Outcome> {
        let users = self.connections_of(actions);
        actions
            .iter()
            .map(|a| self.apply_action(a, &users))
            .collect()
    }

    fn apply_action(&self, action: &Action, users: &UserConns) -> Outcome {
        let of = |user: &Arc<str>| users.get(user).map(Vec::as_slice).unwrap_or_default();
        match action {
            Action::Publish { chat, frame, .. } => Outcome::Count(self.deliver(&RoomEvent {
                rooms: vec![chat.clone()],
                frame: frame.clone(),
                exclude: None,
                kind: EventKind::Message,
            })),
            Action::Join { chat, user, frame } => {
                let mut joined = 0;
                for (slot, conn) in of(user) {
                    if conn.session.borrow_mut().join(chat) {
                        // `chat:new` first: every event of the chat comes after it.
                        conn.outbox.push(frame);
                        self.rejoin(*slot, std::slice::from_ref(chat), &[]);
                        joined += 1;
                    }
                }
                Outcome::Count(joined)
            }
            Action::Leave { chat, user, frame } => {
                let mut left = 0;
                for (slot, conn) in of(user) {
                    let stored = conn.session.borrow_mut().leave(chat);
                    if let Some(stored) = stored {
                        self.rejoin(*slot, &[], &[stored]);
                        // After leaving the room: nothing of the chat follows `chat:removed`.
                        conn.outbox.push(frame);
                        left += 1;
                    }
                }
                Outcome::Count(left)
            }
            Action::Disconnect { user, code, frame } => {
                let conns = of(user);
                for (_, conn) in conns {
                    if !conn.outbox.is_closing() {
                        self.shared.metrics.closed_with(*code);
                    }
                    conn.outbox.close_with(frame);
                }
                Outcome::Count(conns.len())
            }
            Action::Presence { chat } => {
                let conns = self.conns.borrow();
                let mut users: HashMap<Arc<str>, usize> = HashMap::new();
                for slot in self.rooms.borrow().members(chat) {
                    if let Some(c) = conns.get(*slot) {
                        *users
                            .entry(c.session.borrow().user().id.clone())
                            .or_insert(0) += 1;
                    }
                }
                Outcome::Presence(users)
            }
        }
    }

    /// The local connections of every user `actions` act on, found in one pass.
    fn connections_of(&self, actions: &[Action]) -> UserConns {
        let mut found: UserConns = actions
            .iter()
            .filter_map(|a| match a {
                Action::Join { user, .. }
                | Action::Leave { user, .. }
                | Action::Disconnect { user, .. } => Some((user.clone(), Vec::new())),
                Action::Publish { .. } | Action::Presence { .. } => None,
            })
            .collect();
        if found.is_empty() {
            return found;
        }
        for (slot, conn) in self.conns.borrow().iter() {
            let user = conn.session.borrow().user().id.clone();
            if let Some(list) = found.get_mut(&user) {
                list.push((slot, conn.clone()));
            }
        }
        found
    }

    fn presence_change(&self, user: Arc<str>, chats: Vec<Arc<str>>, opened: bool) {
        let owner = owner_of(&user, self.shared.workers());
        if owner == self.id {
            self.apply_presence(&user, chats, opened);
        } else {
            self.shared.mailboxes[owner].post(Envelope::Presence {
                user,
                chats,
                opened,
            });
        }
    }

    fn apply_presence(&self, user: &Arc<str>, chats: Vec<Arc<str>>, opened: bool) {
        let changed = {
            let mut p = self.presence.borrow_mut();
            if opened {
                p.connect(user)
            } else {
                p.disconnect(user)
            }
        };
        if changed && !self.draining() && !chats.is_empty() {
            let frame = Outbound::UserOnline {
                user_id: user,
                online: opened,
            }
            .to_frame();
            tracing::debug!(user_id = %user, online = opened, "Presence changed");
            self.publish(chats, frame, None, EventKind::Presence);
        }
    }

    fn handle(&self, e: Envelope) {
        match e {
            Envelope::Room(ev) => {
                self.deliver(&ev);
            }
            Envelope::Api { actions, reply } => {
                // The requester may have given up (timeout); nothing to tell it then.
                let _ = reply.send(self.apply_api(&actions));
            }
            Envelope::Presence {
                user,
                chats,
                opened,
            } => self.apply_presence(&user, chats, opened),
            Envelope::Shutdown => self.stop.fire(),
        }
    }

    fn tick(&self, now: Instant, heartbeat_due: bool) {
        let expired = self.typing.borrow_mut().handle_timeout(now);
        for (slot, chat) in expired {
            let Some(user) = self.user_of(slot) else {
                continue;
            };
            let frame = typing_stopped_frame(&user, &chat);
            // To the chat but not the typing connection, like the `chat:typing` it ends.
            self.publish(vec![chat], frame, Some((self.id, slot)), EventKind::Typing);
        }
        if heartbeat_due {
            let ping = control_frame(fastwebsockets::OpCode::Ping, b"");
            for (_, c) in self.conns.borrow().iter() {
                match c.session.borrow().heartbeat(now) {
                    Heartbeat::Ping => {
                        c.outbox.push_class(&ping, Class::Volatile);
                    }
                    Heartbeat::Expire => {
                        tracing::info!(user_id = %c.session.borrow().user().id, "Connection timed out");
                        self.shared.metrics.closed(CloseCode::IdleTimeout);
                        c.outbox.close(CloseCode::IdleTimeout);
                    }
                }
            }
        }
    }

    /// One look of the stall rule at every connection (`core::stall`): progress counts as the
    /// client being alive; a connection stuck with bytes waiting is closed (4009) and its
    /// queue freed at once (nothing more can be written to it, not even a close frame).
    fn check_stalls(&self, now: Instant) {
        let mut queued = 0;
        for (_, c) in self.conns.borrow().iter() {
            queued += c.outbox.queued();
            match c.outbox.look() {
                Look::Progress => c.session.borrow_mut().seen(now),
                Look::Stuck => {
                    tracing::warn!(user_id = %c.session.borrow().user().id, queued = c.outbox.queued(), "Slow consumer closed: stalled");
                    self.metrics.stall_closes.inc();
                    self.shared.metrics.closed(CloseCode::SlowConsumer);
                    c.outbox.abort();
                }
                Look::Idle | Look::Waiting => {}
            }
        }
        self.metrics.queued_bytes.set(queued as i64);
    }

    async fn drain(&self) {
        let cfg = self.config();
        let deadline = Instant::now() + cfg.drain_wait();
        for (_, c) in self.conns.borrow().iter() {
            c.outbox.interrupt();
        }
        // Every connection finishes what it already read (answers, deliveries, backend calls)
        // and parks; then nobody can start new work.
        while (self.parked.get() < self.connections() || self.inflight.get() > 0)
            && Instant::now() < deadline
        {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then wait for every other worker to get there too: until then one of them may still
        // publish a message to chats that have members here.
        self.shared.settled.fetch_add(1, Ordering::AcqRel);
        while self.shared.settled.load(Ordering::Acquire) < self.shared.workers()
            && Instant::now() < deadline
        {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        // Everything they published before settling is queued here now: deliver it before
        // the closes below.
        let mut pending = Vec::new();
        self.shared.mailboxes[self.id].take_now(&mut pending);
        for e in pending {
            self.handle(e);
        }
        // Close in jittered batches over DRAIN_WINDOW, so clients do not all reconnect (to the
        // next instance) at the same instant.
        let slots: Vec<usize> = self.conns.borrow().iter().map(|(slot, _)| slot).collect();
        let batches = slots.len().clamp(1, DRAIN_BATCHES);
        let per_batch = slots.len().div_ceil(batches).max(1);
        let pause = cfg.drain_window() / batches as u32;
        let notice = error_frame(ErrorCode::ServerShutdown, "Server is shutting down");
        for (i, batch) in slots.chunks(per_batch).enumerate() {
            if i > 0 && !pause.is_zero() {
                let jitter = rand::random::<f64>() + 0.5; // 0.5x .. 1.5x
                monoio::time::sleep(pause.mul_f64(jitter)).await;
            }
            let conns = self.conns.borrow();
            for slot in batch {
                if let Some(c) = conns.get(*slot) {
                    c.outbox.push(&notice);
                    self.shared.metrics.closed(CloseCode::GoingAway);
                    c.outbox.close(CloseCode::GoingAway);
                }
            }
        }
        // Connection tasks end after their close handshake (or its linger); their writers
        // must finish before the runtime is dropped, or queued frames are lost.
        let deadline = Instant::now() + CLOSE_GRACE;
        while self.tasks.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last backend probe result, if younger than `max_age`.
    pub fn cached_probe(&self, max_age: Duration) -> Option<bool> {
        self.last_probe
            .get()
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, ok)| ok)
    }

    /// Records a backend probe result.
    pub fn remember_probe(&self, ok: bool) {
        self.last_probe.set(Some((Instant::now(), ok)));
    }

    /// A connection finished its accepted work during the drain and waits to be closed.
    pub fn park(&self) {
        self.parked.set(self.parked.get() + 1);
    }
}

async fn mailbox_loop(worker: Rc<Worker>) {
    let mailbox = worker.shared.mailboxes[worker.id].clone();
    let mut batch = Vec::new();
    loop {
        mailbox.recv_batch(&mut batch).await;
        for e in batch.drain(..) {
            worker.handle(e);
        }
    }
}

async fn ticker(worker: Rc<Worker>) {
    let cfg = worker.config();
    let tick = (cfg.typing_timeout() / 4)
        .min(cfg.heartbeat_interval() / 4)
        .clamp(MIN_TICK, MAX_TICK);
    let mut next_heartbeat = Instant::now() + cfg.heartbeat_interval();
    let stall_period = (cfg.stall_timeout() / u32::from(crate::core::stall::PASSES)).max(MIN_TICK);
    let mut next_stall_look = Instant::now() + stall_period;
    // Runs until the runtime ends (through the drain too, so the watchdog sees it alive).
    loop {
        worker.shared.liveness.tick(worker.id);
        monoio::time::sleep(tick).await;
        if worker.draining() {
            continue;
        }
        let now = Instant::now();
        if now >= next_stall_look {
            next_stall_look = now + stall_period;
            worker.check_stalls(now);
        }
        let due = now >= next_heartbeat;
        if due {
            next_heartbeat = now + cfg.heartbeat_interval();
        }
        worker.tick(now, due);
    }
}

/// Accepts connections on `listener` until the drain starts, serving each in a task of its own
/// with `serve` (`what` names the listener in logs).
pub async fn accept_loop<F, Fut>(
    worker: Rc<Worker>,
    listener: TcpListener,
    what: &'static str,
    serve: F,
) where
    F: Fn(Rc<Worker>, monoio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = worker.stop.wait() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                monoio::spawn(serve(worker.clone(), stream));
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning on the error.
                tracing::warn!(worker = worker.id, listener = what, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Binds the first listener (resolving port 0) so every worker can bind the same address.
pub fn bind_first(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Starts every worker thread. Worker 0 takes `first` (and `api_first`, the `API_PORT`
/// listener); the others bind the same addresses.
pub fn start(
    shared: Arc<Shared>,
    first: std::net::TcpListener,
    api_first: Option<std::net::TcpListener>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let addr = first.local_addr()?;
    let api_addr = api_first.as_ref().map(|l| l.local_addr()).transpose()?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut first = Some(first);
    let mut api_first = api_first;
    let mut handles = Vec::new();
    for id in 0..shared.workers() {
        let shared = shared.clone();
        let listeners = Listeners {
            ws: first.take(),
            ws_addr: addr,
            api: api_first.take(),
            api_addr,
        };
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[id % cores.len()])
        };
        let handle = std::thread::Builder::new()
            .name(format!("worker-{id}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                if let Err(e) = run(id, shared.clone(), listeners) {
                    tracing::error!(worker = id, error = %e, "worker failed");
                    shared.shutdown();
                }
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// A worker's listeners: pre-bound (worker 0) or to bind at these addresses.
struct Listeners {
    ws: Option<std::net::TcpListener>,
    ws_addr: SocketAddr,
    api: Option<std::net::TcpListener>,
    api_addr: Option<SocketAddr>,
}

fn run(id: usize, shared: Arc<Shared>, listeners: Listeners) -> std::io::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    let result = rt.block_on({
        let shared = shared.clone();
        async move {
            let listener = match listeners.ws {
                Some(l) => TcpListener::from_std(l)?,
                None => TcpListener::bind_with_config(
                    listeners.ws_addr,
                    &ListenerOpts::new().reuse_port(true).backlog(4096),
                )?,
            };
            let api_listener = match (listeners.api, listeners.api_addr) {
                (Some(l), _) => Some(TcpListener::from_std(l)?),
                (None, Some(addr)) => Some(super::api::bind(addr)?),
                (None, None) => None,
            };
            let io_uring = !monoio::utils::is_legacy();
            tracing::info!(
                worker = id,
                io_uring,
                driver = if io_uring { "io_uring" } else { "epoll" },
                "Worker listening"
            );
            let worker = Rc::new(Worker::new(id, shared.clone()));
            shared.listening.fetch_add(1, Ordering::SeqCst);
            monoio::spawn(mailbox_loop(worker.clone()));
            monoio::spawn(ticker(worker.clone()));
            if let Some(api) = api_listener {
                monoio::spawn(accept_loop(
                    worker.clone(),
                    api,
                    "API",
                    super::api::serve_own_port,
                ));
            }
            accept_loop(worker.clone(), listener, "WebSocket", connection::serve).await;
            worker.drain().await;
            tracing::debug!(worker = id, "Worker drained");
            Ok(())
        }
    });
    // Nobody reads this mailbox any more: let requests waiting on it know now.
    shared.mailboxes[id].close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), Waker::from(flag))
    }

    #[test]
    fn a_signal_keeps_no_waker_past_its_future() {
        let signal = Signal::default();
        // The accept loop's pattern: a fresh wait future per iteration, polled, then dropped
        // (another branch won), each time with a waker that does not `will_wake` the last.
        for _ in 0..10_000 {
            let (_, w) = waker();
            let mut wait = std::pin::pin!(signal.wait());
            assert!(wait
                .as_mut()
                .poll(&mut Context::from_waker(&w))
                .is_pending());
            // Polled again (woken by the other branch): still one registration.
            assert!(wait
                .as_mut()
                .poll(&mut Context::from_waker(&w))
                .is_pending());
            assert_eq!(signal.waiting(), 1);
        }
        assert_eq!(signal.waiting(), 0, "waiters outlived their futures");
    }

    #[test]
    fn fire_wakes_every_pending_waiter_and_later_waits_are_ready() {
        let signal = Signal::default();
        let (f1, w1) = waker();
        let (f2, w2) = waker();
        let mut a = std::pin::pin!(signal.wait());
        let mut b = std::pin::pin!(signal.wait());
        assert!(a.as_mut().poll(&mut Context::from_waker(&w1)).is_pending());
        assert!(b.as_mut().poll(&mut Context::from_waker(&w2)).is_pending());
        assert_eq!(signal.waiting(), 2);
        signal.fire();
        assert!(f1.0.load(Ordering::SeqCst) && f2.0.load(Ordering::SeqCst));
        assert!(a.as_mut().poll(&mut Context::from_waker(&w1)).is_ready());
        let mut c = std::pin::pin!(signal.wait());
        assert!(c.as_mut().poll(&mut Context::from_waker(&w1)).is_ready());
        assert_eq!(signal.waiting(), 0);
    }
}
