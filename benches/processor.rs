//! The stateful processor (`transform_with_state`) against the built-in
//! streaming aggregation doing the same running sum, and the cost of a
//! processor's batch as its state grows.
//!
//! ```sh
//! cargo bench --bench processor                    # full mode (below)
//! TIDEMILL_BENCH_KEYS=100000 cargo bench --bench processor
//! TIDEMILL_BENCH_STATE_KEYS=10000,1000000 cargo bench --bench processor
//! TIDEMILL_BENCH_ONLY=throughput cargo bench --bench processor  # or =state
//! cargo test --bench processor                     # short mode, a few seconds
//! # One run alone (what the bench runs in a child process), e.g. to profile:
//! TIDEMILL_BENCH_CHILD=processor TIDEMILL_BENCH_CHECKPOINT=/tmp/chk \
//!     perf record -g target/release/deps/processor-<hash> --bench
//! ```
//!
//! Environment variables (full mode only; short mode ignores them):
//!
//! - `TIDEMILL_BENCH_KEYS`: keys of the throughput part (default 1 000 000).
//! - `TIDEMILL_BENCH_ROWS_PER_BATCH`: rows per batch of the throughput part
//!   (default 100 000).
//! - `TIDEMILL_BENCH_THROUGHPUT_BATCHES`: batches of the throughput part
//!   (default 30: 10 creating the keys, 20 updating them).
//! - `TIDEMILL_BENCH_RUNS`: runs of each engine in the throughput part
//!   (default 5).
//! - `TIDEMILL_BENCH_STATE_KEYS`: comma-separated state sizes in keys
//!   (default `10000,10000000`).
//! - `TIDEMILL_BENCH_BUILD_ROWS`: rows (new keys) per batch building the
//!   state (default 1 000 000).
//! - `TIDEMILL_BENCH_BATCH_ROWS`: rows per timed batch of the state part
//!   (default 10 000).
//! - `TIDEMILL_BENCH_BATCHES`: timed batches per state size (default 30).
//! - `TIDEMILL_BENCH_STATE_ROUNDS`: rounds of the state part (default 5).
//! - `TIDEMILL_BENCH_ONLY`: `throughput` or `state` to run one part (the
//!   results file is written only when both run).
//! - `TIDEMILL_BENCH_CHILD` (with `TIDEMILL_BENCH_CHECKPOINT`): run one
//!   measured run alone and print it (`aggregation`, `processor`,
//!   `processor-batches` or `state:<keys>`); the bench starts itself this
//!   way for each run.
//!
//! **Part 1, throughput.** A running sum and count per key (Int64) over
//! `TIDEMILL_BENCH_KEYS` keys, in update mode, fed by a `MemoryStream`, into
//! a sink that keeps only each key's last (sum, count), local checkpoint.
//! The batches (seed 42) first create every key once (a random permutation
//! of the keys, cut into batches), then draw keys uniformly at random, so
//! every batch touches many keys. Run (a) as the built-in aggregation,
//! `aggregate([key], [sum(value), count(1)])`, and (b) as a
//! [`StatefulProcessor`] with one `ValueState<Running { sum, count }>` per
//! key emitting `(key, sum, count)` per key per batch with
//! `ProcessorContext::emit` (`processor`), and for reference (c) the same
//! processor returning a one-row record batch per key instead
//! (`processor-batches`). Every output is checked against the sums computed
//! from the input, row counts and per-key final figures, and their
//! checksums compared. The time of a run is the
//! sum of its batches' `trigger_execution` (the query's progress: planning,
//! execution, sink, state commit and the logs; not the bench pushing rows
//! into the stream), the wall time of `process_all_available` shown beside
//! it. Each run is a process of its own, the engines taking turns to go
//! first; the ratio processor/aggregation is the median of the runs'
//! ratios (target ≥ 0.7, on (b)).
//!
//! **Part 2, state scaling.** The processor with 10 thousand vs 10 million
//! keys of state: the state is built with batches of up to
//! `TIDEMILL_BENCH_BUILD_ROWS` new keys (timed), then batches of
//! `TIDEMILL_BENCH_BATCH_ROWS` rows, half on random existing keys and half
//! on new keys, are timed from the query's progress (`trigger_execution`).
//! As in the aggregation bench the sizes are measured in rounds, each run in
//! a process of its own from a new state; the figures: median per-batch time
//! per size and round, the ratio of the largest size to the smallest per
//! round and its median over the rounds (target ≤ 1.5), state memory per
//! key, and the run's peak RSS (VmHWM).
//!
//! `cargo bench` passes `--bench`: that runs the full mode. Without it (as
//! `cargo test` runs this file, `test = true` in Cargo.toml) a short mode
//! with tiny sizes checks the results and never asserts on time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use tidemill::prelude::*;
use tidemill::processor::{
    GroupKey, KeyRows, ProcessorContext, ProcessorResult, StateDeclarations, StatefulProcessor,
    TimeMode, ValueState,
};
use tidemill::{QueryOptions, QueryProgress, Sink, StreamingQuery};
use tidemill_harness::keyed_state::keyed_state_run;
use tidemill_harness::machine::{flush_file_writes, proc_status_mib};
use tidemill_harness::results::{BenchResult, PHASES, Table, Target, median, phase_cells, total};

