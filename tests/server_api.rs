//! The server API (`/api/...`) against the real binary with two workers: every route, its
//! authentication failures, bad bodies, and the live effect on real WebSocket clients on both
//! workers. Every JSON answer is validated against `docs/openapi.json` (JSON Schema 2020-12 via
//! the `jsonschema` crate), and so is every request body the tests send as valid.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const KEY: &str = "test-api-key-0123456789";
const AUTH: &str = "Authorization: Bearer test-api-key-0123456789\r\n";

/// Users alice, bob, carol; chat `room` with alice and bob.
struct World {
    store: TestStore,
    alice: String,
    bob: String,
    carol: String,
}

fn world() -> World {
    let store = TestStore::new();
    let alice = store.add_user("alice", "Alice");
    let bob = store.add_user("bob", "Bob");
    let carol = store.add_user("carol", "Carol");
    store.add_chat("room", &["alice", "bob"]);
    World {
        store,
        alice,
        bob,
        carol,
    }
}

fn server(w: &World) -> Server {
    ServerBuilder::new(&w.store.path)
        .env("API_KEY", KEY)
        .spawn()
}

// --- the OpenAPI document ---------------------------------------------------------------------

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("read docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// Validates `instance` against `schema` (which may `$ref` into the spec's components).
fn validate(spec: &Value, schema: &Value, instance: &Value, what: &str) {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": spec["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|e| panic!("schema for {what} does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match docs/openapi.json: {errors:?}\ninstance: {instance}"
    );
}

/// The operation object of `method` on the spec path `template`.
fn operation<'a>(spec: &'a Value, template: &str, method: &str) -> &'a Value {
    let op = &spec["paths"][template][method];
    assert!(
        op.is_object(),
        "docs/openapi.json has no {method} {template}"
    );
    op
}

/// Checks an answer against the documented response for its status.
fn check_answer(spec: &Value, template: &str, method: &str, answer: &HttpAnswer) {
    let op = operation(spec, template, method);
    let mut response = &op["responses"][answer.status.to_string()];
    if let Some(r) = response["$ref"].as_str() {
        response = spec
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling {r}"));
    }
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "status {} of {method} {template} is not documented: {}",
        answer.status,
        answer.body
    );
    assert_eq!(answer.header("content-type"), Some("application/json"));
    validate(
        spec,
        schema,
        &answer.json(),
        &format!("{} answer of {method} {template}", answer.status),
    );
}

/// Checks a request body the test sends as valid against the documented request schema.
fn check_request(spec: &Value, template: &str, method: &str, body: &Value) {
    let schema =
        &operation(spec, template, method)["requestBody"]["content"]["application/json"]["schema"];
    validate(
        spec,
        schema,
        body,
        &format!("request body of {method} {template}"),
    );
}

/// One API call with the key; the answer is checked against the spec.
fn call(port: u16, method: &str, path: &str, template: &str, body: Option<&Value>) -> HttpAnswer {
    let spec = spec();
    let m = method.to_ascii_lowercase();
    if let Some(b) = body {
        check_request(&spec, template, &m, b);
    }
    let bytes = body.map(|b| b.to_string().into_bytes());
    let answer = http_request(port, method, path, AUTH, bytes.as_deref());
    check_answer(&spec, template, &m, &answer);
    answer
}

/// `GET /api/chats/room/presence`, checked against the spec; the body.
fn presence_of_room(port: u16) -> Value {
    let a = call(
        port,
        "GET",
        "/api/chats/room/presence",
        "/api/chats/{chatId}/presence",
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    a.json()
}

fn error_of(answer: &HttpAnswer) -> (String, Option<String>) {
    let e = &answer.json()["error"];
    (
        e["code"].as_str().unwrap_or_default().to_string(),
        e["field"].as_str().map(str::to_string),
    )
}

/// Reads frames until a close; returns its code and reason.
fn close_of(c: &mut Client) -> (u16, String) {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        match c.next_frame_until(deadline) {
            Some(Frame::Close(Some((code, reason)))) => return (code, reason),
            Some(Frame::Close(None)) => panic!("close frame without a code"),
            Some(Frame::Gone(why)) => panic!("connection ended without a close frame: {why}"),
            None => panic!("no close frame within {READ_TIMEOUT:?}"),
            Some(_) => {}
        }
    }
}

fn stored_messages(store: &TestStore) -> i64 {
    let db = rusqlite::Connection::open(&store.path).expect("open store");
    db.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .expect("count messages")
}

