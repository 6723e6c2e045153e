//! The trading workload: trades as rows (for the study's source) or as
//! seeded parquet files (for the streaming-vs-batch and Spark comparisons),
//! and the standard pipelines over them.
//!
//! Schema: `symbol` (Utf8, `S000`…`S099`), `exchange` (Utf8, one of
//! [`EXCHANGES`]), `price` (Float64, whole cents around a per-symbol
//! level), `quantity` (Int64, 1–1000), `event_time`
//! (Timestamp(Millisecond)).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemill_engine::StreamingDataFrame;
use tidemill_engine::window::tumble;

use crate::source::{AVAILABLE_AT, RowGenerator};

/// Symbols in the workload.
pub const SYMBOLS: usize = 100;
/// Exchanges in the workload.
pub const EXCHANGES: [&str; 5] = ["NASDAQ", "NYSE", "ARCA", "BATS", "IEX"];
/// Parquet files the file generator writes (plus one flush file).
pub const FILES: usize = 20;
/// The seed of the file generator.
pub const SEED: u64 = 42;
/// 2024-01-01T00:00:00Z, the first event time of the generated files.
pub const START_MS: i64 = 1_704_067_200_000;
/// The event time the generated files span (one hour).
pub const SPAN_MS: i64 = 3_600_000;
/// How far a generated trade may be behind the newest one (below the
/// 10-second watermark delay, so no row is late).
pub const DISORDER_MS: i64 = 5_000;
/// The watermark delay of the windowed pipelines.
pub const WATERMARK_DELAY: &str = "10 seconds";

/// The trade schema (see the module docs), also that of the examples and
/// of the Kafka tests and benchmark.
pub fn trade_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("exchange", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

fn symbols() -> Vec<String> {
    (0..SYMBOLS).map(|i| format!("S{i:03}")).collect()
}

/// SplitMix64: a row's pseudo-random bits from its number alone.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Trades for a study's source: row `i`'s fields are a function of `i`
/// (and the seed); its event time is its availability instant minus up to
/// `disorder` (default 2 s, below the 10 s watermark delay).
#[derive(Debug, Clone)]
pub struct TradeGenerator {
    seed: u64,
    disorder_ms: u64,
    symbols: Vec<String>,
}

impl Default for TradeGenerator {
    fn default() -> Self {
        Self {
            seed: SEED,
            disorder_ms: 2_000,
            symbols: symbols(),
        }
    }
}

impl TradeGenerator {
    /// The generator with another seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// How far behind its availability instant a row's event time may be.
    pub fn disorder(mut self, disorder: Duration) -> Self {
        self.disorder_ms = disorder.as_millis() as u64;
        self
    }
}

impl RowGenerator for TradeGenerator {
    fn schema(&self) -> SchemaRef {
        trade_schema()
    }

    fn generate(&self, first: u64, available_at: &[i64]) -> Result<Vec<ArrayRef>, ArrowError> {
        let n = available_at.len();
        let (mut sym, mut exch, mut price, mut qty, mut time) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (k, &stamp) in available_at.iter().enumerate() {
            let h = mix(self.seed ^ (first + k as u64).wrapping_mul(0xA24B_AED4_963E_E407));
            let s = (h % SYMBOLS as u64) as usize;
            sym.push(self.symbols[s].as_str());
            exch.push(EXCHANGES[((h >> 8) % EXCHANGES.len() as u64) as usize]);
            let u = ((h >> 16) & 0xFFFF) as f64 / 65536.0;
            let level = 20.0 + 5.0 * s as f64;
            price.push((level * (0.95 + 0.1 * u) * 100.0).round() / 100.0);
            qty.push(1 + ((h >> 32) % 1000) as i64);
            let lag = if self.disorder_ms == 0 {
                0
            } else {
                ((h >> 42) % (self.disorder_ms + 1)) as i64
            };
            time.push(stamp / 1000 - lag);
        }
        Ok(vec![
            Arc::new(StringArray::from(sym)),
            Arc::new(StringArray::from(exch)),
            Arc::new(Float64Array::from(price)),
            Arc::new(Int64Array::from(qty)),
            Arc::new(TimestampMillisecondArray::from(time)),
        ])
    }
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

fn trades_batch(
    symbol: Vec<String>,
    exchange: Vec<&str>,
    price: Vec<f64>,
    quantity: Vec<i64>,
    time: Vec<i64>,
) -> anyhow::Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        trade_schema(),
        vec![
            Arc::new(StringArray::from(symbol)),
            Arc::new(StringArray::from(exchange)),
            Arc::new(Float64Array::from(price)),
            Arc::new(Int64Array::from(quantity)),
            Arc::new(TimestampMillisecondArray::from(time)),
        ],
    )?)
}

/// Writes `rows` seeded trades as [`FILES`] parquet files `part-NNN.parquet`
/// in `dir` — the same rows as the `aggregation` bench's generator (seed
/// [`SEED`], [`SYMBOLS`] symbols × [`EXCHANGES`], one hour of event time
/// from [`START_MS`], each trade up to [`DISORDER_MS`] behind) — then, with
/// `flush`, one more file `part-999-flush.parquet`, written last, holding a
/// single trade a day later: its watermark closes every real window, so a
/// stream in append mode emits them all. Returns the paths of the trade
/// files (without the flush file).
pub fn write_trade_files(dir: &Path, rows: usize, flush: bool) -> anyhow::Result<Vec<String>> {
    write_trade_files_in(dir, rows, FILES, flush)
}

