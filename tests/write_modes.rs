//! The write policies of a `StoreCache` against an in-memory store:
//! write-through and write-around (store first; failures leave the cache
//! clean), write-behind (acknowledged before the store, coalescing, per-key
//! order, pinning past eviction and expiry, the three full-queue policies,
//! dead letters, panics, flush, close and drop), a cached copy's own time
//! to live (`insert_with_ttl`, `expire_in`, `persist`), builder errors, and many
//! threads racing loads and writes of the same keys, and many threads writing
//! through the queue while it drains and the cache evicts.

#[path = "support/stores.rs"]
mod stores;
#[path = "support/threads.rs"]
mod threads;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use larder::{
    BuildError, Cache, Change, DeadLetter, StoreCache, StoreCacheBuilder, WhenFull, WriteError,
    WriteFailure, clock::MockClock,
};
use parking_lot::{Mutex, RwLock};
use stores::MemStore;
use threads::parallel;

type Letters = Arc<Mutex<Vec<DeadLetter<u64, u64, String>>>>;

fn builder(store: &MemStore) -> StoreCacheBuilder<u64, u64, MemStore> {
    Cache::builder().max_capacity(10_000).store(store.clone())
}

/// A write-behind builder that sends each change on its own at once, with
/// fast retries, and collects dead letters.
fn behind(store: &MemStore, letters: &Letters) -> StoreCacheBuilder<u64, u64, MemStore> {
    let letters = letters.clone();
    builder(store)
        .write_behind()
        .batch_size(1)
        .flush_interval(Duration::from_millis(5))
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2), 0.5)
        .max_attempts(3)
        .dead_letter(move |dead| letters.lock().push(dead))
}

/// Polls `done` for up to 5 s.
/// A cache over `store` writing through, around or behind it (`policy`),
/// with the defaults.
fn with_policy(store: &MemStore, policy: &str) -> StoreCache<u64, u64, MemStore> {
    let b = builder(store);
    match policy {
        "through" => b.build().unwrap(),
        "around" => b.write_around().build().unwrap(),
        _ => b.write_behind().build().unwrap(),
    }
}

fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn write_through_writes_the_store_first_and_caches_the_value() {
    let store = MemStore::default();
    let cache = builder(&store).build().unwrap();
    cache.insert(1, 10).unwrap();
    assert_eq!(store.get(1), Some(10));
    assert_eq!(cache.peek(&1), Some(10));
    assert_eq!(cache.get(&1).unwrap(), Some(10));
    assert_eq!(store.load_calls.load(SeqCst), 0, "answered from the cache");

    cache.remove(&1).unwrap();
    assert_eq!(store.get(1), None);
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.get(&1).unwrap(), None);
    assert_eq!(store.history.lock()[&1], vec![Some(10), None]);
}

#[test]
fn a_store_cache_crosses_catch_unwind_when_its_store_does() {
    // A store with no interior mutability (or a `std` `Mutex`) is
    // `RefUnwindSafe`, and then so is the cache over it.
    struct Doubling;
    impl larder::Store<u64, u64> for Doubling {
        type Error = String;
        fn load(&self, k: &u64) -> Result<Option<u64>, String> {
            assert_ne!(*k, 0, "store refuses 0");
            Ok(Some(k * 2))
        }
        fn write(&self, _: &[(u64, Change<u64>)]) -> Result<(), String> {
            Ok(())
        }
    }
    let cache = Cache::builder().store(Doubling).build().unwrap();
    assert!(std::panic::catch_unwind(|| cache.get(&0)).is_err());
    assert_eq!(
        std::panic::catch_unwind(|| cache.get(&4)).unwrap(),
        Ok(Some(8))
    );
    cache.insert(5, 1).unwrap();
    assert_eq!(cache.get(&5).unwrap(), Some(1));
}

#[test]
fn iter_lists_the_cached_values_without_reading_the_store() {
    let store = MemStore::default();
    let cache = builder(&store).build().unwrap();
    for k in 0..5 {
        cache.insert(k, k * 10).unwrap();
    }
    cache.remove(&3).unwrap();
    let mut entries: Vec<(u64, u64)> = cache.iter().collect();
    entries.sort_unstable();
    assert_eq!(entries, [(0, 0), (1, 10), (2, 20), (4, 40)]);
    assert_eq!(store.load_calls.load(SeqCst), 0, "the store was not read");
    assert_eq!(cache.stats().hits() + cache.stats().misses(), 0);
}

#[test]
fn a_failed_write_through_returns_the_error_and_leaves_the_cache_as_the_store_is() {
    let store = MemStore::default();
    store.set(1, 10);
    let cache = builder(&store).build().unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(10));
    store.faults.poison.store(1, SeqCst);

    let err = cache.insert(1, 11).unwrap_err();
    assert!(
        matches!(&err, WriteError::Store(e) if e == "key 1 is poisonous"),
        "{err}"
    );
    assert_eq!(
        cache.get(&1).unwrap(),
        Some(10),
        "the unwritten value is not cached"
    );
    assert!(matches!(cache.remove(&1), Err(WriteError::Store(_))));
    assert_eq!(store.get(1), Some(10));
    assert_eq!(
        cache.get(&1).unwrap(),
        Some(10),
        "a failed delete deletes nothing"
    );

    // A new key: nothing cached either.
    store.faults.poison.store(2, SeqCst);
    assert!(cache.insert(2, 20).is_err());
    assert_eq!(cache.peek(&2), None);
    assert_eq!(cache.entry_count(), 1);
}

/// A store call that fails after it changed the store (a timeout after the
/// commit): the caller gets the error, and the cache keeps no older copy,
/// so the next read sees what the store holds.
#[test]
fn a_write_through_that_failed_after_reaching_the_store_leaves_no_stale_copy() {
    for around in [false, true] {
        let store = MemStore::default();
        store.set(1, 10);
        store.set(2, 20);
        let b = builder(&store);
        let cache = if around { b.write_around() } else { b }.build().unwrap();
        assert_eq!(cache.get(&1).unwrap(), Some(10));
        assert_eq!(cache.get(&2).unwrap(), Some(20));
        store.faults.fail_after_applying.store(true, SeqCst);
        assert!(matches!(cache.insert(1, 11), Err(WriteError::Store(_))));
        assert!(matches!(cache.remove(&2), Err(WriteError::Store(_))));
        store.faults.fail_after_applying.store(false, SeqCst);
        assert_eq!(cache.peek(&1), None, "around {around}");
        assert_eq!(cache.get(&1).unwrap(), Some(11), "around {around}");
        assert_eq!(cache.get(&2).unwrap(), None, "around {around}");
    }
}

#[test]
fn write_around_writes_the_store_and_drops_the_cached_copy() {
    let store = MemStore::default();
    let cache = builder(&store).write_around().build().unwrap();
    cache.insert(1, 10).unwrap();
    assert_eq!(store.get(1), Some(10));
    assert_eq!(cache.peek(&1), None, "a write does not fill the cache");
    assert_eq!(cache.get(&1).unwrap(), Some(10));
    assert_eq!(store.load_calls.load(SeqCst), 1);
    cache.insert(1, 11).unwrap();
    assert_eq!(cache.peek(&1), None, "the old copy is gone");
    assert_eq!(cache.get(&1).unwrap(), Some(11));
    cache.remove(&1).unwrap();
    assert_eq!(cache.get(&1).unwrap(), None);
}

