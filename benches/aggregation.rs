//! Streaming aggregation: windowed throughput against the same plan as a
//! DataFusion batch job, and the cost of a batch as the state grows.
//!
//! ```sh
//! cargo bench --bench aggregation                  # full mode (below)
//! TIDEMILL_BENCH_ROWS=1000000 cargo bench --bench aggregation
//! TIDEMILL_BENCH_STATE_KEYS=10000,1000000 cargo bench --bench aggregation
//! TIDEMILL_BENCH_ONLY=window cargo bench --bench aggregation   # or =state, =small
//! cargo test --bench aggregation                   # short mode, a few seconds
//! ```
//!
//! Environment variables (full mode only; short mode ignores them):
//!
//! - `TIDEMILL_BENCH_ROWS`: trades for the windowed run (default 10 000 000,
//!   in 20 parquet files).
//! - `TIDEMILL_BENCH_STATE_KEYS`: comma-separated state sizes in keys
//!   (default `10000,1000000,10000000`).
//! - `TIDEMILL_BENCH_BATCH_ROWS`: rows per timed batch (default 10 000).
//! - `TIDEMILL_BENCH_BATCHES`: timed batches per state size (default 30).
//! - `TIDEMILL_BENCH_STATE_ROUNDS`: rounds of the state part (default 5).
//! - `TIDEMILL_BENCH_ONLY`: `window` (with the small-files case), `state`,
//!   or `small` (only the small-files case) to run one part.
//!
//! **Part 1, windowed aggregation.** Seeded trades (100 symbols × 5
//! exchanges, one hour of event time, each row up to 5 s out of order) as
//! parquet files; per one-minute tumbling window, symbol and exchange:
//! count, sum(quantity), vwap = sum(price·quantity)/sum(quantity), max and
//! min price. Run once as a DataFusion batch job over the files, then as a
//! stream (`FileSource`, watermark 10 s, append mode, `MemorySink`, local
//! checkpoint, `Trigger::AvailableNow`) at several `max_files_per_trigger`.
//! In append mode a window is emitted once the watermark passes its end, so
//! the last windows of the data would never close: the stream's directory
//! holds one more file, written last, with a single trade a day later. Its
//! watermark closes every real window and its own window stays open, so the
//! stream's output must equal the batch job's result row for row (vwap
//! compared to 1e-9 relative, since summation order differs). Then the
//! same over 5 million trades in 50 files of 100 000 rows, one file per
//! trigger, where each batch's fixed cost weighs more (target ≥ 0.9 of the
//! batch job).
//!
//! **Part 2, state scaling.** `count` and `sum` per key in update mode
//! (no window), fed by a `MemoryStream`. For each state size the state is
//! first built with batches of up to a million new keys; then batches of
//! `TIDEMILL_BENCH_BATCH_ROWS` rows, half on random existing keys and half
//! on new keys, are timed from the query's progress (`trigger_execution`).
//! The sizes are measured in rounds (each size once per round, from a new
//! state, each run in a process of its own so that no run inherits the heap
//! of a larger one), so that the sizes of one round see the same machine; the
//! figures: median per-batch time per state size and round, the ratio of
//! the largest size to the smallest per round and its median over the
//! rounds (the target), state memory per key and the run's peak RSS
//! (VmHWM).
//!
//! **What watching costs** (end of part 1): the stream at
//! `max_files_per_trigger` 1 without and with the monitor
//! (`tidemill::monitor`, served and scraped every 100 ms), in 21 pairs of
//! runs back to back (alternating which goes first): the throughput lost
//! and the process's CPU time added, each from the median of the pairs'
//! ratios, and the monitor's own work as a share of the watched run's CPU
//! time. Target: that share under 2 %.
//!
//! `cargo bench` passes `--bench`: that runs the full mode. Without it (as
//! `cargo test` runs this file, `test = true` in Cargo.toml) a short mode
//! with tiny sizes checks the results and never asserts on time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::{PhaseDurations, QueryOptions, QueryProgress, Sink};
use tidemill_harness::keyed_state::keyed_state_run;
use tidemill_harness::machine::{flush_file_writes, proc_status_mib};
use tidemill_harness::results::{
    BenchResult, PHASES, Table, Target, median, phase_cells, total, trim,
};
// The trades and the plan measured are the harness's, shared with the
// trigger-interval study and the Spark comparison.
use tidemill_harness::trades::{self, DISORDER_MS, EXCHANGES, FILES, SPAN_MS, SYMBOLS, per_minute};

