//! Fault injection against the REST backend (HTTP_API_URL set): the fake product API of
//! tests/support/fake_api.rs can be slowed down, made to fail, drop connections, lose
//! responses or go away entirely, and records every request it sees. The gateway's retries
//! (with `Idempotency-Key`), circuit breaker, profile cache and its isolation of connections
//! from each other are checked over real WebSockets.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_api::{FakeApi, Mode, Route};
use support::*;

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers
// ---------------------------------------------------------------------------------------------

const ALICE: &str = "tok-alice";
const BOB: &str = "tok-bob";

/// BACKEND_TIMEOUT of every gateway here, per attempt.
const TIMEOUT_MS: u64 = 300;
/// BACKEND_RETRIES of every gateway here (also the server's default).
const RETRIES: u32 = 2;
/// Extra time allowed on top of a computed worst case (scheduling on a busy 2-core machine).
const SLACK: Duration = Duration::from_millis(1000);

const BREAKER_METRIC: &str = "socket_server_breaker_state";
const CACHE_HITS_METRIC: &str = "socket_server_auth_cache_hits_total";

/// alice and bob, both in `room`.
fn world() -> FakeApi {
    let api = FakeApi::start();
    api.add_user(ALICE, "alice", "Alice", &["room"]);
    api.add_user(BOB, "bob", "Bob", &["room"]);
    api
}

/// A gateway on `api` with small timeouts; tests add or override knobs.
fn gateway(api: &FakeApi, store: &TestStore) -> ServerBuilder {
    ServerBuilder::new(&store.path)
        .env("HTTP_API_URL", api.url.clone())
        .env("BACKEND_TIMEOUT", TIMEOUT_MS.to_string())
        .env("BACKEND_RETRIES", RETRIES.to_string())
        .env("BREAKER_COOLDOWN", "500")
}

/// Sum of the retry backoffs (50 ms, ×4 each time) before `retries` retries.
fn backoff_total(retries: u32) -> Duration {
    (0..retries)
        .map(|i| Duration::from_millis(50) * 4u32.pow(i))
        .sum()
}

/// Longest a call failing by timeout on every attempt can take (without slack).
fn all_attempts_time_out(timeout_ms: u64, retries: u32) -> Duration {
    Duration::from_millis(timeout_ms) * (retries + 1) + backoff_total(retries)
}

fn send_with_id(c: &mut Client, chat: &str, content: &str, client_message_id: &str) {
    c.send(
        "chat:message",
        json!({ "chatId": chat, "content": content, "clientMessageId": client_message_id }),
    );
}

/// Reads one sample of an unlabelled metric from /metrics.
fn metric(port: u16, name: &str) -> f64 {
    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, 200, "GET /metrics: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found in /metrics:\n{text}"))
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Asserts exactly one `chat:message` with `id` arrives at `c` (and no other within `quiet`).
fn expect_one_broadcast(c: &mut Client, who: &str, id: &str, quiet: Duration) -> Value {
    let m = c.expect_type_any("chat:message");
    assert_eq!(m["message"]["id"], id, "{who} got the wrong message: {m}");
    let more = c.collect(quiet);
    let dup: Vec<&Value> = more
        .iter()
        .filter(|v| v["type"] == "chat:message")
        .collect();
    assert!(
        dup.is_empty(),
        "{who} got the message more than once: {dup:?}"
    );
    m
}

/// Reads until the connection ends; returns the close code (panics without a close frame).
fn expect_close_after_error(c: &mut Client) -> Option<u16> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        match c.next_frame_until(deadline) {
            Some(Frame::Close(code)) => return code.map(|(code, _)| code),
            Some(Frame::Gone(e)) => panic!("connection ended without a close frame: {e}"),
            Some(Frame::Text(v)) => panic!("unexpected frame after the error: {v}"),
            Some(_) => continue,
            None => panic!("connection not closed within {READ_TIMEOUT:?} after the error"),
        }
    }
}

/// A minimal HTTP/1.1 client (Connection: close) for checking the fake itself. `Ok(None)`: the
/// connection closed without any response byte.
fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Option<(u16, Value)>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    if out.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    Ok(Some((
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )))
}

// ---------------------------------------------------------------------------------------------
// The fake itself
// ---------------------------------------------------------------------------------------------

