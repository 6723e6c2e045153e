//! One `transform_with_state` of a running query: its processor, its
//! stores, and what it does in a batch.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result as DFResult};
use tidemill_state::CheckpointDir;
use tokio::sync::Mutex;

use super::context::{Local, Stores, key_fields, owned, read};
use super::input::BatchInput;
use super::node::ProcessorHandle;
use super::stores::{TimerStore, VariableStore};
use super::{
    ExpiredTimer, GroupKey, ProcessorContext, StateDeclarations, StatefulProcessor, TimeMode,
    TransformWithStateNode, check_output,
};
use crate::aggregate::event_time::watermark_in_unit;
use crate::progress::StateOperatorProgress;
use crate::stateful::{BatchWatermarks, StatefulOperator};
use crate::{Result, TidemillError};

/// A processor applied to a query's stream.
#[derive(Debug)]
pub(crate) struct ProcessorOperator {
    handle: ProcessorHandle,
    keys: Vec<String>,
    key_schema: SchemaRef,
    group: Arc<RowConverter>,
    time_mode: TimeMode,
    /// The input's watermarked column and its unit, in event-time mode.
    event_time: Option<(String, TimeUnit)>,
    input_schema: SchemaRef,
    /// The initial state's rows, applied in the first batch.
    initial: Option<Vec<RecordBatch>>,
    /// The output column carrying event time on, and its unit.
    event_time_output: Option<(String, TimeUnit)>,
    inner: Mutex<Inner>,
}

/// Batches with at least this many keys are shared among the processor's
/// instances, one per core; smaller ones run on the first instance (a
/// thread costs more than a few hundred keys' callbacks).
const KEYS_PER_PARALLEL_BATCH: usize = 1024;

struct Inner {
    stores: Stores,
    /// The processor's other instances (the first is the handle's), each
    /// `init`ed; the input keys of a large batch are shared among all.
    forks: Vec<Box<dyn StatefulProcessor>>,
    /// What each instance gathers in a batch (the first's also serves the
    /// timers and the initial state).
    locals: Vec<Local>,
    timers_registered: u64,
    timers_deleted: u64,
    timers_fired: u64,
    /// Rows at or below it are late.
    late_ms: Option<i64>,
    /// The previous batch's watermark: the operators after the processor
    /// drop rows at or below it.
    previous_ms: Option<i64>,
    dropped_by_watermark: u64,
    /// Values, elements and entries the batch removed by their time to live.
    removed_by_ttl: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("stores", &self.stores)
            .field("instances", &(1 + self.forks.len()))
            .finish_non_exhaustive()
    }
}

/// The names and kinds of what `declarations` declares, to compare one
/// instance's with another's.
fn declared(declarations: &StateDeclarations) -> Vec<String> {
    declarations
        .specs
        .iter()
        .map(|s| format!("{} {}", s.name, s.type_names))
        .collect()
}

/// The error of a callback, or of rows it returned.
fn callback_error(callback: &str, key: &GroupKey, message: impl ToString) -> DataFusionError {
    DataFusionError::External(Box::new(TidemillError::Processor {
        callback: callback.into(),
        key: key.to_string(),
        message: message.to_string(),
    }))
}

