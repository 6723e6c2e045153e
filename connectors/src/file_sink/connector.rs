//! `connector = 'files'` in a pipeline's `CREATE SINK`: the options of a
//! [`FileSink`].

use std::sync::Arc;

use arrow::datatypes::Schema;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use tidemill_engine::{Location, OutputMode, Result, Sink, StorageOptions, TidemillError};

use super::FileSink;
use crate::FileFormat;
use crate::registry::{DeclaredSink, OptionError, STORAGE_PREFIX, SinkConnector, SinkDeclaration};

/// Makes a [`FileSink`] from `path` (required), `format` (`parquet`,
/// `json` or `csv`; default `parquet`), `header` (CSV only; default
/// `true`), `partition_by` (comma-separated column names),
/// `max_rows_per_file` and the S3 settings `aws_*`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FilesSinkConnector;

/// A checked files sink declaration.
#[derive(Debug)]
struct Declared {
    name: String,
    path: String,
    format: FileFormat,
    header: Option<bool>,
    partition_by: Vec<String>,
    max_rows_per_file: Option<usize>,
    storage: StorageOptions,
}

impl SinkConnector for FilesSinkConnector {
    fn declare(
        &self,
        sink: &SinkDeclaration,
    ) -> std::result::Result<Box<dyn DeclaredSink>, OptionError> {
        let options = &sink.options;
        options.check_known(
            "a files sink",
            &[
                "path",
                "format",
                "header",
                "partition_by",
                "max_rows_per_file",
            ],
            Some(STORAGE_PREFIX),
        )?;
        let format = match options.get("format") {
            None | Some("parquet") => FileFormat::Parquet,
            Some("json") => FileFormat::Json,
            Some("csv") => FileFormat::Csv,
            Some(other) => {
                return Err(options.error(
                    "format",
                    format!(
                        "unknown format '{other}' for {}; valid formats: parquet, json, csv",
                        options.subject()
                    ),
                ));
            }
        };
        let header = options.boolean("header")?;
        if header.is_some() && format != FileFormat::Csv {
            return Err(options.error(
                "header",
                format!("option 'header' applies to format 'csv' only, not '{format}'"),
            ));
        }
        Ok(Box::new(Declared {
            name: sink.name.clone(),
            path: options.require("path")?.to_string(),
            format,
            header,
            partition_by: options.column_list("partition_by")?,
            max_rows_per_file: options.number("max_rows_per_file")?,
            storage: options.storage_options()?,
        }))
    }
}

impl Declared {
    fn file_sink(&self) -> FileSink {
        let mut sink = FileSink::new(self.path.clone())
            .storage_options(self.storage.clone())
            .with_format(self.format)
            .partition_by(self.partition_by.clone());
        if let Some(header) = self.header {
            sink = sink.has_header(header);
        }
        if let Some(n) = self.max_rows_per_file {
            sink = sink.max_rows_per_file(n);
        }
        sink
    }
}

#[async_trait]
impl DeclaredSink for Declared {
    /// A files sink never rewrites committed files, so it takes `append`
    /// only.
    fn check_output_mode(&self, mode: OutputMode) -> Result<()> {
        if mode == OutputMode::Append {
            return Ok(());
        }
        Err(TidemillError::Unsupported {
            operator: format!("files sink {}", self.name),
            reason: format!(
                "supports output_mode = 'append' only, not '{mode}' (committed {} files \
                 are never rewritten)",
                self.format
            ),
            fix: format!(
                "Use output_mode = 'append' (for an aggregation: a watermark on the stream and \
                 a window among the group keys), or a console or kafka sink for {mode} mode"
            ),
        })
    }

    /// The partition columns must be columns of the output (of a type that
    /// can partition), and CSV cannot hold nested columns.
    fn check_schema(&self, schema: &Schema) -> Result<()> {
        self.file_sink().check_schema(schema)
    }

    fn sink(&self, _checkpoint: Option<&str>) -> Arc<dyn Sink> {
        Arc::new(self.file_sink())
    }

