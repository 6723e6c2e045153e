//! Entries taken out of a state store, held without an allocation each.

/// Entries taken out of a state store by
/// [`StateStore::take_expired`](super::StateStore::take_expired) or
/// [`StatePartition::take_expired`](super::StatePartition::take_expired):
/// their keys and values stored back to back in one buffer, in the order
/// they were taken.
///
/// ```
/// # use tidemill_state::StatePartition;
/// # fn show(partition: &mut StatePartition) {
/// for (key, value) in partition.take_expired(60_000).iter() {
///     println!("{key:?} closed with {value:?}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakenEntries {
    bytes: Vec<u8>,
    /// Per entry, where its key ends and where its value ends in `bytes`
    /// (the key starts where the previous value ends).
    ends: Vec<(usize, usize)>,
}

impl TakenEntries {
    /// The number of entries.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The entries as `(key, value)`, in the order they were taken.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.ends
            .iter()
            .enumerate()
            .map(|(i, &(key_end, value_end))| {
                let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
                (&self.bytes[start..key_end], &self.bytes[key_end..value_end])
            })
    }

    /// The entries copied out, as `(key, value)` pairs.
    pub fn to_vec(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ends.push((key_end, self.bytes.len()));
    }

    /// Appends the entries of `other` after these.
    pub(crate) fn append(&mut self, other: &TakenEntries) {
        let shift = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ends
            .extend(other.ends.iter().map(|&(k, v)| (k + shift, v + shift)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_in_order_across_appends() {
        let mut a = TakenEntries::default();
        assert!(a.is_empty());
        a.push(b"k1", b"value one");
        a.push(b"", b"");
        let mut b = TakenEntries::default();
        b.push(b"k3", b"3");
        a.append(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(
            a.to_vec(),
            vec![
                (b"k1".to_vec(), b"value one".to_vec()),
                (Vec::new(), Vec::new()),
                (b"k3".to_vec(), b"3".to_vec()),
            ]
        );
    }
}
