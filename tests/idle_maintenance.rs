//! What an idle cache's `larder-maintenance` thread costs: it sleeps while
//! no entry is due soon instead of waking every 100 ms, and a write that
//! gives an entry an earlier deadline wakes it, so an idle cache still
//! reaps within about 100 ms of a deadline. One test only: it counts the
//! wake-ups of its own process's maintenance threads, so it must not share
//! the process with other tests' caches.

use std::{
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

#[path = "support/named_threads.rs"]
mod named_threads;

use larder::{Cache, Expiry, RemovalCause};

/// An hour from a write, 50 ms from a read.
struct ShortAfterRead;

impl Expiry<u32, u32> for ShortAfterRead {
    fn expire_after_create(&self, _: &u32, _: &u32) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }

    fn expire_after_read(&self, _: &u32, _: &u32, _: Option<Duration>) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}
use named_threads::Named;

/// `larder-maintenance` threads (read as "larder-maintena": see [`Named`]).
const MAINTENANCE: Named = Named("larder-maintena");

/// A cache whose listener sends what it hears on the returned channel.
fn heard(
    builder: larder::CacheBuilder<u32, u32>,
) -> (Cache<u32, u32>, mpsc::Receiver<(u32, RemovalCause)>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cache = builder
        .eviction_listener(move |k: Arc<u32>, _, cause| {
            let _ = tx.lock().unwrap().send((*k, cause));
        })
        .build()
        .unwrap();
    (cache, rx)
}

#[test]
fn idle_maintenance_threads_sleep_and_wake_for_an_early_deadline() {
    // No expiry at all, and a time to live of an hour with entries in:
    // nothing is due for a long time, so neither thread has work.
    let (plain, plain_heard) = heard(Cache::builder().max_capacity(100));
    plain.insert(1, 1);
    let (hourly, hourly_heard) = heard(
        Cache::builder()
            .max_capacity(100)
            .time_to_live(Duration::from_secs(3600)),
    );
    hourly.insert(1, 1);
    assert_eq!(MAINTENANCE.wait_for(2, Duration::from_secs(2)), 2);
    // Time for each thread's first pass, after which it may sleep.
    thread::sleep(Duration::from_millis(300));
    let before = MAINTENANCE.wakeups();
    thread::sleep(Duration::from_secs(2));
    let woke = MAINTENANCE.wakeups() - before;
    // Waking every 100 ms, the two threads would wake 40 times.
    assert!(
        woke <= 4,
        "two idle caches' maintenance threads woke {woke} times in 2 s"
    );

    // A write giving an entry a deadline sooner than the thread's wake-up
    // wakes it: the entry is reaped and heard without any further call
    // (about 150 ms; the bound leaves room for a busy host).
    for (cache, rx) in [(&plain, &plain_heard), (&hourly, &hourly_heard)] {
        cache.insert_with_ttl(2, 2, Duration::from_millis(50));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(3)),
            Ok((2, RemovalCause::Expired)),
            "a sleeping maintenance thread reaps a new entry's near deadline"
        );
    }
    assert_eq!((plain.entry_count(), hourly.entry_count()), (1, 1));

    // So does a read whose hook brings a deadline forward.
    let (hooked, hooked_heard) = heard(
        Cache::builder()
            .max_capacity(100)
            .expire_after(ShortAfterRead),
    );
    hooked.insert(3, 3);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(hooked.get(&3), Some(3));
    assert_eq!(
        hooked_heard.recv_timeout(Duration::from_secs(3)),
        Ok((3, RemovalCause::Expired)),
        "a sleeping maintenance thread reaps a deadline a read hook brought forward"
    );
}
