//! Exactly-once output to a Delta Lake table, on the `deltalake` crate
//! (the `delta` feature).
//!
//! See [`DeltaSink`] for what each output mode writes and how a batch is
//! made exactly-once. The modules: `schema` (the output's columns as Delta
//! types, checked against an existing table), `error` ([`DeltaSinkError`]),
//! `connector` (`connector = 'delta'` in pipelines) and, in builds with the
//! `failpoints` feature, `failpoint_store` (a log store that stops before
//! writing a commit, for the crash tests).

mod append;
mod connector;
mod error;
#[cfg(feature = "failpoints")]
mod failpoint_store;
mod schema;
#[cfg(test)]
mod tests;

pub(crate) use connector::DeltaConnector;
pub use error::DeltaSinkError;

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::common::Column;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::prelude::{Expr, SessionContext};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::writer::RecordBatchWriter;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::StreamExt;
use tidemill_engine::{
    Location, OutputMode, Result, Sink, SinkContext, StorageOptions, TidemillError,
};

/// The table property that sets how many versions apart Delta writes a
/// checkpoint (`_delta_log/<version>.checkpoint.parquet`).
pub const CHECKPOINT_INTERVAL_PROPERTY: &str = "delta.checkpointInterval";

/// Writes each micro-batch to a [Delta Lake](https://delta.io) table as one
/// table version, exactly once, the way Spark's Delta sink does.
///
/// # Output modes
///
/// - **Append**: the batch's rows are added to the table.
/// - **Complete**: the batch's rows (the whole result) replace the table's
///   rows, in the same commit (the commit removes every file and adds the
///   new ones, so a reader sees the old table or the new, never a mix).
/// - **Update**: a MERGE on the key columns declared with
///   [`DeltaSink::merge_on`]: a row whose keys match a table row replaces
///   it, other rows are inserted. Update mode without merge keys is refused
///   when the query starts. In append mode, merge keys make each batch a
///   MERGE too (an upsert of the appended rows; a batch run of an
///   update-mode pipeline writes so); complete mode refuses them. The keys
///   must identify a row within a batch
///   (as an aggregation's group keys do) and should not be null (null keys
///   never match, so such rows are inserted again).
///
/// # Exactly-once
///
/// Every batch commits exactly one table version, and that version carries
/// a Delta *application transaction* (a `txn` action) whose `appId` is the
/// query's id and whose `version` is the batch id. Before it writes a
/// batch, the sink reads the table's latest transaction version for the
/// query's id: if it is the batch id (or later), the batch was committed
/// before a crash and the sink writes nothing. A batch with no rows commits
/// a version too (holding only the transaction), so the version history has
/// one version per batch. The query's id is kept in its checkpoint, so a
/// restart on the same checkpoint skips what it committed; a new
/// checkpoint is a new query and appends its batches from batch 0 again,
/// as with Spark.
///
/// Other writers may commit to the table meanwhile (Delta's optimistic
/// concurrency): a batch's commit is written as the next version only if
/// no other writer took it; if one did, an append is tried again at the
/// version after (appends and removes of others do not conflict with it),
/// but a concurrent commit of the same query's transaction (two runs of
/// one query) or a change of the table's schema, properties or protocol
/// fails the batch, as deltalake's conflict checker decides.
///
/// # Cost of a batch
///
/// In append mode the time of a batch's commit does not grow with the
/// table: the sink reads the table's file list once, when it opens, and
/// then keeps what it needs between batches (the latest version and the
/// query's transaction in it). Before a batch it only reads the log's
/// versions written by others since its own last commit (none, one
/// missing file, when it is the only writer), writes the data files with
/// their statistics and commits their `add` actions directly. Only a
/// checkpoint (every `delta.checkpointInterval` versions) reads the file
/// list again. Complete mode (which removes every file) and MERGE (which
/// reads the table) work on the whole table's state with each batch, and
/// so do appends to tables that use CHECK constraints, invariants,
/// generated or identity columns, column mapping, row tracking or
/// in-commit timestamps (through deltalake's write operation).
///
/// # The table
///
/// The table is created by the first batch (in the same commit), with the
/// query's output schema (Delta types: strings for every string type,
/// microsecond timestamps — with a time zone, Delta's `timestamp`;
/// without, `timestamp_ntz`), partitioned by the columns of
/// [`DeltaSink::partition_by`]. An existing table must have exactly the
/// output's columns, of the same Delta types, and its partitioning (when
/// `partition_by` is given); otherwise the query is refused when it starts,
/// with an error naming the table and the column. A path that holds files
/// but no Delta table (plain parquet files, a files sink's output) is
/// refused too. Only the leftovers of a first batch that died before its
/// commit (Delta data files, `_delta_log/`) are taken for an empty table.
///
/// Delta writes a checkpoint of the log every 100 versions (the table
/// property `delta.checkpointInterval`, which
/// [`DeltaSink::checkpoint_interval`] sets when the sink creates the
/// table), so opening the table and reading its transaction stays cheap as
/// the table grows.
///
/// The location is a local path or a `file://` URL. Read the table with
/// any Delta reader: deltalake's DataFusion table provider, Spark,
/// DuckDB, the Python `deltalake` package.
///
/// # Example
///
/// ```no_run
/// use tidemill_connectors::DeltaSink;
///
/// // As a query's sink: `...write_stream().sink(trades)...`
/// let trades = DeltaSink::new("lake/trades").partition_by(["day"]);
/// // Update mode: a MERGE on the aggregation's group keys.
/// let totals = DeltaSink::new("lake/totals").merge_on(["symbol"]);
/// # let _ = (trades, totals);
/// ```
pub struct DeltaSink {
    /// The location as the user gave it.
    location: String,
    /// The location as a URL, for descriptions.
    display: String,
    partition_by: Vec<String>,
    merge_keys: Vec<String>,
    checkpoint_interval: Option<u64>,
    /// Settings of an `s3://` location's store.
    storage: StorageOptions,
    /// Set by `open`.
    state: tokio::sync::Mutex<Option<OpenState>>,
}

