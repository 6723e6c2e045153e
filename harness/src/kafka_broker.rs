//! A real Kafka-protocol broker for Tidemill's Kafka tests, the
//! `kafka_trades` example and the `kafka` benchmark: [Tansu](https://github.com/tansu-io/tansu)
//! 0.6.0, started on a free port of 127.0.0.1 in a temporary directory,
//! stopped when dropped.
//!
//! **Storage engines.** [`Broker::start`] runs Tansu on its SQLite engine
//! (`--storage-engine sqlite://tansu.db` in the broker's directory): what
//! every test uses, because the data outlives the process (tests kill and
//! restart the broker and expect their topics back). SQLite costs the
//! broker about 80 µs of CPU per record it stores (one SQL row per record
//! and per header). [`Broker::start_in_memory`] runs Tansu's object-store
//! engine ("dynostore") on an in-memory store (`memory://tansu/`): each
//! record batch is kept as the producer sent it, so producing costs a few
//! map updates per batch, not per record. But everything is lost when the
//! process stops; a fetch lists every batch of the partition; a fetch
//! from an offset inside a stored batch skips the rest of that batch; and
//! ListOffsets (latest) answers the base offset + 1 of the batch stored
//! last, not the partition's end, so a reader that asks for end offsets
//! (`KafkaSource`, the exactly-once `KafkaSink`'s re-run scan,
//! [`end_offsets`], [`consume_all`]) stops short of the last batch's other
//! records. Fetch responses carry the right high watermark. It is for
//! benchmarks that write to it and consume it (the `kafka` bench's
//! latency part writes its output there), not for tests. On both
//! engines Tansu holds every fetch for the consumer's whole
//! `fetch.wait.max.ms` (its fetch loop, shared by the engines, sleeps out
//! the rest of the wait after every pass, records or not).
//!
//! **Installing Tansu.** The first use in a process finds `tansu` 0.6.0:
//! `$TANSU_BIN` if set, else `tansu` on the `PATH`, else
//! `<workspace>/target/tools/bin/tansu`; if none is version 0.6.0 it runs
//! `cargo install tansu@0.6.0 --locked --features libsql --root
//! <workspace>/target/tools` (about 12 minutes on 2 cores, once per
//! machine and target directory), holding a file lock so that parallel
//! tests and processes wait for one install instead of racing. The
//! in-memory broker needs a second build, with the `dynostore` feature:
//! `$TANSU_DYNOSTORE_BIN` if set, else
//! `<workspace>/target/tools/tansu-dynostore/bin/tansu`, else `cargo
//! install tansu@0.6.0 --locked --features libsql,dynostore --root
//! <workspace>/target/tools/tansu-dynostore` the same way (its own lock and
//! log in that directory; only the first [`Broker::start_in_memory`] of a
//! target directory pays for it, so `cargo test` never builds it).
//!
//! Besides the standard library it uses only `tempfile`, tokio and the
//! rdkafka the connectors re-export. `<workspace>` is the directory of
//! Tidemill's workspace (the parent of this crate's), whatever the current
//! directory of the process using it.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tidemill_connectors::kafka::rdkafka;

use crate::cargo_install::CargoTool;
use crate::free_port;
use crate::results::workspace_root;

/// The Tansu version the fixture runs.
pub const TANSU_VERSION: &str = "0.6.0";
/// The bound on every Kafka operation the helpers do.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long installing Tansu may take (12 minutes on 2 idle cores).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(45 * 60);

fn version_of(binary: &Path) -> Option<String> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn is_wanted(binary: &Path) -> bool {
    version_of(binary).is_some_and(|v| v.split_whitespace().any(|w| w == TANSU_VERSION))
}

/// The `tansu` 0.6.0 binary (SQLite engine), installed into
/// `<workspace>/target/tools` first if there is none (see the module docs).
pub fn tansu_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_or_install(Storage::Sqlite))
        .clone()
        .unwrap_or_else(|e| panic!("cannot provide the Tansu broker: {e}"))
}

