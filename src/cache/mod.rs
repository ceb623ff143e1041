//! [`Cache`]: the thin public face. Each method finds the key's shard and
//! delegates; the work lives in [`shard`](crate::shard),
//! [`load`](crate::load) and [`maintenance`](crate::maintenance); the
//! single-flight loaders (`get_with` and its kin) are in [`loads`], the
//! everyday methods in [`basics`], the rest in a file per concern.

// rustdoc lists the impl blocks of `Cache` in these modules by the
// modules' names, A to Z, then this file's own: so the everyday methods
// (`basics`) come first in the docs.
mod basics;
mod iter;
mod loads;
mod remove;
mod ttl;
mod write;

pub use iter::Iter;
pub(crate) use loads::LoadRecord;

use std::{
    borrow::Borrow,
    fmt,
    hash::Hash,
    panic::{AssertUnwindSafe, RefUnwindSafe, UnwindSafe, catch_unwind, resume_unwind},
    sync::Arc,
    time::Duration,
};

use crate::{
    CacheStats,
    builder::{Policy, Weigher},
    expiry::{Hooked, NEVER, Timing, clock::saturating_nanos, remaining},
    load::{flight::Flights, guard::Seen},
    maintenance::{INTERVAL, LONGEST_SLEEP, Maintained, Maintenance},
    notify::{Delivery, Listener, Removed},
    shard::{Now, Placeholder, ShardCell, Shards, Sighting},
    stats::{LoadCounters, Lookups},
};

/// A concurrent, bounded, expiring in-memory cache.
///
/// `Cache` is a cheap handle: clones share the same entries. It is `Send` and
/// `Sync`. Reads return clones of values (wrap large values in an `Arc`); no
/// method hands out a guard, so no caller can hold a lock of the cache.
///
/// **Locking:** entries are spread over shards, each behind a
/// reader-writer lock. A read hit takes its shard's lock shared; writes,
/// evictions and reaping take it exclusive for a bounded time. User code
/// (weigher, expiry hooks, listener, loaders, predicates) always runs with no
/// lock held. The exceptions are the key and value types' own `Hash`, `Eq`
/// and `Clone`, which run under a shard's lock (a read clones its value
/// there; a write hashes keys again as its shard's table grows or an entry
/// moves): they must not call back into the same cache, and if one panics
/// the lock is released, the removals made so far are notified, and the
/// shard is left consistent: as it was, or, when a key's `Hash` panics
/// while an insert's eviction policy chooses what to evict, with that
/// insert and its evictions finished first (the policy goes on with a
/// stand-in hash, which only blurs its frequency counts) and then the
/// panic raised to the caller. A stored key whose `Hash` comes to panic
/// on every call is a logic error, as it is for `std`'s `HashMap`: its
/// shard stays consistent, but every write that must unlink that key
/// (reaping it, moving its entry in a removal, evicting it once the shard
/// is full) raises the panic; [`invalidate_all`](Cache::invalidate_all),
/// which hashes no key, clears it.
///
/// # Examples
///
/// ```
/// use larder::Cache;
/// use std::sync::Arc;
///
/// let cache: Cache<u64, Arc<String>> = Cache::new(10_000);
/// cache.insert(7, Arc::new("seven".to_string()));
/// assert_eq!(cache.get(&7).as_deref().map(String::as_str), Some("seven"));
/// assert_eq!(cache.get(&8), None);
/// ```
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

// A panic in user code (a weigher, an expiry hook, a listener, a loader, a
// key's `Hash` or `Clone`, a value's `Clone`) leaves the cache consistent
// and usable: locks are released, removals are still delivered, flights
// are handed on (`tests/panic_safety.rs`). So a handle may cross
// `catch_unwind` without `AssertUnwindSafe`, as a `Mutex` may.
impl<K: RefUnwindSafe, V: RefUnwindSafe> UnwindSafe for Cache<K, V> {}
impl<K: RefUnwindSafe, V: RefUnwindSafe> RefUnwindSafe for Cache<K, V> {}

impl<K, V> fmt::Debug for Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("entry_count", &self.entry_count())
            .field("weighted_size", &self.weighted_size())
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

/// What the builder hands to [`Cache::from_parts`].
pub(crate) struct Parts<K, V> {
    pub(crate) shards: usize,
    pub(crate) capacity: u64,
    pub(crate) timing: Timing<K, V>,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) listener: Option<Listener<K, V>>,
    /// Values the listener is not told of, whose removals go uncounted.
    pub(crate) placeholder: Option<Placeholder<V>>,
    pub(crate) policy: Policy,
}

