//! The REST backend (HTTP_API_URL set): a fake product API (hyper 1 on a current-thread tokio
//! runtime in a background thread) implements the contract with configurable failures, and the
//! gateway's answers are checked over real WebSockets.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------------------------
// Fake REST API
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ApiUser {
    user_id: String,
    name: String,
}

/// One request the fake API received.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    body: String,
}

/// The fake API's data and behaviour; tests mutate it through `FakeApi::state`.
#[derive(Default)]
struct ApiState {
    /// token → user
    users: HashMap<String, ApiUser>,
    /// user id → chat ids
    chats: HashMap<String, Vec<String>>,
    /// token → forced (status, body) on GET /auth/profile
    profile_error: HashMap<String, (u16, Value)>,
    /// token → delay on GET /auth/profile
    profile_delay: HashMap<String, Duration>,
    /// chat → forced (status, body) on POST messages / PUT read / GET messages
    chat_error: HashMap<String, (u16, Value)>,
    /// chat → delay on POST messages / PUT read
    chat_delay: HashMap<String, Duration>,
    /// readAt returned by PUT .../read (None: a 200 without readAt)
    read_at: Option<String>,
    /// createdAt of created messages
    created_at: String,
    /// every request, in order
    calls: Vec<Call>,
    /// number of successful POST .../messages
    posts: usize,
    /// chat → stored messages, oldest first (served by GET /chats/:id/messages)
    history: HashMap<String, Vec<Value>>,
    next_id: u64,
}

impl ApiState {
    fn add_user(&mut self, token: &str, id: &str, name: &str, chats: &[&str]) {
        self.users.insert(
            token.into(),
            ApiUser {
                user_id: id.into(),
                name: name.into(),
            },
        );
        self.chats
            .insert(id.into(), chats.iter().map(|c| c.to_string()).collect());
    }

    fn route(
        &mut self,
        method: &Method,
        path: &str,
        query: &str,
        token: Option<&str>,
        body: &str,
    ) -> (Option<Duration>, u16, Value) {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let user = token.and_then(|t| self.users.get(t)).cloned();
        let unauthorized = (None, 401, json!({ "message": "Invalid or expired token" }));
        match (method.clone(), segs.as_slice()) {
            (Method::GET, ["auth", "profile"]) => {
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
                            "userId": u.user_id,
                            "email": format!("{}@example.com", u.user_id),
                            "name": u.name,
                            "role": "member",
                        }}),
                    ),
                    None => (delay, unauthorized.1, unauthorized.2),
                }
            }
            (Method::GET, ["chats"]) => match user {
                Some(u) => {
                    let chats: Vec<Value> = self.chats[&u.user_id]
                        .iter()
                        .map(|c| json!({ "id": c, "name": format!("Chat {c}") }))
                        .collect();
                    (None, 200, json!({ "chats": chats }))
                }
                None => unauthorized,
            },
            (Method::POST, ["chats", chat, "messages"]) => {
                let Some(u) = user else { return unauthorized };
                let delay = self.chat_delay.get(*chat).copied();
                if let Some((status, body)) = self.chat_error.get(*chat) {
                    return (delay, *status, body.clone());
                }
                if !self.chats[&u.user_id].iter().any(|c| c == chat) {
                    return (delay, 403, json!({ "error": "Not a member of this chat" }));
                }
                let req: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                let Some(content) = req["content"].as_str() else {
                    return (delay, 400, json!({ "message": "content is required" }));
                };
                self.next_id += 1;
                self.posts += 1;
                let msg = json!({
                    "id": format!("api-msg-{}", self.next_id),
                    "chatId": chat,
                    "senderId": u.user_id,
                    "senderName": u.name,
                    "content": content,
                    "createdAt": self.created_at,
                });
                (delay, 201, json!({ "message": msg }))
            }
            (Method::GET, ["chats", chat, "messages"]) => {
                // The optional history route: `limit` newest before `before`, oldest after
                // `after`, or the latest; oldest first.
                let Some(u) = user else { return unauthorized };
                if let Some((status, body)) = self.chat_error.get(*chat) {
                    return (None, *status, body.clone());
                }
                if !self.chats[&u.user_id].iter().any(|c| c == chat) {
                    return (None, 403, json!({ "error": "Not a member of this chat" }));
                }
                let param = |name: &str| {
                    query.split('&').find_map(|kv| {
                        kv.strip_prefix(name)
                            .and_then(|v| v.strip_prefix('='))
                            .map(str::to_string)
                    })
                };
                let list = self.history.get(*chat).cloned().unwrap_or_default();
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
            (Method::PUT, ["chats", chat, "messages", _mid, "read"]) => {
                let Some(u) = user else { return unauthorized };
                let delay = self.chat_delay.get(*chat).copied();
                if let Some((status, body)) = self.chat_error.get(*chat) {
                    return (delay, *status, body.clone());
                }
                if !self.chats[&u.user_id].iter().any(|c| c == chat) {
                    return (delay, 403, json!({ "error": "Not a member of this chat" }));
                }
                match &self.read_at {
                    Some(at) => (delay, 200, json!({ "readAt": at })),
                    None => (delay, 200, json!({ "ok": true })),
                }
            }
            _ => (None, 404, json!({ "error": "no such route" })),
        }
    }
}

