//! `tidemill run` and `tidemill batch` over the same input files: a batch
//! job reads a `files` stream through the streaming source's own reader, so
//! both modes read the same files the same way, and malformed input fails
//! both with the same message naming the file, the line and the column.
//! Also: console sinks name themselves in their batch headers.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use parquet::arrow::ArrowWriter;
use tidemill::ParquetSink;

use crate::cli::{text, tidemill};
use crate::common::sorted_rows;

/// A pipeline copying the stream `quotes (symbol VARCHAR, price DOUBLE)` of
/// `format` files in `<dir>/<input>` to a files sink at `<dir>/<output>`.
fn copy_pipeline(dir: &Path, input: &str, format: &str, output: &str) -> PathBuf {
    let file = dir.join(format!("{output}.sql"));
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM quotes (symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{input}', format = '{format}');

CREATE SINK copied WITH (connector = 'files', path = '{output}');

INSERT INTO copied SELECT symbol, price FROM quotes;
",
            input = dir.join(input).display(),
            output = dir.join(output).display(),
        ),
    )
    .unwrap();
    file
}

/// Writes `content` to `<dir>/<input>/<name>`, creating the directory.
fn write_input(dir: &Path, input: &str, name: &str, content: &[u8]) {
    let input = dir.join(input);
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join(name), content).unwrap();
}