/// Timed runs of each windowed job; the median is reported.
const RUNS: usize = 9;
/// Pairs of runs (without and with the monitor) of the watching-cost part,
/// full mode: a run lasts a fraction of a second, so its figure is the
/// median of many pairs.
const WATCH_PAIRS: usize = 21;

/// Sizes of one run.
struct Config {
    full: bool,
    rows: usize,
    state_keys: Vec<usize>,
    batch_rows: usize,
    batches: usize,
    /// Rounds of the state part.
    state_rounds: usize,
    window: bool,
    state: bool,
    /// The small-files case (one 100 000-row file per trigger).
    small: bool,
}

impl Config {
    fn from_env(full: bool) -> Self {
        let only = std::env::var("TIDEMILL_BENCH_ONLY").ok();
        let (window, state, small) = match only.as_deref() {
            Some("window") if full => (true, false, true),
            Some("state") if full => (false, true, false),
            Some("small") if full => (false, false, true),
            _ => (true, true, true),
        };
        if !full {
            return Self {
                full,
                rows: 40_000,
                state_keys: vec![1_000, 20_000],
                batch_rows: 1_000,
                batches: 5,
                state_rounds: 1,
                window,
                state,
                small,
            };
        }
        let env = |name: &str| std::env::var(name).ok();
        let num = |name: &str, default: usize| {
            env(name)
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or(default)
        };
        Self {
            full,
            rows: num("TIDEMILL_BENCH_ROWS", 10_000_000),
            state_keys: env("TIDEMILL_BENCH_STATE_KEYS")
                .map(|v| {
                    v.split(',')
                        .filter_map(|s| s.trim().replace('_', "").parse().ok())
                        .collect()
                })
                .unwrap_or_else(|| vec![10_000, 1_000_000, 10_000_000]),
            batch_rows: num("TIDEMILL_BENCH_BATCH_ROWS", 10_000),
            batches: num("TIDEMILL_BENCH_BATCHES", 30),
            state_rounds: num("TIDEMILL_BENCH_STATE_ROUNDS", 5).max(1),
            window,
            state,
            small,
        }
    }
}

fn mib(field: &str) -> String {
    proc_status_mib(field).map_or_else(|| "n/a".into(), |m| format!("{m:.0} MiB"))
}

// ---------------------------------------------------------------------------
// Part 1: windowed aggregation throughput.

/// One result row: `(window start ms, symbol, exchange)` →
/// `(trades, volume, vwap, high, low)`.
type Windows = BTreeMap<(i64, String, String), (i64, i64, f64, f64, f64)>;

fn column(batch: &RecordBatch, name: &str, to: &DataType) -> anyhow::Result<ArrayRef> {
    Ok(cast(batch.column_by_name(name).expect(name), to)?)
}

fn windows(batches: &[RecordBatch]) -> anyhow::Result<Windows> {
    let mut out = Windows::new();
    for b in batches {
        let start = column(b, "window_start", &DataType::Int64)?;
        let symbol = column(b, "symbol", &DataType::Utf8)?;
        let exchange = column(b, "exchange", &DataType::Utf8)?;
        let trades = column(b, "trades", &DataType::Int64)?;
        let volume = column(b, "volume", &DataType::Int64)?;
        let vwap = column(b, "vwap", &DataType::Float64)?;
        let high = column(b, "high", &DataType::Float64)?;
        let low = column(b, "low", &DataType::Float64)?;
        let (start, trades, volume) = (
            start.as_primitive::<Int64Type>(),
            trades.as_primitive::<Int64Type>(),
            volume.as_primitive::<Int64Type>(),
        );
        let (symbol, exchange) = (symbol.as_string::<i32>(), exchange.as_string::<i32>());
        let (vwap, high, low) = (
            vwap.as_primitive::<Float64Type>(),
            high.as_primitive::<Float64Type>(),
            low.as_primitive::<Float64Type>(),
        );
        for i in 0..b.num_rows() {
            let key = (
                start.value(i),
                symbol.value(i).to_string(),
                exchange.value(i).to_string(),
            );
            let value = (
                trades.value(i),
                volume.value(i),
                vwap.value(i),
                high.value(i),
                low.value(i),
            );
            anyhow::ensure!(
                out.insert(key.clone(), value).is_none(),
                "window {key:?} emitted twice"
            );
        }
    }
    Ok(out)
}

