//! How long a row of a stream–stream join may wait for a match: the
//! event-time bounds read from the join condition and the watermarks of
//! its inputs, as Spark derives its join state watermarks.
//!
//! A condition such as `l.t BETWEEN r.t - INTERVAL '5' SECOND AND r.t +
//! INTERVAL '10' SECOND` bounds the difference of the two sides' times:
//! `lo <= l.t - r.t <= hi` (here -5 s and 10 s). A left row at `l.t` can
//! only match right rows with `r.t <= l.t - lo`. Once the watermark `W`
//! reaches `l.t - lo`, every right row that could match it would be at or
//! below `W`, and such rows are dropped as late, so the left row can go:
//! its state expires at `l.t - lo`. A right row expires at `r.t + hi` by
//! the same argument. An equality of window columns (`l.w = r.w`) bounds
//! both sides by the window's end, and an equality of times by the time.

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

use crate::aggregate::window_unit;

/// A column of one side's rows, by index, with its time unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimeColumn {
    /// The column's name, for messages.
    pub name: String,
    /// Its index in the side's schema.
    pub index: usize,
    /// Its time unit.
    pub unit: TimeUnit,
}

/// When a stored row of one side can no longer match a row to come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// At the row's `column` plus `offset_ms`.
    Time { column: TimeColumn, offset_ms: i64 },
    /// At the end of the row's window `column`.
    WindowEnd { column: TimeColumn },
}

impl Expiry {
    /// The column the expiry is computed from.
    pub fn column(&self) -> &TimeColumn {
        match self {
            Expiry::Time { column, .. } | Expiry::WindowEnd { column } => column,
        }
    }

    /// Describes the rule for `explain`.
    pub fn describe(&self) -> String {
        match self {
            Expiry::Time { column, offset_ms } if *offset_ms == 0 => {
                format!("when the watermark reaches {}", column.name)
            }
            Expiry::Time { column, offset_ms } => {
                format!(
                    "when the watermark reaches {} {:+} ms",
                    column.name, offset_ms
                )
            }
            Expiry::WindowEnd { column } => {
                format!("when the watermark reaches the end of {}", column.name)
            }
        }
    }
}

/// The time bounds of one stream–stream join.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct JoinBounds {
    /// Each side's watermarked event-time column (rows at or below the
    /// watermark are dropped as late), if it has one.
    pub event_time: [Option<TimeColumn>; 2],
    /// The two columns the condition relates and `(lo, hi)` with
    /// `lo <= left - right <= hi` (in milliseconds), where it bounds them.
    pub range: Option<([TimeColumn; 2], Option<i64>, Option<i64>)>,
    /// When each side's stored rows expire, if they ever do.
    pub expiry: [Option<Expiry>; 2],
}

