//! `chat`: R clients in one chat, each sending short messages in closed-loop rounds; every
//! message is delivered to all R (the sender included). Measures deliveries per second.
//!
//! The send rule (a per-client closed-loop window of W rounds): client `j` sends its `k`-th
//! message (k = 1, 2, ...) once it has received `(k - W) * R` chat messages. With W = 1 (the
//! default) this is Bun's chat benchmark rule applied per client: a client sends its next
//! message once it has received all R messages of the previous round. Larger W keeps W rounds
//! in flight (more pipelining). The rule cannot deadlock while every message reaches everyone.
//!
//! The round rule (`--round-size M`, the Bun peer's own benchmark rule): each client sends M
//! messages at once, and its next M once it has received every message of the round (M x R);
//! a client can only have them all once every client finished the round, so rounds are global.
//! Both rules are one formula: message k belongs to round ceil(k / M) and is sent once
//! `(round - W) * M * R` messages arrived; M = 1 is the window rule, W = 1 the round rule.
//!
//! Guarantees:
//! - Received frames are counted by walking frame headers and comparing the `"type"` bytes;
//!   nothing is JSON-parsed. Only `chat:message` frames count as deliveries.
//! - Rates come from the measured window only (after `--warmup`, for `--duration`); then
//!   sending stops and in-flight messages are awaited (up to `--drain`), so the totals can be
//!   checked: `total_deliveries == total_sent * clients` when nothing was lost.
//! - Server CPU per delivery is the server's CPU time in the window over the window's
//!   deliveries (client-bound or not).

use std::io::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::{await_setup, bottleneck_note, count_frames, idle_until, open_chat_client, ChatCtx};
use crate::common::{parse_duration, Common};
use crate::report::{fmt_count, fmt_rate, Table};
use crate::run::{self, wait_phase, Monitor, Phase, Shared, TimelinePoint, Window};

/// Options of the `chat` scenario.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// Clients in the chat (tokens t0..t(R-1), ROOMS apart); every message reaches all of them.
    #[arg(long, default_value_t = 32)]
    pub clients: u64,
    /// Length of the measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Sending before the measured window starts (not counted).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Rounds in flight per client: message k is sent once (k - W) * R messages arrived.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,
    /// Messages each client sends per round (the round rule): its next round starts once it has
    /// received all M x R messages of the round. 1 = the plain window rule.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub round_size: u64,
    /// Content length of each message, bytes.
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// Longest wait for in-flight messages after the window.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub drain: Duration,
}

/// Result of a `chat` run.
#[derive(Debug, Clone, Serialize)]
pub struct ChatResult {
    /// Always "chat".
    pub scenario: &'static str,
    /// Server URL.
    pub url: String,
    /// Clients in the chat.
    pub clients: u64,
    /// Rounds in flight per client.
    pub window: u64,
    /// Messages per client per round.
    pub round_size: u64,
    /// Worker threads.
    pub threads: usize,
    /// The chat used.
    pub chat_id: String,
    /// The measured window.
    pub measured: Window,
    /// Messages sent over the whole run (warm-up and window).
    pub total_sent: u64,
    /// `chat:message` frames received over the whole run, after the drain.
    pub total_deliveries: u64,
    /// `total_sent * clients`.
    pub expected_deliveries: u64,
    /// Whether every message reached every client.
    pub consistent: bool,
    /// Other data frames received (presence, ...), `error` frames excluded.
    pub other_messages: u64,
    /// `error` frames received (a rate limit, for instance: then the run is not a benchmark).
    pub server_errors: u64,
    /// The first `error` frame, verbatim.
    pub first_server_error: Option<String>,
    /// Per-second throughput (from the start of sending).
    pub timeline: Vec<TimelinePoint>,
    /// Set when the load generator, not the server, limited the throughput.
    pub note: Option<String>,
}

/// Whether message `k` (1-based) may be sent once `received` messages arrived, with `w`
/// rounds in flight, `m` messages per round and `r` clients.
fn may_send(k: u64, received: u64, w: u64, m: u64, r: u64) -> bool {
    let round = k.div_ceil(m);
    received >= round.saturating_sub(w) * m * r
}

