//! Kafka columns to output rows: unchanged, or with the value decoded from
//! JSON, bad records failing the batch or set aside for the dead-letter
//! sink.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;
use tidemill_engine::{Result, TidemillError};

use super::super::json::{BadRecordPolicy, dead_letter_schema, decode_json_values};
use super::super::schema::KAFKA_COLUMNS;
use super::KafkaSource;

impl KafkaSource {
    /// Turns batches of Kafka columns into the output rows: unchanged, or
    /// with the value decoded. Bad records go into `dead`.
    pub(super) fn decode(
        &self,
        batch: &RecordBatch,
        dead: &mut Vec<RecordBatch>,
    ) -> Result<Option<RecordBatch>> {
        let Some(value_schema) = &self.value_schema else {
            return Ok(Some(batch.clone()));
        };
        let decoded = decode_json_values(batch.column(1).as_ref(), value_schema)
            .map_err(|e| self.err(format!("decoding JSON values: {e}")))?;
        if !decoded.errors.is_empty() {
            match &self.bad_records {
                BadRecordPolicy::Fail => {
                    let (row, reason) = &decoded.errors[0];
                    let (topic, partition, offset) = coordinates(batch, *row);
                    return Err(self.err(format!(
                        "topic {topic} partition {partition} offset {offset}: the value is not a JSON object of \
                         the expected schema: {reason}{}",
                        if decoded.errors.len() > 1 {
                            format!(" ({} more bad records in this batch)", decoded.errors.len() - 1)
                        } else {
                            String::new()
                        }
                    )));
                }
                BadRecordPolicy::DeadLetter(_) => {
                    let rows = UInt32Array::from(
                        decoded
                            .errors
                            .iter()
                            .map(|(i, _)| *i as u32)
                            .collect::<Vec<_>>(),
                    );
                    let mut columns = take_columns(batch.columns(), &rows)?;
                    columns.push(Arc::new(StringArray::from(
                        decoded
                            .errors
                            .iter()
                            .map(|(_, e)| e.as_str())
                            .collect::<Vec<_>>(),
                    )));
                    dead.push(
                        RecordBatch::try_new(dead_letter_schema(), columns)
                            .map_err(|e| self.err(format!("dead-letter rows: {e}")))?,
                    );
                }
            }
        }
        if decoded.batch.num_rows() == 0 {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = decoded.batch.columns().to_vec();
        if self.metadata_columns {
            let meta: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .zip(KAFKA_COLUMNS)
                .filter(|(_, name)| *name != "value")
                .map(|(c, _)| Arc::clone(c))
                .collect();
            columns.extend(take_columns(&meta, &decoded.rows)?);
        }
        let schema = self.output_schema()?;
        RecordBatch::try_new(schema, columns)
            .map(Some)
            .map_err(|e| self.err(format!("decoded rows: {e}")))
    }
}

fn take_columns(columns: &[ArrayRef], rows: &UInt32Array) -> Result<Vec<ArrayRef>> {
    columns
        .iter()
        .map(|c| take(c.as_ref(), rows, None))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TidemillError::Internal(format!("selecting rows: {e}")))
}

