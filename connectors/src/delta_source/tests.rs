//! The Delta source's unit tests: the conformance suite; the snapshot then
//! each new version; starting positions; read limits; versions skipped
//! (OPTIMIZE), refused or skipped (change commits); data loss; schema
//! changes; a location holding no table; restarts on the checkpoint; the
//! batch form. Tables are written with deltalake's own writer.

use std::path::Path as FsPath;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use object_store::memory::InMemory;
use object_store::path::Path;
use tidemill_engine::{BatchInput, Offset, ReadLimit, Result, Source, SourceContext, SourceStream};
use tidemill_state::CheckpointDir;

use super::{DeltaSource, DeltaStart};
use crate::conformance::{SourceHarness, check_source, open_source};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("sym", DataType::Utf8, true),
        Field::new("day", DataType::Utf8, true),
    ]))
}

/// Rows with ids `ids`: symbol A, B or C by id, day `d<id % 2>`.
fn rows(ids: std::ops::Range<i64>) -> RecordBatch {
    let ids: Vec<i64> = ids.collect();
    let syms: Vec<&str> = ids
        .iter()
        .map(|i| ["A", "B", "C"][(*i % 3) as usize])
        .collect();
    let days: Vec<String> = ids.iter().map(|i| format!("d{}", i % 2)).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(syms)),
            Arc::new(StringArray::from(days)),
        ],
    )
    .unwrap()
}

/// The table at `dir`, loaded, or a new one not yet written.
async fn table(dir: &FsPath) -> DeltaTable {
    let url = deltalake::ensure_table_uri(dir.to_str().unwrap()).unwrap();
    match deltalake::open_table(url.clone()).await {
        Ok(table) => table,
        Err(_) => deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .build()
            .unwrap(),
    }
}

/// Appends `batch` to the table at `dir` (creating it, partitioned by
/// `partitions`): one version.
async fn append(dir: &FsPath, batch: RecordBatch, partitions: &[&str]) -> DeltaTable {
    let mut write = table(dir)
        .await
        .write(vec![batch])
        .with_save_mode(SaveMode::Append);
    if !partitions.is_empty() {
        write = write.with_partition_columns(partitions.iter().map(|p| p.to_string()));
    }
    write.await.unwrap()
}

fn source(dir: &FsPath) -> DeltaSource {
    DeltaSource::new(dir.to_str().unwrap())
}

fn memory_checkpoint() -> CheckpointDir {
    CheckpointDir::new(Arc::new(InMemory::new()), Path::from("chk"))
}

/// Opens `source` for a query whose source checkpoint is `chk`.
async fn open(source: &DeltaSource, chk: &CheckpointDir) -> Box<dyn SourceStream> {
    open_source(source, &SessionContext::new(), chk).await
}

/// The ids of `batches`, sorted.
fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut out: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name("id").unwrap();
            let ids = column.as_any().downcast_ref::<Int64Array>().unwrap();
            ids.values().to_vec()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Runs triggers from `start` with `limit` until no new offset: each
/// batch's ids, and the last offset.
async fn drain(
    stream: &mut Box<dyn SourceStream>,
    start: Option<Offset>,
    limit: ReadLimit,
) -> Result<(Vec<Vec<i64>>, Option<Offset>)> {
    let mut at = start;
    let mut batches = Vec::new();
    loop {
        let end = stream.latest_offset(at.as_ref(), limit).await?;
        if end == at {
            return Ok((batches, at));
        }
        let end = end.unwrap();
        batches.push(ids(&stream.read(at.as_ref(), &end).await?));
        stream.commit(&end).await?;
        at = Some(end);
    }
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

fn flat(batches: &[Vec<i64>]) -> Vec<i64> {
    let mut all: Vec<i64> = batches.iter().flatten().copied().collect();
    all.sort_unstable();
    all
}

fn range(r: std::ops::Range<i64>) -> Vec<i64> {
    r.collect()
}

/// The error of `latest_offset` (or, if it gives an offset, of reading it).
async fn trigger_error(stream: &mut Box<dyn SourceStream>, start: Option<Offset>) -> String {
    match stream.latest_offset(start.as_ref(), ReadLimit::All).await {
        Err(e) => e.to_string(),
        Ok(Some(end)) => stream
            .read(start.as_ref(), &end)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("no error up to {end}")),
        Ok(None) => panic!("no error and no offset"),
    }
}

