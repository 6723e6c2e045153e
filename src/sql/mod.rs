//! Pipelines written in SQL: streams, sinks and queries in one file, run as
//! streaming queries or as one batch job (see `docs/sql.md`).
//!
//! ```sql
//! CREATE STREAM trades (
//!   symbol VARCHAR, price DOUBLE, quantity DOUBLE, event_time TIMESTAMP,
//!   WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
//! ) WITH (connector = 'files', path = 'data/trades', format = 'json');
//!
//! CREATE SINK per_minute WITH (connector = 'files', path = 'out/per_minute',
//!                              output_mode = 'append');
//!
//! INSERT INTO per_minute
//! SELECT window.start AS minute, symbol, count(*) AS trades
//! FROM trades GROUP BY window(event_time, '1 minute'), symbol;
//! ```
//!
//! [`Pipeline::parse`] reads the file with DataFusion's SQL parser, extended
//! with `CREATE STREAM` and `CREATE SINK` ([`parser`]); every other
//! statement (`CREATE EXTERNAL TABLE` for static tables, `CREATE VIEW`,
//! `SET`, …) is DataFusion's. Before a query is planned, Spark's implicit
//! grouping-window column (`window.start`, `session_window.end`, …) is
//! rewritten to the `GROUP BY`'s call ([`spark_window`]). Streams read files,
//! generated rows (`rate`) or Kafka topics; sinks write parquet files with a
//! manifest, the console, or Kafka topics.
//!
//! [`Pipeline::start`] starts one streaming query per `INSERT INTO`;
//! [`Pipeline::run_batch`] runs the same statements once over everything the
//! streams hold now (every file the stream would read, through the stream's
//! own reader; a bounded read of Kafka topics); [`Pipeline::explain`]
//! describes how each query would run. The `tidemill` command is a thin
//! shell around these.

pub mod parser;
pub mod spark_window;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{CreateView, Query, Statement as SQLStatement};
use datafusion::sql::sqlparser::parser::ParserError;
use tidemill_connectors::{
    ConnectorOptions, ConnectorRegistry, DeclaredSink, OptionError, SinkDeclaration,
    StreamDeclaration,
};
use tidemill_engine::window::register_window_functions;
use tidemill_engine::{
    OutputMode, SinkContext, Source, StreamingContext, StreamingDataFrame, StreamingQuery,
    TidemillError, Trigger,
};

use parser::{Located, PipelineStatement, SinkDef, StreamDef, parse_pipeline};

/// What went wrong with a pipeline file, saying where.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A mistake at a line and column of the file.
    #[error("{line}:{column}: {message}")]
    At {
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
        /// What is wrong and what is expected.
        message: String,
    },
    /// An error from DataFusion's SQL parser or planner that knows no
    /// position in the file.
    #[error("{0}")]
    Sql(String),
    /// An `INSERT INTO` that cannot run as a stream (or could not start),
    /// said with the statement's position and its sink.
    #[error("{line}:{column}: INSERT INTO {sink}: {error}")]
    Rejected {
        /// 1-based line of the `INSERT INTO`.
        line: u64,
        /// 1-based column of the `INSERT INTO`.
        column: u64,
        /// The query's sink (also its name).
        sink: String,
        /// Why it cannot run, and what would fix it.
        error: Box<TidemillError>,
    },
    /// The engine refused or stopped a query.
    #[error(transparent)]
    Engine(#[from] TidemillError),
    /// A query of a batch run failed while it ran: reading malformed input
    /// (the source's error names the file, line and column), or writing
    /// its sink. Said as `tidemill run` says a failed query.
    #[error("query {sink} failed: {error}")]
    Query {
        /// The query's sink (also its name).
        sink: String,
        /// What stopped it.
        error: TidemillError,
    },
}