/// The harness must be trusted before its verdicts are: each mode does what it claims on the
/// wire.
#[test]
fn fake_api_modes_behave_as_specified() {
    let api = world();
    let auth = [("Authorization", "Bearer tok-alice")];
    let post = |key: &str| {
        raw_request(
            api.addr,
            "POST",
            "/chats/room/messages",
            &[auth[0], ("Idempotency-Key", key)],
            r#"{"content":"x"}"#,
        )
        .expect("fake reachable")
    };

    let (status, body) = post("k1").expect("a response");
    assert_eq!(status, 201);
    let id = body["message"]["id"].clone();
    // Same key: the same message, nothing new stored.
    assert_eq!(post("k1").unwrap(), (201, body.clone()));
    assert_eq!(api.stored().len(), 1);
    assert_ne!(post("k2").unwrap().1["message"]["id"], id);
    assert_eq!(api.stored().len(), 2);

    api.set_route(Route::PostMessage, Mode::FailNext(2, 503));
    assert_eq!(post("k3").unwrap().0, 503);
    assert_eq!(post("k3").unwrap().0, 503);
    assert_eq!(post("k3").unwrap().0, 201);
    assert_eq!(api.stored().len(), 3);

    // A dropped connection carries no response byte at all (no 500 from hyper).
    api.set_route(Route::PostMessage, Mode::DropConnection);
    assert_eq!(post("k4"), None);
    assert_eq!(api.stored().len(), 3);
    api.set_route(Route::PostMessage, Mode::StoreThenDrop(1));
    assert_eq!(post("k5"), None);
    assert_eq!(api.stored().len(), 4, "StoreThenDrop stores");
    let (status, again) = post("k5").unwrap();
    assert_eq!(status, 201, "StoreThenDrop is once only");
    assert_eq!(again["message"], api.stored()[3]);

    api.set_global(Mode::Error(500));
    let got = raw_request(api.addr, "GET", "/auth/profile", &auth, "").unwrap();
    assert_eq!(got.map(|g| g.0), Some(500));
    api.set_global(Mode::Normal);
    let got = raw_request(api.addr, "GET", "/auth/profile", &auth, "").unwrap();
    assert_eq!(got.unwrap().1["user"]["userId"], "alice");

    // Down: connection refused; up again on the same port.
    api.set_down(true);
    let err = raw_request(api.addr, "GET", "/chats", &auth, "").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    api.set_down(false);
    let got = raw_request(api.addr, "GET", "/chats", &auth, "").unwrap();
    assert_eq!(
        got.unwrap(),
        (
            200,
            json!({ "chats": [{ "id": "room", "name": "Chat room" }] })
        )
    );

    let reqs = api.requests();
    assert!(reqs.iter().all(|r| !r.method.is_empty()));
    assert_eq!(
        reqs.iter()
            .filter(|r| r.route == Route::PostMessage)
            .count(),
        9
    );
    assert!(api.with(|s| s.accepted) >= reqs.len());
}

// ---------------------------------------------------------------------------------------------
// 1. A slow API
// ---------------------------------------------------------------------------------------------

/// Handles one of bob's frames in the slow-API test; `true` for a `pong`.
fn bob_frame(f: Frame, heartbeats: &mut u32, seen: &mut Vec<Value>) -> bool {
    match f {
        Frame::Ping => *heartbeats += 1,
        Frame::Pong => {}
        Frame::Text(v) => {
            assert_ne!(
                v["type"], "chat:message",
                "broadcast of a failed message: {v}"
            );
            let is_pong = v["type"] == "pong";
            seen.push(v);
            return is_pong;
        }
        other => panic!("bob: unexpected {other:?}"),
    }
    false
}

