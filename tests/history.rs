//! `chat:history` on the embedded store, over real sockets: filling the gap after a reconnect
//! (the README's recovery recipe), paging both ways, every error (the connection stays open),
//! survival across a restart, and pages cut to fit the outbox.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// alice and bob in `room`; carol elsewhere.
fn world() -> (TestStore, String, String, String) {
    let store = TestStore::new();
    let alice = store.add_user("alice", "Alice");
    let bob = store.add_user("bob", "Bob");
    let carol = store.add_user("carol", "Carol");
    store.add_chat("room", &["alice", "bob"]);
    store.add_chat("other", &["carol"]);
    (store, alice, bob, carol)
}

fn history(c: &mut Client, payload: Value) -> Value {
    c.send("chat:history", payload);
    c.expect_type("chat:history")
}

fn contents(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("page without messages: {page}"))
        .iter()
        .map(|m| m["content"].as_str().expect("content").to_string())
        .collect()
}

/// Sends `n` messages from `c` into `room` (reading each echo); returns their ids.
fn send_all(c: &mut Client, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            c.send_message("room", &format!("{prefix}{i}"));
            let m = c.expect_type("chat:message");
            m["message"]["id"].as_str().expect("id").to_string()
        })
        .collect()
}

/// The README's recipe: `after` the last id seen, until `hasMore` is false. Returns every
/// message's content received.
fn catch_up(c: &mut Client, chat: &str, mut last: String, limit: u32) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let page = history(c, json!({ "chatId": chat, "after": last, "limit": limit }));
        let msgs = page["messages"].as_array().expect("messages").clone();
        for m in &msgs {
            got.push(m["content"].as_str().expect("content").to_string());
            last = m["id"].as_str().expect("id").to_string();
        }
        if page["hasMore"] == false {
            return got;
        }
        assert!(!msgs.is_empty(), "hasMore with an empty page: {page}");
    }
}

#[test]
fn a_reconnecting_client_fills_the_gap_and_pages_both_ways() {
    let (store, alice, bob, _) = world();
    let server = Server::start(&store.path);
    let (mut a, _) = server.connect_ok(&alice);
    let (mut b, _) = server.connect_ok(&bob);
    let seen = send_all(&mut a, "before ", 3);
    for _ in 0..3 {
        b.expect_type("chat:message");
    }
    b.close();
    // While bob is away: seven more.
    send_all(&mut a, "missed ", 7);

    let (mut b, _) = server.connect_ok(&bob);
    let got = catch_up(&mut b, "room", seen[2].clone(), 3);
    let want: Vec<String> = (0..7).map(|i| format!("missed {i}")).collect();
    assert_eq!(got, want, "exactly the gap, in order, nothing twice");

    // Paging back from the latest, with requestId echoed; a page's messages have the
    // chat:message shape.
    let latest = history(
        &mut b,
        json!({ "chatId": "room", "limit": 4, "requestId": "r-1" }),
    );
    assert_eq!(
        contents(&latest),
        vec!["missed 3", "missed 4", "missed 5", "missed 6"]
    );
    assert_eq!(
        (latest["hasMore"].as_bool(), latest["requestId"].as_str()),
        (Some(true), Some("r-1"))
    );
    let m = &latest["messages"][0];
    assert_eq!(
        (
            m["chatId"].as_str(),
            m["senderId"].as_str(),
            m["senderName"].as_str()
        ),
        (Some("room"), Some("alice"), Some("Alice"))
    );
    assert_timestamp(&m["createdAt"]);
    let oldest_id = m["id"].as_str().expect("id").to_string();
    let back = history(
        &mut b,
        json!({ "chatId": "room", "before": oldest_id, "limit": 4 }),
    );
    assert_eq!(
        contents(&back),
        vec!["before 2", "missed 0", "missed 1", "missed 2"]
    );
    assert_eq!(back["hasMore"], true);
    let first_id = back["messages"][0]["id"].as_str().expect("id").to_string();
    let rest = history(&mut b, json!({ "chatId": "room", "before": first_id }));
    assert_eq!(contents(&rest), vec!["before 0", "before 1"]);
    assert_eq!(rest["hasMore"], false);
    assert!(
        rest.get("requestId").is_none(),
        "no requestId asked, none echoed: {rest}"
    );
    // Only the asking connection gets the page.
    a.expect_no_type("chat:history", Duration::from_millis(200));
}

