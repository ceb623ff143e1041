//! The async entry API: `or_insert_with_async` and its kin (single-flight
//! like `get_with_async`, plus the fresh flag) and the async computes
//! (`and_compute_with_async`, `and_try_compute_with_async`,
//! `and_upsert_with_async`), on tokio's current-thread and multi-thread
//! runtimes, mixed with blocking callers, and polled by hand where a test
//! must see exactly who waits, who is woken and who leads.
//!
//! Every tokio test body runs through [`bounded`]: its timeout turns a
//! wedged key into a failure, and its watchdog aborts the binary if a
//! runtime's thread is blocked for good.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

#[path = "support/tasks.rs"]
mod tasks;
#[path = "support/threads.rs"]
mod threads;

use larder::{Cache, CompResult, Entry, Expiry, Op, RemovalCause};
use tasks::{Wakes, bounded, on_thread, poll_with, until_misses};
use threads::panic_message;
use tokio::{
    sync::{Notify, oneshot},
    task::JoinSet,
};

type Heard = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

/// A cache whose listener records every removal.
fn heard_cache() -> (Cache<u32, u32>, Heard) {
    let heard: Heard = Arc::default();
    let log = heard.clone();
    let cache = Cache::builder()
        .eviction_listener(move |k: Arc<u32>, v, cause| log.lock().unwrap().push((*k, v, cause)))
        .build()
        .unwrap();
    (cache, heard)
}

fn value_of(e: Option<Entry<u32, u32>>) -> Option<u32> {
    e.map(Entry::into_value)
}

/// The entry's value plus one, or 1: the increment every counting test
/// makes.
fn plus_one(e: Option<Entry<u32, u32>>) -> u32 {
    value_of(e).unwrap_or(0) + 1
}

#[derive(Debug, PartialEq)]
struct DbDown(usize);

#[tokio::test]
async fn or_insert_with_async_makes_a_missing_value_and_finds_a_present_one() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let made = cache.entry(1).or_insert_with_async(async { 10 }).await;
    assert_eq!((*made.key(), *made.value(), made.is_fresh()), (1, 10, true));
    assert!(!made.is_old_value_replaced());
    let found = cache
        .entry(1)
        .or_insert_with_async(async { unreachable!("present") })
        .await;
    assert_eq!((found.is_fresh(), found.into_value()), (false, 10));
    assert_eq!(cache.get(&1), Some(10));
    let stats = cache.stats();
    assert_eq!((stats.hits(), stats.misses(), stats.loads()), (2, 1, 1));
}

#[tokio::test]
async fn or_optionally_insert_with_async_caches_nothing_for_none() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let none = cache
        .entry(1)
        .or_optionally_insert_with_async(async { None })
        .await;
    assert!(none.is_none());
    assert!(!cache.contains_key(&1), "a None is not cached");
    let made = cache
        .entry(1)
        .or_optionally_insert_with_async(async { Some(5) })
        .await
        .unwrap();
    assert!(made.is_fresh());
    let found = cache
        .entry(1)
        .or_optionally_insert_with_async(async { None })
        .await
        .unwrap();
    assert_eq!((found.is_fresh(), found.into_value()), (false, 5));
    let stats = cache.stats();
    // The `None` was an answer, as for `optionally_get_with`.
    assert_eq!((stats.load_successes(), stats.load_failures()), (2, 0));
}

#[tokio::test]
async fn or_try_insert_with_async_caches_values_and_not_errors() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let err = cache
        .entry(1)
        .or_try_insert_with_async(async { Err(DbDown(0)) })
        .await
        .unwrap_err();
    assert_eq!(*err, DbDown(0));
    assert!(!cache.contains_key(&1), "errors are not cached");
    let made = cache
        .entry(1)
        .or_try_insert_with_async(async { Ok::<_, DbDown>(7) })
        .await
        .unwrap();
    assert_eq!((made.is_fresh(), made.into_value()), (true, 7));
    let found = cache
        .entry(1)
        .or_try_insert_with_async(async { Err::<u32, _>(DbDown(1)) })
        .await
        .unwrap();
    assert_eq!((found.is_fresh(), found.into_value()), (false, 7));
    let stats = cache.stats();
    assert_eq!((stats.load_successes(), stats.load_failures()), (1, 1));
}

