//! User code that panics (weigher, listener, loader, expiry hooks, a
//! value's `Clone`) must not
//! corrupt the cache nor leave it stuck; and the hooks' documented promises
//! (run with no lock held, listener on the removing thread) hold.
//!
//! Every test ends with `check_invariants()` (feature `test-util`); calls that
//! could deadlock run through [`within`], which fails instead of hanging.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
        mpsc::{self, RecvTimeoutError},
    },
    thread::{self, ThreadId},
    time::{Duration, Instant},
};

#[path = "support/fused.rs"]
mod fused;
#[path = "support/threads.rs"]
mod threads;

use fused::Fused;
use larder::{Cache, Expiry, RemovalCause, clock::MockClock};
use threads::panic_message;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A value the weigher below refuses by panicking.
const POISON: u64 = u64::MAX;

/// Runs `f` on its own thread, re-raising its panic; fails after [`TIMEOUT`]
/// (a deadlock) instead of hanging.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(v) => v,
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => panic::resume_unwind(payload),
            Ok(()) => unreachable!("the thread sends unless it panics"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {TIMEOUT:?} (deadlock?)")
        }
    }
}

/// Polls `condition` for up to 2 s. Needed where the maintenance thread may
/// be delivering a batch it reaped just before our `run_pending_tasks`.
#[track_caller]
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 2 s");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Calls `f`, expecting it to panic; returns the panic message.
#[track_caller]
fn panic_of<T: std::fmt::Debug>(f: impl FnOnce() -> T) -> String {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => panic!("expected a panic, got {v:?}"),
        Err(payload) => panic_message(&*payload),
    }
}

#[test]
fn handles_cross_catch_unwind_without_assert_unwind_safe() {
    // A panic in user code leaves a cache consistent, so its handles are
    // `UnwindSafe` and `RefUnwindSafe`: these closures compile as they
    // are, capturing `&Cache` and `&LoadingCache`.
    let cache: Cache<u32, u64> = Cache::builder()
        .weigher(|_: &u32, v: &u64| {
            assert_ne!(*v, POISON, "weigher refuses poison");
            1
        })
        .build()
        .unwrap();
    cache.insert(1, 1);
    let caught = panic::catch_unwind(|| cache.insert(2, POISON));
    assert!(caught.is_err());
    assert_eq!(panic::catch_unwind(|| cache.get(&1)).unwrap(), Some(1));
    let loading = Cache::builder()
        .loader(|k: &u32| -> Result<Option<u32>, String> {
            assert_ne!(*k, 0, "loader refuses 0");
            Ok(Some(*k))
        })
        .build()
        .unwrap();
    assert!(panic::catch_unwind(|| loading.get(&0)).is_err());
    assert_eq!(
        panic::catch_unwind(|| loading.get(&3)).unwrap(),
        Ok(Some(3))
    );
    fn unwind_safe<T: panic::UnwindSafe + panic::RefUnwindSafe>(_: &T) {}
    unwind_safe(&cache);
    unwind_safe(&loading);
}

/// A slot through which hooks reach the cache they were built into. Cleared
/// at the end of a test to break the cache → hook → cache cycle, so the
/// maintenance thread stops.
struct Handle<V>(Arc<Mutex<Option<Cache<u32, V>>>>);

impl<V: Clone + Send + Sync + 'static> Handle<V> {
    fn new() -> Self {
        Handle(Arc::new(Mutex::new(None)))
    }

    fn share(&self) -> Self {
        Handle(self.0.clone())
    }

    fn set(&self, cache: &Cache<u32, V>) {
        *self.0.lock().unwrap() = Some(cache.clone());
    }

    fn get(&self) -> Option<Cache<u32, V>> {
        self.0.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.0.lock().unwrap().take();
    }
}

type Log<V> = Arc<Mutex<Vec<(u32, V, RemovalCause)>>>;

#[test]
fn panicking_weigher_propagates_and_leaves_the_cache_usable() {
    let log: Log<u64> = Arc::default();
    let sink = log.clone();
    let cache: Cache<u32, u64> = Cache::builder()
        .max_capacity(100)
        .num_shards(2)
        .weigher(|_k: &u32, v: &u64| {
            assert_ne!(*v, POISON, "weigher refuses poison");
            1 + (*v % 3) as u32
        })
        .eviction_listener(move |k: Arc<u32>, v, cause| sink.lock().unwrap().push((*k, v, cause)))
        .build()
        .unwrap();
    for k in 0..20 {
        cache.insert(k, u64::from(k));
    }
    let weight_before = cache.weighted_size();

    // A new key: the panic reaches the caller, nothing is stored.
    assert!(panic_of(|| cache.insert(50, POISON)).contains("weigher refuses poison"));
    assert!(!cache.contains_key(&50));
    // An existing key: the old value survives the failed replace.
    assert!(panic_of(|| cache.insert(5, POISON)).contains("weigher refuses poison"));
    assert_eq!(cache.get(&5), Some(5));
    assert_eq!(
        (cache.entry_count(), cache.weighted_size()),
        (20, weight_before)
    );
    assert!(
        log.lock().unwrap().is_empty(),
        "no removal happened: {:?}",
        log.lock().unwrap()
    );
    cache.check_invariants();

    // Through a loader: the value cannot be weighed, so the load panics, and
    // the next load of that key runs its own loader (no flight left behind).
    assert!(panic_of(|| cache.get_with(60, || POISON)).contains("weigher refuses poison"));
    let c = cache.clone();
    assert_eq!(
        within("load after a weigher panic", move || c.get_with(60, || 60)),
        60
    );

    // Everything else still works.
    cache.insert(21, 21);
    cache.insert(5, 55);
    assert_eq!(cache.get(&21), Some(21));
    assert_eq!(cache.get(&5), Some(55));
    assert_eq!(cache.remove(&0), Some(0));
    assert_eq!(cache.entry_count(), 21);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (5, 5, RemovalCause::Replaced),
            (0, 0, RemovalCause::Explicit)
        ]
    );
    cache.check_invariants();
}

