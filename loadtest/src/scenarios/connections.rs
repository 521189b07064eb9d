//! `connections`: open and hold N authenticated idle connections, then report the server's
//! resident memory per connection.
//!
//! One process may hold only so many sockets (the open-file limit, 20000 here, cannot be
//! raised) and one source address only ~28k connections to one server port (the ephemeral
//! port range). So the connections are spread over child processes (this binary re-executed
//! with the hidden `hold` subcommand), each binding its own 127.0.0.x source address when
//! there is more than one child.
//!
//! Guarantees:
//! - The server's RSS (VmRSS of `--server-pid`) is sampled before the first connection and
//!   again after every child reported all its connections done and `--settle` passed; growth
//!   per connection = (after - before) / connections held at that moment.
//! - Connections that failed or dropped are reported, never counted as held.
//! - Children exit when the parent closes their stdin (or dies), and after `--max-hold` anyway.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::hold::ChildLine;
use crate::common::{
    default_source, ephemeral_ports, open_file_limit, parse_duration, parse_source, Common,
};
use crate::procstat::{Servers, Watch};
use crate::report::{fmt_count, fmt_kib, fmt_ns, fmt_rate, rss_per_connection, Table, Usage};

/// Options of the `connections` scenario.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Connections per child process [default: min(15000, open-file limit - 256)].
    #[arg(long)]
    pub per_process: Option<u64>,
    /// Source addresses to use (repeatable); default: 127.0.0.1, 127.0.0.2, ... one per child.
    #[arg(long = "source", value_parser = parse_source)]
    pub sources: Vec<Ipv4Addr>,
    /// Distinct users [default: count]; more connections than users become second devices
    /// `t<i>.<d>` (socket-server only; the Bun peer accepts only `t<i>`).
    #[arg(long)]
    pub users: Option<u64>,
    /// Handshakes in flight per child.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Wait after the last connection before sampling the server's RSS.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Keep the connections open this long after measuring.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Bound on the whole connecting phase.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
}

/// One child's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Share {
    /// First connection index.
    pub first_conn: u64,
    /// Connections.
    pub count: u64,
    /// Source address (`None`: the kernel's choice).
    pub source: Option<Ipv4Addr>,
}

/// Splits `count` connections over processes of at most `per_process` each, assigning source
/// addresses so that none carries more than `per_source` connections.
pub fn plan(
    count: u64,
    per_process: u64,
    sources: &[Ipv4Addr],
    per_source: u64,
) -> Result<Vec<Share>> {
    if per_process == 0 {
        bail!("--per-process must be at least 1");
    }
    let children = count.div_ceil(per_process).max(1);
    let mut shares = Vec::new();
    let mut load: HashMap<Ipv4Addr, u64> = HashMap::new();
    let mut first = 0;
    for c in 0..children {
        let n = per_process.min(count - first);
        let source = if sources.is_empty() {
            (children > 1)
                .then(|| default_source(c as usize))
                .transpose()?
        } else {
            Some(sources[c as usize % sources.len()])
        };
        if let Some(ip) = source {
            let l = load.entry(ip).or_default();
            *l += n;
            if *l > per_source {
                bail!(
                    "{ip} would carry {l} connections, more than its ~{per_source} ephemeral \
                     ports: give more --source addresses"
                );
            }
        } else if n > per_source {
            bail!("{n} connections from one address exceed its ~{per_source} ephemeral ports");
        }
        shares.push(Share {
            first_conn: first,
            count: n,
            source,
        });
        first += n;
    }
    Ok(shares)
}

/// Result of a `connections` run.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsResult {
    /// Always "connections".
    pub scenario: &'static str,
    /// Server URL.
    pub url: String,
    /// Connections asked for.
    pub requested: u64,
    /// Connections held when the RSS was sampled.
    pub held: u64,
    /// Connections that failed or dropped.
    pub failed: u64,
    /// First failure reasons, one per child at most.
    pub errors: Vec<String>,
    /// How the connections were spread.
    pub processes: Vec<Share>,
    /// Time until every child had finished connecting, seconds.
    pub connect_seconds: f64,
    /// Connections authenticated per second over that time.
    pub connect_rate: f64,
    /// Server RSS before connecting, KiB.
    pub server_rss_before_kb: Option<u64>,
    /// Server RSS after connecting and settling, KiB.
    pub server_rss_after_kb: Option<u64>,
    /// (after - before) / held, bytes.
    pub server_rss_per_connection_bytes: Option<f64>,
    /// Server CPU from before connecting to the RSS sample, per connection held.
    pub server: Option<Usage>,
    /// CPU of this process and its children (ns), whole run.
    pub client_cpu_ns: u64,
}