struct Harness {
    dir: tempfile::TempDir,
    source: Arc<DeltaSource>,
}

#[async_trait]
impl SourceHarness for Harness {
    fn provider(&self) -> Arc<dyn Source> {
        self.source.clone()
    }

    fn session(&self) -> SessionContext {
        SessionContext::new()
    }

    async fn add_data(&mut self, round: usize) -> Result<()> {
        let first = 100 * (round as i64 + 1);
        append(self.dir.path(), rows(first..first + 7), &["day"]).await;
        append(self.dir.path(), rows(first + 7..first + 9), &["day"]).await;
        Ok(())
    }
}

#[tokio::test]
async fn passes_the_source_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..5), &["day"]).await;
    let source = Arc::new(source(dir.path()));
    check_source(&mut Harness { dir, source }).await;
}

#[tokio::test]
async fn reads_the_snapshot_then_each_new_version_under_the_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..3), &[]).await;
    append(dir.path(), rows(3..6), &[]).await;
    let source = source(dir.path()).max_files_per_trigger(1);
    let chk = memory_checkpoint();
    let mut stream = open(&source, &chk).await;
    assert_eq!(stream.default_read_limit(), ReadLimit::MaxFiles(1));
    let (batches, end) = drain(&mut stream, None, ReadLimit::MaxFiles(1))
        .await
        .unwrap();
    // The snapshot of version 1: its two files, one per batch.
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert!(batches.iter().all(|b| b.len() == 3));
    assert_eq!(flat(&batches), range(0..6));
    let end = end.unwrap();
    assert_eq!(end.0["version"], 2, "{end}");
    assert_eq!(end.0["index"], 0);
    assert_eq!(end.0["is_starting_version"], false);

    append(dir.path(), rows(6..9), &[]).await;
    append(dir.path(), rows(9..11), &[]).await;
    let (batches, _) = drain(&mut stream, Some(end), ReadLimit::MaxFiles(1))
        .await
        .unwrap();
    assert_eq!(batches, vec![range(6..9), range(9..11)]);
}

#[tokio::test]
async fn a_file_limit_can_end_a_batch_inside_a_version_and_bytes_bound_it_too() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..1), &[]).await;
    // One version of four files: the partitions of a partitioned write.
    let partitioned = tempfile::tempdir().unwrap();
    append(partitioned.path(), rows(0..1), &["sym"]).await;
    append(partitioned.path(), rows(1..4), &["sym"]).await;
    let source = source(partitioned.path()).starting_position(DeltaStart::Version(1));
    let chk = memory_checkpoint();
    let mut stream = open(&source, &chk).await;
    let (batches, end) = drain(&mut stream, None, ReadLimit::MaxFiles(2))
        .await
        .unwrap();
    assert_eq!(
        batches.len(),
        2,
        "three files of version 1, two per batch: {batches:?}"
    );
    assert_eq!(flat(&batches), range(1..4));
    assert_eq!(end.unwrap().0["version"], 2);

    // A byte limit of 1 admits one file per batch (the file that crosses it).
    let source = super::DeltaSource::new(partitioned.path().to_str().unwrap())
        .starting_position(DeltaStart::Version(0))
        .max_bytes_per_trigger(1);
    let mut stream = open(&source, &memory_checkpoint()).await;
    let limit = stream.default_read_limit();
    let (batches, _) = drain(&mut stream, None, limit).await.unwrap();
    assert_eq!(batches.len(), 4, "{batches:?}");
    assert_eq!(flat(&batches), range(0..4));
    // Trigger::Once reads everything.
    let mut stream = open(&source, &memory_checkpoint()).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::All).await.unwrap();
    assert_eq!(batches, vec![range(0..4)]);
}

