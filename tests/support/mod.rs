//! Shared helpers for the black-box integration tests: spawning the `socket-server` binary,
//! provisioning users and chats through its admin CLI, and a small synchronous WebSocket client
//! (tungstenite) whose every read is bounded by a deadline, the tests' one WebSocket frame
//! encoder ([`encode_frame`]), and ([`fake_api`]) the fake REST API behind `HTTP_API_URL`.
//!
//! Everything talks to the binary over real sockets on 127.0.0.1; nothing from the library crate
//! is used.
#![allow(dead_code)]

pub mod fake_api;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_socket-server");

/// Default bound on a single expectation (reading a frame, an HTTP answer, ...).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server may take to log "Server listening".
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Every environment variable the server reads; cleared before each spawn for determinism.
pub const SERVER_ENV: &[&str] = &[
    "WS_PORT",
    "HOST",
    "STORE_PATH",
    "WORKERS",
    "HEARTBEAT_INTERVAL",
    "CONNECTION_TIMEOUT",
    "TYPING_TIMEOUT",
    "MAX_MESSAGE_SIZE",
    "CORS_ORIGIN",
    "HTTP_API_URL",
    "BACKEND_TIMEOUT",
    "BACKEND_POOL_SIZE",
    "CHATS_REFETCH_INTERVAL",
    "LOG_LEVEL",
    "SHUTDOWN_TIMEOUT",
    "AUTH_TIMEOUT",
    "MAX_FRAGMENTS",
    "DEMO",
    "BENCH_FIXTURE",
    "RUST_LOG",
    "BACKEND_RETRIES",
    "BREAKER_THRESHOLD",
    "BREAKER_COOLDOWN",
    "AUTH_CACHE_TTL",
    "MAX_OUTBOX_BYTES",
    "RATE_LIMIT",
    "RATE_BURST",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_IP",
    "DRAIN_WINDOW",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "TRANSPARENT_HUGE_PAGES",
    "API_KEY",
    "API_PORT",
    "API_HOST",
    "API_MAX_BODY",
];

/// The origin every test server allows through CORS_ORIGIN (besides same-origin).
pub const ALLOWED_ORIGIN: &str = "http://allowed.example";

// ---------------------------------------------------------------------------------------------
// Store and admin CLI
// ---------------------------------------------------------------------------------------------

/// A temporary directory holding one SQLite store file. Kept alive across server restarts.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestStore {
    pub fn new() -> TestStore {
        let dir = tempfile::tempdir().expect("create tempdir");
        let path = dir.path().join("store.db");
        TestStore { dir, path }
    }

    /// `socket-server user add <id> --name <name>`; returns the printed token.
    pub fn add_user(&self, id: &str, name: &str) -> String {
        add_user(&self.path, id, name)
    }

    /// `socket-server chat add <chat> --members a,b,c`.
    pub fn add_chat(&self, chat: &str, members: &[&str]) {
        add_chat(&self.path, chat, members)
    }
}

/// The server binary, with no configuration from the environment but `STORE_PATH`.
pub fn base_command(store: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for var in SERVER_ENV {
        cmd.env_remove(var);
    }
    cmd.env("STORE_PATH", store);
    // Run inside the store's directory so that no `.env` of the repository is picked up.
    if let Some(dir) = store.parent() {
        cmd.current_dir(dir);
    }
    cmd
}

/// Runs the admin CLI with `args` against `store`, bounded by 20 s; returns stdout.
/// Panics (with both streams) unless it exits with status 0.
pub fn run_cli(store: &Path, args: &[&str]) -> String {
    let mut child = base_command(store)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socket-server CLI");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait CLI") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "CLI `socket-server {}` did not finish within 20 s",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_t.join().unwrap();
    let stderr = err_t.join().unwrap();
    assert!(
        status.success(),
        "CLI `socket-server {}` failed with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    stdout
}

/// Creates user `id` named `name` in `store`; returns its token (the only line on stdout).
pub fn add_user(store: &Path, id: &str, name: &str) -> String {
    let out = run_cli(store, &["user", "add", id, "--name", name]);
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "`user add {id}` must print the token as the only line on stdout, got:\n{out}"
    );
    let token = lines[0].to_string();
    assert!(
        !token.contains(char::is_whitespace),
        "token has whitespace: {token:?}"
    );
    token
}