/// A write-around insert supersedes the cached copy with a new value, as a
/// write-through insert does: the listener hears `Replaced` either way (or
/// `Expired` for a copy already past its time to live), and a `remove`
/// `Explicit`. The stats count the same causes.
#[test]
fn write_around_reports_the_copy_an_insert_drops_as_replaced_as_write_through_does() {
    use larder::RemovalCause::{Expired, Explicit, Replaced};
    for policy in ["through", "around"] {
        let store = MemStore::default();
        for key in 1..=3 {
            store.set(key, key * 10);
        }
        let clock = MockClock::new();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let listening = heard.clone();
        let b = Cache::builder()
            .clock(clock.clone())
            .time_to_live(Duration::from_secs(60))
            .eviction_listener(move |k: Arc<u64>, v, cause| listening.lock().push((*k, v, cause)))
            .store(store.clone());
        let cache = if policy == "around" {
            b.write_around()
        } else {
            b
        }
        .build()
        .unwrap();
        assert_eq!(cache.get(&1).unwrap(), Some(10));
        assert_eq!(cache.get(&2).unwrap(), Some(20));
        cache.insert(1, 11).unwrap();
        cache.remove(&2).unwrap();
        clock.advance(Duration::from_secs(30));
        assert_eq!(cache.get(&3).unwrap(), Some(30));
        clock.advance(Duration::from_secs(60)); // 3's copy has expired
        cache.insert(3, 31).unwrap();
        assert_eq!(
            *heard.lock(),
            [(1, 10, Replaced), (2, 20, Explicit), (3, 30, Expired)],
            "write-{policy}"
        );
        let stats = cache.stats();
        let counts = [Replaced, Explicit, Expired].map(|c| stats.removals(c));
        assert_eq!(counts, [1, 1, 1], "write-{policy}: {stats:?}");
    }
}

#[test]
fn write_behind_acknowledges_before_the_store_and_reads_see_the_write() {
    let store = MemStore::default();
    let letters = Letters::default();
    let cache = behind(&store, &letters).build().unwrap();
    let gate = store.gate.write();
    cache.insert(1, 10).unwrap();
    cache.insert(2, 20).unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(10));
    assert_eq!(
        store.get(1),
        None,
        "not written yet: the flusher waits at the gate"
    );
    drop(gate);
    cache.flush();
    assert_eq!((store.get(1), store.get(2)), (Some(10), Some(20)));
    let s = cache.write_stats();
    assert_eq!(
        (s.queued, s.flushed, s.queue_len, s.in_flight),
        (2, 2, 0, 0)
    );
    assert!(s.store_calls >= 2 && s.max_store_time >= s.mean_flush_latency());
    assert!(letters.lock().is_empty());
}

#[test]
fn writes_to_a_key_in_flight_coalesce_and_land_in_order() {
    let store = MemStore::default();
    let letters = Letters::default();
    let cache = behind(&store, &letters).build().unwrap();
    let gate = store.gate.write();
    cache.insert(1, 1).unwrap();
    eventually("the first write in flight", || {
        cache.write_stats().in_flight == 1
    });
    for v in 2..=10 {
        cache.insert(1, v).unwrap();
    }
    assert_eq!(cache.get(&1).unwrap(), Some(10));
    drop(gate);
    cache.flush();
    assert_eq!(store.history.lock()[&1], vec![Some(1), Some(10)]);
    let s = cache.write_stats();
    assert_eq!((s.queued, s.coalesced, s.flushed), (10, 8, 2));

    // A put followed by a delete never lands as the put.
    let gate = store.gate.write();
    cache.insert(2, 5).unwrap();
    eventually("the put in flight", || cache.write_stats().in_flight == 1);
    cache.insert(2, 6).unwrap();
    cache.remove(&2).unwrap();
    assert_eq!(cache.get(&2).unwrap(), None);
    drop(gate);
    cache.flush();
    assert_eq!(store.get(2), None);
    assert_eq!(store.history.lock()[&2], vec![Some(5), None]);
    store.assert_no_reordering();
}

#[test]
fn pending_writes_are_read_back_past_eviction_and_expiry_without_touching_the_store() {
    let store = MemStore::default();
    let clock = MockClock::new();
    let letters = Letters::default();
    let cache = Cache::builder()
        .max_capacity(8)
        .time_to_live(Duration::from_secs(1))
        .clock(clock.clone())
        .store(store.clone())
        .write_behind()
        .dead_letter({
            let letters = letters.clone();
            move |d| letters.lock().push(d)
        })
        .build()
        .unwrap();
    for k in 0..100 {
        store.set(k, 1_000 + k); // older data the reads must never see
    }
    let gate = store.gate.write();
    for k in 0..100 {
        cache.insert(k, k).unwrap();
    }
    cache.remove(&100).unwrap();
    store.set(100, 7);
    cache.run_pending_tasks();
    assert!(cache.entry_count() <= 8, "the cache kept its bound");
    clock.advance(Duration::from_secs(5)); // every cached copy has expired
    for k in 0..100 {
        assert_eq!(cache.get(&k).unwrap(), Some(k), "key {k}");
    }
    assert_eq!(
        cache.get(&100).unwrap(),
        None,
        "a pending delete hides the store's row"
    );
    assert_eq!(
        store.load_calls.load(SeqCst),
        0,
        "no read went to the store"
    );
    drop(gate);
    cache.flush();
    for k in 0..100 {
        assert_eq!(store.get(k), Some(k));
    }
    assert_eq!(store.get(100), None);
    assert!(letters.lock().is_empty());
}

/// A store whose batch query answers a range, so more rows than it was
/// asked for, as `Loader::load_many` allows ("pairs for keys not asked for
/// are ignored"): every row of the table.
#[derive(Clone, Default)]
struct RangeStore(MemStore);

impl larder::Store<u64, u64> for RangeStore {
    type Error = String;
    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        self.0.load(key)
    }
    fn load_many(&self, _keys: &[u64]) -> Result<Vec<(u64, u64)>, String> {
        Ok(self.0.table.lock().iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn write(&self, batch: &[(u64, Change<u64>)]) -> Result<(), String> {
        self.0.write(batch)
    }
}

/// A batch read of keys with pending write-behind changes, and of keys
/// without: the pending ones are answered from the queue, the others from
/// the store, and a store that answers more rows than asked must not get
/// its older rows of the pending keys read or cached over their changes.
#[test]
fn a_batch_read_never_takes_the_stores_older_row_of_a_pending_key() {
    let store = RangeStore::default();
    store.0.set(1, 10);
    store.0.set(2, 20);
    store.0.set(3, 30);
    let cache = Cache::builder()
        .store(store.clone())
        .write_behind()
        .build()
        .unwrap();
    let gate = store.0.gate.write();
    cache.insert(1, 11).unwrap();
    cache.remove(&3).unwrap();
    cache.invalidate_all(); // the changes stay pinned in the queue
    let found = cache.get_many([1, 2, 3]).unwrap();
    assert_eq!(found.get(&1), Some(&11), "the pending put");
    assert_eq!(found.get(&2), Some(&20), "from the store");
    assert_eq!(found.get(&3), None, "the pending delete");
    assert_eq!(cache.get(&1).unwrap(), Some(11), "nor cached");
    assert_eq!(cache.get(&3).unwrap(), None);
    drop(gate);
    cache.flush();
    assert_eq!(
        (store.0.get(1), store.0.get(2), store.0.get(3)),
        (Some(11), Some(20), None)
    );
}
#[test]
fn a_full_queue_fails_blocks_or_writes_through_as_configured() {
    // Fail.
    let store = MemStore::default();
    let letters = Letters::default();
    let cache = behind(&store, &letters)
        .queue_capacity(3)
        .when_full(WhenFull::Fail)
        .build()
        .unwrap();
    let gate = store.gate.write();
    for k in 0..3 {
        cache.insert(k, k).unwrap();
    }
    assert!(matches!(cache.insert(3, 3), Err(WriteError::QueueFull)));
    assert_eq!(cache.peek(&3), None, "a refused write is not cached");
    cache.insert(2, 22).unwrap(); // a held key always coalesces
    drop(gate);
    cache.flush();
    assert_eq!(store.get(3), None);
    assert_eq!(store.get(2), Some(22));

    // Write through.
    let store = MemStore::default();
    let cache = behind(&store, &letters)
        .queue_capacity(3)
        .when_full(WhenFull::WriteThrough)
        .build()
        .unwrap();
    let gate = store.gate.write();
    for k in 0..3 {
        cache.insert(k, k).unwrap();
    }
    cache.insert(3, 3).unwrap();
    assert_eq!(store.get(3), Some(3), "written on the caller's thread");
    assert_eq!(cache.peek(&3), Some(3), "and cached once written");
    assert_eq!(store.get(0), None, "the queued ones still wait");
    drop(gate);
    cache.flush();

    // Block.
    let store = MemStore::default();
    let cache = behind(&store, &letters)
        .queue_capacity(3)
        .when_full(WhenFull::Block)
        .build()
        .unwrap();
    let gate = store.gate.write();
    for k in 0..3 {
        cache.insert(k, k).unwrap();
    }
    let writer = {
        let cache = cache.clone();
        thread::spawn(move || cache.insert(3, 3))
    };
    thread::sleep(Duration::from_millis(50));
    assert!(!writer.is_finished(), "waits for room");
    drop(gate);
    writer.join().unwrap().unwrap();
    cache.flush();
    assert_eq!(store.get(3), Some(3));
    assert!(letters.lock().is_empty());
}

#[test]
fn a_poisonous_key_is_dead_lettered_alone_and_flush_returns() {
    let store = MemStore::default();
    store.faults.poison.store(13, SeqCst);
    let letters = Letters::default();
    let cache = behind(&store, &letters).batch_size(16).build().unwrap();
    parallel(Duration::from_secs(20), "write and flush", 1, {
        let cache = cache.clone();
        move |_| {
            for k in 0..50 {
                cache.insert(k, k + 1).unwrap();
            }
            cache.flush();
        }
    });
    let letters = letters.lock();
    assert_eq!(letters.len(), 1, "only the poisonous key is given up on");
    let dead = &letters[0];
    assert_eq!(
        (dead.key, &dead.change, dead.attempts),
        (13, &Change::Put(14), 3)
    );
    assert!(matches!(&dead.error, WriteFailure::Store(e) if **e == "key 13 is poisonous"));
    // An error like any other, for `?` into a boxed error; the letter can
    // be kept (cloned) past the handler.
    let kept = dead.clone();
    assert_eq!((kept.key, kept.attempts), (13, 3));
    let boxed: Box<dyn std::error::Error> = Box::new(kept.error);
    assert_eq!(boxed.to_string(), "key 13 is poisonous");
    for k in (0..50).filter(|&k| k != 13) {
        assert_eq!(store.get(k), Some(k + 1), "key {k} landed");
    }
    let s = cache.write_stats();
    assert_eq!((s.dead_lettered, s.flushed, s.queue_len), (1, 49, 0));
    assert!(s.retried > 0);
}

#[test]
fn dead_letters_without_a_handler_come_back_from_close() {
    let store = MemStore::default();
    store.faults.poison.store(1, SeqCst);
    let cache = builder(&store)
        .write_behind()
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(1), 0.0)
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    cache.insert(2, 2).unwrap();
    cache.flush();
    let report = cache.close(Duration::from_secs(5));
    assert!(report.unwritten.is_empty());
    assert_eq!(report.dead_letters.len(), 1);
    assert_eq!(report.dead_letters[0].key, 1);
    assert_eq!(store.get(2), Some(2));
}