/// What the sink knows once opened.
struct OpenState {
    /// The table, at the last version the sink read or committed (in
    /// append mode: as loaded when the sink opened or at its last
    /// checkpoint; [`FastAppend`] knows the versions since).
    table: DeltaTable,
    /// The table's URL, for messages.
    url: String,
    /// The application id of the commits' transactions: the query's id.
    app_id: String,
    mode: OutputMode,
    /// The query's output schema.
    schema: SchemaRef,
    /// Append mode's own commit path, once there is a table it can write
    /// (see the `append` module); `None` in other modes, before the first
    /// batch creates the table, and for tables it cannot write.
    fast: Option<FastAppend>,
    /// The batch being written, for the crash tests' failpoint inside the
    /// commit.
    #[cfg(feature = "failpoints")]
    batch: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaSink")
            .field("location", &self.display)
            .field("partition_by", &self.partition_by)
            .field("merge_keys", &self.merge_keys)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .finish()
    }
}

impl DeltaSink {
    /// A sink writing to the Delta table at `location` (a local path, a
    /// `file://` URL, or with the `s3` feature an `s3://bucket/path` URL),
    /// created by the first batch if there is none.
    pub fn new(location: impl Into<String>) -> Self {
        let location = location.into();
        let display = match ListingTableUrl::parse(&location) {
            Ok(url) => url.as_str().trim_end_matches('/').to_string(),
            Err(_) => location.clone(),
        };
        Self {
            location,
            display,
            partition_by: Vec::new(),
            merge_keys: Vec::new(),
            checkpoint_interval: None,
            storage: StorageOptions::default(),
            state: tokio::sync::Mutex::new(None),
        }
    }

    /// Settings of the S3 store an `s3://bucket/path` table is written
    /// to, over the environment's `AWS_*` variables (see
    /// [`tidemill_engine::storage`]); none by default.
    pub fn storage_options(mut self, options: StorageOptions) -> Self {
        self.storage = options;
        self
    }

