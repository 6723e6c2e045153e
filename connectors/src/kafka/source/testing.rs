//! What the source's unit tests share: records built as the reader builds
//! them, a source whose broker is never reached, and checkpoint
//! directories in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use rdkafka::message::{OwnedMessage, Timestamp};
use tidemill_engine::{Location, TidemillError};
use tidemill_state::CheckpointDir;

use super::super::schema::RecordsBuilder;
use super::KafkaSource;

/// A source whose broker does not exist, with a short timeout: a test that
/// reaches for the broker fails quickly instead of passing by accident.
pub(super) fn unreachable() -> KafkaSource {
    KafkaSource::new("127.0.0.1:1")
        .topic("trades")
        .timeout(Duration::from_millis(300))
}

/// The JSON values' schema of the tests: `symbol` and `price`.
pub(super) fn trade_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
    ]))
}

/// A batch of Kafka columns, one record per `(topic, partition, offset,
/// value)`, built by the builder the reader uses.
pub(super) fn records(rows: &[(&str, i32, i64, &str)]) -> RecordBatch {
    let mut builder = RecordsBuilder::new();
    for (topic, partition, offset, value) in rows {
        builder.append(&OwnedMessage::new(
            Some(value.as_bytes().to_vec()),
            Some(b"k".to_vec()),
            topic.to_string(),
            Timestamp::CreateTime(1_700_000_000_000 + offset),
            *partition,
            *offset,
            None,
        ));
    }
    builder.finish()
}

/// The `offset` column of rows that have the Kafka columns.
pub(super) fn offsets(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column_by_name("offset")
        .expect("an offset column")
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

/// A checkpoint directory in `dir` (a temporary directory), as the engine
/// resolves a query's checkpoint path.
pub(super) fn checkpoint(session: &SessionContext, dir: &std::path::Path) -> CheckpointDir {
    Location::resolve(dir.to_str().expect("a UTF-8 path"), &session.runtime_env())
        .expect("a checkpoint location")
        .dir()
        .child("sources")
        .child("0")
}

/// The message of a configuration error; panics on any other result.
pub(super) fn config_error<T>(result: tidemill_engine::Result<T>) -> String {
    match result {
        Err(TidemillError::Config(message)) => message,
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("expected a configuration error, got success"),
    }
}
