//! The Kafka source: a streaming source (offsets in the engine's offset
//! log) and a bounded batch read of the same records.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::streaming::StreamingTable as DataFusionStreamingTable;
use datafusion::dataframe::DataFrame;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Serialize};
use tidemill_engine::{
    Offset, OutputMode, ReadLimit, Result, Sink, SinkContext, Source, SourceContext,
    SourceProvider, TidemillError,
};
use tidemill_state::{CheckpointDir, StateError};

use super::client::{ClientOptions, blocking, is_transient};
use super::json::{BadRecordPolicy, dead_letter_schema, decode_json_values};
use super::offsets::{
    EARLIEST, EndingOffsets, LATEST, PartitionOffsets, StartingOffsets, spread_limit,
};
use super::reader::{PartitionRange, ReadError, Reader};
use super::schema::{KAFKA_COLUMNS, kafka_fields, kafka_schema};

/// Kind and version of the resolved starting offsets in the checkpoint.
const INITIAL_KIND: &str = "kafka-source-initial-offsets";
const INITIAL_VERSION: u32 = 1;
/// Kind and version of a dead-letter log entry.
const DEAD_LETTER_KIND: &str = "kafka-source-dead-letter";
const DEAD_LETTER_VERSION: u32 = 1;
/// Offsets per chunk of a bounded batch read.
const BATCH_READ_CHUNK: i64 = 8192;

/// Which topics a [`KafkaSource`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    Topics(Vec<String>),
    Pattern(String),
}

/// Reads Kafka topics, as a stream or as a bounded batch.
///
/// The source assigns itself the partitions of its topics (it never joins
/// a consumer group) and keeps its position in the query's offset log as
/// `{"topic": {"partition": next offset}}`, so a restarted query resumes
/// exactly where its last committed batch ended and a re-run batch reads
/// exactly the same records.
///
/// **Rows.** Spark's Kafka columns (see [`kafka_fields`]): `key`, `value`
/// (binary), `topic`, `partition`, `offset`, `timestamp`,
/// `timestamp_type`, `headers`, in `(topic, partition, offset)` order
/// within a batch. With [`KafkaSource::json_values`] the value is decoded
/// instead into typed columns, followed by the other Kafka columns.
///
/// **Options** (Spark's names in parentheses):
/// - topics: [`KafkaSource::topic`], [`KafkaSource::topics`] (`subscribe`)
///   or [`KafkaSource::topic_pattern`] (`subscribePattern`);
/// - [`KafkaSource::starting_offsets`] (`startingOffsets`): earliest,
///   latest (the streaming default), offsets per partition, or by
///   timestamp. Resolved once, when the query's first batch is planned, and
///   kept in the checkpoint;
/// - [`KafkaSource::ending_offsets`] (`endingOffsets`): where a bounded
///   read ([`KafkaSource::read_batch`]) ends; a stream does not read past
///   explicit ending offsets either;
/// - [`KafkaSource::max_offsets_per_trigger`] (`maxOffsetsPerTrigger`):
///   a cap on records per micro-batch, spread across partitions in
///   proportion to their lag;
/// - new partitions and new topics matching the pattern are discovered at
///   every trigger and read from their beginning;
/// - [`KafkaSource::fail_on_data_loss`] (`failOnDataLoss`, default true):
///   records the query still needed that are gone (deleted by retention,
///   a topic deleted and recreated) fail the query with an error naming the
///   topic, partition and offsets; with `false` the source logs a warning
///   and goes on with what is there;
/// - [`KafkaSource::option`]: any librdkafka setting (`kafka.` prefix in
///   Spark), such as `security.protocol` or `sasl.mechanism`;
/// - [`KafkaSource::timeout`]: the bound on every Kafka operation.
///
/// **Errors.** Broker I/O errors (unreachable, restarting, timed out) are
/// transient: the engine retries the batch with the same offsets. Records
/// that do not decode follow the [`BadRecordPolicy`].
///
/// ```no_run
/// # use tidemill_connectors::kafka::{KafkaSource, StartingOffsets};
/// # use arrow::datatypes::{DataType, Field, Schema};
/// # use std::sync::Arc;
/// let trade = Arc::new(Schema::new(vec![
///     Field::new("symbol", DataType::Utf8, false),
///     Field::new("price", DataType::Float64, false),
/// ]));
/// let source = KafkaSource::new("127.0.0.1:9092")
///     .topic("trades")
///     .starting_offsets(StartingOffsets::Earliest)
///     .max_offsets_per_trigger(10_000)
///     .json_values(trade);
/// ```
#[derive(Debug, Clone)]
pub struct KafkaSource {
    client: ClientOptions,
    subscription: Subscription,
    starting_offsets: Option<StartingOffsets>,
    ending_offsets: Option<EndingOffsets>,
    max_offsets_per_trigger: Option<u64>,
    fail_on_data_loss: bool,
    value_schema: Option<SchemaRef>,
    metadata_columns: bool,
    bad_records: BadRecordPolicy,
    commit_group: Option<String>,
}

