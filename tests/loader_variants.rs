//! The loader variants beside `get_with` / `try_get_with`:
//! `optionally_get_with` (and its `_async` form), whose `None` is shared
//! with its waiters and never cached, and the `_by_ref` forms, which copy
//! the key only on a miss.
//!
//! Every test that could hang on a bug (a lost wake-up, a flight left
//! behind) runs its threads through [`parallel`], which fails the test
//! after [`TIMEOUT`] instead of blocking CI.

use std::{
    hash::{Hash, Hasher},
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Barrier,
        atomic::{AtomicUsize, Ordering::SeqCst},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

#[path = "support/threads.rs"]
mod threads;

use larder::Cache;
use threads::{panic_message, parallel};

/// How long any group of threads may take before the test calls it a hang.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Called inside a loader: holds it until `n` lookups have missed (so the
/// other callers have reached the cache and are about to wait on this
/// flight), then a little longer so they get from their miss to the wait.
/// Never blocks more than a few seconds, so a bug cannot turn it into a hang.
fn hold_until_misses<K, V>(cache: &Cache<K, V>, n: u64)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.stats().misses() < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(100));
}

/// (hits, misses, load successes, load failures).
fn counts<K, V>(cache: &Cache<K, V>) -> (u64, u64, u64, u64)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let s = cache.stats();
    (s.hits(), s.misses(), s.load_successes(), s.load_failures())
}

#[derive(Debug, PartialEq)]
struct DbDown;

#[test]
fn an_optional_load_runs_once_and_its_none_is_shared_and_not_cached() {
    const THREADS: usize = 12;
    let cache: Cache<u32, u64> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let results = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(
            TIMEOUT,
            "optionally_get_with on one key",
            THREADS,
            move |_| {
                start.wait();
                cache.optionally_get_with(1, || {
                    calls.fetch_add(1, SeqCst);
                    hold_until_misses(&cache, THREADS as u64);
                    None
                })
            },
        )
    };
    assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
    assert!(results.iter().all(Option::is_none), "{results:?}");
    assert!(!cache.contains_key(&1), "a None is not cached");
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(counts(&cache), (0, THREADS as u64, 1, 0));

    // The next call runs its init again, and caches what it finds.
    assert_eq!(cache.optionally_get_with(1, || Some(5)), Some(5));
    assert_eq!(cache.peek(&1), Some(5));
    assert_eq!(cache.optionally_get_with(1, || unreachable!()), Some(5));
    assert_eq!(counts(&cache), (1, THREADS as u64 + 1, 2, 0));
}

#[test]
fn an_optional_load_shares_its_value_and_caches_it() {
    const THREADS: usize = 8;
    let cache: Cache<u32, Arc<String>> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let results = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(
            TIMEOUT,
            "optionally_get_with finding a value",
            THREADS,
            move |i| {
                start.wait();
                cache.optionally_get_with(7, || {
                    calls.fetch_add(1, SeqCst);
                    hold_until_misses(&cache, THREADS as u64);
                    Some(Arc::new(format!("loaded by {i}")))
                })
            },
        )
    };
    assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
    let first = results[0].as_ref().expect("a value");
    assert!(
        results
            .iter()
            .all(|v| v.as_ref().is_some_and(|v| Arc::ptr_eq(v, first))),
        "every caller got the one loaded value: {results:?}"
    );
    assert_eq!(cache.get(&7).as_ref(), Some(first), "and it is cached");
}

#[test]
fn a_none_counts_as_a_miss_and_a_successful_load() {
    let cache: Cache<u32, u32> = Cache::new(10);
    assert_eq!(cache.optionally_get_with(1, || None), None);
    assert_eq!(counts(&cache), (0, 1, 1, 0));
    assert_eq!(cache.optionally_get_with(1, || None), None);
    assert_eq!(counts(&cache), (0, 2, 2, 0), "nothing cached: a miss again");
    assert_eq!(cache.optionally_get_with(1, || Some(3)), Some(3));
    assert_eq!(counts(&cache), (0, 3, 3, 0));
    assert_eq!(cache.optionally_get_with(1, || None), Some(3));
    assert_eq!(counts(&cache), (1, 3, 3, 0), "a hit runs no init");
    // A panic is a failure, as for get_with.
    let unwound = panic::catch_unwind(AssertUnwindSafe(|| {
        cache.optionally_get_with(2, || panic!("bug"))
    }));
    assert!(unwound.is_err());
    assert_eq!(counts(&cache), (1, 4, 3, 1));
    assert_eq!(cache.stats().loads(), 4);
}

