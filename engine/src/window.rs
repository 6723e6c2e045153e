//! Event-time windows as column functions (DESIGN §2, §4).
//!
//! A window is a column: a struct with `start` and `end` (as Spark's
//! `window` struct), both of exactly the type of the event-time column (same
//! unit, same time zone). `start` is inclusive and `end` exclusive: a row at
//! `10:05:00` belongs to `[10:05:00, 10:06:00)` and not to
//! `[10:04:00, 10:05:00)`.
//!
//! - [`tumble`] (SQL `tumble(ts, size [, offset])`) puts each row in the one
//!   window of length `size` that contains it; windows start at multiples of
//!   `size` since the Unix epoch (UTC), shifted by `offset`.
//! - [`hop`] (SQL `hop(ts, size, slide [, offset])`) returns the *list* of
//!   every window of length `size`, starting at a multiple of `slide`
//!   (shifted by `offset`), that contains the row, ordered by start.
//!   `UNNEST` it to get one row per window.
//! - SQL `window(ts, size [, slide [, start_time]])` is Spark's spelling of
//!   a tumbling window; a `slide` different from `size` is refused with a
//!   pointer to `hop` (a scalar function returns one value per row, and a
//!   sliding window gives several).
//!
//! Durations (`size`, `slide`, `offset`) must be constants: a string such as
//! `'10 minutes'` or `'250 ms'` (see [`crate::watermark::parse_delay`]), an
//! SQL `INTERVAL '10' MINUTE`, or an Arrow duration. Months and years have no
//! fixed length and are refused. Mistakes are reported when the query is
//! planned, naming the function and the argument.
//!
//! The functions work the same in batch and in streaming queries. A null
//! event time gives a null window (for `hop`, a null list, which `UNNEST`
//! drops).
//!
//! Boundaries are counted from the Unix epoch in UTC, whatever the column's
//! time zone (as in Spark): daily windows over a `+05:30` column run from
//! 05:30 to 05:30 local time. Shift them with the offset, e.g.
//! `tumble(ts, '1 day', '18.5 hours')` or
//! `tumble(ts, '1 day', INTERVAL '-5 hours -30 minutes')` for local days.
//!
//! In SQL, reach the fields by name on an aliased column (`w.start`,
//! `w.end`) or by index (`tumble(ts, '1 hour')['start']`); in the DataFrame
//! API with `get_field(col("w"), "start")`.
//!
//! ```
//! use datafusion::prelude::*;
//! use tidemill_engine::window::register_window_functions;
//!
//! # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
//! let ctx = SessionContext::new();
//! register_window_functions(&ctx);
//! let df = ctx
//!     .sql(
//!         r#"SELECT w.start AS start, w.end AS "end", count(*) AS trades FROM (
//!            SELECT tumble(ts, '1 minute') AS w FROM (VALUES
//!              (TIMESTAMP '2024-01-01 10:00:05'),
//!              (TIMESTAMP '2024-01-01 10:00:59'),
//!              (TIMESTAMP '2024-01-01 10:01:00')) AS t(ts))
//!          GROUP BY w.start, w.end ORDER BY w.start"#,
//!     )
//!     .await?;
//! let expected = [
//!     "+---------------------+---------------------+--------+",
//!     "| start               | end                 | trades |",
//!     "+---------------------+---------------------+--------+",
//!     "| 2024-01-01T10:00:00 | 2024-01-01T10:01:00 | 2      |",
//!     "| 2024-01-01T10:01:00 | 2024-01-01T10:02:00 | 1      |",
//!     "+---------------------+---------------------+--------+",
//! ];
//! let batches = df.collect().await?;
//! let table = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
//! assert_eq!(table, expected.join("\n"));
//! # Ok(()) }
//! ```

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray, StructArray, make_array};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    DataType, Field, FieldRef, Fields, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::lit;

/// Most windows a single row may fall into with [`hop`] (`size / slide`).
/// A larger ratio is almost certainly a unit mistake and would multiply
/// every row that many times.
pub const MAX_WINDOWS_PER_ROW: i64 = 100_000;

/// Registers `tumble`, `hop` and `window` on `ctx`, for SQL.
///
/// The DataFrame helpers ([`tumble`], [`hop`]) work without registration.
///
/// ```
/// use datafusion::prelude::*;
/// use tidemill_engine::window::register_window_functions;
///
/// # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
/// let ctx = SessionContext::new();
/// register_window_functions(&ctx);
/// let batches = ctx
///     .sql("SELECT tumble(TIMESTAMP '2024-01-01 10:07:30', INTERVAL '5 minutes') AS w")
///     .await?
///     .collect()
///     .await?;
/// let table = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
/// assert!(table.contains("{start: 2024-01-01T10:05:00, end: 2024-01-01T10:10:00}"));
/// # Ok(()) }
/// ```
pub fn register_window_functions(ctx: &SessionContext) {
    ctx.register_udf(tumble_udf().as_ref().clone());
    ctx.register_udf(hop_udf().as_ref().clone());
    ctx.register_udf(window_udf().as_ref().clone());
}

