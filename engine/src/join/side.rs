//! One side of a stream–stream join: the rows it keeps for matches to
//! come, in its state store, and an index of them by join key and time.
//!
//! A stored row's state key is its join key (arrow's row format) followed
//! by its time in milliseconds (8 bytes, big-endian) and a row number
//! (8 bytes); its value is a matched flag (1 byte) followed by the row's
//! columns in the row format. The index, rebuilt from the keys when the
//! store is reopened, maps each join key's hash to its rows ordered by
//! time, so that a probe reads only the rows the time bounds allow. (Two
//! join keys of one 64-bit hash share an index entry; a probe then finds
//! the other key's rows missing from the store under its own key, and
//! skips them.)
//!
//! The store's partitions are decided by the join key alone (its
//! [`partition_suffix`](tidemill_state::StateSchema::partition_suffix) is
//! the time and row number), so every row of a key, on both sides, lives in
//! the same partition number: the join works on the partitions
//! independently ([`JoinSide::parts`], [`JoinSide::split`]), on several
//! threads.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::physical_expr::PhysicalExpr;
use foldhash::fast::FixedState;
use hashbrown::HashTable;
use tidemill_state::{StatePartition, StateSchema, StateStore, partition_for_key};

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
        Ok(
            StateSchema::new(Arc::new(Schema::new(keys)), Arc::new(Schema::new(values)))
                .with_partition_suffix(SUFFIX),
        )
    }
}

/// A batch's rows of one side, ready to probe and store.
pub(crate) struct NewRows {
    pub batch: RecordBatch,
    /// The encoded join keys; `None` when the condition has no equality
    /// (every row has the same, empty, key).
    keys: Option<Rows>,
    /// Each row's [`key_hash`].
    hashes: Vec<u64>,
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

    /// Row `i`'s [`key_hash`].
    pub fn hash(&self, i: usize) -> u64 {
        self.hashes[i]
    }

    /// Rows `indices`, in that order.
    fn take(&self, indices: &[u32], key_converter: &RowConverter) -> DFResult<NewRows> {
        let positions = UInt32Array::from(indices.to_vec());
        let batch = arrow::compute::take_record_batch(&self.batch, &positions)?;
        let keys = match &self.keys {
            Some(rows) => {
                let bytes = indices.iter().map(|&i| rows.row(i as usize).data().len());
                let mut taken = key_converter.empty_rows(indices.len(), bytes.sum());
                for &i in indices {
                    taken.push(rows.row(i as usize));
                }
                Some(taken)
            }
            None => None,
        };
        let expiries = match &self.expiries {
            Some(at) => Some(
                arrow::compute::take(at, &positions, None)?
                    .as_primitive()
                    .clone(),
            ),
            None => None,
        };
        Ok(NewRows {
            batch,
            keys,
            hashes: indices.iter().map(|&i| self.hashes[i as usize]).collect(),
            usable: indices.iter().map(|&i| self.usable[i as usize]).collect(),
            times: indices.iter().map(|&i| self.times[i as usize]).collect(),
            expiries,
        })
    }
}

/// The hash of an encoded join key in the index (fixed seed, so every
/// thread and part agrees).
fn key_hash(key: &[u8]) -> u64 {
    FixedState::default().hash_one(key)
}

/// A join key's stored rows, by time and row number. Most keys hold one
/// row (kept without an allocation). Rows mostly arrive in time order and
/// leave oldest first, so inserts and removals are at the ends.
#[derive(Debug)]
enum Slots {
    One(Slot),
    Many(VecDeque<Slot>),
}

impl Slots {
    /// Adds `slot` in order.
    fn insert(&mut self, slot: Slot) {
        match self {
            Self::One(first) => {
                let first = *first;
                let pair = match first < slot {
                    true => [first, slot],
                    false => [slot, first],
                };
                *self = Self::Many(VecDeque::from(pair));
            }
            Self::Many(slots) => match slots.back() {
                Some(last) if *last > slot => {
                    let at = slots.partition_point(|s| *s < slot);
                    slots.insert(at, slot);
                }
                _ => slots.push_back(slot),
            },
        }
    }

