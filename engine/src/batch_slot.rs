//! A streaming source's place in a query's physical plan, which each batch
//! fills with its rows: the plan can then be built once and run for every
//! batch (see [`crate::plan`]).
//!
//! [`SlotTable`] stands in for the source's scan in the logical plan; its
//! scan is a [`SlotScanExec`] with a fixed number of partitions. Before a
//! batch executes, the trigger loop [fills](BatchSlot::fill) the slot with
//! the batch's input; once the batch has run it
//! [empties](BatchSlot::clear) it, so no batch's rows outlive it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;

use crate::BatchInput;

/// Where one source's rows for the running batch wait for the plan.
pub(crate) struct BatchSlot {
    schema: SchemaRef,
    /// The partitions every scan of the slot has, whatever the batch.
    partitions: usize,
    filled: Mutex<Option<Arc<Filled>>>,
}

/// What a batch put in a slot.
enum Filled {
    /// Rows in memory, spread over up to the slot's partitions.
    Rows(Vec<Vec<RecordBatch>>),
    /// Partitions read while the plan runs, their rows counted.
    Streams(Vec<Arc<CountedPartition>>),
}

/// The rows a batch put in a slot: known up front for rows in memory,
/// counted as the plan reads them for streamed partitions.
pub(crate) enum BatchRows {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl BatchRows {
    /// The rows the batch read: all of them for rows in memory; for
    /// streamed partitions, those the plan read (all of them once the batch
    /// has run, unless the plan needed none).
    pub fn get(&self) -> u64 {
        match self {
            BatchRows::Known(n) => *n,
            BatchRows::Counted(n) => n.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for BatchSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSlot")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl BatchSlot {
    /// An empty slot for rows of `schema`, scanned in `partitions`
    /// partitions.
    pub fn new(schema: SchemaRef, partitions: usize) -> Arc<Self> {
        Arc::new(Self {
            schema,
            partitions: partitions.max(1),
            filled: Mutex::new(None),
        })
    }

    /// The partitions every scan of the slot has.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Puts a batch's `input` in the slot, for the plan's scans to read;
    /// an error names the first batch of rows whose schema is not the
    /// source's.
    pub fn fill(&self, input: BatchInput) -> Result<BatchRows, String> {
        let (filled, rows) = match input {
            BatchInput::Rows(batches) => {
                if let Some((i, batch)) = batches
                    .iter()
                    .enumerate()
                    .find(|(_, b)| !self.schema.contains(&b.schema()))
                {
                    return Err(format!(
                        "its rows (record batch {i}) have schema {:?}, expected {:?}",
                        batch.schema(),
                        self.schema
                    ));
                }
                let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                (
                    Filled::Rows(spread(batches, self.partitions)),
                    BatchRows::Known(rows),
                )
            }
            BatchInput::Partitions(streams) => {
                let count = Arc::new(AtomicU64::new(0));
                let counted = streams
                    .into_iter()
                    .map(|inner| {
                        Arc::new(CountedPartition {
                            inner,
                            rows: Arc::clone(&count),
                        })
                    })
                    .collect();
                (Filled::Streams(counted), BatchRows::Counted(count))
            }
        };
        *self.filled.lock().expect("slot lock poisoned") = Some(Arc::new(filled));
        Ok(rows)
    }

    /// Empties the slot once the batch has run.
    pub fn clear(&self) {
        *self.filled.lock().expect("slot lock poisoned") = None;
    }

    /// Partition `partition`'s stream of the batch's rows, projected.
    fn execute(
        &self,
        partition: usize,
        projection: Option<&[usize]>,
        schema: &SchemaRef,
        ctx: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let filled = self
            .filled
            .lock()
            .expect("slot lock poisoned")
            .clone()
            .ok_or_else(|| {
                DataFusionError::Internal("a streaming scan ran outside a batch".into())
            })?;
        let project = {
            let projection = projection.map(<[usize]>::to_vec);
            let schema = Arc::clone(schema);
            move |batch: RecordBatch| -> DFResult<RecordBatch> {
                let columns = match &projection {
                    Some(indices) => indices
                        .iter()
                        .map(|&i| Arc::clone(batch.column(i)))
                        .collect(),
                    None => batch.columns().to_vec(),
                };
                Ok(RecordBatch::try_new_with_options(
                    Arc::clone(&schema),
                    columns,
                    &arrow::record_batch::RecordBatchOptions::new()
                        .with_row_count(Some(batch.num_rows())),
                )?)
            }
        };
        let stream = match &*filled {
            Filled::Rows(partitions) => {
                let batches = partitions.get(partition).cloned().unwrap_or_default();
                futures::stream::iter(batches.into_iter().map(project)).boxed()
            }
            Filled::Streams(streams) => {
                // A source may give more partitions than the slot has: the
                // extra ones run after the first, on the same partition.
                let mine: Vec<_> = streams
                    .iter()
                    .skip(partition)
                    .step_by(self.partitions)
                    .map(|s| s.execute(Arc::clone(&ctx)))
                    .collect();
                futures::stream::iter(mine)
                    .flatten()
                    .map(move |batch| project(batch?))
                    .boxed()
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(schema),
            stream,
        )))
    }
}

/// The table standing for one streaming source in the plan a query's
/// batches run: its scans read what the running batch put in its
/// [`BatchSlot`].
#[derive(Debug)]
pub(crate) struct SlotTable {
    slot: Arc<BatchSlot>,
}

impl SlotTable {
    /// The table over `slot`.
    pub fn new(slot: Arc<BatchSlot>) -> Self {
        Self { slot }
    }
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.slot.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SlotScanExec::new(
            Arc::clone(&self.slot),
            projection.cloned(),
        )?))
    }
}