#[test]
fn a_panicking_store_and_a_panicking_handler_leave_the_cache_usable() {
    let store = MemStore::default();
    store.faults.panic_per_mille.store(1_000, SeqCst);
    let seen = Arc::new(AtomicU64::new(0));
    let cache = builder(&store)
        .write_behind()
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(1), 0.0)
        .dead_letter({
            let seen = seen.clone();
            move |dead| {
                assert!(matches!(dead.error, WriteFailure::Panicked(ref m) if m.contains("injected panic")));
                seen.fetch_add(1, SeqCst);
                panic!("the handler panics too");
            }
        })
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    cache.insert(2, 2).unwrap();
    cache.flush();
    assert_eq!(seen.load(SeqCst), 2, "both changes reported");
    store.faults.panic_per_mille.store(0, SeqCst);
    cache.insert(3, 3).unwrap();
    cache.flush();
    assert_eq!(store.get(3), Some(3), "the flusher survived");
    assert!(cache.close(Duration::from_secs(5)).is_empty());
}

#[test]
fn close_is_idempotent_bounded_and_reports_what_it_could_not_write() {
    let store = MemStore::default();
    let letters = Letters::default();
    let cache = behind(&store, &letters).build().unwrap();
    cache.insert(1, 1).unwrap();
    cache.flush();
    let gate = store.gate.write(); // the store hangs from now on
    cache.insert(2, 2).unwrap();
    eventually("key 2 in flight", || cache.write_stats().in_flight == 1);
    cache.insert(3, 3).unwrap();
    cache.insert(2, 22).unwrap(); // queued behind the 2 in flight
    let started = Instant::now();
    let report = cache.close(Duration::from_millis(100));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close kept its deadline"
    );
    let mut unwritten = report.unwritten.clone();
    unwritten.sort_by_key(|(k, _)| *k);
    assert_eq!(
        unwritten,
        vec![(2, Change::Put(22)), (3, Change::Put(3))],
        "the latest change per key"
    );
    assert_eq!(
        report.in_flight, 0,
        "the change of key 2 in the hung call is overtaken by the one queued"
    );
    assert_eq!(
        (report.overtaken, &report.unwritten[0]),
        (1, &(2, Change::Put(22))),
        "listed first after the in-flight ones: its older change may still land"
    );
    assert_eq!(cache.insert(4, 4), Err(WriteError::Closed));
    assert_eq!(cache.get(&1).unwrap(), Some(1), "reads still work");
    // The cache keeps no copy of what the store never took: reads answer
    // what the store holds.
    assert_eq!((cache.peek(&2), cache.peek(&3)), (None, None));
    assert_eq!(cache.get(&3).unwrap(), None);
    assert!(
        cache.close(Duration::from_millis(10)).is_empty(),
        "reported once"
    );
    assert!(
        cache.flush_timeout(Duration::from_millis(10)),
        "close handed everything back: nothing left to wait for"
    );
    cache.flush();
    drop(gate);
    assert!(
        letters.lock().is_empty(),
        "reported by close, not dead-lettered"
    );
}

/// A close that ran out of time on a hung store call has emptied the
/// queue and stopped the flusher: a second close, and the drop of the last
/// handle after it, have nothing left to drain and must not wait again for
/// that call.
#[test]
fn a_close_after_a_timed_out_close_and_the_drop_after_it_return_at_once() {
    let store = MemStore::default();
    let cache = builder(&store)
        .write_behind()
        .batch_size(1)
        .flush_interval(Duration::from_millis(1))
        .drop_flush_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let gate = store.gate.write(); // the store hangs
    cache.insert(1, 1).unwrap();
    eventually("key 1 in flight", || cache.write_stats().in_flight == 1);
    let report = cache.close(Duration::from_millis(20));
    assert_eq!((report.unwritten.len(), report.in_flight), (1, 1));
    let started = Instant::now();
    assert!(cache.close(Duration::from_secs(5)).is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the second close waited {:?} for a queue the first emptied",
        started.elapsed()
    );
    let started = Instant::now();
    drop(cache);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the drop after close waited {:?}",
        started.elapsed()
    );
    drop(gate);
}

/// Set by its drop, 200 ms late: a thread-local of the flusher thread that
/// says when that thread has ended.
struct Ended(Arc<AtomicU64>);

impl Drop for Ended {
    fn drop(&mut self) {
        thread::sleep(Duration::from_millis(200));
        self.0.store(1, SeqCst);
    }
}

thread_local! {
    static ENDED: std::cell::RefCell<Option<Ended>> = const { std::cell::RefCell::new(None) };
}

/// A store that refuses every write, and marks the thread that calls it
/// with an [`Ended`].
struct MarkingRefuser(Arc<AtomicU64>);

impl larder::Store<u64, u64> for MarkingRefuser {
    type Error = String;
    fn load(&self, _: &u64) -> Result<Option<u64>, String> {
        Ok(None)
    }
    fn write(&self, _: &[(u64, Change<u64>)]) -> Result<(), String> {
        let ended = self.0.clone();
        ENDED.with(|e| {
            e.borrow_mut().get_or_insert(Ended(ended));
        });
        Err("refused".into())
    }
}

