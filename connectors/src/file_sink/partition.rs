//! Hive-style partitioning of a files sink's output: which columns may
//! partition it, how a batch's rows are split by their values (arrow's sort
//! and partition kernels), and how a value is written in a directory name.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, partition, take_record_batch,
};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// The directory name of a null (or empty string) partition value, as Hive
/// and Spark write it.
pub(crate) const DEFAULT_PARTITION_NAME: &str = "__HIVE_DEFAULT_PARTITION__";

/// How a partition value is written as text: Spark's and Hive's form of
/// timestamps (`2024-01-01 10:00:00`, fractional seconds only when there
/// are any), the usual one of every other type. Arrow's cast from text
/// (`ScalarValue::try_from_string`) reads every one of them back.
const VALUE_FORMAT: FormatOptions<'static> = FormatOptions::new()
    .with_display_error(false)
    .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
    .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"));

/// A partition column the sink cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PartitionError {
    /// `partition_by` names a column the rows do not have.
    #[error("partition column '{column}' is not a column of the output; its columns: {available}")]
    UnknownColumn {
        /// The column named.
        column: String,
        /// The output's columns, comma-separated.
        available: String,
    },
    /// The column's type has no stable text form for a directory name.
    #[error(
        "partition column '{column}' has type {data_type}, which cannot partition output \
         (partition columns may be integers, booleans, strings, dates, timestamps or decimals)"
    )]
    UnsupportedType {
        /// The column named.
        column: String,
        /// Its type.
        data_type: DataType,
    },
    /// `partition_by` names a column twice.
    #[error("partition column '{0}' is named twice")]
    Duplicate(String),
    /// `partition_by` holds an empty name.
    #[error("a partition column name is empty")]
    EmptyName,
    /// Every column partitions, so the data files would have none.
    #[error(
        "every column of the output is a partition column ({columns}); the data files need at \
         least one other column"
    )]
    AllColumns {
        /// The partition columns, comma-separated.
        columns: String,
    },
}

/// Whether a column of this type can partition output: its values have one
/// text form that reads back as the same value. Not floating point (`0.1`
/// and `-0.0` do not survive the trip as Spark's readers infer them) and no
/// nested, binary or dictionary types.
pub(crate) fn can_partition(data_type: &DataType) -> bool {
    use DataType as T;
    matches!(
        data_type,
        T::Boolean
            | T::Int8
            | T::Int16
            | T::Int32
            | T::Int64
            | T::UInt8
            | T::UInt16
            | T::UInt32
            | T::UInt64
            | T::Utf8
            | T::LargeUtf8
            | T::Utf8View
            | T::Date32
            | T::Timestamp(_, _)
            | T::Decimal128(_, _)
            | T::Decimal256(_, _)
    )
}

/// The positions of the partition columns `columns` in `schema`, checked:
/// each names a column of `schema` whose type [can partition](can_partition),
/// none is named twice, and at least one column is left for the data files.
pub(crate) fn partition_indices(
    schema: &Schema,
    columns: &[String],
) -> Result<Vec<usize>, PartitionError> {
    let mut indices = Vec::with_capacity(columns.len());
    for column in columns {
        if column.is_empty() {
            return Err(PartitionError::EmptyName);
        }
        let Ok(index) = schema.index_of(column) else {
            let available: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(PartitionError::UnknownColumn {
                column: column.clone(),
                available: available.join(", "),
            });
        };
        if indices.contains(&index) {
            return Err(PartitionError::Duplicate(column.clone()));
        }
        let data_type = schema.field(index).data_type();
        if !can_partition(data_type) {
            return Err(PartitionError::UnsupportedType {
                column: column.clone(),
                data_type: data_type.clone(),
            });
        }
        indices.push(index);
    }
    if !indices.is_empty() && indices.len() == schema.fields().len() {
        return Err(PartitionError::AllColumns {
            columns: columns.join(", "),
        });
    }
    Ok(indices)
}

/// The rows of one partition of a batch.
#[derive(Debug)]
pub(crate) struct PartitionRows {
    /// The partition columns' values, in `partition_by` order, as text
    /// before escaping (`None`: null).
    pub values: Vec<Option<String>>,
    /// The partition's rows, without the partition columns.
    pub rows: RecordBatch,
}