/// alice's POST hangs (every attempt times out); meanwhile bob, on the same worker, is served
/// at once and heartbeats continue. alice's error comes after all retries, within the computed
/// bound, and her next frame is only processed afterwards. Nothing is broadcast; resending the
/// same clientMessageId once the API is back yields the message the API stored meanwhile, once.
#[test]
fn slow_post_times_out_after_retries_without_blocking_others() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store)
        .env("WORKERS", "1")
        .env("HEARTBEAT_INTERVAL", "200")
        .env("BREAKER_THRESHOLD", "0")
        .spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);

    api.set_route(Route::PostMessage, Mode::Slow(Duration::from_secs(3)));
    let shortest = all_attempts_time_out(TIMEOUT_MS, RETRIES); // 3 × 300 + 50 + 200
    let bound = shortest + SLACK;
    let t0 = Instant::now();
    send_with_id(&mut alice, "room", "anyone there?", "slow-1");
    alice.send("ping", json!({}));

    // bob, meanwhile: ping → pong round trips and heartbeat pings, until shortly before alice's
    // call could possibly end.
    let window_end = t0 + shortest - Duration::from_millis(250);
    let mut rtts = Vec::new();
    let mut heartbeats = 0;
    let mut seen_by_bob = Vec::new();
    while Instant::now() < window_end {
        let sent = Instant::now();
        bob.send("ping", json!({}));
        let deadline = sent + READ_TIMEOUT;
        loop {
            let f = bob
                .next_frame_until(deadline)
                .expect("bob: no pong while alice's POST hangs");
            if bob_frame(f, &mut heartbeats, &mut seen_by_bob) {
                break;
            }
        }
        rtts.push(sent.elapsed());
        let pause = Instant::now() + Duration::from_millis(100);
        while let Some(f) = bob.next_frame_until(pause) {
            bob_frame(f, &mut heartbeats, &mut seen_by_bob);
        }
    }
    let bob_done = t0.elapsed();
    let slowest = *rtts.iter().max().unwrap();
    assert!(
        rtts.len() >= 3,
        "only {} ping round trips for bob: {rtts:?}",
        rtts.len()
    );
    assert!(
        slowest < Duration::from_millis(TIMEOUT_MS),
        "bob's pong took {slowest:?} while alice's POST hung (blocked behind it?): {rtts:?}"
    );
    assert!(
        heartbeats >= 2,
        "bob got {heartbeats} heartbeat pings in {bob_done:?} with HEARTBEAT_INTERVAL=200"
    );

    let e = alice.expect_type_within("error", bound.saturating_sub(t0.elapsed()));
    let took = t0.elapsed();
    assert_eq!(e["code"], "HTTP_ERROR", "{e}");
    assert_error_shape(&e);
    assert!(
        took <= bound,
        "HTTP_ERROR after {took:?}, bound {bound:?} = {TIMEOUT_MS} ms × {} + backoffs + slack",
        RETRIES + 1
    );
    assert!(
        took + Duration::from_millis(20) >= shortest,
        "HTTP_ERROR after {took:?}: sooner than {RETRIES} retries of a {TIMEOUT_MS} ms timeout \
         with backoff ({shortest:?})"
    );
    assert!(bob_done < took, "bob's checks must overlap alice's wait");
    // alice's ping (sent right behind the message) is answered only after the POST ended.
    alice.expect_type("pong");

    // Every attempt reached the API with the same key, spaced by timeout + backoff.
    let posts = api.requests_for(Route::PostMessage);
    assert_eq!(posts.len(), RETRIES as usize + 1, "{posts:?}");
    for p in &posts {
        assert_eq!(p.idempotency_key(), Some("alice:room:slow-1"), "{p:?}");
        assert_eq!(p.path, "/chats/room/messages");
        assert_eq!(p.header("authorization"), Some("Bearer tok-alice"));
    }
    for (i, w) in posts.windows(2).enumerate() {
        let gap = w[1].at - w[0].at;
        let min = Duration::from_millis(TIMEOUT_MS) + backoff_total(i as u32 + 1)
            - backoff_total(i as u32)
            - Duration::from_millis(15);
        assert!(
            gap >= min,
            "attempt {} came {gap:?} after the previous one",
            i + 2
        );
    }

    // Nothing was broadcast for the failed message.
    bob.expect_no_type("chat:message", Duration::from_millis(300));
    alice.expect_no_type("chat:message", Duration::from_millis(50));

    // The API had stored it (once, thanks to the key); a resend with the same clientMessageId
    // gets that message back, broadcast once.
    assert_eq!(api.stored().len(), 1);
    api.set_route(Route::PostMessage, Mode::Normal);
    send_with_id(&mut alice, "room", "anyone there?", "slow-1");
    let quiet = Duration::from_millis(300);
    let m = expect_one_broadcast(&mut alice, "alice", "api-msg-1", quiet);
    assert_eq!(m["message"]["clientMessageId"], "slow-1");
    expect_one_broadcast(&mut bob, "bob", "api-msg-1", quiet);
    assert_eq!(api.stored().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 2–4. Retried POSTs carry one Idempotency-Key
// ---------------------------------------------------------------------------------------------

#[test]
fn post_retried_after_503_is_broadcast_once_with_same_key() {
    let api = world();
    let store = TestStore::new();
    // BACKEND_RETRIES left at the server's default (2).
    let server = ServerBuilder::new(&store.path)
        .env("HTTP_API_URL", api.url.clone())
        .env("BACKEND_TIMEOUT", TIMEOUT_MS.to_string())
        .spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);

    api.set_route(Route::PostMessage, Mode::FailNext(1, 503));
    send_with_id(&mut alice, "room", "retry me", "cm-503");
    let quiet = Duration::from_millis(300);
    let m = expect_one_broadcast(&mut alice, "alice", "api-msg-1", quiet);
    assert_eq!(m["message"]["content"], "retry me");
    assert_eq!(m["message"]["clientMessageId"], "cm-503");
    expect_one_broadcast(&mut bob, "bob", "api-msg-1", quiet);

    let posts = api.requests_for(Route::PostMessage);
    assert_eq!(
        posts.len(),
        2,
        "one failed attempt and one retry: {posts:?}"
    );
    for p in &posts {
        assert_eq!(p.idempotency_key(), Some("alice:room:cm-503"), "{p:?}");
        let body: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(body["content"], "retry me");
    }
    assert!(
        posts[1].at - posts[0].at >= Duration::from_millis(40),
        "retry without backoff: {:?}",
        posts[1].at - posts[0].at
    );
    assert_eq!(api.stored().len(), 1);
}

#[test]
fn lost_response_is_retried_and_deduplicated_by_the_api() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);

    // The API stores the message but the response never arrives.
    api.set_route(Route::PostMessage, Mode::StoreThenDrop(1));
    send_with_id(&mut alice, "room", "did it land?", "cm-lost");
    let quiet = Duration::from_millis(300);
    let m = expect_one_broadcast(&mut alice, "alice", "api-msg-1", quiet);
    assert_eq!(m["message"]["clientMessageId"], "cm-lost");
    expect_one_broadcast(&mut bob, "bob", "api-msg-1", quiet);

    let posts = api.requests_for(Route::PostMessage);
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(posts
        .iter()
        .all(|p| p.idempotency_key() == Some("alice:room:cm-lost")));
    let stored = api.stored();
    assert_eq!(stored.len(), 1, "stored twice: {stored:?}");
    assert_eq!(stored[0]["content"], "did it land?");
}

