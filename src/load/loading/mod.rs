//! [`LoadingCache`]: read-through with refresh-ahead, stale-while-revalidate,
//! stale-if-error, early expiry and negative caching.
//!
//! A loading cache wraps a plain [`Cache`] whose values are [`Loaded`]
//! records: the user's value (or a cached "absent") with when it was loaded,
//! when it stops being fresh and how long its load took. The inner cache
//! keeps each record until the end of its last grace window (its hard
//! deadline); everything finer — refresh due, stale, fallback — is decided
//! on each read by [`Freshness::state`](super::fresh::Freshness::state).
//!
//! Loads of one key are single-flight across foreground reads, bulk reads,
//! async reads and background reloads: all go through one [`Flights`] table,
//! so a reader that must wait joins whichever load is running. Background
//! reloads run on the cache's [`Pool`]; a reload replaces the value only if
//! it is still the one the reload was started for (its `stamp`), or if
//! that one expired and was reaped (or was evicted) and no write of the key
//! ended since, so a concurrent `insert` or `invalidate` wins over a slow
//! reload.
//!
//! The methods live in a file per concern: reads and the loads behind them
//! ([`get`]), bulk reads ([`get_many`]), reads that never load ([`peek`]),
//! refresh and reloads ([`refresh`]), removal ([`remove`]); writes, counts
//! and what the loads share stay here, and one value's lifetime given, read
//! or changed by the caller is in [`ttl`](super::ttl).

// rustdoc lists the impl blocks of `LoadingCache` in these modules by the
// modules' names, A to Z, then this file's own: so reads come first.
mod get;
mod get_many;
mod peek;
mod refresh;
mod remove;

use std::{
    borrow::Borrow,
    fmt,
    hash::Hash,
    panic::{RefUnwindSafe, UnwindSafe},
    sync::{Arc, Weak},
    time::Duration,
};

use crate::{
    Cache, CacheStats, Policy, RemovalCause,
    cache::{LoadRecord, Verdict},
    expiry::{NEVER, clock::saturating_nanos, random_bits, unit_random},
    load::{
        Loader,
        flight::{Flight, Flights, LeaderGuard, Outcome},
        fresh::{Freshness, Loaded, State, new_stamp},
        guard::{self, Seen},
        pool::Pool,
        reloading::Reloading,
    },
    maintenance::Awaited,
    notify::Removed,
    shard::{Now, Stripe},
};

/// What the builder hands over, in clock nanoseconds.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) freshness: Freshness,
    pub(crate) ttl: Option<u64>,
    pub(crate) jitter: f64,
    pub(crate) negative_ttl: Option<u64>,
    pub(crate) reload_threads: usize,
    pub(crate) reload_queue: usize,
}

/// A cache that loads missing values by itself through a [`Loader`], and can
/// keep hot values fresh in the background.
///
/// Built with [`CacheBuilder::loader`](crate::CacheBuilder::loader). Reads
/// return `Result<Option<V>, Arc<E>>`: `Ok(Some(v))` for a value, `Ok(None)`
/// when the loader said the key does not exist, and the loader's error
/// (shared by every caller that waited for that load, never cached).
///
/// | setting | a read of a value … |
/// |---|---|
/// | none | … past `time_to_live` waits for a load |
/// | `refresh_after(r)` | … older than `r` returns it and starts one background reload |
/// | `stale_while_revalidate(w)` | … up to `w` past its TTL returns it (a stale hit) and starts one background reload |
/// | `stale_if_error(s)` | … up to `s` past its TTL whose load fails returns it instead of the error |
/// | `early_expiry(β)` | … close to its TTL starts a background reload with rising probability (XFetch) |
/// | `negative_ttl(n)` | … the loader reported absent is answered `None` for `n` |
///
/// `LoadingCache` is a cheap handle (`Clone`, `Send`, `Sync`); its reload
/// threads end when the last handle is dropped. The drop does not wait
/// for a reload under way: it returns at once, the reload's loader runs to
/// its end on its thread (no handle is left to read what it loads), and
/// that thread, and the cache's `larder-maintenance` thread, end when it
/// returns.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use larder::Cache;
///
/// let users = Cache::builder()
///     .max_capacity(10_000)
///     .time_to_live(Duration::from_secs(60))
///     .loader(|id: &u64| -> Result<Option<String>, String> {
///         Ok((*id < 100).then(|| format!("user {id}"))) // your database call
///     })
///     .stale_while_revalidate(Duration::from_secs(10))
///     .negative_ttl(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert_eq!(users.get(&7).unwrap().as_deref(), Some("user 7"));
/// assert_eq!(users.get(&700).unwrap(), None);
/// assert_eq!(users.stats().loads(), 2);
/// ```
pub struct LoadingCache<K, V, E> {
    inner: Arc<LoadingInner<K, V, E>>,
}

