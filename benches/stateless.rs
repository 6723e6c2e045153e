//! Stateless streaming throughput against the same plan as a DataFusion
//! batch job, and the engine's fixed per-batch overhead.
//!
//! ```sh
//! cargo bench --bench stateless            # full mode: 10 million rows
//! TIDEMILL_BENCH_ROWS=1000000 cargo bench --bench stateless
//! cargo test --bench stateless             # short mode, a few seconds
//! ```
//!
//! **Part 1, streaming vs batch.** `TIDEMILL_BENCH_ROWS` rows (default
//! 10 000 000) from a seeded generator (seed 42) in 20 parquet files; a
//! filter and a projection with arithmetic, run as one DataFusion batch job
//! and as a stream (`FileSource`, `MemorySink`, local checkpoint,
//! `Trigger::AvailableNow`) with `max_files_per_trigger` 1, 5 and 20; the
//! median of 9 runs each (a run lasts a fraction of a second). The
//! stream's rows must equal the batch job's.
//! Target: stream/batch ≥ 0.9.
//!
//! **Part 2, fixed per-batch overhead.** 500 batches of 5 rows each
//! (`MemoryStream`, back to back), with a local checkpoint, once into a
//! `MemorySink` and once into the exactly-once `ParquetSink` on local disk:
//! batches/s and mean time per phase. Target: ≥ 2 000 batches/s with the
//! parquet sink (issue 23; it was 200). Then the parquet sink once more
//! with `QueryOptions::read_ahead`: what beginning each trigger on a task
//! of its own costs batches this small (no target).
//!
//! **Part 3, latency floor.** The trigger-interval harness
//! (`tidemill_harness::TriggerStudy`) at intervals 0 and 10 ms with 10 000
//! rows/s for 10 s (1 s warm-up): trade rows through a filter and
//! projection into the `ParquetSink`, local checkpoint; per-row latency
//! (p50, p95, p99, p99.9, max) from "available to the source" to
//! "committed by the sink". Target: p99 ≤ 5 ms at interval 0.
//!
//! **Part 4, what watching costs.** The stream of part 1 at
//! `max_files_per_trigger` 1, without and with the monitor
//! (`tidemill::monitor`: the page, `/metrics` and the API served, and
//! scraped every 100 ms), in 21 pairs of runs back to back (alternating
//! which goes first): the throughput lost and the process's CPU time
//! added, each from the median of the pairs' ratios, and the monitor's
//! own work (`Monitor::busy_time`) as a share of the watched run's CPU
//! time. Target: that share under 2 % (see
//! `tidemill_harness::results::watch_cost` for why it is measured where
//! it is spent rather than as a difference of two runs).
//!
//! **Part 5, reading ahead on object storage.** The plan of part 1 over
//! 20 parquet files of 5 000 rows in a bucket, one file per trigger
//! (`AvailableNow`), into the `ParquetSink` in the same bucket, local
//! checkpoint; the bucket on an S3-compatible server on 127.0.0.1 (moto,
//! as the S3 tests use, which answers at its own CPU-bound pace), then in
//! an in-memory store that answers each request after an S3-like wait (10 ms a
//! GET, 20 ms a PUT or LIST: object_store's `ThrottledStore`); without and with
//! `QueryOptions::read_ahead`, in pairs of runs alternating which goes
//! first (3 pairs; 1 in short mode): seconds, batches/s and mean phases,
//! and the time without over the time with (the median of the pairs'
//! ratios). No target: it shows where reading ahead pays, as parts 2 and 3
//! (which run without it) show where it would not.
//!
//! `TIDEMILL_BENCH_ONLY` (full mode only): a comma-separated list of the
//! parts to run, `throughput`, `watch`, `overhead`, `latency`, `s3`
//! (default: all).
//!
//! Results go to `target/bench-results/stateless.json` (see
//! `tidemill_harness::results`). `cargo bench` passes `--bench`: that runs
//! the full mode. Without it (as `cargo test` runs this file, `test = true`
//! in Cargo.toml) a short mode runs 20 000 rows, 50 overhead batches and a
//! 1-second latency run, ignores `TIDEMILL_BENCH_ROWS`, still checks that
//! the stream's rows equal the batch job's, and never asserts on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::*;
use rand::{Rng, SeedableRng};
use tidemill::prelude::*;
use tidemill::{PhaseDurations, QueryOptions, Sink};
use tidemill_harness::format_interval_ms;
use tidemill_harness::results::{BenchResult, Table, Target, median, trim};
use tidemill_harness::{StudyPipeline, TriggerStudy, trades};