#[test]
fn dropped_connections_exhaust_retries_then_http_error() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).env("BREAKER_THRESHOLD", "0").spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);

    api.set_route(Route::PostMessage, Mode::DropConnection);
    let t0 = Instant::now();
    send_with_id(&mut alice, "room", "into the void", "cm-void");
    alice.expect_error("HTTP_ERROR");
    let took = t0.elapsed();
    let bound = all_attempts_time_out(TIMEOUT_MS, RETRIES) + SLACK;
    assert!(took < bound, "HTTP_ERROR after {took:?} (bound {bound:?})");
    let posts = api.requests_for(Route::PostMessage);
    assert_eq!(posts.len(), RETRIES as usize + 1, "{posts:?}");
    assert!(posts
        .iter()
        .all(|p| p.idempotency_key() == Some("alice:room:cm-void")));
    assert!(api.stored().is_empty());
    bob.expect_no_type("chat:message", Duration::from_millis(300));
    alice.expect_no_type("chat:message", Duration::from_millis(50));
}

#[test]
fn post_without_client_message_id_gets_a_uuid_key_reused_on_retries() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);

    api.set_route(Route::PostMessage, Mode::FailNext(2, 500));
    alice.send_message("room", "no client id");
    let quiet = Duration::from_millis(300);
    let m = expect_one_broadcast(&mut alice, "alice", "api-msg-1", quiet);
    assert!(
        m["message"].get("clientMessageId").is_none(),
        "no clientMessageId was sent: {m}"
    );
    expect_one_broadcast(&mut bob, "bob", "api-msg-1", quiet);

    let posts = api.requests_for(Route::PostMessage);
    assert_eq!(posts.len(), 3, "two 500s then success: {posts:?}");
    let key = posts[0]
        .idempotency_key()
        .expect("a POST without clientMessageId must still carry an Idempotency-Key")
        .to_string();
    assert!(is_uuid(&key), "generated key is not a UUID: {key:?}");
    for p in &posts {
        assert_eq!(
            p.idempotency_key(),
            Some(key.as_str()),
            "key changed on retry"
        );
    }

    // Another message: a fresh key (otherwise the API would return the first message).
    alice.send_message("room", "second");
    let m = expect_one_broadcast(&mut alice, "alice", "api-msg-2", quiet);
    assert_eq!(m["message"]["content"], "second");
    expect_one_broadcast(&mut bob, "bob", "api-msg-2", quiet);
    let posts = api.requests_for(Route::PostMessage);
    assert_eq!(posts.len(), 4);
    let key2 = posts[3].idempotency_key().unwrap_or("");
    assert!(is_uuid(key2), "{key2:?}");
    assert_ne!(key2, key);
    assert_eq!(api.stored().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 5. 4xx answers are final; 5xx on GETs and the read PUT are retried
// ---------------------------------------------------------------------------------------------

#[test]
fn client_errors_are_never_retried_nor_trip_the_breaker() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).env("BREAKER_THRESHOLD", "2").spawn();
    let (mut alice, _) = server.connect_ok(ALICE);

    let cases = [
        (Route::PostMessage, 422, "VALIDATION_ERROR"),
        (Route::PostMessage, 400, "VALIDATION_ERROR"),
        (Route::PostMessage, 404, "NOT_PARTICIPANT"),
        (Route::PostMessage, 403, "NOT_PARTICIPANT"),
        (Route::MarkRead, 422, "VALIDATION_ERROR"),
        (Route::MarkRead, 404, "NOT_PARTICIPANT"),
        // Last: a 401 mid-session ends the connection (AUTH_FAILED, then 4001).
        (Route::PostMessage, 401, "AUTH_FAILED"),
    ];
    for (i, (route, status, code)) in cases.into_iter().enumerate() {
        api.set_route(route, Mode::Error(status));
        let before = api.requests_for(route).len();
        if route == Route::PostMessage {
            send_with_id(&mut alice, "room", "refused", &format!("cm-4xx-{i}"));
        } else {
            alice.send(
                "chat:read",
                json!({ "chatId": "room", "messageId": "api-msg-1" }),
            );
        }
        let e = alice.expect_type("error");
        assert_eq!(e["code"], code, "{route:?} answered {status}: {e}");
        assert_eq!(
            api.requests_for(route).len(),
            before + 1,
            "{route:?} answered {status} must be tried exactly once"
        );
    }
    assert_eq!(
        alice.expect_close(),
        Some(4001),
        "AUTH_FAILED mid-session closes"
    );
    // Seven 4xx in a row with BREAKER_THRESHOLD=2: the breaker stayed closed.
    assert_eq!(metric(server.port, BREAKER_METRIC), 0.0);
    api.set_route(Route::PostMessage, Mode::Normal);
    let (mut alice, _) = server.connect_ok(ALICE);
    send_with_id(&mut alice, "room", "fine", "cm-ok");
    let m = alice.expect_type("chat:message");
    assert_eq!(m["message"]["content"], "fine");

    // 401 on /auth/profile: one call, AUTH_FAILED and 4001.
    api.set_route(Route::Profile, Mode::Error(401));
    let before = api.requests_for(Route::Profile).len();
    let mut c = server.connect(ALICE);
    c.expect_error("AUTH_FAILED");
    assert_eq!(c.expect_close(), Some(4001));
    assert_eq!(api.requests_for(Route::Profile).len(), before + 1);
    assert_eq!(api.stored().len(), 1);
}