/// A close that runs out of time while the flusher only waits to retry a
/// failed write (no store call under way) stops and joins the thread: it
/// has ended when `close` returns.
#[test]
fn a_close_that_times_out_during_a_retry_wait_joins_the_flusher() {
    let ended = Arc::new(AtomicU64::new(0));
    let cache = Cache::builder()
        .store(MarkingRefuser(ended.clone()))
        .write_behind()
        .flush_interval(Duration::from_millis(1))
        .retry_backoff(Duration::from_secs(60), Duration::from_secs(60), 0.0)
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    eventually("the first send failed", || cache.write_stats().retried == 1);
    let report = cache.close(Duration::from_millis(20));
    assert_eq!(report.unwritten, vec![(1, Change::Put(1))]);
    assert_eq!(
        ended.load(SeqCst),
        1,
        "close returned before the flusher thread ended"
    );
}

#[test]
fn drop_without_close_flushes_with_a_bounded_wait() {
    let store = MemStore::default();
    let letters = Letters::default();
    let cache = behind(&store, &letters)
        .flush_interval(Duration::from_secs(3600))
        .batch_size(1_000)
        .build()
        .unwrap();
    for k in 0..10 {
        cache.insert(k, k).unwrap();
    }
    drop(cache);
    for k in 0..10 {
        assert_eq!(store.get(k), Some(k), "the drop flushed key {k}");
    }

    // A store call that hangs: the drop gives up after its timeout and
    // reports the change in that call as in flight (this store applied it
    // before hanging, so it did land), and the one queued behind it as
    // dropped (it never reached the store).
    let cache = behind(&store, &letters)
        .drop_flush_timeout(Duration::from_millis(50))
        .flush_interval(Duration::from_millis(1))
        .batch_size(1)
        .build()
        .unwrap();
    store.hold.write.store(20, SeqCst);
    cache.insert(20, 20).unwrap();
    // The flusher's call has applied key 20 and waits to return.
    store.hold.reached.wait();
    cache.insert(21, 21).unwrap();
    let started = Instant::now();
    drop(cache);
    assert!(started.elapsed() < Duration::from_secs(3));
    {
        let letters = letters.lock();
        let summary: Vec<_> = letters
            .iter()
            .map(|d| (d.key, d.change.clone(), d.error.to_string()))
            .collect();
        assert_eq!(letters.len(), 2, "{summary:?}");
        assert_eq!((letters[0].key, &letters[0].change), (20, &Change::Put(20)));
        assert!(
            matches!(letters[0].error, WriteFailure::InFlight),
            "{summary:?}"
        );
        assert_eq!((letters[1].key, &letters[1].change), (21, &Change::Put(21)));
        assert!(
            matches!(letters[1].error, WriteFailure::Dropped),
            "{summary:?}"
        );
    }
    store.hold.resume.wait();
    assert_eq!(
        store.get(20),
        Some(20),
        "the change reported in flight landed"
    );
    assert_eq!(
        store.get(21),
        None,
        "the dropped change never reached the store"
    );
}

#[test]
fn bad_write_settings_are_build_errors() {
    let store = MemStore::default();
    let err = |b: StoreCacheBuilder<u64, u64, MemStore>| b.build().unwrap_err();
    assert_eq!(
        err(builder(&store).queue_capacity(10)),
        BuildError::NeedsWriteBehind("queue_capacity")
    );
    assert_eq!(
        err(builder(&store).write_around().dead_letter(|_| {})),
        BuildError::NeedsWriteBehind("dead_letter")
    );
    for (b, name) in [
        (builder(&store).write_behind().batch_size(0), "batch_size"),
        (
            builder(&store).write_behind().queue_capacity(0),
            "queue_capacity",
        ),
        (
            builder(&store).write_behind().max_attempts(0),
            "max_attempts",
        ),
        (
            builder(&store)
                .write_behind()
                .flush_interval(Duration::ZERO),
            "flush_interval",
        ),
    ] {
        assert_eq!(err(b), BuildError::ZeroSetting(name));
    }
    let backoff = |base, max, jitter| {
        builder(&store).write_behind().retry_backoff(
            Duration::from_millis(base),
            Duration::from_millis(max),
            jitter,
        )
    };
    assert_eq!(
        err(backoff(1, 2, 1.5)),
        BuildError::RetryJitterOutOfRange(1.5)
    );
    assert!(matches!(
        err(backoff(1, 2, f64::NAN)),
        BuildError::RetryJitterOutOfRange(_)
    ));
    assert_eq!(err(backoff(5, 2, 0.1)), BuildError::BackoffOrder);
    assert_eq!(
        err(Cache::builder()
            .time_to_live(Duration::ZERO)
            .store(store.clone())),
        BuildError::ZeroTimeToLive
    );
    assert!(
        err(builder(&store).write_behind().batch_size(0))
            .to_string()
            .contains("batch_size")
    );
}

/// A load reads the store's old value and is held there while a write (a
/// put or a delete) of the key runs to its end; when the load goes on, it
/// must not cache what it read over the write, whatever the policy.
#[test]
fn a_load_that_read_before_a_write_ended_never_caches_over_it() {
    for policy in ["through", "around", "behind"] {
        for put in [true, false] {
            let store = MemStore::default();
            store.set(1, 10);
            let cache = with_policy(&store, policy);
            store.hold.load.store(1, SeqCst);
            let reader = {
                let cache = cache.clone();
                thread::spawn(move || cache.get(&1).unwrap())
            };
            store.hold.wait_reached(); // the load has read 10
            let now = if put {
                cache.insert(1, 11).unwrap();
                Some(11)
            } else {
                cache.remove(&1).unwrap();
                None
            };
            store.hold.release();
            let what = format!("{policy}, put {put}");
            assert_eq!(
                reader.join().unwrap(),
                Some(10),
                "{what}: the load's own answer"
            );
            assert_ne!(
                cache.peek(&1),
                Some(10),
                "{what}: the load cached over the write"
            );
            assert_eq!(cache.get(&1).unwrap(), now, "{what}");
            cache.flush();
            assert_eq!(store.get(1), now, "{what}");
        }
    }
}

/// Two write-through writes of a key overlap: the first reaches the store,
/// then is held while the second reaches the store and the cache. When the
/// first goes on, it must not cache its value, which the store no longer
/// holds.
#[test]
fn of_two_overlapping_writes_the_cache_never_keeps_the_one_the_store_lost() {
    let store = MemStore::default();
    let cache = builder(&store).build().unwrap();
    store.hold.write.store(1, SeqCst);
    let first = {
        let cache = cache.clone();
        thread::spawn(move || cache.insert(7, 1).unwrap())
    };
    store.hold.wait_reached(); // 1 is in the store
    cache.insert(7, 2).unwrap();
    assert_eq!(cache.peek(&7), Some(2));
    store.hold.release();
    first.join().unwrap();
    assert_eq!(store.get(7), Some(2));
    assert_ne!(
        cache.peek(&7),
        Some(1),
        "the overlapped write cached its lost value"
    );
    assert_eq!(cache.get(&7).unwrap(), Some(2));
}

/// Writes of other keys that end while a write-through of key 1 is held
/// between the store and the cache leave its value to be cached, whichever
/// of the shard's write-count stripes they share with it. Until 7 December
/// a write of any key of its stripe dropped key 1 (never stale: the next
/// read loaded it), and with eight others over a shard's 8 stripes a trial
/// then kept it about one time in three (the hash seed, so the stripes,
/// differs per cache); 20 trials.
#[test]
fn a_write_through_is_cached_though_other_keys_were_written_meanwhile() {
    for trial in 0..20_u64 {
        let store = MemStore::default();
        let cache = Cache::builder()
            .max_capacity(10_000)
            .num_shards(1)
            .store(store.clone())
            .build()
            .unwrap();
        let others: Vec<u64> = (1..=8).map(|k| 100 * (trial + 1) + k).collect();
        store.hold.write.store(7, SeqCst);
        thread::scope(|s| {
            let held = s.spawn(|| cache.insert(1, 7));
            store.hold.wait_reached(); // 7 is in the store
            for &k in &others {
                cache.insert(k, k).unwrap();
            }
            store.hold.release();
            held.join().unwrap().unwrap();
        });
        assert_eq!(cache.peek(&1), Some(7), "trial {trial}: key 1 dropped");
        for k in others {
            assert_eq!(cache.peek(&k), Some(k), "trial {trial}");
        }
        assert_eq!(store.get(1), Some(7));
    }
}

