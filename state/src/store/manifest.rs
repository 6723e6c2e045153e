//! The store's small JSON files: `_metadata` (what the store holds) and
//! `<version>.commit` (which data files make up a version).
//!
//! Both are [`envelope`](crate::envelope) files written through
//! [`CheckpointDir`], so they are checksummed and versioned.
//!
//! A commit file lists, for every partition that holds anything at its
//! version, the partition's *chain*: the newest snapshot at or below the
//! version and the deltas after it, each with its size and CRC-32. Loading a
//! version therefore reads one commit file and then exactly the files it
//! lists; a partition it does not list is empty, and a listed file that is
//! missing or does not match its size and checksum is corruption. The commit
//! file is written last, after all data files, so it is what makes a version
//! exist.

use std::sync::Arc;

use arrow_schema::Schema;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::StateSchema;
use super::files::{FORMAT_VERSION, FileKind};
use super::schema::schema_changes;
use crate::{CheckpointDir, Result, StateError};

/// Name of the metadata file.
pub(crate) const METADATA_FILE: &str = "_metadata";
/// Envelope kinds of the two files.
pub(crate) const METADATA_KIND: &str = "state-metadata";
pub(crate) const COMMIT_KIND: &str = "state-commit";

/// The body of `_metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoreMetadata {
    pub format_version: u32,
    pub num_partitions: usize,
    pub key_schema: Schema,
    pub value_schema: Schema,
    /// [`StateSchema::partition_suffix`]; absent (0) in stores written
    /// before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub partition_suffix: usize,
    /// The version the store was created at: it holds nothing at that
    /// version or any earlier one. 0 for a store created with its query;
    /// later for one added to a query that had run (a stateful processor's
    /// new state variable, see [`StateStore::open_evolving`]).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub created_at_version: u64,
    /// The value layouts that replaced `value_schema`, in version order: a
    /// version's values are in the layout of the last change from a version
    /// at or before it, or in `value_schema` if there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub value_schema_changes: Vec<ValueSchemaChange>,
}

/// A store's value layout from a version on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ValueSchemaChange {
    /// The first version written in the layout.
    pub from_version: u64,
    /// The layout.
    pub value_schema: Schema,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl StoreMetadata {
    pub(crate) fn new(schema: &StateSchema, num_partitions: usize) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            num_partitions,
            key_schema: schema.key.as_ref().clone(),
            value_schema: schema.value.as_ref().clone(),
            partition_suffix: schema.partition_suffix,
            created_at_version: 0,
            value_schema_changes: Vec::new(),
        }
    }

    /// The layout of version `version`'s entries.
    pub(crate) fn schema_at(&self, version: u64) -> StateSchema {
        StateSchema::new(
            Arc::new(self.key_schema.clone()),
            Arc::new(self.value_schema_at(version).clone()),
        )
        .with_partition_suffix(self.partition_suffix)
    }

    /// The value layout of version `version`'s entries.
    pub(crate) fn value_schema_at(&self, version: u64) -> &Schema {
        self.value_schema_changes
            .iter()
            .rev()
            .find(|c| c.from_version <= version)
            .map_or(&self.value_schema, |c| &c.value_schema)
    }

    /// This record with values in `value_schema` from `version` on (any
    /// change recorded from that version on, by a run that did not commit
    /// it, is dropped).
    pub(crate) fn with_value_schema_from(&self, version: u64, value_schema: &Schema) -> Self {
        let mut updated = self.clone();
        updated
            .value_schema_changes
            .retain(|c| c.from_version < version);
        if updated.value_schema_at(version) != value_schema {
            updated.value_schema_changes.push(ValueSchemaChange {
                from_version: version,
                value_schema: value_schema.clone(),
            });
        }
        updated
    }

    /// Checks that this build reads the store's format version; otherwise
    /// [`StateError::Incompatible`] naming both.
    pub(crate) fn check_format(&self, path: &Path) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            return Err(StateError::Incompatible {
                path: path.clone(),
                reason: format!(
                    "state format version {} is not supported (this build reads version {})",
                    self.format_version, FORMAT_VERSION
                ),
            });
        }
        Ok(())
    }

    /// Checks that a store recorded as `self` can be opened at `version` as
    /// `wanted`; otherwise [`StateError::Incompatible`] saying what changed.
    pub(crate) fn check_compatible(
        &self,
        wanted: &StoreMetadata,
        version: u64,
        path: &Path,
    ) -> Result<()> {
        self.check_format(path)?;
        let mut changes = Vec::new();
        if self.num_partitions != wanted.num_partitions {
            changes.push(format!(
                "num_partitions changed from {} to {}",
                self.num_partitions, wanted.num_partitions
            ));
        }
        if self.partition_suffix != wanted.partition_suffix {
            changes.push(format!(
                "the key bytes that decide a partition changed (all but the last {} instead \
                 of the last {})",
                wanted.partition_suffix, self.partition_suffix
            ));
        }
        changes.extend(schema_changes("key", &self.key_schema, &wanted.key_schema));
        changes.extend(schema_changes(
            "value",
            self.value_schema_at(version),
            &wanted.value_schema,
        ));
        if changes.is_empty() {
            return Ok(());
        }
        Err(StateError::Incompatible {
            path: path.clone(),
            reason: format!(
                "the query's state layout differs from the one in the checkpoint: {} \
                 (start the query from a new checkpoint to use the new layout)",
                changes.join("; ")
            ),
        })
    }
}

