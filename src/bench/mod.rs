//! `tidemill bench`: the trigger-interval study of a pipeline file's own
//! queries, on the harness's study ([`tidemill_harness::TriggerStudy`],
//! the same code as `cargo bench -p tidemill-harness --bench
//! trigger_study`).
//!
//! Each `INSERT INTO` (or the one named) runs as a streaming query at each
//! trigger interval and input rate. The streams it reads are replaced by a
//! rate-controlled replay of sample rows ([`SampleReplay`]): a `--sample`
//! file, or by default the rows the stream's source holds now. Row `i` of
//! every stream the query reads becomes available at `start + (i + 1) /
//! rate`; rows loop over the sample with event times moved forward each
//! loop, so watermarks advance as in production. The sink is replaced by
//! one that discards rows (`--sink discard`), or kept (`--sink real`)
//! writing into a scratch directory removed after each point, or for a
//! Kafka sink into a scratch topic per point, created when the sink opens
//! and deleted when the bench ends. Latency is per
//! input row, from the instant it became available to the instant the
//! sink committed the batch that read it.

mod sample;
#[cfg(feature = "kafka")]
mod scratch_topic;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use tidemill_engine::{OutputMode, Sink, Source, SourceTable};
use tidemill_harness::{
    RateSearch, RowGenerator, SampleReplay, StudyPipeline, StudyReport, TriggerStudy,
};

use crate::sql::parser::PipelineStatement;
use crate::sql::{Pipeline, PipelineError};

pub use sample::MAX_SAMPLE_ROWS;

/// What went wrong preparing or running a bench.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting that cannot be used (an unknown query, a rate of 0).
    #[error("{0}")]
    Settings(String),
    /// The pipeline file cannot be planned, or a query cannot run as a
    /// stream.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A stream's sample cannot be read or does not fit the stream.
    #[error("stream {stream}: sample {origin}: {message}")]
    Sample {
        /// The stream.
        stream: String,
        /// Where the sample comes from (a path, or `its source`).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A run of the study failed.
    #[error("the bench failed: {0:#}")]
    Study(anyhow::Error),
}

/// Where the queries' output goes during a bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BenchSink {
    /// A sink that drops every row: the engine's figures alone.
    #[default]
    Discard,
    /// The query's own sink, writing into a scratch directory (its `path`
    /// option replaced) that is removed after each run, or for a Kafka
    /// sink into a scratch topic per run (`<topic>.tidemill-bench.<pid>.
    /// run-<n>`), deleted when the bench ends.
    Real,
}

/// The settings of a bench (the options of `tidemill bench`).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Only the `INSERT INTO` of this sink (default: every one).
    pub query: Option<String>,
    /// Trigger intervals.
    pub triggers: Vec<Duration>,
    /// Input rates, rows per second per stream.
    pub rates: Vec<u64>,
    /// Measured time per point, after the warm-up.
    pub duration: Duration,
    /// Time left out at the start of each point.
    pub warmup: Duration,
    /// Also search each interval's highest sustainable rate.
    pub find_max: bool,
    /// Sample files: `(Some(stream), path)`, or `(None, path)` for the one
    /// stream of a pipeline that declares one.
    pub samples: Vec<(Option<String>, PathBuf)>,
    /// Where the output goes.
    pub sink: BenchSink,
    /// At most this many rows per micro-batch (per stream).
    pub max_rows_per_trigger: Option<u64>,
    /// Print a line per run on standard error.
    pub log: bool,
}

impl Default for BenchOptions {
    /// Intervals 0, 10 ms, 100 ms and 1 s; rates 1 000, 10 000 and 100 000
    /// rows/s; 10 s measured after 2 s of warm-up; no rate search.
    fn default() -> Self {
        Self {
            query: None,
            triggers: [0, 10, 100, 1000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            rates: vec![1_000, 10_000, 100_000],
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            find_max: false,
            samples: Vec::new(),
            sink: BenchSink::Discard,
            max_rows_per_trigger: None,
            log: true,
        }
    }
}

/// Parses a rate: `500`, `10k`, `2.5k`, `1M` (rows per second, at least 1).
pub fn parse_rate(text: &str) -> Result<u64, BenchError> {
    let trimmed = text.trim();
    let (number, scale) = match trimmed.char_indices().last() {
        Some((i, 'k' | 'K')) => (&trimmed[..i], 1e3),
        Some((i, 'm' | 'M')) => (&trimmed[..i], 1e6),
        _ => (trimmed, 1.0),
    };
    let invalid = || {
        BenchError::Settings(format!(
            "invalid rate '{text}': expected rows per second such as 500, 10k, 2.5k or 1M"
        ))
    };
    let value: f64 = number
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| invalid())?;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid());
    }
    let rate = (value * scale).round();
    if rate < 1.0 {
        return Err(BenchError::Settings(format!(
            "invalid rate '{text}': a rate must be at least 1 row per second"
        )));
    }
    Ok(rate as u64)
}

