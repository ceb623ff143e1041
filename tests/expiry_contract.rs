//! The documented contract of `Cache`'s expiry and eviction, checked from the
//! outside on a `MockClock`: deadlines at the nanosecond (one before, at,
//! one after), time to idle against the reads that do and do not slide it,
//! `insert_with_ttl`, `ttl_jitter`'s reach, the `Expiry` hooks, the
//! eviction listener's causes against `stats()`, the capacity bound, and the
//! settings `build()` refuses.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use larder::{BuildError, Cache, CacheBuilder, Expiry, RemovalCause, clock::MockClock};
use proptest::prelude::*;

const NS: Duration = Duration::from_nanos(1);

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What the listener heard: key, value, cause, in order.
type Log = Arc<Mutex<Vec<(u32, u64, RemovalCause)>>>;

fn listened(builder: CacheBuilder<u32, u64>) -> (Cache<u32, u64>, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let cache = builder
        .eviction_listener(move |k: Arc<u32>, v, c| sink.lock().unwrap().push((*k, v, c)))
        .build()
        .unwrap();
    (cache, log)
}

const CAUSES: [RemovalCause; 4] = [
    RemovalCause::Expired,
    RemovalCause::Explicit,
    RemovalCause::Replaced,
    RemovalCause::Size,
];

/// `stats()` counts each cause exactly as often as the listener heard it.
fn assert_stats_match(cache: &Cache<u32, u64>, log: &Log) {
    let stats = cache.stats();
    let log = log.lock().unwrap();
    for cause in CAUSES {
        let heard = log.iter().filter(|e| e.2 == cause).count() as u64;
        assert_eq!(
            stats.removals(cause),
            heard,
            "{cause:?}: stats against listener"
        );
    }
    let evicted = log.iter().filter(|e| e.2.was_evicted()).count() as u64;
    assert_eq!(stats.evictions(), evicted);
}

// ---------------------------------------------------------------------------
// Deadline boundaries: deadline - 1 ns, deadline, deadline + 1 ns.
// ---------------------------------------------------------------------------

/// How a read looks at the key.
#[derive(Clone, Copy, Debug)]
enum Reader {
    Get,
    Peek,
    Contains,
    Iter,
    GetWith,
}

const READERS: [Reader; 5] = [
    Reader::Get,
    Reader::Peek,
    Reader::Contains,
    Reader::Iter,
    Reader::GetWith,
];

/// True if `reader` found key 1 holding `old` (the value written before).
fn reader_sees(cache: &Cache<u32, u64>, reader: Reader, old: u64) -> bool {
    match reader {
        Reader::Get => cache.get(&1) == Some(old),
        Reader::Peek => cache.peek(&1) == Some(old),
        Reader::Contains => cache.contains_key(&1),
        Reader::Iter => cache.iter().any(|(k, v)| k == 1 && v == old),
        Reader::GetWith => {
            let v = cache.get_with(1, || old + 1);
            assert!(v == old || v == old + 1);
            v == old
        }
    }
}

/// One way of giving key 1 a deadline `life` after the write.
#[derive(Clone, Copy, Debug)]
enum Setup {
    /// `time_to_live(life)`.
    Ttl,
    /// `time_to_idle(life)`, never read.
    Tti,
    /// `time_to_live(life)` and a longer `time_to_idle`.
    TtlUnderTti,
    /// `time_to_idle(life)` and a longer `time_to_live`.
    TtiUnderTtl,
    /// `insert_with_ttl(life)` on a cache without expiry.
    PerEntry,
    /// `insert_with_ttl(life)` on a cache whose TTL is longer.
    PerEntryShorter,
    /// `insert_with_ttl(life)` on a cache whose TTL is shorter.
    PerEntryLonger,
    /// An `Expiry` whose create hook answers `life`.
    Hook,
    /// `time_to_live(life)` with jitter, the entry written with
    /// `insert_with_ttl(life)`: kept exact.
    PerEntryJittered,
}

const SETUPS: [Setup; 9] = [
    Setup::Ttl,
    Setup::Tti,
    Setup::TtlUnderTti,
    Setup::TtiUnderTtl,
    Setup::PerEntry,
    Setup::PerEntryShorter,
    Setup::PerEntryLonger,
    Setup::Hook,
    Setup::PerEntryJittered,
];

/// Lives for a fixed time from creation; later hooks keep the deadline.
struct Fixed(Duration);

impl<K, V> Expiry<K, V> for Fixed {
    fn expire_after_create(&self, _: &K, _: &V) -> Option<Duration> {
        Some(self.0)
    }
}

/// A cache on `clock` whose key 1, written now, has a deadline `life` away.
fn setup(setup: Setup, clock: &MockClock, life: Duration) -> (Cache<u32, u64>, Log) {
    let b = Cache::builder().clock(clock.clone());
    let longer = life * 3 + secs(1);
    let shorter = life / 2 + NS;
    let (cache, log) = match setup {
        Setup::Ttl => listened(b.time_to_live(life)),
        Setup::Tti => listened(b.time_to_idle(life)),
        Setup::TtlUnderTti => listened(b.time_to_live(life).time_to_idle(longer)),
        Setup::TtiUnderTtl => listened(b.time_to_idle(life).time_to_live(longer)),
        Setup::PerEntry => listened(b),
        Setup::PerEntryShorter => listened(b.time_to_live(longer)),
        Setup::PerEntryLonger => listened(b.time_to_live(shorter)),
        Setup::Hook => listened(b.expire_after(Fixed(life))),
        Setup::PerEntryJittered => listened(b.time_to_live(life).ttl_jitter(0.9)),
    };
    match setup {
        Setup::PerEntry
        | Setup::PerEntryShorter
        | Setup::PerEntryLonger
        | Setup::PerEntryJittered => cache.insert_with_ttl(1, 10, life),
        _ => cache.insert(1, 10),
    }
    (cache, log)
}

/// Key 1 is seen by every reader strictly before its deadline and by none
/// at or after it, reaped or not; `run_pending_tasks` reports it once, as
/// `Expired`, and only once the deadline has come.
fn check_boundaries(which: Setup, start: Duration, life: Duration) {
    for reader in READERS {
        for offset in [-1i64, 0, 1] {
            for reap in [false, true] {
                let clock = MockClock::new();
                clock.advance(start);
                let (cache, log) = setup(which, &clock, life);
                let to = life.as_nanos() as i64 + offset;
                if to < 0 {
                    continue;
                }
                clock.advance(Duration::from_nanos(to as u64));
                if reap {
                    cache.run_pending_tasks();
                    let heard = log.lock().unwrap().clone();
                    if offset < 0 {
                        assert!(heard.is_empty(), "{which:?} reaped early: {heard:?}");
                    } else {
                        assert_eq!(heard, [(1, 10, RemovalCause::Expired)], "{which:?}");
                    }
                }
                let seen = reader_sees(&cache, reader, 10);
                assert_eq!(
                    seen,
                    offset < 0,
                    "{which:?} {reader:?} life {life:?} at deadline{offset:+} ns, reaped: {reap}"
                );
                cache.run_pending_tasks();
                let heard = log.lock().unwrap().clone();
                let expired = heard
                    .iter()
                    .filter(|e| e.2 == RemovalCause::Expired)
                    .count();
                assert_eq!(
                    expired,
                    usize::from(offset >= 0),
                    "{which:?} {reader:?}: {heard:?}"
                );
                assert_stats_match(&cache, &log);
            }
        }
    }
}

#[test]
fn every_reader_sees_an_entry_until_its_deadline_and_never_at_it() {
    for which in SETUPS {
        check_boundaries(which, Duration::from_nanos(123_456_789), secs(10));
        check_boundaries(which, Duration::ZERO, NS);
        check_boundaries(which, secs(5), Duration::from_nanos(1_048_577));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn deadlines_hold_to_the_nanosecond(
        which in proptest::sample::select(SETUPS.to_vec()),
        start in 0u64..1 << 40,
        life in prop_oneof![1u64..5_000, 1u64..1 << 42],
    ) {
        check_boundaries(which, Duration::from_nanos(start), Duration::from_nanos(life));
    }
}

#[test]
fn a_zero_lifetime_expires_at_once() {
    let clock = MockClock::new();
    clock.advance(secs(3));
    let (cache, log) = listened(Cache::builder().clock(clock.clone()));
    cache.insert_with_ttl(1, 10, Duration::ZERO);
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.get(&1), None);
    let (hooked, hooked_log) = listened(
        Cache::builder()
            .clock(clock.clone())
            .expire_after(Fixed(Duration::ZERO)),
    );
    hooked.insert(1, 10);
    assert!(!hooked.contains_key(&1));
    cache.run_pending_tasks();
    hooked.run_pending_tasks();
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);
    assert_eq!(
        *hooked_log.lock().unwrap(),
        [(1, 10, RemovalCause::Expired)]
    );
}

#[test]
fn an_expired_read_is_a_miss_in_the_stats() {
    let clock = MockClock::new();
    let (cache, _log) = listened(Cache::builder().time_to_live(secs(1)).clock(clock.clone()));
    cache.insert(1, 10);
    assert_eq!(cache.get(&1), Some(10));
    clock.advance(secs(1));
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.peek(&1), None);
    let s = cache.stats();
    assert_eq!((s.hits(), s.misses()), (1, 1));
}

// ---------------------------------------------------------------------------
// Time to idle.
// ---------------------------------------------------------------------------

/// A read slides the idle deadline "in steps of about a millisecond": after
/// a read at `r` the deadline is within (r + tti - 2^20 ns, r + tti].
const SLIDE_STEP: Duration = Duration::from_nanos(1 << 20);

