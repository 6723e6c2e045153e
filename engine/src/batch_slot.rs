//! A source's rows for one batch as the table the batch's plan scans, with
//! a count of the rows the plan read from it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::MemTable;
use datafusion::error::Result as DFResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;

use crate::BatchInput;

/// The table one source contributes to a batch, and its row count.
pub(crate) struct BatchTable {
    pub table: Arc<dyn TableProvider>,
    rows: RowCount,
}

/// The rows of a batch's input: known up front for rows in memory, counted
/// as the plan reads them for streamed partitions.
enum RowCount {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl BatchTable {
    /// The table over `input`, whose rows have `schema`; rows in memory are
    /// spread over up to `partitions` partitions.
    pub fn new(input: BatchInput, schema: SchemaRef, partitions: usize) -> DFResult<Self> {
        match input {
            BatchInput::Rows(batches) => {
                let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                let table = MemTable::try_new(schema, spread(batches, partitions))?;
                Ok(Self {
                    table: Arc::new(table),
                    rows: RowCount::Known(rows),
                })
            }
            BatchInput::Partitions(streams) => {
                let count = Arc::new(AtomicU64::new(0));
                let mut counted: Vec<Arc<dyn PartitionStream>> = streams
                    .into_iter()
                    .map(|inner| {
                        Arc::new(CountedPartition {
                            inner,
                            rows: Arc::clone(&count),
                        }) as _
                    })
                    .collect();
                if counted.is_empty() {
                    counted.push(Arc::new(NoRows(Arc::clone(&schema))));
                }
                let table = StreamingTable::try_new(schema, counted)?;
                Ok(Self {
                    table: Arc::new(table),
                    rows: RowCount::Counted(count),
                })
            }
        }
    }

    /// The rows the batch read: all of them for rows in memory; for
    /// streamed partitions, those the plan read (all of them once the batch
    /// has run, unless the plan needed none).
    pub fn rows(&self) -> u64 {
        match &self.rows {
            RowCount::Known(n) => *n,
            RowCount::Counted(n) => n.load(Ordering::Relaxed),
        }
    }
}

/// A source's partition whose rows are counted as they are read.
struct CountedPartition {
    inner: Arc<dyn PartitionStream>,
    rows: Arc<AtomicU64>,
}

impl fmt::Debug for CountedPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountedPartition")
            .field("inner", &self.inner)
            .finish()
    }
}

impl PartitionStream for CountedPartition {
    fn schema(&self) -> &SchemaRef {
        self.inner.schema()
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = Arc::clone(&self.rows);
        let stream = self.inner.execute(ctx).inspect(move |batch| {
            if let Ok(batch) = batch {
                rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(self.inner.schema()),
            stream,
        ))
    }
}

/// The one partition of a source that has no rows for the batch.
#[derive(Debug)]
struct NoRows(SchemaRef);

impl PartitionStream for NoRows {
    fn schema(&self) -> &SchemaRef {
        &self.0
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.0),
            futures::stream::empty(),
        ))
    }
}

/// Spreads `batches` over up to `n` partitions so the batch executes in
/// parallel.
fn spread(batches: Vec<RecordBatch>, n: usize) -> Vec<Vec<RecordBatch>> {
    let mut partitions: Vec<Vec<RecordBatch>> = (0..n.min(batches.len()).max(1))
        .map(|_| Vec::new())
        .collect();
    let count = partitions.len();
    for (i, batch) in batches.into_iter().enumerate() {
        partitions[i % count].push(batch);
    }
    partitions
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
    }

    #[derive(Debug)]
    struct Fixed(SchemaRef, Vec<RecordBatch>);

    impl PartitionStream for Fixed {
        fn schema(&self) -> &SchemaRef {
            &self.0
        }
        fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
            let batches = self.1.clone();
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.0),
                futures::stream::iter(batches.into_iter().map(Ok)),
            ))
        }
    }

    fn batch(values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    #[tokio::test]
    async fn streamed_partitions_are_counted_as_the_plan_reads_them() {
        let parts: Vec<Arc<dyn PartitionStream>> = vec![
            Arc::new(Fixed(schema(), vec![batch(&[1, 2]), batch(&[3])])),
            Arc::new(Fixed(schema(), vec![batch(&[4, 5, 6, 7])])),
        ];
        let table = BatchTable::new(BatchInput::Partitions(parts), schema(), 2).unwrap();
        assert_eq!(table.rows(), 0, "nothing read before the plan runs");
        let ctx = SessionContext::new();
        let sum = ctx
            .read_table(Arc::clone(&table.table))
            .unwrap()
            .collect()
            .await
            .unwrap();
        let total: usize = sum.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(total, 7);
        assert_eq!(table.rows(), 7);
    }

    #[tokio::test]
    async fn no_partitions_is_an_empty_table_and_rows_are_known_up_front() {
        let empty = BatchTable::new(BatchInput::Partitions(Vec::new()), schema(), 2).unwrap();
        let ctx = SessionContext::new();
        let rows = ctx
            .read_table(empty.table)
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);

        let known = BatchTable::new(
            BatchInput::Rows(vec![batch(&[1]), batch(&[2, 3])]),
            schema(),
            4,
        )
        .unwrap();
        assert_eq!(known.rows(), 3);
    }
}
