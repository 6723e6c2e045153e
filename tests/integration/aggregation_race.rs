//! A batch's rows must be aggregated whatever order its input partitions
//! finish in, and whichever of them are empty (issue: a global aggregate
//! sometimes showed `count 0` for a batch of two rows).
//!
//! Two ways in: a source whose partitions finish in a chosen order (empty
//! ones first or last), which makes the order deterministic; and the same
//! small batches through JSON files, run many times over several partition
//! counts, as a user's query runs.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::*;
use futures::StreamExt;
use tidemill::engine::window::{session_window, tumble};
use tidemill::engine::{BatchInput, SourceContext};
use tidemill::prelude::*;
use tidemill::{Offset, Source, SourceStream};

use crate::common::sorted_rows;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("price", DataType::Float64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Trades `(symbol, quantity, price, seconds)`.
fn trades(rows: &[(&str, i64, f64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.3 * 1000),
            )),
        ],
    )
    .unwrap()
}

/// Which of a [`SkewedSource`]'s partitions finish first.
#[derive(Debug, Clone, Copy)]
enum Finish {
    /// The partition with the rows ends at once; the empty ones later.
    RowsFirst,
    /// The empty partitions end at once; the one with rows later.
    RowsLast,
}

/// A source whose rounds of rows are read as `partitions` streams: all of a
/// round's rows in partition 0, the others empty, finishing in the order
/// `finish` says.
#[derive(Debug, Clone)]
struct SkewedSource {
    rounds: Arc<std::sync::Mutex<Vec<RecordBatch>>>,
    partitions: usize,
    finish: Finish,
}

impl SkewedSource {
    fn new(partitions: usize, finish: Finish) -> Self {
        Self {
            rounds: Arc::default(),
            partitions,
            finish,
        }
    }

    fn push(&self, batch: RecordBatch) {
        self.rounds.lock().unwrap().push(batch);
    }

    fn range(&self, start: Option<&Offset>, end: &Offset) -> Vec<RecordBatch> {
        let from = start.map_or(0, |o| o.as_u64().unwrap() as usize);
        let to = end.as_u64().unwrap() as usize;
        self.rounds.lock().unwrap()[from..to].to_vec()
    }
}

#[async_trait]
impl Source for SkewedSource {
    fn description(&self) -> String {
        format!(
            "SkewedSource[{} partitions, {:?}]",
            self.partitions, self.finish
        )
    }
    async fn schema(&self, _session: &SessionContext) -> tidemill::Result<SchemaRef> {
        Ok(schema())
    }
    async fn open(&self, _ctx: SourceContext) -> tidemill::Result<Box<dyn SourceStream>> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl SourceStream for SkewedSource {
    fn description(&self) -> String {
        Source::description(self)
    }

    async fn latest_offset(
        &mut self,
        _start: Option<&Offset>,
        _limit: tidemill::ReadLimit,
    ) -> tidemill::Result<Option<Offset>> {
        let n = self.rounds.lock().unwrap().len() as u64;
        Ok((n > 0).then(|| Offset::from_u64(n)))
    }

    async fn read(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
    ) -> tidemill::Result<Vec<RecordBatch>> {
        Ok(self.range(start, end))
    }

    async fn read_input(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
        _partitions: usize,
    ) -> tidemill::Result<BatchInput> {
        let rows = self.range(start, end);
        let wait = Duration::from_millis(30);
        let (rows_wait, empty_wait) = match self.finish {
            Finish::RowsFirst => (Duration::ZERO, wait),
            Finish::RowsLast => (wait, Duration::ZERO),
        };
        let mut parts: Vec<Arc<dyn PartitionStream>> = vec![Arc::new(Delayed {
            rows,
            wait: rows_wait,
        })];
        for _ in 1..self.partitions {
            parts.push(Arc::new(Delayed {
                rows: Vec::new(),
                wait: empty_wait,
            }));
        }
        Ok(BatchInput::Partitions(parts))
    }
}

/// A partition that yields its rows, then ends after `wait`.
#[derive(Debug)]
struct Delayed {
    rows: Vec<RecordBatch>,
    wait: Duration,
}

impl PartitionStream for Delayed {
    fn schema(&self) -> &SchemaRef {
        static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(schema)
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (rows, wait) = (self.rows.clone(), self.wait);
        let stream = async_stream(rows, wait);
        Box::pin(RecordBatchStreamAdapter::new(schema(), stream))
    }
}

/// `rows`, then the end of the stream after `wait`.
fn async_stream(
    rows: Vec<RecordBatch>,
    wait: Duration,
) -> impl futures::Stream<Item = datafusion::error::Result<RecordBatch>> + Send {
    let end = futures::stream::once(tokio::time::sleep(wait))
        .filter_map(|()| futures::future::ready(None));
    futures::stream::iter(rows.into_iter().map(Ok)).chain(end)
}

/// The aggregations checked: each maps the trades to its result table.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `count(*), sum(quantity), min/max(event_time), avg(price)`, no keys.
    Global,
    /// The same per symbol.
    PerSymbol,
    /// Per 10-second window and symbol, with a watermark.
    Windowed,
    /// Per session (5-second gap) and symbol, with a watermark.
    Session,
}

