//! The `tidemill` command: run, batch and explain a SQL pipeline file;
//! inspect a checkpoint (`status`, see `tidemill::status`).
//!
//! ```text
//! tidemill run FILE [--trigger available-now|once|<interval>] [--checkpoint DIR]
//!                   [--progress-json PATH] [--ui ADDRESS]
//!                   [--checkpoint-durability process|machine]
//! tidemill batch FILE
//! tidemill explain FILE
//! tidemill status CHECKPOINT [--pipeline FILE] [--json]
//! tidemill state CHECKPOINT [--query NAME] [--operator N] [--store NAME] [--batch N]
//!                           [--format table|json|parquet] [--out PATH]
//! tidemill bench FILE [--query NAME] [--triggers 0s,10ms,100ms,1s] [--rates 1k,10k,100k]
//!                     [--duration 10s] [--warmup 2s] [--find-max] [--sample [STREAM=]PATH]…
//!                     [--sink discard|real] [--max-rows-per-trigger N] [--out DIR] [--json PATH]
//! ```
//!
//! Exit codes: 0 on success (for `run`, also when Ctrl-C stopped it after
//! the current batch), 1 with one message on standard error when the
//! pipeline fails or a query is rejected (or, for `status` and `state`, a
//! checkpoint file is damaged; for `state`, the operator, store or batch
//! asked for is not there), 2 for a usage mistake, 130 when
//! a second Ctrl-C interrupts the stop. See `docs/sql.md`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod progress_bar;
mod state_cmd;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use datafusion::prelude::SessionContext;
use tidemill::sql::{Pipeline, PipelineError, PipelineQuery, RunOptions};
use tidemill::{QueryProgress, Trigger};

