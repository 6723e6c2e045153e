//! The Iceberg sink's unit tests: the conformance suite, one snapshot per
//! batch with the query's id and batch id, re-run batches, output modes,
//! checks of an existing table and of the location, partitions. Tables are
//! read back through the `iceberg` crate's scan planning (which data files
//! the current snapshot holds) and the files with the parquet reader; the
//! snapshot history from the metadata JSON itself.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::io::FileIO;
use iceberg::table::StaticTable;
use tidemill_engine::{OutputMode, Result, Sink, SinkContext};

use super::IcebergSink;
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

fn context(mode: OutputMode, query_id: &str, schema: SchemaRef) -> SinkContext {
    SinkContext {
        session: SessionContext::new(),
        query_name: None,
        query_id: query_id.into(),
        schema,
        output_mode: mode,
        durability: Default::default(),
    }
}

async fn open(sink: &IcebergSink, mode: OutputMode, query_id: &str) -> Result<()> {
    sink.open(&context(mode, query_id, schema())).await
}

/// The latest `metadata/v<N>.metadata.json` of the table in `dir`, as
/// JSON; `None` if there is none.
fn latest_metadata(dir: &Path) -> Option<(u64, serde_json::Value)> {
    let metadata = dir.join("metadata");
    let latest = std::fs::read_dir(&metadata)
        .ok()?
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix('v')?
                .strip_suffix(".metadata.json")?
                .parse::<u64>()
                .ok()
        })
        .max()?;
    let text = std::fs::read_to_string(metadata.join(format!("v{latest}.metadata.json"))).unwrap();
    Some((latest, serde_json::from_str(&text).unwrap()))
}

/// The table's snapshots in commit order: (query id, batch id, operation,
/// added rows).
pub(super) fn snapshots(dir: &Path) -> Vec<(String, u64, String, u64)> {
    let Some((_, metadata)) = latest_metadata(dir) else {
        return Vec::new();
    };
    let mut snapshots: Vec<&serde_json::Value> = metadata["snapshots"]
        .as_array()
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    snapshots.sort_by_key(|s| s["sequence-number"].as_i64().unwrap());
    snapshots
        .iter()
        .map(|s| {
            let summary = &s["summary"];
            (
                summary["tidemill.query-id"].as_str().unwrap().to_string(),
                summary["tidemill.batch-id"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
                summary["operation"].as_str().unwrap().to_string(),
                summary["added-records"]
                    .as_str()
                    .map_or(0, |n| n.parse().unwrap()),
            )
        })
        .collect()
}

/// The rows of the table's current snapshot: its data files as the
/// `iceberg` crate plans a scan, each read with the parquet reader.
pub(super) async fn read_table(dir: &Path) -> Vec<RecordBatch> {
    let Some((version, _)) = latest_metadata(dir) else {
        return Vec::new();
    };
    let location = format!("{}/metadata/v{version}.metadata.json", dir.display());
    let table = StaticTable::from_metadata_file(
        &location,
        TableIdent::from_strs(["t", "t"]).unwrap(),
        FileIO::new_with_fs(),
    )
    .await
    .unwrap();
    let scan = table.scan().build().unwrap();
    let tasks: Vec<_> = scan
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut batches = Vec::new();
    for task in tasks {
        let path = task.data_file_path.strip_prefix("file://").unwrap();
        let file = std::fs::File::open(path).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024).unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            // Without the files' field-id metadata, for comparisons.
            let fields: Vec<Field> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), f.data_type().clone(), f.is_nullable()))
                .collect();
            batches.push(
                RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec())
                    .unwrap(),
            );
        }
    }
    batches
}

fn count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

struct Harness {
    sink: Arc<IcebergSink>,
    dir: tempfile::TempDir,
}

#[async_trait]
impl SinkHarness for Harness {
    fn sink(&self) -> Arc<dyn Sink> {
        self.sink.clone()
    }

    fn session(&self) -> SessionContext {
        SessionContext::new()
    }

