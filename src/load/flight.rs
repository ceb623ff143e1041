//! Single-flight: one loader per key, other callers wait for its result.
//!
//! An in-flight load is a [`Flight`] in a `DashMap` keyed by the cache key.
//! The first caller to insert one is the leader and runs the loader with no
//! lock held; later callers find it and block on its condition variable. The
//! leader publishes the value in the cache *before* it removes the flight, so
//! a newcomer sees either the flight or the cached value; what that store
//! evicted reaches the listener only *after* (the listener may wait for
//! something that waits for the flight).
//!
//! If the loader fails, waiters of the same error type share the leader's
//! `Arc<E>`; waiters that cannot use it (a different error type, or
//! `get_with`) load again themselves. If the loader panics, a guard marks the
//! flight abandoned, wakes the waiters and one of them becomes the next leader.
//! A flight ends even if its key's `Hash` panics as it leaves the map; it
//! then stays there ended, and the key's next load leads in its place.
//!
//! Waiters block on a condition variable ([`Flight::wait`]) or, from async
//! code, await a [`FlightWait`] future that registers its waker and never
//! blocks the executor's thread; dropped before the load ends (its caller
//! cancelled), it takes its waker back out. An async leader whose future is
//! dropped drops its guard, which abandons the flight in the same way as a
//! panic.
//!
//! The guard owns an `Arc` of the flight table, so a background reload can
//! carry it to another thread.
//!
//! A background reload queued for a free worker leads its flight from the
//! queue ([`Flights::begin_queued`]). A caller that needs the value now does
//! not wait behind the queue: it takes the flight over
//! ([`Flights::take_queued`]) and loads itself, and the job, when a worker
//! gets to it, finds the flight taken and does nothing
//! ([`LeaderGuard::start`]). Waiting behind the queue could deadlock: a
//! loader that reads another key whose reload is queued behind the very
//! reload that waits for this loader.
//!
//! A bulk read leads the flights of its whole batch at once
//! ([`Flights::begin_batch`]) until its loader has answered every key, so
//! its flights can wait for loads that have nothing to do with their own
//! key. A loader that needs one of them does not wait
//! ([`Flight::batch_elsewhere`]): it could be what the batch waits for.
//!
//! A plain [`Cache`](crate::Cache)'s writes mark the flight of their key, if
//! one is under way, as *written* ([`Flights::written`]): its value may be
//! older than the write, and the leader then hands it to its waiters without
//! caching it. A count of the flights under way spares writes the map lookup
//! when none is. A [`LoadingCache`](crate::LoadingCache)'s leader, whose
//! values come from a store, instead looks at its key's write count once
//! the flight has left the map ([`LeaderGuard::finish_unless_stale`]): if a
//! write ended since the load began, its waiters load again.

use std::{
    any::Any,
    future::{Future, poll_fn},
    hash::Hash,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll, Waker},
    thread::{self, ThreadId},
};

use ahash::RandomState;
use dashmap::{DashMap, mapref::entry::Entry};
use parking_lot::{Condvar, Mutex};

use crate::maintenance::Awaited;

/// A shared error of any type, downcast by each waiter to the one it expects.
pub(crate) type AnyError = Arc<dyn Any + Send + Sync>;

/// How a flight ended, as a waiter sees it.
#[derive(Debug)]
pub(crate) enum Outcome<V> {
    /// The leader loaded this value (and cached it).
    Loaded(V),
    /// The leader's loader returned this error.
    Failed(AnyError),
    /// The leader panicked, or read its value before a write of the key
    /// ended ([`LeaderGuard::finish_unless_stale`]): nobody has a value
    /// for the waiters, who load again.
    Abandoned,
}

impl<V: Clone> Outcome<V> {
    fn share(&self) -> Self {
        match self {
            Outcome::Loaded(v) => Outcome::Loaded(v.clone()),
            Outcome::Failed(e) => Outcome::Failed(e.clone()),
            Outcome::Abandoned => Outcome::Abandoned,
        }
    }
}

