//! The loading cache's modes on a hand-driven clock: each timeline (fresh →
//! refresh due → stale → expired) with the exact number of loader calls,
//! stale-if-error, early expiry's rising probability, negative entries,
//! bulk loads, a stampede of 64 threads on one expiring key, panicking
//! loaders in every mode, and one value's time to live given, read or
//! changed by the caller (`insert_with_ttl`, `expires_in`, `expire_in`,
//! `persist`) against the stale windows, negative caching, loads, and
//! reads (`peek`, `iter`) racing an extension.

#[path = "support/threads.rs"]
mod threads;

use std::{
    collections::HashMap,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        mpsc,
    },
    thread,
    time::Duration,
};

use larder::{BuildError, Cache, Loader, LoadingCache, RemovalCause, clock::MockClock};
use parking_lot::Mutex;
use threads::{panic_message, parallel};

const SEC: Duration = Duration::from_secs(1);

/// A loader whose answers are `key * 1000 + call number`, so each load is
/// visible in the value; it can be told to fail, to panic, to report every
/// key absent, or to block on a gate until released.
#[derive(Clone, Default)]
struct Source {
    calls: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
    panic: Arc<AtomicBool>,
    panic_once: Arc<AtomicBool>,
    absent: Arc<AtomicBool>,
    gate: Arc<Mutex<()>>,
    entered: Arc<Mutex<Option<mpsc::Sender<u64>>>>,
}

impl Source {
    fn calls(&self) -> u64 {
        self.calls.load(SeqCst)
    }

    /// Reports each key as its load starts (before the gate).
    fn announce(&self) -> mpsc::Receiver<u64> {
        let (tx, rx) = mpsc::channel();
        *self.entered.lock() = Some(tx);
        rx
    }
}

impl Loader<u64, u64> for Source {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        if let Some(tx) = &*self.entered.lock() {
            let _ = tx.send(*key);
        }
        drop(self.gate.lock());
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        if self.panic.load(SeqCst) || self.panic_once.swap(false, SeqCst) {
            panic!("loader panicked on {key}");
        }
        if self.fail.load(SeqCst) {
            return Err(format!("store down for {key}"));
        }
        if self.absent.load(SeqCst) {
            return Ok(None);
        }
        Ok(Some(key * 1000 + n))
    }
}

fn clocked(clock: &MockClock) -> larder::CacheBuilder<u64, u64> {
    Cache::builder().max_capacity(10_000).clock(clock.clone())
}

#[test]
fn read_through_loads_each_key_once_and_counts_hits_and_misses() {
    let source = Source::default();
    let cache = Cache::builder().loader(source.clone()).build().unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    assert_eq!(cache.get(&2).unwrap(), Some(2002));
    assert_eq!(source.calls(), 2);
    let s = cache.stats();
    assert_eq!((s.hits(), s.misses(), s.loads()), (1, 2, 2));
    assert_eq!(s.load_successes(), 2);
}

#[test]
fn plain_ttl_timeline_loads_again_only_after_expiry() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    clock.advance(9 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    clock.advance(SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(1002), "expired: loaded again");
    assert_eq!(source.calls(), 2);
    assert_eq!(cache.stats().refreshes(), 0);
}

#[test]
fn refresh_ahead_returns_the_current_value_and_reloads_once_in_the_background() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(100 * SEC)
        .loader(source.clone())
        .refresh_after(60 * SEC)
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    clock.advance(59 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(1001), "fresh: no reload");
    cache.run_pending_tasks();
    assert_eq!(source.calls(), 1);

    // Refresh due: hold the reload at the gate while many reads happen.
    clock.advance(SEC);
    let entered = source.announce();
    let gate = source.gate.lock();
    for _ in 0..100 {
        assert_eq!(cache.get(&1).unwrap(), Some(1001), "reads never wait");
    }
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1), "one reload started");
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(source.calls(), 2, "exactly one reload for 100 reads");
    assert_eq!(cache.get(&1).unwrap(), Some(1002), "the reload replaced it");
    let s = cache.stats();
    assert_eq!((s.refreshes(), s.stale_hits(), s.loads()), (1, 0, 2));

    // The reloaded value is fresh again for 60 s from its reload.
    clock.advance(59 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(1002));
    cache.run_pending_tasks();
    assert_eq!(source.calls(), 2);
}

#[test]
fn stale_while_revalidate_serves_stale_inside_the_window_and_waits_past_it() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(1001)); // loaded at 0, fresh to 10
    clock.advance(10 * SEC);

    let gate = source.gate.lock();
    for _ in 0..50 {
        assert_eq!(cache.get(&1).unwrap(), Some(1001), "stale value at once");
    }
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(
        source.calls(),
        2,
        "one background reload for 50 stale reads"
    );
    let s = cache.stats();
    assert_eq!((s.stale_hits(), s.refreshes()), (50, 1));
    assert_eq!(cache.get(&1).unwrap(), Some(1002), "fresh after the reload");

    // Reloaded at 10, fresh to 20, stale to 25; at 26 the read must load.
    clock.advance(16 * SEC);
    assert_eq!(
        cache.get(&1).unwrap(),
        Some(1003),
        "past the window: waits for a load"
    );
    cache.run_pending_tasks();
    assert_eq!(source.calls(), 3);
    assert_eq!(cache.stats().stale_hits(), 50);
    assert_eq!(
        cache.stats().refreshes(),
        1,
        "that load ran in the foreground"
    );
}

#[test]
fn iter_lists_what_peek_returns_fresh_values_only() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .build()
        .unwrap();
    cache.get(&1).unwrap(); // loaded at 0, fresh to 10, stale to 15
    clock.advance(6 * SEC);
    cache.get(&2).unwrap(); // loaded at 6, fresh to 16
    let listed = |cache: &LoadingCache<u64, u64, String>| {
        let mut entries: Vec<(u64, u64)> = cache.iter().collect();
        entries.sort_unstable();
        entries
    };
    assert_eq!(listed(&cache), [(1, 1001), (2, 2002)]);
    clock.advance(5 * SEC); // at 11: key 1 is stale, still cached
    assert_eq!(cache.peek(&1), None);
    assert_eq!(listed(&cache), [(2, 2002)], "a stale value is not listed");
    source.fail.store(true, SeqCst);
    let before = cache.stats();
    assert_eq!(listed(&cache), [(2, 2002)]);
    assert_eq!(source.calls(), 2, "iterating loads nothing");
    assert_eq!(
        (cache.stats().hits(), cache.stats().stale_hits()),
        (before.hits(), before.stale_hits()),
        "and counts nothing"
    );

    // An absence cached by negative caching is not a value to list.
    let absent = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(|k: &u64| Ok::<_, String>((*k < 10).then_some(*k)))
        .negative_ttl(5 * SEC)
        .build()
        .unwrap();
    assert_eq!(absent.get_many([5, 50]).unwrap(), HashMap::from([(5, 5)]));
    assert_eq!(absent.entry_count(), 2, "the absence is cached");
    assert_eq!(absent.iter().collect::<Vec<_>>(), [(5, 5)]);
}

#[test]
fn remove_returns_what_peek_would_and_removes_every_kind_of_entry() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .build()
        .unwrap();
    cache.get(&1).unwrap(); // loaded at 0: fresh to 10, stale to 15
    cache.get(&2).unwrap();
    assert_eq!(cache.remove(&1), Some(1001), "a fresh value");
    assert_eq!(cache.remove(&1), None, "gone");
    clock.advance(11 * SEC);
    assert_eq!(cache.entry_count(), 1, "key 2 is stale, still cached");
    assert_eq!(cache.remove(&2), None, "a stale value is not returned");
    assert_eq!(cache.entry_count(), 0, "but it is removed");
    assert_eq!(cache.get(&2).unwrap(), Some(2003), "and loaded again");
    assert_eq!(source.calls(), 3);

    let absent = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(|k: &u64| Ok::<_, String>((*k < 10).then_some(*k)))
        .negative_ttl(5 * SEC)
        .build()
        .unwrap();
    assert_eq!(absent.get(&50).unwrap(), None);
    assert_eq!(absent.entry_count(), 1, "the absence is cached");
    assert_eq!(absent.remove(&50), None);
    assert_eq!(absent.entry_count(), 0, "and removed");
}

#[test]
fn remove_returns_nothing_for_a_value_past_its_time_to_idle() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_idle(10 * SEC)
        .loader(source.clone())
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    clock.advance(11 * SEC); // idle too long, not yet reaped
    assert_eq!(cache.peek(&1), None, "expired");
    assert_eq!(cache.remove(&1), None, "what peek would have returned");
    assert_eq!(cache.entry_count(), 0, "removed all the same");
}

#[test]
fn a_load_under_way_does_not_cache_what_a_removal_dropped() {
    // The cache-aside update: the database is written, then the key
    // dropped, while a read that missed still loads the old row.
    type Drop = fn(&LoadingCache<u64, u64, String>);
    let cases: [(&str, Drop); 2] = [
        ("invalidate", |c| c.invalidate(&7)),
        ("remove", |c| assert_eq!(c.remove(&7), None)),
    ];
    for (what, drop_key) in cases {
        let clock = MockClock::new();
        let source = Source::default();
        let cache = clocked(&clock).loader(source.clone()).build().unwrap();
        let entered = source.announce();
        let gate = source.gate.lock();
        let reader = {
            let cache = cache.clone();
            thread::spawn(move || cache.get(&7).unwrap())
        };
        assert_eq!(entered.recv_timeout(10 * SEC), Ok(7), "{what}");
        drop_key(&cache);
        drop(gate);
        assert_eq!(
            reader.join().unwrap(),
            Some(7001),
            "{what}: the reader gets its load"
        );
        assert_eq!(cache.peek(&7), None, "{what}: which is not cached");
        assert_eq!(
            cache.get(&7).unwrap(),
            Some(7002),
            "{what}: the next read loads"
        );
        assert_eq!(cache.peek(&7), Some(7002), "{what}: and caches");
    }
}

/// A cache with a 10 s time to live and a 30 s stale-if-error window whose
/// key 1 was loaded at 0 s (value 1001), in front of a store that now
/// fails every load.
fn stale_if_error_with_a_failing_store() -> (MockClock, Source, LoadingCache<u64, u64, String>) {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .stale_if_error(30 * SEC)
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    source.fail.store(true, SeqCst);
    (clock, source, cache)
}

#[test]
fn stale_if_error_keeps_serving_the_old_value_for_a_bounded_time() {
    let (clock, source, cache) = stale_if_error_with_a_failing_store();

    clock.advance(15 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(1001), "load failed: old value");
    clock.advance(20 * SEC); // 35 s: still inside 10 + 30
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    let s = cache.stats();
    assert_eq!((s.load_failures(), s.stale_hits()), (2, 2));
    // A stale-if-error answer followed a load: a miss, not a hit.
    assert_eq!((s.hits(), s.misses()), (0, 3));

    clock.advance(6 * SEC); // 41 s: past the window
    let err = cache.get(&1).unwrap_err();
    assert_eq!(*err, "store down for 1");

    // A key never loaded has nothing to fall back on.
    assert!(cache.get(&2).is_err());

    // Recovery: the next load succeeds and is fresh again.
    source.fail.store(false, SeqCst);
    assert_eq!(cache.get(&1).unwrap(), Some(1006), "loads 2 to 5 failed");
}