/// Sizes of one run.
struct Config {
    full: bool,
    /// Part 1: keys, rows per batch, batches, runs of each engine.
    keys: usize,
    rows_per_batch: usize,
    throughput_batches: usize,
    runs: usize,
    /// Part 2.
    state_keys: Vec<usize>,
    build_rows: usize,
    batch_rows: usize,
    batches: usize,
    state_rounds: usize,
    throughput: bool,
    state: bool,
}

impl Config {
    fn from_env(full: bool) -> Self {
        let only = std::env::var("TIDEMILL_BENCH_ONLY").ok();
        let (throughput, state) = match only.as_deref() {
            Some("throughput") if full => (true, false),
            Some("state") if full => (false, true),
            _ => (true, true),
        };
        if !full {
            return Self {
                full,
                keys: 2_000,
                rows_per_batch: 500,
                throughput_batches: 10,
                runs: 1,
                state_keys: vec![1_000, 20_000],
                build_rows: 8_000,
                batch_rows: 1_000,
                batches: 5,
                state_rounds: 1,
                throughput,
                state,
            };
        }
        let env = |name: &str| std::env::var(name).ok();
        let num = |name: &str, default: usize| {
            env(name)
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or(default)
        };
        Self {
            full,
            keys: num("TIDEMILL_BENCH_KEYS", 1_000_000).max(1),
            rows_per_batch: num("TIDEMILL_BENCH_ROWS_PER_BATCH", 100_000).max(1),
            throughput_batches: num("TIDEMILL_BENCH_THROUGHPUT_BATCHES", 30),
            runs: num("TIDEMILL_BENCH_RUNS", 5).max(1),
            state_keys: env("TIDEMILL_BENCH_STATE_KEYS")
                .map(|v| {
                    v.split(',')
                        .filter_map(|s| s.trim().replace('_', "").parse().ok())
                        .collect()
                })
                .unwrap_or_else(|| vec![10_000, 10_000_000]),
            build_rows: num("TIDEMILL_BENCH_BUILD_ROWS", 1_000_000).max(1),
            batch_rows: num("TIDEMILL_BENCH_BATCH_ROWS", 10_000),
            batches: num("TIDEMILL_BENCH_BATCHES", 30),
            state_rounds: num("TIDEMILL_BENCH_STATE_ROUNDS", 5).max(1),
            throughput,
            state,
        }
    }
}

fn mib(field: &str) -> String {
    proc_status_mib(field).map_or_else(|| "n/a".into(), |m| format!("{m:.0} MiB"))
}

// ---------------------------------------------------------------------------
// The processor, the input and the sink.

/// A key's running figures, the processor's one state variable.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Running {
    sum: i64,
    count: i64,
}

/// An output row of [`RunningSum`], for [`ProcessorContext::emit`].
#[derive(serde::Serialize)]
struct Out {
    key: i64,
    sum: i64,
    count: i64,
}

/// The running sum and count per key: one `ValueState` per key, one output
/// row `(key, sum, count)` per key per batch, as the aggregation in update
/// mode. `batches`: returns the row as a one-row record batch (the
/// callback's return value) instead of [`ProcessorContext::emit`].
#[derive(Clone)]
struct RunningSum {
    running: ValueState<Running>,
    schema: SchemaRef,
    batches: bool,
}

impl RunningSum {
    fn new(batches: bool) -> Self {
        Self {
            batches,
            running: ValueState::new("running"),
            schema: Arc::new(Schema::new(vec![
                Field::new("key", DataType::Int64, false),
                Field::new("sum", DataType::Int64, false),
                Field::new("count", DataType::Int64, false),
            ])),
        }
    }
}

impl StatefulProcessor for RunningSum {
    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.running)
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        // One column of the key's rows, without building a batch of them.
        let values = rows.primitive::<Int64Type>("value")?;
        let mut running = self.running.get(ctx)?.unwrap_or_default();
        running.sum += values.values().iter().sum::<i64>();
        running.count += rows.num_rows() as i64;
        self.running.set(ctx, &running)?;
        if !self.batches {
            ctx.emit(&Out {
                key: key.primitive::<Int64Type>("key")?.ok_or("a null key")?,
                sum: running.sum,
                count: running.count,
            })?;
            return Ok(Vec::new());
        }
        // The key column as it comes (no decoding into a Rust value).
        let key = key.column("key").ok_or("no key column 'key'")?;
        Ok(vec![RecordBatch::try_new(
            Arc::clone(&self.schema),
            vec![
                Arc::clone(key),
                Arc::new(Int64Array::from(vec![running.sum])),
                Arc::new(Int64Array::from(vec![running.count])),
            ],
        )?])
    }
}