    /// A batch run writes a fresh result: committed output at the path
    /// would make its batch 0 look written already.
    async fn check_batch_run(&self, session: &SessionContext) -> Result<()> {
        // Registers the store of an `s3://` path with the sink's options.
        Location::resolve_with(&self.path, &self.storage, &session.runtime_env())?;
        if FileSink::committed_batches(session, &self.path)
            .await?
            .is_empty()
        {
            return Ok(());
        }
        Err(TidemillError::sink(
            self.sink(None).description(),
            format!(
                "'{}' already holds committed output; a batch run writes a fresh result: remove \
                 it or point the sink elsewhere",
                self.path
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ConnectorOptions, Position};

    fn declare(pairs: &[(&str, &str)]) -> std::result::Result<Box<dyn DeclaredSink>, OptionError> {
        let mut options = ConnectorOptions::new("sink out", Position::new(1, 1))
            .with_reserved(&["connector", "output_mode"]);
        for (i, (key, value)) in pairs.iter().enumerate() {
            options
                .insert(key, *value, Position::new(2, 1 + 10 * i as u64))
                .unwrap();
        }
        FilesSinkConnector.declare(&SinkDeclaration {
            name: "out".into(),
            output_mode: OutputMode::Append,
            options,
        })
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        declare(pairs).unwrap_err().to_string()
    }

    #[test]
    fn formats_and_options_make_the_sink() {
        let description = |pairs: &[(&str, &str)]| declare(pairs).unwrap().sink(None).description();
        assert_eq!(
            description(&[("path", "memory:///o")]),
            "FileSink[parquet: memory:///o]"
        );
        for format in ["parquet", "json", "csv"] {
            assert_eq!(
                description(&[("path", "memory:///o"), ("format", format)]),
                format!("FileSink[{format}: memory:///o]")
            );
        }
        declare(&[
            ("path", "memory:///o"),
            ("format", "csv"),
            ("header", "false"),
            ("partition_by", " day , sym"),
            ("max_rows_per_file", "10"),
        ])
        .unwrap();
    }

    #[test]
    fn bad_options_name_the_option_and_value() {
        assert_eq!(
            error(&[("path", "o"), ("format", "xml")]),
            "2:11: unknown format 'xml' for sink out; valid formats: parquet, json, csv"
        );
        assert_eq!(
            error(&[("path", "o"), ("format", "json"), ("header", "true")]),
            "2:21: option 'header' applies to format 'csv' only, not 'json'"
        );
        assert_eq!(
            error(&[("path", "o"), ("format", "csv"), ("header", "yes")]),
            "2:21: option 'header' must be true or false, got 'yes'"
        );
        assert_eq!(
            error(&[("path", "o"), ("partition_by", "a,,b")]),
            "2:11: option 'partition_by' must be column names separated by commas, got 'a,,b'"
        );
        assert_eq!(
            error(&[("path", "o"), ("partition_by", "a, b, a")]),
            "2:11: option 'partition_by' names the column 'a' twice, in 'a, b, a'"
        );
        assert_eq!(
            error(&[("path", "o"), ("max_rows_per_file", "many")]),
            "2:11: option 'max_rows_per_file' must be a whole number, got 'many'"
        );
        assert!(
            error(&[("path", "o"), ("partitionby", "a")])
                .contains("unknown option 'partitionby' for a files sink (sink out)"),
        );
    }

    #[test]
    fn partition_columns_are_checked_against_the_output() {
        use arrow::datatypes::{DataType, Field};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Float64, false),
        ]);
        let declared = declare(&[("path", "memory:///o"), ("partition_by", "sym")]).unwrap();
        let err = declared.check_schema(&schema).unwrap_err().to_string();
        assert_eq!(
            err,
            "sink FileSink[parquet: memory:///o]: partition column 'sym' is not a column of the \
             output; its columns: id, price"
        );
        let declared = declare(&[("path", "memory:///o"), ("partition_by", "price")]).unwrap();
        let err = declared.check_schema(&schema).unwrap_err().to_string();
        assert!(err.contains("'price' has type Float64"), "{err}");
        let declared = declare(&[("path", "memory:///o"), ("partition_by", "id")]).unwrap();
        declared.check_schema(&schema).unwrap();
    }
}
