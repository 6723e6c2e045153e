//! `tidemill status CHECKPOINT`, driven as a user would: on a checkpoint a
//! run holds, on a stopped one, on one with a batch in flight (what a crash
//! between the offset log and the commit log leaves), on a join's, and on
//! damaged ones; its figures are checked against what the runs reported,
//! and every inspection is checked to have changed no file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tidemill::Offset;
use tidemill::status::{LockState, QueryReport, StatusReport};

use crate::cli::{text, tidemill};

/// Writes trades file `n` (renamed into place whole): 10 trades five
/// seconds apart in minute `n`, alternating AAPL and MSFT.
fn write_trades(dir: &Path, n: usize) {
    let input = dir.join("trades");
    std::fs::create_dir_all(&input).unwrap();
    let mut lines = String::new();
    for i in 0..10 {
        let symbol = ["AAPL", "MSFT"][i % 2];
        lines.push_str(&format!(
            "{{\"symbol\": \"{symbol}\", \"price\": {}, \"quantity\": {}, \"event_time\": \"2024-01-01T10:{n:02}:{:02}\"}}\n",
            100 + i,
            1 + i,
            i * 5
        ));
    }
    let tmp = input.join(format!(".{n}.tmp"));
    std::fs::write(&tmp, lines).unwrap();
    std::fs::rename(tmp, input.join(format!("part-{n:03}.json"))).unwrap();
}

/// A pipeline counting `<dir>/trades` per minute and symbol (a windowed
/// aggregation with a 10-second watermark), one file per batch, into the
/// sink `per_minute`.
fn pipeline(dir: &Path) -> PathBuf {
    let file = dir.join("per_minute.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (
  symbol VARCHAR, price DOUBLE, quantity DOUBLE, event_time TIMESTAMP,
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (connector = 'files', path = '{input}', format = 'json', max_files_per_trigger = 1);

CREATE SINK per_minute WITH (connector = 'files', path = '{output}', output_mode = 'append');

INSERT INTO per_minute
SELECT window.start AS minute, symbol, count(*) AS trades, sum(quantity) AS volume
FROM trades
GROUP BY window(event_time, '1 minute'), symbol;
",
            input = dir.join("trades").display(),
            output = dir.join("out").display(),
        ),
    )
    .unwrap();
    file
}

/// The checkpoint root `tidemill run FILE` uses by default.
fn root(file: &Path) -> PathBuf {
    file.with_extension("checkpoint")
}

