//! One value's lifetime on a [`LoadingCache`], given, read or changed by
//! the caller, as [`Cache`](crate::Cache) has it for its entries:
//! `insert_with_ttl`, `expires_in`, `expire_in` and `persist`.
//!
//! A loading cache's value has two deadlines: its time to live, when it
//! stops being fresh (its record's `expires_at`), and its entry's in the
//! inner cache, that plus the longer of the stale windows, when reads can
//! no longer use it at all. These calls give and read the first; the
//! second follows it (see `Loaded::retime`). A value past its time to live
//! is expired to them, as it is to `peek`, even while a read would still
//! return it stale.

use std::{borrow::Borrow, hash::Hash, time::Duration};

use crate::LoadingCache;

impl<K, V, E> LoadingCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// [`insert`](Self::insert) with a time to live of its own: stores
    /// `value` under `key` as if just loaded, fresh for `ttl` from now
    /// instead of the cache's `time_to_live` (with or without one). As
    /// with [`Cache::insert_with_ttl`](crate::Cache::insert_with_ttl),
    /// `ttl` is kept exactly: `ttl_jitter` does not spread it, and one too
    /// long for the clock to hold (over about 36 years) means none.
    ///
    /// Past `ttl` the value is like any value past its time to live: with
    /// `stale_while_revalidate` or `stale_if_error`, reads may still
    /// return it inside those windows, which begin at `ttl`; otherwise the
    /// next read loads the key. A zero `ttl` expires it at once: without
    /// those windows no read returns it (the listener hears of it as
    /// `Expired`). As for a loaded value, `refresh_after` counts from now,
    /// a time to idle applies, and a refresh or load that replaces it
    /// gives the new value the cache's own time to live.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`insert`](Self::insert): a load or background reload of the
    /// key under way when this call lands returns its value to its callers
    /// without caching it, so the inserted value and its lifetime stay.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_live(Duration::from_secs(3600))
    ///     .loader(|k: &&str| Ok::<_, String>(Some(k.len())))
    ///     .build()
    ///     .unwrap();
    /// cache.insert_with_ttl("session", 42, Duration::from_secs(30));
    /// assert_eq!(cache.get(&"session").unwrap(), Some(42));
    /// clock.advance(Duration::from_secs(30));
    /// assert_eq!(cache.peek(&"session"), None);
    /// assert_eq!(cache.get(&"session").unwrap(), Some(7)); // expired: loaded
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        self.insert_for(key, value, Some(ttl));
    }

    /// The time `key`'s value has left to be fresh, with no side effects
    /// (like [`peek`](Self::peek): nothing loaded, counted or refreshed,
    /// no idle time slid). As [`Cache::expires_in`](crate::Cache::expires_in):
    ///
    /// - `None`: no value [`peek`](Self::peek) would return: the key is
    ///   absent, its value is past its time to live (even one a read would
    ///   still return stale, inside a `stale_while_revalidate` or
    ///   `stale_if_error` window), or it holds an absence cached by
    ///   `negative_ttl`.
    /// - `Some(None)`: a value with no time to live.
    /// - `Some(Some(d))`: a value fresh for `d` more.
    ///
    /// Refresh is not expiry: a value due for a `refresh_after` or early
    /// expiry reload is fresh until its time to live all the same. With a
    /// time to idle, `d` is the time to the earlier of its time to live
    /// and the end of its idle time (which drops the value, stale windows
    /// and all); a later [`get`](Self::get) may slide the idle time and so
    /// lengthen it.
    ///
    /// **Locking:** takes the key's shard shared, as `peek` does.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_live(Duration::from_secs(60))
    ///     .loader(|k: &u32| Ok::<_, String>((*k < 10).then_some(*k)))
    ///     .stale_while_revalidate(Duration::from_secs(10))
    ///     .negative_ttl(Duration::from_secs(60))
    ///     .build()
    ///     .unwrap();
    /// cache.get(&1).unwrap();
    /// clock.advance(Duration::from_secs(20));
    /// assert_eq!(cache.expires_in(&1), Some(Some(Duration::from_secs(40))));
    /// assert_eq!(cache.get(&99).unwrap(), None); // an absence, cached
    /// assert_eq!(cache.expires_in(&99), None);
    /// clock.advance(Duration::from_secs(45));
    /// assert_eq!(cache.expires_in(&1), None); // stale: a read would still return it
    /// assert_eq!(cache.stats().hits() + cache.stats().misses(), 2); // the two gets
    /// ```
    pub fn expires_in<Q>(&self, key: &Q) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.fresh_for(key)
    }

    /// Gives `key`'s fresh value a new time to live, `ttl` from now,
    /// without rewriting it; returns whether there was one. As
    /// [`Cache::expire_in`](crate::Cache::expire_in) (Redis's `EXPIRE`):
    /// extend a value's life, or cut it short. A key with no value
    /// [`peek`](Self::peek) would return is left as it is (never revived)
    /// and the answer is `false`: an absent key, an absence cached by
    /// `negative_ttl`, and a value past its time to live, even one a read
    /// would still return stale.
    ///
    /// `ttl` is kept exactly, whatever the cache's settings: `ttl_jitter`
    /// does not spread it, and one too long for the clock to hold (over
    /// about 36 years) means none. Past it the value is like any value
    /// past its time to live: the stale windows follow it, and a read
    /// after them loads the key. So a zero `ttl` expires it at once:
    /// without `stale_while_revalidate` or `stale_if_error` it is removed
    /// now, and the listener hears of it as `Expired`, once; with them it
    /// is stale from now. Inside `stale_while_revalidate`'s window the
    /// next read returns it and starts a reload; with `stale_if_error`
    /// alone the next read loads the key and returns this value only if
    /// that load fails.
    ///
    /// It is neither a read nor a write: nothing is loaded, counted or
    /// refreshed, the eviction policy is not told, the listener hears
    /// nothing (but for a removal), and no load or reload of the key is
    /// outdated. `refresh_after` still counts from the value's load or
    /// insert, and a refresh or load that replaces it gives the new value
    /// the cache's own time to live. With a time to idle, the idle time
    /// restarts now, as it does for `Cache::expire_in`.
    ///
    /// **Locking:** takes the key's shard exclusively, as
    /// `Cache::expire_in` does; no user code runs but the key's `Hash` and
    /// `Eq` (and, for a removal, the listener, after the unlock).
    ///
    /// # Concurrent calls on the same key
    ///
    /// A load of the key under way began on a miss (or on a stale value),
    /// so this call finds no fresh value to change and returns `false`,
    /// and the loaded value is cached with the cache's time to live; a
    /// background reload under way replaces the value this call timed, as
    /// a refresh does. A write (an insert, an invalidation) and this call
    /// take the shard's lock in turn: the time to live goes to the value
    /// fresh when this call has the lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_live(Duration::from_secs(60))
    ///     .loader(|k: &u32| Ok::<_, String>(Some(*k)))
    ///     .build()
    ///     .unwrap();
    /// cache.get(&7).unwrap();
    /// clock.advance(Duration::from_secs(50));
    /// assert!(cache.expire_in(&7, Duration::from_secs(600)));
    /// clock.advance(Duration::from_secs(500));
    /// assert_eq!(cache.expires_in(&7), Some(Some(Duration::from_secs(100))));
    /// assert_eq!(cache.stats().loads(), 1); // not loaded again
    /// assert!(!cache.expire_in(&8, Duration::from_secs(600))); // never loads
    /// assert_eq!(cache.entry_count(), 1);
    /// ```
    pub fn expire_in<Q>(&self, key: &Q, ttl: Duration) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.retime(key, Some(ttl))
    }

    /// Takes away `key`'s fresh value's time to live, without rewriting
    /// it; returns whether there was one. As
    /// [`Cache::persist`](crate::Cache::persist) (Redis's `PERSIST`), and
    /// everything [`expire_in`](Self::expire_in) says holds, with no time
    /// to live in place of `ttl`: the value never goes stale. It is not
    /// pinned, though: the eviction policy may still evict it, a time to
    /// idle still drops it when left unread, and a `refresh_after` reload
    /// still replaces it with a loaded value, which the cache's own time
    /// to live then times.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .clock(clock.clone())
    ///     .time_to_live(Duration::from_secs(60))
    ///     .loader(|k: &u32| Ok::<_, String>(Some(*k)))
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 100);
    /// assert!(cache.persist(&1));
    /// assert_eq!(cache.expires_in(&1), Some(None));
    /// clock.advance(Duration::from_secs(3600));
    /// assert_eq!(cache.get(&1).unwrap(), Some(100)); // never loaded
    /// ```
    pub fn persist<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.retime(key, None)
    }
}
