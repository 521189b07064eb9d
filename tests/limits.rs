//! Limits and abuse: slow consumers (MAX_OUTBOX_BYTES), the per-connection rate limit and the
//! per-address connection cap, against the real binary over loopback.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

struct Pair {
    store: TestStore,
    alice: String,
    bob: String,
}

fn pair() -> Pair {
    let store = TestStore::new();
    let alice = store.add_user("alice", "Alice");
    let bob = store.add_user("bob", "Bob");
    store.add_chat("general", &["alice", "bob"]);
    Pair { store, alice, bob }
}

#[test]
fn a_client_that_stops_reading_is_cut_off_without_slowing_the_sender() {
    let p = pair();
    let server = ServerBuilder::new(&p.store.path)
        .env("WORKERS", "1")
        .env("MAX_OUTBOX_BYTES", "65536")
        .env("RATE_LIMIT", "0")
        .spawn();
    // Bob connects by hand and never reads another byte.
    let (_bob_stream, _) = raw_handshake(server.port, &format!("/?token={}", urlencode(&p.bob)));
    let (mut alice, _) = server.connect_ok(&p.alice);

    // ~12 MB for bob: far more than the kernel's socket buffers plus his 64 KiB queue.
    let content = "x".repeat(8000);
    let started = Instant::now();
    for i in 0..1500 {
        alice.send(
            "chat:message",
            json!({ "chatId": "general", "content": content, "clientMessageId": format!("m{i}") }),
        );
        let echo = alice.expect_type("chat:message");
        assert_eq!(echo["message"]["clientMessageId"], format!("m{i}"));
        if server
            .logs()
            .iter()
            .any(|l| l.contains("Slow consumer closed"))
        {
            break;
        }
    }
    assert!(
        server
            .logs()
            .iter()
            .any(|l| l.contains("Slow consumer closed")),
        "bob was never cut off"
    );
    // The sender was served all along (each message echoed before the next was sent).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "sender slowed: {:?}",
        started.elapsed()
    );
    // And keeps being served afterwards.
    alice.send("ping", json!({}));
    alice.expect_type("pong");
    let (_, metrics) = http_get(server.port, "/metrics");
    assert!(
        metrics.contains(r#"socket_server_slow_consumer_closes_total{worker="0"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"socket_server_server_closes_total{code="4009"} 1"#),
        "{metrics}"
    );
}

#[test]
fn messages_over_the_rate_are_refused_and_abuse_closes_4029() {
    let p = pair();
    let server = ServerBuilder::new(&p.store.path)
        .env("RATE_LIMIT", "2")
        .env("RATE_BURST", "3")
        .spawn();
    let (mut alice, _) = server.connect_ok(&p.alice);
    for _ in 0..3 {
        alice.send("ping", json!({}));
    }
    for _ in 0..3 {
        alice.expect_type("pong");
    }
    alice.send("ping", json!({}));
    let e = alice.expect_error("RATE_LIMITED");
    assert_error_shape(&e);
    // Keep hammering: after a burst's worth of refusals the connection is closed.
    for _ in 0..4 {
        alice.send("ping", json!({}));
    }
    assert_eq!(alice.expect_close(), Some(4029));
    let (_, metrics) = http_get(server.port, "/metrics");
    assert!(
        metrics.contains(r#"socket_server_server_closes_total{code="4029"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"socket_server_errors_total{code="RATE_LIMITED"}"#),
        "{metrics}"
    );
}

/// Asserts that a WebSocket for `token` is refused with HTTP 503 (`what`: the attempt, for the
/// failure message).
fn expect_503(server: &Server, token: &str, what: &str) {
    match try_connect(&server.url_with_token(token), &[]) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        Err(e) => panic!("{what}: expected HTTP 503, got {e:?}"),
        Ok(_) => panic!("{what} was accepted"),
    }
}

#[test]
fn connections_per_address_are_capped() {
    let p = pair();
    let server = ServerBuilder::new(&p.store.path)
        .env("MAX_CONNECTIONS_PER_IP", "2")
        .spawn();
    let (_a, _) = server.connect_ok(&p.alice);
    let (_b, _) = server.connect_ok(&p.bob);
    expect_503(&server, &p.alice, "a third connection from one address");
    drop(_a);
    // The slot is released when a connection ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_connect(&server.url_with_token(&p.alice), &[]) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("slot never released: {e:?}"),
        }
    }
}

#[test]
fn health_probes_are_answered_at_the_connection_caps() {
    let p = pair();
    let server = ServerBuilder::new(&p.store.path)
        .env("MAX_CONNECTIONS", "2")
        .spawn();
    let (_a, _) = server.connect_ok(&p.alice);
    let (_b, _) = server.connect_ok(&p.bob);
    // Full: a WebSocket is refused, but an orchestrator's probes still get their answer.
    expect_503(
        &server,
        &p.alice,
        "a third connection with MAX_CONNECTIONS=2",
    );
    assert_eq!(server.http_get_status("/healthz"), 200);
    assert_eq!(server.http_get_status("/readyz"), 200);
    let (status, metrics) = http_get(server.port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics
            .contains("socket_server_connections_refused_total{reason=\"too many connections\"} 1"),
        "the refusal is counted: {metrics}"
    );
    // Anything else over the cap is still refused.
    assert_eq!(server.http_get_status("/"), 503);
}

#[test]
fn slow_handshakes_and_slow_authentication_are_cut_off() {
    use std::io::{Read, Write};
    let p = pair();
    let server = ServerBuilder::new(&p.store.path)
        .env("AUTH_TIMEOUT", "300")
        .spawn();
    // Slowloris: half a request head, then nothing.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /?token=x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close, got {:?}", &buf[..n]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    // The server still serves everyone else.
    let (mut alice, _) = server.connect_ok(&p.alice);
    alice.send("ping", json!({}));
    alice.expect_type("pong");
}
