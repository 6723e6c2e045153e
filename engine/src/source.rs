//! The contract between the engine and its sources.

use std::fmt::Debug;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use tidemill_state::CheckpointDir;

use crate::{Offset, Result, TidemillError};

/// How much a source may admit into one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLimit {
    /// Everything available.
    All,
    /// At most this many rows.
    MaxRows(u64),
    /// At most this many files.
    MaxFiles(u64),
}

/// One source's rows for one batch, as [`SourceStream::read_input`] hands them
/// to the engine.
#[derive(Debug)]
pub enum BatchInput {
    /// Rows already read into memory; the engine spreads them over its
    /// partitions.
    Rows(Vec<RecordBatch>),
    /// Partitions the batch's plan reads while it runs: decoding overlaps
    /// the batch's other work and the partitions run in parallel. Each
    /// stream yields rows of exactly the source schema; executing a
    /// partition again reads the same rows again. Errors a stream yields
    /// should be [`crate::TidemillError`]s (converted with `into()`) naming
    /// what failed and where, as [`SourceStream::read`]'s do: the engine reports
    /// them as the batch's error.
    Partitions(Vec<Arc<dyn PartitionStream>>),
}

/// A streaming source as the user configures it: where the data is and how
/// to read it. Passed to [`crate::StreamingContext::read_stream`].
///
/// A source describes where and how to read; [`Source::open`] makes the
/// [`SourceStream`] one query reads from, so one source can feed several
/// queries, each with its own checkpoint.
#[async_trait]
pub trait Source: Send + Sync + Debug {
    /// A short description naming the kind of source and where it reads,
    /// e.g. `FileSource[json: file:///data/trades]`. Used in progress
    /// reports and errors.
    fn description(&self) -> String;

    /// The schema of the rows this source produces. Called once, when the
    /// streaming DataFrame is created; a source may infer it from data.
    async fn schema(&self, session: &SessionContext) -> Result<SchemaRef>;

    /// Opens the source for one query.
    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn SourceStream>>;

    /// The source's batch form: everything it holds now, read as an
    /// ordinary DataFusion `DataFrame` with the same columns as the stream,
    /// so the same plan runs as a batch job (Spark's `read` beside
    /// `readStream`). The default refuses: the source has no batch form.
    async fn read_batch(&self, session: &SessionContext) -> Result<DataFrame> {
        let _ = session;
        Err(TidemillError::Config(format!(
            "{} has no batch form; read it as a stream",
            self.description()
        )))
    }
}

/// A shared source is a source (what a connector registry hands out).
#[async_trait]
impl<P: Source + ?Sized> Source for Arc<P> {
    fn description(&self) -> String {
        (**self).description()
    }

    async fn schema(&self, session: &SessionContext) -> Result<SchemaRef> {
        (**self).schema(session).await
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn SourceStream>> {
        (**self).open(ctx).await
    }

    async fn read_batch(&self, session: &SessionContext) -> Result<DataFrame> {
        (**self).read_batch(session).await
    }
}

/// What a source is given when a query opens it.
#[derive(Clone)]
pub struct SourceContext {
    /// The session the query runs in (its object stores, configuration).
    pub session: SessionContext,
    /// The schema returned by [`Source::schema`] when the
    /// DataFrame was made; every batch read must have exactly this schema.
    pub schema: SchemaRef,
    /// A directory in the query's checkpoint private to this source
    /// (`<checkpoint>/sources/<index>`), for logs that make replay
    /// deterministic, such as the list of files already seen.
    pub checkpoint: CheckpointDir,
}

/// A [`Source`] opened for one query: its stream of offset ranges.
///
/// The engine drives it: each trigger it asks for the latest offset, records
/// the range `(start, end]` in the offset log (after the last committed
/// offset, up to and including the new one), then reads it. The contract:
///
/// - **Deterministic replay.** Reading the same range again, in this
///   process or after a restart, yields the same rows. Recovery re-runs an
///   uncommitted batch by reading its recorded range.
/// - **Offsets are JSON** ([`Offset`]) and survive a round trip through the
///   offset log unchanged.
/// - **An empty range** (`start == end`) yields no rows.
#[async_trait]
pub trait SourceStream: Send + Debug {
    /// The source's description, as [`Source::description`].
    fn description(&self) -> String;

    /// The read limit the source was configured with (for example
    /// `max_files_per_trigger`); [`ReadLimit::All`] if none.
    fn default_read_limit(&self) -> ReadLimit {
        ReadLimit::All
    }

    /// The offset up to which data is available now, starting after
    /// `start` (the end of the last batch, `None` before the first) and
    /// admitting no more than `limit`. Returns `start` unchanged (or `None`
    /// before any data) when nothing new is available.
    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>>;

    /// Reads the rows in `(start, end]`, i.e. after `start` (from the
    /// beginning if `None`) up to and including `end`.
    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>>;

    /// Reads the rows in `(start, end]` as the engine runs a batch: the same
    /// rows as [`SourceStream::read`], either already in memory or as up to
    /// `partitions` streams read while the batch executes. The default
    /// reads them with [`SourceStream::read`]; a source whose decoding is costly
    /// (files) returns streams, so the batch does not wait for all of its
    /// input before starting.
    ///
    /// Whatever can be checked without decoding the rows (that the data
    /// exists, its schema) should be checked here, so such errors surface
    /// before the batch starts.
    async fn read_input(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
        partitions: usize,
    ) -> Result<BatchInput> {
        let _ = partitions;
        Ok(BatchInput::Rows(self.read(start, end).await?))
    }

    /// Tells the source that every batch up to `end` is committed, so data
    /// before it will never be asked for again and may be released.
    async fn commit(&mut self, _end: &Offset) -> Result<()> {
        Ok(())
    }

    /// Called once before an [`crate::Trigger::AvailableNow`] query's
    /// first batch: from then on, [`SourceStream::latest_offset`] must not go past
    /// what is available at this moment, so the query ends.
    async fn prepare_for_available_now(&mut self) -> Result<()> {
        Ok(())
    }

    /// How far behind its latest data each partition is after the range
    /// the last [`latest_offset`](Self::latest_offset) returned (records
    /// or offsets, by partition name), for progress and monitoring;
    /// empty where the source cannot say.
    fn lag(&self) -> std::collections::BTreeMap<String, u64> {
        std::collections::BTreeMap::new()
    }

    /// Source-specific figures about the range the last
    /// [`latest_offset`](Self::latest_offset) returned, by name, for
    /// progress (Spark's `SourceProgress.metrics`); empty by default.
    fn metrics(&self) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::new()
    }

    /// After [`prepare_for_available_now`](Self::prepare_for_available_now):
    /// the offset the query will have read up to when it ends, if the
    /// source can say, so that a run can show how much of its backlog is
    /// done.
    fn available_now_target(&self) -> Option<Offset> {
        None
    }
}

impl std::fmt::Debug for SourceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceContext")
            .field("session_id", &self.session.session_id())
            .field("schema", &self.schema)
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}