/// A value whose `clone` panics while `FRAGILE` is set: a `get` or an
/// `iter` clones values under a shard's read lock.
#[derive(Debug, PartialEq)]
struct Fragile(u32);

static FRAGILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Clone for Fragile {
    fn clone(&self) -> Self {
        assert!(!FRAGILE.load(SeqCst), "clone of {} refused", self.0);
        Fragile(self.0)
    }
}

#[test]
fn panicking_value_clone_releases_the_shard_lock() {
    let cache: Cache<u32, Fragile> = Cache::builder()
        .max_capacity(100)
        .num_shards(1)
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(k, Fragile(k));
    }
    FRAGILE.store(true, SeqCst);
    assert_eq!(panic_of(|| cache.get(&3)), "clone of 3 refused");
    let msg = panic_of(|| cache.iter().count());
    assert!(msg.starts_with("clone of "), "{msg}");
    FRAGILE.store(false, SeqCst);
    // The one shard's lock was released by both unwinds: a write goes in.
    let c = cache.clone();
    within("a write after the panics", move || {
        c.insert(42, Fragile(42));
        c.remove(&0);
    });
    assert_eq!(cache.get(&42), Some(Fragile(42)));
    assert_eq!(cache.iter().count(), 10);
    cache.check_invariants();
}

/// A value that cannot be cloned: its `clone` always panics.
#[derive(Debug, PartialEq)]
struct Unclonable(u32);

impl Clone for Unclonable {
    fn clone(&self) -> Self {
        panic!("clone of {} refused", self.0)
    }
}

#[test]
fn a_panicking_value_clone_in_remove_loses_no_notification() {
    let seen: Arc<Mutex<Vec<(u32, u32, RemovalCause)>>> = Arc::default();
    let sink = seen.clone();
    let cache: Cache<u32, Unclonable> = Cache::builder()
        .eviction_listener(move |k: Arc<u32>, v: Unclonable, cause| {
            sink.lock().unwrap().push((*k, v.0, cause));
        })
        .build()
        .unwrap();
    cache.insert(1, Unclonable(1));
    cache.insert(2, Unclonable(2));
    // `invalidate` discards the value: it has no clone to make.
    cache.invalidate(&1);
    // `remove` returns a clone, which panics; the removal stands and is
    // heard of all the same.
    assert_eq!(panic_of(|| cache.remove(&2)), "clone of 2 refused");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (1, 1, RemovalCause::Explicit),
            (2, 2, RemovalCause::Explicit)
        ]
    );
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.stats().removals(RemovalCause::Explicit), 2);
    cache.check_invariants();
}

/// A key whose `Eq` panics while [`EQ_FUSE`] is set: the cache compares
/// keys under a shard's lock, shared for a read, exclusive for a write.
#[derive(Clone, Debug)]
struct EqFuse(u32);

impl std::hash::Hash for EqFuse {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h);
    }
}

static EQ_FUSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl PartialEq for EqFuse {
    fn eq(&self, other: &Self) -> bool {
        assert!(!EQ_FUSE.load(SeqCst), "eq of {} refused", self.0);
        self.0 == other.0
    }
}

impl Eq for EqFuse {}

#[test]
fn panicking_key_eq_under_a_read_or_write_lock_releases_it_and_changes_nothing() {
    let cache: Cache<EqFuse, u32> = Cache::builder()
        .max_capacity(100)
        .num_shards(1)
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(EqFuse(k), k);
    }
    EQ_FUSE.store(true, SeqCst);
    // On a thread of its own, so that a lock left held fails the test
    // (`within`) instead of hanging it.
    let c = cache.clone();
    // Which key's `Eq` runs first depends on the table's probe: a key whose
    // hash shares its tag with the one looked up is compared too, and may
    // be the receiver (rarely: it depends on the hasher's random seed; a
    // CI run met it on 7 December). Any key's refusal is the panic under
    // test.
    let refused = |message: String| {
        assert!(
            message.starts_with("eq of ") && message.ends_with(" refused"),
            "{message}"
        );
    };
    within("the panicking operations", move || {
        // Under the read lock (taken in the thread's reader slot)...
        refused(panic_of(|| c.get(&EqFuse(3))));
        refused(panic_of(|| c.contains_key(&EqFuse(4))));
        refused(panic_of(|| c.peek(&EqFuse(5))));
        // ... and under the write lock, finding the key to replace or remove.
        refused(panic_of(|| c.insert(EqFuse(6), 60)));
        refused(panic_of(|| c.remove(&EqFuse(7))));
    });
    EQ_FUSE.store(false, SeqCst);
    // Every unwind released the one shard's lock (it does not poison): a
    // write from another thread goes in.
    let c = cache.clone();
    within("a write after the panics", move || {
        c.insert(EqFuse(42), 42);
        c.remove(&EqFuse(0));
    });
    cache.check_invariants();
    assert_eq!(cache.entry_count(), 10);
    assert_eq!(
        cache.get(&EqFuse(6)),
        Some(6),
        "the refused replace changed nothing"
    );
    assert_eq!(
        cache.get(&EqFuse(7)),
        Some(7),
        "the refused removal changed nothing"
    );
    assert_eq!(cache.get(&EqFuse(42)), Some(42));
}

