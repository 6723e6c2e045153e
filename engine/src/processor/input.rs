//! A batch's input as the processor's callbacks see it: grouped by key
//! once per batch ([`BatchInput`]), then handed out key by key as a
//! [`GroupKey`] and its [`KeyRows`], which borrow the grouped batch
//! instead of copying or slicing it for every key.

use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, PrimitiveArray, RecordBatch, UInt32Array,
};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::{DataFusionError, Result as DFResult};
use serde::de::DeserializeOwned;
use serde_arrow::utils::Item;

use super::ProcessorResult;

/// The grouping key a callback is called for: one row of the key columns.
///
/// Reading one column's value ([`GroupKey::primitive`],
/// [`GroupKey::string`]) costs nothing; [`GroupKey::batch`] and
/// [`GroupKey::column`] build a one-row batch the first time they are
/// called.
#[derive(Clone)]
pub struct GroupKey {
    /// The batch's keys, one row per key.
    keys: Arc<RecordBatch>,
    index: usize,
    row: OnceLock<RecordBatch>,
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GroupKey").field(&self.to_string()).finish()
    }
}

impl GroupKey {
    /// The key of one-row batch `row`.
    pub(crate) fn new(row: RecordBatch) -> Self {
        Self::at(Arc::new(row), 0)
    }

    /// Row `index` of `keys`.
    pub(crate) fn at(keys: Arc<RecordBatch>, index: usize) -> Self {
        Self {
            keys,
            index,
            row: OnceLock::new(),
        }
    }

    /// The key as a one-row batch of the key columns.
    pub fn batch(&self) -> &RecordBatch {
        self.row.get_or_init(|| self.keys.slice(self.index, 1))
    }

    /// The key column `name`, one row long.
    pub fn column(&self, name: &str) -> Option<&ArrayRef> {
        self.batch().column_by_name(name)
    }

    /// The value of key column `name`, of Arrow type `T` (e.g. `Int64Type`
    /// for an `Int64` column); `None` if it is null. An error if there is
    /// no such column or it is of another type.
    pub fn primitive<T: ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> ProcessorResult<Option<T::Native>> {
        let column = self.key_column(name)?;
        let values = column.as_primitive_opt::<T>().ok_or_else(|| {
            format!(
                "key column '{name}' is {}, not {}",
                column.data_type(),
                T::DATA_TYPE
            )
        })?;
        Ok(values
            .is_valid(self.index)
            .then(|| values.value(self.index)))
    }

    /// The value of string key column `name` (`Utf8`, `LargeUtf8` or
    /// `Utf8View`); `None` if it is null.
    pub fn string(&self, name: &str) -> ProcessorResult<Option<&str>> {
        let column = self.key_column(name)?;
        let i = self.index;
        if column.is_null(i) {
            return Ok(None);
        }
        Ok(Some(match column.data_type() {
            DataType::Utf8 => column.as_string::<i32>().value(i),
            DataType::LargeUtf8 => column.as_string::<i64>().value(i),
            DataType::Utf8View => column.as_string_view().value(i),
            other => return Err(format!("key column '{name}' is {other}, not a string").into()),
        }))
    }

    fn key_column(&self, name: &str) -> ProcessorResult<&ArrayRef> {
        column(&self.keys, name).ok_or_else(|| format!("no key column '{name}'").into())
    }

    /// The key as a Rust value: for one key column, its value's type (e.g.
    /// `String`, `i64`); for several, a struct with a field per column.
    pub fn decode<T: DeserializeOwned>(&self) -> ProcessorResult<T> {
        let row = self.batch();
        if row.num_columns() == 1 {
            let field = row.schema().field(0).clone().with_name("item");
            let item = RecordBatch::try_new(
                Arc::new(Schema::new(vec![field])),
                vec![Arc::clone(row.column(0))],
            )?;
            if let Ok(mut values) = serde_arrow::from_record_batch::<Vec<Item<T>>>(&item)
                && let Some(Item(value)) = values.pop()
            {
                return Ok(value);
            }
        }
        let mut values: Vec<T> = serde_arrow::from_record_batch(row)?;
        values
            .pop()
            .ok_or_else(|| "a grouping key has one row".into())
    }
}

