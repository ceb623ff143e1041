//! Expiry on a `MockClock`: TTL, TTI, per-entry TTL, `Expiry` hooks, jitter,
//! and reaping with notifications; and once on the system clock, which
//! must keep time with `Instant`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use larder::{Cache, Expiry, RemovalCause, clock::MockClock};

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn logged(builder: larder::CacheBuilder<u32, u32>) -> (Cache<u32, u32>, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let cache = builder
        .eviction_listener(move |k: Arc<u32>, v, c| sink.lock().unwrap().push((*k, v, c)))
        .build()
        .unwrap();
    (cache, log)
}

#[test]
fn expired_entry_is_never_returned_even_before_reaping() {
    let clock = MockClock::new();
    let (cache, log) = logged(Cache::builder().time_to_live(secs(10)).clock(clock.clone()));
    cache.insert(1, 1);
    clock.advance(Duration::from_nanos(10 * 1_000_000_000 - 1));
    assert_eq!(cache.get(&1), Some(1));
    clock.advance(Duration::from_nanos(1));
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.peek(&1), None);
    assert!(!cache.contains_key(&1));
    assert!(log.lock().unwrap().is_empty(), "not reaped yet");
    cache.run_pending_tasks();
    assert_eq!(*log.lock().unwrap(), vec![(1, 1, RemovalCause::Expired)]);
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.stats().removals(RemovalCause::Expired), 1);
}

#[test]
fn updates_restart_time_to_live() {
    let clock = MockClock::new();
    let cache = Cache::builder()
        .time_to_live(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    clock.advance(secs(8));
    cache.insert(1, 2);
    clock.advance(secs(8));
    assert_eq!(cache.get(&1), Some(2));
    clock.advance(secs(2));
    assert_eq!(cache.get(&1), None);
}

#[test]
fn reads_slide_time_to_idle_but_not_past_time_to_live() {
    let clock = MockClock::new();
    let cache = Cache::builder()
        .time_to_idle(secs(3))
        .time_to_live(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    for _ in 0..4 {
        clock.advance(secs(2));
        assert_eq!(cache.get(&1), Some(1));
    }
    clock.advance(secs(2)); // t = 10 s: the TTL cap
    assert_eq!(cache.get(&1), None);
    cache.insert(2, 2);
    clock.advance(secs(3));
    assert_eq!(cache.get(&2), None, "idle for the whole TTI");
    cache.insert(3, 3);
    clock.advance(secs(2));
    assert_eq!(cache.peek(&3), Some(3));
    clock.advance(secs(1));
    assert_eq!(
        cache.peek(&3),
        None,
        "peek does not slide the idle deadline"
    );
}

/// A read slides the idle deadline in steps (a slide of under a step is
/// skipped, to spare the hit a compare-and-swap), but a step must not be
/// as long as the time to idle itself: then no read could ever move the
/// deadline, and an entry read without pause would expire as if it had
/// a time to live.
#[test]
fn reads_slide_a_time_to_idle_of_a_millisecond_or_less() {
    for tti in [
        Duration::from_micros(100),
        Duration::from_micros(500),
        Duration::from_millis(1),
        Duration::from_micros(1_100),
    ] {
        let clock = MockClock::new();
        let cache = Cache::builder()
            .time_to_idle(tti)
            .clock(clock.clone())
            .build()
            .unwrap();
        cache.insert(1, 1);
        for read in 1..=20 {
            clock.advance(tti * 9 / 10);
            assert_eq!(
                cache.get(&1),
                Some(1),
                "time to idle {tti:?}: read {read}, each {:?} after the last",
                tti * 9 / 10
            );
        }
        clock.advance(tti);
        assert_eq!(cache.get(&1), None, "idle for {tti:?}");
    }
}

#[test]
fn per_entry_ttl_overrides_the_cache_ttl() {
    let clock = MockClock::new();
    let cache = Cache::builder()
        .time_to_live(secs(100))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 1, secs(5));
    cache.insert(2, 2);
    cache.insert_with_ttl(3, 3, secs(500));
    clock.advance(secs(5));
    assert_eq!(
        (cache.get(&1), cache.get(&2), cache.get(&3)),
        (None, Some(2), Some(3))
    );
    clock.advance(secs(95));
    assert_eq!((cache.get(&2), cache.get(&3)), (None, Some(3)));
}

#[test]
fn insert_with_ttl_works_on_a_cache_without_expiry() {
    let clock = MockClock::new();
    let (cache, log) = logged(Cache::builder().clock(clock.clone()));
    cache.insert(1, 1);
    cache.insert_with_ttl(2, 2, secs(1));
    clock.advance(secs(1));
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(*log.lock().unwrap(), vec![(2, 2, RemovalCause::Expired)]);
}

struct ByValue;
impl Expiry<u32, u32> for ByValue {
    fn expire_after_create(&self, _: &u32, v: &u32) -> Option<Duration> {
        (*v != 0).then(|| secs(u64::from(*v)))
    }
    fn expire_after_read(&self, _: &u32, v: &u32, remaining: Option<Duration>) -> Option<Duration> {
        if *v == 7 { Some(secs(7)) } else { remaining }
    }
    fn expire_after_update(
        &self,
        _: &u32,
        v: &u32,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        if *v == 1 {
            remaining
        } else {
            Some(secs(u64::from(*v)))
        }
    }
}

#[test]
fn expiry_hooks_decide_each_entry_deadline() {
    let clock = MockClock::new();
    let cache = Cache::builder()
        .expire_after(ByValue)
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 0); // never expires
    cache.insert(2, 5);
    cache.insert(3, 7); // slides back to 7 s on every read
    clock.advance(secs(4));
    assert_eq!(cache.get(&3), Some(7));
    cache.insert(2, 1); // update hook keeps the 1 s that was left
    clock.advance(secs(1));
    assert_eq!(cache.get(&2), None);
    clock.advance(secs(5));
    assert_eq!(
        cache.get(&3),
        Some(7),
        "read at 4 s moved the deadline to 11 s"
    );
    clock.advance(secs(1000));
    assert_eq!(cache.get(&1), Some(0));
    assert_eq!(cache.get(&3), None);
}

