//! One cached copy's lifetime on a [`StoreCache`], given, read or changed
//! by the caller: `insert_with_ttl`, `expires_in`, `expire_in` and
//! `persist`, as [`LoadingCache`](crate::LoadingCache) has them. They time
//! the cache's copy only: the store is written as ever, and never told.

use std::{borrow::Borrow, hash::Hash, time::Duration};

use super::{Store, StoreCache, WriteError, buffer::Change};

impl<K, V, S> StoreCache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    /// [`insert`](Self::insert), with a time to live of its own for the
    /// cached copy. The store is written exactly as `insert` writes it,
    /// by the cache's policy; `ttl` never reaches it. The copy the cache
    /// then holds is fresh for `ttl` from now, as
    /// [`LoadingCache::insert_with_ttl`](crate::LoadingCache::insert_with_ttl)
    /// gives it: exactly (`ttl_jitter` does not spread it), the stale
    /// windows set through [`reads`](crate::StoreCacheBuilder::reads)
    /// following it; the next read after them loads the key, and the
    /// loaded copy gets the cache's own time to live.
    ///
    /// | policy | the store … | the cached copy … |
    /// |---|---|---|
    /// | write-through | … has the value when this returns | … is fresh for `ttl` |
    /// | write-around | … has the value when this returns | … is dropped, as by `insert`: there is none for `ttl` to time, which is not used; the next read loads the value with the cache's own time to live |
    /// | write-behind | … gets the value from the flusher | … is fresh for `ttl`; if it expires before the change is flushed, a read gets the queued value back (not the store's older row) and caches it with the cache's own time to live |
    ///
    /// # Errors
    ///
    /// As for [`insert`](Self::insert): on an error nothing of the key is
    /// cached.
    ///
    /// # Panics
    ///
    /// As for [`insert`](Self::insert).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::{Arc, Mutex}};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default, Clone)] struct Table(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a shared `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use larder::clock::MockClock;
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let table = Table::default();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_live(Duration::from_secs(3600))
    ///     .store(table.clone())
    ///     .build()
    ///     .unwrap();
    /// cache.insert_with_ttl(1, 10, Duration::from_secs(30)).unwrap();
    /// assert_eq!(table.0.lock().unwrap().get(&1), Some(&10)); // written through
    /// assert_eq!(cache.expires_in(&1), Some(Some(Duration::from_secs(30))));
    /// clock.advance(Duration::from_secs(30));
    /// assert_eq!(cache.peek(&1), None); // the cached copy expired...
    /// assert_eq!(table.0.lock().unwrap().get(&1), Some(&10)); // ...not the row
    /// assert_eq!(cache.get(&1).unwrap(), Some(10)); // loaded again
    /// assert_eq!(cache.expires_in(&1), Some(Some(Duration::from_secs(3600))));
    /// ```
    pub fn insert_with_ttl(
        &self,
        key: K,
        value: V,
        ttl: Duration,
    ) -> Result<(), WriteError<S::Error>> {
        self.change(key, Change::Put(value), Some(ttl))
    }

    /// The time `key`'s cached copy has left to be fresh, with no side
    /// effects: the store is not read, nothing is counted. See
    /// [`LoadingCache::expires_in`](crate::LoadingCache::expires_in):
    /// `None` for no copy [`peek`](Self::peek) would return (none cached,
    /// one past its time to live, or an absence cached by a `negative_ttl`),
    /// `Some(None)` for a copy with no time to live, `Some(Some(d))` for one
    /// fresh for `d` more.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// use std::time::Duration;
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .store(Squares)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.expires_in(&3), None); // not cached: never loads
    /// cache.get(&3).unwrap();
    /// assert!(cache.expires_in(&3).unwrap().unwrap() <= Duration::from_secs(60));
    /// ```
    pub fn expires_in<Q>(&self, key: &Q) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.reads().expires_in(key)
    }

    /// Gives `key`'s fresh cached copy a new time to live, `ttl` from now,
    /// without rewriting it; returns whether there was one. The store is
    /// neither read nor written, and a write-behind change of the key
    /// still queued is not touched. See
    /// [`LoadingCache::expire_in`](crate::LoadingCache::expire_in): no copy
    /// is loaded or revived (`false` for a key with none, as right after a
    /// write-around write), and a zero `ttl` expires the copy at once.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// use larder::clock::MockClock;
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_live(Duration::from_secs(60))
    ///     .store(Squares)
    ///     .build()
    ///     .unwrap();
    /// cache.get(&3).unwrap();
    /// assert!(cache.expire_in(&3, Duration::from_secs(600)));
    /// clock.advance(Duration::from_secs(500));
    /// assert_eq!(cache.peek(&3), Some(9));
    /// assert!(!cache.expire_in(&4, Duration::from_secs(600))); // not cached
    /// assert_eq!(cache.stats().loads(), 1);
    /// ```
    pub fn expire_in<Q>(&self, key: &Q, ttl: Duration) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.reads().expire_in(key, ttl)
    }

    /// Takes away `key`'s fresh cached copy's time to live, without
    /// rewriting it; returns whether there was one. The store is neither
    /// read nor written. See
    /// [`LoadingCache::persist`](crate::LoadingCache::persist): the copy
    /// never goes stale, but may still be evicted, dropped by a time to
    /// idle, or replaced by a refresh or a write.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// use std::time::Duration;
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .store(Squares)
    ///     .build()
    ///     .unwrap();
    /// cache.insert(3, 10).unwrap();
    /// assert!(cache.persist(&3));
    /// assert_eq!(cache.expires_in(&3), Some(None));
    /// ```
    pub fn persist<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.reads().persist(key)
    }
}
