//! SVG charts of a run (plotters, SVG backend only).
//!
//! - `burst.svg`: backlog and in-flight over time during the burst, one panel per backend,
//!   with the capacity line.
//! - `latency.svg`: accept and end-to-end p99 against the share of the max rate.
//! - `scaling.svg`: jobs/s against worker replicas, with the ideal.
//! - `ceilings.svg`: every ceiling's rate, log scale.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::results::Results;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn color_of(backend: &str) -> RGBColor {
    match backend {
        "memory" => PALETTE[2],
        "rabbitmq" => PALETTE[3],
        "kafka" => PALETTE[4],
        _ => PALETTE[5],
    }
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

/// Writes every chart the results have data for into `dir`.
pub fn write_all(results: &Results, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    if !results.burst.is_empty() {
        burst(results, &dir.join("burst.svg"))?;
        written.push("burst.svg".into());
    }
    if results.rate.iter().any(|r| r.max_rate > 0.0) {
        latency(results, &dir.join("latency.svg"))?;
        written.push("latency.svg".into());
    }
    if !results.scaling.is_empty() {
        scaling(results, &dir.join("scaling.svg"))?;
        written.push("scaling.svg".into());
    }
    if !results.ceilings.is_empty() {
        ceilings(results, &dir.join("ceilings.svg"))?;
        written.push("ceilings.svg".into());
    }
    Ok(written)
}