#[test]
fn panicking_listener_keeps_the_removal_and_the_rest_of_the_batch() {
    let clock = MockClock::new();
    let seen: Log<u32> = Arc::default();
    let sink = seen.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .num_shards(1)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, v, cause| {
            sink.lock().unwrap().push((*k, v, cause));
            assert_ne!(*k, 3, "listener panics on key 3");
        })
        .build()
        .unwrap();

    // One batch of ten: the panic on 3 does not stop the others.
    for k in 0..10 {
        cache.insert(k, k);
    }
    cache.invalidate_all();
    let mut keys: Vec<u32> = seen.lock().unwrap().iter().map(|&(k, _, _)| k).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        (0..10).collect::<Vec<_>>(),
        "every entry notified once"
    );
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.stats().removals(RemovalCause::Explicit), 10);
    cache.check_invariants();

    // A single removal: it stands, the caller gets the value, no panic.
    seen.lock().unwrap().clear();
    cache.insert(3, 30);
    assert_eq!(cache.remove(&3), Some(30));
    assert!(!cache.contains_key(&3));
    cache.insert(3, 31);
    cache.insert(3, 32); // Replaced, panics in the listener
    assert_eq!(cache.get(&3), Some(32));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (3, 30, RemovalCause::Explicit),
            (3, 31, RemovalCause::Replaced)
        ]
    );

    // An expiry batch reaped by run_pending_tasks (or by the maintenance
    // thread, which delivers the same way).
    cache.remove(&3);
    seen.lock().unwrap().clear();
    for k in 0..6 {
        cache.insert_with_ttl(k, k, Duration::from_secs(1));
    }
    clock.advance(Duration::from_secs(2));
    cache.run_pending_tasks();
    eventually("six expiry notifications", || {
        seen.lock().unwrap().len() >= 6
    });
    let mut expired: Vec<u32> = seen.lock().unwrap().iter().map(|&(k, _, _)| k).collect();
    expired.sort_unstable();
    assert_eq!(
        expired,
        (0..6).collect::<Vec<_>>(),
        "3 and its batch-mates each notified once"
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|&(_, _, c)| c == RemovalCause::Expired)
    );
    assert_eq!(cache.entry_count(), 0);
    cache.check_invariants();

    // Still fully usable.
    cache.insert(3, 3);
    assert_eq!(cache.get(&3), Some(3));
    cache.check_invariants();
}

#[test]
fn listener_panicking_on_every_size_eviction_does_not_break_the_bound() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(5)
        .num_shards(1)
        .eviction_listener(move |_k, _v, cause| {
            assert_eq!(cause, RemovalCause::Size);
            counter.fetch_add(1, SeqCst);
            panic!("listener always panics")
        })
        .build()
        .unwrap();
    for k in 0..20 {
        cache.insert(k, k); // must not panic
    }
    // The policy picks the victims (or rejects newcomers); either way 20
    // inserts into 5 places leave 15 or more size removals, each notified.
    let held = cache.entry_count();
    assert!((1..=5).contains(&held), "entry_count {held}");
    assert_eq!(
        calls.load(SeqCst) as u64,
        20 - held,
        "one notification per eviction, despite the panics"
    );
    assert_eq!(cache.stats().removals(RemovalCause::Size), 20 - held);
    cache.check_invariants();
}

#[test]
fn panicking_loader_leaves_no_flight_behind() {
    let cache: Cache<u32, u32> = Cache::new(100);
    assert_eq!(
        panic_of(|| cache.get_with(1, || panic!("loader panics"))),
        "loader panics"
    );
    assert_eq!(
        panic_of(
            || cache.try_get_with(2, || -> Result<u32, String> { panic!("try loader panics") })
        ),
        "try loader panics"
    );
    assert_eq!(cache.entry_count(), 0);
    cache.check_invariants();

    // The next loads of those keys run their loaders, without waiting on a
    // dead flight.
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, n) = (cache.clone(), calls.clone());
    let got = within("loads after a loader panic", move || {
        let a = c.get_with(1, || {
            n.fetch_add(1, SeqCst);
            10
        });
        let b = c.try_get_with(2, || {
            n.fetch_add(1, SeqCst);
            Ok::<_, String>(20)
        });
        (a, b)
    });
    assert_eq!(got, (10, Ok(20)));
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!((cache.get(&1), cache.get(&2)), (Some(10), Some(20)));
    cache.check_invariants();
}

#[test]
fn panicking_loader_counts_as_a_load_failure() {
    // CacheStats::load_failures: "Loader calls that returned an error or panicked."
    let cache: Cache<u32, u32> = Cache::new(100);
    panic_of(|| cache.get_with(1, || panic!("loader panics")));
    let stats = cache.stats();
    assert_eq!(
        stats.load_failures(),
        1,
        "a panicking loader is a failed load"
    );
    assert_eq!(stats.loads(), 1);
}

/// Expiry hooks that panic for specific keys: create for 13, update for 14,
/// read for 15. Everything else lives 10 s.
struct Touchy;

impl Expiry<u32, u32> for Touchy {
    fn expire_after_create(&self, key: &u32, _value: &u32) -> Option<Duration> {
        assert_ne!(*key, 13, "create hook panics on 13");
        Some(Duration::from_secs(10))
    }

    fn expire_after_update(
        &self,
        key: &u32,
        _value: &u32,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        assert_ne!(*key, 14, "update hook panics on 14");
        remaining
    }

    fn expire_after_read(
        &self,
        key: &u32,
        _value: &u32,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        assert_ne!(*key, 15, "read hook panics on 15");
        remaining
    }
}

