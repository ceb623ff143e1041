//! The bulk and whole-cache operations and the counters: `iter`,
//! `invalidate_entries_if`, `invalidate_all`, `entry_count`,
//! `weighted_size` and `stats()`, alone and under many threads, each
//! against what its docs promise.

#[path = "support/rng.rs"]
mod rng;
#[path = "support/threads.rs"]
mod threads;

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use larder::{Cache, CacheBuilder, RemovalCause, clock::MockClock};
use rng::Rng;
use threads::parallel;

const TIMEOUT: Duration = Duration::from_secs(60);
const THREADS: usize = 8;

/// A listener's log: (key, value, cause) of every removal heard.
type Heard = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

/// Builds `builder`'s cache with a listener that logs every removal.
fn heard_by(builder: CacheBuilder<u64, u64>) -> (Cache<u64, u64>, Heard) {
    let heard: Heard = Arc::default();
    let log = heard.clone();
    let cache = builder
        .eviction_listener(move |k: Arc<u64>, v, c| log.lock().unwrap().push((*k, v, c)))
        .build()
        .unwrap();
    (cache, heard)
}

/// Asserts that the cache's stats count, for every cause, as many
/// removals as the listener heard with it.
fn stats_count_what_was_heard(cache: &Cache<u64, u64>, heard: &[(u64, u64, RemovalCause)]) {
    let stats = cache.stats();
    for cause in CAUSES {
        let heard_with = heard.iter().filter(|&&(_, _, c)| c == cause).count() as u64;
        assert_eq!(stats.removals(cause), heard_with, "{cause:?}");
    }
}

const CAUSES: [RemovalCause; 4] = [
    RemovalCause::Expired,
    RemovalCause::Explicit,
    RemovalCause::Replaced,
    RemovalCause::Size,
];

// ---------------------------------------------------------------- iter ----

