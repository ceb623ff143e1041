//! [`Cache`]: the thin public face. Each method finds the key's shard and
//! delegates; the work lives in [`shard`](crate::shard),
//! [`load`](crate::load) and [`maintenance`](crate::maintenance); the
//! single-flight loaders (`get_with` and its kin) are in [`loads`].

mod loads;

// rustdoc lists these modules' impl blocks of `Cache` in this order,
// after `loads`' and before this file's own.
mod iter;
mod remove;
mod ttl;
mod write;

pub use iter::Iter;
pub(crate) use loads::LoadRecord;

use std::{
    borrow::Borrow,
    fmt,
    hash::Hash,
    panic::{AssertUnwindSafe, RefUnwindSafe, UnwindSafe, catch_unwind, resume_unwind},
    sync::Arc,
    time::Duration,
};

use crate::{
    CacheBuilder, CacheStats,
    builder::{Policy, Weigher},
    expiry::{Hooked, NEVER, Timing, clock::saturating_nanos, remaining},
    load::{flight::Flights, guard::Seen},
    maintenance::{INTERVAL, LONGEST_SLEEP, Maintained, Maintenance},
    notify::{Delivery, Listener, Removed},
    shard::{Now, Placeholder, ShardCell, Shards, Sighting},
    stats::{LoadCounters, Lookups},
};

/// A concurrent, bounded, expiring in-memory cache.
///
/// `Cache` is a cheap handle: clones share the same entries. It is `Send` and
/// `Sync`. Reads return clones of values (wrap large values in an `Arc`); no
/// method hands out a guard, so no caller can hold a lock of the cache.
///
/// **Locking:** entries are spread over shards, each behind a
/// reader-writer lock. A read hit takes its shard's lock shared; writes,
/// evictions and reaping take it exclusive for a bounded time. User code
/// (weigher, expiry hooks, listener, loaders, predicates) always runs with no
/// lock held. The exceptions are the key and value types' own `Hash`, `Eq`
/// and `Clone`, which run under a shard's lock (a read clones its value
/// there; a write hashes keys again as its shard's table grows or an entry
/// moves): they must not call back into the same cache, and if one panics
/// the lock is released, the removals made so far are notified, and the
/// shard is left consistent: as it was, or, when a key's `Hash` panics
/// while an insert's eviction policy chooses what to evict, with that
/// insert and its evictions finished first (the policy goes on with a
/// stand-in hash, which only blurs its frequency counts) and then the
/// panic raised to the caller.
///
/// # Examples
///
/// ```
/// use larder::Cache;
/// use std::sync::Arc;
///
/// let cache: Cache<u64, Arc<String>> = Cache::new(10_000);
/// cache.insert(7, Arc::new("seven".to_string()));
/// assert_eq!(cache.get(&7).as_deref().map(String::as_str), Some("seven"));
/// assert_eq!(cache.get(&8), None);
/// ```
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

// A panic in user code (a weigher, an expiry hook, a listener, a loader, a
// key's `Hash` or `Clone`, a value's `Clone`) leaves the cache consistent
// and usable: locks are released, removals are still delivered, flights
// are handed on (`tests/panic_safety.rs`). So a handle may cross
// `catch_unwind` without `AssertUnwindSafe`, as a `Mutex` may.
impl<K: RefUnwindSafe, V: RefUnwindSafe> UnwindSafe for Cache<K, V> {}
impl<K: RefUnwindSafe, V: RefUnwindSafe> RefUnwindSafe for Cache<K, V> {}

impl<K, V> fmt::Debug for Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("entry_count", &self.entry_count())
            .field("weighted_size", &self.weighted_size())
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

/// What the builder hands to [`Cache::from_parts`].
pub(crate) struct Parts<K, V> {
    pub(crate) shards: usize,
    pub(crate) capacity: u64,
    pub(crate) timing: Timing<K, V>,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) listener: Option<Listener<K, V>>,
    /// Values the listener is not told of, whose removals go uncounted.
    pub(crate) placeholder: Option<Placeholder<V>>,
    pub(crate) policy: Policy,
}

