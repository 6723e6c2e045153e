//! The allocator of the partitions' entry tables: large tables on
//! transparent huge pages where the system offers them.
//!
//! A lookup into a large state probes a random place in its table. With
//! 4 KiB pages each such probe also misses the TLB, and the page-table walk
//! waits on memory as well. A table of several MiB therefore asks Linux for
//! 2 MiB pages (`madvise(MADV_HUGEPAGE)`, honoured when transparent huge
//! pages are `always` or `madvise`), so that the TLB covers the whole
//! table. Smaller tables, and other systems, use the global allocator.
//!
//! The allocator also remembers the table's block (a table holds one at a
//! time), so that a batch of lookups can compute where each key's probe
//! will land and prefetch it (see [`super::probe_ahead`]).

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use allocator_api2::alloc::{AllocError, Allocator, Global};

/// The size of a huge page, and the size from which a table gets its own
/// mapping.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// Allocates entry tables: from [`HUGE_PAGE`] bytes on, an anonymous
/// mapping aligned to huge pages and advised to use them (Linux); else the
/// global allocator. One allocator serves one table and records its
/// current block.
#[derive(Debug, Default)]
pub(crate) struct TableAlloc {
    /// Address and requested size of the block allocated last and not
    /// freed yet (0 when none).
    start: AtomicUsize,
    size: AtomicUsize,
}

impl TableAlloc {
    /// Start and size (as requested) of the table's current block, if it
    /// has one.
    pub(crate) fn block(&self) -> Option<(*const u8, usize)> {
        let start = self.start.load(Ordering::Relaxed);
        (start != 0).then(|| (start as *const u8, self.size.load(Ordering::Relaxed)))
    }
}

#[cfg(target_os = "linux")]
fn mapped(layout: Layout) -> bool {
    layout.size() >= HUGE_PAGE && layout.align() <= HUGE_PAGE
}

#[cfg(not(target_os = "linux"))]
fn mapped(_layout: Layout) -> bool {
    false
}

/// `size` rounded up to whole huge pages.
#[cfg(target_os = "linux")]
fn mapping_len(size: usize) -> usize {
    size.div_ceil(HUGE_PAGE) * HUGE_PAGE
}

#[cfg(target_os = "linux")]
fn map(layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
    let len = mapping_len(layout.size());
    // Map one huge page more than needed, then cut the ends off so that
    // the mapping starts on a huge-page boundary.
    let reserve = len.checked_add(HUGE_PAGE).ok_or(AllocError)?;
    // SAFETY: an anonymous private mapping at an address the kernel picks
    // touches no existing memory.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(AllocError);
    }
    let base = base as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let head = start - base;
    let tail = reserve - head - len;
    // SAFETY: both ranges lie inside the mapping just made and outside
    // the part handed out.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
        // Advice only: where huge pages are off, the mapping works with
        // small ones.
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    let ptr = NonNull::new(start as *mut u8).ok_or(AllocError)?;
    Ok(NonNull::slice_from_raw_parts(ptr, len))
}

#[cfg(not(target_os = "linux"))]
fn map(_layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
    Err(AllocError)
}

/// # Safety
///
/// `ptr` and `layout` are those of a live [`map`] allocation.
#[cfg(target_os = "linux")]
unsafe fn unmap(ptr: NonNull<u8>, layout: Layout) {
    // SAFETY: the caller passes a mapping [`map`] made, of this length.
    unsafe {
        libc::munmap(
            ptr.as_ptr() as *mut libc::c_void,
            mapping_len(layout.size()),
        );
    }
}

#[cfg(not(target_os = "linux"))]
unsafe fn unmap(_ptr: NonNull<u8>, _layout: Layout) {}

// SAFETY: a block from `allocate` stays valid until `deallocate` with the
// same layout, which routes it back to where it came from (the route
// depends on the layout only).
unsafe impl Allocator for TableAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let block = if mapped(layout) {
            map(layout)
        } else {
            Global.allocate(layout)
        }?;
        // A table allocates its new block before it frees the old one.
        self.start
            .store(block.cast::<u8>().as_ptr() as usize, Ordering::Relaxed);
        self.size.store(layout.size(), Ordering::Relaxed);
        Ok(block)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let _ = self.start.compare_exchange(
            ptr.as_ptr() as usize,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if mapped(layout) {
            // SAFETY: `allocate` mapped blocks of this layout.
            unsafe { unmap(ptr, layout) }
        } else {
            // SAFETY: `allocate` took blocks of this layout from `Global`.
            unsafe { Global.deallocate(ptr, layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_blocks_are_writable_and_freed() {
        for size in [64, 3 << 20, (5 << 20) + 123] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            let alloc = TableAlloc::default();
            let block = alloc.allocate(layout).unwrap();
            assert!(block.len() >= size);
            let ptr = block.cast::<u8>();
            assert_eq!(alloc.block(), Some((ptr.as_ptr() as *const u8, size)));
            // SAFETY: the block is at least `size` bytes and ours.
            unsafe {
                ptr.as_ptr().write_bytes(0xAB, size);
                assert_eq!(*ptr.as_ptr().add(size - 1), 0xAB);
                alloc.deallocate(ptr, layout);
            }
            assert_eq!(alloc.block(), None);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn large_blocks_start_on_a_huge_page() {
        let layout = Layout::from_size_align(3 << 20, 16).unwrap();
        let alloc = TableAlloc::default();
        let block = alloc.allocate(layout).unwrap();
        let ptr = block.cast::<u8>();
        assert_eq!(ptr.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(block.len(), 4 << 20);
        // SAFETY: allocated just above with this layout.
        unsafe { alloc.deallocate(ptr, layout) };
    }
}
