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
    /// A partition writes a snapshot of its whole content once every this
    /// many versions (default 10), and deltas in between; loading a version
    /// thus reads at most one snapshot and `snapshot_interval - 1` deltas
    /// per partition. Partition `p` takes its snapshot at the versions `v`
    /// with `(v + p) % snapshot_interval == 0`, so the partitions' snapshot
    /// costs are spread over the versions rather than all falling on one.
    /// A partition that has not changed since its last snapshot writes
    /// none. Can change between runs of the same store.
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
