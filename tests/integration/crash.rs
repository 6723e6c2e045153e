//! Crash tests: a pipeline runs in a child process (this test binary, run
//! again with the ignored `crash::crash_child` test as its entry point), is
//! killed with SIGKILL at each step of the micro-batch lifecycle and at
//! random moments, and restarted. The committed output must equal a single
//! clean run: no row lost, none duplicated.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{
    DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::prelude::*;
use rand::Rng;
use tidemill::engine::{Durability, QueryOptions};
use tidemill::prelude::*;
use tidemill::processor::{
    ExpiredTimer, GroupKey, KeyRows, ListState, MapState, ProcessorContext, ProcessorResult,
    StateDeclarations, StatefulProcessor, TimeMode, ValueState,
};

use crate::child::{self, Child, Event};
use crate::common::{events_schema, sorted_rows};

/// The pipeline under test, used for the streaming run and the batch
/// reference alike.
fn pipeline(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    df.filter(col("price").gt(lit(3.0)))?.select(vec![
        col("id"),
        col("symbol"),
        (col("price") * lit(2.0)).alias("doubled"),
    ])
}

/// The stateful pipeline under test: event time = id seconds, a 5-second
/// watermark, 10-second tumbling windows per symbol (append mode).
fn windowed(df: DataFrame) -> anyhow::Result<DataFrame> {
    let df = df
        .select(vec![
            col("symbol"),
            col("price"),
            cast(
                col("id") * lit(1000),
                DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .alias("event_time"),
        ])?
        .with_watermark("event_time", "5 seconds")?;
    Ok(child::ten_second_totals(df)?)
}

/// The deduplicating pipeline under test: ids in buckets of three
/// (`id / 3`), the first row of each bucket kept, across files and
/// batches (bucket 6 holds ids 18, 19 and 20 of two files).
fn deduplicated(df: DataFrame) -> anyhow::Result<DataFrame> {
    Ok(df
        .select(vec![(col("id") / lit(3_i64)).alias("bucket")])?
        .drop_duplicates(&["bucket"])?)
}

/// The joining pipeline under test: event time = id seconds, a 5-second
/// watermark, the rows deduplicated by symbol and event time, then joined
/// with themselves: each id with the next id of its symbol (ids three
/// apart), within 3 seconds. A batch runs three stateful operators (a
/// deduplication per side, then the join).
fn joined(df: DataFrame) -> anyhow::Result<DataFrame> {
    let timed = df
        .select(vec![
            col("id"),
            col("symbol"),
            cast(
                col("id") * lit(1000),
                DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .alias("event_time"),
        ])?
        .with_watermark("event_time", "5 seconds")?
        .drop_duplicates(&["symbol", "event_time"])?;
    let three = lit(datafusion::common::ScalarValue::new_interval_mdn(
        0,
        0,
        3_000_000_000,
    ));
    let (a, b) = (timed.clone().alias("a")?, timed.alias("b")?);
    Ok(a.join_on(
        b,
        datafusion::common::JoinType::Inner,
        [
            col("a.symbol").eq(col("b.symbol")),
            col("b.event_time").gt(col("a.event_time")),
            col("b.event_time").lt_eq(col("a.event_time") + three),
        ],
    )?
    .select(vec![
        col("a.id").alias("first"),
        col("b.id").alias("next"),
        col("a.symbol"),
    ])?)
}

/// The stateful processor pipeline under test: the windowed pipeline's
/// totals computed by a `transform_with_state` processor instead of an
/// aggregation (see [`TenSecondTotals`]).
fn processed(df: DataFrame) -> anyhow::Result<DataFrame> {
    Ok(df
        .select(vec![
            col("symbol"),
            col("price"),
            cast(
                col("id") * lit(1000),
                DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .alias("event_time"),
        ])?
        .with_watermark("event_time", "5 seconds")?
        .transform_with_state(
            &["symbol"],
            TenSecondTotals::default(),
            TimeMode::EventTime,
            OutputMode::Append,
        )?)
}

/// Per symbol, the open 10-second windows' row count and price sum (a map
/// by window start), the rows ever seen (a value) and the window starts
/// seen (a list); an event-time timer at each window's end emits its
/// totals (as [`child::ten_second_totals`] names them) and forgets it.
#[derive(Clone)]
struct TenSecondTotals {
    windows: MapState<i64, (i64, f64)>,
    rows: ValueState<i64>,
    starts: ListState<i64>,
}

impl Default for TenSecondTotals {
    fn default() -> Self {
        Self {
            windows: MapState::new("windows"),
            rows: ValueState::new("rows"),
            starts: ListState::new("starts"),
        }
    }
}

impl StatefulProcessor for TenSecondTotals {
    fn output_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("start", DataType::Int64, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("total", DataType::Float64, false),
        ]))
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.windows)?;
        states.declare(&self.rows)?;
        states.declare(&self.starts)
    }

    fn handle_input_rows(
        &mut self,
        _key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let prices = rows.column(1).as_primitive::<Float64Type>();
        let times = rows.column(2).as_primitive::<TimestampMillisecondType>();
        for (price, time) in prices.values().iter().zip(times.values()) {
            let start = time - time.rem_euclid(10_000);
            let (n, total) = self.windows.get(ctx, &start)?.unwrap_or((0, 0.0));
            if n == 0 {
                self.starts.append(ctx, &start)?;
                ctx.register_timer(start + 10_000)?;
            }
            self.windows.insert(ctx, &start, &(n + 1, total + price))?;
        }
        let seen = self.rows.get(ctx)?.unwrap_or(0);
        self.rows.set(ctx, &(seen + rows.num_rows() as i64))?;
        Ok(Vec::new())
    }

    fn handle_expired_timer(
        &mut self,
        key: &GroupKey,
        timer: ExpiredTimer,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let start = timer.time_ms - 10_000;
        let Some((n, total)) = self.windows.get(ctx, &start)? else {
            return Err(format!("no window at {start} for the timer at {}", timer.time_ms).into());
        };
        self.windows.remove(ctx, &start)?;
        let symbol: String = key.decode()?;
        Ok(vec![RecordBatch::try_new(
            self.output_schema(),
            vec![
                Arc::new(Int64Array::from(vec![start / 1000])),
                Arc::new(StringArray::from(vec![symbol])),
                Arc::new(Int64Array::from(vec![n])),
                Arc::new(Float64Array::from(vec![total])),
            ],
        )?])
    }
}

