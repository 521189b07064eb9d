//! `latency`: a fixed total send rate into one chat, end-to-end latency of every delivery.
//!
//! R clients join the chat; the first S of them send, at `--rate` messages per second in total
//! (the schedule of [`crate::rate::Schedule`], evenly interleaved over the senders). Every
//! message reaches all R clients, so deliveries per second = rate x R.
//!
//! Guarantees:
//! - Coordinated-omission safe: each message carries its *scheduled* send time in its content
//!   (`lt:<sender>:<seq>:<scheduled ns>`), and latency = receive time - scheduled time. A sender
//!   that wakes late sends everything it owes at once, stamped with the original times, so any
//!   stall (server or client) is charged to every message it delayed.
//! - Timing: a dedicated ticker thread sleeps with 1 µs timer slack until each scheduled time
//!   and wakes the sender; the senders have a worker thread of their own (the receivers use
//!   `--threads` others), so due sends never wait behind a burst of receives. How late the
//!   actual send was is reported separately ("send lag"), so the generator's own timing error
//!   is visible next to the latencies.
//! - The receive time is taken once per socket read, right after it returns; the stamp is found
//!   by a substring search (no JSON parse).
//! - Only messages scheduled inside the measured window (after `--warmup`) are recorded; every
//!   such message is expected R times, and the ones that never arrived (within `--drain`) are
//!   reported as lost rather than silently dropped from the percentiles.

use std::cell::RefCell;
use std::io::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Notify;

use super::{await_setup, drain_frames, idle_until, open_chat_client, ChatCtx};
use crate::common::{parse_duration, Common};
use crate::frames::find;
use crate::rate::{now_ns, Schedule};
use crate::report::{fmt_count, fmt_ns, fmt_rate, latency_histogram, Percentiles, Table};
use crate::run::{self, wait_phase, Monitor, Phase, Shared, Window};

/// Options of the `latency` scenario.
#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Clients in the chat (all receive every message).
    #[arg(long, default_value_t = 32)]
    pub clients: u64,
    /// How many of the clients send.
    #[arg(long, default_value_t = 4)]
    pub senders: u64,
    /// Messages per second, all senders together (deliveries/s = rate x clients).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Length of the measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Sending before the measured window (not recorded).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Longest wait for in-flight messages after the last scheduled send.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub drain: Duration,
}

/// Result of a `latency` run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    /// Always "latency".
    pub scenario: &'static str,
    /// Server URL.
    pub url: String,
    /// Clients in the chat.
    pub clients: u64,
    /// Sending clients.
    pub senders: u64,
    /// Target messages per second.
    pub rate: f64,
    /// Target deliveries per second (rate x clients).
    pub target_deliveries_per_s: f64,
    /// Receiving worker threads (the senders have one more of their own).
    pub threads: usize,
    /// Throughput and CPU over the measured window.
    pub measured: Window,
    /// End-to-end latency (scheduled send -> receive) of deliveries in the window.
    pub latency: Percentiles,
    /// Actual send time - scheduled send time (the generator's timing error).
    pub send_lag: Percentiles,
    /// Messages scheduled in the window.
    pub window_messages: u64,
    /// `window_messages * clients`.
    pub expected_deliveries: u64,
    /// Deliveries of window messages that never arrived.
    pub lost: u64,
    /// `error` frames received (a rate limit, for instance).
    pub server_errors: u64,
    /// The first `error` frame, verbatim.
    pub first_server_error: Option<String>,
    /// Latency histogram buckets for plotting: (upper bound ns, count).
    #[serde(skip)]
    pub histogram: Vec<(u64, u64)>,
}

/// The scheduled time in a latency message (`..."content":"lt:<s>:<seq>:<ns>"...`).
pub fn parse_stamp(payload: &[u8]) -> Option<(u64, u64, u64)> {
    let at = find(payload, b"\"lt:")?;
    let mut it = payload[at + 4..].split(|&b| b == b':' || b == b'"');
    let mut num = || -> Option<u64> {
        let f = it.next()?;
        if f.is_empty() || f.len() > 20 {
            return None;
        }
        f.iter().try_fold(0u64, |acc, &b| {
            b.is_ascii_digit()
                .then(|| acc.checked_mul(10)?.checked_add(u64::from(b - b'0')))?
        })
    };
    Some((num()?, num()?, num()?))
}

