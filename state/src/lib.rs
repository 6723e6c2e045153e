//! # tidemill-state
//!
//! Durable storage for Tidemill's checkpoints. Everything a query must
//! remember across a crash goes through this crate, on any
//! [`object_store::ObjectStore`] (a local directory, `memory://`, or a cloud
//! bucket registered with DataFusion):
//!
//! - [`envelope`]: the on-disk format of one checkpoint file — a header line
//!   naming the kind of file and its format version, a JSON body, and a
//!   CRC-32 trailer — so a truncated, corrupt or foreign file is detected
//!   and reported with its path instead of being silently misread.
//! - [`CheckpointDir`]: a directory of such files with atomic
//!   create-if-absent and overwrite, validated reads, and listing.
//! - [`NumberedLog`]: a log of entries named by batch id (`offsets/7`,
//!   `commits/7`), with lookup of the latest entry and retention.
//!
//! The dependency direction is `connectors → engine → state`: nothing here
//! knows about SQL, sources or sinks.

mod checkpoint_dir;
pub mod envelope;
mod error;
mod numbered_log;

pub use checkpoint_dir::CheckpointDir;
pub use error::{Result, StateError};
pub use numbered_log::NumberedLog;
