//! Turning raw counts into the reported numbers, and printing them.
//!
//! Guarantees:
//! - [`Percentiles::of`] reports an HDR histogram's p50/p90/p99/p99.9/max exactly as the
//!   histogram does (values within its 3 significant digits), in nanoseconds.
//! - [`Usage::between`] turns two `/proc` samples of a process into CPU ns, CPU utilisation
//!   (cores busy over the wall time) and CPU ns per unit of work (delivery, connection), with
//!   `None` instead of a division by zero.
//! - [`Table`] prints aligned `label  value` rows under section titles; the same values go to
//!   `--json` through the scenarios' serialisable results.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::ProcSample;

/// Creates a latency histogram in ns: 1 ns .. 1 h, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles, ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Recorded values.
    pub count: u64,
    /// Smallest value.
    pub min_ns: u64,
    /// Arithmetic mean.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest value.
    pub max_ns: u64,
}

impl Percentiles {
    /// The percentiles of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_ns: h.min(),
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }

    /// Adds the percentile rows to a table section.
    pub fn rows(&self, t: &mut Table, what: &str) {
        t.row(&format!("{what} samples"), fmt_count(self.count));
        for (name, v) in [
            ("p50", self.p50_ns),
            ("p90", self.p90_ns),
            ("p99", self.p99_ns),
            ("p99.9", self.p999_ns),
            ("max", self.max_ns),
        ] {
            t.row(&format!("{what} {name}"), fmt_ns(v as f64));
        }
        t.row(&format!("{what} mean"), fmt_ns(self.mean_ns));
    }
}

/// CPU use of one process over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// CPU time used in the window (user + system), ns.
    pub cpu_ns: u64,
    /// Wall time of the window, ns.
    pub wall_ns: u64,
    /// Cores busy on average (`cpu_ns / wall_ns`; 1.0 is one core fully used).
    pub cores: f64,
    /// CPU ns per unit of work (per delivery for throughput scenarios).
    pub cpu_ns_per_unit: Option<f64>,
    /// Resident memory at the start of the window, KiB.
    pub rss_start_kb: u64,
    /// Resident memory at the end of the window, KiB.
    pub rss_end_kb: u64,
}

impl Usage {
    /// Usage between two samples of the same process, for `units` of work done in between.
    pub fn between(a: &ProcSample, b: &ProcSample, units: u64) -> Self {
        let cpu_ns = b.cpu_ns.saturating_sub(a.cpu_ns);
        let wall_ns = b.at.saturating_duration_since(a.at).as_nanos() as u64;
        Self::from_parts(cpu_ns, wall_ns, units, a.rss_kb, b.rss_kb)
    }

    /// Usage from its parts (see [`Usage::between`]).
    pub fn from_parts(
        cpu_ns: u64,
        wall_ns: u64,
        units: u64,
        rss_start_kb: u64,
        rss_end_kb: u64,
    ) -> Self {
        Self {
            cpu_ns,
            wall_ns,
            cores: if wall_ns > 0 {
                cpu_ns as f64 / wall_ns as f64
            } else {
                0.0
            },
            cpu_ns_per_unit: per_unit(cpu_ns, units),
            rss_start_kb,
            rss_end_kb,
        }
    }

    /// Adds rows for this usage, naming the unit (e.g. "delivery").
    pub fn rows(&self, t: &mut Table, who: &str, unit: &str) {
        t.row(
            &format!("{who} CPU"),
            format!(
                "{} over {} ({:.1}% of a core)",
                fmt_ns(self.cpu_ns as f64),
                fmt_ns(self.wall_ns as f64),
                self.cores * 100.0
            ),
        );
        if let Some(p) = self.cpu_ns_per_unit {
            let v = if p < 1e3 {
                format!("{p:.1} ns")
            } else {
                fmt_ns(p)
            };
            t.row(&format!("{who} CPU per {unit}"), v);
        }
        if self.rss_end_kb > 0 {
            t.row(
                &format!("{who} RSS"),
                format!(
                    "{} -> {}",
                    fmt_kib(self.rss_start_kb as f64),
                    fmt_kib(self.rss_end_kb as f64)
                ),
            );
        }
    }
}

/// `cpu_ns / units`, or `None` when no unit of work was done.
pub fn per_unit(cpu_ns: u64, units: u64) -> Option<f64> {
    (units > 0).then(|| cpu_ns as f64 / units as f64)
}

/// Events per second over `wall_ns`.
pub fn per_second(events: u64, wall_ns: u64) -> f64 {
    if wall_ns == 0 {
        0.0
    } else {
        events as f64 * 1e9 / wall_ns as f64
    }
}

/// RSS growth per connection in bytes (`None` without connections).
pub fn rss_per_connection(rss_before_kb: u64, rss_after_kb: u64, connections: u64) -> Option<f64> {
    (connections > 0)
        .then(|| (rss_after_kb as f64 - rss_before_kb as f64) * 1024.0 / connections as f64)
}

/// A nanosecond value with a fitting unit: `850 ns`, `12.3 µs`, `4.56 ms`, `1.234 s`.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

