//! Many threads on one cache: values never tear, the capacity bound holds
//! at every instant, and every value ever inserted is accounted for exactly
//! once (still cached, or seen once by the eviction listener).
//!
//! Operation counts are sized for a debug build on two shared cores.

use std::{
    collections::{HashMap, HashSet},
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

#[path = "support/threads.rs"]
mod threads;

use larder::{Cache, RemovalCause, clock::MockClock};
use threads::parallel;

const THREADS: usize = 8;
const CAPACITY: u64 = 1_000;
const KEY_SPACE: u64 = 10 * CAPACITY;
const SHARDS: usize = 4;
const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const TIMEOUT: Duration = Duration::from_secs(30);
const CAUSES: [RemovalCause; 4] = [
    RemovalCause::Expired,
    RemovalCause::Explicit,
    RemovalCause::Replaced,
    RemovalCause::Size,
];

/// xorshift64*: a small deterministic generator, one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(K1) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A value whose every field derives from its key (plus a unique id), so a
/// torn or misplaced value is detected by [`Val::check`].
#[derive(Clone, Debug)]
struct Val {
    key: u64,
    mixed: u64,
    body: Arc<[u64; 4]>,
    id: u64,
}

impl Val {
    fn new(key: u64, id: u64) -> Self {
        Val {
            key,
            mixed: key.wrapping_mul(K1),
            body: Arc::new(Self::body(key)),
            id,
        }
    }

    fn body(key: u64) -> [u64; 4] {
        [key, !key, key.rotate_left(17), key ^ K1]
    }

    fn matches(&self, key: u64) -> bool {
        self.key == key && self.mixed == key.wrapping_mul(K1) && *self.body == Self::body(key)
    }

    #[track_caller]
    fn check(&self, key: u64) {
        assert!(self.matches(key), "value {self:?} read under key {key}");
    }
}

/// Samples the cache's size on its own thread until stopped, asserting the
/// documented bound (never more than `max_capacity`) at every sample.
struct Monitor {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<usize>>,
}

impl Monitor {
    fn start<V: Clone + Send + Sync + 'static>(cache: &Cache<u64, V>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (cache, flag) = (cache.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let mut samples = 0;
            while !flag.load(SeqCst) {
                let (count, weight) = (cache.entry_count(), cache.weighted_size());
                assert!(
                    count <= CAPACITY,
                    "entry_count {count} exceeded the capacity {CAPACITY} while running"
                );
                assert!(
                    weight <= CAPACITY,
                    "weighted_size {weight} exceeded the capacity {CAPACITY} while running"
                );
                samples += 1;
                thread::yield_now();
            }
            samples
        });
        Monitor {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; re-raises the monitor's assertion failure if any.
    fn finish(mut self) -> usize {
        self.stop.store(true, SeqCst);
        match self.handle.take().expect("joined once").join() {
            Ok(samples) => samples,
            Err(payload) => panic::resume_unwind(payload),
        }
    }
}

impl Drop for Monitor {
    /// Stops the sampler if a worker's failure unwinds past `finish`, so it
    /// does not spin on for the rest of the test binary.
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
    }
}

