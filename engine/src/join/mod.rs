//! Stream–stream joins: a join whose two inputs both read streams,
//! incremental in the way of Spark's symmetric hash join.
//!
//! Each side keeps the rows that may still match a row to come in its own
//! state store (`state/<operator>/left` and `…/right`), keyed by the join
//! key with the row's time and a row number. In each batch a new row of
//! either side joins with the other side's stored rows and, for a left
//! row, with the right rows of the same batch, so every pair is emitted
//! exactly once. The watermark and the time bounds of the join condition
//! ([`bounds`]) tell when a stored row can no longer match: it is then
//! evicted, and if it never matched and its side is preserved by an outer
//! join, emitted with nulls on the other side.

mod bounds;
mod exec;
mod operator;
mod side;

use std::fmt;
use std::sync::Arc;

use datafusion::common::{DFSchemaRef, JoinType};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{Expr, Extension, Join, LogicalPlan, UserDefinedLogicalNodeCore};

pub(crate) use bounds::JoinBounds;
pub(crate) use exec::StreamJoinExec;
pub(crate) use operator::{JoinOperator, JoinSpec};
pub(crate) use side::SideLayout;

use crate::watermark::WatermarkNode;

/// The join types a stream–stream join runs (Spark's five).
pub(crate) fn supported(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full | JoinType::LeftSemi
    )
}

/// Stands for a join of two streams in a batch's logical plan: the `Join`
/// it replaces, planned as a [`StreamJoinExec`] of operator `operator`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct StreamJoinNode {
    /// The join, with its inputs.
    pub join: Join,
    /// The query's number for this stateful operator.
    pub operator: usize,
}

impl StreamJoinNode {
    /// The node as a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The time bounds of the join (see [`JoinBounds`]).
    pub(crate) fn bounds(&self) -> JoinBounds {
        let watermarked = |plan: &LogicalPlan| -> Vec<String> {
            WatermarkNode::all_in(plan)
                .into_iter()
                .map(|w| w.column.name)
                .collect()
        };
        let (l, r) = (watermarked(&self.join.left), watermarked(&self.join.right));
        JoinBounds::read(
            [self.join.left.schema(), self.join.right.schema()],
            &self.join.on,
            self.join.filter.as_ref(),
            [&l, &r],
        )
    }

    /// How far behind the watermark the event times of the join's output
    /// may be: a stored row matched by a new one (past the watermark) is
    /// up to the condition's time bound older, so the operators after the
    /// join see the watermark that much earlier (Spark's join output
    /// watermark). Equal windows delay nothing; `None` when the condition
    /// bounds no time, and no watermark holds for the output.
    pub fn output_delay_ms(&self) -> Option<i64> {
        let bounds = self.bounds();
        match bounds.range {
            Some((_, Some(lo), Some(hi))) => Some(0.max(-lo).max(hi)),
            _ if bounds
                .expiry
                .iter()
                .all(|e| matches!(e, Some(bounds::Expiry::WindowEnd { .. }))) =>
            {
                Some(0)
            }
            _ => None,
        }
    }

    /// Describes the join for `explain` and the checkpoint's record of
    /// the query's operators: type, keys and condition.
    pub fn describe(&self) -> String {
        let keys: Vec<String> = self
            .join
            .on
            .iter()
            .map(|(l, r)| format!("{l} = {r}"))
            .collect();
        let mut text = format!(
            "StreamJoin {} on [{}]",
            self.join.join_type,
            keys.join(", ")
        );
        if let Some(filter) = &self.join.filter {
            text.push_str(&format!(" filter {filter}"));
        }
        text
    }
}

impl UserDefinedLogicalNodeCore for StreamJoinNode {
    fn name(&self) -> &str {
        "StreamJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.join.left, &self.join.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.join.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        LogicalPlan::Join(self.join.clone()).expressions()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} (operator {})", self.describe(), self.operator)
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DFResult<Self> {
        match LogicalPlan::Join(self.join.clone()).with_new_exprs(exprs, inputs)? {
            LogicalPlan::Join(join) => Ok(Self {
                join,
                operator: self.operator,
            }),
            other => Err(DataFusionError::Internal(format!(
                "a stream join's plan became {}",
                other.display()
            ))),
        }
    }
}
