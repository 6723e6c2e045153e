//! The two steps both window rewrites take: give an aggregation's input
//! one more column (each row's window or session), then group by that
//! column in place of the original key.

use std::sync::Arc;

use datafusion::error::Result;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::prelude::col;

/// Every column of `input`, then `extra`.
pub(super) fn input_columns_and(input: &LogicalPlan, extra: Expr) -> Vec<Expr> {
    let mut columns: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    columns.push(extra);
    columns
}

/// `aggregate` over `input`, with group key `index` replaced by `column`
/// under the key's original name, so the output schema is unchanged.
pub(super) fn group_by_column(
    aggregate: Aggregate,
    index: usize,
    input: LogicalPlan,
    column: &str,
) -> Result<LogicalPlan> {
    let original_name = aggregate.schema.field(index).name().clone();
    let mut group_expr = aggregate.group_expr;
    group_expr[index] = col(column).alias(original_name);
    Ok(LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::new(input),
        group_expr,
        aggregate.aggr_expr,
    )?))
}