#[test]
fn values_match_their_keys_and_capacity_holds_under_contention() {
    const OPS: usize = 50_000;
    let cache: Cache<u64, Val> = Cache::builder()
        .max_capacity(CAPACITY)
        .num_shards(SHARDS)
        .build()
        .unwrap();
    let next_id = Arc::new(AtomicU64::new(0));
    let loads = Arc::new(AtomicUsize::new(0));
    let monitor = Monitor::start(&cache);
    let lookups = {
        let (cache, next_id, loads) = (cache.clone(), next_id.clone(), loads.clone());
        parallel(TIMEOUT, "mixed workload", THREADS, move |t| {
            let mut rng = Rng::new(t as u64 + 1);
            let (mut lookups, mut gets, mut found) = (0u64, 0u64, 0u64);
            for _ in 0..OPS {
                let key = rng.below(KEY_SPACE);
                match rng.below(10) {
                    0..=3 => {
                        lookups += 1;
                        gets += 1;
                        if let Some(v) = cache.get(&key) {
                            v.check(key);
                            found += 1;
                        }
                    }
                    4..=6 => cache.insert(key, Val::new(key, next_id.fetch_add(1, SeqCst))),
                    7 => {
                        if let Some(v) = cache.remove(&key) {
                            v.check(key);
                        }
                    }
                    _ => {
                        lookups += 1;
                        let v = cache.get_with(key, || {
                            loads.fetch_add(1, SeqCst);
                            Val::new(key, next_id.fetch_add(1, SeqCst))
                        });
                        v.check(key);
                    }
                }
            }
            (lookups, gets, found)
        })
    };
    let (lookups, gets, found) = lookups
        .into_iter()
        .fold((0, 0, 0), |(l, g, f), (dl, dg, df)| {
            (l + dl, g + dg, f + df)
        });
    let samples = monitor.finish();
    assert!(samples > 0, "the monitor sampled while the workers ran");

    assert!(
        cache.entry_count() <= CAPACITY,
        "entry_count {}",
        cache.entry_count()
    );
    assert!(
        cache.weighted_size() <= CAPACITY,
        "weighted_size {}",
        cache.weighted_size()
    );
    assert_eq!(
        cache.weighted_size(),
        cache.entry_count(),
        "unweighted: weight is the count"
    );
    cache.check_invariants();
    let mut live = 0;
    for key in 0..KEY_SPACE {
        if let Some(v) = cache.peek(&key) {
            v.check(key);
            live += 1;
        }
    }
    assert_eq!(
        live,
        cache.entry_count(),
        "peek finds exactly the counted entries"
    );
    let stats = cache.stats();
    assert_eq!(
        stats.hits() + stats.misses(),
        lookups,
        "one hit or miss per get / get_with"
    );
    // About a tenth of the keys are cached at any time.
    assert!(
        found * 50 > gets,
        "gets found {found} values in {gets} calls"
    );
    assert!(stats.hits() >= found, "every value a get found is a hit");
    assert_eq!(
        stats.loads(),
        loads.load(SeqCst) as u64,
        "one load counted per loader run"
    );
    assert_eq!(stats.load_failures(), 0);
}

#[test]
fn iter_lists_each_key_once_with_its_own_value_under_contention() {
    const WRITERS: usize = 6;
    const OPS: usize = 40_000;
    let cache: Cache<u64, Val> = Cache::builder()
        .max_capacity(CAPACITY)
        .num_shards(SHARDS)
        .build()
        .unwrap();
    for key in 0..CAPACITY {
        cache.insert(key, Val::new(key, 0));
    }
    let writing = Arc::new(AtomicUsize::new(WRITERS));
    let passes = {
        let (cache, writing) = (cache.clone(), writing.clone());
        parallel(TIMEOUT, "iterating while writing", THREADS, move |t| {
            let mut rng = Rng::new(t as u64 + 100);
            if t < WRITERS {
                for i in 0..OPS {
                    let key = rng.below(KEY_SPACE);
                    if rng.below(4) == 0 {
                        cache.remove(&key);
                    } else {
                        cache.insert(key, Val::new(key, i as u64));
                    }
                }
                writing.fetch_sub(1, SeqCst);
                return 0;
            }
            // Iterators: every pass lists each key at most once, each with
            // a value made for it, and no more entries than the bound; the
            // loop body writes to the cache, which it could not do if the
            // iterator held a shard's lock between items.
            let mut passes = 0;
            while writing.load(SeqCst) > 0 || passes == 0 {
                let mut seen = HashSet::new();
                for (key, value) in cache.iter() {
                    value.check(key);
                    assert!(seen.insert(key), "key {key} listed twice in one pass");
                    if rng.below(64) == 0 {
                        cache.insert(key, Val::new(key, 1));
                        cache.get(&rng.below(KEY_SPACE));
                    }
                }
                assert!(
                    seen.len() as u64 <= CAPACITY,
                    "{} entries listed",
                    seen.len()
                );
                passes += 1;
            }
            passes
        })
    };
    assert!(passes[WRITERS..].iter().all(|&p| p > 0));
    let listed: HashSet<u64> = cache.iter().map(|(k, _)| k).collect();
    let peeked: HashSet<u64> = (0..KEY_SPACE).filter(|k| cache.peek(k).is_some()).collect();
    assert_eq!(listed, peeked, "once quiet, iter and peek agree");
}