#[tokio::test]
async fn starting_versions_latest_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    for v in 0..3 {
        append(dir.path(), rows(v * 10..v * 10 + 2), &[]).await;
    }
    let all = |source: DeltaSource| async move {
        let mut stream = open(&source, &memory_checkpoint()).await;
        let (batches, _) = drain(&mut stream, None, ReadLimit::All).await.unwrap();
        flat(&batches)
    };
    assert_eq!(all(source(dir.path())).await, vec![0, 1, 10, 11, 20, 21]);
    assert_eq!(
        all(source(dir.path()).starting_position(DeltaStart::Version(1))).await,
        vec![10, 11, 20, 21]
    );
    // `latest`: nothing now; what later versions add.
    let latest = source(dir.path()).starting_position(DeltaStart::Latest);
    let mut stream = open(&latest, &memory_checkpoint()).await;
    assert_eq!(
        stream.latest_offset(None, ReadLimit::All).await.unwrap(),
        None
    );
    append(dir.path(), rows(30..32), &[]).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::All).await.unwrap();
    assert_eq!(flat(&batches), vec![30, 31]);

    // A timestamp: the versions committed at or after it.
    let log = dir.path().join("_delta_log");
    let modified = |v: u64| {
        let at: chrono::DateTime<chrono::Utc> =
            std::fs::metadata(log.join(format!("{v:020}.json")))
                .unwrap()
                .modified()
                .unwrap()
                .into();
        at
    };
    let at = modified(2);
    assert!(modified(1) < at, "commits in the same instant");
    assert_eq!(
        all(source(dir.path()).starting_position(DeltaStart::Timestamp(at))).await,
        vec![20, 21, 30, 31]
    );
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    assert_eq!(
        all(source(dir.path()).starting_position(DeltaStart::Timestamp(later))).await,
        Vec::<i64>::new()
    );
    // A version after the latest is refused.
    let beyond = source(dir.path()).starting_position(DeltaStart::Version(9));
    let mut stream = open(&beyond, &memory_checkpoint()).await;
    let err = trigger_error(&mut stream, None).await;
    assert!(
        err.contains("starting_version 9 of the Delta table 'file://")
            && err.contains("its latest version is 3"),
        "{err}"
    );
}

#[tokio::test]
async fn partition_columns_are_columns_of_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..6), &["day", "sym"]).await;
    let source = source(dir.path());
    let session = SessionContext::new();
    assert_eq!(Source::schema(&source, &session).await.unwrap(), schema());
    let mut stream = open(&source, &memory_checkpoint()).await;
    let end = stream
        .latest_offset(None, ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    let batches = stream.read(None, &end).await.unwrap();
    let mut seen = Vec::new();
    for batch in &batches {
        assert_eq!(batch.schema(), schema());
        let id = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let sym = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let day = batch
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for r in 0..batch.num_rows() {
            seen.push((
                id.value(r),
                sym.value(r).to_string(),
                day.value(r).to_string(),
            ));
        }
    }
    seen.sort();
    let expected: Vec<(i64, String, String)> = (0..6)
        .map(|i| {
            (
                i,
                ["A", "B", "C"][(i % 3) as usize].to_string(),
                format!("d{}", i % 2),
            )
        })
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn optimize_is_skipped_and_change_commits_fail_unless_skipped_or_ignored() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..3), &[]).await; // v0
    append(dir.path(), rows(3..6), &[]).await; // v1
    let (optimized, _) = table(dir.path()).await.optimize().await.unwrap(); // v2: dataChange = false
    assert_eq!(optimized.version(), Some(2));
    append(dir.path(), rows(6..8), &[]).await; // v3
    let from0 = || source(dir.path()).starting_position(DeltaStart::Version(0));
    let mut stream = open(&from0(), &memory_checkpoint()).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::MaxFiles(1))
        .await
        .unwrap();
    assert_eq!(
        batches,
        vec![range(0..3), range(3..6), range(6..8)],
        "OPTIMIZE adds no rows"
    );

    // v4: a DELETE rewriting the compacted file.
    let (deleted, _) = table(dir.path())
        .await
        .delete()
        .with_predicate("id = 4")
        .await
        .unwrap();
    assert_eq!(deleted.version(), Some(4));
    append(dir.path(), rows(8..9), &[]).await; // v5
    let mut stream = open(&from0(), &memory_checkpoint()).await;
    let err = trigger_error(&mut stream, None).await;
    assert!(
        err.contains("version 4 of the Delta table 'file://")
            && err.contains("removes or rewrites rows (DELETE: it removes 'part-")
            && err.contains("skip_change_commits = true"),
        "{err}"
    );
    // The versions before it are read; the trigger that reaches it fails.
    let mut stream = open(&from0(), &memory_checkpoint()).await;
    let end = stream
        .latest_offset(None, ReadLimit::MaxFiles(3))
        .await
        .unwrap();
    assert_eq!(
        ids(&stream.read(None, end.as_ref().unwrap()).await.unwrap()),
        range(0..8)
    );
    assert!(
        stream
            .latest_offset(end.as_ref(), ReadLimit::MaxFiles(3))
            .await
            .is_err()
    );

    let skip = from0().skip_change_commits(true);
    let mut stream = open(&skip, &memory_checkpoint()).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::All).await.unwrap();
    assert_eq!(flat(&batches), range(0..9));
    // ignore_changes: the rewritten file's rows come again; deletes are not seen.
    let ignore = from0().ignore_changes(true);
    let mut stream = open(&ignore, &memory_checkpoint()).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::MaxFiles(1))
        .await
        .unwrap();
    assert_eq!(batches.last().unwrap(), &vec![8]);
    let rewritten = &batches[batches.len() - 2];
    assert_eq!(
        rewritten,
        &vec![0, 1, 2, 3, 5],
        "the compacted file without id 4"
    );
    // ignore_deletes does not cover a rewrite.
    let deletes = from0().ignore_deletes(true);
    let mut stream = open(&deletes, &memory_checkpoint()).await;
    assert!(trigger_error(&mut stream, None).await.contains("version 4"));
}