#[test]
fn only_get_slides_the_idle_deadline() {
    for reader in READERS {
        let clock = MockClock::new();
        let (cache, _log) = listened(Cache::builder().time_to_idle(secs(10)).clock(clock.clone()));
        cache.insert(1, 10);
        clock.advance(secs(6));
        assert!(reader_sees(&cache, reader, 10));
        clock.advance(secs(4) - NS); // 1 ns before the write's idle deadline
        assert!(cache.contains_key(&1));
        clock.advance(NS); // the write's idle deadline
        let slid = matches!(reader, Reader::Get | Reader::GetWith);
        assert_eq!(cache.peek(&1).is_some(), slid, "{reader:?}");
        if slid {
            // Read at 6 s: alive until 16 s (less one slide step), gone at 16 s.
            clock.advance(secs(6) - SLIDE_STEP - NS);
            assert_eq!(cache.peek(&1), Some(10));
            clock.advance(SLIDE_STEP);
            assert!(cache.contains_key(&1));
            clock.advance(NS);
            assert!(!cache.contains_key(&1));
            assert_eq!(cache.get(&1), None);
        }
    }
}

#[test]
fn an_expired_entry_is_not_revived_by_reads() {
    let clock = MockClock::new();
    let (cache, _log) = listened(Cache::builder().time_to_idle(secs(2)).clock(clock.clone()));
    cache.insert(1, 10);
    clock.advance(secs(2));
    assert_eq!(cache.get(&1), None);
    clock.advance(NS);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.iter().count(), 0);
}

/// A key whose `==` holds the thread that asks, while `HELD` is set on
/// it, until the test lets it go: a read of it is stopped after it read
/// the clock and took the shard lock, before it judged the entry.
#[derive(Debug)]
struct HeldKey(u32);

thread_local! {
    static HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The hold's two ends: where a held comparison announces itself, and
/// what it waits for.
type Hold = (Mutex<mpsc::Sender<()>>, Mutex<mpsc::Receiver<()>>);
static HOLD: OnceLock<Hold> = OnceLock::new();

impl std::hash::Hash for HeldKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for HeldKey {
    fn eq(&self, other: &HeldKey) -> bool {
        if HELD.with(std::cell::Cell::get) {
            let (entered, release) = HOLD.get().expect("set by the test");
            entered.lock().unwrap().send(()).unwrap();
            release.lock().unwrap().recv_timeout(secs(10)).unwrap();
        }
        self.0 == other.0
    }
}

impl Eq for HeldKey {}

#[test]
fn a_read_that_saw_an_idle_entry_live_never_revives_it_after_another_read_saw_it_expired() {
    // Reader A reads the clock at 9 s and is held before judging the
    // entry (due at 10 s). At 11 s reader B finds it expired. A then
    // finds it live at its 9 s and slides it: to 19 s, before the fix, so
    // later reads returned the entry B had seen expire.
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    HOLD.set((Mutex::new(entered_tx), Mutex::new(release_rx)))
        .expect("one test uses the hold");
    let clock = MockClock::new();
    let cache: Cache<HeldKey, u64> = Cache::builder()
        .time_to_idle(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(HeldKey(1), 10);
    clock.advance(secs(9));
    let reader = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            HELD.with(|h| h.set(true));
            cache.get(&HeldKey(1))
        })
    };
    entered.recv_timeout(secs(10)).expect("reader A is held");
    clock.advance(secs(2));
    assert_eq!(cache.get(&HeldKey(1)), None, "B at 11 s: expired");
    release.send(()).unwrap();
    assert_eq!(reader.join().unwrap(), Some(10), "A judged at its 9 s");
    assert_eq!(cache.get(&HeldKey(1)), None, "still expired at 11 s");
    assert!(!cache.contains_key(&HeldKey(1)));
    clock.advance(secs(5));
    assert_eq!(cache.get(&HeldKey(1)), None, "and at 16 s");
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0, "reaped");
}

#[test]
fn ttl_and_tti_together_take_the_earlier_deadline() {
    // TTI the earlier: no reads, gone at the idle deadline.
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .time_to_live(secs(10))
            .time_to_idle(secs(4))
            .clock(clock.clone()),
    );
    cache.insert(1, 10);
    clock.advance(secs(4) - NS);
    assert!(cache.contains_key(&1));
    clock.advance(NS);
    assert!(!cache.contains_key(&1));

    // Reads keep it idle-alive, but never past the TTL.
    cache.insert(2, 20); // t = 4 s, hard deadline 14 s
    for _ in 0..3 {
        clock.advance(secs(3));
        assert_eq!(cache.get(&2), Some(20));
    }
    clock.advance(secs(1) - NS); // 14 s - 1 ns
    assert_eq!(cache.get(&2), Some(20));
    clock.advance(NS); // 14 s, idle deadline would be 17 s
    assert_eq!(cache.peek(&2), None);
    assert_eq!(cache.get(&2), None);
}

#[test]
fn insert_with_ttl_overrides_the_cache_ttl_but_not_the_tti() {
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .time_to_live(secs(10))
            .time_to_idle(secs(5))
            .clock(clock.clone()),
    );
    cache.insert_with_ttl(1, 10, secs(100)); // longer than the cache's TTL
    cache.insert_with_ttl(2, 20, secs(3)); // shorter than both
    cache.insert_with_ttl(3, 30, secs(100)); // never read: the TTI applies
    clock.advance(secs(3) - NS);
    assert_eq!(cache.get(&2), Some(20));
    assert_eq!(cache.get(&1), Some(10));
    clock.advance(NS);
    assert_eq!(
        cache.get(&2),
        None,
        "its own TTL, though read and idle-alive"
    );
    for _ in 0..10 {
        clock.advance(secs(4));
        assert_eq!(
            cache.get(&1),
            Some(10),
            "past the cache's TTL, kept by reads"
        );
    }
    assert_eq!(cache.peek(&3), None, "idle for 5 s");
    // t = 43 s; idle-sliding stops at its own 100 s.
    for _ in 0..14 {
        clock.advance(secs(4));
        assert_eq!(cache.get(&1), Some(10));
    }
    clock.advance(secs(1) - NS); // 100 s - 1 ns
    assert!(cache.contains_key(&1));
    clock.advance(NS);
    assert!(!cache.contains_key(&1));
}

// ---------------------------------------------------------------------------
// ttl_jitter: what it spreads and what it leaves exact.
// ---------------------------------------------------------------------------

/// Deadlines, in ns after `from`, of keys `0..n`, found by stepping the clock
/// (the cache is only looked at with `peek`, which moves nothing).
fn deadlines(cache: &Cache<u32, u64>, clock: &MockClock, n: u32, step: Duration) -> Vec<u64> {
    let from = clock.elapsed();
    let mut found = vec![None; n as usize];
    let mut left = n;
    while left > 0 {
        for k in 0..n {
            if found[k as usize].is_none() && cache.peek(&k).is_none() {
                found[k as usize] = Some((clock.elapsed() - from).as_nanos() as u64);
                left -= 1;
            }
        }
        clock.advance(step);
        assert!(clock.elapsed() - from < secs(1_000_000), "never expired");
    }
    found.into_iter().map(Option::unwrap).collect()
}

/// Every deadline of keys `0..200`, found in steps of 100 ms and counted
/// from the clock's start (`elapsed`: the time the clock has run before),
/// is within 50..=150 s, to a step: still the first write's spread.
fn assert_deadlines_kept(
    cache: &Cache<u32, u64>,
    clock: &MockClock,
    elapsed: Duration,
    what: &str,
) {
    let step = Duration::from_millis(100);
    for d in deadlines(cache, clock, 200, step) {
        let at = elapsed.as_nanos() as u64 + d;
        assert!(
            (secs(50).as_nanos() as u64..=(secs(150) + step).as_nanos() as u64).contains(&at),
            "{what} moved to {at} ns"
        );
    }
}

/// Every deadline is in `life·(1 ± jitter)` (to a step), and they are spread.
fn assert_spread(found: &[u64], life: Duration, jitter: f64, step: Duration) {
    let life = life.as_nanos() as f64;
    let step = step.as_nanos() as f64;
    let (lo, hi) = (life * (1.0 - jitter), life * (1.0 + jitter) + step);
    for &d in found {
        assert!(
            (lo..=hi).contains(&(d as f64)),
            "deadline {d} outside {lo}..={hi}"
        );
    }
    let distinct: HashSet<_> = found.iter().collect();
    assert!(distinct.len() > found.len() / 2, "not spread: {found:?}");
    let (min, max) = (*found.iter().min().unwrap(), *found.iter().max().unwrap());
    let width = life * 2.0 * jitter;
    assert!(
        (max - min) as f64 > width * 0.6,
        "spread {min}..{max} covers too little of {lo}..{hi}"
    );
}

#[test]
fn jitter_spreads_the_cache_ttl_within_its_bounds() {
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .time_to_live(secs(100))
            .ttl_jitter(0.25)
            .clock(clock.clone()),
    );
    for k in 0..200 {
        cache.insert(k, 1);
    }
    let step = Duration::from_millis(250);
    let found = deadlines(&cache, &clock, 200, step);
    assert_spread(&found, secs(100), 0.25, step);
}

