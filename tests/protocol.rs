//! Wire-protocol tests against the real binary with the embedded store: every message type, its
//! error paths, the three token carriers, early frames, presence across workers, typing,
//! origin checks and the size limit.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Users alice/bob/carol; chats: general (all three), pair (alice, bob), secret (bob, carol).
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
    store.add_chat("general", &["alice", "bob", "carol"]);
    store.add_chat("pair", &["alice", "bob"]);
    store.add_chat("secret", &["bob", "carol"]);
    World {
        store,
        alice,
        bob,
        carol,
    }
}

fn assert_message(m: &Value, chat: &str, sender: &str, sender_name: &str, content: &str) {
    assert!(
        m["id"].as_str().is_some_and(|s| !s.is_empty()),
        "message without id: {m}"
    );
    assert_eq!(m["chatId"], chat, "{m}");
    assert_eq!(m["senderId"], sender, "{m}");
    assert_eq!(m["senderName"], sender_name, "{m}");
    assert_eq!(m["content"], content, "{m}");
    assert_timestamp(&m["createdAt"]);
}

// --- authentication -------------------------------------------------------------------------

#[test]
fn query_token_connects_and_lists_chats() {
    let w = world();
    let server = Server::start(&w.store.path);

    let (_c, connected) = server.connect_ok(&w.alice);
    assert_eq!(connected["userId"], "alice", "{connected}");
    let mut ids = chat_ids(&connected);
    ids.sort();
    assert_eq!(ids, vec!["general".to_string(), "pair".to_string()]);

    // Any path works, /ws included.
    let mut c = connect_url(&format!(
        "ws://127.0.0.1:{}/ws?token={}",
        server.port,
        urlencode(&w.bob)
    ));
    let connected = c.expect_type("connected");
    assert_eq!(connected["userId"], "bob");
    let mut ids = chat_ids(&connected);
    ids.sort();
    assert_eq!(ids, vec!["general", "pair", "secret"]);
}

#[test]
fn authorization_header_token_connects() {
    let w = world();
    let server = Server::start(&w.store.path);
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let mut c = connect_with(&url, &[("Authorization", &format!("Bearer {}", w.carol))]);
    let connected = c.expect_type("connected");
    assert_eq!(connected["userId"], "carol");
    let mut ids = chat_ids(&connected);
    ids.sort();
    assert_eq!(ids, vec!["general", "secret"]);
}

#[test]
fn subprotocol_token_connects_and_answers_bearer() {
    let w = world();
    let server = Server::start(&w.store.path);
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let (mut c, resp) = try_connect(
        &url,
        &[("Sec-WebSocket-Protocol", &format!("bearer, {}", w.bob))],
    )
    .unwrap_or_else(|e| panic!("subprotocol handshake failed: {e:?}"));
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        proto.as_deref(),
        Some("bearer"),
        "server must answer Sec-WebSocket-Protocol: bearer"
    );
    let connected = c.expect_type("connected");
    assert_eq!(connected["userId"], "bob");
}

#[test]
fn bad_or_missing_token_gets_auth_failed_then_4001() {
    let w = world();
    let server = Server::start(&w.store.path);
    let base = format!("ws://127.0.0.1:{}/", server.port);

    // Unknown token in the query.
    let mut c = server.connect("not-a-real-token");
    let e = c.expect_error("AUTH_FAILED");
    assert!(!e["message"].as_str().unwrap().is_empty());
    assert_eq!(
        c.expect_close(),
        Some(4001),
        "AUTH_FAILED must be followed by close 4001"
    );

    // Unknown token in the Authorization header.
    let mut c = connect_with(&base, &[("Authorization", "Bearer wrong-token")]);
    c.expect_error("AUTH_FAILED");
    assert_eq!(c.expect_close(), Some(4001));

    // Unknown token as a subprotocol.
    let (mut c, _) = try_connect(&base, &[("Sec-WebSocket-Protocol", "bearer, wrong-token")])
        .unwrap_or_else(|e| {
            panic!("subprotocol handshake with bad token must still upgrade: {e:?}")
        });
    c.expect_error("AUTH_FAILED");
    assert_eq!(c.expect_close(), Some(4001));

    // No token at all.
    let mut c = connect_url(&base);
    c.expect_error("AUTH_FAILED");
    assert_eq!(c.expect_close(), Some(4001));

    // A good token still works afterwards.
    let (_c, connected) = server.connect_ok(&w.alice);
    assert_eq!(connected["userId"], "alice");
}

