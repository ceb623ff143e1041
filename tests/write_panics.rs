//! Write-behind with keys whose `Hash` or `Eq` panics on some threads: the
//! queue hashes a key once, on the thread that writes it, so a key that
//! cannot be hashed elsewhere (on the flusher, in a reader's or a flush's
//! look at the queue) loses no write, stops no flusher and hangs no `flush`
//! or `close`; the buffer compares keys only when a change comes in, so a
//! key that cannot be compared on the flusher is still sent, retried and
//! dead-lettered, and one that cannot be compared or copied as the queue
//! takes its change in, or copied as the flusher takes it for a batch or
//! keeps its letter, is dead-lettered, with nothing left in flight; and
//! one that cannot be copied for `close`'s report makes that `close` panic
//! once, not the drop after it.

#[path = "support/threads.rs"]
mod threads;

use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread,
    time::{Duration, Instant},
};

use larder::{Cache, Change, DeadLetter, Store, StoreCache, StoreCacheBuilder, WriteFailure};
use parking_lot::Mutex;
use threads::parallel;

/// Where a [`Touchy`] key's `Hash` panics: given the name of the hashing
/// thread, true to panic.
type Rule = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// A key whose `Hash` panics on the threads its rule names, whose `Eq` on
/// those its `eq` rule names, and whose `Clone` on those its `copy` rule
/// names; compared and hashed by `id` otherwise.
struct Touchy {
    id: u64,
    rule: Rule,
    eq: Rule,
    copy: Rule,
}

impl Touchy {
    fn new(id: u64, rule: &Rule) -> Self {
        Touchy {
            id,
            rule: rule.clone(),
            eq: calm(),
            copy: calm(),
        }
    }

    /// A key that always hashes and whose `Eq` panics where `eq` says.
    fn uncomparable(id: u64, eq: &Rule) -> Self {
        Touchy {
            id,
            rule: calm(),
            eq: eq.clone(),
            copy: calm(),
        }
    }

    /// A key that always hashes and compares, and whose `Clone` panics
    /// where `copy` says.
    fn uncopyable(id: u64, copy: &Rule) -> Self {
        Touchy {
            id,
            rule: calm(),
            eq: calm(),
            copy: copy.clone(),
        }
    }
}

impl Clone for Touchy {
    fn clone(&self) -> Self {
        let refused = (self.copy)(thread::current().name());
        assert!(!refused, "injected panic: Clone of key {} refused", self.id);
        Touchy {
            id: self.id,
            rule: self.rule.clone(),
            eq: self.eq.clone(),
            copy: self.copy.clone(),
        }
    }
}

impl Hash for Touchy {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let refused = (self.rule)(thread::current().name());
        assert!(!refused, "injected panic: hash of key {} refused", self.id);
        self.id.hash(h);
    }
}

impl PartialEq for Touchy {
    fn eq(&self, other: &Self) -> bool {
        let refused = (self.eq)(thread::current().name());
        assert!(!refused, "injected panic: Eq of key {} refused", self.id);
        self.id == other.id
    }
}

impl Eq for Touchy {}

impl fmt::Debug for Touchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Touchy({})", self.id)
    }
}

/// A key that always hashes.
fn calm() -> Rule {
    Arc::new(|_| false)
}

/// A key that cannot be hashed on the thread named `name`.
fn not_on(name: &'static str) -> Rule {
    Arc::new(move |thread| thread == Some(name))
}

const FLUSHER: &str = "larder-write-behind";

/// Every change a [`Log`] took, by key id, in order.
type Taken = Vec<(u64, Change<u64>)>;

/// A store that logs every change it takes, in order, without hashing or
/// comparing a key, and refuses every batch holding the key `poison`. A
/// test holding `gate` keeps its calls waiting at the door.
#[derive(Clone, Default)]
struct Log {
    taken: Arc<Mutex<Taken>>,
    poison: Arc<Mutex<Option<u64>>>,
    gate: Arc<Mutex<()>>,
}

