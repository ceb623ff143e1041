//! [`StoreCacheBuilder`]: a [`CacheBuilder`] given a [`Store`], with the
//! write policy and the write-behind settings.

use std::{
    fmt,
    hash::Hash,
    sync::{Arc, OnceLock},
    time::Duration,
};

use super::{
    DeadLetter, Store,
    behind::{Config, Handler, Queue},
    buffer::Backoff,
    store_cache::{Mode, ReadThrough, StoreCache},
};
use crate::{BuildError, CacheBuilder, LoadingCacheBuilder};

/// What a write-behind cache does with a write when its queue is full.
///
/// The queue counts entries (keys waiting or in flight). A write of a key
/// the queue already holds is always accepted — it replaces the waiting
/// change, or waits behind the one in flight — so the queue never holds more
/// than `queue_capacity + batch_size` entries.
///
/// # Examples
///
/// [`StoreCacheBuilder::when_full`] shows each in a cache; the default
/// blocks:
///
/// ```
/// use larder::WhenFull;
/// assert_eq!(WhenFull::default(), WhenFull::Block);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until the flusher makes room (it is asked to flush at once).
    /// The default: no write is refused, and writers slow to the store's
    /// pace.
    #[default]
    Block,
    /// Return [`WriteError::QueueFull`](crate::WriteError::QueueFull) at
    /// once; nothing is written or cached.
    Fail,
    /// Write this change to the store on the caller's thread, as
    /// write-through does.
    WriteThrough,
}

/// Default number of changes per store call.
const DEFAULT_BATCH_SIZE: usize = 128;
/// Default longest wait of a queued change before it is sent.
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Default queue capacity, in entries.
const DEFAULT_QUEUE_CAPACITY: usize = 65_536;
/// Default number of sends of a change before it is dead-lettered.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default retry backoff.
const DEFAULT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(50),
    max: Duration::from_secs(5),
    jitter: 0.2,
};
/// Default bound on the flush a drop without `close` does.
const DEFAULT_DROP_TIMEOUT: Duration = Duration::from_secs(2);

impl<K, V> CacheBuilder<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Turns this builder into one for a [`StoreCache`] in front of `store`,
    /// the system of record: a read that misses loads from it (read-through,
    /// one load per key at a time), and writes go to it write-through (the
    /// default), [write-around](StoreCacheBuilder::write_around) or
    /// [write-behind](StoreCacheBuilder::write_behind).
    ///
    /// Every setting made so far carries over, as for
    /// [`loader`](Self::loader): `expire_after` is refused, and
    /// `time_to_live` is how long a loaded or written value stays fresh. So
    /// the cache's own settings come before `store`: the builder it returns
    /// offers only the store's and the loading settings.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::Mutex};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default)] struct Table(Mutex<HashMap<u32, u32>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use std::time::Duration;
    /// let cache = Cache::builder()
    ///     .max_capacity(10_000)
    ///     .time_to_live(Duration::from_secs(300))
    ///     .store(Table::default())
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 100).unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), Some(100));
    /// ```
    pub fn store<S: Store<K, V>>(self, store: S) -> StoreCacheBuilder<K, V, S> {
        let store = Arc::new(store);
        let queue = Arc::new(OnceLock::new());
        let reads = self.loader(ReadThrough::new(store.clone(), queue.clone()));
        StoreCacheBuilder {
            reads,
            store,
            queue,
            mode: Mode::Through,
            batch_size: None,
            flush_interval: None,
            queue_capacity: None,
            when_full: None,
            max_attempts: None,
            backoff: None,
            drop_timeout: None,
            handler: None,
        }
    }
}

