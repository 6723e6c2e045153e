//! Streaming entry points on DataFusion's `SessionContext` and `DataFrame`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::Column;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::dedup::DeduplicateNode;
use crate::listener::{ListenerBus, QueryListener};
use crate::processor::{StatefulProcessor, TimeMode, TransformWithStateNode};
use crate::watermark::WatermarkNode;
use crate::{DataStreamWriter, OutputMode, Result, Source, SourceTable, TidemillError};

/// Reading streams: an extension of DataFusion's [`SessionContext`].
///
/// ```no_run
/// # async fn demo(source: impl tidemill_engine::Source + 'static) -> tidemill_engine::Result<()> {
/// use datafusion::prelude::*;
/// use tidemill_engine::StreamingContext;
///
/// let ctx = SessionContext::new();
/// let events = ctx.read_stream(source).await?;          // an ordinary DataFrame
/// let big = events.filter(col("amount").gt(lit(100)))?;  // DataFusion as usual
/// # Ok(()) }
/// ```
#[async_trait]
pub trait StreamingContext {
    /// A DataFrame reading `source` as an unbounded stream. It supports every
    /// DataFrame transformation; run it with
    /// [`StreamingDataFrame::write_stream`].
    async fn read_stream<S: Source + 'static>(&self, source: S) -> Result<DataFrame>;

    /// Registers `source` as a streaming table `name`, for SQL:
    /// `ctx.sql("SELECT … FROM name")` then returns a streaming DataFrame.
    async fn register_stream<S: Source + 'static>(&self, name: &str, source: S) -> Result<()>;

    /// Registers `listener` for the events of every streaming query of
    /// this session started from now on (from streams read before or
    /// after), as Spark's `spark.streams.addListener`. See
    /// [`QueryListener`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use datafusion::prelude::SessionContext;
    /// use tidemill_engine::{QueryListener, QueryProgress, StreamingContext};
    ///
    /// struct Log;
    /// impl QueryListener for Log {
    ///     fn on_query_progress(&self, progress: &QueryProgress) {
    ///         println!("batch {} read {} rows", progress.batch_id, progress.num_input_rows);
    ///     }
    /// }
    /// SessionContext::new().add_query_listener(Arc::new(Log));
    /// ```
    fn add_query_listener(&self, listener: Arc<dyn QueryListener>);
}

#[async_trait]
impl StreamingContext for SessionContext {
    async fn read_stream<S: Source + 'static>(&self, source: S) -> Result<DataFrame> {
        let table = streaming_table(self, source).await?;
        self.read_table(table)
            .map_err(|e| TidemillError::datafusion("creating a streaming DataFrame", e))
    }

    async fn register_stream<S: Source + 'static>(&self, name: &str, source: S) -> Result<()> {
        let table = streaming_table(self, source).await?;
        self.register_table(name, table)
            .map_err(|e| TidemillError::datafusion(format!("registering stream '{name}'"), e))?;
        Ok(())
    }

    fn add_query_listener(&self, listener: Arc<dyn QueryListener>) {
        listener_bus(self).add(listener);
    }
}

/// The session's listener bus, added to its configuration if missing.
/// Every streaming table's session gets one, so DataFrames read before a
/// listener is added share the bus it is added to.
fn listener_bus(ctx: &SessionContext) -> Arc<ListenerBus> {
    if let Some(bus) = ctx
        .state_ref()
        .read()
        .config()
        .get_extension::<ListenerBus>()
    {
        return bus;
    }
    let state = ctx.state_ref();
    let mut state = state.write();
    if let Some(bus) = state.config().get_extension::<ListenerBus>() {
        return bus;
    }
    let bus = Arc::new(ListenerBus::default());
    state.config_mut().set_extension(Arc::clone(&bus));
    bus
}

async fn streaming_table<S: Source + 'static>(
    ctx: &SessionContext,
    source: S,
) -> Result<Arc<SourceTable>> {
    listener_bus(ctx);
    let schema = source.schema(ctx).await?;
    Ok(Arc::new(SourceTable::new(Arc::new(source), schema)))
}

/// Writing streams: an extension of DataFusion's [`DataFrame`].
pub trait StreamingDataFrame {
    /// Whether the DataFrame reads at least one streaming source.
    fn is_streaming(&self) -> bool;

    /// Starts describing how to run this streaming DataFrame: sink, output
    /// mode, trigger, checkpoint. See [`DataStreamWriter`].
    fn write_stream(self) -> DataStreamWriter;

    /// Declares `column` (a timestamp) as the event time and `delay` (e.g.
    /// `"10 minutes"`) as how late rows may arrive, as Spark's
    /// `withWatermark`. The watermark, the largest event time seen minus
    /// the delay, is computed at the end of each batch and used by the
    /// next; it never moves backwards and is reported in progress. On a
    /// batch DataFrame this is a no-op, so one function serves both.
    fn with_watermark(self, column: &str, delay: &str) -> Result<DataFrame>;

