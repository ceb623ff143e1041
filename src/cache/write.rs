//! The write path: [`Cache::insert`]'s work and the conditional inserts
//! (`insert_if`, `insert_stamped_if`) that loads, the entry API and the
//! loading cache build on; the expiry hooks asked before the shard lock,
//! and the locked half that lands a write.

use std::{hash::Hash, time::Duration};

use super::{Cache, Inner, Verdict};
use crate::{
    Expiry,
    expiry::{Deadline, Hooked, NEVER, remaining},
    notify::{Delivery, Removed},
    shard::{Now, ShardCell, ShardWriteGuard, Stripe, Write},
};

/// How many times one write asks the expiry hooks at most, when writes of
/// its key keep changing the entry they were shown (see
/// `Inner::insert_keyed`).
const HOOK_ATTEMPTS: usize = 8;

/// The `stamp` of a write that sets no record in its value (see
/// `Inner::insert_keyed`): every write but a loading cache's.
type Unstamped<V> = fn(&mut V, &mut Now<'_>) -> Option<Duration>;

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Whether an insert runs user code that may panic before it stores the
    /// value: a weigher or expiry hooks.
    pub(crate) fn insert_runs_user_code(&self) -> bool {
        self.inner.weigher.is_some() || self.inner.timing.hooks().is_some()
    }

    /// See `Inner::insert_if`; what it removes goes into `removed`.
    pub(crate) fn insert_if(
        &self,
        key: K,
        value: V,
        ttl: Option<Duration>,
        decide: impl FnOnce(Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        self.inner.insert_if(key, value, ttl, decide, removed)
    }

    /// See `Inner::insert_stamped_if`: [`insert_if`](Self::insert_if) of
    /// a value whose own record of when it was stored (a loading cache's)
    /// `stamp` sets under the shard's lock, returning the entry's time to
    /// live.
    pub(crate) fn insert_stamped_if(
        &self,
        key: K,
        value: V,
        stamp: impl FnOnce(&mut V, &mut Now<'_>) -> Option<Duration>,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        self.inner
            .insert_stamped_if(key, value, stamp, decide, removed)
    }
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A user's insert: a load of the key under way began before it and
    /// will not cache its older value (see [`publish`](Self::publish)).
    /// The flight is marked under the shard lock, where the leader's fill
    /// looks at the mark: marked before the lock, an insert that found no
    /// flight yet could land while a load begun since runs, and that load
    /// then cached its value over the insert's.
    pub(super) fn insert(&self, key: K, value: V, ttl: Option<Duration>) {
        // Delivered once the shard is unlocked, even if a key's `Hash`
        // panics while the insert evicts.
        let mut removed = Delivery::new(self.listener.as_ref());
        let decide = |key: &K, _: Option<&V>, _: Stripe<'_>| {
            self.flights.written(key);
            Verdict::Insert
        };
        self.insert_keyed(key, value, ttl, None::<Unstamped<V>>, decide, &mut removed);
    }

    /// Inserts unless `decide`, shown the value under the key (if any, live
    /// or expired but not yet reaped) and the key's write-count stripe with
    /// the shard locked, says otherwise: [`Verdict::Skip`] leaves the shard
    /// as it is, [`Verdict::Remove`] removes the key's entry. `decide` is
    /// larder's own code, never the user's. Returns whether the value went in.
    /// What leaves the cache goes into `removed`, which the caller made
    /// (a [`Delivery`]) and delivers when it drops it.
    pub(super) fn insert_if(
        &self,
        key: K,
        value: V,
        ttl: Option<Duration>,
        decide: impl FnOnce(Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let decide = |_: &K, found: Option<&V>, stripe: Stripe<'_>| decide(found, stripe);
        self.insert_keyed(key, value, ttl, None::<Unstamped<V>>, decide, removed)
    }

    /// [`insert_if`](Self::insert_if) with `decide` also shown the key.
    ///
    /// Expiry hooks run before the shard lock, shown the entry as they
    /// find it. If a write of the key changes it before the lock is taken
    /// (creates, removes or re-times it), or it expires, they are asked
    /// again, up to
    /// [`HOOK_ATTEMPTS`] times in all (then the last answer stands): an
    /// update's answer never times an entry the write creates, nor a
    /// create's one it updates.
    ///
    /// `stamp`, if given, is shown the value and the time under the
    /// shard's lock and returns the entry's time to live in place of
    /// `ttl`, setting larder's own record of that time kept in the value
    /// (a loading cache's `Loaded::loaded_at` and `expires_at`), so that
    /// the record and the entry's deadline count from the same instant.
    /// It is larder's own code, for a cache without expiry hooks.
    fn insert_keyed(
        &self,
        key: K,
        mut value: V,
        ttl: Option<Duration>,
        stamp: Option<impl FnOnce(&mut V, &mut Now<'_>) -> Option<Duration>>,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let (hash, cell) = self.shards.cell_for(&key);
        let weight = self.weigher.as_ref().map_or(1, |w| w(&key, &value));
        if let (None, Some((hooks, _))) = (ttl, self.timing.hooks()) {
            debug_assert!(stamp.is_none(), "no hook times a stamped write");
            return self.insert_hooked(hooks, cell, hash, key, value, weight, decide, removed);
        }
        let shard = cell.write();
        // The time under the lock, where the write lands: the entry it
        // replaces is judged live or expired by it, and the lifetime counts
        // from it. Read before, a write that waited for the lock while the
        // old value expired reported it `Replaced` (after readers had found
        // it expired) and gave its own value a deadline that could have
        // passed by the time it landed.
        let mut now = Now::new(&self.timing.clock);
        // A value that keeps its own record of that time has it set here,
        // from the same reading as its entry's deadline.
        let ttl = match stamp {
            Some(stamp) => stamp(&mut value, &mut now),
            None => ttl,
        };
        let deadline = if ttl.is_some() || self.timing.is_timed() {
            self.timing.on_write(now.get(), ttl, None)
        } else {
            Deadline::NONE
        };
        let write = Write {
            hash,
            key,
            value,
            weight,
            deadline,
        };
        self.land(cell, shard, now, write, decide, removed)
    }

    /// [`insert_if`](Self::insert_if) of a value that keeps its own record
    /// of when it was stored: `stamp` sets it, and returns the entry's
    /// time to live, at the time read under the shard's lock (see
    /// [`insert_keyed`](Self::insert_keyed)). For a cache without expiry
    /// hooks (a loading cache's inner cache never has them).
    fn insert_stamped_if(
        &self,
        key: K,
        value: V,
        stamp: impl FnOnce(&mut V, &mut Now<'_>) -> Option<Duration>,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        self.insert_keyed(key, value, None, Some(stamp), decide, removed)
    }

    /// [`insert_keyed`](Self::insert_keyed) for a cache with expiry hooks
    /// and a write given no TTL of its own. The hooks run before the shard
    /// lock, shown the entry as they find it. If a write of the key changes
    /// it before the lock is taken (creates, removes or re-times it), or it
    /// expires meanwhile, they are asked again, up to [`HOOK_ATTEMPTS`]
    /// times in all (then the last answer stands): an update's answer never
    /// times an entry the write creates, nor a create's one it updates. The
    /// lifetime the answer gives counts from the write's landing, the time
    /// read again under the lock. (A path of its own, taken
    /// only by timed writes: in one loop with every write, it cost an
    /// untimed insert 20 instructions.)
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn insert_hooked(
        &self,
        hooks: &dyn Expiry<K, V>,
        cell: &ShardCell<K, V>,
        hash: u64,
        key: K,
        value: V,
        weight: u32,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let mut attempt = 1;
        loop {
            let (hooked, shown) = {
                let mut asked = Now::new(&self.timing.clock);
                Self::write_hook(hooks, cell, hash, &key, &value, &mut asked)
            };
            let shard = cell.write();
            // The time again, under the lock: the entry the hook was shown
            // may have expired while it ran, making this write a create.
            let mut now = Now::new(&self.timing.clock);
            if attempt == HOOK_ATTEMPTS || shard.live_deadline(hash, &key, &mut now) == shown {
                let deadline = self.timing.on_write(now.get(), None, Some(hooked));
                let write = Write {
                    hash,
                    key,
                    value,
                    weight,
                    deadline,
                };
                return self.land(cell, shard, now, write, decide, removed);
            }
            drop(shard);
            attempt += 1;
        }
    }

    /// The create or update hook's verdict for a write (the cache has
    /// hooks), with the deadline of the live entry it was shown (`None`:
    /// none).
    fn write_hook(
        hooks: &dyn Expiry<K, V>,
        cell: &ShardCell<K, V>,
        hash: u64,
        key: &K,
        value: &V,
        now: &mut Now<'_>,
    ) -> (Hooked, Option<u64>) {
        let current = cell.read().live_deadline(hash, key, now);
        let now = now.get();
        let hooked = match current {
            Some(deadline) => {
                let before = remaining(now, deadline);
                let after = hooks.expire_after_update(key, value, before);
                if after == before {
                    Hooked::Kept(deadline)
                } else {
                    Hooked::After(after)
                }
            }
            None => Hooked::After(hooks.expire_after_create(key, value)),
        };
        (hooked, current)
    }

    /// The locked half of a write: shows `decide` the key's value, then
    /// inserts, skips or removes as it says, collecting what leaves into
    /// `removed` (made by the caller before it locked `shard`, so that it
    /// delivers after the unlock, unwinding included).
    #[inline(always)]
    fn land<'c>(
        &self,
        cell: &'c ShardCell<K, V>,
        mut shard: ShardWriteGuard<'c, K, V>,
        mut now: Now<'_>,
        write: Write<K, V>,
        decide: impl FnOnce(&K, Option<&V>, Stripe<'_>) -> Verdict,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let hash = write.hash;
        shard.prefetch_for_write(hash);
        let found = shard.find(hash, &write.key);
        let stripe = cell.stripe(hash, &shard);
        match decide(&write.key, found.map(|id| shard.value(id)), stripe) {
            Verdict::Insert => {
                let deadline = write.deadline.at;
                if found.is_none() {
                    shard.tell_reads(|| cell.hits());
                }
                shard.insert(found, write, &mut now, removed);
                drop(shard);
                if deadline != NEVER {
                    // Unlocked first: a maintenance thread that looks at
                    // the wheel after this sees the deadline; one that
                    // looked before has published when it wakes.
                    self.maintenance.wake_for(deadline);
                }
                true
            }
            // The write's key and value, not stored, drop with `write`
            // after this function's body: the shard is unlocked first, as
            // their `Drop` is user code that may use the cache.
            Verdict::Skip => {
                drop(shard);
                false
            }
            Verdict::Remove => {
                let taken = shard.remove(hash, &write.key, &mut now);
                drop(shard);
                if let Some((key, value, cause)) = taken {
                    removed.push(key, value, cause);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Cache;

    /// The read hits the policy was last told, in the cache's only shard.
    fn told(cache: &Cache<u64, u64>) -> u64 {
        let cell = cache.inner.shards.iter().next().expect("one shard");
        cell.read().policy().reads()
    }

    /// A new key's write tells a small cache's policy the read hits its
    /// shard's lock has counted (the clock of its readmissions), timed
    /// reads' included; the stats count the same hits.
    #[test]
    fn a_new_key_tells_a_small_caches_policy_its_shards_read_hits() {
        for ttl in [None, Some(Duration::from_secs(60))] {
            let mut builder = Cache::builder().max_capacity(100).num_shards(1);
            if let Some(ttl) = ttl {
                builder = builder.time_to_live(ttl);
            }
            let cache: Cache<u64, u64> = builder.build().unwrap();
            cache.insert(1, 1);
            for _ in 0..7 {
                assert_eq!(cache.get(&1), Some(1));
            }
            assert_eq!(cache.get(&2), None);
            assert_eq!(told(&cache), 0, "told only on a write ({ttl:?})");
            cache.insert(1, 10);
            assert_eq!(told(&cache), 0, "a replacement is not a new key ({ttl:?})");
            cache.insert(2, 2);
            assert_eq!(told(&cache), 7, "{ttl:?}");
            assert_eq!((cache.stats().hits(), cache.stats().misses()), (7, 1));
        }
        // A large cache keeps no readmissions and is not asked.
        let cache: Cache<u64, u64> = Cache::builder()
            .max_capacity(100_000)
            .num_shards(1)
            .build()
            .unwrap();
        cache.insert(1, 1);
        assert_eq!(cache.get(&1), Some(1));
        cache.insert(2, 2);
        assert_eq!(told(&cache), 0);
    }
}
