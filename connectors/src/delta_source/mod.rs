//! A stream of the rows each new version of a Delta Lake table adds, on
//! the `deltalake` crate (the `delta` feature), modelled on Spark's Delta
//! streaming source.
//!
//! See [`DeltaSource`] for what is streamed and the options. The modules:
//! `offset` (positions in the table's stream of files, as offsets), `log`
//! (the transaction log: versions, commits, snapshots), `stream` (a query's
//! stream: admission under read limits, replay of a recorded range),
//! `reader` (data files as the stream's rows, partition columns restored),
//! `schema` (the stream's columns against a table schema), `data_loss`
//! (what `fail_on_data_loss = false` skipped), `error`
//! ([`DeltaSourceError`]) and `connector` (`connector = 'delta'` in a
//! pipeline's `CREATE STREAM`).

mod connector;
mod data_loss;
mod error;
mod log;
mod offset;
mod reader;
mod schema;
mod stream;
#[cfg(test)]
mod tests;

pub(crate) use connector::DeltaSourceConnector;
pub use data_loss::DataLossCounts;
pub use error::DeltaSourceError;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use tidemill_engine::{
    Location, Result, Source, SourceContext, SourceStream, StorageOptions, TidemillError,
};

use self::data_loss::DataLoss;
use self::log::{Snapshot, TableLog, TableMeta};
use self::reader::{FileReader, FilesPartition};
use self::stream::{DeltaStream, StreamOptions};

/// Spark's default `maxFilesPerTrigger`: the files one micro-batch admits
/// when neither read limit is given.
pub const DEFAULT_MAX_FILES_PER_TRIGGER: u64 = 1000;

/// Where a new query over a [`DeltaSource`] starts reading. A query that
/// restarts on its checkpoint goes on from where it stopped, whatever
/// this says (as in Spark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeltaStart {
    /// The table as it is when the query first runs (every row of its
    /// latest version), then the rows each later version adds. Spark's
    /// default.
    #[default]
    Snapshot,
    /// Only the rows of versions committed after the query first runs.
    Latest,
    /// The rows each version from this one on adds (not a snapshot).
    Version(u64),
    /// The rows each version committed at or after this time adds (the
    /// time of a commit is its log file's modification time, as Spark
    /// takes it); if none is that late, the next version's.
    Timestamp(DateTime<Utc>),
}

/// How versions that remove or rewrite rows (DELETE, UPDATE, MERGE, an
/// overwrite: `remove` actions with `dataChange = true`) are streamed.
/// By default such a version is an error naming the table and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ChangeCommits {
    /// Spark's `skipChangeCommits`: skip such versions entirely.
    pub skip_change_commits: bool,
    /// Spark's `ignoreChanges`: stream the files such versions add (the
    /// rewritten rows come again), ignore what they remove.
    pub ignore_changes: bool,
    /// Spark's `ignoreDeletes`: skip versions that only remove files.
    pub ignore_deletes: bool,
}

