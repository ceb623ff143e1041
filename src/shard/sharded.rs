//! The thin concurrent layer: an array of locked shards (the lock is
//! [`raw::lock`](super::raw::lock)).

use std::{
    borrow::Borrow,
    hash::Hash,
    sync::atomic::{
        AtomicU32,
        Ordering::{Acquire, Release},
    },
};

use ahash::RandomState;

use crate::policy::SketchBudget;

use super::{
    Layout, Placeholder, Shard, Slot,
    raw::lock::{self, HitCount, ReadGuard as RwLockReadGuard, ShardLock},
};

type RwLockWriteGuard<'a, T> = lock::WriteGuard<'a, T>;
/// Exclusive access to one shard, from [`ShardCell::write`].
pub(crate) type ShardWriteGuard<'a, K, V> = RwLockWriteGuard<'a, Shard<K, V>>;

/// Write counters per shard: the shard's keys are spread over this many
/// stripes by their hash.
pub(crate) const STRIPES: usize = 8;

/// A shard behind its lock, padded so two locks never share a cache line,
/// with the write counts of its keys' stripes. The counts come after the
/// shard, away from the lock's line, which every read takes (a read-through
/// cache's writes and loads read them; only writes change them). On the
/// lock's own line they measured no faster for writers, and moved the
/// fields a read hit needs.
#[derive(Debug)]
#[repr(C, align(128))]
pub(crate) struct ShardCell<K, V> {
    lock: ShardLock<Shard<K, V>>,
    writes: WriteCounts,
    /// The hits counted in the lock's word, widened.
    hits: HitCount,
}

/// A shard's stripe counts, on one cache line of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct WriteCounts([AtomicU32; STRIPES]);

/// One stripe's write count, reached through a held write lock of its
/// shard: the only way to change a count, so counts need no
/// read-modify-write (see [`guard`](crate::load::guard)).
#[derive(Debug)]
pub(crate) struct Stripe<'a> {
    count: &'a AtomicU32,
}

impl Stripe<'_> {
    /// The count now.
    pub(crate) fn get(&self) -> u32 {
        self.count.load(Acquire)
    }

    /// Counts one more write (wrapping).
    pub(crate) fn bump(&self) {
        self.count.store(self.get().wrapping_add(1), Release);
    }
}

/// The stripe of `hash` among a shard's [`STRIPES`]: bits the shard index
/// (`hash >> 32`) does not use.
fn stripe_of(hash: u64) -> usize {
    (hash >> 16) as usize & (STRIPES - 1)
}

impl<K, V> ShardCell<K, V> {
    /// The write count of `hash`'s stripe, read without the lock.
    #[inline]
    pub(crate) fn write_count(&self, hash: u64) -> u32 {
        self.writes.0[stripe_of(hash)].load(Acquire)
    }

    /// `hash`'s stripe, for the holder of this shard's write lock (`held`,
    /// which must come from this cell).
    #[inline]
    pub(crate) fn stripe<'a>(
        &'a self,
        hash: u64,
        held: &RwLockWriteGuard<'a, Shard<K, V>>,
    ) -> Stripe<'a> {
        self.debug_assert_held(held);
        Stripe {
            count: &self.writes.0[stripe_of(hash)],
        }
    }

    /// Counts a write on every stripe, for the holder of the write lock.
    pub(crate) fn bump_all(&self, held: &RwLockWriteGuard<'_, Shard<K, V>>) {
        self.debug_assert_held(held);
        for count in &self.writes.0 {
            Stripe { count }.bump();
        }
    }

    /// Shared access: in the thread's reader slot of the lock when it is
    /// free (see [`raw::lock`](super::raw::lock)).
    #[inline]
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Shard<K, V>> {
        lock::read(&self.lock)
    }

    /// Releases `guard` (from this cell's [`read`](Self::read)), counting
    /// a hit in the lock's own word if `hit`: how every read of an entry
    /// leaves (the stats' hits, and the clock of a small cache's
    /// readmissions). The caller counts misses apart.
    #[inline]
    pub(crate) fn unlock_counting(guard: RwLockReadGuard<'_, Shard<K, V>>, hit: bool) {
        lock::unlock_counting(guard, hit);
    }

    /// The hits [`unlock_counting`](Self::unlock_counting) has counted.
    pub(crate) fn hits(&self) -> u64 {
        lock::hits(&self.lock, &self.hits)
    }

    /// Exclusive access: writes, evictions, reaping.
    #[inline]
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Shard<K, V>> {
        self.lock.write()
    }

    /// Panics in debug builds unless `held` locks this cell's shard.
    fn debug_assert_held(&self, held: &RwLockWriteGuard<'_, Shard<K, V>>) {
        debug_assert!(
            std::ptr::eq(&**held, self.lock.data_ptr()),
            "a stripe count changes only under its own shard's lock"
        );
    }
}