#[test]
fn panicking_expiry_hook_propagates_and_leaves_the_cache_usable() {
    let clock = MockClock::new();
    let log: Log<u32> = Arc::default();
    let sink = log.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .num_shards(2)
        .expire_after(Touchy)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, v, cause| sink.lock().unwrap().push((*k, v, cause)))
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(k, k);
    }

    assert!(panic_of(|| cache.insert(13, 13)).contains("create hook panics on 13"));
    assert!(!cache.contains_key(&13));
    assert_eq!(cache.entry_count(), 10);
    cache.check_invariants();

    cache.insert(14, 1);
    assert!(panic_of(|| cache.insert(14, 2)).contains("update hook panics on 14"));
    assert_eq!(
        cache.peek(&14),
        Some(1),
        "the failed update left the old value"
    );
    cache.check_invariants();

    cache.insert(15, 1);
    assert!(panic_of(|| cache.get(&15)).contains("read hook panics on 15"));
    assert_eq!(
        cache.peek(&15),
        Some(1),
        "the entry survives a read-hook panic"
    );
    cache.check_invariants();

    assert!(
        log.lock().unwrap().is_empty(),
        "nothing was removed: {:?}",
        log.lock().unwrap()
    );
    assert_eq!(cache.entry_count(), 12);

    // Deadlines from the create hook still work for everyone else.
    clock.advance(Duration::from_secs(9));
    assert_eq!(cache.get(&1), Some(1));
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.get(&1), None);
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0);
    eventually("twelve expiry notifications", || {
        log.lock().unwrap().len() >= 12
    });
    assert_eq!(log.lock().unwrap().len(), 12);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|&(_, _, c)| c == RemovalCause::Expired)
    );
    cache.insert(16, 16);
    assert_eq!(cache.get(&16), Some(16));
    cache.check_invariants();
}

/// One notification: key, cause, and the id and name of the thread it ran on.
type Notified = (u32, RemovalCause, ThreadId, Option<String>);

/// `eviction_listener` docs: it "runs on the thread that caused the removal
/// (or the maintenance thread for expiry), after every lock is released, so
/// it may call back into the cache".
#[test]
fn listener_runs_on_the_removing_thread_and_may_call_back_into_the_cache() {
    /// A key the listener overwrites: a write into the shard that replaces
    /// rather than grows, so callbacks do not cascade into evictions.
    const SCRATCH: u32 = 5_000;
    let clock = MockClock::new();
    let handle: Handle<u32> = Handle::new();
    let seen: Arc<Mutex<Vec<Notified>>> = Arc::default();
    let (h, sink) = (handle.share(), seen.clone());
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(16)
        .num_shards(1) // every key in the one shard whose lock was just used
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, _v, cause| {
            let me = thread::current();
            if *k < 1_000 {
                let cache = h.get().expect("set before use");
                // Read and write the same shard from inside the listener.
                let _ = cache.get(&0);
                cache.insert(SCRATCH, *k);
                let _ = cache.peek(&SCRATCH);
                cache.invalidate(&4_000);
                let _ = cache.entry_count();
            }
            sink.lock()
                .unwrap()
                .push((*k, cause, me.id(), me.name().map(str::to_string)));
        })
        .build()
        .unwrap();
    handle.set(&cache);

    let c = cache.clone();
    let worker = within("listener calling back into the cache", move || {
        c.insert(SCRATCH, 0);
        for k in 0..8 {
            c.insert(k, k);
        }
        c.insert(1, 11); // Replaced
        assert_eq!(c.remove(&2), Some(2)); // Explicit
        c.invalidate_entries_if(|k, _| *k == 3); // Explicit
        c.insert_with_ttl(21, 21, Duration::from_secs(1));
        clock.advance(Duration::from_secs(2));
        c.run_pending_tasks(); // Expired (here or on the maintenance thread)
        for k in 100..130 {
            c.insert(k, k); // Size
        }
        c.invalidate_all(); // Explicit for the rest
        thread::current().id()
    });

    let expired = |seen: &[Notified]| {
        seen.iter()
            .any(|e| e.0 == 21 && e.1 == RemovalCause::Expired)
    };
    eventually("the expiry of 21 notified", || {
        expired(&seen.lock().unwrap())
    });
    let seen = seen.lock().unwrap().clone();
    let outer: Vec<_> = seen.iter().filter(|e| e.0 < 1_000).collect();
    for cause in [
        RemovalCause::Replaced,
        RemovalCause::Explicit,
        RemovalCause::Size,
        RemovalCause::Expired,
    ] {
        assert!(
            outer.iter().any(|e| e.1 == cause),
            "no {cause:?} notification: {outer:?}"
        );
    }
    for (k, cause, id, name) in &outer {
        let on_worker = *id == worker;
        let on_maintenance = name.as_deref() == Some("larder-maintenance");
        if *cause == RemovalCause::Expired {
            assert!(
                on_worker || on_maintenance,
                "expiry of {k} notified on {name:?}"
            );
        } else {
            assert!(
                on_worker,
                "{cause:?} of {k} notified on {name:?}, not on the removing thread"
            );
        }
    }
    // invalidate_all emptied the shard; the callbacks then wrote SCRATCH back.
    assert_eq!(cache.entry_count(), 1);
    assert!(cache.contains_key(&SCRATCH));
    cache.check_invariants();
    handle.clear();
}

struct PeekingExpiry(Handle<u32>);

impl PeekingExpiry {
    fn use_cache(&self) {
        let cache = self.0.get().expect("set before use");
        let _ = cache.peek(&0);
        let _ = cache.contains_key(&1);
        let _ = cache.entry_count();
    }
}

impl Expiry<u32, u32> for PeekingExpiry {
    fn expire_after_create(&self, _key: &u32, _value: &u32) -> Option<Duration> {
        self.use_cache();
        Some(Duration::from_secs(60))
    }

    fn expire_after_update(
        &self,
        _key: &u32,
        _value: &u32,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        self.use_cache();
        Some(Duration::from_secs(30))
    }

