//! Expired entries make way before live ones (README, "Semantics worth
//! knowing"): no live entry is evicted, and no new key turned away, for
//! size while an expired entry is held in the shard, within what one write
//! may reap. Black-box, one shard, on a `MockClock`, with a listener that
//! logs every removal and its cause.
//!
//! * `one_write_reaps_at_most_the_reap_budget_under_its_lock`: the bound
//!   on that work (found by a review of the first version, in which one
//!   weighted insert reaped all 20,000 due weightless entries of its shard
//!   under its write lock).
//! * The `contract_*` tests: random writes, reads of favourites (into the
//!   policy's protected segment, where no duel meets them) and clock steps
//!   at capacities of 50 to 3,000 (above 2,048 the policy walks its
//!   protected segment), TTL and TTI, weighted (weightless entries
//!   included) and not, checking the contract after every write, and the
//!   listener against the stats. Each failed within a few hundred steps
//!   before expired entries in the protected segment made way.
//! * `a_hash_panicking_around_reap_instead_loses_nothing`: a key's `Hash`
//!   that panics at each hash in turn of a write that reaps for room.
#![cfg(feature = "test-util")]

#[path = "support/fused.rs"]
mod fused;
#[path = "support/rng.rs"]
mod rng;

use fused::Fused;
use larder::{Cache, RemovalCause, clock::MockClock};
use rng::Rng;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// (key, serial of the value, cause).
type Log = Arc<Mutex<Vec<(u32, u64, RemovalCause)>>>;

/// Value = (weight, serial).
fn cache(
    cap: u64,
    weighted: bool,
    tti: Option<Duration>,
    clock: &MockClock,
) -> (Cache<u32, (u32, u64)>, Log) {
    timed_cache(cap, weighted, tti, None, clock)
}

/// [`cache`] with a time to live spread by a jitter of [`JITTER`] too.
fn timed_cache(
    cap: u64,
    weighted: bool,
    tti: Option<Duration>,
    ttl: Option<Duration>,
    clock: &MockClock,
) -> (Cache<u32, (u32, u64)>, Log) {
    let log: Log = Arc::default();
    let l = log.clone();
    let mut b = Cache::builder()
        .max_capacity(cap)
        .num_shards(1)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, v: (u32, u64), cause| {
            l.lock().unwrap().push((*k, v.1, cause))
        });
    if weighted {
        b = b.weigher(|_k: &u32, v: &(u32, u64)| v.0);
    }
    if let Some(tti) = tti {
        b = b.time_to_idle(tti);
    }
    if let Some(ttl) = ttl {
        b = b.time_to_live(ttl).ttl_jitter(JITTER);
    }
    (b.build().unwrap(), log)
}

/// The documented bound of `REAP_BUDGET` (src/shard/mod.rs): "At most this
/// many expired entries are reaped per lock hold, so a mass expiry never
/// keeps readers waiting long."
const REAP_BUDGET: usize = 512;

/// The jitter of the configurations with a time to live of their own.
const JITTER: f64 = 0.2;

/// A weighted shard holding many expired weightless entries (which take no
/// room and are never evicted for size) and full of live weighted ones:
/// one insert that needs one unit of room reaps at most `REAP_BUDGET` of
/// them, 8 at a time, each batch freeing nothing, and then evicts a live
/// one, as the maintenance thread reaps at most `REAP_BUDGET` per lock
/// hold. Unbounded, the insert reaped all 20,000 under its write lock.
#[test]
fn one_write_reaps_at_most_the_reap_budget_under_its_lock() {
    let clock = MockClock::new();
    let (cache, log) = cache(10, true, None, &clock);
    for k in 0..10u32 {
        cache.insert(k, (1, u64::from(k))); // live, the shard full
    }
    for k in 1_000..21_000u32 {
        cache.insert_with_ttl(k, (0, u64::from(k)), Duration::from_secs(1));
    }
    clock.advance(Duration::from_secs(2));
    let before = log.lock().unwrap().len();
    cache.insert(99, (1, 99));
    let heard: Vec<_> = log.lock().unwrap()[before..].to_vec();
    let expired = heard
        .iter()
        .filter(|e| e.2 == RemovalCause::Expired)
        .count();
    let size = heard.iter().filter(|e| e.2 == RemovalCause::Size).count();
    assert!(
        expired <= REAP_BUDGET,
        "one insert reaped {expired} expired (weightless) entries under its lock, \
         then evicted {size} live one(s) for size anyway"
    );
}

