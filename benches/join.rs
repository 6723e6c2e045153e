//! Stream–stream join: an inner join of trades and quotes within ±5 s
//! against the same join as a DataFusion batch job, and the cost of a batch
//! as the join's state grows.
//!
//! ```sh
//! cargo bench --bench join                         # full mode (below)
//! TIDEMILL_BENCH_TRADES=100000 TIDEMILL_BENCH_QUOTES=400000 cargo bench --bench join
//! TIDEMILL_BENCH_STATE_ROWS=10000,1000000 cargo bench --bench join
//! TIDEMILL_BENCH_ONLY=stream cargo bench --bench join    # or =state
//! cargo test --bench join                          # short mode, a few seconds
//! ```
//!
//! Environment variables (full mode only; short mode ignores them):
//!
//! - `TIDEMILL_BENCH_TRADES`: trades of the stream-vs-batch part (default
//!   500 000, in 20 parquet files).
//! - `TIDEMILL_BENCH_QUOTES`: quotes of that part (default 2 000 000, in 20
//!   parquet files).
//! - `TIDEMILL_BENCH_SYMBOLS`: comma-separated symbol counts of that part,
//!   each run in full (default `10000,100000`).
//! - `TIDEMILL_BENCH_STATE_ROWS`: comma-separated state sizes in stored
//!   quotes (default `10000,1000000`).
//! - `TIDEMILL_BENCH_BATCH_ROWS`: trades per timed batch (default 10 000).
//! - `TIDEMILL_BENCH_BATCHES`: timed batches per state size (default 30).
//! - `TIDEMILL_BENCH_STATE_ROUNDS`: rounds of the state part (default 5).
//! - `TIDEMILL_BENCH_ONLY`: `stream` or `state` to run one part.
//!
//! The join, in both parts: trades `t` (trade_id, symbol, price, quantity,
//! event_time) inner join quotes `q` (quote_id, symbol, bid, ask,
//! event_time) on `t.symbol = q.symbol AND t.event_time BETWEEN
//! q.event_time - 5 s AND q.event_time + 5 s`, selecting both ids, the
//! symbol, price, quantity, bid, ask and both times.
//!
//! **Part 1, stream vs batch.** Seeded trades and quotes (one hour of event
//! time, row `i` of a side at `i`/rows of the hour minus up to 5 s, so each
//! row is up to 5 s out of order; symbols uniform) as parquet files in two
//! directories. Run once as a DataFusion batch job (`read_parquet`, the
//! join, collect), then as a stream (two `FileSource`s, watermark 10 s on
//! each, append mode, `MemorySink`, local checkpoint,
//! `Trigger::AvailableNow`) at several `max_files_per_trigger` (each source
//! admits that many files per batch, so both sides advance together).
//! Disorder (5 s) is below the watermark delay, so no row is late and no
//! stored row is evicted before its last match: the stream's pairs must
//! equal the batch job's (checked by count and an order-independent
//! checksum of the (trade_id, quote_id) pairs). Rate: input rows of both
//! sides / wall time (stream: `start()` to termination).
//!
//! The symbol count decides the comparison, so the part runs at two: the
//! batch job's hash join on the symbol evaluates the time condition on
//! every same-symbol (trade, quote) pair, trades × quotes / symbols of them
//! (10⁸ at 10 000 symbols, 10⁷ at 100 000 with the default rows), while the
//! stream's state index reads only the quotes within the time bound. With
//! fewer symbols the batch job grows quadratically (at 100 symbols, 10¹⁰
//! pairs: far too long to run here); with more, it does little beyond
//! reading and hashing, and the stream's per-row cost of storing and
//! evicting every row decides.
//!
//! **Part 2, state scaling.** The same join fed by two `MemoryStream`s, a
//! sink counting rows; only the quotes have a watermark (10 s). Without a
//! watermark on the trades, stored quotes never expire (no trade to come is
//! ever late), so the state keeps every quote. The state is first filled
//! with `N` quotes of 100 symbols, one every 5 s per symbol in ascending time
//! (so none is late), then one quote of a symbol no trade has, a day later,
//! moves the watermark past every trade to come: a trade is then expired on
//! arrival (its last possible match, 5 s after it, is below the watermark),
//! so it probes the stored quotes and is not stored itself, and the state
//! stays at `N + 1` rows (so the timed batches measure the probe: index,
//! state reads, condition, output; the state store's writes against its
//! size are the aggregation bench's part 2). Timed: batches of `TIDEMILL_BENCH_BATCH_ROWS`
//! trades of random symbols at random times in a fixed range inside the
//! smallest state's span, so every size sees the same trades and the same
//! pairs (each trade matches the 2 quotes of its symbol within ±5 s, 3 on
//! a boundary;
//! the count per batch is checked against the exact figure); what grows is
//! the state's hash tables and each symbol's time index (100 vs 10 000 rows
//! per symbol with the default sizes). Per-batch time = the progress's `trigger_execution`. Like
//! the aggregation bench, each size runs once per round in a process of its
//! own; the figure is the median over the rounds of the ratio of the
//! largest size's median per-batch time to the smallest's.
//!
//! `cargo bench` passes `--bench`: that runs the full mode. Without it (as
//! `cargo test` runs this file, `test = true` in Cargo.toml) a short mode
//! with tiny sizes checks the results and never asserts on time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemill::prelude::*;
use tidemill::{QueryOptions, QueryProgress, Sink};
use tidemill_harness::machine::{flush_file_writes, proc_status_mib};
use tidemill_harness::results::{BenchResult, PHASES, Table, Target, median, phase_cells, total};

