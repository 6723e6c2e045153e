//! Where a stateful processor's state variables and timers live: one state
//! store each, under `<checkpoint>/state/<operator>/<variable>` and
//! `…/_timers`, keyed by the grouping key's row bytes.
//!
//! - A value variable is one entry per grouping key.
//! - A list variable is one entry per element, keyed by the grouping key
//!   and the element's position (`index`, ascending in append order).
//! - A map variable is one entry per map key, keyed by the grouping key and
//!   the map key's columns.
//! - A timer is one entry keyed by the grouping key and its time
//!   (`timer_ms`), with an empty value.
//!
//! A key of several parts is the concatenation of each part's row bytes
//! (arrow's row format encodes columns one after another), so the store's
//! key schema, grouping columns then the part's, decodes it whole. Each
//! store with elements keeps an in-memory index from grouping key to its
//! parts (rebuilt from the entries when the store is opened), so that a
//! key's list, map or timers are found without scanning the store.
//! Entries of a variable with a time to live carry an expiry (processing
//! time) and are removed when a batch with a later clock begins.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, PrimitiveArray};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Int64Type, Schema, UInt64Type};
use arrow::row::{RowConverter, SortField};
use tidemill_state::{CheckpointDir, StateError, StateSchema, StateStore, StateStoreConfig};

use super::variables::{VariableKind, VariableSpec};
use crate::stateful::OperatorStore;
use crate::{Result, TidemillError};

/// The row encoding of one number (a list element's position, a timer's
/// time), as the keys that end with it hold it.
#[derive(Debug)]
struct NumberRows<T> {
    converter: RowConverter,
    _type: std::marker::PhantomData<T>,
}

impl<T: ArrowPrimitiveType> NumberRows<T> {
    fn new() -> Self {
        Self {
            converter: RowConverter::new(vec![SortField::new(T::DATA_TYPE)])
                .expect("a primitive type has a row format"),
            _type: std::marker::PhantomData,
        }
    }

    fn encode(&self, value: T::Native) -> Vec<u8> {
        let column: ArrayRef = Arc::new(PrimitiveArray::<T>::from_iter_values([value]));
        let rows = self
            .converter
            .convert_columns(&[column])
            .expect("a number encodes");
        rows.row(0).as_ref().to_vec()
    }

    fn decode(&self, bytes: &[u8]) -> T::Native {
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows([parser.parse(bytes)])
            .expect("a number decodes");
        columns[0].as_primitive::<T>().value(0)
    }
}

/// Opens a processor's store, refusing another layout with a message that
/// names `what`.
async fn open_store(
    dir: CheckpointDir,
    schema: StateSchema,
    version: u64,
    what: &str,
) -> Result<StateStore> {
    StateStore::open(dir.clone(), schema, StateStoreConfig::default(), version)
        .await
        .map_err(|e| layout_changed(&dir, what, e))
}

/// `e`, a store of the processor failing to open; a layout the store
/// refuses is said as the query's checkpoint not matching `what`.
fn layout_changed(dir: &CheckpointDir, what: &str, e: StateError) -> TidemillError {
    match e {
        StateError::Incompatible { .. } => TidemillError::CheckpointMismatch {
            location: dir.root().to_string(),
            reason: format!(
                "{what} no longer matches its saved state ({e}); restore the previous \
                 processor or start the query with a new checkpoint"
            ),
        },
        other => other.into(),
    }
}

