//! Reading the state of a query's stateful operators from its checkpoint,
//! as Spark's state data source (`spark.read.format("statestore")`) does:
//! [`state_stores`] lists every state store, [`read_state`] reads one
//! store's entries as a DataFrame.
//!
//! **Stores.** Stateful operator `n` keeps its state in `state/<n>/` of the
//! checkpoint: one store in that directory (an aggregation, a
//! deduplication), or several in subdirectories (a stream–stream join's
//! `left` and `right`; a stateful processor's one per state variable,
//! named after it, and `_timers`). A store is a directory holding a
//! `_metadata` file; it is named by its path relative to `state/<n>` (`""`
//! for the operator's one store).
//!
//! **Batches.** Batch `N` commits version `N + 1` of every store, so the
//! state "at batch `N`" is what the operators held after batch `N`
//! committed. Only committed batches can be read (by default the last one,
//! the highest entry of the commit log), and only while the store still
//! retains their version: a query purges old versions as it runs (see
//! [`QueryOptions::min_state_versions_to_retain`](crate::QueryOptions)),
//! and reading a purged batch fails naming the oldest batch still
//! readable.
//!
//! **Entries.** A store's keys and values are bytes in arrow's row format
//! ([`RowConverter`]) of the key and value columns its `_metadata` records;
//! they are decoded back into those columns. A stream–stream join's side
//! lays its entries out differently, and is recognised by its recorded
//! columns (keys end with `time_ms: Int64` and `row_number: UInt64`, values
//! start with `matched: Boolean`, the last 16 key bytes left out of the
//! partition): its key is the join key in row format followed by the row's
//! time and number as big-endian integers, its value a matched flag byte
//! followed by the row's columns in row format (see the join's `side.rs`).
//! Every decoded entry is encoded again and compared with the stored bytes,
//! so bytes of another layout are an error naming the store, never wrong
//! rows.
//!
//! **Read-only.** Nothing is locked, created or rewritten: the checkpoint's
//! metadata, its commit log, and each store's `_metadata`, commit file and
//! data files are read through their own checked decoders (a damaged file
//! is a [`TidemillError::Checkpoint`] naming it), so the state of a query
//! that is running can be read.
//!
//! ```no_run
//! # async fn demo() -> tidemill_engine::Result<()> {
//! use datafusion::prelude::SessionContext;
//! use tidemill_engine::{Location, read_state, state_stores};
//!
//! let ctx = SessionContext::new();
//! let checkpoint = Location::resolve("chk/per_minute", &ctx.runtime_env())?;
//! for store in state_stores(&checkpoint, None).await? {
//!     println!("operator {} store '{}': {} rows", store.operator, store.store, store.rows);
//! }
//! // The aggregation's groups after batch 3.
//! let groups = read_state(&ctx, &checkpoint, 0, None, Some(3)).await?;
//! groups.show().await?;
//! # Ok(()) }
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StructArray, TimestampMillisecondArray,
    UInt32Array, UInt64Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use arrow::row::{RowConverter, SortField};
use datafusion::prelude::{DataFrame, SessionContext};
use tidemill_state::{CheckpointDir, StateError, StateSchema, StateStore};

use crate::checkpoint::{Metadata, commit_log, read_metadata};
use crate::{Location, Result, TidemillError};

/// The name of a store's metadata file: a directory holding one is a store.
const STORE_METADATA: &str = "_metadata";

/// Bytes at the end of a join side's state key: the row's time and number.
const JOIN_KEY_SUFFIX: usize = 16;

