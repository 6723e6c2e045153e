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
use datafusion::physical_plan::execution_plan::reset_plan_states;
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

/// Plans each batch of one query: optimizes its logical plan, replaces its
/// stateful operators by their nodes and its streaming scans by scans of
/// the sources' [slots](crate::batch_slot::BatchSlot), and plans the result
/// physically. When every batch would plan alike, this happens once: later
/// batches run the same physical plan, its state reset, over the rows the
/// batch put in the slots.
pub(crate) struct BatchPlanner {
    /// The session batches are planned in (with the streaming planner).
    session: SessionContext,
    /// The DataFrame's plan, with streaming scans.
    plan: LogicalPlan,
    /// The table standing for each streaming source, by
    /// [`crate::SourceTable::id`].
    slots: HashMap<u64, Arc<dyn TableProvider>>,
    /// The physical plan every batch runs, once planned, when every batch
    /// would plan it alike (see [`plans_alike_every_batch`] and
    /// [`runs_again`]). Never executed itself: each batch runs a copy with
    /// its state reset.
    kept: Option<Arc<dyn ExecutionPlan>>,
}

impl BatchPlanner {
    /// A planner of `plan`'s batches in `session`, its streaming scans
    /// reading `slots` (by [`crate::SourceTable::id`]).
    pub fn new(
        session: SessionContext,
        plan: LogicalPlan,
        slots: HashMap<u64, Arc<dyn TableProvider>>,
    ) -> Self {
        Self {
            session,
            plan,
            slots,
            kept: None,
        }
    }

    /// The batch's physical plan, reading the batch's rows from the
    /// sources' slots.
    pub async fn plan_batch(&mut self, batch_id: u64) -> Result<Arc<dyn ExecutionPlan>> {
        let error = |e| TidemillError::datafusion(format!("planning batch {batch_id}"), e);
        if let Some(kept) = &self.kept {
            return copy_of_kept(Arc::clone(kept), batch_id);
        }
        let state = self.session.state();
        let plan = state.optimize(&self.plan).map_err(error)?;
        let plan = replace_stateful(plan).map_err(error)?;
        let plan = substitute(&plan, &self.slots)?;
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, &state)
            .await
            .map_err(error)?;
        if plans_alike_every_batch(&self.plan) && runs_again(&physical) {
            self.kept = Some(Arc::clone(&physical));
            return copy_of_kept(physical, batch_id);
        }
        Ok(physical)
    }

    /// The physical plan every batch runs, once planned, if it is kept
    /// (see [`Self::plan_batch`]): [`copy_of_kept`] makes a batch's copy.
    pub fn kept(&self) -> Option<Arc<dyn ExecutionPlan>> {
        self.kept.clone()
    }
}

/// Batch `batch_id`'s copy of the kept physical plan `kept`: the same plan
/// with its nodes' state reset.
pub(crate) fn copy_of_kept(
    kept: Arc<dyn ExecutionPlan>,
    batch_id: u64,
) -> Result<Arc<dyn ExecutionPlan>> {
    reset_plan_states(kept)
        .map_err(|e| TidemillError::datafusion(format!("planning batch {batch_id}"), e))
}

/// Whether `plan` can run again once its nodes' state is reset
/// ([`reset_plan_states`]). Not when a node produces a dynamic filter (a
/// hash join's or a top-k sort's): the filter it pushed into another node
/// would keep the values of the batch before. Nor a recursive query.
fn runs_again(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut again = true;
    plan.apply(|node| {
        if !node.dynamic_expressions_produced().is_empty() || node.name() == "RecursiveQueryExec" {
            again = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan without errors cannot fail");
    again
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
