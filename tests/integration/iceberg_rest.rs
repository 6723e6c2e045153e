//! The Iceberg sink through a real Iceberg REST catalog: Rustberg, a REST
//! catalog server from crates.io started on 127.0.0.1 by
//! `tidemill_harness::rest_catalog` (installed on first use), with its
//! warehouse on local disk. Each table is read back through the same
//! catalog by the Python `pyiceberg` package's `RestCatalog` (installed on
//! first use, see `pyiceberg.rs`).
//!
//! - a streaming query creates its table (and namespace) in the catalog on
//!   its first batch and appends one snapshot per batch; a pipeline file's
//!   `connector = 'iceberg'` sink with `catalog_uri` and `table` does too;
//! - killed (SIGKILL, in a child process) before and after the sink's
//!   commit of a batch (also inside it: the batch's files written, the
//!   commit not sent) and restarted, the query leaves every row once and
//!   each batch id once in the snapshot summaries;
//! - the catalog down for a while between two batches: the batch fails as
//!   a transient error and is tried again until the catalog is back;
//! - another writer committing between the sink's load of the table and
//!   its commit (through a proxy in front of the catalog that lets the
//!   other writer in just before forwarding the sink's commit) makes the
//!   catalog answer 409; the sink's transaction retries from the new
//!   snapshot and keeps the other writer's rows; a conflict on every
//!   attempt fails the batch, naming the table and the catalog, and a
//!   restart then commits it once;
//! - an unreachable catalog and a table whose schema does not fit are
//!   refused when the query starts, and a location the catalog refuses by
//!   the first batch, naming the table and the catalog, with nothing
//!   committed.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::prelude::*;
use serde_json::{Value, json};
use tidemill::prelude::*;
use tidemill::sql::{Pipeline, RunOptions};
use tidemill::{QueryOptions, RetryPolicy};
use tidemill_harness::rest_catalog::RestCatalogServer;

use crate::child::{self, Child, Event};
use crate::common::events_schema;
use crate::crash::write_input;
use crate::pyiceberg;

/// Loads the table `argv[2]` from the REST catalog at `argv[1]` with
/// pyiceberg and prints, as JSON: whether it exists, its location, its
/// columns `[name, type, required]`, its partition fields `[column,
/// transform]`, its row count, the number of distinct `id`s, and its
/// snapshots in commit order `[operation, query id, batch id, added
/// records]` (ids `null` for a snapshot another writer committed).
const READER: &str = r#"
import json, sys
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import NoSuchTableError
catalog = RestCatalog("tidemill-test", uri=sys.argv[1])
try:
    table = catalog.load_table(sys.argv[2])
except NoSuchTableError:
    print(json.dumps({"exists": False}))
    sys.exit(0)
schema = table.schema()
rows = table.scan().to_arrow()
snapshots = sorted(table.snapshots(), key=lambda s: s.sequence_number)
print(json.dumps({
    "exists": True,
    "location": table.location(),
    "columns": [[f.name, str(f.field_type), f.required] for f in schema.fields],
    "partition": [[schema.find_field(p.source_id).name, str(p.transform)] for p in table.spec().fields],
    "rows": rows.num_rows,
    "distinct_ids": len(set(rows.column("id").to_pylist())),
    "snapshots": [
        [s.summary.operation.value, s.summary["tidemill.query-id"], s.summary["tidemill.batch-id"],
         s.summary["added-records"]]
        for s in snapshots
    ],
}))
"#;

/// Another writer: appends `argv[4]` rows with ids from `argv[3]` (symbol
/// `Z`) to the table `argv[2]` of the REST catalog at `argv[1]`, with
/// pyiceberg.
const WRITER: &str = r#"
import sys
import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
catalog = RestCatalog("other-writer", uri=sys.argv[1])
table = catalog.load_table(sys.argv[2])
first, n = int(sys.argv[3]), int(sys.argv[4])
data = pa.table(
    {
        "id": pa.array(range(first, first + n), pa.int64()),
        "symbol": pa.array(["Z"] * n, pa.string()),
        "price": pa.array([0.5] * n, pa.float64()),
    },
    schema=table.schema().as_arrow(),
)
table.append(data)
"#;

