//! The rows `tidemill bench` replays for a stream: a sample file given on
//! the command line (parquet, JSON lines or CSV), fitted to the stream's
//! schema, or the rows the stream's source holds now.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::FormatOptions;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use tidemill_engine::Source;

use super::BenchError;

/// At most this many rows of a stream's source are taken as its sample.
pub const MAX_SAMPLE_ROWS: usize = 1_000_000;

/// The file formats a `--sample` may have, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleFormat {
    Parquet,
    Json,
    Csv,
}

impl SampleFormat {
    fn of_extension(extension: &str) -> Option<Self> {
        match extension.to_ascii_lowercase().as_str() {
            "parquet" => Some(Self::Parquet),
            "json" | "jsonl" | "ndjson" => Some(Self::Json),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// The sample's files in the order they are replayed (a directory's
/// non-hidden files by name), with their format.
fn files_of(path: &Path) -> Result<(Vec<PathBuf>, SampleFormat), String> {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("cannot list the directory: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.') || n.starts_with('_'))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err("the directory holds no file".into());
        }
        files
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err("no such file or directory".into());
    };
    let format_of = |file: &Path| {
        file.extension()
            .and_then(|e| e.to_str())
            .and_then(SampleFormat::of_extension)
            .ok_or_else(|| {
                format!(
                    "cannot tell the format of {}: name a .parquet, .json (JSON lines), .jsonl, \
                     .ndjson or .csv file, or a directory of them",
                    file.display()
                )
            })
    };
    let format = format_of(&files[0])?;
    for file in &files[1..] {
        if format_of(file)? != format {
            return Err(format!(
                "{} is not in the format of {}: a sample directory holds files of one format",
                file.display(),
                files[0].display()
            ));
        }
    }
    Ok((files, format))
}

/// Reads the sample at `path` (a file, or a directory's files by name; in
/// their row order, with a one-partition `ctx`) and fits it to `schema`
/// (see [`fit`]).
pub(crate) async fn read_file(
    ctx: &SessionContext,
    stream: &str,
    path: &Path,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, BenchError> {
    let failed = |message: String| BenchError::Sample {
        stream: stream.to_string(),
        origin: path.display().to_string(),
        message,
    };
    let (files, format) = files_of(path).map_err(failed)?;
    let mut batches = Vec::new();
    let mut rows = 0;
    for file in files {
        if rows >= MAX_SAMPLE_ROWS {
            break;
        }
        let extension = file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_string();
        let location = file.display().to_string();
        let df = match format {
            SampleFormat::Parquet => {
                ctx.read_parquet(
                    location,
                    ParquetReadOptions::default().file_extension(&extension),
                )
                .await
            }
            SampleFormat::Json => {
                ctx.read_json(
                    location,
                    JsonReadOptions::default().file_extension(&extension),
                )
                .await
            }
            SampleFormat::Csv => {
                ctx.read_csv(location, CsvReadOptions::new().file_extension(&extension))
                    .await
            }
        };
        let read = |e: datafusion::error::DataFusionError| {
            failed(format!(
                "cannot read {}: {}",
                file.display(),
                e.strip_backtrace()
            ))
        };
        let got = df
            .map_err(read)?
            .limit(0, Some(MAX_SAMPLE_ROWS - rows))
            .map_err(read)?
            .collect()
            .await
            .map_err(read)?;
        let file_rows: usize = got.iter().map(|b| b.num_rows()).sum();
        if file_rows == 0 {
            continue;
        }
        rows += file_rows;
        // Files of one directory may infer different schemas (a column
        // absent from one): each is fitted on its own, and named.
        let fitted = fit(got, schema).map_err(|m| match path.is_dir() {
            true => failed(format!("{}: {m}", file.display())),
            false => failed(m),
        })?;
        batches.extend(fitted);
    }
    if batches.is_empty() {
        return Err(failed("it holds no rows".into()));
    }
    Ok(batches)
}

/// The rows `source` holds now, read in its batch form (at most
/// [`MAX_SAMPLE_ROWS`]), in the order a stream reads them when `ctx` has
/// one partition.
pub(crate) async fn read_source(
    ctx: &SessionContext,
    stream: &str,
    source: &Arc<dyn Source>,
) -> Result<Vec<RecordBatch>, BenchError> {
    let failed = |message: String| BenchError::Sample {
        stream: stream.to_string(),
        origin: "its source".into(),
        message: format!("{message}; give rows to replay with --sample {stream}=PATH"),
    };
    let df = source
        .read_batch(ctx)
        .await
        .map_err(|e| failed(format!("cannot read its rows: {e}")))?;
    df.limit(0, Some(MAX_SAMPLE_ROWS))
        .map_err(|e| failed(e.strip_backtrace()))?
        .collect()
        .await
        .map_err(|e| failed(format!("cannot read its rows: {}", e.strip_backtrace())))
}

/// `batches` with the columns of `schema`, taken by name and cast to its
/// types; extra columns are left out. A missing column, a value that does
/// not convert, or a null in a column that may not hold one is an error
/// naming the column.
pub(crate) fn fit(
    batches: Vec<RecordBatch>,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, String> {
    let Some(first) = batches.first() else {
        return Err("it holds no rows".into());
    };
    let have = first.schema();
    for field in schema.fields() {
        if have.column_with_name(field.name()).is_none() {
            let names: Vec<&str> = have.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(format!(
                "it has no column {} (the stream's {}); its columns: {}",
                field.name(),
                field.data_type(),
                names.join(", ")
            ));
        }
    }
    let options = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column = batch
                .column_by_name(field.name())
                .ok_or_else(|| format!("a batch of it has no column {}", field.name()))?;
            let cast = cast_with_options(column, field.data_type(), &options).map_err(|e| {
                format!(
                    "column {} is {}, which does not convert to the stream's {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                )
            })?;
            if !field.is_nullable() && cast.null_count() > 0 {
                return Err(format!(
                    "column {} has nulls, but the stream's column may not be null",
                    field.name()
                ));
            }
            columns.push(cast);
        }
        out.push(RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())?);
    }
    if out.iter().all(|b| b.num_rows() == 0) {
        return Err("it holds no rows".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn stream_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("price", DataType::Float64, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        ]))
    }

    fn sample(price: ArrayRef, t: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("extra", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("t", t),
            ("price", price),
        ])
        .unwrap()
    }

