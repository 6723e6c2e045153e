//! The versioned state store of Tidemill's stateful operators.
//!
//! - [`StateStore`] (this file): opening a version, reads and updates,
//!   committing the next version, purging old files.
//! - [`partition`]: one hash partition in memory ([`StatePartition`]) and
//!   the stable key-to-partition hash ([`partition_for_key`]).
//! - [`files`]: the Arrow IPC delta and snapshot files.
//! - [`manifest`]: the JSON `_metadata` and per-version commit files.
//! - [`schema`]: the key/value layout ([`StateSchema`]) and how a change of
//!   it is described.
//! - [`config`], [`metrics`]: settings and reported figures.

mod config;
mod files;
mod manifest;
mod metrics;
mod parallel;
mod partition;
mod schema;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, future::try_join_all, stream};
use object_store::PutMode;

pub use config::StateStoreConfig;
pub use metrics::{StateCommitMetrics, StateMetrics};
pub use partition::{StateEntry, StatePartition, partition_for_key};
pub use schema::StateSchema;

use crate::{CheckpointDir, Result, StateError};
use files::{FileId, FileKind};
use manifest::{
    FileRef, METADATA_FILE, METADATA_KIND, PartitionChain, StoreMetadata, commit_file_name,
    parse_commit_file_name, read_commit, write_commit,
};

/// Data files fetched at once while loading a version.
const LOAD_CONCURRENCY: usize = 32;
/// Loading decodes partitions on several threads from this many bytes on.
const PARALLEL_LOAD_BYTES: u64 = 4 * 1024 * 1024;
/// A commit encodes partitions on several threads from this many rows on.
const PARALLEL_COMMIT_ROWS: usize = 64 * 1024;