/// Reads the store's `_metadata` in `dir`; `Ok(None)` if there is none.
/// Only reads.
pub(crate) async fn read_metadata(dir: &CheckpointDir) -> Result<Option<StoreMetadata>> {
    dir.read(METADATA_FILE, METADATA_KIND, FORMAT_VERSION).await
}

/// A data file as recorded in a commit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRef {
    /// The version that wrote it (its file name).
    pub version: u64,
    /// Rows in it.
    pub rows: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// CRC-32 of its bytes.
    pub crc32: u32,
    /// The writer's tag in the file name, for snapshots written in the
    /// background (see [`FileKind::file_name`](super::files::FileKind::file_name)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u64>,
    /// For a delta written as a part of its version's shared delta file
    /// (`<version>.delta` in the store's directory): where its bytes start
    /// in that file. `None` for a file of its own: a snapshot, or a delta
    /// of a store written before deltas were shared
    /// (`<partition>/<version>.delta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The files that make up one partition at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionChain {
    /// The newest snapshot at or below the version; `None`: the partition
    /// starts empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<FileRef>,
    /// The deltas after the snapshot, ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<FileRef>,
    /// Live entries in the partition at the version.
    pub live_rows: u64,
}

impl PartitionChain {
    /// Every file of the chain, in the order to apply them.
    pub(crate) fn files(&self) -> impl Iterator<Item = (FileKind, &FileRef)> + '_ {
        self.snapshot
            .iter()
            .map(|s| (FileKind::Snapshot, s))
            .chain(self.deltas.iter().map(|d| (FileKind::Delta, d)))
    }

    fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.deltas.is_empty() && self.live_rows == 0
    }
}

/// The body of `<version>.commit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CommitRecord {
    pub version: u64,
    pub num_partitions: usize,
    /// The non-empty partitions' chains.
    pub partitions: Vec<PartitionEntry>,
}

/// One partition's chain in a [`CommitRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartitionEntry {
    pub partition: usize,
    #[serde(flatten)]
    pub chain: PartitionChain,
}

/// The commit file name of `version`: `7.commit`.
pub(crate) fn commit_file_name(version: u64) -> String {
    format!("{version}.commit")
}

/// Parses a name made by [`commit_file_name`].
pub(crate) fn parse_commit_file_name(name: &str) -> Option<u64> {
    let version = name.strip_suffix(".commit")?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    version.parse().ok()
}

impl CommitRecord {
    pub(crate) fn new(version: u64, chains: &[PartitionChain]) -> Self {
        Self {
            version,
            num_partitions: chains.len(),
            partitions: chains
                .iter()
                .enumerate()
                .filter(|(_, chain)| !chain.is_empty())
                .map(|(partition, chain)| PartitionEntry {
                    partition,
                    chain: chain.clone(),
                })
                .collect(),
        }
    }

    /// The chains of all `num_partitions` partitions, after checking that
    /// the record is consistent and belongs to `version`.
    fn into_chains(
        self,
        path: &Path,
        version: u64,
        num_partitions: usize,
    ) -> Result<Vec<PartitionChain>> {
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.clone(),
            reason,
        };
        if self.version != version {
            return Err(corrupt(format!(
                "records version {}, expected {version}",
                self.version
            )));
        }
        if self.num_partitions != num_partitions {
            return Err(corrupt(format!(
                "records {} partitions, but the store's _metadata has {num_partitions}",
                self.num_partitions
            )));
        }
        let mut chains = vec![PartitionChain::default(); num_partitions];
        let mut seen = vec![false; num_partitions];
        for PartitionEntry { partition, chain } in self.partitions {
            if partition >= num_partitions || std::mem::replace(&mut seen[partition], true) {
                return Err(corrupt(format!(
                    "lists partition {partition} twice or out of range"
                )));
            }
            let mut previous = None;
            for (_, file) in chain.files() {
                if file.version > version || previous.is_some_and(|p| file.version <= p) {
                    return Err(corrupt(format!(
                        "partition {partition} lists files out of order or above version {version}"
                    )));
                }
                previous = Some(file.version);
            }
            chains[partition] = chain;
        }
        Ok(chains)
    }
}