/// What the test knows of a held value: its serial and the latest time
/// (ns) by which it has certainly expired (`u64::MAX`: never).
#[derive(Clone, Copy, Debug)]
struct Held {
    serial: u64,
    hi: u64,
    /// The hard deadline's latest time (the write's lifetime).
    hard: u64,
}

struct Run {
    cache: Cache<u32, (u32, u64)>,
    log: Log,
    clock: MockClock,
    now: u64,
    tti: Option<u64>,
    ttl: Option<u64>,
    held: HashMap<u32, Held>,
    seen: usize,
    serial: u64,
    sizes: u64,
    reaped_by_writes: u64,
}

impl Run {
    /// Takes the removals heard since the last call off `held`; returns
    /// how many were `Size` and how many `Expired`.
    fn drain(&mut self) -> (u64, u64) {
        let log = self.log.lock().unwrap();
        let (mut size, mut expired) = (0, 0);
        for &(k, serial, cause) in &log[self.seen..] {
            match cause {
                RemovalCause::Size => size += 1,
                RemovalCause::Expired => expired += 1,
                _ => {}
            }
            if self.held.get(&k).is_some_and(|h| h.serial == serial) {
                self.held.remove(&k);
            }
        }
        self.seen = log.len();
        (size, expired)
    }

    fn insert(&mut self, k: u32, weight: u32, ttl: Option<u64>) {
        self.serial += 1;
        let value = (weight, self.serial);
        match ttl {
            Some(ttl) => self
                .cache
                .insert_with_ttl(k, value, Duration::from_nanos(ttl)),
            None => self.cache.insert(k, value),
        }
        let spread = |t: u64| t + (t as f64 * JITTER) as u64 + 1;
        let hard = match (ttl, self.ttl) {
            (Some(ttl), _) => self.now + ttl,
            (None, Some(ttl)) => self.now + spread(ttl),
            (None, None) => u64::MAX,
        };
        let hi = self.tti.map_or(hard, |tti| hard.min(self.now + tti));
        self.held.insert(
            k,
            Held {
                serial: self.serial,
                hi,
                hard,
            },
        );
        let (size, expired) = self.drain();
        self.sizes += size;
        self.reaped_by_writes += expired;
        if size > 0 {
            // README: no live entry is evicted, and no new key turned away,
            // for size while an expired entry is still held in that shard.
            let now = self.now;
            let stale: Vec<_> = self.held.iter().filter(|(_, h)| h.hi <= now).collect();
            assert!(
                stale.is_empty(),
                "at {now}: {size} size eviction(s) by the write of {k} while {} expired entries \
                 are held, e.g. {:?}",
                stale.len(),
                &stale[..stale.len().min(4)]
            );
        }
    }

    fn get(&mut self, k: u32) {
        if self.cache.get(&k).is_some() {
            if let (Some(tti), Some(h)) = (self.tti, self.held.get_mut(&k)) {
                h.hi = h.hi.max(h.hard.min(self.now + tti));
            }
        }
        self.drain();
    }

    fn advance(&mut self, ns: u64) {
        self.clock.advance(Duration::from_nanos(ns));
        self.now += ns;
    }
}

/// Random writes, reads of favourites and clock steps against the
/// contract, with invariants and the stats checked as it goes.
fn contract(
    cap: u64,
    weighted: bool,
    tti: Option<Duration>,
    seed: u64,
    ops: usize,
    pace: u64,
) -> (u64, u64) {
    contract_timed(cap, weighted, tti, None, seed, ops, pace)
}

