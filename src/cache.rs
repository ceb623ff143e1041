//! [`Cache`]: the thin public face. Each method finds the key's shard and
//! delegates; the work lives in [`shard`](crate::shard),
//! [`load`](crate::load) and [`maintenance`](crate::maintenance).

use std::{
    any::Any,
    borrow::Borrow,
    convert::Infallible,
    fmt,
    future::{Future, poll_fn},
    hash::Hash,
    panic::{RefUnwindSafe, UnwindSafe},
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    CacheBuilder, CacheStats, Expiry, RemovalCause,
    builder::{Policy, Weigher},
    expiry::{Deadline, Hooked, NEVER, Timing, clock::saturating_nanos, remaining},
    load::{
        flight::{Flights, Leader, LeaderGuard, Outcome, Role},
        guard::Seen,
    },
    maintenance::{Awaited, INTERVAL, LONGEST_SLEEP, Maintained, Maintenance},
    notify::{Delivery, Listener, Removed},
    shard::{Now, ShardCell, ShardWriteGuard, Shards, Sighting, Stripe, Write},
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

/// The entries of a [`Cache`], from [`Cache::iter`]: `(key, value)` clones
/// of the live entries, one shard at a time.
pub struct Iter<'a, K, V> {
    inner: &'a Inner<K, V>,
    /// The shard to copy when `batch` runs out.
    next_shard: usize,
    /// The current shard's live entries, not yet yielded.
    batch: std::vec::IntoIter<(K, V)>,
}

impl<K, V> Iterator for Iter<'_, K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        loop {
            if let Some(entry) = self.batch.next() {
                return Some(entry);
            }
            let cell = self.inner.shards.get(self.next_shard)?;
            self.next_shard += 1;
            let now = self.inner.timing.clock.now();
            self.batch = cell.read().snapshot(now).into_iter();
        }
    }
}

/// Once it has returned `None` (every shard listed), it keeps doing so.
impl<K: Hash + Eq + Clone, V: Clone> std::iter::FusedIterator for Iter<'_, K, V> {}

impl<K, V> fmt::Debug for Iter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("next_shard", &self.next_shard)
            .field("buffered", &self.batch.len())
            .finish_non_exhaustive()
    }
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