// --- ping, malformed input, validation ---------------------------------------------------------

#[test]
fn ping_gets_pong_with_timestamp() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut c, _) = server.connect_ok(&w.alice);
    c.send("ping", json!({}));
    let pong = c.expect_type("pong");
    assert_timestamp(&pong["timestamp"]);
}

#[test]
fn invalid_messages_are_rejected_and_connection_stays_open() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut c, _) = server.connect_ok(&w.alice);

    for bad in [
        "this is not json",
        "{\"type\":\"chat:message\",",
        "{\"type\":\"no:such:type\",\"payload\":{}}",
        "{\"payload\":{\"chatId\":\"general\"}}",
        "{\"type\":42,\"payload\":{}}",
        // JSON, but not an envelope object: no type, so INVALID_MESSAGE like a missing type.
        "[1,2,3]",
    ] {
        c.send_text(bad);
        let e = c.expect_type("error");
        assert_eq!(e["code"], "INVALID_MESSAGE", "sent {bad:?}, got {e}");
        assert_error_shape(&e);
        assert!(
            !e["message"].as_str().unwrap().is_empty(),
            "empty message for {bad:?}: {e}"
        );
    }

    // Still usable.
    c.send("ping", json!({}));
    c.expect_type("pong");
    c.send_message("general", "still here");
    let m = c.expect_type("chat:message");
    assert_eq!(m["message"]["content"], "still here");
}

#[test]
fn missing_or_empty_fields_are_validation_errors() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut c, _) = server.connect_ok(&w.alice);

    let cases = [
        ("chat:message", json!({ "content": "no chat" })),
        ("chat:message", json!({ "chatId": "general" })),
        (
            "chat:message",
            json!({ "chatId": "general", "content": "" }),
        ),
        ("chat:message", json!({ "chatId": "", "content": "hello" })),
        ("chat:read", json!({ "chatId": "general" })),
        ("chat:read", json!({ "messageId": "m1" })),
        ("chat:read", json!({ "chatId": "general", "messageId": "" })),
        ("chat:typing", json!({ "isTyping": true })),
        ("chat:typing", json!({ "chatId": "general" })),
    ];
    for (ty, payload) in cases {
        c.send(ty, payload.clone());
        let p = c.expect_type("error");
        assert_eq!(p["code"], "VALIDATION_ERROR", "{ty} {payload} -> {p}");
        assert_error_shape(&p);
    }

    // The connection is still fine.
    c.send("ping", json!({}));
    c.expect_type("pong");
}

// --- participation ------------------------------------------------------------------------

#[test]
fn not_participant_for_every_action() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut alice, _) = server.connect_ok(&w.alice);
    let (mut bob, _) = server.connect_ok(&w.bob);

    // A real message in "secret" (bob, carol) so that the read targets an existing id.
    bob.send_message("secret", "for bob and carol");
    let secret_msg = bob.expect_type("chat:message")["message"].clone();

    alice.send_message("secret", "let me in");
    alice.expect_error("NOT_PARTICIPANT");
    alice.send(
        "chat:read",
        json!({ "chatId": "secret", "messageId": secret_msg["id"] }),
    );
    alice.expect_error("NOT_PARTICIPANT");
    alice.send(
        "chat:typing",
        json!({ "chatId": "secret", "isTyping": true }),
    );
    alice.expect_error("NOT_PARTICIPANT");
    alice.send_message("no-such-chat", "hello?");
    alice.expect_error("NOT_PARTICIPANT");

    // Nothing leaked into "secret".
    let frames = bob.collect(Duration::from_millis(400));
    assert!(
        frames.iter().all(|v| v["type"] != "chat:message"
            && v["type"] != "chat:read"
            && v["type"] != "chat:typing"),
        "bob received events from a rejected request: {frames:?}"
    );

    // Alice can still talk where she belongs.
    alice.send_message("pair", "ok");
    alice.expect_type("chat:message");
}