/// A stream of the rows each new version of a [Delta Lake](https://delta.io)
/// table adds, as Spark's Delta streaming source reads them; the same
/// table read whole as a batch by [`Source::read_batch`].
///
/// # What is streamed
///
/// By default the query first reads the table as it is when it first runs
/// (its latest version, every file), then, version by version, the files
/// each later commit adds with `dataChange = true` ([`DeltaStart`]
/// says otherwise). So:
///
/// - **Appends** (a `WRITE` in append mode, a streaming append, the Delta
///   sink's batches) are streamed.
/// - **Versions that add no data** — OPTIMIZE and other compactions
///   (whose files are added with `dataChange = false`), property changes,
///   the Delta sink's versions of empty batches — are skipped silently.
/// - **Versions that remove or rewrite rows** (DELETE, UPDATE, MERGE, an
///   overwrite) are an error naming the table and the version, unless
///   [`DeltaSource::skip_change_commits`] skips them,
///   [`DeltaSource::ignore_changes`] streams the files they add (rewritten
///   rows come again), or [`DeltaSource::ignore_deletes`] skips those that
///   only delete.
/// - **Partition columns** are columns of the stream, filled from each
///   file's partition values in the log.
///
/// # Offsets
///
/// An offset is a position in the table's sequence of files (Spark's
/// `(reservoirVersion, index, isStartingVersion)`), with the table's id:
/// `{"source_version": 1, "table_id": "…", "version": 12, "index": 0,
/// "is_starting_version": false}`: every file of the versions before 12,
/// none of version 12. A version's files are the files its commit adds, in
/// the commit's order; the starting snapshot's, its files by path. A range
/// therefore names the same files on every replay, and a restarted query
/// goes on at the next version. Where the stream started is kept in the
/// source's checkpoint directory (`metadata`), written before the first
/// offset is handed out.
///
/// # Read limits
///
/// [`DeltaSource::max_files_per_trigger`] (1000 by default, as Spark) and
/// [`DeltaSource::max_bytes_per_trigger`] (Spark's `maxBytesPerTrigger`: a
/// soft limit, the file that crosses it is admitted) bound one batch; a
/// batch may end inside a version. With only a byte limit, the file count
/// is not bounded. `Trigger::Once` reads everything available.
///
/// # Data loss
///
/// A version the stream still has to read whose log file is gone (log
/// cleanup), or a data file that is gone (VACUUM), is an error naming the
/// table, the version and the file. With
/// [`DeltaSource::fail_on_data_loss`] off, what is gone is skipped,
/// counted ([`DeltaSource::data_loss`]) and logged as a warning.
///
/// # Schema
///
/// The declared columns ([`DeltaSource::schema`], which must be columns of
/// the table whose types read without loss), or the table's columns when
/// the stream is defined. A version that changes the schema so that the
/// stream's columns no longer read (a column dropped, renamed or of
/// another type, other partition columns) is an error naming the table and
/// version; a column added later is not read by the stream. A file that
/// lacks a nullable column (written before it was added) reads it as
/// nulls. Column mapping and deletion vectors are refused with an error
/// saying so.
///
/// # Storage
///
/// The table is read through the session's object store for its location
/// (a local path, `file://`, `memory://` or a registered store), the log
/// and data files alike; snapshots are loaded by deltalake over the same
/// store.
///
/// # Example
///
/// ```no_run
/// use tidemill_connectors::{DeltaSource, DeltaStart};
///
/// // A stream of the table, from its current contents on, 10 files a batch.
/// let trades = DeltaSource::new("lake/bronze/trades").max_files_per_trigger(10);
/// // Only what versions 42 and later append; versions that delete rows are skipped.
/// let changes = DeltaSource::new("lake/bronze/trades")
///     .starting_position(DeltaStart::Version(42))
///     .skip_change_commits(true);
/// # let _ = (trades, changes);
/// ```
#[derive(Debug, Clone)]
pub struct DeltaSource {
    /// The location as the user gave it.
    location: String,
    /// The location as a URL, for descriptions.
    display: String,
    schema: Option<SchemaRef>,
    starting: DeltaStart,
    max_files_per_trigger: Option<u64>,
    max_bytes_per_trigger: Option<u64>,
    fail_on_data_loss: bool,
    changes: ChangeCommits,
    data_loss: Arc<DataLoss>,
    storage: StorageOptions,
}

impl DeltaSource {
    /// A source reading the Delta table at `location` (a local path, a
    /// `file://` URL, or a URL of an object store registered in the
    /// session).
    pub fn new(location: impl Into<String>) -> Self {
        let location = location.into();
        let display = match ListingTableUrl::parse(&location) {
            Ok(url) => url.as_str().trim_end_matches('/').to_string(),
            Err(_) => location.clone(),
        };
        Self {
            location,
            display,
            schema: None,
            starting: DeltaStart::Snapshot,
            max_files_per_trigger: None,
            max_bytes_per_trigger: None,
            fail_on_data_loss: true,
            changes: ChangeCommits::default(),
            data_loss: Arc::default(),
            storage: StorageOptions::default(),
        }
    }

    /// Settings of the S3 store an `s3://bucket/path` table is read from,
    /// over the environment's `AWS_*` variables (see
    /// [`tidemill_engine::storage`]); none by default.
    pub fn storage_options(mut self, options: StorageOptions) -> Self {
        self.storage = options;
        self
    }

    /// Reads these columns instead of all the table's: each must be a
    /// column of the table whose values read as its type without loss.
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Where a new query starts (default [`DeltaStart::Snapshot`]).
    pub fn starting_position(mut self, starting: DeltaStart) -> Self {
        self.starting = starting;
        self
    }

