//! Async loading: `get_with_async`, `try_get_with_async` and
//! `LoadingCache::get_async` on tokio's current-thread and multi-thread
//! runtimes, alone and mixed with blocking callers, and polled by hand where
//! a test must see exactly which waker a flight keeps.
//!
//! On a current-thread runtime every task shares one thread, so a waiter that
//! blocked it instead of awaiting would stop the leader from ever finishing:
//! those tests pass only if waiting never blocks the executor.
//!
//! Every test body runs through [`bounded`]. Its tokio timeout turns a hang
//! the runtime can still see (a lost wake-up, a flight nobody finishes) into a
//! failure; its watchdog thread aborts the test binary if the runtime's own
//! thread is blocked, which no timer on that runtime could notice.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll, Waker},
    thread,
    time::{Duration, Instant},
};

#[path = "support/tasks.rs"]
mod tasks;
#[path = "support/threads.rs"]
mod threads;

use larder::{Cache, clock::MockClock};
use tasks::{ARRIVAL, Wakes, bounded, on_thread, poll_with, until_misses, until_misses_blocking};
use threads::panic_message;
use tokio::{
    sync::{Notify, oneshot},
    task::JoinSet,
};

#[derive(Debug, PartialEq)]
struct DbDown(usize);

/// `tasks` tasks ask for one key; the leader's `init` holds until all of
/// them have missed. Exactly one `init` runs and all share its value.
async fn one_init_for_concurrent_tasks(tasks: usize) {
    let cache: Cache<u32, Arc<String>> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..tasks {
        let (cache, calls) = (cache.clone(), calls.clone());
        set.spawn(async move {
            let inner = cache.clone();
            cache
                .get_with_async(7, async move {
                    calls.fetch_add(1, SeqCst);
                    until_misses(&inner, tasks as u64).await;
                    Arc::new(format!("loaded by {i}"))
                })
                .await
        });
    }
    let values = set.join_all().await;
    assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
    assert_eq!(
        cache.stats().misses(),
        tasks as u64,
        "every task reached the cache while the load was pending"
    );
    assert!(
        values.iter().all(|v| Arc::ptr_eq(v, &values[0])),
        "every task got the one loaded value: {values:?}"
    );
    assert_eq!(cache.get(&7), Some(values[0].clone()));
}