impl Log {
    /// A log that refuses the key `id`.
    fn poisoned(id: u64) -> Self {
        let log = Log::default();
        *log.poison.lock() = Some(id);
        log
    }

    /// The last change the store took for `id`.
    fn last(&self, id: u64) -> Option<Change<u64>> {
        let taken = self.taken.lock();
        taken
            .iter()
            .rev()
            .find(|(k, _)| *k == id)
            .map(|(_, c)| c.clone())
    }
}

impl Store<Touchy, u64> for Log {
    type Error = String;

    fn load(&self, key: &Touchy) -> Result<Option<u64>, String> {
        Ok(self.last(key.id).and_then(Change::into_value))
    }

    fn write(&self, batch: &[(Touchy, Change<u64>)]) -> Result<(), String> {
        drop(self.gate.lock());
        let poison = *self.poison.lock();
        if let Some(bad) = poison.filter(|p| batch.iter().any(|(k, _)| k.id == *p)) {
            return Err(format!("key {bad} refused"));
        }
        let mut taken = self.taken.lock();
        taken.extend(batch.iter().map(|(k, c)| (k.id, c.clone())));
        Ok(())
    }
}

/// The dead letters a [`collected`] cache's handler has been given.
type Letters = Arc<Mutex<Vec<DeadLetter<Touchy, u64, String>>>>;

/// `builder`'s cache with a handler that collects its dead letters.
fn collected(
    builder: StoreCacheBuilder<Touchy, u64, Log>,
) -> (StoreCache<Touchy, u64, Log>, Letters) {
    let letters = Letters::default();
    let cache = builder
        .dead_letter({
            let letters = letters.clone();
            move |dead| letters.lock().push(dead)
        })
        .build()
        .unwrap();
    (cache, letters)
}

/// Keeps the injected panics out of the test output.
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.contains("injected panic"));
        if !injected {
            default(info);
        }
    }));
}

#[test]
fn keys_that_cannot_be_hashed_on_the_flusher_still_land_and_flush_and_close_return() {
    quiet_injected_panics();
    let log = Log::default();
    let rule = not_on(FLUSHER);
    let cache = Cache::builder()
        .store(log.clone())
        .write_behind()
        .flush_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    for id in 0..20 {
        cache.insert(Touchy::new(id, &rule), id + 100).unwrap();
    }
    assert!(
        cache.flush_timeout(Duration::from_secs(5)),
        "the flusher is alive and the flush settles"
    );
    for id in 0..20 {
        assert_eq!(log.last(id), Some(Change::Put(id + 100)), "key {id} landed");
    }
    let s = cache.write_stats();
    assert_eq!(
        (s.queued, s.flushed + s.coalesced, s.queue_len),
        (20, 20, 0)
    );
    // A later write still goes out, and close does not wait out its timeout.
    cache.insert(Touchy::new(20, &rule), 120).unwrap();
    let started = Instant::now();
    let report = cache.close(Duration::from_secs(10));
    assert!(report.is_empty(), "{report:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close returned early"
    );
    assert_eq!(log.last(20), Some(Change::Put(120)));
}

#[test]
fn a_reader_that_drains_keys_it_cannot_hash_neither_panics_nor_loses_them() {
    quiet_injected_panics();
    let log = Log::default();
    let rule = not_on("reader");
    let cache = Cache::builder()
        .store(log.clone())
        .write_behind()
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    // The first write wakes the flusher, which drains it and sleeps for the
    // flush interval; the next writes wait in this thread's lane, so the
    // reader below is the one to drain them.
    cache.insert(Touchy::new(100, &rule), 100).unwrap();
    thread::sleep(Duration::from_millis(100));
    for id in 0..20 {
        cache.insert(Touchy::new(id, &rule), id).unwrap();
    }
    let reader = {
        let cache = cache.clone();
        thread::Builder::new()
            .name("reader".into())
            .spawn(move || cache.get(&Touchy::new(999, &calm())))
            .unwrap()
    };
    let read = reader.join().map_err(|_| "the reader panicked");
    assert_eq!(read, Ok(Ok(None)));
    let c = cache.clone();
    let flushed = parallel(
        Duration::from_secs(20),
        "a flush after the read",
        1,
        move |_| c.flush_timeout(Duration::from_secs(5)),
    );
    assert_eq!(flushed, [true]);
    for id in (0..20).chain([100]) {
        assert!(log.last(id).is_some(), "key {id} landed");
    }
    let s = cache.write_stats();
    assert_eq!(
        (s.queued, s.flushed + s.coalesced, s.queue_len),
        (21, 21, 0)
    );
    assert!(cache.close(Duration::from_secs(5)).is_empty());
}

