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
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateStoreConfig {
    /// Number of hash partitions (default 8). Keys are spread over them by
    /// [`partition_for_key`](super::partition_for_key); each partition is
    /// updated and written independently. The count is recorded in the
    /// store's `_metadata` and cannot change for an existing store.
    pub num_partitions: NonZeroUsize,
    /// Once a partition's chain holds this many deltas (default 10), a
    /// snapshot of its whole content is written in the background and
    /// listed by a later commit in place of the files it replaces; loading
    /// thus reads one snapshot and about `snapshot_interval` deltas per
    /// partition (up to twice that while snapshots are being written).
    /// Partition `p` starts its snapshot at a version `v` with
    /// `(v + p) % snapshot_interval == 0`, so the partitions' snapshots are
    /// spread over the versions rather than all falling on one. Commits
    /// never write snapshots themselves. Can change between runs of the
    /// same store.
    pub snapshot_interval: NonZeroU64,
}

impl Default for StateStoreConfig {
    fn default() -> Self {
        Self {
            num_partitions: NonZeroUsize::new(8).expect("non-zero"),
            snapshot_interval: NonZeroU64::new(10).expect("non-zero"),
        }
    }
}
