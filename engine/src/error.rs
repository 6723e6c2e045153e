//! The engine's error type.

use datafusion::error::DataFusionError;
use tidemill_state::StateError;

/// Result alias used throughout the engine.
pub type Result<T, E = TidemillError> = std::result::Result<T, E>;

/// Everything that can stop a streaming query or refuse to start one.
///
/// Every variant carries enough context to say *what* failed and *where*:
/// the source or sink by its description, the file, the batch id, the
/// operator. Converts into [`DataFusionError`] (as an external error) so it
/// can cross DataFusion's APIs, and back.
#[derive(Debug, thiserror::Error)]
pub enum TidemillError {
    /// A checkpoint file could not be read or written, or is corrupt.
    #[error(transparent)]
    Checkpoint(#[from] StateError),
    /// Planning or executing a query in DataFusion failed.
    #[error("{context}: {source}")]
    DataFusion {
        /// What the engine was doing.
        context: String,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
    /// A source failed: reading, listing, decoding or validating its input.
    #[error("source {source_name}: {message}")]
    Source {
        /// The source's description (kind and location).
        source_name: String,
        /// What went wrong, naming the file/partition and offset where known.
        message: String,
    },
    /// A sink failed to write or commit a batch.
    #[error("sink {sink}: {message}")]
    Sink {
        /// The sink's description.
        sink: String,
        /// What went wrong.
        message: String,
    },
    /// The query uses an operator or combination the engine cannot run as
    /// a stream. Raised by `start()`, never mid-stream.
    #[error("unsupported streaming query: {operator} {reason}. {fix}")]
    Unsupported {
        /// The offending operator, e.g. `Aggregate`.
        operator: String,
        /// Why it cannot run.
        reason: String,
        /// What the user can do instead.
        fix: String,
    },
    /// Another query is running on the same checkpoint.
    #[error(
        "checkpoint {location} is in use by another running query{detail}; stop that query first or use another checkpoint"
    )]
    CheckpointInUse {
        /// The checkpoint location.
        location: String,
        /// Who holds it, when known.
        detail: String,
    },
    /// The checkpoint belongs to a query that differs in a way recovery
    /// cannot bridge (a different number of sources, say).
    #[error("checkpoint {location} cannot be used for this query: {reason}")]
    CheckpointMismatch {
        /// The checkpoint location.
        location: String,
        /// What changed.
        reason: String,
    },
    /// A setting or argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The query stopped because of `source`; returned by the handle's
    /// waiting methods, as Spark's `StreamingQueryException`.
    #[error("query {query} terminated with error: {source}")]
    Terminated {
        /// The query's name or id.
        query: String,
        /// The error that stopped it.
        #[source]
        source: std::sync::Arc<TidemillError>,
    },
    /// A failure that may pass by itself (a broker restart, an object store
    /// hiccup). The engine retries the batch with backoff for up to
    /// [`crate::RetryPolicy::max_elapsed`] before giving up.
    #[error("{0} (transient)")]
    Transient(Box<TidemillError>),
    /// A stateful processor's callback failed, or returned rows that do not
    /// fit the processor's declared output schema.
    #[error("stateful processor: {callback}{} failed: {message}", if key.is_empty() { String::new() } else { format!(" for key ({key})") })]
    Processor {
        /// The callback (`handle_input_rows`, `handle_expired_timer`, …).
        callback: String,
        /// The grouping key it was called for (`column=value, …`; empty for
        /// `init`).
        key: String,
        /// What went wrong.
        message: String,
    },
    /// The query's background task ended abnormally (a panic).
    #[error("query task failed: {0}")]
    Internal(String),
}

impl TidemillError {
    /// Wraps a DataFusion error with what the engine was doing.
    pub fn datafusion(context: impl Into<String>, source: DataFusionError) -> Self {
        Self::DataFusion {
            context: context.into(),
            source,
        }
    }

