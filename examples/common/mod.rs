//! What the two trading examples share (`trades`, the main one, and
//! `kafka_trades`): the desk's metrics, [`minute_metrics`], the trades
//! they are computed over, and reading the metrics back to compare a
//! stream with a batch report.
//!
//! The trades' schema is the benchmarks' (`tidemill_harness::trades`):
//! `symbol`, `exchange`, `price`, `quantity`, `event_time`
//! (Timestamp(Millisecond)).

// Each example uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::ensure;
use arrow::array::{
    AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMillisecondType};
use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::prelude::*;
use rand::Rng;
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
    // Strings may come back as Utf8View from DataFusion's parquet reader.
    let df = df.select(vec![
        col("window_start"),
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