#[test]
fn every_bad_request_is_an_error_and_the_connection_stays_open() {
    let (store, alice, _, carol) = world();
    let server = Server::start(&store.path);
    let (mut a, _) = server.connect_ok(&alice);
    send_all(&mut a, "m", 2);
    let (mut c, _) = server.connect_ok(&carol);
    let other_id = {
        c.send("chat:message", json!({ "chatId": "other", "content": "x" }));
        c.expect_type("chat:message")["message"]["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    for (payload, code) in [
        (json!({ "chatId": "room", "limit": 0 }), "VALIDATION_ERROR"),
        (
            json!({ "chatId": "room", "limit": 101 }),
            "VALIDATION_ERROR",
        ),
        (
            json!({ "chatId": "room", "limit": "10" }),
            "VALIDATION_ERROR",
        ),
        (json!({ "chatId": "room", "after": 12 }), "VALIDATION_ERROR"),
        (
            json!({ "chatId": "room", "after": "a", "before": "b" }),
            "VALIDATION_ERROR",
        ),
        (
            json!({ "chatId": "room", "after": "no-such-message" }),
            "VALIDATION_ERROR",
        ),
        // A message of another chat is not a message of this one.
        (
            json!({ "chatId": "room", "before": other_id }),
            "VALIDATION_ERROR",
        ),
        (json!({ "chatId": "other" }), "NOT_PARTICIPANT"),
        (json!({ "chatId": "nowhere" }), "NOT_PARTICIPANT"),
    ] {
        a.send("chat:history", payload.clone());
        let e = a.expect_error(code);
        assert!(
            !e["message"].as_str().unwrap_or("").is_empty(),
            "{payload}: {e}"
        );
    }
    a.send("ping", json!({}));
    a.expect_type("pong");
    let page = history(&mut a, json!({ "chatId": "room" }));
    assert_eq!(contents(&page), vec!["m0", "m1"]);
}

#[test]
fn history_survives_a_restart() {
    let (store, alice, bob, _) = world();
    let mut server = Server::start(&store.path);
    let (mut a, _) = server.connect_ok(&alice);
    send_all(&mut a, "kept ", 3);
    drop(a);
    server.terminate();
    assert!(
        server.wait_exit(Duration::from_secs(15)).is_some(),
        "server did not stop"
    );
    let server = Server::start(&store.path);
    let (mut b, _) = server.connect_ok(&bob);
    let page = history(&mut b, json!({ "chatId": "room" }));
    assert_eq!(contents(&page), vec!["kept 0", "kept 1", "kept 2"]);
    assert_eq!(page["hasMore"], false);
}

#[test]
fn a_page_too_large_for_the_outbox_is_cut_and_the_recipe_still_gets_everything() {
    let (store, alice, bob, _) = world();
    // Outbox 3,024 bytes: a page may use half, so at most one 900-byte message per page.
    let server = ServerBuilder::new(&store.path)
        .env("MAX_MESSAGE_SIZE", "1000")
        .env("MAX_OUTBOX_BYTES", "3024")
        .spawn();
    let (mut a, _) = server.connect_ok(&alice);
    let (mut b, _) = server.connect_ok(&bob);
    let first = {
        a.send_message("room", "start");
        a.expect_type("chat:message")["message"]["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    b.expect_type("chat:message");
    let big: Vec<String> = (0..4).map(|i| format!("{i}{}", "x".repeat(900))).collect();
    for text in &big {
        a.send_message("room", text);
        a.expect_type("chat:message");
        b.expect_type("chat:message");
    }
    let page = history(
        &mut b,
        json!({ "chatId": "room", "after": first, "limit": 10 }),
    );
    assert_eq!(
        contents(&page),
        vec![big[0].clone()],
        "cut to what fits, oldest kept"
    );
    assert_eq!(page["hasMore"], true);
    assert_eq!(catch_up(&mut b, "room", first, 10), big);
    // Backwards, the newest are kept.
    let latest = history(&mut b, json!({ "chatId": "room", "limit": 10 }));
    assert_eq!(contents(&latest), vec![big[3].clone()]);
    assert_eq!(latest["hasMore"], true);
    b.send("ping", json!({}));
    b.expect_type("pong");
}
