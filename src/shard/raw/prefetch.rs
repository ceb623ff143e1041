//! Asking the processor for a cache line ahead of its use.
//!
//! One of the three parts of [`raw`](super), which with `expiry::tsc`
//! holds the crate's `unsafe` code. A write locks its shard and looks up
//! its key's index chunk, a likely cache miss; a new key then counts
//! itself in the admission sketch, a second miss that had to wait for the
//! first (the lookup's compares and branches come between). Asked for as
//! soon as the lock is held, the sketch's line loads while the lookup
//! waits for its own. Measured by replaying the comparison bench's mixed
//! stream (Zipf 1.0 over a million keys, capacity 100,000, 90% get with
//! insert on a miss, 10% insert) on one thread, builds alternated: 26.4
//! million operations a second against 25.2 without (median of eight runs
//! each); a stream of new keys alone went as fast either way (8.83
//! against 8.78), and one of replacements, which do not need the line,
//! within its noise (18.1 against 18.9, runs from 13.5 to 20.5). No safe
//! form does it: a read whose value is unused is dropped by the
//! compiler, and one kept with `std::hint::black_box` is a real load,
//! which stalls where the hint does not.

/// Asks for the cache line holding `item` to be loaded; nothing on
/// targets without x86-64's prefetch instruction.
#[inline(always)]
pub(crate) fn prefetch<T>(item: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` is only a hint to the memory system: it reads
    // and writes nothing the program can observe and cannot fault, at any
    // address (here a live reference's). It needs SSE, which the `cfg`
    // above makes sure the target has (every x86-64 does).
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(item).cast());
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = item;
}