/// [`contract`] with a time to live (jittered) in the cache's settings.
fn contract_timed(
    cap: u64,
    weighted: bool,
    tti: Option<Duration>,
    cfg_ttl: Option<Duration>,
    seed: u64,
    ops: usize,
    pace: u64,
) -> (u64, u64) {
    let clock = MockClock::new();
    let (cache, log) = timed_cache(cap, weighted, tti, cfg_ttl, &clock);
    let mut run = Run {
        cache,
        log,
        clock,
        now: 0,
        tti: tti.map(|d| d.as_nanos() as u64),
        ttl: cfg_ttl.map(|d| d.as_nanos() as u64),
        held: HashMap::new(),
        seen: 0,
        serial: 0,
        sizes: 0,
        reaped_by_writes: 0,
    };
    let mut rng = Rng::new(seed);
    let ms = 1_000_000u64;
    let universe = cap * 4;
    let favourites = (cap / 3).max(1);
    for step in 0..ops {
        match rng.below(100) {
            0..=44 => {
                let k = rng.below(universe) as u32;
                let weight = if weighted { rng.below(4) as u32 } else { 1 };
                let ttl = match (tti.is_some(), rng.below(5)) {
                    (true, 0) => Some(ms * (1 + rng.below(30))),
                    (true, _) | (false, 0..=1) => None,
                    (false, 2) => Some(ms * (1 + rng.below(3))),
                    (false, 3) => Some(ms * (5 + rng.below(50))),
                    // Exactly a tick, or a sub-tick lifetime.
                    (false, _) => Some([1u64 << 20, 1, 300_000, 0][rng.below(4) as usize]),
                };
                run.insert(k, weight, ttl);
            }
            45..=89 => {
                // Favourites: read again and again, into protected.
                let k =
                    rng.below(favourites) as u32 + if rng.below(2) == 0 { 0 } else { cap as u32 };
                run.get(k);
            }
            90..=97 => run.advance(rng.below(pace)),
            _ => {
                let far = if tti.is_some() { 2 << 20 } else { 40 * ms };
                run.advance([1, (1 << 20) - 1, 1 << 20, far][rng.below(4) as usize])
            }
        }
        if step % 997 == 0 {
            run.cache.check_invariants();
        }
    }
    run.cache.check_invariants();
    run.cache.run_pending_tasks();
    run.drain();
    let stats = run.cache.stats();
    let log = run.log.lock().unwrap();
    for cause in [
        RemovalCause::Expired,
        RemovalCause::Explicit,
        RemovalCause::Replaced,
        RemovalCause::Size,
    ] {
        let heard = log.iter().filter(|e| e.2 == cause).count() as u64;
        assert_eq!(
            stats.removals(cause),
            heard,
            "stats vs listener for {cause:?}"
        );
    }
    // Every value written is held or was heard once.
    let mut heard: HashMap<u64, usize> = HashMap::new();
    for e in log.iter() {
        *heard.entry(e.1).or_default() += 1;
    }
    assert!(heard.values().all(|&n| n == 1), "a value heard twice");
    assert_eq!(
        heard.len() as u64 + run.cache.entry_count(),
        run.serial,
        "values lost"
    );
    (run.sizes, run.reaped_by_writes)
}

/// Unweighted, TTL, from a cache the proptest model reaches (50) to one
/// whose policy walks (3,000).
#[test]
fn contract_holds_unweighted_with_ttl() {
    for (cap, seed) in [(50, 1), (300, 2), (300, 3), (3_000, 4)] {
        let pace = 3_000_000 * 50 / cap;
        let (sizes, reaped) = contract(cap, false, None, seed, 60_000, pace);
        assert!(
            sizes > 100 && reaped > 100,
            "cap {cap}: {sizes} size, {reaped} reaped by writes"
        );
    }
}

/// Weighted with weightless entries, TTL.
#[test]
fn contract_holds_weighted_with_ttl() {
    for (cap, seed) in [(50, 5), (300, 6), (3_000, 7)] {
        let pace = 3_000_000 * 50 / cap;
        let (sizes, reaped) = contract(cap, true, None, seed, 60_000, pace);
        assert!(
            sizes > 100 && reaped > 100,
            "cap {cap}: {sizes} size, {reaped} reaped by writes"
        );
    }
}

