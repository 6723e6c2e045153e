//! The state of one streaming aggregation and what it did in a batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result as DFResult};
use tidemill_state::{CheckpointDir, StateError, StateSchema, StateStore, StateStoreConfig};
use tokio::sync::Mutex;

use std::collections::{HashMap, HashSet};

use super::event_time::{ceil_millis, closing_time};
use super::late_rows::LateRowRule;
use super::session::{Member, SessionIndex, Span, plan_merge, session_column, spans};
use super::{AggregateLayout, EventTimeKind};
use crate::progress::StateOperatorProgress;
use crate::stateful::{BatchWatermarks, OperatorStore, StatefulOperator};
use crate::{OutputMode, Result, TidemillError};

/// One streaming aggregation of a running query: its state store, the
/// watermark of the batch being run, and the batch's figures.
#[derive(Debug)]
pub(crate) struct AggregateOperator {
    /// The output mode the query runs in.
    pub mode: OutputMode,
    /// The layout the state was opened with.
    pub layout: Arc<AggregateLayout>,
    keys: RowConverter,
    values: RowConverter,
    /// For session windows: the other group keys (the session's owner),
    /// `None` if the session is the only key.
    owners: Option<RowConverter>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: OperatorStore,
    /// The watermark of the running batch, in milliseconds.
    watermark_ms: Option<i64>,
    /// The watermark rows at or below which are late (see
    /// [`crate::stateful::WatermarkRule`]).
    late_watermark_ms: Option<i64>,
    dropped_by_watermark: u64,
    /// Rows left out for a null event time (in no window).
    without_event_time: u64,
    /// The rows for the late-rows side output: late ones, and those
    /// without an event time.
    late_rows: Vec<RecordBatch>,
    /// For session windows: the stored sessions by owner.
    sessions: SessionIndex,
}

impl AggregateOperator {
    /// Opens the state in `dir` as of `version` (the batch about to run)
    /// for an aggregation laid out as `layout`.
    ///
    /// Refuses a checkpoint whose state was written by an aggregation with
    /// other keys or other aggregate states, saying what changed.
    pub async fn open(
        layout: Arc<AggregateLayout>,
        mode: OutputMode,
        dir: CheckpointDir,
        version: u64,
    ) -> Result<Self> {
        let key_schema = layout.key_schema();
        let value_schema = layout.value_schema();
        let keys = converter(&key_schema, "group key")?;
        let values = converter(&value_schema, "aggregate state")?;
        let schema = StateSchema::new(key_schema, value_schema);
        let store = StateStore::open(dir.clone(), schema, StateStoreConfig::default(), version)
            .await
            .map_err(|e| match e {
                StateError::Incompatible { .. } => TidemillError::CheckpointMismatch {
                    location: dir.root().to_string(),
                    reason: format!(
                        "the query's aggregation no longer matches its saved state ({e}); \
                         restore the previous query or start it with a new checkpoint"
                    ),
                },
                other => other.into(),
            })?;
        let owners = match session_index(&layout) {
            Some(index) => {
                let mut fields = key_schema_fields(&layout);
                fields.remove(index);
                match fields.is_empty() {
                    true => None,
                    false => Some(converter(
                        &Arc::new(arrow::datatypes::Schema::new(fields)),
                        "group key",
                    )?),
                }
            }
            None => None,
        };
        let operator = Self {
            mode,
            layout,
            keys,
            values,
            owners,
            inner: Mutex::new(Inner {
                state: OperatorStore::new(store),
                watermark_ms: None,
                late_watermark_ms: None,
                dropped_by_watermark: 0,
                without_event_time: 0,
                late_rows: Vec::new(),
                sessions: SessionIndex::default(),
            }),
        };
        {
            let mut inner = operator.inner.lock().await;
            inner.sessions = operator.index_sessions(&inner.state.store)?;
        }
        Ok(operator)
    }