#[test]
fn jitter_leaves_insert_with_ttl_and_time_to_idle_exact() {
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .time_to_live(secs(100))
            .time_to_idle(secs(40))
            .ttl_jitter(0.5)
            .clock(clock.clone()),
    );
    for k in 0..100 {
        cache.insert_with_ttl(k, 1, secs(30)); // under the TTI: its own TTL
    }
    for k in 100..200 {
        cache.insert(k, 2); // TTL spread 50..150 s, TTI 40 s exact
    }
    clock.advance(secs(30) - NS);
    assert_eq!(cache.iter().count(), 200);
    clock.advance(NS);
    assert_eq!(
        cache.iter().count(),
        100,
        "insert_with_ttl's 30 s spread by the jitter"
    );
    clock.advance(secs(10) - NS);
    assert_eq!(cache.iter().count(), 100);
    clock.advance(NS);
    assert_eq!(
        cache.iter().count(),
        0,
        "the 40 s idle time spread by the jitter"
    );

    // The idle deadline slid by a read is exact too (under a time to live
    // long enough, spread to 500 to 1,500 s, to stay out of the way; with
    // no time to live the builder refuses a jitter).
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .time_to_live(secs(1_000))
            .time_to_idle(secs(40))
            .ttl_jitter(0.5)
            .clock(clock.clone()),
    );
    for k in 0..100 {
        cache.insert(k, 1);
    }
    clock.advance(secs(20));
    for k in 0..100 {
        assert_eq!(cache.get(&k), Some(1));
    }
    clock.advance(secs(40) - SLIDE_STEP - NS);
    assert_eq!(cache.iter().count(), 100);
    clock.advance(SLIDE_STEP + NS);
    assert_eq!(cache.iter().count(), 0);
}

/// What the read and update hooks were given, hook by hook.
type Seen = Arc<Mutex<Vec<(&'static str, Option<Duration>)>>>;

/// Answers with a fixed time from each hook it is given; `None` is the
/// trait's default for read and update.
struct Hooks {
    create: Option<Duration>,
    read: Option<Option<Duration>>,
    update: Option<Option<Duration>>,
    /// The `remaining` each read or update hook was given, in order.
    seen: Seen,
}

impl Hooks {
    fn new(create: Option<Duration>) -> Self {
        Hooks {
            create,
            read: None,
            update: None,
            seen: Arc::default(),
        }
    }
}

impl Expiry<u32, u64> for Hooks {
    fn expire_after_create(&self, _: &u32, _: &u64) -> Option<Duration> {
        self.create
    }

    fn expire_after_read(&self, _: &u32, _: &u64, remaining: Option<Duration>) -> Option<Duration> {
        self.seen.lock().unwrap().push(("read", remaining));
        self.read.unwrap_or(remaining)
    }

    fn expire_after_update(
        &self,
        _: &u32,
        _: &u64,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        self.seen.lock().unwrap().push(("update", remaining));
        self.update.unwrap_or(remaining)
    }
}

#[test]
fn jitter_spreads_every_hook_answer() {
    let step = Duration::from_millis(250);
    // One hook answers 100 s, the others keep what they are given (a read
    // or an update starts from an entry created to live for ever). A case:
    // the hook's name, how to make it answer, and what follows each key's
    // first insert.
    type Case = (&'static str, fn(&mut Hooks), fn(&Cache<u32, u64>, u32));
    let cases: [Case; 3] = [
        ("create", |_| {}, |_, _| {}),
        (
            "read",
            |h| h.read = Some(Some(secs(100))),
            |c, k| assert_eq!(c.get(&k), Some(1)),
        ),
        (
            "update",
            |h| h.update = Some(Some(secs(100))),
            |c, k| c.insert(k, 2),
        ),
    ];
    for (hook, arm, then) in cases {
        let clock = MockClock::new();
        let created = if hook == "create" {
            Some(secs(100))
        } else {
            None
        };
        let mut hooks = Hooks::new(created);
        arm(&mut hooks);
        let (cache, _) = listened(
            Cache::builder()
                .expire_after(hooks)
                .ttl_jitter(0.25)
                .clock(clock.clone()),
        );
        for k in 0..200 {
            cache.insert(k, 1);
            then(&cache, k);
        }
        assert_spread(&deadlines(&cache, &clock, 200, step), secs(100), 0.25, step);
    }
}

#[test]
fn the_default_update_hook_keeps_the_deadline_unspread() {
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .expire_after(Fixed(secs(100)))
            .ttl_jitter(0.5)
            .clock(clock.clone()),
    );
    for k in 0..200 {
        cache.insert(k, 1); // deadlines in 50..150 s
    }
    clock.advance(secs(10));
    for k in 0..200 {
        cache.insert(k, 2); // the default update hook: deadlines kept
    }
    // Spread again around the 40..140 s left, some would fall outside.
    assert_deadlines_kept(&cache, &clock, secs(10), "an updated entry's deadline");
}

// ---------------------------------------------------------------------------
// Expiry hooks.
// ---------------------------------------------------------------------------

#[test]
fn create_hook_none_never_expires_and_some_is_exact() {
    struct ByValue;
    impl Expiry<u32, u64> for ByValue {
        fn expire_after_create(&self, _: &u32, v: &u64) -> Option<Duration> {
            (*v > 0).then(|| Duration::from_secs(*v))
        }
    }
    let clock = MockClock::new();
    let (cache, _) = listened(Cache::builder().expire_after(ByValue).clock(clock.clone()));
    cache.insert(0, 0);
    cache.insert(1, 5);
    clock.advance(secs(5) - NS);
    assert!(cache.contains_key(&1));
    clock.advance(NS);
    assert!(!cache.contains_key(&1));
    clock.advance(secs(10 * 365 * 24 * 3600));
    cache.run_pending_tasks();
    assert_eq!(cache.get(&0), Some(0), "None: never expires");
}

#[test]
fn default_read_hook_keeps_the_deadline_and_a_read_hook_moves_it() {
    // Default read hook: reads change nothing.
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .expire_after(Fixed(secs(10)))
            .clock(clock.clone()),
    );
    cache.insert(1, 10);
    for _ in 0..9 {
        clock.advance(secs(1));
        assert_eq!(cache.get(&1), Some(10));
    }
    clock.advance(secs(1));
    assert_eq!(cache.get(&1), None);

    // A read hook that answers 10 s: each get moves the deadline; peek,
    // contains_key and iter do not call it.
    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(10)));
    hooks.read = Some(Some(secs(10)));
    let seen = hooks.seen.clone();
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    clock.advance(secs(7));
    assert_eq!(cache.get(&1), Some(10));
    assert_eq!(*seen.lock().unwrap(), [("read", Some(secs(3)))]);
    assert_eq!(cache.peek(&1), Some(10));
    assert!(cache.contains_key(&1));
    assert_eq!(cache.iter().count(), 1);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only get calls the read hook"
    );
    clock.advance(secs(10) - NS);
    assert!(cache.contains_key(&1));
    clock.advance(NS);
    assert!(!cache.contains_key(&1));

    // A read hook that shortens the deadline, and one that removes it.
    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(100)));
    hooks.read = Some(Some(secs(1)));
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    assert_eq!(cache.get(&1), Some(10));
    clock.advance(secs(1));
    assert_eq!(cache.peek(&1), None, "shortened to 1 s");

    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(1)));
    hooks.read = Some(None);
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    assert_eq!(cache.get(&1), Some(10));
    clock.advance(secs(1_000_000));
    assert_eq!(cache.peek(&1), Some(10), "a read hook's None: never");
}

#[test]
fn a_read_hook_moves_a_deadline_given_by_insert_with_ttl() {
    let clock = MockClock::new();
    let mut hooks = Hooks::new(None);
    hooks.read = Some(Some(secs(50)));
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert_with_ttl(1, 10, secs(5));
    clock.advance(secs(4));
    assert_eq!(cache.get(&1), Some(10));
    clock.advance(secs(50) - NS);
    assert!(cache.contains_key(&1));
    clock.advance(NS);
    assert!(!cache.contains_key(&1));
}

#[test]
fn update_hooks_default_keeps_and_an_answer_replaces_the_deadline() {
    // Default: the replaced value's deadline stays.
    let clock = MockClock::new();
    let hooks = Hooks::new(Some(secs(10)));
    let seen = hooks.seen.clone();
    let (cache, log) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    clock.advance(secs(6));
    cache.insert(1, 11);
    assert_eq!(*seen.lock().unwrap(), [("update", Some(secs(4)))]);
    clock.advance(secs(4) - NS);
    assert_eq!(cache.peek(&1), Some(11));
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);
    cache.run_pending_tasks();
    assert_eq!(
        *log.lock().unwrap(),
        [
            (1, 10, RemovalCause::Replaced),
            (1, 11, RemovalCause::Expired)
        ]
    );

    // An answer: from the update on.
    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(10)));
    hooks.update = Some(Some(secs(20)));
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    clock.advance(secs(6));
    cache.insert(1, 11);
    clock.advance(secs(20) - NS);
    assert_eq!(cache.peek(&1), Some(11));
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);

    // None from the update hook: never.
    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(10)));
    hooks.update = Some(None);
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    cache.insert(1, 11);
    clock.advance(secs(1_000_000));
    assert_eq!(cache.peek(&1), Some(11));
}

#[test]
fn a_write_over_an_expired_entry_is_a_create_not_an_update() {
    // With the default update hook, treating it as an update would keep the
    // passed deadline and the new value would be born expired.
    let clock = MockClock::new();
    let hooks = Hooks::new(Some(secs(10)));
    let seen = hooks.seen.clone();
    let (cache, log) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    clock.advance(secs(10)); // expired, not reaped
    cache.insert(1, 11);
    assert_eq!(cache.get(&1), Some(11));
    clock.advance(secs(10) - NS);
    assert_eq!(cache.peek(&1), Some(11));
    assert!(
        seen.lock().unwrap().iter().all(|e| e.0 != "update"),
        "the update hook was asked about an expired entry: {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);

    // The same through get_with.
    clock.advance(secs(10));
    assert_eq!(cache.get_with(1, || 12), 12);
    clock.advance(secs(10) - NS);
    assert_eq!(cache.peek(&1), Some(12));
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);
    assert!(seen.lock().unwrap().iter().all(|e| e.0 != "update"));
}

