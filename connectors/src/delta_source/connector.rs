//! `connector = 'delta'` in a pipeline's `CREATE STREAM`: the options of a
//! [`DeltaSource`].

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tidemill_engine::Source;

use super::{DeltaSource, DeltaStart};
use crate::registry::{
    ConnectorOptions, OptionError, STORAGE_PREFIX, StreamConnector, StreamDeclaration,
};

/// Makes a [`DeltaSource`] from `path` (required), `starting_version` (a
/// version or `'latest'`) or `starting_timestamp`, `max_files_per_trigger`,
/// `max_bytes_per_trigger` (bytes, or with a unit: `'64m'`),
/// `fail_on_data_loss`, `skip_change_commits`, `ignore_changes` and
/// `ignore_deletes`, and the S3 settings `aws_*` of an `s3://` path; the
/// declared columns, if any, are the columns read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeltaSourceConnector;

impl StreamConnector for DeltaSourceConnector {
    fn source(&self, stream: &StreamDeclaration) -> Result<Arc<dyn Source>, OptionError> {
        let options = &stream.options;
        options.check_known(
            "a delta stream",
            &[
                "path",
                "starting_version",
                "starting_timestamp",
                "max_files_per_trigger",
                "max_bytes_per_trigger",
                "fail_on_data_loss",
                "skip_change_commits",
                "ignore_changes",
                "ignore_deletes",
            ],
            Some(STORAGE_PREFIX),
        )?;
        let mut source =
            DeltaSource::new(options.require("path")?).storage_options(options.storage_options()?);
        if let Some(schema) = &stream.schema {
            source = source.schema(Arc::clone(schema));
        }
        match (
            options.get("starting_version"),
            options.get("starting_timestamp"),
        ) {
            (Some(_), Some(_)) => {
                return Err(options.error(
                    "starting_timestamp",
                    "give one of the options 'starting_version' and 'starting_timestamp', not both"
                        .to_string(),
                ));
            }
            (Some(version), None) => {
                let starting = if version.eq_ignore_ascii_case("latest") {
                    DeltaStart::Latest
                } else {
                    let version = version.parse::<u64>().map_err(|_| {
                        options.error(
                            "starting_version",
                            format!(
                                "option 'starting_version' must be a table version (a number) or \
                                 'latest', got '{version}'"
                            ),
                        )
                    })?;
                    DeltaStart::Version(version)
                };
                source = source.starting_position(starting);
            }
            (None, Some(text)) => {
                let at = timestamp(text).ok_or_else(|| {
                    options.error(
                        "starting_timestamp",
                        format!(
                            "option 'starting_timestamp' must be a timestamp such as \
                             '2024-03-04 14:30:00' (UTC), '2024-03-04T14:30:00+01:00' or \
                             '2024-03-04', got '{text}'"
                        ),
                    )
                })?;
                source = source.starting_position(DeltaStart::Timestamp(at));
            }
            (None, None) => {}
        }
        if let Some(n) = at_least_one(
            options,
            "max_files_per_trigger",
            options.number("max_files_per_trigger")?,
        )? {
            source = source.max_files_per_trigger(n);
        }
        if let Some(text) = options.get("max_bytes_per_trigger") {
            let bytes = byte_size(text).ok_or_else(|| {
                options.error(
                    "max_bytes_per_trigger",
                    format!(
                        "option 'max_bytes_per_trigger' must be a number of bytes, optionally \
                         with a unit (k, m, g, t: powers of 1024), such as '1048576' or '64m', \
                         got '{text}'"
                    ),
                )
            })?;
            if let Some(bytes) = at_least_one(options, "max_bytes_per_trigger", Some(bytes))? {
                source = source.max_bytes_per_trigger(bytes);
            }
        }
        if let Some(fail) = options.boolean("fail_on_data_loss")? {
            source = source.fail_on_data_loss(fail);
        }
        if let Some(skip) = options.boolean("skip_change_commits")? {
            source = source.skip_change_commits(skip);
        }
        if let Some(ignore) = options.boolean("ignore_changes")? {
            source = source.ignore_changes(ignore);
        }
        if let Some(ignore) = options.boolean("ignore_deletes")? {
            source = source.ignore_deletes(ignore);
        }
        Ok(Arc::new(source))
    }
}