/// Opens a state variable's store at `version`: created empty there if the
/// variable is new; if its saved values are of an earlier form of the
/// variable's type, every value is read in that form and written again in
/// the new one (pending, committed with the batch), when the change keeps
/// every value readable: fields added, nullable. Any other change is
/// refused, naming the variable and the field.
async fn open_variable(
    spec: &VariableSpec,
    dir: CheckpointDir,
    schema: StateSchema,
    version: u64,
) -> Result<StateStore> {
    let what = format!("state variable '{}'", spec.name);
    let refused = |reason: String| TidemillError::CheckpointMismatch {
        location: dir.root().to_string(),
        reason: format!(
            "{what} cannot read its saved state: {reason}. Restore the previous type, give the \
             variable a new name (its old state is then not read), or start the query with a \
             new checkpoint"
        ),
    };
    let (mut store, old) =
        StateStore::open_evolving(dir.clone(), schema, StateStoreConfig::default(), version)
            .await
            .map_err(|e| layout_changed(&dir, &what, e))?;
    let Some(old) = old else {
        return Ok(store);
    };
    let new = Arc::clone(spec.value.schema());
    evolution(&old, &new).map_err(refused)?;
    let entries: Vec<(Vec<u8>, Vec<u8>, Option<i64>)> = store
        .iter()
        .map(|e| (e.key.to_vec(), e.value.to_vec(), e.expires_at_ms))
        .collect();
    if !entries.is_empty() {
        let old_rows = RowConverter::new(
            old.fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| refused(e.to_string()))?;
        let parser = old_rows.parser();
        let columns = old_rows
            .convert_rows(entries.iter().map(|(_, v, _)| parser.parse(v)))
            .map_err(|e| refused(format!("a saved value does not decode: {e}")))?;
        let migrated: Vec<ArrayRef> = new
            .fields()
            .iter()
            .map(|f| match old.index_of(f.name()) {
                Ok(i) => Arc::clone(&columns[i]),
                Err(_) => arrow::array::new_null_array(f.data_type(), entries.len()),
            })
            .collect();
        let rows = spec
            .value
            .encode_columns(&migrated)
            .map_err(|e| refused(e.to_string()))?;
        for (i, (key, _, expires_at)) in entries.iter().enumerate() {
            let value = rows.row(i);
            match expires_at {
                Some(at) => store.put_with_ttl(key, value.as_ref(), *at),
                None => store.put(key, value.as_ref()),
            }
        }
    }
    tracing::info!(
        "{what}: {} saved values read in their earlier form and written in the new one",
        entries.len()
    );
    store.set_value_schema(new);
    Ok(store)
}

/// Whether values saved in `old` can be read as `new`: every saved field is
/// still there with its type (and nullable if it was), and every new field
/// is nullable (saved values have none). Otherwise what is wrong, naming
/// the field.
fn evolution(old: &Schema, new: &Schema) -> std::result::Result<(), String> {
    for field in old.fields() {
        match new.field_with_name(field.name()) {
            Err(_) => {
                return Err(format!(
                    "field '{}' ({}) of the saved values is not in the new type (renamed or \
                     removed)",
                    field.name(),
                    field.data_type()
                ));
            }
            Ok(now) if now.data_type() != field.data_type() => {
                return Err(format!(
                    "field '{}' changed type from {} to {}",
                    field.name(),
                    field.data_type(),
                    now.data_type()
                ));
            }
            Ok(now) if field.is_nullable() && !now.is_nullable() => {
                return Err(format!(
                    "field '{}' is no longer nullable, and saved values may be null",
                    field.name()
                ));
            }
            Ok(_) => {}
        }
    }
    for field in new.fields() {
        if old.field_with_name(field.name()).is_err() && !field.is_nullable() {
            return Err(format!(
                "new field '{}' ({}) is not nullable, and the saved values have none (make it \
                 an Option)",
                field.name(),
                field.data_type()
            ));
        }
    }
    Ok(())
}

/// The grouping key's row bytes, to each part of it a store holds
/// (positions, map keys or times, as row bytes), in order.
type GroupIndex = HashMap<Vec<u8>, BTreeSet<Vec<u8>>>;

/// One state variable's store.
#[derive(Debug)]
pub(crate) struct VariableStore {
    pub spec: VariableSpec,
    /// The store's layout.
    layout: StateSchema,
    pub state: OperatorStore,
    /// For lists and maps.
    index: GroupIndex,
    /// Decodes a whole key of a map (grouping columns, then the map key's).
    composite: Option<RowConverter>,
    /// Encodes grouping keys (for splitting a map's keys).
    group: Arc<RowConverter>,
    group_columns: usize,
    positions: NumberRows<UInt64Type>,
}

