//! Reading a file's column as the type the source schema declares, where
//! no value is lost.
//!
//! A column of type `actual` is read as the declared type `expected` when
//! ([`readable_as`]):
//!
//! - they are the same type, or strings (`Utf8`, `LargeUtf8`, `Utf8View`)
//!   or binary values in another Arrow encoding;
//! - `actual` is a dictionary whose values are readable as `expected`;
//! - both are integers and `expected` holds every value of `actual`
//!   (`Int32` → `Int64`, `UInt16` → `Int32`, …; never signed to unsigned);
//! - `expected` is a float whose mantissa holds every value of `actual`:
//!   `Float16` → `Float32`/`Float64`, `Float32` → `Float64`, 8- and 16-bit
//!   integers → `Float32`/`Float64`, 32-bit integers → `Float64` (not
//!   64-bit integers, which a double does not hold exactly);
//! - both are timestamps, of any unit and zone. The instant is kept: the
//!   stored value counts from 1970-01-01 UTC whatever the zone, and a
//!   zone-less value is taken as UTC, as the engine takes it. Converting
//!   to another unit is checked value by value ([`convert`]): a value
//!   outside the declared unit's range (nanoseconds hold 1677-09-21 to
//!   2262-04-11) or with digits finer than it holds is an error naming
//!   the row.
//!
//! Anything else (`Int64` → `Int32`, `Float64` → `Float32`, `Int64` →
//! `Float64`, a number to a string, …) is refused: the file's column has
//! another type than the source schema declares.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Why a column's values cannot be converted to the declared type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loss {
    /// The first row (of the array converted) whose value does not fit,
    /// when one does not.
    pub(crate) row: Option<usize>,
    /// What is wrong.
    pub(crate) detail: String,
}

/// Whether a column of type `actual` holds values of type `expected` in
/// another encoding (strings or binary values), so that it can be cast,
/// or even decoded straight into `expected` by the parquet reader.
pub(super) fn same_values(actual: &DataType, expected: &DataType) -> bool {
    use DataType::{Binary, BinaryView, LargeBinary, LargeUtf8, Utf8, Utf8View};
    actual.equals_datatype(expected)
        || matches!(
            (actual, expected),
            (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View)
                | (
                    Binary | LargeBinary | BinaryView,
                    Binary | LargeBinary | BinaryView
                )
        )
}

/// Whether a column of type `actual` can be read as `expected` without
/// losing information (see the module documentation).
pub(crate) fn readable_as(actual: &DataType, expected: &DataType) -> bool {
    use DataType::*;
    if same_values(actual, expected) {
        return true;
    }
    match (actual, expected) {
        (Dictionary(_, values), _) => readable_as(values, expected),
        (Timestamp(_, _), Timestamp(_, _)) => true,
        _ => matches!(
            (actual, expected),
            (Int8, Int16 | Int32 | Int64 | Float32 | Float64)
                | (Int16, Int32 | Int64 | Float32 | Float64)
                | (Int32, Int64 | Float64)
                | (
                    UInt8,
                    UInt16 | UInt32 | UInt64 | Int16 | Int32 | Int64 | Float32 | Float64
                )
                | (UInt16, UInt32 | UInt64 | Int32 | Int64 | Float32 | Float64)
                | (UInt32, UInt64 | Int64 | Float64)
                | (Float16, Float32 | Float64)
                | (Float32, Float64)
        ),
    }
}

/// `column` as type `expected`, which [`readable_as`] allows. Fails only
/// for a timestamp that the declared unit cannot hold exactly, naming its
/// row.
pub(crate) fn convert(column: &ArrayRef, expected: &DataType) -> Result<ArrayRef, Loss> {
    match (column.data_type(), expected) {
        (DataType::Timestamp(from, _), DataType::Timestamp(to, zone)) => {
            convert_timestamps(column, *from, *to, zone.clone())
        }
        (DataType::Dictionary(_, values), _) => {
            let plain = arrow::compute::cast(column, values).map_err(|e| Loss {
                row: None,
                detail: e.to_string(),
            })?;
            convert(&plain, expected)
        }
        _ => arrow::compute::cast(column, expected).map_err(|e| Loss {
            row: None,
            detail: e.to_string(),
        }),
    }
}

