//! `connector = 'iceberg'` in a pipeline's `CREATE SINK`: the options of
//! an [`IcebergSink`].

use std::sync::Arc;

use arrow::datatypes::Schema;
use async_trait::async_trait;
use tidemill_engine::{OutputMode, Result, Sink, StorageOptions};

use super::IcebergSink;
use crate::registry::{DeclaredSink, OptionError, STORAGE_PREFIX, SinkConnector, SinkDeclaration};

/// Makes an [`IcebergSink`] from `path` (the table's directory, with the
/// embedded catalog) or `catalog_uri` and `table` (a REST catalog's table,
/// `namespace.name`; `path` then optionally sets the location of a table
/// the sink creates, and `warehouse` the catalog's warehouse),
/// `partition_by` (comma-separated column names), and the S3 settings
/// `aws_*` of an `s3://` path (embedded catalog only).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IcebergConnector;

/// A checked Iceberg sink declaration.
#[derive(Debug)]
struct Declared {
    path: Option<String>,
    catalog_uri: Option<String>,
    table: Option<String>,
    warehouse: Option<String>,
    partition_by: Vec<String>,
    storage: StorageOptions,
}

impl SinkConnector for IcebergConnector {
    fn declare(
        &self,
        sink: &SinkDeclaration,
    ) -> std::result::Result<Box<dyn DeclaredSink>, OptionError> {
        let options = &sink.options;
        options.check_known(
            "an iceberg sink",
            &["path", "partition_by", "catalog_uri", "table", "warehouse"],
            Some(STORAGE_PREFIX),
        )?;
        let storage = options.storage_options()?;
        if sink.output_mode != OutputMode::Append {
            return Err(options.error_at_declaration(format!(
                "an iceberg sink writes the append output mode only (the iceberg crate has no \
                 overwrite or row-level delete commit), not output_mode = '{}'; use a delta \
                 sink for complete or update mode",
                mode_name(sink.output_mode)
            )));
        }
        let catalog_uri = options.get("catalog_uri").map(str::to_string);
        let table = options.get("table").map(str::to_string);
        let path = match &catalog_uri {
            None => {
                for key in ["table", "warehouse"] {
                    if options.get(key).is_some() {
                        return Err(options.error(
                            key,
                            format!(
                                "option '{key}' applies to a REST catalog (catalog_uri); the \
                                 embedded catalog keeps the table in its 'path'"
                            ),
                        ));
                    }
                }
                Some(options.require("path")?.to_string())
            }
            Some(_) => {
                if let Some((key, _)) = options.prefixed(STORAGE_PREFIX).next() {
                    let key = format!("{STORAGE_PREFIX}{key}");
                    return Err(options.error(
                        &key,
                        format!(
                            "option '{key}' configures the store of an s3:// path of the \
                             embedded catalog; a REST catalog's tables are on local disk in \
                             this build"
                        ),
                    ));
                }
                let table = options.require("table")?;
                if let Err(e) = IcebergSink::rest("http://unused", table) {
                    return Err(options.error("table", e.to_string()));
                }
                options.get("path").map(str::to_string)
            }
        };
        Ok(Box::new(Declared {
            path,
            catalog_uri,
            table,
            warehouse: options.get("warehouse").map(str::to_string),
            partition_by: options.column_list("partition_by")?,
            storage,
        }))
    }
}

fn mode_name(mode: OutputMode) -> &'static str {
    match mode {
        OutputMode::Append => "append",
        OutputMode::Complete => "complete",
        OutputMode::Update => "update",
    }
}

impl Declared {
    fn iceberg_sink(&self) -> IcebergSink {
        let sink = match (&self.catalog_uri, &self.table) {
            (Some(uri), Some(table)) => {
                let mut sink = IcebergSink::rest(uri.clone(), table)
                    .expect("the table name is checked when declared");
                if let Some(warehouse) = &self.warehouse {
                    sink = sink.warehouse(warehouse.clone());
                }
                if let Some(path) = &self.path {
                    sink = sink.location(path.clone());
                }
                sink
            }
            _ => IcebergSink::new(self.path.clone().unwrap_or_default())
                .storage_options(self.storage.clone()),
        };
        sink.partition_by(self.partition_by.clone())
    }
}

#[async_trait]
impl DeclaredSink for Declared {
    /// Append mode only.
    fn check_output_mode(&self, mode: OutputMode) -> Result<()> {
        let sink = self.iceberg_sink();
        super::check_mode(mode).map_err(|e| e.into_tidemill(&sink.description()))
    }

