//! Streaming deduplication (`drop_duplicates`), with Spark's semantics: the
//! first row of each key is emitted once, within a batch, across batches,
//! across partitions and across a restart; with a watermarked event time
//! among the keys, late rows are dropped and counted and the keys the
//! watermark has passed are evicted; nulls are one key; the same call on a
//! batch DataFrame keeps one row per key.

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema};
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::{QueryOptions, StreamingQuery, TidemillError};

use crate::common::{sorted_rows, timed_rows as events, timed_schema as schema};

/// The symbols (the keys) of `batches`, sorted.
fn ids(batches: &[RecordBatch]) -> Vec<String> {
    let mut ids: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            (0..b.num_rows())
                .map(|i| match ids.is_valid(i) {
                    true => ids.value(i).to_string(),
                    false => "NULL".to_string(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    ids
}

async fn start(
    ctx: &SessionContext,
    stream: &MemoryStream,
    sink: &MemorySink,
    checkpoint: &std::path::Path,
    dedup: impl Fn(DataFrame) -> DataFrame,
) -> StreamingQuery {
    let df = dedup(ctx.read_stream(stream.clone()).await.unwrap());
    df.write_stream()
        .sink(sink.clone())
        .output_mode(OutputMode::Append)
        .checkpoint(checkpoint.to_str().unwrap())
        .options(QueryOptions::default())
        .start()
        .await
        .unwrap()
}

fn by_id(df: DataFrame) -> DataFrame {
    df.drop_duplicates(&["symbol"]).unwrap()
}

/// A query running `dedup` over a fresh stream into a memory sink, with a
/// temporary checkpoint.
struct Running {
    stream: MemoryStream,
    sink: MemorySink,
    query: StreamingQuery,
    _checkpoint: tempfile::TempDir,
}

impl Running {
    async fn start(ctx: &SessionContext, dedup: impl Fn(DataFrame) -> DataFrame) -> Self {
        let checkpoint = tempfile::tempdir().unwrap();
        let stream = MemoryStream::new(schema());
        let sink = MemorySink::new();
        let query = start(ctx, &stream, &sink, checkpoint.path(), dedup).await;
        Self {
            stream,
            sink,
            query,
            _checkpoint: checkpoint,
        }
    }

    /// Pushes `rows` as one batch and runs what they make.
    async fn push(&self, rows: &[(Option<&str>, f64, i64)]) {
        self.stream.push(events(rows)).unwrap();
        self.query.process_all_available().await.unwrap();
    }

    /// The ids emitted so far, sorted.
    fn ids(&self) -> Vec<String> {
        ids(&self.sink.batches())
    }
}

/// Duplicates in one batch, spread over every partition, and in later
/// batches: each key comes out once, whatever the partition count, in many
/// runs (a race between partitions would let a key through twice).
#[tokio::test]
async fn each_key_is_emitted_once_within_and_across_batches_and_partitions() {
    for partitions in [1, 2, 3, 8] {
        for _run in 0..5 {
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let run = Running::start(&ctx, by_id).await;
            // Eight pushed batches: one micro-batch over up to eight partitions.
            for round in 0..8 {
                run.stream
                    .push(events(&[
                        (Some("a"), round as f64, 1),
                        (Some("b"), round as f64, 2),
                        (Some("a"), round as f64 + 100.0, 3),
                    ]))
                    .unwrap();
            }
            run.query.process_all_available().await.unwrap();
            assert_eq!(run.ids(), ["a", "b"], "{partitions} partitions");
            run.push(&[
                (Some("b"), 9.0, 4),
                (Some("c"), 9.0, 5),
                (Some("c"), 10.0, 5),
            ])
            .await;
            assert_eq!(run.ids(), ["a", "b", "c"], "{partitions} partitions");
            let progress = run.query.last_progress().unwrap();
            let state = &progress.state_operators[0];
            assert_eq!(state.operator_name, "dedupe");
            assert_eq!(state.num_rows_total, 3);
            assert_eq!(state.num_rows_updated, 1);
            run.query.stop().await.unwrap();
        }
    }
}

/// The keys seen survive a restart on the same checkpoint.
#[tokio::test]
async fn keys_seen_survive_a_restart() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let sink = MemorySink::new();
    let query = start(&ctx, &stream, &sink, dir.path(), by_id).await;
    stream
        .push(events(&[(Some("a"), 1.0, 1), (Some("b"), 2.0, 2)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    let query = start(&ctx, &stream, &sink, dir.path(), by_id).await;
    stream
        .push(events(&[(Some("a"), 3.0, 3), (Some("c"), 4.0, 4)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(ids(&sink.batches()), ["a", "b", "c"]);
    query.stop().await.unwrap();
}

/// Nulls are one key, as Spark compares them; several key columns key
/// together.
#[tokio::test]
async fn nulls_are_one_key_and_keys_may_be_several_columns() {
    let run = Running::start(&SessionContext::new(), |df| {
        df.drop_duplicates(&["symbol", "price"]).unwrap()
    })
    .await;
    run.push(&[
        (None, 1.0, 1),
        (None, 1.0, 2),
        (None, 2.0, 3),
        (Some("a"), 1.0, 4),
        (Some("a"), 1.0, 5),
    ])
    .await;
    assert_eq!(run.ids(), ["NULL", "NULL", "a"]);
    run.query.stop().await.unwrap();
}

/// With the watermarked event time among the keys: a row at or below the
/// watermark is late (dropped, counted), and the keys the watermark has
/// passed are evicted, so the state stays bounded.
#[tokio::test]
async fn with_an_event_time_key_late_rows_are_dropped_and_passed_keys_evicted() {
    let run = Running::start(&SessionContext::new(), |df| {
        df.with_watermark("event_time", "5 seconds")
            .unwrap()
            .drop_duplicates(&["symbol", "event_time"])
            .unwrap()
    })
    .await;
    run.push(&[
        (Some("a"), 1.0, 10),
        (Some("a"), 2.0, 10),
        (Some("b"), 3.0, 12),
    ])
    .await;
    assert_eq!(run.ids(), ["a", "b"]);
    let state = |run: &Running| run.query.last_progress().unwrap().state_operators[0].clone();
    assert_eq!(state(&run).num_rows_total, 2);

    // The watermark is 12 - 5 = 7 s: nothing passed yet. Then 30 moves it
    // to 25: keys at 10 and 12 go, in a batch without data (as Spark's
    // deduplication runs one), and a row at 12 is late.
    run.push(&[(Some("c"), 4.0, 30)]).await;
    let evicted = state(&run);
    assert_eq!(
        (evicted.num_rows_total, evicted.num_rows_removed),
        (1, 2),
        "evicted without waiting for new rows: {evicted:?}"
    );
    run.push(&[(Some("b"), 5.0, 12), (Some("d"), 6.0, 40)])
        .await;
    assert_eq!(run.ids(), ["a", "b", "c", "d"]);
    let dropped: u64 = run
        .query
        .recent_progress()
        .iter()
        .map(|p| p.state_operators[0].num_rows_dropped_by_watermark)
        .sum();
    assert_eq!(dropped, 1);
    // 40 moves the watermark to 35: the key at 30 goes too, in a batch
    // without data.
    let state = state(&run);
    assert_eq!(
        state.num_rows_total, 1,
        "only the key at 40 is kept: {state:?}"
    );
    run.query.stop().await.unwrap();
}

/// The same function on a batch DataFrame keeps one row per key.
#[tokio::test]
async fn on_a_batch_dataframe_one_row_per_key_is_kept() {
    let ctx = SessionContext::new();
    let df = ctx
        .read_batch(events(&[
            (Some("a"), 1.0, 1),
            (Some("a"), 2.0, 2),
            (None, 3.0, 3),
            (None, 4.0, 4),
        ]))
        .unwrap();
    let out = by_id(df).collect().await.unwrap();
    assert_eq!(ids(&out), ["NULL", "a"]);
    let columns = |s: &Schema| -> Vec<(String, DataType)> {
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    };
    assert_eq!(
        columns(&out[0].schema()),
        columns(&schema()),
        "every column, in order"
    );
}

/// Outside append mode a query holds one stateful operator, as in Spark: a
/// deduplication after an aggregation, or an aggregation after a
/// deduplication, is refused at start in update mode; an unknown key
/// column is an error naming it.
#[tokio::test]
async fn a_second_stateful_operator_and_an_unknown_key_are_refused() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    let df = ctx.read_stream(stream.clone()).await.unwrap();
    let err = df
        .clone()
        .drop_duplicates(&["nope"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("drop_duplicates: column 'nope'"), "{err}");
    let aggregated_then_deduplicated = df
        .clone()
        .aggregate(
            vec![col("symbol")],
            vec![datafusion::functions_aggregate::expr_fn::count(col("price")).alias("n")],
        )
        .unwrap()
        .drop_duplicates(&["n"])
        .unwrap();
    let deduplicated_then_aggregated = by_id(df)
        .aggregate(
            vec![col("symbol")],
            vec![datafusion::functions_aggregate::expr_fn::count(col("price")).alias("n")],
        )
        .unwrap();
    for df in [aggregated_then_deduplicated, deduplicated_then_aggregated] {
        let err = df
            .write_stream()
            .sink(MemorySink::new())
            .output_mode(OutputMode::Update)
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, TidemillError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("append mode only"), "{err}");
    }
}

/// Rows stream through unchanged but for the dropped ones: every column,
/// first rows in their batch.
#[tokio::test]
async fn kept_rows_are_whole() {
    let run = Running::start(&SessionContext::new(), by_id).await;
    run.push(&[(Some("a"), 7.0, 1), (Some("a"), 8.0, 2)]).await;
    assert_eq!(
        sorted_rows(&run.sink.batches()),
        ["| a      | 7.0   | 1970-01-01T00:00:01 |"]
    );
    run.query.stop().await.unwrap();
}

/// `explain` names the deduplication, its keys and its eviction rule.
#[tokio::test]
async fn explain_names_the_deduplication_and_its_eviction() {
    let ctx = SessionContext::new();
    let df = ctx
        .read_stream(MemoryStream::new(schema()))
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap();
    let text = by_id(df.clone()).write_stream().explain().unwrap();
    assert!(
        text.contains("stateful operator 0: Deduplicate keys [symbol]"),
        "{text}"
    );
    assert!(text.contains("every key is kept forever"), "{text}");
    let text = df
        .drop_duplicates(&["symbol", "event_time"])
        .unwrap()
        .write_stream()
        .explain()
        .unwrap();
    assert!(text.contains("event-time key: event_time"), "{text}");
    assert!(text.contains("Deduplicate: keys=["), "{text}");
}

/// SQL's `DISTINCT ON (keys)` over a stream is a deduplication by the keys,
/// then the select list; an `ORDER BY` choosing the first row, or a key
/// that is an expression, is refused at start.
#[tokio::test]
async fn sql_distinct_on_a_stream_deduplicates_it() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    ctx.register_stream("events", stream.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new();
    let query = ctx
        .sql("SELECT DISTINCT ON (symbol) symbol, price * 10 AS tens FROM events")
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap();
    stream
        .push(events(&[
            (Some("a"), 1.0, 1),
            (Some("a"), 2.0, 2),
            (Some("b"), 3.0, 3),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    stream
        .push(events(&[(Some("a"), 4.0, 4), (Some("c"), 5.0, 5)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        [
            "| a      | 10.0 |",
            "| b      | 30.0 |",
            "| c      | 50.0 |"
        ]
    );
    query.stop().await.unwrap();

    for (sql, says) in [
        (
            "SELECT DISTINCT ON (symbol) symbol, price FROM events ORDER BY symbol, price",
            "DISTINCT ON with ORDER BY",
        ),
        (
            "SELECT DISTINCT ON (upper(symbol)) symbol FROM events",
            "keys a stream by an expression",
        ),
    ] {
        let err = ctx
            .sql(sql)
            .await
            .unwrap()
            .write_stream()
            .sink(MemorySink::new())
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, TidemillError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
}

/// `drop_duplicates_within_watermark`: a key is kept from its first row's
/// event time until the watermark passes that time plus the delay, with
/// the event time not among the keys; later, the key may come out again.
/// Without a watermark it is refused at start.
#[tokio::test]
async fn within_the_watermark_a_key_is_kept_for_the_delay_after_its_time() {
    let run = Running::start(&SessionContext::new(), |df| {
        df.with_watermark("event_time", "5 seconds")
            .unwrap()
            .drop_duplicates_within_watermark(&["symbol"])
            .unwrap()
    })
    .await;
    // The key a expires at 10 + 5 = 15 s of watermark.
    run.push(&[(Some("a"), 1.0, 10), (Some("a"), 2.0, 11)])
        .await;
    // Watermark 19 - 5 = 14: a is still kept; this row is a duplicate.
    run.push(&[(Some("a"), 3.0, 19)]).await;
    assert_eq!(run.ids(), ["a"]);
    // Watermark 14 during this batch, then 30 - 5 = 25: a expires.
    run.push(&[(Some("b"), 4.0, 30)]).await;
    // A new a (at 28, above the watermark 25) comes out again; one at
    // 20 is late.
    run.push(&[(Some("a"), 5.0, 28), (Some("a"), 6.0, 20)])
        .await;
    assert_eq!(run.ids(), ["a", "a", "b"]);
    let state = run.query.last_progress().unwrap().state_operators[0].clone();
    assert_eq!(state.num_rows_dropped_by_watermark, 1, "{state:?}");
    run.query.stop().await.unwrap();

    let ctx = SessionContext::new();
    let err = ctx
        .read_stream(MemoryStream::new(schema()))
        .await
        .unwrap()
        .drop_duplicates_within_watermark(&["symbol"])
        .unwrap()
        .write_stream()
        .sink(MemorySink::new())
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the input has no watermark"),
        "{err}"
    );
}

/// Batch equals stream: random events (twelve symbols and nulls, whole
/// seconds over two minutes, arriving at most 30 seconds after later ones,
/// so none is behind the watermark) split into random micro-batches over
/// 1 or 3 partitions, deduplicated by symbol alone and by symbol and
/// watermarked event time, emit each key of the batch job exactly once.
#[tokio::test]
async fn stream_emits_each_key_of_the_batch_job_once() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let symbols: Vec<Option<String>> = (0..12)
        .map(|i| Some(format!("s{i}")))
        .chain([None])
        .collect();
    for seed in 0..12_u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut arriving: Vec<(i64, (Option<&str>, f64, i64))> = (0..rng.random_range(1..200))
            .map(|_| {
                let symbol = symbols[rng.random_range(0..symbols.len())].as_deref();
                let time = rng.random_range(0..120);
                let arrival = time * 1000 + rng.random_range(0..30_000);
                (arrival, (symbol, rng.random_range(1..100) as f64, time))
            })
            .collect();
        arriving.sort_by_key(|(arrival, _)| *arrival);
        let rows: Vec<_> = arriving.into_iter().map(|(_, row)| row).collect();
        for (keys, watermark) in [
            (&["symbol"][..], false),
            (&["symbol", "event_time"][..], true),
        ] {
            let plan = |df: DataFrame| {
                let df = match watermark {
                    true => df.with_watermark("event_time", "30 seconds").unwrap(),
                    false => df,
                };
                df.drop_duplicates(keys)
                    .unwrap()
                    .select(keys.iter().map(|k| col(*k)).collect::<Vec<_>>())
                    .unwrap()
            };
            let ctx = SessionContext::new();
            let expected = sorted_rows(
                &plan(ctx.read_batch(events(&rows)).unwrap())
                    .collect()
                    .await
                    .unwrap(),
            );
            let partitions = [1, 3][seed as usize % 2];
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            let run = Running::start(&ctx, plan).await;
            let mut rest = &rows[..];
            while !rest.is_empty() {
                let take = rng.random_range(1..=rest.len().min(40));
                // Several pushes per micro-batch, spread over partitions.
                for chunk in rest[..take].chunks(7) {
                    run.stream.push(events(chunk)).unwrap();
                }
                run.query.process_all_available().await.unwrap();
                rest = &rest[take..];
            }
            let streamed = sorted_rows(&run.sink.batches());
            assert_eq!(streamed, expected, "seed {seed}, keys {keys:?}");
            run.query.stop().await.unwrap();
        }
    }
}

/// A long run with an advancing watermark keeps the state flat, for both
/// ways of bounding it: an event-time key (keys live until the watermark
/// passes their time) and within the watermark (until it passes their time
/// plus the delay). 150 batches of 40 rows, 4 seconds of event time each,
/// every key repeated: the state holds about the keys of the last delay.
#[tokio::test]
async fn state_stays_flat_as_the_watermark_advances() {
    type Plan = fn(DataFrame) -> DataFrame;
    let plans: [(Plan, u64); 2] = [
        (
            |df| {
                df.with_watermark("event_time", "10 seconds")
                    .unwrap()
                    .drop_duplicates(&["symbol", "event_time"])
                    .unwrap()
            },
            // Keys of the last 10 s (+ one batch): 5 symbols × 14 seconds.
            70,
        ),
        (
            |df| {
                df.with_watermark("event_time", "10 seconds")
                    .unwrap()
                    .drop_duplicates_within_watermark(&["symbol", "price"])
                    .unwrap()
            },
            // (symbol, price) keys first seen in the last 20 s (+ a batch).
            5 * 24,
        ),
    ];
    for (plan, bound) in plans {
        let run = Running::start(&SessionContext::new(), plan).await;
        for b in 0..150_i64 {
            let rows: Vec<(Option<&str>, f64, i64)> = (0..40)
                .map(|i| {
                    let symbol = ["A", "B", "C", "D", "E"][(i % 5) as usize];
                    // Each (symbol, second) twice per batch; prices are
                    // the second, so within-watermark keys advance too.
                    let second = b * 4 + (i / 10);
                    (Some(symbol), second as f64, second)
                })
                .collect();
            run.push(&rows).await;
        }
        let progress = run.query.recent_progress();
        let late: Vec<u64> = progress[progress.len() - 50..]
            .iter()
            .map(|p| p.state_operators[0].num_rows_total)
            .collect();
        let max = *late.iter().max().unwrap();
        assert!(max <= bound, "state rows {late:?}");
        assert!(*late.iter().min().unwrap() >= 20, "state rows {late:?}");
        // Every (symbol, second) once: 150 batches × 4 seconds × 5 symbols.
        assert_eq!(run.ids().len(), 150 * 4 * 5);
        run.query.stop().await.unwrap();
    }
}

/// SQL's form of `drop_duplicates_within_watermark`: `DISTINCT ON
/// (within_watermark(keys…))`. A key is kept until the watermark passes its
/// first row's event time plus the delay, then a row with it is a first
/// row again; the same query as a batch job keeps one row per key.
#[tokio::test]
async fn sql_distinct_on_within_watermark_deduplicates_within_the_watermark() {
    let ctx = SessionContext::new();
    tidemill::engine::window::register_window_functions(&ctx);
    let stream = MemoryStream::new(schema());
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap();
    ctx.register_table("events", df.into_view()).unwrap();
    let sql = "SELECT DISTINCT ON (within_watermark(symbol)) symbol, price FROM events";
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new();
    let query = ctx
        .sql(sql)
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .checkpoint(dir.path().to_str().unwrap())
        .start()
        .await
        .unwrap();
    for rows in [
        &[(Some("a"), 1.0, 10), (Some("a"), 2.0, 12)][..],
        &[(Some("b"), 3.0, 30)],
        // The watermark is 25 s: a's key (10 s + 5 s) has expired.
        &[(Some("a"), 4.0, 27), (Some("b"), 5.0, 31)],
    ] {
        stream.push(events(rows)).unwrap();
        query.process_all_available().await.unwrap();
    }
    assert_eq!(
        sorted_rows(&sink.batches()),
        [
            "| a      | 1.0   |",
            "| a      | 4.0   |",
            "| b      | 3.0   |"
        ]
    );
    let text = ctx
        .sql(sql)
        .await
        .unwrap()
        .write_stream()
        .explain()
        .unwrap();
    assert!(
        text.contains("Deduplicate within watermark keys [symbol]"),
        "{text}"
    );
    query.stop().await.unwrap();

    // As a batch job: one row per key.
    let batch = SessionContext::new();
    tidemill::engine::window::register_window_functions(&batch);
    batch
        .register_batch(
            "events",
            events(&[
                (Some("a"), 1.0, 10),
                (Some("a"), 1.0, 12),
                (Some("b"), 3.0, 30),
            ]),
        )
        .unwrap();
    let rows = sorted_rows(&batch.sql(sql).await.unwrap().collect().await.unwrap());
    assert_eq!(rows, ["| a      | 1.0   |", "| b      | 3.0   |"]);
}

/// Plain `SELECT DISTINCT` keeps Spark's meaning: an aggregation without
/// aggregate functions, which in update mode emits the distinct rows each
/// micro-batch touched (and is refused in append mode without a
/// watermark, see `engine_semantics.rs`).
#[tokio::test]
async fn plain_select_distinct_in_update_mode_emits_the_rows_each_batch_touched() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(schema());
    ctx.register_stream("events", stream.clone()).await.unwrap();
    let sink = MemorySink::new();
    let query = ctx
        .sql("SELECT DISTINCT symbol FROM events")
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .output_mode(OutputMode::Update)
        .start()
        .await
        .unwrap();
    stream
        .push(events(&[
            (Some("a"), 1.0, 1),
            (Some("a"), 2.0, 2),
            (Some("b"), 3.0, 3),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    let first = sink.batches();
    assert_eq!(ids(&first), ["a", "b"]);
    stream
        .push(events(&[(Some("a"), 4.0, 4), (Some("c"), 5.0, 5)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(ids(&sink.batches()[first.len()..]), ["a", "c"]);
    query.stop().await.unwrap();
}