/// Weight of the value stored under `key`: 1..=16, or more than a shard's
/// share of the capacity for a few keys (those are never stored).
fn weight_of(key: u64) -> usize {
    if key % 1_009 == 0 {
        300
    } else {
        1 + (key % 16) as usize
    }
}

fn weighted_value(key: u64) -> Arc<Vec<u64>> {
    Arc::new(
        (0..weight_of(key) as u64)
            .map(|i| key ^ i.wrapping_mul(K1))
            .collect(),
    )
}

#[test]
fn weighted_size_stays_within_capacity_under_contention() {
    const OPS: usize = 30_000;
    let cache: Cache<u64, Arc<Vec<u64>>> = Cache::builder()
        .max_capacity(CAPACITY)
        .num_shards(SHARDS)
        .weigher(|_k: &u64, v: &Arc<Vec<u64>>| v.len() as u32)
        .build()
        .unwrap();
    let monitor = Monitor::start(&cache);
    let (gets, found) = {
        let cache = cache.clone();
        let counts = parallel(TIMEOUT, "weighted workload", THREADS, move |t| {
            let mut rng = Rng::new(100 + t as u64);
            let check = |key: u64, v: &Arc<Vec<u64>>| {
                assert_eq!(**v, *weighted_value(key), "value under key {key}")
            };
            let (mut gets, mut found) = (0u64, 0u64);
            for _ in 0..OPS {
                let key = rng.below(KEY_SPACE);
                match rng.below(10) {
                    0..=3 => {
                        gets += 1;
                        if let Some(v) = cache.get(&key) {
                            check(key, &v);
                            found += 1;
                        }
                    }
                    4..=7 => cache.insert(key, weighted_value(key)),
                    8 => {
                        cache.remove(&key);
                    }
                    _ => check(key, &cache.get_with(key, || weighted_value(key))),
                }
            }
            (gets, found)
        });
        counts
            .into_iter()
            .fold((0, 0), |(g, f), (dg, df)| (g + dg, f + df))
    };
    monitor.finish();
    // Weights from 1 to 300 in a bound of 1,000: a few keys at a time.
    check_gets_found(gets, found, cache.stats().hits());
    assert!(
        cache.weighted_size() <= CAPACITY,
        "weighted_size {}",
        cache.weighted_size()
    );
    cache.check_invariants();
    let mut weight = 0;
    for key in 0..KEY_SPACE {
        if let Some(v) = cache.peek(&key) {
            assert_eq!(*v, *weighted_value(key));
            assert!(
                v.len() < 300,
                "an entry heavier than its shard's share was stored (key {key})"
            );
            weight += v.len() as u64;
        }
    }
    assert_eq!(
        weight,
        cache.weighted_size(),
        "weighted_size is the sum of the live weights"
    );
}

/// What the eviction listener saw.
#[derive(Default)]
struct Seen {
    ids: Vec<(u64, RemovalCause)>,
    /// Notifications whose key did not match their value.
    mismatched: usize,
}

/// `found` values in `gets` calls of `get`: some (the caches here hold a
/// tenth to a hundredth of their keys, and the floor is far below), and no
/// more than the hits counted.
fn check_gets_found(gets: u64, found: u64, hits: u64) {
    assert!(
        found * 500 > gets,
        "gets found {found} values in {gets} calls"
    );
    assert!(hits >= found, "every value a get found is a hit");
}

/// Counts the writes of one key (or of all, for a bulk invalidation) as a
/// seqlock does: odd while one is under way.
struct Writing<'a>(&'a AtomicU64);

impl<'a> Writing<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, SeqCst);
        Writing(count)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// The values a thread made: those the cache took (`insert`, or a load that
/// no write of its key overlapped), and loads that a write of their key may
/// have overtaken, which `get_with` returns without caching.
#[derive(Default)]
struct Made {
    cached: Vec<u64>,
    overtaken: Vec<u64>,
    /// Loads among `cached`.
    loads: usize,
    /// `get` calls, and the values they found.
    gets: u64,
    found: u64,
}

