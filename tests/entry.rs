//! The entry API: `entry` / `entry_by_ref` with the `or_*` family
//! (single-flight like `get_with`) and the atomic computes
//! (`and_compute_with`, `and_try_compute_with`, `and_upsert_with`).
//!
//! Tests that could hang on a bug run their threads through [`parallel`] or
//! [`within`], which fail the test after [`TIMEOUT`] instead.

use std::{
    cell::{Cell, RefCell},
    panic,
    sync::{
        Arc, Barrier, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

#[path = "support/threads.rs"]
mod threads;

use larder::{Cache, CompResult, Entry, Expiry, Op, RemovalCause, clock::MockClock};
use threads::{panic_message, parallel};

const TIMEOUT: Duration = Duration::from_secs(10);

type Heard<K, V> = Arc<Mutex<Vec<(K, V, RemovalCause)>>>;

/// Runs `f` on its own thread, re-raising its panic; fails after [`TIMEOUT`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let f = Mutex::new(Some(f));
    parallel(TIMEOUT, what, 1, move |_| {
        (f.lock().unwrap().take().expect("called once"))()
    })
    .pop()
    .expect("one result")
}

/// Holds the calling closure until `n` lookups have missed (the other
/// callers reached the cache and are about to wait), then a little longer
/// so they get from their miss to the wait. Never more than a few seconds.
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

/// A cache whose listener records every removal.
fn heard_cache(builder: larder::CacheBuilder<u32, u32>) -> (Cache<u32, u32>, Heard<u32, u32>) {
    let heard: Heard<u32, u32> = Arc::default();
    let log = heard.clone();
    let cache = builder
        .eviction_listener(move |k: Arc<u32>, v, cause| log.lock().unwrap().push((*k, v, cause)))
        .build()
        .unwrap();
    (cache, heard)
}

fn value_of(e: Option<Entry<u32, u32>>) -> Option<u32> {
    e.map(Entry::into_value)
}

#[test]
fn or_insert_with_makes_a_missing_value_and_finds_a_present_one() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let made = cache.entry(1).or_insert_with(|| 10);
    assert_eq!((*made.key(), *made.value(), made.is_fresh()), (1, 10, true));
    assert!(!made.is_old_value_replaced());
    let found = cache.entry(1).or_insert_with(|| unreachable!("present"));
    assert_eq!((found.into_value(), cache.get(&1)), (10, Some(10)));
    assert!(!cache.entry(1).or_insert(11).is_fresh());
    assert!(cache.entry(2).or_insert(20).is_fresh());
    assert!(cache.entry(3).or_default().is_fresh());
    assert_eq!(cache.get(&3), Some(0));
}

#[test]
fn or_optionally_insert_with_caches_nothing_for_none() {
    let cache: Cache<u32, u32> = Cache::new(100);
    assert!(cache.entry(1).or_optionally_insert_with(|| None).is_none());
    assert!(!cache.contains_key(&1));
    let e = cache
        .entry(1)
        .or_optionally_insert_with(|| Some(5))
        .unwrap();
    assert!(e.is_fresh());
    let e = cache.entry(1).or_optionally_insert_with(|| None).unwrap();
    let stats = cache.stats();
    assert_eq!(e.into_value(), 5);
    // The `None` was an answer, as for `optionally_get_with`.
    assert_eq!((stats.load_successes(), stats.load_failures()), (2, 0));
}

/// `or_optionally_insert_with` and `optionally_get_with` are one load: a
/// `None` from either is shared with the other's waiters.
#[test]
fn or_optionally_insert_with_shares_a_none_with_optionally_get_with() {
    use std::sync::{
        Barrier,
        atomic::{AtomicUsize, Ordering},
    };
    let cache: Cache<u32, u32> = Cache::new(100);
    let runs = AtomicUsize::new(0);
    let started = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            let got = cache.entry(1).or_optionally_insert_with(|| {
                runs.fetch_add(1, Ordering::SeqCst);
                started.wait();
                // Wait until the other caller has joined this load.
                while cache.stats().misses() < 2 {
                    std::thread::yield_now();
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            });
            assert!(got.is_none());
        });
        started.wait();
        let got = cache.optionally_get_with(1, || {
            runs.fetch_add(1, Ordering::SeqCst);
            Some(9)
        });
        assert_eq!(got, None, "the waiter shares the None");
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(!cache.contains_key(&1));
}

