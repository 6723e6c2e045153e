//! An aggregation in DataFusion's physical terms: its group and aggregate
//! expressions, and the schemas of its state and its result.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatchOptions, StructArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Aggregate, EmptyRelation, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

use super::late_rows::{EVENT_TIME_KEY_COLUMN, WINDOW_END_COLUMN, WINDOW_START_COLUMN};
use super::{EventTimeKey, EventTimeKind, event_time_key};

/// The physical pieces of one aggregation, planned by DataFusion.
///
/// Rows of the aggregation's input become, per group, the *partial* schema:
/// the group keys, then every aggregate's state fields. That is what the
/// state store keeps (keys: the group columns; values: the state columns),
/// and what [`AggregateMode::PartialReduce`] merges and
/// [`AggregateMode::Final`] turns into the *output* schema.
#[derive(Debug)]
pub(crate) struct AggregateLayout {
    /// The group keys, over the input's columns.
    pub group_by: Arc<PhysicalGroupBy>,
    /// The aggregate functions, over the input's columns.
    pub aggr_expr: Vec<Arc<AggregateFunctionExpr>>,
    /// Per aggregate, its `FILTER (WHERE …)` clause.
    pub filter_expr: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The input's schema.
    pub input_schema: SchemaRef,
    /// Group columns, then state columns.
    pub partial_schema: SchemaRef,
    /// The result's schema.
    pub output_schema: SchemaRef,
    /// The number of group columns.
    pub num_keys: usize,
    /// The key that ties groups to event time, if any.
    pub event_time_key: Option<EventTimeKey>,
}