/// State of one in-flight load.
#[derive(Debug)]
enum State<V> {
    /// Loading; the wakers of async waiters to wake when done.
    Running(Wakers),
    Done(Outcome<V>),
}

/// The wakers of a flight's async waiters, one slot per [`FlightWait`]: a
/// waiter polled again replaces its own waker (the newest is the one to
/// wake), and a waiter dropped while the load runs empties its slot, so a
/// slow load holds no waker of a caller that gave up, and a poll costs the
/// same however many wait.
#[derive(Debug, Default)]
struct Wakers {
    slots: Vec<Option<Waker>>,
    /// Emptied slots, reused before the vector grows.
    free: Vec<usize>,
}

impl Wakers {
    /// Puts `waker` in the waiter's `slot`, taking one on its first poll.
    /// Returns the waker it replaced, for the caller to drop once the
    /// flight is unlocked (a waker's drop is the executor's code).
    fn register(&mut self, slot: &mut Option<usize>, waker: &Waker) -> Option<Waker> {
        match *slot {
            Some(i) => match &mut self.slots[i] {
                Some(old) if old.will_wake(waker) => None,
                entry => entry.replace(waker.clone()),
            },
            None => {
                let i = match self.free.pop() {
                    Some(i) => i,
                    None => {
                        self.slots.push(None);
                        self.slots.len() - 1
                    }
                };
                *slot = Some(i);
                self.slots[i].replace(waker.clone())
            }
        }
    }

    /// Empties the slot of a waiter that no longer waits; returns its
    /// waker, to drop as [`register`](Self::register)'s.
    fn remove(&mut self, slot: usize) -> Option<Waker> {
        self.free.push(slot);
        self.slots[slot].take()
    }

    fn wake(self) {
        for waker in self.slots.into_iter().flatten() {
            waker.wake();
        }
    }
}

/// Who leads a flight, for the self-load check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leader {
    /// A blocking caller on this thread: a blocking wait from the same
    /// thread could never end.
    Thread(ThreadId),
    /// An async task or a pool thread: no check.
    Detached,
}

impl Leader {
    /// The calling thread.
    pub(crate) fn here() -> Self {
        Leader::Thread(thread::current().id())
    }
}

/// One in-flight load and the callers waiting on it.
#[derive(Debug)]
pub(crate) struct Flight<V> {
    state: Mutex<State<V>>,
    done: Condvar,
    leader: Mutex<Leader>,
    /// The key was written while this load ran.
    written: AtomicBool,
    /// For a reload led from the queue: [`QUEUED`], then [`STARTED`] by its
    /// job or [`TAKEN`] by a caller; [`NOT_QUEUED`] for any other load.
    queued: AtomicU8,
    /// Led by a bulk read, whose loader answers every key of its batch at
    /// once: see [`batch_elsewhere`](Self::batch_elsewhere).
    batch: AtomicBool,
}

/// [`Flight::queued`] of a load not led from the queue.
const NOT_QUEUED: u8 = 0;
/// A reload whose job waits for a worker.
const QUEUED: u8 = 1;
/// The reload's job runs it.
const STARTED: u8 = 2;
/// A caller took the reload over before its job ran.
const TAKEN: u8 = 3;

impl<V: Clone> Flight<V> {
    fn new(leader: Leader, queued: u8, batch: bool) -> Self {
        Flight {
            state: Mutex::new(State::Running(Wakers::default())),
            done: Condvar::new(),
            leader: Mutex::new(leader),
            written: AtomicBool::new(false),
            queued: AtomicU8::new(queued),
            batch: AtomicBool::new(batch),
        }
    }

