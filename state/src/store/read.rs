//! Reading the entries of a committed version without opening the store:
//! for tools that look at a checkpoint (`tidemill state`), also while a
//! query runs on it.

use super::manifest::{
    METADATA_FILE, PartitionChain, StoreMetadata, parse_commit_file_name, read_commit,
    read_metadata,
};
use super::{StateEntry, StatePartition, StateSchema, StateStore, load_partitions};
use crate::{CheckpointDir, Result, StateError};

/// Every live entry of one committed version of a state store, from
/// [`StateStore::read_entries`].
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
/// let mut store = StateStore::open(dir.clone(), schema.clone(), StateStoreConfig::default(), 0).await?;
/// store.put_with_ttl(b"AAPL", b"1", 60_000);
/// store.commit().await?;
///
/// let read = StateStore::read_entries(&dir, 1).await?;
/// assert_eq!(read.schema, schema);
/// let (_partition, entry) = read.iter().next().unwrap();
/// assert_eq!((entry.key, entry.value, entry.expires_at_ms), (&b"AAPL"[..], &b"1"[..], Some(60_000)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct StoredEntries {
    /// The version read.
    pub version: u64,
    /// The layout the store's `_metadata` records for the version: what
    /// its key and value bytes encode.
    pub schema: StateSchema,
    partitions: Vec<StatePartition>,
}

impl StoredEntries {
    /// The store's partition count.
    pub fn num_partitions(&self) -> usize {
        self.partitions.len()
    }

    /// The number of live entries.
    pub fn len(&self) -> usize {
        self.partitions.iter().map(StatePartition::len).sum()
    }

    /// Whether there is no live entry.
    pub fn is_empty(&self) -> bool {
        self.partitions.iter().all(StatePartition::is_empty)
    }

    /// Every live entry with its partition number: partition by partition,
    /// in no particular order within one. Entries past their expiry that
    /// the version still holds are included (as
    /// [`StateStore::iter`] includes them).
    pub fn iter(&self) -> impl Iterator<Item = (usize, StateEntry<'_>)> + '_ {
        self.partitions
            .iter()
            .enumerate()
            .flat_map(|(p, part)| part.iter().map(move |entry| (p, entry)))
    }
}

impl StateStore {
    /// Reads every entry of version `version` of the store in `dir`, with
    /// the layout its `_metadata` records, without opening the store: it
    /// takes no lock and writes nothing (unlike [`open`](StateStore::open),
    /// which writes `_metadata` for a new store), so it can read the store
    /// of a query that is running.
    ///
    /// Reads `_metadata`, the version's commit file and exactly the data
    /// files it lists, checked as [`open`](StateStore::open) checks them.
    /// Version 0 is the empty state. Fails with [`StateError::Corrupt`]
    /// naming the file if `_metadata` or the version's commit file is
    /// missing (never committed, or purged: see
    /// [`retained_versions`](StateStore::retained_versions)) or a file is
    /// truncated or altered, and with [`StateError::Incompatible`] if the
    /// store was written in a format this build does not read.
    pub async fn read_entries(dir: &CheckpointDir, version: u64) -> Result<StoredEntries> {
        let metadata = read_checked_metadata(dir, version).await?;
        let schema = metadata.schema_at(version);
        let chains = if version <= metadata.created_at_version {
            vec![PartitionChain::default(); metadata.num_partitions]
        } else {
            read_commit(dir, version, metadata.num_partitions).await?
        };
        let partitions = load_partitions(dir, &chains, version, schema.partition_suffix).await?;
        Ok(StoredEntries {
            version,
            schema,
            partitions,
        })
    }

    /// The layout of version `version`'s entries in the store in `dir`,
    /// as its `_metadata` records it: what their key and value bytes encode
    /// (a store whose value layout changed records each layout from the
    /// version it was first written at; `u64::MAX` gives the latest).
    /// Reads that one file; fails as
    /// [`read_entries`](StateStore::read_entries) does if it is missing or
    /// damaged.
    pub async fn read_schema(dir: &CheckpointDir, version: u64) -> Result<StateSchema> {
        Ok(read_checked_metadata(dir, version)
            .await?
            .schema_at(version))
    }