#[test]
fn a_dead_letter_whose_key_cannot_be_hashed_on_the_flusher_reaches_the_handler() {
    quiet_injected_panics();
    let log = Log::poisoned(7);
    let (rule, calm) = (not_on(FLUSHER), calm());
    let (cache, letters) = collected(
        Cache::builder()
            .store(log.clone())
            .write_behind()
            .flush_interval(Duration::from_millis(1))
            .max_attempts(1),
    );
    cache.insert(Touchy::new(7, &rule), 7).unwrap();
    for id in 0..5 {
        cache.insert(Touchy::new(id, &calm), id).unwrap();
    }
    assert!(cache.flush_timeout(Duration::from_secs(5)));
    {
        let letters = letters.lock();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].key.id, 7);
        assert!(matches!(&letters[0].error, WriteFailure::Store(e) if **e == "key 7 refused"));
    }
    // The flusher survived dropping the letter's cached copy.
    cache.insert(Touchy::new(50, &calm), 50).unwrap();
    assert!(cache.flush_timeout(Duration::from_secs(5)));
    assert_eq!(log.last(50), Some(Change::Put(50)));
    assert!(cache.close(Duration::from_secs(5)).is_empty());
}

#[test]
fn a_key_that_cannot_be_compared_on_the_flusher_is_still_sent_retried_and_dead_lettered() {
    quiet_injected_panics();
    let log = Log::poisoned(7);
    let rule = not_on(FLUSHER);
    let (cache, letters) = collected(
        Cache::builder()
            .store(log.clone())
            .write_behind()
            .flush_interval(Duration::from_millis(1))
            .max_attempts(2)
            .retry_backoff(Duration::from_millis(1), Duration::from_millis(2), 0.0),
    );
    // One write per key: the flusher takes, settles, retries and splits
    // them, and never needs to compare two keys to do it.
    for id in 0..10 {
        cache.insert(Touchy::uncomparable(id, &rule), id).unwrap();
    }
    assert!(
        cache.flush_timeout(Duration::from_secs(5)),
        "every key was sent and settled"
    );
    for id in (0..10).filter(|&id| id != 7) {
        assert_eq!(log.last(id), Some(Change::Put(id)), "key {id} landed");
    }
    {
        let letters = letters.lock();
        assert_eq!(letters.len(), 1, "key 7 was dead-lettered");
        assert_eq!((letters[0].key.id, letters[0].attempts), (7, 2));
        assert!(matches!(&letters[0].error, WriteFailure::Store(e) if **e == "key 7 refused"));
    }
    let s = cache.write_stats();
    assert_eq!(
        (s.queued, s.flushed, s.dead_lettered, s.queue_len),
        (10, 9, 1, 0)
    );
    let started = Instant::now();
    assert!(cache.close(Duration::from_secs(10)).is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close returned early"
    );
}

