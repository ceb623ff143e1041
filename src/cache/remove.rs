//! Removal: [`Cache::remove`], [`Cache::invalidate`],
//! [`Cache::invalidate_all`] and [`Cache::invalidate_entries_if`], and the
//! conditional removals (`remove_if`, `remove_if_as`) that the entry API
//! and the loading cache build on.

use std::{borrow::Borrow, hash::Hash};

use super::{Cache, Inner};
use crate::{
    RemovalCause,
    notify::{Delivery, Removed},
    shard::{Now, ShardCell, Stripe},
};

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Removes `key`'s entry and returns its value, if it was live. The
    /// listener sees `Explicit` (or `Expired` for an entry already expired).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, "a");
    /// assert_eq!(cache.remove(&1), Some("a"));
    /// assert_eq!(cache.remove(&1), None);
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove(key, true)
    }

    /// Removes `key`'s entry, if any, discarding its value.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, "a");
    /// cache.invalidate(&1);
    /// assert!(!cache.contains_key(&1));
    /// ```
    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove(key, false);
    }

    /// Removes every entry (the listener sees each as `Explicit`, or
    /// `Expired` if it had already expired).
    ///
    /// The shards are emptied one after another, each under its lock, and
    /// their removals delivered in between: every entry written before the
    /// call began is gone when it returns, but one written concurrently
    /// may stay (it landed in a shard already emptied) or go (one not yet
    /// reached), as in moka. A load of any key begun before the call does
    /// not cache its value (see [`get_with`](Self::get_with)).
    ///
    /// The shards keep their storage: a bounded cache the room reserved for
    /// its bound, an unbounded one what its largest fill grew it to (about
    /// 45 MB resident after a million `u64` entries, measured on 7
    /// December), reused by the entries that come next and given back when
    /// the cache is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// cache.insert(1, 1);
    /// cache.insert(2, 2);
    /// cache.invalidate_all();
    /// assert_eq!(cache.entry_count(), 0);
    /// ```
    pub fn invalidate_all(&self) {
        // No load begun before this call caches its value after it.
        self.inner.flights.written_all();
        for cell in self.inner.shards.iter() {
            let mut removed = Removed::default();
            {
                let mut shard = cell.write();
                // Nor does a loading cache's (see `load::guard`).
                cell.bump_all(&shard);
                // The time read under this shard's lock, as `remove` reads
                // it: an entry that expired while earlier shards were
                // cleared (or their listeners ran) is heard of as expired.
                shard.clear(self.inner.timing.clock.now(), &mut removed);
            }
            self.inner.deliver(removed);
        }
    }

    /// Removes every live entry for which `predicate` returns true, before
    /// returning (moka's `invalidate_entries_if` records the predicate and
    /// removes lazily; here nothing needs enabling and nothing is returned).
    ///
    /// The predicate runs with no lock held, on clones of each shard's
    /// entries taken one shard at a time. If a shard is written while its
    /// clones are being tested, they are taken and tested again (up to 8
    /// times; after that, the keys found on the last pass are removed, whatever
    /// they hold by then). So the predicate may be called more than once for
    /// an entry, and may use the cache, this one included: its own writes
    /// to the shard being tested count as such writes. Each shard is tested
    /// as it is when the call reaches it, so an entry written during the
    /// call into a shard not yet reached is tested too (moka tests only the
    /// entries written before its call).
    ///
    /// # Panics
    ///
    /// If `predicate` panics, the panic reaches the caller and the call
    /// stops there: the shards already done keep their removals (the
    /// listener has been told of them), the shard being tested and the
    /// shards after it are left as they were, and the cache stays usable.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(100);
    /// for i in 0..10 { cache.insert(i, i * 10); }
    /// cache.invalidate_entries_if(|_k, v| *v >= 50);
    /// assert_eq!(cache.entry_count(), 5);
    /// ```
    ///
    /// A predicate that panics removes nothing from the shard it was
    /// testing (here the only one):
    ///
    /// ```
    /// use std::panic::{AssertUnwindSafe, catch_unwind};
    /// let cache = larder::Cache::builder().num_shards(1).build().unwrap();
    /// for i in 0..10 { cache.insert(i, i); }
    /// let panicked = catch_unwind(AssertUnwindSafe(|| {
    ///     cache.invalidate_entries_if(|k, _| if *k == 5 { panic!("bad key") } else { true })
    /// }));
    /// assert!(panicked.is_err());
    /// assert_eq!(cache.entry_count(), 10);
    /// cache.invalidate_entries_if(|k, _| *k != 5);
    /// assert_eq!(cache.iter().collect::<Vec<_>>(), [(5, 5)]);
    /// ```
    pub fn invalidate_entries_if(&self, predicate: impl Fn(&K, &V) -> bool)
    where
        K: Clone,
    {
        for cell in self.inner.shards.iter() {
            self.inner.invalidate_shard_if(cell, &predicate);
        }
    }

    /// See `Inner::remove_if`; what it removes goes into `removed`, as
    /// `Explicit` if it was live.
    pub(crate) fn remove_if<Q>(
        &self,
        key: &Q,
        doomed: impl FnOnce(Option<&V>, Stripe<'_>) -> bool,
        removed: &mut Removed<K, V>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner
            .remove_if(key, doomed, RemovalCause::Explicit, removed)
    }

    /// [`remove_if`](Self::remove_if) with the cause a live entry goes
    /// with (`Replaced` for a write-around's put, which supersedes it).
    pub(crate) fn remove_if_as<Q>(
        &self,
        key: &Q,
        doomed: impl FnOnce(Option<&V>, Stripe<'_>) -> bool,
        live_cause: RemovalCause,
        removed: &mut Removed<K, V>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove_if(key, doomed, live_cause, removed)
    }
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Removes `key`'s entry; returns its value if it was live and
    /// `returned` asks for it (`remove`; `invalidate` makes no clone).
    fn remove<Q>(&self, key: &Q, returned: bool) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        // Whether or not the key is cached: it may be loading.
        self.flights.written(key);
        // Delivers once dropped, after the value is cloned for the caller,
        // and also if that clone (user code) panics.
        let mut removed = Delivery::new(self.listener.as_ref());
        let (key, value, cause) = cell.write().remove(hash, key, &mut now)?;
        let returned = returned && cause == RemovalCause::Explicit;
        if self.listener.is_none() {
            return returned.then_some(value);
        }
        removed.push(key, value, cause);
        if returned {
            removed.first_value().cloned()
        } else {
            None
        }
    }

    /// Removes `key`'s entry (live, or expired but not yet reaped) if
    /// `doomed`, shown its value (if any) and the key's write-count stripe
    /// with the shard locked, says so. `doomed` is larder's own code, never
    /// the user's. Returns whether it removed a live entry (one
    /// [`peek`](Self::peek) would have returned). The entry goes into
    /// `removed`, for the caller to deliver, with cause `live_cause` if it
    /// was live, else `Expired`.
    fn remove_if<Q>(
        &self,
        key: &Q,
        doomed: impl FnOnce(Option<&V>, Stripe<'_>) -> bool,
        live_cause: RemovalCause,
        removed: &mut Removed<K, V>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        debug_assert_ne!(live_cause, RemovalCause::Expired, "a live entry's cause");
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        let taken = {
            let mut shard = cell.write();
            let found = shard.find(hash, key);
            let stripe = cell.stripe(hash, &shard);
            if doomed(found.map(|id| shard.value(id)), stripe) && found.is_some() {
                shard.remove_as(hash, key, &mut now, live_cause)
            } else {
                None
            }
        };
        let Some((key, value, cause)) = taken else {
            return false;
        };
        removed.push(key, value, cause);
        cause != RemovalCause::Expired
    }

    fn invalidate_shard_if(&self, cell: &ShardCell<K, V>, predicate: &impl Fn(&K, &V) -> bool)
    where
        K: Clone,
    {
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let now = self.timing.clock.now();
            let (entries, version) = {
                let shard = cell.read();
                (shard.snapshot(now), shard.version())
            };
            // Hashed here, not under the lock: `Hash` is user code, and a
            // panic there would drop removals before the listener saw them.
            let doomed: Vec<(u64, K)> = entries
                .into_iter()
                .filter(|(k, v)| predicate(k, v))
                .map(|(k, _)| (self.shards.hash(&k), k))
                .collect();
            // Delivered once the shard is unlocked, even if a key's `Hash`
            // panics in a removal after others were made.
            let mut removed = Delivery::new(self.listener.as_ref());
            {
                let mut shard = cell.write();
                if shard.version() != version && attempt < ATTEMPTS {
                    continue;
                }
                let mut now = Now::new(&self.timing.clock);
                for (hash, key) in &doomed {
                    if let Some((k, v, cause)) = shard.remove(*hash, key, &mut now) {
                        // Kept for the listener first: marking hashes the
                        // key (user code), and an entry dropped by a panic
                        // there was counted removed but never delivered.
                        removed.push(k, v, cause);
                        // Under the lock, where a load's fill looks (as an
                        // insert marks it), and only for a key this pass
                        // removes: marked before a pass thrown away above,
                        // a load begun since its copy was kept out.
                        self.flights.written(key);
                    }
                }
            }
            drop(removed);
            return;
        }
    }
}
