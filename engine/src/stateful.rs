//! What the trigger loop asks of every stateful operator.
//!
//! A stateful operator (today the streaming aggregation; deduplication and
//! stream–stream joins next) keeps its state in a versioned
//! [`tidemill_state::StateStore`] under `<checkpoint>/state/<operator
//! number>`. The loop drives each operator of a query through the same
//! steps in every batch, in DESIGN's order: [`begin_batch`] before the plan
//! runs, [`take_late_rows`] before the sink, [`commit`] after it, and
//! [`purge`] now and then; [`has_closable_state`] decides whether a batch
//! without new data should run. An operator's own execution node reaches
//! it through its planner (see [`crate::plan`]).
//!
//! [`begin_batch`]: StatefulOperator::begin_batch
//! [`take_late_rows`]: StatefulOperator::take_late_rows
//! [`commit`]: StatefulOperator::commit
//! [`purge`]: StatefulOperator::purge
//! [`has_closable_state`]: StatefulOperator::has_closable_state

use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use tidemill_state::StateStore;

use crate::Result;
use crate::progress::StateOperatorProgress;

/// A stateful operator as the trigger loop sees it.
#[async_trait]
pub(crate) trait StatefulOperator: Send + Sync + Debug {
    /// Gets ready to run batch `version` with the batch's watermarks:
    /// reloads the state of `version` if a failed attempt left changes
    /// behind, and clears the batch's figures.
    async fn begin_batch(&self, version: u64, watermarks: BatchWatermarks) -> Result<()>;

    /// The rows the running batch left out as late (and for a null event
    /// time), with their schema, for the query's late-rows sink; `None`
    /// for an operator that drops no rows.
    async fn take_late_rows(&self) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        None
    }

    /// Commits the batch's state changes as the next version and returns
    /// the batch's figures.
    async fn commit(&self) -> Result<StateOperatorProgress>;

    /// Deletes state files no version from `keep_from_version` on needs.
    async fn purge(&self, keep_from_version: u64) -> Result<()>;

    /// Whether the watermark `watermark_ms` (or, for processing-time
    /// timers, the clock `now_ms`) closes something the state holds, so a
    /// batch without new data would emit or evict it.
    async fn has_closable_state(&self, watermark_ms: Option<i64>, now_ms: i64) -> bool;

    /// Called once when the query stops, whatever stopped it.
    async fn close(&self) {}
}

/// The watermarks one stateful operator runs a batch with.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchWatermarks {
    /// Evicts state and closes what it passes, in milliseconds.
    pub evict: Option<i64>,
    /// Rows at or below it are late, in milliseconds.
    pub late: Option<i64>,
    /// The previous batch's watermark as this operator sees it: the
    /// operators it feeds drop rows at or below it as late.
    pub previous: Option<i64>,
    /// The batch's processing time (when its offsets were logged), in
    /// milliseconds since the epoch: the same when the batch is re-run.
    pub processing_time_ms: i64,
    /// The watermark the next batch will evict with, known once this
    /// batch's inputs are read: given only to an operator fed by every
    /// watermarked input and not by another stateful operator (see
    /// [`WatermarkRule::knows_next`]).
    pub next: Option<Arc<crate::watermark::NextWatermark>>,
}

/// Which watermarks an operator runs with, as Spark (3.4+) propagates
/// them through chained stateful operators.
///
/// The query's watermark (the minimum over its inputs') flows up the plan.
/// An operator evicts state and emits what the batch's watermark closes,
/// but an operator fed by another stateful operator (`chained`) drops as
/// late only rows at or below the *previous* batch's watermark: a row the
/// first operator emits in batch N was not closed by batch N − 1's
/// watermark, so the next operator never drops it as late, and closes it
/// in the same batch if batch N's watermark has passed it. A stream–stream
/// join may emit rows up to its time bound older than the watermark (a
/// stored row matching a new one), so the operators after it see the
/// watermark `delay_ms` earlier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WatermarkRule {
    /// Another stateful operator feeds this one.
    pub chained: bool,
    /// How far behind the query's watermark this operator's input is.
    pub delay_ms: i64,
    /// Every watermarked input of the query feeds this operator.
    pub sees_every_watermark: bool,
}

