//! The trigger-interval study: per trigger interval, latency, throughput and
//! CPU at fixed input rates, and the maximum sustainable rate.

use std::collections::BTreeMap;
use std::error::Error;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::{DataFrame, SessionContext};
use serde::{Deserialize, Serialize};
use tidemill_engine::{
    OutputMode, PhaseDurations, QueryOptions, QueryProgress, Sink, Source, StreamingContext,
    StreamingDataFrame, Trigger,
};

use crate::histogram::{LatencyHistogram, LatencySummary};
use crate::machine::{Machine, cpu_time};
use crate::sink::{CommitRecord, DiscardSink, TimingSink};
use crate::source::{Clock, RowGenerator, RunShared, StudySource};
use crate::trades::TradeGenerator;

/// A pipeline under study: a function from the source's DataFrame to the
/// DataFrame to run, as a user writes for batch and stream alike.
pub type PlanFn = Arc<dyn Fn(DataFrame) -> anyhow::Result<DataFrame> + Send + Sync>;

/// The future of a [`SourcesPlanFn`].
pub type PlanFuture = Pin<Box<dyn Future<Output = anyhow::Result<DataFrame>> + Send>>;

/// A pipeline over several streams: given a fresh session and the run's
/// sources (one per stream, in the order of
/// [`StudyPipeline::with_streams`]), the DataFrame to run.
pub type SourcesPlanFn =
    Arc<dyn Fn(SessionContext, Vec<Arc<dyn Source>>) -> PlanFuture + Send + Sync>;

/// Makes the sink of one run, given a fresh directory the run may use.
pub type SinkFactory = Arc<dyn Fn(&Path) -> anyhow::Result<Arc<dyn Sink>> + Send + Sync>;

/// What a pipeline runs.
#[derive(Clone)]
enum Plan {
    /// A DataFrame function over the study's one stream of stamped rows.
    Frame(PlanFn),
    /// A plan over its own streams, whose rows are not stamped.
    Sources {
        streams: Vec<Arc<dyn RowGenerator>>,
        plan: SourcesPlanFn,
    },
}

/// A named pipeline and how its output is written.
#[derive(Clone)]
pub struct StudyPipeline {
    name: String,
    plan: Plan,
    output_mode: OutputMode,
    key_columns: Option<Vec<String>>,
    sink: Option<SinkFactory>,
}

impl std::fmt::Debug for StudyPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StudyPipeline")
            .field("name", &self.name)
            .field("output_mode", &self.output_mode)
            .field("key_columns", &self.key_columns)
            .finish_non_exhaustive()
    }
}

impl StudyPipeline {
    /// A pipeline named `name` (append mode). `plan` receives the study
    /// source's DataFrame: the generator's columns plus
    /// [`AVAILABLE_AT`](crate::AVAILABLE_AT).
    pub fn new<F, E>(name: &str, plan: F) -> Self
    where
        F: Fn(DataFrame) -> Result<DataFrame, E> + Send + Sync + 'static,
        E: Into<Box<dyn Error + Send + Sync>>,
    {
        Self {
            name: name.into(),
            plan: Plan::Frame(Arc::new(move |df| {
                plan(df).map_err(|e| anyhow::anyhow!("the plan failed: {}", e.into()))
            })),
            output_mode: OutputMode::Append,
            key_columns: None,
            sink: None,
        }
    }

    /// A pipeline named `name` that reads its own `streams` (the study's
    /// generator is not used): each run makes one source per stream, all
    /// driven by the run's clock at its input rate (row `i` of every stream
    /// becomes available at the same instant), and `plan` builds the query
    /// from them in a fresh session. The rows are the generators' columns
    /// only (no [`AVAILABLE_AT`](crate::AVAILABLE_AT)); a row counts as
    /// read once every stream the query opened has read it. Such a
    /// pipeline cannot be [verified](TriggerStudy::verify).
    pub fn with_streams<F>(name: &str, streams: Vec<Arc<dyn RowGenerator>>, plan: F) -> Self
    where
        F: Fn(SessionContext, Vec<Arc<dyn Source>>) -> PlanFuture + Send + Sync + 'static,
    {
        Self {
            name: name.into(),
            plan: Plan::Sources {
                streams,
                plan: Arc::new(plan),
            },
            output_mode: OutputMode::Append,
            key_columns: None,
            sink: None,
        }
    }

    /// This pipeline's sink, instead of the study's
    /// ([`TriggerStudy::sink`]): made per run from a fresh directory.
    pub fn sink<F>(mut self, factory: F) -> Self
    where
        F: Fn(&Path) -> anyhow::Result<Arc<dyn Sink>> + Send + Sync + 'static,
    {
        self.sink = Some(Arc::new(factory));
        self
    }

