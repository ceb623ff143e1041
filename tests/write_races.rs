//! Writes and loads of a `StoreCache` (and a `LoadingCache`) racing in one
//! shard, where keys share the shard's write-count stripes: a write drops
//! its key only if a write of that key, or a clear, or more than 8 writes
//! ended on its stripe while it ran (see `src/load/guard.rs`). Deterministic
//! interleavings forced with `MemStore::hold` (its own key's write at every
//! place among others' writes, at the edge of the stripe's memory, a clear,
//! a write-behind put overflowing into write-through, a held load), and
//! many threads writing, deleting, invalidating and reading overlapping
//! keys, checked after quiescence against the store. From a review of
//! 7 December (afternoon); breaking `Stripe::key_ended_since` (ignoring the
//! key's own tag, or remembering one write more than it holds) fails the
//! deterministic and the short-burst tests.

#[path = "support/stores.rs"]
mod stores;
#[path = "support/threads.rs"]
mod threads;

use std::{
    collections::HashMap,
    sync::{
        Arc, Barrier,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    thread,
    time::Duration,
};

use larder::{Cache, Change, LoadingCache, Store, StoreCache, WhenFull};
use parking_lot::Mutex;
use stores::MemStore;
use threads::parallel;

fn one_shard(store: &MemStore, capacity: u64) -> StoreCache<u64, u64, MemStore> {
    Cache::builder()
        .max_capacity(capacity)
        .num_shards(1)
        .store(store.clone())
        .build()
        .unwrap()
}

/// What `during` may do while the write-through `insert(1, 7)` is held
/// between the store and the cache.
#[derive(Clone, Copy, Debug)]
enum Mid {
    /// `insert(1, 8)` (the store ends with 8).
    Put,
    /// `remove(&1)` (the store ends without the key).
    Delete,
    /// `insert(1, 8)` whose store call fails after applying (the store
    /// ends with 8, the key is dropped).
    FailedPut,
}

/// Holds `insert(1, 7)` after the store took 7; meanwhile `before` writes
/// of other keys, then `mid` of key 1, then `after` writes of other keys
/// end; then the held write ends. Returns (cached, stored) for key 1 once
/// all are done.
fn held_write(before: usize, mid: Mid, after: usize, trial: u64) -> (Option<u64>, Option<u64>) {
    let store = MemStore::default();
    let cache = one_shard(&store, 10_000);
    let others: Vec<u64> = (1..=(before + after) as u64)
        .map(|k| 1_000 * (trial + 1) + k)
        .collect();
    store.hold.write.store(7, SeqCst);
    thread::scope(|s| {
        let held = s.spawn(|| cache.insert(1, 7));
        store.hold.wait_reached();
        for &k in &others[..before] {
            cache.insert(k, k).unwrap();
        }
        match mid {
            Mid::Put => cache.insert(1, 8).unwrap(),
            Mid::Delete => cache.remove(&1).unwrap(),
            Mid::FailedPut => {
                store.faults.fail_after_applying.store(true, SeqCst);
                assert!(cache.insert(1, 8).is_err());
                store.faults.fail_after_applying.store(false, SeqCst);
            }
        }
        for &k in &others[before..] {
            cache.insert(k, k).unwrap();
        }
        store.hold.release();
        held.join().unwrap().unwrap();
    });
    (cache.peek(&1), store.get(1))
}

/// A same-key write that ends while a write-through is held, among up to 12
/// writes of other keys of the one shard (so some share key 1's stripe),
/// at every position: the held write never leaves its 7 cached over the
/// store's newer value.
#[test]
fn a_held_write_overlapped_by_its_own_key_among_others_never_caches_stale() {
    for trial in 0..6_u64 {
        for mid in [Mid::Put, Mid::Delete, Mid::FailedPut] {
            for total in [0_usize, 7, 8, 9, 12] {
                for before in 0..=total {
                    let (cached, stored) = held_write(before, mid, total - before, trial);
                    assert_ne!(stored, Some(7));
                    if let Some(c) = cached {
                        assert_eq!(
                            Some(c),
                            stored,
                            "{mid:?} with {before} other writes before it, {} after \
                             (trial {trial}): cache holds {c}, store {stored:?}",
                            total - before
                        );
                    }
                }
            }
        }
    }
}

/// The same-key write ends first, then enough other keys' writes that about
/// 8 of them share key 1's stripe (the stripes follow the cache's random
/// hash seed): across trials, the ring of the last 8 ends is often exactly
/// full or one past full when the held write ends, its oldest slot (the
/// same-key write's) overwritten or not.
#[test]
fn a_same_key_write_at_the_edge_of_the_ring_is_still_seen() {
    for trial in 0..40_u64 {
        for after in [48_usize, 56, 64, 72, 80] {
            for mid in [Mid::Put, Mid::Delete] {
                let (cached, stored) = held_write(0, mid, after, trial);
                if let Some(c) = cached {
                    assert_eq!(
                        Some(c),
                        stored,
                        "{mid:?} then {after} other writes (trial {trial}): cache holds {c}"
                    );
                }
            }
        }
    }
}

/// A clear of the cache while a write-through is held drops the held
/// write's key (a clear counts as a write of every key), and the write then
/// leaves nothing stale.
#[test]
fn a_clear_during_a_held_write_is_seen_as_a_write_of_its_key() {
    for others in [0_u64, 3, 7, 8] {
        let store = MemStore::default();
        let cache = one_shard(&store, 10_000);
        store.hold.write.store(7, SeqCst);
        thread::scope(|s| {
            let held = s.spawn(|| cache.insert(1, 7));
            store.hold.wait_reached();
            cache.invalidate_all();
            for k in 0..others {
                cache.insert(100 + k, k).unwrap();
            }
            store.hold.release();
            held.join().unwrap().unwrap();
        });
        assert_eq!(cache.peek(&1), None, "{others}");
        assert_eq!(cache.get(&1).unwrap(), Some(7));
    }
}

/// The write of key 1 held with its value in the store, while a write-behind
/// cache over the same key queues a newer one: the queue overflows into a
/// write-through (`WhenFull::WriteThrough`) so the held write is the
/// writer's own. Other keys' writes pile up meanwhile. After all, the cache
/// holds what the store (after a flush) holds.
#[test]
fn write_behind_overflowing_into_write_through_stays_in_step() {
    for others in [0_u64, 5, 7, 8, 9] {
        let store = MemStore::default();
        let cache: StoreCache<u64, u64, MemStore> = Cache::builder()
            .max_capacity(10_000)
            .num_shards(1)
            .store(store.clone())
            .write_behind()
            .batch_size(1_000)
            .flush_interval(Duration::from_secs(3_600))
            .queue_capacity(1)
            .when_full(WhenFull::WriteThrough)
            .build()
            .unwrap();
        // Fill the queue with one change of a key of its own.
        cache.insert(500, 500).unwrap();
        store.hold.write.store(7, SeqCst);
        thread::scope(|s| {
            let held = s.spawn(|| cache.insert(1, 7));
            store.hold.wait_reached();
            for k in 0..others {
                cache.insert(100 + k, k).unwrap();
            }
            cache.insert(1, 8).unwrap();
            store.hold.release();
            held.join().unwrap().unwrap();
        });
        cache.flush();
        let cached = cache.peek(&1);
        assert!(
            cached.is_none() || cached == store.get(1),
            "{others}: {cached:?} vs {:?}",
            store.get(1)
        );
        assert_eq!(cache.get(&1).unwrap(), store.get(1), "{others}");
    }
}

/// `MemStore` that also dawdles a random few microseconds after a write
/// applied (and after a load read), so that a write's end is often late
/// after its change reached the table.
#[derive(Clone)]
struct Jittery(MemStore, Arc<AtomicU64>);

impl Jittery {
    fn pause(&self) {
        let mut x = self.1.load(SeqCst);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.1.store(x, SeqCst);
        if x % 3 == 0 {
            thread::sleep(Duration::from_micros(x % 200));
        } else {
            thread::yield_now();
        }
    }
}

impl Store<u64, u64> for Jittery {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        let r = self.0.load(key);
        self.pause();
        r
    }

    fn write(&self, batch: &[(u64, Change<u64>)]) -> Result<(), String> {
        let r = self.0.write(batch);
        self.pause();
        r
    }
}

