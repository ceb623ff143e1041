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
/// Hits and misses count lookups: every `get`, the lookup each
/// `get_with` / `try_get_with` / `optionally_get_with` makes (and their
/// `_async` and `_by_ref` forms), each entry-API call's first look at its
/// key (`entry(k).or_insert_with(..)`, `.and_compute_with(..)`, ...), and on a
/// [`LoadingCache`](crate::LoadingCache) or [`StoreCache`](crate::StoreCache)
/// every key a `get`, `get_async` or `get_many` reads. A lookup is a hit
/// when it is answered from the cache (with a live value; on a loading
/// cache also with a value due for refresh, a stale value inside the
/// stale-while-revalidate window, or an absence cached by `negative_ttl`)
/// and a miss when it has to load or wait for another caller's load.
/// `peek`, `contains_key`, `iter`, `refresh` and the lifetime calls
/// (`expires_in`, `expire_in`, `persist`) count nothing.
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
    /// Lookups answered from the cache (see [`CacheStats`] for what counts).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.get_with(1, || 10); // a miss, then a load
    /// cache.get_with(1, || 11); // a hit
    /// cache.peek(&1); // not counted
    /// assert_eq!((cache.stats().hits(), cache.stats().misses()), (1, 1));
    /// ```
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that found nothing, or only an expired entry (on a loading
    /// cache: nothing it could answer without loading).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder().time_to_live(Duration::from_secs(1)).clock(clock.clone()).build().unwrap();
    /// cache.insert(1, 1);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(cache.get(&1), None); // expired, not yet reaped: a miss
    /// assert_eq!(cache.get(&2), None);
    /// assert_eq!(cache.stats().misses(), 2);
    /// ```
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// `hits / (hits + misses)`, or 1.0 before any lookup (as Caffeine does).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::new(10);
    /// assert_eq!(cache.stats().hit_rate(), 1.0);
    /// cache.get(&1);
    /// assert_eq!(cache.stats().hit_rate(), 0.0);
    /// ```
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            1.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    /// Entries removed for `cause` (each removal counted once): exactly
    /// the removals the eviction listener hears of with that cause. On a
    /// [`LoadingCache`](crate::LoadingCache), an absence cached by
    /// `negative_ttl` is not a value, so its leaving (a value written or
    /// loaded over it, its expiry, an invalidation, an eviction) is neither
    /// heard nor counted here.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, RemovalCause};
    /// let cache = Cache::new(10);
    /// cache.insert(1, 1);
    /// cache.invalidate(&1);
    /// assert_eq!(cache.stats().removals(RemovalCause::Explicit), 1);
    ///
    /// // A cached absence replaced by a value: no removal.
    /// let users = Cache::builder()
    ///     .loader(|_: &u32| Ok::<Option<u32>, String>(None))
    ///     .negative_ttl(std::time::Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(users.get(&1).unwrap(), None); // the absence is cached
    /// users.insert(1, 10);
    /// assert_eq!(users.stats().removals(RemovalCause::Replaced), 0);
    /// users.insert(1, 11); // a value replaced: one
    /// assert_eq!(users.stats().removals(RemovalCause::Replaced), 1);
    /// ```
    pub fn removals(&self, cause: RemovalCause) -> u64 {
        self.removals[cause.index()]
    }

    /// Entries the cache removed on its own: `Size` plus `Expired`.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, RemovalCause, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .max_capacity(10)
    ///     .weigher(|_: &u32, v: &u32| *v)
    ///     .num_shards(1)
    ///     .time_to_live(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 11); // heavier than the cache: refused, a `Size` removal
    /// cache.insert(2, 2);
    /// cache.insert(3, 3);
    /// cache.invalidate(&3); // `Explicit`: not an eviction
    /// clock.advance(Duration::from_secs(1));
    /// cache.run_pending_tasks(); // reaps 2
    /// let s = cache.stats();
    /// assert_eq!((s.removals(RemovalCause::Size), s.removals(RemovalCause::Expired)), (1, 1));
    /// assert_eq!(s.evictions(), 2);
    /// ```
    pub fn evictions(&self) -> u64 {
        self.removals(RemovalCause::Size) + self.removals(RemovalCause::Expired)
    }

    /// Loader calls that succeeded: `get_with` inits, `try_get_with` inits
    /// that returned `Ok`, `optionally_get_with` inits (a `None` included:
    /// the loader answered that there is no value), the entry API's
    /// `or_*_insert_with` inits alike (computes are not loads), and a
    /// [`LoadingCache`](crate::LoadingCache)'s (or
    /// [`StoreCache`](crate::StoreCache)'s) loads, background reloads and
    /// batches that returned `Ok`, a key reported absent (`Ok(None)`)
    /// included.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u32| Ok::<_, String>((*k < 10).then_some(*k)))
    ///     .build()
    ///     .unwrap();
    /// cache.get(&1).unwrap();
    /// assert_eq!(cache.get(&99).unwrap(), None); // absent: a successful load too
    /// assert_eq!(cache.stats().load_successes(), 2);
    /// ```
    pub fn load_successes(&self) -> u64 {
        self.load_successes
    }

    /// Loader calls that returned an error or panicked, and async loads
    /// dropped before they finished (their caller cancelled them).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{future::Future, panic, pin::pin, task::{Context, Waker}};
    /// let cache: larder::Cache<u32, u32> = larder::Cache::new(10);
    /// let _ = cache.try_get_with(1, || Err::<u32, _>("down")); // an error
    /// let unwound = panic::catch_unwind(panic::AssertUnwindSafe(|| cache.get_with(2, || panic!("bug"))));
    /// assert!(unwound.is_err()); // a panic
    /// {
    ///     // An async load polled once, then dropped unfinished: cancelled.
    ///     let load = pin!(cache.get_with_async(3, std::future::pending()));
    ///     assert!(load.poll(&mut Context::from_waker(Waker::noop())).is_pending());
    /// }
    /// assert_eq!(cache.stats().load_failures(), 3);
    /// ```
    pub fn load_failures(&self) -> u64 {
        self.load_failures
    }

    /// All loader calls: successes and failures, background reloads
    /// included (a [`LoadingCache::get_many`](crate::LoadingCache::get_many)
    /// batch is one call).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u32| if *k == 0 { Err("no zero") } else { Ok(Some(*k)) })
    ///     .build()
    ///     .unwrap();
    /// cache.get_many([1, 2, 3]).unwrap(); // one batch
    /// cache.get(&0).unwrap_err(); // one failed load
    /// let s = cache.stats();
    /// assert_eq!((s.loads(), s.load_successes(), s.load_failures()), (2, 1, 1));
    /// ```
    pub fn loads(&self) -> u64 {
        self.load_successes + self.load_failures
    }

    /// Time spent in loaders, in total: from each load's start to its
    /// end, so an async load counts the time it waited to be polled, and
    /// a cancelled one the time until it was dropped. Measured in real
    /// time ([`Instant`](std::time::Instant)), also on a cache given a
    /// `MockClock`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{thread::sleep, time::Duration};
    /// let cache = larder::Cache::new(10);
    /// cache.get_with(1, || { sleep(Duration::from_millis(3)); 1 });
    /// cache.get_with(2, || { sleep(Duration::from_millis(3)); 2 });
    /// let s = cache.stats();
    /// assert!(s.total_load_time() >= Duration::from_millis(6));
    /// assert_eq!(s.average_load_time(), s.total_load_time() / 2);
    /// ```
    pub fn total_load_time(&self) -> Duration {
        Duration::from_nanos(self.load_nanos)
    }

    /// Mean time per loader call, or zero before any.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::new(10);
    /// assert_eq!(cache.stats().average_load_time(), std::time::Duration::ZERO);
    /// ```
    ///
    /// [`total_load_time`](Self::total_load_time) shows one after loads.
    pub fn average_load_time(&self) -> Duration {
        match self.loads() {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.load_nanos / n),
        }
    }

    /// Background reloads run by a [`LoadingCache`](crate::LoadingCache)
    /// (refresh-ahead, stale-while-revalidate, early expiry). Each is also
    /// counted in [`loads`](Self::loads), with its success or failure.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .loader(|k: &u32| Ok::<_, String>(Some(*k)))
    ///     .refresh_after(Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// cache.get(&1).unwrap(); // a load
    /// clock.advance(Duration::from_secs(10));
    /// cache.get(&1).unwrap(); // a hit that starts a reload
    /// cache.run_pending_tasks();
    /// let s = cache.stats();
    /// assert_eq!((s.refreshes(), s.loads(), s.hits()), (1, 2, 1));
    /// ```
    pub fn refreshes(&self) -> u64 {
        self.refreshes
    }

    /// Reads of a [`LoadingCache`](crate::LoadingCache) answered with a value
    /// past its time to live: inside the stale-while-revalidate window (also
    /// counted as a hit), or kept by stale-if-error after a failed load
    /// (the read also counts as a miss, since it loaded).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::{sync::{Arc, atomic::{AtomicBool, Ordering}}, time::Duration};
    /// let clock = MockClock::new();
    /// let down = Arc::new(AtomicBool::new(false));
    /// let store_down = down.clone();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_live(Duration::from_secs(10))
    ///     .loader(move |k: &u32| if store_down.load(Ordering::SeqCst) { Err("down") } else { Ok(Some(*k)) })
    ///     .stale_while_revalidate(Duration::from_secs(5))
    ///     .stale_if_error(Duration::from_secs(60))
    ///     .build()
    ///     .unwrap();
    /// cache.get(&1).unwrap(); // a miss: loaded
    /// down.store(true, Ordering::SeqCst);
    /// clock.advance(Duration::from_secs(12));
    /// assert_eq!(cache.get(&1).unwrap(), Some(1)); // stale-while-revalidate: a hit
    /// cache.run_pending_tasks(); // its reload fails; the value stays
    /// clock.advance(Duration::from_secs(10));
    /// assert_eq!(cache.get(&1).unwrap(), Some(1)); // past that window: loads, fails, stale-if-error
    /// let s = cache.stats();
    /// assert_eq!((s.stale_hits(), s.hits(), s.misses(), s.load_failures()), (2, 1, 2, 2));
    /// ```
    pub fn stale_hits(&self) -> u64 {
        self.stale_hits
    }

    /// Background reloads that were due but not run because the reload
    /// queue was full. The entry kept its value; a later read tries again.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::{sync::{Arc, Mutex, mpsc}, time::Duration};
    /// let clock = MockClock::new();
    /// let gate = Arc::new(Mutex::new(()));
    /// let (entered, reloading) = mpsc::channel();
    /// let entered = Mutex::new(entered);
    /// let held = gate.clone();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .loader(move |k: &u32| {
    ///         if std::thread::current().name() != Some("larder-reload-0") {
    ///             return Ok::<_, String>(Some(*k)); // a foreground load
    ///         }
    ///         entered.lock().unwrap().send(*k).unwrap();
    ///         let _wait = held.lock().unwrap(); // the store hangs while `gate` is held
    ///         Ok(Some(*k))
    ///     })
    ///     .refresh_after(Duration::from_secs(1))
    ///     .reload_threads(1)
    ///     .reload_queue_capacity(1)
    ///     .build()
    ///     .unwrap();
    /// for k in 1..=3 {
    ///     cache.get(&k).unwrap();
    /// }
    /// clock.advance(Duration::from_secs(1));
    /// let hang = gate.lock().unwrap();
    /// cache.get(&1).unwrap(); // due: its reload takes the one thread, and hangs
    /// assert_eq!(reloading.recv().unwrap(), 1);
    /// cache.get(&2).unwrap(); // due: its reload fills the queue
    /// cache.get(&3).unwrap(); // due, but the queue is full: skipped
    /// assert_eq!(cache.stats().skipped_refreshes(), 1);
    /// drop(hang);
    /// cache.run_pending_tasks();
    /// assert_eq!(cache.stats().refreshes(), 2);
    /// ```
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

