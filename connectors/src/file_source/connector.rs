//! `connector = 'files'` in a pipeline's `CREATE STREAM`: the options of a
//! [`FileSource`].

use std::sync::Arc;

use tidemill_engine::Source;

use super::{FileFormat, FileSource};
use crate::registry::{OptionError, STORAGE_PREFIX, StreamConnector, StreamDeclaration};

/// Makes a [`FileSource`] from `path`, `format` (`json`, `csv`,
/// `parquet`), `max_files_per_trigger`, `header`, `delimiter`,
/// `listing_margin` and the S3 settings `aws_*`; the declared columns, if any, are the schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FilesConnector;

impl StreamConnector for FilesConnector {
    fn source(&self, stream: &StreamDeclaration) -> Result<Arc<dyn Source>, OptionError> {
        let options = &stream.options;
        options.check_known(
            "a files stream",
            &[
                "path",
                "format",
                "max_files_per_trigger",
                "header",
                "delimiter",
                "listing_margin",
            ],
            Some(STORAGE_PREFIX),
        )?;
        let path = options.require("path")?;
        let format = match options.require("format")? {
            "json" => FileFormat::Json,
            "csv" => FileFormat::Csv,
            "parquet" => FileFormat::Parquet,
            other => {
                return Err(options.error(
                    "format",
                    format!(
                        "unknown format '{other}' for {}; valid formats: json, csv, parquet",
                        options.subject()
                    ),
                ));
            }
        };
        let mut source = FileSource::new(path, format).storage_options(options.storage_options()?);
        if let Some(schema) = &stream.schema {
            source = source.schema(Arc::clone(schema));
        }
        if let Some(n) = options.number("max_files_per_trigger")? {
            source = source.max_files_per_trigger(n);
        }
        if let Some(header) = options.boolean("header")? {
            source = source.has_header(header);
        }
        match options.get("delimiter") {
            None => {}
            Some(d) if d.len() == 1 => source = source.delimiter(d.as_bytes()[0]),
            Some(other) => {
                return Err(options.error(
                    "delimiter",
                    format!("option 'delimiter' must be one character, got '{other}'"),
                ));
            }
        }
        if let Some(margin) = options.duration("listing_margin")? {
            source = source.listing_margin(margin);
        }
        Ok(Arc::new(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ConnectorOptions, Position};

    fn declare(pairs: &[(&str, &str)]) -> StreamDeclaration {
        let mut options =
            ConnectorOptions::new("stream t", Position::new(1, 1)).with_reserved(&["connector"]);
        for (i, (k, v)) in pairs.iter().enumerate() {
            options
                .insert(k, *v, Position::new(2, i as u64 + 1))
                .unwrap();
        }
        StreamDeclaration {
            name: "t".into(),
            schema: None,
            options,
        }
    }

    #[test]
    fn options_make_the_source_they_describe() {
        let source = FilesConnector
            .source(&declare(&[
                ("connector", "files"),
                ("path", "/data/in"),
                ("format", "csv"),
                ("delimiter", ";"),
            ]))
            .unwrap();
        assert_eq!(source.description(), "FileSource[csv: file:///data/in]");
    }

    #[test]
    fn a_bad_option_is_refused_where_it_is_written() {
        let err = FilesConnector
            .source(&declare(&[("path", "/d"), ("format", "avro")]))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "2:2: unknown format 'avro' for stream t; valid formats: json, csv, parquet"
        );
        let err = FilesConnector
            .source(&declare(&[
                ("path", "/d"),
                ("format", "csv"),
                ("delimiter", ";;"),
            ]))
            .err()
            .unwrap();
        assert_eq!(err.position, Position::new(2, 3));
        let err = FilesConnector
            .source(&declare(&[("format", "csv")]))
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "1:1: stream t needs the option 'path'");
    }
}
