//! A global allocator that keeps count of the heap bytes in use, so that a
//! test can tell a leak (bytes that stay allocated) from the allocator
//! holding on to memory it was given back (which shows in resident memory
//! alone). A test binary installs it with
//! `#[global_allocator] static HEAP: LiveBytes = LiveBytes;`.
#![allow(unsafe_code)] // implementing `GlobalAlloc` is unsafe by nature

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

/// The system allocator, counting the bytes allocated and not yet freed (in
/// every thread of the process).
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveBytes;

static LIVE: AtomicI64 = AtomicI64::new(0);

/// Heap bytes in use now, when [`LiveBytes`] is the global allocator (0
/// otherwise).
pub fn live_bytes() -> u64 {
    u64::try_from(LIVE.load(Ordering::Relaxed)).unwrap_or(0)
}

fn count(bytes: usize, sign: i64) {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    LIVE.fetch_add(sign * bytes, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size(), 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size(), 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        moved
    }
}