#[tokio::test]
async fn a_version_deleting_whole_files_is_skipped_with_ignore_deletes() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..4), &["day"]).await; // v0: files d0, d1
    table(dir.path())
        .await
        .delete()
        .with_predicate("day = 'd0'")
        .await
        .unwrap(); // v1
    append(dir.path(), rows(4..6), &["day"]).await; // v2
    let from0 = || source(dir.path()).starting_position(DeltaStart::Version(0));
    let mut stream = open(&from0(), &memory_checkpoint()).await;
    let err = trigger_error(&mut stream, None).await;
    assert!(err.contains("version 1 of the Delta table"), "{err}");
    let mut stream = open(&from0().ignore_deletes(true), &memory_checkpoint()).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::All).await.unwrap();
    assert_eq!(flat(&batches), range(0..6));
}

#[tokio::test]
async fn a_vacuumed_data_file_is_an_error_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    for v in 0..4 {
        append(dir.path(), rows(v * 10..v * 10 + 3), &[]).await;
    }
    // Version 2's file, as VACUUM would remove it.
    let log =
        std::fs::read_to_string(dir.path().join("_delta_log/00000000000000000002.json")).unwrap();
    let file = log
        .lines()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["add"]["path"].as_str().map(str::to_string)
        })
        .unwrap();
    std::fs::remove_file(dir.path().join(&file)).unwrap();

    let from0 = || source(dir.path()).starting_position(DeltaStart::Version(0));
    let mut stream = open(&from0(), &memory_checkpoint()).await;
    let err = trigger_error(&mut stream, None).await;
    assert!(
        err.contains("data loss in the Delta table 'file://")
            && err.contains(&format!("version 2's data file '{file}' no longer exists"))
            && err.contains("fail_on_data_loss = false"),
        "{err}"
    );
    let lenient = from0().fail_on_data_loss(false);
    let mut stream = open(&lenient, &memory_checkpoint()).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::MaxFiles(1))
        .await
        .unwrap();
    assert_eq!(flat(&batches), vec![0, 1, 2, 10, 11, 12, 30, 31, 32]);
    let counts = lenient.data_loss();
    assert_eq!((counts.versions, counts.files, counts.rows), (0, 1, 3));
    // The batch form skips it the same way, and counts it once.
    let df = lenient.read_batch(&SessionContext::new()).await.unwrap();
    assert_eq!(
        ids(&df.collect().await.unwrap()),
        vec![0, 1, 2, 10, 11, 12, 30, 31, 32]
    );
    assert_eq!(lenient.data_loss().files, 1);
    // The batch form reads the latest snapshot: the file is one of version 3's.
    let err = from0()
        .read_batch(&SessionContext::new())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!("version 3's data file '{file}' no longer exists")),
        "{err}"
    );
}

