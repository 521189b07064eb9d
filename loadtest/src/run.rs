//! The shape of a run: worker threads, phases, shared counters, and the monitor that samples
//! them once a second.
//!
//! Guarantees:
//! - [`spawn_workers`] starts N OS threads, each with its own single-threaded tokio runtime and
//!   `LocalSet`: connection tasks never migrate and never contend on a scheduler lock.
//! - A run moves through [`Phase`]s in order, set only by the coordinating (main) thread;
//!   tasks wait for a phase with [`wait_phase`] and workers return once `Done` is set.
//! - [`Shared`] counters are plain relaxed atomics, added to once per read (not per frame).
//! - [`Monitor`] samples the server (if a pid is given), this process and the counters, keeps a
//!   per-second timeline and drives the progress bar; [`Snapshot`]s of it delimit the
//!   measured window, so warm-up and drain are never in the reported rates.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::watch;

use crate::procstat::{ProcSample, Servers, Watch};
use crate::report::{fmt_rate, Usage};

/// Phases of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connecting and authenticating.
    Setup,
    /// Sending (warm-up, then the measured window).
    Run,
    /// No more sends; in-flight messages are still received.
    Drain,
    /// Finished: workers return, connections close.
    Done,
}

/// State shared by the coordinator and every connection task.
#[derive(Debug)]
pub struct Shared {
    phase: watch::Sender<Phase>,
    /// Connections authenticated.
    pub connected: AtomicU64,
    /// Connections that failed (to connect, or later).
    pub failed: AtomicU64,
    /// `chat:message` frames received, all connections together.
    pub deliveries: AtomicU64,
    /// Other data messages received (presence, pong, error, ...).
    pub other: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Set when senders must stop (end of the measured window).
    pub stop_sending: AtomicBool,
    /// `error` frames the server sent (e.g. rate limiting, validation).
    pub server_errors: AtomicU64,
    errors: Mutex<Vec<String>>,
    first_server_error: Mutex<Option<String>>,
}

/// How many error messages are kept (the rest are only counted in `failed`).
const KEEP_ERRORS: usize = 10;

