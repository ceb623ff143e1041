//! Single-flight loading: `get_with` and `try_get_with` under concurrency.
//!
//! Every test that could hang on a bug (a lost wake-up, a deadlock, a flight
//! left behind) runs its threads through [`parallel`] or [`within`], which
//! fail the test after [`TIMEOUT`] instead of blocking CI.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

#[path = "support/threads.rs"]
mod threads;

use larder::{Cache, RemovalCause, clock::MockClock};
use threads::{panic_message, parallel};

/// How long any group of threads may take before the test calls it a hang.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` on its own thread and returns its result, re-raising its panic;
/// fails if it takes longer than [`TIMEOUT`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let f = Mutex::new(Some(f));
    parallel(TIMEOUT, what, 1, move |_| {
        (f.lock().unwrap().take().expect("called once"))()
    })
    .pop()
    .expect("one result")
}

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

#[derive(Debug, PartialEq)]
struct DbDown(usize);

#[derive(Debug, PartialEq)]
struct OtherError;

#[test]
fn loader_runs_once_for_concurrent_callers() {
    const THREADS: usize = 16;
    let cache: Cache<u32, Arc<String>> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let results = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(TIMEOUT, "get_with on one key", THREADS, move |i| {
            start.wait();
            cache.get_with(7, || {
                calls.fetch_add(1, SeqCst);
                hold_until_misses(&cache, THREADS as u64);
                Arc::new(format!("loaded by {i}"))
            })
        })
    };
    assert_eq!(calls.load(SeqCst), 1, "exactly one loader ran");
    assert!(
        results.iter().all(|v| Arc::ptr_eq(v, &results[0])),
        "every caller got the one loaded value: {results:?}"
    );
    assert_eq!(
        cache.get(&7).as_ref(),
        Some(&results[0]),
        "the loaded value is cached"
    );
    let stats = cache.stats();
    assert_eq!(stats.loads(), 1);
    assert_eq!(stats.load_successes(), 1);
    assert_eq!(stats.load_failures(), 0);
}

#[test]
fn loaders_for_different_keys_run_in_parallel() {
    // One shard: keys sharing a shard lock must not serialize their loaders.
    const THREADS: usize = 4;
    for shards in [1, 8] {
        let cache: Cache<usize, usize> = Cache::builder()
            .max_capacity(100)
            .num_shards(shards)
            .build()
            .unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let saw_all = {
            let (cache, running) = (cache.clone(), running.clone());
            parallel(TIMEOUT, "get_with on distinct keys", THREADS, move |i| {
                let mut saw_all = false;
                let v = cache.get_with(i, || {
                    running.fetch_add(1, SeqCst);
                    // Wait (bounded) until every loader is running at once;
                    // serialized loaders would each give up after 3 s.
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while Instant::now() < deadline {
                        if running.load(SeqCst) == THREADS {
                            saw_all = true;
                            break;
                        }
                        thread::sleep(Duration::from_millis(1));
                    }
                    i * 10
                });
                assert_eq!(v, i * 10);
                saw_all
            })
        };
        assert!(
            saw_all.iter().all(|&s| s),
            "with {shards} shard(s), all {THREADS} loaders should run at the same time: {saw_all:?}"
        );
        assert_eq!(cache.stats().loads(), THREADS as u64);
        assert_eq!(cache.entry_count(), THREADS as u64);
    }
}