/// The shards of one cache and the hasher that spreads keys over them.
#[derive(Debug)]
pub(crate) struct Shards<K, V> {
    cells: Box<[ShardCell<K, V>]>,
    hasher: RandomState,
    mask: usize,
}

impl<K: Hash + Eq, V> Shards<K, V> {
    /// `count` shards (a power of two) sharing `capacity` exactly: the first
    /// `capacity % count` shards hold one unit more. `timed` and `sliding` say
    /// whether entries get deadlines and whether reads slide them;
    /// `placeholder` which values' removals go uncounted.
    pub(crate) fn new(
        count: usize,
        capacity: u64,
        weighted: bool,
        timed: bool,
        sliding: bool,
        placeholder: Option<Placeholder<V>>,
        now: u64,
    ) -> Self {
        debug_assert!(count.is_power_of_two());
        let hasher = RandomState::new();
        let n = count as u64;
        let sketch_budget = SketchBudget::of_shard(capacity, weighted, n);
        let cells = (0..n)
            .map(|i| {
                let capacity = capacity / n + u64::from(i < capacity % n);
                let reserve = if weighted {
                    0
                } else {
                    reservation(capacity, count, std::mem::size_of::<Slot<K, V>>())
                };
                let layout = Layout {
                    capacity,
                    weighted,
                    reserve,
                    timed,
                    sliding,
                    sketch_budget,
                };
                ShardCell {
                    lock: ShardLock::new(Shard::new(&layout, hasher.clone(), placeholder, now)),
                    writes: Default::default(),
                    hits: HitCount::default(),
                }
            })
            .collect();
        Shards {
            cells,
            hasher,
            mask: count - 1,
        }
    }

    /// The hash every part of the cache uses for `key`.
    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard that owns `hash`.
    #[inline]
    pub(crate) fn cell(&self, hash: u64) -> &ShardCell<K, V> {
        &self.cells[(hash >> 32) as usize & self.mask]
    }

    /// All shards, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ShardCell<K, V>> {
        self.cells.iter()
    }

    /// Shard `i`, if there is one.
    pub(crate) fn get(&self, i: usize) -> Option<&ShardCell<K, V>> {
        self.cells.get(i)
    }

    /// Number of shards.
    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    /// Looks `key` up in its shard (convenience for `contains`-style calls).
    pub(crate) fn cell_for<Q>(&self, key: &Q) -> (u64, &ShardCell<K, V>)
    where
        K: Borrow<Q>,
        Q: Hash + ?Sized,
    {
        let hash = self.hash(key);
        (hash, self.cell(hash))
    }
}

/// Entries to reserve room for in a shard of `capacity` whose slots take
/// `slot_bytes` each: all of it for bounded caches, so a full cache carries
/// no growth slack, but never more than 4 Mi entries nor 256 MiB of slots
/// across the cache (a huge bound is not a promise to fill it, and an
/// allocation the system refuses would abort the process). The room is
/// written only as entries arrive (see `Table` and `TimerWheel::reserve`).
fn reservation(capacity: u64, shards: usize, slot_bytes: usize) -> usize {
    const CACHE_WIDE: u64 = 1 << 22;
    const CACHE_WIDE_BYTES: u64 = 1 << 28;
    let entries = CACHE_WIDE.min(CACHE_WIDE_BYTES / slot_bytes.max(1) as u64);
    let per_shard = (entries / shards as u64).max(1);
    (capacity.min(per_shard) as usize) + 1
}