/// Ten seconds from creation; the default update hook keeps what is left.
struct TenSeconds;
impl Expiry<u32, u32> for TenSeconds {
    fn expire_after_create(&self, _: &u32, v: &u32) -> Option<Duration> {
        (*v != 0).then(|| secs(10))
    }
}

#[test]
fn the_default_update_hook_keeps_the_deadline_under_jitter() {
    let clock = MockClock::new();
    let cache = Cache::builder()
        .expire_after(TenSeconds)
        .ttl_jitter(0.5)
        .clock(clock.clone())
        .build()
        .unwrap();
    for k in 0..20 {
        cache.insert(k, 1); // deadlines between 5 s and 15 s
    }
    // Each update keeps the time left. Spread again by ±50% each time, the
    // deadlines would wander: 200 updates shrink them to nothing.
    for round in 1..=200 {
        for k in 0..20 {
            cache.insert(k, round);
        }
    }
    // Just before the earliest deadline the spread allows (5 s), every
    // key is live; at the latest (the factor is below 1.5, so 15 s is
    // past every deadline) none is.
    clock.advance(Duration::from_millis(4_990));
    assert_eq!((0..20).filter(|k| cache.contains_key(k)).count(), 20);
    clock.advance(Duration::from_millis(10_010));
    assert_eq!((0..20).filter(|k| cache.contains_key(k)).count(), 0);
}

