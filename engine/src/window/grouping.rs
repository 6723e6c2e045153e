//! Window keys that are not one value per row, made groupable.
//!
//! Two window functions only make sense as `GROUP BY` keys:
//!
//! - `window(ts, size, slide)` with `slide` ≠ `size` (Spark's sliding
//!   window): a row belongs to several windows. The aggregation's input gets
//!   the list `hop(ts, size, slide [, start_time])`, unnested, so each row
//!   appears once per window (and a row without event time in none), and
//!   groups by the unnested window.
//! - `session_window(ts, gap)`: see [`super::session`].
//!
//! [`WindowGroupingRule`] does both rewrites. The rewritten aggregation
//! keeps its output schema (the key keeps its name), so the rest of the
//! query is unchanged; streaming queries run the rewritten plan batch by
//! batch like any other.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{ScalarValue, UnnestOptions, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::AnalyzerRule;

use super::hop_udf;
use super::regroup::{group_by_column, input_columns_and};
use super::session::{self, session_call};

/// The column holding each row's sliding window after the rewrite.
pub const SLIDING_WINDOW_COLUMN: &str = "__tidemill_sliding_window";

/// Rewrites aggregations grouped by a sliding `window(ts, size, slide)` or
/// by `session_window(ts, gap)` into plans DataFusion runs (see the module
/// docs). Installed by [`super::register_window_functions`]; streaming
/// queries apply it themselves.
#[derive(Debug, Default)]
pub struct WindowGroupingRule;

impl AnalyzerRule for WindowGroupingRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        expand_grouping_windows(plan)
    }

    fn name(&self) -> &str {
        "tidemill_window_grouping"
    }
}

/// Applies [`WindowGroupingRule`] to `plan`.
pub fn expand_grouping_windows(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| match node {
        LogicalPlan::Aggregate(aggregate) => rewrite(aggregate),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// Which special window an aggregation groups by, and where.
enum Special {
    Session(usize),
    Sliding(usize),
}

fn rewrite(aggregate: Aggregate) -> Result<Transformed<LogicalPlan>> {
    let mut found = Vec::new();
    for (i, expr) in aggregate.group_expr.iter().enumerate() {
        if session_call(expr).is_some() {
            found.push(Special::Session(i));
        } else if sliding_call(expr).is_some() {
            found.push(Special::Sliding(i));
        }
    }
    let special = match found.len() {
        0 => return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate))),
        1 => found.remove(0),
        _ => {
            return plan_err!(
                "a query may group by one sliding window or session window, not several"
            );
        }
    };
    if let [Expr::GroupingSet(_)] = aggregate.group_expr.as_slice() {
        return plan_err!(
            "sliding and session windows are not supported with GROUPING SETS, CUBE or ROLLUP"
        );
    }
    Ok(Transformed::yes(match special {
        Special::Session(index) => session::rewrite(aggregate, index)?,
        Special::Sliding(index) => rewrite_sliding(aggregate, index)?,
    }))
}

/// The arguments of a `window(ts, size, slide [, start_time])` call whose
/// slide differs from its size.
fn sliding_call(expr: &Expr) -> Option<&[Expr]> {
    match expr {
        Expr::Alias(alias) => sliding_call(&alias.expr),
        Expr::ScalarFunction(ScalarFunction { func, args })
            if func.name() == "window" && args.len() >= 3 =>
        {
            let constant = |e: &Expr| match e {
                Expr::Literal(value, _) => Some(value.clone()),
                _ => None,
            };
            match (constant(&args[1]), constant(&args[2])) {
                (Some(size), Some(slide)) if !same_duration(&size, &slide) => Some(args),
                _ => None,
            }
        }
        _ => None,
    }
}

fn same_duration(a: &ScalarValue, b: &ScalarValue) -> bool {
    let nanos = |v: &ScalarValue| super::function::duration_nanos("window", "duration", Some(v));
    match (nanos(a), nanos(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn rewrite_sliding(aggregate: Aggregate, index: usize) -> Result<LogicalPlan> {
    let Some(args) = sliding_call(&aggregate.group_expr[index]) else {
        return plan_err!("group key {index} is not a sliding window");
    };
    let windows = Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::clone(hop_udf()),
        args.to_vec(),
    ))
    .alias(SLIDING_WINDOW_COLUMN);
    let projection = input_columns_and(&aggregate.input, windows);
    let input = LogicalPlanBuilder::from(Arc::clone(&aggregate.input))
        .project(projection)?
        // As SQL's UNNEST: a row without event time is in no window.
        .unnest_column_with_options(
            SLIDING_WINDOW_COLUMN,
            UnnestOptions::new().with_preserve_nulls(false),
        )?
        .build()?;
    group_by_column(aggregate, index, input, SLIDING_WINDOW_COLUMN)
}
