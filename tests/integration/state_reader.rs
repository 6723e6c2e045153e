//! Reading operators' state back from a checkpoint (Spark's state data
//! source): `tidemill::state_stores` and `tidemill::read_state` on the
//! checkpoints of real queries — a windowed aggregation, a deduplication,
//! a stream–stream join, a stateful processor's variables — at their last
//! and at earlier batches, with the exact entries their input makes;
//! errors for what is not there (an operator, a store, a batch not
//! committed or purged); `tidemill state` as a user runs it (table, JSON
//! lines, parquet, errors); and proof that reading changes no file of a
//! checkpoint, also one a query is running on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use tidemill::engine::Location;
use tidemill::engine::window::tumble;
use tidemill::prelude::*;
use tidemill::processor::{
    GroupKey, KeyRows, ListState, MapState, ProcessorContext, ProcessorResult, StateDeclarations,
    StatefulProcessor, TimeMode, ValueState,
};
use tidemill::{QueryOptions, StreamingQuery, TidemillError};

use crate::cli::{text, tidemill};
use crate::common::{timed_rows as rows, timed_schema as schema};

/// The checkpoint at `dir`, resolved as the reader takes it.
fn location(ctx: &SessionContext, dir: &Path) -> Location {
    Location::resolve(dir.to_str().unwrap(), &ctx.runtime_env()).unwrap()
}

/// Starts `df` into a new memory sink in `mode` with the checkpoint `dir`.
async fn start(
    df: DataFrame,
    mode: OutputMode,
    dir: &Path,
    options: QueryOptions,
) -> StreamingQuery {
    df.write_stream()
        .sink(MemorySink::new())
        .output_mode(mode)
        .checkpoint(dir.to_str().unwrap())
        .options(options)
        .start()
        .await
        .unwrap()
}

/// The value of `array` at `row` as text; a struct as `{a, b}` (its
/// children's values, without their names).
fn cell(array: &dyn Array, row: usize) -> String {
    if let Some(fields) = array.as_struct_opt() {
        let children: Vec<String> = fields
            .columns()
            .iter()
            .map(|c| cell(c.as_ref(), row))
            .collect();
        return format!("{{{}}}", children.join(", "));
    }
    let options = FormatOptions::default().with_null("null");
    ArrayFormatter::try_new(array, &options)
        .unwrap()
        .value(row)
        .to_string()
}

/// The entries of `batches` as `key | value | expires_at` (without the
/// partition), in their order; a missing key or value column is `-`.
fn entries(batches: &[RecordBatch]) -> Vec<String> {
    let mut all = Vec::new();
    for batch in batches {
        let column = |name: &str, row: usize| match batch.column_by_name(name) {
            Some(c) => cell(c.as_ref(), row),
            None => "-".to_string(),
        };
        for row in 0..batch.num_rows() {
            all.push(format!(
                "{} | {} | {}",
                column("key", row),
                column("value", row),
                column("expires_at", row)
            ));
        }
    }
    all
}

/// Checks that each entry's partition is the one its key bytes (the key
/// columns in arrow's row format, as stored) hash to, and that entries are
/// sorted by partition, then key bytes.
fn check_partitions_and_order(batches: &[RecordBatch], num_partitions: usize) {
    let mut previous: Option<(u32, Vec<u8>)> = None;
    for batch in batches {
        let key = batch.column_by_name("key").unwrap().as_struct();
        let converter = RowConverter::new(
            key.columns()
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )
        .unwrap();
        let bytes = converter.convert_columns(key.columns()).unwrap();
        let partition = batch
            .column_by_name("partition")
            .unwrap()
            .as_primitive::<arrow::datatypes::UInt32Type>();
        for row in 0..batch.num_rows() {
            let p = partition.value(row);
            let key = bytes.row(row).data().to_vec();
            assert_eq!(
                p as usize,
                tidemill::state::partition_for_key(&key, num_partitions),
                "row {row}"
            );
            let here = (p, key);
            assert!(
                previous.as_ref().is_none_or(|prev| *prev < here),
                "row {row}"
            );
            previous = Some(here);
        }
    }
}

/// `read_state(…)` collected.
async fn read(
    ctx: &SessionContext,
    dir: &Path,
    operator: usize,
    store: Option<&str>,
    batch: Option<u64>,
) -> tidemill::Result<Vec<RecordBatch>> {
    let df = tidemill::read_state(ctx, &location(ctx, dir), operator, store, batch).await?;
    Ok(df.collect().await?)
}

/// The last batch the query ran.
fn last_batch(query: &StreamingQuery) -> u64 {
    query.last_progress().unwrap().batch_id
}

/// Per 10-second window and symbol: count and sum of price, in append
/// mode (a 5-second watermark).
async fn windowed_counts(ctx: &SessionContext, stream: &MemoryStream) -> DataFrame {
    ctx.read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap()
        .aggregate(
            vec![
                tumble(col("event_time"), "10 seconds").alias("w"),
                col("symbol"),
            ],
            vec![
                count(col("price")).alias("n"),
                sum(col("price")).alias("total"),
            ],
        )
        .unwrap()
}

