//! Workers: one thread per core, each a monoio runtime owning a shard of connections.
//!
//! A worker owns its listener (`SO_REUSEPORT`: the kernel spreads new connections over the
//! workers) and its [`Hub`] (`core::hub`): the connections' sessions, rooms, typing timers and
//! the presence counts of the users hashed to it. The worker feeds the hub its inputs and
//! carries out its effects ([`Worker::flush`]): frames into outboxes, closes, room events to
//! local members and to the bus, presence changes to the bus. Other workers reach it only
//! through its mailbox (`crate::broker`). Three long-lived tasks run on it: the accept loop,
//! the mailbox loop and the ticker (the hub's timers and the stall rule); plus, per
//! connection, its handshake task, then one steady-state task (and a writer task only while
//! its socket cannot take what is queued; see `outbox`).
//!
//! Drain (SIGTERM/SIGINT): stop accepting and reading, let backend calls in flight finish
//! (bounded by `SHUTDOWN_TIMEOUT`), then send every connection `SERVER_SHUTDOWN` and close 1001.
//! Presence and typing changes caused by the drain itself are not broadcast (the hub is told
//! it drains): everyone is being disconnected anyway.
//!
//! Here: the shared and per-worker state, the effects, delivery and its flow control. By
//! concern, in files of their own: `admission` (connection caps, live tasks), `drain`,
//! `runtime` (threads, listeners, the long-lived loops), `server_api` (applying server API
//! requests on every worker) and `signal` (the drain's stop event).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpListener;
use slab::Slab;

use super::arena::EventFrame;
use super::connection;
use super::outbox::{now_ms, Class, Outbox, Pushed};
use crate::api::{Action, ApiError, Outcome};
use crate::backend::{Backend, BackendError, NewMessage};
use crate::broker::{
    fanout, Bus, ConnId, Envelope, EventKind, Local, Mailbox, NodeId, Origin, RoomEvent,
};
use crate::config::Settings;
use crate::config::CLOSE_GRACE;
use crate::core::hub::{Answer, Call, Effect, Failure, Hub, HubConfig, Step};
use crate::core::pressure::Pressure;
use crate::core::session::User;
use crate::core::stall::Look;
use crate::metrics::{call, Metrics, WorkerMetrics};
use crate::protocol::frame::control_frame;
use crate::protocol::outbound::{error_frame, ErrorDetails};
use crate::protocol::{timestamp, CloseCode, ErrorCode, Outbound};
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
    pub(in crate::net) config: Settings,
    /// The backend.
    pub(in crate::net) backend: Arc<dyn Backend>,
    /// This process in the cluster.
    node: NodeId,
    /// Every worker's mailbox, by worker id.
    mailboxes: Vec<Arc<Mailbox>>,
    /// Where room events and presence changes go beyond their worker.
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
    /// The state for `config.listen.workers` workers over `backend`, joined by the
    /// in-process bus.
    pub fn new(config: Settings, backend: Arc<dyn Backend>, metrics: Metrics) -> Self {
        let mailboxes = Mailbox::for_workers(config.listen.workers);
        let node = Self::node_of(&config);
        let bus = Box::new(Local::new(mailboxes.clone()));
        Self::with_bus(config, backend, metrics, node, mailboxes, bus)
    }

    /// The node id `config` names (`NODE_ID`), or a random one.
    pub fn node_of(config: &Settings) -> NodeId {
        config
            .node_id
            .as_deref()
            .map_or_else(NodeId::random, NodeId::named)
    }

    /// The state of node `node` over `bus` (a multi-node broker, or a test double) and the
    /// workers' `mailboxes` (one per worker).
    pub fn with_bus(
        config: Settings,
        backend: Arc<dyn Backend>,
        metrics: Metrics,
        node: NodeId,
        mailboxes: Vec<Arc<Mailbox>>,
        bus: Box<dyn Bus>,
    ) -> Self {
        let workers = mailboxes.len();
        Self {
            backend,
            node,
            bus,
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
    pub fn config(&self) -> &Settings {
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

    /// This process's node id (logged at start-up).
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether the bus reaches the other nodes (`None`: a single node).
    pub fn broker_connected(&self) -> Option<bool> {
        self.bus.connected()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.mailboxes.len()
    }

    /// Starts the drain on every worker.
    pub fn shutdown(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            crate::systemd::stopping();
            self.bus.stop();
            for mb in &self.mailboxes {
                mb.post(Envelope::Shutdown);
            }
        }
    }
}

/// A worker's state. Lives on its thread only.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// The chat rules: connections, rooms, typing, presence, sessions.
    hub: RefCell<Hub<Rc<Outbox>>>,
    /// Where idle connections read into, one poll at a time (see `split::Input::poll_fill`).
    pub read_scratch: RefCell<Vec<u8>>,
    /// Fired when the drain starts: stop accepting and reading.
    pub stop: Signal,
    /// The heartbeat's ping frame, encoded once for every connection.
    ping: Bytes,
    inflight: Cell<usize>,
    tasks: Cell<usize>,
    parked: Cell<usize>,
    last_probe: Cell<Option<(Instant, bool)>>,
    /// This worker's metric handles.
    pub metrics: WorkerMetrics,
}

