//! The hidden `hold` subcommand: one child process of the `connections` scenario.
//!
//! It opens `--count` authenticated connections (at most `--concurrency` handshakes at once,
//! optionally from one `--source` address), keeps them open and reading (presence events are
//! consumed, pings answered), and reports on stdout, one line at a time:
//! `progress <connected> <failed>` every 250 ms, and once every attempt has finished,
//! `ready <connected> <failed> <first error>` (progress lines go on after it).
//!
//! Guarantees: it exits when its stdin closes (the parent is done, or died) or after
//! `--max-hold`, whichever comes first, so no child outlives a run for long.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::Semaphore;

use crate::client::{connect, token_for, ConnectOpts};
use crate::common::{parse_duration, parse_source};
use crate::frames::Kind;
use crate::handshake::Target;
use crate::run::Shared;

/// Options of a `hold` child (set by the parent).
#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    /// Index of this child's first connection (tokens continue from there).
    #[arg(long)]
    pub first_conn: u64,
    /// Connections to open.
    #[arg(long)]
    pub count: u64,
    /// Distinct users (beyond them, second devices `t<i>.<d>`).
    #[arg(long)]
    pub users: u64,
    /// Source address to bind.
    #[arg(long, value_parser = parse_source)]
    pub source: Option<Ipv4Addr>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Exit after this long even if stdin stays open.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub max_hold: Duration,
}

/// A child's report line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildLine {
    /// Still connecting.
    Progress {
        /// Authenticated so far.
        connected: u64,
        /// Failed so far.
        failed: u64,
    },
    /// Every attempt finished.
    Ready {
        /// Authenticated.
        connected: u64,
        /// Failed.
        failed: u64,
        /// First failure reason, if any.
        error: Option<String>,
    },
}

impl ChildLine {
    /// Formats the line (without newline).
    pub fn format(&self) -> String {
        match self {
            Self::Progress { connected, failed } => format!("progress {connected} {failed}"),
            Self::Ready {
                connected,
                failed,
                error,
            } => format!(
                "ready {connected} {failed} {}",
                error.as_deref().unwrap_or("").replace('\n', " ")
            ),
        }
    }

    /// Parses a line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let mut it = line.splitn(4, ' ');
        let tag = it.next()?;
        let connected = it.next()?.parse().ok()?;
        let failed = it.next()?.parse().ok()?;
        match tag {
            "progress" => Some(Self::Progress { connected, failed }),
            "ready" => Some(Self::Ready {
                connected,
                failed,
                error: it
                    .next()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            }),
            _ => None,
        }
    }
}

fn say(line: &ChildLine) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.format());
    let _ = out.flush();
}

/// Runs a child: never returns before stdin closes or `--max-hold` passes.
pub fn run(
    url: &str,
    rooms: u64,
    first_user: u64,
    connect_timeout: Duration,
    args: &HoldArgs,
) -> Result<()> {
    let target = Arc::new(Target::parse(url)?);
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            std::process::exit(0);
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let local = tokio::task::LocalSet::new();
    let shared = Shared::new();
    let args = args.clone();
    local.block_on(&rt, async move {
        // The reporter runs from the start, so the parent sees progress while connecting.
        let reporter = {
            let shared = Arc::clone(&shared);
            let (total, max_hold) = (args.count, args.max_hold);
            tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                let deadline = tokio::time::Instant::now() + max_hold;
                let mut ready_sent = false;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                    let connected = shared.connected.load(Relaxed);
                    let failed = shared.failed.load(Relaxed);
                    if !ready_sent && connected + failed >= total {
                        ready_sent = true;
                        say(&ChildLine::Ready {
                            connected,
                            failed,
                            error: shared.errors().first().cloned(),
                        });
                    } else {
                        // After `ready`, progress lines keep the parent's counts current (drops).
                        say(&ChildLine::Progress { connected, failed });
                    }
                }
            })
        };
        let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
        for n in 0..args.count {
            let j = args.first_conn + n;
            let permit = Arc::clone(&sem)
                .acquire_owned()
                .await
                .expect("semaphore open");
            let (target, shared) = (Arc::clone(&target), Arc::clone(&shared));
            let token = token_for(j, first_user, rooms, args.users);
            let source = args.source;
            tokio::task::spawn_local(async move {
                let opts = ConnectOpts {
                    target: &target,
                    token: token.clone(),
                    source,
                    recv_capacity: 2048,
                    seed: j + 1,
                };
                let r = tokio::time::timeout(connect_timeout, connect(opts)).await;
                drop(permit);
                let mut conn = match r {
                    Ok(Ok((conn, _))) => conn,
                    Ok(Err(e)) => return shared.fail(format!("{token}: {e:#}")),
                    Err(_) => return shared.fail(format!("{token}: connect timed out")),
                };
                shared.connected.fetch_add(1, Relaxed);
                // Hold: keep reading so presence events never back up, and answer pings.
                loop {
                    match conn.pump(|_: Kind, _| {}).await {
                        Ok(_) => {}
                        Err(e) => {
                            shared.connected.fetch_sub(1, Relaxed);
                            return shared.fail(format!("{token} dropped: {e:#}"));
                        }
                    }
                }
            });
            if n % 256 == 0 {
                tokio::task::yield_now().await;
            }
        }
        reporter.await.ok();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_roundtrip() {
        for l in [
            ChildLine::Progress {
                connected: 5,
                failed: 1,
            },
            ChildLine::Ready {
                connected: 10,
                failed: 0,
                error: None,
            },
            ChildLine::Ready {
                connected: 9,
                failed: 1,
                error: Some("t3: upgrade refused: HTTP 401".into()),
            },
        ] {
            assert_eq!(ChildLine::parse(&l.format()), Some(l));
        }
        assert_eq!(ChildLine::parse("hello"), None);
        assert_eq!(ChildLine::parse("progress x 1"), None);
    }
}
