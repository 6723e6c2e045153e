//! The `WITH (…)` options of SQL pipeline files, each run end to end
//! through the `tidemill` binary and checked by its effect, so that an
//! option that was parsed but not passed on would fail a test: the CSV
//! options of a `files` stream (`header`, `delimiter`), its
//! `max_files_per_trigger` and `listing_margin`, a `rate` stream run for real (and refused by
//! `tidemill batch`) with its `max_rows_per_trigger`, and the `files` sink's
//! `max_rows_per_file`.

use std::path::Path;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::prelude::SessionContext;
use parquet::file::reader::{FileReader, SerializedFileReader};
use tidemill::ParquetSink;

use crate::cli::{text, tidemill};

/// Writes `content` to `<dir>/<name>`, creating `dir`.
fn write_input(dir: &Path, name: &str, content: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), content).unwrap();
}

/// Writes the pipeline `sql` to `<dir>/<name>` and returns its path.
fn write_pipeline(dir: &Path, name: &str, sql: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, sql).unwrap();
    file.to_str().unwrap().to_string()
}

/// The committed batches of the files sink at `out`.
async fn committed_batches(out: &Path) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    let df = ParquetSink::read_committed(&ctx, out.to_str().unwrap())
        .await
        .unwrap();
    df.collect().await.unwrap()
}

/// Every row of `batches` as its values joined by `|` (nulls as `NULL`),
/// sorted, with the column names first.
fn rows(batches: &[RecordBatch]) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for batch in batches {
        names = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for row in 0..batch.num_rows() {
            let values: Vec<String> = batch
                .columns()
                .iter()
                .map(|column| {
                    if column.is_null(row) {
                        "NULL".to_string()
                    } else {
                        arrow::util::display::array_value_to_string(column, row).unwrap()
                    }
                })
                .collect();
            rows.push(values.join("|"));
        }
    }
    rows.sort();
    (names, rows)
}

/// The `rows in` of each progress line `<sink>: batch N | R rows in | …` of
/// a `tidemill run`'s standard output, in order.
fn rows_in_per_batch(stdout: &str, sink: &str) -> Vec<u64> {
    let prefix = format!("{sink}: batch ");
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let field = rest.split(" | ").nth(1).expect("a rows-in field");
            field
                .strip_suffix(" rows in")
                .expect("a rows-in field")
                .parse()
                .unwrap()
        })
        .collect()
}

/// Three CSV files without a header, fields separated by `;`, a comma
/// inside the first field: five quotes in all.
fn write_semicolon_quotes(input: &Path) {
    write_input(input, "part-0.csv", "BRK,A;1.5;10\nMSFT;2.25;20\n");
    write_input(input, "part-1.csv", "IBM;3.5;30\nORCL;4.75;40\n");
    write_input(input, "part-2.csv", "SAP;5.5;50\n");
}

const SEMICOLON_QUOTES: [&str; 5] = [
    "BRK,A|1.5|10",
    "IBM|3.5|30",
    "MSFT|2.25|20",
    "ORCL|4.75|40",
    "SAP|5.5|50",
];

fn csv_pipeline(dir: &Path, name: &str, input: &Path, output: &Path) -> String {
    write_pipeline(
        dir,
        name,
        &format!(
            "CREATE STREAM quotes (symbol VARCHAR, bid DOUBLE, size BIGINT)
WITH (connector = 'files', path = '{input}', format = 'csv',
      header = false, delimiter = ';', max_files_per_trigger = 2);

CREATE SINK copied WITH (connector = 'files', path = '{output}');

INSERT INTO copied SELECT symbol, bid, size FROM quotes;
",
            input = input.display(),
            output = output.display(),
        ),
    )
}

