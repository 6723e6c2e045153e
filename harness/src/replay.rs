//! Sample rows replayed in a loop, event times shifted forward each loop,
//! as the rows of a study's stream (what `tidemill bench` feeds a pipeline
//! in place of its source).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::source::RowGenerator;

/// Replays sample rows in a loop: row `i` of the stream is sample row
/// `i % n`, with every timestamp column moved forward by `i / n` times the
/// sample's **period** (its event-time span plus one mean gap between
/// rows, at least 1 ms). The first loop is the sample itself; each later
/// loop starts after the previous one ends, so watermarks advance as in
/// production, and a row is behind the rows before it exactly as far as
/// in the sample (the sample's own lateness, no more).
///
/// The span is measured on the *event-time column* (given, e.g. the
/// stream's watermark column, or else the first timestamp column); every
/// timestamp column (any unit or time zone) moves by the same amount, so
/// conditions between them (a join's time range) hold as in the sample.
/// Date and other columns are replayed as they are. Without a timestamp
/// column the rows are replayed unchanged.
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, TimestampMillisecondArray};
/// use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
/// use arrow::record_batch::RecordBatch;
/// use tidemill_harness::{RowGenerator, SampleReplay};
///
/// let schema = Arc::new(Schema::new(vec![
///     Field::new("id", DataType::Int64, false),
///     Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
/// ]));
/// let sample = RecordBatch::try_new(schema, vec![
///     Arc::new(Int64Array::from(vec![1, 2])),
///     Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000])),
/// ])?;
/// let replay = SampleReplay::new(vec![sample], Some("t"))?;
/// // Period: span 1 s + mean gap 1 s = 2 s; rows 2 and 3 are the second loop.
/// let rows = replay.generate(1, &[0, 0, 0])?;
/// let t = rows[1].as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
/// assert_eq!(t.values().to_vec(), vec![2_000, 3_000, 4_000]);
/// # Ok::<(), arrow::error::ArrowError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SampleReplay {
    sample: RecordBatch,
    /// Indexes of the timestamp columns, each with its unit.
    time_columns: Vec<(usize, TimeUnit)>,
    /// How far each loop moves event time, in nanoseconds.
    period_nanos: i64,
}

impl SampleReplay {
    /// Replays `batches` (at least one row, one schema). `event_time`
    /// names the column whose span sets the period (default: the first
    /// timestamp column); it must be a timestamp column.
    pub fn new(batches: Vec<RecordBatch>, event_time: Option<&str>) -> Result<Self, ArrowError> {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| ArrowError::InvalidArgumentError("the sample has no rows".into()))?;
        let sample = concat_batches(&schema, &batches)?;
        if sample.num_rows() == 0 {
            return Err(ArrowError::InvalidArgumentError(
                "the sample has no rows".into(),
            ));
        }
        if sample.num_rows() > u32::MAX as usize {
            return Err(ArrowError::InvalidArgumentError(format!(
                "the sample has {} rows; at most {} can be replayed",
                sample.num_rows(),
                u32::MAX
            )));
        }
        let time_columns: Vec<(usize, TimeUnit)> = schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f.data_type() {
                DataType::Timestamp(unit, _) => Some((i, *unit)),
                _ => None,
            })
            .collect();
        let anchor = match event_time {
            Some(name) => {
                let i = schema.index_of(name)?;
                Some(*time_columns.iter().find(|(c, _)| *c == i).ok_or_else(|| {
                    ArrowError::InvalidArgumentError(format!(
                        "event-time column {name} is {}, not a timestamp",
                        schema.field(i).data_type()
                    ))
                })?)
            }
            None => time_columns.first().copied(),
        };
        let period_nanos = match anchor {
            None => 0,
            Some((i, unit)) => {
                let nanos = nanos_of(sample.column(i), unit)?;
                let valid: Vec<i64> = nanos.into_iter().flatten().collect();
                let (lo, hi) = (
                    valid.iter().copied().min().unwrap_or(0),
                    valid.iter().copied().max().unwrap_or(0),
                );
                let span = hi.saturating_sub(lo);
                let gap = if valid.len() > 1 {
                    span / (valid.len() as i64 - 1)
                } else {
                    0
                };
                span.saturating_add(gap).max(1_000_000)
            }
        };
        Ok(Self {
            sample,
            time_columns,
            period_nanos,
        })
    }

    /// The sample's rows.
    pub fn rows(&self) -> usize {
        self.sample.num_rows()
    }

    /// How far each loop moves event time.
    pub fn period(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.period_nanos as u64)
    }
}

