//! `storm`: connections plus authentication as fast as possible (or at a set rate) until a
//! count is reached; reports connections per second and the latency of each step.
//!
//! Each attempt measures, from just before its TCP connect: the TCP connect, the 101 upgrade
//! response, and the `connected` frame (authentication done). By default each connection is
//! closed once authenticated (a reconnect storm); `--keep` holds them all to the end (a login
//! storm building up load), which is bounded by this process's open-file limit.
//!
//! Guarantees:
//! - Closed loop (`--rate 0`, the default): `--concurrency` attempts in flight at all times.
//!   Open loop (`--rate R`): attempt j starts at `start + j/R` whatever the server does.
//! - Every attempt ends within `--connect-timeout` and the run within `--max-duration`.
//! - Connection rate = authenticated connections / time from the first attempt to the last
//!   completion.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{connect, token_for, Conn, ConnectOpts};
use crate::common::{default_source, open_file_limit, parse_duration, Common};
use crate::frames::Kind;
use crate::handshake::Target;
use crate::procstat::{Servers, Watch};
use crate::rate::{now_ns, Schedule};
use crate::report::{fmt_count, fmt_rate, latency_histogram, Percentiles, Table, Usage};
use crate::run::{self, wait_phase, Phase, Shared};

/// Options of the `storm` scenario.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// Connections to open and authenticate.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Attempts per second (0: closed loop with --concurrency in flight).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Attempts in flight (closed loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// Keep every connection open until the end instead of closing it once authenticated.
    #[arg(long)]
    pub keep: bool,
    /// Distinct users [default: count]; beyond them, second devices `t<i>.<d>`
    /// (socket-server only).
    #[arg(long)]
    pub users: Option<u64>,
    /// Source addresses to rotate over: 127.0.0.1 .. 127.0.0.N (more ports for TIME_WAIT).
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// Upper bound on the whole run.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub max_duration: Duration,
}

/// Result of a `storm` run.
#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    /// Always "storm".
    pub scenario: &'static str,
    /// Server URL.
    pub url: String,
    /// Attempts made.
    pub attempted: u64,
    /// Authenticated.
    pub connected: u64,
    /// Failed or timed out.
    pub failed: u64,
    /// First failure reasons.
    pub errors: Vec<String>,
    /// Seconds from the first attempt to the last completion.
    pub seconds: f64,
    /// Authenticated connections per second.
    pub connections_per_s: f64,
    /// TCP connect time.
    pub tcp: Percentiles,
    /// TCP connect start -> 101 response.
    pub upgrade: Percentiles,
    /// TCP connect start -> `connected` frame.
    pub auth: Percentiles,
    /// Server CPU over the run, per authenticated connection.
    pub server: Option<Usage>,
    /// This process's CPU over the run, per authenticated connection.
    pub client: Usage,
}

struct Hists {
    tcp: Histogram<u64>,
    upgrade: Histogram<u64>,
    auth: Histogram<u64>,
}

struct Ctx {
    target: Target,
    shared: Arc<Shared>,
    args: StormArgs,
    users: u64,
    rooms: u64,
    first_user: u64,
    timeout: Duration,
    next: AtomicU64,
    sources: Vec<Ipv4Addr>,
}

async fn attempt(ctx: &Ctx, j: u64, hists: &RefCell<Hists>) -> Option<Conn> {
    let source = (ctx.sources.len() > 1).then(|| ctx.sources[j as usize % ctx.sources.len()]);
    let opts = ConnectOpts {
        target: &ctx.target,
        token: token_for(j, ctx.first_user, ctx.rooms, ctx.users),
        source,
        recv_capacity: 2048,
        seed: j + 1,
    };
    let token = opts.token.clone();
    match tokio::time::timeout(ctx.timeout, connect(opts)).await {
        Ok(Ok((conn, t))) => {
            let mut h = hists.borrow_mut();
            h.tcp.saturating_record(t.tcp.as_nanos() as u64);
            h.upgrade.saturating_record(t.upgraded.as_nanos() as u64);
            h.auth.saturating_record(t.authenticated.as_nanos() as u64);
            ctx.shared.connected.fetch_add(1, Relaxed);
            Some(conn)
        }
        Ok(Err(e)) => {
            ctx.shared.fail(format!("{token}: {e:#}"));
            None
        }
        Err(_) => {
            ctx.shared
                .fail(format!("{token}: timed out after {:?}", ctx.timeout));
            None
        }
    }
}

