//! [`StoreCache`]: a cache in front of a [`Store`], reading through it and
//! writing through, around or behind it.
//!
//! Reads are a [`LoadingCache`] whose loader is [`ReadThrough`]: the store,
//! except that a key with a write-behind change not yet acknowledged is
//! answered from the queue. Writes run inside
//! [`LoadingCache::write`], whose guards keep an overlapping load or write
//! from caching a value the store no longer holds.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    hash::Hash,
    panic::{RefUnwindSafe, UnwindSafe},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use super::{
    DeadLetter, Store, WriteError, WriteFailure,
    behind::{Queue, Refused, WriteStats},
    buffer::Change,
};
use crate::{CacheStats, Loader, LoadingCache, Policy, RemovalCause};

/// How writes reach the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Through,
    Around,
    Behind,
}

/// The loader of a store cache: pending write-behind changes first, then
/// the store.
pub(crate) struct ReadThrough<K, V, S: Store<K, V>> {
    store: Arc<S>,
    queue: Arc<OnceLock<Arc<Queue<K, V, S>>>>,
}

impl<K, V, S: Store<K, V>> ReadThrough<K, V, S> {
    pub(crate) fn new(store: Arc<S>, queue: Arc<OnceLock<Arc<Queue<K, V, S>>>>) -> Self {
        ReadThrough { store, queue }
    }
}

impl<K, V, S> Loader<K, V> for ReadThrough<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    type Error = S::Error;

    fn load(&self, key: &K) -> Result<Option<V>, S::Error> {
        if let Some(change) = self.queue.get().and_then(|q| q.latest(key)) {
            return Ok(change.into_value());
        }
        self.store.load(key)
    }

    fn load_many(&self, keys: &[K]) -> Result<Vec<(K, V)>, S::Error> {
        let Some(queue) = self.queue.get() else {
            return self.store.load_many(keys);
        };
        let mut pending = HashMap::new();
        let mut rest = Vec::new();
        for key in keys {
            match queue.latest(key) {
                Some(change) => {
                    pending.insert(key.clone(), change.into_value());
                }
                None => rest.push(key.clone()),
            }
        }
        let mut found = Vec::with_capacity(keys.len());
        if !rest.is_empty() {
            found = self.store.load_many(&rest)?;
        }
        // A store may answer rows it was not asked for (a loader's extra
        // pairs are ignored), but its row of a key with a pending change is
        // older than that change: the queue's answer wins, a delete too.
        if !pending.is_empty() {
            found.retain(|(key, _)| !pending.contains_key(key));
            found.extend(pending.into_iter().filter_map(|(k, v)| Some((k, v?))));
        }
        Ok(found)
    }
}