/// One state store of a checkpoint, as [`state_stores`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateStoreInfo {
    /// The stateful operator's number: its state is in `state/<operator>/`.
    pub operator: usize,
    /// The operator's description, as the checkpoint's metadata records it
    /// (absent in checkpoints written before it was recorded).
    pub description: Option<String>,
    /// The store's name: its directory relative to `state/<operator>/`
    /// (`left` or `right` for a join's side), `""` for the operator's one
    /// store.
    pub store: String,
    /// The columns its keys encode, as [`read_state`] returns them in
    /// `key`.
    pub key_columns: Fields,
    /// The columns its values encode, as [`read_state`] returns them in
    /// `value`.
    pub value_columns: Fields,
    /// Its partition count.
    pub partitions: usize,
    /// Live entries after the batch read.
    pub rows: u64,
    /// The batch whose state is described.
    pub batch: u64,
    /// The store version that batch committed (`batch + 1`).
    pub version: u64,
}

/// Lists every state store of the checkpoint at `checkpoint`, operator by
/// operator (stores by name within one), as of batch `batch` (`None`: the
/// last committed batch). Reads only (see the [module docs](self)).
///
/// Fails with [`TidemillError::Config`] if `checkpoint` is not a query's
/// checkpoint (it has no `metadata` file), no batch has committed yet,
/// `batch` has not committed, or a store no longer retains `batch` (the
/// message names the oldest batch it can be read at); with
/// [`TidemillError::Checkpoint`] naming the file if a file is damaged.
pub async fn state_stores(
    checkpoint: &Location,
    batch: Option<u64>,
) -> Result<Vec<StateStoreInfo>> {
    let opened = Opened::at(checkpoint, batch).await?;
    let mut infos = Vec::new();
    for operator in opened.operators().await? {
        for store in opened.stores(operator).await? {
            let dir = opened.store_dir(operator, &store);
            let info = match StateStore::inspect(&dir, opened.version()).await {
                Ok(info) => info,
                Err(e) => return Err(opened.read_failed(operator, &store, &dir, e).await),
            };
            let schema = StateStore::read_schema(&dir, opened.version()).await?;
            infos.push(StateStoreInfo {
                operator,
                description: opened.description(operator),
                store,
                key_columns: schema.key.fields().clone(),
                value_columns: schema.value.fields().clone(),
                partitions: info.num_partitions,
                rows: info.rows,
                batch: opened.batch,
                version: opened.version(),
            });
        }
    }
    Ok(infos)
}

