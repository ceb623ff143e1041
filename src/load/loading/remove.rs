//! Removal: [`LoadingCache::invalidate`], [`LoadingCache::remove`],
//! [`LoadingCache::invalidate_entries_if`] and
//! [`LoadingCache::invalidate_all`], each a write of the keys it removes
//! (see [`guard`](crate::load::guard)).

use std::{borrow::Borrow, hash::Hash, sync::Arc};

use super::{LoadingCache, LoadingInner};
#[cfg(doc)]
use crate::Cache;
use crate::{RemovalCause, load::fresh::Loaded, shard::Stripe};

impl<K, V, E> LoadingCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// A function that invalidates a key of this cache, as
    /// [`invalidate`](Self::invalidate) does, while the cache lives, without
    /// keeping it alive: for the write-behind flusher, which the cache owns.
    pub(crate) fn invalidator(&self) -> impl Fn(&K) + Send + Sync + 'static {
        let cache = Arc::downgrade(&self.inner);
        move |key| {
            if let Some(inner) = cache.upgrade() {
                inner.remove_written(key, RemovalCause::Explicit);
            }
        }
    }

    /// Removes `key`'s value; the next read loads it again.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// cache.invalidate(&1);
    /// assert_eq!(cache.peek(&1), None);
    /// ```
    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove_written(key, RemovalCause::Explicit);
    }

    /// [`invalidate`](Self::invalidate), returning the value
    /// [`peek`](Self::peek) would have: `None` if the key held nothing, a
    /// stale value or a cached absence (each removed all the same). As
    /// with `invalidate`, a load of the key under way does not cache the
    /// value it read before.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// assert_eq!(cache.remove(&1), Some(1));
    /// assert_eq!(cache.remove(&1), None);
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut held = None;
        let doomed = |entry: Option<&Loaded<V>>, stripe: Stripe<'_>| {
            // Judged here, under the lock, as the value leaves: the time
            // read once this call returns comes after the listener (user
            // code, which may take long) heard of the removal.
            let now = || self.inner.cache.now();
            held = entry
                .filter(|e| e.fresh_until(now).is_some())
                .and_then(|e| e.value.clone());
            self.inner.write_removes(key, &stripe)
        };
        let live = self
            .inner
            .cache
            .remove_if(key, doomed, &mut self.inner.cache.delivery());
        // An entry the inner cache holds past its deadline (its time to
        // idle, say) is expired however fresh its record says it is.
        held.filter(|_| live)
    }

    /// Removes every value for which `predicate` returns true (cached
    /// absences are kept). The predicate runs with no lock held, on the
    /// values [`iter`](Self::iter) lists and on the values past their time
    /// to live that a read may still return (inside the
    /// `stale_while_revalidate` window, or kept by `stale_if_error` for a
    /// failed load), so no read returns a value it approved; each removal is an
    /// [`invalidate`](Self::invalidate), so a load of the key under way does
    /// not cache the value it read before it. A key written between its
    /// test and its removal (by another thread, a reload, or the predicate
    /// itself) is tested again with the value it holds then, up to 8 times
    /// in all; after that it is removed whatever it holds, as
    /// [`Cache::invalidate_entries_if`] does with a shard written while
    /// tested.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// for k in 0..10 { cache.get(&k).unwrap(); }
    /// cache.invalidate_entries_if(|_, v| v % 2 == 0);
    /// assert_eq!((cache.contains_key(&3), cache.contains_key(&4)), (true, false));
    /// ```
    pub fn invalidate_entries_if(&self, predicate: impl Fn(&K, &V) -> bool) {
        for (key, entry) in self.inner.cache.iter() {
            self.inner.invalidate_if(&key, entry, &predicate);
        }
    }

    /// Removes every value.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// cache.invalidate_all();
    /// assert_eq!(cache.entry_count(), 0);
    /// ```
    pub fn invalidate_all(&self) {
        // Loads under way do not cache what they read before: marked
        // first, so a load that fills after its shard is cleared is one
        // that read after this began.
        self.inner.flights.written_all();
        self.inner.cache.invalidate_all();
    }
}

impl<K, V, E> LoadingInner<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Invalidates `key` if `predicate` approves its value, `entry` being
    /// what it held when listed, unless it holds another entry by then (a
    /// new stamp): that one's value is tested instead, up to `ATTEMPTS`
    /// times in all, and the last attempt invalidates whatever it holds. A
    /// value past its time to live is tested too (a read may still return
    /// it, stale); a cached absence is left alone.
    fn invalidate_if(&self, key: &K, mut entry: Loaded<V>, predicate: &impl Fn(&K, &V) -> bool) {
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let approved = entry.value.as_ref().is_some_and(|v| predicate(key, v));
            if !approved {
                return;
            }
            let (stamp, last) = (entry.stamp, attempt == ATTEMPTS);
            let mut rewritten = None;
            let doomed = |held: Option<&Loaded<V>>, stripe: Stripe<'_>| {
                if last || held.is_none_or(|h| h.stamp == stamp) {
                    return self.write_removes(key, &stripe);
                }
                rewritten = held.cloned();
                false
            };
            self.cache
                .remove_if(key, doomed, &mut self.cache.delivery());
            match rewritten {
                Some(held) => entry = held,
                None => return,
            }
        }
    }

    /// Ends a write that leaves nothing to cache: drops `key`'s entry (as
    /// `cause` if it is live) and counts the write (see [`guard`](crate::load::guard)).
    pub(super) fn remove_written<Q>(&self, key: &Q, cause: RemovalCause)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let doomed = |_: Option<&Loaded<V>>, stripe: Stripe<'_>| self.write_removes(key, &stripe);
        self.cache
            .remove_if_as(key, doomed, cause, &mut self.cache.delivery());
    }
}
