//! The `tidemill` command, driven as a user would: SQL pipeline files run as
//! streams, as batch jobs, explained; restarts; errors and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use datafusion::prelude::*;
use tidemill::ParquetSink;

use crate::common::sorted_rows;

/// Runs the `tidemill` binary with `args` and waits for it.
pub(crate) fn tidemill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(args)
        .output()
        .expect("run tidemill")
}

/// Output bytes as text.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A pipeline over `<dir>/trades` (JSON lines) writing per-minute metrics
/// to `<dir>/<out>`, as in the README (Spark's `window.start` /
/// `window.end` for the grouping window).
fn pipeline(dir: &Path, out: &str, mode: &str) -> PathBuf {
    let file = dir.join(format!("{out}.sql"));
    std::fs::write(
        &file,
        format!(
            "-- per-minute metrics
CREATE STREAM trades (
  symbol VARCHAR, exchange VARCHAR, price DOUBLE, quantity DOUBLE,
  event_time TIMESTAMP,
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (connector = 'files', path = '{input}', format = 'json', max_files_per_trigger = 1);

CREATE SINK per_minute WITH (connector = 'files', path = '{output}',
                             format = 'parquet', output_mode = '{mode}');

INSERT INTO per_minute
SELECT window.start AS window_start, window.end AS window_end, symbol,
       count(*) AS trades, sum(quantity) AS volume,
       sum(price * quantity) / sum(quantity) AS vwap
FROM trades
GROUP BY window(event_time, '1 minute'), symbol;
",
            input = dir.join("trades").display(),
            output = dir.join(out).display(),
        ),
    )
    .unwrap();
    file
}

/// Writes trades file `n`: 10 trades a few seconds apart, minute `n`.
fn write_trades(dir: &Path, n: usize) {
    let input = dir.join("trades");
    std::fs::create_dir_all(&input).unwrap();
    let mut lines = String::new();
    for i in 0..10 {
        let symbol = ["AAPL", "MSFT"][i % 2];
        lines.push_str(&format!(
            "{{\"symbol\": \"{symbol}\", \"exchange\": \"XNAS\", \"price\": {}, \"quantity\": {}, \"event_time\": \"2024-01-01T10:{:02}:{:02}\"}}\n",
            100 + i,
            1 + i,
            n,
            i * 5
        ));
    }
    let tmp = input.join(format!(".{n}.tmp"));
    std::fs::write(&tmp, lines).unwrap();
    std::fs::rename(tmp, input.join(format!("part-{n:03}.json"))).unwrap();
}

async fn committed(dir: &Path, out: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    let df = ParquetSink::read_committed(&ctx, dir.join(out).to_str().unwrap())
        .await
        .unwrap();
    sorted_rows(&df.collect().await.unwrap())
}

#[tokio::test]
async fn the_same_pipeline_streamed_and_batched_gives_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..4 {
        write_trades(dir.path(), n);
    }
    let streaming = pipeline(dir.path(), "streamed", "append");
    let progress = dir.path().join("progress.jsonl");
    let run = tidemill(&[
        "run",
        streaming.to_str().unwrap(),
        "--trigger",
        "available-now",
        "--progress-json",
        progress.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.contains("per_minute: batch 0 | 10 rows in"),
        "{stdout}"
    );
    assert!(
        stdout.contains("watermark 2024-01-01T10:03:35.000Z"),
        "{stdout}"
    );
    let lines = std::fs::read_to_string(&progress).unwrap();
    let batches: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every committed batch has its progress line and JSON object, the
    // last ones too (printed after the query stopped).
    let commits = logged(
        &dir.path().join("streamed.checkpoint/per_minute"),
        "commits",
    );
    assert!(commits.len() >= 4, "{commits:?}");
    let reported: Vec<u64> = batches
        .iter()
        .map(|b| b["batch_id"].as_u64().unwrap())
        .collect();
    assert_eq!(reported, commits, "{lines}");
    for id in &commits {
        assert!(
            stdout.contains(&format!("per_minute: batch {id} |")),
            "batch {id}: {stdout}"
        );
    }
    assert_eq!(batches[0]["num_input_rows"], 10);

    let batch = pipeline(dir.path(), "batched", "append");
    let run = tidemill(&["batch", batch.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(text(&run.stdout), "per_minute: 8 rows\n");
    // The stream has emitted the minutes its watermark (10:03:35) closed:
    // all but the last; the batch job has them all.
    let streamed = committed(dir.path(), "streamed").await;
    let batched = committed(dir.path(), "batched").await;
    assert_eq!(streamed.len(), 6);
    let closed: Vec<String> = batched
        .iter()
        .filter(|r| !r.starts_with("| 2024-01-01T10:03:00"))
        .cloned()
        .collect();
    assert_eq!(streamed, closed);

    // A second batch run refuses to mix its result with the first.
    let again = tidemill(&["batch", batch.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already holds committed output"));
}

/// `--read-ahead` gives the rows of a run without it.
#[tokio::test]
async fn a_run_reading_ahead_gives_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..4 {
        write_trades(dir.path(), n);
    }
    for (out, extra) in [("plain", None), ("ahead", Some("--read-ahead"))] {
        let file = pipeline(dir.path(), out, "append");
        let mut args = vec!["run", file.to_str().unwrap(), "--trigger", "available-now"];
        args.extend(extra);
        let run = tidemill(&args);
        assert!(run.status.success(), "{}", text(&run.stderr));
    }
    let ahead = committed(dir.path(), "ahead").await;
    assert_eq!(ahead.len(), 6);
    assert_eq!(ahead, committed(dir.path(), "plain").await);
}

#[tokio::test]
async fn a_killed_run_resumes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path(), "out", "append");
    // Back-to-back triggers: killed once the first batch is reported.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(["run", file.to_str().unwrap(), "--trigger", "0s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(first.contains("batch 0"), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    for n in 3..5 {
        write_trades(dir.path(), n);
    }
    let run = tidemill(&["run", file.to_str().unwrap(), "--trigger", "available-now"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let batch = pipeline(dir.path(), "reference", "append");
    assert!(
        tidemill(&["batch", batch.to_str().unwrap()])
            .status
            .success()
    );
    let expected: Vec<String> = committed(dir.path(), "reference")
        .await
        .into_iter()
        .filter(|r| !r.starts_with("| 2024-01-01T10:04:00"))
        .collect();
    assert_eq!(committed(dir.path(), "out").await, expected);
}

#[test]
fn explain_shows_the_incremental_plan_and_why_a_query_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), "out", "append");
    let run = tidemill(&["explain", file.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    for expected in [
        "== INSERT INTO per_minute",
        "output mode: append",
        "watermark: on event_time with delay 10000 ms",
        "StreamingAggregate",
    ] {
        assert!(stdout.contains(expected), "{expected}:\n{stdout}");
    }
    let rejected = dir.path().join("rejected.sql");
    std::fs::write(
        &rejected,
        "CREATE STREAM t (symbol VARCHAR) WITH (connector = 'files', path = 'in', format = 'json');
CREATE SINK s WITH (connector = 'files', path = 'out', output_mode = 'append');
INSERT INTO s SELECT symbol, count(*) FROM t GROUP BY symbol;",
    )
    .unwrap();
    let run = tidemill(&["explain", rejected.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run.stdout).contains("rejected: unsupported streaming query"));
    assert!(text(&run.stdout).contains("use update or complete"));
    assert!(text(&run.stderr).contains("cannot run as a stream: INSERT INTO s"));
}

#[test]
fn errors_say_where_and_exit_non_zero_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, sql: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, sql).unwrap();
        path
    };
    let cases = [
        (
            write(
                "syntax.sql",
                "CREATE SINK s WITH (connector = 'console');\nINSERT INTO s SELEC 1;",
            ),
            "syntax.sql:2:15: SQL syntax error: ",
        ),
        (
            write(
                "option.sql",
                "CREATE STREAM t (a INT)\n  WITH (connector = 'files', pth = 'x', format = 'json');",
            ),
            "2:30: unknown option 'pth' for a files stream (stream t); valid options: connector, path, format",
        ),
        (
            write(
                "connector.sql",
                "CREATE SINK s WITH (connector = 'kafkaa');",
            ),
            "unknown connector 'kafkaa' for sink s; valid connectors:",
        ),
        (
            write(
                "sink.sql",
                "CREATE STREAM t (a INT) WITH (connector = 'files', path = 'x', format = 'json');\nINSERT INTO nowhere SELECT a FROM t;",
            ),
            "2:1: INSERT INTO nowhere: no such sink",
        ),
        (
            write(
                "watermark.sql",
                "CREATE STREAM t (ts TIMESTAMP, WATERMARK FOR ts AS ts + INTERVAL '1' SECOND)\n  WITH (connector = 'files', path = 'x', format = 'json');",
            ),
            "must be 'ts' or 'ts - INTERVAL …'",
        ),
        (
            write(
                "window.sql",
                "CREATE STREAM t (a INT, ts TIMESTAMP) WITH (connector = 'files', path = 'x', format = 'json');\nCREATE SINK s WITH (connector = 'console', output_mode = 'update');\nINSERT INTO s SELECT a,\n  window.start FROM t GROUP BY a;",
            ),
            "window.sql:4:3: window.start refers to the grouping window of the query, but its GROUP BY has no window(…) call",
        ),
        // The planner's errors say where the unknown column, table or
        // function is written.
        (
            write(
                "column.sql",
                "CREATE STREAM t (a INT) WITH (connector = 'files', path = 'x', format = 'json');\nCREATE SINK s WITH (connector = 'console');\nINSERT INTO s\nSELECT a,\n  nope FROM t;",
            ),
            "column.sql:5:3: Schema error: No field named nope.",
        ),
        (
            write(
                "table.sql",
                "CREATE SINK s WITH (connector = 'console');\nINSERT INTO s SELECT a\n  FROM nowhere;",
            ),
            "table.sql:3:8: Error during planning: table 'datafusion.public.nowhere' not found",
        ),
        (
            write(
                "function.sql",
                "CREATE STREAM t (a INT) WITH (connector = 'files', path = 'x', format = 'json');\nCREATE SINK s WITH (connector = 'console');\nINSERT INTO s SELECT a,\n   cont(a) FROM t;",
            ),
            "function.sql:4:4: Error during planning: Invalid function 'cont'. Did you mean",
        ),
    ];
    for (file, expected) in &cases {
        for command in ["run", "batch", "explain"] {
            let out = tidemill(&[command, file.to_str().unwrap()]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {file:?}: {stderr}");
            assert!(
                stderr.contains(expected),
                "{command}: {expected} not in {stderr}"
            );
            assert!(stderr.starts_with("error: "), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
        }
    }
    let missing = tidemill(&["run", "/no/such/file.sql"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("cannot read /no/such/file.sql"));
    let trigger = tidemill(&["run", cases[0].0.to_str().unwrap(), "--trigger", "soon"]);
    assert_eq!(trigger.status.code(), Some(1));
    assert!(text(&trigger.stderr).contains("invalid --trigger 'soon'"));
    assert_eq!(tidemill(&["frobnicate"]).status.code(), Some(2));
    for command in ["run", "batch", "explain"] {
        let help = tidemill(&[command, "--help"]);
        assert!(help.status.success());
        assert!(text(&help.stdout).contains("Usage: tidemill"), "{command}");
    }
}

#[tokio::test]
async fn batch_skips_hidden_files_as_the_stream_does() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..2 {
        write_trades(dir.path(), n);
    }
    let input = dir.path().join("trades");
    // A file still being written (renamed once complete), a staging
    // directory and a marker file: hidden from the stream, so from the
    // batch job too. Read, the first would fail and the second add a
    // minute.
    std::fs::write(
        input.join(".part-002.json.tmp"),
        "{\"symbol\": \"AAPL\", \"exch",
    )
    .unwrap();
    std::fs::create_dir(input.join("_staging")).unwrap();
    std::fs::write(
        input.join("_staging/part-009.json"),
        "{\"symbol\": \"AAPL\", \"exchange\": \"XNAS\", \"price\": 1, \"quantity\": 1, \"event_time\": \"2024-01-01T10:09:00\"}\n",
    )
    .unwrap();
    std::fs::write(input.join("_SUCCESS"), "not json").unwrap();

    let batch = pipeline(dir.path(), "batched", "append");
    let run = tidemill(&["batch", batch.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(text(&run.stdout), "per_minute: 4 rows\n");
    let batched = committed(dir.path(), "batched").await;
    assert!(
        batched.iter().all(|r| !r.contains("10:09:00")),
        "{batched:?}"
    );

    // The stream reads the same files: with a watermark of 10:01:35 it has
    // closed minute 0, identical to the batch job's.
    let streaming = pipeline(dir.path(), "streamed", "append");
    let run = tidemill(&[
        "run",
        streaming.to_str().unwrap(),
        "--trigger",
        "available-now",
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let streamed = committed(dir.path(), "streamed").await;
    let minute_zero: Vec<String> = batched
        .iter()
        .filter(|r| r.starts_with("| 2024-01-01T10:00:00"))
        .cloned()
        .collect();
    assert_eq!(streamed, minute_zero);

    // With no visible file, a declared schema gives an empty result.
    let empty = dir.path().join("empty.sql");
    std::fs::write(
        &empty,
        format!(
            "CREATE STREAM t (a INT) WITH (connector = 'files', path = '{}', format = 'json');
CREATE SINK s WITH (connector = 'console');
INSERT INTO s SELECT a FROM t;",
            dir.path().join("nothing").display()
        ),
    )
    .unwrap();
    let run = tidemill(&["batch", empty.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).ends_with("s: 0 rows\n"),
        "{}",
        text(&run.stdout)
    );
}

/// Sends SIGINT (Ctrl-C) to `child`.
fn interrupt(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Starts `tidemill` with `args` (and `env`), its standard output and
/// error read line by line into channels.
fn spawn_tidemill(
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = |reader: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(reader)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let stdout = lines(Box::new(child.stdout.take().unwrap()));
    let stderr = lines(Box::new(child.stderr.take().unwrap()));
    (child, stdout, stderr)
}

/// Waits (at most a minute) for a line containing `wanted`; returns the
/// lines read up to and including it.
fn wait_for(lines: &std::sync::mpsc::Receiver<String>, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no line with '{wanted}' ({e}); read: {seen:#?}"));
        seen.push(line);
        if seen.last().unwrap().contains(wanted) {
            return seen;
        }
    }
}

/// The batch ids of a query's checkpoint log (`offsets` or `commits`).
fn logged(checkpoint: &Path, log: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(checkpoint.join(log))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    ids.sort();
    ids
}

/// The committed rows of `<dir>/reference` after a batch run over the same
/// input, without the windows at `open` (not yet closed by the stream).
async fn reference(dir: &Path, open: &str) -> Vec<String> {
    let batch = pipeline(dir, "reference", "append");
    let run = tidemill(&["batch", batch.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    committed(dir, "reference")
        .await
        .into_iter()
        .filter(|r| !r.starts_with(&format!("| 2024-01-01T{open}")))
        .collect()
}

#[tokio::test]
async fn ctrl_c_stops_after_the_current_batch_and_a_restart_resumes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..4 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path(), "out", "append");
    let checkpoint = dir.path().join("chk");
    // A processing-time trigger, one file per batch: interrupted once the
    // first batch is reported.
    let (mut child, stdout, stderr) = spawn_tidemill(
        &[
            "run",
            file.to_str().unwrap(),
            "--trigger",
            "200ms",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ],
        &[],
    );
    let mut printed = wait_for(&stdout, "per_minute: batch 0 |");
    interrupt(&child);
    let status = child.wait().unwrap();
    // Both streams end with the process: read them to the end.
    let errors: Vec<String> = stderr.iter().collect();
    assert_eq!(status.code(), Some(0), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("stopping after the current batch")),
        "{errors:?}"
    );
    printed.extend(stdout.iter());
    // The batch in progress finished: every batch started is committed,
    // to the checkpoint and to the sink, and each was reported.
    let query = checkpoint.join("per_minute");
    let offsets = logged(&query, "offsets");
    assert_eq!(offsets, logged(&query, "commits"));
    assert_eq!(
        offsets,
        logged(&dir.path().join("out"), "_tidemill_sink"),
        "the sink's manifest"
    );
    for id in &offsets {
        assert!(
            printed
                .iter()
                .any(|l| l.starts_with(&format!("per_minute: batch {id} |"))),
            "batch {id} not reported: {printed:#?}"
        );
    }
    assert!(
        offsets.len() < 5,
        "stopped before reading everything: {offsets:?}"
    );

    // The restart goes on from there, exactly once.
    write_trades(dir.path(), 4);
    let run = tidemill(&[
        "run",
        file.to_str().unwrap(),
        "--trigger",
        "available-now",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(!stdout.contains("recovered"), "{stdout}");
    assert!(
        stdout.contains(&format!("per_minute: batch {} |", offsets.len())),
        "{stdout}"
    );
    assert_eq!(
        committed(dir.path(), "out").await,
        reference(dir.path(), "10:04:00").await
    );
}

#[tokio::test]
async fn a_second_ctrl_c_exits_at_once_and_the_batch_is_rerun_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path(), "out", "append");
    // Batch 1 blocks inside the sink (a test failpoint): the first Ctrl-C
    // waits for it, the second exits.
    let (mut child, stdout, stderr) = spawn_tidemill(
        &["run", file.to_str().unwrap(), "--trigger", "0s"],
        &[("TIDEMILL_FAILPOINT", "during_sink@1")],
    );
    wait_for(&stdout, "TIDEMILL_FAILPOINT_REACHED during_sink@1");
    interrupt(&child);
    wait_for(&stderr, "stopping after the current batch");
    interrupt(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let errors: Vec<String> = stderr.iter().collect();
    assert!(
        errors.iter().any(|l| l.contains("interrupted again")),
        "{errors:?}"
    );
    let query = file.with_extension("checkpoint").join("per_minute");
    assert_eq!(logged(&query, "offsets"), [0, 1]);
    assert_eq!(logged(&query, "commits"), [0]);

    let run = tidemill(&["run", file.to_str().unwrap(), "--trigger", "available-now"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("per_minute: batch 1 | 10 rows in"),
        "{}",
        text(&run.stdout)
    );
    assert_eq!(
        committed(dir.path(), "out").await,
        reference(dir.path(), "10:02:00").await
    );
}

/// Writes `sql` to `<dir>/<name>` and returns its path.
fn write_sql(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, sql).unwrap();
    path
}

/// Checks that `out` failed with exit code 1 and one message on standard
/// error, without a panic, and returns the message.
fn one_error(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn run_names_the_rejected_query_its_line_and_the_fix_and_starts_none() {
    let dir = tempfile::tempdir().unwrap();
    write_trades(dir.path(), 0);
    let file = write_sql(
        dir.path(),
        "rejected.sql",
        &format!(
            "CREATE STREAM t (symbol VARCHAR, quantity DOUBLE)
  WITH (connector = 'files', path = '{input}', format = 'json');
CREATE SINK fine WITH (connector = 'files', path = '{fine}');
CREATE SINK totals WITH (connector = 'files', path = '{totals}', output_mode = 'append');
INSERT INTO fine SELECT symbol FROM t;

INSERT INTO totals SELECT symbol, sum(quantity) FROM t GROUP BY symbol;
",
            input = dir.path().join("trades").display(),
            fine = dir.path().join("fine").display(),
            totals = dir.path().join("totals").display(),
        ),
    );
    let run = tidemill(&["run", file.to_str().unwrap(), "--trigger", "available-now"]);
    let stderr = one_error(&run);
    for expected in [
        "rejected.sql:7:1: INSERT INTO totals: unsupported streaming query: Aggregate in append mode",
        "Group by a window of the watermarked event-time column, or use update or complete mode",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // Every query is checked before any starts: the valid one ran no batch.
    assert_eq!(text(&run.stdout), "");
    assert!(!dir.path().join("rejected.checkpoint/fine/commits").exists());
}

#[test]
fn sink_restrictions_and_streamless_queries_are_said_in_sql_terms() {
    let dir = tempfile::tempdir().unwrap();
    let update = write_sql(
        dir.path(),
        "update.sql",
        "CREATE STREAM t (symbol VARCHAR) WITH (connector = 'files', path = 'in', format = 'json');
CREATE SINK counts WITH (connector = 'files', path = 'out', output_mode = 'update');
INSERT INTO counts SELECT symbol, count(*) AS n FROM t GROUP BY symbol;",
    );
    let explain = tidemill(&["explain", update.to_str().unwrap()]);
    let stdout = text(&explain.stdout);
    let stderr = one_error(&explain);
    assert!(
        stdout.contains(
            "rejected: unsupported streaming query: files sink counts supports output_mode = \
             'append' only, not 'update'"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("or a console or kafka sink for update mode"),
        "{stdout}"
    );
    assert!(
        stderr.contains("cannot run as a stream: INSERT INTO counts"),
        "{stderr}"
    );
    let run = tidemill(&["run", update.to_str().unwrap(), "--trigger", "once"]);
    let stderr = one_error(&run);
    assert!(
        stderr.contains("update.sql:3:1: INSERT INTO counts: unsupported streaming query: files sink counts supports output_mode = 'append' only"),
        "{stderr}"
    );
    for rust in ["OutputMode::", "MemorySink", "ForeachBatchSink"] {
        assert!(
            !stdout.contains(rust) && !stderr.contains(rust),
            "{rust}: {stdout}{stderr}"
        );
    }

    let streamless = write_sql(
        dir.path(),
        "streamless.sql",
        "CREATE SINK constants WITH (connector = 'console');
INSERT INTO constants SELECT 1 AS one;",
    );
    let explain = tidemill(&["explain", streamless.to_str().unwrap()]);
    let stdout = text(&explain.stdout);
    one_error(&explain);
    assert!(
        stdout.contains(
            "rejected: unsupported streaming query: INSERT INTO constants reads no stream"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("use `tidemill batch` for static tables"),
        "{stdout}"
    );
    let run = tidemill(&["run", streamless.to_str().unwrap(), "--trigger", "once"]);
    let stderr = one_error(&run);
    assert!(
        stderr.contains("streamless.sql:2:1: INSERT INTO constants: unsupported streaming query: INSERT INTO constants reads no stream"),
        "{stderr}"
    );
    for rust in ["collect()", "read_stream()"] {
        assert!(
            !stdout.contains(rust) && !stderr.contains(rust),
            "{rust}: {stdout}{stderr}"
        );
    }
    // As a batch job it runs.
    let batch = tidemill(&["batch", streamless.to_str().unwrap()]);
    assert!(batch.status.success(), "{}", text(&batch.stderr));
    assert!(
        text(&batch.stdout).ends_with("constants: 1 rows\n"),
        "{}",
        text(&batch.stdout)
    );

    // A window in append mode over a stream without a watermark: the fix
    // is a WATERMARK FOR clause, not the Rust API's with_watermark.
    let unwatermarked = write_sql(
        dir.path(),
        "unwatermarked.sql",
        "CREATE STREAM t (symbol VARCHAR, ts TIMESTAMP) WITH (connector = 'files', path = 'in', format = 'json');
CREATE SINK per_minute WITH (connector = 'console');
INSERT INTO per_minute SELECT window.start, count(*) AS n FROM t GROUP BY window(ts, '1 minute');",
    );
    let explain = tidemill(&["explain", unwatermarked.to_str().unwrap()]);
    let stdout = text(&explain.stdout);
    one_error(&explain);
    assert!(
        stdout.contains("but the input has no watermark"),
        "{stdout}"
    );
    assert!(
        stdout.contains("WATERMARK FOR <column> AS <column> - INTERVAL '10' SECOND"),
        "{stdout}"
    );
    assert!(!stdout.contains("with_watermark("), "{stdout}");
}

#[test]
fn a_failed_query_stops_the_others_and_the_run_exits_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    write_trades(dir.path(), 0);
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("part-000.json"),
        "{\"symbol\": \"AAPL\", \"price\": 1.5}\nnot json\n",
    )
    .unwrap();
    let file = write_sql(
        dir.path(),
        "two.sql",
        &format!(
            "CREATE STREAM trades (symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{trades}', format = 'json');
CREATE STREAM bad (symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{bad}', format = 'json');
CREATE SINK copied WITH (connector = 'files', path = '{copied}');
CREATE SINK broken WITH (connector = 'files', path = '{broken}');
INSERT INTO copied SELECT symbol, price FROM trades;
INSERT INTO broken SELECT symbol, price FROM bad;
",
            trades = dir.path().join("trades").display(),
            bad = bad.display(),
            copied = dir.path().join("copied").display(),
            broken = dir.path().join("broken").display(),
        ),
    );
    // Under a processing-time trigger the valid query would run forever:
    // the failed one must end the run.
    let (mut child, _stdout, stderr) =
        spawn_tidemill(&["run", file.to_str().unwrap(), "--trigger", "100ms"], &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("tidemill run kept running after query broken failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let stderr: Vec<String> = stderr.iter().collect();
    assert_eq!(stderr.len(), 1, "one message: {stderr:#?}");
    assert!(
        stderr[0].starts_with("error: query broken failed: source FileSource[json: "),
        "{stderr:#?}"
    );
    assert!(stderr[0].contains("part-000.json, line 2"), "{stderr:#?}");
}

/// Issue 24: one record with a null event time no longer stops the query.
/// Through the SQL command, as Spark: a stateless query passes the row
/// through, a windowed aggregation leaves it out (in no window) and the
/// progress line counts it.
#[test]
fn a_null_event_time_is_left_out_of_windows_and_counted_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(
        input.join("01.json"),
        concat!(
            r#"{"word": "dog", "ts": "2024-01-01T12:01:00"}"#,
            "\n",
            r#"{"word": "cat", "ts": null}"#,
            "\n",
            r#"{"word": "owl"}"#,
            "\n",
            r#"{"word": "dog", "ts": "2024-01-01T12:02:00"}"#,
            "\n",
        ),
    )
    .unwrap();
    write_sql(
        dir.path(),
        "nulls.sql",
        "CREATE STREAM words (word VARCHAR, ts TIMESTAMP, \
           WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE) \
         WITH (connector = 'files', path = 'input', format = 'json');
         CREATE SINK counts WITH (connector = 'console', output_mode = 'update');
         CREATE SINK all_words WITH (connector = 'console');
         INSERT INTO counts SELECT to_char(window.start, '%H:%M') AS start, word, count(*) AS n \
           FROM words GROUP BY window(ts, '10 minutes'), word;
         INSERT INTO all_words SELECT word FROM words;",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(["run", "nulls.sql", "--trigger", "available-now"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    // The windowed count has dog's two rows only, no null window.
    let counts: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("| 12:00"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(counts, vec!["| 12:00 | dog | 2 |"], "{stdout}");
    assert!(
        stdout.contains("counts: batch 0 |")
            && stdout.contains("| 2 rows without event time left out"),
        "{stdout}"
    );
    // The stateless query passes all four rows through.
    for word in ["| cat", "| owl"] {
        assert!(stdout.contains(word), "{word}: {stdout}");
    }
}

/// `run --trigger available-now` on a terminal (a pseudo-terminal made by
/// `script`) draws a progress bar per query, files done of the backlog the
/// source held at start, up to 100 %; with output to a pipe it prints the
/// plain line per batch.
#[test]
fn available_now_on_a_terminal_shows_a_progress_bar() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..4 {
        write_trades(dir.path(), n);
    }
    let file = pipeline(dir.path(), "out", "append");
    let command = format!(
        "{} run {} --trigger available-now",
        env!("CARGO_BIN_EXE_tidemill"),
        file.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .output()
        .expect("script (util-linux) runs the command on a pseudo-terminal");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(shown.contains("\x1b["), "redrawn in place: {shown:?}");
    assert!(shown.contains("per_minute [#"), "{shown:?}");
    assert!(shown.contains("100% 4/4 files"), "{shown:?}");
    assert!(!shown.contains("per_minute: batch 0 |"), "{shown:?}");

    let piped = tidemill(&[
        "run",
        file.to_str().unwrap(),
        "--trigger",
        "available-now",
        "--checkpoint",
        dir.path().join("again").to_str().unwrap(),
    ]);
    let lines = text(&piped.stdout);
    assert!(lines.contains("per_minute: batch 0 |"), "{lines}");
    assert!(!lines.contains('\x1b'), "{lines:?}");
}