fn payload(out: &mut Vec<u8>, chat_json: &str, sender: u64, seq: u64, sched_ns: u64) {
    out.clear();
    out.extend_from_slice(br#"{"type":"chat:message","payload":{"chatId":"#);
    out.extend_from_slice(chat_json.as_bytes());
    let _ = write!(out, r#","content":"lt:{sender}:{seq}:{sched_ns}"}}}}"#);
}

/// Per-thread measurements.
struct Part {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
}

struct Ctx {
    chat: ChatCtx,
    args: LatencyArgs,
    schedule: OnceLock<Schedule>,
    window_start_ns: AtomicU64,
    wake: Vec<Arc<Notify>>,
}

fn record(part: &RefCell<Part>, now: u64, window_start: u64, end: u64, payload: &[u8]) -> bool {
    match parse_stamp(payload) {
        Some((_, _, sched)) if sched >= window_start && sched < end => {
            part.borrow_mut()
                .latency
                .saturating_record(now.saturating_sub(sched).max(1));
            true
        }
        _ => false,
    }
}

async fn client(
    ctx: Arc<Ctx>,
    part: Rc<RefCell<Part>>,
    recorded: Arc<AtomicU64>,
    j: u64,
) -> Result<()> {
    let shared = &ctx.chat.shared;
    let (mut conn, chat_json) = open_chat_client(&ctx.chat, j, 64 * 1024).await?;
    shared.connected.fetch_add(1, Relaxed);
    let mut rx = shared.phase_rx();
    idle_until(&mut conn, &mut rx, Phase::Run, shared).await?;
    let sched = *ctx.schedule.get().context("no schedule at start")?;
    let win = ctx.window_start_ns.load(Relaxed);
    let sender = (j < ctx.args.senders).then(|| Arc::clone(&ctx.wake[j as usize]));
    let mut seq = 0u64;
    let mut buf = Vec::with_capacity(160);
    loop {
        let woke = match &sender {
            Some(n) => tokio::select! {
                biased;
                _ = n.notified() => None,
                r = conn.read() => Some(r?),
            },
            None => Some(conn.read().await?),
        };
        if let Some(n) = woke {
            if n == 0 {
                bail!("server closed the connection");
            }
            let now = now_ns();
            let mut rec = 0u64;
            drain_frames(&mut conn, shared, |p| {
                rec += u64::from(record(&part, now, win, sched.end_ns, p));
            })?;
            recorded.fetch_add(rec, Relaxed);
        }
        if sender.is_some() {
            let now = now_ns();
            let due = sched.due_for_sender(j, now);
            let mut n = 0;
            while seq < due {
                let at = sched.due_ns(sched.global_index(j, seq));
                payload(&mut buf, &chat_json, j, seq, at);
                conn.queue_text(&buf);
                part.borrow_mut()
                    .lag
                    .saturating_record(now.saturating_sub(at).max(1));
                seq += 1;
                n += 1;
            }
            if n > 0 {
                shared.sent.fetch_add(n, Relaxed);
            }
        }
        conn.flush().await?;
    }
}

/// Wakes each sender at its scheduled times (the schedule itself decides what is due).
fn ticker(sched: Schedule, wake: Vec<Arc<Notify>>, stop: Arc<AtomicBool>) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
    let total = sched.total();
    let mut k = 0;
    while k < total && !stop.load(Relaxed) {
        let due = sched.due_ns(k);
        let now = now_ns();
        if due > now {
            // Sleep in slices of at most 100 ms so a stop is seen promptly.
            std::thread::sleep(Duration::from_nanos((due - now).min(100_000_000)));
            if now_ns() < due {
                continue;
            }
        }
        let upto = sched.due_by(now_ns()).max(k + 1);
        for m in k..upto.min(k + sched.senders) {
            wake[sched.sender_of(m) as usize].notify_one();
        }
        k = upto;
    }
}

/// Runs the scenario.
pub fn run(common: &Common, args: &LatencyArgs) -> Result<LatencyResult> {
    if args.clients == 0 || args.senders == 0 || args.senders > args.clients {
        bail!("need 1 <= --senders <= --clients");
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be positive");
    }
    let threads = common.threads().min(args.clients as usize);
    let shared = Shared::new();
    let ctx = Arc::new(Ctx {
        chat: ChatCtx::new(common, args.clients, Arc::clone(&shared))?,
        args: args.clone(),
        schedule: OnceLock::new(),
        window_start_ns: AtomicU64::new(0),
        wake: (0..args.senders).map(|_| Arc::new(Notify::new())).collect(),
    });
    let recorded = Arc::new(AtomicU64::new(0));
    let mut monitor = Monitor::new(&common.server_pid)?;
    let clients = args.clients;
    let workers = {
        let ctx = Arc::clone(&ctx);
        let recorded = Arc::clone(&recorded);
        // Workers 0..threads receive; worker `threads` owns the senders, so a burst of
        // receives never queues a due send behind it.
        let senders = args.senders;
        run::spawn_workers(threads + 1, move |i| {
            let ctx = Arc::clone(&ctx);
            let recorded = Arc::clone(&recorded);
            async move {
                let part = Rc::new(RefCell::new(Part {
                    latency: latency_histogram(),
                    lag: latency_histogram(),
                }));
                let mut rx = ctx.chat.shared.phase_rx();
                let mine: Vec<u64> = if i == threads {
                    (0..senders).collect()
                } else {
                    (senders + i as u64..clients).step_by(threads).collect()
                };
                for j in mine {
                    let (ctx, part, recorded) =
                        (Arc::clone(&ctx), Rc::clone(&part), Arc::clone(&recorded));
                    tokio::task::spawn_local(async move {
                        if let Err(e) = client(Arc::clone(&ctx), part, recorded, j).await {
                            if ctx.chat.shared.phase() < Phase::Done {
                                ctx.chat.shared.fail(format!("client {j}: {e:#}"));
                            }
                        }
                    });
                }
                wait_phase(&mut rx, Phase::Done).await;
                let p = part.borrow();
                (p.latency.clone(), p.lag.clone())
            }
        })?
    };

    if let Err(e) = await_setup(&shared, clients, common.connect_timeout) {
        run::join_workers(workers)?;
        return Err(e);
    }
    // The schedule starts a little ahead so every sender is waiting when slot 0 comes.
    let start_ns = now_ns() + 5_000_000;
    let win_ns = start_ns + args.warmup.as_nanos() as u64;
    let end_ns = win_ns + args.duration.as_nanos() as u64;
    let sched = Schedule::new(start_ns, end_ns, args.rate, args.senders);
    ctx.schedule.set(sched).ok();
    ctx.window_start_ns.store(win_ns, Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let tick = {
        let (wake, stop) = (ctx.wake.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("loadtest-ticker".into())
            .spawn(move || ticker(sched, wake, stop))?
    };
    shared.set_phase(Phase::Run);
    let start = Instant::now() + Duration::from_nanos(start_ns.saturating_sub(now_ns()));
    monitor.start(&shared, args.warmup + args.duration, "latency");
    let w0 = monitor.run_until(&shared, start + args.warmup, "warm-up");
    let w1 = monitor.run_until(&shared, start + args.warmup + args.duration, "measuring");
    if let Err(e) = shared.check_no_failures() {
        monitor.finish();
        stop.store(true, Relaxed);
        let _ = tick.join();
        run::join_workers(workers)?;
        return Err(e);
    }
    let total = sched.total();
    run::wait_until(args.drain, || {
        let sent = shared.sent.load(Relaxed);
        sent >= total && shared.deliveries.load(Relaxed) >= sent * clients
    });
    monitor.finish();
    stop.store(true, Relaxed);
    shared.set_phase(Phase::Done);
    let _ = tick.join();
    let parts = run::join_workers(workers)?;
    let mut lat = latency_histogram();
    let mut lag = latency_histogram();
    for (l, g) in &parts {
        lat.add(l).ok();
        lag.add(g).ok();
    }
    if shared.failed.load(Relaxed) > 0 {
        eprintln!(
            "warning: clients failed while draining: {}",
            shared.errors().join("; ")
        );
    }
    let window_messages = total - sched.count_before(win_ns);
    let expected = window_messages * clients;
    let histogram = lat
        .iter_log(1_000, 1.25)
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .collect();
    Ok(LatencyResult {
        scenario: "latency",
        url: common.url.clone(),
        clients,
        senders: args.senders,
        rate: args.rate,
        target_deliveries_per_s: args.rate * clients as f64,
        threads,
        measured: Window::between(&w0, &w1),
        latency: Percentiles::of(&lat),
        send_lag: Percentiles::of(&lag),
        window_messages,
        expected_deliveries: expected,
        lost: expected.saturating_sub(lat.len()),
        server_errors: shared.server_errors.load(Relaxed),
        first_server_error: shared.first_server_error(),
        histogram,
    })
}

impl LatencyResult {
    /// The summary table.
    pub fn table(&self) -> Table {
        let m = &self.measured;
        let mut t = Table::new();
        t.section(&format!(
            "latency: {} clients ({} sending) at {} msgs = {} deliveries target, {}",
            self.clients,
            self.senders,
            fmt_rate(self.rate),
            fmt_rate(self.target_deliveries_per_s),
            self.url
        ));
        t.row("measured window", format!("{:.2} s", m.seconds));
        t.row("deliveries/s", fmt_rate(m.deliveries_per_s));
        t.row("messages sent/s", fmt_rate(m.sent_per_s));
        t.section("end-to-end latency (from scheduled send time)");
        self.latency.rows(&mut t, "latency");
        t.row(
            "lost",
            format!(
                "{} of {} expected deliveries",
                fmt_count(self.lost),
                fmt_count(self.expected_deliveries)
            ),
        );
        t.row("server error frames", fmt_count(self.server_errors));
        if let Some(e) = &self.first_server_error {
            t.row("first server error", e.clone());
        }
        t.section("generator timing (actual - scheduled send)");
        t.row("send lag p50", fmt_ns(self.send_lag.p50_ns as f64));
        t.row("send lag p99", fmt_ns(self.send_lag.p99_ns as f64));
        t.row("send lag p99.9", fmt_ns(self.send_lag.p999_ns as f64));
        t.row("send lag max", fmt_ns(self.send_lag.max_ns as f64));
        t.section("CPU");
        m.cpu_rows(&mut t);
        if let Some(d) = m.disturbance() {
            t.section("warning");
            t.row("machine", d);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_roundtrip() {
        let mut b = Vec::new();
        payload(&mut b, "\"c0\"", 3, 42, 123_456_789_012);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["payload"]["content"], "lt:3:42:123456789012");
        // As the server echoes it, inside the message object.
        let echoed: &[u8] = br#"{"type":"chat:message","payload":{"chatId":"c0","message":{"id":"m1","chatId":"c0","senderId":"u3","senderName":"User 3","content":"lt:3:42:123456789012","createdAt":"2024-01-01T00:00:00.000Z"}}}"#;
        assert_eq!(parse_stamp(echoed), Some((3, 42, 123_456_789_012)));
        assert_eq!(parse_stamp(b"{\"content\":\"hello\"}"), None);
        assert_eq!(parse_stamp(b"\"lt:1:2\""), None);
        assert_eq!(parse_stamp(b"\"lt:1:x:3\""), None);
        assert_eq!(parse_stamp(b"\"lt:1:2:99999999999999999999999\""), None);
    }

    #[test]
    fn records_only_window_messages() {
        let part = RefCell::new(Part {
            latency: latency_histogram(),
            lag: latency_histogram(),
        });
        let msg = |ns: u64| format!(r#"{{"content":"lt:0:0:{ns}"}}"#);
        assert!(!record(&part, 2_000, 1_000, 5_000, msg(999).as_bytes()));
        assert!(record(&part, 2_000, 1_000, 5_000, msg(1_000).as_bytes()));
        assert!(!record(&part, 6_000, 1_000, 5_000, msg(5_000).as_bytes()));
        let h = &part.borrow().latency;
        assert_eq!(h.len(), 1);
        assert_eq!(h.max(), 1_000);
    }
}