#[test]
fn failed_load_is_shared_by_waiters_and_not_cached() {
    const THREADS: usize = 8;
    let cache: Cache<u32, u64> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let errors = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(TIMEOUT, "failing try_get_with", THREADS, move |i| {
            start.wait();
            cache
                .try_get_with(1, || {
                    calls.fetch_add(1, SeqCst);
                    hold_until_misses(&cache, THREADS as u64);
                    Err(DbDown(i))
                })
                .expect_err("the loader fails")
        })
    };
    assert_eq!(
        calls.load(SeqCst),
        1,
        "waiters shared the one failure instead of loading again"
    );
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
        "every waiter got the leader's very Arc: {errors:?}"
    );
    assert!(!cache.contains_key(&1), "an error is not cached");
    assert_eq!(cache.entry_count(), 0);
    let stats = cache.stats();
    assert_eq!((stats.load_failures(), stats.load_successes()), (1, 0));

    // The next call loads again rather than replaying the error.
    let again = cache
        .try_get_with(1, || Err::<u64, _>(DbDown(99)))
        .unwrap_err();
    assert_eq!(*again, DbDown(99));
    assert!(!Arc::ptr_eq(&again, &errors[0]));
    assert_eq!(cache.try_get_with(1, || Ok::<_, DbDown>(5)), Ok(5));
    assert_eq!(cache.get(&1), Some(5));
    let stats = cache.stats();
    assert_eq!(
        (stats.load_failures(), stats.load_successes(), stats.loads()),
        (2, 1, 3)
    );
}

#[test]
fn waiter_expecting_another_error_type_loads_by_itself() {
    let cache: Cache<u32, u64> = Cache::new(100);
    let (started_tx, started_rx) = mpsc::channel();
    let leader = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.try_get_with(1, || {
                started_tx.send(()).unwrap();
                // The leader's miss plus the two waiters'.
                hold_until_misses(&cache, 3);
                Err::<u64, _>(DbDown(0))
            })
        })
    };
    started_rx
        .recv_timeout(TIMEOUT)
        .expect("the leader's loader started");
    let other_calls = Arc::new(AtomicUsize::new(0));
    let same_calls = Arc::new(AtomicUsize::new(0));
    let results = {
        let (cache, other_calls, same_calls) =
            (cache.clone(), other_calls.clone(), same_calls.clone());
        parallel(TIMEOUT, "waiters of two error types", 2, move |i| {
            if i == 0 {
                // Cannot use a `DbDown`: must run its own loader.
                let r = cache.try_get_with(1, || {
                    other_calls.fetch_add(1, SeqCst);
                    Ok::<u64, OtherError>(42)
                });
                (r.ok(), None)
            } else {
                // Same error type: shares the leader's failure.
                let r = cache.try_get_with(1, || {
                    same_calls.fetch_add(1, SeqCst);
                    Err::<u64, _>(DbDown(1))
                });
                (None, r.err())
            }
        })
    };
    let leader_err = within("leader join", move || leader.join().unwrap()).unwrap_err();
    assert_eq!(*leader_err, DbDown(0));
    assert_eq!(
        results[0].0,
        Some(42),
        "the other-type waiter got its own value"
    );
    assert_eq!(
        other_calls.load(SeqCst),
        1,
        "the other-type waiter ran its loader"
    );
    let shared = results[1]
        .1
        .as_ref()
        .expect("the same-type waiter got an error");
    assert!(
        Arc::ptr_eq(shared, &leader_err),
        "the same-type waiter got the leader's Arc"
    );
    assert_eq!(
        same_calls.load(SeqCst),
        0,
        "the same-type waiter did not load"
    );
    assert_eq!(cache.get(&1), Some(42));
}

#[test]
fn get_with_waiter_loads_after_the_leader_fails() {
    let cache: Cache<u32, u64> = Cache::new(100);
    let (started_tx, started_rx) = mpsc::channel();
    let leader = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.try_get_with(1, || {
                started_tx.send(()).unwrap();
                hold_until_misses(&cache, 2);
                Err::<u64, _>(DbDown(0))
            })
        })
    };
    started_rx
        .recv_timeout(TIMEOUT)
        .expect("the leader's loader started");
    let calls = Arc::new(AtomicUsize::new(0));
    let got = {
        let (cache, calls) = (cache.clone(), calls.clone());
        within("get_with waiter", move || {
            cache.get_with(1, || {
                calls.fetch_add(1, SeqCst);
                8
            })
        })
    };
    assert_eq!(
        *within("leader join", move || leader.join().unwrap()).unwrap_err(),
        DbDown(0)
    );
    assert_eq!(got, 8);
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(cache.get(&1), Some(8));
}

