//! Spark Structured Streaming's documented semantics, as SQL pipeline files
//! (`tests/sql/`, described in `tests/sql/README.md`): tumbling, sliding
//! and session windows in append and update mode with late data, and
//! complete mode, fed run by run through the `tidemill` binary so that the
//! watermark really moves between micro-batches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::text;

fn scenario_path(name: &str, extension: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sql")
        .join(format!("{name}.{extension}"))
}

/// Lines that are not blank and not `#` comments.
fn content(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The input, run by run: each run's rows as JSON lines.
fn input_runs(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(scenario_path(name, "input")).unwrap();
    let mut runs: Vec<String> = Vec::new();
    for line in content(&text) {
        if line == "run" {
            runs.push(String::new());
            continue;
        }
        let (time, word) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("{name}.input: '{line}' is not 'HH:MM word'"));
        runs.last_mut()
            .unwrap_or_else(|| panic!("{name}.input: rows before the first 'run'"))
            .push_str(&format!(
                "{{\"word\": \"{word}\", \"ts\": \"2024-01-01T{time}:00\"}}\n"
            ));
    }
    runs
}

/// One micro-batch's output: its rows, sorted, and its late rows if known.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Batch {
    rows: Vec<String>,
    late: Option<u64>,
}

#[derive(Debug, Default)]
struct Expected {
    columns: String,
    /// Per run, its batches by id.
    runs: Vec<BTreeMap<u64, Batch>>,
    /// The rows of `tidemill batch`, sorted, if given.
    batch_job: Option<Vec<String>>,
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(scenario_path(name, "expected")).unwrap();
    let mut expected = Expected::default();
    let mut current: Option<u64> = None;
    for line in content(&text) {
        if let Some(columns) = line.strip_prefix("columns ") {
            expected.columns = columns.to_string();
        } else if line == "run" {
            expected.runs.push(BTreeMap::new());
            current = None;
        } else if line == "tidemill batch" {
            expected.batch_job = Some(Vec::new());
        } else if let Some(id) = line.strip_prefix("batch ") {
            let id: u64 = id.parse().unwrap();
            expected
                .runs
                .last_mut()
                .unwrap()
                .insert(id, Batch::default());
            current = Some(id);
        } else if let Some(late) = line.strip_prefix("late ") {
            let run = expected.runs.last_mut().unwrap();
            run.get_mut(&current.unwrap()).unwrap().late = Some(late.parse().unwrap());
        } else if let Some(rows) = &mut expected.batch_job {
            rows.push(line.to_string());
        } else {
            let run = expected.runs.last_mut().unwrap();
            let id = current.unwrap_or_else(|| panic!("{name}.expected: '{line}' outside a batch"));
            run.get_mut(&id).unwrap().rows.push(line.to_string());
        }
    }
    for run in &mut expected.runs {
        for batch in run.values_mut() {
            batch.rows.sort();
        }
    }
    if let Some(rows) = &mut expected.batch_job {
        rows.sort();
    }
    expected
}

/// A printed batch: its id, header and sorted rows.
type Printed = (u64, String, Vec<String>);

/// The console sink's tables in `stdout` (`Batch: N (sink <sink>)`, then
/// a table), as `(batch id, header, sorted rows)`, cells joined by ` | `;
/// and the late rows of each batch from the progress lines of `sink`.
fn printed(stdout: &str, sink: &str) -> (Vec<Printed>, BTreeMap<u64, u64>) {
    let mut batches: Vec<Printed> = Vec::new();
    let mut late = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(header) = line.strip_prefix("Batch: ") {
            let id = header
                .strip_suffix(&format!(" (sink {sink})"))
                .unwrap_or_else(|| panic!("a header naming sink {sink}: {line}"));
            batches.push((id.parse().unwrap(), String::new(), Vec::new()));
        } else if line.starts_with('|') {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let (_, header, rows) = batches.last_mut().expect("a table after 'Batch: N'");
            if header.is_empty() {
                *header = cells.join(" | ");
            } else {
                rows.push(cells.join(" | "));
            }
        } else if let Some(progress) = line.strip_prefix(&format!("{sink}: batch ")) {
            let id: u64 = progress.split(' ').next().unwrap().parse().unwrap();
            let dropped = progress
                .split(" | ")
                .find_map(|part| part.strip_suffix(" late rows dropped"))
                .map(|n| n.parse().unwrap())
                .unwrap_or(0);
            late.insert(id, dropped);
        }
    }
    for (_, _, rows) in &mut batches {
        rows.sort();
    }
    (batches, late)
}