const FILES: usize = 20;
/// Timed runs of each throughput job; the median is reported.
const RUNS: usize = 9;
/// Pairs of runs (without and with the monitor) of the watching-cost part,
/// full mode: a run lasts a fraction of a second, so its figure is the
/// median of many pairs.
const WATCH_PAIRS: usize = 21;

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

/// The output ids, sorted (to compare stream and batch).
fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("id column")
                .values()
                .to_vec()
        })
        .collect();
    ids.sort_unstable();
    ids
}

async fn batch_job(dir: &str) -> anyhow::Result<(Vec<RecordBatch>, Duration)> {
    let ctx = SessionContext::new();
    let t = Instant::now();
    let out = plan(ctx.read_parquet(dir, ParquetReadOptions::default()).await?)?
        .collect()
        .await?;
    Ok((out, t.elapsed()))
}

async fn stream_job(
    dir: &str,
    max_files: u64,
    chk: &std::path::Path,
) -> anyhow::Result<(Vec<RecordBatch>, Vec<tidemill::QueryProgress>, Duration)> {
    let (batches, progress, elapsed, _) = stream_job_watched(dir, max_files, chk, false).await?;
    Ok((batches, progress, elapsed))
}

/// The stream job; `watched`: with the monitor serving the page, the
/// metrics and the API, scraped every 100 ms as Prometheus and the page
/// would. Also returns the monitor's busy time (zero without it).
async fn stream_job_watched(
    dir: &str,
    max_files: u64,
    chk: &std::path::Path,
    watched: bool,
) -> anyhow::Result<(
    Vec<RecordBatch>,
    Vec<tidemill::QueryProgress>,
    Duration,
    Duration,
)> {
    let ctx = SessionContext::new();
    let monitor = match watched {
        true => Some(tidemill::monitor::Monitor::start(&ctx, "127.0.0.1:0").await?),
        false => None,
    };
    let scraper = monitor.as_ref().map(|(_, server)| {
        tidemill::monitor::scrape_every(server.local_addr(), Duration::from_millis(100))
    });
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
    let elapsed = t.elapsed();
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    let busy = match &monitor {
        Some((monitor, _)) => tidemill::monitor::busy_after_stop(monitor).await,
        None => Duration::ZERO,
    };
    Ok((sink.batches(), query.recent_progress(), elapsed, busy))
}

