//! Streaming aggregation: windows × output modes × watermark, late rows,
//! no-data batches, restarts, and the checks made at start.

use std::sync::Arc;

use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
use datafusion::prelude::*;
use tidemill::engine::window::tumble;
use tidemill::prelude::*;
use tidemill::{QueryOptions, StreamingQuery};

use crate::common::sorted_rows;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new("price", DataType::Float64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Trades `(symbol, price, seconds since the epoch)`.
fn trades(rows: &[(Option<&str>, f64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                rows.iter().map(|r| r.2 * 1000),
            )),
        ],
    )
    .unwrap()
}

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
