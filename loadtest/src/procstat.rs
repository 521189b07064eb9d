//! CPU time and resident memory of a process, from `/proc`.
//!
//! Guarantees:
//! - [`parse_stat`] reads `utime` and `stime` (fields 14 and 15 of `/proc/<pid>/stat`) after the
//!   *last* `)`, so a command name containing spaces or parentheses cannot shift the fields.
//! - [`parse_vmrss_kb`] reads `VmRSS` from `/proc/<pid>/status` in KiB.
//! - CPU is converted from clock ticks with the machine's `sysconf(_SC_CLK_TCK)`, so every
//!   CPU figure of this tool is in nanoseconds, with a resolution of one tick (10 ms at 100 Hz).
//! - [`ProcSample::cpu_ns`] covers every thread of the process (user + system), not children.

use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Fields of `/proc/<pid>/stat` this tool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Time in user mode, clock ticks.
    pub utime: u64,
    /// Time in kernel mode, clock ticks.
    pub stime: u64,
    /// Thread count.
    pub threads: u64,
}

/// Parses the contents of `/proc/<pid>/stat`.
pub fn parse_stat(s: &str) -> Result<Stat> {
    let close = s.rfind(')').context("no ')' in /proc stat")?;
    // After "pid (comm) " come fields 3.. : state(3) ppid(4) ... utime(14) stime(15) ...
    // num_threads(20).
    let fields: Vec<&str> = s[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let v = fields
            .get(n - 3)
            .with_context(|| format!("/proc stat has no field {n}"))?;
        v.parse::<u64>()
            .with_context(|| format!("/proc stat field {n} is not a number: {v}"))
    };
    Ok(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
    })
}

/// Parses `VmRSS` (KiB) out of the contents of `/proc/<pid>/status`.
pub fn parse_vmrss_kb(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_ascii_whitespace();
    let value = it.next()?.parse::<u64>().ok()?;
    match it.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// Whole-machine CPU time from the aggregate `cpu` line of `/proc/stat`, clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq + steal (guest time is inside user).
    pub busy: u64,
    /// idle + iowait.
    pub idle: u64,
}

/// Parses the aggregate `cpu` line out of the contents of `/proc/stat`.
pub fn parse_machine_cpu(s: &str) -> Result<MachineCpu> {
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no aggregate cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .context("non-numeric field in /proc/stat")?;
    if v.len() < 8 {
        bail!("short cpu line in /proc/stat");
    }
    Ok(MachineCpu {
        busy: v[0] + v[1] + v[2] + v[5] + v[6] + v[7],
        idle: v[3] + v[4],
    })
}

/// Busy CPU time of the whole machine so far, ns (all cores together).
pub fn machine_busy_ns() -> Result<u64> {
    let m = parse_machine_cpu(&std::fs::read_to_string("/proc/stat")?)?;
    Ok(ticks_to_ns(m.busy, clk_tck()))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux in practice).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// Clock ticks to nanoseconds.
pub fn ticks_to_ns(ticks: u64, tck: u64) -> u64 {
    ((ticks as u128 * 1_000_000_000) / tck.max(1) as u128) as u64
}

/// One observation of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was taken.
    pub at: Instant,
    /// User + system CPU time so far, ns.
    pub cpu_ns: u64,
    /// Resident set size, KiB (0 if unavailable).
    pub rss_kb: u64,
}

/// The server processes to observe (one, or the nodes of a cluster): sampled as one.
#[derive(Debug)]
pub struct Servers(Vec<Watch>);

impl Servers {
    /// Observes `pids`; `None` when there are none. Fails if one does not exist.
    pub fn new(pids: &[u32]) -> Result<Option<Self>> {
        if pids.is_empty() {
            return Ok(None);
        }
        let watches = pids
            .iter()
            .map(|p| Watch::new(Some(*p)))
            .collect::<Result<_>>()?;
        Ok(Some(Self(watches)))
    }