/// Creates the table `argv[2]` (and its namespace) in the REST catalog at
/// `argv[1]` with the columns `id long, symbol string, price string`, with
/// pyiceberg.
const CREATOR: &str = r#"
import sys
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType
catalog = RestCatalog("other-writer", uri=sys.argv[1])
namespace = sys.argv[2].rsplit(".", 1)[0]
catalog.create_namespace_if_not_exists(namespace)
catalog.create_table(sys.argv[2], schema=Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "symbol", StringType(), required=True),
    NestedField(3, "price", StringType(), required=True),
))
"#;

/// Runs one of the scripts above with pyiceberg's Python; its standard
/// output.
fn python(script: &str, args: &[&str]) -> String {
    let output = Command::new(pyiceberg::python())
        .args(["-c", script])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running pyiceberg");
    assert!(
        output.status.success(),
        "pyiceberg {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The table `table` of the catalog at `uri` as pyiceberg reads it (see
/// [`READER`]).
fn read(uri: &str, table: &str) -> Value {
    serde_json::from_str(&python(READER, &[uri, table])).expect("the reader's JSON")
}

/// Another writer appends `n` rows with ids from `first` (see [`WRITER`]).
fn append_as_another_writer(uri: &str, table: &str, first: u64, n: u64) {
    python(WRITER, &[uri, table, &first.to_string(), &n.to_string()]);
}

/// The snapshots of `read` as `(query id, batch id)`, `None`s for another
/// writer's, each checked to be an append.
fn snapshot_batches(read: &Value) -> Vec<(Option<String>, Option<u64>)> {
    read["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("no snapshots in {read}"))
        .iter()
        .map(|s| {
            assert_eq!(s[0], "append", "{s}");
            (
                s[1].as_str().map(str::to_string),
                s[2].as_str().map(|b| b.parse().unwrap()),
            )
        })
        .collect()
}

/// Snapshots of batches 0..n of the query `query_id`, in order.
fn batches(query_id: &str, n: u64) -> Vec<(Option<String>, Option<u64>)> {
    (0..n)
        .map(|b| (Some(query_id.to_string()), Some(b)))
        .collect()
}

/// The id of the query whose checkpoint is `checkpoint`.
fn query_id(checkpoint: &Path) -> String {
    let text = std::fs::read_to_string(checkpoint.join("metadata")).unwrap();
    let json = text
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap();
    let metadata: Value = serde_json::from_str(json).unwrap();
    metadata["query_id"].as_str().unwrap().to_string()
}

struct Dirs {
    tmp: tempfile::TempDir,
    input: PathBuf,
}

impl Dirs {
    /// Input of `files` JSON files of 20 events each (ids 20n..20n+20).
    fn new(files: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        std::fs::create_dir_all(&input).unwrap();
        for n in 0..files {
            write_input(&input, n);
        }
        Self { tmp, input }
    }

    fn checkpoint(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The events, one file per batch.
    async fn events(&self, ctx: &SessionContext) -> DataFrame {
        ctx.read_stream(
            FileSource::json(self.input.to_str().unwrap())
                .schema(events_schema())
                .max_files_per_trigger(1),
        )
        .await
        .unwrap()
    }

    /// Runs the events into `sink` to the end of the input with the
    /// checkpoint `checkpoint` and `options`; the query's id, or how it
    /// failed.
    async fn run(
        &self,
        sink: IcebergSink,
        checkpoint: &str,
        options: QueryOptions,
    ) -> tidemill::Result<String> {
        let ctx = SessionContext::new();
        let query = self
            .events(&ctx)
            .await
            .write_stream()
            .sink(sink)
            .checkpoint(self.checkpoint(checkpoint).to_str().unwrap())
            .trigger(Trigger::AvailableNow)
            .options(options)
            .start()
            .await?;
        query.await_termination().await?;
        Ok(query.id().to_string())
    }
}

#[tokio::test]
async fn a_query_creates_and_appends_to_a_rest_catalog_table_read_back_by_pyiceberg() {
    let server = RestCatalogServer::start();
    let uri = server.uri();
    let dirs = Dirs::new(3);
    let sink = || {
        IcebergSink::rest(&uri, "lake.trades")
            .unwrap()
            .partition_by(["symbol"])
    };
    let query_id = dirs
        .run(sink(), "cp", QueryOptions::default())
        .await
        .unwrap();
    let table = read(&uri, "lake.trades");
    assert_eq!(
        table["columns"],
        json!([
            ["id", "long", true],
            ["symbol", "string", true],
            ["price", "double", true]
        ]),
        "{table}"
    );
    assert_eq!(table["partition"], json!([["symbol", "identity"]]));
    assert_eq!(
        (table["rows"].clone(), table["distinct_ids"].clone()),
        (60.into(), 60.into())
    );
    assert_eq!(snapshot_batches(&table), batches(&query_id, 3));
    let added: Vec<&str> = table["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[3].as_str().unwrap())
        .collect();
    assert_eq!(added, ["20", "20", "20"]);
    // The catalog chose the location, in its warehouse; the sink wrote the
    // data files there, a directory per symbol.
    let location = format!("{}/lake/trades", server.warehouse_url());
    assert_eq!(table["location"], location.as_str());
    for symbol in ["A", "B", "C"] {
        assert!(
            server
                .warehouse()
                .join(format!("lake/trades/data/symbol={symbol}"))
                .is_dir()
        );
    }

    // A restart with new input loads the table from the catalog and goes on
    // at batch 3.
    write_input(&dirs.input, 3);
    let again = dirs
        .run(sink(), "cp", QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(again, query_id);
    let table = read(&uri, "lake.trades");
    assert_eq!(
        (table["rows"].clone(), table["distinct_ids"].clone()),
        (80.into(), 80.into())
    );
    assert_eq!(snapshot_batches(&table), batches(&query_id, 4));

    // A pipeline file's sink in another namespace, created by its first
    // batch.
    let text = format!(
        "CREATE STREAM trades (id BIGINT, symbol VARCHAR, price DOUBLE)\n\
         WITH (connector = 'files', path = '{}', format = 'json', max_files_per_trigger = 1);\n\
         CREATE SINK priced WITH (connector = 'iceberg', catalog_uri = '{uri}', \
         table = 'sql.priced');\n\
         INSERT INTO priced SELECT id, symbol, price * 2 AS doubled FROM trades WHERE id % 2 = 0;",
        dirs.input.display(),
    );
    let options = RunOptions {
        trigger: Trigger::AvailableNow,
        checkpoint: dirs.checkpoint("pipeline").to_str().unwrap().to_string(),
        checkpoint_durability: Default::default(),
        read_ahead: false,
    };
    let queries = Pipeline::parse(&text)
        .unwrap()
        .start(&SessionContext::new(), &options)
        .await
        .unwrap();
    for query in queries {
        query.query.await_termination().await.unwrap();
    }
    let table = read(&uri, "sql.priced");
    assert_eq!(table["rows"], 40, "{table}");
    assert_eq!(
        table["columns"],
        json!([
            ["id", "long", false],
            ["symbol", "string", false],
            ["doubled", "double", false]
        ])
    );
    assert_eq!(table["snapshots"].as_array().unwrap().len(), 4);
    assert_eq!(
        table["location"],
        format!("{}/sql/priced", server.warehouse_url()).as_str()
    );
}

/// The child process of the crash test: copies the JSON events of
/// `IR_INPUT` (one file per batch) into the table `IR_TABLE` of the REST
/// catalog at `IR_CATALOG_URI`, checkpointed at `IR_CHECKPOINT`, with
/// `AvailableNow`.
#[tokio::test]
#[ignore = "entry point of the REST catalog crash test's child process, not a test by itself"]
async fn rest_crash_child() -> anyhow::Result<()> {
    let (Ok(input), Ok(uri), Ok(table), Ok(checkpoint)) = (
        std::env::var("IR_INPUT"),
        std::env::var("IR_CATALOG_URI"),
        std::env::var("IR_TABLE"),
        std::env::var("IR_CHECKPOINT"),
    ) else {
        anyhow::bail!("run by the REST catalog crash test only");
    };
    let ctx = SessionContext::new();
    let source = FileSource::json(&input)
        .schema(events_schema())
        .max_files_per_trigger(1);
    let query = ctx
        .read_stream(source)
        .await?
        .write_stream()
        .sink(IcebergSink::rest(uri, &table)?)
        .checkpoint(&checkpoint)
        .trigger(Trigger::AvailableNow)
        .start()
        .await;
    child::report(query).await
}

#[tokio::test]
async fn sigkill_around_a_rest_catalog_commit_loses_and_duplicates_nothing() {
    let server = RestCatalogServer::start();
    let uri = server.uri();
    for point in ["before_sink", "during_sink", "after_sink"] {
        for batch in [0, 1] {
            let at = format!("killed at {point}@{batch}");
            let dirs = Dirs::new(4);
            let table = format!("lake.crash_{point}_{batch}");
            let checkpoint = dirs.checkpoint("cp");
            let command = |failpoint: Option<&str>| {
                let mut cmd = child::command("iceberg_rest::rest_crash_child", failpoint);
                cmd.env("IR_INPUT", &dirs.input)
                    .env("IR_CATALOG_URI", &uri)
                    .env("IR_TABLE", &table)
                    .env("IR_CHECKPOINT", &checkpoint);
                cmd
            };
            let mut child = Child::spawn(&mut command(Some(&format!("{point}@{batch}"))));
            assert_eq!(child.wait_for_event(), Event::Failpoint, "{at}");
            child.kill();
            // Batches before the killed one are committed; the killed one
            // only if the sink was done with it.
            let committed = batch + u64::from(point == "after_sink");
            let query_id = query_id(&checkpoint);
            let read_back = read(&uri, &table);
            if committed == 0 {
                // Batch 0 creates the table before its commit.
                let created = point == "during_sink";
                assert_eq!(read_back["exists"], created, "{at}: {read_back}");
                if created {
                    assert_eq!(read_back["snapshots"], json!([]), "{at}: {read_back}");
                }
            } else {
                assert_eq!(read_back["rows"], committed * 20, "{at}: {read_back}");
                assert_eq!(
                    snapshot_batches(&read_back),
                    batches(&query_id, committed),
                    "{at}"
                );
            }
            // Restarted (the killed batch runs again), with one more file.
            write_input(&dirs.input, 4);
            Child::run_to_completion(&mut command(None));
            let read_back = read(&uri, &table);
            assert_eq!(
                (read_back["rows"].clone(), read_back["distinct_ids"].clone()),
                (100.into(), 100.into()),
                "{at}: {read_back}"
            );
            assert_eq!(snapshot_batches(&read_back), batches(&query_id, 5), "{at}");
        }
    }
}

/// An HTTP proxy in front of the catalog that, before it forwards a commit
/// to the table `table` (`POST …/namespaces/<ns>/tables/<name>`), calls
/// `before_commit` with the commit's number (from 0): there another
/// writer commits, so the catalog sees the sink's commit against a stale
/// snapshot. Each connection carries one request (the response says
/// `Connection: close`). Records each commit's response status.
struct CommitProxy {
    port: u16,
    statuses: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
}

type BeforeCommit = Arc<dyn Fn(usize) + Send + Sync>;

impl CommitProxy {
    fn start(upstream: u16, table: &str, before_commit: BeforeCommit) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (namespace, name) = table.rsplit_once('.').unwrap();
        let commit_path = format!("/namespaces/{namespace}/tables/{name}");
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicUsize::new(0));
        {
            let statuses = Arc::clone(&statuses);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let statuses = Arc::clone(&statuses);
                    let commits = Arc::clone(&commits);
                    let before_commit = Arc::clone(&before_commit);
                    let commit_path = commit_path.clone();
                    std::thread::spawn(move || {
                        let _ = forward(stream, upstream, |method, path| {
                            if method == "POST" && path.ends_with(&commit_path) {
                                before_commit(commits.fetch_add(1, Ordering::SeqCst));
                                Some(Arc::clone(&statuses))
                            } else {
                                None
                            }
                        });
                    });
                }
            });
        }
        Self {
            port,
            statuses,
            stop,
        }
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The statuses the catalog answered the commits with, in order.
    fn statuses(&self) -> Vec<u16> {
        self.statuses.lock().unwrap().clone()
    }
}

impl Drop for CommitProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Forwards the one request read from `client` to 127.0.0.1:`upstream`
/// and its response back; `on_request(method, path)` runs first and may
/// return where to record the response's status.
fn forward(
    mut client: TcpStream,
    upstream: u16,
    on_request: impl FnOnce(&str, &str) -> Option<Arc<Mutex<Vec<u16>>>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" => continue,
            "content-length" => length = value.trim().parse().unwrap_or(0),
            _ => {}
        }
        headers.push(line.to_string());
    }
    while request.len() < head_end + length {
        let n = client.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let record = on_request(method, path);
    let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut out = format!("{request_line}\r\n");
    for header in &headers {
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    server.write_all(out.as_bytes())?;
    server.write_all(&request[head_end..])?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    let status = String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if let Some(record) = record {
        record.lock().unwrap().push(status);
    }
    client.write_all(&response)?;
    client.shutdown(Shutdown::Both)
}

#[tokio::test]
async fn a_commit_conflict_with_another_writer_is_retried_or_fails_naming_the_table() {
    let server = RestCatalogServer::start();
    let upstream = server.uri();
    let port: u16 = upstream.rsplit(':').next().unwrap().parse().unwrap();
    let dirs = Dirs::new(3);

    // Another writer commits just before the sink's second commit (batch
    // 1's) reaches the catalog.
    let other_rows = Arc::new(AtomicUsize::new(0));
    let proxy = {
        let upstream = upstream.clone();
        let other_rows = Arc::clone(&other_rows);
        CommitProxy::start(
            port,
            "lake.shared",
            Arc::new(move |commit| {
                if commit == 1 {
                    append_as_another_writer(&upstream, "lake.shared", 1000, 5);
                    other_rows.fetch_add(5, Ordering::SeqCst);
                }
            }),
        )
    };
    let sink = IcebergSink::rest(proxy.uri(), "lake.shared").unwrap();
    let query_id = dirs.run(sink, "cp", QueryOptions::default()).await.unwrap();
    // The catalog refused the stale commit; the retry from the other
    // writer's snapshot went through.
    assert_eq!(proxy.statuses(), [200, 409, 200, 200]);
    let table = read(&upstream, "lake.shared");
    assert_eq!(
        (table["rows"].clone(), table["distinct_ids"].clone()),
        (65.into(), 65.into()),
        "{table}"
    );
    let mut expected = batches(&query_id, 3);
    expected.insert(1, (None, None));
    assert_eq!(snapshot_batches(&table), expected);
    assert_eq!(other_rows.load(Ordering::SeqCst), 5);

    // Another writer before every attempt: the batch fails once the
    // iceberg transaction's retries are used up (no query-level retry
    // here), naming the batch, the table and the catalog.
    let contended = Arc::new(AtomicBool::new(true));
    let fired = Arc::new(AtomicUsize::new(0));
    let proxy = {
        let upstream = upstream.clone();
        let contended = Arc::clone(&contended);
        let fired = Arc::clone(&fired);
        CommitProxy::start(
            port,
            "lake.contended",
            Arc::new(move |_| {
                if contended.load(Ordering::SeqCst) {
                    let n = fired.fetch_add(1, Ordering::SeqCst) as u64;
                    append_as_another_writer(&upstream, "lake.contended", 1000 + 10 * n, 1);
                }
            }),
        )
    };
    let no_retry = QueryOptions {
        retry: RetryPolicy {
            max_elapsed: Duration::ZERO,
            ..RetryPolicy::default()
        },
        ..QueryOptions::default()
    };
    let sink = || IcebergSink::rest(proxy.uri(), "lake.contended").unwrap();
    let err = dirs
        .run(sink(), "cp2", no_retry)
        .await
        .unwrap_err()
        .to_string();
    let attempts = fired.load(Ordering::SeqCst);
    assert!(
        attempts > 1,
        "the conflict was retried ({attempts} attempts)"
    );
    assert!(
        proxy.statuses().iter().all(|s| *s == 409),
        "{:?}",
        proxy.statuses()
    );
    assert!(
        err.contains(&format!(
            "batch 0: committing to the Iceberg table 'lake.contended in {}' failed",
            proxy.uri()
        )) && err.contains("CatalogCommitConflicts"),
        "{err}"
    );
    // Restarted without the other writer: batch 0 commits once, after the
    // other writer's rows.
    contended.store(false, Ordering::SeqCst);
    let query_id = dirs
        .run(sink(), "cp2", QueryOptions::default())
        .await
        .unwrap();
    let table = read(&upstream, "lake.contended");
    let mut expected = vec![(None, None); attempts];
    expected.extend(batches(&query_id, 3));
    assert_eq!(snapshot_batches(&table), expected, "{table}");
    assert_eq!(table["rows"], 60 + attempts, "{table}");
}

#[tokio::test]
async fn an_unreachable_catalog_and_a_table_that_does_not_fit_are_refused_at_start() {
    let dirs = Dirs::new(1);
    // Nothing listens on the port.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let started = std::time::Instant::now();
    let err = dirs
        .run(
            IcebergSink::rest(&unreachable, "lake.trades").unwrap(),
            "cp",
            QueryOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("the Iceberg table 'lake.trades in {unreachable}'")),
        "{err}"
    );
    eprintln!("unreachable: {err} ({:?})", started.elapsed());
    assert!(!dirs.checkpoint("cp").join("commits/0").exists());

    let server = RestCatalogServer::start();
    let uri = server.uri();
    // A table of the catalog with `price` as text.
    python(CREATOR, &[&uri, "lake.wrong"]);
    let err = dirs
        .run(
            IcebergSink::rest(&uri, "lake.wrong").unwrap(),
            "cp2",
            QueryOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "column 'price' of the Iceberg table 'lake.wrong in {uri}' has type string, but the \
             query's output has type Float64"
        )),
        "{err}"
    );
    let table = read(&uri, "lake.wrong");
    assert_eq!(table["snapshots"], json!([]), "nothing committed");

    // A location outside the table's place in the warehouse, which the
    // catalog refuses when the first batch creates the table.
    let outside = dirs.tmp.path().join("elsewhere");
    let err = dirs
        .run(
            IcebergSink::rest(&uri, "lake.placed")
                .unwrap()
                .location(outside.to_str().unwrap()),
            "cp3",
            QueryOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    eprintln!("outside: {err}");
    assert!(
        err.contains(&format!(
            "batch 0: creating the Iceberg table 'lake.placed in {uri}' failed"
        )) || err.contains(&format!("the Iceberg table 'lake.placed in {uri}'")),
        "{err}"
    );
    assert_eq!(read(&uri, "lake.placed")["exists"], false);
}

