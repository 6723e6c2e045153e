//! The Delta sink's unit tests: the conformance suite, one version per
//! batch with its transaction, re-run batches, each output mode, checks of
//! an existing table and of the location, checkpoints. Tables are read
//! back with deltalake's own DataFusion table provider.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use tidemill_engine::{OutputMode, Result, Sink, SinkContext};

use super::DeltaSink;
use crate::conformance::{Observed, SinkHarness, check_sink};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
    ]))
}

/// Rows with ids `ids`: symbol A, B or C by id, price id × 1.5.
fn rows(ids: impl IntoIterator<Item = i64>) -> RecordBatch {
    let ids: Vec<i64> = ids.into_iter().collect();
    let symbols: Vec<&str> = ids
        .iter()
        .map(|i| ["A", "B", "C"][(*i % 3) as usize])
        .collect();
    let prices: Vec<f64> = ids.iter().map(|i| *i as f64 * 1.5).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(symbols)),
            Arc::new(Float64Array::from(prices)),
        ],
    )
    .unwrap()
}

async fn open(sink: &DeltaSink, mode: OutputMode, query_id: &str) -> Result<()> {
    sink.open(&SinkContext {
        session: SessionContext::new(),
        query_name: None,
        query_id: query_id.into(),
        schema: schema(),
        output_mode: mode,
        durability: Default::default(),
    })
    .await
}

/// The table's rows, by deltalake's table provider, sorted, as
/// `id,symbol,price` lines.
async fn table_rows(dir: &Path) -> Vec<String> {
    let url = url::Url::from_directory_path(dir).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT id, symbol, price FROM t ORDER BY id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for batch in batches {
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let symbols = arrow::compute::cast(batch.column(1), &DataType::Utf8).unwrap();
        let symbols = symbols.as_any().downcast_ref::<StringArray>().unwrap();
        let prices = batch
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        for i in 0..batch.num_rows() {
            out.push(format!(
                "{},{},{}",
                ids.value(i),
                symbols.value(i),
                prices.value(i)
            ));
        }
    }
    out
}

/// The versions in `_delta_log` (as JSON commit files), each with the
/// `(appId, version)` of its `txn` actions.
fn log_versions(dir: &Path) -> Vec<(u64, Vec<(String, i64)>)> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(dir.join("_delta_log")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(number) = name.strip_suffix(".json") else {
            continue;
        };
        let Ok(version) = number.parse::<u64>() else {
            continue;
        };
        let text = std::fs::read_to_string(dir.join("_delta_log").join(&name)).unwrap();
        let txns = text
            .lines()
            .filter_map(|line| {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                let txn = action.get("txn")?;
                Some((
                    txn["appId"].as_str().unwrap().to_string(),
                    txn["version"].as_i64().unwrap(),
                ))
            })
            .collect();
        versions.push((version, txns));
    }
    versions.sort();
    versions
}

fn expected(ids: impl IntoIterator<Item = i64>) -> Vec<String> {
    let mut ids: Vec<i64> = ids.into_iter().collect();
    ids.sort();
    ids.iter()
        .map(|i| {
            format!(
                "{},{},{}",
                i,
                ["A", "B", "C"][(*i % 3) as usize],
                *i as f64 * 1.5
            )
        })
        .collect()
}

struct Harness {
    sink: Arc<DeltaSink>,
    dir: tempfile::TempDir,
}

#[async_trait]
impl SinkHarness for Harness {
    fn sink(&self) -> Arc<dyn Sink> {
        Arc::clone(&self.sink) as Arc<dyn Sink>
    }

    fn session(&self) -> SessionContext {
        SessionContext::new()
    }

    async fn observe(&self) -> Result<Observed> {
        let url = url::Url::from_directory_path(self.dir.path()).unwrap();
        let table = deltalake::open_table(url).await.unwrap();
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("SELECT id, symbol, price FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        // Delta reads strings back as views; the suite compares text.
        let batches = batches
            .iter()
            .map(|b| {
                let columns = b
                    .columns()
                    .iter()
                    .zip(schema().fields())
                    .map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap())
                    .collect();
                RecordBatch::try_new(schema(), columns).unwrap()
            })
            .collect();
        Ok(Observed::Rows(batches))
    }
}

#[tokio::test]
async fn delta_sink_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness {
        sink: Arc::new(DeltaSink::new(dir.path().to_str().unwrap())),
        dir,
    };
    check_sink(
        &harness,
        vec![rows(0..3)],
        vec![rows(3..5), rows(5..6)],
        vec![rows(10..12)],
    )
    .await;
    // One version per batch (0..=3), each with its transaction.
    let versions = log_versions(harness.dir.path());
    assert_eq!(versions.len(), 4, "{versions:?}");
    for (i, (version, txns)) in versions.iter().enumerate() {
        assert_eq!(*version, i as u64);
        assert_eq!(txns.len(), 1, "version {version}: {txns:?}");
        assert_eq!(txns[0].1, i as i64);
    }
}