/// Polls `done` for up to 5 s.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_change_whose_key_the_flusher_cannot_compare_as_it_drains_is_dead_lettered() {
    quiet_injected_panics();
    let log = Log::poisoned(7);
    let refusing = Arc::new(AtomicBool::new(false));
    let rule = refused_on_flusher_while(&refusing);
    let (cache, letters) = collected(
        Cache::builder()
            .store(log.clone())
            .write_behind()
            .flush_interval(Duration::from_millis(1))
            .retry_backoff(Duration::from_secs(1), Duration::from_secs(1), 0.0),
    );
    // The first change of key 7 fails once and waits a second for its retry.
    cache.insert(Touchy::uncomparable(7, &rule), 1).unwrap();
    eventually("the first send failed", || cache.write_stats().retried == 1);
    *log.poison.lock() = None;
    // The second meets it in the buffer as the flusher drains it, and the
    // key's `Eq` panics there.
    refusing.store(true, SeqCst);
    cache.insert(Touchy::uncomparable(7, &rule), 2).unwrap();
    eventually("the second change was dead-lettered", || {
        !letters.lock().is_empty()
    });
    refusing.store(false, SeqCst);
    assert!(cache.flush_timeout(Duration::from_secs(5)));
    {
        let letters = letters.lock();
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        assert_eq!(
            (letter.key.id, &letter.change, letter.attempts),
            (7, &Change::Put(2), 0)
        );
        assert!(
            matches!(&letter.error, WriteFailure::KeyPanicked(m) if m.contains("Eq of key 7 refused")),
            "{:?}",
            letter.error
        );
    }
    // The change it met was retried and landed.
    assert_eq!(log.last(7), Some(Change::Put(1)));
    let s = cache.write_stats();
    assert_eq!(
        (
            s.queued,
            s.flushed,
            s.coalesced,
            s.dead_lettered,
            s.queue_len
        ),
        (2, 1, 0, 1, 0)
    );
    assert!(cache.close(Duration::from_secs(5)).is_empty());
}

#[test]
fn a_change_whose_key_close_cannot_compare_as_it_drains_comes_back_in_the_report() {
    quiet_injected_panics();
    let log = Log::default();
    let rule = not_on("closer");
    let cache = Cache::builder()
        .store(log.clone())
        .write_behind()
        .flush_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    // The flusher waits in a store call with key 0, so the two changes of
    // key 1 wait in this thread's lane for `close` to drain them.
    let gate = log.gate.lock();
    cache.insert(Touchy::uncomparable(0, &rule), 0).unwrap();
    eventually("key 0 is in a store call", || {
        cache.write_stats().in_flight == 1
    });
    cache.insert(Touchy::uncomparable(1, &rule), 1).unwrap();
    cache.insert(Touchy::uncomparable(1, &rule), 2).unwrap();
    let closer = {
        let cache = cache.clone();
        thread::Builder::new()
            .name("closer".into())
            .spawn(move || cache.close(Duration::from_millis(200)))
            .unwrap()
    };
    let report = closer.join().expect("close returned a report");
    drop(gate);
    let unwritten: Vec<_> = report
        .unwritten
        .iter()
        .map(|(k, c)| (k.id, c.clone()))
        .collect();
    assert_eq!(
        unwritten,
        [(0, Change::Put(0)), (1, Change::Put(1))],
        "key 0 in the hung call, key 1's first change queued"
    );
    assert_eq!(report.in_flight, 1);
    assert_eq!(report.dead_letters.len(), 1, "{report:?}");
    let letter = &report.dead_letters[0];
    assert_key_panicked(letter, 1, &Change::Put(2), "Eq");
}