    /// Admits at most `n` files into one micro-batch (default
    /// [`DEFAULT_MAX_FILES_PER_TRIGGER`] unless a byte limit is given).
    /// `n` must be at least 1.
    pub fn max_files_per_trigger(mut self, n: u64) -> Self {
        self.max_files_per_trigger = Some(n);
        self
    }

    /// Admits files into one micro-batch until they hold at least `bytes`
    /// bytes (a soft limit: the file that crosses it is admitted, so a
    /// batch always makes progress). `bytes` must be at least 1.
    pub fn max_bytes_per_trigger(mut self, bytes: u64) -> Self {
        self.max_bytes_per_trigger = Some(bytes);
        self
    }

    /// Whether a version or data file that is gone before the stream read
    /// it is an error (default `true`); if not, it is skipped and counted.
    pub fn fail_on_data_loss(mut self, fail: bool) -> Self {
        self.fail_on_data_loss = fail;
        self
    }

    /// Skips versions that remove or rewrite rows (DELETE, UPDATE, MERGE,
    /// overwrite) entirely, instead of failing on them: Spark's
    /// `skipChangeCommits`. Takes precedence over
    /// [`DeltaSource::ignore_changes`].
    pub fn skip_change_commits(mut self, skip: bool) -> Self {
        self.changes.skip_change_commits = skip;
        self
    }

    /// Streams the files that versions removing or rewriting rows add, and
    /// ignores what they remove (rows an UPDATE or MERGE rewrote are
    /// streamed again, deletes are not seen): Spark's `ignoreChanges`.
    pub fn ignore_changes(mut self, ignore: bool) -> Self {
        self.changes.ignore_changes = ignore;
        self
    }

    /// Skips versions that only remove files (a DELETE of whole files, a
    /// partition dropped), instead of failing on them: Spark's
    /// `ignoreDeletes`. Versions that also add files still fail.
    pub fn ignore_deletes(mut self, ignore: bool) -> Self {
        self.changes.ignore_deletes = ignore;
        self
    }

    /// What queries over this source skipped because it was gone (with
    /// [`DeltaSource::fail_on_data_loss`] off): versions, files and their
    /// rows, each counted once.
    pub fn data_loss(&self) -> DataLossCounts {
        self.data_loss.counts()
    }

    /// The location as the user gave it.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn fail(&self, error: DeltaSourceError) -> TidemillError {
        error.into_tidemill(&self.description())
    }

    /// The table's log, through the session's object store.
    fn table_log(&self, session: &SessionContext) -> Result<TableLog> {
        let location =
            Location::resolve_with(&self.location, &self.storage, &session.runtime_env())?;
        #[cfg(feature = "s3")]
        crate::delta_s3::register_s3();
        Ok(TableLog::new(
            Arc::clone(location.store()),
            location.path().clone(),
            location.url().clone(),
        ))
    }

    /// Refuses a table the source cannot read, or whose columns do not
    /// fit the declared ones.
    fn check_table(
        &self,
        display: &str,
        meta: &TableMeta,
    ) -> std::result::Result<(), DeltaSourceError> {
        if let Some(mode) = &meta.column_mapping {
            return Err(DeltaSourceError::Unsupported {
                table: display.to_string(),
                feature: format!("column mapping (delta.columnMapping.mode = '{mode}')"),
            });
        }
        if let Some(declared) = &self.schema
            && let Some(detail) = schema::misfit(declared, &meta.partition_columns, meta, false)
        {
            return Err(DeltaSourceError::DeclaredSchema {
                table: display.to_string(),
                detail,
            });
        }
        Ok(())
    }

    /// The table's latest snapshot, checked.
    async fn latest(&self, log: &TableLog) -> std::result::Result<Snapshot, DeltaSourceError> {
        let snapshot = log.snapshot(None).await?;
        self.check_table(log.display(), &snapshot.meta)?;
        Ok(snapshot)
    }

    /// The read limits as a stream uses them.
    fn stream_options(&self) -> StreamOptions {
        let max_files = match (self.max_files_per_trigger, self.max_bytes_per_trigger) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_MAX_FILES_PER_TRIGGER),
        };
        StreamOptions {
            starting: self.starting,
            max_files,
            max_bytes: self.max_bytes_per_trigger,
            fail_on_data_loss: self.fail_on_data_loss,
            changes: self.changes,
        }
    }
}