/// Keys present during the whole iteration are listed exactly once with
/// their value, while 7 threads grow and shrink the shards' tables (an
/// unbounded cache, many new keys) and the loop body itself writes.
#[test]
fn iter_lists_every_key_held_throughout_once_while_tables_grow() {
    const STABLE: u64 = 2_000;
    let cache: Cache<u64, u64> = Cache::builder().num_shards(4).build().unwrap();
    for k in 0..STABLE {
        cache.insert(k, k * 3);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (cache.clone(), stop.clone());
    let passes = parallel(TIMEOUT, "iter while growing", THREADS, move |t| {
        let mut rng = Rng::new(t as u64 + 1);
        if t > 0 {
            let mut n = 0u64;
            while !s.load(SeqCst) {
                // Keys above STABLE only: grow the tables, then remove.
                let base = STABLE + (t as u64) * 1_000_000;
                for i in 0..2_000 {
                    c.insert(base + n + i, 0);
                }
                for i in 0..2_000 {
                    c.invalidate(&(base + n + i));
                }
                n += 2_000;
            }
            return 0;
        }
        let started = Instant::now();
        let mut passes = 0;
        while started.elapsed() < Duration::from_millis(1_500) {
            let mut seen = HashSet::new();
            for (k, v) in c.iter() {
                assert!(seen.insert(k), "key {k} listed twice");
                if k < STABLE {
                    assert_eq!(v, k * 3);
                }
                if rng.below(50) == 0 {
                    // Writes from inside the loop: no lock is held.
                    c.insert(STABLE + 900_000_000 + rng.below(100), 1);
                    c.invalidate(&(STABLE + 900_000_000 + rng.below(100)));
                }
            }
            for k in 0..STABLE {
                assert!(seen.contains(&k), "key {k}, held throughout, not listed");
            }
            passes += 1;
        }
        s.store(true, SeqCst);
        passes
    });
    assert!(passes[0] > 0);
    cache.check_invariants();
}

/// Expired entries, reaped or not, are never listed; iterating slides no
/// idle deadline and counts nothing.
#[test]
fn iter_skips_expired_entries_and_slides_no_idle_deadline() {
    let clock = MockClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .time_to_idle(Duration::from_secs(10))
        .clock(clock.clone())
        .num_shards(4)
        .build()
        .unwrap();
    for k in 0..100 {
        cache.insert(k, k);
    }
    for k in 0..50 {
        cache.insert_with_ttl(k, k, Duration::from_secs(5));
    }
    clock.advance(Duration::from_secs(6));
    let listed: HashSet<u64> = cache.iter().map(|(k, _)| k).collect();
    assert_eq!(listed, (50..100).collect());
    assert_eq!(cache.entry_count(), 100, "the expired are not reaped yet");
    clock.advance(Duration::from_secs(4));
    // Iterating at 6 s slid nothing: all idle deadlines passed at 10 s.
    assert_eq!(cache.iter().count(), 0);
    let s = cache.stats();
    assert_eq!((s.hits(), s.misses()), (0, 0));
}

/// An iterator kept across `invalidate_all` lists the clones it already
/// copied, then nothing of the shards it reaches afterwards; the cache
/// is usable from the loop, `iter` and `invalidate_all` included, and an
/// iterator dropped early leaves no lock held.
#[test]
fn iter_across_invalidate_all_and_reentrant_calls_from_the_loop() {
    let cache: Cache<u64, u64> = Cache::builder().num_shards(8).build().unwrap();
    for k in 0..800 {
        cache.insert(k, k);
    }
    let c = cache.clone();
    parallel(Duration::from_secs(20), "reentrant iter", 1, move |_| {
        let mut it = c.iter();
        let first = it.next().expect("an entry");
        let mut rest = 0;
        let mut cleared = false;
        for (k, v) in it.by_ref() {
            assert_eq!(k, v);
            rest += 1;
            // Nested use of the cache from the loop body.
            assert!(c.iter().count() > 0 || cleared);
            if k < 10_000 {
                c.insert(10_000 + k, 10_000 + k);
            }
            if !cleared && rest == 3 {
                c.invalidate_all();
                cleared = true;
            }
        }
        assert!(cleared);
        assert_eq!(first.0, first.1);
        // Early drop of a fresh iterator: writes still go through.
        let mut early = c.iter();
        early.next();
        drop(early);
        c.insert(1, 1);
        assert_eq!(c.get(&1), Some(1));
        assert!(it.next().is_none());
    });
    cache.check_invariants();
}

/// A value whose `Clone` panics mid-iteration: the panic reaches the
/// caller, the shard's lock is released, and the cache stays usable and
/// consistent.
#[test]
fn a_value_clone_panicking_in_iter_leaves_the_cache_usable() {
    #[derive(Debug)]
    struct Bomb(u64, Arc<AtomicBool>);
    impl Clone for Bomb {
        fn clone(&self) -> Self {
            if self.1.load(SeqCst) && self.0 == 7 {
                panic!("clone of 7");
            }
            Bomb(self.0, self.1.clone())
        }
    }
    let armed = Arc::new(AtomicBool::new(false));
    let cache: Cache<u64, Bomb> = Cache::builder().num_shards(4).build().unwrap();
    for k in 0..64 {
        cache.insert(k, Bomb(k, armed.clone()));
    }
    armed.store(true, SeqCst);
    let r = catch_unwind(AssertUnwindSafe(|| cache.iter().count()));
    assert!(r.is_err());
    armed.store(false, SeqCst);
    let c = cache.clone();
    let a = armed.clone();
    parallel(
        Duration::from_secs(10),
        "writes after a panic",
        THREADS,
        move |t| {
            for k in 0..64 {
                c.insert(k + 100 * t as u64, Bomb(k, a.clone()));
            }
        },
    );
    assert_eq!(cache.iter().count() as u64, cache.entry_count());
    cache.check_invariants();
}

// -------------------------------------------- invalidate_entries_if ----

/// A predicate that writes to the shard being tested (one shard) on every
/// call still ends (after 8 passes), removes what it approved, calls the
/// listener once per removal, and the stats agree.
#[test]
fn invalidate_entries_if_with_a_predicate_writing_its_own_shard_ends() {
    let (cache, heard) = heard_by(Cache::builder().num_shards(1));
    for k in 0..20 {
        cache.insert(k, k);
    }
    let calls = AtomicUsize::new(0);
    let c = cache.clone();
    cache.invalidate_entries_if(|k, _| {
        calls.fetch_add(1, SeqCst);
        c.insert(1_000, calls.load(SeqCst) as u64);
        *k < 20 && k % 2 == 0
    });
    // 20 entries and key 1_000 from the first call on: 8 passes at most.
    assert!(
        calls.load(SeqCst) <= 20 + 7 * 21,
        "bounded retries: {calls:?}"
    );
    assert!((0..20u64).all(|k| cache.contains_key(&k) == (k % 2 == 1)));
    let heard = heard.lock().unwrap();
    let explicit: Vec<u64> = heard
        .iter()
        .filter(|(_, _, c)| *c == RemovalCause::Explicit)
        .map(|(k, _, _)| *k)
        .collect();
    assert_eq!(explicit.len(), 10, "{heard:?}");
    assert_eq!(cache.stats().removals(RemovalCause::Explicit), 10);
    let replaced = heard
        .iter()
        .filter(|(_, _, c)| *c == RemovalCause::Replaced)
        .count();
    assert_eq!(
        cache.stats().removals(RemovalCause::Replaced),
        replaced as u64
    );
}

/// `invalidate_entries_if` racing 7 writer threads whose values all
/// match: each removal is heard once, with the right cause, the stats
/// count the same, and every value ever inserted is either still cached
/// or heard of exactly once.
#[test]
fn invalidate_entries_if_under_writers_hears_each_removal_once() {
    let (cache, heard) = heard_by(Cache::builder().max_capacity(2_000).num_shards(4));
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, n, s) = (cache.clone(), next.clone(), stop.clone());
    parallel(TIMEOUT, "entries_if vs writers", THREADS, move |t| {
        let mut rng = Rng::new(t as u64 + 7);
        if t == 0 {
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1_500) {
                c.invalidate_entries_if(|_, v| v % 3 == 0);
                if rng.below(10) == 0 {
                    c.invalidate_all();
                }
            }
            s.store(true, SeqCst);
            return;
        }
        while !s.load(SeqCst) {
            let key = rng.below(3_000);
            match rng.below(10) {
                0 => {
                    c.invalidate(&key);
                }
                1 => {
                    c.remove(&key);
                }
                _ => c.insert(key, n.fetch_add(1, SeqCst)),
            }
        }
    });
    let made = next.load(SeqCst);
    let heard = heard.lock().unwrap();
    let mut by_value: HashMap<u64, usize> = HashMap::new();
    for (k, v, _) in heard.iter() {
        *by_value.entry(*v).or_default() += 1;
        assert!(*v < made, "{k} {v}");
    }
    assert!(by_value.values().all(|&n| n == 1), "a value heard twice");
    let cached: HashMap<u64, u64> = cache.iter().collect();
    for v in cached.values() {
        assert!(!by_value.contains_key(v), "value {v} both cached and heard");
    }
    assert_eq!(
        (by_value.len() + cached.len()) as u64,
        made - 1,
        "every value inserted is cached or heard of"
    );
    stats_count_what_was_heard(&cache, &heard);
    assert_eq!(cache.entry_count(), cached.len() as u64);
    cache.check_invariants();
}

