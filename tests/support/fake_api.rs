//! The fake product REST API of the tests (hyper 1 on a current-thread tokio runtime in a
//! background thread), the one behind `HTTP_API_URL` in tests/rest_backend.rs and
//! tests/upstream_faults.rs.
//!
//! It serves the contract of src/backend/rest.rs (profile, chats, idempotent message POSTs,
//! read receipts) plus the optional history route, from data the tests set in [`State`]. On
//! top of the contract it can be told to misbehave:
//! - per token or chat: a forced status and body ([`State::profile_error`],
//!   [`State::chat_error`]) or a delay ([`State::profile_delay`], [`State::chat_delay`]);
//! - per route or for every route: a [`Mode`] (slow, error statuses, dropped connections,
//!   lost responses, garbled bodies);
//! - as a whole: go down (connection refused) and come back on the same port
//!   ([`FakeApi::set_down`]).
//!
//! Every request it sees is recorded ([`Req`]), and so is every message it stored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// `createdAt` of every message the fake stores.
pub const CREATED_AT: &str = "2024-05-01T10:00:00.000Z";

/// `readAt` of a read receipt until a test changes [`State::read_at`].
pub const READ_AT: &str = "2024-05-01T10:00:05.000Z";

/// How the fake answers a request (per route, or globally).
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Serve the contract.
    Normal,
    /// Process the request (a POST is stored), then answer only after this delay.
    Slow(Duration),
    /// Answer every request with this status.
    Error(u16),
    /// Read the request, then close the connection without any response.
    DropConnection,
    /// Answer the next `n` requests with `status`, then behave normally.
    FailNext(u32, u16),
    /// Process the next `n` requests (a POST is stored) but close the connection instead of
    /// answering: the response is lost. Then behave normally.
    StoreThenDrop(u32),
    /// Process the request (a POST is stored), then answer the success status with a complete
    /// body that is not in the contract's shape.
    Garbled,
}

/// The routes of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// GET /auth/profile
    Profile,
    /// GET /chats
    Chats,
    /// POST /chats/{chatId}/messages
    PostMessage,
    /// PUT /chats/{chatId}/messages/{messageId}/read
    MarkRead,
    /// GET /chats/{chatId}/messages (the optional history route)
    History,
    /// Anything else (e.g. the readiness probe's GET /).
    Other,
}