/// Reads the chains of every partition at `version` from its commit file.
pub(crate) async fn read_commit(
    dir: &CheckpointDir,
    version: u64,
    num_partitions: usize,
) -> Result<Vec<PartitionChain>> {
    let name = commit_file_name(version);
    let path = dir.path(&name);
    match dir
        .read::<CommitRecord>(&name, COMMIT_KIND, FORMAT_VERSION)
        .await?
    {
        Some(record) => record.into_chains(&path, version, num_partitions),
        None => Err(StateError::Corrupt {
            path,
            reason: format!(
                "missing: version {version} of this state store was never committed, or has been purged"
            ),
        }),
    }
}

/// Writes (or, when a version is re-run, replaces) the commit file of
/// `version`.
pub(crate) async fn write_commit(
    dir: &CheckpointDir,
    version: u64,
    chains: &[PartitionChain],
) -> Result<()> {
    dir.overwrite(
        &commit_file_name(version),
        COMMIT_KIND,
        FORMAT_VERSION,
        &CommitRecord::new(version, chains),
    )
    .await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use arrow_schema::{DataType, Field};

    /// A file of `version` with made-up figures.
    pub(crate) fn file(version: u64) -> FileRef {
        FileRef {
            version,
            rows: 1,
            bytes: 10,
            crc32: 7,
            tag: None,
            offset: None,
        }
    }

    #[test]
    fn commit_record_round_trips_and_skips_empty_partitions() {
        let chains = vec![
            PartitionChain::default(),
            PartitionChain {
                snapshot: Some(file(3)),
                deltas: vec![file(4), file(6)],
                live_rows: 5,
            },
            PartitionChain {
                snapshot: None,
                deltas: vec![file(2)],
                live_rows: 0,
            },
        ];
        let record = CommitRecord::new(6, &chains);
        assert_eq!(record.partitions.len(), 2);
        let json = serde_json::to_string(&record).unwrap();
        let back: CommitRecord = serde_json::from_str(&json).unwrap();
        let path = Path::from("s/6.commit");
        assert_eq!(back.clone().into_chains(&path, 6, 3).unwrap(), chains);
        let err = back.clone().into_chains(&path, 7, 3).unwrap_err();
        assert!(err.to_string().contains("records version 6"), "{err}");
        let err = back.into_chains(&path, 6, 4).unwrap_err();
        assert!(err.to_string().contains("records 3 partitions"), "{err}");
    }

    #[test]
    fn inconsistent_chains_are_corrupt() {
        let path = Path::from("s/6.commit");
        for chain in [
            PartitionChain {
                snapshot: Some(file(5)),
                deltas: vec![file(5)],
                live_rows: 1,
            },
            PartitionChain {
                snapshot: None,
                deltas: vec![file(7)],
                live_rows: 1,
            },
        ] {
            let record = CommitRecord::new(6, &[chain]);
            let err = record.into_chains(&path, 6, 1).unwrap_err();
            assert!(err.to_string().contains("out of order"), "{err}");
        }
    }

    #[test]
    fn commit_file_names() {
        assert_eq!(commit_file_name(12), "12.commit");
        assert_eq!(parse_commit_file_name("12.commit"), Some(12));
        assert_eq!(parse_commit_file_name("_metadata"), None);
        assert_eq!(parse_commit_file_name(".commit"), None);
    }

    #[test]
    fn metadata_compatibility_names_the_change() {
        let schema = |value_type| {
            StateSchema::new(
                Arc::new(Schema::new(vec![Field::new(
                    "symbol",
                    DataType::Utf8,
                    false,
                )])),
                Arc::new(Schema::new(vec![Field::new("sum", value_type, true)])),
            )
        };
        let path = Path::from("s/_metadata");
        let old = StoreMetadata::new(&schema(DataType::Int64), 8);
        // The metadata survives its JSON round trip.
        let back: StoreMetadata =
            serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
        assert_eq!(back, old);
        old.check_compatible(&old.clone(), 0, &path).unwrap();
        let err = old
            .check_compatible(&StoreMetadata::new(&schema(DataType::Float64), 4), 0, &path)
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StateError::Incompatible { .. }), "{msg}");
        assert!(msg.contains("s/_metadata"), "{msg}");
        assert!(msg.contains("num_partitions changed from 8 to 4"), "{msg}");
        assert!(
            msg.contains("value field 'sum' changed type from Int64 to Float64"),
            "{msg}"
        );
    }
}
