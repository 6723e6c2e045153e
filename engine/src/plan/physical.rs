//! From a query's logical plan to each batch's physical plan: DataFusion's
//! physical planner with Tidemill's streaming operators as extensions.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DFResult;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::prelude::SessionContext;

use super::operators::replace_stateful;
use super::substitute::substitute;
use super::watermark::WatermarkPlanner;
use crate::{Result, TidemillError};

/// The query planner of a streaming query's batches: DataFusion's, plus
/// Tidemill's streaming operators.
pub struct StreamingQueryPlanner {
    extensions: Vec<Arc<dyn ExtensionPlanner + Send + Sync>>,
}

impl fmt::Debug for StreamingQueryPlanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingQueryPlanner")
            .field("extensions", &self.extensions.len())
            .finish()
    }
}

impl StreamingQueryPlanner {
    /// A planner whose watermark operators report to `watermarks`, and
    /// which plans Tidemill's stateful operators with `stateful` (a planner
    /// per kind of operator).
    pub fn new(
        watermarks: Arc<WatermarkPlanner>,
        stateful: Vec<Arc<dyn ExtensionPlanner + Send + Sync>>,
    ) -> Self {
        let mut extensions: Vec<Arc<dyn ExtensionPlanner + Send + Sync>> = vec![watermarks];
        extensions.extend(stateful);
        Self { extensions }
    }
}

#[async_trait]
impl QueryPlanner for StreamingQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::with_extension_planners(self.extensions.clone());
        planner.create_physical_plan(logical_plan, session).await
    }
}

/// Plans each batch of one query: optimizes its logical plan (once, when
/// every batch would optimize it alike), replaces its stateful operators by
/// their nodes, substitutes the batch's rows for the
/// streaming scans, and plans the result physically.
pub(crate) struct BatchPlanner {
    /// The session batches are planned in (with the streaming planner).
    session: SessionContext,
    /// The DataFrame's plan, with streaming scans to substitute per batch.
    plan: LogicalPlan,
    /// `plan` optimized and with its stateful operators replaced, kept
    /// from the first batch when every batch would plan it alike (see
    /// [`plans_alike_every_batch`]).
    optimized: Option<LogicalPlan>,
}

impl BatchPlanner {
    /// A planner of `plan`'s batches in `session`.
    pub fn new(session: SessionContext, plan: LogicalPlan) -> Self {
        Self {
            session,
            plan,
            optimized: None,
        }
    }

    /// The batch's physical plan: the query's plan optimized for this
    /// batch, its stateful operators replaced by their nodes,
    /// its streaming scans by the batch's rows.
    pub async fn plan_batch(
        &mut self,
        batch_id: u64,
        data: &HashMap<u64, Arc<dyn TableProvider>>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let state = self.session.state();
        let error = |e| TidemillError::datafusion(format!("planning batch {batch_id}"), e);
        let optimized = match &self.optimized {
            Some(plan) => plan.clone(),
            None => {
                let plan = state.optimize(&self.plan).map_err(error)?;
                let plan = replace_stateful(plan).map_err(error)?;
                if plans_alike_every_batch(&self.plan) {
                    self.optimized = Some(plan.clone());
                }
                plan
            }
        };
        let plan = substitute(&optimized, data)?;
        state
            .query_planner()
            .create_physical_plan(&plan, &state)
            .await
            .map_err(error)
    }
}

/// Whether optimizing `plan` gives the same plan in every batch: no
/// function in it depends on when it is planned. DataFusion's optimizer
/// folds functions such as `now()` into constants of the time it runs, so
/// a plan calling one is optimized again for each batch (as Spark's
/// `current_timestamp()` takes each batch's time).
fn plans_alike_every_batch(plan: &LogicalPlan) -> bool {
    let mut alike = true;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let timely = match e {
                    Expr::ScalarFunction(f) => {
                        f.func.signature().volatility != Volatility::Immutable
                    }
                    Expr::ScalarVariable(..) | Expr::Placeholder(_) => true,
                    _ => false,
                };
                alike &= !timely;
                Ok(if timely {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            })
        })
    })
    .expect("visiting a plan without errors cannot fail");
    alike
}
