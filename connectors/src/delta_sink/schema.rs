//! The output's columns as Delta types, and the checks of the sink's
//! columns against the output and of the output against an existing
//! table.

use std::sync::Arc;

use arrow::datatypes::Schema;
use deltalake::DeltaTable;
use deltalake::kernel::DataType as DeltaType;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::schema::normalize_for_delta;

use super::DeltaSinkError;

/// The output's columns, comma-separated, for messages.
fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses `columns` (partition columns or merge keys, as `role` says)
/// that are not columns of `schema` or are named twice.
pub(crate) fn check_columns(
    role: &'static str,
    columns: &[String],
    schema: &Schema,
) -> Result<(), DeltaSinkError> {
    for (i, column) in columns.iter().enumerate() {
        if columns[..i].contains(column) {
            return Err(DeltaSinkError::DuplicateColumn {
                role,
                column: column.clone(),
            });
        }
        if schema.field_with_name(column).is_err() {
            return Err(DeltaSinkError::UnknownColumn {
                role,
                column: column.clone(),
                output_columns: names(schema),
            });
        }
    }
    Ok(())
}

/// The Delta type of each column of `schema`, as the sink writes it
/// (after deltalake's normalization: microsecond timestamps, plain
/// strings), or an error naming the first column Delta cannot hold.
pub(crate) fn delta_types(
    table: &str,
    schema: &Schema,
) -> Result<Vec<(String, DeltaType)>, DeltaSinkError> {
    let normalized = normalize_for_delta(&Arc::new(schema.clone()));
    normalized
        .fields()
        .iter()
        .zip(schema.fields())
        .map(|(field, original)| {
            DeltaType::try_from_arrow(field.data_type())
                .map(|t| (field.name().clone(), t))
                .map_err(|e| DeltaSinkError::UnsupportedType {
                    table: table.to_string(),
                    column: field.name().clone(),
                    data_type: original.data_type().to_string(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Refuses an existing `table` whose columns or partitioning do not fit
/// output of `schema`: a column on one side only, a column of another
/// Delta type, other partition columns than `partition_by` (when given).
pub(crate) fn check_table(
    display: &str,
    table: &DeltaTable,
    schema: &Schema,
    partition_by: &[String],
) -> Result<(), DeltaSinkError> {
    let state = table
        .snapshot()
        .map_err(|e| DeltaSinkError::delta(display, "reading the schema of", e))?;
    let table_schema = state.schema();
    let output = delta_types(display, schema)?;
    let table_columns = || {
        table_schema
            .fields()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for ((name, delta_type), field) in output.iter().zip(schema.fields()) {
        let Some(column) = table_schema.field(name) else {
            return Err(DeltaSinkError::ColumnNotInTable {
                table: display.to_string(),
                column: name.clone(),
                table_columns: table_columns(),
            });
        };
        if column.data_type() != delta_type {
            return Err(DeltaSinkError::ColumnType {
                table: display.to_string(),
                column: name.clone(),
                table_type: column.data_type().to_string(),
                output_type: field.data_type().to_string(),
                output_delta_type: delta_type.to_string(),
            });
        }
    }
    if let Some(missing) = table_schema
        .fields()
        .find(|f| schema.field_with_name(f.name()).is_err())
    {
        return Err(DeltaSinkError::ColumnNotInOutput {
            table: display.to_string(),
            column: missing.name().clone(),
            output_columns: names(schema),
        });
    }
    let table_partitions: Vec<String> = state
        .metadata()
        .partition_columns()
        .iter()
        .map(|c| c.to_string())
        .collect();
    if !partition_by.is_empty() && table_partitions != partition_by {
        return Err(DeltaSinkError::PartitionMismatch {
            table: display.to_string(),
            table_columns: table_partitions.join(", "),
            sink_columns: partition_by.join(", "),
        });
    }
    Ok(())
}
