//! A source of your own, usable from Rust and from a pipeline file: a
//! `sequence` source that yields the numbers `1..=count`, a few per
//! trigger, implemented on the engine's [`Source`] / [`SourceStream`]
//! contract and registered by name in a [`ConnectorRegistry`], so that
//! `CREATE STREAM … WITH (connector = 'sequence', …)` reads it.
//!
//! The pipeline then runs twice: as a stream (one batch per
//! `rows_per_trigger` numbers, until all are read) and as one batch job
//! over the source's batch form, and both print the same final counts.
//!
//! Run it with `cargo run --example custom_source`.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};
use tidemill::connectors::{ConnectorRegistry, OptionError, StreamConnector, StreamDeclaration};
use tidemill::engine::SourceContext;
use tidemill::sql::{Pipeline, RunOptions};
use tidemill::{Offset, ReadLimit, Result, Source, SourceStream, TidemillError, Trigger};

/// The numbers `1..=count` in one column `n`, `rows_per_trigger` per batch.
#[derive(Debug, Clone)]
struct SequenceSource {
    count: u64,
    rows_per_trigger: u64,
}

impl SequenceSource {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
    }

    /// The rows after number `start` up to and including `end`.
    fn rows(start: u64, end: u64) -> Result<RecordBatch> {
        let numbers: Vec<i64> = (start + 1..=end).map(|n| n as i64).collect();
        RecordBatch::try_new(Self::schema(), vec![Arc::new(Int64Array::from(numbers))])
            .map_err(|e| TidemillError::source("SequenceSource", e.to_string()))
    }
}

#[async_trait]
impl Source for SequenceSource {
    fn description(&self) -> String {
        format!("SequenceSource[1..={}]", self.count)
    }

    async fn schema(&self, _session: &SessionContext) -> Result<SchemaRef> {
        Ok(Self::schema())
    }

    async fn open(&self, _ctx: SourceContext) -> Result<Box<dyn SourceStream>> {
        Ok(Box::new(SequenceStream { spec: self.clone() }))
    }

    /// The batch form: every number at once.
    async fn read_batch(&self, session: &SessionContext) -> Result<DataFrame> {
        Ok(session.read_batch(Self::rows(0, self.count)?)?)
    }
}

/// A [`SequenceSource`] opened for one query. Its offset is the last number
/// read, so any range `(start, end]` reads the same numbers again: replay
/// after a crash is exact, and no state of its own is needed.
#[derive(Debug)]
struct SequenceStream {
    spec: SequenceSource,
}

#[async_trait]
impl SourceStream for SequenceStream {
    fn description(&self) -> String {
        self.spec.description()
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let start = start.and_then(Offset::as_u64).unwrap_or(0);
        let step = match limit {
            ReadLimit::MaxRows(n) => n.min(self.spec.rows_per_trigger),
            _ => self.spec.rows_per_trigger,
        };
        let end = (start + step).min(self.spec.count);
        Ok((end > 0).then(|| Offset::from_u64(end)))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let start = start.and_then(Offset::as_u64).unwrap_or(0);
        let end = end.as_u64().ok_or_else(|| {
            TidemillError::source(self.description(), format!("offset {end} is not a number"))
        })?;
        Ok(vec![SequenceSource::rows(start, end)?])
    }
}

/// `connector = 'sequence'`: reads `count` (required) and
/// `rows_per_trigger` (default 100), refusing any other option.
struct SequenceConnector;

impl StreamConnector for SequenceConnector {
    fn source(
        &self,
        stream: &StreamDeclaration,
    ) -> std::result::Result<Arc<dyn Source>, OptionError> {
        let options = &stream.options;
        options.check_known("a sequence stream", &["count", "rows_per_trigger"], None)?;
        let count = options
            .number("count")?
            .ok_or_else(|| options.error_at_declaration("a sequence stream needs 'count'"))?;
        let rows_per_trigger = options.number("rows_per_trigger")?.unwrap_or(100);
        if rows_per_trigger == 0 {
            return Err(options.error("rows_per_trigger", "rows_per_trigger must be at least 1"));
        }
        Ok(Arc::new(SequenceSource {
            count,
            rows_per_trigger,
        }))
    }
}

const PIPELINE: &str = "
CREATE STREAM numbers WITH (connector = 'sequence', count = 1000, rows_per_trigger = 250);

CREATE SINK by_last_digit WITH (connector = 'console', output_mode = 'complete');

INSERT INTO by_last_digit
SELECT n % 10 AS last_digit, count(*) AS numbers, sum(n) AS total
FROM numbers GROUP BY n % 10;
";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The built-in connectors and ours: one registration line.
    let mut connectors = ConnectorRegistry::builtin();
    connectors.register_stream("sequence", Arc::new(SequenceConnector));
    let pipeline = Pipeline::parse(PIPELINE)?.with_connectors(connectors);

    println!("As a stream, 250 numbers a batch:");
    let checkpoint = tempfile::tempdir()?;
    let options = RunOptions {
        trigger: Trigger::AvailableNow,
        checkpoint: checkpoint.path().to_str().unwrap_or_default().to_string(),
        checkpoint_durability: Default::default(),
        read_ahead: false,
    };
    for query in pipeline.start(&SessionContext::new(), &options).await? {
        query.query.await_termination().await?;
    }

    println!("As one batch job over the source's batch form:");
    pipeline.run_batch(&SessionContext::new()).await?;
    Ok(())
}