/// Creates chat `chat` (if missing) and adds `members`.
pub fn add_chat(store: &Path, chat: &str, members: &[&str]) {
    run_cli(
        store,
        &["chat", "add", chat, "--members", &members.join(",")],
    );
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

/// Builds the environment of one server process.
pub struct ServerBuilder {
    store: PathBuf,
    envs: Vec<(String, String)>,
    args: Vec<String>,
}

impl ServerBuilder {
    /// Defaults: WS_PORT=0, HOST=127.0.0.1, WORKERS=2, generous heartbeat/idle timeouts (so an
    /// idle test client is never cut off), TYPING_TIMEOUT=300, CHATS_REFETCH_INTERVAL=100,
    /// CORS_ORIGIN=[`ALLOWED_ORIGIN`], LOG_LEVEL=debug.
    pub fn new(store: &Path) -> ServerBuilder {
        let defaults = [
            ("WS_PORT", "0"),
            ("HOST", "127.0.0.1"),
            ("WORKERS", "2"),
            ("HEARTBEAT_INTERVAL", "5000"),
            ("CONNECTION_TIMEOUT", "60000"),
            ("TYPING_TIMEOUT", "300"),
            ("MAX_MESSAGE_SIZE", "10000"),
            ("CORS_ORIGIN", ALLOWED_ORIGIN),
            ("BACKEND_TIMEOUT", "2000"),
            ("CHATS_REFETCH_INTERVAL", "100"),
            ("LOG_LEVEL", "debug"),
            ("SHUTDOWN_TIMEOUT", "2000"),
            ("DRAIN_WINDOW", "200"),
        ];
        ServerBuilder {
            store: store.to_path_buf(),
            envs: defaults
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: Vec::new(),
        }
    }

    /// Sets (or overrides) one environment variable.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> ServerBuilder {
        let value = value.into();
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_string(), value));
        self
    }

    /// Adds a command-line argument (e.g. `--demo`).
    pub fn arg(mut self, arg: &str) -> ServerBuilder {
        self.args.push(arg.to_string());
        self
    }

    /// Spawns the server and waits (at most 20 s) for its "Server listening" line.
    pub fn spawn(self) -> Server {
        let mut cmd = base_command(&self.store);
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn socket-server");

        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let err_lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let (port_tx, port_rx) = mpsc::channel::<u16>();

        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        // TEST_SERVER_LOG=1 echoes the server's log lines to the test's stderr (with
        // --nocapture), for a failure that needs them.
        let echo = std::env::var_os("TEST_SERVER_LOG").is_some();
        let out_thread = std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("server: {line}");
                }
                let port = if sent { None } else { listening_port(&line) };
                // Record the line before announcing the port, so logs() always holds it.
                sink.lock().unwrap().push(line);
                if let Some(port) = port {
                    let _ = port_tx.send(port);
                    sent = true;
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let sink = err_lines.clone();
        let err_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });

        let mut server = Server {
            child,
            pid: 0,
            port: 0,
            lines,
            err_lines,
            threads: vec![out_thread, err_thread],
            exited: None,
        };
        server.pid = server.child.id();
        match port_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(port) => server.port = port,
            Err(_) => {
                // Give the readers a moment to collect the last lines of a crashed process.
                std::thread::sleep(Duration::from_millis(200));
                let status = server.child.try_wait().ok().flatten();
                let out = server.output();
                let _ = server.child.kill();
                panic!(
                    "server did not log \"Server listening\" within {STARTUP_TIMEOUT:?} \
                     (exit status: {status:?}); output:\n{out}"
                );
            }
        }
        server
    }
}

/// Parses a "Server listening" log line and returns its port.
fn listening_port(line: &str) -> Option<u16> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "Server listening" {
        return None;
    }
    let port = v
        .get("data")
        .and_then(|d| d.get("port"))
        .or_else(|| v.get("port"))
        .or_else(|| v.get("fields").and_then(|d| d.get("port")))?;
    port.as_u64()
        .or_else(|| port.as_str().and_then(|s| s.parse().ok()))
        .and_then(|p| u16::try_from(p).ok())
}