/// Many threads load, write through and delete the same few keys at once.
/// Whatever the interleaving, once they are done every cached value is the
/// store's value: no load or write cached data the store no longer held.
#[test]
fn racing_loads_and_writes_never_leave_the_cache_behind_the_store() {
    for policy in ["through", "around", "behind"] {
        let store = MemStore::default();
        store.faults.fail_per_mille.store(50, SeqCst);
        store.faults.slow_micros.store(20, SeqCst);
        store.faults.slow_load_micros.store(20, SeqCst);
        let b = builder(&store);
        let cache: StoreCache<u64, u64, MemStore> = stores::racing(b, policy);
        let next = Arc::new(AtomicU64::new(1));
        for round in 0..6_u64 {
            store.faults.fail_per_mille.store(50, SeqCst);
            parallel(Duration::from_secs(60), policy, 4, {
                let (cache, next) = (cache.clone(), next.clone());
                move |t| {
                    let mut x = round * 1_000 + t as u64 + 1;
                    for _ in 0..400 {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let key = (x >> 33) % 6;
                        match (x >> 40) % 8 {
                            0..=3 => {
                                let _ = cache.get(&key);
                            }
                            4..=5 => {
                                let _ = cache.insert(key, next.fetch_add(1, SeqCst));
                            }
                            6 => {
                                let _ = cache.remove(&key);
                            }
                            _ => cache.invalidate(&key),
                        }
                    }
                }
            });
            cache.flush();
            store.faults.fail_per_mille.store(0, SeqCst);
            for key in 0..6 {
                if let Some(cached) = cache.peek(&key) {
                    let stored = store.get(key);
                    assert_eq!(
                        Some(cached),
                        stored,
                        "{policy} round {round}: key {key} cached stale"
                    );
                }
                assert_eq!(
                    cache.get(&key).unwrap(),
                    store.get(key),
                    "{policy}: key {key}"
                );
            }
        }
    }
}

/// Writers on many threads push through the queue's lanes while another
/// thread keeps draining them (flush, stats) and the cache keeps evicting:
/// every read after a write sees that write (or a later one of the same
/// thread), never the store's older rows, and the store ends with each key's
/// last write.
#[test]
fn writes_from_many_threads_are_read_back_at_once_and_all_land() {
    const THREADS: usize = 4;
    const KEYS_PER_THREAD: u64 = 200;
    const WRITES: u64 = 5_000;
    let store = MemStore::default();
    for k in 0..THREADS as u64 * KEYS_PER_THREAD {
        store.set(k, u64::MAX); // older data no read may return
    }
    let cache = Cache::builder()
        .max_capacity(16) // most values are read back from the queue
        .store(store.clone())
        .write_behind()
        .batch_size(32)
        .queue_capacity(256) // small: writers also take the full-queue path
        .build()
        .unwrap();
    let stop = Arc::new(AtomicU64::new(0));
    let drainer = {
        let (cache, stop) = (cache.clone(), stop.clone());
        thread::spawn(move || {
            let mut rounds = 0u64;
            while stop.load(SeqCst) == 0 {
                let s = cache.write_stats();
                assert!(
                    s.queue_len <= 256 + 32 + THREADS,
                    "queue length {}",
                    s.queue_len
                );
                if rounds % 16 == 0 {
                    cache.flush();
                }
                rounds += 1;
            }
        })
    };
    let last: Vec<Vec<u64>> = {
        let cache = cache.clone();
        parallel(Duration::from_secs(60), "writers", THREADS, move |t| {
            // Thread t owns keys t, t + THREADS, t + 2 * THREADS, ...
            let key = |i: u64| t as u64 + THREADS as u64 * (i % KEYS_PER_THREAD);
            let mut last = vec![0; KEYS_PER_THREAD as usize];
            let mut x = t as u64 + 1;
            for n in 1..=WRITES {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = x % KEYS_PER_THREAD;
                cache.insert(key(i), n).unwrap();
                last[i as usize] = n;
                let j = (x >> 20) % KEYS_PER_THREAD;
                let want = (last[j as usize] != 0).then_some(last[j as usize]);
                let got = cache.get(&key(j)).unwrap();
                if want.is_some() {
                    assert_eq!(got, want, "thread {t} key {} after write {n}", key(j));
                }
            }
            last
        })
    };
    stop.store(1, SeqCst);
    drainer.join().unwrap();
    cache.flush();
    for (t, last) in last.iter().enumerate() {
        for (i, &v) in last.iter().enumerate() {
            let k = t as u64 + THREADS as u64 * i as u64;
            let want = if v == 0 { u64::MAX } else { v };
            assert_eq!(store.get(k), Some(want), "key {k} in the store");
        }
    }
    store.assert_no_reordering();
    let s = cache.write_stats();
    assert_eq!(s.queued, THREADS as u64 * WRITES);
    assert_eq!(
        s.queued,
        s.flushed + s.coalesced + s.dead_lettered + s.queue_len as u64
    );
    assert_eq!(s.queue_len, 0);
}

/// Each key is written by one thread after another (a per-key mutex hands
/// it over, so writes of a key never overlap but come through different
/// threads' lanes), while a drainer empties the lanes at random moments:
/// the store must see every key's values in the order they were written,
/// end with the last, and reads must always see the latest.
#[test]
fn a_key_handed_between_threads_reaches_the_store_in_write_order() {
    for _ in 0..4 {
        handed_between_threads();
    }
}

fn handed_between_threads() {
    const THREADS: usize = 4;
    const KEYS: usize = 8;
    const WRITES: usize = 20_000;
    let store = MemStore::default();
    let cache = Cache::builder()
        .max_capacity(1_000)
        .store(store.clone())
        .write_behind()
        .batch_size(1_024)
        .flush_interval(Duration::from_millis(2))
        .build()
        .unwrap();
    // The last value written to each key; held while writing it.
    let keys: Arc<Vec<Mutex<u64>>> = Arc::new((0..KEYS).map(|_| Mutex::new(0)).collect());
    let stop = Arc::new(AtomicU64::new(0));
    let drainer = {
        let (cache, stop) = (cache.clone(), stop.clone());
        thread::spawn(move || {
            while stop.load(SeqCst) == 0 {
                let _ = cache.write_stats(); // drains the lanes
                thread::sleep(Duration::from_micros(300));
            }
        })
    };
    {
        let (cache, keys) = (cache.clone(), keys.clone());
        parallel(Duration::from_secs(60), "writers", THREADS, move |t| {
            let mut x = t as u64 * 7 + 3;
            for _ in 0..WRITES {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = (x % KEYS as u64) as usize;
                let mut last = keys[k].lock();
                *last += 1;
                cache.insert(k as u64, *last).unwrap();
                assert_eq!(cache.get(&(k as u64)).unwrap(), Some(*last));
            }
        });
    }
    stop.store(1, SeqCst);
    drainer.join().unwrap();
    cache.flush();
    store.assert_no_reordering();
    for (k, last) in keys.iter().enumerate() {
        assert_eq!(store.get(k as u64), Some(*last.lock()), "key {k}");
    }
    let s = cache.write_stats();
    assert_eq!(s.queued, (THREADS * WRITES) as u64);
    assert_eq!(s.queued, s.flushed + s.coalesced + s.dead_lettered);
}