impl VariableStore {
    /// Opens `spec`'s store in `dir` at `version`; `group` encodes the
    /// grouping key's columns `key_fields`.
    pub async fn open(
        spec: VariableSpec,
        key_fields: &[Field],
        group: Arc<RowConverter>,
        dir: CheckpointDir,
        version: u64,
    ) -> Result<Self> {
        let mut fields = key_fields.to_vec();
        let mut composite = None;
        match spec.kind {
            VariableKind::Value => {}
            VariableKind::List => fields.push(Field::new("index", DataType::UInt64, false)),
            VariableKind::Map => {
                let map_key = spec.map_key.as_ref().expect("a map has a key codec");
                for f in map_key.schema().fields() {
                    let clash = key_fields.iter().any(|k| k.name() == f.name());
                    let name = if clash {
                        format!("{}#key", f.name())
                    } else {
                        f.name().clone()
                    };
                    fields.push(f.as_ref().clone().with_name(name));
                }
                composite = Some(
                    RowConverter::new(
                        fields
                            .iter()
                            .map(|f| SortField::new(f.data_type().clone()))
                            .collect(),
                    )
                    .map_err(|e| {
                        TidemillError::Config(format!("state variable '{}': {e}", spec.name))
                    })?,
                );
            }
        }
        let schema = StateSchema::new(
            Arc::new(Schema::new(fields)),
            Arc::clone(spec.value.schema()),
        );
        let store = open_variable(&spec, dir, schema.clone(), version).await?;
        let mut opened = Self {
            spec,
            layout: schema,
            state: OperatorStore::new(store),
            index: GroupIndex::new(),
            composite,
            group,
            group_columns: key_fields.len(),
            positions: NumberRows::new(),
        };
        opened.rebuild_index()?;
        Ok(opened)
    }

    /// Makes the store hold exactly version `version` (the batch about to
    /// run), reopening it if a failed attempt changed it.
    pub async fn begin_batch(&mut self, version: u64) -> Result<()> {
        if self.state.dirty || self.state.store.version() != version {
            let dir = self.state.store.dir().clone();
            let store = open_variable(&self.spec, dir, self.layout.clone(), version).await?;
            self.state = OperatorStore::new(store);
            self.rebuild_index()?;
        }
        self.state.dirty = false;
        Ok(())
    }