    /// Whether a bulk read on another thread leads this load. Its loader
    /// holds every key of the batch until it has answered them all, so a
    /// loader that waits for one of them may be waiting for a batch that
    /// waits for that very loader, through another key it reads: a cycle
    /// that the keys' own loaders would not make. Such a reader loads by
    /// itself instead of waiting.
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait) does, if this thread leads the load (a
    /// batch's loader reading a key of its own batch).
    pub(crate) fn batch_elsewhere(&self) -> bool {
        self.assert_not_leader();
        self.batch.load(SeqCst)
    }

    /// Moves a queued reload's flight from [`QUEUED`] to `to`; false if it
    /// was not queued (a job that started, or another taker, came first).
    fn leave_queue(&self, to: u8) -> bool {
        self.queued
            .compare_exchange(QUEUED, to, SeqCst, SeqCst)
            .is_ok()
    }

    /// Whether a write of the key has landed while this load ran (see
    /// [`Flights::written`]). A caller that finds it so as it joins began
    /// after that write, and must not take the load's value, which may be
    /// older than the write.
    pub(crate) fn written(&self) -> bool {
        self.written.load(SeqCst)
    }

    /// Blocks until the leader finishes and returns what it produced.
    ///
    /// # Panics
    ///
    /// If called from the leader's own thread (a loader that loads its own
    /// key, or a key of the batch it loads, would wait for itself forever).
    pub(crate) fn wait(&self) -> Outcome<V> {
        self.assert_not_leader();
        let mut state = self.state.lock();
        loop {
            match &*state {
                State::Running(_) => self.done.wait(&mut state),
                State::Done(outcome) => return outcome.share(),
            }
        }
    }

    /// A future that resolves to the leader's outcome without blocking.
    pub(crate) fn wait_async(self: Arc<Self>) -> FlightWait<V> {
        FlightWait {
            flight: self,
            slot: None,
        }
    }

    /// Records the calling thread as the one running the load (a reload
    /// worker that picked it up), for the self-load check.
    fn claim(&self) {
        self.set_leader(Leader::here());
    }

    fn set_leader(&self, leader: Leader) {
        *self.leader.lock() = leader;
    }

    /// Panics if the calling thread runs this flight's load: see
    /// [`wait`](Self::wait).
    fn assert_not_leader(&self) {
        assert!(
            *self.leader.lock() != Leader::here(),
            "larder: a loader asked the cache to load its own key, or a key of the batch it \
             loads; this would wait forever"
        );
    }

    /// Whether the load has ended (its outcome is set).
    fn ended(&self) -> bool {
        matches!(*self.state.lock(), State::Done(_))
    }

    fn finish(&self, outcome: Outcome<V>) {
        let wakers = match std::mem::replace(&mut *self.state.lock(), State::Done(outcome)) {
            State::Running(wakers) => wakers,
            State::Done(_) => Wakers::default(),
        };
        self.done.notify_all();
        wakers.wake();
    }
}

/// The future returned by [`Flight::wait_async`].
#[derive(Debug)]
pub(crate) struct FlightWait<V> {
    flight: Arc<Flight<V>>,
    /// Its slot in the flight's [`Wakers`], once polled.
    slot: Option<usize>,
}

impl<V: Clone> Future for FlightWait<V> {
    type Output = Outcome<V>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<V>> {
        let this = self.get_mut();
        let mut state = this.flight.state.lock();
        let _replaced = match &mut *state {
            State::Done(outcome) => return Poll::Ready(outcome.share()),
            State::Running(wakers) => {
                // Only while the load runs: once it is done, any thread may
                // read the outcome, the leader's included.
                this.flight.assert_not_leader();
                wakers.register(&mut this.slot, cx.waker())
            }
        };
        drop(state);
        Poll::Pending
    }
}

impl<V> Drop for FlightWait<V> {
    fn drop(&mut self) {
        let Some(slot) = self.slot else { return };
        // Dropped at the end, once the flight is unlocked.
        let _waker = match &mut *self.flight.state.lock() {
            State::Running(wakers) => wakers.remove(slot),
            State::Done(_) => None,
        };
    }
}