#[tokio::test]
async fn each_batch_is_one_version_with_the_query_transaction_and_reruns_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let sink = DeltaSink::new(path.to_str().unwrap());
    open(&sink, OutputMode::Append, "query-1").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..5)]).await.unwrap();
    sink.add_batch(1, schema(), vec![]).await.unwrap();
    sink.add_batch(2, schema(), vec![rows(5..7)]).await.unwrap();
    assert_eq!(
        log_versions(&path),
        (0..3)
            .map(|v| (v, vec![("query-1".to_string(), v as i64)]))
            .collect::<Vec<_>>()
    );

    // A restart: a new sink on the same table and query id skips what the
    // table's transaction says is committed.
    let restarted = DeltaSink::new(path.to_str().unwrap());
    open(&restarted, OutputMode::Append, "query-1")
        .await
        .unwrap();
    restarted
        .add_batch(1, schema(), vec![rows(100..110)])
        .await
        .unwrap();
    restarted
        .add_batch(2, schema(), vec![rows(100..110)])
        .await
        .unwrap();
    assert_eq!(log_versions(&path).len(), 3);
    restarted
        .add_batch(3, schema(), vec![rows(7..8)])
        .await
        .unwrap();
    assert_eq!(table_rows(&path).await, expected(0..8));

    // Another query (a new checkpoint) has its own transaction.
    let other = DeltaSink::new(path.to_str().unwrap());
    open(&other, OutputMode::Append, "query-2").await.unwrap();
    other
        .add_batch(0, schema(), vec![rows(8..9)])
        .await
        .unwrap();
    let versions = log_versions(&path);
    assert_eq!(versions.last().unwrap().1, vec![("query-2".to_string(), 0)]);
    assert_eq!(table_rows(&path).await, expected(0..9));
}

#[tokio::test]
async fn complete_mode_overwrites_the_table_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let sink = DeltaSink::new(path.to_str().unwrap());
    open(&sink, OutputMode::Complete, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..5)]).await.unwrap();
    sink.add_batch(1, schema(), vec![rows(10..12)])
        .await
        .unwrap();
    assert_eq!(table_rows(&path).await, expected(10..12));
    sink.add_batch(2, schema(), vec![]).await.unwrap();
    assert_eq!(table_rows(&path).await, Vec::<String>::new());
    assert_eq!(log_versions(&path).len(), 3);
}

#[tokio::test]
async fn update_mode_merges_on_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let sink = DeltaSink::new(path.to_str().unwrap()).merge_on(["id"]);
    open(&sink, OutputMode::Update, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..4)]).await.unwrap();
    // Ids 2 and 3 again with other prices (ids × 1.5 of 20, 30), and id 9.
    let changed = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![2, 3, 9])),
            Arc::new(StringArray::from(vec!["X", "Y", "A"])),
            Arc::new(Float64Array::from(vec![30.0, 45.0, 13.5])),
        ],
    )
    .unwrap();
    sink.add_batch(1, schema(), vec![changed.clone()])
        .await
        .unwrap();
    sink.add_batch(2, schema(), vec![]).await.unwrap();
    sink.add_batch(1, schema(), vec![changed]).await.unwrap();
    assert_eq!(
        table_rows(&path).await,
        vec!["0,A,0", "1,B,1.5", "2,X,30", "3,Y,45", "9,A,13.5"]
    );
    assert_eq!(log_versions(&path).len(), 3);

    let no_keys = DeltaSink::new(path.to_str().unwrap());
    let err = open(&no_keys, OutputMode::Update, "q")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("without merge keys"), "{err}");
}

#[tokio::test]
async fn a_table_that_does_not_fit_or_a_path_that_is_no_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let sink = DeltaSink::new(path.to_str().unwrap());
    open(&sink, OutputMode::Append, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..2)]).await.unwrap();

    let other_schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Utf8, false),
    ]));
    let err = DeltaSink::new(path.to_str().unwrap())
        .open(&SinkContext {
            session: SessionContext::new(),
            query_name: None,
            query_id: "q".into(),
            schema: other_schema,
            output_mode: OutputMode::Append,
            durability: Default::default(),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("column 'price' of the Delta table") && err.contains("has type double"),
        "{err}"
    );

    let err = open(
        &DeltaSink::new(path.to_str().unwrap()).partition_by(["symbol"]),
        OutputMode::Append,
        "q",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("is partitioned by []"), "{err}");

    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("data.csv"), "a,b\n1,2\n").unwrap();
    let err = open(
        &DeltaSink::new(plain.to_str().unwrap()),
        OutputMode::Append,
        "q",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("is not a Delta table: it holds 'data.csv'"),
        "{err}"
    );
}

