//! The examples of `docs/sql.md`, run through the `tidemill` binary, and the
//! file sink's manifest format it documents, checked on real output.
//!
//! Every ```` ```sql ```` block of the document carries a marker saying how
//! it is tested: `sql explain` (parsed and explained), `sql rejected`
//! (`tidemill explain` refuses it with exit code 1 and, if the next block
//! is a `text` block, prints its text), `sql run` (run with `tidemill run
//! --trigger available-now` and with `tidemill batch` over sample data) or
//! `sql kafka` (run against a real broker). A block without a marker fails
//! the suite, so no example goes untested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::prelude::SessionContext;
use tidemill::ParquetSink;

use crate::cli::{text, tidemill};
use crate::common::sorted_rows;
#[cfg(feature = "kafka")]
use tidemill_harness::kafka_broker::{Broker, Out, consume_all, create_topic, produce};

const MARKERS: [&str; 4] = ["run", "explain", "rejected", "kafka"];

/// A fenced code block of the document.
#[derive(Debug, Clone)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string (`sql run`, `text`, …).
    info: String,
    body: String,
}

/// An SQL example: its marker, its text, and the text block after it.
#[derive(Debug, Clone)]
struct Example {
    line: usize,
    marker: String,
    sql: String,
    next_text: Option<String>,
}

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/sql.md")
}

fn blocks() -> Vec<Block> {
    let doc = std::fs::read_to_string(doc_path()).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String, usize)> = None;
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((i + 1, info.trim().to_string(), String::new(), indent));
                }
            }
            Some((start, info, body, indent)) => {
                if trimmed == "```" {
                    blocks.push(Block {
                        line: *start,
                        info: info.clone(),
                        body: body.clone(),
                    });
                    open = None;
                } else {
                    body.push_str(line.get(*indent..).unwrap_or(trimmed));
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "docs/sql.md: an unclosed code block");
    blocks
}

fn examples() -> Vec<Example> {
    let blocks = blocks();
    let mut examples = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let mut words = block.info.split_whitespace();
        if words.next() != Some("sql") {
            continue;
        }
        let marker = words.next().unwrap_or_default().to_string();
        assert!(
            MARKERS.contains(&marker.as_str()) && words.next().is_none(),
            "docs/sql.md:{}: an sql block needs exactly one marker of {MARKERS:?}, has '{}'",
            block.line,
            block.info
        );
        let next_text = blocks
            .get(i + 1)
            .filter(|b| b.info == "text")
            .map(|b| b.body.trim().to_string());
        examples.push(Example {
            line: block.line,
            marker,
            sql: block.body.clone(),
            next_text,
        });
    }
    examples
}

/// The sample data the `run` examples read: `data/trades/` (three JSON
/// lines files, 36 trades of AAPL, MSFT and GOOG over minutes 10:00 to
/// 10:05, the last at 10:05:50) and `data/symbols.csv`.
fn sample_data(dir: &Path) {
    let trades = dir.join("data/trades");
    std::fs::create_dir_all(&trades).unwrap();
    for file in 0..3 {
        let mut lines = String::new();
        for i in 0..12 {
            lines.push_str(&format!(
                "{{\"symbol\": \"{}\", \"exchange\": \"XNAS\", \"price\": {}, \"quantity\": {}, \
                 \"event_time\": \"2024-01-01T10:{:02}:{:02}\"}}\n",
                ["AAPL", "MSFT", "GOOG"][i % 3],
                100 + i,
                1 + i,
                file * 2 + i / 6,
                (i * 10) % 60
            ));
        }
        std::fs::write(trades.join(format!("part-{file:03}.json")), lines).unwrap();
    }
    std::fs::write(
        dir.join("data/symbols.csv"),
        "symbol,name,sector\nAAPL,Apple,Technology\nMSFT,Microsoft,Technology\nGOOG,Alphabet,Communication\n",
    )
    .unwrap();
    bronze_trades(dir);
}