// ------------------------------------------------------ invalidate_all ----

/// Every value whose insert returned before `invalidate_all` began is gone
/// when it returns, while 7 threads keep inserting.
#[test]
fn invalidate_all_removes_every_value_written_before_it_began() {
    let cache: Cache<u64, u64> = Cache::builder().num_shards(8).build().unwrap();
    // The highest value each writer has finished inserting.
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..THREADS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let (c, d, s) = (cache.clone(), done.clone(), stop.clone());
    parallel(TIMEOUT, "invalidate_all vs writers", THREADS, move |t| {
        if t == 0 {
            for _ in 0..200 {
                let before: Vec<u64> = d.iter().map(|a| a.load(SeqCst)).collect();
                c.invalidate_all();
                for (k, v) in c.iter() {
                    let w = (v >> 40) as usize;
                    let seq = v & ((1 << 40) - 1);
                    assert!(
                        seq > before[w],
                        "key {k}: value {seq} of writer {w} finished before the clear ({})",
                        before[w]
                    );
                }
            }
            s.store(true, SeqCst);
            return;
        }
        let mut rng = Rng::new(t as u64);
        let mut seq = 0;
        while !s.load(SeqCst) {
            seq += 1;
            c.insert(rng.below(5_000), ((t as u64) << 40) | seq);
            d[t].store(seq, SeqCst);
        }
    });
}