    /// The index of the sessions in `store` (empty unless this aggregation
    /// groups by a session window).
    fn index_sessions(&self, store: &StateStore) -> DFResult<SessionIndex> {
        let mut index = SessionIndex::default();
        let Some(k) = session_index(&self.layout) else {
            return Ok(index);
        };
        let parser = self.keys.parser();
        let keys: Vec<&[u8]> = store.iter().map(|e| e.key).collect();
        for chunk in keys.chunks(8192) {
            let columns = self
                .keys
                .convert_rows(chunk.iter().map(|k| parser.parse(k)))?;
            let owners = self.encode_owners(&columns, k, chunk.len())?;
            for (i, (key, span)) in chunk.iter().zip(spans(&columns[k])?).enumerate() {
                if let Some(span) = span {
                    index.insert(owners.get(i), span, key);
                }
            }
        }
        Ok(index)
    }

    /// The owners (group keys other than the session, column `k`) of rows
    /// with `key_columns`.
    fn encode_owners(&self, key_columns: &[ArrayRef], k: usize, rows: usize) -> DFResult<Keys> {
        let Some(owners) = &self.owners else {
            return Ok(Keys::Global(rows));
        };
        let mut columns = key_columns.to_vec();
        columns.remove(k);
        Ok(Keys::Rows(owners.convert_columns(&columns)?))
    }

