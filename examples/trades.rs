//! Tidemill's main example: per-minute trading metrics, streamed and as a
//! batch report, with late data. No external service is needed.
//!
//! **The case study.** A trade feed lands as parquet files in a directory
//! (`symbol`, `exchange`, `price`, `quantity`, `event_time`). The desk
//! wants, per minute, symbol and exchange: the number of trades, the volume
//! (shares traded), the VWAP (volume-weighted average price) and the high
//! and low price. These metrics are defined once, in [`minute_metrics`]
//! (`examples/common/mod.rs`, shared with the `kafka_trades` example), and
//! computed twice:
//!
//! 1. **As a stream**: a `FileSource` reads the files a few at a time, the
//!    watermark (`event_time` minus 10 seconds) says when a minute is
//!    complete, and each minute's bar is written once, when complete, to a
//!    Delta Lake table by the exactly-once `DeltaSink` (append mode: one
//!    table version per micro-batch). The job runs with
//!    `Trigger::AvailableNow`, like a scheduled job: it processes the files
//!    present and stops. It runs twice; more files arrive in between, and
//!    the second run resumes from the checkpoint (offsets, watermark and
//!    the state of the minutes still open).
//! 2. **As a batch report**: DataFusion reads all the files at the end of
//!    the day and runs the same function.
//!
//! **The data.** Trades are generated from a fixed seed. Rows arrive out
//! of order, but never by more than 8 seconds, which the 10-second
//! watermark delay absorbs: no on-time row is lost. The last two files
//! also carry a few trades that a reconnecting venue delivers minutes late;
//! by then the watermark has closed (and emitted) their minutes, so the
//! stream drops them and counts them in its progress. The batch report,
//! which sees every row at once, includes them.
//!
//! **The table.** The bars go to the Delta table at `target/lake/minute_bars`
//! in the workspace, or at the path in `TIDEMILL_TRADES_TABLE`; each run
//! writes it afresh (it removes the Delta table a previous run left). The
//! example prints the bars read back from it with deltalake's own
//! DataFusion table provider; any Delta reader can query it after the run
//! (the README shows Python, DuckDB and `datafusion-cli`).
//!
//! **What the example checks** (it fails loudly if the engine regresses):
//! the table holds every bar exactly once (no minute, symbol and exchange
//! twice; one table version per micro-batch, the last carrying the query's
//! transaction with the last batch id; as many rows as the batches wrote);
//! every bar equals the batch report's row for that minute, symbol and
//! exchange, unless late rows fell into it; every minute the stream did not
//! emit is still open (its end is after the final watermark) or holds only
//! late rows; and the stream dropped exactly the late rows the generator
//! made.
//!
//! Run it with `cargo run --example trades`
//! (`RUST_LOG=tidemill_engine=info` also shows the engine's own log);
//! `cargo test --example trades` (and `cargo test --workspace`) runs it as a
//! test, writing its table to a temporary directory.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, ensure};
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::QueryProgress;
use tidemill::prelude::*;

use common::{
    Key, MINUTE_MS, START_MS, Trade, check_exactly_once, clear_table, metrics_by_key,
    minute_metrics, read_delta, table_location, write_file,
};

/// Files in the input directory, each covering `SECONDS_PER_FILE` seconds
/// of trading; the first `FIRST_RUN_FILES` exist when the stream first
/// runs, the rest arrive before its second run.
const FILES: usize = 16;
const FIRST_RUN_FILES: usize = 10;
const SECONDS_PER_FILE: i64 = 30;
const TRADES_PER_FILE: usize = 400;
/// How many files the stream admits into one micro-batch.
const FILES_PER_BATCH: u64 = 2;
/// The watermark delay, and the largest disorder among on-time rows, which
/// must be less so that no on-time row is ever late.
const WATERMARK_DELAY_SECONDS: i64 = 10;
const MAX_DISORDER_MS: i64 = 8_000;
const _: () = assert!(MAX_DISORDER_MS < WATERMARK_DELAY_SECONDS * 1000);
/// The last `LATE_FILES` files each carry `LATE_PER_FILE` late trades from
/// the first `LATE_MINUTES` minutes.
const LATE_FILES: usize = 2;
const LATE_PER_FILE: usize = 12;
const LATE_MINUTES: i64 = 3;

