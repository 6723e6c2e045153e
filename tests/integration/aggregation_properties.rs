//! Batch equals stream: random events, shuffled with disorder bounded by
//! the watermark delay and split into random micro-batches, streamed in
//! append mode give exactly the rows of the same plan run as a batch job;
//! update mode's last row per group equals complete mode's final table.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::array_value_to_string;
use datafusion::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemill::prelude::*;

const DELAY_SECONDS: i64 = 30;

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

/// One event: symbol (or null), a whole-number price (so sums are exact
/// in any order), event time in milliseconds.
type Event = (Option<&'static str>, f64, i64);

fn batch(events: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter(events.iter().map(|e| e.0))),
            Arc::new(Float64Array::from_iter_values(events.iter().map(|e| e.1))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                events.iter().map(|e| e.2),
            )),
        ],
    )
    .unwrap()
}

/// Random events in arrival order: event times over ten minutes, each row
/// arriving at most `DELAY_SECONDS` after rows with later event times, so
/// no row is ever behind the watermark.
fn random_events(rng: &mut StdRng) -> Vec<Event> {
    let n = rng.random_range(1..300);
    let mut events: Vec<(i64, Event)> = (0..n)
        .map(|_| {
            let symbol = [Some("A"), Some("B"), Some("C"), None][rng.random_range(0..4)];
            let time = rng.random_range(0..600_000);
            let price = rng.random_range(1..100) as f64;
            let arrival = time + rng.random_range(0..DELAY_SECONDS * 1000);
            (arrival, (symbol, price, time))
        })
        .collect();
    events.sort_by_key(|(arrival, _)| *arrival);
    events.into_iter().map(|(_, e)| e).collect()
}

/// Splits `events` into random micro-batches.
fn random_batches(rng: &mut StdRng, events: &[Event]) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let take = rng.random_range(1..=rest.len().min(60));
        batches.push(batch(&rest[..take]));
        rest = &rest[take..];
    }
    batches
}

/// How the plan under test groups rows in time.
#[derive(Debug, Clone, Copy)]
enum Windows {
    /// 20-second tumbling windows.
    Tumbling,
    /// 40-second windows sliding by 20 seconds: a row lands in two.
    Sliding,
    /// The same, in Spark's spelling: `GROUP BY window(ts, size, slide)`.
    SparkSliding,
    /// Sessions with a 15-second gap.
    Sessions,
    /// Sessions with a gap per row: 5 seconds for A, 20 for the others.
    SessionsWithGapPerRow,
}

const ALL_WINDOWS: [Windows; 5] = [
    Windows::Tumbling,
    Windows::Sliding,
    Windows::SparkSliding,
    Windows::Sessions,
    Windows::SessionsWithGapPerRow,
];

/// The plan under test, over a table `t`: windows per symbol with
/// aggregates of every kind whose state merges.
fn query(windows: Windows) -> String {
    let aggregates = "count(*) AS n, sum(price) AS total, min(price) AS low, max(price) AS high,
                avg(price) AS mean,
                -- n * sum(x^2) - sum(x)^2, an integer for whole-number prices:
                -- compared exactly although merged states round differently.
                round(stddev(price) * stddev(price) * count(*) * (count(*) - 1)) AS sample_spread,
                round(var_pop(price) * count(*) * count(*)) AS population_spread,
                bool_and(price > 10) AS all_above_10, bool_or(price > 90) AS any_above_90,
                approx_distinct(CAST(price AS BIGINT)) AS distinct_prices,
                approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY price) AS median_ish,
                array_sort(array_agg(price)) AS prices,
                first_value(price ORDER BY event_time, price) AS open,
                last_value(price ORDER BY event_time, price) AS close";
    let window = match windows {
        Windows::Tumbling => "tumble(event_time, '20 seconds')",
        Windows::Sliding => "unnest(hop(event_time, '40 seconds', '20 seconds'))",
        Windows::SparkSliding => {
            return format!(
                "SELECT window(event_time, '40 seconds', '20 seconds')['start'] AS start, symbol,
                        {aggregates}
                 FROM t GROUP BY window(event_time, '40 seconds', '20 seconds'), symbol"
            );
        }
        Windows::Sessions => {
            return format!(
                "SELECT session_window(event_time, '15 seconds')['start'] AS start, symbol,
                        {aggregates}
                 FROM t GROUP BY session_window(event_time, '15 seconds'), symbol"
            );
        }
        Windows::SessionsWithGapPerRow => {
            let gap = "CASE WHEN symbol = 'A' THEN INTERVAL '5 seconds' \
                       ELSE INTERVAL '20 seconds' END";
            return format!(
                "SELECT session_window(event_time, {gap})['start'] AS start, symbol,
                        {aggregates}
                 FROM t GROUP BY session_window(event_time, {gap}), symbol"
            );
        }
    };
    format!(
        "SELECT w.start AS start, symbol, {aggregates}
         FROM (SELECT {window} AS w, symbol, price, event_time FROM t)
         GROUP BY w, symbol"
    )
}

