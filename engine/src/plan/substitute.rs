//! What changes in a query's logical plan to run it incrementally: the
//! aggregation over streaming input becomes a stateful operator's node
//! (once, when the plan is first optimized), and each batch's rows stand in
//! for the streaming scans.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::Result as DFResult;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Aggregate, LogicalPlan};

use crate::{Result, SourceTable, TidemillError};

/// The aggregation over streaming input in `plan`, if there is one (a
/// validated plan has at most one).
pub(crate) fn find_aggregation(plan: &LogicalPlan) -> Option<Aggregate> {
    let mut found = None;
    plan.apply(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node
            && SourceTable::any_in(&aggregate.input)
        {
            found = Some(aggregate.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan without errors cannot fail");
    found
}

/// Replaces the aggregation over streaming input in `plan` by a
/// [`StreamingAggregateNode`](crate::aggregate::StreamingAggregateNode) for
/// operator `operator`.
pub(crate) fn replace_aggregation(plan: LogicalPlan, operator: usize) -> DFResult<LogicalPlan> {
    plan.transform_up(|node| match node {
        LogicalPlan::Aggregate(aggregate) if SourceTable::any_in(&aggregate.input) => {
            Ok(Transformed::yes(
                crate::aggregate::StreamingAggregateNode::new(aggregate, operator).into_plan(),
            ))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// Replaces every streaming scan in `plan` by a scan of that source's rows
/// for this batch (`data`, keyed by [`SourceTable::id`]), keeping the
/// scan's projection and filters.
pub fn substitute(
    plan: &LogicalPlan,
    data: &HashMap<u64, Arc<dyn TableProvider>>,
) -> Result<LogicalPlan> {
    let transformed = plan
        .clone()
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(table) = SourceTable::of_scan(scan) else {
                return Ok(Transformed::no(node));
            };
            let rows = data.get(&table.id()).ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(format!(
                    "no data for streaming source {}",
                    table.source().description()
                ))
            })?;
            let mut scan = scan.clone();
            scan.source = provider_as_source(Arc::clone(rows));
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        })
        .map_err(|e| TidemillError::datafusion("preparing the batch plan", e))?;
    Ok(transformed.data)
}