    /// Merges the sessions of the batch's partial aggregate with the
    /// stored sessions they overlap or bridge, removing those from the
    /// state: returns the partial rows and the absorbed stored states, each
    /// with its merged session, for [`AggregateMode::PartialReduce`]
    /// (`datafusion::physical_plan::aggregates::AggregateMode`).
    pub async fn merge_sessions(&self, partial: &RecordBatch) -> DFResult<Vec<RecordBatch>> {
        let k = session_index(&self.layout).ok_or_else(|| {
            DataFusionError::Internal("merge_sessions without a session window".into())
        })?;
        let num_keys = self.layout.num_keys;
        let owners = self.encode_owners(&partial.columns()[..num_keys], k, partial.num_rows())?;
        let mut batch_spans = spans(partial.column(k))?;
        let mut by_owner: HashMap<&[u8], Vec<(Span, Member)>> = HashMap::new();
        for (i, span) in batch_spans.iter().enumerate() {
            if let Some(span) = span {
                by_owner
                    .entry(owners.get(i))
                    .or_default()
                    .push((*span, Member::Batch(i)));
            }
        }
        let mut inner = self.inner.lock().await;
        let mut absorbed = Vec::new();
        for (owner, mut members) in by_owner {
            members.extend(
                inner
                    .sessions
                    .sessions(owner)
                    .map(|(key, span)| (*span, Member::Stored(key.clone()))),
            );
            for (member, span) in plan_merge(members) {
                match member {
                    Member::Batch(i) => batch_spans[i] = Some(span),
                    Member::Stored(key) => absorbed.push((key, span)),
                }
            }
        }
        let mut stored = Vec::with_capacity(absorbed.len());
        for (key, span) in absorbed {
            let value = inner
                .state
                .store
                .get(&key)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    DataFusionError::Internal("a session in the index is not in the state".into())
                })?;
            inner.state.store.remove(&key);
            inner.sessions.remove(&key);
            stored.push((key, value, span));
        }
        inner.state.dirty = true;
        drop(inner);

        let session_type = partial.schema().field(k).data_type().clone();
        let mut columns = partial.columns().to_vec();
        columns[k] = session_column(&session_type, &batch_spans)?;
        let mut out = vec![RecordBatch::try_new(partial.schema(), columns)?];
        let stored_spans: Vec<Option<Span>> = stored.iter().map(|s| Some(s.2)).collect();
        for batch in self.decode(stored.iter().map(|(k, v, _)| (k.as_slice(), v.as_slice())))? {
            let mut columns = batch.columns().to_vec();
            columns[k] = session_column(&session_type, &stored_spans)?;
            out.push(RecordBatch::try_new(batch.schema(), columns)?);
        }
        Ok(out)
    }

    /// Whether the aggregation groups by a session window.
    pub fn groups_by_session(&self) -> bool {
        session_index(&self.layout).is_some()
    }

    /// The rule that tells the running batch's late rows (whose group the
    /// watermark has closed; none before the first watermark), or `None`
    /// without an event-time key.
    pub async fn late_row_rule(&self) -> Option<LateRowRule> {
        let key = self.layout.event_time_key.clone()?;
        // Complete mode keeps the whole result table, as Spark's does: the
        // watermark neither drops late rows nor evicts groups there.
        let watermark_ms = match self.mode {
            OutputMode::Complete => None,
            OutputMode::Append | OutputMode::Update => self.inner.lock().await.late_watermark_ms,
        };
        Some(LateRowRule {
            expr: Arc::clone(&self.layout.group_by.expr()[key.index].0),
            key,
            watermark_ms,
            window_bounds: self.layout.groups_by_window_bounds(),
        })
    }

    /// Counts the batch's late rows as dropped and keeps them for
    /// [`take_late_rows`](Self::take_late_rows).
    pub async fn record_late_rows(&self, late: Vec<RecordBatch>) {
        if late.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().await;
        inner.dropped_by_watermark += late.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        inner.late_rows.extend(late);
    }

    /// Counts the batch's rows without an event time (in no window, so
    /// left out of the aggregation) and keeps them for
    /// [`take_late_rows`](Self::take_late_rows).
    pub async fn record_rows_without_event_time(&self, rows: Vec<RecordBatch>) {
        if rows.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().await;
        inner.without_event_time += rows.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        inner.late_rows.extend(rows);
    }

    /// The stored states of the groups in `partial` (the batch's partial
    /// aggregate, where a group may have several rows), once per group, as
    /// rows of the partial schema; and, when no group is stored and
    /// `check_repeats` is set, whether a group has more than one row in
    /// `partial` (`repeats` is `false` when not checked).
    ///
    /// Rows of one group must merge before they are stored, or the last
    /// would overwrite the others. A group repeats when it came from
    /// several input partitions, when an aggregation without `GROUP BY`
    /// emitted its empty state from a partition without rows, and also
    /// within one partition: DataFusion's partial aggregate may pass rows
    /// through unmerged (it skips aggregating high-cardinality input) or
    /// emit its groups early under memory pressure.
    pub async fn lookup(&self, partial: &RecordBatch, check_repeats: bool) -> DFResult<Lookup> {
        let inner = self.inner.lock().await;
        let keys = self.encode_keys(partial)?;
        let parser = self.values.parser();
        let mut found = Vec::new();
        let mut rows = Vec::new();
        // A group may have several rows: its stored state is taken once.
        let mut seen = HashSet::with_hasher(foldhash::fast::RandomState::default());
        let all: Vec<&[u8]> = (0..partial.num_rows()).map(|i| keys.get(i)).collect();
        for (i, value) in inner.state.store.get_many(&all).into_iter().enumerate() {
            if let Some(value) = value
                && seen.insert(all[i])
            {
                found.push(i as u32);
                rows.push(value);
            }
        }
        if found.is_empty() {
            let repeats = match keys {
                _ if !check_repeats => false,
                Keys::Global(n) => n > 1,
                Keys::Rows(_) => {
                    let mut distinct = HashSet::with_capacity_and_hasher(
                        all.len(),
                        foldhash::fast::RandomState::default(),
                    );
                    !all.iter().all(|key| distinct.insert(*key))
                }
            };
            return Ok(Lookup::NoneStored { repeats });
        }
        let indices = UInt32Array::from(found);
        let mut columns = Vec::with_capacity(partial.num_columns());
        for key in &partial.columns()[..self.layout.num_keys] {
            columns.push(take(key.as_ref(), &indices, None)?);
        }
        columns.extend(
            self.values
                .convert_rows(rows.iter().map(|r| parser.parse(r)))?,
        );
        Ok(Lookup::Stored(RecordBatch::try_new(
            Arc::clone(&self.layout.partial_schema),
            columns,
        )?))
    }

    /// Stores the merged states of the batch's groups.
    pub async fn store(&self, merged: &[RecordBatch]) -> DFResult<()> {
        let mut inner = self.inner.lock().await;
        inner.state.dirty = true;
        let num_keys = self.layout.num_keys;
        for batch in merged {
            let keys = self.encode_keys(batch)?;
            // An aggregation without aggregate functions (`SELECT
            // DISTINCT`) keeps its keys only: every value is empty.
            let values = match self.layout.num_keys == batch.num_columns() {
                true => None,
                false => Some(self.values.convert_columns(&batch.columns()[num_keys..])?),
            };
            let total: usize = merged.iter().map(RecordBatch::num_rows).sum();
            if matches!(keys, Keys::Global(_)) && total > 1 {
                return Err(DataFusionError::Internal(format!(
                    "an aggregation without GROUP BY was to store {total} states for its one group"
                )));
            }
            let expiry = match (&self.layout.event_time_key, self.mode) {
                // Complete mode keeps every group: each batch emits them all.
                (Some(key), OutputMode::Append | OutputMode::Update) => {
                    let closes_at = closing_time(batch.column(key.index), key)?;
                    Some(ceil_millis(&closes_at, key.unit))
                }
                _ => None,
            };
            if let Some(k) = session_index(&self.layout) {
                let owners =
                    self.encode_owners(&batch.columns()[..num_keys], k, batch.num_rows())?;
                for (i, span) in spans(batch.column(k))?.into_iter().enumerate() {
                    if let Some(span) = span {
                        inner.sessions.insert(owners.get(i), span, keys.get(i));
                    }
                }
            }
            let entries: Vec<(&[u8], &[u8], Option<i64>)> = (0..batch.num_rows())
                .map(|i| {
                    let at = expiry
                        .as_ref()
                        .filter(|e| e.is_valid(i))
                        .map(|e| e.value(i));
                    let value = values.as_ref().map_or(&[][..], |v| v.row(i).data());
                    (keys.get(i), value, at)
                })
                .collect();
            inner.state.store.put_many(&entries);
        }
        Ok(())
    }

    /// Removes the groups the batch's watermark closes and returns their
    /// states, as rows of the partial schema.
    pub async fn take_closed(&self) -> DFResult<Vec<RecordBatch>> {
        let mut inner = self.inner.lock().await;
        let Some(watermark) = inner
            .watermark_ms
            .filter(|_| self.mode != OutputMode::Complete)
        else {
            return Ok(Vec::new());
        };
        inner.state.dirty = true;
        let entries = inner.state.store.take_expired(watermark);
        if self.groups_by_session() {
            for (key, _) in entries.iter() {
                inner.sessions.remove(key);
            }
        }
        self.decode(entries.iter())
    }

    /// Every group's state, as rows of the partial schema.
    pub async fn all(&self) -> DFResult<Vec<RecordBatch>> {
        let inner = self.inner.lock().await;
        self.decode(inner.state.store.iter().map(|e| (e.key, e.value)))
    }

    /// The state-store keys of the groups in `batch` (a partial-schema
    /// batch).
    fn encode_keys(&self, batch: &RecordBatch) -> DFResult<Keys> {
        Ok(match self.layout.num_keys {
            0 => Keys::Global(batch.num_rows()),
            n => Keys::Rows(self.keys.convert_columns(&batch.columns()[..n])?),
        })
    }

    fn decode<'a>(
        &self,
        entries: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> DFResult<Vec<RecordBatch>> {
        let (key_parser, value_parser) = (self.keys.parser(), self.values.parser());
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (key, value) in entries {
            if self.layout.num_keys > 0 {
                keys.push(key_parser.parse(key));
            }
            values.push(value_parser.parse(value));
        }
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let mut columns = match self.layout.num_keys {
            0 => Vec::new(),
            _ => self.keys.convert_rows(keys)?,
        };
        columns.extend(self.values.convert_rows(values)?);
        Ok(vec![RecordBatch::try_new(
            Arc::clone(&self.layout.partial_schema),
            columns,
        )?])
    }

    /// The schema of the input rows (and of late rows).
    pub fn input_schema(&self) -> SchemaRef {
        Arc::clone(&self.layout.input_schema)
    }
}