#[test]
fn gets_and_read_put_are_retried_on_5xx() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).env("BREAKER_THRESHOLD", "0").spawn();

    api.set_route(Route::Profile, Mode::FailNext(1, 503));
    api.set_route(Route::Chats, Mode::FailNext(2, 502));
    let (mut alice, connected) = server.connect_ok(ALICE);
    assert_eq!(connected["userId"], "alice");
    assert_eq!(chat_ids(&connected), vec!["room".to_string()]);
    assert_eq!(api.requests_for(Route::Profile).len(), 2);
    assert_eq!(api.requests_for(Route::Chats).len(), 3);
    let (mut bob, _) = server.connect_ok(BOB);

    api.set_route(Route::MarkRead, Mode::FailNext(2, 500));
    bob.send(
        "chat:read",
        json!({ "chatId": "room", "messageId": "api-msg-9" }),
    );
    for c in [&mut alice, &mut bob] {
        let r = c.expect_type("chat:read");
        assert_eq!(
            r,
            json!({ "chatId": "room", "messageId": "api-msg-9", "userId": "bob",
                    "readAt": "2024-05-01T10:00:05.000Z" })
        );
    }
    let puts = api.requests_for(Route::MarkRead);
    assert_eq!(puts.len(), 3, "{puts:?}");
    assert!(puts
        .iter()
        .all(|p| p.method == "PUT" && p.path == "/chats/room/messages/api-msg-9/read"));

    // More 5xx than retries: HTTP_ERROR after exactly RETRIES + 1 attempts.
    api.set_route(Route::MarkRead, Mode::Error(503));
    bob.send(
        "chat:read",
        json!({ "chatId": "room", "messageId": "api-msg-9" }),
    );
    let e = bob.expect_error("HTTP_ERROR");
    assert_eq!(e["details"]["status"], 503, "{e}");
    assert_eq!(
        api.requests_for(Route::MarkRead).len(),
        3 + RETRIES as usize + 1
    );
    alice.expect_no_type("chat:read", Duration::from_millis(200));
}

// ---------------------------------------------------------------------------------------------
// 6. Circuit breaker
// ---------------------------------------------------------------------------------------------

/// Sends messages until one fails with "circuit open". Returns (index of that message, the
/// time the first message was sent, the time the error before it arrived).
fn trip_breaker(alice: &mut Client, tag: &str) -> (usize, Instant, Instant) {
    let first_sent = Instant::now();
    let mut last_failure = first_sent;
    for i in 0..6 {
        send_with_id(alice, "room", "during outage", &format!("{tag}-{i}"));
        let e = alice.expect_error("HTTP_ERROR");
        let text = e["message"].as_str().unwrap();
        if text.contains("circuit open") {
            return (i, first_sent, last_failure);
        }
        last_failure = Instant::now();
    }
    panic!("the breaker never opened after 6 failing messages");
}