/// What `begin` hands back: lead the load, or wait for someone else's.
#[derive(Debug)]
pub(crate) enum Role<K: Hash + Eq, V: Clone> {
    /// This caller runs the loader; finish the guard with the result.
    Leader(LeaderGuard<K, V>),
    /// Another caller is loading; wait on this flight.
    Waiter(Arc<Flight<V>>),
}

/// The in-flight loads of one cache.
pub(crate) struct Flights<K, V> {
    map: DashMap<K, Arc<Flight<V>>, RandomState>,
    /// Flights in the map, or about to go in or just gone: counted up
    /// before one goes in and down after it has left, so the count is
    /// never below the map's, and a write that reads zero has no flight
    /// to mark. (Counted down before the flight left, a write in between
    /// read zero and marked nothing while a caller could still join the
    /// flight, and that caller, arriving after the write, took the value
    /// loaded before it.)
    active: AtomicUsize,
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Joins the flight for `key`, or starts one led by `leader`.
    pub(crate) fn begin(self: &Arc<Self>, key: &K, leader: Leader) -> Role<K, V> {
        self.begin_as(key, leader, NOT_QUEUED, false)
    }

    /// [`begin`](Self::begin) for a key of a bulk read that this thread
    /// loads with the rest of its batch (see [`Flight::batch_elsewhere`]).
    pub(crate) fn begin_batch(self: &Arc<Self>, key: &K) -> Role<K, V> {
        self.begin_as(key, Leader::here(), NOT_QUEUED, true)
    }

    /// [`begin`](Self::begin) for a background reload whose job will wait
    /// in the queue: a caller may take the flight over until the job starts
    /// it ([`LeaderGuard::start`]).
    pub(crate) fn begin_queued(self: &Arc<Self>, key: &K) -> Role<K, V> {
        self.begin_as(key, Leader::Detached, QUEUED, false)
    }

    fn begin_as(self: &Arc<Self>, key: &K, leader: Leader, queued: u8, batch: bool) -> Role<K, V> {
        let entry = self.map.entry(key.clone());
        if let Entry::Occupied(e) = &entry {
            // An ended flight is in the map only if its key's `Hash`
            // panicked as it left (see `LeaderGuard::retire`): its outcome
            // is no answer for a load begun now, which leads in its place.
            if !e.get().ended() {
                return Role::Waiter(e.get().clone());
            }
        }
        // The guard's copy is made before the flight goes in: a `Clone`
        // that panics after would leave a flight nobody ends. (A waiter
        // needs no copy.)
        let own = key.clone();
        let flight = Arc::new(Flight::new(leader, queued, batch));
        self.active.fetch_add(1, SeqCst);
        entry.insert(flight.clone());
        Role::Leader(LeaderGuard {
            flights: self.clone(),
            key: own,
            flight,
            finished: false,
            taker: false,
        })
    }

    /// Takes over `flight` (of `key`, found as a waiter) if it is a reload
    /// still waiting in the queue: the caller then leads it on this thread,
    /// and the job, when it runs, leaves it alone. `None` if it is not.
    /// `batch`: the caller loads it with the rest of a bulk read's batch
    /// (see [`Flight::batch_elsewhere`]).
    pub(crate) fn take_queued(
        self: &Arc<Self>,
        key: &K,
        flight: &Arc<Flight<V>>,
        batch: bool,
    ) -> Option<LeaderGuard<K, V>> {
        if flight.queued.load(SeqCst) != QUEUED {
            return None;
        }
        // Copied before the flight is taken: a `Clone` that panics after
        // would leave a flight that neither the job nor a taker ends.
        let key = key.clone();
        // Marked before it is taken, so a caller that finds it taken finds
        // it marked; unmarked again if someone else came first.
        if batch {
            flight.batch.store(true, SeqCst);
        }
        if !flight.leave_queue(TAKEN) {
            if batch {
                flight.batch.store(false, SeqCst);
            }
            return None;
        }
        flight.claim();
        Some(LeaderGuard {
            flights: self.clone(),
            key,
            flight: flight.clone(),
            finished: false,
            taker: true,
        })
    }
}

