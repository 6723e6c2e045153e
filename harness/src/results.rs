//! The results convention: every benchmark writes one JSON file,
//! `target/bench-results/<name>.json` (short modes:
//! `target/bench-results/short/<name>.json`), holding a [`BenchResult`];
//! `bench-report` turns them into `BENCHMARKS.md`.
//!
//! ```no_run
//! use tidemill_harness::results::{BenchResult, Table, Target};
//!
//! # fn demo() -> anyhow::Result<()> {
//! let full = std::env::args().any(|a| a == "--bench");
//! let mut result = BenchResult::new("my_bench", "My benchmark", "cargo bench --bench my_bench", full);
//! result.workload = "1 million rows in 20 parquet files (seed 42)".into();
//! result.tables.push(Table::new(
//!     "Throughput",
//!     ["run", "rows/s", "stream/batch"],
//!     vec![vec!["batch".into(), "1000000".into(), "1.00".into()]],
//! ));
//! result.targets.push(Target::at_least("stream/batch", 0.93, 0.9, ""));
//! let path = result.write()?; // target/bench-results/my_bench.json
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::machine::Machine;

/// The version of the JSON shape (in [`BenchResult::format`]).
pub const FORMAT: u32 = 1;

/// Where benchmark results go: `$TIDEMILL_BENCH_RESULTS` if set, else
/// `$CARGO_TARGET_DIR/bench-results`, else `target/bench-results` in the
/// workspace.
pub fn results_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TIDEMILL_BENCH_RESULTS") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return workspace_root().join(dir).join("bench-results");
    }
    workspace_root().join("target").join("bench-results")
}

/// The workspace's root directory (the harness crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// One benchmark's results: what `bench-report` renders as a section of
/// `BENCHMARKS.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// [`FORMAT`].
    pub format: u32,
    /// The file name stem, e.g. `stateless` (the section's anchor).
    pub bench: String,
    /// The section heading.
    pub title: String,
    /// The exact command that produced the result.
    pub command: String,
    /// Full mode (`cargo bench`) or the short mode `cargo test` runs.
    pub full: bool,
    /// When the run ended (RFC 3339, UTC).
    pub generated_at: String,
    /// The machine, with its load average when the run ended.
    pub machine: Machine,
    /// The load average when the run started.
    pub load_at_start: [f64; 3],
    /// What was measured (rows, files, plan, sink, checkpoint).
    pub workload: String,
    /// Tables of figures, rendered in order.
    pub tables: Vec<Table>,
    /// Targets against the figures measured.
    pub targets: Vec<Target>,
    /// Free-form notes (Markdown), rendered after the tables.
    pub notes: Vec<String>,
    /// Plots: file names relative to the results directory.
    pub figures: Vec<String>,
    /// Any bench-specific raw data.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl BenchResult {
    /// An empty result for `bench`; the machine and the load are taken now
    /// (as the load at start) and again by [`BenchResult::write`].
    pub fn new(bench: &str, title: &str, command: &str, full: bool) -> Self {
        let machine = Machine::current();
        Self {
            format: FORMAT,
            bench: bench.into(),
            title: title.into(),
            command: command.into(),
            full,
            generated_at: now_rfc3339(),
            load_at_start: machine.load_average,
            machine,
            workload: String::new(),
            tables: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
            figures: Vec::new(),
            data: serde_json::Value::Null,
        }
    }

    /// Starts a bench run: says its mode (`full` under `cargo bench`, short
    /// under `cargo test`) and the machine, and returns the empty result
    /// (its `data` an empty object).
    pub fn start(bench: &str, title: &str, command: &str, full: bool) -> Self {
        println!(
            "mode: {} ({})",
            if full { "full" } else { "short" },
            if full {
                "cargo bench"
            } else {
                "no --bench argument: tiny sizes, results checked, times not meaningful"
            }
        );
        let mut result = Self::new(bench, title, command, full);
        result.data = serde_json::json!({});
        println!("machine: {}", result.machine.summary());
        result
    }

    /// Ends a bench run: says each target against its measure, and writes
    /// the result if `complete` (a run of some parts only would replace the
    /// other parts' figures); returns the path written.
    pub fn finish(&mut self, complete: bool) -> anyhow::Result<Option<PathBuf>> {
        for t in &self.targets {
            println!("target: {} {} — measured {}", t.name, t.target, t.measured);
        }
        if !complete {
            return Ok(None);
        }
        let path = self.write()?;
        println!("\nresults: {}", path.display());
        Ok(Some(path))
    }

    /// Where [`BenchResult::write`] puts this result.
    pub fn path(&self) -> PathBuf {
        let dir = results_dir();
        let dir = if self.full { dir } else { dir.join("short") };
        dir.join(format!("{}.json", self.bench))
    }

    /// Stamps the end time and the machine's load, and writes the JSON
    /// file (atomically: a temporary file, then a rename). Returns its
    /// path.
    pub fn write(&mut self) -> anyhow::Result<PathBuf> {
        self.generated_at = now_rfc3339();
        self.machine = Machine::current();
        let path = self.path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Reads a result file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a bench result: {e}", path.display()))
    }
}