impl ProcessorOperator {
    /// Opens `node`'s processor with its state in `dir` as of `version`:
    /// makes `instances` instances of it (clones of the one given; a
    /// large batch's keys are shared among them, one thread each), calls
    /// their `init`, opens a store per declared variable and one for its
    /// timers, and reads its initial state if the query has not run a
    /// batch yet.
    pub async fn open(
        node: &TransformWithStateNode,
        dir: CheckpointDir,
        version: u64,
        instances: usize,
    ) -> Result<Self> {
        let input_schema: SchemaRef = Arc::new(node.input.schema().as_arrow().clone());
        let keys = node.key_names();
        let fields = key_fields(&input_schema, &keys)
            .map_err(|e| TidemillError::Config(format!("transform_with_state: {e}")))?;
        let key_schema = Arc::new(Schema::new(fields.clone()));
        let group = Arc::new(
            RowConverter::new(
                fields
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )
            .map_err(|e| TidemillError::Unsupported {
                operator: "TransformWithState".into(),
                reason: format!("keys by a column of a type the state store cannot encode: {e}"),
                fix: "Key by columns of plain types (numbers, strings, timestamps)".into(),
            })?,
        );
        let mut declarations = StateDeclarations::default();
        {
            let mut processor = node
                .processor
                .processor
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            processor
                .init(&mut declarations)
                .map_err(|e| TidemillError::Processor {
                    callback: "init".into(),
                    key: String::new(),
                    message: e.to_string(),
                })?;
        }
        let instances = instances.max(1);
        let mut forks = Vec::with_capacity(instances - 1);
        for _ in 1..instances {
            let mut fork = (node.processor.fork)();
            let mut other = StateDeclarations::default();
            fork.init(&mut other)
                .map_err(|e| TidemillError::Processor {
                    callback: "init".into(),
                    key: String::new(),
                    message: e.to_string(),
                })?;
            if declared(&other) != declared(&declarations) {
                return Err(TidemillError::Processor {
                    callback: "init".into(),
                    key: String::new(),
                    message: format!(
                        "a clone of the processor declared other state variables ({}) than the \
                         processor ({}): init must declare the same variables on every clone",
                        declared(&other).join(", "),
                        declared(&declarations).join(", ")
                    ),
                });
            }
            forks.push(fork);
        }
        let mut locals = Vec::with_capacity(instances);
        for _ in 0..instances {
            locals.push(
                Local::new(node.processor.output_schema.fields()).map_err(|e| {
                    TidemillError::Unsupported {
                        operator: "TransformWithState".into(),
                        reason: format!(
                            "declares an output schema whose rows cannot be emitted: {e}"
                        ),
                        fix: "Declare columns of plain Arrow types".into(),
                    }
                })?,
            );
        }
        let mut variables = Vec::with_capacity(declarations.specs.len());
        let mut by_name = HashMap::with_hasher(foldhash::fast::RandomState::default());
        for spec in declarations.specs {
            by_name.insert(spec.name.clone(), variables.len());
            let child = dir.child(&spec.name);
            variables.push(RwLock::new(
                VariableStore::open(spec, &fields, Arc::clone(&group), child, version).await?,
            ));
        }
        let timers = TimerStore::open(&fields, dir.child("_timers"), version).await?;
        let event_time = match node.time_mode {
            TimeMode::EventTime => {
                let watermark = crate::watermark::WatermarkNode::all_in(&node.input)
                    .into_iter()
                    .next();
                match watermark.and_then(|w| {
                    input_schema
                        .field_with_name(&w.column.name)
                        .ok()
                        .map(|f| (w.column.name.clone(), f.data_type().clone()))
                }) {
                    Some((name, DataType::Timestamp(unit, _))) => Some((name, unit)),
                    _ => None,
                }
            }
            _ => None,
        };
        let initial = match (&node.initial_state, version) {
            (Some(initial), 0) => {
                let df = initial.0.as_ref().clone();
                let rows = df.collect().await.map_err(|e| {
                    TidemillError::datafusion("transform_with_state: reading the initial state", e)
                })?;
                for batch in &rows {
                    for key in &keys {
                        if batch.column_by_name(key).is_none() {
                            return Err(TidemillError::Config(format!(
                                "transform_with_state: the initial state has no key column '{key}'"
                            )));
                        }
                    }
                }
                Some(rows)
            }
            _ => None,
        };
        let event_time_output = node.event_time_column.as_ref().and_then(|name| {
            match node.processor.output_schema.field_with_name(name) {
                Ok(f) => match f.data_type() {
                    DataType::Timestamp(unit, _) => Some((name.clone(), *unit)),
                    _ => None,
                },
                Err(_) => None,
            }
        });
        Ok(Self {
            event_time_output,
            handle: node.processor.clone(),
            keys,
            key_schema,
            group,
            time_mode: node.time_mode,
            event_time,
            input_schema,
            initial,
            inner: Mutex::new(Inner {
                stores: Stores {
                    variables,
                    by_name,
                    timers: RwLock::new(timers),
                    time_mode: node.time_mode,
                    processing_time_ms: 0,
                    watermark_ms: None,
                },
                forks,
                locals,
                timers_registered: 0,
                timers_deleted: 0,
                timers_fired: 0,
                late_ms: None,
                previous_ms: None,
                dropped_by_watermark: 0,
                removed_by_ttl: 0,
            }),
        })
    }

