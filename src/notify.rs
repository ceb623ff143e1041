//! Removal causes and the hand-off of removed entries from under a shard's
//! lock to the listener.
//!
//! A shard never calls user code. Whatever it removes (evicted, expired,
//! replaced or explicitly removed) it moves into a [`Removed`] buffer; the
//! caller unlocks, then delivers each entry to the eviction listener (or just
//! drops it). This is what lets a listener call back into the cache.

use std::{
    fmt,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

/// Why an entry left the cache. The eviction listener sees each removal
/// exactly once, with one of these.
///
/// # Examples
///
/// ```
/// use larder::{Cache, RemovalCause};
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let cache = Cache::builder()
///     .eviction_listener(move |k: Arc<u32>, _v: u32, cause| log.lock().unwrap().push((*k, cause)))
///     .build()
///     .unwrap();
/// cache.insert(1, 10);
/// cache.insert(1, 11);
/// cache.invalidate(&1);
/// assert_eq!(*seen.lock().unwrap(), vec![(1, RemovalCause::Replaced), (1, RemovalCause::Explicit)]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemovalCause {
    /// Its deadline passed: time to live, time to idle, an `Expiry` hook's,
    /// or one given by `insert_with_ttl` or `expire_in` (whose zero `ttl`
    /// removes the entry at once, as `Expired`).
    Expired,
    /// `remove`, `invalidate`, `invalidate_all`, `invalidate_entries_if`,
    /// or an `Op::Remove` from `entry(k).and_compute_with`; on a
    /// [`StoreCache`](crate::StoreCache), also the copy dropped by a write
    /// the store refused (or that panicked), whatever the write policy.
    Explicit,
    /// A new value was written for the same key: `insert`, or an `Op::Put`
    /// (`and_compute_with`, `and_upsert_with`) over a live value (over an
    /// expired value not yet reaped, that one is `Expired`). On a
    /// [`StoreCache`](crate::StoreCache), an `insert` under any write
    /// policy replaces the cached copy this way, write-around's included
    /// (which leaves the new value uncached).
    Replaced,
    /// The policy evicted it, or refused to admit it, to respect the capacity.
    Size,
}

impl RemovalCause {
    /// True for the causes the cache decided on by itself (`Expired`, `Size`).
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::RemovalCause;
    /// assert!(RemovalCause::Size.was_evicted());
    /// assert!(!RemovalCause::Explicit.was_evicted());
    /// ```
    pub fn was_evicted(self) -> bool {
        matches!(self, RemovalCause::Expired | RemovalCause::Size)
    }

    /// Index into per-cause counters.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The user's eviction listener.
pub(crate) type Listener<K, V> = Box<dyn Fn(Arc<K>, V, RemovalCause) + Send + Sync>;

/// A [`Removed`] buffer that delivers its entries to the listener when it
/// is dropped. Made before the shard guard whose removals it collects, it
/// is dropped after that guard has unlocked, also when a key's `Hash` or
/// `Eq` (user code the shard runs) panics under the lock: the removals made
/// before the panic are still delivered, not dropped unheard of.
pub(crate) struct Delivery<'a, K, V> {
    removed: Removed<K, V>,
    listener: Option<&'a Listener<K, V>>,
}

impl<'a, K, V> Delivery<'a, K, V> {
    /// An empty buffer for `listener`.
    pub(crate) fn new(listener: Option<&'a Listener<K, V>>) -> Self {
        Delivery {
            removed: Removed::default(),
            listener,
        }
    }
}

impl<K, V> std::ops::Deref for Delivery<'_, K, V> {
    type Target = Removed<K, V>;

    fn deref(&self) -> &Removed<K, V> {
        &self.removed
    }
}

impl<K, V> std::ops::DerefMut for Delivery<'_, K, V> {
    fn deref_mut(&mut self) -> &mut Removed<K, V> {
        &mut self.removed
    }
}

impl<K, V> Drop for Delivery<'_, K, V> {
    #[inline]
    fn drop(&mut self) {
        // Each listener call is caught (see `deliver_to`), so delivering
        // while unwinding cannot panic a second time. Without a listener
        // the entries simply drop with the buffer: no move on the write
        // path (taking the buffer out cost an insert 20 instructions).
        if let Some(listener) = self.listener {
            std::mem::take(&mut self.removed).deliver_to(listener);
        }
    }
}

impl<K, V> fmt::Debug for Delivery<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.removed.fmt(f)
    }
}

/// Entries removed under a lock, to be delivered after it is released.
///
/// Holds the first entry inline: most writes remove zero or one entry, and
/// this keeps them free of allocations.
pub(crate) struct Removed<K, V> {
    first: Option<(K, V, RemovalCause)>,
    rest: Vec<(K, V, RemovalCause)>,
}

impl<K, V> fmt::Debug for Removed<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Removed").field("len", &self.len()).finish()
    }
}

impl<K, V> Default for Removed<K, V> {
    fn default() -> Self {
        Removed {
            first: None,
            rest: Vec::new(),
        }
    }
}

impl<K, V> Removed<K, V> {
    /// Records one removed entry.
    pub(crate) fn push(&mut self, key: K, value: V, cause: RemovalCause) {
        if self.first.is_none() {
            self.first = Some((key, value, cause));
        } else {
            self.rest.push((key, value, cause));
        }
    }

    /// The value of the first entry held, if any.
    pub(crate) fn first_value(&self) -> Option<&V> {
        self.first.as_ref().map(|(_, value, _)| value)
    }

    /// Number of entries held.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Hands every entry to `listener` (or drops them all when there is none).
    /// Must be called with no lock held. A panicking listener is contained:
    /// the remaining entries are still delivered and the cache stays usable.
    #[inline]
    pub(crate) fn deliver(self, listener: Option<&Listener<K, V>>) {
        if let Some(listener) = listener {
            self.deliver_to(listener);
        }
    }

    fn deliver_to(self, listener: &Listener<K, V>) {
        for (key, value, cause) in self.first.into_iter().chain(self.rest) {
            let call = AssertUnwindSafe(|| listener(Arc::new(key), value, cause));
            // The payload is dropped: a listener panic must not undo the removal
            // nor stop the other notifications (see the listener's docs).
            let _ = catch_unwind(call);
        }
    }
}