/// Timed runs of each part-1 job; the median is reported.
const RUNS: usize = 3;
/// The seed of the generated rows.
const SEED: u64 = 42;
/// Parquet files per side.
const FILES: usize = 20;
/// 2024-01-01T00:00:00Z, the first event time.
const START_MS: i64 = 1_704_067_200_000;
/// The event time part 1 spans (one hour).
const SPAN_MS: i64 = 3_600_000;
/// How far a row may be behind its nominal time.
const DISORDER_MS: i64 = 5_000;
/// The join's time bound: `t.event_time BETWEEN q.event_time ± BOUND_MS`.
const BOUND_MS: i64 = 5_000;
/// The watermark delay.
const WATERMARK_DELAY: &str = "10 seconds";
/// Symbols of the part-2 state.
const STATE_SYMBOLS: usize = 100;
/// A part-2 symbol's quotes are this far apart.
const STATE_STEP_MS: i64 = 5_000;

/// Sizes of one run.
struct Config {
    full: bool,
    trades: usize,
    quotes: usize,
    symbols: Vec<usize>,
    state_rows: Vec<usize>,
    batch_rows: usize,
    batches: usize,
    state_rounds: usize,
    stream: bool,
    state: bool,
}

impl Config {
    fn from_env(full: bool) -> Self {
        let only = std::env::var("TIDEMILL_BENCH_ONLY").ok();
        let (stream, state) = match only.as_deref() {
            Some("stream") if full => (true, false),
            Some("state") if full => (false, true),
            _ => (true, true),
        };
        if !full {
            return Self {
                full,
                trades: 4_000,
                quotes: 16_000,
                symbols: vec![20, 200],
                state_rows: vec![2_000, 40_000],
                batch_rows: 500,
                batches: 5,
                state_rounds: 1,
                stream,
                state,
            };
        }
        let env = |name: &str| std::env::var(name).ok();
        let num = |name: &str, default: usize| {
            env(name)
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or(default)
        };
        let list = |name: &str| {
            env(name).map(|v| {
                v.split(',')
                    .filter_map(|s| s.trim().replace('_', "").parse().ok())
                    .collect::<Vec<usize>>()
            })
        };
        let mut state_rows =
            list("TIDEMILL_BENCH_STATE_ROWS").unwrap_or_else(|| vec![10_000, 1_000_000]);
        state_rows.sort_unstable();
        Self {
            full,
            trades: num("TIDEMILL_BENCH_TRADES", 500_000),
            quotes: num("TIDEMILL_BENCH_QUOTES", 2_000_000),
            symbols: list("TIDEMILL_BENCH_SYMBOLS")
                .map(|v| v.into_iter().filter(|&s| s > 0).collect())
                .unwrap_or_else(|| vec![10_000, 100_000]),
            state_rows,
            batch_rows: num("TIDEMILL_BENCH_BATCH_ROWS", 10_000),
            batches: num("TIDEMILL_BENCH_BATCHES", 30).max(1),
            state_rounds: num("TIDEMILL_BENCH_STATE_ROUNDS", 5).max(1),
            stream,
            state,
        }
    }
}

// ---------------------------------------------------------------------------
// The rows and the join.

fn time_field() -> Field {
    Field::new(
        "event_time",
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )
}

fn trade_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("trade_id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("quantity", DataType::Int64, false),
        time_field(),
    ]))
}

