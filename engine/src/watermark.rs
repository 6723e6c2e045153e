//! Event time and watermarks (DESIGN §4).
//!
//! `with_watermark(column, delay)` puts a [`WatermarkNode`] in a streaming
//! plan. When a batch runs, the node becomes a [`WatermarkExec`], which passes
//! rows through unchanged and records the largest event time it saw. At the
//! end of batch N the engine turns those maxima into the watermark batch N+1
//! runs with ([`WatermarkTracker`]): per node, the largest event time seen
//! so far minus the node's delay; across nodes, their minimum (or maximum,
//! by [`MultipleWatermarkPolicy`]); and never lower than before. The
//! watermark is recorded in the offset and commit logs, so a restart resumes
//! with it.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, Int64Array};
use arrow::compute::kernels::aggregate::max;
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, ExprSchema};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{Result, TidemillError};

/// How the watermarks of several watermarked inputs combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultipleWatermarkPolicy {
    /// The slowest input sets the pace: no input's late rows are dropped
    /// early (Spark's default).
    #[default]
    Min,
    /// The fastest input sets the pace: results come sooner, and rows of
    /// slower inputs may be dropped as late.
    Max,
}

/// Parses a delay such as `"10 minutes"`, `"30 s"`, `"1 hour"` or
/// `"250 milliseconds"`.
pub fn parse_delay(text: &str) -> Result<Duration> {
    let invalid = || {
        TidemillError::Config(format!(
            "invalid delay '{text}': expected a number and a unit, e.g. '10 seconds', '5 minutes', '1 hour'"
        ))
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(invalid)?;
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let unit_seconds = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 0.001,
        "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => return Err(invalid()),
    };
    if !number.is_finite() || number < 0.0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(number * unit_seconds))
}

/// Milliseconds per unit of a timestamp type.
fn millis_divisor(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => -1000, // negative: multiply
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1_000_000,
    }
}

/// A watermark declared on a streaming plan: rows pass through; the engine
/// tracks the largest `column` value seen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd)]
pub struct WatermarkNode {
    /// Identifies the node within the process (stable across batches).
    pub id: u64,
    /// The plan below.
    pub input: LogicalPlan,
    /// The event-time column.
    pub column: Column,
    /// How late rows may arrive, in milliseconds.
    pub delay_ms: i64,
}

impl Hash for WatermarkNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
        self.input.hash(state);
        self.column.hash(state);
        self.delay_ms.hash(state);
    }
}

