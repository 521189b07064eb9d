//! Process-level tests: health endpoints, heartbeat and idle timeout, graceful shutdown, the
//! store surviving a restart, the admin CLI, demo mode, and what the server logs.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn two_users() -> (TestStore, String, String) {
    let store = TestStore::new();
    let alice = store.add_user("alice", "Alice");
    let bob = store.add_user("bob", "Bob");
    store.add_chat("room", &["alice", "bob"]);
    (store, alice, bob)
}

/// The JSON log lines among `logs` whose message is `message`.
fn logged(logs: &[String], message: &str) -> Vec<Value> {
    logs.iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[test]
fn healthz_and_readyz_answer_200() {
    let (store, alice, _) = two_users();
    let server = Server::start(&store.path);
    assert_eq!(server.http_get_status("/healthz"), 200);
    assert_eq!(server.http_get_status("/readyz"), 200);
    // Plain HTTP on the port does not break WebSockets.
    let (_c, connected) = server.connect_ok(&alice);
    assert_eq!(connected["userId"], "alice");
    assert_eq!(server.http_get_status("/healthz"), 200);
}

#[test]
fn server_logs_json_lines_with_listening_port() {
    let (store, _, _) = two_users();
    let server = Server::start(&store.path);
    let logs = server.logs();
    let listening = logged(&logs, "Server listening");
    assert!(!listening.is_empty());
    assert_eq!(
        listening[0]["data"]["port"], server.port,
        "{}",
        listening[0]
    );
    for line in &logs {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "no timestamp: {line}");
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(v["message"].is_string(), "no message: {line}");
    }
}

#[test]
fn io_driver_epoll_runs_every_worker_on_epoll_and_serves_chat() {
    let (store, alice, bob) = two_users();
    let server = ServerBuilder::new(&store.path)
        .env("IO_DRIVER", "epoll")
        .env("RATE_LIMIT", "0")
        .spawn();
    let drivers: Vec<Value> = logged(&server.logs(), "Worker listening")
        .into_iter()
        .map(|v| v["data"]["driver"].clone())
        .collect();
    assert_eq!(drivers, vec![json!("epoll"), json!("epoll")], "two workers");
    let (mut a, _) = server.connect_ok(&alice);
    let (mut b, _) = server.connect_ok(&bob);
    // Enough messages, some large, that both sockets' writes batch and run over several
    // passes; every one arrives, in order, at both members.
    let big = "x".repeat(9000);
    for i in 0..200 {
        let content = if i % 10 == 0 {
            format!("{i}{big}")
        } else {
            format!("{i}")
        };
        a.send_message("room", &content);
    }
    for client in [&mut a, &mut b] {
        for i in 0..200 {
            let m = client.expect_type_any("chat:message");
            let content = m["message"]["content"].as_str().unwrap_or_default();
            let expected = if i % 10 == 0 {
                format!("{i}{big}")
            } else {
                format!("{i}")
            };
            assert!(
                content == expected,
                "message {i}: got {:.40} ({} bytes)",
                content,
                content.len()
            );
        }
    }
}

// --- heartbeat ------------------------------------------------------------------------------

