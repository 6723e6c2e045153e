//! The Prometheus text exposition of the monitored queries (format 0.0.4).
//!
//! Every series has a `query` label (the query's name, or its id). Per
//! query:
//!
//! | metric | type | what |
//! |---|---|---|
//! | `tidemill_query_up` | gauge | 1 while the query runs, 0 once stopped |
//! | `tidemill_batches_total` | counter | batches committed |
//! | `tidemill_input_rows_total` | counter | rows read from the sources |
//! | `tidemill_output_rows_total` | counter | rows written to the sink |
//! | `tidemill_input_rows_per_second` | gauge | the last batch's input rate |
//! | `tidemill_processed_rows_per_second` | gauge | the last batch's processing rate |
//! | `tidemill_batch_duration_seconds` | histogram | batch durations |
//! | `tidemill_batch_phase_seconds_total` | counter | time per phase (`phase` label) |
//! | `tidemill_watermark_seconds` | gauge | the last batch's watermark (Unix time) |
//! | `tidemill_event_time_gap_seconds` | gauge | max event time less the watermark |
//! | `tidemill_state_rows` | gauge | state rows per operator (`operator`, `kind`) |
//! | `tidemill_state_memory_bytes` | gauge | state memory per operator |
//! | `tidemill_late_rows_dropped_total` | counter | rows dropped as late |
//! | `tidemill_rows_without_event_time_total` | counter | rows left out for a null event time |
//! | `tidemill_query_failures_total` | counter | runs that ended with an error |
//! | `tidemill_batch_retries_total` | counter | failed attempts retried after a transient error |
//! | `tidemill_source_lag_records` | gauge | per source partition (`source`, `partition`), records behind its latest data after the last batch (Kafka) |

use std::fmt::Write;

use tidemill_engine::PhaseDurations;

use super::{DURATION_BUCKETS, QueryView, Status};