async fn handle(
    state: Arc<Mutex<ApiState>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).to_string(),
        Err(_) => String::new(),
    };
    let token = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    let (delay, status, value) = {
        let mut st = state.lock().unwrap();
        st.calls.push(Call {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            auth: auth.clone(),
            body: body.clone(),
        });
        st.route(&method, &path, &query, token.as_deref(), &body)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap();
    Ok(resp)
}

/// The fake API server; stops on drop.
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    fn start() -> FakeApi {
        let state = Arc::new(Mutex::new(ApiState {
            created_at: "2024-05-01T10:00:00.000Z".into(),
            ..Default::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake API");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while !stop2.load(Ordering::Relaxed) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                    if let Ok(Ok((stream, _))) = accepted {
                        let st = st.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| handle(st.clone(), req));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            });
        });
        FakeApi {
            state,
            url,
            stop,
            thread: Some(thread),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ApiState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const ALICE: &str = "tok-alice";
const BOB: &str = "tok-bob";

/// alice: room + one chat per forced failure; bob: room.
fn api_world() -> FakeApi {
    let api = FakeApi::start();
    api.with(|s| {
        s.add_user(
            ALICE,
            "alice",
            "Alice",
            &[
                "room", "c400", "c401", "c403", "c404", "c422", "c500", "c503", "cslow",
            ],
        );
        s.add_user(BOB, "bob", "Bob", &["room"]);
        s.chat_error.insert(
            "c400".into(),
            (400, json!({ "message": "Content is not allowed" })),
        );
        s.chat_error.insert(
            "c401".into(),
            (401, json!({ "message": "Session revoked" })),
        );
        s.chat_error.insert(
            "c403".into(),
            (403, json!({ "message": "You are banned here" })),
        );
        s.chat_error
            .insert("c404".into(), (404, json!({ "error": "Chat not found" })));
        s.chat_error.insert(
            "c422".into(),
            (422, json!({ "error": "Content too long for API" })),
        );
        s.chat_error.insert(
            "c500".into(),
            (500, json!({ "message": "Database exploded" })),
        );
        s.chat_error.insert("c503".into(), (503, json!({})));
        s.chat_delay.insert("cslow".into(), Duration::from_secs(3));
    });
    api
}

/// A gateway on the fake API with retries and the breaker off, so each test sees exactly one
/// call per request (tests/upstream_faults.rs covers retries and the breaker).
fn start_gateway(api_url: &str) -> (TestStore, Server) {
    let store = TestStore::new();
    let server = ServerBuilder::new(&store.path)
        .env("HTTP_API_URL", api_url)
        .env("BACKEND_TIMEOUT", "500")
        .env("BACKEND_RETRIES", "0")
        .env("BREAKER_THRESHOLD", "0")
        .spawn();
    (store, server)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn rest_connect_message_and_read() {
    let api = api_world();
    let (_store, server) = start_gateway(&api.url);

    let (mut alice, connected) = server.connect_ok(ALICE);
    assert_eq!(connected["userId"], "alice");
    assert!(
        chat_ids(&connected).contains(&"room".to_string()),
        "{connected}"
    );
    let (mut bob, connected) = server.connect_ok(BOB);
    assert_eq!(connected["userId"], "bob");
    assert_eq!(chat_ids(&connected), vec!["room".to_string()]);

    alice.send(
        "chat:message",
        json!({ "chatId": "room", "content": "hello api", "clientMessageId": "c-1" }),
    );
    let m = alice.expect_type("chat:message");
    assert_eq!(m["chatId"], "room");
    let msg = &m["message"];
    assert_eq!(msg["id"], "api-msg-1", "the API's id must be used: {msg}");
    assert_eq!(
        msg["createdAt"], "2024-05-01T10:00:00.000Z",
        "the API's createdAt: {msg}"
    );
    assert_eq!(msg["senderId"], "alice");
    assert_eq!(msg["senderName"], "Alice");
    assert_eq!(msg["content"], "hello api");
    assert_eq!(msg["clientMessageId"], "c-1");
    let mb = bob.expect_type("chat:message");
    assert_eq!(mb["message"]["id"], "api-msg-1");

    let post = api
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .expect("a POST reached the API");
    assert_eq!(post.path, "/chats/room/messages");
    let body: Value = serde_json::from_str(&post.body).expect("POST body is JSON");
    assert_eq!(body["content"], "hello api");
    assert_eq!(api.with(|s| s.posts), 1);

    // readAt from the API is echoed.
    api.with(|s| s.read_at = Some("2024-05-01T10:00:05.000Z".into()));
    bob.send(
        "chat:read",
        json!({ "chatId": "room", "messageId": "api-msg-1" }),
    );
    for c in [&mut alice, &mut bob] {
        let r = c.expect_type("chat:read");
        assert_eq!(
            r,
            json!({ "chatId": "room", "messageId": "api-msg-1", "userId": "bob",
                    "readAt": "2024-05-01T10:00:05.000Z" })
        );
    }
    assert!(api
        .calls()
        .iter()
        .any(|c| c.method == "PUT" && c.path == "/chats/room/messages/api-msg-1/read"));

    // Without readAt in the API's answer the gateway stamps one.
    api.with(|s| s.read_at = None);
    bob.send(
        "chat:read",
        json!({ "chatId": "room", "messageId": "api-msg-1" }),
    );
    let r = alice.expect_type("chat:read");
    assert_eq!(r["userId"], "bob");
    assert_timestamp(&r["readAt"]);
    assert_eq!(bob.expect_type("chat:read")["readAt"], r["readAt"]);

    // Typing works with the REST backend too.
    alice.send("chat:typing", json!({ "chatId": "room", "isTyping": true }));
    let t = bob.expect_type("chat:typing");
    assert_eq!(t["userName"], "Alice");
    assert_eq!(t["isTyping"], true);
}

#[test]
fn rest_authorization_header_on_every_call() {
    let api = api_world();
    let (_store, server) = start_gateway(&api.url);

    let (mut alice, _) = server.connect_ok(ALICE);
    alice.send_message("room", "m");
    alice.expect_type("chat:message");
    alice.send(
        "chat:read",
        json!({ "chatId": "room", "messageId": "api-msg-1" }),
    );
    alice.expect_type("chat:read");
    // A chat unknown to the connection triggers a chats re-fetch.
    api.with(|s| s.chats.get_mut("alice").unwrap().push("later".into()));
    std::thread::sleep(Duration::from_millis(300));
    alice.send_message("later", "after refetch");
    let m = alice.expect_type("chat:message");
    assert_eq!(m["chatId"], "later");

    let calls: Vec<Call> = api
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/auth") || c.path.starts_with("/chats"))
        .collect();
    for expected in [
        ("GET", "/auth/profile"),
        ("GET", "/chats"),
        ("POST", "/chats/room/messages"),
        ("PUT", "/chats/room/messages/api-msg-1/read"),
        ("POST", "/chats/later/messages"),
    ] {
        assert!(
            calls
                .iter()
                .any(|c| c.method == expected.0 && c.path == expected.1),
            "missing call {expected:?} in {calls:?}"
        );
    }
    assert!(
        calls
            .iter()
            .filter(|c| c.method == "GET" && c.path == "/chats")
            .count()
            >= 2,
        "expected a re-fetch of /chats: {calls:?}"
    );
    for c in &calls {
        assert_eq!(
            c.auth.as_deref(),
            Some("Bearer tok-alice"),
            "call without the user's bearer token: {c:?}"
        );
    }
}

#[test]
fn rest_profile_401_is_auth_failed_and_4001() {
    let api = api_world();
    api.with(|s| {
        s.profile_error.insert(
            "tok-expired".into(),
            (401, json!({ "error": "Token expired" })),
        );
    });
    let (_store, server) = start_gateway(&api.url);

    let mut c = server.connect("tok-nobody");
    let e = c.expect_error("AUTH_FAILED");
    assert_eq!(
        e["message"], "Invalid or expired token",
        "API text must be used: {e}"
    );
    assert_eq!(c.expect_close(), Some(4001));

    let mut c = server.connect("tok-expired");
    let e = c.expect_error("AUTH_FAILED");
    assert_eq!(
        e["message"], "Token expired",
        "API `error` text must be used: {e}"
    );
    assert_eq!(c.expect_close(), Some(4001));

    // The bearer token the API saw is the one the client sent.
    assert!(api
        .calls()
        .iter()
        .any(|c| c.path == "/auth/profile" && c.auth.as_deref() == Some("Bearer tok-expired")));
}

#[test]
fn rest_error_statuses_map_to_error_codes() {
    let api = api_world();
    let (_store, server) = start_gateway(&api.url);
    let (mut alice, _) = server.connect_ok(ALICE);

    let cases = [
        ("c403", "NOT_PARTICIPANT", Some("You are banned here")),
        ("c404", "NOT_PARTICIPANT", Some("Chat not found")),
        ("c400", "VALIDATION_ERROR", Some("Content is not allowed")),
        ("c422", "VALIDATION_ERROR", Some("Content too long for API")),
        ("c500", "HTTP_ERROR", Some("Database exploded")),
        ("c503", "HTTP_ERROR", None),
    ];
    for (chat, code, text) in cases {
        alice.send_message(chat, "hello");
        let e = alice.expect_type("error");
        assert_eq!(e["code"], code, "POST to {chat}: {e}");
        assert_error_shape(&e);
        if let Some(text) = text {
            assert_eq!(
                e["message"], text,
                "POST to {chat}: API text must be used: {e}"
            );
        }
    }
    // The same mapping for read receipts.
    for (chat, code) in [
        ("c403", "NOT_PARTICIPANT"),
        ("c422", "VALIDATION_ERROR"),
        ("c500", "HTTP_ERROR"),
    ] {
        alice.send("chat:read", json!({ "chatId": chat, "messageId": "m-1" }));
        let e = alice.expect_type("error");
        assert_eq!(e["code"], code, "PUT read in {chat}: {e}");
    }
    // Nothing was broadcast for failed calls, and the connection still works.
    alice.send_message("room", "fine");
    let m = alice.expect_type("chat:message");
    assert_eq!(m["message"]["content"], "fine");

    // 401 on a message call is AUTH_FAILED.
    alice.send_message("c401", "hello");
    let e = alice.expect_type("error");
    assert_eq!(e["code"], "AUTH_FAILED", "{e}");
    assert_eq!(e["message"], "Session revoked");
}

#[test]
fn rest_chat_not_in_list_is_not_participant() {
    let api = api_world();
    let (_store, server) = start_gateway(&api.url);
    let (mut bob, _) = server.connect_ok(BOB);
    bob.send_message("c500", "not mine");
    bob.expect_error("NOT_PARTICIPANT");
    bob.send("chat:typing", json!({ "chatId": "c403", "isTyping": true }));
    bob.expect_error("NOT_PARTICIPANT");
    bob.send_message("room", "mine");
    bob.expect_type("chat:message");
}

#[test]
fn rest_slow_api_is_http_error() {
    let api = api_world();
    let (_store, server) = start_gateway(&api.url); // BACKEND_TIMEOUT=500, cslow: 3 s
    let (mut alice, _) = server.connect_ok(ALICE);
    let t0 = Instant::now();
    alice.send_message("cslow", "anyone?");
    let e = alice.expect_error("HTTP_ERROR");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "timeout not enforced: answered after {took:?} ({e})"
    );
    // Still usable.
    alice.send_message("room", "after timeout");
    alice.expect_type("chat:message");

    // A slow profile during connect is HTTP_ERROR as well.
    api.with(|s| {
        s.add_user("tok-slow", "slowpoke", "Slow", &["room"]);
        s.profile_delay
            .insert("tok-slow".into(), Duration::from_secs(3));
    });
    let mut c = server.connect("tok-slow");
    let t0 = Instant::now();
    c.expect_error("HTTP_ERROR");
    assert!(t0.elapsed() < Duration::from_millis(2500));
}

#[test]
fn rest_unreachable_api_is_http_error_on_connect() {
    // A port that nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_store, server) = start_gateway(&format!("http://127.0.0.1:{port}"));

    let mut c = server.connect(ALICE);
    let e = c.expect_error("HTTP_ERROR");
    assert!(!e["message"].as_str().unwrap().is_empty());
    // Then the connection is closed (any close code).
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        match c.next_frame_until(deadline) {
            Some(Frame::Close(_)) | Some(Frame::Gone(_)) => break,
            Some(Frame::Text(v)) => panic!("unexpected frame after HTTP_ERROR on connect: {v}"),
            Some(_) => continue,
            None => panic!("connection not closed after HTTP_ERROR during connect"),
        }
    }

    assert_eq!(server.http_get_status("/healthz"), 200);
    assert_ne!(
        server.http_get_status("/readyz"),
        200,
        "readyz must fail while the API is down"
    );
}

