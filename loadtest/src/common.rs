//! Options shared by every scenario, and the parsers they use.
//!
//! Guarantees: every duration option accepts `500ms`, `10s`, `2m` or a bare number of seconds;
//! the worker-thread default is the number of CPUs this process may run on (so under
//! `taskset -c 1` it is 1); a `--source` address must be on the loopback network.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::handshake::Target;

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server URL (loopback only). For the chat and latency scenarios, several
    /// comma-separated URLs (the nodes of a cluster): client j connects to URL j mod n.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8080/")]
    pub url: String,
    /// Server process id: sample its CPU time and RSS from /proc during the run. Several
    /// comma-separated ids (the nodes of a cluster, Redis): their CPU and RSS are summed.
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Write an SVG plot (latency histogram, or throughput over time).
    #[arg(long, global = true, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Client worker threads, each with its own single-threaded runtime
    /// [default: CPUs this process may use].
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// The server fixture's ROOMS: tokens are picked `ROOMS` apart so all land in one chat.
    #[arg(long, global = true, default_value_t = 1)]
    pub rooms: u64,
    /// First user index (token `t<first-user>`).
    #[arg(long, global = true, default_value_t = 0)]
    pub first_user: u64,
    /// Bound on connecting and authenticating all clients.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

impl Common {
    /// The parsed target (the first, if several are given).
    pub fn target(&self) -> Result<Target> {
        let first = self.url.split(',').next().unwrap_or_default();
        Target::parse(first.trim())
    }

    /// Every target given (`--url a,b,...`), in order.
    pub fn targets(&self) -> Result<Vec<Target>> {
        self.url
            .split(',')
            .map(|u| Target::parse(u.trim()))
            .collect()
    }

    /// Worker threads to use.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h` or a bare number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s}: expected a duration like 500ms, 10s or 2m"))?;
    let secs = match unit {
        "ns" => v / 1e9,
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s}: unknown unit {unit}")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s}: must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a loopback IPv4 source address.
pub fn parse_source(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s.parse().map_err(|_| format!("{s}: not an IPv4 address"))?;
    if !ip.is_loopback() {
        return Err(format!("{ip}: source addresses must be on 127.0.0.0/8"));
    }
    Ok(ip)
}

/// The `n`-th default source address: 127.0.0.1, 127.0.0.2, ...
pub fn default_source(n: usize) -> Result<Ipv4Addr> {
    if n >= 254 * 255 {
        bail!("too many source addresses");
    }
    let n = n as u32 + 1;
    Ok(Ipv4Addr::new(127, 0, (n / 255) as u8, (n % 255) as u8))
}

/// The open-file limit of this process (soft), or 1024 if it cannot be read.
pub fn open_file_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other preconditions.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    if ok {
        r.rlim_cur
    } else {
        1024
    }
}

/// The kernel's ephemeral port range size (`/proc/sys/net/ipv4/ip_local_port_range`).
pub fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_ascii_whitespace().map(|v| v.parse::<u64>().ok());
            let lo = it.next()??;
            let hi = it.next()??;
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(
            parse_source("127.0.0.2").unwrap(),
            Ipv4Addr::new(127, 0, 0, 2)
        );
        assert!(parse_source("10.0.0.1").is_err());
        assert_eq!(default_source(0).unwrap(), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(default_source(1).unwrap(), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(default_source(254).unwrap(), Ipv4Addr::new(127, 0, 1, 0));
    }

    #[test]
    fn limits_are_read() {
        assert!(open_file_limit() > 0);
        assert!(ephemeral_ports() > 1000);
    }
}
