//! The Kafka sink: at-least-once with an idempotent producer, or
//! exactly-once without broker transactions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, ListArray, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Int32Type, Schema, SchemaRef};
use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use tidemill_engine::{Location, Result, Sink, SinkContext, TidemillError};

use super::client::{ClientOptions, blocking, is_transient};
use super::json::{as_binary, encode_json_rows};
use super::reader::{PartitionRange, Reader};
use super::schema::{headers_type, messages_schema};
use super::sink_log::{PendingBatch, SinkLog};
use crate::failpoint;

/// Header naming the sink (its exactly-once log's id) that wrote a message.
pub const HEADER_SINK: &str = "tidemill.sink";
/// Header with the micro-batch id that wrote a message.
pub const HEADER_BATCH: &str = "tidemill.batch";
/// Header with a message's sequence number within its micro-batch.
pub const HEADER_SEQ: &str = "tidemill.seq";

/// How a [`KafkaSink`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Guarantee {
    AtLeastOnce,
    ExactlyOnce(String),
}

/// Writes each micro-batch's rows as Kafka messages.
///
/// **Rows to messages.** By default each row must have a `value` column
/// (binary or string; null makes a tombstone) and may have `key` (binary
/// or string), `topic` (string: the row's topic, overriding
/// [`KafkaSink::topic`]), `partition` (int32) and `headers` (a list of
/// `{key: string, value: binary}`, as the Kafka source reads them); other
/// columns are not written. With [`KafkaSink::json_values`] the whole row
/// is the value instead, as one JSON object (see
/// [`encode_json_rows`](super::encode_json_rows)), and
/// [`KafkaSink::key_column`] picks the key. A message goes to its
/// `partition` column if given, else to the partition its key hashes to
/// (murmur2, as Kafka's Java client), else the batch's messages are spread
/// round robin — the sink chooses every partition itself, so a message's
/// place is known before it is produced.
///
/// **At-least-once** (the default): an idempotent producer (no duplicates
/// from its own retries, order kept per partition); a batch that fails
/// is written again when the engine re-runs it, so a crash may duplicate
/// the messages of the batch in flight.
///
/// **Exactly-once** ([`KafkaSink::exactly_once`]), without broker
/// transactions: before producing batch `N`, the sink writes the batch's
/// messages (topic, partition, key, value, headers, in order) and, for
/// every partition they go to, an offset at or below the partition's
/// current end into its log, a directory the query owns. That offset is
/// the end the broker reported when the sink first wrote to the partition
/// (one round trip per partition, once per query run), then the offset
/// after the last of the sink's messages the broker acknowledged there
/// (from the delivery reports): a partition only grows, so no message of
/// batch `N` can be below it. Every message carries the headers
/// `tidemill.sink` (the log's id), `tidemill.batch` (`N`) and
/// `tidemill.seq` (its number in the batch). The producer does not retry
/// by itself; when the batch is run again (after a crash, a transient
/// error or a broker restart), the sink reads its logged messages, reads
/// the partitions from the logged offsets to their end to find which
/// sequence numbers of batch `N` are already there, and produces only the
/// others. When all are acknowledged it records the batch as committed;
/// a committed batch id is never written again. (If a partition is found
/// shorter than its logged offset, it was truncated or recreated: the
/// re-run reads it from its beginning.) Consumers therefore see
/// every message exactly once, in at most a few places out of order
/// after a retry (downstream consumers should not rely on the order of one
/// batch's messages across a failure). The remaining gap: a produce
/// request of a killed attempt that the broker receives but applies only
/// after the re-run has read the partition's end (in practice the re-run
/// starts long after).
///
/// ```no_run
/// # use tidemill_connectors::kafka::KafkaSink;
/// // Each output row as a JSON value, keyed by symbol, exactly once.
/// let sink = KafkaSink::new("127.0.0.1:9092")
///     .topic("minute-bars")
///     .json_values()
///     .key_column("symbol")
///     .exactly_once("chk/minute-bars-sink");
/// ```
pub struct KafkaSink {
    client: ClientOptions,
    topic: Option<String>,
    json_values: bool,
    key_column: Option<String>,
    guarantee: Guarantee,
    state: tokio::sync::Mutex<Option<Opened>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("bootstrap_servers", &self.client.bootstrap_servers)
            .field("topic", &self.topic)
            .field("guarantee", &self.guarantee)
            .finish()
    }
}

