//! Per-symbol session VWAP with arbitrary stateful processing
//! (`transform_with_state`, Spark 4's `transformWithState`): a running
//! VWAP per symbol on every micro-batch, reset at each session's close by
//! an event-time timer, and a price-jump alert kept quiet by a "last alert"
//! value with a time to live.
//!
//! **The case study.** The trade feed of the `trades` example (`symbol`,
//! `exchange`, `price`, `quantity`, `event_time`) lands as parquet files.
//! The desk trades in sessions of five minutes of event time and wants,
//! per symbol:
//!
//! - the session's running VWAP (volume-weighted average price), volume
//!   and trade count, updated on every micro-batch (`kind = 'vwap'`);
//! - the session's final figures once, when it closes (`kind = 'final'`),
//!   after which the next session starts from zero;
//! - an alert when a trade's price is 2 % or more away from its session's
//!   running VWAP (once the session has 10 trades), but not again for the
//!   same symbol within a minute of event time of the last alert
//!   (`kind = 'alert'`).
//!
//! No SQL aggregation says this; the [`SessionVwap`] processor does, per
//! symbol, with state that the engine checkpoints:
//!
//! - `sessions`, a `MapState` from session start to the running figures.
//!   A map, not one value: the watermark trails the data, so a symbol's
//!   next session has rows before its previous one is closed.
//! - an event-time timer per session at its close: it fires once the
//!   watermark (latest event time minus 10 seconds) reaches the close, in a
//!   batch without data if need be, emits the final row and removes the
//!   session's figures.
//! - `last_alert`, a `ValueState` with a time to live of 5 minutes of
//!   processing time: the cooldown compares event times, and the time to
//!   live cleans the value up once it can no longer silence anything (in a
//!   live feed processing time runs with event time). This example replays
//!   15 minutes of trades in well under a minute, so the time to live
//!   never ends while it runs and its alerts depend on the data only.
//!
//! The stream runs twice with `Trigger::AvailableNow` on one checkpoint, as
//! a scheduled job would: the second run resumes the open session's
//! figures and timers from the checkpoint.
//!
//! **The data.** Trades are generated from a fixed seed as in the `trades`
//! example (prices within 1 % of each symbol's base price, rows out of
//! order by up to 8 seconds, which the watermark's 10 seconds absorb: no
//! row is late), plus a few price jumps at fixed times ([`JUMPS`]).
//!
//! **What the example checks** (it fails loudly if the engine regresses),
//! against a batch computation in DataFusion SQL over the same files:
//! every session the final watermark has closed has exactly one final row
//! per symbol, equal to the batch's (trade count and volume exactly, VWAP
//! to 1e-9 relative); no session still open has one; every session's
//! latest running row equals the batch's too; the last micro-batch reads
//! nothing and emits the final rows of the session its watermark closed
//! (timers firing in a batch without data); the alerts are exactly the
//! jumps the cooldown lets through; no row was dropped as late.
//!
//! Run it with `cargo run --example session_vwap`; `cargo test --example
//! session_vwap` (and `cargo test --workspace`) runs it as a test.

mod common;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tidemill::QueryProgress;
use tidemill::prelude::*;
use tidemill::processor::{
    ExpiredTimer, GroupKey, KeyRows, MapState, ProcessorContext, ProcessorResult,
    StateDeclarations, StatefulProcessor, TimeMode, ValueState,
};

use common::{EXCHANGES, MINUTE_MS, START_MS, SYMBOLS, Trade, write_file};

