//! Chained stateful operators in append mode (Spark 3.4+): a window
//! aggregation over another's output (1-minute bars rolled up into
//! 5-minute bars through `window_time`), an aggregation after a
//! stream–stream join, and operators after a deduplication. Each chain,
//! streamed in random micro-batches over one or three partitions, emits
//! exactly the rows of the same plan run as a batch job once every window
//! has closed: no row the first operator emits is dropped as late by the
//! next (Spark's watermark rule for chained operators).

use datafusion::common::{JoinType, ScalarValue};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemill::engine::window::{tumble, window_time};
use tidemill::prelude::*;
use tidemill::{StreamingQuery, TidemillError};

use crate::common::{sorted_rows, timed_rows as rows, timed_schema as schema};

type Row<'a> = (Option<&'a str>, f64, i64);

/// Random rows over `seconds` of event time, in arrival order, each
/// arriving up to 9 s after its event time (under the 10 s watermark
/// delay: none is late); each with a side 0 or 1.
fn arriving(rng: &mut StdRng, n: usize, seconds: i64) -> Vec<(usize, Row<'static>)> {
    let symbols = ["a", "b", "c"];
    let mut rows: Vec<(i64, usize, Row<'static>)> = (0..n)
        .map(|i| {
            let time = rng.random_range(0..seconds);
            let arrival = time * 1000 + rng.random_range(0..9_000);
            let symbol = Some(symbols[rng.random_range(0..symbols.len())]);
            (arrival, rng.random_range(0..2), (symbol, i as f64, time))
        })
        .collect();
    rows.sort_by_key(|(arrival, _, _)| *arrival);
    rows.into_iter().map(|(_, side, row)| (side, row)).collect()
}

/// Streams `rows` through `query` in random micro-batches (side 0 into
/// `left`, side 1 into `right`), then a far-future row on each side that
/// closes every window of the data; returns the output rows without the
/// far-future ones'.
async fn stream_all(
    rng: &mut StdRng,
    rows_in: &[(usize, Row<'_>)],
    streams: [&MemoryStream; 2],
    query: &StreamingQuery,
    sink: &MemorySink,
) -> Vec<String> {
    let mut start = 0;
    while start < rows_in.len() {
        let end = (start + rng.random_range(1..25)).min(rows_in.len());
        for (side, stream) in streams.iter().enumerate() {
            let part: Vec<Row> = rows_in[start..end]
                .iter()
                .filter(|(s, _)| *s == side)
                .map(|(_, r)| *r)
                .collect();
            if !part.is_empty() {
                stream.push(rows(&part)).unwrap();
            }
        }
        query.process_all_available().await.unwrap();
        start = end;
    }
    for stream in streams {
        stream.push(rows(&[(Some("~"), 0.0, 100_000)])).unwrap();
    }
    query.process_all_available().await.unwrap();
    sorted_rows(&sink.batches())
        .into_iter()
        .filter(|l| !l.contains('~'))
        .collect()
}

async fn start(df: DataFrame, sink: &MemorySink, dir: &std::path::Path) -> StreamingQuery {
    df.write_stream()
        .sink(sink.clone())
        .output_mode(OutputMode::Append)
        .checkpoint(dir.to_str().unwrap())
        .start()
        .await
        .unwrap()
}

/// 1-minute bars per symbol, rolled up into 5-minute bars.
fn rollup(df: DataFrame) -> DataFrame {
    df.with_watermark("event_time", "10 seconds")
        .unwrap()
        .aggregate(
            vec![
                tumble(col("event_time"), "1 minute").alias("w"),
                col("symbol"),
            ],
            vec![sum(col("price")).alias("volume"), count(lit(1)).alias("n")],
        )
        .unwrap()
        .aggregate(
            vec![
                tumble(window_time(col("w")), "5 minutes").alias("w5"),
                col("symbol"),
            ],
            vec![
                sum(col("volume")).alias("volume"),
                sum(col("n")).alias("n"),
                count(lit(1)).alias("bars"),
            ],
        )
        .unwrap()
}

#[tokio::test]
async fn a_two_level_window_rollup_equals_the_batch_job() {
    for seed in 0..4_u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let input = {
            let n = rng.random_range(1..300);
            arriving(&mut rng, n, 1200)
        };
        let all: Vec<Row> = input.iter().map(|(_, r)| *r).collect();
        let ctx = SessionContext::new();
        let expected = sorted_rows(
            &rollup(ctx.read_batch(rows(&all)).unwrap())
                .collect()
                .await
                .unwrap(),
        );
        for partitions in [1, 3] {
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let stream = MemoryStream::new(schema());
            let (sink, dir) = (MemorySink::new(), tempfile::tempdir().unwrap());
            let query = start(
                rollup(ctx.read_stream(stream.clone()).await.unwrap()),
                &sink,
                dir.path(),
            )
            .await;
            // One stream: both "sides" go into it.
            let got = stream_all(&mut rng, &input, [&stream, &stream], &query, &sink).await;
            assert_eq!(got, expected, "seed {seed}, {partitions} partitions");
            // Each operator reports its own state.
            let progress = query.last_progress().unwrap();
            assert_eq!(progress.state_operators.len(), 2);
            query.stop().await.unwrap();
        }
    }
}

/// Trades joined with quotes within 5 s, counted per minute of the trade.
fn join_then_count(trades: DataFrame, quotes: DataFrame) -> DataFrame {
    let five = lit(ScalarValue::new_interval_mdn(0, 0, 5_000_000_000));
    let trades = trades
        .with_watermark("event_time", "10 seconds")
        .unwrap()
        .alias("t")
        .unwrap();
    let quotes = quotes
        .with_watermark("event_time", "10 seconds")
        .unwrap()
        .alias("q")
        .unwrap();
    trades
        .join_on(
            quotes,
            JoinType::Inner,
            [
                col("t.symbol").eq(col("q.symbol")),
                col("t.event_time").between(
                    col("q.event_time") - five.clone(),
                    col("q.event_time") + five,
                ),
            ],
        )
        .unwrap()
        .aggregate(
            vec![
                tumble(col("t.event_time"), "1 minute").alias("w"),
                col("t.symbol"),
            ],
            vec![
                count(lit(1)).alias("pairs"),
                sum(col("q.price")).alias("quoted"),
            ],
        )
        .unwrap()
}

#[tokio::test]
async fn an_aggregation_after_a_join_equals_the_batch_job() {
    for seed in 0..4_u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let input = {
            let n = rng.random_range(1..200);
            arriving(&mut rng, n, 600)
        };
        let side = |s: usize| -> Vec<Row> {
            input
                .iter()
                .filter(|(x, _)| *x == s)
                .map(|(_, r)| *r)
                .collect()
        };
        let ctx = SessionContext::new();
        let expected = sorted_rows(
            &join_then_count(
                ctx.read_batch(rows(&side(0))).unwrap(),
                ctx.read_batch(rows(&side(1))).unwrap(),
            )
            .collect()
            .await
            .unwrap(),
        );
        for partitions in [1, 3] {
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let (trades, quotes) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
            let (sink, dir) = (MemorySink::new(), tempfile::tempdir().unwrap());
            let query = start(
                join_then_count(
                    ctx.read_stream(trades.clone()).await.unwrap(),
                    ctx.read_stream(quotes.clone()).await.unwrap(),
                ),
                &sink,
                dir.path(),
            )
            .await;
            let got = stream_all(&mut rng, &input, [&trades, &quotes], &query, &sink).await;
            assert_eq!(got, expected, "seed {seed}, {partitions} partitions");
            query.stop().await.unwrap();
        }
    }
}

/// Replayed rows (same symbol and event time) deduplicated, then counted
/// per minute.
fn dedup_then_count(df: DataFrame) -> DataFrame {
    df.with_watermark("event_time", "10 seconds")
        .unwrap()
        .drop_duplicates(&["symbol", "event_time"])
        .unwrap()
        .aggregate(
            vec![
                tumble(col("event_time"), "1 minute").alias("w"),
                col("symbol"),
            ],
            vec![
                count(lit(1)).alias("n"),
                sum(col("price")).alias("first_prices"),
            ],
        )
        .unwrap()
}

#[tokio::test]
async fn an_aggregation_after_a_deduplication_equals_the_batch_job() {
    for seed in 0..4_u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        // Few distinct times, so keys repeat; every row carries one price
        // per key (the first and the replays agree) so the batch job's
        // choice of row does not matter.
        let input: Vec<(usize, Row)> = {
            let n = rng.random_range(1..300);
            arriving(&mut rng, n, 200)
        }
        .into_iter()
        .map(|(s, (symbol, _, time))| (s, (symbol, time as f64, time)))
        .collect();
        let all: Vec<Row> = input.iter().map(|(_, r)| *r).collect();
        let ctx = SessionContext::new();
        let expected = sorted_rows(
            &dedup_then_count(ctx.read_batch(rows(&all)).unwrap())
                .collect()
                .await
                .unwrap(),
        );
        for partitions in [1, 3] {
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let stream = MemoryStream::new(schema());
            let (sink, dir) = (MemorySink::new(), tempfile::tempdir().unwrap());
            let query = start(
                dedup_then_count(ctx.read_stream(stream.clone()).await.unwrap()),
                &sink,
                dir.path(),
            )
            .await;
            let got = stream_all(&mut rng, &input, [&stream, &stream], &query, &sink).await;
            assert_eq!(got, expected, "seed {seed}, {partitions} partitions");
            query.stop().await.unwrap();
        }
    }
}

