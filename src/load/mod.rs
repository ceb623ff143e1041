//! Loading: single-flight `get_with` / `try_get_with` and the read-through
//! [`LoadingCache`] with refresh-ahead, stale-while-revalidate,
//! stale-if-error, early expiry (XFetch) and negative caching.
//!
//! - [`flight`]: one load per key, blocking and async waiters;
//! - [`fresh`]: the pure per-read decision (fresh, refresh due, stale, …);
//! - [`guard`]: keeps a load or write that overlapped another write from
//!   caching stale data;
//! - [`pool`]: the bounded `larder-reload-N` threads for background reloads;
//! - [`reloading`]: which values have a background reload under way (a
//!   hint that keeps reads in a refresh window off the flight map);
//! - [`loading`]: the cache that ties them together; [`builder`] its
//!   settings; [`ttl`] one value's lifetime given, read or changed by the
//!   caller (`insert_with_ttl`, `expires_in`, `expire_in`, `persist`).

pub(crate) mod builder;
pub(crate) mod flight;
pub(crate) mod fresh;
pub(crate) mod guard;
pub(crate) mod loading;
pub(crate) mod pool;
pub(crate) mod reloading;
pub(crate) mod ttl;

pub use builder::LoadingCacheBuilder;
pub use loading::LoadingCache;

/// The system of record a [`LoadingCache`] reads through.
///
/// `load` answers one key: `Ok(Some(v))` for a value, `Ok(None)` when the key
/// does not exist (cached as "absent" if the cache has a `negative_ttl`), or
/// an error (shared with every caller waiting for that load, never cached).
/// `load_many` answers a batch for [`LoadingCache::get_many`]; the default
/// calls `load` once per key, so override it when the store has a batch
/// query. Both run with no lock of the cache held, on a reader's thread or
/// on a `larder-reload-N` thread.
///
/// Any `Fn(&K) -> Result<Option<V>, E>` closure is a `Loader`.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use larder::{Cache, Loader};
///
/// struct Db(HashMap<u32, String>);
///
/// impl Loader<u32, String> for Db {
///     type Error = std::io::Error;
///     fn load(&self, key: &u32) -> Result<Option<String>, Self::Error> {
///         Ok(self.0.get(key).cloned())
///     }
///     fn load_many(&self, keys: &[u32]) -> Result<Vec<(u32, String)>, Self::Error> {
///         // One query for the whole batch.
///         Ok(keys.iter().filter_map(|k| Some((*k, self.0.get(k)?.clone()))).collect())
///     }
/// }
///
/// let db = Db(HashMap::from([(1, "one".to_string()), (2, "two".to_string())]));
/// let cache = Cache::builder().loader(db).build().unwrap();
/// let found = cache.get_many([1, 2, 3]).unwrap();
/// assert_eq!(found.len(), 2);
/// ```
pub trait Loader<K, V>: Send + Sync + 'static {
    /// The store's error type.
    type Error: Send + Sync + 'static;

    /// Loads one key.
    ///
    /// # Errors
    ///
    /// The store's failure; the cache returns it to the readers and caches
    /// nothing.
    fn load(&self, key: &K) -> Result<Option<V>, Self::Error>;

    /// Loads a batch of distinct keys; keys left out of the answer are
    /// absent. Pairs for keys not asked for are ignored; of two pairs for
    /// one key, the last is kept. The batch's read is loading every one of
    /// `keys`, so reading any of them from the cache here (the default's
    /// `load` included) panics rather than waiting for itself.
    ///
    /// # Errors
    ///
    /// The store's failure, which fails the whole batch.
    fn load_many(&self, keys: &[K]) -> Result<Vec<(K, V)>, Self::Error>
    where
        K: Clone,
    {
        load_each(keys, |key| self.load(key))
    }
}

/// The default `load_many` of [`Loader`] and [`Store`](crate::Store): one
/// `load` per key, absent keys left out, the first error returned.
pub(crate) fn load_each<K: Clone, V, E>(
    keys: &[K],
    load: impl Fn(&K) -> Result<Option<V>, E>,
) -> Result<Vec<(K, V)>, E> {
    let mut found = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(value) = load(key)? {
            found.push((key.clone(), value));
        }
    }
    Ok(found)
}

impl<K, V, E, F> Loader<K, V> for F
where
    F: Fn(&K) -> Result<Option<V>, E> + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    type Error = E;

    fn load(&self, key: &K) -> Result<Option<V>, E> {
        self(key)
    }
}
