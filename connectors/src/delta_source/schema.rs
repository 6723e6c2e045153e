//! The stream's columns against the table's: whether a table schema (at
//! open, or in a version's `metaData`) can still be read as the stream's
//! columns, and partition values as typed columns.

use arrow::array::{Array, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::scalar::ScalarValue;

use super::log::TableMeta;
use crate::file_source::convert::readable_as;

/// Whether values of type `actual` (the table's) read as `expected` (the
/// stream's) without loss: the same type, or a widening the file source
/// also makes (wider integers and floats, timestamps of another unit,
/// strings in another encoding).
pub(super) fn readable(actual: &DataType, expected: &DataType) -> bool {
    actual.equals_datatype(expected) || readable_as(actual, expected)
}

/// Why the stream's columns (`stream`) cannot be read from a table whose
/// metadata is `meta`, or `None` if they can. A stream column the table
/// lacks reads as nulls where `missing_is_null` (an older schema, from
/// before the column was added) if it is nullable; otherwise it was
/// dropped or renamed.
pub(super) fn misfit(
    stream: &Schema,
    partition_columns: &[String],
    meta: &TableMeta,
    missing_is_null: bool,
) -> Option<String> {
    if meta.partition_columns != partition_columns {
        return Some(format!(
            "the partition columns change from [{}] to [{}]",
            partition_columns.join(", "),
            meta.partition_columns.join(", ")
        ));
    }
    for field in stream.fields() {
        match meta.schema.field_with_name(field.name()) {
            Ok(column) => {
                if !readable(column.data_type(), field.data_type()) {
                    return Some(format!(
                        "column '{}' has type {} in the table, which does not read as the \
                         stream's {} without loss",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    ));
                }
                if column.is_nullable() && !field.is_nullable() {
                    return Some(format!(
                        "column '{}' becomes nullable, and the stream's column is not",
                        field.name()
                    ));
                }
            }
            Err(_) if missing_is_null && field.is_nullable() => {}
            Err(_) => {
                return Some(format!(
                    "column '{}' is dropped or renamed (the table's columns: {})",
                    field.name(),
                    names(&meta.schema)
                ));
            }
        }
    }
    None
}

/// A schema's column names, comma-separated, for messages.
pub(super) fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A partition value as the log writes it (`None`, or an empty string,
/// for null) as a value of `field`'s type.
pub(super) fn partition_value(value: Option<&str>, field: &Field) -> Result<ScalarValue, String> {
    let null = || {
        ScalarValue::try_from(field.data_type()).map_err(|e| {
            format!(
                "partition column '{}' of type {} cannot hold a null: {e}",
                field.name(),
                field.data_type()
            )
        })
    };
    let Some(text) = value.filter(|v| !v.is_empty()) else {
        return null();
    };
    let strings = StringArray::from(vec![text]);
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let typed = cast_with_options(&strings, field.data_type(), &options).map_err(|e| {
        format!(
            "partition value '{text}' of column '{}' is not a {}: {e}",
            field.name(),
            field.data_type()
        )
    })?;
    if typed.is_null(0) {
        return Err(format!(
            "partition value '{text}' of column '{}' is not a {}",
            field.name(),
            field.data_type()
        ));
    }
    ScalarValue::try_from_array(&typed, 0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::TimeUnit;

    use super::*;

    fn meta(fields: Vec<Field>, partitions: &[&str]) -> TableMeta {
        TableMeta {
            id: "t".into(),
            schema: Arc::new(Schema::new(fields)),
            partition_columns: partitions.iter().map(|p| p.to_string()).collect(),
            column_mapping: None,
        }
    }

    #[test]
    fn a_schema_fits_unless_a_column_is_dropped_narrowed_or_repartitioned() {
        let stream = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]);
        let same = meta(
            stream.fields().iter().map(|f| f.as_ref().clone()).collect(),
            &[],
        );
        assert_eq!(misfit(&stream, &[], &same, false), None);
        // An added column is not read; a widened one is.
        let added = meta(
            vec![
                Field::new("id", DataType::Int64, false),
                Field::new("note", DataType::Utf8, true),
                Field::new("extra", DataType::Float64, true),
            ],
            &[],
        );
        assert_eq!(misfit(&stream, &[], &added, false), None);
        let narrow = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        let widened = meta(vec![Field::new("id", DataType::Int32, false)], &[]);
        assert_eq!(misfit(&narrow, &[], &widened, false), None);

        let retyped = meta(
            vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("note", DataType::Utf8, true),
            ],
            &[],
        );
        assert_eq!(
            misfit(&stream, &[], &retyped, false).unwrap(),
            "column 'id' has type Utf8 in the table, which does not read as the stream's Int64 \
             without loss"
        );
        let dropped = meta(vec![Field::new("id", DataType::Int64, false)], &[]);
        assert!(
            misfit(&stream, &[], &dropped, false)
                .unwrap()
                .contains("column 'note' is dropped or renamed (the table's columns: id)")
        );
        // An older schema, before `note` was added: it reads as nulls.
        assert_eq!(misfit(&stream, &[], &dropped, true), None);
        let nullable = meta(
            vec![
                Field::new("id", DataType::Int64, true),
                Field::new("note", DataType::Utf8, true),
            ],
            &[],
        );
        assert!(
            misfit(&stream, &[], &nullable, false)
                .unwrap()
                .contains("nullable")
        );
        assert_eq!(
            misfit(&stream, &["id".to_string()], &same, false).unwrap(),
            "the partition columns change from [id] to []"
        );
    }

    #[test]
    fn partition_values_are_typed_and_empty_is_null() {
        let day = Field::new("day", DataType::Date32, true);
        assert_eq!(
            partition_value(Some("2024-03-04"), &day).unwrap(),
            ScalarValue::Date32(Some(19786))
        );
        assert_eq!(
            partition_value(None, &day).unwrap(),
            ScalarValue::Date32(None)
        );
        let sym = Field::new("sym", DataType::Utf8, true);
        assert_eq!(
            partition_value(Some("A B"), &sym).unwrap(),
            ScalarValue::Utf8(Some("A B".into()))
        );
        assert_eq!(
            partition_value(Some(""), &sym).unwrap(),
            ScalarValue::Utf8(None)
        );
        let n = Field::new("n", DataType::Int32, true);
        assert_eq!(
            partition_value(Some("-7"), &n).unwrap(),
            ScalarValue::Int32(Some(-7))
        );
        assert!(
            partition_value(Some("x"), &n)
                .unwrap_err()
                .contains("partition value 'x' of column 'n' is not a Int32")
        );
        let ts = Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        );
        assert_eq!(
            partition_value(Some("2024-01-01 10:00:00"), &ts).unwrap(),
            ScalarValue::TimestampMicrosecond(Some(1_704_103_200_000_000), Some("UTC".into()))
        );
    }
}