/// Zero for every entry: "do not keep this".
struct Zero;
impl Expiry<u32, u32> for Zero {
    fn expire_after_create(&self, _: &u32, _: &u32) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

#[test]
fn a_zero_time_to_live_expires_at_once() {
    let clock = MockClock::new();
    let (cache, log) = logged(Cache::builder().clock(clock.clone()));
    cache.insert_with_ttl(1, 1, Duration::ZERO);
    assert_eq!(cache.get(&1), None, "not even at the same instant");
    assert!(!cache.contains_key(&1));
    cache.run_pending_tasks();
    assert_eq!(*log.lock().unwrap(), vec![(1, 1, RemovalCause::Expired)]);

    let (cache, log) = logged(
        Cache::builder()
            .expire_after(Zero)
            .ttl_jitter(0.3)
            .clock(clock.clone()),
    );
    cache.insert(2, 2);
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.iter().count(), 0);
    cache.run_pending_tasks();
    assert_eq!(*log.lock().unwrap(), vec![(2, 2, RemovalCause::Expired)]);
}

#[test]
fn jitter_spreads_expiry_of_entries_written_together() {
    let clock = MockClock::new();
    let cache = Cache::builder()
        .time_to_live(secs(100))
        .ttl_jitter(0.2)
        .clock(clock.clone())
        .build()
        .unwrap();
    for i in 0..1_000 {
        cache.insert(i, i);
    }
    clock.advance(secs(79));
    assert_eq!(
        (0..1_000).filter(|i| cache.contains_key(i)).count(),
        1_000,
        "none before -20%"
    );
    clock.advance(secs(21));
    let alive = (0..1_000).filter(|i| cache.contains_key(i)).count();
    assert!(
        (300..700).contains(&alive),
        "about half alive at the nominal TTL: {alive}"
    );
    clock.advance(secs(21));
    assert_eq!(
        (0..1_000).filter(|i| cache.contains_key(i)).count(),
        0,
        "all gone after +20%"
    );
}

#[test]
fn replacing_an_expired_entry_reports_it_expired() {
    let clock = MockClock::new();
    let (cache, log) = logged(Cache::builder().time_to_live(secs(1)).clock(clock.clone()));
    cache.insert(1, 1);
    clock.advance(secs(2));
    cache.insert(1, 2);
    assert_eq!(cache.remove(&1), Some(2));
    cache.insert(3, 3);
    clock.advance(secs(2));
    assert_eq!(
        cache.remove(&3),
        None,
        "expired entries are not returned by remove"
    );
    let log = log.lock().unwrap();
    assert_eq!(
        *log,
        vec![
            (1, 1, RemovalCause::Expired),
            (1, 2, RemovalCause::Explicit),
            (3, 3, RemovalCause::Expired)
        ]
    );
}

#[test]
fn invalidate_all_calls_entries_without_a_deadline_explicit_even_at_the_clock_end() {
    // A `MockClock` saturates at `u64::MAX` ns, the very value that means
    // "no deadline": an entry without one is still live there (reads
    // return it), so clearing it is an explicit removal, not an expiry.
    let clock = MockClock::new();
    let (cache, log) = logged(Cache::builder().clock(clock.clone()));
    cache.insert(1, 1);
    clock.advance(Duration::MAX);
    assert_eq!(cache.get(&1), Some(1), "live at the clock's end");
    cache.invalidate_all();
    assert_eq!(*log.lock().unwrap(), vec![(1, 1, RemovalCause::Explicit)]);
    assert_eq!(cache.stats().removals(RemovalCause::Expired), 0);
}

#[test]
fn mass_expiry_is_reaped_completely_in_bounded_batches() {
    let clock = MockClock::new();
    let (cache, log) = logged(
        Cache::builder()
            .time_to_live(secs(1))
            .num_shards(2)
            .clock(clock.clone()),
    );
    for i in 0..20_000 {
        cache.insert(i, i);
    }
    cache.insert_with_ttl(99_999, 1, secs(3600));
    clock.advance(secs(2));
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 1);
    assert_eq!(log.lock().unwrap().len(), 20_000);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|e| e.2 == RemovalCause::Expired)
    );
    cache.check_invariants();
}

