//! `connector = 'files'` in a pipeline's `CREATE SINK`: the options of a
//! [`ParquetSink`].

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use tidemill_engine::{OutputMode, Result, Sink, TidemillError};

use super::ParquetSink;
use crate::registry::{DeclaredSink, OptionError, SinkConnector, SinkDeclaration};

/// Makes a [`ParquetSink`] from `path` (required), `format` (`parquet`
/// only) and `max_rows_per_file`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FilesSinkConnector;

/// A checked files sink declaration.
#[derive(Debug)]
struct Declared {
    name: String,
    path: String,
    max_rows_per_file: Option<usize>,
}

impl SinkConnector for FilesSinkConnector {
    fn declare(
        &self,
        sink: &SinkDeclaration,
    ) -> std::result::Result<Box<dyn DeclaredSink>, OptionError> {
        let options = &sink.options;
        options.check_known(
            "a files sink",
            &["path", "format", "max_rows_per_file"],
            None,
        )?;
        if let Some(format) = options.get("format")
            && format != "parquet"
        {
            return Err(options.error(
                "format",
                format!("files sinks write parquet; format '{format}' is not supported"),
            ));
        }
        Ok(Box::new(Declared {
            name: sink.name.clone(),
            path: options.require("path")?.to_string(),
            max_rows_per_file: options.number("max_rows_per_file")?,
        }))
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
                "supports output_mode = 'append' only, not '{mode}' (committed parquet files \
                 are never rewritten)"
            ),
            fix: format!(
                "Use output_mode = 'append' (for an aggregation: a watermark on the stream and \
                 a window among the group keys), or a console or kafka sink for {mode} mode"
            ),
        })
    }

    fn sink(&self, _checkpoint: Option<&str>) -> Arc<dyn Sink> {
        let mut sink = ParquetSink::new(self.path.clone());
        if let Some(n) = self.max_rows_per_file {
            sink = sink.max_rows_per_file(n);
        }
        Arc::new(sink)
    }

    /// A batch run writes a fresh result: committed output at the path
    /// would make its batch 0 look written already.
    async fn check_batch_run(&self, session: &SessionContext) -> Result<()> {
        if ParquetSink::committed_batches(session, &self.path)
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