    async fn observe(&self) -> Result<Observed> {
        let batches = read_table(self.dir.path())
            .await
            .into_iter()
            .map(|b| {
                // The suite compares against the output's schema (the
                // files' columns are required where the output's are).
                RecordBatch::try_new(schema(), b.columns().to_vec()).unwrap()
            })
            .collect();
        Ok(Observed::Rows(batches))
    }
}

#[tokio::test]
async fn iceberg_sink_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness {
        sink: Arc::new(IcebergSink::new(dir.path().to_str().unwrap())),
        dir,
    };
    check_sink(
        &harness,
        vec![rows(0..3)],
        vec![rows(3..5), rows(5..6)],
        vec![rows(10..12)],
    )
    .await;
    // One append snapshot per batch (0..=3), each naming its batch.
    let snapshots = snapshots(harness.dir.path());
    let batches: Vec<u64> = snapshots.iter().map(|s| s.1).collect();
    assert_eq!(batches, vec![0, 1, 2, 3], "{snapshots:?}");
    assert!(snapshots.iter().all(|s| s.2 == "append"), "{snapshots:?}");
}

#[tokio::test]
async fn a_rerun_batch_writes_nothing_and_a_new_query_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let sink = IcebergSink::new(path);
    open(&sink, OutputMode::Append, "q1").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..4)]).await.unwrap();
    sink.add_batch(1, schema(), vec![]).await.unwrap();
    sink.add_batch(2, schema(), vec![rows(4..6)]).await.unwrap();
    // A restart of the same query re-runs batch 2 and goes on.
    let again = IcebergSink::new(path);
    open(&again, OutputMode::Append, "q1").await.unwrap();
    again
        .add_batch(2, schema(), vec![rows(4..6)])
        .await
        .unwrap();
    again
        .add_batch(1, schema(), vec![rows(100..110)])
        .await
        .unwrap();
    again
        .add_batch(3, schema(), vec![rows(6..7)])
        .await
        .unwrap();
    assert_eq!(count(&read_table(dir.path()).await), 7);
    // Another query (a new checkpoint) appends its batch 0.
    let other = IcebergSink::new(path);
    open(&other, OutputMode::Append, "q2").await.unwrap();
    other
        .add_batch(0, schema(), vec![rows(7..8)])
        .await
        .unwrap();
    assert_eq!(count(&read_table(dir.path()).await), 8);
    let history: Vec<(String, u64, u64)> = snapshots(dir.path())
        .into_iter()
        .map(|(q, b, _, added)| (q, b, added))
        .collect();
    assert_eq!(
        history,
        vec![
            ("q1".into(), 0, 4),
            ("q1".into(), 1, 0),
            ("q1".into(), 2, 2),
            ("q1".into(), 3, 1),
            ("q2".into(), 0, 1),
        ]
    );
    // The version hint names the latest metadata.
    let (latest, _) = latest_metadata(dir.path()).unwrap();
    let hint = std::fs::read_to_string(dir.path().join("metadata/version-hint.text")).unwrap();
    assert_eq!(hint.trim(), latest.to_string());
}

#[tokio::test]
async fn complete_and_update_modes_are_refused_when_the_query_starts() {
    let dir = tempfile::tempdir().unwrap();
    let sink = IcebergSink::new(dir.path().to_str().unwrap());
    for mode in [OutputMode::Complete, OutputMode::Update] {
        let err = open(&sink, mode, "q").await.unwrap_err().to_string();
        assert!(err.contains("cannot write the"), "{err}");
        assert!(
            err.contains("no overwrite") || err.contains("no row-level"),
            "{err}"
        );
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn a_schema_change_is_refused_naming_the_table_and_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let sink = IcebergSink::new(path);
    open(&sink, OutputMode::Append, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..2)]).await.unwrap();
    let before = latest_metadata(dir.path()).unwrap().0;
    let changed = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Utf8, false),
    ]));
    let err = IcebergSink::new(path)
        .open(&context(OutputMode::Append, "q", changed))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("column 'price'"), "{err}");
    assert!(err.contains(&format!("file://{path}")), "{err}");
    let added = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("venue", DataType::Utf8, true),
    ]));
    let err = IcebergSink::new(path)
        .open(&context(OutputMode::Append, "q", added))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("'venue'"), "{err}");
    assert_eq!(
        latest_metadata(dir.path()).unwrap().0,
        before,
        "nothing committed"
    );
}

