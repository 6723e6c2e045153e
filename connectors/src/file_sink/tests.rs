//! The files sink's unit tests: exactly-once in every format, partitioned
//! output, leftovers of crashed attempts, the manifest's versions.

use super::manifest::MANIFEST_DIR;
use super::*;
use crate::conformance::{Observed, SinkHarness, check_sink};
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field};
use object_store::memory::InMemory;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

fn batch(ids: &[i64]) -> RecordBatch {
    let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(names)),
        ],
    )
    .unwrap()
}

fn memory_ctx() -> SessionContext {
    let ctx = SessionContext::new();
    ctx.register_object_store(
        &url::Url::parse("memory://").unwrap(),
        Arc::new(InMemory::new()),
    );
    ctx
}

/// A context on memory where `sink` (at `location`) committed one batch,
/// and then manifest entry `entry` was written as `bytes`.
async fn one_batch_then_entry(
    sink: FileSink,
    location: &str,
    entry: &str,
    bytes: &'static [u8],
) -> SessionContext {
    let ctx = memory_ctx();
    open(&ctx, &sink).await;
    sink.add_batch(0, schema(), vec![batch(&[1])])
        .await
        .unwrap();
    let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
    loc.store()
        .put(
            &loc.path().clone().join(MANIFEST_DIR).join(entry),
            PutPayload::from_static(bytes),
        )
        .await
        .unwrap();
    ctx
}

async fn open(ctx: &SessionContext, sink: &ParquetSink) {
    sink.open(&SinkContext {
        session: ctx.clone(),
        query_name: None,
        query_id: "test".into(),
        schema: schema(),
        output_mode: OutputMode::Append,
        durability: Default::default(),
    })
    .await
    .unwrap();
}

/// The committed ids, sorted.
async fn read_ids(ctx: &SessionContext, location: &str) -> Vec<i64> {
    let df = ParquetSink::read_committed(ctx, location).await.unwrap();
    let batches = df.collect().await.unwrap();
    let mut ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The names of the data files in the output directory.
async fn data_files(ctx: &SessionContext, location: &str) -> Vec<String> {
    let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
    let listing = loc
        .store()
        .list_with_delimiter(Some(loc.path()))
        .await
        .unwrap();
    let mut names: Vec<String> = listing
        .objects
        .iter()
        .filter_map(|m| m.location.filename().map(str::to_owned))
        .collect();
    names.sort();
    names
}

async fn exactly_once_round_trip(ctx: SessionContext, location: &str, format: FileFormat) {
    let make = || FileSink::new(location).with_format(format);
    let sink = make();
    open(&ctx, &sink).await;
    sink.add_batch(0, schema(), vec![batch(&[1, 2]), batch(&[3])])
        .await
        .unwrap();
    sink.add_batch(1, schema(), vec![batch(&[4, 5])])
        .await
        .unwrap();
    assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3, 4, 5]);
    let files_before = data_files(&ctx, location).await;
    assert_eq!(files_before.len(), 2, "{files_before:?}");
    assert!(
        files_before[0].starts_with("part-00000-")
            && files_before[0].ends_with(&format!(".{format}")),
        "{files_before:?}"
    );
    assert!(files_before[1].starts_with("part-00001-"));

    // Re-adding committed ids (with different rows) changes nothing.
    sink.add_batch(1, schema(), vec![batch(&[100])])
        .await
        .unwrap();
    sink.add_batch(0, schema(), vec![batch(&[200])])
        .await
        .unwrap();
    assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(data_files(&ctx, location).await, files_before);

    // A fresh instance (a restarted query) skips them too.
    let restarted = make();
    open(&ctx, &restarted).await;
    restarted
        .add_batch(1, schema(), vec![batch(&[100])])
        .await
        .unwrap();
    restarted
        .add_batch(2, schema(), vec![batch(&[6])])
        .await
        .unwrap();
    assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3, 4, 5, 6]);

    let entries = ParquetSink::committed_batches(&ctx, location)
        .await
        .unwrap();
    assert_eq!(
        entries.iter().map(|e| e.batch_id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        entries
            .iter()
            .map(ManifestEntry::num_rows)
            .collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    for entry in &entries {
        assert_eq!(entry.files.len(), 1);
        assert!(
            entry.files[0]
                .name
                .starts_with(&file_prefix(entry.batch_id))
        );
        assert!(entry.files[0].size_bytes > 0);
        assert_eq!(entry.schema, *schema());
        assert_eq!(entry.format, format);
        assert!(entry.partition_by.is_empty());
    }
    let mut listed: Vec<String> = entries
        .iter()
        .flat_map(|e| e.files.iter().map(|f| f.name.clone()))
        .collect();
    listed.sort();
    assert_eq!(listed, data_files(&ctx, location).await);
}

#[tokio::test]
async fn exactly_once_on_local_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let location = tmp.path().join("out").to_str().unwrap().to_string();
    exactly_once_round_trip(SessionContext::new(), &location, FileFormat::Parquet).await;
    // The manifest entry is a readable checkpoint file.
    let text = std::fs::read_to_string(tmp.path().join("out/_tidemill_sink/0")).unwrap();
    assert!(text.starts_with(
        "tidemill-sink-manifest v1\n{\"batch_id\":0,\"files\":[{\"name\":\"part-00000-"
    ));
}