/// The trades of file `n`: on time, each up to `MAX_DISORDER_MS` earlier
/// than its place in the file (so rows are out of order, by less than the
/// watermark delay), plus, in the last files, late trades from the first
/// minutes mixed in at random places. Returns (all rows, the late ones).
fn generate_file(n: usize, rng: &mut impl Rng) -> (Vec<Trade>, Vec<Trade>) {
    let file_start = START_MS + n as i64 * SECONDS_PER_FILE * 1000;
    let spacing = SECONDS_PER_FILE * 1000 / TRADES_PER_FILE as i64;
    let mut rows: Vec<Trade> = (0..TRADES_PER_FILE)
        .map(|i| {
            let nominal = file_start + i as i64 * spacing;
            let disorder = rng.random_range(0..=MAX_DISORDER_MS);
            // The very first trades of the day cannot precede the opening.
            Trade::random(rng, (nominal - disorder).max(START_MS))
        })
        .collect();
    let mut late = Vec::new();
    if n >= FILES - LATE_FILES {
        for _ in 0..LATE_PER_FILE {
            let event_time = START_MS + rng.random_range(0..LATE_MINUTES * MINUTE_MS);
            late.push(Trade::random(rng, event_time));
        }
        for trade in &late {
            let at = rng.random_range(0..=rows.len());
            rows.insert(at, *trade);
        }
    }
    (rows, late)
}

/// The environment variable naming the Delta table's path.
const TABLE_ENV: &str = "TIDEMILL_TRADES_TABLE";

/// Runs the streaming job once, until it has processed the files present
/// (`Trigger::AvailableNow`), writing the bars to the Delta table at
/// `table`, and returns its per-batch progress.
async fn run_stream(
    ctx: &SessionContext,
    input: &str,
    table: &str,
    checkpoint: &str,
) -> anyhow::Result<Vec<QueryProgress>> {
    let trades = ctx
        .read_stream(FileSource::parquet(input).max_files_per_trigger(FILES_PER_BATCH))
        .await?
        .with_watermark("event_time", &format!("{WATERMARK_DELAY_SECONDS} seconds"))?;
    let query = minute_metrics(trades)?
        .write_stream()
        .sink(DeltaSink::new(table))
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .checkpoint(checkpoint)
        .query_name("minute_metrics")
        .start()
        .await?;
    query.await_termination().await?;
    let progress = query.recent_progress();
    for p in &progress {
        let state = p.state_operators.first().context("no state operator")?;
        println!(
            "  batch {:>2}: {:>4} rows in, {:>2} rows out, watermark {:<24} state {:>2} rows, {:>2} late rows dropped",
            p.batch_id,
            p.num_input_rows,
            p.num_output_rows,
            p.event_time.watermark.as_deref().unwrap_or("-"),
            state.num_rows_total,
            state.num_rows_dropped_by_watermark,
        );
    }
    Ok(progress)
}

/// Prints `df` sorted by window, symbol and exchange, VWAP rounded.
async fn show_sorted(title: &str, df: DataFrame) -> anyhow::Result<()> {
    println!("\n{title}");
    df.select(vec![
        col("window_start"),
        col("window_end"),
        col("symbol"),
        col("exchange"),
        col("trades"),
        col("volume"),
        round(vec![col("vwap"), lit(4)]).alias("vwap"),
        col("high"),
        col("low"),
    ])?
    .sort(vec![
        col("window_start").sort(true, false),
        col("symbol").sort(true, false),
        col("exchange").sort(true, false),
    ])?
    .show()
    .await?;
    Ok(())
}

