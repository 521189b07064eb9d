//! The stall rule over real sockets: a client that reads nothing is closed (4009) once its
//! socket has accepted nothing for `STALL_TIMEOUT`, and recovers what it missed with
//! `chat:history`; a client that reads slowly through a long backlog is never closed, neither
//! by the stall rule nor by the idle timeout (its pongs sit behind the backlog).
//! The outbox cap is raised in both so that only the stall rule can act.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const BIG: usize = 60_000;

fn world() -> (TestStore, String, String) {
    let store = TestStore::new();
    let alice = store.add_user("alice", "Alice");
    let bob = store.add_user("bob", "Bob");
    store.add_chat("room", &["alice", "bob"]);
    (store, alice, bob)
}

fn server(store: &TestStore, extra: &[(&str, &str)]) -> Server {
    let mut b = ServerBuilder::new(&store.path)
        .env("STALL_TIMEOUT", "1000")
        .env("MAX_OUTBOX_BYTES", (64 << 20).to_string())
        .env("MAX_MESSAGE_SIZE", "100000")
        .env("RATE_LIMIT", "0");
    for (k, v) in extra {
        b = b.env(k, *v);
    }
    b.spawn()
}

fn big(i: usize) -> String {
    format!("{i:04}:{}", "x".repeat(BIG))
}

/// `name{...} value` summed over every series of `name` in a /metrics text.
fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_client_that_reads_nothing_is_closed_by_the_stall_rule_and_recovers_with_history() {
    let (store, alice, bob) = world();
    let server = server(&store, &[]);
    // Bob's socket has a tiny receive buffer and is never read after the handshake.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
    sock.connect(&addr.into()).expect("connect");
    let (mut stuck, _) = raw_handshake_on(
        TcpStream::from(sock),
        server.port,
        &format!("/?token={}", urlencode(&bob)),
        b"",
    );
    let (mut a, _) = server.connect_ok(&alice);
    std::thread::sleep(Duration::from_millis(100));

    // Alice writes big messages (reading her own echoes, so she keeps up) until the server
    // gives up on bob. Bounded: 400 x 60 KB.
    let started = Instant::now();
    let mut sent = 0;
    let mut stalled_after = None;
    while sent < 400 {
        a.send_message("room", &big(sent));
        a.expect_type_any("chat:message");
        sent += 1;
        if sent % 10 == 0 {
            let metrics = http_get(server.port, "/metrics").1;
            if metric_sum(&metrics, "socket_server_stall_closes_total") >= 1.0 {
                stalled_after = Some(started.elapsed());
                break;
            }
        }
    }
    let took = stalled_after.unwrap_or_else(|| {
        panic!("bob was never closed by the stall rule after {sent} messages of 60 KB")
    });
    eprintln!("bob closed by the stall rule after {sent} messages, {took:?}");
    let logs = server.logs().join("\n");
    assert!(
        logs.contains("Slow consumer closed: stalled") && logs.contains("\"userId\":\"bob\""),
        "{logs}"
    );
    let metrics = http_get(server.port, "/metrics").1;
    assert!(
        metrics.contains(r#"socket_server_server_closes_total{code="4009"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("socket_server_queued_bytes{worker="),
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "socket_server_slow_consumer_closes_total"),
        0.0,
        "not the cap"
    );

    // The server let go of the socket: reading it now ends (what was buffered, then EOF or a
    // reset), within a bound.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sink = vec![0u8; 1 << 16];
    loop {
        assert!(
            Instant::now() < deadline,
            "bob's socket was never closed by the server"
        );
        match stuck.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }

    // Bob comes back and pages back through everything he missed.
    let (mut b, _) = server.connect_ok(&bob);
    let mut got: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut ask = json!({ "chatId": "room", "limit": 100 });
        if let Some(id) = &before {
            ask["before"] = Value::from(id.clone());
        }
        b.send("chat:history", ask);
        let page = b.expect_type_any("chat:history");
        let msgs = page["messages"].as_array().expect("messages").clone();
        let mut contents: Vec<String> = msgs
            .iter()
            .map(|m| m["content"].as_str().expect("content").to_string())
            .collect();
        contents.append(&mut got);
        got = contents;
        if page["hasMore"] == false {
            break;
        }
        before = Some(msgs[0]["id"].as_str().expect("id").to_string());
    }
    let want: Vec<String> = (0..sent).map(big).collect();
    assert!(
        got == want,
        "recovered {} of {} messages, in order",
        got.len(),
        want.len()
    );
}

#[test]
fn a_slow_steady_reader_outlives_the_stall_rule_and_the_idle_timeout() {
    let (store, alice, bob) = world();
    // Bob never sends anything: without the "progress is liveness" rule, the idle timeout
    // (1.5 s) would close him long before he has read the backlog.
    let server = server(
        &store,
        &[
            ("HEARTBEAT_INTERVAL", "500"),
            ("CONNECTION_TIMEOUT", "1500"),
        ],
    );
    let (mut b, _) = server.connect_ok(&bob);
    let (mut a, _) = server.connect_ok(&alice);
    const N: usize = 150; // 9 MB
    let reader = std::thread::spawn(move || {
        let mut contents = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while contents.len() < N {
            assert!(
                Instant::now() < deadline,
                "bob read only {} of {N}",
                contents.len()
            );
            match b.next_frame_until(Instant::now() + Duration::from_secs(10)) {
                Some(Frame::Text(v)) if v["type"] == "chat:message" => {
                    contents.push(
                        v["payload"]["message"]["content"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    );
                    // About 2.4 MB/s: the backlog takes several seconds to drain.
                    std::thread::sleep(Duration::from_millis(25));
                }
                Some(Frame::Text(_)) | Some(Frame::Ping) | Some(Frame::Pong) => {}
                other => panic!(
                    "bob's connection ended after {} messages: {other:?}",
                    contents.len()
                ),
            }
        }
        contents
    });
    let started = Instant::now();
    for i in 0..N {
        a.send_message("room", &big(i));
        a.expect_type_any("chat:message");
    }
    let contents = reader.join().expect("reader");
    let took = started.elapsed();
    eprintln!("bob read {N} messages of 60 KB in {took:?}");
    assert!(
        took > Duration::from_millis(1500),
        "the backlog must outlast the idle timeout: {took:?}"
    );
    let want: Vec<String> = (0..N).map(big).collect();
    assert!(contents == want, "every message, in order");
    let metrics = http_get(server.port, "/metrics").1;
    assert_eq!(
        metric_sum(&metrics, "socket_server_stall_closes_total"),
        0.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"socket_server_server_closes_total{code="4008"}"#),
        "{metrics}"
    );
}
