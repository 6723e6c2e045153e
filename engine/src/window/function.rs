//! The window scalar functions: their arguments, types and checks.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::MAX_WINDOWS_PER_ROW;
use super::kernels::{Spec, hop_array, tumble_array, window_type};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
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
pub(super) struct WindowFunction {
    kind: Kind,
    signature: Signature,
}

impl WindowFunction {
    pub(super) fn new(kind: Kind) -> Self {
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
            // A slide different from the size is a sliding window: only a
            // GROUP BY key (see `grouping`); `invoke` refuses it per row.
            Kind::Window => (duration(2)?.unwrap_or(size), duration(3)?.unwrap_or(0)),
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

fn time_unit(name: &str, ts_type: &DataType) -> Result<TimeUnit> {
    match ts_type {
        DataType::Timestamp(unit, _) => Ok(*unit),
        other => plan_err!("{name}: the event-time argument must be a timestamp, got {other}"),
    }
}

/// Nanoseconds of a constant duration argument.
pub(super) fn duration_nanos(name: &str, arg: &str, value: Option<&ScalarValue>) -> Result<i128> {
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
        if self.kind == Kind::Window && spec.slide != spec.size {
            return exec_err!(
                "window: a slide_duration different from window_duration gives several windows \
                 per row, which a column cannot hold: GROUP BY window(ts, size, slide) (with \
                 register_window_functions(&ctx)), or use UNNEST(hop(ts, size, slide)) for one \
                 row per window"
            );
        }
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
