//! Criterion benchmarks of larder next to moka and quick_cache, on identical
//! workloads (same pre-generated key streams, fixed seeds, Zipf keys).
//!
//! Groups (each with one benchmark per cache, throughput in elements = ops):
//!
//! - `get_hit`: 100k entries present (capacity 200k, nothing evicted),
//!   batches of 1024 gets on Zipf(1.0) keys among them;
//! - `get_miss`: the same cache, batches of 1024 gets on keys never inserted;
//! - `insert`: capacity 100k, batches of 1024 inserts of Zipf(1.0) keys over
//!   1M (evictions all along);
//! - `mixed_zipf/1t`, `mixed_zipf/2t`: capacity 100k, Zipf(1.0) over 1M
//!   keys, 90% get (insert on miss) and 10% insert; `2t` runs two threads,
//!   each doing half of the ops from its own key stream, and times both;
//! - `expiry_churn`: larder and moka only (quick_cache has no expiry):
//!   time to live 1 ms on the real clock, half inserts and half gets, so
//!   entries expire all the time: the cost of expiry bookkeeping.
//!
//! Run all: `CARGO_TARGET_DIR=/work/target-benches cargo bench --bench larder`
//! (1–2 minutes). One group: `... --bench larder -- mixed_zipf/2t`.
//! Defaults: 20 samples, 1 s warm-up, 2 s measurement per benchmark; the
//! usual criterion flags (`--measurement-time`, `--sample-size`, ...) apply.

use std::{
    hint::black_box,
    thread,
    time::{Duration, Instant},
};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};

#[path = "support/caches.rs"]
#[allow(dead_code)]
mod caches;
#[path = "support/workload.rs"]
#[allow(dead_code)]
mod workload;

use caches::{BenchCache, mixed_op};
use workload::{INSERT_FLAG, mixed_stream, zipf_stream};

/// Operations per measured iteration.
const BATCH: usize = 1024;
/// Length of each pre-generated stream: a power of two and a multiple of
/// `BATCH`, long enough that the hot keys are not the only ones seen.
const STREAM: usize = 1 << 20;
/// Entries present for the `get_*` groups.
const PREFILLED: u64 = 100_000;
/// Capacity of the caches in the eviction-heavy groups.
const CAPACITY: u64 = 100_000;
/// Key space of the eviction-heavy groups.
const KEYSPACE: u64 = 1_000_000;

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    get_hit(&mut c);
    get_miss(&mut c);
    insert(&mut c);
    mixed_zipf(&mut c, 1);
    mixed_zipf(&mut c, 2);
    expiry_churn(&mut c);
    c.final_summary();
}

/// Runs `BATCH` ops of `stream` per iteration, each iteration resuming
/// where the previous one stopped.
fn bench_stream<C: BenchCache>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    cache: &C,
    stream: &[u64],
    op: impl Fn(&C, u64),
) {
    // Criterion calls the closure once per sample: the cursor lives outside
    // it so that every sample continues the stream instead of replaying its
    // (cache-friendly) beginning.
    let mut pos = 0;
    group.bench_function(C::NAME, |b| {
        b.iter(|| {
            for &key in &stream[pos..pos + BATCH] {
                op(cache, key);
            }
            pos = (pos + BATCH) % stream.len();
        });
    });
}

/// Runs `n` ops of `stream` from `*pos` (wrapping), leaving `*pos` after them.
fn run_ops<C: BenchCache>(
    cache: &C,
    stream: &[u64],
    pos: &mut usize,
    n: usize,
    op: impl Fn(&C, u64),
) {
    let mask = stream.len() - 1;
    for i in 0..n {
        op(cache, stream[(*pos + i) & mask]);
    }
    *pos = (*pos + n) & mask;
}

/// Two threads, each running `BATCH / 2` ops per iteration from its own
/// stream; the time is that of the whole run, thread start to last join.
fn bench_two_threads<C: BenchCache>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    cache: &C,
    streams: &[Vec<u64>; 2],
    op: impl Fn(&C, u64) + Copy + Send,
) {
    let mut pos = [0usize; 2];
    group.bench_function(C::NAME, |b| {
        b.iter_custom(|iters| {
            let per_thread = iters as usize * BATCH / 2;
            let start = Instant::now();
            thread::scope(|s| {
                for (stream, pos) in streams.iter().zip(pos.iter_mut()) {
                    s.spawn(move || run_ops(cache, stream, pos, per_thread, op));
                }
            });
            start.elapsed()
        });
    });
}

