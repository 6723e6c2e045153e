//! No query from the supported operator set panics or fails on random
//! input with nulls in every column: each random query, output mode and
//! partition count runs its random micro-batches to the end without error.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemill::prelude::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new("side", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
        Field::new("quantity", DataType::Int64, true),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]))
}

/// `value`, or null one time in six.
fn maybe<T>(rng: &mut StdRng, value: T) -> Option<T> {
    (rng.random_range(0..6) != 0).then_some(value)
}

/// A batch of 0 to 40 random rows, any cell of which may be null.
fn random_batch(rng: &mut StdRng, base_ms: i64) -> RecordBatch {
    let n = rng.random_range(0..40);
    let mut symbols = Vec::new();
    let mut sides = Vec::new();
    let mut prices = Vec::new();
    let mut quantities = Vec::new();
    let mut times = Vec::new();
    for _ in 0..n {
        let symbol = ["A", "B", "C"][rng.random_range(0..3)];
        symbols.push(maybe(rng, symbol));
        let side = ["buy", "sell"][rng.random_range(0..2)];
        sides.push(maybe(rng, side));
        let price = rng.random_range(-5..100) as f64;
        prices.push(maybe(rng, price));
        let quantity = rng.random_range(-10..1000);
        quantities.push(maybe(rng, quantity));
        // Up to a minute ahead of `base_ms`, or behind it: some rows late.
        let time = base_ms + rng.random_range(-60_000..60_000);
        times.push(maybe(rng, time));
    }
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(symbols)),
            Arc::new(StringArray::from(sides)),
            Arc::new(Float64Array::from(prices)),
            Arc::new(Int64Array::from(quantities)),
            Arc::new(TimestampMillisecondArray::from(times)),
        ],
    )
    .unwrap()
}

/// The operator set: a query over a table `t`, and the output modes it
/// supports.
const QUERIES: &[(&str, &[OutputMode])] = &[
    (
        "SELECT symbol, price * 2 AS doubled, quantity / 3 AS third, event_time FROM t
         WHERE price > 10 OR symbol IS NULL",
        &[OutputMode::Append, OutputMode::Update],
    ),
    (
        "SELECT count(*) AS n, sum(quantity) AS volume, min(event_time) AS first,
                max(event_time) AS last, avg(price) AS mean FROM t",
        &[OutputMode::Update, OutputMode::Complete],
    ),
    (
        "SELECT symbol, side, count(*) AS n, sum(price) AS total, max(quantity) AS biggest,
                array_agg(price) AS prices
         FROM t GROUP BY symbol, side",
        &[OutputMode::Update, OutputMode::Complete],
    ),
    (
        "SELECT DISTINCT symbol, side FROM t",
        &[OutputMode::Update, OutputMode::Complete],
    ),
    (
        "SELECT w.start AS start, symbol, count(*) AS n, sum(quantity) AS volume
         FROM (SELECT tumble(event_time, '20 seconds') AS w, symbol, quantity FROM t)
         GROUP BY w, symbol",
        &[OutputMode::Append, OutputMode::Update, OutputMode::Complete],
    ),
    (
        "SELECT window(event_time, '40 seconds', '20 seconds')['start'] AS start, side,
                avg(price) AS mean
         FROM t GROUP BY window(event_time, '40 seconds', '20 seconds'), side",
        &[OutputMode::Append, OutputMode::Update, OutputMode::Complete],
    ),
    (
        "SELECT session_window(event_time, '15 seconds')['start'] AS start, symbol,
                count(price) AS n, min(price) AS low
         FROM t GROUP BY session_window(event_time, '15 seconds'), symbol",
        &[OutputMode::Append, OutputMode::Update, OutputMode::Complete],
    ),
    (
        "SELECT event_time, count(*) AS n FROM t GROUP BY event_time",
        &[OutputMode::Append, OutputMode::Update, OutputMode::Complete],
    ),
];

async fn run(sql: &str, mode: OutputMode, partitions: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    tidemill::engine::window::register_window_functions(&ctx);
    let stream = MemoryStream::new(schema());
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "10 seconds")
        .unwrap();
    ctx.register_table("t", df.into_view()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let case = format!("seed {seed}, {mode:?}, {partitions} partitions: {sql}");
    let query = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"))
        .write_stream()
        .sink(MemorySink::new())
        .output_mode(mode)
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut base = 1_000_000;
    for _ in 0..rng.random_range(1..6) {
        stream.push(random_batch(&mut rng, base)).unwrap();
        base += rng.random_range(0..40_000);
        if let Err(e) = query.process_all_available().await {
            panic!("{case}: {e}");
        }
    }
    query.stop().await.unwrap();
}

#[tokio::test]
async fn random_queries_over_input_with_nulls_in_every_column_never_fail() {
    let mut seed = 0;
    for (sql, modes) in QUERIES {
        for mode in *modes {
            for partitions in [1, 3] {
                seed += 1;
                run(sql, *mode, partitions, seed).await;
            }
        }
    }
}
