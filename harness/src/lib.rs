//! # tidemill-harness
//!
//! Tidemill's benchmark harness, usable on your own pipeline.
//!
//! **The trigger-interval study** ([`TriggerStudy`]) answers the two
//! questions that pick a micro-batch engine and its trigger interval: how
//! low does latency go, and how much input does the query sustain, as the
//! interval shrinks? Point it at a plan — a function from a DataFrame to a
//! DataFrame, the same one you run as a batch job — and it streams a source
//! driven at fixed input rates through it at each interval, measuring per
//! row the time from "available to the source" to "committed by the sink"
//! (p50, p95, p99, max), batches/s, rows/s, CPU seconds per million rows,
//! and each interval's maximum sustainable rate. The report is a Markdown
//! table, a JSON file and an SVG plot ([`StudyReport::write_to`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use datafusion::prelude::*;
//! use tidemill_connectors::ParquetSink;
//! use tidemill_engine::{OutputMode, Sink};
//! use tidemill_harness::{StudyPipeline, TriggerStudy, trades};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let report = TriggerStudy::new()
//!     // The source's rows: trades (see `trades`), or your own `RowGenerator`.
//!     .pipeline(StudyPipeline::new("big trades", trades::big_trades))
//!     .pipeline(
//!         StudyPipeline::new("per minute", trades::per_minute_stamped)
//!             .output_mode(OutputMode::Update),
//!     )
//!     .intervals([Duration::ZERO, Duration::from_millis(100), Duration::from_secs(1)])
//!     .rates([10_000, 100_000])
//!     // Measure with your sink (default: one that discards rows).
//!     .sink(|dir| Arc::new(ParquetSink::new(dir.display().to_string())) as Arc<dyn Sink>)
//!     .run()
//!     .await?;
//! report.write_to("target/study".as_ref())?;
//! # Ok(()) }
//! ```
//!
//! The standard study (both pipelines above, intervals 0, 10 ms, 50 ms,
//! 100 ms, 500 ms and 1 s) is the `trigger_study` bench:
//! `cargo bench -p tidemill-harness --bench trigger_study`.
//!
//! **Results** ([`results`]): every Tidemill bench writes its figures as a
//! [`results::BenchResult`] to `target/bench-results/<name>.json`;
//! `cargo run --release -p tidemill-harness --bin bench-report` renders them
//! all into `BENCHMARKS.md`.
//!
//! **Your own rows** ([`SampleReplay`]): sample rows replayed in a loop
//! with event times moved forward each loop, for
//! [`StudyPipeline::with_streams`]; `tidemill bench` runs a SQL pipeline
//! file's queries this way.
//!
//! **Workloads** ([`trades`]): the trade schema, the seeded trade files
//! the streaming-vs-batch and Spark comparisons read, the study's trade
//! rows, and the standard plans.
//!
//! **A Kafka broker** ([`kafka_broker`]): a Kafka-protocol broker (Tansu)
//! started on 127.0.0.1 for the Kafka tests, example and benchmark,
//! installed on first use, with helpers to create topics, produce and
//! consume.
//!
//! **An S3-compatible server** ([`s3_server`]): moto's S3 server, from
//! PyPI, installed on first use into `target/tools` and started on
//! 127.0.0.1 for the object storage tests.
//!
//! **An Iceberg REST catalog** ([`rest_catalog`]): Rustberg, a real
//! Iceberg REST catalog server from crates.io, installed on first use into
//! `target/tools` and started on 127.0.0.1 for the Iceberg sink's REST
//! catalog tests.
//!
//! **A headless browser** ([`browser`]): Chromium from the Debian packages,
//! installed on first use, dumping a page's DOM after its scripts ran or
//! taking a screenshot, for the tests of the monitor's web page.

#![warn(missing_docs)]

pub mod browser;
mod cargo_install;
mod histogram;
#[cfg(feature = "kafka")]
pub mod kafka_broker;
pub mod keyed_state;
pub mod machine;
mod replay;
mod report;
pub mod rest_catalog;
pub mod results;
pub mod s3_server;
mod sink;
mod source;
mod study;
pub mod trades;

pub use histogram::{LatencyHistogram, LatencySummary};
pub use replay::SampleReplay;
pub use sink::DiscardSink;
pub use source::{AVAILABLE_AT, RowGenerator};
pub use study::{
    MaxRate, PlanFn, PlanFuture, RateSearch, Recommendation, RunResult, SearchStep, SinkFactory,
    SourcesPlanFn, StudyPipeline, StudyReport, StudySettings, TriggerStudy, format_interval,
    format_interval_ms, standard_intervals,
};

/// Opens (creating it if need be) the lock file `path` and takes an
/// exclusive lock on it, held until the returned file is dropped: one
/// install of a test tool at a time, across test threads, processes and
/// checkouts.
pub fn install_lock(path: &std::path::Path) -> Result<std::fs::File, String> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", path.display()))?;
    Ok(lock)
}

/// A port on 127.0.0.1 that was free a moment ago, for a test server to
/// listen on.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// One plain HTTP/1.1 request (no signature, no TLS) to the test server on
/// 127.0.0.1:`port`, reading its answer for at most `read_timeout`; the
/// status (0 if the answer has none) and body.
pub(crate) fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    read_timeout: std::time::Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    stream.set_read_timeout(Some(read_timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
