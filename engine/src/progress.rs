//! What a query reports after each batch.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Offset;
use crate::watermark::format_millis;

/// The report of one micro-batch, as Spark's `StreamingQueryProgress`.
///
/// Serializes to JSON (`serde_json::to_string(&progress)`); the engine also
/// logs a one-line summary of each batch through `tracing` at INFO level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryProgress {
    /// The query's id, stable across restarts (kept in the checkpoint).
    pub id: String,
    /// This run's id, new at every start.
    pub run_id: String,
    /// The query's name, if given.
    pub name: Option<String>,
    /// The batch id.
    pub batch_id: u64,
    /// When the trigger that ran the batch fired (RFC 3339, UTC).
    pub timestamp: String,
    /// Whether this batch re-ran a batch left uncommitted by a crash.
    pub recovered: bool,
    /// Rows read from all sources.
    pub num_input_rows: u64,
    /// Rows written to the sink.
    pub num_output_rows: u64,
    /// Input rows per second of wall time since the previous batch started
    /// (the rate at which data arrived).
    pub input_rows_per_second: f64,
    /// Input rows per second of this batch's own duration.
    pub processed_rows_per_second: f64,
    /// Time spent in each phase.
    pub duration_ms: PhaseDurations,
    /// Event time, for queries with a watermark.
    pub event_time: EventTimeProgress,
    /// Per source: range read and rows.
    pub sources: Vec<SourceProgress>,
    /// The sink.
    pub sink: SinkProgress,
    /// Per stateful operator, by operator number (aggregation,
    /// deduplication, stream–stream join), its state after the batch;
    /// empty for a stateless query.
    #[serde(default)]
    pub state_operators: Vec<StateOperatorProgress>,
    /// Attempts of this trigger that failed with a transient error and
    /// were retried before it committed (see `RetryPolicy`).
    #[serde(default)]
    pub num_retries: u64,
}

/// Milliseconds spent in each phase of a batch (fractions kept: at short
/// trigger intervals, per-batch overhead is well under a millisecond).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseDurations {
    /// Asking the sources for their latest offsets.
    pub latest_offset: f64,
    /// Writing the offset log entry (the write-ahead log).
    pub wal_commit: f64,
    /// Reading the batch's ranges from the sources.
    pub get_batch: f64,
    /// Turning the plan into a physical plan for this batch.
    pub query_planning: f64,
    /// Executing the plan.
    pub execution: f64,
    /// Writing and committing the output in the sink.
    pub add_batch: f64,
    /// Committing the state of stateful operators.
    #[serde(default)]
    pub state_commit: f64,
    /// Writing the commit log entry and committing the sources.
    pub commit_offsets: f64,
    /// The whole trigger, start to end.
    pub trigger_execution: f64,
}

/// Event time in a batch (RFC 3339 timestamps, UTC), as Spark's
/// `eventTime` progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventTimeProgress {
    /// The watermark the batch ran with; `None` before any event time was
    /// seen or without a watermark.
    pub watermark: Option<String>,
    /// The largest event time in the batch's rows.
    pub max: Option<String>,
}

/// A stateful operator's state after a batch, as Spark's
/// `StateOperatorProgress`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateOperatorProgress {
    /// What the operator is: `aggregate`, `dedupe` or
    /// `symmetricHashJoin` (Spark's names).
    pub operator_name: String,
    /// Groups (state rows) held after the batch.
    pub num_rows_total: u64,
    /// State rows written by the batch.
    pub num_rows_updated: u64,
    /// State rows removed by the batch (evicted by the watermark).
    pub num_rows_removed: u64,
    /// Estimated bytes of memory the state holds.
    pub memory_used_bytes: u64,
    /// How long committing the state took, in milliseconds.
    pub commit_time_ms: u64,
    /// Input rows dropped because the watermark had already closed their
    /// group (sent to the late-rows sink instead, if the query has one).
    pub num_rows_dropped_by_watermark: u64,
    /// Input rows left out because their event time is null (such a row is
    /// in no window, as Spark's `window()` has it; sent to the late-rows
    /// sink too, if the query has one).
    #[serde(default)]
    pub num_rows_without_event_time: u64,
    /// Figures of the operator's own, as Spark's `customMetrics` (a
    /// stateful processor's timers registered, deleted and fired, values
    /// removed by their time to live, rows per state variable).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub custom_metrics: std::collections::BTreeMap<String, u64>,
}

/// One source's part in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// The source's description.
    pub description: String,
    /// Where the batch started reading (exclusive); `None` for the first batch.
    pub start_offset: Option<Offset>,
    /// Where it stopped (inclusive).
    pub end_offset: Option<Offset>,
    /// Rows read.
    pub num_input_rows: u64,
    /// How far behind its latest data each partition of the source was
    /// after the batch (for Kafka: records, by `topic/partition`), where
    /// the source can say.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lag: std::collections::BTreeMap<String, u64>,
    /// Source-specific figures of the batch, by name (Spark's
    /// `SourceProgress.metrics`), where the source has any: the Kafka
    /// source says whether the batch's ends came from the brokers or from
    /// records already fetched (`ends_from`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<String, String>,
}

