//! Single-flight loading on [`Cache`]: `get_with` and its kin (fallible,
//! optional, async, by borrowed key), and the flight they share (lead, or
//! wait and take the leader's outcome; cache the value unless the key was
//! written meanwhile). See [`load::flight`](crate::load::flight).

use std::{
    any::Any, borrow::Borrow, convert::Infallible, future::Future, hash::Hash, sync::Arc,
    time::Instant,
};

use super::{Cache, Inner, Verdict};
use crate::{
    load::flight::{Leader, LeaderGuard, Outcome, Role},
    maintenance::Awaited,
    notify::Delivery,
    shard::Stripe,
    stats::LoadCounters,
};

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
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
    /// own `init` instead; nobody waits forever. `init` is dropped then as
    /// it is polled, as the key's load: something in it whose `drop` loads
    /// or computes the same key blockingly panics there rather than wait
    /// for itself.
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
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
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
                    let init = init.take().expect("a caller leads at most once");
                    let result = {
                        let record = LoadRecord::start(&self.loads);
                        let result = guard.drive(init).await;
                        record.finish(answered(&result));
                        result
                    };
                    // The fill runs the weigher and the expiry hooks on
                    // this thread, the flight still open: one that loads
                    // the key then panics, as for `load_missed`, instead of
                    // waiting for itself (the flight, led by no thread
                    // between polls, would not tell).
                    guard.claim();
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