    fn expire_after_read(
        &self,
        _key: &u32,
        _value: &u32,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        self.use_cache();
        remaining
    }
}

/// `weigher` docs: "Called on every insert, without any lock held"; `Expiry`
/// docs: "The hooks run without any lock of the cache held".
#[test]
fn weigher_and_expiry_hooks_may_read_the_cache() {
    let clock = MockClock::new();
    let handle: Handle<u32> = Handle::new();
    let weighed = Arc::new(AtomicUsize::new(0));
    let (h, n) = (handle.share(), weighed.clone());
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .num_shards(1)
        .weigher(move |_k: &u32, _v: &u32| {
            let cache = h.get().expect("set before use");
            let _ = cache.peek(&0);
            let _ = cache.weighted_size();
            n.fetch_add(1, SeqCst);
            1
        })
        .expire_after(PeekingExpiry(handle.share()))
        .clock(clock.clone())
        .build()
        .unwrap();
    handle.set(&cache);

    let c = cache.clone();
    within("hooks reading their own cache", move || {
        c.insert(0, 0); // weigher + create hook
        c.insert(0, 1); // weigher + update hook
        assert_eq!(c.get(&0), Some(1)); // read hook
        assert_eq!(c.get_with(1, || 1), 1); // loader's insert: weigher + create
    });
    assert_eq!(weighed.load(SeqCst), 3);
    // The update hook's 30 s applies to key 0, the create hook's 60 s to key 1.
    clock.advance(Duration::from_secs(31));
    assert_eq!((cache.peek(&0), cache.peek(&1)), (None, Some(1)));
    cache.check_invariants();
    handle.clear();
}

/// Runs `f` with the `n + 1`-th hash on this thread panicking; fails unless
/// it did.
fn with_fuse<T>(n: i64, f: impl FnOnce() -> T) {
    assert!(fused::lit(n, f).0.is_err(), "the fuse went off");
}

fn fused_cache() -> Cache<Fused, u32> {
    Cache::builder()
        .max_capacity(10_000)
        .num_shards(1)
        .build()
        .unwrap()
}

#[test]
fn a_key_hash_panicking_while_the_table_grows_loses_nothing() {
    let cache = fused_cache();
    for k in 0..576 {
        cache.insert(Fused(k), k); // the table's first size holds 576 ids
    }
    // One hash picks the shard; the 577th insert then grows the table and
    // hashes the keys already held again: the 100th of them panics.
    with_fuse(1 + 100, || cache.insert(Fused(576), 576));
    cache.check_invariants();
    let found = (0..577).filter(|&k| cache.contains_key(&Fused(k))).count();
    assert_eq!(found, 576, "every key held before is still found");
    assert_eq!(cache.entry_count(), 576);
    cache.insert(Fused(576), 576);
    assert_eq!(cache.entry_count(), 577);
    cache.check_invariants();
}

#[test]
fn a_key_hash_panicking_while_an_entry_is_removed_loses_nothing() {
    let cache = fused_cache();
    for k in 0..10 {
        cache.insert(Fused(k), k);
    }
    // Picking the shard and finding key 3 take two hashes; the third, of the
    // entry moved into 3's place, panics.
    with_fuse(2, || cache.remove(&Fused(3)));
    cache.check_invariants();
    let found = (0..10).filter(|&k| cache.contains_key(&Fused(k))).count() as u64;
    assert_eq!(cache.entry_count(), found, "every entry counted is found");
    // Later well-behaved work keeps the bound.
    for k in 100..20_100 {
        cache.insert(Fused(k), k);
        if k % 3 == 0 {
            cache.remove(&Fused(k - 50));
        }
    }
    assert!(cache.entry_count() <= 10_000);
    cache.check_invariants();
}

#[test]
fn a_key_hash_panicking_in_invalidate_entries_if_loses_no_notification() {
    // The first ten hashes of the doomed keys run unlocked; the removals
    // then hash again under the lock: a panic at each hash in turn, before
    // any entry was removed and after some were.
    for fuse in 1..20 {
        let notified = Arc::new(AtomicUsize::new(0));
        let cache: Cache<Fused, u32> = {
            let notified = notified.clone();
            Cache::builder()
                .max_capacity(10_000)
                .num_shards(1)
                .eviction_listener(move |_, _, _| {
                    notified.fetch_add(1, SeqCst);
                })
                .build()
                .unwrap()
        };
        for k in 0..10 {
            cache.insert(Fused(k), k);
        }
        with_fuse(fuse, || cache.invalidate_entries_if(|_, _| true));
        cache.check_invariants();
        assert_eq!(
            cache.entry_count() + notified.load(SeqCst) as u64,
            10,
            "fuse {fuse}: every entry is held or was notified"
        );
        cache.invalidate_entries_if(|_, _| true);
        assert_eq!((cache.entry_count(), notified.load(SeqCst)), (0, 10));
    }
}

#[test]
fn a_key_hash_panicking_while_expired_entries_are_reaped_loses_nothing() {
    let notified = Arc::new(AtomicUsize::new(0));
    let clock = MockClock::new();
    let cache: Cache<Fused, u32> = {
        let notified = notified.clone();
        Cache::builder()
            .max_capacity(10_000)
            .num_shards(1)
            .time_to_live(Duration::from_secs(1))
            .clock(clock.clone())
            .eviction_listener(move |_, _, _| {
                notified.fetch_add(1, SeqCst);
            })
            .build()
            .unwrap()
    };
    for k in 0..10 {
        cache.insert(Fused(k), k);
    }
    clock.advance(Duration::from_secs(2));
    // The reap takes the ten expired entries off the timing wheel in one
    // batch and hashes each key to unlink it: the fourth hash panics.
    with_fuse(3, || cache.run_pending_tasks());
    cache.check_invariants();
    assert_eq!(
        cache.entry_count() + notified.load(SeqCst) as u64,
        10,
        "every entry is held or was notified"
    );
    cache.run_pending_tasks();
    assert_eq!((cache.entry_count(), notified.load(SeqCst)), (0, 10));
    cache.check_invariants();
}