/// `tasks` tasks call `or_insert_with_async` on one key while the first
/// `init` holds until all have missed: one `init` runs, its entry alone is
/// fresh, and every task gets its value.
async fn one_init_and_one_fresh_entry_for_concurrent_tasks(tasks: usize) {
    let cache: Cache<u32, usize> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..tasks {
        let (cache, calls) = (cache.clone(), calls.clone());
        set.spawn(async move {
            let inner = cache.clone();
            let e = cache
                .entry(7)
                .or_insert_with_async(async move {
                    calls.fetch_add(1, SeqCst);
                    until_misses(&inner, tasks as u64).await;
                    100 + i
                })
                .await;
            (e.is_fresh(), e.into_value())
        });
    }
    let entries = set.join_all().await;
    assert_eq!(calls.load(SeqCst), 1, "one init ran");
    assert_eq!(cache.stats().misses(), tasks as u64, "all waited for it");
    assert_eq!(entries.iter().filter(|(fresh, _)| *fresh).count(), 1);
    assert!(
        entries.iter().all(|&(_, v)| v == entries[0].1),
        "{entries:?}"
    );
    assert_eq!(cache.get(&7), Some(entries[0].1));
}

#[tokio::test]
async fn or_insert_with_async_runs_one_init_for_tasks_on_a_current_thread_runtime() {
    bounded(
        "32 tasks, current thread",
        one_init_and_one_fresh_entry_for_concurrent_tasks(32),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn or_insert_with_async_runs_one_init_for_tasks_on_a_multi_thread_runtime() {
    bounded(
        "64 tasks, multi thread",
        one_init_and_one_fresh_entry_for_concurrent_tasks(64),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn or_try_insert_with_async_shares_one_error_with_its_waiters() {
    const TASKS: usize = 16;
    bounded("shared error", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for i in 0..TASKS {
            let (cache, calls) = (cache.clone(), calls.clone());
            set.spawn(async move {
                let inner = cache.clone();
                cache
                    .entry(1)
                    .or_try_insert_with_async(async move {
                        calls.fetch_add(1, SeqCst);
                        until_misses(&inner, TASKS as u64).await;
                        Err::<u32, _>(DbDown(i))
                    })
                    .await
            });
        }
        let errors: Vec<Arc<DbDown>> = set
            .join_all()
            .await
            .into_iter()
            .map(|r| r.expect_err("the only init failed"))
            .collect();
        assert_eq!(calls.load(SeqCst), 1, "one init ran");
        assert!(
            errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
            "every caller got the same Arc: {errors:?}"
        );
        assert!(!cache.contains_key(&1), "errors are not cached");
        let next = cache
            .entry(1)
            .or_try_insert_with_async(async { Ok::<_, DbDown>(3) })
            .await
            .unwrap();
        assert_eq!((next.is_fresh(), next.into_value()), (true, 3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn or_optionally_insert_with_async_shares_one_none_with_its_waiters() {
    const TASKS: usize = 16;
    bounded("shared None", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for _ in 0..TASKS {
            let (cache, calls) = (cache.clone(), calls.clone());
            set.spawn(async move {
                let inner = cache.clone();
                cache
                    .entry(1)
                    .or_optionally_insert_with_async(async move {
                        calls.fetch_add(1, SeqCst);
                        until_misses(&inner, TASKS as u64).await;
                        None
                    })
                    .await
                    .map(Entry::into_value)
            });
        }
        let found = set.join_all().await;
        assert_eq!(calls.load(SeqCst), 1, "one init ran, its None shared");
        assert!(found.iter().all(Option::is_none), "{found:?}");
        assert!(!cache.contains_key(&1), "a None is not cached");
    })
    .await;
}

#[tokio::test]
async fn and_compute_with_async_reports_what_it_did() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let shown = Arc::new(Mutex::new(Vec::new()));
    let compute = |op: Op<u32>| {
        let shown = shown.clone();
        let cache = cache.clone();
        async move {
            let f = |e| {
                shown.lock().unwrap().push(value_of(e));
                let op = op.clone();
                async move { op }
            };
            cache.entry(1).and_compute_with_async(f).await
        }
    };
    let r = compute(Op::Nop).await;
    assert!(matches!(r, CompResult::StillNone(k) if *k == 1));
    let r = compute(Op::Remove).await;
    assert!(matches!(r, CompResult::StillNone(_)));
    let r = compute(Op::Put(1)).await;
    assert!(
        matches!(&r, CompResult::Inserted(e) if *e.value() == 1 && e.is_fresh() && !e.is_old_value_replaced())
    );
    let r = compute(Op::Nop).await;
    assert!(matches!(&r, CompResult::Unchanged(e) if *e.value() == 1 && !e.is_fresh()));
    let r = compute(Op::Put(2)).await;
    assert!(
        matches!(&r, CompResult::ReplacedWith(e) if *e.value() == 2 && e.is_fresh() && e.is_old_value_replaced())
    );
    let r = compute(Op::Remove).await;
    assert!(matches!(&r, CompResult::Removed(e) if *e.value() == 2 && !e.is_fresh()));
    assert!(!cache.contains_key(&1));
    assert_eq!(
        *shown.lock().unwrap(),
        [None, None, None, Some(1), Some(1), Some(2)]
    );
    // One hit or miss per compute (the `contains_key` counts none), no load.
    let stats = cache.stats();
    assert_eq!((stats.hits(), stats.misses(), stats.loads()), (3, 3, 0));
}

#[tokio::test]
async fn and_try_compute_with_async_leaves_the_cache_alone_on_error() {
    let (cache, heard) = heard_cache();
    cache.insert(1, 1);
    let take = |e: Option<Entry<u32, u32>>| async move {
        match value_of(e) {
            Some(n) if n > 0 => Ok(Op::Put(n - 1)),
            _ => Err("sold out"),
        }
    };
    let r = cache.entry(1).and_try_compute_with_async(take).await;
    assert!(matches!(r, Ok(CompResult::ReplacedWith(e)) if *e.value() == 0));
    let r = cache.entry(1).and_try_compute_with_async(take).await;
    assert_eq!(r.unwrap_err(), "sold out");
    assert_eq!(cache.get(&1), Some(0), "the error changed nothing");
    assert_eq!(*heard.lock().unwrap(), [(1, 1, RemovalCause::Replaced)]);
}

#[tokio::test]
async fn and_upsert_with_async_inserts_then_replaces() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let add = |e: Option<Entry<u32, u32>>| async move { value_of(e).unwrap_or(0) + 5 };
    let first = cache.entry(1).and_upsert_with_async(add).await;
    assert_eq!(
        (first.into_value(), cache.get(&1)),
        (5, Some(5)),
        "inserted"
    );
    let second = cache.entry(1).and_upsert_with_async(add).await;
    assert!(second.is_fresh() && second.is_old_value_replaced());
    assert_eq!((second.into_value(), cache.get(&1)), (10, Some(10)));
}

#[tokio::test]
async fn entry_by_ref_async_forms_do_what_entry_does() {
    let cache: Cache<String, u32> = Cache::new(100);
    let made = cache
        .entry_by_ref("a")
        .or_insert_with_async(async { 1 })
        .await;
    assert_eq!((made.key().as_str(), made.is_fresh()), ("a", true));
    let none = cache
        .entry_by_ref("b")
        .or_optionally_insert_with_async(async { None })
        .await;
    assert!(none.is_none() && !cache.contains_key("b"));
    let err = cache
        .entry_by_ref("b")
        .or_try_insert_with_async(async { Err::<u32, _>("no") })
        .await;
    assert_eq!(*err.unwrap_err(), "no");
    let put = cache
        .entry_by_ref("b")
        .and_compute_with_async(|_| async { Op::Put(2) })
        .await;
    assert!(matches!(put, CompResult::Inserted(e) if e.key() == "b"));
    let failed = cache
        .entry_by_ref("b")
        .and_try_compute_with_async(|_| async { Err::<Op<u32>, _>("no") })
        .await;
    assert_eq!(failed.unwrap_err(), "no");
    let bumped = cache
        .entry_by_ref("a")
        .and_upsert_with_async(|e| async move { e.map_or(0, Entry::into_value) + 10 })
        .await;
    assert!(bumped.is_old_value_replaced());
    assert_eq!((cache.get("a"), cache.get("b")), (Some(11), Some(2)));
}

/// Every async entry future can move between threads (spawned on a
/// multi-thread runtime) when its key, value and closure can.
#[test]
fn the_async_entry_futures_are_send() {
    fn send<T: Send>(t: T) -> T {
        t
    }
    let cache: Cache<String, u32> = Cache::new(10);
    drop(send(
        cache.entry("k".into()).or_insert_with_async(async { 1 }),
    ));
    drop(send(
        cache
            .entry("k".into())
            .or_optionally_insert_with_async(async { None }),
    ));
    drop(send(
        cache
            .entry("k".into())
            .or_try_insert_with_async(async { Err::<u32, ()>(()) }),
    ));
    drop(send(
        cache
            .entry("k".into())
            .and_compute_with_async(|_| async { Op::Put(1) }),
    ));
    drop(send(cache.entry("k".into()).and_try_compute_with_async(
        |_| async { Err::<Op<u32>, ()>(()) },
    )));
    drop(send(
        cache
            .entry("k".into())
            .and_upsert_with_async(|_| async { 1 }),
    ));
    drop(send(
        cache.entry_by_ref("k").or_insert_with_async(async { 1 }),
    ));
    drop(send(
        cache
            .entry_by_ref("k")
            .and_upsert_with_async(|_| async { 1 }),
    ));
}

/// `tasks` tasks each add one to a key `each` times with
/// `and_upsert_with_async`, every future suspending once while it leads
/// the key: no increment is lost.
async fn async_upserts_lose_no_increment(tasks: u32, each: u32) {
    let cache: Cache<u32, u32> = Cache::new(100);
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let cache = cache.clone();
        set.spawn(async move {
            for _ in 0..each {
                cache
                    .entry(0)
                    .and_upsert_with_async(|e| async move {
                        tokio::task::yield_now().await;
                        plus_one(e)
                    })
                    .await;
            }
        });
    }
    set.join_all().await;
    assert_eq!(cache.get(&0), Some(tasks * each));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_upserts_of_one_key_from_many_tasks_are_atomic() {
    bounded(
        "8 x 1000 upserts, multi thread",
        async_upserts_lose_no_increment(8, 1_000),
    )
    .await;
}

#[tokio::test]
async fn async_upserts_wait_for_each_other_without_blocking_a_current_thread_runtime() {
    bounded(
        "8 x 200 upserts, current thread",
        async_upserts_lose_no_increment(8, 200),
    )
    .await;
}

/// Each kind of plain write, made while the compute's first future waits.
const WRITES: [&str; 5] = [
    "insert",
    "remove",
    "invalidate",
    "invalidate_all",
    "invalidate_entries_if",
];

fn write(cache: &Cache<u32, u32>, kind: &str) {
    match kind {
        "insert" => cache.insert(1, 100),
        "remove" => drop(cache.remove(&1)),
        "invalidate" => cache.invalidate(&1),
        "invalidate_all" => cache.invalidate_all(),
        "invalidate_entries_if" => cache.invalidate_entries_if(|k, _| *k == 1),
        _ => unreachable!(),
    }
}

/// The compute's first future waits on `release`; `write` lands meanwhile.
/// Returns what the closure was shown on each call and the result.
async fn compute_overtaken_by(
    cache: &Cache<u32, u32>,
    write: impl FnOnce(),
    op: fn(Option<u32>) -> Op<u32>,
) -> (Vec<Option<u32>>, CompResult<u32, u32>) {
    let shown = Arc::new(Mutex::new(Vec::new()));
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let compute = {
        let (cache, shown) = (cache.clone(), shown.clone());
        let (started, release) = (started.clone(), release.clone());
        tokio::spawn(async move {
            let f = |e| {
                let value = value_of(e);
                let mut shown = shown.lock().unwrap();
                shown.push(value);
                let first = shown.len() == 1;
                let (started, release) = (started.clone(), release.clone());
                async move {
                    if first {
                        started.notify_one();
                        release.notified().await;
                    }
                    op(value)
                }
            };
            cache.entry(1).and_compute_with_async(f).await
        })
    };
    started.notified().await;
    write();
    release.notify_one();
    let result = compute.await.unwrap();
    let shown = shown.lock().unwrap().clone();
    (shown, result)
}

#[tokio::test]
async fn a_write_while_the_future_is_pending_runs_the_closure_again_on_its_outcome() {
    bounded("computes overtaken by writes", async {
        for kind in WRITES {
            let (cache, heard) = heard_cache();
            cache.insert(1, 1);
            let (shown, r) = compute_overtaken_by(
                &cache,
                || write(&cache, kind),
                |v| Op::Put(v.unwrap_or(0) + 1),
            )
            .await;
            let after = if kind == "insert" { Some(100) } else { None };
            assert_eq!(shown, [Some(1), after], "{kind}");
            let put = after.unwrap_or(0) + 1;
            assert_eq!(cache.get(&1), Some(put), "{kind}: the write was built on");
            match after {
                Some(_) => assert!(matches!(r, CompResult::ReplacedWith(e) if *e.value() == put)),
                None => assert!(matches!(r, CompResult::Inserted(e) if *e.value() == put)),
            }
            // The write's removal, then the replace of its value (if any):
            // the first call's operation never reached the cache.
            let mut expected = vec![(
                1,
                1,
                match after {
                    Some(_) => RemovalCause::Replaced,
                    None => RemovalCause::Explicit,
                },
            )];
            if after.is_some() {
                expected.push((1, 100, RemovalCause::Replaced));
            }
            assert_eq!(*heard.lock().unwrap(), expected, "{kind}");
        }
    })
    .await;
}

#[tokio::test]
async fn an_async_nop_overtaken_by_a_write_is_not_run_again() {
    bounded("a nop overtaken by an insert", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        cache.insert(1, 1);
        let (shown, r) = compute_overtaken_by(&cache, || cache.insert(1, 2), |_| Op::Nop).await;
        assert_eq!(shown, [Some(1)]);
        assert!(matches!(r, CompResult::Unchanged(e) if *e.value() == 1));
        assert_eq!(cache.get(&1), Some(2));
    })
    .await;
}

#[tokio::test]
async fn writes_of_other_keys_while_the_future_is_pending_do_not_run_it_again() {
    bounded("writes of other keys", async {
        let cache: Cache<u32, u32> = Cache::builder().num_shards(1).build().unwrap();
        let other = || {
            cache.insert(2, 2);
            cache.invalidate(&3);
        };
        let (shown, r) = compute_overtaken_by(&cache, other, |_| Op::Put(1)).await;
        assert_eq!(shown, [None]);
        assert!(matches!(r, CompResult::Inserted(_)));
        assert_eq!((cache.get(&1), cache.get(&2)), (Some(1), Some(2)));
    })
    .await;
}

/// How the leading call is made to stop in the middle of its future.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// Its future panics.
    Panic,
    /// Its future is dropped (the task cancelled, a `select!` lost).
    Drop,
}

/// Driven by hand, no runtime: a compute leads key 1 and stops in the
/// middle of its future while an async upsert and an async load wait for
/// it. Both are woken, neither ran its closure before, the stopped
/// compute's operation never lands, and the waiters then finish.
fn a_stopped_compute_wakes_its_waiters(stop: Stop) {
    let (cache, heard) = heard_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let (go, gate) = oneshot::channel::<()>();
    let mut gate = Some(gate);
    let mut leader = Box::pin(cache.entry(1).and_compute_with_async(|_| {
        calls.fetch_add(1, SeqCst);
        let gate = gate.take().expect("called once");
        async {
            let _ = gate.await;
            panic!("compute exploded")
        }
    }));
    let leader_wakes = Wakes::new();
    assert!(poll_with(leader.as_mut(), &leader_wakes).is_pending());

    let upserted = Arc::new(AtomicUsize::new(0));
    let mut upsert = Box::pin(cache.entry(1).and_upsert_with_async(|e| {
        upserted.fetch_add(1, SeqCst);
        async move { plus_one(e) }
    }));
    let mut load = Box::pin(cache.entry(1).or_insert_with_async(async { 10 }));
    let (upsert_wakes, load_wakes) = (Wakes::new(), Wakes::new());
    assert!(poll_with(upsert.as_mut(), &upsert_wakes).is_pending());
    assert!(poll_with(load.as_mut(), &load_wakes).is_pending());
    assert_eq!(upserted.load(SeqCst), 0, "the upsert waits for the leader");

    match stop {
        Stop::Panic => {
            go.send(()).unwrap();
            let polled = panic::catch_unwind(AssertUnwindSafe(|| {
                poll_with(leader.as_mut(), &leader_wakes).is_ready()
            }));
            assert_eq!(panic_message(&*polled.unwrap_err()), "compute exploded");
            // An executor drops a task whose poll panicked.
            drop(leader);
        }
        Stop::Drop => drop(leader),
    }
    assert!(upsert_wakes.count() >= 1, "the upsert was woken");
    assert!(load_wakes.count() >= 1, "the load was woken");
    assert!(
        !cache.contains_key(&1),
        "the stopped compute applied nothing"
    );

    // The load leads next and caches its value; the upsert then adds one.
    let loaded = match poll_with(load.as_mut(), &load_wakes) {
        std::task::Poll::Ready(e) => e,
        std::task::Poll::Pending => panic!("the woken load did not finish"),
    };
    assert_eq!((loaded.is_fresh(), loaded.into_value()), (true, 10));
    let upserted_entry = match poll_with(upsert.as_mut(), &upsert_wakes) {
        std::task::Poll::Ready(e) => e,
        std::task::Poll::Pending => panic!("the woken upsert did not finish"),
    };
    assert_eq!(upserted_entry.into_value(), 11);
    assert_eq!(cache.get(&1), Some(11));
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(*heard.lock().unwrap(), [(1, 10, RemovalCause::Replaced)]);
}

#[test]
fn a_panicking_compute_future_wakes_its_waiters_and_leaves_the_key_as_it_was() {
    a_stopped_compute_wakes_its_waiters(Stop::Panic);
}

#[test]
fn a_dropped_compute_future_wakes_its_waiters_and_leaves_the_key_as_it_was() {
    a_stopped_compute_wakes_its_waiters(Stop::Drop);
}

/// How a leading task is cancelled.
#[derive(Clone, Copy, Debug)]
enum Cancel {
    /// `JoinHandle::abort` on the leader's task.
    Abort,
    /// The leader's task drops the future itself, losing a `select!`.
    Select,
}

/// A compute whose future never finishes leads key 1 (holding 1) while
/// `waiters` tasks' async upserts wait; cancelling it applies nothing, and
/// every waiter then adds its one.
async fn cancelled_compute_hands_the_key_on(waiters: u32, how: Cancel) {
    let cache: Cache<u32, u32> = Cache::new(100);
    cache.insert(1, 1);
    let (started, cancel) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let leader = {
        let (cache, started, cancel) = (cache.clone(), started.clone(), cancel.clone());
        tokio::spawn(async move {
            let compute = cache.entry(1).and_compute_with_async(|_| {
                let started = started.clone();
                async move {
                    started.notify_one();
                    std::future::pending::<Op<u32>>().await
                }
            });
            tokio::select! {
                r = compute => Some(r),
                () = cancel.notified() => None,
            }
        })
    };
    started.notified().await;
    let arrived = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..waiters {
        let (cache, arrived) = (cache.clone(), arrived.clone());
        set.spawn(async move {
            arrived.fetch_add(1, SeqCst);
            cache
                .entry(1)
                .and_upsert_with_async(|e| async move { plus_one(e) })
                .await
                .into_value()
        });
    }
    while arrived.load(SeqCst) < waiters as usize {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cache.get(&1), Some(1), "the waiters wait for the leader");
    match how {
        Cancel::Abort => {
            leader.abort();
            assert!(leader.await.unwrap_err().is_cancelled());
        }
        Cancel::Select => {
            cancel.notify_one();
            assert!(
                leader.await.unwrap().is_none(),
                "the compute lost the select"
            );
        }
    }
    let mut values = set.join_all().await;
    values.sort_unstable();
    assert_eq!(values, (2..2 + waiters).collect::<Vec<_>>());
    assert_eq!(cache.get(&1), Some(1 + waiters));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_compute_hands_the_key_to_its_waiters() {
    bounded(
        "aborted compute",
        cancelled_compute_hands_the_key_on(16, Cancel::Abort),
    )
    .await;
}

#[tokio::test]
async fn a_compute_that_loses_a_select_hands_the_key_to_its_waiters() {
    bounded(
        "compute dropped by select",
        cancelled_compute_hands_the_key_on(16, Cancel::Select),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_or_insert_with_async_hands_the_load_to_a_waiter() {
    const WAITERS: usize = 16;
    bounded("aborted or_insert_with_async", async {
        let cache: Cache<u32, usize> = Cache::new(100);
        let started = Arc::new(Notify::new());
        let leader = {
            let (cache, started) = (cache.clone(), started.clone());
            tokio::spawn(async move {
                cache
                    .entry(5)
                    .or_insert_with_async(async move {
                        started.notify_one();
                        std::future::pending::<usize>().await
                    })
                    .await
            })
        };
        started.notified().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for i in 0..WAITERS {
            let (cache, calls) = (cache.clone(), calls.clone());
            set.spawn(async move {
                let e = cache
                    .entry(5)
                    .or_insert_with_async(async move {
                        calls.fetch_add(1, SeqCst);
                        100 + i
                    })
                    .await;
                (e.is_fresh(), e.into_value())
            });
        }
        until_misses(&cache, 1 + WAITERS as u64).await;
        assert_eq!(calls.load(SeqCst), 0, "the waiters wait for the leader");
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        let entries = set.join_all().await;
        assert_eq!(calls.load(SeqCst), 1, "one waiter ran its own init");
        assert_eq!(entries.iter().filter(|(fresh, _)| *fresh).count(), 1);
        assert!(
            entries.iter().all(|&(_, v)| v == entries[0].1),
            "{entries:?}"
        );
        assert_eq!(cache.get(&5), Some(entries[0].1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_get_with_waits_for_an_async_compute_and_takes_its_value() {
    bounded("blocking get_with behind an async compute", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let compute = {
            let (cache, started, release) = (cache.clone(), started.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .entry(1)
                    .and_compute_with_async(|_| {
                        let (started, release) = (started.clone(), release.clone());
                        async move {
                            started.notify_one();
                            release.notified().await;
                            Op::Put(10)
                        }
                    })
                    .await
            })
        };
        started.notified().await;
        let loader = {
            let cache = cache.clone();
            on_thread(move || cache.get_with(1, || unreachable!("the compute's value is shared")))
        };
        // The compute's first look and the get_with's lookup.
        until_misses(&cache, 2).await;
        release.notify_one();
        assert!(matches!(compute.await.unwrap(), CompResult::Inserted(_)));
        assert_eq!(loader.await.unwrap(), 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_compute_waits_for_a_blocking_get_with_and_is_shown_its_value() {
    bounded("async compute behind a blocking get_with", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        let (loading_tx, loading) = oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let loader = {
            let cache = cache.clone();
            on_thread(move || {
                cache.get_with(2, || {
                    loading_tx.send(()).unwrap();
                    released.recv().unwrap();
                    20
                })
            })
        };
        loading.await.unwrap();
        let compute = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .entry(2)
                    .and_compute_with_async(|e| async move {
                        Op::Put(value_of(e).expect("the load's value") + 1)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.peek(&2), None, "the compute waits for the load");
        release.send(()).unwrap();
        assert_eq!(loader.await.unwrap(), 20);
        let r = compute.await.unwrap();
        assert!(matches!(r, CompResult::ReplacedWith(e) if *e.value() == 21));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_async_computes_of_one_key_are_atomic_together() {
    const EACH: u32 = 500;
    bounded("4 threads and 4 tasks adding", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let cache = cache.clone();
                on_thread(move || {
                    for i in 0..EACH {
                        if (t + i) % 2 == 0 {
                            cache.entry(0).and_upsert_with(plus_one);
                        } else {
                            cache.entry(0).and_compute_with(|e| Op::Put(plus_one(e)));
                        }
                    }
                })
            })
            .collect();
        let mut set = JoinSet::new();
        for _ in 0..4 {
            let cache = cache.clone();
            set.spawn(async move {
                for _ in 0..EACH {
                    cache
                        .entry(0)
                        .and_upsert_with_async(|e| async move {
                            tokio::task::yield_now().await;
                            plus_one(e)
                        })
                        .await;
                }
            });
        }
        set.join_all().await;
        for t in threads {
            t.await.unwrap();
        }
        assert_eq!(cache.get(&0), Some(8 * EACH));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_compute_using_its_own_key_panics_instead_of_hanging() {
    bounded("self-computing async closure", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        // Awaiting a compute of its own key inside the future.
        let awaiting = {
            let cache = cache.clone();
            tokio::spawn(async move {
                let inner = cache.clone();
                cache
                    .entry(1)
                    .and_compute_with_async(move |_| {
                        let inner = inner.clone();
                        async move {
                            inner
                                .entry(1)
                                .and_compute_with_async(|_| async { Op::Put(1) })
                                .await;
                            Op::Put(2)
                        }
                    })
                    .await
            })
        };
        // Blocking on a load of its own key in the closure's body.
        let blocking = {
            let cache = cache.clone();
            tokio::spawn(async move {
                let inner = cache.clone();
                cache
                    .entry(2)
                    .and_compute_with_async(move |_| {
                        let v = inner.get_with(2, || 3);
                        async move { Op::Put(v) }
                    })
                    .await
            })
        };
        for task in [awaiting, blocking] {
            let message = panic_message(&*task.await.unwrap_err().into_panic());
            assert!(message.contains("its own key"), "{message}");
        }
        for key in [1, 2] {
            let e = cache.entry(key).or_insert_with_async(async { 4 }).await;
            assert_eq!(e.into_value(), 4, "usable after");
        }
    })
    .await;
}

/// A blocking compute on a plain thread waits for an async compute of the
/// key under way, and is shown the value it put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_compute_waits_for_an_async_one_under_way() {
    bounded("blocking compute behind an async one", async {
        let cache: Cache<u32, u32> = Cache::new(100);
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let compute = {
            let (cache, started, release) = (cache.clone(), started.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .entry(1)
                    .and_upsert_with_async(|e| {
                        let (started, release) = (started.clone(), release.clone());
                        async move {
                            started.notify_one();
                            release.notified().await;
                            plus_one(e)
                        }
                    })
                    .await
            })
        };
        started.notified().await;
        let blocking = {
            let cache = cache.clone();
            on_thread(move || cache.entry(1).and_upsert_with(plus_one).into_value())
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.peek(&1), None, "the blocking compute waits");
        release.notify_one();
        assert_eq!(compute.await.unwrap().into_value(), 1);
        assert_eq!(
            blocking.await.unwrap(),
            2,
            "shown the async compute's value"
        );
    })
    .await;
}

/// `or_insert_async` and `or_default_async`, on both selectors: the value
/// is used only on a miss, and the entry is fresh only then.
#[tokio::test]
async fn or_insert_async_and_or_default_async_use_their_value_only_on_a_miss() {
    let cache: Cache<String, u32> = Cache::new(10);
    let made = cache.entry("a".to_string()).or_insert_async(1).await;
    assert_eq!((made.is_fresh(), made.into_value()), (true, 1));
    let found = cache.entry("a".to_string()).or_insert_async(2).await;
    assert_eq!((found.is_fresh(), found.into_value()), (false, 1));
    let found = cache.entry_by_ref("a").or_insert_async(3).await;
    assert_eq!((found.is_fresh(), found.into_value()), (false, 1));
    let made = cache.entry_by_ref("b").or_insert_async(4).await;
    assert_eq!((made.is_fresh(), made.into_value()), (true, 4));
    let made = cache.entry("c".to_string()).or_default_async().await;
    assert_eq!((made.is_fresh(), made.into_value()), (true, 0));
    cache.insert("d".to_string(), 7);
    let found = cache.entry_by_ref("d").or_default_async().await;
    assert_eq!((found.is_fresh(), found.into_value()), (false, 7));
    let made = cache.entry_by_ref("e").or_default_async().await;
    assert!(made.is_fresh());
    assert_eq!(
        ["a", "b", "c", "d", "e"].map(|k| cache.get(k)),
        [Some(1), Some(4), Some(0), Some(7), Some(0)]
    );
}

/// Once armed, its read hook computes the key it was read for.
struct ComputingReadHook {
    cache: Arc<OnceLock<Cache<u32, u32>>>,
    armed: Arc<AtomicBool>,
}

impl Expiry<u32, u32> for ComputingReadHook {
    fn expire_after_create(&self, _: &u32, _: &u32) -> Option<Duration> {
        None
    }

    fn expire_after_read(&self, key: &u32, _: &u32, left: Option<Duration>) -> Option<Duration> {
        if self.armed.swap(false, SeqCst) {
            let cache = self.cache.get().unwrap();
            cache.entry(*key).and_compute_with(|_| Op::Nop);
        }
        left
    }
}

/// An async compute's first look runs the read hook while the compute
/// leads the key: a hook that computes that key panics, as under the
/// blocking compute and as the hooks of the compute's write do, instead
/// of waiting for itself.
#[test]
fn a_read_hook_computing_its_key_under_an_async_compute_panics_instead_of_hanging() {
    let handle: Arc<OnceLock<Cache<u32, u32>>> = Arc::default();
    let armed = Arc::new(AtomicBool::new(false));
    let cache: Cache<u32, u32> = Cache::builder()
        .expire_after(ComputingReadHook {
            cache: handle.clone(),
            armed: armed.clone(),
        })
        .build()
        .unwrap();
    handle.set(cache.clone()).unwrap();
    cache.insert(1, 1);
    for blocking in [true, false] {
        armed.store(true, SeqCst);
        let (done, outcome) = std::sync::mpsc::channel();
        let computing = cache.clone();
        std::thread::spawn(move || {
            let put = |e: Option<Entry<u32, u32>>| async move { Op::Put(plus_one(e)) };
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                if blocking {
                    computing
                        .entry(1)
                        .and_compute_with(|e| Op::Put(plus_one(e)))
                } else {
                    let mut f = std::pin::pin!(computing.entry(1).and_compute_with_async(put));
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    loop {
                        if let std::task::Poll::Ready(r) = f.as_mut().poll(&mut cx) {
                            break r;
                        }
                    }
                }
            }));
            let _ = done.send(result.map(drop).map_err(|p| panic_message(&*p)));
        });
        let outcome = outcome
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("blocking: {blocking}: the compute hung"));
        let message = outcome.expect_err("the hook's compute of its own key panics");
        assert!(message.contains("its own key"), "{message}");
        assert_eq!(cache.get(&1), Some(1), "the key is as it was");
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A cancelled async load or compute drops the user's future while its
/// flight is still open. A value in that future whose `drop` waits for the
/// same key (a blocking `get_with` or compute) used to wait for ever for the
/// flight its own drop held open, and every later caller of the key with
/// it. The drop now runs marked as the flight's leader, as each poll does,
/// so that wait panics, as it does inside a blocking loader, and the key
/// stays usable.
#[test]
fn a_cancelled_async_load_or_compute_whose_future_waits_for_its_key_as_it_drops_does_not_hang() {
    fn run(
        name: &'static str,
        start: impl FnOnce(
            Cache<u32, u32>,
            Box<dyn FnMut() + Send>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        wait_on_drop: impl Fn(&Cache<u32, u32>) + Send + Sync + 'static,
    ) {
        let cache: Cache<u32, u32> = Cache::new(10);
        let refused = Arc::new(AtomicBool::new(false));
        let on_drop: Box<dyn FnMut() + Send> = {
            let (cache, refused) = (cache.clone(), refused.clone());
            Box::new(move || {
                let waited = panic::catch_unwind(AssertUnwindSafe(|| wait_on_drop(&cache)));
                refused.store(waited.is_err(), SeqCst);
            })
        };
        let mut leader = start(cache.clone(), on_drop);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            leader.as_mut().poll(&mut cx).is_pending(),
            "{name}: the load runs"
        );
        let dropped = on_thread(move || drop(leader));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut dropped = dropped;
        loop {
            match dropped.try_recv() {
                Ok(()) => break,
                Err(oneshot::error::TryRecvError::Empty) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{name}: dropping the cancelled future hung"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
        assert!(
            refused.load(SeqCst),
            "{name}: the wait in the drop panicked"
        );
        assert_eq!(cache.get_with(1, || 7), 7, "{name}: the key loads again");
    }
    run(
        "get_with_async",
        |cache, on_drop| {
            Box::pin(async move {
                cache
                    .get_with_async(1, async move {
                        let _d = OnDrop(on_drop);
                        std::future::pending::<u32>().await
                    })
                    .await;
            })
        },
        |cache| {
            cache.get_with(1, || 5);
        },
    );
    run(
        "and_upsert_with_async",
        |cache, on_drop| {
            let on_drop = Arc::new(Mutex::new(Some(on_drop)));
            Box::pin(async move {
                cache
                    .entry(1)
                    .and_upsert_with_async(move |_| {
                        let on_drop = on_drop.lock().unwrap().take();
                        async move {
                            let _d = on_drop.map(OnDrop);
                            std::future::pending::<u32>().await
                        }
                    })
                    .await;
            })
        },
        |cache| {
            cache.entry(1).and_upsert_with(|_| 5);
        },
    );
}