/// The engines of part 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// The built-in streaming aggregation.
    Aggregation,
    /// The processor, emitting its rows with `ProcessorContext::emit`.
    Processor,
    /// The processor, returning a one-row record batch per key.
    ProcessorBatches,
}

impl Engine {
    const ALL: [Engine; 3] = [Self::Aggregation, Self::Processor, Self::ProcessorBatches];

    fn name(self) -> &'static str {
        match self {
            Self::Aggregation => "aggregation",
            Self::Processor => "processor",
            Self::ProcessorBatches => "processor-batches",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The running sum and count per key over `df`, as `(key, sum, count)`.
    fn plan(self, df: DataFrame) -> tidemill::Result<DataFrame> {
        Ok(match self {
            Self::Aggregation => df.aggregate(
                vec![col("key")],
                vec![sum(col("value")).alias("sum"), count(lit(1)).alias("count")],
            )?,
            Self::Processor | Self::ProcessorBatches => df.transform_with_state(
                &["key"],
                RunningSum::new(self == Self::ProcessorBatches),
                TimeMode::None,
                OutputMode::Update,
            )?,
        })
    }
}

fn keyed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("value", DataType::Int64, false),
    ]))
}

fn keyed_batch(keys: Vec<i64>, values: Vec<i64>) -> anyhow::Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        keyed_schema(),
        vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(Int64Array::from(values)),
        ],
    )?)
}

/// Counts the rows of `(key, sum, count)` it is given; when tracking, also
/// keeps each key's last `(sum, count)` (keys `0..n`) and checks that no
/// batch emits a key twice. Nothing else is kept: the bench measures the
/// operators, not a sink holding millions of rows.
#[derive(Debug, Clone)]
struct OutputSink {
    rows: Arc<AtomicU64>,
    /// Per key: its last `(sum, count)` and the last batch that emitted it
    /// (plus one; 0: never).
    finals: Option<Arc<Mutex<Vec<(i64, i64, u64)>>>>,
}

impl OutputSink {
    fn counting() -> Self {
        Self {
            rows: Arc::default(),
            finals: None,
        }
    }

    fn tracking(keys: usize) -> Self {
        Self {
            rows: Arc::default(),
            finals: Some(Arc::new(Mutex::new(vec![(0, 0, 0); keys]))),
        }
    }

    fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// The last `(sum, count)` of each key (`(0, 0)` if never emitted).
    fn finals(&self) -> Vec<(i64, i64)> {
        let finals = self.finals.as_ref().expect("a tracking sink");
        let finals = finals.lock().unwrap();
        finals.iter().map(|&(s, c, _)| (s, c)).collect()
    }
}

/// Column `i` of `batch` as Int64 (cast only if it is not).
fn int64(batch: &RecordBatch, i: usize) -> tidemill::Result<ArrayRef> {
    let column = batch.column(i);
    if column.data_type() == &DataType::Int64 {
        return Ok(Arc::clone(column));
    }
    Ok(cast(column, &DataType::Int64).map_err(DataFusionError::from)?)
}

#[async_trait::async_trait]
impl Sink for OutputSink {
    fn description(&self) -> String {
        "OutputSink".into()
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        _schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> tidemill::Result<()> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        let Some(finals) = &self.finals else {
            return Ok(());
        };
        let mut finals = finals.lock().unwrap();
        let mark = batch_id + 1;
        for b in &batches {
            let (keys, sums, counts) = (int64(b, 0)?, int64(b, 1)?, int64(b, 2)?);
            let (keys, sums, counts) = (
                keys.as_primitive::<Int64Type>(),
                sums.as_primitive::<Int64Type>(),
                counts.as_primitive::<Int64Type>(),
            );
            let fail = |what: String| tidemill::TidemillError::Internal(what);
            if sums.null_count() > 0 || keys.null_count() > 0 {
                return Err(fail(format!("batch {batch_id}: a null key or sum")));
            }
            for i in 0..b.num_rows() {
                let key = keys.value(i);
                let slot = usize::try_from(key)
                    .ok()
                    .and_then(|k| finals.get_mut(k))
                    .ok_or_else(|| fail(format!("batch {batch_id}: key {key} out of range")))?;
                if slot.2 == mark {
                    return Err(fail(format!("batch {batch_id}: key {key} emitted twice")));
                }
                *slot = (sums.value(i), counts.value(i), mark);
            }
        }
        Ok(())
    }
}