/// Checks the stream's windows against the batch job's.
fn same_windows(stream: &Windows, batch: &Windows) -> anyhow::Result<()> {
    anyhow::ensure!(
        stream.len() == batch.len(),
        "the stream emitted {} windows, the batch job {}",
        stream.len(),
        batch.len()
    );
    for (key, b) in batch {
        let s = stream
            .get(key)
            .ok_or_else(|| anyhow::anyhow!("the stream did not emit window {key:?}"))?;
        let close = (s.2 - b.2).abs() <= 1e-9 * b.2.abs().max(1.0);
        anyhow::ensure!(
            s.0 == b.0 && s.1 == b.1 && close && s.3 == b.3 && s.4 == b.4,
            "window {key:?}: stream {s:?}, batch {b:?}"
        );
    }
    Ok(())
}

/// The plan as a DataFusion batch job over the trade files, with
/// `partitions` target partitions (`None`: DataFusion's default, one per
/// core).
async fn windowed_batch_job(
    files: &[String],
    partitions: Option<usize>,
) -> anyhow::Result<(Vec<RecordBatch>, Duration)> {
    let ctx = match partitions {
        Some(n) => SessionContext::new_with_config(SessionConfig::new().with_target_partitions(n)),
        None => SessionContext::new(),
    };
    let t = Instant::now();
    let out = per_minute(
        ctx.read_parquet(files.to_vec(), ParquetReadOptions::default())
            .await?,
    )?
    .collect()
    .await?;
    Ok((out, t.elapsed()))
}

/// The median time of [`RUNS`] batch jobs, checked against `expected`
/// (or setting it when empty).
async fn timed_batch_job(
    files: &[String],
    partitions: Option<usize>,
    expected: &mut Windows,
) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let (out, time) = windowed_batch_job(files, partitions).await?;
        let got = windows(&out)?;
        if expected.is_empty() {
            *expected = got;
        } else {
            same_windows(&got, expected)?;
        }
        times.push(time.as_secs_f64());
    }
    Ok(median(&mut times))
}

struct StreamRun {
    batches: Vec<RecordBatch>,
    progress: Vec<QueryProgress>,
    elapsed: Duration,
    /// The monitor's busy time (zero without it).
    monitor_busy: Duration,
}

async fn windowed_stream_job(
    dir: &str,
    max_files: Option<u64>,
    chk: &std::path::Path,
) -> anyhow::Result<StreamRun> {
    windowed_stream_job_watched(dir, max_files, chk, false).await
}

/// The stream job; `watched`: with the monitor serving the page, the
/// metrics and the API, scraped every 100 ms.
async fn windowed_stream_job_watched(
    dir: &str,
    max_files: Option<u64>,
    chk: &std::path::Path,
    watched: bool,
) -> anyhow::Result<StreamRun> {
    let ctx = SessionContext::new();
    let monitor = match watched {
        true => Some(tidemill::monitor::Monitor::start(&ctx, "127.0.0.1:0").await?),
        false => None,
    };
    let scraper = monitor.as_ref().map(|(_, server)| {
        tidemill::monitor::scrape_every(server.local_addr(), Duration::from_millis(100))
    });
    let sink = MemorySink::new();
    let source = match max_files {
        Some(n) => FileSource::parquet(dir).max_files_per_trigger(n),
        None => FileSource::parquet(dir),
    };
    let t = Instant::now();
    let query = per_minute(
        ctx.read_stream(source)
            .await?
            .with_watermark("event_time", "10 seconds")?,
    )?
    .write_stream()
    .sink(sink.clone())
    .output_mode(OutputMode::Append)
    .trigger(Trigger::AvailableNow)
    .checkpoint(chk.to_str().unwrap())
    .options(QueryOptions {
        progress_history: 10_000,
        ..Default::default()
    })
    .start()
    .await?;
    query.await_termination().await?;
    let elapsed = t.elapsed();
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    let monitor_busy = match &monitor {
        Some((monitor, _)) => tidemill::monitor::busy_after_stop(monitor).await,
        None => Duration::ZERO,
    };
    Ok(StreamRun {
        batches: sink.batches(),
        progress: query.recent_progress(),
        elapsed,
        monitor_busy,
    })
}