#[tokio::test]
async fn a_windowed_aggregations_groups_are_read_at_the_last_and_an_earlier_batch() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let df = windowed_counts(&ctx, &stream).await;
    let query = start(df, OutputMode::Append, dir.path(), QueryOptions::default()).await;

    // Batch 0: window [100 s, 110 s) gets a twice and b once.
    stream
        .push(rows(&[
            (Some("a"), 1.0, 101),
            (Some("b"), 2.0, 102),
            (Some("a"), 3.0, 105),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(last_batch(&query), 0);
    // Batch 1: a in [110, 120); the watermark becomes 107.
    stream.push(rows(&[(Some("a"), 4.0, 112)])).unwrap();
    query.process_all_available().await.unwrap();
    // b at 121 moves the watermark to 116: [100, 110) closes (emitted and
    // evicted by a batch without data).
    stream.push(rows(&[(Some("b"), 5.0, 121)])).unwrap();
    query.process_all_available().await.unwrap();
    let last = last_batch(&query);
    assert!(last >= 2, "{last}");
    query.stop().await.unwrap();

    let stores = tidemill::state_stores(&location(&ctx, dir.path()), None)
        .await
        .unwrap();
    assert_eq!(stores.len(), 1, "{stores:#?}");
    let store = &stores[0];
    assert_eq!((store.operator, store.store.as_str()), (0, ""));
    assert_eq!((store.batch, store.version), (last, last + 1));
    assert_eq!(store.rows, 2);
    assert!(
        store
            .description
            .as_deref()
            .unwrap()
            .starts_with("StreamingAggregate"),
        "{store:?}"
    );
    let names = |fields: &arrow::datatypes::Fields| -> Vec<String> {
        fields.iter().map(|f| f.name().clone()).collect()
    };
    assert_eq!(names(&store.key_columns).len(), 2);
    assert_eq!(names(&store.key_columns)[1], "symbol");
    assert!(
        matches!(store.key_columns[0].data_type(), DataType::Struct(f) if f.len() == 2),
        "{store:?}"
    );
    assert_eq!(store.value_columns.len(), 2, "{store:?}");
    assert_eq!(store.value_columns[0].data_type(), &DataType::Int64);
    assert_eq!(store.value_columns[1].data_type(), &DataType::Float64);

    // The last batch: [110, 120) for a and [120, 130) for b; each group
    // expires when the watermark reaches its window's end.
    let latest = read(&ctx, dir.path(), 0, None, None).await.unwrap();
    assert_eq!(
        latest[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        ["partition", "key", "value", "expires_at"]
    );
    let mut got = entries(&latest);
    got.sort();
    assert_eq!(
        got,
        [
            "{{1970-01-01T00:01:50, 1970-01-01T00:02:00}, a} | {1, 4.0} | 1970-01-01T00:02:00",
            "{{1970-01-01T00:02:00, 1970-01-01T00:02:10}, b} | {1, 5.0} | 1970-01-01T00:02:10",
        ]
    );
    check_partitions_and_order(&latest, store.partitions);
    assert_eq!(
        read(&ctx, dir.path(), 0, None, Some(last)).await.unwrap(),
        latest
    );

    // Batch 0: the partial counts and sums of [100, 110).
    let first = read(&ctx, dir.path(), 0, None, Some(0)).await.unwrap();
    let mut got = entries(&first);
    got.sort();
    assert_eq!(
        got,
        [
            "{{1970-01-01T00:01:40, 1970-01-01T00:01:50}, a} | {2, 4.0} | 1970-01-01T00:01:50",
            "{{1970-01-01T00:01:40, 1970-01-01T00:01:50}, b} | {1, 2.0} | 1970-01-01T00:01:50",
        ]
    );
    check_partitions_and_order(&first, store.partitions);
    let at_0 = tidemill::state_stores(&location(&ctx, dir.path()), Some(0))
        .await
        .unwrap();
    assert_eq!((at_0[0].batch, at_0[0].rows), (0, 2));

    // Batch 1: both windows of a, b's first.
    let second = entries(&read(&ctx, dir.path(), 0, Some(""), Some(1)).await.unwrap());
    assert_eq!(second.len(), 3, "{second:?}");
    assert!(
        second.contains(
            &"{{1970-01-01T00:01:50, 1970-01-01T00:02:00}, a} | {1, 4.0} | 1970-01-01T00:02:00"
                .to_string()
        ),
        "{second:?}"
    );
}

#[tokio::test]
async fn a_deduplications_keys_are_read_without_a_value_column() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .with_watermark("event_time", "5 seconds")
        .unwrap()
        .drop_duplicates(&["symbol", "event_time"])
        .unwrap();
    let query = start(df, OutputMode::Append, dir.path(), QueryOptions::default()).await;
    stream
        .push(rows(&[
            (Some("a"), 1.0, 10),
            (Some("a"), 2.0, 10),
            (Some("b"), 3.0, 12),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    // 31 moves the watermark to 26; a batch without data (2) evicts the
    // keys at 10 and 12. 40 moves it to 35: batch 4 evicts those at 30
    // and 31.
    stream
        .push(rows(&[(Some("c"), 4.0, 30), (None, 5.0, 31)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(last_batch(&query), 2);
    stream.push(rows(&[(Some("d"), 6.0, 40)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(last_batch(&query), 4);
    query.stop().await.unwrap();

    let stores = tidemill::state_stores(&location(&ctx, dir.path()), None)
        .await
        .unwrap();
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].value_columns.len(), 0);
    assert_eq!(
        stores[0]
            .key_columns
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        ["symbol", "event_time"]
    );
    assert_eq!(
        stores[0].description.as_deref(),
        Some("Deduplicate keys [symbol, event_time]")
    );

    let first = read(&ctx, dir.path(), 0, None, Some(0)).await.unwrap();
    assert_eq!(
        first[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        ["partition", "key", "expires_at"]
    );
    let mut got = entries(&first);
    got.sort();
    assert_eq!(
        got,
        [
            "{a, 1970-01-01T00:00:10} | - | 1970-01-01T00:00:10",
            "{b, 1970-01-01T00:00:12} | - | 1970-01-01T00:00:12",
        ]
    );
    check_partitions_and_order(&first, stores[0].partitions);

    let second = read(&ctx, dir.path(), 0, None, Some(1)).await.unwrap();
    let mut got = entries(&second);
    got.sort();
    assert_eq!(
        got,
        [
            "{a, 1970-01-01T00:00:10} | - | 1970-01-01T00:00:10",
            "{b, 1970-01-01T00:00:12} | - | 1970-01-01T00:00:12",
            "{c, 1970-01-01T00:00:30} | - | 1970-01-01T00:00:30",
            "{null, 1970-01-01T00:00:31} | - | 1970-01-01T00:00:31",
        ]
    );

    // Batch 2, without data: a and b were evicted.
    let third = read(&ctx, dir.path(), 0, None, Some(2)).await.unwrap();
    let mut got = entries(&third);
    got.sort();
    assert_eq!(
        got,
        [
            "{c, 1970-01-01T00:00:30} | - | 1970-01-01T00:00:30",
            "{null, 1970-01-01T00:00:31} | - | 1970-01-01T00:00:31",
        ]
    );

    // The last batch: the keys at 30 and 31 (a null symbol) were evicted
    // too.
    let latest = read(&ctx, dir.path(), 0, None, None).await.unwrap();
    let mut got = entries(&latest);
    got.sort();
    assert_eq!(got, ["{d, 1970-01-01T00:00:40} | - | 1970-01-01T00:00:40",]);
    check_partitions_and_order(&latest, stores[0].partitions);
}

/// An interval of `ms` milliseconds.
fn millis(ms: i64) -> Expr {
    lit(ScalarValue::new_interval_mdn(0, 0, ms * 1_000_000))
}

/// `l` inner-joined with `r` on the symbol, their event times at most 5
/// seconds apart, both with a 10-second watermark.
async fn joined(ctx: &SessionContext, left: &MemoryStream, right: &MemoryStream) -> DataFrame {
    let side = |df: DataFrame, alias: &str| {
        df.with_watermark("event_time", "10 seconds")
            .unwrap()
            .alias(alias)
            .unwrap()
    };
    let l = side(ctx.read_stream(left.clone()).await.unwrap(), "l");
    let r = side(ctx.read_stream(right.clone()).await.unwrap(), "r");
    l.join_on(
        r,
        JoinType::Inner,
        vec![
            col("l.symbol").eq(col("r.symbol")),
            col("l.event_time").between(
                col("r.event_time") - millis(5_000),
                col("r.event_time") + millis(5_000),
            ),
        ],
    )
    .unwrap()
    .select(vec![col("l.symbol"), col("l.price"), col("r.price")])
    .unwrap()
}

#[tokio::test]
async fn a_joins_stored_rows_are_read_on_both_sides() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let (left, right) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
    let df = joined(&ctx, &left, &right).await;
    let query = start(df, OutputMode::Append, dir.path(), QueryOptions::default()).await;
    left.push(rows(&[(Some("a"), 1.0, 100), (Some("b"), 2.0, 101)]))
        .unwrap();
    right.push(rows(&[(Some("a"), 3.0, 102)])).unwrap();
    query.process_all_available().await.unwrap();
    let first_batch = last_batch(&query);
    right
        .push(rows(&[(Some("b"), 4.0, 104), (Some("c"), 5.0, 130)]))
        .unwrap();
    query.process_all_available().await.unwrap();
    let last = last_batch(&query);
    query.stop().await.unwrap();

    let stores = tidemill::state_stores(&location(&ctx, dir.path()), None)
        .await
        .unwrap();
    let named: Vec<(usize, &str)> = stores
        .iter()
        .map(|s| (s.operator, s.store.as_str()))
        .collect();
    assert_eq!(named, [(0, "left"), (0, "right")], "{stores:#?}");
    for store in &stores {
        assert!(
            store
                .description
                .as_deref()
                .unwrap()
                .starts_with("StreamJoin Inner on [l.symbol = r.symbol]"),
            "{store:?}"
        );
        let keys: Vec<&str> = store
            .key_columns
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(keys[1..], ["time_ms", "row_number"], "{store:?}");
        let values: Vec<&str> = store
            .value_columns
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            values,
            ["matched", "symbol", "price", "event_time"],
            "{store:?}"
        );
    }

    // The first batch: each side's rows, keyed by symbol, time and row
    // number; each expires when the watermark passes its time plus the
    // 5-second bound.
    let side = |store: &'static str, batch: u64| {
        let ctx = ctx.clone();
        let dir = dir.path().to_path_buf();
        async move {
            let mut got = entries(&read(&ctx, &dir, 0, Some(store), Some(batch)).await.unwrap());
            got.sort();
            got
        }
    };
    assert_eq!(first_batch, 0);
    assert_eq!(
        side("left", 0).await,
        [
            "{a, 100000, 0} | {true, a, 1.0, 1970-01-01T00:01:40} | 1970-01-01T00:01:45",
            "{b, 101000, 0} | {false, b, 2.0, 1970-01-01T00:01:41} | 1970-01-01T00:01:46",
        ]
    );
    assert_eq!(
        side("right", 0).await,
        ["{a, 102000, 0} | {true, a, 3.0, 1970-01-01T00:01:42} | 1970-01-01T00:01:47"]
    );
    // The last batch: the right side's new rows, b matched on arrival. An
    // inner join marks a stored row matched only when it arrives (a
    // stored row matched later keeps its flag: only an outer join's
    // preserved side needs it).
    assert_eq!(side("left", last).await, side("left", 0).await);
    assert_eq!(
        side("right", last).await,
        [
            "{a, 102000, 0} | {true, a, 3.0, 1970-01-01T00:01:42} | 1970-01-01T00:01:47",
            "{b, 104000, 0} | {true, b, 4.0, 1970-01-01T00:01:44} | 1970-01-01T00:01:49",
            "{c, 130000, 0} | {false, c, 5.0, 1970-01-01T00:02:10} | 1970-01-01T00:02:15",
        ]
    );
    let counted: Vec<u64> = tidemill::state_stores(&location(&ctx, dir.path()), Some(0))
        .await
        .unwrap()
        .iter()
        .map(|s| s.rows)
        .collect();
    assert_eq!(counted, [2, 1]);

    // A join has two stores: one must be named.
    let err = read(&ctx, dir.path(), 0, None, None).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, TidemillError::Config(_)), "{message}");
    assert!(
        message.contains("has several state stores: 'left', 'right'; name one"),
        "{message}"
    );
    let err = read(&ctx, dir.path(), 0, Some("middle"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no state store 'middle'; its stores: 'left', 'right'"),
        "{err}"
    );
}

/// Deduplication by symbol (keys only, no expiry).
async fn dedup_by_symbol(ctx: &SessionContext, stream: &MemoryStream) -> DataFrame {
    ctx.read_stream(stream.clone())
        .await
        .unwrap()
        .drop_duplicates(&["symbol"])
        .unwrap()
}

/// Key `k<i>`, one row.
fn key_row(i: usize) -> RecordBatch {
    let symbol = format!("k{i:02}");
    rows(&[(Some(symbol.as_str()), i as f64, i as i64)])
}

/// The symbols of a dedup's entries, sorted.
fn symbols(batches: &[RecordBatch]) -> Vec<String> {
    let mut all: Vec<String> = entries(batches)
        .iter()
        .map(|e| {
            e.split(" | ")
                .next()
                .unwrap()
                .trim_matches(['{', '}'])
                .to_string()
        })
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn purged_uncommitted_and_unknown_are_errors_that_say_what_there_is() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let df = dedup_by_symbol(&ctx, &stream).await;
    // State versions older than the last two are purged every 10 batches.
    let options = QueryOptions {
        min_state_versions_to_retain: 2,
        ..QueryOptions::default()
    };
    let query = start(df, OutputMode::Append, dir.path(), options).await;
    for i in 0..12 {
        stream.push(key_row(i)).unwrap();
        query.process_all_available().await.unwrap();
    }
    assert_eq!(last_batch(&query), 11);
    query.stop().await.unwrap();
    let checkpoint = location(&ctx, dir.path());

    // Batch 10 purged the versions below 9: batch 8 (version 9) is the
    // oldest left.
    let err = read(&ctx, dir.path(), 0, None, Some(0)).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, TidemillError::Config(_)), "{message}");
    assert!(
        message.contains(&format!(
            "batch 0 of checkpoint {checkpoint} can no longer be read"
        )) && message.contains("has been purged")
            && message.contains("the oldest batch it can be read at is 8"),
        "{message}"
    );
    let err = tidemill::state_stores(&checkpoint, Some(7))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the oldest batch it can be read at is 8"),
        "{err}"
    );
    let oldest = read(&ctx, dir.path(), 0, None, Some(8)).await.unwrap();
    assert_eq!(
        symbols(&oldest),
        (0..9).map(|i| format!("k{i:02}")).collect::<Vec<_>>()
    );
    assert_eq!(
        symbols(&read(&ctx, dir.path(), 0, None, None).await.unwrap()).len(),
        12
    );

    // Not committed.
    let err = read(&ctx, dir.path(), 0, None, Some(12))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "batch 12 of checkpoint {checkpoint} has not committed: the last committed batch is 11"
        )),
        "{err}"
    );
    // No such operator.
    let err = read(&ctx, dir.path(), 1, None, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "checkpoint {checkpoint} has no stateful operator 1; its operators: 0 ("
        )),
        "{err}"
    );
    // An operator with one store: no other name.
    let err = read(&ctx, dir.path(), 0, Some("left"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no state store 'left': it has one store"),
        "{err}"
    );
    // Not a checkpoint.
    let empty = tempfile::tempdir().unwrap();
    let err = tidemill::state_stores(&location(&ctx, empty.path()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not a Tidemill checkpoint: it has no metadata file"),
        "{err}"
    );

    // The command says the same, and exits with 1.
    let out = tidemill(&[
        "state",
        dir.path().to_str().unwrap(),
        "--operator",
        "0",
        "--batch",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.starts_with("error: ") && said.contains("the oldest batch it can be read at is 8"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
}

#[tokio::test]
async fn a_query_with_no_committed_batch_has_no_state_to_read() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let df = dedup_by_symbol(&ctx, &stream).await;
    let query = start(df, OutputMode::Append, dir.path(), QueryOptions::default()).await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let err = tidemill::state_stores(&location(&ctx, dir.path()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no committed batch yet"), "{err}");
}

/// Every file and directory under `dir`: its size, modification time and
/// (for a file) its bytes. Equal before and after a read if it changed
/// nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, Option<Vec<u8>>)> {
    let mut all = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let bytes = match meta.is_dir() {
                true => {
                    pending.push(entry.path());
                    None
                }
                false => Some(std::fs::read(entry.path()).unwrap()),
            };
            all.insert(entry.path(), (meta.len(), meta.modified().unwrap(), bytes));
        }
    }
    all
}

/// Every read there is of the checkpoint at `dir`: the stores at every
/// batch, each store's entries at every batch, and reads that fail.
async fn read_everything(ctx: &SessionContext, dir: &Path, last: u64) {
    let checkpoint = location(ctx, dir);
    for batch in (0..=last).map(Some).chain([None]) {
        for store in tidemill::state_stores(&checkpoint, batch).await.unwrap() {
            read(ctx, dir, store.operator, Some(&store.store), batch)
                .await
                .unwrap();
        }
    }
    assert!(read(ctx, dir, 7, None, None).await.is_err());
    assert!(read(ctx, dir, 0, None, Some(last + 1)).await.is_err());
    assert!(read(ctx, dir, 0, None, None).await.is_err(), "two stores");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_changes_no_file_also_while_the_query_runs() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let (left, right) = (MemoryStream::new(schema()), MemoryStream::new(schema()));
    let df = joined(&ctx, &left, &right).await;
    let query = start(df, OutputMode::Append, dir.path(), QueryOptions::default()).await;
    for i in 0..3 {
        left.push(rows(&[(Some("a"), 1.0, 100 + i)])).unwrap();
        right.push(rows(&[(Some("a"), 2.0, 101 + i)])).unwrap();
        query.process_all_available().await.unwrap();
    }
    let last = last_batch(&query);

    // The query is running, idle: it writes nothing meanwhile.
    let before = snapshot(dir.path());
    assert!(before.keys().any(|p| p.ends_with("lock")), "{before:#?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(snapshot(dir.path()), before, "the idle query wrote");
    assert!(query.is_active());

    read_everything(&ctx, dir.path(), last).await;
    let out = tidemill(&["state", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tidemill(&[
        "state",
        dir.path().to_str().unwrap(),
        "--operator",
        "0",
        "--store",
        "left",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3);
    assert_eq!(
        snapshot(dir.path()),
        before,
        "reading changed the checkpoint"
    );

    // The query goes on undisturbed.
    left.push(rows(&[(Some("a"), 1.0, 110)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(last_batch(&query), last + 1);
    let stores = tidemill::state_stores(&location(&ctx, dir.path()), None)
        .await
        .unwrap();
    assert_eq!(
        stores.iter().map(|s| (s.batch, s.rows)).collect::<Vec<_>>(),
        [(last + 1, 4), (last + 1, 3)]
    );
    query.stop().await.unwrap();
}

/// Reads taken while the query commits batch after batch each see one
/// committed batch whole: the deduplication adds one key per batch, so
/// batch `b` holds exactly the keys of batches `0..=b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_batches_each_see_one_committed_batch() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let df = dedup_by_symbol(&ctx, &stream).await;
    let query = start(df, OutputMode::Append, dir.path(), QueryOptions::default()).await;
    stream.push(key_row(0)).unwrap();
    query.process_all_available().await.unwrap();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (ctx, dir, done) = (ctx.clone(), dir.path().to_path_buf(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let stores = tidemill::state_stores(&location(&ctx, &dir), None)
                    .await
                    .unwrap();
                let (batch, rows) = (stores[0].batch, stores[0].rows);
                assert_eq!(rows, batch + 1, "batch {batch}");
                let keys = symbols(&read(&ctx, &dir, 0, None, Some(batch)).await.unwrap());
                assert_eq!(
                    keys,
                    (0..=batch).map(|i| format!("k{i:02}")).collect::<Vec<_>>()
                );
                seen.push(batch);
            }
            seen
        })
    };
    for i in 1..25 {
        stream.push(key_row(i)).unwrap();
        query.process_all_available().await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen.len() > 1, "{seen:?}");
    assert_eq!(last_batch(&query), 24);
    query.stop().await.unwrap();
}

/// Writes trades file `n` (renamed into place whole): 10 trades five
/// seconds apart in minute `n`, alternating AAPL (quantities 1, 3, …, 9)
/// and MSFT (2, 4, …, 10).
fn write_trades(dir: &Path, n: usize) {
    let input = dir.join("trades");
    std::fs::create_dir_all(&input).unwrap();
    let mut lines = String::new();
    for i in 0..10 {
        let symbol = ["AAPL", "MSFT"][i % 2];
        lines.push_str(&format!(
            "{{\"symbol\": \"{symbol}\", \"price\": {}, \"quantity\": {}, \"event_time\": \"2024-01-01T10:{n:02}:{:02}\"}}\n",
            100 + i,
            1 + i,
            i * 5
        ));
    }
    let tmp = input.join(format!(".{n}.tmp"));
    std::fs::write(&tmp, lines).unwrap();
    std::fs::rename(tmp, input.join(format!("part-{n:03}.json"))).unwrap();
}

/// A pipeline counting `<dir>/trades` per minute and symbol (a windowed
/// aggregation with a 10-second watermark), one file per batch, into the
/// sink `per_minute`; its checkpoint root is `<dir>/per_minute.checkpoint`.
fn pipeline(dir: &Path) -> PathBuf {
    let file = dir.join("per_minute.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (
  symbol VARCHAR, price DOUBLE, quantity DOUBLE, event_time TIMESTAMP,
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (connector = 'files', path = '{input}', format = 'json', max_files_per_trigger = 1);

CREATE SINK per_minute WITH (connector = 'files', path = '{output}', output_mode = 'append');

INSERT INTO per_minute
SELECT window.start AS minute, symbol, count(*) AS trades, sum(quantity) AS volume
FROM trades
GROUP BY window(event_time, '1 minute'), symbol;
",
            input = dir.join("trades").display(),
            output = dir.join("out").display(),
        ),
    )
    .unwrap();
    file
}

/// `tidemill state ARGS`, which must succeed: its standard output.
fn state(args: &[&str]) -> String {
    let mut all = vec!["state"];
    all.extend_from_slice(args);
    let out = tidemill(&all);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `tidemill state ARGS`, which must fail with exit code `code`: its one
/// line of standard error.
fn state_error(args: &[&str], code: i32) -> String {
    let mut all = vec!["state"];
    all.extend_from_slice(args);
    let out = tidemill(&all);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// JSON lines, parsed.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// An entry of the per-minute aggregation as JSON: the window's start,
/// symbol, count, sum of quantities and expiry.
fn group(entry: &serde_json::Value) -> (String, String, i64, f64, String) {
    // The field whose name starts with `prefix`.
    let field = |object: &serde_json::Value, prefix: &str| {
        let object = object.as_object().unwrap();
        let found = object.iter().find(|(name, _)| name.starts_with(prefix));
        found
            .unwrap_or_else(|| panic!("no {prefix}… in {object:?}"))
            .1
            .clone()
    };
    let (key, value) = (&entry["key"], &entry["value"]);
    (
        field(key, "window(")["start"].as_str().unwrap().to_string(),
        field(key, "symbol").as_str().unwrap().to_string(),
        field(value, "count(").as_i64().unwrap(),
        field(value, "sum(").as_f64().unwrap(),
        entry["expires_at"].as_str().unwrap().to_string(),
    )
}

#[test]
fn the_command_lists_stores_and_prints_entries_as_a_table_json_lines_or_parquet() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path());
    let run = tidemill(&["run", file.to_str().unwrap(), "--trigger", "available-now"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let root = file.with_extension("checkpoint");
    let root_arg = root.to_str().unwrap();
    let query_dir = root.join("per_minute");
    let query_arg = query_dir.to_str().unwrap();
    // Three files, then a batch without data that closes minute 1.
    let last = 3;

    // The stores: from the root (its one query), by --query, from the
    // query's own directory, as a file:// URL.
    let listed = state(&[root_arg]);
    for expected in [
        "| operator | store | batch | rows | key_columns",
        "StreamingAggregate group by [window(trades.event_time",
        "symbol Utf8",
    ] {
        assert!(listed.contains(expected), "{expected}\nnot in:\n{listed}");
    }
    let json = json_lines(&state(&[
        root_arg,
        "--query",
        "per_minute",
        "--format",
        "json",
    ]));
    assert_eq!(json.len(), 1);
    let store = &json[0];
    assert_eq!(store["operator"], 0);
    assert_eq!(store["store"], "");
    assert_eq!(store["batch"], last);
    assert_eq!(store["version"], last + 1);
    assert_eq!(store["rows"], 2);
    assert_eq!(store["key_columns"][1]["name"], "symbol");
    assert_eq!(store["value_columns"].as_array().unwrap().len(), 2);
    assert_eq!(json_lines(&state(&[query_arg, "--format", "json"])), json);
    let url = format!(
        "file://{}",
        std::fs::canonicalize(&query_dir).unwrap().display()
    );
    assert_eq!(json_lines(&state(&[&url, "--format", "json"])), json);

    // The entries at the last batch: minute 2's groups.
    let entries = json_lines(&state(&[root_arg, "--operator", "0", "--format", "json"]));
    let mut groups: Vec<_> = entries.iter().map(group).collect();
    groups.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        groups,
        [
            (
                "2024-01-01T10:02:00".into(),
                "AAPL".into(),
                5,
                25.0,
                "2024-01-01T10:03:00".into()
            ),
            (
                "2024-01-01T10:02:00".into(),
                "MSFT".into(),
                5,
                30.0,
                "2024-01-01T10:03:00".into()
            ),
        ]
    );
    assert!(entries.iter().all(|e| e["partition"].as_u64().unwrap() < 8));
    // At batch 1: minutes 0 and 1.
    let at_1 = json_lines(&state(&[
        root_arg,
        "--operator",
        "0",
        "--batch",
        "1",
        "--format",
        "json",
    ]));
    let mut minutes: Vec<(String, String)> = at_1
        .iter()
        .map(group)
        .map(|(start, symbol, ..)| (start, symbol))
        .collect();
    minutes.sort();
    assert_eq!(
        minutes,
        [
            ("2024-01-01T10:00:00".into(), "AAPL".into()),
            ("2024-01-01T10:00:00".into(), "MSFT".into()),
            ("2024-01-01T10:01:00".into(), "AAPL".into()),
            ("2024-01-01T10:01:00".into(), "MSFT".into()),
        ]
    );

    // As a table.
    let table = state(&[root_arg, "--operator", "0"]);
    assert!(table.contains("| partition | key "), "{table}");
    assert!(
        table.contains("{start: 2024-01-01T10:02:00, end: 2024-01-01T10:03:00}, symbol: MSFT}"),
        "{table}"
    );
    assert!(table.contains("| 2024-01-01T10:03:00 |"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        3,
        "{table}"
    );

    // As parquet: the same entries.
    let parquet = dir.path().join("state.parquet");
    let out = state(&[
        root_arg,
        "--operator",
        "0",
        "--format",
        "parquet",
        "--out",
        parquet.to_str().unwrap(),
    ]);
    assert_eq!(out, "");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&parquet).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let mut from_parquet = Vec::new();
    {
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut from_parquet);
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        writer.finish().unwrap();
    }
    assert_eq!(json_lines(&text(&from_parquet)), entries);
    // --out for the other formats too.
    let out_json = dir.path().join("state.jsonl");
    state(&[
        root_arg,
        "--operator",
        "0",
        "--format",
        "json",
        "--out",
        out_json.to_str().unwrap(),
    ]);
    assert_eq!(
        json_lines(&std::fs::read_to_string(&out_json).unwrap()),
        entries
    );

    // Mistakes: one message, exit code 1 (2 for a usage mistake).
    for (args, expected) in [
        (
            vec![root_arg, "--operator", "3"],
            "has no stateful operator 3; its operators: 0 (StreamingAggregate",
        ),
        (
            vec![root_arg, "--operator", "0", "--store", "left"],
            "has no state store 'left': it has one store",
        ),
        (vec![root_arg, "--batch", "9"], "batch 9 of checkpoint"),
        (
            vec![root_arg, "--query", "hourly"],
            "holds no checkpoint of a query named hourly; its queries: per_minute",
        ),
        (
            vec![query_arg, "--query", "per_minute"],
            "is the checkpoint of one query",
        ),
        (
            vec![root_arg, "--operator", "0", "--format", "parquet"],
            "--format parquet writes a file: give its path with --out PATH",
        ),
        (
            vec![root_arg, "--format", "parquet", "--out", "x.parquet"],
            "choose one with --operator N",
        ),
    ] {
        let said = state_error(&args, 1);
        assert!(
            said.starts_with("error: ") && said.contains(expected),
            "{args:?}: {said}"
        );
        assert_eq!(said.lines().count(), 1, "{said}");
    }
    let said = state_error(&[root_arg, "--batch", "9"], 1);
    assert!(
        said.contains("has not committed: the last committed batch is 3"),
        "{said}"
    );
    let input = dir.path().join("trades");
    let said = state_error(&[input.to_str().unwrap()], 1);
    assert!(said.contains("is not a Tidemill checkpoint"), "{said}");
    state_error(&[root_arg, "--store", "left"], 2);
    state_error(&[root_arg, "--format", "csv"], 2);
}

/// A child process, killed when dropped (also when a test fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_command_reads_a_checkpoint_a_run_holds_without_changing_a_file() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path());
    let child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(["run", file.to_str().unwrap(), "--trigger", "100ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let root = file.with_extension("checkpoint");
    let root_arg = root.to_str().unwrap();
    // The last batch of a listing, once there is one.
    let listed_batch = || {
        let out = tidemill(&["state", root_arg, "--format", "json"]);
        match out.status.success() {
            true => json_lines(&text(&out.stdout))[0]["batch"].as_u64(),
            false => None,
        }
    };
    // Three files, then the batch without data that closes minute 1.
    let deadline = Instant::now() + Duration::from_secs(120);
    while listed_batch() != Some(3) {
        assert!(Instant::now() < deadline, "the run did not commit batch 3");
        assert!(child.0.try_wait().unwrap().is_none(), "the run stopped");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The run is idle now: it writes nothing.
    let before = snapshot(dir.path());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(snapshot(dir.path()), before, "the idle run wrote");

    let outside = tempfile::tempdir().unwrap();
    let parquet = outside.path().join("state.parquet");
    for args in [
        vec![root_arg],
        vec![root_arg, "--format", "json", "--batch", "0"],
        vec![root_arg, "--operator", "0"],
        vec![
            root_arg,
            "--operator",
            "0",
            "--batch",
            "1",
            "--format",
            "json",
        ],
        vec![
            root_arg,
            "--operator",
            "0",
            "--format",
            "parquet",
            "--out",
            parquet.to_str().unwrap(),
        ],
    ] {
        state(&args);
    }
    state_error(&[root_arg, "--operator", "1"], 1);
    assert_eq!(
        snapshot(dir.path()),
        before,
        "reading changed the checkpoint"
    );
    assert!(child.0.try_wait().unwrap().is_none(), "the run stopped");

    // The run goes on: minute 3's file, then minute 2 closes.
    write_trades(dir.path(), 3);
    while listed_batch() != Some(5) {
        assert!(Instant::now() < deadline, "the run did not commit batch 5");
        std::thread::sleep(Duration::from_millis(100));
    }
    let entries = json_lines(&state(&[root_arg, "--operator", "0", "--format", "json"]));
    let starts: Vec<String> = entries.iter().map(|e| group(e).0).collect();
    assert_eq!(starts, ["2024-01-01T10:03:00", "2024-01-01T10:03:00"]);
}

/// Per symbol: the row count (a value), the prices in order (a list) and
/// a count per whole price (a map).
#[derive(Clone)]
struct Tally {
    count: ValueState<i64>,
    prices: ListState<f64>,
    by_price: MapState<i64, u64>,
}

impl StatefulProcessor for Tally {
    fn output_schema(&self) -> arrow::datatypes::SchemaRef {
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("symbol", DataType::Utf8, false),
            arrow::datatypes::Field::new("count", DataType::Int64, false),
        ]))
    }

    fn init(&mut self, states: &mut StateDeclarations) -> ProcessorResult<()> {
        states.declare(&self.count)?;
        states.declare(&self.prices)?;
        states.declare(&self.by_price)
    }

    fn handle_input_rows(
        &mut self,
        key: &GroupKey,
        rows: &KeyRows<'_>,
        ctx: &mut ProcessorContext<'_>,
    ) -> ProcessorResult<Vec<RecordBatch>> {
        let count = self.count.get(ctx)?.unwrap_or(0) + rows.num_rows() as i64;
        self.count.set(ctx, &count)?;
        for price in rows
            .column(1)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .values()
        {
            self.prices.append(ctx, price)?;
            let whole = *price as i64;
            let seen = self.by_price.get(ctx, &whole)?.unwrap_or(0);
            self.by_price.insert(ctx, &whole, &(seen + 1))?;
        }
        let symbol: String = key.decode()?;
        Ok(vec![RecordBatch::try_new(
            self.output_schema(),
            vec![
                std::sync::Arc::new(arrow::array::StringArray::from(vec![symbol])),
                std::sync::Arc::new(arrow::array::Int64Array::from(vec![count])),
            ],
        )?])
    }
}

#[tokio::test]
async fn a_stateful_processors_variables_are_read_each_from_its_store() {
    let ctx = SessionContext::new();
    let dir = tempfile::tempdir().unwrap();
    let stream = MemoryStream::new(schema());
    let tally = Tally {
        count: ValueState::new("count"),
        prices: ListState::new("prices"),
        by_price: MapState::new("by_price"),
    };
    let df = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .transform_with_state(&["symbol"], tally, TimeMode::None, OutputMode::Update)
        .unwrap();
    let query = start(df, OutputMode::Update, dir.path(), QueryOptions::default()).await;
    stream
        .push(rows(&[
            (Some("a"), 1.5, 1),
            (Some("b"), 2.0, 2),
            (Some("a"), 1.25, 3),
        ]))
        .unwrap();
    query.process_all_available().await.unwrap();
    stream.push(rows(&[(Some("a"), 3.0, 4)])).unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(last_batch(&query), 1);
    query.stop().await.unwrap();

    let stores = tidemill::state_stores(&location(&ctx, dir.path()), None)
        .await
        .unwrap();
    // One store per variable, and the timers', keyed by the grouping key
    // (then the list index or the map key).
    fn names(fields: &arrow::datatypes::Fields) -> Vec<&str> {
        fields.iter().map(|f| f.name().as_str()).collect()
    }
    let listed: Vec<(&str, Vec<&str>, Vec<&str>, u64)> = stores
        .iter()
        .map(|s| {
            (
                s.store.as_str(),
                names(&s.key_columns),
                names(&s.value_columns),
                s.rows,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("_timers", vec!["symbol", "timer_ms"], vec![], 0),
            ("by_price", vec!["symbol", "key"], vec!["value"], 3),
            ("count", vec!["symbol"], vec!["value"], 2),
            ("prices", vec!["symbol", "index"], vec!["value"], 4),
        ]
    );
    assert!(
        stores.iter().all(|s| s
            .description
            .as_deref()
            .unwrap()
            .starts_with("TransformWithState keys [symbol]")),
        "{stores:?}"
    );
    let variable = |store: &'static str, batch: u64| {
        let (ctx, dir) = (ctx.clone(), dir.path().to_path_buf());
        async move {
            let batches = read(&ctx, &dir, 0, Some(store), Some(batch)).await.unwrap();
            let mut got = entries(&batches);
            got.sort();
            got
        }
    };
    assert_eq!(
        variable("count", 0).await,
        ["{a} | {2} | null", "{b} | {1} | null"]
    );
    assert_eq!(
        variable("count", 1).await,
        ["{a} | {3} | null", "{b} | {1} | null"]
    );
    assert_eq!(
        variable("prices", 0).await,
        [
            "{a, 0} | {1.5} | null",
            "{a, 1} | {1.25} | null",
            "{b, 0} | {2.0} | null",
        ]
    );
    assert_eq!(
        variable("prices", 1).await,
        [
            "{a, 0} | {1.5} | null",
            "{a, 1} | {1.25} | null",
            "{a, 2} | {3.0} | null",
            "{b, 0} | {2.0} | null",
        ]
    );
    assert_eq!(
        variable("by_price", 1).await,
        [
            "{a, 1} | {2} | null",
            "{a, 3} | {1} | null",
            "{b, 2} | {1} | null",
        ]
    );
    assert!(variable("_timers", 1).await.is_empty());
    let err = read(&ctx, dir.path(), 0, None, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has several state stores: '_timers', 'by_price', 'count', 'prices'"),
        "{err}"
    );
}
