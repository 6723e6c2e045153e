//! One side of a stream–stream join: the rows it keeps for matches to
//! come, in its state store, and an index of them by join key and time.
//!
//! A stored row's state key is its join key (arrow's row format) followed
//! by its time in milliseconds (8 bytes, big-endian) and a row number
//! (8 bytes); its value is a matched flag (1 byte) followed by the row's
//! columns in the row format. The index, rebuilt from the keys when the
//! store is reopened, maps each join key to its rows ordered by time, so
//! that a probe reads only the rows the time bounds allow.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::physical_expr::PhysicalExpr;
use tidemill_state::{StateSchema, StateStore};

use super::bounds::{Expiry, TimeColumn};
use crate::aggregate::event_time::{ceil_millis, watermark_in_unit};
use crate::stateful::OperatorStore;

/// The bytes after the join key in a state key: time and row number.
const SUFFIX: usize = 16;

/// A stored row as the index holds it: time (ms) and row number.
pub(crate) type Slot = (i64, u64);

/// The layout of one side's rows and how they wait.
#[derive(Debug)]
pub(crate) struct SideLayout {
    /// "left" or "right".
    pub label: &'static str,
    /// The side's rows.
    pub schema: SchemaRef,
    /// The join key expressions over the side's rows.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Whether null keys match null keys.
    pub nulls_equal: bool,
    /// The column the index orders rows by (the side's column of the
    /// condition's time range), if the condition has one.
    pub range_column: Option<TimeColumn>,
    /// When stored rows expire, if they do.
    pub expiry: Option<Expiry>,
    /// The watermarked event time rows are dropped as late by.
    pub event_time: Option<TimeColumn>,
}

impl SideLayout {
    /// The state store's layout: the key columns with the time and row
    /// number; the row's columns with the matched flag.
    pub fn state_schema(&self) -> DFResult<StateSchema> {
        let mut keys = Vec::with_capacity(self.keys.len() + 2);
        for key in &self.keys {
            keys.push(Field::new(
                key.to_string(),
                key.data_type(&self.schema)?,
                true,
            ));
        }
        keys.push(Field::new("time_ms", DataType::Int64, false));
        keys.push(Field::new("row_number", DataType::UInt64, false));
        let mut values = vec![Field::new("matched", DataType::Boolean, false)];
        values.extend(self.schema.fields().iter().map(|f| f.as_ref().clone()));
        Ok(StateSchema::new(
            Arc::new(Schema::new(keys)),
            Arc::new(Schema::new(values)),
        ))
    }
}

/// A batch's rows of one side, ready to probe and store.
pub(crate) struct NewRows {
    pub batch: RecordBatch,
    /// The encoded join keys; `None` when the condition has no equality
    /// (every row has the same, empty, key).
    keys: Option<Rows>,
    /// Whether each row can ever match: no null key (unless nulls match),
    /// and a time where the condition bounds times.
    pub usable: Vec<bool>,
    /// Each row's time for the index (ms, floored), 0 without a range.
    pub times: Vec<i64>,
    /// When each row would expire (ms), where the side's rows do.
    pub expiries: Option<Int64Array>,
}

impl NewRows {
    /// Row `i`'s encoded join key.
    pub fn key(&self, i: usize) -> &[u8] {
        match &self.keys {
            Some(rows) => rows.row(i).data(),
            None => &[],
        }
    }
}

/// One side's stored rows.
#[derive(Debug)]
pub(crate) struct JoinSide {
    pub layout: SideLayout,
    key_converter: RowConverter,
    row_converter: RowConverter,
    pub state: OperatorStore,
    /// Join key → stored rows by time.
    index: HashMap<Box<[u8]>, BTreeSet<Slot>>,
    /// The next stored row's number: numbers are unique among the side's
    /// stored rows, whatever their key.
    next_row: u64,
    /// Rows of the running batch dropped as late.
    pub dropped_by_watermark: u64,
}

impl JoinSide {
    /// The side over `store` (at the version to run).
    pub fn new(layout: SideLayout, store: StateStore) -> DFResult<Self> {
        let key_converter = RowConverter::new(
            layout
                .keys
                .iter()
                .map(|k| Ok(SortField::new(k.data_type(&layout.schema)?)))
                .collect::<DFResult<Vec<_>>>()?,
        )?;
        let row_converter = RowConverter::new(
            layout
                .schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let mut side = Self {
            layout,
            key_converter,
            row_converter,
            state: OperatorStore::new(store),
            index: HashMap::new(),
            next_row: 0,
            dropped_by_watermark: 0,
        };
        side.rebuild_index();
        Ok(side)
    }

    /// Rebuilds the index from the store's keys.
    pub fn rebuild_index(&mut self) {
        self.index.clear();
        self.next_row = 0;
        for entry in self.state.store.iter() {
            let (key, slot) = split_state_key(entry.key);
            self.next_row = self.next_row.max(slot.1 + 1);
            index_row(&mut self.index, key, slot);
        }
    }

    /// Gets ready for a batch at `version`; rebuilds the index if the
    /// store was reopened.
    pub async fn begin_batch(&mut self, version: u64) -> crate::Result<()> {
        if self.state.begin_batch(version).await? {
            self.rebuild_index();
        }
        self.dropped_by_watermark = 0;
        Ok(())
    }

    /// `batch` without its late rows (event time at or below
    /// `late_ms`), which are counted.
    pub fn drop_late(&mut self, batch: RecordBatch, late_ms: Option<i64>) -> DFResult<RecordBatch> {
        let (Some(column), Some(watermark)) = (&self.layout.event_time, late_ms) else {
            return Ok(batch);
        };
        let times = cast(batch.column(column.index), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let bound = watermark_in_unit(watermark, column.unit);
        let keep: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_none_or(|t| t > bound)))
            .collect();
        let kept = filter_record_batch(&batch, &keep)?;
        self.dropped_by_watermark += (batch.num_rows() - kept.num_rows()) as u64;
        Ok(kept)
    }