/// A checksum of the per-key figures `(sum, count)` of keys `0..n`.
fn checksum(finals: &[(i64, i64)]) -> u64 {
    finals.iter().enumerate().fold(0u64, |acc, (k, &(s, c))| {
        let k = k as u64;
        acc.wrapping_add((s as u64).wrapping_mul(2 * k + 1))
            .wrapping_add((c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15 ^ k))
    })
}

async fn start(
    df: DataFrame,
    sink: &OutputSink,
    chk: &std::path::Path,
) -> anyhow::Result<StreamingQuery> {
    Ok(df
        .write_stream()
        .sink(sink.clone())
        .output_mode(OutputMode::Update)
        .checkpoint(chk.to_str().expect("a UTF-8 path"))
        .options(QueryOptions {
            progress_history: 10_000,
            ..Default::default()
        })
        .start()
        .await?)
}

// ---------------------------------------------------------------------------
// Child processes: every measured run starts from a fresh process, so that
// no run inherits the heap of an earlier, larger one.

/// Set in the child process that measures one run: `aggregation`,
/// `processor`, `processor-batches` or `state:<keys>`.
const CHILD_ENV: &str = "TIDEMILL_BENCH_CHILD";
/// The child's checkpoint directory.
const CHILD_CHECKPOINT_ENV: &str = "TIDEMILL_BENCH_CHECKPOINT";
/// Prefixes the line on which the child prints its run.
const CHILD_LINE: &str = "run: ";

/// Runs `what` in a child process of this bench (the same binary, with
/// [`CHILD_ENV`] set) and reads the run it prints.
fn run_isolated<T: DeserializeOwned>(
    config: &Config,
    what: &str,
    chk: &std::path::Path,
) -> anyhow::Result<T> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    if config.full {
        command.arg("--bench");
    }
    let output = command
        .env(CHILD_ENV, what)
        .env(CHILD_CHECKPOINT_ENV, chk)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "the {what} run failed ({}):\n{stdout}",
        output.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(CHILD_LINE))
        .ok_or_else(|| anyhow::anyhow!("the {what} run printed no result:\n{stdout}"))?;
    let run = serde_json::from_str(line)?;
    // Each run starts from a new state: free this one's files.
    if chk.exists() {
        std::fs::remove_dir_all(chk)?;
    }
    flush_file_writes();
    Ok(run)
}

