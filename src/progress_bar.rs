//! The progress bar of `tidemill run --trigger available-now` on a
//! terminal: per query, how much of the backlog the sources held at start
//! is done (files, records or offsets), rows read, rows per second and the
//! time left, redrawn in place as batches commit.

use std::io::Write;
use std::time::{Duration, Instant};

use tidemill::{Offset, QueryProgress, SourceBacklog};

/// An offset's size: the number it is, or the sum of the numbers in it
/// (Kafka's offsets per topic and partition); `None` if it holds none.
pub fn size(offset: &Offset) -> Option<u64> {
    fn sum(value: &serde_json::Value) -> Option<u64> {
        match value {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::Object(map) => map.values().filter_map(sum).reduce(|a, b| a + b),
            serde_json::Value::Array(items) => items.iter().filter_map(sum).reduce(|a, b| a + b),
            _ => None,
        }
    }
    sum(&offset.0)
}

/// What a backlog is counted in, by its source.
fn unit(description: &str) -> &'static str {
    if description.starts_with("FileSource") {
        "files"
    } else if description.starts_with("KafkaSource") {
        "records"
    } else {
        "offsets"
    }
}

/// `(done, total, unit)` of a query's backlog after its `latest` batch.
pub fn done_of(
    backlog: &[SourceBacklog],
    latest: Option<&QueryProgress>,
) -> Option<(u64, u64, &'static str)> {
    let mut done = 0;
    let mut total = 0;
    let mut units = Vec::new();
    for (i, source) in backlog.iter().enumerate() {
        let start = source.start.as_ref().and_then(size).unwrap_or(0);
        let target = size(source.target.as_ref()?)?;
        let now = latest
            .and_then(|p| p.sources.get(i))
            .and_then(|s| s.end_offset.as_ref())
            .and_then(size)
            .unwrap_or(start);
        total += target.saturating_sub(start);
        done += now.saturating_sub(start).min(target.saturating_sub(start));
        units.push(unit(&source.description));
    }
    units.dedup();
    let unit = match units.as_slice() {
        [one] => one,
        _ => "offsets",
    };
    Some((done, total, unit))
}

/// One query's bar: `name [#####-----]  50% 2/4 files | 120 rows | 3000 rows/s | 1.2 s left`.
pub fn line(name: &str, done: u64, total: u64, unit: &str, rows: u64, elapsed: Duration) -> String {
    const WIDTH: usize = 24;
    let fraction = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let filled = ((fraction * WIDTH as f64).round() as usize).min(WIDTH);
    let rate = if elapsed.is_zero() {
        0.0
    } else {
        rows as f64 / elapsed.as_secs_f64()
    };
    let left = if done == 0 || done >= total {
        String::new()
    } else {
        let seconds = elapsed.as_secs_f64() * (total - done) as f64 / done as f64;
        format!(" | {seconds:.1} s left")
    };
    format!(
        "{name} [{}{}] {:>3.0}% {done}/{total} {unit} | {rows} rows | {rate:.0} rows/s{left}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        fraction * 100.0
    )
}

/// Bars for several queries, redrawn in place on a terminal.
pub struct Bars {
    started: Instant,
    drawn: usize,
}

impl Bars {
    /// Bars starting now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            drawn: 0,
        }
    }

    /// Draws `lines` over the previous ones.
    pub fn draw(&mut self, lines: &[String]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            write!(out, "\x1b[{}A", self.drawn)?;
        }
        for line in lines {
            writeln!(out, "\r\x1b[2K{line}")?;
        }
        self.drawn = lines.len();
        out.flush()
    }

    /// Time since the bars started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_of_numbers_and_partition_maps() {
        assert_eq!(size(&Offset::from_u64(7)), Some(7));
        let kafka = Offset(serde_json::json!({"trades": {"0": 5, "1": 7}}));
        assert_eq!(size(&kafka), Some(12));
        assert_eq!(size(&Offset(serde_json::json!("x"))), None);
    }

    #[test]
    fn a_bar_says_the_share_done_and_the_time_left() {
        let text = line("q", 1, 4, "files", 100, Duration::from_secs(2));
        assert!(
            text.starts_with("q [######------------------]  25% 1/4 files | 100 rows | 50 rows/s"),
            "{text}"
        );
        assert!(text.ends_with("| 6.0 s left"), "{text}");
        let done = line("q", 4, 4, "files", 400, Duration::from_secs(2));
        assert!(
            done.contains("100% 4/4 files") && !done.contains("left"),
            "{done}"
        );
    }
}