#[test]
fn chat_created_after_connect_is_refetched() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut alice, connected) = server.connect_ok(&w.alice);
    assert!(!chat_ids(&connected).contains(&"late".to_string()));

    // Before it exists: NOT_PARTICIPANT.
    alice.send_message("late", "too early");
    alice.expect_error("NOT_PARTICIPANT");

    // Created (by the admin CLI, while the server runs) after the connection opened.
    w.store.add_chat("late", &["alice", "bob"]);
    // Past CHATS_REFETCH_INTERVAL (100 ms in the test env).
    std::thread::sleep(Duration::from_millis(400));

    alice.send(
        "chat:message",
        json!({ "chatId": "late", "content": "now it works", "clientMessageId": "late-1" }),
    );
    let p = alice.expect_type("chat:message");
    assert_eq!(p["chatId"], "late");
    assert_message(&p["message"], "late", "alice", "Alice", "now it works");
    assert_eq!(p["message"]["clientMessageId"], "late-1");

    // Typing on the refetched chat is accepted too (no error within a moment).
    alice.send("chat:typing", json!({ "chatId": "late", "isTyping": true }));
    alice.send("ping", json!({}));
    let frames_before_pong = {
        let mut v = Vec::new();
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let f = alice
                .next_text(deadline.saturating_duration_since(Instant::now()))
                .expect("pong");
            if f["type"] == "pong" {
                break v;
            }
            v.push(f);
        }
    };
    assert!(
        frames_before_pong.iter().all(|v| v["type"] != "error"),
        "typing on a refetched chat failed: {frames_before_pong:?}"
    );

    // A new connection of bob sees the chat in its list.
    let (_bob, connected) = server.connect_ok(&w.bob);
    assert!(
        chat_ids(&connected).contains(&"late".to_string()),
        "{connected}"
    );
}

// --- chat:message ---------------------------------------------------------------------------

#[test]
fn message_reaches_every_connection_including_sender_devices() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut a1, _) = server.connect_ok(&w.alice);
    let (mut a2, _) = server.connect_ok(&w.alice);
    let (mut b1, _) = server.connect_ok(&w.bob);
    let (mut c1, _) = server.connect_ok(&w.carol);

    a1.send(
        "chat:message",
        json!({ "chatId": "pair", "content": "hi bob", "clientMessageId": "cm-1" }),
    );

    let at_sender = a1.expect_type("chat:message");
    assert_eq!(at_sender["chatId"], "pair");
    assert_message(&at_sender["message"], "pair", "alice", "Alice", "hi bob");
    assert_eq!(
        at_sender["message"]["clientMessageId"], "cm-1",
        "clientMessageId must be echoed"
    );

    for (who, c) in [("alice's 2nd device", &mut a2), ("bob", &mut b1)] {
        let p = c.expect_type("chat:message");
        assert_eq!(p["chatId"], "pair", "{who}: {p}");
        assert_eq!(p["message"]["id"], at_sender["message"]["id"], "{who}: {p}");
        assert_message(&p["message"], "pair", "alice", "Alice", "hi bob");
        // Echoed in the broadcast, not only to the sender (README: a client matches its
        // optimistic copy on any of its devices).
        assert_eq!(p["message"]["clientMessageId"], "cm-1", "{who}: {p}");
    }
    // Carol is not in "pair".
    c1.expect_no_type("chat:message", Duration::from_millis(400));

    // Without clientMessageId, none is invented; carol gets messages of "general".
    b1.send_message("general", "hello all");
    let p = b1.expect_type("chat:message");
    assert_message(&p["message"], "general", "bob", "Bob", "hello all");
    assert!(
        p["message"]
            .get("clientMessageId")
            .is_none_or(Value::is_null),
        "{p}"
    );
    for c in [&mut a1, &mut a2, &mut c1] {
        let q = c.expect_type("chat:message");
        assert_eq!(q["message"]["id"], p["message"]["id"]);
    }

    // Ids are distinct per message; order per sender is kept.
    for i in 0..5 {
        a2.send_message("general", &format!("n{i}"));
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        let q = c1.expect_type("chat:message");
        assert_eq!(
            q["message"]["content"],
            format!("n{i}"),
            "order must be kept"
        );
        ids.push(q["message"]["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "message ids must be unique");
}

// --- chat:read ----------------------------------------------------------------------------------

#[test]
fn read_receipt_is_broadcast_and_unknown_message_is_rejected() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut alice, _) = server.connect_ok(&w.alice);
    let (mut bob, _) = server.connect_ok(&w.bob);

    alice.send_message("pair", "read me");
    let id = alice.expect_type("chat:message")["message"]["id"].clone();
    bob.expect_type("chat:message");

    bob.send("chat:read", json!({ "chatId": "pair", "messageId": id }));
    for c in [&mut alice, &mut bob] {
        let r = c.expect_type("chat:read");
        assert_eq!(r["chatId"], "pair", "{r}");
        assert_eq!(r["messageId"], id, "{r}");
        assert_eq!(r["userId"], "bob", "{r}");
        assert_timestamp(&r["readAt"]);
    }

    bob.send(
        "chat:read",
        json!({ "chatId": "pair", "messageId": "no-such-message" }),
    );
    bob.expect_error("VALIDATION_ERROR");
    alice.expect_no_type("chat:read", Duration::from_millis(300));

    // A message of another chat is not a message of this one.
    bob.send_message("secret", "elsewhere");
    let other = bob.expect_type("chat:message")["message"]["id"].clone();
    bob.send("chat:read", json!({ "chatId": "pair", "messageId": other }));
    bob.expect_error("VALIDATION_ERROR");
}