/// Units per second of a timestamp unit.
fn per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

/// Timestamps in unit `from` as unit `to` and zone `zone`, keeping each
/// instant: the stored values are rescaled, never shifted by a zone.
fn convert_timestamps(
    column: &ArrayRef,
    from: TimeUnit,
    to: TimeUnit,
    zone: Option<Arc<str>>,
) -> Result<ArrayRef, Loss> {
    // The stored values, whatever the zone: counts of `from` since
    // 1970-01-01 UTC.
    let raw = arrow::compute::cast(column, &DataType::Int64).map_err(|e| Loss {
        row: None,
        detail: e.to_string(),
    })?;
    let raw = raw.as_primitive::<Int64Type>();
    let (from_scale, to_scale) = (per_second(from), per_second(to));
    let unit = DataType::Timestamp(to, None);
    let values: ScalarBuffer<i64> = if to_scale >= from_scale {
        let factor = to_scale / from_scale;
        let overflows = raw
            .iter()
            .position(|v| v.is_some_and(|v| v.checked_mul(factor).is_none()));
        if let Some(row) = overflows {
            let range = match to {
                TimeUnit::Nanosecond => " (1677-09-21 to 2262-04-11)",
                _ => "",
            };
            return Err(Loss {
                row: Some(row),
                detail: format!(
                    "{} is outside the range {unit} can hold{range}",
                    value(column, row)
                ),
            });
        }
        raw.values()
            .iter()
            .map(|v| v.wrapping_mul(factor))
            .collect()
    } else {
        let divisor = from_scale / to_scale;
        let inexact = raw.iter().position(|v| v.is_some_and(|v| v % divisor != 0));
        if let Some(row) = inexact {
            return Err(Loss {
                row: Some(row),
                detail: format!(
                    "{} has a finer precision than {unit} holds",
                    value(column, row)
                ),
            });
        }
        raw.values().iter().map(|v| v / divisor).collect()
    };
    let nulls: Option<NullBuffer> = raw.nulls().cloned();
    Ok(match to {
        TimeUnit::Second => {
            Arc::new(TimestampSecondArray::new(values, nulls).with_timezone_opt(zone)) as ArrayRef
        }
        TimeUnit::Millisecond => {
            Arc::new(TimestampMillisecondArray::new(values, nulls).with_timezone_opt(zone))
        }
        TimeUnit::Microsecond => {
            Arc::new(TimestampMicrosecondArray::new(values, nulls).with_timezone_opt(zone))
        }
        TimeUnit::Nanosecond => {
            Arc::new(TimestampNanosecondArray::new(values, nulls).with_timezone_opt(zone))
        }
    })
}

