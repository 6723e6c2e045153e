//! One transformation, two ways: as a DataFusion batch job over parquet
//! files and as a Tidemill stream over the same files, with a check that
//! both give the same rows.
//!
//! Run it with `cargo run --example batch_and_stream`.

use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::*;
use tidemill::prelude::*;

/// The pipeline: written once, knows nothing of batch or stream.
fn large_orders(orders: DataFrame) -> datafusion::error::Result<DataFrame> {
    orders.filter(col("amount").gt_eq(lit(500.0)))?.select(vec![
        col("order_id"),
        upper(col("region")).alias("region"),
        (col("amount") * lit(1.2)).alias("gross"),
    ])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::Builder::new()
        .prefix("tidemill-batch-and-stream-")
        .tempdir()?;
    let input = root.path().join("orders");
    let input_str = format!("{}/", input.to_str().context("path")?);

    // Generate a few parquet files with DataFusion itself.
    let ctx = SessionContext::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
    ]));
    for file in 0..4i64 {
        let ids: Vec<i64> = (file * 1000..file * 1000 + 1000).collect();
        let regions: Vec<&str> = ids
            .iter()
            .map(|i| ["eu", "us", "apac"][(*i % 3) as usize])
            .collect();
        let amounts: Vec<f64> = ids.iter().map(|i| ((*i * 7919) % 1000) as f64).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(regions)),
                Arc::new(Float64Array::from(amounts)),
            ],
        )?;
        ctx.read_batch(batch)?
            .write_parquet(
                input
                    .join(format!("orders-{file}.parquet"))
                    .to_str()
                    .context("path")?,
                DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await?;
    }

    // 1. As a batch job.
    let batch_result = large_orders(
        ctx.read_parquet(&input_str, ParquetReadOptions::default())
            .await?,
    )?
    .sort(vec![col("order_id").sort(true, false)])?
    .collect()
    .await?;

    // 2. As a stream: one file per micro-batch, until everything is read.
    let sink = MemorySink::new();
    let query = large_orders(
        ctx.read_stream(FileSource::parquet(&input_str).max_files_per_trigger(1))
            .await?,
    )?
    .write_stream()
    .sink(sink.clone())
    .trigger(Trigger::AvailableNow)
    .start()
    .await?;
    query.await_termination().await?;
    let stream_result = ctx
        .read_batches(sink.batches())?
        .sort(vec![col("order_id").sort(true, false)])?
        .collect()
        .await?;

    let rows = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>();
    println!(
        "batch job: {} rows; stream: {} rows in {} micro-batches",
        rows(&batch_result),
        rows(&stream_result),
        query.recent_progress().len()
    );
    anyhow::ensure!(
        arrow::util::pretty::pretty_format_batches(&batch_result)?.to_string()
            == arrow::util::pretty::pretty_format_batches(&stream_result)?.to_string(),
        "batch and stream results differ"
    );
    println!("batch and stream results are identical");
    Ok(())
}
