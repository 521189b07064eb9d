//! Several gateway nodes over one real Redis (Debian's `redis-server`, started here on a free
//! loopback port): chat events cross nodes, once, in order.
//!
//! The nodes run the benchmark fixture (`BENCH_FIXTURE=10:1`: tokens `t0`..`t9`, all in chat
//! `c0`), which multi-node mode accepts; the embedded store does not (it is per node). Typing
//! expires after 600 ms on them.

mod support;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// A `redis-server` of this test's own, gone when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Redis::on(port)
    }

    fn on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's package redis-server; .ci/run installs it)");
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// Kills it (SIGKILL: no goodbye to its clients) and waits until it is gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A command through `redis-cli`; its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `n` nodes are subscribed to chat `chat`'s channel.
    fn wait_subscribers(&self, chat: &str, n: usize) {
        let channel = format!("ss:chat:{chat}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.cli(&["PUBSUB", "NUMSUB", &channel]);
            let count = out
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<usize>().ok());
            if count == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{channel}: {count:?} subscribers, not {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many times Redis ran `command` (from `INFO commandstats`).
    fn calls(&self, command: &str) -> u64 {
        let key = format!("cmdstat_{command}:calls=");
        self.cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay between one node and Redis that can cut that node off (its connections
/// closed, new ones refused) while Redis and the other nodes stay up, and let it back.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn to(redis: &Redis) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a relay");
        let port = listener.local_addr().expect("relay address").port();
        let relay = Relay {
            port,
            open: Arc::new(AtomicBool::new(true)),
            conns: Arc::default(),
        };
        let (open, conns, target) = (relay.open.clone(), relay.conns.clone(), redis.port);
        // Lives as long as the test binary: it only ever waits in accept.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !open.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
                    conns.lock().expect("relay list").extend([c3, s3]);
                }
                forward(client, s2);
                forward(server, c2);
            }
        });
        relay
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Cuts the node off: its connections close, new ones are refused.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().expect("relay list").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Lets the node connect again.
    fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` into `to` on a thread of its own until either side ends.
fn forward(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}

fn node(store: &TestStore, redis: &Redis, name: &str) -> Server {
    node_with_lease(store, redis, name, None)
}

/// A node with `PRESENCE_LEASE` set to `lease_ms` (the default 15 s when `None`).
fn node_with_lease(store: &TestStore, redis: &Redis, name: &str, lease_ms: Option<&str>) -> Server {
    node_at(store, &redis.url(), name, lease_ms)
}

/// The server API key of every node here.
const KEY: &str = "cluster-api-key-0123456789";

/// A node on the Redis at `url`, with `PRESENCE_LEASE` set to `lease_ms` (the default 15 s
/// when `None`).
fn node_at(store: &TestStore, url: &str, name: &str, lease_ms: Option<&str>) -> Server {
    let b = ServerBuilder::new(&store.path)
        .arg("--bench-fixture")
        .arg("10:1")
        .env("REDIS_URL", url)
        .env("NODE_ID", name)
        .env("API_KEY", KEY)
        .env("TYPING_TIMEOUT", "600");
    match lease_ms {
        Some(ms) => b.env("PRESENCE_LEASE", ms),
        None => b,
    }
    .spawn()
}

#[test]
fn a_message_and_a_receipt_cross_nodes_once_and_typing_skips_only_the_typist() {
    let redis = Redis::start();
    let store = TestStore::new();
    let (a, b) = (node(&store, &redis, "a"), node(&store, &redis, "b"));
    let mut alice = a.connect("t0");
    alice.expect_type("connected");
    let mut bob = b.connect("t1");
    bob.expect_type("connected");
    redis.wait_subscribers("c0", 2);
    let published_before = redis.calls("publish");

    alice.send(
        "chat:message",
        json!({"chatId": "c0", "content": "hello across", "clientMessageId": "x1"}),
    );
    let got = bob.expect_type("chat:message");
    assert_eq!(got["message"]["content"], "hello across");
    assert_eq!(got["message"]["clientMessageId"], "x1");
    let echo = alice.expect_type("chat:message");
    assert_eq!(echo["message"]["content"], "hello across");
    // Not twice: the sender's node must not deliver its own event again from Redis.
    alice.expect_no_type("chat:message", Duration::from_millis(300));
    bob.expect_no_type("chat:message", Duration::from_millis(100));
    // One PUBLISH for the event: not one per recipient or per node.
    assert_eq!(redis.calls("publish") - published_before, 1);

    let id = got["message"]["id"].as_str().expect("an id").to_string();
    bob.send("chat:read", json!({"chatId": "c0", "messageId": id}));
    let receipt = alice.expect_type("chat:read");
    assert_eq!(receipt["userId"], "u1");
    assert_eq!(receipt["messageId"], id.as_str());

    bob.send("chat:typing", json!({"chatId": "c0", "isTyping": true}));
    let typing = alice.expect_type("chat:typing");
    assert_eq!(
        (&typing["userId"], &typing["isTyping"]),
        (&json!("u1"), &json!(true))
    );
    // The typist's own node excludes it, and no other node delivers it back.
    bob.expect_no_type("chat:typing", Duration::from_millis(300));
    // Its expiry (TYPING_TIMEOUT, 600 ms on these nodes) crosses too, once.
    let expired = alice.expect_type("chat:typing");
    assert_eq!(
        (&expired["userId"], &expired["isTyping"]),
        (&json!("u1"), &json!(false))
    );
    alice.expect_no_type("chat:typing", Duration::from_millis(900));
    bob.expect_no_type("chat:typing", Duration::from_millis(100));
}

#[test]
fn three_hundred_pipelined_messages_arrive_in_order_on_the_other_node() {
    let redis = Redis::start();
    let store = TestStore::new();
    let (a, b) = (node(&store, &redis, "a"), node(&store, &redis, "b"));
    let mut sender = a.connect("t2");
    sender.expect_type("connected");
    let mut reader = b.connect("t3");
    reader.expect_type("connected");
    redis.wait_subscribers("c0", 2);
    for i in 0..300 {
        sender.send_message("c0", &format!("m{i}"));
    }
    for i in 0..300 {
        let m = reader.expect_type("chat:message");
        assert_eq!(m["message"]["content"], format!("m{i}"));
    }
}

#[test]
fn the_embedded_store_refuses_multi_node_mode_naming_the_way_out() {
    let store = TestStore::new();
    let out = Command::new(env!("CARGO_BIN_EXE_socket-server"))
        .args(["check-config"])
        .env("REDIS_URL", "redis://127.0.0.1:1/")
        .env("STORE_PATH", &store.path)
        .env_remove("HTTP_API_URL")
        .env_remove("BENCH_FIXTURE")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REDIS_URL") && text.contains("HTTP_API_URL"),
        "{text}"
    );
}

/// Waits (bounded) until `server`'s `/readyz` answers `status`.
fn wait_ready(server: &Server, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = server.http_get_status("/readyz");
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {got}, not {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_redis_outage_keeps_local_delivery_answers_not_ready_and_asks_clients_to_resync() {
    let mut redis = Redis::start();
    let store = TestStore::new();
    let (a, b) = (node(&store, &redis, "a"), node(&store, &redis, "b"));
    let mut alice = a.connect("t0");
    alice.expect_type("connected");
    let mut carol = a.connect("t4");
    carol.expect_type("connected");
    let mut bob = b.connect("t1");
    bob.expect_type("connected");
    redis.wait_subscribers("c0", 2);
    wait_ready(&a, 200);

    redis.kill();
    wait_ready(&a, 503);
    wait_ready(&b, 503);
    // Delivery on one node does not need Redis.
    alice.send_message("c0", "during the outage");
    let m = carol.expect_type("chat:message");
    assert_eq!(m["message"]["content"], "during the outage");
    alice.expect_type("chat:message");

    // Long enough for reconnect attempts to fail first: they must not forget the loss.
    std::thread::sleep(Duration::from_millis(600));
    let port = redis.port;
    drop(redis);
    let redis = Redis::on(port);
    // Every member of a chat the node holds is told it may have missed events.
    for client in [&mut alice, &mut carol, &mut bob] {
        let r = client.expect_type_within("chat:resync", Duration::from_secs(15));
        assert_eq!(r["chatIds"], json!(["c0"]));
    }
    wait_ready(&a, 200);
    wait_ready(&b, 200);
    redis.wait_subscribers("c0", 2);
    alice.send_message("c0", "after the outage");
    // What node a queued while Redis was down is either dropped or (when Redis came back
    // before the publisher gave up on it) delivered late: never twice, never after what
    // was sent later.
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("after the outage") {
        let m = bob.expect_type("chat:message");
        got.push(
            m["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(
        got == ["after the outage"] || got == ["during the outage", "after the outage"],
        "{got:?}"
    );
}

/// The `online` values of the `user:online` frames about `user` among `frames`.
fn online(frames: &[serde_json::Value], user: &str) -> Vec<bool> {
    frames
        .iter()
        .filter(|v| v["type"] == "user:online" && v["payload"]["userId"] == user)
        .filter_map(|v| v["payload"]["online"].as_bool())
        .collect()
}

/// Collects `client`'s frames until `user`'s presence was announced `want` times (or
/// `within` passed), then a little longer to catch a duplicate; the announcements seen.
fn presence_seen(client: &mut Client, user: &str, want: usize, within: Duration) -> Vec<bool> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while seen.len() < want && Instant::now() < deadline {
        seen.extend(online(&client.collect(Duration::from_millis(100)), user));
    }
    seen.extend(online(&client.collect(Duration::from_millis(400)), user));
    seen
}

#[test]
fn a_user_on_two_nodes_is_announced_online_once_and_offline_once() {
    let redis = Redis::start();
    let store = TestStore::new();
    let (a, b) = (node(&store, &redis, "a"), node(&store, &redis, "b"));
    let mut watcher = b.connect("t1");
    watcher.expect_type("connected");
    redis.wait_subscribers("c0", 1);
    let mut phone = a.connect("t0");
    phone.expect_type("connected");
    let mut laptop = b.connect("t0");
    laptop.expect_type("connected");
    let timeout = Duration::from_secs(5);
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![true]);
    phone.close();
    assert_eq!(
        presence_seen(&mut watcher, "u0", 0, timeout),
        Vec::<bool>::new(),
        "still connected on the other node"
    );
    laptop.close();
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![false]);
}

#[test]
fn a_killed_node_s_last_connections_go_offline_once_within_the_lease() {
    let redis = Redis::start();
    let store = TestStore::new();
    let lease = |name| node_with_lease(&store, &redis, name, Some("900"));
    let (mut a, b, c) = (lease("a"), lease("b"), lease("c"));
    let mut on_b = b.connect("t1");
    on_b.expect_type("connected");
    let mut on_c = c.connect("t2");
    on_c.expect_type("connected");
    let mut doomed = a.connect("t0");
    doomed.expect_type("connected");
    let timeout = Duration::from_secs(5);
    assert_eq!(presence_seen(&mut on_b, "u0", 1, timeout), vec![true]);
    assert_eq!(presence_seen(&mut on_c, "u0", 1, timeout), vec![true]);
    let killed = Instant::now();
    a.kill();
    // Announced by whichever survivor reaps node a first, and only once.
    assert_eq!(presence_seen(&mut on_b, "u0", 1, timeout), vec![false]);
    assert_eq!(presence_seen(&mut on_c, "u0", 1, timeout), vec![false]);
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "offline within the lease and a beat"
    );
}

#[test]
fn a_user_who_moves_to_another_node_before_the_lease_lapses_does_not_flap() {
    let redis = Redis::start();
    let store = TestStore::new();
    let lease = |name| node_with_lease(&store, &redis, name, Some("900"));
    let (mut a, b) = (lease("a"), lease("b"));
    let mut watcher = b.connect("t1");
    watcher.expect_type("connected");
    let mut mover = a.connect("t0");
    mover.expect_type("connected");
    let timeout = Duration::from_secs(5);
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![true]);
    a.kill();
    // Back on a surviving node well within the lease: still the same online user.
    let mut moved = b.connect("t0");
    moved.expect_type("connected");
    let seen = online(&watcher.collect(Duration::from_secs(3)), "u0");
    assert!(seen.is_empty(), "flapped: {seen:?}");
    moved.close();
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![false]);
}

#[test]
fn a_stopping_node_gives_up_its_lease_so_its_users_go_offline_before_it_lapses() {
    let redis = Redis::start();
    let store = TestStore::new();
    let lease = |name| node_with_lease(&store, &redis, name, Some("9000"));
    let (a, b) = (lease("a"), lease("b"));
    let mut watcher = b.connect("t1");
    watcher.expect_type("connected");
    let mut leaving = a.connect("t0");
    leaving.expect_type("connected");
    let timeout = Duration::from_secs(5);
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![true]);
    let stopped = Instant::now();
    a.terminate();
    // The survivor looks every 3 s (a third of the lease). Without the resignation the lease
    // would lapse 6 to 9 s after the stop.
    assert_eq!(
        presence_seen(&mut watcher, "u0", 1, Duration::from_millis(4500)),
        vec![false]
    );
    assert!(stopped.elapsed() < Duration::from_millis(5000));
    let text = http_get(b.port, "/metrics").1;
    assert!(text.contains("socket_server_broker_connected 1"), "{text}");
    let received = text
        .lines()
        .find_map(|l| l.strip_prefix("socket_server_broker_received_total "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    // Node a's announcement of u0 online; the offline one is node b's own (it reaped a).
    assert!(received >= 1.0, "node a's record: {received}");
    let lagged = text
        .lines()
        .find_map(|l| l.strip_prefix("socket_server_broker_lag_seconds_count "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert_eq!(lagged, received, "every received record's lag is measured");
    assert!(text.contains("socket_server_broker_queued 0"), "{text}");
}

/// A server API request to `server`.
fn api(server: &Server, method: &str, path: &str, body: Option<serde_json::Value>) -> HttpAnswer {
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let bytes = body.map(|b| b.to_string().into_bytes());
    http_request(server.port, method, path, &auth, bytes.as_deref())
}

#[test]
fn the_server_api_on_any_node_acts_on_every_node_once() {
    let redis = Redis::start();
    let store = TestStore::new();
    let (a, b, c) = (
        node(&store, &redis, "a"),
        node(&store, &redis, "b"),
        node(&store, &redis, "c"),
    );
    let mut alice = a.connect("t0");
    let mut bob = b.connect("t1");
    let mut bob2 = c.connect("t1");
    let mut carol = c.connect("t2");
    for client in [&mut alice, &mut bob, &mut bob2, &mut carol] {
        client.expect_type("connected");
    }
    redis.wait_subscribers("c0", 3);

    // Asked of node a, presence counts every node's connections.
    let p = api(&a, "GET", "/api/chats/c0/presence", None);
    assert_eq!(
        p.json(),
        json!({ "chatId": "c0", "users": [
            { "userId": "u0", "connections": 1 },
            { "userId": "u1", "connections": 2 },
            { "userId": "u2", "connections": 1 },
        ]}),
        "{p:?}"
    );

    // A message published through node b reaches every member on every node, once.
    let message = json!({ "message": {
        "id": 7, "chatId": "c0", "senderId": "bot", "senderName": "Bot",
        "content": "from the backend", "createdAt": "2024-05-01T10:00:00.000Z"
    }});
    let m = api(&b, "POST", "/api/chats/c0/messages", Some(message));
    assert_eq!(
        m.json(),
        json!({ "type": "message", "messageId": "7", "delivered": 4 }),
        "{m:?}"
    );
    for client in [&mut alice, &mut bob, &mut bob2, &mut carol] {
        let got = client.expect_type("chat:message");
        assert_eq!(got["message"]["content"], "from the backend");
    }
    for client in [&mut alice, &mut bob, &mut bob2, &mut carol] {
        client.expect_no_type("chat:message", Duration::from_millis(100));
    }

    // Joined through node a, both of bob's devices (nodes b and c) get the new chat, and
    // their nodes now carry its events.
    let j = api(
        &a,
        "POST",
        "/api/chats/x1/members",
        Some(json!({ "userId": "u1" })),
    );
    assert_eq!(
        j.json(),
        json!({ "type": "join", "connections": 2 }),
        "{j:?}"
    );
    for client in [&mut bob, &mut bob2] {
        assert_eq!(
            client.expect_type("chat:new"),
            json!({ "chat": { "id": "x1" } })
        );
    }
    redis.wait_subscribers("x1", 2);
    bob.send("chat:typing", json!({ "chatId": "x1", "isTyping": true }));
    let typing = bob2.expect_type("chat:typing");
    assert_eq!(
        (&typing["chatId"], &typing["userId"]),
        (&json!("x1"), &json!("u1"))
    );
    carol.expect_no_type("chat:typing", Duration::from_millis(200));

    // Disconnected through node c, alice's connection on node a closes with the code given.
    let d = api(
        &c,
        "POST",
        "/api/users/u0/disconnect",
        Some(json!({ "code": 4403, "reason": "banned" })),
    );
    assert_eq!(
        d.json(),
        json!({ "type": "disconnect", "connections": 1 }),
        "{d:?}"
    );
    assert_eq!(alice.expect_close(), Some(4403));
}

#[test]
fn the_server_api_refuses_to_act_on_one_node_alone_and_names_a_node_that_does_not_answer() {
    let mut redis = Redis::start();
    let store = TestStore::new();
    let (a, b) = (node(&store, &redis, "a"), node(&store, &redis, "b"));
    let mut bob = b.connect("t1");
    bob.expect_type("connected");
    redis.wait_subscribers("c0", 1);
    let presence = "/api/chats/c0/presence";
    assert_eq!(
        api(&a, "GET", presence, None).json()["users"][0]["userId"],
        "u1"
    );

    // A node that got the request but does not answer (stopped): the asker says so within
    // its bound, and answers again once the node is back.
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &b.pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    signal("-STOP");
    let started = Instant::now();
    let late = api(&a, "GET", presence, None);
    signal("-CONT");
    assert_eq!(late.status, 504, "{late:?}");
    assert_eq!(late.json()["error"]["code"], "NODE_TIMEOUT", "{late:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let again = api(&a, "GET", presence, None);
    assert_eq!(again.json()["users"][0]["connections"], 1, "{again:?}");

    // Redis down: refused (503), not applied to this node's connections only.
    redis.kill();
    wait_ready(&a, 503);
    let refused = api(&a, "POST", "/api/users/u1/disconnect", None);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json()["error"]["code"], "BROKER_UNAVAILABLE");
    bob.expect_no_type("chat:message", Duration::from_millis(200));
    let port = redis.port;
    drop(redis);
    let _redis = Redis::on(port);
    wait_ready(&a, 200);
    wait_ready(&b, 200);
    let d = api(&a, "POST", "/api/users/u1/disconnect", None);
    assert_eq!(d.json()["connections"], 1, "{d:?}");
    assert_eq!(bob.expect_close(), Some(4001));
}

#[test]
fn presence_changes_made_while_a_node_was_cut_off_are_announced_once_it_is_back() {
    let redis = Redis::start();
    let relay = Relay::to(&redis);
    let store = TestStore::new();
    let a = node_at(&store, &relay.url(), "a", None);
    let b = node(&store, &redis, "b");
    let mut watcher = b.connect("t1");
    watcher.expect_type("connected");
    let mut leaving = a.connect("t0");
    leaving.expect_type("connected");
    let timeout = Duration::from_secs(10);
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![true]);
    wait_ready(&a, 200);

    relay.cut();
    wait_ready(&a, 503);
    // While node a cannot tell Redis: one user leaves, another comes.
    leaving.close();
    let mut coming = a.connect("t2");
    coming.expect_type("connected");
    std::thread::sleep(Duration::from_millis(300));

    relay.mend();
    wait_ready(&a, 200);
    // Once node a is back, each change is announced once: no ghost, no missed arrival.
    let deadline = Instant::now() + timeout;
    let mut frames = Vec::new();
    while (online(&frames, "u0").is_empty() || online(&frames, "u2").is_empty())
        && Instant::now() < deadline
    {
        frames.extend(watcher.collect(Duration::from_millis(100)));
    }
    frames.extend(watcher.collect(Duration::from_millis(400)));
    assert_eq!(online(&frames, "u0"), vec![false], "{frames:?}");
    assert_eq!(online(&frames, "u2"), vec![true], "{frames:?}");
    let p = api(&b, "GET", "/api/chats/c0/presence", None);
    assert_eq!(
        p.json()["users"],
        json!([
            { "userId": "u1", "connections": 1 },
            { "userId": "u2", "connections": 1 },
        ]),
        "{p:?}"
    );
}

#[test]
fn a_node_taken_for_dead_while_cut_off_announces_its_users_again_when_back() {
    let redis = Redis::start();
    let relay = Relay::to(&redis);
    let store = TestStore::new();
    let a = node_at(&store, &relay.url(), "a", Some("600"));
    let b = node_with_lease(&store, &redis, "b", Some("600"));
    let mut watcher = b.connect("t1");
    watcher.expect_type("connected");
    let mut stays = a.connect("t0");
    stays.expect_type("connected");
    let timeout = Duration::from_secs(10);
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![true]);

    relay.cut();
    // Node b cannot tell a cut-off node from a dead one: after the lease, u0 goes offline.
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![false]);
    relay.mend();
    // Back, node a still holds u0's connection: u0 is online again, once.
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![true]);
    stays.close();
    assert_eq!(presence_seen(&mut watcher, "u0", 1, timeout), vec![false]);
}