fn hh_mm(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%H:%M").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Runs the case study, writing the bars to the Delta table at `table`.
async fn run(table: &Path) -> anyhow::Result<()> {
    let started = Instant::now();

    let root = tempfile::Builder::new()
        .prefix("tidemill-trades-")
        .tempdir()?;
    let input_dir = root.path().join("trades");
    std::fs::create_dir_all(&input_dir)?;
    let input = format!("{}/", input_dir.to_str().context("path")?);
    clear_table(table)?;
    let output = table.to_str().context("path")?.to_string();
    let checkpoint = root.path().join("checkpoint");
    let checkpoint = checkpoint.to_str().context("path")?.to_string();
    println!("input:       {input}");
    println!("Delta table: {output}");
    println!("checkpoint:  {checkpoint}");

    // Generate every file from one seed; keep the late trades to check the
    // stream's count of dropped rows and to know which minutes they touch.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut files = Vec::new();
    let mut late_trades = Vec::new();
    let mut max_event_time = i64::MIN;
    for n in 0..FILES {
        let (rows, late) = generate_file(n, &mut rng);
        max_event_time = rows
            .iter()
            .map(|t| t.event_time_ms)
            .fold(max_event_time, i64::max);
        late_trades.extend(late);
        files.push(rows);
    }
    let total_rows: usize = files.iter().map(Vec::len).sum();

    // The stream, run twice as a scheduled job would be.
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
        "stream, run 2 ({} more files, the last {LATE_FILES} with late trades):",
        FILES - FIRST_RUN_FILES
    );
    progress.extend(run_stream(&ctx, &input, &output, &checkpoint).await?);

    // The batch report over the same files, with the same function.
    let batch_df = minute_metrics(
        ctx.read_parquet(&input, ParquetReadOptions::default())
            .await?,
    )?;
    // The bars in the Delta table, read back by deltalake's table provider.
    let (stream_df, delta_table) = read_delta(&ctx, table).await?;
    show_sorted(
        &format!("streamed minute bars, as the Delta table {output} holds them:"),
        stream_df.clone(),
    )
    .await?;
    show_sorted("batch report over the same files:", batch_df.clone()).await?;

    // Compare. Every bar once in the table (`metrics_by_key` refuses a key
    // twice), one table version per micro-batch.
    let streamed = metrics_by_key(stream_df).await?;
    check_exactly_once(&delta_table, &progress, streamed.len()).await?;
    let batch = metrics_by_key(batch_df).await?;
    let late_keys: BTreeMap<Key, usize> = late_trades.iter().fold(BTreeMap::new(), |mut m, t| {
        *m.entry(t.key()).or_insert(0) += 1;
        m
    });
    let on_time_keys: BTreeSet<Key> = {
        let mut all = BTreeMap::new();
        for t in files.iter().flatten() {
            *all.entry(t.key()).or_insert(0usize) += 1;
        }
        all.into_iter()
            .filter(|(k, n)| *n > late_keys.get(k).copied().unwrap_or(0))
            .map(|(k, _)| k)
            .collect()
    };
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

    println!("\ncomparison:");
    let mut differing = 0;
    for (key, s) in &streamed {
        let b = batch
            .get(key)
            .with_context(|| format!("streamed row {key:?} is not in the batch report"))?;
        if s.same_as(b) {
            continue;
        }
        differing += 1;
        let late = late_keys.get(key).copied().unwrap_or(0);
        println!(
            "  {} {} {}: stream {} trades / {} shares, batch {} trades / {} shares \
             ({late} late row(s) dropped by the stream)",
            hh_mm(key.0),
            key.1,
            key.2,
            s.trades,
            s.volume,
            b.trades,
            b.volume
        );
        ensure!(
            late > 0,
            "streamed row {key:?} differs from the batch report without late rows: {s:?} vs {b:?}"
        );
        ensure!(
            b.trades - s.trades == late as i64,
            "{key:?}: the batch report has {} more trades than the stream, expected the {late} late ones",
            b.trades - s.trades
        );
    }
    let mut still_open = BTreeSet::new();
    let mut only_late = 0;
    for key in batch.keys().filter(|k| !streamed.contains_key(*k)) {
        if key.0 + MINUTE_MS > final_watermark_ms {
            still_open.insert(key.0);
        } else {
            ensure!(
                !on_time_keys.contains(key),
                "{key:?} is closed by the watermark and has on-time rows, but the stream never emitted it"
            );
            only_late += 1;
        }
    }
    println!(
        "  {} rows agree; {differing} differ, each because of late rows",
        streamed.len() - differing
    );
    println!(
        "  {} rows only in the batch report: {} in minutes still open when the stream stopped \
         (minutes {} end after the final watermark {final_watermark}), {only_late} made of late \
         rows only",
        batch.len() - streamed.len(),
        batch.len() - streamed.len() - only_late,
        still_open
            .iter()
            .map(|m| hh_mm(*m))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  late rows: {} generated, {late_dropped} dropped by the stream",
        late_trades.len()
    );
    ensure!(
        rows_in == total_rows as u64,
        "the stream read {rows_in} rows, the files hold {total_rows}"
    );
    ensure!(
        late_dropped == late_trades.len() as u64,
        "the stream dropped {late_dropped} late rows, the generator made {}",
        late_trades.len()
    );
    ensure!(
        final_watermark_ms == max_event_time - WATERMARK_DELAY_SECONDS * 1000,
        "final watermark {final_watermark} is not the latest event time minus \
         {WATERMARK_DELAY_SECONDS} seconds"
    );
    println!(
        "  Delta table: {} versions, one per micro-batch, each bar once",
        delta_table.version().map_or(0, |v| v + 1)
    );
    println!(
        "\n{} micro-batches over 2 runs, {rows_in} trades in, {} bars out to {output}; checks \
         passed in {:.1} s",
        progress.len(),
        streamed.len(),
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
    run(&table_location(TABLE_ENV, "minute_bars")).await
}

#[cfg(test)]
mod tests {
    /// `cargo test` runs the example, checks included, with its table in a
    /// temporary directory.
    #[tokio::test(flavor = "multi_thread")]
    async fn example_runs() {
        let dir = tempfile::tempdir().unwrap();
        super::run(&dir.path().join("minute_bars")).await.unwrap();
    }
}