/// Splits the rows of `batches` (of `schema`) by the values of the columns
/// at `indices` (at least one): one [`PartitionRows`] per distinct
/// combination of values (null being one value), ordered by the values
/// (nulls first), each partition's rows in their order in `batches`. No
/// partition when there are no rows.
///
/// The rows are sorted by the partition columns (and the row number, so
/// that equal keys keep their order) with `lexsort_to_indices`, and
/// `partition` finds the ranges of equal keys in the sorted rows.
pub(crate) fn split(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    indices: &[usize],
) -> Result<Vec<PartitionRows>, ArrowError> {
    let batch = concat_batches(schema, batches)?;
    let num_rows = batch.num_rows();
    if num_rows == 0 {
        return Ok(Vec::new());
    }
    let row_count = u32::try_from(num_rows).map_err(|_| {
        ArrowError::ComputeError(format!(
            "a batch of {num_rows} rows is too large to partition (at most {} rows)",
            u32::MAX
        ))
    })?;
    let mut sort_columns: Vec<SortColumn> = indices
        .iter()
        .map(|&i| SortColumn {
            values: Arc::clone(batch.column(i)),
            options: None,
        })
        .collect();
    sort_columns.push(SortColumn {
        values: Arc::new(UInt32Array::from_iter_values(0..row_count)),
        options: None,
    });
    let order = lexsort_to_indices(&sort_columns, None)?;
    let sorted = take_record_batch(&batch, &order)?;
    let keys: Vec<ArrayRef> = indices
        .iter()
        .map(|&i| Arc::clone(sorted.column(i)))
        .collect();
    let data_columns: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !indices.contains(i))
        .collect();
    let data = sorted.project(&data_columns)?;
    let formatters = keys
        .iter()
        .map(|key| ArrayFormatter::try_new(key.as_ref(), &VALUE_FORMAT))
        .collect::<Result<Vec<_>, _>>()?;
    partition(&keys)?
        .ranges()
        .into_iter()
        .map(|range| {
            let values = keys
                .iter()
                .zip(&formatters)
                .map(|(key, formatter)| {
                    if key.is_null(range.start) {
                        Ok(None)
                    } else {
                        formatter.value(range.start).try_to_string().map(Some)
                    }
                })
                .collect::<Result<Vec<_>, ArrowError>>()?;
            Ok(PartitionRows {
                values,
                rows: data.slice(range.start, range.len()),
            })
        })
        .collect()
}

/// Whether Hive and Spark escape `c` in a directory name (Spark's
/// `ExternalCatalogUtils.escapePathName`; NUL too, which no path may hold).
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{0}'
            ..='\u{1F}'
                | '"'
                | '#'
                | '%'
                | '\''
                | '*'
                | '/'
                | ':'
                | '='
                | '?'
                | '\\'
                | '\u{7F}'
                | '{'
                | '['
                | ']'
                | '^'
    )
}

