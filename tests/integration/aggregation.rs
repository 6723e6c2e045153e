//! Streaming aggregation: windows × output modes × watermark, late rows,
//! no-data batches, restarts, and the checks made at start.

use std::sync::Arc;

use arrow::array::TimestampMillisecondArray;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
use datafusion::prelude::*;
use tidemill::engine::window::tumble;
use tidemill::prelude::*;
use tidemill::{QueryOptions, StreamingQuery};

use crate::common::{sorted_rows, timed_rows as trades, timed_schema as schema};

/// Per 10-second tumbling window and symbol: count, sum, min, max, avg of
/// price, as `start` (seconds), `symbol`, aggregates.
fn per_window(df: DataFrame) -> DataFrame {
    df.aggregate(
        vec![
            tumble(col("event_time"), "10 seconds").alias("w"),
            col("symbol"),
        ],
        vec![
            count(col("price")).alias("n"),
            sum(col("price")).alias("total"),
            min(col("price")).alias("low"),
            max(col("price")).alias("high"),
            avg(col("price")).alias("mean"),
        ],
    )
    .unwrap()
    .select(vec![
        (cast(get_field(col("w"), "start"), DataType::Int64) / lit(1000)).alias("start"),
        col("symbol"),
        col("n"),
        col("total"),
        col("low"),
        col("high"),
        col("mean"),
    ])
    .unwrap()
}

async fn stream_df(ctx: &SessionContext, stream: &MemoryStream, delay: Option<&str>) -> DataFrame {
    let df = ctx.read_stream(stream.clone()).await.unwrap();
    match delay {
        Some(d) => df.with_watermark("event_time", d).unwrap(),
        None => df,
    }
}