/// A running server process; killed on drop.
pub struct Server {
    pub child: Child,
    pub pid: u32,
    pub port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    err_lines: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Server {
    /// A server on `store` with the default test environment.
    pub fn start(store: &Path) -> Server {
        ServerBuilder::new(store).spawn()
    }

    /// The stdout lines collected so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) for a log line for which `pred` holds and returns all lines so far
    /// joined; panics naming `what` if none comes. Log lines reach stdout after the event
    /// they describe (and after its metrics), so a test that saw a metric waits here.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.iter().any(|l| pred(l)) {
                return logs.join("\n");
            }
            assert!(
                Instant::now() < deadline,
                "no log line {what}: {}",
                logs.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The stderr lines collected so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.err_lines.lock().unwrap().clone()
    }

    /// Both streams, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.logs().join("\n"),
            self.stderr_lines().join("\n")
        )
    }

    /// Sends SIGTERM (through `kill -TERM <pid>`).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
    }

    /// Waits for the process to exit; `None` on timeout. Once exited, the log readers are
    /// joined so that `logs()` holds every line.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                for t in self.threads.drain(..) {
                    let _ = t.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.exited = Some(s);
            }
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// `ws://127.0.0.1:PORT/?token=...`
    pub fn url_with_token(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/?token={}", self.port, urlencode(token))
    }

    /// Opens a WebSocket with `?token=` and returns right after the handshake (nothing read).
    pub fn connect(&self, token: &str) -> Client {
        connect_url(&self.url_with_token(token))
    }

    /// Opens a WebSocket with `?token=` and reads the `connected` frame; returns its payload.
    pub fn connect_ok(&self, token: &str) -> (Client, Value) {
        let mut c = self.connect(token);
        let connected = c.expect_type("connected");
        (c, connected)
    }

    /// A plain-HTTP GET on the server's port; returns the status code.
    pub fn http_get_status(&self, path: &str) -> u16 {
        http_get_status(self.port, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn tcp(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("TCP connect to server");
    with_timeouts(stream)
}

/// A TCP connection to 127.0.0.1:`port` whose receive buffer is `rcvbuf` bytes (set before
/// connecting, so the window stays small): the kernel then buffers little for a client that
/// is behind, and the server's own queue shows it.
pub fn tcp_with_rcvbuf(port: u16, rcvbuf: usize) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    sock.connect(&addr.into()).expect("TCP connect to server");
    with_timeouts(TcpStream::from(sock))
}

/// A WebSocket client over [`tcp_with_rcvbuf`], authenticated with `?token=`.
pub fn connect_with_rcvbuf(port: u16, token: &str, rcvbuf: usize) -> Client {
    let url = format!("ws://127.0.0.1:{port}/?token={}", urlencode(token));
    let req = url.as_str().into_client_request().expect("valid ws url");
    match tungstenite::client(req, tcp_with_rcvbuf(port, rcvbuf)) {
        Ok((ws, _)) => Client { ws, closed: false },
        Err(e) => panic!("WebSocket handshake to {url} failed: {e:?}"),
    }
}

fn with_timeouts(stream: TcpStream) -> TcpStream {
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
}

/// Performs a WebSocket handshake to `url` with extra request `headers`. Returns the client and
/// the 101 response, or the handshake error (e.g. `tungstenite::Error::Http` for a 403).
#[allow(clippy::result_large_err)]
pub fn try_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, Response), tungstenite::Error> {
    let mut req = url.into_client_request().expect("valid ws url");
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, HeaderValue::from_str(v).unwrap());
    }
    let port = req.uri().port_u16().expect("url with port");
    let stream = tcp(port);
    match tungstenite::client(req, stream) {
        Ok((ws, resp)) => Ok((Client { ws, closed: false }, resp)),
        Err(HandshakeError::Failure(e)) => Err(e),
        Err(HandshakeError::Interrupted(_)) => {
            panic!("WebSocket handshake to {url} timed out after {READ_TIMEOUT:?}")
        }
    }
}

/// Handshake that must succeed.
pub fn connect_url(url: &str) -> Client {
    connect_with(url, &[])
}

/// Handshake with extra headers that must succeed.
pub fn connect_with(url: &str, headers: &[(&str, &str)]) -> Client {
    match try_connect(url, headers) {
        Ok((c, _)) => c,
        Err(e) => panic!("WebSocket handshake to {url} failed: {e:?}"),
    }
}

