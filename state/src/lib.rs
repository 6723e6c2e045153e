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
//! - [`durable`]: how durable a write is when it counts as done
//!   ([`Durability`]: `process`, the default, or `machine`, which `fsync`s
//!   each file and its directory on a local disk).
//! - [`StateStore`]: the versioned key-value state of stateful operators
//!   (aggregation, deduplication, stream-stream joins). Keys and values are
//!   opaque bytes (arrow's row format, described by a [`StateSchema`]),
//!   hash-partitioned into [`StatePartition`]s by [`partition_for_key`],
//!   with optional expiry. Batch `N` reads version `N` and
//!   [`commit`](StateStore::commit)s `N + 1`, which writes one delta file
//!   holding an Arrow IPC part per changed partition (`<version>.delta`,
//!   located by the version's commit file) and, in the background,
//!   per-partition snapshots, staggered across partitions; any
//!   committed version can be [`open`](StateStore::open)ed again after a
//!   crash, and [`purge`](StateStore::purge) drops what old versions alone
//!   needed. [`StateStoreConfig`] sets the partition count and snapshot
//!   interval; [`StateMetrics`] and [`StateCommitMetrics`] report sizes and
//!   costs; [`StateStore::inspect`] describes a committed version
//!   ([`StateVersionInfo`]) from its files alone, writing nothing, and
//!   [`StateStore::read_entries`] reads a committed version's entries
//!   ([`StoredEntries`]) the same way.
//!
//! The dependency direction is `connectors → engine → state`: nothing here
//! knows about SQL, sources or sinks.

#![warn(missing_docs)]

mod checkpoint_dir;
pub mod durable;
pub mod envelope;
mod error;
mod numbered_log;
mod store;

pub use checkpoint_dir::CheckpointDir;
pub use durable::Durability;
pub use error::{Result, StateError};
pub use numbered_log::NumberedLog;
pub use store::{
    StateCommitMetrics, StateEntry, StateMetrics, StatePartition, StateSchema, StateStore,
    StateStoreConfig, StateVersionInfo, StoredEntries, TakenEntries, map_parallel,
    partition_for_key,
};
