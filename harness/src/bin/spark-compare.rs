//! Tidemill's side of the Spark comparison (`benches/spark/run.sh` drives
//! it): generate the trade files, run the trading-metrics stream, and
//! compare its output with Spark's.
//!
//! ```text
//! spark-compare generate DIR ROWS
//! spark-compare tidemill INPUT WARMUP_INPUT OUTPUT CHECKPOINT MAX_FILES   (prints JSON)
//! spark-compare compare ROWS MAX_FILES TIDEMILL_JSON SPARK_JSON TIDEMILL_OUT SPARK_OUT
//! ```
//!
//! `compare` checks that both engines emitted the same windows (vwap to
//! 1e-9 relative), prints Tidemill's throughput over Spark's and writes
//! `target/bench-results/spark.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use datafusion::prelude::*;
use serde::{Deserialize, Serialize};
use tidemill_connectors::{FileSource, ParquetSink};
use tidemill_engine::{OutputMode, QueryOptions, StreamingContext, StreamingDataFrame, Trigger};
use tidemill_harness::results::{BenchResult, Table, Target, trim};
use tidemill_harness::trades;

/// One engine's timed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Timed {
    engine: String,
    version: String,
    seconds: f64,
    batches: u64,
    /// Seconds from process start to the end (Spark: JVM and session
    /// start-up included).
    #[serde(default)]
    total_seconds: Option<f64>,
    #[serde(default)]
    settings: BTreeMap<String, String>,
}

/// `(window start ms, symbol, exchange)` → `(trades, volume, vwap, high, low)`.
type Windows = BTreeMap<(i64, String, String), (i64, i64, f64, f64, f64)>;

fn column(batch: &RecordBatch, name: &str, to: &DataType) -> anyhow::Result<ArrayRef> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| anyhow::anyhow!("no column {name}"))?;
    let c = if matches!(c.data_type(), DataType::Timestamp(..)) {
        cast(c, &DataType::Timestamp(TimeUnit::Millisecond, None))?
    } else {
        c.clone()
    };
    Ok(cast(&c, to)?)
}

fn windows(batches: &[RecordBatch]) -> anyhow::Result<Windows> {
    let mut out = Windows::new();
    for b in batches {
        let start = column(b, "window_start", &DataType::Int64)?;
        let symbol = column(b, "symbol", &DataType::Utf8)?;
        let exchange = column(b, "exchange", &DataType::Utf8)?;
        let count = column(b, "trades", &DataType::Int64)?;
        let volume = column(b, "volume", &DataType::Int64)?;
        let vwap = column(b, "vwap", &DataType::Float64)?;
        let high = column(b, "high", &DataType::Float64)?;
        let low = column(b, "low", &DataType::Float64)?;
        for i in 0..b.num_rows() {
            let key = (
                start.as_primitive::<Int64Type>().value(i),
                symbol.as_string::<i32>().value(i).to_string(),
                exchange.as_string::<i32>().value(i).to_string(),
            );
            let value = (
                count.as_primitive::<Int64Type>().value(i),
                volume.as_primitive::<Int64Type>().value(i),
                vwap.as_primitive::<Float64Type>().value(i),
                high.as_primitive::<Float64Type>().value(i),
                low.as_primitive::<Float64Type>().value(i),
            );
            anyhow::ensure!(
                out.insert(key.clone(), value).is_none(),
                "window {key:?} emitted twice"
            );
        }
    }
    Ok(out)
}

/// The differences between two results (at most 5 listed).
fn differences(a: &Windows, b: &Windows) -> Vec<String> {
    let mut out = Vec::new();
    for (key, x) in a {
        match b.get(key) {
            None => out.push(format!("{key:?} only in Tidemill's output")),
            Some(y) => {
                let close = (x.2 - y.2).abs() <= 1e-9 * y.2.abs().max(1.0);
                if !(x.0 == y.0 && x.1 == y.1 && close && x.3 == y.3 && x.4 == y.4) {
                    out.push(format!("{key:?}: Tidemill {x:?}, Spark {y:?}"));
                }
            }
        }
    }
    out.extend(
        b.keys()
            .filter(|k| !a.contains_key(*k))
            .map(|k| format!("{k:?} only in Spark's output")),
    );
    out
}