/// Runs a mixed workload with an eviction listener and checks that every
/// value ever inserted is either in the cache or was notified exactly once,
/// and that the listener's per-cause counts equal `stats().removals`.
fn check_exactly_once_accounting(weighted: bool) {
    const OPS: usize = 20_000;
    let clock = MockClock::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    let mut builder = Cache::builder()
        .max_capacity(CAPACITY)
        .num_shards(SHARDS)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u64>, v: Val, cause| {
            let mut seen = log.lock().unwrap();
            if !v.matches(*k) {
                seen.mismatched += 1;
            }
            seen.ids.push((v.id, cause));
        });
    if weighted {
        // Weight from the key, some keys too heavy to be stored at all.
        builder = builder.weigher(|k: &u64, _v: &Val| weight_of(*k) as u32);
    } else {
        builder = builder.time_to_live(Duration::from_secs(1));
    }
    let cache: Cache<u64, Val> = builder.build().unwrap();
    let next_id = Arc::new(AtomicU64::new(0));
    let writes: Arc<Vec<AtomicU64>> = Arc::new((0..KEY_SPACE).map(|_| AtomicU64::new(0)).collect());
    let bulk = Arc::new(AtomicU64::new(0));
    let made: Vec<Made> = {
        let (cache, next_id, clock) = (cache.clone(), next_id.clone(), clock.clone());
        parallel(TIMEOUT, "accounting workload", THREADS, move |t| {
            let mut rng = Rng::new(1_000 + t as u64);
            let mut made = Made::default();
            let mine = &mut made.cached;
            let mut overtaken = Vec::new();
            let mut loads = 0;
            for op in 0..OPS {
                let key = rng.below(KEY_SPACE);
                let writes_of_key = &writes[key as usize];
                let writing = || Writing::new(writes_of_key);
                match rng.below(20) {
                    0..=6 => {
                        made.gets += 1;
                        if let Some(v) = cache.get(&key) {
                            v.check(key);
                            made.found += 1;
                        }
                    }
                    7..=11 => {
                        let v = Val::new(key, next_id.fetch_add(1, SeqCst));
                        mine.push(v.id);
                        let _w = writing();
                        cache.insert(key, v);
                    }
                    12 if !weighted => {
                        let v = Val::new(key, next_id.fetch_add(1, SeqCst));
                        mine.push(v.id);
                        let _w = writing();
                        cache.insert_with_ttl(key, v, Duration::from_millis(20));
                    }
                    13 | 14 => {
                        let _w = writing();
                        if let Some(v) = cache.remove(&key) {
                            v.check(key);
                        }
                    }
                    15 => {
                        let _w = writing();
                        cache.invalidate(&key);
                    }
                    _ => {
                        // A write of the key under way as the call begins, or
                        // begun before it returns, may keep its load out.
                        let before = (writes_of_key.load(SeqCst), bulk.load(SeqCst));
                        let mut loaded = None;
                        let v = cache.get_with(key, || {
                            let v = Val::new(key, next_id.fetch_add(1, SeqCst));
                            loaded = Some(v.id);
                            v
                        });
                        v.check(key);
                        let after = (writes_of_key.load(SeqCst), bulk.load(SeqCst));
                        if let Some(id) = loaded {
                            if before == after && before.0 % 2 == 0 && before.1 % 2 == 0 {
                                mine.push(id);
                                loads += 1;
                            } else {
                                overtaken.push(id);
                            }
                        }
                    }
                }
                if op % 100 == 0 {
                    clock.advance(Duration::from_millis(2));
                }
                if op % 4_000 == 3_999 {
                    match t % 3 {
                        0 => cache.run_pending_tasks(),
                        1 => {
                            let _w = Writing::new(&bulk);
                            cache.invalidate_entries_if(|k, _| k % 31 == (op as u64 % 31));
                        }
                        _ => {}
                    }
                }
            }
            made.overtaken = overtaken;
            made.loads = loads;
            made
        })
    };
    let inserted: Vec<u64> = made.iter().flat_map(|m| m.cached.iter().copied()).collect();
    let overtaken: HashSet<u64> = made
        .iter()
        .flat_map(|m| m.overtaken.iter().copied())
        .collect();
    assert_eq!(
        (inserted.len() + overtaken.len()) as u64,
        next_id.load(SeqCst),
        "every id handed out was inserted or loaded"
    );
    let loads: usize = made.iter().map(|m| m.loads).sum();
    assert!(loads > 1_000, "{loads} loads that must be cached, to check");
    let gets: u64 = made.iter().map(|m| m.gets).sum();
    let found: u64 = made.iter().map(|m| m.found).sum();
    check_gets_found(gets, found, cache.stats().hits());

    // The maintenance thread may be delivering a batch right now: poll until
    // every id is accounted for (a duplicate never goes away by waiting).
    let inserted_set: HashSet<u64> = inserted.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    let (cached, notified, mismatched) = loop {
        cache.run_pending_tasks();
        let cached: Vec<u64> = (0..KEY_SPACE)
            .filter_map(|key| {
                let v = cache.peek(&key)?;
                v.check(key);
                Some(v.id)
            })
            .collect();
        let (notified, mismatched) = {
            let seen = seen.lock().unwrap();
            (seen.ids.clone(), seen.mismatched)
        };
        let accounted: HashSet<u64> = cached
            .iter()
            .copied()
            .chain(notified.iter().map(|(id, _)| *id))
            .collect();
        if inserted_set.is_subset(&accounted) || Instant::now() > deadline {
            break (cached, notified, mismatched);
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(mismatched, 0, "listener got values under the wrong key");

    let mut count: HashMap<u64, usize> = HashMap::new();
    for id in cached.iter().chain(notified.iter().map(|(id, _)| id)) {
        *count.entry(*id).or_default() += 1;
    }
    let duplicated: Vec<_> = count
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(id, n)| (*id, *n))
        .take(10)
        .collect();
    assert!(
        duplicated.is_empty(),
        "ids cached and/or notified more than once (id, times): {duplicated:?}"
    );
    let missing: Vec<_> = inserted_set
        .iter()
        .filter(|id| !count.contains_key(id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "ids neither cached nor notified: {missing:?}"
    );
    let unknown: Vec<_> = count
        .keys()
        .filter(|id| !inserted_set.contains(id) && !overtaken.contains(id))
        .take(10)
        .collect();
    assert!(
        unknown.is_empty(),
        "ids that were never inserted: {unknown:?}"
    );

    // Inserts = entries still held + every removal, whatever its cause.
    assert_eq!(
        cache.entry_count(),
        cached.len() as u64,
        "entry_count after reaping counts live entries"
    );
    let overtaken_but_cached = overtaken.iter().filter(|id| count.contains_key(id)).count();
    assert_eq!(
        (inserted.len() + overtaken_but_cached) as u64,
        cache.entry_count() + notified.len() as u64
    );
    let stats = cache.stats();
    for cause in CAUSES {
        let by_listener = notified.iter().filter(|(_, c)| *c == cause).count() as u64;
        assert_eq!(
            stats.removals(cause),
            by_listener,
            "stats and listener disagree on {cause:?}"
        );
    }
    assert!(
        stats.removals(RemovalCause::Size) > 0,
        "the workload evicted for size"
    );
    assert!(
        stats.removals(RemovalCause::Explicit) > 0,
        "the workload removed explicitly"
    );
    assert!(
        stats.removals(RemovalCause::Replaced) > 0,
        "the workload replaced values"
    );
    if !weighted {
        assert!(
            stats.removals(RemovalCause::Expired) > 0,
            "the workload expired entries"
        );
    }
    assert!(cache.entry_count() <= CAPACITY);
    cache.check_invariants();
}

#[test]
fn every_inserted_value_is_cached_or_notified_exactly_once() {
    check_exactly_once_accounting(false);
}

#[test]
fn every_inserted_value_is_cached_or_notified_exactly_once_with_a_weigher() {
    check_exactly_once_accounting(true);
}

/// What a recording listener saw: `(key, value, cause)` in order.
type Log = Arc<Mutex<Vec<(u32, String, RemovalCause)>>>;

/// A listener that records `(key, value, cause)`; for the deterministic
/// accounting cases below.
fn recording_cache(clock: &MockClock) -> (Cache<u32, String>, Log) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .num_shards(1)
        .weigher(|_k: &u32, v: &String| v.len() as u32)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, v: String, cause| {
            sink.lock().unwrap().push((*k, v, cause))
        })
        .build()
        .unwrap();
    (cache, log)
}