/// A tumbling window of `size` (e.g. `"1 minute"`) over the event-time
/// column `ts`: a struct with `start` and `end`, for the DataFrame API.
///
/// Same as SQL `tumble(ts, size)`; see the [module docs](self).
///
/// ```
/// use datafusion::functions::core::expr_fn::get_field;
/// use datafusion::functions_aggregate::expr_fn::sum;
/// use datafusion::prelude::*;
/// use tidemill_engine::window::tumble;
///
/// # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
/// let ctx = SessionContext::new();
/// let df = ctx
///     .sql(
///         "SELECT * FROM (VALUES (TIMESTAMP '2024-01-01 10:00:05', 1),
///                                (TIMESTAMP '2024-01-01 10:00:20', 2),
///                                (TIMESTAMP '2024-01-01 10:01:00', 3)) AS t(ts, qty)",
///     )
///     .await?
///     .select(vec![tumble(col("ts"), "1 minute").alias("w"), col("qty")])?
///     .aggregate(
///         vec![get_field(col("w"), "start").alias("start")],
///         vec![sum(col("qty")).alias("qty")],
///     )?
///     .sort(vec![col("start").sort(true, true)])?;
/// let batches = df.collect().await?;
/// let table = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
/// let expected = [
///     "+---------------------+-----+",
///     "| start               | qty |",
///     "+---------------------+-----+",
///     "| 2024-01-01T10:00:00 | 3   |",
///     "| 2024-01-01T10:01:00 | 3   |",
///     "+---------------------+-----+",
/// ];
/// assert_eq!(table, expected.join("\n"));
/// # Ok(()) }
/// ```
pub fn tumble(ts: Expr, size: &str) -> Expr {
    call(tumble_udf(), vec![ts, lit(size)])
}

/// A tumbling window of `size` whose boundaries are shifted by `offset`
/// (e.g. hourly windows starting at a quarter past: `"1 hour"`,
/// `"15 minutes"`). Same as SQL `tumble(ts, size, offset)`.
///
/// ```
/// use datafusion::prelude::*;
/// use tidemill_engine::window::tumble_with_offset;
///
/// # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
/// let ctx = SessionContext::new();
/// let batches = ctx
///     .sql("SELECT TIMESTAMP '2024-01-01 10:07:00' AS ts")
///     .await?
///     .select(vec![tumble_with_offset(col("ts"), "1 hour", "15 minutes").alias("w")])?
///     .collect()
///     .await?;
/// let table = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
/// assert!(table.contains("{start: 2024-01-01T09:15:00, end: 2024-01-01T10:15:00}"));
/// # Ok(()) }
/// ```
pub fn tumble_with_offset(ts: Expr, size: &str, offset: &str) -> Expr {
    call(tumble_udf(), vec![ts, lit(size), lit(offset)])
}

/// Sliding (hopping) windows of `size` every `slide` over the event-time
/// column `ts`: the list of every window that contains the row, ordered by
/// start. Unnest it to get one row per window. Same as SQL
/// `hop(ts, size, slide)`; see the [module docs](self).
///
/// ```
/// use datafusion::prelude::*;
/// use tidemill_engine::window::hop;
///
/// # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
/// let ctx = SessionContext::new();
/// let batches = ctx
///     .sql("SELECT TIMESTAMP '2024-01-01 10:07:00' AS ts")
///     .await?
///     .select(vec![hop(col("ts"), "10 minutes", "5 minutes").alias("w")])?
///     .unnest_columns(&["w"])?
///     .collect()
///     .await?;
/// let table = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
/// let expected = [
///     "+--------------------------------------------------------+",
///     "| w                                                      |",
///     "+--------------------------------------------------------+",
///     "| {start: 2024-01-01T10:00:00, end: 2024-01-01T10:10:00} |",
///     "| {start: 2024-01-01T10:05:00, end: 2024-01-01T10:15:00} |",
///     "+--------------------------------------------------------+",
/// ];
/// assert_eq!(table, expected.join("\n"));
/// # Ok(()) }
/// ```
pub fn hop(ts: Expr, size: &str, slide: &str) -> Expr {
    call(hop_udf(), vec![ts, lit(size), lit(slide)])
}

/// Sliding windows of `size` every `slide`, with window starts shifted by
/// `offset`. Same as SQL `hop(ts, size, slide, offset)`.
///
/// ```
/// use datafusion::prelude::*;
/// use tidemill_engine::window::hop_with_offset;
///
/// # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
/// let ctx = SessionContext::new();
/// let batches = ctx
///     .sql("SELECT TIMESTAMP '2024-01-01 10:07:00' AS ts")
///     .await?
///     .select(vec![
///         hop_with_offset(col("ts"), "10 minutes", "5 minutes", "1 minute").alias("w"),
///     ])?
///     .unnest_columns(&["w"])?
///     .collect()
///     .await?;
/// let table = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
/// assert!(table.contains("{start: 2024-01-01T10:01:00, end: 2024-01-01T10:11:00}"));
/// assert!(table.contains("{start: 2024-01-01T10:06:00, end: 2024-01-01T10:16:00}"));
/// # Ok(()) }
/// ```
pub fn hop_with_offset(ts: Expr, size: &str, slide: &str, offset: &str) -> Expr {
    call(hop_udf(), vec![ts, lit(size), lit(slide), lit(offset)])
}

fn call(udf: &Arc<ScalarUDF>, args: Vec<Expr>) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(udf), args))
}

/// The `tumble` scalar function (see the [module docs](self)).
///
/// ```
/// use datafusion::execution::FunctionRegistry;
/// use datafusion::prelude::*;
/// use tidemill_engine::window::tumble_udf;
///
/// let ctx = SessionContext::new();
/// ctx.register_udf(tumble_udf().as_ref().clone());
/// assert!(ctx.udf("tumble").is_ok());
/// ```
pub fn tumble_udf() -> &'static Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(WindowFunction::new(Kind::Tumble))));
    &UDF
}

/// The `hop` scalar function (see the [module docs](self)).
///
/// ```
/// use datafusion::execution::FunctionRegistry;
/// use datafusion::prelude::*;
/// use tidemill_engine::window::hop_udf;
///
/// let ctx = SessionContext::new();
/// ctx.register_udf(hop_udf().as_ref().clone());
/// assert!(ctx.udf("hop").is_ok());
/// ```
pub fn hop_udf() -> &'static Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(WindowFunction::new(Kind::Hop))));
    &UDF
}

