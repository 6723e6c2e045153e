//! One hash partition of a state store: its entries in memory, their expiry
//! index, and the keys changed since the last commit.
//!
//! Entries live in a hash table whose slots hold the key and the value
//! (inline when together they are short, as most aggregation keys and
//! states are; else in one allocation), so a lookup costs one hash and
//! (usually) one probe whatever the partition's size.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::BuildHasher;
use std::ops::Range;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use super::files::Row;
use super::probe_ahead::ProbeAhead;
use super::table_alloc::TableAlloc;
use super::taken::TakenEntries;

/// Estimated bytes an expiry index record costs (the record and its share
/// of a tree node).
const EXPIRY_OVERHEAD: usize = 32;

/// Bytes the allocator takes for a heap block of `len` bytes (a common
/// malloc: 8 bytes of header, rounded up to 16, at least 32).
fn heap_bytes(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    ((len + 8 + 15) & !15).max(32)
}

/// The hash of a key in a partition's tables (fixed seed: the same
/// operations give the same layout in every run).
pub(crate) fn hash_key(key: &[u8]) -> u64 {
    FixedState::default().hash_one(key)
}

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

/// Bytes of key and value an entry holds in its table slot; longer ones
/// take a heap allocation.
const INLINE_BYTES: usize = 30;

/// An entry's key bytes followed by its value bytes: in the table slot
/// when short (a lookup then touches no other memory and an insert
/// allocates nothing), else in one heap allocation.
enum SlotBytes {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Heap(Box<[u8]>),
}

impl SlotBytes {
    fn new(key: &[u8], value: &[u8]) -> Self {
        let len = key.len() + value.len();
        if len <= INLINE_BYTES {
            let mut bytes = [0; INLINE_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            bytes[key.len()..len].copy_from_slice(value);
            Self::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            Self::Heap([key, value].concat().into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..*len as usize],
            Self::Heap(bytes) => bytes,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Self::Inline { len, bytes } => &mut bytes[..*len as usize],
            Self::Heap(bytes) => bytes,
        }
    }

    /// Heap bytes held beyond the slot.
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Inline { .. } => 0,
            Self::Heap(bytes) => heap_bytes(bytes.len()),
        }
    }
}

/// An entry in the table.
struct Slot {
    data: SlotBytes,
    /// The key's [`hash_key`]: growing the table, finding an entry due to
    /// expire and rejecting a probe's other keys need no hashing or key
    /// comparison.
    hash: u64,
    key_len: u32,
    /// When the entry expires, or [`NEVER`] (an `Option<i64>` would take
    /// 8 bytes more: 64-byte slots instead of 56, and a state of 10 M keys
    /// 13 % more memory).
    expires_at: i64,
}

/// [`Slot::expires_at`] of an entry without a time to live. An expiry this
/// early would be due at any time anyway: [`Slot::new`] moves such an
/// expiry one millisecond later.
const NEVER: i64 = i64::MIN;

/// `expires_at_ms` as a slot keeps it.
fn slot_expiry(expires_at_ms: Option<i64>) -> i64 {
    expires_at_ms.map_or(NEVER, |at| at.max(NEVER + 1))
}

impl Slot {
    fn new(hash: u64, key: &[u8], value: &[u8], expires_at_ms: Option<i64>) -> Self {
        let key_len = u32::try_from(key.len()).expect("a state key is shorter than 4 GiB");
        Self {
            data: SlotBytes::new(key, value),
            hash,
            key_len,
            expires_at: slot_expiry(expires_at_ms),
        }
    }

    /// When the entry expires, if it has a time to live.
    fn expires_at_ms(&self) -> Option<i64> {
        (self.expires_at != NEVER).then_some(self.expires_at)
    }

    /// Whether this is the entry of `key`, whose hash is `hash`.
    fn is(&self, hash: u64, key: &[u8]) -> bool {
        self.hash == hash && self.key() == key
    }

