//! One face for the three caches under comparison, so that every workload
//! runs the same code on each (monomorphized: no dynamic dispatch in the
//! measured loops). Keys and values are `u64`; each cache uses its own
//! default hasher and shard count.

use std::time::Duration;

use crate::workload::INSERT_FLAG;

/// What the benchmarks need from a cache.
pub(crate) trait BenchCache: Send + Sync {
    /// Name used in benchmark ids and table columns.
    const NAME: &'static str;

    fn get(&self, key: u64) -> Option<u64>;

    fn insert(&self, key: u64, value: u64);

    /// Lets the cache catch up on work it defers (moka applies reads and
    /// writes to its policy in batches); a no-op for the others.
    fn sync(&self) {}

    /// Entries held (after [`sync`](Self::sync) for moka).
    fn len(&self) -> u64;
}

impl BenchCache for larder::Cache<u64, u64> {
    const NAME: &'static str = "larder";

    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        larder::Cache::get(self, &key)
    }

    #[inline]
    fn insert(&self, key: u64, value: u64) {
        larder::Cache::insert(self, key, value);
    }

    fn len(&self) -> u64 {
        self.entry_count()
    }
}

impl BenchCache for moka::sync::Cache<u64, u64> {
    const NAME: &'static str = "moka";

    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        moka::sync::Cache::get(self, &key)
    }

    #[inline]
    fn insert(&self, key: u64, value: u64) {
        moka::sync::Cache::insert(self, key, value);
    }

    fn sync(&self) {
        self.run_pending_tasks();
    }

    fn len(&self) -> u64 {
        self.entry_count()
    }
}

impl BenchCache for quick_cache::sync::Cache<u64, u64> {
    const NAME: &'static str = "quick_cache";

    #[inline]
    fn get(&self, key: u64) -> Option<u64> {
        quick_cache::sync::Cache::get(self, &key)
    }

    #[inline]
    fn insert(&self, key: u64, value: u64) {
        quick_cache::sync::Cache::insert(self, key, value);
    }

    fn len(&self) -> u64 {
        quick_cache::sync::Cache::len(self) as u64
    }
}

/// larder with default settings bounded to `capacity` entries.
pub(crate) fn larder(capacity: u64) -> larder::Cache<u64, u64> {
    larder::Cache::new(capacity)
}

/// larder bounded to `capacity` entries, every entry living `ttl`.
pub(crate) fn larder_ttl(capacity: u64, ttl: Duration) -> larder::Cache<u64, u64> {
    larder::Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl)
        .build()
        .expect("valid settings")
}

/// moka with default settings bounded to `capacity` entries.
pub(crate) fn moka(capacity: u64) -> moka::sync::Cache<u64, u64> {
    moka::sync::Cache::new(capacity)
}

/// moka bounded to `capacity` entries, every entry living `ttl`.
pub(crate) fn moka_ttl(capacity: u64, ttl: Duration) -> moka::sync::Cache<u64, u64> {
    moka::sync::Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl)
        .build()
}

/// quick_cache with default settings bounded to `capacity` entries.
pub(crate) fn quick(capacity: u64) -> quick_cache::sync::Cache<u64, u64> {
    quick_cache::sync::Cache::new(capacity as usize)
}

/// One operation of a [`mixed_stream`](crate::workload::mixed_stream):
/// an insert when the op carries [`INSERT_FLAG`], otherwise a get followed
/// by an insert on a miss (cache-aside). Returns whether a get hit.
#[inline]
pub(crate) fn mixed_op<C: BenchCache>(cache: &C, op: u64) -> bool {
    if op & INSERT_FLAG != 0 {
        let key = op & !INSERT_FLAG;
        cache.insert(key, key);
        false
    } else if cache.get(op).is_some() {
        true
    } else {
        cache.insert(op, op);
        false
    }
}

/// Replays `keys` (get; insert on a miss) and returns the hit ratio in
/// percent. Moka's pending work is run every 64 requests so that its policy
/// sees the accesses, as its own simulator does.
pub(crate) fn replay<C: BenchCache>(cache: &C, keys: &[u64]) -> f64 {
    replay_syncing(cache, keys, 64)
}

/// [`replay`] with the cache's pending work run every `every` requests.
/// Between two runs moka holds the keys inserted meanwhile beyond its
/// capacity (up to `every` more entries), so `every = 1` holds it to its
/// capacity, as larder and quick_cache always are.
pub(crate) fn replay_syncing<C: BenchCache>(cache: &C, keys: &[u64], every: usize) -> f64 {
    replay_sized(cache, keys, every, u64::MAX).ratio
}

/// A replay's hit ratio, and how many entries the cache held meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replayed {
    /// Percent of requests that hit.
    pub(crate) ratio: f64,
    /// Mean entries held per request once the cache was first full
    /// (`NaN` if it never filled).
    pub(crate) mean_held_full: f64,
}

/// [`replay_syncing`], also measuring the entries the cache holds after
/// each request once it has first reached `capacity`: what it held at its
/// last sync (exact for moka then) plus the keys inserted since, each a
/// miss and so a key it did not hold.
pub(crate) fn replay_sized<C: BenchCache>(
    cache: &C,
    keys: &[u64],
    every: usize,
    capacity: u64,
) -> Replayed {
    let (mut hits, mut synced, mut since) = (0u64, 0u64, 0u64);
    let (mut held_sum, mut full_requests) = (0u64, 0u64);
    for (i, &key) in keys.iter().enumerate() {
        if cache.get(key).is_some() {
            hits += 1;
        } else {
            cache.insert(key, key);
            since += 1;
        }
        if i % every == every - 1 {
            cache.sync();
            synced = cache.len();
            since = 0;
        }
        if full_requests > 0 || synced + since >= capacity {
            held_sum += synced + since;
            full_requests += 1;
        }
    }
    Replayed {
        ratio: 100.0 * hits as f64 / keys.len().max(1) as f64,
        mean_held_full: held_sum as f64 / full_requests as f64,
    }
}
