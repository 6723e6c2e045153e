//! The physical operator of a stream–stream join.

use std::fmt;
use std::sync::Arc;

use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};

use super::JoinOperator;

/// Reads all of the batch's rows of both inputs (concurrently) and hands them to the
/// join operator (see [`JoinOperator::process`]); one output partition.
#[derive(Debug)]
pub(crate) struct StreamJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    operator: Arc<JoinOperator>,
    properties: Arc<PlanProperties>,
}

impl StreamJoinExec {
    /// The join `operator` of `left` and `right`.
    pub(crate) fn new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        operator: Arc<JoinOperator>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(operator.output_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            left,
            right,
            operator,
            properties,
        }
    }
}

impl DisplayAs for StreamJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StreamJoinExec")
    }
}

impl ExecutionPlan for StreamJoinExec {
    fn name(&self) -> &str {
        "StreamJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
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
        let right = children.pop();
        let left = children.pop();
        match (left, right) {
            (Some(left), Some(right)) => {
                Ok(Arc::new(Self::new(left, right, Arc::clone(&self.operator))))
            }
            _ => Err(DataFusionError::Internal(
                "StreamJoinExec has two children".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "StreamJoinExec has one partition, asked for {partition}"
            )));
        }
        let (left, right) = (Arc::clone(&self.left), Arc::clone(&self.right));
        let operator = Arc::clone(&self.operator);
        let run = async move {
            // Both inputs at once: the left side's scan decodes on a task
            // of its own (aborted if this stream is dropped), so that the
            // two sides' reads can run on two threads.
            let left = SpawnedTask::spawn(datafusion::physical_plan::collect(
                left,
                Arc::clone(&context),
            ));
            let right = datafusion::physical_plan::collect(right, context).await?;
            let left = left.join_unwind().await.map_err(|e| {
                DataFusionError::Internal(format!("reading the join's left input: {e}"))
            })??;
            operator.process(left, right).await
        };
        Ok(crate::stateful::whole_batch_stream(
            self.schema(),
            "StreamJoinExec".to_string(),
            run,
        ))
    }
}
