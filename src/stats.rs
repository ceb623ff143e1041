//! Cache statistics: a snapshot type and the counters behind it.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use parking_lot::Mutex;

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
/// // `{:?}` names every counter, removals by cause.
/// assert!(format!("{stats:?}").starts_with("CacheStats { hits: 1, misses: 1, expired: 0, explicit: 0"));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) removals: [u64; 4],
    pub(crate) load_successes: u64,
    pub(crate) load_failures: u64,
    pub(crate) load_nanos: u64,
    pub(crate) refreshes: u64,
    pub(crate) stale_hits: u64,
    pub(crate) skipped_refreshes: u64,
}

impl std::fmt::Debug for CacheStats {
    /// Every counter by name, removals by cause.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStats")
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .field("expired", &self.removals(RemovalCause::Expired))
            .field("explicit", &self.removals(RemovalCause::Explicit))
            .field("replaced", &self.removals(RemovalCause::Replaced))
            .field("size", &self.removals(RemovalCause::Size))
            .field("load_successes", &self.load_successes)
            .field("load_failures", &self.load_failures)
            .field("load_nanos", &self.load_nanos)
            .field("refreshes", &self.refreshes)
            .field("stale_hits", &self.stale_hits)
            .field("skipped_refreshes", &self.skipped_refreshes)
            .finish()
    }
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
        if total == 0 {
            1.0
        } else {
            self.hits as f64 / total as f64
        }
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

    /// Loader calls that returned a value: `get_with` / `try_get_with`
    /// inits, and a [`LoadingCache`](crate::LoadingCache)'s (or
    /// [`StoreCache`](crate::StoreCache)'s) loads, background reloads and
    /// batches included.
    pub fn load_successes(&self) -> u64 {
        self.load_successes
    }

    /// Loader calls that returned an error or panicked, and async loads
    /// dropped before they finished (their caller cancelled them).
    pub fn load_failures(&self) -> u64 {
        self.load_failures
    }

    /// All loader calls: successes and failures, background reloads
    /// included (a [`LoadingCache::get_many`](crate::LoadingCache::get_many)
    /// batch is one call).
    pub fn loads(&self) -> u64 {
        self.load_successes + self.load_failures
    }

    /// Time spent in loaders, in total: from each load's start to its
    /// end, so an async load counts the time it waited to be polled, and
    /// a cancelled one the time until it was dropped.
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

    /// Background reloads run by a [`LoadingCache`](crate::LoadingCache)
    /// (refresh-ahead, stale-while-revalidate, early expiry). Each is also
    /// counted in [`loads`](Self::loads), with its success or failure.
    pub fn refreshes(&self) -> u64 {
        self.refreshes
    }

    /// Reads of a [`LoadingCache`](crate::LoadingCache) answered with a value
    /// past its time to live: inside the stale-while-revalidate window (also
    /// counted as a hit), or kept by stale-if-error after a failed load
    /// (the read also counts as a miss, since it loaded).
    pub fn stale_hits(&self) -> u64 {
        self.stale_hits
    }

    /// Background reloads that were due but not run because the reload
    /// queue was full. The entry kept its value; a later read tries again.
    pub fn skipped_refreshes(&self) -> u64 {
        self.skipped_refreshes
    }
}

/// Counters of loader calls, shared by all shards (loads are rare next to hits).
#[derive(Debug, Default)]
pub(crate) struct LoadCounters {
    successes: AtomicU64,
    failures: AtomicU64,
    nanos: AtomicU64,
    refreshes: AtomicU64,
    skipped_refreshes: AtomicU64,
}

impl LoadCounters {
    /// Counts one background reload started.
    pub(crate) fn refreshed(&self) {
        self.refreshes.fetch_add(1, Relaxed);
    }

    /// Counts one background reload skipped for a full queue.
    pub(crate) fn skipped_refresh(&self) {
        self.skipped_refreshes.fetch_add(1, Relaxed);
    }

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
        stats.refreshes = self.refreshes.load(Relaxed);
        stats.skipped_refreshes = self.skipped_refreshes.load(Relaxed);
    }
}

/// Number of per-thread stripes of hit and miss counters in each cache.
const STRIPES: usize = 64;

/// One thread's hit, miss and stale-hit counters, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    /// A loading cache's reads answered with a stale value: counted here
    /// rather than in [`LoadCounters`], where the readers of a hot key in
    /// its stale window would all add to one word.
    stale_hits: AtomicU64,
}

/// Exact hit, miss and stale-hit counts without a locked instruction on the read path.
///
/// Every live thread owns a process-wide index, handed out from a pool and
/// returned when the thread exits, so no two live threads share an index.
/// A thread whose index is below [`STRIPES`] is the only writer of that
/// stripe and counts with a plain load and store; the pool's mutex orders a
/// thread's last store before the next owner's first load. Threads beyond
/// that (more than 64 alive at once) share one stripe with `fetch_add`.
///
/// A count reads the thread's stripe number from a constant-initialized
/// thread-local without a destructor ([`STRIPE`]): one load, with no
/// lazy-initialization state to test. The index itself is owned by a
/// second thread-local ([`INDEX`]), set up on the thread's first count and
/// dropped at its exit, which publishes and withdraws the stripe number.
#[derive(Debug)]
pub(crate) struct Lookups {
    stripes: Box<[Stripe; STRIPES]>,
    shared: Stripe,
}

impl Default for Lookups {
    fn default() -> Self {
        Lookups {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
            shared: Stripe::default(),
        }
    }
}

