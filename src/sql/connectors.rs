//! The connectors a pipeline file can name, and their options.

use std::time::Duration;

use tidemill_connectors::FileFormat;
#[cfg(feature = "kafka")]
use tidemill_connectors::kafka::{EndingOffsets, StartingOffsets};
use tidemill_engine::watermark::parse_delay;
use tidemill_engine::{OutputMode, TidemillError};

use super::PipelineError;
use super::parser::{Located, SinkDef, StreamDef};

/// A stream's connector, from `CREATE STREAM … WITH (connector = …)`.
#[derive(Debug, Clone)]
pub(super) enum StreamConnector {
    /// `connector = 'files'`: new files under a directory.
    Files {
        path: String,
        format: FileFormat,
        max_files_per_trigger: Option<u64>,
        header: Option<bool>,
        delimiter: Option<u8>,
        /// `listing_margin`: see `FileSource::listing_margin`.
        listing_margin: Option<Duration>,
    },
    /// `connector = 'rate'`: generated `(timestamp, value)` rows.
    Rate {
        rows_per_second: u64,
        max_rows_per_trigger: Option<u64>,
    },
    /// `connector = 'kafka'`: records of Kafka topics.
    #[cfg(feature = "kafka")]
    Kafka(KafkaStream),
}

/// The options of a Kafka stream.
#[cfg(feature = "kafka")]
#[derive(Debug, Clone)]
pub(super) struct KafkaStream {
    pub bootstrap_servers: String,
    /// `topic` (a comma-separated list) or `topic_pattern`.
    pub topics: KafkaTopics,
    pub starting_offsets: Option<StartingOffsets>,
    pub ending_offsets: Option<EndingOffsets>,
    pub max_offsets_per_trigger: Option<u64>,
    pub fail_on_data_loss: Option<bool>,
    /// `format = 'json'`: values decoded by the declared columns.
    pub json: bool,
    pub metadata_columns: Option<bool>,
    pub dead_letter_path: Option<String>,
    pub commit_offsets_to_group: Option<String>,
    pub timeout: Option<Duration>,
    /// `kafka.<setting>` options, prefix removed.
    pub client_options: Vec<(String, String)>,
}

/// The topics a Kafka stream reads.
#[cfg(feature = "kafka")]
#[derive(Debug, Clone)]
pub(super) enum KafkaTopics {
    List(Vec<String>),
    Pattern(String),
}

/// A sink's connector and output mode, from `CREATE SINK … WITH (…)`.
#[derive(Debug, Clone)]
pub(super) struct SinkSpec {
    pub connector: SinkConnector,
    pub output_mode: OutputMode,
}