impl fmt::Display for GroupKey {
    /// `name=value` per key column, comma-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = FormatOptions::default().with_null("null");
        let schema = self.keys.schema();
        for (i, (field, column)) in schema.fields().iter().zip(self.keys.columns()).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match ArrayFormatter::try_new(column.as_ref(), &options) {
                Ok(formatter) => write!(f, "{}={}", field.name(), formatter.value(self.index))?,
                Err(_) => write!(f, "{}=?", field.name())?,
            }
        }
        Ok(())
    }
}

/// One key's rows of a batch, given to
/// [`StatefulProcessor::handle_input_rows`](super::StatefulProcessor::handle_input_rows):
/// a range of the batch grouped by key.
///
/// It dereferences to a [`RecordBatch`] of those rows (built the first time
/// it is used), so `rows.num_rows()` or `rows.column_by_name("price")` work
/// as on any batch. [`KeyRows::primitive`] reads one column without
/// building the batch: the cheaper path when a processor is called for many
/// keys with a few rows each.
pub struct KeyRows<'a> {
    grouped: &'a RecordBatch,
    offset: usize,
    len: usize,
    batch: OnceLock<RecordBatch>,
}

impl fmt::Debug for KeyRows<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRows")
            .field("num_rows", &self.len)
            .finish()
    }
}

impl<'a> KeyRows<'a> {
    /// Rows `offset..offset + len` of `grouped`.
    pub(crate) fn new(grouped: &'a RecordBatch, offset: usize, len: usize) -> Self {
        Self {
            grouped,
            offset,
            len,
            batch: OnceLock::new(),
        }
    }

    /// The number of rows.
    pub fn num_rows(&self) -> usize {
        self.len
    }

    /// The rows as a record batch.
    pub fn batch(&self) -> &RecordBatch {
        self.batch
            .get_or_init(|| self.grouped.slice(self.offset, self.len))
    }

    /// Column `name` of the rows, of Arrow type `T` (e.g. `Float64Type`),
    /// as a view of the batch (nothing copied or counted). An error if
    /// there is no such column or it is of another type.
    pub fn primitive<T: ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> ProcessorResult<PrimitiveRows<'a, T>> {
        let column = self.whole_column(name)?;
        let array = column.as_primitive_opt::<T>().ok_or_else(|| {
            format!(
                "column '{name}' is {}, not {}",
                column.data_type(),
                T::DATA_TYPE
            )
        })?;
        Ok(PrimitiveRows {
            array,
            offset: self.offset,
            len: self.len,
        })
    }

    fn whole_column(&self, name: &str) -> ProcessorResult<&'a ArrayRef> {
        column(self.grouped, name).ok_or_else(|| format!("the input has no column '{name}'").into())
    }
}

impl std::ops::Deref for KeyRows<'_> {
    type Target = RecordBatch;

    fn deref(&self) -> &RecordBatch {
        self.batch()
    }
}

/// Column `name` of `batch`. Not `RecordBatch::column_by_name`, which
/// clones the schema's `Arc`: threads calling it per key for one batch
/// contend on that count.
fn column<'b>(batch: &'b RecordBatch, name: &str) -> Option<&'b ArrayRef> {
    let (index, _) = batch.schema_ref().column_with_name(name)?;
    Some(batch.column(index))
}

/// One primitive column of a key's rows ([`KeyRows::primitive`]): a view
/// of the batch, read in place.
#[derive(Debug, Clone, Copy)]
pub struct PrimitiveRows<'a, T: ArrowPrimitiveType> {
    array: &'a PrimitiveArray<T>,
    offset: usize,
    len: usize,
}