impl JoinBounds {
    /// Reads the bounds of a join of `schemas[0]` and `schemas[1]` on
    /// `on` with `filter`; `watermarked` names each side's watermarked
    /// columns.
    pub fn read(
        schemas: [&DFSchema; 2],
        on: &[(Expr, Expr)],
        filter: Option<&Expr>,
        watermarked: [&[String]; 2],
    ) -> Self {
        let event_time = [0, 1].map(|side| {
            watermarked[side]
                .iter()
                .find_map(|name| time_column(schemas[side], &Column::new_unqualified(name)))
        });
        // Every bound of `left - right` found, per pair of columns.
        let mut ranges: Vec<([TimeColumn; 2], Option<i64>, Option<i64>)> = Vec::new();
        let mut window_keys: Option<[TimeColumn; 2]> = None;
        let mut add = |columns: [TimeColumn; 2], lo: Option<i64>, hi: Option<i64>| match ranges
            .iter_mut()
            .find(|(c, _, _)| *c == columns)
        {
            Some((_, l, h)) => {
                *l = max_opt(*l, lo);
                *h = min_opt(*h, hi);
            }
            None => ranges.push((columns, lo, hi)),
        };
        for (l, r) in on {
            let (Expr::Column(lc), Expr::Column(rc)) = (l, r) else {
                continue;
            };
            let (Ok(li), Ok(ri)) = (
                schemas[0].index_of_column(lc),
                schemas[1].index_of_column(rc),
            ) else {
                continue;
            };
            let (lt, rt) = (
                schemas[0].field(li).data_type(),
                schemas[1].field(ri).data_type(),
            );
            if let (Some(lu), Some(ru)) = (window_unit(lt), window_unit(rt)) {
                window_keys.get_or_insert([
                    TimeColumn {
                        name: lc.flat_name(),
                        index: li,
                        unit: lu,
                    },
                    TimeColumn {
                        name: rc.flat_name(),
                        index: ri,
                        unit: ru,
                    },
                ]);
            } else if let (Some(lcol), Some(rcol)) =
                (time_column(schemas[0], lc), time_column(schemas[1], rc))
            {
                add([lcol, rcol], Some(0), Some(0));
            }
        }
        for conjunct in filter.map(split_conjunction).unwrap_or_default() {
            for (a, op, b) in comparisons(conjunct) {
                if let Some((columns, lo, hi)) = bound(schemas, a, op, b) {
                    add(columns, lo, hi);
                }
            }
        }
        // The pair whose right column is the right side's event time and
        // left column the left's bounds the most; then any pair with one.
        let score = |(c, _, _): &([TimeColumn; 2], Option<i64>, Option<i64>)| {
            (0..2)
                .filter(|&s| {
                    event_time[s]
                        .as_ref()
                        .is_some_and(|e| e.index == c[s].index)
                })
                .count()
        };
        let range = ranges.into_iter().max_by_key(score);
        let mut expiry = [None, None];
        if let Some(([lcol, rcol], lo, hi)) = &range {
            // A left row waits for right rows with right <= left - lo: it
            // can go once the right side's watermark passes that, if its
            // right column is the right's event time.
            if let Some(lo) = lo
                && event_time[1]
                    .as_ref()
                    .is_some_and(|e| e.index == rcol.index)
            {
                expiry[0] = Some(Expiry::Time {
                    column: lcol.clone(),
                    offset_ms: -lo,
                });
            }
            if let Some(hi) = hi
                && event_time[0]
                    .as_ref()
                    .is_some_and(|e| e.index == lcol.index)
            {
                expiry[1] = Some(Expiry::Time {
                    column: rcol.clone(),
                    offset_ms: *hi,
                });
            }
        }
        if let Some(columns) = window_keys {
            for side in 0..2 {
                // Windows are of the other side's watermarked event time.
                if expiry[side].is_none() && event_time[1 - side].is_some() {
                    expiry[side] = Some(Expiry::WindowEnd {
                        column: columns[side].clone(),
                    });
                }
            }
        }
        Self {
            event_time,
            range,
            expiry,
        }
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The comparisons `a op b` a conjunct makes (a `BETWEEN` makes two).
fn comparisons(expr: &Expr) -> Vec<(&Expr, Operator, &Expr)> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if matches!(
                op,
                Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
            ) =>
        {
            vec![(left.as_ref(), *op, right.as_ref())]
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => vec![
            (expr.as_ref(), Operator::GtEq, low.as_ref()),
            (expr.as_ref(), Operator::LtEq, high.as_ref()),
        ],
        _ => Vec::new(),
    }
}

/// The bound `lo <= left - right <= hi` that `a op b` sets, if it relates
/// a time column of each side (each plus or minus a fixed interval).
fn bound(
    schemas: [&DFSchema; 2],
    a: &Expr,
    op: Operator,
    b: &Expr,
) -> Option<([TimeColumn; 2], Option<i64>, Option<i64>)> {
    let (ca, oa) = shifted_column(a)?;
    let (cb, ob) = shifted_column(b)?;
    let side = |c: &Column| -> Option<(usize, TimeColumn)> {
        (0..2).find_map(|s| time_column(schemas[s], c).map(|t| (s, t)))
    };
    let ((sa, ta), (sb, tb)) = (side(ca)?, side(cb)?);
    // ca + oa  op  cb + ob, as left - right op k.
    let (columns, op, k) = match (sa, sb) {
        (0, 1) => ([ta, tb], op, ob - oa),
        (1, 0) => ([tb, ta], op.swap()?, oa - ob),
        _ => return None,
    };
    Some(match op {
        Operator::Eq => (columns, Some(k), Some(k)),
        Operator::Gt | Operator::GtEq => (columns, Some(k), None),
        Operator::Lt | Operator::LtEq => (columns, None, Some(k)),
        _ => return None,
    })
}

/// `c`, `c + interval` or `c - interval`: the column and the shift in
/// milliseconds.
fn shifted_column(expr: &Expr) -> Option<(&Column, i64)> {
    match expr {
        Expr::Column(c) => Some((c, 0)),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, interval, sign) = match (left.as_ref(), op, right.as_ref()) {
                (Expr::Column(c), Operator::Plus, Expr::Literal(v, _)) => (c, v, 1),
                (Expr::Literal(v, _), Operator::Plus, Expr::Column(c)) => (c, v, 1),
                (Expr::Column(c), Operator::Minus, Expr::Literal(v, _)) => (c, v, -1),
                _ => return None,
            };
            Some((column, sign * interval_ms(interval)?))
        }
        _ => None,
    }
}