#[test]
fn breaker_opens_fails_fast_and_recovers_through_a_probe() {
    const THRESHOLD: u32 = 3;
    const COOLDOWN: Duration = Duration::from_millis(1500);
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store)
        .env("BREAKER_THRESHOLD", THRESHOLD.to_string())
        .env("BREAKER_COOLDOWN", COOLDOWN.as_millis().to_string())
        .spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);
    assert_eq!(metric(server.port, BREAKER_METRIC), 0.0);

    // --- Outage 1: every call answers 500.
    api.set_global(Mode::Error(500));
    let (i, _, failed_at) = trip_breaker(&mut alice, "e500");
    // The first message's RETRIES + 1 attempts are THRESHOLD consecutive failures.
    assert_eq!(i, 1, "the second message should be the first one refused");
    let posts = api.requests_for(Route::PostMessage);
    assert_eq!(posts.len(), THRESHOLD as usize, "{posts:?}");
    // The breaker opened no sooner than the last failed attempt: it stays open until then.
    let open_until = posts.last().unwrap().at + COOLDOWN;

    let seen = api.requests().len();
    for k in 0..3 {
        let t = Instant::now();
        send_with_id(&mut alice, "room", "fail fast", &format!("fast-{k}"));
        let e = alice.expect_error("HTTP_ERROR");
        let took = t.elapsed();
        assert!(
            e["message"].as_str().unwrap().contains("circuit open"),
            "{e}"
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS / 2),
            "a refused call took {took:?} (BACKEND_TIMEOUT={TIMEOUT_MS})"
        );
    }
    alice.send(
        "chat:read",
        json!({ "chatId": "room", "messageId": "api-msg-1" }),
    );
    let e = alice.expect_error("HTTP_ERROR");
    assert!(
        e["message"].as_str().unwrap().contains("circuit open"),
        "{e}"
    );
    // A new connection is refused at once as well: error, then 1013.
    let mut c = server.connect(BOB);
    let e = c.expect_error("HTTP_ERROR");
    assert!(
        e["message"].as_str().unwrap().contains("circuit open"),
        "{e}"
    );
    assert_eq!(expect_close_after_error(&mut c), Some(1013));
    assert_eq!(metric(server.port, BREAKER_METRIC), 1.0);
    let after = api.requests();
    assert!(
        Instant::now() < open_until,
        "test too slow: the cooldown may have ended before the fail-fast checks did"
    );
    assert_eq!(
        after.len(),
        seen,
        "no request may reach the API while the breaker is open: {:?}",
        &after[seen..]
    );

    // --- Recovery: after the cooldown one probe goes through and closes the breaker.
    api.set_global(Mode::Normal);
    std::thread::sleep(
        (failed_at + COOLDOWN + Duration::from_millis(200))
            .saturating_duration_since(Instant::now()),
    );
    send_with_id(&mut alice, "room", "back again", "probe-1");
    let quiet = Duration::from_millis(200);
    let m = expect_one_broadcast(&mut alice, "alice", "api-msg-1", quiet);
    assert_eq!(m["message"]["content"], "back again");
    expect_one_broadcast(&mut bob, "bob", "api-msg-1", quiet);
    assert_eq!(api.requests().len(), seen + 1, "exactly the probe POST");
    assert_eq!(metric(server.port, BREAKER_METRIC), 0.0);
    // Closed: normal service.
    send_with_id(&mut alice, "room", "and again", "after-1");
    expect_one_broadcast(&mut alice, "alice", "api-msg-2", quiet);
    expect_one_broadcast(&mut bob, "bob", "api-msg-2", quiet);

    // --- Outage 2: the API is gone (connection refused), then comes back on the same port.
    api.set_down(true);
    let (i, first_sent, failed_at) = trip_breaker(&mut alice, "down");
    assert_eq!(i, 1);
    // Opened no sooner than the backoffs between the first message's attempts.
    let open_until = first_sent + backoff_total(RETRIES) + COOLDOWN;
    let t = Instant::now();
    send_with_id(&mut alice, "room", "fail fast", "fast-down");
    let e = alice.expect_error("HTTP_ERROR");
    assert!(
        e["message"].as_str().unwrap().contains("circuit open"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_millis(TIMEOUT_MS / 2));
    assert_eq!(metric(server.port, BREAKER_METRIC), 1.0);
    assert!(Instant::now() < open_until, "test too slow");

    api.set_down(false);
    std::thread::sleep(
        (failed_at + COOLDOWN + Duration::from_millis(200))
            .saturating_duration_since(Instant::now()),
    );
    send_with_id(&mut alice, "room", "recovered", "probe-2");
    let m = expect_one_broadcast(&mut alice, "alice", "api-msg-3", quiet);
    assert_eq!(m["message"]["content"], "recovered");
    expect_one_broadcast(&mut bob, "bob", "api-msg-3", quiet);
    assert_eq!(metric(server.port, BREAKER_METRIC), 0.0);
    let (_c, connected) = server.connect_ok(BOB);
    assert_eq!(connected["userId"], "bob");
    assert_eq!(
        api.stored().len(),
        3,
        "only the successful messages were stored"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Profile cache
// ---------------------------------------------------------------------------------------------

#[test]
fn auth_cache_reuses_profiles_per_token() {
    let api = world();

    // AUTH_CACHE_TTL=5000: one profile call for three connects; chats every time.
    let store = TestStore::new();
    let server = gateway(&api, &store).env("AUTH_CACHE_TTL", "5000").spawn();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (c, connected) = server.connect_ok(ALICE);
        assert_eq!(connected["userId"], "alice");
        assert_eq!(chat_ids(&connected), vec!["room".to_string()]);
        clients.push(c);
    }
    assert_eq!(api.requests_for(Route::Profile).len(), 1);
    assert_eq!(api.requests_for(Route::Chats).len(), 3);
    assert_eq!(metric(server.port, CACHE_HITS_METRIC), 2.0);
    // Per token: bob's first connect is a miss.
    let (_b, connected) = server.connect_ok(BOB);
    assert_eq!(connected["userId"], "bob");
    assert_eq!(api.requests_for(Route::Profile).len(), 2);
    assert_eq!(metric(server.port, CACHE_HITS_METRIC), 2.0);
    drop(clients);
    drop(server);

    // Without AUTH_CACHE_TTL: every connect asks.
    api.with(|s| s.requests.clear());
    let store = TestStore::new();
    let server = gateway(&api, &store).spawn();
    for _ in 0..3 {
        let (c, _) = server.connect_ok(ALICE);
        c.close();
    }
    assert_eq!(api.requests_for(Route::Profile).len(), 3);
    assert_eq!(metric(server.port, CACHE_HITS_METRIC), 0.0);
    drop(server);

    // Entries expire after the TTL.
    api.with(|s| s.requests.clear());
    let store = TestStore::new();
    let server = gateway(&api, &store).env("AUTH_CACHE_TTL", "300").spawn();
    server.connect_ok(ALICE).0.close();
    server.connect_ok(ALICE).0.close();
    assert_eq!(api.requests_for(Route::Profile).len(), 1);
    std::thread::sleep(Duration::from_millis(450));
    server.connect_ok(ALICE).0.close();
    assert_eq!(api.requests_for(Route::Profile).len(), 2);
    assert_eq!(metric(server.port, CACHE_HITS_METRIC), 1.0);
}

// ---------------------------------------------------------------------------------------------
// 8. Unreachable API
// ---------------------------------------------------------------------------------------------

#[test]
fn unreachable_api_at_connect_is_http_error_then_close() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).env("BREAKER_THRESHOLD", "0").spawn();
    assert_eq!(server.http_get_status("/readyz"), 200);

    api.set_down(true);
    let t0 = Instant::now();
    let mut c = server.connect(ALICE);
    let e = c.expect_error("HTTP_ERROR");
    assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
    assert_eq!(expect_close_after_error(&mut c), Some(1013));
    // Connection refused is immediate: only the backoffs, not timeouts, are waited for.
    let took = t0.elapsed();
    assert!(
        took < all_attempts_time_out(TIMEOUT_MS, RETRIES) + SLACK,
        "{took:?}"
    );
    assert_eq!(server.http_get_status("/healthz"), 200);
    // /readyz reuses a probe result for up to a second per worker.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(server.port, "/readyz");
        if status != 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz must fail while the API is down: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(api.requests().iter().all(|r| r.route != Route::Profile));

    // Back on the same port: connects and readiness work again.
    api.set_down(false);
    let (_c, connected) = server.connect_ok(ALICE);
    assert_eq!(connected["userId"], "alice");
    // /readyz reuses a probe result for up to a second per worker.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.http_get_status("/readyz") != 200 {
        assert!(Instant::now() < deadline, "readyz never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn client_bytes_that_cannot_form_a_request_never_reach_or_trip_the_api() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).env("BREAKER_THRESHOLD", "2").spawn();
    // Tokens that cannot travel in an Authorization header: refused before any call.
    for bad in ["%C3%A9", "a%0Ab", "tab%09x"] {
        let mut c = connect_url(&format!("ws://127.0.0.1:{}/?token={bad}", server.port));
        let e = c.expect_error("AUTH_FAILED");
        assert_error_shape(&e);
        assert_eq!(c.expect_close(), Some(4001));
    }
    assert!(
        api.requests().is_empty(),
        "calls made: {:?}",
        api.requests().len()
    );
    // A clientMessageId that could not travel in a header as it is is percent-encoded into the
    // Idempotency-Key, so any id the store backend accepts works with the API too.
    let (mut alice, _) = server.connect_ok(ALICE);
    send_with_id(&mut alice, "room", "hi", "caf\u{e9} 1");
    let m = alice.expect_type("chat:message");
    assert_eq!(m["message"]["clientMessageId"], "caf\u{e9} 1");
    let posts = api.requests_for(Route::PostMessage);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].idempotency_key(), Some("alice:room:caf%C3%A9%201"));
    assert_eq!(metric(server.port, BREAKER_METRIC), 0.0);
}