impl<K: Hash + Eq, V> Flights<K, V> {
    /// Marks the flight of `key`, if one is under way, as written: a write
    /// of the key calls this before it changes the cache.
    #[inline]
    pub(crate) fn written<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.active.load(SeqCst) == 0 {
            return;
        }
        if let Some(flight) = self.map.get(key) {
            flight.written.store(true, SeqCst);
        }
    }

    /// Whether the flight of `key` under way was written since it began;
    /// true if no flight of the key is under way. For the leader of that
    /// flight, under the shard lock where writes of the key end (a write
    /// marks the flight there, see [`written`](Self::written)).
    pub(crate) fn is_written<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .get(key)
            .is_none_or(|flight| flight.written.load(SeqCst))
    }

    /// Marks every flight under way as written (a clear of the cache).
    pub(crate) fn written_all(&self) {
        if self.active.load(SeqCst) == 0 {
            return;
        }
        for flight in self.map.iter() {
            flight.written.store(true, SeqCst);
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
            active: AtomicUsize::new(0),
        }
    }
}

/// Held by the leader while it loads; on drop without `finish` (a panic) it
/// marks the flight abandoned so the waiters retry.
#[derive(Debug)]
pub(crate) struct LeaderGuard<K: Hash + Eq, V: Clone> {
    flights: Arc<Flights<K, V>>,
    key: K,
    flight: Arc<Flight<V>>,
    finished: bool,
    /// Took a queued reload over ([`Flights::take_queued`]).
    taker: bool,
}

impl<K: Hash + Eq, V: Clone> LeaderGuard<K, V> {
    /// The key being loaded.
    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    /// Records the calling thread as the one running the load.
    pub(crate) fn claim(&self) {
        self.flight.claim();
    }

    /// For the job of a queued reload ([`Flights::begin_queued`]): whether
    /// it runs the reload (then this thread is recorded as running it), or a
    /// caller took it over (then this guard lets go without ending the
    /// flight, which the taker ends). True for any other flight.
    pub(crate) fn start(&mut self) -> bool {
        match self.flight.queued.load(SeqCst) {
            NOT_QUEUED | STARTED => {}
            _ if self.flight.leave_queue(STARTED) => {}
            _ => {
                // Taken: the taker's guard retires the flight.
                self.finished = true;
                return false;
            }
        }
        self.flight.claim();
        true
    }

