//! Late rows split from a streaming aggregation's input while it streams
//! into the partial aggregate, batch by batch, so the input is never
//! collected in memory first.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, AsArray, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions, make_array,
};
use arrow::buffer::NullBuffer;
use arrow::compute::kernels::cmp::lt_eq;
use arrow::compute::{filter_record_batch, not, or, prep_null_mask_filter};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DFResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use super::event_time::{closing_time, watermark_in_unit};
use super::{EventTimeKey, EventTimeKind};

/// Which input rows are late: those whose group (the value of the
/// event-time key) the watermark has already closed. Before the first
/// watermark no row is late, but the key is still evaluated once and passed
/// on, so the partial aggregate groups the same way in every batch.
#[derive(Debug)]
pub(crate) struct LateRowRule {
    /// The event-time key's expression over the input.
    pub expr: Arc<dyn PhysicalExpr>,
    pub key: EventTimeKey,
    /// The watermark the batch runs with (`None`: none yet).
    pub watermark_ms: Option<i64>,
    /// Whether the key is a window passed on as its `start` and `end`
    /// columns rather than as one struct (see
    /// [`AggregateLayout::groups_by_window_bounds`](super::AggregateLayout::groups_by_window_bounds)).
    pub window_bounds: bool,
}

impl LateRowRule {
    /// The input's schema with the event-time key's value appended as
    /// [`EVENT_TIME_KEY_COLUMN`] (or, with
    /// [`window_bounds`](Self::window_bounds), the window's `start` and `end`
    /// as [`WINDOW_START_COLUMN`] and [`WINDOW_END_COLUMN`]), as
    /// [`split`](Self::split) returns the rows to aggregate.
    pub fn keyed_schema(&self, input: &Schema) -> DFResult<SchemaRef> {
        let key = self.expr.return_field(input)?;
        let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
        match key.data_type() {
            DataType::Struct(bounds) if self.window_bounds => {
                for (bound, name) in bounds.iter().zip([WINDOW_START_COLUMN, WINDOW_END_COLUMN]) {
                    // Null where the window is.
                    fields.push(Arc::new(
                        bound.as_ref().clone().with_name(name).with_nullable(true),
                    ));
                }
            }
            _ => fields.push(Arc::new(
                key.as_ref().clone().with_name(EVENT_TIME_KEY_COLUMN),
            )),
        }
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            input.metadata().clone(),
        )))
    }

    /// Splits `batch` into the rows to aggregate, with the event-time key's
    /// value appended (schema: [`keyed_schema`](Self::keyed_schema)), so
    /// the aggregate groups by it without evaluating the key again; the
    /// late rows as they came; and the rows without an event time.
    ///
    /// A row whose window or session is null (its event time is null) is in
    /// no window, as Spark's `window()` puts it: it is left out of the
    /// aggregation, not an error. A null plain event-time key is a group of
    /// its own, as in Spark, and never late.
    pub fn split(&self, batch: RecordBatch, keyed_schema: &SchemaRef) -> DFResult<Split> {
        let value = self.expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        // Rows in no window: the window (or its end) is null.
        let no_time = match self.key.kind {
            EventTimeKind::Window | EventTimeKind::Session => {
                let end = value.as_struct_opt().and_then(|s| s.column_by_name("end"));
                let nulls = NullBuffer::union(
                    value.logical_nulls().as_ref(),
                    end.and_then(|end| end.nulls()),
                );
                nulls
                    .filter(|n| n.null_count() > 0)
                    .map(|n| BooleanArray::new(!n.inner(), None))
            }
            EventTimeKind::Timestamp => None,
        };
        let mut columns = batch.columns().to_vec();
        match value.as_struct_opt() {
            Some(window) if self.window_bounds => {
                for bound in window.columns() {
                    let nulls = NullBuffer::union(window.nulls(), bound.nulls());
                    let data = bound.to_data().into_builder().nulls(nulls).build()?;
                    columns.push(make_array(data));
                }
            }
            _ => columns.push(Arc::clone(&value)),
        }
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let keyed = RecordBatch::try_new_with_options(Arc::clone(keyed_schema), columns, &options)?;
        // Late: the group closes at or below the watermark (only against a
        // watermark; a null time never closes).
        let late = match self.watermark_ms {
            Some(watermark_ms) => {
                let closing = closing_time(&value, &self.key)?;
                let bound = Int64Array::new_scalar(watermark_in_unit(watermark_ms, self.key.unit));
                let late = lt_eq(&closing, &bound)?;
                let late = match late.null_count() {
                    0 => late,
                    _ => prep_null_mask_filter(&late),
                };
                (late.true_count() > 0).then_some(late)
            }
            None => None,
        };
        let dropped = match (&late, &no_time) {
            (None, None) => {
                return Ok(Split {
                    kept: keyed,
                    late: None,
                    no_time: None,
                });
            }
            (Some(late), None) => late.clone(),
            (None, Some(no_time)) => no_time.clone(),
            (Some(late), Some(no_time)) => or(late, no_time)?,
        };
        let pick = |mask: &Option<BooleanArray>| -> DFResult<Option<RecordBatch>> {
            Ok(match mask {
                Some(mask) => Some(filter_record_batch(&batch, mask)?),
                None => None,
            })
        };
        Ok(Split {
            kept: filter_record_batch(&keyed, &not(&dropped)?)?,
            late: pick(&late)?,
            no_time: pick(&no_time)?,
        })
    }
}

