//! A files sink's committed output read back as a batch DataFrame: exactly
//! the files its manifest lists, each in its format, with the partition
//! columns restored from the manifest.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{Expr, SessionContext, ident, lit};
use tidemill_engine::{Location, Result, TidemillError};

use super::encode::Encoding;
use super::manifest::{MANIFEST_DIR, Manifest, ManifestEntry};
use crate::FileFormat;

/// The committed files read alike: of one encoding and one partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    /// The format's name (for the order).
    format: &'static str,
    /// CSV: whether the files have a header line.
    header: bool,
    /// The partition columns and their values; empty when unpartitioned.
    partition: Vec<(String, Option<String>)>,
}

/// See [`FileSink::read_committed`](super::FileSink::read_committed).
pub(crate) async fn read_committed(ctx: &SessionContext, location: &str) -> Result<DataFrame> {
    let resolved = Location::resolve(location, &ctx.runtime_env())?;
    let entries = read_manifest(&resolved).await?;
    let description = describe(&resolved);
    let Some(latest) = entries.last() else {
        return Err(TidemillError::sink(
            description,
            format!(
                "no committed batches: '{}' has no manifest entries, so it is not (yet) the \
                 output of a FileSink",
                resolved.path().clone().join(MANIFEST_DIR)
            ),
        ));
    };
    let schema: SchemaRef = Arc::new(latest.schema.clone());
    let base = directory_url(&resolved);
    let mut groups: BTreeMap<GroupKey, (Encoding, Vec<ListingTableUrl>)> = BTreeMap::new();
    for entry in &entries {
        let encoding = Encoding {
            format: entry.format,
            header: entry.csv.is_none_or(|csv| csv.header),
        };
        for file in &entry.files {
            let invalid = |reason: String| {
                TidemillError::sink(
                    description.clone(),
                    format!(
                        "manifest of batch {} lists the file '{}', {reason}",
                        entry.batch_id, file.name
                    ),
                )
            };
            if file.partition_values.len() != entry.partition_by.len() {
                return Err(invalid(format!(
                    "with {} partition values for the {} partition columns",
                    file.partition_values.len(),
                    entry.partition_by.len()
                )));
            }
            let mut url = base.clone();
            url.path_segments_mut()
                .map_err(|()| invalid(format!("but '{base}' cannot hold files")))?
                .pop_if_empty()
                .extend(file.name.split('/'));
            let url = ListingTableUrl::try_new(url, None).map_err(|e| {
                TidemillError::datafusion(format!("{description}: file {}", file.name), e)
            })?;
            let key = GroupKey {
                format: entry.format.name(),
                header: encoding.header,
                partition: entry
                    .partition_by
                    .iter()
                    .cloned()
                    .zip(file.partition_values.iter().cloned())
                    .collect(),
            };
            groups
                .entry(key)
                .or_insert_with(|| (encoding, Vec::new()))
                .1
                .push(url);
        }
    }
    let mut output: Option<DataFrame> = None;
    for (key, (encoding, urls)) in groups {
        let group = read_group(ctx, &schema, &key.partition, encoding, urls).map_err(|e| {
            TidemillError::datafusion(format!("{description}: reading committed files"), e)
        })?;
        output = Some(match output {
            None => group,
            Some(all) => all.union(group).map_err(|e| {
                TidemillError::datafusion(format!("{description}: reading committed files"), e)
            })?,
        });
    }
    match output {
        Some(df) => Ok(df),
        None => {
            let table = MemTable::try_new(schema, vec![Vec::new()]).map_err(|e| {
                TidemillError::datafusion(format!("{description}: empty output"), e)
            })?;
            ctx.read_table(Arc::new(table))
                .map_err(|e| TidemillError::datafusion(format!("{description}: empty output"), e))
        }
    }
}

/// The rows of the files `urls`, all of `encoding` and of one partition
/// (`partition`: its columns and values), with the columns of `schema`:
/// the files' own, and each partition column as its value.
fn read_group(
    ctx: &SessionContext,
    schema: &SchemaRef,
    partition: &[(String, Option<String>)],
    encoding: Encoding,
    urls: Vec<ListingTableUrl>,
) -> datafusion::error::Result<DataFrame> {
    let value_of = |name: &str| {
        partition
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, value)| value)
    };
    let file_schema = Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .filter(|f| value_of(f.name()).is_none())
            .cloned()
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    );
    let format: Arc<dyn datafusion::datasource::file_format::FileFormat> = match encoding.format {
        FileFormat::Parquet => {
            Arc::new(ParquetFormat::default().with_options(ctx.copied_table_options().parquet))
        }
        FileFormat::Json => Arc::new(JsonFormat::default()),
        // Quoted values may hold line breaks, so a file is never split at
        // a byte offset.
        FileFormat::Csv => Arc::new(
            CsvFormat::default()
                .with_has_header(encoding.header)
                .with_newlines_in_values(true),
        ),
    };
    let options = ListingOptions::new(format).with_file_extension(encoding.extension());
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(Arc::new(file_schema));
    let df = ctx.read_table(Arc::new(ListingTable::try_new(config)?))?;
    if partition.is_empty() {
        return Ok(df);
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match value_of(field.name()) {
            Some(value) => {
                Ok(lit(partition_value(value.as_deref(), field.data_type())?).alias(field.name()))
            }
            None => Ok(ident(field.name())),
        })
        .collect::<datafusion::error::Result<Vec<Expr>>>()?;
    df.select(columns)
}

/// A partition column's value of type `data_type` from its text in the
/// manifest (`None`: null).
fn partition_value(
    text: Option<&str>,
    data_type: &DataType,
) -> datafusion::error::Result<ScalarValue> {
    match text {
        None => ScalarValue::try_from(data_type),
        Some(text) => ScalarValue::try_from_string(text.to_string(), data_type),
    }
}

/// How errors about the output at `location` name it.
pub(crate) fn describe(location: &Location) -> String {
    format!(
        "FileSink[{}]",
        location.url().as_str().trim_end_matches('/')
    )
}

/// The location's URL with a trailing slash, so file names join under it.
fn directory_url(location: &Location) -> url::Url {
    let mut url = location.url().clone();
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// Reads every manifest entry in `location`, by increasing batch id.
pub(crate) async fn read_manifest(location: &Location) -> Result<Vec<ManifestEntry>> {
    let manifest = Manifest::new(location);
    let mut entries = Vec::new();
    for id in manifest.ids().await? {
        let entry = manifest.get(id).await?.ok_or_else(|| {
            TidemillError::sink(
                describe(location),
                format!(
                    "manifest entry '{}' disappeared while reading",
                    manifest.dir().path(&id.to_string())
                ),
            )
        })?;
        if entry.batch_id != id {
            return Err(TidemillError::sink(
                describe(location),
                format!(
                    "manifest entry '{}' records batch id {}, not {id}",
                    manifest.dir().path(&id.to_string()),
                    entry.batch_id
                ),
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}
