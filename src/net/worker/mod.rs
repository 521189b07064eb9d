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
//!
//! Here: the shared and per-worker state, registration, rooms, typing, presence, delivery and
//! its flow control. By concern, in files of their own: `admission` (connection caps, live
//! tasks), `drain`, `runtime` (threads, listeners, the long-lived loops), `server_api`
//! (applying server API requests on every worker) and `signal` (the drain's stop event).

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
use super::mailbox::{Bus, ConnRef, Envelope, EventKind, Mailbox, Mailboxes, RoomEvent};
use super::outbox::{now_ms, Class, Outbox, Pushed};
use crate::api::{Action, ApiError, Outcome};
use crate::backend::Backend;
use crate::config::Config;
use crate::config::CLOSE_GRACE;
use crate::core::presence::{owner_of, Presence};
use crate::core::pressure::{PaceBudget, Pressure};
use crate::core::room::Rooms;
use crate::core::session::{Heartbeat, Session, User};
use crate::core::stall::Look;
use crate::core::typing::Typing;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::protocol::frame::control_frame;
use crate::protocol::outbound::error_frame;
use crate::protocol::{CloseCode, ErrorCode, Outbound};
use crate::systemd::Liveness;

/// Size of the worker's shared read buffer: the most one socket read takes in one go.
const READ_SCRATCH: usize = 16 * 1024;

mod admission;
mod drain;
mod runtime;
mod server_api;
mod signal;

pub use admission::{ConnectionCounts, Refused, TaskCount, TaskGuard};
pub use runtime::{accept_loop, bind_first, start};
pub use signal::{Signal, Wait};

/// State shared by all workers (read-mostly; nothing here is locked on the message path).
/// Built by [`Shared::new`]; the shell (`net`) reads its fields, the rest of the process goes
/// through its methods.
pub struct Shared {
    /// Validated configuration.
    pub(in crate::net) config: Config,
    /// Parsed `CORS_ORIGIN`.
    pub(in crate::net) allowed_origins: Vec<String>,
    /// The backend.
    pub(in crate::net) backend: Arc<dyn Backend>,
    /// Every worker's mailbox, by worker id.
    mailboxes: Vec<Arc<Mailbox>>,
    /// Where room events go beyond their worker.
    bus: Box<dyn Bus>,
    /// Workers whose listener is bound.
    listening: AtomicUsize,
    /// Set once shutdown begins.
    stopping: AtomicBool,
    /// Workers whose drain has finished the work already accepted (every connection parked,
    /// no backend call in flight). Each drain waits for all of them before its last mailbox
    /// pass, so a message still being stored on one worker reaches its chat's members on the
    /// others before they are closed. Touched only during shutdown.
    settled: AtomicUsize,
    /// Open connections, for `MAX_CONNECTIONS` and `MAX_CONNECTIONS_PER_IP`.
    pub(in crate::net) counts: ConnectionCounts,
    /// Prometheus metrics.
    pub(in crate::net) metrics: Metrics,
    /// When each worker's loop last ran (for the systemd watchdog).
    liveness: Arc<Liveness>,
    /// Held while a server API request is posted to every mailbox (see [`Worker::api`]).
    api_order: Mutex<()>,
    /// Which chats have a draining reader far behind (publisher back-pressure, all workers).
    pressure: Pressure,
}

impl Shared {
    /// The state for `config.worker_count()` workers over `backend`.
    pub fn new(config: Config, backend: Arc<dyn Backend>, metrics: Metrics) -> Self {
        let workers = config.worker_count();
        let mailboxes: Vec<Arc<Mailbox>> =
            (0..workers).map(|_| Arc::new(Mailbox::default())).collect();
        Self {
            allowed_origins: config.allowed_origins(),
            backend,
            bus: Box::new(Mailboxes(mailboxes.clone())),
            mailboxes,
            listening: Default::default(),
            stopping: Default::default(),
            settled: Default::default(),
            counts: Default::default(),
            metrics,
            liveness: Arc::new(Liveness::new(workers)),
            api_order: Default::default(),
            pressure: Default::default(),
            config,
        }
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Workers whose listener is bound.
    pub fn listening(&self) -> usize {
        self.listening.load(Ordering::SeqCst)
    }

    /// Whether shutdown began.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// When each worker's loop last ran (what the systemd watchdog reads).
    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

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

/// One authenticated connection, shared by its task and the worker's table.
pub struct Conn {
    /// Outgoing bytes.
    pub outbox: Rc<Outbox>,
    /// The sans-IO session.
    pub session: RefCell<Session>,
    /// How much of the current stall window publisher back-pressure paused this sender.
    pub paced: Cell<PaceBudget>,
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
    /// chat, on any worker, is draining a long backlog, for at most a quarter of any
    /// `STALL_TIMEOUT` window (the sender's budget).
    pub async fn pace(&self, sender: &Conn, chat: &str) {
        let Some(pause) = self.shared.pressure.pause(chat, now_ms) else {
            return;
        };
        let mut budget = sender.paced.get();
        let window = u32::try_from(self.config().stall_timeout_ms).unwrap_or(u32::MAX);
        let allowed = budget.take(now_ms(), pause.as_millis() as u32, window);
        sender.paced.set(budget);
        if allowed {
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
}
