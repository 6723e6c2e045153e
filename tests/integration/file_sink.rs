//! The files sink in each format (parquet, JSON lines, CSV), with and
//! without Hive-style partitioning, through real queries: the output is
//! read back by DataFusion's own readers (a plain directory read, partition
//! columns through `table_partition_cols`) and by `FileSink::read_committed`,
//! row for row; SQL pipelines declare it with `format` and `partition_by`;
//! bad options are clear errors. Its crash tests are in `file_sink_crash`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::*;
use tidemill::prelude::*;
use tidemill::{FileFormat, Sink};

use crate::cli::{text, tidemill};
use crate::common::{df_rows, events, events_schema, sorted_rows};

const FORMATS: [FileFormat; 3] = [FileFormat::Parquet, FileFormat::Json, FileFormat::Csv];

/// Runs the rows of `batches` (one micro-batch each) into `sink` with
/// `Trigger::AvailableNow`, checkpointed in `checkpoint`.
async fn run_into(sink: FileSink, batches: Vec<RecordBatch>, checkpoint: &Path) {
    let schema = batches[0].schema();
    let rows = batches[0].num_rows() as u64;
    let stream = MemoryStream::new(schema).max_rows_per_trigger(rows);
    stream.push_all(batches).unwrap();
    let ctx = SessionContext::new();
    let query = ctx
        .read_stream(stream)
        .await
        .unwrap()
        .write_stream()
        .sink(sink)
        .trigger(Trigger::AvailableNow)
        .checkpoint(checkpoint.to_str().unwrap())
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
}

/// Registers the directory `dir` as table `name` with DataFusion's own
/// reader for `format`: the data files' columns are `schema`'s, and the
/// `partition_cols` come from the `col=value` directories.
async fn register(
    ctx: &SessionContext,
    name: &str,
    dir: &Path,
    format: FileFormat,
    schema: &Schema,
    partition_cols: Vec<(String, DataType)>,
) {
    let dir = dir.to_str().unwrap();
    match format {
        FileFormat::Parquet => ctx
            .register_parquet(
                name,
                dir,
                ParquetReadOptions::default()
                    .schema(schema)
                    .table_partition_cols(partition_cols),
            )
            .await
            .unwrap(),
        FileFormat::Json => ctx
            .register_json(
                name,
                dir,
                JsonReadOptions::default()
                    .schema(schema)
                    .file_extension(".json")
                    .table_partition_cols(partition_cols),
            )
            .await
            .unwrap(),
        FileFormat::Csv => ctx
            .register_csv(
                name,
                dir,
                CsvReadOptions::new()
                    .schema(schema)
                    .has_header(true)
                    .file_extension(".csv")
                    .table_partition_cols(partition_cols),
            )
            .await
            .unwrap(),
    }
}

#[tokio::test]
async fn each_format_is_read_back_by_datafusion_row_for_row() {
    let input = vec![events(0..4), events(4..8), events(8..12)];
    for format in FORMATS {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let sink = FileSink::new(out.to_str().unwrap()).with_format(format);
        run_into(sink, input.clone(), &tmp.path().join("chk")).await;

        // DataFusion's reader over the plain directory (the manifest's
        // files have no extension and are skipped).
        let ctx = SessionContext::new();
        register(&ctx, "out", &out, format, &events_schema(), Vec::new()).await;
        let read = df_rows(ctx.sql("SELECT * FROM out").await.unwrap()).await;
        assert_eq!(read, sorted_rows(&input), "{format}");
        // Tidemill's reader of exactly the committed files.
        let committed = FileSink::read_committed(&ctx, out.to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(df_rows(committed).await, sorted_rows(&input), "{format}");
        let entries = FileSink::committed_batches(&ctx, out.to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(entries.len(), 3, "{format}: one entry per micro-batch");
        assert!(entries.iter().all(|e| e.format == format));
    }
}

/// The schema of the partitioned rows: `id`, `sym` (nullable), `price`,
/// `day`.
fn trades_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("sym", DataType::Utf8, true),
        Field::new("price", DataType::Float64, false),
        Field::new("day", DataType::Date32, false),
    ]))
}

