//! The thin concurrent layer: an array of locked shards (the lock is
//! [`raw::lock`](super::raw::lock)).

use std::{
    borrow::Borrow,
    hash::Hash,
    sync::atomic::{
        AtomicU32,
        Ordering::{Acquire, Relaxed, Release},
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

/// A shard's stripes, each on a cache line of its own: a write reads its
/// stripe's count unlocked as it begins, and reads and writes the line
/// under the lock as it ends. (With the keys of the last writes on lines
/// apart from the counts, a write-behind insert on two threads took a
/// fifth longer; with all eight counts on one line, writes of different
/// stripes shared it.)
#[derive(Debug, Default)]
struct WriteCounts([StripeLine; STRIPES]);

/// One stripe's write count and the keys of its last [`ENDS`] counted
/// writes.
#[derive(Debug, Default)]
#[repr(align(64))]
struct StripeLine {
    count: AtomicU32,
    ends: EndLog,
}

/// How many of a stripe's last counted writes it remembers the keys of: a
/// write that more writes of its stripe ended during counts as overlapped
/// by one of its own key (see [`Stripe::key_ended_since`]).
pub(crate) const ENDS: u32 = 8;

/// The keys (their [`tag`]s) of a stripe's last [`ENDS`] counted writes,
/// the one that took the count from `n` to `n + 1` at `n % ENDS`. Written
/// and read only under the shard's write lock, so relaxed.
#[derive(Debug, Default)]
struct EndLog([AtomicU32; ENDS as usize]);

/// What the end log keeps of a key's hash: 32 bits, so two keys of a stripe
/// share a tag about once in 2^29 pairs (the stripe's own bits are equal);
/// a shared tag only makes a write drop its key as if overlapped.
fn tag(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// The tag of a write of every key (a clear): matches any key.
const EVERY_KEY: u32 = u32::MAX;

/// One stripe's write count, reached through a held write lock of its
/// shard: the only way to change a count, so counts need no
/// read-modify-write (see [`guard`](crate::load::guard)). It is the stripe
/// of one key, whose write [`bump`](Self::bump) counts.
#[derive(Debug)]
pub(crate) struct Stripe<'a> {
    line: &'a StripeLine,
    tag: u32,
}

impl Stripe<'_> {
    /// The count now.
    pub(crate) fn get(&self) -> u32 {
        self.line.count.load(Acquire)
    }

    /// Counts one more write (wrapping), of this stripe's key.
    pub(crate) fn bump(&self) {
        let count = self.get();
        self.line.ends.0[(count % ENDS) as usize].store(self.tag, Relaxed);
        self.line.count.store(count.wrapping_add(1), Release);
    }

    /// Whether a write of this stripe's key (or of every key) was counted
    /// since the count was `since`; also whenever more than [`ENDS`]
    /// writes were, whose keys the stripe no longer remembers. A tag shared
    /// with another key answers yes too, never no for a write of the key.
    pub(crate) fn key_ended_since(&self, since: u32) -> bool {
        let now = self.get();
        let ended = now.wrapping_sub(since);
        if ended > ENDS {
            return true;
        }
        (0..ended).any(|n| {
            let tag = self.line.ends.0[(since.wrapping_add(n) % ENDS) as usize].load(Relaxed);
            tag == self.tag || tag == EVERY_KEY
        })
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
        self.writes.0[stripe_of(hash)].count.load(Acquire)
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
            line: &self.writes.0[stripe_of(hash)],
            tag: tag(hash),
        }
    }

    /// Counts a write on every stripe, for the holder of the write lock.
    pub(crate) fn bump_all(&self, held: &RwLockWriteGuard<'_, Shard<K, V>>) {
        self.debug_assert_held(held);
        for line in &self.writes.0 {
            Stripe {
                line,
                tag: EVERY_KEY,
            }
            .bump();
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
        let heaviest_entry = capacity / n;
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
                    heaviest: heaviest_entry,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The stripe of key `hash` over `line`.
    fn stripe_at(line: &StripeLine, hash: u64) -> Stripe<'_> {
        Stripe {
            line,
            tag: tag(hash),
        }
    }

    #[test]
    fn a_stripe_remembers_the_keys_of_its_last_writes_across_the_counts_wrap() {
        for start in [0, u32::MAX - 3] {
            let line = StripeLine {
                count: AtomicU32::new(start),
                ends: EndLog::default(),
            };
            let mine = stripe_at(&line, 1);
            let other = stripe_at(&line, 2 << 40);
            let since = mine.get();
            assert!(!mine.key_ended_since(since), "nothing ended");
            for _ in 0..ENDS {
                other.bump();
                assert!(!mine.key_ended_since(since), "only another key's writes");
            }
            assert!(other.key_ended_since(since), "its own writes");
            other.bump();
            assert!(
                mine.key_ended_since(since),
                "more writes than the log holds count as the key's"
            );
            let since = mine.get();
            other.bump();
            mine.bump();
            other.bump();
            assert!(mine.key_ended_since(since), "one of its own among others");
            assert!(!mine.key_ended_since(mine.get()), "nothing since now");
        }
    }

    #[test]
    fn a_clear_counts_as_a_write_of_every_key() {
        let line = StripeLine::default();
        let since = line.count.load(Acquire);
        Stripe {
            line: &line,
            tag: EVERY_KEY,
        }
        .bump();
        for hash in [0, 1, 7 << 33, u64::MAX] {
            assert!(stripe_at(&line, hash).key_ended_since(since), "{hash}");
        }
    }
}