/// Runs `threads` threads of random gets, inserts, removes, invalidations
/// (and rarely a clear or an `invalidate_entries_if`) of `keys` keys
/// against `cache`, then checks every key against the store.
fn stress(policy: &str, capacity: u64, threads: usize, keys: u64, rounds: u64, ops: usize) {
    let store = MemStore::default();
    store.faults.slow_micros.store(15, SeqCst);
    store.faults.slow_load_micros.store(15, SeqCst);
    let b = Cache::builder()
        .max_capacity(capacity)
        .num_shards(1)
        .store(Jittery(
            store.clone(),
            Arc::new(AtomicU64::new(0x2545_F491_4F6C_DD1D)),
        ));
    let cache: StoreCache<u64, u64, Jittery> = stores::racing(b, policy);
    let next = Arc::new(AtomicU64::new(1));
    for round in 0..rounds {
        store.faults.fail_per_mille.store(30, SeqCst);
        store
            .faults
            .fail_after_applying
            .store(round % 3 == 2 && policy != "behind", SeqCst);
        parallel(Duration::from_secs(120), policy, threads, {
            let (cache, next) = (cache.clone(), next.clone());
            move |t| {
                let mut x = round * 7_919 + t as u64 * 104_729 + 1;
                for _ in 0..ops {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let key = (x >> 33) % keys;
                    match (x >> 45) % 64 {
                        0..=23 => {
                            let _ = cache.get(&key);
                        }
                        24..=47 => {
                            let _ = cache.insert(key, next.fetch_add(1, SeqCst));
                        }
                        48..=55 => {
                            let _ = cache.remove(&key);
                        }
                        56..=61 => cache.invalidate(&key),
                        62 => cache.invalidate_entries_if(|k, _| k % 5 == key % 5),
                        _ => {
                            if (x >> 20) % 8 == 0 {
                                cache.invalidate_all();
                            } else {
                                let _ = cache.get(&key);
                            }
                        }
                    }
                    if (x >> 13) % 16 == 0 {
                        thread::sleep(Duration::from_micros((x >> 7) % 40));
                    }
                }
            }
        });
        store.faults.fail_after_applying.store(false, SeqCst);
        store.faults.fail_per_mille.store(0, SeqCst);
        cache.flush();
        for key in 0..keys {
            if let Some(cached) = cache.peek(&key) {
                assert_eq!(
                    Some(cached),
                    store.get(key),
                    "{policy} cap {capacity} round {round}: key {key} cached stale"
                );
            }
        }
        for key in 0..keys {
            assert_eq!(
                cache.get(&key).unwrap(),
                store.get(key),
                "{policy} cap {capacity} round {round}: key {key} read"
            );
        }
    }
}