/// Rows `(id, sym, day)` (price = id / 2; day counted from 2024-01-01).
fn trades(rows: &[(i64, Option<&str>, i32)]) -> RecordBatch {
    RecordBatch::try_new(
        trades_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.0 as f64 / 2.0),
            )),
            Arc::new(Date32Array::from_iter_values(
                rows.iter().map(|r| 19_723 + r.2),
            )),
        ],
    )
    .unwrap()
}

/// Several partitions, a null value and values Hive escapes (`/`, `=`,
/// `%`, `:`, a space), over three micro-batches.
fn partitioned_input() -> Vec<RecordBatch> {
    vec![
        trades(&[
            (1, Some("ABC"), 0),
            (2, Some("a/b"), 0),
            (3, Some("ABC"), 1),
        ]),
        trades(&[(4, None, 0), (5, Some("x=1%"), 1), (6, Some("10:30 z"), 1)]),
        trades(&[(7, Some("ABC"), 0), (8, None, 1), (9, Some("a/b"), 1)]),
    ]
}

#[tokio::test]
async fn partitioned_output_is_read_back_by_datafusion_with_its_partition_columns() {
    let input = partitioned_input();
    for format in FORMATS {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let sink = FileSink::new(out.to_str().unwrap())
            .with_format(format)
            .partition_by(["day", "sym"]);
        run_into(sink, input.clone(), &tmp.path().join("chk")).await;

        // Hive-style directories, escaped as Spark escapes them, the
        // partition columns out of the data files.
        let mut dirs: Vec<String> = walk_files(&out)
            .iter()
            .filter(|f| !f.starts_with("_tidemill_sink"))
            .map(|f| f[..f.rfind('/').unwrap()].to_string())
            .collect();
        dirs.sort();
        dirs.dedup();
        assert_eq!(
            dirs,
            [
                "day=2024-01-01/sym=ABC",
                "day=2024-01-01/sym=__HIVE_DEFAULT_PARTITION__",
                "day=2024-01-01/sym=a%2Fb",
                "day=2024-01-02/sym=10%3A30 z",
                "day=2024-01-02/sym=ABC",
                "day=2024-01-02/sym=__HIVE_DEFAULT_PARTITION__",
                "day=2024-01-02/sym=a%2Fb",
                "day=2024-01-02/sym=x%3D1%25",
            ],
            "{format}"
        );

        // DataFusion: the data files' columns plus `day` (typed) and `sym`
        // from the directories, unescaped; it reads Hive's null marker as
        // text.
        let ctx = SessionContext::new();
        let file_schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Float64, false),
        ]);
        register(
            &ctx,
            "out",
            &out,
            format,
            &file_schema,
            vec![
                ("day".to_string(), DataType::Date32),
                ("sym".to_string(), DataType::Utf8),
            ],
        )
        .await;
        let read = df_rows(
            ctx.sql("SELECT id, sym, price, day FROM out")
                .await
                .unwrap(),
        )
        .await;
        let expected: Vec<RecordBatch> = input
            .iter()
            .map(|batch| {
                let sym = arrow::compute::kernels::zip::zip(
                    &arrow::compute::is_null(batch.column(1)).unwrap(),
                    &StringArray::new_scalar("__HIVE_DEFAULT_PARTITION__"),
                    batch.column(1),
                )
                .unwrap();
                let mut columns = batch.columns().to_vec();
                columns[1] = sym;
                RecordBatch::try_new(batch.schema(), columns).unwrap()
            })
            .collect();
        assert_eq!(read, sorted_rows(&expected), "{format}");
        // Filters on partition columns prune directories and still match.
        let abc = df_rows(
            ctx.sql("SELECT id FROM out WHERE sym = 'a/b' AND day = DATE '2024-01-02'")
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(abc, ["| 9  |"], "{format}");

        // Tidemill's reader: exactly the rows written, nulls as nulls, the
        // columns in their place.
        let committed = FileSink::read_committed(&ctx, out.to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(committed.schema().as_arrow().fields().len(), 4, "{format}");
        assert_eq!(df_rows(committed).await, sorted_rows(&input), "{format}");
    }
}

