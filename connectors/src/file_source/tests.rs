use super::*;
use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampSecondArray,
};
use arrow::datatypes::{
    Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampNanosecondType,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use std::path::Path as FsPath;
use tidemill_state::CheckpointDir;

/// A session, and a checkpoint directory for the source under `chk`.
fn checkpoint(session: &SessionContext, chk: &FsPath) -> CheckpointDir {
    Location::resolve(chk.to_str().unwrap(), &session.runtime_env())
        .unwrap()
        .dir()
        .child("sources")
        .child("0")
}

/// The offset admitting everything available, from the beginning.
async fn end_of_all(s: &mut Box<dyn SourceStream>) -> Offset {
    s.latest_offset(None, ReadLimit::All)
        .await
        .unwrap()
        .expect("files are available")
}

/// Admits everything available and reads it, from the beginning.
async fn read_all(s: &mut Box<dyn SourceStream>) -> Result<Vec<RecordBatch>> {
    let end = end_of_all(s).await;
    s.read(None, &end).await
}

async fn open(
    source: &FileSource,
    session: &SessionContext,
    chk: CheckpointDir,
) -> Box<dyn SourceStream> {
    crate::conformance::open_source(source, session, &chk).await
}

/// Writes a file the way writers must: under a hidden name, then renamed.
fn write(dir: &FsPath, name: &str, content: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn json_rows(ids: std::ops::Range<i64>) -> Vec<u8> {
    ids.map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
            col.iter().map(|v| v.unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

fn off(n: u64) -> Offset {
    Offset::from_u64(n)
}

fn id_name_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

async fn read_err(source: &FileSource, session: &SessionContext, chk: CheckpointDir) -> String {
    let mut s = open(source, session, chk).await;
    read_all(&mut s).await.unwrap_err().to_string()
}

#[tokio::test]
async fn discovers_new_files_across_calls() {
    let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    assert_eq!(s.default_read_limit(), ReadLimit::All);

    // Nothing yet: no offset at all.
    assert_eq!(s.latest_offset(None, ReadLimit::All).await.unwrap(), None);

    write(data.path(), "a.json", &json_rows(0..3));
    write(data.path(), "b.json", &json_rows(3..5));
    let first = end_of_all(&mut s).await;
    assert_eq!(first, off(2));
    let batches = s.read(None, &first).await.unwrap();
    assert_eq!(ids(&batches), vec![0, 1, 2, 3, 4]);
    assert!(batches.iter().all(|b| b.schema() == id_name_schema()));

    // Unchanged directory: the same offset comes back.
    assert_eq!(
        s.latest_offset(Some(&first), ReadLimit::All).await.unwrap(),
        Some(off(2))
    );

    write(data.path(), "c.json", &json_rows(5..7));
    let second = s
        .latest_offset(Some(&first), ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second, off(3));
    assert_eq!(
        ids(&s.read(Some(&first), &second).await.unwrap()),
        vec![5, 6]
    );
    // An empty range yields no rows.
    assert!(s.read(Some(&second), &second).await.unwrap().is_empty());
    // Ranges beyond the log are refused.
    let err = s.read(None, &off(9)).await.unwrap_err().to_string();
    assert!(err.contains("beyond"), "{err}");

    // Files in sub-directories are found too.
    std::fs::create_dir(data.path().join("day=2")).unwrap();
    write(&data.path().join("day=2"), "d.json", &json_rows(7..8));
    let third = s
        .latest_offset(Some(&second), ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&s.read(Some(&second), &third).await.unwrap()), vec![7]);
}

#[tokio::test]
async fn max_files_per_trigger_bounds_offsets() {
    let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..5 {
        write(
            data.path(),
            &format!("f{i}.json"),
            &json_rows(i * 10..i * 10 + 2),
        );
    }
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap())
        .schema(id_name_schema())
        .max_files_per_trigger(2);
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let limit = s.default_read_limit();
    assert_eq!(limit, ReadLimit::MaxFiles(2));

    let mut start: Option<Offset> = None;
    let mut seen = Vec::new();
    for expected in [2, 4, 5] {
        let end = s
            .latest_offset(start.as_ref(), limit)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, off(expected));
        seen.extend(ids(&s.read(start.as_ref(), &end).await.unwrap()));
        start = Some(end);
    }
    assert_eq!(
        s.latest_offset(start.as_ref(), limit).await.unwrap(),
        Some(off(5))
    );
    assert_eq!(seen, vec![0, 1, 10, 11, 20, 21, 30, 31, 40, 41]);

    let err = FileSource::json("x")
        .schema(id_name_schema())
        .max_files_per_trigger(0)
        .open(SourceContext {
            session: session.clone(),
            schema: id_name_schema(),
            checkpoint: checkpoint(&session, chk.path()),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[tokio::test]
async fn restart_continues_without_rereading_or_skipping() {
    let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    write(data.path(), "a.json", &json_rows(0..2));
    write(data.path(), "b.json", &json_rows(2..4));
    write(data.path(), "c.json", &json_rows(4..6));

    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    // Admit one file; the other two are logged but not yet read.
    let first = s
        .latest_offset(None, ReadLimit::MaxFiles(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, off(1));
    let first_rows = s.read(None, &first).await.unwrap();
    assert_eq!(ids(&first_rows), vec![0, 1]);
    drop(s);

    // Touch an already logged file (new mtime, same name) and add a new one.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(data.path().join("a.json"), json_rows(0..2)).unwrap();
    write(data.path(), "d.json", &json_rows(6..8));

    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    // Replaying the old range gives identical rows.
    assert_eq!(s.read(None, &first).await.unwrap(), first_rows);
    let end = s
        .latest_offset(Some(&first), ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, off(4));
    assert_eq!(
        ids(&s.read(Some(&first), &end).await.unwrap()),
        vec![2, 3, 4, 5, 6, 7]
    );
    assert_eq!(
        s.latest_offset(Some(&end), ReadLimit::All).await.unwrap(),
        Some(off(4))
    );

    // The log is on disk, one numbered file per append.
    let mut names = checkpoint(&session, chk.path())
        .child("seen")
        .list_names()
        .await
        .unwrap();
    names.sort();
    assert_eq!(names, vec!["0".to_string(), "3".to_string()]);

    // The same checkpoint cannot be reused for another directory.
    let other = tempfile::tempdir().unwrap();
    let err = FileSource::json(other.path().to_str().unwrap())
        .schema(id_name_schema())
        .open(SourceContext {
            session: session.clone(),
            schema: id_name_schema(),
            checkpoint: checkpoint(&session, chk.path()),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, TidemillError::CheckpointMismatch { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn hidden_files_are_ignored_until_renamed() {
    let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;

    std::fs::write(data.path().join(".part-0.json"), json_rows(0..2)).unwrap();
    std::fs::write(data.path().join("_part-1.json"), json_rows(2..4)).unwrap();
    std::fs::create_dir_all(data.path().join("_tidemill_sink")).unwrap();
    std::fs::write(data.path().join("_tidemill_sink/manifest.json"), b"{}").unwrap();
    std::fs::create_dir_all(data.path().join(".staging")).unwrap();
    std::fs::write(data.path().join(".staging/x.json"), json_rows(9..10)).unwrap();
    assert_eq!(s.latest_offset(None, ReadLimit::All).await.unwrap(), None);

    std::fs::rename(
        data.path().join(".part-0.json"),
        data.path().join("part-0.json"),
    )
    .unwrap();
    let end = end_of_all(&mut s).await;
    assert_eq!(end, off(1));
    assert_eq!(ids(&s.read(None, &end).await.unwrap()), vec![0, 1]);

    std::fs::rename(
        data.path().join("_part-1.json"),
        data.path().join("part-1.json"),
    )
    .unwrap();
    let end2 = s
        .latest_offset(Some(&end), ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&s.read(Some(&end), &end2).await.unwrap()), vec![2, 3]);
}

#[tokio::test]
async fn json_schema_explicit_and_inferred() {
    let data = tempfile::tempdir().unwrap();
    write(
        data.path(),
        "a.json",
        b"{\"id\": 1, \"name\": \"x\", \"score\": 1.5}\n{\"id\": 2, \"score\": 2}\n",
    );
    let session = SessionContext::new();

    let inferred = Source::schema(&FileSource::json(data.path().to_str().unwrap()), &session)
        .await
        .unwrap();
    let expected = Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]);
    assert_eq!(inferred.as_ref(), &expected);

    let chk = tempfile::tempdir().unwrap();
    let source = FileSource::json(data.path().to_str().unwrap());
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let end = end_of_all(&mut s).await;
    let batch = &s.read(None, &end).await.unwrap()[0];
    assert_eq!(batch.schema(), inferred);
    let names = batch
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(names.value(0), "x");
    assert!(names.is_null(1));

    // An explicit schema picks and orders columns by name; a nullable
    // column the file lacks is all nulls.
    let explicit = Arc::new(Schema::new(vec![
        Field::new("score", DataType::Float64, true),
        Field::new("id", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, true),
    ]));
    let source = FileSource::json(data.path().to_str().unwrap()).schema(Arc::clone(&explicit));
    assert_eq!(Source::schema(&source, &session).await.unwrap(), explicit);
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let batch = &read_all(&mut s).await.unwrap()[0];
    assert_eq!(batch.schema(), explicit);
    let scores = batch
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(scores.values().to_vec(), vec![1.5, 2.0]);
    assert_eq!(batch.column(2).null_count(), 2);
}

#[tokio::test]
async fn csv_schema_explicit_and_inferred() {
    let data = tempfile::tempdir().unwrap();
    write(
        data.path(),
        "a.csv",
        b"id,name,price\n1,apple,0.5\n2,pear,1\n",
    );
    write(data.path(), "b.csv", b"name,id,price\nplum,3,2\n");
    let session = SessionContext::new();
    let inferred = Source::schema(&FileSource::csv(data.path().to_str().unwrap()), &session)
        .await
        .unwrap();
    let expected = Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
    ]);
    assert_eq!(inferred.as_ref(), &expected);

    let chk = tempfile::tempdir().unwrap();
    let source = FileSource::csv(data.path().to_str().unwrap());
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let end = end_of_all(&mut s).await;
    let batches = s.read(None, &end).await.unwrap();
    // Columns are matched by header name, so b.csv's order does not matter.
    assert_eq!(ids(&batches), vec![1, 2, 3]);
    assert!(batches.iter().all(|b| b.schema() == inferred));

    // Explicit schema, no header, another delimiter: columns by position.
    let plain = tempfile::tempdir().unwrap();
    write(plain.path(), "x.csv", b"7;seven\n8;eight\n");
    let explicit = id_name_schema();
    let source = FileSource::csv(plain.path().to_str().unwrap())
        .has_header(false)
        .delimiter(b';')
        .schema(Arc::clone(&explicit));
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let batches = read_all(&mut s).await.unwrap();
    assert_eq!(ids(&batches), vec![7, 8]);
    assert_eq!(batches[0].schema(), explicit);
    assert_eq!(batches[0].column(1).as_string::<i32>().value(1), "eight");

    // Inferred without a header: column_1, column_2.
    let headerless = FileSource::csv(plain.path().to_str().unwrap())
        .has_header(false)
        .delimiter(b';');
    let inferred = Source::schema(&headerless, &session).await.unwrap();
    assert_eq!(inferred.field(0).name(), "column_1");
    assert_eq!(inferred.field(0).data_type(), &DataType::Int64);
}

fn write_parquet(dir: &FsPath, name: &str, batch: &RecordBatch) {
    let tmp = dir.join(format!("_{name}"));
    let file = std::fs::File::create(&tmp).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn parquet_schema_explicit_inferred_and_mismatch() {
    let data = tempfile::tempdir().unwrap();
    let file_schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("extra", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&file_schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("a"), None])),
            Arc::new(Float64Array::from(vec![0.5, 1.5])),
        ],
    )
    .unwrap();
    write_parquet(data.path(), "p1.parquet", &batch);
    let session = SessionContext::new();

    // Inferred: from the footer, nullability included; strings as
    // `Utf8View`, exactly as DataFusion's own parquet read of the files.
    let inferred = Source::schema(
        &FileSource::parquet(data.path().to_str().unwrap()),
        &session,
    )
    .await
    .unwrap();
    let view_schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8View, true),
        Field::new("extra", DataType::Float64, true),
    ]));
    assert_eq!(inferred, view_schema);
    let batch_read = session
        .read_parquet(
            data.path().to_str().unwrap(),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(batch_read.schema().as_arrow(), view_schema.as_ref());
    let chk = tempfile::tempdir().unwrap();
    let source = FileSource::parquet(data.path().to_str().unwrap());
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let end = end_of_all(&mut s).await;
    let as_views = arrow::compute::cast(batch.column(1), &DataType::Utf8View).unwrap();
    let expected = RecordBatch::try_new(
        Arc::clone(&view_schema),
        vec![
            Arc::clone(batch.column(0)),
            as_views,
            Arc::clone(batch.column(2)),
        ],
    )
    .unwrap();
    assert_eq!(s.read(None, &end).await.unwrap(), vec![expected]);

    // A session that reads parquet strings as `Utf8` infers them so.
    let mut config = datafusion::prelude::SessionConfig::new();
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    let plain_session = SessionContext::new_with_config(config);
    let inferred = Source::schema(
        &FileSource::parquet(data.path().to_str().unwrap()),
        &plain_session,
    )
    .await
    .unwrap();
    assert_eq!(inferred, file_schema);
    let chk = tempfile::tempdir().unwrap();
    let source = FileSource::parquet(data.path().to_str().unwrap());
    let mut s = open(
        &source,
        &plain_session,
        checkpoint(&plain_session, chk.path()),
    )
    .await;
    let end = end_of_all(&mut s).await;
    assert_eq!(s.read(None, &end).await.unwrap(), vec![batch.clone()]);

    // Explicit: a subset, reordered.
    let explicit = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("id", DataType::Int64, false),
    ]));
    let chk = tempfile::tempdir().unwrap();
    let source = FileSource::parquet(data.path().to_str().unwrap()).schema(Arc::clone(&explicit));
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let batches = read_all(&mut s).await.unwrap();
    assert_eq!(batches[0].schema(), explicit);
    assert_eq!(ids(&batches), vec![1, 2]);

    // Strings in another encoding (SQL's VARCHAR is Utf8View; the file
    // has Utf8): read and cast.
    let view = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8View, true),
    ]));
    let chk = tempfile::tempdir().unwrap();
    let source = FileSource::parquet(data.path().to_str().unwrap()).schema(Arc::clone(&view));
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let batches = read_all(&mut s).await.unwrap();
    assert_eq!(batches[0].schema(), view);
    let names: Vec<Option<&str>> = batches[0].column(1).as_string_view().iter().collect();
    assert_eq!(
        names,
        batch
            .column(1)
            .as_string::<i32>()
            .iter()
            .collect::<Vec<_>>()
    );

    // Wrong type for a column.
    let wrong = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
    let chk = tempfile::tempdir().unwrap();
    let source = FileSource::parquet(data.path().to_str().unwrap()).schema(wrong);
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("p1.parquet") && err.contains("'id'") && err.contains("Utf8"),
        "{err}"
    );

    // A required column the file lacks.
    let missing = Arc::new(Schema::new(vec![Field::new("qty", DataType::Int64, false)]));
    let chk = tempfile::tempdir().unwrap();
    let source = FileSource::parquet(data.path().to_str().unwrap()).schema(missing);
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("p1.parquet") && err.contains("'qty'") && err.contains("missing"),
        "{err}"
    );

    // Not a parquet file at all.
    write(data.path(), "junk.parquet", b"not parquet");
    let chk = tempfile::tempdir().unwrap();
    let source =
        FileSource::parquet(data.path().to_str().unwrap()).schema(Arc::clone(&file_schema));
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(err.contains("junk.parquet"), "{err}");
}