impl SinkSpec {
    /// Refuses an output mode the sink's connector cannot write, saying
    /// which modes it can and which sinks take the others. A `files` sink
    /// never rewrites committed files, so it takes `append` only; `console`
    /// and `kafka` sinks take every mode (update and complete rows are
    /// printed or produced as they come).
    pub fn check_output_mode(&self, sink: &str) -> Result<(), TidemillError> {
        match (&self.connector, self.output_mode) {
            (SinkConnector::Files { .. }, OutputMode::Update | OutputMode::Complete) => {
                Err(TidemillError::Unsupported {
                    operator: format!("files sink {sink}"),
                    reason: format!(
                        "supports output_mode = 'append' only, not '{}' (committed parquet files \
                         are never rewritten)",
                        self.output_mode
                    ),
                    fix: format!(
                        "Use output_mode = 'append' (for an aggregation: a watermark on the \
                         stream and a window among the group keys), or a console or kafka sink \
                         for {} mode",
                        self.output_mode
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Where a sink writes.
#[derive(Debug, Clone)]
pub(super) enum SinkConnector {
    /// `connector = 'files'`: parquet files and a manifest per batch.
    Files {
        path: String,
        max_rows_per_file: Option<usize>,
    },
    /// `connector = 'console'`: printed tables.
    Console { num_rows: Option<usize> },
    /// `connector = 'kafka'`: messages to a Kafka topic.
    #[cfg(feature = "kafka")]
    Kafka(KafkaOut),
}

/// The options of a Kafka sink.
#[cfg(feature = "kafka")]
#[derive(Debug, Clone)]
pub(super) struct KafkaOut {
    pub bootstrap_servers: String,
    pub topic: Option<String>,
    /// `format = 'json'`: each row is one JSON object value.
    pub json: bool,
    pub key_column: Option<String>,
    /// Exactly once through a log kept in the query's checkpoint (default),
    /// or at least once.
    pub exactly_once: bool,
    pub timeout: Option<Duration>,
    /// `kafka.<setting>` options, prefix removed.
    pub client_options: Vec<(String, String)>,
}

const STREAM_CONNECTORS: &str = "'files', 'rate', 'kafka'";
const SINK_CONNECTORS: &str = "'files', 'console', 'kafka'";

/// The prefix of librdkafka settings passed through to the client.
#[cfg(feature = "kafka")]
pub(super) const KAFKA_PREFIX: &str = "kafka.";

fn boolean(
    options: &super::parser::Options,
    key: &str,
    fallback: (u64, u64),
) -> Result<Option<bool>, PipelineError> {
    match options.get(key) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(invalid(
            options.position(key).unwrap_or(fallback),
            format!("option '{key}' must be true or false, got '{other}'"),
        )),
    }
}

fn duration(
    options: &super::parser::Options,
    key: &str,
    fallback: (u64, u64),
) -> Result<Option<Duration>, PipelineError> {
    let Some(text) = options.get(key) else {
        return Ok(None);
    };
    parse_delay(text).map(Some).map_err(|e| {
        invalid(
            options.position(key).unwrap_or(fallback),
            format!("option '{key}': {e}"),
        )
    })
}

/// `format` of a Kafka stream or sink: `json`, or `raw` (the default).
#[cfg(feature = "kafka")]
fn kafka_format(
    options: &super::parser::Options,
    what: &str,
    fallback: (u64, u64),
) -> Result<bool, PipelineError> {
    match options.get("format") {
        None | Some("raw") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(invalid(
            options.position("format").unwrap_or(fallback),
            format!("unknown format '{other}' for {what}; valid formats: json, raw"),
        )),
    }
}

#[cfg(feature = "kafka")]
fn client_options(options: &super::parser::Options) -> Vec<(String, String)> {
    options
        .prefixed(KAFKA_PREFIX)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(feature = "kafka")]
fn kafka_stream(def: &Located<StreamDef>, what: &str) -> Result<KafkaStream, PipelineError> {
    let options = &def.item.options;
    options.check_known_with_prefix(
        &[
            "connector",
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
        ],
        KAFKA_PREFIX,
        &format!("a kafka stream ({what})"),
    )?;
    let bootstrap_servers = options
        .require("bootstrap_servers", what, at(def))?
        .to_string();
    let topics = match (options.get("topic"), options.get("topic_pattern")) {
        (Some(list), None) => {
            let topics: Vec<String> = list
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            if topics.is_empty() {
                return Err(invalid(
                    options.position("topic").unwrap_or(at(def)),
                    format!("{what}: option 'topic' names no topic"),
                ));
            }
            KafkaTopics::List(topics)
        }
        (None, Some(pattern)) => KafkaTopics::Pattern(pattern.to_string()),
        (Some(_), Some(_)) => {
            return Err(invalid(
                options.position("topic_pattern").unwrap_or(at(def)),
                format!("{what}: give either 'topic' or 'topic_pattern', not both"),
            ));
        }
        (None, None) => {
            return Err(invalid(
                at(def),
                format!(
                    "{what} needs the option 'topic' (a name or a comma-separated list) or 'topic_pattern'"
                ),
            ));
        }
    };
    let starting_offsets = match options.get("starting_offsets") {
        None => None,
        Some(text) => Some(StartingOffsets::parse(text).map_err(|e| {
            invalid(
                options.position("starting_offsets").unwrap_or(at(def)),
                format!(
                    "option 'starting_offsets' must be earliest, latest or offsets JSON such as \
                     {{\"topic\": {{\"0\": 42}}}}: {e}"
                ),
            )
        })?),
    };
    let ending_offsets = match options.get("ending_offsets") {
        None => None,
        Some(text) => Some(EndingOffsets::parse(text).map_err(|e| {
            invalid(
                options.position("ending_offsets").unwrap_or(at(def)),
                format!(
                    "option 'ending_offsets' must be latest or offsets JSON such as \
                     {{\"topic\": {{\"0\": 42}}}}: {e}"
                ),
            )
        })?),
    };
    let max_offsets_per_trigger: Option<u64> = number(options, "max_offsets_per_trigger", at(def))?;
    if max_offsets_per_trigger == Some(0) {
        return Err(invalid(
            options
                .position("max_offsets_per_trigger")
                .unwrap_or(at(def)),
            "option 'max_offsets_per_trigger' must be at least 1".into(),
        ));
    }
    let json = kafka_format(options, what, at(def))?;
    if json && def.item.columns.is_empty() {
        return Err(invalid(
            options.position("format").unwrap_or(at(def)),
            format!(
                "{what}: format 'json' decodes each value into the declared columns; declare them: \
                 CREATE STREAM {} (name TYPE, …)",
                def.item.name
            ),
        ));
    }
    if !json && !def.item.columns.is_empty() {
        return Err(invalid(
            at(def),
            format!(
                "{what} declares columns but reads raw records (key, value, topic, partition, offset, \
                 timestamp, timestamp_type, headers); add format = 'json' to decode each value into the \
                 declared columns"
            ),
        ));
    }
    for key in ["metadata_columns", "dead_letter_path"] {
        if !json && options.get(key).is_some() {
            return Err(invalid(
                options.position(key).unwrap_or(at(def)),
                format!("option '{key}' applies to format = 'json' only"),
            ));
        }
    }
    Ok(KafkaStream {
        bootstrap_servers,
        topics,
        starting_offsets,
        ending_offsets,
        max_offsets_per_trigger,
        fail_on_data_loss: boolean(options, "fail_on_data_loss", at(def))?,
        json,
        metadata_columns: boolean(options, "metadata_columns", at(def))?,
        dead_letter_path: options.get("dead_letter_path").map(str::to_string),
        commit_offsets_to_group: options.get("commit_offsets_to_group").map(str::to_string),
        timeout: duration(options, "timeout", at(def))?,
        client_options: client_options(options),
    })
}

#[cfg(feature = "kafka")]
fn kafka_sink(def: &Located<SinkDef>, what: &str) -> Result<KafkaOut, PipelineError> {
    let options = &def.item.options;
    options.check_known_with_prefix(
        &[
            "connector",
            "output_mode",
            "bootstrap_servers",
            "topic",
            "format",
            "key_column",
            "exactly_once",
            "timeout",
        ],
        KAFKA_PREFIX,
        &format!("a kafka sink ({what})"),
    )?;
    Ok(KafkaOut {
        bootstrap_servers: options
            .require("bootstrap_servers", what, at(def))?
            .to_string(),
        topic: options.get("topic").map(str::to_string),
        json: kafka_format(options, what, at(def))?,
        key_column: options.get("key_column").map(str::to_string),
        exactly_once: boolean(options, "exactly_once", at(def))?.unwrap_or(true),
        timeout: duration(options, "timeout", at(def))?,
        client_options: client_options(options),
    })
}

/// `connector = 'kafka'` in a build without the `kafka` feature.
#[cfg(not(feature = "kafka"))]
fn kafka_not_built_in(options: &super::parser::Options, fallback: (u64, u64)) -> PipelineError {
    invalid(
        options.position("connector").unwrap_or(fallback),
        "the kafka connector is not built in: build tidemill with the `kafka` feature \
         (on by default)"
            .into(),
    )
}

fn at<T>(def: &Located<T>) -> (u64, u64) {
    (def.line, def.column)
}

fn invalid(def_at: (u64, u64), message: String) -> PipelineError {
    PipelineError::At {
        line: def_at.0,
        column: def_at.1,
        message,
    }
}

fn number<T: std::str::FromStr>(
    options: &super::parser::Options,
    key: &str,
    fallback: (u64, u64),
) -> Result<Option<T>, PipelineError> {
    let Some(text) = options.get(key) else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| {
        invalid(
            options.position(key).unwrap_or(fallback),
            format!("option '{key}' must be a whole number, got '{text}'"),
        )
    })
}

/// The connector of a `CREATE STREAM`.
pub(super) fn stream_connector(def: &Located<StreamDef>) -> Result<StreamConnector, PipelineError> {
    let options = &def.item.options;
    let what = format!("stream {}", def.item.name);
    match options.get("connector") {
        Some("files") => {
            options.check_known(
                &[
                    "connector",
                    "path",
                    "format",
                    "max_files_per_trigger",
                    "header",
                    "delimiter",
                    "listing_margin",
                ],
                &format!("a files stream ({what})"),
            )?;
            let path = options.require("path", &what, at(def))?.to_string();
            let format = match options.require("format", &what, at(def))? {
                "json" => FileFormat::Json,
                "csv" => FileFormat::Csv,
                "parquet" => FileFormat::Parquet,
                other => {
                    return Err(invalid(
                        options.position("format").unwrap_or(at(def)),
                        format!(
                            "unknown format '{other}' for {what}; valid formats: json, csv, parquet"
                        ),
                    ));
                }
            };
            let header = boolean(options, "header", at(def))?;
            let delimiter = match options.get("delimiter") {
                None => None,
                Some(d) if d.len() == 1 => Some(d.as_bytes()[0]),
                Some(other) => {
                    return Err(invalid(
                        options.position("delimiter").unwrap_or(at(def)),
                        format!("option 'delimiter' must be one character, got '{other}'"),
                    ));
                }
            };
            Ok(StreamConnector::Files {
                path,
                format,
                max_files_per_trigger: number(options, "max_files_per_trigger", at(def))?,
                header,
                delimiter,
                listing_margin: duration(options, "listing_margin", at(def))?,
            })
        }
        Some("rate") => {
            options.check_known(
                &["connector", "rows_per_second", "max_rows_per_trigger"],
                &format!("a rate stream ({what})"),
            )?;
            let rows_per_second =
                number(options, "rows_per_second", at(def))?.ok_or_else(|| {
                    invalid(
                        at(def),
                        format!("{what} needs the option 'rows_per_second'"),
                    )
                })?;
            Ok(StreamConnector::Rate {
                rows_per_second,
                max_rows_per_trigger: number(options, "max_rows_per_trigger", at(def))?,
            })
        }
        #[cfg(feature = "kafka")]
        Some("kafka") => Ok(StreamConnector::Kafka(kafka_stream(def, &what)?)),
        #[cfg(not(feature = "kafka"))]
        Some("kafka") => Err(kafka_not_built_in(options, at(def))),
        Some(other) => Err(invalid(
            options.position("connector").unwrap_or(at(def)),
            format!(
                "unknown connector '{other}' for {what}; valid connectors: {STREAM_CONNECTORS}"
            ),
        )),
        None => Err(invalid(
            at(def),
            format!("{what} needs WITH (connector = …); valid connectors: {STREAM_CONNECTORS}"),
        )),
    }
}

/// The connector and output mode of a `CREATE SINK`.
pub(super) fn sink_spec(def: &Located<SinkDef>) -> Result<SinkSpec, PipelineError> {
    let options = &def.item.options;
    let what = format!("sink {}", def.item.name);
    let output_mode = match options.get("output_mode").unwrap_or("append") {
        "append" => OutputMode::Append,
        "update" => OutputMode::Update,
        "complete" => OutputMode::Complete,
        other => {
            return Err(invalid(
                options.position("output_mode").unwrap_or(at(def)),
                format!(
                    "unknown output_mode '{other}' for {what}; valid modes: append, update, complete"
                ),
            ));
        }
    };
    let connector = match options.get("connector") {
        Some("files") => {
            options.check_known(
                &[
                    "connector",
                    "path",
                    "format",
                    "output_mode",
                    "max_rows_per_file",
                ],
                &format!("a files sink ({what})"),
            )?;
            if let Some(format) = options.get("format")
                && format != "parquet"
            {
                return Err(invalid(
                    options.position("format").unwrap_or(at(def)),
                    format!("files sinks write parquet; format '{format}' is not supported"),
                ));
            }
            SinkConnector::Files {
                path: options.require("path", &what, at(def))?.to_string(),
                max_rows_per_file: number(options, "max_rows_per_file", at(def))?,
            }
        }
        Some("console") => {
            options.check_known(
                &["connector", "output_mode", "num_rows"],
                &format!("a console sink ({what})"),
            )?;
            SinkConnector::Console {
                num_rows: number(options, "num_rows", at(def))?,
            }
        }
        #[cfg(feature = "kafka")]
        Some("kafka") => SinkConnector::Kafka(kafka_sink(def, &what)?),
        #[cfg(not(feature = "kafka"))]
        Some("kafka") => return Err(kafka_not_built_in(options, at(def))),
        Some(other) => {
            return Err(invalid(
                options.position("connector").unwrap_or(at(def)),
                format!(
                    "unknown connector '{other}' for {what}; valid connectors: {SINK_CONNECTORS}"
                ),
            ));
        }
        None => {
            return Err(invalid(
                at(def),
                format!("{what} needs WITH (connector = …); valid connectors: {SINK_CONNECTORS}"),
            ));
        }
    };
    Ok(SinkSpec {
        connector,
        output_mode,
    })
}
