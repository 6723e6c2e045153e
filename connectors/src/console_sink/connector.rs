//! `connector = 'console'` in a pipeline's `CREATE SINK`: the options of a
//! [`ConsoleSink`].

use std::sync::Arc;

use tidemill_engine::Sink;

use super::ConsoleSink;
use crate::registry::{DeclaredSink, OptionError, SinkConnector, SinkDeclaration};

/// Makes a [`ConsoleSink`] from `num_rows`; every output mode is printed as
/// it comes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConsoleConnector;

/// A checked console sink declaration.
#[derive(Debug)]
struct Declared {
    name: String,
    num_rows: Option<usize>,
}

impl SinkConnector for ConsoleConnector {
    fn declare(&self, sink: &SinkDeclaration) -> Result<Box<dyn DeclaredSink>, OptionError> {
        sink.options
            .check_known("a console sink", &["num_rows"], None)?;
        Ok(Box::new(Declared {
            name: sink.name.clone(),
            num_rows: sink.options.number("num_rows")?,
        }))
    }
}

impl DeclaredSink for Declared {
    fn sink(&self, _checkpoint: Option<&str>) -> Arc<dyn Sink> {
        // Several console sinks share standard output: each batch's header
        // names its sink.
        let mut sink = ConsoleSink::new().name(&self.name);
        if let Some(n) = self.num_rows {
            sink = sink.num_rows(n);
        }
        Arc::new(sink)
    }
}
