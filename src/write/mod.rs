//! Writing to the user's store: the [`Store`] trait, the [`StoreCache`]
//! that reads through it and writes through, around or behind it.
//!
//! - [`buffer`]: write-behind's pure coalescing buffer (no threads);
//! - [`behind`]: the queue around it and the `larder-write-behind` flusher
//!   thread;
//! - [`store_cache`]: the cache that ties reads (a [`LoadingCache`] over the
//!   store) and writes together; [`builder`] its settings; [`ttl`] a cached
//!   copy's lifetime given, read or changed by the caller.
//!
//! [`LoadingCache`]: crate::LoadingCache

pub(crate) mod behind;
pub(crate) mod buffer;
pub(crate) mod builder;
pub(crate) mod store_cache;
pub(crate) mod ttl;

use std::{fmt, sync::Arc};

pub use behind::WriteStats;
pub use buffer::Change;
pub use builder::{StoreCacheBuilder, WhenFull};
pub use store_cache::{CloseReport, StoreCache};

/// The system of record behind a [`StoreCache`]: a database table, a
/// service, a file. It loads keys on a read miss and takes batches of
/// writes.
///
/// All three methods run with no lock of the cache held: `load` and
/// `load_many` on a reader's thread (or a `larder-reload-N` thread), `write`
/// on the writer's thread (write-through, write-around, and write-behind
/// falling back to write-through on a full queue under
/// [`WhenFull::WriteThrough`]) or on the `larder-write-behind` thread. A
/// `write` batch holds at most one change per
/// key; it should be applied atomically (one transaction) if the store can,
/// since a failed batch is retried, split, and retried again.
///
/// # Examples
///
/// ```
/// use std::{collections::HashMap, sync::Mutex};
/// use larder::{Cache, Change, Store};
///
/// #[derive(Default)]
/// struct Table(Mutex<HashMap<u32, String>>);
///
/// impl Store<u32, String> for Table {
///     type Error = std::io::Error;
///     fn load(&self, key: &u32) -> Result<Option<String>, Self::Error> {
///         Ok(self.0.lock().unwrap().get(key).cloned())
///     }
///     fn write(&self, batch: &[(u32, Change<String>)]) -> Result<(), Self::Error> {
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
/// let cache = Cache::builder().store(Table::default()).build().unwrap();
/// cache.insert(1, "one".to_string()).unwrap(); // in the table, then in the cache
/// assert_eq!(cache.get(&1).unwrap().as_deref(), Some("one"));
/// ```
pub trait Store<K, V>: Send + Sync + 'static {
    /// The store's error type.
    type Error: Send + Sync + 'static;

    /// Loads one key: `Ok(None)` if the store has no such key.
    ///
    /// # Errors
    ///
    /// The store's failure; readers get it and nothing is cached.
    fn load(&self, key: &K) -> Result<Option<V>, Self::Error>;

    /// Loads a batch of distinct keys; keys left out of the answer are
    /// absent, and pairs for keys not asked for are ignored (a range
    /// query may answer more rows). The default calls [`load`](Self::load)
    /// once per key.
    ///
    /// # Errors
    ///
    /// The store's failure, which fails the whole batch.
    fn load_many(&self, keys: &[K]) -> Result<Vec<(K, V)>, Self::Error>
    where
        K: Clone,
    {
        crate::load::load_each(keys, |key| self.load(key))
    }

    /// Applies a batch of changes, at most one per key.
    ///
    /// # Errors
    ///
    /// The store's failure: the whole batch counts as not written. A
    /// write-through caller gets the error; write-behind retries the batch,
    /// split into smaller ones, and finally reports each change it could not
    /// write to the dead-letter handler.
    fn write(&self, batch: &[(K, Change<V>)]) -> Result<(), Self::Error>;
}

