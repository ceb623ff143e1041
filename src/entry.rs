//! The entry API: [`Cache::entry`] and [`Cache::entry_by_ref`] select a key,
//! and the selector either reads it or makes it ([`or_insert_with`] and its
//! kin) or changes it atomically ([`and_compute_with`] and its kin). The
//! names are moka's, and [`Entry`], [`Op`] and [`CompResult`] have its
//! methods and variants, so code written for moka's entry API reads the
//! same (importing them from `larder` rather than `moka` and
//! `moka::ops::compute`), with one difference: a compute's closure is
//! `FnMut` here (it runs again when a write lands meanwhile, see below)
//! where moka's is `FnOnce`, so a moka closure that moves a captured value
//! into its result (`and_upsert_with(|_| value)`) must clone it instead.
//!
//! Async code has the same operations with an `_async` suffix, as the
//! loaders have ([`Cache::get_with_async`]): [`or_insert_with_async`],
//! `or_optionally_insert_with_async` and `or_try_insert_with_async` take
//! a future, `or_insert_async` a value and `or_default_async` nothing; [`and_compute_with_async`], `and_try_compute_with_async` and
//! `and_upsert_with_async` a closure that returns one. They are moka's
//! `future::Cache` selector methods (there without the suffix, since
//! there a second cache type holds them). They wait for the key's flight
//! without blocking the executor's thread, and need no particular runtime.
//! An async compute's closure is `FnMut(Option<Entry<K, V>>) -> Fut`: it is
//! called again, as the sync one is run again, and the future it returns
//! owns what it needs (it cannot borrow the closure's captures).
//! Async code should use these forms: the sync ones block their thread
//! while they wait for the key, which in async code can wait for a task
//! suspended on that very thread (see `get_with_async`).
//!
//! Both halves stand on the single-flight table of
//! [`load::flight`](crate::load::flight), so there is one mechanism per key
//! for "one caller at a time":
//!
//! - the `or_*` methods are [`Cache::get_with`] and its kin, plus a flag
//!   saying whether this call's closure made the value;
//! - a compute *leads the key's flight* for as long as its closure runs,
//!   exactly as a loader does: other computes and loaders of the key wait
//!   for it, and it waits for theirs. The closure runs with no lock held and
//!   its operation is then applied under the shard's lock, where the flight
//!   shows whether a plain write of the key (`insert`, `remove`, an
//!   invalidation) landed meanwhile. If one did, the operation is thrown
//!   away and the closure runs again on the value that write left, so a
//!   compute never overwrites a write it did not see.
//!
//! An async compute is the same loop, its closure's future awaited as an
//! async loader's future is: each poll marked as the flight's (so waiting
//! for its own key panics rather than hangs), no lock held across an
//! await. Its guard of the flight lives in the caller's future, so a
//! future dropped in the middle (a cancelled task, a lost `select!`)
//! drops the guard, which abandons the flight as a panic does: the
//! operation is never applied, the waiters are woken, and one of them (or
//! the key's next caller) leads next. The `or_*_async` methods are the
//! async loaders, cancellation included.
//!
//! The plain writes do not wait for a compute: they mark its flight as they
//! mark a load's (an insert and a predicate's removal under the shard lock,
//! `remove` and `invalidate_all` just before they take it). Three changes
//! reach the key without marking the flight: a `remove` (or
//! `invalidate_all`) that marked before the compute began but takes the
//! entry after the closure read it, a size
//! eviction, and the reaping of an expired entry. Each takes the entry
//! away, so the apply step also runs the closure again when a value it was
//! shown no longer has an entry. Any other entry the apply step finds is
//! the one the closure was shown (maybe expired since), or none was shown
//! and it is an expired one, which a write treats as absent.
//!
//! [`or_insert_with`]: OwnedKeyEntrySelector::or_insert_with
//! [`and_compute_with`]: OwnedKeyEntrySelector::and_compute_with
//! [`or_insert_with_async`]: OwnedKeyEntrySelector::or_insert_with_async
//! [`and_compute_with_async`]: OwnedKeyEntrySelector::and_compute_with_async

use std::{borrow::Borrow, convert::Infallible, fmt, future::Future, hash::Hash, sync::Arc};

use crate::{
    Cache,
    cache::Verdict,
    load::flight::{Leader, LeaderGuard, Outcome, Role},
    maintenance::Awaited,
    shard::Stripe,
};

/// A key's entry as an entry-API call saw or made it: the key, a clone of
/// the value, and whether this call's closure produced that value.
///
/// # Examples
///
/// ```
/// let cache: larder::Cache<&str, u32> = larder::Cache::new(10);
/// let made = cache.entry("a").or_insert(1);
/// assert_eq!((made.key(), made.value(), made.is_fresh()), (&"a", &1, true));
/// let found = cache.entry("a").or_insert(2);
/// assert_eq!((found.is_fresh(), found.into_value()), (false, 1));
/// ```
#[derive(Clone, Debug)]
pub struct Entry<K, V> {
    key: Arc<K>,
    value: V,
    fresh: bool,
    replaced: bool,
}

impl<K, V> Entry<K, V> {
    fn new(key: Arc<K>, value: V, fresh: bool, replaced: bool) -> Self {
        Entry {
            key,
            value,
            fresh,
            replaced,
        }
    }

    /// The entry's key.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// assert_eq!(cache.entry("k".to_string()).or_insert(1).key(), "k");
    /// ```
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The value: a clone taken when the entry was read or made (the
    /// cache may hold another by now).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// assert_eq!(*cache.entry(1).or_insert(10).value(), 10);
    /// ```
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The value, consuming the entry.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// let v: Vec<u8> = cache.entry(1).or_insert_with(|| vec![1, 2]).into_value();
    /// assert_eq!(v, [1, 2]);
    /// ```
    pub fn into_value(self) -> V {
        self.value
    }

    /// True if this call's closure or future (or, for
    /// [`or_insert`](OwnedKeyEntrySelector::or_insert), its value) produced
    /// the value, false if it was found in the cache or made by a concurrent
    /// call this one waited for. A compute's entry is fresh when its closure
    /// put the value ([`CompResult::Inserted`], [`CompResult::ReplacedWith`]).
    ///
    /// A fresh value is not always cached: as for
    /// [`get_with`](Cache::get_with), a full cache may turn it away, and a
    /// write of the key while the `or_insert_with` closure ran keeps it out.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// assert!(cache.entry(1).or_insert_with(|| 1).is_fresh());
    /// assert!(!cache.entry(1).or_insert_with(|| 2).is_fresh());
    /// ```
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// True if the value replaced one the key held (an
    /// [`and_upsert_with`](OwnedKeyEntrySelector::and_upsert_with) that
    /// updated, a [`CompResult::ReplacedWith`]), even if it is equal to it.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// let first = cache.entry(1).and_upsert_with(|_| 1);
    /// let second = cache.entry(1).and_upsert_with(|_| 1);
    /// assert!(!first.is_old_value_replaced());
    /// assert!(second.is_old_value_replaced());
    /// ```
    pub fn is_old_value_replaced(&self) -> bool {
        self.replaced
    }
}

/// What an [`and_compute_with`](OwnedKeyEntrySelector::and_compute_with)
/// closure asks for.
///
/// # Examples
///
/// ```
/// use larder::Op;
/// let cache = larder::Cache::new(10);
/// cache.entry("k").and_compute_with(|_| Op::Put(1));
/// cache.entry("k").and_compute_with(|_| Op::<u32>::Nop);
/// assert_eq!(cache.get("k"), Some(1));
/// cache.entry("k").and_compute_with(|_| Op::Remove);
/// assert_eq!(cache.get("k"), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<V> {
    /// Leave the key as it is.
    Nop,
    /// Insert this value, or replace the key's value with it. A write like
    /// [`insert`](Cache::insert): the entry's lifetime starts again (time
    /// to live, the `Expiry` create or update hook), and a full cache may
    /// evict other keys or turn this value away.
    Put(V),
    /// Remove the key's entry, as [`remove`](Cache::remove) does.
    Remove,
}