/// The `tansu` 0.6.0 binary built with the `dynostore` feature (for
/// [`Broker::start_in_memory`]), installed into
/// `<workspace>/target/tools/tansu-dynostore` first if there is none (see
/// the module docs).
pub fn tansu_dynostore_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_or_install(Storage::Memory))
        .clone()
        .unwrap_or_else(|e| panic!("cannot provide the in-memory Tansu broker: {e}"))
}

fn find_or_install(storage: Storage) -> Result<PathBuf, String> {
    let (env, features, root) = match storage {
        Storage::Sqlite => (
            "TANSU_BIN",
            "libsql",
            workspace_root().join("target").join("tools"),
        ),
        Storage::Memory => (
            "TANSU_DYNOSTORE_BIN",
            "libsql,dynostore",
            workspace_root()
                .join("target")
                .join("tools")
                .join("tansu-dynostore"),
        ),
    };
    if let Ok(bin) = std::env::var(env) {
        let bin = PathBuf::from(bin);
        return if is_wanted(&bin) {
            Ok(bin)
        } else {
            Err(format!(
                "{env}={} is not tansu {TANSU_VERSION}",
                bin.display()
            ))
        };
    }
    // A `tansu` on the PATH may lack the dynostore feature: only the
    // SQLite broker takes it.
    if storage == Storage::Sqlite && is_wanted(Path::new("tansu")) {
        return Ok(PathBuf::from("tansu"));
    }
    CargoTool {
        spec: &format!("tansu@{TANSU_VERSION}"),
        args: &["--locked", "--features", features],
        root: root.clone(),
        binary: "tansu",
        state_dir: root,
        stem: "tansu",
        purpose: &format!(
            "(features {features}) for the Kafka tests and benches (about 12 minutes on 2 \
             cores, once)"
        ),
        timeout: INSTALL_TIMEOUT,
        cargo: CargoTool::default_cargo(),
    }
    .find_or_install(is_wanted)
}

/// Where a [`Broker`] keeps its topics (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Tansu's SQLite engine, in the broker's directory: durable across
    /// restarts. [`Broker::start`].
    Sqlite,
    /// Tansu's object-store engine on an in-memory store: lost when the
    /// broker stops. [`Broker::start_in_memory`].
    Memory,
}

/// A running Tansu broker on 127.0.0.1, stopped on drop.
pub struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    binary: PathBuf,
    storage: Storage,
}