/// A table of figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// A line above the table.
    pub caption: String,
    /// Column headings.
    pub columns: Vec<String>,
    /// Rows of cells, already formatted.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table.
    pub fn new<S: Into<String>>(
        caption: &str,
        columns: impl IntoIterator<Item = S>,
        rows: Vec<Vec<String>>,
    ) -> Self {
        Self {
            caption: caption.into(),
            columns: columns.into_iter().map(Into::into).collect(),
            rows,
        }
    }

    /// The table as Markdown (caption, then the table).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        if !self.caption.is_empty() {
            out.push_str(&self.caption);
            out.push_str("\n\n");
        }
        out.push_str(&format!("| {} |\n", self.columns.join(" | ")));
        out.push_str(&format!(
            "|{}\n",
            self.columns.iter().map(|_| "---|").collect::<String>()
        ));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    }
}

/// A target and the figure measured against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// What is measured, e.g. `stream/batch, stateless`.
    pub name: String,
    /// The target, e.g. `≥ 0.9`.
    pub target: String,
    /// The figure measured, formatted.
    pub measured: String,
    /// Whether the target is met (`None`: not measured in this run).
    pub met: Option<bool>,
    /// Why it is missed and what would fix it, or any remark.
    pub note: String,
}

impl Target {
    /// A target `measured ≥ target`.
    pub fn at_least(name: &str, measured: f64, target: f64, note: &str) -> Self {
        Self {
            name: name.into(),
            target: format!("≥ {target}"),
            measured: trim(measured),
            met: Some(measured >= target),
            note: note.into(),
        }
    }

    /// A target `measured ≤ target`.
    pub fn at_most(name: &str, measured: f64, target: f64, note: &str) -> Self {
        Self {
            name: name.into(),
            target: format!("≤ {target}"),
            measured: trim(measured),
            met: Some(measured <= target),
            note: note.into(),
        }
    }

    /// A state-scaling target: per round, the largest state's median time
    /// per batch over the smallest's (`medians`: each round's, smallest
    /// state first; rounds with one size are left out), their median at
    /// most `limit`. `name` is given the number of rounds counted. `None`
    /// when no round ran two sizes.
    pub fn scaling(
        medians: &[Vec<f64>],
        limit: f64,
        name: impl FnOnce(usize) -> String,
    ) -> Option<Self> {
        let mut ratios: Vec<f64> = medians
            .iter()
            .filter(|m| m.len() > 1)
            .map(|m| m[m.len() - 1] / m[0])
            .collect();
        if ratios.is_empty() {
            return None;
        }
        let per_round = ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let name = name(ratios.len());
        Some(Self::at_most(
            &name,
            median(&mut ratios),
            limit,
            &format!("per round: {per_round}"),
        ))
    }
}

