//! # tidemill-connectors
//!
//! The built-in sources and sinks of Tidemill. Each implements the
//! engine's contracts ([`tidemill_engine::Source`] /
//! [`tidemill_engine::Source`], [`tidemill_engine::Sink`]), and each is run
//! through the shared conformance suite (module `conformance`, with the
//! `conformance` feature).
//!
//! Sources:
//! - [`FileSource`]: a directory of parquet, CSV or JSON-lines files on any
//!   object store; new files are picked up each trigger.
//! - [`RateSource`]: generated `timestamp`, `value` rows at a fixed rate,
//!   for demos and benchmarks.
//! - [`MemoryStream`]: batches pushed by test code.
//! - [`KafkaSource`]: Kafka topics, as a stream or a bounded batch (see
//!   [`kafka`]; with the `kafka` feature).
//! - [`DeltaSource`]: the rows each new version of a Delta Lake table
//!   adds, from the table's current contents on, as Spark's Delta source
//!   streams them; the table read whole as a batch (with the `delta`
//!   feature).
//!
//! Sinks:
//! - [`FileSink`] (also known as [`ParquetSink`]): parquet, JSON-lines or
//!   CSV files, optionally partitioned into Hive-style `column=value/`
//!   directories, with a manifest of committed batches, exactly-once.
//! - [`ConsoleSink`]: pretty-printed batches on standard output.
//! - [`MemorySink`]: results kept in memory, queryable as a table.
//! - [`ForeachBatchSink`]: a closure called with each batch as a DataFrame.
//! - [`KafkaSink`]: Kafka messages, at-least-once or exactly-once (with the
//!   `kafka` feature).
//! - [`DeltaSink`]: a Delta Lake table, one table version per batch,
//!   exactly-once through Delta's application transactions; append,
//!   complete (overwrite) and update (MERGE) modes (with the `delta`
//!   feature).
//! - [`IcebergSink`]: an Apache Iceberg table, one fast-append snapshot per
//!   batch recording the query's id and batch id, exactly-once; append mode
//!   (with the `iceberg` feature).
//!
//! # Features
//!
//! - `kafka` (default): the `kafka` module, `KafkaSource` and `KafkaSink`,
//!   on librdkafka (the `rdkafka` crate), which is built from its C
//!   sources. Without it (`default-features = false`) the crate has the
//!   other connectors only and builds no librdkafka. The `tidemill` crate
//!   has a `kafka` feature of its own (default) that turns this one on.
//! - `delta` (off here; on in the `tidemill` crate's default features): the
//!   [`DeltaSink`] and [`DeltaSource`] and `connector = 'delta'` (sinks and
//!   streams), on the `deltalake` crate (with its DataFusion integration,
//!   which MERGE needs).
//! - `iceberg` (off here; on in the `tidemill` crate's default features):
//!   the [`IcebergSink`] and `connector = 'iceberg'` (sinks), on the
//!   `iceberg` crate (table metadata, manifests and its REST catalog
//!   client; the data files are written with this workspace's parquet).
//! - `s3` (off here; on in the `tidemill` crate's default features):
//!   `s3://bucket/path` locations for the files stream and sink and, with
//!   `delta`, Delta tables (`register_delta_s3` teaches deltalake the
//!   scheme, committing by conditional put), and with `iceberg`, Iceberg
//!   tables (the `iceberg` crate's file I/O goes through the same
//!   object_store client); `aws_*` options configure the client (see
//!   `tidemill_engine::storage`).
//! - `conformance` (off): the module `conformance`, the checks every
//!   source and sink passes, for testing a connector of your own the same
//!   way. Tidemill's own tests turn it on.
//! - `failpoints` (off): the crash-test hooks in the sinks (and, forwarded,
//!   in the engine: see `tidemill-engine`'s `failpoints` feature); without
//!   it they compile to nothing. Tidemill's own tests turn it on.

#![warn(missing_docs)]

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod console_sink;
#[cfg(all(feature = "delta", feature = "s3"))]
mod delta_s3;
#[cfg(feature = "delta")]
mod delta_sink;
#[cfg(feature = "delta")]
mod delta_source;
mod failpoint;
mod file_sink;
mod file_source;
mod foreach_batch;
#[cfg(feature = "iceberg")]
mod iceberg_sink;
#[cfg(feature = "kafka")]
pub mod kafka;
mod memory_sink;
mod memory_source;
mod rate_source;
pub mod registry;

pub use console_sink::ConsoleSink;
#[cfg(all(feature = "delta", feature = "s3"))]
pub use delta_s3::register_s3 as register_delta_s3;
#[cfg(feature = "delta")]
pub use delta_sink::{CHECKPOINT_INTERVAL_PROPERTY, DeltaSink, DeltaSinkError};
#[cfg(feature = "delta")]
pub use delta_source::{
    DEFAULT_MAX_FILES_PER_TRIGGER, DataLossCounts, DeltaSource, DeltaSourceError, DeltaStart,
};
pub use file_sink::{CsvLayout, FileSink, ManifestEntry, ManifestFile, ParquetSink};
pub use file_source::{FileFormat, FileSource};
pub use foreach_batch::{ForeachBatchError, ForeachBatchSink};
#[cfg(feature = "iceberg")]
pub use iceberg_sink::{BATCH_ID_PROPERTY, IcebergSink, IcebergSinkError, QUERY_ID_PROPERTY};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaSink, KafkaSource};
pub use memory_sink::MemorySink;
pub use memory_source::MemoryStream;
pub use rate_source::RateSource;
pub use registry::{
    ConnectorOptions, ConnectorRegistry, DeclaredSink, OptionError, Position, SinkConnector,
    SinkDeclaration, StreamConnector, StreamDeclaration,
};