/// One frame read from the server, with pings/pongs distinguished.
#[derive(Debug)]
pub enum Frame {
    /// A JSON text frame (the whole envelope).
    Text(Value),
    Ping,
    Pong,
    Binary(Vec<u8>),
    /// A close frame (code, reason); `None` when it had no code.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (reset / EOF).
    Gone(String),
}

/// A synchronous WebSocket client whose reads are bounded.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    closed: bool,
}

impl Client {
    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string()))
            .unwrap_or_else(|e| panic!("send failed: {e}"));
    }

    /// Sends `{"type": ty, "payload": payload}`.
    pub fn send(&mut self, ty: &str, payload: Value) {
        self.send_text(&json!({ "type": ty, "payload": payload }).to_string());
    }

    /// Sends a chat:message.
    pub fn send_message(&mut self, chat: &str, content: &str) {
        self.send(
            "chat:message",
            json!({ "chatId": chat, "content": content }),
        );
    }

    /// The next frame before `deadline`, or `None` on timeout.
    pub fn next_frame_until(&mut self, deadline: Instant) -> Option<Frame> {
        if self.closed {
            return Some(Frame::Gone("already closed".into()));
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let remaining = (deadline - now).max(Duration::from_millis(1));
        self.ws.get_ref().set_read_timeout(Some(remaining)).unwrap();
        match self.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("server sent non-JSON text frame {t:?}: {e}"));
                Some(Frame::Text(v))
            }
            Ok(Message::Binary(b)) => Some(Frame::Binary(b)),
            Ok(Message::Ping(_)) => Some(Frame::Ping),
            Ok(Message::Pong(_)) => Some(Frame::Pong),
            Ok(Message::Close(cf)) => Some(Frame::Close(
                cf.map(|f| (u16::from(f.code), f.reason.into_owned())),
            )),
            Ok(Message::Frame(_)) => self.next_frame_until(deadline),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => {
                self.closed = true;
                Some(Frame::Gone(e.to_string()))
            }
        }
    }

    /// The next text frame (envelope) within `timeout`, skipping ping/pong. Panics on close.
    pub fn next_text(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_frame_until(deadline)? {
                Frame::Text(v) => return Some(v),
                Frame::Ping | Frame::Pong => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    fn expect_type_inner(&mut self, ty: &str, skip_all_others: bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            match self.next_frame_until(deadline) {
                None => panic!(
                    "timed out after {timeout:?} waiting for a {ty:?} frame; skipped: {skipped:?}"
                ),
                Some(Frame::Text(v)) => {
                    let got = v
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if got == ty {
                        return v.get("payload").cloned().unwrap_or(Value::Null);
                    }
                    if skip_all_others || got == "user:online" {
                        skipped.push(v);
                        continue;
                    }
                    panic!("expected a {ty:?} frame, got {v}; skipped before: {skipped:?}");
                }
                Some(Frame::Ping) | Some(Frame::Pong) => continue,
                Some(other) => {
                    panic!("expected a {ty:?} frame, got {other:?}; skipped before: {skipped:?}")
                }
            }
        }
    }

    /// Reads until a text frame of type `ty` arrives and returns its payload. Skips ping/pong and
    /// `user:online` events; any other frame (or a timeout of 5 s) fails the test.
    pub fn expect_type(&mut self, ty: &str) -> Value {
        self.expect_type_inner(ty, false, READ_TIMEOUT)
    }

    /// Like [`Client::expect_type`] with a custom timeout.
    pub fn expect_type_within(&mut self, ty: &str, timeout: Duration) -> Value {
        self.expect_type_inner(ty, false, timeout)
    }

    /// Reads until a text frame of type `ty` arrives, skipping every other frame.
    pub fn expect_type_any(&mut self, ty: &str) -> Value {
        self.expect_type_inner(ty, true, READ_TIMEOUT)
    }

    /// Expects an `error` frame with `code`; returns its payload after checking its shape.
    pub fn expect_error(&mut self, code: &str) -> Value {
        let p = self.expect_type("error");
        assert_eq!(p["code"], code, "unexpected error frame: {p}");
        assert_error_shape(&p);
        p
    }

    /// Reads (skipping text and ping/pong frames) until a close frame; returns its code.
    /// Fails if none arrives within 5 s or the connection ends without one.
    pub fn expect_close(&mut self) -> Option<u16> {
        self.expect_close_within(READ_TIMEOUT)
    }

    pub fn expect_close_within(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            match self.next_frame_until(deadline) {
                None => panic!("no close frame within {timeout:?}; frames seen: {seen:?}"),
                Some(Frame::Close(c)) => {
                    // Let tungstenite send its close reply.
                    let _ = self.ws.flush();
                    self.closed = true;
                    return c.map(|(code, _)| code);
                }
                Some(Frame::Gone(e)) => {
                    panic!("connection ended without a close frame ({e}); frames seen: {seen:?}")
                }
                Some(f) => seen.push(f),
            }
        }
    }

    /// Collects every text frame (envelopes) received during `dur`. Stops early on close.
    pub fn collect(&mut self, dur: Duration) -> Vec<Value> {
        let deadline = Instant::now() + dur;
        let mut out = Vec::new();
        while let Some(f) = self.next_frame_until(deadline) {
            match f {
                Frame::Text(v) => out.push(v),
                Frame::Close(_) | Frame::Gone(_) => break,
                _ => {}
            }
        }
        out
    }

    /// Asserts that no text frame of type `ty` arrives during `dur`; returns all text frames.
    pub fn expect_no_type(&mut self, ty: &str, dur: Duration) -> Vec<Value> {
        let frames = self.collect(dur);
        let bad: Vec<&Value> = frames.iter().filter(|v| v["type"] == ty).collect();
        assert!(bad.is_empty(), "expected no {ty:?} frame, got {bad:?}");
        frames
    }

    /// Sends a close frame and waits (bounded) for the server's answer / the end of the socket.
    pub fn close(mut self) {
        if self.closed {
            return;
        }
        let _ = self.ws.close(None);
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            match self.next_frame_until(deadline) {
                None | Some(Frame::Gone(_)) => break,
                Some(Frame::Close(_)) => {
                    let _ = self.ws.flush();
                    break;
                }
                Some(_) => continue,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw sockets (for a client that must stay completely silent) and plain HTTP
// ---------------------------------------------------------------------------------------------

/// Does the WebSocket upgrade by hand on a raw TcpStream; returns the stream and any bytes that
/// arrived after the response head. Panics unless the answer is 101.
pub fn raw_handshake(port: u16, path_and_query: &str) -> (TcpStream, Vec<u8>) {
    raw_handshake_with(port, path_and_query, &[])
}

/// Like [`raw_handshake`], but `early` bytes (e.g. [`masked_text_frame`]s) are written in the
/// same write as the upgrade request, before the server could have answered.
pub fn raw_handshake_with(port: u16, path_and_query: &str, early: &[u8]) -> (TcpStream, Vec<u8>) {
    raw_handshake_on(tcp(port), port, path_and_query, early)
}

/// [`raw_handshake_with`] over a socket the caller connected (e.g. with a small receive
/// buffer).
pub fn raw_handshake_on(
    mut stream: TcpStream,
    port: u16,
    path_and_query: &str,
    early: &[u8],
) -> (TcpStream, Vec<u8>) {
    let mut req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(early);
    stream.write_all(&req).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).expect("read handshake response");
        assert!(
            n > 0,
            "server closed during handshake; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "expected 101, got:\n{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "bad Sec-WebSocket-Accept in:\n{head}"
    );
    (stream, buf[head_end..].to_vec())
}

/// Encodes one WebSocket frame (RFC 6455): the FIN bit, `opcode`, the shortest length form
/// (7, 16 or 64 bits) for `payload`, then, with a `mask`, the MASK bit, the key and the masked
/// payload. The one frame encoder of the tests: every hand-built frame goes through it.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        f.push(mask_bit | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask_bit | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            f.extend_from_slice(&m);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A client frame: masked with `mask`, as RFC 6455 requires of clients.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    encode_frame(fin, opcode, payload, Some(mask))
}

/// A client text frame (FIN, masked) carrying `text`.
pub fn masked_text_frame(text: &str) -> Vec<u8> {
    client_frame(true, 0x1, text.as_bytes(), [0x37, 0xfa, 0x21, 0x3d])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A frame read from a raw stream: (opcode, payload, time it was complete).
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
    pub at: Instant,
}

impl RawFrame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
    pub fn text(&self) -> Option<Value> {
        (self.opcode == 0x1)
            .then(|| serde_json::from_slice(&self.payload).ok())
            .flatten()
    }
}