/// Creates for 10 s and updates for 100 s; a hook asked about value 2
/// says it has begun and waits to be let go before it answers.
struct Held {
    begun: Mutex<mpsc::Sender<&'static str>>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl Held {
    /// A hook, where it announces each hold, and what lets a hold go.
    fn new() -> (Held, mpsc::Receiver<&'static str>, mpsc::Sender<()>) {
        let (begun, hook_begun) = mpsc::channel();
        let (go, hook_go) = mpsc::channel();
        let held = Held {
            begun: Mutex::new(begun),
            go: Mutex::new(hook_go),
        };
        (held, hook_begun, go)
    }

    fn answer(&self, hook: &'static str, value: u64, life: Duration) -> Option<Duration> {
        if value == 2 {
            self.begun.lock().unwrap().send(hook).unwrap();
            self.go.lock().unwrap().recv_timeout(secs(10)).unwrap();
        }
        Some(life)
    }
}

impl Expiry<u32, u64> for Held {
    fn expire_after_create(&self, _: &u32, value: &u64) -> Option<Duration> {
        self.answer("create", *value, secs(10))
    }

    fn expire_after_update(&self, _: &u32, value: &u64, _: Option<Duration>) -> Option<Duration> {
        self.answer("update", *value, secs(100))
    }
}

#[test]
fn a_write_is_timed_as_what_it_turns_out_to_be_when_the_key_changes_under_its_hook() {
    type Write = fn(&Cache<u32, u64>);
    // Key 1 before the insert of 2, the write of key 1 made while the hook
    // for 2 runs, and the hook that must decide 2's deadline, with its answer.
    let cases: [(bool, Write, &str, Duration); 2] = [
        (
            true,
            |c| assert_eq!(c.remove(&1), Some(1)),
            "create",
            secs(10),
        ),
        (false, |c| c.insert(1, 1), "update", secs(100)),
    ];
    for (cached, write, decides, life) in cases {
        let clock = MockClock::new();
        let (held, hook_begun, go) = Held::new();
        let (cache, log) = listened(Cache::builder().expire_after(held).clock(clock.clone()));
        if cached {
            cache.insert(1, 1);
        }
        let writer = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.insert(1, 2))
        };
        let first = hook_begun.recv_timeout(secs(10)).unwrap();
        write(&cache);
        // The hook asked first answers for a key that has changed since; a
        // hook asked again is let go at once.
        for _ in 0..2 {
            go.send(()).unwrap();
        }
        writer.join().unwrap();
        let asked: Vec<&str> = std::iter::once(first)
            .chain(hook_begun.try_iter())
            .collect();
        clock.advance(life - NS);
        assert_eq!(cache.peek(&1), Some(2), "{decides}: hooks asked {asked:?}");
        clock.advance(NS);
        assert_eq!(cache.peek(&1), None, "{decides}: hooks asked {asked:?}");
        assert_eq!(asked.last(), Some(&decides), "hooks asked: {asked:?}");
        cache.run_pending_tasks();
        assert_stats_match(&cache, &log);
    }
}

#[test]
fn a_write_whose_entry_expires_while_its_update_hook_runs_is_a_create() {
    // Key 1's entry is due at 10 s; a write at 9 s asks the update hook,
    // held until 11 s, when a read has already found the entry expired.
    // A write over an expired entry is a create: the create hook decides
    // (10 s from the write), and the listener hears the old value expired.
    let clock = MockClock::new();
    let (held, hook_begun, go) = Held::new();
    let (cache, log) = listened(Cache::builder().expire_after(held).clock(clock.clone()));
    cache.insert(1, 1);
    clock.advance(secs(9));
    let writer = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.insert(1, 2))
    };
    let first = hook_begun.recv_timeout(secs(10)).unwrap();
    clock.advance(secs(2));
    assert_eq!(cache.peek(&1), None, "expired at 10 s");
    for _ in 0..2 {
        go.send(()).unwrap();
    }
    writer.join().unwrap();
    let asked: Vec<&str> = std::iter::once(first)
        .chain(hook_begun.try_iter())
        .collect();
    assert_eq!(asked, ["update", "create"]);
    assert_eq!(
        *log.lock().unwrap(),
        [(1, 1, RemovalCause::Expired)],
        "what the listener heard"
    );
    clock.advance(secs(10) - NS);
    assert_eq!(cache.peek(&1), Some(2), "10 s from the write, at 11 s");
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);
    cache.run_pending_tasks();
    assert_stats_match(&cache, &log);
}

// ---------------------------------------------------------------------------
// The eviction listener and the stats.
// ---------------------------------------------------------------------------

#[test]
fn each_explicit_path_reports_explicit_or_expired() {
    let clock = MockClock::new();
    let (cache, log) = listened(Cache::builder().time_to_live(secs(10)).clock(clock.clone()));
    for k in 0..6 {
        cache.insert(k, u64::from(k));
    }
    clock.advance(secs(5));
    for k in 10..16 {
        cache.insert(k, u64::from(k)); // live until 15 s
    }
    clock.advance(secs(5)); // 0..6 expired, unreaped; 10..16 live

    assert_eq!(cache.remove(&0), None, "remove returns only a live value");
    assert_eq!(cache.remove(&10), Some(10));
    cache.invalidate(&1);
    cache.invalidate(&11);
    let tested = Arc::new(Mutex::new(Vec::new()));
    let t = tested.clone();
    cache.invalidate_entries_if(move |k, _| {
        t.lock().unwrap().push(*k);
        *k == 2 || *k == 12
    });
    let tested = tested.lock().unwrap().clone();
    assert!(
        tested.iter().all(|k| *k >= 10),
        "the predicate was given expired entries: {tested:?}"
    );
    cache.invalidate_all();
    let heard: HashMap<u32, (u64, RemovalCause)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|&(k, v, c)| (k, (v, c)))
        .collect();
    assert_eq!(log.lock().unwrap().len(), 12, "{:?}", log.lock().unwrap());
    for k in 0..6 {
        assert_eq!(heard[&k], (u64::from(k), RemovalCause::Expired), "key {k}");
    }
    for k in 10..16 {
        assert_eq!(heard[&k], (u64::from(k), RemovalCause::Explicit), "key {k}");
    }
    cache.run_pending_tasks();
    assert_eq!(log.lock().unwrap().len(), 12);
    assert_eq!(cache.entry_count(), 0);
    assert_stats_match(&cache, &log);
}

#[test]
fn replacing_reports_replaced_when_live_and_expired_when_not() {
    for via_get_with in [false, true] {
        let clock = MockClock::new();
        let (cache, log) = listened(Cache::builder().time_to_live(secs(10)).clock(clock.clone()));
        cache.insert(1, 10);
        cache.insert(2, 20);
        clock.advance(secs(10) - NS);
        cache.insert(1, 11); // live: Replaced
        clock.advance(NS); // 2 has expired, unreaped
        if via_get_with {
            assert_eq!(cache.get_with(2, || 21), 21);
        } else {
            cache.insert(2, 21);
        }
        assert_eq!(cache.get(&2), Some(21));
        cache.run_pending_tasks();
        assert_eq!(
            *log.lock().unwrap(),
            [
                (1, 10, RemovalCause::Replaced),
                (2, 20, RemovalCause::Expired)
            ],
            "get_with: {via_get_with}"
        );
        assert_stats_match(&cache, &log);
    }
}

#[test]
fn a_refused_insert_is_a_size_removal_of_the_new_entry() {
    let clock = MockClock::new();
    let (cache, log) = listened(
        Cache::builder()
            .max_capacity(4)
            .num_shards(1)
            .clock(clock.clone()),
    );
    // Make four keys frequent, then offer many one-off keys: the policy
    // refuses some of them (or evicts others), each heard once as Size.
    for k in 0..4 {
        cache.insert(k, u64::from(k));
    }
    for _ in 0..20 {
        for k in 0..4 {
            assert_eq!(cache.get(&k), Some(u64::from(k)));
        }
    }
    for k in 100..200 {
        cache.insert(k, u64::from(k));
        assert!(cache.entry_count() <= 4);
        let heard: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.0 == k)
            .copied()
            .collect();
        if cache.peek(&k).is_none() {
            // Refused at once (or admitted and evicted by the same insert).
            assert_eq!(
                heard,
                [(k, u64::from(k), RemovalCause::Size)],
                "refused, heard once as Size"
            );
        } else {
            assert!(heard.is_empty(), "{k} cached, yet heard of: {heard:?}");
        }
    }
    let heard = log.lock().unwrap().clone();
    assert!(heard.iter().all(|e| e.2 == RemovalCause::Size), "{heard:?}");
    assert_eq!(heard.len(), 100, "104 entries into 4 places: {heard:?}");
    assert_stats_match(&cache, &log);

    // Capacity 0 keeps nothing: every insert is refused.
    let (empty, empty_log) = listened(Cache::builder().max_capacity(0));
    for k in 0..5 {
        empty.insert(k, u64::from(k));
        assert_eq!(empty.peek(&k), None);
    }
    assert_eq!(empty.entry_count(), 0);
    assert_eq!(
        *empty_log.lock().unwrap(),
        (0..5)
            .map(|k| (k, u64::from(k), RemovalCause::Size))
            .collect::<Vec<_>>()
    );
    assert_stats_match(&empty, &empty_log);
}

