//! The allocator of the native core: the system allocator, except that large buffers (message
//! buffers of big arrays) are their own 2 MiB-aligned mappings advised to use transparent huge
//! pages.
//!
//! Why: a fresh 64 MiB buffer from malloc is a fresh `mmap`, and touching it costs 16,384 page
//! faults (~60 ms here, more than copying it); with huge pages it is 32 faults (~10 ms). numpy
//! does the same for its own large arrays (`madvise(MADV_HUGEPAGE)`). Freed large blocks are
//! kept in a small cache (at most `CACHE_BYTES`, marked `MADV_FREE` so the kernel may take the
//! pages back under memory pressure) and reused: sending the same big array again then touches
//! no fresh pages at all (zeroing fresh pages was the largest cost of a 64 MiB round trip).
//! Only the Rust code of this extension module allocates through it.
//!
//! The cache's bookkeeping (`Cache`) is plain code; the system calls are in the few functions
//! around it, each `unsafe` block with the reason it is sound.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::{Mutex, MutexGuard};

/// Allocations of at least this many bytes get their own huge-page mapping.
const LARGE: usize = 1 << 20;
const HUGE_PAGE: usize = 2 << 20;
/// Freed large blocks kept for reuse: at most this many bytes in at most `SLOTS` blocks.
const CACHE_BYTES: usize = 256 << 20;
const SLOTS: usize = 16;

/// A cached block as (address, mapped length); a zero length is an empty slot.
type Block = (usize, usize);
/// Blocks a `put` pushed out of the cache (empty slots are `(0, 0)`); the caller unmaps them.
type Evicted = [Block; SLOTS];

/// Freed large blocks kept for reuse. Bookkeeping only: it never maps or unmaps memory.
#[derive(Debug)]
struct Cache {
    slots: [Block; SLOTS],
    bytes: usize,
}

impl Cache {
    const fn new() -> Self {
        Self { slots: [(0, 0); SLOTS], bytes: 0 }
    }

    /// Removes and returns the smallest cached block of at least `len` bytes and at most twice
    /// that (so small requests leave big blocks alone).
    fn take(&mut self, len: usize) -> Option<Block> {
        let best =
            (0..SLOTS).filter(|&i| (len..=2 * len).contains(&self.slots[i].1)).min_by_key(|&i| self.slots[i].1)?;
        let block = std::mem::take(&mut self.slots[best]);
        self.bytes -= block.1;
        Some(block)
    }

    /// Keeps `(addr, len)` if room can be made by evicting blocks no bigger than it (big blocks
    /// are the expensive ones to fault in), smallest first. `None`: not kept, nothing evicted.
    fn put(&mut self, addr: usize, len: usize) -> Option<Evicted> {
        if len > CACHE_BYTES {
            return None;
        }
        let mut candidates = [0usize; SLOTS];
        let mut count = 0;
        for i in 0..SLOTS {
            if self.slots[i].1 > 0 && self.slots[i].1 <= len {
                candidates[count] = i;
                count += 1;
            }
        }
        candidates[..count].sort_unstable_by_key(|&i| self.slots[i].1);
        let mut free_slots = self.slots.iter().filter(|s| s.1 == 0).count();
        let mut bytes = self.bytes;
        let mut evicting = 0;
        while free_slots == 0 || bytes + len > CACHE_BYTES {
            if evicting == count {
                return None;
            }
            bytes -= self.slots[candidates[evicting]].1;
            free_slots += 1;
            evicting += 1;
        }
        let mut evicted = [(0, 0); SLOTS];
        for &i in &candidates[..evicting] {
            evicted[i] = std::mem::take(&mut self.slots[i]);
            self.bytes -= evicted[i].1;
        }
        let free = self.slots.iter().position(|s| s.1 == 0).expect("room was made above");
        self.slots[free] = (addr, len);
        self.bytes += len;
        Some(evicted)
    }

    fn drain(&mut self) -> Evicted {
        self.bytes = 0;
        std::mem::replace(&mut self.slots, [(0, 0); SLOTS])
    }
}

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= HUGE_PAGE
}

fn mapped_len(size: usize) -> usize {
    size.div_ceil(HUGE_PAGE) * HUGE_PAGE
}

/// The system allocator, with large blocks mapped (and cached) as described above.
#[derive(Debug)]
pub struct Allocator {
    cache: Mutex<Cache>,
}