    /// Records the calling thread as the one running the load until the
    /// returned mark drops: how an async leader marks each poll of its
    /// loader future, which may run on a different thread each time.
    fn polling(&self) -> Polling<'_, V> {
        self.flight.set_leader(Leader::here());
        Polling {
            flight: &self.flight,
        }
    }

    /// Awaits `work`, the user's future this flight's waiters wait for (an
    /// async loader, or an async compute's closure): each poll marks its
    /// thread as the one running the flight, so a wait for the key from
    /// inside `work` panics instead of waiting for itself, and as
    /// [`Awaited`]. How the async loaders and computes lead a flight; the
    /// guard stays with the caller, so a caller's future dropped in the
    /// middle drops it and abandons the flight, waking the waiters (one
    /// of which leads next), as a panic does.
    ///
    /// Dropped before `work` ends (the caller's future cancelled), `work`
    /// is dropped with the dropping thread marked as running the flight,
    /// as each poll is: a value in it whose `drop` waits for the key panics
    /// there instead of waiting for ever for the flight its own drop holds
    /// open.
    pub(crate) async fn drive<F: Future>(&self, work: F) -> F::Output {
        let mut work = pin!(work);
        // Declared after `work`, so dropped before it.
        let mut dropping = MarkedDrop {
            flight: &self.flight,
            ended: false,
        };
        poll_fn(|cx| {
            let _here = self.polling();
            let _awaited = Awaited::here();
            let poll = work.as_mut().poll(cx);
            dropping.ended = poll.is_ready();
            poll
        })
        .await
    }

    /// Publishes the outcome to the waiters and retires the flight. Call it
    /// after the value is in the cache.
    pub(crate) fn finish(mut self, outcome: Outcome<V>) {
        self.retire(outcome);
    }

    /// [`finish`](Self::finish) for a loaded value that a write of the key
    /// may have made old: once the flight has left the map, so that no
    /// caller joins it any more, `stale` says whether a write ended since
    /// the load began (it is shown the key, and whether the flight was
    /// marked written, see [`Flights::written`]). If one did, a waiter may have begun after that
    /// write, and a value read before it must not answer such a read: the
    /// waiters get [`Outcome::Abandoned`] and load again. (If `stale`
    /// panics, the flight is abandoned as on any unwind.)
    pub(crate) fn finish_unless_stale(
        mut self,
        outcome: Outcome<V>,
        stale: impl FnOnce(&K, bool) -> bool,
    ) {
        self.flights
            .map
            .remove_if(&self.key, |_, f| Arc::ptr_eq(f, &self.flight));
        let outcome = if stale(&self.key, self.flight.written()) {
            Outcome::Abandoned
        } else {
            outcome
        };
        self.retire(outcome);
    }

    /// Whether this is a queued reload's own guard and a caller took the
    /// flight over from it.
    fn taken_from_me(&self) -> bool {
        !self.taker && self.flight.queued.load(SeqCst) == TAKEN
    }

    fn retire(&mut self, outcome: Outcome<V>) {
        self.finished = true;
        // Leaving the map hashes the key (user code). If that panics, the
        // flight still ends, waking its waiters, and stays in the map
        // ended, where the key's next load leads in its place
        // (`Flights::begin_as`); the panic goes on after, unless this is a
        // guard dropped by another panic's unwinding (a second panic there
        // would abort the process).
        let left = catch_unwind(AssertUnwindSafe(|| {
            self.flights
                .map
                .remove_if(&self.key, |_, f| Arc::ptr_eq(f, &self.flight));
        }));
        #[cfg(test)]
        tests::between_retire_steps();
        self.flights.active.fetch_sub(1, SeqCst);
        self.flight.finish(outcome);
        if let Err(panic) = left {
            if !thread::panicking() {
                resume_unwind(panic);
            }
        }
    }

    /// Whether the key was written since this flight began (see
    /// [`Flights::written`]).
    pub(crate) fn written(&self) -> bool {
        self.flight.written.load(SeqCst)
    }
}

/// See [`LeaderGuard::polling`]: on drop (the poll returned or panicked)
/// the load has no thread again.
#[derive(Debug)]
pub(crate) struct Polling<'a, V: Clone> {
    flight: &'a Flight<V>,
}

impl<V: Clone> Drop for Polling<'_, V> {
    fn drop(&mut self) {
        self.flight.set_leader(Leader::Detached);
    }
}

/// Marks the dropping thread as running a flight whose leader's work is
/// dropped unfinished (see [`LeaderGuard::drive`]); the leader's guard,
/// dropped next, abandons the flight.
struct MarkedDrop<'a, V: Clone> {
    flight: &'a Flight<V>,
    /// The work returned its output: nothing to mark.
    ended: bool,
}

impl<V: Clone> Drop for MarkedDrop<'_, V> {
    fn drop(&mut self) {
        if !self.ended {
            self.flight.set_leader(Leader::here());
        }
    }
}