    /// Encodes `batch`'s keys, times and expiries.
    pub fn prepare(&self, batch: RecordBatch) -> DFResult<NewRows> {
        let n = batch.num_rows();
        let columns = self
            .layout
            .keys
            .iter()
            .map(|k| k.evaluate(&batch)?.into_array(n))
            .collect::<DFResult<Vec<ArrayRef>>>()?;
        let keys = match columns.is_empty() {
            true => None,
            false => Some(self.key_converter.convert_columns(&columns)?),
        };
        let mut usable: Vec<bool> = (0..n)
            .map(|i| self.layout.nulls_equal || columns.iter().all(|c| c.is_valid(i)))
            .collect();
        let mut times = vec![0; n];
        if let Some(column) = &self.layout.range_column {
            let millis = floor_millis(batch.column(column.index), column)?;
            for i in 0..n {
                match millis.is_valid(i) {
                    true => times[i] = millis.value(i),
                    false => usable[i] = false,
                }
            }
        }
        let expiries = match &self.layout.expiry {
            Some(expiry) => {
                let at = expiries(&batch, expiry)?;
                for (i, ok) in usable.iter_mut().enumerate() {
                    *ok &= at.is_valid(i);
                }
                Some(at)
            }
            None => None,
        };
        Ok(NewRows {
            batch,
            keys,
            usable,
            times,
            expiries,
        })
    }

    /// The stored rows with join key `key` and a time in `from..=to`.
    pub fn lookup(&self, key: &[u8], from: i64, to: i64) -> impl Iterator<Item = Slot> + '_ {
        self.index
            .get(key)
            .into_iter()
            .flat_map(move |slots| slots.range((from, 0)..=(to, u64::MAX)).copied())
    }

    /// The state key of a stored row.
    pub fn state_key(key: &[u8], slot: Slot) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(key.len() + SUFFIX);
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&slot.0.to_be_bytes());
        bytes.extend_from_slice(&slot.1.to_be_bytes());
        bytes
    }

    /// The stored rows of `state_keys` as a batch of the side's rows, with
    /// each one's matched flag.
    pub fn read(&self, state_keys: &[Vec<u8>]) -> DFResult<(RecordBatch, Vec<bool>)> {
        let keys: Vec<&[u8]> = state_keys.iter().map(Vec::as_slice).collect();
        let values = self.state.store.get_many(&keys);
        let mut stored = Vec::with_capacity(values.len());
        for (key, value) in keys.iter().zip(values) {
            stored.push(value.ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "the {} side's index lists a row its state does not hold ({} key bytes)",
                    self.layout.label,
                    key.len()
                ))
            })?);
        }
        self.decode(&stored)
    }

    /// Rows from stored values (flag byte and row bytes).
    pub fn decode(&self, values: &[&[u8]]) -> DFResult<(RecordBatch, Vec<bool>)> {
        let parser = self.row_converter.parser();
        let matched = values.iter().map(|v| v[0] != 0).collect();
        let columns = self
            .row_converter
            .convert_rows(values.iter().map(|v| parser.parse(&v[1..])))?;
        let batch = RecordBatch::try_new_with_options(
            Arc::clone(&self.layout.schema),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(values.len())),
        )?;
        Ok((batch, matched))
    }

    /// Stores rows `rows` of `new` (by position), each with its matched
    /// flag; `expires` gives each one's expiry where the side's rows
    /// expire.
    pub fn store(&mut self, new: &NewRows, rows: &[(usize, bool)]) -> DFResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.state.dirty = true;
        let encoded = self.row_converter.convert_columns(new.batch.columns())?;
        let mut entries = Vec::with_capacity(rows.len());
        for &(i, matched) in rows {
            let key = new.key(i);
            let slot = (new.times[i], self.next_row);
            self.next_row += 1;
            index_row(&mut self.index, key, slot);
            let mut value = Vec::with_capacity(1 + encoded.row(i).data().len());
            value.push(u8::from(matched));
            value.extend_from_slice(encoded.row(i).data());
            let expires = new.expiries.as_ref().map(|e| e.value(i));
            entries.push((Self::state_key(key, slot), value, expires));
        }
        let refs: Vec<(&[u8], &[u8], Option<i64>)> = entries
            .iter()
            .map(|(k, v, e)| (k.as_slice(), v.as_slice(), *e))
            .collect();
        self.state.store.put_many(&refs);
        Ok(())
    }

    /// Marks the stored row `state_key` as matched.
    pub fn mark_matched(&mut self, state_key: &[u8]) {
        let Some(entry) = self.state.store.get_entry(state_key) else {
            return;
        };
        if entry.value[0] != 0 {
            return;
        }
        let mut value = entry.value.to_vec();
        value[0] = 1;
        let expires = entry.expires_at_ms;
        self.state.dirty = true;
        match expires {
            Some(at) => self.state.store.put_with_ttl(state_key, &value, at),
            None => self.state.store.put(state_key, &value),
        }
    }

    /// Removes the stored row `state_key`.
    pub fn remove(&mut self, state_key: &[u8]) {
        self.state.dirty = true;
        self.state.store.remove(state_key);
        self.unindex(state_key);
    }

    /// Removes the rows the watermark `watermark_ms` has expired and, when
    /// `unmatched` (a side an outer join preserves), returns the values of
    /// those that never matched; nothing is copied otherwise.
    pub fn take_expired(&mut self, watermark_ms: i64, unmatched: bool) -> Vec<Vec<u8>> {
        if !self.has_expired(watermark_ms) {
            return Vec::new();
        }
        self.state.dirty = true;
        let taken = self.state.store.take_expired(watermark_ms);
        let mut values = Vec::new();
        for (key, value) in taken.iter() {
            self.unindex(key);
            if unmatched && value[0] == 0 {
                values.push(value.to_vec());
            }
        }
        values
    }

    /// Whether the watermark `watermark_ms` expires a stored row.
    pub fn has_expired(&self, watermark_ms: i64) -> bool {
        self.state
            .store
            .next_expiry()
            .is_some_and(|at| at <= watermark_ms)
    }

    fn unindex(&mut self, state_key: &[u8]) {
        let (key, slot) = split_state_key(state_key);
        if let Some(slots) = self.index.get_mut(key) {
            slots.remove(&slot);
            if slots.is_empty() {
                self.index.remove(key);
            }
        }
    }
}

