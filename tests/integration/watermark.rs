//! Event-time watermarks: computed at the end of a batch for the next,
//! never backwards, recorded in the checkpoint, combined across inputs.

use std::sync::Arc;

use arrow::array::{Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::{MultipleWatermarkPolicy, QueryOptions};

use crate::common::sorted_rows;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]))
}

/// Rows with the given event times, in seconds since the epoch.
fn at(seconds: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..seconds.len() as i64)),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                seconds.iter().map(|s| s * 1000),
            )),
        ],
    )
    .unwrap()
}

fn secs(rfc3339: &Option<String>) -> Option<i64> {
    rfc3339
        .as_ref()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp())
}

async fn start(
    ctx: &SessionContext,
    df: DataFrame,
    checkpoint: &std::path::Path,
    options: QueryOptions,
) -> StreamingQuery {
    let _ = ctx;
    df.write_stream()
        .sink(MemorySink::new())
        .checkpoint(checkpoint.to_str().unwrap())
        .options(options)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn watermark_follows_max_event_time_never_backwards_and_survives_restart() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let df = || async {
        ctx.read_stream(stream.clone())
            .await
            .unwrap()
            .with_watermark("event_time", "10 seconds")
            .unwrap()
    };
    let query = start(&ctx, df().await, dir.path(), Default::default()).await;
    for batch in [at(&[100, 40]), at(&[50]), at(&[200])] {
        stream.push(batch).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    let progress = query.recent_progress();
    let watermarks: Vec<Option<i64>> = progress
        .iter()
        .map(|p| secs(&p.event_time.watermark))
        .collect();
    let maxima: Vec<Option<i64>> = progress.iter().map(|p| secs(&p.event_time.max)).collect();
    // Batch N runs with the watermark computed at the end of batch N-1.
    assert_eq!(watermarks, vec![None, Some(90), Some(90)]);
    assert_eq!(maxima, vec![Some(100), Some(50), Some(200)]);
    assert!(
        progress[2].summary().contains("watermark"),
        "{}",
        progress[2].summary()
    );

    // The offset log records each batch's watermark.
    let entry = std::fs::read_to_string(dir.path().join("offsets/1")).unwrap();
    let body: serde_json::Value = serde_json::from_str(entry.lines().nth(1).unwrap()).unwrap();
    assert_eq!(body["watermark_ms"], 90_000);

    // After a restart the next batch runs with the watermark of batch 2's end.
    let query = start(&ctx, df().await, dir.path(), Default::default()).await;
    stream.push(at(&[10])).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let last = query.last_progress().unwrap();
    assert_eq!(last.batch_id, 3);
    assert_eq!(secs(&last.event_time.watermark), Some(190));
}

#[tokio::test]
async fn several_watermarks_combine_by_min_or_max() {
    for (policy, expected) in [
        (MultipleWatermarkPolicy::Min, 40),
        (MultipleWatermarkPolicy::Max, 95),
    ] {
        let ctx = SessionContext::new();
        let dir = tempfile::tempdir().unwrap();
        let (fast, slow) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
        let df = ctx
            .read_stream(fast.clone())
            .await
            .unwrap()
            .with_watermark("event_time", "5 seconds")
            .unwrap()
            .union(
                ctx.read_stream(slow.clone())
                    .await
                    .unwrap()
                    .with_watermark("event_time", "10 seconds")
                    .unwrap(),
            )
            .unwrap();
        let options = QueryOptions {
            multiple_watermark_policy: policy,
            ..Default::default()
        };
        let query = start(&ctx, df, dir.path(), options).await;
        fast.push(at(&[100])).unwrap();
        slow.push(at(&[50])).unwrap();
        query.process_all_available().await.unwrap();
        fast.push(at(&[101])).unwrap();
        query.process_all_available().await.unwrap();
        query.stop().await.unwrap();
        let last = query.last_progress().unwrap();
        assert_eq!(
            secs(&last.event_time.watermark),
            Some(expected),
            "{policy:?}"
        );
    }
}

#[tokio::test]
async fn with_watermark_is_a_no_op_on_a_batch_dataframe() {
    let ctx = SessionContext::new();
    let batch = ctx.read_batch(at(&[1, 2, 3])).unwrap();
    let plain = sorted_rows(&batch.clone().collect().await.unwrap());
    let marked = batch.with_watermark("event_time", "1 minute").unwrap();
    assert_eq!(sorted_rows(&marked.collect().await.unwrap()), plain);
}

#[tokio::test]
async fn bad_watermark_declarations_are_explained() {
    let ctx = SessionContext::new();
    let df = ctx.read_stream(MemoryStream::new(schema())).await.unwrap();
    let err = df
        .clone()
        .with_watermark("nope", "1 minute")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no column 'nope'") && err.contains("event_time"),
        "{err}"
    );
    let err = df
        .clone()
        .with_watermark("id", "1 minute")
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be a timestamp"), "{err}");
    let err = df
        .with_watermark("event_time", "soon")
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid delay 'soon'"), "{err}");
}