async fn run_stream(
    input: &str,
    output: &Path,
    checkpoint: &Path,
    max_files: u64,
) -> anyhow::Result<(f64, u64)> {
    let ctx = SessionContext::new();
    let _ = std::fs::remove_dir_all(output);
    let _ = std::fs::remove_dir_all(checkpoint);
    let t = Instant::now();
    let query = trades::per_minute_watermarked(
        ctx.read_stream(FileSource::parquet(input).max_files_per_trigger(max_files))
            .await?,
    )?
    .write_stream()
    .sink(ParquetSink::new(output.display().to_string()))
    .output_mode(OutputMode::Append)
    .trigger(Trigger::AvailableNow)
    .checkpoint(checkpoint.display().to_string())
    .options(QueryOptions {
        progress_history: 100_000,
        ..Default::default()
    })
    .start()
    .await?;
    query.await_termination().await?;
    Ok((
        t.elapsed().as_secs_f64(),
        query.recent_progress().len() as u64,
    ))
}

async fn read_tidemill(dir: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    Ok(ParquetSink::read_committed(&ctx, dir)
        .await?
        .collect()
        .await?)
}

async fn read_spark(dir: &str) -> anyhow::Result<Vec<RecordBatch>> {
    // Spark's part files; its `_spark_metadata` log and `.crc` files are
    // not read (hidden names, another extension).
    let ctx = SessionContext::new();
    let dir = format!("{}/", dir.trim_end_matches('/'));
    Ok(ctx
        .read_parquet(dir, ParquetReadOptions::default())
        .await?
        .collect()
        .await?)
}

