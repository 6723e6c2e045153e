//! Reading a Delta table's transaction log: which versions exist, what
//! each version's commit adds and removes, and the table's files at a
//! version (its snapshot, loaded by deltalake).
//!
//! Everything is read through the object store the session resolves the
//! table's location to ([`tidemill_engine::Location`]); deltalake is given
//! that same store for snapshots.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use chrono::{DateTime, Utc};
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoArrow;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use url::Url;

use super::DeltaSourceError;

type Result<T, E = DeltaSourceError> = std::result::Result<T, E>;

/// A data file of the table, as one version adds it (or as a snapshot
/// holds it).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DataFile {
    /// The version whose files it is among.
    pub version: u64,
    /// Its path in the object store.
    pub path: Path,
    /// Its path relative to the table, as the log names it (decoded), for
    /// messages.
    pub name: String,
    /// Its size in bytes, as the log says.
    pub size: u64,
    /// The partition values of its rows, as the log writes them.
    pub partition_values: HashMap<String, Option<String>>,
    /// Its row count, from the log's statistics, when they say.
    pub num_records: Option<u64>,
    /// Whether rows of the file are deleted by a deletion vector.
    pub deletion_vector: bool,
}

/// What a table's `metaData` action says that the source needs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TableMeta {
    /// The table's id.
    pub id: String,
    /// The table's columns as Arrow fields, partition columns included, in
    /// the table's order.
    pub schema: SchemaRef,
    /// The partition columns.
    pub partition_columns: Vec<String>,
    /// The column mapping mode, when it is not `none`.
    pub column_mapping: Option<String>,
}

/// One version's commit, as the source sees it.
#[derive(Debug, Clone, Default)]
pub(super) struct Commit {
    /// The files added with `dataChange = true`, in the commit's order.
    pub adds: Vec<DataFile>,
    /// The files removed with `dataChange = true` (rows deleted or
    /// rewritten), by name.
    pub data_removes: Vec<String>,
    /// A new `metaData`, if the version changes it.
    pub metadata: Option<TableMeta>,
    /// The operation, from the `commitInfo` (`WRITE`, `DELETE`, …).
    pub operation: Option<String>,
}

/// The table's files at one version.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    /// The version.
    pub version: u64,
    /// The table's metadata at that version.
    pub meta: TableMeta,
    /// Every file of the table at that version, by name.
    pub files: Vec<DataFile>,
}

/// A Delta table's log on an object store.
#[derive(Debug, Clone)]
pub(super) struct TableLog {
    store: Arc<dyn ObjectStore>,
    /// The table's root in the store.
    root: Path,
    /// The table's URL, for deltalake.
    url: Url,
    /// The table's URL without a trailing `/`, for messages.
    display: String,
}

