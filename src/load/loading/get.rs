//! Reads that load: [`LoadingCache::get`] and [`LoadingCache::get_async`],
//! which lead the key's load or wait for the one under way.

use std::{borrow::Borrow, cell::Cell, hash::Hash, sync::Arc};

use super::{Fallback, LoadingCache, LoadingInner, Over, Read, waits_for_batch};
use crate::load::{
    flight::{Leader, LeaderGuard, Outcome, Role},
    guard,
};

impl<K, V, E> LoadingCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// The value for `key`, loading it if it is missing or expired.
    ///
    /// Counts a hit when a usable answer was found (a value fresh, due for
    /// refresh, or stale inside the stale-while-revalidate window, or an
    /// absence cached by `negative_ttl`), a miss when it had to load or
    /// wait for a load. Only one load per key runs at a time; other callers
    /// wait for it and share its result (but a loader reading a key that a
    /// [`get_many`](Self::get_many) on another thread is loading loads it
    /// itself: see there), unless a write of the key ended while it ran:
    /// then the value is not cached and the waiters load again (writes of
    /// other keys do not count).
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
}

impl<K, V, E> LoadingInner<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Loads `key` in the foreground, or waits for the load under way.
    pub(super) fn load(&self, key: &K, fallback: Option<Fallback<V>>) -> Result<Option<V>, Arc<E>> {
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
    pub(super) fn load_unshared(
        &self,
        key: &K,
        fallback: Option<Fallback<V>>,
    ) -> Result<Option<V>, Arc<E>> {
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
                self.fill(guard, key, value.clone(), took, Over::Unwritten(seen));
                Ok(value)
            }
            (Err(e), _) => {
                let e = Arc::new(e);
                guard.finish(Outcome::Failed(e.clone()));
                self.fall_back(fallback, e)
            }
        }
    }

    /// The async form of [`load`](Self::load).
    pub(super) async fn load_async(
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
}

/// How deep [`LoadingInner::load_unshared`] calls may nest on one thread
/// before they are taken for loaders reading each other in a cycle.
const UNSHARED_DEPTH: usize = 16;