#[test]
fn panicking_loader_hands_the_load_to_one_waiter() {
    const WAITERS: usize = 8;
    let cache: Cache<u32, usize> = Cache::new(100);
    let (started_tx, started_rx) = mpsc::channel();
    let leader = {
        let cache = cache.clone();
        thread::spawn(move || {
            panic::catch_unwind(AssertUnwindSafe(|| {
                cache.get_with(3, || {
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
        .expect("the leader's loader started");
    let calls = Arc::new(AtomicUsize::new(0));
    let values = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(
            TIMEOUT,
            "waiters of a panicking loader",
            WAITERS,
            move |i| {
                cache.get_with(3, || {
                    calls.fetch_add(1, SeqCst);
                    thread::sleep(Duration::from_millis(20));
                    100 + i
                })
            },
        )
    };
    let leader = within("leader join", move || leader.join().unwrap());
    assert_eq!(
        leader,
        Err("loader exploded".to_string()),
        "the panic went to the leader's caller"
    );
    assert_eq!(
        calls.load(SeqCst),
        1,
        "exactly one waiter ran its own loader"
    );
    assert!(
        values.iter().all(|&v| v == values[0]),
        "all waiters share its value: {values:?}"
    );
    assert!((100..100 + WAITERS).contains(&values[0]));
    assert_eq!(cache.get(&3), Some(values[0]));
}

#[test]
fn loader_may_use_other_keys_of_the_same_shard() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .num_shards(1)
        .build()
        .unwrap();
    cache.insert(2, 20);
    cache.insert(5, 50);
    let got = {
        let cache = cache.clone();
        within("loader touching its own shard", move || {
            let c = cache.clone();
            let v = cache.get_with(1, move || {
                let two = c.get(&2).unwrap();
                c.insert(3, 30);
                assert_eq!(c.remove(&5), Some(50));
                // A nested load of another key, itself touching the shard.
                let four = c.get_with(4, || c.peek(&3).unwrap() + 10);
                c.invalidate_entries_if(|k, _| *k == 2);
                assert_eq!(c.entry_count(), 2, "3 and 4; 1 is still loading");
                two + four
            });
            (v, cache.get_with(1, || unreachable!("cached")))
        })
    };
    assert_eq!(got, (60, 60));
    assert_eq!(cache.get(&3), Some(30));
    assert_eq!(cache.get(&4), Some(40));
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.get(&5), None);
    assert_eq!(cache.stats().loads(), 2);
}

#[test]
fn loader_may_use_keys_loaded_concurrently_by_others() {
    // Thread A's loader for key 1 waits on thread B's load of key 2 (no cycle).
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .num_shards(1)
        .build()
        .unwrap();
    let gate = Arc::new(Barrier::new(2));
    let results = {
        let cache = cache.clone();
        parallel(
            TIMEOUT,
            "loader waiting on another key's flight",
            2,
            move |i| {
                if i == 0 {
                    cache.get_with(1, || {
                        gate.wait(); // B's loader for 2 is running
                        cache.get_with(2, || unreachable!("B is loading 2")) + 1
                    })
                } else {
                    cache.get_with(2, || {
                        gate.wait();
                        thread::sleep(Duration::from_millis(100));
                        20
                    })
                }
            },
        )
    };
    assert_eq!(results, vec![21, 20]);
}

#[test]
fn loader_loading_its_own_key_panics_instead_of_hanging() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let outcome = {
        let cache = cache.clone();
        within("self-loading loader", move || {
            let c = cache.clone();
            panic::catch_unwind(AssertUnwindSafe(|| {
                cache.get_with(1, || c.get_with(1, || 2) + 1)
            }))
            .map_err(|p| panic_message(&*p))
        })
    };
    let message = outcome.expect_err("loading one's own key must panic");
    assert!(
        message.contains("load its own key"),
        "unclear panic message: {message:?}"
    );
    // Also through try_get_with.
    let outcome = {
        let cache = cache.clone();
        within("self-loading try loader", move || {
            let c = cache.clone();
            panic::catch_unwind(AssertUnwindSafe(|| {
                cache.try_get_with(1, || {
                    c.try_get_with(1, || Ok::<_, DbDown>(2))
                        .map_err(|_| DbDown(0))
                })
            }))
            .map_err(|p| panic_message(&*p))
        })
    };
    assert!(
        outcome
            .expect_err("must panic")
            .contains("load its own key")
    );
    // No flight is left behind: the key loads normally afterwards.
    let v = within("load after the panic", move || cache.get_with(1, || 3));
    assert_eq!(v, 3);
}

#[test]
fn get_with_on_a_present_key_does_not_call_the_loader() {
    let cache: Cache<u32, String> = Cache::new(100);
    cache.insert(1, "inserted".to_string());
    let v = cache.get_with(1, || panic!("the loader must not run for a cached key"));
    assert_eq!(v, "inserted");
    let r = cache.try_get_with(1, || -> Result<String, DbDown> {
        panic!("must not run either")
    });
    assert_eq!(r.as_deref(), Ok("inserted"));
    let stats = cache.stats();
    assert_eq!((stats.hits(), stats.misses(), stats.loads()), (2, 0, 0));
}

/// Starts `get_with(1)` on a thread whose `init` returns 1 (what it "read
/// from the store") once the returned sender is sent to; returns when
/// `init` has begun.
fn held_load(cache: &Cache<u32, u32>) -> (thread::JoinHandle<u32>, mpsc::Sender<()>) {
    let (started, load_started) = mpsc::channel::<()>();
    let (go, may_finish) = mpsc::channel::<()>();
    let loader = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.get_with(1, || {
                started.send(()).unwrap();
                may_finish.recv_timeout(TIMEOUT).unwrap();
                1
            })
        })
    };
    load_started
        .recv_timeout(TIMEOUT)
        .expect("the loader started");
    (loader, go)
}

/// Runs `write` on this thread while a [`held_load`] of key 1 is under way.
/// Returns what `get_with` returned and what the cache holds for key 1
/// afterwards.
fn load_overlapping(
    cache: &Cache<u32, u32>,
    write: impl FnOnce(&Cache<u32, u32>),
) -> (u32, Option<u32>) {
    let (loader, go) = held_load(cache);
    write(cache);
    go.send(()).unwrap();
    let loaded = loader.join().expect("the loader returned");
    (loaded, cache.peek(&1))
}

#[test]
fn get_with_does_not_cache_a_value_older_than_a_write_during_its_load() {
    // Alone, a load caches its value.
    let cache: Cache<u32, u32> = Cache::new(100);
    assert_eq!(load_overlapping(&cache, |_| {}), (1, Some(1)));

    // An insert during the load wins: the load's value is returned to its
    // caller but does not replace the newer one.
    let cache: Cache<u32, u32> = Cache::new(100);
    assert_eq!(load_overlapping(&cache, |c| c.insert(1, 2)), (1, Some(2)));
    let cache: Cache<u32, u32> = Cache::new(100);
    let insert_ttl = |c: &Cache<u32, u32>| c.insert_with_ttl(1, 2, Duration::from_secs(60));
    assert_eq!(load_overlapping(&cache, insert_ttl), (1, Some(2)));

    // An invalidation during the load (the cache-aside update: write the
    // database, then drop the key) is not undone by the load's older value,
    // whether the key was cached or not.
    type Write = fn(&Cache<u32, u32>);
    let cases: [(&str, Write); 4] = [
        ("invalidate", |c| c.invalidate(&1)),
        ("remove", |c| assert_eq!(c.remove(&1), None)),
        ("invalidate_all", |c| c.invalidate_all()),
        ("invalidate_entries_if", |c| {
            c.insert(1, 5);
            c.invalidate_entries_if(|k, _| *k == 1);
        }),
    ];
    for (what, write) in cases {
        let cache: Cache<u32, u32> = Cache::new(100);
        assert_eq!(load_overlapping(&cache, write), (1, None), "{what}");
        // The next load caches as usual.
        assert_eq!(cache.get_with(1, || 3), 3, "{what}");
        assert_eq!(cache.peek(&1), Some(3), "{what}");
    }
}

#[test]
fn an_invalidate_entries_if_that_removes_nothing_does_not_keep_a_load_out() {
    // The predicate picks key 1 from a shard copy taken while it was cached;
    // then key 1 is removed (so the copy is stale and thrown away) and a
    // load of it begins. The predicate's pass over the fresh copy finds
    // nothing to remove: nothing writes key 1 while it loads.
    let cache: Cache<u32, u32> = Cache::builder().num_shards(1).build().unwrap();
    cache.insert(1, 5);
    let (testing, predicate_runs) = mpsc::channel::<()>();
    let (answer, may_answer) = mpsc::channel::<()>();
    let invalidating = {
        let cache = cache.clone();
        let (testing, may_answer) = (Mutex::new(Some(testing)), Mutex::new(may_answer));
        thread::spawn(move || {
            cache.invalidate_entries_if(|k, _| {
                if let Some(testing) = testing.lock().unwrap().take() {
                    testing.send(()).unwrap();
                    may_answer.lock().unwrap().recv_timeout(TIMEOUT).unwrap();
                }
                *k == 1
            })
        })
    };
    predicate_runs.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(cache.remove(&1), Some(5));
    let (loader, go) = held_load(&cache);
    answer.send(()).unwrap();
    invalidating.join().unwrap();
    go.send(()).unwrap();
    assert_eq!(loader.join().unwrap(), 1);
    assert_eq!(cache.peek(&1), Some(1), "the load's value is cached");
}

#[test]
fn a_loader_may_run_pending_tasks_while_a_listener_waits_for_its_load() {
    // A maintenance pass delivers key 2's expiry to a listener that reads
    // key 1 through `get_with`, so it waits for key 1's load; that load's
    // `init` calls `run_pending_tasks`, which must not wait for the pass.
    let clock = MockClock::new();
    let own: Arc<Mutex<Option<Cache<u32, u32>>>> = Arc::default();
    let (heard, listener_runs) = mpsc::channel::<()>();
    let (heard, listener_runs) = (Mutex::new(heard), Mutex::new(listener_runs));
    let handle = own.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, _, _| {
            if *k == 2 {
                heard.lock().unwrap().send(()).unwrap();
                let cache = handle.lock().unwrap().clone().expect("set");
                assert_eq!(cache.get_with(1, || 3), 1, "the load's value");
            }
        })
        .build()
        .unwrap();
    *own.lock().unwrap() = Some(cache.clone());
    cache.insert_with_ttl(2, 2, Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    let (loading, load_runs) = mpsc::channel::<()>();
    let load_runs = Mutex::new(load_runs);
    let c = cache.clone();
    parallel(TIMEOUT, "a loader and a pass", 2, move |i| {
        if i == 0 {
            c.get_with(1, || {
                loading.send(()).unwrap();
                let listener_runs = listener_runs.lock().unwrap();
                listener_runs.recv_timeout(TIMEOUT).unwrap();
                c.run_pending_tasks();
                1
            });
        } else {
            load_runs.lock().unwrap().recv_timeout(TIMEOUT).unwrap();
            c.run_pending_tasks(); // reaps key 2
        }
    });
    own.lock().unwrap().take();
    assert_eq!(cache.peek(&1), Some(1));
    assert_eq!(cache.entry_count(), 1);
}

#[test]
fn a_listener_run_by_a_loads_fill_may_run_pending_tasks_while_a_pass_waits_for_that_load() {
    // A maintenance pass delivers key 2's expiry to a listener that reads
    // key 1 through `get_with`, so it waits for key 1's load. That load's
    // value fills a full cache: the fill evicts, and the listener, run on
    // the loading thread, calls `run_pending_tasks`, which must not wait
    // for the pass while key 1's waiters still wait for the fill.
    let clock = MockClock::new();
    let own: Arc<Mutex<Option<Cache<u32, u32>>>> = Arc::default();
    let (heard, listener_runs) = mpsc::channel::<()>();
    let (heard, listener_runs) = (Mutex::new(heard), Mutex::new(listener_runs));
    let handle = own.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(2)
        .num_shards(1)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, _, cause| {
            let cache = handle.lock().unwrap().clone().expect("set");
            match cause {
                RemovalCause::Expired if *k == 2 => {
                    heard.lock().unwrap().send(()).unwrap();
                    assert_eq!(cache.get_with(1, || 3), 1, "the load's value");
                }
                RemovalCause::Size => cache.run_pending_tasks(),
                _ => {}
            }
        })
        .build()
        .unwrap();
    *own.lock().unwrap() = Some(cache.clone());
    cache.insert_with_ttl(2, 2, Duration::from_secs(1));
    cache.insert(3, 3);
    clock.advance(Duration::from_secs(1));
    let (loading, load_runs) = mpsc::channel::<()>();
    let load_runs = Mutex::new(load_runs);
    let c = cache.clone();
    parallel(TIMEOUT, "a fill's listener and a pass", 2, move |i| {
        if i == 0 {
            c.get_with(1, || {
                loading.send(()).unwrap();
                let listener_runs = listener_runs.lock().unwrap();
                listener_runs.recv_timeout(TIMEOUT).unwrap();
                hold_until_misses(&c, 2); // the listener waits for this load
                c.insert(4, 4); // full again: the fill of 1 evicts
                1
            });
        } else {
            load_runs.lock().unwrap().recv_timeout(TIMEOUT).unwrap();
            c.run_pending_tasks(); // reaps key 2
        }
    });
    own.lock().unwrap().take();
    assert_eq!(cache.entry_count(), 2, "the fill evicted one");
    assert_eq!(cache.stats().removals(RemovalCause::Size), 1);
}

