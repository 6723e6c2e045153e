//! JSON values: decoding Kafka values into typed columns and encoding rows
//! as JSON values, with arrow's JSON reader and writer (whole arrays at a
//! time, not record by record).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch, UInt32Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use tidemill_engine::Sink;

use super::schema::kafka_fields;

/// What a Kafka source does with a record whose value does not decode.
///
/// Nothing is dropped silently: a bad record either stops the query with
/// an error naming its topic, partition and offset, or is written, whole,
/// to a dead-letter sink.
#[derive(Debug, Clone, Default)]
pub enum BadRecordPolicy {
    /// Fail the batch (and the query) with an error naming the record's
    /// topic, partition and offset and what is wrong with it.
    #[default]
    Fail,
    /// Write bad records to this sink and go on without them. The sink
    /// receives rows of [`dead_letter_schema`]: the record's Kafka columns
    /// and an `error` column saying why it did not decode. Each
    /// micro-batch's bad records are one `add_batch` call, with a batch id
    /// the source keeps in its checkpoint so that a replayed batch writes
    /// under the same id (an idempotent sink, such as `ParquetSink`, then
    /// holds each bad record exactly once).
    DeadLetter(Arc<dyn Sink>),
}

/// The schema of the rows a dead-letter sink receives: the Kafka columns
/// and `error` (why the value did not decode).
pub fn dead_letter_schema() -> SchemaRef {
    let mut fields = kafka_fields();
    fields.push(Field::new("error", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// The result of [`decode_json_values`].
#[derive(Debug)]
pub struct JsonDecoded {
    /// The decoded rows, in input order, with the schema asked for.
    pub batch: RecordBatch,
    /// For each decoded row, its index in the input.
    pub rows: UInt32Array,
    /// The inputs that did not decode: index and reason, in input order.
    pub errors: Vec<(usize, String)>,
}

/// Decodes each value of `values` (binary or string; one JSON object per
/// value) into one row of `schema`, with arrow's JSON reader.
///
/// All values are decoded in one pass; only when that fails are they
/// split in halves, recursively, to find the values at fault, so the cost
/// stays near one pass while bad values are rare. A value decodes when it
/// is exactly one JSON object whose fields convert to the schema's types
/// (fields not in the schema are ignored; missing fields are null, an
/// error for a non-nullable column). A null value (a tombstone) decodes as
/// `{}`. A value that is empty, holds several JSON values, is not an
/// object or does not parse is an error.
pub fn decode_json_values(
    values: &dyn Array,
    schema: &SchemaRef,
) -> Result<JsonDecoded, ArrowError> {
    let rows: Vec<Option<&[u8]>> = match values.data_type() {
        DataType::Binary => values.as_binary::<i32>().iter().collect(),
        DataType::LargeBinary => values.as_binary::<i64>().iter().collect(),
        DataType::Utf8 => values
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::as_bytes))
            .collect(),
        DataType::LargeUtf8 => values
            .as_string::<i64>()
            .iter()
            .map(|v| v.map(str::as_bytes))
            .collect(),
        DataType::BinaryView => values.as_binary_view().iter().collect(),
        DataType::Utf8View => values
            .as_string_view()
            .iter()
            .map(|v| v.map(str::as_bytes))
            .collect(),
        other => {
            return Err(ArrowError::InvalidArgumentError(format!(
                "JSON values must be binary or string, not {other}"
            )));
        }
    };
    let mut good: Vec<(usize, RecordBatch)> = Vec::new();
    let mut errors = Vec::new();
    if !rows.is_empty() {
        decode_range(&rows, 0, rows.len(), schema, &mut good, &mut errors);
    }
    let mut indices: Vec<u32> = Vec::with_capacity(rows.len() - errors.len());
    for (start, batch) in &good {
        indices.extend((*start..*start + batch.num_rows()).map(|i| i as u32));
    }
    let batches: Vec<RecordBatch> = good.into_iter().map(|(_, b)| b).collect();
    let batch = concat_batches(schema, &batches)?;
    Ok(JsonDecoded {
        batch,
        rows: UInt32Array::from(indices),
        errors,
    })
}

fn decode_range(
    rows: &[Option<&[u8]>],
    lo: usize,
    hi: usize,
    schema: &SchemaRef,
    good: &mut Vec<(usize, RecordBatch)>,
    errors: &mut Vec<(usize, String)>,
) {
    match try_decode(&rows[lo..hi], schema) {
        Ok(batch) => good.push((lo, batch)),
        Err(e) if hi - lo == 1 => errors.push((lo, e)),
        Err(_) => {
            let mid = lo + (hi - lo) / 2;
            decode_range(rows, lo, mid, schema, good, errors);
            decode_range(rows, mid, hi, schema, good, errors);
        }
    }
}

fn try_decode(rows: &[Option<&[u8]>], schema: &SchemaRef) -> Result<RecordBatch, String> {
    let size: usize = rows.iter().map(|r| r.map_or(2, <[u8]>::len) + 1).sum();
    let mut buf = Vec::with_capacity(size);
    for row in rows {
        buf.extend_from_slice(row.unwrap_or(b"{}"));
        buf.push(b'\n');
    }
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows.len())
        .build_decoder()
        .map_err(|e| e.to_string())?;
    let mut pos = 0;
    while pos < buf.len() {
        let read = decoder.decode(&buf[pos..]).map_err(|e| clean(&e))?;
        if read == 0 {
            break;
        }
        pos += read;
    }
    let batch = decoder
        .flush()
        .map_err(|e| clean(&e))?
        .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(schema)));
    let rest_is_blank = buf[pos..].iter().all(u8::is_ascii_whitespace);
    if batch.num_rows() != rows.len() || !rest_is_blank {
        return Err(if rows.len() == 1 {
            if batch.num_rows() == 0 {
                "the value holds no JSON object (it is empty)".to_string()
            } else {
                "the value holds more than one JSON value".to_string()
            }
        } else {
            "the values do not hold one JSON object each".to_string()
        });
    }
    Ok(batch)
}