#[async_trait]
impl StatefulOperator for AggregateOperator {
    async fn begin_batch(&self, version: u64, watermarks: BatchWatermarks) -> Result<()> {
        let mut inner = self.inner.lock().await;
        if inner.state.begin_batch(version).await? {
            inner.sessions = self.index_sessions(&inner.state.store)?;
        }
        inner.watermark_ms = watermarks.evict;
        inner.late_watermark_ms = watermarks.late;
        inner.dropped_by_watermark = 0;
        inner.without_event_time = 0;
        inner.late_rows.clear();
        Ok(())
    }

    /// The rows dropped as late in the running batch, and those left out
    /// for a null event time, with the input's schema.
    async fn take_late_rows(&self) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        let rows = std::mem::take(&mut self.inner.lock().await.late_rows);
        Some((self.input_schema(), rows))
    }

    async fn commit(&self) -> Result<StateOperatorProgress> {
        let mut inner = self.inner.lock().await;
        let (dropped, without_time) = (inner.dropped_by_watermark, inner.without_event_time);
        inner.state.commit("aggregate", dropped, without_time).await
    }

    async fn purge(&self, keep_from_version: u64) -> Result<()> {
        let inner = self.inner.lock().await;
        inner.state.store.purge(keep_from_version).await?;
        Ok(())
    }

    async fn has_closable_state(&self, watermark_ms: Option<i64>, _now_ms: i64) -> bool {
        let Some(watermark) = watermark_ms.filter(|_| self.mode != OutputMode::Complete) else {
            return false;
        };
        let inner = self.inner.lock().await;
        inner
            .state
            .store
            .next_expiry()
            .is_some_and(|at| at <= watermark)
    }
}