#[tokio::test]
async fn a_directory_holding_something_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("part-0.parquet"), b"not iceberg").unwrap();
    let err = open(
        &IcebergSink::new(dir.path().to_str().unwrap()),
        OutputMode::Append,
        "q",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("is not an Iceberg table"), "{err}");
    assert!(err.contains("part-0.parquet"), "{err}");
    // A first batch's leftovers (data files without metadata) are not.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/00000-x.parquet"), b"orphan").unwrap();
    let sink = IcebergSink::new(dir.path().to_str().unwrap());
    open(&sink, OutputMode::Append, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..2)]).await.unwrap();
    assert_eq!(count(&read_table(dir.path()).await), 2);
}

#[tokio::test]
async fn partitioned_tables_write_a_file_per_value_with_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let sink = IcebergSink::new(path).partition_by(["symbol"]);
    open(&sink, OutputMode::Append, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..5), rows(5..9)])
        .await
        .unwrap();
    for symbol in ["A", "B", "C"] {
        let files: Vec<_> = std::fs::read_dir(dir.path().join(format!("data/symbol={symbol}")))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 1, "{symbol}");
    }
    let batches = read_table(dir.path()).await;
    assert_eq!(count(&batches), 9);
    for batch in &batches {
        let symbols = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(symbols.iter().all(|s| s == symbols.iter().next().unwrap()));
    }
    // The manifest holds each file's partition value and bounds.
    let (version, _) = latest_metadata(dir.path()).unwrap();
    let table = StaticTable::from_metadata_file(
        &format!("{path}/metadata/v{version}.metadata.json"),
        TableIdent::from_strs(["t", "t"]).unwrap(),
        FileIO::new_with_fs(),
    )
    .await
    .unwrap();
    let scan = table
        .scan()
        .with_filter(
            iceberg::expr::Reference::new("symbol").equal_to(iceberg::spec::Datum::string("B")),
        )
        .build()
        .unwrap();
    let tasks: Vec<_> = scan
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "partition pruning keeps one file");
    assert!(tasks[0].data_file_path.contains("symbol=B"));
    let scan = table
        .scan()
        .with_filter(
            iceberg::expr::Reference::new("id").greater_than(iceberg::spec::Datum::long(100)),
        )
        .build()
        .unwrap();
    let tasks: Vec<_> = scan
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(tasks.is_empty(), "the id bounds prune every file");
    // Another partitioning for the same table is refused.
    let err = open(
        &IcebergSink::new(path).partition_by(["id"]),
        OutputMode::Append,
        "q",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("partitioned by [symbol]"), "{err}");
}

#[tokio::test]
async fn old_metadata_files_are_deleted_past_the_tables_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let sink = IcebergSink::new(path);
    open(&sink, OutputMode::Append, "q").await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..1)]).await.unwrap();
    // Lower the limit on the table: the next commits keep 2 old versions.
    let (version, mut metadata) = latest_metadata(dir.path()).unwrap();
    metadata["properties"]["write.metadata.previous-versions-max"] = "2".into();
    std::fs::write(
        dir.path()
            .join(format!("metadata/v{version}.metadata.json")),
        serde_json::to_vec(&metadata).unwrap(),
    )
    .unwrap();
    for batch in 1..6 {
        sink.add_batch(batch, schema(), vec![rows(batch as i64..batch as i64 + 1)])
            .await
            .unwrap();
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("metadata"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".metadata.json"))
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["v5.metadata.json", "v6.metadata.json", "v7.metadata.json"]
    );
    assert_eq!(count(&read_table(dir.path()).await), 6);
    assert_eq!(snapshots(dir.path()).len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_queries_appending_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    // The table exists first, so both race only on their commits.
    let first = IcebergSink::new(path);
    open(&first, OutputMode::Append, "q0").await.unwrap();
    first
        .add_batch(0, schema(), vec![rows(0..1)])
        .await
        .unwrap();
    let run = |query: &'static str, offset: i64| {
        let path = path.to_string();
        tokio::spawn(async move {
            let sink = IcebergSink::new(path);
            open(&sink, OutputMode::Append, query).await.unwrap();
            for batch in 0..8u64 {
                let id = offset + batch as i64 * 2;
                sink.add_batch(batch, schema(), vec![rows(id..id + 2)])
                    .await
                    .unwrap();
            }
        })
    };
    let (a, b) = tokio::join!(run("q1", 100), run("q2", 200));
    a.unwrap();
    b.unwrap();
    let batches = read_table(dir.path()).await;
    assert_eq!(count(&batches), 1 + 2 * 16);
    let history = snapshots(dir.path());
    assert_eq!(history.len(), 17);
    for query in ["q1", "q2"] {
        let of: Vec<u64> = history
            .iter()
            .filter(|s| s.0 == query)
            .map(|s| s.1)
            .collect();
        assert_eq!(of, (0..8).collect::<Vec<_>>(), "{query}: {history:?}");
    }
}

