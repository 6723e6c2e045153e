//! A batch's data files: the output's rows cast to the table's types,
//! split by partition values, each part written as one parquet file with
//! the workspace's parquet writer, and described for Iceberg's manifest
//! (counts, sizes, bounds from the file's own statistics, partition
//! values). The `iceberg` crate only ever sees this description.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray};
use arrow::compute::{SortColumn, cast, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum, Literal, PrimitiveLiteral,
    PrimitiveType, Struct,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::WriterProperties;

use super::IcebergSinkError;
use super::schema::Layout;

/// Where a batch's files go: the table's location (URL, as manifests name
/// files) and its directory in the store.
pub(super) struct Target<'a> {
    pub(super) table: &'a str,
    pub(super) root: &'a Path,
    pub(super) store: &'a dyn ObjectStore,
}

/// The output's `batches` as the table's columns and types (see
/// [`Layout`]).
fn to_table_rows(
    table: &str,
    layout: &Layout,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, IcebergSinkError> {
    let arrow_error = |source| IcebergSinkError::Arrow {
        table: table.to_string(),
        doing: "converting the rows for".to_string(),
        source,
    };
    batches
        .into_iter()
        .map(|batch| {
            let columns = layout
                .columns
                .iter()
                .zip(layout.file_schema.fields())
                .map(|(column, field)| {
                    let array = batch.column(column.output_index);
                    if array.data_type() == field.data_type() {
                        Ok(Arc::clone(array))
                    } else {
                        cast(array, field.data_type())
                    }
                })
                .collect::<Result<Vec<ArrayRef>, _>>()
                .map_err(arrow_error)?;
            RecordBatch::try_new(Arc::clone(&layout.file_schema), columns).map_err(arrow_error)
        })
        .collect()
}

/// The rows of `batch`, grouped by the values of the partition columns:
/// one batch per partition (the whole batch if unpartitioned).
fn split_by_partition(
    table: &str,
    layout: &Layout,
    batches: Vec<RecordBatch>,
) -> Result<Vec<Vec<RecordBatch>>, IcebergSinkError> {
    if layout.partition_columns.is_empty() {
        return Ok(vec![batches]);
    }
    let arrow_error = |source| IcebergSinkError::Arrow {
        table: table.to_string(),
        doing: "splitting the rows by partition for".to_string(),
        source,
    };
    let batch = concat_batches(&layout.file_schema, &batches).map_err(arrow_error)?;
    let keys: Vec<SortColumn> = layout
        .partition_columns
        .iter()
        .map(|i| SortColumn {
            values: Arc::clone(batch.column(*i)),
            options: None,
        })
        .collect();
    let order = lexsort_to_indices(&keys, None).map_err(arrow_error)?;
    let sorted = take_record_batch(&batch, &order).map_err(arrow_error)?;
    let sorted_keys: Vec<ArrayRef> = layout
        .partition_columns
        .iter()
        .map(|i| Arc::clone(sorted.column(*i)))
        .collect();
    let ranges = arrow::compute::partition(&sorted_keys)
        .map_err(arrow_error)?
        .ranges();
    Ok(ranges
        .into_iter()
        .map(|r| vec![sorted.slice(r.start, r.end - r.start)])
        .collect())
}

/// The value of `array` at `row` as an Iceberg literal of `primitive`
/// (`None` for a null).
fn literal(array: &dyn Array, row: usize, primitive: &PrimitiveType) -> Option<Literal> {
    if array.is_null(row) {
        return None;
    }
    let datum = match primitive {
        PrimitiveType::Boolean => Datum::bool(
            array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("boolean")
                .value(row),
        ),
        PrimitiveType::Int => Datum::int(array.as_primitive::<Int32Type>().value(row)),
        PrimitiveType::Long => Datum::long(array.as_primitive::<Int64Type>().value(row)),
        PrimitiveType::Float => Datum::float(array.as_primitive::<Float32Type>().value(row)),
        PrimitiveType::Double => Datum::double(array.as_primitive::<Float64Type>().value(row)),
        PrimitiveType::Date => Datum::date(array.as_primitive::<Date32Type>().value(row)),
        PrimitiveType::Time => {
            return Some(Literal::Primitive(PrimitiveLiteral::Long(
                array.as_primitive::<Time64MicrosecondType>().value(row),
            )));
        }
        PrimitiveType::Timestamp => {
            Datum::timestamp_micros(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        PrimitiveType::Timestamptz => {
            Datum::timestamptz_micros(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        PrimitiveType::Decimal { .. } => {
            return Some(Literal::Primitive(PrimitiveLiteral::Int128(
                array.as_primitive::<Decimal128Type>().value(row),
            )));
        }
        PrimitiveType::String => Datum::string(
            array
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .value(row),
        ),
        PrimitiveType::Fixed(_) => Datum::fixed(array.as_fixed_size_binary().value(row).to_vec()),
        _ => Datum::binary(array.as_binary::<i32>().value(row).to_vec()),
    };
    Some(Literal::Primitive(datum.literal().clone()))
}

/// The directory name of a partition value: `column=value`, with the
/// characters other than letters, digits, `-`, `_` and `.` replaced by `_`
/// (Iceberg reads partition values from the manifest, never from paths, so
/// the name only helps people browsing the table).
fn partition_dir(column: &str, value: Option<&Literal>, array: &dyn Array) -> String {
    let text = match value {
        None => "null".to_string(),
        Some(_) => arrow::util::display::array_value_to_string(array, 0)
            .unwrap_or_else(|_| "value".to_string()),
    };
    let clean = |s: &str| -> String {
        s.chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{}={}", clean(column), clean(&text))
}

/// Per-column counts, sizes and bounds of a written parquet file, keyed by
/// field id (columns are primitive and top-level, so the file's leaf
/// columns are the layout's columns in order).
#[derive(Default)]
struct Metrics {
    column_sizes: HashMap<i32, u64>,
    value_counts: HashMap<i32, u64>,
    null_value_counts: HashMap<i32, u64>,
    lower_bounds: HashMap<i32, Datum>,
    upper_bounds: HashMap<i32, Datum>,
}

impl Metrics {
    fn of(layout: &Layout, metadata: &ParquetMetaData) -> Self {
        let mut metrics = Self::default();
        // Bounds are kept only while every row group has exact ones.
        let mut bounded: Vec<bool> = vec![true; layout.columns.len()];
        for row_group in metadata.row_groups() {
            for (i, (chunk, column)) in row_group.columns().iter().zip(&layout.columns).enumerate()
            {
                let id = column.field_id;
                *metrics.column_sizes.entry(id).or_default() += chunk.compressed_size() as u64;
                *metrics.value_counts.entry(id).or_default() += chunk.num_values() as u64;
                let stats = chunk.statistics();
                let nulls = stats.and_then(|s| s.null_count_opt());
                match nulls {
                    Some(n) => *metrics.null_value_counts.entry(id).or_default() += n,
                    None => bounded[i] = false,
                }
                if !bounded[i] || matches!(column.primitive, PrimitiveType::Decimal { .. }) {
                    bounded[i] = false;
                    continue;
                }
                let Some(stats) = stats else {
                    bounded[i] = false;
                    continue;
                };
                // A row group of nulls only has no bounds and narrows none.
                if stats.min_bytes_opt().is_none() && nulls == Some(chunk.num_values() as u64) {
                    continue;
                }
                let (Some(min), Some(max)) = (stats.min_bytes_opt(), stats.max_bytes_opt()) else {
                    bounded[i] = false;
                    continue;
                };
                if !stats.min_is_exact() || !stats.max_is_exact() {
                    bounded[i] = false;
                    continue;
                }
                let (Ok(min), Ok(max)) = (
                    Datum::try_from_bytes(min, column.primitive.clone()),
                    Datum::try_from_bytes(max, column.primitive.clone()),
                ) else {
                    bounded[i] = false;
                    continue;
                };
                let lower = metrics
                    .lower_bounds
                    .entry(id)
                    .or_insert_with(|| min.clone());
                if min < *lower {
                    *lower = min;
                }
                let upper = metrics
                    .upper_bounds
                    .entry(id)
                    .or_insert_with(|| max.clone());
                if max > *upper {
                    *upper = max;
                }
            }
        }
        for (i, column) in layout.columns.iter().enumerate() {
            if !bounded[i] {
                metrics.lower_bounds.remove(&column.field_id);
                metrics.upper_bounds.remove(&column.field_id);
            }
        }
        metrics
    }
}

/// Writes `batches` (the output's rows of batch `batch_id`) as the table's
/// data files, one per partition value; returns their descriptions for the
/// batch's snapshot. No rows, no files.
pub(super) async fn write_data_files(
    target: &Target<'_>,
    layout: &Layout,
    batch_id: u64,
    batches: Vec<RecordBatch>,
) -> Result<Vec<DataFile>, IcebergSinkError> {
    let table = target.table;
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let rows = to_table_rows(table, layout, batches)?;
    let parts = split_by_partition(table, layout, rows)?;
    let doing = format!("batch {batch_id}: writing a data file of");
    let mut files = Vec::with_capacity(parts.len());
    for part in parts {
        let first = &part[0];
        let mut values = Vec::with_capacity(layout.partition_columns.len());
        let mut dir = target.root.clone().join("data");
        let mut relative = String::from("data");
        for index in &layout.partition_columns {
            let column = &layout.columns[*index];
            let array = first.column(*index).slice(0, 1);
            let value = literal(array.as_ref(), 0, &column.primitive);
            let name = partition_dir(&column.name, value.as_ref(), array.as_ref());
            dir = dir.join(name.as_str());
            relative.push('/');
            relative.push_str(&name);
            values.push(value);
        }
        let name = format!("{batch_id:05}-{}.parquet", uuid::Uuid::new_v4());
        let path = dir.join(name.as_str());
        let url = format!("{table}/{relative}/{name}");

        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut buffer = Vec::new();
        let parquet_error = |source| IcebergSinkError::Parquet {
            table: table.to_string(),
            doing: doing.clone(),
            source,
        };
        let metadata = {
            let mut writer = ArrowWriter::try_new(
                &mut buffer,
                Arc::clone(&layout.file_schema),
                Some(properties),
            )
            .map_err(parquet_error)?;
            for batch in &part {
                writer.write(batch).map_err(parquet_error)?;
            }
            writer.close().map_err(parquet_error)?
        };
        let size = buffer.len() as u64;
        let record_count: usize = part.iter().map(RecordBatch::num_rows).sum();
        target
            .store
            .put(&path, PutPayload::from(buffer))
            .await
            .map_err(|e| IcebergSinkError::store(table, doing.clone(), e))?;
        let metrics = Metrics::of(layout, &metadata);
        let file = DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(url)
            .file_format(DataFileFormat::Parquet)
            .partition(Struct::from_iter(values))
            .partition_spec_id(layout.spec_id)
            .record_count(record_count as u64)
            .file_size_in_bytes(size)
            .column_sizes(metrics.column_sizes)
            .value_counts(metrics.value_counts)
            .null_value_counts(metrics.null_value_counts)
            .lower_bounds(metrics.lower_bounds)
            .upper_bounds(metrics.upper_bounds)
            .build()
            .map_err(|e| {
                IcebergSinkError::iceberg(
                    table,
                    doing.clone(),
                    iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()),
                )
            })?;
        files.push(file);
    }
    Ok(files)
}
