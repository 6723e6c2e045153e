//! The versioned state store of Tidemill's stateful operators.
//!
//! - [`StateStore`] (this file): opening a version, reads and updates,
//!   committing the next version, purging old files.
//! - [`partition`]: one hash partition in memory ([`StatePartition`]) and
//!   the stable key-to-partition hash ([`partition_for_key`]).
//! - [`files`]: the Arrow IPC delta and snapshot files; [`fetch`]: where
//!   they live and reading them back checked.
//! - [`manifest`]: the JSON `_metadata` and per-version commit files;
//!   [`inspect`]: what a committed version holds, read from them alone;
//!   [`read`]: a committed version's entries, read without opening the
//!   store ([`StoredEntries`]).
//! - [`schema`]: the key/value layout ([`StateSchema`]) and how a change of
//!   it is described.
//! - [`config`], [`metrics`]: settings and reported figures.

mod config;
mod fetch;
mod files;
mod inspect;
mod listings;
mod maintenance;
mod manifest;
mod metrics;
mod parallel;
mod partition;
mod probe_ahead;
mod read;
mod schema;
mod table_alloc;
mod taken;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, future::try_join_all, stream};
use object_store::{PutMode, PutPayload};

pub use config::StateStoreConfig;
pub use inspect::StateVersionInfo;
pub use metrics::{StateCommitMetrics, StateMetrics};
pub use parallel::map_parallel;
pub use partition::{StateEntry, StatePartition, partition_for_key};
pub use read::StoredEntries;
pub use schema::StateSchema;
pub use taken::TakenEntries;

use crate::{CheckpointDir, Result, StateError};
use fetch::{fetch_all, locate, own_file, shared_delta_path};
use files::{FileId, FileKind};
use listings::Listings;
use manifest::{
    FileRef, METADATA_FILE, METADATA_KIND, PartitionChain, StoreMetadata, commit_file_name,
    parse_commit_file_name, read_commit, read_metadata, write_commit,
};

/// Commit files read at once by a purge.
const LOAD_CONCURRENCY: usize = 32;
/// Loading decodes partitions on several threads from this many bytes on.
const PARALLEL_LOAD_BYTES: u64 = 4 * 1024 * 1024;
/// A commit encodes partitions on several threads from this many rows on.
const PARALLEL_COMMIT_ROWS: usize = 64 * 1024;
/// [`StateStore::get_many`] and [`StateStore::put_many`] work on several
/// threads from this many keys on.
const PARALLEL_ACCESS_KEYS: usize = 2048;
/// [`StateStore::put_many`] reads the table's layout again after this many
/// keys (an insert may have grown it).
const PROBE_AHEAD_REFRESH: usize = 64;

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
/// **Files**, all through `object_store` under the store's directory: a
/// `_metadata` file (format version, partition count, schemas), one
/// `<version>.commit` per version (written last: a version exists once it
/// does), one `<version>.delta` holding the changes of every partition that
/// changed, and per-partition snapshots written in the background (the
/// layout is in `files.rs`). A commit's cost grows with the changed keys,
/// not with the state. Loading reads one commit file and exactly the data
/// files it lists; a missing, truncated or altered file is reported as
/// [`StateError::Corrupt`] naming the file (and the partition whose part is
/// damaged). An error of a background snapshot fails the next commit.
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
    /// This instance's tag in the names of the snapshots it writes.
    tag: u64,
    /// Snapshots being written in the background, per partition at most
    /// one waiting for idle time and one [`overdue`] one.
    compactions: Vec<Compaction>,
    /// The files the versions from the opened one on list, for
    /// [`purge`](StateStore::purge).
    listings: Mutex<Listings>,
    /// The store's `_metadata` as last read or written.
    metadata: StoreMetadata,
}

/// A snapshot of one partition written in the background.
struct Compaction {
    partition: usize,
    /// Started because the partition's chain was overdue (see
    /// [`overdue`]): runs at a normal priority.
    urgent: bool,
    /// The version whose chain it merges (and its file's version).
    version: u64,
    /// Its file, as it will be listed.
    id: FileId,
    /// The files it merges: it replaces them only in a chain that still
    /// starts with them.
    inputs: Vec<FileRef>,
    progress: Progress,
}

enum Progress {
    Running(tokio::task::JoinHandle<Result<FileRef>>),
    Done(Result<FileRef>),
}

