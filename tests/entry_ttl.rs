//! One entry's lifetime read: `expires_in` (Redis's `TTL`), on a
//! `MockClock`: the time left reported exactly, and no side effects.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use larder::{Cache, RemovalCause, clock::MockClock};

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const NS: Duration = Duration::from_nanos(1);

#[test]
fn time_left_is_reported_exactly() {
    let clock = MockClock::new();
    let cache = Cache::builder()
        .time_to_live(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    cache.insert_with_ttl(2, 2, secs(3));
    assert_eq!(cache.expires_in(&1), Some(Some(secs(10))));
    clock.advance(secs(2) + NS);
    assert_eq!(cache.expires_in(&1), Some(Some(secs(8) - NS)));
    assert_eq!(cache.expires_in(&2), Some(Some(secs(1) - NS)));
    assert_eq!(cache.expires_in(&3), None, "absent");
    clock.advance(secs(1) - NS);
    assert_eq!(cache.expires_in(&2), None, "expired at its deadline");
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.entry_count(), 2, "expired, not reaped yet");

    let plain: Cache<u32, u32> = Cache::new(10);
    plain.insert(1, 1);
    assert_eq!(plain.expires_in(&1), Some(None), "never expires");
    assert_eq!(plain.expires_in(&2), None);
}

#[test]
fn reading_the_time_left_has_no_side_effects() {
    let clock = MockClock::new();
    let cache = Cache::builder()
        .time_to_idle(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    for _ in 0..3 {
        clock.advance(secs(3));
        cache.expires_in(&1);
        cache.expires_in(&2);
    }
    assert_eq!(cache.expires_in(&1), Some(Some(secs(1))), "no idle slide");
    clock.advance(secs(1));
    assert_eq!(cache.get(&1), None, "idle for the whole time to idle");
    let stats = cache.stats();
    assert_eq!(
        (stats.hits(), stats.misses()),
        (0, 1),
        "only the get counted"
    );
}

/// The eviction policy is not told of `expires_in`. In a full cache, 500
/// residents read four times each and 500 others whose time left is only
/// read with `expires_in` meet a stream of one-off keys: the
/// policy evicts some of the second 500, which it sees as never read, and
/// none of the first. Had the calls counted as reads, the two groups would
/// look alike and lose entries alike (as they do when the second 500 are
/// read: then the first lose some too).
#[test]
fn the_eviction_policy_is_not_told() {
    /// How many of keys 0..500 (read) and 500..1000 (given `touch` four
    /// times each) a stream of one-off keys evicts.
    fn evicted(touch: impl Fn(&Cache<u32, u32>, u32)) -> (usize, usize) {
        let evicted: Arc<Mutex<Vec<u32>>> = Arc::default();
        let sink = evicted.clone();
        let cache = Cache::builder()
            .max_capacity(1000)
            .num_shards(1)
            .eviction_listener(move |k: Arc<u32>, _: u32, cause| {
                if cause == RemovalCause::Size {
                    sink.lock().unwrap().push(*k);
                }
            })
            .build()
            .unwrap();
        for k in 0..1000 {
            cache.insert(k, k);
        }
        for _ in 0..4 {
            for k in 0..500 {
                cache.get(&k);
            }
            for k in 500..1000 {
                touch(&cache, k);
            }
        }
        for k in 10_000..14_000 {
            cache.insert(k, k);
            cache.get(&k);
        }
        let evicted = evicted.lock().unwrap();
        let read = evicted.iter().filter(|&&k| k < 500).count();
        let touched = evicted
            .iter()
            .filter(|&&k| (500..1000).contains(&k))
            .count();
        (read, touched)
    }
    let lifetimes = evicted(|cache, k| {
        assert!(cache.expires_in(&k).is_some());
    });
    let (read, touched) = lifetimes;
    assert!(
        read == 0 && touched > 0,
        "the policy saw expires_in: {lifetimes:?} evicted"
    );
    let both_read = evicted(|cache, k| {
        cache.get(&k);
    });
    assert!(both_read.0 > 0, "read alike, evicted alike: {both_read:?}");
}