/// Number of per-thread stripes of miss counters in each cache.
const STRIPES: usize = 64;

/// One thread's miss, retracted-hit and stale-hit counters, alone on its
/// cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe {
    /// Hits a shard lock counted that the reader then judged misses (a
    /// loading cache's entry past its stale window): taken off the locks'
    /// count.
    retracted: AtomicU64,
    misses: AtomicU64,
    /// A loading cache's reads answered with a stale value: counted here
    /// rather than in [`LoadCounters`], where the readers of a hot key in
    /// its stale window would all add to one word.
    stale_hits: AtomicU64,
}

/// Exact miss and stale-hit counts without a locked instruction on the
/// read path. Hits are counted by the shard locks, in the store that
/// releases the reader (see `shard::raw::lock`); a hit that a reader judges
/// a miss after the lock (a loading cache's) is counted here as retracted,
/// and as a miss.
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
    /// Counts one miss.
    #[inline]
    pub(crate) fn record_miss(&self) {
        self.count(Count::Miss);
    }

    /// Takes back one hit a shard lock counted, and counts a miss instead.
    #[inline]
    pub(crate) fn retract_hit(&self) {
        self.count(Count::Retracted);
        self.count(Count::Miss);
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

    /// Cumulative (retracted hits, misses) of these counters: the cache's
    /// hits are its shard locks' count less the retracted ones.
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.stripes
            .iter()
            .chain([&self.shared])
            .fold((0, 0), |(r, m), s| {
                (r + s.retracted.load(Relaxed), m + s.misses.load(Relaxed))
            })
    }
}