impl Compaction {
    /// Waits for the task (if `wait` or it has finished) and keeps its
    /// result.
    async fn settle(&mut self, wait: bool) {
        if let Progress::Running(task) = &mut self.progress
            && (wait || task.is_finished())
        {
            let result = task.await.unwrap_or_else(|e| {
                Err(StateError::Snapshot {
                    path: self.id.path.clone(),
                    reason: e.to_string(),
                })
            });
            self.progress = Progress::Done(result);
        }
    }
}

impl Drop for StateStore {
    fn drop(&mut self) {
        // Nobody will adopt these snapshots; a file already written is
        // purged later like any file no version lists.
        for compaction in &self.compactions {
            if let Progress::Running(task) = &compaction.progress {
                task.abort();
            }
        }
    }
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
        let metadata =
            check_metadata(&dir, &StoreMetadata::new(&schema, num_partitions), version).await?;
        Self::load(dir, schema, config, version, metadata).await
    }

    /// Opens the store in `dir` at `version` as [`open`](StateStore::open)
    /// does, for an operator whose state may have been written by an
    /// earlier form of it:
    ///
    /// - a store that does not exist yet is created empty *at `version`*
    ///   (an operator's new part, such as a stateful processor's new state
    ///   variable), not only at version 0;
    /// - a store whose values at `version` were written in another value
    ///   layout than `schema.value` is opened in that layout, which is
    ///   returned: the caller decodes every entry in it, writes it again in
    ///   the new layout and calls
    ///   [`set_value_schema`](StateStore::set_value_schema) before the next
    ///   commit, which records the new layout from its version on. Versions
    ///   before it keep reading in the old one (a restart of the earlier
    ///   form of the operator still opens them).
    ///
    /// The key layout and the partitioning must match, as for `open`.
    pub async fn open_evolving(
        dir: CheckpointDir,
        schema: StateSchema,
        config: StateStoreConfig,
        version: u64,
    ) -> Result<(Self, Option<SchemaRef>)> {
        let num_partitions = config.num_partitions.get();
        let wanted = StoreMetadata::new(&schema, num_partitions);
        let path = dir.path(METADATA_FILE);
        let metadata = match read_metadata(&dir).await? {
            Some(found) => found,
            None => {
                let created = StoreMetadata {
                    created_at_version: version,
                    ..wanted.clone()
                };
                match dir
                    .create(
                        METADATA_FILE,
                        METADATA_KIND,
                        files::FORMAT_VERSION,
                        &created,
                    )
                    .await
                {
                    Ok(()) => created,
                    Err(StateError::AlreadyExists { .. }) => read_metadata(&dir)
                        .await?
                        .ok_or_else(|| StateError::Corrupt {
                            path: path.clone(),
                            reason: "vanished right after being created".into(),
                        })?,
                    Err(e) => return Err(e),
                }
            }
        };
        let stored = metadata.value_schema_at(version);
        let old = (stored != schema.value.as_ref()).then(|| Arc::new(stored.clone()));
        let opened_as = match &old {
            Some(old) => StateSchema {
                value: Arc::clone(old),
                ..schema
            },
            None => schema,
        };
        metadata.check_compatible(
            &StoreMetadata::new(&opened_as, num_partitions),
            version,
            &path,
        )?;
        let store = Self::load(dir, opened_as, config, version, metadata).await?;
        Ok((store, old))
    }

    /// Takes `value` as the layout of the store's values from the next
    /// commit on (see [`open_evolving`](StateStore::open_evolving)): every
    /// live entry must have been written again in it.
    pub fn set_value_schema(&mut self, value: SchemaRef) {
        self.schema.value = value;
    }

    async fn load(
        dir: CheckpointDir,
        schema: StateSchema,
        config: StateStoreConfig,
        version: u64,
        metadata: StoreMetadata,
    ) -> Result<Self> {
        let num_partitions = config.num_partitions.get();
        let chains = if version <= metadata.created_at_version {
            vec![PartitionChain::default(); num_partitions]
        } else {
            read_commit(&dir, version, num_partitions).await?
        };
        let partitions = load_partitions(&dir, &chains, version, schema.partition_suffix).await?;
        let listings = Mutex::new(Listings::new(version, &chains));
        Ok(Self {
            dir,
            schema,
            config,
            version,
            partitions,
            chains,
            last_commit: None,
            // Random per instance (the standard library seeds each
            // RandomState differently).
            tag: std::collections::hash_map::RandomState::new().hash_one(version),
            compactions: Vec::new(),
            listings,
            metadata,
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

    /// The partition `key` belongs to: [`partition_for_key`] of the key
    /// without the schema's
    /// [`partition_suffix`](StateSchema::partition_suffix).
    pub fn partition_of(&self, key: &[u8]) -> usize {
        partition_for_key(self.schema.partition_key(key), self.partitions.len())
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

    /// The values of `keys` (`None` for an absent key), in their order:
    /// [`get`](StateStore::get) for many keys at once, the partitions
    /// searched on several threads when there are many keys (random
    /// lookups in a large state wait on memory, and threads wait together).
    pub fn get_many<'a>(&'a self, keys: &[&[u8]]) -> Vec<Option<&'a [u8]>> {
        let routed = self.route(keys.iter().copied());
        let parallel = keys.len() >= PARALLEL_ACCESS_KEYS;
        let found = parallel::map_parallel(
            self.partitions.iter().zip(routed).collect(),
            parallel,
            |(part, indices)| {
                let hashes: Vec<u64> = indices
                    .iter()
                    .map(|&i| partition::hash_key(keys[i]))
                    .collect();
                let ahead = part.probe_ahead();
                indices
                    .iter()
                    .enumerate()
                    .map(|(n, &i)| {
                        if let Some(ahead) = &ahead {
                            ahead.prefetch_ahead_of(&hashes, n);
                        }
                        (i, part.get_hashed(hashes[n], keys[i]))
                    })
                    .collect::<Vec<_>>()
            },
        );
        let mut values = vec![None; keys.len()];
        for (i, value) in found.into_iter().flatten() {
            values[i] = value;
        }
        values
    }

    /// Sets each `(key, value, expires_at_ms)` of `entries` in order, as
    /// [`put`](StateStore::put) (no expiry) or
    /// [`put_with_ttl`](StateStore::put_with_ttl) would; for a key given
    /// twice the later entry wins. The partitions are updated on several
    /// threads when there are many entries.
    pub fn put_many(&mut self, entries: &[(&[u8], &[u8], Option<i64>)]) {
        let routed = self.route(entries.iter().map(|(key, _, _)| *key));
        let parallel = entries.len() >= PARALLEL_ACCESS_KEYS;
        parallel::map_parallel(
            self.partitions.iter_mut().zip(routed).collect(),
            parallel,
            |(part, indices)| {
                let hashes: Vec<u64> = indices
                    .iter()
                    .map(|&i| partition::hash_key(entries[i].0))
                    .collect();
                let mut ahead = None;
                for (n, &i) in indices.iter().enumerate() {
                    // Inserts may grow the table: its layout is read again
                    // every so often.
                    if n % PROBE_AHEAD_REFRESH == 0 {
                        ahead = part.probe_ahead();
                    }
                    if let Some(ahead) = &ahead {
                        ahead.prefetch_ahead_of(&hashes, n);
                    }
                    let (key, value, expires_at_ms) = entries[i];
                    part.upsert_hashed(hashes[n], key, value, expires_at_ms);
                }
            },
        );
    }

    /// The positions of `keys` per partition, in order.
    fn route<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Vec<Vec<usize>> {
        let mut routed = vec![Vec::new(); self.partitions.len()];
        for (i, key) in keys.enumerate() {
            routed[self.partition_of(key)].push(i);
        }
        routed
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let p = self.partition_of(key);
        self.partitions[p].remove_key(key)
    }

    /// All live entries: partition by partition, in no particular order
    /// within one. Entries past their expiry that were not removed by
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
    /// (keys and values), partition by partition (earliest expiry
    /// first within one); recorded as removals of the current version. Costs
    /// time in the number of expired entries, not in the size of the state.
    ///
    /// Partitions with entries due are drained on several threads when
    /// their expiry indexes are large (e.g. a watermark closing the windows
    /// of many groups at once).
    pub fn take_expired(&mut self, now_ms: i64) -> TakenEntries {
        let due: Vec<&mut StatePartition> = self
            .partitions
            .iter_mut()
            .filter(|p| p.next_expiry().is_some_and(|at| at <= now_ms))
            .collect();
        let parallel = due.len() > 1
            && due.iter().map(|p| p.expiring()).sum::<usize>() >= PARALLEL_ACCESS_KEYS;
        let mut taken = parallel::map_parallel(due, parallel, |p| p.take_expired(now_ms));
        match taken.len() {
            0 => TakenEntries::default(),
            1 => taken.swap_remove(0),
            _ => {
                let mut all = TakenEntries::default();
                for part in &taken {
                    all.append(part);
                }
                all
            }
        }
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
    /// Each partition with changes is encoded as a delta, all in
    /// parallel, and the deltas are written one after the other as the
    /// version's delta file; a partition without changes writes nothing,
    /// and a version without changes no delta file. The commit file is
    /// written last. Snapshots finished in the background since the last commit are
    /// listed in place of the files they replace, and partitions whose
    /// chain has grown to the snapshot interval start a new one. Files left
    /// for the same version by a crashed attempt are overwritten. On error
    /// the store stays at its version with its changes pending, and
    /// `commit` can be retried.
    pub async fn commit(&mut self) -> Result<StateCommitMetrics> {
        let started = Instant::now();
        let version = self.version + 1;
        let mut chains = self.chains.clone();
        let snapshots_adopted = self.adopt_finished(&mut chains).await?;
        let (mut rows_updated, mut rows_removed) = (0, 0);
        let mut jobs = Vec::new();
        let mut work_rows = 0;
        let delta_path = shared_delta_path(&self.dir, version);
        for (p, part) in self.partitions.iter().enumerate() {
            let (updated, removed) = part.change_counts();
            (rows_updated, rows_removed) = (rows_updated + updated, rows_removed + removed);
            if updated + removed > 0 {
                work_rows += (updated + removed) as usize;
                let id = FileId {
                    path: delta_path.clone(),
                    part: None,
                    kind: FileKind::Delta,
                    partition: p,
                    version,
                };
                jobs.push((part, id));
            }
        }
        let encoded =
            parallel::map_parallel(jobs, work_rows >= PARALLEL_COMMIT_ROWS, |(part, id)| {
                let (bytes, rows) = files::encode(&id, part.changes())?;
                Ok((id, bytes, rows))
            })
            .into_iter()
            .collect::<Result<Vec<(FileId, Bytes, u64)>>>()?;

        let mut metrics = StateCommitMetrics {
            version,
            rows_updated,
            rows_removed,
            snapshots_adopted,
            ..Default::default()
        };
        // One file for the version: the partitions' parts one after the
        // other.
        let mut parts = Vec::with_capacity(encoded.len());
        for (id, bytes, rows) in encoded {
            let file = FileRef {
                version,
                rows,
                bytes: bytes.len() as u64,
                crc32: crc32fast::hash(&bytes),
                tag: None,
                offset: Some(metrics.bytes_written),
            };
            chains[id.partition].deltas.push(file);
            metrics.partitions_written += 1;
            metrics.bytes_written += file.bytes;
            parts.push(bytes);
        }
        for (chain, part) in chains.iter_mut().zip(&self.partitions) {
            chain.live_rows = part.len() as u64;
            if chain.live_rows == 0 {
                // Nothing to replay: the partition simply starts empty.
                *chain = PartitionChain::default();
            }
        }

        // A new value layout is recorded before the first version written
        // in it (and a return to an earlier one undoes an unfinished
        // change).
        if self.metadata.value_schema_at(version) != self.schema.value.as_ref() {
            let updated = self
                .metadata
                .with_value_schema_from(version, &self.schema.value);
            self.dir
                .overwrite(
                    METADATA_FILE,
                    METADATA_KIND,
                    files::FORMAT_VERSION,
                    &updated,
                )
                .await?;
            self.metadata = updated;
        }
        // The delta file and the commit file listing it are written at
        // once: nothing reads the new version before both writes returned.
        // The engine opens a version only once the batch after it is
        // logged (written after this commit returns), and a batch that
        // dies before then is run again over the version before, whose
        // files are untouched; its commit rewrites both files. So a crash
        // that leaves this commit file without its delta file, or the
        // delta without the commit, leaves nothing anyone opens.
        let write_delta = async {
            if parts.is_empty() {
                return Ok(());
            }
            let payload = PutPayload::from_iter(parts);
            (self.dir)
                .put_bytes(&delta_path, payload, PutMode::Overwrite)
                .await
        };
        futures::try_join!(write_delta, write_commit(&self.dir, version, &chains))?;
        self.listings().record(version, &chains);

        self.version = version;
        self.chains = chains;
        for part in &mut self.partitions {
            part.clear_changes();
        }
        metrics.snapshots_started = self.start_snapshots();
        metrics.commit_time_ms = started.elapsed().as_millis() as u64;
        self.last_commit = Some(metrics);
        Ok(metrics)
    }

    /// Starts a background snapshot of every partition that is due one
    /// (see [`StateStoreConfig::snapshot_interval`]) and is not being
    /// snapshotted already, or whose chain is [`overdue`] while its
    /// snapshot waits for idle CPU time. Returns how many started.
    ///
    /// Snapshots are written off the commit path: once a partition's chain
    /// holds `snapshot_interval` deltas (and, for a partition that has a
    /// snapshot, rows worth rewriting it for), a background task (on the
    /// tokio runtime, its CPU work on the blocking pool) merges the chain's
    /// files into a snapshot of the version just committed, and a later
    /// commit that finds it done lists the snapshot in place of the files
    /// it replaces. The merging runs on the process's maintenance thread,
    /// on CPU time batches leave idle; a partition whose chain has grown to
    /// twice [`StateStoreConfig::max_snapshot_interval`] because no idle
    /// time came gets a snapshot at a normal priority on the blocking pool.
    /// That bounds the files a load reads without a commit ever rewriting
    /// the state (Spark's state store maintenance task does the same).
    fn start_snapshots(&mut self) -> usize {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return 0;
        };
        let mut started = 0;
        for (p, chain) in self.chains.iter().enumerate() {
            let due = snapshot_due(chain, &self.config, self.version, p);
            let urgent = overdue(chain, &self.config);
            // An urgent snapshot may start beside one waiting for idle
            // time, never beside another urgent one.
            let busy = self
                .compactions
                .iter()
                .any(|c| c.partition == p && (c.urgent || !urgent));
            if !due || busy {
                continue;
            }
            let id = own_file(
                &self.dir,
                p,
                FileKind::Snapshot,
                self.version,
                Some(self.tag),
            );
            let task = runtime.spawn(snapshot(
                self.dir.clone(),
                id.clone(),
                chain.clone(),
                urgent,
            ));
            self.compactions.push(Compaction {
                partition: p,
                urgent,
                version: self.version,
                id,
                inputs: chain.files().map(|(_, file)| *file).collect(),
                progress: Progress::Running(task),
            });
            started += 1;
        }
        started
    }

    /// Lists the finished background snapshots in `chains` in place of the
    /// files they replace. Returns how many were adopted; fails with the
    /// first failed snapshot's error.
    async fn adopt_finished(&mut self, chains: &mut [PartitionChain]) -> Result<usize> {
        let mut adopted = 0;
        for mut compaction in std::mem::take(&mut self.compactions) {
            compaction.settle(false).await;
            match compaction.progress {
                Progress::Running(_) => self.compactions.push(compaction),
                Progress::Done(result) => {
                    let file = result?;
                    let chain = &mut chains[compaction.partition];
                    // A partition emptied meanwhile starts over without
                    // files: the snapshot no longer applies (purge drops it).
                    let starts_with_inputs = chain
                        .files()
                        .map(|(_, f)| *f)
                        .take(compaction.inputs.len())
                        .eq(compaction.inputs.iter().copied());
                    if starts_with_inputs {
                        chain.snapshot = Some(file);
                        chain.deltas.retain(|d| d.version > compaction.version);
                        adopted += 1;
                    }
                }
            }
        }
        Ok(adopted)
    }

    /// Waits for the snapshots being written in the background (the next
    /// commit lists them). Returns how many there are.
    pub async fn finish_snapshots(&mut self) -> Result<usize> {
        for compaction in &mut self.compactions {
            compaction.settle(true).await;
            if let Progress::Done(Err(e)) = &compaction.progress {
                return Err(StateError::Snapshot {
                    path: compaction.id.path.clone(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(self.compactions.len())
    }

    fn listings(&self) -> std::sync::MutexGuard<'_, Listings> {
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes the files no longer needed to load any version at or above
    /// `keep_from_version` (which is capped at [`version`](StateStore::version)):
    /// the commit files of older versions, and every data file at or below
    /// `keep_from_version` that no remaining version lists (older
    /// snapshots, the deltas before them, files of crashed attempts and of
    /// abandoned background snapshots). Returns how many files were
    /// deleted.
    ///
    /// Versions below `keep_from_version` can no longer be opened
    /// afterwards; opening one fails naming its missing commit file.
    ///
    /// The store remembers what the versions it opened and committed list,
    /// so a purge reads only the commit files of kept versions older than
    /// the one it opened (on its first purge) and of newer ones left by an
    /// unfinished attempt: its cost does not grow with the length of the
    /// partitions' chains.
    pub async fn purge(&self, keep_from_version: u64) -> Result<usize> {
        let keep = keep_from_version.min(self.version);
        if keep == 0 {
            return Ok(0);
        }
        let names = self.dir.list_names().await?;
        let versions: Vec<u64> = names
            .iter()
            .filter_map(|name| parse_commit_file_name(name))
            .collect();
        // Every file a version from `keep` on lists (a snapshot written in
        // the background is listed from a later version than its own), and
        // the snapshots being written. The versions this store opened or
        // committed are recorded; only the others' commit files are read:
        // older kept ones (once, after opening), and newer ones left by an
        // attempt that did not finish (kept until overwritten).
        let recorded = self.listings().from()..=self.version;
        let num_partitions = self.partitions.len();
        let unrecorded: Vec<(u64, Vec<PartitionChain>)> = stream::iter(
            versions
                .iter()
                .copied()
                .filter(|v| *v >= keep && !recorded.contains(v)),
        )
        .map(|v| async move {
            Ok::<_, StateError>((v, read_commit(&self.dir, v, num_partitions).await?))
        })
        .buffered(LOAD_CONCURRENCY)
        .try_collect()
        .await?;
        let mut needed = {
            let mut listings = self.listings();
            for (v, chains) in unrecorded.iter().filter(|(v, _)| *v < self.version) {
                listings.record(*v, chains);
            }
            listings.needed_from(keep)
        };
        for (_, chains) in unrecorded.iter().filter(|(v, _)| *v > self.version) {
            needed.extend(listings::keys(chains));
        }
        needed.extend(self.compactions.iter().map(|c| {
            (
                Some(c.partition),
                c.version,
                FileKind::Snapshot,
                Some(self.tag),
            )
        }));
        // Commit files first: a version is then either loadable or clearly
        // gone, never listing files that were deleted.
        let mut deleted = 0;
        for v in versions.into_iter().filter(|v| *v < keep) {
            self.dir.delete(&commit_file_name(v)).await?;
            deleted += 1;
        }
        // The versions' shared delta files, then the partitions' own files.
        for name in &names {
            let Some((version, kind, tag)) = FileKind::parse_file_name(name) else {
                continue;
            };
            if version <= keep && !needed.contains(&(None, version, kind, tag)) {
                self.dir.delete(name).await?;
                deleted += 1;
            }
        }
        let needed = &needed;
        let per_partition = try_join_all((0..num_partitions).map(|p| {
            let dir = self.dir.child(&p.to_string());
            async move {
                let mut deleted = 0;
                for name in dir.list_names().await? {
                    let Some((version, kind, tag)) = FileKind::parse_file_name(&name) else {
                        continue;
                    };
                    if version <= keep && !needed.contains(&(Some(p), version, kind, tag)) {
                        dir.delete(&name).await?;
                        deleted += 1;
                    }
                }
                Ok::<_, StateError>(deleted)
            }
        }))
        .await?;
        self.listings().forget_before(keep);
        Ok(deleted + per_partition.into_iter().sum::<usize>())
    }
}

/// Checks the store's `_metadata` against the one wanted, writing it for a
/// new store (opened at version 0).
async fn check_metadata(
    dir: &CheckpointDir,
    wanted: &StoreMetadata,
    version: u64,
) -> Result<StoreMetadata> {
    let path = dir.path(METADATA_FILE);
    let read = || read_metadata(dir);
    let found = match read().await? {
        Some(found) => found,
        None if version == 0 => {
            match dir
                .create(METADATA_FILE, METADATA_KIND, files::FORMAT_VERSION, wanted)
                .await
            {
                Ok(()) => return Ok(wanted.clone()),
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
    found.check_compatible(wanted, version, &path)?;
    Ok(found)
}

/// A snapshot's rows for each row its deltas must hold before the next
/// snapshot (unless the chain reaches the maximum interval).
const SNAPSHOT_ROWS_PER_DELTA_ROW: u64 = 10;

/// Whether partition `p`, whose files at `version` are `chain`, is due a
/// snapshot: its chain holds at least `snapshot_interval` deltas, it is the
/// partition's turn (`(version + p) % snapshot_interval == 0`, or the chain
/// has grown to twice the interval), and its deltas hold a tenth of the
/// last snapshot's rows or the chain has reached `max_snapshot_interval`.
fn snapshot_due(chain: &PartitionChain, config: &StateStoreConfig, version: u64, p: usize) -> bool {
    let interval = config.snapshot_interval.get();
    let deltas = chain.deltas.len() as u64;
    let turn = (version + p as u64).is_multiple_of(interval) || deltas >= 2 * interval;
    let delta_rows: u64 = chain.deltas.iter().map(|d| d.rows).sum();
    let worth_it = match &chain.snapshot {
        None => true,
        Some(snapshot) => {
            delta_rows.saturating_mul(SNAPSHOT_ROWS_PER_DELTA_ROW) >= snapshot.rows
                || deltas >= config.max_snapshot_interval.get()
        }
    };
    deltas >= interval && turn && worth_it
}

/// Whether partition `chain`'s snapshot is overdue: its chain has grown to
/// twice [`StateStoreConfig::max_snapshot_interval`], as when a machine
/// busy with batches leaves the maintenance thread no idle time. Its
/// snapshot then runs at a normal priority, so that loads and commit files
/// stay bounded.
fn overdue(chain: &PartitionChain, config: &StateStoreConfig) -> bool {
    chain.deltas.len() as u64 >= 2 * config.max_snapshot_interval.get()
}

/// Writes the snapshot `id` of a partition: the merge of the files of
/// `chain` (the partition at `id.version`). Runs in the background; the
/// decoding, merging and encoding run on the maintenance thread, on idle
/// CPU time, or when `urgent` on the blocking pool at a normal priority.
async fn snapshot(
    dir: CheckpointDir,
    id: FileId,
    chain: PartitionChain,
    urgent: bool,
) -> Result<FileRef> {
    let commit_name = commit_file_name(id.version);
    let wanted: Vec<(FileId, FileRef)> = chain
        .files()
        .map(|(kind, file)| (locate(&dir, id.partition, kind, file), *file))
        .collect();
    let fetched = fetch_all(&dir, &wanted, &commit_name).await?;
    let inputs: Vec<(FileId, FileRef, Bytes)> = wanted
        .into_iter()
        .zip(fetched)
        .map(|((input, file), bytes)| (input, file, bytes))
        .collect();
    let merge_id = id.clone();
    let commit_path = dir.path(&commit_name);
    let merge = move || merge_chain(&merge_id, &inputs, chain.live_rows, &commit_path);
    let merged = if urgent {
        tokio::task::spawn_blocking(merge).await.ok()
    } else {
        maintenance::run(merge).await.ok()
    };
    let (bytes, rows) = merged.ok_or_else(|| StateError::Snapshot {
        path: id.path.clone(),
        reason: "merging the partition's files panicked".into(),
    })??;
    let file = FileRef {
        version: id.version,
        rows,
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
        tag: file_tag(&id),
        offset: None,
    };
    dir.put_bytes(&id.path, bytes, PutMode::Overwrite).await?;
    Ok(file)
}

/// The tag in a file's name.
fn file_tag(id: &FileId) -> Option<u64> {
    let name = id.path.filename()?;
    FileKind::parse_file_name(name).and_then(|(_, _, tag)| tag)
}

/// Encodes as snapshot `id` what the data files `inputs` (a snapshot, if
/// any, then deltas in order) add up to: one row per live key, the last
/// file's row winning. Checks each file's row count and the result's
/// against what `commit_name` recorded (`live_rows`).
fn merge_chain(
    id: &FileId,
    inputs: &[(FileId, FileRef, Bytes)],
    live_rows: u64,
    commit_path: &object_store::path::Path,
) -> Result<(Bytes, u64)> {
    let commit_name = commit_path.filename().unwrap_or_default();
    let mut read = Vec::with_capacity(inputs.len());
    for (input, file, bytes) in inputs {
        let batches = files::read(input, bytes)?;
        let rows: u64 = batches.iter().map(|b| b.len() as u64).sum();
        if rows != file.rows {
            return Err(input.corrupt(format!(
                "holds {rows} rows, but {commit_name} recorded {}",
                file.rows
            )));
        }
        read.push((input.kind, batches));
    }
    // The deltas' last word per key; then the snapshot's rows they do not
    // override, then the keys only the deltas set. The table holds
    // positions (batch, row) of delta rows, 8 bytes an entry, so that it
    // stays in cache longer than one of keys and rows would.
    let deltas: Vec<&files::Columns> = read
        .iter()
        .filter(|(kind, _)| *kind == FileKind::Delta)
        .flat_map(|(_, batches)| batches)
        .collect();
    let delta_key = |&(b, r): &(u32, u32)| deltas[b as usize].key(r as usize);
    let hash = partition::hash_key;
    let delta_rows: usize = deltas.iter().map(|c| c.len()).sum();
    let mut latest: hashbrown::HashTable<(u32, u32)> =
        hashbrown::HashTable::with_capacity(delta_rows);
    for (b, columns) in deltas.iter().enumerate() {
        for r in 0..columns.len() {
            let key = columns.key(r);
            let at = (b as u32, r as u32);
            match latest.entry(hash(key), |p| delta_key(p) == key, |p| hash(delta_key(p))) {
                hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = at,
                hashbrown::hash_table::Entry::Vacant(e) => {
                    e.insert(at);
                }
            }
        }
    }
    let base = read
        .iter()
        .filter(|(kind, _)| *kind == FileKind::Snapshot)
        .flat_map(|(_, batches)| batches.iter().flat_map(files::Columns::rows));
    let kept = base.filter(|row| {
        latest
            .find(hash(row.key), |p| delta_key(p) == row.key)
            .is_none()
    });
    let from_deltas = latest
        .iter()
        .map(|&(b, r)| deltas[b as usize].row(r as usize))
        .filter(|row| row.value.is_some());
    let (bytes, rows) = files::encode(id, kept.chain(from_deltas))?;
    if rows != live_rows {
        return Err(StateError::Corrupt {
            path: commit_path.clone(),
            reason: format!(
                "the files of partition {} at version {} add up to {rows} entries, but {commit_name} recorded {live_rows}",
                id.partition, id.version
            ),
        });
    }
    Ok((bytes, rows))
}

/// Loads every partition at `version` from the files of `chains`.
async fn load_partitions(
    dir: &CheckpointDir,
    chains: &[PartitionChain],
    version: u64,
    partition_suffix: usize,
) -> Result<Vec<StatePartition>> {
    let num_partitions = chains.len();
    let commit_name = commit_file_name(version);
    let wanted: Vec<(FileId, FileRef)> = chains
        .iter()
        .enumerate()
        .flat_map(|(p, chain)| {
            chain
                .files()
                .map(move |(kind, file)| (locate(dir, p, kind, file), *file))
        })
        .collect();
    let fetched = fetch_all(dir, &wanted, &commit_name).await?;
    let total_bytes: u64 = wanted.iter().map(|(_, file)| file.bytes).sum();
    let mut per_partition: Vec<Vec<(FileId, FileRef, Bytes)>> =
        (0..num_partitions).map(|_| Vec::new()).collect();
    for ((id, file), bytes) in wanted.into_iter().zip(fetched) {
        per_partition[id.partition].push((id, file, bytes));
    }
    let jobs: Vec<_> = per_partition.into_iter().enumerate().collect();
    parallel::map_parallel(jobs, total_bytes >= PARALLEL_LOAD_BYTES, |(p, files)| {
        let mut part = StatePartition::new(p, num_partitions, partition_suffix);
        part.reserve(chains[p].live_rows as usize);
        for (id, file, bytes) in files {
            let rows = files::decode(&id, &bytes, |row| part.apply_loaded(row))?;
            if rows != file.rows {
                return Err(id.corrupt(format!(
                    "holds {rows} rows, but {commit_name} recorded {}",
                    file.rows
                )));
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