#[test]
fn a_handler_that_flushes_while_close_hands_it_a_letter_does_not_hang_close() {
    quiet_injected_panics();
    let log = Log::default();
    let rule = not_on("closer");
    // The handler flushes the cache it is a handler of (from the cell, taken
    // out at the end so that the cache can go).
    let cell: Arc<Mutex<Option<larder::StoreCache<Touchy, u64, Log>>>> = Arc::default();
    let flushes: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let cache = Cache::builder()
        .store(log.clone())
        .write_behind()
        .flush_interval(Duration::from_millis(1))
        .dead_letter({
            let (cell, flushes) = (cell.clone(), flushes.clone());
            move |_| {
                let Some(cache) = cell.lock().clone() else {
                    return;
                };
                let started = Instant::now();
                cache.flush();
                flushes.lock().push(started.elapsed());
            }
        })
        .build()
        .unwrap();
    *cell.lock() = Some(cache.clone());
    // The flusher hangs in a store call with key 0, so the two changes of
    // key 1 wait for `close` to drain them, where the second's `Eq` panics:
    // `close`, giving up on the hung call, hands that letter to the handler
    // itself, on its own thread.
    let gate = log.gate.lock();
    cache.insert(Touchy::uncomparable(0, &rule), 0).unwrap();
    eventually("key 0 is in a store call", || {
        cache.write_stats().in_flight == 1
    });
    cache.insert(Touchy::uncomparable(1, &rule), 1).unwrap();
    cache.insert(Touchy::uncomparable(1, &rule), 2).unwrap();
    let (done, closed) = std::sync::mpsc::channel();
    let closer = {
        let cache = cache.clone();
        thread::Builder::new()
            .name("closer".into())
            .spawn(move || {
                let report = cache.close(Duration::from_millis(100));
                let _ = done.send(report.unwritten.len());
            })
            .unwrap()
    };
    // The store call still hangs: close must return all the same.
    let unwritten = closed.recv_timeout(Duration::from_secs(5));
    drop(gate);
    closer.join().unwrap();
    cell.lock().take();
    assert_eq!(
        unwritten,
        Ok(2),
        "close returned (key 0 in the hung call, key 1's first change)"
    );
    let flushes = flushes.lock();
    assert_eq!(flushes.len(), 1, "the handler got the letter");
    assert!(
        flushes[0] < Duration::from_secs(1),
        "the handler's flush returned at once: {:?}",
        flushes[0]
    );
}

#[test]
fn a_change_whose_key_the_flusher_cannot_copy_as_it_drains_is_dead_lettered() {
    quiet_injected_panics();
    let log = Log::default();
    let refusing = Arc::new(AtomicBool::new(true));
    let rule = refused_on_flusher_while(&refusing);
    let (cache, letters) = collected(
        Cache::builder()
            .store(log.clone())
            .write_behind()
            .flush_interval(Duration::from_millis(1)),
    );
    // The flusher copies a new key as it takes its change in: key 3's
    // `Clone` panics there. Key 4, in the same lane after it, must still
    // land.
    cache.insert(Touchy::uncopyable(3, &rule), 30).unwrap();
    cache.insert(Touchy::new(4, &calm()), 40).unwrap();
    eventually("key 3's change was dead-lettered", || {
        !letters.lock().is_empty()
    });
    refusing.store(false, SeqCst);
    assert!(cache.flush_timeout(Duration::from_secs(5)));
    {
        let letters = letters.lock();
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        assert_key_panicked(letter, 3, &Change::Put(30), "Clone");
    }
    assert_eq!(log.last(3), None, "key 3 never reached the store");
    assert_eq!(log.last(4), Some(Change::Put(40)));
    let s = cache.write_stats();
    assert_eq!(
        (s.queued, s.flushed, s.dead_lettered, s.queue_len),
        (2, 1, 1, 0)
    );
    assert!(cache.close(Duration::from_secs(5)).is_empty());
}

/// A key the flusher reads for a write, `refuse`d while the flag holds.
fn refused_on_flusher_while(flag: &Arc<AtomicBool>) -> Rule {
    let flag = flag.clone();
    Arc::new(move |thread| thread == Some(FLUSHER) && flag.load(SeqCst))
}