/// Stale-if-error's window is judged when the load fails, not when the read
/// began: a read of key 1 inside its window (read at 35 s, window to 40 s)
/// whose load fails at 45 s gets the error, as `read` returns it, and so
/// does a reader that waited for that load.
fn failing_past_the_stale_if_error_window(
    read: fn(&LoadingCache<u64, u64, String>) -> Option<String>,
) {
    let (clock, source, cache) = stale_if_error_with_a_failing_store();
    clock.advance(35 * SEC); // inside 10 + 30
    let entered = source.announce();
    let gate = source.gate.lock();
    let leader = {
        let cache = cache.clone();
        thread::spawn(move || read(&cache))
    };
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    let misses = cache.stats().misses();
    let waiter = {
        let cache = cache.clone();
        thread::spawn(move || read(&cache))
    };
    hold_until_misses_past(&cache, misses); // the waiter joined the load
    clock.advance(10 * SEC); // 45 s: the load fails past the window
    drop(gate);
    let failed = Some("store down for 1".to_string());
    assert_eq!(leader.join().unwrap(), failed, "the leader's load failed");
    assert_eq!(waiter.join().unwrap(), failed, "the waiter's too");
    assert_eq!(cache.stats().stale_hits(), 0);
    assert_eq!(source.calls(), 2, "one failed load, shared");
}

#[test]
fn a_load_failing_after_the_stale_if_error_window_returns_the_error() {
    failing_past_the_stale_if_error_window(|c| c.get(&1).err().map(|e| e.to_string()));
}

#[test]
fn a_bulk_load_failing_after_the_stale_if_error_window_returns_the_error() {
    failing_past_the_stale_if_error_window(|c| c.get_many([1]).err().map(|e| e.to_string()));
}

#[test]
fn a_failed_bulk_read_counts_no_stale_hit() {
    let (clock, _source, cache) = stale_if_error_with_a_failing_store();
    clock.advance(15 * SEC);

    // Key 2 has nothing to fall back on, so the batch fails: key 1's
    // stale value answers no one.
    assert!(cache.get_many([1, 2]).is_err());
    let s = cache.stats();
    assert_eq!((s.load_failures(), s.stale_hits()), (1, 0));

    // Alone, key 1 is answered with it, and that counts.
    let found = cache.get_many([1]).unwrap();
    assert_eq!(found.get(&1), Some(&1001));
    let s = cache.stats();
    assert_eq!((s.load_failures(), s.stale_hits()), (2, 1));
}

#[test]
fn failed_background_reloads_leave_the_value_in_place() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .refresh_after(5 * SEC)
        .stale_while_revalidate(5 * SEC)
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    source.fail.store(true, SeqCst);
    clock.advance(6 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    cache.run_pending_tasks();
    assert_eq!(cache.stats().load_failures(), 1);
    clock.advance(6 * SEC); // 12 s: stale, another reload attempt fails
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    cache.run_pending_tasks();
    assert_eq!(cache.stats().load_failures(), 2);
    clock.advance(4 * SEC); // 16 s: past the window, no stale-if-error
    assert!(cache.get(&1).is_err());
}

/// A loader whose batch call takes `delta` on the mock clock, so every value
/// it loads carries that load time for early expiry.
struct Timed {
    clock: MockClock,
    delta: Duration,
    calls: AtomicU64,
}

impl Loader<u64, u64> for Timed {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        self.calls.fetch_add(1, SeqCst);
        Ok(Some(*key))
    }

    fn load_many(&self, keys: &[u64]) -> Result<Vec<(u64, u64)>, String> {
        self.clock.advance(self.delta);
        Ok(keys.iter().map(|k| (*k, *k)).collect())
    }
}

/// Fraction of `keys` fresh values whose read `gap` before expiry starts an
/// early reload (δ = 10 ms, β = 1, TTL 1 s).
fn early_rate(keys: u64, gap: Duration) -> f64 {
    let clock = MockClock::new();
    let loader = Timed {
        clock: clock.clone(),
        delta: Duration::from_millis(10),
        calls: AtomicU64::new(0),
    };
    let cache = clocked(&clock)
        .time_to_live(SEC)
        .loader(loader)
        .early_expiry(1.0)
        .reload_queue_capacity(keys as usize + 1)
        .build()
        .unwrap();
    let found = cache.get_many(0..keys).unwrap();
    assert_eq!(found.len() as u64, keys);
    // Loaded at 10 ms (after the batch), so fresh until 1.01 s.
    clock.advance(SEC - gap);
    for k in 0..keys {
        assert_eq!(cache.get(&k).unwrap(), Some(k));
    }
    cache.run_pending_tasks();
    let s = cache.stats();
    assert_eq!(s.skipped_refreshes(), 0);
    s.refreshes() as f64 / keys as f64
}

#[test]
fn early_expiry_probability_rises_towards_expiry() {
    let keys = 2_000;
    let mut last = 0.0;
    for gap_ms in [100u64, 50, 20, 10, 2] {
        let rate = early_rate(keys, Duration::from_millis(gap_ms));
        let expected = (-(gap_ms as f64) / 10.0).exp();
        let sd = (expected * (1.0 - expected) / keys as f64)
            .sqrt()
            .max(0.002);
        assert!(
            (rate - expected).abs() < 6.0 * sd,
            "{gap_ms} ms before expiry: {rate} of reads refreshed, expected {expected}"
        );
        assert!(
            rate >= last,
            "rate fell from {last} to {rate} at {gap_ms} ms"
        );
        last = rate;
    }
    assert!(
        last > 0.7,
        "2 ms (0.2 load times) before expiry most reads refresh"
    );
}

#[test]
fn early_expiry_refreshes_a_hot_key_before_it_expires() {
    let clock = MockClock::new();
    let calls = Arc::new(AtomicU64::new(0));
    let (c, lc) = (clock.clone(), calls.clone());
    let cache = clocked(&clock)
        .time_to_live(SEC)
        .loader(move |k: &u64| -> Result<Option<u64>, String> {
            c.advance(Duration::from_millis(20)); // the load takes 20 ms
            Ok(Some(k + lc.fetch_add(1, SeqCst)))
        })
        .early_expiry(1.0)
        .build()
        .unwrap();
    cache.get(&7).unwrap();
    // Steady traffic: one read per millisecond for 20 simulated seconds.
    let mut foreground = 0;
    for _ in 0..20_000 {
        clock.advance(Duration::from_millis(1));
        let before = cache.stats().misses();
        cache.get(&7).unwrap();
        cache.run_pending_tasks();
        foreground += cache.stats().misses() - before;
    }
    assert_eq!(foreground, 0, "no read ever found the hot key expired");
    let s = cache.stats();
    assert!(
        s.refreshes() >= 15,
        "about one early refresh per TTL, got {}",
        s.refreshes()
    );
}

#[test]
fn negative_entries_expire_on_their_own_ttl() {
    let clock = MockClock::new();
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(move |k: &u64| -> Result<Option<u64>, String> {
            counted.fetch_add(1, SeqCst);
            Ok((*k < 10).then_some(*k))
        })
        .negative_ttl(5 * SEC)
        .build()
        .unwrap();
    assert_eq!(cache.get(&50).unwrap(), None);
    assert_eq!(cache.get(&50).unwrap(), None);
    assert_eq!(cache.get(&5).unwrap(), Some(5));
    assert_eq!(calls.load(SeqCst), 2, "the absent answer was cached");
    clock.advance(5 * SEC);
    assert_eq!(cache.get(&50).unwrap(), None);
    assert_eq!(calls.load(SeqCst), 3, "negative entry expired after 5 s");
    assert_eq!(cache.get(&5).unwrap(), Some(5));
    assert_eq!(calls.load(SeqCst), 3, "the value lives for its own 60 s");
    assert_eq!(cache.get_many([5, 50]).unwrap(), HashMap::from([(5, 5)]));
    assert_eq!(calls.load(SeqCst), 3);
}

#[test]
fn absent_answers_are_not_cached_without_a_negative_ttl() {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let cache = Cache::builder()
        .loader(move |_: &u64| -> Result<Option<u64>, String> {
            counted.fetch_add(1, SeqCst);
            Ok(None)
        })
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(cache.get(&1).unwrap(), None);
    }
    assert_eq!(calls.load(SeqCst), 3);
    assert_eq!(cache.entry_count(), 0);
}

#[test]
fn a_remembered_absence_weighs_one_and_its_removal_is_neither_heard_nor_counted() {
    let heard = Arc::new(AtomicU64::new(0));
    let listening = heard.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .weigher(|_: &u64, _: &u64| 10)
        .eviction_listener(move |_: Arc<u64>, _, _| {
            listening.fetch_add(1, SeqCst);
        })
        .loader(|k: &u64| -> Result<Option<u64>, String> { Ok((*k != 0).then_some(*k)) })
        .negative_ttl(60 * SEC)
        .build()
        .unwrap();
    assert_eq!(cache.get(&0).unwrap(), None);
    assert_eq!(cache.weighted_size(), 1, "an absence weighs 1");
    assert_eq!(cache.get(&7).unwrap(), Some(7));
    assert_eq!(cache.weighted_size(), 11, "a value what the weigher says");
    cache.invalidate(&0);
    cache.invalidate(&7);
    assert_eq!(
        heard.load(SeqCst),
        1,
        "the listener hears of the value only"
    );
    assert_eq!(
        cache.stats().removals(RemovalCause::Explicit),
        1,
        "and so do the stats"
    );
}

const CAUSES: [RemovalCause; 4] = [
    RemovalCause::Expired,
    RemovalCause::Explicit,
    RemovalCause::Replaced,
    RemovalCause::Size,
];

/// Removals by cause as the listener heard them.
fn tally(heard: &[(u64, u64, RemovalCause)]) -> [u64; 4] {
    CAUSES.map(|cause| heard.iter().filter(|(_, _, c)| *c == cause).count() as u64)
}

/// Removals by cause as the stats count them.
fn counted(stats: larder::CacheStats) -> [u64; 4] {
    CAUSES.map(|cause| stats.removals(cause))
}

