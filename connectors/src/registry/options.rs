//! A connector's options as the user wrote them, with typed getters whose
//! errors say where the mistake is.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tidemill_engine::StorageOptions;
use tidemill_engine::watermark::parse_delay;

/// The prefix of the options [`ConnectorOptions::storage_options`] reads.
pub const STORAGE_PREFIX: &str = "aws_";

/// Where something is written in a pipeline file: a 1-based line and
/// column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl Position {
    /// The position at `line`, `column`.
    pub fn new(line: u64, column: u64) -> Self {
        Self { line, column }
    }
}

/// A mistake in a connector's options, at the option (or, for a missing
/// option, at the declaration) it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}: {message}", position.line, position.column)]
pub struct OptionError {
    /// Where the mistake is.
    pub position: Position,
    /// What is wrong and what is expected.
    pub message: String,
}

/// One `key = value`, with where it was written.
#[derive(Debug, Clone)]
struct OptionEntry {
    key: String,
    value: String,
    at: Position,
}

/// The `WITH (key = value, …)` options of one declared stream or sink:
/// keys lower-cased, each remembered with its position, and the
/// declaration they belong to (`stream trades`, at its position) for
/// messages.
///
/// A connector reads its options through the typed getters ([`Self::get`],
/// [`Self::require`], [`Self::boolean`], [`Self::number`],
/// [`Self::duration`], [`Self::prefixed`]) and refuses keys it does not
/// know with [`Self::check_known`]; every error is an [`OptionError`] at
/// the offending option.
#[derive(Debug, Clone, Default)]
pub struct ConnectorOptions {
    subject: String,
    declared_at: Position,
    reserved: Vec<&'static str>,
    entries: Vec<OptionEntry>,
}

