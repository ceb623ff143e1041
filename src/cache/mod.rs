//! [`Cache`]: the thin public face. Each method finds the key's shard and
//! delegates; the work lives in [`shard`](crate::shard),
//! [`load`](crate::load) and [`maintenance`](crate::maintenance); the
//! single-flight loaders (`get_with` and its kin) are in [`loads`].

mod loads;

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
    CacheBuilder, CacheStats, Expiry, RemovalCause,
    builder::{Policy, Weigher},
    expiry::{Deadline, Hooked, NEVER, Timing, clock::saturating_nanos, remaining},
    load::{flight::Flights, guard::Seen},
    maintenance::{INTERVAL, LONGEST_SLEEP, Maintained, Maintenance},
    notify::{Delivery, Listener, Removed},
    shard::{Now, Placeholder, ShardCell, ShardWriteGuard, Shards, Sighting, Stripe, Write},
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
    /// The time `batch` was judged live at.
    taken_at: u64,
}

impl<K, V> Iter<'_, K, V> {
    /// The time the entry just yielded was found live at (read as its
    /// shard was copied): what a value that keeps a deadline of its own
    /// (a loading cache's record) is to be judged by, not a later reading,
    /// as the record may have been changed in place since (`retime_with`).
    pub(crate) fn taken_at(&self) -> u64 {
        self.taken_at
    }
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
            self.taken_at = now;
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

/// How many times one write asks the expiry hooks at most, when writes of
/// its key keep changing the entry they were shown (see
/// `Inner::insert_keyed`).
const HOOK_ATTEMPTS: usize = 8;