/// Everything the handles share.
///
/// Laid out in the order written (`repr(C)`), so that what every read
/// looks at first, the shards' table pointer, mask and hasher, opens the
/// structure, whose alignment (64, from the striped counters) puts it at
/// the start of a cache line, with the timing after it: a field added
/// elsewhere no longer moves them. When `Maintenance` grew by a
/// word the compiler's own order shifted these fields and the compare
/// bench's get hit fell from a mean of 1.15x quick_cache's rate to 1.08x
/// (13 and 26 paired runs, alternated); in this order it measured 1.17x
/// (10 runs; 8 of 10 pairs above the other order).
#[repr(C)]
struct Inner<K, V> {
    shards: Shards<K, V>,
    timing: Timing<K, V>,
    weigher: Option<Weigher<K, V>>,
    listener: Option<Listener<K, V>>,
    flights: Arc<Flights<K, V>>,
    lookups: Lookups,
    loads: LoadCounters,
    maintenance: Maintenance,
    /// The settings, for [`Cache::policy`]; read by nothing else.
    policy: Policy,
}

/// What a conditional insert does, decided with the shard locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Put the value in.
    Insert,
    /// Leave the shard as it is.
    Skip,
    /// Remove whatever the key holds.
    Remove,
}

impl<K, V> Drop for Inner<K, V> {
    fn drop(&mut self) {
        self.maintenance.stop();
    }
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache bounded to `max_capacity` entries, with default settings.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(2);
    /// cache.insert("a", 1);
    /// assert_eq!(cache.get("a"), Some(1));
    /// ```
    pub fn new(max_capacity: u64) -> Self {
        Self::builder()
            .max_capacity(max_capacity)
            .build()
            .expect("default settings with any capacity are valid")
    }

    /// A [`CacheBuilder`] with every setting at its default.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::builder().max_capacity(5).build().unwrap();
    /// assert_eq!(cache.entry_count(), 0);
    /// ```
    pub fn builder() -> CacheBuilder<K, V> {
        CacheBuilder::default()
    }

    pub(crate) fn from_parts(parts: Parts<K, V>) -> Self {
        let now = parts.timing.clock.now();
        let weighted = parts.weigher.is_some();
        let sliding = parts.timing.tti().is_some();
        let timed = parts.timing.is_timed();
        let inner = Arc::new(Inner {
            shards: Shards::new(
                parts.shards,
                parts.capacity,
                weighted,
                timed,
                sliding,
                parts.placeholder,
                now,
            ),
            timing: parts.timing,
            weigher: parts.weigher,
            listener: parts.listener,
            flights: Arc::default(),
            lookups: Lookups::default(),
            loads: LoadCounters::default(),
            maintenance: Maintenance::new(),
            policy: parts.policy,
        });
        inner.maintenance.start(&inner);
        Cache { inner }
    }