/// A versioned, hash-partitioned key-value store for the state of
/// stateful operators (streaming aggregation, deduplication, stream-stream
/// joins).
///
/// **Versions.** Version 0 is empty; [`commit`](StateStore::commit) turns the
/// changes made since the last commit into the next version. The engine's
/// batch `N` opens (or keeps open) version `N`, updates it, and commits
/// `N + 1`. [`open`](StateStore::open) loads exactly the state as of any
/// committed version, so a batch re-run after a crash starts from the same
/// state, and its commit replaces whatever a crashed attempt left behind.
///
/// **Keys and values** are opaque bytes, compared byte-wise: operators
/// encode them with arrow's row format
/// ([`RowConverter`](arrow::row::RowConverter)), whose layout the
/// [`StateSchema`] describes. An entry may carry an expiry time
/// (`expires_at_ms`); [`remove_expired`](StateStore::remove_expired)
/// evicts expired entries, as removals of the current version. Until then
/// an expired entry is still visible, so what a batch sees depends only on
/// the version it read and the time the engine passes, never on the wall
/// clock — a re-run batch sees the same state.
///
/// **Partitions.** Keys are spread over
/// [`num_partitions`](StateStoreConfig::num_partitions) partitions by
/// [`partition_for_key`] (CRC-32, stable across platforms and releases).
/// Partitions can be updated in parallel through
/// [`partitions_mut`](StateStore::partitions_mut), and are encoded and
/// written in parallel on commit.
///
/// **Files**, all through `object_store` under the store's directory:
///
/// ```text
/// _metadata                   checksummed JSON: format version, partition count,
///                             key and value schemas
/// <version>.commit            checksummed JSON: for each partition, the snapshot
///                             and deltas that make up this version, with their
///                             sizes and CRC-32s; written last, so a version
///                             exists once its commit file does
/// <partition>/<v>.delta       Arrow IPC: the keys of the partition changed in v
///                             (a null value for a removed key)
/// <partition>/<v>.snapshot    Arrow IPC: the whole partition as of v
/// ```
///
/// A commit writes one delta per partition *with changes* (its cost grows
/// with the changed keys, not with the state), except that every
/// [`snapshot_interval`](StateStoreConfig::snapshot_interval) versions a
/// partition writes a snapshot instead, which bounds the files a load reads.
/// Loading reads one commit file and exactly the data files it lists; a
/// missing, truncated or altered file is reported as
/// [`StateError::Corrupt`] naming the file.
///
/// ```
/// use std::sync::Arc;
/// use arrow::datatypes::{DataType, Field, Schema};
/// use object_store::{memory::InMemory, path::Path};
/// use tidemill_state::{CheckpointDir, StateSchema, StateStore, StateStoreConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tidemill_state::Result<()> {
/// let dir = CheckpointDir::new(Arc::new(InMemory::new()), Path::from("chk/state/0"));
/// let schema = StateSchema::new(
///     Arc::new(Schema::new(vec![Field::new("symbol", DataType::Utf8, false)])),
///     Arc::new(Schema::new(vec![Field::new("count", DataType::Int64, false)])),
/// );
/// let config = StateStoreConfig::default();
///
/// // Batch 0 reads version 0 (empty) and commits version 1.
/// let mut store = StateStore::open(dir.clone(), schema.clone(), config, 0).await?;
/// store.put(b"AAPL", &1i64.to_le_bytes());
/// store.put_with_ttl(b"MSFT", &1i64.to_le_bytes(), 60_000);
/// store.commit().await?;
/// assert_eq!(store.version(), 1);
///
/// // Batch 1 commits version 2.
/// store.remove(b"AAPL");
/// assert_eq!(store.remove_expired(60_000), 1); // MSFT expired
/// store.commit().await?;
/// assert!(store.is_empty());
///
/// // Any committed version can be loaded again, after a crash say.
/// let v1 = StateStore::open(dir, schema, config, 1).await?;
/// assert_eq!(v1.get(b"AAPL"), Some(&1i64.to_le_bytes()[..]));
/// assert_eq!(v1.len(), 2);
/// # Ok(())
/// # }
/// ```
pub struct StateStore {
    dir: CheckpointDir,
    schema: StateSchema,
    config: StateStoreConfig,
    version: u64,
    partitions: Vec<StatePartition>,
    /// The files making up each partition at `version`.
    chains: Vec<PartitionChain>,
    last_commit: Option<StateCommitMetrics>,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", self.dir.root())
            .field("version", &self.version)
            .field("num_partitions", &self.partitions.len())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens the store in `dir` at `version`: the state as of that version,
    /// with no changes pending.
    ///
    /// Version 0 is the empty state; opening it on a new directory writes
    /// the store's `_metadata`. Any other version must have been committed
    /// and not purged.
    ///
    /// Fails with [`StateError::Incompatible`] if the store was created
    /// with another partition count, key schema or value schema (the
    /// message says exactly what changed), and with [`StateError::Corrupt`]
    /// naming the file if a file needed for `version` is missing, truncated
    /// or altered.
    pub async fn open(
        dir: CheckpointDir,
        schema: StateSchema,
        config: StateStoreConfig,
        version: u64,
    ) -> Result<Self> {
        let num_partitions = config.num_partitions.get();
        check_metadata(&dir, &StoreMetadata::new(&schema, num_partitions), version).await?;
        let chains = if version == 0 {
            vec![PartitionChain::default(); num_partitions]
        } else {
            read_commit(&dir, version, num_partitions).await?
        };
        let partitions = load_partitions(&dir, &chains, version).await?;
        Ok(Self {
            dir,
            schema,
            config,
            version,
            partitions,
            chains,
            last_commit: None,
        })
    }

    /// The version the store holds: the one opened or last committed. The
    /// changes made since are not part of it.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The directory holding the store's files.
    pub fn dir(&self) -> &CheckpointDir {
        &self.dir
    }

    /// The layout of keys and values.
    pub fn schema(&self) -> &StateSchema {
        &self.schema
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &StateStoreConfig {
        &self.config
    }

    /// The partition `key` belongs to (see [`partition_for_key`]).
    pub fn partition_of(&self, key: &[u8]) -> usize {
        partition_for_key(key, self.partitions.len())
    }

    /// The partitions, indexed by partition number.
    pub fn partitions(&self) -> &[StatePartition] {
        &self.partitions
    }

    /// The partitions for independent (e.g. parallel) updates, indexed by
    /// partition number. Route each key to `partitions_mut()[partition_of(key)]`;
    /// a partition refuses a key of another one.
    pub fn partitions_mut(&mut self) -> &mut [StatePartition] {
        &mut self.partitions
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.partitions[self.partition_of(key)].get(key)
    }

    /// The entry of `key` with its expiry, if present.
    pub fn get_entry(&self, key: &[u8]) -> Option<StateEntry<'_>> {
        self.partitions[self.partition_of(key)].get_entry(key)
    }