/// [`write_trade_files`] with `files` files (at most 999) instead of
/// [`FILES`].
pub fn write_trade_files_in(
    dir: &Path,
    rows: usize,
    files: usize,
    flush: bool,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!((1..=999).contains(&files), "1 to 999 files, not {files}");
    std::fs::create_dir_all(dir)?;
    let mut rng = StdRng::seed_from_u64(SEED);
    let symbols = symbols();
    let mut paths = Vec::with_capacity(files);
    let mut i = 0usize;
    for f in 0..files {
        let n = rows / files + usize::from(f < rows % files);
        let (mut sym, mut exch, mut price, mut qty, mut time) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for _ in 0..n {
            let s = rng.random_range(0..SYMBOLS);
            sym.push(symbols[s].clone());
            exch.push(EXCHANGES[rng.random_range(0..EXCHANGES.len())]);
            // Whole cents around a per-symbol level.
            let level = 20.0 + 5.0 * s as f64;
            price.push((level * rng.random_range(0.95..1.05) * 100.0).round() / 100.0);
            qty.push(rng.random_range(1..=1000));
            let nominal = START_MS + (i as i128 * SPAN_MS as i128 / rows as i128) as i64;
            time.push(nominal - rng.random_range(0..=DISORDER_MS));
            i += 1;
        }
        let batch = trades_batch(sym, exch, price, qty, time)?;
        let path = dir.join(format!("part-{f:03}.parquet"));
        write_parquet(&path, &batch)?;
        paths.push(path.display().to_string());
    }
    if flush {
        // Written last, so file sources ordering by modification time admit
        // it last.
        std::thread::sleep(Duration::from_millis(20));
        let flush = trades_batch(
            vec!["FLUSH".into()],
            vec!["NONE"],
            vec![1.0],
            vec![1],
            vec![START_MS + SPAN_MS + 86_400_000],
        )?;
        write_parquet(&dir.join("part-999-flush.parquet"), &flush)?;
    }
    Ok(paths)
}

fn external(e: tidemill_engine::TidemillError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The stateless pipeline: trades with `quantity > 500` (about half), with
/// their notional (`price * quantity`); every other input column is kept
/// (so [`AVAILABLE_AT`] flows through when present).
pub fn big_trades(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    let mut columns: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .map(|f| col(f.name().as_str()))
        .collect();
    columns.push((col("price") * cast(col("quantity"), DataType::Float64)).alias("notional"));
    df.filter(col("quantity").gt(lit(500i64)))?.select(columns)
}

/// The trading-metrics aggregation (the `aggregation` bench's and the Spark
/// comparison's plan): per one-minute tumbling window, symbol and exchange,
/// `trades` (count), `volume` (sum of quantity), `vwap`
/// (sum(price·quantity) / sum(quantity)), `high` and `low` (max and min
/// price), with `window_start` as the window column. Call it on a
/// DataFrame with a watermark for a stream in append mode (see
/// [`per_minute_watermarked`]).
pub fn per_minute(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    per_minute_with(df, false)
}

/// [`per_minute`] after `with_watermark("event_time", "10 seconds")`
/// (a no-op on a batch DataFrame).
pub fn per_minute_watermarked(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    per_minute(
        df.with_watermark("event_time", WATERMARK_DELAY)
            .map_err(external)?,
    )
}

/// The study's windowed pipeline: [`per_minute_watermarked`] plus
/// `max(available_at)` per group, for update mode.
pub fn per_minute_stamped(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    per_minute_with(
        df.with_watermark("event_time", WATERMARK_DELAY)
            .map_err(external)?,
        true,
    )
}

fn per_minute_with(df: DataFrame, stamped: bool) -> datafusion::error::Result<DataFrame> {
    let mut aggregates = vec![
        count(col("price")).alias("trades"),
        sum(col("quantity")).alias("volume"),
        sum(col("price") * cast(col("quantity"), DataType::Float64)).alias("notional"),
        max(col("price")).alias("high"),
        min(col("price")).alias("low"),
    ];
    if stamped {
        aggregates.push(max(col(AVAILABLE_AT)).alias(AVAILABLE_AT));
    }
    let mut out = vec![
        get_field(col("window"), "start").alias("window_start"),
        col("symbol"),
        col("exchange"),
        col("trades"),
        col("volume"),
        (col("notional") / cast(col("volume"), DataType::Float64)).alias("vwap"),
        col("high"),
        col("low"),
    ];
    if stamped {
        out.push(col(AVAILABLE_AT));
    }
    df.aggregate(
        vec![
            tumble(col("event_time"), "1 minute").alias("window"),
            col("symbol"),
            col("exchange"),
        ],
        aggregates,
    )?
    .select(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rows_depend_only_on_the_row_number() {
        let g = TradeGenerator::default();
        let stamps: Vec<i64> = (0..100).map(|i| 1_000_000_000 + i * 1000).collect();
        let all = g.generate(0, &stamps).unwrap();
        let tail = g.generate(40, &stamps[40..]).unwrap();
        for (a, b) in all.iter().zip(&tail) {
            assert_eq!(&a.slice(40, 60), b);
        }
    }
}