#[tokio::test]
async fn bad_json_line_names_file_and_line() {
    let data = tempfile::tempdir().unwrap();
    write(
        data.path(),
        "bad.json",
        b"{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2, \"name\": \"b\"}\n{\"id\": 3, \"name\": \"c\"\n{\"id\": 4}\n",
    );
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(err.contains("bad.json, line 3: invalid JSON"), "{err}");

    // A value of the wrong type.
    let data = tempfile::tempdir().unwrap();
    write(
        data.path(),
        "typed.json",
        b"{\"id\": 1}\n\n{\"id\": \"two\"}\n",
    );
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(err.contains("typed.json, line 3"), "{err}");

    // A required column missing on one line.
    let data = tempfile::tempdir().unwrap();
    write(
        data.path(),
        "gap.json",
        b"{\"id\": 1}\n{\"name\": \"no id\"}\n",
    );
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("gap.json, line 2") && err.contains("'id'"),
        "{err}"
    );

    // Inference over a bad file names it too.
    let data = tempfile::tempdir().unwrap();
    write(data.path(), "worse.json", b"{\"id\": 1}\n{oops}\n");
    let err = Source::schema(&FileSource::json(data.path().to_str().unwrap()), &session)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("worse.json, line 2"), "{err}");
}

#[tokio::test]
async fn bad_csv_row_names_file_and_line() {
    let data = tempfile::tempdir().unwrap();
    write(data.path(), "bad.csv", b"id,name\n1,a\n2,b,extra\n3,c\n");
    let session = SessionContext::new();
    let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("bad.csv, line 3") && err.contains("number of fields"),
        "{err}"
    );

    // Too few fields, a quoted multi-line field before it.
    let data = tempfile::tempdir().unwrap();
    write(data.path(), "short.csv", b"id,name\n1,\"two\nlines\"\n2\n");
    let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(err.contains("short.csv, line 4"), "{err}");

    // A value that does not parse as the column's type.
    let data = tempfile::tempdir().unwrap();
    write(data.path(), "typed.csv", b"id,name\n1,a\n2,b\nthree,c\n");
    let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("typed.csv, line 4") && err.contains("three"),
        "{err}"
    );

    // A required value left empty.
    let data = tempfile::tempdir().unwrap();
    write(data.path(), "empty.csv", b"id,name\n1,a\n,b\n");
    let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("empty.csv, line 3") && err.contains("'id'"),
        "{err}"
    );

    // A header without a required column.
    let data = tempfile::tempdir().unwrap();
    write(data.path(), "noid.csv", b"name\na\n");
    let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("noid.csv") && err.contains("'id'") && err.contains("missing"),
        "{err}"
    );
}