/// In a child started by [`run_isolated`]: runs `what` and prints its run.
async fn child(config: &Config, what: &str) -> anyhow::Result<()> {
    let chk = std::env::var_os(CHILD_CHECKPOINT_ENV)
        .ok_or_else(|| anyhow::anyhow!("{CHILD_CHECKPOINT_ENV} is not set"))?;
    let chk = std::path::Path::new(&chk);
    let line = match (Engine::from_name(what), what.strip_prefix("state:")) {
        (Some(engine), _) => serde_json::to_string(&throughput_run(config, engine, chk).await?)?,
        (None, Some(keys)) => {
            let keys = keys
                .parse()
                .map_err(|e| anyhow::anyhow!("{CHILD_ENV}={what}: {e}"))?;
            serde_json::to_string(&state_run(config, keys, chk).await?)?
        }
        (None, None) => anyhow::bail!("{CHILD_ENV}={what}: not a run"),
    };
    println!("{CHILD_LINE}{line}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 1: throughput.

/// The input of part 1 and what it must give.
struct Workload {
    batches: Vec<RecordBatch>,
    /// Batches creating keys (the first ones).
    creating: usize,
    /// Per key: `(sum, count)` after the last batch.
    expected: Vec<(i64, i64)>,
    /// Output rows in update mode: the keys of each batch, summed.
    rows_out: u64,
}

fn throughput_workload(config: &Config) -> anyhow::Result<Workload> {
    let (keys, per_batch) = (config.keys, config.rows_per_batch);
    let creating = keys.div_ceil(per_batch);
    anyhow::ensure!(
        config.throughput_batches > creating,
        "{} batches of {per_batch} rows do not go past creating {keys} keys ({creating} batches)",
        config.throughput_batches
    );
    let mut rng = StdRng::seed_from_u64(42);
    let mut order: Vec<i64> = (0..keys as i64).collect();
    order.shuffle(&mut rng);
    let mut expected = vec![(0i64, 0i64); keys];
    let mut seen = vec![0u32; keys];
    let mut rows_out = 0u64;
    let mut batches = Vec::with_capacity(config.throughput_batches);
    for b in 0..config.throughput_batches {
        let batch_keys: Vec<i64> = if b < creating {
            order[b * per_batch..((b + 1) * per_batch).min(keys)].to_vec()
        } else {
            (0..per_batch)
                .map(|_| rng.random_range(0..keys as i64))
                .collect()
        };
        let values: Vec<i64> = (0..batch_keys.len())
            .map(|_| rng.random_range(0..100))
            .collect();
        for (&k, &v) in batch_keys.iter().zip(&values) {
            let k = k as usize;
            expected[k].0 += v;
            expected[k].1 += 1;
            if seen[k] != b as u32 + 1 {
                seen[k] = b as u32 + 1;
                rows_out += 1;
            }
        }
        batches.push(keyed_batch(batch_keys, values)?);
    }
    Ok(Workload {
        batches,
        creating,
        expected,
        rows_out,
    })
}

/// One run of part 1 (in a process of its own).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ThroughputRun {
    engine: String,
    rows: u64,
    creating: usize,
    /// Per batch: the progress's `trigger_execution`, and the wall time of
    /// pushing the batch and `process_all_available`.
    trigger_ms: Vec<f64>,
    wall_ms: Vec<f64>,
    /// ms per phase, summed over the batches ([`PHASES`]).
    phases: Vec<String>,
    rows_out: u64,
    checksum: u64,
    state_rows: u64,
    memory_bytes: u64,
    hwm: String,
}

impl ThroughputRun {
    fn seconds(&self) -> f64 {
        self.trigger_ms.iter().sum::<f64>() / 1000.0
    }

    fn wall_seconds(&self) -> f64 {
        self.wall_ms.iter().sum::<f64>() / 1000.0
    }

    fn rate(&self) -> f64 {
        self.rows as f64 / self.seconds()
    }

    /// Median ms per batch of the batches creating keys and of the others.
    fn medians(&self) -> (f64, f64) {
        let (mut create, mut update) = (
            self.trigger_ms[..self.creating].to_vec(),
            self.trigger_ms[self.creating..].to_vec(),
        );
        (median(&mut create), median(&mut update))
    }
}

async fn throughput_run(
    config: &Config,
    engine: Engine,
    chk: &std::path::Path,
) -> anyhow::Result<ThroughputRun> {
    let workload = throughput_workload(config)?;
    let rows: u64 = workload.batches.iter().map(|b| b.num_rows() as u64).sum();
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(keyed_schema());
    let sink = OutputSink::tracking(config.keys);
    let df = engine.plan(ctx.read_stream(stream.clone()).await?)?;
    let query = start(df, &sink, chk).await?;
    let mut wall_ms = Vec::with_capacity(workload.batches.len());
    for batch in workload.batches {
        let t = Instant::now();
        stream.push(batch)?;
        query.process_all_available().await?;
        wall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let progress: Vec<QueryProgress> = query
        .recent_progress()
        .into_iter()
        .filter(|p| p.num_input_rows > 0)
        .collect();
    query.stop().await?;
    drop(query);
    anyhow::ensure!(
        progress.len() == wall_ms.len(),
        "{}: expected {} batches, got {}",
        engine.name(),
        wall_ms.len(),
        progress.len()
    );
    let input: u64 = progress.iter().map(|p| p.num_input_rows).sum();
    anyhow::ensure!(
        input == rows,
        "{}: {input} input rows, pushed {rows}",
        engine.name()
    );
    anyhow::ensure!(
        sink.rows() == workload.rows_out,
        "{}: {} rows out, expected {} (each batch's keys once)",
        engine.name(),
        sink.rows(),
        workload.rows_out
    );
    let finals = sink.finals();
    if let Some(k) = (0..config.keys).find(|&k| finals[k] != workload.expected[k]) {
        anyhow::bail!(
            "{}: key {k} ends at (sum, count) {:?}, expected {:?}",
            engine.name(),
            finals[k],
            workload.expected[k]
        );
    }
    let last = &progress.last().expect("batches").state_operators[0];
    anyhow::ensure!(
        last.num_rows_total == config.keys as u64,
        "{}: state holds {} keys, expected {}",
        engine.name(),
        last.num_rows_total,
        config.keys
    );
    Ok(ThroughputRun {
        engine: engine.name().into(),
        rows,
        creating: workload.creating,
        trigger_ms: progress
            .iter()
            .map(|p| p.duration_ms.trigger_execution)
            .collect(),
        wall_ms,
        phases: phase_cells(&progress, total),
        rows_out: sink.rows(),
        checksum: checksum(&finals),
        state_rows: last.num_rows_total,
        memory_bytes: last.memory_used_bytes,
        hwm: mib("VmHWM"),
    })
}

async fn throughput(
    config: &Config,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let creating = config.keys.div_ceil(config.rows_per_batch);
    let workload = format!(
        "Throughput: a running sum and count per key over {} keys (Int64), {} batches of {} \
         rows (seed 42; the first {creating} create every key once in a random order, the rest \
         draw keys uniformly at random), update mode, MemoryStream, a sink keeping each key's \
         last (sum, count), local checkpoint. (a) built-in aggregation: aggregate([key], \
         [sum(value), count(1)]); (b) transform_with_state(&[\"key\"], RunningSum, \
         TimeMode::None, OutputMode::Update) with one ValueState<struct {{ sum: i64, count: \
         i64 }}> per key, emitting (key, sum, count) per key per batch with \
         ProcessorContext::emit; (c) for reference, the same processor returning a one-row \
         record batch per key. Every output is checked against the input's sums (rows out and \
         each key's final figures). Time = the batches' trigger_execution (the query's \
         progress), summed; {} runs of each engine, each in a process of its own, taking \
         turns to go first; the ratio is the median of the runs' ratios.",
        config.keys, config.throughput_batches, config.rows_per_batch, config.runs
    );
    println!("\n## Throughput\n\nworkload: {workload}");
    result.workload.push_str(&workload);
    // Per run, one run of each engine, in the order of `Engine::ALL`.
    let mut runs: Vec<Vec<ThroughputRun>> = Vec::new();
    for run in 1..=config.runs {
        // Each engine goes first in turn.
        let mut order = Engine::ALL;
        order.rotate_left((run - 1) % Engine::ALL.len());
        let mut got: Vec<(Engine, ThroughputRun)> = Vec::new();
        for engine in order {
            let chk = tmp.join(format!("chk-{}-{run}", engine.name()));
            let r: ThroughputRun = run_isolated(config, engine.name(), &chk)?;
            println!(
                "  run {run}, {}: {:.0} rows/s ({:.2} s)",
                r.engine,
                r.rate(),
                r.seconds()
            );
            got.push((engine, r));
        }
        got.sort_by_key(|(e, _)| Engine::ALL.iter().position(|a| a == e));
        let got: Vec<ThroughputRun> = got.into_iter().map(|(_, r)| r).collect();
        let a = &got[0];
        for r in &got[1..] {
            anyhow::ensure!(
                r.rows_out == a.rows_out && r.checksum == a.checksum,
                "run {run}: the aggregation gave {} rows (checksum {:x}), the {} {} (checksum \
                 {:x})",
                a.rows_out,
                a.checksum,
                r.engine,
                r.rows_out,
                r.checksum
            );
        }
        runs.push(got);
    }
    let mut rows = Vec::new();
    for (i, got) in runs.iter().enumerate() {
        for r in got {
            let (create, update) = r.medians();
            rows.push(vec![
                (i + 1).to_string(),
                r.engine.clone(),
                r.trigger_ms.len().to_string(),
                r.rows.to_string(),
                format!("{:.2}", r.seconds()),
                format!("{:.0}", r.rate()),
                format!("{:.3}", r.rate() / got[0].rate()),
                format!("{:.2}", r.wall_seconds()),
                format!("{:.0}", r.rows as f64 / r.wall_seconds()),
                format!("{create:.1}"),
                format!("{update:.1}"),
                r.rows_out.to_string(),
                format!("{:016x}", r.checksum),
                format!("{:.0}", r.memory_bytes as f64 / r.state_rows.max(1) as f64),
                r.hwm.clone(),
            ]);
        }
    }
    let table = Table::new(
        &format!(
            "Throughput, {} keys, {} batches of {} rows ({creating} creating the keys): \
             seconds = the batches' trigger_execution summed, wall = pushing each batch and \
             process_all_available; ms per batch = median over the creating batches and over \
             the others. processor: rows given to ProcessorContext::emit; processor-batches: \
             the same processor returning a one-row record batch per key:",
            config.keys, config.throughput_batches, config.rows_per_batch
        ),
        [
            "run",
            "engine",
            "batches",
            "input rows",
            "seconds",
            "rows/s",
            "vs aggregation",
            "wall s",
            "rows/s (wall)",
            "ms/batch creating",
            "ms/batch updating",
            "rows out",
            "checksum",
            "state bytes/key (memory_used_bytes)",
            "peak RSS",
        ],
        rows,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    // Per engine: its runs, and its median run's phases.
    let of = |i: usize| runs.iter().map(move |got| &got[i]);
    let mut phase_rows = Vec::new();
    for (i, engine) in Engine::ALL.into_iter().enumerate() {
        let mut sorted: Vec<&ThroughputRun> = of(i).collect();
        sorted.sort_by(|a, b| a.seconds().total_cmp(&b.seconds()));
        let r = sorted[sorted.len() / 2];
        let mut row = vec![engine.name().to_string()];
        row.extend(r.phases.iter().cloned());
        phase_rows.push(row);
    }
    let table = Table::new(
        "Where the median run's time goes: ms per phase, summed over its batches:",
        ["engine"].into_iter().chain(PHASES),
        phase_rows,
    );
    println!("\n{}", table.to_markdown());
    result.tables.push(table);
    let median_rate = |i: usize| median(&mut of(i).map(ThroughputRun::rate).collect::<Vec<_>>());
    for (i, engine) in Engine::ALL.into_iter().enumerate().skip(1) {
        let mut ratios: Vec<f64> = runs.iter().map(|g| g[i].rate() / g[0].rate()).collect();
        let per_run = ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ratio = median(&mut ratios);
        let note = format!(
            "{} {:.0} rows/s, aggregation {:.0} rows/s; per run: {per_run}",
            engine.name(),
            median_rate(i),
            median_rate(0)
        );
        let name = format!(
            "{}/aggregation rows/s, running sum over {} keys, median of {} runs",
            engine.name(),
            config.keys,
            config.runs
        );
        match engine {
            // The target is on the processor as it is meant to be used for
            // a row per key (`emit`).
            Engine::Processor => result
                .targets
                .push(Target::at_least(&name, ratio, 0.7, &note)),
            _ => result.notes.push(format!(
                "{name}: {ratio:.3} (for reference, no target; {note})."
            )),
        }
    }
    result.data["throughput"] = serde_json::json!(
        runs.iter()
            .enumerate()
            .flat_map(|(i, got)| got.iter().map(move |r| serde_json::json!({
                "run": i + 1, "engine": r.engine, "rows": r.rows, "seconds": r.seconds(),
                "rows_per_s": r.rate(), "wall_seconds": r.wall_seconds(),
                "trigger_ms": r.trigger_ms, "rows_out": r.rows_out,
                "checksum": format!("{:016x}", r.checksum),
                "memory_used_bytes": r.memory_bytes,
            })))
            .collect::<Vec<_>>()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 2: state scaling.

#[derive(serde::Serialize, serde::Deserialize)]
struct StateRun {
    keys: usize,
    build: Duration,
    median_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    p90_ms: f64,
    phases: Vec<String>,
    rows_total: u64,
    memory_bytes: u64,
    hwm: String,
    /// RSS growth while building the state, per key.
    rss_per_key: String,
    /// How long stopping the query (and dropping its state) took.
    stop: Duration,
}

/// Rows of `keys` with a value of each key modulo 7.
fn state_batch(keys: Vec<i64>) -> anyhow::Result<RecordBatch> {
    let values = keys.iter().map(|k| k % 7).collect();
    keyed_batch(keys, values)
}

async fn state_run(
    config: &Config,
    keys: usize,
    chk: &std::path::Path,
) -> anyhow::Result<StateRun> {
    let rss_before = proc_status_mib("VmRSS");
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(keyed_schema());
    let sink = OutputSink::counting();
    let df = Engine::Processor.plan(ctx.read_stream(stream.clone()).await?)?;
    let query = start(df, &sink, chk).await?;

    let run = keyed_state_run(
        query,
        &stream,
        keys,
        config.build_rows,
        config.batches,
        config.batch_rows,
        state_batch,
    )
    .await?;
    let (build, rss_built, progress, stop) = (run.build, run.rss_built, run.timed, run.stop);
    let last = &progress.last().expect("timed batches").state_operators[0];
    let mut times: Vec<f64> = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .collect();
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    let max_ms = times.iter().copied().fold(0.0, f64::max);
    let p90_ms = {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)]
    };
    Ok(StateRun {
        keys,
        build,
        median_ms: median(&mut times),
        mean_ms,
        max_ms,
        p90_ms,
        phases: phase_cells(&progress, median),
        rows_total: last.num_rows_total,
        memory_bytes: last.memory_used_bytes,
        hwm: mib("VmHWM"),
        // Below 100k keys the growth is lost in the allocator's noise.
        rss_per_key: match (rss_before, rss_built) {
            (Some(a), Some(b)) if keys >= 100_000 => {
                format!("{:.0}", (b - a) * 1048576.0 / keys as f64)
            }
            _ => "n/a".into(),
        },
        stop,
    })
}

async fn state_scaling(
    config: &Config,
    tmp: &std::path::Path,
    result: &mut BenchResult,
) -> anyhow::Result<()> {
    let workload = format!(
        "State scaling: the same processor (RunningSum, one ValueState per key), update mode, \
         MemoryStream, a sink counting rows, local checkpoint; the state is built with batches \
         of up to {} new keys (timed: build s) and the file system's writes flushed (`sync`), \
         then {} timed batches of {} rows (half random existing keys, half new keys); \
         per-batch time = the progress's trigger_execution; {} rounds, each size once per \
         round in a process of its own; the ratio is the median of the rounds' ratios.",
        config.build_rows, config.batches, config.batch_rows, config.state_rounds
    );
    println!("\n## State scaling\n\nworkload: {workload}");
    if !result.workload.is_empty() {
        result.workload.push(' ');
    }
    result.workload.push_str(&workload);
    let mut rows = Vec::new();
    let mut phase_rows = Vec::new();
    // Per round, its runs in the order of `config.state_keys`.
    let mut rounds: Vec<Vec<StateRun>> = Vec::new();
    for round in 1..=config.state_rounds {
        let mut runs = Vec::new();
        for (i, &keys) in config.state_keys.iter().enumerate() {
            let chk = tmp.join(format!("chk-state-{round}-{i}"));
            let run: StateRun = run_isolated(config, &format!("state:{keys}"), &chk)?;
            println!(
                "  round {round}, {keys} keys: built in {:.1} s, median {:.2} ms per batch",
                run.build.as_secs_f64(),
                run.median_ms
            );
            rows.push(vec![
                round.to_string(),
                run.keys.to_string(),
                format!("{:.1}", run.build.as_secs_f64()),
                format!("{:.0}", run.keys as f64 / run.build.as_secs_f64()),
                format!("{:.2}", run.median_ms),
                format!("{:.2}", run.mean_ms),
                format!("{:.2}", run.p90_ms),
                format!("{:.2}", run.max_ms),
                format!(
                    "{:.0}",
                    run.memory_bytes as f64 / run.rows_total.max(1) as f64
                ),
                run.rss_per_key.clone(),
                format!("{:.2}", run.stop.as_secs_f64()),
                run.hwm.clone(),
            ]);
            let mut row = vec![round.to_string(), run.keys.to_string()];
            row.extend(run.phases.iter().cloned());
            phase_rows.push(row);
            runs.push(run);
        }
        rounds.push(runs);
    }
    let tables = [
        Table::new(
            &format!(
                "Processor state scaling: {} timed batches of {} rows against the state size \
                 (each run is a process of its own, from a new state; peak RSS is its \
                 high-water mark):",
                config.batches, config.batch_rows
            ),
            [
                "round",
                "state keys",
                "build s",
                "build keys/s",
                "median ms/batch",
                "mean ms",
                "p90 ms",
                "max ms",
                "state bytes/key (memory_used_bytes)",
                "RSS growth/key while building",
                "stop s",
                "peak RSS of the run",
            ],
            rows,
        ),
        Table::new(
            "Median ms per phase of the timed batches:",
            ["round", "state keys"].into_iter().chain(PHASES),
            phase_rows,
        ),
    ];
    for table in tables {
        println!("\n{}", table.to_markdown());
        result.tables.push(table);
    }
    // Per round: the largest state's median over the smallest's.
    let medians: Vec<Vec<f64>> = rounds
        .iter()
        .map(|runs| runs.iter().map(|r| r.median_ms).collect())
        .collect();
    if let Some(runs) = rounds.first() {
        let (small, large) = (runs[0].keys, runs[runs.len() - 1].keys);
        result
            .targets
            .extend(Target::scaling(&medians, 1.5, |rounds_counted| {
                format!(
                    "processor per-batch time, {large} keys / {small} keys of state ({}-row \
                 batches), median over {} rounds",
                    config.batch_rows, rounds_counted
                )
            }));
    }
    result.data["state"] = serde_json::json!(
        rounds
            .iter()
            .enumerate()
            .flat_map(|(round, runs)| runs.iter().map(move |r| serde_json::json!({
                "round": round + 1, "keys": r.keys, "build_s": r.build.as_secs_f64(),
                "median_ms": r.median_ms, "mean_ms": r.mean_ms, "p90_ms": r.p90_ms,
                "max_ms": r.max_ms, "memory_used_bytes": r.memory_bytes,
                "rows_total": r.rows_total,
            })))
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` does not.
    let full = std::env::args().any(|a| a == "--bench");
    let config = Config::from_env(full);
    if let Ok(what) = std::env::var(CHILD_ENV) {
        return child(&config, &what).await;
    }
    let mut result = BenchResult::start(
        "processor",
        "Stateful processor: transformWithState vs the built-in aggregation, state scaling",
        "cargo bench --bench processor",
        config.full,
    );
    let tmp = tempfile::tempdir()?;
    if config.throughput {
        throughput(&config, tmp.path(), &mut result).await?;
    }
    if config.state {
        state_scaling(&config, tmp.path(), &mut result).await?;
    }
    result.finish(config.throughput && config.state)?;
    Ok(())
}