/// One line of a commit file: the actions the source looks at (others,
/// such as `txn` or `protocol`, are ignored).
#[derive(Deserialize)]
struct LogLine {
    add: Option<RawAdd>,
    remove: Option<RawRemove>,
    #[serde(rename = "metaData")]
    meta_data: Option<RawMetadata>,
    #[serde(rename = "commitInfo")]
    commit_info: Option<RawCommitInfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAdd {
    path: String,
    #[serde(default)]
    partition_values: HashMap<String, Option<String>>,
    size: i64,
    data_change: bool,
    stats: Option<String>,
    deletion_vector: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRemove {
    path: String,
    data_change: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    id: String,
    schema_string: String,
    #[serde(default)]
    partition_columns: Vec<String>,
    #[serde(default)]
    configuration: HashMap<String, Option<String>>,
}

#[derive(Deserialize)]
struct RawCommitInfo {
    operation: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStats {
    num_records: Option<u64>,
}

/// The name of version `version`'s commit file in `_delta_log/`.
pub(super) fn commit_name(version: u64) -> String {
    format!("_delta_log/{version:020}.json")
}

/// The version of a commit file's name (`<20 digits>.json`), if it is one.
fn commit_version(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The row count a file's statistics (JSON) give.
fn num_records(stats: Option<&str>) -> Option<u64> {
    serde_json::from_str::<RawStats>(stats?).ok()?.num_records
}

impl TableMeta {
    /// Reads a `metaData` action; `at` says where, for errors.
    fn from_raw(raw: RawMetadata, table: &str, at: &str) -> Result<Self> {
        let invalid = |reason: String| DeltaSourceError::Unsupported {
            table: table.to_string(),
            feature: format!("a schema the source cannot convert to Arrow ({at}: {reason})"),
        };
        let delta: StructType = serde_json::from_str(&raw.schema_string)
            .map_err(|e| invalid(format!("invalid schemaString: {e}")))?;
        let arrow: Schema = (&delta)
            .try_into_arrow()
            .map_err(|e| invalid(e.to_string()))?;
        // Field metadata (Delta's column metadata) is not part of the
        // stream's columns.
        let fields: Vec<_> = arrow
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(HashMap::new()))
            .collect();
        let column_mapping = raw
            .configuration
            .get("delta.columnMapping.mode")
            .cloned()
            .flatten()
            .filter(|mode| !mode.eq_ignore_ascii_case("none"));
        Ok(Self {
            id: raw.id,
            schema: Arc::new(Schema::new(fields)),
            partition_columns: raw.partition_columns,
            column_mapping,
        })
    }
}

impl TableLog {
    /// The log of the table at `url`, whose root is `root` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path, url: Url) -> Self {
        let display = url.as_str().trim_end_matches('/').to_string();
        Self {
            store,
            root,
            url,
            display,
        }
    }

    /// The table's URL, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The store holding the table.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The path in the store of `name`, relative to the table's root.
    fn path(&self, name: &str) -> Path {
        let relative = Path::parse(name).unwrap_or_else(|_| Path::from(name));
        Path::from_iter(self.root.parts().chain(relative.parts()))
    }

    /// The store path of a file the log names `raw` (URL-encoded, relative
    /// to the table or an absolute URL on the table's store).
    fn data_path(&self, raw: &str, version: u64) -> Result<(Path, String)> {
        if raw.contains("://") {
            let url = Url::parse(raw).map_err(|e| DeltaSourceError::CorruptLog {
                table: self.display.clone(),
                version,
                file: commit_name(version),
                reason: format!("invalid file URL '{raw}': {e}"),
            })?;
            if url.scheme() != self.url.scheme() || url.host_str() != self.url.host_str() {
                return Err(DeltaSourceError::Unsupported {
                    table: self.display.clone(),
                    feature: format!(
                        "a data file on another store ('{raw}', added by version {version})"
                    ),
                });
            }
            let path = Path::from_url_path(url.path()).unwrap_or_else(|_| Path::from(url.path()));
            return Ok((path, raw.to_string()));
        }
        let relative = Path::from_url_path(raw).unwrap_or_else(|_| Path::from(raw));
        let name = relative.to_string();
        Ok((
            Path::from_iter(self.root.parts().chain(relative.parts())),
            name,
        ))
    }

    /// The versions whose commit files exist from `from` on, each with the
    /// time its commit file was last modified (Delta's commit time).
    pub async fn list_commits(&self, from: u64) -> Result<BTreeMap<u64, DateTime<Utc>>> {
        let log = self.path("_delta_log");
        let offset = self.path(&format!("_delta_log/{from:020}"));
        let listing = if from == 0 {
            self.store.list(Some(&log))
        } else {
            self.store.list_with_offset(Some(&log), &offset)
        };
        let entries: Vec<_> = match listing.try_collect().await {
            Ok(entries) => entries,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => {
                return Err(DeltaSourceError::storage(
                    &self.display,
                    "listing the log",
                    e,
                ));
            }
        };
        Ok(entries
            .into_iter()
            .filter_map(|meta| {
                let version = commit_version(meta.location.filename()?)?;
                // Only `_delta_log/<n>.json`, not a file in a subdirectory.
                (meta.location == self.path(&commit_name(version)) && version >= from)
                    .then_some((version, meta.last_modified))
            })
            .collect())
    }

    /// Version `version`'s commit; `None` if its commit file does not exist.
    pub async fn read_commit(&self, version: u64) -> Result<Option<Commit>> {
        let name = commit_name(version);
        let bytes = match self.store.get(&self.path(&name)).await {
            Ok(result) => result.bytes().await.map_err(|e| {
                DeltaSourceError::storage(&self.display, format!("reading {name}"), e)
            })?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(DeltaSourceError::storage(
                    &self.display,
                    format!("reading {name}"),
                    e,
                ));
            }
        };
        self.parse_commit(version, &bytes).map(Some)
    }

    /// Parses version `version`'s commit file.
    fn parse_commit(&self, version: u64, bytes: &[u8]) -> Result<Commit> {
        let corrupt = |line: usize, reason: String| DeltaSourceError::CorruptLog {
            table: self.display.clone(),
            version,
            file: commit_name(version),
            reason: format!("line {line}: {reason}"),
        };
        let text = std::str::from_utf8(bytes).map_err(|e| corrupt(1, e.to_string()))?;
        let mut commit = Commit::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let action: LogLine =
                serde_json::from_str(line).map_err(|e| corrupt(i + 1, e.to_string()))?;
            if let Some(add) = action.add
                && add.data_change
            {
                let (path, name) = self.data_path(&add.path, version)?;
                commit.adds.push(DataFile {
                    version,
                    path,
                    name,
                    size: add.size.max(0) as u64,
                    num_records: num_records(add.stats.as_deref()),
                    partition_values: add.partition_values,
                    deletion_vector: add.deletion_vector.is_some_and(|dv| !dv.is_null()),
                });
            }
            if let Some(remove) = action.remove
                && remove.data_change
            {
                commit.data_removes.push(remove.path);
            }
            if let Some(meta) = action.meta_data {
                let at = format!("version {version}");
                commit.metadata = Some(TableMeta::from_raw(meta, &self.display, &at)?);
            }
            if let Some(info) = action.commit_info {
                commit.operation = info.operation;
            }
        }
        Ok(commit)
    }