#[tokio::test]
async fn error_lines_are_right_beyond_the_first_batch() {
    let session = SessionContext::new();
    // JSON: 10 000 good lines (two arrow batches), then a line without
    // the required id; CRLF line ends.
    let data = tempfile::tempdir().unwrap();
    let mut json: String = (0..10_000)
        .map(|i| format!("{{\"id\": {i}}}\r\n"))
        .collect();
    json.push_str("{\"name\": \"x\"}\r\n");
    write(data.path(), "long.json", json.as_bytes());
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("long.json, line 10001") && err.contains("'id'"),
        "{err}"
    );

    // CSV: the bad value is on the last line, which has no line break.
    let data = tempfile::tempdir().unwrap();
    let mut csv: String = "id,name\n".into();
    csv.extend((0..9_000).map(|i| format!("{i},n{i}\n")));
    csv.push_str("x9000,last");
    write(data.path(), "long.csv", csv.as_bytes());
    let source = FileSource::csv(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
    assert!(
        err.contains("long.csv, line 9002") && err.contains("x9000"),
        "{err}"
    );

    // And the good rows of a long file come in batches of the schema.
    let data = tempfile::tempdir().unwrap();
    write(data.path(), "ok.json", &json_rows(0..20_000));
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let batches = read_all(&mut s).await.unwrap();
    assert!(batches.len() > 1 && batches.iter().all(|b| b.num_rows() <= 8192));
    assert_eq!(ids(&batches), (0..20_000).collect::<Vec<_>>());
}

