//! Planning: how a streaming query's plan becomes each batch's physical
//! plan.
//!
//! A streaming DataFrame is an ordinary DataFusion [`LogicalPlan`] with
//! [`SourceTable`](crate::SourceTable) scans and, where
//! `with_watermark` was called, [`WatermarkNode`](crate::watermark::WatermarkNode)s.
//! Its path, start to batch:
//!
//! ```text
//! DataFrame's logical plan
//!   │  at start(): grouping windows expanded, optimized, then
//!   ├─ validate           can it run incrementally in the output mode?  (validate.rs)
//!   │  at the first batch (every batch when a function in the plan
//!   │  depends on when it is planned, such as now()):
//!   ├─ replace_stateful    each stateful operator over streaming input
//!   │                      becomes its numbered node: aggregation,
//!   │                      deduplication, stream–stream join,
//!   │                      stateful processor                         (operators.rs)
//!   ├─ substitute          each streaming scan becomes a scan of its
//!   │                      source's slot, which each batch fills with
//!   │                      its rows                   (substitute.rs, batch_slot.rs)
//!   └─ physical planning   DataFusion's planner, with extensions:     (physical.rs)
//!        WatermarkNode          → WatermarkExec                        (watermark.rs)
//!        StreamingAggregateNode → StreamingAggregateExec                (aggregate.rs)
//!        DeduplicateNode        → DedupExec                            (dedup.rs)
//!        StreamJoinNode         → StreamJoinExec                       (join.rs)
//!        TransformWithStateNode → TransformWithStateExec               (processor.rs)
//! ```
//!
//! Later batches run the physical plan kept from the first, its nodes'
//! state reset (DataFusion's `reset_plan_states`), unless a node in it
//! produces a dynamic filter, which a reset would leave stale: such plans
//! are planned physically for each batch.
//!
//! A new stateful operator adds its node's replacement to `operators.rs`,
//! its checks to `validate.rs` and a planner file beside `aggregate.rs`;
//! the trigger loop drives it through the `StatefulOperator` trait
//! (`stateful.rs`), as it drives the aggregation.

mod aggregate;
mod dedup;
mod join;
mod operators;
mod physical;
mod processor;
mod substitute;
mod validate;
mod watermark;

pub(crate) use aggregate::AggregatePlanner;
pub(crate) use dedup::DedupPlanner;
pub(crate) use join::{JoinPlanner, join_spec};
pub(crate) use operators::{StatefulNode, all_in as stateful_nodes, replace_stateful};
pub use physical::StreamingQueryPlanner;
pub(crate) use physical::{BatchPlanner, copy_of_kept};
pub(crate) use processor::ProcessorPlanner;
pub use substitute::substitute;
pub use validate::validate;
pub use watermark::WatermarkPlanner;

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;

use crate::window::expand_grouping_windows;
use crate::{OutputMode, Result, TidemillError};

/// The query's plan ready to stream: grouping windows expanded, optimized
/// and validated for `mode`. Returns the session state, the plan and the
/// optimized plan.
pub(crate) fn prepare(
    df: DataFrame,
    mode: OutputMode,
) -> Result<(
    datafusion::execution::SessionState,
    LogicalPlan,
    LogicalPlan,
)> {
    let (state, plan) = df.into_parts();
    // Sliding and session windows in GROUP BY become an unnested list and
    // window functions (the analyzer does it too where
    // register_window_functions ran).
    let plan = expand_grouping_windows(plan)
        .map_err(|e| TidemillError::datafusion("planning grouping windows", e))?;
    // SQL's DISTINCT ON over a stream deduplicates it (before the
    // optimizer turns it into an aggregation).
    let plan = crate::dedup::distinct_on_as_dedup(plan)?;
    let optimized = state
        .optimize(&plan)
        .map_err(|e| TidemillError::datafusion("optimizing the streaming query", e))?;
    validate(&optimized, &plan, mode)?;
    Ok((state, plan, optimized))
}

/// Operator `number` of `operators` (a planner's operators of one kind,
/// with their numbers); `what` names the kind in the internal error a
/// missing one is.
pub(crate) fn numbered<T>(
    operators: &[(usize, Arc<T>)],
    number: usize,
    what: &str,
) -> DFResult<Arc<T>> {
    operators
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, op)| Arc::clone(op))
        .ok_or_else(|| DataFusionError::Internal(format!("no {what} operator {number}")))
}
