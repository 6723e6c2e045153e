//! The trigger loop and the life of one micro-batch (DESIGN §3).
//!
//! **The commit log is written off the critical path** (Spark's
//! asynchronous progress tracking, for every query): once batch N's sink
//! and state have committed, `commits/N` and the retention deletes of old
//! log entries are written by a task of their own while the next trigger
//! asks the sources for offsets, writes `offsets/N+1`, reads, plans and
//! executes batch N+1. The write is awaited ([`Runner::settle_commit`])
//! before batch N+1's sink, before a trigger that found no data returns,
//! and before the query stops, so at most one commit is in flight and an
//! error writing it fails the next batch (a transient one is retried,
//! inline). Only then are the sources told that batch N committed
//! ([`SourceStream::commit`]: a source may discard what it no longer needs
//! to replay).
//!
//! **The offset log entry is written while the batch runs.** `offsets/N` is
//! written in the background while batch N reads its sources, plans and
//! executes (none of which leaves a trace outside the process), or on the
//! spot where that is quicker (a local disk: see [`Background`]), and is
//! awaited before the batch's sink writes anything
//! ([`Runner::await_offset_log`]). A batch that fails first also waits for
//! it: once `offsets/N` is written, a retry re-runs batch N as logged; if
//! it could not be written, the next trigger plans batch N afresh, as a
//! restart would.
//!
//! **The next trigger may begin while a batch commits** (pipelining,
//! [`QueryOptions::read_ahead`]). When the next trigger is due as soon as
//! batch N ends (a zero interval, an interval batch N already outlasted,
//! or available-now), it begins once batch N has executed: a task asks
//! the sources for the next offsets from batch N's ends, reads batch
//! N+1's input and copies the kept physical plan and, in a query without
//! stateful operators (where batch N+1 does not depend on batch N's
//! commit), executes it, while batch N's sink writes and its state
//! commits on the query's own task. Nothing of it leaves a trace outside
//! the process: `offsets/N+1` is written only once batch N's sink and
//! state have committed, as in a trigger that began afterwards; batch
//! N+1's stateful operators begin it only then, and its sink writes only
//! then. If batch N fails, what was read (or executed) ahead is dropped,
//! with the event times it reported, and batch N is retried as logged; if
//! the trigger begun ahead fails, batch N still commits and the next
//! trigger fails with that error. The trigger counts from the moment it
//! began (the sources were asked), so
//! [`crate::StreamingQuery::process_all_available`] is never answered by
//! offsets asked before data it waits for.
//!
//! Recovery rules this implies, all kept by [`Checkpoint::recovery_point`]
//! looking only at the latest offset entry:
//! - `offsets/N+1` is written only after batch N's sink and state commits
//!   returned, so its existence proves batch N committed, whether or not
//!   `commits/N` was written: a restart re-runs batch N+1 (if it has no
//!   commit) from its recorded ranges and watermark over state version
//!   N+1, and a missing `commits/N` is never needed again.
//! - If the latest offset entry is N and `commits/N` is missing (the
//!   process died with the write in flight), batch N is re-run: its sink
//!   ignores a batch id it committed and its state commit rewrites the
//!   same version, as after a crash just before a synchronous commit log.
//! - Sources keep everything after their last *told* commit, which is never
//!   ahead of a durable `commits/N` or `offsets/N+1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::FutureExt;

use crate::background::Background;
use crate::batch_slot::BatchSlot;
use crate::checkpoint::{Checkpoint, CommitEntry, OffsetEntry, SourceRange};
use crate::plan::{BatchPlanner, WatermarkPlanner};
use crate::progress::{BatchFigures, PhaseDurations, SourceProgress};
use crate::query::QueryShared;
use crate::query::SourceBacklog;
use crate::stateful::{BatchWatermarks, StatefulOperator, WatermarkRule};
use crate::trigger::IdleWait;
use crate::watermark::WatermarkTracker;
use crate::{
    BatchInput, Offset, OutputMode, QueryOptions, QueryProgress, ReadLimit, Result, RetryPolicy,
    Sink, SourceStream, TidemillError, Trigger, failpoint,
};

/// A source opened for this query, with where it stands.
#[derive(Debug)]
pub(crate) struct RunningSource {
    /// Where each batch puts the source's rows for the plan to read.
    pub slot: Arc<BatchSlot>,
    pub description: String,
    pub source: Box<dyn SourceStream>,
    /// The end of the last committed batch.
    pub committed: Option<Offset>,
}