#[test]
fn an_entry_heavier_than_the_capacity_is_refused_and_reported_once() {
    let (cache, log) = listened(
        Cache::builder()
            .max_capacity(100)
            .num_shards(1)
            .weigher(|_: &u32, v: &u64| *v as u32),
    );
    cache.insert(1, 60);
    cache.insert(2, 101); // heavier than the whole cache
    assert_eq!(cache.peek(&2), None);
    assert_eq!(cache.peek(&1), Some(60), "a refused entry evicts nothing");
    assert_eq!(cache.weighted_size(), 60);
    assert_eq!(*log.lock().unwrap(), [(2, 101, RemovalCause::Size)]);

    // Over a live value of the same key: every value is heard of exactly once
    // when it leaves, and a value still readable was not heard of.
    cache.insert(1, 150);
    let heard = log.lock().unwrap().clone();
    assert!(heard.contains(&(1, 150, RemovalCause::Size)), "{heard:?}");
    let old_heard = heard.iter().filter(|e| e.1 == 60).count();
    match cache.peek(&1) {
        Some(60) => assert_eq!(old_heard, 0, "still cached, yet reported: {heard:?}"),
        None => assert_eq!(old_heard, 1, "gone without a notification: {heard:?}"),
        other => panic!("key 1 holds {other:?}"),
    }
    assert!(cache.weighted_size() <= 100);
    assert_stats_match(&cache, &log);

    // Heavier than its shard's share (100 / 4), though not than the cache.
    let (cache, log) = listened(
        Cache::builder()
            .max_capacity(100)
            .num_shards(4)
            .weigher(|_: &u32, v: &u64| *v as u32),
    );
    cache.insert(1, 26);
    assert_eq!(cache.peek(&1), None);
    assert_eq!(*log.lock().unwrap(), [(1, 26, RemovalCause::Size)]);
    cache.insert(2, 25);
    assert_eq!(cache.peek(&2), Some(25));
}

#[test]
fn zero_weight_entries_take_no_room() {
    let (cache, log) = listened(
        Cache::builder()
            .max_capacity(10)
            .num_shards(1)
            .weigher(|_: &u32, v: &u64| *v as u32),
    );
    for k in 0..1_000 {
        cache.insert(k, 0);
        assert_eq!(cache.weighted_size(), 0);
    }
    assert_eq!(
        cache.entry_count(),
        1_000,
        "weightless entries are not limited"
    );
    assert!(log.lock().unwrap().is_empty());
    for k in 1_000..1_020 {
        cache.insert(k, 1);
        assert!(cache.weighted_size() <= 10);
    }
    assert_stats_match(&cache, &log);
}

#[test]
fn the_listener_may_call_back_into_the_cache() {
    let clock = MockClock::new();
    let handle: Arc<OnceLock<Weak<Cache<u32, u64>>>> = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    let (h, c) = (handle.clone(), calls.clone());
    let cache = Arc::new(
        Cache::builder()
            .max_capacity(8)
            .num_shards(1)
            .time_to_live(secs(10))
            .clock(clock.clone())
            .eviction_listener(move |k: Arc<u32>, v: u64, cause| {
                c.fetch_add(1, Ordering::SeqCst);
                let Some(cache) = h.get().and_then(Weak::upgrade) else {
                    return;
                };
                // Read, write, remove and list from inside the listener.
                let _ = cache.get(&k);
                let _ = cache.iter().count();
                cache.invalidate(&(*k + 1_000_000));
                if cause == RemovalCause::Expired && *k < 1_000 {
                    cache.insert(*k + 1_000, v);
                }
                cache.run_pending_tasks();
            })
            .build()
            .unwrap(),
    );
    handle.set(Arc::downgrade(&cache)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let cache = cache.clone();
        let clock = clock.clone();
        std::thread::spawn(move || {
            for k in 0..40 {
                cache.insert(k, u64::from(k));
                cache.insert(k, u64::from(k) + 1);
            }
            clock.advance(secs(10));
            cache.run_pending_tasks();
            cache.invalidate_all();
            tx.send(()).unwrap();
        })
    };
    rx.recv_timeout(Duration::from_secs(60))
        .expect("a listener calling back into the cache deadlocked it");
    worker.join().unwrap();
    assert!(calls.load(Ordering::SeqCst) >= 80);
}

// ---------------------------------------------------------------------------
// A model: every value inserted is heard of exactly once, with the cause
// the documentation gives, and `stats()` agrees.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Insert(u32),
    InsertTtl(u32, u16),
    Get(u32),
    GetWith(u32),
    Peek(u32),
    Remove(u32),
    Invalidate(u32),
    InvalidateIf(u32),
    InvalidateAll,
    Iter,
    Advance(u16),
    RunPending,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u32..12;
    prop_oneof![
        6 => key.clone().prop_map(Op::Insert),
        3 => (key.clone(), 0u16..30).prop_map(|(k, t)| Op::InsertTtl(k, t)),
        4 => key.clone().prop_map(Op::Get),
        2 => key.clone().prop_map(Op::GetWith),
        2 => key.clone().prop_map(Op::Peek),
        2 => key.clone().prop_map(Op::Remove),
        1 => key.clone().prop_map(Op::Invalidate),
        1 => (2u32..5).prop_map(Op::InvalidateIf),
        1 => Just(Op::InvalidateAll),
        1 => Just(Op::Iter),
        4 => (0u16..25).prop_map(Op::Advance),
        2 => Just(Op::RunPending),
    ]
}

/// Runs `ops` (time in units of `unit` ns, so deadlines fall on and beside
/// each other) on an unbounded cache with an optional TTL, against a model
/// of deadlines; checks each listener call's cause, that every value is
/// heard of once, and stats.
fn run_model(ttl: Option<u16>, unit: u64, ops: Vec<Op>) {
    let clock = MockClock::new();
    let mut b = Cache::builder().clock(clock.clone()).num_shards(2);
    if let Some(t) = ttl {
        b = b.time_to_live(Duration::from_nanos(u64::from(t) * unit));
    }
    let (cache, log) = listened(b);
    // key -> (value, deadline in ns)
    let mut model: HashMap<u32, (u64, u64)> = HashMap::new();
    // value -> the cause expected for it, once it is heard of
    let mut expect: HashMap<u64, RemovalCause> = HashMap::new();
    let mut next = 0u64;
    let now = |c: &MockClock| c.elapsed().as_nanos() as u64;
    let live =
        |m: &HashMap<u32, (u64, u64)>, k: u32, t: u64| m.get(&k).filter(|e| t < e.1).map(|e| e.0);
    // A value leaves: expired if its deadline passed, else for `cause`.
    let leave = |m: &mut HashMap<u32, (u64, u64)>,
                 e: &mut HashMap<u64, RemovalCause>,
                 k: u32,
                 t: u64,
                 cause: RemovalCause| {
        if let Some((v, d)) = m.remove(&k) {
            e.insert(v, if t >= d { RemovalCause::Expired } else { cause });
        }
    };
    let cache_deadline = |t: u64| ttl.map_or(u64::MAX, |x| t + u64::from(x) * unit);
    for op in ops {
        let t = now(&clock);
        match op.clone() {
            Op::Insert(k) | Op::InsertTtl(k, _) => {
                next += 1;
                leave(&mut model, &mut expect, k, t, RemovalCause::Replaced);
                let d = match op {
                    Op::InsertTtl(_, ttl) => {
                        cache.insert_with_ttl(k, next, Duration::from_nanos(u64::from(ttl) * unit));
                        t + u64::from(ttl) * unit
                    }
                    _ => {
                        cache.insert(k, next);
                        cache_deadline(t)
                    }
                };
                model.insert(k, (next, d));
            }
            Op::Get(k) => assert_eq!(cache.get(&k), live(&model, k, t), "get {k} at {t}"),
            Op::Peek(k) => assert_eq!(cache.peek(&k), live(&model, k, t), "peek {k} at {t}"),
            Op::GetWith(k) => {
                next += 1;
                let got = cache.get_with(k, || next);
                match live(&model, k, t) {
                    Some(v) => assert_eq!(got, v),
                    None => {
                        assert_eq!(got, next);
                        leave(&mut model, &mut expect, k, t, RemovalCause::Replaced);
                        model.insert(k, (next, cache_deadline(t)));
                    }
                }
            }
            Op::Remove(k) | Op::Invalidate(k) => {
                let want = live(&model, k, t);
                leave(&mut model, &mut expect, k, t, RemovalCause::Explicit);
                if matches!(op, Op::Remove(_)) {
                    assert_eq!(cache.remove(&k), want, "remove {k} at {t}");
                } else {
                    cache.invalidate(&k);
                }
            }
            Op::InvalidateIf(m) => {
                cache.invalidate_entries_if(move |_, v| v % u64::from(m) == 0);
                let gone: Vec<u32> = model
                    .iter()
                    .filter(|(_, (v, d))| t < *d && v % u64::from(m) == 0)
                    .map(|(k, _)| *k)
                    .collect();
                for k in gone {
                    leave(&mut model, &mut expect, k, t, RemovalCause::Explicit);
                }
            }
            Op::InvalidateAll => {
                cache.invalidate_all();
                let keys: Vec<u32> = model.keys().copied().collect();
                for k in keys {
                    leave(&mut model, &mut expect, k, t, RemovalCause::Explicit);
                }
            }
            Op::Iter => {
                let mut got: Vec<(u32, u64)> = cache.iter().collect();
                got.sort_unstable();
                let mut want: Vec<(u32, u64)> = model
                    .iter()
                    .filter(|(_, (_, d))| t < *d)
                    .map(|(k, (v, _))| (*k, *v))
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "iter at {t}");
            }
            Op::Advance(n) => clock.advance(Duration::from_nanos(u64::from(n) * unit)),
            Op::RunPending => {
                cache.run_pending_tasks();
                let gone: Vec<u32> = model
                    .iter()
                    .filter(|(_, (_, d))| t >= *d)
                    .map(|(k, _)| *k)
                    .collect();
                for k in gone {
                    leave(&mut model, &mut expect, k, t, RemovalCause::Expired);
                }
            }
        }
        // Whatever the listener has heard of must have left the model, with
        // the cause expected; expired entries the cache reaped on its own
        // (a write meeting them) are still in the model: check them as
        // expired.
        let heard = log.lock().unwrap().clone();
        let mut seen = HashSet::new();
        for (k, v, cause) in &heard {
            assert!(seen.insert(*v), "value {v} heard of twice: {heard:?}");
            match expect.get(v) {
                Some(c) => assert_eq!(cause, c, "value {v} of key {k}: {heard:?}"),
                None => {
                    let (mv, d) = model.get(k).copied().unwrap_or((u64::MAX, u64::MAX));
                    assert!(
                        mv == *v && t >= d && *cause == RemovalCause::Expired,
                        "value {v} of key {k} heard of as {cause:?} while live at {t}: {heard:?}"
                    );
                }
            }
        }
        for v in expect.keys() {
            assert!(
                seen.contains(v),
                "value {v} left (after {op:?}) but was not heard of: {heard:?}"
            );
        }
    }
    cache.invalidate_all();
    let t = now(&clock);
    let keys: Vec<u32> = model.keys().copied().collect();
    for k in keys {
        leave(&mut model, &mut expect, k, t, RemovalCause::Explicit);
    }
    let heard = log.lock().unwrap().clone();
    let heard_values: HashMap<u64, RemovalCause> = heard.iter().map(|e| (e.1, e.2)).collect();
    assert_eq!(
        heard_values.len(),
        heard.len(),
        "a value heard of twice: {heard:?}"
    );
    assert_eq!(
        heard_values, expect,
        "every value heard of once, with its cause"
    );
    assert_eq!(cache.entry_count(), 0);
    assert_stats_match(&cache, &log);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn listener_hears_every_value_once_with_its_cause(
        ttl in proptest::option::of(1u16..40),
        unit in prop_oneof![Just(1u64), Just(1_000_000_000u64)],
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        run_model(ttl, unit, ops);
    }
}