/// A parquet file with columns `symbol` (text) and `price` of `price_type`.
fn parquet_file(price_type: DataType) -> Vec<u8> {
    let price: Arc<dyn arrow::array::Array> = match price_type {
        DataType::Float64 => Arc::new(Float64Array::from(vec![1.5, 2.5])),
        _ => Arc::new(StringArray::from(vec!["1.5", "2.5"])),
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new("price", price_type, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(StringArray::from(vec!["AAPL", "MSFT"])), price],
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

async fn committed_rows(dir: &Path, output: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    let df = ParquetSink::read_committed(&ctx, dir.join(output).to_str().unwrap())
        .await
        .unwrap();
    sorted_rows(&df.collect().await.unwrap())
}

/// Runs `pipeline` with `tidemill run --trigger available-now` (checkpoint
/// in `<dir>/<name>.checkpoint`) and with `tidemill batch`, both expected
/// to fail; returns their standard error, after checking the exit code (1)
/// and that each is one message without a panic.
fn fail_both_ways(dir: &Path, pipeline: &Path, name: &str) -> (String, String) {
    let checkpoint = dir.join(format!("{name}.checkpoint"));
    let run = tidemill(&[
        "run",
        pipeline.to_str().unwrap(),
        "--trigger",
        "available-now",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    let batch = tidemill(&["batch", pipeline.to_str().unwrap()]);
    let mut messages = Vec::new();
    for (mode, out) in [("run", &run), ("batch", &batch)] {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}, {mode}: {stderr}");
        assert!(stderr.starts_with("error: "), "{name}, {mode}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}, {mode}: one message: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}, {mode}: {stderr}");
        assert!(
            !stderr.contains("External error"),
            "{name}, {mode}: DataFusion's wrapping leaks: {stderr}"
        );
        messages.push(stderr.trim_end().to_string());
    }
    let batch = messages.pop().unwrap();
    let run = messages.pop().unwrap();
    (run, batch)
}

/// A malformed-input case: its name, the format, the bad file's name and
/// content, and what the message says.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    Vec<String>,
);

#[tokio::test]
async fn malformed_input_fails_run_and_batch_alike_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good_json =
        b"{\"symbol\": \"AAPL\", \"price\": 1.5}\n{\"symbol\": \"MSFT\", \"price\": 2.5}\n";
    let cases: [Case; 4] = [
        (
            "bad_json",
            "json",
            "part-001.json",
            // (a blank line before the bad one: lines, not records, count)
            b"{\"symbol\": \"GOOG\", \"price\": 3.5}\n\n{\"symbol\": \"IBM\", \"price\": }\n".to_vec(),
            vec!["part-001.json, line 3: invalid JSON at column 28: expected value".into()],
        ),
        (
            "json_type",
            "json",
            "part-001.json",
            b"{\"symbol\": \"GOOG\", \"price\": 3.5}\n{\"symbol\": \"IBM\", \"price\": \"n/a\"}\n"
                .to_vec(),
            vec![
                "part-001.json, line 2:".into(),
                "whilst decoding field 'price'".into(),
                "failed to parse \"n/a\" as Float64".into(),
            ],
        ),
        (
            "csv_type",
            "csv",
            "part-001.csv",
            b"symbol,price\nGOOG,3.5\nIBM,n/a\n".to_vec(),
            vec![
                "part-001.csv, line 3:".into(),
                "Error while parsing value 'n/a' as type 'Float64' for column 'price'".into(),
            ],
        ),
        (
            "parquet_type",
            "parquet",
            "part-001.parquet",
            parquet_file(DataType::Utf8),
            vec![
                "part-001.parquet: column 'price' has type Utf8, but the source schema expects Float64"
                    .into(),
            ],
        ),
    ];
    for (case, format, bad_name, bad, expected) in cases {
        let input = format!("{case}_in");
        let good: Vec<u8> = match format {
            "json" => good_json.to_vec(),
            "csv" => b"symbol,price\nAAPL,1.5\nMSFT,2.5\n".to_vec(),
            _ => parquet_file(DataType::Float64),
        };
        write_input(dir.path(), &input, &format!("part-000.{format}"), &good);
        write_input(dir.path(), &input, bad_name, &bad);
        let output = format!("{case}_out");
        let pipeline = copy_pipeline(dir.path(), &input, format, &output);
        let (run, batch) = fail_both_ways(dir.path(), &pipeline, case);

        // The source, the file as a URL, the line and the column.
        let bad_file = format!(
            "file://{}",
            dir.path().join(&input).join(bad_name).display()
        );
        let source = format!(
            "query copied failed: source FileSource[{format}: file://{}]: {bad_file}",
            dir.path().join(&input).display()
        );
        for (mode, message) in [("run", &run), ("batch", &batch)] {
            assert!(
                message.contains(&source),
                "{case}, {mode}: {source} not in {message}"
            );
            for wanted in &expected {
                assert!(
                    message.contains(wanted),
                    "{case}, {mode}: {wanted} not in {message}"
                );
            }
        }
        // The same words in both modes: the batch job only says which
        // pipeline file it ran first.
        assert_eq!(
            batch,
            format!(
                "error: {}: {}",
                pipeline.display(),
                run.trim_start_matches("error: ")
            ),
            "{case}"
        );
        // Neither wrote output.
        let ctx = SessionContext::new();
        let out = dir.path().join(&output);
        assert!(
            ParquetSink::committed_batches(&ctx, out.to_str().unwrap())
                .await
                .unwrap()
                .is_empty(),
            "{case}"
        );

        // Without the bad file both modes succeed with the same rows.
        std::fs::remove_file(dir.path().join(&input).join(bad_name)).unwrap();
        let fixed = copy_pipeline(dir.path(), &input, format, &format!("{case}_fixed_batch"));
        let batch = tidemill(&["batch", fixed.to_str().unwrap()]);
        assert!(batch.status.success(), "{case}: {}", text(&batch.stderr));
        assert_eq!(text(&batch.stdout), "copied: 2 rows\n", "{case}");
        let fixed_run = copy_pipeline(dir.path(), &input, format, &format!("{case}_fixed_run"));
        let checkpoint = dir.path().join(format!("{case}_fixed.checkpoint"));
        let run = tidemill(&[
            "run",
            fixed_run.to_str().unwrap(),
            "--trigger",
            "available-now",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{case}: {}", text(&run.stderr));
        let streamed = committed_rows(dir.path(), &format!("{case}_fixed_run")).await;
        assert_eq!(
            streamed,
            vec!["| AAPL   | 1.5   |", "| MSFT   | 2.5   |"],
            "{case}"
        );
        assert_eq!(
            committed_rows(dir.path(), &format!("{case}_fixed_batch")).await,
            streamed,
            "{case}"
        );
    }
}

#[tokio::test]
async fn batch_reads_csv_by_header_names_and_infers_columns_as_the_stream_does() {
    let dir = tempfile::tempdir().unwrap();
    // The header's order differs from the declared columns': the stream
    // matches columns by name, and so does the batch job.
    write_input(
        dir.path(),
        "quotes",
        "a.csv",
        b"price,venue,symbol\n1.5,X,AAPL\n2.5,Y,MSFT\n",
    );
    write_input(dir.path(), "quotes", "b.csv", b"symbol,price\nGOOG,3.5\n");
    let mut rows = Vec::new();
    for mode in ["run", "batch"] {
        let output = format!("by_name_{mode}");
        let pipeline = copy_pipeline(dir.path(), "quotes", "csv", &output);
        let checkpoint = dir.path().join(format!("{mode}.checkpoint"));
        let out = run_or_batch(mode, &pipeline, &checkpoint);
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        rows.push(committed_rows(dir.path(), &output).await);
    }
    assert_eq!(
        rows[0],
        vec![
            "| AAPL   | 1.5   |",
            "| GOOG   | 3.5   |",
            "| MSFT   | 2.5   |"
        ]
    );
    assert_eq!(rows[1], rows[0]);

    // Undeclared columns are inferred by the stream's rules in both modes
    // (JSON: every column nullable, integers as Int64).
    write_input(
        dir.path(),
        "events",
        "e.json",
        b"{\"id\": 1, \"tag\": \"a\"}\n{\"id\": 2}\n",
    );
    let pipeline = dir.path().join("inferred.sql");
    std::fs::write(
        &pipeline,
        format!(
            "CREATE STREAM events WITH (connector = 'files', path = '{}', format = 'json');
CREATE SINK shown WITH (connector = 'console');
INSERT INTO shown SELECT id * 10 AS id10, tag FROM events;
",
            dir.path().join("events").display()
        ),
    )
    .unwrap();
    let batch = tidemill(&["batch", pipeline.to_str().unwrap()]);
    assert!(batch.status.success(), "{}", text(&batch.stderr));
    let checkpoint = dir.path().join("inferred.checkpoint");
    let run = tidemill(&[
        "run",
        pipeline.to_str().unwrap(),
        "--trigger",
        "available-now",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let table = |stdout: &str| -> String {
        stdout
            .lines()
            .filter(|l| l.starts_with('|') || l.starts_with('+'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let printed = table(&text(&batch.stdout));
    assert_eq!(
        printed,
        "+------+-----+\n| id10 | tag |\n+------+-----+\n| 10   | a   |\n| 20   |     |\n+------+-----+"
    );
    assert_eq!(table(&text(&run.stdout)), printed);
}

#[test]
fn console_sinks_name_themselves_in_their_batch_headers() {
    let dir = tempfile::tempdir().unwrap();
    write_input(
        dir.path(),
        "quotes",
        "a.json",
        b"{\"symbol\": \"AAPL\", \"price\": 1.5}\n{\"symbol\": \"MSFT\", \"price\": 2.5}\n",
    );
    let pipeline = dir.path().join("two.sql");
    std::fs::write(
        &pipeline,
        format!(
            "CREATE STREAM quotes (symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{}', format = 'json');
CREATE SINK cheap WITH (connector = 'console');
CREATE SINK dear WITH (connector = 'console');
INSERT INTO cheap SELECT symbol FROM quotes WHERE price < 2;
INSERT INTO dear SELECT symbol FROM quotes WHERE price >= 2;
",
            dir.path().join("quotes").display()
        ),
    )
    .unwrap();
    let checkpoint = dir.path().join("two.checkpoint");
    let run = tidemill(&[
        "run",
        pipeline.to_str().unwrap(),
        "--trigger",
        "once",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    let batch = tidemill(&["batch", pipeline.to_str().unwrap()]);
    for (mode, out) in [("run", run), ("batch", batch)] {
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        // Each header, then that sink's table (the two queries' output may
        // interleave only between whole tables).
        for (sink, symbol) in [("cheap", "AAPL"), ("dear", "MSFT")] {
            let header = format!("Batch: 0 (sink {sink})\n");
            let at = stdout
                .find(&header)
                .unwrap_or_else(|| panic!("{mode}: no '{header}' in {stdout}"));
            let table: Vec<&str> = stdout[at + header.len()..]
                .lines()
                .skip(1) // the rule under the header
                .take_while(|l| !l.is_empty())
                .collect();
            assert_eq!(
                table,
                vec![
                    "+--------+",
                    "| symbol |",
                    "+--------+",
                    &format!("| {symbol}   |"),
                    "+--------+"
                ],
                "{mode}, {sink}: {stdout}"
            );
        }
        assert!(
            !stdout.contains("Batch: 0\n"),
            "{mode}: an unnamed header: {stdout}"
        );
    }
}

/// A parquet file as Spark and pyarrow write trades: `event_time` in
/// microseconds, UTC; `quantity` as `qty_type` (one row of 7, one of
/// `big`); `price` as a 32-bit float.
fn spark_trades(qty_type: DataType) -> Vec<u8> {
    use arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, TimestampMicrosecondArray};
    // 2024-03-04T14:30:00.250Z and 2024-03-04T14:31:00Z
    let at = 1_709_562_600_000_000_i64;
    let quantity: ArrayRef = match qty_type {
        DataType::Int64 => Arc::new(Int64Array::from(vec![7, 5_000_000_000])),
        _ => Arc::new(Int32Array::from(vec![7, 2_000_000_000])),
    };
    let batch = RecordBatch::try_from_iter(vec![
        (
            "symbol",
            Arc::new(StringArray::from(vec!["AAPL", "MSFT"])) as ArrayRef,
        ),
        ("quantity", quantity),
        ("price", Arc::new(Float32Array::from(vec![1.5_f32, 2.25]))),
        (
            "event_time",
            Arc::new(
                TimestampMicrosecondArray::from(vec![at + 250_000, at + 60_000_000])
                    .with_timezone("UTC"),
            ),
        ),
    ])
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

/// A pipeline reading `<dir>/<input>` as parquet with declared columns
/// (`quantity` as `qty_sql`) into a files sink at `<dir>/<output>`.
fn typed_pipeline(dir: &Path, input: &str, qty_sql: &str, output: &str) -> PathBuf {
    let file = dir.join(format!("{output}.sql"));
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (symbol VARCHAR, quantity {qty_sql}, price DOUBLE, event_time TIMESTAMP)
  WITH (connector = 'files', path = '{input}', format = 'parquet');

CREATE SINK copied WITH (connector = 'files', path = '{output}');

INSERT INTO copied SELECT symbol, quantity, price, event_time FROM trades;
",
            input = dir.join(input).display(),
            output = dir.join(output).display(),
        ),
    )
    .unwrap();
    file
}

#[tokio::test]
async fn parquet_written_by_spark_reads_against_declared_sql_types_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    write_input(
        dir.path(),
        "spark",
        "part-0.parquet",
        &spark_trades(DataType::Int32),
    );
    let expected = vec![
        "| AAPL   | 7          | 1.5   | 2024-03-04T14:30:00.250 |",
        "| MSFT   | 2000000000 | 2.25  | 2024-03-04T14:31:00     |",
    ];
    for mode in ["run", "batch"] {
        let output = format!("typed_{mode}");
        let pipeline = typed_pipeline(dir.path(), "spark", "BIGINT", &output);
        let checkpoint = dir.path().join(format!("typed_{mode}.checkpoint"));
        let out = run_or_batch(mode, &pipeline, &checkpoint);
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        // The declared types, written out as such.
        let ctx = SessionContext::new();
        let df = ParquetSink::read_committed(&ctx, dir.path().join(&output).to_str().unwrap())
            .await
            .unwrap();
        let schema = df.schema().as_arrow().clone();
        assert_eq!(schema.field(1).data_type(), &DataType::Int64, "{mode}");
        assert_eq!(schema.field(2).data_type(), &DataType::Float64, "{mode}");
        assert_eq!(
            schema.field(3).data_type(),
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
            "{mode}"
        );
        assert_eq!(
            sorted_rows(&df.collect().await.unwrap()),
            expected,
            "{mode}"
        );
    }

    // A column the declared type cannot hold without loss: refused in
    // both modes, naming the file and the column.
    write_input(
        dir.path(),
        "wide",
        "part-0.parquet",
        &spark_trades(DataType::Int64),
    );
    let pipeline = typed_pipeline(dir.path(), "wide", "INT", "narrow");
    let (run, batch) = fail_both_ways(dir.path(), &pipeline, "narrow");
    let file = format!(
        "file://{}",
        dir.path().join("wide/part-0.parquet").display()
    );
    for message in [run, batch] {
        assert!(
            message.contains(&format!(
                "{file}: column 'quantity' has type Int64, but the source schema expects Int32"
            )),
            "{message}"
        );
    }
}

/// Runs `pipeline` as `tidemill run --trigger available-now` on
/// `checkpoint` (mode `run`) or as `tidemill batch` (any other mode).
fn run_or_batch(mode: &str, pipeline: &Path, checkpoint: &Path) -> Output {
    match mode {
        "run" => tidemill(&[
            "run",
            pipeline.to_str().unwrap(),
            "--trigger",
            "available-now",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ]),
        _ => tidemill(&["batch", pipeline.to_str().unwrap()]),
    }
}
