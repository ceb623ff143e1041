//! Write-behind against a store that fails at random, is slow, rejects one
//! poisonous key and sometimes panics. Over thousands of writes from several
//! threads: no write is lost (each key's last acknowledged change is in the
//! store, dead-lettered, or handed back by `close`), no key's changes land
//! out of order, and `flush` and `close` always return.

#[path = "support/stores.rs"]
mod stores;
#[path = "support/threads.rs"]
mod threads;

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering::SeqCst},
    time::Duration,
};

use larder::{Cache, Change, DeadLetter, WriteFailure};
use parking_lot::Mutex;
use stores::MemStore;
use threads::parallel;

const THREADS: usize = 4;
const KEYS_PER_THREAD: u64 = 64;
const WRITES_PER_THREAD: u64 = 3_000;
const POISON: u64 = 5;

/// Keeps the injected panics (dozens of them) out of the test output.
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.contains("injected panic"));
        if !injected {
            default(info);
        }
    }));
}

#[test]
fn no_write_is_lost_or_reordered_under_injected_faults() {
    quiet_injected_panics();
    let store = MemStore::default();
    store.faults.fail_per_mille.store(200, SeqCst);
    store.faults.panic_per_mille.store(20, SeqCst);
    store.faults.slow_micros.store(100, SeqCst);
    store.faults.poison.store(POISON, SeqCst);
    let letters: Arc<Mutex<Vec<DeadLetter<u64, u64, String>>>> = Arc::default();
    let cache = Cache::builder()
        .max_capacity(32) // most keys are pinned in the queue, not cached
        .store(store.clone())
        .write_behind()
        .batch_size(32)
        .flush_interval(Duration::from_millis(2))
        .max_attempts(4)
        .retry_backoff(Duration::from_micros(200), Duration::from_millis(2), 0.5)
        .queue_capacity(128)
        .dead_letter({
            let letters = letters.clone();
            move |dead| letters.lock().push(dead)
        })
        .build()
        .unwrap();

    // Each thread owns keys t, t + THREADS, …, writes increasing values (a
    // delete now and then), reads its own writes back and flushes at times.
    let lasts = parallel(Duration::from_secs(120), "faulty writers", THREADS, {
        let cache = cache.clone();
        move |t| {
            let mut last: HashMap<u64, Change<u64>> = HashMap::new();
            let mut x = t as u64 + 11;
            for i in 0..WRITES_PER_THREAD {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let key = (x >> 33) % KEYS_PER_THREAD * THREADS as u64 + t as u64;
                let change = if (x >> 24) % 8 == 0 {
                    cache.remove(&key).expect("blocking queue: never refused");
                    Change::Delete
                } else {
                    let value = t as u64 * WRITES_PER_THREAD + i + 1;
                    cache
                        .insert(key, value)
                        .expect("blocking queue: never refused");
                    Change::Put(value)
                };
                let read = cache
                    .get(&key)
                    .expect("reads of queued keys never reach the store");
                assert_eq!(
                    read,
                    change.clone().into_value(),
                    "read-your-writes, key {key}"
                );
                last.insert(key, change);
                if i % 1_000 == 999 {
                    cache.flush();
                }
            }
            last
        }
    });
    let report = parallel(Duration::from_secs(60), "close", 1, {
        let cache = cache.clone();
        move |_| cache.close(Duration::from_secs(30))
    })
    .pop()
    .expect("one close");
    assert!(
        report.dead_letters.is_empty(),
        "the handler took every dead letter"
    );

    let letters = letters.lock();
    let injected = letters
        .iter()
        .filter(|d| !matches!(&d.error, WriteFailure::Store(e) if e.contains("poisonous")))
        .count();
    eprintln!(
        "faults: {} store calls, {} dead letters ({} from injected faults), {} unwritten at close, stats {:?}",
        store.write_calls.load(SeqCst),
        letters.len(),
        injected,
        report.unwritten.len(),
        cache.write_stats()
    );
    assert!(
        letters.iter().any(|d| d.key == POISON),
        "the poisonous key was written and given up on"
    );

    // Not lost: each key's last acknowledged change is what the store holds,
    // or was the key's last dead letter, or was handed back by close.
    let mut lost = Vec::new();
    for (key, change) in lasts.into_iter().flatten() {
        let in_store = store.get(key) == change.clone().into_value();
        let dead = letters
            .iter()
            .rev()
            .find(|d| d.key == key)
            .map(|d| &d.change)
            == Some(&change);
        let unwritten = report
            .unwritten
            .iter()
            .any(|(k, c)| *k == key && *c == change);
        if !(in_store || dead || unwritten) {
            lost.push((key, change, store.get(key)));
        }
    }
    assert!(
        lost.is_empty(),
        "lost writes (key, last change, store): {lost:?}"
    );
    store.assert_no_reordering();
    let stats = cache.write_stats();
    assert!(stats.retried > 0, "faults were injected and retried");
    assert_eq!(stats.queue_len, 0);
}