async fn windowed(
    config: &Config,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let rows = config.rows;
    let input = tmp.join("trades");
    std::fs::create_dir_all(&input)?;
    let files = trades::write_trade_files(&input, rows, true)?;
    flush_file_writes();
    let dir = format!("{}/", input.display());
    let workload = format!(
        "Windowed aggregation: {rows} trades ({SYMBOLS} symbols × {} exchanges, {} min of event \
         time, up to {} s out of order) in {FILES} parquet files (seed 42); per 1-minute tumbling \
         window, symbol and exchange: count, sum(quantity), vwap, max(price), min(price). Run as \
         one DataFusion batch job (collect) and as a stream (FileSource, watermark 10 s, append \
         mode, MemorySink, local checkpoint, AvailableNow, plus one flush file with 1 trade a day \
         later so every window closes; the stream's windows are checked equal to the batch \
         job's). File writes are flushed (`sync`) after the files are written and before each \
         stream run.",
        EXCHANGES.len(),
        SPAN_MS / 60_000,
        DISORDER_MS / 1000
    );
    println!("\n## Windowed aggregation\n\nworkload: {workload}");
    result.workload.push_str(&workload);

    // Warm up the page cache and the allocator.
    windowed_batch_job(&files, None).await?;
    let mut expected = Windows::new();
    let batch_secs = timed_batch_job(&files, None, &mut expected).await?;
    let batch_rate = rows as f64 / batch_secs;
    // For reference: the same job on one thread.
    let single_secs = timed_batch_job(&files, Some(1), &mut expected).await?;
    let mut table = vec![
        vec![
            "DataFusion batch job".to_string(),
            "1".into(),
            expected.len().to_string(),
            format!("{batch_secs:.3}"),
            format!("{batch_rate:.0}"),
            "1.00".into(),
        ],
        vec![
            "DataFusion batch job, target_partitions=1 (reference)".to_string(),
            "1".into(),
            expected.len().to_string(),
            format!("{single_secs:.3}"),
            format!("{:.0}", rows as f64 / single_secs),
            format!("{:.2}", batch_secs / single_secs),
        ],
    ];
    let mut breakdown = Vec::new();
    for (i, max_files) in [Some(1u64), Some(5), None].into_iter().enumerate() {
        let mut runs = Vec::new();
        for r in 0..RUNS {
            let chk = tmp.join(format!("chk-window-{i}-{r}"));
            flush_file_writes();
            let run = windowed_stream_job(&dir, max_files, &chk).await?;
            let late: u64 = run
                .progress
                .iter()
                .flat_map(|p| &p.state_operators)
                .map(|s| s.num_rows_dropped_by_watermark)
                .sum();
            anyhow::ensure!(late == 0, "{late} rows dropped as late");
            same_windows(&windows(&run.batches)?, &expected)?;
            runs.push(run);
        }
        runs.sort_by_key(|r| r.elapsed);
        let run = runs.swap_remove(RUNS / 2);
        let rate = rows as f64 / run.elapsed.as_secs_f64();
        let label = max_files.map_or_else(|| "all".to_string(), |n| n.to_string());
        table.push(vec![
            format!("stream, max_files_per_trigger={label}"),
            run.progress.len().to_string(),
            expected.len().to_string(),
            format!("{:.3}", run.elapsed.as_secs_f64()),
            format!("{rate:.0}"),
            format!("{:.2}", rate / batch_rate),
        ]);
        result.targets.push(Target::at_least(
            &format!("aggregation stream/batch, max_files_per_trigger={label}"),
            rate / batch_rate,
            0.8,
            "",
        ));
        let peak_state = run
            .progress
            .iter()
            .flat_map(|p| &p.state_operators)
            .map(|s| s.num_rows_total)
            .max()
            .unwrap_or(0);
        let mut row = vec![format!("max_files_per_trigger={label}")];
        row.extend(phase_cells(&run.progress, total));
        row.push(peak_state.to_string());
        breakdown.push(row);
    }
    let table = Table::new(
        &format!(
            "Windowed aggregation, {rows} trades, median of {RUNS} runs (each stream run from a \
             new checkpoint, timed from `start()` to termination; its windows equal the batch \
             job's in every run):"
        ),
        [
            "run",
            "batches",
            "windows out",
            "seconds",
            "input rows/s",
            "stream/batch",
        ],
        table,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    let mut columns = vec!["stream".to_string()];
    columns.extend(PHASES.iter().map(|p| p.to_string()));
    columns.push("peak state groups".into());
    let table = Table::new(
        "Where the median stream run's time goes: ms per phase, summed over its batches:",
        columns,
        breakdown,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    monitor_cost(config, &dir, rows, tmp, result).await
}

/// The same aggregation over 5 million trades in 50 files of 100 000 rows,
/// streamed one file per trigger, against the batch job over those files:
/// a case where the fixed cost of each batch weighs (issue 23's target:
/// at least 0.9).
async fn small_files(
    config: &Config,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let (rows, count) = if config.full {
        (5_000_000, 50)
    } else {
        (20_000, 10)
    };
    let input = tmp.join("trades-small-files");
    let files = trades::write_trade_files_in(&input, rows, count, true)?;
    flush_file_writes();
    let dir = format!("{}/", input.display());
    windowed_batch_job(&files, None).await?;
    let mut expected = Windows::new();
    let batch_secs = timed_batch_job(&files, None, &mut expected).await?;
    let mut runs = Vec::new();
    for r in 0..RUNS {
        let chk = tmp.join(format!("chk-small-files-{r}"));
        flush_file_writes();
        let run = windowed_stream_job(&dir, Some(1), &chk).await?;
        same_windows(&windows(&run.batches)?, &expected)?;
        runs.push(run);
    }
    runs.sort_by_key(|r| r.elapsed);
    let run = runs.swap_remove(RUNS / 2);
    let ratio = batch_secs / run.elapsed.as_secs_f64();
    let mean = |f: fn(&PhaseDurations) -> f64| {
        let sum: f64 = run.progress.iter().map(|p| f(&p.duration_ms)).sum();
        trim(sum / run.progress.len() as f64)
    };
    let mut columns = vec!["run", "batches", "seconds", "stream/batch"];
    columns.extend(PHASES);
    let mut batch_row = vec![
        "DataFusion batch job".to_string(),
        "1".into(),
        format!("{batch_secs:.3}"),
        "1.00".into(),
    ];
    batch_row.extend(PHASES.iter().map(|_| "–".to_string()));
    let table = Table::new(
        &format!(
            "The same aggregation over {rows} trades in {count} files of {} rows, median of \
             {RUNS} runs; the stream reads one file per trigger. Mean ms per batch by phase (as \
             in the table above: offsets, offset log, read, plan, execute, sink, state commit, \
             commit log, total):",
            rows / count
        ),
        columns,
        vec![
            batch_row,
            vec![
                "stream, max_files_per_trigger=1".into(),
                run.progress.len().to_string(),
                format!("{:.3}", run.elapsed.as_secs_f64()),
                format!("{ratio:.2}"),
                mean(|d| d.latest_offset),
                mean(|d| d.wal_commit),
                mean(|d| d.get_batch),
                mean(|d| d.query_planning),
                mean(|d| d.execution),
                mean(|d| d.add_batch),
                mean(|d| d.state_commit),
                mean(|d| d.commit_offsets),
                mean(|d| d.trigger_execution),
            ],
        ],
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    result.targets.push(Target::at_least(
        &format!(
            "aggregation stream/batch, {count} files of {} rows, one per trigger",
            rows / count
        ),
        ratio,
        0.9,
        "",
    ));
    Ok(())
}

/// What watching costs: the stream at `max_files_per_trigger` 1 without
/// and with the monitor (served, scraped every 100 ms), in pairs of runs
/// back to back, alternating which goes first.
async fn monitor_cost(
    config: &Config,
    dir: &str,
    rows: usize,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let pairs = if config.full { WATCH_PAIRS } else { 1 };
    let rates = tidemill_harness::results::watch_pairs(pairs, rows, |on, r| {
        let chk = tmp.join(format!("chk-monitor-{on}-{r}"));
        async move {
            let stream = windowed_stream_job_watched(dir, Some(1), &chk, on).await?;
            anyhow::ensure!(!stream.batches.is_empty(), "the stream emitted nothing");
            Ok((stream.elapsed, stream.monitor_busy))
        }
    })
    .await?;
    let (table, target) = tidemill_harness::results::watch_cost(
        &format!("the windowed stream at max_files_per_trigger=1 over {rows} trades"),
        &rates,
        "windowed aggregation: the monitor's own work, share of the run's CPU time",
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    result.targets.push(target);
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 2: state scaling.

fn keyed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("value", DataType::Int64, false),
    ]))
}

fn keyed_batch(keys: Vec<i64>) -> anyhow::Result<RecordBatch> {
    let values = Int64Array::from_iter_values(keys.iter().map(|k| k % 7));
    Ok(RecordBatch::try_new(
        keyed_schema(),
        vec![Arc::new(Int64Array::from(keys)), Arc::new(values)],
    )?)
}

/// A sink that only counts rows: the state benchmark measures the
/// aggregation, not a sink keeping millions of output rows.
#[derive(Debug, Default)]
struct CountingSink(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Sink for CountingSink {
    fn description(&self) -> String {
        "CountingSink".into()
    }

    async fn add_batch(
        &self,
        _batch_id: u64,
        _schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> tidemill::Result<()> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.0.fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateRun {
    keys: usize,
    build: Duration,
    median_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    p90_ms: f64,
    phases: Vec<String>,
    /// State files written during the timed batches (deltas by commits,
    /// snapshots in the background).
    files: String,
    rows_total: u64,
    memory_bytes: u64,
    hwm: String,
    /// RSS growth while building the state, per key.
    rss_per_key: String,
    /// How long stopping the query (and dropping its state) took.
    stop: Duration,
}

/// Set (to a state size) in the child process that measures one state run.
const STATE_CHILD_ENV: &str = "TIDEMILL_BENCH_STATE_CHILD";
/// The child's checkpoint directory.
const STATE_CHILD_CHECKPOINT_ENV: &str = "TIDEMILL_BENCH_STATE_CHECKPOINT";
/// Prefixes the line on which the child prints its run.
const STATE_CHILD_LINE: &str = "state run: ";

/// One state run in a child process of this bench (the same binary, with
/// [`STATE_CHILD_ENV`] set): every run starts from a fresh process, so a
/// run is not slowed by the heap an earlier, larger one left behind.
fn state_run_isolated(
    config: &Config,
    keys: usize,
    chk: &std::path::Path,
) -> anyhow::Result<StateRun> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    if config.full {
        command.arg("--bench");
    }
    let output = command
        .env(STATE_CHILD_ENV, keys.to_string())
        .env(STATE_CHILD_CHECKPOINT_ENV, chk)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "the state run with {keys} keys failed ({}):\n{stdout}",
        output.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(STATE_CHILD_LINE))
        .ok_or_else(|| {
            anyhow::anyhow!("the state run with {keys} keys printed no result:\n{stdout}")
        })?;
    Ok(serde_json::from_str(line)?)
}

/// In a child started by [`state_run_isolated`]: runs and prints its run.
async fn state_child(config: &Config, keys: &str) -> anyhow::Result<()> {
    let keys: usize = keys.parse()?;
    let chk = std::env::var_os(STATE_CHILD_CHECKPOINT_ENV)
        .ok_or_else(|| anyhow::anyhow!("{STATE_CHILD_CHECKPOINT_ENV} is not set"))?;
    let run = state_run(config, keys, std::path::Path::new(&chk)).await?;
    println!("{STATE_CHILD_LINE}{}", serde_json::to_string(&run)?);
    Ok(())
}

async fn state_run(
    config: &Config,
    keys: usize,
    chk: &std::path::Path,
) -> anyhow::Result<StateRun> {
    const BUILD_CHUNK: usize = 1_000_000;
    let rss_before = proc_status_mib("VmRSS");
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(keyed_schema());
    let out_rows = Arc::new(AtomicUsize::new(0));
    let query = ctx
        .read_stream(stream.clone())
        .await?
        .aggregate(
            vec![col("key")],
            vec![
                count(col("value")).alias("n"),
                sum(col("value")).alias("total"),
            ],
        )?
        .write_stream()
        .sink(CountingSink(Arc::clone(&out_rows)))
        .output_mode(OutputMode::Update)
        .checkpoint(chk.to_str().unwrap())
        .options(QueryOptions {
            progress_history: 10_000,
            ..Default::default()
        })
        .start()
        .await?;

    let run = keyed_state_run(
        query,
        &stream,
        keys,
        BUILD_CHUNK,
        config.batches,
        config.batch_rows,
        keyed_batch,
    )
    .await?;
    let (build, rss_built, progress, first_timed, stop) = (
        run.build,
        run.rss_built,
        run.timed,
        run.first_timed,
        run.stop,
    );
    let last = &progress.last().expect("timed batches").state_operators[0];
    let files = state_files(&chk.join("state").join("0"), first_timed + 1);
    let mut times: Vec<f64> = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .collect();
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    let max_ms = times.iter().copied().fold(0.0, f64::max);
    let p90_ms = {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)]
    };
    Ok(StateRun {
        keys,
        build,
        median_ms: median(&mut times),
        mean_ms,
        max_ms,
        p90_ms,
        phases: phase_cells(&progress, median),
        files,
        rows_total: last.num_rows_total,
        memory_bytes: last.memory_used_bytes,
        hwm: mib("VmHWM"),
        // Below 100k keys the growth is lost in the allocator's noise.
        rss_per_key: match (rss_before, rss_built) {
            (Some(a), Some(b)) if keys >= 100_000 => {
                format!("{:.0}", (b - a) * 1048576.0 / keys as f64)
            }
            _ => "n/a".into(),
        },
        stop,
    })
}