    /// The output mode (default append). The study attributes every input
    /// row to the batch that read it, which is where its result is
    /// committed for stateless plans and for aggregations in update or
    /// complete mode; for append-mode aggregations see
    /// [`TriggerStudy::latency_from_column`].
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.output_mode = mode;
        self
    }

    /// For [`TriggerStudy::verify`] in update or complete mode: the
    /// columns identifying a result row (the last version of each key is
    /// compared with the batch job's row).
    pub fn key_columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.key_columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How the maximum sustainable rate is searched: from `start` rows/s,
/// doubling while the query keeps up, then bisecting (geometrically)
/// between the last rate it kept up with and the first it did not, until
/// they are within `precision` of each other. A rate counts as not kept up
/// with only when a second trial at it fails too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateSearch {
    /// The first rate tried (rows/s).
    pub start: u64,
    /// The highest rate tried.
    pub max: u64,
    /// The lowest rate tried.
    pub min: u64,
    /// Each trial's length (at least the warm-up plus 12 intervals).
    pub run_for: Duration,
    /// Stop when `first failing / last sustained ≤ precision`.
    pub precision: f64,
    /// At most this many rates tried per interval (each one or two
    /// trials).
    pub max_runs: usize,
}

impl Default for RateSearch {
    fn default() -> Self {
        Self {
            start: 25_000,
            max: 100_000_000,
            min: 100,
            run_for: Duration::from_secs(6),
            precision: 1.15,
            max_runs: 14,
        }
    }
}

/// The trigger-interval study of one or more pipelines.
///
/// For each pipeline, trigger interval and input rate, the study runs the
/// pipeline as a streaming query (`Trigger::ProcessingTime(interval)`, a
/// local checkpoint, the sink of [`TriggerStudy::sink`]) over a source
/// whose row `i` becomes available at `start + (i + 1) / rate` and carries
/// that instant in the [`AVAILABLE_AT`](crate::AVAILABLE_AT) column. The
/// sink is wrapped to record when each batch's `add_batch` returned; a
/// row's **latency** is that instant minus the row's availability instant,
/// for the batch that read the row. After a warm-up, the study reports
/// latency percentiles, batches/s, the rows/s committed, the CPU time per
/// million rows (`getrusage`, the whole process) and whether the query
/// **kept up**: its backlog (rows available but not committed) did not
/// grow over the run (the largest backlog in the last third of the
/// measured time is at most the largest in the middle third plus
/// max(50 ms, interval / 4) of input) and the backlog at the end is under
/// 1 s + 2 intervals of input. The **maximum sustainable rate** per
/// interval is the highest rate that keeps up, found by [`RateSearch`].
///
/// ```no_run
/// use std::time::Duration;
/// use datafusion::prelude::*;
/// use tidemill_harness::{StudyPipeline, TriggerStudy};
///
/// # async fn demo() -> anyhow::Result<()> {
/// // Your plan, over the default trade rows (symbol, exchange, price,
/// // quantity, event_time, available_at).
/// let study = TriggerStudy::new()
///     .pipeline(StudyPipeline::new("big trades", |df: DataFrame| {
///         df.filter(col("quantity").gt(lit(900i64)))
///     }))
///     .intervals([Duration::ZERO, Duration::from_millis(100), Duration::from_secs(1)])
///     .rates([10_000]);
/// let report = study.run().await?;
/// println!("{}", report.to_markdown());
/// report.write_to(std::path::Path::new("target/my-study"))?; // study.{md,json,svg}
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TriggerStudy {
    pipelines: Vec<StudyPipeline>,
    intervals: Vec<Duration>,
    rates: Vec<u64>,
    run_for: Duration,
    warmup: Duration,
    drain_timeout: Duration,
    search: Option<RateSearch>,
    generator: Arc<dyn RowGenerator>,
    sink: SinkFactory,
    options: QueryOptions,
    verify: bool,
    stamp_column: Option<String>,
    max_rows_per_trigger: Option<u64>,
    work_dir: Option<PathBuf>,
    log: bool,
}

impl Default for TriggerStudy {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TriggerStudy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerStudy")
            .field("pipelines", &self.pipelines)
            .field("intervals", &self.intervals)
            .field("rates", &self.rates)
            .field("run_for", &self.run_for)
            .field("search", &self.search)
            .finish_non_exhaustive()
    }
}

/// The intervals of the standard study: 0, 10 ms, 50 ms, 100 ms, 500 ms, 1 s.
pub fn standard_intervals() -> Vec<Duration> {
    [0, 10, 50, 100, 500, 1000]
        .into_iter()
        .map(Duration::from_millis)
        .collect()
}