#[test]
fn a_dead_lettered_value_is_dropped_from_the_cache() {
    let store = MemStore::default();
    store.set(1, 100);
    store.faults.poison.store(1, SeqCst); // the store refuses key 1
    // The handler looks at the cache as it is told (through a cell, taken
    // back at the end so the cache does not hold itself).
    type Handle = Arc<Mutex<Option<StoreCache<u64, u64, MemStore>>>>;
    let me: Handle = Arc::default();
    let cached_when_told = Arc::new(Mutex::new(Vec::new()));
    let cache = behind(&store, &Letters::default())
        .dead_letter({
            let (me, told) = (me.clone(), cached_when_told.clone());
            move |dead| {
                let cache = me.lock().clone().expect("set before any write");
                told.lock().push((dead.key, cache.peek(&dead.key)));
            }
        })
        .build()
        .unwrap();
    *me.lock() = Some(cache.clone());
    {
        // The flusher waits at the gate, so key 1 is still queued: a
        // flusher that gave up on it first would leave no copy to read.
        let gate = store.gate.write();
        cache.insert(1, 1).unwrap();
        assert_eq!(cache.get(&1).unwrap(), Some(1), "read your write");
        drop(gate);
    }
    cache.flush();
    assert_eq!(
        *cached_when_told.lock(),
        vec![(1, None)],
        "dropped before the report"
    );
    assert_eq!(store.get(1), Some(100));
    assert_eq!(cache.peek(&1), None, "no copy of the refused value");
    assert_eq!(cache.get(&1).unwrap(), Some(100), "what the store holds");
    // Other keys keep their cached copies.
    cache.insert(2, 2).unwrap();
    cache.flush();
    assert_eq!(cache.peek(&2), Some(2));
    me.lock().take();
}

#[test]
fn close_releases_writers_and_flushes_waiting_on_a_hung_store() {
    let store = MemStore::default();
    let cache = builder(&store)
        .write_behind()
        .batch_size(1)
        .queue_capacity(1)
        .when_full(WhenFull::Block)
        .flush_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    let gate = store.gate.write(); // the store hangs
    cache.insert(1, 1).unwrap();
    eventually("key 1 in flight", || cache.write_stats().in_flight == 1);
    // Key 1 fills the queue until the store takes it.
    let writer = {
        let cache = cache.clone();
        thread::spawn(move || cache.insert(2, 2))
    };
    let flusher = {
        let cache = cache.clone();
        thread::spawn(move || cache.flush())
    };
    thread::sleep(Duration::from_millis(50));
    assert!(!writer.is_finished(), "the writer waits for room");
    assert!(!flusher.is_finished(), "the flush waits for the store");
    let report = cache.close(Duration::from_millis(100));
    assert_eq!(report.unwritten, vec![(1, Change::Put(1))], "in flight");
    assert_eq!(report.in_flight, 1, "counted as in flight");
    // Both return although the store call is still hung.
    eventually("the writer returned", || writer.is_finished());
    eventually("the flush returned", || flusher.is_finished());
    drop(gate);
    assert!(matches!(writer.join().unwrap(), Err(WriteError::Closed)));
    flusher.join().unwrap();
}

/// A table of string keys.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<std::collections::HashMap<String, usize>>>);

impl larder::Store<String, usize> for Names {
    type Error = String;
    fn load(&self, key: &String) -> Result<Option<usize>, String> {
        Ok(self.0.lock().get(key).copied())
    }
    fn write(&self, batch: &[(String, Change<usize>)]) -> Result<(), String> {
        let mut table = self.0.lock();
        for (key, change) in batch {
            match change {
                Change::Put(v) => table.insert(key.clone(), *v),
                Change::Delete => table.remove(key),
            };
        }
        Ok(())
    }
}

#[test]
fn writes_that_name_a_key_take_any_borrowed_form_of_it() {
    let names = Names::default();
    let cache = Cache::builder().store(names.clone()).build().unwrap();
    cache.insert("one".to_string(), 1).unwrap();
    cache.insert("two".to_string(), 2).unwrap();
    assert_eq!(cache.get("one").unwrap(), Some(1));
    cache.invalidate("one");
    assert_eq!(cache.peek("one"), None, "the cached copy is dropped");
    assert_eq!(
        names.0.lock().get("one"),
        Some(&1),
        "the store is not touched"
    );
    cache.remove("two").unwrap();
    assert_eq!(names.0.lock().get("two"), None, "removed from the store");
    assert_eq!(cache.get("two").unwrap(), None);
}

/// A store that refuses every write, once a test holding `gate` for
/// writing lets it.
#[derive(Clone, Default)]
struct Refuser {
    gate: Arc<RwLock<()>>,
}

impl larder::Store<u64, u64> for Refuser {
    type Error = String;
    fn load(&self, _: &u64) -> Result<Option<u64>, String> {
        Ok(None)
    }
    fn write(&self, _: &[(u64, Change<u64>)]) -> Result<(), String> {
        let _open = self.gate.read();
        Err("refused".into())
    }
}

#[test]
fn user_code_on_the_flusher_thread_may_call_the_cache_without_waiting_for_itself() {
    type Handle = Arc<Mutex<Option<StoreCache<u64, u64, Refuser>>>>;
    let me: Handle = Arc::default();
    let refuser = Refuser::default();
    let (told, heard) = std::sync::mpsc::channel::<String>();
    let told = Mutex::new(told);
    // A dead letter drops the key's cached copy on the flusher thread, so the
    // listener runs there (once: its own close drops key 2's copy too); it
    // flushes, fills the queue, writes into the full queue, and closes.
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener({
            let me = me.clone();
            move |_k: Arc<u64>, _v: u64, _cause| {
                let Some(cache) = me.lock().take() else {
                    return;
                };
                let flushed = cache.flush_timeout(Duration::from_secs(30));
                let room = cache.insert(2, 2);
                let full = cache.insert(3, 3);
                let report = cache.close(Duration::from_secs(30));
                let on = thread::current().name().map(str::to_string);
                let _ = told.lock().send(format!(
                    "{on:?} flushed={flushed} {room:?} {full:?} unwritten={:?}",
                    report.unwritten
                ));
            }
        })
        .store(refuser.clone())
        .write_behind()
        .queue_capacity(1)
        .when_full(WhenFull::Block)
        .max_attempts(1)
        .dead_letter(|_| {})
        .build()
        .unwrap();
    *me.lock() = Some(cache.clone());
    {
        // The insert queues key 1 before it caches the copy: a flusher that
        // gave up on key 1 in between would leave no copy to drop, and the
        // listener would never run. The store waits until it is cached.
        let gate = refuser.gate.write();
        cache.insert(1, 1).unwrap();
        drop(gate);
    }
    let heard = heard
        .recv_timeout(Duration::from_secs(10))
        .expect("the listener returned: nothing waited for its own flusher");
    assert_eq!(
        heard,
        "Some(\"larder-write-behind\") flushed=false Ok(()) Err(QueueFull) unwritten=[(2, Put(2))]"
    );
}

#[test]
fn invalidating_by_predicate_drops_cached_copies_and_leaves_the_store() {
    let store = MemStore::default();
    let cache = builder(&store).build().unwrap();
    for k in 0..10 {
        cache.insert(k, k * 10).unwrap();
    }
    cache.invalidate_entries_if(|_, v| v % 20 == 0);
    let cached: Vec<u64> = (0..10).filter(|k| cache.contains_key(k)).collect();
    assert_eq!(cached, vec![1, 3, 5, 7, 9]);
    assert_eq!(store.get(4), Some(40), "the store keeps every row");
    assert_eq!(cache.get(&4).unwrap(), Some(40), "read through again");
    assert!(cache.contains_key(&4));
}

/// With no dead-letter handler, `close` returns the dead letters. One the
/// flusher is still settling (an eviction listener it runs for the refused
/// value's cached copy is slow) when `close` runs out of time must be in the
/// report all the same, not kept where no later call looks.
#[test]
fn close_reports_a_dead_letter_the_flusher_is_still_settling() {
    let store = MemStore::default();
    store.faults.poison.store(1, SeqCst); // the store refuses key 1
    let (reached, at_listener) = std::sync::mpsc::channel::<()>();
    let (release, go_on) = std::sync::mpsc::channel::<()>();
    let (reached, go_on) = (Mutex::new(reached), Mutex::new(go_on));
    let cache = Cache::builder()
        .max_capacity(100)
        .eviction_listener(move |k: Arc<u64>, _v: u64, _cause| {
            let on_flusher = thread::current().name() == Some("larder-write-behind");
            if *k == 1 && on_flusher {
                let _ = reached.lock().send(());
                let _ = go_on.lock().recv();
            }
        })
        .store(store.clone())
        .write_behind()
        .batch_size(1)
        .max_attempts(1)
        .build()
        .unwrap();
    {
        // The store waits until the insert has cached key 1's copy (it
        // queues the key first: a flusher that gave up on it in between
        // would leave no copy to drop).
        let gate = store.gate.write();
        cache.insert(1, 1).unwrap();
        drop(gate);
    }
    // The flusher has given up on key 1 and is dropping its cached copy.
    at_listener
        .recv_timeout(Duration::from_secs(10))
        .expect("the flusher dead-letters key 1");
    let report = cache.close(Duration::from_millis(50));
    release.send(()).unwrap();
    let dead: Vec<_> = report
        .dead_letters
        .iter()
        .map(|d| (d.key, d.change.clone()))
        .collect();
    assert_eq!(
        dead,
        vec![(1, Change::Put(1))],
        "the dead letter is reported"
    );
    assert!(report.unwritten.is_empty());
}