/// One timed run of a stream for [`watch_cost`].
#[derive(Debug, Clone, Copy)]
pub struct WatchRun {
    /// Input rows per second of wall time.
    pub rows_per_s: f64,
    /// CPU seconds (user + system) the whole process used during the run
    /// ([`crate::machine::cpu_time`]).
    pub cpu_seconds: f64,
    /// Seconds the monitor spent on its own work (taking in events,
    /// answering requests) during the run; 0 without it.
    pub monitor_busy_seconds: f64,
}

/// Runs `pairs` pairs of a stream, without and with the monitor, back to
/// back and alternating which goes first, for [`watch_cost`]. `run(watched,
/// pair)` runs the stream once over `rows` input rows and returns its wall
/// time and the monitor's busy time (zero without it); the process's CPU
/// time is read around it.
pub async fn watch_pairs<F, Fut>(
    pairs: usize,
    rows: usize,
    mut run: F,
) -> anyhow::Result<Vec<(WatchRun, WatchRun)>>
where
    F: FnMut(bool, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(std::time::Duration, std::time::Duration)>>,
{
    let mut out = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let mut runs = [WatchRun {
            rows_per_s: 0.0,
            cpu_seconds: 0.0,
            monitor_busy_seconds: 0.0,
        }; 2];
        let order = match pair % 2 {
            0 => [false, true],
            _ => [true, false],
        };
        for watched in order {
            let cpu = crate::machine::cpu_time();
            let (elapsed, busy) = run(watched, pair).await?;
            let cpu = crate::machine::cpu_time() - cpu;
            runs[usize::from(watched)] = WatchRun {
                rows_per_s: rows as f64 / elapsed.as_secs_f64(),
                cpu_seconds: cpu.as_secs_f64(),
                monitor_busy_seconds: busy.as_secs_f64(),
            };
        }
        out.push((runs[0], runs[1]));
    }
    Ok(out)
}

/// What watching a stream costs, from `pairs` of runs of the same stream
/// without and with the monitor, each pair run back to back (the benches
/// alternate which goes first, so that a drift of the machine's speed
/// cancels out).
///
/// Three figures, each a median over the pairs, with the middle half
/// beside it so that the noise is visible:
/// - the throughput lost (1 − rows/s with ÷ rows/s without), which on a
///   shared machine moves by several percent from run to run;
/// - the CPU time added (CPU seconds with ÷ without − 1), steadier than
///   wall time, but still moved by a few percent by the machine (and it
///   includes the in-process scraper's own reads);
/// - the monitor's own work: the time it spent taking in the queries'
///   events and answering requests (`Monitor::busy_time`) as a share of
///   the watched run's CPU time. This is what watching takes from the
///   engine, measured where it is spent rather than as the difference of
///   two noisy totals; the target (at most 2 %) is on this one. The
///   engine's side of the listener (one progress report cloned into the
///   listener's queue per batch) is not in it.
pub fn watch_cost(what: &str, pairs: &[(WatchRun, WatchRun)], target: &str) -> (Table, Target) {
    let spread = |mut ratios: Vec<f64>| {
        let mid = median(&mut ratios);
        (mid, quantile(&ratios, 0.25), quantile(&ratios, 0.75))
    };
    let (rate, rate_low, rate_high) = spread(
        pairs
            .iter()
            .map(|(p, w)| w.rows_per_s / p.rows_per_s)
            .collect(),
    );
    let (cpu, cpu_low, cpu_high) = spread(
        pairs
            .iter()
            .map(|(p, w)| w.cpu_seconds / p.cpu_seconds)
            .collect(),
    );
    let column = |f: fn(&WatchRun) -> f64, watched: bool| {
        let mut values: Vec<f64> = pairs
            .iter()
            .map(|(p, w)| f(if watched { w } else { p }))
            .collect();
        median(&mut values)
    };
    let (busy, busy_low, busy_high) = spread(
        pairs
            .iter()
            .map(|(_, w)| w.monitor_busy_seconds / w.cpu_seconds)
            .collect(),
    );
    let percent = |x: f64| format!("{:.1} %", x * 100.0);
    let fine = |x: f64| format!("{:.2} %", x * 100.0);
    let table = Table::new(
        &format!(
            "What watching costs: {what}, without and with the monitor (page, /metrics and API \
             served, scraped every 100 ms), {} pairs of runs back to back, alternating which \
             goes first. Throughput lost = 1 − the median of the pairs' rows/s ratios; CPU \
             added = the median of the pairs' CPU-time ratios − 1 (the whole process, the \
             scraper included); monitor's own work = the time the monitor spent taking in \
             events and answering requests ÷ the watched run's CPU time; the middle half of \
             the values in brackets:",
            pairs.len()
        ),
        [
            "run",
            "median input rows/s",
            "median CPU s",
            "throughput lost",
            "CPU added",
            "monitor's own work",
        ],
        vec![
            vec![
                "without monitor".into(),
                format!("{:.0}", column(|r| r.rows_per_s, false)),
                format!("{:.3}", column(|r| r.cpu_seconds, false)),
                "–".into(),
                "–".into(),
                "–".into(),
            ],
            vec![
                "with monitor, scraped".into(),
                format!("{:.0}", column(|r| r.rows_per_s, true)),
                format!("{:.3}", column(|r| r.cpu_seconds, true)),
                format!(
                    "{} ({} to {})",
                    percent(1.0 - rate),
                    percent(1.0 - rate_high),
                    percent(1.0 - rate_low)
                ),
                format!(
                    "{} ({} to {})",
                    percent(cpu - 1.0),
                    percent(cpu_low - 1.0),
                    percent(cpu_high - 1.0)
                ),
                format!("{} ({} to {})", fine(busy), fine(busy_low), fine(busy_high)),
            ],
        ],
    );
    (table, Target::at_most(target, busy, 0.02, ""))
}

