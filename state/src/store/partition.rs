//! One hash partition of a state store: its entries in memory, their expiry
//! index, and the keys changed since the last commit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::files::Row;

/// Estimated bytes a map entry costs beyond its key and value (tree node
/// share, vector headers, expiry field).
const ENTRY_OVERHEAD: usize = 64;
/// Estimated bytes a changed-key record costs beyond its key.
const CHANGE_OVERHEAD: usize = 40;
/// Estimated bytes an expiry index record costs beyond its key.
const EXPIRY_OVERHEAD: usize = 48;

/// The partition a key belongs to among `num_partitions`: the CRC-32 of the
/// key bytes modulo the partition count.
///
/// The hash is fixed by the checkpoint format: it gives the same partition
/// on every platform and with every Rust release, so a checkpoint written
/// on one machine loads on another.
///
/// ```
/// use tidemill_state::partition_for_key;
///
/// assert_eq!(partition_for_key(b"123456789", 8), 6); // CRC-32 0xCBF43926
/// ```
///
/// # Panics
///
/// If `num_partitions` is zero.
pub fn partition_for_key(key: &[u8], num_partitions: usize) -> usize {
    assert!(
        num_partitions > 0,
        "a state store has at least one partition"
    );
    (u64::from(crc32fast::hash(key)) % num_partitions as u64) as usize
}

/// One live entry of a state store, as returned by
/// [`StateStore::iter`](super::StateStore::iter) and
/// [`StateStore::get_entry`](super::StateStore::get_entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateEntry<'a> {
    /// The key bytes.
    pub key: &'a [u8],
    /// The value bytes.
    pub value: &'a [u8],
    /// When the entry expires (see
    /// [`StateStore::remove_expired`](super::StateStore::remove_expired)),
    /// if it has a time to live.
    pub expires_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct Slot {
    value: Vec<u8>,
    expires_at_ms: Option<i64>,
}

/// One hash partition of a [`StateStore`](super::StateStore).
///
/// A partition holds the keys whose [`partition_for_key`] is its
/// [`id`](StatePartition::id) and offers the same reads and updates as the
/// store. Partitions are independent, so an operator can update them in
/// parallel through [`StateStore::partitions_mut`](super::StateStore::partitions_mut):
///
/// ```
/// # use tidemill_state::StateStore;
/// fn bump_all(store: &mut StateStore) {
///     std::thread::scope(|s| {
///         for partition in store.partitions_mut() {
///             s.spawn(move || {
///                 let keys: Vec<Vec<u8>> = partition.iter().map(|e| e.key.to_vec()).collect();
///                 for key in keys {
///                     partition.put(&key, b"seen");
///                 }
///             });
///         }
///     });
/// }
/// ```
///
/// Entries are kept ordered by key bytes. Changes are recorded per key
/// (the last write wins), so the delta a commit writes has one row per
/// changed key however often it changed.
pub struct StatePartition {
    id: usize,
    num_partitions: usize,
    entries: BTreeMap<Vec<u8>, Slot>,
    /// Keys changed since the last commit, each with whether it existed at
    /// the last committed version.
    changed: BTreeMap<Vec<u8>, bool>,
    /// `(expires_at_ms, key)` of every entry with a time to live.
    expiry: BTreeSet<(i64, Vec<u8>)>,
    entry_bytes: usize,
    changed_bytes: usize,
    expiry_bytes: usize,
}

