//! Configuring and starting a streaming query.

use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::DataFrame;
use tidemill_state::Durability;

use crate::plan::{StatefulNode, prepare, replace_stateful, stateful_nodes};
use crate::watermark::{MultipleWatermarkPolicy, WatermarkNode};
use crate::{LeaseOptions, OutputMode, Result, Sink, StreamingQuery, TidemillError, Trigger};

/// Tuning knobs of a streaming query, with Spark's defaults.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// How many batches of offset and commit log to keep (Spark's
    /// `minBatchesToRetain`, 100). Older entries are deleted as batches
    /// commit.
    pub min_batches_to_retain: u64,
    /// How many progress reports [`StreamingQuery::recent_progress`] keeps.
    pub progress_history: usize,
    /// How long a processing-time trigger waits at most after finding no
    /// new data before asking the sources again (Spark's polling delay,
    /// 10 ms). The first trigger of an idle spell waits 1 ms (or this, if
    /// shorter), and each further one twice as long as the one before, up
    /// to this: a row arriving just after a back-to-back batch does not
    /// wait a whole polling delay.
    pub no_data_polling_delay: Duration,
    /// How the watermarks of several watermarked inputs combine.
    pub multiple_watermark_policy: MultipleWatermarkPolicy,
    /// How batches failing with a transient error are retried.
    pub retry: RetryPolicy,
    /// Whether a query with a streaming aggregation runs a batch without
    /// new data when the watermark has closed groups its state holds, so
    /// their results are emitted (append mode) and their state evicted
    /// without waiting for more input (Spark's
    /// `spark.sql.streaming.noDataMicroBatches.enabled`; default true).
    pub no_data_batches: bool,
    /// How many versions of aggregation state to keep for recovery
    /// (default 100, as `min_batches_to_retain`); older state files are
    /// deleted every 10 batches.
    pub min_state_versions_to_retain: u64,
    /// How durable the checkpoint's writes (offset and commit logs, state
    /// files, sources' logs) and the sink's commits are when they count as
    /// done: [`Durability::Process`] (the default) survives a killed
    /// process; [`Durability::Machine`] also survives power loss on a local
    /// disk, at the cost of two `fsync`s per file written.
    pub checkpoint_durability: Durability,
    /// The lease that keeps a second query off a checkpoint on object
    /// storage (`s3://…`): how long it lasts and how often it is renewed
    /// (default 30 s and 10 s; see [`LeaseOptions`]). A query killed
    /// without letting its lease go blocks its checkpoint until the lease
    /// expires. Local and `memory://` checkpoints are locked otherwise.
    pub checkpoint_lease: LeaseOptions,
    /// Whether the next trigger begins while a batch's sink writes and its
    /// state commits, when that trigger is due as soon as the batch ends
    /// (interval 0, an interval the batch outlasted, or available-now): it
    /// asks the sources for offsets, reads the next batch's input, copies
    /// the physical plan and, in a query without stateful operators,
    /// executes it meanwhile, on a task of its own (default false, as
    /// Spark asks the sources only once a batch has committed). It pays
    /// where reading and executing wait on storage about as long as the
    /// sink's commit does (object storage, remote brokers); with sources
    /// and sinks on a local disk or a local broker it gains nothing
    /// measurable (see `BENCHMARKS.md`). Exactly-once is the same either
    /// way: the next batch's offsets are logged only once this batch
    /// committed.
    pub read_ahead: bool,
}

/// How a batch that fails with a transient error
/// ([`TidemillError::is_transient`]) is retried: the same batch, with the
/// same offsets, after a backoff that doubles from `initial_backoff` up to
/// `max_backoff`; the query fails once failures have lasted `max_elapsed`.
/// Retrying is safe because sources replay ranges and sinks are idempotent
/// per batch id.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The first wait.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// How long failures may last before the query fails; zero disables
    /// retries.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl Default for QueryOptions {
    fn default() -> Self {
        Self {
            min_batches_to_retain: 100,
            progress_history: 100,
            no_data_polling_delay: Duration::from_millis(10),
            multiple_watermark_policy: MultipleWatermarkPolicy::Min,
            retry: RetryPolicy::default(),
            no_data_batches: true,
            min_state_versions_to_retain: 100,
            checkpoint_durability: Durability::Process,
            checkpoint_lease: LeaseOptions::default(),
            read_ahead: false,
        }
    }
}