#[test]
fn stress_write_through_one_shard_many_threads() {
    stress("through", 10_000, 8, 24, 6, 1_500);
    stress("through", 8, 8, 24, 4, 1_500);
}

#[test]
fn stress_write_around_one_shard_many_threads() {
    stress("around", 10_000, 8, 24, 6, 1_500);
}

#[test]
fn stress_write_behind_one_shard_many_threads() {
    stress("behind", 10_000, 8, 24, 6, 1_500);
    stress("behind", 8, 8, 24, 4, 1_500);
}

/// Many short bursts, each checked once quiet: the last overlapping
/// writes of a key are what a check can catch.
#[test]
fn stress_short_bursts_write_through() {
    stress("through", 10_000, 8, 3, 300, 8);
    stress("through", 4, 8, 12, 150, 12);
}

#[test]
fn stress_short_bursts_write_around() {
    stress("around", 10_000, 8, 3, 200, 8);
}

#[test]
fn stress_short_bursts_write_behind() {
    stress("behind", 10_000, 8, 3, 300, 8);
    stress("behind", 4, 8, 12, 150, 12);
}

/// Two keys only, so nearly every overlap is of the same key, with the
/// other key's writes in between.
#[test]
fn stress_write_through_two_keys() {
    stress("through", 10_000, 8, 2, 6, 2_000);
}

