//! Cache statistics: a snapshot type and the counters behind it.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use crate::RemovalCause;

/// A snapshot of a cache's counters, from [`Cache::stats`](crate::Cache::stats).
///
/// Hits and misses count `get` calls (and the lookups of `get_with` /
/// `try_get_with`); `peek` and `contains_key` are not counted.
///
/// # Examples
///
/// ```
/// let cache = larder::Cache::new(100);
/// cache.insert(1, "one");
/// cache.get(&1);
/// cache.get(&2);
/// let stats = cache.stats();
/// assert_eq!((stats.hits(), stats.misses()), (1, 1));
/// assert_eq!(stats.hit_rate(), 0.5);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) removals: [u64; 4],
    pub(crate) load_successes: u64,
    pub(crate) load_failures: u64,
    pub(crate) load_nanos: u64,
}

impl CacheStats {
    /// Lookups that found a live entry.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that found nothing, or only an expired entry.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// `hits / (hits + misses)`, or 1.0 before any lookup (as Caffeine does).
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 { 1.0 } else { self.hits as f64 / total as f64 }
    }

    /// Entries removed for `cause` (each removal counted once).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, RemovalCause};
    /// let cache = Cache::new(10);
    /// cache.insert(1, 1);
    /// cache.invalidate(&1);
    /// assert_eq!(cache.stats().removals(RemovalCause::Explicit), 1);
    /// ```
    pub fn removals(&self, cause: RemovalCause) -> u64 {
        self.removals[cause.index()]
    }

    /// Entries the cache removed on its own: `Size` plus `Expired`.
    pub fn evictions(&self) -> u64 {
        self.removals(RemovalCause::Size) + self.removals(RemovalCause::Expired)
    }

    /// Loader calls (`get_with`, `try_get_with`) that returned a value.
    pub fn load_successes(&self) -> u64 {
        self.load_successes
    }

    /// Loader calls that returned an error or panicked.
    pub fn load_failures(&self) -> u64 {
        self.load_failures
    }

    /// All loader calls.
    pub fn loads(&self) -> u64 {
        self.load_successes + self.load_failures
    }

    /// Time spent in loaders, in total.
    pub fn total_load_time(&self) -> Duration {
        Duration::from_nanos(self.load_nanos)
    }

    /// Mean time per loader call, or zero before any.
    pub fn average_load_time(&self) -> Duration {
        match self.loads() {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.load_nanos / n),
        }
    }
}

/// Counters of loader calls, shared by all shards (loads are rare next to hits).
#[derive(Debug, Default)]
pub(crate) struct LoadCounters {
    successes: AtomicU64,
    failures: AtomicU64,
    nanos: AtomicU64,
}

impl LoadCounters {
    /// Records one loader call.
    pub(crate) fn record(&self, ok: bool, took: Duration) {
        let counter = if ok { &self.successes } else { &self.failures };
        counter.fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Relaxed);
    }

    /// Copies the counters into `stats`.
    pub(crate) fn fill(&self, stats: &mut CacheStats) {
        stats.load_successes = self.successes.load(Relaxed);
        stats.load_failures = self.failures.load(Relaxed);
        stats.load_nanos = self.nanos.load(Relaxed);
    }
}