fn payload(out: &mut Vec<u8>, chat_json: &str, j: u64, k: u64, size: usize) {
    out.clear();
    out.extend_from_slice(br#"{"type":"chat:message","payload":{"chatId":"#);
    out.extend_from_slice(chat_json.as_bytes());
    out.extend_from_slice(br#","content":""#);
    let start = out.len();
    let _ = write!(out, "m{j}.{k}");
    while out.len() - start < size {
        out.push(b'x');
    }
    let _ = write!(out, r#"","clientMessageId":"{j}.{k}"}}}}"#);
}

async fn client(ctx: Arc<ChatCtx>, args: Arc<ChatArgs>, j: u64) -> Result<()> {
    let shared = &ctx.shared;
    let (mut conn, chat_json) = open_chat_client(&ctx, j, 64 * 1024).await?;
    shared.connected.fetch_add(1, Relaxed);
    let mut rx = shared.phase_rx();
    idle_until(&mut conn, &mut rx, Phase::Run, shared).await?;

    let r = ctx.clients;
    let w = args.window;
    let mut received = 0u64;
    let mut next = 1u64;
    let mut buf = Vec::with_capacity(128 + args.size);
    loop {
        if !shared.stop_sending.load(Relaxed) {
            let mut n = 0;
            while may_send(next, received, w, args.round_size, r) {
                payload(&mut buf, &chat_json, j, next, args.size);
                conn.queue_text(&buf);
                next += 1;
                n += 1;
            }
            if n > 0 {
                shared.sent.fetch_add(n, Relaxed);
            }
        }
        conn.flush().await?;
        if conn.read().await? == 0 {
            bail!("server closed the connection");
        }
        received += count_frames(&mut conn, shared)?;
    }
}

/// Runs the scenario.
pub fn run(common: &Common, args: &ChatArgs) -> Result<ChatResult> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let threads = common.threads().min(args.clients as usize);
    let shared = Shared::new();
    let ctx = Arc::new(ChatCtx::new(common, args.clients, Arc::clone(&shared))?);
    let mut monitor = Monitor::new(&common.server_pid)?;
    let a = Arc::new(args.clone());
    let clients = args.clients;
    let workers = {
        let ctx = Arc::clone(&ctx);
        run::spawn_workers(threads, move |i| {
            let ctx = Arc::clone(&ctx);
            let a = Arc::clone(&a);
            async move {
                let mut rx = ctx.shared.phase_rx();
                for j in (i as u64..clients).step_by(threads) {
                    let (ctx, a) = (Arc::clone(&ctx), Arc::clone(&a));
                    tokio::task::spawn_local(async move {
                        if let Err(e) = client(Arc::clone(&ctx), a, j).await {
                            if ctx.shared.phase() < Phase::Done {
                                ctx.shared.fail(format!("client {j}: {e:#}"));
                            }
                        }
                    });
                }
                wait_phase(&mut rx, Phase::Done).await;
            }
        })?
    };

    let setup = await_setup(&shared, clients, common.connect_timeout);
    if let Err(e) = setup {
        run::join_workers(workers)?;
        return Err(e);
    }
    shared.set_phase(Phase::Run);
    let start = Instant::now();
    monitor.start(&shared, args.warmup + args.duration, "chat");
    let w0 = monitor.run_until(&shared, start + args.warmup, "warm-up");
    let w1 = monitor.run_until(&shared, start + args.warmup + args.duration, "measuring");
    if let Err(e) = shared.check_no_failures() {
        monitor.finish();
        run::join_workers(workers)?;
        return Err(e);
    }
    shared.stop_sending.store(true, Relaxed);
    shared.set_phase(Phase::Drain);
    // Wait for the in-flight messages: all sent ones delivered to every client.
    let drained = run::wait_until(args.drain, || {
        let sent = shared.sent.load(Relaxed);
        shared.deliveries.load(Relaxed) >= sent * clients
    });
    monitor.finish();
    shared.set_phase(Phase::Done);
    run::join_workers(workers)?;

    let measured = Window::between(&w0, &w1);
    let total_sent = shared.sent.load(Relaxed);
    let total_deliveries = shared.deliveries.load(Relaxed);
    let failed = shared.failed.load(Relaxed);
    if failed > 0 {
        eprintln!(
            "warning: {failed} clients failed while draining: {}",
            shared.errors().join("; ")
        );
    }
    Ok(ChatResult {
        scenario: "chat",
        url: common.url.clone(),
        clients,
        window: args.window,
        round_size: args.round_size,
        threads,
        chat_id: ctx.chat.get().cloned().unwrap_or_default(),
        measured,
        total_sent,
        total_deliveries,
        expected_deliveries: total_sent * clients,
        consistent: drained && total_deliveries == total_sent * clients,
        other_messages: shared.other.load(Relaxed),
        server_errors: shared.server_errors.load(Relaxed),
        first_server_error: shared.first_server_error(),
        timeline: monitor.timeline.clone(),
        note: bottleneck_note(&measured, threads),
    })
}

impl ChatResult {
    /// The summary table.
    pub fn table(&self) -> Table {
        let m = &self.measured;
        let mut t = Table::new();
        t.section(&format!(
            "chat: {} clients in {}, window {}, round size {}, {} client thread(s), {}",
            self.clients, self.chat_id, self.window, self.round_size, self.threads, self.url
        ));
        t.row("measured window", format!("{:.2} s", m.seconds));
        t.row("deliveries/s", fmt_rate(m.deliveries_per_s));
        t.row("messages sent/s", fmt_rate(m.sent_per_s));
        t.row("deliveries in window", fmt_count(m.deliveries));
        m.cpu_rows(&mut t);
        t.section("consistency (whole run, after drain)");
        t.row("messages sent", fmt_count(self.total_sent));
        t.row(
            "deliveries",
            format!(
                "{} of {} expected ({} x {})",
                fmt_count(self.total_deliveries),
                fmt_count(self.expected_deliveries),
                fmt_count(self.total_sent),
                self.clients
            ),
        );
        t.row(
            "every message reached everyone",
            if self.consistent { "yes" } else { "NO" },
        );
        t.row("other frames", fmt_count(self.other_messages));
        t.row("server error frames", fmt_count(self.server_errors));
        if let Some(e) = &self.first_server_error {
            t.row("first server error", e.clone());
        }
        if let Some(n) = &self.note {
            t.section("note");
            t.row("bottleneck", n.clone());
        }
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
    fn one_formula_for_the_window_and_round_rules() {
        let r = 4;
        // Window rule (M = 1): message k once (k - W) * R arrived.
        assert!(may_send(1, 0, 1, 1, r) && !may_send(2, 3, 1, 1, r) && may_send(2, 4, 1, 1, r));
        assert!(may_send(2, 0, 2, 1, r) && !may_send(3, 3, 2, 1, r));
        // Round rule (M = 3, W = 1): the first three at once, the next three after 3 x 4.
        assert!((1..=3).all(|k| may_send(k, 0, 1, 3, r)));
        assert!(!may_send(4, 11, 1, 3, r) && may_send(4, 12, 1, 3, r) && may_send(6, 12, 1, 3, r));
        assert!(!may_send(7, 23, 1, 3, r) && may_send(7, 24, 1, 3, r));
    }

    #[test]
    fn payload_is_valid_json_of_the_right_shape() {
        let mut b = Vec::new();
        payload(&mut b, "\"c0\"", 3, 17, 16);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "chat:message");
        assert_eq!(v["payload"]["chatId"], "c0");
        assert_eq!(v["payload"]["clientMessageId"], "3.17");
        let content = v["payload"]["content"].as_str().unwrap();
        assert_eq!(content.len(), 16);
        assert!(content.starts_with("m3.17"));
        payload(&mut b, "\"c0\"", 1, 1, 0);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["payload"]["content"], "m1.1");
    }
}