#[derive(Debug, Parser)]
#[command(
    name = "tidemill",
    version,
    about = "Run a SQL pipeline (CREATE STREAM / CREATE SINK / INSERT INTO) as a stream, as a batch job, or explain it; inspect its checkpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every INSERT INTO of FILE as a streaming query and print one
    /// line per micro-batch. Ctrl-C stops after the current batch (a
    /// second Ctrl-C exits at once, with code 130); a restart with the
    /// same checkpoint resumes exactly where it stopped.
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// When batches run: `available-now` (everything available, then
        /// exit), `once` (one batch, then exit), or an interval such as
        /// `0s` (back to back, the default), `500ms`, `10s`.
        #[arg(long, default_value = "0s")]
        trigger: String,
        /// The checkpoint directory (one subdirectory per sink). Default:
        /// FILE with `.checkpoint` in place of its extension.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Append each batch's progress to PATH as one JSON object per
        /// line.
        #[arg(long, value_name = "PATH")]
        progress_json: Option<PathBuf>,
        /// Serve a live page of the queries, Prometheus metrics at
        /// `/metrics` and a JSON API at ADDRESS (e.g. `127.0.0.1:4040`; a
        /// bare port binds to 127.0.0.1), while the run lasts. Read-only.
        #[arg(long, value_name = "ADDRESS")]
        ui: Option<String>,
        /// How durable each checkpoint and sink write is when it counts as
        /// done: `process` (the default; survives a killed process) or
        /// `machine` (also survives power loss: each file and its
        /// directory are fsynced).
        #[arg(long, value_name = "process|machine", default_value = "process")]
        checkpoint_durability: String,
        /// Begin each query's next trigger while a batch's sink writes and
        /// its state commits (asking the sources and reading ahead): pays
        /// where sources and sinks wait on I/O, such as object storage.
        #[arg(long)]
        read_ahead: bool,
    },
    /// Run FILE once as a batch job over everything the streams hold now
    /// (files, Kafka topics); each sink receives the whole result.
    Batch {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Print how each INSERT INTO would run as a stream: output mode,
    /// watermarks, stateful operators and the plan, or why it cannot.
    Explain {
        /// The pipeline file.
        file: PathBuf,
    },
    /// Measure the pipeline's queries at several trigger intervals and input
    /// rates: latency (row available → batch committed), batches/s, rows/s,
    /// CPU per million rows, time per batch phase, whether it kept up; and
    /// recommend the shortest interval that kept up at each rate. Each
    /// stream is replaced by a rate-controlled replay of sample rows (the
    /// rows its source holds now, or --sample), event times moved forward
    /// each loop. Writes study.md, study.json and study.svg into --out.
    Bench {
        /// The pipeline file.
        file: PathBuf,
        /// Only the INSERT INTO of this sink (default: every one).
        #[arg(long, value_name = "NAME")]
        query: Option<String>,
        /// Trigger intervals, comma separated.
        #[arg(long, default_value = "0s,10ms,100ms,1s")]
        triggers: String,
        /// Input rates in rows per second (per stream), comma separated:
        /// 500, 10k, 2.5k, 1M.
        #[arg(long, default_value = "1k,10k,100k")]
        rates: String,
        /// Measured time per point, after the warm-up.
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Time left out at the start of each point.
        #[arg(long, default_value = "2s")]
        warmup: String,
        /// Also search each interval's highest sustainable rate (doubling,
        /// then bisection).
        #[arg(long)]
        find_max: bool,
        /// Rows to replay for a stream: a parquet, JSON-lines or CSV file
        /// or directory, as STREAM=PATH (or PATH when the pipeline declares
        /// one stream). Default: the rows the stream's source holds now.
        #[arg(long, value_name = "[STREAM=]PATH")]
        sample: Vec<String>,
        /// `discard` (default: the engine's figures alone) or `real` (each
        /// query's own sink, writing into a scratch directory removed
        /// afterwards).
        #[arg(long, default_value = "discard")]
        sink: String,
        /// At most N rows per micro-batch per stream (as a source's
        /// read limit).
        #[arg(long, value_name = "N")]
        max_rows_per_trigger: Option<u64>,
        /// Where study.md, study.json and study.svg go. Default: FILE with
        /// `.bench` in place of its extension.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Also write the results as JSON to PATH.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
    },
    /// Print what a checkpoint holds, per query: the last committed batch
    /// and its watermark, each source's offsets, a batch in flight, the
    /// state per stateful operator. Reads only: safe while a run holds
    /// the checkpoint.
    Status {
        /// A query's checkpoint directory, or a pipeline's checkpoint root
        /// (one directory per query); local, or an `s3://bucket/path` URL
        /// (credentials from the AWS_* variables).
        checkpoint: PathBuf,
        /// The pipeline file: also say how far behind each source is.
        #[arg(long, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Read the state of a query's stateful operators from its checkpoint
    /// (Spark's state data source): without --operator, list every state
    /// store (operator, store, rows, key and value columns, description);
    /// with --operator, print the store's entries (partition, key, value,
    /// expires_at), sorted by partition and key. Reads only: safe while a
    /// run holds the checkpoint.
    State {
        /// A query's checkpoint directory (a path or file:// URL), or a
        /// pipeline's checkpoint root (one directory per query; see
        /// --query).
        checkpoint: String,
        /// The query to read under a pipeline's checkpoint root: its
        /// sink's name (default: the root's only query).
        #[arg(long, value_name = "NAME")]
        query: Option<String>,
        /// The stateful operator whose entries to print, by number.
        #[arg(long, value_name = "N")]
        operator: Option<usize>,
        /// The operator's store (`left` or `right` for a stream–stream
        /// join); may be left out when the operator has one.
        #[arg(long, value_name = "NAME", requires = "operator")]
        store: Option<String>,
        /// The committed batch whose state to read (default: the last
        /// committed one).
        #[arg(long, value_name = "N")]
        batch: Option<u64>,
        /// How to print: a table, JSON lines, or (entries only) a parquet
        /// file written to --out.
        #[arg(long, value_enum, default_value = "table")]
        format: state_cmd::Format,
        /// Write to PATH instead of standard output (required for
        /// parquet).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One message on one line, whatever the errors it is made of.
            let message = format!("{e:#}");
            let lines: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("error: {}", lines.join(" "));
            ExitCode::FAILURE
        }
    }
}

fn read_pipeline(file: &Path) -> anyhow::Result<Pipeline> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Pipeline::parse(&text).map_err(|e| in_file(file, e))
}