#[test]
fn a_key_hash_panicking_while_an_insert_evicts_loses_no_notification() {
    // A heavy entry evicts six light ones, hashing victims' keys under
    // the shard lock (for the policy's ghosts and to unlink them): a panic
    // at each of the insert's hashes after the first (which picks the
    // shard) in turn. The new key goes in before anything is evicted, and
    // may be evicted itself: a panic in the policy's hashes is caught and
    // raised once the insert has finished.
    for fuse in 1..8 {
        let notified: Arc<Mutex<Vec<u32>>> = Arc::default();
        let cache: Cache<Fused, u32> = {
            let notified = notified.clone();
            Cache::builder()
                .max_capacity(10)
                .num_shards(1)
                .weigher(|_, v: &u32| *v)
                .eviction_listener(move |k: Arc<Fused>, _, _| notified.lock().unwrap().push(k.0))
                .build()
                .unwrap()
        };
        for k in 0..10 {
            cache.insert(Fused(k), 1);
        }
        with_fuse(fuse, || cache.insert(Fused(10), 6));
        let held = (0..11).filter(|&k| cache.contains_key(&Fused(k))).count();
        assert_eq!(cache.entry_count(), held as u64, "fuse {fuse}");
        let notified = notified.lock().unwrap().clone();
        for k in 0..11 {
            let times = notified.iter().filter(|&&n| n == k).count();
            assert_eq!(
                usize::from(cache.contains_key(&Fused(k))) + times,
                1,
                "fuse {fuse}: key {k} is held or was notified, once ({notified:?})"
            );
        }
        // The next write evicts what the panic left over the bound.
        cache.insert(Fused(11), 1);
        assert!(cache.weighted_size() <= 10, "fuse {fuse}");
        cache.check_invariants();
    }
}

/// Armed: the next hash of a [`Tripwire`] on the maintenance thread panics.
static TRIPWIRE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A key whose `Hash` panics once on the `larder-maintenance` thread, when
/// [`TRIPWIRE`] is armed: that thread hashes a key to reap its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tripwire(u32);

impl std::hash::Hash for Tripwire {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        if thread::current().name() == Some("larder-maintenance") {
            assert!(!TRIPWIRE.swap(false, SeqCst), "hash of {} refused", self.0);
        }
        self.0.hash(h);
    }
}

/// The maintenance thread reaps an idle cache for as long as the cache
/// lives: a pass that panics (here a key's `Hash`) is not its end.
#[test]
fn the_maintenance_thread_outlives_a_panicking_pass() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cache: Cache<Tripwire, u32> = Cache::builder()
        .eviction_listener(move |k: Arc<Tripwire>, _, cause| {
            let name = thread::current().name().map(str::to_string);
            let _ = tx.lock().unwrap().send((k.0, cause, name));
        })
        .build()
        .unwrap();
    TRIPWIRE.store(true, SeqCst);
    cache.insert_with_ttl(Tripwire(1), 1, Duration::from_millis(1));
    let (key, cause, name) = rx
        .recv_timeout(TIMEOUT)
        .expect("the entry was reaped by a later pass");
    assert!(!TRIPWIRE.load(SeqCst), "a pass panicked first");
    assert_eq!((key, cause), (1, RemovalCause::Expired));
    assert_eq!(name.as_deref(), Some("larder-maintenance"));
    cache.check_invariants();
}

std::thread_local! {
    /// Clones left on this thread before [`Brittle`]'s clone panics
    /// (negative: never).
    static SNAP: std::cell::Cell<i64> = const { std::cell::Cell::new(-1) };
}

/// A key whose `Clone` panics once, at a chosen call on this thread: a
/// load clones its key to register its flight.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Brittle(u32);

impl Clone for Brittle {
    fn clone(&self) -> Self {
        SNAP.with(|snap| {
            let left = snap.get();
            if left >= 0 {
                snap.set(left - 1);
                assert!(left != 0, "clone of {} refused", self.0);
            }
        });
        Brittle(self.0)
    }
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

#[test]
fn a_key_clone_panicking_in_get_with_leaves_no_flight_behind() {
    // Whichever of the key's clones panics, the next load of the key leads
    // at once: it finds no flight that nobody will ever end.
    for n in 0..8 {
        let cache: Cache<Brittle, u32> = Cache::new(100);
        SNAP.with(|snap| snap.set(n));
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| cache.get_with(Brittle(1), || 1)));
        SNAP.with(|snap| snap.set(-1));
        if outcome.is_ok() {
            break; // fewer than n + 1 clones: every one was tried
        }
        let mut next = std::pin::pin!(cache.get_with_async(Brittle(1), async { 2 }));
        assert_eq!(
            poll_once(next.as_mut()),
            std::task::Poll::Ready(2),
            "clone {n} panicked: the next load must not wait"
        );
        cache.check_invariants();
    }
}

#[test]
fn a_key_hash_panicking_inside_the_policy_leaves_the_shard_consistent() {
    // A cache of 200 starts with a window of 2: one key back from the main
    // space's ghost takes it to none, below 1%, where new keys duel on
    // arrival. Re-inserting the keys just evicted brings such votes; each
    // fresh key between them is inserted with its second hash (the first
    // picks the shard) panicking, somewhere in the policy's work: its duel,
    // on arrival or as the window's candidate. Weighted, a duel on arrival
    // takes the new id out of the window first; unweighted, the policy
    // hands the shard the victim's hash, which the shard needs to unlink it.
    for weighted in [true, false] {
        within("inserts with panicking hashes", move || {
            fill_with_panicking_hashes(weighted)
        });
    }
}

