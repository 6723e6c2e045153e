//! The stateful operators of a streaming query: found in its optimized
//! plan, numbered, and replaced by the nodes the streaming planner plans.
//!
//! Operators are numbered bottom-up, inputs before the operators they feed
//! (a join's left input before its right), so the numbers are the same in
//! every batch and every run of an unchanged query; operator `n` keeps its
//! state in `<checkpoint>/state/<n>`.

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::LogicalPlan;

use crate::SourceTable;
use crate::aggregate::StreamingAggregateNode;
use crate::dedup::DeduplicateNode;
use crate::join::StreamJoinNode;
use crate::processor::TransformWithStateNode;
use crate::stateful::WatermarkRule;
use crate::watermark::WatermarkNode;

/// Replaces, in `plan`, each aggregation over streaming input by a
/// [`StreamingAggregateNode`], each join of two streams by a
/// [`StreamJoinNode`], and numbers them, the deduplications and the
/// stateful processors.
pub(crate) fn replace_stateful(plan: LogicalPlan) -> DFResult<LogicalPlan> {
    let mut next = 0;
    plan.transform_up(|node| {
        let replaced = match node {
            LogicalPlan::Aggregate(aggregate) if SourceTable::any_in(&aggregate.input) => {
                StreamingAggregateNode::new(aggregate, next).into_plan()
            }
            LogicalPlan::Join(join)
                if SourceTable::any_in(&join.left) && SourceTable::any_in(&join.right) =>
            {
                StreamJoinNode {
                    join,
                    operator: next,
                }
                .into_plan()
            }
            other => {
                if let Some(dedup) = DeduplicateNode::of(&other) {
                    DeduplicateNode {
                        operator: next,
                        ..dedup.clone()
                    }
                    .into_plan()
                } else if let Some(processor) = TransformWithStateNode::of(&other) {
                    TransformWithStateNode {
                        operator: next,
                        ..processor.clone()
                    }
                    .into_plan()
                } else {
                    return Ok(Transformed::no(other));
                }
            }
        };
        next += 1;
        Ok(Transformed::yes(replaced))
    })
    .map(|t| t.data)
}

/// One stateful operator of a plan [`replace_stateful`] has run on.
#[derive(Debug, Clone)]
pub(crate) enum StatefulNode {
    Aggregate(StreamingAggregateNode),
    Deduplicate(DeduplicateNode),
    Join(StreamJoinNode),
    Processor(TransformWithStateNode),
}

impl StatefulNode {
    /// The node of `plan`, if it is a stateful operator's.
    fn of(plan: &LogicalPlan) -> Option<Self> {
        let LogicalPlan::Extension(extension) = plan else {
            return None;
        };
        let node = extension.node.as_any();
        if let Some(n) = node.downcast_ref::<StreamingAggregateNode>() {
            return Some(Self::Aggregate(n.clone()));
        }
        if let Some(n) = node.downcast_ref::<DeduplicateNode>() {
            return Some(Self::Deduplicate(n.clone()));
        }
        if let Some(n) = node.downcast_ref::<TransformWithStateNode>() {
            return Some(Self::Processor(n.clone()));
        }
        node.downcast_ref::<StreamJoinNode>()
            .map(|n| Self::Join(n.clone()))
    }

    /// The operator's number.
    pub fn operator(&self) -> usize {
        match self {
            Self::Aggregate(n) => n.operator,
            Self::Deduplicate(n) => n.operator,
            Self::Join(n) => n.operator,
            Self::Processor(n) => n.operator,
        }
    }

    /// The operator's inputs.
    pub fn inputs(&self) -> Vec<&LogicalPlan> {
        match self {
            Self::Aggregate(n) => vec![&n.input],
            Self::Deduplicate(n) => vec![&n.input],
            Self::Join(n) => vec![&n.join.left, &n.join.right],
            Self::Processor(n) => vec![&n.input],
        }
    }

    /// Whether another stateful operator feeds this one.
    pub fn chained(&self) -> bool {
        self.inputs()
            .into_iter()
            .any(|input| !all_in(input).is_empty())
    }

    /// Which watermarks the operator runs with (see [`WatermarkRule`]), in
    /// the query `plan`.
    pub fn watermark_rule(&self, plan: &LogicalPlan) -> WatermarkRule {
        let ids = |plan: &LogicalPlan| -> std::collections::BTreeSet<u64> {
            WatermarkNode::all_in(plan).iter().map(|n| n.id).collect()
        };
        let seen: std::collections::BTreeSet<u64> =
            self.inputs().into_iter().flat_map(ids).collect();
        WatermarkRule {
            sees_every_watermark: seen == ids(plan),
            chained: self.chained(),
            delay_ms: self
                .inputs()
                .into_iter()
                .map(|input| output_delay(input).unwrap_or(0))
                .max()
                .unwrap_or(0),
        }
    }

    /// What the operator is, for `explain` and for the checkpoint's record
    /// of the query's operators: its kind, keys and parameters. A restart
    /// whose description differs is refused.
    pub fn describe(&self) -> String {
        match self {
            Self::Aggregate(n) => {
                let list = |exprs: &[datafusion::logical_expr::Expr]| {
                    exprs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!(
                    "StreamingAggregate group by [{}] aggregates [{}]",
                    list(&n.group_expr),
                    list(&n.aggr_expr)
                )
            }
            Self::Deduplicate(n) => {
                let keys: Vec<&str> = n.keys.iter().map(|k| k.name.as_str()).collect();
                format!(
                    "Deduplicate{} keys [{}]",
                    if n.within_watermark {
                        " within watermark"
                    } else {
                        ""
                    },
                    keys.join(", ")
                )
            }
            Self::Join(n) => n.describe(),
            Self::Processor(n) => n.describe(),
        }
    }
}

/// How far behind the query's watermark the event times of the rows out
/// of `plan` may be: the sum of the time bounds of the stream–stream joins
/// on the way (see [`StreamJoinNode::output_delay_ms`]); `None` past a join
/// whose condition bounds no time.
pub(crate) fn output_delay(plan: &LogicalPlan) -> Option<i64> {
    let mut below = 0;
    for input in plan.inputs() {
        below = below.max(output_delay(input)?);
    }
    match StatefulNode::of(plan) {
        Some(StatefulNode::Join(join)) => Some(below + join.output_delay_ms()?),
        _ => Some(below),
    }
}

/// The stateful operators in `plan` (after [`replace_stateful`]), by
/// number.
pub(crate) fn all_in(plan: &LogicalPlan) -> Vec<StatefulNode> {
    let mut found = Vec::new();
    plan.apply(|node| {
        if let Some(stateful) = StatefulNode::of(node) {
            found.push(stateful);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan without errors cannot fail");
    found.sort_by_key(StatefulNode::operator);
    found
}
