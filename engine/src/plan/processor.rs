//! Plans a query's [`TransformWithStateNode`] as a [`ProcessorExec`] of its
//! operator.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::processor::{ProcessorExec, ProcessorOperator, TransformWithStateNode};

/// Plans [`TransformWithStateNode`]s as [`ProcessorExec`]s of the query's
/// operators.
#[derive(Debug)]
pub(crate) struct ProcessorPlanner {
    /// The query's processors, with their operator numbers.
    operators: Vec<(usize, Arc<ProcessorOperator>)>,
}

impl ProcessorPlanner {
    /// A planner for the query's processors, by operator number.
    pub fn new(operators: Vec<(usize, Arc<ProcessorOperator>)>) -> Self {
        Self { operators }
    }
}

#[async_trait]
impl ExtensionPlanner for ProcessorPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<TransformWithStateNode>() else {
            return Ok(None);
        };
        let operator = super::numbered(&self.operators, node.operator, "stateful processor")?;
        Ok(Some(Arc::new(ProcessorExec::new(
            Arc::clone(&physical_inputs[0]),
            operator,
        ))))
    }
}