impl Broker {
    /// Starts a broker on Tansu's SQLite engine on a free port in a new
    /// temporary directory and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_on(Storage::Sqlite)
    }

    /// Starts a broker on Tansu's object-store engine with an in-memory
    /// store (`--storage-engine memory://tansu/`), from the `dynostore`
    /// build of Tansu (installed first if there is none, see the module
    /// docs). Its topics are lost when it stops, so it cannot be
    /// [`restart`](Broker::restart)ed, and its end offsets from
    /// ListOffsets are wrong (see the module docs): for a benchmark's
    /// output, not for tests.
    pub fn start_in_memory() -> Self {
        Self::start_on(Storage::Memory)
    }

    /// Starts a broker on `storage`: [`Broker::start`] or
    /// [`Broker::start_in_memory`].
    pub fn start_on(storage: Storage) -> Self {
        let binary = match storage {
            Storage::Sqlite => tansu_binary(),
            Storage::Memory => tansu_dynostore_binary(),
        };
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .expect("temporary directory");
        let mut broker = Self {
            port: free_port(),
            dir,
            child: None,
            binary,
            storage,
        };
        broker.launch();
        broker
    }

    /// Where the broker keeps its topics.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Starts a broker as [`Broker::start`], then indexes its table of
    /// record headers by record (`header (topition, offset_id)`), which
    /// Tansu 0.6.0 leaves unindexed: every record it fetches then costs an
    /// index lookup for its headers instead of a scan of every header of
    /// every topic (about 90 ms per record at 300 000 headers on this
    /// machine), a cost a Kafka broker, which keeps headers inside record
    /// batches, does not have. For consumers of topics with headers, such
    /// as an exactly-once `KafkaSink`'s output, at more than a few hundred
    /// records per second.
    ///
    /// Uses the `sqlite3` command-line shell (Debian's `sqlite3` package),
    /// run once on the broker's database while it runs (SQLite's locking
    /// makes that safe; Tansu prepares its statements afresh for each
    /// query). Without the shell it warns and leaves the table as it is;
    /// panics if the index cannot be made.
    pub fn start_with_header_index() -> Self {
        let broker = Self::start();
        broker.index_headers();
        broker
    }

    fn index_headers(&self) {
        let db = self.dir.path().join("tansu.db");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Tansu creates its tables as it starts: until they exist the
            // statement fails ("no such table").
            let output = match Command::new("sqlite3")
                .args(["-cmd", ".timeout 10000"])
                .arg(&db)
                .arg("create index if not exists header_by_record on header (topition, offset_id)")
                .stdin(Stdio::null())
                .output()
            {
                Ok(output) => output,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Correct without the index, only slower past a few
                    // thousand headers.
                    eprintln!(
                        "warning: no sqlite3 shell (Debian's sqlite3 package): Tansu's headers \
                         are not indexed, fetching records with headers gets slower as they grow"
                    );
                    return;
                }
                Err(e) => panic!("running sqlite3 to index Tansu's headers: {e}"),
            };
            if output.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "indexing the headers of {}: {}",
                db.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's working directory (its log, and its SQLite database
    /// on [`Storage::Sqlite`]).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the broker process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the broker (SIGKILL, as a crash); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same data.
    /// Panics on an in-memory broker, whose data died with it.
    pub fn restart(&mut self) {
        assert!(
            self.storage == Storage::Sqlite,
            "an in-memory Tansu broker loses its topics when it stops: it cannot be restarted"
        );
        self.stop();
        self.launch();
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("tansu.log"))
                .expect("broker log");
            let mut child = Command::new(&self.binary)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args([
                    "--storage-engine",
                    match self.storage {
                        Storage::Sqlite => "sqlite://tansu.db",
                        Storage::Memory => "memory://tansu/",
                    },
                ])
                .current_dir(self.dir.path())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
            let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("address");
            let started = Instant::now();
            let mut up = false;
            while started.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port may still be in use
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if up {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
                panic!("tansu did not start on {url}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(KAFKA_TIMEOUT))
        .operation_timeout(Some(KAFKA_TIMEOUT))
}

/// Creates `topic` with `partitions` partitions and the topic configs
/// `configs`.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin = admin(bootstrap);
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        new = new.set(key, value);
    }
    let results =
        tokio::time::timeout(KAFKA_TIMEOUT, admin.create_topics([&new], &admin_options()))
            .await
            .unwrap_or_else(|_| panic!("creating topic {topic} timed out"))
            .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Deletes `topic` and its records.
pub async fn delete_topic(bootstrap: &str, topic: &str) {
    let admin = admin(bootstrap);
    let results = tokio::time::timeout(
        KAFKA_TIMEOUT,
        admin.delete_topics(&[topic], &admin_options()),
    )
    .await
    .unwrap_or_else(|_| panic!("deleting topic {topic} timed out"))
    .unwrap_or_else(|e| panic!("deleting topic {topic}: {e}"));
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("deleting topic {t}: {e}"));
    }
}

/// Grows `topic` to `total` partitions.
pub async fn add_partitions(bootstrap: &str, topic: &str, total: usize) {
    let admin = admin(bootstrap);
    let new = NewPartitions::new(topic, total);
    let results = tokio::time::timeout(
        KAFKA_TIMEOUT,
        admin.create_partitions([&new], &admin_options()),
    )
    .await
    .unwrap_or_else(|_| panic!("adding partitions to {topic} timed out"))
    .unwrap_or_else(|e| panic!("adding partitions to {topic}: {e}"));
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("adding partitions to {t}: {e}"));
    }
}

