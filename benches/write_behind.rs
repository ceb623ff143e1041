//! Write-behind: what it costs a writer, how much it saves the store, and
//! how long draining a full queue takes.
//!
//! 1. **Insert rate**, 2 writer threads, each inserting its own pre-made
//!    Zipf stream (100,000 keys, s = 0.99) into a cache of 100,000 entries:
//!    plain `Cache::insert`, `StoreCache::insert` with write-behind (default
//!    settings: batches of 128, 100 ms interval, queue of 65,536, writers
//!    block when it is full) and with write-through, both over an in-memory
//!    table (a `HashMap` behind a mutex). Rounds alternate between the
//!    modes so a busy moment of the shared host falls on all of them; the
//!    median of 9 rounds counts, and so does the median of the rounds' own
//!    ratios to the plain insert (paired, so a busy spell that slows one
//!    round slows both sides of its ratio). The write-behind figure
//!    includes everything up to the writers' return, not the flush after.
//! 2. **Coalescing**: 1,000,000 Zipf writes (the same streams), then
//!    `flush()`: store calls and changes the store received per 1M writes.
//! 3. **Flush of a full queue**: with the flusher held at the store's door,
//!    fill the queue with 65,536 distinct keys, open the door and time
//!    `flush()`, over the in-memory table and over SQLite (a temporary file,
//!    WAL mode, one transaction per batch).
//!
//! `cargo bench --bench write_behind` (about 30 s). `LARDER_WB_WRITES`
//! sets the writes per thread per round (default 400,000).

#[path = "../tests/support/sqlite.rs"]
mod sqlite;
#[path = "support/workload.rs"]
#[allow(dead_code)]
mod workload;

