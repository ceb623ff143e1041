//! A key whose `Hash` panics once, at a chosen call on this thread: the
//! cache hashes keys again under a shard's write lock (to grow its table,
//! to move the last entry into a removed one's place, to reap).

use std::panic::{AssertUnwindSafe, catch_unwind};

std::thread_local! {
    /// Hash calls left on this thread before [`Fused`]'s hash panics
    /// (negative: never).
    static FUSE: std::cell::Cell<i64> = const { std::cell::Cell::new(-1) };
}

/// A key whose `Hash` panics at the call [`lit`] chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fused(pub(crate) u32);

impl std::hash::Hash for Fused {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        FUSE.with(|fuse| {
            let left = fuse.get();
            if left >= 0 {
                fuse.set(left - 1);
                assert!(left != 0, "hash of {} refused", self.0);
            }
        });
        self.0.hash(h);
    }
}

/// Runs `f` with the `n + 1`-th hash of a [`Fused`] key on this thread
/// panicking (if `f` hashes that many), caught, and turns the fuse off
/// again; also returns the hashes the fuse had left (0 or more: it never
/// went off).
pub(crate) fn lit<T>(n: i64, f: impl FnOnce() -> T) -> (std::thread::Result<T>, i64) {
    FUSE.with(|fuse| fuse.set(n));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    (outcome, FUSE.with(|fuse| fuse.replace(-1)))
}