fn schema() -> SchemaRef {
    events_schema()
}

/// Which pipeline a crash test's child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipeline {
    Stateless,
    Windowed,
    Deduplicated,
    Joined,
    Processed,
}

impl Pipeline {
    const ENV: &'static str = "CRASH_PIPELINE";

    fn name(self) -> &'static str {
        match self {
            Pipeline::Stateless => "stateless",
            Pipeline::Windowed => "windowed",
            Pipeline::Deduplicated => "deduplicated",
            Pipeline::Joined => "joined",
            Pipeline::Processed => "processed",
        }
    }
}

/// The child process: runs the pipeline with `AvailableNow` over the
/// directories named in the environment, then exits.
#[tokio::test]
#[ignore = "entry point of the crash tests' child process, not a test by itself"]
async fn crash_child() -> anyhow::Result<()> {
    let (Ok(input), Ok(output), Ok(checkpoint)) = (
        std::env::var("CRASH_INPUT"),
        std::env::var("CRASH_OUTPUT"),
        std::env::var("CRASH_CHECKPOINT"),
    ) else {
        anyhow::bail!("run by the crash tests only");
    };
    let ctx = SessionContext::new();
    let source = FileSource::json(&input)
        .schema(schema())
        .max_files_per_trigger(1);
    let df = ctx.read_stream(source).await?;
    let df = match std::env::var(Pipeline::ENV).as_deref() {
        Ok("windowed") => windowed(df)?,
        Ok("deduplicated") => deduplicated(df)?,
        Ok("joined") => joined(df)?,
        Ok("processed") => processed(df)?,
        _ => pipeline(df)?,
    };
    let durability = match std::env::var(DURABILITY_ENV) {
        Ok(name) => name.parse().map_err(anyhow::Error::msg)?,
        Err(_) => Durability::Process,
    };
    let query = df
        .write_stream()
        .sink(ParquetSink::new(&output))
        .checkpoint(&checkpoint)
        .trigger(Trigger::AvailableNow)
        .options(QueryOptions {
            checkpoint_durability: durability,
            read_ahead: std::env::var(READ_AHEAD_ENV).is_ok_and(|v| v == "1"),
            ..QueryOptions::default()
        })
        .start()
        .await;
    child::report(query).await
}