#[test]
fn heartbeat_keeps_readers_alive_and_closes_silent_clients_with_4008() {
    let (store, alice, bob) = two_users();
    let server = ServerBuilder::new(&store.path)
        .env("HEARTBEAT_INTERVAL", "200")
        .env("CONNECTION_TIMEOUT", "600")
        .spawn();

    // A completely silent client (raw socket: it never writes after the upgrade, not even pongs).
    let started = Instant::now();
    let (mut raw, rest) = raw_handshake(server.port, &format!("/?token={}", urlencode(&bob)));
    // Read it on another thread (reading never writes), so frames are timestamped on arrival.
    let reader =
        std::thread::spawn(move || raw_read_frames(&mut raw, rest, Duration::from_secs(5)));

    // A well-behaved client: it keeps reading, so tungstenite answers every ping.
    let (mut good, _) = server.connect_ok(&alice);
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while let Some(f) = good.next_frame_until(deadline) {
        match f {
            Frame::Ping => pings += 1,
            Frame::Text(_) => {}
            other => panic!("the reading client was disturbed: {other:?}"),
        }
    }
    assert!(
        pings >= 3,
        "expected server pings every 200 ms, got {pings} in 1.5 s"
    );
    good.send("ping", json!({}));
    good.expect_type("pong");

    // The silent client was closed with 4008, after about CONNECTION_TIMEOUT.
    let frames = reader.join().expect("raw reader thread");
    let first = frames
        .first()
        .and_then(RawFrame::text)
        .expect("first frame must be `connected`");
    assert_eq!(first["type"], "connected");
    assert!(
        frames.iter().any(|f| f.opcode == 0x9),
        "the silent client got no ping"
    );
    let close = frames
        .last()
        .filter(|f| f.opcode == 0x8)
        .unwrap_or_else(|| {
            panic!(
                "silent client was not closed; opcodes: {:?}",
                frames.iter().map(|f| f.opcode).collect::<Vec<_>>()
            )
        });
    assert_eq!(close.close_code(), Some(4008));
    let after = close.at.duration_since(started);
    assert!(
        after >= Duration::from_millis(450),
        "closed too early: {after:?}"
    );
    assert!(
        after <= Duration::from_millis(3000),
        "closed too late: {after:?}"
    );

    // The reading client is still there.
    good.send("ping", json!({}));
    good.expect_type("pong");
}

// --- graceful shutdown ----------------------------------------------------------------------

#[test]
fn sigterm_sends_server_shutdown_then_1001_and_exits_0() {
    let (store, alice, bob) = two_users();
    let mut server = Server::start(&store.path);
    let (mut a, _) = server.connect_ok(&alice);
    let (mut b, _) = server.connect_ok(&bob);
    let (mut a2, _) = server.connect_ok(&alice);
    for c in [&mut a, &mut b, &mut a2] {
        c.collect(Duration::from_millis(100));
    }

    let t0 = Instant::now();
    server.terminate();
    for (who, c) in [("alice", &mut a), ("bob", &mut b), ("alice#2", &mut a2)] {
        let p = c.expect_type_any("error");
        assert_eq!(p["code"], "SERVER_SHUTDOWN", "{who}: {p}");
        assert_error_shape(&p);
        assert_eq!(c.expect_close(), Some(1001), "{who}");
    }
    let status = server.wait_exit(Duration::from_secs(8)).unwrap_or_else(|| {
        panic!(
            "server did not exit within 8 s of SIGTERM\n{}",
            server.output()
        )
    });
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        server.output()
    );
    assert!(t0.elapsed() < Duration::from_secs(8));
}

#[test]
fn sigterm_with_no_connections_exits_0_quickly() {
    let (store, _, _) = two_users();
    let mut server = Server::start(&store.path);
    let t0 = Instant::now();
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s");
    assert!(status.success(), "{status}\n{}", server.output());
    assert!(t0.elapsed() < Duration::from_secs(5));
}

// --- persistence ----------------------------------------------------------------------------

