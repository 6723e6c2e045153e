//! The allocator of the partitions' entry tables: large tables on
//! transparent huge pages where the system offers them.
//!
//! A lookup into a large state probes a random place in its table. With
//! 4 KiB pages each such probe also misses the TLB, and the page-table walk
//! waits on memory as well. A table of several MiB therefore asks Linux for
//! 2 MiB pages (`madvise(MADV_HUGEPAGE)`, honoured when transparent huge
//! pages are `always` or `madvise`), so that the TLB covers the whole
//! table. Smaller tables, and other systems, use the global allocator.

use std::alloc::Layout;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

/// The size of a huge page, and the size from which a table gets its own
/// mapping.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// Allocates entry tables: from [`HUGE_PAGE`] bytes on, an anonymous
/// mapping aligned to huge pages and advised to use them (Linux); else the
/// global allocator.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TableAlloc;

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
        if mapped(layout) {
            map(layout)
        } else {
            Global.allocate(layout)
        }
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
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
            let block = TableAlloc.allocate(layout).unwrap();
            assert!(block.len() >= size);
            let ptr = block.cast::<u8>();
            // SAFETY: the block is at least `size` bytes and ours.
            unsafe {
                ptr.as_ptr().write_bytes(0xAB, size);
                assert_eq!(*ptr.as_ptr().add(size - 1), 0xAB);
                TableAlloc.deallocate(ptr, layout);
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn large_blocks_start_on_a_huge_page() {
        let layout = Layout::from_size_align(3 << 20, 16).unwrap();
        let block = TableAlloc.allocate(layout).unwrap();
        let ptr = block.cast::<u8>();
        assert_eq!(ptr.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(block.len(), 4 << 20);
        // SAFETY: allocated just above with this layout.
        unsafe { TableAlloc.deallocate(ptr, layout) };
    }
}