/// The child's checkpoint durability (`process` or `machine`; default
/// process).
const DURABILITY_ENV: &str = "CRASH_DURABILITY";

/// Whether the child reads ahead (`1`; default not).
const READ_AHEAD_ENV: &str = "CRASH_READ_AHEAD";

struct Dirs {
    _tmp: tempfile::TempDir,
    /// The pipeline the child runs.
    pipeline: Pipeline,
    /// Its checkpoint durability.
    durability: Durability,
    /// Whether it begins each trigger while the batch before commits.
    read_ahead: bool,
    input: PathBuf,
    output: PathBuf,
    checkpoint: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        Self::with_pipeline(Pipeline::Stateless)
    }

    fn with_pipeline(pipeline: Pipeline) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        std::fs::create_dir_all(&input).unwrap();
        Self {
            pipeline,
            durability: Durability::Process,
            read_ahead: false,
            input,
            output: tmp.path().join("output"),
            checkpoint: tmp.path().join("checkpoint"),
            _tmp: tmp,
        }
    }
}

/// Writes input file `n` (20 events, ids 20n..20n+20) the way a careful
/// producer does: under a dot-name, then renamed into place. (The files
/// sink's crash tests use it too.)
pub(crate) fn write_input(dir: &Path, n: usize) {
    let mut text = String::new();
    for id in n * 20..n * 20 + 20 {
        let symbol = ["A", "B", "C"][id % 3];
        text.push_str(&format!(
            "{{\"id\": {id}, \"symbol\": \"{symbol}\", \"price\": {}}}\n",
            id as f64 * 1.5
        ));
    }
    let tmp = dir.join(format!(".part-{n:04}.json.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(format!("part-{n:04}.json"))).unwrap();
}

/// The child running the pipeline over `dirs`, stopping at `failpoint`.
fn child_command(dirs: &Dirs, failpoint: Option<&str>) -> Command {
    let mut cmd = child::command("crash::crash_child", failpoint);
    cmd.env("CRASH_INPUT", &dirs.input)
        .env("CRASH_OUTPUT", &dirs.output)
        .env("CRASH_CHECKPOINT", &dirs.checkpoint);
    cmd.env(Pipeline::ENV, dirs.pipeline.name());
    cmd.env(DURABILITY_ENV, dirs.durability.to_string());
    cmd.env(READ_AHEAD_ENV, if dirs.read_ahead { "1" } else { "0" });
    cmd
}

fn spawn_child(dirs: &Dirs, failpoint: Option<&str>) -> Child {
    Child::spawn(&mut child_command(dirs, failpoint))
}

/// Runs a child to completion and checks it finished cleanly.
fn run_to_completion(dirs: &Dirs) {
    Child::run_to_completion(&mut child_command(dirs, None));
}

async fn committed_rows(dirs: &Dirs) -> Vec<String> {
    let ctx = SessionContext::new();
    let df = ParquetSink::read_committed(&ctx, dirs.output.to_str().unwrap())
        .await
        .unwrap();
    sorted_rows(&df.collect().await.unwrap())
}

/// The reference: the same pipeline as a DataFusion batch job over all input.
async fn batch_rows(dirs: &Dirs) -> Vec<String> {
    let ctx = SessionContext::new();
    let schema = schema();
    let options = JsonReadOptions::default()
        .schema(&schema)
        .file_extension(".json");
    let df = ctx
        .read_json(dirs.input.to_str().unwrap(), options)
        .await
        .unwrap();
    match dirs.pipeline {
        Pipeline::Stateless => {
            return sorted_rows(&pipeline(df).unwrap().collect().await.unwrap());
        }
        Pipeline::Deduplicated => {
            return sorted_rows(&deduplicated(df).unwrap().collect().await.unwrap());
        }
        Pipeline::Joined => {
            return sorted_rows(&joined(df).unwrap().collect().await.unwrap());
        }
        Pipeline::Windowed | Pipeline::Processed => {}
    }
    // Append mode emits the windows the last watermark (the largest
    // event time less 5 s) has closed.
    let files = std::fs::read_dir(&dirs.input).unwrap().count() as i64;
    let watermark = files * 20 - 1 - 5;
    // The processor emits the same totals as the aggregation, by timers.
    let closed = windowed(df)
        .unwrap()
        .filter((col("start") + lit(10)).lt_eq(lit(watermark)))
        .unwrap();
    sorted_rows(&closed.collect().await.unwrap())
}

const POINTS: [&str; 9] = [
    "before_offset_log",
    "after_offset_log",
    "before_sink",
    "during_sink",
    "after_sink",
    "before_state_commit",
    "after_state_commit",
    "before_commit_log",
    "after_commit_log",
];

#[tokio::test]
async fn sigkill_at_each_step_of_a_batch_loses_and_duplicates_nothing() {
    sigkill_at_each_step_of_a_stateless_batch(Durability::Process, false).await;
}

/// Killed while the next batch is read and executed ahead (a stateless
/// query executes it before the batch's sink is done).
#[tokio::test]
async fn sigkill_at_each_step_while_reading_ahead_loses_and_duplicates_nothing() {
    sigkill_at_each_step_of_a_stateless_batch(Durability::Process, true).await;
}

/// With every file and directory fsynced before a write counts as done,
/// a killed process still loses and duplicates nothing (the staging files
/// a kill leaves behind are never read).
#[tokio::test]
async fn sigkill_at_each_step_with_machine_durability_loses_and_duplicates_nothing() {
    sigkill_at_each_step_of_a_stateless_batch(Durability::Machine, false).await;
}

async fn sigkill_at_each_step_of_a_stateless_batch(durability: Durability, read_ahead: bool) {
    for point in POINTS {
        let mut dirs = Dirs::new();
        dirs.durability = durability;
        dirs.read_ahead = read_ahead;
        for n in 0..4 {
            write_input(&dirs.input, n);
        }
        // Killed in the middle of batch 1 (of 4: one file per trigger).
        let mut child = spawn_child(&dirs, Some(&format!("{point}@1")));
        assert_eq!(child.wait_for_event(), Event::Failpoint, "{point}");
        child.kill();
        let partial = committed_rows(&dirs).await;
        // More input arrives before the restart.
        write_input(&dirs.input, 4);
        run_to_completion(&dirs);
        let expected = batch_rows(&dirs).await;
        assert_eq!(expected.len(), 97, "100 events less ids 0, 1, 2");
        assert!(
            partial.len() < expected.len(),
            "{point}: the kill interrupted the run"
        );
        assert_eq!(
            committed_rows(&dirs).await,
            expected,
            "{point}: output differs from a clean run"
        );
    }
}

/// Runs `pipeline` over four files, kills it at each step of its third
/// batch (with the state of batches 0 and 1 kept and some output already
/// emitted), adds a fifth file and restarts it: the output must be a clean
/// run's, `expected_rows` rows.
async fn kill_at_each_step_of_the_third_batch(pipeline: Pipeline, expected_rows: usize) {
    kill_at_each_step_of_the_third_batch_reading_ahead(pipeline, expected_rows, false).await;
}

/// [`kill_at_each_step_of_the_third_batch`], the child reading ahead or
/// not.
async fn kill_at_each_step_of_the_third_batch_reading_ahead(
    pipeline: Pipeline,
    expected_rows: usize,
    read_ahead: bool,
) {
    for point in POINTS {
        let mut dirs = Dirs::with_pipeline(pipeline);
        dirs.read_ahead = read_ahead;
        for n in 0..4 {
            write_input(&dirs.input, n);
        }
        let mut child = spawn_child(&dirs, Some(&format!("{point}@2")));
        assert_eq!(child.wait_for_event(), Event::Failpoint, "{point}");
        child.kill();
        let partial = committed_rows(&dirs).await;
        write_input(&dirs.input, 4);
        run_to_completion(&dirs);
        let expected = batch_rows(&dirs).await;
        assert_eq!(expected.len(), expected_rows, "{expected:#?}");
        assert!(partial.len() < expected.len(), "{point}: interrupted");
        assert_eq!(
            committed_rows(&dirs).await,
            expected,
            "{point}: output differs from a clean run"
        );
        // The state after the restart is a clean run's: the same rows in
        // every operator's stores.
        let clean = Dirs::with_pipeline(pipeline);
        for n in 0..5 {
            write_input(&clean.input, n);
        }
        run_to_completion(&clean);
        let clean_state = state_rows(&clean.checkpoint).await;
        assert!(
            clean_state.iter().any(|(_, _, rows)| *rows > 0),
            "{clean_state:?}"
        );
        assert_eq!(
            state_rows(&dirs.checkpoint).await,
            clean_state,
            "{point}: state differs from a clean run"
        );
        // Entry by entry, as the state reader decodes them (a join numbers
        // its stored rows in arrival order, which a re-run may change, so
        // its stores are compared by rows above only).
        if pipeline != Pipeline::Joined {
            assert_eq!(
                state_entries(&dirs.checkpoint).await,
                state_entries(&clean.checkpoint).await,
                "{point}: state entries differ from a clean run's"
            );
        }
    }
}

/// Every stateful operator's state entries at the last committed batch, as
/// `tidemill::read_state` decodes them: per store, its rows as text.
async fn state_entries(checkpoint: &Path) -> Vec<(usize, String, Vec<String>)> {
    let ctx = SessionContext::new();
    let location =
        tidemill::engine::Location::resolve(checkpoint.to_str().unwrap(), &ctx.runtime_env())
            .unwrap();
    let mut entries = Vec::new();
    for store in tidemill::state_stores(&location, None).await.unwrap() {
        let df = tidemill::read_state(&ctx, &location, store.operator, Some(&store.store), None)
            .await
            .unwrap();
        entries.push((
            store.operator,
            store.store,
            sorted_rows(&df.collect().await.unwrap()),
        ));
    }
    assert!(!entries.is_empty());
    entries
}

/// The rows of each stateful operator's stores (a join has two), as
/// `tidemill status` reads them from `checkpoint`.
async fn state_rows(checkpoint: &Path) -> Vec<(usize, Option<String>, u64)> {
    let report = tidemill::status::inspect(checkpoint, None).await.unwrap();
    report.queries[0]
        .operators
        .iter()
        .flat_map(|o| o.stores.iter().map(|s| (o.number, s.side.clone(), s.rows)))
        .collect()
}

#[tokio::test]
async fn sigkill_at_each_step_of_a_stateful_batch_loses_and_duplicates_nothing() {
    // Windows [0, 10) .. [80, 90) closed, three symbols each.
    kill_at_each_step_of_the_third_batch(Pipeline::Windowed, 27).await;
}

/// The same, the child reading ahead: the next batch is asked for and
/// read while the state commits (it executes only after).
#[tokio::test]
async fn sigkill_at_each_step_of_a_stateful_batch_reading_ahead_loses_and_duplicates_nothing() {
    kill_at_each_step_of_the_third_batch_reading_ahead(Pipeline::Windowed, 27, true).await;
}

/// A bucket spans two files, so one of its rows is dropped in a later
/// batch than its first.
#[tokio::test]
async fn sigkill_at_each_step_of_a_deduplicating_batch_loses_and_duplicates_nothing() {
    // Ids 0..100 in buckets of three.
    kill_at_each_step_of_the_third_batch(Pipeline::Deduplicated, 34).await;
}

/// A batch that deduplicates and joins: each pair of a clean run once.
#[tokio::test]
async fn sigkill_at_each_step_of_a_joining_batch_loses_and_duplicates_nothing() {
    // Ids 0..100, each with the id three after it (97 pairs).
    kill_at_each_step_of_the_third_batch(Pipeline::Joined, 97).await;
}

/// A batch whose stateful processor updates its map, value and list
/// variables, registers timers and fires them: each window's totals once,
/// and after the restart every variable's and the timers' store holds a
/// clean run's rows.
#[tokio::test]
async fn sigkill_at_each_step_of_a_stateful_processor_batch_loses_and_duplicates_nothing() {
    // The windowed pipeline's 27 windows, emitted by timers.
    kill_at_each_step_of_the_third_batch(Pipeline::Processed, 27).await;
}

#[tokio::test]
async fn randomized_kills_lose_and_duplicate_nothing() {
    let (seed, mut rng) = child::seeded_rng();
    // The pipelines take turns between runs.
    let pipelines = [
        Pipeline::Stateless,
        Pipeline::Windowed,
        Pipeline::Deduplicated,
        Pipeline::Joined,
        Pipeline::Processed,
    ];
    let mut dirs = Dirs::with_pipeline(pipelines[(seed % 5) as usize]);
    // And the durability settings, and reading ahead or not.
    dirs.durability = [Durability::Process, Durability::Machine][(seed / 5 % 2) as usize];
    dirs.read_ahead = seed / 10 % 2 == 1;
    println!(
        "{:?}, {} durability, read ahead {}",
        dirs.pipeline, dirs.durability, dirs.read_ahead
    );
    let mut files = 0;
    for _ in 0..10 {
        for _ in 0..rng.random_range(0..3) {
            write_input(&dirs.input, files);
            files += 1;
        }
        let mut child = if rng.random_bool(0.5) {
            let point = POINTS[rng.random_range(0..POINTS.len())];
            let batch = rng.random_range(0..files.max(1) as u64 + 1);
            spawn_child(&dirs, Some(&format!("{point}@{batch}")))
        } else {
            let child = spawn_child(&dirs, None);
            std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
            child
        };
        // Kill it wherever it is (it may also have finished already).
        child.kill();
    }
    write_input(&dirs.input, files);
    run_to_completion(&dirs);
    assert_eq!(
        committed_rows(&dirs).await,
        batch_rows(&dirs).await,
        "seed {seed}: output differs from a clean run"
    );
}

/// What `machine` durability adds, observed: every offset and commit log
/// entry, sink data file and manifest entry written is fsynced (the file,
/// then its directory), and `process` durability fsyncs nothing. Both give
/// the same output. (In this process; the crash tests' children run with
/// each setting in processes of their own.)
#[tokio::test]
async fn machine_durability_fsyncs_each_file_written_and_process_durability_none() {
    async fn run(durability: Durability) -> (Dirs, u64) {
        let mut dirs = Dirs::new();
        dirs.durability = durability;
        for n in 0..3 {
            write_input(&dirs.input, n);
        }
        let before = tidemill::state::durable::sync_calls();
        let ctx = SessionContext::new();
        let source = FileSource::json(dirs.input.to_str().unwrap())
            .schema(schema())
            .max_files_per_trigger(1);
        let query = pipeline(ctx.read_stream(source).await.unwrap())
            .unwrap()
            .write_stream()
            .sink(ParquetSink::new(dirs.output.to_str().unwrap()))
            .checkpoint(dirs.checkpoint.to_str().unwrap())
            .trigger(Trigger::AvailableNow)
            .options(QueryOptions {
                checkpoint_durability: durability,
                ..QueryOptions::default()
            })
            .start()
            .await
            .unwrap();
        query.await_termination().await.unwrap();
        let syncs = tidemill::state::durable::sync_calls() - before;
        (dirs, syncs)
    }
    /// Regular files under `dir`, recursively.
    fn files(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().path())
                    .map(|p| if p.is_dir() { files(&p) } else { 1 })
                    .sum()
            })
            .unwrap_or(0)
    }

    let (process, process_syncs) = run(Durability::Process).await;
    assert_eq!(process_syncs, 0, "process durability fsyncs nothing");
    let (machine, machine_syncs) = run(Durability::Machine).await;
    let written = files(&machine.checkpoint.join("offsets"))
        + files(&machine.checkpoint.join("commits"))
        + files(&machine.output);
    assert!(
        written >= 9,
        "three batches: offsets, commits and sink files"
    );
    assert!(
        machine_syncs >= 2 * written,
        "{machine_syncs} fsyncs for {written} files written"
    );
    // No staging file is left behind, and the output is the same.
    let staged = |dir: &Path| {
        walk(dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains('#'))
            .collect::<Vec<_>>()
    };
    assert!(staged(&machine.checkpoint).is_empty() && staged(&machine.output).is_empty());
    assert_eq!(
        committed_rows(&machine).await,
        committed_rows(&process).await
    );
    assert_eq!(
        committed_rows(&machine).await.len(),
        57,
        "60 events less ids 0, 1, 2"
    );
}

/// Every path under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_second_process_is_refused_while_the_first_holds_the_checkpoint() {
    let dirs = Dirs::new();
    write_input(&dirs.input, 0);
    // The first child stops (alive) in the middle of batch 0.
    let mut first = spawn_child(&dirs, Some("after_offset_log@0"));
    assert_eq!(first.wait_for_event(), Event::Failpoint);
    let mut second = spawn_child(&dirs, None);
    assert_eq!(second.wait_for_event(), Event::Refused);
    second.wait();
    // A dead holder never blocks a restart.
    first.kill();
    run_to_completion(&dirs);
    assert_eq!(committed_rows(&dirs).await, batch_rows(&dirs).await);
}
