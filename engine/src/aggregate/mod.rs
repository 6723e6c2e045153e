//! Incremental (stateful) aggregation (DESIGN §5).
//!
//! A streaming query may hold one aggregation (`GROUP BY` / aggregate
//! functions) over its streams. The engine runs it batch by batch with
//! DataFusion's own aggregate machinery, in three of its aggregate modes:
//!
//! 1. **Partial**: the batch's rows become one row of accumulator state per
//!    group (`sum` and `count` for `avg`, a sketch for `approx_distinct`, …).
//! 2. **PartialReduce**: those states are merged with the states the
//!    [state store](tidemill_state::StateStore) holds for the same groups;
//!    the merged states go back to the store. Only the groups the batch
//!    touches are read and written, so a batch costs time in the batch, not
//!    in the state.
//! 3. **Final**: states become result rows, for the rows the output mode
//!    emits: in *update* mode the groups changed by the batch; in *complete*
//!    mode every group; in *append* mode the groups the watermark has
//!    closed, once each.
//!
//! Any aggregate function whose state DataFusion can merge works this way,
//! user-defined ones included; none is re-implemented here.
//!
//! **Event time.** A group key that is a window (a struct of `start` and
//! `end` timestamps, as [`crate::window`] makes) or the watermarked
//! event-time column itself is the aggregation's *event-time key*. With a
//! watermark, a group closes when its window's end (or its event time) is
//! at or below the watermark: rows that would update a closed group are
//! late — dropped, counted in progress, or sent to the late-rows sink — and
//! the store evicts closed groups (after emitting them, in append mode) in
//! time proportional to what it evicts.
//!
//! The parts: [`StreamingAggregateNode`] (the logical node that stands for
//! the aggregation in each batch's plan), `layout` (the physical aggregate
//! expressions and the state's key and value schemas), `operator` (the
//! state store and per-batch figures), `late_rows` (the split of late rows
//! and rows without event time from the input), `event_time` (when a group
//! closes) and `exec` (the physical operator and its planner).

pub(crate) mod event_time;
mod exec;
mod late_rows;
mod layout;
mod operator;
mod session;

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{DFSchemaRef, Result as DFResult};
use datafusion::logical_expr::{
    Aggregate, Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore,
};

pub(crate) use exec::StreamingAggregateExec;
pub(crate) use layout::AggregateLayout;
pub(crate) use operator::AggregateOperator;

use crate::watermark::WatermarkNode;
use crate::window::SESSION_COLUMN;

/// How the event-time key of an aggregation says when its group closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventTimeKind {
    /// A window struct: the group closes at the window's `end`.
    Window,
    /// The event-time column itself: the group closes at its value.
    Timestamp,
    /// A session window: a struct like a window, whose sessions merge
    /// across batches; the group closes at the session's `end`.
    Session,
}

/// The group key that ties an aggregation to event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventTimeKey {
    /// Its position among the group keys.
    pub index: usize,
    /// Window or plain event time.
    pub kind: EventTimeKind,
    /// The unit of the timestamps.
    pub unit: TimeUnit,
    /// The key's column name, for messages.
    pub name: String,
}

/// Whether `data_type` is a window: a struct of exactly `start` and `end`
/// timestamps.
pub(crate) fn window_unit(data_type: &DataType) -> Option<TimeUnit> {
    let DataType::Struct(fields) = data_type else {
        return None;
    };
    if fields.len() != 2 || fields[0].name() != "start" || fields[1].name() != "end" {
        return None;
    }
    match (fields[0].data_type(), fields[1].data_type()) {
        (DataType::Timestamp(a, _), DataType::Timestamp(b, _)) if a == b => Some(*a),
        _ => None,
    }
}