#[test]
fn or_try_insert_with_caches_values_and_not_errors() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let err = cache
        .entry(1)
        .or_try_insert_with(|| Err("down"))
        .unwrap_err();
    assert_eq!(*err, "down");
    assert!(!cache.contains_key(&1));
    let ok = cache
        .entry(1)
        .or_try_insert_with(|| Ok::<_, &str>(3))
        .unwrap();
    assert!(ok.is_fresh());
    let again = cache.entry(1).or_try_insert_with(|| Err("down")).unwrap();
    assert_eq!((again.is_fresh(), again.into_value()), (false, 3));
}

#[test]
fn entry_by_ref_does_what_entry_does() {
    let cache: Cache<String, u32> = Cache::new(100);
    let e = cache.entry_by_ref("a").or_insert_with(|| 1);
    assert_eq!((e.key().as_str(), e.is_fresh()), ("a", true));
    assert!(!cache.entry_by_ref("a").or_insert(2).is_fresh());
    assert!(cache.entry_by_ref("b").or_default().is_fresh());
    assert!(
        cache
            .entry_by_ref("c")
            .or_optionally_insert_with(|| None)
            .is_none()
    );
    assert!(
        cache
            .entry_by_ref("c")
            .or_try_insert_with(|| Err(()))
            .is_err()
    );
    let bumped = cache
        .entry_by_ref("a")
        .and_compute_with(|e| Op::Put(e.unwrap().into_value() + 1));
    assert!(matches!(bumped, CompResult::ReplacedWith(e) if *e.value() == 2));
    let up = cache
        .entry_by_ref("d")
        .and_upsert_with(|e| e.map_or(7, |e| e.into_value()));
    assert_eq!((up.into_value(), cache.get("d")), (7, Some(7)));
    let err = cache
        .entry_by_ref("d")
        .and_try_compute_with(|_| Err::<Op<u32>, _>("no"));
    assert_eq!(err.unwrap_err(), "no");
    assert_eq!(cache.get("d"), Some(7));
}

#[test]
fn and_compute_with_reports_what_it_did() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let r = cache.entry(1).and_compute_with(|e| {
        assert!(e.is_none());
        Op::Nop
    });
    assert!(matches!(r, CompResult::StillNone(k) if *k == 1));
    let r = cache.entry(1).and_compute_with(|_| Op::Remove);
    assert!(matches!(r, CompResult::StillNone(_)));
    let r = cache.entry(1).and_compute_with(|_| Op::Put(10));
    let CompResult::Inserted(e) = r else {
        panic!("{r:?}")
    };
    assert!(e.is_fresh() && !e.is_old_value_replaced());
    let r = cache.entry(1).and_compute_with(|e| {
        assert_eq!(value_of(e), Some(10));
        Op::Nop
    });
    let CompResult::Unchanged(e) = r else {
        panic!("{r:?}")
    };
    assert_eq!((*e.value(), e.is_fresh()), (10, false));
    let r = cache
        .entry(1)
        .and_compute_with(|e| Op::Put(value_of(e).unwrap() + 1));
    let CompResult::ReplacedWith(e) = r else {
        panic!("{r:?}")
    };
    assert!(e.is_fresh() && e.is_old_value_replaced() && *e.value() == 11);
    let r = cache.entry(1).and_compute_with(|_| Op::Remove);
    let CompResult::Removed(e) = r else {
        panic!("{r:?}")
    };
    assert_eq!((*e.value(), cache.get(&1)), (11, None));
}

