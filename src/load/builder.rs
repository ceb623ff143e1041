//! [`LoadingCacheBuilder`]: a [`CacheBuilder`] given a [`Loader`], with the
//! settings that only a loading cache has.

use std::{fmt, hash::Hash, sync::Arc, time::Duration};

use crate::{
    BuildError, CacheBuilder, LoadingCache,
    expiry::clock::saturating_nanos,
    load::{Loader, fresh::Freshness, loading::Settings},
};

/// Default number of `larder-reload-N` threads.
const DEFAULT_RELOAD_THREADS: usize = 2;
/// Default capacity of the reload queue.
const DEFAULT_RELOAD_QUEUE: usize = 1_024;
/// Most `larder-reload-N` threads: all are started when the cache is built.
const MAX_RELOAD_THREADS: usize = 1_024;
/// Largest reload queue: it is allocated whole when the cache is built.
const MAX_RELOAD_QUEUE: usize = 1 << 20;

impl<K, V> CacheBuilder<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Turns this builder into one for a [`LoadingCache`]: a read that misses
    /// calls `loader` by itself (read-through), one call per key at a time.
    ///
    /// Every setting made so far carries over, except
    /// [`expire_after`](Self::expire_after), which a loading cache refuses
    /// ([`BuildError::LoaderExpiryConflict`]). `time_to_live` becomes the
    /// time a loaded value stays *fresh*; the refresh settings on
    /// [`LoadingCacheBuilder`] say what happens around it.
    ///
    /// So the cache's own settings (`max_capacity`, `weigher`,
    /// `time_to_live`, `time_to_idle`, `ttl_jitter`, `eviction_listener`,
    /// `num_shards`, `clock`) come before `loader`: the builder it returns
    /// offers only the loading settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .max_capacity(1_000)
    ///     .time_to_live(Duration::from_secs(60))
    ///     .loader(|id: &u32| Ok::<_, std::io::Error>(Some(format!("user {id}"))))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get(&7).unwrap().as_deref(), Some("user 7"));
    /// ```
    pub fn loader<L: Loader<K, V>>(self, loader: L) -> LoadingCacheBuilder<K, V, L::Error> {
        LoadingCacheBuilder {
            base: self,
            loader: Arc::new(loader),
            refresh_after: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            early_expiry: None,
            negative_ttl: None,
            reload_threads: DEFAULT_RELOAD_THREADS,
            reload_queue: DEFAULT_RELOAD_QUEUE,
        }
    }
}

/// Settings of a [`LoadingCache`], from [`CacheBuilder::loader`].
///
/// With none of the refresh settings, a value is loaded on a miss and again
/// on the first read after its `time_to_live`. Each setting below changes
/// what a read sees around that moment; they combine.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let cache = larder::Cache::builder()
///     .time_to_live(Duration::from_secs(60))
///     .loader(|k: &u64| Ok::<_, String>(Some(k * 2)))
///     .refresh_after(Duration::from_secs(45))          // reload in the background after 45 s
///     .stale_while_revalidate(Duration::from_secs(10)) // serve up to 10 s past expiry while reloading
///     .stale_if_error(Duration::from_secs(300))        // serve up to 5 min past expiry if loads fail
///     .early_expiry(1.0)                               // XFetch: refresh hot keys early
///     .negative_ttl(Duration::from_secs(5))            // remember "absent" for 5 s
///     .reload_threads(2)
///     .reload_queue_capacity(1_024)
///     .build()
///     .unwrap();
/// assert_eq!(cache.get(&21).unwrap(), Some(42));
/// ```
#[must_use]
pub struct LoadingCacheBuilder<K, V, E> {
    base: CacheBuilder<K, V>,
    loader: Arc<dyn Loader<K, V, Error = E>>,
    refresh_after: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    early_expiry: Option<f64>,
    negative_ttl: Option<Duration>,
    reload_threads: usize,
    reload_queue: usize,
}

impl<K, V, E> fmt::Debug for LoadingCacheBuilder<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadingCacheBuilder")
            .field("base", &self.base)
            .field("refresh_after", &self.refresh_after)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .field("early_expiry", &self.early_expiry)
            .field("negative_ttl", &self.negative_ttl)
            .field("reload_threads", &self.reload_threads)
            .field("reload_queue_capacity", &self.reload_queue)
            .finish_non_exhaustive()
    }
}

