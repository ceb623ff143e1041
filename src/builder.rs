//! [`CacheBuilder`]: settings, their validation, and [`BuildError`].

use std::{fmt, hash::Hash, sync::Arc, time::Duration};

use crate::{
    Cache, Expiry, RemovalCause,
    expiry::{Hooks, Timing, clock::Clock},
    load::fresh::Loaded,
    notify::Listener,
    shard::Placeholder,
};

/// The user's weigher.
pub(crate) type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;

/// A loading cache's inner builder, its time to live and its jitter.
pub(crate) type LoadingBase<K, V> = (CacheBuilder<K, Loaded<V>>, Option<Duration>, f64);

/// Most shards a cache may have.
const MAX_SHARDS: usize = 1 << 16;

/// Default shards hold at least this much capacity, so that small caches keep
/// one policy with enough entries to learn from.
const MIN_SHARD_CAPACITY: u64 = 512;

/// The settings a cache was built with, read back:
/// [`Cache::policy`](crate::Cache::policy) (and `policy` on
/// [`LoadingCache`](crate::LoadingCache::policy) and
/// [`StoreCache`](crate::StoreCache::policy)).
///
/// What it reports is what the cache uses, which is not always what the
/// builder was given: the shard count is rounded up to a power of two and
/// capped by the capacity, and a default one depends on the machine.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let cache = larder::Cache::<u32, u32>::builder()
///     .max_capacity(10_000)
///     .time_to_live(Duration::from_secs(60))
///     .ttl_jitter(0.1)
///     .num_shards(3)
///     .build()
///     .unwrap();
/// let policy = cache.policy();
/// assert_eq!(policy.max_capacity(), Some(10_000));
/// assert_eq!(policy.num_shards(), 4); // rounded up to a power of two
/// assert_eq!(policy.time_to_live(), Some(Duration::from_secs(60)));
/// assert_eq!(policy.time_to_idle(), None);
/// assert_eq!(policy.ttl_jitter(), 0.1);
/// assert_eq!(policy.max_entry_weight(), None); // every entry weighs 1
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    max_capacity: u64,
    num_shards: usize,
    weighted: bool,
    per_entry_expiry: bool,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    jitter: f64,
}

impl Policy {
    /// The bound: a number of entries, or a total weight for a weighted
    /// cache. `None` for an unbounded cache (no `max_capacity`, or
    /// `u64::MAX`).
    pub fn max_capacity(&self) -> Option<u64> {
        (self.max_capacity != u64::MAX).then_some(self.max_capacity)
    }

    /// The number of shards the bound is split over (see
    /// [`CacheBuilder::num_shards`]).
    pub fn num_shards(&self) -> usize {
        self.num_shards
    }

    /// Whether entries are weighed ([`CacheBuilder::weigher`]): the bound
    /// and [`weighted_size`](crate::Cache::weighted_size) count weight
    /// rather than entries.
    pub fn is_weighted(&self) -> bool {
        self.weighted
    }

    /// The heaviest entry the cache keeps: `max_capacity / num_shards`,
    /// rounded down, for a weighted cache; `None` for an unweighted or
    /// unbounded one. A heavier entry is refused, in every shard (the
    /// listener hears of it as a `Size` eviction; see
    /// [`CacheBuilder::weigher`]), though the first `max_capacity %
    /// num_shards` shards hold a unit more in all.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .max_capacity(64 * 1024)
    ///     .weigher(|_k: &u32, v: &Vec<u8>| v.len() as u32)
    ///     .num_shards(8)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.policy().max_entry_weight(), Some(8 * 1024));
    /// cache.insert(1, vec![0; 8 * 1024 + 1]);
    /// assert!(!cache.contains_key(&1));
    /// ```
    pub fn max_entry_weight(&self) -> Option<u64> {
        let bounded = self.max_capacity()?;
        self.weighted.then(|| bounded / self.num_shards as u64)
    }

    /// The time to live ([`CacheBuilder::time_to_live`]), if set.
    pub fn time_to_live(&self) -> Option<Duration> {
        self.ttl
    }

    /// The time to idle ([`CacheBuilder::time_to_idle`]), if set.
    pub fn time_to_idle(&self) -> Option<Duration> {
        self.tti
    }

    /// Whether per-entry lifetimes come from [`Expiry`] hooks
    /// ([`CacheBuilder::expire_after`]).
    pub fn has_expiry_hooks(&self) -> bool {
        self.per_entry_expiry
    }