use std::{
    collections::HashMap,
    hint::black_box,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use larder::{Cache, Change, Store, StoreCache};
use parking_lot::Mutex;
use sqlite::{Sqlite, TempDb};

const KEYS: u64 = 100_000;
const ZIPF_S: f64 = 0.99;
const ROUNDS: usize = 9;
const QUEUE: usize = 65_536;

/// An in-memory table that counts calls and changes; writes wait while
/// `closed` is set.
#[derive(Clone, Default)]
struct Table {
    rows: Arc<Mutex<HashMap<u64, u64>>>,
    calls: Arc<AtomicU64>,
    changes: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

impl Store<u64, u64> for Table {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        Ok(self.rows.lock().get(key).copied())
    }

    fn write(&self, batch: &[(u64, Change<u64>)]) -> Result<(), String> {
        while self.closed.load(Relaxed) {
            thread::sleep(Duration::from_micros(50));
        }
        self.calls.fetch_add(1, Relaxed);
        self.changes.fetch_add(batch.len() as u64, Relaxed);
        let mut rows = self.rows.lock();
        for (k, c) in batch {
            match c {
                Change::Put(v) => rows.insert(*k, *v),
                Change::Delete => rows.remove(k),
            };
        }
        Ok(())
    }
}

/// Runs `insert` over each thread's stream on [`threads()`] threads; returns
/// inserts per second.
fn threads() -> usize {
    std::env::var("LARDER_WB_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

fn rate(streams: &Arc<Vec<Vec<u64>>>, insert: impl Fn(u64, u64) + Send + Sync + 'static) -> f64 {
    let insert = Arc::new(insert);
    let start = Arc::new(Barrier::new(threads() + 1));
    let handles: Vec<_> = (0..threads())
        .map(|t| {
            let (insert, start, streams) = (insert.clone(), start.clone(), streams.clone());
            thread::spawn(move || {
                start.wait();
                let began = Instant::now();
                for (i, &key) in streams[t].iter().enumerate() {
                    insert(key, i as u64);
                }
                began.elapsed()
            })
        })
        .collect();
    start.wait();
    let slowest = handles
        .into_iter()
        .map(|h| h.join().expect("writer"))
        .max()
        .expect("threads");
    let total = streams.iter().map(Vec::len).sum::<usize>();
    total as f64 / slowest.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn insert_rates(streams: &Arc<Vec<Vec<u64>>>) {
    let modes = ["plain insert", "write-behind", "write-through"];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut behind_calls = 0;
    for _ in 0..ROUNDS {
        for (m, name) in modes.iter().enumerate() {
            if std::env::var("LARDER_WB_ONLY").is_ok_and(|only| !name.starts_with(&only)) {
                rates[m].push(f64::NAN);
                continue;
            }
            let r = match *name {
                "plain insert" => {
                    let cache: Cache<u64, u64> = Cache::new(KEYS);
                    rate(streams, move |k, v| cache.insert(k, v))
                }
                "write-behind" => {
                    let table = Table::default();
                    let cache = Cache::builder()
                        .max_capacity(KEYS)
                        .store(table.clone())
                        .write_behind()
                        .build()
                        .unwrap();
                    let c = cache.clone();
                    let r = rate(streams, move |k, v| c.insert(k, v).unwrap());
                    cache.flush();
                    behind_calls += table.calls.load(Relaxed);
                    r
                }
                _ => {
                    let cache = Cache::builder()
                        .max_capacity(KEYS)
                        .store(Table::default())
                        .build()
                        .unwrap();
                    rate(streams, move |k, v| cache.insert(k, v).unwrap())
                }
            };
            rates[m].push(r);
        }
    }
    let plain = median(rates[0].clone());
    println!(
        "\n## Insert rate, {} threads, Zipf s={ZIPF_S} over {KEYS} keys (median of {ROUNDS} rounds)\n",
        threads()
    );
    println!(
        "| mode | M inserts/s | vs plain insert | paired: median of round ratios | rounds (M/s) |"
    );
    println!("|---|---|---|---|---|");
    for (m, name) in modes.iter().enumerate() {
        let med = median(rates[m].clone());
        let all: Vec<String> = rates[m].iter().map(|r| format!("{:.2}", r / 1e6)).collect();
        // Each round runs the modes back to back, so a busy spell of the
        // host mostly falls within one round: the ratio within a round
        // moves less than either rate does.
        let paired = median(rates[m].iter().zip(&rates[0]).map(|(r, p)| r / p).collect());
        println!(
            "| {name} | {:.2} | {:.2}x | {paired:.2}x | {} |",
            med / 1e6,
            med / plain,
            all.join(", ")
        );
    }
    black_box(behind_calls);
}

fn coalescing(streams: &Arc<Vec<Vec<u64>>>) {
    let writes: usize = 1_000_000;
    let table = Table::default();
    let cache = Cache::builder()
        .max_capacity(KEYS)
        .store(table.clone())
        .write_behind()
        .build()
        .unwrap();
    let per_thread = writes / threads();
    let sliced: Arc<Vec<Vec<u64>>> = Arc::new(
        streams
            .iter()
            .map(|s| s.iter().copied().cycle().take(per_thread).collect())
            .collect(),
    );
    let c = cache.clone();
    let r = rate(&sliced, move |k, v| c.insert(k, v).unwrap());
    cache.flush();
    let s = cache.write_stats();
    println!(
        "\n## Coalescing: {writes} Zipf writes (s={ZIPF_S}, {KEYS} keys, {} threads, default settings)\n",
        threads()
    );
    println!(
        "| store calls | changes written | coalesced writes | writes per change | mean / max store call | insert rate |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} ({:.1}%) | {:.2} | {:.1?} / {:.1?} | {:.2} M/s |",
        table.calls.load(Relaxed),
        table.changes.load(Relaxed),
        s.coalesced,
        100.0 * s.coalesced as f64 / s.queued as f64,
        s.queued as f64 / table.changes.load(Relaxed) as f64,
        s.mean_flush_latency(),
        s.max_store_time,
        r / 1e6
    );
}

/// Fills a write-behind queue over `store` while its flusher waits at
/// `hold`, releases it and times the flush.
fn full_flush<K, S>(
    store: S,
    key: fn(u64) -> K,
    hold: impl FnOnce() -> Box<dyn FnOnce()>,
) -> (Duration, u64)
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    S: Store<K, K>,
{
    let cache: StoreCache<K, K, S> = Cache::builder()
        .max_capacity(KEYS)
        .store(store)
        .write_behind()
        .queue_capacity(QUEUE)
        .when_full(larder::WhenFull::Fail)
        .build()
        .unwrap();
    let release = hold();
    let mut k = 0;
    while cache.insert(key(k), key(k)).is_ok() {
        k += 1;
    }
    let queued = cache.write_stats().queue_len as u64;
    let started = Instant::now();
    release();
    cache.flush();
    let took = started.elapsed();
    assert_eq!(cache.write_stats().queue_len, 0);
    (took, queued)
}

fn flush_times() {
    println!("\n## flush() of a full queue ({QUEUE} entries, default batch of 128)\n");
    println!("| store | entries | flush time | entries/s |");
    println!("|---|---|---|---|");
    let table = Table::default();
    let closed = table.closed.clone();
    let (took, n) = full_flush(
        table,
        |k| k,
        move || {
            closed.store(true, Relaxed);
            Box::new(move || closed.store(false, Relaxed))
        },
    );
    println!(
        "| in-memory table | {n} | {took:.1?} | {:.0} |",
        n as f64 / took.as_secs_f64()
    );

    let db = TempDb::new("bench-flush");
    let store = Sqlite::open(&db.0).expect("temporary SQLite file");
    // SQLite has no door to hold: an exclusive transaction from a second
    // connection keeps the flusher's first write waiting.
    let path = db.0.clone();
    let (took, n) = full_flush(
        store,
        |k| k as i64,
        move || {
            let conn = rusqlite::Connection::open(&path).expect("second connection");
            conn.busy_timeout(Duration::from_secs(60)).ok();
            conn.execute_batch("BEGIN EXCLUSIVE")
                .expect("lock the database");
            Box::new(move || {
                conn.execute_batch("COMMIT").expect("unlock");
            })
        },
    );
    println!(
        "| SQLite (temp file, WAL) | {n} | {took:.1?} | {:.0} |",
        n as f64 / took.as_secs_f64()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is none.
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let per_thread: usize = std::env::var("LARDER_WB_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 400_000 } else { 10_000 });
    let streams: Arc<Vec<Vec<u64>>> = Arc::new(
        (0..threads())
            .map(|t| workload::zipf_stream(KEYS, ZIPF_S, per_thread, 42 + t as u64, 0))
            .collect(),
    );
    println!("# larder write-behind benchmark ({per_thread} writes per thread per round)");
    insert_rates(&streams);
    coalescing(&streams);
    flush_times();
}
