//! Which data files the store's versions list, kept in memory so that a
//! purge need not re-read the commit files of the versions it keeps.
//!
//! A commit file lists every file of every partition's chain, so with long
//! chains (a large partition is snapshotted only once its deltas are worth
//! it) reading all the kept commit files on each purge costs time that
//! grows with the state. The store records instead, for every file, the
//! newest version known to list it: a file is needed by some version from
//! `keep` on exactly when that version is `keep` or newer.

use std::collections::{HashMap, HashSet};

use super::files::FileKind;
use super::manifest::PartitionChain;

/// A data file: the partition whose directory holds it (`None` for a
/// version's shared delta file, in the store's directory), version, kind
/// and (for a snapshot) the tag of the store instance that wrote it.
pub(crate) type FileKey = (Option<usize>, u64, FileKind, Option<u64>);

/// For every file listed by a version in `from..=` the store's version, the
/// newest such version that lists it.
#[derive(Debug)]
pub(crate) struct Listings {
    from: u64,
    newest: HashMap<FileKey, u64, foldhash::fast::RandomState>,
}

impl Listings {
    /// What version `version` (whose files are `chains`) lists.
    pub(crate) fn new(version: u64, chains: &[PartitionChain]) -> Self {
        let mut listings = Self {
            from: version,
            newest: HashMap::default(),
        };
        listings.record(version, chains);
        listings
    }

    /// The oldest version whose files are recorded; every version from it
    /// to the store's is.
    pub(crate) fn from(&self) -> u64 {
        self.from
    }

    /// Records what `version` lists: the store's newest version, or one
    /// older than [`from`](Self::from) read back from its commit file.
    pub(crate) fn record(&mut self, version: u64, chains: &[PartitionChain]) {
        for key in keys(chains) {
            let newest = self.newest.entry(key).or_insert(version);
            *newest = (*newest).max(version);
        }
        self.from = self.from.min(version);
    }

    /// The recorded files some version from `keep` on lists.
    pub(crate) fn needed_from(&self, keep: u64) -> HashSet<FileKey> {
        self.newest
            .iter()
            .filter(|(_, newest)| **newest >= keep)
            .map(|(key, _)| *key)
            .collect()
    }

    /// Forgets the versions below `keep` (purged: no longer loadable).
    pub(crate) fn forget_before(&mut self, keep: u64) {
        if keep > self.from {
            self.newest.retain(|_, newest| *newest >= keep);
            self.from = keep;
        }
    }
}

/// The key of every file of `chains`.
pub(crate) fn keys(chains: &[PartitionChain]) -> impl Iterator<Item = FileKey> + '_ {
    chains.iter().enumerate().flat_map(|(p, chain)| {
        chain.files().map(move |(kind, file)| {
            (
                file.offset.is_none().then_some(p),
                file.version,
                kind,
                file.tag,
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::{FileRef, tests::file};

    fn chain(snapshot: Option<u64>, deltas: &[u64]) -> PartitionChain {
        PartitionChain {
            snapshot: snapshot.map(|v| FileRef {
                tag: Some(9),
                ..file(v)
            }),
            deltas: deltas
                .iter()
                .map(|&v| FileRef {
                    offset: Some(0),
                    ..file(v)
                })
                .collect(),
            live_rows: 1,
        }
    }

    #[test]
    fn a_file_is_needed_while_a_kept_version_lists_it() {
        // Versions 1-3 list deltas 1..=v; version 4 replaces them by the
        // snapshot of version 3.
        let mut listings = Listings::new(1, &[chain(None, &[1])]);
        listings.record(2, &[chain(None, &[1, 2])]);
        listings.record(3, &[chain(None, &[1, 2, 3])]);
        listings.record(4, &[chain(Some(3), &[4])]);
        let needed = |l: &Listings, keep| {
            let mut v: Vec<FileKey> = l.needed_from(keep).into_iter().collect();
            v.sort();
            v
        };
        // Shared delta files belong to no partition's directory.
        let delta = |v| (None, v, FileKind::Delta, None);
        let snapshot = (Some(0), 3, FileKind::Snapshot, Some(9));
        assert_eq!(
            needed(&listings, 3),
            vec![delta(1), delta(2), delta(3), delta(4), snapshot]
        );
        assert_eq!(needed(&listings, 4), vec![delta(4), snapshot]);

        listings.forget_before(4);
        assert_eq!(listings.from(), 4);
        assert_eq!(needed(&listings, 0), vec![delta(4), snapshot]);
        // An older version read back widens the record again.
        listings.record(2, &[chain(None, &[1, 2])]);
        assert_eq!(listings.from(), 2);
        assert_eq!(
            needed(&listings, 2),
            vec![delta(1), delta(2), delta(4), snapshot]
        );
    }
}