/// Refuses 0 for the read limit `key`.
fn at_least_one(
    options: &ConnectorOptions,
    key: &str,
    value: Option<u64>,
) -> Result<Option<u64>, OptionError> {
    match value {
        Some(0) => Err(options.error(key, format!("option '{key}' must be at least 1"))),
        other => Ok(other),
    }
}

/// A timestamp as the option takes it: RFC 3339, or a date and time
/// without an offset (UTC), or a date (its midnight, UTC).
fn timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Some(at.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
}

/// A byte count: digits, then optionally a unit (`b`, `k`/`kb`/`kib`,
/// `m`…, `g`…, `t`…; powers of 1024, as Spark's byte strings).
fn byte_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ConnectorOptions, Position};

    fn declare(pairs: &[(&str, &str)]) -> Result<Arc<dyn Source>, OptionError> {
        let mut options =
            ConnectorOptions::new("stream t", Position::new(1, 1)).with_reserved(&["connector"]);
        for (i, (k, v)) in pairs.iter().enumerate() {
            options
                .insert(k, *v, Position::new(2, i as u64 + 1))
                .unwrap();
        }
        DeltaSourceConnector.source(&StreamDeclaration {
            name: "t".into(),
            schema: None,
            options,
        })
    }

    #[test]
    fn options_make_the_source_they_describe() {
        let source = declare(&[
            ("path", "/lake/bronze"),
            ("starting_version", "latest"),
            ("max_files_per_trigger", "5"),
            ("max_bytes_per_trigger", "64m"),
            ("fail_on_data_loss", "false"),
            ("skip_change_commits", "true"),
        ])
        .unwrap();
        assert_eq!(source.description(), "DeltaSource[file:///lake/bronze]");
        declare(&[("path", "/t"), ("starting_timestamp", "2024-03-04")]).unwrap();
        declare(&[("path", "/t"), ("starting_version", "12")]).unwrap();
    }

    #[test]
    fn bad_options_are_refused_where_they_are_written() {
        let error = |pairs: &[(&str, &str)]| declare(pairs).err().unwrap().to_string();
        assert_eq!(error(&[]), "1:1: stream t needs the option 'path'");
        assert_eq!(
            error(&[("path", "/t"), ("starting_version", "first")]),
            "2:2: option 'starting_version' must be a table version (a number) or 'latest', got \
             'first'"
        );
        assert!(
            error(&[
                ("path", "/t"),
                ("starting_version", "1"),
                ("starting_timestamp", "2024-01-01")
            ])
            .starts_with("2:3: give one of the options")
        );
        assert!(
            error(&[("path", "/t"), ("starting_timestamp", "yesterday")])
                .starts_with("2:2: option 'starting_timestamp' must be a timestamp")
        );
        assert_eq!(
            error(&[("path", "/t"), ("max_files_per_trigger", "0")]),
            "2:2: option 'max_files_per_trigger' must be at least 1"
        );
        assert!(
            error(&[("path", "/t"), ("max_bytes_per_trigger", "10 parsecs")])
                .starts_with("2:2: option 'max_bytes_per_trigger' must be a number of bytes")
        );
        assert!(
            error(&[("path", "/t"), ("skipChangeCommits", "true")])
                .contains("unknown option 'skipchangecommits' for a delta stream (stream t)")
        );
    }

    #[test]
    fn timestamps_and_byte_sizes_parse() {
        let at = |s| timestamp(s).map(|t| t.to_rfc3339());
        assert_eq!(
            at("2024-03-04 14:30:00").as_deref(),
            Some("2024-03-04T14:30:00+00:00")
        );
        assert_eq!(
            at("2024-03-04T14:30:00+01:00").as_deref(),
            Some("2024-03-04T13:30:00+00:00")
        );
        assert_eq!(
            at("2024-03-04").as_deref(),
            Some("2024-03-04T00:00:00+00:00")
        );
        assert_eq!(at("soon"), None);
        assert_eq!(byte_size("1048576"), Some(1 << 20));
        assert_eq!(byte_size("64m"), Some(64 << 20));
        assert_eq!(byte_size("2 GiB"), Some(2 << 30));
        assert_eq!(byte_size("1k"), Some(1024));
        assert_eq!(byte_size("m"), None);
        assert_eq!(byte_size("1x"), None);
    }
}
