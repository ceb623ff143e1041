//! The reads that load nothing: [`LoadingCache::peek`],
//! [`LoadingCache::iter`] and [`LoadingCache::contains_key`].

use std::{borrow::Borrow, hash::Hash};

use super::LoadingCache;
#[cfg(doc)]
use crate::Cache;

impl<K, V, E> LoadingCache<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// The value for `key` if it is cached and fresh (or due for refresh),
    /// without loading, counting or starting a refresh. `None` for a missing,
    /// stale or absent-cached key.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// assert_eq!(cache.peek(&1), None);
    /// cache.get(&1).unwrap();
    /// assert_eq!(cache.peek(&1), Some(1));
    /// ```
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Judged under the shard's lock, at the time the entry is found
        // live: read after the unlock, the time could be judging a copy
        // of a record that `expire_in` has since moved on (a value fresh
        // all along reported gone).
        self.inner.cache.peek_by(key, |entry, now| {
            entry.fresh_until(|| now.get())?;
            entry.value.clone()
        })
    }

    /// Every key with a value [`peek`](Self::peek) would return, with
    /// that value: cached, fresh or due for refresh (not stale, not an
    /// absence cached by negative caching). Like `peek` it loads, counts and
    /// refreshes nothing. Entries are listed as [`Cache::iter`] lists
    /// them: one shard at a time, with no lock held between items.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::builder().loader(|k: &u8| Ok::<_, String>(Some(*k))).build().unwrap();
    /// cache.get(&1).unwrap();
    /// cache.insert(2, 20);
    /// let mut entries: Vec<(u8, u8)> = cache.iter().collect();
    /// entries.sort();
    /// assert_eq!(entries, [(1, 1), (2, 20)]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        let mut listed = self.inner.cache.iter();
        std::iter::from_fn(move || {
            loop {
                let (key, entry) = listed.next()?;
                // Judged at the time its shard was copied, as the inner
                // cache judged the entry live: a later reading would judge
                // the copy of a record `expire_in` may have moved on since,
                // and skip a value fresh all along.
                let taken_at = listed.taken_at();
                if entry.fresh_until(|| taken_at).is_some() {
                    if let Some(value) = entry.value {
                        return Some((key, value));
                    }
                }
            }
        })
    }

    /// True if [`peek`](Self::peek) would return a value: no load, count or
    /// refresh. False for a cached absence (`negative_ttl`) and a stale value.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::builder()
    ///     .loader(|k: &u8| Ok::<_, String>((*k < 10).then_some(*k)))
    ///     .negative_ttl(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// assert!(!cache.contains_key(&1)); // never loads
    /// cache.get(&1).unwrap();
    /// assert!(cache.contains_key(&1));
    /// assert_eq!(cache.get(&99).unwrap(), None); // an absence, cached
    /// assert!(!cache.contains_key(&99));
    /// assert_eq!(cache.entry_count(), 2);
    /// assert_eq!(cache.stats().loads(), 2);
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.peek(key).is_some()
    }
}