fn classify(method: &str, path: &str) -> Route {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("GET", ["auth", "profile"]) => Route::Profile,
        ("GET", ["chats"]) => Route::Chats,
        ("POST", ["chats", _, "messages"]) => Route::PostMessage,
        ("GET", ["chats", _, "messages"]) => Route::History,
        ("PUT", ["chats", _, "messages", _, "read"]) => Route::MarkRead,
        _ => Route::Other,
    }
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    /// The query string without `?` (empty when none).
    pub query: String,
    pub route: Route,
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Req {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Authorization` header.
    pub fn auth(&self) -> Option<&str> {
        self.header("authorization")
    }

    pub fn idempotency_key(&self) -> Option<&str> {
        self.header("idempotency-key")
    }
}

/// A user of the fake, found by its token.
#[derive(Clone, Debug)]
pub struct ApiUser {
    pub id: String,
    pub name: String,
}

/// What the connection task does with a request.
enum Outcome {
    Respond {
        delay: Option<Duration>,
        status: u16,
        body: Value,
    },
    Drop,
}

/// The fake's data, behaviour and records; tests change it through [`FakeApi::with`].
#[derive(Default)]
pub struct State {
    // --- faults by route -----------------------------------------------------------------
    /// The mode of every route without one of its own.
    pub global: Option<Mode>,
    pub routes: HashMap<Route, Mode>,
    /// Wanted: listener closed (connection refused) and every open connection cut.
    pub down: bool,
    /// Actual: whether the listener is bound.
    pub listening: bool,
    stop: bool,

    // --- data ----------------------------------------------------------------------------
    /// token → user
    pub users: HashMap<String, ApiUser>,
    /// user id → chat ids
    pub chats: HashMap<String, Vec<String>>,
    /// chat → stored messages, oldest first (served by GET /chats/:id/messages)
    pub history: HashMap<String, Vec<Value>>,
    /// `readAt` returned by PUT .../read (`None`: a 200 without `readAt`).
    pub read_at: Option<String>,
    /// Send every id (user, chat, message) as a JSON number, as some APIs do.
    pub numeric_ids: bool,

    // --- faults by token or chat ---------------------------------------------------------
    /// token → forced (status, body) on GET /auth/profile
    pub profile_error: HashMap<String, (u16, Value)>,
    /// token → delay on GET /auth/profile
    pub profile_delay: HashMap<String, Duration>,
    /// chat → forced (status, body) on POST messages / PUT read / GET messages
    pub chat_error: HashMap<String, (u16, Value)>,
    /// chat → delay on POST messages / PUT read
    pub chat_delay: HashMap<String, Duration>,

    // --- records -------------------------------------------------------------------------
    /// Every request, in order.
    pub requests: Vec<Req>,
    /// Connections accepted.
    pub accepted: usize,
    /// Messages stored by POSTs, in order.
    pub stored: Vec<Value>,
    /// Idempotency-Key → the message stored under it.
    pub by_key: HashMap<String, Value>,
    next_id: u64,
}

impl State {
    /// Adds (or replaces) the user with `token`, member of `chats`.
    pub fn add_user(&mut self, token: &str, id: &str, name: &str, chats: &[&str]) {
        self.users.insert(
            token.into(),
            ApiUser {
                id: id.into(),
                name: name.into(),
            },
        );
        self.chats
            .insert(id.into(), chats.iter().map(|c| c.to_string()).collect());
    }

    /// The mode for one request on `route`, consuming one unit of a counted mode.
    fn take_mode(&mut self, route: Route) -> Mode {
        let slot = if self.routes.contains_key(&route) {
            self.routes.get_mut(&route).unwrap()
        } else {
            self.global.get_or_insert(Mode::Normal)
        };
        match slot.clone() {
            Mode::FailNext(n, status) => {
                if n == 0 {
                    *slot = Mode::Normal;
                    return Mode::Normal;
                }
                *slot = if n == 1 {
                    Mode::Normal
                } else {
                    Mode::FailNext(n - 1, status)
                };
                Mode::Error(status)
            }
            Mode::StoreThenDrop(n) => {
                if n == 0 {
                    *slot = Mode::Normal;
                    return Mode::Normal;
                }
                *slot = if n == 1 {
                    Mode::Normal
                } else {
                    Mode::StoreThenDrop(n - 1)
                };
                Mode::StoreThenDrop(1)
            }
            m => m,
        }
    }

    fn process(
        &mut self,
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        body: String,
    ) -> Outcome {
        let route = classify(&method, &path);
        let req = Req {
            method,
            path,
            query,
            route,
            headers,
            body,
            at: Instant::now(),
        };
        self.requests.push(req.clone());
        match self.take_mode(route) {
            Mode::Error(status) => Outcome::Respond {
                delay: None,
                status,
                body: json!({ "message": format!("fake upstream error {status}") }),
            },
            Mode::DropConnection => Outcome::Drop,
            Mode::StoreThenDrop(_) => {
                let _ = self.serve(&req);
                Outcome::Drop
            }
            Mode::Garbled => {
                let (delay, status, _) = self.serve(&req);
                Outcome::Respond {
                    delay,
                    status,
                    body: json!({ "message": { "id": { "not": "a string" } }, "user": [], "chats": 7 }),
                }
            }
            Mode::Slow(d) => {
                let (_, status, body) = self.serve(&req);
                Outcome::Respond {
                    delay: Some(d),
                    status,
                    body,
                }
            }
            Mode::Normal | Mode::FailNext(..) => {
                let (delay, status, body) = self.serve(&req);
                Outcome::Respond {
                    delay,
                    status,
                    body,
                }
            }
        }
    }

    /// The contract: (delay before answering, status, body); ids as numbers when
    /// `numeric_ids` is set.
    fn serve(&mut self, req: &Req) -> (Option<Duration>, u16, Value) {
        let (delay, status, mut body) = self.serve_text_ids(req);
        if self.numeric_ids {
            numeric(&mut body);
        }
        (delay, status, body)
    }

    /// The rules of a call on one chat: its forced error, then membership. `Ok`: the delay to
    /// answer after; `Err`: the answer.
    #[allow(clippy::type_complexity)]
    fn chat_gate(
        &self,
        chat: &str,
        member: bool,
    ) -> Result<Option<Duration>, (Option<Duration>, u16, Value)> {
        let delay = self.chat_delay.get(chat).copied();
        if let Some((status, body)) = self.chat_error.get(chat) {
            return Err((delay, *status, body.clone()));
        }
        if !member {
            let not_member = json!({ "error": "Not a member of this chat" });
            return Err((delay, 403, not_member));
        }
        Ok(delay)
    }

    fn serve_text_ids(&mut self, req: &Req) -> (Option<Duration>, u16, Value) {
        let token = req.auth().and_then(|a| a.strip_prefix("Bearer "));
        let user = token.and_then(|t| self.users.get(t)).cloned();
        let unauthorized = (None, 401, json!({ "message": "Invalid or expired token" }));
        let chat = req.path.split('/').nth(2).unwrap_or("").to_string();
        let member = |s: &State, u: &ApiUser| s.chats.get(&u.id).is_some_and(|c| c.contains(&chat));
        match req.route {
            Route::Profile => {
                let t = token.unwrap_or("");
                let delay = self.profile_delay.get(t).copied();
                if let Some((status, body)) = self.profile_error.get(t) {
                    return (delay, *status, body.clone());
                }
                match user {
                    Some(u) => (
                        delay,
                        200,
                        json!({ "user": {
                            "userId": u.id,
                            "email": format!("{}@example.com", u.id),
                            "name": u.name,
                            "role": "member",
                        }}),
                    ),
                    None => (delay, unauthorized.1, unauthorized.2),
                }
            }
            Route::Chats => match user {
                Some(u) => {
                    let chats: Vec<Value> = self
                        .chats
                        .get(&u.id)
                        .into_iter()
                        .flatten()
                        .map(|c| json!({ "id": c, "name": format!("Chat {c}") }))
                        .collect();
                    (None, 200, json!({ "chats": chats }))
                }
                None => unauthorized,
            },
            Route::PostMessage => {
                let Some(u) = user else { return unauthorized };
                let delay = match self.chat_gate(&chat, member(self, &u)) {
                    Ok(delay) => delay,
                    Err(answer) => return answer,
                };
                if let Some(stored) = req.idempotency_key().and_then(|k| self.by_key.get(k)) {
                    return (delay, 201, json!({ "message": stored }));
                }
                let parsed: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
                let Some(content) = parsed["content"].as_str() else {
                    return (delay, 400, json!({ "message": "content is required" }));
                };
                self.next_id += 1;
                let msg = json!({
                    "id": format!("api-msg-{}", self.next_id),
                    "chatId": chat,
                    "senderId": u.id,
                    "senderName": u.name,
                    "content": content,
                    "createdAt": CREATED_AT,
                });
                self.stored.push(msg.clone());
                if let Some(k) = req.idempotency_key() {
                    self.by_key.insert(k.to_string(), msg.clone());
                }
                (delay, 201, json!({ "message": msg }))
            }
            Route::History => {
                // `limit` newest before `before`, oldest after `after`, or the latest; oldest
                // first.
                let Some(u) = user else { return unauthorized };
                if let Some((status, body)) = self.chat_error.get(&chat) {
                    return (None, *status, body.clone());
                }
                if !member(self, &u) {
                    return (None, 403, json!({ "error": "Not a member of this chat" }));
                }
                let param = |name: &str| {
                    req.query.split('&').find_map(|kv| {
                        kv.strip_prefix(name)
                            .and_then(|v| v.strip_prefix('='))
                            .map(str::to_string)
                    })
                };
                let list = self.history.get(&chat).cloned().unwrap_or_default();
                let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
                let find = |id: &str| list.iter().position(|m| m["id"] == id);
                let (start, end) = match (param("after"), param("before")) {
                    (Some(a), _) => match find(&a) {
                        Some(i) => (i + 1, (i + 1 + limit).min(list.len())),
                        None => return (None, 400, json!({ "message": "unknown message" })),
                    },
                    (None, Some(b)) => match find(&b) {
                        Some(i) => (i.saturating_sub(limit), i),
                        None => return (None, 400, json!({ "message": "unknown message" })),
                    },
                    (None, None) => (list.len().saturating_sub(limit), list.len()),
                };
                (None, 200, json!({ "messages": list[start..end] }))
            }
            Route::MarkRead => {
                let Some(u) = user else { return unauthorized };
                let delay = match self.chat_gate(&chat, member(self, &u)) {
                    Ok(delay) => delay,
                    Err(answer) => return answer,
                };
                match &self.read_at {
                    Some(at) => (delay, 200, json!({ "readAt": at })),
                    None => (delay, 200, json!({ "ok": true })),
                }
            }
            Route::Other => (None, 404, json!({ "error": "no such route" })),
        }
    }
}

/// Turns every id field holding decimal digits into a JSON number (`"api-msg-3"` → `3`).
fn numeric(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                if matches!(k.as_str(), "id" | "userId" | "chatId" | "senderId") {
                    if let Some(n) = field
                        .as_str()
                        .map(|s| s.trim_start_matches("api-msg-"))
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        *field = json!(n);
                        continue;
                    }
                }
                numeric(field);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(numeric),
        _ => {}
    }
}

type Shared = Arc<Mutex<State>>;

async fn handle(
    st: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let outcome = st
        .lock()
        .unwrap()
        .process(method, path, query, headers, body);
    match outcome {
        // hyper closes the connection without writing anything when the service fails.
        Outcome::Drop => Err(std::io::Error::other(
            "fake API: connection dropped without a response",
        )),
        Outcome::Respond {
            delay,
            status,
            body,
        } => {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            Ok(Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap())
        }
    }
}

/// Accepts connections until stopped; closes the listener (and cuts every open connection)
/// while `down`, and binds the same address again when it is lifted.
async fn accept_loop(st: Shared, addr_tx: std::sync::mpsc::Sender<SocketAddr>) {
    // tokio binds with SO_REUSEADDR, so the same port can be bound again after going down.
    let first = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake API");
    let addr = first.local_addr().unwrap();
    let mut listener = Some(first);
    st.lock().unwrap().listening = true;
    addr_tx.send(addr).unwrap();
    let mut conns: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        let (stop, down) = {
            let s = st.lock().unwrap();
            (s.stop, s.down)
        };
        if stop {
            break;
        }
        if down && listener.is_some() {
            listener = None;
            for c in conns.drain(..) {
                c.abort();
                let _ = c.await;
            }
            st.lock().unwrap().listening = false;
        }
        if !down && listener.is_none() {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    st.lock().unwrap().listening = true;
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(l) = &listener else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_millis(5), l.accept()).await
        {
            let _ = stream.set_nodelay(true);
            st.lock().unwrap().accepted += 1;
            conns.retain(|c| !c.is_finished());
            let st = st.clone();
            conns.push(tokio::spawn(async move {
                let svc = service_fn(move |req| handle(st.clone(), req));
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }));
        }
    }
    for c in conns {
        c.abort();
    }
}

/// The fake API on 127.0.0.1 (an ephemeral port); stops on drop.
pub struct FakeApi {
    state: Shared,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, for `HTTP_API_URL`.
    pub url: String,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// A fake with no users, every route [`Mode::Normal`] and `readAt` [`READ_AT`].
    pub fn start() -> FakeApi {
        let state: Shared = Arc::new(Mutex::new(State {
            read_at: Some(READ_AT.into()),
            ..State::default()
        }));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(accept_loop(st, addr_tx));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake API did not start");
        FakeApi {
            state,
            addr,
            url: format!("http://{addr}"),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the fake's state (locked).
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// [`State::add_user`].
    pub fn add_user(&self, token: &str, id: &str, name: &str, chats: &[&str]) {
        self.with(|s| s.add_user(token, id, name, chats));
    }

    /// Sets the mode of one route (overrides the global mode).
    pub fn set_route(&self, route: Route, mode: Mode) {
        self.with(|s| s.routes.insert(route, mode));
    }

    /// Sets the mode of every route without its own mode.
    pub fn set_global(&self, mode: Mode) {
        self.with(|s| s.global = Some(mode));
    }

    /// Closes the listener and cuts every connection (`true`: connection refused), or binds
    /// the same port again (`false`). Returns once the change took effect.
    pub fn set_down(&self, down: bool) {
        self.with(|s| s.down = down);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.with(|s| s.listening) == down {
            assert!(
                Instant::now() < deadline,
                "fake API did not go {}",
                if down { "down" } else { "up" }
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Req> {
        self.with(|s| s.requests.clone())
    }

    /// The requests so far on `route`, in order.
    pub fn requests_for(&self, route: Route) -> Vec<Req> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.route == route)
                .cloned()
                .collect()
        })
    }

    /// The messages stored so far, in order.
    pub fn stored(&self) -> Vec<Value> {
        self.with(|s| s.stored.clone())
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.with(|s| s.stop = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