/// A session: five minutes of event time, aligned on the epoch (the first
/// trade's minute, `START_MS`, is a session start).
const SESSION_MS: i64 = 5 * MINUTE_MS;
const _: () = assert!(START_MS % SESSION_MS == 0);
/// Files in the input directory, each covering `SECONDS_PER_FILE` seconds:
/// 15 minutes and 20 seconds, so that the last watermark closes a third
/// session (in a batch without data) and a fourth is open at the end. The
/// first `FIRST_RUN_FILES` exist when the stream first runs.
const FILES: usize = 23;
const FIRST_RUN_FILES: usize = 11;
const SECONDS_PER_FILE: i64 = 40;
const TRADES_PER_FILE: usize = 160;
/// How many files the stream admits into one micro-batch.
const FILES_PER_BATCH: u64 = 3;
/// The watermark delay, more than the largest disorder: no row is late.
const WATERMARK_DELAY_SECONDS: i64 = 10;
const MAX_DISORDER_MS: i64 = 8_000;
const _: () = assert!(MAX_DISORDER_MS < WATERMARK_DELAY_SECONDS * 1000);
/// An alert: a trade `ALERT_MOVE` or more away from its session's VWAP,
/// once the session has `ALERT_MIN_TRADES` trades, and not within
/// `ALERT_COOLDOWN_MS` of event time after the symbol's last alert.
const ALERT_MOVE: f64 = 0.02;
const ALERT_MIN_TRADES: i64 = 10;
const ALERT_COOLDOWN_MS: i64 = MINUTE_MS;
/// The last alert's time to live, in processing time.
const ALERT_TTL: Duration = Duration::from_secs(5 * 60);

/// Price jumps added to the generated trades: (seconds after `START_MS`,
/// index in `SYMBOLS`, price as a multiple of the base price). Ordinary
/// prices stay within 1 % of the base, so only these can move 2 % from a
/// VWAP. The jumps of a symbol within the cooldown of each other are in
/// the same file, so in the same micro-batch.
const JUMPS: [(i64, usize, f64); 7] = [
    (125, 0, 1.05), // AAPL: alert
    (150, 0, 1.05), // AAPL: 25 s later, silenced
    (250, 0, 0.95), // AAPL: two minutes after the first: alert
    (430, 1, 1.04), // MSFT, second session: alert
    (645, 2, 0.96), // NVDA, third session: alert
    (675, 2, 1.05), // NVDA: 30 s later, silenced
    (916, 2, 1.05), // NVDA, fourth session (still open at the end): alert
];

/// The session `event_time_ms` falls in.
fn session_start(event_time_ms: i64) -> i64 {
    event_time_ms - event_time_ms.rem_euclid(SESSION_MS)
}

/// A session's figures so far, per symbol.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Running {
    trades: i64,
    volume: i64,
    /// The sum of price × quantity.
    notional: f64,
    /// The latest event time among the session's trades.
    as_of_ms: i64,
}

impl Running {
    fn vwap(&self) -> f64 {
        self.notional / self.volume as f64
    }

    fn add(&mut self, price: f64, quantity: i64, event_time_ms: i64) {
        self.trades += 1;
        self.volume += quantity;
        self.notional += price * quantity as f64;
        self.as_of_ms = self.as_of_ms.max(event_time_ms);
    }
}

/// The symbol's last alert.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LastAlert {
    event_time_ms: i64,
    price: f64,
}

/// The processor, per symbol: the running figures of each open session,
/// a timer at each session's close, and the last alert.
#[derive(Clone)]
struct SessionVwap {
    sessions: MapState<i64, Running>,
    last_alert: ValueState<LastAlert>,
}

impl SessionVwap {
    fn new() -> Self {
        Self {
            sessions: MapState::new("sessions"),
            last_alert: ValueState::new("last_alert").with_ttl(ALERT_TTL),
        }
    }
}

/// The output: one schema for the three kinds of row.
fn output_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        // 'vwap' (running), 'final' (the session closed) or 'alert'.
        Field::new("kind", DataType::Utf8, false),
        Field::new("session_start", ts.clone(), false),
        // The latest trade counted; for an alert, the alerting trade's time.
        Field::new("as_of", ts, false),
        // The session's figures (for an alert: before the alerting trade).
        Field::new("trades", DataType::Int64, false),
        Field::new("volume", DataType::Int64, false),
        Field::new("vwap", DataType::Float64, false),
        // The alerting trade's price; null for the other kinds.
        Field::new("price", DataType::Float64, true),
    ]))
}

/// One output row, before it is a column of a batch.
struct Row {
    kind: &'static str,
    session_start: i64,
    as_of: i64,
    running: Running,
    price: Option<f64>,
}

fn to_batch(symbol: &str, rows: &[Row]) -> ProcessorResult<Vec<RecordBatch>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| symbol))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|r| r.session_start),
        )),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|r| r.as_of),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.running.trades),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.running.volume),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.running.vwap()),
        )),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.price))),
    ];
    Ok(vec![RecordBatch::try_new(output_schema(), columns)?])
}