fn fill_with_panicking_hashes(weighted: bool) {
    let evicted: Arc<Mutex<Vec<u32>>> = Arc::default();
    let notified = Arc::new(AtomicUsize::new(0));
    let cache: Cache<Fused, u32> = {
        let (evicted, notified) = (evicted.clone(), notified.clone());
        let builder = Cache::builder()
            .max_capacity(200)
            .num_shards(1)
            .eviction_listener(move |k: Arc<Fused>, _, _| {
                evicted.lock().unwrap().push(k.0);
                notified.fetch_add(1, SeqCst);
            });
        let builder = if weighted {
            builder.weigher(|_, _: &u32| 1)
        } else {
            builder
        };
        builder.build().unwrap()
    };
    let inserts = std::cell::Cell::new(0);
    let insert = |k: u32| {
        inserts.set(inserts.get() + 1);
        cache.insert(Fused(k), k);
    };
    for k in 0..200 {
        insert(k);
    }
    for k in 200..400 {
        let back = evicted.lock().unwrap().pop();
        if let Some(back) = back {
            insert(back);
        }
        with_fuse(1, || insert(k));
        let check = || {
            let held = cache.entry_count();
            assert!(held <= 200, "weighted {weighted}, key {k}: {held} entries");
            cache.check_invariants();
            // Each value inserted is held, or was notified.
            let accounted = held as usize + notified.load(SeqCst);
            assert_eq!(accounted, inserts.get(), "weighted {weighted}, key {k}");
        };
        check();
        // Later well-behaved writes keep the shard consistent and within
        // its bound.
        insert(1000 + k);
        check();
    }
}

#[test]
fn a_key_hash_panicking_in_invalidate_entries_if_during_a_load_loses_no_notification() {
    // As above, with a load of another key under way: each removal then
    // also marks the removed key's flight, if any, which hashes the key
    // once more under the lock.
    for fuse in 1..30 {
        let notified = Arc::new(AtomicUsize::new(0));
        let cache: Cache<Fused, u32> = {
            let notified = notified.clone();
            Cache::builder()
                .max_capacity(10_000)
                .num_shards(1)
                .eviction_listener(move |_, _, _| {
                    notified.fetch_add(1, SeqCst);
                })
                .build()
                .unwrap()
        };
        for k in 0..10 {
            cache.insert(Fused(k), k);
        }
        let (started, loading) = mpsc::channel();
        let (finish, finished) = mpsc::channel::<()>();
        let loader = {
            let cache = cache.clone();
            thread::spawn(move || {
                cache.get_with(Fused(100), || {
                    started.send(()).unwrap();
                    finished.recv_timeout(TIMEOUT).unwrap();
                    100
                })
            })
        };
        loading.recv_timeout(TIMEOUT).unwrap();
        with_fuse(fuse, || cache.invalidate_entries_if(|k, _| k.0 < 10));
        finish.send(()).unwrap();
        assert_eq!(loader.join().unwrap(), 100);
        cache.check_invariants();
        let held = (0..10).filter(|&k| cache.contains_key(&Fused(k))).count();
        assert_eq!(
            held + notified.load(SeqCst),
            10,
            "fuse {fuse}: every entry is held or was notified"
        );
    }
}

#[test]
fn a_key_hash_panicking_in_get_with_leaves_no_flight_behind() {
    // Whichever of the key's hashes panics (the shard's, the flight
    // table's as the flight begins and as it ends), the next load of the
    // key, once its value is gone, leads at once: it finds no flight that
    // nobody will ever end, nor an ended one whose value it would take.
    for n in 0..16 {
        let cache: Cache<Fused, u32> = fused_cache();
        let (outcome, _) = fused::lit(n, || cache.get_with(Fused(1), || 1));
        if outcome.is_ok() {
            assert!(n > 3, "the fuse went off for the first hashes");
            break; // fewer than n + 1 hashes: every one was tried
        }
        cache.invalidate(&Fused(1));
        let mut next = std::pin::pin!(cache.get_with_async(Fused(1), async { 2 }));
        assert_eq!(
            poll_once(next.as_mut()),
            std::task::Poll::Ready(2),
            "hash {n} panicked: the next load must lead"
        );
        assert_eq!(cache.get(&Fused(1)), Some(2), "hash {n} panicked");
        cache.check_invariants();
    }
}

#[test]
fn a_key_hash_panicking_as_a_panicking_loaders_flight_ends_neither_aborts_nor_blocks() {
    // The flight of a loader that panics is ended as the panic unwinds,
    // which hashes the key again: a second panic there, during the
    // unwinding, aborted the whole process.
    for n in 0..8 {
        let cache: Cache<Fused, u32> = fused_cache();
        let (outcome, left) = fused::lit(n, || cache.get_with(Fused(1), || panic!("loader down")));
        assert!(outcome.is_err(), "the loader or a hash panicked");
        if left >= 0 {
            break; // the fuse outlasted every hash: every one was tried
        }
        let mut next = std::pin::pin!(cache.get_with_async(Fused(1), async { 2 }));
        assert_eq!(
            poll_once(next.as_mut()),
            std::task::Poll::Ready(2),
            "hash {n} panicked: the next load must lead"
        );
        cache.check_invariants();
    }
}