    /// Partitions a table the sink creates by the values of `columns`
    /// (Hive-style `column=value/` directories, as Delta lays them out),
    /// outermost first. For an existing table, the columns must be the
    /// table's partition columns; none (the default) keeps the table's.
    pub fn partition_by<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.partition_by = columns.into_iter().map(Into::into).collect();
        self
    }

    /// The key columns of update mode's MERGE: a batch's row replaces the
    /// table's row with the same values of `columns`. Required in update
    /// mode; in append mode they make each batch a MERGE too; refused in
    /// complete mode.
    pub fn merge_on<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.merge_keys = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the table property `delta.checkpointInterval` of a table the
    /// sink creates: Delta writes a checkpoint every `versions` versions
    /// (default 100; a value of 0 is taken as 1). An existing table keeps
    /// its own.
    pub fn checkpoint_interval(mut self, versions: u64) -> Self {
        self.checkpoint_interval = Some(versions.max(1));
        self
    }

    /// Refuses options that do not fit the output mode or the output
    /// `schema`, naming the column: update mode without merge keys, merge
    /// keys in complete mode, a partition column or merge key that is not a
    /// column of the output (or named twice), an output column Delta cannot
    /// hold. Checked when the query starts, before any I/O.
    pub fn check(
        &self,
        mode: OutputMode,
        schema: &Schema,
    ) -> std::result::Result<(), DeltaSinkError> {
        check_mode(mode, &self.merge_keys)?;
        schema::check_columns("partition", &self.partition_by, schema)?;
        schema::check_columns("merge key", &self.merge_keys, schema)?;
        schema::delta_types(&self.display, schema)?;
        Ok(())
    }

    /// The table at `location` (not loaded), with the crash tests' log
    /// store in builds with failpoints.
    /// `store`, if given, is the bucket's store the table is on (deltalake
    /// otherwise finds one by the URL's scheme).
    fn table(
        &self,
        url: url::Url,
        store: Option<Arc<dyn object_store::ObjectStore>>,
        _state_batch: &BatchCell,
    ) -> std::result::Result<DeltaTable, DeltaSinkError> {
        let mut builder = DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| DeltaSinkError::delta(&self.display, "opening", e))?;
        if let Some(store) = store {
            builder = builder.with_storage_backend(store, url);
        }
        #[cfg(feature = "failpoints")]
        {
            let inner = builder
                .build_storage()
                .map_err(|e| DeltaSinkError::delta(&self.display, "opening", e))?;
            Ok(DeltaTable::new(failpoint_store::FailpointLogStore::wrap(
                inner,
                Arc::clone(_state_batch),
            )))
        }
        #[cfg(not(feature = "failpoints"))]
        builder
            .build()
            .map_err(|e| DeltaSinkError::delta(&self.display, "opening", e))
    }

    /// Opens the table: loads it if it exists and checks that it fits the
    /// output; otherwise checks that the location holds nothing but the
    /// leftovers of an uncommitted first batch.
    async fn open_table(
        &self,
        ctx: &SinkContext,
        batch: &BatchCell,
    ) -> std::result::Result<(DeltaTable, String), DeltaSinkError> {
        // deltalake knows `s3://` URLs once registered (see `delta_s3`).
        #[cfg(feature = "s3")]
        crate::delta_s3::register_s3();
        let url = deltalake::ensure_table_uri(&self.location).map_err(|e| {
            DeltaSinkError::InvalidLocation {
                location: self.location.clone(),
                reason: e.to_string(),
            }
        })?;
        let display = url.as_str().trim_end_matches('/').to_string();
        // On object storage other than memory://, deltalake is given the
        // session's store for the location (registered with the sink's
        // options), and commits through its default log store's
        // conditional put (see `delta_s3`).
        let store = match url.scheme() {
            "file" | "memory" => None,
            _ => {
                let location = Location::resolve_with(
                    &self.location,
                    &self.storage,
                    &ctx.session.runtime_env(),
                )
                .map_err(|e| DeltaSinkError::InvalidLocation {
                    location: self.location.clone(),
                    reason: e.to_string(),
                })?;
                // A listing fails where the bucket is missing or refused
                // (an empty prefix of a bucket lists as empty), before any
                // batch is logged; deltalake would take a missing bucket
                // for a missing table.
                object_store::ObjectStore::list_with_delimiter(
                    location.store().as_ref(),
                    Some(location.path()),
                )
                .await
                .map_err(|e| DeltaSinkError::delta(&display, "opening", e.into()))?;
                Some(Arc::clone(location.store()))
            }
        };
        let mut table = self.table(url, store, batch)?;
        match table.load().await {
            Ok(()) => {
                schema::check_table(&display, &table, &ctx.schema, &self.partition_by)?;
            }
            Err(DeltaTableError::NotATable(_)) => {
                check_no_foreign_files(&display, &table).await?;
            }
            Err(e) => return Err(DeltaSinkError::delta(&display, "opening", e)),
        }
        Ok((table, display))
    }
}