#[tokio::test]
async fn a_cleaned_up_log_file_is_an_error_or_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    for v in 0..4 {
        append(dir.path(), rows(v * 10..v * 10 + 2), &[]).await;
    }
    // A checkpoint at version 3, then version 1's log file removed, as
    // log cleanup would.
    deltalake::checkpoints::create_checkpoint(&table(dir.path()).await, None)
        .await
        .unwrap();
    std::fs::remove_file(dir.path().join("_delta_log/00000000000000000001.json")).unwrap();
    let from0 = || source(dir.path()).starting_position(DeltaStart::Version(0));
    let mut stream = open(&from0(), &memory_checkpoint()).await;
    let err = trigger_error(&mut stream, None).await;
    assert!(
        err.contains(
            "version 1's log file '_delta_log/00000000000000000001.json' no longer exists"
        ),
        "{err}"
    );
    let lenient = from0().fail_on_data_loss(false);
    let mut stream = open(&lenient, &memory_checkpoint()).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::All).await.unwrap();
    assert_eq!(flat(&batches), vec![0, 1, 20, 21, 30, 31]);
    assert_eq!(lenient.data_loss().versions, 1);
    // The default start (the snapshot) loses nothing: it reads the checkpoint.
    let mut stream = open(&source(dir.path()), &memory_checkpoint()).await;
    let (batches, _) = drain(&mut stream, None, ReadLimit::All).await.unwrap();
    assert_eq!(flat(&batches), vec![0, 1, 10, 11, 20, 21, 30, 31]);
}

#[tokio::test]
async fn a_location_without_a_table_is_refused_naming_it() {
    let session = SessionContext::new();
    let empty = tempfile::tempdir().unwrap();
    let err = Source::schema(&source(empty.path()), &session)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("DeltaSource[file://{}]", empty.path().display()))
            && err.contains("is not a Delta table: there is nothing at this location"),
        "{err}"
    );
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("part-0.parquet"), b"not delta").unwrap();
    let err = Source::schema(&source(other.path()), &session)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not a Delta table: it holds 'part-0.parquet' but no _delta_log"),
        "{err}"
    );
    let missing = empty.path().join("nowhere");
    let err = source(&missing)
        .read_batch(&session)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is not a Delta table"), "{err}");
    // Declared columns are checked against the table when the query opens.
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..2), &[]).await;
    let declared = Arc::new(Schema::new(vec![Field::new(
        "price",
        DataType::Float64,
        true,
    )]));
    let err = source(dir.path())
        .schema(declared.clone())
        .open(SourceContext {
            session: session.clone(),
            schema: declared,
            checkpoint: memory_checkpoint(),
        })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("the declared columns do not fit the Delta table")
            && err.contains(
                "column 'price' is dropped or renamed (the table's columns: id, sym, day)"
            ),
        "{err}"
    );
}

#[tokio::test]
async fn an_incompatible_schema_change_fails_the_trigger_naming_table_and_version() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..3), &[]).await;
    let mut stream = open(&source(dir.path()), &memory_checkpoint()).await;
    let (_, end) = drain(&mut stream, None, ReadLimit::All).await.unwrap();

    // v1 adds a nullable column: the stream goes on with its columns.
    let extra = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("sym", DataType::Utf8, true),
        Field::new("day", DataType::Utf8, true),
        Field::new("extra", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        extra,
        vec![
            Arc::new(Int64Array::from(vec![3])),
            Arc::new(StringArray::from(vec!["A"])),
            Arc::new(StringArray::from(vec!["d1"])),
            Arc::new(arrow::array::Float64Array::from(vec![0.5])),
        ],
    )
    .unwrap();
    table(dir.path())
        .await
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .await
        .unwrap();
    let (batches, end) = drain(&mut stream, end, ReadLimit::All).await.unwrap();
    assert_eq!(batches, vec![vec![3]]);

    // v2 overwrites the table with `id` as a string.
    let retyped = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("sym", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        retyped,
        vec![
            Arc::new(StringArray::from(vec!["x"])),
            Arc::new(StringArray::from(vec!["A"])),
        ],
    )
    .unwrap();
    table(dir.path())
        .await
        .write(vec![batch])
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .await
        .unwrap();
    let err = stream
        .latest_offset(end.as_ref(), ReadLimit::All)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("version 2 of the Delta table 'file://")
            && err.contains("changes the schema incompatibly: column 'id' has type Utf8"),
        "{err}"
    );
    // A query defined now, with the old columns, is refused when it opens.
    let err = source(dir.path())
        .open(SourceContext {
            session: SessionContext::new(),
            schema: schema(),
            checkpoint: memory_checkpoint(),
        })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("changes the schema incompatibly"), "{err}");
}