    /// Keeps the first row of each distinct value of `columns` (every
    /// column if empty) and drops the rest, as Spark's `dropDuplicates`.
    ///
    /// On a stream this is stateful: the keys seen are kept in the
    /// checkpointed state, so a key is emitted once across micro-batches
    /// and restarts. With a watermarked event-time column among `columns`,
    /// a row at or below the watermark is dropped as late and a key is
    /// forgotten once the watermark passes its time; otherwise keys are
    /// kept forever. Nulls are equal to nulls. On a batch DataFrame it is
    /// DataFusion's `DISTINCT ON` over `columns`: one row per key, which one
    /// unspecified, as in Spark's batch `dropDuplicates`.
    fn drop_duplicates(self, columns: &[&str]) -> Result<DataFrame>;

    /// Drops the rows whose `columns` repeat an earlier row's within the
    /// watermark's delay, as Spark's `dropDuplicatesWithinWatermark`: a key
    /// is kept from its first row's event time (the stream's watermarked
    /// column) until the watermark passes that time plus the delay, so the
    /// state stays bounded whether or not the event time is a key. Rows at
    /// or below the watermark are dropped as late. The stream needs a
    /// watermark (refused at start otherwise). On a batch DataFrame it is
    /// [`StreamingDataFrame::drop_duplicates`].
    fn drop_duplicates_within_watermark(self, columns: &[&str]) -> Result<DataFrame>;

    /// Groups the stream by `keys` and runs `processor` on each key's rows
    /// with state and timers of its own, as Spark's `transformWithState`
    /// (see [`crate::processor`]). The result has the processor's
    /// [`output_schema`](crate::processor::StatefulProcessor::output_schema);
    /// the query must run in `output_mode` (append or update). The query
    /// runs a clone of `processor` per partition, on several threads (see
    /// [`StatefulProcessor`](crate::processor::StatefulProcessor)). On a
    /// batch DataFrame this is an error: the processor's state and timers
    /// need a stream.
    fn transform_with_state(
        self,
        keys: &[&str],
        processor: impl StatefulProcessor + Clone,
        time_mode: TimeMode,
        output_mode: OutputMode,
    ) -> Result<DataFrame>;

    /// [`transform_with_state`](StreamingDataFrame::transform_with_state)
    /// with the state seeded from `initial_state`, a batch DataFrame with
    /// the same key columns: in the query's first batch, each key's rows of
    /// it are given to
    /// [`handle_initial_state`](crate::processor::StatefulProcessor::handle_initial_state)
    /// before any input row. A restart from a checkpoint does not read it
    /// again.
    fn transform_with_state_and_initial_state(
        self,
        keys: &[&str],
        processor: impl StatefulProcessor + Clone,
        time_mode: TimeMode,
        output_mode: OutputMode,
        initial_state: DataFrame,
    ) -> Result<DataFrame>;

    /// [`transform_with_state`](StreamingDataFrame::transform_with_state)
    /// in event-time mode, whose output column `event_time_column` (a
    /// timestamp the processor fills from its input's event times) carries
    /// the stream's watermark on, as Spark's `transformWithState` with an
    /// `eventTimeColumnName`: stateful operators may follow the processor
    /// (a window aggregation over its rows, say), in append mode. A row the
    /// processor emits with an event time at or below the previous batch's
    /// watermark would be late for the operators after it, so it stops the
    /// query with an error naming the key and the times.
    fn transform_with_state_with_event_time(
        self,
        keys: &[&str],
        processor: impl StatefulProcessor + Clone,
        event_time_column: &str,
        output_mode: OutputMode,
    ) -> Result<DataFrame>;
}

impl StreamingDataFrame for DataFrame {
    fn is_streaming(&self) -> bool {
        SourceTable::any_in(self.logical_plan())
    }

    fn write_stream(self) -> DataStreamWriter {
        DataStreamWriter::new(self)
    }

    fn with_watermark(self, column: &str, delay: &str) -> Result<DataFrame> {
        let delay = crate::watermark::parse_delay(delay)?;
        if !self.is_streaming() {
            return Ok(self);
        }
        let (state, plan) = self.into_parts();
        let node = WatermarkNode::try_new(plan, column, delay)?;
        Ok(DataFrame::new(state, node.into_plan()))
    }

    fn drop_duplicates(self, columns: &[&str]) -> Result<DataFrame> {
        deduplicate(self, columns, false)
    }

    fn drop_duplicates_within_watermark(self, columns: &[&str]) -> Result<DataFrame> {
        deduplicate(self, columns, true)
    }

