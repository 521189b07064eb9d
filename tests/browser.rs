//! End-to-end test of the demo chat page (`src/http/demo.html`) in a real browser.
//!
//! Runs `tests/browser/demo.test.mjs` with Node.js. The script starts this crate's
//! `socket-server --demo` on a free loopback port (store in a temporary directory), opens the
//! page the server serves at `/` in headless Chromium as alice and bob (and briefly carol), and
//! checks through the UI: connecting with a demo token, presence, typing indicators, messages
//! (sender, own/other), read receipts ("Seen by Bob"), unread badges, a readable error frame,
//! authentication failure (close 4001, no retry), the server API adding and removing a member
//! (`chat:new`/`chat:removed`) and posting a message, reconnecting by itself after a server
//! restart (SIGTERM: `SERVER_SHUTDOWN` + close 1001, then a new process on the same port and
//! store) and fetching exactly the messages missed meanwhile with `chat:history`, the latest
//! page when a chat opens and "Load earlier messages", and the phone layout. Screenshots go to `<CARGO_TARGET_TMPDIR>/browser-artifacts/`
//! (`demo-two-users.png`, `demo-phone.png`, and `failure-*.png` when a check fails); set
//! `UPDATE_README_SCREENSHOT=1` to also refresh `docs/demo.png`.
//!
//! Needs `node` (20 or newer) and, on the first run, `npm` with access to the npm registry
//! (`npm ci` in `tests/browser` installs the pinned `playwright-core`; no browser download), and
//! Chromium: Debian's `chromium` package (`apt-get install -y chromium`) at `/usr/bin/chromium`,
//! or any Chromium named by the `CHROMIUM` environment variable. A missing prerequisite fails
//! the test with a message saying what to install; it never passes silently.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The whole browser script (it bounds itself to 150 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// `npm ci` in `tests/browser` when `node_modules` is missing.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);
/// The oldest Node.js major version `playwright-core` supports.
const MIN_NODE_MAJOR: u32 = 20;

/// What a bounded child process did.
struct Outcome {
    /// Exit status, or `None` when it was killed at the deadline.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => "killed at the deadline".to_string(),
        };
        format!(
            "status: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// The first `name` on `PATH` that is a file.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn read_all(mut stream: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only truncates the captured output.
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Sends `signal` to the process group `pgid` (the child and everything it started there).
fn signal_group(pgid: u32, signal: &str) {
    // The group may already be gone; nothing to do then.
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `cmd` in a process group of its own, capturing both streams; at `timeout` the group
/// gets SIGTERM (the browser script then stops its gateway and browser, and the gateway, in the
/// same group, starts draining), and SIGKILL 10 s later.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Outcome {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child: Child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    let out = read_all(child.stdout.take().expect("child stdout is piped"));
    let err = read_all(child.stderr.take().expect("child stderr is piped"));
    let pgid = child.id();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("poll the child process") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        signal_group(pgid, "-TERM");
        let grace = Instant::now() + Duration::from_secs(10);
        while Instant::now() < grace {
            if child.try_wait().expect("poll the child process").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_group(pgid, "-KILL");
    }
    // Reaps it (a no-op when try_wait already did); a run that hit the deadline stays a
    // failure whatever its status.
    let _ = child.wait();
    Outcome {
        status,
        stdout: out.join().expect("stdout reader thread"),
        stderr: err.join().expect("stderr reader thread"),
    }
}

fn check_node_version(node: &Path) {
    let out = run_bounded(Command::new(node).arg("--version"), Duration::from_secs(20));
    assert!(out.success(), "`node --version` failed\n{}", out.describe());
    let version = out.stdout.trim();
    let major: Option<u32> = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok());
    assert!(
        major.is_some_and(|m| m >= MIN_NODE_MAJOR),
        "the browser test needs Node.js {MIN_NODE_MAJOR} or newer (playwright-core), found {version:?} \
         at {}",
        node.display()
    );
}

#[test]
fn demo_page_works_end_to_end_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests").join("browser");

    let node = find_in_path("node").unwrap_or_else(|| {
        panic!(
            "the browser test needs Node.js {MIN_NODE_MAJOR}+ (`node` on PATH), which is missing; \
             install it (Debian: apt-get install -y nodejs npm)"
        )
    });
    check_node_version(&node);

    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "the browser test needs Chromium, and {} does not exist: install Debian's chromium \
         package (apt-get install -y chromium) or point the CHROMIUM environment variable at a \
         Chromium executable",
        chromium.display()
    );

    if !dir
        .join("node_modules")
        .join("playwright-core")
        .join("package.json")
        .is_file()
    {
        let npm = find_in_path("npm").unwrap_or_else(|| {
            panic!(
                "tests/browser/node_modules is missing and `npm` is not on PATH to install it; \
                 install npm (Debian: apt-get install -y npm) or run `npm ci` in tests/browser"
            )
        });
        let out = run_bounded(
            Command::new(npm)
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            NPM_CI_TIMEOUT,
        );
        assert!(
            out.success(),
            "`npm ci` in tests/browser failed (it installs the pinned playwright-core from the \
             npm registry)\n{}",
            out.describe()
        );
    }

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    let out = run_bounded(
        Command::new(&node)
            .arg(Path::new("tests").join("browser").join("demo.test.mjs"))
            .current_dir(root)
            .env("SOCKET_SERVER_BIN", env!("CARGO_BIN_EXE_socket-server"))
            .env("ARTIFACT_DIR", &artifacts)
            .env("CHROMIUM", &chromium)
            // A development-only override of the script; never in this test.
            .env_remove("DEMO_PAGE_URL"),
        SCRIPT_TIMEOUT,
    );
    assert!(
        out.success(),
        "the browser test (node tests/browser/demo.test.mjs) failed; screenshots are in {}\n{}",
        artifacts.display(),
        out.describe()
    );
    // Shown with `cargo test --test browser -- --nocapture`.
    println!("{}", out.stdout.trim_end());
    println!("screenshots: {}", artifacts.display());
}
