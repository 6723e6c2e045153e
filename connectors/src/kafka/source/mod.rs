//! The Kafka source: a streaming source (offsets in the engine's offset
//! log) and a bounded batch read of the same records.
//!
//! This module holds the builder ([`KafkaSource`], its options and
//! validation) and the [`Source`] that opens it as a stream. The
//! rest is in:
//! - `read`: what the stream and the bounded read share: discovering the
//!   partitions, resolving starting offsets, reading exact offset ranges,
//!   and records that are gone (`fail_on_data_loss`);
//! - `decode`: Kafka columns to output rows (JSON values decoded, bad
//!   records set aside for the dead-letter sink);
//! - `bounded`: [`KafkaSource::read_batch`], one DataFusion partition per
//!   topic-partition;
//! - `stream`: the streaming [`SourceStream`] a query opens;
//! - `dead_letter`: the checkpointed log of dead-letter batch ids.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::prelude::{DataFrame, SessionContext};
use rdkafka::error::KafkaError;
use tidemill_engine::{Result, Source, SourceContext, SourceStream, TidemillError};

use super::client::{ClientOptions, is_transient};
use super::json::BadRecordPolicy;
use super::offsets::{EndingOffsets, LATEST, StartingOffsets};
use super::schema::{kafka_fields, kafka_schema};

mod bounded;
mod dead_letter;
mod decode;
mod read;
mod stream;
#[cfg(test)]
mod testing;

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
/// - new partitions and new topics matching the pattern are discovered
///   and read from their beginning: at every trigger that finds no new
///   records, and at least every
///   [`KafkaSource::partition_discovery_interval`] (1 s) while records
///   keep arriving;
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
    partition_discovery_interval: Duration,
}