/// A cached absence is no entry the user put in the cache and has no value
/// to hand the listener, so its leaving, for any cause (a value written or
/// loaded over it, its negative TTL, an invalidation, the capacity), is
/// neither heard by the listener nor counted in `stats().removals`.
#[test]
fn a_cached_absence_leaves_unheard_and_uncounted_whatever_the_cause() {
    let clock = MockClock::new();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let present = Arc::new(AtomicBool::new(false));
    let (listening, found) = (heard.clone(), present.clone());
    let cache = clocked(&clock)
        .eviction_listener(move |k: Arc<u64>, v, cause| listening.lock().push((*k, v, cause)))
        .loader(move |k: &u64| -> Result<Option<u64>, String> {
            Ok(found.load(SeqCst).then_some(*k))
        })
        .negative_ttl(5 * SEC)
        .build()
        .unwrap();
    for key in 1..=4 {
        assert_eq!(
            cache.get(&key).unwrap(),
            None,
            "an absence cached for {key}"
        );
    }
    cache.insert(1, 10); // a value written over the absence
    present.store(true, SeqCst);
    assert!(cache.refresh(&2)); // a value loaded over the absence
    present.store(false, SeqCst);
    cache.invalidate(&3);
    clock.advance(5 * SEC); // 4's absence expires
    cache.run_pending_tasks();
    assert_eq!(cache.peek(&1), Some(10));
    assert_eq!(cache.peek(&2), Some(2));
    assert!(heard.lock().is_empty(), "heard {:?}", heard.lock());
    assert_eq!(counted(cache.stats()), [0; 4], "{:?}", cache.stats());

    // The values' removals are heard and counted alike.
    cache.insert(1, 11);
    cache.invalidate(&2);
    let values = [
        (1, 10, RemovalCause::Replaced),
        (2, 2, RemovalCause::Explicit),
    ];
    assert_eq!(*heard.lock(), values);
    assert_eq!(counted(cache.stats()), tally(&values));

    // In a full cache, the policy evicts the absence for the new value
    // (unheard, uncounted) or turns the value away (heard, counted).
    heard.lock().clear();
    let listening = heard.clone();
    let tiny = Cache::builder()
        .max_capacity(1)
        .num_shards(1)
        .eviction_listener(move |k: Arc<u64>, v, cause| listening.lock().push((*k, v, cause)))
        .loader(|_: &u64| -> Result<Option<u64>, String> { Ok(None) })
        .negative_ttl(60 * SEC)
        .build()
        .unwrap();
    assert_eq!(tiny.get(&0).unwrap(), None);
    for key in 1..=20 {
        tiny.insert(key, key);
    }
    tiny.run_pending_tasks();
    assert!(!heard.lock().is_empty(), "values were evicted or refused");
    assert_eq!(counted(tiny.stats()), tally(&heard.lock()));
}

#[test]
fn time_to_idle_drops_an_entry_inside_its_grace_windows() {
    // A value 2 s past its 10 s time to live is inside both 30 s windows,
    // but idle for 12 s with a time to idle of 5 s: it is gone, and the
    // read loads (stale-while-revalidate does not answer it, nor does
    // stale-if-error when that load fails).
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .time_to_idle(5 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(30 * SEC)
        .stale_if_error(30 * SEC)
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    clock.advance(12 * SEC);
    assert_eq!(cache.peek(&1), None);
    source.fail.store(true, SeqCst);
    assert!(cache.get(&1).is_err(), "no stale value to fall back on");
    assert_eq!(cache.stats().stale_hits(), 0);
    source.fail.store(false, SeqCst);
    assert_eq!(cache.get(&1).unwrap(), Some(1003), "the third load");
    assert_eq!(source.calls(), 3);
}

/// Counts batch calls and the keys in them.
#[derive(Default)]
struct Batches {
    batches: Mutex<Vec<Vec<u64>>>,
}

/// The cache's handle on a shared [`Batches`].
struct BatchLoader(Arc<Batches>);

impl Loader<u64, u64> for BatchLoader {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        self.0.batches.lock().push(vec![*key]);
        Ok(Some(*key))
    }

    fn load_many(&self, keys: &[u64]) -> Result<Vec<(u64, u64)>, String> {
        self.0.batches.lock().push(keys.to_vec());
        Ok(keys
            .iter()
            .filter(|k| *k % 2 == 0)
            .map(|k| (*k, *k))
            .collect())
    }
}

#[test]
fn get_many_loads_only_the_missing_keys_in_one_batch() {
    let batches = Arc::new(Batches::default());
    let cache = Cache::builder()
        .loader(BatchLoader(batches.clone()))
        .negative_ttl(SEC * 60)
        .build()
        .unwrap();
    cache.insert(2, 200);
    let found = cache.get_many([1, 2, 3, 4, 4, 6]).unwrap();
    assert_eq!(found, HashMap::from([(2, 200), (4, 4), (6, 6)]));
    assert_eq!(*batches.batches.lock(), vec![vec![1, 3, 4, 6]]);
    // Everything is cached now, absent answers included.
    let again = cache.get_many([1, 2, 3, 4, 6]).unwrap();
    assert_eq!(again, found);
    assert_eq!(batches.batches.lock().len(), 1);
}

#[test]
fn a_get_many_batch_counts_as_one_load() {
    let batches = Arc::new(Batches::default());
    let cache = Cache::builder()
        .loader(BatchLoader(batches.clone()))
        .build()
        .unwrap();
    cache.get_many([2, 4, 6, 8]).unwrap();
    assert_eq!(batches.batches.lock().len(), 1);
    let s = cache.stats();
    assert_eq!((s.loads(), s.load_successes(), s.misses()), (1, 1, 4));
}

#[test]
fn the_listener_hears_a_reloaded_value_replace_the_old_and_a_vanished_key_leave() {
    let heard: Arc<Mutex<Vec<(u64, u64, larder::RemovalCause)>>> = Arc::default();
    let source = Source::default();
    let cache = Cache::builder()
        .eviction_listener({
            let heard = heard.clone();
            move |k: Arc<u64>, v: u64, cause| heard.lock().push((*k, v, cause))
        })
        .loader(source.clone())
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    assert!(cache.refresh(&1));
    cache.run_pending_tasks();
    assert_eq!(cache.peek(&1), Some(1002));
    assert_eq!(
        *heard.lock(),
        vec![(1, 1001, larder::RemovalCause::Replaced)],
        "a reload's value replaces the old one"
    );
    source.absent.store(true, SeqCst);
    assert!(cache.refresh(&1));
    cache.run_pending_tasks();
    assert_eq!(cache.peek(&1), None);
    assert_eq!(
        heard.lock()[1..],
        [(1, 1002, larder::RemovalCause::Explicit)],
        "a reload that finds the key gone drops its value"
    );
}

#[test]
fn get_many_waits_for_a_key_already_loading_instead_of_loading_it_again() {
    let source = Source::default();
    let cache = Cache::builder().loader(source.clone()).build().unwrap();
    let entered = source.announce();
    let gate = source.gate.lock();
    let c = cache.clone();
    let single = thread::spawn(move || c.get(&1).unwrap());
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    let c = cache.clone();
    let many = thread::spawn(move || c.get_many([1, 2]).unwrap());
    // The batch loads key 2 through `load` (the default load_many).
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(2));
    drop(gate);
    let one = single.join().unwrap();
    let found = many.join().unwrap();
    assert_eq!(found[&1], one.unwrap(), "the batch shared the single load");
    assert_eq!(source.calls(), 2);
}

/// Key 2's loader reads key 3, whose loader reads key 1: no cycle among
/// the keys, and one key at a time every read ends. A batch of 1 and 2
/// holds key 1 while its loader answers 2, so the read of 1 from 3's
/// loader must not wait for it (the batch waits for 3): it loads 1 itself.
#[test]
fn a_batch_and_a_loader_reading_its_keys_do_not_wait_for_each_other() {
    type Handle = Arc<std::sync::OnceLock<LoadingCache<u64, u64, String>>>;
    let handle: Handle = Arc::default();
    let calls = Arc::new(Mutex::new(Vec::new()));
    // Both loaders meet before reading, so each read finds the other's
    // load under way.
    let meet = Arc::new(Barrier::new(2));
    let (me, log) = (handle.clone(), calls.clone());
    let cache = Cache::builder()
        .loader(move |k: &u64| -> Result<Option<u64>, String> {
            log.lock().push(*k);
            let cache = me.get().expect("set before any read");
            let read = |key: u64| cache.get(&key).map_err(|e| e.to_string());
            match *k {
                2 => {
                    meet.wait();
                    Ok(Some(read(3)?.expect("3 exists") * 10))
                }
                3 => {
                    meet.wait();
                    Ok(Some(read(1)?.expect("1 exists") + 2))
                }
                k => Ok(Some(k)),
            }
        })
        .build()
        .unwrap();
    let _ = handle.set(cache.clone());
    let started = Arc::new(Barrier::new(2));
    let results = parallel(10 * SEC, "a batch and a single read", 2, move |i| {
        if i == 0 {
            let found = cache.get_many([1, 2]).unwrap();
            started.wait();
            (found[&1], found[&2])
        } else {
            let three = cache.get(&3).unwrap().unwrap();
            started.wait();
            (three, cache.peek(&1).unwrap())
        }
    });
    assert_eq!(results, [(1, 30), (3, 1)]);
    let mut calls = calls.lock().clone();
    calls.sort_unstable();
    assert_eq!(calls, [1, 1, 2, 3], "3's loader loaded 1 itself");
}

#[test]
fn a_reload_never_overwrites_a_newer_insert() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .refresh_after(SEC)
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    clock.advance(2 * SEC);
    let entered = source.announce();
    let gate = source.gate.lock();
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    cache.insert(1, 42);
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(source.calls(), 2);
    assert_eq!(cache.get(&1).unwrap(), Some(42), "the insert won");

    // Nor resurrects an invalidated key.
    clock.advance(2 * SEC);
    let gate = source.gate.lock();
    assert_eq!(cache.get(&1).unwrap(), Some(42));
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    cache.invalidate(&1);
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(cache.peek(&1), None);

    // Or a removed one.
    cache.insert(1, 43);
    clock.advance(2 * SEC);
    let gate = source.gate.lock();
    assert_eq!(cache.get(&1).unwrap(), Some(43));
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    assert_eq!(cache.remove(&1), Some(43));
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(cache.peek(&1), None);
}

#[test]
fn invalidate_entries_if_removes_only_values_the_predicate_approved() {
    let source = Source::default();
    let cache = Cache::builder().loader(source.clone()).build().unwrap();
    for k in 1..=3 {
        cache.get(&k).unwrap();
    }
    let handle = cache.clone();
    cache.invalidate_entries_if(move |k, v| {
        // Rewrites made while the predicate runs (it may use the cache):
        // key 1 gets a value the predicate turns down, key 2 one it takes.
        match (*k, *v) {
            (1, 1001) => handle.insert(1, 7),
            (2, 2001) => handle.insert(2, 5_000),
            _ => {}
        }
        *v > 1_000
    });
    assert_eq!(
        cache.peek(&1),
        Some(7),
        "a value written after the predicate approved the key's old one, and never approved itself, stays"
    );
    assert_eq!(
        cache.peek(&2),
        None,
        "a rewritten value the predicate approves goes"
    );
    assert_eq!(cache.peek(&3), None);
    assert_eq!(source.calls(), 3, "nothing was loaded again");
}