#[test]
fn and_try_compute_with_leaves_the_cache_alone_on_error() {
    let cache: Cache<u32, u32> = Cache::new(100);
    cache.insert(1, 1);
    let r = cache
        .entry(1)
        .and_try_compute_with(|_| Err::<Op<u32>, _>("refused"));
    assert_eq!(r.unwrap_err(), "refused");
    assert_eq!(cache.get(&1), Some(1));
    let r = cache
        .entry(1)
        .and_try_compute_with(|e| Ok::<_, ()>(Op::Put(value_of(e).unwrap() * 5)));
    assert!(matches!(r, Ok(CompResult::ReplacedWith(e)) if *e.value() == 5));
    // The flight of the failed compute was closed: a load proceeds.
    assert_eq!(cache.get_with(2, || 2), 2);
}

#[test]
fn and_upsert_with_inserts_then_replaces() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let first = cache.entry(1).and_upsert_with(|e| {
        assert!(e.is_none());
        1
    });
    assert!(first.is_fresh() && !first.is_old_value_replaced());
    let second = cache.entry(1).and_upsert_with(|e| value_of(e).unwrap() + 1);
    assert!(second.is_fresh() && second.is_old_value_replaced());
    assert_eq!(cache.get(&1), Some(2));
}

#[test]
fn or_insert_with_runs_one_closure_for_concurrent_callers() {
    const CALLERS: usize = 8;
    let cache: Cache<u32, usize> = Cache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(CALLERS));
    let entries = {
        let (cache, calls) = (cache.clone(), calls.clone());
        parallel(TIMEOUT, "or_insert_with callers", CALLERS, move |i| {
            start.wait();
            let e = cache.entry(7).or_insert_with(|| {
                calls.fetch_add(1, SeqCst);
                hold_until_misses(&cache, CALLERS as u64);
                100 + i
            });
            (e.is_fresh(), e.into_value())
        })
    };
    assert_eq!(calls.load(SeqCst), 1, "one closure ran");
    assert_eq!(entries.iter().filter(|(fresh, _)| *fresh).count(), 1);
    assert!(entries.iter().all(|&(_, v)| v == entries[0].1));
    assert_eq!(cache.get(&7), Some(entries[0].1));
}

#[test]
fn or_insert_with_overtaken_by_a_write_returns_its_value_fresh_without_caching_it() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let e = cache.entry(1).or_insert_with(|| {
        cache.insert(1, 50);
        5
    });
    assert_eq!((e.is_fresh(), e.into_value()), (true, 5));
    assert_eq!(cache.get(&1), Some(50), "the write's value stays");
}

#[test]
fn computes_of_one_key_from_many_threads_are_atomic() {
    const THREADS: usize = 8;
    const EACH: u32 = 1_000;
    let cache: Cache<u32, u32> = Cache::new(100);
    let cache2 = cache.clone();
    parallel(TIMEOUT * 6, "concurrent computes", THREADS, move |t| {
        for i in 0..EACH {
            // Half the calls of half the threads upsert, the rest compute.
            if t % 2 == 0 && i % 2 == 0 {
                cache2
                    .entry(0)
                    .and_upsert_with(|e| value_of(e).unwrap_or(0) + 1);
            } else {
                cache2
                    .entry(0)
                    .and_compute_with(|e| Op::Put(value_of(e).unwrap_or(0) + 1));
            }
        }
    });
    assert_eq!(cache.get(&0), Some(THREADS as u32 * EACH));
}