/// A stream the pipeline declares: its name, source, schema and
/// event-time column.
struct DeclaredStream {
    name: String,
    source: Arc<dyn Source>,
    schema: arrow::datatypes::SchemaRef,
    event_time: Option<String>,
}

/// Runs the bench of `pipeline`'s queries: the study's report, with a
/// fixed-rate run per query, interval and rate (and the maximum rates with
/// `find_max`).
pub async fn bench(pipeline: &Pipeline, options: &BenchOptions) -> Result<StudyReport, BenchError> {
    check(options)?;
    let ctx = SessionContext::new();
    let explained = pipeline.explain(&ctx).await?;
    let names: Vec<String> = explained.iter().map(|e| e.sink.clone()).collect();
    if names.is_empty() {
        return Err(BenchError::Settings(
            "the pipeline has no INSERT INTO, nothing to bench".into(),
        ));
    }
    if let Some(query) = &options.query
        && !names.contains(query)
    {
        return Err(BenchError::Settings(format!(
            "no query named {query}; the pipeline's queries (their sinks): {}",
            names.join(", ")
        )));
    }
    let mut selected = Vec::new();
    for e in explained {
        if options.query.as_ref().is_some_and(|q| q != &e.sink) {
            continue;
        }
        if let Err(error) = e.plan {
            return Err(BenchError::Settings(format!(
                "INSERT INTO {} cannot run as a stream: {error}",
                e.sink
            )));
        }
        selected.push(e.sink);
    }

    let streams = declared_streams(pipeline, &ctx).await?;
    check_samples(options, &streams)?;
    let read = streams_read(pipeline, &streams).await?;

    let mut study = TriggerStudy::new()
        .intervals(options.triggers.clone())
        .rates(options.rates.clone())
        .run_for(options.warmup + options.duration)
        .warmup(options.warmup)
        .log(options.log);
    study = if options.find_max {
        study.max_rate_search(RateSearch {
            start: options.rates[0].max(100),
            run_for: options.warmup + options.duration,
            ..RateSearch::default()
        })
    } else {
        study.no_max_rate_search()
    };
    if let Some(n) = options.max_rows_per_trigger {
        study = study.max_rows_per_trigger(n);
    }

    let pipeline = Arc::new(pipeline.clone());
    let mut generators: HashMap<String, Arc<SampleReplay>> = HashMap::new();
    let mut scratch = ScratchTopics::new();
    // Samples are read on one partition, in the order the stream reads its
    // rows (a multi-partition read interleaves them).
    let sample_ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for sink in selected {
        let (stream_names, output_mode) = read
            .get(&sink)
            .cloned()
            .expect("every explained query is planned");
        if stream_names.is_empty() {
            return Err(BenchError::Settings(format!(
                "INSERT INTO {sink} reads no declared stream; nothing to replay"
            )));
        }
        let mut query_generators = Vec::new();
        for name in &stream_names {
            if !generators.contains_key(name) {
                let stream = streams
                    .iter()
                    .find(|s| &s.name == name)
                    .expect("streams_read names declared streams");
                generators.insert(name.clone(), replay_of(&sample_ctx, stream, options).await?);
            }
            query_generators.push(Arc::clone(&generators[name]) as Arc<dyn RowGenerator>);
        }
        if options.log
            && let Some(warning) = drift_warning(&sink, &stream_names, &generators)
        {
            eprintln!("warning: {warning}");
        }
        let plan_pipeline = Arc::clone(&pipeline);
        let plan_sink = sink.clone();
        let mut study_pipeline = StudyPipeline::with_streams(
            &sink,
            query_generators,
            move |ctx: SessionContext, sources: Vec<Arc<dyn Source>>| {
                let pipeline = Arc::clone(&plan_pipeline);
                let sink = plan_sink.clone();
                let by_name: HashMap<String, Arc<dyn Source>> =
                    stream_names.iter().cloned().zip(sources).collect();
                Box::pin(async move {
                    let planned = pipeline.plan_with_sources(&ctx, &by_name).await?;
                    planned
                        .into_iter()
                        .find(|q| q.sink == sink)
                        .map(|q| q.df)
                        .ok_or_else(|| anyhow::anyhow!("no INSERT INTO {sink}"))
                })
            },
        )
        .output_mode(output_mode);
        if options.sink == BenchSink::Real {
            study_pipeline = study_pipeline.sink(real_sink(&pipeline, &sink, &mut scratch)?);
        }
        study = study.pipeline(study_pipeline);
    }
    let report = study.run().await.map_err(BenchError::Study);
    // Removed whether the study succeeded or not.
    delete_scratch_topics(scratch).await?;
    report
}

