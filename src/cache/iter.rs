//! Iteration: [`Cache::iter`] and the [`Iter`] it returns, which copies
//! one shard's live entries at a time.

use std::{fmt, hash::Hash};

use super::{Cache, Inner};

/// The entries of a [`Cache`], from [`Cache::iter`]: `(key, value)` clones
/// of the live entries, one shard at a time.
pub struct Iter<'a, K, V> {
    inner: &'a Inner<K, V>,
    /// The shard to copy when `batch` runs out.
    next_shard: usize,
    /// The current shard's live entries, not yet yielded.
    batch: std::vec::IntoIter<(K, V)>,
    /// The time `batch` was judged live at.
    taken_at: u64,
}

impl<K, V> Iter<'_, K, V> {
    /// The time the entry just yielded was found live at (read as its
    /// shard was copied): what a value that keeps a deadline of its own
    /// (a loading cache's record) is to be judged by, not a later reading,
    /// as the record may have been changed in place since (`retime_with`).
    pub(crate) fn taken_at(&self) -> u64 {
        self.taken_at
    }
}

impl<K, V> Iterator for Iter<'_, K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        loop {
            if let Some(entry) = self.batch.next() {
                return Some(entry);
            }
            let cell = self.inner.shards.get(self.next_shard)?;
            self.next_shard += 1;
            let now = self.inner.timing.clock.now();
            self.batch = cell.read().snapshot(now).into_iter();
            self.taken_at = now;
        }
    }
}

/// Once it has returned `None` (every shard listed), it keeps doing so.
impl<K: Hash + Eq + Clone, V: Clone> std::iter::FusedIterator for Iter<'_, K, V> {}

impl<K, V> fmt::Debug for Iter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("next_shard", &self.next_shard)
            .field("buffered", &self.batch.len())
            .finish_non_exhaustive()
    }
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Every live entry, as clones of its key and value, shard by shard.
    ///
    /// Like [`peek`](Self::peek), iterating counts no hit or miss, tells
    /// the eviction policy nothing and slides no time-to-idle deadline;
    /// expired entries are skipped whether or not they have been reaped.
    /// The iterator copies one shard's entries at a time, under that
    /// shard's read lock (so at most one shard's worth of clones is held,
    /// and `K::clone` and `V::clone` run under the lock, as a `get`'s
    /// clone does), then yields them with no lock held: the caller may use
    /// the cache, this one included, between items. Each shard is seen as
    /// it is when the iterator reaches it, so an entry written or removed
    /// meanwhile may or may not appear; no key appears twice.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(100);
    /// for i in 0..5 { cache.insert(i, i * 10); }
    /// let mut entries: Vec<(u32, u32)> = cache.iter().collect();
    /// entries.sort();
    /// assert_eq!(entries, [(0, 0), (1, 10), (2, 20), (3, 30), (4, 40)]);
    /// assert_eq!(cache.stats().hits(), 0);
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V>
    where
        K: Clone,
    {
        Iter {
            inner: &self.inner,
            next_shard: 0,
            batch: Vec::new().into_iter(),
            taken_at: 0,
        }
    }
}