fn tidemill_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tidemill {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs scenario `name`: each run adds its file and runs one trigger
/// (`--trigger once`) on the same checkpoint; the batches each run printed
/// must be the expected ones, then `tidemill batch` over all the input.
fn scenario(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.sql");
    let sql = std::fs::read_to_string(scenario_path(name, "sql")).unwrap();
    std::fs::write(&pipeline, &sql).unwrap();
    let sink = sql
        .split("CREATE SINK ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    let runs = input_runs(name);
    let expected = expected(name);
    assert_eq!(
        runs.len(),
        expected.runs.len(),
        "{name}: the input and expected runs differ in number"
    );
    for (i, (rows, want)) in runs.iter().zip(&expected.runs).enumerate() {
        let run = i + 1;
        if !rows.is_empty() {
            let hidden = input.join(format!(".{run:02}.json.tmp"));
            std::fs::write(&hidden, rows).unwrap();
            std::fs::rename(&hidden, input.join(format!("{run:02}.json"))).unwrap();
        }
        let stdout = tidemill_in(dir.path(), &["run", "pipeline.sql", "--trigger", "once"]);
        let (batches, late) = printed(&stdout, &sink);
        let mut got = BTreeMap::new();
        for (id, header, rows) in batches {
            assert_eq!(header, expected.columns, "{name} run {run}:\n{stdout}");
            got.insert(id, Batch { rows, late: None });
        }
        let mut want = want.clone();
        for (id, batch) in want.iter_mut() {
            if let Some(n) = batch.late.take() {
                assert_eq!(
                    late.get(id),
                    Some(&n),
                    "{name} run {run}, batch {id}: late rows:\n{stdout}"
                );
            }
        }
        assert_eq!(got, want, "{name} run {run}:\n{stdout}");
    }
    if let Some(rows) = &expected.batch_job {
        let stdout = tidemill_in(dir.path(), &["batch", "pipeline.sql"]);
        let (batches, _) = printed(&stdout, &sink);
        assert_eq!(batches.len(), 1, "{name} batch job:\n{stdout}");
        assert_eq!(&batches[0].2, rows, "{name} batch job:\n{stdout}");
        assert!(stdout.ends_with(&format!("{sink}: {} rows\n", rows.len())));
    }
}

#[test]
fn tumbling_windows_append_each_window_once_the_watermark_passes_its_end() {
    scenario("tumbling_append");
}

#[test]
fn tumbling_windows_update_changed_windows_each_batch() {
    scenario("tumbling_update");
}

#[test]
fn sliding_windows_append() {
    scenario("sliding_append");
}

#[test]
fn sliding_windows_update_and_drop_late_rows_per_window() {
    scenario("sliding_update");
}

#[test]
fn session_windows_append_closed_sessions() {
    scenario("session_append");
}

#[test]
fn session_windows_update_grown_sessions() {
    scenario("session_update");
}

#[test]
fn complete_mode_prints_the_whole_windowed_table_every_batch() {
    scenario("complete_sliding");
}

#[test]
fn complete_mode_running_word_count() {
    scenario("complete_word_count");
}

#[test]
fn session_windows_merge_when_they_touch() {
    scenario("session_touching");
}

#[test]
fn complete_mode_keeps_rows_behind_the_watermark() {
    scenario("complete_late");
}

#[test]
fn select_distinct_in_update_mode_emits_the_rows_each_batch_touched() {
    scenario("distinct_update");
}

#[test]
fn every_scenario_file_has_a_test() {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/sql_semantics.rs"),
    )
    .unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql")).unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sql") {
            let name = path.file_stem().unwrap().to_str().unwrap();
            assert!(
                source.contains(&format!("scenario(\"{name}\")")),
                "tests/sql/{name}.sql has no test"
            );
            for extension in ["input", "expected"] {
                assert!(
                    scenario_path(name, extension).exists(),
                    "{name}.{extension}"
                );
            }
        }
    }
}