/// A value past its time to live that a read may still return (inside the
/// stale-while-revalidate window, or kept by stale-if-error for a failed
/// load) is a value like any other to `invalidate_entries_if`: once the
/// predicate approved it, no read returns it.
#[test]
fn invalidate_entries_if_removes_stale_values_the_predicate_approves() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .stale_if_error(60 * SEC)
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    assert_eq!(cache.get(&2).unwrap(), Some(2002));
    assert_eq!(cache.get(&3).unwrap(), Some(3003));
    cache.insert(4, 4); // turned down by the predicate: stays
    clock.advance(12 * SEC); // inside the stale-while-revalidate window
    cache.invalidate_entries_if(|k, _| *k == 1);
    source.fail.store(true, SeqCst);
    assert_eq!(
        cache.get(&1).unwrap_err().as_str(),
        "store down for 1",
        "the stale value the predicate approved was served"
    );
    clock.advance(10 * SEC); // 22 s: past it, inside stale-if-error
    cache.invalidate_entries_if(|k, _| *k == 2);
    assert_eq!(
        cache.get(&2).unwrap_err().as_str(),
        "store down for 2",
        "the value the predicate approved was kept for a failed load"
    );
    assert_eq!(cache.get(&3).unwrap(), Some(3003), "not approved: kept");
    assert_eq!(cache.get(&4).unwrap(), Some(4), "not approved: kept");
    let s = cache.stats();
    assert_eq!(s.stale_hits(), 2, "the kept values of 3 and 4 only");
}

#[test]
fn a_reload_that_ends_after_the_value_expired_still_lands() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .refresh_after(9 * SEC)
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    clock.advance(9 * SEC);
    let entered = source.announce();
    let gate = source.gate.lock();
    assert_eq!(cache.get(&1).unwrap(), Some(1001)); // starts the reload
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    clock.advance(2 * SEC); // the old value expires while the reload runs
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1).unwrap(), Some(1002), "the reload's value");
    assert_eq!(source.calls(), 2, "no foreground load after the reload");
}

/// As above, with the expired value reaped while the reload runs (here by
/// an insert into the full shard; the maintenance thread does the same
/// within 100 ms): the reloaded value still lands, and no foreground load
/// follows.
#[test]
fn a_reload_whose_expired_value_was_reaped_meanwhile_still_lands() {
    let clock = MockClock::new();
    let source = Source::default();
    let me: Arc<Mutex<Option<Chained>>> = Arc::default();
    let cache: Chained = {
        let (source, me) = (source.clone(), me.clone());
        Cache::builder()
            .max_capacity(2)
            .num_shards(1)
            .clock(clock.clone())
            .time_to_live(10 * SEC)
            // Key 9's loader reaps, as the maintenance thread would: from
            // a loader, run_pending_tasks does not wait for the reload. (A
            // write reaping instead would, one time in eight, share key 1's
            // write-count stripe and so keep the reload out, as documented.)
            .loader(move |k: &u64| -> Result<Option<u64>, String> {
                if *k == 9 {
                    me.lock().clone().expect("set").run_pending_tasks();
                    return Ok(Some(9));
                }
                source.load(k)
            })
            .refresh_after(9 * SEC)
            .build()
            .unwrap()
    };
    *me.lock() = Some(cache.clone());
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    assert_eq!(cache.get(&2).unwrap(), Some(2002));
    clock.advance(9 * SEC);
    let entered = source.announce();
    let gate = source.gate.lock();
    assert_eq!(cache.get(&1).unwrap(), Some(1001)); // starts the reload
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    clock.advance(2 * SEC); // 1 and 2 expire while the reload runs
    assert_eq!(cache.get(&9).unwrap(), Some(9)); // reaps them
    assert_eq!(cache.entry_count(), 1, "1 and 2 reaped, 9 cached");
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(cache.stats().refreshes(), 1);
    assert_eq!(cache.peek(&1), Some(1003), "the reload's value landed");
    assert_eq!(cache.get(&1).unwrap(), Some(1003));
    assert_eq!(source.calls(), 3, "no foreground load after the reload");

    // Reaped, then invalidated while the reload runs: it does not land.
    clock.advance(9 * SEC);
    let gate = source.gate.lock();
    assert_eq!(cache.get(&1).unwrap(), Some(1003)); // starts the reload
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    clock.advance(2 * SEC);
    cache.insert(4, 4);
    cache.insert(5, 5); // reaps 1 and 9
    assert_eq!(cache.peek(&1), None);
    cache.invalidate(&1);
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(
        cache.peek(&1),
        None,
        "an invalidated key is not resurrected"
    );
    assert_eq!(source.calls(), 4);
    me.lock().take();
}

#[test]
fn a_full_reload_queue_skips_and_counts_instead_of_growing() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .loader(source.clone())
        .refresh_after(SEC)
        .reload_threads(1)
        .reload_queue_capacity(1)
        .build()
        .unwrap();
    for k in 0..5 {
        cache.get(&k).unwrap();
    }
    clock.advance(2 * SEC);
    let entered = source.announce();
    let gate = source.gate.lock();
    cache.get(&0).unwrap(); // taken by the one worker, blocked at the gate
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(0));
    for k in 1..5 {
        cache.get(&k).unwrap(); // 1 queued, 2..4 skipped
    }
    assert_eq!(cache.stats().skipped_refreshes(), 3);
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(cache.stats().refreshes(), 2);
    // A later read tries a skipped key again.
    cache.get(&4).unwrap();
    cache.run_pending_tasks();
    assert_eq!(cache.stats().refreshes(), 3);
    assert_eq!(cache.peek(&4), Some(4000 + source.calls()));
}

/// 64 threads read one key that expires `rounds` times; each expiry costs
/// exactly one loader call, in every mode.
fn stampede(cache: &LoadingCache<u64, u64, String>, clock: &MockClock, source: &Source) {
    let rounds = 10;
    cache.get(&1).unwrap();
    let threads = 64;
    for round in 1..=rounds {
        clock.advance(10 * SEC);
        let barrier = Arc::new(Barrier::new(threads));
        let (c, b) = (cache.clone(), barrier.clone());
        let got = parallel(30 * SEC, "stampede", threads, move |_| {
            b.wait();
            c.get(&1).unwrap().unwrap()
        });
        assert!(got.iter().all(|v| v / 1000 == 1), "every read got a value");
        cache.run_pending_tasks();
        assert_eq!(source.calls(), round + 1, "one load for expiry {round}");
    }
}

/// A loader that takes a few real milliseconds, to widen the race.
fn slow(source: &Source) -> impl Loader<u64, u64, Error = String> + use<> {
    let source = source.clone();
    move |k: &u64| {
        thread::sleep(Duration::from_millis(5));
        source.load(k)
    }
}

#[test]
fn sixty_four_threads_on_one_expiring_key_cost_one_load_per_expiry() {
    let clock = MockClock::new();
    let source = Source::default();
    let plain = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(slow(&source))
        .build()
        .unwrap();
    stampede(&plain, &clock, &source);

    let clock = MockClock::new();
    let source = Source::default();
    let swr = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(slow(&source))
        .stale_while_revalidate(10 * SEC)
        .build()
        .unwrap();
    stampede(&swr, &clock, &source);
    assert!(swr.stats().stale_hits() > 0);

    let clock = MockClock::new();
    let source = Source::default();
    let ahead = clocked(&clock)
        .time_to_live(20 * SEC)
        .loader(slow(&source))
        .refresh_after(5 * SEC)
        .build()
        .unwrap();
    stampede(&ahead, &clock, &source);
}

#[test]
fn a_panicking_loader_leaves_every_mode_usable() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .refresh_after(5 * SEC)
        .stale_while_revalidate(5 * SEC)
        .build()
        .unwrap();
    // Foreground: the panic reaches the caller, nothing is cached.
    source.panic.store(true, SeqCst);
    let caught = panic::catch_unwind(AssertUnwindSafe(|| cache.get(&1)));
    let payload = caught.expect_err("the loader's panic reaches its caller");
    assert!(panic_message(&*payload).contains("loader panicked on 1"));
    assert_eq!(cache.entry_count(), 0);
    source.panic.store(false, SeqCst);
    assert_eq!(cache.get(&1).unwrap(), Some(1002));

    // Refresh due and stale: the background panic is contained and counted.
    for advance in [6, 5] {
        source.panic.store(true, SeqCst);
        clock.advance(advance * SEC);
        assert_eq!(cache.get(&1).unwrap(), Some(1002), "old value served");
        cache.run_pending_tasks();
    }
    assert_eq!(cache.stats().load_failures(), 3);
    source.panic.store(false, SeqCst);
    assert_eq!(
        cache.get(&1).unwrap(),
        Some(1002),
        "still stale, reload starts"
    );
    cache.run_pending_tasks();
    assert_eq!(
        cache.get(&1).unwrap(),
        Some(1005),
        "the reload thread survived"
    );

    // Bulk: a panicking batch reaches its caller; the keys load afterwards.
    source.panic.store(true, SeqCst);
    let caught = panic::catch_unwind(AssertUnwindSafe(|| cache.get_many([7, 8])));
    assert!(caught.is_err());
    source.panic.store(false, SeqCst);
    assert_eq!(cache.get_many([7, 8]).unwrap().len(), 2);
}

#[test]
fn waiters_take_over_when_the_leading_load_panics() {
    let source = Source::default();
    let cache = Cache::builder().loader(source.clone()).build().unwrap();
    let entered = source.announce();
    let gate = source.gate.lock();
    source.panic_once.store(true, SeqCst);
    let c = cache.clone();
    let leader = thread::spawn(move || c.get(&1));
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1));
    let c = cache.clone();
    let waiter = thread::spawn(move || c.get(&1));
    // The waiter has missed once the count says so; joining the flight is
    // its next step (a little slack for it to get there).
    let deadline = std::time::Instant::now() + 10 * SEC;
    while cache.stats().misses() < 2 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(cache.stats().misses(), 2, "the waiter reached the cache");
    thread::sleep(Duration::from_millis(20));
    drop(gate);
    assert!(leader.join().is_err(), "the leader's loader panicked");
    // The waiter loaded in the leader's place: the second call.
    assert_eq!(waiter.join().unwrap().unwrap(), Some(1002));
    assert_eq!(source.calls(), 2);
}

