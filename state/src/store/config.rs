//! How a state store is laid out and how often it writes snapshots.

use std::num::{NonZeroU64, NonZeroUsize};

/// Settings of a [`StateStore`](super::StateStore).
///
/// ```
/// use std::num::{NonZeroU64, NonZeroUsize};
/// use tidemill_state::StateStoreConfig;
///
/// let config = StateStoreConfig {
///     num_partitions: NonZeroUsize::new(4).unwrap(),
///     ..Default::default()
/// };
/// assert_eq!(config.snapshot_interval, NonZeroU64::new(10).unwrap());
/// assert_eq!(config.max_snapshot_interval, NonZeroU64::new(100).unwrap());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateStoreConfig {
    /// Number of hash partitions (default 8). Keys are spread over them by
    /// [`partition_for_key`](super::partition_for_key); each partition is
    /// updated and written independently. The count is recorded in the
    /// store's `_metadata` and cannot change for an existing store.
    pub num_partitions: NonZeroUsize,
    /// The fewest deltas a partition's chain holds before a snapshot of the
    /// partition is written (default 10, as Spark's
    /// `minDeltasForSnapshot`). A snapshot of the partition's whole content
    /// is written in the background and listed by a later commit in place
    /// of the files it replaces. Partition `p` starts its snapshot at a
    /// version `v` with `(v + p) % snapshot_interval == 0`, so the
    /// partitions' snapshots are spread over the versions rather than all
    /// falling on one. Commits never write snapshots themselves. Can change
    /// between runs of the same store.
    ///
    /// Once the partition has a snapshot, the next one also waits until its
    /// deltas hold at least a tenth as many rows as that snapshot (or the
    /// chain reaches [`max_snapshot_interval`](Self::max_snapshot_interval)
    /// deltas): rewriting a large partition because a few of its keys
    /// changed would make the background work grow with the state rather
    /// than with the changes. Loading a version thus reads a snapshot, and
    /// deltas of at most about a tenth of its rows or
    /// `max_snapshot_interval` files.
    pub snapshot_interval: NonZeroU64,
    /// The most deltas a partition's chain holds before it is snapshotted,
    /// however few rows they hold (default 100): bounds the files loading
    /// a version reads.
    pub max_snapshot_interval: NonZeroU64,
}

impl Default for StateStoreConfig {
    fn default() -> Self {
        Self {
            num_partitions: NonZeroUsize::new(8).expect("non-zero"),
            snapshot_interval: NonZeroU64::new(10).expect("non-zero"),
            max_snapshot_interval: NonZeroU64::new(100).expect("non-zero"),
        }
    }
}
