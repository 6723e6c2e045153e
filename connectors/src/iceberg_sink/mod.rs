//! Exactly-once output to an Apache Iceberg table, on the `iceberg` crate
//! (the `iceberg` feature).
//!
//! See [`IcebergSink`] for what a batch writes and how it is made
//! exactly-once. The modules: `schema` (the output's columns as Iceberg
//! types, checked against an existing table), `write` (a batch's parquet
//! data files, written with the workspace's parquet writer, and their
//! descriptions for the manifest), `catalog` (the embedded directory
//! catalog), `storage` (iceberg's file I/O on the table's object store,
//! local or S3), `error` ([`IcebergSinkError`]) and `connector`
//! (`connector = 'iceberg'` in pipelines).

mod catalog;
mod connector;
mod error;
mod schema;
mod storage;
#[cfg(test)]
mod tests;
mod write;

pub(crate) use connector::IcebergConnector;
pub use error::IcebergSinkError;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::StreamExt;
use iceberg::spec::{FormatVersion, TableMetadata};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use object_store::ObjectStore;
use object_store::path::Path;
use tidemill_engine::{
    Location, OutputMode, Result, Sink, SinkContext, StorageOptions, TidemillError,
};

use catalog::DirectoryCatalog;
use schema::Layout;
use storage::ObjectStoreStorage;

/// The snapshot summary property holding the id of the query that
/// committed the snapshot.
pub const QUERY_ID_PROPERTY: &str = "tidemill.query-id";
/// The snapshot summary property holding the batch id the snapshot
/// commits.
pub const BATCH_ID_PROPERTY: &str = "tidemill.batch-id";

