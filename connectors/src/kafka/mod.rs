//! Kafka: a source and a sink on librdkafka (the `rdkafka` crate).
//!
//! - [`KafkaSource`] reads topics (a list or a pattern) as a stream whose
//!   position is the engine's own offset log — `{"topic": {"partition":
//!   next offset}}` per batch, partitions assigned, no consumer group — or
//!   as a bounded batch [`DataFrame`](datafusion::dataframe::DataFrame)
//!   ([`KafkaSource::read_batch`]) for reprocessing a topic with the same
//!   plan. Rows have Spark's Kafka columns ([`kafka_fields`]), or the value
//!   decoded from JSON into typed columns ([`KafkaSource::json_values`])
//!   with a [`BadRecordPolicy`] for values that do not decode.
//! - [`KafkaSink`] writes rows as messages: at-least-once with an
//!   idempotent producer by default, or exactly-once without broker
//!   transactions ([`KafkaSink::exactly_once`]): the batch's messages are
//!   logged before they are produced, tagged with the sink's id, the batch
//!   id and a sequence number, and a re-run batch reads the tail of its
//!   output partitions and produces only what is missing.
//!
//! Every Kafka operation is bounded by a timeout; broker I/O errors are
//! transient (the engine retries the batch with the same offsets), other
//! errors name the topic, partition and offset concerned.
//!
//! ```no_run
//! use std::sync::Arc;
//! use arrow::datatypes::{DataType, Field, Schema};
//! use datafusion::prelude::*;
//! use tidemill_connectors::kafka::{KafkaSink, KafkaSource, StartingOffsets};
//! use tidemill_engine::{StreamingContext, StreamingDataFrame, Trigger};
//!
//! # async fn demo() -> tidemill_engine::Result<()> {
//! let schema = Arc::new(Schema::new(vec![
//!     Field::new("symbol", DataType::Utf8, false),
//!     Field::new("price", DataType::Float64, false),
//! ]));
//! let ctx = SessionContext::new();
//! let trades = ctx
//!     .read_stream(
//!         KafkaSource::new("127.0.0.1:9092")
//!             .topic("trades")
//!             .starting_offsets(StartingOffsets::Earliest)
//!             .json_values(schema),
//!     )
//!     .await?;
//! let query = trades
//!     .filter(col("price").gt(lit(100.0)))?
//!     .select(vec![col("symbol"), col("price")])?
//!     .write_stream()
//!     .sink(
//!         KafkaSink::new("127.0.0.1:9092")
//!             .topic("big-trades")
//!             .json_values()
//!             .exactly_once("chk/big-trades-sink"),
//!     )
//!     .checkpoint("chk/big-trades")
//!     .trigger(Trigger::AvailableNow)
//!     .start()
//!     .await?;
//! query.await_termination().await?;
//! # Ok(()) }
//! ```

/// The `rdkafka` crate the connectors are built on, for administration
/// (creating topics) and anything the connectors do not wrap.
pub use rdkafka;

mod client;
mod connector;
mod json;
mod offsets;
mod reader;
mod schema;
mod sink;
mod sink_log;
mod source;

pub use client::{DEFAULT_TIMEOUT, is_transient};
pub(crate) use connector::KafkaConnector;
pub use json::{
    BadRecordPolicy, JsonDecoded, dead_letter_schema, decode_json_values, encode_json_rows,
};
pub use offsets::{
    EARLIEST, EndingOffsets, LATEST, PartitionOffsets, StartingOffsets, spread_limit,
};
pub use schema::{
    KAFKA_COLUMNS, TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, TIMESTAMP_NOT_AVAILABLE,
    headers_type, kafka_fields, kafka_schema, timestamp_type,
};
pub use sink::{HEADER_BATCH, HEADER_SEQ, HEADER_SINK, KafkaSink, partition_for_key};
pub use source::KafkaSource;