/// Which input column plays which part.
#[derive(Debug, Clone, Default)]
struct Layout {
    value: Option<usize>,
    key: Option<usize>,
    topic: Option<usize>,
    partition: Option<usize>,
    headers: Option<usize>,
}

/// What the sink holds once a query opened it.
struct Opened {
    producer: Arc<BaseProducer<Delivery>>,
    layout: Layout,
    log: Option<Arc<SinkLog>>,
    last_committed: Option<u64>,
    /// The clean-up of the sink log after the last committed batch,
    /// running in the background; awaited before the next batch.
    clean_up: Option<tokio::task::JoinHandle<Result<()>>>,
    /// Partition counts of the topics written to.
    partitions: BTreeMap<String, i32>,
    /// Per topic and partition written to, an offset at or below its end:
    /// the end the broker reported, then the offset after the last
    /// message the broker acknowledged (see [`KafkaSink`]).
    known_ends: BTreeMap<(String, i32), i64>,
}

/// Counts deliveries of the batch being produced.
#[derive(Default)]
struct Delivery {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<KafkaError>>,
    /// Per topic and partition, the offset after the last message
    /// acknowledged there (by any batch of this producer).
    ends: Mutex<HashMap<String, HashMap<i32, i64>>>,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                // Negative without acknowledgements from the broker
                // (`acks=0`): no bound learnt.
                let next = message.offset() + 1;
                if next > 0 {
                    let mut ends = self.ends.lock().expect("lock");
                    let partitions = match ends.get_mut(message.topic()) {
                        Some(partitions) => partitions,
                        None => ends.entry(message.topic().to_string()).or_default(),
                    };
                    let end = partitions.entry(message.partition()).or_insert(next);
                    *end = (*end).max(next);
                }
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("lock");
                if first.is_none() {
                    *first = Some(error.clone());
                }
            }
        }
    }
}