#[tokio::test]
async fn vanished_file_is_an_error() {
    let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(data.path(), "gone.json", &json_rows(0..1));
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let end = end_of_all(&mut s).await;
    std::fs::remove_file(data.path().join("gone.json")).unwrap();
    let err = s.read(None, &end).await.unwrap_err().to_string();
    assert!(
        err.contains("gone.json") && err.contains("no longer exists"),
        "{err}"
    );
}

#[tokio::test]
async fn no_files_and_no_schema_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let session = SessionContext::new();
    let err = Source::schema(&FileSource::csv(data.path().to_str().unwrap()), &session)
        .await
        .unwrap_err()
        .to_string();
    let dir = data.path().to_str().unwrap();
    assert!(err.contains(dir) && err.contains(".schema(...)"), "{err}");
}

#[tokio::test]
async fn available_now_caps_at_files_known_when_prepared() {
    let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(data.path(), "a.json", &json_rows(0..1));
    write(data.path(), "b.json", &json_rows(1..2));
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    s.prepare_for_available_now().await.unwrap();
    write(data.path(), "c.json", &json_rows(2..3));

    let first = s
        .latest_offset(None, ReadLimit::MaxFiles(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, off(1));
    let second = s
        .latest_offset(Some(&first), ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second, off(2));
    assert_eq!(
        s.latest_offset(Some(&second), ReadLimit::All)
            .await
            .unwrap(),
        Some(off(2))
    );
    assert_eq!(ids(&s.read(None, &second).await.unwrap()), vec![0, 1]);
}

#[tokio::test]
async fn works_on_memory_store() {
    let session = SessionContext::new();
    // Resolving a memory:// location registers the session's in-memory
    // store; files written through the runtime's store are then visible.
    Location::resolve("memory:///", &session.runtime_env()).unwrap();
    let store = session
        .runtime_env()
        .object_store(ObjectStoreUrl::parse("memory://").unwrap())
        .unwrap();
    store
        .put(&Path::from("in/a.json"), PutPayload::from(json_rows(0..2)))
        .await
        .unwrap();
    store
        .put(
            &Path::from("in/_tmp/b.json"),
            PutPayload::from(json_rows(2..4)),
        )
        .await
        .unwrap();
    let source = FileSource::json("memory:///in");
    assert_eq!(source.description(), "FileSource[json: memory:///in]");
    let chk = Location::resolve("memory:///chk/sources/0", &session.runtime_env())
        .unwrap()
        .dir();
    let mut s = open(&source, &session, chk.clone()).await;
    assert_eq!(s.description(), "FileSource[json: memory:///in]");
    let first = end_of_all(&mut s).await;
    assert_eq!(ids(&s.read(None, &first).await.unwrap()), vec![0, 1]);

    // "Rename" the hidden file into place.
    store
        .copy(&Path::from("in/_tmp/b.json"), &Path::from("in/b.json"))
        .await
        .unwrap();
    store.delete(&Path::from("in/_tmp/b.json")).await.unwrap();
    let second = s
        .latest_offset(Some(&first), ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ids(&s.read(Some(&first), &second).await.unwrap()),
        vec![2, 3]
    );

    // The files-seen log lives in the memory store too.
    let mut reopened = open(&source, &session, chk).await;
    assert_eq!(
        reopened
            .latest_offset(Some(&second), ReadLimit::All)
            .await
            .unwrap(),
        Some(second)
    );
}

#[test]
fn description_names_format_and_absolute_url() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let expected = format!("FileSource[parquet: file://{dir}]");
    assert_eq!(FileSource::parquet(dir).description(), expected);
    assert_eq!(
        FileSource::parquet(format!("{dir}/")).description(),
        expected
    );
    assert_eq!(
        FileSource::parquet(format!("file://{dir}")).description(),
        expected
    );
}