/// A raw WebSocket connection that only reads (never writes, not even pongs).
pub struct RawConn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl RawConn {
    /// The next server frame before `deadline`; `None` on timeout, EOF or a socket error.
    pub fn next_frame(&mut self, deadline: Instant) -> Option<RawFrame> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(RawFrame {
                    opcode,
                    payload,
                    at: Instant::now(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // Said on stderr (shown when the test fails): EOF, timeout and error all
                    // end in `None`, and a failure must say which.
                    eprintln!("next_frame: EOF with {} bytes unparsed", self.buf.len());
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    eprintln!("next_frame: {e} ({} bytes unparsed)", self.buf.len());
                    return None;
                }
            }
        }
    }
}

/// Reads (never writes) server frames from `stream` until a close frame, EOF or `timeout`.
pub fn raw_read_frames(stream: &mut TcpStream, buf: Vec<u8>, timeout: Duration) -> Vec<RawFrame> {
    let deadline = Instant::now() + timeout;
    let mut conn = RawConn {
        stream: stream.try_clone().expect("clone stream"),
        buf,
    };
    let mut frames = Vec::new();
    while let Some(f) = conn.next_frame(deadline) {
        let is_close = f.opcode == 0x8;
        frames.push(f);
        if is_close {
            break;
        }
    }
    frames
}