/// Everything the handles share.
///
/// Laid out in the order written (`repr(C)`), so that what every read
/// looks at first, the shards' table pointer, mask and hasher, opens the
/// structure, whose alignment (64, from the striped counters) puts it at
/// the start of a cache line, with the timing after it: a field added
/// elsewhere no longer moves them. When `Maintenance` grew by a
/// word the compiler's own order shifted these fields and the compare
/// bench's get hit fell from a mean of 1.15x quick_cache's rate to 1.08x
/// (13 and 26 paired runs, alternated); in this order it measured 1.17x
/// (10 runs; 8 of 10 pairs above the other order).
#[repr(C)]
struct Inner<K, V> {
    shards: Shards<K, V>,
    timing: Timing<K, V>,
    weigher: Option<Weigher<K, V>>,
    listener: Option<Listener<K, V>>,
    flights: Arc<Flights<K, V>>,
    lookups: Lookups,
    loads: LoadCounters,
    maintenance: Maintenance,
    /// The settings, for [`Cache::policy`]; read by nothing else.
    policy: Policy,
}

/// What a conditional insert does, decided with the shard locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Put the value in.
    Insert,
    /// Leave the shard as it is.
    Skip,
    /// Remove whatever the key holds.
    Remove,
}

impl<K, V> Drop for Inner<K, V> {
    fn drop(&mut self) {
        self.maintenance.stop();
    }
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn from_parts(parts: Parts<K, V>) -> Self {
        let now = parts.timing.clock.now();
        let weighted = parts.weigher.is_some();
        let sliding = parts.timing.tti().is_some();
        let timed = parts.timing.is_timed();
        let inner = Arc::new(Inner {
            shards: Shards::new(
                parts.shards,
                parts.capacity,
                weighted,
                timed,
                sliding,
                parts.placeholder,
                now,
            ),
            timing: parts.timing,
            weigher: parts.weigher,
            listener: parts.listener,
            flights: Arc::default(),
            lookups: Lookups::default(),
            loads: LoadCounters::default(),
            maintenance: Maintenance::new(),
            policy: parts.policy,
        });
        inner.maintenance.start(&inner);
        Cache { inner }
    }

    /// Nanoseconds on the cache's clock (the mock one in tests).
    pub(crate) fn now(&self) -> u64 {
        self.inner.timing.clock.now()
    }

    /// The value under `key` even if expired, as long as it has not been
    /// reaped; no side effects.
    pub(crate) fn peek_present(&self, key: &K) -> Option<V> {
        let (hash, cell) = self.inner.shards.cell_for(key);
        let shard = cell.read();
        shard.find(hash, key).map(|id| shard.value(id).clone())
    }

    /// [`peek`](Self::peek) of what `pick`, shown the live entry's value
    /// and the time (read if it asks) under the shard's shared lock, takes
    /// from it: `None` if there is no live entry or `pick` finds nothing.
    /// For a value that keeps a deadline of its own (a loading cache's
    /// record), judged by the time the entry is judged live by: a reading
    /// taken after the unlock would judge a copy that `retime_with` may
    /// have changed in place since. `pick` is larder's own code (it may
    /// clone the value, as `peek` does under the lock).
    pub(crate) fn peek_by<Q, R>(
        &self,
        key: &Q,
        pick: impl FnOnce(&V, &mut Now<'_>) -> Option<R>,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.peek_by(key, pick)
    }

    /// An empty buffer of removals for [`insert_if`](Self::insert_if) and
    /// [`remove_if`](Self::remove_if), which delivers them to the listener
    /// when dropped: the caller chooses when, e.g. only once a load's flight
    /// is closed.
    pub(crate) fn delivery(&self) -> Delivery<'_, K, V> {
        Delivery::new(self.inner.listener.as_ref())
    }

    /// The cache's single-flight table, which the entry API's computes
    /// lead as loads do (see [`entry`](crate::entry)).
    pub(crate) fn flights(&self) -> &Arc<Flights<K, V>> {
        &self.inner.flights
    }

    /// The write count of `key`'s stripe, read without a lock: what a load
    /// or a write takes before it reads or changes the store (see
    /// [`guard`](crate::load::guard)).
    pub(crate) fn seen(&self, key: &K) -> Seen {
        let (hash, cell) = self.inner.shards.cell_for(key);
        Seen::new(cell.write_count(hash))
    }