/// `header = false` reads the first line of each file as data, by
/// position; `delimiter = ';'` splits fields at `;` only (a comma stays in
/// its field); `max_files_per_trigger = 2` reads the three files in two
/// batches (2 files, then 1). The same in a batch run (where
/// `max_files_per_trigger` does not apply).
#[tokio::test]
async fn csv_header_false_and_semicolon_delimiter_and_max_files_per_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("quotes");
    write_semicolon_quotes(&input);

    let streamed = dir.path().join("streamed");
    let file = csv_pipeline(dir.path(), "streamed.sql", &input, &streamed);
    let run = tidemill(&["run", &file, "--trigger", "available-now"]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}\n{stdout}", text(&run.stderr));
    // Without `header = false` the first line of each file would be taken
    // as its header (3 rows, not 5); without `max_files_per_trigger` one
    // batch would read all three files.
    assert_eq!(rows_in_per_batch(&stdout, "copied"), vec![4, 1], "{stdout}");
    let (names, got) = rows(&committed_batches(&streamed).await);
    assert_eq!(names, ["symbol", "bid", "size"]);
    assert_eq!(got, SEMICOLON_QUOTES);

    let batched = dir.path().join("batched");
    let file = csv_pipeline(dir.path(), "batched.sql", &input, &batched);
    let run = tidemill(&["batch", &file]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(text(&run.stdout), "copied: 5 rows\n");
    let (names, got) = rows(&committed_batches(&batched).await);
    assert_eq!(names, ["symbol", "bid", "size"]);
    assert_eq!(got, SEMICOLON_QUOTES);
}

/// `listing_margin` holds back files modified less than that long before
/// a listing started: a file written just now is read once it is old
/// enough, by the same trigger (so about two seconds later with `'2
/// seconds'`, where the default margin of 50 ms would read it at once).
/// A value that is not a duration is refused at its place.
#[test]
fn files_stream_listing_margin_holds_back_recent_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_input(&input, "a.json", "{\"id\": 1}\n");
    let sql = |margin: &str| {
        format!(
            "CREATE STREAM t (id BIGINT)
  WITH (connector = 'files', path = '{}', format = 'json', listing_margin = '{margin}');
CREATE SINK shown WITH (connector = 'console');
INSERT INTO shown SELECT id FROM t;
",
            input.display()
        )
    };
    let file = write_pipeline(dir.path(), "margin.sql", &sql("2 seconds"));
    let started = std::time::Instant::now();
    let run = tidemill(&["run", &file, "--trigger", "available-now"]);
    let elapsed = started.elapsed();
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}\n{stdout}", text(&run.stderr));
    assert_eq!(rows_in_per_batch(&stdout, "shown"), vec![1], "{stdout}");
    assert!(
        elapsed >= std::time::Duration::from_millis(1500),
        "the file was read after {elapsed:?}, before it was 2 seconds old"
    );

    let file = write_pipeline(dir.path(), "bad.sql", &sql("soon"));
    let out = tidemill(&["explain", &file]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.sql:2:")
            && stderr.contains("option 'listing_margin': ")
            && stderr.contains("invalid delay 'soon'"),
        "{stderr}"
    );
}

/// With a header (the default, here given explicitly) columns are matched
/// by name, whatever their order in the file; `delimiter = '|'` splits at
/// `|`. Read by position, the file's `size` text would land in `symbol`
/// and its symbols in `bid` (an error).
#[tokio::test]
async fn csv_header_true_matches_columns_by_name_with_a_pipe_delimiter() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("quotes");
    write_input(
        &input,
        "part-0.csv",
        "size|symbol|bid\n10|AAPL|1.5\n20|MS,FT|2.25\n",
    );
    for mode in ["run", "batch"] {
        let out = dir.path().join(format!("out-{mode}"));
        let file = write_pipeline(
            dir.path(),
            &format!("{mode}.sql"),
            &format!(
                "CREATE STREAM quotes (symbol VARCHAR, bid DOUBLE, size BIGINT)
WITH (connector = 'files', path = '{input}', format = 'csv', header = true, delimiter = '|');
CREATE SINK copied WITH (connector = 'files', path = '{out}');
INSERT INTO copied SELECT symbol, bid, size FROM quotes;
",
                input = input.display(),
                out = out.display(),
            ),
        );
        let run = if mode == "run" {
            tidemill(&["run", &file, "--trigger", "available-now"])
        } else {
            tidemill(&["batch", &file])
        };
        assert!(run.status.success(), "{mode}: {}", text(&run.stderr));
        let (names, got) = rows(&committed_batches(&out).await);
        assert_eq!(names, ["symbol", "bid", "size"], "{mode}");
        assert_eq!(got, ["AAPL|1.5|10", "MS,FT|2.25|20"], "{mode}");
    }
}