/// A write whose value cannot be cached (the weigher panics on it) still
/// reached the store or the queue: it must end like a failed write, dropping
/// the key's older cached copy and counting itself, so that reads and later
/// writes of the key never fall behind it.
#[test]
fn a_write_whose_value_the_weigher_refuses_leaves_no_older_copy_cached() {
    const REFUSED: u64 = 666;
    let quiet = |f: &dyn Fn()| {
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        assert!(panicked.is_err(), "the weigher panicked");
    };
    for behind in [false, true] {
        let store = MemStore::default();
        let builder = Cache::builder()
            .max_capacity(100)
            .weigher(|_k: &u64, v: &u64| {
                assert_ne!(*v, REFUSED, "the weigher refuses {REFUSED}");
                1
            })
            .store(store.clone());
        let cache = if behind {
            builder.write_behind().build().unwrap()
        } else {
            builder.build().unwrap()
        };
        cache.insert(1, 10).unwrap();
        cache.flush();
        quiet(&|| {
            let _ = cache.insert(1, REFUSED);
        });
        // (A read would load the refused value and panic in turn.)
        assert_eq!(
            cache.peek(&1),
            None,
            "behind: {behind}: the older copy is not served"
        );
        cache.flush();
        assert_eq!(store.get(1), Some(REFUSED), "behind: {behind}");
    }
}

/// A listener the flusher runs (dropping a dead-lettered key's cached copy)
/// may call `run_pending_tasks`. It must not wait there for a pass on
/// another thread: that pass's listener may be waiting for the flusher (a
/// `flush` waits until the flusher has handed over its dead letters), so
/// each would wait for the other.
#[test]
fn run_pending_tasks_on_the_flusher_thread_does_not_wait_for_a_pass_waiting_for_the_flusher() {
    type Handle = Arc<Mutex<Option<StoreCache<u64, u64, MemStore>>>>;
    let me: Handle = Arc::default();
    let store = MemStore::default();
    store.faults.poison.store(1, SeqCst); // the store refuses key 1
    let clock = MockClock::new();
    let (in_pass, pass_began) = std::sync::mpsc::channel::<()>();
    let (in_pass, pass_began) = (Mutex::new(in_pass), Mutex::new(pass_began));
    let (told, heard) = std::sync::mpsc::channel::<&'static str>();
    let told = Mutex::new(told);
    let cache = Cache::builder()
        .max_capacity(100)
        .time_to_live(Duration::from_secs(1))
        .clock(clock.clone())
        .eviction_listener({
            let me = me.clone();
            move |k: Arc<u64>, _v: u64, _cause| {
                let Some(cache) = me.lock().clone() else {
                    return;
                };
                match *k {
                    // Reaped by the pass of the helper thread below.
                    10 => {
                        let _ = in_pass.lock().send(());
                        let flushed = cache.flush_timeout(Duration::from_secs(30));
                        let _ = told.lock().send(if flushed {
                            "pass flushed"
                        } else {
                            "pass timed out"
                        });
                    }
                    // Dead-lettered: run on the flusher thread.
                    1 => {
                        let _ = pass_began.lock().recv_timeout(Duration::from_secs(10));
                        cache.run_pending_tasks();
                        let _ = told.lock().send("flusher ran pending tasks");
                    }
                    _ => {}
                }
            }
        })
        .store(store.clone())
        .write_behind()
        .batch_size(1)
        .max_attempts(1)
        .dead_letter(|_| {})
        .build()
        .unwrap();
    *me.lock() = Some(cache.clone());
    cache.insert(10, 10).unwrap();
    cache.flush();
    clock.advance(Duration::from_secs(2)); // key 10 expires
    {
        // The insert queues key 1 before it caches the copy: a flusher that
        // gave up on key 1 in between would leave no copy to drop, and the
        // listener would never hear of key 1. The store call for it waits
        // at the gate until the copy is cached.
        let gate = store.gate.write();
        cache.insert(1, 1).unwrap(); // refused: its copy is dropped on the flusher
        assert_eq!(
            cache.peek(&1),
            Some(1),
            "cached before the store refuses it"
        );
        drop(gate);
    }
    let helper = {
        let cache = cache.clone();
        thread::spawn(move || cache.run_pending_tasks())
    };
    let first = heard
        .recv_timeout(Duration::from_secs(10))
        .expect("neither the flusher nor the pass waits for the other");
    let second = heard
        .recv_timeout(Duration::from_secs(10))
        .expect("both listeners return");
    let mut both = [first, second];
    both.sort_unstable();
    assert_eq!(both, ["flusher ran pending tasks", "pass flushed"]);
    helper.join().unwrap();
    me.lock().take();
}

/// `close` releases a `flush` waiting on a hung store; if it hands back
/// writes that flush was waiting for (they are in its `unwritten`), the
/// flush must not report them settled: `flush_timeout` returns false.
#[test]
fn a_flush_released_by_close_reports_the_writes_it_handed_back_as_unsettled() {
    let store = MemStore::default();
    let cache = builder(&store)
        .write_behind()
        .batch_size(1)
        .flush_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    let gate = store.gate.write(); // the store hangs
    cache.insert(1, 1).unwrap();
    eventually("key 1 in flight", || cache.write_stats().in_flight == 1);
    cache.insert(2, 2).unwrap(); // queued behind the hung call
    let flusher = {
        let cache = cache.clone();
        thread::spawn(move || cache.flush_timeout(Duration::from_secs(30)))
    };
    thread::sleep(Duration::from_millis(50));
    assert!(!flusher.is_finished(), "the flush waits for the store");
    let report = cache.close(Duration::from_millis(100));
    let mut unwritten = report.unwritten.clone();
    unwritten.sort_by_key(|(k, _)| *k);
    assert_eq!(unwritten, vec![(1, Change::Put(1)), (2, Change::Put(2))]);
    eventually("the flush returned", || flusher.is_finished());
    let settled = flusher.join().unwrap();
    drop(gate);
    assert!(
        !settled,
        "flush_timeout said every earlier write settled, yet close handed them back unwritten"
    );
    assert_eq!(store.get(2), None, "key 2 never reached the store");
}

