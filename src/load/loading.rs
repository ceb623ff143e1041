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

use std::{
    borrow::Borrow,
    cell::Cell,
    collections::{HashMap, HashSet},
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
        flight::{Flight, Flights, Leader, LeaderGuard, Outcome, Role},
        fresh::{Freshness, Loaded, State, new_stamp},
        guard::{self, Seen},
        pool::{Job, Pool},
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
    /// A function that invalidates a key of this cache, as
    /// [`invalidate`](Self::invalidate) does, while the cache lives, without
    /// keeping it alive: for the write-behind flusher, which the cache owns.
    pub(crate) fn invalidator(&self) -> impl Fn(&K) + Send + Sync + 'static {
        let cache = Arc::downgrade(&self.inner);
        move |key| {
            if let Some(inner) = cache.upgrade() {
                inner.remove_written(key, RemovalCause::Explicit);
            }
        }
    }

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

    /// The value for `key`, loading it if it is missing or expired.
    ///
    /// Counts a hit when a usable answer was found (a value fresh, due for
    /// refresh, or stale inside the stale-while-revalidate window, or an
    /// absence cached by `negative_ttl`), a miss when it had to load or
    /// wait for a load. Only one load per key runs at a time; other callers
    /// wait for it and share its result (but a loader reading a key that a
    /// [`get_many`](Self::get_many) on another thread is loading loads it
    /// itself: see there).
    ///
    /// # Errors
    ///
    /// The loader's error, shared as `Arc<E>` with every caller that waited
    /// for the same load. Errors are never cached. With `stale_if_error`, a
    /// failed load of a value still inside that window returns the old value
    /// instead.
    ///
    /// # Panics
    ///
    /// If the loader panics, on the caller whose read ran it (one waiting
    /// caller then loads instead). If the loader reads its own key from this
    /// cache (that would wait for itself).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u32| if *k == 0 { Err("no zero".to_string()) } else { Ok(Some(k * 10)) })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get(&3).unwrap(), Some(30));
    /// assert_eq!(*cache.get(&0).unwrap_err(), "no zero");
    ///
    /// // Any borrowed form of the key, as for `Cache::get`.
    /// let names = larder::Cache::builder()
    ///     .loader(|k: &String| Ok::<_, String>(Some(k.len())))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(names.get("four").unwrap(), Some(4));
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, Arc<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.inner.read(key) {
            Read::Done(v) => Ok(v),
            Read::Load(fallback) => self.inner.load(&key.to_owned(), fallback),
        }
    }

    /// The async form of [`get`](Self::get). Waiting for another caller's
    /// load never blocks the executor's thread; if this call leads the load,
    /// the (synchronous) loader runs on the calling thread. No runtime is
    /// required: it works on any executor.
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    ///
    /// # Panics
    ///
    /// As for [`get`](Self::get): a loader that reads its own key panics
    /// here too, rather than leave the task waiting for itself.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u32| Ok::<_, String>(Some(k + 1)))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(block_on(cache.get_async(&1)).unwrap(), Some(2));
    /// ```
    pub async fn get_async<Q>(&self, key: &Q) -> Result<Option<V>, Arc<E>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.inner.read(key) {
            Read::Done(v) => Ok(v),
            Read::Load(fallback) => self.inner.load_async(&key.to_owned(), fallback).await,
        }
    }

    /// The values for `keys`, loading every missing one with a single
    /// [`Loader::load_many`] call. Keys another caller is already loading are
    /// not loaded again: this call waits for those loads. Keys the loader
    /// reports absent are left out of the map.
    ///
    /// # Errors
    ///
    /// The error of the batch load (or of a load this call waited for). Keys
    /// with a value inside the `stale_if_error` window are answered with it
    /// instead; the error is returned only if some key has none.
    ///
    /// # Panics
    ///
    /// If the loader panics, on this caller (one caller waiting for each
    /// key of the batch then loads it instead). If the loader, while it
    /// loads the batch, reads from this cache any key this call is loading,
    /// not only the one it is answering: the batch is loading them all, so
    /// the read would wait for itself. (One key at a time, through
    /// [`get`](Self::get), such a read of another key is fine.)
    ///
    /// # Concurrent calls on the same key
    ///
    /// A read of a key this call is loading waits for the batch, except
    /// a read made by a loader (of any cache) on another thread: that one
    /// loads the key itself, caching nothing, because the batch's loader
    /// may be waiting for that very loader through another key it reads
    /// (key 2 reading 3, 3's loader reading 1, a batch of 1 and 2), and
    /// neither could end.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u32| Ok::<_, String>((*k % 2 == 0).then_some(*k)))
    ///     .build()
    ///     .unwrap();
    /// let found = cache.get_many([1, 2, 3, 4]).unwrap();
    /// assert_eq!(found.len(), 2);
    /// assert_eq!(found[&4], 4);
    /// ```
    pub fn get_many(&self, keys: impl IntoIterator<Item = K>) -> Result<HashMap<K, V>, Arc<E>> {
        let mut batch = self.inner.begin_many(keys);
        for (key, flight, fallback) in std::mem::take(&mut batch.waits) {
            // The batch falls back on stale values itself (see `Batch`).
            let result = if waits_for_batch(&flight) {
                self.inner.load_unshared(&key, None)
            } else {
                match self.inner.settle(flight.wait(), &None) {
                    Some(result) => result,
                    None => self.inner.load(&key, None),
                }
            };
            batch.add_or_fall_back(key, result, fallback, || self.inner.cache.now());
        }
        self.inner.end_many(batch)
    }

    /// The async form of [`get_many`](Self::get_many): the batch call for
    /// the keys this call loads runs on the calling thread; waiting for keys
    /// other callers are loading never blocks it.
    ///
    /// # Errors
    ///
    /// As for [`get_many`](Self::get_many).
    ///
    /// # Panics
    ///
    /// As for [`get_many`](Self::get_many).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u32| Ok::<_, String>(Some(k * 2)))
    ///     .build()
    ///     .unwrap();
    /// let found = block_on(cache.get_many_async([1, 2])).unwrap();
    /// assert_eq!((found[&1], found[&2]), (2, 4));
    /// ```
    pub async fn get_many_async(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<HashMap<K, V>, Arc<E>> {
        let mut batch = self.inner.begin_many(keys);
        for (key, flight, fallback) in std::mem::take(&mut batch.waits) {
            let result = if waits_for_batch(&flight) {
                self.inner.load_unshared(&key, None)
            } else {
                match self.inner.settle(flight.wait_async().await, &None) {
                    Some(result) => result,
                    None => self.inner.load_async(&key, None).await,
                }
            };
            batch.add_or_fall_back(key, result, fallback, || self.inner.cache.now());
        }
        self.inner.end_many(batch)
    }

    /// The value for `key` if it is cached and fresh (or due for refresh),
    /// without loading, counting or starting a refresh. `None` for a missing,
    /// stale or absent-cached key.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// assert_eq!(cache.peek(&1), None);
    /// cache.get(&1).unwrap();
    /// assert_eq!(cache.peek(&1), Some(1));
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Judged under the shard's lock, at the time the entry is found
        // live: read after the unlock, the time could be judging a copy
        // of a record that `expire_in` has since moved on (a value fresh
        // all along reported gone).
        self.inner.cache.peek_by(key, |entry, now| {
            entry.fresh_until(|| now.get())?;
            entry.value.clone()
        })
    }

    /// Every key with a value [`peek`](Self::peek) would return, with
    /// that value: cached, fresh or due for refresh (not stale, not an
    /// absence cached by negative caching). Like `peek` it loads, counts and
    /// refreshes nothing. Entries are listed as [`Cache::iter`] lists
    /// them: one shard at a time, with no lock held between items.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// cache.insert(2, 20);
    /// let mut entries: Vec<(u8, u8)> = cache.iter().collect();
    /// entries.sort();
    /// assert_eq!(entries, [(1, 1), (2, 20)]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        let mut listed = self.inner.cache.iter();
        std::iter::from_fn(move || {
            loop {
                let (key, entry) = listed.next()?;
                // Judged at the time its shard was copied, as the inner
                // cache judged the entry live: a later reading would judge
                // the copy of a record `expire_in` may have moved on since,
                // and skip a value fresh all along.
                let taken_at = listed.taken_at();
                if entry.fresh_until(|| taken_at).is_some() {
                    if let Some(value) = entry.value {
                        return Some((key, value));
                    }
                }
            }
        })
    }

    /// Stores `value` under `key` as if just loaded (fresh for the time to
    /// live), replacing any cached value and outdating any reload under way.
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
        let _: Result<(), std::convert::Infallible> =
            self.write(key, RemovalCause::Replaced, ttl, |_| Ok((Some(value), ())));
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
                    let over = Over::Written(seen);
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

    /// Starts a background reload of `key` now, whatever its age (on the
    /// calling thread if the cache has no reload threads). `key` may be any
    /// borrowed form of the key type, as for [`get`](Self::get); the reload
    /// takes an owned copy. Returns false if
    /// the reload was skipped: the queue was full, or a load of `key` was
    /// already running.
    ///
    /// If a read needs the value before a reload thread gets to it, the
    /// read loads it at once itself (an ordinary load, in
    /// [`loads`](crate::CacheStats::loads)) and the queued reload then does
    /// nothing (it is not counted in `refreshes`).
    ///
    /// # Panics
    ///
    /// If the loader panics while the reload runs on the calling thread:
    /// on a cache with no reload threads (none of `refresh_after`,
    /// `stale_while_revalidate` or `early_expiry` set). The cached value
    /// stays. On a reload thread the panic is contained and counted as a
    /// failed load.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// assert!(cache.refresh(&1));
    /// cache.run_pending_tasks();
    /// assert_eq!(cache.stats().loads(), 2);
    ///
    /// // No reload threads: the reload runs here, and so does its panic.
    /// let flaky = larder::Cache::builder()
    ///     .loader(|k: &u8| if *k == 0 { panic!("store bug") } else { Ok::<_, String>(Some(*k)) })
    ///     .build()
    ///     .unwrap();
    /// let panicked = std::panic::catch_unwind(|| flaky.refresh(&0));
    /// assert!(panicked.is_err());
    /// assert_eq!(flaky.stats().load_failures(), 1);
    /// assert_eq!(flaky.get(&2).unwrap(), Some(2)); // still usable
    /// ```
    pub fn refresh<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let stamp = self.inner.cache.peek(key).map(|e| e.stamp);
        self.inner.reload(&key.to_owned(), stamp)
    }

    /// Removes `key`'s value; the next read loads it again.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// cache.invalidate(&1);
    /// assert_eq!(cache.peek(&1), None);
    /// ```
    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove_written(key, RemovalCause::Explicit);
    }

    /// [`invalidate`](Self::invalidate), returning the value
    /// [`peek`](Self::peek) would have: `None` if the key held nothing, a
    /// stale value or a cached absence (each removed all the same). As
    /// with `invalidate`, a load of the key under way does not cache the
    /// value it read before.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// assert_eq!(cache.remove(&1), Some(1));
    /// assert_eq!(cache.remove(&1), None);
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut held = None;
        let doomed = |entry: Option<&Loaded<V>>, stripe: Stripe<'_>| {
            // Judged here, under the lock, as the value leaves: the time
            // read once this call returns comes after the listener (user
            // code, which may take long) heard of the removal.
            let now = || self.inner.cache.now();
            held = entry
                .filter(|e| e.fresh_until(now).is_some())
                .and_then(|e| e.value.clone());
            guard::write_removes(&stripe)
        };
        let live = self
            .inner
            .cache
            .remove_if(key, doomed, &mut self.inner.cache.delivery());
        // An entry the inner cache holds past its deadline (its time to
        // idle, say) is expired however fresh its record says it is.
        held.filter(|_| live)
    }

    /// Removes every value for which `predicate` returns true (cached
    /// absences are kept). The predicate runs with no lock held, on the
    /// values [`iter`](Self::iter) lists and on the values past their time
    /// to live that a read may still return (inside the
    /// `stale_while_revalidate` window, or kept by `stale_if_error` for a
    /// failed load), so no read returns a value it approved; each removal is an
    /// [`invalidate`](Self::invalidate), so a load of the key under way does
    /// not cache the value it read before it. A key written between its
    /// test and its removal (by another thread, a reload, or the predicate
    /// itself) is tested again with the value it holds then, up to 8 times
    /// in all; after that it is removed whatever it holds, as
    /// [`Cache::invalidate_entries_if`] does with a shard written while
    /// tested.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// for k in 0..10 { cache.get(&k).unwrap(); }
    /// cache.invalidate_entries_if(|_, v| v % 2 == 0);
    /// assert_eq!((cache.contains_key(&3), cache.contains_key(&4)), (true, false));
    /// ```
    pub fn invalidate_entries_if(&self, predicate: impl Fn(&K, &V) -> bool) {
        for (key, entry) in self.inner.cache.iter() {
            self.inner.invalidate_if(&key, entry, &predicate);
        }
    }

    /// True if [`peek`](Self::peek) would return a value: no load, count or
    /// refresh. False for a cached absence (`negative_ttl`) and a stale value.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u8| Ok::<_, String>((*k < 10).then_some(*k)))
    ///     .negative_ttl(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// assert!(!cache.contains_key(&1)); // never loads
    /// cache.get(&1).unwrap();
    /// assert!(cache.contains_key(&1));
    /// assert_eq!(cache.get(&99).unwrap(), None); // an absence, cached
    /// assert!(!cache.contains_key(&99));
    /// assert_eq!(cache.entry_count(), 2);
    /// assert_eq!(cache.stats().loads(), 2);
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek(key).is_some()
    }

    /// Removes every value.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// cache.invalidate_all();
    /// assert_eq!(cache.entry_count(), 0);
    /// ```
    pub fn invalidate_all(&self) {
        self.inner.cache.invalidate_all();
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
        let (Some(entry), seen) = self.cache.get_uncounted(key) else {
            self.cache.record_lookup(false);
            return Read::Load(None);
        };
        let now = match seen {
            Some(now) => now,
            None if self.settings.freshness.needs_clock(&entry) => self.cache.now(),
            None => 0, // not looked at
        };
        let state = self.settings.freshness.state(&entry, now, random_bits);
        self.cache.record_lookup(matches!(
            state,
            State::Fresh | State::RefreshDue | State::Stale
        ));
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

    /// Loads `key` in the foreground, or waits for the load under way.
    fn load(&self, key: &K, fallback: Option<Fallback<V>>) -> Result<Option<V>, Arc<E>> {
        loop {
            let flight = match self.flights.begin(key, Leader::here()) {
                Role::Leader(guard) => return self.lead(guard, fallback),
                // A reload still waiting for a worker: load now instead.
                Role::Waiter(flight) => match self.flights.take_queued(key, &flight, false) {
                    Some(guard) => return self.lead(guard, fallback),
                    None => flight,
                },
            };
            if waits_for_batch(&flight) {
                return self.load_unshared(key, fallback);
            }
            if let Some(result) = self.settle(flight.wait(), &fallback) {
                return result;
            }
        }
    }

    /// Loads `key` on this thread, neither joining nor leading its flight,
    /// and caches nothing: for a loader's read of a key that a bulk read
    /// on another thread is loading (see [`waits_for_batch`]). The batch
    /// caches its own value; this one only answers the read.
    ///
    /// # Panics
    ///
    /// If loads of this kind nest more than [`UNSHARED_DEPTH`] deep on
    /// this thread: loaders that read each other's keys in a cycle, which
    /// would otherwise load for ever.
    fn load_unshared(&self, key: &K, fallback: Option<Fallback<V>>) -> Result<Option<V>, Arc<E>> {
        thread_local! {
            /// How many [`load_unshared`] calls this thread is inside.
            static UNSHARED: Cell<usize> = const { Cell::new(0) };
        }
        /// Counts this call out however the load ends.
        struct Nested;
        impl Drop for Nested {
            fn drop(&mut self) {
                UNSHARED.with(|u| u.set(u.get() - 1));
            }
        }
        let depth = UNSHARED.with(|u| {
            u.set(u.get() + 1);
            u.get()
        });
        let _nested = Nested;
        assert!(
            depth <= UNSHARED_DEPTH,
            "larder: loaders read each other's keys in a cycle; this would load forever"
        );
        match self.timed(|| self.loader.load(key)) {
            (Ok(value), _) => Ok(value),
            (Err(e), _) => self.fall_back(fallback, Arc::new(e)),
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

    /// Runs the loader for the flight `guard` leads, stores and publishes
    /// the result.
    fn lead(
        &self,
        guard: LeaderGuard<K, Option<V>>,
        fallback: Option<Fallback<V>>,
    ) -> Result<Option<V>, Arc<E>> {
        if let Some(value) = self.loaded_meanwhile(&guard) {
            guard.finish(Outcome::Loaded(value.clone()));
            return Ok(value);
        }
        // The loader runs on this thread whoever began the flight (an async
        // read begins it detached): a wait for the key from the loader is
        // then caught as a self-load instead of blocking forever.
        guard.claim();
        let key = guard.key().clone();
        let seen = guard::seen(&self.cache, &key);
        match self.timed(|| self.loader.load(&key)) {
            (Ok(value), took) => {
                self.fill(guard, key, value.clone(), took, Over::Unwritten(seen), seen);
                Ok(value)
            }
            (Err(e), _) => {
                let e = Arc::new(e);
                guard.finish(Outcome::Failed(e.clone()));
                self.fall_back(fallback, e)
            }
        }
    }

    /// Stores a loaded value for the flight `guard` leads and closes the
    /// flight, then delivers what the store removed (evicted to make room,
    /// or a key found absent). Not before: the listener runs on this thread
    /// and may call back into the cache, and whatever a
    /// `run_pending_tasks` there waits for (another thread's pass, a
    /// queued reload) may be waiting for this very load. `seen` is the
    /// key's write count when the load began: if a write ended since, the
    /// waiters load again rather than take a value read before it
    /// ([`LeaderGuard::finish_unless_stale`]).
    fn fill(
        &self,
        guard: LeaderGuard<K, Option<V>>,
        key: K,
        value: Option<V>,
        took: u64,
        over: Over,
        seen: Seen,
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
        let stale = |key: &K| guard::seen(&self.cache, key) != seen;
        guard.finish_unless_stale(Outcome::Loaded(value), stale);
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
                // Absent and not cached: drop what the cache held for the
                // key, as `over` allows: not a write that ended meanwhile.
                match over {
                    Over::Stamp(stamp, _) => {
                        let doomed = |e: Option<&Loaded<V>>, _: Stripe<'_>| {
                            e.is_some_and(|e| e.stamp == stamp)
                        };
                        self.cache.remove_if(&key, doomed, removed);
                    }
                    Over::Unwritten(seen) => {
                        let doomed = |_: Option<&Loaded<V>>, stripe: Stripe<'_>| {
                            seen.load_verdict(&stripe) == Verdict::Insert
                        };
                        self.cache.remove_if(&key, doomed, removed);
                    }
                    Over::Written(_) => {
                        let doomed = |_: Option<&Loaded<V>>, stripe: Stripe<'_>| {
                            guard::write_removes(&stripe)
                        };
                        self.cache.remove_if(&key, doomed, removed);
                    }
                }
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
                let decide = |current: Option<&Loaded<V>>, s: Stripe<'_>| match current {
                    Some(c) if c.stamp == stamp => Verdict::Insert,
                    Some(_) => Verdict::Skip,
                    None => seen.load_verdict(&s),
                };
                self.cache
                    .insert_stamped_if(key, entry, stamp_times, decide, removed)
            }
            Over::Unwritten(seen) => {
                let decide = |_: Option<&Loaded<V>>, s: Stripe<'_>| seen.load_verdict(&s);
                self.cache
                    .insert_stamped_if(key, entry, stamp_times, decide, removed)
            }
            Over::Written(seen) => {
                let decide = |_: Option<&Loaded<V>>, s: Stripe<'_>| seen.write_verdict(&s);
                self.cache
                    .insert_stamped_if(key, entry, stamp_times, decide, removed)
            }
        }
    }

    /// Invalidates `key` if `predicate` approves its value, `entry` being
    /// what it held when listed, unless it holds another entry by then (a
    /// new stamp): that one's value is tested instead, up to `ATTEMPTS`
    /// times in all, and the last attempt invalidates whatever it holds. A
    /// value past its time to live is tested too (a read may still return
    /// it, stale); a cached absence is left alone.
    fn invalidate_if(&self, key: &K, mut entry: Loaded<V>, predicate: &impl Fn(&K, &V) -> bool) {
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let approved = entry.value.as_ref().is_some_and(|v| predicate(key, v));
            if !approved {
                return;
            }
            let (stamp, last) = (entry.stamp, attempt == ATTEMPTS);
            let mut rewritten = None;
            let doomed = |held: Option<&Loaded<V>>, stripe: Stripe<'_>| {
                if last || held.is_none_or(|h| h.stamp == stamp) {
                    return guard::write_removes(&stripe);
                }
                rewritten = held.cloned();
                false
            };
            self.cache
                .remove_if(key, doomed, &mut self.cache.delivery());
            match rewritten {
                Some(held) => entry = held,
                None => return,
            }
        }
    }

    /// Ends a write that leaves nothing to cache: drops `key`'s entry (as
    /// `cause` if it is live) and counts the write (see [`guard`]).
    fn remove_written<Q>(&self, key: &Q, cause: RemovalCause)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let doomed = |_: Option<&Loaded<V>>, stripe: Stripe<'_>| guard::write_removes(&stripe);
        self.cache
            .remove_if_as(key, doomed, cause, &mut self.cache.delivery());
    }

    /// [`reload`](Self::reload) of the value stamped `stamp`, skipped
    /// without asking the flight map if [`Reloading`] knows it is under
    /// way (the reads of a hot key during its reload).
    #[inline]
    fn reload_unless_under_way<Q>(&self, key: &Q, stamp: u64)
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + ?Sized,
    {
        if !self.reloading.under_way(stamp) {
            self.reload(&key.to_owned(), Some(stamp));
        }
    }

    /// Starts one reload of `key` unless a load of it is already under way.
    /// `stamp` is the value it should replace (`None`: whatever is there,
    /// including nothing). Without reload threads it runs here and now.
    fn reload(&self, key: &K, stamp: Option<u64>) -> bool {
        let guard = match self.flights.begin_queued(key) {
            Role::Leader(guard) => guard,
            Role::Waiter(_) => return false,
        };
        if let Some(stamp) = stamp {
            self.reloading.start(stamp);
        }
        // Taken now, not when a worker gets to the job: a write of the key
        // while the job waits in the queue must win over what it loads.
        let seen = guard::seen(&self.cache, key);
        let Some(pool) = &self.pool else {
            self.finish_reload(guard, stamp, seen);
            return true;
        };
        let me = self.me.clone();
        let job: Job = Box::new(move || {
            if let Some(inner) = me.upgrade() {
                inner.finish_reload(guard, stamp, seen);
            }
        });
        match pool.submit(job) {
            Ok(()) => true,
            Err(job) => {
                // Dropping the job drops the guard: the flight is abandoned
                // and anyone who joined it loads by themselves.
                drop(job);
                if let Some(stamp) = stamp {
                    self.reloading.end(stamp);
                }
                self.cache.load_counters().skipped_refresh();
                false
            }
        }
    }

    /// The body of a background reload; `seen` is the key's write count
    /// when the reload was asked for (see [`guard`]).
    fn finish_reload(&self, mut guard: LeaderGuard<K, Option<V>>, stamp: Option<u64>, seen: Seen) {
        // However this ends, the value's reload is no longer under way.
        let _ending = stamp.map(|stamp| self.reloading.ending(stamp));
        if !guard.start() {
            // A reader needed the value before a worker got here and
            // loaded it itself.
            return;
        }
        let key = guard.key().clone();
        // Between the read that asked for this reload and now, another load
        // may have replaced the value: then there is nothing to refresh.
        if let Some(stamp) = stamp {
            match self.cache.peek_present(&key) {
                Some(current) if current.stamp == stamp => {}
                // Replaced by a value still fresh: the waiters take it.
                Some(current) if current.unexpired_at(self.cache.now()) => {
                    guard.finish(Outcome::Loaded(current.value));
                    return;
                }
                // Gone, or replaced by a value that has expired since
                // (a job queued behind a busy worker can start late):
                // waiters load by themselves.
                _ => return,
            }
        }
        self.cache.load_counters().refreshed();
        match self.timed(|| self.loader.load(&key)) {
            (Ok(value), took) => {
                let over = stamp.map_or(Over::Unwritten(seen), |s| Over::Stamp(s, seen));
                self.fill(guard, key, value, took, over, seen);
            }
            (Err(e), _) => guard.finish(Outcome::Failed(Arc::new(e))),
        }
    }

    /// The async form of [`load`](Self::load).
    async fn load_async(
        &self,
        key: &K,
        fallback: Option<Fallback<V>>,
    ) -> Result<Option<V>, Arc<E>> {
        loop {
            let flight = match self.flights.begin(key, Leader::Detached) {
                Role::Leader(guard) => return self.lead(guard, fallback),
                Role::Waiter(flight) => match self.flights.take_queued(key, &flight, false) {
                    Some(guard) => return self.lead(guard, fallback),
                    None => flight,
                },
            };
            if waits_for_batch(&flight) {
                return self.load_unshared(key, fallback);
            }
            if let Some(result) = self.settle(flight.wait_async().await, &fallback) {
                return result;
            }
        }
    }

    /// A bulk read's answer. Its stale-if-error answers are counted as
    /// stale hits here, and only if it succeeds: a failed batch returns
    /// the error, and its stale values reach no one.
    fn end_many(&self, batch: Batch<K, V, E>) -> Result<HashMap<K, V>, Arc<E>> {
        if batch.failure.is_none() {
            for _ in 0..batch.stale {
                self.cache.record_stale_hit();
            }
        }
        batch.finish()
    }

    /// The part of a bulk read that never waits: answers what is cached,
    /// loads in one batch the keys nobody else is loading, and leaves the
    /// keys others are loading in `waits`.
    fn begin_many(&self, keys: impl IntoIterator<Item = K>) -> Batch<K, V, E> {
        let mut batch = Batch {
            found: HashMap::new(),
            failure: None,
            stale: 0,
            waits: Vec::new(),
        };
        let mut missing: Vec<(K, Option<Fallback<V>>)> = Vec::new();
        let mut seen = HashSet::new();
        for key in keys {
            if !seen.insert(key.clone()) {
                continue;
            }
            match self.read(&key) {
                Read::Done(v) => batch.add(key, Ok(v)),
                Read::Load(fallback) => missing.push((key, fallback)),
            }
        }
        let mut led = Vec::new();
        for (key, fallback) in missing {
            let guard = match self.flights.begin_batch(&key) {
                Role::Leader(guard) => guard,
                Role::Waiter(flight) => match self.flights.take_queued(&key, &flight, true) {
                    // A reload still waiting for a worker: in this batch.
                    Some(guard) => guard,
                    None => {
                        batch.waits.push((key, flight, fallback));
                        continue;
                    }
                },
            };
            match self.loaded_meanwhile(&guard) {
                Some(value) => {
                    guard.finish(Outcome::Loaded(value.clone()));
                    batch.add(key, Ok(value));
                }
                None => led.push((guard, fallback)),
            }
        }
        if led.is_empty() {
            return batch;
        }
        let keys: Vec<K> = led.iter().map(|(g, _)| g.key().clone()).collect();
        let seen: Vec<Seen> = keys.iter().map(|k| guard::seen(&self.cache, k)).collect();
        match self.timed(|| self.loader.load_many(&keys)) {
            (Ok(pairs), took) => {
                let mut loaded: HashMap<K, V> = pairs.into_iter().collect();
                // Delivered once every flight of the batch is closed (see
                // `fill`); if a store unwinds, the guards not yet finished
                // (the loop's, bound after it) drop first.
                let mut removed = self.cache.delivery();
                for ((guard, _), seen) in led.into_iter().zip(seen) {
                    let key = guard.key().clone();
                    let value = loaded.remove(&key);
                    let over = Over::Unwritten(seen);
                    {
                        let _awaited = Awaited::here(); // as in `fill`
                        self.store(key.clone(), value.clone(), None, took, over, &mut removed);
                    }
                    let stale = |key: &K| guard::seen(&self.cache, key) != seen;
                    guard.finish_unless_stale(Outcome::Loaded(value.clone()), stale);
                    batch.add(key, Ok(value));
                }
            }
            (Err(e), _) => {
                let e = Arc::new(e);
                for (guard, fallback) in led {
                    let key = guard.key().clone();
                    guard.finish(Outcome::Failed(e.clone()));
                    batch.add_or_fall_back(key, Err(e.clone()), fallback, || self.cache.now());
                }
            }
        }
        batch
    }
}

