//! Any settings give a working cache or a `BuildError`, never a panic: the
//! three builders (`Cache`, loading, store) fed arbitrary values, extremes
//! included (zero, one nanosecond, `Duration::MAX`, `u64::MAX` and
//! `usize::MAX`, NaN and infinite fractions), and every cache that builds
//! then used for a few hundred operations on its own clock, with time
//! moved past its lifetimes, and dropped.

#[path = "support/cases.rs"]
mod cases;
#[path = "support/stores.rs"]
mod stores;

use std::{sync::Arc, time::Duration};

use larder::{BuildError, Cache, CacheBuilder, WhenFull, clock::MockClock};
use proptest::prelude::*;
use stores::MemStore;

/// Durations from none to the largest, the edges of the clock's range
/// (36.5 years) among them.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        1 => Just(Duration::ZERO),
        1 => Just(Duration::from_nanos(1)),
        6 => (1u64..5_000).prop_map(Duration::from_millis),
        6 => (1u64..100_000).prop_map(Duration::from_secs),
        1 => Just(Duration::from_secs(36 * 365 * 86_400)),
        1 => Just(Duration::from_secs(40 * 365 * 86_400)),
        1 => Just(Duration::from_secs(u64::MAX)),
        1 => Just(Duration::MAX),
    ]
}

/// Fractions in and out of every range a setting takes.
fn fraction() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => Just(0.0),
        1 => Just(-0.0),
        12 => 0.0f64..1.0,
        1 => Just(1.0),
        1 => Just(1.5),
        1 => Just(-0.25),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::MIN_POSITIVE),
    ]
}

/// Counts from none to the largest.
fn count() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0usize),
        2 => Just(1),
        8 => 2usize..100,
        1 => Just(1 << 20),
        1 => Just(usize::MAX / 2),
        1 => Just(usize::MAX),
    ]
}

/// The shared settings, each one given or left at its default.
#[derive(Clone, Debug)]
struct Core {
    capacity: Option<u64>,
    weighted: bool,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    jitter: Option<f64>,
    shards: Option<usize>,
}

fn core() -> impl Strategy<Value = Core> {
    (
        proptest::option::of(prop_oneof![
            Just(0u64),
            1u64..50,
            Just(1_000),
            Just(u64::MAX)
        ]),
        any::<bool>(),
        proptest::option::weighted(0.4, duration()),
        proptest::option::weighted(0.3, duration()),
        proptest::option::weighted(0.3, fraction()),
        // Many shards cost about 11 KB each: the top of the range is
        // covered by the errors either side of it.
        proptest::option::of(prop_oneof![
            1 => Just(0usize),
            12 => 1usize..9,
            2 => Just(64),
            1 => Just(65_537),
            1 => Just(usize::MAX)
        ]),
    )
        .prop_map(|(capacity, weighted, ttl, tti, jitter, shards)| Core {
            capacity,
            weighted,
            ttl,
            tti,
            jitter,
            shards,
        })
}

fn builder(core: &Core, clock: &MockClock) -> CacheBuilder<u64, u64> {
    let mut b = Cache::builder().clock(clock.clone());
    if let Some(capacity) = core.capacity {
        b = b.max_capacity(capacity);
    }
    if core.weighted {
        b = b.weigher(|_: &u64, v: &u64| (*v % 5) as u32);
    }
    if let Some(ttl) = core.ttl {
        b = b.time_to_live(ttl);
    }
    if let Some(tti) = core.tti {
        b = b.time_to_idle(tti);
    }
    if let Some(jitter) = core.jitter {
        b = b.ttl_jitter(jitter);
    }
    if let Some(shards) = core.shards {
        b = b.num_shards(shards);
    }
    b
}

/// Moves `clock` on in steps that cross every setting's scale.
fn step(clock: &MockClock, i: u64) {
    let ns = match i % 4 {
        0 => 1,
        1 => 1_000_000,
        2 => 3_000_000_000,
        _ => 100_000_000_000_000,
    };
    clock.advance(Duration::from_nanos(ns));
}