#[test]
fn bad_loading_settings_are_build_errors() {
    let loader = |k: &u64| Ok::<_, String>(Some(*k));
    let base = || Cache::<u64, u64>::builder().time_to_live(SEC);
    let err = |b: larder::LoadingCacheBuilder<u64, u64, String>| b.build().unwrap_err();
    assert_eq!(
        err(base().loader(loader).refresh_after(Duration::ZERO)),
        BuildError::ZeroSetting("refresh_after")
    );
    assert_eq!(
        err(base().loader(loader).negative_ttl(Duration::ZERO)),
        BuildError::ZeroSetting("negative_ttl")
    );
    assert_eq!(
        err(base().loader(loader).reload_threads(0)),
        BuildError::ZeroSetting("reload_threads")
    );
    assert_eq!(
        err(base().loader(loader).reload_queue_capacity(0)),
        BuildError::ZeroSetting("reload_queue_capacity")
    );
    // Limits, checked whether or not a setting needs the reload threads.
    let reloading = || base().loader(loader).refresh_after(SEC);
    let too_many = err(reloading().reload_threads(usize::MAX));
    assert_eq!(
        too_many,
        BuildError::TooLarge("reload_threads", usize::MAX, 1_024)
    );
    assert_eq!(
        too_many.to_string(),
        format!(
            "reload_threads is {}, more than the limit of 1024",
            usize::MAX
        )
    );
    assert_eq!(
        err(reloading().reload_queue_capacity(usize::MAX)),
        BuildError::TooLarge("reload_queue_capacity", usize::MAX, 1 << 20)
    );
    assert_eq!(
        err(base().loader(loader).reload_queue_capacity((1 << 20) + 1)),
        BuildError::TooLarge("reload_queue_capacity", (1 << 20) + 1, 1 << 20)
    );
    assert!(reloading().reload_queue_capacity(1 << 20).build().is_ok());
    for beta in [0.0, -1.0, f64::INFINITY] {
        assert_eq!(
            err(base().loader(loader).early_expiry(beta)),
            BuildError::BetaOutOfRange(beta)
        );
    }
    assert!(matches!(
        err(base().loader(loader).early_expiry(f64::NAN)),
        BuildError::BetaOutOfRange(b) if b.is_nan()
    ));
    let untimed = || Cache::<u64, u64>::builder().loader(loader);
    assert_eq!(
        err(untimed().stale_if_error(SEC)),
        BuildError::NeedsTimeToLive("stale_if_error")
    );
    assert_eq!(
        err(untimed().early_expiry(1.0)),
        BuildError::NeedsTimeToLive("early_expiry")
    );
    struct Fixed;
    impl larder::Expiry<u64, u64> for Fixed {
        fn expire_after_create(&self, _: &u64, _: &u64) -> Option<Duration> {
            None
        }
    }
    assert_eq!(
        err(Cache::<u64, u64>::builder()
            .expire_after(Fixed)
            .loader(loader)),
        BuildError::LoaderExpiryConflict
    );
    assert_eq!(
        err(Cache::<u64, u64>::builder().num_shards(0).loader(loader)),
        BuildError::ZeroShards
    );
    assert!(
        !BuildError::ZeroSetting("refresh_after")
            .to_string()
            .is_empty()
    );
}

#[test]
fn weigher_and_listener_see_only_present_values() {
    let removed = Arc::new(Mutex::new(Vec::new()));
    let seen = removed.clone();
    let cache = Cache::builder()
        .max_capacity(100)
        .weigher(|_: &u64, v: &u64| *v as u32)
        .eviction_listener(move |k, v, cause| seen.lock().push((*k, v, cause)))
        .loader(|k: &u64| Ok::<_, String>((*k > 0).then_some(*k)))
        .negative_ttl(SEC)
        .build()
        .unwrap();
    assert_eq!(cache.get(&30).unwrap(), Some(30));
    assert_eq!(cache.get(&0).unwrap(), None); // weighs 1, no listener call
    cache.invalidate(&0);
    cache.invalidate(&30);
    cache.run_pending_tasks();
    assert_eq!(
        *removed.lock(),
        vec![(30, 30, larder::RemovalCause::Explicit)]
    );
}

#[test]
fn a_reader_needing_a_key_whose_reload_is_queued_loads_it_without_waiting() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .reload_threads(1)
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    cache.get(&2).unwrap();
    clock.advance(11 * SEC); // both stale, inside the window
    let entered = source.announce();
    let gate = source.gate.lock();
    assert_eq!(cache.get(&2).unwrap(), Some(2002), "stale hit");
    assert_eq!(
        entered.recv_timeout(10 * SEC),
        Ok(2),
        "2's reload holds the one worker"
    );
    assert_eq!(
        cache.get(&1).unwrap(),
        Some(1001),
        "stale hit; 1's reload queued"
    );
    cache.insert(1, 100); // replaces the value the reload was asked for
    clock.advance(29 * SEC); // 100 is past its TTL and its stale window
    assert_eq!(cache.peek(&1), None);
    // A reader now must load. It does not wait behind the busy worker for
    // the queued reload: it takes the reload over and loads on its own
    // thread (it reaches the loader while the worker is still held).
    let reader = {
        let cache = cache.clone();
        thread::spawn(move || cache.get(&1))
    };
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1), "the reader loads");
    drop(gate);
    let read = reader
        .join()
        .unwrap()
        .unwrap()
        .expect("the loader has every key");
    assert_eq!(read / 1000, 1, "a load of key 1, not the expired {read}");
    cache.run_pending_tasks();
    assert_eq!(
        source.calls(),
        4,
        "1, 2, 2's reload, the reader's load: the job did nothing"
    );
    assert_eq!(cache.get(&1).unwrap(), Some(read));
}

/// A loading cache whose loaders read other keys of the same cache.
type Chained = LoadingCache<u64, u64, String>;

/// What the deadlock tests below share: a clock; the cache's own handle,
/// set once it is built, for its loaders and listener to call back into
/// it; a gate a loader waits on while the test holds it; and a channel on
/// which each loader call announces its key.
struct Chain {
    clock: MockClock,
    me: Arc<Mutex<Option<Chained>>>,
    gate: Arc<Mutex<()>>,
    entered_tx: Mutex<mpsc::Sender<u64>>,
    entered: mpsc::Receiver<u64>,
}

impl Chain {
    fn new() -> Self {
        let (entered_tx, entered) = mpsc::channel();
        Chain {
            clock: MockClock::new(),
            me: Arc::default(),
            gate: Arc::default(),
            entered_tx: Mutex::new(entered_tx),
            entered,
        }
    }
}

/// Three keys whose loaders read the next one down (3 reads 2, 2 reads 1),
/// one reload worker. Key 3's reload holds the worker, key 1's waits in the
/// queue behind it, and a reader of key 2 loads it: its loader reads key 1,
/// and key 3's loader reads key 2. Waiting for key 1's queued reload would
/// wait for the worker, which waits for key 2: a deadlock.
#[test]
fn loaders_reading_keys_whose_reloads_are_queued_do_not_deadlock() {
    let Chain {
        clock,
        me,
        gate,
        entered_tx,
        entered,
    } = Chain::new();
    let cache: Chained = {
        let (me, gate) = (me.clone(), gate.clone());
        clocked(&clock)
            .time_to_live(20 * SEC)
            .loader(move |k: &u64| -> Result<Option<u64>, String> {
                let _ = entered_tx.lock().send(*k);
                let cache = me.lock().clone().expect("set before any read");
                let below = |d: u64| cache.get(&d).map_err(|e| (*e).clone());
                match *k {
                    3 => {
                        drop(gate.lock());
                        Ok(below(2)?.map(|v| v + 1))
                    }
                    2 => Ok(below(1)?.map(|v| v + 1)),
                    k => Ok(Some(k)),
                }
            })
            .refresh_after(10 * SEC)
            .reload_threads(1)
            .build()
            .unwrap()
    };
    *me.lock() = Some(cache.clone());
    assert_eq!(cache.get(&3).unwrap(), Some(3), "loads 3, 2 and 1");
    while entered.try_recv().is_ok() {}
    clock.advance(15 * SEC); // all due for refresh
    let held = gate.lock();
    cache.get(&3).unwrap(); // 3's reload takes the worker, stops at the gate
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(3));
    cache.get(&1).unwrap(); // 1's reload waits in the queue
    clock.advance(10 * SEC); // 1 and 2 expire (3 too: its reload is under way)
    let (done_tx, done) = mpsc::channel();
    {
        let cache = cache.clone();
        thread::spawn(move || {
            let _ = done_tx.send(cache.get(&2));
        });
    }
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(2), "the reader loads 2");
    drop(held);
    let got = done.recv_timeout(10 * SEC).expect("no deadlock");
    assert_eq!(got.unwrap(), Some(2));
    cache.run_pending_tasks();
    assert_eq!(cache.get(&3).unwrap(), Some(3), "3's reload ended too");
    me.lock().take();
}

/// A foreground load of key 1 whose loader calls `run_pending_tasks` while
/// key 2's background reload, whose loader reads key 1, is under way: the
/// reload waits for the load of 1, so waiting for the reload from inside
/// that load would be a deadlock.
#[test]
fn run_pending_tasks_inside_a_loader_does_not_wait_for_a_reload_waiting_for_that_load() {
    let Chain {
        clock,
        me,
        gate,
        entered_tx,
        entered,
    } = Chain::new();
    let cache: Chained = {
        let (me, gate) = (me.clone(), gate.clone());
        clocked(&clock)
            .time_to_live(60 * SEC)
            .loader(move |k: &u64| -> Result<Option<u64>, String> {
                let _ = entered_tx.lock().send(*k);
                let cache = me.lock().clone().expect("set before any read");
                match *k {
                    1 => {
                        drop(gate.lock());
                        cache.run_pending_tasks();
                        Ok(Some(1))
                    }
                    k => Ok(cache.get(&1).map_err(|e| (*e).clone())?.map(|v| v + k)),
                }
            })
            .refresh_after(10 * SEC)
            .reload_threads(1)
            .build()
            .unwrap()
    };
    *me.lock() = Some(cache.clone());
    assert_eq!(cache.get(&2).unwrap(), Some(3), "loads 2 and 1");
    cache.invalidate(&1);
    while entered.try_recv().is_ok() {}
    clock.advance(15 * SEC); // 2 is due for refresh
    let held = gate.lock();
    let (done_tx, done) = mpsc::channel();
    {
        let cache = cache.clone();
        thread::spawn(move || {
            let _ = done_tx.send(cache.get(&1));
        });
    }
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1), "the reader loads 1");
    assert_eq!(cache.get(&2).unwrap(), Some(3), "due: starts 2's reload");
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(2), "2's reload reads 1");
    drop(held); // 1's loader now runs run_pending_tasks
    let got = done.recv_timeout(10 * SEC).expect("no deadlock");
    assert_eq!(got.unwrap(), Some(1));
    cache.run_pending_tasks();
    assert_eq!(cache.stats().refreshes(), 1, "2's reload ended too");
    assert_eq!(cache.get(&2).unwrap(), Some(3));
    me.lock().take();
}

/// Waits until `cache` has counted more misses than `misses` (a read has
/// reached a load under way), then a little longer so that it gets from its
/// miss to waiting for the load: a read after the load's store would find
/// the value cached instead.
fn hold_until_misses_past<E: Send + Sync + 'static>(
    cache: &LoadingCache<u64, u64, E>,
    misses: u64,
) {
    let deadline = std::time::Instant::now() + 10 * SEC;
    while cache.stats().misses() == misses && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(100));
}

