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
//! Run: `cargo run --release --example tour` (about 7 s: two phases of
//! 3 s). An optional argument sets the seconds per phase:
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

use larder::{Cache, RemovalCause};

// The benchmarks' Zipf sampler, PRNG and latency histogram.
#[path = "../benches/support/histogram.rs"]
#[allow(dead_code)]
mod histogram;
#[path = "../benches/support/workload.rs"]
#[allow(dead_code)]
mod workload;

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

/// What one phase did.
struct Phase {
    requests: u64,
    elapsed: Duration,
    latency: Histogram,
    lookups: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `serve` on `WORKERS` threads for `time`, each thread asking for
/// users drawn from `popularity` with its own fixed seed.
fn run(time: Duration, popularity: &Zipf, serve: impl Fn(u64) + Sync) -> Phase {
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

    let cached = run(time, &popularity, |user| {
        let profile = cache.get_with(user, || slow_lookup(user));
        debug_assert_eq!(profile.id, user);
    });
    let stats = cache.stats();
    let entries = cache.entry_count();
    let uncached = run(time, &popularity, |user| {
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
}
