//! The connectors a pipeline file can name, and their options.

use tidemill_connectors::FileFormat;
use tidemill_engine::OutputMode;

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
    },
    /// `connector = 'rate'`: generated `(timestamp, value)` rows.
    Rate {
        rows_per_second: u64,
        max_rows_per_trigger: Option<u64>,
    },
}

/// A sink's connector and output mode, from `CREATE SINK … WITH (…)`.
#[derive(Debug, Clone)]
pub(super) struct SinkSpec {
    pub connector: SinkConnector,
    pub output_mode: OutputMode,
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
}

const STREAM_CONNECTORS: &str = "'files', 'rate'";
const SINK_CONNECTORS: &str = "'files', 'console'";

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
            let header = match options.get("header") {
                None => None,
                Some("true") => Some(true),
                Some("false") => Some(false),
                Some(other) => {
                    return Err(invalid(
                        options.position("header").unwrap_or(at(def)),
                        format!("option 'header' must be true or false, got '{other}'"),
                    ));
                }
            };
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