    /// The error a batch's plan failed with: a Tidemill error that
    /// travelled through DataFusion (such as a source's partition failing
    /// to read a file) comes back as itself, so its message and whether it
    /// is transient are kept; any other error is wrapped with `context`.
    pub fn from_execution(context: impl Into<String>, err: DataFusionError) -> Self {
        let ours = matches!(
            err.find_root(),
            DataFusionError::External(inner) if inner.is::<TidemillError>()
        );
        if !ours {
            return Self::datafusion(context, err);
        }
        let mut err = err;
        loop {
            err = match err {
                DataFusionError::Context(_, inner) => *inner,
                DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
                    Ok(inner) => inner,
                    Err(shared) => {
                        return Self::datafusion(context, DataFusionError::Shared(shared));
                    }
                },
                DataFusionError::External(inner) => match inner.downcast::<TidemillError>() {
                    Ok(ours) => return *ours,
                    Err(inner) => {
                        return Self::datafusion(context, DataFusionError::External(inner));
                    }
                },
                other => return Self::datafusion(context, other),
            };
        }
    }

    /// A source error with the source's description.
    pub fn source(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Source {
            source_name: source_name.into(),
            message: message.into(),
        }
    }

    /// Marks `error` as transient: worth retrying.
    pub fn transient(error: TidemillError) -> Self {
        Self::Transient(Box::new(error))
    }

    /// `error`, caused by the object store error `cause`, marked
    /// [`TidemillError::transient`] when `cause` may pass by itself (see
    /// [`TidemillError::is_transient_store_error`]) and left as it is when
    /// retrying cannot help.
    pub fn storage(error: TidemillError, cause: &object_store::Error) -> Self {
        if Self::is_transient_store_error(cause) {
            Self::transient(error)
        } else {
            error
        }
    }

    /// Whether an object store error may pass by itself: a dropped
    /// connection, a timeout, a server error. Not transient: a missing
    /// object or bucket, refused permission or credentials, an invalid path,
    /// an unsupported operation, a failed precondition, and local file
    /// system errors that stay until someone acts: "Not a directory", "Is a
    /// directory", "Permission denied", a read-only file system, an invalid
    /// file name.
    pub fn is_transient_store_error(error: &object_store::Error) -> bool {
        use object_store::Error as E;
        match error {
            E::NotFound { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotImplemented { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. } => false,
            _ => !has_permanent_io_cause(error),
        }
    }

    /// Whether retrying may succeed: errors marked
    /// [`TidemillError::transient`], and I/O errors of the object store
    /// holding the checkpoint or read by DataFusion that may pass by
    /// themselves ([`TidemillError::is_transient_store_error`]). Corrupt
    /// files, bad input, planning errors and permanent storage errors (such
    /// as "Not a directory" or "Permission denied") are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transient(_) => true,
            Self::Checkpoint(StateError::Io { source, .. }) => {
                Self::is_transient_store_error(source)
            }
            Self::DataFusion { source, .. } => match source.find_root() {
                DataFusionError::ObjectStore(e) => Self::is_transient_store_error(e),
                DataFusionError::External(inner) => inner
                    .downcast_ref::<TidemillError>()
                    .is_some_and(TidemillError::is_transient),
                _ => false,
            },
            _ => false,
        }
    }

    /// A sink error with the sink's description.
    pub fn sink(sink: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Sink {
            sink: sink.into(),
            message: message.into(),
        }
    }
}

/// Whether an operating system error behind `error` (anywhere in its chain
/// of sources) is one that retrying cannot cure.
fn has_permanent_io_cause(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                K::NotFound
                    | K::NotADirectory
                    | K::IsADirectory
                    | K::PermissionDenied
                    | K::ReadOnlyFilesystem
                    | K::InvalidInput
                    | K::InvalidFilename
                    | K::Unsupported
                    | K::AlreadyExists
            );
        }
        next = e.source();
    }
    false
}

