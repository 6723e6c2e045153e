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
//! can have it), when the batch with that watermark begins. A null event time is never late and its key is kept.
//!
//! [`DeduplicateNode`] is the logical node
//! ([`crate::StreamingDataFrame::drop_duplicates`] adds it), planned as
//! [`DedupExec`] over the query's [`DedupOperator`], which holds the state
//! and implements [`crate::stateful::StatefulOperator`].

mod exec;
mod operator;
pub(crate) mod within_watermark;

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{
    Distinct, DistinctOn, Expr, Extension, LogicalPlan, Projection, UserDefinedLogicalNodeCore,
};

use crate::{Result, SourceTable, TidemillError};

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
    /// Spark's `dropDuplicatesWithinWatermark`: a key is kept from its
    /// first row's event time until the watermark passes that time plus
    /// the watermark's delay, whether or not the event time is a key.
    pub within_watermark: bool,
    /// The query's number for this stateful operator (set when the plan's
    /// operators are numbered; 0 before).
    pub operator: usize,
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

    /// What bounds the state: the event-time column whose rows at or
    /// below the watermark are late, and how long after a key's event time
    /// it expires, in milliseconds. Within the watermark, the input's
    /// watermarked column and its delay; otherwise an event-time key, at
    /// once. `None`: keys are kept forever.
    pub fn expiry(&self) -> Option<(String, i64)> {
        if self.within_watermark {
            let watermark = crate::watermark::WatermarkNode::all_in(&self.input)
                .into_iter()
                .next()?;
            return Some((watermark.column.name, watermark.delay_ms));
        }
        self.event_time_key().map(|key| (key, 0))
    }
}

/// SQL's `SELECT DISTINCT ON (keys) … FROM <stream>` as a deduplication
/// of the stream by `keys` (then the select list): on a stream, the first
/// row of each key, as `drop_duplicates`. A batch plan keeps DataFusion's
/// own `DISTINCT ON`. Keys must be columns, and an `ORDER BY` choosing the
/// first row is refused (a stream has no order across micro-batches).
pub(crate) fn distinct_on_as_dedup(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| match node {
        LogicalPlan::Distinct(Distinct::On(on)) if SourceTable::any_in(&on.input) => {
            let DistinctOn {
                on_expr,
                select_expr,
                sort_expr,
                input,
                ..
            } = on;
            if sort_expr.is_some() {
                return Err(refusal(
                    "with ORDER BY",
                    "picks the first row of each key by an order, and a stream has no order \
                     across micro-batches",
                    "Remove the ORDER BY: the stream keeps the first row of each key to arrive",
                ));
            }
            // DISTINCT ON (within_watermark(keys…)): Spark's
            // dropDuplicatesWithinWatermark.
            let (on_expr, within_watermark) = match on_expr.as_slice() {
                [Expr::ScalarFunction(f)] if f.name() == within_watermark::NAME => {
                    (f.args.clone(), true)
                }
                _ => (on_expr, false),
            };
            let keys = on_expr
                .into_iter()
                .map(|e| match e {
                    Expr::Column(c) => Ok(c),
                    other => Err(refusal(
                        &format!("({other})"),
                        "keys a stream by an expression",
                        "Compute the key as a column in a subquery, then DISTINCT ON that column",
                    )),
                })
                .collect::<DFResult<Vec<_>>>()?;
            let dedup = DeduplicateNode {
                input: Arc::unwrap_or_clone(input),
                keys,
                within_watermark,
                operator: 0,
            };
            let projected = Projection::try_new(select_expr, Arc::new(dedup.into_plan()))?;
            Ok(Transformed::yes(LogicalPlan::Projection(projected)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
    .map_err(|e| match e {
        DataFusionError::External(inner) => match inner.downcast::<TidemillError>() {
            Ok(ours) => *ours,
            Err(inner) => {
                TidemillError::datafusion("planning DISTINCT ON", DataFusionError::External(inner))
            }
        },
        other => TidemillError::datafusion("planning DISTINCT ON", other),
    })
}

fn refusal(what: &str, reason: &str, fix: &str) -> DataFusionError {
    DataFusionError::External(Box::new(TidemillError::Unsupported {
        operator: format!("DISTINCT ON {what}"),
        reason: reason.into(),
        fix: fix.into(),
    }))
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
        write!(f, "Deduplicate: keys=[{}]", keys.join(", "))?;
        if self.within_watermark {
            write!(f, " within watermark")?;
        }
        Ok(())
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
            within_watermark: self.within_watermark,
            operator: self.operator,
        })
    }
}