    /// Sets `key` to `value` with no expiry (dropping any previous one).
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        let p = self.partition_of(key);
        self.partitions[p].upsert(key, value, None);
    }

    /// Sets `key` to `value`, to be removed by
    /// [`remove_expired`](StateStore::remove_expired) once its `now_ms`
    /// reaches `expires_at_ms`.
    pub fn put_with_ttl(&mut self, key: &[u8], value: &[u8], expires_at_ms: i64) {
        let p = self.partition_of(key);
        self.partitions[p].upsert(key, value, Some(expires_at_ms));
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let p = self.partition_of(key);
        self.partitions[p].remove_key(key)
    }

    /// All live entries: partition by partition, and by key bytes within a
    /// partition. Entries past their expiry that were not removed by
    /// [`remove_expired`](StateStore::remove_expired) yet are included.
    pub fn iter(&self) -> impl Iterator<Item = StateEntry<'_>> + '_ {
        self.partitions.iter().flat_map(StatePartition::iter)
    }

    /// The number of live entries.
    pub fn len(&self) -> usize {
        self.partitions.iter().map(StatePartition::len).sum()
    }

    /// Whether the store has no live entry.
    pub fn is_empty(&self) -> bool {
        self.partitions.iter().all(StatePartition::is_empty)
    }

    /// Removes every entry whose `expires_at_ms <= now_ms` and returns how
    /// many; they are recorded as removals of the current version. Costs
    /// time in the number of expired entries, not in the size of the state.
    pub fn remove_expired(&mut self, now_ms: i64) -> usize {
        self.partitions
            .iter_mut()
            .map(|p| p.remove_expired(now_ms))
            .sum()
    }

    /// Removes every entry whose `expires_at_ms <= now_ms` and returns them
    /// as `(key, value)` pairs, partition by partition (earliest expiry
    /// first within one); recorded as removals of the current version. Costs
    /// time in the number of expired entries, not in the size of the state.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.partitions
            .iter_mut()
            .flat_map(|p| p.take_expired(now_ms))
            .collect()
    }

    /// The earliest expiry of any entry, if an entry has one: the time at
    /// which [`take_expired`](StateStore::take_expired) will next find
    /// something.
    pub fn next_expiry(&self) -> Option<i64> {
        self.partitions
            .iter()
            .filter_map(StatePartition::next_expiry)
            .min()
    }

    /// Whether changes were made since the version was opened or committed
    /// (a key added and removed again is no change).
    pub fn has_changes(&self) -> bool {
        self.partitions.iter().any(StatePartition::has_changes)
    }

    /// The store's current figures (see [`StateMetrics`] for what
    /// `rows_updated` and `rows_removed` count).
    pub fn metrics(&self) -> StateMetrics {
        let (mut updated, mut removed, mut touched) = (0, 0, false);
        for p in &self.partitions {
            let (u, r) = p.change_counts();
            updated += u;
            removed += r;
            touched |= p.has_change_records();
        }
        if !touched && let Some(last) = &self.last_commit {
            (updated, removed) = (last.rows_updated, last.rows_removed);
        }
        StateMetrics {
            rows_total: self.len() as u64,
            rows_updated: updated,
            rows_removed: removed,
            memory_bytes: self
                .partitions
                .iter()
                .map(|p| p.memory_bytes() as u64)
                .sum(),
            commit_time_ms: self.last_commit.map_or(0, |c| c.commit_time_ms),
        }
    }

    /// Makes the changes since the last commit durable as version
    /// `version() + 1` and moves the store to that version.
    ///
    /// Each partition with changes writes a delta (or, when due, a
    /// snapshot), all in parallel; a partition without changes writes
    /// nothing. The commit file is written last. Files left for the same
    /// version by a crashed attempt are overwritten. On error the store
    /// stays at its version with its changes pending, and `commit` can be
    /// retried.
    pub async fn commit(&mut self) -> Result<StateCommitMetrics> {
        let started = Instant::now();
        let version = self.version + 1;
        let interval = self.config.snapshot_interval.get();
        let mut chains = self.chains.clone();
        let (mut rows_updated, mut rows_removed) = (0, 0);
        let mut jobs = Vec::new();
        let mut work_rows = 0;
        for (p, (part, chain)) in self.partitions.iter().zip(&mut chains).enumerate() {
            let (updated, removed) = part.change_counts();
            (rows_updated, rows_removed) = (rows_updated + updated, rows_removed + removed);
            let changed = updated + removed > 0;
            let due = (version + p as u64).is_multiple_of(interval)
                || chain.deltas.len() as u64 >= interval;
            let kind = if due && (changed || !chain.deltas.is_empty()) {
                if part.is_empty() {
                    // Nothing to snapshot: the partition simply starts empty.
                    *chain = PartitionChain::default();
                    continue;
                }
                work_rows += part.len();
                FileKind::Snapshot
            } else if changed {
                work_rows += (updated + removed) as usize;
                FileKind::Delta
            } else {
                continue;
            };
            jobs.push((part, file_id(&self.dir, p, kind, version)));
        }
        let encoded =
            parallel::map_parallel(jobs, work_rows >= PARALLEL_COMMIT_ROWS, |(part, id)| {
                let (bytes, rows) = match id.kind {
                    FileKind::Snapshot => files::encode(&id, part.snapshot_rows())?,
                    FileKind::Delta => files::encode(&id, part.changes())?,
                };
                Ok((id, bytes, rows))
            })
            .into_iter()
            .collect::<Result<Vec<(FileId, Bytes, u64)>>>()?;

        let mut metrics = StateCommitMetrics {
            version,
            rows_updated,
            rows_removed,
            ..Default::default()
        };
        for (id, bytes, rows) in &encoded {
            let file = FileRef {
                version,
                rows: *rows,
                bytes: bytes.len() as u64,
                crc32: crc32fast::hash(bytes),
            };
            let chain = &mut chains[id.partition];
            match id.kind {
                FileKind::Snapshot => {
                    metrics.snapshot_files += 1;
                    chain.snapshot = Some(file);
                    chain.deltas.clear();
                }
                FileKind::Delta => {
                    metrics.delta_files += 1;
                    chain.deltas.push(file);
                }
            }
            metrics.bytes_written += file.bytes;
        }
        for (chain, part) in chains.iter_mut().zip(&self.partitions) {
            chain.live_rows = part.len() as u64;
        }

        try_join_all(encoded.iter().map(|(id, bytes, _)| {
            self.dir
                .put_bytes(&id.path, bytes.clone(), PutMode::Overwrite)
        }))
        .await?;
        write_commit(&self.dir, version, &chains).await?;

        self.version = version;
        self.chains = chains;
        for part in &mut self.partitions {
            part.clear_changes();
        }
        metrics.commit_time_ms = started.elapsed().as_millis() as u64;
        self.last_commit = Some(metrics);
        Ok(metrics)
    }

    /// Deletes the files no longer needed to load any version at or above
    /// `keep_from_version` (which is capped at [`version`](StateStore::version)):
    /// the commit files of older versions, and every data file at or below
    /// `keep_from_version` that is not part of it (older snapshots, the
    /// deltas before them, files of crashed attempts). Returns how many
    /// files were deleted.
    ///
    /// Versions below `keep_from_version` can no longer be opened
    /// afterwards; opening one fails naming its missing commit file.
    pub async fn purge(&self, keep_from_version: u64) -> Result<usize> {
        let keep = keep_from_version.min(self.version);
        if keep == 0 {
            return Ok(0);
        }
        let chains = if keep == self.version {
            self.chains.clone()
        } else {
            read_commit(&self.dir, keep, self.partitions.len()).await?
        };
        // Commit files first: a version is then either loadable or clearly
        // gone, never listing files that were deleted.
        let mut deleted = 0;
        for name in self.dir.list_names().await? {
            if parse_commit_file_name(&name).is_some_and(|v| v < keep) {
                self.dir.delete(&name).await?;
                deleted += 1;
            }
        }
        let per_partition = try_join_all(chains.iter().enumerate().map(|(p, chain)| {
            let dir = self.dir.child(&p.to_string());
            async move {
                let mut deleted = 0;
                for name in dir.list_names().await? {
                    let Some((version, kind)) = FileKind::parse_file_name(&name) else {
                        continue;
                    };
                    let needed = chain
                        .files()
                        .any(|(k, file)| k == kind && file.version == version);
                    if version <= keep && !needed {
                        dir.delete(&name).await?;
                        deleted += 1;
                    }
                }
                Ok::<_, StateError>(deleted)
            }
        }))
        .await?;
        Ok(deleted + per_partition.into_iter().sum::<usize>())
    }
}

