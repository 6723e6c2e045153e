//! Session windows: `session_window(ts, gap)` as a `GROUP BY` key.
//!
//! Each row opens the session `[ts, ts + gap)`; sessions of the same group
//! keys that overlap or touch merge into one, `[first start, last end)`, as
//! in Spark and Flink: a row exactly `gap` after the previous one continues
//! its session. A session is final once the watermark reaches its end, as
//! a window is (a row at that end is then late for it: its own session
//! `[end, end + gap)` starts a new one, as in Spark).
//! `gap` is a constant (`'5 minutes'`, `INTERVAL '5' MINUTE`) or, for a gap
//! per row, an interval expression (e.g. `CASE WHEN symbol = 'A' THEN
//! INTERVAL '1' MINUTE ELSE INTERVAL '5' MINUTE END`). A row with a null
//! event time gets a null session.
//!
//! Unlike `tumble`, a session depends on other rows, so `session_window` is
//! not computed row by row: [`super::WindowGroupingRule`] rewrites an aggregation
//! grouped by it into DataFusion window functions that number the sessions
//! (per group keys, ordered by event time, a row starts a new session when
//! it begins after every earlier row's end), and groups by the resulting
//! session column. A streaming aggregation does the same within each
//! micro-batch and merges the batch's sessions with the sessions in its
//! state.

use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef, IntervalMonthDayNano};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::functions::core::expr_fn::named_struct;
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::{ScalarFunction, WindowFunction};
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility, WindowFrame, WindowFrameBound,
    WindowFrameUnits, WindowFunctionDefinition, when,
};
use datafusion::prelude::{col, lit};

use super::function::duration_nanos;
use super::kernels::window_type;
use super::regroup::{group_by_column, input_columns_and};

/// Columns the rewrite adds start with this prefix.
pub const SESSION_PREFIX: &str = "__tidemill_session_";

/// The column holding each row's session (`start`, `end`) after the
/// rewrite.
pub const SESSION_COLUMN: &str = "__tidemill_session_window";

/// The `session_window(ts, gap)` function: its type is a window struct;
/// it only has a meaning as a `GROUP BY` key (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct SessionWindowFunction {
    signature: Signature,
}

