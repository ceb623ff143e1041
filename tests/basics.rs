//! The core API: reads, writes, removal, bounds, stats and build errors.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use larder::{BuildError, Cache, RemovalCause};

#[test]
fn inserted_values_are_read_back_and_replaced() {
    let cache = Cache::new(100);
    cache.insert("a".to_string(), 1);
    cache.insert("b".to_string(), 2);
    assert_eq!(cache.get("a"), Some(1));
    cache.insert("a".to_string(), 3);
    assert_eq!(cache.get("a"), Some(3));
    assert_eq!(cache.peek("b"), Some(2));
    assert!(cache.contains_key("b"));
    assert_eq!(cache.entry_count(), 2);
}

#[test]
fn remove_returns_the_value_once_and_invalidate_discards() {
    let cache = Cache::new(10);
    cache.insert(1, "one");
    cache.insert(2, "two");
    assert_eq!(cache.remove(&1), Some("one"));
    assert_eq!(cache.remove(&1), None);
    cache.invalidate(&2);
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.stats().removals(RemovalCause::Explicit), 2);
}

#[test]
fn invalidate_all_and_entries_if_remove_what_they_say() {
    let cache = Cache::new(1_000);
    for i in 0..100u32 {
        cache.insert(i, i);
    }
    cache.invalidate_entries_if(|k, _| k % 2 == 0);
    assert_eq!(cache.entry_count(), 50);
    assert!((0..100u32).all(|i| cache.contains_key(&i) == (i % 2 == 1)));
    cache.invalidate_all();
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.weighted_size(), 0);
}

#[test]
fn entry_count_never_exceeds_capacity() {
    for shards in [1, 2, 8] {
        let cache = Cache::builder()
            .max_capacity(100)
            .num_shards(shards)
            .build()
            .unwrap();
        for i in 0..10_000u64 {
            cache.insert(i, i);
            assert!(
                cache.entry_count() <= 100,
                "{shards} shards: {} entries",
                cache.entry_count()
            );
        }
        assert!(
            cache.entry_count() >= 50,
            "the cache should stay reasonably full"
        );
        assert_eq!(
            cache.stats().removals(RemovalCause::Size),
            10_000 - cache.entry_count()
        );
    }
}

/// A shard's index starts at one page and grows to the size its bound
/// needs as entries arrive; filling past that point, and churning once
/// full, keeps every entry findable and the structures consistent.
/// A cache above 2,048 entries walks its protected segment near each
/// halving of its sketch, demoting the keys it has stopped counting. Here
/// 3,000 keys are read in rounds, then only 400 of them go on being read,
/// with 1,000 new hot keys, a stream of one-off keys and a removal every
/// 50 requests (so the ids the walk stands on move), for ten sample
/// periods. The bookkeeping holds throughout (the walk's place included)
/// and every key still read is cached at the end.
#[test]
fn a_large_cache_through_a_phase_change_keeps_its_bookkeeping_and_its_hot_keys() {
    let cache = Cache::builder()
        .max_capacity(4_096)
        .num_shards(1)
        .build()
        .unwrap();
    let access = |key: u64| {
        if cache.get(&key).is_none() {
            cache.insert(key, key);
        }
    };
    for _ in 0..40 {
        (0..3_000).for_each(access);
    }
    cache.check_invariants();
    let (mut state, mut cold) = (7u64, 1_000_000u64);
    for step in 0..400_000u64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = match state % 10 {
            0..=2 => state / 10 % 400,
            3..=6 => 100_000 + state / 10 % 1_000,
            _ => {
                cold += 1;
                cold
            }
        };
        access(key);
        if step % 50 == 0 {
            cache.invalidate(&(state / 100 % 3_000));
        }
        if step % 500 == 0 {
            cache.check_invariants();
        }
    }
    cache.check_invariants();
    let hot_held = (0..400)
        .chain(100_000..101_000)
        .filter(|key| cache.peek(key) == Some(*key))
        .count();
    // A key the last removals took has had no time to come back.
    assert!(hot_held >= 1_390, "{hot_held} of 1,400 hot keys held");
    assert!(cache.entry_count() <= 4_096);
}