/// Holds a kept connection: reads (presence floods) and answers pings until the run ends.
async fn hold(mut conn: Conn) {
    while conn.pump(|_: Kind, _| {}).await.is_ok() {}
}

/// Runs the scenario.
pub fn run(common: &Common, args: &StormArgs) -> Result<StormResult> {
    if args.count == 0 || args.concurrency == 0 || args.sources == 0 {
        bail!("--count, --concurrency and --sources must be at least 1");
    }
    if args.rate < 0.0 || !args.rate.is_finite() {
        bail!("--rate must be 0 (closed loop) or positive");
    }
    if args.keep && args.count + 256 > open_file_limit() {
        bail!(
            "--keep with {} connections exceeds this process's open-file limit ({}); use the \
             connections scenario for more",
            args.count,
            open_file_limit()
        );
    }
    let threads = common.threads();
    let shared = Shared::new();
    let ctx = Arc::new(Ctx {
        target: common.target()?,
        shared: Arc::clone(&shared),
        args: args.clone(),
        users: args.users.unwrap_or(args.count).max(1),
        rooms: common.rooms.max(1),
        first_user: common.first_user,
        timeout: common.connect_timeout,
        next: AtomicU64::new(0),
        sources: (0..args.sources)
            .map(default_source)
            .collect::<Result<_>>()?,
    });
    let server = Servers::new(&common.server_pid)?;
    let me = Watch::new(None)?;
    let s0 = server.as_ref().map(Servers::sample).transpose()?;
    let c0 = me.sample()?;
    let t0 = Instant::now();
    let start_ns = now_ns();
    let last_done = Arc::new(AtomicU64::new(start_ns));
    let workers = {
        let ctx = Arc::clone(&ctx);
        let last_done = Arc::clone(&last_done);
        run::spawn_workers(threads, move |i| {
            let ctx = Arc::clone(&ctx);
            let last_done = Arc::clone(&last_done);
            async move {
                let hists = Rc::new(RefCell::new(Hists {
                    tcp: latency_histogram(),
                    upgrade: latency_histogram(),
                    auth: latency_histogram(),
                }));
                let mut rx = ctx.shared.phase_rx();
                let count = ctx.args.count;
                if ctx.args.rate > 0.0 {
                    // Open loop: this thread's share of the global schedule.
                    let sched = Schedule::new(start_ns, u64::MAX, ctx.args.rate, threads as u64);
                    let mut seq = 0;
                    loop {
                        let j = sched.global_index(i as u64, seq);
                        if j >= count {
                            break;
                        }
                        let due = sched.due_ns(j);
                        let now = now_ns();
                        if due > now {
                            tokio::time::sleep(Duration::from_nanos(due - now)).await;
                        }
                        let (ctx, hists, last_done) =
                            (Arc::clone(&ctx), Rc::clone(&hists), Arc::clone(&last_done));
                        tokio::task::spawn_local(async move {
                            let conn = attempt(&ctx, j, &hists).await;
                            last_done.fetch_max(now_ns(), Relaxed);
                            if let (Some(c), true) = (conn, ctx.args.keep) {
                                hold(c).await;
                            }
                        });
                        seq += 1;
                    }
                } else {
                    // Closed loop: this thread's share of the in-flight attempts.
                    let mine = (ctx.args.concurrency / threads as u64)
                        + u64::from((i as u64) < ctx.args.concurrency % threads as u64);
                    for _ in 0..mine {
                        let (ctx, hists, last_done) =
                            (Arc::clone(&ctx), Rc::clone(&hists), Arc::clone(&last_done));
                        tokio::task::spawn_local(async move {
                            loop {
                                let j = ctx.next.fetch_add(1, Relaxed);
                                if j >= count {
                                    break;
                                }
                                let conn = attempt(&ctx, j, &hists).await;
                                last_done.fetch_max(now_ns(), Relaxed);
                                if let (Some(c), true) = (conn, ctx.args.keep) {
                                    tokio::task::spawn_local(hold(c));
                                }
                            }
                        });
                    }
                }
                wait_phase(&mut rx, Phase::Done).await;
                let h = hists.borrow();
                (h.tcp.clone(), h.upgrade.clone(), h.auth.clone())
            }
        })?
    };
    shared.set_phase(Phase::Run);
    let bar = indicatif::ProgressBar::new(args.count);
    bar.set_style(
        indicatif::ProgressStyle::with_template("storm [{bar:20}] {pos}/{len} {elapsed} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let finished = run::wait_until(args.max_duration, || {
        let c = shared.connected.load(Relaxed);
        let f = shared.failed.load(Relaxed);
        bar.set_position(c + f);
        bar.set_message(format!("{} failed", fmt_count(f)));
        c + f >= args.count
    });
    bar.finish_and_clear();
    let s1 = server.as_ref().map(Servers::sample).transpose()?;
    let c1 = me.sample()?;
    shared.set_phase(Phase::Done);
    let parts = run::join_workers(workers)?;
    let (mut tcp, mut upgrade, mut auth) = (
        latency_histogram(),
        latency_histogram(),
        latency_histogram(),
    );
    for (a, b, c) in &parts {
        tcp.add(a).ok();
        upgrade.add(b).ok();
        auth.add(c).ok();
    }
    let connected = shared.connected.load(Relaxed);
    let failed = shared.failed.load(Relaxed);
    let seconds = if finished {
        last_done.load(Relaxed).saturating_sub(start_ns) as f64 / 1e9
    } else {
        t0.elapsed().as_secs_f64()
    };
    if !finished {
        eprintln!("warning: stopped by --max-duration before all attempts finished");
    }
    Ok(StormResult {
        scenario: "storm",
        url: common.url.clone(),
        attempted: connected + failed,
        connected,
        failed,
        errors: shared.errors(),
        seconds,
        connections_per_s: if seconds > 0.0 {
            connected as f64 / seconds
        } else {
            0.0
        },
        tcp: Percentiles::of(&tcp),
        upgrade: Percentiles::of(&upgrade),
        auth: Percentiles::of(&auth),
        server: match (s0, s1) {
            (Some(a), Some(b)) => Some(Usage::between(&a, &b, connected)),
            _ => None,
        },
        client: Usage::between(&c0, &c1, connected),
    })
}

impl StormResult {
    /// The summary table.
    pub fn table(&self) -> Table {
        let mut t = Table::new();
        t.section(&format!("storm: {}", self.url));
        t.row("authenticated", fmt_count(self.connected));
        t.row("failed", fmt_count(self.failed));
        for e in self.errors.iter().take(3) {
            t.row("error", e.clone());
        }
        t.row("elapsed", format!("{:.2} s", self.seconds));
        t.row("connections/s", fmt_rate(self.connections_per_s));
        t.section("latency from TCP connect start");
        self.tcp.rows(&mut t, "tcp connect");
        self.upgrade.rows(&mut t, "101 upgrade");
        self.auth.rows(&mut t, "`connected`");
        t.section("CPU");
        if let Some(s) = &self.server {
            s.rows(&mut t, "server", "connection");
        }
        self.client.rows(&mut t, "client", "connection");
        t
    }
}