/// A chain restarts with each operator's state (`state/0`, `state/1`);
/// the checkpoint refuses a chain whose second window changed size.
#[tokio::test]
async fn a_chain_survives_a_restart_and_a_changed_operator_is_refused() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    let (sink, dir) = (MemorySink::new(), tempfile::tempdir().unwrap());
    let query = start(
        rollup(ctx.read_stream(stream.clone()).await.unwrap()),
        &sink,
        dir.path(),
    )
    .await;
    stream
        .push(rows(&[(Some("a"), 1.0, 10), (Some("a"), 2.0, 70)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert!(dir.path().join("state").join("1").exists());

    let query = start(
        rollup(ctx.read_stream(stream.clone()).await.unwrap()),
        &sink,
        dir.path(),
    )
    .await;
    stream
        .push(rows(&[(Some("a"), 4.0, 130), (Some("a"), 8.0, 1000)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    // One 5-minute bar of three 1-minute bars: 1 + 2 + 4.
    assert_eq!(
        sorted_rows(&sink.batches()),
        ["| {start: 1970-01-01T00:00:00, end: 1970-01-01T00:05:00} | a      | 7.0    | 3 | 3    |"]
    );

    let changed = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "10 seconds")
        .unwrap()
        .aggregate(
            vec![
                tumble(col("event_time"), "1 minute").alias("w"),
                col("symbol"),
            ],
            vec![sum(col("price")).alias("volume"), count(lit(1)).alias("n")],
        )
        .unwrap()
        .aggregate(
            vec![
                tumble(window_time(col("w")), "10 minutes").alias("w5"),
                col("symbol"),
            ],
            vec![
                sum(col("volume")).alias("volume"),
                sum(col("n")).alias("n"),
                count(lit(1)).alias("bars"),
            ],
        )
        .unwrap();
    let err = changed
        .write_stream()
        .sink(MemorySink::new())
        .output_mode(OutputMode::Append)
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, TidemillError::CheckpointMismatch { .. }),
        "{text}"
    );
    assert!(text.contains("operator 1 changed from"), "{text}");
    assert!(text.contains("10 minutes"), "{text}");
}

/// After a join whose condition bounds no time, no watermark holds for its
/// output: a stateful operator there is refused, naming the fix.
#[tokio::test]
async fn a_stateful_operator_after_an_unbounded_join_is_refused() {
    let ctx = SessionContext::new();
    let watermarked = |df: DataFrame, name: &str| {
        df.with_watermark("event_time", "10 seconds")
            .unwrap()
            .alias(name)
            .unwrap()
    };
    let trades = watermarked(
        ctx.read_stream(MemoryStream::new(schema())).await.unwrap(),
        "t",
    );
    let quotes = watermarked(
        ctx.read_stream(MemoryStream::new(schema())).await.unwrap(),
        "q",
    );
    let err = trades
        .join_on(
            quotes,
            JoinType::Inner,
            [col("t.symbol").eq(col("q.symbol"))],
        )
        .unwrap()
        .aggregate(
            vec![tumble(col("t.event_time"), "1 minute").alias("w")],
            vec![count(lit(1))],
        )
        .unwrap()
        .write_stream()
        .output_mode(OutputMode::Append)
        .explain()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("bounds no time"), "{text}");
    assert!(text.contains("Bound the join by time"), "{text}");
}

/// A stored row matched by a new one can be older than the watermark by up
/// to the join's time bound: the aggregation after the join sees the
/// watermark that much earlier (Spark's join output watermark), so such a
/// pair is counted, not dropped as late.
#[tokio::test]
async fn a_joined_row_older_than_the_watermark_is_not_late_for_the_next_operator() {
    let ctx = SessionContext::new();
    let (trades, quotes) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
    let (sink, dir) = (MemorySink::new(), tempfile::tempdir().unwrap());
    let query = start(
        join_then_count(
            ctx.read_stream(trades.clone()).await.unwrap(),
            ctx.read_stream(quotes.clone()).await.unwrap(),
        ),
        &sink,
        dir.path(),
    )
    .await;
    // A trade at 58 s waits; the watermark moves to 71 - 10 = 61 s, past
    // the end of its minute.
    trades.push(rows(&[(Some("a"), 1.0, 58)])).unwrap();
    query.process_all_available().await.unwrap();
    trades.push(rows(&[(Some("b"), 1.0, 71)])).unwrap();
    quotes.push(rows(&[(Some("c"), 1.0, 71)])).unwrap();
    query.process_all_available().await.unwrap();
    // A batch that leaves the watermark at 61 s: the next batch's
    // previous watermark is 61 s too.
    quotes.push(rows(&[(Some("d"), 1.0, 65)])).unwrap();
    query.process_all_available().await.unwrap();
    // A quote at 62 s (not late) matches the trade at 58 s.
    quotes.push(rows(&[(Some("a"), 5.0, 62)])).unwrap();
    query.process_all_available().await.unwrap();
    for stream in [&trades, &quotes] {
        stream.push(rows(&[(Some("~"), 0.0, 100_000)])).unwrap();
    }
    query.process_all_available().await.unwrap();
    let got: Vec<String> = sorted_rows(&sink.batches())
        .into_iter()
        .filter(|l| !l.contains('~'))
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("| a      | 1     | 5.0    |"), "{got:?}");
    let dropped: u64 = query
        .recent_progress()
        .iter()
        .flat_map(|p| p.state_operators.iter())
        .map(|s| s.num_rows_dropped_by_watermark)
        .sum();
    assert_eq!(dropped, 0);
    query.stop().await.unwrap();
}