#[test]
fn a_large_bound_fills_through_the_index_growth() {
    let cache = Cache::builder()
        .max_capacity(20_000)
        .num_shards(2)
        .build()
        .unwrap();
    for i in 0..20_000u64 {
        cache.insert(i, i);
        if i % 1_000 == 0 {
            cache.check_invariants();
        }
    }
    cache.check_invariants();
    // Each shard holds half the bound, and the keys do not split evenly:
    // the fuller shard starts evicting a little before 20,000.
    let filled = cache.entry_count();
    assert!((19_500..=20_000).contains(&filled), "{filled} entries");
    let held = (0..20_000u64).filter(|i| cache.get(i) == Some(*i)).count();
    assert_eq!(held as u64, filled);
    for i in 20_000..60_000u64 {
        cache.insert(i, i);
    }
    cache.check_invariants();
    let filled = cache.entry_count();
    assert!((19_500..=20_000).contains(&filled), "{filled} entries");
    let held = (0..60_000u64).filter(|i| cache.peek(i) == Some(*i)).count();
    assert_eq!(held as u64, filled);
}

#[test]
fn zero_capacity_keeps_nothing_and_reports_each_refusal() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let cache = Cache::builder()
        .max_capacity(0)
        .eviction_listener(move |k: Arc<u32>, v: u32, c| log.lock().unwrap().push((*k, v, c)))
        .build()
        .unwrap();
    cache.insert(1, 10);
    assert_eq!(cache.get(&1), None);
    assert_eq!(*seen.lock().unwrap(), vec![(1, 10, RemovalCause::Size)]);

    // Entries a weigher weighs at nothing too.
    let weightless = Cache::builder()
        .max_capacity(0)
        .weigher(|_: &u32, _: &u32| 0)
        .build()
        .unwrap();
    for k in 0..100 {
        weightless.insert(k, k);
    }
    assert_eq!((weightless.entry_count(), weightless.get(&7)), (0, None));
}

/// Weightless entries take no room and are never evicted for size (as in
/// Caffeine and quick_cache; until 7 December they were evicted as victims
/// like any other, which freed nothing, and this test asserted some were).
#[test]
fn weightless_entries_take_no_room_and_are_never_evicted_for_size() {
    let cache = Cache::builder()
        .max_capacity(10)
        .num_shards(1)
        .weigher(|_: &u32, v: &u32| u32::from(*v != 0))
        .build()
        .unwrap();
    for k in 0..100 {
        cache.insert(k, 0);
    }
    assert_eq!((cache.entry_count(), cache.weighted_size()), (100, 0));
    for k in 100..120 {
        cache.insert(k, 1);
    }
    cache.run_pending_tasks();
    assert_eq!(
        cache.weighted_size(),
        10,
        "the weighed entries fill the bound"
    );
    assert_eq!(cache.entry_count(), 110, "weightless entries evicted");
    assert!((0..100).all(|k| cache.peek(&k) == Some(0)));
    cache.check_invariants();
}

#[test]
fn weighted_size_is_bounded_and_overweight_entries_are_refused() {
    let cache = Cache::builder()
        .max_capacity(100)
        .num_shards(1)
        .weigher(|_: &u32, v: &Vec<u8>| v.len() as u32)
        .build()
        .unwrap();
    cache.insert(1, vec![0; 30]);
    cache.insert(2, vec![0; 30]);
    assert_eq!(cache.weighted_size(), 60);
    cache.insert(3, vec![0; 101]);
    assert!(!cache.contains_key(&3), "heavier than the whole cache");
    assert_eq!(cache.weighted_size(), 60);
    for i in 10..40 {
        cache.insert(i, vec![0; 25]);
        assert!(cache.weighted_size() <= 100);
    }
    // A key rewritten with an overweight value loses its old value too.
    cache.insert(1, vec![0; 10]);
    cache.insert(1, vec![0; 500]);
    assert_eq!(cache.get(&1), None);
}

#[test]
fn stats_count_hits_misses_and_loads() {
    let cache = Cache::new(10);
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.get_with(3, || 3), 3);
    let _ = cache.try_get_with(4, || Err::<u32, _>("no"));
    let s = cache.stats();
    assert_eq!(s.hits(), 1);
    assert_eq!(s.misses(), 3, "get(&2) and the two loading lookups");
    assert_eq!(
        (s.load_successes(), s.load_failures(), s.loads()),
        (1, 1, 2)
    );
    assert!((s.hit_rate() - 0.25).abs() < 1e-9);
    assert_eq!(cache.peek(&1), Some(1));
    assert_eq!(cache.stats().hits(), 1, "peek is not counted");
}