impl TriggerStudy {
    /// A study with no pipeline yet; the standard intervals, one input rate
    /// of 10 000 rows/s, 10 s runs after a 1 s warm-up, the default rate
    /// search, [`TradeGenerator`] rows and a [`DiscardSink`].
    pub fn new() -> Self {
        Self {
            pipelines: Vec::new(),
            intervals: standard_intervals(),
            rates: vec![10_000],
            run_for: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
            search: Some(RateSearch::default()),
            generator: Arc::new(TradeGenerator::default()),
            sink: Arc::new(|_: &Path| Ok(Arc::new(DiscardSink) as Arc<dyn Sink>)),
            options: QueryOptions::default(),
            verify: false,
            stamp_column: None,
            max_rows_per_trigger: None,
            work_dir: None,
            log: true,
        }
    }

    /// Adds a pipeline.
    pub fn pipeline(mut self, pipeline: StudyPipeline) -> Self {
        self.pipelines.push(pipeline);
        self
    }

    /// The trigger intervals (`Duration::ZERO`: back to back).
    pub fn intervals(mut self, intervals: impl IntoIterator<Item = Duration>) -> Self {
        self.intervals = intervals.into_iter().collect();
        self
    }

    /// The input rates (rows/s) at which latency is measured.
    pub fn rates(mut self, rates: impl IntoIterator<Item = u64>) -> Self {
        self.rates = rates.into_iter().collect();
        self
    }

    /// How long rows are generated in each fixed-rate run (including the
    /// warm-up).
    pub fn run_for(mut self, duration: Duration) -> Self {
        self.run_for = duration;
        self
    }

    /// The start of each run left out of the figures (first batches plan
    /// and allocate).
    pub fn warmup(mut self, warmup: Duration) -> Self {
        self.warmup = warmup;
        self
    }

    /// How long a fixed-rate run may take after the input ends to commit
    /// the rest (default 5 s); rows still uncommitted then are reported.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How the maximum sustainable rate is searched.
    pub fn max_rate_search(mut self, search: RateSearch) -> Self {
        self.search = Some(search);
        self
    }

    /// Skips the maximum-rate search.
    pub fn no_max_rate_search(mut self) -> Self {
        self.search = None;
        self
    }

    /// The rows of the source (default [`TradeGenerator`]).
    pub fn generator(mut self, generator: impl RowGenerator) -> Self {
        self.generator = Arc::new(generator);
        self
    }

    /// The sink of each run, made from a fresh directory per run (default:
    /// [`DiscardSink`]). E.g. `|dir| Arc::new(ParquetSink::new(dir.to_str().unwrap()))`.
    pub fn sink<F>(mut self, factory: F) -> Self
    where
        F: Fn(&Path) -> Arc<dyn Sink> + Send + Sync + 'static,
    {
        self.sink = Arc::new(move |dir: &Path| Ok(factory(dir)));
        self
    }

    /// The queries' options (default: the engine's defaults).
    pub fn query_options(mut self, options: QueryOptions) -> Self {
        self.options = options;
        self
    }

    /// Admits at most `n` rows per micro-batch.
    pub fn max_rows_per_trigger(mut self, n: u64) -> Self {
        self.max_rows_per_trigger = Some(n);
        self
    }

    /// Checks each fixed-rate run's output against the same plan run as a
    /// DataFusion batch job over the same rows (keeps every output row in
    /// memory: for small runs). Stateless plans compare all rows;
    /// update/complete mode compares the last version of each key (see
    /// [`StudyPipeline::key_columns`]). Floats are compared to 7 significant
    /// digits.
    pub fn verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Also measures latency from a timestamp column of the *output*
    /// (commit instant − the column's value, per output row), for plans
    /// whose rows are not committed by the batch that read them (append
    /// mode aggregations: carry e.g. `max(available_at)` per group).
    pub fn latency_from_column(mut self, column: &str) -> Self {
        self.stamp_column = Some(column.into());
        self
    }

    /// Where the runs' checkpoints and sink directories go (default: a
    /// temporary directory, deleted afterwards).
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Whether to print one line per run to stderr (default true).
    pub fn log(mut self, log: bool) -> Self {
        self.log = log;
        self
    }