/// Topic, partition and offset of `row` of a batch of Kafka columns.
fn coordinates(batch: &RecordBatch, row: usize) -> (String, i32, i64) {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type};
    (
        batch.column(2).as_string::<i32>().value(row).to_string(),
        batch.column(3).as_primitive::<Int32Type>().value(row),
        batch.column(4).as_primitive::<Int64Type>().value(row),
    )
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;

    use super::super::super::json::dead_letter_schema;
    use super::super::testing::{offsets, records, trade_schema, unreachable};
    use super::*;
    use crate::MemorySink;

    fn dead_letter() -> BadRecordPolicy {
        BadRecordPolicy::DeadLetter(Arc::new(MemorySink::new()))
    }

    #[test]
    fn raw_records_pass_through_unchanged() {
        let batch = records(&[("t", 0, 7, "not json"), ("t", 0, 8, "{}")]);
        let mut dead = Vec::new();
        let out = unreachable().decode(&batch, &mut dead).unwrap().unwrap();
        assert_eq!(out, batch);
        assert!(dead.is_empty());
    }

    /// Each decoded row keeps its own record's Kafka columns.
    #[test]
    fn json_values_decode_into_rows_with_their_kafka_columns() {
        let batch = records(&[
            ("t", 2, 5, r#"{"symbol": "A", "price": 1.5}"#),
            ("t", 2, 6, r#"{"symbol": "B", "price": 2.0}"#),
        ]);
        let source = unreachable().json_values(trade_schema());
        let mut dead = Vec::new();
        let out = source.decode(&batch, &mut dead).unwrap().unwrap();
        assert_eq!(out.schema(), source.output_schema().unwrap());
        let symbols: Vec<&str> = out.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(symbols, ["A", "B"]);
        assert_eq!(
            out.column(1)
                .as_primitive::<Float64Type>()
                .values()
                .to_vec(),
            [1.5, 2.0]
        );
        assert_eq!(offsets(&out), [5, 6]);
        let without = unreachable()
            .json_values(trade_schema())
            .metadata_columns(false);
        let out = without.decode(&batch, &mut dead).unwrap().unwrap();
        assert_eq!(out.schema(), trade_schema());
        assert!(dead.is_empty());
    }

    /// The first bad record is named by topic, partition and offset, and
    /// the others are counted.
    #[test]
    fn a_bad_record_fails_the_batch_naming_where_it_is() {
        let batch = records(&[
            ("trades", 3, 10, r#"{"symbol": "A", "price": 1.5}"#),
            ("trades", 3, 11, "not json"),
            ("trades", 3, 12, r#"{"symbol": "C", "price": "high"}"#),
        ]);
        let source = unreachable().json_values(trade_schema());
        let mut dead = Vec::new();
        let message = source.decode(&batch, &mut dead).unwrap_err().to_string();
        assert!(
            message.contains("topic trades partition 3 offset 11: the value is not a JSON object"),
            "{message}"
        );
        assert!(
            message.contains("(1 more bad records in this batch)"),
            "{message}"
        );
        assert!(dead.is_empty());
    }

    /// With a dead-letter sink, bad records are set aside whole, with why
    /// they did not decode, and the good ones go on.
    #[test]
    fn bad_records_are_set_aside_for_the_dead_letter_sink() {
        let batch = records(&[
            ("t", 0, 1, r#"{"symbol": "A", "price": 1.5}"#),
            ("t", 0, 2, "not json"),
            ("t", 0, 3, r#"{"symbol": "C", "price": 3.0}"#),
        ]);
        let source = unreachable()
            .json_values(trade_schema())
            .on_bad_record(dead_letter());
        let mut dead = Vec::new();
        let out = source.decode(&batch, &mut dead).unwrap().unwrap();
        assert_eq!(offsets(&out), [1, 3]);
        assert_eq!(dead.len(), 1);
        let bad = &dead[0];
        assert_eq!(bad.schema(), dead_letter_schema());
        assert_eq!(offsets(bad), [2]);
        assert_eq!(
            bad.column_by_name("value")
                .unwrap()
                .as_binary::<i32>()
                .value(0),
            b"not json"
        );
        let error = bad.column_by_name("error").unwrap().as_string::<i32>();
        assert!(!error.value(0).is_empty());
        assert_eq!(error.null_count(), 0);
    }

    #[test]
    fn a_batch_of_bad_records_only_leaves_no_rows() {
        let batch = records(&[("t", 0, 1, "["), ("t", 0, 2, "}{")]);
        let source = unreachable()
            .json_values(trade_schema())
            .on_bad_record(dead_letter());
        let mut dead = Vec::new();
        assert!(source.decode(&batch, &mut dead).unwrap().is_none());
        assert_eq!(dead.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
    }

    #[test]
    fn coordinates_are_topic_partition_and_offset() {
        let batch = records(&[("a", 0, 1, "x"), ("b", 4, 99, "y")]);
        assert_eq!(coordinates(&batch, 1), ("b".to_string(), 4, 99));
        assert_eq!(coordinates(&batch, 0), ("a".to_string(), 0, 1));
    }

    #[test]
    fn take_columns_selects_rows_in_the_order_given() {
        let batch = records(&[("t", 0, 10, "a"), ("t", 0, 11, "b"), ("t", 0, 12, "c")]);
        let taken = take_columns(batch.columns(), &UInt32Array::from(vec![2, 0])).unwrap();
        let taken = RecordBatch::try_new(batch.schema(), taken).unwrap();
        assert_eq!(offsets(&taken), [12, 10]);
    }
}
