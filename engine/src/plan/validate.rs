//! The checks made when a query starts: can its plan run incrementally in
//! the chosen output mode?

use datafusion::common::JoinType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Aggregate, Expr, Join, LogicalPlan};

use super::substitute;
use crate::dedup::DeduplicateNode;
use crate::processor::{TimeMode, TransformWithStateNode};
use crate::watermark::WatermarkNode;
use crate::window::SESSION_PREFIX;
use crate::{OutputMode, Result, SourceTable, TidemillError};

/// Checks that `plan` can run as a stream in `mode` and returns an error
/// naming the offending operator and the fix if not.
///
/// `plan` should be the optimized plan, so subqueries are already turned
/// into joins and the check sees what will run; `unoptimized` is the plan
/// as written, checked for what the optimizer rewrites away (such as
/// `count(DISTINCT x)`, which becomes two aggregations).
pub fn validate(plan: &LogicalPlan, unoptimized: &LogicalPlan, mode: OutputMode) -> Result<()> {
    reject_distinct_aggregates(unoptimized)?;
    let flow = check(plan, mode)?;
    if !flow.streaming {
        return Err(TidemillError::Unsupported {
            operator: "query".into(),
            reason: "reads no streaming source".into(),
            fix: "Run it as a batch job with DataFrame::collect(), or read a source with read_stream()".into(),
        });
    }
    match substitute::find_aggregation(plan) {
        None if mode == OutputMode::Complete => Err(unsupported(
            "output mode complete",
            "needs a streaming aggregation to produce a result table, and this query has none",
            "Use append or update mode",
        )),
        _ => Ok(()),
    }
}

/// A second stateful operator is allowed in append mode only, as in
/// Spark: in the other modes the first would emit rows it later revises.
fn check_chain(operator: &str, below: &str, mode: OutputMode) -> Result<()> {
    if mode == OutputMode::Append {
        return Ok(());
    }
    Err(unsupported(
        operator,
        &format!(
            "after a streaming {below}: a query with several stateful operators runs in append \
             mode only, where each operator emits a row once, when it is final"
        ),
        "Use append output mode (with a watermark), or split the query in two, the second \
         reading the first one's sink",
    ))
}

/// A stateful processor: in the output mode it was given (append or
/// update), and in event-time mode over an input with a watermark.
fn check_processor(node: &TransformWithStateNode, mode: OutputMode) -> Result<()> {
    let operator = "TransformWithState";
    if node.output_mode == OutputMode::Complete {
        return Err(unsupported(
            operator,
            "in complete output mode: a processor emits rows, not a result table",
            "Use OutputMode::Append or OutputMode::Update",
        ));
    }
    if node.output_mode != mode {
        return Err(unsupported(
            operator,
            &format!(
                "was given output mode {} and the query runs in {mode}",
                node.output_mode
            ),
            &format!(
                "Start the query in {} mode, or give the processor output mode {mode}",
                node.output_mode
            ),
        ));
    }
    if node.time_mode == TimeMode::EventTime && WatermarkNode::all_in(&node.input).is_empty() {
        return Err(unsupported(
            operator,
            "in event-time mode needs a watermark on its input: event-time timers fire as the \
             watermark passes them",
            "Call with_watermark(\"<event-time column>\", \"<delay>\") on the stream first, \
             or use TimeMode::ProcessingTime",
        ));
    }
    Ok(())
}

