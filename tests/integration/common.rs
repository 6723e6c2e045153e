//! Helpers shared by the integration tests.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::DataFrame;

/// The schema of the test events: `id`, `symbol`, `price`.
pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
    ]))
}

/// Events with ids `ids`; symbol cycles through A, B, C; price = id * 1.5.
pub fn events(ids: impl IntoIterator<Item = i64>) -> RecordBatch {
    let ids: Vec<i64> = ids.into_iter().collect();
    let symbols: Vec<&str> = ids
        .iter()
        .map(|i| ["A", "B", "C"][(*i % 3) as usize])
        .collect();
    let prices: Vec<f64> = ids.iter().map(|i| *i as f64 * 1.5).collect();
    RecordBatch::try_new(
        events_schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(symbols)),
            Arc::new(Float64Array::from(prices)),
        ],
    )
    .unwrap()
}

/// Every row of `batches` rendered as text, sorted: for comparing results
/// regardless of batch boundaries and order.
pub fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1) // header
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The sorted rows of a batch DataFrame.
pub async fn df_rows(df: DataFrame) -> Vec<String> {
    sorted_rows(&df.collect().await.unwrap())
}

/// Installs a tracing subscriber once (honours RUST_LOG).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Starts a query reading `stream` unchanged into a new memory sink, with
/// `trigger` and a temporary checkpoint.
pub async fn stream_to_memory(
    ctx: &datafusion::prelude::SessionContext,
    stream: &tidemill::MemoryStream,
    trigger: tidemill::Trigger,
) -> (tidemill::MemorySink, tidemill::StreamingQuery) {
    use tidemill::{StreamingContext, StreamingDataFrame};
    let sink = tidemill::MemorySink::new();
    let query = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .trigger(trigger)
        .start()
        .await
        .unwrap();
    (sink, query)
}

/// Runs `df` into a new memory sink with `Trigger::AvailableNow` and the
/// checkpoint `checkpoint`, until the query ends.
pub async fn run_available_now(
    df: DataFrame,
    checkpoint: &std::path::Path,
) -> tidemill::Result<(tidemill::MemorySink, tidemill::StreamingQuery)> {
    use tidemill::StreamingDataFrame;
    let sink = tidemill::MemorySink::new();
    let query = df
        .write_stream()
        .sink(sink.clone())
        .trigger(tidemill::Trigger::AvailableNow)
        .checkpoint(checkpoint.to_str().unwrap())
        .start()
        .await?;
    query.await_termination().await?;
    Ok((sink, query))
}

/// The schema of timed test rows: a nullable `symbol`, a `price` and a
/// millisecond `event_time`.
pub fn timed_schema() -> SchemaRef {
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

/// Timed rows `(symbol, price, seconds since the epoch)`.
pub fn timed_rows(rows: &[(Option<&str>, f64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        timed_schema(),
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