    /// Runs the study: for each pipeline and interval, a run per input
    /// rate, then the maximum-rate search.
    pub async fn run(&self) -> anyhow::Result<StudyReport> {
        anyhow::ensure!(!self.pipelines.is_empty(), "the study has no pipeline");
        anyhow::ensure!(
            self.run_for > self.warmup,
            "run_for must be longer than the warm-up"
        );
        let tmp;
        let work = match &self.work_dir {
            Some(dir) => dir.clone(),
            None => {
                tmp = tempfile::tempdir()?;
                tmp.path().to_path_buf()
            }
        };
        std::fs::create_dir_all(&work)?;
        let load_at_start = crate::machine::load_average();
        let mut runs = Vec::new();
        let mut max_rates = Vec::new();
        let mut n = 0usize;
        for pipeline in &self.pipelines {
            for &interval in &self.intervals {
                for &rate in &self.rates {
                    n += 1;
                    let dir = work.join(format!("run-{n}"));
                    let run = self
                        .run_once(
                            pipeline,
                            interval,
                            rate,
                            self.run_for,
                            true,
                            self.verify,
                            &dir,
                        )
                        .await?;
                    if self.log {
                        eprintln!("{}", run.summary());
                    }
                    runs.push(run);
                    let _ = std::fs::remove_dir_all(&dir);
                }
                if let Some(search) = &self.search {
                    let found = self
                        .search_max_rate(pipeline, interval, search, &work, &mut n)
                        .await?;
                    if self.log {
                        eprintln!(
                            "{} @ {}: max sustainable rate {} rows/s{}",
                            pipeline.name,
                            format_interval(interval),
                            found.max_rows_per_s,
                            if found.capped {
                                " (the search's cap)"
                            } else {
                                ""
                            }
                        );
                    }
                    max_rates.push(found);
                }
            }
        }
        Ok(StudyReport {
            machine: Machine::current(),
            load_at_start,
            generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            settings: StudySettings {
                pipelines: self
                    .pipelines
                    .iter()
                    .map(|p| format!("{} ({} mode)", p.name, p.output_mode))
                    .collect(),
                intervals_ms: self.intervals.iter().map(|d| ms(*d)).collect(),
                rates: self.rates.clone(),
                run_for_s: self.run_for.as_secs_f64(),
                warmup_s: self.warmup.as_secs_f64(),
                search: self.search.clone(),
                generator: format!("{:?}", self.generator).chars().take(120).collect(),
            },
            recommendations: Recommendation::from_runs(&runs),
            runs,
            max_rates,
        })
    }