// --- chat:typing ----------------------------------------------------------------------------

#[test]
fn typing_is_broadcast_to_others_and_expires() {
    let w = world();
    let server = Server::start(&w.store.path); // TYPING_TIMEOUT=300
    let (mut a1, _) = server.connect_ok(&w.alice);
    let (mut a2, _) = server.connect_ok(&w.alice);
    let (mut bob, _) = server.connect_ok(&w.bob);
    let (mut carol, _) = server.connect_ok(&w.carol);

    let sent = Instant::now();
    a1.send("chat:typing", json!({ "chatId": "pair", "isTyping": true }));

    let t = bob.expect_type("chat:typing");
    assert_eq!(
        t,
        json!({ "chatId": "pair", "userId": "alice", "userName": "Alice", "isTyping": true })
    );
    // Alice's other device sees it too: only the sending connection is excluded.
    let t2 = a2.expect_type("chat:typing");
    assert_eq!(t2["isTyping"], true);

    // Expiry after TYPING_TIMEOUT.
    let stop = bob.expect_type_within("chat:typing", Duration::from_secs(3));
    let elapsed = sent.elapsed();
    assert_eq!(
        stop,
        json!({ "chatId": "pair", "userId": "alice", "userName": "Alice", "isTyping": false })
    );
    assert!(
        elapsed >= Duration::from_millis(250),
        "typing expired too early: {elapsed:?}"
    );

    // The sender never receives its own typing:true.
    let own = a1.collect(Duration::from_millis(300));
    assert!(
        !own.iter()
            .any(|v| v["type"] == "chat:typing" && v["payload"]["isTyping"] == true),
        "the sending connection received its own typing event: {own:?}"
    );
    // Carol is not in "pair".
    carol.expect_no_type("chat:typing", Duration::from_millis(100));
}

#[test]
fn typing_explicit_stop_is_forwarded_at_once() {
    let w = world();
    let server = ServerBuilder::new(&w.store.path)
        .env("TYPING_TIMEOUT", "1000")
        .spawn();
    let (mut alice, _) = server.connect_ok(&w.alice);
    let (mut carol, _) = server.connect_ok(&w.carol);
    alice.collect(Duration::from_millis(50));

    alice.send(
        "chat:typing",
        json!({ "chatId": "general", "isTyping": true }),
    );
    let t = carol.expect_type("chat:typing");
    assert_eq!(t["isTyping"], true);
    assert_eq!(t["chatId"], "general");
    let started = Instant::now();
    alice.send(
        "chat:typing",
        json!({ "chatId": "general", "isTyping": false }),
    );
    let t = carol.expect_type("chat:typing");
    assert_eq!(
        t,
        json!({ "chatId": "general", "userId": "alice", "userName": "Alice", "isTyping": false })
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "explicit stop took {took:?}: it waited for the 1 s expiry instead of being forwarded"
    );
    // ...and no second stop from the (cancelled) expiry timer.
    carol.expect_no_type("chat:typing", Duration::from_millis(1200));
}

// --- early frames ---------------------------------------------------------------------------

