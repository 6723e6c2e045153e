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