/// A fixed interval in milliseconds (not one counting months).
fn interval_ms(value: &ScalarValue) -> Option<i64> {
    const DAY_MS: i64 = 86_400_000;
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(i64::from(v.days) * DAY_MS + v.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(i64::from(v.days) * DAY_MS + i64::from(v.milliseconds))
        }
        ScalarValue::DurationSecond(Some(v)) => Some(v * 1000),
        ScalarValue::DurationMillisecond(Some(v)) => Some(*v),
        ScalarValue::DurationMicrosecond(Some(v)) => Some(v / 1000),
        ScalarValue::DurationNanosecond(Some(v)) => Some(v / 1_000_000),
        _ => None,
    }
}

/// `column` in `schema` if it is a timestamp.
fn time_column(schema: &DFSchema, column: &Column) -> Option<TimeColumn> {
    let index = schema.index_of_column(column).ok()?;
    match schema.field(index).data_type() {
        DataType::Timestamp(unit, _) => Some(TimeColumn {
            name: column.flat_name(),
            index,
            unit: *unit,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::{col, lit};

    use super::*;

    fn side(qualifier: &str) -> DFSchema {
        let schema = Schema::new(vec![
            Field::new("symbol", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]);
        DFSchema::try_from_qualified_schema(qualifier, &schema).unwrap()
    }

    fn seconds(n: i64) -> Expr {
        lit(ScalarValue::DurationSecond(Some(n)))
    }

    fn read(filter: Expr, watermarked: [&[String]; 2]) -> JoinBounds {
        let (l, r) = (side("l"), side("r"));
        JoinBounds::read(
            [&l, &r],
            &[(col("l.symbol"), col("r.symbol"))],
            Some(&filter),
            watermarked,
        )
    }

    #[test]
    fn a_between_bounds_both_sides_by_the_other_watermark() {
        let ts = vec!["ts".to_string()];
        let filter = col("l.ts").between(col("r.ts") - seconds(5), col("r.ts") + seconds(10));
        let bounds = read(filter, [&ts, &ts]);
        let (_, lo, hi) = bounds.range.clone().unwrap();
        assert_eq!((lo, hi), (Some(-5000), Some(10_000)));
        // A left row waits for right rows up to 5 s after it; a right row
        // for left rows up to 10 s after it.
        assert!(matches!(
            bounds.expiry[0],
            Some(Expiry::Time {
                offset_ms: 5000,
                ..
            })
        ));
        assert!(matches!(
            bounds.expiry[1],
            Some(Expiry::Time {
                offset_ms: 10_000,
                ..
            })
        ));
    }

    #[test]
    fn reversed_and_one_sided_comparisons_bound_one_side() {
        let ts = vec!["ts".to_string()];
        // r.ts > l.ts - 3 s, i.e. l.ts - r.ts < 3 s: right rows expire 3 s
        // after their time; left rows never.
        let filter = col("r.ts").gt(col("l.ts") - seconds(3));
        let bounds = read(filter, [&ts, &ts]);
        assert_eq!(bounds.expiry[0], None);
        assert!(matches!(
            bounds.expiry[1],
            Some(Expiry::Time {
                offset_ms: 3000,
                ..
            })
        ));
    }

    #[test]
    fn without_the_other_watermark_a_side_never_expires() {
        let ts = vec!["ts".to_string()];
        let filter = col("l.ts").between(col("r.ts") - seconds(5), col("r.ts") + seconds(5));
        let bounds = read(filter, [&ts, &[]]);
        assert_eq!(bounds.event_time[1], None);
        assert_eq!(bounds.expiry[0], None);
        assert!(bounds.expiry[1].is_some());
    }

    #[test]
    fn an_unrelated_filter_bounds_nothing() {
        let ts = vec!["ts".to_string()];
        let bounds = read(col("l.symbol").not_eq(lit("X")), [&ts, &ts]);
        assert_eq!(bounds.range, None);
        assert_eq!(bounds.expiry, [None, None]);
        assert!(Arc::new(bounds).event_time[0].is_some());
    }
}
