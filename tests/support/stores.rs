//! An in-memory [`Store`] for the write-strategy tests: a table behind a
//! mutex, a log of every call, and faults to inject — random failures,
//! slow calls, a poisonous key, random panics, a gate that holds writes
//! until released, and a hold that stops one chosen call part-way.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst},
    },
    thread,
    time::Duration,
};

use larder::{Change, Store, StoreCache, StoreCacheBuilder};
use parking_lot::{Mutex, RwLock};

/// Faults to inject; all off by default.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail this many write calls in 1,000.
    pub fail_per_mille: AtomicU32,
    /// Panic in this many write calls in 1,000.
    pub panic_per_mille: AtomicU32,
    /// Reject every batch holding this key (u64::MAX: none).
    pub poison: AtomicU64,
    /// Sleep this many microseconds in every write call.
    pub slow_micros: AtomicU64,
    /// Fail every load.
    pub fail_loads: AtomicBool,
    /// Sleep this many microseconds in every load.
    pub slow_load_micros: AtomicU64,
    /// Apply every write, then report it failed (a timeout after the
    /// commit).
    pub fail_after_applying: AtomicBool,
}

/// One call to stop part-way, once: a load of key `load` after it read the
/// table, or a write putting the value `write` after it changed the table
/// (u64::MAX: none). The stopped call meets the test at `reached`, then
/// waits for it at `resume`.
#[derive(Debug)]
pub struct Hold {
    pub load: AtomicU64,
    pub write: AtomicU64,
    pub reached: Barrier,
    pub resume: Barrier,
}

impl Default for Hold {
    fn default() -> Self {
        Hold {
            load: AtomicU64::new(u64::MAX),
            write: AtomicU64::new(u64::MAX),
            reached: Barrier::new(2),
            resume: Barrier::new(2),
        }
    }
}

impl Hold {
    /// Stops here if `at` holds `what` (and disarms it).
    fn here(&self, at: &AtomicU64, what: u64) {
        if at.compare_exchange(what, u64::MAX, SeqCst, SeqCst).is_ok() {
            self.reached.wait();
            self.resume.wait();
        }
    }

    /// For the test: waits until the held call has stopped.
    pub fn wait_reached(&self) {
        self.reached.wait();
    }

    /// For the test: lets the held call go on.
    pub fn release(&self) {
        self.resume.wait();
    }
}

/// The table and what was done to it.
#[derive(Clone)]
pub struct MemStore {
    pub table: Arc<Mutex<HashMap<u64, u64>>>,
    /// Every value applied to each key, in order (deletes as `None`).
    pub history: Arc<Mutex<HashMap<u64, Vec<Option<u64>>>>>,
    pub write_calls: Arc<AtomicU64>,
    pub load_calls: Arc<AtomicU64>,
    pub faults: Arc<Faults>,
    /// Held for writing by a test to stop the flusher's write calls at the
    /// door (calls from other threads pass).
    pub gate: Arc<RwLock<()>>,
    pub hold: Arc<Hold>,
    rng: Arc<AtomicU64>,
}

impl Default for MemStore {
    fn default() -> Self {
        let faults = Faults::default();
        faults.poison.store(u64::MAX, SeqCst);
        MemStore {
            table: Arc::default(),
            history: Arc::default(),
            write_calls: Arc::default(),
            load_calls: Arc::default(),
            faults: Arc::new(faults),
            gate: Arc::default(),
            hold: Arc::default(),
            rng: Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15)),
        }
    }
}

impl MemStore {
    /// A value in `0..1000` from a shared xorshift.
    fn roll(&self) -> u32 {
        let mut x = self.rng.load(SeqCst);
        loop {
            let mut y = x;
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            match self.rng.compare_exchange(x, y, SeqCst, SeqCst) {
                Ok(_) => return (y % 1000) as u32,
                Err(now) => x = now,
            }
        }
    }

    pub fn get(&self, key: u64) -> Option<u64> {
        self.table.lock().get(&key).copied()
    }

    pub fn set(&self, key: u64, value: u64) {
        self.table.lock().insert(key, value);
    }

    /// Panics if some key's applied values are not strictly increasing
    /// (deletes aside): a write reached the store after a newer one.
    pub fn assert_no_reordering(&self) {
        for (key, applied) in self.history.lock().iter() {
            let values: Vec<u64> = applied.iter().flatten().copied().collect();
            assert!(
                values.windows(2).all(|w| w[0] < w[1]),
                "key {key}: values applied out of order: {values:?}"
            );
        }
    }
}

impl Store<u64, u64> for MemStore {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        self.load_calls.fetch_add(1, SeqCst);
        if self.faults.fail_loads.load(SeqCst) {
            return Err("load failed".into());
        }
        // Read, then dawdle: a write may land before this answer is used.
        let value = self.get(*key);
        self.hold.here(&self.hold.load, *key);
        let slow = self.faults.slow_load_micros.load(SeqCst);
        if slow > 0 {
            thread::sleep(Duration::from_micros(slow));
        }
        Ok(value)
    }

    fn write(&self, batch: &[(u64, Change<u64>)]) -> Result<(), String> {
        let flusher = thread::current().name() == Some("larder-write-behind");
        let _open = flusher.then(|| self.gate.read());
        self.write_calls.fetch_add(1, SeqCst);
        let slow = self.faults.slow_micros.load(SeqCst);
        if slow > 0 {
            thread::sleep(Duration::from_micros(slow));
        }
        let poison = self.faults.poison.load(SeqCst);
        if batch.iter().any(|(k, _)| *k == poison) {
            return Err(format!("key {poison} is poisonous"));
        }
        if self.roll() < self.faults.fail_per_mille.load(SeqCst) {
            return Err("injected failure".into());
        }
        if self.roll() < self.faults.panic_per_mille.load(SeqCst) {
            panic!("injected panic in Store::write");
        }
        let mut keys: Vec<u64> = batch.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), batch.len(), "a batch holds one change per key");
        let mut table = self.table.lock();
        let mut history = self.history.lock();
        for (key, change) in batch {
            let value = match change {
                Change::Put(v) => {
                    table.insert(*key, *v);
                    Some(*v)
                }
                Change::Delete => {
                    table.remove(key);
                    None
                }
            };
            history.entry(*key).or_default().push(value);
        }
        drop((table, history));
        for (_, change) in batch {
            if let Change::Put(v) = change {
                self.hold.here(&self.hold.write, *v);
            }
        }
        if self.faults.fail_after_applying.load(SeqCst) {
            return Err("timed out (after applying)".into());
        }
        Ok(())
    }
}

/// The racing tests' cache from `builder`: writing through, around, or
/// behind (`policy`: "through", "around", anything else) with batches of 4,
/// a 1 ms flush interval and fast retries that all but never give up.
pub fn racing<S>(builder: StoreCacheBuilder<u64, u64, S>, policy: &str) -> StoreCache<u64, u64, S>
where
    S: Store<u64, u64> + Send + Sync + 'static,
    S::Error: Send + Sync + 'static,
{
    match policy {
        "through" => builder.build().unwrap(),
        "around" => builder.write_around().build().unwrap(),
        _ => builder
            .write_behind()
            .batch_size(4)
            .flush_interval(Duration::from_millis(1))
            .max_attempts(1_000)
            .retry_backoff(Duration::from_micros(50), Duration::from_micros(200), 0.5)
            .build()
            .unwrap(),
    }
}