/// When a query reads several streams whose samples advance event time at
/// different speeds per row (by more than 10 %), a warning: at one row
/// rate their event times drift apart, so matches between them (a join's
/// time range) thin out loop after loop.
fn drift_warning(
    sink: &str,
    streams: &[String],
    replays: &HashMap<String, Arc<SampleReplay>>,
) -> Option<String> {
    let speeds: Vec<(&String, f64)> = streams
        .iter()
        .map(|s| {
            let r = &replays[s];
            (s, r.period().as_secs_f64() / r.rows() as f64)
        })
        .filter(|(_, speed)| *speed > 0.0)
        .collect();
    let slowest = speeds.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
    let fastest = speeds.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    if speeds.len() < 2 || fastest <= slowest * 1.1 {
        return None;
    }
    let described: Vec<String> = speeds
        .iter()
        .map(|(s, v)| format!("{s} {:.3} ms", v * 1e3))
        .collect();
    Some(format!(
        "INSERT INTO {sink}: its streams' samples advance event time by different amounts per          row ({}); replayed at one row rate, their event times drift apart. Give samples that          span the same event time with the same number of rows",
        described.join(", ")
    ))
}

/// Refuses settings that cannot run.
fn check(options: &BenchOptions) -> Result<(), BenchError> {
    let refuse = |m: &str| Err(BenchError::Settings(m.into()));
    if options.triggers.is_empty() {
        return refuse("no trigger interval to run: give --triggers, e.g. 0s,100ms,1s");
    }
    if options.rates.is_empty() {
        return refuse("no input rate to run: give --rates, e.g. 1k,10k");
    }
    if options.rates.contains(&0) {
        return refuse("a rate must be at least 1 row per second");
    }
    if options.duration.is_zero() {
        return refuse("--duration must be longer than 0");
    }
    if options.max_rows_per_trigger == Some(0) {
        return refuse("--max-rows-per-trigger must be at least 1");
    }
    Ok(())
}

/// The streams the file declares, with their sources as a run makes them.
async fn declared_streams(
    pipeline: &Pipeline,
    ctx: &SessionContext,
) -> Result<Vec<DeclaredStream>, BenchError> {
    let mut streams = Vec::new();
    for (name, source) in pipeline.stream_sources(ctx).await? {
        let schema = source
            .schema(ctx)
            .await
            .map_err(|e| BenchError::Settings(format!("stream {name}: {e}")))?;
        let event_time = pipeline.statements().iter().find_map(|s| match &s.item {
            PipelineStatement::CreateStream(def) if def.name == name => {
                def.watermark.as_ref().map(|w| w.column.clone())
            }
            _ => None,
        });
        streams.push(DeclaredStream {
            name,
            source,
            schema,
            event_time,
        });
    }
    Ok(streams)
}