/// How long a stream may plan batches from what its consumer has fetched
/// before it asks the brokers again ([`KafkaSource::partition_discovery_interval`]).
const DEFAULT_PARTITION_DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

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
            partition_discovery_interval: DEFAULT_PARTITION_DISCOVERY_INTERVAL,
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
    ///
    /// The source's consumer waits up to `fetch.wait.max.ms` (100 by
    /// default) for records: a Kafka broker answers a fetch as soon as it
    /// has records, but a broker that holds every fetch for the whole wait
    /// (Tansu 0.6) adds it to every batch's read. On such a broker, a query
    /// at trigger 0 wanting low latency sets a few milliseconds (at the
    /// cost of that many more fetch requests when idle).
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
    /// (see [`decode_json_values`](super::decode_json_values)); the rows
    /// then have those columns followed by the Kafka columns other than
    /// `value` (unless [`KafkaSource::metadata_columns`] is false). Values
    /// that do not decode follow [`KafkaSource::on_bad_record`].
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

    /// How a stream finds where its next batch ends while records keep
    /// arriving (default 1 s).
    ///
    /// A trigger asks the brokers for the partitions of its topics and
    /// their end offsets: two round trips. Between reads, the source's
    /// consumer keeps fetching the partitions it reads, and each fetch
    /// response carries the partition's end. When the consumer holds new
    /// records and lacks no more records of the ends the brokers last
    /// reported than it holds, the batch ends after the records in hand without a round
    /// trip: it reads exactly those records, as a re-run of it will. This
    /// is what takes the round trips off a batch at trigger 0.
    ///
    /// The brokers are still asked at every trigger that finds nothing
    /// new (so [`process_all_available`] means what the brokers hold), while
    /// the consumer is behind (catching up reads to the true ends, in
    /// batches as big as Spark's), and at least once per `interval`,
    /// which bounds how long a new partition or topic goes unseen while
    /// records keep arriving elsewhere. `Duration::ZERO` asks at every
    /// trigger, as Spark does.
    ///
    /// [`process_all_available`]: tidemill_engine::StreamingQuery::process_all_available
    pub fn partition_discovery_interval(mut self, interval: Duration) -> Self {
        self.partition_discovery_interval = interval;
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

    /// The explicit ending offset given for a partition, if any (not for
    /// latest or none given).
    fn explicit_end(&self, topic: &str, partition: i32) -> Option<i64> {
        match &self.ending_offsets {
            Some(EndingOffsets::Offsets(ends)) => {
                ends.get(topic, partition).filter(|end| *end != LATEST)
            }
            _ => None,
        }
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
}

#[async_trait]
impl Source for KafkaSource {
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

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn SourceStream>> {
        self.validate()?;
        Ok(Box::new(stream::KafkaStream::open(self, ctx).await?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::testing::{config_error, trade_schema, unreachable};
    use super::*;
    use crate::MemorySink;

    #[test]
    fn a_source_without_topics_is_refused() {
        let message = config_error(KafkaSource::new("broker:9092").validate());
        assert!(
            message.starts_with("KafkaSource[broker:9092: topics ]: no topics"),
            "{message}"
        );
        assert!(unreachable().validate().is_ok());
    }

    #[test]
    fn an_invalid_topic_pattern_is_refused() {
        let message = config_error(KafkaSource::new("b:1").topic_pattern("trades-(").validate());
        assert!(message.contains("invalid topic pattern"), "{message}");
        assert!(
            KafkaSource::new("b:1")
                .topic_pattern("trades-.*")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_zero_read_limit_is_refused() {
        let message = config_error(unreachable().max_offsets_per_trigger(0).validate());
        assert!(
            message.ends_with("max_offsets_per_trigger must be at least 1"),
            "{message}"
        );
        assert!(unreachable().max_offsets_per_trigger(1).validate().is_ok());
    }

    #[test]
    fn a_dead_letter_sink_needs_json_values() {
        let dead_letter = || BadRecordPolicy::DeadLetter(Arc::new(MemorySink::new()));
        let message = config_error(unreachable().on_bad_record(dead_letter()).validate());
        assert!(message.contains("needs .json_values(schema)"), "{message}");
        let decoding = unreachable()
            .json_values(trade_schema())
            .on_bad_record(dead_letter());
        assert!(decoding.validate().is_ok());
    }

    /// `topic` adds to a list but replaces a pattern; `topics` and
    /// `topic_pattern` replace whatever was chosen; the description says
    /// the brokers and the choice.
    #[test]
    fn topic_choices_replace_or_add_as_documented() {
        let source = KafkaSource::new("h1:9092,h2:9092")
            .topic_pattern("old-.*")
            .topic("a")
            .topic("b");
        assert_eq!(
            source.describe(),
            "KafkaSource[h1:9092,h2:9092: topics a,b]"
        );
        assert_eq!(
            source.subscription,
            Subscription::Topics(vec!["a".into(), "b".into()])
        );
        let source = source.topics(["c"]);
        assert_eq!(source.describe(), "KafkaSource[h1:9092,h2:9092: topics c]");
        let source = source.topic_pattern("t-[0-9]+");
        assert_eq!(
            source.describe(),
            "KafkaSource[h1:9092,h2:9092: pattern t-[0-9]+]"
        );
        assert_eq!(Source::description(&source), source.describe());
    }

    /// The description (shown in progress, logs, the monitor's page and
    /// `tidemill status`) names servers and topics, never a client option
    /// such as a SASL password.
    #[test]
    fn the_description_shows_no_client_option() {
        let source = KafkaSource::new("h1:9092")
            .topic("t")
            .option("sasl.password", "hunter2-secret")
            .option("sasl.username", "alice");
        let text = Source::description(&source);
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(!text.contains("alice"), "{text}");
    }

    #[test]
    fn raw_rows_have_the_kafka_columns() {
        assert_eq!(unreachable().output_schema().unwrap(), kafka_schema());
    }

    /// Decoded columns come first, then the Kafka columns but `value`;
    /// without metadata columns, the decoded ones alone.
    #[test]
    fn json_rows_have_the_decoded_columns_then_the_kafka_columns() {
        let schema = unreachable()
            .json_values(trade_schema())
            .output_schema()
            .unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "symbol",
                "price",
                "key",
                "topic",
                "partition",
                "offset",
                "timestamp",
                "timestamp_type",
                "headers"
            ]
        );
        let schema = unreachable()
            .json_values(trade_schema())
            .metadata_columns(false)
            .output_schema()
            .unwrap();
        assert_eq!(schema, trade_schema());
    }

    #[test]
    fn a_json_column_named_as_a_kafka_column_is_refused_unless_they_are_dropped() {
        let values = Arc::new(Schema::new(vec![
            Field::new("symbol", DataType::Utf8, false),
            Field::new("offset", DataType::Int64, false),
        ]));
        let source = unreachable().json_values(Arc::clone(&values));
        let message = config_error(source.output_schema());
        assert!(
            message.contains("the JSON schema has a column 'offset'")
                && message.contains(".metadata_columns(false)"),
            "{message}"
        );
        let schema = source.metadata_columns(false).output_schema().unwrap();
        assert_eq!(schema, values);
    }

    /// The provider validates before it reports a schema or opens a
    /// stream, so a mistake is said when the query is defined.
    #[tokio::test]
    async fn the_provider_validates_before_schema_and_open() {
        let session = SessionContext::new();
        let no_topics = KafkaSource::new("b:1");
        let message = config_error(Source::schema(&no_topics, &session).await);
        assert!(message.contains("no topics"), "{message}");
        let dir = tempfile::tempdir().unwrap();
        let opened = no_topics
            .open(SourceContext {
                session: session.clone(),
                schema: kafka_schema(),
                checkpoint: super::testing::checkpoint(&session, dir.path()),
            })
            .await;
        assert!(config_error(opened).contains("no topics"));
        let schema = Source::schema(&unreachable().json_values(trade_schema()), &session)
            .await
            .unwrap();
        assert_eq!(schema.field(0).name(), "symbol");
    }
}