/// Which counter of a [`Stripe`].
#[derive(Debug, Clone, Copy)]
enum Count {
    Retracted,
    Miss,
    StaleHit,
}

impl Stripe {
    /// The counter of `which`.
    #[inline]
    fn counter(&self, which: Count) -> &AtomicU64 {
        match which {
            Count::Retracted => &self.retracted,
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
                                if (i + t + round) % 3 == 0 {
                                    lookups.record_miss();
                                } else if i % 2 == 0 {
                                    lookups.retract_hit();
                                }
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
        let (retracted, misses) = lookups.totals();
        let count = |f: fn(u64, u64, u64) -> bool| -> u64 {
            (0..3u64)
                .flat_map(|r| {
                    (0..80u64).map(move |t| (0..1_000u64).filter(|&i| f(i, t, r)).count() as u64)
                })
                .sum()
        };
        let expected_retracted = count(|i, t, r| (i + t + r) % 3 != 0 && i % 2 == 0);
        let expected_misses = count(|i, t, r| (i + t + r) % 3 == 0) + expected_retracted;
        assert_eq!(
            (retracted, misses),
            (expected_retracted, expected_misses),
            "no count lost, 80 threads > 64 stripes"
        );
        assert_eq!(lookups.stale_hits(), 3 * 80 * 100, "no stale hit lost");
    }
}