impl StatefulProcessor for SessionVwap {
    fn output_schema(&self) -> SchemaRef {
        output_schema()
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.sessions)?;
        states.declare(&self.last_alert)
    }

    /// The symbol's rows of this batch, in event-time order: each may
    /// alert (against its session's VWAP before it), then counts; one
    /// running row per session the batch touched, whose close gets a timer.
    ///
    /// The rows are sorted first: the engine gives a key's rows of a batch
    /// in the order its input partitions deliver them, which differs from
    /// one run of the same batch to the next when the batch reads several
    /// files, and the alerts depend on the order.
    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let symbol: String = key.decode()?;
        // Each column read in place, without a batch of the key's rows.
        let prices = rows.primitive::<Float64Type>("price")?;
        let quantities = rows.primitive::<Int64Type>("quantity")?;
        let times = rows.primitive::<TimestampMillisecondType>("event_time")?;

        let mut touched: BTreeMap<i64, Running> = BTreeMap::new();
        let mut last_alert = self.last_alert.get(ctx)?;
        let mut out = Vec::new();
        let mut order: Vec<usize> = (0..rows.num_rows()).collect();
        order.sort_by(|&a, &b| {
            (times.value(a), quantities.value(a))
                .cmp(&(times.value(b), quantities.value(b)))
                .then(prices.value(a).total_cmp(&prices.value(b)))
        });
        for i in order {
            let (price, quantity, time) = (prices.value(i), quantities.value(i), times.value(i));
            let start = session_start(time);
            let running = match touched.entry(start) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(self.sessions.get(ctx, &start)?.unwrap_or_default()),
            };
            if running.trades >= ALERT_MIN_TRADES {
                let vwap = running.vwap();
                // Before or within the cooldown after the last alert.
                let quiet = last_alert.is_some_and(|a| time - a.event_time_ms < ALERT_COOLDOWN_MS);
                if ((price - vwap) / vwap).abs() >= ALERT_MOVE && !quiet {
                    let alert = LastAlert {
                        event_time_ms: time,
                        price,
                    };
                    self.last_alert.set(ctx, &alert)?;
                    last_alert = Some(alert);
                    out.push(Row {
                        kind: "alert",
                        session_start: start,
                        as_of: time,
                        running: *running,
                        price: Some(price),
                    });
                }
            }
            running.add(price, quantity, time);
        }
        for (start, running) in &touched {
            self.sessions.insert(ctx, start, running)?;
            // Registering it again (every batch of the session) is a no-op.
            ctx.register_timer(start + SESSION_MS)?;
            out.push(Row {
                kind: "vwap",
                session_start: *start,
                as_of: running.as_of_ms,
                running: *running,
                price: None,
            });
        }
        to_batch(&symbol, &out)
    }

    /// A session closed: its final row, and its figures are gone.
    fn handle_expired_timer(
        &mut self,
        key: &GroupKey,
        timer: ExpiredTimer,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let symbol: String = key.decode()?;
        let start = timer.time_ms - SESSION_MS;
        let running = self.sessions.get(ctx, &start)?.ok_or_else(|| {
            format!(
                "{symbol}: the timer of the session starting at {start} fired without its state"
            )
        })?;
        self.sessions.remove(ctx, &start)?;
        to_batch(
            &symbol,
            &[Row {
                kind: "final",
                session_start: start,
                as_of: running.as_of_ms,
                running,
                price: None,
            }],
        )
    }
}