#[async_trait]
impl Source for DeltaSource {
    /// `DeltaSource[<table URL>]`.
    fn description(&self) -> String {
        format!("DeltaSource[{}]", self.display)
    }

    /// The declared columns, or the table's latest columns (partition
    /// columns included, in the table's order).
    async fn schema(&self, session: &SessionContext) -> Result<SchemaRef> {
        if let Some(schema) = &self.schema {
            return Ok(Arc::clone(schema));
        }
        let log = self.table_log(session)?;
        let snapshot = self.latest(&log).await.map_err(|e| self.fail(e))?;
        Ok(snapshot.meta.schema)
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn SourceStream>> {
        for (name, value) in [
            ("max_files_per_trigger", self.max_files_per_trigger),
            ("max_bytes_per_trigger", self.max_bytes_per_trigger),
        ] {
            if value == Some(0) {
                return Err(TidemillError::Config(format!(
                    "{}: {name} must be at least 1",
                    self.description()
                )));
            }
        }
        let description = self.description();
        let log = self.table_log(&ctx.session)?;
        let snapshot = self.latest(&log).await.map_err(|e| self.fail(e))?;
        // The stream's columns as the table has them now.
        if let Some(detail) = schema::misfit(
            &ctx.schema,
            &snapshot.meta.partition_columns,
            &snapshot.meta,
            false,
        ) {
            return Err(self.fail(DeltaSourceError::SchemaChanged {
                table: log.display().to_string(),
                version: snapshot.version,
                detail,
            }));
        }
        let reader = FileReader::new(
            description.clone(),
            log.display().to_string(),
            Arc::clone(log.store()),
            Arc::clone(&ctx.schema),
            snapshot.meta.partition_columns.clone(),
        );
        let mut stream = DeltaStream {
            description,
            reader,
            options: self.stream_options(),
            table_id: snapshot.meta.id.clone(),
            partition_columns: snapshot.meta.partition_columns.clone(),
            open_version: snapshot.version,
            checkpoint: ctx.checkpoint,
            initial: None,
            initial_logged: false,
            snapshot: Some((snapshot.version, Arc::new(snapshot.files))),
            versions: BTreeMap::new(),
            latest: snapshot.version,
            available_now_cap: None,
            data_loss: Arc::clone(&self.data_loss),
            last_end: None,
            log,
        };
        stream.load_checkpoint().await.map_err(|e| self.fail(e))?;
        Ok(Box::new(stream))
    }

    /// The table's latest version, read whole through the stream's reader:
    /// the same columns (partition columns included), the same decoding
    /// and errors; files that are gone are an error, or skipped and
    /// counted without `fail_on_data_loss`. The read limits do not apply.
    async fn read_batch(&self, session: &SessionContext) -> Result<DataFrame> {
        let log = self.table_log(session)?;
        let snapshot = self.latest(&log).await.map_err(|e| self.fail(e))?;
        let schema = match &self.schema {
            Some(declared) => Arc::clone(declared),
            None => Arc::clone(&snapshot.meta.schema),
        };
        let reader = FileReader::new(
            self.description(),
            log.display().to_string(),
            Arc::clone(log.store()),
            Arc::clone(&schema),
            snapshot.meta.partition_columns.clone(),
        );
        let files = data_loss::keep_existing(
            &log,
            snapshot.files,
            self.fail_on_data_loss,
            &self.data_loss,
            &self.description(),
        )
        .await
        .map_err(|e| self.fail(e))?;
        let partitions = session.state().config().target_partitions().max(1);
        let mut scans: Vec<Arc<dyn PartitionStream>> = reader.partitions(files, partitions);
        if scans.is_empty() {
            scans.push(Arc::new(FilesPartition::new(reader, Vec::new())));
        }
        let context = || format!("{}: bounded read", self.description());
        let table = StreamingTable::try_new(schema, scans)
            .map_err(|e| TidemillError::datafusion(context(), e))?;
        session
            .read_table(Arc::new(table))
            .map_err(|e| TidemillError::datafusion(context(), e))
    }
}