/// The `q` quantile of sorted `values` (nearest rank; NaN when empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n - 1) as f64 * q).round() as usize],
    }
}

/// The phase columns of [`phase_cells`]: a batch's phases as the progress
/// reports them, then the whole trigger.
pub const PHASES: [&str; 9] = [
    "offsets",
    "wal",
    "read",
    "plan",
    "execute",
    "sink",
    "state commit",
    "commit",
    "total",
];

/// Per phase ([`PHASES`]), `how` ([`total`] or [`median`]) over the batches
/// of `progress`, in ms with one decimal.
pub fn phase_cells(
    progress: &[tidemill_engine::QueryProgress],
    how: fn(&mut [f64]) -> f64,
) -> Vec<String> {
    let phase = |f: fn(&tidemill_engine::PhaseDurations) -> f64| {
        let mut v: Vec<f64> = progress.iter().map(|p| f(&p.duration_ms)).collect();
        format!("{:.1}", how(&mut v))
    };
    vec![
        phase(|d| d.latest_offset),
        phase(|d| d.wal_commit),
        phase(|d| d.get_batch),
        phase(|d| d.query_planning),
        phase(|d| d.execution),
        phase(|d| d.add_batch),
        phase(|d| d.state_commit),
        phase(|d| d.commit_offsets),
        phase(|d| d.trigger_execution),
    ]
}

/// The total of `values` (for [`phase_cells`]).
pub fn total(values: &mut [f64]) -> f64 {
    values.iter().sum()
}

/// The median of `values` (sorted in place; NaN when empty): benches
/// report the median of repeated runs.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A figure with three significant digits (integers above 1000 as is).
pub fn trim(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaling_target_is_the_median_of_each_rounds_largest_over_smallest() {
        let medians = vec![
            vec![2.0, 3.0],
            vec![4.0],
            vec![1.0, 9.0, 1.2],
            vec![5.0, 6.0],
        ];
        let target = Target::scaling(&medians, 1.5, |n| format!("over {n} rounds")).unwrap();
        assert_eq!(target.name, "over 3 rounds");
        assert_eq!(target.measured, trim(1.2));
        assert_eq!(target.met, Some(true));
        assert_eq!(target.note, "per round: 1.50, 1.20, 1.20");
        assert!(Target::scaling(&[vec![1.0]], 1.5, |_| String::new()).is_none());
    }
}