    fn key(&self) -> &[u8] {
        &self.data.as_slice()[..self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.data.as_slice()[self.key_len as usize..]
    }

    /// Replaces the value, in place when the length is unchanged.
    fn set_value(&mut self, value: &[u8]) {
        let key_len = self.key_len as usize;
        let data = self.data.as_mut_slice();
        if data.len() - key_len == value.len() {
            data[key_len..].copy_from_slice(value);
        } else {
            self.data = SlotBytes::new(self.key(), value);
        }
    }

    /// Heap bytes the entry holds beyond its slot.
    fn heap_bytes(&self) -> usize {
        self.data.heap_bytes()
    }

    fn entry(&self) -> StateEntry<'_> {
        StateEntry {
            key: self.key(),
            value: self.value(),
            expires_at_ms: self.expires_at_ms(),
        }
    }
}

/// A key changed since the last commit. Its bytes (and its value's) are
/// in the partition's change arena, so recording a change allocates
/// nothing once the arena has grown to a batch's size.
struct Change {
    /// The key's [`hash_key`].
    hash: u64,
    /// The key in the arena.
    key: Range<usize>,
    /// Whether the key existed at the last committed version.
    existed: bool,
    /// Its value (in the arena) and expiry now; `None` if removed.
    now: Option<(Range<usize>, Option<i64>)>,
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
/// Entries are kept in a hash table (no order). Changes are recorded per
/// key (the last write wins), so the delta a commit writes has one row per
/// changed key however often it changed.
pub struct StatePartition {
    id: usize,
    num_partitions: usize,
    /// Bytes at the end of a key that do not decide its partition.
    partition_suffix: usize,
    /// On huge pages when large (see [`TableAlloc`]).
    entries: HashTable<Slot, TableAlloc>,
    /// Keys changed since the last commit, with what the delta records for
    /// them: a commit encodes its delta from here without probing the
    /// (much larger) entry table.
    changed: HashTable<Change>,
    /// The bytes of the changed keys and their values, back to back.
    change_arena: Vec<u8>,
    /// How many entries expire at each `(expires_at_ms, key hash)`: the
    /// entries with a time to live, indexed without a copy of their keys
    /// (two keys of one hash and expiry share a record).
    expiry: BTreeMap<(i64, u64), u32>,
    /// Entries with a time to live.
    expiring: usize,
    /// Heap bytes of the entries' slots.
    entry_bytes: usize,
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
    pub(crate) fn new(id: usize, num_partitions: usize, partition_suffix: usize) -> Self {
        Self {
            id,
            num_partitions,
            partition_suffix,
            entries: HashTable::new_in(TableAlloc::default()),
            changed: HashTable::new(),
            change_arena: Vec::new(),
            expiry: BTreeMap::new(),
            expiring: 0,
            entry_bytes: 0,
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

    fn slot(&self, key: &[u8]) -> Option<&Slot> {
        let hash = hash_key(key);
        self.entries.find(hash, |slot| slot.is(hash, key))
    }

    /// Where the probes into the entry table start, to prefetch a batch's
    /// probes ahead of its lookups; `None` when that is not known.
    pub(crate) fn probe_ahead(&self) -> Option<ProbeAhead> {
        ProbeAhead::new(
            self.entries.allocator().block(),
            std::mem::size_of::<Slot>(),
            std::mem::align_of::<Slot>(),
        )
    }

    /// [`get`](Self::get) of a key whose [`hash_key`] is `hash`.
    pub(crate) fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<&[u8]> {
        self.entries
            .find(hash, |slot| slot.is(hash, key))
            .map(Slot::value)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.slot(key).map(Slot::value)
    }

    /// The entry of `key` with its expiry, if present.
    pub fn get_entry(&self, key: &[u8]) -> Option<StateEntry<'_>> {
        self.slot(key).map(Slot::entry)
    }

    /// All live entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = StateEntry<'_>> + '_ {
        self.entries.iter().map(Slot::entry)
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
    /// (keys and values), earliest expiry first (ties in a fixed
    /// order: by key hash).
    ///
    /// This is how an operator finalizes state: e.g. a windowed aggregation
    /// gives its windows the window end as expiry and emits what this
    /// returns once the watermark passes. Costs time in the number of
    /// expired entries, not in the size of the partition.
    pub fn take_expired(&mut self, now_ms: i64) -> TakenEntries {
        let mut taken = TakenEntries::default();
        self.drain_expired(now_ms, |key, value| taken.push(key, value));
        taken
    }

    /// Removes every entry whose `expires_at_ms <= now_ms`, in the order of
    /// [`take_expired`](Self::take_expired), showing each key and value to
    /// `visit` as it goes instead of copying them out; returns how many.
    ///
    /// For an operator that needs only some of the expired entries' bytes
    /// (e.g. a join that forgets the rows it indexed and keeps the values
    /// of a few).
    pub fn remove_expired_with(
        &mut self,
        now_ms: i64,
        mut visit: impl FnMut(&[u8], &[u8]),
    ) -> usize {
        let mut removed = 0;
        self.drain_expired(now_ms, |key, value| {
            removed += 1;
            visit(key, value);
        });
        removed
    }

    /// The earliest expiry of any entry, if an entry has one.
    pub fn next_expiry(&self) -> Option<i64> {
        self.expiry.first_key_value().map(|((at, _), _)| *at)
    }

    /// How many entries have an expiry.
    pub(crate) fn expiring(&self) -> usize {
        self.expiring
    }

    /// Removes the entries due at `now_ms`, earliest first (ties by key
    /// hash), handing each to `visit`.
    fn drain_expired(&mut self, now_ms: i64, mut visit: impl FnMut(&[u8], &[u8])) {
        while let Some(record) = self.expiry.first_entry() {
            let (at, hash) = *record.key();
            if at > now_ms {
                break;
            }
            let count = record.remove();
            for _ in 0..count {
                let due = |slot: &Slot| slot.hash == hash && slot.expires_at == at;
                let Ok(found) = self.entries.find_entry(hash, due) else {
                    debug_assert!(false, "an expiry record without its entry");
                    break;
                };
                let (slot, _) = found.remove();
                self.expiring -= 1;
                self.entry_bytes -= slot.heap_bytes();
                visit(slot.key(), slot.value());
                self.note_change(hash, slot.key(), true, None);
            }
        }
    }

    /// Indexes an entry of `hash` expiring at `at`.
    fn index_expiry(&mut self, at: i64, hash: u64) {
        *self.expiry.entry((at, hash)).or_insert(0) += 1;
        self.expiring += 1;
    }

    /// Drops an entry of `hash` expiring at `at` from the expiry index.
    fn unindex_expiry(&mut self, at: i64, hash: u64) {
        match self.expiry.get_mut(&(at, hash)) {
            Some(1) => {
                self.expiry.remove(&(at, hash));
            }
            Some(count) => *count -= 1,
            None => {
                debug_assert!(false, "entry with a TTL missing from the expiry index");
                return;
            }
        }
        self.expiring -= 1;
    }

    /// Estimated bytes held in memory by this partition: the entry table
    /// and the entries' keys and values, the expiry index and the change
    /// records.
    pub fn memory_bytes(&self) -> usize {
        self.entries.allocation_size()
            + self.entry_bytes
            + self.expiry.len() * EXPIRY_OVERHEAD
            + self.changed.allocation_size()
            + self.change_arena.capacity()
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
        let prefix = &key[..key.len().saturating_sub(self.partition_suffix)];
        let home = partition_for_key(prefix, self.num_partitions);
        assert!(
            home == self.id,
            "key belongs to state partition {home}, not {}: route keys with StateStore::partition_of",
            self.id
        );
    }

    /// Sets `key` without checking that it belongs here.
    pub(crate) fn upsert(&mut self, key: &[u8], value: &[u8], expires_at_ms: Option<i64>) {
        self.upsert_hashed(hash_key(key), key, value, expires_at_ms);
    }

    /// [`upsert`](Self::upsert) of a key whose [`hash_key`] is `hash`.
    pub(crate) fn upsert_hashed(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<i64>,
    ) {
        let existed = match self.entries.find_mut(hash, |slot| slot.is(hash, key)) {
            Some(slot) => {
                let before = slot.heap_bytes();
                slot.set_value(value);
                self.entry_bytes = self.entry_bytes + slot.heap_bytes() - before;
                let old = slot.expires_at_ms();
                slot.expires_at = slot_expiry(expires_at_ms);
                let expires_at_ms = slot.expires_at_ms();
                if old != expires_at_ms {
                    if let Some(at) = old {
                        self.unindex_expiry(at, hash);
                    }
                    if let Some(at) = expires_at_ms {
                        self.index_expiry(at, hash);
                    }
                }
                true
            }
            None => {
                self.insert_new(Slot::new(hash, key, value, expires_at_ms));
                false
            }
        };
        self.note_change(hash, key, existed, Some((value, expires_at_ms)));
    }

    /// Removes `key` without checking that it belongs here.
    pub(crate) fn remove_key(&mut self, key: &[u8]) -> bool {
        let hash = hash_key(key);
        if !self.take_slot(hash, key) {
            return false;
        }
        self.note_change(hash, key, true, None);
        true
    }

    /// Removes the entry of `key` (whose hash is `hash`) and its expiry
    /// record; returns whether there was one.
    fn take_slot(&mut self, hash: u64, key: &[u8]) -> bool {
        let Ok(found) = self.entries.find_entry(hash, |slot| slot.is(hash, key)) else {
            return false;
        };
        let (slot, _) = found.remove();
        self.entry_bytes -= slot.heap_bytes();
        if let Some(at) = slot.expires_at_ms() {
            self.unindex_expiry(at, hash);
        }
        true
    }

    fn insert_new(&mut self, slot: Slot) {
        self.entry_bytes += slot.heap_bytes();
        if let Some(at) = slot.expires_at_ms() {
            self.index_expiry(at, slot.hash);
        }
        self.entries
            .insert_unique(slot.hash, slot, |slot| slot.hash);
    }

    /// Applies one row of a data file while loading: no change is recorded.
    pub(crate) fn apply_loaded(&mut self, row: Row<'_>) {
        let hash = hash_key(row.key);
        self.take_slot(hash, row.key);
        if let Some(value) = row.value {
            self.insert_new(Slot::new(hash, row.key, value, row.expires_at_ms));
        }
    }

    /// Makes room for `additional` more entries (e.g. before loading a
    /// snapshot of known size).
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional, |slot| slot.hash);
    }