// ---------------------------------------------------------------------------
// The capacity bound.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_capacity_bound_is_never_exceeded(
        capacity in prop_oneof![0u64..20, 20u64..3_000],
        shards in proptest::option::of(1usize..9),
        weighted in any::<bool>(),
        writes in proptest::collection::vec((0u32..400, 0u64..40, any::<bool>()), 1..600),
    ) {
        let clock = MockClock::new();
        let mut b = Cache::builder().max_capacity(capacity).time_to_live(secs(5)).clock(clock.clone());
        if let Some(n) = shards {
            b = b.num_shards(n);
        }
        if weighted {
            b = b.weigher(|_: &u32, v: &u64| (*v % 40) as u32);
        }
        let (cache, log) = listened(b);
        let mut written = 0u64;
        for (i, (k, w, tick)) in writes.into_iter().enumerate() {
            // Values carry their weight in `% 40` and a unique id above it.
            let v = (i as u64 + 1) * 40 + w;
            cache.insert(k, v);
            written += 1;
            if tick {
                clock.advance(Duration::from_millis(100));
            }
            let size = cache.weighted_size();
            prop_assert!(size <= capacity, "weighted size {} over {}", size, capacity);
            if !weighted {
                prop_assert!(cache.entry_count() <= capacity);
                prop_assert_eq!(cache.entry_count(), size);
            } else {
                let live: u64 = cache.iter().map(|(_, v)| v % 40).sum();
                prop_assert!(live <= size, "listed weight {} over weighted size {}", live, size);
            }
        }
        cache.invalidate_all();
        let heard = log.lock().unwrap().clone();
        let values: HashSet<u64> = heard.iter().map(|e| e.1).collect();
        prop_assert_eq!(values.len(), heard.len(), "a value heard of twice");
        prop_assert_eq!(heard.len() as u64, written, "every value heard of once");
        prop_assert_eq!(cache.weighted_size(), 0);
        assert_stats_match(&cache, &log);
    }
}

// ---------------------------------------------------------------------------
// Settings build() refuses, and a few it accepts.
// ---------------------------------------------------------------------------

#[test]
fn bad_settings_are_build_errors() {
    type B = CacheBuilder<u32, u64>;
    let b = || -> B { Cache::builder() };
    let err = |b: B| b.build().err();
    assert_eq!(
        err(b().time_to_live(Duration::ZERO)),
        Some(BuildError::ZeroTimeToLive)
    );
    assert_eq!(
        err(b().time_to_idle(Duration::ZERO)),
        Some(BuildError::ZeroTimeToIdle)
    );
    assert_eq!(err(b().num_shards(0)), Some(BuildError::ZeroShards));
    assert_eq!(
        err(b().num_shards(65_537)),
        Some(BuildError::TooManyShards(65_537))
    );
    for j in [-0.1, 1.0, 1.5, f64::INFINITY, -0.0001] {
        assert_eq!(
            err(b().ttl_jitter(j)),
            Some(BuildError::JitterOutOfRange(j)),
            "{j}"
        );
    }
    assert!(matches!(
        err(b().ttl_jitter(f64::NAN)),
        Some(BuildError::JitterOutOfRange(j)) if j.is_nan()
    ));
    let hooks = || Fixed(secs(1));
    assert_eq!(
        err(b().expire_after(hooks()).time_to_live(secs(1))),
        Some(BuildError::ExpiryConflict)
    );
    assert_eq!(
        err(b().time_to_idle(secs(1)).expire_after(hooks())),
        Some(BuildError::ExpiryConflict)
    );
    // A jitter with no lifetime to spread (the time to idle is exact).
    for nothing_to_spread in [b(), b().time_to_idle(secs(1))] {
        assert_eq!(
            err(nothing_to_spread.ttl_jitter(0.5)),
            Some(BuildError::JitterWithoutLifetime)
        );
    }
    // At the edges of what is allowed.
    for ok in [
        b().ttl_jitter(0.0),
        b().time_to_live(secs(1)).ttl_jitter(0.999_999),
        b().time_to_live(NS).time_to_idle(NS),
        b().num_shards(65_536),
        b().max_capacity(0),
        b().time_to_live(Duration::MAX).time_to_idle(Duration::MAX),
        b().expire_after(hooks()).ttl_jitter(0.5),
    ] {
        assert!(ok.build().is_ok());
    }
}

#[test]
fn a_lifetime_beyond_the_clock_range_is_none() {
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .time_to_live(Duration::MAX)
            .time_to_idle(Duration::MAX)
            .clock(clock.clone()),
    );
    cache.insert(1, 10);
    cache.insert_with_ttl(2, 20, Duration::MAX);
    clock.advance(secs(30 * 365 * 24 * 3600));
    assert_eq!(cache.get(&1), Some(10));
    assert_eq!(cache.get(&2), Some(20));
}

// ---------------------------------------------------------------------------
// More corners.
// ---------------------------------------------------------------------------

/// Expired entries that the policy picks to make room are heard of as
/// `Expired`, never `Size`, and `Size` only ever names live entries. (The
/// policy may still prefer an expired, frequent entry to a new one until
/// the expired one is reaped: that is not promised either way.)
#[test]
fn an_expired_entry_making_room_is_heard_of_as_expired() {
    let clock = MockClock::new();
    let (cache, log) = listened(
        Cache::builder()
            .max_capacity(4)
            .num_shards(1)
            .time_to_live(secs(10))
            .clock(clock.clone()),
    );
    for k in 0..4 {
        cache.insert(k, u64::from(k));
    }
    clock.advance(secs(10)); // all four expired, none reaped
    for k in 10..30 {
        cache.insert(k, u64::from(k));
        assert!(cache.entry_count() <= 4);
    }
    cache.run_pending_tasks();
    let heard = log.lock().unwrap().clone();
    for k in 0..4 {
        let of_k: Vec<_> = heard.iter().filter(|e| e.0 == k).collect();
        assert_eq!(
            of_k,
            [&(k, u64::from(k), RemovalCause::Expired)],
            "{heard:?}"
        );
    }
    assert!(
        heard
            .iter()
            .all(|e| (e.0 < 4) == (e.2 == RemovalCause::Expired)),
        "{heard:?}"
    );
    assert_eq!(heard.len() as u64 + cache.entry_count(), 24);
    assert_stats_match(&cache, &log);
}

#[test]
fn a_write_into_a_full_cache_makes_room_from_expired_entries_before_live_ones() {
    for weighed in [false, true] {
        let clock = MockClock::new();
        let mut builder = Cache::builder()
            .max_capacity(4)
            .num_shards(1)
            .time_to_live(secs(10))
            .clock(clock.clone());
        if weighed {
            builder = builder.weigher(|_: &u32, _: &u64| 1);
        }
        let (cache, log) = listened(builder);
        for k in 0..4 {
            cache.insert(k, u64::from(k));
        }
        // Make the old keys the policy's favourites, then let them expire.
        for _ in 0..5 {
            for k in 0..4 {
                cache.get(&k);
            }
        }
        clock.advance(secs(10));
        for k in 10..14 {
            cache.insert(k, u64::from(k));
        }
        for k in 10..14 {
            assert!(
                cache.contains_key(&k),
                "weighed {weighed}: new key {k} kept while expired entries made room: {:?}",
                log.lock().unwrap()
            );
        }
        let mut heard = log.lock().unwrap().clone();
        heard.sort_unstable_by_key(|e| e.0);
        let expired: Vec<_> = (0..4)
            .map(|k| (k, u64::from(k), RemovalCause::Expired))
            .collect();
        assert_eq!(
            heard, expired,
            "weighed {weighed}: reaped by the writes, nothing live evicted"
        );
        assert_stats_match(&cache, &log);
    }
}

/// Errors are not cached: they live for no time at all.
struct NoErrors;

impl Expiry<u32, u64> for NoErrors {
    fn expire_after_create(&self, _: &u32, value: &u64) -> Option<Duration> {
        (*value >= 100).then_some(Duration::ZERO)
    }
}

