//! The output's columns as Iceberg types, checked against an existing
//! table, and the Arrow schema the sink writes data files with.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use iceberg::spec::{
    NestedField, PartitionSpec, PrimitiveType, Schema as IcebergSchema, Transform, Type,
    UnboundPartitionSpec,
};

use super::IcebergSinkError;

/// The metadata key of a parquet column's field id, which the parquet
/// writer stores in the file's schema (Iceberg readers find columns by it).
const PARQUET_FIELD_ID: &str = "PARQUET:field_id";

/// The output's column names, comma-separated, for messages.
pub(super) fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses partition columns that are not columns of `schema` or are
/// named twice.
pub(super) fn check_partition_columns(
    columns: &[String],
    schema: &Schema,
) -> Result<(), IcebergSinkError> {
    for (i, column) in columns.iter().enumerate() {
        if columns[..i].contains(column) {
            return Err(IcebergSinkError::DuplicateColumn {
                column: column.clone(),
            });
        }
        if schema.field_with_name(column).is_err() {
            return Err(IcebergSinkError::UnknownColumn {
                column: column.clone(),
                output_columns: names(schema),
            });
        }
    }
    Ok(())
}

/// The Iceberg type of an output column of type `data_type`; an error
/// naming the column if the sink cannot write it.
pub(super) fn iceberg_type(
    table: &str,
    column: &str,
    data_type: &DataType,
) -> Result<PrimitiveType, IcebergSinkError> {
    let unsupported = |reason: &str| IcebergSinkError::UnsupportedType {
        table: table.to_string(),
        column: column.to_string(),
        data_type: data_type.to_string(),
        reason: reason.to_string(),
    };
    Ok(match data_type {
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            PrimitiveType::Int
        }
        DataType::Int64 | DataType::UInt32 => PrimitiveType::Long,
        DataType::UInt64 => {
            return Err(unsupported(
                "Iceberg has no unsigned 64-bit integer (its long is signed); cast the column \
                 to BIGINT or DECIMAL(20, 0)",
            ));
        }
        DataType::Float16 | DataType::Float32 => PrimitiveType::Float,
        DataType::Float64 => PrimitiveType::Double,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
            if *s < 0 {
                return Err(unsupported("Iceberg decimals cannot have a negative scale"));
            }
            PrimitiveType::Decimal {
                precision: u32::from(*p),
                scale: *s as u32,
            }
        }
        DataType::Decimal256(..) => {
            return Err(unsupported(
                "Iceberg decimals have at most 38 digits; cast the column to DECIMAL(38, s)",
            ));
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => PrimitiveType::String,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => PrimitiveType::Binary,
        DataType::FixedSizeBinary(n) => PrimitiveType::Fixed(*n as u64),
        DataType::Date32 | DataType::Date64 => PrimitiveType::Date,
        DataType::Time32(_) | DataType::Time64(TimeUnit::Microsecond) => PrimitiveType::Time,
        DataType::Time64(_) => {
            return Err(unsupported(
                "Iceberg times are in microseconds; cast the column to microseconds",
            ));
        }
        // Microseconds in Iceberg (format version 2): finer timestamps are
        // truncated to microseconds, as the Delta sink does.
        DataType::Timestamp(_, None) => PrimitiveType::Timestamp,
        DataType::Timestamp(_, Some(_)) => PrimitiveType::Timestamptz,
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..) => {
            return Err(unsupported(
                "the Iceberg sink writes primitive columns only (no lists, structs or maps yet)",
            ));
        }
        DataType::Dictionary(_, value) => return iceberg_type(table, column, value),
        _ => return Err(unsupported("Iceberg has no equivalent type")),
    })
}

/// The Arrow type the sink writes an Iceberg `primitive` column as (the
/// output's columns are cast to it).
fn arrow_type(primitive: &PrimitiveType, output: &DataType) -> DataType {
    match primitive {
        PrimitiveType::Boolean => DataType::Boolean,
        PrimitiveType::Int => DataType::Int32,
        PrimitiveType::Long => DataType::Int64,
        PrimitiveType::Float => DataType::Float32,
        PrimitiveType::Double => DataType::Float64,
        PrimitiveType::Decimal { precision, scale } => {
            DataType::Decimal128(*precision as u8, *scale as i8)
        }
        PrimitiveType::Date => DataType::Date32,
        PrimitiveType::Time => DataType::Time64(TimeUnit::Microsecond),
        PrimitiveType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        PrimitiveType::Timestamptz => {
            let zone = match output {
                DataType::Timestamp(_, Some(zone)) => Arc::clone(zone),
                _ => Arc::from("UTC"),
            };
            DataType::Timestamp(TimeUnit::Microsecond, Some(zone))
        }
        PrimitiveType::String => DataType::Utf8,
        PrimitiveType::Fixed(n) => DataType::FixedSizeBinary(*n as i32),
        // Nanosecond timestamps and UUIDs are never written by the sink
        // (checked before); binary for the rest.
        _ => DataType::Binary,
    }
}

