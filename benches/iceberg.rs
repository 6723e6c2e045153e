//! The Iceberg sink against the parquet files sink, and the cost of one
//! small batch's Iceberg commit as the table grows.
//!
//! ```sh
//! cargo bench --bench iceberg            # full mode: 2 million rows, 1,000 snapshots
//! TIDEMILL_BENCH_ROWS=10000000 cargo bench --bench iceberg
//! TIDEMILL_BENCH_ONLY=growth cargo bench --bench iceberg   # or =throughput
//! cargo test --bench iceberg             # short mode, a few seconds
//! ```
//!
//! **Part 1, rows/s into an Iceberg table.** The delta bench's workload:
//! `TIDEMILL_BENCH_ROWS` rows (default 2 000 000) from a seeded generator
//! (seed 42) in 20 parquet files; a filter and a projection with
//! arithmetic, run as a stream (`FileSource` with `max_files_per_trigger`
//! 1, so 20 batches, local checkpoint, `Trigger::AvailableNow`) into the
//! exactly-once parquet files sink and into an `IcebergSink` (append, the
//! embedded directory catalog), both on local disk; 5 runs of each,
//! alternating, the median reported. Both outputs must hold the same number
//! of rows (the Iceberg table's current snapshot's `total-records`, and one
//! snapshot per batch). Target (the Delta sink's): Iceberg/parquet rows/s
//! ≥ 0.8.
//!
//! **Part 2, one small batch's commit as the table grows.** 1,000 batches
//! of 10 rows through `IcebergSink::add_batch` (no engine: the sink's own
//! time, which is the commit) into a new table: the time of each, the
//! median of each block of 100 snapshots, and the last block's median over
//! the first's. Informative, no target: a fast append writes a new
//! manifest list naming every earlier manifest (one per batch, never
//! merged) and a new metadata file naming every snapshot, so some growth is
//! expected until the table's maintenance (snapshot expiry, manifest
//! rewrites) runs.
//!
//! `TIDEMILL_BENCH_ONLY` (`throughput` or `growth`, full mode only) runs
//! one part; such a run writes no result file.
//!
//! Results go to `target/bench-results/iceberg.json` (see
//! `tidemill_harness::results`). Without `--bench` (as `cargo test` runs
//! this file) a short mode runs 20 000 rows once and 120 snapshots, checks
//! the row counts and the snapshots, and never asserts on time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::engine::SinkContext;
use tidemill::prelude::*;
use tidemill::{IcebergSink, Sink};
use tidemill_harness::results::{BenchResult, Table, Target, median, trim};

const FILES: usize = 20;
/// Timed runs of each sink in part 1; the median is reported.
const RUNS: usize = 5;
/// Snapshots per block of part 2.
const BLOCK: usize = 100;

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