fn group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(BATCH as u64));
    group
}

/// Fills `cache` with keys `0..PREFILLED` and checks they all stayed.
fn prefilled<C: BenchCache>(cache: C) -> C {
    for key in 0..PREFILLED {
        cache.insert(key, key);
    }
    cache.sync();
    assert_eq!(cache.len(), PREFILLED, "{} evicted during prefill", C::NAME);
    cache
}

/// A get whose result is kept alive.
fn get_op<C: BenchCache>(cache: &C, key: u64) {
    black_box(cache.get(key));
}

fn insert_op<C: BenchCache>(cache: &C, key: u64) {
    cache.insert(key, key);
}

/// See [`mixed_op`].
fn mixed<C: BenchCache>(cache: &C, op: u64) {
    black_box(mixed_op(cache, op));
}

/// An insert (each entry then lives the cache's time to live) or a plain get.
fn churn_op<C: BenchCache>(cache: &C, op: u64) {
    if op & INSERT_FLAG != 0 {
        cache.insert(op & !INSERT_FLAG, op);
    } else {
        black_box(cache.get(op));
    }
}

fn get_hit(c: &mut Criterion) {
    let keys = zipf_stream(PREFILLED, 1.0, STREAM, 1, 0);
    let mut g = group(c, "get_hit");
    bench_stream(
        &mut g,
        &prefilled(caches::larder(2 * PREFILLED)),
        &keys,
        get_op,
    );
    bench_stream(
        &mut g,
        &prefilled(caches::moka(2 * PREFILLED)),
        &keys,
        get_op,
    );
    bench_stream(
        &mut g,
        &prefilled(caches::quick(2 * PREFILLED)),
        &keys,
        get_op,
    );
    g.finish();
}

fn get_miss(c: &mut Criterion) {
    // Zipf keys shifted past everything inserted.
    let keys = zipf_stream(PREFILLED, 1.0, STREAM, 2, 1 << 40);
    let mut g = group(c, "get_miss");
    bench_stream(
        &mut g,
        &prefilled(caches::larder(2 * PREFILLED)),
        &keys,
        get_op,
    );
    bench_stream(
        &mut g,
        &prefilled(caches::moka(2 * PREFILLED)),
        &keys,
        get_op,
    );
    bench_stream(
        &mut g,
        &prefilled(caches::quick(2 * PREFILLED)),
        &keys,
        get_op,
    );
    g.finish();
}

fn insert(c: &mut Criterion) {
    let keys = zipf_stream(KEYSPACE, 1.0, STREAM, 3, 0);
    let mut g = group(c, "insert");
    bench_stream(&mut g, &caches::larder(CAPACITY), &keys, insert_op);
    bench_stream(&mut g, &caches::moka(CAPACITY), &keys, insert_op);
    bench_stream(&mut g, &caches::quick(CAPACITY), &keys, insert_op);
    g.finish();
}

fn mixed_zipf(c: &mut Criterion, threads: usize) {
    let mut g = group(c, &format!("mixed_zipf/{threads}t"));
    if threads == 1 {
        let ops = mixed_stream(KEYSPACE, 1.0, STREAM, 4, 0.1);
        bench_stream(&mut g, &caches::larder(CAPACITY), &ops, mixed);
        bench_stream(&mut g, &caches::moka(CAPACITY), &ops, mixed);
        bench_stream(&mut g, &caches::quick(CAPACITY), &ops, mixed);
    } else {
        let streams = [
            mixed_stream(KEYSPACE, 1.0, STREAM, 5, 0.1),
            mixed_stream(KEYSPACE, 1.0, STREAM, 6, 0.1),
        ];
        bench_two_threads(&mut g, &caches::larder(CAPACITY), &streams, mixed);
        bench_two_threads(&mut g, &caches::moka(CAPACITY), &streams, mixed);
        bench_two_threads(&mut g, &caches::quick(CAPACITY), &streams, mixed);
    }
    g.finish();
}

fn expiry_churn(c: &mut Criterion) {
    // Half inserts (each entry lives 1 ms), half plain gets.
    let ops = mixed_stream(KEYSPACE, 1.0, STREAM, 7, 0.5);
    let ttl = Duration::from_millis(1);
    let mut g = group(c, "expiry_churn");
    bench_stream(&mut g, &caches::larder_ttl(CAPACITY, ttl), &ops, churn_op);
    bench_stream(&mut g, &caches::moka_ttl(CAPACITY, ttl), &ops, churn_op);
    g.finish();
}
