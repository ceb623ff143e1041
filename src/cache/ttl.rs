//! One entry's lifetime given, read or changed by the caller:
//! [`Cache::insert_with_ttl`], [`Cache::expires_in`], [`Cache::expire_in`]
//! and [`Cache::persist`], and their forms for a value that keeps a
//! deadline of its own (a loading cache's record).

use std::{borrow::Borrow, hash::Hash, time::Duration};

use super::{Cache, Inner};
#[cfg(doc)]
use crate::{Expiry, RemovalCause};
use crate::{
    expiry::{NEVER, remaining},
    notify::Delivery,
    shard::Now,
};

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Inserts `value` under `key` to live `ttl` from now, whatever the
    /// cache's own expiry settings: [`ttl_jitter`](crate::CacheBuilder::ttl_jitter)
    /// does not spread it. Time to idle still applies, and so do
    /// [`Expiry`] hooks on later reads and updates (a read
    /// hook may move this deadline).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    /// cache.insert_with_ttl("session", 42, Duration::from_secs(30));
    /// clock.advance(Duration::from_secs(31));
    /// assert_eq!(cache.get("session"), None);
    /// ```
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        self.inner.insert(key, value, Some(ttl));
    }

    /// The time `key`'s entry has left to live, with no side effects (like
    /// [`peek`](Self::peek): no hit or miss counted, the eviction policy
    /// not told, no idle time slid). Redis's `TTL key`.
    ///
    /// - `None`: no live entry (absent, or expired and not yet reaped).
    /// - `Some(None)`: a live entry that never expires.
    /// - `Some(Some(d))`: a live entry that expires `d` from now.
    ///
    /// The inner `Option<Duration>` means what it means to the [`Expiry`]
    /// hooks, whose `remaining` argument it is: `None` is "never".
    ///
    /// With a [time to idle](crate::CacheBuilder::time_to_idle) the entry
    /// expires at the earlier of its hard deadline (its time to live, or
    /// the lifetime [`insert_with_ttl`](Self::insert_with_ttl) or
    /// [`expire_in`](Self::expire_in) gave it) and its idle deadline (its
    /// last read, write, `expire_in` or [`persist`](Self::persist) plus
    /// the idle time): `d` is the time until the earlier one. A later
    /// [`get`](Self::get) may slide the idle deadline and so lengthen it;
    /// this call does not. With
    /// [`ttl_jitter`](crate::CacheBuilder::ttl_jitter), `d` is the spread
    /// lifetime the entry actually has.
    ///
    /// **Locking:** takes the key's shard shared, as `peek` does.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    /// cache.insert_with_ttl("session", 1, Duration::from_secs(30));
    /// cache.insert("config", 2);
    /// clock.advance(Duration::from_secs(10));
    /// assert_eq!(cache.expires_in("session"), Some(Some(Duration::from_secs(20))));
    /// assert_eq!(cache.expires_in("config"), Some(None)); // never expires
    /// assert_eq!(cache.expires_in("other"), None); // absent
    /// clock.advance(Duration::from_secs(20));
    /// assert_eq!(cache.expires_in("session"), None); // expired
    /// assert_eq!(cache.stats().hits() + cache.stats().misses(), 0);
    /// ```
    pub fn expires_in<Q>(&self, key: &Q) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.expires_in(key)
    }

    /// Gives `key`'s live entry a new lifetime, `ttl` from now, without
    /// rewriting its value (a cache's time to idle still applies: see
    /// below); returns whether there was one. Redis's
    /// `EXPIRE key`: extend a session, or cut an entry's life short. An
    /// absent key, or an entry expired and not yet reaped, is left as it
    /// is (never revived) and the answer is `false`.
    ///
    /// As with [`insert_with_ttl`](Self::insert_with_ttl), `ttl` is kept
    /// exactly, whatever the cache's own settings:
    /// [`ttl_jitter`](crate::CacheBuilder::ttl_jitter) does not spread it,
    /// and a `ttl` too long for the clock to hold (over about 36 years)
    /// means no deadline at all. A zero `ttl` expires the entry at once,
    /// as `EXPIRE key 0` deletes a Redis key: it is removed now, and the
    /// listener hears of it as [`Expired`](RemovalCause::Expired), once.
    ///
    /// It is neither a read nor a write: no hit or miss is counted, the
    /// eviction policy is not told, the value is not replaced (the
    /// listener hears nothing, but for a zero `ttl`), and no expiry hook
    /// runs. What comes after is as usual: with a
    /// [time to idle](crate::CacheBuilder::time_to_idle), the entry's idle
    /// time restarts now, as after a write, and it expires at the earlier
    /// of `ttl` and the idle time from now, reads sliding the idle
    /// deadline up to `ttl`; with [`Expiry`] hooks, later reads and
    /// updates run them, shown the new time left, and they may move it
    /// again. A read hook's answer still pending for the entry (its read
    /// returned, the hook running) is dropped, as it is when a write
    /// re-times the entry meanwhile.
    ///
    /// **Locking:** takes the key's shard exclusively, like a write, to
    /// move the entry on the timing wheel; no user code runs but the
    /// key's `Hash` and `Eq` (and, for a zero `ttl`, the listener, after
    /// the unlock). A deadline earlier than the maintenance thread's next
    /// wake-up wakes it, so the entry is reaped and heard of on time in
    /// an otherwise idle cache.
    ///
    /// # Concurrent calls on the same key
    ///
    /// Writes of the key (an insert, a remove) and `expire_in` take the
    /// shard's lock in turn: the lifetime goes to the entry live when
    /// `expire_in` has the lock, judged by the time read under it (an
    /// entry that expired while it waited is not revived), and a later
    /// insert gives its value a lifetime of its own.
    ///
    /// A [`get_with`](Self::get_with) (or any loader) loading the key
    /// began on a miss: until its value is cached, `expire_in` finds
    /// nothing to change and returns `false`, unless an insert landed
    /// meanwhile, whose value it then times (that insert, not
    /// `expire_in`, keeps the load's value out). `expire_in` is not one of
    /// the writes that keep a load's value out (see "Writes during the
    /// load" there): it changes no value, and the loaded one is cached
    /// with the lifetime the cache gives it.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// cache.insert("session", 7);
    /// clock.advance(Duration::from_secs(50));
    /// // The user is still active: give the session another ten minutes.
    /// assert!(cache.expire_in("session", Duration::from_secs(600)));
    /// clock.advance(Duration::from_secs(500));
    /// assert_eq!(cache.get("session"), Some(7));
    /// assert_eq!(cache.expires_in("session"), Some(Some(Duration::from_secs(100))));
    /// // Absent keys are not created.
    /// assert!(!cache.expire_in("other", Duration::from_secs(600)));
    /// assert_eq!(cache.get("other"), None);
    /// ```
    pub fn expire_in<Q>(&self, key: &Q, ttl: Duration) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.retime(key, |_, _| Some(Some(ttl)))
    }

    /// Takes away `key`'s hard deadline (its time to live), without
    /// rewriting its value; returns whether there was a live entry. Redis's
    /// `PERSIST key`. An absent key, or an entry expired and not yet
    /// reaped, is left as it is (never revived) and the answer is `false`.
    ///
    /// Everything [`expire_in`](Self::expire_in) says holds, with no hard
    /// deadline in place of `ttl`: the entry never expires in a cache
    /// without a [time to idle](crate::CacheBuilder::time_to_idle), but
    /// with one it still expires once left unread for that long (its idle
    /// time restarting now, so [`expires_in`](Self::expires_in) reports the
    /// idle time, not `Some(None)`), and [`Expiry`] hooks may give it a
    /// lifetime again on a later read or update.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// cache.insert("pinned", 1);
    /// assert!(cache.persist("pinned"));
    /// assert_eq!(cache.expires_in("pinned"), Some(None));
    /// clock.advance(Duration::from_secs(3600));
    /// assert_eq!(cache.get("pinned"), Some(1));
    /// ```
    ///
    /// With a time to idle, a persisted entry still expires when left
    /// unread:
    ///
    /// ```
    /// use larder::{Cache, clock::MockClock};
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let idle = Duration::from_secs(30 * 60);
    /// let sessions = Cache::builder()
    ///     .time_to_idle(idle)
    ///     .time_to_live(Duration::from_secs(12 * 3600))
    ///     .clock(clock.clone())
    ///     .build()
    ///     .unwrap();
    /// sessions.insert("admin", 1);
    /// assert!(sessions.persist("admin"));
    /// assert_eq!(sessions.expires_in("admin"), Some(Some(idle))); // not `Some(None)`
    /// clock.advance(idle);
    /// assert_eq!(sessions.get("admin"), None);
    /// ```
    pub fn persist<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.retime(key, |_, _| Some(None))
    }

    /// See `Inner::expires_in_by`: [`expires_in`](Self::expires_in) for a
    /// value that keeps a deadline of its own (a loading cache's record).
    pub(crate) fn expires_in_by<Q>(
        &self,
        key: &Q,
        own: impl FnOnce(&V, &mut Now<'_>) -> Option<u64>,
    ) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.expires_in_by(key, own)
    }

    /// See `Inner::retime`: [`expire_in`](Self::expire_in) and
    /// [`persist`](Self::persist) with the lifetime decided, and the
    /// value's own record of it changed, under the lock.
    pub(crate) fn retime_with<Q>(
        &self,
        key: &Q,
        lifetime: impl FnOnce(u64, &mut V) -> Option<Option<Duration>>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.retime(key, lifetime)
    }
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// [`Cache::expires_in`]: the time left at one reading of the clock,
    /// the one the entry is judged live by.
    fn expires_in<Q>(&self, key: &Q) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.expires_in_by(key, |_, _| Some(NEVER))
    }

    /// [`expires_in`](Self::expires_in), with `own` shown the live
    /// entry's value and the time (read if it asks), under the shard's
    /// shared lock: it returns a deadline the value keeps for itself
    /// ([`NEVER`] for none; the answer is the earlier of it and the
    /// entry's), or `None` to have the entry counted as not live. `own` is
    /// larder's own code.
    fn expires_in_by<Q>(
        &self,
        key: &Q,
        own: impl FnOnce(&V, &mut Now<'_>) -> Option<u64>,
    ) -> Option<Option<Duration>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        let shard = cell.read();
        let id = shard.lookup(hash, key, &mut now)?;
        let deadline = shard.deadline(id).min(own(shard.value(id), &mut now)?);
        drop(shard);
        // `now` was read under the lock if either deadline is one.
        Some(
            (deadline != NEVER)
                .then(|| remaining(now.get(), deadline))
                .flatten(),
        )
    }

    /// [`Cache::expire_in`] (`ttl`) and [`Cache::persist`] (`None`), with
    /// the lifetime given by `lifetime`: shown the key's live entry's value
    /// and the time under the shard's exclusive lock, it returns the new
    /// lifetime (`Some(ttl)`) and may change larder's own bookkeeping in
    /// the value to match (see [`Shard::value_mut`](crate::shard::Shard::value_mut)),
    /// or returns `None` to leave the entry as it is. Gives the entry the
    /// lifetime, or removes it as expired for a zero `ttl`; returns whether
    /// it was given one. Not a write for a load of the key: the load began
    /// on a miss, which this call found too.
    fn retime<Q>(
        &self,
        key: &Q,
        lifetime: impl FnOnce(u64, &mut V) -> Option<Option<Duration>>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        // Delivered once the shard is unlocked.
        let mut removed = Delivery::new(self.listener.as_ref());
        let mut shard = cell.write();
        // The time under the lock, which the entry is judged live by and
        // the lifetime counts from: read before it, an entry that expired
        // while this call waited for the lock would be judged live and
        // revived, after readers had found it expired.
        let mut now = Now::new(&self.timing.clock);
        let Some(id) = shard.lookup(hash, key, &mut now) else {
            return false;
        };
        let Some(ttl) = lifetime(now.get(), shard.value_mut(id)) else {
            return false;
        };
        if ttl == Some(Duration::ZERO) {
            if let Some((key, value, cause)) = shard.expire_now(hash, key, &mut now) {
                drop(shard);
                removed.push(key, value, cause);
            }
            return true;
        }
        let deadline = self.timing.on_retime(now.get(), ttl);
        shard.retime(id, deadline);
        drop(shard);
        if deadline.at != NEVER {
            // Unlocked first, as in `land`.
            self.maintenance.wake_for(deadline.at);
        }
        true
    }
}
