//! Bulk reads: [`LoadingCache::get_many`] and
//! [`LoadingCache::get_many_async`], which load the missing keys nobody
//! else is loading with one [`Loader::load_many`] call and wait for the rest.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    sync::Arc,
};

use super::{Fallback, LoadingCache, LoadingInner, Over, Read, waits_for_batch};
#[cfg(doc)]
use crate::load::Loader;
use crate::{
    load::{
        flight::{Flight, LeaderGuard, Outcome, Role},
        guard::{self, Seen},
    },
    maintenance::Awaited,
};

impl<K, V, E> LoadingCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
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
}

impl<K, V, E> LoadingInner<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
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
        let led = self.lead_missing(missing, &mut batch);
        if !led.is_empty() {
            self.load_led(led, &mut batch);
        }
        batch
    }

    /// The flights of the `missing` keys: those this read leads (a reload
    /// still queued for a worker included), with their fallbacks; the
    /// others, which another caller leads, go to the batch's waits, and a
    /// key loaded meanwhile to its answers.
    fn lead_missing(
        &self,
        missing: Vec<(K, Option<Fallback<V>>)>,
        batch: &mut Batch<K, V, E>,
    ) -> Vec<Led<K, V>> {
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
        led
    }

    /// Loads the keys of the `led` flights with one
    /// [`Loader::load_many`] call, stores and answers them, and closes
    /// their flights; on an error, answers each with its fallback or the
    /// error.
    fn load_led(&self, led: Vec<Led<K, V>>, batch: &mut Batch<K, V, E>) {
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
                    guard.finish_unless_stale(Outcome::Loaded(value.clone()), |_, written| written);
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
    }
}

/// A flight a bulk read leads, and its key's stale-if-error fallback.
type Led<K, V> = (LeaderGuard<K, Option<V>>, Option<Fallback<V>>);

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