/// The position of the session window among the group keys, if the
/// aggregation groups by one.
fn session_index(layout: &AggregateLayout) -> Option<usize> {
    layout
        .event_time_key
        .as_ref()
        .filter(|key| key.kind == EventTimeKind::Session)
        .map(|key| key.index)
}

fn key_schema_fields(layout: &AggregateLayout) -> Vec<arrow::datatypes::FieldRef> {
    layout.key_schema().fields().iter().cloned().collect()
}

/// What [`AggregateOperator::lookup`] found for a batch's groups.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The stored states of the groups the state holds, one row each.
    Stored(RecordBatch),
    /// The state holds none of the groups; `repeats` tells whether a group
    /// has more than one row in the batch's partial aggregate.
    NoneStored { repeats: bool },
}

/// State-store keys of a batch's groups.
enum Keys {
    /// The group columns in arrow's row format.
    Rows(Rows),
    /// An aggregation without `GROUP BY` has one group, under the empty key.
    Global(usize),
}

impl Keys {
    fn get(&self, i: usize) -> &[u8] {
        match self {
            Keys::Rows(rows) => rows.row(i).data(),
            Keys::Global(n) => {
                assert!(i < *n, "group {i} of {n}");
                &[]
            }
        }
    }
}

fn converter(schema: &SchemaRef, what: &str) -> Result<RowConverter> {
    let fields: Vec<SortField> = schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    RowConverter::new(fields).map_err(|e| TidemillError::Unsupported {
        operator: "Aggregate".into(),
        reason: format!(
            "keeps a {what} of a type the state store cannot encode ({}): {e}",
            schema
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        fix: "Group by and aggregate columns of plain types (numbers, strings, timestamps, \
              lists and structs of those)"
            .into(),
    })
}
