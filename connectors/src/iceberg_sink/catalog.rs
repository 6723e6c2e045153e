//! The sink's embedded catalog: one table in a directory, its current
//! metadata found the way Iceberg's Hadoop catalog finds it.
//!
//! The table's metadata files are `<table>/metadata/v<N>.metadata.json`
//! (N = 1, 2, …), and `<table>/metadata/version-hint.text` holds the
//! latest N. A commit writes `v<N+1>.metadata.json` with a conditional put
//! that fails if the file exists (`PutMode::Create`: on local disk a
//! no-replace link, on S3 a put with `If-None-Match: *`), so of two
//! writers racing from version N only one
//! commits; the other gets a retryable conflict and the `iceberg` crate's
//! transaction tries again from the new metadata. The hint is written
//! after the commit and only ever read as a starting point: readers go on
//! to `v<N+1>`, `v<N+2>`, … while they exist, so a writer killed between
//! the two leaves nothing inconsistent. Readers of the layout: pyiceberg's
//! `StaticTable.from_metadata("<table>")` (which reads the hint), Spark's
//! and Java's `HadoopCatalog`, or any reader given the metadata file.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use iceberg::io::FileIO;
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent,
    TableUpdate,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{BATCH_ID_PROPERTY, QUERY_ID_PROPERTY, committed_batch};

/// The file holding the latest metadata version (as Hadoop tables do).
const VERSION_HINT: &str = "version-hint.text";

/// A catalog of the one table at `location`, on `store`.
pub(super) struct DirectoryCatalog {
    /// The table's location as a URL (`file:///…`, `s3://bucket/…`), as
    /// written in its metadata.
    location: String,
    /// The table's directory in `store`.
    root: Path,
    store: Arc<dyn ObjectStore>,
    file_io: FileIO,
    ident: TableIdent,
    /// The batch being committed, for the crash tests' `during_sink`.
    batch: Arc<AtomicU64>,
}

impl std::fmt::Debug for DirectoryCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryCatalog")
            .field("location", &self.location)
            .finish()
    }
}

fn store_error(doing: &str, e: object_store::Error) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{doing}: {e}")).with_source(e)
}

impl DirectoryCatalog {
    /// The catalog of the table at `location` (a URL without a trailing
    /// slash), whose directory is `root` in `store`; its tables read and
    /// write manifests through `file_io` (on the same store).
    pub(super) fn new(
        location: String,
        root: Path,
        store: Arc<dyn ObjectStore>,
        file_io: FileIO,
        batch: Arc<AtomicU64>,
    ) -> Self {
        let name = location
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or("table")
            .to_string();
        Self {
            location,
            root,
            store,
            file_io,
            ident: TableIdent::new(NamespaceIdent::new("tidemill".into()), name),
            batch,
        }
    }

    /// The table's identifier in this catalog.
    pub(super) fn ident(&self) -> &TableIdent {
        &self.ident
    }

    fn metadata_path(&self, version: u64) -> Path {
        self.root
            .clone()
            .join("metadata")
            .join(format!("v{version}.metadata.json").as_str())
    }

    fn metadata_location(&self, version: u64) -> String {
        format!("{}/metadata/v{version}.metadata.json", self.location)
    }

