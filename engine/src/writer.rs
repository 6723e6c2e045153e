//! Configuring and starting a streaming query.

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::FutureExt;

use crate::aggregate::{AggregateLayout, AggregateOperator};
use crate::checkpoint::{Checkpoint, Metadata};
use crate::micro_batch::{Runner, RunningSource};
use crate::plan::{
    self, AggregatePlanner, BatchPlanner, StreamingQueryPlanner, WatermarkPlanner,
    find_aggregation, replace_aggregation,
};
use crate::query::QueryShared;
use crate::watermark::{MultipleWatermarkPolicy, WatermarkNode, WatermarkTracker};
use crate::window::expand_grouping_windows;
use crate::{
    Location, OutputMode, Result, Sink, SinkContext, SourceContext, StreamingQuery, StreamingTable,
    TidemillError, Trigger,
};

/// Tuning knobs of a streaming query, with Spark's defaults.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// How many batches of offset and commit log to keep (Spark's
    /// `minBatchesToRetain`, 100). Older entries are deleted as batches
    /// commit.
    pub min_batches_to_retain: u64,
    /// How many progress reports [`StreamingQuery::recent_progress`] keeps.
    pub progress_history: usize,
    /// How long a processing-time trigger waits after finding no new data
    /// before asking the sources again (Spark's polling delay, 10 ms).
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
    df: DataFrame,
    sink: Option<Arc<dyn Sink>>,
    late_rows_sink: Option<Arc<dyn Sink>>,
    output_mode: OutputMode,
    trigger: Trigger,
    checkpoint: Option<String>,
    name: Option<String>,
    options: QueryOptions,
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
        match find_aggregation(&optimized) {
            None => {
                text.push_str("stateful operators: none (each micro-batch runs on its own rows)\n")
            }
            Some(found) => {
                let keys: Vec<String> = found.group_expr.iter().map(|e| e.to_string()).collect();
                text.push_str(&format!(
                    "stateful operator: StreamingAggregate, state keyed by [{}]\n",
                    keys.join(", ")
                ));
                match crate::aggregate::event_time_key(&found) {
                    Some(key) => text.push_str(&format!(
                        "  event-time key: {} ({:?}); with a watermark, a group closes when the \
                         watermark reaches its end: late rows are dropped, closed groups are \
                         evicted{}\n",
                        key.name,
                        key.kind,
                        if mode == OutputMode::Append {
                            " after being emitted once"
                        } else {
                            ""
                        }
                    )),
                    None => text
                        .push_str("  no event-time key: state grows with the number of groups\n"),
                }
            }
        }
        let per_batch = replace_aggregation(optimized, 0)
            .map_err(|e| TidemillError::datafusion("explaining the streaming query", e))?;
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
    pub async fn start(self) -> Result<StreamingQuery> {
        let sink = self.sink.ok_or_else(|| {
            TidemillError::Config("no sink: call .sink(...) before .start()".into())
        })?;
        let (state, plan, optimized) = prepare(self.df, self.output_mode)?;
        let session = SessionContext::new_with_state(state.clone());
        let tables = StreamingTable::all_in(&plan);
        let layout = match find_aggregation(&optimized) {
            Some(found) => Some(Arc::new(
                AggregateLayout::plan(&found, &state).await.map_err(|e| {
                    TidemillError::datafusion("planning the streaming aggregation", e)
                })?,
            )),
            None => None,
        };

        let location = match &self.checkpoint {
            Some(location) => location.clone(),
            None => format!(
                "memory:///tidemill/temporary-checkpoints/{}",
                uuid::Uuid::new_v4()
            ),
        };
        let location = Location::resolve(&location, &session.runtime_env())?;
        let checkpoint = Checkpoint::open(location)?;
        let metadata = checkpoint
            .load_or_init_metadata(Metadata {
                query_id: uuid::Uuid::new_v4().to_string(),
                engine_version: env!("CARGO_PKG_VERSION").to_string(),
                created_at: chrono::Utc::now().to_rfc3339(),
                sources: tables.iter().map(|t| t.provider().description()).collect(),
                sink: sink.description(),
            })
            .await?;

        let mut sources = Vec::with_capacity(tables.len());
        for (index, table) in tables.iter().enumerate() {
            let schema = datafusion::catalog::TableProvider::schema(table.as_ref());
            let ctx = SourceContext {
                session: session.clone(),
                schema: Arc::clone(&schema),
                checkpoint: checkpoint.source_dir(index),
            };
            sources.push(RunningSource {
                table_id: table.id(),
                schema,
                description: table.provider().description(),
                source: table.provider().open(ctx).await?,
                committed: None,
            });
        }

        let recovery = checkpoint.recovery_point(sources.len()).await?;
        for (s, offset) in sources.iter_mut().zip(recovery.committed) {
            s.committed = offset;
        }
        let (next_batch_id, pending, watermark) = (
            recovery.next_batch_id,
            recovery.pending,
            recovery.watermark_ms,
        );

        let mut aggregates = Vec::new();
        if let Some(layout) = layout {
            let dir = checkpoint.dir.child("state").child("0");
            aggregates.push(Arc::new(
                AggregateOperator::open(layout, self.output_mode, dir, next_batch_id).await?,
            ));
        }
        // Batches are planned with Tidemill's streaming operators added to
        // DataFusion's planner.
        let watermark_planner = Arc::new(WatermarkPlanner::default());
        let planning_session = SessionContext::new_with_state(
            SessionStateBuilder::new_from_existing(state.clone())
                .with_query_planner(Arc::new(StreamingQueryPlanner::new(
                    Arc::clone(&watermark_planner),
                    Arc::new(AggregatePlanner::new(aggregates.clone())),
                )))
                .build(),
        );

        let df_schema = plan.schema();
        sink.open(&SinkContext {
            session: session.clone(),
            query_name: self.name.clone(),
            schema: Arc::new(df_schema.as_arrow().clone()),
            output_mode: self.output_mode,
        })
        .await?;

        if let Some(late) = &self.late_rows_sink {
            let Some(operator) = aggregates.first() else {
                return Err(TidemillError::Config(
                    "late_rows_sink: the query has no streaming aggregation, so no row is ever \
                     late; remove the late-rows sink"
                        .into(),
                ));
            };
            late.open(&SinkContext {
                session: session.clone(),
                query_name: self.name.as_ref().map(|n| format!("{n}_late_rows")),
                schema: operator.input_schema(),
                output_mode: OutputMode::Append,
            })
            .await?;
        }

        let shared = Arc::new(QueryShared::new(
            metadata.query_id,
            self.name,
            self.options.progress_history,
        ));
        tracing::info!(
            "starting query {} at batch {next_batch_id} with checkpoint {}",
            shared.display_name(),
            checkpoint.location
        );
        let watermarks = WatermarkTracker::new(
            &WatermarkNode::all_in(&plan),
            self.options.multiple_watermark_policy,
            watermark,
        );
        let planner = BatchPlanner::new(planning_session.clone(), plan, !aggregates.is_empty());
        let runner = Runner {
            session: planning_session,
            watermarks,
            watermark_planner,
            planner,
            sources,
            sink,
            late_rows_sink: self.late_rows_sink,
            aggregates,
            checkpoint,
            trigger: self.trigger,
            output_mode: self.output_mode,
            options: self.options,
            shared: Arc::clone(&shared),
            next_batch_id,
            pending_is_recovery: pending.is_some(),
            pending,
            last_trigger_start: None,
        };
        let task_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(runner.run())
                .catch_unwind()
                .await;
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(panic) => Some(TidemillError::Internal(crate::error::panic_message(
                    &*panic,
                ))),
            };
            task_shared.terminate(error);
        });
        Ok(StreamingQuery::new(shared, task))
    }
}

/// The query's plan ready to stream: grouping windows expanded, optimized
/// and validated for `mode`. Returns the session state, the plan and the
/// optimized plan.
fn prepare(
    df: DataFrame,
    mode: OutputMode,
) -> Result<(
    datafusion::execution::SessionState,
    LogicalPlan,
    LogicalPlan,
)> {
    let (state, plan) = df.into_parts();
    // Sliding and session windows in GROUP BY become an unnested list and
    // window functions (the analyzer does it too where
    // register_window_functions ran).
    let plan = expand_grouping_windows(plan)
        .map_err(|e| TidemillError::datafusion("planning grouping windows", e))?;
    let optimized = state
        .optimize(&plan)
        .map_err(|e| TidemillError::datafusion("optimizing the streaming query", e))?;
    plan::validate(&optimized, &plan, mode)?;
    Ok((state, plan, optimized))
}