#[tokio::test]
async fn read_batch_reads_what_the_stream_reads_and_fails_as_it_does() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    for i in 0..5 {
        write(
            data.path(),
            &format!("f{i}.json"),
            &json_rows(i * 2..i * 2 + 2),
        );
    }
    // Hidden from the stream, so from the bounded read: a half-written
    // file and a metadata directory.
    std::fs::write(data.path().join(".half.json.tmp"), b"{\"id\": 99").unwrap();
    std::fs::create_dir(data.path().join("_meta")).unwrap();
    std::fs::write(data.path().join("_meta/m.json"), json_rows(100..101)).unwrap();
    let session = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(3),
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let source = FileSource::json(dir).schema(Arc::clone(&schema));

    let df = source.read_batch(&session).await.unwrap();
    assert_eq!(df.schema().as_arrow(), schema.as_ref());
    let plan = df.clone().create_physical_plan().await.unwrap();
    assert_eq!(
        datafusion::physical_plan::ExecutionPlanProperties::output_partitioning(&plan)
            .partition_count(),
        3
    );
    let mut batched = ids(&df.collect().await.unwrap());
    batched.sort_unstable();
    assert_eq!(batched, (0..10).collect::<Vec<_>>());
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let mut streamed = ids(&read_all(&mut s).await.unwrap());
    streamed.sort_unstable();
    assert_eq!(batched, streamed);

    // A malformed file: the same error, naming the file and line, comes
    // back out of DataFusion as the source's error.
    write(data.path(), "g.json", b"{\"id\": 1}\n{\"id\": x}\n");
    let failed = source
        .read_batch(&session)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    let batch_error = TidemillError::from(failed);
    assert!(
        matches!(batch_error, TidemillError::Source { .. }),
        "{batch_error:?}"
    );
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let stream_error = read_all(&mut s).await.unwrap_err();
    assert_eq!(batch_error.to_string(), stream_error.to_string());
    assert!(
        batch_error
            .to_string()
            .contains("g.json, line 2: invalid JSON at column 8"),
        "{batch_error}"
    );

    // A missing directory: an empty table with a given schema; without
    // one, the stream's inference error.
    let missing = data.path().join("missing");
    let missing = missing.to_str().unwrap();
    let df = FileSource::json(missing)
        .schema(Arc::clone(&schema))
        .read_batch(&session)
        .await
        .unwrap();
    assert_eq!(df.count().await.unwrap(), 0);
    let err = FileSource::json(missing)
        .read_batch(&session)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot infer the schema"), "{err}");
}

/// The rows of the parquet files in `dir`, read as the first batch of a
/// new query on up to `partitions` partitions: each partition's batches.
async fn read_partitions(dir: &FsPath, partitions: usize) -> Vec<Vec<RecordBatch>> {
    let session = SessionContext::new();
    let source = FileSource::parquet(dir.to_str().unwrap());
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let end = end_of_all(&mut s).await;
    let BatchInput::Partitions(parts) = s.read_input(None, &end, partitions).await.unwrap() else {
        panic!("a parquet batch is read as partitions");
    };
    let mut read = Vec::new();
    for part in &parts {
        read.push(
            part.execute(session.task_ctx())
                .try_collect()
                .await
                .unwrap(),
        );
    }
    read
}

#[tokio::test]
async fn a_row_group_too_big_for_one_partition_is_read_as_row_ranges() {
    let data = tempfile::tempdir().unwrap();
    // One row group of 300 000 rows (names null on every seventh), with
    // pages of at most 20 000 rows, and a small file after it.
    let rows = |ids: std::ops::Range<i64>| {
        let names: StringArray = ids
            .clone()
            .map(|i| (i % 7 != 0).then(|| format!("n{i}")))
            .collect();
        RecordBatch::try_new(
            id_name_schema(),
            vec![Arc::new(Int64Array::from_iter_values(ids)), Arc::new(names)],
        )
        .unwrap()
    };
    write_parquet(data.path(), "a-big.parquet", &rows(0..300_000));
    write_parquet(data.path(), "b-small.parquet", &rows(300_000..301_000));
    let parts = read_partitions(data.path(), 4).await;
    // 301 000 rows over four partitions: the big group is cut in four.
    assert_eq!(parts.len(), 4);
    let mut all = Vec::new();
    for batches in &parts {
        let ids = ids(batches);
        // Each partition reads a run of rows, in order, of about a quarter.
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{:?}", &ids[..3]);
        assert!((70_000..=80_000).contains(&ids.len()), "{}", ids.len());
        // Each row's columns belong together, across page boundaries.
        for batch in batches {
            let id = batch.column(0).as_primitive::<Int64Type>();
            let name = batch.column(1).as_string_view();
            for i in 0..batch.num_rows() {
                let id = id.value(i);
                let expected = (id % 7 != 0).then(|| format!("n{id}"));
                assert_eq!(name.is_valid(i).then(|| name.value(i)), expected.as_deref());
            }
        }
        all.extend(ids);
    }
    all.sort_unstable();
    assert_eq!(all, (0..301_000).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_small_file_is_read_on_two_partitions_only_with_an_offset_index() {
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    // One 100 000-row row group (one small file per trigger), written with
    // and without an offset index.
    for (indexed, partitions) in [(true, 2), (false, 1)] {
        let data = tempfile::tempdir().unwrap();
        let column = Int64Array::from_iter_values(0..100_000);
        let batch = RecordBatch::try_from_iter([("id", Arc::new(column) as ArrayRef)]).unwrap();
        let mut props = WriterProperties::builder();
        if !indexed {
            props = props
                .set_statistics_enabled(EnabledStatistics::Chunk)
                .set_offset_index_disabled(true);
        }
        let file = std::fs::File::create(data.path().join("_a.parquet")).unwrap();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props.build()))
                .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        std::fs::rename(
            data.path().join("_a.parquet"),
            data.path().join("a.parquet"),
        )
        .unwrap();
        let parts = read_partitions(data.path(), 2).await;
        // With the index, each half of the group on a partition of its own;
        // without, the group whole on one (both sides would decode it all).
        assert_eq!(parts.len(), partitions, "offset index: {indexed}");
        let mut all = Vec::new();
        for batches in &parts {
            let read = ids(batches);
            assert_eq!(read.len(), 100_000 / partitions, "offset index: {indexed}");
            all.extend(read);
        }
        all.sort_unstable();
        assert_eq!(all, (0..100_000).collect::<Vec<_>>());
    }
}