impl<'a, T: ArrowPrimitiveType> PrimitiveRows<'a, T> {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, one per row; a null row's value is unspecified (check
    /// [`is_null`](Self::is_null), or use [`iter`](Self::iter), if the
    /// column may hold nulls).
    pub fn values(&self) -> &'a [T::Native] {
        &self.array.values()[self.offset..self.offset + self.len]
    }

    /// Row `i`'s value (unspecified if it is null).
    pub fn value(&self, i: usize) -> T::Native {
        self.values()[i]
    }

    /// Whether row `i` is null.
    pub fn is_null(&self, i: usize) -> bool {
        self.array.is_null(self.offset + i)
    }

    /// The rows' values, `None` for nulls.
    pub fn iter(&self) -> impl Iterator<Item = Option<T::Native>> + 'a {
        let (array, offset) = (self.array, self.offset);
        (offset..offset + self.len).map(move |i| array.is_valid(i).then(|| array.value(i)))
    }

    /// The rows as an array of their own (a slice of the batch's).
    pub fn to_array(&self) -> PrimitiveArray<T> {
        self.array.slice(self.offset, self.len)
    }
}

/// A batch's rows grouped by key: sorted by key (rows of one key in input
/// order), with the range of each key and its row bytes, the state
/// stores' key.
pub(crate) struct BatchInput {
    /// The rows, sorted by key.
    pub grouped: RecordBatch,
    /// The distinct keys, in key order, as one batch of the key columns.
    pub keys: Arc<RecordBatch>,
    /// The start of each key's rows in `grouped`, and the row count at the
    /// end.
    starts: Vec<usize>,
    /// Every row's key bytes (input order) …
    rows: Rows,
    /// … and, per key, the input row that holds its bytes.
    firsts: Vec<u32>,
}

impl fmt::Debug for BatchInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchInput")
            .field("rows", &self.grouped.num_rows())
            .field("keys", &self.len())
            .finish()
    }
}

impl BatchInput {
    /// Groups `batch` by its columns `keys` (of `key_schema`, encoded by
    /// `converter`).
    pub fn new(
        batch: &RecordBatch,
        keys: &[String],
        key_schema: &SchemaRef,
        converter: &RowConverter,
    ) -> DFResult<Self> {
        let columns: Vec<ArrayRef> = keys
            .iter()
            .map(|k| {
                batch.column_by_name(k).cloned().ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "TransformWithState: the input has no column '{k}'"
                    ))
                })
            })
            .collect::<DFResult<_>>()?;
        let rows = converter.convert_columns(&columns)?;
        let order = key_order(&rows);
        let mut starts = Vec::new();
        let mut firsts = Vec::new();
        for (at, &row) in order.iter().enumerate() {
            if at == 0 || rows.row(row as usize) != rows.row(order[at - 1] as usize) {
                starts.push(at);
                firsts.push(row);
            }
        }
        starts.push(order.len());
        let first_rows = UInt32Array::from(firsts.clone());
        let keys = RecordBatch::try_new(
            Arc::clone(key_schema),
            columns
                .iter()
                .map(|c| arrow::compute::take(c.as_ref(), &first_rows, None))
                .collect::<Result<_, _>>()?,
        )?;
        let grouped = take_record_batch(batch, &UInt32Array::from(order))?;
        Ok(Self {
            grouped,
            keys: Arc::new(keys),
            starts,
            rows,
            firsts,
        })
    }

    /// The number of distinct keys.
    pub fn len(&self) -> usize {
        self.firsts.len()
    }

    /// The `i`th key (in key order), over `keys`: [`BatchInput::keys`]
    /// or a copy of it (a thread that makes many keys counts references to
    /// a copy of its own, not to the one every thread shares).
    pub fn key(&self, keys: &Arc<RecordBatch>, i: usize) -> GroupKey {
        GroupKey::at(Arc::clone(keys), i)
    }

    /// The `i`th key's rows.
    pub fn rows(&self, i: usize) -> KeyRows<'_> {
        let start = self.starts[i];
        KeyRows::new(&self.grouped, start, self.starts[i + 1] - start)
    }

    /// The `i`th key's row bytes.
    pub fn group(&self, i: usize) -> &[u8] {
        self.rows.row(self.firsts[i] as usize).data()
    }
}