/// A table on an object store other than the local disk (`memory://`,
/// resolved as an `s3://` bucket is): its metadata, manifests, manifest
/// lists and data files all go through the store, a restart's re-run batch
/// writes nothing, and the `iceberg` crate plans a scan of it through the
/// same store.
#[tokio::test]
async fn a_table_on_an_object_store_goes_through_the_store() {
    use object_store::ObjectStoreExt;
    use tidemill_engine::Location;

    let session = SessionContext::new();
    let ctx = SinkContext {
        session: session.clone(),
        ..context(OutputMode::Append, "q", schema())
    };
    let location = "memory:///lake/t";
    let sink = IcebergSink::new(location).partition_by(["symbol"]);
    sink.open(&ctx).await.unwrap();
    sink.add_batch(0, schema(), vec![rows(0..10)])
        .await
        .unwrap();
    sink.add_batch(1, schema(), vec![rows(10..25)])
        .await
        .unwrap();
    // A restart: batch 1 again writes nothing; batch 2 appends.
    let again = IcebergSink::new(location);
    again.open(&ctx).await.unwrap();
    again
        .add_batch(1, schema(), vec![rows(10..25)])
        .await
        .unwrap();
    again
        .add_batch(2, schema(), vec![rows(25..30)])
        .await
        .unwrap();

    let resolved = Location::resolve(location, &session.runtime_env()).unwrap();
    let store = Arc::clone(resolved.store());
    let hint = store
        .get(&object_store::path::Path::from(
            "lake/t/metadata/version-hint.text",
        ))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&hint[..], b"4", "created, then one version per batch");
    let storage = super::storage::ObjectStoreStorage::new(resolved.url(), Arc::clone(&store));
    let table = StaticTable::from_metadata_file(
        "memory:///lake/t/metadata/v4.metadata.json",
        TableIdent::from_strs(["t", "t"]).unwrap(),
        storage.file_io(),
    )
    .await
    .unwrap();
    let metadata = table.metadata();
    assert_eq!(metadata.location(), location);
    let batches: Vec<String> = metadata
        .snapshots()
        .map(|s| s.summary().additional_properties[super::BATCH_ID_PROPERTY].clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(batches, ["0", "1", "2"]);
    let tasks: Vec<_> = table
        .scan()
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(tasks.len(), 9, "three batches, three symbols each");
    let mut ids = Vec::new();
    for task in tasks {
        assert!(
            task.data_file_path
                .starts_with("memory:///lake/t/data/symbol="),
            "{}",
            task.data_file_path
        );
        let path = storage.path(&task.data_file_path).unwrap();
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 1024).unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            ids.extend(column.values().iter().copied());
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..30).collect::<Vec<i64>>());
}

/// S3 options for a table on local disk are refused when the query
/// starts, naming the table.
#[tokio::test]
async fn s3_options_for_a_local_table_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = tidemill_engine::StorageOptions::new()
        .with("aws_region", "us-east-1")
        .unwrap();
    let err = IcebergSink::new(dir.path().to_str().unwrap())
        .storage_options(options)
        .open(&context(OutputMode::Append, "q", schema()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("given for a table that is not on S3"), "{err}");
    assert!(err.contains(dir.path().to_str().unwrap()), "{err}");
}