/// How many times one write asks the expiry hooks at most, when writes of
/// its key keep changing the entry they were shown (see
/// `Inner::insert_keyed`).
const HOOK_ATTEMPTS: usize = 8;

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
            shards: Shards::new(parts.shards, parts.capacity, weighted, timed, sliding, now),
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

    /// Inserts `value` under `key` to live `ttl` from now, whatever the
    /// cache's own expiry settings: [`ttl_jitter`](crate::CacheBuilder::ttl_jitter)
    /// does not spread it. Time to idle still applies, and so do
    /// [`Expiry`] hooks on later reads and updates (a read
    /// hook may move this deadline).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    /// cache.insert_with_ttl("session", 42, Duration::from_secs(30));
    /// clock.advance(Duration::from_secs(31));
    /// assert_eq!(cache.get("session"), None);
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        self.inner.insert(key, value, Some(ttl));
    }

    /// The time `key`'s entry has left to live, with no side effects (like
    /// [`peek`](Self::peek): no hit or miss counted, the eviction policy
    /// not told, no idle time slid). Redis's `TTL key`.
    ///
    /// - `None`: no live entry (absent, or expired and not yet reaped).
    /// - `Some(None)`: a live entry that never expires.
    /// - `Some(Some(d))`: a live entry that expires `d` from now.
    ///
    /// The inner `Option<Duration>` means what it means to the [`Expiry`]
    /// hooks, whose `remaining` argument it is: `None` is "never".
    ///
    /// With a [time to idle](crate::CacheBuilder::time_to_idle) the entry
    /// expires at the earlier of its hard deadline (its time to live, or
    /// the lifetime [`insert_with_ttl`](Self::insert_with_ttl) or
    /// [`expire_in`](Self::expire_in) gave it) and its idle deadline (its
    /// last read, write, `expire_in` or [`persist`](Self::persist) plus
    /// the idle time): `d` is the time until the earlier one. A later
    /// [`get`](Self::get) may slide the idle deadline and so lengthen it;
    /// this call does not. With
    /// [`ttl_jitter`](crate::CacheBuilder::ttl_jitter), `d` is the spread
    /// lifetime the entry actually has.
    ///
    /// **Locking:** takes the key's shard shared, as `peek` does.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    /// cache.insert_with_ttl("session", 1, Duration::from_secs(30));
    /// cache.insert("config", 2);
    /// clock.advance(Duration::from_secs(10));
    /// assert_eq!(cache.expires_in("session"), Some(Some(Duration::from_secs(20))));
    /// assert_eq!(cache.expires_in("config"), Some(None)); // never expires
    /// assert_eq!(cache.expires_in("other"), None); // absent
    /// clock.advance(Duration::from_secs(20));
    /// assert_eq!(cache.expires_in("session"), None); // expired
    /// assert_eq!(cache.stats().hits() + cache.stats().misses(), 0);
    /// ```
    pub fn expires_in<Q>(&self, key: &Q) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.expires_in(key)
    }

    /// Gives `key`'s live entry a new lifetime, `ttl` from now, without
    /// rewriting its value (a cache's time to idle still applies: see
    /// below); returns whether there was one. Redis's
    /// `EXPIRE key`: extend a session, or cut an entry's life short. An
    /// absent key, or an entry expired and not yet reaped, is left as it
    /// is (never revived) and the answer is `false`.
    ///
    /// As with [`insert_with_ttl`](Self::insert_with_ttl), `ttl` is kept
    /// exactly, whatever the cache's own settings:
    /// [`ttl_jitter`](crate::CacheBuilder::ttl_jitter) does not spread it,
    /// and a `ttl` too long for the clock to hold (over about 36 years)
    /// means no deadline at all. A zero `ttl` expires the entry at once,
    /// as `EXPIRE key 0` deletes a Redis key: it is removed now, and the
    /// listener hears of it as [`Expired`](RemovalCause::Expired), once.
    ///
    /// It is neither a read nor a write: no hit or miss is counted, the
    /// eviction policy is not told, the value is not replaced (the
    /// listener hears nothing, but for a zero `ttl`), and no expiry hook
    /// runs. What comes after is as usual: with a
    /// [time to idle](crate::CacheBuilder::time_to_idle), the entry's idle
    /// time restarts now, as after a write, and it expires at the earlier
    /// of `ttl` and the idle time from now, reads sliding the idle
    /// deadline up to `ttl`; with [`Expiry`] hooks, later reads and
    /// updates run them, shown the new time left, and they may move it
    /// again. A read hook's answer still pending for the entry (its read
    /// returned, the hook running) is dropped, as it is when a write
    /// re-times the entry meanwhile.
    ///
    /// **Locking:** takes the key's shard exclusively, like a write, to
    /// move the entry on the timing wheel; no user code runs but the
    /// key's `Hash` and `Eq` (and, for a zero `ttl`, the listener, after
    /// the unlock). A deadline earlier than the maintenance thread's next
    /// wake-up wakes it, so the entry is reaped and heard of on time in
    /// an otherwise idle cache.
    ///
    /// # Concurrent calls on the same key
    ///
    /// Writes of the key (an insert, a remove) and `expire_in` take the
    /// shard's lock in turn: the lifetime goes to the entry live when
    /// `expire_in` has the lock, judged by the time read under it (an
    /// entry that expired while it waited is not revived), and a later
    /// insert gives its value a lifetime of its own.
    ///
    /// A [`get_with`](Self::get_with) (or any loader) loading the key
    /// began on a miss: until its value is cached, `expire_in` finds
    /// nothing to change and returns `false`, unless an insert landed
    /// meanwhile, whose value it then times (that insert, not
    /// `expire_in`, keeps the load's value out). `expire_in` is not one of
    /// the writes that keep a load's value out (see "Writes during the
    /// load" there): it changes no value, and the loaded one is cached
    /// with the lifetime the cache gives it.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// cache.insert("session", 7);
    /// clock.advance(Duration::from_secs(50));
    /// // The user is still active: give the session another ten minutes.
    /// assert!(cache.expire_in("session", Duration::from_secs(600)));
    /// clock.advance(Duration::from_secs(500));
    /// assert_eq!(cache.get("session"), Some(7));
    /// assert_eq!(cache.expires_in("session"), Some(Some(Duration::from_secs(100))));
    /// // Absent keys are not created.
    /// assert!(!cache.expire_in("other", Duration::from_secs(600)));
    /// assert_eq!(cache.get("other"), None);
    /// ```
    pub fn expire_in<Q>(&self, key: &Q, ttl: Duration) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.retime(key, Some(ttl))
    }

    /// Takes away `key`'s hard deadline (its time to live), without
    /// rewriting its value; returns whether there was a live entry. Redis's
    /// `PERSIST key`. An absent key, or an entry expired and not yet
    /// reaped, is left as it is (never revived) and the answer is `false`.
    ///
    /// Everything [`expire_in`](Self::expire_in) says holds, with no hard
    /// deadline in place of `ttl`: the entry never expires in a cache
    /// without a [time to idle](crate::CacheBuilder::time_to_idle), but
    /// with one it still expires once left unread for that long (its idle
    /// time restarting now, so [`expires_in`](Self::expires_in) reports the
    /// idle time, not `Some(None)`), and [`Expiry`] hooks may give it a
    /// lifetime again on a later read or update.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// cache.insert("pinned", 1);
    /// assert!(cache.persist("pinned"));
    /// assert_eq!(cache.expires_in("pinned"), Some(None));
    /// clock.advance(Duration::from_secs(3600));
    /// assert_eq!(cache.get("pinned"), Some(1));
    /// ```
    ///
    /// With a time to idle, a persisted entry still expires when left
    /// unread:
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let idle = Duration::from_secs(30 * 60);
    /// let sessions = Cache::builder()
    ///     .time_to_idle(idle)
    ///     .time_to_live(Duration::from_secs(12 * 3600))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// sessions.insert("admin", 1);
    /// assert!(sessions.persist("admin"));
    /// assert_eq!(sessions.expires_in("admin"), Some(Some(idle))); // not `Some(None)`
    /// clock.advance(idle);
    /// assert_eq!(sessions.get("admin"), None);
    /// ```
    pub fn persist<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.retime(key, None)
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

    /// The value for `key`; on a miss, runs `init` to make it, caches it and
    /// returns it (a full cache may turn the value away, as for
    /// [`insert`](Self::insert); it is returned all the same).
    ///
    /// # Concurrent calls on the same key
    ///
    /// Only one `init` runs per key at a time: other callers of `get_with`,
    /// `try_get_with` or `optionally_get_with` for that key block until it
    /// finishes and get its value.
    /// If it panics, the panic goes to its caller and one waiting caller runs
    /// its own `init` instead. `init` runs with no lock held and may use the
    /// cache freely, except to load its own key (that panics rather than
    /// waiting for itself).
    ///
    /// # Writes during the load
    ///
    /// If the key is written while `init` runs (an [`insert`](Self::insert),
    /// [`remove`](Self::remove), [`invalidate`](Self::invalidate),
    /// [`invalidate_all`](Self::invalidate_all), or
    /// [`invalidate_entries_if`](Self::invalidate_entries_if) removing the
    /// key's entry: it never sees a key still loading), `init`'s value may be
    /// older than that write: it is returned to this caller and the waiters
    /// that joined before the write, but not cached, so the cache keeps the
    /// write's outcome. This is the cache-aside race (a load reads the
    /// database, an update writes it and invalidates the key, then the load
    /// caches what it read) closed. A caller that joins the load after the
    /// write (the key written, then invalidated or evicted) began after it,
    /// so it does not take that value either: it waits for the load to end
    /// and then runs its own `init`. Writes of other keys, the loader's own
    /// included, do not matter.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// let v = cache.get_with("answer", || 42);
    /// assert_eq!(v, 42);
    /// assert_eq!(cache.get_with("answer", || unreachable!()), 42);
    /// ```
    pub fn get_with(&self, key: K, init: impl FnOnce() -> V) -> V
    where
        K: Clone,
    {
        match self.inner.get_or_load(key, || Ok::<V, Infallible>(init())) {
            Ok(v) => v,
            Err(never) => match *never {},
        }
    }

    /// Like [`get_with`](Self::get_with) with a fallible `init`: a value is
    /// cached and returned, an error is returned (shared as `Arc<E>`) and
    /// nothing is cached.
    ///
    /// # Errors
    ///
    /// The error `init` returned, or the one returned by the concurrent
    /// caller whose `init` this call waited for (same type `E` only: a
    /// waiter expecting another error type runs its own `init`; a value, on
    /// the other hand, is shared whatever the types of the callers' errors).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`get_with`](Self::get_with): one `init` per key runs at a time
    /// and waiters share its value or its error.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<u32, String> = larder::Cache::new(10);
    /// let err = cache.try_get_with(1, || Err::<String, _>("db down")).unwrap_err();
    /// assert_eq!(*err, "db down");
    /// assert!(!cache.contains_key(&1)); // errors are not cached
    /// assert_eq!(cache.try_get_with(1, || Ok::<_, &str>("one".to_string())).unwrap(), "one");
    /// ```
    pub fn try_get_with<E>(&self, key: K, init: impl FnOnce() -> Result<V, E>) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        self.inner.get_or_load(key, init)
    }

    /// The async form of [`get_with`](Self::get_with): returns the cached
    /// value, or awaits `init` and caches its output.
    ///
    /// Waiting for another caller's load never blocks the executor's thread:
    /// the waiting task is woken when that load ends. Works on any executor
    /// (larder depends on no runtime). `init` is only polled if this call
    /// leads the load. While it is polled, `init` may use the cache freely
    /// except to load its own key, blocking or awaiting: that panics, as in
    /// [`get_with`](Self::get_with), instead of waiting for itself. The
    /// key's other callers wait for it as usual. Writes made while it runs
    /// keep its value out of the cache, as for `get_with`.
    ///
    /// The blocking forms (`get_with`, `try_get_with`) do block the thread
    /// while another caller loads the key. Called from async code on a
    /// single-threaded executor while that load is an async `init`
    /// suspended on the same thread, they wait for a task that cannot run
    /// again until they return: a hang the cache cannot detect. In async
    /// code, use the `_async` forms.
    ///
    /// # Cancellation
    ///
    /// If the future of the call that is loading is dropped before `init`
    /// completes, nothing is cached and one of the waiting callers runs its
    /// own `init` instead; nobody waits forever.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache = larder::Cache::new(10);
    /// let v = block_on(cache.get_with_async("answer", async { 42 }));
    /// assert_eq!(v, 42);
    /// ```
    pub async fn get_with_async(&self, key: K, init: impl Future<Output = V>) -> V
    where
        K: Clone,
    {
        let init = async { Ok::<V, Infallible>(init.await) };
        match self.inner.get_or_load_async(key, init).await {
            Ok(v) => v,
            Err(never) => match *never {},
        }
    }

    /// The async form of [`try_get_with`](Self::try_get_with): a value is
    /// cached and returned, an error is shared as `Arc<E>` and not cached.
    /// Waiting and cancellation work as for
    /// [`get_with_async`](Self::get_with_async).
    ///
    /// # Errors
    ///
    /// The error `init` returned, or the one returned by the concurrent
    /// caller whose load this call waited for (same type `E` only).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<u32, String> = larder::Cache::new(10);
    /// let err = block_on(cache.try_get_with_async(1, async { Err::<String, _>("db down") }));
    /// assert_eq!(*err.unwrap_err(), "db down");
    /// let ok = block_on(cache.try_get_with_async(1, async { Ok::<_, &str>("one".to_string()) }));
    /// assert_eq!(ok.unwrap(), "one");
    /// ```
    pub async fn try_get_with_async<E>(
        &self,
        key: K,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        self.inner.get_or_load_async(key, init).await
    }

    /// Like [`get_with`](Self::get_with) for an `init` that may find no
    /// value: `Some(v)` is cached and returned; `None` is returned and
    /// nothing is cached, so the key's next call runs its `init` again.
    ///
    /// In [`stats`](Self::stats) the lookup counts as a hit or a miss, as
    /// for `get_with`, and an `init` that returns `None` as a successful
    /// load (it answered; nothing failed), as a
    /// [`LoadingCache`](crate::LoadingCache)'s key reported absent does.
    ///
    /// # Concurrent calls on the same key
    ///
    /// One `init` per key runs at a time, as for `get_with`, and every
    /// waiting caller shares a value it returns. Its `None` is shared only
    /// with the waiting callers that can return one: those of
    /// `optionally_get_with`, its `_async` and `_by_ref` forms and
    /// `entry(k).or_optionally_insert_with` return `None` without running
    /// their own `init`. A waiting [`get_with`](Self::get_with) or
    /// [`try_get_with`](Self::try_get_with) caller, which has no `None` to
    /// return, runs its own `init` once this one ends; likewise a waiting
    /// `optionally_get_with` caller runs its own `init` when the load it
    /// waited for was a `try_get_with` whose `init` returned an error. If
    /// `init` panics, one waiting caller runs its own `init` instead. A
    /// write of the key while `init` runs keeps its value out of the cache,
    /// as for [`get_with`](Self::get_with) (a `None` caches nothing anyway).
    ///
    /// # Panics
    ///
    /// If `init` panics, the panic goes to this caller. If `init` loads its
    /// own key, that inner call panics rather than wait for itself.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<u32, String> = larder::Cache::new(10);
    /// let find = |id: u32| (id < 100).then(|| format!("user {id}")); // your query
    /// assert_eq!(cache.optionally_get_with(7, || find(7)).as_deref(), Some("user 7"));
    /// assert_eq!(cache.optionally_get_with(500, || find(500)), None);
    /// assert!(cache.contains_key(&7));
    /// assert!(!cache.contains_key(&500)); // `None` is not cached
    /// assert_eq!(cache.stats().load_successes(), 2); // `None` is an answer too
    /// ```
    pub fn optionally_get_with(&self, key: K, init: impl FnOnce() -> Option<V>) -> Option<V>
    where
        K: Clone,
    {
        self.inner.get_or_load(key, || init().ok_or(Absent)).ok()
    }

    /// The async form of [`optionally_get_with`](Self::optionally_get_with):
    /// `Some(v)` is cached and returned, `None` returned and not cached, and
    /// waiting callers share either as `optionally_get_with`'s do. Waiting
    /// and cancellation work as for [`get_with_async`](Self::get_with_async).
    ///
    /// # Panics
    ///
    /// As for [`optionally_get_with`](Self::optionally_get_with), when
    /// `init` panics as it is polled or loads its own key.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<u32, String> = larder::Cache::new(10);
    /// assert_eq!(block_on(cache.optionally_get_with_async(1, async { None })), None);
    /// let found = block_on(cache.optionally_get_with_async(1, async { Some("one".to_string()) }));
    /// assert_eq!(found.as_deref(), Some("one"));
    /// assert_eq!(cache.get(&1).as_deref(), Some("one"));
    /// ```
    pub async fn optionally_get_with_async(
        &self,
        key: K,
        init: impl Future<Output = Option<V>>,
    ) -> Option<V>
    where
        K: Clone,
    {
        let init = async { init.await.ok_or(Absent) };
        self.inner.get_or_load_async(key, init).await.ok()
    }

    /// [`get_with`](Self::get_with) for a borrowed key (a `&str` for a
    /// `String` key, say): the key is copied with `to_owned` only on a
    /// miss, to cache the value under it, so a hit costs what a
    /// [`get`](Self::get) costs and allocates nothing. The lookup counts
    /// one hit or one miss in [`stats`](Self::stats), as `get_with`'s does.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`get_with`](Self::get_with): once the key is copied, this is
    /// the same load, so borrowed and owned callers of the key wait for one
    /// `init` and share its value. Writes during the load keep its value
    /// out of the cache as for `get_with`.
    ///
    /// # Panics
    ///
    /// If `init` panics, the panic goes to this caller (and one waiting
    /// caller runs its own `init`). If `init` loads its own key, that inner
    /// call panics rather than wait for itself.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, usize> = larder::Cache::new(10);
    /// let name: &str = "larder";
    /// assert_eq!(cache.get_with_by_ref(name, || name.len()), 6); // a miss: the key is copied
    /// assert_eq!(cache.get_with_by_ref(name, || unreachable!()), 6); // a hit: no copy
    /// assert_eq!((cache.stats().hits(), cache.stats().misses()), (1, 1));
    /// assert_eq!(cache.get("larder"), Some(6));
    /// ```
    pub fn get_with_by_ref<Q>(&self, key: &Q, init: impl FnOnce() -> V) -> V
    where
        K: Borrow<Q> + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        match self
            .inner
            .get_or_load_by_ref(key, || Ok::<V, Infallible>(init()))
        {
            Ok(v) => v,
            Err(never) => match *never {},
        }
    }

    /// [`try_get_with`](Self::try_get_with) for a borrowed key, copied with
    /// `to_owned` only on a miss, as for
    /// [`get_with_by_ref`](Self::get_with_by_ref): a value is cached and
    /// returned, an error is returned (shared as `Arc<E>`) and nothing is
    /// cached.
    ///
    /// # Errors
    ///
    /// The error `init` returned, or the one returned by the concurrent
    /// caller whose `init` this call waited for (same type `E` only, as for
    /// `try_get_with`).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`try_get_with`](Self::try_get_with): one `init` per key runs
    /// at a time, borrowed and owned callers alike, and waiters share its
    /// value or its error.
    ///
    /// # Panics
    ///
    /// As for [`get_with_by_ref`](Self::get_with_by_ref).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// let err = cache.try_get_with_by_ref("port", || "x".parse::<u32>()).unwrap_err();
    /// assert!(err.to_string().contains("invalid digit"));
    /// assert!(!cache.contains_key("port")); // errors are not cached
    /// assert_eq!(cache.try_get_with_by_ref("port", || "8080".parse::<u32>()).unwrap(), 8080);
    /// assert_eq!(cache.get("port"), Some(8080));
    /// ```
    pub fn try_get_with_by_ref<Q, E>(
        &self,
        key: &Q,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, Arc<E>>
    where
        K: Borrow<Q> + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
        E: Send + Sync + 'static,
    {
        self.inner.get_or_load_by_ref(key, init)
    }

    /// [`optionally_get_with`](Self::optionally_get_with) for a borrowed
    /// key, copied with `to_owned` only on a miss, as for
    /// [`get_with_by_ref`](Self::get_with_by_ref): `Some(v)` is cached and
    /// returned, `None` is returned and nothing is cached.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`optionally_get_with`](Self::optionally_get_with): one
    /// `init` per key runs at a time, borrowed and owned callers alike;
    /// its value is shared with every waiter, its `None` with the waiting
    /// callers of the optional forms (`optionally_get_with`, its `_async`
    /// and `_by_ref` forms, `entry(k).or_optionally_insert_with`).
    ///
    /// # Panics
    ///
    /// As for [`get_with_by_ref`](Self::get_with_by_ref).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, String> = larder::Cache::new(10);
    /// let find = |name: &str| (name == "ada").then(|| format!("user {name}")); // your query
    /// assert_eq!(cache.optionally_get_with_by_ref("ada", || find("ada")).as_deref(), Some("user ada"));
    /// assert_eq!(cache.optionally_get_with_by_ref("bob", || find("bob")), None);
    /// assert!(cache.contains_key("ada"));
    /// assert!(!cache.contains_key("bob")); // `None` is not cached
    /// ```
    pub fn optionally_get_with_by_ref<Q>(
        &self,
        key: &Q,
        init: impl FnOnce() -> Option<V>,
    ) -> Option<V>
    where
        K: Borrow<Q> + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        self.inner
            .get_or_load_by_ref(key, || init().ok_or(Absent))
            .ok()
    }

    /// The async form of [`get_with_by_ref`](Self::get_with_by_ref): a hit
    /// copies no key and allocates nothing; a miss copies the key with
    /// `to_owned` and loads as [`get_with_async`](Self::get_with_async)
    /// does (waiting without blocking, cancellation handing the load to a
    /// waiter).
    ///
    /// # Panics
    ///
    /// As for [`get_with_async`](Self::get_with_async), when `init` panics
    /// as it is polled or loads its own key.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, usize> = larder::Cache::new(10);
    /// let name: &str = "larder";
    /// assert_eq!(block_on(cache.get_with_by_ref_async(name, async { name.len() })), 6);
    /// assert_eq!(block_on(cache.get_with_by_ref_async(name, async { 0 })), 6); // a hit
    /// ```
    pub async fn get_with_by_ref_async<Q>(&self, key: &Q, init: impl Future<Output = V>) -> V
    where
        K: Borrow<Q> + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        let init = async { Ok::<V, Infallible>(init.await) };
        match self.inner.get_or_load_by_ref_async(key, init).await {
            Ok(v) => v,
            Err(never) => match *never {},
        }
    }

    /// The async form of [`try_get_with_by_ref`](Self::try_get_with_by_ref):
    /// the key copied only on a miss; a value is cached and returned, an
    /// error shared as `Arc<E>` and not cached.
    ///
    /// # Errors
    ///
    /// As for [`try_get_with_async`](Self::try_get_with_async).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// let err = block_on(cache.try_get_with_by_ref_async("port", async { "x".parse::<u32>() }));
    /// assert!(err.is_err() && !cache.contains_key("port"));
    /// let ok = block_on(cache.try_get_with_by_ref_async("port", async { "8080".parse::<u32>() }));
    /// assert_eq!(ok.unwrap(), 8080);
    /// ```
    pub async fn try_get_with_by_ref_async<Q, E>(
        &self,
        key: &Q,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Borrow<Q> + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
        E: Send + Sync + 'static,
    {
        self.inner.get_or_load_by_ref_async(key, init).await
    }

    /// The async form of
    /// [`optionally_get_with_by_ref`](Self::optionally_get_with_by_ref):
    /// the key copied only on a miss; `Some(v)` is cached and returned,
    /// `None` returned and not cached (shared with the waiting optional
    /// callers, as for [`optionally_get_with`](Self::optionally_get_with)).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// assert_eq!(block_on(cache.optionally_get_with_by_ref_async("a", async { None })), None);
    /// assert!(!cache.contains_key("a"));
    /// assert_eq!(block_on(cache.optionally_get_with_by_ref_async("a", async { Some(1) })), Some(1));
    /// ```
    pub async fn optionally_get_with_by_ref_async<Q>(
        &self,
        key: &Q,
        init: impl Future<Output = Option<V>>,
    ) -> Option<V>
    where
        K: Borrow<Q> + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        let init = async { init.await.ok_or(Absent) };
        self.inner.get_or_load_by_ref_async(key, init).await.ok()
    }

    /// Removes `key`'s entry and returns its value, if it was live. The
    /// listener sees `Explicit` (or `Expired` for an entry already expired).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, "a");
    /// assert_eq!(cache.remove(&1), Some("a"));
    /// assert_eq!(cache.remove(&1), None);
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove(key, true)
    }

    /// Removes `key`'s entry, if any, discarding its value.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, "a");
    /// cache.invalidate(&1);
    /// assert!(!cache.contains_key(&1));
    /// ```
    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove(key, false);
    }

    /// Removes every entry (the listener sees each as `Explicit`, or
    /// `Expired` if it had already expired).
    ///
    /// The shards are emptied one after another, each under its lock, and
    /// their removals delivered in between: every entry written before the
    /// call began is gone when it returns, but one written concurrently
    /// may stay (it landed in a shard already emptied) or go (one not yet
    /// reached), as in moka. A load of any key begun before the call does
    /// not cache its value (see [`get_with`](Self::get_with)).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, 1);
    /// cache.insert(2, 2);
    /// cache.invalidate_all();
    /// assert_eq!(cache.entry_count(), 0);
    /// ```
    pub fn invalidate_all(&self) {
        // No load begun before this call caches its value after it.
        self.inner.flights.written_all();
        for cell in self.inner.shards.iter() {
            let mut removed = Removed::default();
            {
                let mut shard = cell.write();
                // Nor does a loading cache's (see `load::guard`).
                cell.bump_all(&shard);
                // The time read under this shard's lock, as `remove` reads
                // it: an entry that expired while earlier shards were
                // cleared (or their listeners ran) is heard of as expired.
                shard.clear(self.inner.timing.clock.now(), &mut removed);
            }
            self.inner.deliver(removed);
        }
    }

    /// Removes every live entry for which `predicate` returns true, before
    /// returning (moka's `invalidate_entries_if` records the predicate and
    /// removes lazily; here nothing needs enabling and nothing is returned).
    ///
    /// The predicate runs with no lock held, on clones of each shard's
    /// entries taken one shard at a time. If a shard is written while its
    /// clones are being tested, they are taken and tested again (up to 8
    /// times; after that, the keys found on the last pass are removed, whatever
    /// they hold by then). So the predicate may be called more than once for
    /// an entry, and may use the cache, this one included: its own writes
    /// to the shard being tested count as such writes. Each shard is tested
    /// as it is when the call reaches it, so an entry written during the
    /// call into a shard not yet reached is tested too (moka tests only the
    /// entries written before its call).
    ///
    /// # Panics
    ///
    /// If `predicate` panics, the panic reaches the caller and the call
    /// stops there: the shards already done keep their removals (the
    /// listener has been told of them), the shard being tested and the
    /// shards after it are left as they were, and the cache stays usable.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(100);
    /// for i in 0..10 { cache.insert(i, i * 10); }
    /// cache.invalidate_entries_if(|_k, v| *v >= 50);
    /// assert_eq!(cache.entry_count(), 5);
    /// ```
    ///
    /// A predicate that panics removes nothing from the shard it was
    /// testing (here the only one):
    ///
    /// ```
    /// use std::panic::{AssertUnwindSafe, catch_unwind};
    /// let cache = larder::Cache::builder().num_shards(1).build().unwrap();
    /// for i in 0..10 { cache.insert(i, i); }
    /// let panicked = catch_unwind(AssertUnwindSafe(|| {
    ///     cache.invalidate_entries_if(|k, _| if *k == 5 { panic!("bad key") } else { true })
    /// }));
    /// assert!(panicked.is_err());
    /// assert_eq!(cache.entry_count(), 10);
    /// cache.invalidate_entries_if(|k, _| *k != 5);
    /// assert_eq!(cache.iter().collect::<Vec<_>>(), [(5, 5)]);
    /// ```
    pub fn invalidate_entries_if(&self, predicate: impl Fn(&K, &V) -> bool)
    where
        K: Clone,
    {
        for cell in self.inner.shards.iter() {
            self.inner.invalidate_shard_if(cell, &predicate);
        }
    }

    /// Every live entry, as clones of its key and value, shard by shard.
    ///
    /// Like [`peek`](Self::peek), iterating counts no hit or miss, tells
    /// the eviction policy nothing and slides no time-to-idle deadline;
    /// expired entries are skipped whether or not they have been reaped.
    /// The iterator copies one shard's entries at a time, under that
    /// shard's read lock (so at most one shard's worth of clones is held,
    /// and `K::clone` and `V::clone` run under the lock, as a `get`'s
    /// clone does), then yields them with no lock held: the caller may use
    /// the cache, this one included, between items. Each shard is seen as
    /// it is when the iterator reaches it, so an entry written or removed
    /// meanwhile may or may not appear; no key appears twice.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(100);
    /// for i in 0..5 { cache.insert(i, i * 10); }
    /// let mut entries: Vec<(u32, u32)> = cache.iter().collect();
    /// entries.sort();
    /// assert_eq!(entries, [(0, 0), (1, 10), (2, 20), (3, 30), (4, 40)]);
    /// assert_eq!(cache.stats().hits(), 0);
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V>
    where
        K: Clone,
    {
        Iter {
            inner: &self.inner,
            next_shard: 0,
            batch: Vec::new().into_iter(),
        }
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
    /// [`get_with`](Self::get_with)'s `init` or from the weigher or an
    /// expiry hook as they weigh and time its value (that pass's listener
    /// may be waiting for the very load), it does not wait; called from a listener
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

    /// Whether an insert runs user code that may panic before it stores the
    /// value: a weigher or expiry hooks.
    pub(crate) fn insert_runs_user_code(&self) -> bool {
        self.inner.weigher.is_some() || self.inner.timing.hooks().is_some()
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

    /// See `Inner::insert_if`; what it removes goes into `removed`.
    pub(crate) fn insert_if(
        &self,
        key: K,
        value: V,
        ttl: Option<Duration>,
        decide: impl FnOnce(Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        self.inner.insert_if(key, value, ttl, decide, removed)
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

    /// See `Inner::remove_if`; what it removes goes into `removed`.
    pub(crate) fn remove_if<Q>(
        &self,
        key: &Q,
        doomed: impl FnOnce(Option<&V>, Stripe<'_>) -> bool,
        removed: &mut Removed<K, V>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove_if(key, doomed, removed)
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
        let (hash, cell) = self.shards.cell_for(key);
        let shard = cell.read();
        let id = shard.lookup(hash, key, &mut Now::new(&self.timing.clock))?;
        Some(shard.value(id).clone())
    }

    /// [`Cache::expires_in`]: the time left at one reading of the clock,
    /// the one the entry is judged live by.
    fn expires_in<Q>(&self, key: &Q) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        let deadline = cell.read().live_deadline(hash, key, &mut now)?;
        // `now` was read under the lock if the entry has a deadline.
        Some(
            (deadline != NEVER)
                .then(|| remaining(now.get(), deadline))
                .flatten(),
        )
    }

    /// [`Cache::expire_in`] (`ttl`) and [`Cache::persist`] (`None`): gives
    /// the key's live entry a new lifetime, or removes it as expired for a
    /// zero `ttl`; returns whether it was live. Not a write for a load of
    /// the key: the load began on a miss, which this call found too.
    fn retime<Q>(&self, key: &Q, ttl: Option<Duration>) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        if ttl == Some(Duration::ZERO) {
            // Delivered once the shard is unlocked.
            let mut removed = Delivery::new(self.listener.as_ref());
            let mut shard = cell.write();
            let mut now = Now::new(&self.timing.clock);
            let Some((key, value, cause)) = shard.expire_now(hash, key, &mut now) else {
                return false;
            };
            drop(shard);
            removed.push(key, value, cause);
            return true;
        }
        let mut shard = cell.write();
        // The time under the lock, which the entry is judged live by and
        // the lifetime counts from: read before it, an entry that expired
        // while this call waited for the lock would be judged live and
        // revived, after readers had found it expired.
        let mut now = Now::new(&self.timing.clock);
        let retimed = shard.retime(hash, key, &mut now, |now| self.timing.on_retime(now, ttl));
        drop(shard);
        match retimed {
            Some(deadline) => {
                if deadline.at != NEVER {
                    // Unlocked first, as in `land`.
                    self.maintenance.wake_for(deadline.at);
                }
                true
            }
            None => false,
        }
    }

    /// A user's insert: a load of the key under way began before it and
    /// will not cache its older value (see [`publish`](Self::publish)).
    /// The flight is marked under the shard lock, where the leader's fill
    /// looks at the mark: marked before the lock, an insert that found no
    /// flight yet could land while a load begun since runs, and that load
    /// then cached its value over the insert's.
    fn insert(&self, key: K, value: V, ttl: Option<Duration>) {
        // Delivered once the shard is unlocked, even if a key's `Hash`
        // panics while the insert evicts.
        let mut removed = Delivery::new(self.listener.as_ref());
        let decide = |key: &K, _: Option<&V>, _: Stripe<'_>| {
            self.flights.written(key);
            Verdict::Insert
        };
        self.insert_keyed(key, value, ttl, decide, &mut removed);
    }

    /// Inserts unless `decide`, shown the value under the key (if any, live
    /// or expired but not yet reaped) and the key's write-count stripe with
    /// the shard locked, says otherwise: [`Verdict::Skip`] leaves the shard
    /// as it is, [`Verdict::Remove`] removes the key's entry. `decide` is
    /// larder's own code, never the user's. Returns whether the value went in.
    /// What leaves the cache goes into `removed`, which the caller made
    /// (a [`Delivery`]) and delivers when it drops it.
    fn insert_if(
        &self,
        key: K,
        value: V,
        ttl: Option<Duration>,
        decide: impl FnOnce(Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let decide = |_: &K, found: Option<&V>, stripe: Stripe<'_>| decide(found, stripe);
        self.insert_keyed(key, value, ttl, decide, removed)
    }

    /// [`insert_if`](Self::insert_if) with `decide` also shown the key.
    ///
    /// Expiry hooks run before the shard lock, shown the entry as they
    /// find it. If a write of the key changes it before the lock is taken
    /// (creates, removes or re-times it), or it expires, they are asked
    /// again, up to
    /// [`HOOK_ATTEMPTS`] times in all (then the last answer stands): an
    /// update's answer never times an entry the write creates, nor a
    /// create's one it updates.
    fn insert_keyed(
        &self,
        key: K,
        value: V,
        ttl: Option<Duration>,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let (hash, cell) = self.shards.cell_for(&key);
        let weight = self.weigher.as_ref().map_or(1, |w| w(&key, &value));
        let mut now = Now::new(&self.timing.clock);
        let deadline = if ttl.is_some() || self.timing.is_timed() {
            if let (None, Some((hooks, _))) = (ttl, self.timing.hooks()) {
                return self.insert_hooked(hooks, cell, hash, key, value, weight, decide, removed);
            }
            self.timing.on_write(now.get(), ttl, None)
        } else {
            Deadline::NONE
        };
        let write = Write {
            hash,
            key,
            value,
            weight,
            deadline,
        };
        self.land(cell, cell.write(), now, write, decide, removed)
    }

    /// [`insert_keyed`](Self::insert_keyed) for a cache with expiry hooks
    /// and a write given no TTL of its own. The hooks run before the shard
    /// lock, shown the entry as they find it. If a write of the key changes
    /// it before the lock is taken (creates, removes or re-times it), or it
    /// expires meanwhile, they are asked again, up to [`HOOK_ATTEMPTS`]
    /// times in all (then the last answer stands): an update's answer never
    /// times an entry the write creates, nor a create's one it updates. The
    /// lifetime the answer gives counts from the write's landing, the time
    /// read again under the lock. (A path of its own, taken
    /// only by timed writes: in one loop with every write, it cost an
    /// untimed insert 20 instructions.)
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn insert_hooked(
        &self,
        hooks: &dyn Expiry<K, V>,
        cell: &ShardCell<K, V>,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let mut attempt = 1;
        loop {
            let (hooked, shown) = {
                let mut asked = Now::new(&self.timing.clock);
                Self::write_hook(hooks, cell, hash, &key, &value, &mut asked)
            };
            let shard = cell.write();
            // The time again, under the lock: the entry the hook was shown
            // may have expired while it ran, making this write a create.
            let mut now = Now::new(&self.timing.clock);
            if attempt == HOOK_ATTEMPTS || shard.live_deadline(hash, &key, &mut now) == shown {
                let deadline = self.timing.on_write(now.get(), None, Some(hooked));
                let write = Write {
                    hash,
                    key,
                    value,
                    weight,
                    deadline,
                };
                return self.land(cell, shard, now, write, decide, removed);
            }
            drop(shard);
            attempt += 1;
        }
    }

    /// The create or update hook's verdict for a write (the cache has
    /// hooks), with the deadline of the live entry it was shown (`None`:
    /// none).
    fn write_hook(
        hooks: &dyn Expiry<K, V>,
        cell: &ShardCell<K, V>,
        hash: u64,
        key: &K,
        value: &V,
        now: &mut Now<'_>,
    ) -> (Hooked, Option<u64>) {
        let current = cell.read().live_deadline(hash, key, now);
        let now = now.get();
        let hooked = match current {
            Some(deadline) => {
                let before = remaining(now, deadline);
                let after = hooks.expire_after_update(key, value, before);
                if after == before {
                    Hooked::Kept(deadline)
                } else {
                    Hooked::After(after)
                }
            }
            None => Hooked::After(hooks.expire_after_create(key, value)),
        };
        (hooked, current)
    }

    /// The locked half of a write: shows `decide` the key's value, then
    /// inserts, skips or removes as it says, collecting what leaves into
    /// `removed` (made by the caller before it locked `shard`, so that it
    /// delivers after the unlock, unwinding included).
    #[inline(always)]
    fn land<'c>(
        &self,
        cell: &'c ShardCell<K, V>,
        mut shard: ShardWriteGuard<'c, K, V>,
        mut now: Now<'_>,
        write: Write<K, V>,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let hash = write.hash;
        let found = shard.find(hash, &write.key);
        let stripe = cell.stripe(hash, &shard);
        match decide(&write.key, found.map(|id| shard.value(id)), stripe) {
            Verdict::Insert => {
                let deadline = write.deadline.at;
                shard.insert(found, write, &mut now, removed);
                drop(shard);
                if deadline != NEVER {
                    // Unlocked first: a maintenance thread that looks at
                    // the wheel after this sees the deadline; one that
                    // looked before has published when it wakes.
                    self.maintenance.wake_for(deadline);
                }
                true
            }
            Verdict::Skip => false,
            Verdict::Remove => {
                if let Some((key, value, cause)) = shard.remove(hash, &write.key, &mut now) {
                    removed.push(key, value, cause);
                }
                false
            }
        }
    }

    /// Removes `key`'s entry; returns its value if it was live and
    /// `returned` asks for it (`remove`; `invalidate` makes no clone).
    fn remove<Q>(&self, key: &Q, returned: bool) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        // Whether or not the key is cached: it may be loading.
        self.flights.written(key);
        // Delivers once dropped, after the value is cloned for the caller,
        // and also if that clone (user code) panics.
        let mut removed = Delivery::new(self.listener.as_ref());
        let (key, value, cause) = cell.write().remove(hash, key, &mut now)?;
        let returned = returned && cause == RemovalCause::Explicit;
        if self.listener.is_none() {
            return returned.then_some(value);
        }
        removed.push(key, value, cause);
        if returned {
            removed.first_value().cloned()
        } else {
            None
        }
    }

    /// Removes `key`'s entry (live, or expired but not yet reaped) if
    /// `doomed`, shown its value (if any) and the key's write-count stripe
    /// with the shard locked, says so. `doomed` is larder's own code, never
    /// the user's. Returns whether it removed a live entry (one
    /// [`peek`](Self::peek) would have returned). The entry goes into
    /// `removed`, for the caller to deliver.
    fn remove_if<Q>(
        &self,
        key: &Q,
        doomed: impl FnOnce(Option<&V>, Stripe<'_>) -> bool,
        removed: &mut Removed<K, V>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        let taken = {
            let mut shard = cell.write();
            let found = shard.find(hash, key);
            let stripe = cell.stripe(hash, &shard);
            if doomed(found.map(|id| shard.value(id)), stripe) && found.is_some() {
                shard.remove(hash, key, &mut now)
            } else {
                None
            }
        };
        let Some((key, value, cause)) = taken else {
            return false;
        };
        removed.push(key, value, cause);
        cause == RemovalCause::Explicit
    }

    fn get_or_load<E>(&self, key: K, init: impl FnOnce() -> Result<V, E>) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        self.load_missed(key, init)
    }

    /// [`get_or_load`](Self::get_or_load) for a borrowed key: a hit is
    /// the same `get`, with no copy of the key; only a miss makes one.
    fn get_or_load_by_ref<Q, E>(
        &self,
        key: &Q,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, Arc<E>>
    where
        K: Borrow<Q> + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        self.load_missed(key.to_owned(), init)
    }

    /// The rest of a load after its lookup missed (and counted the miss):
    /// leads the key's flight, or waits for it and shares its outcome.
    fn load_missed<E>(&self, key: K, init: impl FnOnce() -> Result<V, E>) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        loop {
            let flight = match self.flights.begin(&key, Leader::here()) {
                Role::Leader(guard) => {
                    // Someone may have finished loading between our miss and now.
                    if let Some(v) = self.peek(&key) {
                        guard.finish(Outcome::Loaded(v.clone()));
                        return Ok(v);
                    }
                    let result = self.timed_load(init);
                    return self.publish(key, guard, result);
                }
                Role::Waiter(flight) => flight,
            };
            // Joined after a write of the key landed: the load may have
            // read what the write replaced. Wait for it to end (one load
            // of the key at a time), then load again.
            let late = flight.written();
            let outcome = flight.wait();
            if late {
                continue;
            }
            if let Some(result) = shared(outcome) {
                return result;
            }
        }
    }

    /// [`get_or_load`](Self::get_or_load) for a future: waits for another
    /// caller's load without blocking, and if the leading future is dropped
    /// mid-load its guard abandons the flight so a waiter takes over.
    async fn get_or_load_async<E>(
        &self,
        key: K,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.get(&key) {
            return Ok(v);
        }
        self.load_missed_async(key, init).await
    }

    /// [`get_or_load_async`](Self::get_or_load_async) for a borrowed key:
    /// a hit is the same `get`, with no copy of the key; only a miss makes
    /// one.
    async fn get_or_load_by_ref_async<Q, E>(
        &self,
        key: &Q,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Borrow<Q> + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
        E: Send + Sync + 'static,
    {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        self.load_missed_async(key.to_owned(), init).await
    }

    /// The rest of an async load after its lookup missed (and counted the
    /// miss), as [`load_missed`](Self::load_missed) for a future.
    async fn load_missed_async<E>(
        &self,
        key: K,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        let mut init = Some(init);
        loop {
            let flight = match self.flights.begin(&key, Leader::Detached) {
                Role::Leader(guard) => {
                    if let Some(v) = self.peek(&key) {
                        guard.finish(Outcome::Loaded(v.clone()));
                        return Ok(v);
                    }
                    let mut init = pin!(init.take().expect("a caller leads at most once"));
                    let result = {
                        let record = LoadRecord::start(&self.loads);
                        // Each poll of `init` runs the load on this thread:
                        // a wait for the key from inside it is a self-load.
                        let result = poll_fn(|cx| {
                            let _here = guard.polling();
                            let _awaited = Awaited::here();
                            init.as_mut().poll(cx)
                        })
                        .await;
                        record.finish(answered(&result));
                        result
                    };
                    return self.publish(key, guard, result);
                }
                Role::Waiter(flight) => flight,
            };
            let late = flight.written(); // as in `load_missed`
            let outcome = flight.wait_async().await;
            if late {
                continue;
            }
            if let Some(result) = shared(outcome) {
                return result;
            }
        }
    }

    /// Caches a leader's value, unless the key was written while it loaded
    /// (the value may be older than that write), and hands its result to
    /// the waiters either way (those that joined after the write do not
    /// take it: see `load_missed`). What the fill evicts is delivered only once
    /// the flight is closed: the listener runs on this thread and may call
    /// back into the cache (`run_pending_tasks` waits for passes whose
    /// listeners may be waiting for this very load).
    fn publish<E>(
        &self,
        key: K,
        guard: LeaderGuard<K, V>,
        result: Result<V, E>,
    ) -> Result<V, Arc<E>>
    where
        K: Clone,
        E: Send + Sync + 'static,
    {
        match result {
            Ok(v) => {
                let mut removed = Delivery::new(self.listener.as_ref());
                // Bound after `removed`, so dropped before it when the
                // fill unwinds (a weigher's panic): the flight is abandoned
                // before the listener runs.
                let guard = guard;
                // Checked under the shard lock; an insert or a predicate's
                // removal marks the flight under that lock and `remove`
                // before it takes it, so one that lands after this fill
                // replaces it, and one that landed before is seen.
                let decide = |_: Option<&V>, _: Stripe<'_>| {
                    if guard.written() {
                        Verdict::Skip
                    } else {
                        Verdict::Insert
                    }
                };
                {
                    // The weigher and the expiry hooks run here, user code
                    // that waiters of this flight are waiting for.
                    let _awaited = Awaited::here();
                    self.insert_if(key, v.clone(), None, decide, &mut removed);
                }
                guard.finish(Outcome::Loaded(v.clone()));
                drop(removed);
                Ok(v)
            }
            Err(e) => {
                let e = Arc::new(e);
                guard.finish(Outcome::Failed(e.clone()));
                Err(e)
            }
        }
    }

    /// Runs a loader, recording it in the stats even if it panics.
    fn timed_load<T, E: 'static>(&self, init: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let record = LoadRecord::start(&self.loads);
        let result = {
            let _awaited = Awaited::here();
            init()
        };
        record.finish(answered(&result));
        result
    }

    fn invalidate_shard_if(&self, cell: &ShardCell<K, V>, predicate: &impl Fn(&K, &V) -> bool)
    where
        K: Clone,
    {
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let now = self.timing.clock.now();
            let (entries, version) = {
                let shard = cell.read();
                (shard.snapshot(now), shard.version())
            };
            // Hashed here, not under the lock: `Hash` is user code, and a
            // panic there would drop removals before the listener saw them.
            let doomed: Vec<(u64, K)> = entries
                .into_iter()
                .filter(|(k, v)| predicate(k, v))
                .map(|(k, _)| (self.shards.hash(&k), k))
                .collect();
            // Delivered once the shard is unlocked, even if a key's `Hash`
            // panics in a removal after others were made.
            let mut removed = Delivery::new(self.listener.as_ref());
            {
                let mut shard = cell.write();
                if shard.version() != version && attempt < ATTEMPTS {
                    continue;
                }
                let mut now = Now::new(&self.timing.clock);
                for (hash, key) in &doomed {
                    if let Some((k, v, cause)) = shard.remove(*hash, key, &mut now) {
                        // Under the lock, where a load's fill looks (as an
                        // insert marks it), and only for a key this pass
                        // removes: marked before a pass thrown away above,
                        // a load begun since its copy was kept out.
                        self.flights.written(key);
                        removed.push(k, v, cause);
                    }
                }
            }
            drop(removed);
            return;
        }
    }

    /// One maintenance pass: reap expired entries shard by shard in bounded
    /// batches and deliver their notifications between batches.
    fn maintain(&self) {
        self.maintenance.pass(|| {
            let now = self.timing.clock.now();
            for cell in self.shards.iter() {
                // Widens the lock's wrapping hit count while it is still
                // far from wrapping twice (see `raw::lock`).
                cell.hits();
                loop {
                    let mut removed = Removed::default();
                    let done = cell.write().reap(now, &mut removed);
                    self.deliver(removed);
                    if done {
                        break;
                    }
                }
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
            return LONGEST_SLEEP;
        }
        self.maintain();
        self.rest()
    }
}

/// Records one load in the counters when dropped: a failure unless
/// [`finish`](Self::finish)ed with success, so a panicking or cancelled load
/// counts as failed.
pub(crate) struct LoadRecord<'a> {
    loads: &'a LoadCounters,
    started: Instant,
    ok: bool,
}