/// What an [`and_compute_with`](OwnedKeyEntrySelector::and_compute_with)
/// did, with the entry it concerns.
///
/// # Examples
///
/// ```
/// use larder::{CompResult, Op};
/// let cache = larder::Cache::new(10);
/// let bump = |e: Option<larder::Entry<&str, u32>>| Op::Put(e.map_or(1, |e| e.into_value() + 1));
/// assert!(matches!(cache.entry("n").and_compute_with(bump), CompResult::Inserted(_)));
/// let result = cache.entry("n").and_compute_with(bump);
/// assert!(matches!(&result, CompResult::ReplacedWith(e) if *e.value() == 2));
/// assert_eq!(result.into_entry().map(|e| e.into_value()), Some(2));
/// ```
#[derive(Debug)]
pub enum CompResult<K, V> {
    /// The key had no live entry and still has none (the closure returned
    /// [`Op::Nop`] or [`Op::Remove`]).
    StillNone(Arc<K>),
    /// The key's entry was left as it was ([`Op::Nop`]); this is its value.
    Unchanged(Entry<K, V>),
    /// The key had no live entry and [`Op::Put`] wrote this value. If the
    /// cache turned it away at once (a full cache, as for
    /// [`insert`](Cache::insert)), the result still says `Inserted`: the
    /// listener hears of the value as a [`Size`](crate::RemovalCause::Size)
    /// eviction (as [`Expired`](crate::RemovalCause::Expired) if an expiry
    /// hook gave it no lifetime at all), and a `get` right after finds
    /// nothing.
    Inserted(Entry<K, V>),
    /// [`Op::Put`] replaced the key's live value with this one (the
    /// listener hears of the old one as
    /// [`Replaced`](crate::RemovalCause::Replaced)). A value turned away
    /// by the policy is reported as for `Inserted`.
    ReplacedWith(Entry<K, V>),
    /// [`Op::Remove`] removed the key's entry, which held this value (the
    /// listener hears of it as [`Explicit`](crate::RemovalCause::Explicit)).
    Removed(Entry<K, V>),
}

impl<K, V> CompResult<K, V> {
    /// The entry, unless the result is `StillNone`.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::Op;
    /// let cache = larder::Cache::new(10);
    /// let none = cache.entry(1).and_compute_with(|_| Op::<u32>::Remove);
    /// assert!(none.into_entry().is_none());
    /// let put = cache.entry(1).and_compute_with(|_| Op::Put(5));
    /// assert_eq!(put.into_entry().unwrap().into_value(), 5);
    /// ```
    pub fn into_entry(self) -> Option<Entry<K, V>> {
        match self {
            CompResult::StillNone(_) => None,
            CompResult::Unchanged(e)
            | CompResult::Inserted(e)
            | CompResult::ReplacedWith(e)
            | CompResult::Removed(e) => Some(e),
        }
    }

    /// The entry.
    ///
    /// # Panics
    ///
    /// If the result is `StillNone`.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::Op;
    /// let cache = larder::Cache::new(10);
    /// let put = cache.entry(1).and_compute_with(|_| Op::Put(5));
    /// assert_eq!(*put.unwrap().value(), 5);
    /// ```
    pub fn unwrap(self) -> Entry<K, V> {
        self.into_entry()
            .expect("CompResult::unwrap called on StillNone")
    }
}

/// The key [`Cache::entry`] selected, owned, and the operations on it.
///
/// # Examples
///
/// ```
/// let cache = larder::Cache::new(10);
/// let selected = cache.entry("k");
/// assert_eq!(selected.or_insert(1).into_value(), 1);
/// ```
#[must_use = "an entry selector does nothing until one of its methods is called"]
pub struct OwnedKeyEntrySelector<'a, K, V> {
    cache: &'a Cache<K, V>,
    key: K,
}

/// The key [`Cache::entry_by_ref`] selected, borrowed, and the operations
/// on it: those of [`OwnedKeyEntrySelector`], each run on an owned copy of
/// the key made with `to_owned` (the returned [`Entry`] holds one).
///
/// # Examples
///
/// ```
/// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
/// assert_eq!(cache.entry_by_ref("k").or_insert(1).key(), "k");
/// ```
#[must_use = "an entry selector does nothing until one of its methods is called"]
pub struct RefKeyEntrySelector<'a, K, Q: ?Sized, V> {
    cache: &'a Cache<K, V>,
    key: &'a Q,
}

