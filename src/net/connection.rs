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
//! into the connection's [`Outbox`], flushed by the worker's flusher.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handshake::{self, Request, MAX_HEAD};
use super::outbox::Outbox;
use super::reader::{finish, linger, read_loop, End, Handler, Limits};
use super::split::{Input, Socket};
use super::stream::{self, Stream};
use super::worker::{Refused, TaskGuard, Worker};
use crate::backend::{BackendError, Profile};
use crate::core::hub::Step;
use crate::core::session::User;
use crate::http::http_response;
use crate::metrics::call;
use crate::protocol::frame::Message;
use crate::protocol::outbound::{error_frame, ErrorDetails, Outbound};
use crate::protocol::{inbound, CloseCode, Command, ErrorCode};

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
    stream: &mut Stream,
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

async fn answer_bad_head(stream: &mut Stream, e: handshake::HandshakeError) {
    let (status, reason) = e.status();
    let body = e.to_string();
    let response = http_response(status, reason, "text/plain", body.as_bytes());
    let _ = stream.write_all(&response).await;
}

/// Answers a plain HTTP request (health, readiness, metrics, demo page) and closes.
async fn answer_http(worker: &Rc<Worker>, stream: &mut Stream, req: &Request) {
    let response = crate::http::respond(&**worker, &req.method, &req.path).await;
    // Bounded: a client that never reads must not hold a connection slot forever.
    let _ = monoio::time::timeout(worker.config().listen.auth_timeout, async {
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
async fn serve_refused(worker: &Rc<Worker>, stream: &mut Stream, refused: Refused) {
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
async fn serve_plain(worker: &Rc<Worker>, stream: &mut Stream, req: &Request, rest: BytesMut) {
    if crate::api::is_api_path(&req.path) {
        super::api::serve(worker, stream, req, rest, super::api::Port::Shared).await
    } else {
        answer_http(worker, stream, req).await
    }
}

/// Serves one accepted socket: handshake and authentication here, then the steady state in a
/// task of its own (so the large handshake state is freed once the connection is idle).
pub async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    // AUTH_TIMEOUT bounds the request head and the authentication together, from accept.
    let accepted = Instant::now();
    let Some((mut stream, live)) = admit(&worker, stream, peer).await else {
        return;
    };
    let Some((token, path, prefix, accept)) = upgrade(&worker, &mut stream).await else {
        return;
    };
    let outbox = Outbox::attached(worker.config().flow.max_outbox_bytes, Socket::new(stream));
    let mut input = Input::new(prefix);
    // The 101 leaves through the outbox like every frame after it: when authentication
    // answers at once (fixture, embedded store), it goes out in one write with `connected`,
    // one send (and one TCP segment) per connection fewer.
    outbox.push(&accept);
    let Some(token) = token.filter(|t| handshake::token_is_well_formed(t)) else {
        let missing = BackendError::TokenRejected("Missing token".into());
        reject(&worker, &outbox, missing, &path);
        return linger(&mut input, &outbox).await;
    };
    let started = Instant::now();
    let deadline = accepted + worker.config().listen.auth_timeout;
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
    let (slot, user, chats) = open_session(&worker, outbox.clone(), profile, chats);
    tracing::info!(
        user_id = %user.id,
        chat_count = chats.len(),
        chat_ids = ?chats,
        worker = worker.id,
        path = %path,
        auth_ms = started.elapsed().as_secs_f64() * 1e3,
        "User connected"
    );
    monoio::spawn(steady(outbox, slot, token, input, live));
}

/// Admission (the connection caps) and the switch to readiness I/O; a refused socket is
/// answered here. `None`: nothing more to do with it.
async fn admit(
    worker: &Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(Stream, TaskGuard)> {
    // The peer address as accept returned it (no `getpeername`); TCP_NODELAY is inherited
    // from the listener (`worker::bind_first`).
    let admitted = worker.admit(Some(peer.ip()));
    let mut stream = match stream::from_tcp(stream) {
        Ok(s) => s,
        Err(e) => {
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

/// Reads the request head and accepts the WebSocket upgrade (Origin rule), or answers a
/// plain request. Returns the token the client sent, the path (for logs), the bytes that
/// arrived behind the head, and the 101 answer to send.
async fn upgrade(
    worker: &Rc<Worker>,
    stream: &mut Stream,
) -> Option<(Option<String>, String, BytesMut, Vec<u8>)> {
    let mut buf = BytesMut::with_capacity(1024);
    let (req, consumed) =
        match read_head(stream, &mut buf, worker.config().listen.auth_timeout).await {
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
        &worker.config().listen.allowed_origins,
    ) {
        let origin = req.origin.as_deref().unwrap_or("");
        tracing::warn!(origin, "Origin rejected");
        let refusal = http_response(403, "Forbidden", "text/plain", b"origin not allowed");
        let _ = stream.write_all(&refusal).await;
        return None;
    }
    let accept = handshake::switching_protocols(&upgrade);
    // Copy (not split off) what came behind the head, so the head buffer is freed now; only
    // the path is kept from the head (logs).
    Some((
        upgrade.token,
        req.path,
        BytesMut::from(&buf[consumed..]),
        accept,
    ))
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

/// Opens the session of an authenticated user in the hub (`connected` first, then its rooms).
fn open_session(
    worker: &Worker,
    outbox: Rc<Outbox>,
    profile: Profile,
    chats: Vec<String>,
) -> (usize, User, Vec<Arc<str>>) {
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
    let slot = worker.open(user.clone(), chats.clone(), outbox);
    (slot, user, chats)
}

/// The steady state of an authenticated connection: the read loop, then the close.
///
/// Every idle connection's task holds this future, so it is built to be small: the handler
/// owns what the loop needs (nothing is kept twice, as a copy here and a reference there),
/// and it is an `async` block over that state rather than an `async fn`, whose parameters
/// would keep their own slots next to the handler they were moved into. Measured (release,
/// `size_of_val`): 520 bytes before, 400 with the handler owning its state and one named idle
/// wait, 208 with this block, `read_loop`'s and the close moved into a boxed future; 152 with
/// the worker reached through the task's guard and `read_loop` asking the handler for what
/// it reads with. With monoio's 48-byte task header the task is 200 bytes (heaptrack), in
/// mimalloc's 224-byte class (256 before). (A 144-byte future, with the input's staging a
/// `Vec`, would fit the 192 class; 7 alternating runs showed no RSS gain, so it was left.)
fn steady(
    outbox: Rc<Outbox>,
    slot: usize,
    token: String,
    mut input: Input,
    live: TaskGuard,
) -> impl std::future::Future<Output = ()> {
    let chat = Chat {
        live,
        outbox,
        slot,
        token: token.into_boxed_str(),
    };
    // The block uses `input` where it was captured: rebinding it would give it a second slot.
    async move {
        let end = read_loop(&mut input, &chat).await;
        // Boxed, like every rarely used state, to keep the idle task small.
        Box::pin(close(&chat, &mut input, end)).await;
        // `chat` drops last, and with it the guard: the drain waits for this task until here.
    }
}

/// The end of an authenticated connection, once its read loop ended with `end`: the close it
/// calls for, unregistration, then the close handshake.
async fn close(chat: &Chat, input: &mut Input, end: End) {
    let slot = chat.slot;
    let (worker, outbox) = (chat.worker(), &chat.outbox);
    match end {
        End::Violation(code) => {
            worker.shared.metrics.closed(code);
            outbox.close(code);
        }
        End::Draining => {
            // Still registered, so the worker's drain sends SERVER_SHUTDOWN + 1001 here once
            // every connection has finished the work it accepted.
            worker.park();
            let cfg = worker.config();
            let patience = cfg.drain.wait + cfg.drain.window + Duration::from_secs(1);
            let _ = monoio::time::timeout(patience, outbox.closed()).await;
        }
        End::Gone => outbox.close(CloseCode::Normal),
        End::ClientClosed | End::Closed => {}
    }
    if let Some(user) = worker.user_of(slot) {
        tracing::info!(user_id = %user.id, worker = worker.id, "User disconnected");
    }
    worker.close(slot);
    // Both end by aborting the writer, so the socket is released even if the peer never reads.
    if matches!(end, End::Gone | End::ClientClosed) {
        outbox.close(CloseCode::Normal);
        finish(outbox).await;
    } else {
        linger(input, outbox).await;
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

/// The frame size limits from the worker's configuration.
fn limits(worker: &Worker) -> Limits {
    let frames = &worker.config().frames;
    Limits {
        max_message_size: frames.max_message_size,
        max_fragments: frames.max_fragments,
    }
}

/// The chat side of the frame loop: liveness, drain, and one complete message at a time.
struct Chat {
    /// The task's admission (it releases the connection's place when the task ends); it also
    /// holds the worker, so the task keeps one reference to it, not two.
    live: TaskGuard,
    outbox: Rc<Outbox>,
    slot: usize,
    token: Box<str>,
}

impl Chat {
    fn worker(&self) -> &Rc<Worker> {
        self.live.worker()
    }
}

impl Handler for Chat {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn scratch(&self) -> &RefCell<Vec<u8>> {
        &self.worker().read_scratch
    }

    fn limits(&self) -> Limits {
        limits(self.worker())
    }

    fn seen(&self, now: Instant) {
        self.worker().seen(self.slot, now);
    }

    fn draining(&self) -> bool {
        self.worker().draining()
    }

    async fn message(&self, message: Message, now: Instant) {
        let (worker, slot) = (&**self.worker(), self.slot);
        if !worker.admit_message(slot, now) {
            return;
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
        worker.metrics.messages_in[kind].inc();
        let step = match parsed {
            Ok(cmd) => worker.command(slot, cmd, now),
            Err(e) => {
                worker.reject(slot, e.code(), e.to_string());
                Step::Done
            }
        };
        self.follow(step).await;
    }
}

impl Chat {
    /// Follows the hub's steps for one command: each backend call it asks for, in turn, then
    /// the sender's pacing. The read loop reads nothing more until this returns, so a
    /// connection's commands are carried out in arrival order.
    async fn follow(&self, mut step: Step) {
        loop {
            match step {
                Step::Done => return,
                Step::Pace(chat) => return self.worker().pace(self.slot, &chat).await,
                Step::Call(mut call) => {
                    let answer = self.worker().call(&self.token, &mut call).await;
                    step = self.worker().reply(self.slot, call, answer);
                }
            }
        }
    }
}
