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

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::Result;
use crate::progress::StateOperatorProgress;

/// A stateful operator as the trigger loop sees it.
#[async_trait]
pub(crate) trait StatefulOperator: Send + Sync + Debug {
    /// Gets ready to run batch `version` with the batch's watermark:
    /// reloads the state of `version` if a failed attempt left changes
    /// behind, and clears the batch's figures.
    async fn begin_batch(&self, version: u64, watermark_ms: Option<i64>) -> Result<()>;

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

    /// Whether the watermark `watermark_ms` closes something the state
    /// holds, so a batch without new data would emit or evict it.
    async fn has_closable_state(&self, watermark_ms: Option<i64>) -> bool;
}