/// A parquet file `name` in `dir` holding `columns` (one row group per
/// `rows_per_group` rows).
fn write_parquet_columns(
    dir: &FsPath,
    name: &str,
    columns: Vec<(&str, ArrayRef)>,
    rows_per_group: usize,
) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let tmp = dir.join(format!("_{name}"));
    let file = std::fs::File::create(&tmp).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// 2024-03-04T14:30:00Z, in seconds.
const AT_1430: i64 = 1_709_562_600;

fn ns_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
        Field::new("qty", DataType::Int64, true),
        Field::new("price", DataType::Float64, true),
    ]))
}

fn event_times(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let col = b.column_by_name("event_time").unwrap();
            col.as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test]
async fn parquet_columns_are_widened_to_the_declared_types_without_loss() {
    let data = tempfile::tempdir().unwrap();
    // As Spark and pyarrow write them: microseconds, UTC.
    write_parquet_columns(
        data.path(),
        "a-micros-utc.parquet",
        vec![
            (
                "event_time",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![AT_1430 * 1_000_000 + 123_456])
                        .with_timezone("UTC"),
                ),
            ),
            ("qty", Arc::new(Int32Array::from(vec![i32::MAX]))),
            ("price", Arc::new(Float32Array::from(vec![2.5_f32]))),
        ],
        1024,
    );
    // Milliseconds without a zone, and a column the schema does not read.
    write_parquet_columns(
        data.path(),
        "b-millis.parquet",
        vec![
            ("note", Arc::new(StringArray::from(vec!["x", "y"]))),
            (
                "event_time",
                Arc::new(TimestampMillisecondArray::from(vec![
                    AT_1430 * 1_000 + 7,
                    -1_000,
                ])),
            ),
            ("qty", Arc::new(Int32Array::from(vec![Some(-3), None]))),
            ("price", Arc::new(Float32Array::from(vec![0.1_f32, -1.0]))),
        ],
        1024,
    );
    // Seconds, UTC, and 64-bit numbers already of the declared types.
    write_parquet_columns(
        data.path(),
        "c-seconds.parquet",
        vec![
            (
                "event_time",
                Arc::new(TimestampSecondArray::from(vec![AT_1430]).with_timezone("UTC")),
            ),
            ("qty", Arc::new(Int64Array::from(vec![i64::MAX]))),
            ("price", Arc::new(Float64Array::from(vec![1e300]))),
        ],
        1024,
    );
    let session = SessionContext::new();
    let source = FileSource::parquet(data.path().to_str().unwrap()).schema(ns_schema());
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let streamed = read_all(&mut s).await.unwrap();
    assert!(streamed.iter().all(|b| b.schema() == ns_schema()));
    let ns = AT_1430 * 1_000_000_000;
    assert_eq!(
        event_times(&streamed),
        vec![ns + 123_456_000, ns + 7_000_000, -1_000_000_000, ns]
    );
    let qty: Vec<Option<i64>> = streamed
        .iter()
        .flat_map(|b| {
            b.column(1)
                .as_primitive::<Int64Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        qty,
        vec![Some(i32::MAX as i64), Some(-3), None, Some(i64::MAX)]
    );
    let price: Vec<f64> = streamed
        .iter()
        .flat_map(|b| b.column(2).as_primitive::<Float64Type>().values().to_vec())
        .collect();
    assert_eq!(price, vec![2.5, 0.1_f32 as f64, -1.0, 1e300]);

    // The partitions of a batch and the bounded read convert the same way.
    let end = end_of_all(&mut s).await;
    let BatchInput::Partitions(parts) = s.read_input(None, &end, 2).await.unwrap() else {
        panic!("a parquet batch is read as partitions");
    };
    let mut partitioned = Vec::new();
    for part in &parts {
        let batches: Vec<RecordBatch> = part
            .execute(session.task_ctx())
            .try_collect()
            .await
            .unwrap();
        partitioned.extend(batches);
    }
    assert_eq!(event_times(&partitioned), event_times(&streamed));
    let bounded = source.read_batch(&session).await.unwrap();
    assert_eq!(bounded.schema().as_arrow(), ns_schema().as_ref());
    let mut times = event_times(&bounded.collect().await.unwrap());
    times.sort_unstable();
    let mut expected = event_times(&streamed);
    expected.sort_unstable();
    assert_eq!(times, expected);

    // Declared with a zone and in microseconds: the same instants.
    let utc_micros = Arc::new(Schema::new(vec![Field::new(
        "event_time",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )]));
    let source = FileSource::parquet(data.path().to_str().unwrap()).schema(Arc::clone(&utc_micros));
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let batches = read_all(&mut s).await.unwrap();
    assert_eq!(batches[0].schema(), utc_micros);
    let micros: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec()
        })
        .collect();
    let us = AT_1430 * 1_000_000;
    assert_eq!(micros, vec![us + 123_456, us + 7_000, -1_000_000, us]);
}