/// A rate with a fitting prefix: `950/s`, `12.3 k/s`, `2.41 M/s`.
pub fn fmt_rate(r: f64) -> String {
    if r < 1e3 {
        format!("{r:.0}/s")
    } else if r < 1e6 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{:.3} M/s", r / 1e6)
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A KiB amount with a fitting unit.
pub fn fmt_kib(kib: f64) -> String {
    if kib.abs() < 1024.0 {
        format!("{kib:.0} KiB")
    } else if kib.abs() < 1024.0 * 1024.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{:.2} GiB", kib / 1024.0 / 1024.0)
    }
}

/// A printable summary: sections of `label  value` rows.
#[derive(Debug, Default, Clone)]
pub struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a section.
    pub fn section(&mut self, title: &str) {
        self.rows.push((format!("## {title}"), String::new()));
    }

    /// Adds a row.
    pub fn row(&mut self, label: &str, value: impl Into<String>) {
        self.rows.push((label.to_string(), value.into()));
    }

    /// The rows (section titles start with `## `).
    pub fn rows(&self) -> &[(String, String)] {
        &self.rows
    }

    /// Renders the table as text.
    pub fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .filter(|(l, _)| !l.starts_with("## "))
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (label, value) in &self.rows {
            if let Some(title) = label.strip_prefix("## ") {
                let _ = writeln!(out, "\n{title}");
                let _ = writeln!(out, "{}", "-".repeat(title.chars().count().max(8)));
            } else {
                let pad = width - label.chars().count();
                let _ = writeln!(out, "  {label}{}  {value}", " ".repeat(pad));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = latency_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1_000).unwrap(); // 1 µs .. 10 ms, uniform
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 10_000);
        let close = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.001, "got {got}, want {want}");
        };
        close(p.p50_ns, 5_000_000);
        close(p.p90_ns, 9_000_000);
        close(p.p99_ns, 9_900_000);
        close(p.p999_ns, 9_990_000);
        close(p.max_ns, 10_000_000);
        close(p.min_ns, 1_000);
        assert!((p.mean_ns - 5_000_500.0).abs() / 5_000_500.0 < 0.001);
        assert_eq!(
            Percentiles::of(&latency_histogram()),
            Percentiles::default()
        );
    }

    #[test]
    fn percentiles_see_the_tail() {
        // 999 fast values and one stall: p99.9 and max must show the stall, p99 must not.
        let mut h = latency_histogram();
        for _ in 0..999 {
            h.record(50_000).unwrap();
        }
        h.record(200_000_000).unwrap();
        let p = Percentiles::of(&h);
        assert!(p.p99_ns < 51_000);
        assert!(p.max_ns >= 199_000_000);
        assert!(p.p50_ns < 51_000);
    }

    #[test]
    fn cpu_ns_per_delivery() {
        let t0 = Instant::now();
        let a = ProcSample {
            at: t0,
            cpu_ns: 1_000_000_000,
            rss_kb: 1000,
        };
        let b = ProcSample {
            at: t0 + Duration::from_secs(10),
            cpu_ns: 9_000_000_000,
            rss_kb: 3000,
        };
        // 8 s of CPU over 10 s for 20 M deliveries: 400 ns each, 0.8 cores.
        let u = Usage::between(&a, &b, 20_000_000);
        assert_eq!(u.cpu_ns, 8_000_000_000);
        assert_eq!(u.wall_ns, 10_000_000_000);
        assert!((u.cores - 0.8).abs() < 1e-12);
        assert_eq!(u.cpu_ns_per_unit, Some(400.0));
        assert_eq!((u.rss_start_kb, u.rss_end_kb), (1000, 3000));
        assert_eq!(Usage::between(&a, &b, 0).cpu_ns_per_unit, None);
        // Samples out of order never underflow.
        let back = Usage::between(&b, &a, 1);
        assert_eq!((back.cpu_ns, back.wall_ns, back.cores), (0, 0, 0.0));
    }

    #[test]
    fn rates_and_rss_growth() {
        assert_eq!(per_second(2_000, 500_000_000), 4_000.0);
        assert_eq!(per_second(5, 0), 0.0);
        assert_eq!(rss_per_connection(100_000, 110_000, 1_000), Some(10_240.0));
        assert_eq!(rss_per_connection(1, 2, 0), None);
        assert_eq!(per_unit(10, 4), Some(2.5));
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_ns(850.0), "850 ns");
        assert_eq!(fmt_ns(12_345.0), "12.3 µs");
        assert_eq!(fmt_ns(4_560_000.0), "4.56 ms");
        assert_eq!(fmt_ns(1_234_000_000.0), "1.234 s");
        assert_eq!(fmt_rate(950.0), "950/s");
        assert_eq!(fmt_rate(12_345.0), "12.3 k/s");
        assert_eq!(fmt_rate(2_410_000.0), "2.410 M/s");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_count(12), "12");
        assert_eq!(fmt_count(123_456), "123,456");
        assert_eq!(fmt_kib(2048.0), "2.0 MiB");
        let mut t = Table::new();
        t.section("Result");
        t.row("a", "1");
        t.row("long label", "2");
        let s = t.render();
        assert!(s.contains("  a           1\n"), "{s}");
        assert!(s.contains("  long label  2\n"));
        assert!(s.contains("Result\n------"));
    }
}
