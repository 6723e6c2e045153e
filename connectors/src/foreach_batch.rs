//! A closure called with each micro-batch as a DataFrame, like Spark's
//! `foreachBatch`.

use std::future::Future;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use tidemill_engine::{Result, Sink, SinkContext, TidemillError};

/// The error a [`ForeachBatchSink`] function may return.
pub type ForeachBatchError = Box<dyn std::error::Error + Send + Sync>;

type BatchFn = dyn Fn(DataFrame, u64) -> BoxFuture<'static, std::result::Result<(), ForeachBatchError>>
    + Send
    + Sync;

/// Calls a function with the output rows of every micro-batch, as a
/// DataFusion [`DataFrame`], and the batch id — Spark's `foreachBatch`.
///
/// Use it to write to a store Tidemill has no sink for, to write one result
/// to several places, or to run batch-only DataFrame operations on each
/// micro-batch. The DataFrame lives in the query's session (its registered
/// tables, functions and object stores are available) and always has the
/// query's output schema, also when the batch has no rows.
///
/// # Delivery guarantee
///
/// Within one process the sink is idempotent: it remembers the highest
/// batch id for which the function succeeded and does not call it again for
/// that id or a lower one. **Across a crash the guarantee is at-least-once**:
/// if the process dies while (or after) the function runs but before the
/// engine commits the batch, the restarted query calls the function again
/// with the same batch id and the same rows. Make the function's side
/// effects idempotent by keying them on the batch id (for example, skip ids
/// already recorded in the target, or overwrite a per-batch-id partition),
/// as with Spark.
///
/// If the function returns an error, the batch fails with a
/// [`TidemillError::Sink`] naming the batch id, and the query stops.
///
/// # Example
///
/// ```
/// use datafusion::prelude::*;
/// use tidemill_connectors::ForeachBatchSink;
///
/// let sink = ForeachBatchSink::new(|df: DataFrame, batch_id: u64| async move {
///     let rows = df.count().await?;
///     println!("batch {batch_id}: {rows} rows");
///     Ok(())
/// });
/// # let _ = sink;
/// ```
pub struct ForeachBatchSink {
    function: Arc<BatchFn>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    session: Option<SessionContext>,
    /// The highest batch id for which the function succeeded.
    last_done: Option<u64>,
}

impl std::fmt::Debug for ForeachBatchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForeachBatchSink").finish_non_exhaustive()
    }
}

impl ForeachBatchSink {
    /// A sink calling `function(batch, batch_id)` for every micro-batch.
    pub fn new<F, Fut>(function: F) -> Self
    where
        F: Fn(DataFrame, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), ForeachBatchError>> + Send + 'static,
    {
        let function: Arc<BatchFn> = Arc::new(move |df, batch_id| -> BoxFuture<'static, _> {
            Box::pin(function(df, batch_id))
        });
        Self {
            function,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| TidemillError::sink(self.description(), "internal lock poisoned"))
    }
}

#[async_trait]
impl Sink for ForeachBatchSink {
    fn description(&self) -> String {
        "ForeachBatchSink".to_string()
    }