/// Key 2's background reload, whose loader reads key 1, is under way while
/// a reader loads key 1; the load's fill runs `base`'s callbacks (a
/// listener for what it evicts when `fill_evicts`, a weigher), and
/// `armed` is set just before key 1's loader is let go. The reload waits
/// for the load of 1, so a callback waiting for the reload before the
/// load's waiters have its value would be a deadlock. Returns the cache
/// once the load and the reload have ended.
fn a_fill_under_a_reload_waiting_for_it(
    chain: Chain,
    base: larder::CacheBuilder<u64, u64>,
    fill_evicts: bool,
    armed: &AtomicBool,
) -> Chained {
    let Chain {
        clock,
        me,
        gate,
        entered_tx,
        entered,
    } = chain;
    let cache: Chained = {
        let (me, gate) = (me.clone(), gate.clone());
        base.clock(clock.clone())
            .time_to_live(60 * SEC)
            .loader(move |k: &u64| -> Result<Option<u64>, String> {
                let _ = entered_tx.lock().send(*k);
                let cache = me.lock().clone().expect("set before any read");
                match *k {
                    1 => {
                        drop(gate.lock());
                        Ok(Some(1))
                    }
                    k => Ok(cache.get(&1).map_err(|e| (*e).clone())?.map(|v| v + k)),
                }
            })
            .refresh_after(10 * SEC)
            .reload_threads(1)
            .build()
            .unwrap()
    };
    *me.lock() = Some(cache.clone());
    assert_eq!(cache.get(&2).unwrap(), Some(3), "loads 2 and 1");
    cache.invalidate(&1);
    if fill_evicts {
        cache.insert(3, 3); // full: the next fill evicts
    }
    while entered.try_recv().is_ok() {}
    clock.advance(15 * SEC); // 2 is due for refresh
    let held = gate.lock();
    let (done_tx, done) = mpsc::channel();
    {
        let cache = cache.clone();
        thread::spawn(move || {
            let _ = done_tx.send(cache.get(&1));
        });
    }
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1), "the reader loads 1");
    let misses = cache.stats().misses();
    assert_eq!(cache.get(&2).unwrap(), Some(3), "due: starts 2's reload");
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(2), "2's reload reads 1");
    hold_until_misses_past(&cache, misses);
    armed.store(true, SeqCst);
    drop(held); // 1's fill runs the callbacks
    let got = done.recv_timeout(10 * SEC).expect("no deadlock");
    armed.store(false, SeqCst);
    assert_eq!(got.unwrap(), Some(1));
    cache.run_pending_tasks();
    assert_eq!(cache.stats().refreshes(), 1, "2's reload ended too");
    me.lock().take();
    cache
}

/// The fill evicts, and the listener, run on the loading thread, calls
/// `run_pending_tasks`.
#[test]
fn a_listener_run_by_a_loads_fill_does_not_wait_for_a_reload_waiting_for_that_load() {
    let chain = Chain::new();
    let listening = chain.me.clone();
    let base = Cache::builder()
        .max_capacity(2)
        .num_shards(1)
        .eviction_listener(move |_: Arc<u64>, _, cause| {
            if cause == RemovalCause::Size {
                let cache = listening.lock().clone().expect("set");
                cache.run_pending_tasks();
            }
        });
    let cache = a_fill_under_a_reload_waiting_for_it(chain, base, true, &AtomicBool::new(false));
    assert!(
        cache.stats().removals(RemovalCause::Size) >= 1,
        "the fill evicted"
    );
}

/// The fill weighs the value, and the weigher calls `run_pending_tasks`.
#[test]
fn a_weigher_run_by_a_loads_fill_does_not_wait_for_a_reload_waiting_for_that_load() {
    let chain = Chain::new();
    let armed = Arc::new(AtomicBool::new(false));
    let (weighing, arming) = (chain.me.clone(), armed.clone());
    let base = Cache::builder().weigher(move |k: &u64, _: &u64| {
        if *k == 1 && arming.load(SeqCst) {
            let cache = weighing.lock().clone().expect("set");
            cache.run_pending_tasks();
        }
        1
    });
    a_fill_under_a_reload_waiting_for_it(chain, base, false, &armed);
}

/// A background reload of key 1 whose value fills a full cache while a pass
/// (another thread's `run_pending_tasks`) delivers key 2's expiry to a
/// listener that reads key 1, so it waits for that reload. The fill evicts,
/// and the listener, run on the reload thread, calls `run_pending_tasks`,
/// which waits for the pass: before the reload's waiters had its value, a
/// deadlock.
#[test]
fn a_listener_run_by_a_reloads_fill_does_not_wait_for_a_pass_waiting_for_that_reload() {
    let Chain {
        clock,
        me,
        gate,
        entered_tx,
        entered,
    } = Chain::new();
    let (heard_tx, heard) = mpsc::channel::<()>();
    let (go, go_rx) = mpsc::channel::<()>();
    let (heard_tx, go_rx) = (Mutex::new(heard_tx), Mutex::new(go_rx));
    let cache: Chained = {
        let (me, gate) = (me.clone(), gate.clone());
        Cache::builder()
            .max_capacity(2)
            .num_shards(1)
            .clock(clock.clone())
            .eviction_listener(move |k: Arc<u64>, _, cause| {
                let cache = me.lock().clone().expect("set");
                match cause {
                    RemovalCause::Expired if *k == 2 => {
                        heard_tx.lock().send(()).unwrap();
                        go_rx.lock().recv_timeout(10 * SEC).unwrap();
                        assert_eq!(cache.get(&1).unwrap(), Some(1), "the reload's value");
                    }
                    RemovalCause::Size => cache.run_pending_tasks(),
                    _ => {}
                }
            })
            .time_to_live(60 * SEC)
            .loader(move |k: &u64| -> Result<Option<u64>, String> {
                let _ = entered_tx.lock().send(*k);
                if *k == 1 {
                    drop(gate.lock());
                }
                Ok(Some(*k))
            })
            .refresh_after(10 * SEC)
            .reload_threads(1)
            .build()
            .unwrap()
    };
    *me.lock() = Some(cache.clone());
    assert_eq!(cache.get(&2).unwrap(), Some(2));
    clock.advance(30 * SEC);
    cache.insert(3, 3);
    clock.advance(31 * SEC); // 2 has expired, 3 has not
    while entered.try_recv().is_ok() {}
    let (done_tx, done) = mpsc::channel();
    {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.run_pending_tasks(); // its pass reaps 2
            let _ = done_tx.send(());
        });
    }
    heard.recv_timeout(10 * SEC).expect("the pass reaps 2");
    // Full, so the reload's fill evicts. Written before the reload begins:
    // a write while it loads, of a key that shares its write-count stripe
    // (one time in eight hash seeds), would keep its value out.
    cache.insert(4, 4);
    let held = gate.lock();
    assert!(cache.refresh(&1), "absent: queued");
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(1), "the worker loads 1");
    let misses = cache.stats().misses();
    go.send(()).unwrap(); // the pass's listener reads 1: waits for the reload
    hold_until_misses_past(&cache, misses);
    drop(held);
    done.recv_timeout(10 * SEC).expect("no deadlock");
    cache.run_pending_tasks();
    assert_eq!(cache.stats().refreshes(), 1);
    assert_eq!(
        cache.stats().removals(RemovalCause::Size),
        1,
        "the fill evicted"
    );
    me.lock().take();
}

#[test]
fn a_queued_refresh_of_an_absent_key_never_overwrites_a_later_insert() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(source.clone())
        .refresh_after(10 * SEC)
        .reload_threads(1)
        .build()
        .unwrap();
    cache.get(&9).unwrap();
    clock.advance(11 * SEC);
    let entered = source.announce();
    let gate = source.gate.lock();
    cache.get(&9).unwrap(); // key 9's reload holds the only worker
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(9));
    assert!(cache.refresh(&1), "absent: queued");
    cache.insert(1, 42); // while the refresh waits for a worker
    drop(gate);
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1).unwrap(), Some(42), "the insert wins");
}

#[test]
fn reads_take_any_borrowed_form_of_the_key() {
    let clock = MockClock::new();
    let calls = Arc::new(AtomicU64::new(0));
    let cache: LoadingCache<String, usize, String> = {
        let calls = calls.clone();
        Cache::builder()
            .clock(clock.clone())
            .time_to_live(10 * SEC)
            .loader(move |k: &String| {
                calls.fetch_add(1, SeqCst);
                Ok::<_, String>(Some(k.len()))
            })
            .refresh_after(5 * SEC)
            .build()
            .unwrap()
    };
    assert_eq!(cache.get("four").unwrap(), Some(4), "a miss loads");
    assert_eq!(cache.get("four").unwrap(), Some(4), "a hit");
    assert_eq!(cache.peek("four"), Some(4));
    let std::task::Poll::Ready(read) = poll_once(std::pin::pin!(cache.get_async("three"))) else {
        panic!("a load with no other caller completes in one poll");
    };
    assert_eq!(read.unwrap(), Some(5));
    clock.advance(6 * SEC);
    assert_eq!(cache.get("four").unwrap(), Some(4), "due: starts a reload");
    cache.run_pending_tasks();
    assert_eq!(calls.load(SeqCst), 3, "four, three, and four's reload");
    assert_eq!(cache.stats().refreshes(), 1);
    assert_eq!(
        cache.get(&"four".to_string()).unwrap(),
        Some(4),
        "the owned key too"
    );
    // So do the writes that name a key.
    assert!(cache.refresh("four"));
    cache.run_pending_tasks();
    assert_eq!(cache.stats().refreshes(), 2);
    assert_eq!(cache.remove("four"), Some(4));
    assert_eq!(cache.peek("four"), None);
    cache.invalidate("three");
    assert_eq!(cache.peek("three"), None);
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

#[test]
fn an_absent_answer_never_drops_an_insert_made_while_it_loaded() {
    // Without negative caching, a load that finds the key absent drops the
    // key's entry; not the value of an insert that ended after it began.
    for background in [false, true] {
        let what = if background { "a refresh" } else { "a read" };
        let clock = MockClock::new();
        let source = Source::default();
        source.absent.store(true, SeqCst);
        let builder = clocked(&clock).loader(source.clone());
        let cache = match background {
            true => builder.refresh_after(60 * SEC).reload_threads(1),
            false => builder,
        }
        .build()
        .unwrap();
        let entered = source.announce();
        let gate = source.gate.lock();
        let reader = if background {
            assert!(cache.refresh(&1), "absent: the worker takes it");
            None
        } else {
            let cache = cache.clone();
            Some(thread::spawn(move || cache.get(&1).unwrap()))
        };
        assert_eq!(entered.recv_timeout(10 * SEC), Ok(1), "{what}");
        cache.insert(1, 42); // while the loader runs
        drop(gate);
        if let Some(reader) = reader {
            assert_eq!(reader.join().unwrap(), None, "the reader gets its load");
        }
        cache.run_pending_tasks();
        assert_eq!(cache.peek(&1), Some(42), "{what}: the insert wins");
    }
}

// One value's lifetime given, read or changed by the caller:
// `insert_with_ttl`, `expires_in`, `expire_in`, `persist`.

#[test]
fn insert_with_ttl_gives_the_value_its_own_exact_time_to_live() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .ttl_jitter(0.5)
        .loader(source.clone())
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 42, 10 * SEC);
    cache.insert_with_ttl(2, 43, 600 * SEC);
    assert_eq!(cache.expires_in(&1), Some(Some(10 * SEC)), "not jittered");
    assert_eq!(
        cache.expires_in(&2),
        Some(Some(600 * SEC)),
        "longer than the cache's"
    );
    clock.advance(9 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(42));
    clock.advance(SEC);
    assert_eq!(cache.peek(&1), None, "expired at 10 s");
    assert_eq!(cache.get(&1).unwrap(), Some(1001), "so the read loads");
    clock.advance(500 * SEC);
    assert_eq!(cache.get(&2).unwrap(), Some(43), "still fresh at 510 s");
    assert_eq!(source.calls(), 1);

    // Zero: expired at once, never returned.
    cache.insert_with_ttl(3, 44, Duration::ZERO);
    assert_eq!(cache.peek(&3), None);
    assert_eq!(cache.get(&3).unwrap(), Some(3002));

    // It replaces a cached absence, which then no longer answers.
    let absent = clocked(&clock)
        .loader(|_: &u64| Ok::<Option<u64>, String>(None))
        .negative_ttl(60 * SEC)
        .build()
        .unwrap();
    assert_eq!(absent.get(&1).unwrap(), None);
    absent.insert_with_ttl(1, 7, 5 * SEC);
    assert_eq!(absent.get(&1).unwrap(), Some(7));
    clock.advance(5 * SEC);
    assert_eq!(absent.get(&1).unwrap(), None, "expired, loaded: absent");
}