/// Time to idle, whose slid deadlines the wheel learns only when it meets
/// them, weighted and not.
#[test]
fn contract_holds_with_time_to_idle() {
    for (cap, weighted, seed) in [
        (50, false, 8),
        (300, false, 9),
        (300, true, 10),
        (3_000, false, 11),
    ] {
        let tti = Some(Duration::from_micros((cap * 100).max(20_000)));
        let (sizes, _) = contract(cap, weighted, tti, seed, 60_000, 50_000);
        assert!(sizes > 100, "cap {cap}: {sizes} size");
    }
}

/// Time to idle capped by hard deadlines (a jittered time to live, and
/// writes' own lifetimes), weighted and not.
#[test]
fn contract_holds_with_idle_and_hard_deadlines() {
    for (cap, weighted, seed) in [(50, false, 12), (300, true, 13), (300, false, 14)] {
        let tti = Some(Duration::from_millis(30));
        let ttl = Some(Duration::from_millis(20));
        let (sizes, _) = contract_timed(cap, weighted, tti, ttl, seed, 60_000, 50_000);
        assert!(sizes > 100, "cap {cap}: {sizes} size");
    }
}

/// A key's `Hash` that panics at each hash in turn of a write whose room
/// comes from `Shard::reap_instead` (the throttled
/// reap already spent in this millisecond, the expired entries read into
/// protected): every value is held or heard once, the shard stays within
/// its bound and whole, and the panic reaches the caller.
#[test]
fn a_hash_panicking_around_reap_instead_loses_nothing() {
    for fuse in 0..24 {
        let heard: Arc<Mutex<Vec<(u32, RemovalCause)>>> = Arc::default();
        let clock = MockClock::new();
        let cache: Cache<Fused, u32> = {
            let heard = heard.clone();
            Cache::builder()
                .max_capacity(20)
                .num_shards(1)
                .clock(clock.clone())
                .eviction_listener(move |k: Arc<Fused>, _, cause| {
                    heard.lock().unwrap().push((k.0, cause))
                })
                .build()
                .unwrap()
        };
        for k in 0..10 {
            cache.insert(Fused(k), k); // live, never read
        }
        for k in 10..20 {
            cache.insert_with_ttl(Fused(k), k, Duration::from_secs(1));
        }
        for _ in 0..4 {
            for k in 10..20 {
                cache.get(&Fused(k)); // favourites, into protected
            }
        }
        clock.advance(Duration::from_secs(2));
        // The first write of the millisecond reaps 8; the next ones fill
        // the shard again, 2 expired entries still held.
        for k in 100..108 {
            cache.insert(Fused(k), k);
        }
        assert_eq!(cache.entry_count(), 20);
        let (outcome, _) = fused::lit(fuse, || cache.insert(Fused(200), 200));
        cache.check_invariants();
        assert!(cache.entry_count() <= 20, "fuse {fuse}");
        let during = heard.lock().unwrap().clone();
        // Expired entries left are heard now (an expired entry is no
        // longer `contains_key`).
        cache.run_pending_tasks();
        let heard = heard.lock().unwrap().clone();
        for k in (0..20).chain(100..108) {
            let times = heard.iter().filter(|e| e.0 == k).count();
            assert_eq!(
                usize::from(cache.contains_key(&Fused(k))) + times,
                1,
                "fuse {fuse}: key {k} held or heard once ({heard:?})"
            );
        }
        let new = heard.iter().filter(|e| e.0 == 200).count();
        if outcome.is_ok() {
            assert_eq!(
                usize::from(cache.contains_key(&Fused(200))) + new,
                1,
                "fuse {fuse}"
            );
        }
        assert!(
            during.iter().all(|e| e.1 != RemovalCause::Size) || outcome.is_err(),
            "fuse {fuse}: a size eviction without a panic while expired entries were held: {during:?}"
        );
    }
}