/// A batch of input split by [`LateRowRule::split`].
#[derive(Debug)]
pub(crate) struct Split {
    /// The rows to aggregate, the key appended.
    pub kept: RecordBatch,
    /// The late rows, as they came; `None` when there are none.
    pub late: Option<RecordBatch>,
    /// The rows in no window (a null event time), as they came; `None`
    /// when there are none.
    pub no_time: Option<RecordBatch>,
}

/// The column [`LateRowsExec`] appends to the rows it passes on: the value
/// of the event-time key, which the partial aggregate then groups by.
pub(crate) const EVENT_TIME_KEY_COLUMN: &str = "__tidemill_event_time_key";

/// The column [`LateRowsExec`] appends for a window's `start`, in place of
/// [`EVENT_TIME_KEY_COLUMN`], when the aggregate groups by the window's
/// bounds.
pub(crate) const WINDOW_START_COLUMN: &str = "__tidemill_window_start";

/// The column appended for a window's `end` beside
/// [`WINDOW_START_COLUMN`].
pub(crate) const WINDOW_END_COLUMN: &str = "__tidemill_window_end";

/// What a [`LateRowsExec`] saw: the late rows it took out and, per input
/// partition, the rows it let through.
#[derive(Debug)]
pub(crate) struct InputTally {
    late: Mutex<Vec<RecordBatch>>,
    no_time: Mutex<Vec<RecordBatch>>,
    kept: Vec<AtomicU64>,
}

impl InputTally {
    pub fn new(partitions: usize) -> Self {
        Self {
            late: Mutex::new(Vec::new()),
            no_time: Mutex::new(Vec::new()),
            kept: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The late rows, taken out.
    pub fn take_late(&self) -> Vec<RecordBatch> {
        std::mem::take(&mut *self.late.lock().expect("late rows lock poisoned"))
    }

    /// The rows in no window (a null event time), taken out.
    pub fn take_no_time(&self) -> Vec<RecordBatch> {
        std::mem::take(&mut *self.no_time.lock().expect("rows lock poisoned"))
    }

    /// How many input partitions had rows to aggregate.
    pub fn partitions_with_rows(&self) -> usize {
        self.kept
            .iter()
            .filter(|n| n.load(Ordering::Relaxed) > 0)
            .count()
    }
}

/// Passes its input through, less the late rows and with the event-time
/// key's value appended (with a [`LateRowRule`]), counting what it passes
/// in an [`InputTally`].
#[derive(Debug)]
pub(crate) struct LateRowsExec {
    input: Arc<dyn ExecutionPlan>,
    rule: Option<Arc<LateRowRule>>,
    tally: Arc<InputTally>,
    properties: Arc<PlanProperties>,
}

impl LateRowsExec {
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        rule: Option<Arc<LateRowRule>>,
        tally: Arc<InputTally>,
    ) -> DFResult<Self> {
        let properties = match &rule {
            None => Arc::clone(input.properties()),
            Some(rule) => {
                let of_input = input.properties();
                Arc::new(PlanProperties::new(
                    EquivalenceProperties::new(rule.keyed_schema(&input.schema())?),
                    of_input.partitioning.clone(),
                    of_input.emission_type,
                    of_input.boundedness,
                ))
            }
        };
        Ok(Self {
            input,
            rule,
            tally,
            properties,
        })
    }
}

impl DisplayAs for LateRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.rule.as_deref() {
            Some(LateRowRule {
                key,
                watermark_ms: Some(watermark_ms),
                ..
            }) => write!(
                f,
                "LateRowsExec: drops rows of '{}' closed by watermark {watermark_ms} ms",
                key.name
            ),
            Some(rule) => write!(
                f,
                "LateRowsExec: no watermark yet; passes on '{}'",
                rule.key.name
            ),
            None => write!(f, "LateRowsExec: no event-time key"),
        }
    }
}

