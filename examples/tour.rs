//! The tour: what larder is for, in one run.
//!
//! A read-heavy service looks up user profiles in a slow backing store
//! (about 100 µs a lookup, simulated by sleeping). Four worker threads serve
//! requests for users drawn from 1M by popularity (Zipf, s = 1.0), each with
//! `cache.get_with(user_id, || slow_lookup(user_id))` on a cache in its
//! default configuration plus a capacity and a time to live. Then the same
//! threads serve the same kind of requests for the same time without the
//! cache, calling the backing store every time. The report compares the
//! two: throughput, latency percentiles, backing-store calls, and the
//! cache's own counters (hit ratio, loads, evictions by cause).
//!
//! The second part keeps a few hot keys warm. Ten "trending" entries, each
//! an expensive query (about 2 ms) that goes stale every 250 ms, are read by
//! the same four threads, three ways: `get_with` (single-flight, so one
//! reader per expiry waits for the query while the others wait on it), a
//! `LoadingCache` with stale-while-revalidate (readers get the stale value at
//! once while one background reload runs), and one with early expiry (XFetch:
//! a reload starts shortly before expiry, so the value never goes stale).
//! The report shows the read latency tail and the query count of each.
//!
//! The third part keeps a database in step: an embedded SQLite table of
//! 50,000 products' stock counts (in a temporary file, deleted at the end)
//! is read cache-aside and then updated write-through and write-behind,
//! 100,000 operations each, with the time per operation, the database calls
//! and, for write-behind, the flush, and a check that the table ends with
//! every last write.
//!
//! Run: `cargo run --release --example tour` (about 13 s: two phases of
//! 3 s, then three of 1.5 s, then the database part). An optional argument sets the seconds per
//! phase of the first part (the second part runs half as long):
//! `cargo run --release --example tour -- 5`.

use std::{
    fmt::Display,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use larder::{Cache, RemovalCause, Store};

// The benchmarks' Zipf sampler, PRNG and latency histogram.
#[path = "../benches/support/histogram.rs"]
#[allow(dead_code)]
mod histogram;
#[path = "../benches/support/workload.rs"]
#[allow(dead_code)]
mod workload;
// The SQLite store of the write-strategy tests.
#[path = "../tests/support/sqlite.rs"]
mod sqlite;

use histogram::{Histogram, fmt_nanos};
use workload::{XorShift, Zipf};

const USERS: u64 = 1_000_000;
const WORKERS: u64 = 4;
/// How long the backing store takes to answer (a sleep: the thread waits on
/// "the network" without using a CPU).
const LOOKUP_TIME: Duration = Duration::from_micros(100);
/// Profiles kept: 2% of the users.
const CAPACITY: u64 = 20_000;
/// How stale a profile may get. Short, so that expiry shows up within the
/// seconds of this run; a real service would pick minutes.
const TIME_TO_LIVE: Duration = Duration::from_secs(1);

/// What the service caches: a user's profile, shared (cheap to clone).
#[derive(Debug)]
#[allow(dead_code)] // the fields are only ever printed
struct Profile {
    id: u64,
    name: String,
    plan: &'static str,
}

/// Calls made to the backing store, cached or not.
static LOOKUPS: AtomicU64 = AtomicU64::new(0);

/// The deliberately slow backing store.
fn slow_lookup(id: u64) -> Arc<Profile> {
    LOOKUPS.fetch_add(1, Relaxed);
    thread::sleep(LOOKUP_TIME);
    let plan = if id % 10 == 0 { "pro" } else { "free" };
    Arc::new(Profile {
        id,
        name: format!("user-{id}"),
        plan,
    })
}

/// Hot keys: how many, how long their query takes, how long a result stays
/// fresh.
const HOT_KEYS: u64 = 10;
const QUERY_TIME: Duration = Duration::from_millis(2);
const HOT_TTL: Duration = Duration::from_millis(250);
/// Each reader's rest between two reads of a hot key: the rest of its
/// request's work. Without it four spinning readers on a small machine
/// measure the scheduler's time slices rather than the cache.
const READ_PAUSE: Duration = Duration::from_micros(20);

/// The expensive query behind a hot key (counted in `LOOKUPS` too).
fn slow_query(id: u64) -> Result<Option<Arc<Profile>>, String> {
    LOOKUPS.fetch_add(1, Relaxed);
    thread::sleep(QUERY_TIME);
    Ok(Some(Arc::new(Profile {
        id,
        name: format!("trending-{id}"),
        plan: "aggregate",
    })))
}

/// What one phase did.
struct Phase {
    requests: u64,
    elapsed: Duration,
    latency: Histogram,
    /// Backend queries made by the phase's requests.
    lookups: u64,
    /// `LOOKUPS` when the phase began.
    lookups_from: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Waits for the background reloads the phase's reads started
    /// (`finish`, e.g. `run_pending_tasks`) and counts their queries too,
    /// so none is charged to the next phase.
    fn settled(mut self, finish: impl FnOnce()) -> Phase {
        finish();
        self.lookups = LOOKUPS.load(Relaxed) - self.lookups_from;
        self
    }
}

/// Runs `serve` on `WORKERS` threads for `time`, each thread asking for
/// users drawn from `popularity` with its own fixed seed, and resting
/// `pause` between requests (time not measured).
fn run(time: Duration, pause: Duration, popularity: &Zipf, serve: impl Fn(u64) + Sync) -> Phase {
    let lookups_before = LOOKUPS.load(Relaxed);
    let start = Instant::now();
    let deadline = start + time;
    let latency = thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let serve = &serve;
                s.spawn(move || {
                    let mut rng = XorShift::new(100 + w);
                    let mut latency = Histogram::default();
                    loop {
                        let user = popularity.sample(&mut rng);
                        let began = Instant::now();
                        serve(user);
                        let ended = Instant::now();
                        latency.record((ended - began).as_nanos() as u64);
                        if ended >= deadline {
                            return latency;
                        }
                        if !pause.is_zero() {
                            thread::sleep(pause);
                        }
                    }
                })
            })
            .collect();
        let mut all = Histogram::default();
        for worker in workers {
            all.merge(&worker.join().expect("worker panicked"));
        }
        all
    });
    Phase {
        requests: latency.count(),
        elapsed: start.elapsed(),
        latency,
        lookups: LOOKUPS.load(Relaxed) - lookups_before,
        lookups_from: lookups_before,
    }
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn line(label: &str, cached: impl Display, uncached: impl Display) {
    println!("  {label:<24}{cached:>18}{uncached:>18}");
}