#[test]
fn oversized_replace_of_a_live_entry_reports_replaced_then_size() {
    let clock = MockClock::new();
    let (cache, log) = recording_cache(&clock);
    cache.insert(1, "old".to_string());
    cache.insert(1, "x".repeat(101));
    assert_eq!(
        cache.get(&1),
        None,
        "an entry heavier than the capacity is not stored"
    );
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (1, "old".to_string(), RemovalCause::Replaced),
            (1, "x".repeat(101), RemovalCause::Size)
        ]
    );
    let stats = cache.stats();
    let counts: Vec<u64> = CAUSES.iter().map(|&c| stats.removals(c)).collect();
    assert_eq!(
        counts,
        vec![0, 0, 1, 1],
        "removals by [Expired, Explicit, Replaced, Size]"
    );
    assert_eq!((cache.entry_count(), cache.weighted_size()), (0, 0));
    cache.check_invariants();
}

#[test]
fn oversized_replace_of_an_expired_entry_counts_it_once_as_expired() {
    let clock = MockClock::new();
    let (cache, log) = recording_cache(&clock);
    cache.insert(2, "other".to_string());
    cache.invalidate(&2); // one Explicit removal on the books
    cache.insert_with_ttl(1, "old".to_string(), Duration::from_secs(1));
    clock.advance(Duration::from_secs(2));
    cache.insert(1, "x".repeat(101));
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (2, "other".to_string(), RemovalCause::Explicit),
            (1, "old".to_string(), RemovalCause::Expired),
            (1, "x".repeat(101), RemovalCause::Size),
        ]
    );
    let stats = cache.stats();
    let counts: Vec<u64> = CAUSES.iter().map(|&c| stats.removals(c)).collect();
    assert_eq!(
        counts,
        vec![1, 1, 0, 1],
        "removals by [Expired, Explicit, Replaced, Size]"
    );
    cache.check_invariants();
}

