//! `tidemill bench`: a pipeline file's own queries measured at several
//! trigger intervals and input rates, over a replay of their streams'
//! rows.

use std::path::{Path, PathBuf};

use tidemill_harness::{RunResult, StudyReport};

use crate::cli::{text, tidemill};

/// Writes `rows` trades as JSON lines into `<dir>/trades` (two files),
/// 50 ms of event time apart, in event-time order.
fn write_trades(dir: &Path, rows: usize) -> PathBuf {
    let trades = dir.join("trades");
    std::fs::create_dir_all(&trades).unwrap();
    let symbols = ["A", "B", "C"];
    let lines: Vec<String> = (0..rows)
        .map(|i| {
            let millis = i * 50;
            format!(
                r#"{{"symbol":"{}","price":{},"quantity":{},"event_time":"2026-01-01T00:{:02}:{:02}.{:03}"}}"#,
                symbols[i % 3],
                100.0 + (i % 7) as f64,
                i % 11,
                millis / 60_000,
                millis / 1000 % 60,
                millis % 1000
            )
        })
        .collect();
    let half = lines.len() / 2;
    std::fs::write(trades.join("a.json"), lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(trades.join("b.json"), lines[half..].join("\n") + "\n").unwrap();
    trades
}

/// A stateless and a windowed (append mode, 1 s watermark) query over the
/// trades, each into a files sink under `dir`.
fn write_pipeline(dir: &Path) -> PathBuf {
    let trades = write_trades(dir, 400);
    let file = dir.join("pipeline.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (
  symbol VARCHAR, price DOUBLE, quantity DOUBLE, event_time TIMESTAMP,
  WATERMARK FOR event_time AS event_time - INTERVAL '1' SECOND
) WITH (connector = 'files', path = '{trades}', format = 'json');

CREATE SINK big WITH (connector = 'files', path = '{big}', output_mode = 'append');
CREATE SINK per_2s WITH (connector = 'files', path = '{per_2s}', output_mode = 'append');

INSERT INTO big SELECT symbol, price, quantity FROM trades WHERE quantity > 5;

INSERT INTO per_2s
SELECT window.start AS window_start, symbol, count(*) AS trades
FROM trades GROUP BY window(event_time, '2 seconds'), symbol;
",
            trades = trades.display(),
            big = dir.join("big").display(),
            per_2s = dir.join("per_2s").display(),
        ),
    )
    .unwrap();
    file
}

fn run_at<'a>(report: &'a StudyReport, query: &str, interval_ms: f64, rate: u64) -> &'a RunResult {
    report
        .runs
        .iter()
        .find(|r| r.pipeline == query && r.interval_ms == interval_ms && r.input_rows_per_s == rate)
        .unwrap_or_else(|| panic!("no run of {query} at {interval_ms} ms, {rate} rows/s"))
}