#[tokio::test]
async fn a_restarted_stream_replays_its_ranges_and_goes_on_at_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..3), &[]).await;
    append(dir.path(), rows(3..5), &[]).await;
    let source = source(dir.path());
    let chk = memory_checkpoint();
    let mut stream = open(&source, &chk).await;
    let first = stream
        .latest_offset(None, ReadLimit::MaxFiles(1))
        .await
        .unwrap()
        .unwrap();
    let first_rows = ids(&stream.read(None, &first).await.unwrap());
    assert_eq!(first.0["is_starting_version"], true);
    drop(stream);

    // A new version between the runs; the snapshot stays at version 1.
    append(dir.path(), rows(5..7), &[]).await;
    let mut stream = open(&source, &chk).await;
    assert_eq!(
        ids(&stream.read(None, &first).await.unwrap()),
        first_rows,
        "the first batch replays from where the stream started"
    );
    let (batches, end) = drain(&mut stream, Some(first), ReadLimit::MaxFiles(1))
        .await
        .unwrap();
    let mut all = first_rows.clone();
    all.extend(flat(&batches));
    all.sort_unstable();
    assert_eq!(all, range(0..7), "no row twice, none missing");
    assert_eq!(end.unwrap().0["version"], 3);

    // A checkpoint of another table is refused.
    let other = tempfile::tempdir().unwrap();
    append(other.path(), rows(0..1), &[]).await;
    let err = DeltaSource::new(other.path().to_str().unwrap())
        .open(SourceContext {
            session: SessionContext::new(),
            schema: schema(),
            checkpoint: chk.clone(),
        })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot be reused for another table"), "{err}");
}

#[tokio::test]
async fn read_input_partitions_give_the_rows_of_read() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..40), &["day", "sym"]).await;
    let mut stream = open(&source(dir.path()), &memory_checkpoint()).await;
    let end = stream
        .latest_offset(None, ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    let session = SessionContext::new();
    match stream.read_input(None, &end, 4).await.unwrap() {
        BatchInput::Partitions(parts) => {
            assert_eq!(parts.len(), 4, "six files over four partitions");
            let mut all = Vec::new();
            for part in parts {
                use futures::TryStreamExt;
                let batches: Vec<RecordBatch> = part
                    .execute(session.task_ctx())
                    .try_collect()
                    .await
                    .unwrap();
                all.extend(ids(&batches));
            }
            all.sort_unstable();
            assert_eq!(all, range(0..40));
        }
        BatchInput::Rows(_) => panic!("files are read as partitions"),
    }
}

#[tokio::test]
async fn the_batch_form_reads_what_the_stream_reads() {
    let dir = tempfile::tempdir().unwrap();
    for v in 0..5 {
        append(dir.path(), rows(v * 4..v * 4 + 4), &["day"]).await;
    }
    let source = source(dir.path());
    let session = SessionContext::new();
    let df = source.read_batch(&session).await.unwrap();
    assert_eq!(df.schema().as_arrow(), schema().as_ref());
    let batch_rows = sorted_rows(&df.collect().await.unwrap());
    let mut stream = open(&source, &memory_checkpoint()).await;
    let end = stream
        .latest_offset(None, ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    let stream_rows = sorted_rows(&stream.read(None, &end).await.unwrap());
    assert_eq!(batch_rows, stream_rows);
    assert_eq!(batch_rows.len(), 20);
}

#[tokio::test]
async fn available_now_stops_at_the_version_latest_when_prepared() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), rows(0..2), &[]).await;
    let source = source(dir.path()).starting_position(DeltaStart::Version(0));
    let mut stream = open(&source, &memory_checkpoint()).await;
    stream.prepare_for_available_now().await.unwrap();
    append(dir.path(), rows(2..4), &[]).await;
    let (batches, end) = drain(&mut stream, None, ReadLimit::All).await.unwrap();
    assert_eq!(flat(&batches), range(0..2));
    assert_eq!(end, stream.available_now_target());
}