fn burst(results: &Results, path: &Path) -> anyhow::Result<()> {
    let panels = results.burst.len() as u32;
    let root = SVGBackend::new(path, (900, 280 * panels)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (row, area) in results
        .burst
        .iter()
        .zip(root.split_evenly((panels as usize, 1)))
    {
        let t_max = row.timeline.last().map_or(1.0, |p| p.0 / 1000.0).max(0.1);
        let y_max = row
            .timeline
            .iter()
            .map(|p| p.1.max(p.2))
            .max()
            .unwrap_or(0)
            .max(u64::from(row.capacity)) as f64
            * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "{}: {} concurrent POSTs, capacity {}, sleep {} ms — drain {:.2}× ideal",
                    row.backend,
                    row.jobs,
                    row.capacity,
                    row.job_ms,
                    row.drain_ms / row.ideal_ms.max(1e-9)
                ),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the burst")
            .y_desc("jobs")
            .draw()
            .map_err(err)?;
        let backlog = PALETTE[0];
        let in_flight = PALETTE[1];
        chart
            .draw_series(LineSeries::new(
                row.timeline.iter().map(|p| (p.0 / 1000.0, p.1 as f64)),
                backlog.stroke_width(2),
            ))
            .map_err(err)?
            .label("backlog (accepted, not started)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], backlog));
        chart
            .draw_series(LineSeries::new(
                row.timeline.iter().map(|p| (p.0 / 1000.0, p.2 as f64)),
                in_flight.stroke_width(2),
            ))
            .map_err(err)?
            .label("in flight (running)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], in_flight));
        let cap = f64::from(row.capacity);
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, cap), (t_max, cap)],
                6,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(err)?
            .label("capacity")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::MiddleRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn latency(results: &Results, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(500);
    latency_panel(results, &left, "accept latency p99 (ms)", 5.0, |s| {
        s.accept_ms[1]
    })?;
    latency_panel(results, &right, "end-to-end latency p99 (ms)", 25.0, |s| {
        s.e2e_ms[1]
    })?;
    root.present().map_err(err)?;
    Ok(())
}

fn latency_panel(
    results: &Results,
    area: &Area<'_>,
    title: &str,
    target: f64,
    value: impl Fn(&crate::results::RateStep) -> f64,
) -> anyhow::Result<()> {
    let points = |r: &crate::results::RateSummary| {
        let mut p: Vec<(f64, f64)> = r
            .steps
            .iter()
            .filter(|s| s.phase == "measure")
            .filter_map(|s| Some((f64::from(s.load_pct?), value(s).max(0.01))))
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let y_max = results
        .rate
        .iter()
        .flat_map(|r| points(r).into_iter().map(|p| p.1))
        .fold(target, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..105f64, (0.05f64..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("% of the max sustainable rate")
        .draw()
        .map_err(err)?;
    for r in &results.rate {
        let color = color_of(&r.backend);
        let label = format!("{} (max {:.0}/s)", r.backend, r.max_rate);
        chart
            .draw_series(LineSeries::new(points(r), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points(r)
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, target), (105.0, target)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(err)?
        .label(format!("target {target} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn scaling(results: &Results, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (700, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let x_max = results
        .scaling
        .iter()
        .map(|s| f64::from(s.replicas))
        .fold(1.0, f64::max)
        + 0.5;
    let y_max = results
        .scaling
        .iter()
        .map(|s| s.ideal.max(s.throughput))
        .fold(1.0, f64::max)
        * 1.15;
    let first = &results.scaling[0];
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "throughput by worker replicas (capacity {} each, sleep {} ms)",
                first.capacity, first.job_ms
            ),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("worker replicas")
        .y_desc("jobs/s")
        .draw()
        .map_err(err)?;
    let mut backends: Vec<&str> = results.scaling.iter().map(|s| s.backend.as_str()).collect();
    backends.dedup();
    for backend in backends {
        let color = color_of(backend);
        let points: Vec<(f64, f64)> = results
            .scaling
            .iter()
            .filter(|s| s.backend == backend)
            .map(|s| (f64::from(s.replicas), s.throughput))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(backend)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(err)?;
    }
    let ideal: Vec<(f64, f64)> = results
        .scaling
        .iter()
        .filter(|s| s.backend == first.backend)
        .map(|s| (f64::from(s.replicas), s.ideal))
        .collect();
    chart
        .draw_series(DashedLineSeries::new(
            ideal,
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(err)?
        .label("ideal")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn ceilings(results: &Results, path: &Path) -> anyhow::Result<()> {
    let rows = &results.ceilings;
    let n = rows.len();
    let root = SVGBackend::new(path, (1300, 60 + 26 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let x_max = rows.iter().map(|c| c.rate).fold(10.0, f64::max) * 3.0;
    let labels: Vec<String> = rows
        .iter()
        .map(|c| {
            let full = format!("{}: {}", c.subject, c.ceiling);
            if full.chars().count() > 90 {
                let cut: String = full.chars().take(89).collect();
                format!("{cut}…")
            } else {
                full
            }
        })
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("ceilings (ops/s, log scale)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(25)
        .y_label_area_size(640)
        .build_cartesian_2d((1f64..x_max).log_scale(), 0f64..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| human_count(*x))
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            let i = (*y - 0.5).round();
            if (*y - 0.5 - i).abs() < 0.01 && i >= 0.0 && (i as usize) < n {
                labels[n - 1 - i as usize].clone()
            } else {
                String::new()
            }
        })
        .disable_y_mesh()
        .draw()
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, c)| {
            let y = (n - 1 - i) as f64;
            Rectangle::new(
                [(1.0, y + 0.15), (c.rate.max(1.0), y + 0.85)],
                color_of(&c.subject).filled(),
            )
        }))
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, c)| {
            let y = (n - 1 - i) as f64;
            Text::new(
                format!(" {:.0}/s", c.rate),
                (c.rate.max(1.0), y + 0.7),
                ("sans-serif", 12),
            )
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `1500` → `1.5k`, `2000000` → `2M`: axis ticks a person can read.
fn human_count(x: f64) -> String {
    let (value, suffix) = if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let text = format!("{value:.1}");
    format!("{}{suffix}", text.trim_end_matches(".0"))
}

/// The demo's picture: requests in flight at the downstream API over time, one panel per
/// run (`(title, [(seconds, in flight)])`, a point at every change), each with the API's
/// `limit` as a dashed line. The panels share their axes so the runs compare at a glance.
pub fn in_flight_timelines(
    path: &Path,
    caption: &str,
    limit: u64,
    panels: &[(&str, &[(f64, usize)])],
) -> anyhow::Result<()> {
    let count = panels.len().max(1);
    let root = SVGBackend::new(path, (900, 60 + 260 * count as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(caption, ("sans-serif", 18)).map_err(err)?;
    let t_max = panels
        .iter()
        .filter_map(|(_, points)| points.last().map(|p| p.0))
        .fold(0.1f64, f64::max)
        * 1.05;
    let y_max = panels
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1 as u64))
        .max()
        .unwrap_or(0)
        .max(limit) as f64
        * 1.15;
    for (i, ((title, points), area)) in panels.iter().zip(root.split_evenly((count, 1))).enumerate()
    {
        let mut chart = ChartBuilder::on(&area)
            .caption(*title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("requests in flight")
            .draw()
            .map_err(err)?;
        // A step line: each change holds until the next one.
        let mut steps = Vec::with_capacity(points.len() * 2 + 1);
        let mut last = 0.0;
        steps.push((0.0, 0.0));
        for &(t, n) in points.iter() {
            steps.push((t, last));
            last = n as f64;
            steps.push((t, last));
        }
        steps.push((t_max, last));
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))
            .map_err(err)?
            .label("in flight at the API")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        let cap = limit as f64;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, cap), (t_max, cap)],
                6,
                4,
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("the API's limit ({limit})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
