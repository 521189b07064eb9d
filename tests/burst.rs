//! The issue's burst at default flow settings, alone in its binary so that no other test
//! shares the machine while it measures the server's peak memory.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_12_mb_burst_reaches_a_steady_reader_and_costs_its_distinct_bytes_once() {
    // The issue's scenario at default flow settings: one sender bursts 3,000 messages of 4 KB
    // into a chat without reading its own echoes; one member reads steadily, one reads
    // nothing. Nobody who reads is closed, and the server's peak memory grows by less than
    // twice the burst (every backlog holds the same frames, not copies of them). Measured:
    // 15.2-15.6 MB over 23 runs, with or without load on the other core; copying each frame
    // into every backlog measures 42.5 MB; reading ahead of the parser without a bound (as
    // before the parser's reads were capped) added steps of 2-4 MB in one run of four.
    let store = TestStore::new();
    let sender = store.add_user("sender", "Sender");
    let steady = store.add_user("steady", "Steady");
    let silent = store.add_user("silent", "Silent");
    store.add_chat("room", &["sender", "steady", "silent"]);
    let server = ServerBuilder::new(&store.path)
        .env("RATE_LIMIT", "0")
        // The production log level: at debug every message is a log line, and log lines
        // waiting for stdout are memory too.
        .env("LOG_LEVEL", "info")
        .spawn();
    let _silent = stuck_client(server.port, &silent);
    let (reader, _) = server.connect_ok(&steady);
    let (mut a, _) = server.connect_ok(&sender);
    const N: usize = 3000;
    let body = |i: usize| format!("{i:04}:{}", "y".repeat(4000));
    // Warm up every path once, then measure the peak from here.
    a.send_message("room", "warm-up");
    a.expect_type_any("chat:message");
    let steady_thread = read_in_thread(reader, "the steady reader", N + 1, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(format!("/proc/{}/clear_refs", server.pid), "5").expect("reset VmHWM");
    let base = proc_status_bytes(server.pid, "VmRSS:");
    for i in 0..N {
        a.send_message("room", &body(i));
    }
    let got = steady_thread.join().expect("steady reader");
    assert!(
        got[1..] == (0..N).map(body).collect::<Vec<_>>()[..],
        "every message, in order"
    );
    // The sender reads its echoes only now: it was not closed either.
    let mut echoes = 0;
    while echoes < N {
        match a.next_frame_until(Instant::now() + Duration::from_secs(30)) {
            Some(Frame::Text(v)) if v["type"] == "chat:message" => echoes += 1,
            Some(Frame::Text(_)) | Some(Frame::Ping) | Some(Frame::Pong) => {}
            other => panic!("the sender's connection ended after {echoes} echoes: {other:?}"),
        }
    }
    let peak = proc_status_bytes(server.pid, "VmHWM:");
    for f in ["RssAnon:", "RssFile:", "RssShmem:"] {
        eprintln!("{f} {}", proc_status_bytes(server.pid, f));
    }
    let growth = peak.saturating_sub(base);
    eprintln!("peak RSS growth over the 12 MB burst: {growth} bytes (base {base})");
    assert!(
        growth < 24_000_000,
        "peak RSS grew by {growth} bytes (base {base}, peak {peak})"
    );
    let metrics = http_get(server.port, "/metrics").1;
    assert!(
        !metrics.contains(r#"code="4009""#),
        "nobody closed yet (the silent member's stall rule is 15 s): {metrics}"
    );
}
