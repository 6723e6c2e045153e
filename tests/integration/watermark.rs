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

#[tokio::test]
async fn a_null_event_time_fails_the_batch_with_a_clear_error() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "1 minute")
        .unwrap();
    let query = df
        .write_stream()
        .sink(MemorySink::new())
        .start()
        .await
        .unwrap();
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(TimestampMillisecondArray::from(vec![Some(1000), None])),
        ],
    )
    .unwrap();
    stream.push(batch).unwrap();
    let err = query.await_termination().await.unwrap_err().to_string();
    assert!(
        err.contains("null event time") && err.contains("event_time"),
        "{err}"
    );
}