/// The number of rows of each data file of the sink at `out`, read from
/// the parquet files themselves, in the order of batch 0's manifest entry,
/// with the manifest's own counts.
async fn file_row_counts(out: &Path) -> (Vec<u64>, Vec<u64>) {
    let ctx = SessionContext::new();
    let entries = ParquetSink::committed_batches(&ctx, out.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let manifest: Vec<u64> = entries[0].files.iter().map(|f| f.num_rows).collect();
    let in_files = entries[0]
        .files
        .iter()
        .map(|f| {
            let file = std::fs::File::open(out.join(&f.name)).unwrap();
            let reader = SerializedFileReader::new(file).unwrap();
            reader.metadata().file_metadata().num_rows() as u64
        })
        .collect();
    // Every data file in the directory is listed (none written besides).
    let parquet_files = std::fs::read_dir(out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".parquet")
        })
        .count();
    assert_eq!(parquet_files, manifest.len());
    (manifest, in_files)
}

/// `max_rows_per_file = 3` splits a batch of ten rows into files of 3, 3, 3
/// and 1 rows, in a stream run and in a batch run; the rows are all there.
#[tokio::test]
async fn files_sink_max_rows_per_file_splits_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events");
    let lines: String = (0..10)
        .map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n"))
        .collect();
    write_input(&input, "part-0.json", &lines);
    for mode in ["run", "batch"] {
        let out = dir.path().join(format!("out-{mode}"));
        let file = write_pipeline(
            dir.path(),
            &format!("{mode}.sql"),
            &format!(
                "CREATE STREAM events (id BIGINT, name VARCHAR)
WITH (connector = 'files', path = '{input}', format = 'json');
CREATE SINK copied WITH (connector = 'files', path = '{out}', max_rows_per_file = 3);
INSERT INTO copied SELECT id, name FROM events;
",
                input = input.display(),
                out = out.display(),
            ),
        );
        let run = if mode == "run" {
            tidemill(&["run", &file, "--trigger", "available-now"])
        } else {
            tidemill(&["batch", &file])
        };
        assert!(run.status.success(), "{mode}: {}", text(&run.stderr));
        let (manifest, in_files) = file_row_counts(&out).await;
        assert_eq!(manifest, [3, 3, 3, 1], "{mode}");
        assert_eq!(in_files, manifest, "{mode}");
        let (_, got) = rows(&committed_batches(&out).await);
        let mut expected: Vec<String> = (0..10).map(|i| format!("{i}|n{i}")).collect();
        expected.sort();
        assert_eq!(got, expected, "{mode}");
    }
}

/// `value` and `timestamp` (in microseconds) of the rate rows committed to
/// the sink at `out`, sorted by value.
async fn rate_rows(out: &Path) -> Vec<(i64, i64)> {
    let batches = committed_batches(out).await;
    let mut rows = Vec::new();
    for batch in &batches {
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["timestamp", "value"]);
        let ts = batch.column_by_name("timestamp").unwrap();
        assert!(
            matches!(ts.data_type(), DataType::Timestamp(_, None)),
            "{:?}",
            ts.data_type()
        );
        let ts = cast(ts, &DataType::Timestamp(TimeUnit::Microsecond, None)).unwrap();
        let ts = cast(&ts, &DataType::Int64).unwrap();
        let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
        let values = batch
            .column_by_name("value")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for i in 0..batch.num_rows() {
            rows.push((values.value(i), ts.value(i)));
        }
    }
    rows.sort();
    rows
}