async fn start(
    df: DataFrame,
    sink: &MemorySink,
    mode: OutputMode,
    checkpoint: &std::path::Path,
) -> StreamingQuery {
    df.write_stream()
        .sink(sink.clone())
        .output_mode(mode)
        .checkpoint(checkpoint.to_str().unwrap())
        .options(QueryOptions::default())
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn append_mode_emits_each_window_once_when_the_watermark_passes_its_end() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = per_window(stream_df(&ctx, &stream, Some("5 seconds")).await);
    let query = start(df, &sink, OutputMode::Append, dir.path()).await;

    stream
        .push(trades(&[
            (Some("A"), 1.0, 100),
            (Some("A"), 3.0, 109),
            (Some("B"), 2.0, 105),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert!(sorted_rows(&sink.batches()).is_empty(), "nothing final yet");

    // 116 moves the watermark to 111: window [100, 110) closes.
    stream.push(trades(&[(Some("A"), 5.0, 116)])).unwrap();
    query.process_all_available().await.unwrap();
    let rows = sorted_rows(&sink.batches());
    assert_eq!(
        rows,
        vec![
            "| 100   | A      | 2 | 4.0   | 1.0 | 3.0  | 2.0  |",
            "| 100   | B      | 1 | 2.0   | 2.0 | 2.0  | 2.0  |",
        ],
        "{rows:#?}"
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn update_mode_emits_changed_groups_and_complete_mode_the_whole_table() {
    let ctx = SessionContext::new();
    for mode in [OutputMode::Update, OutputMode::Complete] {
        let dir = tempfile::tempdir().unwrap();
        let stream = MemoryStream::new(schema());
        let sink = MemorySink::new();
        let df = per_window(stream_df(&ctx, &stream, None).await);
        let query = start(df, &sink, mode, dir.path()).await;
        let mut per_batch = Vec::new();
        for batch in [
            trades(&[(Some("A"), 1.0, 100), (Some("B"), 2.0, 105)]),
            trades(&[(Some("A"), 3.0, 109), (None, 7.0, 111)]),
        ] {
            stream.push(batch).unwrap();
            query.process_all_available().await.unwrap();
            let last = query.last_progress().unwrap();
            per_batch.push((last.num_output_rows, last.state_operators[0].num_rows_total));
        }
        query.stop().await.unwrap();
        let rows = sorted_rows(&sink.batches());
        match mode {
            OutputMode::Update => {
                assert_eq!(per_batch, vec![(2, 2), (2, 3)]);
                assert_eq!(
                    rows,
                    vec![
                        "| 100   | A      | 1 | 1.0   | 1.0 | 1.0  | 1.0  |",
                        "| 100   | A      | 2 | 4.0   | 1.0 | 3.0  | 2.0  |",
                        "| 100   | B      | 1 | 2.0   | 2.0 | 2.0  | 2.0  |",
                        "| 110   |        | 1 | 7.0   | 7.0 | 7.0  | 7.0  |",
                    ],
                    "{rows:#?}"
                );
            }
            _ => {
                assert_eq!(per_batch, vec![(2, 2), (3, 3)]);
                // The memory sink keeps the last complete table.
                assert_eq!(
                    rows,
                    vec![
                        "| 100   | A      | 2 | 4.0   | 1.0 | 3.0  | 2.0  |",
                        "| 100   | B      | 1 | 2.0   | 2.0 | 2.0  | 2.0  |",
                        "| 110   |        | 1 | 7.0   | 7.0 | 7.0  | 7.0  |",
                    ],
                    "{rows:#?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn late_rows_are_dropped_counted_and_sent_to_the_late_rows_sink() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let late_sink = MemorySink::new();
    let df = per_window(stream_df(&ctx, &stream, Some("5 seconds")).await);
    let query = df
        .write_stream()
        .sink(sink.clone())
        .late_rows_sink(late_sink.clone())
        .output_mode(OutputMode::Append)
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap();
    // Watermark after this batch: 125 - 5 = 120.
    stream
        .push(trades(&[(Some("A"), 1.0, 112), (Some("A"), 2.0, 125)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    // 119's window [110, 120) ends at 120 <= watermark 120: closed, late.
    // 120 is exactly at the watermark but its window [120, 130) is open:
    // kept. 108's window [100, 110) closed long ago: late.
    stream
        .push(trades(&[
            (Some("A"), 10.0, 119),
            (Some("A"), 20.0, 120),
            (Some("B"), 30.0, 108),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    let progress = query.recent_progress();
    let late_batch = progress.iter().find(|p| p.num_input_rows == 3).unwrap();
    assert_eq!(
        late_batch.state_operators[0].num_rows_dropped_by_watermark,
        2
    );
    let late = sorted_rows(&late_sink.batches());
    assert_eq!(late.len(), 2, "{late:#?}");
    assert!(
        late[0].contains("| A      | 10.0  | 1970-01-01T00:01:59"),
        "{late:#?}"
    );
    assert!(
        late[1].contains("| B      | 30.0  | 1970-01-01T00:01:48"),
        "{late:#?}"
    );

    // Close everything: 200 - 5 = 195.
    stream.push(trades(&[(Some("C"), 1.0, 200)])).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec![
            "| 110   | A      | 1 | 1.0   | 1.0 | 1.0  | 1.0  |",
            "| 120   | A      | 2 | 22.0  | 2.0 | 20.0 | 11.0 |",
        ]
    );
}

#[tokio::test]
async fn rows_on_window_boundaries_belong_to_the_window_they_start() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = per_window(stream_df(&ctx, &stream, Some("0 seconds")).await);
    let query = start(df, &sink, OutputMode::Append, dir.path()).await;
    stream
        .push(trades(&[(Some("A"), 1.0, 100), (Some("A"), 2.0, 110)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    // The watermark is now exactly 110, the end of [100, 110): emitted by
    // a no-data batch without waiting for more input.
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec!["| 100   | A      | 1 | 1.0   | 1.0 | 1.0  | 1.0  |"]
    );
    let progress = query.recent_progress();
    assert_eq!(progress.len(), 2, "one batch with data, one without");
    assert_eq!(progress[1].num_input_rows, 0);
    assert_eq!(progress[1].state_operators[0].num_rows_removed, 1);
    // A row at 110 is not late: [110, 120) is open.
    stream.push(trades(&[(Some("A"), 4.0, 110)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        query.last_progress().unwrap().state_operators[0].num_rows_dropped_by_watermark,
        0
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn no_data_batches_can_be_turned_off() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = per_window(stream_df(&ctx, &stream, Some("0 seconds")).await);
    let query = df
        .write_stream()
        .sink(sink.clone())
        .output_mode(OutputMode::Append)
        .checkpoint(dir.path().to_str().unwrap())
        .options(QueryOptions {
            no_data_batches: false,
            ..Default::default()
        })
        .start()
        .await
        .unwrap();
    stream
        .push(trades(&[(Some("A"), 1.0, 100), (Some("A"), 2.0, 110)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(query.recent_progress().len(), 1);
    assert_eq!(sink.num_rows(), 0, "emitted only by the next batch");
    stream.push(trades(&[(Some("B"), 1.0, 111)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(sink.num_rows(), 1);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn state_survives_a_restart_and_a_changed_aggregation_is_refused() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = per_window(stream_df(&ctx, &stream, Some("5 seconds")).await);
    let query = start(df, &sink, OutputMode::Append, dir.path()).await;
    stream
        .push(trades(&[(Some("A"), 1.0, 100), (Some("A"), 2.0, 101)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    // An empty batch changes nothing.
    stream.push(trades(&[])).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(sink.num_rows(), 0);
    let last = query.last_progress().unwrap();
    assert_eq!(last.num_input_rows, 0);
    assert_eq!(last.state_operators[0].num_rows_total, 1);
    assert_eq!(last.state_operators[0].num_rows_updated, 0);

    // Another aggregation on the same checkpoint: refused, saying what changed.
    let other = stream_df(&ctx, &stream, Some("5 seconds"))
        .await
        .aggregate(
            vec![
                tumble(col("event_time"), "10 seconds").alias("w"),
                col("symbol"),
            ],
            vec![count(col("price")).alias("n")],
        )
        .unwrap();
    let err = other
        .write_stream()
        .sink(MemorySink::new())
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, tidemill::TidemillError::CheckpointMismatch { .. }),
        "{msg}"
    );
    assert!(msg.contains("was removed"), "{msg}");

    // The same query resumes with its state.
    let df = per_window(stream_df(&ctx, &stream, Some("5 seconds")).await);
    let query = start(df, &sink, OutputMode::Append, dir.path()).await;
    stream
        .push(trades(&[(Some("A"), 4.0, 102), (Some("A"), 1.0, 130)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec!["| 100   | A      | 3 | 7.0   | 1.0 | 4.0  | 2.3333333333333335 |"]
    );
}

#[tokio::test]
async fn aggregations_that_cannot_stream_are_refused_at_start() {
    let ctx = SessionContext::new();
    tidemill::engine::window::register_window_functions(&ctx);
    ctx.register_stream("trades", MemoryStream::new(schema()))
        .await
        .unwrap();
    let watermarked = ctx
        .read_stream(MemoryStream::new(schema()))
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap();
    ctx.register_table("wtrades", watermarked.into_view())
        .unwrap();
    let cases = [
        (
            "SELECT symbol, count(*) FROM trades GROUP BY symbol",
            OutputMode::Append,
            "no event-time group key",
        ),
        (
            "SELECT tumble(event_time, '1 minute') AS w, count(*) FROM trades GROUP BY 1",
            OutputMode::Append,
            "no watermark",
        ),
        (
            "SELECT symbol, count(*) FROM wtrades GROUP BY symbol",
            OutputMode::Append,
            "no event-time group key",
        ),
        (
            "SELECT symbol, count(DISTINCT price) FROM trades GROUP BY symbol",
            OutputMode::Update,
            "approx_distinct",
        ),
        (
            "SELECT n, count(*) FROM (SELECT symbol, count(*) AS n FROM trades GROUP BY symbol) GROUP BY n",
            OutputMode::Update,
            "append mode only",
        ),
        (
            "SELECT symbol, count(*) AS n FROM trades GROUP BY symbol ORDER BY n",
            OutputMode::Update,
            "complete mode",
        ),
        (
            "SELECT symbol, count(*) FROM trades GROUP BY ROLLUP(symbol)",
            OutputMode::Update,
            "GROUPING SETS",
        ),
    ];
    for (sql, mode, expected) in cases {
        let err = ctx
            .sql(sql)
            .await
            .unwrap()
            .write_stream()
            .sink(MemorySink::new())
            .output_mode(mode)
            .start()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, tidemill::TidemillError::Unsupported { .. }),
            "{sql}: {msg}"
        );
        assert!(msg.contains(expected), "{sql}: {msg}");
    }
    // Sorting and limiting the result table is fine in complete mode.
    let query = ctx
        .sql("SELECT symbol, count(*) AS n FROM trades GROUP BY symbol ORDER BY n DESC LIMIT 2")
        .await
        .unwrap()
        .write_stream()
        .sink(MemorySink::new())
        .output_mode(OutputMode::Complete)
        .start()
        .await
        .unwrap();
    query.stop().await.unwrap();
}

#[tokio::test]
async fn state_stays_bounded_as_the_watermark_advances() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = per_window(stream_df(&ctx, &stream, Some("10 seconds")).await);
    let query = start(df, &sink, OutputMode::Append, dir.path()).await;
    // 200 batches of 50 rows, 5 seconds of event time per batch, 5 symbols.
    for b in 0..200i64 {
        let rows: Vec<(Option<&str>, f64, i64)> = (0..50)
            .map(|i| {
                let symbol = ["A", "B", "C", "D", "E"][(i % 5) as usize];
                (Some(symbol), 1.0, b * 5 + i % 5)
            })
            .collect();
        stream.push(trades(&rows)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    let progress = query.recent_progress();
    let late: Vec<_> = progress[progress.len() - 50..]
        .iter()
        .map(|p| &p.state_operators[0])
        .collect();
    // Open windows: at most the ones within the delay (10 s) of the newest
    // event plus the current one, for 5 symbols.
    let max_rows = late.iter().map(|s| s.num_rows_total).max().unwrap();
    let min_rows = late.iter().map(|s| s.num_rows_total).min().unwrap();
    assert!(max_rows <= 15, "state rows {max_rows}");
    assert!(min_rows >= 5, "state rows {min_rows}");
    let max_memory = late.iter().map(|s| s.memory_used_bytes).max().unwrap();
    let early_memory = progress[20].state_operators[0].memory_used_bytes;
    assert!(
        max_memory <= early_memory * 2,
        "memory grew from {early_memory} to {max_memory}"
    );
    // Every row was counted in exactly one emitted window, except those of
    // the windows still open: the last watermark is 999 - 10 = 989, so
    // [980, 990) and [990, 1000) (10 rows a second) are not final yet.
    let emitted: i64 = sorted_rows(&sink.batches())
        .iter()
        .map(|r| r.split('|').nth(3).unwrap().trim().parse::<i64>().unwrap())
        .sum();
    assert_eq!(emitted, 200 * 50 - 20 * 10);
}

#[tokio::test]
async fn grouping_by_the_event_time_column_closes_groups_at_their_time() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = stream_df(&ctx, &stream, Some("2 seconds"))
        .await
        .aggregate(
            vec![col("event_time")],
            vec![count(col("price")).alias("n")],
        )
        .unwrap();
    let query = start(df, &sink, OutputMode::Append, dir.path()).await;
    stream
        .push(trades(&[
            (Some("A"), 1.0, 10),
            (Some("B"), 1.0, 10),
            (Some("A"), 1.0, 11),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    // Watermark 13: 10 and 11 are final; 9 is late.
    stream
        .push(trades(&[(Some("A"), 1.0, 15), (Some("A"), 1.0, 9)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec!["| 1970-01-01T00:00:10 | 2 |", "| 1970-01-01T00:00:11 | 1 |",]
    );
    let dropped: u64 = query
        .recent_progress()
        .iter()
        .map(|p| p.state_operators[0].num_rows_dropped_by_watermark)
        .sum();
    assert_eq!(dropped, 1);
}

#[tokio::test]
async fn several_watermarked_inputs_close_windows_at_the_slowest() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let (fast, slow) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
    let df = stream_df(&ctx, &fast, Some("0 seconds"))
        .await
        .union(stream_df(&ctx, &slow, Some("0 seconds")).await)
        .unwrap();
    let sink = MemorySink::new();
    let query = start(per_window(df), &sink, OutputMode::Append, dir.path()).await;
    fast.push(trades(&[(Some("A"), 1.0, 100), (Some("A"), 1.0, 125)]))
        .unwrap();
    slow.push(trades(&[(Some("B"), 2.0, 101)])).unwrap();
    query.process_all_available().await.unwrap();
    // min(125, 101) = 101: [100, 110) stays open for the slow input.
    assert_eq!(sink.num_rows(), 0);
    slow.push(trades(&[(Some("B"), 2.0, 108), (Some("B"), 2.0, 121)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    // min(125, 121) = 121: [100, 110) and [110, 120) closed.
    query.stop().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec![
            "| 100   | A      | 1 | 1.0   | 1.0 | 1.0  | 1.0  |",
            "| 100   | B      | 2 | 4.0   | 2.0 | 2.0  | 2.0  |",
        ]
    );
}

/// A user-defined aggregate: the sum of squares, with a mergeable state.
#[derive(Debug, Default)]
struct SumOfSquares(f64);

impl datafusion::logical_expr::Accumulator for SumOfSquares {
    fn update_batch(&mut self, values: &[arrow::array::ArrayRef]) -> datafusion::error::Result<()> {
        use arrow::array::AsArray;
        let v = values[0].as_primitive::<arrow::datatypes::Float64Type>();
        self.0 += v.iter().flatten().map(|x| x * x).sum::<f64>();
        Ok(())
    }

    fn merge_batch(&mut self, states: &[arrow::array::ArrayRef]) -> datafusion::error::Result<()> {
        use arrow::array::AsArray;
        let s = states[0].as_primitive::<arrow::datatypes::Float64Type>();
        self.0 += s.iter().flatten().sum::<f64>();
        Ok(())
    }

    fn state(&mut self) -> datafusion::error::Result<Vec<datafusion::scalar::ScalarValue>> {
        Ok(vec![datafusion::scalar::ScalarValue::Float64(Some(self.0))])
    }

    fn evaluate(&mut self) -> datafusion::error::Result<datafusion::scalar::ScalarValue> {
        Ok(datafusion::scalar::ScalarValue::Float64(Some(self.0)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

#[tokio::test]
async fn user_defined_aggregates_run_incrementally() {
    use datafusion::logical_expr::{Volatility, create_udaf};
    let udaf = create_udaf(
        "sum_of_squares",
        vec![DataType::Float64],
        Arc::new(DataType::Float64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(SumOfSquares::default()))),
        Arc::new(vec![DataType::Float64]),
    );
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = stream_df(&ctx, &stream, None)
        .await
        .aggregate(
            vec![col("symbol")],
            vec![udaf.call(vec![col("price")]).alias("ss")],
        )
        .unwrap();
    let query = start(df, &sink, OutputMode::Complete, dir.path()).await;
    for rows in [
        vec![(Some("A"), 1.0, 1), (Some("A"), 2.0, 2)],
        vec![(Some("A"), 3.0, 3), (Some("B"), 4.0, 4)],
    ] {
        stream.push(trades(&rows)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec!["| A      | 14.0 |", "| B      | 16.0 |"]
    );
}

#[tokio::test]
async fn a_global_aggregate_without_keys_keeps_one_running_row() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = stream_df(&ctx, &stream, None)
        .await
        .aggregate(
            vec![],
            vec![
                count(col("price")).alias("n"),
                sum(col("price")).alias("total"),
            ],
        )
        .unwrap();
    let query = start(df, &sink, OutputMode::Complete, dir.path()).await;
    for rows in [
        vec![(Some("A"), 1.0, 1), (Some("B"), 2.0, 2)],
        vec![(None, 4.0, 3)],
    ] {
        stream.push(trades(&rows)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    assert_eq!(sorted_rows(&sink.batches()), vec!["| 3 | 7.0   |"]);
    assert_eq!(
        query.last_progress().unwrap().state_operators[0].num_rows_total,
        1
    );
}

/// Per session (10-second gap) and symbol: start and end in seconds, count.
fn per_session(df: DataFrame) -> DataFrame {
    use tidemill::engine::window::session_window;
    let seconds =
        |field: &str| (cast(get_field(col("s"), field), DataType::Int64) / lit(1000)).alias(field);
    df.aggregate(
        vec![
            col("symbol"),
            session_window(col("event_time"), "10 seconds").alias("s"),
        ],
        vec![count(col("price")).alias("n")],
    )
    .unwrap()
    .select(vec![
        col("symbol"),
        seconds("start"),
        seconds("end"),
        col("n"),
    ])
    .unwrap()
}

#[tokio::test]
async fn session_windows_merge_across_batches_and_close_at_their_end() {
    let ctx = SessionContext::new();
    for mode in [OutputMode::Append, OutputMode::Update] {
        let dir = tempfile::tempdir().unwrap();
        let stream = MemoryStream::new(schema());
        let sink = MemorySink::new();
        let df = per_session(stream_df(&ctx, &stream, Some("20 seconds")).await);
        let query = start(df, &sink, mode, dir.path()).await;
        let mut outputs = Vec::new();
        for rows in [
            // A: [100, 110) and [115, 125), apart. Watermark 95.
            vec![
                (Some("A"), 1.0, 100),
                (Some("A"), 1.0, 115),
                (Some("B"), 1.0, 100),
            ],
            // 108 bridges them: [100, 125). B's 110 starts exactly at the
            // end of [100, 110): the sessions touch and merge, as Spark's
            // and Flink's do, into [100, 120).
            vec![(Some("A"), 1.0, 108), (Some("B"), 1.0, 110)],
            // Watermark 180: everything above is final.
            vec![(Some("C"), 1.0, 200)],
        ] {
            stream.push(trades(&rows)).unwrap();
            query.process_all_available().await.unwrap();
            outputs.push(sorted_rows(&sink.batches()));
        }
        query.stop().await.unwrap();
        let final_rows = [
            "| A      | 100   | 125 | 3 |",
            "| B      | 100   | 120 | 2 |",
        ];
        match mode {
            OutputMode::Append => {
                assert!(outputs[1].is_empty(), "{:#?}", outputs[1]);
                assert_eq!(outputs[2], final_rows);
            }
            _ => {
                assert_eq!(
                    outputs[0],
                    vec![
                        "| A      | 100   | 110 | 1 |",
                        "| A      | 115   | 125 | 1 |",
                        "| B      | 100   | 110 | 1 |",
                    ]
                );
                // The merged session is the last update of A.
                assert!(
                    outputs[1].contains(&final_rows[0].to_string()),
                    "{:#?}",
                    outputs[1]
                );
                assert!(
                    outputs[1].contains(&final_rows[1].to_string()),
                    "{:#?}",
                    outputs[1]
                );
                let state = &query.last_progress().unwrap().state_operators[0];
                assert_eq!(state.num_rows_total, 1, "only C's session is open");
            }
        }
    }
}

#[tokio::test]
async fn session_windows_without_a_watermark_in_complete_mode_keep_every_session() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = per_session(stream_df(&ctx, &stream, None).await);
    let query = start(df, &sink, OutputMode::Complete, dir.path()).await;
    for rows in [
        vec![(Some("A"), 1.0, 100), (Some("A"), 1.0, 115)],
        vec![(Some("A"), 1.0, 108), (Some("A"), 1.0, 500)],
    ] {
        stream.push(trades(&rows)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec![
            "| A      | 100   | 125 | 3 |",
            "| A      | 500   | 510 | 1 |"
        ]
    );
}

#[tokio::test]
async fn explain_names_the_stateful_operator_the_watermark_and_the_mode() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    let df = per_window(stream_df(&ctx, &stream, Some("5 seconds")).await);
    let text = df
        .write_stream()
        .output_mode(OutputMode::Append)
        .explain()
        .unwrap();
    for expected in [
        "output mode: append",
        "watermark: on event_time with delay 5000 ms",
        "stateful operator 0: StreamingAggregate",
        "event-time key: w (Window)",
        "StreamingAggregate: operator=0",
        "Watermark: event_time",
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
    let unwindowed = stream_df(&ctx, &stream, None)
        .await
        .aggregate(vec![col("symbol")], vec![count(col("price"))])
        .unwrap();
    let err = unwindowed
        .write_stream()
        .output_mode(OutputMode::Append)
        .explain()
        .unwrap_err();
    assert!(err.to_string().contains("no event-time group key"), "{err}");
}

#[tokio::test]
async fn a_window_over_a_nullable_time_leaves_out_rows_in_no_window() {
    // The watermark is on `event_time`; the window is over `settled_at`,
    // which may be null: as Spark's `window()`, a null time is in no
    // window, so those rows are left out (and counted), not grouped.
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(
            "settled_at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]));
    let batch = |rows: &[(i64, Option<i64>)]| {
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.0 * 1000),
                )),
                Arc::new(TimestampMillisecondArray::from_iter(
                    rows.iter().map(|r| r.1.map(|s| s * 1000)),
                )),
            ],
        )
        .unwrap()
    };
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(Arc::clone(&schema));
    let sink = MemorySink::new();
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap()
        .aggregate(
            vec![tumble(col("settled_at"), "10 seconds").alias("w")],
            vec![count(lit(1)).alias("n")],
        )
        .unwrap()
        .select(vec![
            (cast(get_field(col("w"), "start"), DataType::Int64) / lit(1000)).alias("start"),
            col("w").is_null().alias("no_window"),
            col("n"),
        ])
        .unwrap();
    let query = start(df, &sink, OutputMode::Update, dir.path()).await;
    for rows in [
        vec![(100, Some(101)), (101, None)],
        vec![(102, None), (103, Some(104)), (104, Some(111))],
    ] {
        stream.push(batch(&rows)).unwrap();
        query.process_all_available().await.unwrap();
    }
    let last = query.last_progress().unwrap();
    query.stop().await.unwrap();
    assert_eq!(last.state_operators[0].num_rows_total, 2);
    assert_eq!(last.state_operators[0].num_rows_without_event_time, 1);
    let rows = sorted_rows(&sink.batches());
    assert_eq!(
        rows,
        vec![
            "| 100   | false     | 1 |",
            "| 100   | false     | 2 |",
            "| 110   | false     | 1 |",
        ],
        "{rows:#?}"
    );
}

/// Spark's complete mode keeps the whole result table: a watermark neither
/// drops rows behind it nor evicts windows there.
#[tokio::test]
async fn complete_mode_with_a_watermark_keeps_late_rows_and_every_window() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = per_window(stream_df(&ctx, &stream, Some("5 seconds")).await);
    let query = start(df, &sink, OutputMode::Complete, dir.path()).await;
    // Watermark after: 121 - 5 = 116, past the end of [100, 110).
    stream
        .push(trades(&[(Some("A"), 1.0, 102), (Some("A"), 2.0, 121)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    stream.push(trades(&[(Some("A"), 3.0, 103)])).unwrap();
    query.process_all_available().await.unwrap();
    let progress = query.last_progress().unwrap();
    assert_eq!(progress.state_operators[0].num_rows_dropped_by_watermark, 0);
    assert_eq!(progress.state_operators[0].num_rows_total, 2);
    // A complete-mode memory sink holds the last batch's table.
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec![
            "| 100   | A      | 2 | 4.0   | 1.0 | 3.0  | 2.0  |",
            "| 120   | A      | 1 | 2.0   | 2.0 | 2.0  | 2.0  |",
        ]
    );
    query.stop().await.unwrap();
}

/// `distinct()` (SQL `SELECT DISTINCT`) is an aggregation without
/// aggregate functions: in update mode each batch emits the distinct rows
/// it touched, as Spark's does.
#[tokio::test]
async fn distinct_in_update_mode_emits_the_rows_each_batch_touched() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = stream_df(&ctx, &stream, None)
        .await
        .select(vec![col("symbol")])
        .unwrap()
        .distinct()
        .unwrap();
    let query = start(df, &sink, OutputMode::Update, dir.path()).await;
    stream
        .push(trades(&[
            (Some("A"), 1.0, 1),
            (Some("B"), 1.0, 2),
            (Some("A"), 1.0, 3),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    let first = sink.batches();
    assert_eq!(sorted_rows(&first), vec!["| A      |", "| B      |"]);
    stream
        .push(trades(&[(Some("A"), 1.0, 4), (None, 1.0, 5)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(sink.batch_ids(), vec![0, 1]);
    let second = sink.batches().split_off(first.len());
    assert_eq!(sorted_rows(&second), vec!["|        |", "| A      |"]);
    query.stop().await.unwrap();
}

/// `window_time(w)` on an aggregated window is its last instant (the end
/// less one unit of the event-time column: here a millisecond), in a
/// stream's output as in the same plan run as a batch job.
#[tokio::test]
async fn window_time_is_the_last_instant_of_an_aggregated_window() {
    use tidemill::engine::window::window_time;
    fn last_instants(df: DataFrame) -> DataFrame {
        df.aggregate(
            vec![tumble(col("event_time"), "10 seconds").alias("w")],
            vec![count(col("price")).alias("n")],
        )
        .unwrap()
        .select(vec![
            cast(window_time(col("w")), DataType::Int64).alias("last_ms"),
            col("n"),
        ])
        .unwrap()
    }
    let input = trades(&[
        (Some("A"), 1.0, 100),
        (Some("B"), 2.0, 109),
        (Some("A"), 3.0, 121),
    ]);
    let expected = vec!["| 109999  | 2 |", "| 129999  | 1 |"];

    let ctx = SessionContext::new();
    let batch = last_instants(ctx.read_batch(input.clone()).unwrap());
    assert_eq!(sorted_rows(&batch.collect().await.unwrap()), expected);

    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let df = last_instants(stream_df(&ctx, &stream, Some("5 seconds")).await);
    let query = start(df, &sink, OutputMode::Update, dir.path()).await;
    stream.push(input).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(sorted_rows(&sink.batches()), expected);
    query.stop().await.unwrap();
}