    /// Inserts `value` under `key`, replacing any previous value (the
    /// listener sees that one as `Replaced`, or as `Expired` if it had
    /// expired and was not reaped yet). The entry gets the cache's expiry
    /// settings. May evict other entries to stay within capacity.
    ///
    /// In a full cache the eviction policy may keep the entries it has
    /// and turn a new key away instead: a key it has seen seldom does not
    /// displace keys read more often (W-TinyLFU admission, see the
    /// README). The listener then hears of the new value as `Size`, and a
    /// `get` right after the insert finds nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, RemovalCause, clock::MockClock};
    /// use std::{sync::{Arc, Mutex}, time::Duration};
    /// let heard = Arc::new(Mutex::new(Vec::new()));
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(10))
    ///     .clock(clock.clone())
    ///     .eviction_listener({
    ///         let heard = heard.clone();
    ///         move |_k: Arc<u32>, v: &str, cause| heard.lock().unwrap().push((v, cause))
    ///     })
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, "a");
    /// cache.insert(1, "b");
    /// assert_eq!(cache.get(&1), Some("b"));
    /// clock.advance(Duration::from_secs(10)); // "b" expires, not yet reaped
    /// cache.insert(1, "c");
    /// assert_eq!(
    ///     *heard.lock().unwrap(),
    ///     [("a", RemovalCause::Replaced), ("b", RemovalCause::Expired)]
    /// );
    /// ```
    ///
    /// A full cache of keys read often turns one-off keys away:
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// for k in 0..10 {
    ///     cache.insert(k, k);
    /// }
    /// for _ in 0..4 {
    ///     for k in 0..10 {
    ///         cache.get(&k);
    ///     }
    /// }
    /// let kept = (100..200).filter(|&k| {
    ///     cache.insert(k, k);
    ///     cache.get(&k).is_some()
    /// });
    /// assert!(kept.count() < 100); // some were refused on arrival
    /// assert!(cache.entry_count() <= 10);
    /// ```
    pub fn insert(&self, key: K, value: V) {
        self.inner.insert(key, value, None);
    }

    /// The value for `key`, if present and not expired. Counts a hit or a
    /// miss, records the access for the eviction policy and, with time to
    /// idle, slides the entry's deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert("k".to_string(), 1);
    /// assert_eq!(cache.get("k"), Some(1)); // look up a String key by &str
    /// ```
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.get(key)
    }

    /// The value for `key` if present and not expired, without counting,
    /// touching the policy or sliding any deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, 1);
    /// assert_eq!(cache.peek(&1), Some(1));
    /// assert_eq!(cache.stats().hits(), 0);
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.peek(key)
    }

    /// True if `key` has a live entry. No side effects, like [`peek`](Self::peek).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, 1);
    /// assert!(cache.contains_key(&1));
    /// assert!(!cache.contains_key(&2));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.inner.shards.cell_for(key);
        cell.read()
            .lookup(hash, key, &mut Now::new(&self.inner.timing.clock))
            .is_some()
    }

    /// Number of entries, counting expired ones not yet reaped (call
    /// [`run_pending_tasks`](Self::run_pending_tasks) first for an exact count).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, 1);
    /// assert_eq!(cache.entry_count(), 1);
    /// ```
    pub fn entry_count(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|c| c.read().len() as u64)
            .sum()
    }

    /// Total weight of the entries (their count when there is no weigher).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().weigher(|_: &u8, v: &Vec<u8>| v.len() as u32).build().unwrap();
    /// cache.insert(1, vec![0; 40]);
    /// assert_eq!(cache.weighted_size(), 40);
    /// ```
    pub fn weighted_size(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|c| c.read().weighted_size())
            .sum()
    }

    /// Does now what the maintenance thread would do soon: reaps expired
    /// entries and delivers their notifications, on the calling thread. Also
    /// waits until no other pass (the maintenance thread's, or another
    /// caller's) is still delivering, so that on return every entry expired
    /// before the call has been reported. Called from a listener that a pass
    /// on this same thread is delivering to, or from a loader such as
    /// [`get_with`](Self::get_with)'s `init` or an entry compute's closure
    /// ([`and_compute_with`](crate::OwnedKeyEntrySelector::and_compute_with)),
    /// or from the weigher or an expiry hook as they weigh and time its
    /// value (or the read hook as a compute first reads its key), it does
    /// not wait: that pass's listener may be waiting for the very load or
    /// compute. Called from a listener
    /// run by a write, it waits like any caller. That includes the write of
    /// a loaded value (a `get_with` whose value evicts to make room): its
    /// listener runs only once the load's waiters have the value, so a
    /// pass waiting for that load is not waiting for this thread. An
    /// expired entry that another thread's write removed first (a write
    /// into a full shard reaps expired entries to make room, an insert
    /// replaces one, a `remove` or an invalidation takes one) is that
    /// thread's to report, as its call returns: this call does not wait
    /// for it.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder().time_to_live(Duration::from_secs(1)).clock(clock.clone()).build().unwrap();
    /// cache.insert(1, 1);
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(cache.entry_count(), 1); // expired, not yet reaped
    /// cache.run_pending_tasks();
    /// assert_eq!(cache.entry_count(), 0);
    /// ```
    pub fn run_pending_tasks(&self) {
        self.inner.maintain();
        self.inner.maintenance.settle();
    }

    /// A snapshot of the counters.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.get_with(1, || 1);
    /// cache.get(&1);
    /// let s = cache.stats();
    /// assert_eq!((s.hits(), s.misses(), s.loads()), (1, 1, 1));
    /// ```
    pub fn stats(&self) -> CacheStats {
        self.inner.stats()
    }

    /// The settings this cache was built with: its bound, shard count,
    /// lifetimes and jitter.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::<u32, u32>::new(1_000);
    /// assert_eq!(cache.policy().max_capacity(), Some(1_000));
    /// assert_eq!(cache.policy().time_to_live(), None);
    /// let unbounded = larder::Cache::<u32, u32>::builder().build().unwrap();
    /// assert_eq!(unbounded.policy().max_capacity(), None);
    /// ```
    pub fn policy(&self) -> Policy {
        self.inner.policy.clone()
    }

    /// Nanoseconds on the cache's clock (the mock one in tests).
    pub(crate) fn now(&self) -> u64 {
        self.inner.timing.clock.now()
    }

    /// The value under `key` even if expired, as long as it has not been
    /// reaped; no side effects.
    pub(crate) fn peek_present(&self, key: &K) -> Option<V> {
        let (hash, cell) = self.inner.shards.cell_for(key);
        let shard = cell.read();
        shard.find(hash, key).map(|id| shard.value(id).clone())
    }

    /// [`peek`](Self::peek) of what `pick`, shown the live entry's value
    /// and the time (read if it asks) under the shard's shared lock, takes
    /// from it: `None` if there is no live entry or `pick` finds nothing.
    /// For a value that keeps a deadline of its own (a loading cache's
    /// record), judged by the time the entry is judged live by: a reading
    /// taken after the unlock would judge a copy that `retime_with` may
    /// have changed in place since. `pick` is larder's own code (it may
    /// clone the value, as `peek` does under the lock).
    pub(crate) fn peek_by<Q, R>(
        &self,
        key: &Q,
        pick: impl FnOnce(&V, &mut Now<'_>) -> Option<R>,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.peek_by(key, pick)
    }

    /// An empty buffer of removals for [`insert_if`](Self::insert_if) and
    /// [`remove_if`](Self::remove_if), which delivers them to the listener
    /// when dropped: the caller chooses when, e.g. only once a load's flight
    /// is closed.
    pub(crate) fn delivery(&self) -> Delivery<'_, K, V> {
        Delivery::new(self.inner.listener.as_ref())
    }

    /// The cache's single-flight table, which the entry API's computes
    /// lead as loads do (see [`entry`](crate::entry)).
    pub(crate) fn flights(&self) -> &Arc<Flights<K, V>> {
        &self.inner.flights
    }

    /// The write count of `key`'s stripe, read without a lock: what a load
    /// or a write takes before it reads or changes the store (see
    /// [`guard`](crate::load::guard)).
    pub(crate) fn seen(&self, key: &K) -> Seen {
        let (hash, cell) = self.inner.shards.cell_for(key);
        Seen::new(cell.write_count(hash))
    }

    /// `get` without counting the hit or miss (see
    /// [`record_lookup`](Self::record_lookup)), with the clock reading it
    /// used if it read the clock, so the caller need not read it again.
    pub(crate) fn get_uncounted<Q>(&self, key: &Q) -> (Option<V>, Option<u64>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut now = Now::new(&self.inner.timing.clock);
        let value = self.inner.read::<Q, false>(key, &mut now);
        (value, now.read_so_far())
    }

    /// Counts one hit or miss.
    pub(crate) fn record_lookup(&self, hit: bool) {
        self.inner.lookups.record(hit);
    }

    /// Counts one read answered with a stale value (a loading cache's).
    pub(crate) fn record_stale_hit(&self) {
        self.inner.lookups.record_stale_hit();
    }

    /// The load and refresh counters that [`stats`](Self::stats) reports.
    pub(crate) fn load_counters(&self) -> &LoadCounters {
        &self.inner.loads
    }

    /// Checks larder's own bookkeeping and panics, naming what disagrees, if
    /// any shard's index, entries, timing wheel, eviction policy, counts and
    /// weights do not agree. For tests and fuzzing (feature `test-util`):
    /// call it after a sequence of operations to check that the cache, not
    /// only your code, kept its invariants. It takes each shard's lock in
    /// turn and walks every entry, so it costs time in proportion to the
    /// entries held.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(100);
    /// for i in 0..1_000u32 {
    ///     cache.insert(i % 150, i);
    /// }
    /// cache.check_invariants(); // panics if larder lost track of an entry
    /// assert!(cache.entry_count() <= 100);
    /// ```
    #[cfg(feature = "test-util")]
    pub fn check_invariants(&self) {
        for cell in self.inner.shards.iter() {
            cell.read().check_invariants();
        }
    }
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    #[inline]
    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.timing.reads_want_clock() {
            return self.read_timed(key);
        }
        // No entry has a deadline and reads move none: the lean path, with
        // nothing to keep across the lock but the key and the shard. A hit
        // is counted by the lock's release; only a miss is counted here.
        let (hash, cell) = self.shards.cell_for(key);
        let shard = cell.read();
        let value = match shard.locate(hash, key) {
            Some((_, slot)) => {
                if !slot.untimed_hit() {
                    // An entry with a deadline, written since the test
                    // above: read it the timed way, which counts it.
                    drop(shard);
                    return self.read_timed(key);
                }
                Some(slot.value.clone())
            }
            None => None,
        };
        ShardCell::unlock_counting(shard, value.is_some());
        if value.is_none() {
            self.lookups.record(false);
        }
        value
    }

    /// `get` on a cache whose reads need the clock.
    #[inline(never)]
    fn read_timed<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read::<Q, true>(key, &mut Now::new(&self.timing.clock))
    }

    /// A read with all of `get`'s effects, counting the hit or miss only if
    /// `COUNT` (a loading cache counts after it has judged the value).
    #[inline]
    fn read<Q, const COUNT: bool>(&self, key: &Q, now: &mut Now<'_>) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        if self.timing.reads_want_clock() {
            // Entries here have deadlines, so the read will want the time:
            // read it before the lock, whose word the other readers of this
            // shard are waiting to touch.
            now.get();
        }
        let shard = cell.read();
        let Some((id, slot)) = shard.hit(hash, key, now) else {
            drop(shard);
            if COUNT {
                self.lookups.record(false);
            }
            return None;
        };
        // The common case (no idle time, no hooks) returns here after one
        // flag test. Nesting the two checks below under that test instead
        // measured 3 more instructions per hit, so the short tail repeats.
        if !self.timing.read_moves_deadlines() {
            let value = slot.value.clone();
            drop(shard);
            if COUNT {
                self.lookups.record(true);
            }
            return Some(value);
        }
        if let Some(tti) = self.timing.tti() {
            shard.slide(id, slot, now.get(), tti, || self.timing.clock.now());
        }
        let value = slot.value.clone();
        let hook = self
            .timing
            .hooks()
            .map(|(_, clone)| (clone(&slot.key), shard.sighting(slot)));
        drop(shard);
        if COUNT {
            self.lookups.record(true);
        }
        if let Some((owned_key, seen)) = hook {
            self.after_read(cell, hash, &owned_key, &value, seen, now.get());
        }
        Some(value)
    }

    /// Runs the read hook and applies a changed deadline.
    fn after_read(
        &self,
        cell: &ShardCell<K, V>,
        hash: u64,
        key: &K,
        value: &V,
        seen: Sighting,
        now: u64,
    ) {
        let Some((hooks, _)) = self.timing.hooks() else {
            return;
        };
        let before = remaining(now, seen.deadline());
        let after = hooks.expire_after_read(key, value, before);
        if after != before {
            let deadline = self
                .timing
                .on_write(now, None, Some(Hooked::After(after)))
                .at;
            // Read under the lock, if the entry has a deadline: it may have
            // expired while the hook ran.
            let mut landing = Now::new(&self.timing.clock);
            cell.write()
                .reset_deadline(hash, key, seen, deadline, &mut landing);
            self.maintenance.wake_for(deadline);
        }
    }

    fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek_by(key, |value, _| Some(value.clone()))
    }

    /// See [`Cache::peek_by`]: `pick` shown the live entry's value and the
    /// time it was judged live at, under the shard's shared lock.
    fn peek_by<Q, R>(&self, key: &Q, pick: impl FnOnce(&V, &mut Now<'_>) -> Option<R>) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        let shard = cell.read();
        let id = shard.lookup(hash, key, &mut now)?;
        pick(shard.value(id), &mut now)
    }

    /// One maintenance pass: reap expired entries shard by shard in bounded
    /// batches and deliver their notifications between batches.
    ///
    /// A key's `Hash` panicking in one shard ends that
    /// shard's part of the pass only: the shards after it are still
    /// reaped, and the first panic is raised again once they are. Otherwise
    /// a key whose `Hash` panics every time would keep the maintenance
    /// thread from ever reaching the shards after its own.
    fn maintain(&self) {
        self.maintenance.pass(|| {
            let now = self.timing.clock.now();
            let mut first_panic = None;
            for cell in self.shards.iter() {
                // Widens the lock's wrapping hit count while it is still
                // far from wrapping twice (see `raw::lock`).
                cell.hits();
                let reaped = catch_unwind(AssertUnwindSafe(|| {
                    loop {
                        let mut removed = Removed::default();
                        let done = cell.write().reap(now, &mut removed);
                        self.deliver(removed);
                        if done {
                            break;
                        }
                    }
                }));
                if let Err(payload) = reaped {
                    first_panic.get_or_insert(payload);
                }
            }
            if let Some(payload) = first_panic {
                resume_unwind(payload);
            }
        });
    }

    /// How long the maintenance thread may sleep after a pass: an
    /// [`INTERVAL`] while some entry may fall due within it, else until the
    /// first wheel slot begins (at most [`LONGEST_SLEEP`]), published so
    /// that a write giving an earlier deadline wakes it (see
    /// [`maintenance`](crate::maintenance)).
    fn rest(&self) -> Duration {
        let nanos = |d: Duration| saturating_nanos(d.as_nanos());
        let now = self.timing.clock.now();
        let next = |exclusive: bool| {
            let due = |cell: &ShardCell<K, V>| match exclusive {
                true => cell.write().next_due(),
                false => cell.read().next_due(),
            };
            self.shards.iter().map(due).min().unwrap_or(NEVER)
        };
        let first = next(false);
        if first <= now.saturating_add(nanos(INTERVAL)) {
            return INTERVAL;
        }
        let until = first.min(now.saturating_add(nanos(LONGEST_SLEEP)));
        self.maintenance.sleep_until(until);
        // A write that landed since the look above, and read the wake-up
        // time before it was published, is seen now (its unlock came
        // before this lock); a later one reads the published time.
        if next(true) < until {
            self.maintenance.awake();
            return Duration::ZERO;
        }
        Duration::from_nanos(until - now)
    }

    /// Cumulative (hits, misses): the striped counters, plus the hits the
    /// shard locks counted.
    fn lookup_totals(&self) -> (u64, u64) {
        let (hits, misses) = self.lookups.totals();
        let counted: u64 = self.shards.iter().map(ShardCell::hits).sum();
        (hits + counted, misses)
    }

    fn deliver(&self, removed: Removed<K, V>) {
        removed.deliver(self.listener.as_ref());
    }

    fn stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        (stats.hits, stats.misses) = self.lookup_totals();
        for cell in self.shards.iter() {
            let removals = cell.read().removals();
            for (total, n) in stats.removals.iter_mut().zip(removals) {
                *total += n;
            }
        }
        self.loads.fill(&mut stats);
        stats.stale_hits = self.lookups.stale_hits();
        stats
    }
}

impl<K, V> Maintained for Inner<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn background_pass(&self) -> Duration {
        self.maintenance.awake();
        if self.timing.clock.is_manual() {
            // Time moves only when the test says so, and so do deadlines;
            // the locks' wrapping hit counts still need widening (see
            // `LONGEST_SLEEP`).
            for cell in self.shards.iter() {
                cell.hits();
            }
            return LONGEST_SLEEP;
        }
        self.maintain();
        self.rest()
    }
}