/// Starts a `try_get_with(1)` (if `optional` is false) or an
/// `optionally_get_with(1)` on a thread, whose init fails or returns `None`
/// once `waiters` more lookups have missed. Returns when its init has begun.
fn held_failing_load(
    cache: &Cache<u32, u64>,
    optional: bool,
    waiters: u64,
) -> thread::JoinHandle<()> {
    let (started, load_started) = mpsc::channel::<()>();
    let cache = cache.clone();
    let leader = thread::spawn(move || {
        let init = || {
            started.send(()).unwrap();
            hold_until_misses(&cache, 1 + waiters);
        };
        if optional {
            assert_eq!(
                cache.optionally_get_with(1, || {
                    init();
                    None
                }),
                None
            );
        } else {
            let err = cache.try_get_with(1, || {
                init();
                Err::<u64, _>(DbDown)
            });
            assert_eq!(*err.unwrap_err(), DbDown);
        }
    });
    load_started
        .recv_timeout(TIMEOUT)
        .expect("the leader's init started");
    leader
}

#[test]
fn a_none_is_not_shared_with_get_with_or_try_get_with_waiters() {
    let cache: Cache<u32, u64> = Cache::new(100);
    let leader = held_failing_load(&cache, true, 3);
    let calls = Arc::new(AtomicUsize::new(0));
    let results = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(TIMEOUT, "waiters of three kinds", 3, move |i| {
            let init = || {
                calls.fetch_add(1, SeqCst);
                42
            };
            match i {
                // Has no None to return: loads once the leader is done.
                0 => Some(cache.get_with(1, init)),
                1 => cache.try_get_with(1, || Ok::<_, DbDown>(init())).ok(),
                // Shares the leader's None without running its init.
                _ => cache.optionally_get_with(1, || panic!("must share the None")),
            }
        })
    };
    leader.join().expect("the leader got None");
    assert_eq!(results, [Some(42), Some(42), None]);
    assert_eq!(
        calls.load(SeqCst),
        1,
        "one of the get_with / try_get_with waiters loaded, the other shared its value"
    );
    assert_eq!(cache.peek(&1), Some(42));
}

#[test]
fn an_optional_waiter_loads_by_itself_after_a_try_get_with_error() {
    let cache: Cache<u32, u64> = Cache::new(100);
    let leader = held_failing_load(&cache, false, 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let got = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(TIMEOUT, "an optional waiter", 1, move |_| {
            cache.optionally_get_with(1, || {
                calls.fetch_add(1, SeqCst);
                Some(8)
            })
        })
    };
    leader.join().expect("the leader got its error");
    assert_eq!(got, [Some(8)]);
    assert_eq!(calls.load(SeqCst), 1, "the waiter ran its own init");
    assert_eq!(cache.peek(&1), Some(8));
}

