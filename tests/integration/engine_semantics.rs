//! The engine's behaviour with in-memory sources and sinks: triggers, the
//! query handle, progress, plan validation and stateless operators.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, ListArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::{QueryOptions, TidemillError};

use crate::common::{df_rows, events, events_schema, init_tracing, sorted_rows, stream_to_memory};

/// The transformation used by several tests: a filter, a computed column.
fn transform(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    df.filter(col("price").gt(lit(3.0)))?.select(vec![
        col("id"),
        col("symbol"),
        (col("price") * lit(2.0)).alias("doubled"),
    ])
}

#[tokio::test]
async fn processing_time_trigger_processes_pushed_batches() {
    init_tracing();
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let sink = MemorySink::new();
    let df = transform(ctx.read_stream(stream.clone()).await.unwrap()).unwrap();
    let query = df
        .write_stream()
        .sink(sink.clone())
        .query_name("filtered")
        .trigger(Trigger::ProcessingTime(Duration::ZERO))
        .start()
        .await
        .unwrap();

    stream.push(events(0..5)).unwrap();
    query.process_all_available().await.unwrap();
    stream.push(events(5..10)).unwrap();
    stream.push(events(10..12)).unwrap();
    query.process_all_available().await.unwrap();

    // The memory sink is queryable as a table named after the query.
    let rows = df_rows(
        ctx.sql("SELECT id FROM filtered ORDER BY id")
            .await
            .unwrap(),
    )
    .await;
    let expected: Vec<i64> = (0..12).filter(|i| *i as f64 * 1.5 > 3.0).collect();
    assert_eq!(rows.len(), expected.len());
    assert_eq!(sink.num_rows(), expected.len());

    let progress = query.recent_progress();
    assert!(progress.len() >= 2, "{progress:?}");
    assert_eq!(progress.iter().map(|p| p.num_input_rows).sum::<u64>(), 12);
    let ids: Vec<u64> = progress.iter().map(|p| p.batch_id).collect();
    assert_eq!(
        ids,
        (0..ids.len() as u64).collect::<Vec<_>>(),
        "batch ids are consecutive"
    );
    let last = query.last_progress().unwrap();
    assert_eq!(last.sources.len(), 1);
    assert!(last.sources[0].end_offset.is_some());
    assert_eq!(last.sink.description, "MemorySink");
    let json = serde_json::to_string(&last).unwrap();
    assert!(json.contains("\"num_input_rows\""), "{json}");
    assert!(json.contains("\"wal_commit\""), "{json}");

    assert!(query.is_active());
    assert!(!query.status().is_terminated);
    query.stop().await.unwrap();
    assert!(!query.is_active());
    assert!(query.status().is_terminated);
}

#[tokio::test]
async fn empty_triggers_consume_no_batch_id() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let (sink, query) = stream_to_memory(&ctx, &stream, Trigger::default()).await;
    // Several idle triggers pass.
    query.process_all_available().await.unwrap();
    query.process_all_available().await.unwrap();
    assert!(query.last_progress().is_none());
    assert!(!query.status().is_data_available);
    stream.push(events(0..3)).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(sink.batch_ids(), vec![0]);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn available_now_respects_read_limits_then_stops() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema()).max_rows_per_trigger(4);
    for i in 0..5 {
        stream.push(events(i * 4..i * 4 + 4)).unwrap();
    }
    let (sink, query) = stream_to_memory(&ctx, &stream, Trigger::AvailableNow).await;
    query.await_termination().await.unwrap();
    assert_eq!(
        sink.batch_ids(),
        vec![0, 1, 2, 3, 4],
        "one batch per read limit"
    );
    assert_eq!(sink.num_rows(), 20);
    assert!(!query.is_active());
}

#[tokio::test]
async fn once_trigger_reads_everything_in_one_batch() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema()).max_rows_per_trigger(4);
    for i in 0..3 {
        stream.push(events(i * 4..i * 4 + 4)).unwrap();
    }
    let (sink, query) = stream_to_memory(&ctx, &stream, Trigger::Once).await;
    query.await_termination().await.unwrap();
    assert_eq!(sink.batch_ids(), vec![0]);
    assert_eq!(sink.num_rows(), 12);
}