/// `name` as Hive and Spark write it in a path: each character they escape
/// as `%` and two upper-case hex digits (`a/b` → `a%2Fb`), every other one
/// as it is.
pub(crate) fn escape_path_name(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        if needs_escape(c) {
            let _ = write!(escaped, "%{:02X}", c as u32);
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// The directory of one partition column's value: `column=value`, both
/// escaped, a null or empty value as [`DEFAULT_PARTITION_NAME`].
pub(crate) fn directory_name(column: &str, value: Option<&str>) -> String {
    let value = match value {
        Some(value) if !value.is_empty() => escape_path_name(value),
        _ => DEFAULT_PARTITION_NAME.to_string(),
    };
    format!("{}={value}", escape_path_name(column))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Array, Int64Array, StringArray, TimestampMillisecondArray, TimestampSecondArray,
    };
    use arrow::datatypes::{Field, TimeUnit};
    use datafusion::common::ScalarValue;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("sym", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]))
    }

    fn batch(ids: &[i64], syms: &[Option<&str>], ns: &[Option<i64>]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(syms.to_vec())),
                Arc::new(Int64Array::from(ns.to_vec())),
            ],
        )
        .unwrap()
    }

    fn ids(rows: &RecordBatch) -> Vec<i64> {
        rows.column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    #[test]
    fn split_groups_rows_by_value_keeping_their_order() {
        let batches = [
            batch(
                &[1, 2, 3],
                &[Some("b"), None, Some("a")],
                &[Some(1), Some(1), None],
            ),
            batch(
                &[4, 5, 6],
                &[Some("b"), Some("a"), None],
                &[Some(1), None, Some(2)],
            ),
        ];
        let parts = split(&schema(), &batches, &[1, 2]).unwrap();
        let seen: Vec<(Vec<Option<String>>, Vec<i64>)> = parts
            .iter()
            .map(|p| (p.values.clone(), ids(&p.rows)))
            .collect();
        let v = |s: Option<&str>, n: Option<&str>| vec![s.map(String::from), n.map(String::from)];
        assert_eq!(
            seen,
            vec![
                (v(None, Some("1")), vec![2]),
                (v(None, Some("2")), vec![6]),
                (v(Some("a"), None), vec![3, 5]),
                (v(Some("b"), Some("1")), vec![1, 4]),
            ]
        );
        // The data files' rows have only the other columns.
        assert_eq!(parts[0].rows.schema().fields().len(), 1);
        assert_eq!(parts[0].rows.schema().field(0).name(), "id");
        assert!(split(&schema(), &[], &[1]).unwrap().is_empty());
    }

    #[test]
    fn values_are_written_as_spark_writes_them_and_read_back() {
        let ts = |unit_schema: DataType, array: ArrayRef, expected: &[&str]| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("t", unit_schema.clone(), false),
                Field::new("x", DataType::Int64, false),
            ]));
            let x = Arc::new(Int64Array::from(vec![0; array.len()]));
            let batch = RecordBatch::try_new(Arc::clone(&schema), vec![array.clone(), x]).unwrap();
            let parts = split(&schema, &[batch], &[0]).unwrap();
            let values: Vec<String> = parts.iter().map(|p| p.values[0].clone().unwrap()).collect();
            assert_eq!(values, expected);
            // Arrow's cast reads each text back as the value.
            for (i, text) in values.iter().enumerate() {
                let back = ScalarValue::try_from_string(text.clone(), &unit_schema).unwrap();
                assert_eq!(
                    back,
                    ScalarValue::try_from_array(&array, i).unwrap(),
                    "{text}"
                );
            }
        };
        ts(
            DataType::Timestamp(TimeUnit::Millisecond, None),
            Arc::new(TimestampMillisecondArray::from(vec![
                1_704_103_200_000,
                1_704_103_200_250,
            ])),
            &["2024-01-01 10:00:00", "2024-01-01 10:00:00.250"],
        );
        ts(
            DataType::Timestamp(TimeUnit::Second, Some("UTC".into())),
            Arc::new(TimestampSecondArray::from(vec![1_704_103_200]).with_timezone("UTC")),
            &["2024-01-01 10:00:00+00:00"],
        );
    }

    #[test]
    fn names_are_escaped_as_hive_does() {
        assert_eq!(escape_path_name("plain-value_1.x"), "plain-value_1.x");
        assert_eq!(escape_path_name("a/b=c%d"), "a%2Fb%3Dc%25d");
        assert_eq!(
            escape_path_name("10:00 #1 ?*\"'\\{[]}^"),
            "10%3A00 %231 %3F%2A%22%27%5C%7B%5B%5D}%5E"
        );
        assert_eq!(escape_path_name("\u{1}\u{7f}é"), "%01%7Fé");
        assert_eq!(directory_name("sym", Some("a/b")), "sym=a%2Fb");
        assert_eq!(
            directory_name("sym", None),
            "sym=__HIVE_DEFAULT_PARTITION__"
        );
        assert_eq!(
            directory_name("sym", Some("")),
            "sym=__HIVE_DEFAULT_PARTITION__"
        );
        assert_eq!(directory_name("a=b", Some("1")), "a%3Db=1");
    }

    #[test]
    fn partition_columns_are_checked() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Float64, false),
            Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
        ]);
        let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(partition_indices(&schema, &names(&["id"])), Ok(vec![0]));
        assert_eq!(partition_indices(&schema, &[]), Ok(vec![]));
        let err = partition_indices(&schema, &names(&["nope"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "partition column 'nope' is not a column of the output; its columns: id, price, tags"
        );
        let err = partition_indices(&schema, &names(&["price"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("partition column 'price' has type Float64, which cannot partition"),
            "{err}"
        );
        let err = partition_indices(&schema, &names(&["tags"])).unwrap_err();
        assert!(err.to_string().contains("'tags' has type List("), "{err}");
        assert_eq!(
            partition_indices(&schema, &names(&["id", "id"])),
            Err(PartitionError::Duplicate("id".into()))
        );
        assert_eq!(
            partition_indices(&schema, &names(&[""])),
            Err(PartitionError::EmptyName)
        );
        let one = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        assert_eq!(
            partition_indices(&one, &names(&["id"]))
                .unwrap_err()
                .to_string(),
            "every column of the output is a partition column (id); the data files need at least \
             one other column"
        );
    }
}