/// Spark's `window(time_column, window_duration [, slide_duration
/// [, start_time]])` as a scalar function: a tumbling window (`slide`, if
/// given, must equal `size`; use `hop` for sliding windows).
///
/// ```
/// use datafusion::prelude::*;
/// use tidemill_engine::window::window_udf;
///
/// # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
/// let ctx = SessionContext::new();
/// ctx.register_udf(window_udf().as_ref().clone());
/// let batches = ctx
///     .sql("SELECT window(TIMESTAMP '2024-01-01 10:07:30', '5 minutes') AS w")
///     .await?
///     .collect()
///     .await?;
/// let table = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
/// assert!(table.contains("{start: 2024-01-01T10:05:00, end: 2024-01-01T10:10:00}"));
/// # Ok(()) }
/// ```
pub fn window_udf() -> &'static Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(WindowFunction::new(Kind::Window))));
    &UDF
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Tumble,
    Hop,
    /// Spark's `window(ts, size [, slide [, start_time]])`.
    Window,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tumble => "tumble",
            Kind::Hop => "hop",
            Kind::Window => "window",
        }
    }

    /// Names of the arguments, for messages; the first is the event time.
    fn arg_names(self) -> &'static [&'static str] {
        match self {
            Kind::Tumble => &["ts", "size", "offset"],
            Kind::Hop => &["ts", "size", "slide", "offset"],
            Kind::Window => &[
                "time_column",
                "window_duration",
                "slide_duration",
                "start_time",
            ],
        }
    }

    fn min_args(self) -> usize {
        match self {
            Kind::Tumble | Kind::Window => 2,
            Kind::Hop => 3,
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Kind::Tumble => "tumble(ts, size [, offset])",
            Kind::Hop => "hop(ts, size, slide [, offset])",
            Kind::Window => {
                "window(time_column, window_duration [, slide_duration [, start_time]])"
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    kind: Kind,
    signature: Signature,
}

impl WindowFunction {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    /// Size, slide and offset in units of the event-time column, from the
    /// constant arguments (`None` for an argument that is not a constant).
    fn spec(&self, unit: TimeUnit, constants: &[Option<&ScalarValue>]) -> Result<Spec> {
        let kind = self.kind;
        let name = kind.name();
        let names = kind.arg_names();
        let duration = |i: usize| -> Result<Option<i64>> {
            constants
                .get(i)
                .map(|c| to_unit(name, names[i], duration_nanos(name, names[i], *c)?, unit))
                .transpose()
        };
        let missing = |i: usize| {
            DataFusionError::Plan(format!(
                "{name}: missing {}; expected {}",
                names[i],
                kind.usage()
            ))
        };
        let size = duration(1)?.ok_or_else(|| missing(1))?;
        if size <= 0 {
            return plan_err!("{name}: {} must be greater than zero", names[1]);
        }
        let (slide, offset) = match kind {
            Kind::Tumble => (size, duration(2)?.unwrap_or(0)),
            Kind::Hop => (
                duration(2)?.ok_or_else(|| missing(2))?,
                duration(3)?.unwrap_or(0),
            ),
            Kind::Window => {
                let slide = duration(2)?.unwrap_or(size);
                if slide != size {
                    return plan_err!(
                        "window: a slide_duration different from window_duration gives several \
                         windows per row, which a column cannot hold; use \
                         UNNEST(hop(ts, size, slide)) for sliding windows"
                    );
                }
                (slide, duration(3)?.unwrap_or(0))
            }
        };
        if slide <= 0 {
            return plan_err!("{name}: {} must be greater than zero", names[2]);
        }
        let windows_per_row = (size - 1) / slide + 1;
        if windows_per_row > MAX_WINDOWS_PER_ROW {
            return plan_err!(
                "{name}: size / slide = {windows_per_row} windows per row; at most \
                 {MAX_WINDOWS_PER_ROW} are allowed (check the units of size and slide)"
            );
        }
        Ok(Spec {
            size,
            slide,
            offset: offset.rem_euclid(slide),
        })
    }

    fn return_type(&self, ts_type: &DataType) -> DataType {
        let window = window_type(ts_type);
        match self.kind {
            Kind::Tumble | Kind::Window => window,
            Kind::Hop => DataType::new_list(window, true),
        }
    }
}

/// Window length, slide and offset (`0 <= offset < slide`), in units of the
/// event-time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    size: i64,
    slide: i64,
    offset: i64,
}

/// `Struct{start, end}`, both of the event-time type.
fn window_type(ts_type: &DataType) -> DataType {
    DataType::Struct(window_fields(ts_type))
}

fn window_fields(ts_type: &DataType) -> Fields {
    Fields::from(vec![
        Field::new("start", ts_type.clone(), true),
        Field::new("end", ts_type.clone(), true),
    ])
}

fn time_unit(name: &str, ts_type: &DataType) -> Result<TimeUnit> {
    match ts_type {
        DataType::Timestamp(unit, _) => Ok(*unit),
        other => plan_err!("{name}: the event-time argument must be a timestamp, got {other}"),
    }
}

/// Nanoseconds of a constant duration argument.
fn duration_nanos(name: &str, arg: &str, value: Option<&ScalarValue>) -> Result<i128> {
    const DAY_NANOS: i128 = 86_400 * 1_000_000_000;
    let months = || {
        plan_err!(
            "{name}: {arg} must not contain months or years (they have no fixed length); \
             use days, e.g. INTERVAL '30 days'"
        )
    };
    let Some(value) = value else {
        return plan_err!(
            "{name}: {arg} must be a constant, such as '10 minutes' or INTERVAL '10 minutes', \
             not a column or an expression"
        );
    };
    if value.is_null() {
        return plan_err!("{name}: {arg} must not be NULL");
    }
    Ok(match value {
        ScalarValue::Utf8(Some(text))
        | ScalarValue::LargeUtf8(Some(text))
        | ScalarValue::Utf8View(Some(text)) => match crate::watermark::parse_delay(text) {
            Ok(duration) => duration.as_nanos() as i128,
            Err(_) => {
                return plan_err!(
                    "{name}: invalid {arg} '{text}': expected a number and a unit, e.g. \
                     '10 seconds', '5 minutes', '1 hour', '250 ms', or an INTERVAL"
                );
            }
        },
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            if v.months != 0 {
                return months();
            }
            v.days as i128 * DAY_NANOS + v.nanoseconds as i128
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            v.days as i128 * DAY_NANOS + v.milliseconds as i128 * 1_000_000
        }
        ScalarValue::IntervalYearMonth(Some(_)) => return months(),
        ScalarValue::DurationSecond(Some(v)) => *v as i128 * 1_000_000_000,
        ScalarValue::DurationMillisecond(Some(v)) => *v as i128 * 1_000_000,
        ScalarValue::DurationMicrosecond(Some(v)) => *v as i128 * 1_000,
        ScalarValue::DurationNanosecond(Some(v)) => *v as i128,
        other => {
            return plan_err!(
                "{name}: {arg} must be a duration such as '10 minutes' or INTERVAL '10 minutes', \
                 got a {}",
                other.data_type()
            );
        }
    })
}