/// Rows as lists of cell texts, in output order.
fn cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for b in batches {
        for row in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| array_value_to_string(c, row).unwrap())
                    .collect(),
            );
        }
    }
    rows
}

/// Asserts `actual` and `expected` hold the same rows, printing only the
/// rows that differ.
fn assert_same_rows(actual: &[Vec<String>], expected: &[Vec<String>], context: &str) {
    let missing: Vec<_> = expected.iter().filter(|r| !actual.contains(r)).collect();
    let extra: Vec<_> = actual.iter().filter(|r| !expected.contains(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && actual.len() == expected.len(),
        "{context}: {} rows, expected {}\nmissing: {missing:?}\nextra: {extra:?}",
        actual.len(),
        expected.len()
    );
}

fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

fn context() -> SessionContext {
    let ctx = SessionContext::new();
    tidemill::engine::window::register_window_functions(&ctx);
    ctx
}

async fn batch_job(events: &[Event], windows: Windows) -> Vec<Vec<String>> {
    let ctx = context();
    ctx.register_batch("t", batch(events)).unwrap();
    let out = ctx
        .sql(&query(windows))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    sorted(cells(&out))
}

async fn stream_job(
    batches: &[RecordBatch],
    windows: Windows,
    mode: OutputMode,
) -> (MemorySink, Vec<u64>) {
    let ctx = context();
    let stream = MemoryStream::new(schema());
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", &format!("{DELAY_SECONDS} seconds"))
        .unwrap();
    ctx.register_table("t", df.into_view()).unwrap();
    let sink = MemorySink::new();
    let query = ctx
        .sql(&query(windows))
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .output_mode(mode)
        .start()
        .await
        .unwrap();
    for b in batches {
        stream.push(b.clone()).unwrap();
        query.process_all_available().await.unwrap();
    }
    // A row far in the future closes every window of the events.
    stream
        .push(batch(&[(Some("flush"), 1.0, 10_000_000)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let dropped = query
        .recent_progress()
        .iter()
        .map(|p| p.state_operators[0].num_rows_dropped_by_watermark)
        .collect();
    (sink, dropped)
}

#[tokio::test]
async fn append_mode_stream_equals_batch_job_on_random_splits() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let windows = ALL_WINDOWS[seed as usize % ALL_WINDOWS.len()];
        let events = random_events(&mut rng);
        let batches = random_batches(&mut rng, &events);
        let expected = batch_job(&events, windows).await;
        let (sink, dropped) = stream_job(&batches, windows, OutputMode::Append).await;
        assert!(dropped.iter().all(|d| *d == 0), "seed {seed}: {dropped:?}");
        let streamed = sorted(cells(&sink.batches()));
        assert_same_rows(
            &streamed,
            &expected,
            &format!(
                "seed {seed}, {windows:?}, {} events in {} batches",
                events.len(),
                batches.len()
            ),
        );
    }
}

#[tokio::test]
async fn update_mode_last_rows_equal_complete_mode_final_table() {
    for seed in 100..106u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        // Windows only: a session's key (its start) changes when sessions
        // merge, so its earlier updates are not overwritten by later ones.
        let windows = ALL_WINDOWS[seed as usize % 3];
        let events = random_events(&mut rng);
        let batches = random_batches(&mut rng, &events);
        let (updates, _) = stream_job(&batches, windows, OutputMode::Update).await;
        let (complete, _) = stream_job(&batches, windows, OutputMode::Complete).await;
        // The last update of each group (window start, symbol).
        let mut last = BTreeMap::new();
        for row in cells(&updates.batches()) {
            last.insert((row[0].clone(), row[1].clone()), row);
        }
        let folded = sorted(last.into_values().collect());
        assert_same_rows(
            &folded,
            &sorted(cells(&complete.batches())),
            &format!("seed {seed}"),
        );
        // And both hold the batch job's rows (plus the flush row's group).
        let mut expected = batch_job(&events, windows).await;
        let flush: Vec<Vec<String>> = folded.iter().filter(|r| r[1] == "flush").cloned().collect();
        expected.extend(flush);
        assert_same_rows(&folded, &expected, &format!("seed {seed}, batch job"));
    }
}
