//! The physical operator of `transform_with_state`.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};

use super::ProcessorOperator;

/// Runs the batch's rows (every input partition's, in partition order)
/// through the query's processor (see [`ProcessorOperator::process`]), as
/// one partition.
#[derive(Debug)]
pub(crate) struct ProcessorExec {
    input: Arc<dyn ExecutionPlan>,
    operator: Arc<ProcessorOperator>,
    properties: Arc<PlanProperties>,
}

impl ProcessorExec {
    /// The processor `operator` over `input`.
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, operator: Arc<ProcessorOperator>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(operator.output_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            operator,
            properties,
        }
    }
}

impl DisplayAs for ProcessorExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TransformWithStateExec")
    }
}

impl ExecutionPlan for ProcessorExec {
    fn name(&self) -> &str {
        "TransformWithStateExec"
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
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "TransformWithStateExec has one partition, asked for {partition}"
            )));
        }
        let input = Arc::clone(&self.input);
        let operator = Arc::clone(&self.operator);
        let run = async move {
            // In partition order, whichever partition finishes first: a
            // re-run of the batch gives each key its rows in the same order.
            let partitions = datafusion::physical_plan::collect_partitioned(input, context).await?;
            operator
                .process(partitions.into_iter().flatten().collect())
                .await
        };
        Ok(crate::stateful::whole_batch_stream(
            self.schema(),
            "TransformWithStateExec".to_string(),
            run,
        ))
    }
}
