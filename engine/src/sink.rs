//! The contract between the engine and its sinks.

use std::fmt::Debug;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;

use crate::{OutputMode, Result};

/// What a sink is told when a query starts.
#[derive(Clone)]
pub struct SinkContext {
    /// The session the query runs in.
    pub session: SessionContext,
    /// The query's name, if it was given one.
    pub query_name: Option<String>,
    /// The query's id: kept in its checkpoint's metadata, so the same
    /// across restarts on one checkpoint, and new for a new checkpoint (a
    /// batch run has a fresh one). A sink that records which batches it
    /// committed in its target (the Delta sink's application transaction,
    /// as Spark's) keys them by this id and the batch id.
    pub query_id: String,
    /// The schema of every batch the sink will receive.
    pub schema: SchemaRef,
    /// The query's output mode.
    pub output_mode: OutputMode,
    /// How durable the sink's commits must be when `add_batch` returns
    /// (the query's [`QueryOptions::checkpoint_durability`](crate::QueryOptions)):
    /// a sink writing local files resolves them with
    /// [`Location::with_durability`](crate::Location::with_durability).
    pub durability: tidemill_state::Durability,
}

/// Where a streaming query writes its results.
///
/// **Idempotence is the contract**: [`Sink::add_batch`] may be called again
/// with a batch id it has already committed (the engine re-runs the last
/// batch after a crash between the sink's commit and the engine's). Such a
/// call must change nothing. Together with deterministic source replay this
/// makes the output exactly-once.
#[async_trait]
pub trait Sink: Send + Sync + Debug {
    /// A short description of the sink and where it writes, for progress
    /// reports and errors.
    fn description(&self) -> String;

    /// Called once when a query starts, before any batch.
    async fn open(&self, _ctx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// Writes the output rows of batch `batch_id` (possibly none) and
    /// commits them atomically: after it returns, the batch is durable and
    /// visible to readers; if the process dies inside it, readers see none
    /// of it.
    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()>;
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("session_id", &self.session.session_id())
            .field("query_name", &self.query_name)
            .field("query_id", &self.query_id)
            .field("schema", &self.schema)
            .field("output_mode", &self.output_mode)
            .field("durability", &self.durability)
            .finish()
    }
}