#[tokio::test]
async fn exactly_once_in_memory() {
    exactly_once_round_trip(memory_ctx(), "memory:///out/a", FileFormat::Parquet).await;
}

#[tokio::test]
async fn file_url_location() {
    let tmp = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(tmp.path().join("out")).unwrap();
    let ctx = SessionContext::new();
    let sink = ParquetSink::new(url.as_str());
    open(&ctx, &sink).await;
    sink.add_batch(0, schema(), vec![batch(&[7])])
        .await
        .unwrap();
    assert_eq!(read_ids(&ctx, url.as_str()).await, vec![7]);
    assert!(tmp.path().join("out/_tidemill_sink/0").exists());
}

#[tokio::test]
async fn leftovers_of_a_crashed_attempt_are_never_read_and_are_replaced() {
    let ctx = memory_ctx();
    let location = "memory:///crash";
    let sink = ParquetSink::new(location);
    open(&ctx, &sink).await;
    sink.add_batch(0, schema(), vec![batch(&[1])])
        .await
        .unwrap();

    // A crashed attempt of batch 1: its data files are written (here
    // with the sink's own encoder), but no manifest entry.
    let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
    let crashed = ParquetSink::new(location);
    crashed
        .write_files(&loc, 1, &schema(), vec![batch(&[2, 3])])
        .await
        .unwrap();
    // And a staging file the local file system could leave behind.
    loc.store()
        .put(
            &loc.path().clone().join("part-00001-x.parquet#1"),
            PutPayload::from_static(b"junk"),
        )
        .await
        .unwrap();
    assert_eq!(data_files(&ctx, location).await.len(), 3);
    assert_eq!(
        read_ids(&ctx, location).await,
        vec![1],
        "uncommitted files must not be read"
    );

    // The restarted query re-runs batch 1.
    let restarted = ParquetSink::new(location);
    open(&ctx, &restarted).await;
    restarted
        .add_batch(1, schema(), vec![batch(&[2, 3])])
        .await
        .unwrap();
    assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3]);
    let files = data_files(&ctx, location).await;
    assert_eq!(files.len(), 2, "leftovers must be deleted: {files:?}");
    let entries = ParquetSink::committed_batches(&ctx, location)
        .await
        .unwrap();
    assert_eq!(entries[1].files[0].name, files[1]);
}

#[tokio::test]
async fn a_retried_batch_in_the_same_instance_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let location = tmp.path().join("out").to_str().unwrap().to_string();
    let ctx = SessionContext::new();
    let sink = ParquetSink::new(location.as_str());
    open(&ctx, &sink).await;
    sink.add_batch(0, schema(), vec![batch(&[1])])
        .await
        .unwrap();
    // Batch 1 was attempted by this instance and left a file (as if the
    // manifest write had failed), then is retried.
    let loc = Location::resolve(&location, &ctx.runtime_env()).unwrap();
    sink.begin(1).unwrap();
    sink.write_files(&loc, 1, &schema(), vec![batch(&[2])])
        .await
        .unwrap();
    sink.add_batch(1, schema(), vec![batch(&[2])])
        .await
        .unwrap();
    assert_eq!(read_ids(&ctx, &location).await, vec![1, 2]);
    assert_eq!(data_files(&ctx, &location).await.len(), 2);
}