#[test]
fn computes_and_loads_of_a_key_wait_for_each_other() {
    let cache: Cache<u32, u32> = Cache::new(100);
    // A load waits for a compute under way and takes the value it puts.
    let loaded = {
        let cache = cache.clone();
        within("compute then load", move || {
            let c = cache.clone();
            let mut waiter = None;
            let r = cache.entry(1).and_compute_with(|_| {
                let c = c.clone();
                waiter = Some(thread::spawn(move || {
                    c.entry(1)
                        .or_insert_with(|| unreachable!("the compute's value is shared"))
                }));
                hold_until_misses(&cache, 2);
                Op::Put(10)
            });
            assert!(matches!(r, CompResult::Inserted(_)));
            waiter.unwrap().join().unwrap()
        })
    };
    assert_eq!((loaded.is_fresh(), loaded.into_value()), (false, 10));
    // A compute waits for a load under way and is shown its value.
    let (loader_in, loading) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let loader = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.get_with(2, || {
                loader_in.send(()).unwrap();
                released.recv_timeout(TIMEOUT).unwrap();
                20
            })
        })
    };
    loading.recv_timeout(TIMEOUT).unwrap();
    let computed = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache
                .entry(2)
                .and_compute_with(|e| Op::Put(value_of(e).expect("the load's value") + 1))
        })
    };
    thread::sleep(Duration::from_millis(100));
    release.send(()).unwrap();
    assert_eq!(within("loader", move || loader.join().unwrap()), 20);
    let r = within("compute after load", move || computed.join().unwrap());
    assert!(matches!(r, CompResult::ReplacedWith(e) if *e.value() == 21));
}

/// Each kind of plain write, made by the closure's first run on its own key.
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

#[test]
fn a_write_during_the_compute_runs_the_closure_again_on_its_outcome() {
    for kind in WRITES {
        let (cache, heard) = heard_cache(Cache::builder());
        cache.insert(1, 1);
        let shown: RefCell<Vec<Option<u32>>> = RefCell::default();
        let r = cache.entry(1).and_compute_with(|e| {
            let mut shown = shown.borrow_mut();
            shown.push(value_of(e));
            if shown.len() == 1 {
                write(&cache, kind);
            }
            Op::Put(shown.last().unwrap().unwrap_or(0) + 1)
        });
        let after = if kind == "insert" { Some(100) } else { None };
        assert_eq!(*shown.borrow(), [Some(1), after], "{kind}");
        let put = after.unwrap_or(0) + 1;
        assert_eq!(cache.get(&1), Some(put), "{kind}");
        match after {
            Some(_) => assert!(matches!(r, CompResult::ReplacedWith(e) if *e.value() == put)),
            None => assert!(matches!(r, CompResult::Inserted(e) if *e.value() == put)),
        }
        // The write's removal, then the replace of its value (if any): the
        // first run's operation never reached the cache.
        let mut expected = vec![(
            1,
            1,
            if after.is_some() {
                RemovalCause::Replaced
            } else {
                RemovalCause::Explicit
            },
        )];
        if after.is_some() {
            expected.push((1, 100, RemovalCause::Replaced));
        }
        assert_eq!(*heard.lock().unwrap(), expected, "{kind}");
    }
}

#[test]
fn a_remove_overtaken_by_a_write_runs_again() {
    let cache: Cache<u32, u32> = Cache::new(100);
    cache.insert(1, 1);
    let runs = Cell::new(0);
    let r = cache.entry(1).and_compute_with(|e| {
        runs.set(runs.get() + 1);
        if runs.get() == 1 {
            assert_eq!(value_of(e), Some(1));
            cache.insert(1, 2);
        }
        Op::Remove
    });
    assert_eq!(runs.get(), 2);
    assert!(matches!(r, CompResult::Removed(e) if *e.value() == 2));
    assert!(!cache.contains_key(&1));
}

#[test]
fn a_nop_overtaken_by_a_write_is_not_run_again() {
    let cache: Cache<u32, u32> = Cache::new(100);
    cache.insert(1, 1);
    let runs = Cell::new(0);
    let r = cache.entry(1).and_compute_with(|_| {
        runs.set(runs.get() + 1);
        cache.insert(1, 2);
        Op::Nop
    });
    assert_eq!(runs.get(), 1);
    assert!(matches!(r, CompResult::Unchanged(e) if *e.value() == 1));
    assert_eq!(cache.get(&1), Some(2));
}

#[test]
fn writes_of_other_keys_during_the_compute_do_not_run_it_again() {
    let cache: Cache<u32, u32> = Cache::builder().num_shards(1).build().unwrap();
    let runs = Cell::new(0);
    cache.entry(1).and_compute_with(|_| {
        runs.set(runs.get() + 1);
        cache.insert(2, 2);
        cache.invalidate(&3);
        Op::Put(1)
    });
    assert_eq!(
        (runs.get(), cache.get(&1), cache.get(&2)),
        (1, Some(1), Some(2))
    );
}