#[test]
fn frames_sent_before_connected_are_processed_in_order() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut bob, _) = server.connect_ok(&w.bob);

    let mut c = server.connect(&w.alice);
    // Immediately, before reading anything.
    c.send("ping", json!({}));
    c.send(
        "chat:message",
        json!({ "chatId": "pair", "content": "early bird", "clientMessageId": "e1" }),
    );

    let mut order = Vec::new();
    let deadline = Instant::now() + READ_TIMEOUT;
    while order.len() < 3 {
        let v = c
            .next_text(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| panic!("timed out; got so far: {order:?}"));
        if v["type"] == "user:online" {
            continue;
        }
        order.push(v);
    }
    let types: Vec<&str> = order.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["connected", "pong", "chat:message"],
        "frames: {order:?}"
    );
    assert_eq!(order[2]["payload"]["message"]["content"], "early bird");
    assert_eq!(order[2]["payload"]["message"]["clientMessageId"], "e1");

    let m = bob.expect_type("chat:message");
    assert_eq!(m["message"]["content"], "early bird");
}

#[test]
fn frames_pipelined_with_the_upgrade_request_are_processed_in_order() {
    let w = world();
    let server = Server::start(&w.store.path);
    // Upgrade request, a ping and a chat:message in one TCP write.
    let mut early = masked_text_frame(r#"{"type":"ping","payload":{}}"#);
    early.extend(masked_text_frame(
        r#"{"type":"chat:message","payload":{"chatId":"general","content":"pipelined"}}"#,
    ));
    let (stream, buf) = raw_handshake_with(
        server.port,
        &format!("/?token={}", urlencode(&w.carol)),
        &early,
    );
    let mut raw = RawConn { stream, buf };
    let mut texts = Vec::new();
    let deadline = Instant::now() + READ_TIMEOUT;
    while texts.len() < 3 {
        let f = raw
            .next_frame(deadline)
            .unwrap_or_else(|| panic!("timed out; got {texts:?}"));
        assert_ne!(f.opcode, 0x8, "closed: {:?}", f.close_code());
        if let Some(v) = f.text() {
            if v["type"] != "user:online" {
                texts.push(v);
            }
        }
    }
    let types: Vec<&str> = texts
        .iter()
        .map(|v| v["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        ["connected", "pong", "chat:message"],
        "frames: {texts:?}"
    );
    assert_eq!(texts[2]["payload"]["message"]["content"], "pipelined");
}

// --- presence -------------------------------------------------------------------------------

#[test]
fn presence_counts_devices_across_workers() {
    let w = world();
    let server = ServerBuilder::new(&w.store.path)
        .env("WORKERS", "2")
        .spawn();

    // Several bob connections, so that they land on both workers (SO_REUSEPORT spreads them).
    let mut bobs: Vec<Client> = (0..4).map(|_| server.connect_ok(&w.bob).0).collect();
    spread_over_workers(&server, "bob", &w.bob, &mut bobs);

    // Drop bob's own presence noise.
    for b in bobs.iter_mut() {
        b.collect(Duration::from_millis(150));
    }

    // Six alice connections: only the first one is a presence change.
    let mut alices: Vec<Client> = Vec::new();
    for _ in 0..6 {
        alices.push(server.connect_ok(&w.alice).0);
    }
    spread_over_workers(&server, "alice", &w.alice, &mut alices);
    // The first connection waits the full window; events for the others arrived meanwhile.
    let window = |i: usize, first: u64| Duration::from_millis(if i == 0 { first } else { 150 });
    for (i, b) in bobs.iter_mut().enumerate() {
        let frames = b.collect(window(i, 600));
        assert_eq!(
            presence_of(&frames, "alice"),
            vec![true],
            "bob #{i} (sharing two chats with alice) must see alice come online exactly once: {frames:?}"
        );
    }

    // Cross-worker delivery: every connection of both users gets a message of each sender.
    alices[3].send_message("pair", "to every device");
    for (i, c) in alices.iter_mut().chain(bobs.iter_mut()).enumerate() {
        let m = c.expect_type("chat:message");
        assert_eq!(
            m["message"]["content"], "to every device",
            "connection #{i}"
        );
    }
    bobs[1].send_message("general", "back at you");
    for (i, c) in alices.iter_mut().chain(bobs.iter_mut()).enumerate() {
        let m = c.expect_type("chat:message");
        assert_eq!(m["message"]["content"], "back at you", "connection #{i}");
    }

    // Closing five of six: no offline event.
    let last = alices.remove(0);
    for a in alices.drain(..) {
        a.close();
    }
    for (i, b) in bobs.iter_mut().enumerate() {
        let frames = b.collect(window(i, 500));
        assert!(
            presence_of(&frames, "alice").is_empty(),
            "bob #{i}: closing one of several connections must not broadcast presence: {frames:?}"
        );
    }

    // Closing the last one: exactly one offline event per bob connection.
    last.close();
    for (i, b) in bobs.iter_mut().enumerate() {
        let p = b.expect_type_any("user:online");
        assert_eq!(p, json!({ "userId": "alice", "online": false }), "bob #{i}");
        let more = b.collect(window(i, 400));
        assert!(
            presence_of(&more, "alice").is_empty(),
            "bob #{i}: duplicate presence: {more:?}"
        );
    }

    // Coming back is a presence change again.
    let (_again, _) = server.connect_ok(&w.alice);
    for (i, b) in bobs.iter_mut().enumerate() {
        let p = b.expect_type_any("user:online");
        assert_eq!(p, json!({ "userId": "alice", "online": true }), "bob #{i}");
    }
}

#[test]
fn presence_goes_only_to_shared_chats() {
    let w = world();
    let server = Server::start(&w.store.path);
    // A user who shares no chat with carol.
    let dave = w.store.add_user("dave", "Dave");
    w.store.add_chat("dave-alone", &["dave"]);
    let (mut carol, _) = server.connect_ok(&w.carol);
    carol.collect(Duration::from_millis(100));
    let (_d, _) = server.connect_ok(&dave);
    let frames = carol.collect(Duration::from_millis(500));
    assert!(
        presence_of(&frames, "dave").is_empty(),
        "carol shares no chat with dave: {frames:?}"
    );
    let (_b, _) = server.connect_ok(&w.bob);
    let p = carol.expect_type_any("user:online");
    assert_eq!(p, json!({ "userId": "bob", "online": true }));
}

// --- limits and origins ---------------------------------------------------------------------

#[test]
fn oversize_message_closes_with_1009() {
    let w = world();
    let server = ServerBuilder::new(&w.store.path)
        .env("MAX_MESSAGE_SIZE", "1024")
        .spawn();
    let (mut c, _) = server.connect_ok(&w.alice);

    // Under the limit: fine.
    let ok = "x".repeat(800);
    c.send_message("general", &ok);
    let m = c.expect_type("chat:message");
    assert_eq!(m["message"]["content"].as_str().unwrap().len(), 800);

    // Over the limit: closed with 1009.
    let big = "y".repeat(4096);
    c.send_message("general", &big);
    assert_eq!(c.expect_close(), Some(1009));

    // The server is still serving others.
    let (mut b, _) = server.connect_ok(&w.bob);
    b.send("ping", json!({}));
    b.expect_type("pong");
}

#[test]
fn origin_is_checked() {
    let w = world();
    let server = Server::start(&w.store.path); // CORS_ORIGIN = ALLOWED_ORIGIN
    let url = server.url_with_token(&w.alice);

    // A foreign origin: 403 without upgrade.
    match try_connect(&url, &[("Origin", "http://evil.example")]) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        Err(e) => panic!("expected HTTP 403 for a foreign Origin, got error {e:?}"),
        Ok(_) => panic!("a foreign Origin must not be upgraded"),
    }
    // Same host but another port is still foreign.
    let other_port = if server.port == 1 { 2 } else { server.port - 1 };
    match try_connect(
        &url,
        &[("Origin", &format!("http://127.0.0.1:{other_port}"))],
    ) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        Err(e) => panic!("expected HTTP 403, got error {e:?}"),
        Ok(_) => panic!("Origin with another port must not be upgraded"),
    }

    // An allowed origin.
    let mut c = connect_with(&url, &[("Origin", ALLOWED_ORIGIN)]);
    assert_eq!(c.expect_type("connected")["userId"], "alice");

    // Same origin (Origin host:port equals Host).
    let mut c = connect_with(
        &url,
        &[("Origin", &format!("http://127.0.0.1:{}", server.port))],
    );
    assert_eq!(c.expect_type("connected")["userId"], "alice");

    // No Origin at all.
    let mut c = connect_url(&url);
    assert_eq!(c.expect_type("connected")["userId"], "alice");
}

