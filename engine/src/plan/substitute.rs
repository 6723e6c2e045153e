//! Where the batches' rows enter a query's logical plan: each streaming
//! scan becomes a scan of the table its source's rows are put in (stateful
//! operators are replaced in `operators.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
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

/// Replaces every streaming scan in `plan` by a scan of that source's
/// table in `data` (keyed by [`SourceTable::id`]), keeping the scan's
/// projection and filters.
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