// ---------------------------------------------------------------------------------------------
// 8. Answers in the wrong shape, and ids sent as numbers
// ---------------------------------------------------------------------------------------------

#[test]
fn garbled_success_is_http_error_once_never_retried_nor_tripping_the_breaker() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).env("BREAKER_THRESHOLD", "2").spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);

    // The API stores each message but answers 201 with a body the gateway cannot read: the
    // sender gets HTTP_ERROR after exactly one POST (a retry would get the same answer), and
    // nobody gets a broadcast of a message the gateway could not read back.
    api.set_route(Route::PostMessage, Mode::Garbled);
    for i in 0..4 {
        let before = api.requests_for(Route::PostMessage).len();
        send_with_id(
            &mut alice,
            "room",
            &format!("garbled {i}"),
            &format!("cm-g{i}"),
        );
        let e = alice.expect_type("error");
        assert_eq!(e["code"], "HTTP_ERROR", "{e}");
        assert_eq!(api.requests_for(Route::PostMessage).len(), before + 1);
    }
    assert_eq!(api.stored().len(), 4);
    let seen = bob.collect(Duration::from_millis(300));
    assert!(
        seen.iter().all(|v| v["type"] != "chat:message"),
        "bob got a broadcast of an unread answer: {seen:?}"
    );
    // Four in a row with BREAKER_THRESHOLD=2: the API is up, so the breaker stayed closed.
    assert_eq!(metric(server.port, BREAKER_METRIC), 0.0);

    // The client resends with the same clientMessageId once the API answers properly: the
    // Idempotency-Key makes the API return the stored message, so it is broadcast, not stored twice.
    api.set_route(Route::PostMessage, Mode::Normal);
    send_with_id(&mut alice, "room", "garbled 0", "cm-g0");
    let m = alice.expect_type("chat:message");
    assert_eq!(m["message"]["id"], api.stored()[0]["id"], "{m}");
    expect_one_broadcast(
        &mut bob,
        "bob",
        m["message"]["id"].as_str().unwrap(),
        Duration::from_millis(200),
    );
    assert_eq!(
        api.stored().len(),
        4,
        "the resend must not store a fifth message"
    );
}