    /// The processor's declared output schema.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.handle.output_schema)
    }

    /// Runs the batch's rows through the processor, key by key (in key
    /// order), then its timers that are due; returns the rows it emitted.
    pub async fn process(&self, input: Vec<RecordBatch>) -> DFResult<Vec<RecordBatch>> {
        let batch = concat_batches(&self.input_schema, &input)?;
        let mut inner = self.inner.lock().await;
        self.process_sync(&mut inner, batch)
    }

    fn process_sync(&self, inner: &mut Inner, batch: RecordBatch) -> DFResult<Vec<RecordBatch>> {
        let mut processor = self
            .handle
            .processor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let batch = self.drop_late(inner, batch)?;
        let input = self.group(&batch)?;
        // Each instance is called for a run of the keys, in key order, so
        // that the output comes in the same order however many there are.
        let keys = input.len();
        let instances = if keys >= KEYS_PER_PARALLEL_BATCH {
            1 + inner.forks.len()
        } else {
            1
        };
        let share = keys.div_ceil(instances);
        let variables = inner.stores.variables.len();
        for (i, local) in inner.locals.iter_mut().enumerate() {
            let first = (i * share).min(keys);
            let end = if i < instances {
                (first + share).min(keys)
            } else {
                first
            };
            local.begin(first, end - first, variables);
        }
        let processors = std::iter::once(&mut **processor)
            .chain(inner.forks.iter_mut().map(|p| &mut **p))
            .take(instances);
        let work: Vec<_> = processors.zip(inner.locals.iter_mut()).collect();
        let stores = &inner.stores;
        let shares = tidemill_state::map_parallel(work, instances > 1, |(processor, local)| {
            let mut output = Vec::new();
            let keys = Arc::new(input.keys.as_ref().clone());
            let schema = Arc::new(self.handle.output_schema.as_ref().clone());
            for ordinal in local.first..local.first + local.keys {
                let key = input.key(&keys, ordinal);
                let rows = input.rows(ordinal);
                let mut ctx = ProcessorContext::for_input(&input, ordinal, &key, stores, local);
                let emitted = processor
                    .handle_input_rows(&key, &rows, &mut ctx)
                    .map_err(|e| callback_error("handle_input_rows", &key, e))?;
                Self::collect_output(&schema, "handle_input_rows", &key, emitted, &mut output)?;
            }
            // The share's returned batches as one, on its own thread.
            if output.len() > 1 {
                output = vec![concat_batches(&schema, &output)?];
            }
            Ok::<_, DataFusionError>(output)
        });
        let mut output = Vec::new();
        for share in shares {
            output.extend(share?);
        }
        let mut emitted = Vec::new();
        for local in &mut inner.locals[..instances] {
            local.flush_slots(&mut inner.stores, &input).map_err(|e| {
                DataFusionError::External(Box::new(TidemillError::Processor {
                    callback: "handle_input_rows".into(),
                    key: String::new(),
                    message: format!("writing the batch's values back: {e}"),
                }))
            })?;
            emitted.extend(self.take_emitted(local)?);
        }
        let due_at = match self.time_mode {
            TimeMode::None => None,
            TimeMode::ProcessingTime => Some(inner.stores.processing_time_ms),
            TimeMode::EventTime => inner.stores.watermark_ms,
        };
        if let Some(at) = due_at {
            let due = owned(&mut inner.stores.timers).due(at);
            for (time, group) in due {
                // A handler called before may have deleted it.
                if !owned(&mut inner.stores.timers).delete(&group, time) {
                    continue;
                }
                inner.timers_fired += 1;
                let key = self.key_of(&group)?;
                let timer = ExpiredTimer {
                    time_ms: time,
                    watermark_ms: inner.stores.watermark_ms,
                    processing_time_ms: inner.stores.processing_time_ms,
                };
                let local = &mut inner.locals[0];
                let mut ctx = ProcessorContext::new(&group, &key, &inner.stores, local);
                let rows = processor
                    .handle_expired_timer(&key, timer, &mut ctx)
                    .map_err(|e| callback_error("handle_expired_timer", &key, e))?;
                Self::collect_output(
                    &self.handle.output_schema,
                    "handle_expired_timer",
                    &key,
                    rows,
                    &mut output,
                )?;
            }
            emitted.extend(self.take_emitted(&mut inner.locals[0])?);
        }
        for local in &inner.locals {
            inner.timers_registered += local.timers_registered;
            inner.timers_deleted += local.timers_deleted;
        }
        output.extend(emitted);
        self.check_event_times(inner.previous_ms, &output)?;
        // The callbacks' small batches as one (a sink pays per batch).
        if output.len() > 1 {
            output = vec![concat_batches(&self.handle.output_schema, &output)?];
        }
        Ok(output)
    }

    /// Refuses output rows whose event time the operators after the
    /// processor would drop as late (at or below the previous batch's
    /// watermark), as Spark refuses them.
    fn check_event_times(&self, previous_ms: Option<i64>, output: &[RecordBatch]) -> DFResult<()> {
        let (Some((column, unit)), Some(watermark)) = (&self.event_time_output, previous_ms) else {
            return Ok(());
        };
        let limit = watermark_in_unit(watermark, *unit);
        for batch in output {
            let Some(times) = batch.column_by_name(column) else {
                continue;
            };
            let times = cast(times, &DataType::Int64)?;
            let times = times.as_primitive::<Int64Type>();
            let Some(row) =
                (0..times.len()).find(|&i| times.is_valid(i) && times.value(i) <= limit)
            else {
                continue;
            };
            let options = arrow::util::display::FormatOptions::default().with_null("null");
            let values: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| {
                    let value = arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options)
                        .map(|fmt| fmt.value(row).to_string())
                        .unwrap_or_else(|_| "?".into());
                    format!("{}={value}", f.name())
                })
                .collect();
            return Err(DataFusionError::External(Box::new(
                TidemillError::Processor {
                    callback: "an output row".into(),
                    key: String::new(),
                    message: format!(
                        "the row ({}) has event time {column} at or below the previous batch's \
                     watermark ({watermark} ms): the operators after the processor would drop \
                     it as late. Emit rows no older than the watermark (e.g. the latest input \
                     event time of the key, or a timer's time)",
                        values.join(", ")
                    ),
                },
            )));
        }
        Ok(())
    }

    /// The rows `local`'s callbacks emitted since the last call, as a batch.
    fn take_emitted(&self, local: &mut Local) -> DFResult<Option<RecordBatch>> {
        if local.emitted == 0 {
            return Ok(None);
        }
        local.emitted = 0;
        let columns = local.output.to_arrow().map_err(|e| {
            DataFusionError::External(Box::new(TidemillError::Processor {
                callback: "emit".into(),
                key: String::new(),
                message: e.to_string(),
            }))
        })?;
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.handle.output_schema),
            columns,
        )?))
    }

    /// Checks `emitted` against the declared schema and adds it to `output`.
    /// `schema` is the declared one, or a copy of it: a thread that collects
    /// many batches counts references to a copy of its own.
    fn collect_output(
        schema: &SchemaRef,
        callback: &str,
        key: &GroupKey,
        emitted: Vec<RecordBatch>,
        output: &mut Vec<RecordBatch>,
    ) -> DFResult<()> {
        for batch in emitted {
            if batch.num_rows() == 0 {
                continue;
            }
            check_output(schema, &batch).map_err(|e| {
                callback_error(
                    callback,
                    key,
                    format!("returned rows that do not fit the declared output schema: {e}"),
                )
            })?;
            output.push(RecordBatch::try_new(
                Arc::clone(schema),
                batch.columns().to_vec(),
            )?);
        }
        Ok(())
    }

    /// `batch` without its rows at or below the watermark (counted); rows
    /// without an event time are kept.
    fn drop_late(&self, inner: &mut Inner, batch: RecordBatch) -> DFResult<RecordBatch> {
        let (Some((column, unit)), Some(watermark)) = (&self.event_time, inner.late_ms) else {
            return Ok(batch);
        };
        let Some(times) = batch.column_by_name(column) else {
            return Ok(batch);
        };
        let times = cast(times, &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let limit = watermark_in_unit(watermark, *unit);
        let keep: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_none_or(|t| t > limit)))
            .collect();
        let dropped = keep.false_count() as u64;
        if dropped == 0 {
            return Ok(batch);
        }
        inner.dropped_by_watermark += dropped;
        Ok(filter_record_batch(&batch, &keep)?)
    }

    /// `batch`'s rows grouped by key.
    fn group(&self, batch: &RecordBatch) -> DFResult<BatchInput> {
        BatchInput::new(batch, &self.keys, &self.key_schema, &self.group)
    }

    /// The grouping key of row bytes `group`.
    fn key_of(&self, group: &[u8]) -> DFResult<GroupKey> {
        let parser = self.group.parser();
        let columns = self.group.convert_rows([parser.parse(group)])?;
        Ok(GroupKey::new(RecordBatch::try_new(
            Arc::clone(&self.key_schema),
            columns,
        )?))
    }

    /// Gives the initial state's rows to the processor, key by key.
    fn apply_initial_state(&self, inner: &mut Inner, rows: &[RecordBatch]) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let batch = concat_batches(&first.schema(), rows).map_err(|e| {
            TidemillError::Config(format!("transform_with_state: initial state: {e}"))
        })?;
        let mut processor = self
            .handle
            .processor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let input = self
            .group(&batch)
            .map_err(|e| TidemillError::datafusion("transform_with_state: initial state", e))?;
        let local = &mut inner.locals[0];
        local.begin(0, 0, inner.stores.variables.len());
        for i in 0..input.len() {
            let (key, rows) = (input.key(&input.keys, i), input.rows(i));
            let mut ctx = ProcessorContext::new(input.group(i), &key, &inner.stores, local);
            processor
                .handle_initial_state(&key, &rows, &mut ctx)
                .map_err(|e| TidemillError::Processor {
                    callback: "handle_initial_state".into(),
                    key: key.to_string(),
                    message: e.to_string(),
                })?;
        }
        inner.timers_registered += local.timers_registered;
        inner.timers_deleted += local.timers_deleted;
        Ok(())
    }
}