impl Shared {
    /// New shared state in phase `Setup`.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: watch::channel(Phase::Setup).0,
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            other: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            stop_sending: AtomicBool::new(false),
            server_errors: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            first_server_error: Mutex::new(None),
        })
    }

    /// Moves to `p` (never backwards).
    pub fn set_phase(&self, p: Phase) {
        self.phase.send_if_modified(|cur| {
            if p > *cur {
                *cur = p;
                true
            } else {
                false
            }
        });
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// A receiver for [`wait_phase`].
    pub fn phase_rx(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Records a failed connection with its reason.
    pub fn fail(&self, why: impl std::fmt::Display) {
        self.failed.fetch_add(1, Relaxed);
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < KEEP_ERRORS {
            e.push(why.to_string());
        }
    }

    /// Records an `error` frame from the server (the first one is kept verbatim).
    pub fn server_error(&self, payload: &[u8]) {
        if self.server_errors.fetch_add(1, Relaxed) == 0 {
            let mut e = self
                .first_server_error
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *e = Some(String::from_utf8_lossy(&payload[..payload.len().min(300)]).into_owned());
        }
    }

    /// The first `error` frame the server sent, if any.
    pub fn first_server_error(&self) -> Option<String> {
        self.first_server_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a connection failed or the server answered with an `error` frame.
    pub fn has_failures(&self) -> bool {
        self.failed.load(Relaxed) > 0 || self.server_errors.load(Relaxed) > 0
    }

    /// Fails the run if any connection failed or the server sent an `error` frame (a run with
    /// a lost client or a rejected message measures nothing sound); moves to `Done` first so
    /// the workers stop.
    pub fn check_no_failures(&self) -> Result<()> {
        let failed = self.failed.load(Relaxed);
        let errors = self.server_errors.load(Relaxed);
        if errors > 0 && failed == 0 {
            self.set_phase(Phase::Done);
            anyhow::bail!(
                "the server rejected messages ({errors} error frame(s)), so the run's numbers are \
                 void; first: {}\n  (socket-server: start it with RATE_LIMIT=0 for benchmarks)",
                self.first_server_error().unwrap_or_default()
            );
        }
        if failed > 0 {
            self.set_phase(Phase::Done);
            anyhow::bail!(
                "{failed} connection(s) failed during the run, so its numbers are void:\n  {}{}",
                self.errors().join("\n  "),
                self.first_server_error()
                    .map(|e| format!("\n  first server error frame: {e}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The first errors recorded.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Waits until the phase is at least `p`.
pub async fn wait_phase(rx: &mut watch::Receiver<Phase>, p: Phase) {
    // An error means the coordinator is gone: treat it as reached.
    let _ = rx.wait_for(|cur| *cur >= p).await;
}

/// Starts `threads` workers; worker `i` runs `body(i)` on its own current-thread runtime.
pub fn spawn_workers<F, Fut, R>(threads: usize, body: F) -> Result<Vec<JoinHandle<Result<R>>>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    let body = Arc::new(body);
    (0..threads)
        .map(|i| {
            let body = Arc::clone(&body);
            std::thread::Builder::new()
                .name(format!("loadtest-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("building a tokio runtime")?;
                    let local = tokio::task::LocalSet::new();
                    Ok(local.block_on(&rt, body(i)))
                })
                .context("spawning a worker thread")
        })
        .collect()
}

/// Joins the workers, collecting their results.
pub fn join_workers<R>(handles: Vec<JoinHandle<Result<R>>>) -> Result<Vec<R>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
        })
        .collect()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Counters and process samples at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// When.
    pub at: Instant,
    /// `chat:message` frames received so far.
    pub deliveries: u64,
    /// Messages sent so far.
    pub sent: u64,
    /// The server process, if watched.
    pub server: Option<ProcSample>,
    /// This process.
    pub client: ProcSample,
    /// Busy CPU time of the whole machine, ns.
    pub machine_busy_ns: Option<u64>,
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Deliveries in the window.
    pub deliveries: u64,
    /// Messages sent in the window.
    pub sent: u64,
    /// Deliveries per second.
    pub deliveries_per_s: f64,
    /// Messages sent per second.
    pub sent_per_s: f64,
    /// Server CPU and RSS (CPU per delivery), when `--server-pid` is given.
    pub server: Option<Usage>,
    /// This load generator's own CPU (CPU per delivery).
    pub client: Usage,
    /// Cores busy with anything else on the machine: other processes, and interrupt time not
    /// charged to any process. Large values mean the numbers were disturbed.
    pub other_cores: Option<f64>,
}

impl Window {
    /// The window from `a` to `b`.
    pub fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let wall_ns = b.at.saturating_duration_since(a.at).as_nanos() as u64;
        let deliveries = b.deliveries.saturating_sub(a.deliveries);
        let sent = b.sent.saturating_sub(a.sent);
        let server = match (a.server, b.server) {
            (Some(x), Some(y)) => Some(Usage::between(&x, &y, deliveries)),
            _ => None,
        };
        let client = Usage::between(&a.client, &b.client, deliveries);
        let other_cores = match (a.machine_busy_ns, b.machine_busy_ns) {
            (Some(x), Some(y)) if wall_ns > 0 => {
                let ours = client.cpu_ns + server.map_or(0, |s| s.cpu_ns);
                Some(y.saturating_sub(x).saturating_sub(ours) as f64 / wall_ns as f64)
            }
            _ => None,
        };
        Self {
            seconds: wall_ns as f64 / 1e9,
            deliveries,
            sent,
            deliveries_per_s: crate::report::per_second(deliveries, wall_ns),
            sent_per_s: crate::report::per_second(sent, wall_ns),
            server,
            client,
            other_cores,
        }
    }
}

impl Window {
    /// CPU rows: server (per delivery), this tool, and everything else on the machine.
    pub fn cpu_rows(&self, t: &mut crate::report::Table) {
        if let Some(s) = &self.server {
            s.rows(t, "server", "delivery");
        }
        self.client.rows(t, "client", "delivery");
        if let Some(o) = self.other_cores {
            t.row(
                "other CPU on the machine",
                format!(
                    "{:.1}% of a core (other processes, unattributed interrupts)",
                    o * 100.0
                ),
            );
        }
    }

    /// A warning when something else used noticeable CPU during the window.
    pub fn disturbance(&self) -> Option<String> {
        self.other_cores.filter(|o| *o > 0.15).map(|o| {
            format!(
                "other work used {:.0}% of a core during the window: the numbers may be disturbed",
                o * 100.0
            )
        })
    }
}

/// One second of the timeline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the start of sending.
    pub t_s: f64,
    /// Deliveries per second over this interval.
    pub deliveries_per_s: f64,
    /// Messages sent per second over this interval.
    pub sent_per_s: f64,
    /// Server cores busy over this interval.
    pub server_cores: Option<f64>,
    /// Server RSS at the end of the interval, KiB.
    pub server_rss_kb: Option<u64>,
    /// This process's cores busy over this interval.
    pub client_cores: f64,
}

/// Samples the counters and processes once a second and drives the progress bar.
#[derive(Debug)]
pub struct Monitor {
    server: Option<Servers>,
    client: Watch,
    bar: ProgressBar,
    origin: Instant,
    last: Option<Snapshot>,
    /// Per-second timeline since [`Monitor::start`].
    pub timeline: Vec<TimelinePoint>,
}

impl Monitor {
    /// A monitor of the server processes `server_pids` (if any) and this process.
    pub fn new(server_pids: &[u32]) -> Result<Self> {
        let server = Servers::new(server_pids)?;
        Ok(Self {
            server,
            client: Watch::new(None)?,
            bar: ProgressBar::hidden(),
            origin: Instant::now(),
            last: None,
            timeline: Vec::new(),
        })
    }

    /// Takes a snapshot now.
    pub fn snapshot(&self, shared: &Shared) -> Snapshot {
        let at = Instant::now();
        Snapshot {
            at,
            deliveries: shared.deliveries.load(Relaxed),
            sent: shared.sent.load(Relaxed),
            server: self.server.as_ref().and_then(|w| w.sample().ok()),
            client: self.client.sample().unwrap_or(ProcSample {
                at,
                cpu_ns: 0,
                rss_kb: 0,
            }),
            machine_busy_ns: crate::procstat::machine_busy_ns().ok(),
        }
    }

    /// Starts the timeline and a progress bar of `total` length (seconds).
    pub fn start(&mut self, shared: &Shared, total: Duration, label: &str) -> Snapshot {
        self.bar = ProgressBar::new((total.as_secs_f64() * 10.0).ceil() as u64);
        self.bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:20}] {elapsed:>3} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        self.bar.set_prefix(label.to_string());
        self.origin = Instant::now();
        let s = self.snapshot(shared);
        self.last = Some(s);
        s
    }

    /// Sleeps until `deadline` (or the first failure, see [`Shared::has_failures`]), sampling
    /// once a second;
    /// returns a snapshot taken then.
    pub fn run_until(&mut self, shared: &Shared, deadline: Instant, phase_label: &str) -> Snapshot {
        loop {
            let now = Instant::now();
            if now >= deadline || shared.has_failures() {
                break;
            }
            let next_tick = self
                .last
                .map_or(now, |l| l.at + Duration::from_secs(1))
                .min(deadline);
            let step = next_tick
                .saturating_duration_since(now)
                .min(Duration::from_millis(100));
            std::thread::sleep(step);
            self.bar
                .set_position((self.origin.elapsed().as_secs_f64() * 10.0) as u64);
            if self
                .last
                .is_some_and(|l| l.at.elapsed() >= Duration::from_secs(1))
            {
                self.tick(shared, phase_label);
            }
        }
        let s = self.snapshot(shared);
        self.push_point(&s);
        s
    }

    fn tick(&mut self, shared: &Shared, phase_label: &str) {
        let s = self.snapshot(shared);
        let p = self.push_point(&s);
        // Short enough for an 80-column terminal: "measuring 2.045 M/s srv 99% cli 72%".
        let server = p
            .server_cores
            .map(|c| format!(" srv {:.0}%", c * 100.0))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "{phase_label} {}{server} cli {:.0}%",
            fmt_rate(p.deliveries_per_s),
            p.client_cores * 100.0
        ));
    }

    fn push_point(&mut self, s: &Snapshot) -> TimelinePoint {
        let last = self.last.unwrap_or(*s);
        let w = Window::between(&last, s);
        let p = TimelinePoint {
            t_s: s.at.saturating_duration_since(self.origin).as_secs_f64(),
            deliveries_per_s: w.deliveries_per_s,
            sent_per_s: w.sent_per_s,
            server_cores: w.server.map(|u| u.cores),
            server_rss_kb: s.server.map(|x| x.rss_kb),
            client_cores: w.client.cores,
        };
        if w.seconds > 0.05 {
            self.timeline.push(p);
        }
        self.last = Some(*s);
        p
    }

    /// Clears the progress bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let s = Shared::new();
        assert_eq!(s.phase(), Phase::Setup);
        s.set_phase(Phase::Drain);
        s.set_phase(Phase::Run);
        assert_eq!(s.phase(), Phase::Drain);
    }

    #[test]
    fn a_server_error_frame_voids_the_run() {
        let s = Shared::new();
        assert!(!s.has_failures());
        assert!(s.check_no_failures().is_ok());
        s.server_error(br#"{"type":"error","payload":{"code":"RATE_LIMITED"}}"#);
        s.server_error(b"second");
        assert!(s.has_failures());
        assert_eq!(s.server_errors.load(Relaxed), 2);
        let e = s.check_no_failures().unwrap_err().to_string();
        assert!(
            e.contains("RATE_LIMITED") && e.contains("2 error frame"),
            "{e}"
        );
        assert_eq!(s.phase(), Phase::Done);
    }

    #[test]
    fn a_failed_client_voids_the_run() {
        let s = Shared::new();
        for i in 0..20 {
            s.fail(format!("client {i}: closed"));
        }
        assert_eq!(s.errors().len(), KEEP_ERRORS);
        let e = s.check_no_failures().unwrap_err().to_string();
        assert!(
            e.contains("20 connection(s) failed") && e.contains("client 0: closed"),
            "{e}"
        );
    }

    #[test]
    fn window_arithmetic() {
        let t0 = Instant::now();
        let p = |at, cpu| ProcSample {
            at,
            cpu_ns: cpu,
            rss_kb: 1,
        };
        let a = Snapshot {
            at: t0,
            deliveries: 1_000,
            sent: 10,
            server: Some(p(t0, 0)),
            client: p(t0, 0),
            machine_busy_ns: Some(0),
        };
        let t1 = t0 + Duration::from_secs(2);
        let b = Snapshot {
            at: t1,
            deliveries: 4_001_000,
            sent: 125_010,
            server: Some(p(t1, 1_000_000_000)),
            client: p(t1, 400_000_000),
            machine_busy_ns: Some(1_500_000_000),
        };
        let w = Window::between(&a, &b);
        assert_eq!(w.deliveries, 4_000_000);
        assert_eq!(w.deliveries_per_s, 2_000_000.0);
        assert_eq!(w.sent_per_s, 62_500.0);
        assert_eq!(w.server.unwrap().cpu_ns_per_unit, Some(250.0));
        assert_eq!(w.client.cpu_ns_per_unit, Some(100.0));
        // 1.5 s busy - 1.0 s server - 0.4 s client = 0.1 s over 2 s.
        assert!((w.other_cores.unwrap() - 0.05).abs() < 1e-9);
    }
}