fn aggregate(df: DataFrame, shape: Shape) -> DataFrame {
    let aggregates = vec![
        count(lit(1)).alias("trades"),
        sum(col("quantity")).alias("volume"),
        min(col("event_time")).alias("first_time"),
        max(col("event_time")).alias("last_time"),
        avg(col("price")).alias("avg_price"),
    ];
    match shape {
        Shape::Global => df.aggregate(vec![], aggregates).unwrap(),
        Shape::PerSymbol => df.aggregate(vec![col("symbol")], aggregates).unwrap(),
        Shape::Windowed => df
            .with_watermark("event_time", "1 second")
            .unwrap()
            .aggregate(
                vec![
                    tumble(col("event_time"), "10 seconds").alias("w"),
                    col("symbol"),
                ],
                aggregates,
            )
            .unwrap(),
        Shape::Session => df
            .with_watermark("event_time", "1 second")
            .unwrap()
            .aggregate(
                vec![
                    session_window(col("event_time"), "5 seconds").alias("s"),
                    col("symbol"),
                ],
                aggregates,
            )
            .unwrap(),
    }
}

/// Runs two rounds through `shape` in `mode` on a source of `partitions`
/// partitions finishing as `finish` says, and returns the sink's rows after
/// each round.
async fn run_rounds(
    shape: Shape,
    mode: OutputMode,
    partitions: usize,
    finish: Finish,
) -> (Vec<String>, Vec<String>) {
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    let dir = tempfile::tempdir().unwrap();
    let source = SkewedSource::new(partitions, finish);
    let df = aggregate(ctx.read_stream(source.clone()).await.unwrap(), shape);
    let sink = MemorySink::new();
    let query = df
        .write_stream()
        .sink(sink.clone())
        .output_mode(mode)
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap();
    source.push(trades(&[
        ("AAPL", 100, 187.0, 100),
        ("MSFT", 50, 402.0, 101),
    ]));
    query.process_all_available().await.unwrap();
    let first = sorted_rows(&sink.batches());
    source.push(trades(&[("AAPL", 10, 140.0, 102)]));
    query.process_all_available().await.unwrap();
    let second = sorted_rows(&sink.batches());
    query.stop().await.unwrap();
    (first, second)
}