/// Converts nanoseconds to a whole number of `unit`s.
fn to_unit(name: &str, arg: &str, nanos: i128, unit: TimeUnit) -> Result<i64> {
    let per_unit: i128 = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    if nanos % per_unit != 0 {
        return plan_err!(
            "{name}: {arg} of {nanos} ns is not a whole number of {} (the unit of the \
             event-time column)",
            unit_name(unit)
        );
    }
    match i64::try_from(nanos / per_unit) {
        Ok(value) => Ok(value),
        Err(_) => plan_err!("{name}: {arg} is too large for the event-time column"),
    }
}

fn unit_name(unit: TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Second => "seconds",
        TimeUnit::Millisecond => "milliseconds",
        TimeUnit::Microsecond => "microseconds",
        TimeUnit::Nanosecond => "nanoseconds",
    }
}

fn is_duration_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Interval(_)
            | DataType::Duration(_)
            | DataType::Null
    )
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let kind = self.kind;
        let names = kind.arg_names();
        if arg_types.len() < kind.min_args() || arg_types.len() > names.len() {
            return plan_err!(
                "{}: expected {}, got {} arguments",
                kind.name(),
                kind.usage(),
                arg_types.len()
            );
        }
        let mut types = arg_types.to_vec();
        match &types[0] {
            DataType::Timestamp(_, _) => {}
            DataType::Null => types[0] = DataType::Timestamp(TimeUnit::Nanosecond, None),
            other => {
                return plan_err!(
                    "{}: {} must be a timestamp, got {other}",
                    kind.name(),
                    names[0]
                );
            }
        }
        for (i, data_type) in types.iter().enumerate().skip(1) {
            if !is_duration_type(data_type) {
                return plan_err!(
                    "{}: {} must be a duration such as '10 minutes' or INTERVAL '10 minutes', \
                     got {data_type}",
                    kind.name(),
                    names[i]
                );
            }
        }
        Ok(types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        // Not used by DataFusion when `return_field_from_args` is implemented;
        // the type does not depend on the constants, only their checks do.
        time_unit(self.name(), &arg_types[0])?;
        Ok(self.return_type(&arg_types[0]))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let ts = &args.arg_fields[0];
        let unit = time_unit(self.name(), ts.data_type())?;
        self.spec(unit, args.scalar_arguments)?;
        Ok(Arc::new(Field::new(
            self.name(),
            self.return_type(ts.data_type()),
            ts.is_nullable(),
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let ts_type = args.arg_fields[0].data_type().clone();
        let unit = time_unit(name, &ts_type)?;
        let mut constants = Vec::with_capacity(args.args.len());
        for (i, arg) in args.args.iter().enumerate().skip(1) {
            match arg {
                ColumnarValue::Scalar(value) => constants.push(Some(value)),
                ColumnarValue::Array(_) => {
                    return exec_err!(
                        "{name}: {} must be a constant, not a column",
                        self.kind.arg_names()[i]
                    );
                }
            }
        }
        // `spec` indexes arguments by position: put the event time first.
        constants.insert(0, None);
        let spec = self.spec(unit, &constants)?;

        let (ts, is_scalar) = match &args.args[0] {
            ColumnarValue::Array(array) => (Arc::clone(array), false),
            ColumnarValue::Scalar(value) => (value.to_array_of_size(1)?, true),
        };
        let result = match self.kind {
            Kind::Tumble | Kind::Window => tumble_array(name, &ts, spec)?,
            Kind::Hop => hop_array(name, &ts, spec)?,
        };
        if is_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &result, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

/// The raw `i64` values of a timestamp array (any unit).
fn timestamp_values(array: &ArrayRef) -> Result<&[i64]> {
    Ok(match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            array.as_primitive::<TimestampSecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            array.as_primitive::<TimestampMillisecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            array.as_primitive::<TimestampMicrosecondType>().values()
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            array.as_primitive::<TimestampNanosecondType>().values()
        }
        other => return exec_err!("expected a timestamp array, got {other}"),
    })
}

/// A timestamp array of type `ts_type` over `values`.
fn timestamp_array(
    ts_type: &DataType,
    values: Vec<i64>,
    nulls: Option<NullBuffer>,
) -> Result<ArrayRef> {
    let ints = Int64Array::new(ScalarBuffer::from(values), nulls);
    let data = ints
        .into_data()
        .into_builder()
        .data_type(ts_type.clone())
        .build()?;
    Ok(make_array(data))
}

/// Start of the window of length `slide` (aligned to `offset`) holding `ts`:
/// the largest `offset + k * slide <= ts`. `None` on overflow.
#[inline]
fn floor_start(ts: i64, slide: i64, offset: i64) -> Option<i64> {
    // `0 <= offset < slide`, so `ts - offset` only overflows near i64::MIN.
    let rem = match ts.checked_sub(offset) {
        Some(shifted) => shifted.rem_euclid(slide),
        None => (ts as i128 - offset as i128).rem_euclid(slide as i128) as i64,
    };
    ts.checked_sub(rem)
}

fn overflow<T>(name: &str, ts: i64) -> Result<T> {
    exec_err!("{name}: the window of timestamp {ts} lies outside the range of the column's type")
}

fn tumble_array(name: &str, ts: &ArrayRef, spec: Spec) -> Result<ArrayRef> {
    let values = timestamp_values(ts)?;
    let nulls = ts.logical_nulls();
    let mut starts = Vec::with_capacity(values.len());
    let mut ends = Vec::with_capacity(values.len());
    for (i, &t) in values.iter().enumerate() {
        if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
            starts.push(0);
            ends.push(0);
            continue;
        }
        let Some((start, end)) = floor_start(t, spec.size, spec.offset)
            .and_then(|start| Some((start, start.checked_add(spec.size)?)))
        else {
            return overflow(name, t);
        };
        starts.push(start);
        ends.push(end);
    }
    let ts_type = ts.data_type();
    let columns = vec![
        timestamp_array(ts_type, starts, nulls.clone())?,
        timestamp_array(ts_type, ends, nulls.clone())?,
    ];
    Ok(Arc::new(StructArray::try_new(
        window_fields(ts_type),
        columns,
        nulls,
    )?))
}

fn hop_array(name: &str, ts: &ArrayRef, spec: Spec) -> Result<ArrayRef> {
    let Spec {
        size,
        slide,
        offset,
    } = spec;
    let values = timestamp_values(ts)?;
    let nulls = ts.logical_nulls();
    let per_row = ((size - 1) / slide + 1) as usize;
    let mut offsets = Vec::with_capacity(values.len() + 1);
    let mut starts = Vec::with_capacity(values.len() * per_row);
    let mut ends = Vec::with_capacity(values.len() * per_row);
    offsets.push(0i32);
    for (i, &t) in values.iter().enumerate() {
        if !nulls.as_ref().is_some_and(|n| n.is_null(i)) {
            let Some(last) = floor_start(t, slide, offset) else {
                return overflow(name, t);
            };
            // Windows start at last, last - slide, ...; those that still
            // reach past t: start + size > t, i.e. (t - start) < size.
            let into_last = t - last; // in [0, slide)
            if into_last < size {
                let count = (size - into_last - 1) / slide + 1;
                let Some(first) = (count - 1)
                    .checked_mul(slide)
                    .and_then(|back| last.checked_sub(back))
                else {
                    return overflow(name, t);
                };
                for k in 0..count {
                    // first + k * slide <= last: no overflow.
                    let start = first + k * slide;
                    let Some(end) = start.checked_add(size) else {
                        return overflow(name, t);
                    };
                    starts.push(start);
                    ends.push(end);
                }
            }
        }
        let Ok(end_offset) = i32::try_from(starts.len()) else {
            return exec_err!("{name}: more than {} windows in one batch", i32::MAX);
        };
        offsets.push(end_offset);
    }
    let ts_type = ts.data_type();
    let fields = window_fields(ts_type);
    let windows = StructArray::try_new(
        fields.clone(),
        vec![
            timestamp_array(ts_type, starts, None)?,
            timestamp_array(ts_type, ends, None)?,
        ],
        None,
    )?;
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Struct(fields), true)),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(windows),
        nulls,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::Schema;
    use datafusion::datasource::MemTable;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const UNITS: [TimeUnit; 4] = [
        TimeUnit::Second,
        TimeUnit::Millisecond,
        TimeUnit::Microsecond,
        TimeUnit::Nanosecond,
    ];

    fn per_second(unit: TimeUnit) -> i64 {
        match unit {
            TimeUnit::Second => 1,
            TimeUnit::Millisecond => 1_000,
            TimeUnit::Microsecond => 1_000_000,
            TimeUnit::Nanosecond => 1_000_000_000,
        }
    }

    fn context() -> SessionContext {
        let ctx = SessionContext::new();
        register_window_functions(&ctx);
        ctx
    }

    /// Registers table `t(ts, s)`: `ts` of `ts_type` holding `values`, `s`
    /// a string column ('1 minute' on every row).
    fn register(ctx: &SessionContext, ts_type: &DataType, values: &[Option<i64>]) {
        let ts = timestamp_array(
            ts_type,
            values.iter().map(|v| v.unwrap_or(0)).collect(),
            Some(NullBuffer::from_iter(values.iter().map(Option::is_some))),
        )
        .unwrap();
        let s: ArrayRef = Arc::new(StringArray::from(vec!["1 minute"; values.len()]));
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", ts_type.clone(), true),
            Field::new("s", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![ts, s]).unwrap();
        let _ = ctx.deregister_table("t");
        ctx.register_table(
            "t",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
        )
        .unwrap();
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    async fn plan_error(ctx: &SessionContext, sql: &str) -> String {
        match ctx.sql(sql).await {
            Err(e) => e.to_string(),
            Ok(df) => match df.collect().await {
                Err(e) => {
                    panic!("expected a planning error for {sql}, got an execution error: {e}")
                }
                Ok(_) => panic!("expected an error for {sql}"),
            },
        }
    }

    /// `(start, end)` per row of a window struct column, raw values.
    fn windows(array: &dyn Array) -> Vec<Option<(i64, i64)>> {
        let windows = array.as_struct();
        let start = arrow::compute::cast(windows.column(0), &DataType::Int64).unwrap();
        let end = arrow::compute::cast(windows.column(1), &DataType::Int64).unwrap();
        let (start, end) = (
            start.as_primitive::<arrow::datatypes::Int64Type>(),
            end.as_primitive::<arrow::datatypes::Int64Type>(),
        );
        (0..windows.len())
            .map(|i| {
                if windows.is_null(i) {
                    assert!(
                        start.is_null(i) && end.is_null(i),
                        "fields of a null window are null"
                    );
                    None
                } else {
                    Some((start.value(i), end.value(i)))
                }
            })
            .collect()
    }

    /// The model: the window of `size` aligned to `offset` holding `t`.
    fn model_tumble(t: i64, size: i64, offset: i64) -> (i64, i64) {
        let start = (t as i128 - (t as i128 - offset as i128).rem_euclid(size as i128)) as i64;
        (start, start + size)
    }

    /// The brute-force model of hop: every start `offset + k * slide` in
    /// a range surely covering `t`, kept when `start <= t < start + size`.
    fn model_hop(t: i64, size: i64, slide: i64, offset: i64) -> Vec<(i64, i64)> {
        let mut start = (t - size - 2 * slide).div_euclid(slide) * slide + offset.rem_euclid(slide);
        let mut out = Vec::new();
        while start <= t + slide {
            if start <= t && t < start + size {
                out.push((start, start + size));
            }
            start += slide;
        }
        out
    }

    #[tokio::test]
    async fn tumble_boundaries_for_every_unit_size_and_offset() {
        let ctx = context();
        for unit in UNITS {
            let ts_type = DataType::Timestamp(unit, Some("+02:00".into()));
            let ps = per_second(unit);
            // Boundaries, one unit either side, before and after 1970, nulls.
            let mut values = vec![None];
            for seconds in [
                -3_601i64,
                -61,
                -60,
                -59,
                -1,
                0,
                1,
                59,
                60,
                61,
                3_599,
                1_700_000_000,
            ] {
                for delta in [-1, 0, 1] {
                    values.push(Some(seconds * ps + delta));
                }
            }
            values.push(None);
            register(&ctx, &ts_type, &values);
            for (size_sql, size) in [
                ("'1 minute'", 60),
                ("'10 s'", 10),
                ("INTERVAL '1 hour'", 3_600),
            ] {
                for (offset_sql, offset) in [
                    (None, 0),
                    (Some("'15 seconds'"), 15),
                    (Some("INTERVAL '-5 seconds'"), -5),
                ] {
                    let call = match offset_sql {
                        None => format!("tumble(ts, {size_sql})"),
                        Some(o) => format!("tumble(ts, {size_sql}, {o})"),
                    };
                    let batches = run(&ctx, &format!("SELECT {call} AS w FROM t"))
                        .await
                        .unwrap();
                    let column = batches[0].column(0);
                    assert_eq!(column.data_type(), &window_type(&ts_type), "{call}");
                    let expected: Vec<_> = values
                        .iter()
                        .map(|v| v.map(|t| model_tumble(t, size * ps, offset * ps)))
                        .collect();
                    assert_eq!(windows(column.as_ref()), expected, "{call} on {unit:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn tumble_before_1970_and_on_boundaries() {
        let ctx = context();
        let ts_type = DataType::Timestamp(TimeUnit::Second, None);
        register(
            &ctx,
            &ts_type,
            &[
                Some(-1),
                Some(-60),
                Some(-61),
                Some(0),
                Some(59),
                Some(60),
                None,
            ],
        );
        let batches = run(&ctx, "SELECT tumble(ts, '1 minute') FROM t")
            .await
            .unwrap();
        assert_eq!(
            windows(batches[0].column(0).as_ref()),
            vec![
                Some((-60, 0)),
                Some((-60, 0)),
                Some((-120, -60)),
                Some((0, 60)),
                Some((0, 60)),
                Some((60, 120)),
                None,
            ]
        );
        // Field access on a null window gives nulls.
        let batches = run(
            &ctx,
            "SELECT w.start AS s FROM (SELECT tumble(ts, '1 minute') AS w FROM t)",
        )
        .await
        .unwrap();
        assert!(batches[0].column(0).is_null(6));
    }

    #[tokio::test]
    async fn tumble_of_a_constant_and_of_interval_literals() {
        let ctx = context();
        let batches = run(
            &ctx,
            "SELECT tumble(TIMESTAMP '2024-03-05 10:07:30', INTERVAL '90 seconds') AS a,
                    tumble(TIMESTAMP '2024-03-05 10:07:30', INTERVAL '1' DAY) AS b,
                    tumble(TIMESTAMP '2024-03-05 10:07:30', '1 hour', INTERVAL '15 minutes') AS c,
                    window(TIMESTAMP '2024-03-05 10:07:30', '1 hour', '1 hour', '15 minutes') AS d",
        )
        .await
        .unwrap();
        let table = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        for expected in [
            "{start: 2024-03-05T00:00:00, end: 2024-03-06T00:00:00}",
            "{start: 2024-03-05T09:15:00, end: 2024-03-05T10:15:00}",
        ] {
            assert!(table.contains(expected), "{expected} not in\n{table}");
        }
        // 10:07:30 is a multiple of 90 s since the epoch: it starts a window.
        assert!(
            table.contains("{start: 2024-03-05T10:07:30, end: 2024-03-05T10:09:00}"),
            "{table}"
        );
        assert_eq!(
            table
                .matches("{start: 2024-03-05T09:15:00, end: 2024-03-05T10:15:00}")
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn boundaries_are_utc_and_the_offset_aligns_them_to_local_time() {
        let ctx = context();
        let ts =
            "arrow_cast(TIMESTAMP '2024-01-01 10:00:00', 'Timestamp(Second, Some(\"+05:30\"))')";
        let batches = run(
            &ctx,
            &format!(
                "SELECT tumble({ts}, '1 day') AS utc,
                        tumble({ts}, '1 day', '18.5 hours') AS a,
                        tumble({ts}, '1 day', INTERVAL '-5 hours -30 minutes') AS b,
                        tumble({ts}, '1 day')['start'] AS s"
            ),
        )
        .await
        .unwrap();
        let table = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(
            table.contains("{start: 2024-01-01T05:30:00+05:30, end: 2024-01-02T05:30:00+05:30}"),
            "{table}"
        );
        assert_eq!(
            table
                .matches("{start: 2024-01-01T00:00:00+05:30, end: 2024-01-02T00:00:00+05:30}")
                .count(),
            2,
            "{table}"
        );
        assert!(table.contains("| 2024-01-01T05:30:00+05:30 |"), "{table}");
    }

    #[tokio::test]
    async fn window_is_spark_tumble() {
        let ctx = context();
        let ts_type = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        register(
            &ctx,
            &ts_type,
            &[Some(-1), Some(59_999), Some(60_000), None],
        );
        let a = run(&ctx, "SELECT window(ts, '1 minute') FROM t")
            .await
            .unwrap();
        let b = run(&ctx, "SELECT tumble(ts, '1 minute') FROM t")
            .await
            .unwrap();
        assert_eq!(
            windows(a[0].column(0).as_ref()),
            windows(b[0].column(0).as_ref())
        );
        let err = plan_error(&ctx, "SELECT window(ts, '1 minute', '30 seconds') FROM t").await;
        assert!(
            err.contains("window: a slide_duration different") && err.contains("hop"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn group_by_window_fields_in_batch() {
        let ctx = context();
        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, None);
        let minute = 60_000_000;
        register(
            &ctx,
            &ts_type,
            &[
                Some(0),
                Some(minute - 1),
                Some(minute),
                Some(-1),
                Some(3 * minute + 5),
                Some(minute + 7),
                None,
            ],
        );
        let batches = run(
            &ctx,
            "SELECT w.start AS start, w.end AS \"end\", count(*) AS n FROM (SELECT tumble(ts, '1 minute') AS w FROM t)
             GROUP BY w.start, w.end ORDER BY w.start NULLS LAST",
        )
        .await
        .unwrap();
        let table = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let expected = [
            "+---------------------+---------------------+---+",
            "| start               | end                 | n |",
            "+---------------------+---------------------+---+",
            "| 1969-12-31T23:59:00 | 1970-01-01T00:00:00 | 1 |",
            "| 1970-01-01T00:00:00 | 1970-01-01T00:01:00 | 2 |",
            "| 1970-01-01T00:01:00 | 1970-01-01T00:02:00 | 2 |",
            "| 1970-01-01T00:03:00 | 1970-01-01T00:04:00 | 1 |",
            "|                     |                     | 1 |",
            "+---------------------+---------------------+---+",
        ];
        assert_eq!(table, expected.join("\n"));
        // Grouping by the struct itself works too.
        let batches = run(
            &ctx,
            "SELECT tumble(ts, '1 minute') AS w, count(*) FROM t GROUP BY w",
        )
        .await
        .unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
    }

    fn hop_rows(array: &dyn Array) -> Vec<Option<Vec<(i64, i64)>>> {
        let list = array.as_list::<i32>();
        (0..list.len())
            .map(|i| {
                (!list.is_null(i)).then(|| {
                    windows(list.value(i).as_ref())
                        .into_iter()
                        .map(Option::unwrap)
                        .collect()
                })
            })
            .collect()
    }

    #[tokio::test]
    async fn hop_matches_brute_force_model() {
        let ctx = context();
        let mut rng = StdRng::seed_from_u64(0x7142);
        // (size, slide, offset) in seconds, including sizes that are not
        // multiples of the slide and slides longer than the size (gaps).
        let cases = [
            (60, 60, 0),
            (600, 300, 0),
            (600, 60, 0),
            (10, 3, 0),
            (10, 3, 2),
            (5, 7, 0),
            (5, 7, 3),
            (7, 5, 4),
            (3_600, 900, 600),
        ];
        for unit in [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Nanosecond,
        ] {
            let ts_type = DataType::Timestamp(unit, Some("-05:00".into()));
            let ps = per_second(unit);
            let mut values: Vec<Option<i64>> = (0..500)
                .map(|_| Some(rng.random_range(-20_000 * ps..20_000 * ps)))
                .collect();
            values.extend([None, Some(0), Some(-ps), Some(-1), Some(ps * 60)]);
            register(&ctx, &ts_type, &values);
            for (size, slide, offset) in cases {
                let sql = if offset == 0 {
                    format!("SELECT hop(ts, '{size} s', INTERVAL '{slide} seconds') FROM t")
                } else {
                    format!("SELECT hop(ts, '{size} s', '{slide} s', '{offset} s') FROM t")
                };
                let batches = run(&ctx, &sql).await.unwrap();
                let column = batches[0].column(0);
                assert_eq!(
                    column.data_type(),
                    &DataType::new_list(window_type(&ts_type), true)
                );
                let expected: Vec<_> = values
                    .iter()
                    .map(|v| v.map(|t| model_hop(t, size * ps, slide * ps, offset * ps)))
                    .collect();
                let actual = hop_rows(column.as_ref());
                assert_eq!(actual, expected, "{sql} on {unit:?}");
                if size % slide == 0 {
                    let per_row = (size / slide) as usize;
                    assert!(actual.iter().flatten().all(|w| w.len() == per_row), "{sql}");
                }
            }
        }
    }

    #[tokio::test]
    async fn unnest_hop_gives_one_row_per_window() {
        let ctx = context();
        let ts_type = DataType::Timestamp(TimeUnit::Millisecond, None);
        let minute = 60_000;
        register(
            &ctx,
            &ts_type,
            &[Some(0), Some(7 * minute), Some(12 * minute), None],
        );
        let batches = run(
            &ctx,
            "SELECT w.start AS start, w.end AS \"end\", count(*) AS n
             FROM (SELECT unnest(hop(ts, '10 minutes', '5 minutes')) AS w FROM t)
             GROUP BY w.start, w.end ORDER BY w.start NULLS LAST",
        )
        .await
        .unwrap();
        let table = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let expected = [
            "+---------------------+---------------------+---+",
            "| start               | end                 | n |",
            "+---------------------+---------------------+---+",
            "| 1969-12-31T23:55:00 | 1970-01-01T00:05:00 | 1 |",
            "| 1970-01-01T00:00:00 | 1970-01-01T00:10:00 | 2 |",
            "| 1970-01-01T00:05:00 | 1970-01-01T00:15:00 | 2 |",
            "| 1970-01-01T00:10:00 | 1970-01-01T00:20:00 | 1 |",
            "+---------------------+---------------------+---+",
        ];
        assert_eq!(table, expected.join("\n"));
    }

    #[tokio::test]
    async fn dataframe_helpers() {
        let ctx = SessionContext::new(); // no registration needed
        let ts_type = DataType::Timestamp(TimeUnit::Second, None);
        register(&ctx, &ts_type, &[Some(-1), Some(125)]);
        let df = ctx.table("t").await.unwrap();
        let batches = df
            .select(vec![
                tumble(datafusion::prelude::col("ts"), "1 minute"),
                tumble_with_offset(datafusion::prelude::col("ts"), "1 minute", "30 s"),
                hop(datafusion::prelude::col("ts"), "2 minutes", "1 minute"),
                hop_with_offset(
                    datafusion::prelude::col("ts"),
                    "2 minutes",
                    "1 minute",
                    "30 s",
                ),
            ])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let batch = &batches[0];
        assert_eq!(
            windows(batch.column(0).as_ref()),
            vec![Some((-60, 0)), Some((120, 180))]
        );
        assert_eq!(
            windows(batch.column(1).as_ref()),
            vec![Some((-30, 30)), Some((90, 150))]
        );
        assert_eq!(
            hop_rows(batch.column(2).as_ref()),
            vec![
                Some(vec![(-120, 0), (-60, 60)]),
                Some(vec![(60, 180), (120, 240)])
            ]
        );
        assert_eq!(
            hop_rows(batch.column(3).as_ref()),
            vec![
                Some(vec![(-90, 30), (-30, 90)]),
                Some(vec![(30, 150), (90, 210)])
            ]
        );
    }

    #[tokio::test]
    async fn hop_of_null_is_null() {
        let ctx = context();
        register(
            &ctx,
            &DataType::Timestamp(TimeUnit::Second, None),
            &[None, Some(5)],
        );
        let batches = run(&ctx, "SELECT hop(ts, '10 s', '5 s') FROM t")
            .await
            .unwrap();
        assert_eq!(
            hop_rows(batches[0].column(0).as_ref()),
            vec![None, Some(vec![(0, 10), (5, 15)])]
        );
    }

    #[tokio::test]
    async fn bad_arguments_are_planning_errors() {
        let ctx = context();
        register(
            &ctx,
            &DataType::Timestamp(TimeUnit::Second, None),
            &[Some(0)],
        );
        let cases = [
            (
                "SELECT tumble(ts, '0 seconds') FROM t",
                "tumble: size must be greater than zero",
            ),
            (
                "SELECT tumble(ts, INTERVAL '-1 minute') FROM t",
                "tumble: size must be greater than zero",
            ),
            (
                "SELECT tumble(ts, s) FROM t",
                "tumble: size must be a constant",
            ),
            (
                "SELECT tumble(ts, INTERVAL '1 month') FROM t",
                "tumble: size must not contain months",
            ),
            (
                "SELECT hop(ts, INTERVAL '1 year', '1 day') FROM t",
                "hop: size must not contain months",
            ),
            (
                "SELECT tumble(ts, 'ten minutes') FROM t",
                "tumble: invalid size 'ten minutes'",
            ),
            (
                "SELECT tumble(ts, '1 minute', 'soon') FROM t",
                "tumble: invalid offset 'soon'",
            ),
            (
                "SELECT tumble(ts, '1500 ms') FROM t",
                "not a whole number of seconds",
            ),
            (
                "SELECT tumble(ts, NULL) FROM t",
                "tumble: size must not be NULL",
            ),
            (
                "SELECT tumble(ts, 10) FROM t",
                "tumble: size must be a duration",
            ),
            (
                "SELECT tumble(s, '1 minute') FROM t",
                "tumble: ts must be a timestamp",
            ),
            (
                "SELECT tumble(ts) FROM t",
                "expected tumble(ts, size [, offset])",
            ),
            (
                "SELECT hop(ts, '1 minute') FROM t",
                "expected hop(ts, size, slide [, offset])",
            ),
            (
                "SELECT hop(ts, '1 minute', '0 s') FROM t",
                "hop: slide must be greater than zero",
            ),
            (
                "SELECT hop(ts, '1 minute', s) FROM t",
                "hop: slide must be a constant",
            ),
            (
                "SELECT hop(ts, '1 day', '1 ms') FROM t",
                "not a whole number of seconds",
            ),
            (
                "SELECT hop(ts, '100 days', '1 s') FROM t",
                "windows per row",
            ),
        ];
        for (sql, expected) in cases {
            let err = plan_error(&ctx, sql).await;
            assert!(
                err.contains(expected),
                "{sql}: expected '{expected}' in: {err}"
            );
        }
    }

    #[test]
    fn floor_start_near_the_limits() {
        assert_eq!(floor_start(i64::MIN + 5, 10, 0), None);
        assert_eq!(floor_start(i64::MIN + 5, 10, 7), Some(i64::MIN + 5));
        assert_eq!(floor_start(i64::MAX, 10, 0), Some(i64::MAX - i64::MAX % 10));
        assert_eq!(floor_start(-1, 10, 3), Some(-7));
        let _ = Int64Array::from(vec![1]); // keep the import honest
    }
}
