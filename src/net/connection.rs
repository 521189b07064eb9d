//! One connection, from the first byte to the last: handshake, authentication, the read loop,
//! and the close. See `LIFECYCLE` below for the states.
//!
//! ```text
//! accepted ──head──▶ plain GET ──▶ http::respond, close
//!     │                upgrade ──▶ 101 ──▶ authenticating ──fail──▶ error + 4001, linger
//!     │                                        │ ok
//!     │                                        ▼
//!     └─(AUTH_TIMEOUT: drop)            registered (rooms, presence) + `connected`
//!                                              │ read loop
//!                                              ▼
//!                         closing (client close / protocol error / idle / drain) ─▶ linger ─▶ gone
//! ```
//!
//! The read loop is the only place client frames are handled: one frame at a time, so a
//! connection's `chat:message` and `chat:read` are processed in arrival order (each awaits its
//! backend call before the next frame is read). Writes never happen here: everything goes
//! into the connection's [`Outbox`], flushed by its writer task.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handshake::{self, Request, MAX_HEAD};
use super::mailbox::EventKind;
use super::outbox::Outbox;
use super::reader::{finish, linger, read_loop, End, Handler, Limits};
use super::split::{self, Input};
use super::worker::{Conn, Refused, TaskGuard, Worker};
use crate::backend::{BackendError, NewMessage, Profile};
use crate::core::rate::{Admission, RateLimit};
use crate::core::session::{Decision, Session, User};
use crate::http::http_response;
use crate::metrics::call;
use crate::protocol::frame::Message;
use crate::protocol::outbound::{error_frame, ErrorDetails, Outbound};
use crate::protocol::{inbound, timestamp, CloseCode, Command, ErrorCode, HistoryRequest};

