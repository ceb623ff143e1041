//! The everyday methods of [`Cache`]: building one, `insert`, `get`,
//! `peek`, `contains_key`, the counts, `run_pending_tasks`, `stats` and
//! `policy`.

use std::{borrow::Borrow, hash::Hash};

use super::Cache;
use crate::{CacheBuilder, CacheStats, builder::Policy, shard::Now};

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
