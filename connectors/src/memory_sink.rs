//! A sink that keeps results in memory, queryable as a table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use tidemill_engine::{OutputMode, Result, Sink, SinkContext, TidemillError};

#[derive(Debug, Default)]
struct Contents {
    schema: Option<SchemaRef>,
    mode: OutputMode,
    /// Output by batch id.
    batches: BTreeMap<u64, Vec<RecordBatch>>,
}

/// Keeps every committed batch in memory, as Spark's memory sink.
///
/// When the query starts, the sink registers itself in the query's
/// `SessionContext` as a table named by [`MemorySink::table_name`], or else
/// by the query's name, so `ctx.sql("SELECT * FROM name")` reads the results
/// committed so far. Clones share the data. In complete mode each batch
/// replaces the previous result; otherwise batches accumulate. A batch id
/// already present is ignored (idempotence).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    table_name: Option<String>,
    contents: Arc<Mutex<Contents>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the results under `name` (default: the query's name).
    pub fn table_name(mut self, name: impl Into<String>) -> Self {
        self.table_name = Some(name.into());
        self
    }

    /// All committed rows, in batch order.
    pub fn batches(&self) -> Vec<RecordBatch> {
        let contents = self.contents.lock().expect("memory sink lock poisoned");
        contents.batches.values().flatten().cloned().collect()
    }

    /// The ids of the batches committed so far.
    pub fn batch_ids(&self) -> Vec<u64> {
        let contents = self.contents.lock().expect("memory sink lock poisoned");
        contents.batches.keys().copied().collect()
    }

    /// The number of committed rows.
    pub fn num_rows(&self) -> usize {
        self.batches().iter().map(RecordBatch::num_rows).sum()
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn description(&self) -> String {
        match &self.table_name {
            Some(name) => format!("MemorySink[{name}]"),
            None => "MemorySink".into(),
        }
    }

    async fn open(&self, ctx: &SinkContext) -> Result<()> {
        {
            let mut contents = self.contents.lock().expect("memory sink lock poisoned");
            contents.schema = Some(Arc::clone(&ctx.schema));
            contents.mode = ctx.output_mode;
        }
        if let Some(name) = self.table_name.as_ref().or(ctx.query_name.as_ref()) {
            // A table left by an earlier run of a memory sink is replaced;
            // any other table of that name is the user's and stays.
            if let Ok(existing) = ctx.session.table_provider(name.as_str()).await {
                let existing: Arc<dyn std::any::Any + Send + Sync> = existing;
                if existing.downcast::<MemorySinkTable>().is_err() {
                    return Err(TidemillError::sink(
                        self.description(),
                        format!(
                            "a table named '{name}' already exists; choose another query or table name"
                        ),
                    ));
                }
                ctx.session.deregister_table(name.as_str()).map_err(|e| {
                    TidemillError::sink(
                        self.description(),
                        format!("cannot replace table '{name}': {e}"),
                    )
                })?;
            }
            let table = Arc::new(MemorySinkTable {
                schema: Arc::clone(&ctx.schema),
                contents: Arc::clone(&self.contents),
            });
            ctx.session
                .register_table(name.as_str(), table)
                .map_err(|e| {
                    TidemillError::sink(
                        self.description(),
                        format!("cannot register table '{name}': {e}"),
                    )
                })?;
        }
        Ok(())
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let mut contents = self.contents.lock().expect("memory sink lock poisoned");
        if contents.batches.contains_key(&batch_id) {
            return Ok(());
        }
        if contents.mode == OutputMode::Complete {
            contents.batches.clear();
        }
        contents.schema.get_or_insert(schema);
        contents.batches.insert(batch_id, batches);
        Ok(())
    }
}

/// The table a [`MemorySink`] registers: a snapshot of its rows at scan time.
#[derive(Debug)]
struct MemorySinkTable {
    schema: SchemaRef,
    contents: Arc<Mutex<Contents>>,
}

#[async_trait]
impl TableProvider for MemorySinkTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batches: Vec<RecordBatch> = {
            let contents = self.contents.lock().expect("memory sink lock poisoned");
            contents.batches.values().flatten().cloned().collect()
        };
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![batches])?;
        table.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{Observed, SinkHarness, check_sink};
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    fn rows(values: std::ops::Range<i64>) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        vec![
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(values))])
                .unwrap(),
        ]
    }

    struct Harness {
        sink: MemorySink,
        session: SessionContext,
    }

    #[async_trait]
    impl SinkHarness for Harness {
        fn sink(&self) -> Arc<dyn Sink> {
            Arc::new(self.sink.clone())
        }
        fn session(&self) -> SessionContext {
            self.session.clone()
        }
        async fn observe(&self) -> Result<Observed> {
            // Read through the registered table, as a user would.
            let df = self
                .session
                .table("conformance")
                .await
                .map_err(TidemillError::from)?;
            Ok(Observed::Rows(
                df.collect().await.map_err(TidemillError::from)?,
            ))
        }
    }

    #[tokio::test]
    async fn conformance() {
        let harness = Harness {
            sink: MemorySink::new(),
            session: SessionContext::new(),
        };
        check_sink(&harness, rows(0..3), rows(3..5), rows(5..9)).await;
    }

    #[tokio::test]
    async fn a_restarted_query_replaces_its_table_but_not_a_users() {
        let session = SessionContext::new();
        let schema = rows(0..1)[0].schema();
        let ctx = SinkContext {
            session: session.clone(),
            query_name: Some("results".into()),
            query_id: "test".into(),
            schema: Arc::clone(&schema),
            output_mode: OutputMode::Append,
            durability: Default::default(),
        };
        MemorySink::new().open(&ctx).await.unwrap();
        let second = MemorySink::new();
        second.open(&ctx).await.unwrap();
        second
            .add_batch(0, Arc::clone(&schema), rows(0..2))
            .await
            .unwrap();
        let seen = session
            .table("results")
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(seen, 2, "the table shows the new sink's rows");

        session
            .register_batch("mine", rows(0..1).remove(0))
            .unwrap();
        let err = MemorySink::new()
            .table_name("mine")
            .open(&ctx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[tokio::test]
    async fn complete_mode_keeps_only_the_latest_batch() {
        let sink = MemorySink::new().table_name("latest");
        let session = SessionContext::new();
        let schema = rows(0..1)[0].schema();
        sink.open(&SinkContext {
            session: session.clone(),
            query_name: None,
            query_id: "test".into(),
            schema: Arc::clone(&schema),
            output_mode: OutputMode::Complete,
            durability: Default::default(),
        })
        .await
        .unwrap();
        sink.add_batch(0, Arc::clone(&schema), rows(0..3))
            .await
            .unwrap();
        sink.add_batch(1, Arc::clone(&schema), rows(10..12))
            .await
            .unwrap();
        assert_eq!(sink.num_rows(), 2);
        let counted = session
            .sql("SELECT count(*) FROM latest")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let count = counted[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(count, 2);
    }
}