/// `rows` seeded rows (seed 42) in [`FILES`] parquet files.
fn generate(dir: &Path, rows: usize) -> anyhow::Result<()> {
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

/// Streams the input at `input` through the plan into `sink`; the time
/// the query took.
async fn stream_into(
    input: &Path,
    checkpoint: &Path,
    sink: Arc<dyn Sink>,
) -> anyhow::Result<Duration> {
    let ctx = SessionContext::new();
    let t = Instant::now();
    let query = plan(
        ctx.read_stream(FileSource::parquet(input.to_str().unwrap()).max_files_per_trigger(1))
            .await?,
    )?
    .write_stream()
    .sink_arc(sink)
    .trigger(Trigger::AvailableNow)
    .checkpoint(checkpoint.to_str().unwrap())
    .start()
    .await?;
    query.await_termination().await?;
    Ok(t.elapsed())
}

/// The latest metadata of the Iceberg table at `dir` (its highest
/// `metadata/v<N>.metadata.json`), as JSON.
fn latest_metadata(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let latest = std::fs::read_dir(dir.join("metadata"))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix('v')?
                .strip_suffix(".metadata.json")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .ok_or_else(|| anyhow::anyhow!("no metadata in {}", dir.display()))?;
    let text = std::fs::read_to_string(dir.join(format!("metadata/v{latest}.metadata.json")))?;
    Ok(serde_json::from_str(&text)?)
}

/// The Iceberg table's snapshots and the rows of its current snapshot (its
/// summary's `total-records`).
fn iceberg_counts(dir: &Path) -> anyhow::Result<(usize, usize)> {
    let metadata = latest_metadata(dir)?;
    let snapshots = metadata["snapshots"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current = metadata["current-snapshot-id"].as_i64();
    let rows = snapshots
        .iter()
        .find(|s| s["snapshot-id"].as_i64() == current)
        .and_then(|s| s["summary"]["total-records"].as_str()?.parse().ok())
        .unwrap_or(0);
    Ok((snapshots.len(), rows))
}

/// Part 1: rows/s into the files sink and into an Iceberg table.
async fn throughput(
    rows: usize,
    runs: usize,
    tmp: &Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let input = tmp.join("input");
    std::fs::create_dir_all(&input)?;
    generate(&input, rows)?;
    let mut parquet_times = Vec::new();
    let mut iceberg_times = Vec::new();
    let mut expected = None;
    for run in 0..runs {
        // Alternate which sink goes first.
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for iceberg in order {
            let out = tmp.join(format!("out-{run}-{iceberg}"));
            let checkpoint = tmp.join(format!("chk-{run}-{iceberg}"));
            let sink: Arc<dyn Sink> = if iceberg {
                Arc::new(IcebergSink::new(out.to_str().unwrap()))
            } else {
                Arc::new(FileSink::parquet(out.to_str().unwrap()))
            };
            let elapsed = stream_into(&input, &checkpoint, sink).await?;
            let written = if iceberg {
                let (snapshots, rows) = iceberg_counts(&out)?;
                assert_eq!(snapshots, FILES, "one Iceberg snapshot per batch");
                rows
            } else {
                let ctx = SessionContext::new();
                FileSink::read_committed(&ctx, out.to_str().unwrap())
                    .await?
                    .count()
                    .await?
            };
            match expected {
                None => expected = Some(written),
                Some(n) => assert_eq!(written, n, "both sinks hold the same rows"),
            }
            if iceberg {
                iceberg_times.push(elapsed.as_secs_f64());
            } else {
                parquet_times.push(elapsed.as_secs_f64());
            }
            std::fs::remove_dir_all(&out)?;
            std::fs::remove_dir_all(&checkpoint)?;
        }
    }
    let parquet = rows as f64 / median(&mut parquet_times);
    let iceberg = rows as f64 / median(&mut iceberg_times);
    let ratio = iceberg / parquet;
    let table = Table::new(
        &format!(
            "Rows/s into each sink: {rows} input rows ({} written), {FILES} batches, median of \
             {runs} runs:",
            expected.unwrap_or(0)
        ),
        ["sink", "rows/s", "vs parquet files sink"],
        vec![
            vec![
                "FileSink::parquet (manifest)".to_string(),
                format!("{parquet:.0}"),
                "1".to_string(),
            ],
            vec![
                "IcebergSink (append)".to_string(),
                format!("{iceberg:.0}"),
                trim(ratio),
            ],
        ],
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    result.targets.push(Target::at_least(
        "Iceberg sink rows/s over the parquet files sink's, same query, local disk",
        ratio,
        0.8,
        "",
    ));
    Ok(())
}

/// Part 2: one small batch's commit as the table grows to `snapshots`.
async fn commit_growth(
    snapshots: usize,
    tmp: &Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let dir = tmp.join("growth");
    let sink = IcebergSink::new(dir.to_str().unwrap());
    let schema = schema();
    sink.open(&SinkContext {
        session: SessionContext::new(),
        query_name: None,
        query_id: "bench".into(),
        schema: Arc::clone(&schema),
        output_mode: OutputMode::Append,
        durability: Default::default(),
    })
    .await?;
    let mut times = Vec::with_capacity(snapshots);
    for id in 0..snapshots {
        let ids: Vec<i64> = (0..10).map(|i| (id * 10 + i) as i64).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(vec!["AAPL"; 10])),
                Arc::new(Float64Array::from(vec![1.0; 10])),
                Arc::new(Float64Array::from(vec![2.0; 10])),
            ],
        )?;
        let t = Instant::now();
        sink.add_batch(id as u64, Arc::clone(&schema), vec![batch])
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    assert_eq!(
        iceberg_counts(&dir)?,
        (snapshots, snapshots * 10),
        "one snapshot per batch, every row"
    );
    let mut rows = Vec::new();
    let mut medians = Vec::new();
    for (block, chunk) in times.chunks(BLOCK).enumerate() {
        let mut chunk = chunk.to_vec();
        let mut sorted = chunk.clone();
        sorted.sort_by(f64::total_cmp);
        let p90 = sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)];
        let m = median(&mut chunk);
        medians.push(m);
        rows.push(vec![
            format!("{}–{}", block * BLOCK, block * BLOCK + chunk.len() - 1),
            format!("{m:.2}"),
            format!("{p90:.2}"),
        ]);
    }
    let growth = medians.last().unwrap() / medians.first().unwrap();
    rows.push(vec![
        "last block / first".to_string(),
        trim(growth),
        String::new(),
    ]);
    let table = Table::new(
        &format!(
            "One batch of 10 rows committed to an Iceberg table (fast append, embedded catalog), \
             by snapshot ({snapshots} snapshots), ms:"
        ),
        ["snapshots", "median", "p90"],
        rows,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let (rows, runs, snapshots) = if full {
        let rows = std::env::var("TIDEMILL_BENCH_ROWS")
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or(2_000_000);
        (rows, RUNS, 1_000)
    } else {
        (20_000, 1, 120)
    };
    let rows = rows / FILES * FILES;
    let mut result = BenchResult::start(
        "iceberg",
        "Iceberg sink: rows/s against the parquet files sink, commit time as the table grows",
        "cargo bench --bench iceberg",
        full,
    );
    result.workload = format!(
        "Throughput: filter (quantity > 10) and projection (id, symbol, price·quantity) over \
         {rows} seeded rows (seed 42) in {FILES} parquet files, streamed (FileSource, one file \
         per batch, local checkpoint, AvailableNow) into FileSink::parquet and into \
         IcebergSink, both on local disk. Growth: {snapshots} batches of 10 rows through \
         IcebergSink::add_batch into a new table."
    );
    let only = std::env::var("TIDEMILL_BENCH_ONLY").ok();
    let (run_throughput, run_growth) = match only.as_deref() {
        Some("throughput") if full => (true, false),
        Some("growth") if full => (false, true),
        _ => (true, true),
    };
    let tmp = tempfile::tempdir()?;
    if run_throughput {
        throughput(rows, runs, tmp.path(), &mut result).await?;
    }
    if run_growth {
        commit_growth(snapshots, tmp.path(), &mut result).await?;
    }
    result.finish(run_throughput && run_growth)?;
    Ok(())
}