    /// The rows of the delta for the uncommitted changes, in no particular
    /// order.
    pub(crate) fn changes(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        let arena = &self.change_arena;
        self.changed.iter().filter_map(move |change| {
            let key = &arena[change.key.clone()];
            match &change.now {
                Some((value, expires_at_ms)) => Some(Row {
                    key,
                    value: Some(&arena[value.clone()]),
                    expires_at_ms: *expires_at_ms,
                }),
                None if change.existed => Some(Row {
                    key,
                    value: None,
                    expires_at_ms: None,
                }),
                None => None,
            }
        })
    }

    /// `(updated, removed)` keys among the uncommitted changes.
    pub(crate) fn change_counts(&self) -> (u64, u64) {
        self.changed.iter().fold((0, 0), |(u, r), change| {
            match (&change.now, change.existed) {
                (Some(_), _) => (u + 1, r),
                (None, true) => (u, r + 1),
                (None, false) => (u, r),
            }
        })
    }

    /// Forgets the change records once they are committed.
    pub(crate) fn clear_changes(&mut self) {
        // Keep the table and arena for the next batch unless a big one
        // left them huge.
        if self.changed.capacity() > 1 << 16 {
            self.changed = HashTable::new();
        } else {
            self.changed.clear();
        }
        if self.change_arena.capacity() > 1 << 24 {
            self.change_arena = Vec::new();
        } else {
            self.change_arena.clear();
        }
    }