#[test]
fn a_value_past_the_ttl_it_was_inserted_with_is_served_stale_inside_the_window() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 42, 10 * SEC);
    clock.advance(14 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(42), "4 s into the window");
    assert_eq!(cache.stats().stale_hits(), 1);
    cache.run_pending_tasks();
    assert_eq!(source.calls(), 1, "one background reload");
    assert_eq!(cache.get(&1).unwrap(), Some(1001));
    assert_eq!(
        cache.expires_in(&1),
        Some(Some(60 * SEC)),
        "the reloaded value has the cache's time to live"
    );

    // Zero: stale at once, so a read inside the window returns it.
    cache.insert_with_ttl(2, 43, Duration::ZERO);
    assert_eq!(cache.expires_in(&2), None);
    assert_eq!(cache.get(&2).unwrap(), Some(43));
    assert_eq!(cache.stats().stale_hits(), 2);
    cache.run_pending_tasks();
    assert_eq!(cache.get(&2).unwrap(), Some(2002));
}

#[test]
fn insert_with_ttl_keeps_a_load_under_way_out_as_insert_does() {
    for background in [false, true] {
        let what = if background { "a refresh" } else { "a read" };
        let clock = MockClock::new();
        let source = Source::default();
        let builder = clocked(&clock)
            .time_to_live(60 * SEC)
            .loader(source.clone());
        let cache = match background {
            true => builder.refresh_after(30 * SEC).reload_threads(1),
            false => builder,
        }
        .build()
        .unwrap();
        let entered = source.announce();
        let gate = source.gate.lock();
        let reader = if background {
            assert!(cache.refresh(&7), "{what}: the worker takes it");
            None
        } else {
            let cache = cache.clone();
            Some(thread::spawn(move || cache.get(&7).unwrap()))
        };
        assert_eq!(entered.recv_timeout(10 * SEC), Ok(7), "{what}");
        cache.insert_with_ttl(7, 42, 10 * SEC); // while the loader runs
        drop(gate);
        if let Some(reader) = reader {
            assert_eq!(reader.join().unwrap(), Some(7001), "{what}: its own load");
        }
        cache.run_pending_tasks();
        assert_eq!(cache.peek(&7), Some(42), "{what}: the insert wins");
        assert_eq!(cache.expires_in(&7), Some(Some(10 * SEC)), "{what}");
        clock.advance(10 * SEC);
        assert_eq!(cache.get(&7).unwrap(), Some(7002), "{what}: then expires");
    }
}

#[test]
fn expires_in_reports_what_peek_would_return_and_touches_nothing() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(source.clone())
        .refresh_after(30 * SEC)
        .stale_while_revalidate(10 * SEC)
        .build()
        .unwrap();
    assert_eq!(cache.expires_in(&1), None, "absent: nothing loaded");
    cache.get(&1).unwrap();
    clock.advance(40 * SEC);
    assert_eq!(
        cache.expires_in(&1),
        Some(Some(20 * SEC)),
        "due for refresh, yet fresh"
    );
    clock.advance(25 * SEC);
    assert_eq!(
        cache.expires_in(&1),
        None,
        "stale, though a read returns it"
    );
    cache.run_pending_tasks();
    let s = cache.stats();
    assert_eq!(
        (source.calls(), s.hits(), s.misses(), s.refreshes()),
        (1, 0, 1, 0)
    );

    // A cached absence is no value; without a time to live, `Some(None)`.
    let absent = clocked(&clock)
        .loader(|k: &u64| Ok::<_, String>((*k < 10).then_some(*k)))
        .negative_ttl(60 * SEC)
        .build()
        .unwrap();
    absent.get_many([1, 50]).unwrap();
    assert_eq!(absent.expires_in(&1), Some(None));
    assert_eq!(absent.expires_in(&50), None);

    // With a time to idle, the earlier of the two.
    let idle = clocked(&clock)
        .time_to_live(60 * SEC)
        .time_to_idle(20 * SEC)
        .loader(source.clone())
        .build()
        .unwrap();
    idle.get(&1).unwrap();
    assert_eq!(idle.expires_in(&1), Some(Some(20 * SEC)));
    clock.advance(15 * SEC);
    idle.get(&1).unwrap(); // slides the idle time to 35 s
    clock.advance(15 * SEC);
    assert_eq!(idle.expires_in(&1), Some(Some(5 * SEC)));
    assert!(idle.expire_in(&1, 10 * SEC));
    assert_eq!(idle.expires_in(&1), Some(Some(10 * SEC)), "ttl before idle");
}

#[test]
fn expire_in_and_persist_retime_a_fresh_value_without_writing_it() {
    let clock = MockClock::new();
    let source = Source::default();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let listening = heard.clone();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .eviction_listener(move |k: Arc<u64>, v, cause| listening.lock().push((*k, v, cause)))
        .loader(source.clone())
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    cache.get(&2).unwrap();
    clock.advance(50 * SEC);
    assert!(cache.expire_in(&1, 600 * SEC), "extended past the cache's");
    assert!(cache.expire_in(&2, 5 * SEC), "cut short");
    assert!(!cache.expire_in(&3, 600 * SEC), "absent: not loaded");
    assert!(!cache.persist(&3));
    assert_eq!(cache.expires_in(&1), Some(Some(600 * SEC)));
    clock.advance(5 * SEC);
    assert_eq!(cache.peek(&2), None, "expired at 55 s");
    assert!(cache.persist(&1));
    clock.advance(3600 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(1001), "never expires");
    assert_eq!(cache.expires_in(&1), Some(None));
    assert_eq!(cache.get(&2).unwrap(), Some(2003), "loaded again");
    cache.run_pending_tasks();
    assert_eq!(source.calls(), 3, "1, 2, then 2 again");
    assert_eq!(cache.entry_count(), 2);
    assert_eq!(
        *heard.lock(),
        [(2, 2002, RemovalCause::Expired)],
        "nothing heard but the load of 2 replacing its expired value"
    );
    let s = cache.stats();
    assert_eq!(
        (s.hits(), s.misses()),
        (1, 3),
        "only the four reads counted"
    );
}

#[test]
fn expire_in_moves_the_stale_windows_with_the_time_to_live() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    cache.get(&2).unwrap();
    assert!(cache.expire_in(&1, 30 * SEC));
    assert!(cache.expire_in(&2, 30 * SEC));
    clock.advance(34 * SEC); // fresh to 30, stale to 35
    assert_eq!(cache.get(&1).unwrap(), Some(1001), "stale, not gone");
    assert_eq!(cache.stats().stale_hits(), 1);
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1).unwrap(), Some(1003), "reloaded");
    clock.advance(SEC);
    assert_eq!(cache.get(&2).unwrap(), Some(2004), "past the window: loads");
    assert_eq!(cache.stats().stale_hits(), 1);
}

#[test]
fn expire_in_leaves_stale_values_and_cached_absences_alone() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .negative_ttl(5 * SEC)
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    clock.advance(12 * SEC);
    assert!(!cache.expire_in(&1, 60 * SEC), "stale: not revived");
    assert!(!cache.persist(&1));
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.get(&1).unwrap(), Some(1001), "still stale");
    assert_eq!(cache.stats().stale_hits(), 1);
    cache.run_pending_tasks(); // its reload: the loader's second call

    source.absent.store(true, SeqCst);
    assert_eq!(cache.get(&9).unwrap(), None);
    assert!(!cache.expire_in(&9, 60 * SEC), "an absence is no value");
    assert!(!cache.persist(&9));
    source.absent.store(false, SeqCst);
    clock.advance(5 * SEC);
    assert_eq!(
        cache.get(&9).unwrap(),
        Some(9004),
        "the absence expired on its own negative_ttl"
    );
}

#[test]
fn expire_in_zero_removes_the_value_or_makes_it_stale() {
    let clock = MockClock::new();
    let source = Source::default();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let listening = heard.clone();
    let plain = clocked(&clock)
        .time_to_live(60 * SEC)
        .eviction_listener(move |k: Arc<u64>, v, cause| listening.lock().push((*k, v, cause)))
        .loader(source.clone())
        .build()
        .unwrap();
    plain.get(&1).unwrap();
    assert!(plain.expire_in(&1, Duration::ZERO));
    assert_eq!(plain.entry_count(), 0, "removed at once");
    assert_eq!(*heard.lock(), [(1, 1001, RemovalCause::Expired)]);
    assert!(!plain.expire_in(&1, Duration::ZERO), "once");

    let windowed = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(source.clone())
        .stale_while_revalidate(5 * SEC)
        .build()
        .unwrap();
    windowed.get(&1).unwrap();
    assert!(windowed.expire_in(&1, Duration::ZERO));
    assert_eq!(windowed.peek(&1), None, "no longer fresh");
    assert_eq!(windowed.get(&1).unwrap(), Some(1002), "but served stale");
    windowed.run_pending_tasks();
    assert_eq!(windowed.get(&1).unwrap(), Some(1003), "and reloaded");

    // With stale_if_error alone, stale means kept for a failed load only:
    // the next read loads, and falls back on it if that load fails.
    let fallback = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(source.clone())
        .stale_if_error(5 * SEC)
        .build()
        .unwrap();
    fallback.get(&2).unwrap();
    fallback.get(&3).unwrap();
    assert!(fallback.expire_in(&2, Duration::ZERO));
    assert!(fallback.expire_in(&3, Duration::ZERO));
    assert_eq!(fallback.get(&2).unwrap(), Some(2006), "loaded, not served");
    source.fail.store(true, SeqCst);
    assert_eq!(fallback.get(&3).unwrap(), Some(3005), "kept for the error");
    assert_eq!(fallback.stats().stale_hits(), 1);
}

#[test]
fn a_load_under_way_caches_its_value_with_the_caches_ttl_whatever_expire_in_did() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(source.clone())
        .build()
        .unwrap();
    let entered = source.announce();
    let gate = source.gate.lock();
    let reader = {
        let cache = cache.clone();
        thread::spawn(move || cache.get(&7).unwrap())
    };
    assert_eq!(entered.recv_timeout(10 * SEC), Ok(7));
    assert!(!cache.expire_in(&7, 600 * SEC), "nothing to retime yet");
    assert!(!cache.persist(&7));
    drop(gate);
    assert_eq!(reader.join().unwrap(), Some(7001));
    assert_eq!(cache.peek(&7), Some(7001), "not kept out");
    assert_eq!(cache.expires_in(&7), Some(Some(60 * SEC)));
}

