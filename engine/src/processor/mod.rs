//! Arbitrary stateful processing, as Spark 4's `transformWithState`: a
//! [`StatefulProcessor`] of your own, called per grouping key with the
//! key's new rows, keeping typed state variables and timers per key in the
//! checkpointed state store.
//!
//! ```text
//! df.transform_with_state(&["symbol"], processor, TimeMode::EventTime, OutputMode::Append)
//!   every batch, per key with new rows (keys in key order):
//!     handle_input_rows(key, rows, ctx)  → output rows
//!   then per due timer (earliest first):
//!     handle_expired_timer(key, timer, ctx) → output rows
//! ```
//!
//! - **State variables** ([`ValueState`], [`ListState`], [`MapState`]) are
//!   declared in [`StatefulProcessor::init`]; each lives in a state store of
//!   its own (`<checkpoint>/state/<operator>/<name>`), is committed with the
//!   batch and restored on restart, so a batch re-run after a crash sees
//!   exactly the state it saw the first time. A variable may have a time to
//!   live in processing time.
//! - **Timers** ([`ProcessorContext::register_timer`]) are per key, in the
//!   [`TimeMode`]'s time: event-time timers fire once the watermark reaches
//!   them, processing-time timers once a batch's clock does, in a batch
//!   without new data if the query has none. Each fires once; a deleted
//!   timer never fires. They are checkpointed like the variables.
//! - **Time**: a batch's processing time is the time its offsets were
//!   logged (the same when the batch is re-run), and in event-time mode the
//!   watermark is the batch's; rows at or below it are dropped as late and
//!   counted in the operator's progress, as by the other operators.
//! - **Output** rows have the schema the processor declares
//!   ([`StatefulProcessor::output_schema`]); a batch of another schema is an
//!   error naming the column. The query runs in append or update mode, the
//!   one the operator is given.
//! - **Chaining**: with an event-time column in its output
//!   ([`crate::StreamingDataFrame::transform_with_state_with_event_time`],
//!   Spark's `eventTimeColumnName`), the stream's watermark applies to the
//!   processor's rows and stateful operators may follow it in append mode;
//!   a row at or below the previous batch's watermark, which they would
//!   drop as late, is an error. Without one, an operator after the
//!   processor is refused at start.
//! - **Initial state**: a batch DataFrame, grouped by the same key columns,
//!   given to [`StatefulProcessor::handle_initial_state`] in the query's
//!   first batch.
//!
//! [`TransformWithStateNode`] is the logical node
//! ([`crate::StreamingDataFrame::transform_with_state`] adds it), planned as
//! a `TransformWithStateExec` of the query's processor operator, which
//! reports Spark's figures of a processor in its progress entry's
//! `custom_metrics`: timers registered, deleted, fired and held, values
//! removed by their time to live, and the rows of each variable
//! (`rows.<name>`).

mod codec;
mod context;
mod exec;
mod input;
mod node;
mod operator;
mod slots;
mod stores;
mod variables;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

pub use context::{ExpiredTimer, ProcessorContext};
pub(crate) use exec::ProcessorExec;
pub use input::{GroupKey, KeyRows, PrimitiveRows};
pub(crate) use node::Fork;
pub use node::TransformWithStateNode;
pub(crate) use operator::ProcessorOperator;
pub use variables::{
    ListState, MapState, StateDeclarations, StateVariable, ValueState, VariableSpec,
};

/// The error a processor's callback returns: any error (an `anyhow::Error`
/// converts with `?`). The query stops with it, naming the processor, the
/// callback and the key.
pub type ProcessorError = Box<dyn std::error::Error + Send + Sync>;

/// The result of a processor's callback.
pub type ProcessorResult<T> = std::result::Result<T, ProcessorError>;

/// Which clock a processor's timers follow, as Spark's `TimeMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeMode {
    /// No timers.
    None,
    /// Timers in processing time: a timer fires in the first batch whose
    /// processing time is at or past it.
    ProcessingTime,
    /// Timers in event time: a timer fires in the first batch whose
    /// watermark is at or past it. The input needs a watermark; its rows at
    /// or below the batch's watermark are dropped as late.
    EventTime,
}

impl std::fmt::Display for TimeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::ProcessingTime => "processing time",
            Self::EventTime => "event time",
        })
    }
}

