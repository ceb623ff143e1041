//! Live heap bytes, for the memory table of the comparison bench.
//!
//! Including this module installs a counting global allocator: the system
//! allocator, with the bytes requested and freed kept in two atomics. Sizes
//! are those requested, not what malloc rounds them up to. This is the one
//! place in the project with `unsafe`: a `GlobalAlloc` impl must be.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// The system allocator, counting bytes.
struct Counting {
    allocated: AtomicU64,
    freed: AtomicU64,
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocated.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocated.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.freed.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.allocated.fetch_add(new_size as u64, Relaxed);
        self.freed.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds
        // `realloc`'s contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting {
    allocated: AtomicU64::new(0),
    freed: AtomicU64::new(0),
};

/// Bytes currently allocated on the heap by the whole process.
pub(crate) fn live_bytes() -> i64 {
    GLOBAL.allocated.load(Relaxed) as i64 - GLOBAL.freed.load(Relaxed) as i64
}