impl<K, V, E> Clone for LoadingCache<K, V, E> {
    fn clone(&self) -> Self {
        LoadingCache {
            inner: self.inner.clone(),
        }
    }
}

// As for `Cache`: a panicking loader (foreground, background or batch)
// hands its flight on and leaves the cache usable.
impl<K, V, E> UnwindSafe for LoadingCache<K, V, E>
where
    K: RefUnwindSafe,
    V: RefUnwindSafe,
    E: RefUnwindSafe,
{
}
impl<K, V, E> RefUnwindSafe for LoadingCache<K, V, E>
where
    K: RefUnwindSafe,
    V: RefUnwindSafe,
    E: RefUnwindSafe,
{
}

impl<K, V, E> fmt::Debug for LoadingCache<K, V, E>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadingCache")
            .field("cache", &self.inner.cache)
            .field("freshness", &self.inner.settings.freshness)
            .finish_non_exhaustive()
    }
}

struct LoadingInner<K, V, E> {
    cache: Cache<K, Loaded<V>>,
    loader: Arc<dyn Loader<K, V, Error = E>>,
    flights: Arc<Flights<K, Option<V>>>,
    settings: Settings,
    pool: Option<Pool>,
    /// The values whose background reload is under way.
    reloading: Reloading,
    me: Weak<LoadingInner<K, V, E>>,
}

/// Which entry a [`store`](LoadingInner::store) may replace.
#[derive(Clone, Copy, Debug)]
enum Over {
    /// Only the entry with this stamp (a reload), or no entry if no write
    /// of the key ended since `Seen` was taken: the value it was started
    /// for expired and was reaped, or was evicted, while it loaded (an
    /// invalidation is a write).
    Stamp(u64, Seen),
    /// Whatever is there, if no write of the key ended since `Seen` was
    /// taken (a load; see [`guard`]).
    Unwritten(Seen),
    /// The end of a write that began at `Seen`: whatever is there if no
    /// other write of the key ended since, else the key's entry goes.
    Written(Seen),
    /// The end of a write that changed no store ([`LoadingCache::insert`]):
    /// whatever is there is replaced, and the write is counted, so that no
    /// load under way caches over it. Nothing to keep in step, so two such
    /// writes of a key land as a plain `Cache`'s do, the last one staying
    /// (counted as `Written`, one that overlapped another dropped its key).
    Replacing,
}

impl<K, V, E> Drop for LoadingInner<K, V, E> {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.stop();
        }
    }
}

/// What a read found before any load.
enum Read<V> {
    /// The answer.
    Done(Option<V>),
    /// A load is needed; the value to fall back on if it fails, if any.
    Load(Option<Fallback<V>>),
}

/// A value inside its stale-if-error window, for a load that fails.
#[derive(Clone)]
struct Fallback<V> {
    value: Option<V>,
    /// The end of the window, in clock nanoseconds: a load that fails
    /// later returns its error.
    until: u64,
}