/// A LoadingCache over a shared map: threads write the map then invalidate
/// the key, clear, `invalidate_entries_if`, and get; once quiet, whatever
/// is cached is the map's value.
#[test]
fn loading_cache_invalidations_never_leave_a_stale_load() {
    let map: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let cache: LoadingCache<u64, u64, String> = {
        let map = map.clone();
        Cache::builder()
            .max_capacity(10_000)
            .num_shards(1)
            .loader(move |k: &u64| {
                let v = map.lock().get(k).copied();
                thread::sleep(Duration::from_micros(20));
                Ok::<_, String>(v)
            })
            .build()
            .unwrap()
    };
    let next = Arc::new(AtomicU64::new(1));
    for round in 0..6_u64 {
        parallel(Duration::from_secs(120), "loading", 8, {
            let (cache, map, next) = (cache.clone(), map.clone(), next.clone());
            move |t| {
                let mut x = round * 31 + t as u64 + 1;
                for _ in 0..1_500 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let key = (x >> 33) % 16;
                    match (x >> 45) % 8 {
                        0..=3 => {
                            let _ = cache.get(&key);
                        }
                        4..=5 => {
                            map.lock().insert(key, next.fetch_add(1, SeqCst));
                            cache.invalidate(&key);
                        }
                        6 => {
                            map.lock().remove(&key);
                            cache.invalidate(&key);
                        }
                        _ => {
                            if (x >> 20) % 16 == 0 {
                                cache.invalidate_all();
                            } else {
                                cache.invalidate_entries_if(|k, _| *k == key);
                            }
                        }
                    }
                }
            }
        });
        for key in 0..16 {
            if let Some(v) = cache.peek(&key) {
                assert_eq!(
                    Some(v),
                    map.lock().get(&key).copied(),
                    "round {round} key {key}"
                );
            }
        }
    }
}

/// A load of key 1 held after it read the map; meanwhile the map changes and
/// key 1 is invalidated, among writes (inserts) of other keys of its shard;
/// the load must not cache what it read.
#[test]
fn a_held_load_does_not_cache_over_an_invalidation_among_other_writes() {
    for others in [0_u64, 3, 8, 9, 20] {
        let map: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
        map.lock().insert(1, 1);
        let reached = Arc::new(Barrier::new(2));
        let resume = Arc::new(Barrier::new(2));
        let armed = Arc::new(AtomicU64::new(1));
        let cache: LoadingCache<u64, u64, String> = {
            let (map, reached, resume, armed) =
                (map.clone(), reached.clone(), resume.clone(), armed.clone());
            Cache::builder()
                .max_capacity(10_000)
                .num_shards(1)
                .loader(move |k: &u64| {
                    let v = map.lock().get(k).copied();
                    if *k == 1 && armed.swap(0, SeqCst) == 1 {
                        reached.wait();
                        resume.wait();
                    }
                    Ok::<_, String>(v)
                })
                .build()
                .unwrap()
        };
        thread::scope(|s| {
            let load = s.spawn(|| cache.get(&1));
            reached.wait();
            for k in 0..others / 2 {
                cache.insert(100 + k, k);
            }
            map.lock().insert(1, 2);
            cache.invalidate(&1);
            for k in others / 2..others {
                cache.insert(100 + k, k);
            }
            resume.wait();
            let _ = load.join().unwrap();
        });
        assert_ne!(
            cache.peek(&1),
            Some(1),
            "{others}: the load cached what it read before"
        );
    }
}