/// Append mode's state between batches: what is committed.
struct FastAppend {
    /// The latest version known, and the query's transaction in it.
    tail: append::LogTail,
    /// The table's partition columns.
    partition_by: Vec<String>,
}

impl FastAppend {
    /// The state of append mode's path for `table` (loaded), which it can
    /// write ([`append::supports`]); `committed` is the query's transaction
    /// version in the table's version if known, read from the table
    /// otherwise.
    async fn start(
        url: &str,
        table: &DeltaTable,
        app_id: &str,
        committed: Option<Option<i64>>,
    ) -> std::result::Result<Self, DeltaSinkError> {
        let tail = match committed {
            Some(committed) => append::LogTail {
                version: table.version().unwrap_or_default(),
                committed,
                table_changed: false,
            },
            None => append::LogTail::of(url, table, app_id).await?,
        };
        let partition_by = table
            .snapshot()
            .map_err(|e| DeltaSinkError::delta(url, "reading", e))?
            .metadata()
            .partition_columns()
            .to_vec();
        Ok(Self { tail, partition_by })
    }
}

/// The batch a sink is writing, shared with its log store.
#[cfg(feature = "failpoints")]
type BatchCell = Arc<std::sync::atomic::AtomicU64>;
/// Nothing, without failpoints.
#[cfg(not(feature = "failpoints"))]
type BatchCell = ();