/// Most connections over the caps that may still be read for a health probe, process-wide.
const MAX_PROBES: usize = 16;
/// How long a connection over the caps has to send its request head (probes send it at once;
/// short, so idle sockets cannot hold the [`MAX_PROBES`] slots for long).
const PROBE_READ_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the answer to a probe (or the 503) may take to write.
const PROBE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Plain GETs answered even when the connection caps are reached: an orchestrator must not
/// restart a healthy, full instance because its liveness probe was refused.
const PROBE_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Reads a request head into `buf` within `deadline`. `Ok(None)`: the peer closed or was too
/// slow; the head is capped at [`MAX_HEAD`] bytes.
pub(super) async fn read_head(
    stream: &mut TcpStreamPoll,
    buf: &mut BytesMut,
    deadline: Duration,
) -> Result<Option<(Request, usize)>, handshake::HandshakeError> {
    let head = monoio::time::timeout(deadline, async {
        loop {
            if let Some(found) = handshake::parse(buf)? {
                return Ok(Some(found));
            }
            buf.reserve(1024.min((MAX_HEAD + 1).saturating_sub(buf.len())));
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    })
    .await;
    head.unwrap_or(Ok(None))
}

async fn answer_bad_head(stream: &mut TcpStreamPoll, e: handshake::HandshakeError) {
    let (status, reason) = e.status();
    let body = e.to_string();
    let response = http_response(status, reason, "text/plain", body.as_bytes());
    let _ = stream.write_all(&response).await;
}

/// Answers a plain HTTP request (health, readiness, metrics, demo page) and closes.
async fn answer_http(worker: &Rc<Worker>, stream: &mut TcpStreamPoll, req: &Request) {
    let response = crate::http::respond(&**worker, &req.method, &req.path).await;
    // Bounded: a client that never reads must not hold a connection slot forever.
    let _ = monoio::time::timeout(worker.config().auth_timeout(), async {
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A connection over `MAX_CONNECTIONS` or `MAX_CONNECTIONS_PER_IP`: refused with 503, except
/// a plain GET of a [`PROBE_PATHS`] path, answered as usual if it arrives within
/// [`PROBE_READ_TIMEOUT`] while fewer than [`MAX_PROBES`] such connections are being served.
/// Not guaranteed: a client that itself opens [`MAX_PROBES`] silent sockets every
/// [`PROBE_READ_TIMEOUT`] can still crowd probes out.
async fn serve_refused(worker: &Rc<Worker>, stream: &mut TcpStreamPoll, refused: Refused) {
    /// Holds one probe slot; released however the probe ends.
    struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let probes = &worker.shared.counts.probes;
    let slot = Slot(probes);
    if probes.fetch_add(1, Ordering::Relaxed) < MAX_PROBES {
        let mut buf = BytesMut::with_capacity(1024);
        let head = read_head(stream, &mut buf, PROBE_READ_TIMEOUT).await;
        if let Ok(Some((req, _))) = &head {
            if matches!(req.method.as_str(), "GET" | "HEAD")
                && req.upgrade.is_none()
                && PROBE_PATHS.contains(&req.path.as_str())
            {
                let response = crate::http::respond(&**worker, &req.method, &req.path).await;
                let _ = monoio::time::timeout(PROBE_WRITE_TIMEOUT, async {
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                })
                .await;
                return;
            }
        }
    }
    drop(slot);
    tracing::warn!(reason = %refused, "Connection refused");
    worker.shared.metrics.refused(&refused.to_string());
    let body = refused.to_string();
    let response = http_response(503, "Service Unavailable", "text/plain", body.as_bytes());
    let _ = monoio::time::timeout(PROBE_WRITE_TIMEOUT, stream.write_all(&response)).await;
}

/// A request that is not an upgrade: the server API, or the plain HTTP endpoints.
async fn serve_plain(
    worker: &Rc<Worker>,
    stream: &mut TcpStreamPoll,
    req: &Request,
    rest: BytesMut,
) {
    if crate::api::is_api_path(&req.path) {
        super::api::serve(worker, stream, req, rest, super::api::Port::Shared).await
    } else {
        answer_http(worker, stream, req).await
    }
}

/// Serves one accepted socket: handshake and authentication here, then the steady state in a
/// task of its own (so the large handshake state is freed once the connection is idle).
pub async fn serve(worker: Rc<Worker>, stream: TcpStream) {
    // AUTH_TIMEOUT bounds the request head and the authentication together, from accept.
    let accepted = Instant::now();
    let Some((mut stream, live)) = admit(&worker, stream).await else {
        return;
    };
    let Some((token, path, prefix)) = upgrade(&worker, &mut stream).await else {
        return;
    };
    let (mut input, write_half) = split::split(stream, prefix);
    let outbox = Rc::new(Outbox::new(worker.config().max_outbox_bytes));
    monoio::spawn({
        let outbox = outbox.clone();
        async move { outbox.run_writer(write_half).await }
    });
    let Some(token) = token.filter(|t| handshake::token_is_well_formed(t)) else {
        let missing = BackendError::TokenRejected("Missing token".into());
        reject(&worker, &outbox, missing, &path);
        return linger(&mut input, &outbox).await;
    };
    let started = Instant::now();
    let deadline = accepted + worker.config().auth_timeout();
    let (profile, chats) = match authenticate(&worker, &token, deadline).await {
        Ok(found) => found,
        Err(e) => {
            reject(&worker, &outbox, e, &path);
            return linger(&mut input, &outbox).await;
        }
    };
    if worker.draining() {
        // Authenticated after the drain's notices went out: tell this one directly.
        outbox.push(&error_frame(
            ErrorCode::ServerShutdown,
            "Server is shutting down",
        ));
        outbox.close(CloseCode::GoingAway);
        worker.shared.metrics.closed(CloseCode::GoingAway);
        return linger(&mut input, &outbox).await;
    }
    let (conn, slot) = open_session(&worker, outbox, profile, chats);
    tracing::info!(
        user_id = %conn.session.borrow().user().id,
        chat_count = conn.session.borrow().chats().len(),
        chat_ids = ?conn.session.borrow().chats(),
        worker = worker.id,
        path = %path,
        auth_ms = started.elapsed().as_secs_f64() * 1e3,
        "User connected"
    );
    monoio::spawn(steady(worker, conn, slot, token, input, live));
}

/// Admission (the connection caps) and the switch to readiness I/O; a refused socket is
/// answered here. `None`: nothing more to do with it.
async fn admit(worker: &Rc<Worker>, stream: TcpStream) -> Option<(TcpStreamPoll, TaskGuard)> {
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let admitted = worker.admit(peer);
    let _ = stream.set_nodelay(true);
    let mut stream = match stream.try_into_poll_io() {
        Ok(s) => s,
        Err((e, _)) => {
            tracing::warn!(error = %e, "poll-io conversion failed");
            return None;
        }
    };
    match admitted {
        Ok(guard) => Some((stream, guard)),
        Err(refused) => {
            serve_refused(worker, &mut stream, refused).await;
            None
        }
    }
}

/// Reads the request head and completes the WebSocket upgrade (Origin rule, 101), or answers
/// a plain request. Returns the token the client sent, the path (for logs) and the bytes that
/// arrived behind the head.
async fn upgrade(
    worker: &Rc<Worker>,
    stream: &mut TcpStreamPoll,
) -> Option<(Option<String>, String, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    let (req, consumed) = match read_head(stream, &mut buf, worker.config().auth_timeout()).await {
        Ok(Some(found)) => found,
        Ok(None) => return None, // closed or too slow before a full head
        Err(e) => {
            answer_bad_head(stream, e).await;
            return None;
        }
    };
    let Some(upgrade) = req.upgrade.clone() else {
        // Boxed: plain requests are rare, and their state must not grow every handshake's
        // task (many are alive at once during a connect storm).
        let rest = buf.split_off(consumed);
        Box::pin(serve_plain(worker, stream, &req, rest)).await;
        return None;
    };
    if !handshake::origin_allowed(
        req.origin.as_deref(),
        req.host.as_deref(),
        &worker.shared.allowed_origins,
    ) {
        let origin = req.origin.as_deref().unwrap_or("");
        tracing::warn!(origin, "Origin rejected");
        let refusal = http_response(403, "Forbidden", "text/plain", b"origin not allowed");
        let _ = stream.write_all(&refusal).await;
        return None;
    }
    let accept = handshake::switching_protocols(&upgrade);
    if stream.write_all(&accept).await.is_err() {
        return None;
    }
    // Copy (not split off) what came behind the head, so the head buffer is freed now; only
    // the path is kept from the head (logs).
    Some((upgrade.token, req.path, BytesMut::from(&buf[consumed..])))
}

/// Authenticates `token` and fetches the user's chats, by `deadline`.
async fn authenticate(
    worker: &Worker,
    token: &str,
    deadline: Instant,
) -> Result<(Profile, Vec<String>), BackendError> {
    let backend = worker.shared.backend.clone();
    let auth = worker.backend_call(call::AUTHENTICATE, async {
        let profile = backend.authenticate(token).await?;
        let chats = backend.chats(token).await?;
        Ok::<_, BackendError>((profile, chats))
    });
    let left = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(left, auth).await {
        Ok(found) => found,
        Err(_) => Err(BackendError::UpstreamTimeout),
    }
}

/// Opens the session of an authenticated user: queues `connected`, then joins the rooms.
fn open_session(
    worker: &Worker,
    outbox: Rc<Outbox>,
    profile: Profile,
    chats: Vec<String>,
) -> (Rc<Conn>, usize) {
    let now = Instant::now();
    let chats: Vec<Arc<str>> = chats.into_iter().map(Arc::from).collect();
    let name = if profile.name.is_empty() {
        profile.user_id.clone()
    } else {
        profile.name
    };
    let user = User {
        id: profile.user_id.into(),
        name: name.into(),
    };
    // `connected` is queued before the rooms are joined, in the same tick: it is the first
    // frame the client sees, and no room event can fall between the two.
    outbox.push(
        &Outbound::Connected {
            user_id: &user.id,
            chat_ids: &chats,
        }
        .to_frame(),
    );
    let cfg = worker.config();
    let session = Session::new(
        user,
        chats,
        now,
        cfg.chats_refetch_interval(),
        cfg.connection_timeout(),
        RateLimit::new(cfg.rate_limit, cfg.rate_burst, now),
    );
    let conn = Rc::new(Conn {
        outbox,
        session: session.into(),
        paced: Default::default(),
    });
    let slot = worker.register(conn.clone());
    (conn, slot)
}

/// The steady state of an authenticated connection: the read loop, then the close.
async fn steady(
    worker: Rc<Worker>,
    conn: Rc<Conn>,
    slot: usize,
    token: String,
    mut input: Input,
    _live: TaskGuard,
) {
    let cfg = worker.config();
    let limits = Limits {
        max_message_size: cfg.max_message_size,
        max_fragments: cfg.max_fragments,
    };
    let mut chat = Chat {
        worker: &worker,
        conn: &conn,
        slot,
        token: &token,
    };
    let end = read_loop(
        &mut input,
        &conn.outbox,
        &worker.read_scratch,
        limits,
        &mut chat,
    )
    .await;
    match end {
        End::Violation(code) => {
            worker.shared.metrics.closed(code);
            conn.outbox.close(code);
        }
        End::Draining => {
            // Still registered, so the worker's drain sends SERVER_SHUTDOWN + 1001 here once
            // every connection has finished the work it accepted.
            worker.park();
            let cfg = worker.config();
            let patience = cfg.drain_wait() + cfg.drain_window() + Duration::from_secs(1);
            let wait = monoio::time::timeout(patience, conn.outbox.closed());
            let _ = Box::pin(wait).await;
        }
        End::Gone => conn.outbox.close(CloseCode::Normal),
        End::ClientClosed | End::Closed => {}
    }
    worker.unregister(slot);
    tracing::info!(user_id = %conn.session.borrow().user().id, worker = worker.id, "User disconnected");
    // Boxed, like every rarely used state, to keep the idle task small. Both end by aborting
    // the writer, so the socket is released even if the peer never reads.
    if matches!(end, End::Gone | End::ClientClosed) {
        conn.outbox.close(CloseCode::Normal);
        Box::pin(finish(&conn.outbox)).await;
    } else {
        Box::pin(linger(&mut input, &conn.outbox)).await;
    }
}

/// Answers a failed authentication: the error, then the close code for it.
fn reject(worker: &Worker, outbox: &Outbox, e: BackendError, path: &str) {
    let (code, close) = match e.code() {
        ErrorCode::HttpError => (ErrorCode::HttpError, CloseCode::TryAgainLater),
        ErrorCode::InternalError => (ErrorCode::InternalError, CloseCode::InternalError),
        _ => (ErrorCode::AuthFailed, CloseCode::AuthFailed),
    };
    tracing::warn!(path = %path, reason = %e, code = code.as_str(), "Authentication failed");
    worker.shared.metrics.error(code);
    let details = ErrorDetails { status: e.status() };
    let message = e.client_message();
    outbox.push(
        &Outbound::Error {
            code,
            message: &message,
            details: &details,
        }
        .to_frame(),
    );
    worker.shared.metrics.closed(close);
    outbox.close(close);
}

/// The chat side of the frame loop: liveness, drain, and one complete message at a time.
struct Chat<'a> {
    worker: &'a Worker,
    conn: &'a Conn,
    slot: usize,
    token: &'a str,
}

impl Handler for Chat<'_> {
    fn seen(&mut self, now: Instant) {
        self.conn.session.borrow_mut().seen(now);
    }

    fn draining(&self) -> bool {
        self.worker.draining()
    }

    async fn message(&mut self, message: Message, now: Instant) {
        let admission = self.conn.session.borrow_mut().admit(now);
        match admission {
            Admission::Allowed => {}
            Admission::Rejected => {
                return send_error(
                    self.worker,
                    &self.conn.outbox,
                    ErrorCode::RateLimited,
                    "Too many messages; slow down",
                    None,
                );
            }
            Admission::Abusive => {
                tracing::warn!(user_id = %self.conn.session.borrow().user().id, "Rate limit abuse, closing");
                send_error(
                    self.worker,
                    &self.conn.outbox,
                    ErrorCode::RateLimited,
                    "Too many messages",
                    None,
                );
                self.worker.shared.metrics.closed(CloseCode::RateLimited);
                self.conn.outbox.close(CloseCode::RateLimited);
                return;
            }
        }
        let mut payload = message.payload;
        let parsed = inbound::parse(&mut payload);
        let kind = match &parsed {
            Ok(Command::SendMessage { .. }) => 0,
            Ok(Command::MarkRead { .. }) => 1,
            Ok(Command::Typing { .. }) => 2,
            Ok(Command::Ping) => 3,
            Ok(Command::History(_)) => 4,
            Err(_) => 5,
        };
        self.worker.metrics.messages_in[kind].inc();
        match parsed {
            Ok(cmd) => self.handle(cmd, now).await,
            Err(e) => send_error(
                self.worker,
                &self.conn.outbox,
                e.code(),
                &e.to_string(),
                None,
            ),
        }
    }
}

fn send_error(
    worker: &Worker,
    outbox: &Outbox,
    code: ErrorCode,
    message: &str,
    status: Option<u16>,
) {
    worker.shared.metrics.error(code);
    // Codes that end the connection (AUTH_FAILED mid-session: the token was revoked) do so.
    let close = code.close_code();
    let details = ErrorDetails { status };
    outbox.push(
        &Outbound::Error {
            code,
            message,
            details: &details,
        }
        .to_frame(),
    );
    if let Some(close) = close {
        worker.shared.metrics.closed(close);
        outbox.close(close);
    }
}

fn not_participant(worker: &Worker, conn: &Conn) {
    send_error(
        worker,
        &conn.outbox,
        ErrorCode::NotParticipant,
        "Not a participant of this chat",
        None,
    );
}

fn backend_error(worker: &Worker, outbox: &Outbox, e: &BackendError) {
    send_error(worker, outbox, e.code(), &e.client_message(), e.status());
}

/// Answers a backend error for an action in `chat`. `NOT_PARTICIPANT` for a chat the session
/// believed it was in may mean the user was removed from it (or only that this action is not
/// allowed, e.g. a read receipt for a missing message): the chat list is re-fetched (within the
/// session's re-fetch budget) and decides which rooms the connection stays in, so a removed
/// user stops receiving the chat without waiting for a reconnect.
async fn chat_backend_error(
    worker: &Worker,
    conn: &Conn,
    slot: usize,
    token: &str,
    chat: &str,
    e: &BackendError,
) {
    backend_error(worker, &conn.outbox, e);
    if !matches!(e, BackendError::NotParticipant(_)) {
        return;
    }
    let verify = {
        let mut session = conn.session.borrow_mut();
        session.is_member(chat) && session.start_refetch(Instant::now())
    };
    if !verify {
        return;
    }
    let backend = worker.shared.backend.clone();
    if let Ok(chats) = worker.backend_call(call::CHATS, backend.chats(token)).await {
        let chats = chats.into_iter().map(Arc::from).collect();
        let change = conn.session.borrow_mut().refetched(chats);
        worker.rejoin(slot, &change.joined, &change.left);
    }
}

impl Chat<'_> {
    /// Carries out one parsed command, in arrival order.
    async fn handle(&self, cmd: Command, now: Instant) {
        let Some(cmd) = self.admitted(cmd, now).await else {
            return;
        };
        let (worker, conn, slot, token) = (self.worker, self.conn, self.slot, self.token);
        match cmd {
            Command::Ping => {
                let ts = timestamp::now();
                conn.outbox
                    .push(&Outbound::Pong { timestamp: &ts }.to_frame());
            }
            Command::SendMessage {
                chat_id,
                content,
                client_message_id,
            } => self.send_message(chat_id, content, client_message_id).await,
            Command::MarkRead {
                chat_id,
                message_id,
            } => self.mark_read(chat_id, message_id).await,
            // Boxed, like every rarely used state, to keep the idle task small.
            Command::History(req) => Box::pin(history(worker, conn, slot, token, *req)).await,
            Command::Typing { chat_id, is_typing } => self.typing(&chat_id, is_typing, now),
        }
    }

    /// The membership rule (`core::session`): the command if the user is in its chat, after
    /// one re-fetch of the chat list if the session asks for it; `None` once answered.
    async fn admitted(&self, cmd: Command, now: Instant) -> Option<Command> {
        let (worker, conn) = (self.worker, self.conn);
        let decision = conn.session.borrow_mut().decide(cmd, now);
        let cmd = match decision {
            Decision::Execute(cmd) => return Some(cmd),
            Decision::NotParticipant(_) => {
                not_participant(worker, conn);
                return None;
            }
            Decision::Refetch(cmd) => cmd,
        };
        let backend = worker.shared.backend.clone();
        match worker
            .backend_call(call::CHATS, backend.chats(self.token))
            .await
        {
            Ok(chats) => {
                let chats = chats.into_iter().map(Arc::from).collect();
                let change = conn.session.borrow_mut().refetched(chats);
                worker.rejoin(self.slot, &change.joined, &change.left);
                let decision = conn.session.borrow().after_refetch(cmd);
                match decision {
                    Decision::Execute(cmd) => Some(cmd),
                    _ => {
                        not_participant(worker, conn);
                        None
                    }
                }
            }
            Err(e) => {
                backend_error(worker, &conn.outbox, &e);
                None
            }
        }
    }

    /// `chat:message`: stored by the backend, then published to the chat (the sender's
    /// devices included), then paced (publisher back-pressure).
    async fn send_message(
        &self,
        chat_id: String,
        content: String,
        client_message_id: Option<String>,
    ) {
        let (worker, conn) = (self.worker, self.conn);
        let user = conn.session.borrow().user().clone();
        let asked = chat_arc(conn, &chat_id);
        let new = NewMessage {
            chat_id,
            content,
            client_message_id,
            sender_id: user.id.to_string(),
            sender_name: user.name.to_string(),
        };
        let backend = worker.shared.backend.clone();
        let created = worker
            .backend_call(
                call::CREATE_MESSAGE,
                backend.create_message(self.token, new),
            )
            .await;
        match created {
            Ok(m) => {
                tracing::debug!(user_id = %user.id, chat_id = %m.chat_id, message_id = %m.id, "Message sent");
                let frame = Outbound::ChatMessage {
                    chat_id: &m.chat_id,
                    message: &m,
                }
                .to_frame();
                let room = chat_arc(conn, &m.chat_id);
                worker.publish(vec![room], frame, None, EventKind::Message);
                worker.pace(conn, &m.chat_id).await;
            }
            Err(e) => chat_backend_error(worker, conn, self.slot, self.token, &asked, &e).await,
        }
    }

    /// `chat:read`: recorded by the backend, then published to the chat and paced.
    async fn mark_read(&self, chat_id: String, message_id: String) {
        let (worker, conn) = (self.worker, self.conn);
        let backend = worker.shared.backend.clone();
        let marked = worker
            .backend_call(
                call::MARK_READ,
                backend.mark_read(self.token, &chat_id, &message_id),
            )
            .await;
        match marked {
            Ok(read_at) => {
                let user = conn.session.borrow().user().clone();
                // The seed's fallback when the API does not say when.
                let read_at = read_at.unwrap_or_else(timestamp::now);
                tracing::debug!(user_id = %user.id, chat_id = %chat_id, message_id = %message_id, "Read receipt");
                let frame = Outbound::ChatRead {
                    chat_id: &chat_id,
                    message_id: &message_id,
                    user_id: &user.id,
                    read_at: &read_at,
                }
                .to_frame();
                worker.publish(vec![chat_arc(conn, &chat_id)], frame, None, EventKind::Read);
                worker.pace(conn, &chat_id).await;
            }
            Err(e) => chat_backend_error(worker, conn, self.slot, self.token, &chat_id, &e).await,
        }
    }

    /// `chat:typing`: the timer starts or stops, and the chat hears it, except this
    /// connection (the only event that excludes its sender).
    fn typing(&self, chat_id: &str, is_typing: bool, now: Instant) {
        let (worker, conn) = (self.worker, self.conn);
        let user = conn.session.borrow().user().clone();
        let room = chat_arc(conn, chat_id);
        worker.set_typing(self.slot, &room, is_typing, now);
        tracing::debug!(user_id = %user.id, chat_id = %chat_id, is_typing, "Typing");
        let frame = Outbound::ChatTyping {
            chat_id,
            user_id: &user.id,
            user_name: &user.name,
            is_typing,
        }
        .to_frame();
        let sender = Some((worker.id, self.slot));
        worker.publish(vec![room], frame, sender, EventKind::Typing);
    }
}

/// Answers `chat:history` with a page, to this connection only.
async fn history(worker: &Worker, conn: &Conn, slot: usize, token: &str, req: HistoryRequest) {
    let backend = worker.shared.backend.clone();
    let HistoryRequest {
        chat_id,
        page,
        request_id,
    } = req;
    match worker
        .backend_call(call::HISTORY, backend.history(token, &chat_id, &page))
        .await
    {
        Ok(mut h) => {
            // One frame into the outbox: it must fit well under the cap.
            let budget = worker.config().max_outbox_bytes / 2;
            crate::core::history::fit(&page, &mut h.messages, &mut h.has_more, budget);
            conn.outbox.push(
                &Outbound::ChatHistory {
                    chat_id: &chat_id,
                    messages: &h.messages,
                    has_more: h.has_more,
                    request_id: request_id.as_deref(),
                }
                .to_frame(),
            );
        }
        Err(e) => Box::pin(chat_backend_error(worker, conn, slot, token, &chat_id, &e)).await,
    }
}

/// The session's shared id for `chat` (so rooms keyed by it match), or a new one.
fn chat_arc(conn: &Conn, chat: &str) -> Arc<str> {
    conn.session
        .borrow()
        .chats()
        .iter()
        .find(|c| &***c == chat)
        .cloned()
        .unwrap_or_else(|| chat.into())
}