impl Allocator {
    pub const fn new() -> Self {
        Self { cache: Mutex::new(Cache::new()) }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `mapped_len(size)` bytes at a 2 MiB boundary, and whether they are fresh (zeroed by the
    /// kernel) rather than a reused block; null if the kernel has no memory.
    fn map_large(&self, size: usize) -> (*mut u8, bool) {
        let len = mapped_len(size);
        let cached = self.cache().take(len);
        if let Some((addr, have)) = cached {
            if have > len {
                // SAFETY: the tail is a page-aligned part of a mapping this cache owned, and
                // that the cache just handed over; no one else refers to it.
                unsafe { libc::munmap((addr + len) as *mut libc::c_void, have - len) };
            }
            return (addr as *mut u8, false);
        }
        let over = len + HUGE_PAGE;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing has no
        // preconditions and aliases nothing.
        let raw = unsafe {
            libc::mmap(
                ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return (ptr::null_mut(), false);
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let head = aligned - start;
        let tail = over - head - len;
        // SAFETY: both trimmed ranges lie inside the mapping just made, are page-aligned (mmap
        // returns page-aligned memory, `HUGE_PAGE` and `len` are multiples of the page size), and
        // are not part of the block handed out; the advice is for the block itself.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        (aligned as *mut u8, true)
    }

    /// Takes back a block from `map_large(size)`: cached for reuse if it fits, else unmapped.
    ///
    /// # Safety
    /// `ptr` must come from `self.map_large(size)` and not be used afterwards.
    unsafe fn unmap_large(&self, ptr: *mut u8, size: usize) {
        let len = mapped_len(size);
        let kept = self.cache().put(ptr as usize, len);
        match kept {
            Some(evicted) => {
                // SAFETY: the block is the cache's now (the caller gave it up); the kernel may
                // reclaim its pages lazily. The evicted blocks were the cache's and are no
                // longer referenced anywhere.
                unsafe {
                    libc::madvise(ptr.cast(), len, libc::MADV_FREE);
                    unmap_all(&evicted);
                }
            }
            // SAFETY: `ptr` came from `map_large(size)`: exactly `len` mapped bytes, given up.
            None => unsafe {
                libc::munmap(ptr.cast(), len);
            },
        }
    }
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new()
    }
}

/// # Safety
/// Every non-empty block must be a whole mapping that nothing refers to any more.
unsafe fn unmap_all(blocks: &Evicted) {
    for &(addr, len) in blocks {
        if len > 0 {
            // SAFETY: the caller's promise.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

impl Drop for Allocator {
    /// Only allocators made by tests are ever dropped (the global one is a static).
    fn drop(&mut self) {
        let cached = self.cache().drain();
        // SAFETY: cached blocks belong to the cache alone.
        unsafe { unmap_all(&cached) };
    }
}

// SAFETY: every block is freed by the same path that allocated it: the path is chosen by the
// layout, and Rust passes the allocation's own layout to `dealloc` and `realloc`. Large blocks
// are `mapped_len(size)` bytes at a `HUGE_PAGE` boundary, which satisfies every alignment that
// `is_large` admits.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            self.map_large(layout.size()).0
        } else {
            // SAFETY: the caller's promises for `layout` are those `System` needs.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            let (block, fresh) = self.map_large(layout.size());
            if !block.is_null() && !fresh {
                // SAFETY: a reused block has at least `layout.size()` writable bytes and holds
                // old data; a fresh mapping is zeroed by the kernel (and not touched here, so
                // its pages stay unfaulted).
                unsafe { ptr::write_bytes(block, 0, layout.size()) };
            }
            block
        } else {
            // SAFETY: as in `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            // SAFETY: a large layout means `ptr` came from `map_large(layout.size())`.
            unsafe { self.unmap_large(ptr, layout.size()) }
        } else {
            // SAFETY: a small layout means `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size`, rounded up to `layout.align()`, does not
        // overflow `isize`, which is all `Layout` requires.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(&layout), is_large(&new_layout)) {
            // SAFETY: both small: `ptr` is `System`'s, with this layout.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            // Still fits the mapping (sizes are rounded up to huge pages): nothing to do.
            (true, true) if mapped_len(new_size) == mapped_len(layout.size()) => ptr,
            _ => {
                // SAFETY: `new_layout` is a valid layout of non-zero size (see above; a large
                // layout is never zero-sized and `realloc` forbids `new_size == 0`).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are live and distinct, each at least the copied length;
                    // `ptr` is given up only after the copy, with its own layout.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each test uses an allocator of its own (not the global one), so its cache is not shared
    //! with whatever else the test binary allocates, and what it holds is known exactly.
    use super::*;

    const MIB: usize = 1 << 20;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    fn cached(a: &Allocator) -> Vec<Block> {
        let mut blocks: Vec<Block> = a.cache().slots.iter().copied().filter(|b| b.1 > 0).collect();
        blocks.sort_unstable();
        blocks
    }

    /// Allocates `size` bytes from `a`, checks they are usable, and returns the pointer.
    fn alloc_checked(a: &Allocator, layout: Layout) -> *mut u8 {
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % layout.align(), 0);
        // SAFETY: `p` has `layout.size()` writable bytes.
        unsafe {
            p.write(1);
            p.add(layout.size() - 1).write(2);
            assert_eq!((p.read(), p.add(layout.size() - 1).read()), (1, 2));
        }
        p
    }

    fn fill(p: *mut u8, len: usize, byte: u8) {
        // SAFETY: callers pass a live block of at least `len` bytes.
        unsafe { ptr::write_bytes(p, byte, len) };
    }

    fn all(p: *const u8, len: usize, byte: u8) -> bool {
        // SAFETY: callers pass a live block of at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(p, len) }.iter().all(|&b| b == byte)
    }

    // === the bookkeeping ===

    #[test]
    fn cache_takes_the_smallest_block_that_fits_within_twice_the_request() {
        let mut c = Cache::new();
        for (addr, len) in [(1, 8 * MIB), (2, 4 * MIB), (3, 6 * MIB), (4, 2 * MIB)] {
            c.put(addr, len).unwrap();
        }
        assert_eq!(c.take(3 * MIB), Some((2, 4 * MIB)));
        assert_eq!(c.take(3 * MIB), Some((3, 6 * MIB)));
        // 8 MiB is more than twice 3 MiB: left for a bigger request; 2 MiB is too small.
        assert_eq!(c.take(3 * MIB), None);
        assert_eq!(c.take(8 * MIB), Some((1, 8 * MIB)));
        assert_eq!(c.bytes, 2 * MIB);
    }

    #[test]
    fn a_full_cache_evicts_the_smallest_block_no_bigger_than_the_new_one() {
        let mut c = Cache::new();
        for i in 0..SLOTS {
            c.put(100 + i, (2 + i) * MIB).unwrap();
        }
        let evicted = c.put(1, 4 * MIB).expect("room made from a smaller block");
        let evicted: Vec<Block> = evicted.iter().copied().filter(|b| b.1 > 0).collect();
        assert_eq!(evicted, vec![(100, 2 * MIB)]);
        assert!(c.slots.contains(&(1, 4 * MIB)));
        assert_eq!(c.bytes, c.slots.iter().map(|b| b.1).sum::<usize>());
    }

    #[test]
    fn a_block_is_refused_rather_than_evicting_bigger_ones() {
        let mut c = Cache::new();
        for i in 0..SLOTS {
            c.put(100 + i, 4 * MIB).unwrap();
        }
        let before = c.slots;
        assert!(c.put(1, 2 * MIB).is_none());
        assert_eq!(c.slots, before, "nothing evicted when the block is refused");
    }

    #[test]
    fn the_byte_cap_is_kept_by_evicting_smaller_blocks() {
        let mut c = Cache::new();
        c.put(1, 32 * MIB).unwrap();
        c.put(2, 64 * MIB).unwrap();
        c.put(3, 128 * MIB).unwrap();
        assert_eq!(c.bytes, 224 * MIB);
        // 224 + 64 > 256: the 32 MiB block goes, the bigger ones stay.
        let evicted = c.put(4, 64 * MIB).unwrap();
        assert_eq!(evicted.iter().filter(|b| b.1 > 0).collect::<Vec<_>>(), vec![&(1, 32 * MIB)]);
        assert_eq!(c.bytes, 256 * MIB);
        assert!(c.put(5, CACHE_BYTES + HUGE_PAGE).is_none(), "a block over the whole cap is never kept");
    }

    // === the mappings (a private allocator each) ===

    #[test]
    fn only_layouts_from_the_threshold_up_with_modest_alignment_are_large() {
        assert!(!is_large(&layout(LARGE - 1)));
        assert!(is_large(&layout(LARGE)));
        assert!(is_large(&Layout::from_size_align(LARGE, HUGE_PAGE).unwrap()));
        assert!(!is_large(&Layout::from_size_align(LARGE, 2 * HUGE_PAGE).unwrap()));
        assert_eq!((mapped_len(LARGE), mapped_len(HUGE_PAGE + 1)), (HUGE_PAGE, 2 * HUGE_PAGE));
    }

    #[test]
    fn large_blocks_are_huge_page_aligned_and_usable_end_to_end() {
        let a = Allocator::new();
        for size in [LARGE, LARGE + 1, HUGE_PAGE, HUGE_PAGE + 1, 5 * HUGE_PAGE + 123] {
            let p = alloc_checked(&a, layout(size));
            assert_eq!(p as usize % HUGE_PAGE, 0, "{size} bytes");
            // SAFETY: allocated above with this layout.
            unsafe { a.dealloc(p, layout(size)) };
        }
    }

    #[test]
    fn small_and_over_aligned_blocks_come_from_the_system_allocator_and_are_not_cached() {
        let a = Allocator::new();
        let over_aligned = Layout::from_size_align(LARGE, 2 * HUGE_PAGE).unwrap();
        for l in [layout(16), layout(LARGE - 1), over_aligned] {
            let p = alloc_checked(&a, l);
            // SAFETY: allocated above with this layout.
            unsafe { a.dealloc(p, l) };
        }
        assert!(cached(&a).is_empty());
    }

    #[test]
    fn freed_large_blocks_are_cached_and_handed_out_again() {
        let a = Allocator::new();
        let p = alloc_checked(&a, layout(3 * MIB));
        // SAFETY: allocated above with this layout; not used again.
        unsafe { a.dealloc(p, layout(3 * MIB)) };
        assert_eq!(cached(&a), vec![(p as usize, 2 * HUGE_PAGE)]);
        let q = alloc_checked(&a, layout(4 * MIB));
        assert_eq!(q, p, "same mapped length: the cached block");
        assert!(cached(&a).is_empty());
        // SAFETY: allocated above with this layout.
        unsafe { a.dealloc(q, layout(4 * MIB)) };
    }

    #[test]
    fn a_bigger_cached_block_is_trimmed_to_the_request() {
        let a = Allocator::new();
        let big = alloc_checked(&a, layout(4 * MIB));
        // SAFETY: allocated above with this layout; not used again.
        unsafe { a.dealloc(big, layout(4 * MIB)) };
        let small = alloc_checked(&a, layout(2 * MIB));
        assert_eq!(small, big, "the 4 MiB block serves a 2 MiB request");
        // SAFETY: allocated above with this layout; not used again.
        unsafe { a.dealloc(small, layout(2 * MIB)) };
        // Only the head came back: the tail was unmapped when the block was handed out.
        assert_eq!(cached(&a), vec![(big as usize, HUGE_PAGE)]);
    }

    #[test]
    fn zeroed_large_blocks_are_zero_when_fresh_and_when_reused() {
        let a = Allocator::new();
        let l = layout(3 * MIB);
        // SAFETY: a non-zero-sized layout.
        let fresh = unsafe { a.alloc_zeroed(l) };
        assert!(all(fresh, l.size(), 0));
        fill(fresh, l.size(), 0xAB);
        // SAFETY: allocated above with this layout; not used again.
        unsafe { a.dealloc(fresh, l) };
        // SAFETY: as above.
        let reused = unsafe { a.alloc_zeroed(l) };
        assert_eq!(reused, fresh, "the cached block, which held 0xAB");
        assert!(all(reused, l.size(), 0));
        // SAFETY: allocated above with this layout.
        unsafe { a.dealloc(reused, l) };
    }

    #[test]
    fn a_full_cache_unmaps_what_it_evicts_and_oversized_blocks_are_unmapped_at_once() {
        let a = Allocator::new();
        let l = layout(LARGE);
        let blocks: Vec<*mut u8> = (0..=SLOTS).map(|_| alloc_checked(&a, l)).collect();
        for &p in &blocks {
            // SAFETY: allocated above with this layout; not used again.
            unsafe { a.dealloc(p, l) };
        }
        assert_eq!(cached(&a).len(), SLOTS);
        assert_eq!(a.cache().bytes, SLOTS * HUGE_PAGE);
        // Mapped but never touched: costs address space only.
        let huge = layout(CACHE_BYTES + 1);
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { a.alloc(huge) };
        assert!(!p.is_null());
        // SAFETY: allocated above with this layout; not used again.
        unsafe { a.dealloc(p, huge) };
        assert!(!cached(&a).iter().any(|b| b.0 == p as usize));
    }

    #[test]
    fn realloc_keeps_the_contents_on_every_path() {
        let a = Allocator::new();
        let cases = [
            (1000, 5000),           // small -> small: the system's realloc
            (LARGE, LARGE + 1000),  // large -> large, same mapping: in place
            (LARGE, 3 * HUGE_PAGE), // large -> bigger mapping: moved
            (64 << 10, 3 * MIB),    // small -> large
            (3 * MIB, 64 << 10),    // large -> small
        ];
        for (from, to) in cases {
            let old = alloc_checked(&a, layout(from));
            fill(old, from, 0x5A);
            // SAFETY: `old` is live with `layout(from)`; `to` is non-zero.
            let new = unsafe { a.realloc(old, layout(from), to) };
            assert!(!new.is_null());
            assert!(all(new, from.min(to), 0x5A), "{from} -> {to}");
            if is_large(&layout(from)) && is_large(&layout(to)) && mapped_len(from) == mapped_len(to) {
                assert_eq!(new, old, "{from} -> {to} stays in place");
            }
            if is_large(&layout(to)) {
                assert_eq!(new as usize % HUGE_PAGE, 0);
                // The whole new size is usable.
                fill(new, to, 0x33);
            }
            // SAFETY: `new` is live with `layout(to)`.
            unsafe { a.dealloc(new, layout(to)) };
        }
    }
}