fn rate_pipeline(dir: &Path, out: &Path, options: &str) -> String {
    write_pipeline(
        dir,
        "ticks.sql",
        &format!(
            "CREATE STREAM ticks WITH (connector = 'rate', {options});
CREATE SINK ticks_out WITH (connector = 'files', path = '{out}');
INSERT INTO ticks_out SELECT * FROM ticks;
",
            out = out.display(),
        ),
    )
}

/// A rate stream run once writes rows `(timestamp, value)`: values
/// 0, 1, 2, … and timestamps `1 / rows_per_second` seconds apart (here
/// 1 µs), starting about when the query first ran.
#[tokio::test]
async fn a_rate_stream_runs_once_and_generates_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = rate_pipeline(dir.path(), &out, "rows_per_second = 1000000");
    let before = chrono::Utc::now().timestamp_micros();
    let run = tidemill(&["run", &file, "--trigger", "once"]);
    let after = chrono::Utc::now().timestamp_micros();
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}\n{stdout}", text(&run.stderr));
    let rows_in = rows_in_per_batch(&stdout, "ticks_out");
    assert_eq!(rows_in.len(), 1, "{stdout}");
    let rows = rate_rows(&out).await;
    assert!(!rows.is_empty());
    assert_eq!(rows.len() as u64, rows_in[0], "{stdout}");
    let start = rows[0].1;
    for (i, &(value, ts)) in rows.iter().enumerate() {
        assert_eq!(value, i as i64);
        // 1 000 000 rows per second: row i at start + i µs.
        assert_eq!(ts, start + value, "row {value}");
    }
    assert!(
        (before..=after).contains(&start),
        "start {start} not in [{before}, {after}]"
    );
}