#[tokio::test]
async fn empty_batches_commit_with_no_files() {
    let ctx = memory_ctx();
    let location = "memory:///empty";
    let sink = ParquetSink::new(location);
    open(&ctx, &sink).await;
    sink.add_batch(0, schema(), Vec::new()).await.unwrap();
    sink.add_batch(1, schema(), vec![RecordBatch::new_empty(schema())])
        .await
        .unwrap();

    let df = ParquetSink::read_committed(&ctx, location).await.unwrap();
    assert_eq!(df.schema().as_arrow(), schema().as_ref());
    assert_eq!(df.count().await.unwrap(), 0);
    assert!(data_files(&ctx, location).await.is_empty());
    let entries = ParquetSink::committed_batches(&ctx, location)
        .await
        .unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.files.is_empty()));

    sink.add_batch(2, schema(), vec![batch(&[9])])
        .await
        .unwrap();
    assert_eq!(read_ids(&ctx, location).await, vec![9]);
}

#[tokio::test]
async fn manifest_keeps_rich_schemas() {
    let ctx = memory_ctx();
    let location = "memory:///rich";
    let rich: SchemaRef = Arc::new(Schema::new_with_metadata(
        vec![
            Field::new(
                "ts",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
            Field::new("amount", DataType::Decimal128(12, 2), false),
        ],
        [("origin".to_string(), "test".to_string())].into(),
    ));
    let sink = ParquetSink::new(location);
    open(&ctx, &sink).await;
    sink.add_batch(0, Arc::clone(&rich), Vec::new())
        .await
        .unwrap();
    let entries = ParquetSink::committed_batches(&ctx, location)
        .await
        .unwrap();
    assert_eq!(entries[0].schema, *rich);
    let df = ParquetSink::read_committed(&ctx, location).await.unwrap();
    assert_eq!(df.schema().as_arrow().fields(), rich.fields());
}

#[tokio::test]
async fn max_rows_per_file_splits_batches() {
    let ctx = memory_ctx();
    let location = "memory:///split";
    let sink = ParquetSink::new(location).max_rows_per_file(2);
    open(&ctx, &sink).await;
    sink.add_batch(
        0,
        schema(),
        vec![batch(&[1, 2, 3]), batch(&[4]), batch(&[5])],
    )
    .await
    .unwrap();
    let entries = ParquetSink::committed_batches(&ctx, location)
        .await
        .unwrap();
    let rows: Vec<u64> = entries[0].files.iter().map(|f| f.num_rows).collect();
    assert_eq!(rows, vec![2, 2, 1]);
    assert_eq!(read_ids(&ctx, location).await, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn no_manifest_is_a_clear_error() {
    let ctx = memory_ctx();
    let err = ParquetSink::read_committed(&ctx, "memory:///nothing")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no committed batches"), "{err}");
    assert!(
        ParquetSink::committed_batches(&ctx, "memory:///nothing")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_sink_path_that_is_a_regular_file_fails_at_once_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::write(&out, b"not a directory").unwrap();
    let ctx = SessionContext::new();
    let sink = ParquetSink::new(out.to_str().unwrap());
    open(&ctx, &sink).await;
    let err = sink
        .add_batch(0, schema(), vec![batch(&[1])])
        .await
        .unwrap_err();
    let message = err.to_string();
    // The sink and its path, not "checkpoint I/O failed".
    assert!(
        message.starts_with(&format!(
            "sink FileSink[parquet: file://{}]: batch 0: ",
            out.display()
        )),
        "{message}"
    );
    assert!(message.contains("Not a directory"), "{message}");
    assert!(!message.contains("checkpoint"), "{message}");
    // Retrying cannot help, so the engine does not retry.
    assert!(!err.is_transient(), "{message}");
    assert_eq!(std::fs::read(&out).unwrap(), b"not a directory");
}

#[tokio::test]
async fn corrupt_manifest_names_the_file() {
    let location = "memory:///corrupt";
    let ctx = one_batch_then_entry(ParquetSink::new(location), location, "0", b"garbage\n").await;
    let err = ParquetSink::read_committed(&ctx, location)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("corrupt/_tidemill_sink/0"),
        "{err}"
    );
}

#[tokio::test]
async fn description_open_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = ParquetSink::new(tmp.path().join("out").to_str().unwrap());
    let expected = format!(
        "FileSink[parquet: file://{}]",
        tmp.path().join("out").display()
    );
    assert_eq!(sink.description(), expected);

    let err = sink
        .add_batch(0, schema(), vec![batch(&[1])])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("before open"), "{err}");

    let err = sink
        .open(&SinkContext {
            session: SessionContext::new(),
            query_name: None,
            query_id: "test".into(),
            schema: schema(),
            output_mode: OutputMode::Complete,
            durability: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append"), "{err}");
}

struct Harness {
    ctx: SessionContext,
    sink: Arc<ParquetSink>,
    location: String,
}

#[async_trait]
impl SinkHarness for Harness {
    fn sink(&self) -> Arc<dyn Sink> {
        Arc::clone(&self.sink) as Arc<dyn Sink>
    }

    fn session(&self) -> SessionContext {
        self.ctx.clone()
    }

    async fn observe(&self) -> Result<Observed> {
        let df = ParquetSink::read_committed(&self.ctx, &self.location).await?;
        Ok(Observed::Rows(df.collect().await?))
    }
}

#[tokio::test]
async fn conformance() {
    for format in [FileFormat::Parquet, FileFormat::Json, FileFormat::Csv] {
        for partition_by in [&[][..], &["name"][..]] {
            let location = format!("memory:///conformance/{format}/{}", partition_by.len());
            let sink = FileSink::new(location.as_str())
                .with_format(format)
                .partition_by(partition_by.iter().copied());
            let harness = Harness {
                ctx: memory_ctx(),
                sink: Arc::new(sink),
                location,
            };
            check_sink(
                &harness,
                vec![batch(&[1, 2])],
                vec![batch(&[3])],
                vec![batch(&[4, 5, 6])],
            )
            .await;
        }
    }
}

#[tokio::test]
async fn exactly_once_in_every_format() {
    for format in [FileFormat::Json, FileFormat::Csv] {
        let tmp = tempfile::tempdir().unwrap();
        let location = tmp.path().join("out").to_str().unwrap().to_string();
        exactly_once_round_trip(SessionContext::new(), &location, format).await;
        // A version 2 entry, saying the format.
        let text = std::fs::read_to_string(tmp.path().join("out/_tidemill_sink/0")).unwrap();
        assert!(
            text.starts_with(
                "tidemill-sink-manifest v2\n{\"batch_id\":0,\"files\":[{\"name\":\"part-00000-"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!(",\"format\":\"{format}\"")),
            "{text}"
        );
        exactly_once_round_trip(memory_ctx(), &format!("memory:///out/{format}"), format).await;
    }
}

/// The schema of the partitioning tests: `id`, a nullable `sym` and a
/// `day`, with `price` between them.
fn partitioned_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("sym", DataType::Utf8, true),
        Field::new("price", DataType::Int64, false),
        Field::new("day", DataType::Date32, false),
    ]))
}