#[tokio::test]
async fn processing_time_interval_spaces_batches() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let (sink, query) = stream_to_memory(
        &ctx,
        &stream,
        Trigger::ProcessingTime(Duration::from_millis(200)),
    )
    .await;
    stream.push(events(0..1)).unwrap();
    query.process_all_available().await.unwrap();
    stream.push(events(1..2)).unwrap();
    query.process_all_available().await.unwrap();
    let progress = query.recent_progress();
    assert_eq!(progress.len(), 2);
    assert_eq!(sink.num_rows(), 2);
    let t0 = chrono::DateTime::parse_from_rfc3339(&progress[0].timestamp).unwrap();
    let t1 = chrono::DateTime::parse_from_rfc3339(&progress[1].timestamp).unwrap();
    // Triggers fire on the interval, so two batches are at least one interval apart.
    assert!((t1 - t0).num_milliseconds() >= 190, "{t0} {t1}");
    query.stop().await.unwrap();
}

#[tokio::test]
async fn operators_that_cannot_stream_are_rejected_at_start() {
    let ctx = SessionContext::new();
    ctx.register_stream("events", MemoryStream::new(events_schema()))
        .await
        .unwrap();
    let cases = [
        // Append mode (the default) needs a watermarked event-time key;
        // more aggregation cases are in `aggregation.rs`.
        (
            "SELECT symbol, count(*) FROM events GROUP BY symbol",
            "Aggregate in append mode",
        ),
        (
            "SELECT DISTINCT symbol FROM events",
            "Aggregate in append mode",
        ),
        ("SELECT * FROM events ORDER BY id", "Sort"),
        ("SELECT * FROM events LIMIT 3", "Limit"),
        (
            "SELECT id, row_number() OVER (ORDER BY id) FROM events",
            "Window",
        ),
        (
            "SELECT a.id FROM events a FULL JOIN events b ON a.id = b.id",
            "join of two streams",
        ),
    ];
    for (sql, operator) in cases {
        let df = ctx.sql(sql).await.unwrap();
        let err = df
            .write_stream()
            .sink(MemorySink::new())
            .start()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TidemillError::Unsupported { .. }),
            "{sql}: {msg}"
        );
        assert!(msg.contains(operator), "{sql}: {msg}");
    }
    // Complete mode needs an aggregation.
    let df = ctx.sql("SELECT * FROM events").await.unwrap();
    let err = df
        .write_stream()
        .sink(MemorySink::new())
        .output_mode(OutputMode::Complete)
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("complete"), "{err}");
    // No sink.
    let df = ctx.sql("SELECT * FROM events").await.unwrap();
    let err = df.write_stream().start().await.unwrap_err();
    assert!(err.to_string().contains("no sink"), "{err}");
}

#[tokio::test]
async fn collecting_a_streaming_dataframe_explains_what_to_do() {
    let ctx = SessionContext::new();
    let df = ctx
        .read_stream(MemoryStream::new(events_schema()))
        .await
        .unwrap();
    assert!(df.is_streaming());
    let err = df.collect().await.unwrap_err();
    assert!(err.to_string().contains("write_stream()"), "{err}");
    assert!(!ctx.read_batch(events(0..1)).unwrap().is_streaming());
}