/// The `stamp` of a write that sets no record in its value (see
/// `Inner::insert_keyed`): every write but a loading cache's.
type Unstamped<V> = fn(&mut V, &mut Now<'_>) -> Option<Duration>;

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
        self.inner.retime(key, |_, _| Some(Some(ttl)))
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
        self.inner.retime(key, |_, _| Some(None))
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
            taken_at: 0,
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

    /// See `Inner::expires_in_by`: [`expires_in`](Self::expires_in) for a
    /// value that keeps a deadline of its own (a loading cache's record).
    pub(crate) fn expires_in_by<Q>(
        &self,
        key: &Q,
        own: impl FnOnce(&V, &mut Now<'_>) -> Option<u64>,
    ) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.expires_in_by(key, own)
    }

    /// See `Inner::retime`: [`expire_in`](Self::expire_in) and
    /// [`persist`](Self::persist) with the lifetime decided, and the
    /// value's own record of it changed, under the lock.
    pub(crate) fn retime_with<Q>(
        &self,
        key: &Q,
        lifetime: impl FnOnce(u64, &mut V) -> Option<Option<Duration>>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.retime(key, lifetime)
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

    /// See `Inner::insert_stamped_if`: [`insert_if`](Self::insert_if) of
    /// a value whose own record of when it was stored (a loading cache's)
    /// `stamp` sets under the shard's lock, returning the entry's time to
    /// live.
    pub(crate) fn insert_stamped_if(
        &self,
        key: K,
        value: V,
        stamp: impl FnOnce(&mut V, &mut Now<'_>) -> Option<Duration>,
        decide: impl FnOnce(Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        self.inner
            .insert_stamped_if(key, value, stamp, decide, removed)
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

    /// See `Inner::remove_if`; what it removes goes into `removed`, as
    /// `Explicit` if it was live.
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
        self.inner
            .remove_if(key, doomed, RemovalCause::Explicit, removed)
    }

    /// [`remove_if`](Self::remove_if) with the cause a live entry goes
    /// with (`Replaced` for a write-around's put, which supersedes it).
    pub(crate) fn remove_if_as<Q>(
        &self,
        key: &Q,
        doomed: impl FnOnce(Option<&V>, Stripe<'_>) -> bool,
        live_cause: RemovalCause,
        removed: &mut Removed<K, V>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove_if(key, doomed, live_cause, removed)
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

    /// [`Cache::expires_in`]: the time left at one reading of the clock,
    /// the one the entry is judged live by.
    fn expires_in<Q>(&self, key: &Q) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.expires_in_by(key, |_, _| Some(NEVER))
    }

    /// [`expires_in`](Self::expires_in), with `own` shown the live
    /// entry's value and the time (read if it asks), under the shard's
    /// shared lock: it returns a deadline the value keeps for itself
    /// ([`NEVER`] for none; the answer is the earlier of it and the
    /// entry's), or `None` to have the entry counted as not live. `own` is
    /// larder's own code.
    fn expires_in_by<Q>(
        &self,
        key: &Q,
        own: impl FnOnce(&V, &mut Now<'_>) -> Option<u64>,
    ) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        let shard = cell.read();
        let id = shard.lookup(hash, key, &mut now)?;
        let deadline = shard.deadline(id).min(own(shard.value(id), &mut now)?);
        drop(shard);
        // `now` was read under the lock if either deadline is one.
        Some(
            (deadline != NEVER)
                .then(|| remaining(now.get(), deadline))
                .flatten(),
        )
    }

    /// [`Cache::expire_in`] (`ttl`) and [`Cache::persist`] (`None`), with
    /// the lifetime given by `lifetime`: shown the key's live entry's value
    /// and the time under the shard's exclusive lock, it returns the new
    /// lifetime (`Some(ttl)`) and may change larder's own bookkeeping in
    /// the value to match (see [`Shard::value_mut`](crate::shard::Shard::value_mut)),
    /// or returns `None` to leave the entry as it is. Gives the entry the
    /// lifetime, or removes it as expired for a zero `ttl`; returns whether
    /// it was given one. Not a write for a load of the key: the load began
    /// on a miss, which this call found too.
    fn retime<Q>(
        &self,
        key: &Q,
        lifetime: impl FnOnce(u64, &mut V) -> Option<Option<Duration>>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        // Delivered once the shard is unlocked.
        let mut removed = Delivery::new(self.listener.as_ref());
        let mut shard = cell.write();
        // The time under the lock, which the entry is judged live by and
        // the lifetime counts from: read before it, an entry that expired
        // while this call waited for the lock would be judged live and
        // revived, after readers had found it expired.
        let mut now = Now::new(&self.timing.clock);
        let Some(id) = shard.lookup(hash, key, &mut now) else {
            return false;
        };
        let Some(ttl) = lifetime(now.get(), shard.value_mut(id)) else {
            return false;
        };
        if ttl == Some(Duration::ZERO) {
            if let Some((key, value, cause)) = shard.expire_now(hash, key, &mut now) {
                drop(shard);
                removed.push(key, value, cause);
            }
            return true;
        }
        let deadline = self.timing.on_retime(now.get(), ttl);
        shard.retime(id, deadline);
        drop(shard);
        if deadline.at != NEVER {
            // Unlocked first, as in `land`.
            self.maintenance.wake_for(deadline.at);
        }
        true
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
        self.insert_keyed(key, value, ttl, None::<Unstamped<V>>, decide, &mut removed);
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
        self.insert_keyed(key, value, ttl, None::<Unstamped<V>>, decide, removed)
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
    ///
    /// `stamp`, if given, is shown the value and the time under the
    /// shard's lock and returns the entry's time to live in place of
    /// `ttl`, setting larder's own record of that time kept in the value
    /// (a loading cache's `Loaded::loaded_at` and `expires_at`), so that
    /// the record and the entry's deadline count from the same instant.
    /// It is larder's own code, for a cache without expiry hooks.
    fn insert_keyed(
        &self,
        key: K,
        mut value: V,
        ttl: Option<Duration>,
        stamp: Option<impl FnOnce(&mut V, &mut Now<'_>) -> Option<Duration>>,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let (hash, cell) = self.shards.cell_for(&key);
        let weight = self.weigher.as_ref().map_or(1, |w| w(&key, &value));
        if let (None, Some((hooks, _))) = (ttl, self.timing.hooks()) {
            debug_assert!(stamp.is_none(), "no hook times a stamped write");
            return self.insert_hooked(hooks, cell, hash, key, value, weight, decide, removed);
        }
        let shard = cell.write();
        // The time under the lock, where the write lands: the entry it
        // replaces is judged live or expired by it, and the lifetime counts
        // from it. Read before, a write that waited for the lock while the
        // old value expired reported it `Replaced` (after readers had found
        // it expired) and gave its own value a deadline that could have
        // passed by the time it landed.
        let mut now = Now::new(&self.timing.clock);
        // A value that keeps its own record of that time has it set here,
        // from the same reading as its entry's deadline.
        let ttl = match stamp {
            Some(stamp) => stamp(&mut value, &mut now),
            None => ttl,
        };
        let deadline = if ttl.is_some() || self.timing.is_timed() {
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
        self.land(cell, shard, now, write, decide, removed)
    }

    /// [`insert_if`](Self::insert_if) of a value that keeps its own record
    /// of when it was stored: `stamp` sets it, and returns the entry's
    /// time to live, at the time read under the shard's lock (see
    /// [`insert_keyed`](Self::insert_keyed)). For a cache without expiry
    /// hooks (a loading cache's inner cache never has them).
    fn insert_stamped_if(
        &self,
        key: K,
        value: V,
        stamp: impl FnOnce(&mut V, &mut Now<'_>) -> Option<Duration>,
        decide: impl FnOnce(Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let decide = |_: &K, found: Option<&V>, stripe: Stripe<'_>| decide(found, stripe);
        self.insert_keyed(key, value, None, Some(stamp), decide, removed)
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
            // The write's key and value, not stored, drop with `write`
            // after this function's body: the shard is unlocked first, as
            // their `Drop` is user code that may use the cache.
            Verdict::Skip => {
                drop(shard);
                false
            }
            Verdict::Remove => {
                let taken = shard.remove(hash, &write.key, &mut now);
                drop(shard);
                if let Some((key, value, cause)) = taken {
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
    /// `removed`, for the caller to deliver, with cause `live_cause` if it
    /// was live, else `Expired`.
    fn remove_if<Q>(
        &self,
        key: &Q,
        doomed: impl FnOnce(Option<&V>, Stripe<'_>) -> bool,
        live_cause: RemovalCause,
        removed: &mut Removed<K, V>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        debug_assert_ne!(live_cause, RemovalCause::Expired, "a live entry's cause");
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        let taken = {
            let mut shard = cell.write();
            let found = shard.find(hash, key);
            let stripe = cell.stripe(hash, &shard);
            if doomed(found.map(|id| shard.value(id)), stripe) && found.is_some() {
                shard.remove_as(hash, key, &mut now, live_cause)
            } else {
                None
            }
        };
        let Some((key, value, cause)) = taken else {
            return false;
        };
        removed.push(key, value, cause);
        cause != RemovalCause::Expired
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
                        // Kept for the listener first: marking hashes the
                        // key (user code), and an entry dropped by a panic
                        // there was counted removed but never delivered.
                        removed.push(k, v, cause);
                        // Under the lock, where a load's fill looks (as an
                        // insert marks it), and only for a key this pass
                        // removes: marked before a pass thrown away above,
                        // a load begun since its copy was kept out.
                        self.flights.written(key);
                    }
                }
            }
            drop(removed);
            return;
        }
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