    /// The table as deltalake opens it, through the source's store.
    fn table(&self) -> Result<DeltaTable> {
        DeltaTableBuilder::from_url(self.url.clone())
            .map(|b| b.with_storage_backend(Arc::clone(&self.store), self.url.clone()))
            .and_then(|b| b.build())
            .map_err(|e| DeltaSourceError::delta(&self.display, "opening", e))
    }

    /// The error for a location without a Delta table: says what is there.
    async fn not_a_table(&self) -> DeltaSourceError {
        let mut listing = self.store.list(Some(&self.root));
        let found = match listing.try_next().await {
            Ok(Some(meta)) => {
                let relative: Vec<_> = meta
                    .location
                    .prefix_match(&self.root)
                    .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                    .unwrap_or_default();
                format!(
                    "it holds '{}' but no _delta_log with a committed version",
                    relative.join("/")
                )
            }
            Ok(None) | Err(object_store::Error::NotFound { .. }) => {
                "there is nothing at this location (no _delta_log)".to_string()
            }
            Err(e) => format!("it cannot be listed: {e}"),
        };
        DeltaSourceError::NotADeltaTable {
            table: self.display.clone(),
            reason: found,
        }
    }

    /// The table's files at `version` (the latest if `None`), loaded by
    /// deltalake.
    pub async fn snapshot(&self, version: Option<u64>) -> Result<Snapshot> {
        let mut table = self.table()?;
        let loaded = match version {
            Some(v) => table.load_version(v).await,
            None => table.load().await,
        };
        match loaded {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => return Err(self.not_a_table().await),
            Err(_) if version.is_none() && !self.has_log().await => {
                return Err(self.not_a_table().await);
            }
            Err(e) => {
                if let Some(v) = version
                    && !self.commit_exists(v).await?
                {
                    return Err(DeltaSourceError::DataLoss {
                        table: self.display.clone(),
                        version: v,
                        what: "log file",
                        file: commit_name(v),
                        reason: format!(
                            "the snapshot at version {v} cannot be loaded: {e}; the log was \
                             probably cleaned up"
                        ),
                    });
                }
                let doing = match version {
                    Some(v) => format!("loading version {v}"),
                    None => "loading".to_string(),
                };
                return Err(DeltaSourceError::delta(&self.display, doing, e));
            }
        }
        let state = table
            .snapshot()
            .map_err(|e| DeltaSourceError::delta(&self.display, "reading", e))?;
        let version = state.version();
        let raw = serde_json::to_value(state.metadata())
            .and_then(serde_json::from_value::<RawMetadata>)
            .map_err(|e| DeltaSourceError::Unsupported {
                table: self.display.clone(),
                feature: format!("metadata the source cannot read ({e})"),
            })?;
        let meta = TableMeta::from_raw(raw, &self.display, &format!("version {version}"))?;
        let mut files: Vec<DataFile> = state
            .log_data()
            .iter()
            .map(|view| {
                let relative = view.object_store_path();
                DataFile {
                    version,
                    path: Path::from_iter(self.root.parts().chain(relative.parts())),
                    name: view.path().to_string(),
                    size: view.size().max(0) as u64,
                    partition_values: view.partition_values_map(),
                    num_records: view.num_records().map(|n| n as u64),
                    deletion_vector: view.deletion_vector_descriptor().is_some(),
                }
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Snapshot {
            version,
            meta,
            files,
        })
    }

    /// Whether `_delta_log/` holds anything.
    async fn has_log(&self) -> bool {
        let log = self.path("_delta_log");
        matches!(self.store.list(Some(&log)).try_next().await, Ok(Some(_)))
    }

    /// Whether version `version`'s commit file exists.
    pub async fn commit_exists(&self, version: u64) -> Result<bool> {
        let name = commit_name(version);
        match self.store.head(&self.path(&name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(DeltaSourceError::storage(
                &self.display,
                format!("reading {name}"),
                e,
            )),
        }
    }

    /// Whether the data file `file` exists.
    pub async fn file_exists(&self, file: &DataFile) -> Result<bool> {
        match self.store.head(&file.path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(DeltaSourceError::storage(
                &self.display,
                format!("reading {}", file.name),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_file_names_are_recognized() {
        assert_eq!(commit_version("00000000000000000012.json"), Some(12));
        assert_eq!(
            commit_version("00000000000000000012.checkpoint.parquet"),
            None
        );
        assert_eq!(commit_version("12.json"), None);
        assert_eq!(commit_version("_last_checkpoint"), None);
        assert_eq!(commit_name(3), "_delta_log/00000000000000000003.json");
    }

    #[test]
    fn row_counts_come_from_statistics() {
        assert_eq!(
            num_records(Some(r#"{"numRecords": 7, "minValues": {}}"#)),
            Some(7)
        );
        assert_eq!(num_records(Some("{}")), None);
        assert_eq!(num_records(None), None);
    }
}
