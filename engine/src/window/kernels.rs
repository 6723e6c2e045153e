//! The array computations behind the window functions.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray, StructArray, make_array};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    DataType, Field, Fields, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::exec_err;
use datafusion::error::Result;

/// Window length, slide and offset (`0 <= offset < slide`), in units of the
/// event-time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spec {
    pub(super) size: i64,
    pub(super) slide: i64,
    pub(super) offset: i64,
}

/// `Struct{start, end}`, both of the event-time type.
pub(super) fn window_type(ts_type: &DataType) -> DataType {
    DataType::Struct(window_fields(ts_type))
}

pub(super) fn window_fields(ts_type: &DataType) -> Fields {
    Fields::from(vec![
        Field::new("start", ts_type.clone(), true),
        Field::new("end", ts_type.clone(), true),
    ])
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
pub(super) fn timestamp_array(
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
pub(super) fn floor_start(ts: i64, slide: i64, offset: i64) -> Option<i64> {
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

pub(super) fn tumble_array(name: &str, ts: &ArrayRef, spec: Spec) -> Result<ArrayRef> {
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

pub(super) fn hop_array(name: &str, ts: &ArrayRef, spec: Spec) -> Result<ArrayRef> {
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
