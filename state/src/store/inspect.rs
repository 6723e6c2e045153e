//! What a committed version of a store holds, read from its small JSON
//! files alone: for inspecting a checkpoint (`tidemill status`) while a
//! query may be running on it.

use std::collections::HashSet;

use super::StateStore;
use super::listings::keys;
use super::manifest::{METADATA_FILE, read_commit, read_metadata};
use crate::{CheckpointDir, Result, StateError};

/// What one committed version of a state store holds, as its `_metadata`
/// and its commit file record it, from [`StateStore::inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVersionInfo {
    /// The version described.
    pub version: u64,
    /// The store's partition count (0 for a store whose `_metadata` was
    /// never written: one opened by no query yet).
    pub num_partitions: usize,
    /// Partitions holding at least one entry at the version.
    pub partitions_with_rows: usize,
    /// Live entries at the version.
    pub rows: u64,
    /// The data files (deltas and snapshots) the version is loaded from.
    pub data_files: usize,
    /// Their bytes: what loading the version reads.
    pub data_bytes: u64,
    /// The names of the columns the keys encode.
    pub key_columns: Vec<String>,
    /// The names of the columns the values encode.
    pub value_columns: Vec<String>,
}

impl StateStore {
    /// Describes version `version` of the store in `dir` from its
    /// `_metadata` and `<version>.commit` alone, without loading any entry:
    /// it reads two small files, takes no lock and writes nothing, so it
    /// can look at the store of a query that is running.
    ///
    /// Version 0 is the empty state (no commit file). Fails as
    /// [`open`](StateStore::open) does, with [`StateError::Corrupt`] naming
    /// the file if `_metadata` or the version's commit file is missing
    /// (never committed, or purged), truncated or altered.
    pub async fn inspect(dir: &CheckpointDir, version: u64) -> Result<StateVersionInfo> {
        let Some(metadata) = read_metadata(dir).await? else {
            if version == 0 {
                return Ok(StateVersionInfo {
                    version,
                    num_partitions: 0,
                    partitions_with_rows: 0,
                    rows: 0,
                    data_files: 0,
                    data_bytes: 0,
                    key_columns: Vec::new(),
                    value_columns: Vec::new(),
                });
            }
            return Err(StateError::Corrupt {
                path: dir.path(METADATA_FILE),
                reason: format!(
                    "missing: cannot describe version {version} of a state store without it"
                ),
            });
        };
        let names = |schema: &arrow_schema::Schema| {
            schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        };
        let mut info = StateVersionInfo {
            version,
            num_partitions: metadata.num_partitions,
            partitions_with_rows: 0,
            rows: 0,
            data_files: 0,
            data_bytes: 0,
            key_columns: names(&metadata.key_schema),
            value_columns: names(metadata.value_schema_at(version)),
        };
        if version <= metadata.created_at_version {
            return Ok(info);
        }
        let chains = read_commit(dir, version, metadata.num_partitions).await?;
        for chain in &chains {
            info.rows += chain.live_rows;
            info.partitions_with_rows += usize::from(chain.live_rows > 0);
            info.data_bytes += chain.files().map(|(_, f)| f.bytes).sum::<u64>();
        }
        info.data_files = keys(&chains).collect::<HashSet<_>>().len();
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use object_store::{memory::InMemory, path::Path};

    use super::*;
    use crate::{StateSchema, StateStoreConfig};

    #[tokio::test]
    async fn describes_versions_without_writing() {
        let dir = CheckpointDir::new(Arc::new(InMemory::new()), Path::from("chk/state/0"));
        // Nothing written yet: version 0 is empty, others are missing.
        let empty = StateStore::inspect(&dir, 0).await.unwrap();
        assert_eq!((empty.rows, empty.num_partitions), (0, 0));
        let err = StateStore::inspect(&dir, 1).await.unwrap_err();
        assert!(err.to_string().contains("chk/state/0/_metadata"), "{err}");
        assert!(dir.list_names().await.unwrap().is_empty());

        let schema = StateSchema::new(
            Arc::new(Schema::new(vec![Field::new(
                "symbol",
                DataType::Utf8,
                false,
            )])),
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)])),
        );
        let config = StateStoreConfig::default();
        let mut store = StateStore::open(dir.clone(), schema, config, 0)
            .await
            .unwrap();
        for key in [b"a", b"b", b"c"] {
            store.put(key, b"1");
        }
        store.commit().await.unwrap();
        store.put(b"a", b"2");
        store.put(b"d", b"1");
        store.commit().await.unwrap();

        let before = dir.list_names().await.unwrap();
        let v1 = StateStore::inspect(&dir, 1).await.unwrap();
        assert_eq!(v1.rows, 3);
        assert_eq!(v1.num_partitions, config.num_partitions.get());
        assert_eq!(v1.key_columns, ["symbol"]);
        assert_eq!(v1.value_columns, ["n"]);
        assert_eq!(v1.data_files, 1, "{v1:?}");
        assert!(v1.data_bytes > 0);
        let v2 = StateStore::inspect(&dir, 2).await.unwrap();
        assert_eq!(v2.rows, 4);
        assert_eq!(v2.data_files, 2, "{v2:?}");
        assert!(v2.data_bytes > v1.data_bytes);
        assert!(v2.partitions_with_rows >= v1.partitions_with_rows);
        assert!(v2.partitions_with_rows <= 4);
        assert_eq!(dir.list_names().await.unwrap(), before);

        let err = StateStore::inspect(&dir, 3).await.unwrap_err();
        assert!(err.to_string().contains("chk/state/0/3.commit"), "{err}");
    }
}