/// `max_rows_per_trigger = 4` bounds every batch of an available-now run
/// to four rows; a restart continues the sequence (values are contiguous
/// over both runs).
#[tokio::test]
async fn a_rate_stream_max_rows_per_trigger_bounds_each_batch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = rate_pipeline(
        dir.path(),
        &out,
        "rows_per_second = 100, max_rows_per_trigger = 4",
    );
    // The first run records the start time (and may read the few rows
    // generated by then: `once` reads everything available).
    let run = tidemill(&["run", &file, "--trigger", "once"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    std::thread::sleep(std::time::Duration::from_millis(400));
    // At least 40 rows are available now: read four at a time.
    let run = tidemill(&["run", &file, "--trigger", "available-now"]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}\n{stdout}", text(&run.stderr));
    let rows_in = rows_in_per_batch(&stdout, "ticks_out");
    assert!(rows_in.len() >= 5, "{stdout}");
    assert!(rows_in.iter().all(|&n| n <= 4), "{stdout}");
    assert!(rows_in.iter().filter(|&&n| n == 4).count() >= 4, "{stdout}");
    let rows = rate_rows(&out).await;
    assert!(rows.len() as u64 >= rows_in.iter().sum::<u64>());
    let start = rows[0].1;
    for (i, &(value, ts)) in rows.iter().enumerate() {
        assert_eq!(value, i as i64);
        // 100 rows per second: 10 ms apart.
        assert_eq!(ts, start + value * 10_000, "row {value}");
    }
}

/// A rate stream has no batch form: `tidemill batch` says so and exits 1,
/// writing nothing.
#[test]
fn a_rate_stream_has_no_batch_form() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = rate_pipeline(dir.path(), &out, "rows_per_second = 10");
    let run = tidemill(&["batch", &file]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(
            "a rate stream generates rows as time passes and has no batch form; \
             run this pipeline with `tidemill run`"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.join("_tidemill_sink").exists());
}

/// The Kafka stream's `topic_pattern`, `ending_offsets`, `dead_letter_path`,
/// `commit_offsets_to_group` and `fail_on_data_loss`, and the Kafka sink's
/// `exactly_once = 'false'`, against a real broker (see `kafka_broker`).
/// Topics `<base>-a` and `<base>-b` match the pattern, `<base>-c` does not;
/// `ending_offsets` stops `-b` after its first record; the one malformed
/// value of `-a` goes to the dead letter sink.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_stream_and_sink_options() {
    use tidemill::connectors::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use tidemill::connectors::kafka::rdkafka::message::{Headers, Message};
    use tidemill::connectors::kafka::rdkafka::{ClientConfig, TopicPartitionList};

    use tidemill_harness::kafka_broker::{
        Broker, Out, consume_all, create_topic, produce, unique_topic,
    };

    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let base = unique_topic("sqlopt");
    let (a, b, c) = (
        format!("{base}-a"),
        format!("{base}-b"),
        format!("{base}-c"),
    );
    for topic in [&a, &b, &c] {
        create_topic(&bootstrap, topic, 1, &[]).await;
    }
    let event = |id: u32| Out::to(0, format!("{{\"id\": {id}, \"name\": \"n{id}\"}}"));
    produce(
        &bootstrap,
        &a,
        &[event(1), Out::to(0, "not json"), event(2)],
    );
    produce(&bootstrap, &b, &[event(3), event(4)]);
    produce(&bootstrap, &c, &[event(5)]);
    let group = unique_topic("sqlopt-group");
    let dir = tempfile::tempdir().unwrap();

    let pipeline = |name: &str, output: &str| {
        write_pipeline(
            dir.path(),
            &format!("{name}.sql"),
            &format!(
                "CREATE STREAM events (id BIGINT, name VARCHAR)
WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}', topic_pattern = '{base}-[ab]',
      starting_offsets = 'earliest', ending_offsets = '{{\"{b}\": {{\"0\": 1}}}}',
      format = 'json', dead_letter_path = '{dead}', fail_on_data_loss = false,
      commit_offsets_to_group = '{group}');

CREATE SINK copied WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}',
                         topic = '{output}', format = 'json', exactly_once = 'false');

