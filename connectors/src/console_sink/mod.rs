//! Pretty-printed batches on standard output, like Spark's console sink.

mod connector;

pub(crate) use connector::ConsoleConnector;

use std::io::Write;
use std::sync::Mutex;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches_with_schema;
use async_trait::async_trait;
use tidemill_engine::{Result, Sink, TidemillError};

/// The number of rows printed per batch unless set otherwise.
const DEFAULT_NUM_ROWS: usize = 20;

/// Prints every micro-batch as a table, for debugging and demos.
///
/// Each batch is printed as Spark's console sink does:
///
/// ```text
/// -------------------------------------------
/// Batch: 3
/// -------------------------------------------
/// +----+-------+
/// | id | name  |
/// +----+-------+
/// | 1  | alpha |
/// +----+-------+
/// ```
///
/// followed by `only showing top 20 of 35 rows (15 omitted)` when the batch
/// has more rows than [`ConsoleSink::num_rows`] allows. An empty batch is
/// printed as its header and column names. A sink given a name with
/// [`ConsoleSink::name`] says it in the header, so that the tables of
/// several console sinks sharing standard output can be told apart:
/// `Batch: 3 (sink per_minute)`.
///
/// The sink is idempotent within a process: it remembers the highest batch
/// id it printed and ignores calls with that id or a lower one. (A batch
/// re-run after a restart is printed again; console output is not
/// durable.)
///
/// ```
/// use tidemill_connectors::ConsoleSink;
///
/// let sink = ConsoleSink::new().num_rows(50).name("per_minute");
/// # let _ = sink;
/// ```
pub struct ConsoleSink {
    num_rows: usize,
    name: Option<String>,
    out: Mutex<Output>,
}