/// A stream–stream join: a type Spark runs, in append mode, and for an
/// outer or semi join, state bounded by watermarks and the condition.
fn check_stream_join(join: &Join, mode: OutputMode) -> Result<()> {
    let operator = format!("{} join of two streams", join.join_type);
    if !crate::join::supported(join.join_type) {
        return Err(unsupported(
            &operator,
            "is not supported (stream–stream joins are inner, left, right and full outer, and \
             left semi)",
            "Rewrite the join as one of those, e.g. an anti join as a left outer join keeping \
             the rows whose right columns are null",
        ));
    }
    if mode != OutputMode::Append {
        return Err(unsupported(
            &operator,
            &format!("runs in append mode only, not {mode}: a joined row is final when emitted"),
            "Use append output mode",
        ));
    }
    let node = crate::join::StreamJoinNode {
        join: join.clone(),
        operator: 0,
    };
    let bounds = node.bounds();
    let needs: &[(usize, &str)] = match join.join_type {
        JoinType::Left | JoinType::LeftSemi => &[(0, "left")],
        JoinType::Right => &[(1, "right")],
        JoinType::Full => &[(0, "left"), (1, "right")],
        _ => &[],
    };
    for &(side, label) in needs {
        if bounds.expiry[side].is_none() {
            let other = if side == 0 { "right" } else { "left" };
            return Err(unsupported(
                &operator,
                &format!(
                    "must know when a {label} row can no longer match, to emit it {}exactly \
                     once, and nothing bounds that: it needs a watermark on the {other} input \
                     and a condition bounding the {other} event time by the {label} one",
                    if join.join_type == JoinType::LeftSemi {
                        "or drop it "
                    } else {
                        "with nulls "
                    }
                ),
                &format!(
                    "Call with_watermark on both inputs and add a time bound to the condition, \
                     e.g. l.ts BETWEEN r.ts - INTERVAL '5' MINUTE AND r.ts + INTERVAL '5' \
                     MINUTE, or join on equal windows (l.w = r.w){}",
                    if join.join_type == JoinType::LeftSemi {
                        ""
                    } else {
                        "; or use an inner join"
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// Append mode emits each group once, when it is final: the aggregation
/// needs an event-time key and a watermark to know when that is.
fn check_append(aggregate: &Aggregate) -> Result<()> {
    let has_watermark = !WatermarkNode::all_in(&aggregate.input).is_empty();
    match (crate::aggregate::event_time_key(aggregate), has_watermark) {
        (Some(_), true) => Ok(()),
        (Some(key), false) => Err(unsupported(
            "Aggregate in append mode",
            &format!(
                "groups by the event-time key '{}' but the input has no watermark, so no group \
                 ever becomes final",
                key.name
            ),
            "Call with_watermark(\"<event-time column>\", \"<delay>\") on the stream before \
             aggregating, or use update or complete mode",
        )),
        (None, _) => Err(unsupported(
            "Aggregate in append mode",
            "has no event-time group key (a window such as tumble(ts, '1 minute'), or the \
             watermarked column itself), so no group ever becomes final",
            "Group by a window of the watermarked event-time column, or use update or complete \
             mode",
        )),
    }
}

/// Refuses `DISTINCT` aggregates over a stream: exact distinct counting
/// keeps every value ever seen.
fn reject_distinct_aggregates(plan: &LogicalPlan) -> Result<()> {
    let mut found = None;
    plan.apply(|node| {
        if let LogicalPlan::Aggregate(a) = node
            && crate::SourceTable::any_in(&a.input)
        {
            found = a.aggr_expr.iter().find(|e| is_distinct(e)).cloned();
            if found.is_some() {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan without errors cannot fail");
    match found {
        None => Ok(()),
        Some(expr) => Err(unsupported(
            &format!("Aggregate {expr}"),
            "is an exact DISTINCT aggregate, which would keep every distinct value of the stream \
             in state forever",
            "Use approx_distinct(x) instead of count(DISTINCT x), or deduplicate in a batch job",
        )),
    }
}

fn is_distinct(expr: &Expr) -> bool {
    match expr {
        Expr::Alias(alias) => is_distinct(&alias.expr),
        Expr::AggregateFunction(f) => f.params.distinct,
        _ => false,
    }
}

/// Whether `plan` is a stateful operator over streaming input.
fn is_stateful(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(_) => true,
        LogicalPlan::Join(join) => {
            SourceTable::any_in(&join.left) && SourceTable::any_in(&join.right)
        }
        _ => DeduplicateNode::of(plan).is_some() || TransformWithStateNode::of(plan).is_some(),
    }
}

fn unsupported(operator: &str, reason: &str, fix: &str) -> TidemillError {
    TidemillError::Unsupported {
        operator: operator.into(),
        reason: reason.into(),
        fix: fix.into(),
    }
}

/// What flows out of a plan node.
#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    /// It reads a streaming source.
    streaming: bool,
    /// It is (or is above) a streaming aggregation.
    aggregated: bool,
    /// The stateful operator it is (or is above), if any: the last one.
    stateful: Option<&'static str>,
    /// It is (or is above) a stream–stream join whose condition bounds no
    /// time, so no watermark holds for its output.
    unbounded_join: bool,
    /// It is (or is above) a stateful processor, whose output carries no
    /// event time the engine knows of.
    processed: bool,
}

/// Validates `plan` bottom-up.
fn check(plan: &LogicalPlan, mode: OutputMode) -> Result<Flow> {
    let mut inputs = Vec::new();
    for input in plan.inputs() {
        inputs.push(check(input, mode)?);
    }
    let streaming = match plan {
        LogicalPlan::TableScan(scan) => SourceTable::of_scan(scan).is_some(),
        _ => inputs.iter().any(|f| f.streaming),
    };
    let aggregated = inputs.iter().any(|f| f.aggregated);
    let below = inputs.iter().find_map(|f| f.stateful);
    let flow = Flow {
        streaming,
        aggregated,
        stateful: below,
        unbounded_join: inputs.iter().any(|f| f.unbounded_join),
        processed: inputs.iter().any(|f| f.processed),
    };
    if flow.processed && is_stateful(plan) {
        return Err(unsupported(
            &format!("{} node", plan.display()),
            "after transform_with_state without an event-time column: the processor's output \
             rows carry no event time the watermark applies to, so this operator could never \
             tell when its input is final",
            "Use transform_with_state_with_event_time(keys, processor, \"<output timestamp \
             column>\", OutputMode::Append), run this operator in another query reading the \
             processor's sink, or do its work inside the processor",
        ));
    }
    if flow.unbounded_join && is_stateful(plan) {
        return Err(unsupported(
            &format!("{} node", plan.display()),
            "after a stream–stream join whose condition bounds no time: the join may emit rows \
             of any age, so no watermark tells this operator when its input is final",
            "Bound the join by time (l.ts BETWEEN r.ts - INTERVAL '5' MINUTE AND r.ts + \
             INTERVAL '5' MINUTE, or equal windows), or run this operator in another query \
             reading the join's sink",
        ));
    }
    if !streaming {
        return Ok(flow);
    }
    let stateful = "is stateful: it needs state kept across micro-batches, which streaming does not support yet";
    let after_aggregation = "after a streaming aggregation";
    match plan {
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::TableScan(_)
        | LogicalPlan::Repartition(_) => Ok(flow),
        LogicalPlan::Extension(_) if WatermarkNode::of(plan).is_some() => Ok(flow),
        LogicalPlan::Extension(_) if DeduplicateNode::of(plan).is_some() => {
            let dedup = DeduplicateNode::of(plan).expect("a deduplication");
            if dedup.within_watermark && WatermarkNode::all_in(&dedup.input).is_empty() {
                return Err(unsupported(
                    "Deduplicate within watermark",
                    "keeps each key for the watermark's delay after its event time, but the \
                     input has no watermark",
                    "Call with_watermark(\"<event-time column>\", \"<delay>\") on the stream \
                     first, or use drop_duplicates",
                ));
            }
            if let Some(below) = below {
                check_chain("Deduplicate", below, mode)?;
            }
            Ok(Flow {
                stateful: Some("deduplication"),
                ..flow
            })
        }
        LogicalPlan::Extension(_) if TransformWithStateNode::of(plan).is_some() => {
            let node = TransformWithStateNode::of(plan).expect("a processor");
            check_processor(node, mode)?;
            if let Some(below) = below {
                check_chain("TransformWithState", below, mode)?;
            }
            Ok(Flow {
                stateful: Some("stateful processor"),
                processed: node.event_time_column.is_none(),
                ..flow
            })
        }
        LogicalPlan::Unnest(_) if !aggregated || mode == OutputMode::Append => Ok(flow),
        // Session windows number their sessions with window functions
        // within each micro-batch; the aggregation merges them with the
        // sessions in its state.
        LogicalPlan::Window(window)
            if (!aggregated || mode == OutputMode::Append)
                && window
                    .window_expr
                    .iter()
                    .all(|e| e.schema_name().to_string().starts_with(SESSION_PREFIX)) =>
        {
            Ok(flow)
        }
        LogicalPlan::Aggregate(a) => {
            if let [Expr::GroupingSet(_)] = a.group_expr.as_slice() {
                return Err(unsupported(
                    "Aggregate with GROUPING SETS / CUBE / ROLLUP",
                    "is not supported on a stream",
                    "Run one aggregation per grouping, each as its own query",
                ));
            }
            if let Some(below) = below {
                check_chain("Aggregate", below, mode)?;
            }
            if mode == OutputMode::Append {
                check_append(a)?;
            }
            Ok(Flow {
                aggregated: true,
                stateful: Some("aggregation"),
                ..flow
            })
        }
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_)
            if aggregated && mode == OutputMode::Complete =>
        {
            Ok(flow)
        }
        LogicalPlan::Sort(_) if aggregated => Err(unsupported(
            "Sort (ORDER BY)",
            &format!(
                "{after_aggregation} needs the whole result table, which only complete mode emits"
            ),
            "Use complete output mode, or remove ORDER BY",
        )),
        LogicalPlan::Limit(_) if aggregated => Err(unsupported(
            "Limit",
            &format!(
                "{after_aggregation} needs the whole result table, which only complete mode emits"
            ),
            "Use complete output mode, or remove LIMIT",
        )),
        _ if aggregated => Err(unsupported(
            &format!("{} node", plan.display()),
            &format!("{after_aggregation} is not supported"),
            "After the aggregation use projections and filters only; join or combine its output \
             in a batch job over the sink's committed output",
        )),
        LogicalPlan::Union(_) => {
            if inputs.iter().all(|f| f.streaming) {
                Ok(flow)
            } else {
                Err(unsupported(
                    "Union",
                    "of a streaming and a batch input would emit the batch rows again in every micro-batch",
                    "Union streams with streams only; to add static rows once, write them to the sink separately",
                ))
            }
        }
        LogicalPlan::Join(join) => {
            let (left, right) = (inputs[0].streaming, inputs[1].streaming);
            if left && right {
                if aggregated {
                    return Err(unsupported(
                        &format!("{} join of two streams", join.join_type),
                        &format!("{after_aggregation} is not supported"),
                        "Join the streams first and aggregate the join's output",
                    ));
                }
                check_stream_join(join, mode)?;
                let node = crate::join::StreamJoinNode {
                    join: join.clone(),
                    operator: 0,
                };
                return Ok(Flow {
                    stateful: Some("join"),
                    unbounded_join: flow.unbounded_join || node.output_delay_ms().is_none(),
                    ..flow
                });
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
                Ok(flow)
            } else {
                Err(unsupported(
                    &format!("{} join", join.join_type),
                    "with the stream on its non-preserved side would need to know, for every static row, \
                     whether a match ever arrives on the stream",
                    "Put the stream on the preserved side (the left of a LEFT join) or use an inner join",
                ))
            }
        }
        LogicalPlan::Distinct(_) => Err(unsupported(
            "Distinct",
            stateful,
            "Use GROUP BY over the columns instead (a streaming aggregation), or deduplicate the \
             sink's committed output in a batch job",
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