    async fn exists(&self, path: &Path) -> Result<bool, Error> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("reading the table's metadata", e)),
        }
    }

    /// The version the hint names, or the highest `v<N>.metadata.json`
    /// listed if there is no readable hint; 0 if there is none.
    async fn hinted_version(&self) -> Result<u64, Error> {
        let hint = self.root.clone().join("metadata").join(VERSION_HINT);
        match self.store.get(&hint).await {
            Ok(got) => {
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| store_error("reading the version hint", e))?;
                if let Ok(version) = String::from_utf8_lossy(&bytes).trim().parse() {
                    return Ok(version);
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("reading the version hint", e)),
        }
        let prefix = self.root.clone().join("metadata");
        let mut listing = self.store.list(Some(&prefix));
        let mut latest = 0;
        while let Some(entry) = listing.next().await {
            let entry = match entry {
                Ok(entry) => entry,
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(store_error("listing the table's metadata", e)),
            };
            if let Some(version) = entry
                .location
                .filename()
                .and_then(|f| f.strip_prefix('v'))
                .and_then(|f| f.strip_suffix(".metadata.json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                latest = latest.max(version);
            }
        }
        Ok(latest)
    }

    /// The latest metadata version and its metadata; `None` if the table
    /// has none.
    pub(super) async fn latest(&self) -> Result<Option<(u64, TableMetadata)>, Error> {
        let mut version = self.hinted_version().await?;
        while self.exists(&self.metadata_path(version + 1)).await? {
            version += 1;
        }
        if version == 0 {
            return Ok(None);
        }
        let path = self.metadata_path(version);
        let bytes = self
            .store
            .get(&path)
            .await
            .map_err(|e| store_error("reading the table's metadata", e))?
            .bytes()
            .await
            .map_err(|e| store_error("reading the table's metadata", e))?;
        let metadata: TableMetadata = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("reading {}: {e}", self.metadata_location(version)),
            )
        })?;
        Ok(Some((version, metadata)))
    }

    fn table(&self, version: u64, metadata: TableMetadata) -> Result<Table, Error> {
        Table::builder()
            .identifier(self.ident.clone())
            .file_io(self.file_io.clone())
            .metadata(metadata)
            .metadata_location(self.metadata_location(version))
            .runtime(iceberg::Runtime::current())
            .build()
    }

    /// Writes `metadata` as version `version`, if no other writer wrote
    /// it first (then a retryable conflict); then the hint.
    async fn put(&self, version: u64, metadata: &TableMetadata) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(metadata).map_err(|e| {
            Error::new(
                ErrorKind::DataInvalid,
                format!("serialising the metadata: {e}"),
            )
        })?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(
                &self.metadata_path(version),
                PutPayload::from(Bytes::from(json)),
                options,
            )
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                tracing::debug!(table = %self.location, version, "lost a commit race; the transaction retries");
                return Err(Error::new(
                    ErrorKind::CatalogCommitConflicts,
                    format!(
                        "another writer committed version {version} of the table's metadata \
                         first"
                    ),
                )
                .with_retryable(true));
            }
            Err(e) => return Err(store_error("committing the table's metadata", e)),
        }
        let hint = self.root.clone().join("metadata").join(VERSION_HINT);
        if let Err(e) = self
            .store
            .put(&hint, PutPayload::from(version.to_string()))
            .await
        {
            // Readers find the version without it (see the module docs).
            tracing::warn!(table = %self.location, version, error = %e, "could not update the version hint");
        }
        Ok(())
    }

    /// Creates the table (its first metadata version) from `creation`,
    /// unless another writer did first: then loads theirs.
    pub(super) async fn create(&self, creation: TableCreation) -> Result<Table, Error> {
        let metadata = TableMetadataBuilder::from_table_creation(creation)?
            .build()?
            .metadata;
        match self.put(1, &metadata).await {
            Ok(()) => self.table(1, metadata),
            Err(e) if e.kind() == ErrorKind::CatalogCommitConflicts => {
                self.load_table(&self.ident).await
            }
            Err(e) => Err(e),
        }
    }
}

/// The table property that has a commit delete the metadata files that
/// drop out of the metadata log (which keeps
/// `write.metadata.previous-versions-max`, default 100), as Iceberg's own
/// catalogs do. The sink sets it on the tables it creates.
pub(super) const DELETE_AFTER_COMMIT: &str = "write.metadata.delete-after-commit.enabled";

impl DirectoryCatalog {
    /// With [`DELETE_AFTER_COMMIT`], deletes the metadata files of
    /// `previous`' log that `next`'s log no longer names (best effort: a
    /// file left behind is only clutter).
    async fn delete_dropped_metadata(&self, previous: &TableMetadata, next: &TableMetadata) {
        if next
            .properties()
            .get(DELETE_AFTER_COMMIT)
            .map(String::as_str)
            != Some("true")
        {
            return;
        }
        let kept: std::collections::HashSet<&str> = next
            .metadata_log()
            .iter()
            .map(|entry| entry.metadata_file.as_str())
            .collect();
        for entry in previous.metadata_log() {
            let file = entry.metadata_file.as_str();
            if kept.contains(file) {
                continue;
            }
            // Only this table's own `metadata/v<N>.metadata.json` files.
            let Some(name) = file
                .strip_prefix(self.location.as_str())
                .and_then(|rest| rest.strip_prefix("/metadata/"))
                .filter(|name| {
                    !name.contains('/') && name.starts_with('v') && name.ends_with(".metadata.json")
                })
            else {
                continue;
            };
            let path = self.root.clone().join("metadata").join(name);
            if let Err(e) = self.store.delete(&path).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(table = %self.location, file, error = %e, "could not delete an old metadata file");
            }
        }
    }
}

fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::FeatureUnsupported,
        format!("the Iceberg sink's directory catalog holds one table and cannot {what}"),
    )
}

/// Refuses `updates` that add a snapshot of a batch of a query whose later
/// (or same) batch `metadata` already holds: two runs of one query racing.
fn check_not_committed(metadata: &TableMetadata, updates: &[TableUpdate]) -> Result<(), Error> {
    for update in updates {
        let TableUpdate::AddSnapshot { snapshot } = update else {
            continue;
        };
        let properties = &snapshot.summary().additional_properties;
        let (Some(query), Some(batch)) = (
            properties.get(QUERY_ID_PROPERTY),
            properties
                .get(BATCH_ID_PROPERTY)
                .and_then(|b| b.parse::<i64>().ok()),
        ) else {
            continue;
        };
        if let Some(done) = committed_batch(metadata, query)
            && done >= batch
        {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "the table already holds batch {done} of the query {query}, committed by \
                     another run of the same query; batch {batch} is not committed again"
                ),
            ));
        }
    }
    Ok(())
}

