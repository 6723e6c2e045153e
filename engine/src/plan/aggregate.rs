//! Plans a query's [`StreamingAggregateNode`]s as
//! [`StreamingAggregateExec`]s of its aggregation operators, reusing the
//! physical layout of the aggregate from one batch to the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::aggregate::{
    AggregateLayout, AggregateOperator, StreamingAggregateExec, StreamingAggregateNode,
};

/// A layout with the expressions and input schema it was planned for.
type CachedLayout = (Vec<Expr>, SchemaRef, Arc<AggregateLayout>);

/// Plans [`StreamingAggregateNode`]s as [`StreamingAggregateExec`]s of the
/// query's aggregation operators.
#[derive(Debug, Default)]
pub(crate) struct AggregatePlanner {
    /// The query's aggregation operators, with their operator numbers.
    operators: Vec<(usize, Arc<AggregateOperator>)>,
    /// Each operator's last layout planned, by the expressions it was
    /// planned for: batches after the first reuse it.
    cache: Mutex<HashMap<usize, CachedLayout>>,
}

impl AggregatePlanner {
    /// A planner for the query's operators, by operator number.
    pub fn new(operators: Vec<(usize, Arc<AggregateOperator>)>) -> Self {
        Self {
            operators,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn layout(
        &self,
        node: &StreamingAggregateNode,
        input_schema: SchemaRef,
        session: &dyn Session,
    ) -> DFResult<Arc<AggregateLayout>> {
        let exprs = UserDefinedLogicalNode::expressions(node);
        if let Some((cached, schema, layout)) = self
            .cache
            .lock()
            .expect("cache lock poisoned")
            .get(&node.operator)
            && *cached == exprs
            && *schema == input_schema
        {
            return Ok(Arc::clone(layout));
        }
        let placeholder = LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
            produce_one_row: false,
            schema: Arc::clone(node.input.schema()),
        });
        let layout =
            Arc::new(AggregateLayout::plan(&node.aggregate_over(placeholder)?, session).await?);
        self.cache
            .lock()
            .expect("cache lock poisoned")
            .insert(node.operator, (exprs, input_schema, Arc::clone(&layout)));
        Ok(layout)
    }
}

#[async_trait]
impl ExtensionPlanner for AggregatePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<StreamingAggregateNode>() else {
            return Ok(None);
        };
        let operator = super::numbered(&self.operators, node.operator, "streaming aggregation")?;
        let input = Arc::clone(&physical_inputs[0]);
        let layout = self.layout(node, input.schema(), session).await?;
        if layout.partial_schema != operator.layout.partial_schema {
            return Err(DataFusionError::Internal(format!(
                "the aggregation's state changed between batches: {:?} became {:?}",
                operator.layout.partial_schema, layout.partial_schema
            )));
        }
        Ok(Some(Arc::new(StreamingAggregateExec::new(
            input, operator, layout,
        ))))
    }
}