#[async_trait]
impl StatefulOperator for ProcessorOperator {
    async fn begin_batch(&self, version: u64, watermarks: BatchWatermarks) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        for variable in &mut inner.stores.variables {
            owned(variable).begin_batch(version).await?;
        }
        let timers = owned(&mut inner.stores.timers);
        if timers.state.begin_batch(version).await? {
            timers.rebuild_index();
        }
        let now = watermarks.processing_time_ms;
        inner.stores.processing_time_ms = now;
        inner.stores.watermark_ms = match self.time_mode {
            TimeMode::EventTime => watermarks.evict,
            _ => None,
        };
        inner.late_ms = watermarks.late;
        inner.previous_ms = watermarks.previous;
        inner.dropped_by_watermark = 0;
        inner.timers_registered = 0;
        inner.timers_deleted = 0;
        inner.timers_fired = 0;
        // Values whose time to live ended are gone before the batch reads
        // them.
        inner.removed_by_ttl = 0;
        for variable in &mut inner.stores.variables {
            inner.removed_by_ttl += owned(variable).remove_expired(now)? as u64;
        }
        if version == 0
            && let Some(rows) = &self.initial
        {
            self.apply_initial_state(inner, rows)?;
        }
        Ok(())
    }

    async fn commit(&self) -> Result<StateOperatorProgress> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let dropped = inner.dropped_by_watermark;
        let stores = &mut inner.stores;
        let mut total = owned(&mut stores.timers)
            .state
            .commit("transformWithState", 0, 0)
            .await?;
        for variable in &mut stores.variables {
            let p = owned(variable)
                .state
                .commit("transformWithState", 0, 0)
                .await?;
            total.num_rows_total += p.num_rows_total;
            total.num_rows_updated += p.num_rows_updated;
            total.num_rows_removed += p.num_rows_removed;
            total.memory_used_bytes += p.memory_used_bytes;
            total.commit_time_ms += p.commit_time_ms;
        }
        total.num_rows_dropped_by_watermark = dropped;
        // Spark's transformWithState metrics, by our names.
        let mut metrics = std::collections::BTreeMap::new();
        metrics.insert(
            "timers_total".into(),
            owned(&mut stores.timers).len() as u64,
        );
        metrics.insert("timers_registered".into(), inner.timers_registered);
        metrics.insert("timers_deleted".into(), inner.timers_deleted);
        metrics.insert("timers_fired".into(), inner.timers_fired);
        metrics.insert("values_removed_by_ttl".into(), inner.removed_by_ttl);
        for variable in &mut stores.variables {
            let variable = owned(variable);
            metrics.insert(
                format!("rows.{}", variable.spec.name),
                variable.len() as u64,
            );
        }
        total.custom_metrics = metrics;
        Ok(total)
    }

    async fn purge(&self, keep_from_version: u64) -> Result<()> {
        let mut inner = self.inner.lock().await;
        for variable in &mut inner.stores.variables {
            owned(variable).state.store.purge(keep_from_version).await?;
        }
        owned(&mut inner.stores.timers)
            .state
            .store
            .purge(keep_from_version)
            .await?;
        Ok(())
    }

    /// A timer that is due makes a batch without data worth running.
    async fn has_closable_state(&self, watermark_ms: Option<i64>, now_ms: i64) -> bool {
        let inner = self.inner.lock().await;
        let Some(next) = read(&inner.stores.timers).next() else {
            return false;
        };
        match self.time_mode {
            TimeMode::None => false,
            TimeMode::ProcessingTime => next <= now_ms,
            TimeMode::EventTime => watermark_ms.is_some_and(|w| next <= w),
        }
    }

    async fn close(&self) {
        let mut inner = self.inner.lock().await;
        let mut processor = self
            .handle
            .processor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let instances =
            std::iter::once(&mut **processor).chain(inner.forks.iter_mut().map(|p| &mut **p));
        for instance in instances {
            if let Err(e) = instance.close() {
                tracing::warn!("stateful processor: close failed: {e}");
            }
        }
    }
}