/// `lake/bronze_trades/`: the sample trades as a Delta table, one version
/// per file of `data/trades/` (`event_time` as Delta's `timestamp`),
/// written by deltalake on a runtime of its own (the tests calling
/// `sample_data` may be on one already).
fn bronze_trades(dir: &Path) {
    use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    let schema = Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, true),
        Field::new("exchange", DataType::Utf8, true),
        Field::new("price", DataType::Float64, true),
        Field::new("quantity", DataType::Float64, true),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    let batches: Vec<RecordBatch> = (0..3)
        .map(|file| {
            let text =
                std::fs::read_to_string(dir.join(format!("data/trades/part-{file:03}.json")))
                    .unwrap();
            let trades: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let field = |name: &'static str| trades.iter().map(move |t| t[name].clone());
            let times = field("event_time").map(|t| {
                chrono::NaiveDateTime::parse_from_str(t.as_str().unwrap(), "%Y-%m-%dT%H:%M:%S")
                    .unwrap()
                    .and_utc()
                    .timestamp_micros()
            });
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        field("symbol").map(|v| v.as_str().unwrap().to_string()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        field("exchange").map(|v| v.as_str().unwrap().to_string()),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        field("price").map(|v| v.as_f64().unwrap()),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        field("quantity").map(|v| v.as_f64().unwrap()),
                    )),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(times).with_timezone("UTC"),
                    ),
                ],
            )
            .unwrap()
        })
        .collect();
    let location = dir.join("lake/bronze_trades");
    std::fs::create_dir_all(&location).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let url = url::Url::from_directory_path(&location).unwrap();
            let mut table = deltalake::DeltaTableBuilder::from_url(url)
                .unwrap()
                .build()
                .unwrap();
            for batch in batches {
                table = table
                    .write(vec![batch])
                    .with_save_mode(deltalake::protocol::SaveMode::Append)
                    .await
                    .unwrap();
            }
        })
    })
    .join()
    .unwrap();
}

/// The names and options text of the statements `CREATE <kind> name …`.
fn declared(sql: &str, kind: &str) -> Vec<(String, String)> {
    sql.split(';')
        .filter_map(|statement| {
            let words: Vec<&str> = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .flat_map(|l| l.split_whitespace())
                .collect();
            (words.len() > 2
                && words[0].eq_ignore_ascii_case("CREATE")
                && words[1].eq_ignore_ascii_case(kind))
            .then(|| {
                (
                    words[2].trim_end_matches('(').to_string(),
                    statement.to_string(),
                )
            })
        })
        .collect()
}

/// The value of `option = '…'` in a statement's text.
fn option(statement: &str, key: &str) -> Option<String> {
    let at = statement.find(&format!("{key} = '"))?;
    let rest = &statement[at + key.len() + 4..];
    Some(rest[..rest.find('\'')?].to_string())
}

fn write_example(dir: &Path, example: &Example) -> PathBuf {
    let file = dir.join("pipeline.sql");
    std::fs::write(&file, &example.sql).unwrap();
    file
}

/// The document's words on mistakes in `WITH (…)` options are what the
/// command says: each quoted message is in the document and in the error
/// of a file making that mistake, at the documented place.
#[test]
fn option_mistakes_are_reported_as_documented() {
    let doc = std::fs::read_to_string(doc_path()).unwrap();
    // The document's text, with its line breaks as spaces.
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "CREATE STREAM t (a INT)\n  WITH (connector = 'files', path = 'x', format = 'json', path = 'y');",
            "option 'path' is given twice",
            ":2:59: ",
        ),
        (
            "CREATE STREAM t (a INT)\n  WITH (connector = 'files', pth = 'x', format = 'json');",
            "unknown option 'pth' for a files stream (stream t); valid options: connector, path,",
            ":2:30: ",
        ),
        (
            "CREATE STREAM t (a INT)\n  WITH (connector = 'files', format = 'json');",
            "stream t needs the option 'path'",
            ":1:1: ",
        ),
    ];
    for (sql, message, at) in cases {
        assert!(doc.contains(message), "docs/sql.md does not say: {message}");
        let file = dir.path().join("options.sql");
        std::fs::write(&file, sql).unwrap();
        let out = tidemill(&["explain", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("options.sql{at}{message}")),
            "{at}{message}\nnot in\n{stderr}"
        );
    }
}