#[tokio::test]
async fn a_catalog_down_between_batches_is_waited_for() {
    let mut server = RestCatalogServer::start();
    let uri = server.uri();
    let dirs = Dirs::new(1);
    let ctx = SessionContext::new();
    let query = dirs
        .events(&ctx)
        .await
        .write_stream()
        .sink(IcebergSink::rest(&uri, "lake.flaky").unwrap())
        .checkpoint(dirs.checkpoint("cp").to_str().unwrap())
        .trigger(Trigger::ProcessingTime(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    server.stop();
    write_input(&dirs.input, 1);
    // The batch fails (connection refused) and is retried.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !query
        .status()
        .message
        .starts_with("Retrying after a transient error")
    {
        assert!(
            query.is_active(),
            "the query failed: {:?}",
            query.error().map(|e| e.to_string())
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no retry: {:?}",
            query.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = query.status().message;
    assert!(
        message.contains(&format!("the Iceberg table 'lake.flaky in {uri}'")),
        "{message}"
    );
    server.launch();
    assert_eq!(server.uri(), uri);
    tokio::time::timeout(Duration::from_secs(60), query.process_all_available())
        .await
        .expect("batch 1 committed once the catalog is back")
        .unwrap();
    query.stop().await.unwrap();
    let query_id = query.id().to_string();
    let table = read(&uri, "lake.flaky");
    assert_eq!(
        (table["rows"].clone(), table["distinct_ids"].clone()),
        (40.into(), 40.into()),
        "{table}"
    );
    assert_eq!(snapshot_batches(&table), batches(&query_id, 2));
}