/// Parses one unmasked server frame; returns (opcode, payload, bytes used).
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7F) as usize;
    let mut pos = 2;
    if len == 126 {
        if buf.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize;
        pos = 10;
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((opcode, payload, pos + len))
}

/// GET `path` over plain HTTP/1.1 on 127.0.0.1:`port`; returns the status code.
pub fn http_get_status(port: u16, path: &str) -> u16 {
    let (status, _) = http_get(port, path);
    status
}

/// GET `path`; returns (status, raw response text read so far, head at least).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = tcp(port);
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        stream.set_read_timeout(Some(deadline - now)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // Stop once the head and a Content-Length body are complete.
                if let Some(h) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if let Some(len) = len {
                        if buf.len() >= h + 4 + len {
                            break;
                        }
                    }
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in response to GET {path}: {text:?}"));
    (status, text)
}

/// The `worker` of each of the server's "User connected" log lines of `user`, in order.
/// Panics if a line lacks it: tests that must cross workers depend on it.
pub fn connection_workers(server: &Server, user: &str) -> Vec<u64> {
    server
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "User connected" && v["data"]["userId"] == user)
        .map(|v| {
            v["data"]["worker"]
                .as_u64()
                .unwrap_or_else(|| panic!("\"User connected\" log line without worker: {v}"))
        })
        .collect()
}

/// The worker of `user`'s `n`-th connection (1-based, in log order), waiting up to 5 s for its
/// "User connected" line (log lines trail the `connected` frame).
pub fn worker_of_connection(server: &Server, user: &str, n: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let workers = connection_workers(server, user);
        if workers.len() >= n {
            return workers[n - 1];
        }
        assert!(
            Instant::now() < deadline,
            "no \"User connected\" line for {user}'s connection {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens more connections of `user` (reading their `connected`) until they sit on at least two
/// workers (SO_REUSEPORT spreads them by hash), so that a test really crosses workers. The
/// server must run with WORKERS >= 2.
pub fn spread_over_workers(server: &Server, user: &str, token: &str, conns: &mut Vec<Client>) {
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(50));
        let workers: std::collections::BTreeSet<u64> =
            connection_workers(server, user).into_iter().collect();
        eprintln!("{user} connections on workers {workers:?}");
        if workers.len() >= 2 {
            return;
        }
        let mut c = server.connect_ok(token).0;
        c.collect(Duration::from_millis(20));
        conns.push(c);
    }
    panic!("30 more connections of {user} all landed on one worker");
}