fn main() {
    let seconds = std::env::args().nth(1).map_or(3.0, |s| {
        s.parse::<f64>().expect("seconds per phase, e.g. 3")
    });
    let time = Duration::from_secs_f64(seconds);
    let popularity = Zipf::new(USERS, 1.0);

    let cache: Cache<u64, Arc<Profile>> = Cache::builder()
        .max_capacity(CAPACITY)
        .time_to_live(TIME_TO_LIVE)
        .build()
        .expect("valid settings");

    println!("larder tour: a read-heavy service in front of a slow backing store\n");
    println!(
        "  {} users, Zipf(1.0) popularity; {WORKERS} worker threads; backing store ~{} per lookup",
        grouped(USERS),
        fmt_nanos(LOOKUP_TIME.as_nanos() as u64)
    );
    println!(
        "  cache: Cache::builder().max_capacity({}).time_to_live({:?}), everything else default",
        grouped(CAPACITY),
        TIME_TO_LIVE
    );
    println!("  each phase runs {seconds} s, starting cold\n");

    let cached = run(time, Duration::ZERO, &popularity, |user| {
        let profile = cache.get_with(user, || slow_lookup(user));
        debug_assert_eq!(profile.id, user);
    });
    let stats = cache.stats();
    let entries = cache.entry_count();
    let uncached = run(time, Duration::ZERO, &popularity, |user| {
        let profile = slow_lookup(user);
        debug_assert_eq!(profile.id, user);
    });

    line("", "with larder", "without cache");
    line(
        "requests",
        grouped(cached.requests),
        grouped(uncached.requests),
    );
    line(
        "throughput (req/s)",
        grouped(cached.rate() as u64),
        grouped(uncached.rate() as u64),
    );
    for (label, q) in [
        ("latency p50", 0.5),
        ("latency p99", 0.99),
        ("latency p99.9", 0.999),
    ] {
        line(
            label,
            fmt_nanos(cached.latency.quantile(q)),
            fmt_nanos(uncached.latency.quantile(q)),
        );
    }
    line(
        "backing-store calls",
        grouped(cached.lookups),
        grouped(uncached.lookups),
    );
    line(
        "hit ratio",
        format!("{:.1}%", 100.0 * stats.hit_rate()),
        "-",
    );

    println!("\n  cache.stats():");
    println!(
        "    hits {}, misses {}, loader calls {} (average {} each)",
        grouped(stats.hits()),
        grouped(stats.misses()),
        grouped(stats.loads()),
        fmt_nanos(stats.average_load_time().as_nanos() as u64)
    );
    println!(
        "    evictions: {} for size, {} expired; {} entries held at the end",
        grouped(stats.removals(RemovalCause::Size)),
        grouped(stats.removals(RemovalCause::Expired)),
        grouped(entries)
    );
    if let Some(profile) = cache.get(&0) {
        println!("    most popular user: {profile:?}");
    }

    println!(
        "\n  With the cache: {:.1}x the throughput, {:.0}% fewer calls per request to the backing store.",
        cached.rate() / uncached.rate(),
        100.0 * (1.0 - (cached.lookups as f64 / cached.requests as f64))
    );

    hot_keys(time / 2);
    database();
}