#[test]
fn bench_measures_each_query_and_writes_a_table_a_json_file_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_pipeline(dir.path());
    let (json, out) = (dir.path().join("results.json"), dir.path().join("bench"));
    let output = tidemill(&[
        "bench",
        file.to_str().unwrap(),
        "--triggers",
        "0s,100ms",
        "--rates",
        "2k,100k",
        "--duration",
        "1s",
        "--warmup",
        "500ms",
        // 5 000 rows/s at a 100 ms trigger: 100k rows/s is far above it.
        "--max-rows-per-trigger",
        "500",
        "--sink",
        "real",
        "--json",
        json.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}\n{stderr}");

    let report: StudyReport =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.runs.len(), 8, "2 queries × 2 intervals × 2 rates");
    for r in &report.runs {
        assert_eq!(
            r.rows_generated,
            r.input_rows_per_s * 3 / 2,
            "{}",
            r.summary()
        );
        // A run far behind may commit no row that arrived after its
        // warm-up: it has no latency figures.
        let Some(l) = r.latency else {
            assert!(!r.kept_up, "{}", r.summary());
            continue;
        };
        assert!(
            l.p50_ms <= l.p95_ms && l.p95_ms <= l.p99_ms && l.p99_ms <= l.max_ms,
            "{}",
            r.summary()
        );
    }
    for query in ["big", "per_2s"] {
        // 2 000 rows/s at 100 ms: 200 rows a batch, under the limit.
        let kept = run_at(&report, query, 100.0, 2_000);
        assert!(kept.kept_up, "{}", kept.summary());
        assert_eq!(
            kept.rows_committed,
            kept.rows_generated,
            "{}",
            kept.summary()
        );
        let ratio = kept.sustained_rows_per_s / 2_000.0;
        assert!((0.7..=1.3).contains(&ratio), "{}", kept.summary());
        // 100 000 rows/s at 100 ms: at most 5 000 rows/s are read.
        let behind = run_at(&report, query, 100.0, 100_000);
        assert!(!behind.kept_up, "{}", behind.summary());
        assert!(
            behind.sustained_rows_per_s < 10_000.0,
            "{}",
            behind.summary()
        );
        assert!(
            behind.rows_committed < behind.rows_generated,
            "{}",
            behind.summary()
        );
    }
    // The replay moves event time forward each loop of the 400-row (20 s)
    // sample: the watermark advances, windows close and are written, and
    // no row is late (the sample is in event-time order).
    for interval in [0.0, 100.0] {
        let windowed = run_at(&report, "per_2s", interval, 2_000);
        assert!(windowed.rows_output > 0, "{}", windowed.summary());
        assert_eq!(windowed.late_rows_dropped, 0, "{}", windowed.summary());
    }
    // Every row was committed once: the stateless query's output is
    // exactly the replayed rows with quantity > 5 (sample row i has
    // quantity i % 11).
    let stateless = run_at(&report, "big", 100.0, 2_000);
    let expected = (0..stateless.rows_generated)
        .filter(|i| (i % 400) % 11 > 5)
        .count() as u64;
    assert_eq!(stateless.rows_output, expected, "{}", stateless.summary());
    assert_eq!(report.recommendations.len(), 4);
    for r in &report.recommendations {
        if r.input_rows_per_s == 2_000 {
            assert_eq!(r.interval_ms, Some(0.0), "{r:?}");
            assert!(r.p99_ms.is_some(), "{r:?}");
        }
    }

    // The terminal table, the recommendations and the files.
    for wanted in [
        "| pipeline |",
        "p99 ms",
        "kept up",
        "Shortest trigger interval that kept up",
        "per_2s at 2000 rows/s: trigger 0",
    ] {
        assert!(
            stdout.contains(wanted),
            "{wanted:?} missing from:\n{stdout}"
        );
    }
    let svg = std::fs::read_to_string(out.join("study.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    assert!(
        svg.contains("per_2s: latency p50 / p99"),
        "the windowed query's panel"
    );
    assert!(svg.contains("CPU per million rows"));
    assert!(out.join("study.md").exists() && out.join("study.json").exists());
    // `--sink real` wrote into scratch directories, not the sinks' paths.
    assert!(!dir.path().join("big").exists());
    assert!(!dir.path().join("per_2s").exists());
}