impl AggregateLayout {
    /// Plans `aggregate` with DataFusion's physical planner (over an empty
    /// input of the same schema) and keeps the expressions of its first
    /// phase.
    pub async fn plan(aggregate: &Aggregate, session: &dyn Session) -> DFResult<Self> {
        let placeholder = LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: false,
            schema: Arc::clone(aggregate.input.schema()),
        });
        let logical = LogicalPlan::Aggregate(Aggregate::try_new_with_schema(
            Arc::new(placeholder),
            aggregate.group_expr.clone(),
            aggregate.aggr_expr.clone(),
            Arc::clone(&aggregate.schema),
        )?);
        let physical = DefaultPhysicalPlanner::default()
            .create_physical_plan(&logical, session)
            .await?;
        let first = first_phase(&physical).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "no first-phase aggregate in the physical plan of {}",
                logical.display_indent()
            ))
        })?;
        let input_schema = first.input_schema();
        let group_by = Arc::new(first.group_expr().clone());
        let aggr_expr = first.aggr_expr().to_vec();
        let filter_expr = first.filter_expr().to_vec();
        let partial = AggregateExec::try_new(
            AggregateMode::Partial,
            Arc::clone(&group_by),
            aggr_expr.clone(),
            filter_expr.clone(),
            Arc::new(EmptyExec::new(Arc::clone(&input_schema))),
            Arc::clone(&input_schema),
        )?;
        let partial_schema = partial.schema();
        let layout = Self {
            num_keys: group_by.expr().len(),
            group_by,
            aggr_expr,
            filter_expr,
            input_schema,
            output_schema: Arc::clone(&partial_schema),
            partial_schema,
            event_time_key: event_time_key(aggregate),
        };
        let output_schema = layout
            .merge_exec(AggregateMode::Final, Vec::new())?
            .schema();
        Ok(Self {
            output_schema,
            ..layout
        })
    }

    /// The schema of the state store's keys: the group columns.
    pub fn key_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.partial_schema.fields()[..self.num_keys].to_vec(),
        ))
    }

    /// The schema of the state store's values: the state columns.
    pub fn value_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.partial_schema.fields()[self.num_keys..].to_vec(),
        ))
    }

    /// A merging phase ([`AggregateMode::PartialReduce`] or
    /// [`AggregateMode::Final`]) over partial states in `batches`.
    fn merge_exec(
        &self,
        mode: AggregateMode,
        batches: Vec<RecordBatch>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input =
            MemorySourceConfig::try_new_exec(&[batches], Arc::clone(&self.partial_schema), None)?;
        Ok(Arc::new(AggregateExec::try_new(
            mode,
            Arc::new(self.group_by.as_final()),
            self.aggr_expr.clone(),
            vec![None; self.aggr_expr.len()],
            input,
            Arc::clone(&self.input_schema),
        )?))
    }

    /// Whether the first phase, over rows with the event-time key appended
    /// (`keyed` in [`partial_over`](Self::partial_over)), groups a window by
    /// its `start` and `end` as two timestamp columns rather than by the
    /// window struct: DataFusion compares primitive group columns
    /// column-wise, where a struct is row-encoded.
    /// [`restore_window`](Self::restore_window) turns the two back into the
    /// struct. Not with grouping sets, whose null masks follow the
    /// expressions one to one.
    pub fn groups_by_window_bounds(&self) -> bool {
        matches!(&self.event_time_key, Some(key) if key.kind == EventTimeKind::Window)
            && !self.group_by.has_grouping_set()
    }

    /// The first phase ([`AggregateMode::Partial`]) over `input`, one
    /// output partition per input partition: a group has a row in each
    /// partition that holds it. If `keyed`, `input` holds the value of the
    /// event-time key in its last column (as
    /// [`LateRowsExec`](super::late_rows::LateRowsExec) appends it), or a
    /// window's bounds in its last two (see
    /// [`groups_by_window_bounds`](Self::groups_by_window_bounds)), and the
    /// aggregate groups by those columns instead of evaluating the key;
    /// pass its output batches through
    /// [`restore_window`](Self::restore_window).
    pub fn partial_over(
        &self,
        input: Arc<dyn ExecutionPlan>,
        keyed: bool,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let group_by = match (&self.event_time_key, keyed) {
            (Some(key), true) => {
                let schema = input.schema();
                let last = schema.fields().len() - 1;
                let mut expr = self.group_by.expr().to_vec();
                let mut null_expr = self.group_by.null_expr().to_vec();
                let mut groups = self.group_by.groups().to_vec();
                if self.groups_by_window_bounds() {
                    let (name, _) = expr.remove(key.index);
                    let end: Arc<dyn PhysicalExpr> = Arc::new(Column::new(WINDOW_END_COLUMN, last));
                    let start: Arc<dyn PhysicalExpr> =
                        Arc::new(Column::new(WINDOW_START_COLUMN, last - 1));
                    expr.insert(key.index, (end, format!("{name}.end")));
                    expr.insert(key.index, (start, format!("{name}.start")));
                    // Without grouping sets: one group of all expressions.
                    null_expr.clear();
                    groups = vec![vec![false; expr.len()]];
                } else {
                    expr[key.index].0 = Arc::new(Column::new(EVENT_TIME_KEY_COLUMN, last));
                }
                Arc::new(PhysicalGroupBy::new(
                    expr,
                    null_expr,
                    groups,
                    self.group_by.has_grouping_set(),
                ))
            }
            _ => Arc::clone(&self.group_by),
        };
        Ok(Arc::new(AggregateExec::try_new(
            AggregateMode::Partial,
            group_by,
            self.aggr_expr.clone(),
            self.filter_expr.clone(),
            input,
            Arc::clone(&self.input_schema),
        )?))
    }

    /// A batch of [`partial_over`](Self::partial_over)'s output as rows of
    /// the partial schema: when it grouped by a window's bounds, the two
    /// columns become the window struct again (null where `start` is).
    pub fn restore_window(&self, batch: RecordBatch, keyed: bool) -> DFResult<RecordBatch> {
        let Some(key) = &self.event_time_key else {
            return Ok(batch);
        };
        if !keyed || !self.groups_by_window_bounds() {
            return Ok(batch);
        }
        let DataType::Struct(fields) = self.partial_schema.field(key.index).data_type() else {
            return Err(DataFusionError::Internal(format!(
                "window key '{}' is not a struct in {:?}",
                key.name, self.partial_schema
            )));
        };
        let mut columns = batch.columns().to_vec();
        let bounds: Vec<ArrayRef> = columns.drain(key.index..key.index + 2).collect();
        let nulls = bounds[0].logical_nulls();
        let window = StructArray::try_new(fields.clone(), bounds, nulls)?;
        columns.insert(key.index, Arc::new(window));
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.partial_schema),
            columns,
            &options,
        )?)
    }

    /// Runs a merging phase ([`AggregateMode::PartialReduce`] or
    /// [`AggregateMode::Final`]) over the partial states in `batches` and
    /// returns its output (empty without input rows).
    pub async fn run(
        &self,
        mode: AggregateMode,
        batches: Vec<RecordBatch>,
        context: Arc<TaskContext>,
    ) -> DFResult<Vec<RecordBatch>> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        datafusion::physical_plan::collect(self.merge_exec(mode, batches)?, context).await
    }
}

/// The aggregate reading the raw input: `Partial` (or `Single` when
/// DataFusion combined the phases).
fn first_phase(plan: &Arc<dyn ExecutionPlan>) -> Option<AggregateExec> {
    let mut found = None;
    plan.apply(|node| {
        if let Some(aggregate) = node.downcast_ref::<AggregateExec>()
            && matches!(
                aggregate.mode(),
                AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned
            )
        {
            found = Some(aggregate.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan without errors cannot fail");
    found
}