impl PipelineError {
    /// Where in the pipeline file the mistake is, as a 1-based line and
    /// column, when known. The error's message then starts with
    /// `LINE:COLUMN: `, so `format!("{file}:{error}")` says it as compilers
    /// do: `per_minute.sql:4:3: …`.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            PipelineError::At { line, column, .. }
            | PipelineError::Rejected { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

impl From<DataFusionError> for PipelineError {
    /// Planner errors carry the position of the offending identifier,
    /// table or function as a diagnostic (columns only when the session
    /// collects spans, as the pipeline's planning session does); parser
    /// errors end with sqlparser's ` at Line: L, Column: C`.
    fn from(error: DataFusionError) -> Self {
        let span = error.diagnostic().and_then(|d| d.span);
        if let DataFusionError::SQL(parser_error, _) = error.find_root() {
            return match (PipelineError::from(parser_error.as_ref().clone()), span) {
                (PipelineError::Sql(message), Some(span)) => PipelineError::At {
                    line: span.start.line,
                    column: span.start.column,
                    message,
                },
                (located, _) => located,
            };
        }
        let message = one_line(&error.strip_backtrace());
        if let Some(span) = span {
            return PipelineError::At {
                line: span.start.line,
                column: span.start.column,
                message: without_sqlparser_location(&message).0.to_string(),
            };
        }
        located_or_sql(message)
    }
}

impl From<OptionError> for PipelineError {
    fn from(error: OptionError) -> Self {
        PipelineError::At {
            line: error.position.line,
            column: error.position.column,
            message: error.message,
        }
    }
}

impl From<ParserError> for PipelineError {
    fn from(error: ParserError) -> Self {
        located_or_sql(format!(
            "SQL syntax error: {}",
            one_line(&error.to_string())
        ))
    }
}

/// `message` at the position sqlparser appended to it, if it did.
fn located_or_sql(message: String) -> PipelineError {
    match without_sqlparser_location(&message) {
        (text, Some((line, column))) => PipelineError::At {
            line,
            column,
            message: text.to_string(),
        },
        (_, None) => PipelineError::Sql(message),
    }
}

/// Splits sqlparser's ` at Line: L, Column: C` off the end of `message`.
fn without_sqlparser_location(message: &str) -> (&str, Option<(u64, u64)>) {
    let parsed = message.rsplit_once(" at Line: ").and_then(|(text, at)| {
        let (line, column) = at.split_once(", Column: ")?;
        Some((text, (line.parse().ok()?, column.parse().ok()?)))
    });
    match parsed {
        Some((text, at)) => (text, Some(at)),
        None => (message, None),
    }
}

/// A message on one line: DataFusion puts hints (`Did you mean …?`) on
/// lines of their own.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How [`Pipeline::start`] runs the queries.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// When batches run.
    pub trigger: Trigger,
    /// The checkpoint root: each query checkpoints to `<root>/<sink name>`.
    pub checkpoint: String,
    /// How durable the checkpoints' and sinks' writes are (see
    /// [`QueryOptions::checkpoint_durability`](tidemill_engine::QueryOptions)).
    pub checkpoint_durability: tidemill_engine::Durability,
    /// Whether each query begins its next trigger while a batch commits
    /// (see [`QueryOptions::read_ahead`](tidemill_engine::QueryOptions)).
    pub read_ahead: bool,
}

/// A started query of a pipeline.
#[derive(Debug)]
pub struct PipelineQuery {
    /// The sink it writes to (also the query's name).
    pub sink: String,
    /// The running query.
    pub query: StreamingQuery,
}

/// What [`Pipeline::run_batch`] wrote to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutput {
    /// The sink.
    pub sink: String,
    /// Rows written.
    pub rows: usize,
}

/// How a query of the pipeline would run, from [`Pipeline::explain`].
#[derive(Debug)]
pub struct Explanation {
    /// The sink of the query.
    pub sink: String,
    /// The engine's description, or why the query cannot run as a stream.
    pub plan: Result<String, TidemillError>,
}

/// A parsed pipeline file, and the connectors its streams and sinks may
/// name.
#[derive(Debug, Clone)]
pub struct Pipeline {
    statements: Vec<Located<PipelineStatement>>,
    connectors: ConnectorRegistry,
}

/// A declared sink: its output mode and what its connector made of its
/// options.
#[derive(Debug, Clone)]
struct SinkSpec {
    output_mode: OutputMode,
    declared: Arc<dyn DeclaredSink>,
}

/// How [`Pipeline::prepare`] reads the declared streams.
#[derive(Clone, Copy)]
enum Reading<'a> {
    /// As streams, from their connectors' sources.
    Stream,
    /// In their batch form.
    Batch,
    /// As streams, from these sources where a stream is named here.
    Replaced(&'a HashMap<String, Arc<dyn Source>>),
}