impl Lookups {
    /// Counts one lookup.
    #[inline]
    pub(crate) fn record(&self, hit: bool) {
        self.count(if hit { Count::Hit } else { Count::Miss });
    }

    /// Counts one read a loading cache answered with a stale value.
    #[inline]
    pub(crate) fn record_stale_hit(&self) {
        self.count(Count::StaleHit);
    }

    /// Adds one to `which` in the calling thread's stripe.
    #[inline]
    fn count(&self, which: Count) {
        match self.stripes.get(STRIPE.with(Cell::get)) {
            Some(own) => own.count(which),
            None => self.count_unstriped(which),
        }
    }

    /// Counts for a thread without a stripe number yet (its first count
    /// takes one), beyond the stripes, or exiting.
    #[cold]
    #[inline(never)]
    fn count_unstriped(&self, which: Count) {
        let index = INDEX.try_with(|i| i.0).ok();
        match index.and_then(|i| self.stripes.get(i)) {
            Some(own) => own.count(which),
            None => {
                self.shared.counter(which).fetch_add(1, Relaxed);
            }
        }
    }

    /// Cumulative stale hits of these counters.
    pub(crate) fn stale_hits(&self) -> u64 {
        self.stripes
            .iter()
            .chain([&self.shared])
            .map(|s| s.stale_hits.load(Relaxed))
            .sum()
    }

    /// Cumulative (hits, misses) of these counters. (A `get` on a cache
    /// without expiry counts its hit in its shard lock instead, see
    /// `shard::raw::lock`; the cache adds those.)
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.stripes
            .iter()
            .chain([&self.shared])
            .fold((0, 0), |(h, m), s| {
                (h + s.hits.load(Relaxed), m + s.misses.load(Relaxed))
            })
    }
}

/// Which counter of a [`Stripe`].
#[derive(Debug, Clone, Copy)]
enum Count {
    Hit,
    Miss,
    StaleHit,
}

impl Stripe {
    /// The counter of `which`.
    #[inline]
    fn counter(&self, which: Count) -> &AtomicU64 {
        match which {
            Count::Hit => &self.hits,
            Count::Miss => &self.misses,
            Count::StaleHit => &self.stale_hits,
        }
    }

    /// One count by the stripe's only writer: a plain load and store.
    #[inline]
    fn count(&self, which: Count) {
        let counter = self.counter(which);
        counter.store(counter.load(Relaxed) + 1, Relaxed);
    }
}

/// Indices of exited threads, for reuse.
static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// The next never-used index.
static NEXT: Mutex<usize> = Mutex::new(0);

/// A thread's index, returned to the pool when the thread exits.
struct ThreadIndex(usize);

impl ThreadIndex {
    /// Takes an index from the pool and publishes it in [`STRIPE`].
    fn acquire() -> Self {
        let reused = FREE.lock().pop();
        let index = reused.unwrap_or_else(|| {
            let mut next = NEXT.lock();
            *next += 1;
            *next - 1
        });
        STRIPE.with(|s| s.set(index));
        ThreadIndex(index)
    }
}

impl Drop for ThreadIndex {
    fn drop(&mut self) {
        // Withdraw the number before the index can pass to another thread.
        STRIPE.with(|s| s.set(NO_STRIPE));
        FREE.lock().push(self.0);
    }
}

/// This thread's process-wide index (see [`Lookups`]): unique among live
/// threads, small, and reused after a thread exits. The shard lock uses it
/// to pick the thread's reader slot. `usize::MAX` on a thread that is
/// exiting and has given its index back.
#[inline]
pub(crate) fn thread_index() -> usize {
    let index = STRIPE.with(Cell::get);
    if index != NO_STRIPE {
        return index;
    }
    thread_index_slow()
}

/// [`thread_index`] on a thread that has none published yet: takes one.
#[cold]
#[inline(never)]
fn thread_index_slow() -> usize {
    INDEX.try_with(|i| i.0).unwrap_or(NO_STRIPE)
}

/// [`STRIPE`]'s value while the thread holds no index.
const NO_STRIPE: usize = usize::MAX;

thread_local! {
    /// The index this thread holds, or [`NO_STRIPE`].
    static STRIPE: Cell<usize> = const { Cell::new(NO_STRIPE) };
    /// The index itself, acquired on the first count and released at exit.
    static INDEX: ThreadIndex = ThreadIndex::acquire();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_exact_across_threads_and_index_reuse() {
        let lookups = Lookups::default();
        std::thread::scope(|s| {
            for round in 0..3 {
                let handles: Vec<_> = (0..80)
                    .map(|t| {
                        let lookups = &lookups;
                        s.spawn(move || {
                            for i in 0..1_000 {
                                lookups.record((i + t + round) % 3 != 0);
                                if i % 10 == 0 {
                                    lookups.record_stale_hit();
                                }
                            }
                        })
                    })
                    .collect();
                handles.into_iter().for_each(|h| h.join().unwrap());
            }
        });
        let (hits, misses) = lookups.totals();
        assert_eq!(
            hits + misses,
            3 * 80 * 1_000,
            "no lookup lost, 80 threads > 64 stripes"
        );
        let expected_misses: u64 = (0..3u64)
            .flat_map(|r| {
                (0..80u64)
                    .map(move |t| (0..1_000u64).filter(|i| (i + t + r) % 3 == 0).count() as u64)
            })
            .sum();
        assert_eq!(misses, expected_misses);
        assert_eq!(lookups.stale_hits(), 3 * 80 * 100, "no stale hit lost");
    }
}
