//! A study's report as Markdown, JSON and an SVG plot.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::results::{Table, trim};
use crate::study::{StudyReport, format_interval_ms};

const RATE_COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(90, 90, 90),
];
const PIPELINE_COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Picks one percentile out of a summary.
type Percentile = fn(&crate::LatencySummary) -> f64;

/// Rows/s for an axis: `12 M`, `500 k`.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{} M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{} k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

/// A chart on `area` of a log-scale `y_desc` from `lo` to `hi` against the
/// trigger `intervals` (one tick each), its mesh drawn.
fn interval_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    intervals: &'a [f64],
    (lo, hi): (f64, f64),
    y_desc: &str,
) -> Result<
    ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<
            plotters::coord::types::RangedCoordf64,
            plotters::coord::combinators::LogCoord<f64>,
        >,
    >,
    Box<dyn std::error::Error>,
> {
    let x_range = -0.3f64..(intervals.len().max(1) as f64 - 0.7);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(intervals.len() + 1)
        .x_label_formatter(&|x: &f64| interval_label(intervals, *x))
        .y_labels(8)
        .y_label_formatter(&|v: &f64| trim(*v))
        .x_desc("trigger interval")
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// The x axis's label at `x`: the interval at that index, or nothing
/// between ticks.
fn interval_label(intervals: &[f64], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < intervals.len() {
        format_interval_ms(intervals[i as usize])
    } else {
        String::new()
    }
}

/// A log axis's bounds around `values` (a decade of margin), or `empty`.
fn log_bounds(values: &[f64], empty: (f64, f64)) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    if values.is_empty() {
        empty
    } else {
        (lo / 2.0, hi * 2.0)
    }
}

