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
    /// The query's deduplications, with their operator numbers.
    operators: Vec<(usize, Arc<DedupOperator>)>,
}

impl DedupPlanner {
    /// A planner for the query's deduplications, by operator number.
    pub fn new(operators: Vec<(usize, Arc<DedupOperator>)>) -> Self {
        Self { operators }
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
        let Some(node) = node.as_any().downcast_ref::<DeduplicateNode>() else {
            return Ok(None);
        };
        let operator = super::numbered(&self.operators, node.operator, "deduplication")?;
        Ok(Some(Arc::new(DedupExec::new(
            Arc::clone(&physical_inputs[0]),
            operator,
        ))))
    }
}