/// A batch runs the plan kept from the first batch over its own rows: a
/// join with a static parquet table finds each batch's matches, whatever
/// the keys of the batches before (a hash join's dynamic filter, kept from
/// an earlier batch, would lose them), and whatever the number of record
/// batches (so of filled partitions) a batch brings.
#[tokio::test]
async fn every_batch_joins_its_own_keys_with_a_static_parquet_table() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let ids: Vec<i64> = (0..3000).collect();
    let labels: Vec<String> = ids.iter().map(|i| format!("label-{i}")).collect();
    let table = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("label", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(arrow::array::StringArray::from(labels)),
        ],
    )
    .unwrap();
    let path = dir.path().join("labels.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        table.schema(),
        None,
    )
    .unwrap();
    writer.write(&table).unwrap();
    writer.close().unwrap();
    ctx.register_parquet(
        "labels",
        path.to_str().unwrap(),
        ParquetReadOptions::default(),
    )
    .await
    .unwrap();
    let stream = MemoryStream::new(events_schema());
    ctx.register_stream("events", stream.clone()).await.unwrap();
    let sink = MemorySink::new();
    let sql = "SELECT e.id, l.label FROM events e JOIN labels l ON e.id = l.id";
    let query = ctx
        .sql(sql)
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .start()
        .await
        .unwrap();
    // Disjoint key ranges, one to three record batches per batch.
    let batches: Vec<Vec<std::ops::Range<i64>>> = vec![
        vec![0..5],
        vec![1000..1004, 2990..3010],
        vec![500..501, 1500..1502, 2500..2503],
        vec![3100..3200],
        vec![7..9],
    ];
    let mut expected = Vec::new();
    for batch in &batches {
        for range in batch {
            stream.push(events(range.clone())).unwrap();
            expected.extend(range.clone().filter(|i| *i < 3000));
        }
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    assert!(query.recent_progress().len() >= batches.len());
    let out = sink.batches();
    let mut got: Vec<(i64, String)> = Vec::new();
    for b in &out {
        let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        // Parquet's strings come as string views.
        let label = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        let label = label
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            got.push((id.value(i), label.value(i).to_string()));
        }
    }
    got.sort();
    expected.sort();
    let want: Vec<(i64, String)> = expected
        .iter()
        .map(|i| (*i, format!("label-{i}")))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn stream_static_join_udf_and_unnest_run_per_batch() {
    let ctx = SessionContext::new();
    // A static table of symbol names.
    ctx.sql(
        "CREATE TABLE names (symbol VARCHAR, name VARCHAR) AS VALUES ('A', 'Alpha'), ('B', 'Beta')",
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    // A scalar UDF.
    let triple = create_udf(
        "triple",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let ids = arrays[0].as_any().downcast_ref::<Int64Array>().unwrap();
            let out: Int64Array = ids.iter().map(|v| v.map(|v| v * 3)).collect();
            Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
        }),
    );
    ctx.register_udf(triple);
    let stream = MemoryStream::new(events_schema());
    ctx.register_stream("events", stream.clone()).await.unwrap();
    let sink = MemorySink::new();
    let query = ctx
        .sql(
            "SELECT e.id, n.name, triple(e.id) AS t FROM events e JOIN names n ON e.symbol = n.symbol \
             WHERE e.id < 100",
        )
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .start()
        .await
        .unwrap();
    stream.push(events(0..6)).unwrap();
    query.process_all_available().await.unwrap();
    stream.push(events(6..9)).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    // The same SQL over the same rows as a batch table gives the same rows.
    ctx.register_batch(
        "events_batch",
        arrow::compute::concat_batches(&events_schema(), &[events(0..6), events(6..9)]).unwrap(),
    )
    .unwrap();
    let expected = df_rows(
        ctx.sql(
            "SELECT e.id, n.name, triple(e.id) AS t FROM events_batch e JOIN names n ON e.symbol = n.symbol \
             WHERE e.id < 100",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(expected.len(), 6, "ids 0..9 with symbol A or B");
    assert_eq!(sorted_rows(&sink.batches()), expected);

    // Unnest: a list column becomes one row per element.
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new(
            "vs",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
            true,
        ),
    ]));
    let lists = MemoryStream::new(schema.clone());
    let sink = MemorySink::new();
    let query = ctx
        .read_stream(lists.clone())
        .await
        .unwrap()
        .unnest_columns(&["vs"])
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .start()
        .await
        .unwrap();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
                Some(vec![Some(10), Some(11)]),
                Some(vec![Some(20)]),
            ])),
        ],
    )
    .unwrap();
    lists.push(batch).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(sink.num_rows(), 3);
}

#[tokio::test]
async fn stream_on_the_wrong_side_of_an_outer_join_is_rejected() {
    let ctx = SessionContext::new();
    ctx.sql("CREATE TABLE names (symbol VARCHAR, name VARCHAR) AS VALUES ('A', 'Alpha')")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    ctx.register_stream("events", MemoryStream::new(events_schema()))
        .await
        .unwrap();
    let ok = ctx
        .sql("SELECT * FROM events e LEFT JOIN names n ON e.symbol = n.symbol")
        .await
        .unwrap();
    let q = ok
        .write_stream()
        .sink(MemorySink::new())
        .start()
        .await
        .unwrap();
    q.stop().await.unwrap();
    for sql in [
        "SELECT * FROM names n LEFT JOIN events e ON e.symbol = n.symbol",
        "SELECT * FROM events e FULL JOIN names n ON e.symbol = n.symbol",
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
        assert!(err.to_string().contains("join"), "{sql}: {err}");
    }
    let err = ctx
        .sql("SELECT symbol FROM events UNION ALL SELECT symbol FROM names")
        .await
        .unwrap()
        .write_stream()
        .sink(MemorySink::new())
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Union"), "{err}");
}

#[tokio::test]
async fn same_function_runs_as_batch_and_as_stream() {
    let ctx = SessionContext::new();
    let all: Vec<RecordBatch> = (0..8).map(|i| events(i * 10..i * 10 + 10)).collect();
    let batch = transform(ctx.read_batches(all.clone()).unwrap()).unwrap();
    let expected = df_rows(batch).await;

    let stream = MemoryStream::new(events_schema()).max_rows_per_trigger(25);
    stream.push_all(all).unwrap();
    let sink = MemorySink::new();
    let query = transform(ctx.read_stream(stream).await.unwrap())
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    assert!(sink.batch_ids().len() > 1);
    assert_eq!(sorted_rows(&sink.batches()), expected);
}