    async fn search_max_rate(
        &self,
        pipeline: &StudyPipeline,
        interval: Duration,
        search: &RateSearch,
        work: &Path,
        n: &mut usize,
    ) -> anyhow::Result<MaxRate> {
        let run_for = search.run_for.max(self.warmup + interval * 12);
        let mut steps = Vec::new();
        let (mut good, mut bad): (Option<u64>, Option<u64>) = (None, None);
        let mut rate = search.start.clamp(search.min, search.max);
        for _ in 0..search.max_runs {
            // A rate fails only if a second run at it fails too: on a
            // shared machine one slow spell (another process, a burst of
            // file deletes) can fail a run whose rate the query sustains.
            let mut kept_up = false;
            for _attempt in 0..2 {
                *n += 1;
                let dir = work.join(format!("run-{n}"));
                let run = self
                    .run_once(pipeline, interval, rate, run_for, false, false, &dir)
                    .await?;
                let _ = std::fs::remove_dir_all(&dir);
                if self.log {
                    eprintln!("  search: {}", run.summary());
                }
                steps.push(SearchStep {
                    rate,
                    kept_up: run.kept_up,
                    sustained_rows_per_s: run.sustained_rows_per_s,
                    lag_end_s: run.lag_end_s,
                });
                kept_up = run.kept_up;
                if kept_up {
                    break;
                }
            }
            if kept_up {
                good = Some(good.map_or(rate, |g| g.max(rate)));
            } else {
                bad = Some(bad.map_or(rate, |b| b.min(rate)));
            }
            rate = match (good, bad) {
                (Some(g), None) if g >= search.max => break,
                (Some(g), None) => (g * 2).min(search.max),
                (None, Some(b)) if b <= search.min => break,
                (None, Some(b)) => (b / 2).max(search.min),
                (Some(g), Some(b)) => {
                    if b as f64 / g as f64 <= search.precision {
                        break;
                    }
                    ((g as f64 * b as f64).sqrt().round() as u64).clamp(g + 1, b - 1)
                }
                (None, None) => unreachable!(),
            };
        }
        Ok(MaxRate {
            pipeline: pipeline.name.clone(),
            interval_ms: ms(interval),
            max_rows_per_s: good.unwrap_or(0),
            capped: good.is_some_and(|g| g >= search.max),
            first_failing_rows_per_s: bad,
            steps,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_once(
        &self,
        pipeline: &StudyPipeline,
        interval: Duration,
        rate: u64,
        run_for: Duration,
        drain: bool,
        verify: bool,
        dir: &Path,
    ) -> anyhow::Result<RunResult> {
        anyhow::ensure!(rate > 0, "input rate must be at least 1 row/s");
        std::fs::create_dir_all(dir)?;
        let total = (rate as f64 * run_for.as_secs_f64()).floor() as u64;
        let clock = Clock::new(rate as f64, total);
        let shared = Arc::new(match &pipeline.plan {
            Plan::Frame(_) => RunShared::new(vec![Arc::clone(&self.generator)], true, clock),
            Plan::Sources { streams, .. } => RunShared::new(streams.clone(), false, clock),
        });
        let sources: Vec<StudySource> = (0..shared.streams.len())
            .map(|stream| StudySource {
                shared: Arc::clone(&shared),
                stream,
                max_rows_per_trigger: self.max_rows_per_trigger,
            })
            .collect();
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir)?;
        let sink = pipeline.sink.as_ref().unwrap_or(&self.sink);
        let timing = Arc::new(TimingSink::new(
            sink(&out_dir)?,
            Arc::clone(&shared),
            verify,
            self.stamp_column.clone(),
        ));
        let ctx = SessionContext::new();
        let df = match &pipeline.plan {
            Plan::Frame(plan) => {
                let source = sources.into_iter().next().expect("one stream");
                plan(ctx.read_stream(source).await?)?
            }
            Plan::Sources { plan, .. } => {
                let sources = sources
                    .into_iter()
                    .map(|s| Arc::new(s) as Arc<dyn Source>)
                    .collect();
                plan(ctx, sources).await?
            }
        };
        let mut options = self.options.clone();
        // Enough history for the phases of every batch after the warm-up.
        options.progress_history = options.progress_history.max(100_000);
        let query = df
            .write_stream()
            .sink_arc(Arc::clone(&timing) as Arc<dyn Sink>)
            .output_mode(pipeline.output_mode)
            .trigger(Trigger::ProcessingTime(interval))
            .checkpoint(dir.join("checkpoint").display().to_string())
            .query_name(pipeline.name.clone())
            .options(options)
            .start()
            .await?;

        // The clock starts at the query's first look at the source.
        let t0 = loop {
            if let Some((t0, _)) = shared.clock.started() {
                break t0;
            }
            if !query.is_active() {
                query.await_termination().await?;
                anyhow::bail!("the query stopped before reading its source");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let until = |d: Duration| tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + d));
        let warmup = self.warmup.min(run_for / 2);
        until(warmup).await;
        let (cpu0, rows0) = (cpu_time(), timing.committed_rows());
        until(run_for).await;
        let mut drained = timing.committed_rows() >= total;
        if drain {
            let deadline = Instant::now() + self.drain_timeout.max(interval * 3);
            while !drained && Instant::now() < deadline && query.is_active() {
                tokio::time::sleep(Duration::from_millis(1)).await;
                drained = timing.committed_rows() >= total;
            }
        }
        let wall_end = t0.elapsed();
        let (cpu1, rows1) = (cpu_time(), timing.committed_rows());
        query.stop().await?;

        let commits = timing.commits();
        let progress = query.recent_progress();
        let phases_ms = mean_phases(&progress, &commits, warmup);
        let late_rows_dropped = progress
            .iter()
            .flat_map(|p| &p.state_operators)
            .map(|s| s.num_rows_dropped_by_watermark)
            .sum();
        let stats = Stats::new(&commits, &shared.clock, warmup, run_for, interval);
        let cpu_rows = rows1.saturating_sub(rows0);
        let cpu_s = (cpu1.saturating_sub(cpu0)).as_secs_f64();
        let mut run = RunResult {
            pipeline: pipeline.name.clone(),
            output_mode: pipeline.output_mode.to_string(),
            interval_ms: ms(interval),
            input_rows_per_s: rate,
            run_for_s: run_for.as_secs_f64(),
            warmup_s: warmup.as_secs_f64(),
            rows_generated: total,
            rows_committed: timing.committed_rows(),
            rows_output: timing.output_rows(),
            late_rows_dropped,
            latency: stats.latency.summary(),
            output_latency: self
                .stamp_column
                .as_ref()
                .and_then(|_| timing.column_latency().summary()),
            batches: stats.batches,
            batches_per_s: stats.batches as f64 / stats.window_s,
            sustained_rows_per_s: stats.rows as f64 / stats.window_s,
            cpu_s_per_million_rows: if cpu_rows > 0 {
                cpu_s / cpu_rows as f64 * 1e6
            } else {
                f64::NAN
            },
            cpu_cores_busy: cpu_s / (wall_end.saturating_sub(warmup)).as_secs_f64().max(1e-9),
            lag_middle_s: stats.lag_middle_s,
            lag_last_s: stats.lag_last_s,
            lag_end_s: stats.lag_end_s,
            kept_up: false,
            verified: None,
            phases_ms,
        };
        let slack = 0.05f64.max(ms(interval) / 1e3 / 4.0);
        run.kept_up = run.lag_last_s <= run.lag_middle_s + slack
            && run.lag_end_s <= 1.0 + 2.0 * ms(interval) / 1e3
            && (!drain || drained);
        if verify {
            anyhow::ensure!(
                drained,
                "{}: {} of {total} rows committed; cannot verify",
                pipeline.name,
                run.rows_committed
            );
            verify_output(pipeline, &shared, total, timing.take_output()).await?;
            run.verified = Some(true);
        }
        Ok(run)
    }
}

/// The mean of each phase over the batches committed after the warm-up.
fn mean_phases(
    progress: &[QueryProgress],
    commits: &[CommitRecord],
    warmup: Duration,
) -> Option<PhaseDurations> {
    let first = commits.iter().find(|c| c.at >= warmup)?.batch_id;
    let measured: Vec<&PhaseDurations> = progress
        .iter()
        .filter(|p| p.batch_id >= first)
        .map(|p| &p.duration_ms)
        .collect();
    if measured.is_empty() {
        return None;
    }
    let n = measured.len() as f64;
    let mean = |f: fn(&PhaseDurations) -> f64| measured.iter().map(|d| f(d)).sum::<f64>() / n;
    Some(PhaseDurations {
        latest_offset: mean(|d| d.latest_offset),
        wal_commit: mean(|d| d.wal_commit),
        get_batch: mean(|d| d.get_batch),
        query_planning: mean(|d| d.query_planning),
        execution: mean(|d| d.execution),
        add_batch: mean(|d| d.add_batch),
        state_commit: mean(|d| d.state_commit),
        commit_offsets: mean(|d| d.commit_offsets),
        trigger_execution: mean(|d| d.trigger_execution),
    })
}

/// Figures derived from the commit log of one run.
struct Stats {
    latency: LatencyHistogram,
    batches: u64,
    rows: u64,
    window_s: f64,
    lag_middle_s: f64,
    lag_last_s: f64,
    lag_end_s: f64,
}

impl Stats {
    fn new(
        commits: &[CommitRecord],
        clock: &Clock,
        warmup: Duration,
        run_for: Duration,
        interval: Duration,
    ) -> Self {
        let _ = interval;
        let rate = clock.rate();
        let mut latency = LatencyHistogram::default();
        let first_row = ((warmup.as_secs_f64() * rate).ceil() as u64).saturating_sub(1);
        let mut prev = 0u64;
        let (mut batches, mut rows) = (0u64, 0u64);
        for c in commits {
            let at = c.at.as_secs_f64();
            for i in prev.max(first_row)..c.end_row {
                let lat = at - (i + 1) as f64 / rate;
                latency.record_micros((lat * 1e6).max(0.0) as u64);
            }
            if c.at >= warmup && c.at <= run_for {
                batches += 1;
                rows += c.end_row.saturating_sub(prev);
            }
            prev = prev.max(c.end_row);
        }
        // Backlog (in seconds of input) over the measured time, on a 5 ms
        // grid plus the instants just before each commit.
        // Batches commit in order, each ending at or after the previous.
        let committed_at = |t: Duration| match commits.partition_point(|c| c.at <= t) {
            0 => 0,
            n => commits[n - 1].end_row,
        };
        let lag =
            |t: Duration| clock.available_after(t).saturating_sub(committed_at(t)) as f64 / rate;
        let span = run_for.saturating_sub(warmup);
        let (m0, m1) = (warmup + span / 3, warmup + span * 2 / 3);
        let mut points: Vec<Duration> = Vec::new();
        let mut t = m0;
        while t <= run_for {
            points.push(t);
            t += Duration::from_millis(5);
        }
        points.extend(
            commits
                .iter()
                .filter(|c| c.at >= m0 && c.at <= run_for)
                .map(|c| c.at.saturating_sub(Duration::from_micros(1))),
        );
        points.push(run_for);
        let (mut lag_middle_s, mut lag_last_s) = (0f64, 0f64);
        for p in points {
            let l = lag(p);
            if p < m1 {
                lag_middle_s = lag_middle_s.max(l);
            } else {
                lag_last_s = lag_last_s.max(l);
            }
        }
        Self {
            latency,
            batches,
            rows,
            window_s: span.as_secs_f64().max(1e-9),
            lag_middle_s,
            lag_last_s,
            lag_end_s: lag(run_for),
        }
    }
}

/// Checks the stream's output against the plan run as a batch job.
async fn verify_output(
    pipeline: &StudyPipeline,
    shared: &RunShared,
    total: u64,
    output: Vec<(u64, Vec<RecordBatch>)>,
) -> anyhow::Result<()> {
    let Plan::Frame(plan) = &pipeline.plan else {
        anyhow::bail!(
            "{}: a pipeline over its own streams cannot be verified",
            pipeline.name
        );
    };
    let input = shared.rows(0, 0, total)?;
    let ctx = SessionContext::new();
    let table = MemTable::try_new(Arc::clone(&shared.streams[0].schema), vec![input])?;
    let expected = plan(ctx.read_table(Arc::new(table))?)?.collect().await?;
    let keys = pipeline.key_columns.as_deref();
    let got = result_rows(output.iter().flat_map(|(_, b)| b.iter()), keys)?;
    let want = result_rows(expected.iter(), keys)?;
    anyhow::ensure!(
        got == want,
        "{}: the stream's result differs from the batch job's ({} rows vs {}; first \
         difference: {:?})",
        pipeline.name,
        got.len(),
        want.len(),
        got.iter().zip(&want).find(|(a, b)| a != b)
    );
    Ok(())
}

/// Rows as strings: all rows sorted (no keys), or the last row per key.
fn result_rows<'a>(
    batches: impl Iterator<Item = &'a RecordBatch>,
    keys: Option<&[String]>,
) -> anyhow::Result<Vec<String>> {
    let mut all = Vec::new();
    let mut by_key = BTreeMap::new();
    for b in batches {
        let columns: Vec<(String, ArrayRef)> = b
            .schema()
            .fields()
            .iter()
            .zip(b.columns())
            .map(|(f, c)| (f.name().clone(), Arc::clone(c)))
            .collect();
        for i in 0..b.num_rows() {
            let mut key = String::new();
            let mut row = String::new();
            for (name, c) in &columns {
                let cell = cell(c, i)?;
                if keys.is_some_and(|k| k.contains(name)) {
                    key.push_str(&cell);
                    key.push('|');
                }
                row.push_str(&cell);
                row.push('|');
            }
            match keys {
                Some(_) => {
                    by_key.insert(key, row);
                }
                None => all.push(row),
            }
        }
    }
    if keys.is_some() {
        return Ok(by_key.into_values().collect());
    }
    all.sort();
    Ok(all)
}

fn cell(column: &ArrayRef, i: usize) -> anyhow::Result<String> {
    if column.is_null(i) {
        return Ok("NULL".into());
    }
    if column.data_type() == &DataType::Float64 {
        return Ok(format!(
            "{:.6e}",
            column.as_primitive::<Float64Type>().value(i)
        ));
    }
    let f = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
    Ok(f.value(i).to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An interval for people: `0`, `10 ms`, `1 s`.
pub fn format_interval(d: Duration) -> String {
    format_interval_ms(ms(d))
}

/// [`format_interval`] from milliseconds.
pub fn format_interval_ms(ms: f64) -> String {
    if ms == 0.0 {
        "0".into()
    } else if ms >= 1000.0 && (ms / 1000.0).fract() == 0.0 {
        format!("{} s", ms / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// One fixed-rate run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The pipeline's name.
    pub pipeline: String,
    /// Its output mode.
    pub output_mode: String,
    /// The trigger interval in milliseconds.
    pub interval_ms: f64,
    /// The input rate.
    pub input_rows_per_s: u64,
    /// How long rows were generated.
    pub run_for_s: f64,
    /// The warm-up left out of the figures.
    pub warmup_s: f64,
    /// Rows generated.
    pub rows_generated: u64,
    /// Rows committed when the run stopped.
    pub rows_committed: u64,
    /// Output rows the sink committed over the whole run.
    #[serde(default)]
    pub rows_output: u64,
    /// Input rows stateful operators dropped as late (behind the
    /// watermark) over the whole run.
    #[serde(default)]
    pub late_rows_dropped: u64,
    /// Per input row, availability → commit by the sink (rows available
    /// after the warm-up).
    pub latency: Option<LatencySummary>,
    /// Per output row, from the stamp column (with
    /// [`TriggerStudy::latency_from_column`]).
    pub output_latency: Option<LatencySummary>,
    /// Batches committed between the warm-up and the end of the input.
    pub batches: u64,
    /// Batches per second over that time.
    pub batches_per_s: f64,
    /// Input rows committed per second over that time.
    pub sustained_rows_per_s: f64,
    /// Process CPU seconds (user + system) per million rows committed,
    /// from the end of the warm-up to the end of the run.
    pub cpu_s_per_million_rows: f64,
    /// CPU seconds per wall second over the same time (cores busy).
    pub cpu_cores_busy: f64,
    /// Largest backlog in the middle third of the measured time, in
    /// seconds of input.
    pub lag_middle_s: f64,
    /// Largest backlog in the last third.
    pub lag_last_s: f64,
    /// Backlog when the input ended.
    pub lag_end_s: f64,
    /// Whether the backlog stayed bounded (see [`TriggerStudy`]).
    pub kept_up: bool,
    /// `Some(true)` when the output was checked against a batch job.
    pub verified: Option<bool>,
    /// Mean milliseconds per phase of the batches committed after the
    /// warm-up (from the query's progress reports).
    #[serde(default)]
    pub phases_ms: Option<PhaseDurations>,
}

impl RunResult {
    /// One line for logs.
    pub fn summary(&self) -> String {
        let lat = self.latency.map_or_else(
            || "no latency".to_string(),
            |l| {
                format!(
                    "p50 {:.1} p95 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} ms",
                    l.p50_ms, l.p95_ms, l.p99_ms, l.p999_ms, l.max_ms
                )
            },
        );
        format!(
            "{} @ {} @ {} rows/s: {lat}; {:.0} batches/s, {:.0} rows/s, {:.2} CPU s/M rows, \
             lag {:.3}/{:.3}/{:.3} s, {}",
            self.pipeline,
            format_interval_ms(self.interval_ms),
            self.input_rows_per_s,
            self.batches_per_s,
            self.sustained_rows_per_s,
            self.cpu_s_per_million_rows,
            self.lag_middle_s,
            self.lag_last_s,
            self.lag_end_s,
            if self.kept_up {
                "kept up"
            } else {
                "fell behind"
            }
        )
    }
}

/// One trial of the rate search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchStep {
    /// The input rate tried.
    pub rate: u64,
    /// Whether the query kept up.
    pub kept_up: bool,
    /// Rows/s committed.
    pub sustained_rows_per_s: f64,
    /// Backlog at the end, in seconds of input.
    pub lag_end_s: f64,
}

/// The maximum sustainable rate at one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaxRate {
    /// The pipeline's name.
    pub pipeline: String,
    /// The trigger interval in milliseconds.
    pub interval_ms: f64,
    /// The highest rate the query kept up with (0: none).
    pub max_rows_per_s: u64,
    /// Whether that is the search's upper bound (the true maximum is higher).
    pub capped: bool,
    /// The lowest rate it did not keep up with.
    pub first_failing_rows_per_s: Option<u64>,
    /// Every trial.
    pub steps: Vec<SearchStep>,
}

/// The settings a study ran with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySettings {
    /// Pipelines and output modes.
    pub pipelines: Vec<String>,
    /// Trigger intervals (ms).
    pub intervals_ms: Vec<f64>,
    /// Input rates of the fixed-rate runs.
    pub rates: Vec<u64>,
    /// Length of a fixed-rate run.
    pub run_for_s: f64,
    /// Warm-up of each run.
    pub warmup_s: f64,
    /// The rate search, if any.
    pub search: Option<RateSearch>,
    /// The row generator.
    pub generator: String,
}

/// A study's results: see [`StudyReport::to_markdown`],
/// [`StudyReport::write_svg`] and [`StudyReport::write_to`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyReport {
    /// The machine (load average at the end).
    pub machine: Machine,
    /// The load average at the start.
    pub load_at_start: [f64; 3],
    /// When the study ended (RFC 3339).
    pub generated_at: String,
    /// The settings.
    pub settings: StudySettings,
    /// The fixed-rate runs.
    pub runs: Vec<RunResult>,
    /// The maximum sustainable rate per pipeline and interval.
    pub max_rates: Vec<MaxRate>,
    /// Per pipeline and input rate, the shortest interval that kept up.
    #[serde(default)]
    pub recommendations: Vec<Recommendation>,
}

/// The shortest trigger interval that kept up with one input rate, and
/// its p99 latency: the interval to pick for the lowest latency at that
/// rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The pipeline's name.
    pub pipeline: String,
    /// The input rate.
    pub input_rows_per_s: u64,
    /// The shortest interval (ms) whose run kept up; `None` when none did.
    pub interval_ms: Option<f64>,
    /// That run's p99 latency (ms).
    pub p99_ms: Option<f64>,
}