/// Writes each micro-batch to an [Apache Iceberg](https://iceberg.apache.org)
/// table as one snapshot, exactly once.
///
/// # Exactly-once
///
/// Every batch commits exactly one *fast append* snapshot (operation
/// `append`: the batch's data files in a new manifest, the table's earlier
/// manifests kept as they are), and the snapshot's summary records the
/// query's id ([`QUERY_ID_PROPERTY`], `tidemill.query-id`) and the batch id
/// ([`BATCH_ID_PROPERTY`], `tidemill.batch-id`). When it opens, the sink
/// walks the table's current snapshot and its ancestors for the highest
/// batch id of its query; a batch at or below it (re-run after a crash
/// that came after the table's commit and before the engine's) writes
/// nothing. A batch with no rows commits a snapshot too (holding no new
/// files), so the history has one snapshot per batch. The query's id is
/// kept in its checkpoint, so a restart on the same checkpoint skips what
/// it committed; a new checkpoint is a new query and appends its batches
/// from batch 0 again, as with the Delta sink and Spark.
///
/// Data files of a batch that died before its commit are left in the
/// table's `data/` directory, referenced by no snapshot: no reader sees
/// them (Iceberg's `remove_orphan_files` maintenance deletes them).
///
/// # Output modes
///
/// Append only. The `iceberg` crate (0.10) has no overwrite or row-level
/// delete commit, so complete and update modes are refused when the query
/// starts (the Delta sink writes both).
///
/// # Where the table lives
///
/// A local path, a `file://` URL, or `s3://bucket/path` on S3 or an
/// S3-compatible server (with the `s3` feature): the bucket's client is
/// configured as every Tidemill location on S3 is, by the `AWS_*`
/// variables or [`IcebergSink::storage_options`] (see
/// [`tidemill_engine::storage`]). Data files, manifests, manifest lists
/// and metadata all go through that one object store client (the
/// `iceberg` crate's own storage backends are not built; its file I/O is
/// given the sink's store). A bucket that does not exist, or a location
/// without credentials, fails the query when it starts, naming the table.
///
/// # The catalog
///
/// By default ([`IcebergSink::new`]) the table lives in a directory with
/// the layout of Iceberg's Hadoop catalog: `metadata/v<N>.metadata.json`
/// for each commit and `metadata/version-hint.text` naming the latest; a
/// commit writes the next metadata file only if no other writer did
/// (a conditional put), so concurrent writers cannot lose each other's
/// snapshots (on S3 the put carries `If-None-Match: *`, which S3 and most
/// S3-compatible servers honour). Tables the sink creates have the property
/// `write.metadata.delete-after-commit.enabled`, so a commit deletes the
/// metadata files beyond the last `write.metadata.previous-versions-max`
/// (100); old snapshots and their manifests stay until the table's
/// maintenance expires them. Read it with pyiceberg
/// (`StaticTable.from_metadata("<table directory>")`, with `s3.endpoint`
/// and the keys as properties for a table on S3), Spark or Trino's
/// Hadoop catalog, DuckDB's `iceberg_scan('<table>/metadata/v<N>.metadata.json')`,
/// or the `iceberg` crate's `StaticTable`.
///
/// [`IcebergSink::rest`] commits through an Iceberg REST catalog instead
/// (the `iceberg-catalog-rest` crate): the table is named
/// `namespace.table`, created in the catalog by the first batch, and its
/// data files are written under the location the catalog gives it, which
/// must be on local disk (with a REST catalog the sink's file I/O is the
/// local file system only). The catalog checks each commit's requirements
/// (the table's current snapshot is still the one the batch was appended
/// to): when another writer committed in between, the catalog answers
/// `409 Conflict` and the `iceberg` crate's transaction loads the table
/// again and appends the batch to the new snapshot (up to 4 retries, the
/// table's `commit.retry.*` properties); when they are used up the batch
/// fails as a transient error, which the query's retry policy tries again.
/// A catalog that cannot be reached (connection refused, reset, timed out)
/// fails a batch as a transient error too; when the query starts it fails
/// the start, naming the table and the catalog. Exactly-once is as with
/// the embedded catalog (the batch ids in the snapshots' summaries), except
/// that two runs of one query committing at once are kept apart only by
/// the checkpoint's lock, not by the catalog.
///
/// # The table
///
/// The table is created by the first batch (format version 2), with the
/// query's output columns (required where the output's are not nullable)
/// as Iceberg types: integers of 32 bits or fewer as `int`, 64 bits as
/// `long`, strings as `string`, timestamps as `timestamp` / `timestamptz`
/// (with a time zone) in microseconds, decimals, dates, times, binary;
/// nested types (lists, structs, maps) and unsigned 64-bit integers are
/// refused naming the column. [`IcebergSink::partition_by`] partitions it
/// by the identity of the named columns (data files in
/// `data/<column>=<value>/` directories). An existing table must have
/// exactly the output's columns, of the same types (or an `int` output
/// into a `long` column, `float` into `double`), and identity partitions
/// on the `partition_by` columns when they are given; otherwise the query
/// is refused when it starts, naming the table and the column. A directory
/// that holds anything else than an Iceberg table the sink can read (or a
/// first batch's leftovers) is refused too.
///
/// # Example
///
/// ```no_run
/// use tidemill_connectors::IcebergSink;
///
/// // As a query's sink: `...write_stream().sink(trades)...`
/// let trades = IcebergSink::new("lake/trades").partition_by(["day"]);
/// # let _ = trades;
/// ```
pub struct IcebergSink {
    /// The table's location as given (`None` with a REST catalog that
    /// chooses it).
    location: Option<String>,
    /// The table as named in messages.
    display: String,
    partition_by: Vec<String>,
    /// A REST catalog's URL, the table's identifier in it, and the
    /// warehouse to ask for.
    rest: Option<RestTarget>,
    /// The settings of an `s3://` location's store.
    storage: StorageOptions,
    /// Set by `open`.
    state: tokio::sync::Mutex<Option<OpenState>>,
}

/// A table in a REST catalog.
#[derive(Debug, Clone)]
struct RestTarget {
    uri: String,
    ident: TableIdent,
    warehouse: Option<String>,
}

impl std::fmt::Debug for IcebergSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergSink")
            .field("table", &self.display)
            .field("partition_by", &self.partition_by)
            .field("catalog_uri", &self.rest.as_ref().map(|r| &r.uri))
            .finish()
    }
}

