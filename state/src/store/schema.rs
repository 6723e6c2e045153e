//! What the key and value bytes of a state store encode, and how a change
//! of that layout is put into words.

use arrow_schema::{Schema, SchemaRef};

/// The layout of a state store's keys and values.
///
/// The store itself treats keys and values as opaque bytes; operators
/// encode them with arrow's row format
/// ([`RowConverter`](arrow::row::RowConverter)) from columns with these
/// schemas. The schemas are recorded in the store's `_metadata` so that a
/// query restarted with a different state layout is refused instead of
/// misreading the bytes (see [`StateStore::open`](super::StateStore::open)).
///
/// ```
/// use std::sync::Arc;
/// use arrow::datatypes::{DataType, Field, Schema};
/// use tidemill_state::StateSchema;
///
/// let schema = StateSchema::new(
///     Arc::new(Schema::new(vec![Field::new("symbol", DataType::Utf8, false)])),
///     Arc::new(Schema::new(vec![Field::new("sum", DataType::Int64, true)])),
/// );
/// assert_eq!(schema.key.field(0).name(), "symbol");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSchema {
    /// The columns the key bytes encode.
    pub key: SchemaRef,
    /// The columns the value bytes encode.
    pub value: SchemaRef,
    /// How many bytes at the end of every key do not decide its partition
    /// (0, the default: the whole key does). An operator whose keys are a
    /// group followed by a fixed-width suffix (a time, a sequence number)
    /// sets it to the suffix's width, so that all of a group's entries
    /// share a partition and the operator can work on the partitions
    /// independently. Recorded in the store's `_metadata` like the schemas.
    pub partition_suffix: usize,
}

impl StateSchema {
    /// A layout with the given key and value schemas, partitioned by the
    /// whole key.
    pub fn new(key: SchemaRef, value: SchemaRef) -> Self {
        Self {
            key,
            value,
            partition_suffix: 0,
        }
    }

    /// This layout with the last `bytes` of each key left out of its
    /// partition (see [`partition_suffix`](Self::partition_suffix)).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use arrow::datatypes::{DataType, Field, Schema};
    /// use tidemill_state::{StateSchema, partition_for_key};
    ///
    /// let key = Arc::new(Schema::new(vec![
    ///     Field::new("symbol", DataType::Utf8, false),
    ///     Field::new("seq", DataType::UInt64, false),
    /// ]));
    /// let value = Arc::new(Schema::new(vec![Field::new("price", DataType::Float64, true)]));
    /// let schema = StateSchema::new(key, value).with_partition_suffix(8);
    /// let mut entry = b"AAPL".to_vec();
    /// entry.extend_from_slice(&7u64.to_be_bytes());
    /// assert_eq!(schema.partition_key(&entry), b"AAPL");
    /// assert_eq!(
    ///     partition_for_key(schema.partition_key(&entry), 8),
    ///     partition_for_key(b"AAPL", 8)
    /// );
    /// ```
    pub fn with_partition_suffix(mut self, bytes: usize) -> Self {
        self.partition_suffix = bytes;
        self
    }

    /// The bytes of `key` that decide its partition: all but the last
    /// [`partition_suffix`](Self::partition_suffix) (none of a shorter key).
    pub fn partition_key<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        &key[..key.len().saturating_sub(self.partition_suffix)]
    }
}

/// Describes every difference between `old` and `new`, one sentence each,
/// naming the fields as `"<side> field '<name>'"`.
///
/// Field metadata and schema metadata are ignored: they do not change how
/// values are encoded.
pub(crate) fn schema_changes(side: &str, old: &Schema, new: &Schema) -> Vec<String> {
    let mut changes = Vec::new();
    for old_field in old.fields() {
        let name = old_field.name();
        let Ok(new_field) = new.field_with_name(name) else {
            changes.push(format!("{side} field '{name}' was removed"));
            continue;
        };
        if old_field.data_type() != new_field.data_type() {
            changes.push(format!(
                "{side} field '{name}' changed type from {} to {}",
                old_field.data_type(),
                new_field.data_type()
            ));
        }
        if old_field.is_nullable() != new_field.is_nullable() {
            let word = |nullable| if nullable { "nullable" } else { "non-nullable" };
            changes.push(format!(
                "{side} field '{name}' changed from {} to {}",
                word(old_field.is_nullable()),
                word(new_field.is_nullable())
            ));
        }
    }
    for new_field in new.fields() {
        if old.field_with_name(new_field.name()).is_err() {
            changes.push(format!("{side} field '{}' was added", new_field.name()));
        }
    }
    let names = |schema: &Schema| -> Vec<String> {
        schema.fields().iter().map(|f| f.name().clone()).collect()
    };
    if changes.is_empty() && names(old) != names(new) {
        changes.push(format!(
            "{side} fields were reordered from [{}] to [{}]",
            names(old).join(", "),
            names(new).join(", ")
        ));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};

    fn schema(fields: &[(&str, DataType, bool)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn names_each_change() {
        let old = schema(&[
            ("symbol", DataType::Utf8, false),
            ("sum", DataType::Int64, true),
            ("count", DataType::Int64, false),
        ]);
        let new = schema(&[
            ("sum", DataType::Float64, true),
            ("count", DataType::Int64, true),
            ("max", DataType::Int64, true),
        ]);
        assert_eq!(
            schema_changes("value", &old, &new),
            vec![
                "value field 'symbol' was removed",
                "value field 'sum' changed type from Int64 to Float64",
                "value field 'count' changed from non-nullable to nullable",
                "value field 'max' was added",
            ]
        );
    }

    #[test]
    fn same_schema_has_no_changes_and_order_matters() {
        let a = schema(&[("a", DataType::Utf8, false), ("b", DataType::Int32, true)]);
        assert!(schema_changes("key", &a, &a.clone()).is_empty());
        let swapped = schema(&[("b", DataType::Int32, true), ("a", DataType::Utf8, false)]);
        assert_eq!(
            schema_changes("key", &a, &swapped),
            vec!["key fields were reordered from [a, b] to [b, a]"]
        );
    }
}