#[test]
fn a_panicking_optional_init_hands_the_load_to_one_waiter() {
    const WAITERS: usize = 8;
    let cache: Cache<u32, u64> = Cache::new(100);
    let (started_tx, started_rx) = mpsc::channel();
    let leader = {
        let cache = cache.clone();
        thread::spawn(move || {
            panic::catch_unwind(AssertUnwindSafe(|| {
                cache.optionally_get_with(3, || {
                    started_tx.send(()).unwrap();
                    hold_until_misses(&cache, 1 + WAITERS as u64);
                    panic!("loader exploded")
                })
            }))
            .map_err(|p| panic_message(&*p))
        })
    };
    started_rx
        .recv_timeout(TIMEOUT)
        .expect("the leader's init started");
    let calls = Arc::new(AtomicUsize::new(0));
    let results = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(TIMEOUT, "waiters of a panicking init", WAITERS, move |_| {
            cache.optionally_get_with(3, || {
                calls.fetch_add(1, SeqCst);
                thread::sleep(Duration::from_millis(20));
                None
            })
        })
    };
    let leader = leader.join().expect("caught");
    assert_eq!(
        leader,
        Err("loader exploded".to_string()),
        "the panic went to the leader's caller"
    );
    assert_eq!(calls.load(SeqCst), 1, "exactly one waiter ran its own init");
    assert!(
        results.iter().all(Option::is_none),
        "and shared its None: {results:?}"
    );
    assert!(!cache.contains_key(&3));
    assert_eq!(counts(&cache), (0, 1 + WAITERS as u64, 1, 1));
}

/// Runs `write` on this thread while an `optionally_get_with(1)` whose init
/// returns `found` is under way. Returns what the load returned and what
/// the cache holds for key 1 afterwards.
fn optional_load_overlapping(
    found: Option<u32>,
    write: impl FnOnce(&Cache<u32, u32>),
) -> (Option<u32>, Option<u32>) {
    let cache: Cache<u32, u32> = Cache::new(100);
    let (started, load_started) = mpsc::channel::<()>();
    let (go, may_finish) = mpsc::channel::<()>();
    let loader = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.optionally_get_with(1, || {
                started.send(()).unwrap();
                may_finish.recv_timeout(TIMEOUT).unwrap();
                found
            })
        })
    };
    load_started
        .recv_timeout(TIMEOUT)
        .expect("the loader started");
    write(&cache);
    go.send(()).unwrap();
    let loaded = loader.join().expect("the loader returned");
    (loaded, cache.peek(&1))
}

#[test]
fn a_write_during_an_optional_load_keeps_its_value_out_of_the_cache() {
    // Alone, the load caches its value.
    assert_eq!(
        optional_load_overlapping(Some(1), |_| {}),
        (Some(1), Some(1))
    );
    // The insert wins: the load's older value goes to its caller only.
    let insert = |c: &Cache<u32, u32>| c.insert(1, 2);
    assert_eq!(
        optional_load_overlapping(Some(1), insert),
        (Some(1), Some(2))
    );
    // The cache-aside update: an invalidation is not undone by the load.
    let invalidate = |c: &Cache<u32, u32>| c.invalidate(&1);
    assert_eq!(
        optional_load_overlapping(Some(1), invalidate),
        (Some(1), None)
    );
    // A None neither caches nor removes anything: the insert stays.
    assert_eq!(optional_load_overlapping(None, insert), (None, Some(2)));
}

#[tokio::test]
async fn optionally_get_with_async_shares_none_with_its_waiters() {
    const TASKS: usize = 8;
    let cache: Cache<u32, u64> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.spawn(async move {
            let c = cache.clone();
            cache
                .optionally_get_with_async(1, async move {
                    calls.fetch_add(1, SeqCst);
                    // Yields (the runtime has one thread) until every task
                    // has reached the cache, or gives up after a while.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while c.stats().misses() < TASKS as u64 && Instant::now() < deadline {
                        tokio::task::yield_now().await;
                    }
                    None
                })
                .await
        });
    }
    let results = tokio::time::timeout(TIMEOUT, tasks.join_all())
        .await
        .expect("all tasks done (hang)");
    assert_eq!(results, vec![None; TASKS]);
    assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
    assert!(!cache.contains_key(&1));
    assert_eq!(counts(&cache), (0, TASKS as u64, 1, 0));
    let found = cache.optionally_get_with_async(1, async { Some(9) }).await;
    assert_eq!(found, Some(9));
    assert_eq!(cache.peek(&1), Some(9), "a value is cached");
}