    async fn open(&self, ctx: &SinkContext) -> Result<()> {
        self.lock()?.session = Some(ctx.session.clone());
        Ok(())
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let session = {
            let state = self.lock()?;
            if state.last_done.is_some_and(|last| batch_id <= last) {
                return Ok(());
            }
            state.session.clone().ok_or_else(|| {
                TidemillError::sink(
                    self.description(),
                    format!("add_batch({batch_id}) called before open()"),
                )
            })?
        };
        let context = || format!("{}: batch {batch_id}", self.description());
        let table = MemTable::try_new(schema, vec![batches])
            .map_err(|e| TidemillError::datafusion(context(), e))?;
        let df = session
            .read_table(Arc::new(table))
            .map_err(|e| TidemillError::datafusion(context(), e))?;
        (self.function)(df, batch_id).await.map_err(|e| {
            TidemillError::sink(
                self.description(),
                format!("the foreachBatch function failed on batch {batch_id}: {e}"),
            )
        })?;
        let mut state = self.lock()?;
        state.last_done = Some(state.last_done.map_or(batch_id, |last| last.max(batch_id)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use tidemill_engine::OutputMode;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
    }

    fn batch(ids: &[i64]) -> RecordBatch {
        RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(ids.to_vec()))]).unwrap()
    }

    async fn open(sink: &ForeachBatchSink) {
        sink.open(&SinkContext {
            session: SessionContext::new(),
            query_name: None,
            query_id: "test".into(),
            schema: schema(),
            output_mode: OutputMode::Append,
            durability: Default::default(),
        })
        .await
        .unwrap();
    }

    /// What the function saw: batch id, sorted ids, column names.
    type Call = (u64, Vec<i64>, Vec<String>);

    /// A sink recording each call.
    fn recording() -> (ForeachBatchSink, Arc<Mutex<Vec<Call>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let sink = ForeachBatchSink::new(move |df: DataFrame, batch_id| {
            let log = Arc::clone(&log);
            async move {
                let columns: Vec<String> = df
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                // A batch-only operation on the micro-batch.
                let rows = df
                    .sort(vec![datafusion::prelude::col("id").sort(true, false)])?
                    .collect()
                    .await?;
                let ids: Vec<i64> = rows
                    .iter()
                    .flat_map(|b| {
                        b.column(0)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap()
                            .values()
                            .to_vec()
                    })
                    .collect();
                log.lock().unwrap().push((batch_id, ids, columns));
                Ok(())
            }
        });
        (sink, seen)
    }

    #[tokio::test]
    async fn calls_the_function_with_rows_and_batch_id() {
        let (sink, seen) = recording();
        open(&sink).await;
        sink.add_batch(0, schema(), vec![batch(&[3, 1]), batch(&[2])])
            .await
            .unwrap();
        sink.add_batch(1, schema(), vec![batch(&[5])])
            .await
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (0, vec![1, 2, 3], vec!["id".to_string()]),
                (1, vec![5], vec!["id".to_string()])
            ]
        );
    }

    #[tokio::test]
    async fn empty_batch_has_the_schema() {
        let (sink, seen) = recording();
        open(&sink).await;
        sink.add_batch(4, schema(), Vec::new()).await.unwrap();
        assert_eq!(
            seen.lock().unwrap().clone(),
            vec![(4, vec![], vec!["id".to_string()])]
        );
    }

    #[tokio::test]
    async fn completed_batch_ids_are_not_called_again() {
        let (sink, seen) = recording();
        open(&sink).await;
        sink.add_batch(2, schema(), vec![batch(&[1])])
            .await
            .unwrap();
        sink.add_batch(2, schema(), vec![batch(&[9])])
            .await
            .unwrap();
        sink.add_batch(1, schema(), vec![batch(&[9])])
            .await
            .unwrap();
        sink.add_batch(3, schema(), vec![batch(&[4])])
            .await
            .unwrap();
        let ids: Vec<(u64, Vec<i64>)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(b, i, _)| (*b, i.clone()))
            .collect();
        assert_eq!(ids, vec![(2, vec![1]), (3, vec![4])]);
    }

    #[tokio::test]
    async fn errors_name_the_batch_and_the_batch_is_retried() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&calls);
        let sink = ForeachBatchSink::new(move |_df, batch_id| {
            let log = Arc::clone(&log);
            async move {
                let first = {
                    let mut log = log.lock().unwrap();
                    log.push(batch_id);
                    log.len() == 1
                };
                if first {
                    Err::<(), ForeachBatchError>("target table is locked".into())
                } else {
                    Ok(())
                }
            }
        });
        open(&sink).await;
        let err = sink
            .add_batch(7, schema(), vec![batch(&[1])])
            .await
            .unwrap_err();
        assert!(matches!(err, TidemillError::Sink { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("batch 7") && msg.contains("target table is locked"),
            "{msg}"
        );
        // A failed batch is not remembered as done: trying again calls it again.
        sink.add_batch(7, schema(), vec![batch(&[1])])
            .await
            .unwrap();
        assert_eq!(calls.lock().unwrap().clone(), vec![7, 7]);
    }

    #[tokio::test]
    async fn add_batch_before_open_is_an_error() {
        let (sink, seen) = recording();
        let err = sink
            .add_batch(0, schema(), vec![batch(&[1])])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("before open"), "{err}");
        assert!(seen.lock().unwrap().is_empty());
    }
}
