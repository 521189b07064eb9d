//! End-to-end checks of the load generator against a tiny in-process broadcast server on
//! 127.0.0.1:0 (the protocol's happy path: upgrade, `connected`, presence, chat broadcast to
//! everyone including the sender, WebSocket pings every 20 ms that must be answered).
//!
//! They check that the numbers can be trusted: every message is counted once per client,
//! nothing is lost, latency samples match the schedule, pings are answered.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use loadtest::common::Common;
use loadtest::frames::{encode_unmasked, find, RecvBuf, Role, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use loadtest::scenarios::{chat, latency, storm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

struct TestServer {
    port: u16,
    pongs: Arc<AtomicU64>,
    chat_in: Arc<AtomicU64>,
}

fn frame(p: &[u8]) -> Arc<Vec<u8>> {
    let mut v = Vec::new();
    encode_unmasked(&mut v, OP_TEXT, p);
    Arc::new(v)
}

async fn handle(
    stream: TcpStream,
    room: broadcast::Sender<Arc<Vec<u8>>>,
    next_id: Rc<Cell<u64>>,
    pongs: Arc<AtomicU64>,
    chat_in: Arc<AtomicU64>,
) -> Option<()> {
    stream.set_nodelay(true).ok()?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head = Vec::new();
    let end = loop {
        let mut b = [0u8; 1024];
        let n = rd.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&b[..n]);
        if let Some(i) = find(&head, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let req = String::from_utf8_lossy(&head[..end]).into_owned();
    let token = req
        .split("token=")
        .nth(1)?
        .split([' ', '&'])
        .next()?
        .to_string();
    let Some(user) = token
        .strip_prefix('t')
        .and_then(|r| r.split('.').next())
        .and_then(|d| d.parse::<u64>().ok())
    else {
        wr.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            .await
            .ok()?;
        return None;
    };
    let mut rx = room.subscribe();
    let mut first = Vec::new();
    first.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: test\r\n\r\n",
    );
    first.extend_from_slice(&frame(
        format!(r#"{{"type":"connected","payload":{{"userId":"u{user}","chatIds":["c0"]}}}}"#)
            .as_bytes(),
    ));
    wr.write_all(&first).await.ok()?;
    let _ = room.send(frame(
        format!(r#"{{"type":"user:online","payload":{{"userId":"u{user}","online":true}}}}"#)
            .as_bytes(),
    ));
    tokio::task::spawn_local(async move {
        let mut ping = tokio::time::interval(Duration::from_millis(20));
        let mut out = Vec::new();
        loop {
            out.clear();
            tokio::select! {
                f = rx.recv() => match f {
                    Ok(f) => {
                        out.extend_from_slice(&f);
                        while let Ok(f) = rx.try_recv() {
                            out.extend_from_slice(&f);
                        }
                    }
                    Err(_) => return,
                },
                _ = ping.tick() => encode_unmasked(&mut out, OP_PING, b"hb"),
            }
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let mut buf = RecvBuf::new(4096, 1 << 20, Role::Server);
    buf.extend(&head[end..]);
    loop {
        while let Some(f) = buf.next_frame().ok()? {
            match f.opcode {
                OP_TEXT => {
                    let v: serde_json::Value = serde_json::from_slice(f.payload).ok()?;
                    if v["type"] == "chat:message" {
                        chat_in.fetch_add(1, Relaxed);
                        let id = next_id.get();
                        next_id.set(id + 1);
                        let out = serde_json::json!({
                            "type": "chat:message",
                            "payload": {"chatId": "c0", "message": {
                                "id": format!("m{id}"), "chatId": "c0",
                                "senderId": format!("u{user}"), "senderName": format!("User {user}"),
                                "content": v["payload"]["content"],
                                "createdAt": "2024-01-01T00:00:00.000Z",
                            }}
                        });
                        let _ = room.send(frame(out.to_string().as_bytes()));
                    }
                }
                OP_PONG => {
                    assert_eq!(f.payload, b"hb", "pong must echo the ping payload");
                    pongs.fetch_add(1, Relaxed);
                }
                OP_CLOSE => return None,
                _ => {}
            }
        }
        let spare = buf.spare();
        let n = rd.read(spare).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.commit(n);
    }
}

fn start_server() -> TestServer {
    let pongs = Arc::new(AtomicU64::new(0));
    let chat_in = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let (p, c) = (Arc::clone(&pongs), Arc::clone(&chat_in));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            let (room, _) = broadcast::channel(1 << 16);
            let next_id = Rc::new(Cell::new(0));
            // Bounded: the server thread ends with the test process.
            while let Ok((s, _)) = l.accept().await {
                let (room, next_id, p, c) = (
                    room.clone(),
                    Rc::clone(&next_id),
                    Arc::clone(&p),
                    Arc::clone(&c),
                );
                tokio::task::spawn_local(async move {
                    handle(s, room, next_id, p, c).await;
                });
            }
        });
    });
    TestServer {
        port: rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        pongs,
        chat_in,
    }
}

fn common(port: u16) -> Common {
    Common {
        url: format!("ws://127.0.0.1:{port}/"),
        server_pid: vec![std::process::id()],
        json: false,
        plot: None,
        threads: Some(2),
        rooms: 1,
        first_user: 0,
        connect_timeout: Duration::from_secs(10),
    }
}

#[test]
fn the_round_rule_sends_rounds_and_loses_nothing() {
    let srv = start_server();
    let args = chat::ChatArgs {
        clients: 4,
        duration: Duration::from_millis(600),
        warmup: Duration::from_millis(100),
        window: 1,
        round_size: 25,
        size: 16,
        drain: Duration::from_secs(3),
    };
    let r = chat::run(&common(srv.port), &args).unwrap();
    assert!(r.consistent, "{r:?}");
    assert_eq!(r.total_deliveries, r.total_sent * 4);
    // Whole rounds only: every client stops at a round boundary once its round completed.
    assert_eq!(r.total_sent % 25, 0, "{} sent", r.total_sent);
    assert!(r.table().render().contains("round size 25"));
}

#[test]
fn chat_counts_every_message_once_per_client() {
    let srv = start_server();
    let args = chat::ChatArgs {
        clients: 5,
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        window: 2,
        round_size: 1,
        size: 16,
        drain: Duration::from_secs(3),
    };
    let r = chat::run(&common(srv.port), &args).unwrap();
    assert!(r.measured.deliveries > 0, "{r:?}");
    assert!(r.total_sent > 0);
    assert_eq!(
        r.total_deliveries,
        r.total_sent * 5,
        "each message counted R times"
    );
    assert_eq!(r.expected_deliveries, r.total_sent * 5);
    assert!(r.consistent);
    assert_eq!(
        srv.chat_in.load(Relaxed),
        r.total_sent,
        "server saw every send"
    );
    // Presence events (one per client, seen by those connected at the time) are not deliveries.
    assert!(r.other_messages > 0);
    // The window's rate is consistent with its counts.
    let rate = r.measured.deliveries as f64 / r.measured.seconds;
    assert!((rate - r.measured.deliveries_per_s).abs() < 1e-6 * rate.max(1.0));
    // Server CPU per delivery is present (the "server" here is this test process).
    let s = r.measured.server.unwrap();
    assert!(s.cpu_ns_per_unit.is_some());
    // Pings were answered with pongs carrying the same payload.
    assert!(srv.pongs.load(Relaxed) > 0);
    assert!(r
        .table()
        .render()
        .contains("every message reached everyone  yes"));
}

#[test]
fn latency_records_every_scheduled_delivery() {
    let srv = start_server();
    let args = latency::LatencyArgs {
        clients: 4,
        senders: 2,
        rate: 2_000.0,
        duration: Duration::from_millis(600),
        warmup: Duration::from_millis(200),
        drain: Duration::from_secs(3),
    };
    let r = latency::run(&common(srv.port), &args).unwrap();
    // 2000 msgs/s for 0.6 s = 1200 messages in the window, each delivered to 4 clients.
    assert_eq!(r.window_messages, 1_200);
    assert_eq!(r.expected_deliveries, 4_800);
    assert_eq!(r.latency.count, 4_800, "{r:?}");
    assert_eq!(r.lost, 0);
    assert!(r.latency.p50_ns > 0 && r.latency.p50_ns <= r.latency.p99_ns);
    assert!(r.latency.p99_ns <= r.latency.max_ns);
    // Every message of the whole schedule (warm-up included) was sent once.
    assert_eq!(srv.chat_in.load(Relaxed), 1_600);
    assert!(r.send_lag.count >= 1_600);
}

#[test]
fn storm_opens_and_authenticates_each_connection() {
    let srv = start_server();
    let args = storm::StormArgs {
        count: 200,
        rate: 0.0,
        concurrency: 16,
        keep: false,
        users: None,
        sources: 2,
        max_duration: Duration::from_secs(30),
    };
    let r = storm::run(&common(srv.port), &args).unwrap();
    assert_eq!(r.connected, 200, "{:?}", r.errors);
    assert_eq!(r.failed, 0);
    assert_eq!(r.auth.count, 200);
    assert!(r.tcp.p50_ns <= r.upgrade.p50_ns && r.upgrade.p50_ns <= r.auth.p50_ns);
    assert!(r.connections_per_s > 0.0);
}

#[test]
fn connections_scenario_through_the_binary() {
    let srv = start_server();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--url",
            &format!("ws://127.0.0.1:{}/", srv.port),
            "--server-pid",
            &std::process::id().to_string(),
            "--json",
            "connections",
            "--count",
            "60",
            "--per-process",
            "25",
            "--settle",
            "200ms",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scenario"], "connections");
    assert_eq!(v["held"], 60, "{v}");
    assert_eq!(v["failed"], 0);
    // Three children of 25, 25, 10 on 127.0.0.1, .2, .3.
    let p = v["processes"].as_array().unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p[2]["count"], 10);
    assert_eq!(p[2]["source"], "127.0.0.3");
    assert!(v["server_rss_after_kb"].as_u64().unwrap() > 0);
}