/// A long run with an advancing watermark keeps each operator of a chain
/// flat: both aggregations of the roll-up evict what the watermark closes.
#[tokio::test]
async fn each_operator_of_a_chain_keeps_its_state_flat() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    let (sink, dir) = (MemorySink::new(), tempfile::tempdir().unwrap());
    let query = start(
        rollup(ctx.read_stream(stream.clone()).await.unwrap()),
        &sink,
        dir.path(),
    )
    .await;
    let mut totals = Vec::new();
    // One trade per symbol every 10 s for 50 minutes of event time.
    for tick in 0..300_i64 {
        let batch: Vec<Row> = ["a", "b", "c"]
            .iter()
            .map(|s| (Some(*s), 1.0, tick * 10))
            .collect();
        stream.push(rows(&batch)).unwrap();
        query.process_all_available().await.unwrap();
        let progress = query.last_progress().unwrap();
        totals.push((
            progress.state_operators[0].num_rows_total,
            progress.state_operators[1].num_rows_total,
        ));
    }
    // At most two open minutes and two open 5-minute bars per symbol.
    for (minutes, bars) in &totals[60..] {
        assert!(*minutes <= 6, "{totals:?}");
        assert!(*bars <= 6, "{totals:?}");
    }
    // Every closed 5-minute bar came out: 9 of the 10, per symbol.
    assert_eq!(sink.num_rows(), 27);
    query.stop().await.unwrap();
}
