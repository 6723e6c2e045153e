//! The standard trigger-interval study (see `tidemill_harness::TriggerStudy`).
//!
//! ```sh
//! cargo bench -p tidemill-harness --bench trigger_study   # full mode, about 20 minutes
//! cargo test -p tidemill-harness --bench trigger_study    # short mode, a few seconds
//! ```
//!
//! Two pipelines over the study's trade rows: `stateless` (filter and
//! projection, append mode) and `windowed` (per-minute count, volume, vwap,
//! high and low per symbol and exchange with a 10 s watermark, update
//! mode); intervals 0, 10 ms, 50 ms, 100 ms, 500 ms and 1 s; input rates
//! 10 000 and 100 000 rows/s for 10 s runs (1 s warm-up); then each
//! interval's maximum sustainable rate. Local checkpoint, a sink that
//! discards rows (the engine's figures, not a storage system's).
//!
//! Full mode writes `target/bench-results/trigger_study.json` (the results
//! convention) and `target/bench-results/trigger_study/study.{md,json,svg}`.
//! Environment variables (full mode): `TIDEMILL_STUDY_RATES` (comma
//! separated rows/s), `TIDEMILL_STUDY_INTERVALS_MS` (comma separated),
//! `TIDEMILL_STUDY_RUN_SECS` (fixed-rate run length), `TIDEMILL_STUDY_SEARCH`
//! (`0` skips the maximum-rate search).
//!
//! The short mode (no `--bench` argument, as `cargo test` runs it) uses two
//! intervals and tiny rates, checks every run's output against the same
//! plan as a DataFusion batch job, and never asserts on time.

use std::time::Duration;

use tidemill_engine::OutputMode;
use tidemill_harness::results::BenchResult;
use tidemill_harness::{AVAILABLE_AT, RateSearch, StudyPipeline, TriggerStudy, trades};

fn list<T: std::str::FromStr>(name: &str) -> Option<Vec<T>> {
    let v = std::env::var(name).ok()?;
    Some(
        v.split(',')
            .filter_map(|s| s.trim().replace('_', "").parse().ok())
            .collect(),
    )
}

fn pipelines() -> [StudyPipeline; 2] {
    [
        StudyPipeline::new("stateless", trades::big_trades),
        StudyPipeline::new("windowed", trades::per_minute_stamped)
            .output_mode(OutputMode::Update)
            .key_columns(["window_start", "symbol", "exchange"]),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let [stateless, windowed] = pipelines();
    let mut study = TriggerStudy::new().pipeline(stateless).pipeline(windowed);
    if full {
        let intervals = list::<u64>("TIDEMILL_STUDY_INTERVALS_MS")
            .map(|v| v.into_iter().map(Duration::from_millis).collect())
            .unwrap_or_else(tidemill_harness::standard_intervals);
        let run_secs = list::<f64>("TIDEMILL_STUDY_RUN_SECS")
            .and_then(|v| v.first().copied())
            .unwrap_or(10.0);
        study = study
            .intervals(intervals)
            .rates(list("TIDEMILL_STUDY_RATES").unwrap_or_else(|| vec![10_000, 100_000]))
            .run_for(Duration::from_secs_f64(run_secs))
            .warmup(Duration::from_secs(1))
            .max_rate_search(RateSearch {
                start: 50_000,
                run_for: Duration::from_secs(5),
                precision: 1.2,
                ..RateSearch::default()
            });
        if std::env::var("TIDEMILL_STUDY_SEARCH").as_deref() == Ok("0") {
            study = study.no_max_rate_search();
        }
    } else {
        study = study
            .intervals([Duration::ZERO, Duration::from_millis(50)])
            .rates([2_000])
            .run_for(Duration::from_millis(1200))
            .warmup(Duration::from_millis(300))
            .verify(true)
            .latency_from_column(AVAILABLE_AT)
            .max_rate_search(RateSearch {
                start: 1_000,
                max: 2_000,
                run_for: Duration::from_millis(800),
                max_runs: 2,
                ..RateSearch::default()
            });
    }
    println!(
        "mode: {}",
        if full {
            "full (cargo bench)"
        } else {
            "short (no --bench argument: tiny rates, results checked, times not meaningful)"
        }
    );
    let report = study.run().await?;
    println!("\n{}", report.to_markdown());

    // Short mode: correctness only.
    for run in &report.runs {
        anyhow::ensure!(
            run.rows_committed == run.rows_generated,
            "{}: {} of {} rows committed",
            run.pipeline,
            run.rows_committed,
            run.rows_generated
        );
        if !full {
            anyhow::ensure!(run.verified == Some(true), "{} not verified", run.pipeline);
            let latency = run.latency.expect("rows after the warm-up");
            anyhow::ensure!(latency.rows > 0 && latency.p50_ms <= latency.max_ms);
            anyhow::ensure!(run.output_latency.is_some(), "no output-column latency");
        }
    }

    let mut result = BenchResult::new(
        "trigger_study",
        "Trigger-interval study",
        "cargo bench -p tidemill-harness --bench trigger_study",
        full,
    );
    let dir = result
        .path()
        .parent()
        .expect("results file has a directory")
        .join("trigger_study");
    let written = report.write_to(&dir)?;
    let svg = std::fs::read_to_string(&written[2])?;
    anyhow::ensure!(
        svg.contains("<svg"),
        "{} is not an SVG",
        written[2].display()
    );
    result.workload = format!(
        "Study source: trade rows (symbol, exchange, price, quantity, event_time up to 2 s \
         behind, available_at) appearing at a fixed rate; `stateless`: filter quantity > 500 and \
         a projection with notional (append mode); `windowed`: per 1-minute tumbling window, \
         symbol and exchange, count, sum(quantity), vwap, max/min price and max(available_at), \
         watermark 10 s, update mode. Local checkpoint; a sink discarding rows. Fixed-rate runs \
         of {} s after {} s of warm-up; latency = batch committed by the sink − row available.",
        report.settings.run_for_s - report.settings.warmup_s,
        report.settings.warmup_s
    );
    result.load_at_start = report.load_at_start;
    result.tables = report.tables();
    result.figures = vec!["trigger_study/study.svg".into()];
    result.notes.push(
        "A rate is *kept up* when the backlog (rows available but not yet committed) does not \
         grow: its largest value in the last third of the measured time is at most that of the \
         middle third plus max(50 ms, interval/4) of input, and it is under 1 s + 2 intervals \
         of input when the input ends. CPU is the whole process (user + system), so it \
         includes generating the rows."
            .into(),
    );
    result.data = serde_json::to_value(&report)?;
    let path = result.write()?;
    println!("results: {} and {}", path.display(), dir.display());
    Ok(())
}