impl SessionWindowFunction {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SessionWindowFunction {
    fn name(&self) -> &str {
        "session_window"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [ts, gap] = arg_types else {
            return plan_err!(
                "session_window: expected session_window(ts, gap), got {} arguments",
                arg_types.len()
            );
        };
        if !matches!(ts, DataType::Timestamp(_, _)) {
            return plan_err!("session_window: ts must be a timestamp, got {ts}");
        }
        if !matches!(
            gap,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Interval(_)
                | DataType::Duration(_)
        ) {
            return plan_err!(
                "session_window: gap must be a duration such as '5 minutes' or an interval \
                 expression, got {gap}"
            );
        }
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(window_type(&arg_types[0]))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let ts = &args.arg_fields[0];
        Ok(Arc::new(arrow::datatypes::Field::new(
            self.name(),
            window_type(ts.data_type()),
            true,
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!(
            "session_window can only be a GROUP BY key (a session depends on the other rows of \
             its group); group by it, with Tidemill's rewrite installed by \
             register_window_functions(&ctx)"
        )
    }
}

/// The `(ts, gap)` of a `session_window` call.
pub(super) fn session_call(expr: &Expr) -> Option<(&Expr, &Expr)> {
    match expr {
        Expr::Alias(alias) => session_call(&alias.expr),
        Expr::ScalarFunction(ScalarFunction { func, args })
            if func.name() == "session_window" && args.len() == 2 =>
        {
            Some((&args[0], &args[1]))
        }
        _ => None,
    }
}

/// Rewrites `aggregate`, whose group key `index` is a `session_window`
/// call (see the module docs).
pub(super) fn rewrite(aggregate: Aggregate, index: usize) -> Result<LogicalPlan> {
    let Some((ts, gap)) = session_call(&aggregate.group_expr[index]) else {
        return plan_err!("group key {index} is not a session_window call");
    };
    let (ts, gap) = (ts.clone(), gap_expr(gap)?);
    let keys: Vec<Expr> = aggregate
        .group_expr
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, e)| e.clone().unalias())
        .collect();
    let name = |suffix: &str| format!("{SESSION_PREFIX}{suffix}");
    let end = ts.clone() + gap;
    let mut partition = keys.clone();
    partition.push(ts.clone().is_null());
    let by_time = vec![ts.clone().sort(true, true)];
    let rows = |start: WindowFrameBound, end: WindowFrameBound| {
        WindowFrame::new_bounds(WindowFrameUnits::Rows, start, end)
    };
    let unbounded = WindowFrameBound::Preceding(ScalarValue::UInt64(None));
    // The latest end of the rows before this one in its group.
    let previous_end = over(
        WindowFunctionDefinition::AggregateUDF(max_udaf()),
        end.clone(),
        partition.clone(),
        by_time.clone(),
        rows(
            unbounded.clone(),
            WindowFrameBound::Preceding(ScalarValue::UInt64(Some(1))),
        ),
    )
    .alias(name("previous_end"));
    // Sessions numbered in time order: a row begins one when it starts
    // after every earlier row has ended (one starting exactly at an end
    // continues that session, as Spark and Flink merge touching sessions).
    let starts_session = when(
        col(name("previous_end"))
            .is_null()
            .or(ts.clone().gt(col(name("previous_end")))),
        lit(1i64),
    )
    .otherwise(lit(0i64))?;
    let number = over(
        WindowFunctionDefinition::AggregateUDF(sum_udaf()),
        starts_session,
        partition.clone(),
        by_time,
        rows(unbounded, WindowFrameBound::CurrentRow),
    )
    .alias(name("number"));
    let mut per_session = partition;
    per_session.push(col(name("number")));
    let whole = WindowFrame::new(None);
    let start_of = over(
        WindowFunctionDefinition::AggregateUDF(min_udaf()),
        ts.clone(),
        per_session.clone(),
        Vec::new(),
        whole.clone(),
    )
    .alias(name("start"));
    let end_of = over(
        WindowFunctionDefinition::AggregateUDF(max_udaf()),
        end,
        per_session,
        Vec::new(),
        whole,
    )
    .alias(name("end"));
    let session = when(ts.is_null(), lit(ScalarValue::Null))
        .otherwise(named_struct(vec![
            lit("start"),
            col(name("start")),
            lit("end"),
            col(name("end")),
        ]))?
        .alias(SESSION_COLUMN);
    let projection = input_columns_and(&aggregate.input, session);
    let input = LogicalPlanBuilder::from(Arc::clone(&aggregate.input))
        .window(vec![previous_end])?
        .window(vec![number])?
        .window(vec![start_of, end_of])?
        .project(projection)?
        .build()?;
    group_by_column(aggregate, index, input, SESSION_COLUMN)
}

/// The gap as an interval expression: constants become interval literals.
fn gap_expr(gap: &Expr) -> Result<Expr> {
    match gap {
        Expr::Literal(value, _) => {
            let nanos = duration_nanos("session_window", "gap", Some(value))?;
            if nanos <= 0 {
                return plan_err!("session_window: gap must be greater than zero");
            }
            let nanos =
                i64::try_from(nanos).or_else(|_| plan_err!("session_window: gap is too large"))?;
            Ok(lit(ScalarValue::IntervalMonthDayNano(Some(
                IntervalMonthDayNano::new(0, 0, nanos),
            ))))
        }
        other => Ok(other.clone()),
    }
}

/// An aggregate function as a window function.
fn over(
    fun: WindowFunctionDefinition,
    arg: Expr,
    partition_by: Vec<Expr>,
    order_by: Vec<datafusion::logical_expr::SortExpr>,
    frame: WindowFrame,
) -> Expr {
    let mut window = WindowFunction::new(fun, vec![arg]);
    window.params.partition_by = partition_by;
    window.params.order_by = order_by;
    window.params.window_frame = frame;
    Expr::WindowFunction(Box::new(window))
}