#[test]
fn oversized_replace_of_an_expired_entry_does_not_panic_with_no_explicit_removal_yet() {
    let clock = MockClock::new();
    let (cache, log) = recording_cache(&clock);
    cache.insert_with_ttl(1, "old".to_string(), Duration::from_secs(1));
    clock.advance(Duration::from_secs(2));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| cache.insert(1, "x".repeat(101))));
    assert!(
        outcome.is_ok(),
        "insert panicked (counter underflow under the shard lock)"
    );
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (1, "old".to_string(), RemovalCause::Expired),
            (1, "x".repeat(101), RemovalCause::Size)
        ],
        "both removals are notified"
    );
    let stats = cache.stats();
    let counts: Vec<u64> = CAUSES.iter().map(|&c| stats.removals(c)).collect();
    assert_eq!(
        counts,
        vec![1, 0, 0, 1],
        "removals by [Expired, Explicit, Replaced, Size]"
    );
}

/// Hits and misses stay exact when many threads read while others write
/// the same shards: a `get` counts its hit in its shard lock as it releases
/// the lock (with or without a deadline to check) and its miss in the
/// thread's stripe, and readers that find a writer inside back out and
/// wait.
#[test]
fn hits_and_misses_are_exact_under_concurrent_writes() {
    let builder = || Cache::builder().max_capacity(5_000).num_shards(SHARDS);
    exact_under_writes(builder().build().unwrap(), 500, false);
}

/// The same with a time to live: the reads check deadlines, and count
/// their hits in the lock as untimed ones do.
#[test]
fn hits_and_misses_are_exact_under_concurrent_writes_with_a_ttl() {
    let builder = || Cache::builder().max_capacity(5_000).num_shards(SHARDS);
    let ttl = Duration::from_secs(3_600);
    exact_under_writes(builder().time_to_live(ttl).build().unwrap(), 500, false);
}

