//! Booting a query: what `DataStreamWriter::start` does once the query is
//! configured. In order: the plan is prepared ([`crate::plan::prepare`]),
//! the checkpoint opened (or recovered), the sources opened at their
//! committed offsets, the stateful operators' state opened at the next
//! batch, the sinks opened, and the trigger loop
//! ([`crate::micro_batch::Runner`]) spawned on a tokio task that turns a
//! panic into the query's error.

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::physical_planner::ExtensionPlanner;
use datafusion::prelude::SessionContext;
use futures::FutureExt;

use crate::aggregate::{AggregateLayout, AggregateOperator};
use crate::checkpoint::{Checkpoint, Metadata};
use crate::dedup::{DedupOperator, DeduplicateNode};
use crate::micro_batch::{Runner, RunningSource};
use crate::plan::{
    AggregatePlanner, BatchPlanner, DedupPlanner, StreamingQueryPlanner, WatermarkPlanner,
    find_aggregation, prepare,
};
use crate::query::QueryShared;
use crate::stateful::StatefulOperator;
use crate::watermark::{WatermarkNode, WatermarkTracker};
use crate::{
    DataStreamWriter, Location, OutputMode, Result, Sink, SinkContext, SourceContext, SourceTable,
    StreamingQuery, TidemillError,
};

/// Starts the query `writer` configures, writing to `sink`.
pub(crate) async fn start(writer: DataStreamWriter, sink: Arc<dyn Sink>) -> Result<StreamingQuery> {
    let (state, plan, optimized) = prepare(writer.df, writer.output_mode)?;
    let session = SessionContext::new_with_state(state.clone());
    let tables = SourceTable::all_in(&plan);
    let layout = match find_aggregation(&optimized) {
        Some(found) => Some(Arc::new(
            AggregateLayout::plan(&found, &state)
                .await
                .map_err(|e| TidemillError::datafusion("planning the streaming aggregation", e))?,
        )),
        None => None,
    };

    let location = match &writer.checkpoint {
        Some(location) => location.clone(),
        None => format!(
            "memory:///tidemill/temporary-checkpoints/{}",
            uuid::Uuid::new_v4()
        ),
    };
    let location = Location::resolve(&location, &session.runtime_env())?;
    let checkpoint = Checkpoint::open(location)?;
    let metadata = checkpoint
        .load_or_init_metadata(Metadata {
            query_id: uuid::Uuid::new_v4().to_string(),
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: chrono::Utc::now().to_rfc3339(),
            sources: tables.iter().map(|t| t.source().description()).collect(),
            sink: sink.description(),
        })
        .await?;

    let mut sources = Vec::with_capacity(tables.len());
    for (index, table) in tables.iter().enumerate() {
        let schema = datafusion::catalog::TableProvider::schema(table.as_ref());
        let ctx = SourceContext {
            session: session.clone(),
            schema: Arc::clone(&schema),
            checkpoint: checkpoint.source_dir(index),
        };
        sources.push(RunningSource {
            table_id: table.id(),
            schema,
            description: table.source().description(),
            source: table.source().open(ctx).await?,
            committed: None,
        });
    }

    let recovery = checkpoint.recovery_point(sources.len()).await?;
    for (s, offset) in sources.iter_mut().zip(recovery.committed) {
        s.committed = offset;
    }
    let (next_batch_id, pending, watermark) = (
        recovery.next_batch_id,
        recovery.pending,
        recovery.watermark_ms,
    );

    // The query's stateful operator (validation allows one), its state in
    // `state/0`.
    let state_dir = checkpoint.dir.child("state").child("0");
    let mut aggregates = Vec::new();
    let mut stateful_planners: Vec<Arc<dyn ExtensionPlanner + Send + Sync>> = Vec::new();
    let mut operators: Vec<Arc<dyn StatefulOperator>> = Vec::new();
    if let Some(layout) = layout {
        let operator = Arc::new(
            AggregateOperator::open(layout, writer.output_mode, state_dir.clone(), next_batch_id)
                .await?,
        );
        aggregates.push(Arc::clone(&operator));
        operators.push(operator);
        stateful_planners.push(Arc::new(AggregatePlanner::new(aggregates.clone())));
    }
    if let Some(dedup) = DeduplicateNode::first_in(&optimized) {
        let keys = dedup.keys.iter().map(|k| k.name.clone()).collect();
        let operator = Arc::new(
            DedupOperator::open(
                dedup.input.schema().as_arrow(),
                keys,
                dedup.expiry(),
                state_dir,
                next_batch_id,
            )
            .await?,
        );
        operators.push(Arc::clone(&operator) as Arc<dyn StatefulOperator>);
        stateful_planners.push(Arc::new(DedupPlanner::new(operator)));
    }
    // Batches are planned with Tidemill's streaming operators added to
    // DataFusion's planner.
    let watermark_planner = Arc::new(WatermarkPlanner::default());
    let planning_session = SessionContext::new_with_state(
        SessionStateBuilder::new_from_existing(state.clone())
            .with_query_planner(Arc::new(StreamingQueryPlanner::new(
                Arc::clone(&watermark_planner),
                stateful_planners,
            )))
            .build(),
    );

    let df_schema = plan.schema();
    sink.open(&SinkContext {
        session: session.clone(),
        query_name: writer.name.clone(),
        schema: Arc::new(df_schema.as_arrow().clone()),
        output_mode: writer.output_mode,
    })
    .await?;

    if let Some(late) = &writer.late_rows_sink {
        let Some(operator) = aggregates.first() else {
            return Err(TidemillError::Config(
                "late_rows_sink: the query has no streaming aggregation, so no row is ever \
                     late; remove the late-rows sink"
                    .into(),
            ));
        };
        late.open(&SinkContext {
            session: session.clone(),
            query_name: writer.name.as_ref().map(|n| format!("{n}_late_rows")),
            schema: operator.input_schema(),
            output_mode: OutputMode::Append,
        })
        .await?;
    }

    let shared = Arc::new(QueryShared::new(
        metadata.query_id,
        writer.name,
        writer.options.progress_history,
    ));
    tracing::info!(
        "starting query {} at batch {next_batch_id} with checkpoint {}",
        shared.display_name(),
        checkpoint.location
    );
    let watermarks = WatermarkTracker::new(
        &WatermarkNode::all_in(&plan),
        writer.options.multiple_watermark_policy,
        watermark,
    );
    let planner = BatchPlanner::new(planning_session.clone(), plan, !aggregates.is_empty());
    let runner = Runner {
        session: planning_session,
        watermarks,
        watermark_planner,
        planner,
        sources,
        sink,
        late_rows_sink: writer.late_rows_sink,
        operators,
        checkpoint,
        trigger: writer.trigger,
        output_mode: writer.output_mode,
        options: writer.options,
        shared: Arc::clone(&shared),
        next_batch_id,
        pending_is_recovery: pending.is_some(),
        pending,
        last_trigger_start: None,
    };
    let task_shared = Arc::clone(&shared);
    let task = tokio::spawn(async move {
        let outcome = std::panic::AssertUnwindSafe(runner.run())
            .catch_unwind()
            .await;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(TidemillError::Internal(crate::error::panic_message(
                &*panic,
            ))),
        };
        task_shared.terminate(error);
    });
    Ok(StreamingQuery::new(shared, task))
}