/// A backend failure as the hub sees it.
fn failure(e: BackendError) -> Failure {
    Failure {
        code: e.code(),
        message: e.client_message(),
        status: e.status(),
    }
}

impl Worker {
    fn new(id: usize, shared: Arc<Shared>) -> Self {
        let cfg = &shared.config;
        let rules = HubConfig {
            typing_timeout: cfg.session.typing_timeout,
            heartbeat_interval: cfg.session.heartbeat_interval,
            connection_timeout: cfg.session.connection_timeout,
            refetch_interval: cfg.session.refetch_interval,
            rate_limit: cfg.session.rate.map_or(0, |r| r.per_second.get()),
            rate_burst: cfg.session.rate.map_or(0, |r| r.burst.get()),
            history_budget: cfg.flow.max_outbox_bytes / 2,
        };
        let hub = Hub::new(rules, Instant::now(), timestamp::now);
        Self {
            id,
            metrics: shared.metrics.for_worker(id),
            shared,
            hub: RefCell::new(hub),
            read_scratch: RefCell::new(vec![0; READ_SCRATCH]),
            stop: Signal::default(),
            ping: control_frame(fastwebsockets::OpCode::Ping, b""),
            inflight: Cell::new(0),
            tasks: Cell::new(0),
            parked: Cell::new(0),
            last_probe: Cell::new(None),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Settings {
        &self.shared.config
    }

    /// Whether the drain has begun.
    pub fn draining(&self) -> bool {
        self.stop.is_set()
    }

    /// Number of connections on this worker.
    pub fn connections(&self) -> usize {
        self.hub.borrow().len()
    }

    /// This worker in the cluster.
    fn origin(&self) -> Origin {
        Origin {
            node: self.shared.node,
            worker: self.id,
        }
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

    /// Makes a backend call the hub asked for (`Step::Call`) on behalf of a connection whose
    /// token is `token`. Takes what it sends out of `call` (the message text); the rest stays
    /// for [`Worker::reply`].
    pub async fn call(&self, token: &str, call: &mut Call) -> Result<Answer, Failure> {
        let backend = &self.shared.backend;
        let answer = match call {
            Call::Chats { .. } => self
                .backend_call(call::CHATS, backend.chats(token))
                .await
                .map(Answer::Chats),
            Call::CreateMessage {
                chat,
                content,
                client_message_id,
                sender,
            } => {
                let new = NewMessage {
                    chat_id: chat.to_string(),
                    content: std::mem::take(content),
                    client_message_id: client_message_id.take(),
                    sender_id: sender.id.to_string(),
                    sender_name: sender.name.to_string(),
                };
                self.backend_call(call::CREATE_MESSAGE, backend.create_message(token, new))
                    .await
                    .map(Answer::Created)
            }
            Call::MarkRead { chat, message_id } => self
                .backend_call(call::MARK_READ, backend.mark_read(token, chat, message_id))
                .await
                .map(Answer::Read),
            Call::History(req) => self
                .backend_call(
                    call::HISTORY,
                    backend.history(token, &req.chat_id, &req.page),
                )
                .await
                .map(|h| Answer::History {
                    messages: h.messages,
                    has_more: h.has_more,
                }),
        };
        answer.map_err(failure)
    }

    /// Opens an authenticated connection in the hub (`connected`, rooms, presence).
    pub fn open(&self, user: User, chats: Vec<Arc<str>>, conn: Rc<Outbox>) -> usize {
        let slot = self
            .hub
            .borrow_mut()
            .open(user, chats, conn, Instant::now());
        self.metrics.connections.inc();
        self.flush();
        slot
    }

    /// Removes a connection: it leaves its rooms, its typing indicators and presence end.
    pub fn close(&self, slot: usize) {
        let closed = self.hub.borrow_mut().close(slot);
        if closed.is_some() {
            self.metrics.connections.dec();
        }
        self.flush();
    }

    /// The user behind a connection.
    pub fn user_of(&self, slot: usize) -> Option<User> {
        self.hub.borrow().get(slot).map(|m| m.user().clone())
    }

    /// A frame arrived on a connection.
    pub fn seen(&self, slot: usize, now: Instant) {
        self.hub.borrow_mut().seen(slot, now);
    }

    /// The rate limit for one message; `false`: answered, drop it.
    pub fn admit_message(&self, slot: usize, now: Instant) -> bool {
        let allowed = self.hub.borrow_mut().admit(slot, now);
        self.flush();
        allowed
    }

    /// A message that is not a valid command.
    pub fn reject(&self, slot: usize, code: ErrorCode, message: String) {
        self.hub.borrow_mut().reject(slot, code, message);
        self.flush();
    }

    /// A valid command from a connection; what it waits for next.
    pub fn command(&self, slot: usize, cmd: crate::protocol::Command, now: Instant) -> Step {
        let step = self.hub.borrow_mut().command(slot, cmd, now);
        self.flush();
        step
    }

    /// The backend's answer to a call the hub asked for.
    pub fn reply(&self, slot: usize, call: Call, answer: Result<Answer, Failure>) -> Step {
        let step = self
            .hub
            .borrow_mut()
            .reply(slot, call, answer, Instant::now());
        self.flush();
        step
    }

    /// Carries out what the hub asked for, in its order.
    fn flush(&self) {
        loop {
            // The borrow ends with this statement: effects may feed the hub again.
            let effect = self.hub.borrow_mut().poll();
            let Some(effect) = effect else { return };
            match effect {
                Effect::Send { conn, frame } => {
                    if let Some(m) = self.hub.borrow().get(conn) {
                        m.io.push(&frame);
                    }
                }
                Effect::Ping { conn } => {
                    if let Some(m) = self.hub.borrow().get(conn) {
                        m.io.push_class(&self.ping, Class::Volatile);
                    }
                }
                Effect::Error {
                    conn,
                    code,
                    message,
                    status,
                } => {
                    self.shared.metrics.error(code);
                    if let Some(m) = self.hub.borrow().get(conn) {
                        let details = ErrorDetails { status };
                        let frame = Outbound::Error {
                            code,
                            message: &message,
                            details: &details,
                        }
                        .to_frame();
                        m.io.push(&frame);
                    }
                }
                Effect::Close { conn, code } => {
                    if let Some(m) = self.hub.borrow().get(conn) {
                        self.shared.metrics.closed(code);
                        m.io.close(code);
                    }
                }
                Effect::Publish {
                    rooms,
                    frame,
                    exclude,
                    kind,
                } => self.publish(rooms, frame, exclude, kind),
                Effect::Presence(change) => self.shared.bus.presence(self.id, change),
                Effect::Interest { room, joined } => {
                    if joined {
                        self.shared.bus.join(self.id, &room);
                    } else {
                        self.shared.bus.leave(self.id, &room);
                    }
                }
            }
        }
    }

    /// Publishes an event to `rooms`: local members now, everyone else through the bus.
    pub fn publish(
        &self,
        rooms: Vec<Arc<str>>,
        frame: Bytes,
        exclude: Option<usize>,
        kind: EventKind,
    ) {
        let origin = self.origin();
        let event = Arc::new(RoomEvent {
            rooms,
            frame,
            origin,
            exclude: exclude.map(|slot| ConnId { at: origin, slot }),
            kind,
        });
        self.deliver(&event);
        self.shared.bus.publish(event);
    }

    /// Queues `event` to its local members; returns how many got it.
    fn deliver(&self, event: &RoomEvent) -> usize {
        let exclude = event.exclude.and_then(|c| c.slot_on(self.origin()));
        let class = event.kind.class();
        let (mut queued, mut dropped) = (0u64, 0u64);
        let mut pressed = false;
        // Copied into the arena once, by the first recipient whose socket is idle.
        let mut frame = EventFrame::new(&event.frame);
        self.hub
            .borrow_mut()
            .for_each_member(&event.rooms, exclude, |_, m| {
                let c = &m.io;
                match c.push_event(&mut frame, class) {
                    Pushed::Queued => {
                        queued += 1;
                        pressed = pressed || (class == Class::Reliable && c.pressing());
                    }
                    Pushed::Dropped => dropped += 1,
                    Pushed::Overflow => {
                        self.metrics.slow_consumers.inc();
                        self.shared.metrics.closed(CloseCode::SlowConsumer);
                        tracing::warn!(user_id = %m.user().id, "Slow consumer closed");
                    }
                }
            });
        self.metrics.deliveries[event.kind as usize].inc_by(queued);
        if dropped > 0 {
            self.metrics.dropped.inc_by(dropped);
        }
        if pressed {
            let now = now_ms();
            for room in &event.rooms {
                self.shared.pressure.mark(room, now);
            }
        }
        if super::outbox::queued_here() > self.config().flow.outbox_budget {
            self.shed();
        }
        queued as usize
    }

    /// Publisher back-pressure (`core::pressure`): called by a connection's reader after it
    /// published to `chat`; pauses reading from that sender briefly while a reader of the
    /// chat, on any worker, is draining a long backlog, for at most a quarter of any
    /// `STALL_TIMEOUT` window (the sender's budget).
    pub async fn pace(&self, sender: usize, chat: &str) {
        let Some(pause) = self.shared.pressure.pause(chat, now_ms) else {
            return;
        };
        let window =
            u32::try_from(self.config().flow.stall_timeout.as_millis()).unwrap_or(u32::MAX);
        let allowed = self
            .hub
            .borrow_mut()
            .get_mut(sender)
            .is_some_and(|m| m.take_pause(now_ms(), pause.as_millis() as u32, window));
        if allowed {
            self.metrics.publisher_pauses.inc();
            monoio::time::sleep(pause).await;
        }
    }

    /// Brings this worker's queues back under 90% of `OUTBOX_BUDGET` by closing connections
    /// (4009, queue freed at once): the largest backlogs that are not draining first, then,
    /// only if that is not enough, draining ones, largest first.
    fn shed(&self) {
        let target = self.config().flow.outbox_budget / 10 * 9;
        let hub = self.hub.borrow();
        let mut backlogs: Vec<(bool, std::cmp::Reverse<usize>, usize)> = hub
            .iter()
            .filter(|(_, m)| m.io.queued() > 0 && !m.io.is_closing())
            .map(|(slot, m)| {
                let o = &m.io;
                (o.draining(), std::cmp::Reverse(o.queued()), slot)
            })
            .collect();
        backlogs.sort_unstable();
        for (draining, std::cmp::Reverse(queued), slot) in backlogs {
            if super::outbox::queued_here() <= target {
                break;
            }
            let Some(m) = hub.get(slot) else { continue };
            tracing::warn!(user_id = %m.user().id, queued, draining, "Slow consumer closed: over the worker's OUTBOX_BUDGET");
            self.metrics.budget_sheds.inc();
            self.shared.metrics.closed(CloseCode::SlowConsumer);
            m.io.discard();
        }
    }

    fn handle(&self, e: Envelope) {
        match e {
            Envelope::Room(ev) => {
                self.deliver(&ev);
            }
            Envelope::Api { actions, share } => {
                share.give(self.apply_api(&actions));
            }
            Envelope::Presence(change) => {
                self.hub.borrow_mut().presence(change);
                self.flush();
            }
            Envelope::Resync(chats) => {
                self.hub.borrow_mut().resync(&chats);
                self.flush();
            }
            Envelope::Shutdown => {
                self.hub.borrow_mut().drain();
                self.stop.fire();
            }
        }
    }

    /// The hub's timers (typing expiry, heartbeat) due at `now`.
    fn timers(&self, now: Instant) {
        self.hub.borrow_mut().handle_timeout(now);
        self.flush();
    }

    /// One look of the stall rule at every connection (`core::stall`): progress counts as the
    /// client being alive; a connection stuck with bytes waiting is closed (4009) and its
    /// queue freed at once (nothing more can be written to it, not even a close frame).
    fn check_stalls(&self, now: Instant) {
        let mut queued = 0;
        let mut hub = self.hub.borrow_mut();
        let rules = *hub.rules();
        for (_, m) in hub.iter_mut() {
            let outbox = &m.io;
            queued += outbox.queued();
            match outbox.look() {
                Look::Progress => m.seen(now, &rules),
                Look::Stuck => {
                    tracing::warn!(user_id = %m.user().id, queued = outbox.queued(), writer = outbox.writer_state(), "Slow consumer closed: stalled");
                    self.metrics.stall_closes.inc();
                    self.shared.metrics.closed(CloseCode::SlowConsumer);
                    outbox.abort();
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

#[cfg(test)]
mod tests;