const PRODUCTS: u64 = 50_000;
const DB_OPS: usize = 100_000;

/// The third part: a SQLite table read cache-aside, written through and
/// written behind.
fn database() {
    use sqlite::{Sqlite, TempDb};

    let db = TempDb::new("tour");
    let store = Sqlite::open(&db.0).expect("a SQLite file in the temporary directory");
    let rows: Vec<(i64, larder::Change<i64>)> = (0..PRODUCTS as i64)
        .map(|id| (id, larder::Change::Put(100)))
        .collect();
    store.write(&rows).expect("seed the table");
    println!(
        "\n\nKeeping a database in step: SQLite table of {} products' stock in {}",
        grouped(PRODUCTS),
        db.0.display()
    );
    let popularity = Zipf::new(PRODUCTS, 1.0);
    let mut rng = XorShift::new(7);
    let ids: Vec<i64> = (0..DB_OPS)
        .map(|_| popularity.sample(&mut rng) as i64)
        .collect();
    println!(
        "\n  {:<16}{:>12}{:>12}{:>14}{:>40}",
        "", "operations", "time", "per op", "database calls"
    );
    let report = |label: &str, took: Duration, calls: String| {
        println!(
            "  {label:<16}{:>12}{:>12}{:>14}{calls:>40}",
            grouped(DB_OPS as u64),
            format!("{:.0?}", took),
            fmt_nanos((took.as_nanos() / DB_OPS as u128) as u64)
        );
    };

    // Cache-aside: the application reads the cache, and on a miss the table
    // (then fills the cache).
    let aside: Cache<i64, i64> = Cache::new(10_000);
    let mut db_reads = 0;
    let started = Instant::now();
    for &id in &ids {
        if aside.get(&id).is_none() {
            db_reads += 1;
            let stock = store.load(&id).expect("SELECT").expect("seeded");
            aside.insert(id, stock);
        }
    }
    report(
        "cache-aside read",
        started.elapsed(),
        format!(
            "{} SELECTs (hit ratio {:.1}%)",
            grouped(db_reads),
            aside.stats().hit_rate() * 100.0
        ),
    );

    // Write-through: each update is a transaction, then the cache.
    let through_store = Sqlite::open(&db.0).expect("second connection");
    let transactions = through_store.write_calls.clone();
    let through = Cache::builder()
        .max_capacity(10_000)
        .store(through_store)
        .build()
        .expect("valid settings");
    let started = Instant::now();
    for (i, &id) in ids.iter().enumerate() {
        through.insert(id, i as i64).expect("UPDATE");
    }
    report(
        "write-through",
        started.elapsed(),
        format!("{} transactions", grouped(transactions.load(Relaxed))),
    );

    // Write-behind: updates land in the cache; the flusher writes batches.
    let behind = Cache::builder()
        .max_capacity(10_000)
        .store(Sqlite::open(&db.0).expect("third connection"))
        .write_behind()
        .build()
        .expect("valid settings");
    let started = Instant::now();
    let mut last = std::collections::HashMap::new();
    for (i, &id) in ids.iter().enumerate() {
        let stock = (DB_OPS + i) as i64;
        behind.insert(id, stock).expect("queued");
        last.insert(id, stock);
    }
    let writes = started.elapsed();
    let flushing = Instant::now();
    behind.flush();
    let flushed = flushing.elapsed();
    let s = behind.write_stats();
    report(
        "write-behind",
        writes,
        format!(
            "{} transactions, {} rows",
            grouped(s.store_calls),
            grouped(s.flushed)
        ),
    );
    println!(
        "\n  write-behind: {} of {} writes coalesced (a later write of the key replaced them); \
         flush() of the rest took {flushed:.1?}; mean transaction {:.1?}",
        grouped(s.coalesced),
        grouped(s.queued),
        s.mean_flush_latency()
    );
    let report = behind.close(Duration::from_secs(10));
    let table: std::collections::HashMap<i64, i64> = Sqlite::dump(&db.0)
        .expect("read the table")
        .into_iter()
        .collect();
    let matching = last
        .iter()
        .filter(|(id, stock)| table.get(id) == Some(stock))
        .count();
    println!(
        "  after close(): {} unwritten, {} dead letters; the table holds the last write of {} of {} updated products",
        report.unwritten.len(),
        report.dead_letters.len(),
        grouped(matching as u64),
        grouped(last.len() as u64)
    );
    assert_eq!(matching, last.len(), "write-behind lost a write");
}