impl<K, V, E> LoadingCacheBuilder<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Refresh-ahead: once a value is `after` old, the first read returns it
    /// and starts one background reload; the reloaded value replaces it when
    /// ready. Reads never wait for a refresh. Works with or without a
    /// `time_to_live` (set it shorter than the TTL to refresh before expiry).
    /// A reload that finds the key absent drops the value (or caches the
    /// absence, with `negative_ttl`); one that fails leaves the value as it
    /// was, and the next read due for refresh tries again. Cached absences
    /// are refreshed too. Off by default.
    ///
    /// `after` is exact: [`ttl_jitter`](crate::CacheBuilder::ttl_jitter)
    /// spreads the time to live, not this, so values loaded together come
    /// due for refresh together, and their reloads queue up behind the
    /// [`reload_threads`](Self::reload_threads) (a full queue skips the rest,
    /// counted in [`skipped_refreshes`](crate::CacheStats::skipped_refreshes),
    /// until a later read).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .refresh_after(Duration::from_secs(30))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), Some(1));
    /// ```
    ///
    /// With a jittered time to live, the refresh time is not spread:
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_live(Duration::from_secs(100))
    ///     .ttl_jitter(0.5) // each value lives 50 to 150 s
    ///     .loader(|k: &u32| Ok::<_, String>(Some(*k)))
    ///     .refresh_after(Duration::from_secs(40))
    ///     .build()
    ///     .unwrap();
    /// for k in 0..100 {
    ///     cache.get(&k).unwrap();
    /// }
    /// clock.advance(Duration::from_secs(40));
    /// for k in 0..100 {
    ///     cache.get(&k).unwrap(); // every one is due now
    /// }
    /// cache.run_pending_tasks();
    /// assert_eq!(cache.stats().refreshes(), 100);
    /// ```
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.refresh_after = Some(after);
        self
    }

    /// Stale-while-revalidate: for `window` past a value's time to live,
    /// reads return the stale value at once (counted in
    /// [`stale_hits`](crate::CacheStats::stale_hits)) while exactly one
    /// background reload runs. Past the window, reads wait for a load.
    /// Needs `time_to_live`. Off by default. A `time_to_idle` still
    /// applies: an entry not read for that long is dropped, inside the
    /// window too.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .stale_while_revalidate(Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), Some(1));
    /// ```
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Stale-if-error: for `window` past a value's time to live, a failed
    /// load (or reload) does not reach the reader: the old value is returned
    /// instead, counted as a stale hit and the failure as a load failure.
    /// Past the window the error is returned; the window is judged when the
    /// load fails, so a load begun inside it that fails after it returns
    /// the error, to its waiters too. Needs `time_to_live`. Off by
    /// default. A `time_to_idle` still applies: an entry not read for that
    /// long is dropped, inside the window too.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .stale_if_error(Duration::from_secs(600))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), Some(1));
    /// ```
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Probabilistic early expiry (XFetch) with eagerness `beta` (1.0 is the
    /// paper's default; larger refreshes earlier). Each read of a fresh value
    /// starts a background reload with probability
    /// `exp(-time_left / (load_time * beta))`, where `load_time` is how long
    /// that value took to load: steady traffic on a hot key refreshes it
    /// shortly before it expires, so readers never all miss at once.
    /// Needs `time_to_live`. Off by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .early_expiry(1.0)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), Some(1));
    /// ```
    pub fn early_expiry(mut self, beta: f64) -> Self {
        self.early_expiry = Some(beta);
        self
    }

    /// Negative caching: when the loader answers `Ok(None)` ("no such
    /// key"), remember that for `ttl`, so repeated reads of a missing key do
    /// not reach the loader. Without this setting, absent answers are not
    /// cached. A cached absence is an entry: it counts in `entry_count`,
    /// weighs 1 against `max_capacity` (the weigher sees values only), and
    /// is never listed by `iter`. It is not a value, so the eviction
    /// listener (which is handed one) never hears of it leaving, for any
    /// cause: a value written or loaded over it, its own `ttl` passing,
    /// an invalidation, the capacity. Nor does
    /// [`stats().removals`](crate::CacheStats::removals), which counts
    /// exactly what the listener hears. A value that a cached absence
    /// replaces (a reload that finds the key gone) is heard and counted, as
    /// `Replaced`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .loader(|_: &u8| Ok::<Option<u8>, String>(None))
    ///     .negative_ttl(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), None);
    /// assert_eq!(cache.get(&1).unwrap(), None); // answered from the cache
    /// assert_eq!(cache.stats().loads(), 1);
    /// ```
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Number of `larder-reload-N` threads that run background reloads
    /// (default 2, at most 1,024). They are started only if a setting needs
    /// them (`refresh_after`, `stale_while_revalidate` or `early_expiry`)
    /// and end with the cache.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .reload_threads(4)
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    pub fn reload_threads(mut self, threads: usize) -> Self {
        self.reload_threads = threads;
        self
    }

    /// Capacity of the queue of background reloads (default 1,024, at most
    /// 1,048,576). When it is full a due reload is skipped, counted in
    /// [`skipped_refreshes`](crate::CacheStats::skipped_refreshes), and
    /// tried again by a later read. The queue is allocated whole when the
    /// cache is built (32 bytes a place: the channel's stamp, the job's
    /// number and the pointer to its boxed closure), if a setting needs
    /// reloads.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u8| Ok::<_, String>(Some(*k)))
    ///     .reload_queue_capacity(64)
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    pub fn reload_queue_capacity(mut self, capacity: usize) -> Self {
        self.reload_queue = capacity;
        self
    }

    /// Builds the loading cache, or names the first setting out of range.
    ///
    /// # Errors
    ///
    /// Every [`CacheBuilder::build`] error, and
    /// [`LoaderExpiryConflict`](BuildError::LoaderExpiryConflict),
    /// [`ZeroSetting`](BuildError::ZeroSetting) (a zero duration, thread count
    /// or queue capacity), [`TooLarge`](BuildError::TooLarge) (more than
    /// 1,024 `reload_threads` or 1,048,576 `reload_queue_capacity`),
    /// [`NeedsTimeToLive`](BuildError::NeedsTimeToLive)
    /// and [`BetaOutOfRange`](BuildError::BetaOutOfRange).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::BuildError;
    /// use std::time::Duration;
    /// let loads = |k: &u8| Ok::<_, String>(Some(*k));
    /// let err = larder::Cache::builder()
    ///     .loader(loads)
    ///     .stale_while_revalidate(Duration::from_secs(1))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err, BuildError::NeedsTimeToLive("stale_while_revalidate"));
    /// let err = larder::Cache::builder().loader(loads).reload_threads(2_000).build().unwrap_err();
    /// assert_eq!(err, BuildError::TooLarge("reload_threads", 2_000, 1_024));
    /// assert_eq!(err.to_string(), "reload_threads is 2000, more than the limit of 1024");
    /// ```
    pub fn build(self) -> Result<LoadingCache<K, V, E>, BuildError> {
        let nanos = |d: Duration| saturating_nanos(d.as_nanos());
        let positive = |d: Option<Duration>, name| match d {
            Some(Duration::ZERO) => Err(BuildError::ZeroSetting(name)),
            d => Ok(d.map(nanos)),
        };
        let refresh_after = positive(self.refresh_after, "refresh_after")?;
        let swr = positive(self.stale_while_revalidate, "stale_while_revalidate")?;
        let sie = positive(self.stale_if_error, "stale_if_error")?;
        let negative_ttl = positive(self.negative_ttl, "negative_ttl")?;
        let count = |n: usize, limit: usize, name| match n {
            0 => Err(BuildError::ZeroSetting(name)),
            n if n > limit => Err(BuildError::TooLarge(name, n, limit)),
            n => Ok(n),
        };
        count(self.reload_threads, MAX_RELOAD_THREADS, "reload_threads")?;
        count(self.reload_queue, MAX_RELOAD_QUEUE, "reload_queue_capacity")?;
        if let Some(beta) = self.early_expiry {
            if !(beta.is_finite() && beta > 0.0) {
                return Err(BuildError::BetaOutOfRange(beta));
            }
        }
        let (inner, ttl, jitter) = self.base.into_loading()?;
        if ttl.is_none() {
            for (set, name) in [
                (swr.is_some(), "stale_while_revalidate"),
                (sie.is_some(), "stale_if_error"),
                (self.early_expiry.is_some(), "early_expiry"),
            ] {
                if set {
                    return Err(BuildError::NeedsTimeToLive(name));
                }
            }
        }
        let freshness = Freshness {
            refresh_after,
            stale_while_revalidate: swr.unwrap_or(0),
            stale_if_error: sie.unwrap_or(0),
            beta: self.early_expiry,
        };
        let settings = Settings {
            freshness,
            ttl: ttl.map(nanos),
            jitter,
            negative_ttl,
            reload_threads: self.reload_threads,
            reload_queue: self.reload_queue,
        };
        Ok(LoadingCache::from_parts(
            inner.build()?,
            self.loader,
            settings,
        ))
    }
}
