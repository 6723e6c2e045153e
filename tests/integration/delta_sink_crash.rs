//! Crash tests of the Delta sink: a pipeline copying events into a Delta
//! table runs in a child process (this test binary again, with the ignored
//! `delta_sink_crash::crash_child` as its entry point), is killed with
//! SIGKILL before, inside and after the sink's commit of a batch
//! (`before_sink`; `during_sink`: the batch's data files written, its
//! `_delta_log` commit not; `after_sink`: committed, the engine's commit
//! log not written), and restarted. The table must then hold every row
//! exactly once, counted by deltalake's reader and by the table's version
//! history: one version per batch, each carrying the query's transaction
//! for its batch id.

use std::path::PathBuf;
use std::process::Command;

use datafusion::prelude::*;
use tidemill::prelude::*;

use crate::child::{self, Child, Event};
use crate::common::events_schema;
use crate::crash::write_input;
use crate::delta_sink::{log_versions, query_table};

/// The failpoints of a batch around the sink's commit, in order.
const SINK_POINTS: [&str; 3] = ["before_sink", "during_sink", "after_sink"];

/// The configurations under test: partition columns, and the checkpoint
/// interval (2: a Delta checkpoint after every second version, so restarts
/// read the transaction through checkpoints too).
const CONFIGS: [(&[&str], Option<u64>); 2] = [(&[], None), (&["symbol"], Some(2))];

/// The child process: copies the JSON events of `DS_CRASH_INPUT` (one file
/// per batch) into the Delta table at `DS_CRASH_TABLE`, partitioned by the
/// comma-separated `DS_CRASH_PARTITION_BY`, with the checkpoint interval
/// `DS_CRASH_INTERVAL` (if not empty), with `AvailableNow`.
#[tokio::test]
#[ignore = "entry point of the Delta sink crash tests' child process, not a test by itself"]
async fn crash_child() -> anyhow::Result<()> {
    let (Ok(input), Ok(table), Ok(checkpoint), Ok(partition_by), Ok(interval)) = (
        std::env::var("DS_CRASH_INPUT"),
        std::env::var("DS_CRASH_TABLE"),
        std::env::var("DS_CRASH_CHECKPOINT"),
        std::env::var("DS_CRASH_PARTITION_BY"),
        std::env::var("DS_CRASH_INTERVAL"),
    ) else {
        anyhow::bail!("run by the Delta sink crash tests only");
    };
    let ctx = SessionContext::new();
    let source = FileSource::json(&input)
        .schema(events_schema())
        .max_files_per_trigger(1);
    let mut sink =
        DeltaSink::new(&table).partition_by(partition_by.split(',').filter(|c| !c.is_empty()));
    if let Ok(n) = interval.parse() {
        sink = sink.checkpoint_interval(n);
    }
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
    interval: Option<u64>,
    input: PathBuf,
    table: PathBuf,
    checkpoint: PathBuf,
}

impl Dirs {
    fn new(partition_by: &'static [&'static str], interval: Option<u64>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        std::fs::create_dir_all(&input).unwrap();
        Self {
            partition_by,
            interval,
            input,
            table: tmp.path().join("table"),
            checkpoint: tmp.path().join("checkpoint"),
            _tmp: tmp,
        }
    }

    fn command(&self, failpoint: Option<&str>) -> Command {
        let mut cmd = child::command("delta_sink_crash::crash_child", failpoint);
        cmd.env("DS_CRASH_INPUT", &self.input)
            .env("DS_CRASH_TABLE", &self.table)
            .env("DS_CRASH_CHECKPOINT", &self.checkpoint)
            .env("DS_CRASH_PARTITION_BY", self.partition_by.join(","))
            .env(
                "DS_CRASH_INTERVAL",
                self.interval.map(|n| n.to_string()).unwrap_or_default(),
            );
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

    /// The table's rows: their count and distinct ids, by deltalake's
    /// reader.
    async fn counts(&self) -> (u64, u64) {
        let url = url::Url::from_directory_path(&self.table).unwrap();
        match deltalake::open_table(url).await {
            Err(deltalake::DeltaTableError::NotATable(_)) => return (0, 0),
            other => drop(other.unwrap()),
        }
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
async fn sigkill_around_the_delta_commit_loses_and_duplicates_nothing() {
    for (partition_by, interval) in CONFIGS {
        for point in SINK_POINTS {
            for batch in [0, 1] {
                let at = format!(
                    "partitioned by {partition_by:?}, interval {interval:?}, killed at \
                     {point}@{batch}"
                );
                let dirs = Dirs::new(partition_by, interval);
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
                write_input(&dirs.input, 4);
                Child::run_to_completion(&mut dirs.command(None));
                assert_eq!(dirs.counts().await, (100, 100), "{at}");
                let query_id = dirs.query_id();
                assert_eq!(
                    log_versions(&dirs.table),
                    crate::delta_sink::one_version_per_batch(&query_id, 5),
                    "{at}"
                );
                if interval.is_some() {
                    assert!(
                        dirs.table
                            .join("_delta_log/00000000000000000003.checkpoint.parquet")
                            .exists(),
                        "{at}: a checkpoint at version 3"
                    );
                }
            }
        }
    }
}