/// A `get_with` whose loader began before `invalidate_all` does not cache
/// its value, while other threads write.
#[test]
fn a_load_begun_before_invalidate_all_does_not_cache_its_value() {
    let cache: Cache<u64, u64> = Cache::builder().num_shards(4).build().unwrap();
    for round in 0..50u64 {
        let started = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let (c, st, rel) = (cache.clone(), started.clone(), release.clone());
        let loader = std::thread::spawn(move || {
            c.get_with(round, || {
                st.store(true, SeqCst);
                while !rel.load(SeqCst) {
                    std::thread::yield_now();
                }
                round + 1_000
            })
        });
        while !started.load(SeqCst) {
            std::thread::yield_now();
        }
        cache.insert(round + 10_000, 0);
        cache.invalidate_all();
        release.store(true, SeqCst);
        assert_eq!(loader.join().unwrap(), round + 1_000);
        assert_eq!(cache.peek(&round), None, "round {round}");
    }
}

// ------------------------------------------------------------- counters ----

/// Hits and misses are exact with more threads than the 64 counter
/// stripes, threads coming and going; removals by cause match what the
/// listener heard, expiry included.
#[test]
fn stats_are_exact_with_many_threads_coming_and_going() {
    let clock = MockClock::new();
    let (cache, heard) = heard_by(
        Cache::builder()
            .max_capacity(500)
            .num_shards(4)
            .time_to_live(Duration::from_secs(100))
            .clock(clock.clone()),
    );
    let mut hits = 0;
    let mut misses = 0;
    for round in 0..3u64 {
        let c = cache.clone();
        let clk = clock.clone();
        let counts = parallel(TIMEOUT, "stats", 80, move |t| {
            let mut rng = Rng::new(t as u64 + 1000 * round);
            let (mut h, mut m) = (0u64, 0u64);
            for i in 0..400 {
                let key = rng.below(1_000);
                match rng.below(8) {
                    0 => c.insert(key, i),
                    1 => {
                        c.invalidate(&key);
                    }
                    2 if t == 0 && i % 100 == 0 => {
                        clk.advance(Duration::from_secs(30));
                        c.run_pending_tasks();
                    }
                    3 => {
                        c.peek(&key);
                        c.contains_key(&key);
                    }
                    _ => {
                        if c.get(&key).is_some() {
                            h += 1;
                        } else {
                            m += 1;
                        }
                    }
                }
            }
            (h, m)
        });
        for (h, m) in counts {
            hits += h;
            misses += m;
        }
        let s = cache.stats();
        assert_eq!((s.hits(), s.misses()), (hits, misses), "round {round}");
    }
    clock.advance(Duration::from_secs(1_000));
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.weighted_size(), 0);
    let heard = heard.lock().unwrap();
    let s = cache.stats();
    for cause in CAUSES {
        let n = heard.iter().filter(|(_, _, c)| *c == cause).count() as u64;
        assert_eq!(s.removals(cause), n, "{cause:?}");
    }
}

/// `entry_count`, `weighted_size` and the sum of the weights of what `iter`
/// lists agree once writers stop; with a weigher and a bound, under 8
/// threads.
#[test]
fn entry_count_and_weighted_size_are_exact_when_quiescent() {
    let cache: Cache<u64, Vec<u8>> = Cache::builder()
        .max_capacity(5_000)
        .num_shards(8)
        .weigher(|_: &u64, v: &Vec<u8>| v.len() as u32)
        .build()
        .unwrap();
    let c = cache.clone();
    parallel(TIMEOUT, "weighted writers", THREADS, move |t| {
        let mut rng = Rng::new(t as u64 + 3);
        for _ in 0..5_000 {
            let key = rng.below(4_000);
            match rng.below(20) {
                0 => c.invalidate_entries_if(|k, _| k % 97 == 0),
                1 | 2 => c.invalidate(&key),
                _ => c.insert(key, vec![0; (key % 9) as usize]),
            }
        }
    });
    let listed: Vec<(u64, Vec<u8>)> = cache.iter().collect();
    assert_eq!(cache.entry_count(), listed.len() as u64);
    let total: u64 = listed.iter().map(|(_, v)| v.len() as u64).sum();
    assert_eq!(cache.weighted_size(), total);
    assert!(total <= 5_000);
    cache.check_invariants();
}

