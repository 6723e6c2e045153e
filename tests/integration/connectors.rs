//! Connectors driven through the engine: file sources in every format and
//! location kind, the rate source, console and foreach-batch sinks, and bad
//! input.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::prelude::*;
use tidemill::TidemillError;
use tidemill::prelude::*;

use crate::common::{events, events_schema, run_available_now, sorted_rows};

/// Writes `text` as `dir/name` through a dot-named temporary file.
fn put(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn json_lines(ids: std::ops::Range<i64>) -> String {
    ids.map(|i| {
        format!(
            "{{\"id\":{i},\"symbol\":\"{}\",\"price\":{}}}\n",
            ["A", "B", "C"][(i % 3) as usize],
            i as f64 * 1.5
        )
    })
    .collect()
}

fn csv_rows(ids: std::ops::Range<i64>) -> String {
    let mut text = String::from("id,symbol,price\n");
    for i in ids {
        text.push_str(&format!(
            "{i},{},{}\n",
            ["A", "B", "C"][(i % 3) as usize],
            i as f64 * 1.5
        ));
    }
    text
}

#[tokio::test]
async fn json_and_csv_directories_stream_new_files_once() {
    for format in ["json", "csv"] {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        type Writer = fn(std::ops::Range<i64>) -> String;
        let (write, source): (Writer, fn(&str) -> FileSource) = match format {
            "json" => (json_lines, |p| FileSource::json(p)),
            _ => (csv_rows, |p| FileSource::csv(p)),
        };
        put(&input, &format!("a.{format}"), &write(0..10));
        put(&input, &format!("b.{format}"), &write(10..20));
        // A half-written file (dot-name) is not read.
        std::fs::write(input.join(format!(".c.{format}.tmp")), "garbage").unwrap();
        let ctx = SessionContext::new();
        let stream = || {
            source(input.to_str().unwrap())
                .schema(events_schema())
                .max_files_per_trigger(1)
        };
        let (sink, query) = run_available_now(
            ctx.read_stream(stream()).await.unwrap(),
            &tmp.path().join("chk"),
        )
        .await
        .unwrap();
        assert_eq!(
            query.recent_progress().len(),
            2,
            "{format}: one file per trigger"
        );
        assert_eq!(
            sorted_rows(&sink.batches()),
            sorted_rows(&[events(0..20)]),
            "{format}"
        );

        // Restart with one new file: only it is read.
        put(&input, &format!("c.{format}"), &write(20..25));
        let (sink, query) = run_available_now(
            ctx.read_stream(stream()).await.unwrap(),
            &tmp.path().join("chk"),
        )
        .await
        .unwrap();
        assert_eq!(query.recent_progress().len(), 1, "{format}");
        assert_eq!(query.last_progress().unwrap().batch_id, 2, "{format}");
        assert_eq!(
            sorted_rows(&sink.batches()),
            sorted_rows(&[events(20..25)]),
            "{format}"
        );
    }
}

#[tokio::test]
async fn parquet_directory_with_inferred_schema_on_memory_store() {
    let ctx = SessionContext::new();
    // An in-memory object store, registered the DataFusion way.
    let url = url::Url::parse("memory://").unwrap();
    ctx.register_object_store(&url, Arc::new(object_store::memory::InMemory::new()));
    // Write parquet input through DataFusion into memory://.
    for (i, ids) in [(0, 0..10), (1, 10..30)] {
        ctx.read_batch(events(ids))
            .unwrap()
            .write_parquet(
                &format!("memory:///input/part-{i}.parquet"),
                datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("write parquet: {e}"));
    }
    let df = ctx
        .read_stream(FileSource::parquet("memory:///input/"))
        .await
        .unwrap();
    assert_eq!(
        df.schema().fields().len(),
        3,
        "schema inferred from the files"
    );
    let sink = MemorySink::new();
    let query = df
        .select(vec![col("id"), col("symbol"), col("price")])
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .trigger(Trigger::AvailableNow)
        .checkpoint("memory:///chk/parquet-inferred")
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    assert_eq!(sorted_rows(&sink.batches()), sorted_rows(&[events(0..30)]));
}

#[tokio::test]
async fn a_bad_file_stops_the_query_naming_it_and_keeps_committed_output() {
    let cases = [
        (
            "json",
            "bad.json",
            "{\"id\":1,\"symbol\":\"A\",\"price\":1.5}\n{\"id\":2,\"symbol\":\"B\",\n{\"id\":3}\n",
            "line 2",
        ),
        ("csv", "bad.csv", "id,symbol,price\n1,A,1.5\n2,B\n", "line"),
    ];
    for (format, name, text, position) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (input, output, chk) = (
            tmp.path().join("in"),
            tmp.path().join("out"),
            tmp.path().join("chk"),
        );
        let good = match format {
            "json" => json_lines(0..10),
            _ => csv_rows(0..10),
        };
        put(&input, &format!("a-good.{format}"), &good);
        let ctx = SessionContext::new();
        let make = || match format {
            "json" => FileSource::json(input.to_str().unwrap()),
            _ => FileSource::csv(input.to_str().unwrap()),
        };
        let start = |ctx: SessionContext, source: FileSource| {
            let (output, chk) = (output.clone(), chk.clone());
            async move {
                ctx.read_stream(source.schema(events_schema()).max_files_per_trigger(1))
                    .await?
                    .write_stream()
                    .sink(ParquetSink::new(output.to_str().unwrap()))
                    .checkpoint(chk.to_str().unwrap())
                    .trigger(Trigger::ProcessingTime(Duration::ZERO))
                    .start()
                    .await
            }
        };
        let query = start(ctx.clone(), make()).await.unwrap();
        query.process_all_available().await.unwrap();
        put(&input, name, text);
        let err = query.await_termination().await.unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains(position),
            "{format}: {err}"
        );

        // What was committed before is intact.
        let committed = ParquetSink::read_committed(&ctx, output.to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(committed.count().await.unwrap(), 10, "{format}");
        // A restart fails the same way: the bad file is never skipped.
        let query = start(ctx.clone(), make()).await.unwrap();
        let again = query.await_termination().await.unwrap_err().to_string();
        assert!(again.contains(name), "{format}: {again}");
    }
}