impl ConnectorOptions {
    /// Empty options of `subject` (how messages name the declaration, e.g.
    /// `stream trades`) declared at `declared_at`.
    pub fn new(subject: impl Into<String>, declared_at: Position) -> Self {
        Self {
            subject: subject.into(),
            declared_at,
            reserved: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Keys that the declaring layer reads itself (`connector`, a sink's
    /// `output_mode`): every connector accepts them, and messages list them
    /// first among the valid options.
    pub fn with_reserved(mut self, keys: &[&'static str]) -> Self {
        self.reserved = keys.to_vec();
        self
    }

    /// Adds `key = value`, written at `at`; the key is lower-cased. Refuses
    /// a key given twice.
    pub fn insert(
        &mut self,
        key: &str,
        value: impl Into<String>,
        at: Position,
    ) -> Result<(), OptionError> {
        let key = key.to_ascii_lowercase();
        if self.entries.iter().any(|e| e.key == key) {
            return Err(OptionError {
                position: at,
                message: format!("option '{key}' is given twice"),
            });
        }
        self.entries.push(OptionEntry {
            key,
            value: value.into(),
            at,
        });
        Ok(())
    }

    /// Sets `key` to `value`, replacing its value if given (its position
    /// kept) or adding it at the declaration's position: for a caller that
    /// redirects a declared sink or stream (`tidemill bench --sink real`
    /// writes to a scratch `path`).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let key = key.to_ascii_lowercase();
        let value = value.into();
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(entry) => entry.value = value,
            None => self.entries.push(OptionEntry {
                key,
                value,
                at: self.declared_at,
            }),
        }
    }

    /// How messages name the declaration, e.g. `stream trades`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Where the declaration starts.
    pub fn declared_at(&self) -> Position {
        self.declared_at
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|e| e.value.as_str())
    }

    /// The columns of `key = 'a, b'`, in order (names trimmed); none if
    /// the option is not given. An empty name, or one named twice, is an
    /// error at the option.
    pub fn column_list(&self, key: &str) -> Result<Vec<String>, OptionError> {
        let Some(text) = self.get(key) else {
            return Ok(Vec::new());
        };
        let columns: Vec<String> = text.split(',').map(|c| c.trim().to_string()).collect();
        if columns.iter().any(String::is_empty) {
            return Err(self.error(
                key,
                format!("option '{key}' must be column names separated by commas, got '{text}'"),
            ));
        }
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].contains(column) {
                return Err(self.error(
                    key,
                    format!("option '{key}' names the column '{column}' twice, in '{text}'"),
                ));
            }
        }
        Ok(columns)
    }

    /// Where `key` was written, if it was.
    pub fn position(&self, key: &str) -> Option<Position> {
        self.entry(key).map(|e| e.at)
    }

    /// The value of `key`, or an error at the declaration saying that it
    /// needs the option.
    pub fn require(&self, key: &str) -> Result<&str, OptionError> {
        self.get(key).ok_or_else(|| {
            self.error_at_declaration(format!("{} needs the option '{key}'", self.subject))
        })
    }

    /// `key` as `true` or `false`, if given.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(self.error(
                key,
                format!("option '{key}' must be true or false, got '{other}'"),
            )),
        }
    }

    /// `key` as a whole number, if given.
    pub fn number<T: FromStr>(&self, key: &str) -> Result<Option<T>, OptionError> {
        let Some(text) = self.get(key) else {
            return Ok(None);
        };
        text.parse().map(Some).map_err(|_| {
            self.error(
                key,
                format!("option '{key}' must be a whole number, got '{text}'"),
            )
        })
    }

    /// `key` as a duration (`'500 ms'`, `'10 seconds'`, `'1 minute'`), if
    /// given.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, OptionError> {
        let Some(text) = self.get(key) else {
            return Ok(None);
        };
        parse_delay(text)
            .map(Some)
            .map_err(|e| self.error(key, format!("option '{key}': {e}")))
    }

    /// The options whose key starts with `prefix`, the prefix removed, in
    /// the order written (pass-through settings such as
    /// `kafka.security.protocol`).
    pub fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.entries.iter().filter_map(move |e| {
            e.key
                .strip_prefix(prefix)
                .map(|rest| (rest, e.value.as_str()))
        })
    }

    /// The S3 settings among the options: every `aws_<setting>` key
    /// (`aws_endpoint`, `aws_region`, `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_allow_http`, …; see
    /// [`tidemill_engine::storage`]), for the store of an `s3://` path.
    /// Refuses a setting object_store does not know, at the option.
    pub fn storage_options(&self) -> Result<StorageOptions, OptionError> {
        let mut storage = StorageOptions::new();
        for entry in &self.entries {
            if entry.key.starts_with(STORAGE_PREFIX) {
                storage
                    .insert(&entry.key, entry.value.clone())
                    .map_err(|message| OptionError {
                        position: entry.at,
                        message,
                    })?;
            }
        }
        Ok(storage)
    }

    /// Refuses any option that is not reserved, not in `valid` and (when
    /// `pass_through` is given) does not start with that prefix, naming
    /// the valid ones. `kind` names the connector's side, e.g.
    /// `a files stream`.
    pub fn check_known(
        &self,
        kind: &str,
        valid: &[&str],
        pass_through: Option<&str>,
    ) -> Result<(), OptionError> {
        for entry in &self.entries {
            let key = entry.key.as_str();
            let passed_through =
                pass_through.is_some_and(|p| key.starts_with(p) && key.len() > p.len());
            if passed_through || self.reserved.contains(&key) || valid.contains(&key) {
                continue;
            }
            let mut names: Vec<&str> = self.reserved.clone();
            names.extend_from_slice(valid);
            let mut message = format!(
                "unknown option '{key}' for {kind} ({}); valid options: {}",
                self.subject,
                names.join(", ")
            );
            if let Some(prefix) = pass_through {
                message.push_str(&format!(", and {prefix}<setting>"));
            }
            return Err(OptionError {
                position: entry.at,
                message,
            });
        }
        Ok(())
    }

    /// An error about `key`: at the option if it was written, else at the
    /// declaration.
    pub fn error(&self, key: &str, message: impl Into<String>) -> OptionError {
        OptionError {
            position: self.position(key).unwrap_or(self.declared_at),
            message: message.into(),
        }
    }

    /// An error about the declaration as a whole.
    pub fn error_at_declaration(&self, message: impl Into<String>) -> OptionError {
        OptionError {
            position: self.declared_at,
            message: message.into(),
        }
    }

    fn entry(&self, key: &str) -> Option<&OptionEntry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