    #[test]
    fn a_sample_is_fitted_by_name_and_cast() {
        let fitted = fit(
            vec![sample(
                Arc::new(Int64Array::from(vec![3, 4])),
                Arc::new(StringArray::from(vec![
                    "2026-01-01T00:00:00Z",
                    "2026-01-01 00:00:01",
                ])),
            )],
            &stream_schema(),
        )
        .unwrap();
        assert_eq!(fitted[0].schema(), stream_schema());
        let price = fitted[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(price.values().to_vec(), [3.0, 4.0]);
    }

    #[test]
    fn a_sample_that_does_not_fit_is_refused_naming_the_column() {
        let no_t = RecordBatch::try_from_iter([(
            "price",
            Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
        )])
        .unwrap();
        let e = fit(vec![no_t], &stream_schema()).unwrap_err();
        assert!(
            e.starts_with("it has no column t (the stream's Timestamp"),
            "{e}"
        );
        assert!(e.ends_with("its columns: price"), "{e}");
        let bad_time = sample(
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(StringArray::from(vec!["yesterday", "now"])),
        );
        let e = fit(vec![bad_time], &stream_schema()).unwrap_err();
        assert!(
            e.starts_with("column t is Utf8, which does not convert"),
            "{e}"
        );
        let null_time = sample(
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(StringArray::from(vec![Some("2026-01-01T00:00:00Z"), None])),
        );
        let e = fit(vec![null_time], &stream_schema()).unwrap_err();
        assert!(e.contains("column t has nulls"), "{e}");
        assert_eq!(
            fit(Vec::new(), &stream_schema()).unwrap_err(),
            "it holds no rows"
        );
    }
}