#[tokio::test]
async fn a_parquet_file_with_another_schema_is_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let ctx = SessionContext::new();
    ctx.read_batch(events(0..5))
        .unwrap()
        .write_parquet(
            input.join("good.parquet").to_str().unwrap(),
            datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .unwrap();
    ctx.sql("SELECT 'x' AS id, 1 AS other")
        .await
        .unwrap()
        .write_parquet(
            input.join("wrong.parquet").to_str().unwrap(),
            datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .unwrap();
    let df = ctx
        .read_stream(FileSource::parquet(input.to_str().unwrap()).schema(events_schema()))
        .await
        .unwrap();
    let err = run_available_now(df, &tmp.path().join("chk"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong.parquet"), "{err}");
}

#[tokio::test]
async fn rate_source_generates_consecutive_values() {
    let ctx = SessionContext::new();
    let sink = MemorySink::new();
    let query = ctx
        .read_stream(RateSource::new(1_000))
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .trigger(Trigger::ProcessingTime(Duration::from_millis(50)))
        .start()
        .await
        .unwrap();
    // Wait (without a wall-clock bound on the engine) until a few batches ran.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (sink.num_rows() <= 50 || sink.batch_ids().len() < 2)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    query.stop().await.unwrap();
    let values = ctx
        .read_batches(sink.batches())
        .unwrap()
        .sort(vec![col("value").sort(true, false)])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let values: Vec<i64> = values
        .iter()
        .flat_map(|b| {
            b.column_by_name("value")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert!(values.len() > 50, "{} rows", values.len());
    assert_eq!(
        values,
        (0..values.len() as i64).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
}

/// A writer the console sink prints into, readable by the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn console_and_foreach_batch_sinks_see_every_batch() {
    let ctx = SessionContext::new();
    let stream = MemoryStream::new(events_schema());
    let printed = Captured::default();
    let console = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .write_stream()
        .sink(ConsoleSink::with_writer(Box::new(printed.clone())))
        .start()
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let seen_in_sink = Arc::clone(&seen);
    let foreach = ctx
        .read_stream(stream.clone())
        .await
        .unwrap()
        .write_stream()
        .sink(ForeachBatchSink::new(move |df: DataFrame, batch_id| {
            let seen = Arc::clone(&seen_in_sink);
            async move {
                let rows = df.count().await?;
                seen.lock().unwrap().push((batch_id, rows));
                Ok(())
            }
        }))
        .start()
        .await
        .unwrap();
    stream.push(events(0..4)).unwrap();
    console.process_all_available().await.unwrap();
    foreach.process_all_available().await.unwrap();
    stream.push(events(4..6)).unwrap();
    console.process_all_available().await.unwrap();
    foreach.process_all_available().await.unwrap();
    console.stop().await.unwrap();
    foreach.stop().await.unwrap();
    let text = String::from_utf8(printed.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("Batch: 0") && text.contains("Batch: 1"),
        "{text}"
    );
    assert!(text.contains("| 5  | C"), "{text}");
    assert_eq!(*seen.lock().unwrap(), vec![(0, 4), (1, 2)]);
}

#[tokio::test]
async fn errors_keep_their_type_through_the_query_handle() {
    let ctx = SessionContext::new();
    let err = ctx
        .read_stream(FileSource::json("memory:///no/such/dir/"))
        .await
        .unwrap_err();
    assert!(matches!(err, TidemillError::Source { .. }), "{err}");
    assert!(err.to_string().contains("schema"), "{err}");
}

#[tokio::test]
async fn parquet_timestamps_of_another_unit_and_zone_read_as_the_declared_type() {
    use arrow::array::{Int32Array, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    // As Spark and pyarrow write them: microseconds, UTC; a 32-bit id.
    let at = 1_709_562_600_000_000_i64; // 2024-03-04T14:30:00Z
    let batch = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(Int32Array::from(vec![1, 2])) as arrow::array::ArrayRef,
        ),
        (
            "event_time",
            Arc::new(TimestampMicrosecondArray::from(vec![at, at + 1]).with_timezone("UTC")),
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(input.join("_part-0.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::rename(input.join("_part-0.parquet"), input.join("part-0.parquet")).unwrap();

    let declared = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
    ]));
    let ctx = SessionContext::new();
    let df = ctx
        .read_stream(FileSource::parquet(input.to_str().unwrap()).schema(declared))
        .await
        .unwrap()
        .with_watermark("event_time", "1 minute")
        .unwrap();
    let (sink, _query) = run_available_now(df, &tmp.path().join("chk"))
        .await
        .unwrap();
    assert_eq!(
        sorted_rows(&sink.batches()),
        vec![
            "| 1  | 2024-03-04T14:30:00        |",
            "| 2  | 2024-03-04T14:30:00.000001 |"
        ]
    );
}

#[tokio::test]
async fn a_files_sink_on_a_regular_file_fails_at_once_naming_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    put(&input, "a.json", &json_lines(0..3));
    let out = tmp.path().join("out");
    std::fs::write(&out, "a regular file").unwrap();
    let ctx = SessionContext::new();
    let query = ctx
        .read_stream(FileSource::json(input.to_str().unwrap()).schema(events_schema()))
        .await
        .unwrap()
        .write_stream()
        .sink(ParquetSink::new(out.to_str().unwrap()))
        .trigger(Trigger::AvailableNow)
        .checkpoint(tmp.path().join("chk").to_str().unwrap())
        .start()
        .await
        .unwrap();
    // The default retry policy retries transient errors for 60 s; this one
    // is not transient, so the query fails at once.
    let result = tokio::time::timeout(Duration::from_secs(30), query.await_termination())
        .await
        .expect("the query fails at once instead of retrying");
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "sink FileSink[parquet: file://{}]: batch 0: ",
            out.display()
        )) && err.contains("Not a directory"),
        "{err}"
    );
    assert!(!err.contains("(transient)"), "{err}");
}
