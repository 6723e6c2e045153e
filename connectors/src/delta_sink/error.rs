//! The Delta sink's errors.

use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;
use tidemill_engine::TidemillError;

/// What can go wrong in a [`DeltaSink`](super::DeltaSink). Each error names
/// the table (its URL) and, where one is at fault, the column.
///
/// The sink reports them as [`TidemillError::Sink`] (naming the sink), or,
/// for an output mode or options the sink cannot take, as
/// [`TidemillError::Unsupported`] / [`TidemillError::Config`] when the query
/// starts; a storage failure that may pass by itself is
/// [`TidemillError::Transient`], so the engine retries the batch. Outside
/// the engine they convert to [`DataFusionError::External`].
#[derive(Debug, thiserror::Error)]
pub enum DeltaSinkError {
    /// The path holds files but no Delta transaction log.
    #[error(
        "'{table}' is not a Delta table: it holds '{found}' but no _delta_log with a committed \
         version; point the sink at an empty directory or an existing Delta table"
    )]
    NotADeltaTable {
        /// The table's URL.
        table: String,
        /// A file found there that is not a Delta data file.
        found: String,
    },
    /// The location cannot be turned into a table URL.
    #[error("invalid Delta table location '{location}': {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The output has a column the existing table does not.
    #[error(
        "the output column '{column}' is not a column of the Delta table '{table}' (its columns: \
         {table_columns}); write to a new table or add the column to the table"
    )]
    ColumnNotInTable {
        /// The table's URL.
        table: String,
        /// The output's column.
        column: String,
        /// The table's columns, comma-separated.
        table_columns: String,
    },
    /// The existing table has a column the output does not.
    #[error(
        "the Delta table '{table}' has the column '{column}', which the query's output does not \
         have (its columns: {output_columns})"
    )]
    ColumnNotInOutput {
        /// The table's URL.
        table: String,
        /// The table's column.
        column: String,
        /// The output's columns, comma-separated.
        output_columns: String,
    },
    /// An output column's type differs from the table column's.
    #[error(
        "column '{column}' of the Delta table '{table}' has type {table_type}, but the query's \
         output has type {output_type} (Delta type {output_delta_type})"
    )]
    ColumnType {
        /// The table's URL.
        table: String,
        /// The column.
        column: String,
        /// The table column's Delta type.
        table_type: String,
        /// The output column's Arrow type.
        output_type: String,
        /// The output column's type as Delta would store it.
        output_delta_type: String,
    },
    /// An output column's type has no Delta equivalent.
    #[error(
        "column '{column}' of type {data_type} cannot be written to the Delta table '{table}': {reason}"
    )]
    UnsupportedType {
        /// The table's URL.
        table: String,
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
        /// Why Delta cannot hold it.
        reason: String,
    },
    /// The existing table is partitioned otherwise than the sink asks.
    #[error(
        "the Delta table '{table}' is partitioned by [{table_columns}], but the sink's \
         partition_by is [{sink_columns}]; use the table's partitioning (or none, to keep it)"
    )]
    PartitionMismatch {
        /// The table's URL.
        table: String,
        /// The table's partition columns.
        table_columns: String,
        /// The sink's partition columns.
        sink_columns: String,
    },
    /// A partition or merge-key column is not a column of the output.
    #[error(
        "{role} column '{column}' is not a column of the output (its columns: {output_columns})"
    )]
    UnknownColumn {
        /// `partition` or `merge key`.
        role: &'static str,
        /// The column named.
        column: String,
        /// The output's columns, comma-separated.
        output_columns: String,
    },
    /// A column is named twice among the partition columns or merge keys.
    #[error("{role} column '{column}' is named twice")]
    DuplicateColumn {
        /// `partition` or `merge key`.
        role: &'static str,
        /// The column.
        column: String,
    },
    /// Update mode needs the key columns its MERGE matches rows on.
    #[error("the update output mode writes a MERGE on key columns, and no merge keys are declared")]
    MergeKeysRequired,
    /// Merge keys were given for complete mode, which overwrites the table.
    #[error(
        "merge keys do not apply to the {mode} output mode, which overwrites the whole table \
         with each batch"
    )]
    MergeKeysWithoutUpdate {
        /// The query's output mode.
        mode: String,
    },
    /// A batch was given to a sink that was not opened.
    #[error("batch {batch_id} written before open")]
    NotOpen {
        /// The batch.
        batch_id: u64,
    },
    /// Another writer committed to the table while the sink was committing
    /// a batch, and its commit conflicts with the batch's (nothing of the
    /// batch is committed).
    #[error(
        "batch {batch_id}: the commit to the Delta table '{table}' conflicts with a concurrent \
         commit: {reason}"
    )]
    Conflict {
        /// The table's URL.
        table: String,
        /// The batch.
        batch_id: u64,
        /// What the other commit did.
        reason: String,
    },
    /// deltalake failed while the sink was `doing` something to the table.
    #[error("{doing} the Delta table '{table}' failed: {source}")]
    Delta {
        /// The table's URL.
        table: String,
        /// What the sink was doing, e.g. `batch 3: committing to`.
        doing: String,
        /// deltalake's error.
        #[source]
        source: DeltaTableError,
    },
}

impl DeltaSinkError {
    /// A failure of deltalake while `doing` something to `table`.
    pub(crate) fn delta(table: &str, doing: impl Into<String>, source: DeltaTableError) -> Self {
        Self::Delta {
            table: table.to_string(),
            doing: doing.into(),
            source,
        }
    }

    /// Whether the failure may pass by itself (storage I/O), so that trying the batch again makes sense.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Delta { source, .. } => matches!(
                source,
                DeltaTableError::ObjectStore { .. } | DeltaTableError::Io { .. }
            ),
            _ => false,
        }
    }

    /// The error as the engine reports it for the sink `sink` (its
    /// description).
    pub fn into_tidemill(self, sink: &str) -> TidemillError {
        match self {
            Self::MergeKeysRequired => TidemillError::Unsupported {
                operator: sink.to_string(),
                reason: "cannot write the update output mode without merge keys (update mode \
                         writes a MERGE that replaces the rows whose keys the batch holds)"
                    .to_string(),
                fix: "declare the key columns: .merge_on([\"key\"]) in Rust, merge_keys = 'key' \
                      in SQL (for an aggregation: its group keys), or use append or complete mode"
                    .to_string(),
            },
            Self::MergeKeysWithoutUpdate { .. } => {
                TidemillError::Config(format!("sink {sink}: {self}"))
            }
            other => {
                let transient = other.is_transient();
                let error = TidemillError::sink(sink, other.to_string());
                if transient {
                    TidemillError::Transient(Box::new(error))
                } else {
                    error
                }
            }
        }
    }
}

impl From<DeltaSinkError> for DataFusionError {
    fn from(error: DeltaSinkError) -> Self {
        DataFusionError::External(Box::new(error))
    }
}
