//! Object storage end to end, against a real S3-compatible server (moto,
//! started on 127.0.0.1 by `tidemill_harness::s3_server`): a pipeline whose
//! source files, checkpoint and Delta table are all on the server, killed
//! (SIGKILL) mid-run twice and restarted, writes every row exactly once
//! (counted by deltalake's own table provider and by the table's version
//! history); two runs on one `s3://` checkpoint: the second is refused while
//! the first's lease is renewed, and a run after the first was killed takes
//! over once the lease expires; a SQL pipeline through the `tidemill`
//! command with the `aws_*` connector options, its table streamed back by
//! the Delta source from S3; missing credentials and a
//! bucket that does not exist refused naming the location, with nothing
//! committed.
//!
//! The pipelines that are killed run in child processes (this test binary
//! again, with the ignored `s3::s3_child` as entry point, see `child`),
//! pointed at the server by the usual `AWS_*` environment variables.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::*;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tidemill::QueryOptions;
use tidemill::engine::{LeaseOptions, Location, StorageOptions};
use tidemill::prelude::*;
use tidemill_harness::s3_server::S3Server;

use crate::child::{self, Child, Event};
use crate::common::{events_schema, sorted_rows};

const BUCKET: &str = "tidemill-lake";

/// The lease of the tests' checkpoints: short, so a killed run's
/// checkpoint is free again in seconds, and long enough that a heartbeat
/// delayed by a loaded machine (the whole suite on 2 cores) still renews it
/// in time.
const LEASE: LeaseOptions = LeaseOptions {
    duration: Duration::from_secs(6),
    heartbeat: Duration::from_secs(1),
};