/// Scans the rows the running batch put in a [`BatchSlot`]. Filters and
/// limits stay with the operators above it.
#[derive(Debug)]
pub(crate) struct SlotScanExec {
    slot: Arc<BatchSlot>,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl SlotScanExec {
    fn new(slot: Arc<BatchSlot>, projection: Option<Vec<usize>>) -> DFResult<Self> {
        let schema = match &projection {
            Some(indices) => Arc::new(slot.schema.project(indices)?),
            None => Arc::clone(&slot.schema),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(slot.partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            slot,
            projection,
            properties,
        })
    }
}

impl DisplayAs for SlotScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SlotScanExec: partitions={}", self.slot.partitions)?;
        if let Some(projection) = &self.projection {
            write!(f, ", projection={projection:?}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SlotScanExec {
    fn name(&self) -> &str {
        "SlotScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "SlotScanExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        self.slot.execute(
            partition,
            self.projection.as_deref(),
            &self.schema(),
            context,
        )
    }
}

/// A source's partition whose rows are counted as they are read.
struct CountedPartition {
    inner: Arc<dyn PartitionStream>,
    rows: Arc<AtomicU64>,
}

impl CountedPartition {
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
    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]))
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
        let text: Vec<String> = values.iter().map(|v| format!("v{v}")).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(values.to_vec())),
                Arc::new(StringArray::from(text)),
            ],
        )
        .unwrap()
    }

    /// The sum of `n` over the slot's table, with the plan built once and
    /// run again for each fill.
    async fn sums(slot: &Arc<BatchSlot>, fills: Vec<BatchInput>) -> Vec<(i64, u64)> {
        let ctx = SessionContext::new();
        let df = ctx
            .read_table(Arc::new(SlotTable::new(Arc::clone(slot))))
            .unwrap()
            .aggregate(
                vec![],
                vec![datafusion::functions_aggregate::expr_fn::sum(
                    datafusion::prelude::col("n"),
                )],
            )
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let mut out = Vec::new();
        for input in fills {
            let rows = slot.fill(input).unwrap();
            let plan =
                datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(&plan))
                    .unwrap();
            let result = datafusion::physical_plan::collect(plan, ctx.task_ctx())
                .await
                .unwrap();
            slot.clear();
            let sum = result[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            out.push((if sum.is_null(0) { 0 } else { sum.value(0) }, rows.get()));
        }
        out
    }

    #[tokio::test]
    async fn one_plan_reads_each_fill_of_rows_or_streamed_partitions() {
        let slot = BatchSlot::new(schema(), 2);
        let streams: Vec<Arc<dyn PartitionStream>> = vec![
            Arc::new(Fixed(schema(), vec![batch(&[1, 2]), batch(&[3])])),
            Arc::new(Fixed(schema(), vec![batch(&[4])])),
            // More partitions than the slot has: read after the first.
            Arc::new(Fixed(schema(), vec![batch(&[100])])),
        ];
        let got = sums(
            &slot,
            vec![
                BatchInput::Rows(vec![batch(&[1, 2]), batch(&[10]), batch(&[20])]),
                BatchInput::Rows(Vec::new()),
                BatchInput::Partitions(streams),
                BatchInput::Partitions(Vec::new()),
                BatchInput::Rows(vec![batch(&[5])]),
            ],
        )
        .await;
        assert_eq!(got, vec![(33, 4), (0, 0), (110, 5), (0, 0), (5, 1)]);
    }

    #[tokio::test]
    async fn scans_project_and_refuse_rows_of_another_schema() {
        let slot = BatchSlot::new(schema(), 3);
        let ctx = SessionContext::new();
        let df = ctx
            .read_table(Arc::new(SlotTable::new(Arc::clone(&slot))))
            .unwrap()
            .select_columns(&["s"])
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        slot.fill(BatchInput::Rows(vec![batch(&[7, 8])])).unwrap();
        let out = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].schema().fields().len(), 1);
        assert_eq!(out[0].schema().field(0).name(), "s");
        assert_eq!(out[0].num_rows(), 2);

        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("m", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        let error = slot
            .fill(BatchInput::Rows(vec![batch(&[1]), other]))
            .err()
            .expect("another schema is refused");
        assert!(error.contains("record batch 1"), "{error}");
    }

    #[tokio::test]
    async fn an_empty_slot_is_an_error_not_an_empty_batch() {
        let slot = BatchSlot::new(schema(), 1);
        let scan = SlotScanExec::new(Arc::clone(&slot), None).unwrap();
        let error = scan
            .execute(0, SessionContext::new().task_ctx())
            .err()
            .expect("no batch running");
        assert!(error.to_string().contains("outside a batch"), "{error}");
    }
}