impl<'a> LoadRecord<'a> {
    pub(crate) fn start(loads: &'a LoadCounters) -> Self {
        LoadRecord {
            loads,
            started: Instant::now(),
            ok: false,
        }
    }

    pub(crate) fn finish(mut self, ok: bool) {
        self.ok = ok;
    }
}

impl Drop for LoadRecord<'_> {
    fn drop(&mut self) {
        self.loads.record(self.ok, self.started.elapsed());
    }
}

/// What a `None` from [`Cache::optionally_get_with`]'s `init` becomes
/// inside a load: the flight's error, so that the waiters of an optional
/// load, which downcast to this type, share it, while waiters expecting a
/// value or an error of their own type cannot take it and load again.
/// Private, so no user's error type is this one.
#[derive(Debug)]
struct Absent;

/// Whether a loader's result counts as a successful load in the stats: a
/// value, or an optional load's [`Absent`] (an answer, not a failure, as a
/// `LoadingCache` counts a key reported absent).
fn answered<T, E: 'static>(result: &Result<T, E>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => (e as &dyn Any).is::<Absent>(),
    }
}

/// A waiter's result from the leader's outcome: the value, or the error if
/// it has the type this caller expects; `None` (load again) otherwise.
fn shared<V, E: Send + Sync + 'static>(outcome: Outcome<V>) -> Option<Result<V, Arc<E>>> {
    match outcome {
        Outcome::Loaded(v) => Some(Ok(v)),
        Outcome::Failed(e) => e.downcast::<E>().ok().map(Err),
        Outcome::Abandoned => None,
    }
}
