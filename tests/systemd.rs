//! systemd notifications against a fake NOTIFY_SOCKET: READY=1 once listening, WATCHDOG=1
//! while the workers run, STOPPING=1 on SIGTERM.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::*;

fn collect_until(
    sock: &UnixDatagram,
    got: &mut Vec<String>,
    want: &str,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        if got.iter().filter(|m| m.contains(want)).count() >= 1 {
            return true;
        }
    }
    false
}

#[test]
fn notifies_ready_watchdog_and_stopping() {
    let store = TestStore::new();
    let path = store.path.with_file_name("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut server = ServerBuilder::new(&store.path)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .spawn();
    let mut got = Vec::new();
    assert!(
        collect_until(&sock, &mut got, "READY=1", Duration::from_secs(10)),
        "{got:?}"
    );
    // Half the watchdog interval apart: several within a second and a half.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        collect_until(&sock, &mut got, "__never__", Duration::from_millis(100));
    }
    let pings = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "only {pings} watchdog pings: {got:?}");
    server.terminate();
    assert!(
        collect_until(&sock, &mut got, "STOPPING=1", Duration::from_secs(5)),
        "{got:?}"
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server exits");
    assert!(status.success(), "{status:?}");
}