#[test]
fn computing_or_loading_its_own_key_panics_instead_of_hanging() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let messages = {
        let cache = cache.clone();
        within("self-computing closure", move || {
            let nested_compute = panic::catch_unwind(|| {
                cache.entry(1).and_compute_with(|_| {
                    cache.entry(1).and_compute_with(|_| Op::Put(1));
                    Op::Put(2)
                })
            });
            let nested_load = panic::catch_unwind(|| {
                cache
                    .entry(1)
                    .and_compute_with(|_| Op::Put(cache.get_with(1, || 3)))
            });
            [nested_compute, nested_load].map(|r| panic_message(&*r.unwrap_err()))
        })
    };
    for message in messages {
        assert!(message.contains("its own key"), "{message}");
    }
    assert_eq!(cache.entry(1).or_insert(4).into_value(), 4, "usable after");
}

#[test]
fn a_panicking_compute_leaves_the_cache_as_it_was_and_hands_on_the_key() {
    const WAITERS: usize = 8;
    let (cache, heard) = heard_cache(Cache::builder());
    cache.insert(1, 1);
    let (started_tx, started) = mpsc::channel();
    let leader = {
        let cache = cache.clone();
        thread::spawn(move || {
            panic::catch_unwind(|| {
                cache.entry(1).and_compute_with(|_| {
                    started_tx.send(()).unwrap();
                    // The waiters' computes count no miss: wait for them.
                    thread::sleep(Duration::from_millis(200));
                    panic!("compute exploded")
                })
            })
            .map_err(|p| panic_message(&*p))
        })
    };
    started.recv_timeout(TIMEOUT).unwrap();
    let waiters = {
        let cache = cache.clone();
        parallel(
            TIMEOUT,
            "waiters of a panicking compute",
            WAITERS,
            move |i| {
                if i % 2 == 0 {
                    let r = cache
                        .entry(1)
                        .and_compute_with(|e| Op::Put(value_of(e).unwrap() + 1));
                    r.unwrap().into_value()
                } else {
                    cache
                        .entry(1)
                        .or_insert_with(|| unreachable!())
                        .into_value()
                }
            },
        )
    };
    let leader = within("leader", move || leader.join().unwrap());
    assert_eq!(leader.unwrap_err(), "compute exploded");
    assert_eq!(cache.get(&1), Some(1 + WAITERS as u32 / 2));
    assert!(waiters.iter().all(|&v| v >= 1));
    let replaced = heard.lock().unwrap().len();
    assert_eq!(replaced, WAITERS / 2, "one Replaced per applied compute");
}

#[test]
fn expired_entries_are_absent_to_entry_operations() {
    let clock = MockClock::new();
    let (cache, heard) = heard_cache(
        Cache::builder()
            .time_to_live(Duration::from_secs(10))
            .clock(clock.clone()),
    );
    cache.insert(1, 1);
    cache.insert(2, 2);
    cache.insert(3, 3);
    clock.advance(Duration::from_secs(10));
    assert!(cache.entry(1).or_insert_with(|| 10).is_fresh());
    let r = cache.entry(2).and_compute_with(|e| {
        assert!(e.is_none(), "an expired value is not shown");
        Op::Put(20)
    });
    assert!(matches!(r, CompResult::Inserted(_)));
    let r = cache.entry(3).and_compute_with(|_| Op::Remove);
    assert!(matches!(r, CompResult::StillNone(_)));
    assert_eq!(
        (cache.get(&1), cache.get(&2), cache.get(&3)),
        (Some(10), Some(20), None)
    );
    assert_eq!(
        *heard.lock().unwrap(),
        [(1, 1, RemovalCause::Expired), (2, 2, RemovalCause::Expired)]
    );
    // A put restarts the time to live, as an insert does.
    clock.advance(Duration::from_secs(9));
    cache.entry(2).and_upsert_with(|e| value_of(e).unwrap() + 1);
    clock.advance(Duration::from_secs(9));
    assert_eq!(cache.get(&2), Some(21));
}