/// A key that counts its copies: `clone`, and so `to_owned` of a
/// `&CountedKey`, adds one to the counter all copies of it share. Hashed
/// and compared by `id` alone.
#[derive(Debug)]
struct CountedKey {
    id: u32,
    copies: Arc<AtomicUsize>,
}

impl CountedKey {
    fn new(id: u32, copies: &Arc<AtomicUsize>) -> Self {
        CountedKey {
            id,
            copies: copies.clone(),
        }
    }
}

impl Clone for CountedKey {
    fn clone(&self) -> Self {
        self.copies.fetch_add(1, SeqCst);
        CountedKey::new(self.id, &self.copies)
    }
}

impl PartialEq for CountedKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for CountedKey {}

impl Hash for CountedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

/// A loader's init, as the `_by_ref` loaders below take it: `None` for no
/// value.
type Init<'a> = &'a mut dyn FnMut() -> Option<u32>;

/// The `_by_ref` loaders, each as one function of the cache, a borrowed
/// key and an init (`get_with_by_ref` expects a value, `try_get_with_by_ref`
/// makes `None` an error).
type ByRef = fn(&Cache<CountedKey, u32>, &CountedKey, Init<'_>) -> Option<u32>;

const BY_REF: [(&str, ByRef); 6] = [
    ("get_with_by_ref", |c, k, init| {
        Some(c.get_with_by_ref(k, || init().expect("get_with needs a value")))
    }),
    ("try_get_with_by_ref", |c, k, init| {
        c.try_get_with_by_ref(k, || init().ok_or(DbDown)).ok()
    }),
    ("optionally_get_with_by_ref", |c, k, init| {
        c.optionally_get_with_by_ref(k, init)
    }),
    ("get_with_by_ref_async", |c, k, init| {
        let init = async { init().expect("get_with needs a value") };
        Some(ready(c.get_with_by_ref_async(k, init)))
    }),
    ("try_get_with_by_ref_async", |c, k, init| {
        ready(c.try_get_with_by_ref_async(k, async { init().ok_or(DbDown) })).ok()
    }),
    ("optionally_get_with_by_ref_async", |c, k, init| {
        ready(c.optionally_get_with_by_ref_async(k, async { init() }))
    }),
];

/// Polls `f` once: the loads above never wait (one thread, no other
/// caller), so their futures finish on the first poll.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a load with no other caller waited"),
    }
}

#[test]
fn a_by_ref_hit_copies_no_key_and_a_miss_copies_it_once_more_than_an_owned_load() {
    for (what, load) in BY_REF {
        let copies = Arc::new(AtomicUsize::new(0));
        let cache: Cache<CountedKey, u32> = Cache::new(100);
        // What an owned load copies inside (its flight's keys).
        let owned_load = cache.get_with(CountedKey::new(1, &copies), || 10);
        assert_eq!(owned_load, 10);
        let owned_miss = copies.swap(0, SeqCst);

        let key = CountedKey::new(2, &copies);
        assert_eq!(load(&cache, &key, &mut || Some(20)), Some(20), "{what}");
        assert_eq!(
            copies.swap(0, SeqCst),
            owned_miss + 1,
            "{what}: a miss copies the key once (to_owned), then loads as get_with does"
        );
        assert_eq!(cache.peek(&key), Some(20), "{what}: cached under the copy");
        for _ in 0..3 {
            assert_eq!(load(&cache, &key, &mut || Some(21)), Some(20), "{what}");
        }
        assert_eq!(copies.load(SeqCst), 0, "{what}: a hit copies nothing");
        assert_eq!(cache.stats().loads(), 2, "{what}: the hits loaded nothing");
    }
}