impl<K: fmt::Debug, V> fmt::Debug for OwnedKeyEntrySelector<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedKeyEntrySelector")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<K, Q: fmt::Debug + ?Sized, V> fmt::Debug for RefKeyEntrySelector<'_, K, Q, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefKeyEntrySelector")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Selects `key` for an entry operation: read it or make it
    /// ([`or_insert_with`](OwnedKeyEntrySelector::or_insert_with) and its
    /// kin), or change it atomically
    /// ([`and_compute_with`](OwnedKeyEntrySelector::and_compute_with) and
    /// its kin).
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(100);
    /// for word in ["a", "b", "a"] {
    ///     cache.entry(word).and_upsert_with(|seen| seen.map_or(1, |e| e.into_value() + 1));
    /// }
    /// assert_eq!(cache.get("a"), Some(2));
    /// assert!(!cache.entry("b").or_insert(0).is_fresh());
    /// ```
    pub fn entry(&self, key: K) -> OwnedKeyEntrySelector<'_, K, V> {
        OwnedKeyEntrySelector { cache: self, key }
    }

    /// [`entry`](Self::entry) for a borrowed key, such as a `&str` for a
    /// `String` key: the operation called on the selector makes the owned
    /// key with `to_owned`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, usize> = larder::Cache::new(100);
    /// let len = cache.entry_by_ref("four").or_insert_with(|| "four".len());
    /// assert_eq!((len.key().as_str(), *len.value()), ("four", 4));
    /// ```
    pub fn entry_by_ref<'a, Q>(&'a self, key: &'a Q) -> RefKeyEntrySelector<'a, K, Q, V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        RefKeyEntrySelector { cache: self, key }
    }

    /// `get_with` that also says whether `init` ran (and so made the value).
    fn get_or_init(&self, key: K, init: impl FnOnce() -> V) -> Entry<K, V> {
        let mut fresh = false;
        let value = self.get_with(key.clone(), || {
            fresh = true;
            init()
        });
        Entry::new(Arc::new(key), value, fresh, false)
    }

    /// `try_get_with` that also says whether `init` ran.
    fn try_get_or_init<E>(
        &self,
        key: K,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<Entry<K, V>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        let mut fresh = false;
        let value = self.try_get_with(key.clone(), || {
            fresh = true;
            init()
        })?;
        Ok(Entry::new(Arc::new(key), value, fresh, false))
    }

    /// `optionally_get_with` that also says whether `init` ran.
    fn get_or_init_optionally(
        &self,
        key: K,
        init: impl FnOnce() -> Option<V>,
    ) -> Option<Entry<K, V>> {
        let mut fresh = false;
        let value = self.optionally_get_with(key.clone(), || {
            fresh = true;
            init()
        })?;
        Some(Entry::new(Arc::new(key), value, fresh, false))
    }

    /// [`get_or_init`](Self::get_or_init) for a future: `get_with_async`
    /// that also says whether `init` was polled.
    async fn get_or_init_async(&self, key: K, init: impl Future<Output = V>) -> Entry<K, V> {
        let mut fresh = false;
        let value = self
            .get_with_async(key.clone(), ran(&mut fresh, init))
            .await;
        Entry::new(Arc::new(key), value, fresh, false)
    }

    /// `try_get_with_async` that also says whether `init` was polled.
    async fn try_get_or_init_async<E>(
        &self,
        key: K,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<Entry<K, V>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        let mut fresh = false;
        let value = self
            .try_get_with_async(key.clone(), ran(&mut fresh, init))
            .await?;
        Ok(Entry::new(Arc::new(key), value, fresh, false))
    }

    /// `optionally_get_with_async` that also says whether `init` was
    /// polled.
    async fn get_or_init_optionally_async(
        &self,
        key: K,
        init: impl Future<Output = Option<V>>,
    ) -> Option<Entry<K, V>> {
        let mut fresh = false;
        let value = self
            .optionally_get_with_async(key.clone(), ran(&mut fresh, init))
            .await?;
        Some(Entry::new(Arc::new(key), value, fresh, false))
    }

    /// Runs `f` on `key`'s live entry while leading the key's flight, and
    /// applies the operation it returns, until one is applied with no
    /// write of the key in between (see the module docs).
    fn compute<E>(
        &self,
        key: K,
        mut f: impl FnMut(Option<Entry<K, V>>) -> Result<Op<V>, E>,
    ) -> Result<CompResult<K, V>, E> {
        let key = Arc::new(key);
        let mut first = true;
        loop {
            let guard = self.lead(&key);
            let current = self.look(&key, &mut first);
            let op = {
                // Waiters of this flight wait for user code, as for a loader.
                let _awaited = Awaited::here();
                f(shown(&key, &current))?
            };
            // An error or a panic above drops the guard: the flight is
            // abandoned and the waiters go on without it.
            if let Some(result) = self.apply(&key, guard, current, op) {
                return Ok(result);
            }
        }
    }

    /// [`compute`](Self::compute) for a closure that returns a future: the
    /// same loop, waiting for the key's flight and awaiting the closure's
    /// future without blocking. If this call's future is dropped while it
    /// leads, its guard goes with it and abandons the flight, as a panic
    /// does: the cache is left as it was and a waiter leads next.
    async fn compute_async<E, Fut>(
        &self,
        key: K,
        mut f: impl FnMut(Option<Entry<K, V>>) -> Fut,
    ) -> Result<CompResult<K, V>, E>
    where
        Fut: Future<Output = Result<Op<V>, E>>,
    {
        let key = Arc::new(key);
        let mut first = true;
        loop {
            let guard = self.lead_async(&key).await;
            // The look runs the read hook on a hit: on this thread with
            // the flight claimed, as the apply step below, so a hook that
            // loads or computes the key panics instead of waiting for
            // itself. (`drive` marks each poll after it.)
            guard.claim();
            let current = self.look(&key, &mut first);
            let entry = shown(&key, &current);
            // `f` is called inside the drive too: its body, before the
            // future it returns, is user code that may wait for the key.
            let op = guard.drive(async { f(entry).await }).await?;
            // Applied on this thread with the flight still open: a weigher
            // or expiry hook that loads or computes the key then panics, as
            // under the blocking compute, instead of waiting for itself
            // (between polls the flight is led by no thread).
            guard.claim();
            if let Some(result) = self.apply(&key, guard, current, op) {
                return Ok(result);
            }
        }
    }

    /// What a compute's closure is shown: the key's live value, read as it
    /// leads the flight. The first look of a call counts one hit or miss,
    /// as a `get` does; a look again, after a write, counts nothing.
    fn look(&self, key: &K, first: &mut bool) -> Option<V> {
        if !std::mem::take(first) {
            return self.peek(key);
        }
        // A hit runs the read hook, user code that waiters of this flight
        // wait for, as they wait for the closure.
        let _awaited = Awaited::here();
        let (value, _) = self.get_counting_hit(key);
        if value.is_none() {
            self.record_miss();
        }
        value
    }

    /// Leads `key`'s flight, first waiting for any load or compute of the
    /// key under way.
    ///
    /// # Panics
    ///
    /// If this thread leads that flight already (a closure computing or
    /// loading its own key), rather than waiting for itself.
    fn lead(&self, key: &K) -> LeaderGuard<K, V> {
        loop {
            match self.flights().begin(key, Leader::here()) {
                Role::Leader(guard) => return guard,
                Role::Waiter(flight) => drop(flight.wait()),
            }
        }
    }

    /// [`lead`](Self::lead) for async callers: waits without blocking,
    /// and panics as it does when polled on the thread running the key's
    /// flight (an async closure computing or loading its own key).
    async fn lead_async(&self, key: &K) -> LeaderGuard<K, V> {
        loop {
            match self.flights().begin(key, Leader::Detached) {
                Role::Leader(guard) => return guard,
                Role::Waiter(flight) => drop(flight.wait_async().await),
            }
        }
    }

    /// Applies `op`, decided on `current`, unless a write of the key
    /// landed since `current` was read: then `None`, and the flight is
    /// abandoned for the caller to lead again.
    fn apply(
        &self,
        key: &Arc<K>,
        guard: LeaderGuard<K, V>,
        current: Option<V>,
        op: Op<V>,
    ) -> Option<CompResult<K, V>> {
        let key = key.clone();
        match (op, current) {
            (Op::Nop | Op::Remove, None) => {
                guard.finish(Outcome::Abandoned);
                Some(CompResult::StillNone(key))
            }
            (Op::Nop, Some(v)) => {
                // Not shared: it may have expired (or been evicted) since
                // `f` was shown it, after a waiter's lookup found none. The
                // waiters look again, as a load's leader first does.
                guard.finish(Outcome::Abandoned);
                Some(CompResult::Unchanged(Entry::new(key, v, false, false)))
            }
            (Op::Remove, Some(v)) => self
                .apply_remove(&key, guard)
                .then(|| CompResult::Removed(Entry::new(key, v, false, false))),
            (Op::Put(v), current) => {
                let existed = current.is_some();
                let v = self.apply_put(&key, guard, v, existed)?;
                Some(match existed {
                    true => CompResult::ReplacedWith(Entry::new(key, v, true, true)),
                    false => CompResult::Inserted(Entry::new(key, v, true, false)),
                })
            }
        }
    }

    /// Writes `value` unless the key was written since the closure read it
    /// (`existed`: it found a live entry); returns the value if it did.
    /// What the write evicts reaches the listener once the flight is
    /// closed, as for a load's fill.
    fn apply_put(&self, key: &K, guard: LeaderGuard<K, V>, value: V, existed: bool) -> Option<V> {
        let mut removed = self.delivery();
        // Bound after `removed`, so dropped (the flight abandoned) before
        // the listener runs if the weigher or a hook panics.
        let guard = guard;
        // Under the shard lock. `found` is the key's slot, live or not: a
        // value the closure saw that has no slot any more was removed or
        // evicted without marking the flight (see the module docs).
        let stale = |found: Option<&V>| guard.written() || (existed && found.is_none());
        let decide = |found: Option<&V>, _: Stripe<'_>| {
            if stale(found) {
                Verdict::Skip
            } else {
                Verdict::Insert
            }
        };
        let landed = {
            // The weigher and the expiry hooks run here.
            let _awaited = Awaited::here();
            self.insert_if(key.clone(), value.clone(), None, decide, &mut removed)
        };
        if !landed {
            return None;
        }
        guard.finish(Outcome::Loaded(value.clone()));
        Some(value)
    }

    /// Removes the key's entry unless the key was written since the
    /// closure read its value; returns whether it did.
    fn apply_remove(&self, key: &K, guard: LeaderGuard<K, V>) -> bool {
        let mut removed = self.delivery();
        let guard = guard;
        let mut doomed = false;
        self.remove_if(
            key,
            |found, _| {
                doomed = !guard.written() && found.is_some();
                doomed
            },
            &mut removed,
        );
        if doomed {
            guard.finish(Outcome::Abandoned);
        }
        doomed
    }
}