    /// The partition columns must be columns of the output, whose types
    /// Iceberg must hold.
    fn check_schema(&self, schema: &Schema) -> Result<()> {
        let sink = self.iceberg_sink();
        super::schema::check_partition_columns(&self.partition_by, schema)
            .and_then(|()| super::schema::table_schema(&sink.display, schema).map(|_| ()))
            .map_err(|e| e.into_tidemill(&sink.description()))
    }

    fn sink(&self, _checkpoint: Option<&str>) -> Arc<dyn Sink> {
        Arc::new(self.iceberg_sink())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ConnectorOptions, Position};

    fn declare(
        mode: OutputMode,
        pairs: &[(&str, &str)],
    ) -> std::result::Result<Box<dyn DeclaredSink>, OptionError> {
        let mut options = ConnectorOptions::new("sink out", Position::new(1, 1))
            .with_reserved(&["connector", "output_mode"]);
        for (i, (key, value)) in pairs.iter().enumerate() {
            options
                .insert(key, *value, Position::new(2, 1 + 10 * i as u64))
                .unwrap();
        }
        IcebergConnector.declare(&SinkDeclaration {
            name: "out".into(),
            output_mode: mode,
            options,
        })
    }

    #[test]
    fn options_make_the_sink() {
        let declared = declare(
            OutputMode::Append,
            &[("path", "/tmp/t"), ("partition_by", " day , sym")],
        )
        .unwrap();
        assert_eq!(
            declared.sink(None).description(),
            "IcebergSink[file:///tmp/t]"
        );
        declared.check_output_mode(OutputMode::Append).unwrap();
        let rest = declare(
            OutputMode::Append,
            &[
                ("catalog_uri", "http://127.0.0.1:8181"),
                ("table", "lake.trades"),
                ("warehouse", "w"),
            ],
        )
        .unwrap();
        assert_eq!(
            rest.sink(None).description(),
            "IcebergSink[lake.trades in http://127.0.0.1:8181]"
        );
    }

    #[test]
    fn s3_options_go_to_an_s3_table_of_the_embedded_catalog() {
        let declared = declare(
            OutputMode::Append,
            &[("path", "s3://lake/t/"), ("aws_region", "us-east-1")],
        )
        .unwrap();
        assert_eq!(
            declared.sink(None).description(),
            "IcebergSink[s3://lake/t]"
        );
        let err = declare(
            OutputMode::Append,
            &[("path", "s3://lake/t"), ("aws_regoin", "us-east-1")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown S3 option 'aws_regoin'"), "{err}");
        let err = declare(
            OutputMode::Append,
            &[
                ("catalog_uri", "http://127.0.0.1:8181"),
                ("table", "lake.t"),
                ("aws_region", "us-east-1"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("2:21: option 'aws_region' configures the store of an s3:// path"),
            "{err}"
        );
    }

    #[test]
    fn bad_options_name_the_option() {
        let error = |mode, pairs: &[(&str, &str)]| declare(mode, pairs).unwrap_err().to_string();
        assert!(
            error(OutputMode::Append, &[("partition_by", "a")]).contains("'path'"),
            "a missing path is named"
        );
        assert_eq!(
            error(
                OutputMode::Append,
                &[("path", "t"), ("partition_by", "a,,b")]
            ),
            "2:11: option 'partition_by' must be column names separated by commas, got 'a,,b'"
        );
        assert!(error(OutputMode::Complete, &[("path", "t")]).contains("append output mode only"),);
        assert!(
            error(OutputMode::Append, &[("path", "t"), ("table", "a.b")])
                .contains("option 'table' applies to a REST catalog")
        );
        assert!(
            error(
                OutputMode::Append,
                &[
                    ("catalog_uri", "http://127.0.0.1:1"),
                    ("table", "nonamespace")
                ]
            )
            .contains("namespace.table")
        );
        assert!(
            error(OutputMode::Append, &[("path", "t"), ("partitionby", "a")])
                .contains("unknown option 'partitionby' for an iceberg sink (sink out)")
        );
    }

    #[test]
    fn partition_columns_are_checked_against_the_output() {
        use arrow::datatypes::{DataType, Field};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Float64, false),
        ]);
        let declared = declare(
            OutputMode::Append,
            &[("path", "/tmp/t"), ("partition_by", "sym")],
        )
        .unwrap();
        let err = declared.check_schema(&schema).unwrap_err().to_string();
        assert_eq!(
            err,
            "sink IcebergSink[file:///tmp/t]: partition column 'sym' is not a column of the \
             output (its columns: id, price)"
        );
    }
}