#[test]
fn bench_replays_a_sample_file_and_refuses_bad_settings_and_samples_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_pipeline(dir.path());
    let file = file.to_str().unwrap();
    let short = [
        "--triggers",
        "0s",
        "--rates",
        "1k",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
    ];

    // A CSV sample in place of the stream's files.
    let csv = dir.path().join("sample.csv");
    let mut lines = vec!["event_time,symbol,quantity,price,note".to_string()];
    lines.extend((0..50).map(|i| format!("2026-02-01T00:00:{:02},S{},{},{}.5,x", i, i % 2, i, i)));
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let json = dir.path().join("sample.json");
    let mut args = vec!["bench", file, "--query", "big", "--sample"];
    let sample = format!("trades={}", csv.display());
    args.push(&sample);
    args.extend(short);
    args.extend(["--json", json.to_str().unwrap()]);
    let output = tidemill(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: StudyReport =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.runs.len(), 1);
    let run = &report.runs[0];
    assert_eq!(run.pipeline, "big");
    // Sample row i has quantity i: quantity > 5 keeps 44 of every 50.
    assert_eq!(run.rows_committed, run.rows_generated, "{}", run.summary());
    let expected = (0..run.rows_generated).filter(|i| i % 50 > 5).count() as u64;
    assert_eq!(run.rows_output, expected, "{}", run.summary());
    // The default output directory is beside the file.
    assert!(dir.path().join("pipeline.bench").join("study.svg").exists());

    let fails = |extra: &[&str], wanted: &str| {
        let mut args = vec!["bench", file];
        args.extend(short);
        args.extend(extra);
        let output = tidemill(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(wanted),
            "{args:?}: {wanted:?} missing from {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    fails(
        &["--query", "nope"],
        "no query named nope; the pipeline's queries (their sinks): big, per_2s",
    );
    let zero = tidemill(&["bench", file, "--rates", "1k,0"]);
    assert_eq!(zero.status.code(), Some(1));
    assert!(text(&zero.stderr).contains("a rate must be at least 1 row per second"));

    let missing = dir.path().join("missing.json");
    std::fs::write(
        &missing,
        "{\"symbol\":\"A\",\"quantity\":1,\"event_time\":\"2026-01-01T00:00:00\"}\n",
    )
    .unwrap();
    let wrong_type = dir.path().join("wrong.json");
    std::fs::write(
        &wrong_type,
        "{\"symbol\":\"A\",\"price\":1.0,\"quantity\":1,\"event_time\":\"yesterday\"}\n",
    )
    .unwrap();
    fails(
        &["--sample", missing.to_str().unwrap()],
        &format!(
            "stream trades: sample {}: it has no column price",
            missing.display()
        ),
    );
    fails(
        &["--sample", wrong_type.to_str().unwrap()],
        "column event_time is Utf8, which does not convert to the stream's Timestamp",
    );
    fails(
        &["--sample", &format!("quotes={}", missing.display())],
        "the pipeline declares no stream quotes; its streams: trades",
    );
}