fn quote_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("quote_id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("bid", DataType::Float64, false),
        Field::new("ask", DataType::Float64, false),
        time_field(),
    ]))
}

/// Rows of either side, column by column: id, symbol, two prices (price
/// and quantity for a trade, bid and ask for a quote), time (ms).
#[derive(Default)]
struct Rows {
    id: Vec<i64>,
    symbol: Vec<String>,
    a: Vec<f64>,
    b: Vec<f64>,
    time: Vec<i64>,
}

impl Rows {
    fn push(&mut self, id: i64, symbol: usize, level: f64, time: i64) {
        self.id.push(id);
        self.symbol.push(symbol_name(symbol));
        self.a.push(level);
        self.b.push(level);
        self.time.push(time);
    }

    fn trades(self) -> anyhow::Result<RecordBatch> {
        let quantity = Int64Array::from_iter_values(self.id.iter().map(|i| 1 + i % 1000));
        Ok(RecordBatch::try_new(
            trade_schema(),
            vec![
                Arc::new(Int64Array::from(self.id)),
                Arc::new(StringArray::from(self.symbol)),
                Arc::new(Float64Array::from(self.a)),
                Arc::new(quantity),
                Arc::new(TimestampMillisecondArray::from(self.time)),
            ],
        )?)
    }

    fn quotes(self) -> anyhow::Result<RecordBatch> {
        let ask = Float64Array::from_iter_values(self.b.iter().map(|b| b + 0.01));
        Ok(RecordBatch::try_new(
            quote_schema(),
            vec![
                Arc::new(Int64Array::from(self.id)),
                Arc::new(StringArray::from(self.symbol)),
                Arc::new(Float64Array::from(self.a)),
                Arc::new(ask),
                Arc::new(TimestampMillisecondArray::from(self.time)),
            ],
        )?)
    }
}

fn symbol_name(symbol: usize) -> String {
    format!("S{symbol:05}")
}

/// The join of `trades` and `quotes` (either both batch DataFrames or both
/// streams, watermarked as the caller wants).
fn join(trades: DataFrame, quotes: DataFrame) -> datafusion::error::Result<DataFrame> {
    let bound = lit(ScalarValue::new_interval_mdn(0, 0, BOUND_MS * 1_000_000));
    trades
        .alias("t")?
        .join_on(
            quotes.alias("q")?,
            JoinType::Inner,
            [
                col("t.symbol").eq(col("q.symbol")),
                col("t.event_time").between(
                    col("q.event_time") - bound.clone(),
                    col("q.event_time") + bound,
                ),
            ],
        )?
        .select(vec![
            col("t.trade_id"),
            col("q.quote_id"),
            col("t.symbol"),
            col("t.price"),
            col("t.quantity"),
            col("q.bid"),
            col("q.ask"),
            col("t.event_time").alias("trade_time"),
            col("q.event_time").alias("quote_time"),
        ])
}

/// SplitMix64.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The pairs a join emitted: how many, and the wrapping sum of a hash of
/// each `(trade_id, quote_id)` (equal sums: the same pairs, whatever the
/// order, with overwhelming probability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Pairs {
    rows: u64,
    checksum: u64,
}

fn pairs(batches: &[RecordBatch]) -> Pairs {
    let mut out = Pairs::default();
    for b in batches {
        let t = b.column_by_name("trade_id").expect("trade_id");
        let q = b.column_by_name("quote_id").expect("quote_id");
        let (t, q) = (t.as_primitive::<Int64Type>(), q.as_primitive::<Int64Type>());
        for i in 0..b.num_rows() {
            let pair = ((t.value(i) as u64) << 32) ^ q.value(i) as u64;
            out.checksum = out.checksum.wrapping_add(mix(pair));
        }
        out.rows += b.num_rows() as u64;
    }
    out
}

// ---------------------------------------------------------------------------
// Part 1: stream vs batch.

