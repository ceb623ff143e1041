//! The `larder-maintenance` thread's lifetime: one per cache, gone once the
//! last handle is dropped (wherever that happens), and doing its job on an
//! idle cache. One test only: it counts the threads of its own process, so it
//! must not share the process with other tests' caches.

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

#[path = "support/named_threads.rs"]
mod named_threads;

use larder::{Cache, RemovalCause};
use named_threads::Named;

/// `larder-maintenance` threads (read as "larder-maintena": see [`Named`]).
const MAINTENANCE: Named = Named("larder-maintena");

fn maintenance_threads() -> usize {
    MAINTENANCE.count()
}

/// Polls for up to 2 s until the count is `expected`; returns the last count.
fn wait_for_threads(expected: usize) -> usize {
    MAINTENANCE.wait_for(expected, Duration::from_secs(2))
}

#[test]
fn maintenance_threads_reap_idle_caches_and_end_with_the_last_handle() {
    let baseline = maintenance_threads();

    // Several caches, one of them with clones: one thread per cache.
    let a: Cache<u32, u32> = Cache::new(100);
    let b: Cache<String, Vec<u8>> = Cache::new(10);
    let a2 = a.clone();
    let a3 = a2.clone();
    let c: Cache<u64, u64> = Cache::new(1_000);
    assert_eq!(
        wait_for_threads(baseline + 3),
        baseline + 3,
        "one thread per cache, not per handle"
    );

    // A clone that moves to another thread and is dropped there last.
    let (moved_tx, moved_rx) = mpsc::channel::<Cache<u64, u64>>();
    let (done_tx, done_rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let cache = moved_rx.recv().expect("a cache handle");
        cache.insert(1, 1);
        done_tx.send(cache.get(&1)).unwrap();
        // `cache` (now the last handle) is dropped here, on this thread.
    });
    moved_tx.send(c.clone()).unwrap();
    drop(c);
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(Some(1)));
    worker
        .join()
        .expect("the worker drops the last handle cleanly");
    assert_eq!(
        wait_for_threads(baseline + 2),
        baseline + 2,
        "dropping the last handle on another thread ends its maintenance thread"
    );

    // An idle cache still reaps: nobody touches it after the insert, the
    // maintenance thread (within about 100 ms) expires the entry and tells the
    // listener, on its own thread.
    let (expired_tx, expired_rx) = mpsc::channel();
    let expired_tx = std::sync::Mutex::new(expired_tx);
    let idle: Cache<u32, u32> = Cache::builder()
        .eviction_listener(move |k: Arc<u32>, v, cause| {
            let name = thread::current().name().map(str::to_string);
            let _ = expired_tx.lock().unwrap().send((*k, v, cause, name));
        })
        .build()
        .unwrap();
    assert_eq!(wait_for_threads(baseline + 3), baseline + 3);
    let inserted = Instant::now();
    idle.insert_with_ttl(7, 70, Duration::from_millis(50));
    let (k, v, cause, name) = expired_rx
        .recv_timeout(Duration::from_secs(2))
        .expect("the idle cache's entry was reaped within 2 s without any call");
    assert_eq!((k, v, cause), (7, 70, RemovalCause::Expired));
    assert!(
        inserted.elapsed() >= Duration::from_millis(50),
        "reaped before its deadline"
    );
    assert_eq!(
        name.as_deref(),
        Some("larder-maintenance"),
        "reaped by the maintenance thread"
    );
    assert_eq!(idle.entry_count(), 0);

    // Dropping some handles of a cache keeps its thread; the last one ends it.
    drop(a);
    drop(a2);
    assert_eq!(
        MAINTENANCE.stays(baseline + 3),
        baseline + 3,
        "a3 still holds the cache"
    );
    assert_eq!(
        a3.get_with(1, || 10),
        10,
        "the cache works through the remaining clone"
    );
    drop(a3);
    drop(b);
    drop(idle);
    assert_eq!(
        wait_for_threads(baseline),
        baseline,
        "every maintenance thread ended once its cache's last handle was dropped"
    );
}
