//! The REST backend (HTTP_API_URL set): the fake product API of tests/support/fake_api.rs
//! implements the contract with configurable failures, and the gateway's answers are checked
//! over real WebSockets.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_api::{FakeApi, Req};
use support::*;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const ALICE: &str = "tok-alice";
const BOB: &str = "tok-bob";

/// alice: room + one chat per forced failure; bob: room.
fn api_world() -> FakeApi {
    let api = FakeApi::start();
    api.with(|s| {
        // A 200 without readAt unless a test sets one.
        s.read_at = None;
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
        .requests()
        .into_iter()
        .find(|c| c.method == "POST")
        .expect("a POST reached the API");
    assert_eq!(post.path, "/chats/room/messages");
    let body: Value = serde_json::from_str(&post.body).expect("POST body is JSON");
    assert_eq!(body["content"], "hello api");
    assert_eq!(api.stored().len(), 1);

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
        .requests()
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

    let calls: Vec<Req> = api
        .requests()
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
            c.auth(),
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
        .requests()
        .iter()
        .any(|c| c.path == "/auth/profile" && c.auth() == Some("Bearer tok-expired")));
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
        .requests()
        .into_iter()
        .rfind(|c| c.method == "GET" && c.path == "/chats/room/messages")
        .expect("the gateway called GET /chats/room/messages");
    assert_eq!(asked.query, "limit=3", "one more than the limit");
    assert_eq!(asked.auth(), Some("Bearer tok-alice"));

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
        .requests()
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