/// Settings of a [`StoreCache`], from [`CacheBuilder::store`]: the write
/// policy, the write-behind queue and flusher, and the read settings of a
/// [`LoadingCacheBuilder`] (refresh, stale-while-revalidate, …) through
/// [`reads`](Self::reads).
///
/// The write-behind settings (`batch_size` to `drop_flush_timeout`) are
/// refused by [`build`](Self::build) unless
/// [`write_behind`](Self::write_behind) is chosen.
///
/// # Examples
///
/// ```
/// # use std::{collections::HashMap, sync::Mutex};
/// # use larder::{Cache, Change, Store};
/// # #[derive(Default)] struct Table(Mutex<HashMap<u32, u32>>);
/// # impl Store<u32, u32> for Table {
/// #     type Error = String;
/// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
/// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
/// #         let mut t = self.0.lock().unwrap();
/// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
/// #         Ok(())
/// #     }
/// # }
/// // `Table`: an in-memory `Store` (a `Mutex<HashMap>`), written out in the `StoreCache` example.
/// use std::time::Duration;
/// use larder::WhenFull;
///
/// let cache = Cache::builder()
///     .max_capacity(100_000)
///     .store(Table::default())
///     .write_behind()
///     .batch_size(256)                               // changes per store call
///     .flush_interval(Duration::from_millis(50))     // longest wait of a queued change
///     .queue_capacity(100_000)                       // entries waiting or in flight
///     .when_full(WhenFull::Block)                    // or Fail, or WriteThrough
///     .max_attempts(8)                               // sends before dead-lettering
///     .retry_backoff(Duration::from_millis(20), Duration::from_secs(2), 0.2)
///     .dead_letter(|dead| eprintln!("lost key {}: {}", dead.key, dead.error))
///     .drop_flush_timeout(Duration::from_secs(1))
///     .build()
///     .unwrap();
/// cache.insert(1, 10).unwrap();
/// cache.close(Duration::from_secs(5));
/// ```
#[must_use]
pub struct StoreCacheBuilder<K, V, S: Store<K, V>> {
    reads: LoadingCacheBuilder<K, V, S::Error>,
    store: Arc<S>,
    queue: Arc<OnceLock<Arc<Queue<K, V, S>>>>,
    mode: Mode,
    batch_size: Option<usize>,
    flush_interval: Option<Duration>,
    queue_capacity: Option<usize>,
    when_full: Option<WhenFull>,
    max_attempts: Option<u32>,
    backoff: Option<Backoff>,
    drop_timeout: Option<Duration>,
    handler: Option<Handler<K, V, S::Error>>,
}

impl<K, V, S: Store<K, V>> fmt::Debug for StoreCacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCacheBuilder")
            .field("reads", &self.reads)
            .field("mode", &self.mode)
            .field("batch_size", &self.batch_size)
            .field("flush_interval", &self.flush_interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("when_full", &self.when_full)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.backoff)
            .field("drop_flush_timeout", &self.drop_timeout)
            .field("dead_letter", &self.handler.is_some())
            .finish_non_exhaustive()
    }
}