#[test]
fn a_by_ref_load_counts_one_hit_or_one_miss() {
    let copies = Arc::new(AtomicUsize::new(0));
    for (what, load) in BY_REF {
        let cache: Cache<CountedKey, u32> = Cache::new(100);
        let key = CountedKey::new(1, &copies);
        load(&cache, &key, &mut || Some(1));
        assert_eq!(counts(&cache), (0, 1, 1, 0), "{what}: a miss and a load");
        load(&cache, &key, &mut || Some(2));
        assert_eq!(counts(&cache), (1, 1, 1, 0), "{what}: a hit");
    }
    // An error is a miss and a failed load, a None a miss and an answer.
    let cache: Cache<String, u32> = Cache::new(100);
    let err = cache.try_get_with_by_ref("a", || Err::<u32, _>(DbDown));
    assert_eq!(*err.unwrap_err(), DbDown);
    assert_eq!(counts(&cache), (0, 1, 0, 1));
    assert_eq!(cache.optionally_get_with_by_ref("a", || None), None);
    assert_eq!(counts(&cache), (0, 2, 1, 1));
    assert_eq!(cache.entry_count(), 0);
}

#[test]
fn borrowed_and_owned_callers_share_one_load() {
    const THREADS: usize = 8;
    let cache: Cache<String, Arc<String>> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let results = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(TIMEOUT, "get_with and get_with_by_ref", THREADS, move |i| {
            start.wait();
            let init = || {
                calls.fetch_add(1, SeqCst);
                hold_until_misses(&cache, THREADS as u64);
                Arc::new(format!("loaded by {i}"))
            };
            if i % 2 == 0 {
                cache.get_with_by_ref("k", init)
            } else {
                cache.get_with("k".to_string(), init)
            }
        })
    };
    assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
    assert!(
        results.iter().all(|v| Arc::ptr_eq(v, &results[0])),
        "every caller got the one loaded value: {results:?}"
    );
    assert_eq!(cache.get("k").as_ref(), Some(&results[0]));
}

#[test]
fn borrowed_and_owned_optional_callers_share_one_none() {
    const THREADS: usize = 8;
    let cache: Cache<String, u32> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let results = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(
            TIMEOUT,
            "optional loads by ref and owned",
            THREADS,
            move |i| {
                start.wait();
                let init = || {
                    calls.fetch_add(1, SeqCst);
                    hold_until_misses(&cache, THREADS as u64);
                    None
                };
                if i % 2 == 0 {
                    cache.optionally_get_with_by_ref("k", init)
                } else {
                    cache.optionally_get_with("k".to_string(), init)
                }
            },
        )
    };
    assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
    assert!(results.iter().all(Option::is_none), "{results:?}");
    assert!(!cache.contains_key("k"));
    assert_eq!(cache.optionally_get_with_by_ref("k", || Some(1)), Some(1));
    assert_eq!(cache.peek("k"), Some(1));
}

#[test]
fn a_write_during_a_by_ref_load_keeps_its_value_out_of_the_cache() {
    type Write = fn(&Cache<CountedKey, u32>, CountedKey);
    let writes: [(&str, Write, Option<u32>); 2] = [
        ("insert", |c, k| c.insert(k, 2), Some(2)),
        ("invalidate", |c, k| c.invalidate(&k), None),
    ];
    for (what, load) in BY_REF {
        for (write, apply, kept) in writes {
            let copies = Arc::new(AtomicUsize::new(0));
            let cache: Cache<CountedKey, u32> = Cache::new(100);
            let (started, load_started) = mpsc::channel::<()>();
            let (go, may_finish) = mpsc::channel::<()>();
            let loader = {
                let (cache, key) = (cache.clone(), CountedKey::new(1, &copies));
                thread::spawn(move || {
                    load(&cache, &key, &mut || {
                        started.send(()).unwrap();
                        may_finish.recv_timeout(TIMEOUT).unwrap();
                        Some(1)
                    })
                })
            };
            load_started
                .recv_timeout(TIMEOUT)
                .expect("the loader started");
            apply(&cache, CountedKey::new(1, &copies));
            go.send(()).unwrap();
            let loaded = loader.join().expect("the loader returned");
            assert_eq!(
                loaded,
                Some(1),
                "{what}, {write}: the value goes to its caller"
            );
            let now = cache.peek(&CountedKey::new(1, &copies));
            assert_eq!(
                now, kept,
                "{what}, {write}: the cache keeps the write's outcome"
            );
        }
    }
}