/// A write whose entry is expired as it arrives (a zero lifetime, given to
/// `insert_with_ttl` or answered by a hook, say for a value not worth
/// caching) needs no room: in a full cache it evicts no live entry, and is
/// heard of as `Expired`, once. Admitted, it took a live key's place (heard
/// of as `Size`) and was then reaped itself: the cache lost a live entry
/// for one no read could ever return.
#[test]
fn an_entry_expired_on_arrival_evicts_no_live_entry() {
    for (weighed, hooked) in [(false, false), (true, false), (false, true), (true, true)] {
        let clock = MockClock::new();
        let mut builder = Cache::builder()
            .max_capacity(10)
            .num_shards(1)
            .clock(clock.clone());
        if weighed {
            builder = builder.weigher(|_: &u32, _: &u64| 1);
        }
        if hooked {
            builder = builder.expire_after(NoErrors);
        }
        let (cache, log) = listened(builder);
        for k in 0..10 {
            cache.insert(k, u64::from(k));
        }
        for _ in 0..5 {
            for k in 0..10 {
                cache.get(&k);
            }
        }
        for k in 100..120 {
            match hooked {
                true => cache.insert(k, u64::from(k)),
                false => cache.insert_with_ttl(k, u64::from(k), Duration::ZERO),
            }
            assert_eq!(cache.get(&k), None);
        }
        let setup = format!("weighed {weighed}, hooked {hooked}");
        for k in 0..10 {
            assert_eq!(
                cache.get(&k),
                Some(u64::from(k)),
                "{setup}: {:?}",
                log.lock().unwrap()
            );
        }
        cache.run_pending_tasks();
        let mut heard = log.lock().unwrap().clone();
        heard.sort_unstable_by_key(|e| e.0);
        let expired: Vec<_> = (100..120)
            .map(|k| (k, u64::from(k), RemovalCause::Expired))
            .collect();
        assert_eq!(heard, expired, "{setup}");
        assert_eq!(cache.entry_count(), 10, "{setup}");
        assert_stats_match(&cache, &log);
        cache.check_invariants();
    }
}

#[test]
fn an_entry_expiring_while_the_predicate_runs_is_heard_of_as_expired() {
    let clock = MockClock::new();
    let (cache, log) = listened(
        Cache::builder()
            .time_to_live(secs(5))
            .num_shards(1)
            .clock(clock.clone()),
    );
    cache.insert(1, 10);
    cache.insert(2, 20);
    let c = clock.clone();
    cache.invalidate_entries_if(move |k, _| {
        if *k == 1 {
            // Both expire after the shard's entries were tested, before they
            // are removed (one shard: tested together, then removed).
            c.advance(secs(5));
        }
        true
    });
    cache.run_pending_tasks();
    let mut heard = log.lock().unwrap().clone();
    heard.sort_unstable_by_key(|e| e.0);
    assert_eq!(
        heard,
        [
            (1, 10, RemovalCause::Expired),
            (2, 20, RemovalCause::Expired)
        ]
    );
    assert_stats_match(&cache, &log);
}

#[test]
fn an_entry_expiring_while_invalidate_all_runs_is_heard_of_as_expired() {
    let clock = MockClock::new();
    let log: Log = Arc::default();
    let (sink, tick) = (log.clone(), clock.clone());
    let cache: Cache<u32, u64> = Cache::builder()
        .time_to_live(secs(5))
        .num_shards(2)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, v, c| {
            let mut heard = sink.lock().unwrap();
            if heard.is_empty() {
                // Every entry expires once the first shard is cleared,
                // before the second one is.
                tick.advance(secs(5));
            }
            heard.push((*k, v, c));
        })
        .build()
        .unwrap();
    for k in 0..64 {
        cache.insert(k, u64::from(k)); // both shards hold some (all but surely)
    }
    cache.invalidate_all();
    let causes: Vec<RemovalCause> = log.lock().unwrap().iter().map(|e| e.2).collect();
    assert_eq!(causes.len(), 64);
    // The first shard's entries were live when it was cleared, the second's
    // had expired: heard in that order, each batch whole.
    let cleared_live = causes
        .iter()
        .take_while(|c| **c == RemovalCause::Explicit)
        .count();
    assert!(cleared_live > 0, "{causes:?}");
    assert!(
        cleared_live < 64,
        "the second shard's expired entries were heard of as Explicit"
    );
    assert!(
        causes[cleared_live..]
            .iter()
            .all(|c| *c == RemovalCause::Expired),
        "{causes:?}"
    );
    assert_stats_match(&cache, &log);
}

#[test]
fn capacity_zero_keeps_weightless_entries_neither() {
    let (cache, log) = listened(
        Cache::builder()
            .max_capacity(0)
            .weigher(|_: &u32, _: &u64| 0),
    );
    cache.insert(1, 10);
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.get_with(2, || 20), 20);
    assert_eq!(cache.peek(&2), None);
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(
        *log.lock().unwrap(),
        [(1, 10, RemovalCause::Size), (2, 20, RemovalCause::Size)]
    );
}

#[test]
fn the_default_read_hook_keeps_the_deadline_under_jitter() {
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .expire_after(Fixed(secs(100)))
            .ttl_jitter(0.5)
            .clock(clock.clone()),
    );
    for k in 0..200 {
        cache.insert(k, 1); // deadlines in 50..150 s
    }
    // Many reads: were the time left spread again on each, deadlines would
    // wander out of 50..150 s.
    for _ in 0..20 {
        clock.advance(secs(2));
        for k in 0..200 {
            assert_eq!(cache.get(&k), Some(1));
        }
    }
    assert_deadlines_kept(&cache, &clock, secs(40), "a deadline a read kept");
}

#[test]
fn a_write_restarts_time_to_live_and_time_to_idle() {
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .time_to_live(secs(10))
            .time_to_idle(secs(4))
            .clock(clock.clone()),
    );
    cache.insert(1, 10);
    for _ in 0..4 {
        clock.advance(secs(3));
        cache.insert(1, 11); // t = 3, 6, 9, 12: each a fresh 4 s idle, 10 s live
    }
    clock.advance(secs(4) - NS);
    assert_eq!(cache.peek(&1), Some(11));
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);
}

#[test]
fn insert_with_ttl_then_a_default_update_keeps_its_deadline() {
    let clock = MockClock::new();
    let hooks = Hooks::new(Some(secs(100)));
    let seen = hooks.seen.clone();
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert_with_ttl(1, 10, secs(5)); // overrides the create hook's 100 s
    clock.advance(secs(2));
    cache.insert(1, 11);
    assert_eq!(*seen.lock().unwrap(), [("update", Some(secs(3)))]);
    clock.advance(secs(3) - NS);
    assert_eq!(cache.peek(&1), Some(11));
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);

    // And insert_with_ttl over a live entry ignores the update hook.
    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(100)));
    hooks.update = Some(Some(secs(100)));
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    cache.insert_with_ttl(1, 11, secs(5));
    clock.advance(secs(5));
    assert_eq!(cache.peek(&1), None);
}

#[test]
fn hooks_see_none_remaining_for_an_entry_that_never_expires() {
    let clock = MockClock::new();
    let hooks = Hooks::new(None);
    let seen = hooks.seen.clone();
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    assert_eq!(cache.get(&1), Some(10));
    cache.insert(1, 11);
    assert_eq!(*seen.lock().unwrap(), [("read", None), ("update", None)]);
    clock.advance(secs(1_000_000));
    assert_eq!(cache.peek(&1), Some(11));
}

#[test]
fn a_get_with_hit_runs_the_read_hook() {
    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(10)));
    hooks.read = Some(Some(secs(30)));
    let (cache, _) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    clock.advance(secs(5));
    assert_eq!(cache.get_with(1, || 99), 10);
    clock.advance(secs(30) - NS);
    assert_eq!(cache.peek(&1), Some(10));
    clock.advance(NS);
    assert_eq!(cache.peek(&1), None);
}

#[test]
fn a_panicking_listener_loses_no_other_notification() {
    let clock = MockClock::new();
    let log: Log = Arc::default();
    let sink = log.clone();
    let cache = Cache::builder()
        .time_to_live(secs(1))
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, v, c| {
            sink.lock().unwrap().push((*k, v, c));
            if *k % 2 == 0 {
                panic!("listener panics on {k}");
            }
        })
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(k, u64::from(k));
    }
    cache.insert(0, 100); // Replaced, panics
    cache.invalidate(&2); // Explicit, panics
    clock.advance(secs(1));
    cache.run_pending_tasks(); // 9 Expired (0 = 100, 1, 3..=9), four of them panic
    assert_eq!(log.lock().unwrap().len(), 11);
    assert_eq!(cache.entry_count(), 0);
    assert_stats_match(&cache, &log);
}

#[test]
fn a_one_nanosecond_ttl_is_never_jittered_to_zero() {
    let clock = MockClock::new();
    let (cache, _) = listened(
        Cache::builder()
            .time_to_live(NS)
            .ttl_jitter(0.99)
            .clock(clock.clone()),
    );
    for k in 0..200 {
        cache.insert(k, 1);
        assert!(cache.contains_key(&k), "a 1 ns TTL spread to nothing");
    }
    clock.advance(NS);
    assert_eq!(cache.iter().count(), 0);
}