/// `error` said with the pipeline file first: `FILE:LINE:COLUMN: …` where
/// the error knows its position, as compilers say it, `FILE: …` otherwise.
fn in_file(file: &Path, error: PipelineError) -> anyhow::Error {
    match error.position() {
        Some(_) => anyhow::anyhow!("{}:{error}", file.display()),
        None => anyhow::Error::new(error).context(file.display().to_string()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = SessionContext::new();
    match cli.command {
        Command::Run {
            file,
            trigger,
            checkpoint,
            progress_json,
            ui,
            checkpoint_durability,
            read_ahead,
        } => {
            let trigger = parse_trigger(&trigger)?;
            let checkpoint_durability = checkpoint_durability
                .parse()
                .map_err(|e: String| anyhow::anyhow!("invalid --checkpoint-durability: {e}"))?;
            let pipeline = read_pipeline(&file)?;
            let checkpoint = checkpoint.unwrap_or_else(|| file.with_extension("checkpoint"));
            let options = RunOptions {
                trigger,
                checkpoint: checkpoint.display().to_string(),
                checkpoint_durability,
                read_ahead,
            };
            // Listen for Ctrl-C before the queries start, so that an early
            // one also stops them cleanly.
            let mut interrupts = Interrupts::new()?;
            // The monitor listens before the queries start, so it sees
            // each one from its first event.
            let _monitor = match &ui {
                Some(address) => {
                    let (monitor, server) = tidemill::monitor::Monitor::start(&ctx, address)
                        .await
                        .with_context(|| format!("cannot serve the UI at {address}"))?;
                    eprintln!("UI at http://{}", server.local_addr());
                    Some((monitor, server))
                }
                None => None,
            };
            let queries = Arc::new(
                pipeline
                    .start(&ctx, &options)
                    .await
                    .map_err(|e| in_file(&file, e))?,
            );
            if queries.is_empty() {
                bail!(
                    "{}: no INSERT INTO statement, nothing to run",
                    file.display()
                );
            }
            let mut progress_file = match &progress_json {
                Some(path) => Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?,
                ),
                None => None,
            };
            let mut printed = vec![None::<u64>; queries.len()];
            // An available-now run on a terminal draws a progress bar per
            // query instead of a line per batch.
            let mut bars = (trigger == Trigger::AvailableNow && std::io::stdout().is_terminal())
                .then(progress_bar::Bars::new);
            let mut rows_read = vec![0_u64; queries.len()];
            let mut stopping = false;
            let mut failed = None::<usize>;
            loop {
                // Whether every query had stopped is read before their
                // progress: the pass that sees them all stopped still
                // prints the batches they finished last.
                let all_stopped = queries.iter().all(|q| !q.query.is_active());
                let shown = print_progress(
                    &queries,
                    &mut printed,
                    &mut rows_read,
                    bars.as_mut(),
                    progress_file.as_mut(),
                );
                if let Err(e) = shown {
                    request_stop(&queries);
                    for q in queries.iter() {
                        q.query.await_termination().await.ok();
                    }
                    return Err(e);
                }
                if all_stopped {
                    break;
                }
                // A query that failed stops the run: the others stop after
                // their batch in progress (their progress still printed),
                // and the command exits with the failed query's error.
                if failed.is_none()
                    && let Some(i) = queries.iter().position(|q| q.query.error().is_some())
                {
                    failed = Some(i);
                    stopping = true;
                    request_stop(&queries);
                }
                tokio::select! {
                    () = interrupts.recv() => {
                        if stopping {
                            eprintln!(
                                "interrupted again: exiting now; a batch in progress is re-run on restart"
                            );
                            std::process::exit(130);
                        }
                        stopping = true;
                        eprintln!("stopping after the current batch… (Ctrl-C again to exit now)");
                        // Every query stops after its batch in progress, in
                        // parallel; the loop goes on printing their progress.
                        request_stop(&queries);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            // The query that failed first, or any that failed as it stopped.
            if let Some(i) =
                failed.or_else(|| queries.iter().position(|q| q.query.error().is_some()))
            {
                return Err(query_failed(&queries[i]));
            }
            Ok(())
        }
        Command::Batch { file } => {
            let pipeline = read_pipeline(&file)?;
            let outputs = pipeline
                .run_batch(&ctx)
                .await
                .map_err(|e| in_file(&file, e))?;
            for output in outputs {
                say(&format!("{}: {} rows", output.sink, output.rows))?;
            }
            Ok(())
        }
        Command::Explain { file } => {
            let pipeline = read_pipeline(&file)?;
            let explained = pipeline
                .explain(&ctx)
                .await
                .map_err(|e| in_file(&file, e))?;
            let mut rejected = Vec::new();
            for e in explained {
                say(&format!("== INSERT INTO {}", e.sink))?;
                match e.plan {
                    Ok(text) => say(&text)?,
                    Err(error) => {
                        say(&format!("rejected: {error}\n"))?;
                        rejected.push(e.sink);
                    }
                }
            }
            if !rejected.is_empty() {
                bail!(
                    "{}: cannot run as a stream: INSERT INTO {}",
                    file.display(),
                    rejected.join(", ")
                );
            }
            Ok(())
        }
        Command::Bench {
            file,
            query,
            triggers,
            rates,
            duration,
            warmup,
            find_max,
            sample,
            sink,
            max_rows_per_trigger,
            out,
            json,
        } => {
            let options = tidemill::bench::BenchOptions {
                query,
                triggers: triggers
                    .split(',')
                    .map(|t| parse_duration("--triggers", t))
                    .collect::<anyhow::Result<_>>()?,
                rates: rates
                    .split(',')
                    .map(tidemill::bench::parse_rate)
                    .collect::<Result<_, _>>()?,
                duration: parse_duration("--duration", &duration)?,
                warmup: parse_duration("--warmup", &warmup)?,
                find_max,
                samples: sample
                    .iter()
                    .map(|s| match s.split_once('=') {
                        Some((stream, path)) => (Some(stream.to_string()), PathBuf::from(path)),
                        None => (None, PathBuf::from(s)),
                    })
                    .collect(),
                sink: match sink.as_str() {
                    "discard" => tidemill::bench::BenchSink::Discard,
                    "real" => tidemill::bench::BenchSink::Real,
                    other => bail!("invalid --sink '{other}': expected discard or real"),
                },
                max_rows_per_trigger,
                log: true,
            };
            let pipeline = read_pipeline(&file)?;
            let report =
                tidemill::bench::bench(&pipeline, &options)
                    .await
                    .map_err(|e| match e {
                        tidemill::bench::BenchError::Pipeline(e) => in_file(&file, e),
                        other => anyhow::Error::new(other).context(file.display().to_string()),
                    })?;
            let out = out.unwrap_or_else(|| file.with_extension("bench"));
            let written = report
                .write_to(&out)
                .with_context(|| format!("cannot write the results into {}", out.display()))?;
            if let Some(path) = &json {
                std::fs::write(path, report.to_json()?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            say(&report.to_markdown())?;
            say("Shortest trigger interval that kept up:")?;
            for r in &report.recommendations {
                say(&format!("  {}", r.sentence()))?;
            }
            let mut paths: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
            if let Some(path) = &json {
                paths.push(path.display().to_string());
            }
            say(&format!("written: {}", paths.join(", ")))
        }
        Command::Status {
            checkpoint,
            pipeline,
            json,
        } => {
            let sources = match &pipeline {
                Some(file) => Some(
                    read_pipeline(file)?
                        .stream_sources(&ctx)
                        .await
                        .map_err(|e| in_file(file, e))?
                        .into_iter()
                        .map(|(_, source)| source)
                        .collect::<Vec<_>>(),
                ),
                None => None,
            };
            let report = tidemill::status::inspect(&checkpoint, sources.as_deref()).await?;
            if json {
                say(&serde_json::to_string_pretty(&report)?)
            } else {
                write!(std::io::stdout().lock(), "{report}")
                    .context("cannot write to standard output")
            }
        }
        Command::State {
            checkpoint,
            query,
            operator,
            store,
            batch,
            format,
            out,
        } => {
            let args = state_cmd::StateArgs {
                checkpoint,
                query,
                operator,
                store,
                batch,
                format,
                out,
            };
            state_cmd::run(&ctx, args).await
        }
    }
}

/// Prints the progress of the batches each query finished since the last
/// call (`printed` holds the last batch id printed per query): one line on
/// standard output, and one JSON object in `progress_file` if given.
/// Shows the batches committed since the last call: a line each, or, with
/// `bars`, the queries' progress bars redrawn; appends them to the
/// progress file. `rows_read` keeps each query's rows read so far.
fn print_progress(
    queries: &[PipelineQuery],
    printed: &mut [Option<u64>],
    rows_read: &mut [u64],
    bars: Option<&mut progress_bar::Bars>,
    mut progress_file: Option<&mut std::fs::File>,
) -> anyhow::Result<()> {
    for ((q, last), rows) in queries
        .iter()
        .zip(printed.iter_mut())
        .zip(rows_read.iter_mut())
    {
        for progress in q.query.recent_progress() {
            if last.is_some_and(|l| progress.batch_id <= l) {
                continue;
            }
            *last = Some(progress.batch_id);
            *rows += progress.num_input_rows;
            if bars.is_none() {
                say(&progress_line(&q.sink, &progress))?;
            }
            if let Some(out) = progress_file.as_mut() {
                writeln!(out, "{}", serde_json::to_string(&progress)?)
                    .context("cannot append to the --progress-json file")?;
            }
        }
    }
    if let Some(bars) = bars {
        let elapsed = bars.elapsed();
        let lines: Vec<String> = queries
            .iter()
            .zip(rows_read.iter())
            .map(|(q, rows)| {
                let latest = q.query.last_progress();
                match progress_bar::done_of(&q.query.backlog(), latest.as_ref()) {
                    Some((done, total, unit)) => {
                        progress_bar::line(&q.sink, done, total, unit, *rows, elapsed)
                    }
                    None => format!("{}: {rows} rows", q.sink),
                }
            })
            .collect();
        bars.draw(&lines)
            .context("cannot write to standard output")?;
    }
    Ok(())
}

/// Asks every query to stop after its batch in progress, in parallel,
/// without waiting.
fn request_stop(queries: &Arc<Vec<PipelineQuery>>) {
    for i in 0..queries.len() {
        let queries = Arc::clone(queries);
        tokio::spawn(async move { queries[i].query.stop().await.ok() });
    }
}

/// The error of a query that failed, naming it.
fn query_failed(q: &PipelineQuery) -> anyhow::Error {
    match q.query.error() {
        Some(error) => anyhow::anyhow!("query {} failed: {error}", q.sink),
        None => anyhow::anyhow!("query {} stopped", q.sink),
    }
}

/// Ctrl-C (SIGINT), listened for from creation on.
struct Interrupts {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("cannot listen for Ctrl-C")?,
        })
    }

    /// Waits for the next Ctrl-C.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Prints one line on standard output; a closed output (`| head`) is an
/// error, not a panic.
fn say(line: &str) -> anyhow::Result<()> {
    writeln!(std::io::stdout().lock(), "{line}").context("cannot write to standard output")
}

fn parse_trigger(text: &str) -> anyhow::Result<Trigger> {
    match text {
        "available-now" => Ok(Trigger::AvailableNow),
        "once" => Ok(Trigger::Once),
        interval => {
            let duration = tidemill::engine::watermark::parse_delay(interval).map_err(|_| {
                anyhow::anyhow!(
                    "invalid --trigger '{interval}': expected available-now, once, or an interval such as 0s, 500ms, 10s"
                )
            })?;
            Ok(Trigger::ProcessingTime(duration))
        }
    }
}

/// A duration option: `0`, `0s`, `250ms`, `2s`, `1.5 s`.
fn parse_duration(option: &str, text: &str) -> anyhow::Result<Duration> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    tidemill::engine::watermark::parse_delay(text).map_err(|_| {
        anyhow::anyhow!("invalid {option} '{text}': expected a duration such as 0s, 10ms, 2s")
    })
}

/// One line per batch: rows in, rows/s, duration, watermark, state rows.
fn progress_line(sink: &str, p: &QueryProgress) -> String {
    let state: u64 = p.state_operators.iter().map(|s| s.num_rows_total).sum();
    let late: u64 = p
        .state_operators
        .iter()
        .map(|s| s.num_rows_dropped_by_watermark)
        .sum();
    let without_time: u64 = p
        .state_operators
        .iter()
        .map(|s| s.num_rows_without_event_time)
        .sum();
    format!(
        "{sink}: batch {} | {} rows in | {:.0} rows/s | {:.1} ms | watermark {} | state {} rows{}{}{}",
        p.batch_id,
        p.num_input_rows,
        p.processed_rows_per_second,
        p.duration_ms.trigger_execution,
        p.event_time.watermark.as_deref().unwrap_or("-"),
        state,
        if late > 0 {
            format!(" | {late} late rows dropped")
        } else {
            String::new()
        },
        if without_time > 0 {
            format!(" | {without_time} rows without event time left out")
        } else {
            String::new()
        },
        if p.recovered { " | recovered" } else { "" },
    )
}
