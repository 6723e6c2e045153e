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