#[test]
fn every_sql_example_is_marked() {
    let examples = examples();
    for marker in MARKERS {
        assert!(
            examples.iter().any(|e| e.marker == marker),
            "no '{marker}' example"
        );
    }
    assert!(examples.iter().filter(|e| e.marker == "run").count() >= 4);
}

#[test]
fn every_example_explains_or_is_rejected_as_documented() {
    for example in examples() {
        // Without the `kafka` feature, Kafka pipelines are refused (see
        // `without_kafka`).
        if cfg!(not(feature = "kafka")) && example.sql.contains("connector = 'kafka'") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        sample_data(dir.path());
        let file = write_example(dir.path(), &example);
        // In the sample data's directory: a stream without declared
        // columns (a Delta table's) is planned with the table's.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemill"))
            .args(["explain", file.to_str().unwrap()])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let at = format!("docs/sql.md:{}", example.line);
        if example.marker == "rejected" {
            assert_eq!(out.status.code(), Some(1), "{at}: {stdout}{stderr}");
            assert!(stdout.contains("rejected: "), "{at}: {stdout}");
            if let Some(expected) = &example.next_text {
                assert!(
                    stdout.contains(expected.as_str()),
                    "{at}: {expected}\nnot in\n{stdout}"
                );
            }
        } else {
            assert!(out.status.success(), "{at}: {stderr}");
            let sinks = declared(&example.sql, "SINK");
            for (sink, _) in &sinks {
                assert!(
                    stdout.contains(&format!("== INSERT INTO {sink}")),
                    "{at}: {stdout}"
                );
            }
            assert!(stdout.contains("output mode: "), "{at}: {stdout}");
        }
    }
}