/// The row numbers of `rows` in key order (the order of their bytes), rows
/// of equal keys in input order. Rows are compared by their first 16 bytes
/// as one number first, which settles most comparisons without a `memcmp`.
fn key_order(rows: &Rows) -> Vec<u32> {
    let mut order: Vec<(u128, u32)> = (0..rows.num_rows())
        .map(|i| {
            let bytes = rows.row(i).data();
            let mut prefix = [0u8; 16];
            let n = bytes.len().min(16);
            prefix[..n].copy_from_slice(&bytes[..n]);
            (u128::from_be_bytes(prefix), i as u32)
        })
        .collect();
    order.sort_unstable_by(|&(pa, a), &(pb, b)| {
        pa.cmp(&pb)
            .then_with(|| rows.row(a as usize).cmp(&rows.row(b as usize)))
            .then(a.cmp(&b))
    });
    order.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Int64Type};
    use arrow::row::SortField;

    fn batch(symbols: &[Option<&str>], values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("symbol", DataType::Utf8, true),
                Field::new("value", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(symbols.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    fn grouped(batch: &RecordBatch) -> BatchInput {
        let key_schema = Arc::new(Schema::new(vec![Field::new(
            "symbol",
            DataType::Utf8,
            true,
        )]));
        let converter = RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap();
        BatchInput::new(batch, &["symbol".to_string()], &key_schema, &converter).unwrap()
    }

    #[test]
    fn keys_come_in_key_order_with_their_rows_in_input_order() {
        // Long keys share their first 16 bytes, so the order needs more
        // than the prefix.
        let long_a = "a-very-long-symbol-name-1";
        let long_b = "a-very-long-symbol-name-2";
        let input = batch(
            &[
                Some("b"),
                Some(long_b),
                Some("a"),
                None,
                Some("b"),
                Some(long_a),
                Some("a"),
                Some(long_b),
            ],
            &[1, 2, 3, 4, 5, 6, 7, 8],
        );
        let groups = grouped(&input);
        let seen: Vec<(Option<String>, Vec<i64>)> = (0..groups.len())
            .map(|i| {
                let key = groups.key(&groups.keys, i);
                let rows = groups.rows(i);
                let values = rows.primitive::<Int64Type>("value").unwrap();
                assert_eq!(rows.num_rows(), values.len());
                assert_eq!(rows.batch().num_rows(), values.len());
                assert_eq!(values.to_array().values(), values.values());
                assert!(!values.is_null(0));
                assert_eq!(values.iter().flatten().count(), values.len());
                (
                    key.string("symbol").unwrap().map(str::to_string),
                    values.values().to_vec(),
                )
            })
            .collect();
        // Nulls sort first in the row format.
        assert_eq!(
            seen,
            vec![
                (None, vec![4]),
                (Some("a".into()), vec![3, 7]),
                (Some(long_a.into()), vec![6]),
                (Some(long_b.into()), vec![2, 8]),
                (Some("b".into()), vec![1, 5]),
            ]
        );
        // Each key's bytes are its rows' bytes, in the same order.
        for i in 1..groups.len() {
            assert!(groups.group(i - 1) < groups.group(i));
        }
    }

    #[test]
    fn a_key_reads_its_columns_and_names_a_wrong_one() {
        let input = batch(&[Some("x"), Some("y")], &[1, 2]);
        let groups = grouped(&input);
        let key = groups.key(&groups.keys, 1);
        assert_eq!(key.string("symbol").unwrap(), Some("y"));
        assert_eq!(key.to_string(), "symbol=y");
        assert_eq!(key.batch().num_rows(), 1);
        assert_eq!(key.decode::<String>().unwrap(), "y");
        let wrong = key.primitive::<Int64Type>("symbol").unwrap_err();
        assert!(wrong.to_string().contains("'symbol' is Utf8"), "{wrong}");
        let missing = key.string("nope").unwrap_err();
        assert!(missing.to_string().contains("'nope'"), "{missing}");
        let rows = groups.rows(1);
        let wrong = rows.primitive::<Int64Type>("symbol").unwrap_err();
        assert!(wrong.to_string().contains("'symbol' is Utf8"), "{wrong}");
        // As a record batch, through Deref.
        assert_eq!(rows.column_by_name("value").unwrap().len(), 1);
    }
}