/// A cache in front of a [`Store`]: reads load missing keys from it
/// (read-through), writes go to it write-through, write-around or
/// write-behind. Built with [`CacheBuilder::store`](crate::CacheBuilder::store).
///
/// | policy | `insert` / `remove` returns after … | then the cache … |
/// |---|---|---|
/// | write-through (default) | … the store took the change | … holds the new value (or none) |
/// | write-around | … the store took the change | … drops its copy; the next read loads it |
/// | write-behind | … the change is queued | … already holds it; the flusher writes it soon |
///
/// Reads are those of a [`LoadingCache`] (one load per key at a time, and
/// any refresh setting given through
/// [`reads`](crate::StoreCacheBuilder::reads)). A store failure on a
/// write-through or write-around write is returned to the caller and
/// leaves no unwritten value in the cache. A write-behind change is never
/// lost silently: it reaches the store, or the dead-letter handler with its
/// error, or the report of [`close`](Self::close). (Dropped without
/// `close` and without a handler, a cache can only count what it could not
/// write on stderr.)
///
/// A key whose `Hash` panics loses no write-behind change either: the key
/// is hashed once, by the thread that writes it (where the panic reaches
/// the caller and nothing is queued), and the queue and its flusher never
/// hash it again, so the key hashing differently later (on the flusher, on
/// a reader) stops no flusher and hangs no [`flush`](Self::flush) or
/// [`close`](Self::close). Nor does a key whose `Eq` panics: the queue
/// compares keys only as it takes a change in (to coalesce it with a
/// queued change of its key), never to send, retry or settle one, so such
/// a key is still written; a change it could not take in because the
/// comparison panicked goes to the dead-letter handler (or the report of
/// `close`) as [`WriteFailure::KeyPanicked`], and the thread that was
/// taking it in (the flusher, a reader, a flush, `close`) carries on.
///
/// `StoreCache` is a cheap handle (`Clone`, `Send`, `Sync`); its threads end
/// when the last handle is dropped (after a bounded final flush, see
/// [`drop_flush_timeout`](crate::StoreCacheBuilder::drop_flush_timeout)).
///
/// # What a crash loses
///
/// Write-behind acknowledges a write once it is queued in memory. If the
/// process dies (crash, `kill -9`, power loss, a `panic = "abort"` build)
/// before the flusher has written it, the store never sees it: at most the
/// writes of the last `flush_interval` (plus retry time, if the store was
/// failing) and at most `queue_capacity + batch_size` changes. Call
/// [`flush`](Self::flush) where a write must be durable before you answer,
/// or use write-through for such data.
///
/// # Examples
///
/// ```
/// use larder::{Cache, Change, Store};
/// use std::{collections::HashMap, sync::Mutex, time::Duration};
///
/// /// The system of record: here a table in memory (the other examples
/// /// call such a store `Table`).
/// #[derive(Default)]
/// struct Table(Mutex<HashMap<u32, String>>);
///
/// impl Store<u32, String> for Table {
///     type Error = String;
///
///     fn load(&self, key: &u32) -> Result<Option<String>, String> {
///         Ok(self.0.lock().unwrap().get(key).cloned())
///     }
///
///     fn write(&self, batch: &[(u32, Change<String>)]) -> Result<(), String> {
///         let mut table = self.0.lock().unwrap();
///         for (key, change) in batch {
///             match change {
///                 Change::Put(value) => table.insert(*key, value.clone()),
///                 Change::Delete => table.remove(key),
///             };
///         }
///         Ok(())
///     }
/// }
///
/// let cache = Cache::builder()
///     .max_capacity(10_000)
///     .store(Table::default())
///     .write_behind()
///     .build()
///     .unwrap();
/// cache.insert(7, "seven".to_string()).unwrap(); // queued, cached
/// assert_eq!(cache.get(&7).unwrap().as_deref(), Some("seven"));
/// cache.remove(&7).unwrap();
/// assert_eq!(cache.get(&7).unwrap(), None);
/// let report = cache.close(Duration::from_secs(5));
/// assert!(report.is_empty(), "everything reached the store");
/// ```
pub struct StoreCache<K, V, S: Store<K, V>> {
    inner: Arc<StoreInner<K, V, S>>,
}

impl<K, V, S: Store<K, V>> Clone for StoreCache<K, V, S> {
    fn clone(&self) -> Self {
        StoreCache {
            inner: self.inner.clone(),
        }
    }
}

// As for `Cache`: a store call that panics is a failed write (retried, then
// a dead letter) or a failed load, and the cache stays usable
// (`tests/write_faults.rs`).
impl<K, V, S> UnwindSafe for StoreCache<K, V, S>
where
    K: RefUnwindSafe,
    V: RefUnwindSafe,
    S: Store<K, V> + RefUnwindSafe,
    S::Error: RefUnwindSafe,
{
}
impl<K, V, S> RefUnwindSafe for StoreCache<K, V, S>
where
    K: RefUnwindSafe,
    V: RefUnwindSafe,
    S: Store<K, V> + RefUnwindSafe,
    S::Error: RefUnwindSafe,
{
}

