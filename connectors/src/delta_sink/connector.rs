//! `connector = 'delta'` in a pipeline's `CREATE SINK`: the options of a
//! [`DeltaSink`].

use std::sync::Arc;

use arrow::datatypes::Schema;
use async_trait::async_trait;
use tidemill_engine::{OutputMode, Result, Sink, StorageOptions};

use super::DeltaSink;
use crate::registry::{DeclaredSink, OptionError, STORAGE_PREFIX, SinkConnector, SinkDeclaration};

/// Makes a [`DeltaSink`] from `path` (required), `partition_by` and
/// `merge_keys` (comma-separated column names) and `checkpoint_interval`
/// (versions between Delta checkpoints of a table the sink creates), and
/// the S3 settings `aws_*` of an `s3://` path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeltaConnector;

/// A checked Delta sink declaration.
#[derive(Debug)]
struct Declared {
    path: String,
    partition_by: Vec<String>,
    merge_keys: Vec<String>,
    checkpoint_interval: Option<u64>,
    storage: StorageOptions,
}

impl SinkConnector for DeltaConnector {
    fn declare(
        &self,
        sink: &SinkDeclaration,
    ) -> std::result::Result<Box<dyn DeclaredSink>, OptionError> {
        let options = &sink.options;
        options.check_known(
            "a delta sink",
            &["path", "partition_by", "merge_keys", "checkpoint_interval"],
            Some(STORAGE_PREFIX),
        )?;
        let merge_keys = options.column_list("merge_keys")?;
        if !merge_keys.is_empty() && sink.output_mode == OutputMode::Complete {
            return Err(options.error(
                "merge_keys",
                "option 'merge_keys' does not apply to output_mode = 'complete', which \
                 overwrites the whole table with each batch"
                    .to_string(),
            ));
        }
        Ok(Box::new(Declared {
            path: options.require("path")?.to_string(),
            partition_by: options.column_list("partition_by")?,
            merge_keys,
            checkpoint_interval: options.number("checkpoint_interval")?,
            storage: options.storage_options()?,
        }))
    }
}

impl Declared {
    fn delta_sink(&self) -> DeltaSink {
        let mut sink = DeltaSink::new(self.path.clone())
            .storage_options(self.storage.clone())
            .partition_by(self.partition_by.clone())
            .merge_on(self.merge_keys.clone());
        if let Some(n) = self.checkpoint_interval {
            sink = sink.checkpoint_interval(n);
        }
        sink
    }
}

#[async_trait]
impl DeclaredSink for Declared {
    /// Update mode needs `merge_keys`.
    fn check_output_mode(&self, mode: OutputMode) -> Result<()> {
        let sink = self.delta_sink();
        super::check_mode(mode, &self.merge_keys).map_err(|e| e.into_tidemill(&sink.description()))
    }

    /// The partition columns and merge keys must be columns of the output,
    /// whose types Delta must hold.
    fn check_schema(&self, schema: &Schema) -> Result<()> {
        let sink = self.delta_sink();
        super::schema::check_columns("partition", &self.partition_by, schema)
            .and_then(|()| super::schema::check_columns("merge key", &self.merge_keys, schema))
            .and_then(|()| super::schema::delta_types(&sink.display, schema).map(|_| ()))
            .map_err(|e| e.into_tidemill(&sink.description()))
    }

    fn sink(&self, _checkpoint: Option<&str>) -> Arc<dyn Sink> {
        Arc::new(self.delta_sink())
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
        DeltaConnector.declare(&SinkDeclaration {
            name: "out".into(),
            output_mode: mode,
            options,
        })
    }

    #[test]
    fn options_make_the_sink() {
        let declared = declare(
            OutputMode::Update,
            &[
                ("path", "/tmp/t"),
                ("partition_by", "day"),
                ("merge_keys", " day , sym"),
                ("checkpoint_interval", "10"),
            ],
        )
        .unwrap();
        assert_eq!(
            declared.sink(None).description(),
            "DeltaSink[file:///tmp/t]"
        );
        declared.check_output_mode(OutputMode::Update).unwrap();
    }

    #[test]
    fn bad_options_name_the_option() {
        let error = |mode, pairs: &[(&str, &str)]| declare(mode, pairs).unwrap_err().to_string();
        assert!(
            error(OutputMode::Append, &[("partition_by", "a")]).contains("'path'"),
            "a missing path is named"
        );
        assert_eq!(
            error(OutputMode::Append, &[("path", "t"), ("merge_keys", "a,,b")]),
            "2:11: option 'merge_keys' must be column names separated by commas, got 'a,,b'"
        );
        assert_eq!(
            error(OutputMode::Complete, &[("path", "t"), ("merge_keys", "a")]),
            "2:11: option 'merge_keys' does not apply to output_mode = 'complete', which \
             overwrites the whole table with each batch"
        );
        assert!(
            error(OutputMode::Append, &[("path", "t"), ("mergekeys", "a")])
                .contains("unknown option 'mergekeys' for a delta sink (sink out)")
        );
    }

    #[test]
    fn update_mode_without_keys_is_refused_with_the_fix() {
        let declared = declare(OutputMode::Update, &[("path", "/tmp/t")]).unwrap();
        let err = declared
            .check_output_mode(OutputMode::Update)
            .unwrap_err()
            .to_string();
        assert!(err.contains("without merge keys"), "{err}");
        assert!(err.contains("merge_keys = 'key'"), "{err}");
    }

    #[test]
    fn key_and_partition_columns_are_checked_against_the_output() {
        use arrow::datatypes::{DataType, Field};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Float64, false),
        ]);
        let declared = declare(
            OutputMode::Update,
            &[("path", "/tmp/t"), ("merge_keys", "sym")],
        )
        .unwrap();
        let err = declared.check_schema(&schema).unwrap_err().to_string();
        assert_eq!(
            err,
            "sink DeltaSink[file:///tmp/t]: merge key column 'sym' is not a column of the output \
             (its columns: id, price)"
        );
        let declared = declare(
            OutputMode::Append,
            &[("path", "/tmp/t"), ("partition_by", "id")],
        )
        .unwrap();
        declared.check_schema(&schema).unwrap();
    }
}