/// Runs each `sql run` example as a stream to the end and as a batch job,
/// over the sample data: both succeed, the batch job writes rows to every
/// sink, and every row a `files` sink committed in the stream is also in
/// the batch job's output (the stream has the windows its watermark
/// closed).
#[tokio::test]
async fn run_examples_stream_and_batch() {
    let runs: Vec<Example> = examples()
        .into_iter()
        .filter(|e| e.marker == "run")
        .collect();
    for (n, example) in runs.iter().enumerate() {
        let at = format!("docs/sql.md:{}", example.line);
        let streamed = tempfile::tempdir().unwrap();
        let batched = tempfile::tempdir().unwrap();
        let mut outputs = BTreeMap::new();
        for (dir, args) in [
            (streamed.path(), &["run", "--trigger", "available-now"][..]),
            (batched.path(), &["batch"][..]),
        ] {
            sample_data(dir);
            let file = write_example(dir, example);
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tidemill"));
            command
                .arg(args[0])
                .arg(&file)
                .args(&args[1..])
                .current_dir(dir);
            let out = command.output().unwrap();
            assert!(
                out.status.success(),
                "{at}: tidemill {}: {}",
                args[0],
                text(&out.stderr)
            );
            outputs.insert(args[0], text(&out.stdout));
        }
        let sinks = declared(&example.sql, "SINK");
        for (sink, statement) in &sinks {
            let line = outputs["batch"]
                .lines()
                .find(|l| l.starts_with(&format!("{sink}: ")) && l.ends_with(" rows"))
                .unwrap_or_else(|| panic!("{at}: no rows line for {sink}: {}", outputs["batch"]));
            let rows: usize = line[sink.len() + 2..line.len() - 5].parse().unwrap();
            assert!(rows > 0, "{at}: {line}");
            assert!(
                outputs["run"].contains(&format!("{sink}: batch 0 |")),
                "{at}: {}",
                outputs["run"]
            );
            if option(statement, "connector").as_deref() == Some("files") {
                let path = option(statement, "path").unwrap();
                let ctx = SessionContext::new();
                let read = |dir: &Path| {
                    let location = dir.join(&path);
                    let ctx = ctx.clone();
                    async move {
                        let df = ParquetSink::read_committed(&ctx, location.to_str().unwrap())
                            .await
                            .unwrap();
                        sorted_rows(&df.collect().await.unwrap())
                    }
                };
                let stream_rows = read(streamed.path()).await;
                let batch_rows = read(batched.path()).await;
                assert_eq!(batch_rows.len(), rows, "{at}");
                assert!(!stream_rows.is_empty(), "{at}: {sink}");
                for row in &stream_rows {
                    assert!(
                        batch_rows.contains(row),
                        "{at}: {row} not in {batch_rows:#?}"
                    );
                }
            }
            if option(statement, "connector").as_deref() == Some("delta") {
                // Read back by deltalake's own table provider.
                let path = option(statement, "path").unwrap();
                let read = |dir: &Path| {
                    let location = dir.join(&path);
                    async move { crate::delta_sink::query_table(&location, "SELECT * FROM t").await }
                };
                let stream_rows = read(streamed.path()).await;
                let batch_rows = read(batched.path()).await;
                assert_eq!(batch_rows.len(), rows, "{at}");
                if option(statement, "output_mode").as_deref() == Some("update") {
                    // The MERGEs of the stream leave the batch job's table.
                    assert_eq!(stream_rows, batch_rows, "{at}: {sink}");
                } else {
                    assert!(!stream_rows.is_empty(), "{at}: {sink}");
                    for row in &stream_rows {
                        assert!(
                            batch_rows.contains(row),
                            "{at}: {row} not in {batch_rows:#?}"
                        );
                    }
                }
            }
        }
        if n == 0 {
            // The transcript under the first example.
            assert_eq!(outputs["batch"], "per_minute: 18 rows\n", "{at}");
            let last = outputs["run"].lines().last().unwrap();
            assert!(
                last.contains("| 0 rows in |")
                    && last.ends_with("| watermark 2024-01-01T10:05:40.000Z | state 3 rows"),
                "{at}: {}",
                outputs["run"]
            );
        }
    }
}

/// The Kafka examples against a real broker: the input topics hold the
/// sample trades as JSON; the pipeline runs to the end and writes to its
/// output topics, as a stream and as a batch job.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_examples_run_on_a_broker() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    for example in examples().into_iter().filter(|e| e.marker == "kafka") {
        let at = format!("docs/sql.md:{}", example.line);
        let sql = example.sql.replace("localhost:9092", &bootstrap);
        let sample = tempfile::tempdir().unwrap();
        sample_data(sample.path());
        let mut trades: Vec<Out> = Vec::new();
        for file in 0..3 {
            let lines = std::fs::read_to_string(
                sample
                    .path()
                    .join(format!("data/trades/part-{file:03}.json")),
            )
            .unwrap();
            trades.extend(lines.lines().map(|l| Out {
                value: Some(l.as_bytes().to_vec()),
                ..Default::default()
            }));
        }
        for (_, statement) in declared(&sql, "STREAM") {
            let topic = option(&statement, "topic").expect("a topic");
            create_topic(&bootstrap, &topic, 2, &[]).await;
            produce(&bootstrap, &topic, &trades);
        }
        let outputs: Vec<String> = declared(&sql, "SINK")
            .iter()
            .map(|(_, statement)| option(statement, "topic").expect("a topic"))
            .collect();
        for topic in &outputs {
            create_topic(&bootstrap, topic, 1, &[]).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.sql");
        std::fs::write(&file, &sql).unwrap();
        let run = tidemill(&["run", file.to_str().unwrap(), "--trigger", "available-now"]);
        assert!(run.status.success(), "{at}: {}", text(&run.stderr));
        let mut streamed = Vec::new();
        for topic in &outputs {
            streamed.push(consume_all(&bootstrap, topic).len());
            assert!(streamed.last() > Some(&0), "{at}: nothing in {topic}");
        }
        let batch = tidemill(&["batch", file.to_str().unwrap()]);
        assert!(batch.status.success(), "{at}: {}", text(&batch.stderr));
        for (topic, before) in outputs.iter().zip(streamed) {
            assert!(
                consume_all(&bootstrap, topic).len() > before,
                "{at}: {topic}"
            );
        }
    }
}