fn spawn_child(
    common: &Common,
    args: &ConnectionsArgs,
    share: &Share,
    users: u64,
) -> Result<Child> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--url")
        .arg(&common.url)
        .arg("--rooms")
        .arg(common.rooms.to_string())
        .arg("--first-user")
        .arg(common.first_user.to_string())
        .arg("--connect-timeout")
        .arg(format!("{}ms", common.connect_timeout.as_millis()))
        .arg("hold")
        .arg("--first-conn")
        .arg(share.first_conn.to_string())
        .arg("--count")
        .arg(share.count.to_string())
        .arg("--users")
        .arg(users.to_string())
        .arg("--concurrency")
        .arg(args.concurrency.to_string())
        .arg("--max-hold")
        .arg(format!(
            "{}s",
            (args.setup_timeout + args.settle + args.hold).as_secs() + 60
        ));
    if let Some(ip) = share.source {
        cmd.arg("--source").arg(ip.to_string());
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning a hold child")
}

/// Runs the scenario.
pub fn run(common: &Common, args: &ConnectionsArgs) -> Result<ConnectionsResult> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    common.target()?;
    let per_process = args
        .per_process
        .unwrap_or_else(|| 15_000u64.min(open_file_limit().saturating_sub(256)).max(1));
    let per_source = ephemeral_ports().saturating_sub(500);
    let shares = plan(args.count, per_process, &args.sources, per_source)?;
    let users = args.users.unwrap_or(args.count).max(1);
    let server = Servers::new(&common.server_pid)?;
    let me = Watch::new(None)?;
    let me0 = me.sample()?;
    let server0 = server.as_ref().map(Servers::sample).transpose()?;

    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, ChildLine)>();
    let mut children = Vec::new();
    for (c, share) in shares.iter().enumerate() {
        let mut child = spawn_child(common, args, share, users)?;
        let stdout = child.stdout.take().context("child stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(l) = ChildLine::parse(&line) {
                    if tx.send((c, l)).is_err() {
                        break;
                    }
                }
            }
        });
        children.push(child);
    }
    drop(tx);

    let bar = ProgressBar::new(args.count);
    bar.set_style(
        ProgressStyle::with_template("connect [{bar:20}] {pos}/{len} {elapsed} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut state: Vec<(u64, u64, bool)> = vec![(0, 0, false); shares.len()];
    let mut errors = Vec::new();
    let deadline = t0 + args.setup_timeout;
    let mut connect_seconds = None;
    let mut settle_until = None;
    loop {
        let now = Instant::now();
        if settle_until.is_some_and(|t| now >= t) {
            break;
        }
        if now >= deadline {
            bar.finish_and_clear();
            kill_all(&mut children);
            bail!("connecting did not finish within --setup-timeout");
        }
        let wait = settle_until
            .unwrap_or(deadline)
            .saturating_duration_since(now);
        match rx.recv_timeout(wait.min(Duration::from_millis(250))) {
            Ok((c, ChildLine::Progress { connected, failed })) => {
                state[c].0 = connected;
                state[c].1 = failed;
            }
            Ok((
                c,
                ChildLine::Ready {
                    connected,
                    failed,
                    error,
                },
            )) => {
                state[c] = (connected, failed, true);
                errors.extend(error);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if settle_until.is_none() {
                    bar.finish_and_clear();
                    kill_all(&mut children);
                    bail!("every child exited before reporting ready");
                }
                std::thread::sleep(wait.min(Duration::from_millis(250)));
            }
        }
        let held: u64 = state.iter().map(|s| s.0).sum();
        let failed: u64 = state.iter().map(|s| s.1).sum();
        bar.set_position(held + failed);
        bar.set_message(format!("{} failed", fmt_count(failed)));
        if settle_until.is_none() && state.iter().all(|s| s.2) {
            connect_seconds = Some(t0.elapsed().as_secs_f64());
            settle_until = Some(Instant::now() + args.settle);
            bar.set_message(format!("{} failed, settling", fmt_count(failed)));
        }
    }
    bar.finish_and_clear();
    let held: u64 = state.iter().map(|s| s.0).sum();
    let failed: u64 = state.iter().map(|s| s.1).sum();
    let server1 = server.as_ref().map(Servers::sample).transpose()?;
    let children_cpu: u64 = children
        .iter()
        .filter_map(|c| Watch::new(Some(c.id())).ok()?.sample().ok())
        .map(|s| s.cpu_ns)
        .sum();
    let me1 = me.sample()?;
    if !args.hold.is_zero() {
        eprintln!(
            "holding {} connections for {:?}",
            fmt_count(held),
            args.hold
        );
        std::thread::sleep(args.hold);
    }
    close_all(&mut children);

    let connect_seconds = connect_seconds.unwrap_or_default();
    Ok(ConnectionsResult {
        scenario: "connections",
        url: common.url.clone(),
        requested: args.count,
        held,
        failed,
        errors,
        processes: shares,
        connect_seconds,
        connect_rate: if connect_seconds > 0.0 {
            held as f64 / connect_seconds
        } else {
            0.0
        },
        server_rss_before_kb: server0.map(|s| s.rss_kb),
        server_rss_after_kb: server1.map(|s| s.rss_kb),
        server_rss_per_connection_bytes: match (server0, server1) {
            (Some(a), Some(b)) => rss_per_connection(a.rss_kb, b.rss_kb, held),
            _ => None,
        },
        server: match (server0, server1) {
            (Some(a), Some(b)) => Some(Usage::between(&a, &b, held)),
            _ => None,
        },
        client_cpu_ns: me1.cpu_ns.saturating_sub(me0.cpu_ns) + children_cpu,
    })
}

fn close_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        drop(c.stdin.take());
    }
    let end = Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= end => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl ConnectionsResult {
    /// The summary table.
    pub fn table(&self) -> Table {
        let mut t = Table::new();
        t.section(&format!(
            "connections: {} requested over {} process(es), {}",
            fmt_count(self.requested),
            self.processes.len(),
            self.url
        ));
        t.row("held", fmt_count(self.held));
        t.row("failed or dropped", fmt_count(self.failed));
        for e in &self.errors {
            t.row("first error", e.clone());
        }
        let sources: Vec<String> = self
            .processes
            .iter()
            .map(|s| {
                format!(
                    "{}x{}",
                    s.source.map_or("kernel".into(), |ip| ip.to_string()),
                    s.count
                )
            })
            .collect();
        t.row("sources", sources.join(", "));
        t.row(
            "time to connect all",
            format!(
                "{:.2} s ({})",
                self.connect_seconds,
                fmt_rate(self.connect_rate)
            ),
        );
        t.section("server memory");
        match (self.server_rss_before_kb, self.server_rss_after_kb) {
            (Some(a), Some(b)) => {
                t.row("RSS before", fmt_kib(a as f64));
                t.row("RSS after", fmt_kib(b as f64));
                if let Some(p) = self.server_rss_per_connection_bytes {
                    t.row(
                        "RSS growth per connection",
                        format!("{p:.0} bytes ({:.2} KiB)", p / 1024.0),
                    );
                }
            }
            _ => t.row("RSS", "pass --server-pid to measure"),
        }
        if let Some(s) = &self.server {
            s.rows(&mut t, "server", "connection");
        }
        t.row(
            "client CPU (all processes)",
            fmt_ns(self.client_cpu_ns as f64),
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_single_process() {
        let p = plan(1000, 15_000, &[], 27_000).unwrap();
        assert_eq!(
            p,
            vec![Share {
                first_conn: 0,
                count: 1000,
                source: None
            }]
        );
    }

    #[test]
    fn plan_spreads_over_processes_and_sources() {
        let p = plan(50_000, 15_000, &[], 27_000).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p.iter().map(|s| s.count).sum::<u64>(), 50_000);
        assert_eq!(p[3].count, 5_000);
        assert_eq!(p[3].first_conn, 45_000);
        let ips: Vec<_> = p.iter().map(|s| s.source.unwrap()).collect();
        assert_eq!(ips[0], Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(ips[3], Ipv4Addr::new(127, 0, 0, 4));
    }

    #[test]
    fn plan_checks_ports_per_source() {
        let one = [Ipv4Addr::new(127, 0, 0, 2)];
        assert!(plan(40_000, 15_000, &one, 27_000).is_err());
        let two = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
        let p = plan(40_000, 15_000, &two, 27_000).unwrap();
        assert_eq!(p[2].source, Some(two[0]));
        assert!(plan(30_000, 40_000, &[], 27_000).is_err());
        assert!(plan(1, 0, &[], 27_000).is_err());
    }
}