/// Rows `(id, sym, day)` of [`partitioned_schema`] (price = 10 × id; day
/// counted from 2024-01-01).
fn partitioned(rows: &[(i64, Option<&str>, i32)]) -> RecordBatch {
    let first_day = 19_723; // 2024-01-01
    RecordBatch::try_new(
        partitioned_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0 * 10))),
            Arc::new(arrow::array::Date32Array::from_iter_values(
                rows.iter().map(|r| first_day + r.2),
            )),
        ],
    )
    .unwrap()
}

/// Every row of `batches` as text, sorted.
fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Every file under the output directory but the manifest, as paths
/// relative to it, sorted.
async fn all_files(ctx: &SessionContext, location: &str) -> Vec<String> {
    let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
    let listed: Vec<object_store::ObjectMeta> = loc
        .store()
        .list(Some(loc.path()))
        .try_collect()
        .await
        .unwrap();
    let mut names: Vec<String> = listed
        .iter()
        .map(|m| {
            m.location
                .prefix_match(loc.path())
                .unwrap()
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .filter(|name| !name.starts_with(MANIFEST_DIR))
        .collect();
    names.sort();
    names
}

async fn open_with(ctx: &SessionContext, sink: &FileSink, schema: SchemaRef) -> Result<()> {
    sink.open(&SinkContext {
        session: ctx.clone(),
        query_name: None,
        query_id: "test".into(),
        schema,
        output_mode: OutputMode::Append,
        durability: Default::default(),
    })
    .await
}

#[tokio::test]
async fn partitioned_output_in_every_format_is_exactly_the_rows_written() {
    let first = partitioned(&[(1, Some("a"), 0), (2, Some("a/b"), 0), (3, Some("a"), 0)]);
    let second = partitioned(&[
        (4, Some("x=y%"), 1),
        (5, None, 1),
        (6, Some(""), 1),
        (7, Some("a"), 1),
        (8, None, 1),
    ]);
    for format in [FileFormat::Parquet, FileFormat::Json, FileFormat::Csv] {
        let ctx = memory_ctx();
        let location = format!("memory:///partitioned/{format}");
        let sink = FileSink::new(location.as_str())
            .with_format(format)
            .partition_by(["day", "sym"]);
        open_with(&ctx, &sink, partitioned_schema()).await.unwrap();
        sink.add_batch(0, partitioned_schema(), vec![first.clone()])
            .await
            .unwrap();
        sink.add_batch(1, partitioned_schema(), vec![second.clone()])
            .await
            .unwrap();
        // A re-run batch writes nothing.
        sink.add_batch(1, partitioned_schema(), vec![first.clone()])
            .await
            .unwrap();

        let df = FileSink::read_committed(&ctx, &location).await.unwrap();
        let names: Vec<&str> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["id", "sym", "price", "day"], "{format}");
        assert_eq!(
            sorted_rows(&df.collect().await.unwrap()),
            sorted_rows(&[first.clone(), second.clone()]),
            "{format}"
        );

        let ext = format.name();
        let files = all_files(&ctx, &location).await;
        let directories: std::collections::BTreeSet<&str> =
            files.iter().map(|f| &f[..f.rfind('/').unwrap()]).collect();
        assert_eq!(
            directories.into_iter().collect::<Vec<_>>(),
            [
                "day=2024-01-01/sym=a",
                "day=2024-01-01/sym=a%2Fb",
                "day=2024-01-02/sym=__HIVE_DEFAULT_PARTITION__",
                "day=2024-01-02/sym=a",
                "day=2024-01-02/sym=x%3Dy%25",
            ],
            "{format}"
        );
        assert!(
            files
                .iter()
                .all(|f| f.contains("/part-0000") && f.ends_with(&format!(".{ext}"))),
            "{files:?}"
        );

        let entries = FileSink::committed_batches(&ctx, &location).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].partition_by, ["day", "sym"]);
        assert_eq!(entries[1].schema, *partitioned_schema());
        let values: Vec<Vec<Option<&str>>> = entries[1]
            .files
            .iter()
            .map(|f| f.partition_values.iter().map(Option::as_deref).collect())
            .collect();
        // Null sorts first; a null and an empty string share the directory
        // but not the values.
        assert_eq!(
            values,
            [
                [Some("2024-01-02"), None],
                [Some("2024-01-02"), Some("")],
                [Some("2024-01-02"), Some("a")],
                [Some("2024-01-02"), Some("x=y%")],
            ]
        );
        let mut listed: Vec<String> = entries
            .iter()
            .flat_map(|e| e.files.iter().map(|f| f.name.clone()))
            .collect();
        listed.sort();
        assert_eq!(listed, files);

        // The data files hold the other columns only.
        let loc = Location::resolve(&location, &ctx.runtime_env()).unwrap();
        let name = &entries[0].files[0].name;
        let mut path = loc.path().clone();
        for part in name.split('/') {
            path = path.join(PathPart::parse(part).unwrap());
        }
        let bytes = loc.store().get(&path).await.unwrap().bytes().await.unwrap();
        match format {
            FileFormat::Json => assert_eq!(
                std::str::from_utf8(&bytes).unwrap().lines().next().unwrap(),
                r#"{"id":1,"price":10}"#
            ),
            FileFormat::Csv => assert_eq!(
                std::str::from_utf8(&bytes).unwrap(),
                "id,price\n1,10\n3,30\n"
            ),
            FileFormat::Parquet => {
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .unwrap();
                let fields: Vec<&str> = reader
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                assert_eq!(fields, ["id", "price"]);
            }
        }
    }
}