/// A bulk read under way: what it has found, its last failure, how many
/// keys it answered with a stale-if-error value, and the keys it still
/// waits for. Those stale answers count as stale hits only if the batch
/// succeeds (see [`LoadingInner::end_many`]): a failed one answers no one.
struct Batch<K, V, E> {
    found: HashMap<K, V>,
    failure: Option<Arc<E>>,
    stale: u64,
    waits: Vec<Wait<K, V>>,
}

/// A key a bulk read waits for: the flight loading it and the value to fall
/// back on if that load fails.
type Wait<K, V> = (K, Arc<Flight<Option<V>>>, Option<Fallback<V>>);

impl<K: Hash + Eq, V, E> Batch<K, V, E> {
    fn add(&mut self, key: K, result: Result<Option<V>, Arc<E>>) {
        match result {
            Ok(Some(v)) => {
                self.found.insert(key, v);
            }
            Ok(None) => {}
            Err(e) => self.failure = Some(e),
        }
    }

    /// A key's result, its failure answered with `fallback` (a value
    /// stale-if-error kept) if it has one whose window is still open at
    /// `now()` (read only for a failure that has one).
    fn add_or_fall_back(
        &mut self,
        key: K,
        result: Result<Option<V>, Arc<E>>,
        fallback: Option<Fallback<V>>,
        now: impl FnOnce() -> u64,
    ) {
        match (result, fallback) {
            (Err(_), Some(stale)) if now() < stale.until => {
                self.stale += 1;
                self.add(key, Ok(stale.value));
            }
            (result, _) => self.add(key, result),
        }
    }