impl<V> Change<V> {
    /// The value the store holds after this change: `Some` for a put, `None`
    /// for a delete.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::Change;
    /// assert_eq!(Change::Put(3).into_value(), Some(3));
    /// assert_eq!(Change::<u8>::Delete.into_value(), None);
    /// ```
    pub fn into_value(self) -> Option<V> {
        match self {
            Change::Put(v) => Some(v),
            Change::Delete => None,
        }
    }
}

/// Why a write of a [`StoreCache`] failed.
///
/// # Examples
///
/// ```
/// use larder::WriteError;
/// let refused: WriteError<String> = WriteError::Store("disk full".into());
/// assert_eq!(refused.to_string(), "the store rejected the write: disk full");
/// assert_eq!(WriteError::<String>::QueueFull.to_string(), "the write-behind queue is full");
/// // Only `Store` carries the store's error; the others wrote nothing.
/// assert!(matches!(refused, WriteError::Store(ref e) if e == "disk full"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError<E> {
    /// The store rejected the write (write-through, write-around, or
    /// write-behind falling back to write-through); the cache holds no
    /// value that is not in the store.
    Store(E),
    /// The write-behind queue is full and the cache was built with
    /// [`WhenFull::Fail`], or with [`WhenFull::Block`] and the write came
    /// from user code the flusher runs (the store's `write`, the
    /// dead-letter handler, an eviction listener), which must not wait for
    /// the flusher to make room; nothing was written or queued.
    QueueFull,
    /// The write-behind cache was [closed](StoreCache::close); nothing was
    /// written or queued.
    Closed,
}