/// Describes how to run a streaming DataFrame; made by
/// [`crate::StreamingDataFrame::write_stream`].
///
/// ```no_run
/// # async fn demo(df: datafusion::prelude::DataFrame, sink: impl tidemill_engine::Sink + 'static)
/// # -> tidemill_engine::Result<()> {
/// use std::time::Duration;
/// use tidemill_engine::{OutputMode, StreamingDataFrame, Trigger};
///
/// let query = df
///     .write_stream()
///     .sink(sink)
///     .output_mode(OutputMode::Append)
///     .trigger(Trigger::ProcessingTime(Duration::from_secs(10)))
///     .checkpoint("chk/enriched")
///     .query_name("enriched")
///     .start()
///     .await?;
/// query.await_termination().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DataStreamWriter {
    pub(crate) df: DataFrame,
    pub(crate) sink: Option<Arc<dyn Sink>>,
    pub(crate) late_rows_sink: Option<Arc<dyn Sink>>,
    pub(crate) output_mode: OutputMode,
    pub(crate) trigger: Trigger,
    pub(crate) checkpoint: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) options: QueryOptions,
}

impl DataStreamWriter {
    pub(crate) fn new(df: DataFrame) -> Self {
        Self {
            df,
            sink: None,
            late_rows_sink: None,
            output_mode: OutputMode::default(),
            trigger: Trigger::default(),
            checkpoint: None,
            name: None,
            options: QueryOptions::default(),
        }
    }