// --- off, keys, routes --------------------------------------------------------------------------

#[test]
fn without_a_key_the_api_is_not_there() {
    let w = world();
    let server = Server::start(&w.store.path);
    let a = http_request(server.port, "POST", "/api/events", AUTH, Some(b"{}"));
    assert_eq!(a.status, 404, "{a:?}");
    check_answer(&spec(), "/api/events", "post", &a);
    assert_eq!(error_of(&a).0, "NOT_FOUND");
}

#[test]
fn a_missing_or_wrong_key_is_401_and_never_logged() {
    let w = world();
    let server = server(&w);
    let spec = spec();
    let wrong = "Authorization: Bearer test-api-key-0123456780\r\n";
    let basic = "Authorization: Basic dGVzdC1hcGkta2V5LTAxMjM0NTY3ODk=\r\n";
    for head in ["", wrong, basic] {
        let a = http_request(server.port, "GET", "/api/chats/room/presence", head, None);
        assert_eq!(a.status, 401, "{head:?}: {a:?}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        check_answer(&spec, "/api/chats/{chatId}/presence", "get", &a);
        assert_eq!(error_of(&a).0, "UNAUTHORIZED");
    }
    // The key is checked before routing: a wrong key learns nothing about routes either.
    let a = http_request(server.port, "GET", "/api/nope", wrong, None);
    assert_eq!(a.status, 401);
    let a = call(
        server.port,
        "GET",
        "/api/chats/room/presence",
        "/api/chats/{chatId}/presence",
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    std::thread::sleep(Duration::from_millis(100));
    let logs = server.output();
    assert!(!logs.contains(KEY), "the API key appears in the logs");
    assert!(
        logs.contains("API request refused"),
        "refusals are logged: {logs}"
    );
}

#[test]
fn unknown_routes_wrong_methods_and_bad_bodies_are_refused_clearly() {
    let w = world();
    let server = ServerBuilder::new(&w.store.path)
        .env("API_KEY", KEY)
        .env("API_MAX_BODY", "1024")
        .spawn();
    let spec = spec();
    let port = server.port;

    let a = http_request(port, "POST", "/api/chats/room", AUTH, Some(b"{}"));
    assert_eq!(
        (a.status, error_of(&a).0.as_str()),
        (404, "NOT_FOUND"),
        "{a:?}"
    );

    let a = http_request(port, "GET", "/api/events", AUTH, None);
    assert_eq!(a.status, 405, "{a:?}");
    assert_eq!(a.header("allow"), Some("POST"));
    check_answer(&spec, "/api/events", "post", &a);

    let template = "/api/chats/{chatId}/messages";
    let cases: [(&[u8], &str, Option<&str>); 6] = [
        (b"{not json", "VALIDATION_ERROR", None),
        (b"", "VALIDATION_ERROR", Some("body")),
        (
            br#"{"id":"m1","senderId":"u"}"#,
            "VALIDATION_ERROR",
            Some("content"),
        ),
        (
            br#"{"message":{"id":"m1","content":"x"}}"#,
            "VALIDATION_ERROR",
            Some("message.senderId"),
        ),
        (
            br#"{"id":"m1","senderId":"u","content":"x","chatId":"other"}"#,
            "VALIDATION_ERROR",
            Some("chatId"),
        ),
        (
            br#"{"id":"m1","senderId":"u","content":"x","createdAt":"soon"}"#,
            "VALIDATION_ERROR",
            Some("createdAt"),
        ),
    ];
    for (body, code, field) in cases {
        let a = http_request(port, "POST", "/api/chats/room/messages", AUTH, Some(body));
        assert_eq!(a.status, 400, "{}: {a:?}", String::from_utf8_lossy(body));
        check_answer(&spec, template, "post", &a);
        assert_eq!(
            error_of(&a),
            (code.to_string(), field.map(str::to_string)),
            "{a:?}"
        );
    }
    let a = http_request(
        port,
        "POST",
        "/api/users/bob/disconnect",
        AUTH,
        Some(br#"{"code":1006}"#),
    );
    assert_eq!(
        error_of(&a),
        ("VALIDATION_ERROR".into(), Some("code".into()))
    );

    // Larger than API_MAX_BODY: refused before the body is read.
    let big = format!(
        r#"{{"id":"m","senderId":"u","content":"{}"}}"#,
        "x".repeat(2000)
    );
    let a = http_request(
        port,
        "POST",
        "/api/chats/room/messages",
        AUTH,
        Some(big.as_bytes()),
    );
    assert_eq!(a.status, 413, "{a:?}");
    check_answer(&spec, template, "post", &a);

    // A chunked body is refused with 411 (Content-Length is required).
    let chunked = format!("{AUTH}Transfer-Encoding: chunked\r\n");
    let a = http_request(port, "POST", "/api/chats/room/members", &chunked, None);
    assert_eq!(a.status, 411, "{a:?}");
    check_answer(&spec, "/api/chats/{chatId}/members", "post", &a);

    // A body cut short by the client closing: 400 BODY_INCOMPLETE, as JSON.
    let head = format!(
        "POST /api/chats/room/members HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 100\r\n\r\n{{\"userId\""
    );
    let out = raw_exchange(port, head.as_bytes(), true);
    assert!(out.starts_with("HTTP/1.1 400 "), "{out:?}");
    assert!(out.contains("BODY_INCOMPLETE"), "{out:?}");

    // Framing the server cannot trust is refused before any routing: conflicting
    // Content-Length, Content-Length with Transfer-Encoding, a signed length.
    for framing in [
        "Content-Length: 2\r\nContent-Length: 3\r\n",
        "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: +2\r\n",
    ] {
        let head = format!("POST /api/events HTTP/1.1\r\nHost: x\r\n{AUTH}{framing}\r\n{{}}");
        let out = raw_exchange(port, head.as_bytes(), false);
        assert!(out.starts_with("HTTP/1.1 400 "), "{framing:?}: {out:?}");
    }

    // HEAD of a GET route: the head of the answer, no body.
    let out = raw_exchange(
        port,
        format!("HEAD /api/chats/room/presence HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n").as_bytes(),
        false,
    );
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out:?}");
    assert!(out.ends_with("\r\n\r\n"), "HEAD must have no body: {out:?}");

    // Expect: 100-continue (curl sends it for larger bodies): the interim answer comes once
    // the key, route and size are accepted, then the real one.
    let body = r#"{"userId":"nobody"}"#;
    let head = format!(
        "POST /api/chats/room/members HTTP/1.1\r\nHost: x\r\n{AUTH}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(head.as_bytes()).expect("write head");
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).expect("read 100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).expect("write body");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out:?}");
}

/// Sends raw bytes (half-closing after them when `half_close`) and reads the whole answer.
fn raw_exchange(port: u16, bytes: &[u8], half_close: bool) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(bytes).expect("write");
    if half_close {
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
    }
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

// --- live effects -------------------------------------------------------------------------------

#[test]
fn a_posted_message_reaches_every_member_connection_on_both_workers_and_is_not_stored() {
    let w = world();
    let server = server(&w);
    let mut bobs = Vec::new();
    spread_over_workers(&server, "bob", &w.bob, &mut bobs);
    let (mut alice, _) = server.connect_ok(&w.alice);
    let (mut carol, _) = server.connect_ok(&w.carol);
    for b in bobs.iter_mut() {
        b.collect(Duration::from_millis(50));
    }
    let body = json!({ "message": {
        "id": 42, "chatId": "room", "senderId": "bot", "senderName": "Helper Bot",
        "content": "from the backend", "createdAt": "2024-05-01T10:00:00.000Z",
        "clientMessageId": "mobile-1"
    }});
    let a = call(
        server.port,
        "POST",
        "/api/chats/room/messages",
        "/api/chats/{chatId}/messages",
        Some(&body),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let expected = json!({ "chatId": "room", "message": {
        "id": "42", "chatId": "room", "senderId": "bot", "senderName": "Helper Bot",
        "content": "from the backend", "createdAt": "2024-05-01T10:00:00.000Z",
        "clientMessageId": "mobile-1"
    }});
    for (i, b) in bobs.iter_mut().enumerate() {
        assert_eq!(b.expect_type("chat:message"), expected, "bob #{i}");
    }
    assert_eq!(alice.expect_type("chat:message"), expected);
    assert_eq!(
        a.json(),
        json!({ "type": "message", "messageId": "42", "delivered": bobs.len() + 1 })
    );
    carol.expect_no_type("chat:message", Duration::from_millis(300));
    assert_eq!(
        stored_messages(&w.store),
        0,
        "the API delivers, it does not store"
    );
}

#[test]
fn members_added_and_removed_join_and_leave_live_on_every_worker() {
    let w = world();
    let server = server(&w);
    let port = server.port;
    let mut carols = Vec::new();
    spread_over_workers(&server, "carol", &w.carol, &mut carols);
    let (mut alice, _) = server.connect_ok(&w.alice);
    let (mut bob, _) = server.connect_ok(&w.bob);
    for c in carols.iter_mut() {
        c.collect(Duration::from_millis(50));
    }
    let n = carols.len();

    let add = json!({ "userId": "carol" });
    let a = call(
        port,
        "POST",
        "/api/chats/room/members",
        "/api/chats/{chatId}/members",
        Some(&add),
    );
    assert_eq!(
        a.json(),
        json!({ "type": "join", "connections": n }),
        "{a:?}"
    );
    for (i, c) in carols.iter_mut().enumerate() {
        assert_eq!(
            c.expect_type("chat:new"),
            json!({ "chat": { "id": "room" } }),
            "carol #{i}"
        );
    }
    // Joining again changes nothing.
    let a = call(
        port,
        "POST",
        "/api/chats/room/members",
        "/api/chats/{chatId}/members",
        Some(&add),
    );
    assert_eq!(a.json()["connections"], 0);

    // Every carol connection now gets the chat's events, wherever it lives.
    alice.send_message("room", "welcome carol");
    for (i, c) in carols.iter_mut().enumerate() {
        let m = c.expect_type("chat:message");
        assert_eq!(m["message"]["content"], "welcome carol", "carol #{i}");
    }
    bob.expect_type("chat:message");
    alice.expect_type("chat:message");

    assert_eq!(
        presence_of_room(port),
        json!({ "chatId": "room", "users": [
            { "userId": "alice", "connections": 1 },
            { "userId": "bob", "connections": 1 },
            { "userId": "carol", "connections": n },
        ]})
    );

    let a = call(
        port,
        "DELETE",
        "/api/chats/room/members/carol",
        "/api/chats/{chatId}/members/{userId}",
        None,
    );
    assert_eq!(a.json(), json!({ "type": "leave", "connections": n }));
    for (i, c) in carols.iter_mut().enumerate() {
        assert_eq!(
            c.expect_type("chat:removed"),
            json!({ "chatId": "room" }),
            "carol #{i}"
        );
    }
    alice.send_message("room", "carol is gone");
    bob.expect_type("chat:message");
    for c in carols.iter_mut() {
        c.expect_no_type("chat:message", Duration::from_millis(200));
    }
    assert_eq!(
        presence_of_room(port),
        json!({ "chatId": "room", "users": [
            { "userId": "alice", "connections": 1 },
            { "userId": "bob", "connections": 1 },
        ]})
    );
}

#[test]
fn disconnect_closes_every_connection_of_the_user_with_the_code_given() {
    let w = world();
    let server = server(&w);
    let port = server.port;
    let mut bobs = Vec::new();
    spread_over_workers(&server, "bob", &w.bob, &mut bobs);
    let (mut alice, _) = server.connect_ok(&w.alice);
    alice.collect(Duration::from_millis(100));
    let body = json!({ "code": 4403, "reason": "banned" });
    let a = call(
        port,
        "POST",
        "/api/users/bob/disconnect",
        "/api/users/{userId}/disconnect",
        Some(&body),
    );
    assert_eq!(
        a.json(),
        json!({ "type": "disconnect", "connections": bobs.len() })
    );
    for (i, b) in bobs.iter_mut().enumerate() {
        assert_eq!(close_of(b), (4403, "banned".to_string()), "bob #{i}");
    }
    // Alice stays, and sees bob go offline once.
    let frames = alice.collect(Duration::from_millis(500));
    assert_eq!(presence_of(&frames, "bob"), vec![false], "{frames:?}");

    // No body: the default, 4001 (the token was revoked).
    let (mut bob, _) = server.connect_ok(&w.bob);
    let a = http_request(port, "POST", "/api/users/bob/disconnect", AUTH, None);
    assert_eq!(a.json()["connections"], 1, "{a:?}");
    assert_eq!(close_of(&mut bob).0, 4001);
    // Nobody left: zero.
    std::thread::sleep(Duration::from_millis(100));
    let a = http_request(port, "POST", "/api/users/bob/disconnect", AUTH, None);
    assert_eq!(a.json()["connections"], 0, "{a:?}");
    let metrics = http_get(port, "/metrics").1;
    assert!(
        metrics.contains(r#"socket_server_server_closes_total{code="4403"} "#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"socket_server_api_requests_total{route="disconnect",status="200"} 3"#),
        "{metrics}"
    );
}

#[test]
fn a_batch_applies_in_order_and_a_bad_event_applies_nothing() {
    let w = world();
    let server = server(&w);
    let port = server.port;
    let mut carols = Vec::new();
    spread_over_workers(&server, "carol", &w.carol, &mut carols);
    for c in carols.iter_mut() {
        c.collect(Duration::from_millis(50));
    }
    let template = "/api/events";

    // The second event lacks userId: 400 naming it, and the first is not applied either.
    let bad = json!({ "events": [
        { "type": "join", "chatId": "room", "userId": "carol" },
        { "type": "leave", "chatId": "room" },
    ]});
    let a = http_request(
        port,
        "POST",
        template,
        AUTH,
        Some(bad.to_string().as_bytes()),
    );
    assert_eq!(a.status, 400);
    check_answer(&spec(), template, "post", &a);
    assert_eq!(
        error_of(&a),
        ("VALIDATION_ERROR".into(), Some("events[1].userId".into()))
    );
    for c in carols.iter_mut() {
        c.expect_no_type("chat:new", Duration::from_millis(200));
    }

    let good = json!({ "events": [
        { "type": "join", "chatId": "room", "userId": "carol" },
        { "type": "message", "chatId": "room", "message": { "id": "m1", "senderId": "bot", "content": "first" } },
        { "type": "leave", "chatId": "room", "userId": "carol" },
        { "type": "message", "chatId": "room", "message": { "id": "m2", "senderId": "bot", "content": "second" } },
        { "type": "disconnect", "userId": "nobody" },
    ]});
    let a = call(port, "POST", template, template, Some(&good));
    let n = carols.len();
    assert_eq!(
        a.json(),
        json!({ "results": [
            { "type": "join", "connections": n },
            { "type": "message", "messageId": "m1", "delivered": n },
            { "type": "leave", "connections": n },
            { "type": "message", "messageId": "m2", "delivered": 0 },
            { "type": "disconnect", "connections": 0 },
        ]})
    );
    for (i, c) in carols.iter_mut().enumerate() {
        let frames = c.collect(Duration::from_millis(300));
        let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
        assert_eq!(
            kinds,
            vec!["chat:new", "chat:message", "chat:removed"],
            "carol #{i}: {frames:?}"
        );
        assert_eq!(frames[1]["payload"]["message"]["content"], "first");
    }
}

#[test]
fn with_api_port_the_api_is_served_there_only() {
    let w = world();
    let server = ServerBuilder::new(&w.store.path)
        .env("API_KEY", KEY)
        .env("API_PORT", "0")
        .spawn();
    let api_port = server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "Server listening")
        .and_then(|v| v["data"]["apiPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .expect("Server listening names apiPort");
    assert_ne!(api_port, server.port);
    let a = http_request(server.port, "GET", "/api/chats/room/presence", AUTH, None);
    assert_eq!(
        a.status, 404,
        "the WebSocket port no longer serves the API: {a:?}"
    );
    let a = call(
        api_port,
        "GET",
        "/api/chats/room/presence",
        "/api/chats/{chatId}/presence",
        None,
    );
    assert_eq!(a.status, 200);
    let a = http_request(api_port, "GET", "/healthz", AUTH, None);
    assert_eq!(a.status, 404, "only the API on API_PORT: {a:?}");
    let out = raw_exchange(api_port, b"NOT HTTP AT ALL\r\n\r\n", false);
    assert!(
        out.starts_with("HTTP/1.1 400 "),
        "a bad head is answered: {out:?}"
    );
    // WebSockets still work on WS_PORT.
    let (mut bob, _) = server.connect_ok(&w.bob);
    let body = json!({ "id": "m", "senderId": "bot", "content": "via API_PORT" });
    let a = call(
        api_port,
        "POST",
        "/api/chats/room/messages",
        "/api/chats/{chatId}/messages",
        Some(&body),
    );
    assert_eq!(a.json()["delivered"], 1);
    assert_eq!(
        bob.expect_type("chat:message")["message"]["content"],
        "via API_PORT"
    );
}

/// The spec check itself can fail: an answer missing a documented field is refused.
#[test]
#[should_panic(expected = "does not match docs/openapi.json")]
fn the_spec_check_refuses_an_undocumented_answer() {
    let answer = HttpAnswer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: r#"{"type":"join"}"#.into(),
    };
    check_answer(&spec(), "/api/chats/{chatId}/members", "post", &answer);
}
