//! Streaming entry points on DataFusion's `SessionContext` and `DataFrame`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::watermark::WatermarkNode;
use crate::{DataStreamWriter, Result, Source, SourceTable, TidemillError};

/// Reading streams: an extension of DataFusion's [`SessionContext`].
///
/// ```no_run
/// # async fn demo(source: impl tidemill_engine::Source + 'static) -> tidemill_engine::Result<()> {
/// use datafusion::prelude::*;
/// use tidemill_engine::StreamingContext;
///
/// let ctx = SessionContext::new();
/// let events = ctx.read_stream(source).await?;          // an ordinary DataFrame
/// let big = events.filter(col("amount").gt(lit(100)))?;  // DataFusion as usual
/// # Ok(()) }
/// ```
#[async_trait]
pub trait StreamingContext {
    /// A DataFrame reading `source` as an unbounded stream. It supports every
    /// DataFrame transformation; run it with
    /// [`StreamingDataFrame::write_stream`].
    async fn read_stream<S: Source + 'static>(&self, source: S) -> Result<DataFrame>;

    /// Registers `source` as a streaming table `name`, for SQL:
    /// `ctx.sql("SELECT … FROM name")` then returns a streaming DataFrame.
    async fn register_stream<S: Source + 'static>(&self, name: &str, source: S) -> Result<()>;
}

#[async_trait]
impl StreamingContext for SessionContext {
    async fn read_stream<S: Source + 'static>(&self, source: S) -> Result<DataFrame> {
        let table = streaming_table(self, source).await?;
        self.read_table(table)
            .map_err(|e| TidemillError::datafusion("creating a streaming DataFrame", e))
    }

    async fn register_stream<S: Source + 'static>(&self, name: &str, source: S) -> Result<()> {
        let table = streaming_table(self, source).await?;
        self.register_table(name, table)
            .map_err(|e| TidemillError::datafusion(format!("registering stream '{name}'"), e))?;
        Ok(())
    }
}

async fn streaming_table<S: Source + 'static>(
    ctx: &SessionContext,
    source: S,
) -> Result<Arc<SourceTable>> {
    let schema = source.schema(ctx).await?;
    Ok(Arc::new(SourceTable::new(Arc::new(source), schema)))
}

/// Writing streams: an extension of DataFusion's [`DataFrame`].
pub trait StreamingDataFrame {
    /// Whether the DataFrame reads at least one streaming source.
    fn is_streaming(&self) -> bool;

    /// Starts describing how to run this streaming DataFrame: sink, output
    /// mode, trigger, checkpoint. See [`DataStreamWriter`].
    fn write_stream(self) -> DataStreamWriter;

    /// Declares `column` (a timestamp) as the event time and `delay` (e.g.
    /// `"10 minutes"`) as how late rows may arrive, as Spark's
    /// `withWatermark`. The watermark, the largest event time seen minus
    /// the delay, is computed at the end of each batch and used by the
    /// next; it never moves backwards and is reported in progress. On a
    /// batch DataFrame this is a no-op, so one function serves both.
    fn with_watermark(self, column: &str, delay: &str) -> Result<DataFrame>;
}

impl StreamingDataFrame for DataFrame {
    fn is_streaming(&self) -> bool {
        SourceTable::any_in(self.logical_plan())
    }

    fn write_stream(self) -> DataStreamWriter {
        DataStreamWriter::new(self)
    }

    fn with_watermark(self, column: &str, delay: &str) -> Result<DataFrame> {
        let delay = crate::watermark::parse_delay(delay)?;
        if !self.is_streaming() {
            return Ok(self);
        }
        let (state, plan) = self.into_parts();
        let node = WatermarkNode::try_new(plan, column, delay)?;
        Ok(DataFrame::new(state, node.into_plan()))
    }
}
