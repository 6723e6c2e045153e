//! # tidemill-engine
//!
//! The heart of Tidemill: a micro-batch stream processing engine on Apache
//! Arrow and DataFusion with the semantics of Spark Structured Streaming.
//!
//! A tour, in the order a query meets the parts:
//!
//! - [`StreamingContext::read_stream`] turns a [`Source`] into an
//!   ordinary DataFusion `DataFrame` backed by a [`SourceTable`]; every
//!   DataFrame, `Expr` and SQL transformation applies unchanged.
//! - [`StreamingDataFrame::write_stream`] gives a [`DataStreamWriter`]:
//!   choose a [`Sink`], an [`OutputMode`], a [`Trigger`] and a checkpoint
//!   location, then `start()`.
//! - [`plan`] checks at start that the plan can run incrementally in the
//!   chosen output mode and, for each micro-batch, substitutes the batch's
//!   rows for the streaming scans and plans the stateful operators; its
//!   module docs draw the path from logical plan to each batch's physical
//!   plan.
//! - [`watermark`] and [`window`] give event time its meaning: a watermark
//!   per stream, windows as struct columns.
//! - A streaming aggregation (`GROUP BY`) runs incrementally on
//!   DataFusion's own accumulators: each batch's partial states are merged
//!   with those kept in a versioned state store
//!   ([`tidemill_state::StateStore`]), and the output mode decides what is
//!   emitted: changed groups (update), every group (complete), or groups the
//!   watermark has closed, once each (append). Late rows are dropped and
//!   counted, or sent to a late-rows sink
//!   ([`DataStreamWriter::late_rows_sink`]); per-batch state figures are in
//!   [`StateOperatorProgress`].
//! - The trigger loop (`micro_batch`) runs batches: latest offsets → offset
//!   log (write-ahead) → read → execute → sink (idempotent per batch id) →
//!   state commit → commit log, as laid out in [`checkpoint`]; a batch
//!   without new data runs when the watermark closes groups in the state.
//! - [`StreamingQuery`] is the handle: stop, await, progress
//!   ([`QueryProgress`]), status and the error that stopped the query.
//! - [`state_reader`] reads the operators' state back from a checkpoint,
//!   as Spark's state data source: [`state_stores`] lists the stores,
//!   [`read_state`] reads one as a DataFrame, without writing anything.
//!
//! Sources and sinks implement [`SourceStream`]/[`Source`] and [`Sink`];
//! the built-in ones live in `tidemill-connectors`.
//!
//! ## Cargo features
//!
//! - `failpoints` (off by default): the crash-test hooks, the module
//!   `failpoint`, through which a test stops the process at a named step of
//!   a batch (`TIDEMILL_FAILPOINT=<point>@<batch id>`) to kill it there.
//!   Tidemill's own test build turns it on; without it the hooks compile to
//!   nothing and the module does not exist.
//! - `s3` (off by default here; on in the `tidemill` crate's default
//!   build): `s3://bucket/path` locations on S3-compatible storage, through
//!   object_store's `aws` client (see [`storage`]).

#![warn(missing_docs)]

mod aggregate;
mod background;
mod batch_slot;
mod boot;
pub mod checkpoint;
mod context_ext;
mod dedup;
mod error;
#[cfg(feature = "failpoints")]
pub mod failpoint;
mod join;
mod lease;
mod listener;
#[cfg(not(feature = "failpoints"))]
mod failpoint {
    //! Without the `failpoints` feature, the crash-test hooks are empty.

    /// Does nothing (see the `failpoints` feature).
    #[inline(always)]
    pub(crate) fn hit(_point: &str, _batch_id: u64) {}
}
mod location;
mod micro_batch;
mod offset;
pub mod plan;
pub mod processor;
mod progress;
mod query;
mod sink;
mod source;
mod source_table;
pub mod state_reader;
mod stateful;
pub mod storage;
mod trigger;
pub mod watermark;
pub mod window;
mod writer;

pub use context_ext::{StreamingContext, StreamingDataFrame};
pub use error::{Result, TidemillError};
pub use lease::{LeaseOptions, LeaseRecord};
pub use listener::{QueryIdle, QueryListener, QueryStarted, QueryTerminated};
pub use location::Location;
pub use offset::Offset;
pub use progress::{
    EventTimeProgress, PhaseDurations, QueryProgress, QueryStatus, SinkProgress, SourceProgress,
    StateOperatorProgress,
};
pub use query::{SourceBacklog, StreamingQuery};
pub use sink::{Sink, SinkContext};
pub use source::{BatchInput, ReadLimit, Source, SourceContext, SourceStream};
pub use source_table::SourceTable;
pub use state_reader::{StateStoreInfo, read_state, state_stores};
pub use storage::StorageOptions;
pub use tidemill_state::Durability;
pub use trigger::{OutputMode, Trigger};
pub use watermark::MultipleWatermarkPolicy;
pub use writer::{DataStreamWriter, QueryOptions, RetryPolicy};
