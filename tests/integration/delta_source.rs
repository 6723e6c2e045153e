//! The Delta source through streaming queries and the `tidemill` command:
//! a table written in many versions (by deltalake's writer and by the
//! Delta sink) streamed under several read limits equals its batch read
//! and deltalake's own reading of it; a restart on the checkpoint goes on
//! at the next version; a vacuumed file fails the query (or is skipped and
//! counted); a path without a table and a schema change mid-stream fail
//! naming the table, with nothing committed; `connector = 'delta'` in
//! `tidemill run` and `tidemill batch`; a bronze → silver chain of Delta
//! tables.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::*;
use deltalake::DeltaTable;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tidemill::Source;
use tidemill::connectors::DeltaStart;
use tidemill::prelude::*;

use crate::cli::{text, tidemill};
use crate::common::{df_rows, events, events_schema, run_available_now, sorted_rows};
use crate::delta_sink::{log_versions, query_table};

/// The table at `dir`, loaded, or a new one not yet written.
async fn table(dir: &Path) -> DeltaTable {
    let url = deltalake::ensure_table_uri(dir.to_str().unwrap()).unwrap();
    match deltalake::open_table(url.clone()).await {
        Ok(table) => table,
        Err(_) => deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .build()
            .unwrap(),
    }
}

/// Appends events `ids` to the table at `dir` as one version (creating the
/// table, partitioned by `partitions`).
async fn append(dir: &Path, ids: std::ops::Range<i64>, partitions: &[&str]) {
    let mut write = table(dir)
        .await
        .write(vec![events(ids)])
        .with_save_mode(SaveMode::Append);
    if !partitions.is_empty() {
        write = write.with_partition_columns(partitions.iter().map(|p| p.to_string()));
    }
    write.await.unwrap();
}

/// Writes 30 versions of 1 to 5 events each (ids from 0, in order), with an
/// OPTIMIZE (which adds no rows) after version 14; returns the event count.
async fn thirty_versions(dir: &Path, partitions: &[&str]) -> i64 {
    let mut next = 0;
    for v in 0..30 {
        let n = 1 + (v * 7) % 5;
        append(dir, next..next + n, partitions).await;
        next += n;
        if v == 14 {
            table(dir).await.optimize().await.unwrap();
        }
    }
    next
}

/// The sorted rows `id | symbol | price` of `batches`, whatever their
/// column order.
fn event_rows(batches: &[RecordBatch]) -> Vec<String> {
    let projected: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let indices: Vec<usize> = ["id", "symbol", "price"]
                .iter()
                .map(|c| b.schema().index_of(c).unwrap())
                .collect();
            b.project(&indices).unwrap()
        })
        .collect();
    sorted_rows(&projected)
}

/// Streams `source` to the end (available now) into a memory sink with the
/// checkpoint `checkpoint`: the rows, and the number of batches.
async fn stream(source: DeltaSource, checkpoint: &Path) -> tidemill::Result<(Vec<String>, usize)> {
    let ctx = SessionContext::new();
    let df = ctx.read_stream(source).await?;
    let (sink, _query) = run_available_now(df, checkpoint).await?;
    Ok((event_rows(&sink.batches()), sink.batch_ids().len()))
}

#[tokio::test]
async fn batch_equals_stream_over_thirty_versions_under_every_read_limit() {
    for partitions in [&[][..], &["symbol"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("events");
        let total = thirty_versions(&lake, partitions).await;
        let path = lake.to_str().unwrap();

        // The batch form, and deltalake's own reading of the table.
        let ctx = SessionContext::new();
        let batch = DeltaSource::new(path).read_batch(&ctx).await.unwrap();
        assert_eq!(
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["id", "symbol", "price"]
        );
        let batch_rows = event_rows(&batch.collect().await.unwrap());
        assert_eq!(batch_rows.len() as i64, total);
        assert_eq!(
            query_table(&lake, "SELECT id, symbol, price FROM t").await,
            batch_rows,
            "deltalake's table provider reads the same rows ({partitions:?})"
        );

        for (start, limit) in [
            (DeltaStart::Version(0), Some(1)),
            (DeltaStart::Version(0), Some(5)),
            (DeltaStart::Version(0), None),
            (DeltaStart::Snapshot, Some(1)),
            (DeltaStart::Snapshot, None),
        ] {
            let mut source = DeltaSource::new(path).starting_position(start);
            if let Some(n) = limit {
                source = source.max_files_per_trigger(n);
            }
            let checkpoint = dir.path().join(format!("chk-{start:?}-{limit:?}"));
            let (rows, batches) = stream(source, &checkpoint).await.unwrap();
            assert_eq!(rows, batch_rows, "{partitions:?} {start:?} {limit:?}");
            let files_per_version = if partitions.is_empty() { 1 } else { 3 };
            match (start, limit) {
                // Version 0 holds one file (three partitions: up to three).
                (DeltaStart::Version(0), Some(1)) => assert!(
                    batches >= 30 && batches <= 30 * files_per_version,
                    "{batches} batches"
                ),
                (DeltaStart::Version(0), Some(5)) => assert!(batches >= 6, "{batches} batches"),
                (_, None) => assert_eq!(batches, 1, "{start:?}"),
                _ => assert!(batches > 1),
            }
        }
    }
}

#[tokio::test]
async fn a_restart_goes_on_at_the_next_version_without_repeating_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("events");
    for v in 0..4 {
        append(&lake, v * 10..v * 10 + 5, &[]).await;
    }
    let checkpoint = dir.path().join("chk");
    let source = || {
        DeltaSource::new(lake.to_str().unwrap())
            .starting_position(DeltaStart::Version(0))
            .max_files_per_trigger(2)
    };
    let (first, batches) = stream(source(), &checkpoint).await.unwrap();
    assert_eq!(first.len(), 20);
    assert_eq!(batches, 2);

    for v in 4..7 {
        append(&lake, v * 10..v * 10 + 5, &[]).await;
    }
    let (second, batches) = stream(source(), &checkpoint).await.unwrap();
    assert_eq!(batches, 2, "versions 4 and 5, then 6");
    let expected = event_rows(&[events((40..45).chain(50..55).chain(60..65))]);
    assert_eq!(second, expected, "only the new versions' rows");
    // Nothing new: the run ends without a batch.
    let (third, batches) = stream(source(), &checkpoint).await.unwrap();
    assert_eq!((third.len(), batches), (0, 0));
}

