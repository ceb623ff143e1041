//! Single-flight: one loader per key, other callers wait for its result.
//!
//! An in-flight load is a [`Flight`] in a `DashMap` keyed by the cache key.
//! The first caller to insert one is the leader and runs the loader with no
//! lock held; later callers find it and block on its condition variable. The
//! leader publishes the value in the cache *before* it removes the flight, so
//! a newcomer sees either the flight or the cached value.
//!
//! If the loader fails, waiters of the same error type share the leader's
//! `Arc<E>`; waiters that cannot use it (a different error type, or
//! `get_with`) load again themselves. If the loader panics, a guard marks the
//! flight abandoned, wakes the waiters and one of them becomes the next leader.

use std::{
    any::Any,
    hash::Hash,
    sync::Arc,
    thread::{self, ThreadId},
};

use ahash::RandomState;
use dashmap::{DashMap, mapref::entry::Entry};
use parking_lot::{Condvar, Mutex};

/// A shared error of any type, downcast by each waiter to the one it expects.
pub(crate) type AnyError = Arc<dyn Any + Send + Sync>;

/// How a flight ended, as a waiter sees it.
#[derive(Debug)]
pub(crate) enum Outcome<V> {
    /// The leader loaded this value (and cached it).
    Loaded(V),
    /// The leader's loader returned this error.
    Failed(AnyError),
    /// The leader panicked; nobody has the value.
    Abandoned,
}

/// State of one in-flight load.
#[derive(Debug)]
enum State<V> {
    Running,
    Done(Outcome<V>),
}

/// One in-flight load and the callers waiting on it.
#[derive(Debug)]
pub(crate) struct Flight<V> {
    state: Mutex<State<V>>,
    done: Condvar,
    leader: ThreadId,
}

impl<V: Clone> Flight<V> {
    fn new() -> Self {
        Flight {
            state: Mutex::new(State::Running),
            done: Condvar::new(),
            leader: thread::current().id(),
        }
    }

    /// Blocks until the leader finishes and returns what it produced.
    ///
    /// # Panics
    ///
    /// If called from the leader's own thread (a loader that loads its own
    /// key would wait for itself forever).
    pub(crate) fn wait(&self) -> Outcome<V> {
        assert!(
            self.leader != thread::current().id(),
            "larder: a loader asked the cache to load its own key; this would wait forever"
        );
        let mut state = self.state.lock();
        loop {
            match &*state {
                State::Running => self.done.wait(&mut state),
                State::Done(Outcome::Loaded(v)) => return Outcome::Loaded(v.clone()),
                State::Done(Outcome::Failed(e)) => return Outcome::Failed(e.clone()),
                State::Done(Outcome::Abandoned) => return Outcome::Abandoned,
            }
        }
    }

    fn finish(&self, outcome: Outcome<V>) {
        *self.state.lock() = State::Done(outcome);
        self.done.notify_all();
    }
}

/// What `begin` hands back: lead the load, or wait for someone else's.
#[derive(Debug)]
pub(crate) enum Role<'a, K: Hash + Eq, V: Clone> {
    /// This caller runs the loader; finish the guard with the result.
    Leader(LeaderGuard<'a, K, V>),
    /// Another caller is loading; wait on this flight.
    Waiter(Arc<Flight<V>>),
}

/// The in-flight loads of one cache.
pub(crate) struct Flights<K, V> {
    map: DashMap<K, Arc<Flight<V>>, RandomState>,
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Joins the flight for `key`, or starts one.
    pub(crate) fn begin(&self, key: &K) -> Role<'_, K, V> {
        match self.map.entry(key.clone()) {
            Entry::Occupied(e) => Role::Waiter(e.get().clone()),
            Entry::Vacant(e) => {
                let flight = Arc::new(Flight::new());
                e.insert(flight.clone());
                Role::Leader(LeaderGuard {
                    flights: self,
                    key: key.clone(),
                    flight,
                    finished: false,
                })
            }
        }
    }
}

impl<K, V> std::fmt::Debug for Flights<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            map: DashMap::with_hasher(RandomState::new()),
        }
    }
}

/// Held by the leader while it loads; on drop without `finish` (a panic) it
/// marks the flight abandoned so the waiters retry.
#[derive(Debug)]
pub(crate) struct LeaderGuard<'a, K: Hash + Eq, V: Clone> {
    flights: &'a Flights<K, V>,
    key: K,
    flight: Arc<Flight<V>>,
    finished: bool,
}

impl<K: Hash + Eq, V: Clone> LeaderGuard<'_, K, V> {
    /// Publishes the outcome to the waiters and retires the flight. Call it
    /// after the value is in the cache.
    pub(crate) fn finish(mut self, outcome: Outcome<V>) {
        self.retire(outcome);
    }

    fn retire(&mut self, outcome: Outcome<V>) {
        self.finished = true;
        self.flights
            .map
            .remove_if(&self.key, |_, f| Arc::ptr_eq(f, &self.flight));
        self.flight.finish(outcome);
    }
}

impl<K: Hash + Eq, V: Clone> Drop for LeaderGuard<'_, K, V> {
    fn drop(&mut self) {
        if !self.finished {
            self.retire(Outcome::Abandoned);
        }
    }
}