    /// Where results go (required).
    pub fn sink(mut self, sink: impl Sink + 'static) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// Where results go, for a sink shared with other code.
    pub fn sink_arc(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Where a streaming aggregation sends the input rows it drops as late
    /// (their group was already closed by the watermark) and the rows it
    /// leaves out for a null event time (in no window), written with the
    /// batch's id, before the batch's results; without one they are dropped
    /// and counted in progress (`num_rows_dropped_by_watermark`,
    /// `num_rows_without_event_time`).
    pub fn late_rows_sink(mut self, sink: impl Sink + 'static) -> Self {
        self.late_rows_sink = Some(Arc::new(sink));
        self
    }

    /// The output mode (default append).
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.output_mode = mode;
        self
    }

    /// When batches run (default: back to back).
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// The checkpoint location: a local path or an object store URL. A
    /// query restarted with the same checkpoint resumes exactly where it
    /// stopped. Without one, the query checkpoints to a fresh in-memory
    /// location and cannot be resumed after the process ends.
    pub fn checkpoint(mut self, location: impl Into<String>) -> Self {
        self.checkpoint = Some(location.into());
        self
    }

    /// A name for the query, used in logs and progress and by sinks such as
    /// the memory sink.
    pub fn query_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replaces all tuning options.
    pub fn options(mut self, options: QueryOptions) -> Self {
        self.options = options;
        self
    }

    /// Describes how the query would run, without starting it: the output
    /// mode, the watermarks, the stateful operator and the plan each
    /// micro-batch runs (DataFusion's optimized plan, with the streaming
    /// aggregation as `StreamingAggregate`). Fails with the same error as
    /// [`start`](Self::start) if the query cannot run as a stream.
    ///
    /// ```no_run
    /// # fn demo(df: datafusion::prelude::DataFrame) -> tidemill_engine::Result<()> {
    /// use tidemill_engine::{OutputMode, StreamingDataFrame};
    ///
    /// let text = df.write_stream().output_mode(OutputMode::Append).explain()?;
    /// println!("{text}");
    /// # Ok(()) }
    /// ```
    pub fn explain(self) -> Result<String> {
        let mode = self.output_mode;
        let (_, _, optimized) = prepare(self.df, mode)?;
        let mut text = format!("output mode: {mode}\n");
        let watermarks = WatermarkNode::all_in(&optimized);
        if watermarks.is_empty() {
            text.push_str("watermarks: none\n");
        }
        for w in &watermarks {
            text.push_str(&format!(
                "watermark: on {} with delay {} ms (max event time seen - delay, applied from \
                 the next micro-batch)\n",
                w.column.flat_name(),
                w.delay_ms
            ));
        }
        let per_batch = replace_stateful(optimized)
            .map_err(|e| TidemillError::datafusion("explaining the streaming query", e))?;
        let nodes = stateful_nodes(&per_batch);
        if nodes.is_empty() {
            text.push_str("stateful operators: none (each micro-batch runs on its own rows)\n");
        }
        for node in &nodes {
            text.push_str(&explain_operator(node, mode));
        }
        text.push_str("plan of each micro-batch:\n");
        text.push_str(&per_batch.display_indent().to_string());
        text.push('\n');
        Ok(text)
    }

    /// Validates the query, opens (or recovers) its checkpoint, sources and
    /// sink, and starts the trigger loop on a tokio task.
    ///
    /// Fails here, before any batch, if the plan cannot run as a stream in
    /// the chosen output mode, if no sink was given, if another query holds
    /// the checkpoint, or if the checkpoint is corrupt or belongs to a
    /// different query.
    pub async fn start(mut self) -> Result<StreamingQuery> {
        let sink = self.sink.take().ok_or_else(|| {
            TidemillError::Config("no sink: call .sink(...) before .start()".into())
        })?;
        crate::boot::start(self, sink).await
    }
}

/// What `explain` says of one stateful operator: its keys, how its state
/// is evicted and which watermark it drops late rows by.
fn explain_operator(node: &StatefulNode, mode: OutputMode) -> String {
    let mut text = format!(
        "stateful operator {}: {}\n",
        node.operator(),
        node.describe()
    );
    let late = if node.chained() {
        "fed by another stateful operator: drops rows at or below the previous micro-batch's \
         watermark as late, evicts by the current one"
    } else {
        "drops rows at or below the micro-batch's watermark as late, evicts by the same"
    };
    match node {
        StatefulNode::Deduplicate(dedup) => match dedup.expiry() {
            Some((column, 0)) => text.push_str(&format!(
                "  event-time key: {column}; keys the watermark has passed are evicted; {late}\n"
            )),
            Some((column, delay)) => text.push_str(&format!(
                "  within the watermark: a key is kept until the watermark passes its first \
                 row's {column} + {delay} ms; {late}\n"
            )),
            None => text.push_str("  no event-time key: every key is kept forever\n"),
        },
        StatefulNode::Aggregate(aggregate) => {
            let key = aggregate
                .aggregate_over(aggregate.input.clone())
                .ok()
                .and_then(|a| crate::aggregate::event_time_key(&a));
            match key {
                Some(key) => text.push_str(&format!(
                    "  event-time key: {} ({:?}); with a watermark, a group closes when the \
                     watermark reaches its end and is evicted{}; {late}\n",
                    key.name,
                    key.kind,
                    if mode == OutputMode::Append {
                        " after being emitted once"
                    } else {
                        ""
                    }
                )),
                None => {
                    text.push_str("  no event-time key: state grows with the number of groups\n")
                }
            }
        }
        StatefulNode::Join(join) => {
            let bounds = join.bounds();
            for (side, label) in [(0, "left"), (1, "right")] {
                match &bounds.expiry[side] {
                    Some(expiry) => text.push_str(&format!(
                        "  {label} rows are kept until they can no longer match: evicted {}\n",
                        expiry.describe()
                    )),
                    None => text.push_str(&format!(
                        "  {label} rows are kept forever (unbounded state: no watermark on the \
                         other side, or no time bound in the condition)\n"
                    )),
                }
            }
            text.push_str(&format!("  {late}\n"));
        }
        StatefulNode::Processor(node) => {
            text.push_str(&match node.time_mode {
                crate::processor::TimeMode::EventTime => format!(
                    "  state variables and timers per key, evicted by the processor (clear, TTL \
                     in processing time); event-time timers fire as the watermark reaches them; \
                     {late}\n"
                ),
                crate::processor::TimeMode::ProcessingTime => "  state variables and timers \
                     per key, evicted by the processor (clear, TTL in processing time); \
                     processing-time timers fire as the batch clock reaches them\n"
                    .to_string(),
                crate::processor::TimeMode::None => "  state variables per key, evicted by the \
                     processor (clear, TTL in processing time); no timers\n"
                    .to_string(),
            });
        }
    }
    text
}