#[tokio::test]
async fn leftovers_of_a_crashed_partitioned_attempt_are_never_read_and_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let location = out.to_str().unwrap();
    let ctx = SessionContext::new();
    let make = || FileSink::json(location).partition_by(["sym"]);
    let sink = make();
    open_with(&ctx, &sink, partitioned_schema()).await.unwrap();
    let first = partitioned(&[(1, Some("a"), 0)]);
    sink.add_batch(0, partitioned_schema(), vec![first.clone()])
        .await
        .unwrap();

    // A crashed attempt of batch 1: its files in three partitions, one of
    // them new, written, but no manifest entry.
    let second = partitioned(&[(2, Some("a"), 0), (3, Some("b/c"), 0), (4, None, 0)]);
    let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
    let crashed = make();
    let written = crashed
        .write_files(&loc, 1, &partitioned_schema(), vec![second.clone()])
        .await
        .unwrap();
    assert_eq!(written.len(), 3);
    // Escaped names are the names on disk, as Hive and Spark write them.
    assert!(out.join("sym=b%2Fc").is_dir());
    assert!(out.join("sym=__HIVE_DEFAULT_PARTITION__").is_dir());
    let read = |ctx: SessionContext| async move {
        let df = FileSink::read_committed(&ctx, location).await.unwrap();
        sorted_rows(&df.collect().await.unwrap())
    };
    assert_eq!(
        read(ctx.clone()).await,
        sorted_rows(std::slice::from_ref(&first))
    );
    assert_eq!(all_files(&ctx, location).await.len(), 4);

    // The restarted query re-runs batch 1.
    let restarted = make();
    open_with(&ctx, &restarted, partitioned_schema())
        .await
        .unwrap();
    restarted
        .add_batch(1, partitioned_schema(), vec![second.clone()])
        .await
        .unwrap();
    assert_eq!(read(ctx.clone()).await, sorted_rows(&[first, second]));
    let files = all_files(&ctx, location).await;
    let entries = FileSink::committed_batches(&ctx, location).await.unwrap();
    let mut listed: Vec<String> = entries
        .iter()
        .flat_map(|e| e.files.iter().map(|f| f.name.clone()))
        .collect();
    listed.sort();
    assert_eq!(files, listed, "the crashed attempt's files are deleted");
    assert_eq!(files.len(), 4);
}