/// One message to produce.
#[derive(Debug, Clone, Default)]
pub struct Out {
    /// The partition; the producer's partitioner chooses if `None`.
    pub partition: Option<i32>,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The value, if any.
    pub value: Option<Vec<u8>>,
    /// The headers, names and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The timestamp in milliseconds; the producer's clock if `None`.
    pub timestamp: Option<i64>,
}

impl Out {
    /// A value for `partition`.
    pub fn to(partition: i32, value: impl Into<Vec<u8>>) -> Self {
        Self {
            partition: Some(partition),
            value: Some(value.into()),
            ..Default::default()
        }
    }
}

/// Produces `messages` to `topic` and waits until all are acknowledged.
pub fn produce(bootstrap: &str, topic: &str, messages: &[Out]) {
    produce_paced(bootstrap, topic, messages, Duration::ZERO);
}

/// Produces `messages` to `topic` with one producer, `pace` apart (a
/// steady stream rather than bursts), and waits until all are
/// acknowledged.
pub fn produce_paced(bootstrap: &str, topic: &str, messages: &[Out], pace: Duration) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", KAFKA_TIMEOUT.as_millis().to_string())
        .create()
        .expect("producer");
    for message in messages {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &message.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
        if let Some(p) = message.partition {
            record = record.partition(p);
        }
        if let Some(k) = &message.key {
            record = record.key(k);
        }
        if let Some(v) = &message.value {
            record = record.payload(v);
        }
        if let Some(t) = message.timestamp {
            record = record.timestamp(t);
        }
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(Instant::now() < deadline, "producing to {topic}: {e}");
                    record = back;
                    producer.poll(Duration::from_millis(20));
                }
            }
        }
        if !pace.is_zero() {
            // Serves delivery reports while it waits.
            producer.poll(pace);
        }
    }
    producer
        .flush(KAFKA_TIMEOUT)
        .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
}

/// The end offset of each partition of `topic`, by partition.
pub fn end_offsets(bootstrap: &str, topic: &str) -> Vec<i64> {
    watermarks(bootstrap, topic)
        .into_iter()
        .map(|w| w.1)
        .collect()
}

/// The earliest offset of each partition of `topic`, by partition.
pub fn earliest_offsets(bootstrap: &str, topic: &str) -> Vec<i64> {
    watermarks(bootstrap, topic)
        .into_iter()
        .map(|w| w.0)
        .collect()
}

/// The (earliest, end) offsets of each partition of `topic`.
fn watermarks(bootstrap: &str, topic: &str) -> Vec<(i64, i64)> {
    let consumer = consumer(bootstrap);
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                .expect("watermarks")
        })
        .collect()
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    // librdkafka wants a group id to assign partitions; it is never joined.
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tidemill-tests")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

/// Every message in `topic` now, in (partition, offset) order. Assigns
/// the partitions (no consumer group) and reads each to its end offset.
pub fn consume_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer = consumer(bootstrap);
    let ends = end_offsets(bootstrap, topic);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..ends.len() as i32 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut next = vec![0i64; ends.len()];
    let mut out: Vec<OwnedMessage> = Vec::new();
    let mut last_progress = Instant::now();
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let p = message.partition() as usize;
                if message.offset() < ends[p] {
                    next[p] = message.offset() + 1;
                    out.push(message.detach());
                } else {
                    next[p] = ends[p];
                }
                last_progress = Instant::now();
            }
            Some(Err(e)) => {
                let _ = writeln!(std::io::stderr(), "consume_all({topic}): {e}");
            }
            None => {}
        }
        assert!(
            last_progress.elapsed() < KAFKA_TIMEOUT,
            "consuming {topic} stalled at {next:?} of {ends:?}"
        );
    }
    out.sort_by_key(|m| (m.partition(), m.offset()));
    out
}

/// The values of `messages` as UTF-8 strings.
pub fn values(messages: &[OwnedMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect()
}