/// A query of the pipeline planned over replaced sources
/// ([`Pipeline::plan_with_sources`]).
#[derive(Debug)]
pub struct PlannedQuery {
    /// The sink it writes to (also the query's name).
    pub sink: String,
    /// The sink's output mode.
    pub output_mode: OutputMode,
    /// The streaming query, not started.
    pub df: DataFrame,
}

/// An `INSERT INTO` ready to run: its sink and its query.
struct Prepared {
    sink: String,
    spec: SinkSpec,
    df: DataFrame,
    /// The line where the `INSERT INTO` starts in the file.
    line: u64,
    /// The column where the `INSERT INTO` starts in the file.
    column: u64,
}

impl Prepared {
    /// `error` said of this `INSERT INTO`, at its position.
    fn rejected(&self, error: TidemillError) -> PipelineError {
        PipelineError::Rejected {
            line: self.line,
            column: self.column,
            sink: self.sink.clone(),
            error: Box::new(error),
        }
    }

    /// How the query would run as a stream, or why it cannot: first what
    /// the pipeline knows (its sink's output modes, whether it reads a
    /// stream at all), said in the file's terms, then the engine's checks.
    fn explain(&self) -> Result<String, TidemillError> {
        self.spec
            .declared
            .check_output_mode(self.spec.output_mode)?;
        self.spec
            .declared
            .check_schema(self.df.schema().as_arrow())?;
        if !self.df.is_streaming() {
            return Err(TidemillError::Unsupported {
                operator: format!("INSERT INTO {}", self.sink),
                reason: "reads no stream, only tables and values, so it has nothing to process \
                         incrementally"
                    .into(),
                fix: "Read a stream declared with CREATE STREAM (directly or through a view), \
                      or use `tidemill batch` for static tables"
                    .into(),
            });
        }
        self.df
            .clone()
            .write_stream()
            .output_mode(self.spec.output_mode)
            .explain()
            .map_err(in_sql_terms)
    }
}

/// The engine's refusal with its fix said in the pipeline file's terms
/// where the engine says it in Rust's (a watermark is declared in
/// `CREATE STREAM`, not with `with_watermark`).
fn in_sql_terms(error: TidemillError) -> TidemillError {
    match error {
        TidemillError::Unsupported {
            operator,
            reason,
            fix,
        } if fix.starts_with("Call with_watermark(") => TidemillError::Unsupported {
            operator,
            reason,
            fix: "Declare a watermark on the stream's event-time column (CREATE STREAM name (…, \
                  WATERMARK FOR <column> AS <column> - INTERVAL '10' SECOND) WITH (…)), or use \
                  output_mode = 'update' or 'complete'"
                .into(),
        },
        other => other,
    }
}

impl Pipeline {
    /// Parses `text`; syntax errors name the line and column. Its streams
    /// and sinks may name the built-in connectors
    /// ([`ConnectorRegistry::builtin`]).
    pub fn parse(text: &str) -> Result<Self, PipelineError> {
        Ok(Self {
            statements: parse_pipeline(text)?,
            connectors: ConnectorRegistry::builtin(),
        })
    }

    /// The connectors the pipeline's streams and sinks may name, instead
    /// of the built-in ones: for example the built-in ones and one of your
    /// own (see `examples/custom_source.rs`).
    pub fn with_connectors(mut self, connectors: ConnectorRegistry) -> Self {
        self.connectors = connectors;
        self
    }

    /// The statements, in file order.
    pub fn statements(&self) -> &[Located<PipelineStatement>] {
        &self.statements
    }