/// Reads the entries of one state store of the checkpoint at `checkpoint`
/// as of batch `batch` (`None`: the last committed batch): the store
/// `store` of operator `operator`, which may be left out when the operator
/// has one store. Reads only (see the [module docs](self)); registers
/// nothing in `ctx` (the DataFrame reads one in-memory batch).
///
/// The DataFrame has one row per live entry, sorted by partition, then by
/// the key's bytes, and the columns:
///
/// - `partition` (`UInt32`): the store partition holding the entry;
/// - `key` (`Struct` of the store's key columns, as
///   [`StateStoreInfo::key_columns`]), left out when the store's keys have
///   no column (an aggregation without `GROUP BY`);
/// - `value` (`Struct` of the value columns), left out when the values
///   have no column (a deduplication keeps keys only);
/// - `expires_at` (`Timestamp(ms)`, nullable): when the entry expires (an
///   aggregation's window closes, a deduplicated key or a join's row
///   leaves the state), for stores whose entries have a time to live.
///
/// Fails as [`state_stores`] does, and with [`TidemillError::Config`] for
/// an operator the checkpoint has no state for, or a store the operator
/// does not have (or `store` left out while it has several); the message
/// lists what there is.
pub async fn read_state(
    ctx: &SessionContext,
    checkpoint: &Location,
    operator: usize,
    store: Option<&str>,
    batch: Option<u64>,
) -> Result<DataFrame> {
    let opened = Opened::at(checkpoint, batch).await?;
    let operators = opened.operators().await?;
    if !operators.contains(&operator) {
        return Err(TidemillError::Config(format!(
            "checkpoint {checkpoint} has no stateful operator {operator}; {}",
            opened.list_operators(&operators)
        )));
    }
    let stores = opened.stores(operator).await?;
    let name = match (store, stores.as_slice()) {
        (_, []) => {
            return Err(TidemillError::Config(format!(
                "{} of checkpoint {checkpoint} has no state store yet",
                opened.operator_label(operator)
            )));
        }
        (None, [only]) => only.clone(),
        (Some(name), _) if stores.iter().any(|s| s == name) => name.to_string(),
        (None, _) => {
            return Err(TidemillError::Config(format!(
                "{} of checkpoint {checkpoint} has several state stores: {}; name one",
                opened.operator_label(operator),
                quoted(&stores)
            )));
        }
        (Some(name), [only]) if only.is_empty() => {
            return Err(TidemillError::Config(format!(
                "{} of checkpoint {checkpoint} has no state store '{name}': it has one store, \
                 read by naming none",
                opened.operator_label(operator),
            )));
        }
        (Some(name), _) => {
            return Err(TidemillError::Config(format!(
                "{} of checkpoint {checkpoint} has no state store '{name}'; its stores: {}",
                opened.operator_label(operator),
                quoted(&stores)
            )));
        }
    };
    let dir = opened.store_dir(operator, &name);
    let entries = match StateStore::read_entries(&dir, opened.version()).await {
        Ok(entries) => entries,
        Err(e) => return Err(opened.read_failed(operator, &name, &dir, e).await),
    };
    let mut rows: Vec<Entry<'_>> = entries
        .iter()
        .map(|(partition, e)| Entry {
            partition: partition as u32,
            key: e.key,
            value: e.value,
            expires_at_ms: e.expires_at_ms,
        })
        .collect();
    rows.sort_unstable_by(|a, b| (a.partition, a.key).cmp(&(b.partition, b.key)));
    let batch = entries_batch(&entries.schema, &rows).map_err(|reason| {
        TidemillError::Checkpoint(StateError::Corrupt {
            path: dir.path(STORE_METADATA),
            reason: format!(
                "the entries of {} at batch {} cannot be decoded as the columns recorded here: \
                 {reason}",
                opened.store_label(operator, &name),
                opened.batch
            ),
        })
    })?;
    ctx.read_batch(batch)
        .map_err(|e| TidemillError::datafusion("reading the state entries", e))
}

/// A checkpoint opened for reading at one committed batch.
struct Opened {
    location: String,
    dir: CheckpointDir,
    metadata: Metadata,
    batch: u64,
}

impl Opened {
    /// Reads the checkpoint's metadata and finds the batch to read: `batch`
    /// if it has committed, else the last committed one.
    async fn at(checkpoint: &Location, batch: Option<u64>) -> Result<Self> {
        let dir = checkpoint.dir();
        let Some(metadata) = read_metadata(&dir).await? else {
            return Err(TidemillError::Config(format!(
                "{checkpoint} is not a Tidemill checkpoint: it has no metadata file"
            )));
        };
        let Some(&last) = commit_log(&dir).ids().await?.last() else {
            return Err(TidemillError::Config(format!(
                "checkpoint {checkpoint} has no committed batch yet: there is no state to read"
            )));
        };
        let batch = match batch {
            None => last,
            Some(b) if b <= last => b,
            Some(b) => {
                return Err(TidemillError::Config(format!(
                    "batch {b} of checkpoint {checkpoint} has not committed: the last committed \
                     batch is {last}"
                )));
            }
        };
        Ok(Self {
            location: checkpoint.to_string(),
            dir,
            metadata,
            batch,
        })
    }

    /// The store version the batch committed.
    fn version(&self) -> u64 {
        self.batch + 1
    }

    /// `state/<operator>`.
    fn operator_dir(&self, operator: usize) -> CheckpointDir {
        self.dir.child("state").child(&operator.to_string())
    }