    /// Removes `slot` if present; returns whether no row is left.
    fn remove(&mut self, slot: Slot) -> bool {
        match self {
            Self::One(only) => *only == slot,
            Self::Many(slots) => {
                let at = match slots.front() {
                    Some(first) if *first == slot => 0,
                    _ => slots.partition_point(|s| *s < slot),
                };
                if slots.get(at) == Some(&slot) {
                    slots.remove(at);
                }
                slots.is_empty()
            }
        }
    }

    /// The rows with a time in `from..=to`.
    fn between(&self, from: i64, to: i64) -> impl Iterator<Item = Slot> + '_ {
        let (a, b): (&[Slot], &[Slot]) = match self {
            Self::One(only) => (std::slice::from_ref(only), &[]),
            Self::Many(slots) => slots.as_slices(),
        };
        within(a, from, to).chain(within(b, from, to))
    }
}

/// The rows of `slots` (in time order) with a time in `from..=to`.
fn within(slots: &[Slot], from: i64, to: i64) -> impl Iterator<Item = Slot> + '_ {
    let start = slots.partition_point(|s| s.0 < from);
    slots[start..]
        .iter()
        .take_while(move |s| s.0 <= to)
        .copied()
}

/// The stored rows of the join keys of one hash.
#[derive(Debug)]
struct KeyRows {
    hash: u64,
    slots: Slots,
}

/// One partition's index: join key hash → stored rows.
#[derive(Debug, Default)]
struct PartIndex {
    keys: HashTable<KeyRows>,
    /// The next stored row's number: unique among the partition's rows,
    /// so a key, time and number never repeat.
    next_row: u64,
}

impl PartIndex {
    /// Adds a stored row of the join key whose hash is `hash`.
    fn add(&mut self, hash: u64, slot: Slot) {
        match self.keys.find_mut(hash, |k| k.hash == hash) {
            Some(rows) => rows.slots.insert(slot),
            None => {
                let rows = KeyRows {
                    hash,
                    slots: Slots::One(slot),
                };
                self.keys.insert_unique(hash, rows, |k| k.hash);
            }
        }
    }

    /// Forgets the stored row of `state_key`.
    fn forget(&mut self, state_key: &[u8]) {
        let (key, slot) = split_state_key(state_key);
        let hash = key_hash(key);
        if let Ok(mut found) = self.keys.find_entry(hash, |k| k.hash == hash)
            && found.get_mut().slots.remove(slot)
        {
            found.remove();
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
    /// Per state partition, its rows by join key and time.
    indexes: Vec<PartIndex>,
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
            indexes: Vec::new(),
            dropped_by_watermark: 0,
        };
        side.rebuild_index();
        Ok(side)
    }

    /// Rebuilds the index from the store's keys.
    pub fn rebuild_index(&mut self) {
        self.indexes = self
            .state
            .store
            .partitions()
            .iter()
            .map(|part| {
                let mut index = PartIndex::default();
                for entry in part.iter() {
                    let (key, slot) = split_state_key(entry.key);
                    index.next_row = index.next_row.max(slot.1 + 1);
                    index.add(key_hash(key), slot);
                }
                index
            })
            .collect();
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
        let hashes = match &keys {
            Some(rows) => rows.iter().map(|row| key_hash(row.data())).collect(),
            None => vec![key_hash(&[]); n],
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
            hashes,
            usable,
            times,
            expiries,
        })
    }

    /// `new`'s rows by the state partition of their join key (each part in
    /// the rows' order), one entry per partition.
    pub fn split(&self, new: NewRows) -> DFResult<Vec<NewRows>> {
        let n = self.indexes.len();
        let mut routed: Vec<Vec<u32>> = vec![Vec::new(); n];
        for i in 0..new.batch.num_rows() {
            routed[partition_for_key(new.key(i), n)].push(i as u32);
        }
        // All rows in one partition (or none): that part is `new` itself,
        // uncopied.
        if let Some(whole) = routed.iter().position(|r| r.len() == new.batch.num_rows()) {
            let mut parts = routed
                .iter()
                .enumerate()
                .filter(|(p, _)| *p != whole)
                .map(|(_, indices)| new.take(indices, &self.key_converter))
                .collect::<DFResult<Vec<_>>>()?;
            parts.insert(whole, new);
            return Ok(parts);
        }
        routed
            .iter()
            .map(|indices| new.take(indices, &self.key_converter))
            .collect()
    }

    /// Each state partition with its index, for a batch's work on them.
    /// The store counts as changed from here until its commit.
    pub fn parts(&mut self) -> Vec<SidePart<'_>> {
        self.state.dirty = true;
        let Self {
            layout,
            row_converter,
            state,
            indexes,
            ..
        } = self;
        let (layout, row_converter) = (&*layout, &*row_converter);
        state
            .store
            .partitions_mut()
            .iter_mut()
            .zip(indexes.iter_mut())
            .map(|(store, index)| SidePart {
                layout,
                row_converter,
                store,
                index,
            })
            .collect()
    }

    /// Whether the watermark `watermark_ms` expires a stored row.
    pub fn has_expired(&self, watermark_ms: i64) -> bool {
        self.state
            .store
            .next_expiry()
            .is_some_and(|at| at <= watermark_ms)
    }

    /// The state key of a stored row.
    pub fn state_key(key: &[u8], slot: Slot) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(key.len() + SUFFIX);
        write_state_key(&mut bytes, key, slot);
        bytes
    }
}

