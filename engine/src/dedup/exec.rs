//! The physical operator of a deduplication.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DFResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use super::DedupOperator;

/// Passes on, partition by partition, the rows whose key is new (see
/// [`DedupOperator::first_rows`]).
#[derive(Debug)]
pub(crate) struct DedupExec {
    input: Arc<dyn ExecutionPlan>,
    operator: Arc<DedupOperator>,
    properties: Arc<PlanProperties>,
}

impl DedupExec {
    /// The deduplication `operator` over `input`.
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, operator: Arc<DedupOperator>) -> Self {
        let properties = Arc::clone(input.properties());
        Self {
            input,
            operator,
            properties,
        }
    }
}

impl DisplayAs for DedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DedupExec")
    }
}

impl ExecutionPlan for DedupExec {
    fn name(&self) -> &str {
        "DedupExec"
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
        let input = self.input.execute(partition, context)?;
        let operator = Arc::clone(&self.operator);
        let rows = input.then(move |batch| {
            let operator = Arc::clone(&operator);
            async move { operator.first_rows(batch?).await }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            rows.boxed(),
        )))
    }
}