    /// The versions of the store in `dir` that can be read (or opened):
    /// those whose commit file is there, ascending. Version 0, the empty
    /// state, has no commit file and is not listed. Only lists the
    /// directory; a version is gone once a purge deleted its commit file.
    pub async fn retained_versions(dir: &CheckpointDir) -> Result<Vec<u64>> {
        let mut versions: Vec<u64> = dir
            .list_names()
            .await?
            .iter()
            .filter_map(|name| parse_commit_file_name(name))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }
}

/// The `_metadata` of the store in `dir`, in a format this build reads;
/// missing is corrupt (for reading `version`).
async fn read_checked_metadata(dir: &CheckpointDir, version: u64) -> Result<StoreMetadata> {
    let path = dir.path(METADATA_FILE);
    let metadata = read_metadata(dir)
        .await?
        .ok_or_else(|| StateError::Corrupt {
            path: path.clone(),
            reason: format!("missing: cannot read version {version} of a state store without it"),
        })?;
    metadata.check_format(&path)?;
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use object_store::{ObjectStore, memory::InMemory, path::Path};

    use super::*;
    use crate::{StateStoreConfig, partition_for_key};

    fn schema() -> StateSchema {
        StateSchema::new(
            Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)])),
            Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)])),
        )
    }

    /// Every object in `store` with its bytes.
    async fn files(store: &InMemory) -> BTreeMap<String, Vec<u8>> {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
        let mut all = BTreeMap::new();
        for meta in metas {
            let bytes = store.get(&meta.location).await.unwrap().bytes().await;
            all.insert(meta.location.to_string(), bytes.unwrap().to_vec());
        }
        all
    }

    /// The entries read, by key: (partition, value, expiry).
    fn by_key(read: &StoredEntries) -> BTreeMap<Vec<u8>, (usize, Vec<u8>, Option<i64>)> {
        read.iter()
            .map(|(p, e)| (e.key.to_vec(), (p, e.value.to_vec(), e.expires_at_ms)))
            .collect()
    }

    #[tokio::test]
    async fn reads_each_version_as_committed_and_writes_nothing() {
        let store = Arc::new(InMemory::new());
        let dir = CheckpointDir::new(store.clone(), Path::from("chk/state/0"));
        let config = StateStoreConfig::default();
        let mut writer = StateStore::open(dir.clone(), schema(), config, 0)
            .await
            .unwrap();
        writer.put(b"a", b"1");
        writer.put_with_ttl(b"b", b"2", 5_000);
        writer.commit().await.unwrap();
        writer.put(b"a", b"3");
        writer.remove(b"b");
        writer.put(b"c", b"4");
        writer.commit().await.unwrap();

        let before = files(&store).await;
        let v0 = StateStore::read_entries(&dir, 0).await.unwrap();
        assert!(v0.is_empty());
        assert_eq!(v0.num_partitions(), config.num_partitions.get());
        let v1 = StateStore::read_entries(&dir, 1).await.unwrap();
        assert_eq!(v1.schema, schema());
        assert_eq!(v1.len(), 2);
        let n = config.num_partitions.get();
        assert_eq!(
            by_key(&v1),
            BTreeMap::from([
                (
                    b"a".to_vec(),
                    (partition_for_key(b"a", n), b"1".to_vec(), None)
                ),
                (
                    b"b".to_vec(),
                    (partition_for_key(b"b", n), b"2".to_vec(), Some(5_000))
                ),
            ])
        );
        let v2 = StateStore::read_entries(&dir, 2).await.unwrap();
        assert_eq!(
            by_key(&v2),
            BTreeMap::from([
                (
                    b"a".to_vec(),
                    (partition_for_key(b"a", n), b"3".to_vec(), None)
                ),
                (
                    b"c".to_vec(),
                    (partition_for_key(b"c", n), b"4".to_vec(), None)
                ),
            ])
        );
        assert_eq!(
            StateStore::retained_versions(&dir).await.unwrap(),
            vec![1, 2]
        );
        let err = StateStore::read_entries(&dir, 3).await.unwrap_err();
        assert!(err.to_string().contains("chk/state/0/3.commit"), "{err}");
        assert_eq!(files(&store).await, before);

        // Purged versions are gone from the list, and cannot be read.
        writer.purge(2).await.unwrap();
        assert_eq!(StateStore::retained_versions(&dir).await.unwrap(), vec![2]);
        let err = StateStore::read_entries(&dir, 1).await.unwrap_err();
        assert!(err.to_string().contains("purged"), "{err}");
    }

    #[tokio::test]
    async fn a_store_without_metadata_is_not_created() {
        let store = Arc::new(InMemory::new());
        let dir = CheckpointDir::new(store.clone(), Path::from("chk/state/0"));
        let err = StateStore::read_entries(&dir, 0).await.unwrap_err();
        assert!(
            matches!(&err, StateError::Corrupt { path, .. } if path.as_ref() == "chk/state/0/_metadata"),
            "{err}"
        );
        let err = StateStore::read_schema(&dir, 0).await.unwrap_err();
        assert!(err.to_string().contains("_metadata': missing"), "{err}");
        assert!(files(&store).await.is_empty());
        assert!(
            StateStore::retained_versions(&dir)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn keeps_the_partition_suffix() {
        let dir = CheckpointDir::new(Arc::new(InMemory::new()), Path::from("s"));
        let schema = schema().with_partition_suffix(1);
        let config = StateStoreConfig::default();
        let mut writer = StateStore::open(dir.clone(), schema.clone(), config, 0)
            .await
            .unwrap();
        writer.put(b"ab", b"");
        writer.commit().await.unwrap();
        let read = StateStore::read_entries(&dir, 1).await.unwrap();
        assert_eq!(read.schema, schema);
        assert_eq!(StateStore::read_schema(&dir, 1).await.unwrap(), schema);
        let (p, entry) = read.iter().next().unwrap();
        assert_eq!(p, partition_for_key(b"a", config.num_partitions.get()));
        assert_eq!(entry.value, b"");
    }
}
