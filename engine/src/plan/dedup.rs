//! Plans a query's [`DeduplicateNode`] as a [`DedupExec`] of its
//! deduplication operator.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::dedup::{DedupExec, DedupOperator, DeduplicateNode};

/// Plans [`DeduplicateNode`]s as [`DedupExec`]s of the query's operator.
#[derive(Debug)]
pub(crate) struct DedupPlanner {
    operator: Arc<DedupOperator>,
}

impl DedupPlanner {
    /// A planner for the query's deduplication.
    pub fn new(operator: Arc<DedupOperator>) -> Self {
        Self { operator }
    }
}

#[async_trait]
impl ExtensionPlanner for DedupPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        if node.as_any().downcast_ref::<DeduplicateNode>().is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(DedupExec::new(
            Arc::clone(&physical_inputs[0]),
            Arc::clone(&self.operator),
        ))))
    }
}