INSERT INTO copied SELECT id, name, topic FROM events;
",
                dead = dir.path().join(format!("dead-{name}")).display(),
            ),
        )
    };
    // `(id, topic)` of the output messages, and whether any carries an
    // exactly-once header.
    let output = |topic: &str| {
        let mut rows = Vec::new();
        let mut tagged = false;
        for message in consume_all(&bootstrap, topic) {
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap()).unwrap();
            rows.push((
                value["id"].as_i64().unwrap(),
                value["topic"].as_str().unwrap().to_string(),
            ));
            if let Some(headers) = message.headers() {
                tagged |= headers.iter().any(|h| h.key.starts_with("tidemill."));
            }
        }
        rows.sort();
        (rows, tagged)
    };
    let expected = vec![(1, a.clone()), (2, a.clone()), (3, b.clone())];

    let streamed = unique_topic("sqlopt-out");
    create_topic(&bootstrap, &streamed, 1, &[]).await;
    let file = pipeline("streamed", &streamed);
    let checkpoint = dir.path().join("chk");
    let run = tidemill(&[
        "run",
        &file,
        "--trigger",
        "available-now",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}\n{stdout}", text(&run.stderr));
    // topic_pattern: -a and -b, not -c; ending_offsets: -b up to offset 1.
    let (rows, tagged) = output(&streamed);
    assert_eq!(rows, expected, "{stdout}");
    // exactly_once = 'false': no log in the checkpoint, no tags.
    assert!(!tagged);
    assert!(checkpoint.join("copied").join("commits").exists());
    assert!(!checkpoint.join("copied").join("sink").exists());
    // dead_letter_path: the malformed value, with its error.
    let dead = committed_batches(&dir.path().join("dead-streamed")).await;
    assert_eq!(dead.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let error = dead[0].column_by_name("error").expect("an error column");
    assert!(!error.is_null(0));
    // commit_offsets_to_group: the group holds the query's end offsets.
    let (b2, a2, bb2, g2) = (bootstrap.clone(), a.clone(), b.clone(), group.clone());
    let committed = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b2)
            .set("group.id", &g2)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&a2, 0);
        tpl.add_partition(&bb2, 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let found = consumer
                .committed_offsets(tpl.clone(), std::time::Duration::from_secs(5))
                .unwrap();
            let offsets: Vec<i64> = found
                .elements()
                .iter()
                .map(|e| e.offset().to_raw().unwrap_or(-1))
                .collect();
            if offsets == vec![3, 1] || std::time::Instant::now() > deadline {
                return offsets;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert_eq!(committed, vec![3, 1]);

    // The same options in a batch run: the same records.
    let batched = unique_topic("sqlopt-out-batch");
    create_topic(&bootstrap, &batched, 1, &[]).await;
    let run = tidemill(&["batch", &pipeline("batched", &batched)]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(text(&run.stdout), "copied: 3 rows\n");
    assert_eq!(output(&batched).0, expected);
    let dead = committed_batches(&dir.path().join("dead-batched")).await;
    assert_eq!(dead.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

/// `fail_on_data_loss`: records a query still needed deleted by retention
/// (Tansu applies `retention.ms` when it starts) fail the query by
/// default; with `fail_on_data_loss = false` it goes on with what is left.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_fail_on_data_loss_false_goes_on_after_deleted_records() {
    use tidemill_harness::kafka_broker::{
        Broker, Out, create_topic, earliest_offsets, end_offsets, produce, unique_topic,
    };

    let mut broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("sqlopt-loss");
    create_topic(
        &bootstrap,
        &topic,
        1,
        &[("cleanup.policy", "delete"), ("retention.ms", "1000")],
    )
    .await;
    let events = |ids: std::ops::Range<u32>| -> Vec<Out> {
        ids.map(|id| Out::to(0, format!("{{\"id\": {id}}}")))
            .collect()
    };
    produce(&bootstrap, &topic, &events(0..10));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let checkpoint = dir.path().join("chk");
    let run = |name: &str, options: &str| {
        let file = write_pipeline(
            dir.path(),
            &format!("{name}.sql"),
            &format!(
                "CREATE STREAM events (id BIGINT)
WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}', topic = '{topic}',
      starting_offsets = 'earliest', format = 'json'{options});
CREATE SINK copied WITH (connector = 'files', path = '{out}');
INSERT INTO copied SELECT id FROM events;
",
                out = out.display(),
            ),
        );
        tidemill(&[
            "run",
            &file,
            "--trigger",
            "available-now",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ])
    };
    // Offsets 0..4 (a stream stops at explicit ending offsets).
    let first = run(
        "first",
        &format!(", ending_offsets = '{{\"{topic}\": {{\"0\": 4}}}}'"),
    );
    assert!(first.status.success(), "{}", text(&first.stderr));

    // Retention deletes offsets 0..10; new records arrive at 10..15.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    broker.restart();
    produce(&bootstrap, &topic, &events(10..15));
    assert_eq!(end_offsets(&bootstrap, &topic), vec![15]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while earliest_offsets(&bootstrap, &topic) != vec![10] {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not delete offsets 0..10"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let failed = run("strict", ", fail_on_data_loss = true");
    let stderr = text(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "topic {topic} partition 0: offsets 4..10 are no longer available"
        )),
        "{stderr}"
    );

    let lenient = run("lenient", ", fail_on_data_loss = false");
    assert!(lenient.status.success(), "{}", text(&lenient.stderr));
    let (_, got) = rows(&committed_batches(&out).await);
    let mut expected: Vec<String> = [0, 1, 2, 3, 10, 11, 12, 13, 14]
        .iter()
        .map(|i| i.to_string())
        .collect();
    expected.sort();
    assert_eq!(got, expected);
}