#[test]
fn a_weigher_run_by_a_loads_fill_may_run_pending_tasks_while_a_pass_waits_for_that_load() {
    // A maintenance pass delivers key 2's expiry to a listener that reads
    // key 1 through `get_with`, so it waits for key 1's load. The load's
    // fill weighs its value, and the weigher, user code run while key 1's
    // waiters still wait, calls `run_pending_tasks`: it must not wait for
    // the pass.
    let clock = MockClock::new();
    let own: Arc<Mutex<Option<Cache<u32, u32>>>> = Arc::default();
    let (heard, listener_runs) = mpsc::channel::<()>();
    let (heard, listener_runs) = (Mutex::new(heard), Mutex::new(listener_runs));
    let (filling, fill_runs) = mpsc::channel::<()>();
    let (filling, fill_runs) = (Mutex::new(filling), Mutex::new(fill_runs));
    let (listened, weighed) = (own.clone(), own.clone());
    let cache: Cache<u32, u32> = Cache::builder()
        .clock(clock.clone())
        .weigher(move |k: &u32, _: &u32| {
            if *k == 1 {
                let cache = weighed.lock().unwrap().clone().expect("set");
                filling.lock().unwrap().send(()).unwrap();
                let listener_runs = listener_runs.lock().unwrap();
                listener_runs.recv_timeout(TIMEOUT).unwrap();
                hold_until_misses(&cache, 2); // the listener waits for this load
                cache.run_pending_tasks();
            }
            1
        })
        .eviction_listener(move |k: Arc<u32>, _, _| {
            if *k == 2 {
                heard.lock().unwrap().send(()).unwrap();
                let cache = listened.lock().unwrap().clone().expect("set");
                assert_eq!(cache.get_with(1, || 3), 1, "the load's value");
            }
        })
        .build()
        .unwrap();
    *own.lock().unwrap() = Some(cache.clone());
    cache.insert_with_ttl(2, 2, Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    let c = cache.clone();
    parallel(TIMEOUT, "a fill's weigher and a pass", 2, move |i| {
        if i == 0 {
            assert_eq!(c.get_with(1, || 1), 1);
        } else {
            fill_runs.lock().unwrap().recv_timeout(TIMEOUT).unwrap();
            c.run_pending_tasks(); // reaps key 2
        }
    });
    own.lock().unwrap().take();
    assert_eq!(cache.peek(&1), Some(1));
    assert_eq!(cache.entry_count(), 1);
}

#[test]
fn a_caller_that_joins_a_load_after_a_write_of_its_key_loads_again() {
    // The load of key 1 reads its value (1) and is held; meanwhile 2 is
    // written and then invalidated. A get_with begun after both finds the
    // key missing and the load under way: the load's value may be older
    // than the write, so the caller does not take it but, once the load
    // has ended, runs its own init. (A caller that joined before the
    // write shares the load: the test below.)
    for write_then_drop in [
        (|c: &Cache<u32, u32>| {
            c.insert(1, 2);
            c.invalidate(&1);
        }) as fn(&Cache<u32, u32>),
        |c| {
            c.remove(&1);
        },
    ] {
        let cache: Cache<u32, u32> = Cache::new(100);
        let (leader, go) = held_load(&cache);
        write_then_drop(&cache);
        let late = {
            let cache = cache.clone();
            thread::spawn(move || cache.get_with(1, || 3))
        };
        hold_until_misses(&cache, 2);
        go.send(()).unwrap();
        assert_eq!(leader.join().unwrap(), 1, "the leader keeps its own value");
        assert_eq!(late.join().unwrap(), 3, "the late caller loads again");
        assert_eq!(cache.peek(&1), Some(3));
    }
}

#[test]
fn waiters_share_a_load_that_a_write_kept_out_of_the_cache() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let (leader, go) = held_load(&cache);
    let waiter = {
        let cache = cache.clone();
        thread::spawn(move || cache.get_with(1, || panic!("the waiter must share the load")))
    };
    hold_until_misses(&cache, 2);
    cache.invalidate(&1);
    go.send(()).unwrap();
    assert_eq!(leader.join().unwrap(), 1);
    assert_eq!(waiter.join().unwrap(), 1);
    assert_eq!(cache.peek(&1), None);
}