#[tokio::test]
async fn a_vacuumed_file_fails_the_query_or_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("events");
    for v in 0..3 {
        append(&lake, v * 10..v * 10 + 4, &[]).await;
    }
    let added = |version: u64| {
        let text =
            std::fs::read_to_string(lake.join(format!("_delta_log/{version:020}.json"))).unwrap();
        text.lines()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["add"]["path"].as_str().map(str::to_string)
            })
            .unwrap()
    };
    let gone = added(1);
    std::fs::remove_file(lake.join(&gone)).unwrap();

    let path = lake.to_str().unwrap();
    let strict = DeltaSource::new(path).starting_position(DeltaStart::Version(0));
    let checkpoint = dir.path().join("strict");
    let err = stream(strict, &checkpoint).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("source DeltaSource[file://{}]", lake.display()))
            && err.contains(&format!("version 1's data file '{gone}' no longer exists")),
        "{err}"
    );
    assert!(
        !checkpoint.join("commits/0").exists(),
        "the batch reading it is not committed"
    );

    let lenient = DeltaSource::new(path)
        .starting_position(DeltaStart::Version(0))
        .fail_on_data_loss(false);
    let counted = lenient.clone();
    let (rows, _) = stream(lenient, &dir.path().join("lenient")).await.unwrap();
    assert_eq!(rows, event_rows(&[events((0..4).chain(20..24))]));
    let loss = counted.data_loss();
    assert_eq!((loss.versions, loss.files, loss.rows), (0, 1, 4));
}

#[tokio::test]
async fn a_path_without_a_table_and_a_schema_change_fail_naming_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = SessionContext::new();
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("data.json"), "{\"id\": 1}\n").unwrap();
    let err = ctx
        .read_stream(DeltaSource::new(plain.to_str().unwrap()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "'file://{}' is not a Delta table: it holds 'data.json'",
            plain.display()
        )),
        "{err}"
    );

    // A query running over a table whose next version changes a column's type.
    let lake = dir.path().join("events");
    append(&lake, 0..5, &[]).await;
    let checkpoint = dir.path().join("chk");
    let sink = MemorySink::new();
    let query = ctx
        .read_stream(DeltaSource::new(lake.to_str().unwrap()))
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .trigger(Trigger::ProcessingTime(std::time::Duration::from_millis(
            50,
        )))
        .checkpoint(checkpoint.to_str().unwrap())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(sink.num_rows(), 5);
    let retyped = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        retyped,
        vec![
            Arc::new(Int64Array::from(vec![99])),
            Arc::new(StringArray::from(vec!["Z"])),
            Arc::new(StringArray::from(vec!["n/a"])),
        ],
    )
    .unwrap();
    table(&lake)
        .await
        .write(vec![batch])
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .await
        .unwrap();
    let err = query.await_termination().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("DeltaSource[file://{}]", lake.display()))
            && err.contains(&format!(
                "version 1 of the Delta table 'file://{}' changes the schema incompatibly",
                lake.display()
            ))
            && err.contains("column 'price' has type Utf8"),
        "{err}"
    );
    assert_eq!(sink.num_rows(), 5);
    assert!(
        !checkpoint.join("offsets/1").exists(),
        "no batch was logged for the changed version"
    );
}