/// A timestamp column's values in nanoseconds (saturating).
fn nanos_of(column: &ArrayRef, unit: TimeUnit) -> Result<Vec<Option<i64>>, ArrowError> {
    let raw = cast(column, &DataType::Int64)?;
    let per = per_unit(unit);
    Ok(raw
        .as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.map(|v| v.saturating_mul(per)))
        .collect())
}

/// Nanoseconds per unit.
fn per_unit(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

impl RowGenerator for SampleReplay {
    fn schema(&self) -> SchemaRef {
        self.sample.schema()
    }

    fn generate(&self, first: u64, available_at: &[i64]) -> Result<Vec<ArrayRef>, ArrowError> {
        let n = self.sample.num_rows() as u64;
        let rows = first..first + available_at.len() as u64;
        let indices = UInt32Array::from_iter_values(rows.clone().map(|i| (i % n) as u32));
        let mut columns: Vec<ArrayRef> = self
            .sample
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<Result<_, _>>()?;
        for &(i, unit) in &self.time_columns {
            let per = per_unit(unit);
            let column = &columns[i];
            let raw = cast(column, &DataType::Int64)?;
            let shifted: Int64Array = raw
                .as_primitive::<Int64Type>()
                .iter()
                .zip(rows.clone())
                .map(|(v, row)| {
                    let shift = ((row / n) as i64).saturating_mul(self.period_nanos) / per;
                    v.map(|v| v.saturating_add(shift))
                })
                .collect();
            columns[i] = cast(&(Arc::new(shifted) as ArrayRef), column.data_type())?;
        }
        Ok(columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray, TimestampSecondArray};
    use arrow::datatypes::{Field, Schema};

    fn sample() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new(
                "u",
                DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
                false,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
                // 10 s, 40 s, null, 20 s: span 30 s, three valid values.
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(10_000_000),
                    Some(40_000_000),
                    None,
                    Some(20_000_000),
                ])),
                Arc::new(TimestampSecondArray::from(vec![100, 100, 100, 100]).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    #[test]
    fn each_loop_moves_every_timestamp_column_by_the_period_and_keeps_nulls() {
        let replay = SampleReplay::new(vec![sample()], Some("t")).unwrap();
        // Span 30 s plus a mean gap of 15 s.
        assert_eq!(replay.period(), std::time::Duration::from_secs(45));
        let columns = replay.generate(2, &[0; 7]).unwrap();
        let keys: Vec<&str> = columns[0].as_string::<i32>().iter().flatten().collect();
        assert_eq!(keys, ["c", "d", "a", "b", "c", "d", "a"]);
        let t: Vec<Option<i64>> = columns[1]
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .iter()
            .collect();
        assert_eq!(
            t,
            [
                None,
                Some(20_000_000),
                Some(55_000_000),
                Some(85_000_000),
                None,
                Some(65_000_000),
                Some(100_000_000)
            ]
        );
        let u = columns[2].as_primitive::<arrow::datatypes::TimestampSecondType>();
        assert_eq!(u.values().to_vec(), [100, 100, 145, 145, 145, 145, 190]);
        assert_eq!(columns[2].data_type(), replay.schema().field(2).data_type());
    }

    #[test]
    fn rows_depend_only_on_their_number() {
        let replay = SampleReplay::new(vec![sample()], None).unwrap();
        let whole = replay.generate(0, &[0; 12]).unwrap();
        let part = replay.generate(5, &[0; 4]).unwrap();
        for (w, p) in whole.iter().zip(&part) {
            assert_eq!(w.slice(5, 4).to_data(), p.to_data());
        }
    }

    #[test]
    fn an_empty_sample_or_a_non_timestamp_event_time_is_refused() {
        let empty = sample().slice(0, 0);
        let e = SampleReplay::new(vec![empty], None).unwrap_err();
        assert!(e.to_string().contains("no rows"), "{e}");
        let e = SampleReplay::new(vec![sample()], Some("k")).unwrap_err();
        assert!(e.to_string().contains("event-time column k is Utf8"), "{e}");
        let without_time = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let replay = SampleReplay::new(vec![without_time], None).unwrap();
        let columns = replay.generate(1, &[0; 3]).unwrap();
        assert_eq!(
            columns[0].as_primitive::<Int64Type>().values().to_vec(),
            [2, 1, 2]
        );
    }
}