/// The event-time key of `aggregate`: the session window, else the first
/// group key that is a window, else the first that is a watermarked
/// event-time column.
pub(crate) fn event_time_key(aggregate: &Aggregate) -> Option<EventTimeKey> {
    let num_keys = aggregate.group_expr.len();
    let fields = &aggregate.schema.fields()[..num_keys];
    if let Some((index, unit)) = aggregate
        .group_expr
        .iter()
        .enumerate()
        .find_map(|(i, e)| match e.clone().unalias() {
            Expr::Column(c) if c.name == SESSION_COLUMN => {
                window_unit(fields[i].data_type()).map(|u| (i, u))
            }
            _ => None,
        })
    {
        return Some(EventTimeKey {
            index,
            kind: EventTimeKind::Session,
            unit,
            name: fields[index].name().clone(),
        });
    }
    if let Some((index, unit)) = fields
        .iter()
        .enumerate()
        .find_map(|(i, f)| window_unit(f.data_type()).map(|u| (i, u)))
    {
        return Some(EventTimeKey {
            index,
            kind: EventTimeKind::Window,
            unit,
            name: fields[index].name().clone(),
        });
    }
    let watermarked: Vec<String> = WatermarkNode::all_in(&aggregate.input)
        .iter()
        .map(|w| w.column.name.clone())
        .collect();
    aggregate
        .group_expr
        .iter()
        .enumerate()
        .find_map(|(index, expr)| match (expr, fields[index].data_type()) {
            (Expr::Column(c), DataType::Timestamp(unit, _)) if watermarked.contains(&c.name) => {
                Some(EventTimeKey {
                    index,
                    kind: EventTimeKind::Timestamp,
                    unit: *unit,
                    name: c.name.clone(),
                })
            }
            _ => None,
        })
}

/// Stands for a streaming aggregation in a batch's logical plan: the
/// `Aggregate` it replaces, planned as a stateful physical operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamingAggregateNode {
    /// The aggregation's input.
    pub input: LogicalPlan,
    /// The `GROUP BY` expressions.
    pub group_expr: Vec<Expr>,
    /// The aggregate expressions.
    pub aggr_expr: Vec<Expr>,
    /// The output schema (the `Aggregate`'s).
    pub schema: DFSchemaRef,
    /// Which of the query's stateful operators this is.
    pub operator: usize,
}

impl StreamingAggregateNode {
    pub(crate) fn new(aggregate: Aggregate, operator: usize) -> Self {
        Self {
            input: Arc::unwrap_or_clone(aggregate.input),
            group_expr: aggregate.group_expr,
            aggr_expr: aggregate.aggr_expr,
            schema: aggregate.schema,
            operator,
        }
    }

    /// The `Aggregate` this node stands for, over `input`.
    pub fn aggregate_over(&self, input: LogicalPlan) -> DFResult<Aggregate> {
        Aggregate::try_new_with_schema(
            Arc::new(input),
            self.group_expr.clone(),
            self.aggr_expr.clone(),
            Arc::clone(&self.schema),
        )
    }

    pub(crate) fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(Extension {
            node: Arc::new(self),
        })
    }
}

impl Hash for StreamingAggregateNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.group_expr.hash(state);
        self.aggr_expr.hash(state);
        self.operator.hash(state);
    }
}

impl PartialOrd for StreamingAggregateNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.operator.partial_cmp(&other.operator) {
            Some(Ordering::Equal) => {}
            unequal => return unequal,
        }
        match self.group_expr.partial_cmp(&other.group_expr) {
            Some(Ordering::Equal) => {}
            unequal => return unequal,
        }
        self.aggr_expr.partial_cmp(&other.aggr_expr)
    }
}

impl UserDefinedLogicalNodeCore for StreamingAggregateNode {
    fn name(&self) -> &str {
        "StreamingAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.group_expr
            .iter()
            .chain(&self.aggr_expr)
            .cloned()
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let list = |exprs: &[Expr]| {
            exprs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "StreamingAggregate: operator={} groupBy=[{}], aggr=[{}]",
            self.operator,
            list(&self.group_expr),
            list(&self.aggr_expr)
        )
    }

    fn with_exprs_and_inputs(
        &self,
        mut exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let aggr_expr = exprs.split_off(self.group_expr.len());
        Ok(Self {
            input: inputs.swap_remove(0),
            group_expr: exprs,
            aggr_expr,
            schema: Arc::clone(&self.schema),
            operator: self.operator,
        })
    }
}
