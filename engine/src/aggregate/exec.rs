//! The physical operator of a streaming aggregation, and its planner.

use std::fmt;
use std::sync::Arc;

use arrow::compute::concat_batches;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::aggregates::AggregateMode;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};

use super::late_rows::{InputTally, LateRowsExec};
use super::operator::Lookup;
use super::{AggregateLayout, AggregateOperator};
use crate::OutputMode;

/// Runs one batch of a streaming aggregation: the input's rows are
/// aggregated, merged with the state, stored, and the rows the output mode
/// emits are returned (one partition).
#[derive(Debug)]
pub(crate) struct StreamingAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    operator: Arc<AggregateOperator>,
    layout: Arc<AggregateLayout>,
    properties: Arc<PlanProperties>,
}

impl StreamingAggregateExec {
    /// The operator over `input` for aggregation `operator`, laid out as
    /// `layout`.
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        operator: Arc<AggregateOperator>,
        layout: Arc<AggregateLayout>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&layout.output_schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            operator,
            layout,
            properties,
        }
    }

    /// The batch's output rows.
    async fn run(
        input: Arc<dyn ExecutionPlan>,
        operator: Arc<AggregateOperator>,
        layout: Arc<AggregateLayout>,
        context: Arc<TaskContext>,
    ) -> DFResult<Vec<RecordBatch>> {
        // Each input partition streams through the late-row split into the
        // partial aggregate, the partitions in parallel: the input is
        // never collected in memory.
        let tally = Arc::new(InputTally::new(
            input.properties().partitioning.partition_count(),
        ));
        let rule = operator.late_row_rule().await.map(Arc::new);
        let keyed = rule.is_some();
        let gated = Arc::new(LateRowsExec::new(input, rule, Arc::clone(&tally))?);
        let mut partial = datafusion::physical_plan::collect(
            layout.partial_over(gated, keyed)?,
            Arc::clone(&context),
        )
        .await?
        .into_iter()
        .map(|batch| layout.restore_window(batch, keyed))
        .collect::<DFResult<Vec<_>>>()?;
        operator.record_late_rows(tally.take_late()).await;
        operator
            .record_rows_without_event_time(tally.take_no_time())
            .await;
        let with_rows = tally.partitions_with_rows();
        // Without input rows there is no group to change (a global
        // aggregate's first phase still emits its empty state).
        if with_rows == 0 {
            partial.clear();
        }
        partial.retain(|b| b.num_rows() > 0);
        // The merged states of the groups this batch changed.
        let mut changed = Vec::new();
        if !partial.is_empty() {
            let partial = concat_batches(&layout.partial_schema, &partial)?;
            let states = if operator.groups_by_session() {
                // Batch sessions may merge with stored ones, and with each
                // other through them: always re-aggregate.
                Some(operator.merge_sessions(&partial).await?)
            } else {
                // Rows from several partitions merge anyway: no need to
                // look for repeated groups.
                let merges_anyway = with_rows > 1;
                match operator.lookup(&partial, !merges_anyway).await? {
                    Lookup::Stored(stored) => Some(vec![partial.clone(), stored]),
                    // A group with several rows (from several partitions,
                    // or an empty global state beside the real one) still
                    // merges.
                    Lookup::NoneStored { repeats } if repeats || merges_anyway => {
                        Some(vec![partial.clone()])
                    }
                    Lookup::NoneStored { .. } => None,
                }
            };
            changed = match states {
                Some(states) => {
                    layout
                        .run(AggregateMode::PartialReduce, states, Arc::clone(&context))
                        .await?
                }
                // No group was in the state nor in two partitions: the
                // partial states are the merged ones.
                None => vec![partial],
            };
            operator.store(&changed).await?;
        }
        let closed = operator.take_closed().await?;
        let emit = match operator.mode {
            OutputMode::Update => changed,
            OutputMode::Append => closed,
            OutputMode::Complete => operator.all().await?,
        };
        layout.run(AggregateMode::Final, emit, context).await
    }
}

impl StreamingAggregateExec {
    /// The operator as errors name it.
    fn layout_name(&self) -> String {
        format!(
            "StreamingAggregateExec (the query's streaming aggregation, {} keys, {} aggregates)",
            self.layout.num_keys,
            self.layout.aggr_expr.len()
        )
    }
}

impl DisplayAs for StreamingAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StreamingAggregateExec: mode={:?}, keys={}, aggregates={}",
            self.operator.mode,
            self.layout.num_keys,
            self.layout.aggr_expr.len()
        )
    }
}

impl ExecutionPlan for StreamingAggregateExec {
    fn name(&self) -> &str {
        "StreamingAggregateExec"
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
            Arc::clone(&self.operator),
            Arc::clone(&self.layout),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "StreamingAggregateExec has one partition, asked for {partition}"
            )));
        }
        Ok(crate::stateful::whole_batch_stream(
            self.schema(),
            self.layout_name(),
            Self::run(
                Arc::clone(&self.input),
                Arc::clone(&self.operator),
                Arc::clone(&self.layout),
                context,
            ),
        ))
    }
}