#[test]
fn bad_settings_are_build_errors() {
    fn err(b: larder::CacheBuilder<u32, u32>) -> BuildError {
        b.build().unwrap_err()
    }
    assert_eq!(err(Cache::builder().num_shards(0)), BuildError::ZeroShards);
    assert_eq!(
        err(Cache::builder().num_shards(1 << 20)),
        BuildError::TooManyShards(1 << 20)
    );
    assert_eq!(
        err(Cache::builder().time_to_live(Duration::ZERO)),
        BuildError::ZeroTimeToLive
    );
    assert_eq!(
        err(Cache::builder().time_to_idle(Duration::ZERO)),
        BuildError::ZeroTimeToIdle
    );
    assert_eq!(
        err(Cache::builder().ttl_jitter(1.0)),
        BuildError::JitterOutOfRange(1.0)
    );
    assert_eq!(
        err(Cache::builder().ttl_jitter(-0.1)),
        BuildError::JitterOutOfRange(-0.1)
    );
    assert!(
        matches!(err(Cache::builder().ttl_jitter(f64::NAN)), BuildError::JitterOutOfRange(j) if j.is_nan())
    );
    struct Forever;
    impl larder::Expiry<u32, u32> for Forever {
        fn expire_after_create(&self, _: &u32, _: &u32) -> Option<Duration> {
            None
        }
    }
    let conflict = Cache::builder()
        .expire_after(Forever)
        .time_to_live(Duration::from_secs(1));
    assert_eq!(err(conflict), BuildError::ExpiryConflict);
    assert!(
        BuildError::ExpiryConflict
            .to_string()
            .contains("expire_after")
    );
    assert!(
        Cache::<u32, u32>::builder()
            .num_shards(3)
            .time_to_live(Duration::from_secs(1))
            .ttl_jitter(0.5)
            .build()
            .is_ok()
    );
    // A jitter with no lifetime to spread: insert_with_ttl and the time to
    // idle are exact, so it would do nothing.
    let idle = Cache::builder().time_to_idle(Duration::from_secs(1));
    assert_eq!(err(idle.ttl_jitter(0.5)), BuildError::JitterWithoutLifetime);
    assert_eq!(
        err(Cache::builder().ttl_jitter(0.1)),
        BuildError::JitterWithoutLifetime
    );
    assert!(
        BuildError::JitterWithoutLifetime
            .to_string()
            .contains("time_to_live")
    );
    let loading = Cache::builder()
        .ttl_jitter(0.1)
        .loader(|k: &u32| Ok::<_, String>(Some(*k)))
        .build();
    assert_eq!(loading.err(), Some(BuildError::JitterWithoutLifetime));
    assert!(Cache::<u32, u32>::builder().ttl_jitter(0.0).build().is_ok());
}

#[test]
fn cache_is_a_cheap_shared_send_sync_handle() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Cache<String, Arc<Vec<u8>>>>();
    let cache = Cache::new(10);
    let other = cache.clone();
    other.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
    let debug = format!("{cache:?}");
    assert!(debug.contains("entry_count: 1"), "{debug}");
}

#[test]
fn iter_walks_every_shard_once_and_stays_done() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_capacity(10_000)
        .num_shards(16)
        .build()
        .unwrap();
    for k in 0..1_000 {
        cache.insert(k, k * 2);
    }
    let mut iter = cache.iter();
    let mut keys: Vec<u64> = iter
        .by_ref()
        .map(|(k, v)| {
            assert_eq!(v, k * 2);
            k
        })
        .collect();
    assert!(
        iter.next().is_none(),
        "an exhausted iterator stays exhausted"
    );
    keys.sort_unstable();
    assert_eq!(keys, (0..1_000).collect::<Vec<_>>());
    assert_eq!(cache.stats().hits() + cache.stats().misses(), 0);
    assert_eq!(Cache::<u8, u8>::new(4).iter().count(), 0);
}

#[test]
fn an_unbounded_cache_of_large_inline_values_builds_without_reserving_them_all() {
    // Reserving room for the first 4 Mi entries of 8 or 64 KiB would ask
    // the allocator for 34 GB or more up front (an abort, not an error).
    let small: Cache<u64, [u8; 8192]> = Cache::builder().num_shards(1).build().unwrap();
    small.insert(1, [1; 8192]);
    assert_eq!(small.get(&1).map(|v| v[0]), Some(1));
    let large: Cache<u64, Box<[u8; 65536]>> = Cache::new(u64::MAX);
    large.insert(1, Box::new([2; 65536]));
    let inline: Cache<u64, [u8; 65536]> = Cache::builder().build().unwrap();
    inline.insert(1, [3; 65536]);
    assert_eq!(inline.get(&1).map(|v| v[65535]), Some(3));
    assert_eq!(large.entry_count() + small.entry_count(), 2);
}