impl WatermarkNode {
    /// Wraps `input` with a watermark on `column`, which must be a
    /// timestamp column of `input`.
    pub fn try_new(input: LogicalPlan, column: &str, delay: Duration) -> Result<Self> {
        let schema = input.schema();
        let column = Column::from_qualified_name(column);
        let field = schema.field_from_column(&column).map_err(|_| {
            TidemillError::Config(format!(
                "with_watermark: no column '{}' (columns: {})",
                column.flat_name(),
                schema
                    .columns()
                    .iter()
                    .map(|c| c.flat_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            return Err(TidemillError::Config(format!(
                "with_watermark: column '{}' has type {}, an event-time column must be a timestamp",
                column.flat_name(),
                field.data_type()
            )));
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            input,
            column,
            delay_ms: delay.as_millis() as i64,
        })
    }

    /// The node in `plan`'s extension node, if it is one.
    pub fn of(plan: &LogicalPlan) -> Option<&WatermarkNode> {
        match plan {
            LogicalPlan::Extension(Extension { node }) => {
                node.as_any().downcast_ref::<WatermarkNode>()
            }
            _ => None,
        }
    }

    /// All watermark nodes in `plan`.
    pub fn all_in(plan: &LogicalPlan) -> Vec<WatermarkNode> {
        let mut found = Vec::new();
        plan.apply(|node| {
            if let Some(w) = Self::of(node) {
                found.push(w.clone());
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
}

impl UserDefinedLogicalNodeCore for WatermarkNode {
    fn name(&self) -> &str {
        "Watermark"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "Watermark: {} delay={}ms",
            self.column.flat_name(),
            self.delay_ms
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        Ok(Self {
            input: inputs.swap_remove(0),
            ..self.clone()
        })
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }
}

/// The largest event time a [`WatermarkExec`] saw in the current batch.
#[derive(Debug, Default)]
pub struct EventTimeStats {
    max_ms: Mutex<Option<i64>>,
}

impl EventTimeStats {
    fn observe(&self, value: i64) {
        let mut max = self.max_ms.lock().expect("stats lock poisoned");
        *max = Some(max.map_or(value, |m| m.max(value)));
    }

    /// Takes the batch's maximum and resets it for the next batch.
    pub fn take(&self) -> Option<i64> {
        self.max_ms.lock().expect("stats lock poisoned").take()
    }

    /// The batch's maximum so far, left in place.
    pub fn peek(&self) -> Option<i64> {
        *self.max_ms.lock().expect("stats lock poisoned")
    }
}

/// Passes batches through and records the largest event time.
#[derive(Debug)]
pub struct WatermarkExec {
    input: Arc<dyn ExecutionPlan>,
    column_index: usize,
    column_name: String,
    stats: Arc<EventTimeStats>,
}

impl WatermarkExec {
    /// Passes `input` through, recording the largest value of column
    /// `column_index` (named `column_name`) in `stats`.
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        column_index: usize,
        column_name: String,
        stats: Arc<EventTimeStats>,
    ) -> Self {
        Self {
            input,
            column_index,
            column_name,
            stats,
        }
    }

    fn max_millis(column: &dyn Array, name: &str) -> DFResult<Option<i64>> {
        let DataType::Timestamp(unit, _) = column.data_type() else {
            return Err(DataFusionError::Execution(format!(
                "watermark column '{name}' is not a timestamp"
            )));
        };
        // A null event time is not an error (as Spark): the watermark
        // ignores it (`max` skips nulls), windows put the row in none.
        let values = arrow::compute::cast(column, &DataType::Int64)?;
        let values = values
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64");
        let divisor = millis_divisor(unit);
        Ok(max(values).map(|v| {
            if divisor < 0 {
                v.saturating_mul(-divisor)
            } else {
                v.div_euclid(divisor)
            }
        }))
    }
}

impl DisplayAs for WatermarkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WatermarkExec: {}", self.column_name)
    }
}

impl ExecutionPlan for WatermarkExec {
    fn name(&self) -> &str {
        "WatermarkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            input: children.swap_remove(0),
            column_index: self.column_index,
            column_name: self.column_name.clone(),
            stats: Arc::clone(&self.stats),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let (index, name, stats) = (
            self.column_index,
            self.column_name.clone(),
            Arc::clone(&self.stats),
        );
        let stream = input.map(move |batch| {
            let batch = batch?;
            if let Some(m) = Self::max_millis(batch.column(index).as_ref(), &name)? {
                stats.observe(m);
            }
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Turns the event times seen by a query's watermark operators into its
/// watermark, batch after batch.
#[derive(Debug)]
pub struct WatermarkTracker {
    /// Per node: its id, delay, and the largest event time seen so far.
    nodes: Vec<(u64, i64, Option<i64>)>,
    policy: MultipleWatermarkPolicy,
    current: Option<i64>,
}

impl WatermarkTracker {
    /// A tracker for `nodes`, starting from `current` (restored from the
    /// checkpoint, or `None` for a new query).
    pub fn new(
        nodes: &[WatermarkNode],
        policy: MultipleWatermarkPolicy,
        current: Option<i64>,
    ) -> Self {
        Self {
            nodes: nodes.iter().map(|n| (n.id, n.delay_ms, None)).collect(),
            policy,
            current,
        }
    }

    /// The watermark in force, in milliseconds since the epoch.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Records the batch's maxima (from `planner`) and advances the
    /// watermark; returns the largest event time of the batch, if any.
    pub fn end_batch(&mut self, planner: &crate::plan::WatermarkPlanner) -> Option<i64> {
        let mut batch_max = None;
        for (id, _, seen) in &mut self.nodes {
            if let Some(m) = planner.stats(*id).take() {
                batch_max = Some(batch_max.map_or(m, |b: i64| b.max(m)));
                *seen = Some(seen.map_or(m, |s: i64| s.max(m)));
            }
        }
        self.current = advance(
            self.policy,
            self.current,
            self.nodes.iter().map(|(_, delay, seen)| (*delay, *seen)),
        );
        batch_max
    }

    /// Forgets the event times the watermark nodes reported since the
    /// last [`Self::end_batch`] (of a batch that will not commit).
    pub fn forget_batch(&mut self, planner: &crate::plan::WatermarkPlanner) {
        for (id, _, _) in &self.nodes {
            planner.stats(*id).take();
        }
    }

    /// What the watermark after the running batch will at least be, as
    /// an operator that runs `delay_ms` behind the query's watermark sees
    /// it (see [`NextWatermark`]).
    pub(crate) fn next_batch(
        &self,
        planner: &crate::plan::WatermarkPlanner,
        delay_ms: i64,
    ) -> NextWatermark {
        NextWatermark {
            nodes: self
                .nodes
                .iter()
                .map(|(id, delay, seen)| (planner.stats(*id), *delay, *seen))
                .collect(),
            policy: self.policy,
            current: self.current,
            delay_ms,
        }
    }
}

/// The watermark after a batch: per node, the largest event time seen so
/// far minus its delay; across nodes, by `policy`; never below `current`.
fn advance(
    policy: MultipleWatermarkPolicy,
    current: Option<i64>,
    nodes: impl Iterator<Item = (i64, Option<i64>)>,
) -> Option<i64> {
    let candidates = nodes.filter_map(|(delay, seen)| seen.map(|s| s.saturating_sub(delay)));
    let computed = match policy {
        MultipleWatermarkPolicy::Min => candidates.min(),
        MultipleWatermarkPolicy::Max => candidates.max(),
    };
    // Never backwards.
    match (current, computed) {
        (Some(c), Some(n)) => Some(c.max(n)),
        (c, n) => c.or(n),
    }
}

/// The watermark the next batch will run with, worked out during the
/// running batch from the event times its watermark nodes have seen.
///
/// Computed as [`WatermarkTracker::end_batch`] will compute it. It is that
/// watermark once every node has seen all of the batch's rows — for an
/// operator fed by every watermarked input of the query, once it has read
/// its inputs — and only such an operator may use it: before that, a node
/// yet to see rows could move the result either way. An operator then
/// knows during batch N what batch N + 1 will evict, and may leave
/// unstored what it would store only for that.
#[derive(Debug)]
pub(crate) struct NextWatermark {
    /// Per node: its statistics, delay, and the largest event time seen
    /// before this batch.
    nodes: Vec<(Arc<EventTimeStats>, i64, Option<i64>)>,
    policy: MultipleWatermarkPolicy,
    current: Option<i64>,
    /// How far behind the query's watermark the operator runs.
    delay_ms: i64,
}

impl NextWatermark {
    /// The next batch's watermark, shifted by the operator's delay;
    /// `None` when no watermark is known yet.
    pub fn value(&self) -> Option<i64> {
        let nodes = self.nodes.iter().map(|(stats, delay, seen)| {
            let seen = match (*seen, stats.peek()) {
                (Some(s), Some(b)) => Some(s.max(b)),
                (s, b) => s.or(b),
            };
            (*delay, seen)
        });
        advance(self.policy, self.current, nodes).map(|w| w.saturating_sub(self.delay_ms))
    }
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC).
pub fn format_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse() {
        assert_eq!(parse_delay("10 minutes").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_delay("10 minute").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_delay("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_delay("1 hour").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_delay("2 days").unwrap(), Duration::from_secs(172_800));
        assert_eq!(
            parse_delay("250 milliseconds").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_delay("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_delay("1.5 seconds").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["", "ten minutes", "10 fortnights", "-1 s"] {
            assert!(parse_delay(bad).is_err(), "{bad}");
        }
    }
}