/// Drives one query: owns its sources, sink and checkpoint.
pub(crate) struct Runner {
    /// The session batches are planned in (with the streaming planner).
    pub session: SessionContext,
    /// The query's watermark, advanced at the end of each batch.
    pub watermarks: WatermarkTracker,
    /// Where the batch's watermark operators report event times.
    pub watermark_planner: Arc<WatermarkPlanner>,
    /// Plans each batch's physical plan.
    pub planner: BatchPlanner,
    pub sources: Vec<RunningSource>,
    pub sink: Arc<dyn Sink>,
    /// Where the aggregation's late rows go, if anywhere.
    pub late_rows_sink: Option<Arc<dyn Sink>>,
    /// The query's stateful operators, by operator number, each with the
    /// watermarks it runs with.
    pub operators: Vec<(Arc<dyn StatefulOperator>, WatermarkRule)>,
    /// The watermark the last batch ran with.
    pub last_watermark_ms: Option<i64>,
    /// Failed attempts of the running trigger so far (retried).
    pub failed_attempts: u64,
    pub checkpoint: Checkpoint,
    pub trigger: Trigger,
    pub output_mode: OutputMode,
    pub options: QueryOptions,
    pub shared: Arc<QueryShared>,
    pub next_batch_id: u64,
    /// A batch whose offsets were logged but that never committed.
    pub pending: Option<OffsetEntry>,
    /// Whether `pending` was found at start (a crashed run's batch) rather
    /// than left by a transient failure in this run.
    pub pending_is_recovery: bool,
    pub last_trigger_start: Option<Instant>,
    /// The commit of the last batch, written in the background (see the
    /// module's documentation).
    pub in_flight: Option<InFlightCommit>,
    /// The running batch's offset log entry, being written while the batch
    /// reads and executes (see the module's documentation).
    pub logging: Option<Background<Result<OffsetEntry>>>,
    /// The next trigger, begun while the last batch committed (see the
    /// module's documentation).
    pub ahead: Option<Ahead>,
}

/// The next trigger, begun while the batch before it wrote its output and
/// committed its state.
pub(crate) struct Ahead {
    /// When it began: when the sources were asked.
    started: Instant,
    /// Its sequence number ([`QueryShared::trigger_started`]).
    seq: u64,
    /// What it read, or why it failed.
    read: Result<TriggerRead>,
}

/// What a batch's trigger prepared before the batch began (when it began
/// ahead): each missing piece the batch reads, plans or executes itself.
#[derive(Default)]
struct Prepared {
    /// Each source's input.
    input: Option<Vec<BatchInput>>,
    /// A copy of the kept physical plan.
    physical: Option<Arc<dyn ExecutionPlan>>,
    /// The batch's output, when a query without stateful operators
    /// executed it ahead (`input` and `physical` then went into it).
    executed: Option<Executed>,
}

/// What a trigger found: the sources' next offsets and, when it began
/// ahead and there is new data, what it prepared of the batch.
pub(crate) struct TriggerRead {
    /// The batch's processing time.
    timestamp: chrono::DateTime<chrono::Utc>,
    ranges: Vec<SourceRange>,
    /// Whether any source has new data.
    any_new: bool,
    prepared: Prepared,
    /// The time it took to ask (and read, plan and execute ahead).
    phases: PhaseDurations,
}

/// A batch's commit log entry being written in the background, and what
/// follows once it is durable.
pub(crate) struct InFlightCommit {
    batch_id: u64,
    entry: CommitEntry,
    /// The batch's end offset per source, to tell the sources.
    ends: Vec<Option<Offset>>,
    /// The write (and the retention deletes after it); `None` once it
    /// failed, to be retried inline.
    task: Option<Background<Result<()>>>,
}

/// The sources' slots while a batch's rows are in them: emptied when the
/// batch has run, or failed before it could.
struct FilledSlots(Vec<Arc<BatchSlot>>);

impl Drop for FilledSlots {
    fn drop(&mut self) {
        for slot in &self.0 {
            slot.clear();
        }
    }
}

/// What a trigger did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// No new data: no batch ran, no batch id was used.
    Idle,
    /// A new batch ran.
    Ran,
    /// A batch left uncommitted by an earlier run was re-run.
    Recovered,
}