impl StudyReport {
    /// The report's tables: the fixed-rate runs, and the maximum
    /// sustainable rates (if searched).
    pub fn tables(&self) -> Vec<Table> {
        let mut tables = vec![Table::new(
            "Latency (row available → batch committed by the sink), throughput and CPU at \
             fixed input rates, after the warm-up:",
            [
                "pipeline",
                "interval",
                "input rows/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "batches/s",
                "rows/s committed",
                "CPU s / M rows",
                "kept up",
            ],
            self.runs
                .iter()
                .map(|r| {
                    let l = |f: fn(&crate::LatencySummary) -> f64| {
                        r.latency.as_ref().map_or("–".into(), |l| trim(f(l)))
                    };
                    vec![
                        r.pipeline.clone(),
                        format_interval_ms(r.interval_ms),
                        r.input_rows_per_s.to_string(),
                        l(|l| l.p50_ms),
                        l(|l| l.p95_ms),
                        l(|l| l.p99_ms),
                        match r.latency {
                            Some(l) if l.p999_ms > 0.0 => trim(l.p999_ms),
                            _ => "–".into(),
                        },
                        l(|l| l.max_ms),
                        trim(r.batches_per_s),
                        trim(r.sustained_rows_per_s),
                        trim(r.cpu_s_per_million_rows),
                        if r.kept_up { "yes" } else { "**no**" }.into(),
                    ]
                })
                .collect(),
        )];
        tables.push(Table::new(
            "Mean time per batch by phase (ms) in the same runs: offsets (latest_offset), wal \
             (offset log), read, plan, execute, sink (add_batch), state (state commit), commit \
             (commit log), total (the whole trigger):",
            [
                "pipeline",
                "interval",
                "input rows/s",
                "offsets",
                "wal",
                "read",
                "plan",
                "execute",
                "sink",
                "state",
                "commit",
                "total",
            ],
            self.runs
                .iter()
                .filter_map(|r| {
                    let d = r.phases_ms.as_ref()?;
                    Some(vec![
                        r.pipeline.clone(),
                        format_interval_ms(r.interval_ms),
                        r.input_rows_per_s.to_string(),
                        trim(d.latest_offset),
                        trim(d.wal_commit),
                        trim(d.get_batch),
                        trim(d.query_planning),
                        trim(d.execution),
                        trim(d.add_batch),
                        trim(d.state_commit),
                        trim(d.commit_offsets),
                        trim(d.trigger_execution),
                    ])
                })
                .collect(),
        ));
        if !self.recommendations.is_empty() {
            tables.push(Table::new(
                "Shortest trigger interval that kept up, per input rate:",
                ["pipeline", "input rows/s", "interval", "p99 ms"],
                self.recommendations
                    .iter()
                    .map(|r| {
                        vec![
                            r.pipeline.clone(),
                            r.input_rows_per_s.to_string(),
                            r.interval_ms
                                .map_or("none kept up".into(), format_interval_ms),
                            r.p99_ms.map_or("–".into(), trim),
                        ]
                    })
                    .collect(),
            ));
        }
        if !self.max_rates.is_empty() {
            tables.push(Table::new(
                "Maximum sustainable input rate (highest rate whose backlog stayed bounded; \
                 doubling, then bisection; a rate fails when two trials at it fail):",
                [
                    "pipeline",
                    "interval",
                    "max rows/s",
                    "first failing rows/s",
                    "trials (rows/s: kept up?)",
                ],
                self.max_rates
                    .iter()
                    .map(|m| {
                        vec![
                            m.pipeline.clone(),
                            format_interval_ms(m.interval_ms),
                            if m.capped {
                                format!("≥ {}", m.max_rows_per_s)
                            } else {
                                m.max_rows_per_s.to_string()
                            },
                            m.first_failing_rows_per_s
                                .map_or("–".into(), |r| r.to_string()),
                            m.steps
                                .iter()
                                .map(|s| {
                                    format!("{}: {}", s.rate, if s.kept_up { "✓" } else { "✗" })
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                        ]
                    })
                    .collect(),
            ));
        }
        tables
    }

    /// The report as Markdown: settings, machine, tables.
    pub fn to_markdown(&self) -> String {
        let s = &self.settings;
        let mut out = format!(
            "Trigger-interval study: {}; input rates {} rows/s; runs of {} s ({} s warm-up); \
             machine: {} (load average at start {:.2}).\n\n",
            s.pipelines.join(", "),
            s.rates
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            s.run_for_s,
            s.warmup_s,
            self.machine.summary(),
            self.load_at_start[0],
        );
        for t in self.tables() {
            out.push_str(&t.to_markdown());
            out.push('\n');
        }
        out
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Writes `study.md`, `study.json` and `study.svg` into `dir`; returns
    /// their paths.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let (md, json, svg) = (
            dir.join("study.md"),
            dir.join("study.json"),
            dir.join("study.svg"),
        );
        std::fs::write(&md, self.to_markdown())?;
        std::fs::write(&json, self.to_json()?)?;
        self.write_svg(&svg)?;
        Ok(vec![md, json, svg])
    }

    /// Plots, per pipeline, the latency (p50 thin, p99 thick) and the CPU
    /// seconds per million rows against the trigger interval, one line per
    /// input rate, and the maximum sustainable rate of every pipeline
    /// against the interval (if searched), as an SVG file.
    pub fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        self.draw(path)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
    }