/// The sink's part in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkProgress {
    /// The sink's description.
    pub description: String,
    /// Rows written.
    pub num_output_rows: u64,
}

/// What the trigger loop measured of one batch, for
/// [`QueryProgress::of_batch`].
#[derive(Debug)]
pub(crate) struct BatchFigures {
    pub batch_id: u64,
    /// When the trigger that ran the batch fired.
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub recovered: bool,
    pub num_input_rows: u64,
    pub num_output_rows: u64,
    /// The whole trigger, start to end.
    pub elapsed: Duration,
    /// From the previous trigger's start to this one's (`elapsed` for the
    /// first).
    pub since_last_trigger: Duration,
    /// The phases' durations; `trigger_execution` is set from `elapsed`.
    pub phases: PhaseDurations,
    /// The watermark the batch ran with.
    pub watermark_ms: Option<i64>,
    /// The largest event time in the batch's rows.
    pub max_event_time_ms: Option<i64>,
    pub sources: Vec<SourceProgress>,
    pub sink_description: String,
    pub state_operators: Vec<StateOperatorProgress>,
    /// Failed attempts retried before the batch committed.
    pub num_retries: u64,
}

impl QueryProgress {
    /// The report of a batch of query `id` (run `run_id`, named `name`).
    pub(crate) fn of_batch(
        id: &str,
        run_id: &str,
        name: Option<&str>,
        batch: BatchFigures,
    ) -> Self {
        let rate = |d: Duration| {
            if d.is_zero() {
                0.0
            } else {
                batch.num_input_rows as f64 / d.as_secs_f64()
            }
        };
        let mut phases = batch.phases;
        phases.trigger_execution = batch.elapsed.as_secs_f64() * 1000.0;
        Self {
            id: id.to_string(),
            run_id: run_id.to_string(),
            name: name.map(str::to_string),
            batch_id: batch.batch_id,
            timestamp: batch
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            recovered: batch.recovered,
            num_input_rows: batch.num_input_rows,
            num_output_rows: batch.num_output_rows,
            input_rows_per_second: rate(batch.since_last_trigger),
            processed_rows_per_second: rate(batch.elapsed),
            duration_ms: phases,
            event_time: EventTimeProgress {
                watermark: batch.watermark_ms.map(format_millis),
                max: batch.max_event_time_ms.map(format_millis),
            },
            sources: batch.sources,
            sink: SinkProgress {
                description: batch.sink_description,
                num_output_rows: batch.num_output_rows,
            },
            state_operators: batch.state_operators,
            num_retries: batch.num_retries,
        }
    }

    /// The one-line summary logged per batch.
    pub fn summary(&self) -> String {
        format!(
            "batch {} of query {}: {} rows in, {} rows out, {:.0} rows/s processed, {:.1} ms \
             (offsets {:.1}, wal {:.1}, read {:.1}, plan {:.1}, exec {:.1}, sink {:.1}, commit {:.1}){}{}{}",
            self.batch_id,
            self.name.as_deref().unwrap_or(&self.id),
            self.num_input_rows,
            self.num_output_rows,
            self.processed_rows_per_second,
            self.duration_ms.trigger_execution,
            self.duration_ms.latest_offset,
            self.duration_ms.wal_commit,
            self.duration_ms.get_batch,
            self.duration_ms.query_planning,
            self.duration_ms.execution,
            self.duration_ms.add_batch,
            self.duration_ms.commit_offsets,
            match &self.event_time.watermark {
                Some(w) => format!(", watermark {w}"),
                None => String::new(),
            },
            self.state_operators
                .iter()
                .map(|s| format!(
                    ", {} state {} rows ({} updated, {} removed, {} late dropped{})",
                    s.operator_name,
                    s.num_rows_total,
                    s.num_rows_updated,
                    s.num_rows_removed,
                    s.num_rows_dropped_by_watermark,
                    match s.num_rows_without_event_time {
                        0 => String::new(),
                        n => format!(", {n} without event time"),
                    }
                ))
                .collect::<String>(),
            if self.recovered { " [recovered]" } else { "" },
        )
    }
}

/// What a query is doing right now, as Spark's `StreamingQueryStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryStatus {
    /// A human-readable description, e.g. "Waiting for data to arrive".
    pub message: String,
    /// Whether the last trigger found new data.
    pub is_data_available: bool,
    /// Whether a trigger is running now.
    pub is_trigger_active: bool,
    /// Whether the query has stopped (finished, stopped or failed).
    pub is_terminated: bool,
}