/// The Iceberg schema of a table the sink creates for `output`: its
/// columns in order, required where the output's are not nullable.
pub(super) fn table_schema(
    table: &str,
    output: &Schema,
) -> Result<IcebergSchema, IcebergSinkError> {
    let mut fields = Vec::with_capacity(output.fields().len());
    for (i, field) in output.fields().iter().enumerate() {
        let primitive = iceberg_type(table, field.name(), field.data_type())?;
        fields.push(Arc::new(NestedField::new(
            i as i32 + 1,
            field.name(),
            Type::Primitive(primitive),
            !field.is_nullable(),
        )));
    }
    IcebergSchema::builder()
        .with_fields(fields)
        .build()
        .map_err(|e| IcebergSinkError::iceberg(table, "building the schema of", e))
}

/// The identity partition spec of `columns` over `schema`.
pub(super) fn partition_spec(
    table: &str,
    schema: &IcebergSchema,
    columns: &[String],
) -> Result<UnboundPartitionSpec, IcebergSinkError> {
    let mut builder = UnboundPartitionSpec::builder();
    for column in columns {
        let field = schema
            .field_by_name(column)
            .expect("partition columns are output columns (checked at open)");
        builder = builder
            .add_partition_field(field.id, column, Transform::Identity)
            .map_err(|e| IcebergSinkError::iceberg(table, "building the partition spec of", e))?;
    }
    Ok(builder.build())
}

/// One column as the sink writes it: the table's field, and where the
/// output has it.
#[derive(Debug, Clone)]
pub(super) struct Column {
    /// The table field's id.
    pub(super) field_id: i32,
    /// The column's name.
    pub(super) name: String,
    /// Its Iceberg type.
    pub(super) primitive: PrimitiveType,
    /// The index of the column in the output.
    pub(super) output_index: usize,
}

/// How the output's batches become the table's data files: the columns in
/// the table's order, the Arrow schema of the files (with field ids), and
/// the identity partition columns.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// The table's columns, in its order.
    pub(super) columns: Vec<Column>,
    /// The data files' Arrow schema: the table's columns, as the sink
    /// writes them, each with its field id.
    pub(super) file_schema: SchemaRef,
    /// The partition columns, as indexes into `columns`, outermost first.
    pub(super) partition_columns: Vec<usize>,
    /// The partition spec's id.
    pub(super) spec_id: i32,
}