#[test]
fn ids_sent_as_json_numbers_are_accepted() {
    let api = FakeApi::start();
    api.add_user(ALICE, "7", "Alice", &["42"]);
    api.add_user(BOB, "8", "Bob", &["42"]);
    api.with(|s| s.numeric_ids = true);
    let store = TestStore::new();
    let server = gateway(&api, &store).spawn();
    let (mut alice, ready) = server.connect_ok(ALICE);
    assert_eq!(ready["userId"], "7", "{ready}");
    assert_eq!(ready["chatIds"], json!(["42"]), "{ready}");
    let (mut bob, _) = server.connect_ok(BOB);
    send_with_id(&mut alice, "42", "hello", "cm-n1");
    let m = alice.expect_type("chat:message");
    assert_eq!(m["message"]["id"], "1", "{m}");
    assert_eq!(m["message"]["chatId"], "42", "{m}");
    assert_eq!(m["message"]["senderId"], "7", "{m}");
    expect_one_broadcast(&mut bob, "bob", "1", Duration::from_millis(200));
}

// ---------------------------------------------------------------------------------------------
// 9. The drain outlasts a slow call in flight
// ---------------------------------------------------------------------------------------------

#[test]
fn drain_waits_for_a_slow_post_longer_than_shutdown_timeout() {
    let api = world();
    let store = TestStore::new();
    // SHUTDOWN_TIMEOUT (200 ms) is far below the POST's 1.2 s: the drain must wait for the call
    // anyway (up to BACKEND_TIMEOUT), so the sender gets its message before SERVER_SHUTDOWN.
    let mut server = gateway(&api, &store)
        .env("BACKEND_TIMEOUT", "3000")
        .env("BACKEND_RETRIES", "0")
        .env("SHUTDOWN_TIMEOUT", "200")
        .env("DRAIN_WINDOW", "0")
        .spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);
    api.set_route(Route::PostMessage, Mode::Slow(Duration::from_millis(1200)));
    send_with_id(&mut alice, "room", "in flight at SIGTERM", "cm-drain");
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.requests_for(Route::PostMessage).is_empty() {
        assert!(Instant::now() < deadline, "the POST never reached the API");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.terminate();
    let m = alice.expect_type_within("chat:message", Duration::from_secs(5));
    assert_eq!(m["message"]["content"], "in flight at SIGTERM", "{m}");
    let stored_id = api.stored()[0]["id"].clone();
    assert_eq!(m["message"]["id"], stored_id);
    assert_eq!(
        bob.expect_type_any("chat:message")["message"]["id"],
        stored_id
    );
    alice.expect_error("SERVER_SHUTDOWN");
    assert_eq!(alice.expect_close(), Some(1001));
    assert!(
        server.wait_exit(Duration::from_secs(10)).is_some(),
        "server did not exit after the drain"
    );
    assert_eq!(api.stored().len(), 1);
}

#[test]
fn a_403_for_one_action_does_not_drop_a_chat_the_list_still_has() {
    let api = world();
    let store = TestStore::new();
    let server = gateway(&api, &store).spawn();
    let (mut alice, _) = server.connect_ok(ALICE);
    let (mut bob, _) = server.connect_ok(BOB);
    // The API refuses alice's post with 403 (say, the chat is read-only for her) but still
    // lists the chat: the gateway re-fetches the list once and keeps her in the room.
    api.set_route(Route::PostMessage, Mode::Error(403));
    let chats_before = api.requests_for(Route::Chats).len();
    send_with_id(&mut alice, "room", "refused", "cm-403");
    alice.expect_error("NOT_PARTICIPANT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.requests_for(Route::Chats).len() == chats_before {
        assert!(
            Instant::now() < deadline,
            "the chat list was not re-fetched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    api.set_route(Route::PostMessage, Mode::Normal);
    send_with_id(&mut bob, "room", "still there?", "cm-bob");
    let m = bob.expect_type("chat:message");
    let id = m["message"]["id"].as_str().unwrap().to_string();
    expect_one_broadcast(&mut alice, "alice", &id, Duration::from_millis(200));
}