/// The state store's data files from version `from` on (`<dir>/<version>.delta`,
/// `<dir>/<partition>/<version>-<tag>.snapshot`): how many of each kind and
/// their MiB.
fn state_files(dir: &std::path::Path, from: u64) -> String {
    let (mut deltas, mut snapshots) = ((0, 0u64), (0, 0u64));
    let files_in = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .collect::<Vec<_>>()
    };
    let (partition_dirs, top): (Vec<_>, Vec<_>) =
        files_in(dir).into_iter().partition(|e| e.path().is_dir());
    let files = top
        .into_iter()
        .chain(partition_dirs.iter().flat_map(|d| files_in(&d.path())));
    for file in files {
        let name = file.file_name().to_string_lossy().into_owned();
        let Some((stem, kind)) = name.split_once('.') else {
            continue;
        };
        let version = stem.split('-').next().and_then(|v| v.parse::<u64>().ok());
        if version.is_none_or(|v| v < from) {
            continue;
        }
        let len = file.metadata().map_or(0, |m| m.len());
        let slot = match kind {
            "delta" => &mut deltas,
            "snapshot" => &mut snapshots,
            _ => continue,
        };
        *slot = (slot.0 + 1, slot.1 + len);
    }
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    format!(
        "{} deltas ({:.1} MiB, written by commits), {} snapshots ({:.1} MiB, written in the background)",
        deltas.0,
        mib(deltas.1),
        snapshots.0,
        mib(snapshots.1)
    )
}

