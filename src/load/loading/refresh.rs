//! Refreshing: [`LoadingCache::refresh`] and the background reloads that
//! reads start, run on the cache's [`Pool`] (on the calling thread without
//! one).

use std::{borrow::Borrow, hash::Hash, sync::Arc};

use super::{LoadingCache, LoadingInner, Over};
use crate::load::{
    flight::{LeaderGuard, Outcome, Role},
    guard::{self, Seen},
    pool::Job,
};
#[cfg(doc)]
use crate::load::{pool::Pool, reloading::Reloading};

impl<K, V, E> LoadingCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
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
}

impl<K, V, E> LoadingInner<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// [`reload`](Self::reload) of the value stamped `stamp`, skipped
    /// without asking the flight map if [`Reloading`] knows it is under
    /// way (the reads of a hot key during its reload).
    #[inline]
    pub(super) fn reload_unless_under_way<Q>(&self, key: &Q, stamp: u64)
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
    pub(super) fn reload(&self, key: &K, stamp: Option<u64>) -> bool {
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
                self.fill(guard, key, value, took, over);
            }
            (Err(e), _) => guard.finish(Outcome::Failed(Arc::new(e))),
        }
    }
}
