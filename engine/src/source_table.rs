//! The table provider that marks a DataFrame as streaming.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::datasource::source_as_provider;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan};
use datafusion::physical_plan::ExecutionPlan;

use crate::Source;

/// A streaming source placed in a DataFusion plan.
///
/// [`crate::StreamingContext::read_stream`] wraps a [`Source`] in
/// a `SourceTable` and returns an ordinary DataFrame scanning it, so
/// every DataFrame, `Expr` and SQL transformation applies unchanged. The
/// table itself holds no data: when the query runs, each micro-batch
/// substitutes the rows of that batch's offset range for the scan. Running
/// such a DataFrame as a batch job (`collect()`) fails with an error saying
/// to start it with `write_stream()`, as in Spark.
#[derive(Debug)]
pub struct SourceTable {
    id: u64,
    source: Arc<dyn Source>,
    schema: SchemaRef,
}

impl SourceTable {
    /// Wraps `source`, whose rows have `schema`.
    pub fn new(source: Arc<dyn Source>, schema: SchemaRef) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            source,
            schema,
        }
    }

    /// Identifies this stream within the process: two scans with the same
    /// id read the same source.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The source.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// The streaming table scanned by `scan`, if it is one.
    pub fn of_scan(scan: &TableScan) -> Option<Arc<SourceTable>> {
        let provider = source_as_provider(&scan.source).ok()?;
        let any: Arc<dyn std::any::Any + Send + Sync> = provider;
        any.downcast::<SourceTable>().ok()
    }

    /// Whether `plan` reads a streaming table: directly, in a subquery, or
    /// inside a view (which a plan as written keeps as a scan of the view;
    /// optimizing inlines it).
    pub fn any_in(plan: &LogicalPlan) -> bool {
        let mut found = false;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let in_view = source_as_provider(&scan.source)
                    .ok()
                    .and_then(|provider| provider.get_logical_plan().map(|p| Self::any_in(&p)));
                if Self::of_scan(scan).is_some() || in_view == Some(true) {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .expect("visiting a plan without errors cannot fail");
        found
    }

    /// The distinct streaming tables in `plan`, in the order a depth-first
    /// walk meets them. This order is the source index used in the
    /// checkpoint, so it must not depend on anything but the plan's shape.
    pub fn all_in(plan: &LogicalPlan) -> Vec<Arc<SourceTable>> {
        let mut found: Vec<Arc<SourceTable>> = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Some(table) = Self::of_scan(scan)
                && !found.iter().any(|t| t.id == table.id)
            {
                found.push(table);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .expect("visiting a plan without errors cannot fail");
        found
    }
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "queries with streaming source {} must be started with write_stream()...start(); \
             to run the same transformation as a batch job, build the DataFrame from a batch read \
             (e.g. SessionContext::read_parquet) instead",
            self.source.description()
        )))
    }
}
