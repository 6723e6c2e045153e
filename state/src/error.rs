//! The error type of this crate.

use object_store::path::Path;

/// Result alias for this crate.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading or writing checkpoint files.
///
/// Every variant names the file it concerns, so a user can tell which part
/// of a checkpoint is at fault.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The object store failed to read, write, list or delete a file.
    #[error("checkpoint I/O failed on '{path}': {source}")]
    Io {
        /// The file or directory concerned.
        path: Path,
        /// The underlying object store error.
        #[source]
        source: object_store::Error,
    },
    /// A file exists but cannot be trusted: truncated, checksum mismatch,
    /// unparsable body.
    #[error("corrupt checkpoint file '{path}': {reason}")]
    Corrupt {
        /// The file concerned.
        path: Path,
        /// What exactly is wrong with it.
        reason: String,
    },
    /// A file was written by an incompatible format version or is a
    /// different kind of file than expected.
    #[error("incompatible checkpoint file '{path}': {reason}")]
    Incompatible {
        /// The file concerned.
        path: Path,
        /// What was expected and what was found.
        reason: String,
    },
    /// A create-if-absent write found the file already present.
    #[error("checkpoint file '{path}' already exists")]
    AlreadyExists {
        /// The file concerned.
        path: Path,
    },
    /// A state store data file could not be encoded as Arrow IPC for
    /// writing.
    #[error("cannot encode state file '{path}': {source}")]
    Encode {
        /// The file concerned.
        path: Path,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A background snapshot task stopped without a result (it panicked
    /// or was cancelled).
    #[error("background state snapshot '{path}' did not finish: {reason}")]
    Snapshot {
        /// The snapshot file it was writing.
        path: Path,
        /// Why it stopped.
        reason: String,
    },
    /// A value could not be serialized for writing.
    #[error("cannot serialize checkpoint file '{path}': {source}")]
    Serialize {
        /// The file concerned.
        path: Path,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}
