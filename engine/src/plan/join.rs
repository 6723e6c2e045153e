//! Plans a query's [`StreamJoinNode`]s as [`StreamJoinExec`]s of their
//! join operators, and works out, when the query starts, what each join
//! operator evaluates: key expressions, condition, time bounds.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, NullEquality};
use datafusion::error::Result as DFResult;
use datafusion::execution::SessionState;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use crate::join::{JoinOperator, JoinSpec, SideLayout, StreamJoinExec, StreamJoinNode};

/// Plans [`StreamJoinNode`]s as [`StreamJoinExec`]s of the query's join
/// operators.
#[derive(Debug)]
pub(crate) struct JoinPlanner {
    /// The query's join operators, with their operator numbers.
    operators: Vec<(usize, Arc<JoinOperator>)>,
}

impl JoinPlanner {
    /// A planner for the query's joins, by operator number.
    pub fn new(operators: Vec<(usize, Arc<JoinOperator>)>) -> Self {
        Self { operators }
    }
}

#[async_trait]
impl ExtensionPlanner for JoinPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<StreamJoinNode>() else {
            return Ok(None);
        };
        let operator = super::numbered(&self.operators, node.operator, "stream join")?;
        Ok(Some(Arc::new(StreamJoinExec::new(
            Arc::clone(&physical_inputs[0]),
            Arc::clone(&physical_inputs[1]),
            operator,
        ))))
    }
}

/// What the join operator of `node` evaluates, planned in `state`.
pub(crate) fn join_spec(node: &StreamJoinNode, state: &SessionState) -> DFResult<JoinSpec> {
    let join = &node.join;
    let props = state.execution_props();
    let context = PhysicalPlanningContext::default();
    let schemas: [&DFSchema; 2] = [join.left.schema(), join.right.schema()];
    let pair = schemas[0].join(schemas[1])?;
    let filter = join
        .filter
        .as_ref()
        .map(|f| create_physical_expr(f, &pair, props, &context))
        .transpose()?;
    let bounds = node.bounds();
    let (range, range_columns) = match bounds.range {
        Some((columns, lo, hi)) => ((lo, hi), columns.map(Some)),
        None => ((None, None), [None, None]),
    };
    let [left_range, right_range] = range_columns;
    let [left_expiry, right_expiry] = bounds.expiry;
    let [left_time, right_time] = bounds.event_time;
    let side = |index: usize,
                label: &'static str,
                range_column,
                expiry,
                event_time|
     -> DFResult<SideLayout> {
        let schema = schemas[index];
        let keys = join
            .on
            .iter()
            .map(|pair| {
                let expr = if index == 0 { &pair.0 } else { &pair.1 };
                create_physical_expr(expr, schema, props, &context)
            })
            .collect::<DFResult<Vec<_>>>()?;
        Ok(SideLayout {
            label,
            schema: Arc::new(schema.as_arrow().clone()),
            keys,
            nulls_equal: join.null_equality == NullEquality::NullEqualsNull,
            range_column,
            expiry,
            event_time,
        })
    };
    Ok(JoinSpec {
        join_type: join.join_type,
        filter,
        pair_schema: Arc::new(pair.as_arrow().clone()),
        output_schema: Arc::new(join.schema.as_arrow().clone()),
        range,
        sides: [
            side(0, "left", left_range, left_expiry, left_time)?,
            side(1, "right", right_range, right_expiry, right_time)?,
        ],
    })
}