#[test]
fn persist_keeps_a_value_fresh_but_a_refresh_still_replaces_it() {
    let clock = MockClock::new();
    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .loader(source.clone())
        .refresh_after(30 * SEC)
        .build()
        .unwrap();
    cache.insert(1, 42);
    assert!(cache.persist(&1));
    clock.advance(100 * SEC);
    assert_eq!(cache.get(&1).unwrap(), Some(42), "fresh, due for refresh");
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1).unwrap(), Some(1001), "refreshed");
    assert_eq!(
        cache.expires_in(&1),
        Some(Some(60 * SEC)),
        "the cache's ttl"
    );
}

#[test]
fn iter_lists_a_value_expire_in_kept_fresh_while_it_walked_as_cache_iter_does() {
    // Two keys in one shard: the loop body, run between the two items,
    // extends the other key's value and moves the clock past its old time
    // to live. The value is fresh at every instant of the walk, so the
    // walk lists it, as `Cache::iter` lists an entry it copied live.
    // Before, the walk judged its copy of the record (taken with the
    // shard) by the clock read at each item: the other key was skipped.
    fn walk<I: Iterator<Item = u64>>(
        keys: I,
        clock: &MockClock,
        extend: impl Fn(&u64) -> bool,
    ) -> Vec<u64> {
        let mut listed = Vec::new();
        for key in keys {
            if listed.is_empty() {
                assert!(extend(&(3 - key)), "fresh, so extended");
                clock.advance(20 * SEC);
            }
            listed.push(key);
        }
        listed.sort_unstable();
        listed
    }
    let clock = MockClock::new();
    let plain: Cache<u64, u64> = Cache::builder()
        .clock(clock.clone())
        .num_shards(1)
        .time_to_live(10 * SEC)
        .build()
        .unwrap();
    plain.insert(1, 1);
    plain.insert(2, 2);
    let listed = walk(plain.iter().map(|(k, _)| k), &clock, |k| {
        plain.expire_in(k, 100 * SEC)
    });
    assert_eq!(listed, [1, 2], "Cache::iter");

    let clock = MockClock::new();
    let cache = clocked(&clock)
        .num_shards(1)
        .time_to_live(10 * SEC)
        .loader(Source::default())
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    cache.get(&2).unwrap();
    let listed = walk(cache.iter().map(|(k, _)| k), &clock, |k| {
        cache.expire_in(k, 100 * SEC)
    });
    assert_eq!(listed, [1, 2], "LoadingCache::iter");
    assert_eq!(cache.iter().count(), 1, "the extended value, still fresh");
}

#[test]
fn peek_never_reports_a_value_expire_in_keeps_fresh_as_gone() {
    // One thread keeps key 1's value fresh at every instant: it extends it
    // to 10 s from now, then moves the clock 9 s. Reads racing it must
    // always find it. Before, `peek` copied the record under the lock and
    // read the clock after the unlock: a copy taken before an extension,
    // judged at a time after it, was past its old time to live (about 1 in
    // 100,000 reads here).
    let clock = MockClock::new();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .loader(Source::default())
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (cache, stop) = (cache.clone(), stop.clone());
            thread::spawn(move || {
                let mut gone = 0u64;
                while !stop.load(SeqCst) {
                    gone += u64::from(cache.peek(&1).is_none());
                    gone += u64::from(!cache.contains_key(&1));
                    gone += u64::from(cache.iter().next().is_none());
                    if gone > 0 {
                        stop.store(true, SeqCst);
                    }
                }
                gone
            })
        })
        .collect();
    let started = std::time::Instant::now();
    while !stop.load(SeqCst) && started.elapsed() < Duration::from_millis(1500) {
        assert!(cache.expire_in(&1, 10 * SEC), "fresh all along");
        clock.advance(9 * SEC);
    }
    stop.store(true, SeqCst);
    let gone: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(gone, 0, "reads found a value fresh all along gone");
}

#[test]
fn remove_returns_a_value_fresh_when_removed_however_long_the_listener_takes() {
    // The listener hears of the removal before `remove` returns; one that
    // takes longer than the value had left to live (here: moves the clock
    // 20 s) must not turn the answer into `None`. Before, the value was
    // judged by the clock read after the listener had run.
    let clock = MockClock::new();
    let slow = clock.clone();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let listening = heard.clone();
    let cache = clocked(&clock)
        .time_to_live(10 * SEC)
        .eviction_listener(move |k: Arc<u64>, v, cause| {
            listening.lock().push((*k, v, cause));
            slow.advance(20 * SEC);
        })
        .loader(Source::default())
        .build()
        .unwrap();
    cache.get(&1).unwrap();
    assert_eq!(cache.remove(&1), Some(1001), "fresh when it was removed");
    assert_eq!(*heard.lock(), [(1, 1001, RemovalCause::Explicit)]);
    cache.get(&2).unwrap();
    clock.advance(10 * SEC);
    assert_eq!(cache.remove(&2), None, "past its time to live");
    assert_eq!(heard.lock()[1], (2, 2002, RemovalCause::Expired));
}

#[test]
fn a_time_to_live_counts_from_where_the_write_lands_as_on_cache() {
    // A weigher that takes 5 s (it moves the clock) runs between the call
    // and the shard lock, as a wait for a contended lock would. `Cache`
    // counts a lifetime from where the write lands; so does the loading
    // cache, for a value's time to live and for its entry's deadline
    // alike. Before, the value's time to live counted from before the
    // wait: `insert_with_ttl(k, v, 3 s)` landed already expired, and the
    // next read loaded the key.
    let clock = MockClock::new();
    let slow = |clock: &MockClock| {
        let clock = clock.clone();
        move |_: &u64, v: &u64| {
            if *v % 1000 == 42 {
                clock.advance(5 * SEC);
            }
            1
        }
    };
    let plain: Cache<u64, u64> = Cache::builder()
        .clock(clock.clone())
        .max_capacity(100)
        .weigher(slow(&clock))
        .build()
        .unwrap();
    plain.insert_with_ttl(1, 42, 3 * SEC);
    assert_eq!(plain.expires_in(&1), Some(Some(3 * SEC)), "Cache");

    let source = Source::default();
    let cache = clocked(&clock)
        .time_to_live(60 * SEC)
        .weigher(slow(&clock))
        .loader(source.clone())
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 42, 3 * SEC);
    assert_eq!(cache.expires_in(&1), Some(Some(3 * SEC)));
    assert_eq!(cache.get(&1).unwrap(), Some(42), "fresh, not loaded");
    clock.advance(3 * SEC);
    assert_eq!(cache.peek(&1), None, "for 3 s exactly");
    assert_eq!(source.calls(), 0);
}

/// `insert` writes no store, so it caches its value whatever else ended
/// meanwhile: two threads inserting different keys flat out into one shard
/// (whose 8 stripes of write counts the keys share) lose none. Counted as
/// a store's write, an insert that overlapped one of another key of its
/// stripe dropped its key (about 1 in 10,000 here), and the next read
/// called the loader.
#[test]
fn inserts_of_different_keys_racing_in_one_shard_are_all_cached() {
    const INSERTS: u64 = 100_000;
    let cache = Cache::builder()
        .max_capacity(1_000_000)
        .num_shards(1)
        .loader(|_: &u64| Ok::<_, String>(Some(u64::MAX)))
        .build()
        .unwrap();
    let writer = cache.clone();
    let lost = parallel(Duration::from_secs(60), "inserter", 2, move |t| {
        let t = t as u64;
        (0..INSERTS)
            .filter(|&i| {
                let key = t * 1_000_000 + i;
                writer.insert(key, i);
                writer.peek(&key) != Some(i)
            })
            .count()
    });
    assert_eq!(lost, [0, 0], "inserts dropped");
    assert_eq!(cache.stats().loads(), 0);
    assert_eq!(cache.entry_count(), 2 * INSERTS);
}

/// An insert still outdates a load under way of its key, as a write does:
/// the load's value is not cached over it.
#[test]
fn an_insert_during_a_load_of_its_key_is_not_overwritten_by_the_load() {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock();
    let cache = {
        let gate = gate.clone();
        let started_tx = Mutex::new(started_tx);
        Cache::builder()
            .loader(move |k: &u64| {
                started_tx.lock().send(()).unwrap();
                drop(gate.lock());
                Ok::<_, String>(Some(*k))
            })
            .build()
            .unwrap()
    };
    let reader = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.get(&1).unwrap())
    };
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    cache.insert(1, 100);
    drop(held);
    assert_eq!(
        reader.join().unwrap(),
        Some(1),
        "the load answers its own caller"
    );
    assert_eq!(cache.peek(&1), Some(100), "the insert stays");
}

/// A load is outdated only by a write of its own key: one slower than the
/// gap between writes of other keys to its shard is still cached. With the
/// shard's stripes of write counts alone deciding, a key whose 5 ms load
/// raced a thread inserting other keys flat out was loaded on every read.
#[test]
fn a_slow_load_is_cached_while_other_keys_are_written_all_the_time() {
    let calls = Arc::new(AtomicU64::new(0));
    let cache = {
        let calls = calls.clone();
        Cache::builder()
            .max_capacity(10_000)
            .num_shards(1)
            .loader(move |k: &u64| {
                if *k == 1 {
                    calls.fetch_add(1, SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok::<_, String>(Some(*k))
            })
            .build()
            .unwrap()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (cache, stop) = (cache.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(SeqCst) {
                cache.insert(1_000 + k % 5_000, k); // never key 1
                k += 1;
            }
            k
        })
    };
    for _ in 0..20 {
        assert_eq!(cache.get(&1).unwrap(), Some(1));
    }
    stop.store(true, SeqCst);
    let written = writer.join().unwrap();
    assert!(written > 0);
    assert_eq!(
        calls.load(SeqCst),
        1,
        "key 1 loaded once, {written} other writes meanwhile"
    );
}

/// The callers waiting for a load share its value when only other keys
/// were written meanwhile, and load again when their own key was.
#[test]
fn waiters_share_a_load_unless_their_own_key_was_written_meanwhile() {
    for own_key in [false, true] {
        let calls = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Mutex::new(()));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let cache = {
            let (calls, gate) = (calls.clone(), gate.clone());
            let entered_tx = Mutex::new(entered_tx);
            Cache::builder()
                .max_capacity(1_000)
                .num_shards(1)
                .loader(move |k: &u64| {
                    let _ = entered_tx.lock().send(*k);
                    drop(gate.lock());
                    Ok::<_, String>(Some(k * 1_000 + calls.fetch_add(1, SeqCst) + 1))
                })
                .build()
                .unwrap()
        };
        let held = gate.lock();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || cache.get(&1).unwrap())
            })
            .collect();
        entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        hold_until(|| cache.stats().misses() == 4);
        // Every stripe of the one shard written, by keys other than 1.
        for k in 100..164 {
            cache.insert(k, 0);
        }
        if own_key {
            cache.invalidate(&1);
        }
        drop(held);
        let got: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        let loads = calls.load(SeqCst);
        if own_key {
            assert!(loads >= 2, "the waiters loaded again: {got:?}");
        } else {
            assert_eq!((loads, got), (1, vec![Some(1_001); 4]));
            assert_eq!(cache.peek(&1), Some(1_001), "and it was cached");
        }
    }
}

/// Polls `done` until it holds, for at most ten seconds.
fn hold_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
}