impl<K, V, S> StoreCacheBuilder<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    /// Write-through (the default): a write goes to the store first, then
    /// to the cache. If the store fails, the caller gets the error and the
    /// cache keeps no trace of the value. For data read soon after it is
    /// written.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::{Arc, Mutex}};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default, Clone)] struct Table(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a shared `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// let table = Table::default();
    /// let cache = Cache::builder().store(table.clone()).write_through().build().unwrap();
    /// cache.insert(1, 10).unwrap(); // in the store when this returns
    /// assert_eq!(table.0.lock().unwrap().get(&1), Some(&10));
    /// assert_eq!(cache.peek(&1), Some(10));
    /// ```
    pub fn write_through(mut self) -> Self {
        self.mode = Mode::Through;
        self
    }

    /// Write-around: a write goes to the store, then drops the cached copy;
    /// the next read loads it. For data written often and read rarely, so
    /// writes do not fill the cache.
    ///
    /// The eviction listener hears the copy an `insert` drops as
    /// `Replaced`, as under write-through (a new value was written for the
    /// key; here it is not cached), and the one a `remove` drops as
    /// `Explicit`; a copy already expired goes as `Expired`. A write the
    /// store refused drops the copy as `Explicit` under every policy.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::Mutex};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default)] struct Table(Mutex<HashMap<u32, u32>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use larder::RemovalCause;
    /// use std::sync::Arc;
    /// let heard = Arc::new(Mutex::new(Vec::new()));
    /// let log = heard.clone();
    /// let cache = Cache::builder()
    ///     .eviction_listener(move |k: Arc<u32>, v, cause| log.lock().unwrap().push((*k, v, cause)))
    ///     .store(Table::default())
    ///     .write_around()
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 10).unwrap();
    /// assert_eq!(cache.entry_count(), 0);           // not cached by the write
    /// assert_eq!(cache.get(&1).unwrap(), Some(10)); // loaded by the read
    /// cache.insert(1, 11).unwrap();                 // drops the cached 10
    /// cache.get(&1).unwrap();
    /// cache.remove(&1).unwrap();                    // drops the cached 11
    /// assert_eq!(*heard.lock().unwrap(), [(1, 10, RemovalCause::Replaced), (1, 11, RemovalCause::Explicit)]);
    /// ```
    pub fn write_around(mut self) -> Self {
        self.mode = Mode::Around;
        self
    }

    /// Write-behind: a write updates the cache at once and is queued; the
    /// `larder-write-behind` thread writes queued changes to the store in
    /// batches, coalescing writes of one key (the latest wins), keeping
    /// per-key order, retrying failures with backoff and reporting what it
    /// gives up on to the [dead-letter handler](Self::dead_letter). A queued
    /// change is pinned: until the store has it, reads see it (from the
    /// queue if the cache has evicted or expired its copy), never the
    /// store's older value.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::{Arc, Mutex}};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default, Clone)] struct Table(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a shared `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// let table = Table::default();
    /// let cache = Cache::builder().store(table.clone()).write_behind().build().unwrap();
    /// cache.insert(1, 10).unwrap(); // queued
    /// assert_eq!(cache.get(&1).unwrap(), Some(10));
    /// cache.flush();
    /// assert_eq!(table.0.lock().unwrap().get(&1), Some(&10));
    /// ```
    pub fn write_behind(mut self) -> Self {
        self.mode = Mode::Behind;
        self
    }

    /// Write-behind: the most changes per store call (default 128). The
    /// flusher sends as soon as this many are queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::{Arc, Mutex}};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default, Clone)] struct Table(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a shared `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use larder::BuildError;
    /// let cache = Cache::builder().store(Table::default()).write_behind().batch_size(500).build();
    /// assert!(cache.is_ok());
    /// let zero = Cache::builder().store(Table::default()).write_behind().batch_size(0).build();
    /// assert_eq!(zero.unwrap_err(), BuildError::ZeroSetting("batch_size"));
    /// ```
    pub fn batch_size(mut self, changes: usize) -> Self {
        self.batch_size = Some(changes);
        self
    }

    /// Write-behind: the longest a queued change waits for its batch to fill
    /// before it is sent anyway (default 100 ms).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::{Arc, Mutex}};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default, Clone)] struct Table(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a shared `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use std::time::{Duration, Instant};
    /// let table = Table::default();
    /// let cache = Cache::builder()
    ///     .store(table.clone())
    ///     .write_behind()
    ///     .flush_interval(Duration::from_millis(10))
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 10).unwrap();
    /// // A lone write is sent within about 10 ms, without a `flush`.
    /// let deadline = Instant::now() + Duration::from_secs(5);
    /// while table.0.lock().unwrap().get(&1).is_none() {
    ///     assert!(Instant::now() < deadline);
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// ```
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = Some(interval);
        self
    }

    /// Write-behind: the most entries queued or in flight (default 65,536);
    /// [`when_full`](Self::when_full) says what happens beyond. This also
    /// bounds how many values are pinned.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::{Arc, Mutex}};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default, Clone)] struct Table(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a shared `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use larder::BuildError;
    /// let cache = Cache::builder().store(Table::default()).write_behind().queue_capacity(1_000).build();
    /// assert!(cache.is_ok());
    /// let zero = Cache::builder().store(Table::default()).write_behind().queue_capacity(0).build();
    /// assert_eq!(zero.unwrap_err(), BuildError::ZeroSetting("queue_capacity"));
    /// ```
    pub fn queue_capacity(mut self, entries: usize) -> Self {
        self.queue_capacity = Some(entries);
        self
    }

    /// Write-behind: what a write does when the queue is full (default
    /// [`WhenFull::Block`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::{Arc, Mutex}};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default, Clone)] struct Table(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a shared `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use larder::WhenFull;
    /// let table = Table::default();
    /// let cache = Cache::builder()
    ///     .store(table.clone())
    ///     .write_behind()
    ///     .queue_capacity(1)
    ///     .when_full(WhenFull::WriteThrough)
    ///     .build()
    ///     .unwrap();
    /// for k in 0..10 {
    ///     cache.insert(k, k).unwrap(); // queued, or written here if the queue is full
    /// }
    /// cache.flush();
    /// assert_eq!(table.0.lock().unwrap().len(), 10);
    /// ```
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = Some(policy);
        self
    }

    /// Write-behind: how many times a change is sent before it goes to the
    /// dead-letter handler (default 5). A failed batch of several changes is
    /// split and resent without spending an attempt, so a poisonous key ends
    /// up alone and spends only its own.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Refuser;
    /// # impl Store<u32, u32> for Refuser {
    /// #     type Error = String;
    /// #     fn load(&self, _: &u32) -> Result<Option<u32>, String> { Ok(None) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Err("refused".into()) }
    /// # }
    /// // `Refuser`: a `Store` that loads nothing and refuses every write.
    /// use std::{sync::{Arc, Mutex}, time::Duration};
    /// let attempts = Arc::new(Mutex::new(Vec::new()));
    /// let cache = Cache::builder()
    ///     .store(Refuser)
    ///     .write_behind()
    ///     .max_attempts(2)
    ///     .retry_backoff(Duration::from_millis(1), Duration::from_millis(1), 0.0)
    ///     .dead_letter({
    ///         let attempts = attempts.clone();
    ///         move |dead| attempts.lock().unwrap().push(dead.attempts)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1).unwrap();
    /// cache.flush();
    /// assert_eq!(*attempts.lock().unwrap(), [2]);
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Write-behind: the wait before resending a failed change: `base`
    /// after the first failure, doubling up to `max`, each spread by a
    /// random `±jitter` fraction (`0.0..=1.0`). Default 50 ms, 5 s, 0.2.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Refuser;
    /// # impl Store<u32, u32> for Refuser {
    /// #     type Error = String;
    /// #     fn load(&self, _: &u32) -> Result<Option<u32>, String> { Ok(None) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Err("refused".into()) }
    /// # }
    /// // `Refuser`: a `Store` that loads nothing and refuses every write.
    /// use std::time::Duration;
    /// let cache = Cache::builder()
    ///     .store(Refuser)
    ///     .write_behind()
    ///     .max_attempts(3)
    ///     .retry_backoff(Duration::from_millis(1), Duration::from_millis(4), 0.5)
    ///     .dead_letter(|_| {})
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1).unwrap();
    /// cache.flush(); // three sends, about 1 ms and 2 ms apart
    /// assert_eq!(cache.write_stats().retried, 2);
    /// assert_eq!(cache.write_stats().dead_lettered, 1);
    /// ```
    pub fn retry_backoff(mut self, base: Duration, max: Duration, jitter: f64) -> Self {
        self.backoff = Some(Backoff { base, max, jitter });
        self
    }

    /// Write-behind: called (on the flusher thread) with every change the
    /// store would not take after `max_attempts` sends, with its last
    /// error; with every change the queue could not take in because its
    /// key's `Eq` panicked ([`WriteFailure::KeyPanicked`](crate::WriteFailure::KeyPanicked);
    /// those the flusher had not handed over when [`close`](StoreCache::close)
    /// stopped it, on the thread that closes);
    /// also with what a drop could not flush. A panic in the handler
    /// is contained. Without a handler, dead letters are kept and returned
    /// by [`StoreCache::close`] (they are not bounded by `queue_capacity`:
    /// give a handler where a key may be refused forever).
    ///
    /// The cache has dropped its copy of the key by the time the handler
    /// runs (so an eviction listener hears of it first, on the same thread),
    /// unless the key's `Hash` or `Eq` panicked as the cache looked it up to
    /// drop it: that copy stays cached until it is evicted or expires.
    /// An insert queues its change before it caches the value: if the
    /// flusher gives up on the change in between, there is no copy to drop
    /// yet, the insert then leaves its value out, and the listener hears
    /// nothing of the key.
    /// User code the flusher runs (this handler, the store's `write`, such a
    /// listener) may use the cache, but cannot wait for the flusher it runs
    /// on (nor can the handler and listeners `close` runs wait for the
    /// letters it is handing over): from there [`flush`](StoreCache::flush) returns at once
    /// (`flush_timeout` returns `false`), a write into a full queue that
    /// [`WhenFull::Block`] would make wait fails
    /// with [`WriteError::QueueFull`](crate::WriteError::QueueFull) instead,
    /// [`close`](StoreCache::close) hands back what is left without waiting,
    /// and [`run_pending_tasks`](StoreCache::run_pending_tasks) does its
    /// work without waiting for passes or reloads on other threads (their
    /// listeners may be waiting for the flusher).
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Refuser;
    /// # impl Store<u32, u32> for Refuser {
    /// #     type Error = String;
    /// #     fn load(&self, _: &u32) -> Result<Option<u32>, String> { Ok(None) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Err("refused".into()) }
    /// # }
    /// // `Refuser`: a `Store` that loads nothing and refuses every write.
    /// use larder::WriteFailure;
    /// use std::sync::{Arc, Mutex};
    /// let letters = Arc::new(Mutex::new(Vec::new()));
    /// let cache = Cache::builder()
    ///     .store(Refuser)
    ///     .write_behind()
    ///     .max_attempts(1)
    ///     .dead_letter({
    ///         let letters = letters.clone();
    ///         move |dead| letters.lock().unwrap().push(dead)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 10).unwrap();
    /// cache.flush();
    /// let dead = letters.lock().unwrap().pop().unwrap();
    /// assert_eq!((dead.key, dead.change), (1, Change::Put(10)));
    /// assert!(matches!(dead.error, WriteFailure::Store(e) if *e == "refused"));
    /// assert_eq!(cache.peek(&1), None); // the refused value is not served
    /// ```
    pub fn dead_letter(
        mut self,
        handler: impl Fn(DeadLetter<K, V, S::Error>) + Send + Sync + 'static,
    ) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Write-behind: how long dropping the last handle without
    /// [`close`](StoreCache::close) waits for the queue to drain (default
    /// 2 s). What is still unwritten then goes to the dead-letter handler:
    /// as [`WriteFailure::InFlight`](crate::WriteFailure::InFlight) if it
    /// was in a store call that had not returned (the store may yet write
    /// it), else as [`WriteFailure::Dropped`](crate::WriteFailure::Dropped).
    /// With no handler, its count is printed on stderr and the changes are
    /// lost.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::{Arc, Mutex}};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default, Clone)] struct Table(Arc<Mutex<HashMap<u32, u32>>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a shared `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use std::time::Duration;
    /// let table = Table::default();
    /// let cache = Cache::builder()
    ///     .store(table.clone())
    ///     .write_behind()
    ///     .drop_flush_timeout(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 10).unwrap();
    /// drop(cache); // flushes, waiting at most 5 s
    /// assert_eq!(table.0.lock().unwrap().get(&1), Some(&10));
    /// ```
    pub fn drop_flush_timeout(mut self, timeout: Duration) -> Self {
        self.drop_timeout = Some(timeout);
        self
    }

    /// The read settings: everything [`LoadingCacheBuilder`] offers
    /// (`refresh_after`, `stale_while_revalidate`, `stale_if_error`,
    /// `early_expiry`, `negative_ttl`, reload threads), applied by `set`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::{collections::HashMap, sync::Mutex};
    /// # use larder::{Cache, Change, Store};
    /// # #[derive(Default)] struct Table(Mutex<HashMap<u32, u32>>);
    /// # impl Store<u32, u32> for Table {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    /// #     fn write(&self, b: &[(u32, Change<u32>)]) -> Result<(), String> {
    /// #         let mut t = self.0.lock().unwrap();
    /// #         for (k, c) in b { match c { Change::Put(v) => { t.insert(*k, *v); } Change::Delete => { t.remove(k); } } }
    /// #         Ok(())
    /// #     }
    /// # }
    /// // `Table`: an in-memory `Store` (a `Mutex<HashMap>`), written out in the `StoreCache` example.
    /// use std::time::Duration;
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(60))
    ///     .store(Table::default())
    ///     .reads(|r| r.stale_while_revalidate(Duration::from_secs(10)).negative_ttl(Duration::from_secs(5)))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), None);
    /// ```
    pub fn reads(
        mut self,
        set: impl FnOnce(LoadingCacheBuilder<K, V, S::Error>) -> LoadingCacheBuilder<K, V, S::Error>,
    ) -> Self {
        self.reads = set(self.reads);
        self
    }

    /// Builds the cache (and, for write-behind, starts its flusher), or
    /// names the first setting out of range.
    ///
    /// # Errors
    ///
    /// Every [`LoadingCacheBuilder::build`] error;
    /// [`ZeroSetting`](BuildError::ZeroSetting) for a zero `batch_size`,
    /// `flush_interval`, `queue_capacity` or `max_attempts`;
    /// [`NeedsWriteBehind`](BuildError::NeedsWriteBehind) for a write-behind
    /// setting without `write_behind`;
    /// [`RetryJitterOutOfRange`](BuildError::RetryJitterOutOfRange) and
    /// [`BackoffOrder`](BuildError::BackoffOrder) for a bad `retry_backoff`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store, BuildError};
    /// # struct Nothing;
    /// # impl Store<u32, u32> for Nothing {
    /// #     type Error = String;
    /// #     fn load(&self, _: &u32) -> Result<Option<u32>, String> { Ok(None) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Nothing`: a `Store` that loads nothing and accepts every write.
    /// let err = Cache::builder().store(Nothing).batch_size(10).build().unwrap_err();
    /// assert_eq!(err, BuildError::NeedsWriteBehind("batch_size"));
    /// ```
    pub fn build(self) -> Result<StoreCache<K, V, S>, BuildError> {
        let behind_only = [
            (self.batch_size.is_some(), "batch_size"),
            (self.flush_interval.is_some(), "flush_interval"),
            (self.queue_capacity.is_some(), "queue_capacity"),
            (self.when_full.is_some(), "when_full"),
            (self.max_attempts.is_some(), "max_attempts"),
            (self.backoff.is_some(), "retry_backoff"),
            (self.handler.is_some(), "dead_letter"),
            (self.drop_timeout.is_some(), "drop_flush_timeout"),
        ];
        if self.mode != Mode::Behind {
            if let Some((_, name)) = behind_only.iter().find(|(set, _)| *set) {
                return Err(BuildError::NeedsWriteBehind(name));
            }
        }
        let config = self.config()?;
        let reads = self.reads.build()?;
        let queue = (self.mode == Mode::Behind).then(|| {
            let forget = Box::new(reads.invalidator());
            let queue = Queue::start(self.store.clone(), config, self.handler, forget);
            // The builder made this cell and nothing else fills it.
            let _ = self.queue.set(queue.clone());
            queue
        });
        Ok(StoreCache::from_parts(
            reads,
            self.store,
            self.mode,
            queue,
            config.drop_timeout,
        ))
    }

    /// The write-behind settings, checked.
    fn config(&self) -> Result<Config, BuildError> {
        let nonzero = |n: usize, name| {
            if n == 0 {
                Err(BuildError::ZeroSetting(name))
            } else {
                Ok(n)
            }
        };
        let backoff = self.backoff.unwrap_or(DEFAULT_BACKOFF);
        if !(0.0..=1.0).contains(&backoff.jitter) {
            return Err(BuildError::RetryJitterOutOfRange(backoff.jitter));
        }
        if backoff.base > backoff.max {
            return Err(BuildError::BackoffOrder);
        }
        let flush_interval = self.flush_interval.unwrap_or(DEFAULT_FLUSH_INTERVAL);
        if flush_interval.is_zero() {
            return Err(BuildError::ZeroSetting("flush_interval"));
        }
        Ok(Config {
            batch_size: nonzero(self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE), "batch_size")?,
            flush_interval,
            queue_capacity: nonzero(
                self.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY),
                "queue_capacity",
            )?,
            when_full: self.when_full.unwrap_or_default(),
            max_attempts: match self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS) {
                0 => return Err(BuildError::ZeroSetting("max_attempts")),
                n => n,
            },
            backoff,
            drop_timeout: self.drop_timeout.unwrap_or(DEFAULT_DROP_TIMEOUT),
        })
    }
}