#[test]
fn an_entry_reaped_during_the_compute_runs_it_again_and_one_expiring_does_not() {
    let clock = MockClock::new();
    let (cache, heard) = heard_cache(
        Cache::builder()
            .time_to_live(Duration::from_secs(10))
            .clock(clock.clone()),
    );
    // Reaped while the closure ran: no write marked the compute, but the
    // entry it was shown is gone, so it runs again on the key's absence.
    cache.insert(1, 1);
    let shown: RefCell<Vec<Option<u32>>> = RefCell::default();
    let r = cache.entry(1).and_compute_with(|e| {
        shown.borrow_mut().push(value_of(e));
        if shown.borrow().len() == 1 {
            clock.advance(Duration::from_secs(10));
            cache.run_pending_tasks();
        }
        Op::Put(5)
    });
    assert_eq!(*shown.borrow(), [Some(1), None]);
    assert!(matches!(r, CompResult::Inserted(_)));
    // Expired while the closure ran, not reaped: the put replaces it, and
    // the listener hears the old value expired.
    cache.insert(2, 2);
    let runs = Cell::new(0);
    let r = cache.entry(2).and_compute_with(|_| {
        runs.set(runs.get() + 1);
        clock.advance(Duration::from_secs(10));
        Op::Put(6)
    });
    assert_eq!(runs.get(), 1);
    assert!(matches!(r, CompResult::ReplacedWith(e) if *e.value() == 6));
    assert_eq!(
        *heard.lock().unwrap(),
        [(1, 1, RemovalCause::Expired), (2, 2, RemovalCause::Expired)]
    );
}

#[test]
fn the_listener_hears_each_replaced_and_removed_value_once() {
    let (cache, heard) = heard_cache(Cache::builder());
    cache.entry(1).and_compute_with(|_| Op::Put(1));
    cache.entry(1).and_upsert_with(|_| 2);
    cache.entry(1).and_compute_with(|_| Op::Nop);
    cache.entry(1).and_compute_with(|_| Op::Put(3));
    cache.entry(1).and_compute_with(|_| Op::Remove);
    cache.entry(1).and_compute_with(|_| Op::Remove);
    assert_eq!(
        *heard.lock().unwrap(),
        [
            (1, 1, RemovalCause::Replaced),
            (1, 2, RemovalCause::Replaced),
            (1, 3, RemovalCause::Explicit),
        ]
    );
    let s = cache.stats();
    assert_eq!(
        (
            s.removals(RemovalCause::Replaced),
            s.removals(RemovalCause::Explicit)
        ),
        (2, 1)
    );
}

#[test]
fn a_put_the_policy_turns_away_is_reported_and_heard_as_a_size_eviction() {
    // Weights over the capacity are refused whatever the policy has seen.
    let (cache, heard) = heard_cache(
        Cache::builder()
            .max_capacity(10)
            .num_shards(1)
            .weigher(|_: &u32, v: &u32| *v),
    );
    let r = cache.entry(1).and_compute_with(|_| Op::Put(100));
    assert!(matches!(r, CompResult::Inserted(e) if *e.value() == 100));
    assert!(!cache.contains_key(&1));
    cache.insert(2, 5);
    let r = cache.entry(2).and_compute_with(|_| Op::Put(200));
    assert!(matches!(r, CompResult::ReplacedWith(e) if *e.value() == 200));
    assert!(!cache.contains_key(&2));
    assert_eq!(
        *heard.lock().unwrap(),
        [
            (1, 100, RemovalCause::Size),
            (2, 5, RemovalCause::Replaced),
            (2, 200, RemovalCause::Size),
        ]
    );
}