/// The same in a small cache under a stream of new keys, which evicts:
/// each new key's write reads its shard lock's hit count for the policy's
/// readmissions while readers count theirs in it.
#[test]
fn hits_and_misses_are_exact_under_concurrent_evicting_writes_in_a_small_cache() {
    let cache = Cache::builder()
        .max_capacity(1_000)
        .num_shards(4)
        .build()
        .unwrap();
    exact_under_writes(cache, 300, true);
}

/// Readers ask for `present` keys (inserted first) and absent ones, while
/// two writers rewrite present keys and write keys no reader asks for:
/// the same few again and again, or (`new_keys`) ever new ones, when
/// present keys may be evicted and missed. The stats count exactly the
/// hits and misses the readers saw.
fn exact_under_writes(cache: Cache<u64, u64>, present: u64, new_keys: bool) {
    const READS: u64 = 20_000;
    for key in 0..present {
        cache.insert(key, key);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (cache, stop) = (cache.clone(), stop.clone());
            thread::spawn(move || {
                // Rewrites present keys with their own value (readers keep
                // finding them) and churns keys readers never ask for.
                let mut i = 0u64;
                while !stop.load(SeqCst) {
                    cache.insert(i % present, i % present);
                    let other = if new_keys { i } else { i % 1_000 };
                    cache.insert(1_000_000 + w * 1_000_000_000 + other, 0);
                    i += 1;
                }
            })
        })
        .collect();
    let reader_cache = cache.clone();
    let counts = parallel(TIMEOUT, "reader", THREADS, move |t| {
        let (mut hits, mut misses) = (0u64, 0u64);
        for i in 0..READS {
            // Every third key asked for is absent: 10_000 and up.
            let key = (i * 7 + t as u64) % (present + present / 2);
            let key = if key >= present { 10_000 + key } else { key };
            match reader_cache.get(&key) {
                Some(v) => {
                    assert_eq!(v, key, "a value under another key");
                    hits += 1;
                }
                None => {
                    assert!(new_keys || key >= 10_000, "present key {key} missed");
                    misses += 1;
                }
            }
        }
        (hits, misses)
    });
    stop.store(true, SeqCst);
    writers.into_iter().for_each(|w| w.join().unwrap());
    let (hits, misses) = counts
        .iter()
        .fold((0, 0), |(h, m), (th, tm)| (h + th, m + tm));
    assert_eq!(hits + misses, THREADS as u64 * READS);
    assert!(hits > 0 && misses > 0);
    let stats = cache.stats();
    assert_eq!((stats.hits(), stats.misses()), (hits, misses));
}

/// A loading cache's reads count their hits in the shard lock too, and a
/// read that finds an entry only in its stale-if-error window (a fallback:
/// counted a hit as the lock is released, then judged a miss) retracts
/// that hit: with every key in its fallback window and threads reading it
/// while the first of them reload it, the stats add up to the reads.
#[test]
fn hits_and_misses_are_exact_for_a_loading_cache_whose_reads_fall_back() {
    const READS: u64 = 5_000;
    const KEYS: u64 = 200;
    let clock = MockClock::new();
    let cache = Cache::builder()
        .clock(clock.clone())
        .time_to_live(Duration::from_secs(10))
        .max_capacity(1_000)
        .num_shards(SHARDS)
        .loader(|k: &u64| Ok::<_, String>(Some(*k)))
        .stale_if_error(Duration::from_secs(100))
        .build()
        .unwrap();
    // Half the keys loaded, then all of those past their time to live and
    // inside their fallback window; the other half never loaded.
    for key in 0..KEYS / 2 {
        assert_eq!(cache.get(&key).unwrap(), Some(key));
    }
    clock.advance(Duration::from_secs(20));
    let before = cache.stats();
    let reader_cache = cache.clone();
    parallel(TIMEOUT, "reader", THREADS, move |t| {
        for i in 0..READS {
            let key = (i * 7 + t as u64) % KEYS;
            assert_eq!(reader_cache.get(&key).unwrap(), Some(key));
        }
    });
    let stats = cache.stats();
    let (hits, misses) = (
        stats.hits() - before.hits(),
        stats.misses() - before.misses(),
    );
    assert_eq!(hits + misses, THREADS as u64 * READS, "{stats:?}");
    assert!(misses >= KEYS, "each key missed once at least: {stats:?}");
    assert!(hits > 0, "{stats:?}");
}
