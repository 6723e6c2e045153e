//! `connector = 'kafka'` in a pipeline's `CREATE STREAM` and `CREATE SINK`:
//! the options of a [`KafkaSource`] and a [`KafkaSink`].

use std::sync::Arc;
use std::time::Duration;

use tidemill_engine::{Sink, Source};

use super::{BadRecordPolicy, EndingOffsets, KafkaSink, KafkaSource, StartingOffsets};
use crate::ParquetSink;
use crate::registry::{
    ConnectorOptions, DeclaredSink, OptionError, SinkConnector, SinkDeclaration, StreamConnector,
    StreamDeclaration,
};

/// The prefix of librdkafka settings passed through to the client
/// (`kafka.security.protocol = 'SASL_SSL'`).
const CLIENT_PREFIX: &str = "kafka.";

/// Makes a [`KafkaSource`] for a stream and a [`KafkaSink`] for a sink.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KafkaConnector;

impl StreamConnector for KafkaConnector {
    fn source(&self, stream: &StreamDeclaration) -> Result<Arc<dyn Source>, OptionError> {
        let options = &stream.options;
        let what = options.subject();
        options.check_known(
            "a kafka stream",
            &[
                "bootstrap_servers",
                "topic",
                "topic_pattern",
                "starting_offsets",
                "ending_offsets",
                "max_offsets_per_trigger",
                "fail_on_data_loss",
                "format",
                "metadata_columns",
                "dead_letter_path",
                "commit_offsets_to_group",
                "timeout",
                "partition_discovery_interval",
            ],
            Some(CLIENT_PREFIX),
        )?;
        let mut source = KafkaSource::new(options.require("bootstrap_servers")?);
        source = match (options.get("topic"), options.get("topic_pattern")) {
            (Some(list), None) => {
                let topics: Vec<String> = list
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect();
                if topics.is_empty() {
                    return Err(
                        options.error("topic", format!("{what}: option 'topic' names no topic"))
                    );
                }
                source.topics(topics)
            }
            (None, Some(pattern)) => source.topic_pattern(pattern),
            (Some(_), Some(_)) => {
                return Err(options.error(
                    "topic_pattern",
                    format!("{what}: give either 'topic' or 'topic_pattern', not both"),
                ));
            }
            (None, None) => {
                return Err(options.error_at_declaration(format!(
                    "{what} needs the option 'topic' (a name or a comma-separated list) or \
                     'topic_pattern'"
                )));
            }
        };
        if let Some(text) = options.get("starting_offsets") {
            let offsets = StartingOffsets::parse(text).map_err(|e| {
                options.error(
                    "starting_offsets",
                    format!(
                        "option 'starting_offsets' must be earliest, latest or offsets JSON such \
                         as {{\"topic\": {{\"0\": 42}}}}: {e}"
                    ),
                )
            })?;
            source = source.starting_offsets(offsets);
        }
        if let Some(text) = options.get("ending_offsets") {
            let offsets = EndingOffsets::parse(text).map_err(|e| {
                options.error(
                    "ending_offsets",
                    format!(
                        "option 'ending_offsets' must be latest or offsets JSON such as \
                         {{\"topic\": {{\"0\": 42}}}}: {e}"
                    ),
                )
            })?;
            source = source.ending_offsets(offsets);
        }
        match options.number::<u64>("max_offsets_per_trigger")? {
            Some(0) => {
                return Err(options.error(
                    "max_offsets_per_trigger",
                    "option 'max_offsets_per_trigger' must be at least 1",
                ));
            }
            Some(n) => source = source.max_offsets_per_trigger(n),
            None => {}
        }
        if let Some(fail) = options.boolean("fail_on_data_loss")? {
            source = source.fail_on_data_loss(fail);
        }
        let json = json_format(options)?;
        match (json, &stream.schema) {
            (true, Some(schema)) => source = source.json_values(Arc::clone(schema)),
            (true, None) => {
                return Err(options.error(
                    "format",
                    format!(
                        "{what}: format 'json' decodes each value into the declared columns; \
                         declare them: CREATE STREAM {} (name TYPE, …)",
                        stream.name
                    ),
                ));
            }
            (false, Some(_)) => {
                return Err(options.error_at_declaration(format!(
                    "{what} declares columns but reads raw records (key, value, topic, \
                     partition, offset, timestamp, timestamp_type, headers); add format = \
                     'json' to decode each value into the declared columns"
                )));
            }
            (false, None) => {}
        }
        for key in ["metadata_columns", "dead_letter_path"] {
            if !json && options.get(key).is_some() {
                return Err(options.error(
                    key,
                    format!("option '{key}' applies to format = 'json' only"),
                ));
            }
        }
        if let Some(include) = options.boolean("metadata_columns")? {
            source = source.metadata_columns(include);
        }
        if let Some(path) = options.get("dead_letter_path") {
            source = source.on_bad_record(BadRecordPolicy::DeadLetter(Arc::new(ParquetSink::new(
                path,
            ))));
        }
        if let Some(group) = options.get("commit_offsets_to_group") {
            source = source.commit_offsets_to_group(group);
        }
        if let Some(timeout) = options.duration("timeout")? {
            source = source.timeout(timeout);
        }
        if let Some(interval) = options.duration("partition_discovery_interval")? {
            source = source.partition_discovery_interval(interval);
        }
        for (key, value) in options.prefixed(CLIENT_PREFIX) {
            source = source.option(key, value);
        }
        Ok(Arc::new(source))
    }
}