/// Adds a stored row to `index`; the key is copied only when it is new
/// to the index.
fn index_row(index: &mut HashMap<Box<[u8]>, BTreeSet<Slot>>, key: &[u8], slot: Slot) {
    match index.get_mut(key) {
        Some(slots) => {
            slots.insert(slot);
        }
        None => {
            index.insert(key.into(), BTreeSet::from([slot]));
        }
    }
}

/// A state key's join key and slot.
fn split_state_key(state_key: &[u8]) -> (&[u8], Slot) {
    let (key, suffix) = state_key.split_at(state_key.len() - SUFFIX);
    let time = i64::from_be_bytes(suffix[..8].try_into().expect("8 bytes"));
    let row = u64::from_be_bytes(suffix[8..].try_into().expect("8 bytes"));
    (key, (time, row))
}

/// `times` (of `column`'s unit) in milliseconds, rounded down.
fn floor_millis(times: &ArrayRef, column: &TimeColumn) -> DFResult<Int64Array> {
    let raw = cast(times, &DataType::Int64)?;
    let per_ms: i64 = match column.unit {
        arrow::datatypes::TimeUnit::Second => {
            return Ok(raw
                .as_primitive::<Int64Type>()
                .unary(|t| t.saturating_mul(1000)));
        }
        arrow::datatypes::TimeUnit::Millisecond => 1,
        arrow::datatypes::TimeUnit::Microsecond => 1000,
        arrow::datatypes::TimeUnit::Nanosecond => 1_000_000,
    };
    Ok(raw
        .as_primitive::<Int64Type>()
        .unary(|t| t.div_euclid(per_ms)))
}

/// When each row of `batch` expires under `expiry`, in milliseconds
/// (rounded up, so a row expires once the watermark reaches it).
fn expiries(batch: &RecordBatch, expiry: &Expiry) -> DFResult<Int64Array> {
    let (times, offset) = match expiry {
        Expiry::Time { column, offset_ms } => (Arc::clone(batch.column(column.index)), *offset_ms),
        Expiry::WindowEnd { column } => {
            let window = batch.column(column.index).as_struct();
            let end = window.column_by_name("end").cloned().ok_or_else(|| {
                DataFusionError::Internal(format!("window '{}' has no end", column.name))
            })?;
            // A null window has a null end.
            let nulls = arrow::buffer::NullBuffer::union(window.nulls(), end.nulls());
            let data = end.to_data().into_builder().nulls(nulls);
            let end = arrow::array::make_array(data.build()?);
            (end, 0)
        }
    };
    let raw = cast(&times, &DataType::Int64)?;
    let millis = ceil_millis(&raw, expiry.column().unit);
    Ok(millis.unary(|t| t.saturating_add(offset)))
}
