//! What the two trading examples share (`trades`, the main one, and
//! `kafka_trades`): the desk's metrics, [`minute_metrics`], the trades
//! they are computed over, reading the metrics back to compare a stream
//! with a batch report, and the Delta table both write their bars to
//! ([`table_location`], [`read_delta`], [`check_exactly_once`]).
//!
//! The trades' schema is the benchmarks' (`tidemill_harness::trades`):
//! `symbol`, `exchange`, `price`, `quantity`, `event_time`
//! (Timestamp(Millisecond)).

// Each example uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, ensure};
use arrow::array::{
    AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMillisecondType};
use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::prelude::*;
use rand::Rng;
use tidemill::QueryProgress;
use tidemill::engine::window::tumble;

pub use tidemill_harness::trades::trade_schema;

/// 2026-03-02 14:30:00 UTC, the first trade's minute.
pub const START_MS: i64 = 1_772_461_800_000;
/// A minute, the metrics' window.
pub const MINUTE_MS: i64 = 60_000;
/// The symbols traded, with their base price.
pub const SYMBOLS: [(&str, f64); 3] = [("AAPL", 231.40), ("MSFT", 412.80), ("NVDA", 118.25)];
/// The exchanges they trade on.
pub const EXCHANGES: [&str; 2] = ["XNAS", "XNYS"];

/// The metrics, written once and used by the streams and the batch reports
/// alike: per one-minute tumbling window, symbol and exchange, the number
/// of trades, the volume (shares traded), the VWAP (volume-weighted
/// average price), and the high and low price.
pub fn minute_metrics(df: DataFrame) -> Result<DataFrame> {
    df.aggregate(
        vec![
            tumble(col("event_time"), "1 minute").alias("window"),
            col("symbol"),
            col("exchange"),
        ],
        vec![
            count(lit(1)).alias("trades"),
            sum(col("quantity")).alias("volume"),
            sum(col("price") * cast(col("quantity"), DataType::Float64)).alias("notional"),
            max(col("price")).alias("high"),
            min(col("price")).alias("low"),
        ],
    )?
    .select(vec![
        get_field(col("window"), "start").alias("window_start"),
        get_field(col("window"), "end").alias("window_end"),
        col("symbol"),
        col("exchange"),
        col("trades"),
        col("volume"),
        (col("notional") / cast(col("volume"), DataType::Float64)).alias("vwap"),
        col("high"),
        col("low"),
    ])
}

/// One generated trade.
#[derive(Clone, Copy)]
pub struct Trade {
    /// One of [`SYMBOLS`].
    pub symbol: &'static str,
    /// One of [`EXCHANGES`].
    pub exchange: &'static str,
    /// The price, in whole cents.
    pub price: f64,
    /// The shares traded.
    pub quantity: i64,
    /// When the trade happened, in milliseconds since the epoch.
    pub event_time_ms: i64,
}

impl Trade {
    /// A trade of a random symbol on a random exchange at `event_time_ms`.
    pub fn random(rng: &mut impl Rng, event_time_ms: i64) -> Self {
        let (symbol, base_price) = SYMBOLS[rng.random_range(0..SYMBOLS.len())];
        // Prices in whole cents within 1% of the symbol's base price.
        let cents = (base_price * 100.0 * rng.random_range(0.99..1.01)).round();
        Trade {
            symbol,
            exchange: EXCHANGES[rng.random_range(0..EXCHANGES.len())],
            price: cents / 100.0,
            quantity: rng.random_range(1..=50) * 10,
            event_time_ms,
        }
    }

    /// The trade's minute, symbol and exchange: a row of the metrics.
    pub fn key(&self) -> Key {
        (
            self.event_time_ms - self.event_time_ms.rem_euclid(MINUTE_MS),
            self.symbol.to_string(),
            self.exchange.to_string(),
        )
    }
}

/// A row of the metrics: (window start in ms, symbol, exchange).
pub type Key = (i64, String, String);

/// The metric values of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// The number of trades.
    pub trades: i64,
    /// The shares traded.
    pub volume: i64,
    /// The volume-weighted average price.
    pub vwap: f64,
    /// The highest price.
    pub high: f64,
    /// The lowest price.
    pub low: f64,
}

impl Metrics {
    /// Equal, allowing for the last bits of the VWAP: its sum adds the same
    /// numbers in another order in the stream (batch by batch) than in the
    /// batch report. Counts, volumes, highs and lows are exact.
    pub fn same_as(&self, other: &Metrics) -> bool {
        self.trades == other.trades
            && self.volume == other.volume
            && self.high == other.high
            && self.low == other.low
            && (self.vwap - other.vwap).abs() <= 1e-9 * self.vwap.abs()
    }
}

