//! The Iceberg sink on object storage, against a real S3-compatible server
//! (moto, started on 127.0.0.1 by `tidemill_harness::s3_server`): a
//! pipeline whose input, checkpoint and Iceberg table are all in a bucket,
//! killed (SIGKILL) inside a batch's commit and after another's and
//! restarted, holds every batch exactly once, counted by rows (read by
//! pyiceberg from S3) and by the table's snapshot history (each batch id
//! once); a SQL pipeline through the `tidemill` command reaching the
//! server by its `aws_*` options writes a table pyiceberg reads back from
//! S3, schema and rows; missing credentials and a bucket that does not
//! exist are refused naming the table's location, with nothing committed.
//!
//! The pipelines that are killed run in child processes (this test binary
//! again, with the ignored `iceberg_s3::iceberg_s3_child` as entry point),
//! pointed at the server by the usual `AWS_*` environment variables.

use std::path::Path as FsPath;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::*;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tidemill::QueryOptions;
use tidemill::engine::LeaseOptions;
use tidemill::prelude::*;
use tidemill_harness::s3_server::{ACCESS_KEY_ID, REGION, S3Server, SECRET_ACCESS_KEY};

use crate::child::{self, Child, Event};
use crate::common::events_schema;
use crate::iceberg_sink::one_snapshot_per_batch;
use crate::s3;

const BUCKET: &str = "tidemill-iceberg";

/// The checkpoints' lease: short, so that a killed run's checkpoint is
/// free again in seconds (the restart waits it out).
const LEASE: LeaseOptions = LeaseOptions {
    duration: Duration::from_secs(6),
    heartbeat: Duration::from_secs(1),
};

/// `s3://<BUCKET>/<path>`.
fn url(path: &str) -> String {
    format!("s3://{BUCKET}/{path}")
}

/// The child process: copies the JSON events under `IS3_INPUT` (one file
/// per batch) into the Iceberg table at `IS3_TABLE`, partitioned by
/// `symbol`, checkpointed at `IS3_CHECKPOINT`, with `AvailableNow` and the
/// lease [`LEASE`]; every store from the `AWS_*` variables. A
/// multi-threaded runtime, so that the lease's heartbeat goes on while the
/// query's thread is held at a failpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the Iceberg-on-S3 tests' child process, not a test by itself"]
async fn iceberg_s3_child() -> anyhow::Result<()> {
    let (Ok(input), Ok(table), Ok(checkpoint)) = (
        std::env::var("IS3_INPUT"),
        std::env::var("IS3_TABLE"),
        std::env::var("IS3_CHECKPOINT"),
    ) else {
        anyhow::bail!("run by the Iceberg-on-S3 tests only");
    };
    let ctx = SessionContext::new();
    let source = FileSource::json(&input)
        .schema(events_schema())
        .max_files_per_trigger(1);
    let query = ctx
        .read_stream(source)
        .await?
        .write_stream()
        .sink(IcebergSink::new(&table).partition_by(["symbol"]))
        .checkpoint(&checkpoint)
        .trigger(Trigger::AvailableNow)
        .options(QueryOptions {
            checkpoint_lease: LEASE,
            ..Default::default()
        })
        .start()
        .await;
    child::report(query).await
}

/// A server with the bucket [`BUCKET`], and the bucket's store as the
/// tests reach it.
struct Bucket {
    server: S3Server,
    store: Arc<dyn ObjectStore>,
}

impl Bucket {
    fn start() -> Self {
        let server = S3Server::start();
        server.create_bucket(BUCKET);
        Self {
            store: s3::bucket_store(&server, BUCKET, &SessionContext::new().runtime_env()),
            server,
        }
    }

    /// Writes input file `n` under `dir` (see [`s3::write_input`]).
    async fn write_input(&self, dir: &str, n: usize) {
        s3::write_input(&self.store, dir, n).await
    }