/// Per-key logic with state and timers, as Spark's `StatefulProcessor`.
///
/// Apply it with
/// [`StreamingDataFrame::transform_with_state`](crate::StreamingDataFrame::transform_with_state).
/// A query runs one instance of the processor per partition of its
/// session (DataFusion's `target_partitions`, by default one per core), as
/// Spark runs one per task: the one given and clones of it, each with its
/// own [`init`](StatefulProcessor::init). A batch with many keys is shared
/// among them, each instance called for a run of the keys (in key order)
/// on a thread of its own, so the output is the same rows in the same
/// order whatever the count; timers and the initial state go to the first
/// instance. An instance is called from one thread at a time; what its
/// fields hold is its own, and state shared by keys belongs in state
/// variables, not in fields. The callbacks must be deterministic given
/// the state and the rows (a
/// batch re-run after a crash must emit the same rows); use
/// [`ProcessorContext::processing_time_ms`] for the time, not the system
/// clock.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, RecordBatch, StringArray};
/// use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
/// use tidemill_engine::processor::*;
///
/// /// Counts rows per key and emits the running count.
/// #[derive(Clone)]
/// struct Counter { count: ValueState<i64> }
///
/// impl StatefulProcessor for Counter {
///     fn output_schema(&self) -> SchemaRef {
///         Arc::new(Schema::new(vec![
///             Field::new("key", DataType::Utf8, false),
///             Field::new("count", DataType::Int64, false),
///         ]))
///     }
///     fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
///         states.declare(&self.count)
///     }
///     fn handle_input_rows(
///         &mut self,
///         key: &GroupKey,
///         rows: &KeyRows<'_>,
///         ctx: &mut ProcessorContext<'_>,
///     ) -> ProcessorResult<Vec<RecordBatch>> {
///         let count = self.count.get(ctx)?.unwrap_or(0) + rows.num_rows() as i64;
///         self.count.set(ctx, &count)?;
///         let name: String = key.decode()?;
///         Ok(vec![RecordBatch::try_new(self.output_schema(), vec![
///             Arc::new(StringArray::from(vec![name])),
///             Arc::new(Int64Array::from(vec![count])),
///         ])?])
///     }
/// }
/// let _ = Counter { count: ValueState::new("count") };
/// ```
pub trait StatefulProcessor: Send + 'static {
    /// The schema of every row batch the callbacks return.
    fn output_schema(&self) -> SchemaRef;

    /// Declares the state variables, once when the query starts.
    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()>;

    /// Called once per batch for each key with new rows (`rows`: that key's
    /// rows of the batch: those of the plan's first partition first, each
    /// partition's in its order, so a re-run of the batch sees them in the
    /// same order); returns output rows. Which rows a partition holds
    /// depends on the plan below and the partition count: logic that
    /// depends on the order of rows should sort them (by event time, say).
    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>>;

    /// Called once for each timer that is due, after the batch's input rows;
    /// returns output rows. The timer is already deleted.
    fn handle_expired_timer(
        &mut self,
        _key: &GroupKey,
        _timer: ExpiredTimer,
        _ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    /// Seeds a key's state from its rows of the initial-state DataFrame, in
    /// the query's first batch, before any input row.
    fn handle_initial_state(
        &mut self,
        _key: &GroupKey,
        _rows: &KeyRows<'_>,
        _ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<()> {
        Err(
            "the query has an initial state, but the processor does not implement \
             handle_initial_state"
                .into(),
        )
    }

    /// Called once when the query stops (also after an error).
    fn close(&mut self) -> ProcessorResult<()> {
        Ok(())
    }
}

/// The rows of `batches` as one batch of `schema`, checked column by column
/// against the declared output schema; the error names the column.
pub(crate) fn check_output(schema: &SchemaRef, batch: &RecordBatch) -> Result<(), String> {
    let got = batch.schema_ref();
    for (i, want) in schema.fields().iter().enumerate() {
        let Some(field) = got.fields().get(i) else {
            return Err(format!(
                "column '{}' ({}) is missing: the batch has {} columns, the declared output \
                 schema {}",
                want.name(),
                want.data_type(),
                got.fields().len(),
                schema.fields().len()
            ));
        };
        if field.name() != want.name() {
            return Err(format!(
                "column {i} is '{}', the declared output schema has '{}' there",
                field.name(),
                want.name()
            ));
        }
        if field.data_type() != want.data_type() {
            return Err(format!(
                "column '{}' is {}, declared {}",
                want.name(),
                field.data_type(),
                want.data_type()
            ));
        }
        if !want.is_nullable() && batch.column(i).null_count() > 0 {
            return Err(format!(
                "column '{}' holds nulls, declared not nullable",
                want.name()
            ));
        }
    }
    if got.fields().len() > schema.fields().len() {
        let extra = got.field(schema.fields().len());
        return Err(format!(
            "column '{}' is not in the declared output schema",
            extra.name()
        ));
    }
    Ok(())
}