impl<K: Hash + Eq, V: Clone> Drop for LeaderGuard<K, V> {
    fn drop(&mut self) {
        // A queued job's guard dropped unstarted (its queue was full, or the
        // cache went away) while a caller took the flight: the taker ends it.
        if !self.finished && !self.flight.leave_queue(STARTED) && self.taken_from_me() {
            self.finished = true;
        }
        if !self.finished {
            self.retire(Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, sync::Barrier, thread};

    use super::*;

    type Table = Arc<Flights<u32, u32>>;

    thread_local! {
        /// Run by `retire` between its two steps on this thread, once.
        static BETWEEN_RETIRE_STEPS: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    pub(super) fn between_retire_steps() {
        if let Some(f) = BETWEEN_RETIRE_STEPS.with(|hook| hook.borrow_mut().take()) {
            f();
        }
    }

    /// A write that lands while a flight retires (between its leaving the
    /// map and the count going down, or the other way round) either marks
    /// the flight or comes after any caller could join it: a caller that
    /// arrives after the write never waits for that flight unmarked, and so
    /// never takes a value loaded before the write.
    #[test]
    fn a_write_during_a_retirement_is_never_missed_by_a_later_joiner() {
        let flights = Table::default();
        let guard = match flights.begin(&1, Leader::Detached) {
            Role::Leader(guard) => guard,
            Role::Waiter(_) => unreachable!(),
        };
        let joined_unmarked = Arc::new(AtomicUsize::new(0));
        BETWEEN_RETIRE_STEPS.with(|hook| {
            let (flights, joined_unmarked) = (flights.clone(), joined_unmarked.clone());
            *hook.borrow_mut() = Some(Box::new(move || {
                flights.written(&1);
                // A caller arriving after the write.
                if let Role::Waiter(flight) = flights.begin(&1, Leader::Detached) {
                    if !flight.written.load(SeqCst) {
                        joined_unmarked.fetch_add(1, SeqCst);
                    }
                }
            }));
        });
        guard.finish(Outcome::Loaded(7));
        assert_eq!(joined_unmarked.load(SeqCst), 0, "joined an unmarked flight");
        assert!(settled(&flights));
    }

    fn queued(flights: &Table, key: u32) -> LeaderGuard<u32, u32> {
        match flights.begin_queued(&key) {
            Role::Leader(guard) => guard,
            Role::Waiter(_) => panic!("no flight of {key} yet"),
        }
    }

    fn joined(flights: &Table, key: u32) -> Arc<Flight<u32>> {
        match flights.begin(&key, Leader::Detached) {
            Role::Waiter(flight) => flight,
            Role::Leader(_) => panic!("a flight of {key} is under way"),
        }
    }

    fn settled(flights: &Table) -> bool {
        flights.map.is_empty() && flights.active.load(SeqCst) == 0
    }

    #[test]
    fn a_taken_reload_is_ended_by_its_taker_and_left_by_its_job() {
        let flights = Table::default();
        let mut job = queued(&flights, 1);
        let flight = joined(&flights, 1);
        let taker = flights
            .take_queued(&1, &flight, false)
            .expect("still queued");
        assert!(
            flights.take_queued(&1, &flight, false).is_none(),
            "taken once"
        );
        assert!(!job.start(), "the job finds it taken");
        drop(job);
        assert!(!settled(&flights), "the taker still runs it");
        let waiter = joined(&flights, 1);
        let waiting = thread::spawn(move || matches!(waiter.wait(), Outcome::Loaded(7)));
        taker.finish(Outcome::Loaded(7));
        assert!(waiting.join().unwrap(), "the waiter got the taker's value");
        assert!(settled(&flights));
    }

    #[test]
    fn a_stale_load_abandons_its_waiters_once_no_caller_can_join() {
        let flights = Table::default();
        for stale in [false, true] {
            let guard = match flights.begin(&1, Leader::Detached) {
                Role::Leader(guard) => guard,
                Role::Waiter(_) => unreachable!(),
            };
            let waiter = joined(&flights, 1);
            let waiting = thread::spawn(move || waiter.wait());
            let check = {
                let flights = flights.clone();
                move |key: &u32, _written: bool| {
                    // Asked once the flight has left the map.
                    assert!(matches!(
                        flights.begin(key, Leader::Detached),
                        Role::Leader(_)
                    ));
                    stale
                }
            };
            guard.finish_unless_stale(Outcome::Loaded(7), check);
            let outcome = waiting.join().unwrap();
            match stale {
                false => assert!(matches!(outcome, Outcome::Loaded(7))),
                true => assert!(matches!(outcome, Outcome::Abandoned)),
            }
            assert!(settled(&flights));
        }
    }

    #[test]
    fn a_started_reload_cannot_be_taken() {
        let flights = Table::default();
        let mut job = queued(&flights, 1);
        assert!(job.start());
        let flight = joined(&flights, 1);
        assert!(flights.take_queued(&1, &flight, false).is_none());
        job.finish(Outcome::Loaded(1));
        assert!(settled(&flights));
        // Nor can any other flight.
        let guard = match flights.begin(&2, Leader::Detached) {
            Role::Leader(guard) => guard,
            Role::Waiter(_) => unreachable!(),
        };
        assert!(
            flights
                .take_queued(&2, &joined(&flights, 2), false)
                .is_none()
        );
        drop(guard);
        assert!(settled(&flights));
    }

    #[test]
    fn an_unstarted_job_dropped_while_callers_take_it_ends_the_flight_once() {
        // The job's guard dropped unstarted (a full queue) races callers
        // taking the flight: exactly one of them ends it, and the count of
        // flights under way comes back to zero, not below.
        for _ in 0..500 {
            let flights = Table::default();
            let job = queued(&flights, 1);
            let flight = joined(&flights, 1);
            let start = Arc::new(Barrier::new(3));
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    let (flights, flight, start) = (flights.clone(), flight.clone(), start.clone());
                    thread::spawn(move || {
                        start.wait();
                        flights.take_queued(&1, &flight, false).map(|taker| {
                            taker.finish(Outcome::Loaded(1));
                        })
                    })
                })
                .collect();
            start.wait();
            drop(job);
            let took = takers.into_iter().filter_map(|t| t.join().unwrap()).count();
            assert!(took <= 1);
            assert!(settled(&flights), "took {took}");
            assert!(matches!(
                flight.wait(),
                Outcome::Loaded(1) | Outcome::Abandoned
            ));
        }
    }

    std::thread_local! {
        /// Whether [`Brittle`]'s clone panics on this thread.
        static BRITTLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A key whose `Clone` panics while [`BRITTLE`] is set.
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Brittle(u32);

    impl Clone for Brittle {
        fn clone(&self) -> Self {
            assert!(!BRITTLE.with(std::cell::Cell::get), "clone refused");
            Brittle(self.0)
        }
    }

    #[test]
    fn a_key_clone_panicking_in_take_queued_leaves_the_reload_to_its_job() {
        let flights: Arc<Flights<Brittle, u32>> = Arc::default();
        let Role::Leader(mut job) = flights.begin_queued(&Brittle(1)) else {
            panic!("no flight yet")
        };
        let Role::Waiter(flight) = flights.begin(&Brittle(1), Leader::Detached) else {
            panic!("the reload's flight is under way")
        };
        BRITTLE.with(|b| b.set(true));
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            flights.take_queued(&Brittle(1), &flight, false).is_some()
        }));
        BRITTLE.with(|b| b.set(false));
        assert!(taken.is_err(), "the clone panicked");
        // Nobody took the reload over: its job runs and ends it.
        assert!(job.start(), "the job still runs the reload");
        job.finish(Outcome::Loaded(1));
        assert!(flights.map.is_empty() && flights.active.load(SeqCst) == 0);
        let waiter = thread::spawn(move || matches!(flight.wait(), Outcome::Loaded(1)));
        assert!(waiter.join().unwrap(), "the waiter got the job's value");
    }
}