/// Every file under `dir`, as `/`-separated paths relative to it, sorted.
fn walk_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                let parts: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_str().unwrap().to_string())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    let mut files = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut files);
    }
    files.sort();
    files
}

#[tokio::test]
async fn an_unknown_partition_column_fails_the_query_at_start_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let stream = MemoryStream::new(events_schema());
    stream.push(events(0..3)).unwrap();
    let ctx = SessionContext::new();
    let sink = FileSink::json(out.to_str().unwrap()).partition_by(["sym"]);
    let description = sink.description();
    let started = ctx
        .read_stream(stream)
        .await
        .unwrap()
        .write_stream()
        .sink(sink)
        .trigger(Trigger::AvailableNow)
        .checkpoint(tmp.path().join("chk").to_str().unwrap())
        .start()
        .await;
    let err = match started {
        Err(e) => e.to_string(),
        Ok(query) => query.await_termination().await.unwrap_err().to_string(),
    };
    assert!(
        err.contains(&format!(
            "sink {description}: partition column 'sym' is not a column of the output; its \
             columns: id, symbol, price"
        )),
        "{err}"
    );
    assert!(walk_files(&out).is_empty(), "nothing written: {err}");
}

/// A pipeline reading `<dir>/in` (JSON lines of events) into the files
/// sink declared with `options`.
fn write_pipeline(dir: &Path, options: &str) -> String {
    let sql = format!(
        "CREATE STREAM events (id BIGINT NOT NULL, symbol VARCHAR NOT NULL, price DOUBLE NOT NULL)\n\
         WITH (connector = 'files', path = '{input}', format = 'json');\n\
         CREATE SINK copied WITH (connector = 'files', path = '{out}', {options});\n\
         INSERT INTO copied SELECT id, symbol, price FROM events;\n",
        input = dir.join("in").display(),
        out = dir.join("out").display(),
    );
    let file = dir.join("copy.sql");
    std::fs::write(&file, sql).unwrap();
    file.to_str().unwrap().to_string()
}

fn write_events(dir: &Path, name: &str, ids: std::ops::Range<i64>) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = ids
        .map(|id| {
            format!(
                "{{\"id\": {id}, \"symbol\": \"{}\", \"price\": {}}}\n",
                ["A", "B", "C"][(id % 3) as usize],
                id as f64 * 1.5
            )
        })
        .collect();
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test]
async fn sql_pipelines_write_each_format_partitioned_by_its_options() {
    for (format, extension) in [("json", "json"), ("csv", "csv"), ("parquet", "parquet")] {
        let tmp = tempfile::tempdir().unwrap();
        write_events(&tmp.path().join("in"), "a.json", 0..10);
        let file = write_pipeline(
            tmp.path(),
            &format!("format = '{format}', partition_by = 'symbol'"),
        );
        for args in [
            &["run", &file, "--trigger", "available-now"][..],
            &["batch", &file][..],
        ] {
            let _ = std::fs::remove_dir_all(tmp.path().join("out"));
            let mut args = args.to_vec();
            let checkpoint = tmp.path().join(format!("chk-{format}"));
            let checkpoint = checkpoint.to_str().unwrap().to_string();
            let _ = std::fs::remove_dir_all(&checkpoint);
            if args[0] == "run" {
                args.extend(["--checkpoint", &checkpoint]);
            }
            let output = tidemill(&args);
            assert!(
                output.status.success(),
                "{format} {args:?}: {}",
                text(&output.stderr)
            );
            let files: Vec<String> = walk_files(&tmp.path().join("out"))
                .into_iter()
                .filter(|f| !f.starts_with("_tidemill_sink"))
                .collect();
            assert!(!files.is_empty());
            for f in &files {
                assert!(
                    (f.starts_with("symbol=A/")
                        || f.starts_with("symbol=B/")
                        || f.starts_with("symbol=C/"))
                        && f.ends_with(&format!(".{extension}")),
                    "{format}: {f}"
                );
            }
            let ctx = SessionContext::new();
            let out = tmp.path().join("out");
            let committed = FileSink::read_committed(&ctx, out.to_str().unwrap())
                .await
                .unwrap();
            assert_eq!(
                df_rows(committed).await,
                sorted_rows(&[events(0..10)]),
                "{format} {args:?}"
            );
        }
    }
}

