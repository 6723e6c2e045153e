//! Crash tests of the Iceberg sink: a pipeline copying events into an
//! Iceberg table runs in a child process (this test binary again, with the
//! ignored `iceberg_sink_crash::crash_child` as its entry point), is killed
//! with SIGKILL before, inside and after the sink's commit of a batch
//! (`before_sink`; `during_sink`: the batch's data files, manifest and
//! manifest list written, the metadata version naming them not;
//! `after_sink`: committed, the engine's commit log not written), and
//! restarted. The table must then hold every row exactly once, counted by
//! the `iceberg` crate's scan planning with the parquet reader, and by the
//! table's snapshot history: one append snapshot per batch, each naming the
//! query and its batch id, no batch id twice.

use std::path::PathBuf;
use std::process::Command;

use datafusion::prelude::*;
use tidemill::prelude::*;

use crate::child::{self, Child, Event};
use crate::common::events_schema;
use crate::crash::write_input;
use crate::iceberg_sink::{one_snapshot_per_batch, query_table, snapshot_batches};

/// The failpoints of a batch around the sink's commit, in order.
const SINK_POINTS: [&str; 3] = ["before_sink", "during_sink", "after_sink"];

/// The partitionings under test.
const PARTITIONINGS: [&[&str]; 2] = [&[], &["symbol"]];

/// The child process: copies the JSON events of `IS_CRASH_INPUT` (one file
/// per batch) into the Iceberg table at `IS_CRASH_TABLE`, partitioned by
/// the comma-separated `IS_CRASH_PARTITION_BY`, with `AvailableNow`.
#[tokio::test]
#[ignore = "entry point of the Iceberg sink crash tests' child process, not a test by itself"]
async fn crash_child() -> anyhow::Result<()> {
    let (Ok(input), Ok(table), Ok(checkpoint), Ok(partition_by)) = (
        std::env::var("IS_CRASH_INPUT"),
        std::env::var("IS_CRASH_TABLE"),
        std::env::var("IS_CRASH_CHECKPOINT"),
        std::env::var("IS_CRASH_PARTITION_BY"),
    ) else {
        anyhow::bail!("run by the Iceberg sink crash tests only");
    };
    let ctx = SessionContext::new();
    let source = FileSource::json(&input)
        .schema(events_schema())
        .max_files_per_trigger(1);
    let sink =
        IcebergSink::new(&table).partition_by(partition_by.split(',').filter(|c| !c.is_empty()));
    let query = ctx
        .read_stream(source)
        .await?
        .write_stream()
        .sink(sink)
        .checkpoint(&checkpoint)
        .trigger(Trigger::AvailableNow)
        .start()
        .await;
    child::report(query).await
}

struct Dirs {
    _tmp: tempfile::TempDir,
    partition_by: &'static [&'static str],
    input: PathBuf,
    table: PathBuf,
    checkpoint: PathBuf,
}

impl Dirs {
    fn new(partition_by: &'static [&'static str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        std::fs::create_dir_all(&input).unwrap();
        Self {
            partition_by,
            input,
            table: tmp.path().join("table"),
            checkpoint: tmp.path().join("checkpoint"),
            _tmp: tmp,
        }
    }

    fn command(&self, failpoint: Option<&str>) -> Command {
        let mut cmd = child::command("iceberg_sink_crash::crash_child", failpoint);
        cmd.env("IS_CRASH_INPUT", &self.input)
            .env("IS_CRASH_TABLE", &self.table)
            .env("IS_CRASH_CHECKPOINT", &self.checkpoint)
            .env("IS_CRASH_PARTITION_BY", self.partition_by.join(","));
        cmd
    }

    /// The query id the checkpoint keeps.
    fn query_id(&self) -> String {
        let text = std::fs::read_to_string(self.checkpoint.join("metadata")).unwrap();
        let json = text
            .lines()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap();
        let metadata: serde_json::Value = serde_json::from_str(json).unwrap();
        metadata["query_id"].as_str().unwrap().to_string()
    }

    /// The table's rows: their count and distinct ids.
    async fn counts(&self) -> (u64, u64) {
        let rows = query_table(
            &self.table,
            "SELECT count(*) AS n, count(DISTINCT id) AS d FROM t",
        )
        .await;
        let cells: Vec<u64> = rows[0]
            .split('|')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        (cells[0], cells[1])
    }
}

#[tokio::test]
async fn sigkill_around_the_iceberg_commit_loses_and_duplicates_nothing() {
    for partition_by in PARTITIONINGS {
        for point in SINK_POINTS {
            for batch in [0, 1] {
                let at = format!("partitioned by {partition_by:?}, killed at {point}@{batch}");
                let dirs = Dirs::new(partition_by);
                for n in 0..4 {
                    write_input(&dirs.input, n);
                }
                let mut child = Child::spawn(&mut dirs.command(Some(&format!("{point}@{batch}"))));
                assert_eq!(child.wait_for_event(), Event::Failpoint, "{at}");
                child.kill();
                // Batches before the killed one are committed; the killed
                // one is committed only if the sink was done with it.
                let committed = batch + u64::from(point == "after_sink");
                assert_eq!(
                    dirs.counts().await,
                    (committed * 20, committed * 20),
                    "{at}"
                );
                let query_id = dirs.query_id();
                assert_eq!(
                    snapshot_batches(&dirs.table),
                    one_snapshot_per_batch(&query_id, committed),
                    "{at}"
                );
                write_input(&dirs.input, 4);
                Child::run_to_completion(&mut dirs.command(None));
                assert_eq!(dirs.counts().await, (100, 100), "{at}");
                assert_eq!(
                    snapshot_batches(&dirs.table),
                    one_snapshot_per_batch(&query_id, 5),
                    "{at}"
                );
                if point == "during_sink" {
                    // The killed commit's data files are left unreferenced.
                    let mut files = Vec::new();
                    collect_parquet(&dirs.table.join("data"), &mut files);
                    let live = if partition_by.is_empty() { 5 } else { 15 };
                    assert!(
                        files.len() > live,
                        "{at}: the orphans of the killed commit stay on disk ({} files)",
                        files.len()
                    );
                }
            }
        }
    }
}

/// The parquet files under `dir`, recursively.
fn collect_parquet(dir: &std::path::Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_parquet(&path, into);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            into.push(path);
        }
    }
}