    fn draw(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let intervals = &self.settings.intervals_ms;
        let pipelines: Vec<String> = {
            let mut names: Vec<String> = Vec::new();
            for r in &self.runs {
                if !names.contains(&r.pipeline) {
                    names.push(r.pipeline.clone());
                }
            }
            for m in &self.max_rates {
                if !names.contains(&m.pipeline) {
                    names.push(m.pipeline.clone());
                }
            }
            names
        };
        let rates = &self.settings.rates;
        let rows = (pipelines.len() + usize::from(!self.max_rates.is_empty())).max(1);
        let root = SVGBackend::new(path, (900, 360 * rows as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let areas = root.split_evenly((rows, 2));
        let x_range = -0.3f64..(intervals.len().max(1) as f64 - 0.7);
        let x_label = |x: &f64| interval_label(intervals, *x);
        let index = |ms: f64| intervals.iter().position(|&i| i == ms).map(|i| i as f64);
        let rate_label = |rate: u64| match rate {
            r if r >= 1_000_000 && r % 1_000_000 == 0 => format!("{} M rows/s", r / 1_000_000),
            r if r >= 1_000 && r % 1_000 == 0 => format!("{} k rows/s", r / 1_000),
            r => format!("{r} rows/s"),
        };

        for (p, name) in pipelines.iter().enumerate() {
            // Per rate: (x, latency) and (x, CPU) points.
            let runs_at = |rate: u64| {
                self.runs
                    .iter()
                    .filter(move |r| &r.pipeline == name && r.input_rows_per_s == rate)
                    .filter_map(move |r| Some((index(r.interval_ms)?, r)))
            };
            let latencies: Vec<f64> = rates
                .iter()
                .flat_map(|&rate| runs_at(rate))
                .filter_map(|(_, r)| r.latency)
                .flat_map(|l| [l.p50_ms, l.p99_ms])
                .filter(|v| v.is_finite() && *v > 0.0)
                .collect();
            let (lo, hi) = log_bounds(&latencies, (0.1, 1000.0));
            let mut chart = interval_chart(
                &areas[2 * p],
                &format!("{name}: latency p50 / p99"),
                intervals,
                (lo, hi),
                "latency (ms)",
            )?;
            for (k, &rate) in rates.iter().enumerate() {
                let color = RATE_COLORS[k % RATE_COLORS.len()];
                let points = |f: Percentile| -> Vec<(f64, f64)> {
                    runs_at(rate)
                        .filter_map(|(x, r)| Some((x, f(r.latency.as_ref()?))))
                        .filter(|(_, y)| y.is_finite() && *y > 0.0)
                        .collect()
                };
                let p99 = points(|l| l.p99_ms);
                chart
                    .draw_series(LineSeries::new(p99.clone(), color.stroke_width(2)))?
                    .label(format!("p99 at {}", rate_label(rate)))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    p99.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )?;
                chart
                    .draw_series(LineSeries::new(points(|l| l.p50_ms), color.stroke_width(1)))?
                    .label(format!("p50 at {}", rate_label(rate)))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(1))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;

            let cpu: Vec<f64> = rates
                .iter()
                .flat_map(|&rate| runs_at(rate))
                .map(|(_, r)| r.cpu_s_per_million_rows)
                .filter(|v| v.is_finite() && *v > 0.0)
                .collect();
            let (lo, hi) = log_bounds(&cpu, (0.1, 100.0));
            let mut chart = interval_chart(
                &areas[2 * p + 1],
                &format!("{name}: CPU per million rows"),
                intervals,
                (lo, hi),
                "CPU s / M rows",
            )?;
            for (k, &rate) in rates.iter().enumerate() {
                let color = RATE_COLORS[k % RATE_COLORS.len()];
                let points: Vec<(f64, f64)> = runs_at(rate)
                    .map(|(x, r)| (x, r.cpu_s_per_million_rows))
                    .filter(|(_, y)| y.is_finite() && *y > 0.0)
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(rate_label(rate))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }

        if !self.max_rates.is_empty() {
            let values: Vec<f64> = self
                .max_rates
                .iter()
                .map(|m| m.max_rows_per_s as f64)
                .filter(|v| *v > 0.0)
                .collect();
            let hi = values.iter().copied().fold(0.0, f64::max);
            let hi = if hi > 0.0 { hi * 1.25 } else { 1e6 };
            let mut chart = ChartBuilder::on(&areas[2 * (rows - 1)])
                .caption("maximum sustainable input rate", ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(x_range, 0.0..hi)?;
            chart
                .configure_mesh()
                .x_labels(intervals.len() + 1)
                .x_label_formatter(&x_label)
                .y_labels(8)
                .y_label_formatter(&|v: &f64| si(*v))
                .x_desc("trigger interval")
                .y_desc("rows/s")
                .draw()?;
            for (p, name) in pipelines.iter().enumerate() {
                let color = PIPELINE_COLORS[p % PIPELINE_COLORS.len()];
                let points: Vec<(f64, f64)> = self
                    .max_rates
                    .iter()
                    .filter(|m| &m.pipeline == name && m.max_rows_per_s > 0)
                    .filter_map(|m| Some((index(m.interval_ms)?, m.max_rows_per_s as f64)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}