/// The second part: keeping hot keys warm through their expiry.
fn hot_keys(time: Duration) {
    println!(
        "\n\nKeeping hot keys warm: {HOT_KEYS} keys, a {} query, fresh for {:?}; {WORKERS} threads read them, resting {:?} between reads",
        fmt_nanos(QUERY_TIME.as_nanos() as u64),
        HOT_TTL,
        READ_PAUSE
    );
    let popularity = Zipf::new(HOT_KEYS, 1.0);
    // Each key's time-to-live periods in a phase, all keys together: the
    // queries each mode would make if it loaded every key once per TTL.
    let ttl_periods = (time.as_secs_f64() / HOT_TTL.as_secs_f64()) * HOT_KEYS as f64;

    let single_flight: Cache<u64, Arc<Profile>> = Cache::builder()
        .time_to_live(HOT_TTL)
        .build()
        .expect("valid settings");
    let plain = run(time, READ_PAUSE, &popularity, |id| {
        let value = single_flight.get_with(id, || slow_query(id).unwrap().unwrap());
        debug_assert_eq!(value.id, id);
    });

    type Builder = larder::LoadingCacheBuilder<u64, Arc<Profile>, String>;
    let loading = |configure: &dyn Fn(Builder) -> Builder| {
        let builder = Cache::builder()
            .time_to_live(HOT_TTL)
            .loader(|id: &u64| slow_query(*id));
        configure(builder).build().expect("valid settings")
    };
    let swr = loading(&|b| b.stale_while_revalidate(HOT_TTL));
    let revalidated = run(time, READ_PAUSE, &popularity, |id| {
        let value = swr.get(&id).unwrap().unwrap();
        debug_assert_eq!(value.id, id);
    })
    .settled(|| swr.run_pending_tasks());
    let early = loading(&|b| b.early_expiry(1.0));
    let xfetch = run(time, READ_PAUSE, &popularity, |id| {
        let value = early.get(&id).unwrap().unwrap();
        debug_assert_eq!(value.id, id);
    })
    .settled(|| early.run_pending_tasks());

    println!(
        "\n  {:<28}{:>10}{:>10}{:>10}{:>10}{:>18}{:>16}",
        "", "p50", "p99", "p99.9", "max", "reads >= 1 ms", "queries/TTL"
    );
    for (label, phase) in [
        ("get_with (single-flight)", &plain),
        ("stale-while-revalidate", &revalidated),
        ("early expiry (XFetch β=1)", &xfetch),
    ] {
        println!(
            "  {label:<28}{:>10}{:>10}{:>10}{:>10}{:>18}{:>16.2}",
            fmt_nanos(phase.latency.quantile(0.5)),
            fmt_nanos(phase.latency.quantile(0.99)),
            fmt_nanos(phase.latency.quantile(0.999)),
            fmt_nanos(phase.latency.quantile(1.0)),
            grouped(phase.latency.count_at_least(1_000_000)),
            phase.lookups as f64 / ttl_periods
        );
    }
    let (s, e) = (swr.stats(), early.stats());
    println!(
        "\n  stale-while-revalidate: {} stale hits, {} background reloads; early expiry: {} background reloads",
        grouped(s.stale_hits()),
        grouped(s.refreshes()),
        grouped(e.refreshes()),
    );
    println!(
        "  queries/TTL: the queries a phase made (its background reloads included), per key and TTL period.\n  \
         get_with makes readers wait for the query at every expiry; the other two reload in the background,\n  \
         so only the first loads (and the machine's own scheduling stalls) reach the tail."
    );
}