/// The value at `row` of `column`, as text for a message.
fn value(column: &ArrayRef, row: usize) -> String {
    match ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default()) {
        Ok(formatter) => formatter.value(row).to_string(),
        Err(_) => format!("the value at row {row}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Float32Array, Int32Array, StringArray};
    use arrow::datatypes::{Float64Type, Int32Type};

    fn ts(unit: TimeUnit, zone: Option<&str>) -> DataType {
        DataType::Timestamp(unit, zone.map(Arc::from))
    }

    #[test]
    fn lossless_pairs_are_readable_and_lossy_ones_are_not() {
        use DataType::*;
        let readable = [
            (Int32, Int64),
            (Int8, Int16),
            (UInt32, Int64),
            (UInt16, UInt64),
            (Float32, Float64),
            (Int32, Float64),
            (Int16, Float32),
            (Utf8, Utf8View),
            (LargeUtf8, Utf8),
            (Binary, BinaryView),
            (
                ts(TimeUnit::Microsecond, Some("UTC")),
                ts(TimeUnit::Nanosecond, None),
            ),
            (
                ts(TimeUnit::Nanosecond, None),
                ts(TimeUnit::Millisecond, Some("UTC")),
            ),
            (Dictionary(Box::new(Int32), Box::new(Utf8)), Utf8View),
        ];
        for (actual, expected) in readable {
            assert!(readable_as(&actual, &expected), "{actual} as {expected}");
        }
        let refused = [
            (Int64, Int32),
            (Float64, Float32),
            (Int64, Float64),
            (Int32, Float32),
            (Int32, UInt64),
            (UInt64, Int64),
            (Int64, Utf8),
            (Utf8, Int64),
            (Date32, ts(TimeUnit::Nanosecond, None)),
            (Int64, ts(TimeUnit::Nanosecond, None)),
        ];
        for (actual, expected) in refused {
            assert!(!readable_as(&actual, &expected), "{actual} as {expected}");
        }
    }

    #[test]
    fn timestamps_keep_their_instant_across_units_and_zones() {
        // 2024-03-04T14:30:00.123456Z in microseconds, UTC.
        let micros = 1_709_562_600_123_456_i64;
        let column: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![Some(micros), None, Some(-1)])
                .with_timezone("UTC"),
        );
        let ns = convert(&column, &ts(TimeUnit::Nanosecond, None)).unwrap();
        assert_eq!(ns.data_type(), &ts(TimeUnit::Nanosecond, None));
        let ns = ns.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        assert_eq!(ns.value(0), micros * 1000);
        assert!(ns.is_null(1));
        assert_eq!(ns.value(2), -1000);

        // A zone-less column into a zoned type: the same instant, not the
        // same wall-clock time in another zone.
        let naive: ArrayRef = Arc::new(TimestampSecondArray::from(vec![1_709_562_600]));
        let zoned = convert(&naive, &ts(TimeUnit::Millisecond, Some("+07:00"))).unwrap();
        assert_eq!(
            zoned.data_type(),
            &ts(TimeUnit::Millisecond, Some("+07:00"))
        );
        assert_eq!(
            zoned
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .value(0),
            1_709_562_600_000
        );

        // A coarser unit, when every value is whole in it.
        let whole: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![3_000_000, -5_000_000]));
        let ms = convert(&whole, &ts(TimeUnit::Millisecond, None)).unwrap();
        let ms = ms.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        assert_eq!(ms.values().to_vec(), vec![3, -5]);
    }

    #[test]
    fn timestamps_that_do_not_fit_name_their_row() {
        // Year 2300 in microseconds: beyond what nanoseconds hold.
        let column: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            Some(0),
            None,
            Some(10_413_792_000_000_000),
        ]));
        let loss = convert(&column, &ts(TimeUnit::Nanosecond, None)).unwrap_err();
        assert_eq!(loss.row, Some(2));
        assert_eq!(
            loss.detail,
            "2300-01-01T00:00:00 is outside the range Timestamp(ns) can hold (1677-09-21 to 2262-04-11)"
        );

        let column: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![2_000, 2_500]));
        let loss = convert(&column, &ts(TimeUnit::Second, None)).unwrap_err();
        assert_eq!(loss.row, Some(1));
        assert_eq!(
            loss.detail,
            "1970-01-01T00:00:02.500 has a finer precision than Timestamp(s) holds"
        );
    }

    #[test]
    fn numbers_and_dictionaries_are_widened() {
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![Some(i32::MIN), None, Some(7)]));
        let wide = convert(&ints, &DataType::Int64).unwrap();
        assert_eq!(
            wide.as_primitive::<Int64Type>().iter().collect::<Vec<_>>(),
            vec![Some(i32::MIN as i64), None, Some(7)]
        );
        let floats: ArrayRef = Arc::new(Float32Array::from(vec![0.1_f32, -2.5]));
        let doubles = convert(&floats, &DataType::Float64).unwrap();
        assert_eq!(
            doubles.as_primitive::<Float64Type>().values().to_vec(),
            vec![0.1_f32 as f64, -2.5]
        );
        let dictionary: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let column: ArrayRef = Arc::new(dictionary);
        let strings = convert(&column, &DataType::Utf8).unwrap();
        assert_eq!(
            strings.as_any().downcast_ref::<StringArray>().unwrap(),
            &StringArray::from(vec!["a", "b", "a"])
        );
    }
}