#[test]
fn entry_operations_count_one_hit_or_miss_each() {
    let cache: Cache<u32, u32> = Cache::new(100);
    let counts = |c: &Cache<u32, u32>| {
        let s = c.stats();
        (s.hits(), s.misses(), s.loads())
    };
    cache.entry(1).or_insert_with(|| 1); // miss, load
    cache.entry(1).or_insert_with(|| 2); // hit
    assert_eq!(counts(&cache), (1, 1, 1));
    cache.entry(2).and_compute_with(|_| Op::Put(2)); // miss
    cache.entry(2).and_compute_with(|_| Op::Put(3)); // hit
    cache.entry(2).and_upsert_with(|_| 4); // hit
    assert_eq!(counts(&cache), (3, 2, 1), "computes count no load");
    // A compute run again counts its first look only.
    let runs = Cell::new(0);
    cache.entry(3).and_compute_with(|_| {
        runs.set(runs.get() + 1);
        if runs.get() == 1 {
            cache.insert(3, 0);
        }
        Op::Put(3)
    });
    assert_eq!((runs.get(), counts(&cache)), (2, (3, 3, 1)));
}

#[test]
fn computes_racing_removes_lose_no_increment_and_overwrite_no_removal() {
    // Each compute adds one to what it was shown; a remove takes the count
    // so far. If no compute overwrites a removal it was not shown (nor
    // loses one to another compute), the removed counts and the final one
    // add up to the number of computes.
    const THREADS: usize = 4;
    const EACH: u64 = 2_000;
    let cache: Cache<u32, u64> = Cache::new(100);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let remover = {
        let (cache, stop) = (cache.clone(), stop.clone());
        thread::spawn(move || {
            let mut taken = 0;
            while !stop.load(SeqCst) {
                taken += cache.remove(&0).unwrap_or(0);
                thread::yield_now();
            }
            taken
        })
    };
    let computers = cache.clone();
    parallel(TIMEOUT * 6, "computes racing removes", THREADS, move |_| {
        for _ in 0..EACH {
            computers.entry(0).and_compute_with(|e| {
                // Widens the window for a removal to land in.
                thread::yield_now();
                Op::Put(e.map_or(0, |e| e.into_value()) + 1)
            });
        }
    });
    stop.store(true, SeqCst);
    let taken = within("remover", move || remover.join().unwrap());
    let left = cache.get(&0).unwrap_or(0);
    assert_eq!(
        taken + left,
        THREADS as u64 * EACH,
        "taken {taken}, left {left}"
    );
}

#[test]
fn a_weigher_panicking_on_a_put_leaves_the_key_as_it_was() {
    let (cache, heard) = heard_cache(Cache::builder().max_capacity(1_000).weigher(|_, v: &u32| {
        assert!(*v != 13, "unlucky value");
        1
    }));
    cache.insert(1, 1);
    let outcome = {
        let cache = cache.clone();
        within("put of an unweighable value", move || {
            panic::catch_unwind(|| cache.entry(1).and_compute_with(|_| Op::Put(13)))
                .map_err(|p| panic_message(&*p))
        })
    };
    assert!(outcome.unwrap_err().contains("unlucky value"));
    assert_eq!(cache.get(&1), Some(1));
    assert!(heard.lock().unwrap().is_empty());
    // The flight was handed on: the key computes and loads again.
    let r = cache
        .entry(1)
        .and_compute_with(|e| Op::Put(value_of(e).unwrap() + 1));
    assert!(matches!(r, CompResult::ReplacedWith(e) if *e.value() == 2));
    assert_eq!(cache.entry(2).or_insert_with(|| 2).into_value(), 2);
}

