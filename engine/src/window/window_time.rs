//! `window_time(w)`: the event time of a window, as Spark's.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    ArrowTimestampType, DataType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// `window_time(w)`: the last instant of window `w` (a `start`/`end`
/// struct from `window`, `tumble`, `hop` or `session_window`), that is
/// `w.end` less one unit of its timestamp type: one microsecond for
/// microsecond timestamps, as in Spark. The start is inclusive and the end
/// exclusive, so this is the latest event time a row of the window can
/// have, and a row computed from the window (an aggregate per window) can
/// carry it as its own event time. A null window gives null.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct WindowTime {
    signature: Signature,
}

impl WindowTime {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// The type of the `end` field of a window struct, if `data_type` is one.
fn end_type(data_type: &DataType) -> Option<&DataType> {
    let DataType::Struct(fields) = data_type else {
        return None;
    };
    let end = fields.iter().find(|f| f.name() == "end")?;
    fields
        .iter()
        .any(|f| f.name() == "start")
        .then_some(end.data_type())
        .filter(|t| matches!(t, DataType::Timestamp(..)))
}

impl ScalarUDFImpl for WindowTime {
    fn name(&self) -> &str {
        "window_time"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [t] if end_type(t).is_some() => Ok(arg_types.to_vec()),
            [other] => plan_err!(
                "window_time(window) takes a window (a struct of timestamps start and end, from \
                 window, tumble, hop or session_window), not {other}"
            ),
            _ => plan_err!(
                "window_time(window) takes one argument, got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first().and_then(end_type) {
            Some(end) => Ok(end.clone()),
            None => plan_err!("window_time(window) takes a window"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [window] = args.args.as_slice() else {
            return exec_err!("window_time(window) takes one argument");
        };
        let scalar = matches!(window, ColumnarValue::Scalar(_));
        let windows = window.to_array(1)?;
        let windows = windows.as_struct();
        let Some(end) = windows.column_by_name("end") else {
            return exec_err!("window_time: the window has no end");
        };
        let nulls = NullBuffer::union(windows.nulls(), end.nulls());
        let last = match end.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => {
                last_instant::<TimestampSecondType>(end, nulls)
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                last_instant::<TimestampMillisecondType>(end, nulls)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                last_instant::<TimestampMicrosecondType>(end, nulls)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                last_instant::<TimestampNanosecondType>(end, nulls)
            }
            other => return exec_err!("window_time: the window's end is {other}"),
        };
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&last, 0)?)
        } else {
            ColumnarValue::Array(last)
        })
    }
}

/// `end - 1` per row, null where `nulls` says, keeping `end`'s time zone.
fn last_instant<T: ArrowTimestampType>(end: &ArrayRef, nulls: Option<NullBuffer>) -> ArrayRef {
    let end = end.as_primitive::<T>();
    let values = end.values().iter().map(|v| v.saturating_sub(1)).collect();
    let last = PrimitiveArray::<T>::new(values, nulls).with_data_type(end.data_type().clone());
    Arc::new(last)
}

#[cfg(test)]
mod tests {
    use arrow::array::{StructArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Fields};
    use datafusion::prelude::*;

    use super::*;
    use crate::window::{register_window_functions, window_time};

    fn windows(ends: Vec<Option<i64>>, tz: Option<&str>) -> ArrayRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, tz.map(Into::into));
        let starts =
            TimestampMicrosecondArray::from(vec![Some(0); ends.len()]).with_data_type(ts.clone());
        let ends = TimestampMicrosecondArray::from(ends).with_data_type(ts.clone());
        let fields = Fields::from(vec![
            Field::new("start", ts.clone(), true),
            Field::new("end", ts, true),
        ]);
        Arc::new(StructArray::new(
            fields,
            vec![Arc::new(starts), Arc::new(ends)],
            Some(NullBuffer::from(vec![true, true, false])),
        ))
    }

    #[tokio::test]
    async fn the_last_instant_is_one_microsecond_before_the_end_keeping_the_zone() {
        let ctx = SessionContext::new();
        let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![(
            "w",
            windows(vec![Some(60_000_000), None, Some(5)], Some("+05:30")),
        )])
        .unwrap();
        let out = ctx
            .read_batch(batch)
            .unwrap()
            .select(vec![window_time(col("w")).alias("t")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let t = out[0].column(0);
        assert_eq!(
            t.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("+05:30".into()))
        );
        let t = t.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(t.value(0), 59_999_999);
        assert!(t.is_null(1), "a null end gives null");
        assert!(t.is_null(2), "a null window gives null");
    }

    #[tokio::test]
    async fn anything_but_a_window_is_refused_when_planned() {
        let ctx = SessionContext::new();
        register_window_functions(&ctx);
        let err = ctx
            .sql("SELECT window_time(TIMESTAMP '2024-01-01 10:00:00')")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("window_time(window) takes a window"), "{err}");
        let ok = ctx
            .sql("SELECT window_time(tumble(TIMESTAMP '2024-01-01 10:07:30', '5 minutes')) AS t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let table = arrow::util::pretty::pretty_format_batches(&ok)
            .unwrap()
            .to_string();
        assert!(table.contains("2024-01-01T10:09:59.999999999"), "{table}");
    }
}
