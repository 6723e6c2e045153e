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

mod connectors;
pub mod parser;
pub mod spark_window;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{CreateView, Query, Statement as SQLStatement};
use datafusion::sql::sqlparser::parser::ParserError;
#[cfg(feature = "kafka")]
use tidemill_connectors::kafka::{BadRecordPolicy, KafkaSink, KafkaSource};
use tidemill_connectors::{ConsoleSink, FileSource, ParquetSink, RateSource};
use tidemill_engine::window::register_window_functions;
use tidemill_engine::{
    OutputMode, Sink, SinkContext, StreamingContext, StreamingDataFrame, StreamingQuery,
    StreamingTable, TidemillError, Trigger,
};

#[cfg(feature = "kafka")]
use connectors::{KafkaStream, KafkaTopics};
use connectors::{SinkConnector, SinkSpec, StreamConnector, sink_spec, stream_connector};
use parser::{Located, PipelineStatement, StreamDef, parse_pipeline};

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

/// A parsed pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    statements: Vec<Located<PipelineStatement>>,
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
        self.spec.check_output_mode(&self.sink)?;
        if !reads_stream(self.df.logical_plan()) {
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
    /// Parses `text`; syntax errors name the line and column.
    pub fn parse(text: &str) -> Result<Self, PipelineError> {
        Ok(Self {
            statements: parse_pipeline(text)?,
        })
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
        let prepared = self.prepare(ctx, false).await?;
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
                .sink_arc(streaming_sink(
                    &prepared.sink,
                    &prepared.spec,
                    Some(&checkpoint),
                ))
                .output_mode(prepared.spec.output_mode)
                .trigger(options.trigger)
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
    /// 0 (watermarks do nothing; every window is final). A `files` stream is
    /// [`FileSource::read_batch`]: the files, columns, options and errors of
    /// the stream. A query that fails while it runs (malformed input, a
    /// sink's failure) is [`PipelineError::Query`], worded as the stream's
    /// failure; queries before it have written their output.
    pub async fn run_batch(&self, ctx: &SessionContext) -> Result<Vec<BatchOutput>, PipelineError> {
        let mut outputs = Vec::new();
        for prepared in self.prepare(ctx, true).await? {
            let failed = |error: TidemillError| PipelineError::Query {
                sink: prepared.sink.clone(),
                error,
            };
            let schema: SchemaRef = Arc::new(prepared.df.schema().as_arrow().clone());
            let batches = prepared
                .df
                .collect()
                .await
                .map_err(|e| failed(execution_error(e)))?;
            let rows = batches.iter().map(|b| b.num_rows()).sum();
            let sink = streaming_sink(&prepared.sink, &prepared.spec, None);
            if let SinkConnector::Files { path, .. } = &prepared.spec.connector
                && !ParquetSink::committed_batches(ctx, path).await?.is_empty()
            {
                return Err(TidemillError::sink(
                    sink.description(),
                    format!(
                        "'{path}' already holds committed output; a batch run writes a fresh \
                         result: remove it or point the sink elsewhere"
                    ),
                )
                .into());
            }
            sink.open(&SinkContext {
                session: ctx.clone(),
                query_name: Some(prepared.sink.clone()),
                schema: Arc::clone(&schema),
                output_mode: OutputMode::Append,
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
    /// `append` only), it reads no stream, or the engine cannot run it
    /// incrementally.
    pub async fn explain(&self, ctx: &SessionContext) -> Result<Vec<Explanation>, PipelineError> {
        let mut explained = Vec::new();
        for prepared in self.prepare(ctx, false).await? {
            explained.push(Explanation {
                plan: prepared.explain(),
                sink: prepared.sink,
            });
        }
        Ok(explained)
    }

    /// Registers streams (as streams, or as batch tables over the same
    /// files), runs DataFusion statements, and plans every `INSERT INTO`.
    async fn prepare(
        &self,
        ctx: &SessionContext,
        batch: bool,
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
                    let located = Located {
                        line: statement.line,
                        column: statement.column,
                        item: def.clone(),
                    };
                    let connector = stream_connector(&located)?;
                    register_stream(ctx, def, &connector, batch)
                        .await
                        .map_err(|e| at(format!("stream {}: {e}", def.name)))?;
                }
                PipelineStatement::CreateSink(def) => {
                    let located = Located {
                        line: statement.line,
                        column: statement.column,
                        item: def.clone(),
                    };
                    if sinks
                        .insert(def.name.clone(), sink_spec(&located)?)
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
}

/// The state the pipeline's statements are planned with: `ctx`'s, also
/// collecting the spans of identifiers, so that an unknown column's error
/// says where the column is written.
fn planning_state(ctx: &SessionContext) -> SessionState {
    let mut state = ctx.state();
    state.config_mut().options_mut().sql_parser.collect_spans = true;
    state
}

/// Whether `plan` reads a stream: a streaming scan, directly or inside a
/// view (which the plan as written keeps as a scan of the view).
fn reads_stream(plan: &LogicalPlan) -> bool {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let inner = source_as_provider(&scan.source)
                .ok()
                .and_then(|provider| provider.get_logical_plan().map(|p| reads_stream(&p)));
            if StreamingTable::of_scan(scan).is_some() || inner == Some(true) {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan without errors cannot fail");
    found
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

async fn register_stream(
    ctx: &SessionContext,
    def: &StreamDef,
    connector: &StreamConnector,
    batch: bool,
) -> Result<(), PipelineError> {
    let declared = if def.columns.is_empty() {
        None
    } else {
        Some(declared_schema(ctx, def).await?)
    };
    match (connector, batch) {
        (
            StreamConnector::Files {
                path,
                format,
                max_files_per_trigger,
                header,
                delimiter,
                listing_margin,
            },
            batch,
        ) => {
            let mut source = FileSource::new(path.clone(), *format);
            if let Some(schema) = &declared {
                source = source.schema(Arc::clone(schema));
            }
            if let Some(n) = max_files_per_trigger {
                source = source.max_files_per_trigger(*n);
            }
            if let Some(h) = header {
                source = source.has_header(*h);
            }
            if let Some(d) = delimiter {
                source = source.delimiter(*d);
            }
            if let Some(margin) = listing_margin {
                source = source.listing_margin(*margin);
            }
            // A batch job reads the files the stream would, through the
            // stream's reader: the same hidden-file rule, schema, options
            // and errors for malformed input.
            let df = if batch {
                source.read_batch(ctx).await?
            } else {
                ctx.read_stream(source).await?
            };
            register_view(ctx, def, df)?;
        }
        (
            StreamConnector::Rate {
                rows_per_second,
                max_rows_per_trigger,
            },
            false,
        ) => {
            let mut source = RateSource::new(*rows_per_second);
            if let Some(n) = max_rows_per_trigger {
                source = source.max_rows_per_trigger(*n);
            }
            let df = ctx.read_stream(source).await?;
            register_view(ctx, def, df)?;
        }
        #[cfg(feature = "kafka")]
        (StreamConnector::Kafka(kafka), batch) => {
            let source = kafka_source(kafka, declared)?;
            let df = if batch {
                source.read_batch(ctx).await?
            } else {
                ctx.read_stream(source).await?
            };
            register_view(ctx, def, df)?;
        }
        (StreamConnector::Rate { .. }, true) => {
            return Err(PipelineError::Sql(
                "a rate stream generates rows as time passes and has no batch form; \
                 run this pipeline with `tidemill run`"
                    .into(),
            ));
        }
    }
    Ok(())
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

/// The Kafka source a `connector = 'kafka'` stream describes.
#[cfg(feature = "kafka")]
fn kafka_source(
    kafka: &KafkaStream,
    declared: Option<SchemaRef>,
) -> Result<KafkaSource, PipelineError> {
    let mut source = KafkaSource::new(kafka.bootstrap_servers.clone());
    source = match &kafka.topics {
        KafkaTopics::List(topics) => source.topics(topics.clone()),
        KafkaTopics::Pattern(pattern) => source.topic_pattern(pattern.clone()),
    };
    if let Some(offsets) = &kafka.starting_offsets {
        source = source.starting_offsets(offsets.clone());
    }
    if let Some(offsets) = &kafka.ending_offsets {
        source = source.ending_offsets(offsets.clone());
    }
    if let Some(n) = kafka.max_offsets_per_trigger {
        source = source.max_offsets_per_trigger(n);
    }
    if let Some(fail) = kafka.fail_on_data_loss {
        source = source.fail_on_data_loss(fail);
    }
    if let (true, Some(schema)) = (kafka.json, declared) {
        source = source.json_values(schema);
    }
    if let Some(include) = kafka.metadata_columns {
        source = source.metadata_columns(include);
    }
    if let Some(path) = &kafka.dead_letter_path {
        source = source.on_bad_record(BadRecordPolicy::DeadLetter(Arc::new(ParquetSink::new(
            path.clone(),
        ))));
    }
    if let Some(group) = &kafka.commit_offsets_to_group {
        source = source.commit_offsets_to_group(group.clone());
    }
    if let Some(timeout) = kafka.timeout {
        source = source.timeout(timeout);
    }
    for (key, value) in &kafka.client_options {
        source = source.option(key.clone(), value.clone());
    }
    Ok(source)
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

/// The sink of `spec`, which the pipeline calls `name`. `checkpoint` is the
/// query's checkpoint directory (a streaming run), where an exactly-once
/// Kafka sink keeps its log, in `<checkpoint>/sink`; a batch run has none
/// and produces at least once.
#[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
fn streaming_sink(name: &str, spec: &SinkSpec, checkpoint: Option<&str>) -> Arc<dyn Sink> {
    match &spec.connector {
        #[cfg(feature = "kafka")]
        SinkConnector::Kafka(kafka) => {
            let mut sink = KafkaSink::new(kafka.bootstrap_servers.clone());
            if let Some(topic) = &kafka.topic {
                sink = sink.topic(topic.clone());
            }
            if kafka.json {
                sink = sink.json_values();
            }
            if let Some(key) = &kafka.key_column {
                sink = sink.key_column(key.clone());
            }
            if let (true, Some(checkpoint)) = (kafka.exactly_once, checkpoint) {
                sink = sink.exactly_once(format!("{checkpoint}/sink"));
            }
            if let Some(timeout) = kafka.timeout {
                sink = sink.timeout(timeout);
            }
            for (key, value) in &kafka.client_options {
                sink = sink.option(key.clone(), value.clone());
            }
            Arc::new(sink)
        }
        SinkConnector::Files {
            path,
            max_rows_per_file,
        } => {
            let mut sink = ParquetSink::new(path.clone());
            if let Some(n) = max_rows_per_file {
                sink = sink.max_rows_per_file(*n);
            }
            Arc::new(sink)
        }
        SinkConnector::Console { num_rows } => {
            // Several console sinks share standard output: each batch's
            // header names its sink.
            let mut sink = ConsoleSink::new().name(name);
            if let Some(n) = num_rows {
                sink = sink.num_rows(*n);
            }
            Arc::new(sink)
        }
    }
}