/// The cells of each row, as `sorted_rows` prints them.
fn cells(rows: &[String]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            r.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// `count`, `volume` and `avg_price` of each row (`skip` key cells first).
fn figures(rows: &[String], skip: usize) -> Vec<(String, String, String)> {
    cells(rows)
        .into_iter()
        .map(|c| (c[skip].clone(), c[skip + 1].clone(), c[skip + 4].clone()))
        .collect()
}

fn figure(count: &str, volume: &str, avg: &str) -> (String, String, String) {
    (count.into(), volume.into(), avg.into())
}

#[tokio::test]
async fn a_global_aggregate_counts_every_row_whichever_partition_finishes_first() {
    for finish in [Finish::RowsFirst, Finish::RowsLast] {
        for partitions in [1, 2, 3, 5, 8] {
            for mode in [OutputMode::Complete, OutputMode::Update] {
                let (first, second) = run_rounds(Shape::Global, mode, partitions, finish).await;
                let case = format!("{finish:?}, {partitions} partitions, {mode:?}");
                assert_eq!(
                    figures(&first, 0),
                    vec![figure("2", "150", "294.5")],
                    "{case}: {first:#?}"
                );
                let mut second = figures(&second, 0);
                second.sort();
                // A complete-mode memory sink holds the last table only.
                let want = match mode {
                    OutputMode::Complete => vec![figure("3", "160", "243.0")],
                    _ => vec![figure("2", "150", "294.5"), figure("3", "160", "243.0")],
                };
                assert_eq!(second, want, "{case}");
            }
        }
    }
}

#[tokio::test]
async fn keyed_windowed_and_session_aggregates_count_every_row_whichever_partition_finishes_first()
{
    for finish in [Finish::RowsFirst, Finish::RowsLast] {
        for partitions in [1, 2, 3, 8] {
            let case = format!("{finish:?}, {partitions} partitions");
            for mode in [OutputMode::Update, OutputMode::Complete] {
                let (first, second) = run_rounds(Shape::PerSymbol, mode, partitions, finish).await;
                let mut first: Vec<_> = cells(&first)
                    .into_iter()
                    .map(|c| (c[0].clone(), c[1].clone()))
                    .collect();
                first.sort();
                assert_eq!(
                    first,
                    vec![("AAPL".into(), "1".into()), ("MSFT".into(), "1".into())],
                    "per symbol, {mode:?}, {case}"
                );
                let last_aapl = cells(&second)
                    .into_iter()
                    .filter(|c| c[0] == "AAPL")
                    .map(|c| (c[1].clone(), c[2].clone()))
                    .max();
                assert_eq!(
                    last_aapl,
                    Some(("2".into(), "110".into())),
                    "{mode:?}, {case}"
                );
            }
            for shape in [Shape::Windowed, Shape::Session] {
                let (first, second) =
                    run_rounds(shape, OutputMode::Update, partitions, finish).await;
                // The window or session comes first, then the symbol.
                let mut first: Vec<_> = cells(&first)
                    .into_iter()
                    .map(|c| (c[1].clone(), c[2].clone()))
                    .collect();
                first.sort();
                assert_eq!(
                    first,
                    vec![("AAPL".into(), "1".into()), ("MSFT".into(), "1".into())],
                    "{shape:?}, {case}"
                );
                let second: Vec<_> = cells(&second)
                    .into_iter()
                    .map(|c| (c[1].clone(), c[2].clone(), c[3].clone()))
                    .collect();
                assert!(
                    second.contains(&("AAPL".into(), "2".into(), "110".into())),
                    "{shape:?}, {case}: {second:#?}"
                );
            }
        }
    }
}

/// The issue's case as a user runs it: JSON files, a fresh query each time,
/// many times over several partition counts.
#[tokio::test]
async fn json_files_aggregated_many_times_over_several_partition_counts_lose_no_row() {
    for partitions in [1, 2, 3, 4, 8] {
        for run in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("events");
            std::fs::create_dir(&data).unwrap();
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let events = ctx
                .read_stream(FileSource::json(data.to_str().unwrap()).schema(schema()))
                .await
                .unwrap();
            let sink = MemorySink::new();
            let query = aggregate(events, Shape::Global)
                .write_stream()
                .sink(sink.clone())
                .output_mode(OutputMode::Complete)
                .checkpoint(dir.path().join("chk").to_str().unwrap())
                .start()
                .await
                .unwrap();
            std::fs::write(
                data.join("step0.json"),
                concat!(
                    r#"{"symbol":"AAPL","quantity":100,"price":187.0,"event_time":"1970-01-01T00:01:40"}"#,
                    "\n",
                    r#"{"symbol":"MSFT","quantity":50,"price":402.0,"event_time":"1970-01-01T00:01:41"}"#,
                    "\n"
                ),
            )
            .unwrap();
            query.process_all_available().await.unwrap();
            let rows = sorted_rows(&sink.batches());
            assert_eq!(
                figures(&rows, 0),
                vec![figure("2", "150", "294.5")],
                "{partitions} partitions, run {run}"
            );
            query.stop().await.unwrap();
        }
    }
}

/// DataFusion's partial aggregate stops merging rows once a partition has
/// seen enough rows of mostly distinct groups (by default 100 000 rows, 80 %
/// distinct) and passes the rest through one row each: a group may then have several partial rows from one
/// partition, which must merge before they are stored.
#[tokio::test]
async fn groups_repeated_within_one_partition_still_merge() {
    // DataFusion's thresholds for giving up on partial aggregation, made
    // explicit (and lower than the defaults, so the test stays small).
    let mut config = SessionConfig::new().with_target_partitions(1);
    let execution = &mut config.options_mut().execution;
    execution.skip_partial_aggregation_probe_rows_threshold = 10_000;
    execution.skip_partial_aggregation_probe_ratio_threshold = 0.5;
    let ctx = SessionContext::new_with_config(config);
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    let stream = MemoryStream::new(Arc::clone(&schema));
    let sink = MemorySink::new();
    let query = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .aggregate(vec![col("k")], vec![count(lit(1)).alias("n")])
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        // Complete mode emits the stored states: each must hold every row.
        .output_mode(OutputMode::Complete)
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap();
    // 50 000 rows, 45 000 groups: every tenth row repeats the next key,
    // and most repeats come after the partial aggregate stopped merging.
    let total = 50_000i64;
    let keys: Vec<i64> = (0..total)
        .map(|i| if i % 10 == 0 { i + 1 } else { i })
        .collect();
    let batches: Vec<RecordBatch> = keys
        .chunks(8192)
        .map(|chunk| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(chunk.to_vec()))],
            )
            .unwrap()
        })
        .collect();
    stream.push_all(batches).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let out = sink.batches();
    let groups: usize = out.iter().map(RecordBatch::num_rows).sum();
    let counted: i64 = out
        .iter()
        .map(|b| {
            arrow::compute::sum(
                b.column_by_name("n")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap(),
            )
            .unwrap_or(0)
        })
        .sum();
    assert_eq!(groups, 45_000);
    assert_eq!(counted, total, "every row is counted once");
}