    /// The spread of computed lifetimes ([`CacheBuilder::ttl_jitter`]):
    /// `0.0` when lifetimes are exact.
    pub fn ttl_jitter(&self) -> f64 {
        self.jitter
    }

    /// This policy with a loading cache's own time to live and jitter,
    /// which it applies itself rather than through its inner cache.
    pub(crate) fn with_lifetime(mut self, ttl: Option<Duration>, jitter: f64) -> Self {
        self.ttl = ttl;
        self.jitter = jitter;
        self
    }
}

/// Why [`CacheBuilder::build`] refused its settings.
///
/// # Examples
///
/// ```
/// use larder::{BuildError, Cache};
/// let err = Cache::<u32, u32>::builder().num_shards(0).build().unwrap_err();
/// assert_eq!(err, BuildError::ZeroShards);
/// assert_eq!(err.to_string(), "num_shards must be at least 1");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BuildError {
    /// `num_shards(0)`.
    ZeroShards,
    /// `num_shards` above 65,536; holds the value given.
    TooManyShards(usize),
    /// `time_to_live(Duration::ZERO)`: nothing could ever be read back.
    ZeroTimeToLive,
    /// `time_to_idle(Duration::ZERO)`.
    ZeroTimeToIdle,
    /// `ttl_jitter` outside `0.0..1.0` (or NaN); holds the value given.
    JitterOutOfRange(f64),
    /// `ttl_jitter` above zero with no lifetime for it to spread: neither
    /// `time_to_live` nor `expire_after`. (A TTL given to `insert_with_ttl`
    /// or `expire_in` and the time to idle are kept exact, so the jitter
    /// would do nothing.)
    JitterWithoutLifetime,
    /// `expire_after` together with `time_to_live` or `time_to_idle`: the hooks
    /// decide every deadline, so the fixed durations would be ignored.
    ExpiryConflict,
    /// `expire_after` on a builder given a [`loader`](CacheBuilder::loader):
    /// a loading cache times its values with `time_to_live` and its own
    /// refresh settings.
    LoaderExpiryConflict,
    /// A loading-cache or write-behind setting that must be greater than
    /// zero is zero; the setting is named.
    ZeroSetting(&'static str),
    /// A loading-cache setting above its limit: the setting, the value
    /// given and the limit. `reload_threads` at most 1,024 (threads are
    /// started at build), `reload_queue_capacity` at most 1,048,576 (the
    /// queue is allocated whole at build).
    TooLarge(&'static str, usize, usize),
    /// A loading-cache setting that only means something with a
    /// `time_to_live` was given without one; the setting is named.
    NeedsTimeToLive(&'static str),
    /// The `early_expiry` β is not a finite number greater than zero.
    BetaOutOfRange(f64),
    /// A write-behind setting of a [`StoreCacheBuilder`](crate::StoreCacheBuilder)
    /// given without `write_behind()`; the setting is named.
    NeedsWriteBehind(&'static str),
    /// The jitter of `retry_backoff` is outside `0.0..=1.0` (or NaN).
    RetryJitterOutOfRange(f64),
    /// The `retry_backoff` base is longer than its maximum.
    BackoffOrder,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroShards => write!(f, "num_shards must be at least 1"),
            BuildError::TooManyShards(n) => {
                write!(f, "num_shards is {n}, more than the limit of {MAX_SHARDS}")
            }
            BuildError::ZeroTimeToLive => write!(f, "time_to_live must be longer than zero"),
            BuildError::ZeroTimeToIdle => write!(f, "time_to_idle must be longer than zero"),
            BuildError::JitterOutOfRange(j) => write!(f, "ttl_jitter is {j}, outside 0.0..1.0"),
            BuildError::JitterWithoutLifetime => write!(
                f,
                "ttl_jitter spreads the time_to_live or expire_after lifetimes, and neither is set"
            ),
            BuildError::LoaderExpiryConflict => write!(
                f,
                "expire_after cannot be combined with a loader; use time_to_live and refresh settings"
            ),
            BuildError::ZeroSetting(name) => write!(f, "{name} must be greater than zero"),
            BuildError::TooLarge(name, given, limit) => {
                write!(f, "{name} is {given}, more than the limit of {limit}")
            }
            BuildError::NeedsTimeToLive(name) => {
                write!(f, "{name} needs a time_to_live to count from")
            }
            BuildError::BetaOutOfRange(b) => {
                write!(f, "early_expiry beta is {b}, not a finite number above 0")
            }
            BuildError::NeedsWriteBehind(name) => {
                write!(
                    f,
                    "{name} is a write-behind setting; choose write_behind() to use it"
                )
            }
            BuildError::RetryJitterOutOfRange(j) => {
                write!(f, "retry_backoff jitter is {j}, outside 0.0..=1.0")
            }
            BuildError::BackoffOrder => {
                write!(f, "retry_backoff base is longer than its maximum")
            }
            BuildError::ExpiryConflict => {
                write!(
                    f,
                    "expire_after cannot be combined with time_to_live or time_to_idle"
                )
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Settings for a [`Cache`]; `build()` checks them.
///
/// Every setter is optional. Without any, a cache is unbounded, never
/// expires entries, and has one shard per 512 entries of capacity up to four
/// per CPU (both rounded to a power of two; see
/// [`num_shards`](Self::num_shards)).
///
/// # Examples
///
/// ```
/// use larder::Cache;
/// use std::time::Duration;
///
/// let cache: Cache<String, String> = Cache::builder()
///     .max_capacity(10_000)
///     .time_to_live(Duration::from_secs(300))
///     .build()
///     .expect("valid settings");
/// cache.insert("k".into(), "v".into());
/// assert_eq!(cache.get("k"), Some("v".to_string()));
/// ```
#[must_use]
pub struct CacheBuilder<K, V> {
    max_capacity: u64,
    weigher: Option<Weigher<K, V>>,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    expiry: Option<Hooks<K, V>>,
    jitter: f64,
    listener: Option<Listener<K, V>>,
    num_shards: Option<usize>,
    clock: Clock,
    /// Set by [`into_loading`](Self::into_loading) for its inner cache:
    /// the values that stand for a cached absence, whose removals the
    /// listener never hears of and the stats do not count.
    placeholder: Option<Placeholder<V>>,
}

impl<K, V> fmt::Debug for CacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("max_capacity", &self.max_capacity)
            .field("weigher", &self.weigher.is_some())
            .field("time_to_live", &self.ttl)
            .field("time_to_idle", &self.tti)
            .field("expire_after", &self.expiry.is_some())
            .field("ttl_jitter", &self.jitter)
            .field("eviction_listener", &self.listener.is_some())
            .field("num_shards", &self.num_shards)
            .field(
                "clock",
                &if self.clock.is_manual() {
                    "mock"
                } else {
                    "system"
                },
            )
            .finish()
    }
}

impl<K, V> Default for CacheBuilder<K, V> {
    fn default() -> Self {
        CacheBuilder {
            max_capacity: u64::MAX,
            weigher: None,
            ttl: None,
            tti: None,
            expiry: None,
            jitter: 0.0,
            listener: None,
            num_shards: None,
            clock: Clock::system(),
            placeholder: None,
        }
    }
}

impl<K, V> CacheBuilder<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The bound on the cache: a number of entries, or a total weight when a
    /// [`weigher`](Self::weigher) is set. Default: unbounded (`u64::MAX`),
    /// a cache that never evicts and so keeps no frequency sketch (entries
    /// leave only when they expire or are removed). `0` is allowed and
    /// makes a cache that keeps nothing.
    ///
    /// The bound is split evenly over the shards and each shard enforces its
    /// part, so the cache never holds more than `max_capacity`, but it may
    /// evict before reaching it, where keys crowd one shard: as many
    /// distinct keys as the bound fill it to about 98 % when each shard
    /// holds 512 or more (the default), and to only 80 to 90 % when
    /// [`num_shards`](Self::num_shards) leaves each a few entries (100
    /// over 16 shards). With a weigher, an entry heavier than its shard's
    /// share (`max_capacity / num_shards`, rounded down) is refused, and with the default
    /// shard count that share is small: see [`weigher`](Self::weigher).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().max_capacity(100).build().unwrap();
    /// for i in 0..1_000 {
    ///     cache.insert(i, i);
    /// }
    /// assert!(cache.entry_count() <= 100);
    ///
    /// let nothing = larder::Cache::builder().max_capacity(0).build().unwrap();
    /// assert_eq!(nothing.get_with(1, || 10), 10); // the value is returned...
    /// assert_eq!(nothing.entry_count(), 0); // ...but not kept
    /// ```
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// Weighs each entry (unit: whatever `max_capacity` counts, e.g. bytes).
    /// Default: every entry weighs 1. Called on every insert, without any lock
    /// held. An entry heavier than its shard's share of the capacity is not
    /// stored (the listener sees it as a `Size` eviction). An entry weighing
    /// 0 takes no room: it does not count against the bound (a cache of
    /// weightless entries has no limit on their number), and it is never
    /// evicted for size (evicting it would free nothing), as in Caffeine
    /// and quick_cache: it leaves when removed or expired, and a write that
    /// gives it a weight makes it a candidate for eviction again. Until 7 December the policy evicted weightless
    /// entries as victims like any other (a shard of 10 given 2,000 new
    /// keys alternating weights 0 and 1 evicted 925 of the 1,000
    /// weightless ones; now none).
    ///
    /// A shard's share is `max_capacity / num_shards`, rounded down (the
    /// first `max_capacity % num_shards` shards hold a unit more in all,
    /// but refuse the same entries), and the default shard
    /// count counts the weight's units as it counts entries: one shard per
    /// 512 units, up to four per CPU rounded up to a power of two. A cache
    /// bounded in bytes is always big enough to get the most, so on a
    /// machine with `n` CPUs the heaviest entry it keeps weighs
    /// `max_capacity / s`, `s` being `4 × n` rounded up to a power of two:
    /// an eighth of the bound on 2 CPUs, a 32nd on 6 or 8, under 0.4 % of
    /// it on 64. Where entries
    /// can be large, set [`num_shards`](Self::num_shards) so that the
    /// heaviest fits in `max_capacity / num_shards` (fewer shards also means
    /// more contention between writers). A built cache reports its line as
    /// [`Policy::max_entry_weight`].
    ///
    /// A weigher that owns a handle of its own cache keeps the cache (and
    /// its `larder-maintenance` thread) alive for ever, as a listener does
    /// (see [`eviction_listener`](Self::eviction_listener)).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .max_capacity(1_000)
    ///     .weigher(|_k: &u32, v: &String| v.len() as u32)
    ///     .num_shards(1)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, "x".repeat(600));
    /// cache.insert(2, "y".repeat(300));
    /// cache.run_pending_tasks();
    /// assert!(cache.weighted_size() <= 1_000);
    /// ```
    ///
    /// A 16 KiB value in a 64 KiB cache: refused when the bound is split
    /// over 8 shards (the default on a 2-CPU machine, 8 KiB each), kept
    /// over 2:
    ///
    /// ```
    /// let bytes = |shards| {
    ///     larder::Cache::builder()
    ///         .max_capacity(64 * 1024)
    ///         .weigher(|_k: &u32, v: &Vec<u8>| v.len() as u32)
    ///         .num_shards(shards)
    ///         .build()
    ///         .unwrap()
    /// };
    /// let (eight, two) = (bytes(8), bytes(2));
    /// eight.insert(1, vec![0; 16 * 1024]);
    /// two.insert(1, vec![0; 16 * 1024]);
    /// assert!(!eight.contains_key(&1)); // heavier than 64 KiB / 8
    /// assert!(two.contains_key(&1));
    /// ```
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Entries expire this long after they were inserted or last updated.
    /// Default: never. Must be longer than zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{BuildError, Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder().time_to_live(Duration::from_secs(10)).clock(clock.clone()).build().unwrap();
    /// cache.insert(1, "a");
    /// clock.advance(Duration::from_secs(6));
    /// cache.insert(1, "b"); // an update starts its 10 s again
    /// clock.advance(Duration::from_secs(6));
    /// assert_eq!(cache.get(&1), Some("b"));
    /// clock.advance(Duration::from_secs(4));
    /// assert_eq!(cache.get(&1), None);
    ///
    /// let zero = Cache::<u32, u32>::builder().time_to_live(Duration::ZERO).build();
    /// assert_eq!(zero.unwrap_err(), BuildError::ZeroTimeToLive);
    /// ```
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Entries expire this long after they were last read or written
    /// (sliding expiry); combined with `time_to_live`, whichever comes first.
    /// Default: never. Must be longer than zero. Reads move the deadline in
    /// steps of about a millisecond (an eighth of the idle time, if that is
    /// shorter), so an entry may expire up to a step before its last read
    /// plus the idle time.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{BuildError, Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .time_to_idle(Duration::from_secs(10))
    ///     .time_to_live(Duration::from_secs(25))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1);
    /// for _ in 0..2 {
    ///     clock.advance(Duration::from_secs(9));
    ///     assert_eq!(cache.get(&1), Some(1)); // read within 10 s: kept
    /// }
    /// clock.advance(Duration::from_secs(7)); // 25 s since the insert
    /// assert_eq!(cache.get(&1), None); // the time to live came first
    ///
    /// let zero = Cache::<u32, u32>::builder().time_to_idle(Duration::ZERO).build();
    /// assert_eq!(zero.unwrap_err(), BuildError::ZeroTimeToIdle);
    /// ```
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.tti = Some(tti);
        self
    }

    /// Per-entry expiry decided by `expiry`'s hooks on create, read and
    /// update. Cannot be combined with `time_to_live` / `time_to_idle`.
    /// Keys must be `Clone`: the read hook runs outside the lock on a copy.
    /// Hooks that own a handle of their own cache keep it (and its
    /// `larder-maintenance` thread) alive for ever, as a listener does (see
    /// [`eviction_listener`](Self::eviction_listener)).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{BuildError, Cache, Expiry};
    /// use std::time::Duration;
    ///
    /// /// Sessions live as long as they say.
    /// struct Sessions;
    /// impl Expiry<u32, Duration> for Sessions {
    ///     fn expire_after_create(&self, _: &u32, lifetime: &Duration) -> Option<Duration> {
    ///         Some(*lifetime)
    ///     }
    /// }
    /// let cache = Cache::builder().expire_after(Sessions).build().unwrap();
    /// cache.insert(1, Duration::from_secs(60));
    /// assert!(cache.contains_key(&1));
    ///
    /// let both = Cache::builder().expire_after(Sessions).time_to_live(Duration::from_secs(1)).build();
    /// assert_eq!(both.unwrap_err(), BuildError::ExpiryConflict);
    /// ```
    ///
    /// [`Expiry`] shows the hooks on a `MockClock`.
    pub fn expire_after(mut self, expiry: impl Expiry<K, V>) -> Self
    where
        K: Clone,
    {
        self.expiry = Some((Box::new(expiry), K::clone));
        self
    }

    /// Spreads the lifetimes the cache decides by a random factor in
    /// `1 ± jitter`, so entries written together do not all expire together:
    /// the [`time_to_live`](Self::time_to_live) of each write, and each time
    /// an [`Expiry`] hook returns. Default `0.0`; range `0.0..1.0` (e.g. `0.1`
    /// for ±10 %). On a [`LoadingCache`](crate::LoadingCache) it spreads each
    /// loaded value's time to live the same way, but not its
    /// [`refresh_after`](crate::LoadingCacheBuilder::refresh_after), which
    /// stays exact. An update whose
    /// [`Expiry::expire_after_update`] leaves the time left as it was (the
    /// default hook) keeps the entry's deadline, unspread again.
    ///
    /// A TTL given to [`Cache::insert_with_ttl`](crate::Cache::insert_with_ttl)
    /// or [`Cache::expire_in`](crate::Cache::expire_in)
    /// is kept exactly (a lifetime that comes from outside, such as a
    /// token's, is not lengthened), and so is the
    /// [`time_to_idle`](Self::time_to_idle). A jitter above zero with
    /// neither a `time_to_live` nor [`expire_after`](Self::expire_after)
    /// would spread nothing: `build` refuses it
    /// ([`BuildError::JitterWithoutLifetime`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(100))
    ///     .ttl_jitter(0.2) // each write lives 80 to 120 s
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// for i in 0..100 {
    ///     cache.insert(i, i);
    /// }
    /// cache.insert_with_ttl(1_000, 0, Duration::from_secs(100)); // exactly 100 s
    /// clock.advance(Duration::from_secs(79));
    /// assert_eq!(cache.iter().count(), 101);
    /// clock.advance(Duration::from_secs(21)); // 100 s
    /// assert_eq!(cache.get(&1_000), None);
    /// clock.advance(Duration::from_secs(21)); // 121 s
    /// assert_eq!(cache.iter().count(), 0);
    /// ```
    pub fn ttl_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Called once for every entry that leaves the cache, with its cause,
    /// while the cache lives: the entries still cached when its last handle
    /// is dropped go without a call. Default: none. It runs on the thread
    /// that caused the removal (or the maintenance thread for expiry), after
    /// every lock is released, so it may call back into the cache; for a
    /// load whose value evicts to make room, after the callers waiting for
    /// that load have the value. A panic in it is caught and discarded; the
    /// removal stands and other notifications are still delivered.
    ///
    /// On a [`LoadingCache`](crate::LoadingCache) the listener hears of
    /// values only, not of cached absences (`negative_ttl`), which have
    /// none to hand over: an absence that leaves, a value written or
    /// loaded over it say, is neither heard nor counted in
    /// [`removals`](crate::CacheStats::removals), which counts exactly
    /// what the listener hears; with
    /// `stale_while_revalidate` or `stale_if_error`, a value leaves (as
    /// `Expired`) once the last of those windows ends, not at its time to
    /// live; a reload (refresh-ahead, stale-while-revalidate, early expiry,
    /// [`refresh`](crate::LoadingCache::refresh)) that brings a new value
    /// replaces the old one (`Replaced`, as an `insert` does), and one that
    /// finds the key gone drops its value (`Explicit`), unless the cache
    /// has a `negative_ttl`: the absence it then caches replaces the value
    /// (heard as `Replaced`; the absence's own leaving, later, is not).
    ///
    /// A listener that owns a handle of its own cache keeps the cache (and
    /// its `larder-maintenance` thread) alive for ever: reach it through a
    /// cell you empty when done, or another owner's handle. On a
    /// write-behind [`StoreCache`](crate::StoreCache), a change the store
    /// refused for good drops its key's copy on the `larder-write-behind`
    /// thread, so the listener runs there: see
    /// [`dead_letter`](crate::StoreCacheBuilder::dead_letter) for what it
    /// cannot wait for.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, RemovalCause};
    /// use std::sync::{Arc, Mutex, atomic::{AtomicBool, Ordering}};
    /// let heard = Arc::new(Mutex::new(Vec::new()));
    /// let listener = {
    ///     let heard = heard.clone();
    ///     move |k: Arc<u32>, v: u32, cause| heard.lock().unwrap().push((*k, v, cause))
    /// };
    /// let cache = Cache::builder().max_capacity(2).eviction_listener(listener.clone()).build().unwrap();
    /// cache.insert(1, 10);
    /// cache.insert(1, 11); // replaces 10
    /// cache.invalidate(&1); // removes 11
    /// assert_eq!(*heard.lock().unwrap(), [(1, 10, RemovalCause::Replaced), (1, 11, RemovalCause::Explicit)]);
    ///
    /// // A loading cache: a reload that brings a new value replaces the old
    /// // one; one that finds the key gone drops it, unless an absence is
    /// // cached in its place (`negative_ttl`).
    /// for negative_ttl in [None, Some(std::time::Duration::from_secs(5))] {
    ///     heard.lock().unwrap().clear();
    ///     let gone = Arc::new(AtomicBool::new(false));
    ///     let source = gone.clone();
    ///     let builder = Cache::builder()
    ///         .eviction_listener(listener.clone())
    ///         .loader(move |k: &u32| Ok::<_, String>((!source.load(Ordering::SeqCst)).then_some(*k)));
    ///     let users = match negative_ttl {
    ///         Some(ttl) => builder.negative_ttl(ttl).build().unwrap(),
    ///         None => builder.build().unwrap(),
    ///     };
    ///     users.get(&1).unwrap();
    ///     users.refresh(&1); // a new value (here an equal one)
    ///     gone.store(true, Ordering::SeqCst);
    ///     users.refresh(&1); // the key is gone from the source
    ///     users.run_pending_tasks();
    ///     assert_eq!(users.get(&1).unwrap(), None);
    ///     let dropped = if negative_ttl.is_some() { RemovalCause::Replaced } else { RemovalCause::Explicit };
    ///     assert_eq!(*heard.lock().unwrap(), [(1, 1, RemovalCause::Replaced), (1, 1, dropped)]);
    /// }
    /// ```
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(Arc<K>, V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Number of independently locked shards, rounded up to a power of two.
    /// Default: one per 512 units of capacity (rounded down to a power of
    /// two), at most four per CPU (rounded up to one: 32 on 6 CPUs). Range
    /// `1..=65536`. More shards, less contention; fewer, a better hit ratio
    /// for small caches. Measured on this project's 2-CPU machine (a replay
    /// of the comparison bench's mixed Zipf stream, capacity 100,000, in
    /// millions of operations a second, one thread / two threads): 8
    /// shards (the default there) 27.0 / 17.1, 16 shards 26.7 / 20.1, 32
    /// shards 25.3 / 22.8; the hit ratios of the simulator's large rows
    /// moved by 0.2 points at most from 8 shards to 128, and the heap of
    /// 100,000 entries grew from 32.6 bytes an entry to 34.1 at 32 shards.
    /// A cache never has more shards than units of capacity (the largest
    /// power of two within it), so that every shard can hold something. Each shard takes about 11 KB even while empty
    /// (its lock, index, eviction policy and timing wheel): the most,
    /// 65,536, take about 700 MB for a cache holding nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{BuildError, Cache};
    /// let cache = Cache::<u32, u32>::builder().num_shards(3).build().unwrap();
    /// assert!(format!("{cache:?}").contains("shards: 4")); // rounded up
    /// let small = Cache::<u32, u32>::builder().max_capacity(6).num_shards(64).build().unwrap();
    /// assert!(format!("{small:?}").contains("shards: 4")); // at most the capacity
    ///
    /// let zero = Cache::<u32, u32>::builder().num_shards(0).build();
    /// assert_eq!(zero.unwrap_err(), BuildError::ZeroShards);
    /// let many = Cache::<u32, u32>::builder().num_shards(1 << 17).build();
    /// assert_eq!(many.unwrap_err(), BuildError::TooManyShards(1 << 17));
    /// ```
    pub fn num_shards(mut self, num_shards: usize) -> Self {
        self.num_shards = Some(num_shards);
        self
    }

    /// Reads time from `clock` instead of the system clock (feature
    /// `test-util`, which provides [`MockClock`](crate::clock::MockClock)).
    ///
    /// The system clock is the processor's time-stamp counter on x86-64
    /// Linux when the kernel's own clock source is `tsc` and the CPU reports
    /// an invariant TSC and `rdtscp` (about 14 ns a read on this project's
    /// machine, against 20 ns for [`Instant::now`]), and [`Instant`]
    /// anywhere else. The counter's rate is measured against
    /// `Instant` once per process, which makes the first cache (or builder)
    /// a process creates take about 2 ms longer to create; lifetimes then
    /// keep time with `Instant` to within about 10 parts per million.
    ///
    /// [`Instant::now`]: std::time::Instant::now
    /// [`Instant`]: std::time::Instant
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder().time_to_idle(Duration::from_secs(5)).clock(clock.clone()).build().unwrap();
    /// cache.insert(1, 1);
    /// clock.advance(Duration::from_secs(4));
    /// assert_eq!(cache.get(&1), Some(1)); // the read slides the deadline
    /// clock.advance(Duration::from_secs(4));
    /// assert_eq!(cache.get(&1), Some(1));
    /// clock.advance(Duration::from_secs(5));
    /// assert_eq!(cache.get(&1), None);
    /// ```
    #[cfg(feature = "test-util")]
    pub fn clock(mut self, clock: crate::clock::MockClock) -> Self {
        self.clock = clock.into();
        self
    }

    /// Checks the settings and builds the cache, starting its
    /// `larder-maintenance` thread.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first setting that is out of range:
    /// [`ZeroShards`](BuildError::ZeroShards) or
    /// [`TooManyShards`](BuildError::TooManyShards) for `num_shards`,
    /// [`ZeroTimeToLive`](BuildError::ZeroTimeToLive),
    /// [`ZeroTimeToIdle`](BuildError::ZeroTimeToIdle),
    /// [`JitterOutOfRange`](BuildError::JitterOutOfRange) for `ttl_jitter`,
    /// [`JitterWithoutLifetime`](BuildError::JitterWithoutLifetime) for a
    /// jitter with nothing to spread, and
    /// [`ExpiryConflict`](BuildError::ExpiryConflict) for `expire_after`
    /// with a time to live or idle.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{BuildError, Cache};
    /// use std::time::Duration;
    /// let err = Cache::<u32, u32>::builder().ttl_jitter(1.0).build().unwrap_err();
    /// assert_eq!(err, BuildError::JitterOutOfRange(1.0));
    /// assert_eq!(err.to_string(), "ttl_jitter is 1, outside 0.0..1.0");
    /// let no_lifetime = Cache::<u32, u32>::builder().ttl_jitter(0.5).build();
    /// assert_eq!(no_lifetime.unwrap_err(), BuildError::JitterWithoutLifetime);
    /// let ttl = Duration::from_secs(60);
    /// assert!(Cache::<u32, u32>::builder().time_to_live(ttl).ttl_jitter(0.5).build().is_ok());
    /// ```
    pub fn build(self) -> Result<Cache<K, V>, BuildError> {
        let shards = self.shard_count()?;
        if self.ttl == Some(Duration::ZERO) {
            return Err(BuildError::ZeroTimeToLive);
        }
        if self.tti == Some(Duration::ZERO) {
            return Err(BuildError::ZeroTimeToIdle);
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(BuildError::JitterOutOfRange(self.jitter));
        }
        if self.jitter > 0.0 && self.ttl.is_none() && self.expiry.is_none() {
            return Err(BuildError::JitterWithoutLifetime);
        }
        if self.expiry.is_some() && (self.ttl.is_some() || self.tti.is_some()) {
            return Err(BuildError::ExpiryConflict);
        }
        let policy = Policy {
            max_capacity: self.max_capacity,
            num_shards: shards,
            weighted: self.weigher.is_some(),
            per_entry_expiry: self.expiry.is_some(),
            ttl: self.ttl,
            tti: self.tti,
            jitter: self.jitter,
        };
        let timing = Timing::new(self.clock, self.ttl, self.tti, self.jitter, self.expiry);
        Ok(Cache::from_parts(crate::cache::Parts {
            shards,
            capacity: self.max_capacity,
            timing,
            weigher: self.weigher,
            listener: self.listener,
            placeholder: self.placeholder,
            policy,
        }))
    }

    /// Splits a builder given a loader into the settings the loading cache
    /// applies itself (time to live and jitter) and a builder for its inner
    /// cache of [`Loaded`] values, with weigher and listener wrapped to see
    /// only present values, and the removals of cached absences left out of
    /// the stats as they are out of the listener's hearing.
    pub(crate) fn into_loading(self) -> Result<LoadingBase<K, V>, BuildError> {
        if self.expiry.is_some() {
            return Err(BuildError::LoaderExpiryConflict);
        }
        if self.ttl == Some(Duration::ZERO) {
            return Err(BuildError::ZeroTimeToLive);
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(BuildError::JitterOutOfRange(self.jitter));
        }
        if self.jitter > 0.0 && self.ttl.is_none() {
            return Err(BuildError::JitterWithoutLifetime);
        }
        let weigher = self.weigher.map(|w| -> Weigher<K, Loaded<V>> {
            Box::new(move |k, l: &Loaded<V>| l.value.as_ref().map_or(1, |v| w(k, v)))
        });
        let listener = self.listener.map(|f| -> Listener<K, Loaded<V>> {
            Box::new(move |k, l: Loaded<V>, cause| {
                if let Some(v) = l.value {
                    f(k, v, cause);
                }
            })
        });
        let inner = CacheBuilder {
            max_capacity: self.max_capacity,
            weigher,
            ttl: None,
            tti: self.tti,
            expiry: None,
            jitter: 0.0,
            listener,
            num_shards: self.num_shards,
            clock: self.clock,
            placeholder: Some(Loaded::is_absence),
        };
        Ok((inner, self.ttl, self.jitter))
    }

    fn shard_count(&self) -> Result<usize, BuildError> {
        match self.num_shards {
            Some(0) => Err(BuildError::ZeroShards),
            Some(n) if n > MAX_SHARDS => Err(BuildError::TooManyShards(n)),
            Some(n) => {
                let within_capacity = 1usize << self.max_capacity.max(1).ilog2().min(16);
                Ok(n.next_power_of_two().min(within_capacity))
            }
            None => Ok(default_shards(self.max_capacity)),
        }
    }
}

/// One shard per [`MIN_SHARD_CAPACITY`] (rounded down to a power of two), at
/// most four per CPU (rounded up to one).
fn default_shards(capacity: u64) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_cpu = (cpus * 4).next_power_of_two();
    let by_capacity = (capacity / MIN_SHARD_CAPACITY).max(1);
    let by_capacity = 1usize << by_capacity.ilog2().min(16);
    by_cpu.min(by_capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder's `Debug` lists every setting, the clock included (it
    /// printed a complete-looking struct without it).
    #[test]
    fn debug_shows_the_clock() {
        let system = format!("{:?}", CacheBuilder::<u32, u32>::default());
        assert!(system.contains("clock: \"system\""), "{system}");
        #[cfg(feature = "test-util")]
        {
            let mock = CacheBuilder::<u32, u32>::default().clock(crate::clock::MockClock::new());
            let mock = format!("{mock:?}");
            assert!(mock.contains("clock: \"mock\""), "{mock}");
        }
    }

    #[test]
    fn shards_given_never_outnumber_the_capacity() {
        let shards = |capacity: u64, n: usize| {
            CacheBuilder::<u32, u32>::default()
                .max_capacity(capacity)
                .num_shards(n)
                .shard_count()
        };
        assert_eq!(shards(3, 4), Ok(2));
        assert_eq!(shards(4, 3), Ok(4));
        assert_eq!(shards(1, 64), Ok(1));
        assert_eq!(shards(0, 64), Ok(1));
        assert_eq!(shards(1_000, 16), Ok(16));
        assert_eq!(shards(u64::MAX, 65_536), Ok(65_536));
        assert_eq!(shards(3, 0), Err(BuildError::ZeroShards));
    }

    #[test]
    fn default_shards_follow_capacity_then_cpus() {
        assert_eq!(default_shards(0), 1);
        assert_eq!(default_shards(1_000), 1);
        assert_eq!(default_shards(1_024), 2);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(default_shards(u64::MAX), (cpus * 4).next_power_of_two());
    }
}
