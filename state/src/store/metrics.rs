//! Figures a state store reports for progress and tuning.

use serde::{Deserialize, Serialize};

/// The state of a [`StateStore`](super::StateStore) at a glance, from
/// [`StateStore::metrics`](super::StateStore::metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMetrics {
    /// Live entries.
    pub rows_total: u64,
    /// Keys set in the current version: the changes made since the last
    /// commit, or, right after a commit and before any new change, those of
    /// the version just committed. A key set several times counts once.
    pub rows_updated: u64,
    /// Keys removed (explicitly or by expiry) in the current version,
    /// counted as `rows_updated`.
    pub rows_removed: u64,
    /// Estimated bytes of memory held by the entry tables, the keys and
    /// values, the expiry index and the change records.
    pub memory_bytes: u64,
    /// How long the last commit took, in milliseconds (0 before the first).
    pub commit_time_ms: u64,
}

/// What one [`StateStore::commit`](super::StateStore::commit) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCommitMetrics {
    /// The version committed.
    pub version: u64,
    /// Keys set in this version.
    pub rows_updated: u64,
    /// Keys removed in this version.
    pub rows_removed: u64,
    /// Partitions whose changes were written: each is a part of the
    /// version's one delta file.
    pub partitions_written: usize,
    /// Snapshots written in the background since the previous commit that
    /// this version's partitions start from (replacing their older
    /// snapshot and deltas).
    pub snapshots_adopted: usize,
    /// Background snapshots started after this commit (partitions whose
    /// chain of deltas reached the snapshot interval).
    pub snapshots_started: usize,
    /// Bytes of the delta file written (the commit file and background
    /// snapshots not included).
    pub bytes_written: u64,
    /// Wall-clock duration of the commit, in milliseconds.
    pub commit_time_ms: u64,
}
