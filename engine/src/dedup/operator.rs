//! The keys a deduplication has seen, and what it did in a batch.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result as DFResult};
use tidemill_state::{CheckpointDir, StateError, StateSchema, StateStore, StateStoreConfig};
use tokio::sync::Mutex;

use crate::aggregate::event_time::{ceil_millis, watermark_in_unit};
use crate::progress::StateOperatorProgress;
use crate::stateful::{BatchWatermarks, OperatorStore, StatefulOperator};
use crate::{Result, TidemillError};

/// One deduplication of a running query.
#[derive(Debug)]
pub(crate) struct DedupOperator {
    /// The key columns' names, in order.
    keys: Vec<String>,
    /// The event-time column whose rows at or below the watermark are
    /// late, its unit, and how long after its time a key expires (ms).
    event_time: Option<(String, TimeUnit, i64)>,
    converter: RowConverter,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: OperatorStore,
    watermark_ms: Option<i64>,
    dropped_by_watermark: u64,
}

impl DedupOperator {
    /// Opens the keys seen in `dir` as of `version`, for keys `keys` of
    /// `input` (the deduplicated rows' schema); `expiry` is the event-time
    /// column and how long after its time a key expires (see
    /// [`super::DeduplicateNode::expiry`]).
    ///
    /// Refuses a checkpoint whose state was written for other keys.
    pub async fn open(
        input: &Schema,
        keys: Vec<String>,
        expiry: Option<(String, i64)>,
        dir: CheckpointDir,
        version: u64,
    ) -> Result<Self> {
        let mut fields = Vec::with_capacity(keys.len());
        for key in &keys {
            let field = input.field_with_name(key).map_err(|_| {
                TidemillError::Config(format!("drop_duplicates: no column '{key}' to key by"))
            })?;
            fields.push(field.clone());
        }
        let event_time = match expiry {
            Some((name, after_ms)) => {
                match input.field_with_name(&name).map(|f| f.data_type().clone()) {
                    Ok(DataType::Timestamp(unit, _)) => Some((name, unit, after_ms)),
                    _ => None,
                }
            }
            None => None,
        };
        let key_schema: SchemaRef = Arc::new(Schema::new(fields));
        let converter = RowConverter::new(
            key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| TidemillError::Unsupported {
            operator: "Deduplicate".into(),
            reason: format!("keys by a column of a type the state store cannot encode: {e}"),
            fix: "Deduplicate by columns of plain types (numbers, strings, timestamps)".into(),
        })?;
        let value_schema = Arc::new(Schema::new(Vec::<Field>::new()));
        let schema = StateSchema::new(key_schema, value_schema);
        let store = StateStore::open(dir.clone(), schema, StateStoreConfig::default(), version)
            .await
            .map_err(|e| match e {
                StateError::Incompatible { .. } => TidemillError::CheckpointMismatch {
                    location: dir.root().to_string(),
                    reason: format!(
                        "the query's deduplication keys no longer match its saved state ({e}); \
                         restore the previous query or start it with a new checkpoint"
                    ),
                },
                other => other.into(),
            })?;
        Ok(Self {
            keys,
            event_time,
            converter,
            inner: Mutex::new(Inner {
                state: OperatorStore::new(store),
                watermark_ms: None,
                dropped_by_watermark: 0,
            }),
        })
    }

    /// The rows of `batch` whose key no earlier row had (in this batch or
    /// a committed one), and not late; records their keys. One batch at a
    /// time holds the state, so of rows with one key in several partitions
    /// exactly one passes.
    pub async fn first_rows(&self, batch: RecordBatch) -> DFResult<RecordBatch> {
        if batch.num_rows() == 0 {
            return Ok(batch);
        }
        let mut columns = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let column = batch.column_by_name(key).ok_or_else(|| {
                DataFusionError::Internal(format!("Deduplicate: the input has no column '{key}'"))
            })?;
            columns.push(Arc::clone(column));
        }
        let rows = self.converter.convert_columns(&columns)?;
        // Event times in milliseconds rounded up (a key expires once the
        // watermark reaches its time), and in the column's unit (for the
        // late check).
        let times: Option<(ArrayRef, arrow::array::Int64Array)> = match &self.event_time {
            Some((name, unit, _)) => {
                let raw = cast(
                    batch.column_by_name(name).expect("a key column"),
                    &DataType::Int64,
                )?;
                let millis = ceil_millis(&raw, *unit);
                Some((raw, millis))
            }
            None => None,
        };
        let mut inner = self.inner.lock().await;
        inner.state.dirty = true;
        let watermark = inner.watermark_ms;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut seen: HashSet<&[u8]> = HashSet::new();
        let mut dropped = 0;
        for (i, row) in rows.iter().enumerate() {
            let key = row.data();
            let mut expires_at = None;
            if let (Some((raw, millis)), Some((_, unit, after_ms))) = (&times, &self.event_time)
                && raw.is_valid(i)
            {
                let raw = raw.as_primitive::<arrow::datatypes::Int64Type>().value(i);
                if let Some(w) = watermark
                    && raw <= watermark_in_unit(w, *unit)
                {
                    dropped += 1;
                    keep.push(false);
                    continue;
                }
                expires_at = Some(millis.value(i).saturating_add(*after_ms));
            }
            let first = !seen.contains(key) && inner.state.store.get(key).is_none();
            if first {
                seen.insert(key);
                match expires_at {
                    Some(at) => inner.state.store.put_with_ttl(key, &[], at),
                    None => inner.state.store.put(key, &[]),
                }
            }
            keep.push(first);
        }
        inner.dropped_by_watermark += dropped;
        drop(inner);
        Ok(filter_record_batch(&batch, &BooleanArray::from(keep))?)
    }
}

#[async_trait]
impl StatefulOperator for DedupOperator {
    async fn begin_batch(&self, version: u64, watermarks: BatchWatermarks) -> Result<()> {
        let mut inner = self.inner.lock().await;
        inner.state.begin_batch(version).await?;
        // The keys the batch's watermark has passed are gone before its
        // rows are looked up: a row after a key expired is a first row
        // again. The removals are the batch's changes (a re-run makes them
        // again from the same version).
        if let Some(watermark) = watermarks.evict
            && inner.state.store.remove_expired(watermark) > 0
        {
            inner.state.dirty = true;
        }
        inner.watermark_ms = watermarks.late;
        inner.dropped_by_watermark = 0;
        Ok(())
    }

    async fn commit(&self) -> Result<StateOperatorProgress> {
        let mut inner = self.inner.lock().await;
        let dropped = inner.dropped_by_watermark;
        inner.state.commit("dedupe", dropped, 0).await
    }

    async fn purge(&self, keep_from_version: u64) -> Result<()> {
        let inner = self.inner.lock().await;
        inner.state.store.purge(keep_from_version).await?;
        Ok(())
    }

    /// Expired keys are evicted when a batch begins: as Spark's
    /// deduplication, a batch without data runs when the watermark has
    /// passed a key's expiry, so that the state shrinks without waiting for
    /// new rows (no output waits for it).
    async fn has_closable_state(&self, watermark_ms: Option<i64>, _now_ms: i64) -> bool {
        let Some(watermark) = watermark_ms else {
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