/// A batch's phases, with Prometheus-friendly names, in milliseconds.
pub fn phases(d: &PhaseDurations) -> [(&'static str, f64); 8] {
    [
        ("latest_offset", d.latest_offset),
        ("offset_log", d.wal_commit),
        ("read", d.get_batch),
        ("plan", d.query_planning),
        ("execute", d.execution),
        ("sink", d.add_batch),
        ("state_commit", d.state_commit),
        ("commit", d.commit_offsets),
    ]
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Milliseconds since the epoch of an RFC 3339 time, as seconds.
fn epoch_seconds(time: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// One metric family: its help, type and samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

/// The exposition of `queries`.
pub fn render(queries: &[QueryView]) -> String {
    let mut families: Vec<Family> = [
        (
            "tidemill_query_up",
            "gauge",
            "1 while the query runs, 0 once it stopped.",
        ),
        ("tidemill_batches_total", "counter", "Batches committed."),
        (
            "tidemill_input_rows_total",
            "counter",
            "Rows read from the query's sources.",
        ),
        (
            "tidemill_output_rows_total",
            "counter",
            "Rows written to the query's sink.",
        ),
        (
            "tidemill_input_rows_per_second",
            "gauge",
            "Input rate of the last batch.",
        ),
        (
            "tidemill_processed_rows_per_second",
            "gauge",
            "Processing rate of the last batch.",
        ),
        (
            "tidemill_batch_duration_seconds",
            "histogram",
            "Batch durations, trigger to commit.",
        ),
        (
            "tidemill_batch_phase_seconds_total",
            "counter",
            "Time spent per batch phase.",
        ),
        (
            "tidemill_watermark_seconds",
            "gauge",
            "The last batch's watermark, in Unix time.",
        ),
        (
            "tidemill_event_time_gap_seconds",
            "gauge",
            "The last batch's max event time less its watermark.",
        ),
        (
            "tidemill_state_rows",
            "gauge",
            "State rows held per stateful operator.",
        ),
        (
            "tidemill_state_memory_bytes",
            "gauge",
            "State memory per stateful operator.",
        ),
        (
            "tidemill_late_rows_dropped_total",
            "counter",
            "Rows dropped because the watermark had passed them.",
        ),
        (
            "tidemill_rows_without_event_time_total",
            "counter",
            "Rows left out for a null event time.",
        ),
        (
            "tidemill_query_failures_total",
            "counter",
            "Query runs that ended with an error.",
        ),
        (
            "tidemill_batch_retries_total",
            "counter",
            "Failed attempts of batches retried after a transient error.",
        ),
        (
            "tidemill_source_lag_records",
            "gauge",
            "Records (or offsets) each source partition was behind its latest data after the last batch.",
        ),
    ]
    .into_iter()
    .map(|(name, kind, help)| Family {
        name,
        kind,
        help,
        samples: Vec::new(),
    })
    .collect();
    let mut add = |name: &str, labels: String, value: f64| {
        let family = families
            .iter_mut()
            .find(|f| name == f.name || (f.kind == "histogram" && name.starts_with(f.name)))
            .expect("a declared family");
        family.samples.push((format!("{name}{{{labels}}}"), value));
    };
    for query in queries {
        let q = format!("query=\"{}\"", escape_label(query.label()));
        let t = &query.totals;
        let up = matches!(query.status, Status::Active | Status::Idle);
        add("tidemill_query_up", q.clone(), f64::from(u8::from(up)));
        add("tidemill_batches_total", q.clone(), t.batches as f64);
        add("tidemill_input_rows_total", q.clone(), t.input_rows as f64);
        add(
            "tidemill_output_rows_total",
            q.clone(),
            t.output_rows as f64,
        );
        add(
            "tidemill_late_rows_dropped_total",
            q.clone(),
            t.late_rows as f64,
        );
        add(
            "tidemill_rows_without_event_time_total",
            q.clone(),
            t.rows_without_event_time as f64,
        );
        add(
            "tidemill_query_failures_total",
            q.clone(),
            t.failures as f64,
        );
        add("tidemill_batch_retries_total", q.clone(), t.retries as f64);
        for (bucket, bound) in t.duration_buckets.iter().zip(DURATION_BUCKETS) {
            add(
                "tidemill_batch_duration_seconds_bucket",
                format!("{q},le=\"{bound}\""),
                *bucket as f64,
            );
        }
        add(
            "tidemill_batch_duration_seconds_bucket",
            format!("{q},le=\"+Inf\""),
            t.batches as f64,
        );
        add(
            "tidemill_batch_duration_seconds_sum",
            q.clone(),
            t.duration_sum_seconds,
        );
        add(
            "tidemill_batch_duration_seconds_count",
            q.clone(),
            t.batches as f64,
        );
        for (phase, seconds) in &t.phase_seconds {
            add(
                "tidemill_batch_phase_seconds_total",
                format!("{q},phase=\"{}\"", escape_label(phase)),
                *seconds,
            );
        }
        let Some(last) = query.recent.back() else {
            continue;
        };
        add(
            "tidemill_input_rows_per_second",
            q.clone(),
            last.input_rows_per_second,
        );
        add(
            "tidemill_processed_rows_per_second",
            q.clone(),
            last.processed_rows_per_second,
        );
        let watermark = last.event_time.watermark.as_deref().and_then(epoch_seconds);
        let max = last.event_time.max.as_deref().and_then(epoch_seconds);
        if let Some(watermark) = watermark {
            add("tidemill_watermark_seconds", q.clone(), watermark);
            if let Some(max) = max {
                add(
                    "tidemill_event_time_gap_seconds",
                    q.clone(),
                    max - watermark,
                );
            }
        }
        for (i, source) in last.sources.iter().enumerate() {
            for (partition, lag) in &source.lag {
                add(
                    "tidemill_source_lag_records",
                    format!(
                        "{q},source=\"{i}\",partition=\"{}\"",
                        escape_label(partition)
                    ),
                    *lag as f64,
                );
            }
        }
        for (n, state) in last.state_operators.iter().enumerate() {
            let labels = format!(
                "{q},operator=\"{n}\",kind=\"{}\"",
                escape_label(&state.operator_name)
            );
            add(
                "tidemill_state_rows",
                labels.clone(),
                state.num_rows_total as f64,
            );
            add(
                "tidemill_state_memory_bytes",
                labels,
                state.memory_used_bytes as f64,
            );
        }
    }
    let mut text = String::new();
    for family in families {
        let _ = writeln!(text, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(text, "# TYPE {} {}", family.name, family.kind);
        for (series, value) in family.samples {
            let _ = writeln!(text, "{series} {value}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tidemill_engine::QueryProgress;

    use super::*;
    use crate::monitor::Totals;

    /// A query whose last batch left a Kafka source's two partitions 24
    /// and 8 records behind.
    fn view(name: &str) -> QueryView {
        let progress: QueryProgress = serde_json::from_value(serde_json::json!({
            "id": "q1", "run_id": "r1", "name": name, "batch_id": 3,
            "timestamp": "2024-01-01T10:00:00Z", "recovered": false,
            "num_input_rows": 8, "num_output_rows": 8,
            "input_rows_per_second": 80.0, "processed_rows_per_second": 800.0,
            "duration_ms": {"latest_offset": 0.1, "wal_commit": 0.1, "get_batch": 1.0,
                "query_planning": 1.0, "execution": 2.0, "add_batch": 1.0,
                "state_commit": 0.0, "commit_offsets": 0.5, "trigger_execution": 5.7},
            "event_time": {"watermark": "2024-01-01T10:00:00Z", "max": "2024-01-01T10:00:10Z"},
            "sources": [{"description": "KafkaSource[h:9092: topics t]", "start_offset": null,
                "end_offset": null, "num_input_rows": 8, "lag": {"t/0": 24, "t/1": 8}}],
            "sink": {"description": "MemorySink", "num_output_rows": 8}
        }))
        .unwrap();
        QueryView {
            id: "q1".into(),
            run_id: "r1".into(),
            name: Some(name.into()),
            status: Status::Active,
            batch_id: Some(3),
            error: None,
            started: "2024-01-01T10:00:00Z".into(),
            totals: Totals {
                batches: 1,
                duration_buckets: vec![0; DURATION_BUCKETS.len()],
                ..Totals::default()
            },
            recent: VecDeque::from([progress]),
        }
    }

    #[test]
    fn lag_watermark_and_gap_come_from_the_last_batch() {
        let text = render(&[view("orders")]);
        assert!(
            text.contains(
                "tidemill_source_lag_records{query=\"orders\",source=\"0\",partition=\"t/0\"} 24"
            ),
            "{text}"
        );
        assert!(text.contains("partition=\"t/1\"} 8"), "{text}");
        assert!(
            text.contains("tidemill_event_time_gap_seconds{query=\"orders\"} 10"),
            "{text}"
        );
        assert!(text.contains("# TYPE tidemill_source_lag_records gauge"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let text = render(&[view("say \"hi\"")]);
        assert!(text.contains("query=\"say \\\"hi\\\"\""), "{text}");
    }
}