/// What the sink knows once opened.
struct OpenState {
    catalog: Arc<dyn Catalog>,
    /// The embedded catalog, when the sink uses it (it creates the table).
    directory: Option<Arc<DirectoryCatalog>>,
    ident: TableIdent,
    /// The table as last loaded or committed; `None` until the first batch
    /// creates it.
    table: Option<Loaded>,
    /// The highest batch id of the query in the table.
    committed: Option<i64>,
    /// Whether the table must be loaded again before the next batch (a
    /// batch failed: its commit may have landed).
    stale: bool,
    query_id: String,
    /// The query's output schema.
    output: SchemaRef,
    /// The object store the table's files are on.
    store: ObjectStoreStorage,
    /// The embedded catalog's table: its URL and its directory in the
    /// store (`None` with a REST catalog).
    home: Option<(String, Path)>,
    /// The batch being written, for the crash tests' failpoint inside the
    /// commit.
    batch: Arc<AtomicU64>,
}

/// A loaded table and how the sink writes it.
struct Loaded {
    table: Table,
    layout: Layout,
    /// The table's location, as data file paths start.
    url: String,
    /// Its directory in the store.
    root: Path,
}

/// The highest batch id that the query `query_id` committed in the current
/// snapshot of `metadata` or its ancestors; `None` if it committed none.
pub(crate) fn committed_batch(metadata: &TableMetadata, query_id: &str) -> Option<i64> {
    let mut highest: Option<i64> = None;
    let mut next = metadata.current_snapshot();
    while let Some(snapshot) = next {
        let properties = &snapshot.summary().additional_properties;
        if properties.get(QUERY_ID_PROPERTY).map(String::as_str) == Some(query_id)
            && let Some(batch) = properties
                .get(BATCH_ID_PROPERTY)
                .and_then(|b| b.parse::<i64>().ok())
        {
            highest = Some(highest.map_or(batch, |h| h.max(batch)));
        }
        next = snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id));
    }
    highest
}

/// A local table location (a path or a `file://` URL) as the URL its
/// metadata names (`file:///…`, no trailing slash) and its path in the
/// local store.
fn local_location(location: &str) -> std::result::Result<(String, Path), IcebergSinkError> {
    let invalid = |reason: String| IcebergSinkError::InvalidLocation {
        location: location.to_string(),
        reason,
    };
    let path = if let Some(rest) = location.strip_prefix("file://") {
        url::Url::parse(&format!("file://{rest}"))
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| invalid("not a file URL".to_string()))?
    } else if location.contains("://") {
        return Err(invalid(
            "not a local path or file:// URL, and the table's files are on the local file \
             system"
                .to_string(),
        ));
    } else {
        std::path::absolute(location).map_err(|e| invalid(e.to_string()))?
    };
    let url = url::Url::from_file_path(&path)
        .map_err(|()| invalid("not an absolute path".to_string()))?;
    let root = Path::from_url_path(url.path()).map_err(|e| invalid(e.to_string()))?;
    Ok((url.as_str().trim_end_matches('/').to_string(), root))
}

/// Whether `name` (relative to the table's directory) is what the sink
/// leaves in a table directory before its first commit: its data files or
/// metadata files.
fn is_local(location: &str) -> bool {
    !location.contains("://") || location.starts_with("file://")
}

/// The table as named in messages: a local location as its `file://` URL,
/// another as given (without a trailing slash).
fn display_location(location: &str) -> String {
    if is_local(location) {
        local_location(location)
            .map(|(url, _)| url)
            .unwrap_or_else(|_| location.to_string())
    } else {
        location.trim_end_matches('/').to_string()
    }
}

fn is_iceberg_leftover(name: &str) -> bool {
    (name.starts_with("data/") && name.ends_with(".parquet")) || name.starts_with("metadata/")
}

impl IcebergSink {
    /// A sink writing to the Iceberg table in the directory `location` (a
    /// local path, a `file://` URL or `s3://bucket/path`), created by the
    /// first batch if there is none; the table's metadata is kept in the
    /// directory (see "The catalog" above).
    pub fn new(location: impl Into<String>) -> Self {
        let location = location.into();
        Self {
            display: display_location(&location),
            location: Some(location),
            partition_by: Vec::new(),
            rest: None,
            storage: StorageOptions::default(),
            state: tokio::sync::Mutex::new(None),
        }
    }