/// The trades of file `n`, in arrival order: on time, each up to
/// `MAX_DISORDER_MS` earlier than its place in the file, with the file's
/// jumps at their place (and exactly at their time).
fn generate_file(n: usize, rng: &mut impl Rng) -> Vec<Trade> {
    let file_start = START_MS + n as i64 * SECONDS_PER_FILE * 1000;
    let file_end = file_start + SECONDS_PER_FILE * 1000;
    let spacing = SECONDS_PER_FILE * 1000 / TRADES_PER_FILE as i64;
    let mut rows: Vec<(i64, Trade)> = (0..TRADES_PER_FILE)
        .map(|i| {
            let nominal = file_start + i as i64 * spacing;
            let disorder = rng.random_range(0..=MAX_DISORDER_MS);
            (
                nominal,
                Trade::random(rng, (nominal - disorder).max(START_MS)),
            )
        })
        .collect();
    for (at, symbol, factor) in JUMPS {
        let time = START_MS + at * 1000;
        if (file_start..file_end).contains(&time) {
            let (symbol, base) = SYMBOLS[symbol];
            let jump = Trade {
                symbol,
                exchange: EXCHANGES[0],
                price: (base * factor * 100.0).round() / 100.0,
                quantity: 100,
                event_time_ms: time,
            };
            let place = rows.partition_point(|(nominal, _)| *nominal <= time);
            rows.insert(place, (time, jump));
        }
    }
    rows.into_iter().map(|(_, t)| t).collect()
}

/// Runs the streaming job once, until it has processed the files present
/// (`Trigger::AvailableNow`), and returns its per-batch progress.
async fn run_stream(
    ctx: &SessionContext,
    input: &str,
    output: &str,
    checkpoint: &str,
) -> anyhow::Result<Vec<QueryProgress>> {
    let query = ctx
        .read_stream(FileSource::parquet(input).max_files_per_trigger(FILES_PER_BATCH))
        .await?
        .with_watermark("event_time", &format!("{WATERMARK_DELAY_SECONDS} seconds"))?
        .transform_with_state(
            &["symbol"],
            SessionVwap::new(),
            TimeMode::EventTime,
            OutputMode::Append,
        )?
        .write_stream()
        .sink(ParquetSink::new(output))
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .checkpoint(checkpoint)
        .query_name("session_vwap")
        .start()
        .await?;
    query.await_termination().await?;
    let progress = query.recent_progress();
    for p in &progress {
        let state = p.state_operators.first().context("no state operator")?;
        println!(
            "  batch {:>2}: {:>4} rows in, {:>2} rows out, watermark {:<24} state {:>2} rows",
            p.batch_id,
            p.num_input_rows,
            p.num_output_rows,
            p.event_time.watermark.as_deref().unwrap_or("-"),
            state.num_rows_total,
        );
    }
    Ok(progress)
}