/// An HTTP answer: status, lower-cased header names with their values, body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics, showing it, if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port` (raw `head_extra` header lines, each ending
/// in CRLF; `Content-Length` is added for a body) and reads the whole answer (the server
/// closes after it), bounded by [`READ_TIMEOUT`].
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    head_extra: &str,
    body: Option<&[u8]>,
) -> HttpAnswer {
    let mut stream = tcp(port);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head_extra}");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).expect("send HTTP request");
    let mut buf = Vec::new();
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("set read timeout");
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete HTTP head in answer to {method} {path}: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in answer to {method} {path}: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: body.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// Asserts `s` looks like `2024-01-01T12:00:00.000Z` (RFC 3339, UTC, milliseconds).
pub fn assert_timestamp(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b[i].is_ascii_digit());
    let ok = b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z';
    assert!(
        ok,
        "timestamp {s:?} is not RFC 3339 UTC with millis (2024-01-01T12:00:00.000Z)"
    );
}

/// Asserts an error payload has {code: string, message: string, details: object}.
pub fn assert_error_shape(p: &Value) {
    assert!(p["code"].is_string(), "error without code: {p}");
    assert!(p["message"].is_string(), "error without message: {p}");
    assert!(
        p["details"].is_object(),
        "error details must be an object: {p}"
    );
}

/// The `chatIds` of a `connected` payload as strings.
pub fn chat_ids(connected: &Value) -> Vec<String> {
    connected["chatIds"]
        .as_array()
        .unwrap_or_else(|| panic!("connected without chatIds array: {connected}"))
        .iter()
        .map(|v| v.as_str().expect("chat id string").to_string())
        .collect()
}

/// `user:online` events about `user` in a list of envelopes, as their `online` values.
pub fn presence_of(frames: &[Value], user: &str) -> Vec<bool> {
    frames
        .iter()
        .filter(|v| v["type"] == "user:online" && v["payload"]["userId"] == user)
        .map(|v| v["payload"]["online"].as_bool().expect("online bool"))
        .collect()
}

/// Reads `n` chat messages on a thread of its own, pausing `pause` after each; returns their
/// contents. Panics if the connection ends first or it takes over a minute.
pub fn read_in_thread(
    mut c: Client,
    who: &'static str,
    n: usize,
    pause: Duration,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut contents = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while contents.len() < n {
            assert!(
                Instant::now() < deadline,
                "{who} read only {} of {n}",
                contents.len()
            );
            match c.next_frame_until(Instant::now() + Duration::from_secs(10)) {
                Some(Frame::Text(v)) if v["type"] == "chat:message" => {
                    let text = v["payload"]["message"]["content"].as_str().unwrap_or("");
                    contents.push(text.to_string());
                    std::thread::sleep(pause);
                }
                Some(Frame::Text(_)) | Some(Frame::Ping) | Some(Frame::Pong) => {}
                other => panic!(
                    "{who}'s connection ended after {}: {other:?}",
                    contents.len()
                ),
            }
        }
        contents
    })
}

/// `name{...} value` summed over every series of `name` in a /metrics text.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `name{worker="N"} value` in a /metrics text (0 when the series is absent).
pub fn metric_of_worker(metrics: &str, name: &str, worker: u64) -> f64 {
    let label = format!("worker=\"{worker}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// A socket with a tiny receive buffer that completes the handshake as `token` and then never
/// reads.
pub fn stuck_client(port: u16, token: &str) -> TcpStream {
    raw_handshake_on(
        tcp_with_rcvbuf(port, 4096),
        port,
        &format!("/?token={}", urlencode(token)),
        b"",
    )
    .0
}

/// `field` (in kB) of `/proc/<pid>/status`, in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .map(|kb: u64| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// A barrier whose wait gives up: `std::sync::Barrier` waits forever, so one failed client
/// would hang a test instead of failing it.
pub struct Gate {
    parties: usize,
    state: Mutex<(usize, u64)>,
    turn: std::sync::Condvar,
}

impl Gate {
    /// A gate for `parties` threads.
    pub fn new(parties: usize) -> Self {
        Self {
            parties,
            state: Mutex::new((0, 0)),
            turn: std::sync::Condvar::new(),
        }
    }

    /// Waits until all parties arrived, at most `timeout` (then panics, naming the count).
    pub fn wait(&self, timeout: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = state.1;
        state.0 += 1;
        if state.0 == self.parties {
            *state = (0, generation + 1);
            self.turn.notify_all();
            return;
        }
        let (state, waited) = self
            .turn
            .wait_timeout_while(state, timeout, |s| s.1 == generation)
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !waited.timed_out(),
            "only {} of {} parties arrived within {timeout:?}",
            state.0,
            self.parties
        );
    }
}
