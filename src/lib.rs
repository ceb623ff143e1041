//! larder: an in-process, concurrent, in-memory cache engine.
//!
//! See the README for the tour. The crate's items:
//!
//! - [`Cache`] and its [`CacheBuilder`] ([`BuildError`] for bad settings,
//!   [`Policy`] for the settings read back);
//! - [`LoadingCache`], built by [`CacheBuilder::loader`] from a [`Loader`]:
//!   read-through with refresh-ahead, stale-while-revalidate,
//!   stale-if-error, early expiry and negative caching
//!   ([`LoadingCacheBuilder`] has its settings);
//! - [`StoreCache`], built by [`CacheBuilder::store`] from a [`Store`]:
//!   read-through plus write-through, write-around or write-behind
//!   ([`StoreCacheBuilder`] has its settings, [`WriteStats`] the counters);
//! - [`Cache::entry`] for moka's entry API: [`Entry`] from `or_insert_with`
//!   and its kin, [`Op`] and [`CompResult`] for atomic computes
//!   (`and_compute_with`, `and_upsert_with`), each with an `_async` form
//!   for async code (`or_insert_with_async`, `and_compute_with_async`);
//! - [`Expiry`] for per-entry lifetimes the cache decides on each write
//!   and read, and [`Cache::insert_with_ttl`], [`Cache::expires_in`],
//!   [`Cache::expire_in`] and [`Cache::persist`] for one entry's lifetime
//!   given, read or changed by the caller (Redis's `SET … EX`, `TTL`,
//!   `EXPIRE` and `PERSIST`), which [`LoadingCache`] (a value's time to
//!   live) and [`StoreCache`] (its cached copy's) have too;
//! - [`RemovalCause`] for the listener, [`CacheStats`] for the counters;
//! - `clock::MockClock` (feature `test-util`) to drive time in tests.
//!
//! # Cargo features
//!
//! | feature | what it adds | cost |
//! |---|---|---|
//! | `test-util` | `clock::MockClock` and `Cache::check_invariants` | one branch per clock read |
// `unsafe` is denied everywhere (Cargo.toml's lints) but in two modules:
// `shard::raw` (the SSE2 tag match, the shard lock and a write's prefetch
// of its sketch line) and `expiry::tsc`
// (one `rdtscp` to read the clock), each of which a benchmark showed to be
// needed.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod cache;
mod entry;
mod expiry;
mod load;
mod maintenance;
mod notify;
mod padded;
mod policy;
mod shard;
mod stats;
mod write;

pub use builder::{BuildError, CacheBuilder, Policy};
pub use cache::{Cache, Iter};
pub use entry::{CompResult, Entry, Op, OwnedKeyEntrySelector, RefKeyEntrySelector};
pub use expiry::Expiry;
pub use load::{Loader, LoadingCache, LoadingCacheBuilder};
pub use notify::RemovalCause;
pub use stats::CacheStats;
pub use write::{
    Change, CloseReport, DeadLetter, Store, StoreCache, StoreCacheBuilder, WhenFull, WriteError,
    WriteFailure, WriteStats,
};

/// Time sources for tests.
#[cfg(feature = "test-util")]
pub mod clock {
    pub use crate::expiry::clock::MockClock;
}

/// The write-behind buffer, for the fuzz target and model tests only.
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod write_buffer {
    pub use crate::write::buffer::{
        Backoff, Buffer, BufferStats, Change, DeadLetter, Receipt, Seq, SlotId, Taken, Uncompared,
    };
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
