//! `--plot FILE.svg`: SVG charts drawn with plotters (SVG backend only).
//!
//! Guarantees: [`throughput`] draws deliveries per second over time (top) and the CPU cores used
//! by the server and by this tool (bottom), from the per-second timeline; [`latency`] draws the
//! latency distribution as bars over log-spaced latency buckets, with the percentiles marked.
//! Both write a complete, standalone SVG file or return an error; neither touches the results.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::{fmt_ns, fmt_rate, Percentiles};
use crate::run::TimelinePoint;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Throughput (and CPU) over time.
pub fn throughput(path: &Path, title: &str, timeline: &[TimelinePoint]) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(420);
    let t_max = timeline.iter().map(|p| p.t_s).fold(1.0, f64::max);
    let r_max = timeline
        .iter()
        .map(|p| p.deliveries_per_s)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..t_max, 0f64..r_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start of sending")
        .y_desc("deliveries/s")
        .y_label_formatter(&|v| fmt_rate(*v))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|p| (p.t_s, p.deliveries_per_s)),
            BLUE.stroke_width(2),
        ))
        .map_err(err)?
        .label("deliveries/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;

    let c_max = timeline
        .iter()
        .flat_map(|p| [p.client_cores, p.server_cores.unwrap_or(0.0)])
        .fold(1.0, f64::max)
        * 1.1;
    let mut cpu = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..t_max, 0f64..c_max)
        .map_err(err)?;
    cpu.configure_mesh()
        .x_desc("seconds")
        .y_desc("CPU cores")
        .draw()
        .map_err(err)?;
    if timeline.iter().any(|p| p.server_cores.is_some()) {
        cpu.draw_series(LineSeries::new(
            timeline
                .iter()
                .filter_map(|p| Some((p.t_s, p.server_cores?))),
            RED.stroke_width(2),
        ))
        .map_err(err)?
        .label("server")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    cpu.draw_series(LineSeries::new(
        timeline.iter().map(|p| (p.t_s, p.client_cores)),
        GREEN.stroke_width(2),
    ))
    .map_err(err)?
    .label("load generator")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    cpu.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Latency histogram: `buckets` are (upper bound ns, count) over increasing bounds.
pub fn latency(path: &Path, title: &str, buckets: &[(u64, u64)], p: &Percentiles) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let total: u64 = buckets.iter().map(|b| b.1).sum::<u64>().max(1);
    // Only the populated range: from the bucket before the first count to the last count.
    let first = buckets.iter().position(|b| b.1 > 0).unwrap_or(0);
    let last = buckets.iter().rposition(|b| b.1 > 0).unwrap_or(0);
    let lo_ns = match first {
        0 => buckets.first().map_or(1_000, |b| b.0) as f64 / 1.25,
        f => buckets[f - 1].0 as f64,
    };
    let buckets = buckets.get(first..=last).unwrap_or(&[]);
    let lo = lo_ns.max(1.0) / 1e3;
    let hi = (buckets.last().map_or(1_000_000, |b| b.0) as f64 / 1e3 * 1.3).max(lo * 10.0);
    let y_max = buckets
        .iter()
        .map(|b| b.1 as f64 * 100.0 / total as f64)
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency, µs (log scale)")
        .y_desc("% of deliveries")
        .draw()
        .map_err(err)?;
    let mut prev = lo;
    let bars: Vec<_> = buckets
        .iter()
        .map(|&(upper, count)| {
            let x1 = upper as f64 / 1e3;
            let r = Rectangle::new(
                [(prev, 0.0), (x1, count as f64 * 100.0 / total as f64)],
                BLUE.mix(0.6).filled(),
            );
            prev = x1;
            r
        })
        .collect();
    chart.draw_series(bars).map_err(err)?;
    for (name, v, color) in [
        ("p50", p.p50_ns, GREEN),
        ("p99", p.p99_ns, MAGENTA),
        ("p99.9", p.p999_ns, RED),
    ] {
        let x = (v as f64 / 1e3).clamp(lo, hi);
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, y_max)],
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{name} {}", fmt_ns(v as f64)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_both_plots() {
        let dir = std::env::temp_dir().join(format!("loadtest-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tl: Vec<TimelinePoint> = (1..=5)
            .map(|i| TimelinePoint {
                t_s: f64::from(i),
                deliveries_per_s: 1e6 * f64::from(i),
                sent_per_s: 1e4,
                server_cores: Some(0.9),
                server_rss_kb: Some(1000),
                client_cores: 0.5,
            })
            .collect();
        let a = dir.join("t.svg");
        throughput(&a, "test", &tl).unwrap();
        let svg = std::fs::read_to_string(&a).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("deliveries/s"));
        let b = dir.join("l.svg");
        let buckets = [(1_000, 5), (10_000, 50), (100_000, 10)];
        let p = Percentiles {
            count: 65,
            p50_ns: 9_000,
            p99_ns: 90_000,
            p999_ns: 99_000,
            ..Percentiles::default()
        };
        latency(&b, "lat", &buckets, &p).unwrap();
        assert!(std::fs::read_to_string(&b).unwrap().contains("p99.9"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
