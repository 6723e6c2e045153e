//! Booting a query: what `DataStreamWriter::start` does once the query is
//! configured. In order: the plan is prepared ([`crate::plan::prepare`]),
//! the checkpoint opened (or recovered), the sources opened at their
//! committed offsets, the stateful operators' state opened at the next
//! batch, the sinks opened, and the trigger loop
//! ([`crate::micro_batch::Runner`]) spawned on a tokio task that turns a
//! panic into the query's error.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::physical_planner::ExtensionPlanner;
use datafusion::prelude::SessionContext;
use futures::FutureExt;

use crate::aggregate::{AggregateLayout, AggregateOperator};
use crate::batch_slot::{BatchSlot, SlotTable};
use crate::checkpoint::{Checkpoint, Metadata};
use crate::dedup::DedupOperator;
use crate::join::JoinOperator;
use crate::micro_batch::{Runner, RunningSource};
use crate::plan::{
    AggregatePlanner, BatchPlanner, DedupPlanner, JoinPlanner, ProcessorPlanner, StatefulNode,
    StreamingQueryPlanner, WatermarkPlanner, join_spec, prepare, replace_stateful, stateful_nodes,
};
use crate::processor::ProcessorOperator;
use crate::query::QueryShared;
use crate::stateful::{StatefulOperator, WatermarkRule};
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
    let nodes = stateful_nodes(
        &replace_stateful(optimized)
            .map_err(|e| TidemillError::datafusion("planning the stateful operators", e))?,
    );
    let descriptions: Vec<String> = nodes.iter().map(StatefulNode::describe).collect();

    let location = match &writer.checkpoint {
        Some(location) => location.clone(),
        None => format!(
            "memory:///tidemill/temporary-checkpoints/{}",
            uuid::Uuid::new_v4()
        ),
    };
    let location = Location::resolve(&location, &session.runtime_env())?
        .with_durability(writer.options.checkpoint_durability);
    let checkpoint = Checkpoint::open(location, writer.options.checkpoint_lease).await?;
    let metadata = checkpoint
        .load_or_init_metadata(Metadata {
            query_id: uuid::Uuid::new_v4().to_string(),
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: chrono::Utc::now().to_rfc3339(),
            sources: tables.iter().map(|t| t.source().description()).collect(),
            sink: sink.description(),
            operators: Some(descriptions.clone()),
        })
        .await?;

    // Each source's rows reach the plan through its slot, scanned in as
    // many partitions as the session runs.
    let partitions = state.config().target_partitions().max(1);
    let mut sources = Vec::with_capacity(tables.len());
    let mut slot_tables: HashMap<u64, Arc<dyn datafusion::catalog::TableProvider>> = HashMap::new();
    for (index, table) in tables.iter().enumerate() {
        let schema = datafusion::catalog::TableProvider::schema(table.as_ref());
        let ctx = SourceContext {
            session: session.clone(),
            schema: Arc::clone(&schema),
            checkpoint: checkpoint.source_dir(index),
        };
        let slot = BatchSlot::new(Arc::clone(&schema), partitions);
        slot_tables.insert(table.id(), Arc::new(SlotTable::new(Arc::clone(&slot))));
        sources.push(RunningSource {
            slot,
            description: table.source().description(),
            source: table.source().open(ctx).await?,
            committed: None,
        });
    }

    let recovery = checkpoint.recovery_point(sources.len()).await?;
    for (s, offset) in sources.iter_mut().zip(recovery.committed) {
        s.committed = offset;
    }
    let (next_batch_id, pending, watermark, last_watermark_ms) = (
        recovery.next_batch_id,
        recovery.pending,
        recovery.watermark_ms,
        recovery.last_watermark_ms,
    );

    // The query's stateful operators, operator n's state in `state/<n>`.
    let mut aggregates = Vec::new();
    let mut dedups = Vec::new();
    let mut joins = Vec::new();
    let mut processors = Vec::new();
    let mut operators: Vec<(Arc<dyn StatefulOperator>, WatermarkRule)> = Vec::new();
    for node in &nodes {
        let number = node.operator();
        let dir = checkpoint.dir.child("state").child(&number.to_string());
        let rule = node.watermark_rule(&plan);
        match node {
            StatefulNode::Aggregate(aggregate) => {
                let error = |e| TidemillError::datafusion("planning the streaming aggregation", e);
                // Over its real input: the event-time key is found by the
                // watermarks below it.
                let over_input = aggregate
                    .aggregate_over(aggregate.input.clone())
                    .map_err(error)?;
                let layout = AggregateLayout::plan(&over_input, &state)
                    .await
                    .map_err(error)?;
                let operator = Arc::new(
                    AggregateOperator::open(
                        Arc::new(layout),
                        writer.output_mode,
                        dir,
                        next_batch_id,
                    )
                    .await?,
                );
                aggregates.push((number, Arc::clone(&operator)));
                operators.push((operator, rule));
            }
            StatefulNode::Deduplicate(dedup) => {
                let keys = dedup.keys.iter().map(|k| k.name.clone()).collect();
                let operator = Arc::new(
                    DedupOperator::open(
                        dedup.input.schema().as_arrow(),
                        keys,
                        dedup.expiry(),
                        dir,
                        next_batch_id,
                    )
                    .await?,
                );
                dedups.push((number, Arc::clone(&operator)));
                operators.push((operator, rule));
            }
            StatefulNode::Join(join) => {
                let spec = join_spec(join, &state)
                    .map_err(|e| TidemillError::datafusion("planning the stream join", e))?;
                let operator = Arc::new(JoinOperator::open(spec, dir, next_batch_id).await?);
                joins.push((number, Arc::clone(&operator)));
                operators.push((operator, rule));
            }
            StatefulNode::Processor(node) => {
                let instances = state.config().target_partitions().max(1);
                let operator =
                    Arc::new(ProcessorOperator::open(node, dir, next_batch_id, instances).await?);
                processors.push((number, Arc::clone(&operator)));
                operators.push((operator, rule));
            }
        }
    }
    // Each operator's state refuses another layout, naming the fields;
    // what the layouts do not show (a window's size, a join's type) the
    // record of the operators does.
    checkpoint.check_operators(&metadata, &descriptions).await?;
    let mut stateful_planners: Vec<Arc<dyn ExtensionPlanner + Send + Sync>> = Vec::new();
    if !aggregates.is_empty() {
        stateful_planners.push(Arc::new(AggregatePlanner::new(aggregates.clone())));
    }
    if !dedups.is_empty() {
        stateful_planners.push(Arc::new(DedupPlanner::new(dedups)));
    }
    if !joins.is_empty() {
        stateful_planners.push(Arc::new(JoinPlanner::new(joins)));
    }
    if !processors.is_empty() {
        stateful_planners.push(Arc::new(ProcessorPlanner::new(processors)));
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
        query_id: metadata.query_id.clone(),
        schema: Arc::new(df_schema.as_arrow().clone()),
        output_mode: writer.output_mode,
        durability: writer.options.checkpoint_durability,
    })
    .await?;

    if let Some(late) = &writer.late_rows_sink {
        let Some((_, operator)) = aggregates.first() else {
            return Err(TidemillError::Config(
                "late_rows_sink: the query has no streaming aggregation, so no row is ever \
                     late; remove the late-rows sink"
                    .into(),
            ));
        };
        late.open(&SinkContext {
            session: session.clone(),
            query_name: writer.name.as_ref().map(|n| format!("{n}_late_rows")),
            query_id: format!("{}_late_rows", metadata.query_id),
            schema: operator.input_schema(),
            output_mode: OutputMode::Append,
            durability: writer.options.checkpoint_durability,
        })
        .await?;
    }

    let shared = Arc::new(QueryShared::new(
        metadata.query_id,
        writer.name,
        writer.options.progress_history,
        state
            .config()
            .get_extension::<crate::listener::ListenerBus>(),
    ));
    shared.started();
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
    let planner = BatchPlanner::new(planning_session.clone(), plan, slot_tables);
    let runner = Runner {
        session: planning_session,
        watermarks,
        watermark_planner,
        planner,
        sources,
        sink,
        late_rows_sink: writer.late_rows_sink,
        operators,
        last_watermark_ms,
        failed_attempts: 0,
        checkpoint,
        trigger: writer.trigger,
        output_mode: writer.output_mode,
        options: writer.options,
        shared: Arc::clone(&shared),
        next_batch_id,
        pending_is_recovery: pending.is_some(),
        pending,
        last_trigger_start: None,
        in_flight: None,
        logging: None,
        ahead: None,
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