/// Update mode needs merge keys; complete mode, which overwrites the
/// table, takes none.
fn check_mode(mode: OutputMode, merge_keys: &[String]) -> std::result::Result<(), DeltaSinkError> {
    match (mode, merge_keys.is_empty()) {
        (OutputMode::Update, true) => Err(DeltaSinkError::MergeKeysRequired),
        (OutputMode::Complete, false) => Err(DeltaSinkError::MergeKeysWithoutUpdate {
            mode: mode.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Whether `name` (a path relative to the table root) is what a Delta
/// write leaves before its commit: the log directory, or a data file
/// (`part-<n>-<uuid>-c000[.<codec>].parquet`, in partition directories or
/// not).
fn is_delta_leftover(name: &str) -> bool {
    if name.starts_with("_delta_log/") {
        return true;
    }
    let file = name.rsplit('/').next().unwrap_or(name);
    file.starts_with("part-") && file.contains("-c000") && file.ends_with(".parquet")
}

/// Refuses a location without a Delta log that holds other files than a
/// Delta write's leftovers.
async fn check_no_foreign_files(
    display: &str,
    table: &DeltaTable,
) -> std::result::Result<(), DeltaSinkError> {
    let store = table.log_store().object_store(None);
    let mut listing = store.list(None);
    while let Some(entry) = listing.next().await {
        match entry {
            Ok(meta) => {
                let name = meta.location.to_string();
                if !is_delta_leftover(&name) {
                    return Err(DeltaSinkError::NotADeltaTable {
                        table: display.to_string(),
                        found: name,
                    });
                }
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => {
                return Err(DeltaSinkError::delta(
                    display,
                    "listing",
                    DeltaTableError::ObjectStore { source: e },
                ));
            }
        }
    }
    Ok(())
}

/// `source.<column>` or `target.<column>`.
fn qualified(relation: &str, column: &str) -> Expr {
    Expr::Column(Column::new(Some(relation), column))
}

impl DeltaSink {
    fn lock_error(&self) -> TidemillError {
        TidemillError::sink(self.description(), "internal lock poisoned")
    }

    /// Writes `batches` with `mode` (appending, or overwriting the table),
    /// creating the table if it does not exist; commits with `properties`.
    async fn write(
        &self,
        state: &OpenState,
        batch_id: u64,
        save_mode: SaveMode,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        properties: CommitProperties,
    ) -> std::result::Result<DeltaTable, DeltaSinkError> {
        let creating = state.table.version().is_none();
        let input = if batches.is_empty() {
            vec![RecordBatch::new_empty(Arc::clone(schema))]
        } else {
            batches
        };
        let mut builder = state
            .table
            .clone()
            .write(input)
            .with_save_mode(save_mode)
            .with_commit_properties(properties);
        if creating {
            if !self.partition_by.is_empty() {
                builder = builder.with_partition_columns(self.partition_by.clone());
            }
            if let Some(interval) = self.checkpoint_interval {
                builder = builder.with_configuration([(
                    CHECKPOINT_INTERVAL_PROPERTY,
                    Some(interval.to_string()),
                )]);
            }
        }
        let doing = if creating {
            format!("batch {batch_id}: creating")
        } else {
            format!("batch {batch_id}: writing to")
        };
        builder
            .await
            .map_err(|e| DeltaSinkError::delta(&state.url, doing, e))
    }

    /// MERGEs `batches` into the table on the merge keys: matching rows are
    /// replaced, the others inserted; commits with `properties`.
    async fn merge(
        &self,
        state: &OpenState,
        batch_id: u64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        properties: CommitProperties,
    ) -> std::result::Result<DeltaTable, DeltaSinkError> {
        let failed =
            |e| DeltaSinkError::delta(&state.url, format!("batch {batch_id}: merging into"), e);
        let source = SessionContext::new()
            .read_batches(batches)
            .map_err(|e| failed(DeltaTableError::from(e)))?;
        let predicate = self
            .merge_keys
            .iter()
            .map(|k| qualified("target", k).eq(qualified("source", k)))
            .reduce(Expr::and)
            .expect("update mode has merge keys (checked at open)");
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let values: Vec<&String> = columns
            .iter()
            .filter(|c| !self.merge_keys.contains(c))
            .collect();
        let mut builder = state
            .table
            .clone()
            .merge(source, predicate)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_commit_properties(properties);
        if !values.is_empty() {
            builder = builder
                .when_matched_update(|mut update| {
                    for column in &values {
                        update = update.update(
                            Column::new_unqualified(column.as_str()),
                            qualified("source", column),
                        );
                    }
                    update
                })
                .map_err(failed)?;
        }
        builder = builder
            .when_not_matched_insert(|mut insert| {
                for column in &columns {
                    insert = insert.set(
                        Column::new_unqualified(column.as_str()),
                        qualified("source", column),
                    );
                }
                insert
            })
            .map_err(failed)?;
        let (table, _metrics) = builder.await.map_err(failed)?;
        Ok(table)
    }

    /// The batch's commit: what its output mode writes, as one version
    /// carrying the transaction `properties`.
    async fn commit(
        &self,
        state: &OpenState,
        batch_id: u64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        properties: CommitProperties,
    ) -> std::result::Result<DeltaTable, DeltaSinkError> {
        match state.mode {
            OutputMode::Append if self.merge_keys.is_empty() => {
                self.write(
                    state,
                    batch_id,
                    SaveMode::Append,
                    schema,
                    batches,
                    properties,
                )
                .await
            }
            OutputMode::Complete => {
                self.write(
                    state,
                    batch_id,
                    SaveMode::Overwrite,
                    schema,
                    batches,
                    properties,
                )
                .await
            }
            OutputMode::Update | OutputMode::Append => {
                let before = state.table.version();
                if before.is_none() || batches.is_empty() {
                    // Into no table, a MERGE is an insert; with no rows,
                    // the version holds only the transaction.
                    return self
                        .write(
                            state,
                            batch_id,
                            SaveMode::Append,
                            schema,
                            batches,
                            properties,
                        )
                        .await;
                }
                let merged = self
                    .merge(state, batch_id, schema, batches, properties.clone())
                    .await?;
                if merged.version() == before {
                    // A MERGE that changes nothing commits nothing; the
                    // batch still needs its version.
                    let state = OpenState {
                        table: merged,
                        url: state.url.clone(),
                        app_id: state.app_id.clone(),
                        mode: state.mode,
                        schema: Arc::clone(&state.schema),
                        fast: None,
                        #[cfg(feature = "failpoints")]
                        batch: Arc::clone(&state.batch),
                    };
                    return self
                        .write(
                            &state,
                            batch_id,
                            SaveMode::Append,
                            schema,
                            Vec::new(),
                            properties,
                        )
                        .await;
                }
                Ok(merged)
            }
        }
    }

    /// The latest batch id committed by the query `app_id`, read from the
    /// table (after catching up with versions written since the sink last
    /// looked); `None` if there is no table or no such transaction.
    async fn committed_batch(
        state: &mut OpenState,
    ) -> std::result::Result<Option<i64>, DeltaSinkError> {
        let refreshed = if state.table.version().is_some() {
            state.table.update_state().await
        } else {
            state.table.load().await
        };
        match refreshed {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => return Ok(None),
            Err(e) => return Err(DeltaSinkError::delta(&state.url, "reading", e)),
        }
        let snapshot = state
            .table
            .snapshot()
            .map_err(|e| DeltaSinkError::delta(&state.url, "reading", e))?;
        snapshot
            .transaction_version(state.table.log_store().as_ref(), &state.app_id)
            .await
            .map_err(|e| DeltaSinkError::delta(&state.url, "reading the transactions of", e))
    }

    /// Whether the sink appends plain files (append mode without merge
    /// keys), which append mode's own path does.
    fn appends(&self, mode: OutputMode) -> bool {
        mode == OutputMode::Append && self.merge_keys.is_empty()
    }

    /// Starts append mode's path on the table as loaded, if the sink
    /// appends and the path can write the table; `committed` as for
    /// [`FastAppend::start`].
    async fn start_fast(
        &self,
        state: &mut OpenState,
        committed: Option<Option<i64>>,
    ) -> std::result::Result<(), DeltaSinkError> {
        state.fast = None;
        if self.appends(state.mode)
            && state.table.version().is_some()
            && append::supports(&state.table)
        {
            state.fast =
                Some(FastAppend::start(&state.url, &state.table, &state.app_id, committed).await?);
        }
        Ok(())
    }

    /// Append mode's commit of `batches` as batch `batch_id` (the `txn`
    /// version `version`), through the `append` module's path.
    async fn append_fast(
        &self,
        state: &mut OpenState,
        batch_id: u64,
        version: i64,
        batches: Vec<RecordBatch>,
    ) -> std::result::Result<(), DeltaSinkError> {
        let url = state.url.clone();
        let log_store = state.table.log_store();
        let fast = state.fast.as_mut().expect("append mode's path is started");
        fast.tail
            .catch_up(&url, log_store.as_ref(), &state.app_id)
            .await?;
        if fast.tail.table_changed {
            // Another writer changed the table's schema, properties or
            // protocol: load the table again, and check it still fits
            // (until it does, every batch fails here).
            state
                .table
                .update_state()
                .await
                .map_err(|e| DeltaSinkError::delta(&url, "reading", e))?;
            schema::check_table(&url, &state.table, &state.schema, &self.partition_by)?;
            self.start_fast(state, None).await?;
            if state.fast.is_none() {
                let schema = Arc::clone(&state.schema);
                return self
                    .add_general(state, batch_id, version, &schema, batches)
                    .await;
            }
        }
        let fast = state.fast.as_mut().expect("append mode's path is started");
        if let Some(done) = fast.tail.committed
            && done >= version
        {
            tracing::debug!(sink = %self.description(), batch_id, committed = done, "batch already committed; skipping");
            return Ok(());
        }
        // A writer per batch (it takes the schema and partitioning from the
        // table's metadata, which the sink reloads when another writer
        // changes them).
        let mut writer = RecordBatchWriter::for_table(&state.table).map_err(|e| {
            DeltaSinkError::delta(&url, format!("batch {batch_id}: writing data files of"), e)
        })?;
        let adds = append::write_files(&url, batch_id, &mut writer, batches).await?;
        let txn = Transaction::new_with_last_update(
            &state.app_id,
            version,
            Some(chrono::Utc::now().timestamp_millis()),
        );
        let bytes = append::commit_bytes(adds, &fast.partition_by, txn, fast.tail.version)
            .map_err(|e| {
                DeltaSinkError::delta(&url, format!("batch {batch_id}: committing to"), e.into())
            })?;
        let committed = fast
            .tail
            .commit(
                &url,
                log_store.as_ref(),
                &state.app_id,
                batch_id,
                version,
                bytes,
            )
            .await?;
        tracing::debug!(sink = %self.description(), batch_id, version = committed, "batch committed");
        append::checkpoint_if_due(&url, &mut state.table, committed).await;
        Ok(())
    }

    /// The general path of a batch: read what the table's transaction
    /// says is committed, then commit through deltalake's write, overwrite
    /// or merge.
    async fn add_general(
        &self,
        state: &mut OpenState,
        batch_id: u64,
        version: i64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> std::result::Result<(), DeltaSinkError> {
        if let Some(done) = Self::committed_batch(state).await?
            && done >= version
        {
            tracing::debug!(sink = %self.description(), batch_id, committed = done, "batch already committed; skipping");
            return Ok(());
        }
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&state.app_id, version));
        let table = self
            .commit(state, batch_id, schema, batches, properties)
            .await?;
        tracing::debug!(sink = %self.description(), batch_id, version = ?table.version(), "batch committed");
        state.table = table;
        // The first batch created the table: later ones take append
        // mode's path.
        self.start_fast(state, Some(Some(version))).await
    }

    /// `add_batch`, with the sink's own error type.
    async fn add(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> std::result::Result<(), DeltaSinkError> {
        let mut guard = self.state.lock().await;
        let state = guard.as_mut().ok_or(DeltaSinkError::NotOpen { batch_id })?;
        #[cfg(feature = "failpoints")]
        state
            .batch
            .store(batch_id, std::sync::atomic::Ordering::SeqCst);
        let version = i64::try_from(batch_id).unwrap_or(i64::MAX);
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        if state.fast.is_some() {
            self.append_fast(state, batch_id, version, batches).await
        } else {
            self.add_general(state, batch_id, version, &schema, batches)
                .await
        }
    }
}

#[async_trait]
impl Sink for DeltaSink {
    /// `DeltaSink[<table URL>]`.
    fn description(&self) -> String {
        format!("DeltaSink[{}]", self.display)
    }

    async fn open(&self, ctx: &SinkContext) -> Result<()> {
        let description = self.description();
        self.check(ctx.output_mode, &ctx.schema)
            .map_err(|e| e.into_tidemill(&description))?;
        #[cfg(feature = "failpoints")]
        let batch: BatchCell = Arc::new(std::sync::atomic::AtomicU64::new(0));
        #[cfg(not(feature = "failpoints"))]
        let batch: BatchCell = ();
        let (table, url) = self
            .open_table(ctx, &batch)
            .await
            .map_err(|e| e.into_tidemill(&description))?;
        let mut state = OpenState {
            table,
            url,
            app_id: ctx.query_id.clone(),
            mode: ctx.output_mode,
            schema: Arc::clone(&ctx.schema),
            fast: None,
            #[cfg(feature = "failpoints")]
            batch,
        };
        self.start_fast(&mut state, None)
            .await
            .map_err(|e| e.into_tidemill(&description))?;
        let mut guard = self.state.try_lock().map_err(|_| self.lock_error())?;
        *guard = Some(state);
        Ok(())
    }

    async fn add_batch(
        &self,
        batch_id: u64,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<()> {
        self.add(batch_id, schema, batches)
            .await
            .map_err(|e| e.into_tidemill(&self.description()))
    }
}