impl Recommendation {
    /// Per pipeline and rate (in the runs' order), the shortest interval
    /// that kept up.
    pub fn from_runs(runs: &[RunResult]) -> Vec<Recommendation> {
        let mut out: Vec<Recommendation> = Vec::new();
        for r in runs {
            if out
                .iter()
                .any(|o| o.pipeline == r.pipeline && o.input_rows_per_s == r.input_rows_per_s)
            {
                continue;
            }
            let best = runs
                .iter()
                .filter(|o| {
                    o.pipeline == r.pipeline
                        && o.input_rows_per_s == r.input_rows_per_s
                        && o.kept_up
                })
                .min_by(|a, b| a.interval_ms.total_cmp(&b.interval_ms));
            out.push(Recommendation {
                pipeline: r.pipeline.clone(),
                input_rows_per_s: r.input_rows_per_s,
                interval_ms: best.map(|b| b.interval_ms),
                p99_ms: best.and_then(|b| b.latency.map(|l| l.p99_ms)),
            });
        }
        out
    }

    /// One sentence: `at 10000 rows/s: 0 (p99 4.2 ms)`.
    pub fn sentence(&self) -> String {
        match self.interval_ms {
            Some(ms) => format!(
                "{} at {} rows/s: trigger {}{}",
                self.pipeline,
                self.input_rows_per_s,
                format_interval_ms(ms),
                self.p99_ms
                    .map_or(String::new(), |p| format!(" (p99 {p:.1} ms)"))
            ),
            None => format!(
                "{} at {} rows/s: no interval kept up",
                self.pipeline, self.input_rows_per_s
            ),
        }
    }
}