#[test]
fn a_change_whose_key_the_flusher_cannot_copy_as_it_takes_a_batch_is_dead_lettered() {
    // The batch's copy of the key is made as the flusher takes the change
    // out of the buffer: a `Clone` that panics there, even once, cost the
    // change (neither stored, dead-lettered nor reported by `close`) and
    // left it in flight for ever, so that `flush` never returned.
    quiet_injected_panics();
    let log = Log::default();
    let trip = Arc::new(AtomicBool::new(false));
    let once: Rule = {
        let trip = trip.clone();
        Arc::new(move |thread| thread == Some(FLUSHER) && trip.swap(false, SeqCst))
    };
    let (cache, letters) = collected(
        Cache::builder()
            .store(log.clone())
            .write_behind()
            .flush_interval(Duration::from_secs(3600)),
    );
    cache.insert(Touchy::uncopyable(1, &once), 10).unwrap();
    cache.insert(Touchy::new(2, &calm()), 20).unwrap();
    // Drained into the buffer here (the copy for its slot made calmly);
    // the flusher waits for its interval until the flush below.
    assert_eq!(cache.write_stats().queue_len, 2);
    trip.store(true, SeqCst);
    assert!(
        cache.flush_timeout(Duration::from_secs(5)),
        "flush returned"
    );
    assert!(
        !trip.load(SeqCst),
        "the key's Clone panicked on the flusher"
    );
    {
        let letters = letters.lock();
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        assert_key_panicked(letter, 1, &Change::Put(10), "Clone");
    }
    assert_eq!(log.last(1), None);
    assert_eq!(log.last(2), Some(Change::Put(20)));
    let s = cache.write_stats();
    assert_eq!(
        (
            s.queued,
            s.flushed,
            s.dead_lettered,
            s.queue_len,
            s.in_flight
        ),
        (2, 1, 1, 0, 0)
    );
    assert!(cache.close(Duration::from_secs(5)).is_empty());
}

#[test]
fn without_a_handler_a_letter_whose_key_the_flusher_cannot_copy_is_kept_for_close() {
    // With no handler the flusher keeps each letter for `close` and copies
    // its key to drop the cached copy by: a `Clone` that panicked there
    // lost the letter and left it counted as being handed over, so every
    // later `flush` waited for ever.
    quiet_injected_panics();
    let log = Log::default();
    let refusing = Arc::new(AtomicBool::new(true));
    let rule = refused_on_flusher_while(&refusing);
    let cache = Cache::builder()
        .store(log.clone())
        .write_behind()
        .flush_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    cache.insert(Touchy::uncopyable(3, &rule), 30).unwrap();
    cache.insert(Touchy::new(4, &calm()), 40).unwrap();
    eventually("key 3's change was dead-lettered", || {
        cache.write_stats().dead_lettered == 1
    });
    eventually("key 4 landed", || log.last(4).is_some());
    assert!(
        cache.flush_timeout(Duration::from_secs(5)),
        "flush returned"
    );
    refusing.store(false, SeqCst);
    assert!(
        !cache.contains_key(&Touchy::new(3, &calm())),
        "its cached copy was dropped"
    );
    let report = cache.close(Duration::from_secs(5));
    assert!(report.unwritten.is_empty());
    assert_eq!(report.dead_letters.len(), 1);
    let letter = &report.dead_letters[0];
    assert_eq!((letter.key.id, &letter.change), (3, &Change::Put(30)));
    assert!(matches!(&letter.error, WriteFailure::KeyPanicked(_)));
    assert_eq!(log.last(3), None);
}