/// The entry a compute's closure is shown for the value it read.
fn shown<K, V: Clone>(key: &Arc<K>, current: &Option<V>) -> Option<Entry<K, V>> {
    current
        .clone()
        .map(|v| Entry::new(key.clone(), v, false, false))
}

/// `init`, noting in `ran` that it was polled: whether an `or_*_async`
/// call's own future made the value.
async fn ran<F: Future>(ran: &mut bool, init: F) -> F::Output {
    *ran = true;
    init.await
}

impl<K, V> OwnedKeyEntrySelector<'_, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The key's entry; on a miss, `init` makes the value, which is cached
    /// and returned. Exactly [`get_with`](Cache::get_with), plus
    /// [`Entry::is_fresh`], true when this call's `init` made the value.
    /// Counts a hit or a miss, and a load when `init` runs.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `get_with`: one `init` runs per key at a time; the other
    /// callers (of this method, `get_with` and the rest of the family)
    /// wait for it and share its value, their entries not fresh. A caller
    /// also waits for an [`and_compute_with`](Self::and_compute_with) of
    /// the key under way. If `init` panics, the panic reaches this caller
    /// and a waiting caller runs its own. `init` runs with no lock held and
    /// may use the cache, except to load or compute its own key, which
    /// panics rather than waiting for itself. A write of the key while
    /// `init` runs keeps the value out of the cache (see `get_with`); it is
    /// still returned, as fresh.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// let made = cache.entry("answer").or_insert_with(|| 42);
    /// assert!(made.is_fresh());
    /// let found = cache.entry("answer").or_insert_with(|| unreachable!());
    /// assert_eq!((found.into_value(), cache.stats().loads()), (42, 1));
    /// ```
    pub fn or_insert_with(self, init: impl FnOnce() -> V) -> Entry<K, V> {
        self.cache.get_or_init(self.key, init)
    }

    /// [`or_insert_with`](Self::or_insert_with) with a ready value, used
    /// only on a miss (and then fresh).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `or_insert_with`: a caller that finds a load or compute of
    /// the key under way waits for it, and returns its value.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// assert!(cache.entry(1).or_insert("one").is_fresh());
    /// let again = cache.entry(1).or_insert("uno");
    /// assert_eq!((again.into_value(), cache.get(&1)), ("one", Some("one")));
    /// ```
    pub fn or_insert(self, default: V) -> Entry<K, V> {
        self.or_insert_with(|| default)
    }

    /// [`or_insert_with`](Self::or_insert_with) with `V::default()`.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `or_insert_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<&str, Vec<u8>> = larder::Cache::new(10);
    /// let e = cache.entry("empty").or_default();
    /// assert!(e.is_fresh() && e.value().is_empty());
    /// ```
    pub fn or_default(self) -> Entry<K, V>
    where
        V: Default,
    {
        self.or_insert_with(V::default)
    }

    /// [`or_insert_with`](Self::or_insert_with) for an `init` that may find
    /// no value, as [`optionally_get_with`](Cache::optionally_get_with):
    /// `None` is returned, nothing is cached, and the callers waiting for
    /// this `init` get `None` too. A `None` counts as a successful load in
    /// [`stats`](Cache::stats) (an answer, not a failure).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `or_insert_with`: one `init` at a time; the callers of this
    /// method and of `optionally_get_with` (and its `_async` and `_by_ref`
    /// forms) waiting for it share its value or its `None`, other waiters
    /// (`get_with`, say) run their own `init` after a `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<u32, String> = larder::Cache::new(10);
    /// assert!(cache.entry(1).or_optionally_insert_with(|| None).is_none());
    /// assert!(!cache.contains_key(&1));
    /// let e = cache.entry(1).or_optionally_insert_with(|| Some("one".to_string()));
    /// assert_eq!(e.map(|e| e.into_value()).as_deref(), Some("one"));
    /// ```
    pub fn or_optionally_insert_with(
        self,
        init: impl FnOnce() -> Option<V>,
    ) -> Option<Entry<K, V>> {
        self.cache.get_or_init_optionally(self.key, init)
    }

    /// [`or_insert_with`](Self::or_insert_with) for a fallible `init`, as
    /// [`try_get_with`](Cache::try_get_with): a value is cached and
    /// returned, an error is returned (as `Arc<E>`) and not cached.
    ///
    /// # Errors
    ///
    /// The error `init` returned, or the one returned by the concurrent
    /// caller whose `init` this call waited for (same type `E` only).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `try_get_with`: one `init` at a time, its value or error
    /// shared with the callers waiting for it.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<u32, u32> = larder::Cache::new(10);
    /// let err = cache.entry(1).or_try_insert_with(|| Err("db down")).unwrap_err();
    /// assert_eq!(*err, "db down");
    /// let ok = cache.entry(1).or_try_insert_with(|| Ok::<_, &str>(7)).unwrap();
    /// assert!(ok.is_fresh());
    /// ```
    pub fn or_try_insert_with<E>(
        self,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<Entry<K, V>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        self.cache.try_get_or_init(self.key, init)
    }

    /// Changes the key's entry atomically: `f` is shown the live entry (or
    /// `None`: absent or expired) and returns an [`Op`], which is applied
    /// and reported as a [`CompResult`]. Counts one hit or miss (the first
    /// look at the key) and no load.
    ///
    /// # Concurrent calls on the same key
    ///
    /// Computes of one key run one at a time, in turn with its loads
    /// (`get_with`, `or_insert_with` and their kin): each waits for the one
    /// under way, so eight threads each adding one a thousand times leave
    /// exactly 8000. `f` runs with no lock held and may use the cache,
    /// except to load or compute its own key, which panics rather than
    /// waiting for itself. Callers of `get_with` that were waiting for it
    /// get the value put; after `Op::Nop` they look at the key again (the
    /// value `f` was shown may have expired since), and after `Op::Remove`,
    /// or on finding no live value, they load.
    ///
    /// # Writes during the compute
    ///
    /// Plain writes do not wait for a compute. If one lands while `f` runs
    /// (an [`insert`](Cache::insert) of the key, a
    /// [`remove`](Cache::remove) or [`invalidate`](Cache::invalidate),
    /// [`invalidate_all`](Cache::invalidate_all), an
    /// [`invalidate_entries_if`](Cache::invalidate_entries_if) that removes
    /// it), or the entry `f` was shown is evicted or reaped, the operation
    /// `f` returned is dropped and `f` runs again on what the key holds
    /// now. So `f` may run more than once (hence `FnMut`, where moka's is
    /// `FnOnce`: a value `f` returns must be cloned from what it captured,
    /// not moved out of it), only its last run's operation is applied, and
    /// a compute never overwrites a write it was not shown. An `Op::Nop`
    /// is never run again: it wrote nothing, and reports the value `f` was
    /// shown. A key written without pause can keep `f` running; each write
    /// itself goes in at once. So `f` must not itself write its own key
    /// on every run (an `insert`, `remove` or `invalidate` of it, or an
    /// `invalidate_all`, whatever the key): each such write makes it run
    /// again, for ever.
    ///
    /// An entry that expires after `f` was shown it is still the one the
    /// operation applies to: `Op::Put` reports `ReplacedWith` and
    /// `Op::Remove` `Removed`, while the listener hears of the old value as
    /// [`Expired`](crate::RemovalCause::Expired).
    ///
    /// # Panics
    ///
    /// If `f` panics, the panic reaches the caller and the cache is left as
    /// it was; callers waiting for the key go on. Likewise if `f` computes
    /// or loads its own key.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::{CompResult, Op};
    /// let cache = larder::Cache::new(10);
    /// // A counter that is removed when it reaches 2.
    /// let step = |e: Option<larder::Entry<&str, u32>>| match e.map(|e| e.into_value()) {
    ///     None => Op::Put(1),
    ///     Some(n) if n < 2 => Op::Put(n + 1),
    ///     Some(_) => Op::Remove,
    /// };
    /// assert!(matches!(cache.entry("c").and_compute_with(step), CompResult::Inserted(_)));
    /// assert!(matches!(cache.entry("c").and_compute_with(step), CompResult::ReplacedWith(_)));
    /// let removed = cache.entry("c").and_compute_with(step);
    /// assert!(matches!(removed, CompResult::Removed(e) if *e.value() == 2));
    /// assert!(!cache.contains_key("c"));
    /// ```
    pub fn and_compute_with(
        self,
        mut f: impl FnMut(Option<Entry<K, V>>) -> Op<V>,
    ) -> CompResult<K, V> {
        match self.cache.compute(self.key, |e| Ok::<_, Infallible>(f(e))) {
            Ok(result) => result,
            Err(never) => match never {},
        }
    }

    /// [`and_compute_with`](Self::and_compute_with) for a fallible `f`: an
    /// `Err` leaves the cache as it was and is returned.
    ///
    /// # Errors
    ///
    /// The error `f` returned (on its last run).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `and_compute_with`, which this is; `f` may run more than once.
    ///
    /// # Examples
    ///
    /// ```
    /// use larder::Op;
    /// let cache = larder::Cache::new(10);
    /// cache.insert("stock", 1u32);
    /// let take = |e: Option<larder::Entry<&str, u32>>| match e.map(|e| e.into_value()) {
    ///     Some(n) if n > 0 => Ok(Op::Put(n - 1)),
    ///     _ => Err("sold out"),
    /// };
    /// assert!(cache.entry("stock").and_try_compute_with(take).is_ok());
    /// assert_eq!(cache.entry("stock").and_try_compute_with(take).unwrap_err(), "sold out");
    /// assert_eq!(cache.get("stock"), Some(0));
    /// ```
    pub fn and_try_compute_with<E>(
        self,
        f: impl FnMut(Option<Entry<K, V>>) -> Result<Op<V>, E>,
    ) -> Result<CompResult<K, V>, E> {
        self.cache.compute(self.key, f)
    }

    /// Inserts or updates the key's value atomically: `f` is shown the live
    /// entry (or `None`) and returns the value to put. The returned entry
    /// holds it, fresh, and says whether it replaced a value
    /// ([`Entry::is_old_value_replaced`]).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`and_compute_with`](Self::and_compute_with): upserts and
    /// computes of a key run one at a time, and `f` runs again if a plain
    /// write of the key lands while it runs.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = larder::Cache::new(10);
    /// let add = |e: Option<larder::Entry<&str, u64>>| e.map_or(0, |e| e.into_value()) + 5;
    /// assert!(!cache.entry("total").and_upsert_with(add).is_old_value_replaced());
    /// assert_eq!(cache.entry("total").and_upsert_with(add).into_value(), 10);
    /// ```
    pub fn and_upsert_with(self, mut f: impl FnMut(Option<Entry<K, V>>) -> V) -> Entry<K, V> {
        self.and_compute_with(|e| Op::Put(f(e)))
            .into_entry()
            .expect("a put reports the entry it wrote")
    }

    /// The async form of [`or_insert_with`](Self::or_insert_with): the
    /// key's entry; on a miss, `init` is awaited and its output cached and
    /// returned. Exactly [`get_with_async`](Cache::get_with_async), plus
    /// [`Entry::is_fresh`], true when this call's `init` made the value.
    /// `init` is polled only if this call leads the load. Counts a hit or
    /// a miss, and a load when `init` runs.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `or_insert_with`: one load or compute of the key at a time,
    /// from sync and async callers alike; the others wait for it and share
    /// its value, their entries not fresh. Waiting never blocks the
    /// executor's thread: the task is woken when the load or compute ends,
    /// on any executor (larder depends on no runtime). While it is polled,
    /// `init` may use the cache, except to load or compute its own key,
    /// which panics rather than waiting for itself. A write of the key
    /// while `init` runs keeps its value out of the cache; it is still
    /// returned, as fresh.
    ///
    /// # Cancellation
    ///
    /// If this call's future is dropped while `init` runs, nothing is
    /// cached, and one of the waiting callers (or the key's next caller)
    /// runs its own `init`: nobody waits for ever.
    ///
    /// # Panics
    ///
    /// If `init` panics as it is polled, the panic reaches this caller and
    /// a waiting caller runs its own `init`; likewise if `init` loads or
    /// computes its own key.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache = larder::Cache::new(10);
    /// let made = block_on(cache.entry("answer").or_insert_with_async(async { 42 }));
    /// assert!(made.is_fresh());
    /// let found = block_on(cache.entry("answer").or_insert_with_async(async { unreachable!() }));
    /// assert_eq!((found.is_fresh(), found.into_value()), (false, 42));
    /// ```
    pub async fn or_insert_with_async(self, init: impl Future<Output = V>) -> Entry<K, V> {
        self.cache.get_or_init_async(self.key, init).await
    }

    /// [`or_insert_with_async`](Self::or_insert_with_async) with a ready
    /// value, used only on a miss (and then fresh): the async form of
    /// [`or_insert`](Self::or_insert), waiting for a load or compute of the
    /// key under way without blocking the executor's thread.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache = larder::Cache::new(10);
    /// assert!(block_on(cache.entry(1).or_insert_async("one")).is_fresh());
    /// let again = block_on(cache.entry(1).or_insert_async("uno"));
    /// assert_eq!((again.is_fresh(), again.into_value()), (false, "one"));
    /// ```
    pub async fn or_insert_async(self, default: V) -> Entry<K, V> {
        self.or_insert_with_async(async { default }).await
    }

    /// [`or_insert_with_async`](Self::or_insert_with_async) with
    /// `V::default()`: the async form of [`or_default`](Self::or_default).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<&str, Vec<u8>> = larder::Cache::new(10);
    /// let e = block_on(cache.entry("empty").or_default_async());
    /// assert!(e.is_fresh() && e.value().is_empty());
    /// ```
    pub async fn or_default_async(self) -> Entry<K, V>
    where
        V: Default,
    {
        self.or_insert_with_async(async { V::default() }).await
    }

    /// The async form of
    /// [`or_optionally_insert_with`](Self::or_optionally_insert_with):
    /// `Some(v)` is cached and returned, `None` returned and not cached. A
    /// `None` counts as a successful load in [`stats`](Cache::stats).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `or_optionally_insert_with`: one `init` at a time, and the
    /// waiting callers that can return a `None` (this method and
    /// `optionally_get_with` in all their forms) share its value or its
    /// `None`; other waiters run their own `init` after a `None`. Waiting
    /// is as for [`or_insert_with_async`](Self::or_insert_with_async).
    ///
    /// # Cancellation
    ///
    /// As for `or_insert_with_async`: a dropped call caches nothing, and a
    /// waiting caller runs its own `init`.
    ///
    /// # Panics
    ///
    /// As for `or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<u32, String> = larder::Cache::new(10);
    /// assert!(block_on(cache.entry(1).or_optionally_insert_with_async(async { None })).is_none());
    /// assert!(!cache.contains_key(&1));
    /// let e = block_on(cache.entry(1).or_optionally_insert_with_async(async { Some("one".into()) }));
    /// assert_eq!(e.map(|e| e.into_value()).as_deref(), Some("one"));
    /// ```
    pub async fn or_optionally_insert_with_async(
        self,
        init: impl Future<Output = Option<V>>,
    ) -> Option<Entry<K, V>> {
        self.cache
            .get_or_init_optionally_async(self.key, init)
            .await
    }

    /// The async form of [`or_try_insert_with`](Self::or_try_insert_with):
    /// a value is cached and returned, an error is returned (as `Arc<E>`)
    /// and not cached.
    ///
    /// # Errors
    ///
    /// The error `init` returned, or the one returned by the concurrent
    /// caller whose `init` this call waited for (same type `E` only).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`try_get_with_async`](Cache::try_get_with_async): one `init`
    /// at a time, its value or error shared with the callers waiting for
    /// it, who wait without blocking.
    ///
    /// # Cancellation
    ///
    /// As for [`or_insert_with_async`](Self::or_insert_with_async).
    ///
    /// # Panics
    ///
    /// As for `or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<u32, u32> = larder::Cache::new(10);
    /// let err = block_on(cache.entry(1).or_try_insert_with_async(async { Err("db down") }));
    /// assert_eq!(*err.unwrap_err(), "db down");
    /// assert!(!cache.contains_key(&1)); // errors are not cached
    /// let ok = block_on(cache.entry(1).or_try_insert_with_async(async { Ok::<_, &str>(7) }));
    /// assert!(ok.unwrap().is_fresh());
    /// ```
    pub async fn or_try_insert_with_async<E>(
        self,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<Entry<K, V>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        self.cache.try_get_or_init_async(self.key, init).await
    }

    /// The async form of [`and_compute_with`](Self::and_compute_with):
    /// changes the key's entry atomically. `f` is shown the live entry (or
    /// `None`: absent or expired) and returns a future of the [`Op`] to
    /// apply, which is reported as a [`CompResult`]. Counts one hit or miss
    /// (the first look at the key) and no load.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `and_compute_with`: this call leads the key's flight while
    /// `f`'s future runs, so the key's computes and loads, sync and async,
    /// run one at a time, each waiting for the one under way (an async
    /// caller without blocking the executor's thread). No lock is held
    /// while `f` or its future runs, nor across an await. Callers of
    /// `get_with` and its kin that were waiting get the value put, as for
    /// `and_compute_with`. `f` and its future may use the cache, except to
    /// load or compute its own key, which panics rather than waiting for
    /// itself.
    ///
    /// # Writes during the compute
    ///
    /// As for `and_compute_with`: if a plain write of the key lands while
    /// the future runs (or the entry `f` was shown is evicted or reaped),
    /// the operation is dropped, and `f` is called again on what the key
    /// holds now and its new future awaited; a compute never overwrites a
    /// write it was not shown. Hence `FnMut` (moka's is `FnOnce`): `f` may
    /// be called more than once, and the future it returns cannot borrow
    /// from `f`'s captures, so it moves in clones of them (`|e| { let db =
    /// db.clone(); async move { .. } }`). An `Op::Nop` is never run again.
    /// A closure whose parameter is annotated with a borrowed key type
    /// spells the key's lifetime (`Entry<&'static str, _>`, not
    /// `Entry<&str, _>`, which makes the closure take any lifetime, one
    /// its future could not keep).
    ///
    /// # Cancellation
    ///
    /// If this call's future is dropped while `f`'s future runs, its
    /// operation is never applied: the cache is left as it was, and the
    /// callers waiting for the key go on, one of them (or the key's next
    /// caller) leading next. Dropped while it waits for another caller's
    /// load or compute of the key, it just stops waiting.
    ///
    /// # Panics
    ///
    /// If `f` or its future panics, the panic reaches this caller and the
    /// cache is left as it was; callers waiting for the key go on. Likewise
    /// if `f` computes or loads its own key.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// use larder::{CompResult, Op};
    /// let cache = larder::Cache::new(10);
    /// // A counter that is removed when it reaches 2.
    /// let step = |e: Option<larder::Entry<&'static str, u32>>| async move {
    ///     match e.map(|e| e.into_value()) {
    ///         None => Op::Put(1),
    ///         Some(n) if n < 2 => Op::Put(n + 1),
    ///         Some(_) => Op::Remove,
    ///     }
    /// };
    /// let first = block_on(cache.entry("c").and_compute_with_async(step));
    /// assert!(matches!(first, CompResult::Inserted(_)));
    /// block_on(cache.entry("c").and_compute_with_async(step));
    /// let removed = block_on(cache.entry("c").and_compute_with_async(step));
    /// assert!(matches!(removed, CompResult::Removed(e) if *e.value() == 2));
    /// assert!(!cache.contains_key("c"));
    /// ```
    pub async fn and_compute_with_async<Fut>(
        self,
        mut f: impl FnMut(Option<Entry<K, V>>) -> Fut,
    ) -> CompResult<K, V>
    where
        Fut: Future<Output = Op<V>>,
    {
        let f = |e| {
            let op = f(e);
            async move { Ok::<_, Infallible>(op.await) }
        };
        match self.cache.compute_async(self.key, f).await {
            Ok(result) => result,
            Err(never) => match never {},
        }
    }

    /// The async form of
    /// [`and_try_compute_with`](Self::and_try_compute_with): an `Err` from
    /// `f`'s future leaves the cache as it was and is returned.
    ///
    /// # Errors
    ///
    /// The error `f`'s future returned (on its last run).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`and_compute_with_async`](Self::and_compute_with_async),
    /// which this is; `f` may be called more than once.
    ///
    /// # Cancellation
    ///
    /// As for `and_compute_with_async`: the cache is left as it was.
    ///
    /// # Panics
    ///
    /// As for `and_compute_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// use larder::Op;
    /// let cache = larder::Cache::new(10);
    /// cache.insert("stock", 1u32);
    /// let take = |e: Option<larder::Entry<&'static str, u32>>| async move {
    ///     match e.map(|e| e.into_value()) {
    ///         Some(n) if n > 0 => Ok(Op::Put(n - 1)),
    ///         _ => Err("sold out"),
    ///     }
    /// };
    /// assert!(block_on(cache.entry("stock").and_try_compute_with_async(take)).is_ok());
    /// let sold_out = block_on(cache.entry("stock").and_try_compute_with_async(take));
    /// assert_eq!(sold_out.unwrap_err(), "sold out");
    /// assert_eq!(cache.get("stock"), Some(0));
    /// ```
    pub async fn and_try_compute_with_async<E, Fut>(
        self,
        f: impl FnMut(Option<Entry<K, V>>) -> Fut,
    ) -> Result<CompResult<K, V>, E>
    where
        Fut: Future<Output = Result<Op<V>, E>>,
    {
        self.cache.compute_async(self.key, f).await
    }

    /// The async form of [`and_upsert_with`](Self::and_upsert_with):
    /// inserts or updates the key's value atomically, `f` shown the live
    /// entry (or `None`) and returning a future of the value to put. The
    /// returned entry holds it, fresh, and says whether it replaced a
    /// value ([`Entry::is_old_value_replaced`]).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for [`and_compute_with_async`](Self::and_compute_with_async):
    /// upserts and computes of a key run one at a time, and `f` is called
    /// again if a plain write of the key lands while its future runs.
    ///
    /// # Cancellation
    ///
    /// As for `and_compute_with_async`: nothing is put.
    ///
    /// # Panics
    ///
    /// As for `and_compute_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache = larder::Cache::new(10);
    /// let add = |e: Option<larder::Entry<&'static str, u64>>| async move {
    ///     e.map_or(0, |e| e.into_value()) + 5
    /// };
    /// let first = block_on(cache.entry("total").and_upsert_with_async(add));
    /// assert!(!first.is_old_value_replaced());
    /// assert_eq!(block_on(cache.entry("total").and_upsert_with_async(add)).into_value(), 10);
    /// ```
    pub async fn and_upsert_with_async<Fut>(
        self,
        mut f: impl FnMut(Option<Entry<K, V>>) -> Fut,
    ) -> Entry<K, V>
    where
        Fut: Future<Output = V>,
    {
        let f = |e| {
            let value = f(e);
            async move { Op::Put(value.await) }
        };
        self.and_compute_with_async(f)
            .await
            .into_entry()
            .expect("a put reports the entry it wrote")
    }
}