impl<K, V, S> fmt::Debug for StoreCache<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCache")
            .field("reads", &self.inner.reads)
            .field("mode", &self.inner.mode)
            .finish_non_exhaustive()
    }
}

struct StoreInner<K, V, S: Store<K, V>> {
    reads: LoadingCache<K, V, S::Error>,
    store: Arc<S>,
    mode: Mode,
    queue: Option<Arc<Queue<K, V, S>>>,
    /// The bounded final flush of write-behind, run when the last handle
    /// goes.
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<K, V, S: Store<K, V>> Drop for StoreInner<K, V, S> {
    fn drop(&mut self) {
        if let Some(close) = self.on_drop.take() {
            close();
        }
    }
}

/// What [`StoreCache::close`] could not write.
#[derive(Debug)]
#[non_exhaustive]
pub struct CloseReport<K, V, E> {
    /// Changes still queued, or in a store call that had not returned, when
    /// the deadline passed: the latest change per key, the ones in that
    /// store call first. None reached the dead-letter handler.
    pub unwritten: Vec<(K, Change<V>)>,
    /// How many of [`unwritten`](Self::unwritten), from its start, were in
    /// the store call that had not returned: the store may still write
    /// them, or may have already. The rest were not in a store call then.
    /// A change of a key replaced by a newer one still queued is not
    /// listed (the newer one is, among the [`overtaken`](Self::overtaken)),
    /// even if it was in that call: it may still land, before or after you
    /// write the newer one again.
    pub in_flight: usize,
    /// How many of [`unwritten`](Self::unwritten), right after the
    /// `in_flight` ones, were queued behind an older change of their key
    /// that was in the store call that had not returned: that older change
    /// may still land, after you write these again. Check the store first.
    /// The rest of `unwritten` are changes of keys in no store call then.
    pub overtaken: usize,
    /// Dead letters kept because the cache has no dead-letter handler:
    /// changes the store refused, and changes whose key's `Eq` panicked as
    /// the queue took them in (some perhaps as `close` itself did).
    pub dead_letters: Vec<DeadLetter<K, V, E>>,
}

impl<K, V, E> CloseReport<K, V, E> {
    /// Whether `close` handed nothing back: no change left unwritten and no
    /// dead letter kept. Without a dead-letter handler, that means every
    /// write reached the store. With one, the changes the store refused
    /// went to the handler instead of this report, so an empty report says
    /// only that nothing is left for the caller.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Sink;
    /// # impl Store<u32, u32> for Sink {
    /// #     type Error = String;
    /// #     fn load(&self, _: &u32) -> Result<Option<u32>, String> { Ok(None) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Sink`: a `Store` that loads nothing and accepts every write.
    /// use std::time::Duration;
    /// let cache = Cache::builder().store(Sink).write_behind().build().unwrap();
    /// cache.insert(1, 1).unwrap();
    /// let report = cache.close(Duration::from_secs(5));
    /// assert!(report.is_empty());
    /// assert_eq!(report.unwritten.len() + report.dead_letters.len(), 0);
    /// ```
    ///
    /// With a handler, a refused write is the handler's, not the report's:
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
    /// let letters = Arc::new(Mutex::new(Vec::new()));
    /// let cache = Cache::builder()
    ///     .store(Refuser)
    ///     .write_behind()
    ///     .max_attempts(1)
    ///     .dead_letter({
    ///         let letters = letters.clone();
    ///         move |dead| letters.lock().unwrap().push(dead.key)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// cache.insert(1, 1).unwrap();
    /// let report = cache.close(Duration::from_secs(5));
    /// assert!(report.is_empty()); // yet the store never took key 1:
    /// assert_eq!(*letters.lock().unwrap(), [1]);
    /// ```
    pub fn is_empty(&self) -> bool {
        self.unwritten.is_empty() && self.dead_letters.is_empty()
    }
}

impl<K, V, S> StoreCache<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    /// The loading cache that holds the cached copies.
    pub(super) fn reads(&self) -> &LoadingCache<K, V, S::Error> {
        &self.inner.reads
    }