#[tokio::test]
async fn a_failing_batch_stops_the_query_with_its_error() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    // Division by zero fails at execution time, inside a batch.
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .select(vec![(col("id") / (col("id") - col("id"))).alias("boom")])
        .unwrap();
    let query = df
        .write_stream()
        .sink(MemorySink::new())
        .query_name("boom")
        .options(QueryOptions::default())
        .start()
        .await
        .unwrap();
    stream.push(events(1..3)).unwrap();
    let err = query.await_termination().await.unwrap_err();
    assert!(err.to_string().contains("query boom terminated"), "{err}");
    assert!(err.to_string().contains("batch 0"), "{err}");
    assert!(query.error().is_some());
    assert!(query.status().is_terminated);
    // process_all_available reports the failure too.
    assert!(query.process_all_available().await.is_err());
}

#[tokio::test]
async fn stream_equals_batch_on_random_splits_and_read_limits() {
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("SPLIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("SPLIT_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..12 {
        // Random rows, split into random (possibly empty) batches.
        let total = rng.random_range(0..400i64);
        let mut batches = Vec::new();
        let mut next = 0;
        while next < total {
            let size = rng.random_range(0..60).min(total - next);
            batches.push(events(next..next + size));
            next += size;
        }
        let ctx = SessionContext::new();
        let expected = if batches.is_empty() {
            Vec::new()
        } else {
            df_rows(transform(ctx.read_batches(batches.clone()).unwrap()).unwrap()).await
        };
        let mut stream = MemoryStream::new(events_schema());
        if rng.random_bool(0.7) {
            stream = stream.max_rows_per_trigger(rng.random_range(1..150));
        }
        stream.push_all(batches).unwrap();
        let sink = MemorySink::new();
        let trigger = if rng.random_bool(0.5) {
            Trigger::AvailableNow
        } else {
            Trigger::ProcessingTime(Duration::ZERO)
        };
        let query = transform(ctx.read_stream(stream).await.unwrap())
            .unwrap()
            .write_stream()
            .sink(sink.clone())
            .trigger(trigger)
            .start()
            .await
            .unwrap();
        query.process_all_available().await.unwrap();
        query.stop().await.unwrap();
        assert_eq!(
            sorted_rows(&sink.batches()),
            expected,
            "seed {seed}, round {round}, trigger {trigger:?}"
        );
    }
}

#[tokio::test]
async fn now_is_each_batch_planning_time() {
    // DataFusion folds `now()` into a constant when it optimizes a plan;
    // a stream's plan is optimized for each batch, as Spark's
    // `current_timestamp()` takes each batch's time.
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let sink = MemorySink::new();
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .select(vec![
            col("id"),
            cast(now(), DataType::Int64).alias("planned_at"),
        ])
        .unwrap();
    let query = df
        .write_stream()
        .sink(sink.clone())
        .trigger(Trigger::ProcessingTime(Duration::ZERO))
        .start()
        .await
        .unwrap();
    stream.push(events(0..3)).unwrap();
    query.process_all_available().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream.push(events(3..6)).unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    let batches = sink.batches();
    let times: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let t = b.column_by_name("planned_at").unwrap();
            t.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(times.len(), 6);
    // One time per batch, later in the later batch.
    assert!(times[..3].iter().all(|&t| t == times[0]), "{times:?}");
    assert!(times[3..].iter().all(|&t| t == times[3]), "{times:?}");
    assert!(times[3] >= times[0] + 20_000_000, "{times:?}");
}

/// A query over a view of a stream is a stream: `is_streaming` sees
/// through the view (as written, the plan keeps it as a scan of the view),
/// so `with_watermark` on it is not silently a no-op.
#[tokio::test]
async fn a_view_of_a_stream_is_streaming() {
    let ctx = SessionContext::new();
    let stream = ctx
        .read_stream(MemoryStream::new(events_schema()))
        .await
        .unwrap();
    ctx.register_table(
        "cheap",
        stream
            .filter(col("price").lt(lit(10.0)))
            .unwrap()
            .into_view(),
    )
    .unwrap();
    let df = ctx.sql("SELECT id FROM cheap").await.unwrap();
    assert!(df.is_streaming());
    let in_subquery = ctx
        .sql("SELECT 1 AS one WHERE EXISTS (SELECT id FROM cheap)")
        .await
        .unwrap();
    assert!(in_subquery.is_streaming());
    ctx.register_batch("static_events", events(0..3)).unwrap();
    assert!(
        !ctx.sql("SELECT id FROM static_events")
            .await
            .unwrap()
            .is_streaming()
    );
}
