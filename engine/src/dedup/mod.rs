//! Streaming deduplication, as Spark's `dropDuplicates(cols)`: the first
//! row of each key is emitted, every later row with that key is dropped,
//! in this batch and in every later one.
//!
//! The keys seen are kept in the state store (DESIGN §4), keyed by the key
//! columns in arrow's row format (nulls equal to nulls, as Spark compares
//! them). Without an event-time column among the keys they are kept
//! forever. When a key column is a watermarked event time, a row at or
//! below the batch's watermark is late: it is dropped and counted, and a
//! key is evicted once the watermark passes its event time (no later row
//! can have it). A null event time is never late and its key is kept.
//!
//! [`DeduplicateNode`] is the logical node
//! ([`crate::StreamingDataFrame::drop_duplicates`] adds it), planned as
//! [`DedupExec`] over the query's [`DedupOperator`], which holds the state
//! and implements [`crate::stateful::StatefulOperator`].

mod exec;
mod operator;

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};

pub(crate) use exec::DedupExec;
pub(crate) use operator::DedupOperator;

/// Drops the rows whose key columns repeat an earlier row's, across
/// micro-batches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct DeduplicateNode {
    /// The plan below.
    pub input: LogicalPlan,
    /// The key columns.
    pub keys: Vec<Column>,
}

impl DeduplicateNode {
    /// The node if `plan` is one.
    pub fn of(plan: &LogicalPlan) -> Option<&DeduplicateNode> {
        match plan {
            LogicalPlan::Extension(Extension { node }) => {
                node.as_any().downcast_ref::<DeduplicateNode>()
            }
            _ => None,
        }
    }

    /// The first deduplication in `plan`, depth first.
    pub fn first_in(plan: &LogicalPlan) -> Option<DeduplicateNode> {
        let mut found = None;
        plan.apply(|node| {
            if let Some(d) = Self::of(node) {
                found = Some(d.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .expect("visiting a plan without errors cannot fail");
        found
    }

    /// Wraps the node as a logical plan.
    pub fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }

    /// The key column that is a watermarked event time of the input, if
    /// one is: its rows can be late and its keys expire.
    pub fn event_time_key(&self) -> Option<String> {
        let watermarked = crate::watermark::WatermarkNode::all_in(&self.input);
        self.keys
            .iter()
            .find(|k| watermarked.iter().any(|w| w.column.name == k.name))
            .map(|k| k.name.clone())
    }
}

impl UserDefinedLogicalNodeCore for DeduplicateNode {
    fn name(&self) -> &str {
        "Deduplicate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        self.keys.iter().cloned().map(Expr::Column).collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        write!(f, "Deduplicate: keys=[{}]", keys.join(", "))
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let keys = exprs
            .into_iter()
            .map(|e| match e {
                Expr::Column(c) => Ok(c),
                other => datafusion::common::plan_err!("Deduplicate keys are columns, got {other}"),
            })
            .collect::<DFResult<_>>()?;
        Ok(Self {
            input: inputs.swap_remove(0),
            keys,
        })
    }
}