#[tokio::test]
async fn change_commits_fail_the_query_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("events");
    append(&lake, 0..5, &[]).await;
    table(&lake)
        .await
        .delete()
        .with_predicate("id = 2")
        .await
        .unwrap();
    append(&lake, 5..8, &[]).await;
    let source =
        || DeltaSource::new(lake.to_str().unwrap()).starting_position(DeltaStart::Version(0));
    let err = stream(source(), &dir.path().join("strict"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("version 1 of the Delta table") && err.contains("DELETE"),
        "{err}"
    );
    let (rows, _) = stream(source().skip_change_commits(true), &dir.path().join("skip"))
        .await
        .unwrap();
    assert_eq!(rows, event_rows(&[events(0..8)]));
}

/// A pipeline file reading the Delta table `bronze` and writing `sink`.
fn pipeline(dir: &Path, name: &str, bronze: &Path, sink: &str) -> std::path::PathBuf {
    let file = dir.join(format!("{name}.sql"));
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM events WITH (connector = 'delta', path = '{}', \
             starting_version = 0, max_files_per_trigger = 2);\n\
             CREATE SINK {name} WITH ({sink});\n\
             INSERT INTO {name} SELECT id, symbol, price * 2 AS doubled FROM events WHERE id % 2 = 0;",
            bronze.display()
        ),
    )
    .unwrap();
    file
}

#[tokio::test]
async fn tidemill_run_and_batch_read_a_delta_stream_into_a_silver_delta_table() {
    let dir = tempfile::tempdir().unwrap();
    let bronze = dir.path().join("lake/bronze");
    // Bronze written by the Delta sink: a query over JSON files, one
    // version per batch.
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    for n in 0..5 {
        crate::crash::write_input(&input, n);
    }
    let ctx = SessionContext::new();
    let query = ctx
        .read_stream(
            FileSource::json(input.to_str().unwrap())
                .schema(events_schema())
                .max_files_per_trigger(1),
        )
        .await
        .unwrap()
        .write_stream()
        .sink(DeltaSink::new(bronze.to_str().unwrap()))
        .checkpoint(dir.path().join("bronze-chk").to_str().unwrap())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    assert_eq!(log_versions(&bronze).len(), 5);

    // Silver: the even ids, streamed by `tidemill run`, written by the
    // Delta sink.
    let silver = dir.path().join("lake/silver");
    let file = pipeline(
        dir.path(),
        "silver",
        &bronze,
        &format!("connector = 'delta', path = '{}'", silver.display()),
    );
    let run = tidemill(&["run", file.to_str().unwrap(), "--trigger", "available-now"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("silver: batch 2 |"),
        "five versions, two files a batch: {stdout}"
    );
    assert!(!stdout.contains("silver: batch 3 |"), "{stdout}");
    let expected = query_table(
        &bronze,
        "SELECT id, symbol, price * 2 AS doubled FROM t WHERE id % 2 = 0",
    )
    .await;
    assert_eq!(expected.len(), 50);
    let read_silver = || query_table(&silver, "SELECT id, symbol, doubled FROM t");
    assert_eq!(read_silver().await, expected);
    assert_eq!(
        log_versions(&silver).len(),
        3,
        "one silver version per batch"
    );

    // More bronze versions; the same command goes on where it stopped.
    for n in 5..7 {
        crate::crash::write_input(&input, n);
    }
    let query = ctx
        .read_stream(
            FileSource::json(input.to_str().unwrap())
                .schema(events_schema())
                .max_files_per_trigger(1),
        )
        .await
        .unwrap()
        .write_stream()
        .sink(DeltaSink::new(bronze.to_str().unwrap()))
        .checkpoint(dir.path().join("bronze-chk").to_str().unwrap())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    let run = tidemill(&["run", file.to_str().unwrap(), "--trigger", "available-now"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("silver: batch 3 |"),
        "{}",
        text(&run.stdout)
    );
    let expected = query_table(
        &bronze,
        "SELECT id, symbol, price * 2 AS doubled FROM t WHERE id % 2 = 0",
    )
    .await;
    assert_eq!(expected.len(), 70);
    assert_eq!(read_silver().await, expected, "each row once");

    // `tidemill batch`: the same statements over the table as it is now,
    // into a parquet files sink.
    let out = dir.path().join("out");
    let file = pipeline(
        dir.path(),
        "reprocessed",
        &bronze,
        &format!(
            "connector = 'files', path = '{}', format = 'parquet'",
            out.display()
        ),
    );
    let batch = tidemill(&["batch", file.to_str().unwrap()]);
    assert!(batch.status.success(), "{}", text(&batch.stderr));
    assert_eq!(text(&batch.stdout), "reprocessed: 70 rows\n");
    let ctx = SessionContext::new();
    let written = ParquetSink::read_committed(&ctx, out.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        df_rows(
            written
                .select_columns(&["id", "symbol", "doubled"])
                .unwrap()
        )
        .await,
        expected
    );
}

#[test]
fn tidemill_refuses_a_delta_stream_over_a_path_without_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-table");
    let file = pipeline(dir.path(), "copy", &missing, "connector = 'console'");
    for command in ["run", "batch", "explain"] {
        let out = tidemill(&[command, file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "'file://{}' is not a Delta table",
                missing.display()
            )),
            "{command}: {stderr}"
        );
    }
}