    /// Starts one streaming query per `INSERT INTO`, checkpointed under
    /// `options.checkpoint`. A restart with the same checkpoint resumes
    /// each query exactly where it stopped. Every query is checked as
    /// [`Pipeline::explain`] checks it before any starts; one that cannot
    /// run (or start) is [`PipelineError::Rejected`], naming its
    /// `INSERT INTO`.
    pub async fn start(
        &self,
        ctx: &SessionContext,
        options: &RunOptions,
    ) -> Result<Vec<PipelineQuery>, PipelineError> {
        let prepared = self.prepare(ctx, Reading::Stream).await?;
        // Every query is checked before any starts, so that a rejected one
        // does not leave the others running or writing.
        for query in &prepared {
            query.explain().map_err(|e| query.rejected(e))?;
        }
        let mut queries = Vec::new();
        for prepared in prepared {
            let checkpoint = format!(
                "{}/{}",
                options.checkpoint.trim_end_matches('/'),
                prepared.sink
            );
            let query = prepared
                .df
                .write_stream()
                .sink_arc(prepared.spec.declared.sink(Some(&checkpoint)))
                .output_mode(prepared.spec.output_mode)
                .trigger(options.trigger)
                .options(tidemill_engine::QueryOptions {
                    checkpoint_durability: options.checkpoint_durability,
                    read_ahead: options.read_ahead,
                    ..Default::default()
                })
                .checkpoint(checkpoint)
                .query_name(prepared.sink.clone())
                .start()
                .await;
            match query {
                Ok(query) => queries.push(PipelineQuery {
                    sink: prepared.sink,
                    query,
                }),
                Err(e) => {
                    for started in &queries {
                        let _ = started.query.stop().await;
                    }
                    return Err(PipelineError::Rejected {
                        line: prepared.line,
                        column: prepared.column,
                        sink: prepared.sink,
                        error: Box::new(e),
                    });
                }
            }
        }
        Ok(queries)
    }

    /// Runs the pipeline as one batch job over everything the streams hold
    /// now: each `INSERT INTO` writes its whole result to its sink as batch
    /// 0 (watermarks do nothing; every window is final). Each stream is
    /// read in its batch form ([`Source::read_batch`]): for a `files`
    /// stream, the files, columns, options and errors of the stream. A
    /// query that fails while it runs (malformed input, a sink's failure)
    /// is [`PipelineError::Query`], worded as the stream's failure; queries
    /// before it have written their output.
    pub async fn run_batch(&self, ctx: &SessionContext) -> Result<Vec<BatchOutput>, PipelineError> {
        let mut outputs = Vec::new();
        for prepared in self.prepare(ctx, Reading::Batch).await? {
            let failed = |error: TidemillError| PipelineError::Query {
                sink: prepared.sink.clone(),
                error,
            };
            let schema: SchemaRef = Arc::new(prepared.df.schema().as_arrow().clone());
            prepared
                .spec
                .declared
                .check_schema(&schema)
                .map_err(|e| prepared.rejected(e))?;
            let batches = prepared
                .df
                .collect()
                .await
                .map_err(|e| failed(execution_error(e)))?;
            let rows = batches.iter().map(|b| b.num_rows()).sum();
            let sink = prepared.spec.declared.sink(None);
            prepared.spec.declared.check_batch_run(ctx).await?;
            sink.open(&SinkContext {
                session: ctx.clone(),
                query_name: Some(prepared.sink.clone()),
                // A batch run is a new query: a sink keyed by query id
                // (Delta's application transaction) writes its batch 0.
                query_id: uuid::Uuid::new_v4().to_string(),
                schema: Arc::clone(&schema),
                output_mode: OutputMode::Append,
                durability: Default::default(),
            })
            .await
            .map_err(failed)?;
            sink.add_batch(0, schema, batches).await.map_err(failed)?;
            outputs.push(BatchOutput {
                sink: prepared.sink,
                rows,
            });
        }
        Ok(outputs)
    }

    /// How each `INSERT INTO` would run as a stream: its output mode,
    /// watermarks, stateful operator and per-batch plan, or why it cannot
    /// run: its sink does not take its output mode (a `files` sink takes
    /// `append` only) or its output (a `files` sink's partition column the
    /// output does not have), it reads no stream, or the engine cannot run
    /// it incrementally.
    pub async fn explain(&self, ctx: &SessionContext) -> Result<Vec<Explanation>, PipelineError> {
        let mut explained = Vec::new();
        for prepared in self.prepare(ctx, Reading::Stream).await? {
            explained.push(Explanation {
                plan: prepared.explain(),
                sink: prepared.sink,
            });
        }
        Ok(explained)
    }

    /// Plans every `INSERT INTO` as [`Pipeline::start`] would, but reads
    /// each stream named in `sources` from that source instead of its
    /// connector's (with the stream's declared watermark), and starts
    /// nothing: what `tidemill bench` runs over its replayed rows. Every
    /// other statement runs in `ctx` as in a run.
    pub async fn plan_with_sources(
        &self,
        ctx: &SessionContext,
        sources: &HashMap<String, Arc<dyn Source>>,
    ) -> Result<Vec<PlannedQuery>, PipelineError> {
        let prepared = self.prepare(ctx, Reading::Replaced(sources)).await?;
        Ok(prepared
            .into_iter()
            .map(|p| PlannedQuery {
                sink: p.sink,
                output_mode: p.spec.output_mode,
                df: p.df,
            })
            .collect())
    }