/// Writes `rows` seeded rows of one side as [`FILES`] parquet files in
/// `dir`; returns their paths. Row `i` is at `i`/`rows` of the hour minus up
/// to [`DISORDER_MS`].
fn write_side(
    dir: &std::path::Path,
    rows: usize,
    symbols: usize,
    seed: u64,
    trades: bool,
) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut paths = Vec::with_capacity(FILES);
    let mut i = 0usize;
    for f in 0..FILES {
        let n = rows / FILES + usize::from(f < rows % FILES);
        let mut side = Rows::default();
        for _ in 0..n {
            let s = rng.random_range(0..symbols);
            let level = 20.0 + (s % 400) as f64 * 0.5;
            let price = (level * rng.random_range(0.99..1.01) * 100.0).round() / 100.0;
            let nominal = START_MS + (i as i128 * SPAN_MS as i128 / rows as i128) as i64;
            let time = nominal - rng.random_range(0..=DISORDER_MS);
            side.push(i as i64, s, price, time);
            i += 1;
        }
        let batch = if trades {
            side.trades()?
        } else {
            side.quotes()?
        };
        let path = dir.join(format!("part-{f:03}.parquet"));
        let file = std::fs::File::create(&path)?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
        writer.write(&batch)?;
        writer.close()?;
        paths.push(path.display().to_string());
    }
    Ok(paths)
}

/// The join as one DataFusion batch job over the files.
async fn batch_job(trades: &[String], quotes: &[String]) -> anyhow::Result<(Pairs, Duration)> {
    let ctx = SessionContext::new();
    let t = Instant::now();
    let out = join(
        ctx.read_parquet(trades.to_vec(), ParquetReadOptions::default())
            .await?,
        ctx.read_parquet(quotes.to_vec(), ParquetReadOptions::default())
            .await?,
    )?
    .collect()
    .await?;
    let elapsed = t.elapsed();
    Ok((pairs(&out), elapsed))
}

struct StreamRun {
    pairs: Pairs,
    progress: Vec<QueryProgress>,
    elapsed: Duration,
}

async fn stream_job(
    trade_dir: &str,
    quote_dir: &str,
    max_files: Option<u64>,
    chk: &std::path::Path,
) -> anyhow::Result<StreamRun> {
    let ctx = SessionContext::new();
    let sink = MemorySink::new();
    let source = |dir: &str| match max_files {
        Some(n) => FileSource::parquet(dir).max_files_per_trigger(n),
        None => FileSource::parquet(dir),
    };
    let t = Instant::now();
    let trades = ctx
        .read_stream(source(trade_dir))
        .await?
        .with_watermark("event_time", WATERMARK_DELAY)?;
    let quotes = ctx
        .read_stream(source(quote_dir))
        .await?
        .with_watermark("event_time", WATERMARK_DELAY)?;
    let query = join(trades, quotes)?
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
    Ok(StreamRun {
        pairs: pairs(&sink.batches()),
        progress: query.recent_progress(),
        elapsed,
    })
}

