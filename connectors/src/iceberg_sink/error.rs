//! The Iceberg sink's errors.

use datafusion::error::DataFusionError;
use tidemill_engine::TidemillError;

/// What can go wrong in an [`IcebergSink`](super::IcebergSink). Each error
/// names the table and, where one is at fault, the column.
///
/// The sink reports them as [`TidemillError::Sink`] (naming the sink), or,
/// for an output mode or options the sink cannot take, as
/// [`TidemillError::Unsupported`] / [`TidemillError::Config`] when the
/// query starts; a storage failure that may pass by itself is
/// [`TidemillError::Transient`], so the engine retries the batch. Outside
/// the engine they convert to [`DataFusionError::External`].
#[derive(Debug, thiserror::Error)]
pub enum IcebergSinkError {
    /// The path holds files but no Iceberg table metadata.
    #[error(
        "'{table}' is not an Iceberg table: it holds '{found}' but no metadata/v<N>.metadata.json; \
         point the sink at an empty directory or an Iceberg table it wrote"
    )]
    NotAnIcebergTable {
        /// The table's location.
        table: String,
        /// A file found there that is not part of an Iceberg table.
        found: String,
    },
    /// The location cannot be used as a table location.
    #[error("invalid Iceberg table location '{location}': {reason}")]
    InvalidLocation {
        /// The location as given.
        location: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The output has a column the existing table does not.
    #[error(
        "the output column '{column}' is not a column of the Iceberg table '{table}' (its \
         columns: {table_columns}); write to a new table or add the column to the table"
    )]
    ColumnNotInTable {
        /// The table.
        table: String,
        /// The output's column.
        column: String,
        /// The table's columns, comma-separated.
        table_columns: String,
    },
    /// The existing table has a column the output does not.
    #[error(
        "the Iceberg table '{table}' has the column '{column}', which the query's output does \
         not have (its columns: {output_columns})"
    )]
    ColumnNotInOutput {
        /// The table.
        table: String,
        /// The table's column.
        column: String,
        /// The output's columns, comma-separated.
        output_columns: String,
    },
    /// An output column's type differs from the table column's.
    #[error(
        "column '{column}' of the Iceberg table '{table}' has type {table_type}, but the query's \
         output has type {output_type} (Iceberg type {output_iceberg_type})"
    )]
    ColumnType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The table column's Iceberg type.
        table_type: String,
        /// The output column's Arrow type.
        output_type: String,
        /// The output column's type as Iceberg would store it.
        output_iceberg_type: String,
    },
    /// A required (non-nullable) table column that the output may fill
    /// with nulls.
    #[error(
        "column '{column}' of the Iceberg table '{table}' is required (not null), but the \
         query's output column may hold nulls"
    )]
    ColumnNullable {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An output column's type has no Iceberg equivalent the sink writes.
    #[error(
        "column '{column}' of type {data_type} cannot be written to the Iceberg table '{table}': \
         {reason}"
    )]
    UnsupportedType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
        /// Why the sink cannot write it.
        reason: String,
    },
    /// The existing table is partitioned otherwise than the sink asks, or
    /// by something else than identity partitions.
    #[error(
        "the Iceberg table '{table}' is partitioned by [{table_spec}], but the sink's \
         partition_by is [{sink_columns}]; use the table's partition columns (or none, to keep \
         them)"
    )]
    PartitionMismatch {
        /// The table.
        table: String,
        /// The table's partition spec, as `transform(column)`s.
        table_spec: String,
        /// The sink's partition columns.
        sink_columns: String,
    },
    /// A partition column is not a column of the output.
    #[error(
        "partition column '{column}' is not a column of the output (its columns: {output_columns})"
    )]
    UnknownColumn {
        /// The column named.
        column: String,
        /// The output's columns, comma-separated.
        output_columns: String,
    },
    /// A column is named twice among the partition columns.
    #[error("partition column '{column}' is named twice")]
    DuplicateColumn {
        /// The column.
        column: String,
    },
    /// An output mode the sink cannot write.
    #[error("the Iceberg sink cannot write the {mode} output mode: {reason}")]
    UnsupportedMode {
        /// The mode.
        mode: String,
        /// Why.
        reason: String,
    },
    /// A batch was given to a sink that was not opened.
    #[error("batch {batch_id} written before open")]
    NotOpen {
        /// The batch.
        batch_id: u64,
    },
    /// The table already holds a later batch of this query than the one
    /// being committed, by a commit that raced the sink's (two runs of one
    /// query); nothing of the batch is committed.
    #[error(
        "batch {batch_id}: the Iceberg table '{table}' already holds batch {committed} of the \
         query {query_id} (committed by another run of the same query); nothing was committed"
    )]
    AlreadyCommitted {
        /// The table.
        table: String,
        /// The query.
        query_id: String,
        /// The batch being committed.
        batch_id: u64,
        /// The query's highest batch in the table.
        committed: i64,
    },
    /// Writing a data file failed.
    #[error("{doing} the Iceberg table '{table}' failed: {source}")]
    Parquet {
        /// The table.
        table: String,
        /// What the sink was doing.
        doing: String,
        /// The parquet writer's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The object store failed.
    #[error("{doing} the Iceberg table '{table}' failed: {source}")]
    Store {
        /// The table.
        table: String,
        /// What the sink was doing.
        doing: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Arrow failed (a cast or a split of the rows by partition).
    #[error("{doing} the Iceberg table '{table}' failed: {source}")]
    Arrow {
        /// The table.
        table: String,
        /// What the sink was doing.
        doing: String,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The `iceberg` crate (or the catalog) failed while the sink was
    /// `doing` something to the table.
    #[error("{doing} the Iceberg table '{table}' failed: {source}")]
    Iceberg {
        /// The table.
        table: String,
        /// What the sink was doing, e.g. `batch 3: committing to`.
        doing: String,
        /// iceberg's error.
        #[source]
        source: iceberg::Error,
    },
}

impl IcebergSinkError {
    /// A failure of the `iceberg` crate while `doing` something to `table`.
    pub(crate) fn iceberg(table: &str, doing: impl Into<String>, source: iceberg::Error) -> Self {
        Self::Iceberg {
            table: table.to_string(),
            doing: doing.into(),
            source,
        }
    }

    /// A failure of the object store while `doing` something to `table`.
    pub(crate) fn store(
        table: &str,
        doing: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        Self::Store {
            table: table.to_string(),
            doing: doing.into(),
            source,
        }
    }

    /// Whether the failure may pass by itself (storage I/O, a lost commit
    /// race), so that trying the batch again makes sense.
    /// An `iceberg` error counts as transient when it is retryable, a lost
    /// commit race, or caused by a transient object store failure (the
    /// sink's file I/O and catalog keep the store's error as the source) or
    /// a connection to a REST catalog that failed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store { source, .. } => store_error_is_transient(source),
            Self::Iceberg { source, .. } => {
                source.retryable()
                    || source.kind() == iceberg::ErrorKind::CatalogCommitConflicts
                    || std::iter::successors(std::error::Error::source(source), |e| e.source())
                        .any(cause_is_transient)
            }
            _ => false,
        }
    }

    /// The error as the engine reports it for the sink `sink` (its
    /// description).
    pub fn into_tidemill(self, sink: &str) -> TidemillError {
        match self {
            Self::UnsupportedMode { mode, reason } => TidemillError::Unsupported {
                operator: sink.to_string(),
                reason: format!("cannot write the {mode} output mode: {reason}"),
                fix: "use the append output mode (or a Delta sink, which writes complete and \
                      update modes)"
                    .to_string(),
            },
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

/// Whether a cause of an `iceberg` error is a transient object store or
/// connection failure.
fn cause_is_transient(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause
        .downcast_ref::<object_store::Error>()
        .is_some_and(store_error_is_transient)
        || cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(io_error_is_transient)
}

/// Whether an I/O failure under an `iceberg` error (a REST catalog's HTTP
/// client reaching the catalog) may pass by itself: a connection refused,
/// reset, aborted or timed out.
fn io_error_is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::BrokenPipe
            | ErrorKind::TimedOut
            | ErrorKind::UnexpectedEof
            | ErrorKind::Interrupted
    )
}

/// Whether an object store failure may pass by itself: any but a request
/// the store cannot serve, a bad path, or a missing object or bucket.
fn store_error_is_transient(error: &object_store::Error) -> bool {
    !matches!(
        error,
        object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotFound { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    )
}

impl From<IcebergSinkError> for DataFusionError {
    fn from(error: IcebergSinkError) -> Self {
        DataFusionError::External(Box::new(error))
    }
}