#[test]
fn bad_files_sink_options_are_errors_naming_the_option_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    // The options, the one at fault and the message.
    let cases = [
        (
            "format = 'xml'",
            "format",
            "unknown format 'xml' for sink copied; valid formats: parquet, json, csv",
        ),
        (
            "format = 'json', header = 'true'",
            "header",
            "option 'header' applies to format 'csv' only, not 'json'",
        ),
        (
            "partition_by = 'symbol,,id'",
            "partition_by",
            "option 'partition_by' must be column names separated by commas, got 'symbol,,id'",
        ),
        (
            "partition_by = 'id, symbol, id'",
            "partition_by",
            "option 'partition_by' names the column 'id' twice, in 'id, symbol, id'",
        ),
    ];
    for (options, key, message) in cases {
        let file = write_pipeline(tmp.path(), options);
        // The error is at the option, on the `CREATE SINK` line.
        let sink_line = std::fs::read_to_string(&file).unwrap();
        let sink_line = sink_line.lines().nth(2).unwrap();
        let column = sink_line.rfind(&format!("{key} =")).unwrap() + 1;
        let output = tidemill(&["explain", &file]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("copy.sql:3:{column}: {message}")),
            "{message}\nnot in\n{stderr}"
        );
    }
}

#[test]
fn an_unknown_partition_column_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    write_events(&tmp.path().join("in"), "a.json", 0..3);
    let file = write_pipeline(
        tmp.path(),
        "format = 'csv', partition_by = 'symbol, sector'",
    );
    let message = format!(
        "sink FileSink[csv: file://{}]: partition column 'sector' is not a column of the \
         output; its columns: id, symbol, price",
        tmp.path().join("out").display()
    );
    // `explain` says it of the query it rejects.
    let output = tidemill(&["explain", &file]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("rejected: {message}")), "{stdout}");
    // `run` and `batch` refuse it at its `INSERT INTO`, before reading.
    let checkpoint = tmp.path().join("chk");
    for args in [
        &[
            "run",
            &file,
            "--trigger",
            "available-now",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ][..],
        &["batch", &file][..],
    ] {
        let output = tidemill(args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("copy.sql:4:1: INSERT INTO copied: {message}")),
            "{args:?}: {stderr}"
        );
        assert!(
            !tmp.path().join("out").exists(),
            "{args:?}: nothing written"
        );
    }
}

/// The statement `docs/sql.md` gives for reading partitioned JSON output
/// back in DataFusion, `CREATE EXTERNAL TABLE … PARTITIONED BY`, reads it.
#[tokio::test]
async fn datafusion_sql_reads_partitioned_output_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let input = vec![events(0..6), events(6..9)];
    let sink = FileSink::json(out.to_str().unwrap()).partition_by(["symbol"]);
    run_into(sink, input.clone(), &tmp.path().join("chk")).await;
    let ctx = SessionContext::new();
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE copied (id BIGINT NOT NULL, price DOUBLE NOT NULL, symbol VARCHAR) \
         STORED AS JSON PARTITIONED BY (symbol) LOCATION '{}/'",
        out.display()
    ))
    .await
    .unwrap();
    let read = df_rows(
        ctx.sql("SELECT id, symbol, price FROM copied")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read, sorted_rows(&input));
}