    fn transform_with_state(
        self,
        keys: &[&str],
        processor: impl StatefulProcessor + Clone,
        time_mode: TimeMode,
        output_mode: OutputMode,
    ) -> Result<DataFrame> {
        transform_with_state(self, keys, processor, time_mode, output_mode, None, None)
    }

    fn transform_with_state_with_event_time(
        self,
        keys: &[&str],
        processor: impl StatefulProcessor + Clone,
        event_time_column: &str,
        output_mode: OutputMode,
    ) -> Result<DataFrame> {
        let output = processor.output_schema();
        match output
            .field_with_name(event_time_column)
            .map(|f| f.data_type())
        {
            Ok(arrow::datatypes::DataType::Timestamp(_, _)) => {}
            Ok(other) => {
                return Err(TidemillError::Config(format!(
                    "transform_with_state: the event-time column '{event_time_column}' is {other}, \
                     not a timestamp"
                )));
            }
            Err(_) => {
                return Err(TidemillError::Config(format!(
                    "transform_with_state: the processor's output schema has no event-time \
                     column '{event_time_column}'"
                )));
            }
        }
        transform_with_state(
            self,
            keys,
            processor,
            TimeMode::EventTime,
            output_mode,
            None,
            Some(event_time_column.to_string()),
        )
    }

    fn transform_with_state_and_initial_state(
        self,
        keys: &[&str],
        processor: impl StatefulProcessor + Clone,
        time_mode: TimeMode,
        output_mode: OutputMode,
        initial_state: DataFrame,
    ) -> Result<DataFrame> {
        if initial_state.is_streaming() {
            return Err(TidemillError::Config(
                "transform_with_state: the initial state must be a batch DataFrame, not a stream"
                    .into(),
            ));
        }
        transform_with_state(
            self,
            keys,
            processor,
            time_mode,
            output_mode,
            Some(initial_state),
            None,
        )
    }
}

/// `transform_with_state`, with or without an initial state and an
/// event-time column.
fn transform_with_state<P: StatefulProcessor + Clone>(
    df: DataFrame,
    keys: &[&str],
    processor: P,
    time_mode: TimeMode,
    output_mode: OutputMode,
    initial_state: Option<DataFrame>,
    event_time_column: Option<String>,
) -> Result<DataFrame> {
    if !df.is_streaming() {
        return Err(TidemillError::Config(
            "transform_with_state needs a streaming DataFrame (one read with read_stream): a \
             processor's state and timers live across micro-batches"
                .into(),
        ));
    }
    if keys.is_empty() {
        return Err(TidemillError::Config(
            "transform_with_state: give at least one key column".into(),
        ));
    }
    let mut columns = Vec::with_capacity(keys.len());
    for name in keys {
        let column = df
            .schema()
            .qualified_field_with_unqualified_name(name)
            .map(Column::from)
            .map_err(|e| {
                TidemillError::datafusion(format!("transform_with_state: key column '{name}'"), e)
            })?;
        columns.push(column);
    }
    let (state, plan) = df.into_parts();
    // Each instance the query runs (one per core) is a clone of the one
    // given, as Spark's tasks each deserialize their own.
    let original = std::sync::Mutex::new(processor.clone());
    let fork: crate::processor::Fork = std::sync::Arc::new(move || {
        let original = original
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Box::new(original.clone())
    });
    let node = TransformWithStateNode::try_new(
        plan,
        columns,
        Box::new(processor),
        fork,
        time_mode,
        output_mode,
        initial_state,
        event_time_column,
    )
    .map_err(|e| TidemillError::datafusion("transform_with_state: the output schema", e))?;
    Ok(DataFrame::new(state, node.into_plan()))
}

/// `drop_duplicates` (`within_watermark`: its within-watermark variant).
fn deduplicate(df: DataFrame, columns: &[&str], within_watermark: bool) -> Result<DataFrame> {
    let keys = if columns.is_empty() {
        df.schema().columns()
    } else {
        let mut keys = Vec::with_capacity(columns.len());
        for name in columns {
            let column = df
                .schema()
                .qualified_field_with_unqualified_name(name)
                .map(Column::from)
                .map_err(|e| {
                    TidemillError::datafusion(format!("drop_duplicates: column '{name}'"), e)
                })?;
            keys.push(column);
        }
        keys
    };
    if !df.is_streaming() {
        let all = df
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        let on = keys.into_iter().map(Expr::Column).collect();
        return df
            .distinct_on(on, all, None)
            .map_err(|e| TidemillError::datafusion("drop_duplicates", e));
    }
    let (state, plan) = df.into_parts();
    let node = DeduplicateNode {
        input: plan,
        keys,
        within_watermark,
        operator: 0,
    };
    Ok(DataFrame::new(state, node.into_plan()))
}