/// A `get_with` that missed because the entry expired while a compute's
/// closure looked at it, and then waited for that compute, must not be
/// handed the expired value when the closure leaves the key as it is
/// (`Op::Nop`): an expired entry is never returned. It loads its own.
#[test]
fn a_waiter_of_a_nop_compute_is_not_handed_a_value_that_expired_meanwhile() {
    let clock = MockClock::new();
    let cache: Cache<u32, u32> = Cache::builder()
        .time_to_live(Duration::from_secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, 1);
    let (computing, started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let compute = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.entry(1).and_compute_with(|e| {
                assert_eq!(value_of(e), Some(1));
                computing.send(()).unwrap();
                released.recv().unwrap();
                Op::Nop
            })
        })
    };
    started.recv().unwrap();
    clock.advance(Duration::from_secs(10));
    let loader = {
        let cache = cache.clone();
        thread::spawn(move || cache.get_with(1, || 99))
    };
    // The loader missed (the entry expired) and waits for the compute.
    hold_until_misses(&cache, 1);
    release.send(()).unwrap();
    let r = within("compute", move || compute.join().unwrap());
    assert!(matches!(r, CompResult::Unchanged(e) if *e.value() == 1));
    let loaded = within("loader", move || loader.join().unwrap());
    assert_eq!(loaded, 99, "the expired value was returned");
    assert_eq!(cache.get(&1), Some(99));
}

/// Times key 2 out after a second and keeps key 1 for ever; once armed,
/// its read hook (for key 1) says so on `in_hook`, waits for `go`, and
/// calls `run_pending_tasks` on the cache.
struct DrainingReadHook {
    cache: Arc<OnceLock<Cache<u32, u32>>>,
    armed: Arc<AtomicBool>,
    in_hook: Mutex<mpsc::Sender<()>>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl Expiry<u32, u32> for DrainingReadHook {
    fn expire_after_create(&self, key: &u32, _: &u32) -> Option<Duration> {
        (*key == 2).then_some(Duration::from_secs(1))
    }

    fn expire_after_read(&self, key: &u32, _: &u32, left: Option<Duration>) -> Option<Duration> {
        if *key == 1 && self.armed.swap(false, SeqCst) {
            self.in_hook.lock().unwrap().send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
            // Give the listener's compute time to start waiting.
            thread::sleep(Duration::from_millis(100));
            self.cache.get().unwrap().run_pending_tasks();
        }
        left
    }
}

/// The read hook that a compute's first look runs is user code the key's
/// waiters wait for, as the closure is: a `run_pending_tasks` called there
/// must not wait for a pass whose listener is waiting for this compute
/// (the two would wait for each other for ever).
#[test]
fn run_pending_tasks_in_the_read_hook_of_a_compute_does_not_wait_for_a_pass_waiting_for_it() {
    let clock = MockClock::new();
    let handle: Arc<OnceLock<Cache<u32, u32>>> = Arc::default();
    let (in_hook, hooked) = mpsc::channel();
    let (go, gone) = mpsc::channel();
    let armed = Arc::new(AtomicBool::new(false));
    let hook = DrainingReadHook {
        cache: handle.clone(),
        armed: armed.clone(),
        in_hook: Mutex::new(in_hook),
        go: Mutex::new(gone),
    };
    let listening = Mutex::new(go);
    let in_listener = handle.clone();
    let cache: Cache<u32, u32> = Cache::builder()
        .expire_after(hook)
        .clock(clock.clone())
        .eviction_listener(move |k: Arc<u32>, _, cause| {
            if *k == 2 && cause == RemovalCause::Expired {
                listening.lock().unwrap().send(()).unwrap();
                let cache = in_listener.get().unwrap();
                cache.entry(1).and_upsert_with(|e| value_of(e).unwrap() + 1);
            }
        })
        .build()
        .unwrap();
    handle.set(cache.clone()).unwrap();
    cache.insert(1, 1);
    cache.insert(2, 2);
    // The next read of key 1 is the compute's first look.
    armed.store(true, SeqCst);
    let compute = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache
                .entry(1)
                .and_compute_with(|e| Op::Put(value_of(e).unwrap() + 1))
        })
    };
    hooked.recv().unwrap();
    clock.advance(Duration::from_secs(2));
    // A pass reaps key 2; its listener waits for the compute of key 1.
    let pass = {
        let cache = cache.clone();
        thread::spawn(move || cache.run_pending_tasks())
    };
    let r = within("compute whose read hook drains", move || {
        pass.join().unwrap();
        compute.join().unwrap()
    });
    assert!(matches!(r, CompResult::ReplacedWith(e) if *e.value() == 2));
    assert_eq!(cache.get(&1), Some(3));
}