#[test]
fn rest_readyz_is_200_when_api_reachable() {
    let api = api_world();
    let (_store, server) = start_gateway(&api.url);
    assert_eq!(server.http_get_status("/healthz"), 200);
    assert_eq!(server.http_get_status("/readyz"), 200);
}

// ---------------------------------------------------------------------------------------------
// chat:history over the REST API's optional route
// ---------------------------------------------------------------------------------------------

#[test]
fn history_asks_the_api_for_one_more_than_the_limit_and_pages_both_ways() {
    let api = api_world();
    api.with(|s| {
        let list: Vec<Value> = (0..5)
            .map(|i| {
                json!({ "id": format!("h{i}"), "chatId": "room", "senderId": "bob",
                        "senderName": "Bob", "content": format!("old {i}"),
                        "createdAt": "2024-05-01T09:00:00.000Z" })
            })
            .collect();
        s.history.insert("room".into(), list);
    });
    let store = TestStore::new();
    let server = ServerBuilder::new(&store.path)
        .env("HTTP_API_URL", api.url.clone())
        .spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let ask = |c: &mut Client, payload: Value| {
        c.send("chat:history", payload);
        c.expect_type("chat:history")
    };
    let ids = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect()
    };
    let latest = ask(
        &mut alice,
        json!({ "chatId": "room", "limit": 2, "requestId": "r1" }),
    );
    assert_eq!(ids(&latest), vec!["h3", "h4"], "{latest}");
    assert_eq!(
        (latest["hasMore"].as_bool(), latest["requestId"].as_str()),
        (Some(true), Some("r1"))
    );
    assert_eq!(latest["messages"][0]["senderName"], "Bob");
    let asked = api
        .calls()
        .into_iter()
        .rfind(|c| c.method == "GET" && c.path == "/chats/room/messages")
        .expect("the gateway called GET /chats/room/messages");
    assert_eq!(asked.query, "limit=3", "one more than the limit");
    assert_eq!(asked.auth.as_deref(), Some("Bearer tok-alice"));

    for (page, want, more) in [
        (
            json!({ "chatId": "room", "before": "h3", "limit": 2 }),
            vec!["h1", "h2"],
            true,
        ),
        (
            json!({ "chatId": "room", "before": "h1", "limit": 2 }),
            vec!["h0"],
            false,
        ),
        (
            json!({ "chatId": "room", "after": "h1", "limit": 2 }),
            vec!["h2", "h3"],
            true,
        ),
        (
            json!({ "chatId": "room", "after": "h3", "limit": 2 }),
            vec!["h4"],
            false,
        ),
    ] {
        let got = ask(&mut alice, page.clone());
        assert_eq!(
            (ids(&got), got["hasMore"].as_bool()),
            (want.iter().map(|s| s.to_string()).collect(), Some(more)),
            "{page}"
        );
    }
    assert!(api
        .calls()
        .iter()
        .any(|c| c.path == "/chats/room/messages" && c.query == "limit=3&after=h3"));

    // The API's errors map as for the other calls: 400 → VALIDATION_ERROR, 403 →
    // NOT_PARTICIPANT; the connection stays open.
    alice.send("chat:history", json!({ "chatId": "room", "after": "nope" }));
    alice.expect_error("VALIDATION_ERROR");
    alice.send("chat:history", json!({ "chatId": "c403" }));
    alice.expect_error("NOT_PARTICIPANT");
    alice.send("ping", json!({}));
    alice.expect_type("pong");
}
