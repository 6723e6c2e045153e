//! Tidemill's integration tests, in one binary to keep link times down.

mod aggregation;
mod aggregation_properties;
mod aggregation_race;
mod bench_cli;
mod chain;
mod child;
mod cli;
mod cli_input;
mod common;
mod conformance;
mod connectors;
mod crash;
mod dedup;
mod delta_sink;
mod delta_sink_crash;
mod delta_source;
mod engine_semantics;
mod file_sink;
mod file_sink_crash;
#[cfg(feature = "iceberg")]
mod iceberg_rest;
#[cfg(all(feature = "s3", feature = "iceberg"))]
mod iceberg_s3;
mod iceberg_sink;
mod iceberg_sink_crash;
mod join;
#[cfg(feature = "kafka")]
mod kafka;
mod listener;
mod monitor;
mod monitor_page;
mod no_panic_properties;
mod processor;
mod pyiceberg;
mod read_ahead;
mod recovery;
mod retry;
#[cfg(all(feature = "s3", feature = "delta"))]
mod s3;
mod sql_connectors;
mod sql_docs;
#[cfg(feature = "kafka")]
mod sql_kafka;
mod sql_options;
mod sql_semantics;
mod state_reader;
mod status;
mod watermark;
#[cfg(not(feature = "kafka"))]
mod without_kafka;