#[test]
fn several_allowed_origins_are_comma_separated() {
    let w = world();
    let server = ServerBuilder::new(&w.store.path)
        .env("CORS_ORIGIN", "http://one.example, http://two.example")
        .spawn();
    let url = server.url_with_token(&w.bob);
    for origin in ["http://one.example", "http://two.example"] {
        let mut c = connect_with(&url, &[("Origin", origin)]);
        assert_eq!(c.expect_type("connected")["userId"], "bob", "{origin}");
    }
    match try_connect(&url, &[("Origin", ALLOWED_ORIGIN)]) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        Err(e) => panic!("expected HTTP 403, got error {e:?}"),
        Ok(_) => panic!("an origin not in CORS_ORIGIN must not be upgraded"),
    }
}

// --- framing: pings, fragments, frames split across reads, unmasked frames -----------------

/// The masking key of the hand-built frames below.
const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn next_non_presence(raw: &mut RawConn, deadline: Instant) -> RawFrame {
    loop {
        let f = raw
            .next_frame(deadline)
            .expect("timed out waiting for a frame");
        match f.text() {
            Some(v) if v["type"] == "user:online" => continue,
            _ => return f,
        }
    }
}

#[test]
fn pings_fragments_and_frames_split_across_reads_are_handled() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut stream, buf) = raw_handshake(server.port, &format!("/?token={}", urlencode(&w.alice)));
    let mut raw = RawConn {
        stream: stream.try_clone().unwrap(),
        buf,
    };
    let deadline = Instant::now() + READ_TIMEOUT;
    let first = next_non_presence(&mut raw, deadline);
    assert_eq!(first.text().unwrap()["type"], "connected");

    // One write: a ping, then a chat:message in three fragments.
    let msg = br#"{"type":"chat:message","payload":{"chatId":"general","content":"fragmented"}}"#;
    let mut bytes = client_frame(true, 0x9, b"hb", MASK);
    bytes.extend(client_frame(false, 0x1, &msg[..20], MASK));
    bytes.extend(client_frame(false, 0x0, &msg[20..50], MASK));
    bytes.extend(client_frame(true, 0x0, &msg[50..], MASK));
    std::io::Write::write_all(&mut stream, &bytes).unwrap();

    let pong = next_non_presence(&mut raw, deadline);
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"hb"[..]));
    let m = next_non_presence(&mut raw, deadline)
        .text()
        .expect("text frame");
    assert_eq!(m["payload"]["message"]["content"], "fragmented");

    // One frame written in two halves with a pause: the server must wait for the rest.
    let frame = masked_text_frame(
        r#"{"type":"chat:message","payload":{"chatId":"general","content":"split"}}"#,
    );
    std::io::Write::write_all(&mut stream, &frame[..7]).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    std::io::Write::write_all(&mut stream, &frame[7..]).unwrap();
    let m = next_non_presence(&mut raw, deadline)
        .text()
        .expect("text frame");
    assert_eq!(m["payload"]["message"]["content"], "split");

    // RFC 6455: a client frame without a mask is a protocol error.
    std::io::Write::write_all(&mut stream, &encode_frame(true, 0x1, b"{}", None)).unwrap();
    let close = next_non_presence(&mut raw, deadline);
    assert_eq!(close.close_code(), Some(1002));
}