#[tokio::test]
async fn checkpoints_are_written_at_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let sink = DeltaSink::new(path.to_str().unwrap()).checkpoint_interval(3);
    open(&sink, OutputMode::Append, "q").await.unwrap();
    let checkpoints = || {
        std::fs::read_dir(path.join("_delta_log"))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.ends_with(".checkpoint.parquet"))
            .count()
    };
    for id in 0..2 {
        sink.add_batch(id, schema(), vec![rows([id as i64])])
            .await
            .unwrap();
    }
    assert_eq!(checkpoints(), 0);
    for id in 2..7 {
        sink.add_batch(id, schema(), vec![rows([id as i64])])
            .await
            .unwrap();
    }
    assert_eq!(checkpoints(), 2, "checkpoints at versions 2 and 5");
    // A restart reads the transaction through the checkpoint.
    let restarted = DeltaSink::new(path.to_str().unwrap());
    open(&restarted, OutputMode::Append, "q").await.unwrap();
    restarted
        .add_batch(6, schema(), vec![rows(50..60)])
        .await
        .unwrap();
    assert_eq!(table_rows(&path).await, expected(0..7));
}

#[tokio::test]
async fn timestamps_and_string_views_are_written_as_delta_types() {
    use arrow::array::{Int32Array, StringViewArray, TimestampMillisecondArray};
    use arrow::datatypes::TimeUnit;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "minute",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("symbol", DataType::Utf8View, true),
        Field::new("trades", DataType::Int32, false),
    ]));
    let batch = |minute: i64, symbol: &str, trades: i32| {
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![minute])),
                Arc::new(StringViewArray::from(vec![Some(symbol)])),
                Arc::new(Int32Array::from(vec![trades])),
            ],
        )
        .unwrap()
    };
    let sink = DeltaSink::new(path.to_str().unwrap());
    let context = SinkContext {
        session: SessionContext::new(),
        query_name: None,
        query_id: "q".into(),
        schema: Arc::clone(&schema),
        output_mode: OutputMode::Append,
        durability: Default::default(),
    };
    sink.open(&context).await.unwrap();
    sink.add_batch(
        0,
        Arc::clone(&schema),
        vec![batch(1_704_103_200_000, "AAPL", 3)],
    )
    .await
    .unwrap();
    // A restart checks the output against the table the first batch made.
    let restarted = DeltaSink::new(path.to_str().unwrap());
    restarted.open(&context).await.unwrap();
    restarted
        .add_batch(
            1,
            Arc::clone(&schema),
            vec![batch(1_704_103_260_000, "MSFT", 4)],
        )
        .await
        .unwrap();

    let url = url::Url::from_directory_path(&path).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    let types: Vec<String> = table
        .snapshot()
        .unwrap()
        .schema()
        .fields()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        ["minute: timestamp_ntz", "symbol: string", "trades: integer"]
    );
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT CAST(minute AS VARCHAR) AS m, CAST(symbol AS VARCHAR) AS s, trades FROM t ORDER BY m")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| 2024-01-01T10:00:00 | AAPL | 3      |"),
        "{text}"
    );
    assert!(
        text.contains("| 2024-01-01T10:01:00 | MSFT | 4      |"),
        "{text}"
    );
}

#[tokio::test]
async fn two_queries_appending_in_turn_each_commit_their_batches_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let a = DeltaSink::new(path.to_str().unwrap());
    let b = DeltaSink::new(path.to_str().unwrap());
    // `b` opens before the table exists; `a`'s first batch creates it.
    open(&a, OutputMode::Append, "query-a").await.unwrap();
    open(&b, OutputMode::Append, "query-b").await.unwrap();
    a.add_batch(0, schema(), vec![rows(0..2)]).await.unwrap();
    b.add_batch(0, schema(), vec![rows(100..102)])
        .await
        .unwrap();
    a.add_batch(1, schema(), vec![rows(2..4)]).await.unwrap();
    b.add_batch(1, schema(), vec![rows(102..103)])
        .await
        .unwrap();
    // A re-run of a batch each committed, after the other wrote since.
    a.add_batch(1, schema(), vec![rows(50..60)]).await.unwrap();
    b.add_batch(0, schema(), vec![rows(50..60)]).await.unwrap();
    a.add_batch(2, schema(), vec![]).await.unwrap();
    b.add_batch(2, schema(), vec![rows(103..104)])
        .await
        .unwrap();
    let txns: Vec<(String, i64)> = log_versions(&path)
        .into_iter()
        .enumerate()
        .map(|(i, (version, mut txns))| {
            assert_eq!(version, i as u64);
            assert_eq!(txns.len(), 1, "version {version}: {txns:?}");
            txns.remove(0)
        })
        .collect();
    let txn = |q: &str, v: i64| (q.to_string(), v);
    assert_eq!(
        txns,
        [
            txn("query-a", 0),
            txn("query-b", 0),
            txn("query-a", 1),
            txn("query-b", 1),
            txn("query-a", 2),
            txn("query-b", 2),
        ]
    );
    assert_eq!(table_rows(&path).await, expected((0..4).chain(100..104)));
}