/// A column as strings, whatever the string type (parquet may give
/// `Utf8View`).
fn strings(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<String>> {
    let column = batch.column_by_name(name).context(name.to_string())?;
    let column = arrow::compute::cast(column, &DataType::Utf8)?;
    Ok(column
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

/// A column as i64 (timestamps as their milliseconds).
fn ints(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<i64>> {
    let column = batch.column_by_name(name).context(name.to_string())?;
    let column = arrow::compute::cast(column, &DataType::Int64)?;
    ensure!(column.null_count() == 0, "column {name} has nulls");
    Ok(column.as_primitive::<Int64Type>().values().to_vec())
}

/// A column as optional f64.
fn floats(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<Option<f64>>> {
    let column = batch.column_by_name(name).context(name.to_string())?;
    Ok(column.as_primitive::<Float64Type>().iter().collect())
}

/// A session's figures, as the stream or the batch computation has them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    trades: i64,
    volume: i64,
    vwap: f64,
}

impl Figures {
    /// Counts exact; the VWAP to the last bits (its sum adds the same
    /// numbers in another order in the stream than in the batch).
    fn same_as(&self, other: &Figures) -> bool {
        self.trades == other.trades
            && self.volume == other.volume
            && (self.vwap - other.vwap).abs() <= 1e-9 * self.vwap.abs()
    }
}

/// One row of the stream's output.
#[derive(Debug, Clone)]
struct OutRow {
    symbol: String,
    kind: String,
    session_start: i64,
    as_of: i64,
    figures: Figures,
    price: Option<f64>,
}

async fn read_output(df: DataFrame) -> anyhow::Result<Vec<OutRow>> {
    let mut rows = Vec::new();
    for batch in df.collect().await? {
        let symbol = strings(&batch, "symbol")?;
        let kind = strings(&batch, "kind")?;
        let session_start = ints(&batch, "session_start")?;
        let as_of = ints(&batch, "as_of")?;
        let trades = ints(&batch, "trades")?;
        let volume = ints(&batch, "volume")?;
        let vwap = floats(&batch, "vwap")?;
        let price = floats(&batch, "price")?;
        for i in 0..batch.num_rows() {
            rows.push(OutRow {
                symbol: symbol[i].clone(),
                kind: kind[i].clone(),
                session_start: session_start[i],
                as_of: as_of[i],
                figures: Figures {
                    trades: trades[i],
                    volume: volume[i],
                    vwap: vwap[i].context("null vwap")?,
                },
                price: price[i],
            });
        }
    }
    Ok(rows)
}

/// (symbol, session start) → figures, from the batch computation.
async fn batch_sessions(ctx: &SessionContext) -> anyhow::Result<BTreeMap<(String, i64), Figures>> {
    let df = ctx
        .sql(
            "SELECT symbol,
                    date_bin(INTERVAL '5 minutes', event_time) AS session_start,
                    count(*) AS trades,
                    sum(quantity) AS volume,
                    sum(price * CAST(quantity AS DOUBLE)) / CAST(sum(quantity) AS DOUBLE) AS vwap
             FROM trades
             GROUP BY 1, 2",
        )
        .await?;
    let mut sessions = BTreeMap::new();
    for batch in df.collect().await? {
        let symbol = strings(&batch, "symbol")?;
        let start = ints(&batch, "session_start")?;
        let trades = ints(&batch, "trades")?;
        let volume = ints(&batch, "volume")?;
        let vwap = floats(&batch, "vwap")?;
        for i in 0..batch.num_rows() {
            let figures = Figures {
                trades: trades[i],
                volume: volume[i],
                vwap: vwap[i].context("null vwap")?,
            };
            ensure!(
                sessions
                    .insert((symbol[i].clone(), start[i]), figures)
                    .is_none(),
                "two batch rows for {} {}",
                symbol[i],
                start[i]
            );
        }
    }
    Ok(sessions)
}

/// The jumps the cooldown lets through: (symbol, event time, price).
fn expected_alerts() -> BTreeSet<(String, i64, u64)> {
    let mut jumps: Vec<_> = JUMPS.to_vec();
    jumps.sort_by_key(|(at, symbol, _)| (*symbol, *at));
    let mut last: BTreeMap<usize, i64> = BTreeMap::new();
    let mut alerts = BTreeSet::new();
    for (at, symbol, factor) in jumps {
        let time = START_MS + at * 1000;
        if last
            .get(&symbol)
            .is_some_and(|l| time - l < ALERT_COOLDOWN_MS)
        {
            continue;
        }
        last.insert(symbol, time);
        let (name, base) = SYMBOLS[symbol];
        let price = (base * factor * 100.0).round() / 100.0;
        alerts.insert((name.to_string(), time, price.to_bits()));
    }
    alerts
}

fn hh_mm_ss(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The example: generate, stream twice, compute in batch, compare.
async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("tidemill-session-vwap-")
        .tempdir()?;
    let input_dir = root.path().join("trades");
    std::fs::create_dir_all(&input_dir)?;
    let input = format!("{}/", input_dir.to_str().context("path")?);
    let output = root.path().join("session_vwap");
    let output = output.to_str().context("path")?.to_string();
    let checkpoint = root.path().join("checkpoint");
    let checkpoint = checkpoint.to_str().context("path")?.to_string();
    println!("input:      {input}");
    println!("output:     {output}");
    println!("checkpoint: {checkpoint}");

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let files: Vec<Vec<Trade>> = (0..FILES).map(|n| generate_file(n, &mut rng)).collect();
    let total_rows: usize = files.iter().map(Vec::len).sum();
    let max_event_time = files
        .iter()
        .flatten()
        .map(|t| t.event_time_ms)
        .max()
        .context("no trades")?;

    let ctx = SessionContext::new();
    for (n, rows) in files.iter().enumerate().take(FIRST_RUN_FILES) {
        write_file(&input_dir, n, rows)?;
    }
    println!("\nstream, run 1 ({FIRST_RUN_FILES} files present):");
    let mut progress = run_stream(&ctx, &input, &output, &checkpoint).await?;
    for (n, rows) in files.iter().enumerate().skip(FIRST_RUN_FILES) {
        write_file(&input_dir, n, rows)?;
    }
    println!(
        "stream, run 2 ({} more files, resuming from the checkpoint):",
        FILES - FIRST_RUN_FILES
    );
    progress.extend(run_stream(&ctx, &input, &output, &checkpoint).await?);

    // The stream's output, and the batch computation over the same files.
    let stream_df = ParquetSink::read_committed(&ctx, &output).await?;
    ctx.register_parquet("trades", &input, ParquetReadOptions::default())
        .await?;
    let batch = batch_sessions(&ctx).await?;
    let out = read_output(stream_df.clone()).await?;

    println!("\nfinal session rows (stream):");
    stream_df
        .clone()
        .filter(col("kind").eq(lit("final")))?
        .select(vec![
            col("session_start"),
            col("symbol"),
            col("trades"),
            col("volume"),
            round(vec![col("vwap"), lit(4)]).alias("vwap"),
        ])?
        .sort(vec![
            col("session_start").sort(true, false),
            col("symbol").sort(true, false),
        ])?
        .show()
        .await?;
    println!("alerts (stream):");
    stream_df
        .filter(col("kind").eq(lit("alert")))?
        .select(vec![
            col("as_of").alias("trade_time"),
            col("symbol"),
            col("price"),
            round(vec![col("vwap"), lit(4)]).alias("session_vwap"),
            round(vec![
                (col("price") / col("vwap") - lit(1.0)) * lit(100.0),
                lit(2),
            ])
            .alias("move_pct"),
        ])?
        .sort(vec![col("trade_time").sort(true, false)])?
        .show()
        .await?;

    // The progress: every row read, none late, the final watermark.
    let rows_in: u64 = progress.iter().map(|p| p.num_input_rows).sum();
    let late_dropped: u64 = progress
        .iter()
        .flat_map(|p| &p.state_operators)
        .map(|s| s.num_rows_dropped_by_watermark)
        .sum();
    let final_watermark = progress
        .iter()
        .rev()
        .find_map(|p| p.event_time.watermark.as_deref())
        .context("the stream never had a watermark")?;
    let final_watermark_ms =
        chrono::DateTime::parse_from_rfc3339(final_watermark)?.timestamp_millis();
    ensure!(
        rows_in == total_rows as u64,
        "the stream read {rows_in} rows, the files hold {total_rows}"
    );
    ensure!(
        late_dropped == 0,
        "the stream dropped {late_dropped} rows as late; none is"
    );
    ensure!(
        final_watermark_ms == max_event_time - WATERMARK_DELAY_SECONDS * 1000,
        "final watermark {final_watermark} is not the latest event time minus \
         {WATERMARK_DELAY_SECONDS} seconds"
    );

    // Final rows: one per closed session and symbol, equal to the batch's;
    // none for a session still open.
    let mut finals: BTreeMap<(String, i64), Vec<&OutRow>> = BTreeMap::new();
    let mut latest: BTreeMap<(String, i64), &OutRow> = BTreeMap::new();
    let mut running_seen = BTreeSet::new();
    let mut alerts = Vec::new();
    for row in &out {
        let key = (row.symbol.clone(), row.session_start);
        match row.kind.as_str() {
            "final" => finals.entry(key).or_default().push(row),
            "vwap" => {
                ensure!(
                    running_seen.insert((key.clone(), row.figures.trades)),
                    "two running rows for {key:?} at {} trades",
                    row.figures.trades
                );
                let newest = latest.entry(key).or_insert(row);
                if row.figures.trades > newest.figures.trades {
                    *newest = row;
                }
            }
            "alert" => alerts.push(row),
            other => anyhow::bail!("unknown kind '{other}'"),
        }
    }
    // The data ends past a session's close by more than the watermark
    // delay: that session's timers fire in a batch without new data, the
    // last, which emits only its final rows.
    let last_close = session_start(final_watermark_ms);
    let closed_last: Vec<_> = batch
        .keys()
        .filter(|k| k.1 + SESSION_MS == last_close)
        .collect();
    let last = progress.last().context("no batch")?;
    ensure!(
        last.num_input_rows == 0 && last.num_output_rows == closed_last.len() as u64,
        "the last batch should read nothing and emit the {} final rows of the session closing \
         at {}: {} rows in, {} out",
        closed_last.len(),
        hh_mm_ss(last_close),
        last.num_input_rows,
        last.num_output_rows
    );
    let mut closed = 0;
    let mut open = BTreeSet::new();
    for (key, b) in &batch {
        let close = key.1 + SESSION_MS;
        let emitted = finals.get(key).map(Vec::as_slice).unwrap_or_default();
        if close <= final_watermark_ms {
            ensure!(
                emitted.len() == 1,
                "session {key:?} closed at {} (final watermark {final_watermark}) and has {} \
                 final rows",
                hh_mm_ss(close),
                emitted.len()
            );
            let s = &emitted[0].figures;
            ensure!(
                s.same_as(b),
                "session {key:?}: the stream's final row {s:?} differs from the batch's {b:?}"
            );
            closed += 1;
        } else {
            ensure!(
                emitted.is_empty(),
                "session {key:?} is still open (closes at {}, final watermark {final_watermark}) \
                 but has a final row",
                hh_mm_ss(close)
            );
            open.insert(key.1);
        }
        let r = latest
            .get(key)
            .with_context(|| format!("no running row for session {key:?}"))?;
        ensure!(
            r.figures.same_as(b),
            "session {key:?}: the latest running row {:?} differs from the batch's {b:?}",
            r.figures
        );
    }
    for key in finals.keys().chain(latest.keys()) {
        ensure!(
            batch.contains_key(key),
            "the stream has session {key:?}, the batch computation does not"
        );
    }
    ensure!(
        closed > 0 && !open.is_empty(),
        "the data should close sessions and leave one open"
    );

    // Alerts: exactly the jumps the cooldown lets through, each 2 % or more
    // away from its session's VWAP, a cooldown apart per symbol.
    let got: BTreeSet<(String, i64, u64)> = alerts
        .iter()
        .map(|a| {
            let price = a.price.context("an alert without a price")?;
            Ok((a.symbol.clone(), a.as_of, price.to_bits()))
        })
        .collect::<anyhow::Result<_>>()?;
    let want = expected_alerts();
    ensure!(
        got.len() == alerts.len(),
        "an alert was emitted twice: {alerts:?}"
    );
    ensure!(
        got == want,
        "alerts {:?}, expected {:?}",
        got.iter()
            .map(|(s, t, _)| format!("{s} {}", hh_mm_ss(*t)))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(s, t, _)| format!("{s} {}", hh_mm_ss(*t)))
            .collect::<Vec<_>>()
    );
    for a in &alerts {
        let price = a.price.context("an alert without a price")?;
        let moved = (price - a.figures.vwap) / a.figures.vwap;
        ensure!(
            moved.abs() >= ALERT_MOVE && a.figures.trades >= ALERT_MIN_TRADES,
            "alert {a:?} moved {:.2} % after {} trades",
            moved * 100.0,
            a.figures.trades
        );
        ensure!(
            session_start(a.as_of) == a.session_start,
            "alert {a:?} is not in its trade's session"
        );
    }
    let silenced = JUMPS.len() - want.len();

    println!("checks:");
    println!(
        "  {closed} final rows (one per symbol and closed session) equal the batch computation; \
         sessions starting {} still open at the final watermark {final_watermark}",
        open.iter()
            .map(|s| hh_mm_ss(*s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  {} running rows; each session's latest equals the batch computation",
        running_seen.len()
    );
    println!(
        "  {} alerts for {} price jumps ({silenced} silenced by the {} s cooldown)",
        alerts.len(),
        JUMPS.len(),
        ALERT_COOLDOWN_MS / 1000
    );
    println!(
        "\n{} micro-batches over 2 runs, {rows_in} trades in, {} rows out, none late; \
         checks passed in {:.1} s",
        progress.len(),
        out.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn".parse().expect("valid filter")),
        )
        .with_target(false)
        .init();
    run().await
}

#[cfg(test)]
mod tests {
    /// `cargo test` runs the example, checks included.
    #[tokio::test(flavor = "multi_thread")]
    async fn example_runs() {
        super::run().await.unwrap();
    }
}
