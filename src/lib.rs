//! # Tidemill
//!
//! Micro-batch stream processing for Rust on Apache Arrow and Apache
//! DataFusion, with the semantics of Spark Structured Streaming: a stream is
//! an unbounded table, a query over it is an ordinary DataFusion plan, and
//! the engine runs that plan one micro-batch at a time, with exactly-once
//! output across crashes.
//!
//! This crate is the one to depend on; it re-exports the engine
//! ([`tidemill_engine`]), the connectors ([`tidemill_connectors`]) and the
//! checkpoint storage ([`tidemill_state`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use datafusion::prelude::*;
//! use tidemill::prelude::*;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let ctx = SessionContext::new();
//! let trades = ctx
//!     .read_stream(FileSource::json("data/trades").max_files_per_trigger(10))
//!     .await?;
//! let big = trades.filter(col("quantity").gt(lit(100.0)))?;
//! let query = big
//!     .write_stream()
//!     .sink(ParquetSink::new("out/big_trades"))
//!     .trigger(Trigger::ProcessingTime(Duration::from_secs(1)))
//!     .checkpoint("chk/big_trades")
//!     .start()
//!     .await?;
//! query.await_termination().await?;
//! # Ok(()) }
//! ```
//!
//! The same transformation runs as a batch job when given a batch
//! DataFrame (`ctx.read_json(...)`), and as a stream when given
//! `ctx.read_stream(...)`.
//!
//! Cargo feature `delta` (on by default): the Delta Lake sink
//! ([`DeltaSink`]) and source ([`DeltaSource`]), `connector = 'delta'` in
//! pipeline files, on the `deltalake` crate; `--no-default-features`
//! leaves them out.
//!
//! Cargo feature `failpoints` (off by default): the crash-test hooks of the
//! engine and the sinks (see `tidemill-engine`), for a `tidemill` command
//! that tests can stop at a named step of a batch. Tidemill's own tests
//! turn it on, and the connectors' `conformance` feature, through their
//! dev-dependencies.

#![warn(missing_docs)]

pub use tidemill_connectors as connectors;
pub use tidemill_engine as engine;
pub use tidemill_engine::processor;
pub use tidemill_state as state;

pub use datafusion;

pub mod bench;
pub mod monitor;
pub mod sql;
pub mod status;

#[cfg(feature = "iceberg")]
pub use tidemill_connectors::IcebergSink;
pub use tidemill_connectors::{
    ConsoleSink, FileFormat, FileSink, FileSource, ForeachBatchSink, MemorySink, MemoryStream,
    ParquetSink, RateSource,
};
#[cfg(feature = "delta")]
pub use tidemill_connectors::{DeltaSink, DeltaSource};
#[cfg(feature = "kafka")]
pub use tidemill_connectors::{KafkaSink, KafkaSource};
pub use tidemill_engine::{
    DataStreamWriter, EventTimeProgress, MultipleWatermarkPolicy, Offset, OutputMode,
    PhaseDurations, QueryIdle, QueryListener, QueryOptions, QueryProgress, QueryStarted,
    QueryStatus, QueryTerminated, ReadLimit, Result, RetryPolicy, Sink, Source, SourceBacklog,
    SourceStream, StateOperatorProgress, StateStoreInfo, StreamingContext, StreamingDataFrame,
    StreamingQuery, TidemillError, Trigger, read_state, state_stores,
};

/// The names most pipelines use, for `use tidemill::prelude::*`.
pub mod prelude {
    #[cfg(feature = "iceberg")]
    pub use tidemill_connectors::IcebergSink;
    #[cfg(feature = "kafka")]
    pub use tidemill_connectors::kafka::StartingOffsets;
    pub use tidemill_connectors::{
        ConsoleSink, FileSink, FileSource, ForeachBatchSink, MemorySink, MemoryStream, ParquetSink,
        RateSource,
    };
    #[cfg(feature = "delta")]
    pub use tidemill_connectors::{DeltaSink, DeltaSource};
    #[cfg(feature = "kafka")]
    pub use tidemill_connectors::{KafkaSink, KafkaSource};
    pub use tidemill_engine::{
        OutputMode, StreamingContext, StreamingDataFrame, StreamingQuery, Trigger,
    };
}

/// The README's code, compiled as a doc test so the README stays true
/// (it uses the Kafka connector, so only with the `kafka` feature).
#[cfg(all(doctest, feature = "kafka"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