#[test]
fn store_survives_restart() {
    let (store, alice, bob) = two_users();
    let message_id;
    {
        let mut server = Server::start(&store.path);
        let (mut a, _) = server.connect_ok(&alice);
        a.send(
            "chat:message",
            json!({ "chatId": "room", "content": "persist me" }),
        );
        let m = a.expect_type("chat:message");
        message_id = m["message"]["id"].as_str().unwrap().to_string();
        // Hard kill: a delivered message is already durable.
        server.kill();
    }

    let server = Server::start(&store.path);
    let (mut a, connected) = server.connect_ok(&alice);
    assert_eq!(connected["userId"], "alice");
    assert!(chat_ids(&connected).contains(&"room".to_string()));
    let (mut b, _) = server.connect_ok(&bob);

    b.send(
        "chat:read",
        json!({ "chatId": "room", "messageId": message_id }),
    );
    for c in [&mut a, &mut b] {
        let r = c.expect_type("chat:read");
        assert_eq!(r["messageId"], message_id.as_str());
        assert_eq!(r["userId"], "bob");
        assert_eq!(r["chatId"], "room");
        assert_timestamp(&r["readAt"]);
    }
    b.send(
        "chat:read",
        json!({ "chatId": "room", "messageId": "never-sent" }),
    );
    b.expect_error("VALIDATION_ERROR");

    // New messages after a restart get fresh ids.
    a.send_message("room", "after restart");
    let m = a.expect_type("chat:message");
    assert_ne!(m["message"]["id"], message_id.as_str());
}

// --- admin CLI ------------------------------------------------------------------------------

#[test]
fn cli_adds_users_and_members_while_serving() {
    let (store, alice, _) = two_users();
    let server = Server::start(&store.path);

    // New user and membership added while the server runs.
    let carol = store.add_user("carol", "Carol");
    assert_ne!(carol, alice, "tokens must be distinct");
    store.add_chat("room", &["carol"]); // existing chat: adds a member
    let (mut c, connected) = server.connect_ok(&carol);
    assert_eq!(connected["userId"], "carol");
    assert_eq!(chat_ids(&connected), vec!["room".to_string()]);

    let (mut a, _) = server.connect_ok(&alice);
    a.send_message("room", "welcome carol");
    let m = c.expect_type("chat:message");
    assert_eq!(m["message"]["senderName"], "Alice");
    assert_eq!(m["message"]["content"], "welcome carol");

    // Re-adding existing members is fine (exit 0).
    store.add_chat("room", &["alice", "bob", "carol"]);
}

#[test]
fn demo_mode_seeds_users_and_general_chat() {
    let store = TestStore::new();
    let server = ServerBuilder::new(&store.path).arg("--demo").spawn();
    let (mut a, connected) = server.connect_ok("demo-alice");
    assert_eq!(connected["userId"], "alice");
    assert!(
        chat_ids(&connected).contains(&"general".to_string()),
        "{connected}"
    );
    let (mut b, _) = server.connect_ok("demo-bob");
    let (mut c, _) = server.connect_ok("demo-carol");
    a.send_message("general", "hello demo");
    for x in [&mut a, &mut b, &mut c] {
        let m = x.expect_type("chat:message");
        assert_eq!(m["message"]["content"], "hello demo");
        assert_eq!(m["message"]["senderId"], "alice");
    }
}

// --- logs -----------------------------------------------------------------------------------

#[test]
fn tokens_never_appear_in_logs() {
    let (store, alice, bob) = two_users();
    let mut server = Server::start(&store.path); // LOG_LEVEL=debug
    let bad = "bogus-secret-token-4f9a2c";
    let base = format!("ws://127.0.0.1:{}/", server.port);

    let (mut a, _) = server.connect_ok(&alice);
    let mut b = connect_with(&base, &[("Authorization", &format!("Bearer {bob}"))]);
    b.expect_type("connected");
    let (mut b2, _) = try_connect(
        &base,
        &[("Sec-WebSocket-Protocol", &format!("bearer, {bob}"))],
    )
    .expect("subprotocol handshake");
    b2.expect_type("connected");
    let mut x = server.connect(bad);
    x.expect_error("AUTH_FAILED");
    x.expect_close();
    let mut y = connect_with(&base, &[("Authorization", &format!("Bearer {bad}"))]);
    y.expect_error("AUTH_FAILED");
    a.send_message("room", "log me maybe");
    a.expect_type("chat:message");
    b.expect_type("chat:message");
    a.send_text("not json");
    a.expect_error("INVALID_MESSAGE");
    a.send_message("elsewhere", "nope");
    a.expect_error("NOT_PARTICIPANT");
    // A foreign-origin attempt with a token in the URL.
    let _ = try_connect(
        &server.url_with_token(&alice),
        &[("Origin", "http://evil.example")],
    );
    let _ = server.http_get_status(&format!("/healthz?token={}", urlencode(&alice)));

    server.terminate();
    let _ = server.wait_exit(Duration::from_secs(8));
    let mut lines = server.logs();
    lines.extend(server.stderr_lines());
    assert!(lines.len() > 1, "expected some log lines");
    for token in [alice.as_str(), bob.as_str(), bad] {
        for line in &lines {
            assert!(!line.contains(token), "a token appears in the logs: {line}");
        }
    }
}