/// A key type whose `Hash`/`Eq` count calls: iterating hashes and
/// compares no key (so a key's panicking `Hash` cannot reach `iter`).
#[derive(Clone, Debug)]
struct Counted(u64, Arc<AtomicUsize>);
impl PartialEq for Counted {
    fn eq(&self, o: &Self) -> bool {
        self.1.fetch_add(1, SeqCst);
        self.0 == o.0
    }
}
impl Eq for Counted {}
impl Hash for Counted {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.1.fetch_add(1, SeqCst);
        self.0.hash(h);
    }
}

#[test]
fn iter_runs_no_key_hash_or_eq() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache: Cache<Counted, u64> = Cache::builder().num_shards(4).build().unwrap();
    for k in 0..100 {
        cache.insert(Counted(k, calls.clone()), k);
    }
    calls.store(0, SeqCst);
    assert_eq!(cache.iter().count(), 100);
    assert_eq!(calls.load(SeqCst), 0);
}

/// `run_pending_tasks` reaps every entry expired before it (its deadline
/// reached exactly, or passed by a nanosecond), whatever the lifetime and
/// however many: `entry_count` is then exact, and the listener and the
/// stats heard each once as `Expired`.
#[test]
fn run_pending_tasks_makes_entry_count_exact_at_the_deadline() {
    for ttl_ns in [
        1u64,
        999,
        1_000_000,
        1_048_575,
        1_048_577,
        3_000_000_007,
        70_000_000_000_000,
    ] {
        for extra in [0u64, 1] {
            let clock = MockClock::new();
            clock.advance(Duration::from_nanos(12_345_678));
            let (cache, heard) = heard_by(Cache::builder().num_shards(2).clock(clock.clone()));
            for k in 0..1_500 {
                cache.insert_with_ttl(k, k, Duration::from_nanos(ttl_ns));
            }
            cache.insert(99_999, 0);
            clock.advance(Duration::from_nanos(ttl_ns + extra));
            assert_eq!(cache.iter().count(), 1, "ttl {ttl_ns} + {extra}");
            cache.run_pending_tasks();
            assert_eq!(cache.entry_count(), 1, "ttl {ttl_ns} + {extra}");
            let heard = heard.lock().unwrap();
            assert_eq!(heard.len(), 1_500);
            assert!(heard.iter().all(|(_, _, c)| *c == RemovalCause::Expired));
            assert_eq!(cache.stats().removals(RemovalCause::Expired), 1_500);
        }
    }
}

/// Every value that enters the cache leaves it at most once, heard with one
/// cause, and the stats count exactly what the listener heard: a weighted,
/// bounded cache with short lifetimes on the real clock (the maintenance
/// thread reaping), 8 threads inserting, loading, removing, re-timing,
/// invalidating by predicate and clearing.
#[test]
fn every_value_is_heard_at_most_once_and_the_stats_match_under_a_mixed_load() {
    let (cache, heard) = heard_by(
        Cache::builder()
            .max_capacity(600)
            .num_shards(4)
            .weigher(|_: &u64, v: &u64| (v % 5) as u32)
            .time_to_live(Duration::from_millis(3)),
    );
    let next = Arc::new(AtomicU64::new(1));
    let (c, n) = (cache.clone(), next.clone());
    parallel(TIMEOUT, "mixed", THREADS, move |t| {
        let mut rng = Rng::new(t as u64 + 77);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1_500) {
            let key = rng.below(1_000);
            match rng.below(40) {
                0 if t == 0 => c.invalidate_all(),
                1 => c.invalidate_entries_if(|k, v| (k + v) % 7 == 0),
                2..=4 => {
                    c.remove(&key);
                }
                5 => {
                    c.expire_in(&key, Duration::from_micros(rng.below(2_000)));
                }
                6 => {
                    c.persist(&key);
                }
                7 => c.run_pending_tasks(),
                8..=14 => {
                    c.get_with(key, || n.fetch_add(1, SeqCst));
                }
                15..=18 => c.insert_with_ttl(
                    key,
                    n.fetch_add(1, SeqCst),
                    Duration::from_micros(rng.below(5_000)),
                ),
                19..=28 => c.insert(key, n.fetch_add(1, SeqCst)),
                _ => {
                    c.get(&key);
                }
            }
        }
    });
    // Quiescent: every lifetime given is at most 5 ms (or none, after a
    // `persist`), so once they have all passed and a pass has reaped them
    // (waiting for the maintenance thread's), nothing else leaves.
    std::thread::sleep(Duration::from_millis(20));
    cache.run_pending_tasks();
    let made = next.load(SeqCst);
    let cached: HashMap<u64, u64> = cache.iter().collect();
    let heard = heard.lock().unwrap();
    let mut seen: HashMap<u64, RemovalCause> = HashMap::new();
    for (_, v, c) in heard.iter() {
        assert!(seen.insert(*v, *c).is_none(), "value {v} heard twice");
    }
    for v in cached.values() {
        assert!(!seen.contains_key(v), "value {v} cached and heard");
    }
    // Values never admitted (weight 0 aside) are heard as Size; loads kept
    // out by a write return their value uncached and are never heard.
    assert!(((seen.len() + cached.len()) as u64) < made);
    stats_count_what_was_heard(&cache, &heard);
    let weight: u64 = cached.values().map(|v| v % 5).sum();
    assert_eq!(cache.weighted_size(), weight);
    cache.check_invariants();
}