#[tokio::test]
async fn waiters_do_not_block_a_current_thread_runtime() {
    bounded(
        "32 tasks, current thread",
        one_init_for_concurrent_tasks(32),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_init_runs_for_concurrent_tasks_on_a_multi_thread_runtime() {
    bounded("64 tasks, multi thread", one_init_for_concurrent_tasks(64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_joins_a_load_after_a_write_of_its_key_loads_again() {
    bounded("a late waiter", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        let release = Arc::new(Notify::new());
        let (started_tx, started) = oneshot::channel();
        let leader = {
            let (cache, release) = (cache.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .get_with_async(1, async move {
                        started_tx.send(()).unwrap();
                        release.notified().await;
                        1 // read before the write below
                    })
                    .await
            })
        };
        started.await.unwrap();
        cache.insert(1, 2);
        cache.invalidate(&1);
        let late = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_with_async(1, async { 3 }).await })
        };
        until_misses(&cache, 2).await;
        release.notify_one();
        assert_eq!(leader.await.unwrap(), 1, "the leader keeps its own value");
        assert_eq!(late.await.unwrap(), 3, "the late task loads again");
        assert_eq!(cache.peek(&1), Some(3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_async_load_is_shared_by_waiters_and_not_cached() {
    const TASKS: usize = 16;
    bounded("shared error", async {
        let cache: Cache<u32, String> = Cache::new(100);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for i in 0..TASKS {
            let (cache, calls) = (cache.clone(), calls.clone());
            set.spawn(async move {
                let inner = cache.clone();
                cache
                    .try_get_with_async(1, async move {
                        calls.fetch_add(1, SeqCst);
                        until_misses(&inner, TASKS as u64).await;
                        Err::<String, _>(DbDown(i))
                    })
                    .await
            });
        }
        let errors: Vec<Arc<DbDown>> = set
            .join_all()
            .await
            .into_iter()
            .map(|r| r.expect_err("the only load failed"))
            .collect();
        assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
        assert_eq!(cache.stats().misses(), TASKS as u64);
        assert!(
            errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
            "every caller got the same Arc: {errors:?}"
        );
        assert!(!cache.contains_key(&1), "errors are not cached");

        let calls_before = calls.load(SeqCst);
        let next = cache
            .try_get_with_async(1, async {
                calls.fetch_add(1, SeqCst);
                Ok::<_, DbDown>("recovered".to_string())
            })
            .await;
        assert_eq!(next.unwrap(), "recovered");
        assert_eq!(calls.load(SeqCst), calls_before + 1, "the next call loaded");
        assert_eq!(cache.get(&1).as_deref(), Some("recovered"));
    })
    .await;
}

/// How the leading call's future is cancelled.
#[derive(Clone, Copy, Debug)]
enum Cancel {
    /// `JoinHandle::abort` on the leader's task.
    Abort,
    /// The leader's task drops the future itself, losing a `select!`.
    Drop,
}

/// A leader whose `init` never finishes is cancelled once `waiters` tasks
/// wait on its flight: one waiter's own `init` runs, all waiters get its
/// value, and the leader's `init` never got past its await.
async fn cancelled_leader_hands_the_load_to_a_waiter(waiters: usize, how: Cancel) {
    let cache: Cache<u32, Arc<String>> = Cache::new(100);
    let leader_started = Arc::new(Notify::new());
    let leader_finished = Arc::new(AtomicBool::new(false));
    let cancel = Arc::new(Notify::new());
    let leader = {
        let (cache, started, finished) = (
            cache.clone(),
            leader_started.clone(),
            leader_finished.clone(),
        );
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let load = cache.get_with_async(5, async move {
                started.notify_one();
                std::future::pending::<()>().await;
                finished.store(true, SeqCst);
                Arc::new("leader".to_string())
            });
            tokio::select! {
                v = load => Some(v),
                () = cancel.notified() => None,
            }
        })
    };
    leader_started.notified().await;

    let calls = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..waiters {
        let (cache, calls) = (cache.clone(), calls.clone());
        set.spawn(async move {
            cache
                .get_with_async(5, async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Arc::new(format!("waiter {i}"))
                })
                .await
        });
    }
    until_misses(&cache, 1 + waiters as u64).await;
    assert_eq!(calls.load(SeqCst), 0, "waiters wait while the leader loads");
    assert_eq!(cache.stats().misses(), 1 + waiters as u64);

    match how {
        Cancel::Abort => {
            leader.abort();
            let err = leader.await.expect_err("the leader was aborted");
            assert!(err.is_cancelled(), "{err:?}");
        }
        Cancel::Drop => {
            cancel.notify_one();
            assert_eq!(leader.await.unwrap(), None, "the leader lost the select");
        }
    }

    let values = set.join_all().await;
    assert_eq!(calls.load(SeqCst), 1, "exactly one waiter ran its own init");
    assert!(
        values.iter().all(|v| Arc::ptr_eq(v, &values[0])),
        "all waiters share its value: {values:?}"
    );
    assert!(values[0].starts_with("waiter "), "{}", values[0]);
    assert!(
        !leader_finished.load(SeqCst),
        "the leader's init never completed"
    );
    assert_eq!(cache.get(&5), Some(values[0].clone()));
    let stats = cache.stats();
    assert_eq!(
        (stats.load_successes(), stats.load_failures()),
        (1, 1),
        "the waiter's load succeeded; the cancelled one counts as a failure"
    );
}

#[tokio::test]
async fn aborted_leader_hands_the_load_to_a_waiter_on_a_current_thread_runtime() {
    bounded(
        "aborted leader, current thread",
        cancelled_leader_hands_the_load_to_a_waiter(16, Cancel::Abort),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_leader_hands_the_load_to_a_waiter_on_a_multi_thread_runtime() {
    bounded(
        "aborted leader, multi thread",
        cancelled_leader_hands_the_load_to_a_waiter(32, Cancel::Abort),
    )
    .await;
}

#[tokio::test]
async fn dropped_leader_future_hands_the_load_to_a_waiter_on_a_current_thread_runtime() {
    bounded(
        "dropped leader, current thread",
        cancelled_leader_hands_the_load_to_a_waiter(16, Cancel::Drop),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_leader_future_hands_the_load_to_a_waiter_on_a_multi_thread_runtime() {
    bounded(
        "dropped leader, multi thread",
        cancelled_leader_hands_the_load_to_a_waiter(32, Cancel::Drop),
    )
    .await;
}

/// A leader whose `init` panics once `waiters` tasks wait: the panic goes to
/// the leader's task, one waiter loads instead, and the cache keeps working.
async fn panicking_leader_hands_the_load_to_a_waiter(waiters: usize) {
    let cache: Cache<u32, usize> = Cache::new(100);
    let leader_started = Arc::new(Notify::new());
    let leader = {
        let (cache, started) = (cache.clone(), leader_started.clone());
        tokio::spawn(async move {
            let inner = cache.clone();
            cache
                .get_with_async(3, async move {
                    started.notify_one();
                    until_misses(&inner, 1 + waiters as u64).await;
                    panic!("init exploded")
                })
                .await
        })
    };
    leader_started.notified().await;

    let calls = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..waiters {
        let (cache, calls) = (cache.clone(), calls.clone());
        set.spawn(async move {
            cache
                .get_with_async(3, async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    100 + i
                })
                .await
        });
    }

    let err = leader.await.expect_err("the leader's init panicked");
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(panic_message(&*err.into_panic()), "init exploded");

    let values = set.join_all().await;
    assert_eq!(
        cache.stats().misses(),
        1 + waiters as u64,
        "the waiters were waiting when the leader panicked"
    );
    assert_eq!(calls.load(SeqCst), 1, "exactly one waiter ran its own init");
    assert!(
        values.iter().all(|&v| v == values[0]),
        "all waiters share its value: {values:?}"
    );
    assert!((100..100 + waiters).contains(&values[0]));

    // Still usable: the key is cached, other keys load and cache as usual.
    assert_eq!(
        cache.get_with_async(3, async { unreachable!() }).await,
        values[0]
    );
    assert_eq!(cache.get_with_async(4, async { 44 }).await, 44);
    assert_eq!(cache.get(&4), Some(44));
}

#[tokio::test]
async fn panicking_async_leader_hands_the_load_to_a_waiter_on_a_current_thread_runtime() {
    bounded(
        "panicking leader, current thread",
        panicking_leader_hands_the_load_to_a_waiter(16),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn panicking_async_leader_hands_the_load_to_a_waiter_on_a_multi_thread_runtime() {
    bounded(
        "panicking leader, multi thread",
        panicking_leader_hands_the_load_to_a_waiter(32),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_async_loads_once_for_concurrent_tasks() {
    const TASKS: usize = 64;
    bounded("get_async, 64 tasks", async {
        let loads = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let all_arrived_while_loading = Arc::new(AtomicBool::new(false));
        let cache = {
            let (loads, arrived, all) = (
                loads.clone(),
                arrived.clone(),
                all_arrived_while_loading.clone(),
            );
            Cache::builder()
                .loader(move |k: &u32| {
                    loads.fetch_add(1, SeqCst);
                    // Blocks its worker; the other three must run all the
                    // remaining tasks, which only works if they await.
                    let deadline = Instant::now() + ARRIVAL;
                    while arrived.load(SeqCst) < TASKS && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(1));
                    }
                    all.store(arrived.load(SeqCst) == TASKS, SeqCst);
                    thread::sleep(Duration::from_millis(20));
                    Ok::<_, String>(Some(k * 10))
                })
                .build()
                .unwrap()
        };
        let mut set = JoinSet::new();
        for _ in 0..TASKS {
            let (cache, arrived) = (cache.clone(), arrived.clone());
            set.spawn(async move {
                arrived.fetch_add(1, SeqCst);
                cache.get_async(&7).await
            });
        }
        let values = set.join_all().await;
        assert_eq!(loads.load(SeqCst), 1, "exactly one load");
        assert_eq!(cache.stats().loads(), 1);
        assert!(
            all_arrived_while_loading.load(SeqCst),
            "every task reached the cache while the loader ran"
        );
        assert!(
            values.iter().all(|v| v == &Ok(Some(70))),
            "every task got the loaded value: {values:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn get_async_answers_a_cached_absent_without_loading() {
    bounded("negative caching", async {
        let clock = MockClock::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let cache = {
            let loads = loads.clone();
            Cache::builder()
                .clock(clock.clone())
                .loader(move |_: &u32| {
                    loads.fetch_add(1, SeqCst);
                    Ok::<Option<u32>, String>(None)
                })
                .negative_ttl(Duration::from_secs(30))
                .build()
                .unwrap()
        };
        assert_eq!(cache.get_async(&1).await, Ok(None));
        assert_eq!(loads.load(SeqCst), 1);
        clock.advance(Duration::from_secs(29));
        assert_eq!(cache.get_async(&1).await, Ok(None));
        assert_eq!(loads.load(SeqCst), 1, "the absent answer was cached");
        clock.advance(Duration::from_secs(2));
        assert_eq!(cache.get_async(&1).await, Ok(None));
        assert_eq!(loads.load(SeqCst), 2, "loaded again past the negative ttl");
    })
    .await;
}

#[tokio::test]
async fn get_async_without_negative_ttl_loads_an_absent_key_every_time() {
    bounded("no negative caching", async {
        let loads = Arc::new(AtomicUsize::new(0));
        let cache = {
            let loads = loads.clone();
            Cache::builder()
                .loader(move |_: &u32| {
                    loads.fetch_add(1, SeqCst);
                    Ok::<Option<u32>, String>(None)
                })
                .build()
                .unwrap()
        };
        assert_eq!(cache.get_async(&1).await, Ok(None));
        assert_eq!(cache.get_async(&1).await, Ok(None));
        assert_eq!(loads.load(SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn get_async_loads_again_after_the_time_to_live() {
    bounded("time to live", async {
        let clock = MockClock::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let cache = {
            let loads = loads.clone();
            Cache::builder()
                .time_to_live(Duration::from_secs(10))
                .clock(clock.clone())
                .loader(move |k: &u32| {
                    let n = loads.fetch_add(1, SeqCst) + 1;
                    Ok::<_, String>(Some(format!("{k} load {n}")))
                })
                .build()
                .unwrap()
        };
        assert_eq!(
            cache.get_async(&1).await.unwrap().as_deref(),
            Some("1 load 1")
        );
        clock.advance(Duration::from_secs(9));
        assert_eq!(
            cache.get_async(&1).await.unwrap().as_deref(),
            Some("1 load 1")
        );
        assert_eq!(loads.load(SeqCst), 1, "fresh within the ttl");
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            cache.get_async(&1).await.unwrap().as_deref(),
            Some("1 load 2")
        );
        assert_eq!(loads.load(SeqCst), 2, "loaded again past the ttl");
        assert_eq!(cache.stats().loads(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocking_leader_and_async_waiters_share_one_load() {
    const TASKS: usize = 16;
    bounded("blocking leader, async waiters", async {
        let cache: Cache<u32, Arc<String>> = Cache::new(100);
        let calls = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = oneshot::channel();
        let leader = {
            let (cache, calls) = (cache.clone(), calls.clone());
            on_thread(move || {
                cache.get_with(9, || {
                    calls.fetch_add(1, SeqCst);
                    started_tx.send(()).unwrap();
                    until_misses_blocking(&cache, 1 + TASKS as u64);
                    Arc::new("blocking leader".to_string())
                })
            })
        };
        started_rx.await.expect("the leader's init started");
        let mut set = JoinSet::new();
        for i in 0..TASKS {
            let (cache, calls) = (cache.clone(), calls.clone());
            set.spawn(async move {
                cache
                    .get_with_async(9, async move {
                        calls.fetch_add(1, SeqCst);
                        Arc::new(format!("task {i}"))
                    })
                    .await
            });
        }
        let values = set.join_all().await;
        let led = leader.await.expect("the leader returned");
        assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
        assert_eq!(cache.stats().misses(), 1 + TASKS as u64);
        assert_eq!(*led, "blocking leader");
        assert!(
            values.iter().all(|v| Arc::ptr_eq(v, &led)),
            "every task got the blocking leader's value: {values:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn async_leader_and_blocking_waiters_share_one_load() {
    const THREADS: usize = 8;
    bounded("async leader, blocking waiters", async {
        let cache: Cache<u32, Arc<String>> = Cache::new(100);
        let calls = Arc::new(AtomicUsize::new(0));
        let leader_started = Arc::new(Notify::new());
        let leader = {
            let (cache, calls, started) = (cache.clone(), calls.clone(), leader_started.clone());
            tokio::spawn(async move {
                let inner = cache.clone();
                cache
                    .get_with_async(9, async move {
                        calls.fetch_add(1, SeqCst);
                        started.notify_one();
                        until_misses(&inner, 1 + THREADS as u64).await;
                        Arc::new("async leader".to_string())
                    })
                    .await
            })
        };
        leader_started.notified().await;
        let waiters: Vec<_> = (0..THREADS)
            .map(|i| {
                let (cache, calls) = (cache.clone(), calls.clone());
                on_thread(move || {
                    cache.get_with(9, || {
                        calls.fetch_add(1, SeqCst);
                        Arc::new(format!("thread {i}"))
                    })
                })
            })
            .collect();
        let led = leader.await.unwrap();
        let mut values = Vec::new();
        for waiter in waiters {
            values.push(waiter.await.expect("the waiter returned"));
        }
        assert_eq!(calls.load(SeqCst), 1, "exactly one init ran");
        assert_eq!(cache.stats().misses(), 1 + THREADS as u64);
        assert_eq!(*led, "async leader");
        assert!(
            values.iter().all(|v| Arc::ptr_eq(v, &led)),
            "every thread got the async leader's value: {values:?}"
        );
    })
    .await;
}

/// The message of a task's panic, or a failure if it returned.
async fn panic_of<T: std::fmt::Debug>(task: tokio::task::JoinHandle<T>) -> String {
    match task.await {
        Ok(v) => panic!("expected a panic, got {v:?}"),
        Err(e) => panic_message(&*e.into_panic()),
    }
}

#[tokio::test]
async fn async_init_loading_its_own_key_panics_instead_of_hanging() {
    bounded("async self-loading init", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        // Awaiting its own key from inside `init`.
        let awaiting = {
            let (cache, inner) = (cache.clone(), cache.clone());
            tokio::spawn(async move {
                cache
                    .get_with_async(
                        1,
                        async move { inner.get_with_async(1, async { 2 }).await + 1 },
                    )
                    .await
            })
        };
        let message = panic_of(awaiting).await;
        assert!(
            message.contains("load its own key"),
            "unclear panic: {message:?}"
        );
        // Blocking on its own key from inside `init`.
        let blocking = {
            let (cache, inner) = (cache.clone(), cache.clone());
            tokio::spawn(async move {
                cache
                    .get_with_async(1, async move { inner.get_with(1, || 2) + 1 })
                    .await
            })
        };
        let message = panic_of(blocking).await;
        assert!(
            message.contains("load its own key"),
            "unclear panic: {message:?}"
        );
        // No flight is left behind, and the key's own waiters still work:
        // another task may wait on an async leader that is not itself.
        assert_eq!(cache.get_with_async(1, async { 3 }).await, 3);
    })
    .await;
}

#[tokio::test]
async fn loading_cache_get_async_with_a_self_reading_loader_panics_instead_of_hanging() {
    bounded("LoadingCache self-reading loader", async {
        type Users = larder::LoadingCache<u32, u32, String>;
        let me: Arc<std::sync::Mutex<Option<Users>>> = Arc::default();
        let cache: Users = {
            let me = me.clone();
            Cache::builder()
                .loader(move |k: &u32| -> Result<Option<u32>, String> {
                    let cache = me.lock().unwrap().clone().expect("set before any read");
                    Ok(cache.get(k).map_err(|e| (*e).clone())?.map(|v| v + 1))
                })
                .build()
                .unwrap()
        };
        *me.lock().unwrap() = Some(cache.clone());
        let reader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_async(&2).await })
        };
        let message = panic_of(reader).await;
        assert!(
            message.contains("load its own key"),
            "unclear panic: {message:?}"
        );
        // Break the loader's cycle back to its cache so its threads can end.
        me.lock().unwrap().take();
    })
    .await;
}

#[test]
fn a_waiter_keeps_only_its_newest_waker_and_lets_go_of_it_when_dropped() {
    // Driven by hand, no runtime: the leader's `init` waits on a channel.
    let cache: Cache<u32, u32> = Cache::new(100);
    let (send, recv) = oneshot::channel::<u32>();
    let mut leader = Box::pin(cache.get_with_async(1, async { recv.await.unwrap() }));
    let leader_wakes = Arc::new(Wakes(AtomicUsize::new(0)));
    assert!(poll_with(leader.as_mut(), &leader_wakes).is_pending());

    // A waiter moved to another task between polls: only the newest task
    // is to be woken, and the flight keeps no copy of the older waker.
    let mut waiter = Box::pin(cache.get_with_async(1, async { unreachable!() }));
    let (old, new) = (
        Arc::new(Wakes(AtomicUsize::new(0))),
        Arc::new(Wakes(AtomicUsize::new(0))),
    );
    assert!(poll_with(waiter.as_mut(), &old).is_pending());
    assert!(poll_with(waiter.as_mut(), &new).is_pending());
    assert_eq!(Arc::strong_count(&old), 1, "the older waker is let go");

    // A waiter cancelled while the load runs (a request's timeout): the
    // flight lets go of its waker at once, not when the load ends, so a
    // slow load does not gather the wakers of every caller that gave up.
    let cancelled: Vec<Arc<Wakes>> = (0..100)
        .map(|_| {
            let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
            let mut gave_up = Box::pin(cache.get_with_async(1, async { unreachable!() }));
            assert!(poll_with(gave_up.as_mut(), &wakes).is_pending());
            wakes
        })
        .collect();
    let held = cancelled
        .iter()
        .filter(|w| Arc::strong_count(w) > 1)
        .count();
    assert_eq!(
        held, 0,
        "wakers of dropped waiters still held by the flight"
    );

    send.send(7).unwrap();
    assert_eq!(poll_with(leader.as_mut(), &leader_wakes), Poll::Ready(7));
    assert_eq!(new.0.load(SeqCst), 1, "the waiter's newest waker was woken");
    assert_eq!(poll_with(waiter.as_mut(), &new), Poll::Ready(7));
    assert_eq!(cache.stats().loads(), 1);
}

#[test]
fn a_batch_whose_loader_reads_another_key_of_the_batch_panics_and_says_why() {
    // Odd keys read the next even key through the cache; even keys load
    // directly. One key at a time that works; in a batch, the batch is
    // loading the even key itself, so the read would wait for itself.
    type Users = larder::LoadingCache<u32, u32, String>;
    let me: Arc<std::sync::Mutex<Option<Users>>> = Arc::default();
    let cache: Users = {
        let me = me.clone();
        Cache::builder()
            .loader(move |k: &u32| -> Result<Option<u32>, String> {
                if k % 2 == 0 {
                    return Ok(Some(k * 10));
                }
                let cache = me.lock().unwrap().clone().expect("set before any read");
                Ok(cache
                    .get(&(k + 1))
                    .map_err(|e| (*e).clone())?
                    .map(|v| v + 1))
            })
            .build()
            .unwrap()
    };
    *me.lock().unwrap() = Some(cache.clone());
    let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut batch = std::pin::pin!(cache.get_many_async([1, 2]));
        batch.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }));
    let message = panic_message(&*batch.expect_err("a wait for itself must panic"));
    assert!(
        message.contains("a key of the batch"),
        "the panic names a key of its own batch, not only its own key: {message:?}"
    );
    // No flight is left behind, and one key at a time the loader works.
    let mut one = std::pin::pin!(cache.get_async(&1));
    let one = one.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    assert_eq!(one, Poll::Ready(Ok(Some(21))));
    // Break the loader's cycle back to its cache so its threads can end.
    me.lock().unwrap().take();
}