#[test]
fn an_insert_that_lands_while_init_runs_stays_even_if_it_began_before_the_load() {
    // The insert of 2 stops in the weigher, before it takes the shard lock,
    // until the load of key 1 has begun.
    let (entered, in_weigher) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let (entered, released) = (Mutex::new(entered), Mutex::new(released));
    let cache: Cache<u32, u32> = Cache::builder()
        .max_capacity(100)
        .weigher(move |_: &u32, v: &u32| {
            if *v == 2 {
                entered.lock().unwrap().send(()).unwrap();
                released.lock().unwrap().recv_timeout(TIMEOUT).unwrap();
            }
            1
        })
        .build()
        .unwrap();
    let writer = {
        let cache = cache.clone();
        thread::spawn(move || cache.insert(1, 2))
    };
    in_weigher.recv_timeout(TIMEOUT).unwrap();
    let loaded = cache.get_with(1, || {
        release.send(()).unwrap();
        writer.join().unwrap();
        assert_eq!(cache.peek(&1), Some(2), "the insert landed during the load");
        1
    });
    assert_eq!(loaded, 1, "the load's value goes to its caller");
    assert_eq!(cache.peek(&1), Some(2), "the write's outcome stays cached");
}

/// A value whose `Drop` (user code) reads the cache in [`PROBED`], if
/// `probes`.
#[derive(Clone, Debug)]
struct Probe {
    probes: bool,
}

/// The cache a probing value reads as it drops.
static PROBED: std::sync::OnceLock<Cache<u32, Probe>> = std::sync::OnceLock::new();

impl Drop for Probe {
    fn drop(&mut self) {
        if let (true, Some(cache)) = (self.probes, PROBED.get()) {
            let _ = cache.peek(&0);
        }
    }
}

#[test]
fn a_loaded_value_kept_out_by_a_write_drops_with_no_lock_held() {
    // The fill's copy of a value that a write during its load keeps out is
    // dropped unstored; it dropped under the shard's write lock, and a
    // `Drop` that reads the cache (here its one shard) waited for ever.
    let cache = PROBED
        .get_or_init(|| Cache::builder().num_shards(1).build().unwrap())
        .clone();
    let loaded = within("a load overtaken by an insert", move || {
        cache.insert(0, Probe { probes: false });
        let value = cache.get_with(1, || {
            cache.insert(1, Probe { probes: false });
            Probe { probes: true }
        });
        assert!(!cache.peek(&1).expect("the insert stays").probes);
        value.probes
    });
    assert!(loaded, "the load's value goes to its caller");
}