    /// Rebuilds the index from the entries (after opening or reopening).
    pub fn rebuild_index(&mut self) -> Result<()> {
        self.index.clear();
        if self.spec.kind == VariableKind::Value {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = self.state.store.iter().map(|e| e.key.to_vec()).collect();
        for key in keys {
            let (group, part) = self.split(&key)?;
            self.index.entry(group).or_default().insert(part);
        }
        Ok(())
    }

    /// A whole key's grouping key and part.
    fn split(&self, key: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let group_len = match (&self.spec.kind, &self.composite) {
            (VariableKind::List, _) => key.len() - POSITION_BYTES,
            (VariableKind::Map, Some(composite)) => {
                let parser = composite.parser();
                let columns = composite
                    .convert_rows([parser.parse(key)])
                    .map_err(|e| self.corrupt(e))?;
                let group = self
                    .group
                    .convert_columns(&columns[..self.group_columns])
                    .map_err(|e| self.corrupt(e))?;
                group.row(0).as_ref().len()
            }
            _ => key.len(),
        };
        Ok((key[..group_len].to_vec(), key[group_len..].to_vec()))
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> TidemillError {
        TidemillError::Internal(format!(
            "state variable '{}': a stored key does not decode: {e}",
            self.spec.name
        ))
    }

    /// The expiry of an entry written at processing time `now_ms`.
    fn expiry(&self, now_ms: i64) -> Option<i64> {
        self.spec.ttl_ms.map(|ttl| now_ms.saturating_add(ttl))
    }

    fn put(&mut self, key: &[u8], value: &[u8], now_ms: i64) {
        self.state.dirty = true;
        match self.expiry(now_ms) {
            Some(at) => self.state.store.put_with_ttl(key, value, at),
            None => self.state.store.put(key, value),
        }
    }

    /// How many entries the variable holds.
    pub fn len(&self) -> usize {
        self.state.store.len()
    }

    /// Removes the entries whose time to live ended at `now_ms`; returns
    /// how many.
    pub fn remove_expired(&mut self, now_ms: i64) -> Result<usize> {
        if self.spec.ttl_ms.is_none() {
            return Ok(0);
        }
        let taken = self.state.store.take_expired(now_ms);
        if taken.is_empty() {
            return Ok(0);
        }
        self.state.dirty = true;
        if self.spec.kind != VariableKind::Value {
            for (key, _) in taken.iter() {
                let (group, part) = self.split(key)?;
                self.unindex(&group, &part);
            }
        }
        Ok(taken.len())
    }

    fn unindex(&mut self, group: &[u8], part: &[u8]) {
        if let Some(parts) = self.index.get_mut(group) {
            parts.remove(part);
            if parts.is_empty() {
                self.index.remove(group);
            }
        }
    }

    // Values.

    pub fn value(&self, group: &[u8]) -> Option<&[u8]> {
        self.state.store.get(group)
    }

    pub fn set_value(&mut self, group: &[u8], value: &[u8], now_ms: i64) {
        self.put(group, value, now_ms);
    }

    /// The values of `groups` (`None` for a key without one), looked up
    /// together (on several threads when there are many).
    pub fn values(&self, groups: &[&[u8]]) -> Vec<Option<&[u8]>> {
        self.state.store.get_many(groups)
    }

    /// Sets each `(group, value)` of `entries`, together (on several
    /// threads when there are many).
    pub fn set_values(&mut self, entries: &[(&[u8], &[u8])], now_ms: i64) {
        if entries.is_empty() {
            return;
        }
        self.state.dirty = true;
        let expiry = self.expiry(now_ms);
        let entries: Vec<(&[u8], &[u8], Option<i64>)> =
            entries.iter().map(|(k, v)| (*k, *v, expiry)).collect();
        self.state.store.put_many(&entries);
    }

    // Lists and maps.

    /// The parts and values of `group`'s elements, in order.
    pub fn elements(&self, group: &[u8]) -> Vec<(&[u8], &[u8])> {
        let Some(parts) = self.index.get(group) else {
            return Vec::new();
        };
        let mut key = group.to_vec();
        parts
            .iter()
            .filter_map(|part| {
                key.truncate(group.len());
                key.extend_from_slice(part);
                let value = self.state.store.get(&key)?;
                Some((part.as_slice(), value))
            })
            .collect()
    }

    /// Appends `values` to `group`'s list.
    pub fn append(&mut self, group: &[u8], values: &[Vec<u8>], now_ms: i64) {
        let next = self
            .index
            .get(group)
            .and_then(|parts| parts.last())
            .map(|last| self.positions.decode(last) + 1)
            .unwrap_or(0);
        for (i, value) in values.iter().enumerate() {
            let part = self.positions.encode(next + i as u64);
            let mut key = group.to_vec();
            key.extend_from_slice(&part);
            self.put(&key, value, now_ms);
            self.index.entry(group.to_vec()).or_default().insert(part);
        }
    }

    /// The value of `group`'s map key `part`.
    pub fn entry(&self, group: &[u8], part: &[u8]) -> Option<&[u8]> {
        let mut key = group.to_vec();
        key.extend_from_slice(part);
        self.state.store.get(&key)
    }

    /// Sets `group`'s map key `part` to `value`.
    pub fn set_entry(&mut self, group: &[u8], part: &[u8], value: &[u8], now_ms: i64) {
        let mut key = group.to_vec();
        key.extend_from_slice(part);
        self.put(&key, value, now_ms);
        self.index
            .entry(group.to_vec())
            .or_default()
            .insert(part.to_vec());
    }

    /// Removes `group`'s map key `part`; returns whether it was there.
    pub fn remove_entry(&mut self, group: &[u8], part: &[u8]) -> bool {
        let mut key = group.to_vec();
        key.extend_from_slice(part);
        let removed = self.state.store.remove(&key);
        if removed {
            self.state.dirty = true;
            self.unindex(group, part);
        }
        removed
    }

    /// Removes all of `group`'s state in this variable.
    pub fn clear(&mut self, group: &[u8]) {
        if self.spec.kind == VariableKind::Value {
            if self.state.store.remove(group) {
                self.state.dirty = true;
            }
            return;
        }
        let Some(parts) = self.index.remove(group) else {
            return;
        };
        let mut key = group.to_vec();
        for part in parts {
            key.truncate(group.len());
            key.extend_from_slice(&part);
            self.state.store.remove(&key);
        }
        self.state.dirty = true;
    }

    /// Whether `group` holds anything in this variable.
    pub fn exists(&self, group: &[u8]) -> bool {
        match self.spec.kind {
            VariableKind::Value => self.state.store.get(group).is_some(),
            _ => self.index.contains_key(group),
        }
    }
}

/// The bytes of a row-encoded `u64` or `i64`: a validity byte and eight.
const POSITION_BYTES: usize = 9;

/// A processor's timers: per grouping key, the times at which its timer
/// handler is called.
#[derive(Debug)]
pub(crate) struct TimerStore {
    pub state: OperatorStore,
    by_group: HashMap<Vec<u8>, BTreeSet<i64>>,
    by_time: BTreeSet<(i64, Vec<u8>)>,
    times: NumberRows<Int64Type>,
}

impl TimerStore {
    /// Opens the timers in `dir` at `version`, for grouping keys of
    /// columns `key_fields`.
    pub async fn open(key_fields: &[Field], dir: CheckpointDir, version: u64) -> Result<Self> {
        let mut fields = key_fields.to_vec();
        fields.push(Field::new("timer_ms", DataType::Int64, false));
        let schema = StateSchema::new(
            Arc::new(Schema::new(fields)),
            Arc::new(Schema::new(Vec::<Field>::new())),
        );
        let store = open_store(dir, schema, version, "the processor's timers").await?;
        let mut timers = Self {
            state: OperatorStore::new(store),
            by_group: HashMap::new(),
            by_time: BTreeSet::new(),
            times: NumberRows::new(),
        };
        timers.rebuild_index();
        Ok(timers)
    }

    /// Rebuilds the indexes from the entries.
    pub fn rebuild_index(&mut self) {
        self.by_group.clear();
        self.by_time.clear();
        let keys: Vec<Vec<u8>> = self.state.store.iter().map(|e| e.key.to_vec()).collect();
        for key in keys {
            let split = key.len() - POSITION_BYTES;
            let time = self.times.decode(&key[split..]);
            self.index(key[..split].to_vec(), time);
        }
    }

    fn index(&mut self, group: Vec<u8>, time: i64) {
        self.by_group.entry(group.clone()).or_default().insert(time);
        self.by_time.insert((time, group));
    }

    fn key(&self, group: &[u8], time: i64) -> Vec<u8> {
        let mut key = group.to_vec();
        key.extend_from_slice(&self.times.encode(time));
        key
    }

    /// Registers a timer at `time` for `group` (once: registering it again
    /// changes nothing); returns whether it is new.
    pub fn register(&mut self, group: &[u8], time: i64) -> bool {
        if self.contains(group, time) {
            return false;
        }
        let key = self.key(group, time);
        self.state.store.put(&key, &[]);
        self.state.dirty = true;
        self.index(group.to_vec(), time);
        true
    }

    /// Deletes `group`'s timer at `time`; returns whether there was one.
    pub fn delete(&mut self, group: &[u8], time: i64) -> bool {
        if !self.contains(group, time) {
            return false;
        }
        let key = self.key(group, time);
        self.state.store.remove(&key);
        self.state.dirty = true;
        if let Some(times) = self.by_group.get_mut(group) {
            times.remove(&time);
            if times.is_empty() {
                self.by_group.remove(group);
            }
        }
        self.by_time.remove(&(time, group.to_vec()));
        true
    }

    /// Whether `group` has a timer at `time`.
    pub fn contains(&self, group: &[u8], time: i64) -> bool {
        self.by_group
            .get(group)
            .is_some_and(|times| times.contains(&time))
    }

    /// `group`'s timers, earliest first.
    pub fn list(&self, group: &[u8]) -> Vec<i64> {
        self.by_group
            .get(group)
            .map(|times| times.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The timers at or before `time`, earliest first (by grouping key
    /// within one time).
    pub fn due(&self, time: i64) -> Vec<(i64, Vec<u8>)> {
        self.by_time
            .iter()
            .take_while(|(t, _)| *t <= time)
            .cloned()
            .collect()
    }

    /// How many timers there are.
    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    /// The earliest timer's time.
    pub fn next(&self) -> Option<i64> {
        self.by_time.first().map(|(t, _)| *t)
    }
}