    /// The child's command for the pipeline `name` (its input, table and
    /// checkpoint under `name/` in the bucket).
    fn command(&self, name: &str, failpoint: Option<&str>) -> Command {
        let mut cmd = child::command("iceberg_s3::iceberg_s3_child", failpoint);
        for (key, value) in self.server.env() {
            cmd.env(key, value);
        }
        cmd.env("IS3_INPUT", url(&format!("{name}/input")))
            .env("IS3_TABLE", url(&format!("{name}/table")))
            .env("IS3_CHECKPOINT", url(&format!("{name}/checkpoint")));
        cmd
    }

    /// The objects under `prefix`, by path.
    async fn list(&self, prefix: &str) -> Vec<String> {
        s3::list(&self.store, prefix).await
    }

    /// The object at `path` as text; `None` if there is none.
    async fn text(&self, path: &str) -> Option<String> {
        match self.store.get(&Path::from(path)).await {
            Ok(got) => Some(String::from_utf8(got.bytes().await.unwrap().to_vec()).unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading {path}: {e}"),
        }
    }

    /// The query id in the checkpoint's metadata.
    async fn query_id(&self, checkpoint: &str) -> String {
        let text = self.text(&format!("{checkpoint}/metadata")).await.unwrap();
        let json = text
            .lines()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap();
        let metadata: serde_json::Value = serde_json::from_str(json).unwrap();
        metadata["query_id"].as_str().unwrap().to_string()
    }

    /// The latest metadata of the table at `table` (a path in the bucket),
    /// found as a Hadoop-catalog reader finds it: the version hint, then
    /// any later `v<N>.metadata.json`; `None` if there is none.
    async fn latest_metadata(&self, table: &str) -> Option<serde_json::Value> {
        let hint = self
            .text(&format!("{table}/metadata/version-hint.text"))
            .await;
        let mut version: u64 = hint.map_or(0, |h| h.trim().parse().unwrap());
        while self
            .text(&format!("{table}/metadata/v{}.metadata.json", version + 1))
            .await
            .is_some()
        {
            version += 1;
        }
        let text = self
            .text(&format!("{table}/metadata/v{version}.metadata.json"))
            .await?;
        Some(serde_json::from_str(&text).unwrap())
    }

    /// The table's snapshots in commit order, as `(query id, batch id)`
    /// from their summaries, each checked to be an append.
    async fn snapshot_batches(&self, table: &str) -> Vec<(String, u64)> {
        let Some(metadata) = self.latest_metadata(table).await else {
            return Vec::new();
        };
        assert_eq!(metadata["location"], url(table), "{metadata}");
        let mut snapshots: Vec<serde_json::Value> = metadata["snapshots"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        snapshots.sort_by_key(|s| s["sequence-number"].as_i64().unwrap());
        snapshots
            .iter()
            .map(|s| {
                let summary = &s["summary"];
                assert_eq!(summary["operation"], "append", "{s}");
                (
                    summary["tidemill.query-id"].as_str().unwrap().to_string(),
                    summary["tidemill.batch-id"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap(),
                )
            })
            .collect()
    }

    /// The table at `table` (a path in the bucket) as pyiceberg reads it
    /// from the server (see [`S3_READER`]).
    fn pyiceberg(&self, table: &str) -> serde_json::Value {
        let properties = serde_json::json!({
            "s3.endpoint": self.server.endpoint(),
            "s3.access-key-id": ACCESS_KEY_ID,
            "s3.secret-access-key": SECRET_ACCESS_KEY,
            "s3.region": REGION,
        });
        let output = Command::new(crate::pyiceberg::python())
            .args(["-c", S3_READER, &url(table), &properties.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("running pyiceberg");
        assert!(
            output.status.success(),
            "pyiceberg could not read {}: {}",
            url(table),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("pyiceberg's JSON")
    }

    /// The rows of the table and their distinct ids, by pyiceberg; (0, 0)
    /// if there is no table yet.
    async fn counts(&self, table: &str) -> (u64, u64) {
        if self.latest_metadata(table).await.is_none() {
            return (0, 0);
        }
        let read = self.pyiceberg(table);
        (
            read["rows"].as_u64().unwrap(),
            read["distinct_ids"].as_u64().unwrap(),
        )
    }
}

/// Reads the table `StaticTable.from_metadata` finds at `argv[1]` (a table
/// directory on S3, through its version hint) with the FileIO properties
/// `argv[2]` (JSON: `s3.endpoint`, the keys, the region), and prints as
/// JSON: its columns `[name, type, required]`, its partition fields
/// `[column, transform]`, its location, its row count and the number of
/// distinct `id`s, and its snapshots in commit order `[operation, query
/// id, batch id, added records]`.
const S3_READER: &str = r#"
import json, sys
from pyiceberg.table import StaticTable
table = StaticTable.from_metadata(sys.argv[1], properties=json.loads(sys.argv[2]))
schema = table.schema()
rows = table.scan().to_arrow()
snapshots = sorted(table.snapshots(), key=lambda s: s.sequence_number)
print(json.dumps({
    "columns": [[f.name, str(f.field_type), f.required] for f in schema.fields],
    "partition": [[schema.find_field(p.source_id).name, str(p.transform)] for p in table.spec().fields],
    "location": table.metadata.location,
    "rows": rows.num_rows,
    "distinct_ids": len(set(rows.column("id").to_pylist())),
    "snapshots": [
        [s.summary.operation.value, s.summary["tidemill.query-id"], s.summary["tidemill.batch-id"],
         s.summary["added-records"]]
        for s in snapshots
    ],
}))
"#;

/// Waits out a killed run's lease.
fn wait_for_lease_expiry() {
    std::thread::sleep(LEASE.duration + Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iceberg_table_on_s3_killed_twice_holds_every_batch_once() {
    let bucket = Bucket::start();
    for n in 0..5 {
        bucket.write_input("crash/input", n).await;
    }
    // Killed inside batch 1's commit: its data files, manifest and
    // manifest list are written, the metadata version naming them is not.
    let mut child = Child::spawn(&mut bucket.command("crash", Some("during_sink@1")));
    assert_eq!(child.wait_for_event(), Event::Failpoint);
    child.kill();
    let query_id = bucket.query_id("crash/checkpoint").await;
    assert_eq!(bucket.counts("crash/table").await, (20, 20));
    assert_eq!(
        bucket.snapshot_batches("crash/table").await,
        one_snapshot_per_batch(&query_id, 1)
    );
    let orphans = bucket.list("crash/table/data").await;
    wait_for_lease_expiry();
    // Killed with batch 3 committed to the table but not to the
    // checkpoint: the restart re-runs it and the sink skips it.
    let mut child = Child::spawn(&mut bucket.command("crash", Some("after_sink@3")));
    assert_eq!(child.wait_for_event(), Event::Failpoint);
    child.kill();
    assert_eq!(bucket.counts("crash/table").await, (80, 80));
    assert_eq!(
        bucket.snapshot_batches("crash/table").await,
        one_snapshot_per_batch(&query_id, 4)
    );
    wait_for_lease_expiry();
    Child::run_to_completion(&mut bucket.command("crash", None));

    // Every batch once: by rows, and by the snapshot history (each
    // snapshot's batch id once, in order, all of the one query).
    assert_eq!(bucket.counts("crash/table").await, (100, 100));
    assert_eq!(
        bucket.snapshot_batches("crash/table").await,
        one_snapshot_per_batch(&query_id, 5)
    );
    let read = bucket.pyiceberg("crash/table");
    let snapshots: Vec<(String, String)> = read["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[2].as_str().unwrap().to_string(), s[3].to_string()))
        .collect();
    assert_eq!(
        snapshots,
        (0..5)
            .map(|b| (b.to_string(), "\"20\"".to_string()))
            .collect::<Vec<_>>(),
        "{read}"
    );
    // The killed commit's data files stay, referenced by no snapshot: the
    // five batches' 15 files (three symbols each) and batch 1's orphans.
    let files = bucket.list("crash/table/data").await;
    assert!(
        files.len() > 15 && orphans.len() > 3,
        "{orphans:?} {files:?}"
    );
    // The checkpoint is on the server too: five committed batches, and
    // the lease let go by the run that finished.
    assert_eq!(bucket.list("crash/checkpoint/commits").await.len(), 5);
    let lease = bucket.text("crash/checkpoint/lock").await.unwrap();
    let lease: serde_json::Value = serde_json::from_str(&lease).unwrap();
    assert_eq!(lease["expires_at_ms"], 0, "{lease}");
}

/// Two queries writing one table on S3 at once: the second's creation of
/// the table loses the conditional put of `v1.metadata.json` (moto answers
/// `If-None-Match: *` on an existing key with 412) and appends to the
/// first's table instead of replacing it; their racing commits of the next
/// versions lose no snapshot. Both sinks reach the server by their
/// options.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_of_one_s3_table_lose_nothing() {
    use tidemill::engine::{OutputMode, Sink, SinkContext};

    let bucket = Bucket::start();
    let options = s3::options(&bucket.server);
    let context = |query: &str| SinkContext {
        session: SessionContext::new(),
        query_name: None,
        query_id: query.to_string(),
        schema: events_schema(),
        output_mode: OutputMode::Append,
        durability: Default::default(),
    };
    let sink = || Arc::new(IcebergSink::new(url("two/table")).storage_options(options.clone()));
    let (a, b) = (sink(), sink());
    // Both open before the table exists; both create it.
    a.open(&context("qa")).await.unwrap();
    b.open(&context("qb")).await.unwrap();
    a.add_batch(0, events_schema(), vec![crate::common::events(0..2)])
        .await
        .unwrap();
    b.add_batch(0, events_schema(), vec![crate::common::events(100..102)])
        .await
        .unwrap();
    let run = |sink: Arc<IcebergSink>, offset: i64| {
        tokio::spawn(async move {
            for batch in 1..6u64 {
                let id = offset + batch as i64 * 2;
                sink.add_batch(
                    batch,
                    events_schema(),
                    vec![crate::common::events(id..id + 2)],
                )
                .await
                .unwrap();
            }
        })
    };
    let (ra, rb) = tokio::join!(run(a, 0), run(b, 100));
    ra.unwrap();
    rb.unwrap();

    let history = bucket.snapshot_batches("two/table").await;
    for query in ["qa", "qb"] {
        let of: Vec<u64> = history
            .iter()
            .filter(|s| s.0 == query)
            .map(|s| s.1)
            .collect();
        assert_eq!(of, (0..6).collect::<Vec<_>>(), "{query}: {history:?}");
    }
    assert_eq!(history.len(), 12, "{history:?}");
    assert_eq!(bucket.counts("two/table").await, (24, 24));
    // The first version is still the first writer's table: the second's
    // creation did not replace it.
    let first: serde_json::Value = serde_json::from_str(
        &bucket
            .text("two/table/metadata/v1.metadata.json")
            .await
            .unwrap(),
    )
    .unwrap();
    let latest = bucket.latest_metadata("two/table").await.unwrap();
    assert_eq!(first["table-uuid"], latest["table-uuid"]);
}

/// Removes every `AWS_*` variable the test process has from `cmd`'s
/// environment.
fn clear_aws_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
}

/// Runs the pipeline file `sql` with `tidemill run --trigger available-now`
/// and the checkpoint `checkpoint`, with `env` as its only `AWS_*`
/// variables; its exit status and standard error.
fn run_cli(
    dir: &FsPath,
    sql: &str,
    checkpoint: &str,
    env: &[(&'static str, String)],
) -> (bool, String) {
    let file = dir.join("pipeline.sql");
    std::fs::write(&file, sql).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    cmd.args(["run", file.to_str().unwrap(), "--trigger", "available-now"])
        .args(["--checkpoint", checkpoint]);
    clear_aws_env(&mut cmd);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A pipeline file copying the JSON events at `input` into an Iceberg
/// table at `table`, with `options` (`, key = 'value'…`) on the sink.
fn copy_pipeline(input: &str, table: &str, options: &str) -> String {
    format!(
        "CREATE STREAM events (id BIGINT, symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{input}', format = 'json', max_files_per_trigger = 1);
CREATE SINK copied WITH (connector = 'iceberg', path = '{table}'{options});
INSERT INTO copied SELECT id, symbol, price FROM events;
"
    )
}

/// A SQL pipeline through the `tidemill` command, its sink reaching the
/// server by its `aws_*` options only (no `AWS_*` variable), its input and
/// checkpoint on local disk: pyiceberg reads the table back from S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_pipeline_writes_an_iceberg_table_on_s3_that_pyiceberg_reads() {
    let bucket = Bucket::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    for n in 0..3 {
        crate::crash::write_input(&input, n);
    }
    let aws = s3::sql_options(&bucket.server);
    let checkpoint = dir.path().join("checkpoint");
    let (ok, stderr) = run_cli(
        dir.path(),
        &copy_pipeline(
            input.to_str().unwrap(),
            &url("sql/table"),
            &format!(", partition_by = 'symbol'{aws}"),
        ),
        checkpoint.to_str().unwrap(),
        &[],
    );
    assert!(ok, "{stderr}");

    let read = bucket.pyiceberg("sql/table");
    assert_eq!(
        read["columns"],
        serde_json::json!([
            ["id", "long", false],
            ["symbol", "string", false],
            ["price", "double", false],
        ]),
        "{read}"
    );
    assert_eq!(
        read["partition"],
        serde_json::json!([["symbol", "identity"]]),
        "{read}"
    );
    assert_eq!(read["location"], url("sql/table"), "{read}");
    assert_eq!(read["rows"], 60, "{read}");
    assert_eq!(read["distinct_ids"], 60, "{read}");
    let batches: Vec<&str> = read["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[2].as_str().unwrap())
        .collect();
    assert_eq!(batches, ["0", "1", "2"], "{read}");
    // Data files, manifests, manifest lists and metadata are all in the
    // bucket.
    let objects = bucket.list("sql/table").await;
    for wanted in [
        "sql/table/metadata/v1.metadata.json",
        "sql/table/metadata/v4.metadata.json",
        "sql/table/metadata/version-hint.text",
    ] {
        assert!(objects.iter().any(|o| o == wanted), "{wanted}: {objects:?}");
    }
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with("sql/table/metadata/snap-") && o.ends_with(".avro")),
        "{objects:?}"
    );
    assert_eq!(
        objects
            .iter()
            .filter(|o| o.starts_with("sql/table/data/symbol=") && o.ends_with(".parquet"))
            .count(),
        9,
        "{objects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_and_a_missing_bucket_are_refused_naming_the_table() {
    let bucket = Bucket::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    crate::crash::write_input(&input, 0);
    let input = input.to_str().unwrap().to_string();
    let checkpoint = dir.path().join("checkpoint");
    let checkpoint = checkpoint.to_str().unwrap().to_string();
    let table = url("bad/table");

    // The endpoint, no keys: refused before any request.
    let no_keys: Vec<_> = bucket
        .server
        .env()
        .into_iter()
        .filter(|(k, _)| !k.contains("KEY"))
        .collect();
    let (ok, err) = run_cli(
        dir.path(),
        &copy_pipeline(&input, &table, ""),
        &checkpoint,
        &no_keys,
    );
    assert!(!ok);
    assert!(err.contains("no credentials"), "{err}");
    assert!(
        err.contains(&format!("invalid Iceberg table location '{table}'")),
        "{err}"
    );

    // A bucket that does not exist: the server's NoSuchBucket, naming the
    // table.
    let (ok, err) = run_cli(
        dir.path(),
        &copy_pipeline(&input, "s3://no-such-bucket/table", ""),
        &checkpoint,
        &bucket.server.env(),
    );
    assert!(!ok);
    assert!(
        err.contains("opening the Iceberg table 's3://no-such-bucket/table' failed"),
        "{err}"
    );
    assert!(err.contains("NoSuchBucket"), "{err}");

    // Nothing committed: no object in the bucket, no batch logged.
    assert!(bucket.list("bad").await.is_empty());
    let offsets = dir.path().join("checkpoint/copied/offsets");
    assert!(
        !offsets.exists() || std::fs::read_dir(&offsets).unwrap().next().is_none(),
        "no batch logged"
    );
}