impl WatermarkRule {
    /// The operator's watermarks in a batch that runs with the query's
    /// watermark `current` after a batch that ran with `previous`.
    pub fn for_batch(&self, current: Option<i64>, previous: Option<i64>) -> BatchWatermarks {
        BatchWatermarks {
            evict: self.shift(current),
            late: self.shift(if self.chained { previous } else { current }),
            previous: self.shift(previous),
            processing_time_ms: 0,
            next: None,
        }
    }

    /// Whether the operator may know, during a batch, the watermark the
    /// next batch evicts with ([`BatchWatermarks::next`]): every
    /// watermarked input feeds it, so that once it has read its inputs the
    /// watermark nodes have seen all their rows; and it is not chained, so
    /// the next batch drops as late every row at or below that watermark.
    pub fn knows_next(&self) -> bool {
        self.sees_every_watermark && !self.chained
    }

    /// The query's watermark `watermark` as this operator sees it.
    pub fn shift(&self, watermark: Option<i64>) -> Option<i64> {
        watermark.map(|w| w.saturating_sub(self.delay_ms))
    }
}

/// The output stream of a stateful operator's execution node that works
/// out all of its batch's rows at once: `work`'s batches, one by one, and
/// a panic in it an execution error naming `operator`.
pub(crate) fn whole_batch_stream(
    schema: SchemaRef,
    operator: String,
    work: impl std::future::Future<Output = datafusion::error::Result<Vec<RecordBatch>>>
    + Send
    + 'static,
) -> datafusion::execution::SendableRecordBatchStream {
    use futures::{FutureExt, StreamExt, TryStreamExt, stream};
    let future = std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .map(move |outcome| {
            outcome.unwrap_or_else(|panic| {
                Err(datafusion::error::DataFusionError::Execution(format!(
                    "{operator} panicked: {}",
                    crate::error::panic_message(&*panic)
                )))
            })
        });
    let batches = stream::once(future)
        .map_ok(|batches| stream::iter(batches.into_iter().map(Ok)))
        .try_flatten();
    Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, batches.boxed()),
    )
}

/// An operator's state store as the loop's steps use it: reopened at a
/// batch's version when a failed attempt left changes behind, and
/// committed with the batch's figures.
#[derive(Debug)]
pub(crate) struct OperatorStore {
    /// The store, at the running batch's version.
    pub store: StateStore,
    /// Whether the store holds changes of a batch that did not commit.
    pub dirty: bool,
}

impl OperatorStore {
    /// `store`, as opened.
    pub fn new(store: StateStore) -> Self {
        Self {
            store,
            dirty: false,
        }
    }

    /// Makes the store hold exactly version `version` (the batch about to
    /// run), reopening it if a failed attempt changed it or it is at
    /// another version. Returns whether it was reopened (an operator then
    /// rebuilds what it derives from the entries).
    pub async fn begin_batch(&mut self, version: u64) -> Result<bool> {
        let reopen = self.dirty || self.store.version() != version;
        if reopen {
            let store = &self.store;
            self.store = StateStore::open(
                store.dir().clone(),
                store.schema().clone(),
                *store.config(),
                version,
            )
            .await?;
        }
        self.dirty = false;
        Ok(reopen)
    }

    /// Commits the batch's changes as the next version; the progress entry
    /// `operator_name` with the batch's rows dropped as late and left out
    /// for a null event time.
    pub async fn commit(
        &mut self,
        operator_name: &str,
        dropped_by_watermark: u64,
        without_event_time: u64,
    ) -> Result<StateOperatorProgress> {
        let commit = self.store.commit().await?;
        self.dirty = false;
        // After the commit: the entries are the same, and the memory no
        // longer counts the change records.
        let metrics = self.store.metrics();
        Ok(StateOperatorProgress {
            operator_name: operator_name.into(),
            num_rows_total: metrics.rows_total,
            num_rows_updated: commit.rows_updated,
            num_rows_removed: commit.rows_removed,
            memory_used_bytes: metrics.memory_bytes,
            commit_time_ms: commit.commit_time_ms,
            num_rows_dropped_by_watermark: dropped_by_watermark,
            num_rows_without_event_time: without_event_time,
            custom_metrics: Default::default(),
        })
    }
}