/// The metrics in `df` (the output of [`minute_metrics`]) by key; fails if
/// a key appears twice.
pub async fn metrics_by_key(df: DataFrame) -> anyhow::Result<BTreeMap<Key, Metrics>> {
    // Strings may come back as Utf8View from DataFusion's parquet reader,
    // and times in microseconds from a Delta table.
    let df = df.select(vec![
        cast(
            col("window_start"),
            DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .alias("window_start"),
        cast(col("symbol"), DataType::Utf8).alias("symbol"),
        cast(col("exchange"), DataType::Utf8).alias("exchange"),
        col("trades"),
        col("volume"),
        col("vwap"),
        col("high"),
        col("low"),
    ])?;
    let mut map = BTreeMap::new();
    for batch in df.collect().await? {
        let start = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let symbol = batch.column(1).as_string::<i32>();
        let exchange = batch.column(2).as_string::<i32>();
        let trades = batch.column(3).as_primitive::<Int64Type>();
        let volume = batch.column(4).as_primitive::<Int64Type>();
        let vwap = batch.column(5).as_primitive::<Float64Type>();
        let high = batch.column(6).as_primitive::<Float64Type>();
        let low = batch.column(7).as_primitive::<Float64Type>();
        for i in 0..batch.num_rows() {
            let key = (
                start.value(i),
                symbol.value(i).to_string(),
                exchange.value(i).to_string(),
            );
            let metrics = Metrics {
                trades: trades.value(i),
                volume: volume.value(i),
                vwap: vwap.value(i),
                high: high.value(i),
                low: low.value(i),
            };
            ensure!(
                map.insert(key.clone(), metrics).is_none(),
                "two rows for {key:?}"
            );
        }
    }
    Ok(map)
}

/// Writes `rows` as the parquet file `trades-<n>.parquet`: under a dot-name
/// first, then renamed, so the stream never sees a half-written file.
pub fn write_file(dir: &Path, n: usize, rows: &[Trade]) -> anyhow::Result<()> {
    let batch = RecordBatch::try_new(
        trade_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|t| t.symbol))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|t| t.exchange),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|t| t.price))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|t| t.quantity),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|t| t.event_time_ms),
            )),
        ],
    )?;
    let tmp = dir.join(format!(".trades-{n:04}.parquet.tmp"));
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&tmp)?, trade_schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    std::fs::rename(&tmp, dir.join(format!("trades-{n:04}.parquet")))?;
    Ok(())
}

/// Where an example writes its Delta table: the path in the environment
/// variable `env` if it is set, otherwise `target/lake/<name>` in the
/// workspace (beside the build, out of git's way).
pub fn table_location(env: &str, name: &str) -> PathBuf {
    match std::env::var_os(env) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("lake")
            .join(name),
    }
}

/// Makes way for a new table at `path`: each run of an example writes its
/// table afresh (a new checkpoint is a new query, which would append its
/// bars a second time), so a Delta table a previous run left there is
/// removed. Anything else at `path` is left alone and refused.
pub fn clear_table(path: &Path) -> anyhow::Result<()> {
    if !path.exists() || path.read_dir()?.next().is_none() {
        return Ok(());
    }
    ensure!(
        path.join("_delta_log").is_dir(),
        "{} holds something other than a Delta table; choose another path for the example's table",
        path.display()
    );
    std::fs::remove_dir_all(path)
        .with_context(|| format!("removing the previous run's table {}", path.display()))?;
    Ok(())
}

/// The Delta table at `path`, read by deltalake's own DataFusion table
/// provider (an independent reader, not Tidemill's), with the table.
pub async fn read_delta(
    ctx: &SessionContext,
    path: &Path,
) -> anyhow::Result<(DataFrame, deltalake::DeltaTable)> {
    let absolute = std::path::absolute(path)?;
    let url = url::Url::from_directory_path(&absolute)
        .map_err(|()| anyhow::anyhow!("{} is not a directory path", absolute.display()))?;
    let table = deltalake::open_table(url).await?;
    table.update_datafusion_session(&ctx.state())?;
    let df = ctx.read_table(table.table_provider().await?)?;
    Ok((df, table))
}

/// Checks that the Delta `table` holds every batch of the query whose
/// progress is `progress` exactly once, as Delta's own history says: one
/// version per batch (the first created the table), the latest carrying
/// the query's transaction with the last batch's id, and `rows` (the rows
/// read back) the rows the batches wrote.
pub async fn check_exactly_once(
    table: &deltalake::DeltaTable,
    progress: &[QueryProgress],
    rows: usize,
) -> anyhow::Result<()> {
    let last = progress.last().context("the query ran no batch")?;
    let batches = progress.len() as u64;
    ensure!(
        progress
            .iter()
            .enumerate()
            .all(|(i, p)| p.batch_id == i as u64 && p.id == last.id),
        "the progress is not the batches 0..{batches} of one query"
    );
    ensure!(
        table.version() == Some(batches - 1),
        "the table has {} versions for {batches} batches",
        table.version().map_or(0, |v| v + 1)
    );
    let snapshot = table.snapshot()?;
    let committed = snapshot
        .transaction_version(table.log_store().as_ref(), &last.id)
        .await?;
    ensure!(
        committed == Some(last.batch_id as i64),
        "the table's transaction of query {} is {committed:?}, not the last batch {}",
        last.id,
        last.batch_id
    );
    let written: u64 = progress.iter().map(|p| p.num_output_rows).sum();
    ensure!(
        rows as u64 == written,
        "the table holds {rows} rows, the batches wrote {written}"
    );
    Ok(())
}