#[tokio::test]
async fn csv_without_a_header_reads_back() {
    let ctx = memory_ctx();
    let location = "memory:///no-header";
    let sink = FileSink::csv(location).has_header(false);
    open(&ctx, &sink).await;
    sink.add_batch(0, schema(), vec![batch(&[1, 2])])
        .await
        .unwrap();
    assert_eq!(read_ids(&ctx, location).await, vec![1, 2]);
    let entries = FileSink::committed_batches(&ctx, location).await.unwrap();
    assert_eq!(entries[0].csv, Some(CsvLayout { header: false }));
    let loc = Location::resolve(location, &ctx.runtime_env()).unwrap();
    let path = loc.path().clone().join(entries[0].files[0].name.as_str());
    let bytes = loc.store().get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&bytes[..], b"1,n1\n2,n2\n");
}

#[tokio::test]
async fn open_refuses_partition_columns_and_csv_columns_it_cannot_write() {
    let ctx = memory_ctx();
    let err = open_with(
        &ctx,
        &FileSink::json("memory:///bad").partition_by(["symbol"]),
        partitioned_schema(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sink FileSink[json: memory:///bad]: partition column 'symbol' is not a column of the \
         output; its columns: id, sym, price, day"
    );
    let floats = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("price", DataType::Float64, false),
    ]));
    let err = open_with(
        &ctx,
        &FileSink::new("memory:///bad").partition_by(["price"]),
        floats,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("partition column 'price' has type Float64, which cannot partition"),
        "{err}"
    );
    let nested = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
    ]));
    let err = open_with(&ctx, &FileSink::csv("memory:///bad"), Arc::clone(&nested))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("format 'csv' cannot hold column 'tags' of type List("),
        "{err}"
    );
    // As a partition column it would be refused for its type; JSON holds it.
    open_with(&ctx, &FileSink::json("memory:///bad"), nested)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_entry_of_an_unknown_version_is_refused_naming_it() {
    let location = "memory:///future";
    let entry = b"tidemill-sink-manifest v3\n{}\ncrc32 00000000\n";
    let ctx = one_batch_then_entry(FileSink::json(location), location, "1", entry).await;
    let err = FileSink::read_committed(&ctx, location).await.unwrap_err();
    assert!(
        err.to_string().contains("future/_tidemill_sink/1")
            && err
                .to_string()
                .contains("format version 3 is not supported (this build reads versions 1 and 2)"),
        "{err}"
    );
}