    /// The sink `name` as its connector makes it with the options `replace`
    /// in place of (or beside) the declared ones, e.g. another `path`:
    /// `tidemill bench --sink real` writes to a scratch directory this way.
    /// `checkpoint` is the query's checkpoint, as in a run.
    pub fn sink_with_options(
        &self,
        name: &str,
        replace: &[(&str, String)],
        checkpoint: Option<&str>,
    ) -> Result<Arc<dyn tidemill_engine::Sink>, PipelineError> {
        let def = self
            .sink_def(name)
            .ok_or_else(|| PipelineError::Sql(format!("no sink {name} in the pipeline")))?;
        let mut def = def.clone();
        for (key, value) in replace {
            def.options.set(key, value.clone());
        }
        Ok(self.declare_sink(&def)?.declared.sink(checkpoint))
    }

    /// The declaration of sink `name`, if the file declares it.
    pub fn sink_def(&self, name: &str) -> Option<&SinkDef> {
        self.statements.iter().find_map(|s| match &s.item {
            PipelineStatement::CreateSink(def) if def.name == name => Some(def),
            _ => None,
        })
    }

    /// Registers streams (as streams, or as batch tables over the same
    /// files), runs DataFusion statements, and plans every `INSERT INTO`.
    async fn prepare(
        &self,
        ctx: &SessionContext,
        reading: Reading<'_>,
    ) -> Result<Vec<Prepared>, PipelineError> {
        register_window_functions(ctx);
        let mut sinks: HashMap<String, SinkSpec> = HashMap::new();
        let mut prepared: Vec<Prepared> = Vec::new();
        for statement in &self.statements {
            let (statement_line, statement_column) = (statement.line, statement.column);
            let at = |message: String| PipelineError::At {
                line: statement.line,
                column: statement.column,
                message,
            };
            match &statement.item {
                PipelineStatement::CreateStream(def) => {
                    self.register_stream(ctx, def, reading, &at).await?;
                }
                PipelineStatement::CreateSink(def) => {
                    if sinks
                        .insert(def.name.clone(), self.declare_sink(def)?)
                        .is_some()
                    {
                        return Err(at(format!("sink {} is declared twice", def.name)));
                    }
                }
                PipelineStatement::Insert(insert) => {
                    let spec = sinks.get(&insert.sink).cloned().ok_or_else(|| {
                        at(format!(
                            "INSERT INTO {}: no such sink; declare it first with CREATE SINK {} WITH (…){}",
                            insert.sink,
                            insert.sink,
                            if sinks.is_empty() {
                                String::new()
                            } else {
                                let mut names: Vec<&String> = sinks.keys().collect();
                                names.sort();
                                format!(" (sinks: {})", names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
                            }
                        ))
                    })?;
                    if prepared.iter().any(|p| p.sink == insert.sink) {
                        return Err(at(format!(
                            "sink {} already receives another INSERT INTO; give each query its own sink",
                            insert.sink
                        )));
                    }
                    let mut query = insert.query.clone();
                    rewrite_windows(ctx, &mut query).await?;
                    let statement = DFStatement::Statement(Box::new(SQLStatement::Query(query)));
                    let state = planning_state(ctx);
                    let plan = state.statement_to_plan(statement).await?;
                    prepared.push(Prepared {
                        sink: insert.sink.clone(),
                        spec,
                        df: DataFrame::new(state, plan),
                        line: statement_line,
                        column: statement_column,
                    });
                }
                PipelineStatement::Sql(statement) => {
                    let mut statement = statement.as_ref().clone();
                    if let DFStatement::Statement(inner) = &mut statement
                        && let SQLStatement::Query(query)
                        | SQLStatement::CreateView(CreateView { query, .. }) = inner.as_mut()
                    {
                        rewrite_windows(ctx, query).await?;
                    }
                    let plan = planning_state(ctx).statement_to_plan(statement).await?;
                    ctx.execute_logical_plan(plan).await?.collect().await?;
                }
            }
        }
        Ok(prepared)
    }

    /// Registers a declared stream under its name: its connector's source,
    /// read as a stream or (`batch`) in its batch form, with its watermark.
    async fn register_stream(
        &self,
        ctx: &SessionContext,
        def: &StreamDef,
        reading: Reading<'_>,
        at: &impl Fn(String) -> PipelineError,
    ) -> Result<(), PipelineError> {
        let in_stream = |e: PipelineError| at(format!("stream {}: {e}", def.name));
        // A batch job reads what the stream would, through the stream's
        // own reader: for files, the same hidden-file rule, schema, options
        // and errors for malformed input.
        let df = match reading {
            Reading::Replaced(sources) if sources.contains_key(&def.name) => {
                ctx.read_stream(Arc::clone(&sources[&def.name])).await
            }
            Reading::Batch => {
                let source = self.stream_source(ctx, def, &in_stream).await?;
                source.read_batch(ctx).await
            }
            Reading::Stream | Reading::Replaced(_) => {
                let source = self.stream_source(ctx, def, &in_stream).await?;
                ctx.read_stream(source).await
            }
        };
        let df = df.map_err(|e| in_stream(e.into()))?;
        register_view(ctx, def, df).map_err(in_stream)
    }

    /// The source its connector makes of a `CREATE STREAM`, with the
    /// declared columns, if any.
    async fn stream_source(
        &self,
        ctx: &SessionContext,
        def: &StreamDef,
        in_stream: &impl Fn(PipelineError) -> PipelineError,
    ) -> Result<Arc<dyn Source>, PipelineError> {
        let options = &def.options;
        let names = self.connectors.stream_names();
        let connector = connector_named(options, &names, |name| self.connectors.stream(name))?;
        let schema = if def.columns.is_empty() {
            None
        } else {
            Some(
                declared_schema(ctx, def)
                    .await
                    .map_err(|e| in_stream(e.into()))?,
            )
        };
        Ok(connector.source(&StreamDeclaration {
            name: def.name.clone(),
            schema,
            options: options.clone(),
        })?)
    }

    /// The source of every stream the file declares (`CREATE STREAM`), by
    /// stream name in file order, as [`Pipeline::start`] makes them, but
    /// without reading anything, running any other statement or starting
    /// a query. `tidemill status` opens them to compare what a checkpoint
    /// committed with what the sources hold now.
    pub async fn stream_sources(
        &self,
        ctx: &SessionContext,
    ) -> Result<Vec<(String, Arc<dyn Source>)>, PipelineError> {
        let mut sources = Vec::new();
        for statement in &self.statements {
            if let PipelineStatement::CreateStream(def) = &statement.item {
                let in_stream = |e: PipelineError| PipelineError::At {
                    line: statement.line,
                    column: statement.column,
                    message: format!("stream {}: {e}", def.name),
                };
                let source = self.stream_source(ctx, def, &in_stream).await?;
                sources.push((def.name.clone(), source));
            }
        }
        Ok(sources)
    }

    /// A declared sink: its output mode and its connector's checked
    /// declaration.
    fn declare_sink(&self, def: &SinkDef) -> Result<SinkSpec, PipelineError> {
        let options = &def.options;
        let output_mode = match options.get("output_mode").unwrap_or("append") {
            "append" => OutputMode::Append,
            "update" => OutputMode::Update,
            "complete" => OutputMode::Complete,
            other => {
                return Err(options
                    .error(
                        "output_mode",
                        format!(
                            "unknown output_mode '{other}' for sink {}; valid modes: append, \
                             update, complete",
                            def.name
                        ),
                    )
                    .into());
            }
        };
        let names = self.connectors.sink_names();
        let connector = connector_named(options, &names, |name| self.connectors.sink(name))?;
        let declared = connector.declare(&SinkDeclaration {
            name: def.name.clone(),
            output_mode,
            options: options.clone(),
        })?;
        Ok(SinkSpec {
            output_mode,
            declared: Arc::from(declared),
        })
    }
}

/// The connector `options` name (`connector = '…'`), looked up with
/// `lookup`; an unknown or missing name is refused, listing `names`.
fn connector_named<'a, C: ?Sized>(
    options: &ConnectorOptions,
    names: &[&str],
    lookup: impl Fn(&str) -> Option<&'a Arc<C>>,
) -> Result<&'a Arc<C>, PipelineError> {
    let valid = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let what = options.subject();
    let Some(name) = options.get("connector") else {
        return Err(options
            .error_at_declaration(format!(
                "{what} needs WITH (connector = …); valid connectors: {valid}"
            ))
            .into());
    };
    lookup(name).ok_or_else(|| {
        let message = if name.eq_ignore_ascii_case("kafka") && !cfg!(feature = "kafka") {
            "the kafka connector is not built in: build tidemill with the `kafka` feature (on \
             by default)"
                .to_string()
        } else if name.eq_ignore_ascii_case("delta") && !cfg!(feature = "delta") {
            "the delta connector is not built in: build tidemill with the `delta` feature (on \
             by default)"
                .to_string()
        } else if name.eq_ignore_ascii_case("iceberg") && !cfg!(feature = "iceberg") {
            "the iceberg connector is not built in: build tidemill with the `iceberg` feature \
             (on by default)"
                .to_string()
        } else {
            format!("unknown connector '{name}' for {what}; valid connectors: {valid}")
        };
        options.error("connector", message).into()
    })
}