impl ExecutionPlan for LateRowsExec {
    fn name(&self) -> &str {
        "LateRowsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            self.rule.clone(),
            Arc::clone(&self.tally),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let (rule, tally) = (self.rule.clone(), Arc::clone(&self.tally));
        let schema = self.schema();
        let keyed_schema = Arc::clone(&schema);
        let batches = self.input.execute(partition, context)?.map(move |batch| {
            let (kept, late, no_time) = match &rule {
                Some(rule) => {
                    let split = rule.split(batch?, &keyed_schema)?;
                    (split.kept, split.late, split.no_time)
                }
                None => (batch?, None, None),
            };
            if let Some(late) = late {
                tally
                    .late
                    .lock()
                    .expect("late rows lock poisoned")
                    .push(late);
            }
            if let Some(no_time) = no_time {
                tally
                    .no_time
                    .lock()
                    .expect("rows lock poisoned")
                    .push(no_time);
            }
            if let Some(n) = tally.kept.get(partition) {
                n.fetch_add(kept.num_rows() as u64, Ordering::Relaxed);
            }
            Ok(kept)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::{Field, TimeUnit};
    use datafusion::common::DFSchema;
    use datafusion::execution::context::ExecutionProps;
    use datafusion::logical_expr::col;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::physical_expr::create_physical_expr;

    use super::*;
    use crate::aggregate::EventTimeKind;
    use crate::window::tumble;

    /// A rule for a one-minute tumbling window over `t`, and a batch of
    /// times at and around the first two windows' bounds, one null.
    fn rule_and_batch(watermark_ms: Option<i64>) -> (LateRowRule, RecordBatch) {
        let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
        let schema = Arc::new(Schema::new(vec![Field::new("t", ms, true)]));
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let expr = create_physical_expr(
            &tumble(col("t"), "1 minute"),
            &df_schema,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )
        .unwrap();
        let rule = LateRowRule {
            expr,
            key: EventTimeKey {
                index: 0,
                kind: EventTimeKind::Window,
                unit: TimeUnit::Millisecond,
                name: "window".into(),
            },
            watermark_ms,
            window_bounds: true,
        };
        let times = TimestampMillisecondArray::from(vec![
            Some(0),
            Some(59_999),
            Some(60_000),
            None,
            Some(125_000),
        ]);
        let batch = RecordBatch::try_new(schema, vec![Arc::new(times)]).unwrap();
        (rule, batch)
    }

    fn millis(batch: &RecordBatch, column: &str) -> Vec<Option<i64>> {
        let column = batch.column_by_name(column).unwrap();
        column
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
            .iter()
            .collect()
    }

    #[test]
    fn before_the_first_watermark_no_row_is_late_and_the_bounds_are_passed_on() {
        let (rule, batch) = rule_and_batch(None);
        let schema = rule.keyed_schema(&batch.schema()).unwrap();
        let Split {
            kept,
            late,
            no_time,
        } = rule.split(batch, &schema).unwrap();
        assert!(late.is_none());
        // The row without a time is in no window: left out.
        assert_eq!(millis(&no_time.unwrap(), "t"), [None]);
        assert_eq!(kept.schema(), schema);
        assert_eq!(
            millis(&kept, WINDOW_START_COLUMN),
            [Some(0), Some(0), Some(60_000), Some(120_000)]
        );
        assert_eq!(
            millis(&kept, WINDOW_END_COLUMN),
            [Some(60_000), Some(60_000), Some(120_000), Some(180_000)]
        );
    }

    #[test]
    fn rows_of_windows_the_watermark_closed_are_split_off() {
        // The first window ends at 60 000: a watermark there closes it.
        let (rule, batch) = rule_and_batch(Some(60_000));
        let schema = rule.keyed_schema(&batch.schema()).unwrap();
        let split = rule.split(batch, &schema).unwrap();
        assert_eq!(millis(&split.late.unwrap(), "t"), [Some(0), Some(59_999)]);
        assert_eq!(millis(&split.no_time.unwrap(), "t"), [None]);
        assert_eq!(millis(&split.kept, "t"), [Some(60_000), Some(125_000)]);
        assert_eq!(
            millis(&split.kept, WINDOW_START_COLUMN),
            [Some(60_000), Some(120_000)]
        );
    }
}