async fn state_scaling(
    config: &Config,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let workload = format!(
        "State scaling: count(value), sum(value) group by key (Int64), update mode, \
         MemoryStream, a sink counting rows, local checkpoint; the state is built with batches \
         of up to 1 million new keys and the file system's writes flushed (`sync`), then {} \
         timed batches of {} rows (half random existing keys, half new keys); per-batch time = the progress's trigger_execution; {} rounds, \
         each size once per round in a process of its own; the ratio is the median of the \
         rounds' ratios.",
        config.batches, config.batch_rows, config.state_rounds
    );
    println!("\n## State scaling\n\nworkload: {workload}");
    if !result.workload.is_empty() {
        result.workload.push(' ');
    }
    result.workload.push_str(&workload);
    let mut rows = Vec::new();
    let mut phase_rows = Vec::new();
    let mut file_rows = Vec::new();
    // Per round, its runs in the order of `config.state_keys`.
    let mut rounds: Vec<Vec<StateRun>> = Vec::new();
    for round in 1..=config.state_rounds {
        let mut runs = Vec::new();
        for (i, &keys) in config.state_keys.iter().enumerate() {
            let chk = tmp.join(format!("chk-state-{round}-{i}"));
            let run = state_run_isolated(config, keys, &chk)?;
            // Each round starts from new states: free this one's files.
            std::fs::remove_dir_all(&chk)?;
            flush_file_writes();
            println!(
                "  round {round}, {keys} keys: median {:.2} ms per batch",
                run.median_ms
            );
            rows.push(vec![
                round.to_string(),
                run.keys.to_string(),
                format!("{:.1}", run.build.as_secs_f64()),
                format!("{:.2}", run.median_ms),
                format!("{:.2}", run.mean_ms),
                format!("{:.2}", run.p90_ms),
                format!("{:.2}", run.max_ms),
                format!(
                    "{:.0}",
                    run.memory_bytes as f64 / run.rows_total.max(1) as f64
                ),
                run.rss_per_key.clone(),
                format!("{:.2}", run.stop.as_secs_f64()),
                run.hwm.clone(),
            ]);
            let mut row = vec![round.to_string(), run.keys.to_string()];
            row.extend(run.phases.iter().cloned());
            phase_rows.push(row);
            file_rows.push(vec![
                round.to_string(),
                run.keys.to_string(),
                run.files.clone(),
            ]);
            runs.push(run);
        }
        rounds.push(runs);
    }
    let tables = [
        Table::new(
            &format!(
                "State scaling: {} timed batches of {} rows against the state size (each run \
                 is a process of its own, from a new state; peak RSS is its high-water mark):",
                config.batches, config.batch_rows
            ),
            [
                "round",
                "state keys",
                "build s",
                "median ms/batch",
                "mean ms",
                "p90 ms",
                "max ms",
                "state bytes/key (memory_used_bytes)",
                "RSS growth/key while building",
                "stop s",
                "peak RSS of the run",
            ],
            rows,
        ),
        Table::new(
            "Median ms per phase of the timed batches:",
            ["round", "state keys"].into_iter().chain(PHASES),
            phase_rows,
        ),
        Table::new(
            "State files written during the timed batches:",
            ["round", "state keys", "files"],
            file_rows,
        ),
    ];
    for table in tables {
        println!("\n{}", table.to_markdown());
        result.tables.push(table);
    }
    // Per round: the largest state's median over the smallest's.
    let medians: Vec<Vec<f64>> = rounds
        .iter()
        .map(|runs| runs.iter().map(|r| r.median_ms).collect())
        .collect();
    if let Some(runs) = rounds.first() {
        let (small, large) = (runs[0].keys, runs[runs.len() - 1].keys);
        result
            .targets
            .extend(Target::scaling(&medians, 1.5, |rounds_counted| {
                format!(
                    "per-batch time, {large} keys / {small} keys of state ({}-row batches), median \
                 over {} rounds",
                    config.batch_rows, rounds_counted
                )
            }));
    }
    result.data["state"] = serde_json::json!(
        rounds
            .iter()
            .enumerate()
            .flat_map(|(round, runs)| runs.iter().map(move |r| serde_json::json!({
                "round": round + 1, "keys": r.keys, "median_ms": r.median_ms,
                "mean_ms": r.mean_ms, "p90_ms": r.p90_ms, "max_ms": r.max_ms,
                "memory_used_bytes": r.memory_bytes, "rows_total": r.rows_total,
            })))
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let config = Config::from_env(full);
    if let Ok(keys) = std::env::var(STATE_CHILD_ENV) {
        return state_child(&config, &keys).await;
    }
    let mut result = BenchResult::start(
        "aggregation",
        "Streaming aggregation: windowed stream vs batch, state scaling",
        "cargo bench --bench aggregation",
        config.full,
    );
    let tmp = tempfile::tempdir()?;
    if config.window {
        windowed(&config, tmp.path(), &mut result).await?;
    }
    if config.small {
        small_files(&config, tmp.path(), &mut result).await?;
    }
    if config.state {
        state_scaling(&config, tmp.path(), &mut result).await?;
    }
    result.finish(config.window && config.state)?;
    Ok(())
}