/// The bytes of a commit adding no files, with the transaction
/// `(app_id, version)`.
fn empty_commit(app_id: &str, version: i64) -> bytes::Bytes {
    super::append::commit_bytes(
        Vec::new(),
        &[],
        deltalake::kernel::Transaction::new(app_id, version),
        0,
    )
    .unwrap()
}

#[tokio::test]
async fn a_commit_that_loses_the_race_retries_after_appends_and_fails_on_a_conflict() {
    use super::DeltaSinkError;
    use super::append::{LogTail, write_commit};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let sink = DeltaSink::new(path.to_str().unwrap());
    open(&sink, OutputMode::Append, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..2)]).await.unwrap();
    let url = url::Url::from_directory_path(&path).unwrap();
    let table = deltalake::DeltaTableBuilder::from_url(url.clone())
        .unwrap()
        .build()
        .unwrap();
    let log_store = table.log_store();
    let url = url.as_str();
    // Two appends of another query land after the sink last looked (at
    // version 0): its commit is written as version 3.
    for version in [1, 2] {
        write_commit(log_store.as_ref(), version, empty_commit("other", 0))
            .await
            .unwrap();
    }
    let mut tail = LogTail {
        version: 0,
        committed: Some(0),
        table_changed: false,
    };
    let committed = tail
        .commit(url, log_store.as_ref(), "q", 1, 1, empty_commit("q", 1))
        .await
        .unwrap();
    assert_eq!(committed, 3);
    assert_eq!(
        tail,
        LogTail {
            version: 3,
            committed: Some(1),
            table_changed: false
        }
    );
    // A version holding the same query's transaction: two runs of one
    // query. Nothing is committed.
    write_commit(log_store.as_ref(), 4, empty_commit("q", 2))
        .await
        .unwrap();
    let mut stale = tail;
    let error = stale
        .commit(url, log_store.as_ref(), "q", 2, 2, empty_commit("q", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, DeltaSinkError::Conflict { batch_id: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("same query"), "{error}");
    assert_eq!(log_versions(&path).len(), 5);
    // A change of the table's properties by another writer.
    let loaded = deltalake::open_table(url::Url::parse(url).unwrap())
        .await
        .unwrap();
    loaded
        .set_tbl_properties()
        .with_properties([("delta.checkpointInterval".to_string(), "50".to_string())].into())
        .await
        .unwrap();
    let mut stale = LogTail {
        version: 4,
        committed: Some(2),
        table_changed: false,
    };
    let error = stale
        .commit(url, log_store.as_ref(), "q", 3, 3, empty_commit("q", 3))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("schema, properties or protocol"),
        "{error}"
    );
    assert!(stale.table_changed);
    assert_eq!(log_versions(&path).len(), 6);
}

#[tokio::test]
async fn another_writers_table_change_is_read_before_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table");
    let sink = DeltaSink::new(path.to_str().unwrap()).checkpoint_interval(100);
    open(&sink, OutputMode::Append, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..2)]).await.unwrap();
    sink.add_batch(1, schema(), vec![rows(2..4)]).await.unwrap();
    let url = url::Url::from_directory_path(&path).unwrap();
    // A property the output still fits: the sink reloads and goes on,
    // with the new checkpoint interval.
    let table = deltalake::open_table(url.clone()).await.unwrap();
    table
        .set_tbl_properties()
        .with_properties([("delta.checkpointInterval".to_string(), "5".to_string())].into())
        .await
        .unwrap();
    sink.add_batch(2, schema(), vec![rows(4..6)]).await.unwrap();
    sink.add_batch(3, schema(), vec![rows(6..7)]).await.unwrap();
    assert!(
        path.join("_delta_log/00000000000000000004.checkpoint.parquet")
            .exists(),
        "a checkpoint at version 4 of the new interval"
    );
    // A column the output does not have: refused, naming it.
    let table = deltalake::open_table(url).await.unwrap();
    table
        .add_columns()
        .with_fields([deltalake::kernel::StructField::new(
            "venue",
            deltalake::kernel::DataType::STRING,
            true,
        )])
        .await
        .unwrap();
    let error = sink
        .add_batch(4, schema(), vec![rows(7..8)])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("'venue'"), "{error}");
    // Again on a retry: the table is read again until it fits.
    let error = sink
        .add_batch(4, schema(), vec![rows(7..8)])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("'venue'"), "{error}");
    assert_eq!(table_rows(&path).await.len(), 7);
}