/// A batch of `(id, event time in seconds or null)`.
fn with_nulls(rows: &[(i64, Option<i64>)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMillisecondArray::from_iter(
                rows.iter().map(|r| r.1.map(|s| s * 1000)),
            )),
        ],
    )
    .unwrap()
}

/// As Spark: the watermark ignores a null event time and a stateless query
/// passes the row through; the query goes on.
#[tokio::test]
async fn a_null_event_time_is_passed_through_by_a_stateless_query_and_ignored_by_the_watermark() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "1 minute")
        .unwrap();
    let sink = MemorySink::new();
    let query = df.write_stream().sink(sink.clone()).start().await.unwrap();
    stream
        .push(with_nulls(&[(1, Some(1000)), (2, None)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    stream.push(with_nulls(&[(3, None)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        sink.batches().iter().map(|b| b.num_rows()).sum::<usize>(),
        3
    );
    let progress = query.recent_progress();
    // Batch 1 ran with the watermark of batch 0's only time, 1000 s - 60 s;
    // batch 1's null did not move it.
    assert_eq!(
        secs(&progress.last().unwrap().event_time.watermark),
        Some(940)
    );
    assert_eq!(progress.last().unwrap().event_time.max, None);
    query.stop().await.unwrap();
}

/// As Spark's `window()`: a row with a null event time is in no window, so
/// a windowed aggregation leaves it out; progress counts it and the
/// late-rows sink receives it.
#[tokio::test]
async fn a_windowed_aggregation_leaves_out_rows_without_event_time_and_counts_them() {
    use datafusion::functions_aggregate::expr_fn::count;
    use tidemill::engine::window::tumble;
    for mode in [OutputMode::Append, OutputMode::Update, OutputMode::Complete] {
        let ctx = SessionContext::new();
        let dir = tempfile::tempdir().unwrap();
        let stream = MemoryStream::new(schema());
        let df = ctx
            .read_stream(stream.clone())
            .await
            .unwrap()
            .with_watermark("event_time", "1 second")
            .unwrap()
            .aggregate(
                vec![tumble(col("event_time"), "10 seconds").alias("w")],
                vec![count(col("id")).alias("n")],
            )
            .unwrap()
            .select(vec![
                (cast(get_field(col("w"), "start"), DataType::Int64) / lit(1000)).alias("start"),
                col("n"),
            ])
            .unwrap();
        let (sink, late) = (MemorySink::new(), MemorySink::new());
        let query = df
            .write_stream()
            .sink(sink.clone())
            .late_rows_sink(late.clone())
            .output_mode(mode)
            .checkpoint(dir.path().to_str().unwrap())
            .start()
            .await
            .unwrap();
        stream
            .push(with_nulls(&[
                (1, Some(100)),
                (2, None),
                (3, Some(101)),
                (4, None),
            ]))
            .unwrap();
        query.process_all_available().await.unwrap();
        let first = query.last_progress().unwrap();
        assert_eq!(
            first.state_operators[0].num_rows_without_event_time, 2,
            "{mode:?}"
        );
        assert_eq!(
            first.state_operators[0].num_rows_dropped_by_watermark, 0,
            "{mode:?}"
        );
        assert!(
            first.summary().contains("2 without event time"),
            "{}",
            first.summary()
        );
        // Closes [100, 110) for append mode.
        stream.push(with_nulls(&[(5, Some(200))])).unwrap();
        query.process_all_available().await.unwrap();
        let rows = sorted_rows(&sink.batches());
        assert!(
            rows.iter().any(|r| r.replace(' ', "") == "|100|2|"),
            "{mode:?}: {rows:#?}"
        );
        assert!(
            rows.iter().all(|r| !r.replace(' ', "").starts_with("||")),
            "no null window: {mode:?}: {rows:#?}"
        );
        let late_ids = sorted_rows(&late.batches());
        assert_eq!(late_ids.len(), 2, "{mode:?}: {late_ids:#?}");
        query.stop().await.unwrap();
    }
}