/// The system clock (the time-stamp counter where the kernel trusts it,
/// else `Instant`) against `Instant`: reads that `Instant` places well
/// before the deadline find the entry, reads it places after it do not.
/// The assertions depend on the times measured, so a preempted thread
/// cannot fail them; only a clock that ran fast or slow can.
#[test]
fn system_clock_keeps_time_with_instant() {
    const TTL: Duration = Duration::from_millis(40);
    // Calibration error is about 10 ppm; a millisecond is far above it.
    const MARGIN: Duration = Duration::from_millis(1);
    let cache: Cache<u32, u32> = Cache::builder().max_capacity(10).build().unwrap();
    let (mut early, mut late) = (0, 0);
    for round in 0..5 {
        let before = Instant::now();
        cache.insert_with_ttl(round, round, TTL);
        let after_insert = Instant::now();
        loop {
            // The insert read the clock between `before` and `after_insert`,
            // and this get between `start` and `end`.
            let start = Instant::now();
            let seen = cache.get(&round);
            let end = Instant::now();
            if end.duration_since(before) + MARGIN < TTL {
                assert_eq!(
                    seen,
                    Some(round),
                    "gone {:?} into a {TTL:?} lifetime",
                    end - before
                );
                early += 1;
            } else if start.duration_since(after_insert) > TTL + MARGIN {
                assert_eq!(
                    seen,
                    None,
                    "still there {:?} into a {TTL:?} lifetime",
                    start - after_insert
                );
                late += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    assert!(
        early > 0 && late == 5,
        "reads before and after every deadline"
    );
}

/// A key whose comparison with key 2 takes 300 ms, once, when armed. All
/// keys hash alike, so every lookup compares them: a write of key 2 then
/// holds its shard's lock that long.
#[derive(Debug)]
struct Slow(u32);

/// Arms [`Slow`]'s one slow comparison.
static SLOW_ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl PartialEq for Slow {
    fn eq(&self, other: &Self) -> bool {
        let armed = || SLOW_ARMED.swap(false, std::sync::atomic::Ordering::Relaxed);
        if (self.0 == 2 || other.0 == 2) && armed() {
            std::thread::sleep(Duration::from_millis(300));
        }
        self.0 == other.0
    }
}

impl Eq for Slow {}

impl std::hash::Hash for Slow {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// A write that waits for its shard's lock while the value it replaces
/// expires is judged, and timed, by the time under the lock, where it
/// lands: the old value is heard of as expired, and the new one lives its
/// whole time to live from there. Read before the lock, the time found the
/// old value live (`Replaced`) and gave the new one a deadline already
/// passed when it landed, so a `get` right after the insert missed. (Should
/// the writer start late, after the clock moved, the wrong order would go
/// unnoticed this run; the right one never fails it.)
#[test]
fn a_write_waiting_for_the_lock_is_timed_from_where_it_lands() {
    let clock = MockClock::new();
    let log: Arc<Mutex<Vec<(u32, u32, RemovalCause)>>> = Arc::default();
    let sink = log.clone();
    let cache: Cache<Slow, u32> = Cache::builder()
        .time_to_live(secs(1))
        .num_shards(1)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<Slow>, v, c| sink.lock().unwrap().push((k.0, v, c)))
        .build()
        .unwrap();
    cache.insert(Slow(1), 1);
    SLOW_ARMED.store(true, std::sync::atomic::Ordering::Relaxed);
    let holder = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.insert(Slow(2), 2))
    };
    // The holder has the lock, comparing key 2 with key 1.
    std::thread::sleep(Duration::from_millis(50));
    let writer = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.insert(Slow(1), 10))
    };
    std::thread::sleep(Duration::from_millis(50));
    clock.advance(secs(1)); // value 1 expires while the writer waits
    holder.join().unwrap();
    writer.join().unwrap();
    assert_eq!(
        cache.get(&Slow(1)),
        Some(10),
        "the new value lives a second from its landing"
    );
    clock.advance(secs(1) - Duration::from_nanos(1));
    assert_eq!(cache.peek(&Slow(1)), Some(10));
    clock.advance(Duration::from_nanos(1));
    assert_eq!(cache.peek(&Slow(1)), None);
    let heard: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.0 == 1)
        .copied()
        .collect();
    assert_eq!(heard, [(1, 1, RemovalCause::Expired)]);
    assert_eq!(cache.stats().removals(RemovalCause::Replaced), 0);
}