impl KafkaSink {
    /// A sink producing to the brokers `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            client: ClientOptions::new(bootstrap_servers),
            topic: None,
            json_values: false,
            key_column: None,
            guarantee: Guarantee::AtLeastOnce,
            state: tokio::sync::Mutex::new(None),
        }
    }

    /// The topic messages go to (unless a row's `topic` column says
    /// otherwise). Topics must exist.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Writes each whole row as one JSON object value.
    pub fn json_values(mut self) -> Self {
        self.json_values = true;
        self
    }

    /// Uses column `name` as the message key (strings and binaries as they
    /// are, other types as their string form). Without it, a column named
    /// `key` is the key when present.
    pub fn key_column(mut self, name: impl Into<String>) -> Self {
        self.key_column = Some(name.into());
        self
    }

    /// Writes exactly once, keeping the sink's log in `location` (a local
    /// path or an object store URL; give each query its own, for example
    /// next to the query's checkpoint). See [`KafkaSink`].
    pub fn exactly_once(mut self, location: impl Into<String>) -> Self {
        self.guarantee = Guarantee::ExactlyOnce(location.into());
        self
    }

    /// Sets a librdkafka producer property (security, SASL, TLS, tuning),
    /// overriding the sink's own settings.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client.options.insert(key.into(), value.into());
        self
    }

    /// The bound on every Kafka operation: producing a batch (each message
    /// must be acknowledged within it) and reading partitions' ends.
    /// Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.client.timeout = timeout;
        self
    }

    fn describe(&self) -> String {
        let mode = match self.guarantee {
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce(_) => "exactly-once",
        };
        format!(
            "KafkaSink[{} -> {}, {mode}]",
            self.client.bootstrap_servers,
            self.topic.as_deref().unwrap_or("<topic column>")
        )
    }

    fn err(&self, message: impl Into<String>) -> TidemillError {
        TidemillError::sink(self.describe(), message)
    }

    fn kafka_err(&self, error: &KafkaError, context: impl std::fmt::Display) -> TidemillError {
        let err = self.err(format!("{context}: {error}"));
        if is_transient(error) {
            TidemillError::transient(err)
        } else {
            err
        }
    }

    fn layout(&self, schema: &Schema) -> Result<Layout> {
        let find = |name: &str| schema.index_of(name).ok();
        let binaryish = |i: usize| {
            matches!(
                schema.field(i).data_type(),
                DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
            )
        };
        let mut layout = Layout::default();
        match &self.key_column {
            Some(name) => {
                layout.key = Some(find(name).ok_or_else(|| {
                    TidemillError::Config(format!(
                        "{}: the key column '{name}' is not in the output",
                        self.describe()
                    ))
                })?);
            }
            None if !self.json_values => layout.key = find("key"),
            None => {}
        }
        if self.json_values {
            if self.topic.is_none() {
                return Err(TidemillError::Config(format!(
                    "{}: with json_values the topic must be set with .topic(..)",
                    self.describe()
                )));
            }
            return Ok(layout);
        }
        let value = find("value").ok_or_else(|| {
            TidemillError::Config(format!(
                "{}: the output has no 'value' column; select one (binary or string) or use .json_values() to write \
                 whole rows as JSON",
                self.describe()
            ))
        })?;
        if !binaryish(value) {
            return Err(TidemillError::Config(format!(
                "{}: the 'value' column must be binary or string, not {}",
                self.describe(),
                schema.field(value).data_type()
            )));
        }
        layout.value = Some(value);
        if let Some(key) = layout.key
            && !binaryish(key)
            && self.key_column.is_none()
        {
            return Err(TidemillError::Config(format!(
                "{}: the 'key' column must be binary or string, not {}",
                self.describe(),
                schema.field(key).data_type()
            )));
        }
        layout.topic = find("topic");
        if let Some(i) = layout.topic
            && !matches!(
                schema.field(i).data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        {
            return Err(TidemillError::Config(format!(
                "{}: the 'topic' column must be a string",
                self.describe()
            )));
        }
        if layout.topic.is_none() && self.topic.is_none() {
            return Err(TidemillError::Config(format!(
                "{}: no topic: set one with .topic(..) or give the rows a 'topic' column",
                self.describe()
            )));
        }
        layout.partition = find("partition");
        if let Some(i) = layout.partition
            && !matches!(
                schema.field(i).data_type(),
                DataType::Int32 | DataType::Int64
            )
        {
            return Err(TidemillError::Config(format!(
                "{}: the 'partition' column must be an integer",
                self.describe()
            )));
        }
        layout.headers = find("headers");
        if let Some(i) = layout.headers
            && schema.field(i).data_type() != &headers_type()
        {
            return Err(TidemillError::Config(format!(
                "{}: the 'headers' column must be {}, not {}",
                self.describe(),
                headers_type(),
                schema.field(i).data_type()
            )));
        }
        Ok(layout)
    }

    fn producer(&self) -> Result<BaseProducer<Delivery>> {
        let timeout = self.client.timeout_ms();
        let mut defaults = vec![
            ("acks", "all".to_string()),
            ("linger.ms", "5".to_string()),
            ("message.timeout.ms", timeout.clone()),
            ("socket.timeout.ms", timeout),
        ];
        match self.guarantee {
            Guarantee::AtLeastOnce => defaults.push(("enable.idempotence", "true".into())),
            Guarantee::ExactlyOnce(_) => {
                // The re-run of a batch replaces the producer's retries:
                // a message is either acknowledged or found missing later.
                defaults.push(("enable.idempotence", "false".into()));
                defaults.push(("message.send.max.retries", "0".into()));
            }
        }
        self.client
            .config(&defaults)
            .create_with_context(Delivery::default())
            .map_err(|e| self.kafka_err(&e, "creating the producer"))
    }

    /// The partition count of each of `topics`, from the cache or the
    /// broker.
    async fn partition_counts(
        &self,
        producer: &Arc<BaseProducer<Delivery>>,
        partitions: &mut BTreeMap<String, i32>,
        topics: &BTreeSet<String>,
    ) -> Result<()> {
        let missing: Vec<String> = topics
            .iter()
            .filter(|t| !partitions.contains_key(*t))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let producer = Arc::clone(producer);
        let timeout = self.client.timeout;
        let found = blocking(move || {
            let mut out = Vec::new();
            for topic in missing {
                let metadata = producer.client().fetch_metadata(Some(&topic), timeout);
                out.push((
                    topic,
                    metadata.map(|m| {
                        m.topics().first().map(|t| {
                            (
                                t.error().map(RDKafkaErrorCode::from),
                                t.partitions().len() as i32,
                            )
                        })
                    }),
                ));
            }
            out
        })
        .await?;
        for (topic, metadata) in found {
            match metadata {
                Err(e) => return Err(self.kafka_err(&e, format!("metadata of topic {topic}"))),
                Ok(Some((None, n))) if n > 0 => {
                    partitions.insert(topic, n);
                }
                Ok(Some((Some(code), _))) if code != RDKafkaErrorCode::UnknownTopicOrPartition => {
                    let e = KafkaError::MetadataFetch(code);
                    return Err(self.kafka_err(&e, format!("metadata of topic {topic}")));
                }
                _ => {
                    return Err(self.err(format!(
                        "topic {topic} does not exist; create it before the query writes to it"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The batch's rows as messages, in order, each with its partition.
    async fn to_messages(
        &self,
        producer: &Arc<BaseProducer<Delivery>>,
        counts: &mut BTreeMap<String, i32>,
        layout: &Layout,
        batches: &[RecordBatch],
    ) -> Result<RecordBatch> {
        let mut parts = Vec::with_capacity(batches.len());
        let mut seq: u64 = 0;
        // First the topics, to know their partition counts.
        let mut topic_columns = Vec::with_capacity(batches.len());
        let mut topics = BTreeSet::new();
        for batch in batches {
            let topic: ArrayRef = match layout.topic {
                Some(i) => arrow::compute::cast(batch.column(i), &DataType::Utf8)
                    .map_err(|e| self.err(format!("topic column: {e}")))?,
                None => Arc::new(StringArray::from(vec![
                    self.topic
                        .clone()
                        .unwrap_or_default();
                    batch.num_rows()
                ])),
            };
            let strings = topic.as_string::<i32>();
            if strings.null_count() > 0 {
                let fallback = self
                    .topic
                    .clone()
                    .ok_or_else(|| self.err("a row's topic is null and no default topic is set"))?;
                let filled: StringArray = strings
                    .iter()
                    .map(|t| Some(t.unwrap_or(&fallback).to_string()))
                    .collect();
                topics.extend(filled.iter().flatten().map(str::to_string));
                topic_columns.push(Arc::new(filled) as ArrayRef);
            } else {
                topics.extend(strings.iter().flatten().map(str::to_string));
                topic_columns.push(topic);
            }
        }
        self.partition_counts(producer, counts, &topics).await?;
        for (batch, topic) in batches.iter().zip(topic_columns) {
            let rows = batch.num_rows();
            let value: ArrayRef = match layout.value {
                Some(i) => as_binary(batch.column(i))
                    .map_err(|e| self.err(format!("value column: {e}")))?,
                None => Arc::new(
                    encode_json_rows(batch)
                        .map_err(|e| self.err(format!("encoding rows as JSON: {e}")))?,
                ),
            };
            let key: ArrayRef = match layout.key {
                Some(i) => {
                    let column = batch.column(i);
                    let column = match column.data_type() {
                        DataType::Binary
                        | DataType::LargeBinary
                        | DataType::BinaryView
                        | DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View => Arc::clone(column),
                        _ => arrow::compute::cast(column, &DataType::Utf8)
                            .map_err(|e| self.err(format!("key column: {e}")))?,
                    };
                    as_binary(&column).map_err(|e| self.err(format!("key column: {e}")))?
                }
                None => arrow::array::new_null_array(&DataType::Binary, rows),
            };
            let headers: ArrayRef = match layout.headers {
                Some(i) => Arc::clone(batch.column(i)),
                None => arrow::array::new_null_array(&headers_type(), rows),
            };
            let topics = topic.as_string::<i32>();
            let keys = key.as_binary::<i32>();
            let explicit: Option<Int32Array> = match layout.partition {
                Some(i) => Some(
                    arrow::compute::cast(batch.column(i), &DataType::Int32)
                        .map_err(|e| self.err(format!("partition column: {e}")))?
                        .as_primitive::<Int32Type>()
                        .clone(),
                ),
                None => None,
            };
            let mut partitions = Vec::with_capacity(rows);
            for row in 0..rows {
                let t = topics.value(row);
                let n = counts[t];
                let p = match explicit.as_ref().filter(|e| e.is_valid(row)) {
                    Some(e) => {
                        let p = e.value(row);
                        if p < 0 || p >= n {
                            return Err(self.err(format!("row {row}: partition {p} does not exist in topic {t} ({n} partitions)")));
                        }
                        p
                    }
                    None if keys.is_valid(row) => partition_for_key(keys.value(row), n),
                    None => (seq % n as u64) as i32,
                };
                partitions.push(p);
                seq += 1;
            }
            parts.push(
                RecordBatch::try_new(
                    messages_schema(),
                    vec![
                        topic,
                        Arc::new(Int32Array::from(partitions)),
                        key,
                        value,
                        headers,
                    ],
                )
                .map_err(|e| self.err(format!("messages: {e}")))?,
            );
        }
        concat_batches(&messages_schema(), &parts).map_err(|e| self.err(format!("messages: {e}")))
    }
}

/// Kafka's default partition for a key: murmur2 of the key, made
/// positive, modulo the partition count (as the Java client).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as u32 % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`).
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    for chunk in data.chunks_exact(4) {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = &data[len & !3..];
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Waits until every message sent is acknowledged (or failed), serving
/// the delivery reports as they come and looking every millisecond.
/// rdkafka's own `flush` waits in polls of 100 ms that do not return early
/// (`BaseProducer::poll` runs to its deadline), and shorter polls spin on
/// the clock once a report has been served.
///
/// Between looks it waits in librdkafka's `rd_kafka_flush` (1 ms), not in
/// a sleep: while that call runs, the producer sends what it holds at once
/// instead of lingering (`linger.ms`, 5 by default) for more messages. The
/// batch has no more to come, so lingering would only delay its
/// acknowledgement, and so the commit of every micro-batch. A zero
/// timeout would not do: the flag that overrides `linger.ms` is only set
/// for the duration of the call, and the producer's broker threads,
/// woken by it, would most often look after it returned.
fn flush(
    producer: &BaseProducer<Delivery>,
    timeout: Duration,
) -> std::result::Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        // A zero-timeout poll serves at most one event (a delivery report
        // covers a whole produce response).
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        // SAFETY: the pointer is the producer's own handle, valid while
        // `producer` is borrowed; librdkafka allows `rd_kafka_flush` from
        // any thread, alongside polls from others. rdkafka's producer
        // takes delivery reports as events, so the call only waits (up to
        // 1 ms) and serves nothing: its result is not needed, the reports
        // are served by the poll above.
        unsafe {
            rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), 1);
        }
    }
}

/// How a batch's messages are tagged.
#[derive(Clone)]
struct Tag {
    sink_id: String,
    batch_id: u64,
}

/// Produces the messages of `messages` not in `skip`, waits until all are
/// acknowledged. Blocking.
fn produce(
    producer: &BaseProducer<Delivery>,
    messages: &RecordBatch,
    skip: &HashSet<u64>,
    tag: Option<&Tag>,
    timeout: Duration,
    stop_halfway_for: Option<u64>,
) -> std::result::Result<u64, (KafkaError, String)> {
    let context = producer.context();
    context.delivered.store(0, Ordering::Relaxed);
    context.failed.store(0, Ordering::Relaxed);
    *context.first_error.lock().expect("lock") = None;
    let topics = messages.column(0).as_string::<i32>();
    let partitions = messages.column(1).as_primitive::<Int32Type>();
    let keys = messages.column(2).as_binary::<i32>();
    let values = messages.column(3).as_binary::<i32>();
    let headers = messages
        .column(4)
        .as_any()
        .downcast_ref::<ListArray>()
        .expect("headers list");
    let halfway = messages.num_rows() / 2;
    let mut sent = 0u64;
    for row in 0..messages.num_rows() {
        if let Some(batch_id) = stop_halfway_for
            && row == halfway
            && row > 0
        {
            flush(producer, timeout)
                .map_err(|e| (e, "waiting for acknowledgements".to_string()))?;
            failpoint::hit("during_sink", batch_id);
        }
        if skip.contains(&(row as u64)) {
            continue;
        }
        let mut owned = OwnedHeaders::new_with_capacity(4);
        if headers.is_valid(row) {
            let entries = headers.value(row);
            let entries = entries.as_struct();
            let names = entries.column(0).as_string::<i32>();
            let header_values = entries.column(1).as_binary::<i32>();
            for i in 0..entries.len() {
                owned = owned.insert(Header {
                    key: names.value(i),
                    value: header_values.is_valid(i).then(|| header_values.value(i)),
                });
            }
        }
        if let Some(tag) = tag {
            owned = owned
                .insert(Header {
                    key: HEADER_SINK,
                    value: Some(tag.sink_id.as_bytes()),
                })
                .insert(Header {
                    key: HEADER_BATCH,
                    value: Some(tag.batch_id.to_string().as_bytes()),
                })
                .insert(Header {
                    key: HEADER_SEQ,
                    value: Some(row.to_string().as_bytes()),
                });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topics.value(row))
            .partition(partitions.value(row))
            .headers(owned);
        if keys.is_valid(row) {
            record = record.key(keys.value(row));
        }
        if values.is_valid(row) {
            record = record.payload(values.value(row));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if Instant::now() >= deadline {
                        return Err((
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                            "the producer's queue stayed full".to_string(),
                        ));
                    }
                    record = back;
                    producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err((e, format!("producing message {row}"))),
            }
        }
        sent += 1;
        if sent.is_multiple_of(1024) {
            producer.poll(Duration::ZERO);
        }
    }
    flush(producer, timeout).map_err(|e| (e, "waiting for acknowledgements".to_string()))?;
    if context.failed.load(Ordering::Relaxed) > 0 {
        let error = context
            .first_error
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
        return Err((
            error,
            format!(
                "{} of {sent} messages were not delivered",
                context.failed.load(Ordering::Relaxed)
            ),
        ));
    }
    Ok(sent)
}

/// The sequence numbers of batch `tag.batch_id` already in the partitions
/// from the logged offsets to their end. Blocking.
fn already_written(
    reader: &mut Reader,
    starts: &[(String, i32, i64)],
    tag: &Tag,
) -> std::result::Result<HashSet<u64>, String> {
    let mut ranges = Vec::with_capacity(starts.len());
    for (topic, partition, start) in starts {
        let (low, high) = reader
            .watermarks(topic, *partition)
            .map_err(|e| format!("offsets of {topic}/{partition}: {e}"))?;
        // A partition shorter than the logged offset was truncated or
        // recreated since: what the attempt wrote is anywhere in it.
        let from = if high < *start {
            low
        } else {
            (*start).max(low)
        };
        if high > from {
            ranges.push(PartitionRange {
                topic: topic.clone(),
                partition: *partition,
                start: from,
                end: high,
            });
        }
    }
    let mut found = HashSet::new();
    if ranges.is_empty() {
        return Ok(found);
    }
    let outcome = reader
        .read(&ranges)
        .map_err(|e| format!("reading the partitions' ends: {e:?}"))?;
    let batch_text = tag.batch_id.to_string();
    for batch in outcome.batches.iter().flatten() {
        let headers = batch
            .column(7)
            .as_any()
            .downcast_ref::<ListArray>()
            .expect("headers");
        for row in 0..batch.num_rows() {
            if !headers.is_valid(row) {
                continue;
            }
            let entries = headers.value(row);
            let entries = entries.as_struct();
            let names = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_binary::<i32>();
            let (mut sink, mut batch_id, mut seq) = (None, None, None);
            for i in 0..entries.len() {
                let value = values.is_valid(i).then(|| values.value(i));
                match names.value(i) {
                    HEADER_SINK => sink = value,
                    HEADER_BATCH => batch_id = value,
                    HEADER_SEQ => seq = value,
                    _ => {}
                }
            }
            if sink == Some(tag.sink_id.as_bytes())
                && batch_id == Some(batch_text.as_bytes())
                && let Some(seq) =
                    seq.and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok())
            {
                found.insert(seq);
            }
        }
    }
    Ok(found)
}

#[async_trait]
impl Sink for KafkaSink {
    fn description(&self) -> String {
        self.describe()
    }

    async fn open(&self, ctx: &SinkContext) -> Result<()> {
        let layout = self.layout(&ctx.schema)?;
        let producer = Arc::new(self.producer()?);
        let (log, last_committed) = match &self.guarantee {
            Guarantee::AtLeastOnce => (None, None),
            Guarantee::ExactlyOnce(location) => {
                let location = Location::resolve(location, &ctx.session.runtime_env())?
                    .with_durability(ctx.durability);
                let log = SinkLog::open(location.dir(), &self.describe()).await?;
                let last = log.last_committed().await?;
                if let Some(last) = last {
                    log.clean_up_committed(last).await?;
                }
                (Some(Arc::new(log)), last)
            }
        };
        let mut state = self.state.lock().await;
        *state = Some(Opened {
            producer,
            layout,
            log,
            last_committed,
            clean_up: None,
            partitions: BTreeMap::new(),
            known_ends: BTreeMap::new(),
        });
        Ok(())
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        _schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let mut guard = self.state.lock().await;
        let Some(Opened {
            producer,
            layout,
            log,
            last_committed,
            clean_up,
            partitions,
            known_ends,
        }) = guard.as_mut()
        else {
            return Err(self.err(format!("add_batch({batch_id}) called before open()")));
        };
        if let Some(previous) = clean_up.take() {
            // A failed clean-up leaves files behind, nothing wrong: the
            // next open of the log retries it.
            match previous.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(sink = %self.describe(), error = %e, "cleaning up the sink log")
                }
                Err(e) => {
                    tracing::warn!(sink = %self.describe(), error = %e, "cleaning up the sink log")
                }
            }
        }
        if last_committed.is_some_and(|last| batch_id <= last) {
            tracing::debug!(sink = %self.describe(), batch_id, "batch already committed; skipped");
            return Ok(());
        }
        let timeout = self.client.timeout;
        let stop_halfway = failpoint::armed("during_sink", batch_id).then_some(batch_id);

        // The messages and what an earlier attempt may have written.
        let (messages, skip, tag) = match &*log {
            None => (
                self.to_messages(producer, partitions, layout, &batches)
                    .await?,
                HashSet::new(),
                None,
            ),
            Some(log) => {
                let tag = Tag {
                    sink_id: log.sink_id().to_string(),
                    batch_id,
                };
                match log.pending(batch_id).await? {
                    Some(pending) => {
                        // A re-run: the logged messages, less those present.
                        let starts = pending.starts.clone();
                        let client = self.client.clone();
                        let scan_tag = tag.clone();
                        let found = blocking(move || {
                            let mut reader = Reader::new(&client).map_err(|e| e.to_string())?;
                            already_written(&mut reader, &starts, &scan_tag)
                        })
                        .await?
                        .map_err(|e| {
                            TidemillError::transient(self.err(format!("batch {batch_id}: {e}")))
                        })?;
                        tracing::info!(
                            sink = %self.describe(),
                            batch_id,
                            logged = pending.messages.num_rows(),
                            already_written = found.len(),
                            "re-running a batch: producing only the messages not yet written"
                        );
                        (pending.messages, found, Some(tag))
                    }
                    None => {
                        let messages = self
                            .to_messages(producer, partitions, layout, &batches)
                            .await?;
                        let targets: BTreeSet<(String, i32)> = (0..messages.num_rows())
                            .map(|row| {
                                (
                                    messages.column(0).as_string::<i32>().value(row).to_string(),
                                    messages.column(1).as_primitive::<Int32Type>().value(row),
                                )
                            })
                            .collect();
                        // Known bounds first; the broker only for the
                        // partitions not written to yet in this run.
                        let mut starts = Vec::with_capacity(targets.len());
                        let mut unknown = BTreeSet::new();
                        for target in targets {
                            match known_ends.get(&target) {
                                Some(&end) => starts.push((target.0, target.1, end)),
                                None => {
                                    unknown.insert(target);
                                }
                            }
                        }
                        let targets = unknown;
                        let producer = Arc::clone(producer);
                        // One query per partition, all at once: each is a
                        // round trip to the broker.
                        let asked = if targets.is_empty() {
                            Vec::new()
                        } else {
                            blocking(move || {
                                std::thread::scope(|scope| {
                                    let queries: Vec<_> = targets
                                        .into_iter()
                                        .map(|(topic, partition)| {
                                            let producer = &producer;
                                            scope.spawn(move || {
                                                let (_, high) = producer
                                                    .client()
                                                    .fetch_watermarks(&topic, partition, timeout)?;
                                                Ok::<_, KafkaError>((topic, partition, high))
                                            })
                                        })
                                        .collect();
                                    queries
                                        .into_iter()
                                        .map(|q| q.join().expect("end-offset query panicked"))
                                        .collect::<std::result::Result<Vec<_>, KafkaError>>()
                                })
                            })
                            .await?
                            .map_err(|e| {
                                self.kafka_err(
                                    &e,
                                    format!(
                                        "batch {batch_id}: end offsets of the output partitions"
                                    ),
                                )
                            })?
                        };
                        for (topic, partition, end) in asked {
                            known_ends.insert((topic.clone(), partition), end);
                            starts.push((topic, partition, end));
                        }
                        starts.sort();
                        let pending = PendingBatch {
                            batch_id,
                            starts,
                            messages,
                        };
                        log.begin(&pending).await?;
                        (pending.messages, HashSet::new(), Some(tag))
                    }
                }
            }
        };

        let rows = messages.num_rows() as u64;
        if rows > skip.len() as u64 {
            let producer_now = Arc::clone(producer);
            let result = blocking(move || {
                produce(
                    &producer_now,
                    &messages,
                    &skip,
                    tag.as_ref(),
                    timeout,
                    stop_halfway,
                )
            })
            .await?;
            // Whatever the broker acknowledged, even in a failed attempt,
            // is in the partitions for good: their ends are at least past it.
            for (topic, ends) in producer.context().ends.lock().expect("lock").iter() {
                for (&partition, &end) in ends {
                    let known = known_ends.entry((topic.clone(), partition)).or_insert(end);
                    *known = (*known).max(end);
                }
            }
            if let Err((e, context)) = result {
                // Whatever the attempt left in the producer must not reach
                // the broker after the re-run has looked: start afresh.
                let old = std::mem::replace(producer, Arc::new(self.producer()?));
                blocking(move || drop(old)).await?;
                return Err(self.kafka_err(&e, format!("batch {batch_id}: {context}")));
            }
        } else if rows > 0 {
            failpoint::hit("during_sink", batch_id);
        }
        if let Some(log) = log {
            log.commit(batch_id, rows).await?;
            // Off the batch's path: the next batch waits for it first.
            let log = Arc::clone(log);
            *clean_up = Some(tokio::spawn(async move { log.clean_up(batch_id).await }));
        }
        *last_committed = Some(batch_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
        assert!((0..4).contains(&partition_for_key(b"AAPL", 4)));
    }

    #[test]
    fn layouts_are_checked_when_the_query_starts() {
        let sink = KafkaSink::new("127.0.0.1:1").topic("t");
        let schema = Schema::new(vec![Field::new("v", DataType::Utf8, false)]);
        let err = sink.layout(&schema).unwrap_err().to_string();
        assert!(err.contains("no 'value' column"), "{err}");
        let schema = Schema::new(vec![
            Field::new("value", DataType::Utf8, false),
            Field::new("key", DataType::Binary, true),
            Field::new("partition", DataType::Int32, true),
        ]);
        let layout = sink.layout(&schema).unwrap();
        assert_eq!(
            (layout.value, layout.key, layout.partition),
            (Some(0), Some(1), Some(2))
        );
        let untargeted = KafkaSink::new("127.0.0.1:1").json_values();
        assert!(untargeted.layout(&schema).is_err());
    }
}