/// A drop that runs out of time while a store call with key 20's first
/// change hangs hands back the change queued behind it. That older change
/// may still land, after anything the handler writes: the letter must not
/// be one `WriteFailure`'s docs call safe to replay (`Dropped`), or a
/// handler following them has its replay overwritten by the older value.
#[test]
fn a_dropped_change_queued_behind_a_hung_store_call_of_its_key_is_not_safe_to_replay() {
    let store = MemStore::default();
    let replayed = Arc::new(Mutex::new(Vec::new()));
    let letters = Letters::default();
    let cache = builder(&store)
        .write_behind()
        .batch_size(1)
        .flush_interval(Duration::from_millis(1))
        .drop_flush_timeout(Duration::from_millis(50))
        .dead_letter({
            let (store, replayed, letters) = (store.clone(), replayed.clone(), letters.clone());
            move |dead: DeadLetter<u64, u64, String>| {
                // WriteFailure's example: these are safe to write again.
                let safe = matches!(
                    dead.error,
                    WriteFailure::Store(_) | WriteFailure::Panicked(_) | WriteFailure::Dropped
                );
                if let (true, Change::Put(v)) = (safe, &dead.change) {
                    store.set(dead.key, *v);
                    replayed.lock().push((dead.key, *v));
                }
                letters.lock().push(dead);
            }
        })
        .build()
        .unwrap();
    let gate = store.gate.write(); // the store call hangs before it writes
    cache.insert(20, 20).unwrap();
    eventually("key 20 in flight", || cache.write_stats().in_flight == 1);
    cache.insert(20, 21).unwrap(); // queued behind the hung call
    cache.insert(30, 30).unwrap(); // queued, its key in no call
    drop(cache);
    drop(gate); // the hung call goes on and writes 20
    eventually("the hung call wrote key 20", || {
        store.history.lock().contains_key(&20)
    });
    for (key, value) in replayed.lock().iter() {
        assert_eq!(
            store.get(*key),
            Some(*value),
            "key {key}: the replayed change was overwritten by an older one"
        );
    }
    let mut kinds: Vec<_> = letters
        .lock()
        .iter()
        .map(|d| (d.key, d.change.clone(), d.error.to_string()))
        .collect();
    kinds.sort_by_key(|(k, _, _)| *k);
    let in_flight = WriteFailure::<String>::InFlight.to_string();
    let dropped = WriteFailure::<String>::Dropped.to_string();
    assert_eq!(
        kinds,
        vec![
            (20, Change::Put(21), in_flight),
            (30, Change::Put(30), dropped)
        ]
    );
}

/// A load reads the store's old value and is held there while a write of
/// the key runs to its end and the key is then invalidated. A read that
/// begins after both, finding the key missing, joins the load under way:
/// it must not be answered the value that load read before the write, an
/// older value than one acknowledged before the read began.
#[test]
fn a_read_begun_after_a_write_never_gets_what_a_load_read_before_it() {
    for policy in ["through", "around", "behind"] {
        let store = MemStore::default();
        store.set(1, 10);
        let cache = with_policy(&store, policy);
        store.hold.load.store(1, SeqCst);
        let first = {
            let cache = cache.clone();
            thread::spawn(move || cache.get(&1).unwrap())
        };
        store.hold.wait_reached(); // the load has read 10
        cache.insert(1, 11).unwrap();
        cache.invalidate(&1);
        let second = {
            let cache = cache.clone();
            thread::spawn(move || cache.get(&1).unwrap())
        };
        thread::sleep(Duration::from_millis(50)); // it waits for the load
        store.hold.release();
        assert_eq!(
            first.join().unwrap(),
            Some(10),
            "{policy}: the load's own answer"
        );
        assert_eq!(
            second.join().unwrap(),
            Some(11),
            "{policy}: a read begun after the write got the value from before it"
        );
    }
}

/// A cache over `store` on `clock`, copies fresh for 60 s, writing by
/// `policy` (as in [`with_policy`]).
fn timed(store: &MemStore, clock: &MockClock, policy: &str) -> StoreCache<u64, u64, MemStore> {
    let b = Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(60))
        .clock(clock.clone())
        .store(store.clone());
    match policy {
        "through" => b.build().unwrap(),
        "around" => b.write_around().build().unwrap(),
        _ => b.write_behind().build().unwrap(),
    }
}

#[test]
fn insert_with_ttl_writes_the_store_as_insert_does_and_times_only_the_cached_copy() {
    const SEC: Duration = Duration::from_secs(1);
    for policy in ["through", "around", "behind"] {
        let store = MemStore::default();
        let clock = MockClock::new();
        let cache = timed(&store, &clock, policy);
        cache.insert_with_ttl(1, 10, 5 * SEC).unwrap();
        cache.flush();
        assert_eq!(store.get(1), Some(10), "{policy}: written");
        assert_eq!(store.history.lock()[&1], [Some(10)], "{policy}: once");
        if policy == "around" {
            assert_eq!(cache.peek(&1), None, "around: no copy to time");
            assert_eq!(cache.expires_in(&1), None, "around");
            assert_eq!(cache.get(&1).unwrap(), Some(10), "around: loaded");
            assert_eq!(
                cache.expires_in(&1),
                Some(Some(60 * SEC)),
                "around: the loaded copy has the cache's time to live"
            );
            continue;
        }
        assert_eq!(cache.expires_in(&1), Some(Some(5 * SEC)), "{policy}");
        clock.advance(4 * SEC);
        assert_eq!(cache.get(&1).unwrap(), Some(10), "{policy}: cached");
        assert_eq!(store.load_calls.load(SeqCst), 0, "{policy}");
        clock.advance(SEC);
        assert_eq!(cache.peek(&1), None, "{policy}: the copy expired");
        assert_eq!(store.get(1), Some(10), "{policy}: not the row");
        assert_eq!(cache.get(&1).unwrap(), Some(10), "{policy}: loaded");
        assert_eq!(store.load_calls.load(SeqCst), 1, "{policy}");
        assert_eq!(cache.expires_in(&1), Some(Some(60 * SEC)), "{policy}");
    }
}

#[test]
fn a_failed_insert_with_ttl_caches_nothing() {
    let store = MemStore::default();
    store.set(1, 10);
    let clock = MockClock::new();
    let cache = timed(&store, &clock, "through");
    assert_eq!(cache.get(&1).unwrap(), Some(10));
    store.faults.poison.store(1, SeqCst);
    let err = cache
        .insert_with_ttl(1, 11, Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(&err, WriteError::Store(e) if e == "key 1 is poisonous"));
    assert_eq!(cache.peek(&1), None, "the older copy is dropped too");
    assert_eq!(cache.get(&1).unwrap(), Some(10), "the store's value");
    assert_eq!(cache.expires_in(&1), Some(Some(Duration::from_secs(60))));
}

#[test]
fn a_write_behind_copy_expiring_before_its_flush_reads_back_the_queued_change() {
    let store = MemStore::default();
    store.set(1, 5); // older data a read must never see
    let clock = MockClock::new();
    let cache = timed(&store, &clock, "behind");
    let gate = store.gate.write();
    cache
        .insert_with_ttl(1, 10, Duration::from_secs(1))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.peek(&1), None, "the copy expired");
    assert_eq!(cache.get(&1).unwrap(), Some(10), "the queued change");
    assert_eq!(store.load_calls.load(SeqCst), 0, "not the store's row");
    assert_eq!(
        cache.expires_in(&1),
        Some(Some(Duration::from_secs(60))),
        "cached again with the cache's time to live"
    );
    drop(gate);
    cache.flush();
    assert_eq!(store.get(1), Some(10));
}

#[test]
fn expire_in_and_persist_retime_the_cached_copy_and_leave_the_store() {
    const SEC: Duration = Duration::from_secs(1);
    let store = MemStore::default();
    store.set(3, 30);
    let clock = MockClock::new();
    let cache = timed(&store, &clock, "through");
    cache.insert(1, 10).unwrap();
    cache.insert(2, 20).unwrap();
    let writes = store.write_calls.load(SeqCst);
    assert!(cache.expire_in(&1, 5 * SEC));
    assert!(cache.persist(&2));
    assert!(!cache.expire_in(&3, 5 * SEC), "not cached: not loaded");
    assert!(!cache.persist(&3));
    assert_eq!(cache.expires_in(&1), Some(Some(5 * SEC)));
    assert_eq!(cache.expires_in(&2), Some(None));
    assert_eq!(cache.expires_in(&3), None);
    clock.advance(5 * SEC);
    assert_eq!(cache.peek(&1), None, "expired at 5 s");
    clock.advance(3600 * SEC);
    assert_eq!(cache.peek(&2), Some(20), "never expires");
    assert_eq!(store.write_calls.load(SeqCst), writes, "nothing written");
    assert_eq!(store.load_calls.load(SeqCst), 0, "nothing read");
    assert_eq!((store.get(1), store.get(2)), (Some(10), Some(20)));
    assert_eq!(cache.get(&1).unwrap(), Some(10), "loaded again");

    // Write-around keeps no copy after a write: nothing to retime.
    let around = timed(&store, &clock, "around");
    around.insert(4, 40).unwrap();
    assert!(!around.expire_in(&4, 5 * SEC));
    assert!(!around.persist(&4));
}