/// Appends the state key of a stored row to `bytes`.
fn write_state_key(bytes: &mut Vec<u8>, key: &[u8], slot: Slot) {
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&slot.0.to_be_bytes());
    bytes.extend_from_slice(&slot.1.to_be_bytes());
}

/// One state partition of a side, with its index: the rows of the join
/// keys that fall in it.
pub(crate) struct SidePart<'a> {
    pub layout: &'a SideLayout,
    row_converter: &'a RowConverter,
    store: &'a mut StatePartition,
    index: &'a mut PartIndex,
}

impl SidePart<'_> {
    /// The stored rows whose join key hashes to `hash` and whose time is
    /// in `from..=to`: the rows of the key, and rarely of another key of
    /// the same hash (which [`value`](Self::value) does not find under the
    /// key).
    pub fn lookup(&self, hash: u64, from: i64, to: i64) -> impl Iterator<Item = Slot> + '_ {
        self.index
            .keys
            .find(hash, |k| k.hash == hash)
            .into_iter()
            .flat_map(move |rows| rows.slots.between(from, to))
    }

    /// The stored value (flag byte and row bytes) of `state_key`, if held.
    pub fn value(&self, state_key: &[u8]) -> Option<&[u8]> {
        self.store.get(state_key)
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

    /// Stores rows `rows` of `new` (by position; all of this partition),
    /// each with its matched flag and, where the side's rows expire, its
    /// expiry.
    pub fn store(&mut self, new: &NewRows, rows: &[(usize, bool)]) -> DFResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let encoded = self.row_converter.convert_columns(new.batch.columns())?;
        let mut state_key = Vec::new();
        let mut value = Vec::new();
        for &(i, matched) in rows {
            let key = new.key(i);
            let slot = (new.times[i], self.index.next_row);
            self.index.next_row += 1;
            self.index.add(new.hash(i), slot);
            state_key.clear();
            write_state_key(&mut state_key, key, slot);
            value.clear();
            value.push(u8::from(matched));
            value.extend_from_slice(encoded.row(i).data());
            match &new.expiries {
                Some(at) => self.store.put_with_ttl(&state_key, &value, at.value(i)),
                None => self.store.put(&state_key, &value),
            }
        }
        Ok(())
    }

    /// Marks the stored row `state_key` as matched.
    pub fn mark_matched(&mut self, state_key: &[u8]) {
        let Some(entry) = self.store.get_entry(state_key) else {
            return;
        };
        if entry.value[0] != 0 {
            return;
        }
        let mut value = entry.value.to_vec();
        value[0] = 1;
        match entry.expires_at_ms {
            Some(at) => self.store.put_with_ttl(state_key, &value, at),
            None => self.store.put(state_key, &value),
        }
    }

    /// Removes the stored row `state_key`.
    pub fn remove(&mut self, state_key: &[u8]) {
        self.store.remove(state_key);
        self.index.forget(state_key);
    }

    /// Whether the watermark `watermark_ms` expires a row of the partition.
    pub fn has_expired(&self, watermark_ms: i64) -> bool {
        self.store
            .next_expiry()
            .is_some_and(|at| at <= watermark_ms)
    }

    /// Removes the rows the watermark `watermark_ms` has expired and, when
    /// `unmatched` (a side an outer join preserves), returns the values of
    /// those that never matched; nothing is copied otherwise.
    pub fn take_expired(&mut self, watermark_ms: i64, unmatched: bool) -> Vec<Vec<u8>> {
        if !self.has_expired(watermark_ms) {
            return Vec::new();
        }
        let index = &mut *self.index;
        let mut values = Vec::new();
        self.store
            .remove_expired_with(watermark_ms, |state_key, value| {
                index.forget(state_key);
                if unmatched && value[0] == 0 {
                    values.push(value.to_vec());
                }
            });
        values
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(slots: &Slots, from: i64, to: i64) -> Vec<Slot> {
        slots.between(from, to).collect()
    }

    #[test]
    fn a_keys_rows_stay_in_time_order_whatever_order_they_come_and_go_in() {
        let mut slots = Slots::One((50, 0));
        assert_eq!(rows(&slots, 0, 100), [(50, 0)]);
        assert_eq!(rows(&slots, 51, 100), []);
        for slot in [(70, 1), (10, 2), (50, 3), (90, 4), (30, 5)] {
            slots.insert(slot);
        }
        let all = [(10, 2), (30, 5), (50, 0), (50, 3), (70, 1), (90, 4)];
        assert_eq!(rows(&slots, i64::MIN, i64::MAX), all);
        // Bounds are inclusive at both ends.
        assert_eq!(rows(&slots, 30, 70), all[1..5]);
        // The oldest leave first; a ring buffer that wrapped reads in order.
        assert!(!slots.remove((10, 2)));
        assert!(!slots.remove((30, 5)));
        slots.insert((95, 6));
        slots.insert((60, 7));
        assert_eq!(
            rows(&slots, 0, 100),
            [(50, 0), (50, 3), (60, 7), (70, 1), (90, 4), (95, 6)]
        );
        assert_eq!(rows(&slots, 55, 92), [(60, 7), (70, 1), (90, 4)]);
        // Removing a row the key does not hold changes nothing.
        assert!(!slots.remove((60, 99)));
        for slot in [(70, 1), (50, 0), (95, 6), (60, 7), (50, 3)] {
            assert!(!slots.remove(slot));
        }
        assert!(slots.remove((90, 4)), "the last row leaves the key empty");
        let mut one = Slots::One((5, 1));
        assert!(!one.remove((5, 2)));
        assert!(one.remove((5, 1)));
    }

    #[test]
    fn the_index_forgets_rows_by_state_key_and_drops_empty_keys() {
        let mut index = PartIndex::default();
        let (a, b) = (b"key a".as_slice(), b"key b".as_slice());
        for (key, slot) in [(a, (1, 0)), (b, (2, 1)), (a, (3, 2))] {
            index.add(key_hash(key), slot);
        }
        let find = |index: &PartIndex, key: &[u8]| -> Vec<Slot> {
            let hash = key_hash(key);
            index
                .keys
                .find(hash, |k| k.hash == hash)
                .map(|rows| rows.slots.between(i64::MIN, i64::MAX).collect())
                .unwrap_or_default()
        };
        assert_eq!(find(&index, a), [(1, 0), (3, 2)]);
        index.forget(&JoinSide::state_key(a, (1, 0)));
        assert_eq!(find(&index, a), [(3, 2)]);
        index.forget(&JoinSide::state_key(b, (2, 1)));
        assert_eq!(index.keys.len(), 1);
        // Another key's state key with the same slot is not this row.
        index.forget(&JoinSide::state_key(b, (3, 2)));
        assert_eq!(find(&index, a), [(3, 2)]);
        index.forget(&JoinSide::state_key(a, (3, 2)));
        assert!(index.keys.is_empty());
    }
}