fn clean(e: &ArrowError) -> String {
    let text = e.to_string();
    text.strip_prefix("Json error: ")
        .map(str::to_string)
        .unwrap_or(text)
}

/// Encodes each row of `batch` as one JSON object (arrow's JSON writer;
/// null fields are left out), one value per row.
pub fn encode_json_rows(batch: &RecordBatch) -> Result<BinaryArray, ArrowError> {
    let mut out: Vec<u8> = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
        writer.write(batch)?;
        writer.finish()?;
    }
    // JSON strings escape line breaks, so every line is one row.
    let mut offsets: Vec<i32> = Vec::with_capacity(batch.num_rows() + 1);
    offsets.push(0);
    let mut values: Vec<u8> = Vec::with_capacity(out.len());
    for line in out.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        values.extend_from_slice(line);
        offsets.push(values.len() as i32);
    }
    if offsets.len() != batch.num_rows() + 1 {
        return Err(ArrowError::ComputeError(format!(
            "JSON encoding produced {} values for {} rows",
            offsets.len() - 1,
            batch.num_rows()
        )));
    }
    Ok(BinaryArray::new(
        arrow::buffer::OffsetBuffer::new(offsets.into()),
        values.into(),
        None,
    ))
}

/// The array of `values` as binary (string columns are accepted too).
pub(crate) fn as_binary(values: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    match values.data_type() {
        DataType::Binary => Ok(Arc::clone(values)),
        _ => arrow::compute::cast(values, &DataType::Binary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("symbol", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn good_values_decode_in_one_pass() {
        let values = BinaryArray::from(vec![
            Some(br#"{"id": 1, "symbol": "A"}"#.as_ref()),
            Some(br#"{"id": 2, "extra": true}"#.as_ref()),
            Some(b"  {\"id\": 3,\n \"symbol\": \"C\"}  ".as_ref()),
        ]);
        let decoded = decode_json_values(&values, &schema()).unwrap();
        assert!(decoded.errors.is_empty());
        assert_eq!(decoded.batch.num_rows(), 3);
        assert_eq!(decoded.rows.values().to_vec(), vec![0, 1, 2]);
        let ids = decoded
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 2, 3]);
    }

    #[test]
    fn bad_values_are_found_and_explained() {
        let values = StringArray::from(vec![
            Some(r#"{"id": 1}"#),
            Some("not json"),
            Some(r#"{"id": 3}"#),
            Some(""),
            Some(r#"{"symbol": "no id"}"#),
            Some(r#"{"id": 6} {"id": 7}"#),
            Some(r#"{"id": "x"}"#),
            Some(r#"{"id": 8"#),
            Some(r#"{"id": 9}"#),
        ]);
        let decoded = decode_json_values(&values, &schema()).unwrap();
        assert_eq!(decoded.rows.values().to_vec(), vec![0, 2, 8]);
        let bad: Vec<usize> = decoded.errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![1, 3, 4, 5, 6, 7]);
        for (i, reason) in &decoded.errors {
            assert!(!reason.is_empty(), "row {i}");
        }
        assert!(
            decoded.errors[1].1.contains("empty"),
            "{:?}",
            decoded.errors
        );
        assert!(
            decoded.errors[3].1.contains("more than one"),
            "{:?}",
            decoded.errors
        );
    }

    #[test]
    fn rows_encode_as_one_json_object_each() {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("line\nbreak"), None])),
            ],
        )
        .unwrap();
        let values = encode_json_rows(&batch).unwrap();
        assert_eq!(values.value(0), br#"{"id":1,"symbol":"line\nbreak"}"#);
        assert_eq!(values.value(1), br#"{"id":2}"#);
        let back = decode_json_values(&values, &schema()).unwrap();
        assert_eq!(back.batch, batch);
    }
}