impl fmt::Debug for StatePartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatePartition")
            .field("id", &self.id)
            .field("len", &self.entries.len())
            .field("changed_keys", &self.changed.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

impl StatePartition {
    pub(crate) fn new(id: usize, num_partitions: usize) -> Self {
        Self {
            id,
            num_partitions,
            entries: BTreeMap::new(),
            changed: BTreeMap::new(),
            expiry: BTreeSet::new(),
            entry_bytes: 0,
            changed_bytes: 0,
            expiry_bytes: 0,
        }
    }

    /// This partition's number, in `0..num_partitions`.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The number of live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the partition has no live entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(|slot| slot.value.as_slice())
    }

    /// The entry of `key` with its expiry, if present.
    pub fn get_entry(&self, key: &[u8]) -> Option<StateEntry<'_>> {
        self.entries
            .get_key_value(key)
            .map(|(key, slot)| entry(key, slot))
    }

    /// All live entries, ordered by key bytes.
    pub fn iter(&self) -> impl Iterator<Item = StateEntry<'_>> + '_ {
        self.entries.iter().map(|(key, slot)| entry(key, slot))
    }

    /// Sets `key` to `value` with no expiry (dropping any previous one).
    ///
    /// # Panics
    ///
    /// If `key` belongs to another partition (see [`partition_for_key`]).
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.check_key(key);
        self.upsert(key, value, None);
    }

    /// Sets `key` to `value`, expiring at `expires_at_ms`.
    ///
    /// # Panics
    ///
    /// If `key` belongs to another partition (see [`partition_for_key`]).
    pub fn put_with_ttl(&mut self, key: &[u8], value: &[u8], expires_at_ms: i64) {
        self.check_key(key);
        self.upsert(key, value, Some(expires_at_ms));
    }

    /// Removes `key`; returns whether it was present.
    ///
    /// # Panics
    ///
    /// If `key` belongs to another partition (see [`partition_for_key`]).
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.check_key(key);
        self.remove_key(key)
    }

    /// Removes every entry whose `expires_at_ms <= now_ms`; returns how many.
    ///
    /// Costs time in the number of expired entries, not in the size of the
    /// partition.
    pub fn remove_expired(&mut self, now_ms: i64) -> usize {
        let mut removed = 0;
        self.drain_expired(now_ms, |_, _| removed += 1);
        removed
    }

    /// Removes every entry whose `expires_at_ms <= now_ms` and returns them
    /// as `(key, value)` pairs, earliest expiry first (ties by key bytes).
    ///
    /// This is how an operator finalizes state: e.g. a windowed aggregation
    /// gives its windows the window end as expiry and emits what this
    /// returns once the watermark passes. Costs time in the number of
    /// expired entries, not in the size of the partition.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut taken = Vec::new();
        self.drain_expired(now_ms, |key, value| taken.push((key.to_vec(), value)));
        taken
    }

    /// The earliest expiry of any entry, if an entry has one.
    pub fn next_expiry(&self) -> Option<i64> {
        self.expiry.first().map(|(at, _)| *at)
    }

    fn drain_expired(&mut self, now_ms: i64, mut visit: impl FnMut(&[u8], Vec<u8>)) {
        while self.expiry.first().is_some_and(|(at, _)| *at <= now_ms) {
            let Some((_, key)) = self.expiry.pop_first() else {
                break;
            };
            self.expiry_bytes -= key.len() + EXPIRY_OVERHEAD;
            if let Some(slot) = self.entries.remove(&key) {
                self.entry_bytes -= key.len() + slot.value.len() + ENTRY_OVERHEAD;
                visit(&key, slot.value);
            }
            note_change(&mut self.changed, &mut self.changed_bytes, key, true);
        }
    }

    /// Estimated bytes held in memory by this partition: entries, expiry
    /// index and change records.
    pub fn memory_bytes(&self) -> usize {
        self.entry_bytes + self.expiry_bytes + self.changed_bytes
    }

    /// Whether the partition has changes not committed yet (a key added and
    /// removed again since the last commit is no change).
    pub fn has_changes(&self) -> bool {
        self.changes().next().is_some()
    }

    /// Whether any update was made since the last commit, even one that
    /// cancelled out.
    pub(crate) fn has_change_records(&self) -> bool {
        !self.changed.is_empty()
    }

    fn check_key(&self, key: &[u8]) {
        let home = partition_for_key(key, self.num_partitions);
        assert!(
            home == self.id,
            "key belongs to state partition {home}, not {}: route keys with StateStore::partition_of",
            self.id
        );
    }

    /// Sets `key` without checking that it belongs here.
    pub(crate) fn upsert(&mut self, key: &[u8], value: &[u8], expires_at_ms: Option<i64>) {
        let existed = match self.entries.get_mut(key) {
            Some(slot) => {
                self.entry_bytes = self.entry_bytes + value.len() - slot.value.len();
                slot.value.clear();
                slot.value.extend_from_slice(value);
                let old = std::mem::replace(&mut slot.expires_at_ms, expires_at_ms);
                if old != expires_at_ms {
                    if let Some(at) = old {
                        self.expiry.remove(&(at, key.to_vec()));
                        self.expiry_bytes -= key.len() + EXPIRY_OVERHEAD;
                    }
                    if let Some(at) = expires_at_ms {
                        self.expiry.insert((at, key.to_vec()));
                        self.expiry_bytes += key.len() + EXPIRY_OVERHEAD;
                    }
                }
                true
            }
            None => {
                self.insert_new(key.to_vec(), value.to_vec(), expires_at_ms);
                false
            }
        };
        if !self.changed.contains_key(key) {
            note_change(
                &mut self.changed,
                &mut self.changed_bytes,
                key.to_vec(),
                existed,
            );
        }
    }

    /// Removes `key` without checking that it belongs here.
    pub(crate) fn remove_key(&mut self, key: &[u8]) -> bool {
        let Some((key, slot)) = self.entries.remove_entry(key) else {
            return false;
        };
        self.entry_bytes -= key.len() + slot.value.len() + ENTRY_OVERHEAD;
        let key = match slot.expires_at_ms {
            Some(at) => {
                let probe = (at, key);
                let indexed = self.expiry.remove(&probe);
                debug_assert!(indexed, "entry with a TTL missing from the expiry index");
                self.expiry_bytes -= probe.1.len() + EXPIRY_OVERHEAD;
                probe.1
            }
            None => key,
        };
        note_change(&mut self.changed, &mut self.changed_bytes, key, true);
        true
    }

    fn insert_new(&mut self, key: Vec<u8>, value: Vec<u8>, expires_at_ms: Option<i64>) {
        self.entry_bytes += key.len() + value.len() + ENTRY_OVERHEAD;
        if let Some(at) = expires_at_ms {
            self.expiry_bytes += key.len() + EXPIRY_OVERHEAD;
            self.expiry.insert((at, key.clone()));
        }
        self.entries.insert(
            key,
            Slot {
                value,
                expires_at_ms,
            },
        );
    }

    /// Applies one row of a data file while loading: no change is recorded.
    pub(crate) fn apply_loaded(&mut self, row: Row<'_>) {
        match row.value {
            Some(value) => {
                self.discard_loaded(row.key);
                self.insert_new(row.key.to_vec(), value.to_vec(), row.expires_at_ms);
            }
            None => self.discard_loaded(row.key),
        }
    }

    fn discard_loaded(&mut self, key: &[u8]) {
        if let Some(slot) = self.entries.remove(key) {
            self.entry_bytes -= key.len() + slot.value.len() + ENTRY_OVERHEAD;
            if let Some(at) = slot.expires_at_ms {
                self.expiry.remove(&(at, key.to_vec()));
                self.expiry_bytes -= key.len() + EXPIRY_OVERHEAD;
            }
        }
    }

    /// The rows of the delta for the uncommitted changes, ordered by key.
    pub(crate) fn changes(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        self.changed
            .iter()
            .filter_map(|(key, &existed)| match self.entries.get(key) {
                Some(slot) => Some(Row {
                    key,
                    value: Some(&slot.value),
                    expires_at_ms: slot.expires_at_ms,
                }),
                None if existed => Some(Row {
                    key,
                    value: None,
                    expires_at_ms: None,
                }),
                None => None,
            })
    }

    /// `(updated, removed)` keys among the uncommitted changes.
    pub(crate) fn change_counts(&self) -> (u64, u64) {
        self.changes().fold((0, 0), |(u, r), row| match row.value {
            Some(_) => (u + 1, r),
            None => (u, r + 1),
        })
    }

    /// The rows of a snapshot of the whole partition, ordered by key.
    pub(crate) fn snapshot_rows(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        self.entries.iter().map(|(key, slot)| Row {
            key,
            value: Some(&slot.value),
            expires_at_ms: slot.expires_at_ms,
        })
    }

    /// Forgets the change records once they are committed.
    pub(crate) fn clear_changes(&mut self) {
        self.changed.clear();
        self.changed_bytes = 0;
    }
}