impl From<TidemillError> for DataFusionError {
    fn from(err: TidemillError) -> Self {
        match err {
            TidemillError::DataFusion { source, .. } => source,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

impl From<DataFusionError> for TidemillError {
    fn from(err: DataFusionError) -> Self {
        // A Tidemill error that travelled through DataFusion comes back as itself.
        match err {
            DataFusionError::External(inner) => match inner.downcast::<TidemillError>() {
                Ok(ours) => *ours,
                Err(inner) => Self::datafusion("DataFusion", DataFusionError::External(inner)),
            },
            other => Self::datafusion("DataFusion", other),
        }
    }
}

/// The message a panic was raised with (`"panic"` if it is not text).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_tidemill_error_returns_as_itself_from_execution() {
        let ours = TidemillError::transient(TidemillError::source(
            "FileSource[csv: file:///in]",
            "file:///in/a.csv, line 3: invalid number",
        ));
        let message = ours.to_string();
        // As DataFusion hands it back: wrapped in context, shared between
        // partitions.
        let travelled = DataFusionError::Shared(Arc::new(DataFusionError::Context(
            "reading partition 1".into(),
            Box::new(DataFusionError::from(ours)),
        )));
        let back = TidemillError::from_execution("executing batch 4", travelled);
        assert_eq!(back.to_string(), message);
        assert!(back.is_transient());
    }

    #[test]
    fn other_execution_errors_keep_their_context() {
        let err = TidemillError::from_execution(
            "executing batch 4",
            DataFusionError::Execution("division by zero".into()),
        );
        assert!(matches!(err, TidemillError::DataFusion { .. }));
        assert_eq!(
            err.to_string(),
            "executing batch 4: Execution error: division by zero"
        );
        assert!(!err.is_transient());
    }

    /// The error the local file system gives for reading `<file>/x` when
    /// `<file>` is a regular file.
    async fn not_a_directory() -> object_store::Error {
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        store
            .put(
                &"file/x".into(),
                object_store::PutPayload::from_static(b"y"),
            )
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn permanent_storage_errors_are_not_retried() {
        let cause = not_a_directory().await;
        assert!(!TidemillError::is_transient_store_error(&cause), "{cause}");
        let err = TidemillError::Checkpoint(StateError::Io {
            path: "out/_tidemill_sink/0".into(),
            source: not_a_directory().await,
        });
        assert!(!err.is_transient(), "{err}");
        let err = TidemillError::storage(
            TidemillError::sink("ParquetSink[file:///out]", "writing failed"),
            &cause,
        );
        assert!(matches!(err, TidemillError::Sink { .. }), "{err:?}");
        assert!(!err.is_transient());
        let missing = object_store::Error::NotFound {
            path: "bucket/x".into(),
            source: "NoSuchBucket".into(),
        };
        assert!(!TidemillError::is_transient_store_error(&missing));
        let via_datafusion =
            TidemillError::datafusion("reading", DataFusionError::ObjectStore(Box::new(cause)));
        assert!(!via_datafusion.is_transient(), "{via_datafusion}");
    }

    #[test]
    fn other_storage_errors_are_retried() {
        let reset = || object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        };
        assert!(TidemillError::is_transient_store_error(&reset()));
        let err = TidemillError::storage(
            TidemillError::sink("ParquetSink[s3://b/out]", "x"),
            &reset(),
        );
        assert!(matches!(err, TidemillError::Transient(_)) && err.is_transient());
        let err = TidemillError::Checkpoint(StateError::Io {
            path: "chk/offsets/3".into(),
            source: reset(),
        });
        assert!(err.is_transient());
    }

    #[test]
    fn a_transient_error_still_shared_elsewhere_stays_transient() {
        let shared = Arc::new(DataFusionError::from(TidemillError::transient(
            TidemillError::source("KafkaSource[t]", "broker unavailable"),
        )));
        let _other_holder = Arc::clone(&shared);
        let err =
            TidemillError::from_execution("executing batch 1", DataFusionError::Shared(shared));
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("broker unavailable"), "{err}");
    }
}
