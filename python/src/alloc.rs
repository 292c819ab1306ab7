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
use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::Mutex;

/// Allocations of at least this many bytes get their own huge-page mapping.
const LARGE: usize = 1 << 20;
const HUGE_PAGE: usize = 2 << 20;
/// Freed large blocks kept for reuse: at most this many bytes in at most `SLOTS` blocks.
const CACHE_BYTES: usize = 256 << 20;
const SLOTS: usize = 16;

/// Cached blocks as (address, mapped length); a zero length is an empty slot.
struct Cache {
    slots: [(usize, usize); SLOTS],
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache { slots: [(0, 0); SLOTS], bytes: 0 });

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cached block of at least `len` bytes (and at most twice that, so small requests leave big
/// blocks alone), trimmed to exactly `len`.
fn take_cached(len: usize) -> Option<*mut u8> {
    let (addr, have) = {
        let mut cache = cache();
        let best =
            (0..SLOTS).filter(|&i| (len..=2 * len).contains(&cache.slots[i].1)).min_by_key(|&i| cache.slots[i].1)?;
        let slot = std::mem::take(&mut cache.slots[best]);
        cache.bytes -= slot.1;
        slot
    };
    if have > len {
        // SAFETY: the tail is a page-aligned part of the cached mapping, owned by no one.
        unsafe { libc::munmap((addr + len) as *mut libc::c_void, have - len) };
    }
    Some(addr as *mut u8)
}

/// Keeps a freed block for reuse if it fits the cache; hands it back otherwise.
fn put_cached(addr: usize, len: usize) -> bool {
    if len > CACHE_BYTES {
        return false;
    }
    let evicted = (|| {
        let mut cache = cache();
        // Make room by dropping smaller blocks (big ones are the expensive ones to fault in).
        let mut evicted = [(0usize, 0usize); SLOTS];
        loop {
            let free = cache.slots.iter().any(|s| s.1 == 0);
            if free && cache.bytes + len <= CACHE_BYTES {
                break;
            }
            let smallest = (0..SLOTS).filter(|&i| cache.slots[i].1 > 0).min_by_key(|&i| cache.slots[i].1)?;
            if cache.slots[smallest].1 > len && !free {
                return None;
            }
            evicted[smallest] = std::mem::take(&mut cache.slots[smallest]);
            cache.bytes -= evicted[smallest].1;
        }
        let free = (0..SLOTS).find(|&i| cache.slots[i].1 == 0)?;
        cache.slots[free] = (addr, len);
        cache.bytes += len;
        Some(evicted)
    })();
    let Some(evicted) = evicted else {
        return false;
    };
    // SAFETY: the cache owns these blocks; the kernel may now reclaim the pages lazily.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_FREE);
        for (a, l) in evicted {
            if l > 0 {
                libc::munmap(a as *mut libc::c_void, l);
            }
        }
    }
    true
}

pub struct Allocator;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= HUGE_PAGE
}

fn mapped_len(size: usize) -> usize {
    size.div_ceil(HUGE_PAGE) * HUGE_PAGE
}

/// `mapped_len(size)` bytes at a 2 MiB boundary: a cached block, or a new mapping.
unsafe fn map_large(size: usize) -> *mut u8 {
    let len = mapped_len(size);
    if let Some(block) = take_cached(len) {
        return block;
    }
    let over = len + HUGE_PAGE;
    // SAFETY: an anonymous private mapping has no preconditions.
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
        return ptr::null_mut();
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = over - head - len;
    // SAFETY: both trimmed ranges lie inside the mapping just made and are page-aligned.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    aligned as *mut u8
}

unsafe fn unmap_large(ptr: *mut u8, size: usize) {
    let len = mapped_len(size);
    if !put_cached(ptr as usize, len) {
        // SAFETY: `ptr` came from `map_large(size)`: exactly `len` mapped bytes.
        unsafe {
            libc::munmap(ptr.cast(), len);
        }
    }
}

// SAFETY: every block is freed by the same path that allocated it: the path is chosen by the
// layout, and Rust passes the allocation's own layout to `dealloc` and `realloc`.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            unsafe { map_large(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            let block = unsafe { map_large(layout.size()) };
            if !block.is_null() {
                // A reused block holds old bytes.
                unsafe { ptr::write_bytes(block, 0, layout.size()) };
            }
            block
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            unsafe { unmap_large(ptr, layout.size()) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(&layout), is_large(&new_layout)) {
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            // Still fits the mapping (sizes are rounded up to huge pages): nothing to do.
            (true, true) if mapped_len(new_size) == mapped_len(layout.size()) => ptr,
            _ => {
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
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
