//! Plans a query's [`WatermarkNode`]s as [`WatermarkExec`]s, keeping the
//! event-time statistics each node's operator reports to across batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::watermark::{EventTimeStats, WatermarkExec, WatermarkNode};

/// Plans [`WatermarkNode`]s as [`WatermarkExec`]s reporting to the
/// statistics registered for their ids.
#[derive(Debug, Default)]
pub struct WatermarkPlanner {
    stats: Mutex<HashMap<u64, Arc<EventTimeStats>>>,
}

impl WatermarkPlanner {
    /// The statistics of node `id`, created on first use.
    pub fn stats(&self, id: u64) -> Arc<EventTimeStats> {
        Arc::clone(
            self.stats
                .lock()
                .expect("planner lock poisoned")
                .entry(id)
                .or_default(),
        )
    }
}

#[async_trait]
impl ExtensionPlanner for WatermarkPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<WatermarkNode>() else {
            return Ok(None);
        };
        let input = Arc::clone(&physical_inputs[0]);
        let column_index = node.input.schema().index_of_column(&node.column)?;
        Ok(Some(Arc::new(WatermarkExec::new(
            input,
            column_index,
            node.column.flat_name(),
            self.stats(node.id),
        ))))
    }
}