/// The waits between retries of a failing batch.
struct Backoff {
    policy: RetryPolicy,
    failing_since: Option<Instant>,
    next: Duration,
    /// Failed attempts since the last success.
    failures: u32,
}

impl Backoff {
    fn new(policy: RetryPolicy) -> Self {
        Self {
            next: policy.initial_backoff,
            failing_since: None,
            failures: 0,
            policy,
        }
    }

    /// A trigger succeeded: the next failure starts afresh.
    fn reset(&mut self) {
        self.failing_since = None;
        self.next = self.policy.initial_backoff;
        self.failures = 0;
    }

    /// The wait before retrying a trigger that started at `started` and
    /// failed; `None` once failures have lasted the policy's `max_elapsed`.
    fn next_wait(&mut self, started: Instant) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert(started);
        self.failures += 1;
        if since.elapsed() >= self.policy.max_elapsed {
            return None;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.policy.max_backoff);
        Some(wait)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Runner {
    /// Runs triggers until the trigger policy or a stop request ends the
    /// query, or an error does; the last batch's commit is durable before
    /// it returns.
    pub async fn run(mut self) -> Result<()> {
        let outcome = self.run_triggers().await;
        let settled = self.settle_commit().await;
        for (operator, _) in &self.operators {
            operator.close().await;
        }
        outcome.and(settled)
    }

    /// Waits for the commit log entry in flight, if any, writing it again
    /// inline if the background write failed, then tells the sources the
    /// batch committed.
    async fn settle_commit(&mut self) -> Result<()> {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let written = match in_flight.task.take() {
            Some(task) => task.finish().await.unwrap_or_else(|e| {
                Err(TidemillError::Internal(format!(
                    "writing commits/{}: {e}",
                    in_flight.batch_id
                )))
            }),
            None => match self
                .checkpoint
                .commits
                .add(in_flight.batch_id, &in_flight.entry)
                .await
            {
                // A failed attempt may have written it after all.
                Err(tidemill_state::StateError::AlreadyExists { .. }) => Ok(()),
                other => other.map_err(Into::into),
            },
        };
        // Kept (without its task) so that the next call writes it again.
        written?;
        let in_flight = self.in_flight.take().expect("checked above");
        for (s, end) in self.sources.iter_mut().zip(&in_flight.ends) {
            if let Some(end) = end {
                s.source.commit(end).await?;
            }
        }
        Ok(())
    }

    async fn run_triggers(&mut self) -> Result<()> {
        if self.trigger == Trigger::AvailableNow {
            let mut backlog = Vec::with_capacity(self.sources.len());
            for s in &mut self.sources {
                s.source.prepare_for_available_now().await?;
                backlog.push(SourceBacklog {
                    description: s.description.clone(),
                    start: s.committed.clone(),
                    target: s.source.available_now_target(),
                });
            }
            self.shared.set_backlog(backlog);
        }
        let keep_from = self
            .next_batch_id
            .saturating_sub(self.options.min_batches_to_retain);
        self.checkpoint.offsets.purge_before(keep_from).await?;
        self.checkpoint.commits.purge_before(keep_from).await?;
        let mut retry = Backoff::new(self.options.retry.clone());
        let mut idle_wait = IdleWait::new(self.options.no_data_polling_delay);
        loop {
            if self.shared.stop_requested() {
                return Ok(());
            }
            let (started, seq, ahead) = match self.ahead.take() {
                Some(ahead) => {
                    self.shared.set_status(|s| s.is_trigger_active = true);
                    (ahead.started, ahead.seq, Some(ahead.read))
                }
                None => (Instant::now(), self.shared.trigger_started(), None),
            };
            self.failed_attempts = u64::from(retry.failures);
            let outcome = match self.run_trigger(started, ahead).await {
                Ok(outcome) => {
                    retry.reset();
                    outcome
                }
                Err(e) if e.is_transient() => {
                    let Some(wait) = retry.next_wait(started) else {
                        return Err(e);
                    };
                    // Said on standard error, whether or not a tracing
                    // subscriber is installed: a query that retries must
                    // not look idle.
                    let what = match &self.pending {
                        Some(entry) => format!("batch {}", entry.batch_id),
                        None => "a trigger".to_string(),
                    };
                    let notice = format!(
                        "query {}: {what} failed (attempt {}) with a transient error: {e}; next try in {wait:?} \
                         (giving up once failures have lasted {:?})",
                        self.shared.display_name(),
                        retry.failures,
                        retry.policy.max_elapsed,
                    );
                    tracing::warn!("{notice}");
                    eprintln!("warning: {notice}");
                    let message = format!("Retrying after a transient error: {e}");
                    self.shared.set_status(|s| {
                        s.is_trigger_active = false;
                        s.message = message;
                    });
                    self.shared.sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let ran = outcome != Outcome::Idle;
            self.shared.set_status(|s| {
                s.is_trigger_active = false;
                s.is_data_available = ran;
                s.message = if ran {
                    "Waiting for next trigger".into()
                } else {
                    "Waiting for data to arrive".into()
                };
            });
            if !ran {
                self.shared.trigger_idle(seq);
            }
            match self.trigger {
                // Once: after a recovered batch, one more with new data.
                Trigger::Once if outcome == Outcome::Recovered => {}
                Trigger::Once => return Ok(()),
                Trigger::AvailableNow if !ran => return Ok(()),
                Trigger::AvailableNow => {}
                Trigger::ProcessingTime(interval) => {
                    let mut wait = interval.saturating_sub(started.elapsed());
                    if ran {
                        idle_wait.reset();
                    } else {
                        wait = wait.max(idle_wait.next_wait());
                    }
                    self.shared.sleep(wait).await;
                }
            }
        }
    }

    /// One trigger: plan and run a batch if there is new data (or a batch
    /// to recover). `ahead` is what the trigger read while the batch
    /// before it committed, if it began then.
    async fn run_trigger(
        &mut self,
        started: Instant,
        ahead: Option<Result<TriggerRead>>,
    ) -> Result<Outcome> {
        // A batch whose offsets are logged but which has not committed: left
        // by a crashed run, or by a transient failure in this one. (Never
        // with a trigger begun ahead: that begins only once a batch ran.)
        if let Some(entry) = self.pending.clone() {
            let timestamp = chrono::Utc::now();
            let recovery = self.pending_is_recovery;
            tracing::info!(
                "query {}: re-running batch {} ({})",
                self.shared.display_name(),
                entry.batch_id,
                if recovery {
                    "left uncommitted by a previous run"
                } else {
                    "after a transient failure"
                }
            );
            let phases = PhaseDurations::default();
            self.run_batch(entry, started, timestamp, phases, true, Prepared::default())
                .await?;
            return Ok(if recovery {
                Outcome::Recovered
            } else {
                Outcome::Ran
            });
        }
        let read = match ahead {
            Some(read) => read?,
            None => {
                self.shared
                    .set_status(|s| s.message = "Getting offsets from sources".into());
                let starts = self.sources.iter().map(|s| s.committed.clone()).collect();
                let timestamp = chrono::Utc::now();
                let t = Instant::now();
                let (ranges, any_new) =
                    latest_ranges(&mut self.sources, starts, self.trigger).await?;
                TriggerRead {
                    timestamp,
                    ranges,
                    any_new,
                    prepared: Prepared::default(),
                    phases: PhaseDurations {
                        latest_offset: ms(t.elapsed()),
                        ..Default::default()
                    },
                }
            }
        };
        let TriggerRead {
            timestamp,
            ranges,
            any_new,
            prepared,
            mut phases,
        } = read;
        if !any_new && !self.state_to_close().await {
            self.settle_commit().await?;
            return Ok(Outcome::Idle);
        }
        let entry = OffsetEntry {
            batch_id: self.next_batch_id,
            timestamp_ms: timestamp.timestamp_millis(),
            sources: ranges,
            watermark_ms: self.watermarks.current(),
            previous_watermark_ms: self.last_watermark_ms,
            output_mode: self.output_mode,
        };
        failpoint::hit("before_offset_log", entry.batch_id);
        let (offsets, logged) = (self.checkpoint.offsets.clone(), entry.clone());
        let t = Instant::now();
        self.logging = Some(
            Background::start(async move {
                offsets.add(logged.batch_id, &logged).await?;
                failpoint::hit("after_offset_log", logged.batch_id);
                Ok(logged)
            })
            .await,
        );
        // A write done on the spot counts in the offset log's phase, as
        // the wait for one left running does (see `run_batch`).
        phases.wal_commit = ms(t.elapsed());
        let ran = self
            .run_batch(entry, started, timestamp, phases, false, prepared)
            .await;
        if ran.is_err() {
            // Whether the batch is now logged decides what a retry runs.
            let _ = self.await_offset_log().await;
        }
        ran.map(|()| Outcome::Ran)
    }

    /// Waits for the offset log entry being written (if any), after which
    /// the batch is pending until it commits: a retry re-runs it as
    /// logged. Returns the time waited, in ms.
    async fn await_offset_log(&mut self) -> Result<f64> {
        let Some(task) = self.logging.take() else {
            return Ok(0.0);
        };
        let t = Instant::now();
        let entry = task.finish().await.unwrap_or_else(|e| {
            Err(TidemillError::Internal(format!(
                "writing the offset log entry: {e}"
            )))
        })?;
        self.pending = Some(entry);
        self.pending_is_recovery = false;
        Ok(ms(t.elapsed()))
    }

    /// Reads, executes, sinks and commits the batch recorded in `entry`.
    async fn run_batch(
        &mut self,
        entry: OffsetEntry,
        started: Instant,
        timestamp: chrono::DateTime<chrono::Utc>,
        mut phases: PhaseDurations,
        recovered: bool,
        prepared: Prepared,
    ) -> Result<()> {
        let batch_id = entry.batch_id;
        self.shared
            .set_status(|s| s.message = format!("Processing batch {batch_id}"));

        let Executed {
            schema,
            output,
            rows: input_rows,
        } = match prepared.executed {
            Some(executed) => executed,
            None => {
                self.read_and_execute(&entry, prepared.input, prepared.physical, &mut phases)
                    .await?
            }
        };
        let mut num_input_rows = 0;
        let mut source_progress = Vec::with_capacity(self.sources.len());
        for ((s, range), rows) in self.sources.iter().zip(&entry.sources).zip(&input_rows) {
            num_input_rows += rows.get();
            source_progress.push(SourceProgress {
                description: s.description.clone(),
                start_offset: range.start.clone(),
                end_offset: range.end.clone(),
                num_input_rows: rows.get(),
                lag: s.source.lag(),
                metrics: s.source.metrics(),
            });
        }
        let max_event_time = self.watermarks.end_batch(&self.watermark_planner);
        let num_output_rows: u64 = output.iter().map(|b| b.num_rows() as u64).sum();

        // The batch's offset log entry is durable before its output is,
        // and so is the previous batch's commit (so at most one commit is
        // in flight).
        phases.wal_commit += self.await_offset_log().await?;
        self.settle_commit().await?;

        // The next trigger begins, if it is due, while the output and the
        // state commit (see the module's documentation).
        let begun = self.begin_next_trigger(started, &entry);
        let committed = self
            .commit_output_and_state(batch_id, schema, output, &mut phases)
            .await;
        if let Some(begun) = begun {
            let ahead = self.join_next_trigger(begun).await?;
            if committed.is_ok() {
                self.ahead = Some(ahead);
            } else {
                // What it read will be read again after this batch's retry:
                // the event times it reported are not this batch's.
                self.watermarks.forget_batch(&self.watermark_planner);
            }
        }
        let state_operators = committed?;

        // Commit: the log entry in the background (see the module's
        // documentation); from here on, whatever fails never re-runs this
        // batch in this run.
        let t = Instant::now();
        let commit = CommitEntry {
            batch_id,
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
            next_watermark_ms: self.watermarks.current(),
        };
        self.pending = None;
        self.pending_is_recovery = false;
        self.next_batch_id = batch_id + 1;
        self.last_watermark_ms = entry.watermark_ms;
        for (s, range) in self.sources.iter_mut().zip(&entry.sources) {
            s.committed = range.end.clone();
        }
        let (offsets, commits) = (
            self.checkpoint.offsets.clone(),
            self.checkpoint.commits.clone(),
        );
        let retire = batch_id.checked_sub(self.options.min_batches_to_retain);
        let written = commit.clone();
        // Spawned rather than started on the spot: nothing waits for it
        // until the next batch's sink, so another worker can write it
        // while the next batch runs.
        let task = Background::spawn(async move {
            failpoint::hit("before_commit_log", batch_id);
            commits.add(batch_id, &written).await?;
            failpoint::hit("after_commit_log", batch_id);
            if let Some(old) = retire {
                offsets.remove(old).await?;
                commits.remove(old).await?;
            }
            Ok(())
        });
        self.in_flight = Some(InFlightCommit {
            batch_id,
            entry: commit,
            ends: entry.sources.iter().map(|r| r.end.clone()).collect(),
            task: Some(task),
        });
        if batch_id.is_multiple_of(10) {
            let keep_from =
                (batch_id + 1).saturating_sub(self.options.min_state_versions_to_retain);
            for (operator, _) in &self.operators {
                operator.purge(keep_from).await?;
            }
        }
        phases.commit_offsets = ms(t.elapsed());

        // Progress.
        let elapsed = started.elapsed();
        let since_last_trigger = self
            .last_trigger_start
            .map(|last| started.duration_since(last))
            .unwrap_or(elapsed);
        self.last_trigger_start = Some(started);
        let progress = QueryProgress::of_batch(
            &self.shared.id,
            &self.shared.run_id,
            self.shared.name.as_deref(),
            BatchFigures {
                batch_id,
                timestamp,
                recovered,
                num_input_rows,
                num_output_rows,
                elapsed,
                since_last_trigger,
                phases,
                watermark_ms: entry.watermark_ms,
                max_event_time_ms: max_event_time,
                sources: source_progress,
                sink_description: self.sink.description(),
                state_operators,
                num_retries: self.failed_attempts,
            },
        );
        tracing::info!("{}", progress.summary());
        self.shared.record_progress(progress);
        Ok(())
    }
}

impl Runner {
    /// Reads the batch `entry`'s input into the sources' slots (unless
    /// `input` was read ahead), begins the batch in the stateful
    /// operators, plans it (unless `physical` is a copy made ahead) and
    /// executes it.
    async fn read_and_execute(
        &mut self,
        entry: &OffsetEntry,
        input: Option<Vec<BatchInput>>,
        physical: Option<Arc<dyn ExecutionPlan>>,
        phases: &mut PhaseDurations,
    ) -> Result<Executed> {
        let batch_id = entry.batch_id;
        // Each source's range: rows in memory, or partitions the plan reads
        // while it runs, in the source's slot until the batch has run.
        let t = Instant::now();
        let filled = FilledSlots(self.sources.iter().map(|s| Arc::clone(&s.slot)).collect());
        let inputs = match input {
            Some(inputs) => inputs,
            None => read_inputs(&mut self.sources, &entry.sources).await?,
        };
        let rows = fill_slots(&self.sources, inputs, batch_id)?;
        phases.get_batch += ms(t.elapsed());

        // Plan and execute.
        let t = Instant::now();
        for (operator, rule) in &self.operators {
            let next = rule.knows_next().then(|| {
                Arc::new(
                    self.watermarks
                        .next_batch(&self.watermark_planner, rule.delay_ms),
                )
            });
            let watermarks = BatchWatermarks {
                processing_time_ms: entry.timestamp_ms,
                next,
                ..rule.for_batch(entry.watermark_ms, entry.previous_watermark_ms)
            };
            operator.begin_batch(batch_id, watermarks).await?;
        }
        let physical = match physical {
            Some(physical) => physical,
            None => self.planner.plan_batch(batch_id).await?,
        };
        phases.query_planning += ms(t.elapsed());
        let t = Instant::now();
        let schema = physical.schema();
        let output = execute_plan(physical, &self.session, batch_id).await;
        drop(filled);
        phases.execution = ms(t.elapsed());
        Ok(Executed {
            schema,
            output: output?,
            rows,
        })
    }

    /// Writes the batch's output to the sinks, then commits its state as
    /// version `batch_id + 1`; returns the stateful operators' figures.
    async fn commit_output_and_state(
        // `&mut`: a shared `Runner` is not `Send` (its sources are not `Sync`).
        &mut self,
        batch_id: u64,
        schema: arrow::datatypes::SchemaRef,
        output: Vec<arrow::record_batch::RecordBatch>,
        phases: &mut PhaseDurations,
    ) -> Result<Vec<crate::progress::StateOperatorProgress>> {
        // Sinks: idempotent per batch id; written only while this query
        // holds the checkpoint (its lease, on object storage).
        failpoint::hit("before_sink", batch_id);
        self.checkpoint.check_lock()?;
        let t = Instant::now();
        if let Some(late_sink) = &self.late_rows_sink {
            for (operator, _) in &self.operators {
                if let Some((schema, late)) = operator.take_late_rows().await {
                    late_sink.add_batch(batch_id, schema, late).await?;
                }
            }
        }
        self.sink.add_batch(batch_id, schema, output).await?;
        phases.add_batch = ms(t.elapsed());
        failpoint::hit("after_sink", batch_id);

        // State: version batch_id + 1.
        failpoint::hit("before_state_commit", batch_id);
        let t = Instant::now();
        let mut state_operators = Vec::with_capacity(self.operators.len());
        for (operator, _) in &self.operators {
            state_operators.push(operator.commit().await?);
        }
        phases.state_commit = ms(t.elapsed());
        failpoint::hit("after_state_commit", batch_id);
        Ok(state_operators)
    }

    /// Begins the next trigger on a task of its own if the query reads
    /// ahead and the trigger is due as soon as the batch `entry` (begun at
    /// `started`) ends: the task asks the
    /// sources for offsets from the batch's ends and reads what is new.
    /// The sources go with the task until [`Self::join_next_trigger`].
    fn begin_next_trigger(
        &mut self,
        started: Instant,
        entry: &OffsetEntry,
    ) -> Option<BegunTrigger> {
        let due = match self.trigger {
            Trigger::ProcessingTime(interval) => started.elapsed() >= interval,
            Trigger::AvailableNow => true,
            Trigger::Once => false,
        };
        if !self.options.read_ahead || !due || self.shared.stop_requested() {
            return None;
        }
        let seq = self.shared.trigger_started();
        let starts = entry.sources.iter().map(|r| r.end.clone()).collect();
        // Without stateful operators, the next batch does not depend on
        // this one's commit: it may execute too (only its sink waits).
        let executes_in = self.operators.is_empty().then(|| self.session.clone());
        let task = Background::spawn(read_ahead(
            std::mem::take(&mut self.sources),
            starts,
            self.trigger,
            self.planner.kept(),
            executes_in,
            entry.batch_id + 1,
        ));
        Some(BegunTrigger {
            started: Instant::now(),
            seq,
            task,
        })
    }

    /// Waits for the trigger [`Self::begin_next_trigger`] began, and takes
    /// the sources back.
    async fn join_next_trigger(&mut self, begun: BegunTrigger) -> Result<Ahead> {
        let (sources, read) = begun.task.finish().await.map_err(|e| {
            TidemillError::Internal(format!(
                "the next trigger's read stopped ({e}); the query cannot go on without its sources"
            ))
        })?;
        self.sources = sources;
        Ok(Ahead {
            started: begun.started,
            seq: begun.seq,
            read,
        })
    }

    /// Whether a batch without new data should run because the watermark
    /// has closed groups the state holds.
    async fn state_to_close(&mut self) -> bool {
        if !self.options.no_data_batches {
            return false;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (operator, rule) in &self.operators {
            if operator
                .has_closable_state(rule.shift(self.watermarks.current()), now_ms)
                .await
            {
                return true;
            }
        }
        false
    }
}

/// The next trigger, running on a task of its own while the batch before
/// it commits.
struct BegunTrigger {
    started: Instant,
    seq: u64,
    task: Background<(Vec<RunningSource>, Result<TriggerRead>)>,
}

/// Asks `sources` for their latest offsets from `starts` and, when there
/// is new data, reads batch `batch_id`'s input and copies `kept` for it,
/// and executes that copy in `executes_in` if given; gives the sources
/// back with what it read.
async fn read_ahead(
    mut sources: Vec<RunningSource>,
    starts: Vec<Option<Offset>>,
    trigger: Trigger,
    kept: Option<Arc<dyn ExecutionPlan>>,
    executes_in: Option<SessionContext>,
    batch_id: u64,
) -> (Vec<RunningSource>, Result<TriggerRead>) {
    let read = async {
        let timestamp = chrono::Utc::now();
        let mut phases = PhaseDurations::default();
        let t = Instant::now();
        let (ranges, any_new) = latest_ranges(&mut sources, starts, trigger).await?;
        phases.latest_offset = ms(t.elapsed());
        let mut prepared = Prepared::default();
        if any_new {
            let t = Instant::now();
            let input = read_inputs(&mut sources, &ranges).await?;
            phases.get_batch = ms(t.elapsed());
            let t = Instant::now();
            let physical = kept
                .map(|kept| crate::plan::copy_of_kept(kept, batch_id))
                .transpose()?;
            phases.query_planning = ms(t.elapsed());
            prepared = match (executes_in, physical) {
                (Some(session), Some(plan)) => {
                    let t = Instant::now();
                    let filled = FilledSlots(sources.iter().map(|s| Arc::clone(&s.slot)).collect());
                    let rows = fill_slots(&sources, input, batch_id)?;
                    let schema = plan.schema();
                    let output = execute_plan(plan, &session, batch_id).await;
                    drop(filled);
                    phases.execution = ms(t.elapsed());
                    Prepared {
                        executed: Some(Executed {
                            schema,
                            output: output?,
                            rows,
                        }),
                        ..Prepared::default()
                    }
                }
                (_, physical) => Prepared {
                    input: Some(input),
                    physical,
                    executed: None,
                },
            };
        }
        Ok(TriggerRead {
            timestamp,
            ranges,
            any_new,
            prepared,
            phases,
        })
    }
    .await;
    (sources, read)
}

/// Each source's range from its start in `starts` to its latest offset
/// under the trigger's read limit, and whether any source has new data.
async fn latest_ranges(
    sources: &mut [RunningSource],
    starts: Vec<Option<Offset>>,
    trigger: Trigger,
) -> Result<(Vec<SourceRange>, bool)> {
    let mut ranges = Vec::with_capacity(sources.len());
    let mut any_new = false;
    for (s, start) in sources.iter_mut().zip(starts) {
        let limit = match trigger {
            Trigger::Once => ReadLimit::All,
            _ => s.source.default_read_limit(),
        };
        let end = s.source.latest_offset(start.as_ref(), limit).await?;
        if end.is_some() && end != start {
            any_new = true;
        }
        ranges.push(SourceRange {
            description: s.description.clone(),
            end: end.or_else(|| start.clone()),
            start,
        });
    }
    Ok((ranges, any_new))
}

/// Each source's input for its range in `ranges`: rows in memory, or
/// partitions the plan reads while it runs.
async fn read_inputs(
    sources: &mut [RunningSource],
    ranges: &[SourceRange],
) -> Result<Vec<BatchInput>> {
    let mut inputs = Vec::with_capacity(sources.len());
    for (s, range) in sources.iter_mut().zip(ranges) {
        inputs.push(match &range.end {
            Some(end) if range.start.as_ref() != Some(end) => {
                s.source
                    .read_input(range.start.as_ref(), end, s.slot.partitions())
                    .await?
            }
            _ => BatchInput::Rows(Vec::new()),
        });
    }
    Ok(inputs)
}

/// A batch's output, with its input rows per source (counted while the
/// plan read them).
pub(crate) struct Executed {
    schema: arrow::datatypes::SchemaRef,
    output: Vec<arrow::record_batch::RecordBatch>,
    rows: Vec<crate::batch_slot::BatchRows>,
}

/// Puts each source's input for batch `batch_id` into its slot; the
/// slots' row counts.
fn fill_slots(
    sources: &[RunningSource],
    inputs: Vec<BatchInput>,
    batch_id: u64,
) -> Result<Vec<crate::batch_slot::BatchRows>> {
    let mut rows = Vec::with_capacity(sources.len());
    for (s, input) in sources.iter().zip(inputs) {
        rows.push(s.slot.fill(input).map_err(|e| {
            TidemillError::source(
                &s.description,
                format!("batch {batch_id} does not match the source schema: {e}"),
            )
        })?);
    }
    Ok(rows)
}

/// Runs batch `batch_id`'s physical plan in `session` to its output. A
/// panic inside an operator is a bug, but it fails the batch with an
/// error naming it, not the process.
async fn execute_plan(
    physical: Arc<dyn ExecutionPlan>,
    session: &SessionContext,
    batch_id: u64,
) -> Result<Vec<arrow::record_batch::RecordBatch>> {
    std::panic::AssertUnwindSafe(datafusion::physical_plan::collect(
        physical,
        session.task_ctx(),
    ))
    .catch_unwind()
    .await
    .unwrap_or_else(|panic| {
        Err(datafusion::error::DataFusionError::Execution(format!(
            "an operator panicked: {}",
            crate::error::panic_message(&*panic)
        )))
    })
    .map_err(|e| TidemillError::from_execution(format!("executing batch {batch_id}"), e))
}
