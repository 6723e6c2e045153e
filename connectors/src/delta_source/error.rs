//! The Delta source's errors.

use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;
use tidemill_engine::TidemillError;

/// Why a [`DeltaSource`](super::DeltaSource) cannot read its table.
///
/// Every variant names the table (its URL) and, where it applies, the table
/// version and the file at fault. The engine sees these as
/// [`TidemillError::Source`] errors (a storage failure that may pass by
/// itself as [`TidemillError::Transient`], so the engine retries); outside
/// the engine they convert to [`DataFusionError::External`].
#[derive(Debug, thiserror::Error)]
pub enum DeltaSourceError {
    /// The location cannot be turned into a table URL.
    #[error("invalid Delta table location '{location}': {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The location holds no Delta table.
    #[error("'{table}' is not a Delta table: {reason}")]
    NotADeltaTable {
        /// The table's URL.
        table: String,
        /// What was found instead.
        reason: String,
    },
    /// A version removes or rewrites rows (a DELETE, UPDATE, MERGE or
    /// overwrite), which a stream of appended rows cannot follow.
    #[error(
        "version {version} of the Delta table '{table}' removes or rewrites rows \
         ({operation}: it removes '{file}' with dataChange = true); the delta source streams only \
         rows that versions append. Set skip_change_commits = true to skip such versions, \
         ignore_changes = true to stream the files they add (rewritten rows are streamed again), \
         or ignore_deletes = true to skip versions that only remove files"
    )]
    ChangeCommit {
        /// The table's URL.
        table: String,
        /// The version.
        version: u64,
        /// The version's operation (from its `commitInfo`), or `a commit`.
        operation: String,
        /// A file the version removes.
        file: String,
    },
    /// A version the stream has not read yet, or one of its data files, is
    /// gone: the log was cleaned up, or the table vacuumed.
    #[error(
        "data loss in the Delta table '{table}': version {version}'s {what} '{file}' no longer \
         exists ({reason}); set fail_on_data_loss = false to skip what is gone and go on"
    )]
    DataLoss {
        /// The table's URL.
        table: String,
        /// The version.
        version: u64,
        /// `log file` or `data file`.
        what: &'static str,
        /// The file that is gone, relative to the table.
        file: String,
        /// What probably removed it.
        reason: String,
    },
    /// A version's `metaData` changes the schema in a way the stream cannot
    /// read with the columns it started with.
    #[error(
        "version {version} of the Delta table '{table}' changes the schema incompatibly: {detail}; \
         the stream reads the columns it started with. Restart the query with a new checkpoint \
         to read the new schema"
    )]
    SchemaChanged {
        /// The table's URL.
        table: String,
        /// The version.
        version: u64,
        /// What changed.
        detail: String,
    },
    /// The table uses a Delta feature the source cannot read.
    #[error("the Delta table '{table}' uses {feature}, which the delta source cannot read")]
    Unsupported {
        /// The table's URL.
        table: String,
        /// The feature, with where it was found.
        feature: String,
    },
    /// `starting_version` names a version after the table's latest.
    #[error(
        "starting_version {requested} of the Delta table '{table}' does not exist: its latest \
         version is {latest}"
    )]
    StartingVersion {
        /// The table's URL.
        table: String,
        /// The version asked for.
        requested: u64,
        /// The table's latest version.
        latest: u64,
    },
    /// The declared columns do not fit the table.
    #[error("the declared columns do not fit the Delta table '{table}': {detail}")]
    DeclaredSchema {
        /// The table's URL.
        table: String,
        /// Which column does not fit, and why.
        detail: String,
    },
    /// An offset the engine handed back is not one this source makes.
    #[error("invalid offset {offset} for the Delta table '{table}': {reason}")]
    InvalidOffset {
        /// The table's URL.
        table: String,
        /// The offset, as JSON.
        offset: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The table at the location is not the one the query's checkpoint (or
    /// an earlier version) knows: it was deleted and created again.
    #[error(
        "the Delta table '{table}' was replaced: {detail} (its id was {expected}, now {found}); \
         start the query with a new checkpoint to read the new table"
    )]
    TableReplaced {
        /// The table's URL.
        table: String,
        /// Where the new id was seen.
        detail: String,
        /// The id the stream knows.
        expected: String,
        /// The id found.
        found: String,
    },
    /// A log file is not valid Delta JSON.
    #[error("version {version} of the Delta table '{table}': invalid log file '{file}': {reason}")]
    CorruptLog {
        /// The table's URL.
        table: String,
        /// The version.
        version: u64,
        /// The log file.
        file: String,
        /// The parse error.
        reason: String,
    },
    /// A data file cannot be read as the stream's columns.
    #[error("Delta table '{table}', version {version}: data file '{file}': {reason}")]
    DataFile {
        /// The table's URL.
        table: String,
        /// The version whose file it is.
        version: u64,
        /// The file, relative to the table.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The object store failed while the source was `doing` something.
    #[error("{doing} of the Delta table '{table}' failed: {source}")]
    Storage {
        /// The table's URL.
        table: String,
        /// What the source was doing, e.g. `listing the log`.
        doing: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// deltalake failed while the source was `doing` something.
    #[error("{doing} of the Delta table '{table}' failed: {source}")]
    Delta {
        /// The table's URL.
        table: String,
        /// What the source was doing, e.g. `loading version 3`.
        doing: String,
        /// deltalake's error.
        #[source]
        source: DeltaTableError,
    },
    /// The source's own checkpoint files do not fit this source.
    #[error("the checkpoint of the Delta source for '{table}' cannot be used: {reason}")]
    Checkpoint {
        /// The table's URL.
        table: String,
        /// What does not fit.
        reason: String,
    },
}

impl DeltaSourceError {
    /// A failure of the object store while `doing` something to `table`.
    pub(crate) fn storage(
        table: &str,
        doing: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        Self::Storage {
            table: table.to_string(),
            doing: doing.into(),
            source,
        }
    }

    /// A failure of deltalake while `doing` something to `table`.
    pub(crate) fn delta(table: &str, doing: impl Into<String>, source: DeltaTableError) -> Self {
        Self::Delta {
            table: table.to_string(),
            doing: doing.into(),
            source,
        }
    }

    /// Whether the failure may pass by itself (storage I/O), so that
    /// trying again makes sense.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Storage { source, .. } => TidemillError::is_transient_store_error(source),
            Self::Delta { source, .. } => match source {
                DeltaTableError::ObjectStore { source } => {
                    TidemillError::is_transient_store_error(source)
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// The error as the engine reports it for the source `source` (its
    /// description).
    pub fn into_tidemill(self, source: &str) -> TidemillError {
        let transient = self.is_transient();
        let error = TidemillError::source(source, self.to_string());
        if transient {
            TidemillError::transient(error)
        } else {
            error
        }
    }
}

impl From<DeltaSourceError> for DataFusionError {
    fn from(error: DeltaSourceError) -> Self {
        DataFusionError::External(Box::new(error))
    }
}
