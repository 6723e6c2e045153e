//! The text form of a [`StatusReport`], as `tidemill status` prints it.

use std::fmt::{self, Display, Formatter, Write};

use tidemill_engine::Offset;

use super::{LockState, OperatorReport, QueryReport, SourceLag, StatusReport};

impl Display for StatusReport {
    /// One block per query:
    ///
    /// ```text
    /// per_minute  /data/chk/per_minute
    ///   query id        0b6f…
    ///   running         yes (process 4242 holds the checkpoint)
    ///   last committed  batch 7 at 2024-05-01T10:00:00.123Z
    ///   watermark       2024-01-01T10:03:35.000Z
    ///   in flight       none
    ///   source 0        FileSource[json: file:///data/trades]
    ///                   committed offset 8
    ///                   latest offset 10: 2 files behind
    ///   operator 0      StreamingAggregate[…]
    ///                   12 rows in 5 of 16 partitions (version 8, 3.1 KiB to load); 17 files, 20.4 KiB on disk
    /// ```
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, query) in self.queries.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write_query(f, query)?;
        }
        Ok(())
    }
}

/// Width of the labels.
const LABEL: usize = 16;

fn line(f: &mut Formatter<'_>, label: &str, text: impl Display) -> fmt::Result {
    writeln!(f, "  {label:<LABEL$}{text}")
}

fn more(f: &mut Formatter<'_>, text: impl Display) -> fmt::Result {
    writeln!(f, "  {:<LABEL$}{text}", "")
}

fn write_query(f: &mut Formatter<'_>, q: &QueryReport) -> fmt::Result {
    writeln!(f, "{}  {}", q.name, q.path)?;
    line(f, "query id", &q.query_id)?;
    line(
        f,
        "created",
        format!("{} by Tidemill {}", q.created_at, q.engine_version),
    )?;
    line(f, "sink", &q.sink)?;
    if let Some(mode) = q.output_mode {
        line(f, "output mode", mode)?;
    }
    line(
        f,
        "running",
        match q.lock {
            LockState::Held { pid: Some(pid) } => {
                format!("yes (process {pid} holds the checkpoint)")
            }
            LockState::Held { pid: None } => "yes (a process holds the checkpoint)".into(),
            LockState::Free => "no".into(),
            LockState::Unknown => "unknown (the checkpoint's lock cannot be inspected here)".into(),
        },
    )?;
    match &q.last_committed {
        Some(batch) => {
            line(
                f,
                "last committed",
                format!(
                    "batch {} at {}{}",
                    batch.batch_id,
                    batch.committed_at,
                    ago(batch.committed_at_ms)
                ),
            )?;
            line(
                f,
                "watermark",
                batch
                    .watermark
                    .as_deref()
                    .unwrap_or("none (no watermark, or no event time seen yet)"),
            )?;
        }
        None => line(f, "last committed", "none: no batch has committed yet")?,
    }
    match &q.in_flight {
        None => line(f, "in flight", "none")?,
        Some(batch) => {
            let why = match q.lock {
                LockState::Held { .. } => "running now",
                LockState::Free => "not committed; re-run with these ranges on restart",
                LockState::Unknown => {
                    "not committed: running now, or re-run with these ranges on restart"
                }
            };
            line(
                f,
                "in flight",
                format!(
                    "batch {}, planned at {}{} ({why})",
                    batch.batch_id,
                    batch.planned_at,
                    ago(batch.planned_at_ms)
                ),
            )?;
            if let Some(watermark) = &batch.watermark {
                more(f, format!("runs with watermark {watermark}"))?;
            }
            for range in &batch.ranges {
                more(
                    f,
                    format!(
                        "source {}: after {} up to {}",
                        range.index,
                        offset(range.start.as_ref()),
                        offset(range.end.as_ref())
                    ),
                )?;
            }
        }
    }
    for source in &q.sources {
        line(f, &format!("source {}", source.index), &source.description)?;
        more(
            f,
            format!("committed offset {}", offset(source.committed.as_ref())),
        )?;
        if let Some(lag) = &source.lag {
            write_lag(f, lag)?;
        }
    }
    if q.operators.is_empty() {
        line(f, "state", "none (no stateful operator)")?;
    }
    for operator in &q.operators {
        write_operator(f, operator)?;
    }
    Ok(())
}

fn write_lag(f: &mut Formatter<'_>, lag: &SourceLag) -> fmt::Result {
    let mut text = format!("latest offset {}", offset(lag.latest.as_ref()));
    if let Some(behind) = lag.behind {
        let _ = write!(text, ": {behind} {} behind", lag.unit);
    }
    more(f, text)?;
    for p in &lag.partitions {
        more(
            f,
            format!(
                "  {}: committed {}, latest {}, {}",
                p.partition,
                p.committed.map_or("none".into(), |c| c.to_string()),
                p.latest,
                p.behind
                    .map_or("lag unknown".into(), |b| format!("{b} {} behind", lag.unit))
            ),
        )?;
    }
    if let Some(note) = &lag.note {
        more(f, format!("({note})"))?;
    }
    Ok(())
}

fn write_operator(f: &mut Formatter<'_>, operator: &OperatorReport) -> fmt::Result {
    line(
        f,
        &format!("operator {}", operator.number),
        operator
            .description
            .as_deref()
            .unwrap_or("(not described in the metadata)"),
    )?;
    if operator.stores.is_empty() {
        more(f, "no state yet")?;
    }
    for store in &operator.stores {
        let side = store
            .side
            .as_ref()
            .map_or(String::new(), |s| format!("{s}: "));
        more(
            f,
            format!(
                "{side}{} rows in {} of {} partitions (version {}, {} to load); {} files, {} on disk",
                store.rows,
                store.partitions_with_rows,
                store.partitions,
                store.version,
                bytes(store.version_bytes),
                store.files,
                bytes(store.bytes)
            ),
        )?;
        if !store.key_columns.is_empty() {
            more(
                f,
                format!(
                    "{}keyed by {}; values {}",
                    " ".repeat(side.len()),
                    store.key_columns.join(", "),
                    store.value_columns.join(", ")
                ),
            )?;
        }
    }
    Ok(())
}

fn offset(offset: Option<&Offset>) -> String {
    offset.map_or_else(|| "none".into(), ToString::to_string)
}

/// ` (12 s ago)`, or nothing for a time in the future.
fn ago(ms: i64) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    let seconds = (now - ms) / 1000;
    match seconds {
        s if s < 0 => String::new(),
        s if s < 120 => format!(" ({s} s ago)"),
        s if s < 7200 => format!(" ({} min ago)", s / 60),
        s if s < 2 * 86_400 => format!(" ({} h ago)", s / 3600),
        s => format!(" ({} days ago)", s / 86_400),
    }
}

/// `812 B`, `3.1 KiB`, `20.4 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