#[test]
fn a_newer_change_behind_a_dead_letter_whose_key_cannot_be_copied_is_dead_lettered_too() {
    // A change dead-lettered while a newer change of its key waits behind
    // it: the newer one is queued with a copy of the key, made on the
    // flusher. If that copy panics, the newer change goes as a dead letter
    // as well, with nothing lost or left in flight.
    quiet_injected_panics();
    let log = Log::poisoned(5);
    let refusing = Arc::new(AtomicBool::new(false));
    let rule = refused_on_flusher_while(&refusing);
    let (cache, letters) = collected(
        Cache::builder()
            .store(log.clone())
            .write_behind()
            .flush_interval(Duration::from_millis(1))
            .max_attempts(1),
    );
    let gate = log.gate.lock();
    cache.insert(Touchy::uncopyable(5, &rule), 50).unwrap();
    eventually("key 5 is in flight", || cache.write_stats().in_flight == 1);
    // Behind the flight (its slot is there: no copy made).
    cache.insert(Touchy::uncopyable(5, &rule), 51).unwrap();
    assert_eq!(cache.write_stats().queue_len, 2);
    refusing.store(true, SeqCst);
    drop(gate);
    eventually("both changes were dead-lettered", || {
        letters.lock().len() == 2
    });
    refusing.store(false, SeqCst);
    assert!(
        cache.flush_timeout(Duration::from_secs(5)),
        "flush returned"
    );
    {
        let letters = letters.lock();
        let refused = &letters[0];
        assert_eq!((refused.key.id, &refused.change), (5, &Change::Put(50)));
        assert!(
            matches!(&refused.error, WriteFailure::Store(_)),
            "{:?}",
            refused.error
        );
        let uncopied = &letters[1];
        assert_key_panicked(uncopied, 5, &Change::Put(51), "Clone");
    }
    let s = cache.write_stats();
    assert_eq!(
        (
            s.queued,
            s.flushed,
            s.dead_lettered,
            s.queue_len,
            s.in_flight
        ),
        (2, 0, 2, 0, 0)
    );
    assert!(cache.close(Duration::from_secs(5)).is_empty());
}

/// `letter` is key `id`'s `change`, given up because the key's `what`
/// (`"Eq"` or `"Clone"`) panicked.
fn assert_key_panicked(
    letter: &DeadLetter<Touchy, u64, String>,
    id: u64,
    change: &Change<u64>,
    what: &str,
) {
    assert_eq!((letter.key.id, &letter.change), (id, change));
    let refused = format!("{what} of key {id} refused");
    assert!(
        matches!(&letter.error, WriteFailure::KeyPanicked(m) if m.contains(&refused)),
        "{:?}",
        letter.error
    );
}

/// A key that cannot be copied while `flag` is set, on any thread.
fn refused_while(flag: &Arc<AtomicBool>) -> Rule {
    let flag = flag.clone();
    Arc::new(move |_| flag.load(SeqCst))
}

#[test]
fn a_close_whose_report_cannot_copy_a_key_panics_once_and_the_drop_after_it_does_not() {
    // `close` copies the changes it reports unwritten (one in a store call
    // the store holds them in too). A key whose `Clone` panics there makes
    // `close` panic; the last handle, dropped as that panic unwinds, closes
    // again, and must find nothing left to copy: a second panic while
    // unwinding aborts the process.
    quiet_injected_panics();
    let log = Log::default();
    let refusing = Arc::new(AtomicBool::new(false));
    let rule = refused_while(&refusing);
    let (cache, letters) = collected(
        Cache::builder()
            .store(log.clone())
            .write_behind()
            .flush_interval(Duration::from_millis(1)),
    );
    let held = log.gate.lock();
    cache.insert(Touchy::uncopyable(5, &rule), 50).unwrap();
    eventually("key 5's change is in a store call", || {
        cache.write_stats().in_flight == 1
    });
    cache.insert(Touchy::uncopyable(6, &rule), 60).unwrap();
    // Queued behind the call (a look at the stats drains the lanes, so
    // close's own drain copies nothing).
    assert_eq!(cache.write_stats().queue_len, 2);
    refusing.store(true, SeqCst);
    let closing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let cache = cache;
        cache.close(Duration::from_millis(20))
    }));
    assert!(closing.is_err(), "close could not copy key 5 and panicked");
    refusing.store(false, SeqCst);
    drop(held);
    eventually("the hung store call took key 5", || log.last(5).is_some());
    let handed: Vec<u64> = letters.lock().iter().map(|l| l.key.id).collect();
    assert!(handed.is_empty(), "handed to the handler: {handed:?}");
    assert_eq!(log.last(6), None, "the queued change went with the report");
}