impl SinkConnector for KafkaConnector {
    fn declare(&self, sink: &SinkDeclaration) -> Result<Box<dyn DeclaredSink>, OptionError> {
        let options = &sink.options;
        options.check_known(
            "a kafka sink",
            &[
                "bootstrap_servers",
                "topic",
                "format",
                "key_column",
                "exactly_once",
                "timeout",
            ],
            Some(CLIENT_PREFIX),
        )?;
        Ok(Box::new(Declared {
            bootstrap_servers: options.require("bootstrap_servers")?.to_string(),
            topic: options.get("topic").map(str::to_string),
            json: json_format(options)?,
            key_column: options.get("key_column").map(str::to_string),
            exactly_once: options.boolean("exactly_once")?.unwrap_or(true),
            timeout: options.duration("timeout")?,
            client_options: options
                .prefixed(CLIENT_PREFIX)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }))
    }
}

/// A checked Kafka sink declaration.
#[derive(Debug)]
struct Declared {
    bootstrap_servers: String,
    topic: Option<String>,
    /// `format = 'json'`: each row is one JSON object value.
    json: bool,
    key_column: Option<String>,
    /// Exactly once through a log kept in the query's checkpoint (the
    /// default), or at least once.
    exactly_once: bool,
    timeout: Option<Duration>,
    client_options: Vec<(String, String)>,
}

impl DeclaredSink for Declared {
    /// A streaming query's sink produces exactly once through a log in
    /// `<checkpoint>/sink`; a batch run's produces at least once.
    fn sink(&self, checkpoint: Option<&str>) -> Arc<dyn Sink> {
        let mut sink = KafkaSink::new(self.bootstrap_servers.clone());
        if let Some(topic) = &self.topic {
            sink = sink.topic(topic.clone());
        }
        if self.json {
            sink = sink.json_values();
        }
        if let Some(key) = &self.key_column {
            sink = sink.key_column(key.clone());
        }
        if let (true, Some(checkpoint)) = (self.exactly_once, checkpoint) {
            sink = sink.exactly_once(format!("{checkpoint}/sink"));
        }
        if let Some(timeout) = self.timeout {
            sink = sink.timeout(timeout);
        }
        for (key, value) in &self.client_options {
            sink = sink.option(key.clone(), value.clone());
        }
        Arc::new(sink)
    }
}

/// `format` of a Kafka stream or sink: `json`, or `raw` (the default).
fn json_format(options: &ConnectorOptions) -> Result<bool, OptionError> {
    match options.get("format") {
        None | Some("raw") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(options.error(
            "format",
            format!(
                "unknown format '{other}' for {}; valid formats: json, raw",
                options.subject()
            ),
        )),
    }
}
