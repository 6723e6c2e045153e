//! Connectors by name, as a pipeline file declares them:
//! `CREATE STREAM … WITH (connector = 'files', …)` looks up `files` in a
//! [`ConnectorRegistry`], whose [`StreamConnector`] reads the options and
//! makes the source; `CREATE SINK` does the same with a [`SinkConnector`].
//!
//! Each connector owns its options: it reads them through
//! [`ConnectorOptions`]' typed getters, refuses the ones it does not know,
//! and says every mistake at its line and column ([`OptionError`]). The SQL
//! layer (`tidemill::sql`) only parses the file and looks connectors up.
//! Adding a connector is a type implementing one of the two traits, in the
//! connector's own folder, and one line in [`ConnectorRegistry::builtin`]
//! (or [`ConnectorRegistry::register_stream`] /
//! [`ConnectorRegistry::register_sink`] for a connector of your own; see
//! `examples/custom_source.rs`).

mod options;

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use tidemill_engine::{OutputMode, Result, Sink, Source};

pub use options::{ConnectorOptions, OptionError, Position, STORAGE_PREFIX};

/// A `CREATE STREAM` as its connector sees it.
#[derive(Debug, Clone)]
pub struct StreamDeclaration {
    /// The stream's name.
    pub name: String,
    /// The declared columns, typed by DataFusion's SQL type rules; `None`
    /// when the declaration lists none (the connector then has a fixed
    /// schema or infers one).
    pub schema: Option<SchemaRef>,
    /// The `WITH (…)` options.
    pub options: ConnectorOptions,
}

/// A `CREATE SINK` as its connector sees it.
#[derive(Debug, Clone)]
pub struct SinkDeclaration {
    /// The sink's name (also its query's name).
    pub name: String,
    /// The output mode its query writes in.
    pub output_mode: OutputMode,
    /// The `WITH (…)` options.
    pub options: ConnectorOptions,
}

/// Makes a source from a stream's declaration.
pub trait StreamConnector: Send + Sync {
    /// Reads and checks the declaration's options and returns the source
    /// they describe. Does no I/O: every mistake in the options is found
    /// before any query starts. Its batch form (for `tidemill batch`) is
    /// [`Source::read_batch`].
    fn source(
        &self,
        stream: &StreamDeclaration,
    ) -> std::result::Result<Arc<dyn Source>, OptionError>;
}

/// Makes sinks from a sink's declaration.
pub trait SinkConnector: Send + Sync {
    /// Reads and checks the declaration's options. Does no I/O.
    fn declare(
        &self,
        sink: &SinkDeclaration,
    ) -> std::result::Result<Box<dyn DeclaredSink>, OptionError>;
}

/// A checked sink declaration, from which each query gets its sink.
#[async_trait]
pub trait DeclaredSink: Send + Sync + fmt::Debug {
    /// Refuses an output mode the sink cannot write (as an
    /// [`tidemill_engine::TidemillError::Unsupported`] naming the modes it
    /// takes). Checked before a streaming query starts.
    fn check_output_mode(&self, _mode: OutputMode) -> Result<()> {
        Ok(())
    }

    /// Refuses a query whose output (of `schema`) the sink cannot write,
    /// naming the column at fault (a `files` sink's partition column that
    /// the output does not have, say). Checked before a query starts, in a
    /// streaming run and a batch run alike, so such a mistake is reported
    /// before any work is done.
    fn check_schema(&self, _schema: &Schema) -> Result<()> {
        Ok(())
    }

    /// The sink of one query. `checkpoint` is the streaming query's
    /// checkpoint directory, where a sink may keep a log of its own (in
    /// `<checkpoint>/sink`); a batch run has none.
    fn sink(&self, checkpoint: Option<&str>) -> Arc<dyn Sink>;

    /// Checked before a batch run writes its whole result as batch 0: a
    /// sink that would take it for an already-written batch (and write
    /// nothing) refuses here.
    async fn check_batch_run(&self, _session: &SessionContext) -> Result<()> {
        Ok(())
    }
}

/// The connectors a pipeline can name, for streams and for sinks, in the
/// order registered (messages list them so).
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    streams: Vec<(String, Arc<dyn StreamConnector>)>,
    sinks: Vec<(String, Arc<dyn SinkConnector>)>,
}

impl ConnectorRegistry {
    /// No connectors.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in connectors: `files`, `rate`, (with the `kafka`
    /// feature) `kafka` and (with the `delta` feature) `delta` streams;
    /// `files`, `console`, `kafka` (with the `kafka` feature), `delta`
    /// (with the `delta` feature) and `iceberg` (with the `iceberg`
    /// feature) sinks.
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        registry.register_stream("files", Arc::new(crate::file_source::FilesConnector));
        registry.register_stream("rate", Arc::new(crate::rate_source::RateConnector));
        #[cfg(feature = "kafka")]
        registry.register_stream("kafka", Arc::new(crate::kafka::KafkaConnector));
        #[cfg(feature = "delta")]
        registry.register_stream("delta", Arc::new(crate::delta_source::DeltaSourceConnector));
        registry.register_sink("files", Arc::new(crate::file_sink::FilesSinkConnector));
        registry.register_sink("console", Arc::new(crate::console_sink::ConsoleConnector));
        #[cfg(feature = "kafka")]
        registry.register_sink("kafka", Arc::new(crate::kafka::KafkaConnector));
        #[cfg(feature = "delta")]
        registry.register_sink("delta", Arc::new(crate::delta_sink::DeltaConnector));
        #[cfg(feature = "iceberg")]
        registry.register_sink("iceberg", Arc::new(crate::iceberg_sink::IcebergConnector));
        registry
    }

    /// Registers (or replaces) the stream connector `name`.
    pub fn register_stream(&mut self, name: &str, connector: Arc<dyn StreamConnector>) {
        let name = name.to_ascii_lowercase();
        self.streams.retain(|(n, _)| *n != name);
        self.streams.push((name, connector));
    }

    /// Registers (or replaces) the sink connector `name`.
    pub fn register_sink(&mut self, name: &str, connector: Arc<dyn SinkConnector>) {
        let name = name.to_ascii_lowercase();
        self.sinks.retain(|(n, _)| *n != name);
        self.sinks.push((name, connector));
    }

    /// The stream connector `name`.
    pub fn stream(&self, name: &str) -> Option<&Arc<dyn StreamConnector>> {
        find(&self.streams, name)
    }

    /// The sink connector `name`.
    pub fn sink(&self, name: &str) -> Option<&Arc<dyn SinkConnector>> {
        find(&self.sinks, name)
    }

    /// The stream connectors' names, in the order registered.
    pub fn stream_names(&self) -> Vec<&str> {
        self.streams.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The sink connectors' names, in the order registered.
    pub fn sink_names(&self) -> Vec<&str> {
        self.sinks.iter().map(|(n, _)| n.as_str()).collect()
    }
}

fn find<'a, T: ?Sized>(entries: &'a [(String, Arc<T>)], name: &str) -> Option<&'a Arc<T>> {
    entries
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| c)
}

impl fmt::Debug for ConnectorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorRegistry")
            .field("streams", &self.stream_names())
            .field("sinks", &self.sink_names())
            .finish()
    }
}