impl fmt::Display for ConnectorOptions {
    /// `key = 'value', …` in the order written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} = '{}'", e.key, e.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> ConnectorOptions {
        let mut options =
            ConnectorOptions::new("stream t", Position::new(1, 1)).with_reserved(&["connector"]);
        for (i, (k, v)) in pairs.iter().enumerate() {
            options
                .insert(k, *v, Position::new(2, 10 * i as u64 + 3))
                .unwrap();
        }
        options
    }

    #[test]
    fn set_replaces_a_value_in_place_or_adds_it_at_the_declaration() {
        let mut o = options(&[("path", "out/a"), ("n", "1")]);
        o.set("PATH", "/tmp/scratch");
        o.set("extra", "x");
        assert_eq!(o.get("path"), Some("/tmp/scratch"));
        assert_eq!(o.position("path"), Some(Position::new(2, 3)));
        assert_eq!(o.get("extra"), Some("x"));
        assert_eq!(o.position("extra"), Some(Position::new(1, 1)));
        assert_eq!(o.to_string(), "path = '/tmp/scratch', n = '1', extra = 'x'");
    }

    #[test]
    fn typed_getters_read_values_and_say_where_a_bad_one_is() {
        let o = options(&[
            ("Flag", "true"),
            ("n", "42"),
            ("bad_n", "4x"),
            ("wait", "2 seconds"),
            ("maybe", "yes"),
        ]);
        assert_eq!(o.boolean("flag").unwrap(), Some(true));
        assert_eq!(o.number::<u64>("n").unwrap(), Some(42));
        assert_eq!(o.number::<u64>("absent").unwrap(), None);
        assert_eq!(o.duration("wait").unwrap(), Some(Duration::from_secs(2)));
        let bad = o.number::<u64>("bad_n").unwrap_err();
        assert_eq!(bad.position, Position::new(2, 23));
        assert_eq!(
            bad.message,
            "option 'bad_n' must be a whole number, got '4x'"
        );
        let bad = o.boolean("maybe").unwrap_err();
        assert_eq!(
            bad.to_string(),
            "2:43: option 'maybe' must be true or false, got 'yes'"
        );
        let missing = o.require("path").unwrap_err();
        assert_eq!(missing.to_string(), "1:1: stream t needs the option 'path'");
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_valid_ones_and_reserved_keys_pass() {
        let o = options(&[("connector", "x"), ("pth", "/data")]);
        let err = o
            .check_known("a files stream", &["path"], None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "2:13: unknown option 'pth' for a files stream (stream t); valid options: connector, path"
        );
        let o = options(&[("connector", "x"), ("kafka.acks", "all"), ("kafka.", "x")]);
        let err = o
            .check_known("a kafka sink", &["topic"], Some("kafka."))
            .unwrap_err();
        assert!(
            err.message
                .starts_with("unknown option 'kafka.' for a kafka sink")
        );
        assert!(
            err.message
                .ends_with("valid options: connector, topic, and kafka.<setting>")
        );
        let o = options(&[("connector", "x"), ("kafka.acks", "all")]);
        o.check_known("a kafka sink", &["topic"], Some("kafka."))
            .unwrap();
        assert_eq!(o.prefixed("kafka.").collect::<Vec<_>>(), [("acks", "all")]);
    }

    #[test]
    fn a_key_given_twice_is_refused_at_its_second_place() {
        let mut o = options(&[("path", "a")]);
        let err = o.insert("PATH", "b", Position::new(3, 5)).unwrap_err();
        assert_eq!(err.to_string(), "3:5: option 'path' is given twice");
        assert_eq!(o.get("path"), Some("a"));
    }

    #[test]
    fn storage_options_are_the_aws_keys() {
        let o = options(&[("path", "s3://b/x"), ("n", "1")]);
        assert!(o.storage_options().unwrap().is_empty());
        let o = options(&[
            ("path", "s3://b/x"),
            ("AWS_ENDPOINT", "http://127.0.0.1:9000"),
            ("aws_allow_http", "true"),
        ]);
        o.check_known("a files stream", &["path"], Some(STORAGE_PREFIX))
            .unwrap();
        let result = o.storage_options();
        #[cfg(feature = "s3")]
        {
            let storage = result.unwrap();
            let keys: Vec<&str> = storage.iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["aws_allow_http", "aws_endpoint"]);
            let o = options(&[("path", "s3://b/x"), ("aws_endpiont", "x")]);
            let err = o.storage_options().unwrap_err();
            assert_eq!(err.position, Position::new(2, 13));
            assert!(err.message.contains("aws_endpiont"), "{}", err.message);
        }
        #[cfg(not(feature = "s3"))]
        assert!(result.unwrap_err().message.contains("`s3`"));
    }
}