fn usage() -> anyhow::Error {
    anyhow::anyhow!(
        "usage:\n  spark-compare generate DIR ROWS\n  spark-compare tidemill INPUT WARMUP_INPUT \
         OUTPUT CHECKPOINT MAX_FILES\n  spark-compare compare ROWS MAX_FILES TIDEMILL_JSON \
         SPARK_JSON TIDEMILL_OUT SPARK_OUT"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().ok_or_else(usage);
    match args.first().map(String::as_str) {
        Some("generate") => {
            let dir = arg(1)?;
            let rows: usize = arg(2)?.replace('_', "").parse()?;
            let _ = std::fs::remove_dir_all(&dir);
            trades::write_trade_files(Path::new(&dir), rows, true)?;
            eprintln!(
                "wrote {rows} trades in {} files (+ flush) to {dir}",
                trades::FILES
            );
        }
        Some("tidemill") => {
            let (input, warmup, output, checkpoint) = (arg(1)?, arg(2)?, arg(3)?, arg(4)?);
            let max_files: u64 = arg(5)?.parse()?;
            // Warm-up on a small input (allocator, page cache), then the timed run.
            run_stream(
                &format!("{warmup}/"),
                &Path::new(&output).with_extension("warmup"),
                &Path::new(&checkpoint).with_extension("warmup"),
                max_files,
            )
            .await?;
            let (seconds, batches) = run_stream(
                &format!("{input}/"),
                Path::new(&output),
                Path::new(&checkpoint),
                max_files,
            )
            .await?;
            let timed = Timed {
                engine: "Tidemill".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                seconds,
                batches,
                total_seconds: Some(started.elapsed().as_secs_f64()),
                settings: BTreeMap::from([
                    ("maxFilesPerTrigger".into(), max_files.to_string()),
                    (
                        "target_partitions".into(),
                        SessionContext::new()
                            .copied_config()
                            .target_partitions()
                            .to_string(),
                    ),
                    ("sink".into(), "ParquetSink, local disk".into()),
                ]),
            };
            println!("{}", serde_json::to_string(&timed)?);
        }
        Some("compare") => {
            let rows: u64 = arg(1)?.parse()?;
            let max_files: u64 = arg(2)?.parse()?;
            let tidemill: Timed = serde_json::from_str(&std::fs::read_to_string(arg(3)?)?)?;
            let spark: Timed = serde_json::from_str(&std::fs::read_to_string(arg(4)?)?)?;
            let ours = windows(&read_tidemill(&arg(5)?).await?)?;
            let theirs = windows(&read_spark(&arg(6)?).await?)?;
            let diffs = differences(&ours, &theirs);
            let same = diffs.is_empty() && !ours.is_empty();
            let (our_rate, their_rate) =
                (rows as f64 / tidemill.seconds, rows as f64 / spark.seconds);
            let ratio = our_rate / their_rate;
            let mut result =
                BenchResult::new("spark", "Spark side by side", "benches/spark/run.sh", true);
            result.workload = format!(
                "{rows} trades ({} symbols × {} exchanges, one hour of event time, up to {} s \
                 out of order; seed {}) in {} parquet files plus a flush file (one trade a day \
                 later, so every window closes); per 1-minute tumbling window, symbol and \
                 exchange: count, sum(quantity), vwap, max and min price; watermark 10 s; \
                 append mode to parquet files; availableNow; maxFilesPerTrigger {max_files}; \
                 each engine timed from query start to termination after a warm-up query on \
                 100 000 trades. Spark: local[2], spark.sql.shuffle.partitions=2, default \
                 (HDFS-backed) state store. Tidemill: ParquetSink, local checkpoint.",
                trades::SYMBOLS,
                trades::EXCHANGES.len(),
                trades::DISORDER_MS / 1000,
                trades::SEED,
                trades::FILES,
            );
            let row = |t: &Timed, rate: f64, windows: usize| {
                vec![
                    format!("{} {}", t.engine, t.version),
                    t.batches.to_string(),
                    windows.to_string(),
                    format!("{:.2}", t.seconds),
                    format!("{rate:.0}"),
                    t.total_seconds.map_or("–".into(), |s| format!("{s:.1}")),
                ]
            };
            result.tables.push(Table::new(
                "",
                [
                    "engine",
                    "batches",
                    "windows out",
                    "query seconds",
                    "input rows/s",
                    "process seconds (incl. start-up, warm-up, generation excluded)",
                ],
                vec![
                    row(&tidemill, our_rate, ours.len()),
                    row(&spark, their_rate, theirs.len()),
                ],
            ));
            result.targets.push(Target {
                name: "same rows as Spark".into(),
                target: "equal".into(),
                measured: if same {
                    format!("{} windows equal", ours.len())
                } else {
                    format!("{} differences", diffs.len())
                },
                met: Some(same),
                note: diffs.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
            });
            result.targets.push(Target {
                name: "Tidemill throughput / Spark throughput".into(),
                target: "(reported)".into(),
                measured: trim(ratio),
                met: None,
                note: String::new(),
            });
            result.data = serde_json::json!({
                "rows": rows, "max_files_per_trigger": max_files,
                "tidemill": tidemill, "spark": spark, "ratio": ratio,
                "windows": ours.len(), "same": same,
                "differences": diffs.iter().take(20).collect::<Vec<_>>(),
            });
            let path = result.write()?;
            println!("{}", result.tables[0].to_markdown());
            println!(
                "same rows: {} ({} windows from Tidemill, {} from Spark)",
                if same { "yes" } else { "NO" },
                ours.len(),
                theirs.len()
            );
            for d in diffs.iter().take(5) {
                println!("  {d}");
            }
            println!("Tidemill throughput / Spark throughput: {ratio:.2}");
            println!("results: {}", path.display());
            anyhow::ensure!(same, "the engines' outputs differ");
        }
        _ => return Err(usage()),
    }
    Ok(())
}