/// What a refused setting is told as: a `BuildError` whose message names
/// something (it is shown to people).
fn refused(err: &BuildError) {
    assert!(!err.to_string().is_empty(), "{err:?} has no message");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(512), ..ProptestConfig::default() })]

    #[test]
    fn cache_settings_build_or_are_refused(core in core(), ttls in proptest::collection::vec(duration(), 4)) {
        let clock = MockClock::new();
        let cache = match builder(&core, &clock).build() {
            Ok(cache) => cache,
            Err(err) => {
                refused(&err);
                return Ok(());
            }
        };
        for i in 0..300u64 {
            let k = i % 37;
            match i % 5 {
                0 => cache.insert_with_ttl(k, i, ttls[(i % 4) as usize]),
                1 => { cache.get(&k); }
                2 => { cache.expire_in(&k, ttls[((i + 1) % 4) as usize]); }
                3 => step(&clock, i / 5),
                _ => cache.insert(k, i),
            }
        }
        cache.run_pending_tasks();
        cache.check_invariants();
        if let Some(capacity) = core.capacity {
            prop_assert!(cache.weighted_size() <= capacity);
        }
    }

    #[test]
    fn loading_settings_build_or_are_refused(
        core in core(),
        refresh in proptest::option::weighted(0.3, duration()),
        stale_while in proptest::option::weighted(0.3, duration()),
        stale_if_error in proptest::option::weighted(0.3, duration()),
        beta in proptest::option::of(prop_oneof![fraction(), Just(7.5), Just(1e300)]),
        negative in proptest::option::weighted(0.3, duration()),
        // Reload threads are real threads: few, or one of the refused
        // counts (none, or past the limit).
        threads in proptest::option::weighted(0.3, prop_oneof![1 => Just(0usize), 8 => 1usize..4, 1 => Just(2_000), 1 => Just(usize::MAX)]),
        queue in proptest::option::weighted(0.3, count()),
    ) {
        let clock = MockClock::new();
        let mut b = builder(&core, &clock)
            .loader(|k: &u64| if k % 7 == 0 { Err("no".to_string()) } else { Ok(Some(k * 2).filter(|_| k % 5 != 0)) });
        if let Some(after) = refresh { b = b.refresh_after(after); }
        if let Some(window) = stale_while { b = b.stale_while_revalidate(window); }
        if let Some(window) = stale_if_error { b = b.stale_if_error(window); }
        if let Some(beta) = beta { b = b.early_expiry(beta); }
        if let Some(ttl) = negative { b = b.negative_ttl(ttl); }
        if let Some(threads) = threads { b = b.reload_threads(threads); }
        if let Some(queue) = queue { b = b.reload_queue_capacity(queue); }
        let cache = match b.build() {
            Ok(cache) => cache,
            Err(err) => {
                refused(&err);
                return Ok(());
            }
        };
        for i in 0..200u64 {
            let k = i % 23;
            match i % 4 {
                0 | 1 => {
                    let got = cache.get(&k);
                    if k % 7 != 0 && k % 5 != 0 {
                        prop_assert_eq!(got.ok().flatten().unwrap_or(k * 2), k * 2);
                    }
                }
                2 => step(&clock, i / 4),
                _ => cache.insert(k, k * 2),
            }
        }
        cache.run_pending_tasks();
    }

    #[test]
    fn store_settings_build_or_are_refused(
        core in core(),
        mode in prop_oneof![1 => Just(0u8), 1 => Just(1), 3 => Just(2)],
        batch in proptest::option::weighted(0.3, count()),
        interval in proptest::option::weighted(0.3, duration()),
        queue in proptest::option::weighted(0.3, count()),
        full in proptest::option::of(0u8..3),
        attempts in proptest::option::weighted(0.3, prop_oneof![Just(0u32), 1u32..5, Just(u32::MAX)]),
        backoff in proptest::option::weighted(0.3, (duration(), duration(), fraction())),
        drop_timeout in proptest::option::weighted(0.3, duration()),
    ) {
        let clock = MockClock::new();
        let store = MemStore::default();
        let mut b = builder(&core, &clock).store(store.clone());
        b = match mode {
            0 => b.write_through(),
            1 => b.write_around(),
            _ => b.write_behind(),
        };
        if let Some(batch) = batch { b = b.batch_size(batch); }
        // The flusher waits this long between passes: a test cannot wait
        // out days, so long intervals only go to caches it does not flush.
        if let Some(interval) = interval { b = b.flush_interval(interval); }
        if let Some(queue) = queue { b = b.queue_capacity(queue); }
        if let Some(full) = full {
            b = b.when_full([WhenFull::Block, WhenFull::WriteThrough, WhenFull::Fail][usize::from(full)]);
        }
        if let Some(attempts) = attempts { b = b.max_attempts(attempts); }
        if let Some((base, max, jitter)) = backoff { b = b.retry_backoff(base, max, jitter); }
        if let Some(timeout) = drop_timeout { b = b.drop_flush_timeout(timeout.min(Duration::from_secs(1))); }
        let cache = match b.build() {
            Ok(cache) => Arc::new(cache),
            Err(err) => {
                refused(&err);
                return Ok(());
            }
        };
        for i in 0..120u64 {
            let k = i % 17;
            match i % 4 {
                0 => { let _ = cache.insert(k, i); }
                1 => { let _ = cache.get(&k); }
                2 => { let _ = cache.remove(&k); }
                _ => step(&clock, i / 4),
            }
        }
        cache.run_pending_tasks();
        let report = cache.close(Duration::from_secs(2));
        drop(report);
    }
}