    /// `get` counting a hit but not a miss (see
    /// [`record_miss`](Self::record_miss)), with the clock reading it
    /// used if it read the clock, so the caller need not read it again.
    /// A caller that judges the value it got a miss after all takes the hit
    /// back with [`retract_hit`](Self::retract_hit).
    pub(crate) fn get_counting_hit<Q>(&self, key: &Q) -> (Option<V>, Option<u64>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut now = Now::new(&self.inner.timing.clock);
        let value = self.inner.read::<Q, false>(key, &mut now);
        (value, now.read_so_far())
    }

    /// Counts one miss.
    pub(crate) fn record_miss(&self) {
        self.inner.lookups.record_miss();
    }

    /// Takes back the hit [`get_counting_hit`](Self::get_counting_hit)
    /// counted, and counts a miss instead.
    pub(crate) fn retract_hit(&self) {
        self.inner.lookups.retract_hit();
    }

    /// Counts one read answered with a stale value (a loading cache's).
    pub(crate) fn record_stale_hit(&self) {
        self.inner.lookups.record_stale_hit();
    }

    /// The load and refresh counters that [`stats`](Self::stats) reports.
    pub(crate) fn load_counters(&self) -> &LoadCounters {
        &self.inner.loads
    }
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    #[inline]
    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.timing.reads_want_clock() {
            return self.read_timed(key);
        }
        // No entry has a deadline and reads move none: the lean path, with
        // nothing to keep across the lock but the key and the shard. A hit
        // is counted by the lock's release; only a miss is counted here.
        let (hash, cell) = self.shards.cell_for(key);
        let shard = cell.read();
        let value = match shard.locate(hash, key) {
            Some((_, slot)) => {
                if !slot.untimed_hit() {
                    // An entry with a deadline, written since the test
                    // above: read it the timed way, which counts it.
                    drop(shard);
                    return self.read_timed(key);
                }
                Some(slot.value.clone())
            }
            None => None,
        };
        ShardCell::unlock_counting(shard, value.is_some());
        if value.is_none() {
            self.lookups.record_miss();
        }
        value
    }

    /// `get` on a cache whose reads need the clock.
    #[inline(never)]
    fn read_timed<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read::<Q, true>(key, &mut Now::new(&self.timing.clock))
    }

    /// A read with all of `get`'s effects. A hit is counted by the shard
    /// lock's release whatever `COUNT` says (the policy's readmissions
    /// count a shard's reads by it); a miss only if `COUNT` (a loading
    /// cache counts its misses after it has judged the value, and takes
    /// back a hit it judges a miss, see [`Lookups::retract_hit`]).
    #[inline]
    fn read<Q, const COUNT: bool>(&self, key: &Q, now: &mut Now<'_>) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        if self.timing.reads_want_clock() {
            // Entries here have deadlines, so the read will want the time:
            // read it before the lock, whose word the other readers of this
            // shard are waiting to touch.
            now.get();
        }
        let shard = cell.read();
        let Some((id, slot)) = shard.hit(hash, key, now) else {
            drop(shard);
            if COUNT {
                self.lookups.record_miss();
            }
            return None;
        };
        // The common case (no idle time, no hooks) returns here after one
        // flag test. Nesting the two checks below under that test instead
        // measured 3 more instructions per hit, so the short tail repeats.
        if !self.timing.read_moves_deadlines() {
            let value = slot.value.clone();
            ShardCell::unlock_counting(shard, true);
            return Some(value);
        }
        if let Some(tti) = self.timing.tti() {
            shard.slide(id, slot, now.get(), tti, || self.timing.clock.now());
        }
        let value = slot.value.clone();
        let hook = self
            .timing
            .hooks()
            .map(|(_, clone)| (clone(&slot.key), shard.sighting(slot)));
        ShardCell::unlock_counting(shard, true);
        if let Some((owned_key, seen)) = hook {
            self.after_read(cell, hash, &owned_key, &value, seen, now.get());
        }
        Some(value)
    }

    /// Runs the read hook and applies a changed deadline.
    fn after_read(
        &self,
        cell: &ShardCell<K, V>,
        hash: u64,
        key: &K,
        value: &V,
        seen: Sighting,
        now: u64,
    ) {
        let Some((hooks, _)) = self.timing.hooks() else {
            return;
        };
        let before = remaining(now, seen.deadline());
        let after = hooks.expire_after_read(key, value, before);
        if after != before {
            let deadline = self
                .timing
                .on_write(now, None, Some(Hooked::After(after)))
                .at;
            // Read under the lock, if the entry has a deadline: it may have
            // expired while the hook ran.
            let mut landing = Now::new(&self.timing.clock);
            cell.write()
                .reset_deadline(hash, key, seen, deadline, &mut landing);
            self.maintenance.wake_for(deadline);
        }
    }

    fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek_by(key, |value, _| Some(value.clone()))
    }

    /// See [`Cache::peek_by`]: `pick` shown the live entry's value and the
    /// time it was judged live at, under the shard's shared lock.
    fn peek_by<Q, R>(&self, key: &Q, pick: impl FnOnce(&V, &mut Now<'_>) -> Option<R>) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, cell) = self.shards.cell_for(key);
        let mut now = Now::new(&self.timing.clock);
        let shard = cell.read();
        let id = shard.lookup(hash, key, &mut now)?;
        pick(shard.value(id), &mut now)
    }

    /// One maintenance pass: reap expired entries shard by shard in bounded
    /// batches and deliver their notifications between batches.
    ///
    /// A key's `Hash` panicking in one shard ends that
    /// shard's part of the pass only: the shards after it are still
    /// reaped, and the first panic is raised again once they are. Otherwise
    /// a key whose `Hash` panics every time would keep the maintenance
    /// thread from ever reaching the shards after its own.
    fn maintain(&self) {
        self.maintenance.pass(|| {
            let now = self.timing.clock.now();
            let mut first_panic = None;
            for cell in self.shards.iter() {
                // Widens the lock's wrapping hit count while it is still
                // far from wrapping twice (see `raw::lock`).
                cell.hits();
                let reaped = catch_unwind(AssertUnwindSafe(|| {
                    loop {
                        let mut removed = Removed::default();
                        let done = cell.write().reap(now, &mut removed);
                        self.deliver(removed);
                        if done {
                            break;
                        }
                    }
                }));
                if let Err(payload) = reaped {
                    first_panic.get_or_insert(payload);
                }
            }
            if let Some(payload) = first_panic {
                resume_unwind(payload);
            }
        });
    }

    /// How long the maintenance thread may sleep after a pass: an
    /// [`INTERVAL`] while some entry may fall due within it, else until the
    /// first wheel slot begins (at most [`LONGEST_SLEEP`]), published so
    /// that a write giving an earlier deadline wakes it (see
    /// [`maintenance`](crate::maintenance)).
    fn rest(&self) -> Duration {
        let nanos = |d: Duration| saturating_nanos(d.as_nanos());
        let now = self.timing.clock.now();
        let next = |exclusive: bool| {
            let due = |cell: &ShardCell<K, V>| match exclusive {
                true => cell.write().next_due(),
                false => cell.read().next_due(),
            };
            self.shards.iter().map(due).min().unwrap_or(NEVER)
        };
        let first = next(false);
        if first <= now.saturating_add(nanos(INTERVAL)) {
            return INTERVAL;
        }
        let until = first.min(now.saturating_add(nanos(LONGEST_SLEEP)));
        self.maintenance.sleep_until(until);
        // A write that landed since the look above, and read the wake-up
        // time before it was published, is seen now (its unlock came
        // before this lock); a later one reads the published time.
        if next(true) < until {
            self.maintenance.awake();
            return Duration::ZERO;
        }
        Duration::from_nanos(until - now)
    }

    /// Cumulative (hits, misses): the hits the shard locks counted, less
    /// those retracted, and the striped misses.
    fn lookup_totals(&self) -> (u64, u64) {
        let (retracted, misses) = self.lookups.totals();
        let counted: u64 = self.shards.iter().map(ShardCell::hits).sum();
        // The counters are read without ordering between them: a
        // retraction may be seen before the lock's count of the hit it
        // takes back.
        (counted.saturating_sub(retracted), misses)
    }

    fn deliver(&self, removed: Removed<K, V>) {
        removed.deliver(self.listener.as_ref());
    }

    fn stats(&self) -> CacheStats {
        let mut stats = CacheStats::default();
        (stats.hits, stats.misses) = self.lookup_totals();
        for cell in self.shards.iter() {
            let removals = cell.read().removals();
            for (total, n) in stats.removals.iter_mut().zip(removals) {
                *total += n;
            }
        }
        self.loads.fill(&mut stats);
        stats.stale_hits = self.lookups.stale_hits();
        stats
    }
}

impl<K, V> Maintained for Inner<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn background_pass(&self) -> Duration {
        self.maintenance.awake();
        if self.timing.clock.is_manual() {
            // Time moves only when the test says so, and so do deadlines;
            // the locks' wrapping hit counts still need widening (see
            // `LONGEST_SLEEP`).
            for cell in self.shards.iter() {
                cell.hits();
            }
            return LONGEST_SLEEP;
        }
        self.maintain();
        self.rest()
    }
}