    /// Records that `key` (whose hash is `hash`, and which `existed` before
    /// this change) now has `now` (`None`: removed).
    fn note_change(
        &mut self,
        hash: u64,
        key: &[u8],
        existed: bool,
        now: Option<(&[u8], Option<i64>)>,
    ) {
        let arena = &mut self.change_arena;
        let found = self
            .changed
            .find_mut(hash, |c| c.hash == hash && arena[c.key.clone()] == *key);
        let previous = found
            .as_ref()
            .and_then(|c| c.now.as_ref().map(|(v, _)| v.clone()));
        let now = now.map(|(value, at)| {
            let range = match previous {
                // A value of the same length overwrites the previous one.
                Some(range) if range.len() == value.len() => {
                    arena[range.clone()].copy_from_slice(value);
                    range
                }
                _ => append(arena, value),
            };
            (range, at)
        });
        match found {
            Some(change) => change.now = now,
            None => {
                let key = append(arena, key);
                let change = Change {
                    hash,
                    key,
                    existed,
                    now,
                };
                self.changed.insert_unique(hash, change, |c| c.hash);
            }
        }
    }
}

/// Appends `bytes` to `arena`; returns where they are.
fn append(arena: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    let start = arena.len();
    arena.extend_from_slice(bytes);
    start..arena.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(p: &StatePartition) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut changes: Vec<_> = p
            .changes()
            .map(|r| (r.key.to_vec(), r.value.map(<[u8]>::to_vec)))
            .collect();
        changes.sort();
        changes
    }

    #[test]
    fn short_and_long_entries_round_trip_as_their_values_change_length() {
        let mut p = StatePartition::new(0, 1, 0);
        let long = vec![7u8; INLINE_BYTES + 1];
        p.put(b"short", b"v");
        p.put(&long, b"long key");
        assert_eq!(p.get(b"short"), Some(&b"v"[..]));
        assert_eq!(p.get(&long), Some(&b"long key"[..]));
        let inline_only = p.entry_bytes;
        // Growing past the inline size moves the entry to the heap, and
        // shrinking moves it back; the memory estimate follows.
        p.put(b"short", &long);
        assert_eq!(p.get(b"short"), Some(&long[..]));
        assert!(p.entry_bytes > inline_only);
        p.put(b"short", b"w");
        assert_eq!(p.get(b"short"), Some(&b"w"[..]));
        assert_eq!(p.entry_bytes, inline_only);
        // A key and value of exactly the inline size stay inline.
        let exact = vec![1u8; INLINE_BYTES - 2];
        p.put(b"k2", &exact);
        assert_eq!(p.get(b"k2"), Some(&exact[..]));
        assert_eq!(p.entry_bytes, inline_only);
        assert!(p.remove(&long));
        assert_eq!(p.entry_bytes, 0);
        assert_eq!(p.len(), 2);
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
        let mut p = StatePartition::new(0, 1, 0);
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
        let mut p = StatePartition::new(0, 1, 0);
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
    fn memory_estimate_counts_entries_and_releases_them() {
        let mut p = StatePartition::new(0, 1, 0);
        let tables = |p: &StatePartition| {
            p.entries.allocation_size() + p.changed.allocation_size() + p.change_arena.capacity()
        };
        for i in 0..100u32 {
            let key = i.to_be_bytes();
            p.put_with_ttl(&key, &vec![0; i as usize], i64::from(i));
        }
        // Every entry's block (none for entries short enough to sit in
        // their slot) and its expiry record; the change records' keys and
        // values are in the arena.
        let keys_and_values: usize = (0..100)
            .map(|i| match 4 + i {
                n if n <= INLINE_BYTES => 0,
                n => heap_bytes(n),
            })
            .sum();
        assert_eq!(
            p.memory_bytes(),
            tables(&p) + keys_and_values + 100 * EXPIRY_OVERHEAD
        );
        assert!(p.change_arena.len() >= 100 * 4 + (0..100).sum::<usize>());
        assert!(p.entries.allocation_size() >= 100 * std::mem::size_of::<Slot>());
        for i in 0..50u32 {
            p.put(&i.to_be_bytes(), b"");
        }
        p.remove_expired(75);
        for i in 0..100u32 {
            p.remove(&i.to_be_bytes());
        }
        p.clear_changes();
        assert_eq!(p.memory_bytes(), tables(&p));
        assert!(p.is_empty());
        assert!(p.expiry.is_empty());
        assert_eq!(p.expiring(), 0);
    }

    #[test]
    fn a_value_changed_again_in_one_version_is_recorded_once() {
        let mut p = StatePartition::new(0, 1, 0);
        p.put(b"k", b"aa");
        p.put(b"k", b"bb"); // same length: in place
        p.put(b"k", b"ccc"); // longer: appended
        p.put_with_ttl(b"k", b"dd", 5);
        assert_eq!(changes(&p), vec![(b"k".to_vec(), Some(b"dd".to_vec()))]);
        assert_eq!(p.changes().next().unwrap().expires_at_ms, Some(5));
        assert!(p.change_arena.len() <= 1 + 2 + 3 + 2);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn probes_are_prefetched_where_the_table_puts_the_keys() {
        let mut p = StatePartition::new(0, 1, 0);
        assert!(p.probe_ahead().is_none(), "no table yet");
        // Small tables come from the global allocator, large ones (from 2
        // MiB) from their own mapping: the layout is found for both.
        for n in [1_000u32, 60_000] {
            for i in p.len() as u32..n {
                p.upsert(&i.to_be_bytes(), b"value", None);
            }
            let ahead = p.probe_ahead().expect("the layout is found");
            let mut near_home = 0;
            for i in 0..n {
                let key = i.to_be_bytes();
                let hash = hash_key(&key);
                let slot = p.entries.find(hash, |s| s.key() == key).unwrap();
                let address = slot as *const Slot as usize;
                // Every key sits in a bucket of the computed layout...
                let from_end = ahead.slot_address(0) + std::mem::size_of::<Slot>() - address;
                assert_eq!(from_end % std::mem::size_of::<Slot>(), 0);
                let bucket = from_end / std::mem::size_of::<Slot>() - 1;
                assert!(bucket <= ahead.home(u64::MAX), "{bucket}");
                // ...and most in the first group its probe reads.
                let distance = bucket.wrapping_sub(ahead.home(hash)) & ahead.home(u64::MAX);
                near_home += usize::from(distance < 16);
            }
            assert!(
                near_home as u32 * 10 >= n * 9,
                "{near_home} of {n} near home"
            );
            assert_eq!(
                p.get_hashed(hash_key(&7u32.to_be_bytes()), &7u32.to_be_bytes()),
                Some(&b"value"[..])
            );
        }
    }

    #[test]
    fn a_slot_stays_within_56_bytes_and_keeps_every_expiry() {
        // A large table is mostly slots: 8 bytes more per slot was 13 more
        // bytes per key of a 10 M-key state and slower lookups.
        assert!(
            std::mem::size_of::<Slot>() <= 56,
            "{}",
            std::mem::size_of::<Slot>()
        );
        let mut p = StatePartition::new(0, 1, 0);
        p.put_with_ttl(b"early", b"v", i64::MIN);
        p.put_with_ttl(b"late", b"v", i64::MAX);
        p.put(b"forever", b"v");
        assert_eq!(p.get_entry(b"late").unwrap().expires_at_ms, Some(i64::MAX));
        assert_eq!(p.get_entry(b"forever").unwrap().expires_at_ms, None);
        // The earliest expiry is due at any time, and stays an expiry.
        assert!(p.get_entry(b"early").unwrap().expires_at_ms.is_some());
        assert_eq!(p.remove_expired(i64::MIN + 1), 1);
        // A time to live taken away again leaves the entry for good.
        p.put(b"late", b"w");
        assert_eq!(p.remove_expired(i64::MAX), 0);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn loading_records_no_changes() {
        let mut p = StatePartition::new(0, 1, 0);
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
        StatePartition::new(0, 8, 0).put(b"AAPL", b"1");
    }
}