struct Output {
    writer: Box<dyn Write + Send>,
    /// The highest batch id printed so far.
    last_printed: Option<u64>,
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSink")
            .field("num_rows", &self.num_rows)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for ConsoleSink {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleSink {
    /// A sink printing to standard output, up to 20 rows per batch.
    pub fn new() -> Self {
        Self::with_writer(Box::new(std::io::stdout()))
    }

    /// A sink printing to `writer` instead of standard output (a file, a
    /// buffer in a test), up to 20 rows per batch.
    pub fn with_writer(writer: Box<dyn Write + Send>) -> Self {
        Self {
            num_rows: DEFAULT_NUM_ROWS,
            name: None,
            out: Mutex::new(Output {
                writer,
                last_printed: None,
            }),
        }
    }

    /// Prints at most `n` rows of each batch (default 20) and says how many
    /// were left out.
    pub fn num_rows(mut self, n: usize) -> Self {
        self.num_rows = n;
        self
    }

    /// Names the sink in each batch's header: `Batch: 3 (sink <name>)`
    /// instead of `Batch: 3` (a SQL pipeline passes its `CREATE SINK`
    /// name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The text printed for one batch.
    fn render(&self, batch_id: u64, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String> {
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let mut shown = Vec::new();
        let mut remaining = self.num_rows;
        for batch in batches {
            if remaining == 0 {
                break;
            }
            let take = remaining.min(batch.num_rows());
            if take > 0 {
                shown.push(batch.slice(0, take));
                remaining -= take;
            }
        }
        let table = pretty_format_batches_with_schema(schema.clone(), &shown).map_err(|e| {
            TidemillError::sink(
                self.description(),
                format!("batch {batch_id}: cannot format rows: {e}"),
            )
        })?;
        let rule = "-------------------------------------------";
        let header = match &self.name {
            Some(name) => format!("Batch: {batch_id} (sink {name})"),
            None => format!("Batch: {batch_id}"),
        };
        let mut text = format!("{rule}\n{header}\n{rule}\n{table}\n");
        if total > self.num_rows {
            text.push_str(&format!(
                "only showing top {} of {total} rows ({} omitted)\n",
                self.num_rows,
                total - self.num_rows
            ));
        }
        text.push('\n');
        Ok(text)
    }
}

#[async_trait]
impl Sink for ConsoleSink {
    fn description(&self) -> String {
        match &self.name {
            Some(name) => format!("ConsoleSink[{name}]"),
            None => "ConsoleSink".to_string(),
        }
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| TidemillError::sink(self.description(), "internal lock poisoned"))?;
        if out.last_printed.is_some_and(|last| batch_id <= last) {
            return Ok(());
        }
        let text = self.render(batch_id, &schema, &batches)?;
        out.writer
            .write_all(text.as_bytes())
            .and_then(|()| out.writer.flush())
            .map_err(|e| {
                TidemillError::sink(
                    self.description(),
                    format!("batch {batch_id}: cannot print: {e}"),
                )
            })?;
        out.last_printed = Some(batch_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{Observed, SinkHarness, check_sink};
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;
    use std::sync::Arc;

    /// A writer whose output the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
        let names: Vec<String> = ids.clone().map(|i| format!("name{i}")).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids.collect::<Vec<_>>())),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn prints_header_and_rows() {
        let out = Shared::default();
        let sink = ConsoleSink::with_writer(Box::new(out.clone()));
        sink.add_batch(0, schema(), vec![batch(1..3), batch(3..4)])
            .await
            .unwrap();
        let expected = "\
-------------------------------------------
Batch: 0
-------------------------------------------
+----+-------+
| id | name  |
+----+-------+
| 1  | name1 |
| 2  | name2 |
| 3  | name3 |
+----+-------+

";
        assert_eq!(out.text(), expected);
    }

    #[tokio::test]
    async fn a_named_sink_says_its_name_in_the_header() {
        let out = Shared::default();
        let sink = ConsoleSink::with_writer(Box::new(out.clone())).name("per_minute");
        sink.add_batch(3, schema(), vec![batch(1..2)])
            .await
            .unwrap();
        let expected = "\
-------------------------------------------
Batch: 3 (sink per_minute)
-------------------------------------------
+----+-------+
| id | name  |
+----+-------+
| 1  | name1 |
+----+-------+

";
        assert_eq!(out.text(), expected);
    }

    #[tokio::test]
    async fn duplicate_and_older_batch_ids_print_nothing() {
        let out = Shared::default();
        let sink = ConsoleSink::with_writer(Box::new(out.clone()));
        sink.add_batch(3, schema(), vec![batch(1..2)])
            .await
            .unwrap();
        let after_first = out.text();
        sink.add_batch(3, schema(), vec![batch(7..8)])
            .await
            .unwrap();
        sink.add_batch(2, schema(), vec![batch(8..9)])
            .await
            .unwrap();
        assert_eq!(out.text(), after_first);
        sink.add_batch(4, schema(), vec![batch(9..10)])
            .await
            .unwrap();
        let text = out.text();
        assert!(
            text.contains("Batch: 4") && text.contains("name9"),
            "{text}"
        );
        assert!(!text.contains("name7") && !text.contains("name8"), "{text}");
    }

    #[tokio::test]
    async fn truncates_to_num_rows() {
        let out = Shared::default();
        let sink = ConsoleSink::with_writer(Box::new(out.clone())).num_rows(3);
        sink.add_batch(1, schema(), vec![batch(0..2), batch(2..10)])
            .await
            .unwrap();
        let text = out.text();
        assert!(text.contains("| 2  | name2 |"), "{text}");
        assert!(!text.contains("name3"), "{text}");
        assert!(
            text.contains("only showing top 3 of 10 rows (7 omitted)"),
            "{text}"
        );

        let default = Shared::default();
        let sink = ConsoleSink::with_writer(Box::new(default.clone()));
        sink.add_batch(0, schema(), vec![batch(0..25)])
            .await
            .unwrap();
        let text = default.text();
        assert!(
            text.contains("name19") && !text.contains("name20"),
            "{text}"
        );
        assert!(
            text.contains("only showing top 20 of 25 rows (5 omitted)"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn empty_batch_prints_header_and_columns() {
        let out = Shared::default();
        let sink = ConsoleSink::with_writer(Box::new(out.clone()));
        sink.add_batch(5, schema(), Vec::new()).await.unwrap();
        let text = out.text();
        assert!(text.contains("Batch: 5"), "{text}");
        assert!(text.contains("| id | name |"), "{text}");
    }

    struct Harness {
        sink: Arc<ConsoleSink>,
        out: Shared,
    }

    #[async_trait]
    impl SinkHarness for Harness {
        fn sink(&self) -> Arc<dyn Sink> {
            Arc::clone(&self.sink) as Arc<dyn Sink>
        }

        fn session(&self) -> SessionContext {
            SessionContext::new()
        }

        async fn observe(&self) -> Result<Observed> {
            Ok(Observed::Text(self.out.text()))
        }
    }

    #[tokio::test]
    async fn conformance() {
        let out = Shared::default();
        let harness = Harness {
            sink: Arc::new(ConsoleSink::with_writer(Box::new(out.clone()))),
            out,
        };
        check_sink(
            &harness,
            vec![batch(1..3)],
            vec![batch(3..4)],
            vec![batch(4..7)],
        )
        .await;
    }
}