/// CRC-32 (IEEE), as the manifest's trailer has it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= *byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The manifest of a `files` sink is as `docs/sql.md` describes it: one
/// entry per batch id of the progress lines, three lines each (header,
/// JSON body, CRC-32 trailer), listing exactly the batch's data files with
/// their sizes and row counts.
#[tokio::test]
async fn the_file_sink_manifest_is_as_documented() {
    let example = examples().into_iter().find(|e| e.marker == "run").unwrap();
    let dir = tempfile::tempdir().unwrap();
    sample_data(dir.path());
    // Two runs, the second over a file written after the first, so that
    // there are several batches.
    let data = dir.path().join("data/trades");
    let later = std::fs::read(data.join("part-002.json")).unwrap();
    std::fs::remove_file(data.join("part-002.json")).unwrap();
    let file = write_example(dir.path(), &example);
    let mut progress = String::new();
    for run in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemill"))
            .args(["run", file.to_str().unwrap(), "--trigger", "available-now"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        progress.push_str(&text(&out.stdout));
        if run == 0 {
            std::fs::write(data.join(".part-002.json.tmp"), &later).unwrap();
            std::fs::rename(data.join(".part-002.json.tmp"), data.join("part-002.json")).unwrap();
        }
    }
    let out = dir.path().join("out/per_minute");
    let manifest = out.join("_tidemill_sink");
    let mut listed = Vec::new();
    let mut total_rows = 0;
    let mut entries: Vec<u64> = std::fs::read_dir(&manifest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    entries.sort();
    let batch_ids: Vec<u64> = progress
        .lines()
        .filter_map(|l| l.strip_prefix("per_minute: batch "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(batch_ids.len() >= 3, "{progress}");
    assert_eq!(entries, batch_ids, "an entry per batch id of the progress");
    for n in entries {
        let entry = std::fs::read_to_string(manifest.join(n.to_string())).unwrap();
        let lines: Vec<&str> = entry.lines().collect();
        assert_eq!(lines.len(), 3, "{entry}");
        assert_eq!(lines[0], "tidemill-sink-manifest v1");
        assert_eq!(
            lines[2],
            format!("crc32 {:08x}", crc32(lines[1].as_bytes()))
        );
        let body: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["batch_id", "files", "schema"]);
        assert_eq!(body["batch_id"], n);
        let fields: Vec<&str> = body["schema"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            ["window_start", "window_end", "symbol", "trades", "volume"]
        );
        for f in body["files"].as_array().unwrap() {
            let name = f["name"].as_str().unwrap();
            assert!(name.starts_with(&format!("part-{n:05}-")) && name.ends_with(".parquet"));
            let path = out.join(name);
            assert_eq!(f["size_bytes"], std::fs::metadata(&path).unwrap().len());
            let reader = parquet::file::reader::SerializedFileReader::new(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap();
            use parquet::file::reader::FileReader;
            let rows = reader.metadata().file_metadata().num_rows();
            assert_eq!(f["num_rows"], rows);
            total_rows += rows as usize;
            listed.push(name.to_string());
        }
    }
    // Every data file is listed (a clean run leaves no leftovers), and the
    // listed rows are the committed output.
    let mut data_files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    data_files.sort();
    listed.sort();
    assert_eq!(data_files, listed);
    let ctx = SessionContext::new();
    let committed = ParquetSink::read_committed(&ctx, out.to_str().unwrap())
        .await
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(committed, total_rows);
    assert!(total_rows > 0);
}
