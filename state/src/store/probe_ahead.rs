//! Prefetching the probes of a batch of lookups into an entry table.
//!
//! A lookup in a table much larger than the CPU caches waits on memory
//! twice: for the control bytes where its probe starts and for the slot it
//! finds. Done one after another, a batch's lookups wait in turn. Knowing
//! where each key's probe starts (from its hash and the table's layout), a
//! batch asks for the memory of the keys a few places ahead of the one it
//! is looking up, so that the waits overlap.
//!
//! hashbrown does not expose its buckets, so the place is computed from the
//! block the table's allocator handed out ([`TableAlloc::block`]) and
//! hashbrown's layout: `buckets` slots in reverse order, then the control
//! bytes (aligned to the larger of the slot's alignment and a group's
//! width), then one group of control bytes more; bucket `i` ends where the
//! control bytes start minus `i` slots, and a probe for hash `h` starts at
//! bucket `h & (buckets - 1)`. If the block does not have that layout's
//! size for any bucket count, nothing is prefetched: lookups stay correct,
//! only the overlap is lost. A prefetch is a hint that never faults, so a
//! wrong address costs time, never correctness.
//!
//! [`TableAlloc::block`]: super::table_alloc::TableAlloc::block

/// Control bytes hashbrown reads at once (SSE2 on x86-64).
const GROUP_WIDTH: usize = 16;

/// How many keys ahead of the one looked up a batch prefetches.
const AHEAD: usize = 12;

/// Where the probes of a table start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProbeAhead {
    /// Address of the first control byte.
    ctrl: usize,
    /// Buckets minus one.
    mask: usize,
    slot_size: usize,
}

impl ProbeAhead {
    /// The probe places of a table of `slot_size`-byte, `slot_align`-aligned
    /// slots whose block is `block` (start, size); `None` without a block,
    /// off x86-64, or if the size fits no bucket count.
    pub(crate) fn new(
        block: Option<(*const u8, usize)>,
        slot_size: usize,
        slot_align: usize,
    ) -> Option<Self> {
        let (start, size) = block?;
        if !cfg!(target_arch = "x86_64") || slot_size == 0 {
            return None;
        }
        let ctrl_align = slot_align.max(GROUP_WIDTH);
        let ctrl_offset = |buckets: usize| {
            buckets
                .checked_mul(slot_size)?
                .checked_next_multiple_of(ctrl_align)
        };
        let buckets = (0..usize::BITS).map(|k| 1usize << k).find(|&buckets| {
            ctrl_offset(buckets)
                .and_then(|offset| offset.checked_add(buckets + GROUP_WIDTH))
                .is_some_and(|len| len == size)
        })?;
        Some(Self {
            ctrl: start as usize + ctrl_offset(buckets)?,
            mask: buckets - 1,
            slot_size,
        })
    }

    /// The bucket where the probe for `hash` starts.
    pub(crate) fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// Address of bucket `index`'s slot.
    pub(crate) fn slot_address(&self, index: usize) -> usize {
        self.ctrl - (index + 1) * self.slot_size
    }

    /// In a batch of lookups whose keys' hashes are `hashes`, about to look
    /// up key `n`: prefetches the probe of the key [`AHEAD`] places later.
    #[inline]
    pub(crate) fn prefetch_ahead_of(&self, hashes: &[u64], n: usize) {
        if let Some(&later) = hashes.get(n + AHEAD) {
            self.prefetch(later);
        }
    }

    /// Asks for the memory the probe for `hash` will read: its first
    /// control bytes and the slots of its first two buckets (an entry
    /// usually sits in one of them).
    #[inline]
    fn prefetch(&self, hash: u64) {
        let home = self.home(hash);
        let next = (home + 1) & self.mask;
        prefetch(self.ctrl + home);
        prefetch(self.slot_address(home));
        prefetch(self.slot_address(home) + self.slot_size - 1);
        prefetch(self.slot_address(next));
    }
}

#[inline]
fn prefetch(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and
    // never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_found_from_the_block_size() {
        // 1024 buckets of 56-byte slots: 57344 bytes of slots (a multiple
        // of 16), 1024 control bytes and a group more.
        let start = 0x10_0000 as *const u8;
        let probe = ProbeAhead::new(Some((start, 57344 + 1024 + 16)), 56, 8).unwrap();
        assert_eq!(probe.mask, 1023);
        assert_eq!(probe.ctrl, 0x10_0000 + 57344);
        assert_eq!(probe.home(1024 + 5), 5);
        assert_eq!(probe.slot_address(0), 0x10_0000 + 57344 - 56);
        // 4 buckets of 20-byte slots: 80 bytes, padded to 80 (a multiple
        // of 16).
        let probe = ProbeAhead::new(Some((start, 80 + 4 + 16)), 20, 4).unwrap();
        assert_eq!(probe.mask, 3);
        // A size no bucket count gives.
        assert!(ProbeAhead::new(Some((start, 57344 + 1024 + 17)), 56, 8).is_none());
        assert!(ProbeAhead::new(None, 56, 8).is_none());
    }
}