impl<K, Q, V> RefKeyEntrySelector<'_, K, Q, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    V: Clone + Send + Sync + 'static,
{
    fn owned(&self) -> OwnedKeyEntrySelector<'_, K, V> {
        self.cache.entry(self.key.to_owned())
    }

    /// [`OwnedKeyEntrySelector::or_insert_with`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// assert!(cache.entry_by_ref("k").or_insert_with(|| 1).is_fresh());
    /// assert_eq!(cache.get("k"), Some(1));
    /// ```
    pub fn or_insert_with(self, init: impl FnOnce() -> V) -> Entry<K, V> {
        self.owned().or_insert_with(init)
    }

    /// [`OwnedKeyEntrySelector::or_insert`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// cache.entry_by_ref("k").or_insert(1);
    /// assert_eq!(cache.entry_by_ref("k").or_insert(2).into_value(), 1);
    /// ```
    pub fn or_insert(self, default: V) -> Entry<K, V> {
        self.owned().or_insert(default)
    }

    /// [`OwnedKeyEntrySelector::or_default`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// assert_eq!(cache.entry_by_ref("k").or_default().into_value(), 0);
    /// ```
    pub fn or_default(self) -> Entry<K, V>
    where
        V: Default,
    {
        self.owned().or_default()
    }

    /// [`OwnedKeyEntrySelector::or_optionally_insert_with`] for a borrowed
    /// key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_optionally_insert_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// assert!(cache.entry_by_ref("k").or_optionally_insert_with(|| None).is_none());
    /// ```
    pub fn or_optionally_insert_with(
        self,
        init: impl FnOnce() -> Option<V>,
    ) -> Option<Entry<K, V>> {
        self.owned().or_optionally_insert_with(init)
    }

    /// [`OwnedKeyEntrySelector::or_try_insert_with`] for a borrowed key.
    ///
    /// # Errors
    ///
    /// As for `OwnedKeyEntrySelector::or_try_insert_with`.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_try_insert_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// assert!(cache.entry_by_ref("k").or_try_insert_with(|| Err("no")).is_err());
    /// ```
    pub fn or_try_insert_with<E>(
        self,
        init: impl FnOnce() -> Result<V, E>,
    ) -> Result<Entry<K, V>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        self.owned().or_try_insert_with(init)
    }

    /// [`OwnedKeyEntrySelector::and_compute_with`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with`: one compute of a
    /// key at a time, and `f` may run more than once.
    ///
    /// # Panics
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// cache.entry_by_ref("k").and_compute_with(|_| larder::Op::Put(3));
    /// assert_eq!(cache.get("k"), Some(3));
    /// ```
    pub fn and_compute_with(self, f: impl FnMut(Option<Entry<K, V>>) -> Op<V>) -> CompResult<K, V> {
        self.owned().and_compute_with(f)
    }

    /// [`OwnedKeyEntrySelector::and_try_compute_with`] for a borrowed key.
    ///
    /// # Errors
    ///
    /// The error `f` returned (on its last run).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// let r = cache.entry_by_ref("k").and_try_compute_with(|_| Err::<larder::Op<u32>, _>("no"));
    /// assert_eq!(r.unwrap_err(), "no");
    /// ```
    pub fn and_try_compute_with<E>(
        self,
        f: impl FnMut(Option<Entry<K, V>>) -> Result<Op<V>, E>,
    ) -> Result<CompResult<K, V>, E> {
        self.owned().and_try_compute_with(f)
    }

    /// [`OwnedKeyEntrySelector::and_upsert_with`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with`.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// cache.entry_by_ref("hits").and_upsert_with(|e| e.map_or(1, |e| e.into_value() + 1));
    /// assert_eq!(cache.get("hits"), Some(1));
    /// ```
    pub fn and_upsert_with(self, f: impl FnMut(Option<Entry<K, V>>) -> V) -> Entry<K, V> {
        self.owned().and_upsert_with(f)
    }

    /// [`OwnedKeyEntrySelector::or_insert_with_async`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Cancellation
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Panics
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// assert!(block_on(cache.entry_by_ref("k").or_insert_with_async(async { 1 })).is_fresh());
    /// assert_eq!(cache.get("k"), Some(1));
    /// ```
    pub async fn or_insert_with_async(self, init: impl Future<Output = V>) -> Entry<K, V> {
        self.owned().or_insert_with_async(init).await
    }

    /// [`OwnedKeyEntrySelector::or_insert_async`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// block_on(cache.entry_by_ref("k").or_insert_async(1));
    /// assert_eq!(block_on(cache.entry_by_ref("k").or_insert_async(2)).into_value(), 1);
    /// ```
    pub async fn or_insert_async(self, default: V) -> Entry<K, V> {
        self.owned().or_insert_async(default).await
    }

    /// [`OwnedKeyEntrySelector::or_default_async`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// assert_eq!(block_on(cache.entry_by_ref("k").or_default_async()).into_value(), 0);
    /// ```
    pub async fn or_default_async(self) -> Entry<K, V>
    where
        V: Default,
    {
        self.owned().or_default_async().await
    }

    /// [`OwnedKeyEntrySelector::or_optionally_insert_with_async`] for a
    /// borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_optionally_insert_with_async`.
    ///
    /// # Cancellation
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Panics
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// let none = block_on(cache.entry_by_ref("k").or_optionally_insert_with_async(async { None }));
    /// assert!(none.is_none() && !cache.contains_key("k"));
    /// ```
    pub async fn or_optionally_insert_with_async(
        self,
        init: impl Future<Output = Option<V>>,
    ) -> Option<Entry<K, V>> {
        self.owned().or_optionally_insert_with_async(init).await
    }

    /// [`OwnedKeyEntrySelector::or_try_insert_with_async`] for a borrowed
    /// key.
    ///
    /// # Errors
    ///
    /// As for `OwnedKeyEntrySelector::or_try_insert_with_async`.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::or_try_insert_with_async`.
    ///
    /// # Cancellation
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Panics
    ///
    /// As for `OwnedKeyEntrySelector::or_insert_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// let r = block_on(cache.entry_by_ref("k").or_try_insert_with_async(async { Err("no") }));
    /// assert_eq!(*r.unwrap_err(), "no");
    /// ```
    pub async fn or_try_insert_with_async<E>(
        self,
        init: impl Future<Output = Result<V, E>>,
    ) -> Result<Entry<K, V>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        self.owned().or_try_insert_with_async(init).await
    }

    /// [`OwnedKeyEntrySelector::and_compute_with_async`] for a borrowed
    /// key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`: one compute
    /// of a key at a time, and `f` may be called more than once.
    ///
    /// # Cancellation
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`.
    ///
    /// # Panics
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// block_on(cache.entry_by_ref("k").and_compute_with_async(|_| async { larder::Op::Put(3) }));
    /// assert_eq!(cache.get("k"), Some(3));
    /// ```
    pub async fn and_compute_with_async<Fut>(
        self,
        f: impl FnMut(Option<Entry<K, V>>) -> Fut,
    ) -> CompResult<K, V>
    where
        Fut: Future<Output = Op<V>>,
    {
        self.owned().and_compute_with_async(f).await
    }

    /// [`OwnedKeyEntrySelector::and_try_compute_with_async`] for a borrowed
    /// key.
    ///
    /// # Errors
    ///
    /// The error `f`'s future returned (on its last run).
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`.
    ///
    /// # Cancellation
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`.
    ///
    /// # Panics
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// let r = block_on(
    ///     cache.entry_by_ref("k").and_try_compute_with_async(|_| async { Err::<larder::Op<u32>, _>("no") }),
    /// );
    /// assert_eq!(r.unwrap_err(), "no");
    /// ```
    pub async fn and_try_compute_with_async<E, Fut>(
        self,
        f: impl FnMut(Option<Entry<K, V>>) -> Fut,
    ) -> Result<CompResult<K, V>, E>
    where
        Fut: Future<Output = Result<Op<V>, E>>,
    {
        self.owned().and_try_compute_with_async(f).await
    }

    /// [`OwnedKeyEntrySelector::and_upsert_with_async`] for a borrowed key.
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`.
    ///
    /// # Cancellation
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`.
    ///
    /// # Panics
    ///
    /// As for `OwnedKeyEntrySelector::and_compute_with_async`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let cache: larder::Cache<String, u32> = larder::Cache::new(10);
    /// let bump = |e: Option<larder::Entry<String, u32>>| async move { e.map_or(1, |e| e.into_value() + 1) };
    /// block_on(cache.entry_by_ref("hits").and_upsert_with_async(bump));
    /// assert_eq!(cache.get("hits"), Some(1));
    /// ```
    pub async fn and_upsert_with_async<Fut>(
        self,
        f: impl FnMut(Option<Entry<K, V>>) -> Fut,
    ) -> Entry<K, V>
    where
        Fut: Future<Output = V>,
    {
        self.owned().and_upsert_with_async(f).await
    }
}