impl<E: fmt::Display> fmt::Display for WriteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Store(e) => write!(f, "the store rejected the write: {e}"),
            WriteError::QueueFull => write!(f, "the write-behind queue is full"),
            WriteError::Closed => write!(f, "the cache is closed for writes"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for WriteError<E> {}

/// Why write-behind gave up on a change.
///
/// Non-exhaustive: a handler matches the kinds it knows and treats the
/// others as it treats [`InFlight`](Self::InFlight) (look at the store
/// before writing the change again).
///
/// # Examples
///
/// What a dead-letter handler may do with each kind:
///
/// ```
/// use larder::WriteFailure;
/// fn safe_to_replay<E>(failure: &WriteFailure<E>) -> bool {
///     match failure {
///         // No store call with it is still under way: writing it again
///         // is safe (a put or a delete applied twice leaves one record),
///         // unless the key was written since (see `DeadLetter::change`).
///         WriteFailure::Store(_) | WriteFailure::Panicked(_) | WriteFailure::Dropped => true,
///         // A call may still write it (or an older change of its key),
///         // after what you write now: look first. So may an older change
///         // of its key queued when its `Eq` panicked; and kinds added
///         // later are not known to be safe.
///         WriteFailure::InFlight | WriteFailure::KeyPanicked(_) | _ => false,
///     }
/// }
/// assert!(safe_to_replay(&WriteFailure::<String>::Dropped));
/// assert!(!safe_to_replay(&WriteFailure::<String>::InFlight));
/// assert_eq!(
///     WriteFailure::<String>::Panicked("boom".into()).to_string(),
///     "the store panicked: boom"
/// );
/// assert_eq!(
///     WriteFailure::<String>::KeyPanicked("bad key".into()).to_string(),
///     "the key's Eq or Clone panicked as the queue took it in: bad key"
/// );
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum WriteFailure<E> {
    /// The store's error from the last attempt (shared by every change of
    /// the batch it rejected).
    Store(Arc<E>),
    /// The store's `write` panicked on the last attempt; the panic message.
    Panicked(String),
    /// The cache was dropped before the change could be written (its
    /// bounded final flush ran out of time or the store kept failing): no
    /// change of its key was in a store call then. It was never sent, or
    /// only in calls that failed (and a failed call may still have written
    /// it, as a timeout after the commit does).
    Dropped,
    /// The cache was dropped while the change was in a store call that had
    /// not returned when its final flush ran out of time, or while it
    /// waited behind an older change of its key in such a call: the store
    /// may still write it (or that older change, over what you write
    /// now), or may have written it already. Check the store before
    /// writing the change again.
    InFlight,
    /// The key's `Eq` panicked when the queue compared the change with a
    /// queued change of an equal hash, or its `Clone` when the queue
    /// copied it (as it gathered the writers' changes into its buffer);
    /// the panic message. The change never reached the
    /// store and is not queued. The queued change of its key an `Eq` met stays
    /// queued and is still written, usually an older one, so the store may
    /// end up with that older value, and a replay of this letter may land
    /// before it: look at the store first (and a replay through the same
    /// cache may meet the same panic).
    KeyPanicked(String),
}

impl<E> Clone for WriteFailure<E> {
    fn clone(&self) -> Self {
        match self {
            WriteFailure::Store(e) => WriteFailure::Store(e.clone()),
            WriteFailure::Panicked(m) => WriteFailure::Panicked(m.clone()),
            WriteFailure::Dropped => WriteFailure::Dropped,
            WriteFailure::InFlight => WriteFailure::InFlight,
            WriteFailure::KeyPanicked(m) => WriteFailure::KeyPanicked(m.clone()),
        }
    }
}

impl<E: fmt::Display> fmt::Display for WriteFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteFailure::Store(e) => write!(f, "{e}"),
            WriteFailure::Panicked(m) => write!(f, "the store panicked: {m}"),
            WriteFailure::Dropped => write!(f, "the cache was dropped before the write"),
            WriteFailure::InFlight => write!(
                f,
                "the cache was dropped during the store call, whose outcome is unknown"
            ),
            WriteFailure::KeyPanicked(m) => {
                write!(
                    f,
                    "the key's Eq or Clone panicked as the queue took it in: {m}"
                )
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for WriteFailure<E> {}

impl<K: Clone, V: Clone, E> Clone for DeadLetter<K, V, E> {
    fn clone(&self) -> Self {
        DeadLetter {
            key: self.key.clone(),
            change: self.change.clone(),
            attempts: self.attempts,
            error: self.error.clone(),
        }
    }
}

/// A change write-behind could not write, handed to the dead-letter handler
/// ([`StoreCacheBuilder::dead_letter`]) with why.
///
/// # Examples
///
/// A handler that keeps the letters for a later replay (see
/// [`StoreCacheBuilder::dead_letter`] for one wired to a cache):
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use larder::{Change, DeadLetter, WriteFailure};
/// let kept: Arc<Mutex<Vec<(u32, Change<String>)>>> = Arc::default();
/// let keep = {
///     let kept = kept.clone();
///     move |letter: DeadLetter<u32, String, String>| {
///         kept.lock().unwrap().push((letter.key, letter.change));
///     }
/// };
/// keep(DeadLetter {
///     key: 7,
///     change: Change::Put("v".into()),
///     attempts: 3,
///     error: WriteFailure::Store(Arc::new("timeout".into())),
/// });
/// assert_eq!(*kept.lock().unwrap(), [(7, Change::Put("v".to_string()))]);
/// ```
#[derive(Debug)]
pub struct DeadLetter<K, V, E> {
    /// The key.
    pub key: K,
    /// The change the store did not confirm: the latest written for the
    /// key when it was last sent (earlier ones were coalesced into it). A
    /// change of the key written during that last send is not in this
    /// letter: it stays queued, is sent on attempts of its own and may land
    /// after the letter is handed over, so a replay of this change must not
    /// overwrite it.
    pub change: Change<V>,
    /// How many times the key was sent and failed in this run of failures
    /// (a change written while an older one of its key waited for a retry
    /// took that one's place and its count); 0 for a change a drop hands
    /// back ([`WriteFailure::Dropped`], [`WriteFailure::InFlight`]) and
    /// for one whose key's `Eq` panicked ([`WriteFailure::KeyPanicked`]).
    pub attempts: u32,
    /// The last failure.
    pub error: WriteFailure<E>,
}