#[tokio::test]
async fn lossy_parquet_columns_are_refused_naming_file_column_and_row() {
    let session = SessionContext::new();
    let read = |dir: &FsPath, schema: SchemaRef| {
        let source = FileSource::parquet(dir.to_str().unwrap()).schema(schema);
        let session = session.clone();
        async move {
            let chk = tempfile::tempdir().unwrap();
            read_err(&source, &session, checkpoint(&session, chk.path())).await
        }
    };
    let declared = |name: &str, data_type: DataType| {
        Arc::new(Schema::new(vec![Field::new(name, data_type, true)]))
    };

    // Narrower numbers than the file's.
    let data = tempfile::tempdir().unwrap();
    write_parquet_columns(
        data.path(),
        "wide.parquet",
        vec![
            ("qty", Arc::new(Int64Array::from(vec![1]))),
            ("price", Arc::new(Float64Array::from(vec![1.5]))),
        ],
        1024,
    );
    let file = format!("file://{}", data.path().join("wide.parquet").display());
    for (column, declared_type, message) in [
        (
            "qty",
            DataType::Int32,
            "column 'qty' has type Int64, but the source schema expects Int32",
        ),
        (
            "price",
            DataType::Float32,
            "column 'price' has type Float64, but the source schema expects Float32",
        ),
        (
            "qty",
            DataType::Float64,
            "column 'qty' has type Int64, but the source schema expects Float64",
        ),
    ] {
        let err = read(data.path(), declared(column, declared_type)).await;
        assert!(err.contains(&format!("{file}: {message}")), "{err}");
    }

    // A timestamp beyond the nanosecond range, in the third row group.
    let data = tempfile::tempdir().unwrap();
    let mut micros: Vec<i64> = (0..10).map(|i| (AT_1430 + i) * 1_000_000).collect();
    // 2300-01-01T00:00:00Z
    micros[7] = 10_413_792_000_000_000;
    write_parquet_columns(
        data.path(),
        "far.parquet",
        vec![(
            "event_time",
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone("UTC")),
        )],
        3,
    );
    let err = read(
        data.path(),
        declared(
            "event_time",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
        ),
    )
    .await;
    let file = format!("file://{}", data.path().join("far.parquet").display());
    assert!(
        err.contains(&format!(
            "{file}, row 8: column 'event_time': 2300-01-01T00:00:00Z is outside the range Timestamp(ns) can \
             hold (1677-09-21 to 2262-04-11)"
        )),
        "{err}"
    );
    // Read as microseconds, the same file is fine.
    let source = FileSource::parquet(data.path().to_str().unwrap()).schema(declared(
        "event_time",
        DataType::Timestamp(TimeUnit::Microsecond, None),
    ));
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let rows: usize = read_all(&mut s)
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 10);
}

#[tokio::test]
async fn text_timestamps_parse_with_and_without_utc_offsets() {
    let session = SessionContext::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("t", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
    ]));
    let ns = AT_1430 * 1_000_000_000;
    let expected = vec![
        ns,
        ns - 3_600_000_000_000,
        ns,
        ns + 123_456_789,
        ns + 5_400_000_000_000,
    ];
    let values = [
        "2024-03-04T14:30:00Z",
        "2024-03-04T14:30:00+01:00",
        "2024-03-04 14:30:00",
        "2024-03-04T14:30:00.123456789",
        "2024-03-04T14:30:00-01:30",
    ];
    let json: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{{\"id\": {i}, \"t\": \"{v}\"}}\n"))
        .collect();
    let csv: String = std::iter::once("id,t\n".to_string())
        .chain(values.iter().enumerate().map(|(i, v)| format!("{i},{v}\n")))
        .collect();
    for (format, content) in [(FileFormat::Json, json), (FileFormat::Csv, csv)] {
        let data = tempfile::tempdir().unwrap();
        write(data.path(), &format!("t.{format}"), content.as_bytes());
        let source =
            FileSource::new(data.path().to_str().unwrap(), format).schema(Arc::clone(&schema));
        let chk = tempfile::tempdir().unwrap();
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let batches = read_all(&mut s).await.unwrap();
        let times: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_primitive::<TimestampNanosecondType>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(times, expected, "{format}");

        // Beyond the nanosecond range: an error naming file and line.
        let data = tempfile::tempdir().unwrap();
        let far = match format {
            FileFormat::Json => {
                "{\"id\": 0, \"t\": \"2024-03-04T14:30:00Z\"}\n{\"id\": 1, \"t\": \"2300-01-01T00:00:00Z\"}\n"
            }
            _ => "id,t\n0,2024-03-04T14:30:00Z\n1,2300-01-01T00:00:00Z\n",
        };
        write(data.path(), &format!("far.{format}"), far.as_bytes());
        let source =
            FileSource::new(data.path().to_str().unwrap(), format).schema(Arc::clone(&schema));
        let chk = tempfile::tempdir().unwrap();
        let err = read_err(&source, &session, checkpoint(&session, chk.path())).await;
        let line = if format == FileFormat::Json { 2 } else { 3 };
        assert!(
            err.contains(&format!("far.{format}, line {line}:"))
                && err.contains("would overflow 64-bit signed nanoseconds"),
            "{format}: {err}"
        );
    }
}

/// Sets the modification time of `path` to `at`.
fn set_modified(path: &FsPath, at: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

#[tokio::test]
async fn a_listing_admits_only_files_modified_before_it_started_less_the_margin() {
    let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap())
        .schema(id_name_schema())
        .listing_margin(std::time::Duration::from_millis(200));
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let now = std::time::SystemTime::now();
    write(data.path(), "a.json", &json_rows(0..1));
    set_modified(
        &data.path().join("a.json"),
        now - std::time::Duration::from_secs(1),
    );
    // Modified "later" than any listing of this call can start, less the
    // margin (as a file stamped by a clock ahead of ours).
    write(data.path(), "b.json", &json_rows(1..2));
    set_modified(
        &data.path().join("b.json"),
        now + std::time::Duration::from_secs(60),
    );
    let first = end_of_all(&mut s).await;
    assert_eq!(first, off(1));
    assert_eq!(ids(&s.read(None, &first).await.unwrap()), vec![0]);

    // Once old enough, the file is admitted by the next listing.
    set_modified(
        &data.path().join("b.json"),
        now - std::time::Duration::from_secs(1),
    );
    let second = s
        .latest_offset(Some(&first), ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&s.read(Some(&first), &second).await.unwrap()), vec![1]);

    // A file written just before a call is admitted by that call: the
    // listing waits until it is old enough and lists again.
    write(data.path(), "c.json", &json_rows(2..3));
    let started = std::time::Instant::now();
    let third = s
        .latest_offset(Some(&second), ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    assert_eq!(ids(&s.read(Some(&second), &third).await.unwrap()), vec![2]);
}