    /// Settings of the object store of an `s3://` location (`aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, …, overriding the environment's
    /// `AWS_*` variables; see [`tidemill_engine::storage`]); none by
    /// default. A local location with options is refused when the query
    /// starts.
    pub fn storage_options(mut self, options: StorageOptions) -> Self {
        self.storage = options;
        self
    }

    /// A sink writing to the table `table` (`namespace.name`; nested
    /// namespaces as `a.b.name`) of the Iceberg REST catalog at `uri`
    /// (`http://host:port`; https needs a TLS-enabled build of reqwest,
    /// which this build does not have). The first batch creates the
    /// namespace and the table if they do not exist, at the location the
    /// catalog chooses (or [`IcebergSink::location`]); it must be on local
    /// disk. Tested against Rustberg, an Iceberg REST catalog server, with
    /// pyiceberg reading the tables back through it.
    pub fn rest(
        uri: impl Into<String>,
        table: &str,
    ) -> std::result::Result<Self, IcebergSinkError> {
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(IcebergSinkError::InvalidLocation {
                location: table.to_string(),
                reason: "a REST catalog's table is named namespace.table".to_string(),
            });
        }
        let ident =
            TableIdent::from_strs(parts).map_err(|e| IcebergSinkError::InvalidLocation {
                location: table.to_string(),
                reason: e.to_string(),
            })?;
        let uri = uri.into();
        Ok(Self {
            location: None,
            display: format!("{table} in {uri}"),
            partition_by: Vec::new(),
            rest: Some(RestTarget {
                uri,
                ident,
                warehouse: None,
            }),
            storage: StorageOptions::default(),
            state: tokio::sync::Mutex::new(None),
        })
    }

    /// The warehouse a REST catalog is asked for (its `warehouse`
    /// property); no effect on the embedded catalog.
    pub fn warehouse(mut self, warehouse: impl Into<String>) -> Self {
        if let Some(rest) = &mut self.rest {
            rest.warehouse = Some(warehouse.into());
        }
        self
    }

    /// The location of a table the sink creates in a REST catalog (a local
    /// path or `file://` URL); by default the catalog chooses it. No
    /// effect on the embedded catalog (use [`IcebergSink::new`]).
    pub fn location(mut self, location: impl Into<String>) -> Self {
        if self.rest.is_some() {
            self.location = Some(location.into());
        }
        self
    }

    /// Partitions a table the sink creates by the identity of `columns`
    /// (one partition per distinct value, files in `column=value/`
    /// directories), outermost first. For an existing table, the columns
    /// must be its identity partition columns; none (the default) keeps
    /// the table's partitioning.
    pub fn partition_by<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.partition_by = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Refuses an output mode other than append, partition columns that
    /// are not columns of the output (or named twice), and output columns
    /// Iceberg cannot hold, naming the column. Checked when the query
    /// starts, before any I/O.
    pub fn check(
        &self,
        mode: OutputMode,
        schema: &Schema,
    ) -> std::result::Result<(), IcebergSinkError> {
        check_mode(mode)?;
        schema::check_partition_columns(&self.partition_by, schema)?;
        schema::table_schema(&self.display, schema)?;
        Ok(())
    }

    /// Opens the catalog, and loads the table if it exists, checking that
    /// it fits the output.
    async fn open_state(
        &self,
        ctx: &SinkContext,
    ) -> std::result::Result<OpenState, IcebergSinkError> {
        let batch = Arc::new(AtomicU64::new(0));
        let mut store = ObjectStoreStorage::local();
        let mut home = None;
        let (catalog, directory, ident): (Arc<dyn Catalog>, _, _) = match &self.rest {
            None => {
                let location = self.location.as_deref().unwrap_or_default();
                let (url, root, table_store) = self.resolve(location, ctx).await?;
                store = table_store;
                let directory = Arc::new(DirectoryCatalog::new(
                    url.clone(),
                    root.clone(),
                    self.object_store(&store)?,
                    store.file_io(),
                    Arc::clone(&batch),
                ));
                home = Some((url, root));
                let ident = directory.ident().clone();
                (directory.clone(), Some(directory), ident)
            }
            Some(rest) => {
                let mut properties = HashMap::from([(
                    iceberg_catalog_rest::REST_CATALOG_PROP_URI.to_string(),
                    rest.uri.clone(),
                )]);
                if let Some(warehouse) = &rest.warehouse {
                    properties.insert(
                        iceberg_catalog_rest::REST_CATALOG_PROP_WAREHOUSE.to_string(),
                        warehouse.clone(),
                    );
                }
                let catalog = iceberg_catalog_rest::RestCatalogBuilder::default()
                    .with_storage_factory(Arc::new(iceberg::io::LocalFsStorageFactory))
                    .load("tidemill", properties)
                    .await
                    .map_err(|e| {
                        IcebergSinkError::iceberg(&self.display, "connecting to the catalog of", e)
                    })?;
                (
                    Arc::new(catalog::RestCatalog::new(catalog, Arc::clone(&batch))),
                    None,
                    rest.ident.clone(),
                )
            }
        };
        let mut state = OpenState {
            catalog,
            directory,
            ident,
            table: None,
            committed: None,
            stale: false,
            query_id: ctx.query_id.clone(),
            output: Arc::clone(&ctx.schema),
            store,
            home,
            batch,
        };
        match self.load(&state).await? {
            Some(loaded) => {
                state.committed = committed_batch(loaded.table.metadata(), &state.query_id);
                state.table = Some(loaded);
            }
            None => {
                if state.directory.is_some() {
                    self.check_no_foreign_files(&state).await?;
                }
            }
        }
        Ok(state)
    }

    /// The embedded catalog's table at `location`: its URL (no trailing
    /// slash), its directory in its store, and the store. A local location
    /// is on the local file system; another is resolved as every Tidemill
    /// location is (an `s3://` one with the sink's options, see
    /// [`IcebergSink::storage_options`]) and listed once, so that a
    /// missing bucket or refused credentials fail here, naming the table.
    async fn resolve(
        &self,
        location: &str,
        ctx: &SinkContext,
    ) -> std::result::Result<(String, Path, ObjectStoreStorage), IcebergSinkError> {
        if is_local(location) {
            if !self.storage.is_empty() {
                return Err(IcebergSinkError::InvalidLocation {
                    location: location.to_string(),
                    reason: format!(
                        "S3 options ({:?}) given for a table that is not on S3",
                        self.storage
                    ),
                });
            }
            let (url, root) = local_location(location)?;
            return Ok((url, root, ObjectStoreStorage::local()));
        }
        let resolved = Location::resolve_with(location, &self.storage, &ctx.session.runtime_env())
            .map_err(|e| IcebergSinkError::InvalidLocation {
                location: location.to_string(),
                reason: e.to_string(),
            })?;
        let url = resolved.url().as_str().trim_end_matches('/').to_string();
        let root = resolved.path().clone();
        // An empty prefix of a bucket lists as empty; a missing bucket or
        // a refused request fails.
        resolved
            .store()
            .list_with_delimiter(Some(&root))
            .await
            .map_err(|e| IcebergSinkError::store(&self.display, "opening", e))?;
        let store = ObjectStoreStorage::new(resolved.url(), Arc::clone(resolved.store()));
        Ok((url, root, store))
    }

    /// The object store of `storage`.
    fn object_store(
        &self,
        storage: &ObjectStoreStorage,
    ) -> std::result::Result<Arc<dyn ObjectStore>, IcebergSinkError> {
        storage
            .store()
            .map_err(|e| IcebergSinkError::iceberg(&self.display, "opening", e))
    }

    /// The table as the catalog has it now, checked against the output;
    /// `None` if there is none.
    async fn load(
        &self,
        state: &OpenState,
    ) -> std::result::Result<Option<Loaded>, IcebergSinkError> {
        let exists = state
            .catalog
            .table_exists(&state.ident)
            .await
            .map_err(|e| IcebergSinkError::iceberg(&self.display, "opening", e))?;
        if !exists {
            return Ok(None);
        }
        let table = state
            .catalog
            .load_table(&state.ident)
            .await
            .map_err(|e| IcebergSinkError::iceberg(&self.display, "loading", e))?;
        self.loaded(state, table).map(Some)
    }

    /// `table` with the layout the sink writes it by (checked against the
    /// output) and its location.
    fn loaded(
        &self,
        state: &OpenState,
        table: Table,
    ) -> std::result::Result<Loaded, IcebergSinkError> {
        let metadata = table.metadata();
        let layout = schema::layout(
            &self.display,
            &state.output,
            metadata.current_schema(),
            metadata.default_partition_spec(),
            &self.partition_by,
        )?;
        let location = metadata.location();
        let (url, root) =
            if state.store.is_local() {
                local_location(location)?
            } else {
                let root = state.store.path(location).map_err(|reason| {
                    IcebergSinkError::InvalidLocation {
                        location: location.to_string(),
                        reason,
                    }
                })?;
                (location.trim_end_matches('/').to_string(), root)
            };
        Ok(Loaded {
            table,
            layout,
            url,
            root,
        })
    }

    /// Refuses a table directory without metadata that holds other files
    /// than the sink's own leftovers.
    async fn check_no_foreign_files(
        &self,
        state: &OpenState,
    ) -> std::result::Result<(), IcebergSinkError> {
        let Some((_, root)) = &state.home else {
            return Ok(());
        };
        let root = root.clone();
        let store = self.object_store(&state.store)?;
        let mut listing = store.list(Some(&root));
        while let Some(entry) = listing.next().await {
            match entry {
                Ok(meta) => {
                    let name = meta
                        .location
                        .prefix_match(&root)
                        .map(|parts| {
                            parts
                                .map(|p| p.as_ref().to_string())
                                .collect::<Vec<_>>()
                                .join("/")
                        })
                        .unwrap_or_else(|| meta.location.to_string());
                    if !is_iceberg_leftover(&name) {
                        return Err(IcebergSinkError::NotAnIcebergTable {
                            table: self.display.clone(),
                            found: name,
                        });
                    }
                }
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(IcebergSinkError::store(&self.display, "listing", e)),
            }
        }
        Ok(())
    }

    /// Creates the table for the output (the first batch).
    async fn create(&self, state: &OpenState) -> std::result::Result<Loaded, IcebergSinkError> {
        let schema = schema::table_schema(&self.display, &state.output)?;
        let spec = schema::partition_spec(&self.display, &schema, &self.partition_by)?;
        let failed = |e| IcebergSinkError::iceberg(&self.display, "creating", e);
        let properties = [
            ("write.format.default", "parquet"),
            ("write.parquet.compression-codec", "snappy"),
            ("created-by", "tidemill"),
            // One metadata file per batch: keep the last 100, as Iceberg's
            // catalogs do with this property.
            (catalog::DELETE_AFTER_COMMIT, "true"),
            ("write.metadata.previous-versions-max", "100"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let table = match &state.directory {
            Some(directory) => {
                let (url, _) = state.home.clone().expect("the embedded catalog's table");
                let creation = TableCreation::builder()
                    .name(state.ident.name().to_string())
                    .location(url)
                    .schema(schema)
                    .partition_spec(spec)
                    .properties(properties)
                    .format_version(FormatVersion::V2)
                    .build();
                directory.create(creation).await.map_err(failed)?
            }
            None => {
                let namespace: &NamespaceIdent = state.ident.namespace();
                if !state
                    .catalog
                    .namespace_exists(namespace)
                    .await
                    .map_err(failed)?
                {
                    state
                        .catalog
                        .create_namespace(namespace, HashMap::new())
                        .await
                        .map_err(failed)?;
                }
                let creation = TableCreation::builder()
                    .name(state.ident.name().to_string())
                    .location_opt(self.location.as_deref().map(|l| {
                        local_location(l)
                            .map(|(url, _)| url)
                            .unwrap_or_else(|_| l.to_string())
                    }))
                    .schema(schema)
                    .partition_spec(spec)
                    .properties(properties)
                    .format_version(FormatVersion::V2)
                    .build();
                state
                    .catalog
                    .create_table(namespace, creation)
                    .await
                    .map_err(failed)?
            }
        };
        self.loaded(state, table)
    }

    /// `add_batch`, with the sink's own error type.
    async fn add(
        &self,
        state: &mut OpenState,
        batch_id: u64,
        batches: Vec<RecordBatch>,
    ) -> std::result::Result<(), IcebergSinkError> {
        state.batch.store(batch_id, Ordering::SeqCst);
        let batch = i64::try_from(batch_id).unwrap_or(i64::MAX);
        if state.stale {
            if let Some(loaded) = self.load(state).await? {
                state.committed = committed_batch(loaded.table.metadata(), &state.query_id);
                state.table = Some(loaded);
            }
            state.stale = false;
        }
        if let Some(done) = state.committed
            && done >= batch
        {
            tracing::debug!(sink = %self.description(), batch_id, committed = done, "batch already committed; skipping");
            return Ok(());
        }
        if state.table.is_none() {
            state.table = Some(self.create(state).await?);
        }
        let loaded = state.table.as_ref().expect("created above");
        let store = self.object_store(&state.store)?;
        let target = write::Target {
            table: &loaded.url,
            root: &loaded.root,
            store: store.as_ref(),
        };
        let files = write::write_data_files(&target, &loaded.layout, batch_id, batches).await?;
        let properties = HashMap::from([
            (QUERY_ID_PROPERTY.to_string(), state.query_id.clone()),
            (BATCH_ID_PROPERTY.to_string(), batch_id.to_string()),
        ]);
        let doing = format!("batch {batch_id}: committing to");
        let failed = |e| IcebergSinkError::iceberg(&self.display, doing.clone(), e);
        let transaction = Transaction::new(&loaded.table);
        let append = transaction
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(properties);
        let transaction = append.apply(transaction).map_err(failed)?;
        let table = transaction
            .commit(state.catalog.as_ref())
            .await
            .map_err(failed)?;
        tracing::debug!(sink = %self.description(), batch_id, snapshot = ?table.metadata().current_snapshot_id(), "batch committed");
        // Another writer may have changed the schema meanwhile: the next
        // batch writes by the committed table's layout.
        let loaded = self.loaded(state, table)?;
        state.table = Some(loaded);
        state.committed = Some(batch);
        Ok(())
    }
}

/// Refuses the output modes the sink cannot write.
fn check_mode(mode: OutputMode) -> std::result::Result<(), IcebergSinkError> {
    match mode {
        OutputMode::Append => Ok(()),
        OutputMode::Complete => Err(IcebergSinkError::UnsupportedMode {
            mode: "complete".to_string(),
            reason: "complete mode replaces the table's rows with each batch, and the iceberg \
                     crate (0.10) has no overwrite commit"
                .to_string(),
        }),
        OutputMode::Update => Err(IcebergSinkError::UnsupportedMode {
            mode: "update".to_string(),
            reason: "update mode replaces rows by key, and the iceberg crate (0.10) has no \
                     row-level delete or overwrite commit"
                .to_string(),
        }),
    }
}

#[async_trait]
impl Sink for IcebergSink {
    /// `IcebergSink[<table>]`.
    fn description(&self) -> String {
        format!("IcebergSink[{}]", self.display)
    }

    async fn open(&self, ctx: &SinkContext) -> Result<()> {
        let description = self.description();
        self.check(ctx.output_mode, &ctx.schema)
            .map_err(|e| e.into_tidemill(&description))?;
        let state = self
            .open_state(ctx)
            .await
            .map_err(|e| e.into_tidemill(&description))?;
        let mut guard = self
            .state
            .try_lock()
            .map_err(|_| TidemillError::sink(&description, "opened twice at once"))?;
        *guard = Some(state);
        Ok(())
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        _schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        let description = self.description();
        let mut guard = self.state.lock().await;
        let Some(state) = guard.as_mut() else {
            return Err(IcebergSinkError::NotOpen { batch_id }.into_tidemill(&description));
        };
        let result = self.add(state, batch_id, batches).await;
        if result.is_err() {
            state.stale = true;
        }
        result.map_err(|e| e.into_tidemill(&description))
    }
}