/// The state the pipeline's statements are planned with: `ctx`'s, also
/// collecting the spans of identifiers, so that an unknown column's error
/// says where the column is written.
fn planning_state(ctx: &SessionContext) -> SessionState {
    let mut state = ctx.state();
    state.config_mut().options_mut().sql_parser.collect_spans = true;
    state
}

/// Rewrites Spark's `window.start` / `window.end` / `window` references
/// (see [`spark_window`]), knowing the columns of the tables and views the
/// query reads.
async fn rewrite_windows(ctx: &SessionContext, query: &mut Query) -> Result<(), PipelineError> {
    let mut known: HashMap<String, Vec<String>> = HashMap::new();
    for name in spark_window::referenced_relations(query) {
        let key = name.to_string();
        if let Ok(provider) = ctx.table_provider(key.as_str()).await {
            let columns = provider
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            known.insert(key, columns);
        }
    }
    spark_window::rewrite_query(query, &|name| {
        known.get(&name.to_string()).cloned().unwrap_or_default()
    })
}

/// The Arrow schema of a stream's declared columns, typed by DataFusion's
/// SQL type rules.
async fn declared_schema(
    ctx: &SessionContext,
    def: &StreamDef,
) -> Result<SchemaRef, DataFusionError> {
    let columns: Vec<String> = def.columns.iter().map(|c| c.to_string()).collect();
    let probe = format!("CREATE TABLE __tidemill_schema ({})", columns.join(", "));
    match ctx.state().create_logical_plan(&probe).await? {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(table)) => {
            Ok(Arc::new(table.input.schema().as_arrow().clone()))
        }
        other => Err(DataFusionError::Internal(format!(
            "unexpected plan for a column list: {}",
            other.display()
        ))),
    }
}