    /// The directory of store `store` of `operator`.
    fn store_dir(&self, operator: usize, store: &str) -> CheckpointDir {
        store
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.operator_dir(operator), |dir, part| dir.child(part))
    }

    fn description(&self, operator: usize) -> Option<String> {
        self.metadata.operators.as_ref()?.get(operator).cloned()
    }

    /// `operator 2 (StreamingJoin …)`.
    fn operator_label(&self, operator: usize) -> String {
        match self.description(operator) {
            Some(d) => format!("operator {operator} ({d})"),
            None => format!("operator {operator}"),
        }
    }

    /// `store 'left' of operator 2 (…)`, or the operator's label for its
    /// one store.
    fn store_label(&self, operator: usize, store: &str) -> String {
        match store {
            "" => format!("the state of {}", self.operator_label(operator)),
            _ => format!("store '{store}' of {}", self.operator_label(operator)),
        }
    }

    /// `its operators: 0 (…), 1 (…)`.
    fn list_operators(&self, operators: &[usize]) -> String {
        match operators {
            [] => "it has no stateful operators".into(),
            _ => format!(
                "its operators: {}",
                operators
                    .iter()
                    .map(|&n| match self.description(n) {
                        Some(d) => format!("{n} ({d})"),
                        None => n.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The operators the metadata records and those with a directory
    /// under `state/`, ascending.
    async fn operators(&self) -> Result<Vec<usize>> {
        let recorded = self.metadata.operators.as_ref().map_or(0, Vec::len);
        let mut numbers: Vec<usize> = (0..recorded).collect();
        for name in subdirectories(&self.dir.child("state")).await? {
            if let Ok(n) = name.parse::<usize>()
                && !numbers.contains(&n)
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The stores of `operator`: the directories under `state/<operator>`
    /// (itself included) that hold a `_metadata` file, by name. The
    /// directories of a store (its partitions') are not searched.
    async fn stores(&self, operator: usize) -> Result<Vec<String>> {
        let mut stores = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(name) = pending.pop() {
            let dir = self.store_dir(operator, &name);
            if dir.exists(STORE_METADATA).await? {
                stores.push(name);
                continue;
            }
            for child in subdirectories(&dir).await? {
                pending.push(match name.as_str() {
                    "" => child,
                    _ => format!("{name}/{child}"),
                });
            }
        }
        stores.sort();
        Ok(stores)
    }

    /// The error for a store that could not be read at the batch: the
    /// batch was purged (its version's commit file is gone) and which
    /// batch is the oldest still readable, or `error` itself.
    async fn read_failed(
        &self,
        operator: usize,
        store: &str,
        dir: &CheckpointDir,
        error: StateError,
    ) -> TidemillError {
        let Ok(retained) = StateStore::retained_versions(dir).await else {
            return error.into();
        };
        if retained.contains(&self.version()) {
            return error.into();
        }
        match retained.first() {
            Some(&oldest) if oldest > self.version() => TidemillError::Config(format!(
                "batch {} of checkpoint {} can no longer be read: {} has been purged up to \
                 it; the oldest batch it can be read at is {}",
                self.batch,
                self.location,
                self.store_label(operator, store),
                oldest - 1
            )),
            _ => error.into(),
        }
    }
}

/// The names of the directories directly in `dir` (none if it does not
/// exist).
async fn subdirectories(dir: &CheckpointDir) -> Result<Vec<String>> {
    let listing = match dir.store().list_with_delimiter(Some(dir.root())).await {
        Ok(listing) => listing,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(source) => {
            return Err(TidemillError::Checkpoint(StateError::Io {
                path: dir.root().clone(),
                source,
            }));
        }
    };
    let mut names: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|prefix| prefix.filename().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// `'a', 'b'`.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One entry as read, borrowing the store's bytes.
struct Entry<'a> {
    partition: u32,
    key: &'a [u8],
    value: &'a [u8],
    expires_at_ms: Option<i64>,
}

/// How a store's key and value bytes encode its recorded columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// Keys and values are rows (arrow's row format) of all their columns.
    Rows,
    /// A stream–stream join's side: the key is a row of the join key
    /// columns followed by `time_ms` and `row_number` as big-endian
    /// integers; the value is the `matched` flag (a byte) followed by a row
    /// of the other value columns.
    JoinSide,
}

impl Encoding {
    fn of(schema: &StateSchema) -> Self {
        let keys = schema.key.fields();
        let values = schema.value.fields();
        let is = |field: Option<&Arc<Field>>, name: &str, data_type: &DataType| {
            field.is_some_and(|f| f.name() == name && f.data_type() == data_type)
        };
        let join = schema.partition_suffix == JOIN_KEY_SUFFIX
            && keys.len() >= 2
            && is(keys.get(keys.len() - 2), "time_ms", &DataType::Int64)
            && is(keys.last(), "row_number", &DataType::UInt64)
            && is(values.first(), "matched", &DataType::Boolean);
        match join {
            true => Self::JoinSide,
            false => Self::Rows,
        }
    }
}

/// The batch of `entries` (sorted) of a store laid out as `schema`; `Err`
/// says why the bytes do not decode as its columns.
fn entries_batch(schema: &StateSchema, entries: &[Entry<'_>]) -> Result<RecordBatch, String> {
    let keys: Vec<&[u8]> = entries.iter().map(|e| e.key).collect();
    let values: Vec<&[u8]> = entries.iter().map(|e| e.value).collect();
    let (key_columns, value_columns) = match Encoding::of(schema) {
        Encoding::Rows => (
            decode_rows(schema.key.fields(), &keys).map_err(|e| format!("keys: {e}"))?,
            decode_rows(schema.value.fields(), &values).map_err(|e| format!("values: {e}"))?,
        ),
        Encoding::JoinSide => (
            decode_join_keys(schema.key.fields(), &keys).map_err(|e| format!("keys: {e}"))?,
            decode_join_values(schema.value.fields(), &values)
                .map_err(|e| format!("values: {e}"))?,
        ),
    };
    let mut fields = vec![Field::new("partition", DataType::UInt32, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt32Array::from_iter_values(
        entries.iter().map(|e| e.partition),
    ))];
    for (name, recorded, decoded) in [
        ("key", schema.key.fields(), key_columns),
        ("value", schema.value.fields(), value_columns),
    ] {
        if recorded.is_empty() {
            continue;
        }
        let array = StructArray::try_new(recorded.clone(), decoded, None)
            .map_err(|e| format!("{name}s: {e}"))?;
        fields.push(Field::new(name, array.data_type().clone(), false));
        columns.push(Arc::new(array));
    }
    fields.push(Field::new(
        "expires_at",
        DataType::Timestamp(TimeUnit::Millisecond, None),
        true,
    ));
    columns.push(Arc::new(TimestampMillisecondArray::from_iter(
        entries.iter().map(|e| e.expires_at_ms),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Decodes `rows` (arrow's row format) as the columns `fields`, in the
/// recorded types; checks that encoding them again gives exactly `rows`.
fn decode_rows(fields: &Fields, rows: &[&[u8]]) -> Result<Vec<ArrayRef>, String> {
    if fields.is_empty() {
        return match rows.iter().position(|r| !r.is_empty()) {
            None => Ok(Vec::new()),
            Some(i) => Err(format!(
                "entry {i} holds {} bytes for no column",
                rows[i].len()
            )),
        };
    }
    let converter = RowConverter::new(
        fields
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(|e| e.to_string())?;
    let parser = converter.parser();
    // Bytes of another layout can make the decoder panic; that is an
    // error here, not a crash.
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        converter.convert_rows(rows.iter().map(|r| parser.parse(r)))
    }))
    .map_err(|_| "not arrow's row format of these columns".to_string())?
    .map_err(|e| e.to_string())?;
    // The recorded types (the row format gives a dictionary's values,
    // say).
    let columns = decoded
        .iter()
        .zip(fields.iter())
        .map(
            |(array, field)| match array.data_type() == field.data_type() {
                true => Ok(Arc::clone(array)),
                false => cast(array, field.data_type()).map_err(|e| e.to_string()),
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    let again = converter
        .convert_columns(&columns)
        .map_err(|e| e.to_string())?;
    if let Some(i) = (0..rows.len()).find(|&i| again.row(i).data() != rows[i]) {
        return Err(format!(
            "entry {i} is not arrow's row format of the columns {}",
            field_list(fields)
        ));
    }
    Ok(columns)
}

/// A join side's keys: the join key columns, `time_ms`, `row_number`.
fn decode_join_keys(fields: &Fields, keys: &[&[u8]]) -> Result<Vec<ArrayRef>, String> {
    let join_keys = Fields::from(&fields[..fields.len() - 2]);
    let mut prefixes = Vec::with_capacity(keys.len());
    let mut times = Vec::with_capacity(keys.len());
    let mut numbers = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let Some(at) = key.len().checked_sub(JOIN_KEY_SUFFIX) else {
            return Err(format!(
                "entry {i} has {} key bytes, fewer than a row's time and number",
                key.len()
            ));
        };
        let (prefix, suffix) = key.split_at(at);
        prefixes.push(prefix);
        times.push(i64::from_be_bytes(suffix[..8].try_into().expect("8 bytes")));
        numbers.push(u64::from_be_bytes(suffix[8..].try_into().expect("8 bytes")));
    }
    let mut columns = decode_rows(&join_keys, &prefixes)?;
    columns.push(Arc::new(Int64Array::from(times)));
    columns.push(Arc::new(UInt64Array::from(numbers)));
    Ok(columns)
}

/// A join side's values: `matched`, then the row's columns.
fn decode_join_values(fields: &Fields, values: &[&[u8]]) -> Result<Vec<ArrayRef>, String> {
    let row_fields = Fields::from(&fields[1..]);
    let mut matched = Vec::with_capacity(values.len());
    let mut rows = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        match value.split_first() {
            Some((&flag, row)) if flag <= 1 => {
                matched.push(flag == 1);
                rows.push(row);
            }
            _ => return Err(format!("entry {i} has no matched flag")),
        }
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(BooleanArray::from(matched))];
    columns.extend(decode_rows(&row_fields, &rows)?);
    Ok(columns)
}

/// `(symbol Utf8, n Int64)`.
fn field_list(fields: &Fields) -> String {
    let listed: Vec<String> = fields
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    format!("({})", listed.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{Int64Type, UInt64Type};
    use datafusion::physical_expr::expressions::Column;

    use super::*;
    use crate::join::SideLayout;

    fn rows_of(columns: &[ArrayRef]) -> Vec<Vec<u8>> {
        let converter = RowConverter::new(
            columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )
        .unwrap();
        let rows = converter.convert_columns(columns).unwrap();
        rows.iter().map(|r| r.data().to_vec()).collect()
    }

    fn schema(key: Vec<Field>, value: Vec<Field>) -> StateSchema {
        StateSchema::new(Arc::new(Schema::new(key)), Arc::new(Schema::new(value)))
    }

    #[test]
    fn rows_decode_into_key_and_value_structs() {
        let keys = rows_of(&[Arc::new(StringArray::from(vec!["a", "b"]))]);
        let values = rows_of(&[Arc::new(Int64Array::from(vec![Some(1), None]))]);
        let schema = schema(
            vec![Field::new("symbol", DataType::Utf8, false)],
            vec![Field::new("n", DataType::Int64, true)],
        );
        let entries: Vec<Entry> = (0..2)
            .map(|i| Entry {
                partition: 3,
                key: &keys[i],
                value: &values[i],
                expires_at_ms: (i == 0).then_some(60_000),
            })
            .collect();
        let batch = entries_batch(&schema, &entries).unwrap();
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["partition", "key", "value", "expires_at"]);
        let key = batch.column(1).as_struct();
        assert_eq!(key.column(0).as_string::<i32>().value(1), "b");
        let value = batch.column(2).as_struct();
        assert_eq!(value.column(0).as_primitive::<Int64Type>().value(0), 1);
        assert!(value.column(0).is_null(1));
        assert_eq!(
            batch
                .column(3)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .value(0),
            60_000
        );
        assert!(batch.column(3).is_null(1));
    }

    #[test]
    fn columnless_keys_and_values_are_left_out() {
        let schema = schema(vec![], vec![]);
        let entries = [Entry {
            partition: 0,
            key: &[],
            value: &[],
            expires_at_ms: None,
        }];
        let batch = entries_batch(&schema, &entries).unwrap();
        assert_eq!(batch.num_columns(), 2);
        assert_eq!(batch.num_rows(), 1);
        let stray = [Entry {
            partition: 0,
            key: &[],
            value: &[1],
            expires_at_ms: None,
        }];
        let err = entries_batch(&schema, &stray).unwrap_err();
        assert!(err.contains("values: entry 0 holds 1 bytes"), "{err}");
    }

    #[test]
    fn bytes_of_another_layout_are_an_error_not_rows() {
        let schema = schema(
            vec![Field::new("n", DataType::Int64, false)],
            vec![Field::new("s", DataType::Utf8, false)],
        );
        let good_key = rows_of(&[Arc::new(Int64Array::from(vec![7]))]);
        for (key, value) in [
            (
                &b"short"[..],
                &rows_of(&[Arc::new(StringArray::from(vec!["x"]))])[0][..],
            ),
            (&good_key[0][..], &[0xff, 0x00, 0x13][..]),
        ] {
            let entries = [Entry {
                partition: 0,
                key,
                value,
                expires_at_ms: None,
            }];
            assert!(entries_batch(&schema, &entries).is_err());
        }
    }

    /// The layout a join side's store records (from the join's own code)
    /// is recognised, and its entries decode.
    #[test]
    fn a_join_sides_layout_is_recognised_and_decoded() {
        let side = SideLayout {
            label: "left",
            schema: Arc::new(Schema::new(vec![
                Field::new("symbol", DataType::Utf8, true),
                Field::new("price", DataType::Float64, false),
            ])),
            keys: vec![Arc::new(Column::new("symbol", 0))],
            nulls_equal: false,
            range_column: None,
            expiry: None,
            event_time: None,
        };
        let layout = side.state_schema().unwrap();
        assert_eq!(Encoding::of(&layout), Encoding::JoinSide);
        assert_eq!(
            Encoding::of(&StateSchema::new(
                Arc::clone(&layout.key),
                Arc::clone(&layout.value)
            )),
            Encoding::Rows
        );

        let join_key = rows_of(&[Arc::new(StringArray::from(vec!["AAPL"]))]);
        let row = rows_of(&[
            Arc::new(StringArray::from(vec!["AAPL"])),
            Arc::new(arrow::array::Float64Array::from(vec![1.5])),
        ]);
        let mut key = join_key[0].clone();
        key.extend_from_slice(&10_000i64.to_be_bytes());
        key.extend_from_slice(&4u64.to_be_bytes());
        let mut value = vec![1u8];
        value.extend_from_slice(&row[0]);
        let entries = [Entry {
            partition: 1,
            key: &key,
            value: &value,
            expires_at_ms: Some(20_000),
        }];
        let batch = entries_batch(&layout, &entries).unwrap();
        let key = batch.column(1).as_struct();
        assert_eq!(key.column(0).as_string::<i32>().value(0), "AAPL");
        assert_eq!(key.column(1).as_primitive::<Int64Type>().value(0), 10_000);
        assert_eq!(key.column(2).as_primitive::<UInt64Type>().value(0), 4);
        let value = batch.column(2).as_struct();
        assert!(value.column(0).as_boolean().value(0));
        assert_eq!(value.column(1).as_string::<i32>().value(0), "AAPL");
        assert_eq!(
            value
                .column(2)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(0),
            1.5
        );
    }
}