async fn stream_vs_batch(
    config: &Config,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let (trades, quotes) = (config.trades, config.quotes);
    let per_trade = config
        .symbols
        .iter()
        .map(|&s| {
            format!(
                "{s} symbols: {:.2} quotes per trade, {:.1e} pairs",
                quotes as f64 / s as f64 * (2 * BOUND_MS) as f64 / SPAN_MS as f64,
                trades as f64 * quotes as f64 / s as f64
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let workload = format!(
        "Stream–stream join: {trades} trades and {quotes} quotes (symbols uniform, {} min of \
         event time, each row up to {} s out of order) in {FILES} parquet files per side \
         (seed {SEED}); inner join on symbol and t.event_time BETWEEN q.event_time - {} s AND \
         q.event_time + {} s. The symbol count sets the quotes a trade matches and the \
         same-symbol pairs on which the batch job's hash join evaluates the time condition \
         ({per_trade}). Run as one DataFusion batch job (read_parquet, join, collect) and as a \
         stream (two FileSources, watermark {WATERMARK_DELAY} on each, append mode, \
         MemorySink, local checkpoint, AvailableNow; its pairs are checked equal to the batch \
         job's by count and checksum). Rate = input rows of both sides / wall time.",
        SPAN_MS / 60_000,
        DISORDER_MS / 1000,
        BOUND_MS / 1000,
        BOUND_MS / 1000,
    );
    println!("\n## Stream vs batch\n\nworkload: {workload}");
    result.workload.push_str(&workload);
    let mut table = Vec::new();
    let mut breakdown = Vec::new();
    for &symbols in &config.symbols {
        stream_vs_batch_at(config, symbols, tmp, result, &mut table, &mut breakdown).await?;
    }
    let table = Table::new(
        &format!(
            "Stream–stream join, {trades} trades + {quotes} quotes, median of {RUNS} runs (each \
             stream run from a new checkpoint, timed from `start()` to termination; its pairs \
             equal the batch job's in every run):"
        ),
        [
            "symbols",
            "run",
            "batches",
            "pairs out",
            "seconds",
            "input rows/s",
            "stream/batch",
        ],
        table,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    let mut columns = vec!["symbols".to_string(), "stream".to_string()];
    columns.extend(PHASES.iter().map(|p| p.to_string()));
    columns.push("peak state rows".into());
    let table = Table::new(
        "Where the median stream run's time goes: ms per phase, summed over its batches:",
        columns,
        breakdown,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    Ok(())
}

/// Part 1 with `symbols` symbols: the batch job, then the streams; adds
/// their rows to `table` and `breakdown`, and their targets to `result`.
async fn stream_vs_batch_at(
    config: &Config,
    symbols: usize,
    tmp: &std::path::Path,
    result: &mut BenchResult,
    table: &mut Vec<Vec<String>>,
    breakdown: &mut Vec<Vec<String>>,
) -> anyhow::Result<()> {
    let (trades, quotes) = (config.trades, config.quotes);
    let input_rows = (trades + quotes) as f64;
    let data = tmp.join(format!("data-{symbols}"));
    let (trade_dir, quote_dir) = (data.join("trades"), data.join("quotes"));
    let trade_files = write_side(&trade_dir, trades, symbols, SEED, true)?;
    let quote_files = write_side(&quote_dir, quotes, symbols, SEED + 1, false)?;
    flush_file_writes();

    // Warm up the page cache and the allocator.
    let (expected, _) = batch_job(&trade_files, &quote_files).await?;
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let (got, time) = batch_job(&trade_files, &quote_files).await?;
        anyhow::ensure!(got == expected, "batch jobs differ: {got:?}, {expected:?}");
        times.push(time.as_secs_f64());
    }
    let batch_secs = median(&mut times);
    let batch_rate = input_rows / batch_secs;
    println!(
        "  {symbols} symbols, batch job: {} pairs, median {batch_secs:.3} s",
        expected.rows
    );
    table.push(vec![
        symbols.to_string(),
        "DataFusion batch job".to_string(),
        "1".into(),
        expected.rows.to_string(),
        format!("{batch_secs:.3}"),
        format!("{batch_rate:.0}"),
        "1.00".into(),
    ]);
    let (trade_dir, quote_dir) = (
        format!("{}/", trade_dir.display()),
        format!("{}/", quote_dir.display()),
    );
    for (i, max_files) in [Some(1u64), Some(5), None].into_iter().enumerate() {
        let mut runs = Vec::new();
        for r in 0..RUNS {
            let chk = data.join(format!("chk-{i}-{r}"));
            flush_file_writes();
            let run = stream_job(&trade_dir, &quote_dir, max_files, &chk).await?;
            let late: u64 = run
                .progress
                .iter()
                .flat_map(|p| &p.state_operators)
                .map(|s| s.num_rows_dropped_by_watermark)
                .sum();
            anyhow::ensure!(late == 0, "{late} rows dropped as late");
            anyhow::ensure!(
                run.pairs == expected,
                "the stream emitted {:?}, the batch job {expected:?}",
                run.pairs
            );
            std::fs::remove_dir_all(&chk)?;
            runs.push(run);
        }
        runs.sort_by_key(|r| r.elapsed);
        let run = runs.swap_remove(RUNS / 2);
        let rate = input_rows / run.elapsed.as_secs_f64();
        let label = max_files.map_or_else(|| "all".to_string(), |n| n.to_string());
        println!(
            "  {symbols} symbols, stream, max_files_per_trigger={label}: median {:.3} s, {:.2} \
             of the batch job's rate",
            run.elapsed.as_secs_f64(),
            rate / batch_rate
        );
        table.push(vec![
            symbols.to_string(),
            format!("stream, max_files_per_trigger={label}"),
            run.progress.len().to_string(),
            run.pairs.rows.to_string(),
            format!("{:.3}", run.elapsed.as_secs_f64()),
            format!("{rate:.0}"),
            format!("{:.2}", rate / batch_rate),
        ]);
        result.targets.push(Target::at_least(
            &format!("join stream/batch, {symbols} symbols, max_files_per_trigger={label}"),
            rate / batch_rate,
            0.5,
            "",
        ));
        let peak_state = run
            .progress
            .iter()
            .flat_map(|p| &p.state_operators)
            .map(|s| s.num_rows_total)
            .max()
            .unwrap_or(0);
        let mut row = vec![
            symbols.to_string(),
            format!("max_files_per_trigger={label}"),
        ];
        row.extend(phase_cells(&run.progress, total));
        row.push(peak_state.to_string());
        breakdown.push(row);
    }
    // Free the disk for the next symbol count.
    std::fs::remove_dir_all(&data)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 2: state scaling.

/// The part-2 quote `i`: its symbol and time (ms); one quote every
/// [`STATE_STEP_MS`] per symbol, the symbols staggered by 50 ms, in
/// ascending time.
fn state_quote(i: usize) -> (usize, i64) {
    let symbol = i % STATE_SYMBOLS;
    let time = START_MS + (i / STATE_SYMBOLS) as i64 * STATE_STEP_MS + symbol as i64 * 50;
    (symbol, time)
}

/// The range of the probing trades' times: inside the span of the smallest
/// state, `BOUND_MS` away from its ends, so every size holds all of a
/// trade's matches.
fn probe_range(config: &Config) -> anyhow::Result<(i64, i64)> {
    let smallest = config.state_rows.first().copied().unwrap_or(0);
    let per_symbol = (smallest / STATE_SYMBOLS) as i64;
    let (from, to) = (
        START_MS + BOUND_MS + 1_000,
        START_MS + (per_symbol - 1) * STATE_STEP_MS - BOUND_MS,
    );
    anyhow::ensure!(
        to > from,
        "the smallest state ({smallest} rows) spans too little time for the probes"
    );
    Ok((from, to))
}

/// How many of the `rows` stored quotes a trade of `symbol` at `time`
/// matches.
fn expected_matches(rows: usize, symbol: usize, time: i64) -> u64 {
    let base = START_MS + symbol as i64 * 50;
    let near = (time - base).div_euclid(STATE_STEP_MS);
    (near - 2..=near + 2)
        .filter(|&j| j >= 0)
        .map(|j| j as usize * STATE_SYMBOLS + symbol)
        .filter(|&i| i < rows)
        .filter(|&i| (time - state_quote(i).1).abs() <= BOUND_MS)
        .count() as u64
}

/// A sink that only counts rows.
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
    rows: usize,
    build: Duration,
    median_ms: f64,
    mean_ms: f64,
    p90_ms: f64,
    max_ms: f64,
    /// Median per phase (see [`PHASES`]).
    phases: Vec<String>,
    /// Pairs per timed batch (the same in every batch's expected count).
    pairs_per_batch: f64,
    rows_total: u64,
    memory_bytes: u64,
    /// The run's peak RSS (MiB).
    hwm_mib: Option<f64>,
}

/// Set (to a state size) in the child process that measures one state run.
const STATE_CHILD_ENV: &str = "TIDEMILL_BENCH_STATE_CHILD";
/// The child's checkpoint directory.
const STATE_CHILD_CHECKPOINT_ENV: &str = "TIDEMILL_BENCH_STATE_CHECKPOINT";
/// Prefixes the line on which the child prints its run.
const STATE_CHILD_LINE: &str = "state run: ";

/// One state run in a child process of this bench (the same binary, with
/// [`STATE_CHILD_ENV`] set), so that no run inherits the heap of another.
fn state_run_isolated(
    config: &Config,
    rows: usize,
    chk: &std::path::Path,
) -> anyhow::Result<StateRun> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    if config.full {
        command.arg("--bench");
    }
    let output = command
        .env(STATE_CHILD_ENV, rows.to_string())
        .env(STATE_CHILD_CHECKPOINT_ENV, chk)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "the state run with {rows} rows failed ({}):\n{stdout}",
        output.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(STATE_CHILD_LINE))
        .ok_or_else(|| {
            anyhow::anyhow!("the state run with {rows} rows printed no result:\n{stdout}")
        })?;
    Ok(serde_json::from_str(line)?)
}

/// In a child started by [`state_run_isolated`]: runs and prints its run.
async fn state_child(config: &Config, rows: &str) -> anyhow::Result<()> {
    let rows: usize = rows.parse()?;
    let chk = std::env::var_os(STATE_CHILD_CHECKPOINT_ENV)
        .ok_or_else(|| anyhow::anyhow!("{STATE_CHILD_CHECKPOINT_ENV} is not set"))?;
    let run = state_run(config, rows, std::path::Path::new(&chk)).await?;
    println!("{STATE_CHILD_LINE}{}", serde_json::to_string(&run)?);
    Ok(())
}

async fn state_run(
    config: &Config,
    rows: usize,
    chk: &std::path::Path,
) -> anyhow::Result<StateRun> {
    const BUILD_CHUNK: usize = 250_000;
    let (probe_from, probe_to) = probe_range(config)?;
    let ctx = SessionContext::new();
    let trades = MemoryStream::new(trade_schema());
    let quotes = MemoryStream::new(quote_schema());
    let out_rows = Arc::new(AtomicUsize::new(0));
    let query = join(
        ctx.read_stream(trades.clone()).await?,
        ctx.read_stream(quotes.clone())
            .await?
            .with_watermark("event_time", WATERMARK_DELAY)?,
    )?
    .write_stream()
    .sink(CountingSink(Arc::clone(&out_rows)))
    .output_mode(OutputMode::Append)
    .checkpoint(chk.to_str().unwrap())
    .options(QueryOptions {
        progress_history: 10_000,
        ..Default::default()
    })
    .start()
    .await?;

    // Fill: quotes in ascending time (none late), then one quote a day
    // later that moves the watermark past every trade to come.
    let t = Instant::now();
    let mut next = 0usize;
    while next < rows {
        let end = (next + BUILD_CHUNK).min(rows);
        let mut chunk = Rows::default();
        for i in next..end {
            let (symbol, time) = state_quote(i);
            chunk.push(i as i64, symbol, 20.0 + symbol as f64, time);
        }
        quotes.push(chunk.quotes()?)?;
        query.process_all_available().await?;
        next = end;
    }
    let mut clock = Rows::default();
    clock.push(rows as i64, STATE_SYMBOLS, 1.0, START_MS + 86_400_000);
    quotes.push(clock.quotes()?)?;
    query.process_all_available().await?;
    let build = t.elapsed();
    // The fill wrote its deltas; flushed now, their writeback does not
    // fall into the timed batches.
    flush_file_writes();
    let built = query.last_progress().expect("built");
    let stored = rows as u64 + 1;
    anyhow::ensure!(
        built.state_operators[0].num_rows_total == stored,
        "state holds {} rows, expected {stored}",
        built.state_operators[0].num_rows_total
    );
    let first_timed = built.batch_id + 1;

    // Timed: trades of random symbols at random times in the probe range
    // (the same in every run).
    let mut rng = StdRng::seed_from_u64(7);
    let mut expected = Vec::with_capacity(config.batches);
    for b in 0..config.batches {
        let mut batch = Rows::default();
        let mut matches = 0;
        for k in 0..config.batch_rows {
            let symbol = rng.random_range(0..STATE_SYMBOLS);
            let time = rng.random_range(probe_from..=probe_to);
            matches += expected_matches(rows, symbol, time);
            batch.push((b * config.batch_rows + k) as i64, symbol, 20.0, time);
        }
        expected.push(matches);
        trades.push(batch.trades()?)?;
        query.process_all_available().await?;
    }
    let progress: Vec<QueryProgress> = query
        .recent_progress()
        .into_iter()
        .filter(|p| p.batch_id >= first_timed && p.num_input_rows > 0)
        .collect();
    query.stop().await?;
    drop(query);
    anyhow::ensure!(
        progress.len() == config.batches,
        "expected {} timed batches, got {}",
        config.batches,
        progress.len()
    );
    for (p, &want) in progress.iter().zip(&expected) {
        anyhow::ensure!(
            p.num_output_rows == want,
            "batch {}: {} pairs out, expected {want}",
            p.batch_id,
            p.num_output_rows
        );
        let state = &p.state_operators[0];
        anyhow::ensure!(
            state.num_rows_total == stored && state.num_rows_dropped_by_watermark == 0,
            "batch {}: state holds {} rows ({} dropped as late), expected {stored}",
            p.batch_id,
            state.num_rows_total,
            state.num_rows_dropped_by_watermark
        );
    }
    let last = &progress.last().expect("timed batches").state_operators[0];
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
        rows,
        build,
        median_ms: median(&mut times),
        mean_ms,
        p90_ms,
        max_ms,
        phases: phase_cells(&progress, median),
        pairs_per_batch: expected.iter().sum::<u64>() as f64 / expected.len() as f64,
        rows_total: last.num_rows_total,
        memory_bytes: last.memory_used_bytes,
        hwm_mib: proc_status_mib("VmHWM"),
    })
}