impl<K, V, E> LoadingCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    pub(crate) fn from_parts(
        cache: Cache<K, Loaded<V>>,
        loader: Arc<dyn Loader<K, V, Error = E>>,
        settings: Settings,
    ) -> Self {
        let pool = settings
            .freshness
            .reloads_in_background()
            .then(|| Pool::new(settings.reload_threads, settings.reload_queue));
        let inner = Arc::new_cyclic(|me| LoadingInner {
            cache,
            loader,
            flights: Arc::default(),
            settings,
            pool,
            reloading: Reloading::default(),
            me: me.clone(),
        });
        LoadingCache { inner }
    }

    /// Stores `value` under `key` as if just loaded (fresh for the time to
    /// live), replacing any cached value and outdating any load or reload
    /// under way (its value is not cached over this one). Of two inserts of
    /// a key that overlap, the last to land stays, as in a plain `Cache`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|_: &u8| Ok::<_, String>(Some(0))).build().unwrap();
    /// cache.insert(1, 100);
    /// assert_eq!(cache.get(&1).unwrap(), Some(100));
    /// assert_eq!(cache.stats().loads(), 0);
    /// ```
    pub fn insert(&self, key: K, value: V) {
        self.insert_for(key, value, None);
    }

    /// [`insert`](Self::insert), fresh for `ttl` (`None`: the cache's
    /// time to live).
    pub(super) fn insert_for(&self, key: K, value: V, ttl: Option<Duration>) {
        let _: Result<(), std::convert::Infallible> = self.write_over(
            key,
            RemovalCause::Replaced,
            ttl,
            |_| Over::Replacing,
            |_| Ok((Some(value), ())),
        );
    }

    /// The time `key`'s value is fresh for, if it is (see
    /// [`expires_in`](Self::expires_in)).
    pub(super) fn fresh_for<Q>(&self, key: &Q) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner
            .cache
            .expires_in_by(key, |entry, now| entry.fresh_until(|| now.get()))
    }

    /// Gives `key`'s fresh value a new time to live, `ttl` from now
    /// (`None`: none), and its entry that plus the grace windows; false if
    /// it has no fresh value (see [`expire_in`](Self::expire_in)).
    pub(super) fn retime<Q>(&self, key: &Q, ttl: Option<Duration>) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let ttl = ttl.map(|ttl| saturating_nanos(ttl.as_nanos()));
        let grace = self.inner.settings.freshness.grace();
        self.inner.cache.retime_with(key, |now, entry| {
            let lifetime = entry.retime(now, ttl, grace)?;
            Some(lifetime.map(Duration::from_nanos))
        })
    }

    /// Runs `write` (a change to the store, or queuing one) as a write of
    /// `key`, then caches the value it returns, or drops the cached value
    /// if it returns `None`, fails or panics, or if caching its value panics
    /// (a weigher or expiry hook; a failed store call may still have changed
    /// the store: a timeout after the commit). If another
    /// write of the key ended while this one ran, the key is dropped from
    /// the cache instead, so that the next read loads the store's own
    /// value; what a load that began before this write ended read never
    /// stays cached past that end (see [`guard`]). `write` is
    /// given the write's order among the writes of `key` ([`Seen::order`]).
    ///
    /// The listener hears a cached value that `write` returning `None`
    /// drops with cause `dropped`: `Explicit` for a delete, `Replaced` for
    /// a write-around's put (a new value was written for the key, as a
    /// write-through's put that caches it replaces it). A write that fails
    /// or panics drops it as `Explicit`, as does another write's overlap;
    /// one already expired goes as `Expired`.
    ///
    /// The value is fresh for `ttl`, exactly, or for the cache's (jittered)
    /// time to live if `None`.
    pub(crate) fn write<R, F>(
        &self,
        key: K,
        dropped: RemovalCause,
        ttl: Option<Duration>,
        write: impl FnOnce(u32) -> Result<(Option<V>, R), F>,
    ) -> Result<R, F> {
        self.write_over(key, dropped, ttl, Over::Written, write)
    }

    /// [`write`](Self::write), its value's end stored as `over` says, given
    /// the write's start.
    fn write_over<R, F>(
        &self,
        key: K,
        dropped: RemovalCause,
        ttl: Option<Duration>,
        over: impl FnOnce(Seen) -> Over,
        write: impl FnOnce(u32) -> Result<(Option<V>, R), F>,
    ) -> Result<R, F> {
        let inner = &self.inner;
        let seen = guard::seen(&inner.cache, &key);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(seen.order())));
        match outcome {
            Ok(Ok((Some(value), result))) => {
                // A weigher or expiry hook that panics on the value leaves it
                // uncached, yet the change was made: the write then ends as a
                // failed one does, with a copy of the key kept for that.
                let unwound = inner.cache.insert_runs_user_code().then(|| key.clone());
                let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let over = over(seen);
                    let ttl = ttl.map(|ttl| saturating_nanos(ttl.as_nanos()));
                    let removed = &mut inner.cache.delivery();
                    inner.store(key, Some(value), ttl, 0, over, removed)
                }));
                if let Err(panic) = stored {
                    if let Some(key) = unwound {
                        inner.remove_written(&key, RemovalCause::Explicit);
                    }
                    std::panic::resume_unwind(panic)
                }
                Ok(result)
            }
            Ok(Ok((None, result))) => {
                inner.remove_written(&key, dropped);
                Ok(result)
            }
            Ok(Err(e)) => {
                inner.remove_written(&key, RemovalCause::Explicit);
                Err(e)
            }
            Err(panic) => {
                inner.remove_written(&key, RemovalCause::Explicit);
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Number of cached entries, cached "absent" answers and values kept
    /// for a grace window included, and, as [`Cache::entry_count`] counts
    /// them, expired ones not yet reaped (call
    /// [`run_pending_tasks`](Self::run_pending_tasks) first for an exact
    /// count).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::clock::MockClock;
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = larder::Cache::builder()
    ///     .time_to_live(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .build()
    ///     .unwrap();
    /// cache.get(&1).unwrap();
    /// assert_eq!(cache.entry_count(), 1);
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(cache.peek(&1), None);
    /// assert_eq!(cache.entry_count(), 1); // expired, not yet reaped
    /// cache.run_pending_tasks();
    /// assert_eq!(cache.entry_count(), 0);
    /// ```
    pub fn entry_count(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Total weight of the entries, as [`Cache::weighted_size`] counts it:
    /// a value weighs what the weigher says (1 without one), a cached
    /// absence 1.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .weigher(|_: &u8, v: &String| v.len() as u32)
    ///     .loader(|k: &u8| Ok::<_, String>(Some("x".repeat(usize::from(*k)))))
    ///     .build()
    ///     .unwrap();
    /// cache.get(&40).unwrap();
    /// cache.get(&2).unwrap();
    /// assert_eq!(cache.weighted_size(), 42);
    /// ```
    pub fn weighted_size(&self) -> u64 {
        self.inner.cache.weighted_size()
    }

    /// Does now what the background threads would do soon: waits for every
    /// background reload queued before the call to finish (not those queued
    /// since, so it returns under steady reload traffic too), then reaps
    /// expired entries as [`Cache::run_pending_tasks`] does. Tests use it to
    /// make reloads deterministic. A queued reload that a read took over
    /// (see [`refresh`](Self::refresh)) is that read's load, which the read
    /// itself waits for: this does not.
    ///
    /// Called from a loader (a read's, a reload's or a batch's, of any
    /// cache), or from the weigher as it weighs what a loader returned, it
    /// does not wait for reloads: a reload's loader may be reading the
    /// very key being loaded, and the two would wait for each other. Nor
    /// does it on a reload thread, where it would wait for itself. There
    /// it reaps what is expired without waiting for other passes, as
    /// [`Cache::run_pending_tasks`] does. Called from a
    /// listener run by the caching of a loaded value (a load or reload
    /// whose value evicts to make room), it waits like any caller: that
    /// listener runs only once the load's waiters have the value, so a
    /// reload reading the key is not waiting for this thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .refresh_after(Duration::from_millis(1))
    ///     .build()
    ///     .unwrap();
    /// cache.get(&1).unwrap();
    /// std::thread::sleep(Duration::from_millis(2));
    /// cache.get(&1).unwrap(); // returns the value, starts a reload
    /// cache.run_pending_tasks();
    /// assert_eq!(cache.stats().refreshes(), 1);
    /// ```
    pub fn run_pending_tasks(&self) {
        if let Some(pool) = self.inner.pool.as_ref().filter(|_| !Awaited::here_now()) {
            pool.settle();
        }
        self.inner.cache.run_pending_tasks();
    }

    /// A snapshot of the counters: hits, misses, loads and load time,
    /// refreshes, stale hits, skipped refreshes, removals (of values, as
    /// the eviction listener hears them: a cached absence that leaves is
    /// not counted, see [`negative_ttl`](crate::LoadingCacheBuilder::negative_ttl)).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// cache.get(&1).unwrap();
    /// let s = cache.stats();
    /// assert_eq!((s.hits(), s.misses(), s.loads()), (1, 1, 1));
    /// ```
    pub fn stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// The settings this cache was built with (see
    /// [`Cache::policy`](crate::Cache::policy)); the time to live and
    /// jitter are the ones its values get.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .max_capacity(100)
    ///     .time_to_live(Duration::from_secs(30))
    ///     .ttl_jitter(0.2)
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .build()
    ///     .unwrap();
    /// let policy = cache.policy();
    /// assert_eq!(policy.max_capacity(), Some(100));
    /// assert_eq!(policy.time_to_live(), Some(Duration::from_secs(30)));
    /// assert_eq!(policy.ttl_jitter(), 0.2);
    /// ```
    pub fn policy(&self) -> Policy {
        let settings = &self.inner.settings;
        self.inner
            .cache
            .policy()
            .with_lifetime(settings.ttl.map(Duration::from_nanos), settings.jitter)
    }
}

impl<K, V, E> LoadingInner<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Looks `key` up, counts the hit or miss, and starts a background
    /// reload if one is due.
    fn read<Q>(&self, key: &Q) -> Read<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (Some(entry), seen) = self.cache.get_counting_hit(key) else {
            self.cache.record_miss();
            return Read::Load(None);
        };
        let now = match seen {
            Some(now) => now,
            None if self.settings.freshness.needs_clock(&entry) => self.cache.now(),
            None => 0, // not looked at
        };
        let state = self.settings.freshness.state(&entry, now, random_bits);
        if !matches!(state, State::Fresh | State::RefreshDue | State::Stale) {
            self.cache.retract_hit();
        }
        match state {
            State::Fresh => Read::Done(entry.value),
            State::RefreshDue => {
                self.reload_unless_under_way(key, entry.stamp);
                Read::Done(entry.value)
            }
            State::Stale => {
                self.cache.record_stale_hit();
                self.reload_unless_under_way(key, entry.stamp);
                Read::Done(entry.value)
            }
            State::Fallback => Read::Load(Some(Fallback {
                value: entry.value,
                until: entry
                    .expires_at
                    .saturating_add(self.settings.freshness.stale_if_error),
            })),
            State::Expired => Read::Load(None),
        }
    }

    /// A fresh value of `guard`'s key, if a load finished between this
    /// caller's miss and its lead: the flight then ends with it, unloaded.
    fn loaded_meanwhile(&self, guard: &LeaderGuard<K, Option<V>>) -> Option<Option<V>> {
        // Judged under the lock, as `peek` judges it.
        self.cache.peek_by(guard.key(), |entry, now| {
            entry.unexpired_at(now.get()).then(|| entry.value.clone())
        })
    }

    /// Stores a loaded value for the flight `guard` leads and closes the
    /// flight, then delivers what the store removed (evicted to make room,
    /// or a key found absent). Not before: the listener runs on this thread
    /// and may call back into the cache, and whatever a
    /// `run_pending_tasks` there waits for (another thread's pass, a
    /// queued reload) may be waiting for this very load. If a write of the
    /// key ended since the load began (it marked the flight), the waiters
    /// load again rather than take a value read before it
    /// ([`LeaderGuard::finish_unless_stale`]).
    fn fill(
        &self,
        guard: LeaderGuard<K, Option<V>>,
        key: K,
        value: Option<V>,
        took: u64,
        over: Over,
    ) {
        let mut removed = self.cache.delivery();
        // Bound after `removed`, so dropped before it when the store
        // unwinds (a weigher's panic): the flight is abandoned first.
        let guard = guard;
        {
            // The weigher and the expiry hooks run here, user code that
            // waiters of this flight are waiting for.
            let _awaited = Awaited::here();
            self.store(key, value.clone(), None, took, over, &mut removed);
        }
        // A write of the key since the load began marked its flight (and
        // bumped its stripe); a write of another key of the stripe did not.
        guard.finish_unless_stale(Outcome::Loaded(value), |_, written| written);
    }

    /// A waiter's answer from the outcome of the flight it waited for;
    /// `None` if the leader gave up and this caller must try again.
    fn settle(
        &self,
        outcome: Outcome<Option<V>>,
        fallback: &Option<Fallback<V>>,
    ) -> Option<Result<Option<V>, Arc<E>>> {
        match outcome {
            Outcome::Loaded(v) => Some(Ok(v)),
            Outcome::Failed(e) => {
                let e = e
                    .downcast::<E>()
                    .expect("every load of a loading cache fails with its loader's error type");
                Some(self.fall_back(fallback.clone(), e))
            }
            Outcome::Abandoned => None,
        }
    }

    /// The stale value instead of `e`, if stale-if-error kept one and its
    /// window is still open now, when the load has failed (a load may
    /// outlast it).
    fn fall_back(&self, fallback: Option<Fallback<V>>, e: Arc<E>) -> Result<Option<V>, Arc<E>> {
        match fallback {
            Some(stale) if self.cache.now() < stale.until => {
                self.cache.record_stale_hit();
                Ok(stale.value)
            }
            _ => Err(e),
        }
    }

    /// Runs a loader call, recording it in the stats (as a failure if it
    /// panics) and measuring it on the cache's clock for early expiry.
    fn timed<T>(&self, load: impl FnOnce() -> Result<T, E>) -> (Result<T, E>, u64) {
        let record = LoadRecord::start(self.cache.load_counters());
        let started = self.cache.now();
        let result = {
            let _awaited = Awaited::here();
            load()
        };
        record.finish(result.is_ok());
        (result, self.cache.now().saturating_sub(started))
    }

    /// A load's fill of `key`, begun at `seen`: cached unless a write of
    /// the key ended since, under the shard lock. No write ended on the
    /// key's stripe at all, or the key's flight (which this load leads) was
    /// not marked by one: writes of other keys of the stripe do not count
    /// (see [`guard`]).
    fn load_verdict<Q>(&self, key: &Q, seen: Seen, stripe: &Stripe<'_>) -> Verdict
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match seen.load_verdict(stripe) {
            Verdict::Insert => Verdict::Insert,
            _ if self.flights.is_written(key) => Verdict::Skip,
            _ => Verdict::Insert,
        }
    }

    /// The end of a write of `key` that leaves nothing to cache, under the
    /// shard lock: counts it, and marks a load of the key under way as
    /// written (see [`guard`]).
    pub(super) fn write_removes<Q>(&self, key: &Q, stripe: &Stripe<'_>) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.flights.written(key);
        guard::write_removes(stripe)
    }

    /// A load found `key` absent, and absent keys are not cached: drops
    /// what the cache held for the key, as `over` allows (not a write that
    /// ended meanwhile).
    fn drop_absent(&self, key: &K, over: Over, removed: &mut Removed<K, Loaded<V>>) {
        match over {
            Over::Stamp(stamp, _) => {
                let doomed =
                    |e: Option<&Loaded<V>>, _: Stripe<'_>| e.is_some_and(|e| e.stamp == stamp);
                self.cache.remove_if(key, doomed, removed);
            }
            Over::Unwritten(seen) => {
                let doomed = |_: Option<&Loaded<V>>, stripe: Stripe<'_>| {
                    self.load_verdict(key, seen, &stripe) == Verdict::Insert
                };
                self.cache.remove_if(key, doomed, removed);
            }
            Over::Written(_) | Over::Replacing => {
                let doomed =
                    |_: Option<&Loaded<V>>, stripe: Stripe<'_>| self.write_removes(key, &stripe);
                self.cache.remove_if(key, doomed, removed);
            }
        }
    }

    /// Stores a loaded or written value (or a cached "absent") with a fresh
    /// stamp, if `over` allows: a reload replaces only the entry it was
    /// started for (or fills the key if that entry was reaped or evicted
    /// and no write ended since), so it never overwrites a newer write or
    /// resurrects an invalidated key; a load stores only if no write of the key ended since
    /// it began, and a write's end stores only if no other write of the key
    /// ended since it began (dropping the key otherwise). Returns whether it
    /// stored. What it removes goes into `removed`, for the caller to
    /// deliver. A value is fresh for `ttl` nanoseconds, exactly, if given
    /// (`insert_with_ttl`), else for the cache's time to live, jittered.
    fn store(
        &self,
        key: K,
        value: Option<V>,
        ttl: Option<u64>,
        load_nanos: u64,
        over: Over,
        removed: &mut Removed<K, Loaded<V>>,
    ) -> bool {
        let s = &self.settings;
        let lifetime = match (&value, ttl, s.negative_ttl) {
            (Some(_), Some(ttl), _) => Some(ttl),
            (Some(_), None, _) => s.ttl.map(|ttl| jittered(ttl, s.jitter)),
            (None, _, Some(negative)) => Some(negative),
            (None, _, None) => {
                self.drop_absent(&key, over, removed);
                return false;
            }
        };
        let grace = if value.is_some() {
            s.freshness.grace()
        } else {
            0
        };
        let entry = Loaded {
            value,
            loaded_at: 0,
            expires_at: NEVER,
            load_nanos,
            stamp: new_stamp(),
        };
        let hard = lifetime.map(|l| Duration::from_nanos(l.saturating_add(grace)));
        let refresh = s.freshness.refresh_after.is_some();
        // The record's times are set under the shard's lock, at the time
        // the entry's deadline counts from: read before it, a write that
        // waited for the lock (or for the weigher) gave its value a time
        // to live that could have run out by the time it landed, short of
        // its entry's. `loaded_at` matters only to refresh, `expires_at`
        // only with a lifetime.
        let stamp_times = |entry: &mut Loaded<V>, now: &mut Now<'_>| {
            if lifetime.is_some() || refresh {
                let now = now.get();
                entry.loaded_at = now;
                entry.expires_at = Loaded::<V>::expiry(now, lifetime);
            }
            hard
        };
        match over {
            Over::Stamp(stamp, seen) => {
                let decide = |key: &K, current: Option<&Loaded<V>>, s: Stripe<'_>| match current {
                    Some(c) if c.stamp == stamp => Verdict::Insert,
                    Some(_) => Verdict::Skip,
                    None => self.load_verdict(key, seen, &s),
                };
                self.cache
                    .insert_stamped_if(key, entry, stamp_times, decide, removed)
            }
            Over::Unwritten(seen) => {
                let decide = |key: &K, _: Option<&Loaded<V>>, s: Stripe<'_>| {
                    self.load_verdict(key, seen, &s)
                };
                self.cache
                    .insert_stamped_if(key, entry, stamp_times, decide, removed)
            }
            Over::Written(seen) => {
                let decide = |key: &K, _: Option<&Loaded<V>>, s: Stripe<'_>| {
                    self.flights.written(key);
                    seen.write_verdict(&s)
                };
                self.cache
                    .insert_stamped_if(key, entry, stamp_times, decide, removed)
            }
            Over::Replacing => {
                let decide = |key: &K, _: Option<&Loaded<V>>, s: Stripe<'_>| {
                    self.flights.written(key);
                    guard::write_replaces(&s)
                };
                self.cache
                    .insert_stamped_if(key, entry, stamp_times, decide, removed)
            }
        }
    }
}

/// Whether a read that must wait for `flight` loads by itself instead: the
/// read runs inside a loader (of any cache), and a bulk read on another
/// thread leads the flight. The batch holds all its keys until its loader
/// has answered every one, and that loader may be reading a key whose own
/// load is this very read's loader: waiting would close a cycle that the
/// keys' loaders alone would not (2 reads 3, 3 reads 1, and a batch of 1
/// and 2). A read outside any loader leads no load, so it waits.
///
/// # Panics
///
/// If this thread leads the flight: a batch's loader reading a key of
/// its own batch (see [`Flight::wait`]).
fn waits_for_batch<V: Clone>(flight: &Flight<Option<V>>) -> bool {
    Awaited::here_now() && flight.batch_elsewhere()
}

/// `nanos` spread by a random factor in `1 ± jitter`.
fn jittered(nanos: u64, jitter: f64) -> u64 {
    if jitter == 0.0 {
        return nanos;
    }
    let factor = 1.0 + jitter * (2.0 * unit_random() - 1.0);
    ((nanos as f64 * factor) as u64).max(1)
}

#[cfg(test)]
mod tests;