/// Threads writing, removing, reaping and moving the clock at once: every
/// value written is heard of exactly once, none twice, and the stats agree.
#[test]
fn concurrent_removals_are_each_heard_once() {
    for round in 0..4 {
        let clock = MockClock::new();
        let (cache, log) = listened(
            Cache::builder()
                .max_capacity(64)
                .num_shards(4)
                .time_to_live(Duration::from_micros(50))
                .clock(clock.clone()),
        );
        let next = Arc::new(AtomicU64::new(1));
        let written = Arc::new(Mutex::new(HashSet::new()));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (cache, clock, next, written) =
                    (cache.clone(), clock.clone(), next.clone(), written.clone());
                std::thread::spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1) ^ (round << 8);
                    let mut mine = Vec::new();
                    for _ in 0..4_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = (x >> 8) as u32 % 96;
                        match x % 20 {
                            0..=7 => {
                                let v = next.fetch_add(1, Ordering::Relaxed);
                                cache.insert(k, v);
                                mine.push(v);
                            }
                            8..=9 => {
                                let v = next.fetch_add(1, Ordering::Relaxed);
                                cache.insert_with_ttl(k, v, Duration::from_nanos(x % 100_000));
                                mine.push(v);
                            }
                            10..=11 => {
                                cache.remove(&k);
                            }
                            12 => cache.invalidate(&k),
                            13 => cache.run_pending_tasks(),
                            14 => clock.advance(Duration::from_micros(x % 20)),
                            15 => cache.invalidate_entries_if(move |kk, _| kk % 7 == k % 7),
                            16 if x % 40 == 16 => cache.invalidate_all(),
                            _ => {
                                let _ = cache.get(&k);
                            }
                        }
                        assert!(cache.entry_count() <= 64);
                    }
                    written.lock().unwrap().extend(mine);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        cache.invalidate_all();
        cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 0);
        let heard = log.lock().unwrap().clone();
        let mut values = HashSet::new();
        for e in &heard {
            assert!(values.insert(e.1), "value {} heard of twice", e.1);
        }
        assert_eq!(
            values,
            *written.lock().unwrap(),
            "every value written heard of once"
        );
        assert_stats_match(&cache, &log);
    }
}

/// `run_pending_tasks` reports every entry expired before it, whatever moved
/// its deadline since it was written, and nothing still live.
#[test]
fn reaping_follows_deadlines_moved_by_reads() {
    // A read hook that shortens: reaped at the new deadline.
    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(100)));
    hooks.read = Some(Some(secs(5)));
    let (cache, log) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    cache.insert(2, 20);
    clock.advance(secs(1));
    assert_eq!(cache.get(&1), Some(10)); // now due at 6 s
    clock.advance(secs(5) - NS);
    cache.run_pending_tasks();
    assert!(log.lock().unwrap().is_empty());
    clock.advance(NS);
    cache.run_pending_tasks();
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);
    assert_eq!(cache.entry_count(), 1);

    // A read hook that lengthens, and a time to idle slid by reads: not
    // reaped at the deadline they had when written.
    let clock = MockClock::new();
    let mut hooks = Hooks::new(Some(secs(5)));
    hooks.read = Some(Some(secs(100)));
    let (cache, log) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    let (idle, idle_log) = listened(Cache::builder().time_to_idle(secs(5)).clock(clock.clone()));
    cache.insert(1, 10);
    idle.insert(1, 10);
    clock.advance(secs(4));
    assert_eq!(cache.get(&1), Some(10));
    assert_eq!(idle.get(&1), Some(10));
    clock.advance(secs(4));
    cache.run_pending_tasks();
    idle.run_pending_tasks();
    assert!(log.lock().unwrap().is_empty());
    assert!(idle_log.lock().unwrap().is_empty());
    assert_eq!((cache.peek(&1), idle.peek(&1)), (Some(10), Some(10)));
    clock.advance(secs(1)); // 9 s: idle since 4 s
    idle.run_pending_tasks();
    assert_eq!(*idle_log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);
    clock.advance(secs(95)); // 104 s
    cache.run_pending_tasks();
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);
}

#[test]
fn one_run_pending_tasks_reports_a_mass_expiry_whole() {
    let clock = MockClock::new();
    let (cache, log) = listened(
        Cache::builder()
            .time_to_live(secs(1))
            .num_shards(2)
            .clock(clock.clone()),
    );
    for k in 0..30_000 {
        cache.insert(k, u64::from(k));
    }
    clock.advance(secs(1));
    cache.run_pending_tasks();
    assert_eq!(log.lock().unwrap().len(), 30_000);
    assert_eq!(cache.entry_count(), 0);
}
#[test]
fn a_deadline_just_below_the_clock_range_still_expires() {
    // MockClock::advance: "counts any deadline from 2^60 - 1 ns (about
    // 36.5 years) on as none" (the all-ones 60-bit word is "none").
    let edge = (1u64 << 60) - 1;
    for deadline in [edge - 2, edge - 1] {
        let clock = MockClock::new();
        clock.advance(Duration::from_nanos(deadline - 10));
        let (cache, _) = listened(Cache::builder().clock(clock.clone()));
        cache.insert_with_ttl(1, 10, Duration::from_nanos(10));
        clock.advance(Duration::from_nanos(9));
        assert!(cache.contains_key(&1));
        clock.advance(NS);
        assert!(
            !cache.contains_key(&1),
            "a deadline of {deadline} ns counted as none"
        );
    }
}

#[test]
fn a_deadline_at_the_end_of_the_clock_range_is_none() {
    let clock = MockClock::new();
    clock.advance(Duration::from_nanos((1u64 << 60) - 11));
    let (cache, _) = listened(Cache::builder().clock(clock.clone()));
    cache.insert_with_ttl(1, 10, Duration::from_nanos(10)); // due at 2^60 - 1 ns
    clock.advance(secs(1));
    assert_eq!(cache.peek(&1), Some(10));
}

#[test]
fn a_read_sliding_the_idle_deadline_past_the_clock_range_is_not_lost() {
    // A read 7 s before the end of the range, with 10 s to idle, slides the
    // deadline past it: to the range's end, the latest a deadline can be.
    // Before, the slide was skipped and the entry expired 2 s after that
    // read.
    let edge = (1u64 << 60) - 1;
    let clock = MockClock::new();
    clock.advance(Duration::from_nanos(edge) - secs(15));
    let (cache, _) = listened(Cache::builder().time_to_idle(secs(10)).clock(clock.clone()));
    cache.insert(1, 10); // due 5 s before the edge
    clock.advance(secs(8));
    assert_eq!(cache.get(&1), Some(10));
    clock.advance(secs(3));
    assert_eq!(cache.peek(&1), Some(10), "read 3 s ago, 10 s to idle");
    cache.run_pending_tasks();
    clock.advance(secs(4) - 2 * NS); // 1 ns before the edge
    assert_eq!(cache.peek(&1), Some(10), "not reaped either");
    cache.check_invariants();
}

/// Entries live `life` from their creation (`None`: for ever); a read of
/// the value 10 is held in its hook until let go, then answers 1 s; other
/// reads keep the deadline.
struct HeldRead {
    life: Option<Duration>,
    begun: Mutex<mpsc::Sender<()>>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl HeldRead {
    /// The hooks, with the channels that tell when a held read begins and
    /// let it go.
    fn new(life: Option<Duration>) -> (Self, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (begun, hook_begun) = mpsc::channel();
        let (go, hook_go) = mpsc::channel();
        let hooks = HeldRead {
            life,
            begun: Mutex::new(begun),
            go: Mutex::new(hook_go),
        };
        (hooks, hook_begun, go)
    }
}

impl Expiry<u32, u64> for HeldRead {
    fn expire_after_create(&self, _: &u32, _: &u64) -> Option<Duration> {
        self.life
    }

    fn expire_after_read(
        &self,
        _: &u32,
        value: &u64,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        if *value != 10 {
            return remaining;
        }
        self.begun.lock().unwrap().send(()).unwrap();
        self.go.lock().unwrap().recv_timeout(secs(10)).unwrap();
        Some(secs(1))
    }
}

#[test]
fn a_read_hook_answer_never_times_an_entry_written_while_it_ran() {
    // The key is written while the read hook for its old value runs, so
    // the read came first. Removed and written again: the answer was about
    // a value no longer cached, and the new entry's create hook said never.
    // Replaced: the default update hook keeps the time left, which after
    // the read is the read hook's 1 s, so the answer stands.
    type Write = fn(&Cache<u32, u64>);
    let writes: [(&str, Write, Option<u64>); 2] = [
        (
            "removed and created",
            |c| {
                c.invalidate(&1);
                c.insert(1, 20);
            },
            Some(20),
        ),
        ("replaced", |c| c.insert(1, 20), None),
    ];
    for (what, write, at_2s) in writes {
        let clock = MockClock::new();
        let (hooks, hook_begun, go) = HeldRead::new(None);
        let (cache, log) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
        cache.insert(1, 10);
        let reader = {
            let cache = cache.clone();
            std::thread::spawn(move || cache.get(&1))
        };
        hook_begun.recv_timeout(secs(10)).unwrap();
        write(&cache);
        go.send(()).unwrap();
        assert_eq!(reader.join().unwrap(), Some(10));
        clock.advance(secs(2));
        assert_eq!(cache.peek(&1), at_2s, "{what}");
        cache.run_pending_tasks();
        assert_stats_match(&cache, &log);
    }
}

#[test]
fn a_read_hook_answer_never_revives_an_entry_that_expired_while_it_ran() {
    // Due at 10 s; read at 9.5 s, its hook held until 10.2 s, after a peek
    // found the entry expired. The answer (1 s, to 10.5 s) comes too late:
    // the entry stays expired, and is heard of as such.
    let clock = MockClock::new();
    let (hooks, hook_begun, go) = HeldRead::new(Some(secs(10)));
    let (cache, log) = listened(Cache::builder().expire_after(hooks).clock(clock.clone()));
    cache.insert(1, 10);
    clock.advance(Duration::from_millis(9_500));
    let reader = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.get(&1))
    };
    hook_begun.recv_timeout(secs(10)).unwrap();
    clock.advance(Duration::from_millis(700));
    assert_eq!(cache.peek(&1), None, "expired at 10 s");
    go.send(()).unwrap();
    assert_eq!(reader.join().unwrap(), Some(10), "live when read");
    assert_eq!(cache.peek(&1), None, "revived by the read's hook");
    cache.run_pending_tasks();
    assert_eq!(*log.lock().unwrap(), [(1, 10, RemovalCause::Expired)]);
    assert_stats_match(&cache, &log);
}