#[test]
fn a_weigher_loading_the_key_it_weighs_panics_instead_of_hanging() {
    // The weigher weighs a loaded value while the load's flight is still
    // open: loading that same key from it would wait for itself. The
    // blocking loaders said so with a panic; an async leader's flight was
    // marked as led by no thread then, and the weigher waited for ever.
    let handle: Handle<u32> = Handle::new();
    let h = handle.share();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .weigher(move |k: &u32, _v: &u32| {
            if *k == 1 {
                let cache = h.get().expect("set before use");
                cache.get_with(1, || 0);
            }
            1
        })
        .build()
        .unwrap();
    handle.set(&cache);
    let c = cache.clone();
    let [blocking, awaiting, computing, computing_async] =
        within("a weigher loading its own key", move || {
            let blocking = panic::catch_unwind(AssertUnwindSafe(|| c.get_with(1, || 1)));
            let awaiting = panic::catch_unwind(AssertUnwindSafe(|| {
                let mut load = std::pin::pin!(c.get_with_async(1, async { 1 }));
                poll_once(load.as_mut())
            }));
            let computing = panic::catch_unwind(AssertUnwindSafe(|| {
                c.entry(1).and_upsert_with(|_| 1);
            }));
            let computing_async = panic::catch_unwind(AssertUnwindSafe(|| {
                let mut compute = std::pin::pin!(c.entry(1).and_upsert_with_async(|_| async { 1 }));
                poll_once(compute.as_mut())
            }));
            [
                blocking.is_err(),
                awaiting.is_err(),
                computing.is_err(),
                computing_async.is_err(),
            ]
        });
    assert_eq!(
        (blocking, awaiting, computing, computing_async),
        (true, true, true, true),
        "every form panics (get_with, get_with_async, and_upsert_with, and_upsert_with_async)"
    );
    assert_eq!(cache.get_with(2, || 2), 2, "the cache is still usable");
    cache.check_invariants();
    handle.clear();
}

std::thread_local! {
    /// The [`Spoiled`] key whose `Hash` panics on this thread, if any.
    static SPOILED: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// A key whose `Hash` panics on every call while it is [`SPOILED`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Spoiled(u32);

impl std::hash::Hash for Spoiled {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        assert!(SPOILED.get() != Some(self.0), "hash of {} refused", self.0);
        self.0.hash(h);
    }
}

#[test]
fn a_key_hash_panicking_while_its_shard_is_reaped_leaves_the_other_shards_reaped() {
    // Each round's cache hashes with fresh seeds, so the spoiled key lands
    // in the first of the two shards in about half of them: a pass that
    // stopped at the panic would then reap nothing.
    for round in 0..20 {
        let notified = Arc::new(AtomicUsize::new(0));
        let clock = MockClock::new();
        let cache: Cache<Spoiled, u32> = {
            let notified = notified.clone();
            Cache::builder()
                .max_capacity(10_000)
                .num_shards(2)
                .time_to_live(Duration::from_secs(1))
                .clock(clock.clone())
                .eviction_listener(move |_, _, cause| {
                    assert_eq!(cause, RemovalCause::Expired);
                    notified.fetch_add(1, SeqCst);
                })
                .build()
                .unwrap()
        };
        for k in 0..200 {
            cache.insert(Spoiled(k), k);
        }
        clock.advance(Duration::from_secs(2));
        SPOILED.set(Some(0));
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| cache.run_pending_tasks()));
        SPOILED.set(None);
        assert!(outcome.is_err(), "round {round}: the spoiled hash panicked");
        cache.check_invariants();
        let reaped = notified.load(SeqCst) as u64;
        // The spoiled key's shard reaps its 100-odd keys in one batch,
        // which goes back on the wheel whole; the other shard's are reaped.
        assert!(
            reaped > 0 && reaped < 200,
            "round {round}: the other shard was reaped ({reaped} of 200)"
        );
        assert_eq!(cache.entry_count() + reaped, 200, "round {round}");
        cache.run_pending_tasks();
        assert_eq!((cache.entry_count(), notified.load(SeqCst)), (0, 200));
        cache.check_invariants();
    }
}

/// A key whose `Hash` panics every call once stored is a logic error (as
/// for `std`'s `HashMap`), which larder keeps to that key's shard: the
/// shard stays consistent and reads work, but once it is full every new
/// key's insert meets the key as the policy's victim and raises the panic
/// (the insert finishes first, and the shard holds at most one entry over
/// its bound until the next write), until `invalidate_all`, which hashes
/// no key, removes it.
#[test]
fn a_key_hash_that_always_panics_stays_in_its_shard_until_invalidate_all() {
    let cache: Cache<Spoiled, u32> = Cache::builder()
        .max_capacity(10)
        .num_shards(1)
        .build()
        .unwrap();
    cache.insert(Spoiled(0), 0);
    SPOILED.set(Some(0));
    let insert = |k: u32| panic::catch_unwind(AssertUnwindSafe(|| cache.insert(Spoiled(k), k)));
    // Room for nine more: no eviction, no panic.
    for k in 1..10 {
        assert!(insert(k).is_ok(), "key {k} fits");
    }
    let panicked = (10..110).filter(|&k| insert(k).is_err()).count();
    assert_eq!(
        panicked, 100,
        "every new key's eviction met the spoiled key"
    );
    assert!(cache.entry_count() <= 11, "{}", cache.entry_count());
    // Reads still work: each key found holds its own value, and the keys
    // found are all the shard holds but the spoiled one.
    let found = (1..110)
        .filter(|&k| {
            cache
                .get(&Spoiled(k))
                .inspect(|&v| assert_eq!(v, k))
                .is_some()
        })
        .count();
    assert_eq!(found as u64 + 1, cache.entry_count());
    cache.invalidate_all();
    assert_eq!(cache.entry_count(), 0);
    let panicked = (200..300).filter(|&k| insert(k).is_err()).count();
    SPOILED.set(None);
    assert_eq!(panicked, 0, "the spoiled key is gone");
    assert_eq!(cache.entry_count(), 10);
    cache.check_invariants();
}