/// Checks the store's `_metadata` against the one wanted, writing it for a
/// new store (opened at version 0).
async fn check_metadata(dir: &CheckpointDir, wanted: &StoreMetadata, version: u64) -> Result<()> {
    let path = dir.path(METADATA_FILE);
    let read = || dir.read::<StoreMetadata>(METADATA_FILE, METADATA_KIND, files::FORMAT_VERSION);
    let found = match read().await? {
        Some(found) => found,
        None if version == 0 => {
            match dir
                .create(METADATA_FILE, METADATA_KIND, files::FORMAT_VERSION, wanted)
                .await
            {
                Ok(()) => return Ok(()),
                // Created concurrently: check what was written.
                Err(StateError::AlreadyExists { .. }) => {
                    read().await?.ok_or_else(|| StateError::Corrupt {
                        path: path.clone(),
                        reason: "vanished right after being created".into(),
                    })?
                }
                Err(e) => return Err(e),
            }
        }
        None => {
            return Err(StateError::Corrupt {
                path,
                reason: format!(
                    "missing: cannot open version {version} of a state store without it"
                ),
            });
        }
    };
    found.check_compatible(wanted, &path)
}

/// The identity of partition `partition`'s data file of `kind` for
/// `version`.
fn file_id(dir: &CheckpointDir, partition: usize, kind: FileKind, version: u64) -> FileId {
    FileId {
        path: dir
            .child(&partition.to_string())
            .path(&kind.file_name(version)),
        kind,
        partition,
        version,
    }
}

