//! The write policies against a real embedded database (SQLite through
//! rusqlite): after `close()`, the table holds exactly the last
//! acknowledged value of every key, written from several threads; reads
//! load what the table holds.

#[path = "support/sqlite.rs"]
mod sqlite;
#[path = "support/threads.rs"]
mod threads;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use larder::{Cache, StoreCache};
use sqlite::{Sqlite, TempDb};
use threads::parallel;

const THREADS: usize = 4;
const KEYS_PER_THREAD: i64 = 200;
const WRITES_PER_THREAD: usize = 5_000;

/// Each thread owns keys `t, t + THREADS, …` and puts or deletes them at
/// random; returns the last acknowledged state of each (value or deleted).
fn hammer(cache: &StoreCache<i64, i64, Sqlite>) -> BTreeMap<i64, Option<i64>> {
    let results = parallel(Duration::from_secs(120), "writers", THREADS, {
        let cache = cache.clone();
        move |t| {
            let mut last = BTreeMap::new();
            let mut x = t as u64 * 7 + 3;
            for i in 0..WRITES_PER_THREAD {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let key = ((x >> 33) as i64 % KEYS_PER_THREAD) * THREADS as i64 + t as i64;
                if (x >> 20) % 10 == 0 {
                    cache.remove(&key).expect("the table takes deletes");
                    last.insert(key, None);
                } else {
                    let value = (t * WRITES_PER_THREAD + i) as i64;
                    cache.insert(key, value).expect("the table takes puts");
                    last.insert(key, Some(value));
                }
                if i % 500 == 0 {
                    // Read back a key of this thread: always its last write.
                    let (&k, &v) = last.iter().next().expect("written");
                    assert_eq!(cache.get(&k).expect("the table answers"), v);
                }
            }
            last
        }
    });
    results.into_iter().flatten().collect()
}

fn expected_rows(last: &BTreeMap<i64, Option<i64>>) -> Vec<(i64, i64)> {
    last.iter().filter_map(|(&k, &v)| Some((k, v?))).collect()
}

#[test]
fn write_behind_leaves_the_table_with_the_last_acknowledged_values() {
    let db = TempDb::new("behind");
    let cache = Cache::builder()
        .max_capacity(100) // far fewer than the keys: pinning is exercised
        .store(Sqlite::open(&db.0).unwrap())
        .write_behind()
        .batch_size(64)
        .flush_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    let last = hammer(&cache);
    let started = Instant::now();
    let report = cache.close(Duration::from_secs(60));
    assert!(report.is_empty(), "nothing left unwritten: {report:?}");
    let stats = cache.write_stats();
    assert_eq!(stats.queued, (THREADS * WRITES_PER_THREAD) as u64);
    assert_eq!(stats.flushed + stats.coalesced, stats.queued);
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(Sqlite::dump(&db.0).unwrap(), expected_rows(&last));
    eprintln!(
        "write-behind to SQLite: {} writes, {} store calls, close took {:?}",
        stats.queued,
        stats.store_calls,
        started.elapsed()
    );
    // Reads after close still load from the table.
    for (&k, &v) in last.iter().take(50) {
        assert_eq!(cache.get(&k).unwrap(), v);
    }
}

#[test]
fn write_through_and_write_around_keep_the_table_and_the_cache_in_step() {
    for around in [false, true] {
        let db = TempDb::new(if around { "around" } else { "through" });
        let builder = Cache::builder()
            .max_capacity(10_000)
            .store(Sqlite::open(&db.0).unwrap());
        let cache = if around {
            builder.write_around().build().unwrap()
        } else {
            builder.build().unwrap()
        };
        let last = hammer(&cache);
        assert!(cache.close(Duration::from_secs(1)).is_empty());
        assert_eq!(Sqlite::dump(&db.0).unwrap(), expected_rows(&last));
        for (&k, &v) in &last {
            assert_eq!(cache.get(&k).unwrap(), v, "key {k}");
        }
    }
}

#[test]
fn reads_load_rows_written_behind_the_cache_s_back() {
    let db = TempDb::new("reads");
    let setup = Sqlite::open(&db.0).unwrap();
    larder::Store::write(
        &setup,
        &[(1, larder::Change::Put(10)), (2, larder::Change::Put(20))],
    )
    .unwrap();
    let cache = Cache::builder()
        .store(Sqlite::open(&db.0).unwrap())
        .write_behind()
        .build()
        .unwrap();
    assert_eq!(cache.get(&1).unwrap(), Some(10));
    assert_eq!(cache.get_many([1, 2, 3]).unwrap().len(), 2);
    cache.insert(3, 30).unwrap();
    cache.flush();
    assert_eq!(
        Sqlite::dump(&db.0).unwrap(),
        vec![(1, 10), (2, 20), (3, 30)]
    );
}
