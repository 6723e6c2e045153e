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
//! - SQL `window(ts, size [, slide [, start_time]])` is Spark's: a tumbling
//!   window, or with a `slide` different from `size` a sliding window, which
//!   (giving several windows per row) is only a `GROUP BY` key: as in Spark,
//!   `GROUP BY window(ts, '10 minutes', '5 minutes')` counts each row in
//!   every window containing it ([`WindowGroupingRule`] rewrites it to an
//!   `UNNEST` of `hop`).
//! - [`session_window`] (SQL `session_window(ts, gap)`) is a `GROUP BY`
//!   key: the rows of a group whose `[ts, ts + gap)` overlap form one
//!   session `[first ts, last ts + gap)`; `gap` may differ per row
//!   ([`session_window_with_gap`]). A session depends on other rows, so
//!   [`WindowGroupingRule`] (installed by [`register_window_functions`])
//!   rewrites the aggregation into DataFusion window functions.
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

mod function;
mod grouping;
mod kernels;
mod regroup;
mod session;
#[cfg(test)]
mod tests;
mod window_time;

use std::sync::{Arc, LazyLock};

use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, ScalarUDF};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::lit;

use function::{Kind, WindowFunction};
pub use grouping::{SLIDING_WINDOW_COLUMN, WindowGroupingRule, expand_grouping_windows};
use session::SessionWindowFunction;
pub use session::{SESSION_COLUMN, SESSION_PREFIX};

/// Most windows a single row may fall into with [`hop`] (`size / slide`).
/// A larger ratio is almost certainly a unit mistake and would multiply
/// every row that many times.
pub const MAX_WINDOWS_PER_ROW: i64 = 100_000;

/// Registers `tumble`, `hop`, `window`, `session_window`, `window_time` and
/// `within_watermark` (the `DISTINCT ON` key that asks for deduplication
/// within the watermark) on `ctx`, for SQL, and installs [`WindowGroupingRule`], which sliding `window(…)` and
/// `session_window` keys need in batch queries.
///
/// The DataFrame helpers [`tumble`] and [`hop`] work without
/// registration; [`session_window`] needs the rule in batch queries
/// (streaming queries apply it themselves).
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
    ctx.register_udf(session_window_udf().as_ref().clone());
    ctx.register_udf(window_time_udf().as_ref().clone());
    // DISTINCT ON's marker for deduplication within the watermark.
    ctx.register_udf(ScalarUDF::new_from_impl(
        crate::dedup::within_watermark::WithinWatermark::new(),
    ));
    if !ctx
        .state()
        .analyzer()
        .rules
        .iter()
        .any(|rule| rule.name() == WindowGroupingRule.name())
    {
        ctx.add_analyzer_rule(Arc::new(WindowGroupingRule));
    }
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

/// A session window over the event-time column `ts` with a constant `gap`
/// (e.g. `"5 minutes"`), as a `GROUP BY` key: rows of a group whose
/// sessions `[ts, ts + gap)` overlap fall into one session. Same
/// as SQL `session_window(ts, gap)`; see [`session_window_with_gap`] for a
/// gap per row.
///
/// ```
/// use datafusion::functions_aggregate::expr_fn::count;
/// use datafusion::prelude::*;
/// use tidemill_engine::window::{register_window_functions, session_window};
///
/// # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
/// let ctx = SessionContext::new();
/// register_window_functions(&ctx); // installs the session rewrite
/// let batches = ctx
///     .sql(
///         "SELECT * FROM (VALUES ('u1', TIMESTAMP '2024-01-01 10:00:00'),
///                                ('u1', TIMESTAMP '2024-01-01 10:03:00'),
///                                ('u1', TIMESTAMP '2024-01-01 10:20:00')) AS t(user_id, ts)",
///     )
///     .await?
///     .aggregate(
///         vec![col("user_id"), session_window(col("ts"), "5 minutes").alias("s")],
///         vec![count(lit(1)).alias("clicks")],
///     )?
///     .sort(vec![col("s").sort(true, true)])?
///     .collect()
///     .await?;
/// let table = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
/// assert!(table.contains("| u1      | {start: 2024-01-01T10:00:00, end: 2024-01-01T10:08:00} | 2      |"));
/// assert!(table.contains("| u1      | {start: 2024-01-01T10:20:00, end: 2024-01-01T10:25:00} | 1      |"));
/// # Ok(()) }
/// ```
pub fn session_window(ts: Expr, gap: &str) -> Expr {
    call(session_window_udf(), vec![ts, lit(gap)])
}

/// A session window whose gap is an interval expression evaluated per row
/// (e.g. longer sessions for some users). Same as SQL
/// `session_window(ts, <interval expression>)`.
pub fn session_window_with_gap(ts: Expr, gap: Expr) -> Expr {
    call(session_window_udf(), vec![ts, gap])
}

/// The event time of window `w`: its end less one unit of its timestamp
/// type (one microsecond for microsecond timestamps, as Spark's
/// `window_time`), the latest event time a row of the window can have.
/// Same as SQL `window_time(w)`; a null window gives null.
///
/// ```
/// use datafusion::prelude::*;
/// use tidemill_engine::window::{register_window_functions, tumble, window_time};
///
/// # #[tokio::main] async fn main() -> datafusion::error::Result<()> {
/// let ctx = SessionContext::new();
/// register_window_functions(&ctx);
/// let df = ctx.sql("SELECT TIMESTAMP '2024-01-01 10:07:30' AS ts").await?;
/// let df = df.select(vec![window_time(tumble(col("ts"), "5 minutes")).alias("t")])?;
/// let table = arrow::util::pretty::pretty_format_batches(&df.collect().await?)?.to_string();
/// assert!(table.contains("2024-01-01T10:09:59.999999999"), "{table}");
/// # Ok(()) }
/// ```
pub fn window_time(w: Expr) -> Expr {
    call(window_time_udf(), vec![w])
}

/// The `window_time` function (see [`window_time()`]).
pub fn window_time_udf() -> &'static Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(window_time::WindowTime::new())));
    &UDF
}

/// The `session_window` function (see [`session_window`]).
pub fn session_window_udf() -> &'static Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> =
        LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(SessionWindowFunction::new())));
    &UDF
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