    fn finish(self) -> Result<HashMap<K, V>, Arc<E>> {
        match self.failure {
            Some(e) => Err(e),
            None => Ok(self.found),
        }
    }
}

/// How deep [`LoadingInner::load_unshared`] calls may nest on one thread
/// before they are taken for loaders reading each other in a cycle.
const UNSHARED_DEPTH: usize = 16;

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
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    /// A reload asked for by a read that saw an older value than the one now
    /// cached (another load finished in between) must not call the loader.
    #[test]
    fn a_reload_for_a_replaced_value_does_not_load() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let cache = Cache::builder()
            .loader(move |k: &u32| -> Result<Option<u32>, String> {
                counted.fetch_add(1, Relaxed);
                Ok(Some(*k))
            })
            .refresh_after(Duration::from_secs(3600))
            .build()
            .unwrap();
        cache.get(&1).unwrap();
        let seen = cache.inner.cache.peek(&1).unwrap().stamp;
        cache.insert(1, 10); // the value the read saw is replaced
        assert!(cache.inner.reload(&1, Some(seen)), "queued");
        cache.run_pending_tasks();
        assert_eq!(calls.load(Relaxed), 1, "only the first load ran");
        assert_eq!(cache.stats().refreshes(), 0);
        assert_eq!(cache.get(&1).unwrap(), Some(10));

        // The value it was asked for is still there: the reload runs.
        let seen = cache.inner.cache.peek(&1).unwrap().stamp;
        assert!(cache.inner.reload(&1, Some(seen)));
        cache.run_pending_tasks();
        assert_eq!(calls.load(Relaxed), 2);
        assert_eq!(cache.get(&1).unwrap(), Some(1));
    }
}