/// Runs `tidemill run FILE --trigger available-now`, appending progress to
/// `<dir>/progress.jsonl`; returns the progress objects so far.
fn run_available_now(dir: &Path, file: &Path) -> Vec<serde_json::Value> {
    let progress = dir.join("progress.jsonl");
    let run = tidemill(&[
        "run",
        file.to_str().unwrap(),
        "--trigger",
        "available-now",
        "--progress-json",
        progress.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    progress_of(&progress)
}

/// The progress objects in a `--progress-json` file.
fn progress_of(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `tidemill status ARGS --json`, which must succeed, parsed.
fn status_json(args: &[&str]) -> StatusReport {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tidemill(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// `tidemill status ARGS` as text.
fn status_text(args: &[&str]) -> Output {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    tidemill(&all)
}

/// The one query of a report.
fn only(report: &StatusReport) -> &QueryReport {
    assert_eq!(report.queries.len(), 1, "{report:#?}");
    &report.queries[0]
}

/// Every file and directory under `dir` with its size and modification
/// time: equal before and after an inspection if it changed nothing.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut all = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            }
            all.insert(entry.path(), (meta.len(), meta.modified().unwrap()));
        }
    }
    all
}

/// Copies the directory `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A child process, killed when dropped (also when a test fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_live_checkpoint_is_read_while_the_run_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path());
    let progress = dir.path().join("progress.jsonl");
    let child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--trigger",
            "100ms",
            "--progress-json",
            progress.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let pid = child.0.id();
    let root = root(&file);
    let root_arg = root.to_str().unwrap();

    // Inspected over and over while the run works through the three files
    // (one per batch), until it has committed them all and reported its
    // last batch.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (report, last) = loop {
        assert!(Instant::now() < deadline, "the run did not commit 3 files");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the run stopped early"
        );
        let reported = progress_of(&progress);
        if root.join("per_minute/metadata").exists() {
            let report = status_json(&[root_arg]);
            let q = only(&report);
            let done = q.last_committed.as_ref().is_some_and(|b| {
                reported
                    .last()
                    .is_some_and(|p| p["batch_id"].as_u64() == Some(b.batch_id))
            }) && q.in_flight.is_none()
                && q.sources[0].committed == Some(Offset::from_u64(3));
            if done {
                break (report, reported.last().unwrap().clone());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let q = only(&report);
    assert_eq!(q.name, "per_minute");
    // The holder is found in /proc/locks, on Linux.
    if cfg!(target_os = "linux") {
        assert_eq!(q.lock, LockState::Held { pid: Some(pid) });
    }
    let batch = q.last_committed.as_ref().unwrap();
    assert_eq!(Some(batch.batch_id), last["batch_id"].as_u64());
    assert_eq!(q.query_id, last["id"].as_str().unwrap());
    // Minute 2 ends at 10:02:45: the watermark for the next batch is
    // 10 seconds earlier.
    assert_eq!(batch.watermark.as_deref(), Some("2024-01-01T10:02:35.000Z"));
    assert_eq!(
        serde_json::to_value(&q.sources[0].committed).unwrap(),
        last["sources"][0]["end_offset"]
    );
    let store = &q.operators[0].stores[0];
    assert_eq!(
        Some(store.rows),
        last["state_operators"][0]["num_rows_total"].as_u64()
    );
    assert_eq!(store.version, batch.batch_id + 1);

    let out = status_text(&[root_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        !cfg!(target_os = "linux")
            || shown.contains(&format!("running         yes (process {pid} holds")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("last committed  batch {} at", batch.batch_id)),
        "{shown}"
    );

    // Stopped: the lock is free again.
    drop(child);
    let q = status_json(&[root_arg]).queries.remove(0);
    if cfg!(target_os = "linux") {
        assert_eq!(q.lock, LockState::Free);
    }
}

#[test]
fn a_stopped_checkpoint_reports_its_last_batch_offsets_lag_and_state() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..4 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path());
    let progress = run_available_now(dir.path(), &file);
    let last = progress.last().unwrap();
    let root = root(&file);
    let query_dir = root.join("per_minute");
    // Two files the run has not read.
    write_trades(dir.path(), 4);
    write_trades(dir.path(), 5);
    let before = listing(dir.path());

    let report = status_json(&[root.to_str().unwrap()]);
    let q = only(&report);
    assert_eq!(q.name, "per_minute");
    assert_eq!(
        q.path,
        std::fs::canonicalize(&query_dir)
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(q.lock, LockState::Free);
    assert!(q.in_flight.is_none(), "{q:#?}");
    assert_eq!(q.output_mode, Some(tidemill::OutputMode::Append));
    let batch = q.last_committed.as_ref().unwrap();
    assert_eq!(Some(batch.batch_id), last["batch_id"].as_u64());
    assert_eq!(batch.watermark.as_deref(), Some("2024-01-01T10:03:35.000Z"));
    assert_eq!(batch.watermark_ms, Some(1_704_103_415_000));
    assert_eq!(q.sources.len(), 1);
    let source = &q.sources[0];
    assert!(
        source.description.starts_with("FileSource[json: file://"),
        "{source:?}"
    );
    assert_eq!(source.committed, Some(Offset::from_u64(4)));
    assert!(source.lag.is_none());
    assert_eq!(q.operators.len(), 1);
    let operator = &q.operators[0];
    assert_eq!(operator.number, 0);
    assert!(
        operator
            .description
            .as_deref()
            .unwrap()
            .starts_with("StreamingAggregate"),
        "{operator:?}"
    );
    assert_eq!(operator.stores.len(), 1);
    let store = &operator.stores[0];
    assert_eq!(store.side, None);
    assert_eq!(store.version, batch.batch_id + 1);
    assert_eq!(
        Some(store.rows),
        last["state_operators"][0]["num_rows_total"].as_u64()
    );
    // Minute 3 is open: one group per symbol.
    assert_eq!(store.rows, 2);
    assert!(store.key_columns.iter().any(|c| c == "symbol"), "{store:?}");
    assert!(store.files > 1 && store.bytes > 0 && store.version_bytes > 0);
    assert!(store.partitions_with_rows >= 1 && store.partitions_with_rows <= store.partitions);

    // The query's own directory gives the same report.
    let direct = status_json(&[query_dir.to_str().unwrap()]);
    assert_eq!(only(&direct), q);

    // The text form.
    let out = status_text(&[root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for expected in [
        format!("per_minute  {}", q.path),
        format!("last committed  batch {} at", batch.batch_id),
        "watermark       2024-01-01T10:03:35.000Z".to_string(),
        "in flight       none".to_string(),
        "running         no".to_string(),
        "committed offset 4".to_string(),
        "operator 0      StreamingAggregate".to_string(),
        format!(
            "2 rows in {} of {} partitions (version {}",
            store.partitions_with_rows, store.partitions, store.version
        ),
    ] {
        assert!(shown.contains(&expected), "{expected}\nnot in:\n{shown}");
    }

    // Given the pipeline: the two files not read yet.
    let with_lag = status_json(&[root.to_str().unwrap(), "--pipeline", file.to_str().unwrap()]);
    let lag = only(&with_lag).sources[0].lag.clone().unwrap();
    assert_eq!(lag.latest, Some(Offset::from_u64(6)));
    assert_eq!(lag.behind, Some(2));
    assert_eq!(lag.unit, "files");
    assert_eq!(lag.note, None);
    let out = status_text(&[root.to_str().unwrap(), "--pipeline", file.to_str().unwrap()]);
    let shown = text(&out.stdout);
    assert!(shown.contains("latest offset 6: 2 files behind"), "{shown}");

    // Nothing was written, created or touched.
    assert_eq!(listing(dir.path()), before);

    // The run reads them next.
    let progress = run_available_now(dir.path(), &file);
    let with_lag = status_json(&[root.to_str().unwrap(), "--pipeline", file.to_str().unwrap()]);
    let q = only(&with_lag);
    assert_eq!(
        q.last_committed.as_ref().map(|b| b.batch_id),
        progress.last().unwrap()["batch_id"].as_u64()
    );
    assert_eq!(q.sources[0].committed, Some(Offset::from_u64(6)));
    assert_eq!(q.sources[0].lag.as_ref().unwrap().behind, Some(0));
}

#[test]
fn a_batch_in_flight_is_named_with_its_planned_ranges() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path());
    let progress = run_available_now(dir.path(), &file);
    let last = progress.last().unwrap()["batch_id"].as_u64().unwrap();
    let root = root(&file);
    // What a crash between the offset log and the commit log leaves: the
    // last batch planned, not committed.
    std::fs::remove_file(root.join(format!("per_minute/commits/{last}"))).unwrap();
    let before = listing(dir.path());

    let report = status_json(&[root.to_str().unwrap()]);
    let q = only(&report);
    assert_eq!(q.lock, LockState::Free);
    assert_eq!(q.last_committed.as_ref().unwrap().batch_id, last - 1);
    let in_flight = q.in_flight.as_ref().expect("a batch in flight");
    assert_eq!(in_flight.batch_id, last);
    assert_eq!(in_flight.ranges.len(), 1);
    assert_eq!(in_flight.ranges[0].end, Some(Offset::from_u64(3)));
    assert_eq!(in_flight.ranges[0].start, q.sources[0].committed);
    // The state described is the one the last committed batch wrote.
    assert_eq!(q.operators[0].stores[0].version, last);

    let out = status_text(&[root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!("in flight       batch {last}, planned at")),
        "{shown}"
    );
    assert!(
        shown.contains("not committed; re-run with these ranges on restart"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "source 0: after {} up to 3",
            q.sources[0].committed.as_ref().unwrap()
        )),
        "{shown}"
    );
    assert_eq!(listing(dir.path()), before);

    // A restart re-runs it; then nothing is in flight.
    run_available_now(dir.path(), &file);
    let report = status_json(&[root.to_str().unwrap()]);
    let q = only(&report);
    assert!(q.in_flight.is_none(), "{q:#?}");
    assert!(q.last_committed.as_ref().unwrap().batch_id >= last);
}

#[test]
fn a_join_reports_the_state_of_each_side() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..2 {
        write_trades(dir.path(), n);
    }
    let file = dir.path().join("pairs.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (
  symbol VARCHAR, price DOUBLE, quantity DOUBLE, event_time TIMESTAMP,
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (connector = 'files', path = '{input}', format = 'json');

CREATE SINK pairs WITH (connector = 'files', path = '{output}', output_mode = 'append');

INSERT INTO pairs
SELECT a.event_time, a.symbol, b.event_time AS next_time
FROM trades a JOIN trades b
  ON a.symbol = b.symbol AND b.event_time > a.event_time
 AND b.event_time <= a.event_time + INTERVAL '30' SECOND;
",
            input = dir.path().join("trades").display(),
            output = dir.path().join("pairs").display(),
        ),
    )
    .unwrap();
    let progress = run_available_now(dir.path(), &file);
    let last = progress.last().unwrap();
    let before = listing(dir.path());
    let report = status_json(&[root(&file).to_str().unwrap()]);
    let q = only(&report);
    assert_eq!(q.name, "pairs");
    let operator = &q.operators[0];
    assert!(
        operator
            .description
            .as_deref()
            .unwrap()
            .starts_with("StreamJoin Inner"),
        "{operator:?}"
    );
    let sides: Vec<Option<&str>> = operator.stores.iter().map(|s| s.side.as_deref()).collect();
    assert_eq!(sides, [Some("left"), Some("right")]);
    for store in &operator.stores {
        assert!(
            store
                .path
                .ends_with(&format!("pairs/state/0/{}", store.side.as_deref().unwrap()))
        );
        assert!(store.files > 0 && store.bytes > 0, "{store:?}");
        assert_eq!(
            store.version,
            q.last_committed.as_ref().unwrap().batch_id + 1
        );
    }
    let rows: u64 = operator.stores.iter().map(|s| s.rows).sum();
    assert_eq!(
        Some(rows),
        last["state_operators"][0]["num_rows_total"].as_u64()
    );
    assert!(rows > 0);
    let out = status_text(&[root(&file).to_str().unwrap()]);
    let shown = text(&out.stdout);
    assert!(shown.contains("left: "), "{shown}");
    assert!(shown.contains("right: "), "{shown}");
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn a_damaged_checkpoint_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path());
    let progress = run_available_now(dir.path(), &file);
    let last = progress.last().unwrap()["batch_id"].as_u64().unwrap();
    assert!(last >= 2);
    let pristine = root(&file);

    type Damage = fn(&Path);
    let truncate: Damage = |path| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    };
    let flip: Damage = |path| {
        // A digit of the body (the query id, an offset, a batch id)
        // changed: the checksum no longer matches.
        let mut bytes = std::fs::read(path).unwrap();
        let body = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        let at = body + bytes[body..].iter().position(u8::is_ascii_digit).unwrap();
        bytes[at] = if bytes[at] == b'9' {
            b'1'
        } else {
            bytes[at] + 1
        };
        std::fs::write(path, bytes).unwrap();
    };
    let swapped: Damage = |path| {
        // Another kind of checkpoint file in its place.
        let metadata = path.parent().unwrap().parent().unwrap().join("metadata");
        std::fs::copy(metadata, path).unwrap();
    };
    let cases: Vec<(String, Damage, &str)> = vec![
        ("metadata".into(), flip, "checksum mismatch"),
        ("offsets/1".into(), truncate, "truncated"),
        (format!("offsets/{last}"), flip, "checksum mismatch"),
        (
            format!("commits/{last}"),
            swapped,
            "expected a 'commits' file, found a 'metadata' file",
        ),
        (
            format!("state/0/{}.commit", last + 1),
            truncate,
            "truncated",
        ),
        ("state/0/_metadata".into(), flip, "checksum mismatch"),
    ];
    for (i, (name, damage, reason)) in cases.into_iter().enumerate() {
        let copy = dir.path().join(format!("case{i}"));
        copy_dir(&pristine, &copy);
        let damaged = std::fs::canonicalize(&copy)
            .unwrap()
            .join("per_minute")
            .join(&name);
        damage(&damaged);
        let before = listing(&copy);
        for json in [false, true] {
            let mut args = vec!["status", copy.to_str().unwrap()];
            if json {
                args.push("--json");
            }
            let out = tidemill(&args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
            assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
            assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
            assert!(stderr.starts_with("error: "), "{name}: {stderr}");
            assert!(
                stderr.contains(&format!("checkpoint file {}: ", damaged.display())),
                "{name}: {stderr}"
            );
            assert!(stderr.contains(reason), "{name}: {reason} not in {stderr}");
        }
        assert_eq!(listing(&copy), before, "{name}");
    }

    // With the pipeline, a source's private log is read too: a damaged
    // files-seen log is an error as well.
    let copy = dir.path().join("seen");
    copy_dir(&pristine, &copy);
    let damaged = std::fs::canonicalize(&copy)
        .unwrap()
        .join("per_minute/sources/0/seen/0");
    truncate(&damaged);
    let before = listing(&copy);
    let ok = tidemill(&["status", copy.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let out = tidemill(&[
        "status",
        copy.to_str().unwrap(),
        "--pipeline",
        file.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "corrupt checkpoint file {}: truncated",
            damaged.display()
        )),
        "{stderr}"
    );
    assert_eq!(listing(&copy), before);

    // Not a checkpoint at all.
    let out = tidemill(&["status", dir.path().join("trades").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a Tidemill checkpoint"),
        "{}",
        text(&out.stderr)
    );
}

/// Kafka offsets are compared per partition.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn a_kafka_source_lags_per_partition() {
    use tidemill_harness::kafka_broker::{Broker, Out, create_topic, produce, unique_topic};

    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let input = unique_topic("status-trades");
    create_topic(&bootstrap, &input, 2, &[]).await;
    let trades = |count: usize| -> Vec<Out> {
        (0..count)
            .map(|i| {
                Out::to(
                    (i % 2) as i32,
                    format!(
                        "{{\"symbol\": \"{}\", \"event_time\": \"2024-01-01T10:00:{:02}\"}}",
                        ["AAPL", "MSFT"][i % 2],
                        i
                    ),
                )
            })
            .collect()
    };
    produce(&bootstrap, &input, &trades(6));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("counts.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (symbol VARCHAR, event_time TIMESTAMP)
WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}', topic = '{input}',
      starting_offsets = 'earliest', format = 'json', metadata_columns = 'false');

CREATE SINK counts WITH (connector = 'console', output_mode = 'update');

INSERT INTO counts SELECT symbol, count(*) AS trades FROM trades GROUP BY symbol;
",
        ),
    )
    .unwrap();
    run_available_now(dir.path(), &file);
    // 3 more records on partition 0, 1 on partition 1.
    produce(
        &bootstrap,
        &input,
        &[
            Out::to(
                0,
                "{\"symbol\": \"AAPL\", \"event_time\": \"2024-01-01T10:01:00\"}",
            ),
            Out::to(
                0,
                "{\"symbol\": \"AAPL\", \"event_time\": \"2024-01-01T10:01:01\"}",
            ),
            Out::to(
                0,
                "{\"symbol\": \"AAPL\", \"event_time\": \"2024-01-01T10:01:02\"}",
            ),
            Out::to(
                1,
                "{\"symbol\": \"MSFT\", \"event_time\": \"2024-01-01T10:01:03\"}",
            ),
        ],
    );
    let before = listing(dir.path());
    let root = root(&file);
    let report = status_json(&[root.to_str().unwrap(), "--pipeline", file.to_str().unwrap()]);
    let q = only(&report);
    let source = &q.sources[0];
    assert_eq!(
        source.committed,
        Some(Offset(
            serde_json::json!({ input.as_str(): {"0": 3, "1": 3} })
        ))
    );
    let lag = source.lag.as_ref().unwrap();
    assert_eq!(lag.unit, "records");
    assert_eq!(lag.behind, Some(4), "{lag:?}");
    let by_partition: Vec<(String, Option<u64>, u64, Option<u64>)> = lag
        .partitions
        .iter()
        .map(|p| (p.partition.clone(), p.committed, p.latest, p.behind))
        .collect();
    assert_eq!(
        by_partition,
        [
            (format!("{input}/0"), Some(3), 6, Some(3)),
            (format!("{input}/1"), Some(3), 4, Some(1)),
        ]
    );
    let out = status_text(&[root.to_str().unwrap(), "--pipeline", file.to_str().unwrap()]);
    let shown = text(&out.stdout);
    assert!(shown.contains(": 4 records behind"), "{shown}");
    assert!(
        shown.contains(&format!(
            "{input}/0: committed 3, latest 6, 3 records behind"
        )),
        "{shown}"
    );
    assert_eq!(listing(dir.path()), before);
}
