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
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{CreateView, Query, Statement as SQLStatement};
use datafusion::sql::sqlparser::parser::ParserError;
use tidemill_connectors::kafka::{BadRecordPolicy, KafkaSink, KafkaSource};
use tidemill_connectors::{ConsoleSink, FileSource, ParquetSink, RateSource};
use tidemill_engine::window::register_window_functions;
use tidemill_engine::{
    OutputMode, Sink, SinkContext, StreamingContext, StreamingDataFrame, StreamingQuery,
    TidemillError, Trigger,
};

use connectors::{
    KafkaStream, KafkaTopics, SinkConnector, SinkSpec, StreamConnector, sink_spec, stream_connector,
};
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
    /// An error from DataFusion's SQL parser or planner (its message names
    /// the line and column where it knows them).
    #[error("{0}")]
    Sql(String),
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

impl From<DataFusionError> for PipelineError {
    fn from(error: DataFusionError) -> Self {
        if let Some(span) = error.diagnostic().and_then(|d| d.span) {
            return PipelineError::At {
                line: span.start.line,
                column: span.start.column,
                message: error.strip_backtrace().to_string(),
            };
        }
        PipelineError::Sql(error.strip_backtrace().to_string())
    }
}

impl From<ParserError> for PipelineError {
    fn from(error: ParserError) -> Self {
        PipelineError::Sql(format!("SQL syntax error: {error}"))
    }
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
    /// each query exactly where it stopped.
    pub async fn start(
        &self,
        ctx: &SessionContext,
        options: &RunOptions,
    ) -> Result<Vec<PipelineQuery>, PipelineError> {
        let mut queries = Vec::new();
        for prepared in self.prepare(ctx, false).await? {
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
                    return Err(e.into());
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
    /// run.
    pub async fn explain(&self, ctx: &SessionContext) -> Result<Vec<Explanation>, PipelineError> {
        let mut explained = Vec::new();
        for prepared in self.prepare(ctx, false).await? {
            explained.push(Explanation {
                sink: prepared.sink,
                plan: prepared
                    .df
                    .write_stream()
                    .output_mode(prepared.spec.output_mode)
                    .explain(),
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
                    let state = ctx.state();
                    let plan = state.statement_to_plan(statement).await?;
                    prepared.push(Prepared {
                        sink: insert.sink.clone(),
                        spec,
                        df: DataFrame::new(state, plan),
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
                    let state = ctx.state();
                    let plan = state.statement_to_plan(statement).await?;
                    ctx.execute_logical_plan(plan).await?.collect().await?;
                }
            }
        }
        Ok(prepared)
    }
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
fn streaming_sink(name: &str, spec: &SinkSpec, checkpoint: Option<&str>) -> Arc<dyn Sink> {
    match &spec.connector {
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