/// Loads every partition at `version` from the files of `chains`.
async fn load_partitions(
    dir: &CheckpointDir,
    chains: &[PartitionChain],
    version: u64,
) -> Result<Vec<StatePartition>> {
    let num_partitions = chains.len();
    let commit_name = commit_file_name(version);
    let wanted: Vec<(FileId, FileRef)> = chains
        .iter()
        .enumerate()
        .flat_map(|(p, chain)| {
            chain
                .files()
                .map(move |(kind, file)| (file_id(dir, p, kind, file.version), *file))
        })
        .collect();
    let fetched: Vec<(FileId, FileRef, Bytes)> = stream::iter(wanted)
        .map(|(id, file)| {
            let commit_name = &commit_name;
            async move {
                let bytes = fetch(dir, &id, &file, commit_name).await?;
                Ok::<_, StateError>((id, file, bytes))
            }
        })
        .buffered(LOAD_CONCURRENCY)
        .try_collect()
        .await?;
    let total_bytes: u64 = fetched.iter().map(|(_, file, _)| file.bytes).sum();
    let mut per_partition: Vec<Vec<(FileId, FileRef, Bytes)>> =
        (0..num_partitions).map(|_| Vec::new()).collect();
    for item in fetched {
        per_partition[item.0.partition].push(item);
    }
    let jobs: Vec<_> = per_partition.into_iter().enumerate().collect();
    parallel::map_parallel(jobs, total_bytes >= PARALLEL_LOAD_BYTES, |(p, files)| {
        let mut part = StatePartition::new(p, num_partitions);
        for (id, file, bytes) in files {
            let rows = files::decode(&id, &bytes, |row| part.apply_loaded(row))?;
            if rows != file.rows {
                return Err(StateError::Corrupt {
                    path: id.path,
                    reason: format!("holds {rows} rows, but {commit_name} recorded {}", file.rows),
                });
            }
        }
        if part.len() as u64 != chains[p].live_rows {
            return Err(StateError::Corrupt {
                path: dir.path(&commit_name),
                reason: format!(
                    "partition {p} has {} entries after replaying its files, but the commit file recorded {}",
                    part.len(),
                    chains[p].live_rows
                ),
            });
        }
        Ok(part)
    })
    .into_iter()
    .collect()
}

/// Reads a data file and checks it against its record in the commit file.
async fn fetch(
    dir: &CheckpointDir,
    id: &FileId,
    file: &FileRef,
    commit_name: &str,
) -> Result<Bytes> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: id.path.clone(),
        reason,
    };
    let Some(bytes) = dir.get_bytes(&id.path).await? else {
        return Err(corrupt(format!(
            "missing, but listed by {commit_name} (deleted or lost?)"
        )));
    };
    let len = bytes.len() as u64;
    if len < file.bytes {
        return Err(corrupt(format!(
            "truncated: {len} bytes, but {commit_name} recorded {}",
            file.bytes
        )));
    }
    if len > file.bytes {
        return Err(corrupt(format!(
            "{len} bytes, but {commit_name} recorded {} (overwritten by another run?)",
            file.bytes
        )));
    }
    let crc = crc32fast::hash(&bytes);
    if crc != file.crc32 {
        return Err(corrupt(format!(
            "checksum mismatch (recorded {:08x} in {commit_name}, computed {crc:08x})",
            file.crc32
        )));
    }
    Ok(bytes)
}