/// The child process: copies the JSON events under `S3_INPUT` (one file per
/// batch) to `S3_SINK` (`delta` or `files`) at `S3_OUTPUT`, checkpointed at
/// `S3_CHECKPOINT`, with `AvailableNow` and the lease [`LEASE`]; the store
/// from the `AWS_*` variables. A multi-threaded runtime, so the lease's
/// heartbeat goes on while the query's thread is held at a failpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "entry point of the S3 tests' child process, not a test by itself"]
async fn s3_child() -> anyhow::Result<()> {
    let (Ok(input), Ok(sink), Ok(output), Ok(checkpoint)) = (
        std::env::var("S3_INPUT"),
        std::env::var("S3_SINK"),
        std::env::var("S3_OUTPUT"),
        std::env::var("S3_CHECKPOINT"),
    ) else {
        anyhow::bail!("run by the S3 tests only");
    };
    let ctx = SessionContext::new();
    let source = FileSource::json(&input)
        .schema(events_schema())
        .max_files_per_trigger(1);
    let writer = ctx.read_stream(source).await?.write_stream();
    let writer = match sink.as_str() {
        "delta" => writer.sink(DeltaSink::new(&output)),
        _ => writer.sink(ParquetSink::new(&output)),
    };
    let query = writer
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
struct Lake {
    server: S3Server,
    ctx: SessionContext,
    store: Arc<dyn ObjectStore>,
}

impl Lake {
    fn start() -> Self {
        let server = S3Server::start();
        server.create_bucket(BUCKET);
        let ctx = SessionContext::new();
        Self {
            store: bucket_store(&server, BUCKET, &ctx.runtime_env()),
            server,
            ctx,
        }
    }

    /// Writes input file `n` (events 20n..20n+20) under `dir`.
    async fn write_input(&self, dir: &str, n: usize) {
        write_input(&self.store, dir, n).await
    }

    /// The child's command, with the server's `AWS_*` variables.
    fn command(&self, sink: &str, name: &str, failpoint: Option<&str>) -> Command {
        let mut cmd = child::command("s3::s3_child", failpoint);
        for (key, value) in self.server.env() {
            cmd.env(key, value);
        }
        cmd.env("S3_INPUT", url(&format!("{name}/input")))
            .env("S3_SINK", sink)
            .env("S3_OUTPUT", url(&format!("{name}/out")))
            .env("S3_CHECKPOINT", url(&format!("{name}/checkpoint")));
        cmd
    }

    /// The objects under `prefix`, by path.
    async fn list(&self, prefix: &str) -> Vec<String> {
        list(&self.store, prefix).await
    }

    async fn text(&self, path: &str) -> String {
        let bytes = self
            .store
            .get(&Path::from(path))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The query id in the checkpoint's metadata.
    async fn query_id(&self, checkpoint: &str) -> String {
        let text = self.text(&format!("{checkpoint}/metadata")).await;
        let json = text
            .lines()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap();
        let metadata: serde_json::Value = serde_json::from_str(json).unwrap();
        metadata["query_id"].as_str().unwrap().to_string()
    }

    /// The Delta table at `table` (a path in the bucket), opened by
    /// deltalake through the bucket's store; `None` if there is none yet.
    async fn delta_table(&self, table: &str) -> Option<deltalake::DeltaTable> {
        tidemill::connectors::register_delta_s3();
        let url = url::Url::parse(&format!("{}/", url(table))).unwrap();
        let builder = deltalake::DeltaTableBuilder::from_url(url.clone())
            .unwrap()
            .with_storage_backend(Arc::clone(&self.store), url);
        match builder.load().await {
            Ok(table) => Some(table),
            Err(deltalake::DeltaTableError::NotATable(_)) => None,
            Err(e) => panic!("opening {table}: {e}"),
        }
    }

    /// The Delta table's rows: their count and distinct ids, by
    /// deltalake's DataFusion table provider.
    async fn delta_counts(&self, table: &str) -> (u64, u64) {
        let Some(table) = self.delta_table(table).await else {
            return (0, 0);
        };
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let rows = sorted_rows(&batches);
        let cells: Vec<u64> = rows[0]
            .split('|')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        (cells[0], cells[1])
    }

    /// The table's versions (its `_delta_log` JSON commits), each with the
    /// `(appId, version)` of its `txn` actions.
    async fn delta_versions(&self, table: &str) -> Vec<(u64, Vec<(String, i64)>)> {
        let mut versions = Vec::new();
        for path in self.list(&format!("{table}/_delta_log")).await {
            let name = path.rsplit('/').next().unwrap();
            let Some(Ok(version)) = name.strip_suffix(".json").map(str::parse::<u64>) else {
                continue;
            };
            let txns = self
                .text(&path)
                .await
                .lines()
                .filter_map(|line| {
                    let action: serde_json::Value = serde_json::from_str(line).unwrap();
                    let txn = action.get("txn")?;
                    Some((
                        txn["appId"].as_str().unwrap().to_string(),
                        txn["version"].as_i64().unwrap(),
                    ))
                })
                .collect();
            versions.push((version, txns));
        }
        versions.sort();
        versions
    }
}

/// `s3://<BUCKET>/<path>`.
fn url(path: &str) -> String {
    format!("s3://{BUCKET}/{path}")
}

/// The server's settings as connector options.
pub(crate) fn options(server: &S3Server) -> StorageOptions {
    let mut options = StorageOptions::new();
    for (key, value) in server.options() {
        options.insert(key, value).unwrap();
    }
    options
}

/// The server's settings as SQL connector options, each after a comma:
/// `, aws_endpoint = '…', …`.
pub(crate) fn sql_options(server: &S3Server) -> String {
    server
        .options()
        .iter()
        .map(|(k, v)| format!(", {k} = '{v}'"))
        .collect()
}

/// The store of bucket `bucket` on `server`, registered in `runtime`.
pub(crate) fn bucket_store(
    server: &S3Server,
    bucket: &str,
    runtime: &datafusion::execution::runtime_env::RuntimeEnv,
) -> Arc<dyn ObjectStore> {
    let location =
        Location::resolve_with(&format!("s3://{bucket}/"), &options(server), runtime).unwrap();
    Arc::clone(location.store())
}

/// Writes input file `n` under `dir` in `store`: JSON lines of events
/// 20n..20n+20, symbol A, B or C by id, price id × 1.5.
pub(crate) async fn write_input(store: &Arc<dyn ObjectStore>, dir: &str, n: usize) {
    let text: String = (n * 20..n * 20 + 20)
        .map(|id| {
            format!(
                "{{\"id\": {id}, \"symbol\": \"{}\", \"price\": {}}}\n",
                ["A", "B", "C"][id % 3],
                id as f64 * 1.5
            )
        })
        .collect();
    store
        .put(
            &Path::from(format!("{dir}/part-{n:04}.json")),
            PutPayload::from(text),
        )
        .await
        .unwrap();
}

/// The objects under `prefix` in `store`, by path, sorted.
pub(crate) async fn list(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let mut paths: Vec<String> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap();
    paths.sort();
    paths
}

/// Waits out a killed run's lease.
fn wait_for_lease_expiry() {
    std::thread::sleep(LEASE.duration + Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_on_s3_killed_twice_writes_every_row_once() {
    let lake = Lake::start();
    for n in 0..5 {
        lake.write_input("crash/input", n).await;
    }
    // Killed with batch 1's data files written and its commit not.
    let mut child = Child::spawn(&mut lake.command("delta", "crash", Some("during_sink@1")));
    assert_eq!(child.wait_for_event(), Event::Failpoint);
    child.kill();
    assert_eq!(lake.delta_counts("crash/out").await, (20, 20));
    wait_for_lease_expiry();
    // Killed with batch 3 committed to the table but not to the
    // checkpoint: the restart re-runs it and the sink skips it.
    let mut child = Child::spawn(&mut lake.command("delta", "crash", Some("after_sink@3")));
    assert_eq!(child.wait_for_event(), Event::Failpoint);
    child.kill();
    assert_eq!(lake.delta_counts("crash/out").await, (80, 80));
    wait_for_lease_expiry();
    Child::run_to_completion(&mut lake.command("delta", "crash", None));

    assert_eq!(lake.delta_counts("crash/out").await, (100, 100));
    let query_id = lake.query_id("crash/checkpoint").await;
    assert_eq!(
        lake.delta_versions("crash/out").await,
        crate::delta_sink::one_version_per_batch(&query_id, 5)
    );
    // The checkpoint is on the server too: five committed batches and the
    // lease, let go by the run that finished.
    let commits = lake.list("crash/checkpoint/commits").await;
    assert_eq!(commits.len(), 5, "{commits:?}");
    let lease = lake.text("crash/checkpoint/lock").await;
    let lease: serde_json::Value = serde_json::from_str(&lease).unwrap();
    assert_eq!(lease["expires_at_ms"], 0, "{lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_an_s3_checkpoint_is_refused_until_the_lease_expires() {
    let lake = Lake::start();
    for n in 0..3 {
        lake.write_input("two/input", n).await;
    }
    // The first run holds the checkpoint, stopped before batch 1's sink.
    let mut first = Child::spawn(&mut lake.command("files", "two", Some("before_sink@1")));
    assert_eq!(first.wait_for_event(), Event::Failpoint);
    // Longer than the lease: its heartbeat keeps it.
    std::thread::sleep(LEASE.duration + Duration::from_millis(500));
    let refused = lake
        .command("files", "two", None)
        .output()
        .expect("run the second child");
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(
        stdout.contains("CHILD_REFUSED")
            && stdout.contains(&format!("checkpoint {}", url("two/checkpoint")))
            && stdout.contains("lease"),
        "{stdout}"
    );
    // Killed, the first run does not let its lease go: refused until it
    // expires, then taken over.
    first.kill();
    let mut early = Child::spawn(&mut lake.command("files", "two", None));
    assert_eq!(early.wait_for_event(), Event::Refused);
    drop(early);
    wait_for_lease_expiry();
    Child::run_to_completion(&mut lake.command("files", "two", None));

    // Every row once, read back by the files sink's own reader from S3.
    let df = FileSink::read_committed(&lake.ctx, &url("two/out"))
        .await
        .unwrap();
    let rows = sorted_rows(
        &df.aggregate(
            vec![],
            vec![
                datafusion::functions_aggregate::expr_fn::count(col("id")).alias("n"),
                datafusion::functions_aggregate::expr_fn::count_distinct(col("id")).alias("d"),
            ],
        )
        .unwrap()
        .collect()
        .await
        .unwrap(),
    );
    assert!(rows.iter().any(|r| r.contains("| 60 | 60 |")), "{rows:?}");
}

/// A run whose lease another run took over commits no further batch: the
/// check before each sink commit refuses, naming the checkpoint, and the
/// query stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_lost_its_lease_commits_no_more_batches() {
    let lake = Lake::start();
    lake.write_input("lost/input", 0).await;
    let sink = MemorySink::new();
    let source = FileSource::json(url("lost/input")).schema(events_schema());
    let query = lake
        .ctx
        .read_stream(source)
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .trigger(Trigger::ProcessingTime(Duration::from_millis(50)))
        .checkpoint(url("lost/checkpoint"))
        .options(QueryOptions {
            checkpoint_lease: LEASE,
            ..Default::default()
        })
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(sink.num_rows(), 20);

    // Another run writes the lease (as one that found it expired would),
    // conditional on the e-tag it read, retried if a renewal came between.
    let lock = Path::from("lost/checkpoint/lock");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let intruder = format!(
        r#"{{"format":1,"owner":"intruder","host":"elsewhere","pid":1,"expires_at_ms":{}}}"#,
        now_ms + 60_000
    );
    let mut taken = false;
    for _ in 0..10 {
        let meta = lake.store.head(&lock).await.unwrap();
        let put = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            }),
            ..Default::default()
        };
        if lake
            .store
            .put_opts(&lock, PutPayload::from(intruder.clone()), put)
            .await
            .is_ok()
        {
            taken = true;
            break;
        }
    }
    assert!(taken);
    // The next heartbeat finds the lease taken; the next batch refuses.
    tokio::time::sleep(LEASE.heartbeat * 3).await;
    lake.write_input("lost/input", 1).await;
    let err = tokio::time::timeout(Duration::from_secs(60), query.await_termination())
        .await
        .expect("the query stops")
        .unwrap_err()
        .to_string();
    assert!(err.contains("lost its lease"), "{err}");
    assert!(err.contains(&url("lost/checkpoint")), "{err}");
    assert_eq!(sink.num_rows(), 20);
    assert_eq!(lake.list("lost/checkpoint/commits").await.len(), 1);
    // The lease is the other run's still.
    assert!(lake.text("lost/checkpoint/lock").await.contains("intruder"));
}

/// A SQL pipeline, all on S3, through the `tidemill` command: the source
/// and the sink reach the server by their `aws_*` options, the checkpoint
/// by the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_pipeline_on_s3_runs_through_the_cli_with_connector_options() {
    let lake = Lake::start();
    for n in 0..3 {
        lake.write_input("sql/input", n).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let aws = sql_options(&lake.server);
    let file = dir.path().join("copy.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM events (id BIGINT, symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{input}', format = 'json',
        max_files_per_trigger = 1{aws});
CREATE SINK copied WITH (connector = 'delta', path = '{table}'{aws});
INSERT INTO copied SELECT id, symbol, price FROM events;
",
            input = url("sql/input"),
            table = url("sql/table"),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    cmd.args(["run", file.to_str().unwrap(), "--trigger", "available-now"])
        .args(["--checkpoint", &url("sql/checkpoint")]);
    clear_aws_env(&mut cmd);
    // The checkpoint (which takes no options) from the environment.
    for (key, value) in lake.server.env() {
        cmd.env(key, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lake.delta_counts("sql/table").await, (60, 60));
    assert_eq!(lake.list("sql/checkpoint/copied/commits").await.len(), 3);

    // The table streamed back by the Delta source from S3 (with the
    // options), checkpointed on the server too.
    let sink = MemorySink::new();
    let source = DeltaSource::new(url("sql/table")).storage_options(options(&lake.server));
    let query = lake
        .ctx
        .read_stream(source)
        .await
        .unwrap()
        .write_stream()
        .sink(sink.clone())
        .trigger(Trigger::AvailableNow)
        .checkpoint(url("sql/silver-checkpoint"))
        .start()
        .await
        .unwrap();
    query.await_termination().await.unwrap();
    assert_eq!(sink.num_rows(), 60);
    assert!(!lake.list("sql/silver-checkpoint/commits").await.is_empty());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_and_a_missing_bucket_are_refused_naming_the_location() {
    let lake = Lake::start();
    lake.write_input("bad/input", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let run = |table: &str, checkpoint: &str, env: &[(&'static str, String)]| {
        let file = dir.path().join("bad.sql");
        std::fs::write(
            &file,
            format!(
                "CREATE STREAM events (id BIGINT, symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{input}', format = 'json');
CREATE SINK copied WITH (connector = 'delta', path = '{table}');
INSERT INTO copied SELECT id, symbol, price FROM events;
",
                input = url("bad/input"),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
        cmd.args(["run", file.to_str().unwrap(), "--trigger", "available-now"])
            .args(["--checkpoint", checkpoint]);
        clear_aws_env(&mut cmd);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let local = dir.path().join("chk");
    let local = local.to_str().unwrap();

    // No credentials at all (the endpoint alone): the first S3 location met
    // is refused, before any request.
    let no_keys: Vec<_> = lake
        .server
        .env()
        .into_iter()
        .filter(|(k, _)| !k.contains("KEY"))
        .collect();
    let err = run(&url("bad/table"), &url("bad/checkpoint"), &no_keys);
    assert!(err.contains("no credentials"), "{err}");
    assert!(err.contains(&url("bad/checkpoint")), "{err}");
    let err = run(&url("bad/table"), local, &no_keys);
    assert!(err.contains("no credentials"), "{err}");
    assert!(err.contains(&url("bad/")), "{err}");

    // A table in a bucket that does not exist.
    let env = lake.server.env();
    let err = run("s3://no-such-bucket/table", local, &env);
    assert!(err.contains("s3://no-such-bucket/table"), "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
    // A checkpoint in a bucket that does not exist.
    let err = run(&url("bad/table"), "s3://no-such-bucket/chk", &env);
    assert!(err.contains("s3://no-such-bucket/chk"), "{err}");
    assert!(err.contains("does the bucket exist"), "{err}");

    // Nothing committed anywhere.
    assert_eq!(lake.delta_counts("bad/table").await, (0, 0));
    assert!(lake.list("bad/table").await.is_empty());
    assert!(lake.list("bad/checkpoint").await.is_empty());
    assert!(
        !dir.path().join("chk/copied/offsets").exists()
            || std::fs::read_dir(dir.path().join("chk/copied/offsets"))
                .unwrap()
                .next()
                .is_none(),
        "no batch logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_sink_in_a_missing_bucket_is_refused_at_start_naming_it() {
    let lake = Lake::start();
    lake.write_input("files-bad/input", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM events (id BIGINT, symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{input}', format = 'json');
CREATE SINK copied WITH (connector = 'files', path = 's3://no-such-bucket/out', format = 'parquet');
INSERT INTO copied SELECT id, symbol, price FROM events;
",
            input = url("files-bad/input"),
        ),
    )
    .unwrap();
    let checkpoint = dir.path().join("chk");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    cmd.args(["run", file.to_str().unwrap(), "--trigger", "available-now"])
        .args(["--checkpoint", checkpoint.to_str().unwrap()]);
    clear_aws_env(&mut cmd);
    cmd.envs(lake.server.env());
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot list its location s3://no-such-bucket/out (does the bucket exist?)"),
        "{err}"
    );
    assert!(err.contains("NoSuchBucket"), "{err}");
    // Refused before any batch was planned.
    let offsets = checkpoint.join("copied/offsets");
    assert!(
        !offsets.exists() || std::fs::read_dir(&offsets).unwrap().next().is_none(),
        "no batch logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidemill_status_reads_a_checkpoint_on_s3() {
    let lake = Lake::start();
    for n in 0..3 {
        lake.write_input("status/input", n).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let aws = sql_options(&lake.server);
    let file = dir.path().join("status.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE STREAM events (id BIGINT, symbol VARCHAR, price DOUBLE)
  WITH (connector = 'files', path = '{input}', format = 'json',
        max_files_per_trigger = 1{aws});
CREATE SINK copied WITH (connector = 'files', path = '{copied}', format = 'parquet'{aws});
CREATE SINK counts WITH (connector = 'delta', path = '{counts}', output_mode = 'complete'{aws});
INSERT INTO copied SELECT id, symbol, price FROM events;
INSERT INTO counts SELECT symbol, count(*) AS n FROM events GROUP BY symbol;
",
            input = url("status/input"),
            copied = url("status/copied"),
            counts = url("status/counts"),
        ),
    )
    .unwrap();
    let checkpoint = url("status/checkpoint");
    let tidemill = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
        cmd.args(args);
        clear_aws_env(&mut cmd);
        cmd.envs(lake.server.env());
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "tidemill {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let file = file.to_str().unwrap();
    tidemill(&[
        "run",
        file,
        "--trigger",
        "available-now",
        "--checkpoint",
        &checkpoint,
    ]);
    // One more file the queries have not read.
    lake.write_input("status/input", 3).await;

    let json = tidemill(&["status", &checkpoint, "--pipeline", file, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["checkpoint"], checkpoint.as_str());
    let queries = report["queries"].as_array().unwrap();
    let names: Vec<&str> = queries
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["copied", "counts"]);
    for query in queries {
        assert_eq!(query["last_committed"]["batch_id"], 2, "{query}");
        assert_eq!(query["in_flight"], serde_json::Value::Null, "{query}");
        // The run ended: its lease was given back.
        assert_eq!(query["lock"]["state"], "free", "{query}");
        let source = &query["sources"][0];
        assert_eq!(source["lag"]["unit"], "files", "{query}");
        assert_eq!(source["lag"]["behind"], 1, "{query}");
    }
    let copied = &queries[0];
    assert_eq!(
        copied["path"],
        format!("{checkpoint}/copied").as_str(),
        "{copied}"
    );
    assert!(copied["sink"].as_str().unwrap().contains("status/copied"));
    let store = &queries[1]["operators"][0]["stores"][0];
    assert_eq!(store["rows"], 3, "{store}");
    assert!(store["files"].as_u64().unwrap() > 0, "{store}");
    assert!(store["bytes"].as_u64().unwrap() > 0, "{store}");
    assert_eq!(
        store["path"],
        format!("{checkpoint}/counts/state/0").as_str()
    );

    // One query's checkpoint, as text.
    let text = tidemill(&["status", &format!("{checkpoint}/copied")]);
    assert!(text.contains("copied"), "{text}");
    assert!(text.contains("batch 2"), "{text}");

    // A prefix that holds no checkpoint.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    cmd.args(["status", &url("status/input")]);
    clear_aws_env(&mut cmd);
    cmd.envs(lake.server.env());
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a Tidemill checkpoint"), "{err}");
}
