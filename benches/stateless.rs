//! Stateless streaming throughput against the same plan as a DataFusion
//! batch job, and the fixed per-batch overhead of the engine.
//!
//! ```sh
//! cargo bench --bench stateless            # full mode: 4 million rows
//! TIDEMILL_BENCH_ROWS=200000 cargo bench --bench stateless
//! cargo test --bench stateless             # short mode, a few seconds
//! ```
//!
//! Figures are printed with the workload and the machine; the ratio
//! stream/batch is the figure that travels between machines.
//!
//! `cargo bench` passes `--bench`: that runs the full mode
//! (`TIDEMILL_BENCH_ROWS` rows, default 4 000 000, and 500 overhead
//! batches). Without it (as `cargo test` runs this file, `test = true` in
//! Cargo.toml) a short mode runs 20 000 rows and 50 overhead batches,
//! ignores `TIDEMILL_BENCH_ROWS`, still checks that the stream's rows equal
//! the batch job's, and never asserts on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::QueryOptions;
use tidemill::prelude::*;

const FILES: usize = 20;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("quantity", DataType::Float64, false),
    ]))
}

/// The plan measured: a filter and a projection with arithmetic.
fn plan(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    df.filter(col("quantity").gt(lit(10.0)))?.select(vec![
        col("id"),
        col("symbol"),
        (col("price") * col("quantity")).alias("notional"),
    ])
}

fn generate(dir: &std::path::Path, rows: usize) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let per_file = rows / FILES;
    let symbols = [
        "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "AMD",
    ];
    for f in 0..FILES {
        let ids: Vec<i64> = (0..per_file).map(|i| (f * per_file + i) as i64).collect();
        let sym: Vec<&str> = (0..per_file)
            .map(|_| symbols[rng.random_range(0..symbols.len())])
            .collect();
        let price: Vec<f64> = (0..per_file)
            .map(|_| rng.random_range(10.0..500.0))
            .collect();
        let qty: Vec<f64> = (0..per_file)
            .map(|_| rng.random_range(1.0..100.0))
            .collect();
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(sym)),
                Arc::new(Float64Array::from(price)),
                Arc::new(Float64Array::from(qty)),
            ],
        )?;
        let file = std::fs::File::create(dir.join(format!("part-{f:03}.parquet")))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema(), None)?;
        writer.write(&batch)?;
        writer.close()?;
    }
    Ok(())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!(
        "{cores} cores, {mem_gib:.0} GiB, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

async fn batch_job(dir: &str) -> anyhow::Result<(usize, Duration)> {
    let ctx = SessionContext::new();
    let t = Instant::now();
    let out = plan(ctx.read_parquet(dir, ParquetReadOptions::default()).await?)?
        .collect()
        .await?;
    Ok((out.iter().map(RecordBatch::num_rows).sum(), t.elapsed()))
}

async fn stream_job(
    dir: &str,
    max_files: u64,
    chk: &std::path::Path,
) -> anyhow::Result<(usize, usize, Duration)> {
    let ctx = SessionContext::new();
    let sink = MemorySink::new();
    let t = Instant::now();
    let query = plan(
        ctx.read_stream(FileSource::parquet(dir).max_files_per_trigger(max_files))
            .await?,
    )?
    .write_stream()
    .sink(sink.clone())
    .trigger(Trigger::AvailableNow)
    .checkpoint(chk.to_str().unwrap())
    .start()
    .await?;
    query.await_termination().await?;
    Ok((sink.num_rows(), query.recent_progress().len(), t.elapsed()))
}

/// Many tiny batches back to back: the engine's fixed cost per batch.
async fn overhead(batches: usize, chk: &std::path::Path) -> anyhow::Result<()> {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema()).max_rows_per_trigger(5);
    for i in 0..batches as i64 {
        stream.push(RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(i * 5..i * 5 + 5)),
                Arc::new(StringArray::from(vec!["AAPL"; 5])),
                Arc::new(Float64Array::from(vec![100.0; 5])),
                Arc::new(Float64Array::from(vec![20.0; 5])),
            ],
        )?)?;
    }
    let t = Instant::now();
    let query = plan(ctx.read_stream(stream).await?)?
        .write_stream()
        .sink(MemorySink::new())
        .trigger(Trigger::AvailableNow)
        .checkpoint(chk.to_str().unwrap())
        .options(QueryOptions {
            progress_history: batches,
            ..Default::default()
        })
        .start()
        .await?;
    query.await_termination().await?;
    let elapsed = t.elapsed();
    let progress = query.recent_progress();
    let mean = |f: fn(&tidemill::PhaseDurations) -> f64| {
        progress.iter().map(|p| f(&p.duration_ms)).sum::<f64>() / progress.len() as f64
    };
    println!(
        "\nper-batch overhead: {} batches of 5 rows, local checkpoint, memory sink: {:.0} batches/s",
        progress.len(),
        progress.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  mean ms per phase: offsets {:.3}, wal {:.3}, read {:.3}, plan {:.3}, execute {:.3}, sink {:.3}, commit {:.3}, total {:.3}",
        mean(|d| d.latest_offset),
        mean(|d| d.wal_commit),
        mean(|d| d.get_batch),
        mean(|d| d.query_planning),
        mean(|d| d.execution),
        mean(|d| d.add_batch),
        mean(|d| d.commit_offsets),
        mean(|d| d.trigger_execution),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let (rows, overhead_batches) = if full {
        let rows = std::env::var("TIDEMILL_BENCH_ROWS")
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or(4_000_000);
        (rows, 500)
    } else {
        (20_000, 50)
    };
    println!(
        "mode: {}",
        if full {
            "full (cargo bench)"
        } else {
            "short (no --bench argument: tiny sizes, results checked, times not meaningful)"
        }
    );
    // Every file holds the same number of rows.
    let rows = rows / FILES * FILES;
    let tmp = tempfile::tempdir()?;
    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input)?;
    generate(&input, rows)?;
    let dir = format!("{}/", input.display());
    println!("machine: {}", machine());
    println!("workload: filter + projection over {rows} rows in {FILES} parquet files (seed 42)");

    // Warm up the page cache and the allocator.
    batch_job(&dir).await?;
    let (batch_rows, batch_time) = batch_job(&dir).await?;
    let batch_rate = rows as f64 / batch_time.as_secs_f64();
    println!("\n| run | batches | rows out | seconds | input rows/s | stream/batch |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| DataFusion batch job | 1 | {batch_rows} | {:.3} | {batch_rate:.0} | 1.00 |",
        batch_time.as_secs_f64()
    );
    for (i, max_files) in [1u64, 5, 20].into_iter().enumerate() {
        let (out, batches, time) =
            stream_job(&dir, max_files, &tmp.path().join(format!("chk-{i}"))).await?;
        anyhow::ensure!(
            out == batch_rows,
            "stream produced {out} rows, batch {batch_rows}"
        );
        let rate = rows as f64 / time.as_secs_f64();
        println!(
            "| stream, max_files_per_trigger={max_files} | {batches} | {out} | {:.3} | {rate:.0} | {:.2} |",
            time.as_secs_f64(),
            rate / batch_rate
        );
    }
    overhead(overhead_batches, &tmp.path().join("chk-overhead")).await?;
    Ok(())
}