#[test]
fn bench_replays_both_streams_of_a_join_and_finds_the_highest_sustainable_rate() {
    let dir = tempfile::tempdir().unwrap();
    // Trades and quotes over the same 10 s of event time, 200 rows each.
    let (trades, quotes) = (
        dir.path().join("trades.json"),
        dir.path().join("quotes.json"),
    );
    let rows = |f: &dyn Fn(usize) -> String| (0..200).map(f).collect::<Vec<_>>().join("\n") + "\n";
    std::fs::write(
        &trades,
        rows(&|i| {
            format!(
                r#"{{"symbol":"S{}","price":{},"t":"2026-01-01T00:00:{:02}.{:03}"}}"#,
                i % 4,
                100 + i,
                i * 50 / 1000,
                i * 50 % 1000
            )
        }),
    )
    .unwrap();
    std::fs::write(
        &quotes,
        rows(&|i| {
            format!(
                r#"{{"symbol":"S{}","bid":{},"t":"2026-01-01T00:00:{:02}.{:03}"}}"#,
                i % 4,
                99 + i,
                i * 50 / 1000,
                i * 50 % 1000
            )
        }),
    )
    .unwrap();
    let file = dir.path().join("join.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM trades (symbol VARCHAR, price DOUBLE, t TIMESTAMP,
  WATERMARK FOR t AS t - INTERVAL '1' SECOND)
WITH (connector = 'files', path = '{}', format = 'json');
CREATE STREAM quotes (symbol VARCHAR, bid DOUBLE, t TIMESTAMP,
  WATERMARK FOR t AS t - INTERVAL '1' SECOND)
WITH (connector = 'files', path = '{}', format = 'json');
CREATE SINK matched WITH (connector = 'console', output_mode = 'append');
CREATE SINK big WITH (connector = 'console', output_mode = 'append');
INSERT INTO matched
SELECT tr.symbol, tr.price, q.bid FROM trades tr JOIN quotes q
  ON tr.symbol = q.symbol AND tr.t BETWEEN q.t - INTERVAL '100' MILLISECOND AND q.t;
INSERT INTO big SELECT symbol, price FROM trades WHERE price > 150;
",
            dir.path().join("nothing-here-trades").display(),
            dir.path().join("nothing-here-quotes").display(),
        ),
    )
    .unwrap();
    // `tidemill bench` of the join over the two samples.
    let join_bench = |quotes: &Path, more: &[&str]| {
        let samples = [
            format!("trades={}", trades.display()),
            format!("quotes={}", quotes.display()),
        ];
        let mut args = vec!["bench", file.to_str().unwrap(), "--query", "matched"];
        args.extend(["--sample", &samples[0], "--sample", &samples[1]]);
        args.extend(more);
        tidemill(&args)
    };
    let json = dir.path().join("join.json");
    let output = join_bench(
        &quotes,
        &[
            "--triggers",
            "100ms",
            "--rates",
            "1k",
            "--duration",
            "1s",
            "--warmup",
            "300ms",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "aligned samples: {stderr}");
    let report: StudyReport =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = run_at(&report, "matched", 100.0, 1_000);
    assert!(run.kept_up, "{}", run.summary());
    assert_eq!(run.rows_committed, run.rows_generated, "{}", run.summary());
    assert_eq!(run.late_rows_dropped, 0, "{}", run.summary());
    // Trade i matches quote i (same symbol, same time) and quote i + 1
    // when it has the same symbol (never: symbols cycle through 4), in
    // every loop: one output row per input row of each stream, except
    // those still waiting for the watermark at the end.
    assert!(
        run.rows_output <= run.rows_generated && run.rows_output >= run.rows_generated * 8 / 10,
        "{}: {} rows out",
        run.summary(),
        run.rows_output
    );

    // The highest sustainable rate at 100 ms with at most 100 rows a
    // batch: 1 000 rows/s. A trial of 1.4 s judges a backlog growing by
    // less than 50 ms of input per third of its measured time (0.4 s) as
    // kept up, so a rate up to about 12 % above the limit can pass (one
    // run found 1 131 kept up while 1 000 rows/s were committed); none
    // 25 % above it may. Below the limit, what keeps up depends on the
    // machine's load (late triggers leave a backlog), so only the bound is
    // checked.
    let json = dir.path().join("max.json");
    let output = tidemill(&[
        "bench",
        file.to_str().unwrap(),
        "--query",
        "big",
        "--sample",
        &format!("trades={}", trades.display()),
        "--triggers",
        "100ms",
        "--rates",
        "400",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--max-rows-per-trigger",
        "100",
        "--find-max",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: StudyReport =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.max_rates.len(), 1);
    let max = &report.max_rates[0];
    assert!(max.max_rows_per_s <= 1_250, "{max:?}");
    assert!(
        max.steps.iter().all(|s| !s.kept_up || s.rate <= 1_250),
        "{max:?}"
    );
    assert!(
        max.first_failing_rows_per_s.is_some_and(|f| f <= 2_000),
        "{max:?}"
    );
    assert!(max.steps.len() >= 2, "{max:?}");
    assert!(text(&output.stdout).contains("Maximum sustainable input rate"));

    // Samples of different event-time speeds draw a warning.
    let sparse = dir.path().join("sparse.json");
    std::fs::write(
        &sparse,
        rows(&|i| {
            format!(
                r#"{{"symbol":"S{}","bid":1,"t":"2026-01-01T00:{:02}:00"}}"#,
                i % 4,
                i % 60
            )
        }),
    )
    .unwrap();
    let output = join_bench(
        &sparse,
        &[
            "--triggers",
            "0s",
            "--rates",
            "1k",
            "--duration",
            "200ms",
            "--warmup",
            "100ms",
            "--out",
            dir.path().join("sparse-out").to_str().unwrap(),
        ],
    );
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: INSERT INTO matched: its streams' samples advance event time"),
        "{stderr}"
    );
}

#[test]
fn the_readme_example_pipeline_runs_under_bench() {
    // Paths in the example are relative to the repository's root.
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .current_dir(root)
        .args([
            "bench",
            "examples/bench/trades.sql",
            "--triggers",
            "0s",
            "--rates",
            "2k",
            "--duration",
            "500ms",
            "--warmup",
            "200ms",
            "--out",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: StudyReport =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("study.json")).unwrap())
            .unwrap();
    let names: Vec<&str> = report.runs.iter().map(|r| r.pipeline.as_str()).collect();
    assert_eq!(names, ["big_trades", "per_minute"]);
    for r in &report.runs {
        assert!(r.kept_up, "{}", r.summary());
        assert_eq!(r.late_rows_dropped, 0, "{}", r.summary());
    }
}