#[tokio::test]
async fn files_renamed_into_place_while_listing_are_admitted_in_the_order_written() {
    const FILES: usize = 3000;
    let (data, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let session = SessionContext::new();
    let source = FileSource::json(data.path().to_str().unwrap()).schema(id_name_schema());
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    // The producer writes file i (holding id i) under a hidden name and
    // renames it into place before writing file i + 1, as fast as it can.
    let dir = data.path().to_path_buf();
    let producer = std::thread::spawn(move || {
        for i in 0..FILES as i64 {
            write(&dir, &format!("f{i:06}.json"), &json_rows(i..i + 1));
        }
    });
    let mut admitted: Vec<i64> = Vec::new();
    let mut start: Option<Offset> = None;
    let mut listings = 0;
    while admitted.len() < FILES {
        let end = s
            .latest_offset(start.as_ref(), ReadLimit::All)
            .await
            .unwrap();
        listings += 1;
        if let Some(end) = end.filter(|end| Some(end) != start.as_ref()) {
            admitted.extend(ids(&s.read(start.as_ref(), &end).await.unwrap()));
            start = Some(end);
        }
        assert!(listings < 100_000, "admitted {} of {FILES}", admitted.len());
    }
    producer.join().unwrap();
    // Every file once, in the order it was written: no file is admitted
    // after one written later.
    let out_of_order: Vec<(i64, i64)> = admitted
        .windows(2)
        .filter(|w| w[1] < w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        out_of_order.is_empty(),
        "admitted after a later file: {out_of_order:?}"
    );
    assert_eq!(admitted, (0..FILES as i64).collect::<Vec<_>>());
}

/// The ids of the rows of a batch read as partitions, partition after
/// partition.
async fn batch_ids(session: &SessionContext, input: Result<BatchInput>) -> Result<Vec<i64>> {
    let BatchInput::Partitions(parts) = input? else {
        panic!("a file batch is read as partitions");
    };
    let mut all = Vec::new();
    for part in &parts {
        let batches: Vec<RecordBatch> = part
            .execute(session.task_ctx())
            .try_collect()
            .await
            .map_err(TidemillError::from)?;
        all.extend(ids(&batches));
    }
    Ok(all)
}

#[tokio::test]
async fn footers_read_ahead_serve_only_their_own_batch() {
    let data = tempfile::tempdir().unwrap();
    let rows = |ids: std::ops::Range<i64>| {
        let names: StringArray = ids.clone().map(|i| Some(format!("n{i}"))).collect();
        RecordBatch::try_new(
            id_name_schema(),
            vec![Arc::new(Int64Array::from_iter_values(ids)), Arc::new(names)],
        )
        .unwrap()
    };
    // Files of different sizes, one big enough to be cut inside its row
    // group.
    let sizes = [10, 150_000, 3, 70_000, 1, 20_000, 5];
    let mut first = 0;
    for (i, n) in sizes.iter().enumerate() {
        write_parquet(
            data.path(),
            &format!("f{i}.parquet"),
            &rows(first..first + n),
        );
        first += n;
    }
    let session = SessionContext::new();
    let source = FileSource::parquet(data.path().to_str().unwrap()).max_files_per_trigger(2);
    for partitions in [1, 2, 3] {
        let chk = tempfile::tempdir().unwrap();
        let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
        let (mut start, mut seen) = (None::<Offset>, Vec::new());
        loop {
            let limit = s.default_read_limit();
            let end = s.latest_offset(start.as_ref(), limit).await.unwrap();
            let Some(end) = end.filter(|e| Some(e) != start.as_ref()) else {
                break;
            };
            let input = s.read_input(start.as_ref(), &end, partitions).await;
            seen.extend(batch_ids(&session, input).await.unwrap());
            start = Some(end);
        }
        assert_eq!(
            seen,
            (0..first).collect::<Vec<_>>(),
            "{partitions} partitions"
        );
    }

    // A range other than the one read ahead (here: fewer files, then
    // more) is read with its own footers.
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let two = s
        .latest_offset(None, ReadLimit::MaxFiles(2))
        .await
        .unwrap()
        .unwrap();
    batch_ids(&session, s.read_input(None, &two, 2).await)
        .await
        .unwrap();
    let got = batch_ids(&session, s.read_input(Some(&two), &off(3), 2).await)
        .await
        .unwrap();
    assert_eq!(got, (150_010..150_013).collect::<Vec<_>>());
    let got = batch_ids(&session, s.read_input(Some(&off(3)), &off(7), 2).await)
        .await
        .unwrap();
    assert_eq!(got, (150_013..first).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_bad_footer_read_ahead_is_reported_by_its_batch() {
    let data = tempfile::tempdir().unwrap();
    let batch = RecordBatch::try_new(
        id_name_schema(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec!["a", "b"])),
        ],
    )
    .unwrap();
    write_parquet(data.path(), "a.parquet", &batch);
    write(data.path(), "b.parquet", b"not a parquet file at all");
    let session = SessionContext::new();
    let source = FileSource::parquet(data.path().to_str().unwrap())
        .schema(id_name_schema())
        .max_files_per_trigger(1);
    let chk = tempfile::tempdir().unwrap();
    let mut s = open(&source, &session, checkpoint(&session, chk.path())).await;
    let limit = s.default_read_limit();
    let first = s.latest_offset(None, limit).await.unwrap().unwrap();
    let got = batch_ids(&session, s.read_input(None, &first, 2).await)
        .await
        .unwrap();
    assert_eq!(got, vec![1, 2]);
    // b.parquet's footer was read ahead and failed: the batch reads it
    // itself and fails up front, naming the file, as without read ahead.
    let second = s.latest_offset(Some(&first), limit).await.unwrap().unwrap();
    let err = s
        .read_input(Some(&first), &second, 2)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("b.parquet"), "{err}");
}