impl KafkaSource {
    /// A source reading from the brokers `bootstrap_servers`
    /// (`host:port[,host:port…]`); choose topics with
    /// [`KafkaSource::topic`], [`KafkaSource::topics`] or
    /// [`KafkaSource::topic_pattern`].
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            client: ClientOptions::new(bootstrap_servers),
            subscription: Subscription::Topics(Vec::new()),
            starting_offsets: None,
            ending_offsets: None,
            max_offsets_per_trigger: None,
            fail_on_data_loss: true,
            value_schema: None,
            metadata_columns: true,
            bad_records: BadRecordPolicy::Fail,
            commit_group: None,
        }
    }

    /// Reads `topic` (added to the topics already chosen).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        match &mut self.subscription {
            Subscription::Topics(topics) => topics.push(topic.into()),
            Subscription::Pattern(_) => {
                self.subscription = Subscription::Topics(vec![topic.into()])
            }
        }
        self
    }

    /// Reads these topics.
    pub fn topics<I, T>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.subscription = Subscription::Topics(topics.into_iter().map(Into::into).collect());
        self
    }

    /// Reads every topic whose whole name matches the regular expression
    /// `pattern`; topics created later are picked up at the next trigger.
    pub fn topic_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.subscription = Subscription::Pattern(pattern.into());
        self
    }

    /// Where to start in the partitions that exist when the query first
    /// runs (default: latest for a stream, earliest for a batch read).
    pub fn starting_offsets(mut self, offsets: StartingOffsets) -> Self {
        self.starting_offsets = Some(offsets);
        self
    }

    /// Where a bounded read ends (default: latest). A stream stops at
    /// explicit ending offsets too.
    pub fn ending_offsets(mut self, offsets: EndingOffsets) -> Self {
        self.ending_offsets = Some(offsets);
        self
    }

    /// At most `n` records per micro-batch, spread across partitions in
    /// proportion to their lag. `n` must be at least 1.
    pub fn max_offsets_per_trigger(mut self, n: u64) -> Self {
        self.max_offsets_per_trigger = Some(n);
        self
    }

    /// Whether records that are gone before the query read them fail the
    /// query (default true) or are skipped with a warning.
    pub fn fail_on_data_loss(mut self, fail: bool) -> Self {
        self.fail_on_data_loss = fail;
        self
    }

    /// Sets a librdkafka configuration property (security, SASL, TLS,
    /// tuning), overriding the source's own settings. Security protocols
    /// need rdkafka built with its `ssl` or `sasl` feature.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client.options.insert(key.into(), value.into());
        self
    }

    /// The bound on every Kafka operation (metadata and offset requests;
    /// a read that receives nothing for this long fails, transiently).
    /// Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.client.timeout = timeout;
        self
    }

    /// Decodes each value as a JSON object into the columns of `schema`
    /// (see [`decode_json_values`]); the rows then have those columns
    /// followed by the Kafka columns other than `value` (unless
    /// [`KafkaSource::metadata_columns`] is false). Values that do not
    /// decode follow [`KafkaSource::on_bad_record`].
    pub fn json_values(mut self, schema: SchemaRef) -> Self {
        self.value_schema = Some(schema);
        self
    }

    /// With [`KafkaSource::json_values`]: whether the Kafka columns
    /// (`key`, `topic`, `partition`, …) follow the decoded ones (default
    /// true). Turn them off when the JSON has a field of the same name.
    pub fn metadata_columns(mut self, include: bool) -> Self {
        self.metadata_columns = include;
        self
    }

    /// With [`KafkaSource::json_values`]: what to do with values that do
    /// not decode (default: fail, naming topic, partition and offset).
    pub fn on_bad_record(mut self, policy: BadRecordPolicy) -> Self {
        self.bad_records = policy;
        self
    }

    /// After each committed batch, also commits its end offsets to the
    /// consumer group `group`, so that lag-monitoring tools see the
    /// query's progress. Never used for recovery (the offset log is), and
    /// a failing commit only logs a warning.
    pub fn commit_offsets_to_group(mut self, group: impl Into<String>) -> Self {
        self.commit_group = Some(group.into());
        self
    }

    /// The schema of the rows read.
    pub fn output_schema(&self) -> Result<SchemaRef> {
        let Some(values) = &self.value_schema else {
            return Ok(kafka_schema());
        };
        let mut fields: Vec<Field> = values.fields().iter().map(|f| f.as_ref().clone()).collect();
        if self.metadata_columns {
            for field in kafka_fields() {
                if field.name() == "value" {
                    continue;
                }
                if values.field_with_name(field.name()).is_ok() {
                    return Err(TidemillError::Config(format!(
                        "{}: the JSON schema has a column '{}', as do the Kafka columns; rename it in the schema \
                         (the JSON field must then match the new name) or drop the Kafka columns with \
                         .metadata_columns(false)",
                        self.describe(),
                        field.name()
                    )));
                }
                fields.push(field);
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn describe(&self) -> String {
        let what = match &self.subscription {
            Subscription::Topics(topics) => format!("topics {}", topics.join(",")),
            Subscription::Pattern(p) => format!("pattern {p}"),
        };
        format!("KafkaSource[{}: {what}]", self.client.bootstrap_servers)
    }

    fn err(&self, message: impl Into<String>) -> TidemillError {
        TidemillError::source(self.describe(), message)
    }

    fn kafka_err(&self, error: &KafkaError, context: impl std::fmt::Display) -> TidemillError {
        let err = self.err(format!("{context}: {error}"));
        if is_transient(error) {
            TidemillError::transient(err)
        } else {
            err
        }
    }

    fn validate(&self) -> Result<()> {
        match &self.subscription {
            Subscription::Topics(topics) if topics.is_empty() => {
                return Err(TidemillError::Config(format!(
                    "{}: no topics; choose them with .topic(..), .topics(..) or .topic_pattern(..)",
                    self.describe()
                )));
            }
            Subscription::Pattern(p) => {
                regex::Regex::new(p).map_err(|e| {
                    TidemillError::Config(format!(
                        "{}: invalid topic pattern: {e}",
                        self.describe()
                    ))
                })?;
            }
            Subscription::Topics(_) => {}
        }
        if self.max_offsets_per_trigger == Some(0) {
            return Err(TidemillError::Config(format!(
                "{}: max_offsets_per_trigger must be at least 1",
                self.describe()
            )));
        }
        if matches!(self.bad_records, BadRecordPolicy::DeadLetter(_)) && self.value_schema.is_none()
        {
            return Err(TidemillError::Config(format!(
                "{}: a dead-letter sink needs .json_values(schema): only decoding can find bad records",
                self.describe()
            )));
        }
        Ok(())
    }

    /// Reads the records from the starting offsets (default: earliest) to
    /// the ending offsets (default: the end of each partition now) as a
    /// batch [`DataFrame`], with the same columns as the stream. This is
    /// the same plan as a batch job: reprocess a topic from the start with
    /// the function a streaming query uses.
    ///
    /// Each topic-partition is one partition of the scan, read lazily when
    /// the DataFrame executes. With a dead-letter policy, the bad records
    /// of the i-th topic-partition (in topic, partition order) go to the
    /// sink as batch id `i`.
    pub async fn read_batch(&self, ctx: &SessionContext) -> Result<DataFrame> {
        self.validate()?;
        let schema = self.output_schema()?;
        let spec = self.clone();
        let ranges = blocking(move || -> Result<Vec<PartitionRange>> {
            let reader = Reader::new(&spec.client)
                .map_err(|e| spec.kafka_err(&e, "creating a consumer"))?;
            let partitions = spec.discover(&reader)?;
            let starting = spec.starting_offsets.clone().unwrap_or(StartingOffsets::Earliest);
            let start = spec.resolve_starting(&reader, &partitions, &starting)?;
            let mut ranges = Vec::with_capacity(partitions.len());
            for (topic, partition) in &partitions {
                let (_, high) = reader
                    .watermarks(topic, *partition)
                    .map_err(|e| spec.kafka_err(&e, format!("offsets of {topic}/{partition}")))?;
                let from = start.get(topic, *partition).unwrap_or(0);
                let until = match &spec.ending_offsets {
                    Some(EndingOffsets::Offsets(ends)) => match ends.get(topic, *partition) {
                        Some(LATEST) | None => high,
                        Some(end) => end,
                    },
                    _ => high,
                };
                if until < from {
                    return Err(spec.err(format!(
                        "topic {topic} partition {partition}: the ending offset {until} is before the starting offset {from}"
                    )));
                }
                ranges.push(PartitionRange {
                    topic: topic.clone(),
                    partition: *partition,
                    start: from,
                    end: until,
                });
            }
            Ok(ranges)
        })
        .await??;
        let spec = Arc::new(self.clone());
        let partitions: Vec<Arc<dyn PartitionStream>> = ranges
            .into_iter()
            .enumerate()
            .map(|(i, range)| {
                Arc::new(BoundedPartition {
                    spec: Arc::clone(&spec),
                    schema: Arc::clone(&schema),
                    range,
                    index: i as u64,
                    session: ctx.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        let table =
            DataFusionStreamingTable::try_new(Arc::clone(&schema), partitions).map_err(|e| {
                TidemillError::datafusion(format!("{}: bounded read", self.describe()), e)
            })?;
        ctx.read_table(Arc::new(table))
            .map_err(|e| TidemillError::datafusion(format!("{}: bounded read", self.describe()), e))
    }

    /// The partitions of the subscribed topics now, ordered.
    fn discover(&self, reader: &Reader) -> Result<Vec<(String, i32)>> {
        let mut out = BTreeSet::new();
        match &self.subscription {
            Subscription::Topics(topics) => {
                for topic in topics {
                    let metadata = reader
                        .metadata(Some(topic))
                        .map_err(|e| self.kafka_err(&e, format!("metadata of topic {topic}")))?;
                    for t in metadata.topics() {
                        if t.name() != topic {
                            continue;
                        }
                        if let Some(err) = t.error() {
                            let code = RDKafkaErrorCode::from(err);
                            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                                tracing::warn!(source = %self.describe(), topic, "topic does not exist (yet)");
                                continue;
                            }
                            let e = KafkaError::MetadataFetch(code);
                            return Err(self.kafka_err(&e, format!("metadata of topic {topic}")));
                        }
                        for p in t.partitions() {
                            out.insert((topic.clone(), p.id()));
                        }
                    }
                }
            }
            Subscription::Pattern(pattern) => {
                let regex = regex::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| self.err(format!("invalid topic pattern: {e}")))?;
                let metadata = reader
                    .metadata(None)
                    .map_err(|e| self.kafka_err(&e, "metadata of all topics"))?;
                for t in metadata.topics() {
                    if t.error().is_some()
                        || t.name().starts_with("__")
                        || !regex.is_match(t.name())
                    {
                        continue;
                    }
                    for p in t.partitions() {
                        out.insert((t.name().to_string(), p.id()));
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Resolves `starting` to numbers for `partitions`.
    fn resolve_starting(
        &self,
        reader: &Reader,
        partitions: &[(String, i32)],
        starting: &StartingOffsets,
    ) -> Result<PartitionOffsets> {
        let watermarks = |topic: &str, partition: i32| {
            reader
                .watermarks(topic, partition)
                .map_err(|e| self.kafka_err(&e, format!("offsets of {topic}/{partition}")))
        };
        let mut out = PartitionOffsets::new();
        let by_time = |times: Vec<(String, i32, i64)>, out: &mut PartitionOffsets| -> Result<()> {
            let found = reader
                .offsets_for_times(&times)
                .map_err(|e| self.kafka_err(&e, "offsets for timestamps"))?;
            for ((topic, partition, _), offset) in times.iter().zip(found) {
                let offset = match offset {
                    Some(o) => o,
                    None => watermarks(topic, *partition)?.1,
                };
                out.insert(topic.clone(), *partition, offset);
            }
            Ok(())
        };
        match starting {
            StartingOffsets::Earliest | StartingOffsets::Latest => {
                for (topic, partition) in partitions {
                    let (low, high) = watermarks(topic, *partition)?;
                    let offset = if *starting == StartingOffsets::Earliest {
                        low
                    } else {
                        high
                    };
                    out.insert(topic.clone(), *partition, offset);
                }
            }
            StartingOffsets::Offsets(given) => {
                for (topic, partition) in partitions {
                    let offset = match given.get(topic, *partition) {
                        Some(EARLIEST) | None => watermarks(topic, *partition)?.0,
                        Some(LATEST) => watermarks(topic, *partition)?.1,
                        Some(o) if o >= 0 => o,
                        Some(o) => {
                            return Err(TidemillError::Config(format!(
                                "{}: starting offset {o} of {topic}/{partition} is invalid (use -2 for earliest, -1 \
                                 for latest, or an offset >= 0)",
                                self.describe()
                            )));
                        }
                    };
                    out.insert(topic.clone(), *partition, offset);
                }
            }
            StartingOffsets::Timestamp(ts) => {
                let times = partitions
                    .iter()
                    .map(|(t, p)| (t.clone(), *p, *ts))
                    .collect();
                by_time(times, &mut out)?;
            }
            StartingOffsets::Timestamps(given) => {
                let mut times = Vec::new();
                for (topic, partition) in partitions {
                    match given.get(topic, *partition) {
                        Some(ts) => times.push((topic.clone(), *partition, ts)),
                        None => {
                            out.insert(topic.clone(), *partition, watermarks(topic, *partition)?.0)
                        }
                    }
                }
                if !times.is_empty() {
                    by_time(times, &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// Handles records the query needed that are gone: an error, or a
    /// warning when `fail_on_data_loss` is off.
    fn data_loss(&self, message: String) -> Result<()> {
        if self.fail_on_data_loss {
            Err(self.err(format!(
                "{message}. Some data may have been lost: records were deleted (retention) or the topic was \
                 deleted and recreated. Set fail_on_data_loss(false) to continue without them"
            )))
        } else {
            tracing::warn!(source = %self.describe(), "{message}; continuing without them (fail_on_data_loss is off)");
            Ok(())
        }
    }

    /// Reads `ranges` exactly (blocking), handling records that are gone
    /// per `fail_on_data_loss`. Returns the batches of each range.
    fn read_ranges(
        &self,
        reader: &mut Reader,
        mut ranges: Vec<PartitionRange>,
    ) -> Result<Vec<Vec<RecordBatch>>> {
        for _attempt in 0..4 {
            match reader.read(&ranges) {
                Ok(outcome) => {
                    // A range whose first record is past its start: gone
                    // records, or a gap (compaction) that is not a loss.
                    for (range, first) in ranges.iter().zip(&outcome.first_offsets) {
                        if let Some(first) = first
                            && *first > range.start
                        {
                            let (low, _) = reader
                                .watermarks(&range.topic, range.partition)
                                .map_err(|e| {
                                    self.kafka_err(
                                        &e,
                                        format!("offsets of {}/{}", range.topic, range.partition),
                                    )
                                })?;
                            if low > range.start {
                                self.data_loss(format!(
                                    "topic {} partition {}: offsets {}..{} are no longer available (the earliest \
                                     is {low})",
                                    range.topic,
                                    range.partition,
                                    range.start,
                                    low.min(*first)
                                ))?;
                            }
                        }
                    }
                    return Ok(outcome.batches);
                }
                Err(ReadError::Kafka(e, context)) => return Err(self.kafka_err(&e, context)),
                Err(ReadError::OffsetOutOfRange(message)) => {
                    let mut moved = false;
                    for range in &mut ranges {
                        if range.end <= range.start {
                            continue;
                        }
                        let (low, high) = reader
                            .watermarks(&range.topic, range.partition)
                            .map_err(|e| {
                                self.kafka_err(
                                    &e,
                                    format!("offsets of {}/{}", range.topic, range.partition),
                                )
                            })?;
                        if low > range.start || high < range.end {
                            let available_end = high.min(range.end);
                            self.data_loss(format!(
                                "topic {} partition {}: offsets {}..{} were to be read but only {low}..{high} \
                                 are available",
                                range.topic, range.partition, range.start, range.end
                            ))?;
                            range.start = range.start.max(low).min(available_end);
                            range.end = available_end;
                            moved = true;
                        }
                    }
                    if !moved {
                        return Err(TidemillError::transient(
                            self.err(format!("reading: {message}")),
                        ));
                    }
                }
                Err(ReadError::Stalled(stalled)) => {
                    let mut moved = false;
                    let mut waiting = Vec::new();
                    for (i, next) in stalled {
                        let range = &mut ranges[i];
                        match reader.watermarks(&range.topic, range.partition) {
                            Ok((low, high)) if high < range.end || low > next => {
                                self.data_loss(format!(
                                    "topic {} partition {}: offsets up to {} were to be read but only {low}..{high} \
                                     are available",
                                    range.topic, range.partition, range.end
                                ))?;
                                range.end = high.max(range.start);
                                range.start = range.start.max(low).min(range.end);
                                moved = true;
                            }
                            _ => waiting.push(format!(
                                "{}/{} at offset {next} of {}..{}",
                                range.topic, range.partition, range.start, range.end
                            )),
                        }
                    }
                    if !moved {
                        return Err(TidemillError::transient(self.err(format!(
                            "reading made no progress for {:?}: waiting for {}",
                            self.client.timeout,
                            waiting.join(", ")
                        ))));
                    }
                }
            }
        }
        Err(TidemillError::transient(self.err(
            "reading failed repeatedly while records were being deleted; retrying the batch",
        )))
    }

    /// Turns batches of Kafka columns into the output rows: unchanged, or
    /// with the value decoded. Bad records go into `dead`.
    fn decode(
        &self,
        batch: &RecordBatch,
        dead: &mut Vec<RecordBatch>,
    ) -> Result<Option<RecordBatch>> {
        let Some(value_schema) = &self.value_schema else {
            return Ok(Some(batch.clone()));
        };
        let decoded = decode_json_values(batch.column(1).as_ref(), value_schema)
            .map_err(|e| self.err(format!("decoding JSON values: {e}")))?;
        if !decoded.errors.is_empty() {
            match &self.bad_records {
                BadRecordPolicy::Fail => {
                    let (row, reason) = &decoded.errors[0];
                    let (topic, partition, offset) = coordinates(batch, *row);
                    return Err(self.err(format!(
                        "topic {topic} partition {partition} offset {offset}: the value is not a JSON object of \
                         the expected schema: {reason}{}",
                        if decoded.errors.len() > 1 {
                            format!(" ({} more bad records in this batch)", decoded.errors.len() - 1)
                        } else {
                            String::new()
                        }
                    )));
                }
                BadRecordPolicy::DeadLetter(_) => {
                    let rows = UInt32Array::from(
                        decoded
                            .errors
                            .iter()
                            .map(|(i, _)| *i as u32)
                            .collect::<Vec<_>>(),
                    );
                    let mut columns = take_columns(batch.columns(), &rows)?;
                    columns.push(Arc::new(StringArray::from(
                        decoded
                            .errors
                            .iter()
                            .map(|(_, e)| e.as_str())
                            .collect::<Vec<_>>(),
                    )));
                    dead.push(
                        RecordBatch::try_new(dead_letter_schema(), columns)
                            .map_err(|e| self.err(format!("dead-letter rows: {e}")))?,
                    );
                }
            }
        }
        if decoded.batch.num_rows() == 0 {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = decoded.batch.columns().to_vec();
        if self.metadata_columns {
            let meta: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .zip(KAFKA_COLUMNS)
                .filter(|(_, name)| *name != "value")
                .map(|(c, _)| Arc::clone(c))
                .collect();
            columns.extend(take_columns(&meta, &decoded.rows)?);
        }
        let schema = self.output_schema()?;
        RecordBatch::try_new(schema, columns)
            .map(Some)
            .map_err(|e| self.err(format!("decoded rows: {e}")))
    }
}

fn take_columns(columns: &[ArrayRef], rows: &UInt32Array) -> Result<Vec<ArrayRef>> {
    columns
        .iter()
        .map(|c| take(c.as_ref(), rows, None))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TidemillError::Internal(format!("selecting rows: {e}")))
}

/// Topic, partition and offset of `row` of a batch of Kafka columns.
fn coordinates(batch: &RecordBatch, row: usize) -> (String, i32, i64) {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type};
    (
        batch.column(2).as_string::<i32>().value(row).to_string(),
        batch.column(3).as_primitive::<Int32Type>().value(row),
        batch.column(4).as_primitive::<Int64Type>().value(row),
    )
}

#[async_trait]
impl SourceProvider for KafkaSource {
    fn description(&self) -> String {
        self.describe()
    }

    async fn schema(&self, _session: &SessionContext) -> Result<SchemaRef> {
        self.validate()?;
        self.output_schema()
    }

    async fn read_batch(&self, session: &SessionContext) -> Result<DataFrame> {
        KafkaSource::read_batch(self, session).await
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
        self.validate()?;
        let dead_letters = DeadLetterLog::load(ctx.checkpoint.child("dead_letter")).await?;
        Ok(Box::new(KafkaStream {
            description: self.describe(),
            spec: Arc::new(self.clone()),
            session: ctx.session,
            checkpoint: ctx.checkpoint,
            reader: None,
            initial: None,
            available_now_cap: None,
            dead_letters,
            dead_letter_opened: false,
            committer: None,
        }))
    }
}

/// A [`KafkaSource`] opened for one query.
struct KafkaStream {
    description: String,
    spec: Arc<KafkaSource>,
    session: SessionContext,
    checkpoint: CheckpointDir,
    /// The consumer, between calls (taken while a blocking call runs).
    reader: Option<Reader>,
    /// The resolved starting offsets, once known.
    initial: Option<PartitionOffsets>,
    /// After `prepare_for_available_now`: the ends not to go past.
    available_now_cap: Option<PartitionOffsets>,
    dead_letters: DeadLetterLog,
    dead_letter_opened: bool,
    /// The consumer committing offsets to a group, if asked for.
    committer: Option<Arc<rdkafka::consumer::BaseConsumer>>,
}

impl std::fmt::Debug for KafkaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStream")
            .field("description", &self.description)
            .field("initial", &self.initial)
            .finish()
    }
}

impl KafkaStream {
    /// Runs `f` with the consumer on the blocking pool.
    async fn with_reader<T, F>(&mut self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&KafkaSource, &mut Reader) -> Result<T> + Send + 'static,
    {
        let reader = self.reader.take();
        let spec = Arc::clone(&self.spec);
        let (reader, result) = blocking(move || {
            let mut reader = match reader {
                Some(reader) => reader,
                None => match Reader::new(&spec.client) {
                    Ok(reader) => reader,
                    Err(e) => return (None, Err(spec.kafka_err(&e, "creating a consumer"))),
                },
            };
            let result = f(&spec, &mut reader);
            (Some(reader), result)
        })
        .await?;
        self.reader = reader;
        result
    }

    /// The starting offsets, resolved once and kept in the checkpoint.
    async fn initial_offsets(&mut self) -> Result<PartitionOffsets> {
        if let Some(initial) = &self.initial {
            return Ok(initial.clone());
        }
        let stored: Option<serde_json::Value> = self
            .checkpoint
            .read("initial", INITIAL_KIND, INITIAL_VERSION)
            .await?;
        let offsets = match stored {
            Some(json) => PartitionOffsets::from_json(&json).map_err(|e| {
                TidemillError::Checkpoint(StateError::Corrupt {
                    path: self.checkpoint.path("initial"),
                    reason: e,
                })
            })?,
            None => {
                let starting = self
                    .spec
                    .starting_offsets
                    .clone()
                    .unwrap_or(StartingOffsets::Latest);
                let resolved = self
                    .with_reader(move |spec, reader| {
                        let partitions = spec.discover(reader)?;
                        spec.resolve_starting(reader, &partitions, &starting)
                    })
                    .await?;
                match self
                    .checkpoint
                    .create(
                        "initial",
                        INITIAL_KIND,
                        INITIAL_VERSION,
                        &resolved.to_json(),
                    )
                    .await
                {
                    Ok(()) => resolved,
                    Err(StateError::AlreadyExists { .. }) => {
                        let json: serde_json::Value = self
                            .checkpoint
                            .read("initial", INITIAL_KIND, INITIAL_VERSION)
                            .await?
                            .unwrap_or_default();
                        PartitionOffsets::from_json(&json).map_err(|e| self.spec.err(e))?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        tracing::debug!(source = %self.description, initial = %offsets, "starting offsets");
        self.initial = Some(offsets.clone());
        Ok(offsets)
    }

    fn parse(&self, offset: &Offset) -> Result<PartitionOffsets> {
        PartitionOffsets::from_offset(offset).map_err(|e| {
            self.spec.err(format!(
                "invalid offset {offset}: {e} (is the checkpoint of another source?)"
            ))
        })
    }

    async fn start_offsets(&mut self, start: Option<&Offset>) -> Result<PartitionOffsets> {
        match start {
            Some(offset) => self.parse(offset),
            None => self.initial_offsets().await,
        }
    }

    /// The ends now: every partition's end offset, with its earliest.
    async fn ends_now(&mut self) -> Result<Vec<(String, i32, i64, i64)>> {
        self.with_reader(|spec, reader| {
            let partitions = spec.discover(reader)?;
            let mut out = Vec::with_capacity(partitions.len());
            for (topic, partition) in partitions {
                let (low, high) = reader
                    .watermarks(&topic, partition)
                    .map_err(|e| spec.kafka_err(&e, format!("offsets of {topic}/{partition}")))?;
                out.push((topic, partition, low, high));
            }
            Ok(out)
        })
        .await
    }

    /// The dead-letter batch id of the range `(start, end]`: the one logged
    /// for it, or a new one logged now (before the sink is written).
    async fn dead_letter_id(&mut self, start: Option<&Offset>, end: &Offset) -> Result<u64> {
        let start = start
            .map(|o| o.0.clone())
            .unwrap_or(serde_json::Value::Null);
        self.dead_letters.id_for(start, end.0.clone()).await
    }

    async fn write_dead_letters(
        &mut self,
        start: Option<&Offset>,
        end: &Offset,
        rows: Vec<RecordBatch>,
    ) -> Result<()> {
        let BadRecordPolicy::DeadLetter(sink) = self.spec.bad_records.clone() else {
            return Ok(());
        };
        if !self.dead_letter_opened {
            sink.open(&SinkContext {
                session: self.session.clone(),
                query_name: None,
                schema: dead_letter_schema(),
                output_mode: OutputMode::Append,
            })
            .await?;
            self.dead_letter_opened = true;
        }
        let id = self.dead_letter_id(start, end).await?;
        let count: usize = rows.iter().map(RecordBatch::num_rows).sum();
        tracing::warn!(
            source = %self.description,
            records = count,
            dead_letter_batch = id,
            "records whose value did not decode sent to the dead-letter sink {}",
            sink.description()
        );
        sink.add_batch(id, dead_letter_schema(), rows).await
    }
}

#[async_trait]
impl Source for KafkaStream {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn default_read_limit(&self) -> ReadLimit {
        match self.spec.max_offsets_per_trigger {
            Some(n) => ReadLimit::MaxRows(n),
            None => ReadLimit::All,
        }
    }

    async fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let from = self.start_offsets(start).await?;
        let now = match &self.available_now_cap {
            // The ends were taken when the AvailableNow query started and
            // bound every batch: as Spark, the source does not ask the
            // broker again (the earliest offsets are not used here).
            Some(cap) => cap
                .iter()
                .map(|(topic, partition, end)| (topic.to_string(), partition, 0, end))
                .collect(),
            None => self.ends_now().await?,
        };
        let explicit_ends = match &self.spec.ending_offsets {
            Some(EndingOffsets::Offsets(ends)) => Some(ends.clone()),
            _ => None,
        };
        let mut keys = Vec::new();
        let mut spans = Vec::new();
        for (topic, partition, _low, high) in &now {
            let begin = from.get(topic, *partition);
            let s = begin.unwrap_or(0);
            let mut available = *high;
            if let Some(cap) = &self.available_now_cap {
                available = available.min(cap.get(topic, *partition).unwrap_or(0));
            }
            if let Some(ends) = &explicit_ends
                && let Some(end) = ends.get(topic, *partition)
                && end != LATEST
            {
                available = available.min(end);
            }
            if *high < s {
                // The partition's end moved back: the topic was recreated
                // or truncated.
                self.spec.data_loss(format!(
                    "topic {topic} partition {partition}: the query has read up to offset {s} but the partition now \
                     ends at {high}"
                ))?;
                keys.push((topic.clone(), *partition, begin.is_some()));
                spans.push((*high, *high));
                continue;
            }
            keys.push((topic.clone(), *partition, begin.is_some()));
            spans.push((s, available.max(s)));
        }
        let ends = match limit {
            ReadLimit::MaxRows(n) => spread_limit(&spans, n),
            ReadLimit::All | ReadLimit::MaxFiles(_) => spans.iter().map(|(_, e)| *e).collect(),
        };
        let mut next = from.clone();
        for ((topic, partition, known), end) in keys.into_iter().zip(ends) {
            // A new partition enters the offsets once it has records.
            if known || end > 0 {
                next.insert(topic, partition, end);
            }
        }
        if next == from {
            return Ok(start.cloned());
        }
        Ok(Some(next.to_offset()))
    }

    async fn read(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let from = self.start_offsets(start).await?;
        let until = self.parse(end)?;
        let mut ranges = Vec::with_capacity(until.len());
        for (topic, partition, e) in until.iter() {
            let s = from.get(topic, partition).unwrap_or(0);
            if e < s {
                self.spec.data_loss(format!(
                    "topic {topic} partition {partition}: the batch was to read from offset {s} but the partition \
                     ended at {e} (recreated or truncated)"
                ))?;
                continue;
            }
            ranges.push(PartitionRange {
                topic: topic.to_string(),
                partition,
                start: s,
                end: e,
            });
        }
        if ranges.iter().all(|r| r.end <= r.start) {
            return Ok(Vec::new());
        }
        let per_range = self
            .with_reader(move |spec, reader| spec.read_ranges(reader, ranges))
            .await?;
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for batch in per_range.into_iter().flatten() {
            if let Some(batch) = self.spec.decode(&batch, &mut dead)? {
                out.push(batch);
            }
        }
        if !dead.is_empty() {
            self.write_dead_letters(start, end, dead).await?;
        }
        Ok(out)
    }

    async fn commit(&mut self, end: &Offset) -> Result<()> {
        let committed = self.parse(end)?;
        self.dead_letters.purge(&committed).await?;
        let Some(group) = self.spec.commit_group.clone() else {
            return Ok(());
        };
        if self.committer.is_none() {
            let config = self.spec.client.config(&[
                ("group.id", group.clone()),
                ("enable.auto.commit", "false".into()),
            ]);
            match config.create::<rdkafka::consumer::BaseConsumer>() {
                Ok(consumer) => self.committer = Some(Arc::new(consumer)),
                Err(e) => {
                    tracing::warn!(source = %self.description, group, error = %e, "cannot create the consumer that commits offsets");
                    return Ok(());
                }
            }
        }
        let consumer = Arc::clone(self.committer.as_ref().expect("committer"));
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (topic, partition, offset) in committed.iter() {
            let _ = tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset));
        }
        let description = self.description.clone();
        blocking(move || {
            use rdkafka::consumer::{CommitMode, Consumer};
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(source = %description, group, error = %e, "committing offsets to the group failed");
            }
            // Serve the commit's callback.
            let _ = consumer.poll(Duration::ZERO);
        })
        .await
    }

    async fn prepare_for_available_now(&mut self) -> Result<()> {
        let now = self.ends_now().await?;
        let mut cap = PartitionOffsets::new();
        for (topic, partition, _, high) in now {
            cap.insert(topic, partition, high);
        }
        self.available_now_cap = Some(cap);
        Ok(())
    }
}

/// The dead-letter log: which dead-letter batch id each source range
/// wrote its bad records under, so a replay writes under the same id.
#[derive(Debug)]
struct DeadLetterLog {
    dir: CheckpointDir,
    entries: Vec<DeadLetterEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeadLetterEntry {
    id: u64,
    start: serde_json::Value,
    end: serde_json::Value,
}

impl DeadLetterLog {
    async fn load(dir: CheckpointDir) -> Result<Self> {
        let mut entries = Vec::new();
        for name in dir.list_names().await? {
            if name.parse::<u64>().is_err() {
                continue;
            }
            if let Some(entry) = dir
                .read::<DeadLetterEntry>(&name, DEAD_LETTER_KIND, DEAD_LETTER_VERSION)
                .await?
            {
                entries.push(entry);
            }
        }
        entries.sort_by_key(|e| e.id);
        Ok(Self { dir, entries })
    }

    async fn id_for(&mut self, start: serde_json::Value, end: serde_json::Value) -> Result<u64> {
        if let Some(entry) = self
            .entries
            .iter()
            .find(|e| e.start == start && e.end == end)
        {
            return Ok(entry.id);
        }
        let id = self.entries.last().map_or(0, |e| e.id + 1);
        let entry = DeadLetterEntry { id, start, end };
        self.dir
            .create(
                &id.to_string(),
                DEAD_LETTER_KIND,
                DEAD_LETTER_VERSION,
                &entry,
            )
            .await?;
        self.entries.push(entry);
        Ok(id)
    }

    /// Forgets entries of ranges that end at or before `committed` (they
    /// will never be read again), keeping the newest for its id.
    async fn purge(&mut self, committed: &PartitionOffsets) -> Result<()> {
        let Some(newest) = self.entries.last().map(|e| e.id) else {
            return Ok(());
        };
        let mut kept = Vec::new();
        for entry in std::mem::take(&mut self.entries) {
            let done = entry.id != newest
                && PartitionOffsets::from_json(&entry.end)
                    .map(|end| {
                        end.iter()
                            .all(|(t, p, o)| committed.get(t, p).is_some_and(|c| c >= o))
                    })
                    .unwrap_or(false);
            if done {
                self.dir.delete(&entry.id.to_string()).await?;
            } else {
                kept.push(entry);
            }
        }
        self.entries = kept;
        Ok(())
    }
}

/// One topic-partition of a bounded read, as a DataFusion partition.
struct BoundedPartition {
    spec: Arc<KafkaSource>,
    schema: SchemaRef,
    range: PartitionRange,
    index: u64,
    session: SessionContext,
}

impl std::fmt::Debug for BoundedPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedPartition")
            .field("range", &self.range)
            .finish()
    }
}

struct BoundedState {
    spec: Arc<KafkaSource>,
    reader: Option<Reader>,
    next: i64,
    range: PartitionRange,
    dead: Vec<RecordBatch>,
    index: u64,
    session: SessionContext,
    done: bool,
}

impl PartitionStream for BoundedPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let state = BoundedState {
            spec: Arc::clone(&self.spec),
            reader: None,
            next: self.range.start,
            range: self.range.clone(),
            dead: Vec::new(),
            index: self.index,
            session: self.session.clone(),
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            loop {
                if state.done {
                    return None;
                }
                if state.next >= state.range.end {
                    state.done = true;
                    if let Err(e) = flush_dead_letters(&mut state).await {
                        return Some((Err(e.into()), state));
                    }
                    return None;
                }
                let chunk = PartitionRange {
                    start: state.next,
                    end: (state.next + BATCH_READ_CHUNK).min(state.range.end),
                    ..state.range.clone()
                };
                let spec = Arc::clone(&state.spec);
                let reader = state.reader.take();
                let read = blocking(move || {
                    let mut reader = match reader {
                        Some(r) => r,
                        None => match Reader::new(&spec.client) {
                            Ok(r) => r,
                            Err(e) => {
                                return (None, Err(spec.kafka_err(&e, "creating a consumer")));
                            }
                        },
                    };
                    let result = spec.read_ranges(&mut reader, vec![chunk]);
                    (Some(reader), result)
                })
                .await;
                let batches = match read {
                    Ok((reader, Ok(batches))) => {
                        state.reader = reader;
                        batches
                    }
                    Ok((_, Err(e))) | Err(e) => {
                        state.done = true;
                        return Some((Err(e.into()), state));
                    }
                };
                state.next = (state.next + BATCH_READ_CHUNK).min(state.range.end);
                let mut out = Vec::new();
                for batch in batches.into_iter().flatten() {
                    match state.spec.decode(&batch, &mut state.dead) {
                        Ok(Some(b)) => out.push(b),
                        Ok(None) => {}
                        Err(e) => {
                            state.done = true;
                            return Some((Err(e.into()), state));
                        }
                    }
                }
                if out.is_empty() {
                    continue;
                }
                let schema = out[0].schema();
                match arrow::compute::concat_batches(&schema, &out) {
                    Ok(batch) => return Some((Ok(batch), state)),
                    Err(e) => {
                        state.done = true;
                        return Some((Err(e.into()), state));
                    }
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        ))
    }
}

async fn flush_dead_letters(state: &mut BoundedState) -> Result<()> {
    let BadRecordPolicy::DeadLetter(sink) = &state.spec.bad_records else {
        return Ok(());
    };
    if state.dead.is_empty() {
        return Ok(());
    }
    let sink: Arc<dyn Sink> = Arc::clone(sink);
    sink.open(&SinkContext {
        session: state.session.clone(),
        query_name: None,
        schema: dead_letter_schema(),
        output_mode: OutputMode::Append,
    })
    .await?;
    let rows = std::mem::take(&mut state.dead);
    sink.add_batch(state.index, dead_letter_schema(), rows)
        .await
}