/// The table's partition spec as `transform(column)`s, for messages.
fn describe_spec(spec: &PartitionSpec, schema: &IcebergSchema) -> String {
    spec.fields()
        .iter()
        .map(|f| {
            let column = schema
                .field_by_id(f.source_id)
                .map(|c| c.name.clone())
                .unwrap_or_else(|| format!("#{}", f.source_id));
            match f.transform {
                Transform::Identity => column,
                other => format!("{other}({column})"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether an output column of Iceberg type `output` can be written to a
/// table column of type `table` (the same type, or a promotion Iceberg
/// allows: int to long, float to double).
fn fits(output: &PrimitiveType, table: &PrimitiveType) -> bool {
    output == table
        || matches!(
            (output, table),
            (PrimitiveType::Int, PrimitiveType::Long)
                | (PrimitiveType::Float, PrimitiveType::Double)
        )
}

/// Checks that the table (its current `schema` and default partition
/// `spec`) has exactly the output's columns, of types the output's fit,
/// and the sink's partitioning (when `partition_by` is given); returns how
/// the sink writes it.
pub(super) fn layout(
    table: &str,
    output: &Schema,
    schema: &IcebergSchema,
    spec: &PartitionSpec,
    partition_by: &[String],
) -> Result<Layout, IcebergSinkError> {
    let table_fields = schema.as_struct().fields();
    let table_columns = || {
        table_fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for field in output.fields() {
        if schema.field_by_name(field.name()).is_none() {
            return Err(IcebergSinkError::ColumnNotInTable {
                table: table.to_string(),
                column: field.name().clone(),
                table_columns: table_columns(),
            });
        }
    }
    let mut columns = Vec::with_capacity(table_fields.len());
    let mut file_fields = Vec::with_capacity(table_fields.len());
    for table_field in table_fields {
        let Some((output_index, output_field)) = output.column_with_name(&table_field.name) else {
            return Err(IcebergSinkError::ColumnNotInOutput {
                table: table.to_string(),
                column: table_field.name.clone(),
                output_columns: names(output),
            });
        };
        let output_type = iceberg_type(table, output_field.name(), output_field.data_type())?;
        let table_type = match table_field.field_type.as_ref() {
            Type::Primitive(p) if fits(&output_type, p) => p.clone(),
            other => {
                return Err(IcebergSinkError::ColumnType {
                    table: table.to_string(),
                    column: table_field.name.clone(),
                    table_type: other.to_string(),
                    output_type: output_field.data_type().to_string(),
                    output_iceberg_type: output_type.to_string(),
                });
            }
        };
        if table_field.required && output_field.is_nullable() {
            return Err(IcebergSinkError::ColumnNullable {
                table: table.to_string(),
                column: table_field.name.clone(),
            });
        }
        let data_type = arrow_type(&table_type, output_field.data_type());
        file_fields.push(
            Field::new(&table_field.name, data_type, !table_field.required).with_metadata(
                HashMap::from([(PARQUET_FIELD_ID.to_string(), table_field.id.to_string())]),
            ),
        );
        columns.push(Column {
            field_id: table_field.id,
            name: table_field.name.clone(),
            primitive: table_type,
            output_index,
        });
    }
    // The table's partitioning: identity partitions only, and the sink's
    // columns if it names any.
    let mut partition_columns = Vec::with_capacity(spec.fields().len());
    let mismatch = || IcebergSinkError::PartitionMismatch {
        table: table.to_string(),
        table_spec: describe_spec(spec, schema),
        sink_columns: partition_by.join(", "),
    };
    for field in spec.fields() {
        if field.transform != Transform::Identity {
            return Err(mismatch());
        }
        let index = columns
            .iter()
            .position(|c| c.field_id == field.source_id)
            .ok_or_else(mismatch)?;
        partition_columns.push(index);
    }
    if !partition_by.is_empty() {
        let table_partition: Vec<&str> = partition_columns
            .iter()
            .map(|i| columns[*i].name.as_str())
            .collect();
        if table_partition != partition_by.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(mismatch());
        }
    }
    Ok(Layout {
        columns,
        file_schema: Arc::new(Schema::new(file_fields)),
        partition_columns,
        spec_id: spec.spec_id(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_types_map_to_iceberg_types() {
        let t = |d: DataType| iceberg_type("t", "c", &d).map(|p| p.to_string());
        assert_eq!(t(DataType::Int16).unwrap(), "int");
        assert_eq!(t(DataType::Int64).unwrap(), "long");
        assert_eq!(t(DataType::Utf8View).unwrap(), "string");
        assert_eq!(
            t(DataType::Timestamp(
                TimeUnit::Nanosecond,
                Some("UTC".into())
            ))
            .unwrap(),
            "timestamptz"
        );
        assert_eq!(t(DataType::Decimal128(10, 2)).unwrap(), "decimal(10, 2)");
        let err = t(DataType::UInt64).unwrap_err().to_string();
        assert!(err.contains("column 'c'") && err.contains("'t'"), "{err}");
        let list = DataType::List(Arc::new(Field::new("item", DataType::Int32, true)));
        assert!(
            t(list)
                .unwrap_err()
                .to_string()
                .contains("primitive columns only")
        );
    }

    fn output() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("symbol", DataType::Utf8, true),
        ])
    }

    #[test]
    fn a_table_made_for_the_output_fits_it() {
        let schema = table_schema("t", &output()).unwrap();
        let spec = partition_spec("t", &schema, &["symbol".into()])
            .unwrap()
            .bind(schema.clone())
            .unwrap();
        let layout = layout("t", &output(), &schema, &spec, &[]).unwrap();
        assert_eq!(layout.partition_columns, vec![1]);
        assert_eq!(
            layout.file_schema.field(0).metadata()[PARQUET_FIELD_ID],
            "1"
        );
        assert!(!layout.file_schema.field(0).is_nullable());
        // Another partitioning is refused, naming both.
        let err = super::layout("t", &output(), &schema, &spec, &["id".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[symbol]") && err.contains("[id]"), "{err}");
    }

    #[test]
    fn a_table_of_other_columns_is_refused_naming_the_column() {
        let schema = table_schema("t", &output()).unwrap();
        let spec = PartitionSpec::unpartition_spec();
        let wider = Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("symbol", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
        ]);
        let err = layout("t", &wider, &schema, &spec, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'price'") && err.contains("'t'"), "{err}");
        let retyped = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("symbol", DataType::Utf8, true),
        ]);
        let err = layout("t", &retyped, &schema, &spec, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column 'id'") && err.contains("type int"),
            "{err}"
        );
        // Int into a long column is a promotion Iceberg allows.
        let long_table = table_schema(
            "t",
            &Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("symbol", DataType::Utf8, true),
            ]),
        )
        .unwrap();
        let layout = layout("t", &output(), &long_table, &spec, &[]).unwrap();
        assert_eq!(layout.file_schema.field(0).data_type(), &DataType::Int64);
    }
}