/// A background reload under way when `invalidate_all` (or an
/// `invalidate_entries_if` that removes its key) runs does not put its
/// value back: the key's value was removed, not reaped, and a reload
/// replaces only the value it was started for.
#[test]
fn a_reload_under_way_does_not_refill_a_key_cleared_meanwhile() {
    for how in ["invalidate_all", "entries_if"] {
        let clock = MockClock::new();
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let entered = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (g, e, n) = (gate.clone(), entered.clone(), calls.clone());
        let cache = Cache::builder()
            .clock(clock.clone())
            .loader(move |k: &u64| -> Result<Option<u64>, String> {
                let call = n.fetch_add(1, SeqCst);
                if call > 0 {
                    e.store(true, SeqCst);
                    let (lock, cv) = &*g;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                }
                Ok(Some(*k + 100 * call))
            })
            .refresh_after(Duration::from_secs(10))
            .reload_threads(1)
            .build()
            .unwrap();
        assert_eq!(cache.get(&1).unwrap(), Some(1));
        clock.advance(Duration::from_secs(11));
        assert_eq!(
            cache.get(&1).unwrap(),
            Some(1),
            "a hit that starts a reload"
        );
        let started = Instant::now();
        while !entered.load(SeqCst) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "reload never started"
            );
            std::thread::yield_now();
        }
        match how {
            "invalidate_all" => cache.invalidate_all(),
            _ => cache.invalidate_entries_if(|_, _| true),
        }
        {
            let (lock, cv) = &*gate;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        cache.run_pending_tasks();
        assert_eq!(
            cache.peek(&1),
            None,
            "{how}: the reload refilled a cleared key"
        );
        assert_eq!(cache.entry_count(), 0, "{how}");
    }
}

/// Every `get_with` is one lookup (a hit, or a miss when it loads or waits
/// for another caller's load), and every loader run one load, with 8
/// threads stampeding on few keys that are invalidated meanwhile.
///
#[test]
fn each_get_with_is_one_lookup_and_each_loader_run_one_load_under_a_stampede() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(64)
        .num_shards(2)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let (c, r) = (cache.clone(), runs.clone());
    let calls = parallel(TIMEOUT, "stampede", THREADS, move |t| {
        let mut rng = Rng::new(t as u64 + 5);
        let mut calls = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1_000) {
            let key = rng.below(16);
            if rng.below(8) == 0 {
                c.invalidate(&key);
                continue;
            }
            if rng.below(50) == 0 {
                c.invalidate_entries_if(|k, _| k % 4 == 0);
                continue;
            }
            let v = c.get_with(key, || {
                r.fetch_add(1, SeqCst);
                std::thread::sleep(Duration::from_micros(200));
                key * 10
            });
            assert_eq!(v, key * 10);
            calls += 1;
        }
        calls
    });
    let calls: u64 = calls.iter().sum();
    let s = cache.stats();
    assert_eq!(s.hits() + s.misses(), calls);
    assert_eq!(s.loads(), runs.load(SeqCst));
    assert!(s.misses() >= s.loads());
}