    pub(crate) fn from_parts(
        reads: LoadingCache<K, V, S::Error>,
        store: Arc<S>,
        mode: Mode,
        queue: Option<Arc<Queue<K, V, S>>>,
        drop_timeout: Duration,
    ) -> Self {
        let on_drop = queue.clone().map(|queue| {
            Box::new(move || queue.close_on_drop(drop_timeout)) as Box<dyn FnOnce() + Send + Sync>
        });
        StoreCache {
            inner: Arc::new(StoreInner {
                reads,
                store,
                mode,
                queue,
                on_drop,
            }),
        }
    }

    /// The value for `key`: from the cache, or loaded from the store (one
    /// load per key at a time; other readers wait for it). A key with a
    /// write-behind change not yet in the store answers that change.
    ///
    /// # Errors
    ///
    /// The store's load error, shared with every reader that waited for it.
    ///
    /// # Panics
    ///
    /// If [`Store::load`] panics, as for [`LoadingCache::get`]: the panic
    /// reaches the reader whose call ran it (counted in
    /// [`load_failures`](crate::CacheStats::load_failures)), one waiting
    /// reader loads instead, and the cache stays usable.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// assert_eq!(cache.get(&4).unwrap(), Some(16));
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, Arc<S::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.inner.reads.get(key)
    }

    /// The async form of [`get`](Self::get); see
    /// [`LoadingCache::get_async`].
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop {
    /// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
    /// #         std::thread::yield_now();
    /// #     }
    /// # }
    /// // `block_on`: polls the future on this thread until it is ready (any executor will do).
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// assert_eq!(block_on(cache.get_async(&4)).unwrap(), Some(16));
    /// ```
    pub async fn get_async<Q>(&self, key: &Q) -> Result<Option<V>, Arc<S::Error>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.inner.reads.get_async(key).await
    }

    /// The values for `keys`, loading the missing ones with one
    /// [`Store::load_many`] call; see [`LoadingCache::get_many`].
    ///
    /// # Errors
    ///
    /// The store's error for the batch.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// assert_eq!(cache.get_many([2, 3]).unwrap()[&3], 9);
    /// ```
    pub fn get_many(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<HashMap<K, V>, Arc<S::Error>> {
        self.inner.reads.get_many(keys)
    }

    /// The cached value for `key`, without loading or counting.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// assert_eq!(cache.peek(&3), None); // not loaded: peek never loads
    /// cache.get(&3).unwrap();
    /// assert_eq!(cache.peek(&3), Some(9));
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.reads.peek(key)
    }

    /// Every key with a value [`peek`](Self::peek) would return, with that
    /// value, without loading or counting (see [`LoadingCache::iter`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// cache.get_many([1, 2]).unwrap();
    /// let mut cached: Vec<_> = cache.iter().collect();
    /// cached.sort();
    /// assert_eq!(cached, [(1, 1), (2, 4)]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.inner.reads.iter()
    }

    /// Writes `value` under `key` by the cache's policy (see the table on
    /// [`StoreCache`]).
    ///
    /// # Errors
    ///
    /// [`WriteError::Store`] if the store rejected a write-through or
    /// write-around write (or a write-behind write falling back to
    /// write-through): the cache then holds no copy of `key` at all (a
    /// failed call may still have reached the store, so the next read loads
    /// what the store holds). [`WriteError::QueueFull`] and
    /// [`WriteError::Closed`] for write-behind, with nothing queued; the
    /// cached copy is dropped likewise.
    ///
    /// # Panics
    ///
    /// If [`Store::write`] panics on this call (write-through or
    /// write-around), the panic reaches the caller and the cache is left as
    /// after a store error: no copy of `key`, so the next read loads what
    /// the store holds, and later writes of `key` work. (Write-behind's
    /// flusher contains a panicking store: see
    /// [`WriteFailure::Panicked`].)
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store, WriteError};
    /// struct ReadOnly;
    /// impl Store<u32, u32> for ReadOnly {
    ///     type Error = String;
    ///     fn load(&self, _: &u32) -> Result<Option<u32>, String> { Ok(None) }
    ///     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Err("read-only".into()) }
    /// }
    /// let cache = Cache::builder().store(ReadOnly).build().unwrap();
    /// assert!(matches!(cache.insert(1, 1), Err(WriteError::Store(e)) if e == "read-only"));
    /// assert_eq!(cache.peek(&1), None); // the unwritten value is not cached
    /// ```
    ///
    /// A store whose write panics:
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// use std::{collections::HashMap, panic::{AssertUnwindSafe, catch_unwind}, sync::{Arc, Mutex}};
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// #[derive(Clone, Default)]
    /// struct Buggy(Arc<Mutex<HashMap<u32, u32>>>, Arc<AtomicBool>);
    /// impl Store<u32, u32> for Buggy {
    ///     type Error = String;
    ///     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(self.0.lock().unwrap().get(k).copied()) }
    ///     fn write(&self, batch: &[(u32, Change<u32>)]) -> Result<(), String> {
    ///         assert!(!self.1.load(Ordering::SeqCst), "store bug");
    ///         for (k, c) in batch {
    ///             match c {
    ///                 Change::Put(v) => { self.0.lock().unwrap().insert(*k, *v); }
    ///                 Change::Delete => { self.0.lock().unwrap().remove(k); }
    ///             }
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// let store = Buggy::default();
    /// let cache = Cache::builder().store(store.clone()).build().unwrap();
    /// cache.insert(1, 10).unwrap();
    /// store.1.store(true, Ordering::SeqCst);
    /// assert!(catch_unwind(AssertUnwindSafe(|| cache.insert(1, 11))).is_err());
    /// assert_eq!(cache.peek(&1), None); // the cached 10 is dropped
    /// assert_eq!(cache.get(&1).unwrap(), Some(10)); // what the store holds
    /// assert!(catch_unwind(AssertUnwindSafe(|| cache.remove(&1))).is_err());
    /// assert_eq!(cache.peek(&1), None); // dropped again
    /// store.1.store(false, Ordering::SeqCst);
    /// cache.insert(1, 12).unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), Some(12));
    /// ```
    pub fn insert(&self, key: K, value: V) -> Result<(), WriteError<S::Error>> {
        self.change(key, Change::Put(value), None)
    }

    /// Deletes `key` from the store and the cache by the cache's policy.
    ///
    /// # Errors
    ///
    /// As for [`insert`](Self::insert); on a store error the cached value,
    /// if any, is dropped (the next read loads what the store has).
    ///
    /// # Panics
    ///
    /// As for [`insert`](Self::insert): a panicking [`Store::write`]
    /// reaches the caller, and the cached value is dropped as on an error.
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
    /// let cache = Cache::builder().store(Table::default()).build().unwrap();
    /// cache.insert(1, 10).unwrap();
    /// cache.remove(&1).unwrap();
    /// assert_eq!(cache.get(&1).unwrap(), None);
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Result<(), WriteError<S::Error>>
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + ?Sized,
    {
        self.change(key.to_owned(), Change::Delete, None)
    }

    /// Applies one change by the cache's policy. Here the key is cloned
    /// once (the cache and the store or queue each keep one), and a put's
    /// value at most once (for the cache; the store or queue takes the
    /// original). A put's cached copy is fresh for `ttl`, if given, else
    /// for the cache's time to live.
    pub(super) fn change(
        &self,
        key: K,
        change: Change<V>,
        ttl: Option<Duration>,
    ) -> Result<(), WriteError<S::Error>> {
        let inner = &*self.inner;
        let send = |key: K, change: Change<V>| {
            inner
                .store
                .write(&[(key, change)])
                .map_err(WriteError::Store)
        };
        // A put that leaves no copy cached (write-around) supersedes the
        // old one, as a write-through put that caches its value does.
        let dropped = match change {
            Change::Put(_) => RemovalCause::Replaced,
            Change::Delete => RemovalCause::Explicit,
        };
        match &inner.queue {
            None => inner.reads.write(key.clone(), dropped, ttl, |_| {
                let cached = match (&change, inner.mode) {
                    (Change::Put(v), Mode::Through) => Some(v.clone()),
                    _ => None,
                };
                send(key, change).map(|()| (cached, ()))
            }),
            Some(queue) => inner.reads.write(key.clone(), dropped, ttl, |order| {
                let cached = match &change {
                    Change::Put(v) => Some(v.clone()),
                    Change::Delete => None,
                };
                match queue.push(key, change, order) {
                    Ok(()) => Ok((cached, ())),
                    Err(Refused::Closed) => Err(WriteError::Closed),
                    Err(Refused::Full) => Err(WriteError::QueueFull),
                    Err(Refused::WriteThrough(key, change)) => {
                        send(key, change).map(|()| (cached, ()))
                    }
                }
            }),
        }
    }

    /// Drops the cached copy of `key` (the store is not touched); the next
    /// read loads it again.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// cache.get(&3).unwrap();
    /// cache.invalidate(&3);
    /// assert!(!cache.contains_key(&3));
    /// assert_eq!(cache.get(&3).unwrap(), Some(9)); // loaded again
    /// ```
    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.reads.invalidate(key);
    }

    /// Drops the cached copies for which `predicate` returns true (the
    /// store is not touched); see [`LoadingCache::invalidate_entries_if`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// cache.get_many([1, 2, 3]).unwrap();
    /// cache.invalidate_entries_if(|_, v| v % 2 == 1);
    /// assert!(!cache.contains_key(&1) && cache.contains_key(&2) && !cache.contains_key(&3));
    /// ```
    pub fn invalidate_entries_if(&self, predicate: impl Fn(&K, &V) -> bool) {
        self.inner.reads.invalidate_entries_if(predicate);
    }

    /// True if [`peek`](Self::peek) would return a value.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// assert!(!cache.contains_key(&2)); // never loads
    /// cache.get(&2).unwrap();
    /// assert!(cache.contains_key(&2));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.reads.contains_key(key)
    }

    /// Drops every cached value (the store is not touched).
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
    /// let cache = Cache::builder().store(table.clone()).build().unwrap();
    /// cache.insert(1, 10).unwrap();
    /// cache.invalidate_all();
    /// assert_eq!(cache.peek(&1), None);
    /// assert_eq!(table.0.lock().unwrap().get(&1), Some(&10)); // the store keeps it
    /// ```
    pub fn invalidate_all(&self) {
        self.inner.reads.invalidate_all();
    }

    /// Write-behind: returns once every write made before the call has
    /// reached the store or the dead-letter handler. It cannot hang on a
    /// poisonous key: a change is sent at most `max_attempts` times, so the
    /// wait is bounded by the retry backoff plus store time. Returns at once
    /// for the other policies, and after [`close`](Self::close). A flush
    /// waiting when `close` runs returns when `close` does, even if some of
    /// its writes were handed back in [`CloseReport::unwritten`] instead.
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
    /// let table = Table::default();
    /// let cache = Cache::builder().store(table.clone()).write_behind().build().unwrap();
    /// cache.insert(1, 10).unwrap();
    /// cache.flush();
    /// assert_eq!(table.0.lock().unwrap().get(&1), Some(&10));
    /// ```
    pub fn flush(&self) {
        if let Some(queue) = &self.inner.queue {
            queue.flush(None);
        }
    }

    /// [`flush`](Self::flush), waiting at most `timeout`; true if every
    /// earlier write settled in time, false if one had not (or if
    /// [`close`](Self::close) handed one back unwritten while it waited).
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
    /// let cache = Cache::builder().store(table.clone()).write_behind().build().unwrap();
    /// cache.insert(1, 10).unwrap();
    /// assert!(cache.flush_timeout(Duration::from_secs(5)));
    /// assert_eq!(table.0.lock().unwrap().get(&1), Some(&10));
    /// ```
    pub fn flush_timeout(&self, timeout: Duration) -> bool {
        match &self.inner.queue {
            Some(queue) => queue.flush(Instant::now().checked_add(timeout)),
            None => true,
        }
    }

    /// Write-behind: stops taking writes (later ones return
    /// [`WriteError::Closed`]), flushes the queue for at most `timeout`,
    /// stops the flusher thread and reports what was not written (the
    /// changes the store refused are in it only if there is no dead-letter
    /// handler: with one, they went to the handler). Reads keep
    /// working. Calling it again returns an empty report at once, without
    /// waiting again for a store call the first one gave up on (nor does
    /// dropping the last handle afterwards). For the other
    /// policies it does nothing and reports nothing.
    ///
    /// # Panics
    ///
    /// If copying a change for the report panics (its key's or value's
    /// `Clone`; the report's changes are copies, since a store call under
    /// way holds one of them): by then the queue is emptied, the flusher
    /// told to stop and the dead letters handed to the handler, so the
    /// panic reaches the caller without the report, the changes it would
    /// have listed are dropped (one in that store call may still land),
    /// and a second call, or the drop of the last handle as the panic
    /// unwinds, finds nothing left to copy and returns at once.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store, WriteError};
    /// # struct Sink;
    /// # impl Store<u32, u32> for Sink {
    /// #     type Error = String;
    /// #     fn load(&self, _: &u32) -> Result<Option<u32>, String> { Ok(None) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Sink`: a `Store` that loads nothing and accepts every write.
    /// use std::time::Duration;
    /// let cache = Cache::builder().store(Sink).write_behind().build().unwrap();
    /// cache.insert(1, 1).unwrap();
    /// assert!(cache.close(Duration::from_secs(5)).is_empty());
    /// assert!(matches!(cache.insert(2, 2), Err(WriteError::Closed)));
    /// assert!(cache.close(Duration::from_secs(5)).is_empty());
    /// ```
    pub fn close(&self, timeout: Duration) -> CloseReport<K, V, S::Error> {
        match &self.inner.queue {
            Some(queue) => {
                let left = queue.close(timeout);
                CloseReport {
                    unwritten: left.unwritten,
                    in_flight: left.in_flight,
                    overtaken: left.overtaken,
                    dead_letters: left.dead,
                }
            }
            None => CloseReport {
                unwritten: Vec::new(),
                in_flight: 0,
                overtaken: 0,
                dead_letters: Vec::new(),
            },
        }
    }

    /// The write-behind counters (all zero for the other policies).
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
    /// let cache = Cache::builder().store(Table::default()).write_behind().build().unwrap();
    /// cache.insert(1, 10).unwrap();
    /// cache.flush();
    /// assert_eq!(cache.write_stats().flushed, 1);
    /// ```
    pub fn write_stats(&self) -> WriteStats {
        self.inner
            .queue
            .as_ref()
            .map_or_else(WriteStats::default, |q| q.stats())
    }

    /// The read counters: hits, misses, loads, … (see [`CacheStats`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// cache.get(&2).unwrap(); // a miss: loaded from the store
    /// cache.get(&2).unwrap(); // a hit
    /// assert_eq!(cache.stats().hits(), 1);
    /// assert_eq!(cache.stats().misses(), 1);
    /// ```
    pub fn stats(&self) -> CacheStats {
        self.inner.reads.stats()
    }

    /// The settings this cache was built with (see
    /// [`Cache::policy`](crate::Cache::policy)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().max_capacity(500).store(Squares).build().unwrap();
    /// assert_eq!(cache.policy().max_capacity(), Some(500));
    /// ```
    pub fn policy(&self) -> Policy {
        self.inner.reads.policy()
    }

    /// Number of cached entries, counted as
    /// [`LoadingCache::entry_count`] counts them: absences cached by a
    /// `negative_ttl` (see [`reads`](crate::StoreCacheBuilder::reads)) and
    /// values kept for a stale window included, expired entries not yet
    /// reaped too.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().store(Squares).build().unwrap();
    /// cache.get_many([1, 2, 3]).unwrap();
    /// assert_eq!(cache.entry_count(), 3);
    /// ```
    pub fn entry_count(&self) -> u64 {
        self.inner.reads.entry_count()
    }

    /// Total weight of the cached entries; see
    /// [`LoadingCache::weighted_size`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// let cache = Cache::builder().weigher(|_: &u32, v: &u32| *v).store(Squares).build().unwrap();
    /// cache.get_many([1, 2, 3]).unwrap();
    /// assert_eq!(cache.weighted_size(), 1 + 4 + 9);
    /// ```
    pub fn weighted_size(&self) -> u64 {
        self.inner.reads.weighted_size()
    }

    /// Does now what the background threads would do soon (reaping, queued
    /// reloads); see [`LoadingCache::run_pending_tasks`]. Does not flush:
    /// that is [`flush`](Self::flush).
    ///
    /// Called from user code the write-behind flusher runs (the store, the
    /// dead-letter handler, an eviction listener for a cached copy it
    /// drops), it does the work but does not wait for passes or reloads on
    /// other threads: their listeners may be waiting for the flusher. There
    /// [`flush`](Self::flush) and [`close`](Self::close) return at once too.
    ///
    /// # Examples
    ///
    /// ```
    /// # use larder::{Cache, Change, Store};
    /// # struct Squares;
    /// # impl Store<u32, u32> for Squares {
    /// #     type Error = String;
    /// #     fn load(&self, k: &u32) -> Result<Option<u32>, String> { Ok(Some(k * k)) }
    /// #     fn write(&self, _: &[(u32, Change<u32>)]) -> Result<(), String> { Ok(()) }
    /// # }
    /// // `Squares`: a `Store` whose `load(k)` is `Some(k * k)` and whose `write` accepts anything.
    /// use larder::clock::MockClock;
    /// use std::time::Duration;
    /// let clock = MockClock::new();
    /// let cache = Cache::builder()
    ///     .time_to_live(Duration::from_secs(1))
    ///     .clock(clock.clone())
    ///     .store(Squares)
    ///     .build()
    ///     .unwrap();
    /// cache.get(&2).unwrap();
    /// clock.advance(Duration::from_secs(2));
    /// cache.run_pending_tasks(); // reaps the expired copy
    /// assert_eq!(cache.entry_count(), 0);
    /// ```
    pub fn run_pending_tasks(&self) {
        self.inner.reads.run_pending_tasks();
    }
}

impl<K, V, S> Queue<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    /// The close a drop does: what is left goes to the dead-letter handler
    /// (unwritten changes as [`WriteFailure::InFlight`] if they, or an older
    /// change of their key, were in the store call that had not returned,
    /// else [`WriteFailure::Dropped`]),
    /// or is counted on stderr if there is none.
    fn close_on_drop(&self, timeout: Duration) {
        let left = self.close(timeout);
        let count = left.unwritten.len() + left.dead.len();
        if count > 0 && !self.has_handler() {
            eprintln!(
                "larder: a write-behind cache was dropped with {count} changes the store did not take \
                 (no dead-letter handler was set; call close() to get them back)"
            );
            return;
        }
        for dead in left.dead {
            self.report(dead);
        }
        for (i, (key, change)) in left.unwritten.into_iter().enumerate() {
            self.report(DeadLetter {
                key,
                change,
                attempts: 0,
                error: if i < left.in_flight + left.overtaken {
                    WriteFailure::InFlight
                } else {
                    WriteFailure::Dropped
                },
            });
        }
    }
}