async fn state_scaling(
    config: &Config,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let (_, probe_to) = probe_range(config)?;
    let workload = format!(
        "State scaling: the same join of two MemoryStreams, a sink counting rows, local \
         checkpoint; watermark {WATERMARK_DELAY} on the quotes only, so stored quotes never \
         expire. The state is filled with N quotes of {STATE_SYMBOLS} symbols (one every {} s \
         per symbol, ascending), then one quote a day later moves the watermark past every \
         trade to come, so trades probe the state and are not stored (it stays at N + 1 rows). \
         Timed: {} batches of {} trades (random symbol, random time in the first {} s of the \
         quotes' span, the same trades for every N; each matches the 2 quotes of its symbol (3 on a boundary) \
         within ±{} s, and every batch's pair count is checked); per-batch time = the \
         progress's trigger_execution; {} rounds, each size once per round in a process of its \
         own; the ratio is the median of the rounds' ratios.",
        STATE_STEP_MS / 1000,
        config.batches,
        config.batch_rows,
        (probe_to - START_MS) / 1000,
        BOUND_MS / 1000,
        config.state_rounds
    );
    println!("\n## State scaling\n\nworkload: {workload}");
    if !result.workload.is_empty() {
        result.workload.push(' ');
    }
    result.workload.push_str(&workload);
    let mut rows = Vec::new();
    let mut phase_rows = Vec::new();
    let mut rounds: Vec<Vec<StateRun>> = Vec::new();
    for round in 1..=config.state_rounds {
        let mut runs = Vec::new();
        for (i, &size) in config.state_rows.iter().enumerate() {
            let chk = tmp.join(format!("chk-state-{round}-{i}"));
            let run = state_run_isolated(config, size, &chk)?;
            std::fs::remove_dir_all(&chk)?;
            flush_file_writes();
            println!(
                "  round {round}, {size} rows of state: median {:.2} ms per batch",
                run.median_ms
            );
            rows.push(vec![
                round.to_string(),
                run.rows.to_string(),
                format!("{:.1}", run.build.as_secs_f64()),
                format!("{:.2}", run.median_ms),
                format!("{:.2}", run.mean_ms),
                format!("{:.2}", run.p90_ms),
                format!("{:.2}", run.max_ms),
                format!("{:.0}", run.pairs_per_batch),
                format!(
                    "{:.0}",
                    run.memory_bytes as f64 / run.rows_total.max(1) as f64
                ),
                run.hwm_mib
                    .map_or_else(|| "n/a".into(), |m| format!("{m:.0} MiB")),
            ]);
            let mut row = vec![round.to_string(), run.rows.to_string()];
            row.extend(run.phases.iter().cloned());
            phase_rows.push(row);
            runs.push(run);
        }
        rounds.push(runs);
    }
    let tables = [
        Table::new(
            &format!(
                "State scaling: {} timed batches of {} trades against the join state's size \
                 (each run is a process of its own, from a new state):",
                config.batches, config.batch_rows
            ),
            [
                "round",
                "state rows",
                "build s",
                "median ms/batch",
                "mean ms",
                "p90 ms",
                "max ms",
                "pairs/batch",
                "state bytes/row (memory_used_bytes)",
                "peak RSS of the run",
            ],
            rows,
        ),
        Table::new(
            "Median ms per phase of the timed batches:",
            ["round", "state rows"].into_iter().chain(PHASES),
            phase_rows,
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
        let (small, large) = (runs[0].rows, runs[runs.len() - 1].rows);
        result
            .targets
            .extend(Target::scaling(&medians, 1.5, |rounds_counted| {
                format!(
                    "join per-batch time, {large} / {small} rows of state ({}-trade batches), \
                 median over {} rounds",
                    config.batch_rows, rounds_counted
                )
            }));
    }
    result.data["state"] = serde_json::json!(
        rounds
            .iter()
            .enumerate()
            .flat_map(|(round, runs)| runs.iter().map(move |r| serde_json::json!({
                "round": round + 1, "rows": r.rows, "median_ms": r.median_ms,
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
    if let Ok(rows) = std::env::var(STATE_CHILD_ENV) {
        return state_child(&config, &rows).await;
    }
    let mut result = BenchResult::start(
        "join",
        "Stream–stream join: stream vs batch, state scaling",
        "cargo bench --bench join",
        config.full,
    );
    let tmp = tempfile::tempdir()?;
    if config.stream {
        stream_vs_batch(&config, tmp.path(), &mut result).await?;
    }
    if config.state {
        state_scaling(&config, tmp.path(), &mut result).await?;
    }
    result.finish(config.stream && config.state)?;
    Ok(())
}
