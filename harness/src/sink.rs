//! The study's sink side: a wrapper recording when each batch was committed,
//! and a sink that discards rows.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use tidemill_engine::{Result, Sink, SinkContext, TidemillError};

use crate::histogram::LatencyHistogram;
use crate::source::{RunShared, now_micros};

/// A sink that drops every row: the default sink of a study, so the figures
/// are the engine's and the source's, not a storage system's.
#[derive(Debug, Clone, Default)]
pub struct DiscardSink;

#[async_trait]
impl Sink for DiscardSink {
    fn description(&self) -> String {
        "DiscardSink".into()
    }

    async fn add_batch(&self, _: u64, _: SchemaRef, _: Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }
}

/// One batch the sink committed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitRecord {
    /// The batch id.
    pub(crate) batch_id: u64,
    /// When `add_batch` of the wrapped sink returned, after the clock start.
    pub(crate) at: Duration,
    /// The end (exclusive row number) of the input the batch covered.
    pub(crate) end_row: u64,
}

#[derive(Debug, Default)]
struct Recorded {
    last_batch: Option<u64>,
    commits: Vec<CommitRecord>,
    output: Vec<(u64, Vec<RecordBatch>)>,
    output_rows: u64,
    column_latency: LatencyHistogram,
}

/// Wraps the study's sink: after the wrapped sink commits a batch, records
/// the instant and the input rows the batch covered; optionally keeps the
/// output (to check it) and measures latency from a stamp column carried
/// through the plan.
#[derive(Debug)]
pub(crate) struct TimingSink {
    inner: Arc<dyn Sink>,
    shared: Arc<RunShared>,
    keep_output: bool,
    stamp_column: Option<String>,
    recorded: Mutex<Recorded>,
}

impl TimingSink {
    pub(crate) fn new(
        inner: Arc<dyn Sink>,
        shared: Arc<RunShared>,
        keep_output: bool,
        stamp_column: Option<String>,
    ) -> Self {
        Self {
            inner,
            shared,
            keep_output,
            stamp_column,
            recorded: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().expect("timing sink lock poisoned")
    }

    /// The commits so far.
    pub(crate) fn commits(&self) -> Vec<CommitRecord> {
        self.lock().commits.clone()
    }

    /// The input row count committed so far.
    pub(crate) fn committed_rows(&self) -> u64 {
        self.lock().commits.last().map_or(0, |c| c.end_row)
    }

    /// The output rows committed so far.
    pub(crate) fn output_rows(&self) -> u64 {
        self.lock().output_rows
    }

    /// The output kept, by batch id (with `keep_output`).
    pub(crate) fn take_output(&self) -> Vec<(u64, Vec<RecordBatch>)> {
        std::mem::take(&mut self.lock().output)
    }

    /// Latency measured from the stamp column (with `stamp_column`).
    pub(crate) fn column_latency(&self) -> LatencyHistogram {
        self.lock().column_latency.clone()
    }

    fn stamps(&self, batches: &[RecordBatch]) -> Result<Vec<i64>> {
        let Some(name) = &self.stamp_column else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for b in batches {
            let column = b.column_by_name(name).ok_or_else(|| {
                TidemillError::sink(
                    self.description(),
                    format!("the output has no column {name} to measure latency from"),
                )
            })?;
            let micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))
                .and_then(|c| cast(&c, &DataType::Int64))
                .map_err(|e| TidemillError::sink(self.description(), e.to_string()))?;
            let micros = micros.as_primitive::<Int64Type>();
            out.extend(
                (0..micros.len())
                    .filter(|&i| micros.is_valid(i))
                    .map(|i| micros.value(i)),
            );
        }
        Ok(out)
    }
}

#[async_trait]
impl Sink for TimingSink {
    fn description(&self) -> String {
        format!("Timed[{}]", self.inner.description())
    }

    async fn open(&self, ctx: &SinkContext) -> Result<()> {
        self.inner.open(ctx).await
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let stamps = self.stamps(&batches)?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let kept = self.keep_output.then(|| batches.clone());
        self.inner.add_batch(batch_id, schema, batches).await?;
        let now = Instant::now();
        let wall = now_micros();
        let end_row = self.shared.read_end();
        let Some((t0, _)) = self.shared.clock.started() else {
            return Ok(());
        };
        let mut recorded = self.lock();
        // A batch re-run after a transient failure commits only once.
        if recorded.last_batch.is_some_and(|last| batch_id <= last) {
            return Ok(());
        }
        recorded.last_batch = Some(batch_id);
        recorded.output_rows += rows;
        recorded.commits.push(CommitRecord {
            batch_id,
            at: now.duration_since(t0),
            end_row,
        });
        if let Some(kept) = kept {
            recorded.output.push((batch_id, kept));
        }
        for s in stamps {
            recorded
                .column_latency
                .record(Duration::from_micros((wall - s).max(0) as u64));
        }
        Ok(())
    }
}