/// Refuses a `--sample` for a stream the file does not declare, or one
/// without a stream name when the file declares several.
fn check_samples(options: &BenchOptions, streams: &[DeclaredStream]) -> Result<(), BenchError> {
    let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    for (stream, path) in &options.samples {
        match stream {
            Some(name) if !names.contains(&name.as_str()) => {
                return Err(BenchError::Settings(format!(
                    "--sample {name}={}: the pipeline declares no stream {name}; its streams: {}",
                    path.display(),
                    names.join(", ")
                )));
            }
            None if names.len() != 1 => {
                return Err(BenchError::Settings(format!(
                    "--sample {}: the pipeline declares {} streams ({}); say which with \
                     --sample STREAM=PATH",
                    path.display(),
                    names.len(),
                    names.join(", ")
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The replay of `stream`'s sample: its `--sample` file, or the rows its
/// source holds now.
async fn replay_of(
    ctx: &SessionContext,
    stream: &DeclaredStream,
    options: &BenchOptions,
) -> Result<Arc<SampleReplay>, BenchError> {
    let schema = &stream.schema;
    let given = options
        .samples
        .iter()
        .find(|(name, _)| name.as_deref().is_none_or(|n| n == stream.name))
        .map(|(_, path)| path.as_path());
    let (batches, origin) = match given {
        Some(path) => (
            sample::read_file(ctx, &stream.name, path, schema).await?,
            path.display().to_string(),
        ),
        None => (
            sample::read_source(ctx, &stream.name, &stream.source).await?,
            "its source".to_string(),
        ),
    };
    let replay = SampleReplay::new(batches, stream.event_time.as_deref()).map_err(|e| {
        BenchError::Sample {
            stream: stream.name.clone(),
            origin,
            message: match given {
                Some(_) => e.to_string(),
                None => format!(
                    "{e}; give rows to replay with --sample {}=PATH",
                    stream.name
                ),
            },
        }
    })?;
    Ok(Arc::new(replay))
}

/// Per query (by sink), the declared streams it reads (in file order) and
/// its output mode.
async fn streams_read(
    pipeline: &Pipeline,
    streams: &[DeclaredStream],
) -> Result<HashMap<String, (Vec<String>, OutputMode)>, BenchError> {
    // Planned over sources that say which stream they stand for.
    let ctx = SessionContext::new();
    let mut probes: HashMap<String, Arc<dyn Source>> = HashMap::new();
    for s in streams {
        probes.insert(
            s.name.clone(),
            Arc::new(Probe {
                stream: s.name.clone(),
                schema: Arc::clone(&s.schema),
            }),
        );
    }
    let mut read = HashMap::new();
    for query in pipeline.plan_with_sources(&ctx, &probes).await? {
        let mut found = Vec::new();
        collect_probes(query.df.logical_plan(), &mut found);
        let in_order: Vec<String> = streams
            .iter()
            .filter(|s| found.contains(&probe_description(&s.name)))
            .map(|s| s.name.clone())
            .collect();
        read.insert(query.sink, (in_order, query.output_mode));
    }
    Ok(read)
}

/// The descriptions of the sources `plan` scans, inside views too.
fn collect_probes(plan: &LogicalPlan, found: &mut Vec<String>) {
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            if let Some(table) = SourceTable::of_scan(scan) {
                found.push(table.source().description());
            } else if let Some(view) = source_as_provider(&scan.source)
                .ok()
                .and_then(|provider| provider.get_logical_plan().map(|p| p.into_owned()))
            {
                collect_probes(&view, found);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("visiting a plan without errors cannot fail");
}

fn probe_description(stream: &str) -> String {
    format!("bench probe of stream {stream}")
}

/// A source standing for a stream while finding which streams a query
/// reads; never opened.
#[derive(Debug)]
struct Probe {
    stream: String,
    schema: arrow::datatypes::SchemaRef,
}

#[async_trait::async_trait]
impl Source for Probe {
    fn description(&self) -> String {
        probe_description(&self.stream)
    }

    async fn schema(
        &self,
        _: &SessionContext,
    ) -> tidemill_engine::Result<arrow::datatypes::SchemaRef> {
        Ok(Arc::clone(&self.schema))
    }

    async fn open(
        &self,
        _: tidemill_engine::SourceContext,
    ) -> tidemill_engine::Result<Box<dyn tidemill_engine::SourceStream>> {
        Err(tidemill_engine::TidemillError::Config(format!(
            "{} is not opened",
            self.description()
        )))
    }
}

/// Scratch topics created for `--sink real` on Kafka sinks, with the
/// brokers to delete them from when the bench ends.
#[cfg(feature = "kafka")]
type ScratchTopics = Vec<(
    scratch_topic::Brokers,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
)>;
#[cfg(not(feature = "kafka"))]
type ScratchTopics = Vec<()>;

/// The query's own sink, writing into each run's scratch directory (its
/// `path` replaced) or, for a Kafka sink, into a scratch topic of each run
/// (created when the sink opens, recorded in `scratch` for deletion).
fn real_sink(
    pipeline: &Arc<Pipeline>,
    sink: &str,
    scratch: &mut ScratchTopics,
) -> Result<impl Fn(&Path) -> anyhow::Result<Arc<dyn Sink>> + Send + Sync + 'static, BenchError> {
    let def = pipeline
        .sink_def(sink)
        .ok_or_else(|| BenchError::Settings(format!("no sink {sink}")))?;
    let redirect_path = def.options.get("path").is_some();
    let topic = def.options.get("topic").map(str::to_string);
    #[cfg(feature = "kafka")]
    let topics = match &topic {
        Some(_) => {
            let brokers = scratch_topic::Brokers::of(&def.options).ok_or_else(|| {
                BenchError::Settings(format!(
                    "--sink real: Kafka sink {sink} has no bootstrap_servers"
                ))
            })?;
            let created = Arc::new(std::sync::Mutex::new(Vec::new()));
            scratch.push((brokers.clone(), Arc::clone(&created)));
            Some((brokers, created))
        }
        None => None,
    };
    #[cfg(not(feature = "kafka"))]
    {
        let _ = &scratch;
        if topic.is_some() {
            return Err(BenchError::Settings(format!(
                "--sink real: sink {sink} writes to Kafka, which this build leaves out (the \
                 `kafka` feature)"
            )));
        }
    }
    let pipeline = Arc::clone(pipeline);
    let sink = sink.to_string();
    Ok(move |dir: &Path| {
        let checkpoint = dir.join("sink-checkpoint").display().to_string();
        // The run's number names its scratch topic: work/run-N/out.
        let run = dir
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut replace: Vec<(&str, String)> = Vec::new();
        if redirect_path {
            replace.push(("path", dir.join("sink").display().to_string()));
        }
        let scratch_topic = topic
            .as_ref()
            .map(|t| format!("{t}.tidemill-bench.{}.{run}", std::process::id()));
        if let Some(name) = &scratch_topic {
            replace.push(("topic", name.clone()));
        }
        let inner = pipeline.sink_with_options(&sink, &replace, Some(&checkpoint))?;
        #[cfg(feature = "kafka")]
        if let (Some((brokers, created)), Some(name)) = (&topics, scratch_topic) {
            return Ok(Arc::new(scratch_topic::ScratchTopicSink {
                inner,
                brokers: brokers.clone(),
                topic: name,
                created: Arc::clone(created),
            }) as Arc<dyn Sink>);
        }
        Ok(inner)
    })
}

/// Deletes the scratch topics `--sink real` created.
async fn delete_scratch_topics(scratch: ScratchTopics) -> Result<(), BenchError> {
    #[cfg(feature = "kafka")]
    for (brokers, created) in scratch {
        let topics = std::mem::take(&mut *created.lock().expect("scratch topics lock poisoned"));
        brokers
            .delete(&topics)
            .await
            .map_err(|e| BenchError::Settings(format!("--sink real: {e}")))?;
    }
    #[cfg(not(feature = "kafka"))]
    let _ = scratch;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_with_their_suffixes_and_zero_is_refused() {
        assert_eq!(parse_rate("500").unwrap(), 500);
        assert_eq!(parse_rate("10k").unwrap(), 10_000);
        assert_eq!(parse_rate("2.5k").unwrap(), 2_500);
        assert_eq!(parse_rate("1M").unwrap(), 1_000_000);
        assert_eq!(parse_rate("100_000").unwrap(), 100_000);
        let zero = parse_rate("0").unwrap_err().to_string();
        assert!(zero.contains("at least 1 row per second"), "{zero}");
        let bad = parse_rate("fast").unwrap_err().to_string();
        assert!(bad.starts_with("invalid rate 'fast'"), "{bad}");
    }
}
