//! Turning a streaming DataFrame's plan into per-batch plans.
//!
//! A streaming DataFrame is an ordinary DataFusion [`LogicalPlan`] with
//! [`StreamingTable`] scans. At `start()` the engine checks the plan can run
//! incrementally ([`validate`]); for each micro-batch it substitutes the
//! batch's rows for every streaming scan ([`substitute`]) and hands the
//! result to DataFusion to optimize, plan and execute like any batch query.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::LogicalPlan;

use crate::watermark::WatermarkNode;
use crate::{OutputMode, Result, StreamingTable, TidemillError};

/// Checks that `plan` can run as a stream in `mode` and returns an error
/// naming the offending operator and the fix if not.
///
/// `plan` should be the optimized plan, so subqueries are already turned
/// into joins and the check sees what will run.
pub fn validate(plan: &LogicalPlan, mode: OutputMode) -> Result<()> {
    if !check(plan)? {
        return Err(TidemillError::Unsupported {
            operator: "query".into(),
            reason: "reads no streaming source".into(),
            fix: "Run it as a batch job with DataFrame::collect(), or read a source with read_stream()".into(),
        });
    }
    if mode == OutputMode::Complete {
        return Err(TidemillError::Unsupported {
            operator: "output mode complete".into(),
            reason:
                "needs a streaming aggregation to produce a result table, and this query has none"
                    .into(),
            fix: "Use append or update mode".into(),
        });
    }
    Ok(())
}

fn unsupported(operator: &str, reason: &str, fix: &str) -> TidemillError {
    TidemillError::Unsupported {
        operator: operator.into(),
        reason: reason.into(),
        fix: fix.into(),
    }
}

/// Validates `plan` bottom-up; returns whether it reads a streaming source.
fn check(plan: &LogicalPlan) -> Result<bool> {
    let mut inputs_streaming = Vec::new();
    for input in plan.inputs() {
        inputs_streaming.push(check(input)?);
    }
    let streaming = match plan {
        LogicalPlan::TableScan(scan) => StreamingTable::of_scan(scan).is_some(),
        _ => inputs_streaming.iter().any(|s| *s),
    };
    if !streaming {
        return Ok(false);
    }
    let stateful = "is stateful: it needs state kept across micro-batches, which streaming does not support yet";
    match plan {
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Unnest(_)
        | LogicalPlan::TableScan(_)
        | LogicalPlan::Repartition(_) => Ok(true),
        LogicalPlan::Extension(_) if WatermarkNode::of(plan).is_some() => Ok(true),
        LogicalPlan::Union(_) => {
            if inputs_streaming.iter().all(|s| *s) {
                Ok(true)
            } else {
                Err(unsupported(
                    "Union",
                    "of a streaming and a batch input would emit the batch rows again in every micro-batch",
                    "Union streams with streams only; to add static rows once, write them to the sink separately",
                ))
            }
        }
        LogicalPlan::Join(join) => {
            let (left, right) = (inputs_streaming[0], inputs_streaming[1]);
            if left && right {
                return Err(unsupported(
                    "Join",
                    "of two streams needs state for both sides, which streaming does not support yet",
                    "Join a stream with a static table instead",
                ));
            }
            let stream_side_ok = match join.join_type {
                JoinType::Inner => true,
                JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    left
                }
                JoinType::Right
                | JoinType::RightSemi
                | JoinType::RightAnti
                | JoinType::RightMark => right,
                JoinType::Full => false,
            };
            if stream_side_ok {
                Ok(true)
            } else {
                Err(unsupported(
                    &format!("{} join", join.join_type),
                    "with the stream on its non-preserved side would need to know, for every static row, \
                     whether a match ever arrives on the stream",
                    "Put the stream on the preserved side (the left of a LEFT join) or use an inner join",
                ))
            }
        }
        LogicalPlan::Aggregate(_) => Err(unsupported(
            "Aggregate (GROUP BY / aggregate function)",
            stateful,
            "Aggregate the output with a batch job over the sink's committed output",
        )),
        LogicalPlan::Distinct(_) => Err(unsupported(
            "Distinct",
            stateful,
            "Deduplicate the output with a batch job over the sink's committed output",
        )),
        LogicalPlan::Window(_) => Err(unsupported(
            "Window function (OVER)",
            "needs rows from other micro-batches",
            "Use it in a batch job over the sink's committed output",
        )),
        LogicalPlan::Sort(_) => Err(unsupported(
            "Sort (ORDER BY)",
            "cannot order an unbounded stream",
            "Remove ORDER BY, or sort the sink's committed output in a batch job",
        )),
        LogicalPlan::Limit(_) => Err(unsupported(
            "Limit",
            stateful,
            "Remove LIMIT, or apply it to the sink's committed output in a batch job",
        )),
        other => Err(unsupported(
            &format!("{} node", other.display()),
            "is not supported on a streaming input",
            "Use filters, projections, unnest, unions of streams and stream-static joins",
        )),
    }
}

/// Replaces every streaming scan in `plan` by a scan of that source's rows
/// for this batch (`data`, keyed by [`StreamingTable::id`]), keeping the
/// scan's projection and filters.
pub fn substitute(plan: &LogicalPlan, data: &HashMap<u64, Arc<MemTable>>) -> Result<LogicalPlan> {
    let transformed = plan
        .clone()
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(table) = StreamingTable::of_scan(scan) else {
                return Ok(Transformed::no(node));
            };
            let rows = data.get(&table.id()).ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(format!(
                    "no data for streaming source {}",
                    table.provider().description()
                ))
            })?;
            let mut scan = scan.clone();
            scan.source = provider_as_source(Arc::clone(rows) as _);
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        })
        .map_err(|e| TidemillError::datafusion("preparing the batch plan", e))?;
    Ok(transformed.data)
}