fn entry<'a>(key: &'a [u8], slot: &'a Slot) -> StateEntry<'a> {
    StateEntry {
        key,
        value: &slot.value,
        expires_at_ms: slot.expires_at_ms,
    }
}

fn note_change(
    changed: &mut BTreeMap<Vec<u8>, bool>,
    changed_bytes: &mut usize,
    key: Vec<u8>,
    existed: bool,
) {
    let len = key.len();
    if let std::collections::btree_map::Entry::Vacant(vacant) = changed.entry(key) {
        vacant.insert(existed);
        *changed_bytes += len + CHANGE_OVERHEAD;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(p: &StatePartition) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        p.changes()
            .map(|r| (r.key.to_vec(), r.value.map(<[u8]>::to_vec)))
            .collect()
    }

    #[test]
    fn partition_of_a_key_is_fixed_by_crc32() {
        // Values from any CRC-32 (IEEE) implementation, e.g. Python's
        // zlib.crc32: they must never change, or old checkpoints would load
        // keys into the wrong partitions.
        for (key, crc) in [
            (&b""[..], 0u32),
            (b"a", 0xe8b7_be43),
            (b"123456789", 0xcbf4_3926),
            (b"AAPL", 0xb665_575c),
        ] {
            assert_eq!(crc32fast::hash(key), crc);
            for n in [1usize, 7, 8, 200] {
                assert_eq!(partition_for_key(key, n), (crc as usize) % n);
            }
        }
        assert_eq!(partition_for_key(b"AAPL", 8), 4);
        assert_eq!(partition_for_key(b"a", 200), 107);
    }

    #[test]
    fn records_one_change_per_key_and_skips_no_ops() {
        let mut p = StatePartition::new(0, 1);
        p.upsert(b"old", b"1", None);
        p.clear_changes();
        assert!(!p.has_changes());

        p.put(b"new", b"1");
        p.put(b"new", b"2");
        p.remove(b"old");
        p.put(b"temp", b"x");
        assert!(p.remove(b"temp"));
        assert!(!p.remove(b"never"));
        assert_eq!(
            changes(&p),
            vec![
                (b"new".to_vec(), Some(b"2".to_vec())),
                (b"old".to_vec(), None)
            ]
        );
        assert_eq!(p.change_counts(), (1, 1));

        // Re-adding a removed key is an update of it.
        p.put(b"old", b"3");
        assert_eq!(p.change_counts(), (2, 0));
        p.clear_changes();
        assert!(!p.has_changes());
        assert_eq!(p.get(b"old"), Some(&b"3"[..]));
    }

    #[test]
    fn expiry_index_follows_updates() {
        let mut p = StatePartition::new(0, 1);
        p.put_with_ttl(b"a", b"1", 10);
        p.put_with_ttl(b"b", b"1", 20);
        p.put_with_ttl(b"c", b"1", 30);
        p.put_with_ttl(b"a", b"2", 25); // extended
        p.put(b"c", b"2"); // TTL dropped
        p.clear_changes();
        assert_eq!(p.remove_expired(19), 0);
        assert_eq!(p.remove_expired(20), 1);
        assert!(p.get(b"b").is_none());
        assert_eq!(p.remove_expired(1000), 1);
        assert!(p.get(b"a").is_none());
        assert_eq!(p.get_entry(b"c").unwrap().expires_at_ms, None);
        assert_eq!(
            changes(&p),
            vec![(b"a".to_vec(), None), (b"b".to_vec(), None)]
        );
        p.put_with_ttl(b"d", b"1", 5);
        assert!(p.remove(b"d"));
        assert_eq!(p.remove_expired(1000), 0);
    }

    #[test]
    fn memory_estimate_returns_to_zero() {
        let mut p = StatePartition::new(0, 1);
        for i in 0..100u32 {
            let key = i.to_be_bytes();
            p.put_with_ttl(&key, &vec![0; i as usize], i64::from(i));
        }
        assert!(p.memory_bytes() > 100 * ENTRY_OVERHEAD);
        for i in 0..50u32 {
            p.put(&i.to_be_bytes(), b"");
        }
        p.remove_expired(75);
        for i in 0..100u32 {
            p.remove(&i.to_be_bytes());
        }
        p.clear_changes();
        assert_eq!(p.memory_bytes(), 0);
        assert!(p.is_empty());
    }

    #[test]
    fn loading_records_no_changes() {
        let mut p = StatePartition::new(0, 1);
        for (key, value) in [
            (&b"a"[..], Some(&b"1"[..])),
            (b"b", Some(b"2")),
            (b"a", None),
        ] {
            p.apply_loaded(Row {
                key,
                value,
                expires_at_ms: Some(3),
            });
        }
        assert!(!p.has_changes());
        assert_eq!(p.len(), 1);
        assert_eq!(p.remove_expired(3), 1);
        assert!(p.is_empty());
    }

    #[test]
    #[should_panic(expected = "key belongs to state partition 4, not 0")]
    fn a_key_of_another_partition_is_refused() {
        StatePartition::new(0, 8).put(b"AAPL", b"1");
    }
}