    /// CPU and RSS of all of them, summed.
    pub fn sample(&self) -> Result<ProcSample> {
        let mut sum = ProcSample {
            at: Instant::now(),
            cpu_ns: 0,
            rss_kb: 0,
        };
        for w in &self.0 {
            let s = w.sample()?;
            sum.cpu_ns += s.cpu_ns;
            sum.rss_kb += s.rss_kb;
        }
        Ok(sum)
    }
}

/// A process to observe: `None` is this process.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    pid: Option<u32>,
    tck: u64,
}

impl Watch {
    /// Observes `pid`, or this process when `None`; fails if the process does not exist.
    pub fn new(pid: Option<u32>) -> Result<Self> {
        let w = Self {
            pid,
            tck: clk_tck(),
        };
        w.sample()
            .with_context(|| format!("cannot read /proc for pid {pid:?}"))?;
        Ok(w)
    }

    /// The observed pid (`None`: this process).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn path(&self, file: &str) -> String {
        match self.pid {
            Some(p) => format!("/proc/{p}/{file}"),
            None => format!("/proc/self/{file}"),
        }
    }

    /// Samples CPU and RSS now.
    pub fn sample(&self) -> Result<ProcSample> {
        let stat = std::fs::read_to_string(self.path("stat"))?;
        let st = parse_stat(&stat)?;
        let status = std::fs::read_to_string(self.path("status"))?;
        let rss_kb = parse_vmrss_kb(&status).unwrap_or(0);
        if st.threads == 0 {
            bail!("process is gone");
        }
        Ok(ProcSample {
            at: Instant::now(),
            cpu_ns: ticks_to_ns(st.utime + st.stime, self.tck),
            rss_kb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_own_stat() {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap();
        let st = parse_stat(&s).unwrap();
        assert!(st.threads >= 1);
        // Burn a little CPU and check the counter moves forward (never backward).
        let before = st.utime + st.stime;
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 60 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(7));
        }
        std::hint::black_box(x);
        let after = parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert!(after.utime + after.stime >= before);
        assert!(
            after.utime + after.stime > before,
            "60 ms of spinning shows in the ticks"
        );
    }

    #[test]
    fn command_names_with_spaces_and_parens() {
        let s = "1234 (my (weird) name) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16 7 0 20 \
                 1000 2000 3000";
        let st = parse_stat(s).unwrap();
        assert_eq!((st.utime, st.stime, st.threads), (111, 222, 7));
        assert!(parse_stat("1 (x) S 1 2").is_err());
        assert!(parse_stat("no paren").is_err());
    }

    #[test]
    fn vmrss() {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_vmrss_kb(&s).unwrap() > 0);
        assert_eq!(
            parse_vmrss_kb("Name:\tx\nVmRSS:\t   12345 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vmrss_kb("Name:\tx\n"), None);
    }

    #[test]
    fn machine_cpu() {
        let m = parse_machine_cpu(&std::fs::read_to_string("/proc/stat").unwrap()).unwrap();
        assert!(m.busy + m.idle > 0);
        let s = "cpu  10 1 20 300 4 5 6 7 8 9\ncpu0 1 1 1 1 1 1 1 1 1 1\n";
        assert_eq!(
            parse_machine_cpu(s).unwrap(),
            MachineCpu {
                busy: 49,
                idle: 304
            }
        );
        assert!(parse_machine_cpu("cpu0 1 2 3\n").is_err());
        assert!(machine_busy_ns().unwrap() > 0);
    }

    #[test]
    fn tick_conversion() {
        assert_eq!(ticks_to_ns(1, 100), 10_000_000);
        assert_eq!(ticks_to_ns(250, 100), 2_500_000_000);
        assert_eq!(ticks_to_ns(3, 1000), 3_000_000);
        assert!(clk_tck() >= 1);
    }

    #[test]
    fn watch_self() {
        let w = Watch::new(None).unwrap();
        let a = w.sample().unwrap();
        assert!(a.rss_kb > 0);
        assert!(Watch::new(Some(u32::MAX)).is_err());
    }
}