#[async_trait]
impl Catalog for DirectoryCatalog {
    async fn list_namespaces(
        &self,
        _parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>, Error> {
        Ok(vec![self.ident.namespace().clone()])
    }

    async fn create_namespace(
        &self,
        _namespace: &NamespaceIdent,
        _properties: HashMap<String, String>,
    ) -> Result<Namespace, Error> {
        Err(unsupported("create namespaces"))
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace, Error> {
        Ok(Namespace::new(namespace.clone()))
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool, Error> {
        Ok(namespace == self.ident.namespace())
    }

    async fn update_namespace(
        &self,
        _namespace: &NamespaceIdent,
        _properties: HashMap<String, String>,
    ) -> Result<(), Error> {
        Err(unsupported("update namespaces"))
    }

    async fn drop_namespace(&self, _namespace: &NamespaceIdent) -> Result<(), Error> {
        Err(unsupported("drop namespaces"))
    }

    async fn list_tables(&self, _namespace: &NamespaceIdent) -> Result<Vec<TableIdent>, Error> {
        Ok(if self.latest().await?.is_some() {
            vec![self.ident.clone()]
        } else {
            Vec::new()
        })
    }

    async fn create_table(
        &self,
        _namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table, Error> {
        self.create(creation).await
    }

    async fn load_table(&self, _table: &TableIdent) -> Result<Table, Error> {
        match self.latest().await? {
            Some((version, metadata)) => self.table(version, metadata),
            None => Err(Error::new(
                ErrorKind::TableNotFound,
                format!("no Iceberg table at {}", self.location),
            )),
        }
    }

    async fn drop_table(&self, _table: &TableIdent) -> Result<(), Error> {
        Err(unsupported("drop tables"))
    }

    async fn purge_table(&self, _table: &TableIdent) -> Result<(), Error> {
        Err(unsupported("purge tables"))
    }

    async fn table_exists(&self, _table: &TableIdent) -> Result<bool, Error> {
        Ok(self.latest().await?.is_some())
    }

    async fn rename_table(&self, _src: &TableIdent, _dest: &TableIdent) -> Result<(), Error> {
        Err(unsupported("rename tables"))
    }

    async fn register_table(
        &self,
        _table: &TableIdent,
        _metadata_location: String,
    ) -> Result<Table, Error> {
        Err(unsupported("register tables"))
    }

    /// Checks the commit's requirements against the latest metadata,
    /// applies its updates and writes the result as the next version
    /// (conditionally: see the module docs).
    async fn update_table(&self, mut commit: TableCommit) -> Result<Table, Error> {
        let Some((version, current)) = self.latest().await? else {
            return Err(Error::new(
                ErrorKind::TableNotFound,
                format!("no Iceberg table at {}", self.location),
            ));
        };
        for requirement in commit.take_requirements() {
            requirement.check(Some(&current)).map_err(|e| {
                // The table moved on since the transaction read it: the
                // transaction tries again from the new metadata.
                Error::new(ErrorKind::CatalogCommitConflicts, e.message().to_string())
                    .with_retryable(true)
            })?;
        }
        let updates = commit.take_updates();
        check_not_committed(&current, &updates)?;
        let mut builder = current
            .clone()
            .into_builder(Some(self.metadata_location(version)));
        for update in updates {
            builder = update.apply(builder)?;
        }
        let metadata = builder.build()?.metadata;
        // The crash tests stop here: the batch's data files, manifest and
        // manifest list are written, the metadata naming them is not.
        crate::failpoint::hit("during_sink", self.batch.load(Ordering::SeqCst));
        self.put(version + 1, &metadata).await?;
        self.delete_dropped_metadata(&current, &metadata).await;
        self.table(version + 1, metadata)
    }
}

/// A REST catalog (`catalog_uri`) as the sink uses it: every call goes to
/// the `iceberg-catalog-rest` client, and a commit stops first at the
/// crash tests' `during_sink` failpoint, as the directory catalog's does
/// (the batch's data files, manifest and manifest list written, the commit
/// not sent).
pub(super) struct RestCatalog {
    inner: iceberg_catalog_rest::RestCatalog,
    /// The batch being committed, for the crash tests' `during_sink`.
    batch: Arc<AtomicU64>,
}

impl std::fmt::Debug for RestCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCatalog").finish_non_exhaustive()
    }
}

impl RestCatalog {
    /// The sink's view of `inner`.
    pub(super) fn new(inner: iceberg_catalog_rest::RestCatalog, batch: Arc<AtomicU64>) -> Self {
        Self { inner, batch }
    }
}

#[async_trait]
impl Catalog for RestCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>, Error> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace, Error> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace, Error> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool, Error> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<(), Error> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<(), Error> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>, Error> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table, Error> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table, Error> {
        self.inner.load_table(table).await
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<(), Error> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<(), Error> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool, Error> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<(), Error> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> Result<Table, Error> {
        self.inner.register_table(table, metadata_location).await
    }

    /// Sends the commit (the catalog checks its requirements: a conflict
    /// is a retryable error, and the transaction tries again from the
    /// table's new metadata).
    async fn update_table(&self, commit: TableCommit) -> Result<Table, Error> {
        // The crash tests stop here: the batch's data files, manifest and
        // manifest list are written, the commit is not sent.
        crate::failpoint::hit("during_sink", self.batch.load(Ordering::SeqCst));
        self.inner.update_table(commit).await
    }
}
