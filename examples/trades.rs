//! Tidemill's main example: a trade-enrichment pipeline that needs no
//! external service.
//!
//! It generates JSON-lines trade files into a fresh temporary directory
//! (more keep arriving while the query runs), streams them with a
//! `FileSource`, joins each trade with a static table of exchanges, computes
//! notional and fees, and writes parquet with the exactly-once `ParquetSink`.
//! Each batch's progress is logged on one line. At the end, the committed
//! output is read back and compared with the same transformation run as a
//! DataFusion batch job over the same files.
//!
//! Run it with `cargo run --example trades`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::prelude::*;

/// Files written before the query starts, and after it started.
const INITIAL_FILES: usize = 3;
const LATER_FILES: usize = 5;
const TRADES_PER_FILE: usize = 2_000;

fn trade_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("exchange", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("quantity", DataType::Float64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// The transformation, written once and used for the stream and the batch
/// job alike: drop bad trades, add exchange details, compute money columns.
fn enrich(trades: DataFrame, exchanges: DataFrame) -> datafusion::error::Result<DataFrame> {
    trades
        .filter(col("quantity").gt(lit(0.0)))?
        .join(exchanges, JoinType::Inner, &["exchange"], &["code"], None)?
        .select(vec![
            col("event_time"),
            col("symbol"),
            col("name").alias("exchange"),
            col("price"),
            col("quantity"),
            (col("price") * col("quantity")).alias("notional"),
            (col("price") * col("quantity") * col("fee_bps") / lit(10_000.0)).alias("fee"),
        ])
}

fn exchanges(ctx: &SessionContext) -> datafusion::error::Result<DataFrame> {
    ctx.read_batch(arrow::record_batch::RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("code", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("fee_bps", DataType::Float64, false),
        ])),
        vec![
            Arc::new(arrow::array::StringArray::from(vec![
                "XNYS", "XNAS", "BATS",
            ])),
            Arc::new(arrow::array::StringArray::from(vec![
                "NYSE", "Nasdaq", "Cboe BZX",
            ])),
            Arc::new(arrow::array::Float64Array::from(vec![0.8, 0.6, 0.3])),
        ],
    )?)
}

/// Writes trade file `n`: under a dot-name first, then renamed, so the
/// stream never sees a half-written file.
fn write_trades(dir: &Path, n: usize, rng: &mut impl Rng) -> anyhow::Result<()> {
    let symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG"];
    let exchanges = ["XNYS", "XNAS", "BATS", "IEXG"]; // IEXG is not in the static table
    let base_ms = 1_767_225_600_000i64 + (n * TRADES_PER_FILE) as i64 * 50;
    let mut text = String::with_capacity(TRADES_PER_FILE * 120);
    for i in 0..TRADES_PER_FILE {
        // A few trades have a zero quantity (cancelled) and are filtered out.
        let quantity = if rng.random_ratio(1, 50) {
            0.0
        } else {
            rng.random_range(1..500) as f64
        };
        text.push_str(&format!(
            "{{\"symbol\":\"{}\",\"exchange\":\"{}\",\"price\":{:.2},\"quantity\":{},\"event_time\":{}}}\n",
            symbols[rng.random_range(0..symbols.len())],
            exchanges[rng.random_range(0..exchanges.len())],
            rng.random_range(100.0..500.0),
            quantity,
            base_ms + i as i64 * 50,
        ));
    }
    let tmp = dir.join(format!(".trades-{n:04}.json.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(format!("trades-{n:04}.json")))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tidemill_engine=info".parse().expect("valid filter")),
        )
        .with_target(false)
        .init();

    let root = tempfile::Builder::new()
        .prefix("tidemill-trades-")
        .tempdir()?;
    let (input, output, checkpoint) = (
        root.path().join("trades"),
        root.path().join("enriched"),
        root.path().join("checkpoint"),
    );
    std::fs::create_dir_all(&input)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for n in 0..INITIAL_FILES {
        write_trades(&input, n, &mut rng)?;
    }
    println!("input:      {}", input.display());
    println!("output:     {}", output.display());
    println!("checkpoint: {}", checkpoint.display());

    let ctx = SessionContext::new();
    let trades = ctx
        .read_stream(
            FileSource::json(input.to_str().context("path")?)
                .schema(trade_schema())
                .max_files_per_trigger(2),
        )
        .await?;
    let query = enrich(trades, exchanges(&ctx)?)?
        .write_stream()
        .sink(ParquetSink::new(output.to_str().context("path")?))
        .trigger(Trigger::ProcessingTime(Duration::from_millis(250)))
        .checkpoint(checkpoint.to_str().context("path")?)
        .query_name("enrich_trades")
        .start()
        .await?;

    // More files arrive while the query runs.
    for n in INITIAL_FILES..INITIAL_FILES + LATER_FILES {
        tokio::time::sleep(Duration::from_millis(300)).await;
        write_trades(&input, n, &mut rng)?;
    }
    query.process_all_available().await?;
    query.stop().await?;

    let batches = query.recent_progress();
    let rows_in: u64 = batches.iter().map(|p| p.num_input_rows).sum();
    let rows_out: u64 = batches.iter().map(|p| p.num_output_rows).sum();
    println!(
        "\n{} batches, {rows_in} trades in, {rows_out} enriched rows out",
        batches.len()
    );
    if let Some(last) = query.last_progress() {
        println!(
            "last batch progress as JSON:\n{}",
            serde_json::to_string_pretty(&last)?
        );
    }

    // Read the committed output back as a batch DataFrame...
    let streamed = ParquetSink::read_committed(&ctx, output.to_str().context("path")?).await?;
    let by_exchange = streamed
        .clone()
        .aggregate(
            vec![col("exchange")],
            vec![count(lit(1)).alias("trades"), sum(col("fee")).alias("fees")],
        )?
        .sort(vec![col("exchange").sort(true, false)])?;
    by_exchange.show().await?;

    // ...and check it against the same function run as a batch job.
    let schema = trade_schema();
    let batch_trades = ctx
        .read_json(
            input.to_str().context("path")?,
            JsonReadOptions::default()
                .schema(&schema)
                .file_extension(".json"),
        )
        .await?;
    let batch = enrich(batch_trades, exchanges(&ctx)?)?;
    let (streamed_rows, batch_rows) = (streamed.count().await?, batch.clone().count().await?);
    let difference = batch
        .except(ParquetSink::read_committed(&ctx, output.to_str().context("path")?).await?)?
        .count()
        .await?;
    anyhow::ensure!(
        streamed_rows == batch_rows && difference == 0,
        "stream and batch disagree: {streamed_rows} vs {batch_rows} rows, {difference} differ"
    );
    println!("stream and batch results agree: {streamed_rows} rows");
    Ok(())
}