/// Part 4: what watching costs: the stream at `max_files_per_trigger` 1,
/// without and with the monitor (served and scraped every 100 ms), `pairs`
/// pairs of runs back to back, alternating which goes first.
async fn monitor_cost(
    rows: usize,
    pairs: usize,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let dir = format!("{}/", tmp.join("input").display());
    let rates = tidemill_harness::results::watch_pairs(pairs, rows, |on, r| {
        let (dir, chk) = (dir.clone(), tmp.join(format!("chk-monitor-{on}-{r}")));
        async move {
            let (out, _, time, busy) = stream_job_watched(&dir, 1, &chk, on).await?;
            anyhow::ensure!(
                out.iter().map(RecordBatch::num_rows).sum::<usize>() > 0,
                "the stream produced nothing"
            );
            Ok((time, busy))
        }
    })
    .await?;
    let (table, target) = tidemill_harness::results::watch_cost(
        &format!("the stream at max_files_per_trigger=1 over {rows} rows"),
        &rates,
        "stateless: the monitor's own work, share of the run's CPU time",
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    result.targets.push(target);
    result.data["monitor_cost"] = serde_json::json!({
        "pairs_rows_per_s": rates.iter().map(|(p, w)| [p.rows_per_s, w.rows_per_s]).collect::<Vec<_>>(),
        "pairs_cpu_seconds": rates.iter().map(|(p, w)| [p.cpu_seconds, w.cpu_seconds]).collect::<Vec<_>>(),
    });
    Ok(())
}

/// Part 1: the batch job and the stream at several `max_files_per_trigger`.
async fn throughput(
    rows: usize,
    runs: usize,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let input = tmp.join("input");
    std::fs::create_dir_all(&input)?;
    generate(&input, rows)?;
    let dir = format!("{}/", input.display());
    println!("workload: filter + projection over {rows} rows in {FILES} parquet files (seed 42)");

    // Warm up the page cache and the allocator.
    let (expected, _) = batch_job(&dir).await?;
    let expected = ids(&expected);
    let mut times = Vec::new();
    for _ in 0..runs {
        let (out, time) = batch_job(&dir).await?;
        anyhow::ensure!(ids(&out) == expected, "batch jobs disagree");
        times.push(time.as_secs_f64());
    }
    let batch_secs = median(&mut times);
    let batch_rate = rows as f64 / batch_secs;
    let mut table = vec![vec![
        "DataFusion batch job".to_string(),
        "1".into(),
        expected.len().to_string(),
        format!("{batch_secs:.3}"),
        format!("{batch_secs:.3}"),
        "–".into(),
        "–".into(),
        "–".into(),
        format!("{batch_rate:.0}"),
        "1.00".into(),
    ]];
    let mut data = Vec::new();
    for max_files in [1u64, 5, 20] {
        let mut times = Vec::new();
        let mut batches = 0;
        let mut in_batches = Vec::new();
        let (mut reads, mut execs) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let chk = tmp.join(format!("chk-{max_files}-{r}"));
            let (out, progress, time) = stream_job(&dir, max_files, &chk).await?;
            let n = progress.len();
            let sum = |f: fn(&PhaseDurations) -> f64| {
                progress.iter().map(|p| f(&p.duration_ms)).sum::<f64>() / 1e3
            };
            reads.push(sum(|d| d.get_batch));
            execs.push(sum(|d| d.query_planning + d.execution));
            in_batches.push(
                progress
                    .iter()
                    .map(|p| p.duration_ms.trigger_execution)
                    .sum::<f64>()
                    / 1e3,
            );
            anyhow::ensure!(
                ids(&out) == expected,
                "the stream (max_files_per_trigger={max_files}) produced {} rows, not the \
                 batch job's {}",
                out.iter().map(RecordBatch::num_rows).sum::<usize>(),
                expected.len()
            );
            batches = n;
            times.push(time.as_secs_f64());
        }
        let secs = median(&mut times);
        let batch_secs_in = median(&mut in_batches);
        let (read_secs, exec_secs) = (median(&mut reads), median(&mut execs));
        let rate = rows as f64 / secs;
        let ratio = rate / batch_rate;
        table.push(vec![
            format!("stream, max_files_per_trigger={max_files}"),
            batches.to_string(),
            expected.len().to_string(),
            format!("{secs:.3}"),
            format!("{batch_secs_in:.3}"),
            format!("{read_secs:.3}"),
            format!("{exec_secs:.3}"),
            format!("{:.3}", secs - batch_secs_in),
            format!("{rate:.0}"),
            format!("{ratio:.2}"),
        ]);
        result.targets.push(Target::at_least(
            &format!("stateless stream/batch, max_files_per_trigger={max_files}"),
            ratio,
            0.9,
            "",
        ));
        data.push(serde_json::json!({
            "max_files_per_trigger": max_files, "batches": batches, "seconds": secs,
            "seconds_in_batches": batch_secs_in, "seconds_read": read_secs,
            "seconds_plan_and_execute": exec_secs,
            "rows_per_s": rate, "ratio": ratio,
        }));
    }
    let table = Table::new(
        &format!(
            "Streaming vs batch, {rows} rows, median of {runs} runs (a stream's seconds run \
             from `start()` to termination: \"in batches\" is the sum of its triggers, of which \"read\" is the source \
             reading the files into memory and \"plan+exec\" the plan over them; \
             \"outside\" the query's start-up — checkpoint, metadata, source listing — and \
             shutdown):"
        ),
        [
            "run",
            "batches",
            "rows out",
            "seconds",
            "in batches",
            "read",
            "plan+exec",
            "outside",
            "input rows/s",
            "stream/batch",
        ],
        table,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    result.data["throughput"] = serde_json::json!({
        "rows": rows, "batch_seconds": batch_secs, "batch_rows_per_s": batch_rate,
        "streams": data,
    });
    Ok(())
}

/// The columns of [`phase_cells`].
const PHASE_COLUMNS: [&str; 8] = [
    "offsets", "wal", "read", "plan", "execute", "sink", "commit", "total",
];

/// A batch's mean phases, in ms, as the cells of [`PHASE_COLUMNS`].
fn phase_cells(d: &PhaseDurations) -> Vec<String> {
    [
        d.latest_offset,
        d.wal_commit,
        d.get_batch,
        d.query_planning,
        d.execution,
        d.add_batch,
        d.commit_offsets,
        d.trigger_execution,
    ]
    .into_iter()
    .map(|v| format!("{v:.3}"))
    .collect()
}

fn mean_phases(progress: &[tidemill::QueryProgress]) -> PhaseDurations {
    let n = progress.len().max(1) as f64;
    let mean =
        |f: fn(&PhaseDurations) -> f64| progress.iter().map(|p| f(&p.duration_ms)).sum::<f64>() / n;
    PhaseDurations {
        latest_offset: mean(|d| d.latest_offset),
        wal_commit: mean(|d| d.wal_commit),
        get_batch: mean(|d| d.get_batch),
        query_planning: mean(|d| d.query_planning),
        execution: mean(|d| d.execution),
        add_batch: mean(|d| d.add_batch),
        state_commit: mean(|d| d.state_commit),
        commit_offsets: mean(|d| d.commit_offsets),
        trigger_execution: mean(|d| d.trigger_execution),
    }
}

/// Part 2: many tiny batches back to back, into `sink`: batches/s and the
/// mean phases.
async fn overhead(
    batches: usize,
    chk: &std::path::Path,
    sink: Arc<dyn Sink>,
    read_ahead: bool,
) -> anyhow::Result<(f64, PhaseDurations)> {
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
        .sink_arc(sink)
        .trigger(Trigger::AvailableNow)
        .checkpoint(chk.to_str().unwrap())
        .options(QueryOptions {
            progress_history: batches,
            read_ahead,
            ..Default::default()
        })
        .start()
        .await?;
    query.await_termination().await?;
    let elapsed = t.elapsed();
    let progress = query.recent_progress();
    anyhow::ensure!(
        progress.len() == batches,
        "{} batches ran, expected {batches}",
        progress.len()
    );
    Ok((
        progress.len() as f64 / elapsed.as_secs_f64(),
        mean_phases(&progress),
    ))
}

/// Part 3: latency at intervals 0 and 10 ms, 10 000 rows/s, into the
/// parquet sink.
async fn latency(full: bool, result: &mut BenchResult) -> anyhow::Result<()> {
    let (rate, run_for, warmup) = if full {
        (10_000, Duration::from_secs(10), Duration::from_secs(1))
    } else {
        (
            1_000,
            Duration::from_millis(1200),
            Duration::from_millis(300),
        )
    };
    let report = TriggerStudy::new()
        .pipeline(StudyPipeline::new("stateless", trades::big_trades))
        .intervals([Duration::ZERO, Duration::from_millis(10)])
        .rates([rate])
        .run_for(run_for)
        .warmup(warmup)
        .no_max_rate_search()
        .verify(!full)
        .sink(|dir| Arc::new(ParquetSink::new(dir.display().to_string())) as Arc<dyn Sink>)
        .log(false)
        .run()
        .await?;
    let mut rows = Vec::new();
    let mut phase_rows = Vec::new();
    for run in &report.runs {
        anyhow::ensure!(
            run.rows_committed == run.rows_generated,
            "{} of {} rows committed",
            run.rows_committed,
            run.rows_generated
        );
        let l = run.latency.expect("rows after the warm-up");
        rows.push(vec![
            format_interval_ms(run.interval_ms),
            trim(l.p50_ms),
            trim(l.p95_ms),
            trim(l.p99_ms),
            trim(l.p999_ms),
            trim(l.max_ms),
            trim(run.batches_per_s),
            trim(run.sustained_rows_per_s),
            trim(run.cpu_s_per_million_rows),
        ]);
        if let Some(d) = &run.phases_ms {
            let mut row = vec![format!(
                "interval {}, {rate} rows/s, parquet sink",
                format_interval_ms(run.interval_ms)
            )];
            row.extend(phase_cells(d));
            phase_rows.push(row);
        }
    }
    let table = Table::new(
        &format!(
            "Latency at trigger intervals 0 and 10 ms, {rate} rows/s for {} s after {} s of \
             warm-up; trade rows, filter + projection, `ParquetSink` and checkpoint on local \
             disk (latency = batch committed by the sink − row available to the source):",
            (run_for - warmup).as_secs_f64(),
            warmup.as_secs_f64()
        ),
        [
            "interval",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "batches/s",
            "rows/s",
            "CPU s / M rows",
        ],
        rows,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    if !phase_rows.is_empty() {
        let table = Table::new(
            "Mean ms per phase of the batches of those runs (commit: the part of the commit \
             on the batch's path; the commit log entry is written while the next batch runs):",
            ["run"].into_iter().chain(PHASE_COLUMNS),
            phase_rows,
        );
        println!("\n{}", table.to_markdown());
        result.tables.push(table);
    }
    let at_zero = &report.runs[0];
    let l = at_zero.latency.expect("rows after the warm-up");
    result.targets.push(Target::at_most(
        &format!("p99 latency (ms), interval 0, {rate} rows/s, parquet sink"),
        l.p99_ms,
        5.0,
        "",
    ));
    result.data["latency"] = serde_json::to_value(at_zero)?;
    result.data["latency_10ms"] = serde_json::to_value(&report.runs[1])?;
    Ok(())
}

/// Part 2: the fixed per-batch overhead, tiny batches back to back into a
/// `MemorySink` and into the parquet sink.
async fn overhead_part(
    overhead_batches: usize,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let mut phase_rows = Vec::new();
    let mut parquet_rate = 0.0;
    let runs = [
        ("MemorySink", false, false),
        ("ParquetSink, local disk", true, false),
        ("ParquetSink, local disk, read-ahead", true, true),
    ];
    for (label, parquet, read_ahead) in runs {
        let out = tmp.join(format!("overhead-out-{parquet}-{read_ahead}"));
        let sink: Arc<dyn Sink> = if parquet {
            Arc::new(ParquetSink::new(out.display().to_string()))
        } else {
            Arc::new(MemorySink::new())
        };
        let chk = tmp.join(format!("chk-overhead-{parquet}-{read_ahead}"));
        let (rate, phases) = overhead(overhead_batches, &chk, sink, read_ahead).await?;
        if parquet && !read_ahead {
            parquet_rate = rate;
        }
        let mut row = vec![label.to_string(), format!("{rate:.0}")];
        row.extend(phase_cells(&phases));
        phase_rows.push(row);
    }
    let table = Table::new(
        &format!(
            "Fixed per-batch overhead: {overhead_batches} batches of 5 rows back to back, local \
             checkpoint; mean ms per phase:"
        ),
        ["sink", "batches/s"].into_iter().chain(PHASE_COLUMNS),
        phase_rows,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    result.targets.push(Target::at_least(
        "batches/s, 5 rows each, checkpoint + parquet sink on local disk",
        parquet_rate,
        2000.0,
        "",
    ));

    Ok(())
}

/// Part 5: the stream over parquet files on object storage, into the
/// parquet sink there, without and with reading ahead: on moto, and in an
/// in-memory store that answers each request after an S3-like wait.
async fn read_ahead_part(
    pairs: usize,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    use tidemill::engine::StorageOptions;

    let local = tmp.join("s3-input");
    std::fs::create_dir_all(&local)?;
    generate(&local, READ_AHEAD_ROWS)?;

    let server = tidemill_harness::s3_server::S3Server::start();
    server.create_bucket("bench");
    let mut options = StorageOptions::new();
    for (key, value) in server.options() {
        options.insert(key, value).map_err(anyhow::Error::msg)?;
    }
    let moto = StoreUnderTest::Moto(options);
    moto.upload(&local).await?;
    read_ahead_runs(&moto, pairs, tmp, result).await?;
    drop(server);

    let wait = |ms| Duration::from_millis(ms);
    let throttled = StoreUnderTest::Throttled(Arc::new(ThrottledStore::new(
        object_store::memory::InMemory::new(),
        ThrottleConfig {
            wait_get_per_call: wait(S3_WAIT_MS.0),
            wait_put_per_call: wait(S3_WAIT_MS.1),
            wait_list_per_call: wait(S3_WAIT_MS.2),
            wait_list_with_delimiter_per_call: wait(S3_WAIT_MS.2),
            wait_delete_per_call: wait(S3_WAIT_MS.1),
            ..Default::default()
        },
    )));
    throttled.upload(&local).await?;
    read_ahead_runs(&throttled, pairs, tmp, result).await
}

/// Part 5's input: rows in [`FILES`] files.
const READ_AHEAD_ROWS: usize = FILES * 5_000;

/// Part 5's S3-like waits, ms: per GET, per PUT (and DELETE), per LIST.
const S3_WAIT_MS: (u64, u64, u64) = (10, 20, 20);

/// Where part 5's bucket `s3://bench` is.
enum StoreUnderTest {
    /// On moto, reached with these options.
    Moto(tidemill::engine::StorageOptions),
    /// This store, registered for the bucket in each run's session.
    Throttled(Arc<dyn object_store::ObjectStore>),
}

impl StoreUnderTest {
    fn name(&self) -> String {
        match self {
            Self::Moto(_) => "moto (127.0.0.1)".into(),
            Self::Throttled(_) => format!(
                "an in-memory store that waits {} ms per GET, {} ms per PUT and DELETE, {} ms per \
                 LIST (object_store's ThrottledStore)",
                S3_WAIT_MS.0, S3_WAIT_MS.1, S3_WAIT_MS.2
            ),
        }
    }

    /// A session that reaches the bucket.
    fn session(&self) -> anyhow::Result<SessionContext> {
        let ctx = SessionContext::new();
        if let Self::Throttled(store) = self {
            let url = datafusion::execution::object_store::ObjectStoreUrl::parse("s3://bench")?;
            ctx.runtime_env()
                .register_object_store(url.as_ref(), Arc::clone(store));
        }
        Ok(ctx)
    }

    fn options(&self) -> tidemill::engine::StorageOptions {
        match self {
            Self::Moto(options) => options.clone(),
            Self::Throttled(_) => Default::default(),
        }
    }

    /// Puts the files of `local` under `s3://bench/input/`.
    async fn upload(&self, local: &std::path::Path) -> anyhow::Result<()> {
        use object_store::ObjectStoreExt;
        let ctx = self.session()?;
        let bucket = tidemill::engine::Location::resolve_with(
            "s3://bench/",
            &self.options(),
            &ctx.runtime_env(),
        )?;
        for f in 0..FILES {
            let name = format!("part-{f:03}.parquet");
            let bytes = std::fs::read(local.join(&name))?;
            bucket
                .store()
                .put(&format!("input/{name}").into(), bytes.into())
                .await?;
        }
        Ok(())
    }
}

/// Part 5 on one store: `pairs` pairs of runs without and with reading
/// ahead, alternating which goes first.
async fn read_ahead_runs(
    store: &StoreUnderTest,
    pairs: usize,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    static RUNS_SO_FAR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // Per mode (without, with): seconds and the progress of each run.
    let mut seconds: [Vec<f64>; 2] = Default::default();
    let mut progress: [Vec<tidemill::QueryProgress>; 2] = Default::default();
    let mut ratios = Vec::new();
    for pair in 0..pairs {
        let mut times = [0.0; 2];
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for mode in order {
            let run = RUNS_SO_FAR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ctx = store.session()?;
            let source = FileSource::parquet("s3://bench/input")
                .storage_options(store.options())
                .max_files_per_trigger(1);
            let sink =
                ParquetSink::new(format!("s3://bench/out-{run}")).storage_options(store.options());
            let t = Instant::now();
            let query = plan(ctx.read_stream(source).await?)?
                .write_stream()
                .sink(sink)
                .trigger(Trigger::AvailableNow)
                .checkpoint(tmp.join(format!("chk-s3-{run}")).to_str().unwrap())
                .options(QueryOptions {
                    read_ahead: mode == 1,
                    ..Default::default()
                })
                .start()
                .await?;
            query.await_termination().await?;
            times[mode] = t.elapsed().as_secs_f64();
            let runs = query.recent_progress();
            anyhow::ensure!(
                runs.len() == FILES,
                "{} batches for {FILES} files",
                runs.len()
            );
            seconds[mode].push(times[mode]);
            progress[mode].extend(runs);
        }
        ratios.push(times[0] / times[1]);
    }
    let mut rows = Vec::new();
    for (mode, label) in ["without read-ahead", "with read-ahead"].iter().enumerate() {
        let secs = median(&mut seconds[mode].clone());
        let mut row = vec![
            label.to_string(),
            format!("{secs:.3}"),
            format!("{:.1}", FILES as f64 / secs),
        ];
        row.extend(phase_cells(&mean_phases(&progress[mode])));
        rows.push(row);
    }
    let speedup = median(&mut ratios);
    let table = Table::new(
        &format!(
            "Reading ahead on object storage, {}: {READ_AHEAD_ROWS} rows in {FILES} parquet \
             files, one file per trigger, into the parquet sink on the same store, local \
             checkpoint; median of {pairs} runs each; mean ms per phase (a batch begun ahead \
             counts its offsets, read and, without state, execution in the batch before's \
             time). Time without ÷ time with read-ahead: {speedup:.2} (median of the pairs):",
            store.name()
        ),
        ["run", "seconds", "batches/s"]
            .into_iter()
            .chain(PHASE_COLUMNS),
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
    let (rows, runs, overhead_batches) = if full {
        let rows = std::env::var("TIDEMILL_BENCH_ROWS")
            .ok()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or(10_000_000);
        (rows, RUNS, 500)
    } else {
        (20_000, 1, 50)
    };
    let mut result = BenchResult::start(
        "stateless",
        "Stateless: streaming vs batch, per-batch overhead, latency floor",
        "cargo bench --bench stateless",
        full,
    );
    // Every file holds the same number of rows.
    let rows = rows / FILES * FILES;
    result.workload = format!(
        "Throughput: filter (quantity > 10) and projection (id, symbol, price·quantity) over \
         {rows} seeded rows (seed 42) in {FILES} parquet files, as one DataFusion batch job \
         (collect) and as a stream (FileSource, MemorySink, local checkpoint, AvailableNow). \
         Overhead: {overhead_batches} batches of 5 rows (MemoryStream, back to back, local \
         checkpoint). Latency: the trigger-interval harness at interval 0."
    );
    let tmp = tempfile::tempdir()?;

    let only = std::env::var("TIDEMILL_BENCH_ONLY").ok().filter(|_| full);
    let runs_part = |part: &str| {
        only.as_deref()
            .is_none_or(|parts| parts.split(',').any(|p| p.trim() == part))
    };
    if runs_part("throughput") {
        throughput(rows, runs, tmp.path(), &mut result).await?;
    }
    if runs_part("watch") {
        monitor_cost(
            rows,
            if full { WATCH_PAIRS } else { 1 },
            tmp.path(),
            &mut result,
        )
        .await?;
    }
    if runs_part("overhead") {
        overhead_part(overhead_batches, tmp.path(), &mut result).await?;
    }
    if runs_part("latency") {
        latency(full, &mut result).await?;
    }
    if runs_part("s3") {
        read_ahead_part(if full { 3 } else { 1 }, tmp.path(), &mut result).await?;
    }

    println!("\n| target | goal | measured | met |\n|---|---|---|---|");
    for t in &result.targets {
        println!(
            "| {} | {} | {} | {} |",
            t.name,
            t.target,
            t.measured,
            match t.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "–",
            }
        );
    }
    let path = result.write()?;
    println!("\nresults: {}", path.display());
    Ok(())
}