#[test]
fn policy_reads_back_the_settings_the_cache_uses() {
    let plain = Cache::<u32, u32>::builder()
        .max_capacity(10_000)
        .time_to_idle(Duration::from_millis(1_500))
        .num_shards(5)
        .build()
        .unwrap();
    let policy = plain.policy();
    assert_eq!(policy.max_capacity(), Some(10_000));
    assert_eq!(policy.num_shards(), 8, "rounded up to a power of two");
    assert_eq!(policy.time_to_live(), None);
    assert_eq!(policy.time_to_idle(), Some(Duration::from_millis(1_500)));
    assert_eq!(policy.ttl_jitter(), 0.0);
    assert!(!policy.is_weighted() && !policy.has_expiry_hooks());
    assert_eq!(policy.max_entry_weight(), None, "unweighted");
    assert_eq!(plain.clone().policy(), policy, "handles share it");

    // Fewer shards than asked where the capacity cannot feed them.
    let small = Cache::<u32, u32>::builder()
        .max_capacity(3)
        .num_shards(64)
        .build()
        .unwrap();
    assert_eq!(small.policy().num_shards(), 2);
    // The default count, which depends on the machine, is the one in use.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default = Cache::<u32, u32>::new(u64::MAX - 1).policy();
    assert_eq!(default.num_shards(), (cpus * 4).next_power_of_two());
    assert_eq!(
        Cache::<u32, u32>::builder()
            .build()
            .unwrap()
            .policy()
            .max_capacity(),
        None
    );

    struct Fixed;
    impl larder::Expiry<u32, u32> for Fixed {
        fn expire_after_create(&self, _: &u32, _: &u32) -> Option<Duration> {
            Some(Duration::from_secs(1))
        }
    }
    let hooked = Cache::builder()
        .expire_after(Fixed)
        .ttl_jitter(0.25)
        .build()
        .unwrap();
    assert!(hooked.policy().has_expiry_hooks());
    assert_eq!(hooked.policy().ttl_jitter(), 0.25);
    assert_eq!(hooked.policy().time_to_live(), None);

    // A loading cache applies its time to live itself: reported all the same.
    let loading = Cache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(30))
        .ttl_jitter(0.5)
        .loader(|k: &u32| Ok::<_, String>(Some(*k)))
        .build()
        .unwrap();
    let policy = loading.policy();
    assert_eq!(policy.time_to_live(), Some(Duration::from_secs(30)));
    assert_eq!(policy.ttl_jitter(), 0.5);
    assert_eq!(policy.max_capacity(), Some(100));
}

/// `max_entry_weight` is the line the shards draw: an entry of that weight
/// is kept in every shard, one unit heavier is refused by every shard,
/// also by those that hold a unit more in all (until 7 December they kept
/// it, so whether it was kept depended on its key's hash).
#[test]
fn max_entry_weight_is_what_every_shard_keeps() {
    let refused = Arc::new(Mutex::new(0));
    let cache = Cache::builder()
        .max_capacity(1_003) // shards of 251, 251, 251 and 250
        .num_shards(4)
        .weigher(|_k: &u32, v: &u64| *v as u32)
        .eviction_listener({
            let refused = refused.clone();
            move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    *refused.lock().unwrap() += 1;
                }
            }
        })
        .build()
        .unwrap();
    let line = cache.policy().max_entry_weight().unwrap();
    assert_eq!(line, 250);
    for key in 0..64 {
        cache.insert(key, line);
        assert!(
            cache.contains_key(&key),
            "key {key} of weight {line} refused"
        );
        cache.invalidate(&key);
    }
    cache.run_pending_tasks();
    assert_eq!(*refused.lock().unwrap(), 0);
    let mut kept = 0;
    for key in 0..64 {
        cache.insert(key, line + 1);
        kept += u32::from(cache.contains_key(&key));
        cache.invalidate(&key);
    }
    cache.run_pending_tasks();
    assert_eq!(kept, 0, "keys of weight {} kept", line + 1);
    assert_eq!(*refused.lock().unwrap(), 64);
    assert_eq!(cache.weighted_size(), 0);
}