/// Sums every sample of `metric` whose label set contains all `labels` (e.g. `type="ping"`).
fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_count_connections_messages_deliveries_and_errors() {
    let (store, alice, bob) = two_users();
    let server = Server::start(&store.path);
    let (mut a, _) = server.connect_ok(&alice);
    let (mut b, _) = server.connect_ok(&bob);
    a.send(
        "chat:message",
        json!({"chatId": "room", "content": "counted"}),
    );
    a.expect_type("chat:message");
    b.expect_type("chat:message");
    a.send("chat:message", json!({"chatId": "nope", "content": "x"}));
    a.expect_error("NOT_PARTICIPANT");

    let (status, body) = http_get(server.port, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric_sum(&body, "socket_server_connections", &[]),
        2.0,
        "{body}"
    );
    assert_eq!(
        metric_sum(
            &body,
            "socket_server_messages_in_total",
            &[r#"type="chat:message""#]
        ),
        2.0,
        "{body}"
    );
    assert_eq!(
        metric_sum(
            &body,
            "socket_server_deliveries_total",
            &[r#"type="chat:message""#]
        ),
        2.0,
        "{body}"
    );
    assert_eq!(
        metric_sum(
            &body,
            "socket_server_errors_total",
            &[r#"code="NOT_PARTICIPANT""#]
        ),
        1.0,
        "{body}"
    );
    assert!(
        metric_sum(
            &body,
            "socket_server_backend_call_seconds_count",
            &[r#"call="create_message""#]
        ) >= 1.0,
        "{body}"
    );
}

#[test]
fn drain_with_traffic_in_flight_loses_nothing_it_accepted() {
    let (store, alice, bob) = two_users();
    let mut server = ServerBuilder::new(&store.path)
        .env("RATE_LIMIT", "0")
        .env("WORKERS", "1")
        .spawn();
    let (mut a, _) = server.connect_ok(&alice);
    let (mut b, _) = server.connect_ok(&bob);
    a.collect(Duration::from_millis(100));
    b.collect(Duration::from_millis(100));

    // Pipeline messages without reading, and signal while they are being processed.
    const N: usize = 300;
    for i in 0..N {
        a.send(
            "chat:message",
            json!({"chatId": "room", "content": format!("m{i}"), "clientMessageId": format!("k{i}")}),
        );
    }
    server.terminate();

    let drain = |c: &mut Client| -> (Vec<String>, Vec<Value>, Option<u16>) {
        let (mut got, mut errors) = (Vec::new(), Vec::new());
        loop {
            match c.next_frame_until(Instant::now() + Duration::from_secs(10)) {
                Some(Frame::Text(v)) if v["type"] == "chat:message" => got.push(
                    v["payload"]["message"]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                ),
                Some(Frame::Text(v)) if v["type"] == "error" => errors.push(v["payload"].clone()),
                Some(Frame::Close(code)) => return (got, errors, code.map(|(c, _)| c)),
                Some(Frame::Gone(_)) | None => return (got, errors, None),
                Some(_) => {}
            }
        }
    };
    let (to_alice, alice_errors, alice_close) = drain(&mut a);
    let (to_bob, _, bob_close) = drain(&mut b);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server exits");
    assert!(status.success(), "{status:?}\n{}", server.output());
    assert_eq!(alice_close, Some(1001));
    assert_eq!(bob_close, Some(1001));
    assert!(
        alice_errors.iter().all(|e| e["code"] == "SERVER_SHUTDOWN"),
        "unexpected errors: {alice_errors:?}"
    );

    // What was delivered is exactly what was persisted, in order, to both users.
    let persisted = socket_server::backend::store::Admin::open(&store.path)
        .unwrap()
        .message_count("room")
        .unwrap() as usize;
    let expected: Vec<String> = (0..to_alice.len()).map(|i| format!("m{i}")).collect();
    assert_eq!(to_alice, expected, "alice's copies are a gap-free prefix");
    assert_eq!(to_bob, to_alice, "bob got the same messages");
    assert_eq!(
        persisted,
        to_alice.len(),
        "persisted {persisted}, delivered {}",
        to_alice.len()
    );
    assert!(persisted > 0, "nothing was processed before the drain");
    eprintln!("drain test: {persisted} of {N} persisted and delivered");
}

#[test]
fn check_config_reads_env_booleans_and_names_the_broken_rule() {
    let store = TestStore::new();
    let check = |env: &[(&str, &str)]| {
        let mut cmd = base_command(&store.path);
        cmd.arg("check-config");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for (value, on) in [
        ("1", true),
        ("yes", true),
        ("true", true),
        ("0", false),
        ("off", false),
    ] {
        let (ok, text) = check(&[("DEMO", value)]);
        assert!(ok, "DEMO={value} must be accepted: {text}");
        assert!(
            text.contains(&format!("demo: {on}")),
            "DEMO={value}: {text}"
        );
    }
    let (ok, text) = check(&[("DEMO", "maybe")]);
    assert!(!ok && text.contains("--demo"), "{text}");
    let (ok, text) = check(&[("IO_DRIVER", "epoll")]);
    assert!(ok && text.contains("io_driver: Epoll"), "{text}");
    let (ok, text) = check(&[]);
    assert!(ok && text.contains("io_driver: IoUring"), "{text}");
    let (ok, text) = check(&[("IO_DRIVER", "kqueue")]);
    assert!(!ok && text.contains("IO_DRIVER"), "{text}");
    let (ok, text) = check(&[("HTTP_API_URL", "http://api:80a")]);
    assert!(!ok && text.contains("HTTP_API_URL"), "{text}");
    let (ok, text) = check(&[("MAX_MESSAGE_SIZE", "33554432")]);
    assert!(!ok && text.contains("MAX_MESSAGE_SIZE"), "{text}");
    // Valid, but a drain could outlast the shipped unit's TimeoutStopSec: said, not refused.
    let (ok, text) = check(&[]);
    assert!(ok && !text.contains("warning"), "{text}");
    let (ok, text) = check(&[
        ("HTTP_API_URL", "http://127.0.0.1:9"),
        ("BACKEND_RETRIES", "5"),
    ]);
    assert!(
        ok && text.contains("warning: a drain can take up to 53.0 s"),
        "{text}"
    );
}

#[test]
fn head_requests_get_the_head_without_a_body() {
    use std::io::{Read, Write};
    let store = TestStore::new();
    let server = Server::start(&store.path);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 15"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\n"),
        "a HEAD response has no body: {text:?}"
    );
}

#[test]
fn transparent_huge_pages_are_off_unless_allowed() {
    let thp = |server: &Server| {
        std::fs::read_to_string(format!("/proc/{}/status", server.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_string()))
    };
    let store = TestStore::new();
    let server = Server::start(&store.path);
    let Some(default) = thp(&server) else {
        eprintln!("kernel without THP_enabled in /proc/<pid>/status: nothing to check");
        return;
    };
    assert_eq!(default, "0", "THP must be off by default");
    let allowed = ServerBuilder::new(&store.path)
        .env("TRANSPARENT_HUGE_PAGES", "1")
        .spawn();
    assert_eq!(thp(&allowed).as_deref(), Some("1"));
}