#[test]
fn a_user_removed_from_a_chat_stops_receiving_it_once_the_backend_says_so() {
    let w = world();
    let server = Server::start(&w.store.path);
    let (mut alice, _) = server.connect_ok(&w.alice);
    let (mut bob, _) = server.connect_ok(&w.bob);
    // Alice is removed from `pair` behind the gateway's back (another service, an admin).
    let db = rusqlite::Connection::open(&w.store.path).expect("open store");
    db.execute(
        "DELETE FROM participants WHERE chat_id = 'pair' AND user_id = 'alice'",
        [],
    )
    .expect("remove alice");
    bob.send_message("pair", "before alice knows");
    bob.expect_type("chat:message");
    alice.expect_type_any("chat:message");
    // Her next action there is refused by the store: NOT_PARTICIPANT, and she leaves the room.
    alice.send(
        "chat:message",
        json!({"chatId": "pair", "content": "still here?"}),
    );
    alice.expect_error("NOT_PARTICIPANT");
    bob.send_message("pair", "after");
    bob.expect_type("chat:message");
    let seen = alice.collect(Duration::from_millis(300));
    assert!(
        seen.iter().all(|v| v["type"] != "chat:message"),
        "alice still receives a chat she was removed from: {seen:?}"
    );
    // Other chats are untouched.
    bob.send_message("general", "hello all");
    let m = alice.expect_type_any("chat:message");
    assert_eq!(m["message"]["chatId"], "general");
}