/// Registers `df` (with the stream's watermark) under the stream's name.
fn register_view(
    ctx: &SessionContext,
    def: &StreamDef,
    df: DataFrame,
) -> Result<(), PipelineError> {
    let df = match &def.watermark {
        Some(w) => df.with_watermark(&w.column, &format!("{} ms", w.delay.as_millis()))?,
        None => df,
    };
    ctx.register_table(def.name.as_str(), df.into_view())?;
    Ok(())
}

/// The error that stopped a batch query. A Tidemill error (a source's
/// error for malformed input, naming the file, line and column) travels
/// through DataFusion as an external error, possibly wrapped (in context, or
/// shared between the partitions of a repartition); it is said as itself,
/// exactly as the same failure in a stream.
fn execution_error(error: DataFusionError) -> TidemillError {
    /// A copy of the errors a query's execution can carry.
    fn copy(error: &TidemillError) -> Option<TidemillError> {
        Some(match error {
            TidemillError::Source {
                source_name,
                message,
            } => TidemillError::source(source_name, message),
            TidemillError::Sink { sink, message } => TidemillError::sink(sink, message),
            TidemillError::Config(message) => TidemillError::Config(message.clone()),
            TidemillError::Transient(inner) => TidemillError::transient(copy(inner)?),
            _ => return None,
        })
    }
    if let DataFusionError::External(inner) = error.find_root()
        && let Some(ours) = inner.downcast_ref::<TidemillError>().and_then(copy)
    {
        return ours;
    }
    TidemillError::from(error)
}
