//! Write-behind: the shared queue around the [`Buffer`] and the
//! `larder-write-behind` thread that flushes it to the [`Store`] (its loop,
//! batches and store calls in [`flusher`](mod@flusher)).
//!
//! # Lanes, then the buffer
//!
//! A writer does not touch the [`Buffer`]: it appends its change to its
//! *lane* (a short vector behind its own small mutex; threads are numbered
//! as they first write and thread `n` uses lane `n` modulo the lane count,
//! so concurrent writers rarely share a lane and each keeps its lane's
//! cache lines to itself) and returns. Whoever next takes the queue's main
//! mutex — the flusher, a flush, a read of a pinned value, the stats —
//! first *drains* the lanes into the buffer. So writers contend for almost
//! nothing, and the buffer's bookkeeping runs on the flusher's side.
//!
//! # Keeping each key's order across lanes
//!
//! Two writes of one key from two threads sit in two lanes. Each carries
//! its *order*, the key's write-guard count taken when the write began
//! ([`Seen::order`](crate::load::guard::Seen::order)). A drain locks
//! every lane before it empties any: if a write of a key is in the drain,
//! so is every write of the key that finished before it began (that one
//! was pushed, under its lane's lock, before the drain could lock all
//! lanes). Within the drain, the buffer keeps for each key the change with
//! the latest order ([`Buffer::push_ordered`]), whatever lane it came
//! from. Writes of a key that overlap in time have no order to keep (they
//! may share one); the write guards let only the first of them to end
//! cache its value and make the other drop it, so a read takes whichever
//! the queue holds last.
//!
//! Everything that looks into the queue drains first, so a change is
//! visible (pinned) from the moment its push returns. A lane remembers
//! when its oldest change arrived and the buffer is given that time, so
//! `flush_interval` counts from the write, not from the drain. A lane adds
//! its changes to the shared count of undrained changes in chunks (and at
//! once for its first change after a drain), so the count is a few chunks
//! short at most: a writer that finds the count plus that slack near the
//! queue's capacity takes the main mutex (drains, then applies the
//! full-queue policy exactly).
//!
//! # Closing
//!
//! `close` sets `closing` under the main mutex, marks every lane closed
//! under that lane's lock, and drains, all before it lets go of the main
//! mutex. A push checks its lane's mark under the lane's lock and appends
//! (and counts, see above) in that same hold; so a write either reached its
//! lane before the lane was marked, and `close`'s drain takes it, or is
//! refused with `Closed`. A push near capacity checks `closing` under the
//! main mutex, after draining. No write falls between: flushed, handed back
//! by `close`, or refused to its writer (the tests hold a push before its
//! lane and inside it while `close` runs).
//!
//! # Waking the flusher
//!
//! Writers nudge the flusher through a one-slot crossbeam channel: every
//! `batch_size` undrained writes, and on a lane's first write after a drain
//! if the flusher sleeps past that write's `flush_interval`. The flusher
//! publishes when it means to wake (`wake_at`) before it checks for
//! undrained writes, and a writer counts its write before it reads
//! `wake_at`; so one of the two always sees the other, and a write never
//! waits on a flusher asleep for good. The flusher takes a batch under the
//! mutex, calls the store with no lock held, and reports the outcome back;
//! every outcome wakes the threads waiting on `changed` (flushes, writers
//! blocked on a full queue, `close`). While a batch is in flight its
//! changes stay readable in `flying`, so a read never falls back to the
//! store's older copy: a change is *pinned* in the queue from push until
//! the store has acknowledged it.
//!
//! # A key's `Hash` and `Eq`
//!
//! A writer hashes its key (with the buffer's hasher) before it queues the
//! change, and the hash travels with the change into the buffer, which
//! never hashes a key again (see "Hashing each key once" in
//! [`buffer`]). So a key whose `Hash` panics makes its write
//! panic on the writer's thread with nothing queued, and nothing the queue
//! does later hashes a key: not a drain (on the flusher, a reader, a flush,
//! the stats or `close`), a batch, a receipt or a dead letter. The one
//! exception is dropping a key's cached copy (for a dead letter, or a
//! change `close` hands back), which hashes and compares it in the cache:
//! a panic there (of the key's `Hash` or `Eq`) is caught, the copy then
//! stays cached, so reads keep serving it until it is evicted or expires,
//! and the letter still reaches the handler (or the report).
//!
//! A key's `Eq` runs when a drained change meets a held change of an equal
//! hash, and its `Clone` when a change makes a new slot. A panic in either
//! leaves the buffer as it was and the change out of
//! it: the change becomes a [`WriteFailure::KeyPanicked`] dead letter,
//! which the flusher hands to the handler (or keeps for `close`) as it
//! does the store's refusals, after dropping the key's cached copy; a
//! flush waits for it, `close` hands over what the flusher has not, and the
//! panic goes no further, so a reader, a flush or `close` that drained
//! carries on. Every other change still moves and the counts stay right
//! (the change counts as queued and dead-lettered). The flusher copies a
//! key three more times, each under a `catch_unwind`: for the store's
//! batch, before the change is marked in flight
//! ([`Buffer::take_batch_copied`]); for the queue, when a change is
//! dead-lettered with a newer one waiting behind it; and, without a
//! handler, to drop the cached copy of a letter kept for `close`. A copy
//! that panics makes the change it was for (the newer one, in the second
//! case) a `KeyPanicked` dead letter as well, and a letter whose key
//! cannot be copied is kept after its cached copy is dropped: none is
//! lost or left in flight, and a flush still returns. The flusher catches any
//! other panic that ends one of its rounds, pauses ([`PAUSE_AFTER_PANIC`])
//! and carries on, and marks itself exited whenever it ends, so `flush`
//! and `close` never wait on a dead thread. Apart from dropping a cached
//! copy (above), nothing else the flusher does runs a key's `Eq`: the buffer
//! finds a key it holds by its slot when it takes a batch, settles an
//! outcome, retries or splits (see "Comparing keys only on a push" in
//! [`buffer`]), and `close` finds what waits behind a key in flight the
//! same way; so a key that cannot be compared on the flusher is still
//! sent, retried and dead-lettered, and never left in flight (though a
//! copy of it cached by a write that becomes a dead letter stays cached if
//! its `Eq` panics on the flusher too).

mod flusher;

use std::{
    hash::Hash,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{
            AtomicU64, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    thread,
    time::{Duration, Instant},
};

use ahash::RandomState;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{
    DeadLetter, Store, WriteFailure,
    buffer::{self, Backoff, Buffer, Change, Receipt, SlotId, Taken},
    builder::WhenFull,
};
use crate::{
    expiry::{clock::saturating_nanos, unit_random},
    maintenance::Awaited,
    padded::Padded,
};

std::thread_local! {
    /// The address of the queue whose user code runs on this thread (0 if
    /// none): its flusher's (the store, the dead-letter handler, an
    /// eviction listener run by a removal it makes), for the flusher's
    /// whole life, and that of `close` as it hands over what it could not
    /// write (the handler, such listeners). That code must not wait for
    /// the flusher, nor for the hand-over it runs in.
    static USER_CODE_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as running a queue's user code (see
/// [`USER_CODE_OF`]) until it drops, as [`Awaited`] does for
/// `run_pending_tasks`; the thread's previous mark comes back then.
struct RunsUserCode {
    previous: usize,
    _awaited: Awaited,
}

impl RunsUserCode {
    fn of(address: usize) -> Self {
        RunsUserCode {
            previous: USER_CODE_OF.with(|of| of.replace(address)),
            _awaited: Awaited::here(),
        }
    }
}

impl Drop for RunsUserCode {
    fn drop(&mut self) {
        USER_CODE_OF.with(|of| of.set(self.previous));
    }
}

/// The dead-letter handler.
pub(crate) type Handler<K, V, E> = Arc<dyn Fn(DeadLetter<K, V, E>) + Send + Sync>;

/// Drops a key's cached copy (see [`Queue::start`]).
pub(crate) type Forget<K> = Box<dyn Fn(&K) + Send + Sync>;

/// Write-behind settings, checked by the builder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) batch_size: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) when_full: WhenFull,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) drop_timeout: Duration,
}

/// Counters of a write-behind cache: what happened to the writes, and how
/// long the store took.
///
/// Every queued write ends as exactly one of flushed, coalesced or
/// dead-lettered, or is still held: `queued == flushed + coalesced +
/// dead_lettered + queue_len` (a key holds up to two entries: one waiting,
/// one in flight). Writes that [`close`](crate::StoreCache::close) handed
/// back as unwritten are taken out of `queued` and counted nowhere else.
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
/// let cache = Cache::builder().store(Table::default()).write_behind().build().unwrap();
/// cache.insert(1, 10).unwrap();
/// cache.insert(1, 11).unwrap(); // replaces the queued write of key 1
/// cache.flush();
/// let s = cache.write_stats();
/// assert_eq!(s.queued, 2);
/// assert_eq!(s.flushed + s.coalesced, 2);
/// assert_eq!(s.queue_len, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteStats {
    /// Writes queued.
    pub queued: u64,
    /// Writes replaced by a later write of the same key before they were
    /// sent (the store never saw them, and did not need to).
    pub coalesced: u64,
    /// Writes that reached the store.
    pub flushed: u64,
    /// Failed sends scheduled again (after a backoff, or split out of a
    /// failed batch).
    pub retried: u64,
    /// Writes given up on and handed to the dead-letter handler (or kept
    /// for `close`): refused by the store, or not taken into the queue
    /// because their key's `Eq` panicked.
    pub dead_lettered: u64,
    /// Entries held now, waiting or in flight.
    pub queue_len: usize,
    /// Of those, entries in a store call now.
    pub in_flight: usize,
    /// Calls of [`Store::write`] made by the flusher.
    pub store_calls: u64,
    /// Total time of those calls (the flush latency).
    pub store_time: Duration,
    /// Longest of those calls.
    pub max_store_time: Duration,
}

impl WriteStats {
    /// Mean time of one [`Store::write`] call of the
    /// flusher; zero before the first.
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
    /// let cache = Cache::builder().store(Sink).write_behind().build().unwrap();
    /// assert_eq!(cache.write_stats().mean_flush_latency(), std::time::Duration::ZERO);
    /// cache.insert(1, 1).unwrap();
    /// cache.flush();
    /// let s = cache.write_stats();
    /// assert_eq!(s.mean_flush_latency(), s.store_time / s.store_calls as u32);
    /// ```
    pub fn mean_flush_latency(&self) -> Duration {
        let mean = self.store_time.as_nanos() / u128::from(self.store_calls.max(1));
        Duration::from_nanos(saturating_nanos(mean))
    }
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused<K, V> {
    /// The queue is closed.
    Closed,
    /// The queue is full and the policy says fail.
    Full,
    /// The queue is full and the policy says write through: the write is
    /// handed back for the caller to send to the store itself.
    WriteThrough(K, Change<V>),
}

/// What the mutex guards.
struct State<K, V, E> {
    buffer: Buffer<K, V>,
    /// The changes of the batch in flight (the very slice the store was
    /// given), searched by `latest`.
    flying: Arc<Batch<K, V>>,
    /// The slots of `flying`'s keys in the buffer (their hashes and slot
    /// ids), in its order.
    flying_slots: Vec<SlotId>,
    /// An empty vector per lane, swapped into it as it is drained, so lanes
    /// keep their capacity.
    spares: Vec<Vec<Laned<K, V>>>,
    /// No new writes; the flusher drains and exits.
    closing: bool,
    /// The flusher must exit after its current call.
    stop: bool,
    /// The flusher has exited.
    exited: bool,
    /// The flusher waits for a batch or a retry to fall due: it runs no
    /// user code, and once told to stop it ends as soon as it wakes.
    idle: bool,
    /// The counters of the buffer `close` emptied (its unwritten entries
    /// were handed back, so they count as neither queued nor written).
    closed: buffer::BufferStats,
    /// The oldest write `close` handed back unwritten (a seq of the buffer
    /// it emptied), if it handed back any: a flush that took its mark
    /// before that close and waits for this write cannot say it settled.
    handed_back: Option<buffer::Seq>,
    /// Dead letters kept for `close` when there is no handler.
    kept: Vec<DeadLetter<K, V, E>>,
    /// Changes a drain could not place in the buffer (their key's `Eq`
    /// panicked), as dead letters the flusher has yet to hand over (or
    /// keep, without a handler): a flush waits for them too.
    uncompared: Vec<DeadLetter<K, V, E>>,
    /// How many changes drains could not place, ever: counted as queued
    /// and dead-lettered in the stats.
    uncompared_count: u64,
    /// Dead letters settled in the buffer but not yet handed to the
    /// handler: a flush waits for them too.
    reporting: usize,
    store_calls: u64,
    store_time: Duration,
    max_store_time: Duration,
}

impl<K, V, E> State<K, V, E> {
    /// The state of a new queue of `lanes` lanes, around `buffer`.
    fn new(buffer: Buffer<K, V>, lanes: usize) -> Self {
        State {
            buffer,
            flying: Arc::default(),
            flying_slots: Vec::new(),
            spares: (0..lanes).map(|_| Vec::new()).collect(),
            closing: false,
            stop: false,
            exited: false,
            idle: false,
            closed: buffer::BufferStats::default(),
            handed_back: None,
            kept: Vec::new(),
            uncompared: Vec::new(),
            uncompared_count: 0,
            reporting: 0,
            store_calls: 0,
            store_time: Duration::ZERO,
            max_store_time: Duration::ZERO,
        }
    }
}

/// The changes of one store call.
type Batch<K, V> = Vec<(K, Change<V>)>;

/// What `close` took out of the state to report: the buffer it retired
/// and the batch that was in flight.
struct Retired<K, V> {
    buffer: Buffer<K, V>,
    flying: Arc<Batch<K, V>>,
    flying_slots: Vec<SlotId>,
}

impl<K: Hash + Eq + Clone, V: Clone> Retired<K, V> {
    /// The latest change per key not yet written: first those in a store
    /// call that has not returned, then those queued behind an older change
    /// of their key in that call (the older one may still land after
    /// them), then the others queued; with the counts of the first two.
    /// Copies each (user code: a `Clone` that panics reaches `close`'s
    /// caller).
    fn unwritten(&self) -> (Vec<(K, Change<V>)>, usize, usize) {
        // One in flight is older than one of the same key still queued.
        // (No key is hashed or compared: the buffer finds a flying key's
        // queued change by its slot.)
        let queued = |slot: &SlotId| self.buffer.pending_change_in(*slot);
        let flying = || self.flying.iter().zip(&self.flying_slots);
        let mut unwritten: Vec<(K, Change<V>)> = flying()
            .filter(|(_, slot)| queued(slot).is_none())
            .map(|(pair, _)| pair.clone())
            .collect();
        let in_flight = unwritten.len();
        unwritten.extend(
            flying().filter_map(|(pair, slot)| Some((pair.0.clone(), queued(slot)?.clone()))),
        );
        let overtaken = unwritten.len() - in_flight;
        unwritten.extend(
            self.buffer
                .pending_changes()
                .filter(|&(_, _, flying)| !flying)
                .map(|(k, c, _)| (k.clone(), c.clone())),
        );
        (unwritten, in_flight, overtaken)
    }
}

/// A batch taken for the store: the receipts to report its outcome by, and
/// the changes themselves.
type Outgoing<K, V> = (Vec<Receipt<K>>, Arc<Batch<K, V>>);

/// A change in a lane: key, the key's hash (taken by its writer), change,
/// and its order among the writes of the key (from the write guard).
type Laned<K, V> = (K, u64, Change<V>, u32);

/// Changes pushed but not yet drained into the buffer.
struct Inbox<K, V> {
    changes: Vec<Laned<K, V>>,
    /// When the oldest of `changes` arrived (queue clock).
    since: u64,
    /// How many of `changes` are counted in the queue's `undrained`.
    counted: usize,
    /// Set by `close`: no more changes.
    closed: bool,
}

/// One lane, alone on its cache lines.
#[repr(align(128))]
struct Lane<K, V>(Mutex<Inbox<K, V>>);

impl<K, V> Default for Lane<K, V> {
    fn default() -> Self {
        Lane(Mutex::new(Inbox {
            changes: Vec::new(),
            since: 0,
            counted: 0,
            closed: false,
        }))
    }
}

/// `wake_at` while the flusher is awake.
const AWAKE: u64 = 0;

/// How long the flusher waits after a round ended by a panic.
const PAUSE_AFTER_PANIC: Duration = Duration::from_millis(10);

/// The write-behind queue shared by the cache, its loader and the flusher.
///
/// Laid out by who writes what: the settings every push reads never share a
/// cache line with what the flusher or the other writers change, so a push
/// does not miss on them after every batch.
pub(crate) struct Queue<K, V, S: Store<K, V>> {
    lanes: Box<[Lane<K, V>]>,
    /// The sum of the lanes' `counted`: at most `lanes * (chunk - 1)` below
    /// the changes they hold, and above zero whenever one holds any.
    /// Written by writers (per chunk) and drains; read by every push.
    undrained: Padded<AtomicUsize>,
    /// `buffer.len()` as of the last time the main mutex was released.
    /// Written by the flusher and drains; read by every push.
    held: Padded<AtomicUsize>,
    /// When the sleeping flusher wakes by itself (queue clock; `u64::MAX`:
    /// only when nudged), or [`AWAKE`]. Written by the flusher as it sleeps
    /// and wakes.
    wake_at: Padded<AtomicU64>,
    /// Written by whoever holds it, the flusher above all.
    state: Padded<Mutex<State<K, V, S::Error>>>,
    /// Notified after every outcome, and when the flusher exits.
    changed: Condvar,
    /// A lane adds its changes to `undrained` when it has this many
    /// uncounted (and on its first change after a drain).
    chunk: usize,
    wake: Sender<()>,
    config: Config,
    /// The buffer's hasher: writers hash their keys with it (see the
    /// module docs).
    hasher: RandomState,
    origin: Instant,
    store: Arc<S>,
    handler: Option<Handler<K, V, S::Error>>,
    forget: Forget<K>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl<K, V, S> Queue<K, V, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<K, V>,
{
    /// A queue with its flusher thread running. `forget` drops a key's
    /// cached copy: the flusher calls it for each change it gives up on, before
    /// the dead-letter handler sees it, so the cache never keeps serving a
    /// value the store refused.
    pub(crate) fn start(
        store: Arc<S>,
        config: Config,
        handler: Option<Handler<K, V, S::Error>>,
        forget: Forget<K>,
    ) -> Arc<Self> {
        let (wake, woken) = crossbeam_channel::bounded(1);
        let lanes = thread::available_parallelism()
            .map_or(4, usize::from)
            .saturating_mul(4)
            .clamp(4, 64)
            .next_power_of_two();
        let hasher = RandomState::new();
        let queue = Arc::new(Queue {
            lanes: (0..lanes).map(|_| Lane::default()).collect(),
            undrained: Padded(AtomicUsize::new(0)),
            // Small against the capacity (the lanes' uncounted changes are
            // slack in the fast capacity check) and against a batch (so a
            // full batch is noticed).
            chunk: (config.queue_capacity / (4 * lanes))
                .min(config.batch_size)
                .clamp(1, 32),
            held: Padded(AtomicUsize::new(0)),
            wake_at: Padded(AtomicU64::new(AWAKE)),
            state: Padded(Mutex::new(State::new(
                Buffer::with_hasher(config.max_attempts, config.backoff, hasher.clone()),
                lanes,
            ))),
            changed: Condvar::new(),
            wake,
            config,
            hasher,
            origin: Instant::now(),
            store,
            handler,
            forget,
            thread: Mutex::new(None),
        });
        let flusher = queue.clone();
        let handle = thread::Builder::new()
            .name("larder-write-behind".into())
            .spawn(move || flusher.run(&woken))
            .expect("spawning the larder-write-behind thread");
        *queue.thread.lock() = Some(handle);
        queue
    }

    fn now(&self) -> u64 {
        saturating_nanos(self.origin.elapsed().as_nanos())
    }

    fn interval(&self) -> u64 {
        saturating_nanos(self.config.flush_interval.as_nanos())
    }

    fn nudge(&self) {
        // A full slot already holds a wake-up the flusher has not taken.
        let _ = self.wake.try_send(());
    }

    /// Queues `change` for `key` (`order`: its place among the writes of
    /// the key, from the write guard): onto the calling thread's lane, or,
    /// near the queue's capacity, into the buffer by the full-queue policy.
    /// A key already held is always accepted (the write coalesces, or waits
    /// behind its flight), so the buffer holds at most `queue_capacity +
    /// batch_size` entries, plus one per writer that raced past the
    /// capacity check.
    ///
    /// The key is hashed here, on the writer's thread, before anything is
    /// queued: a panicking `Hash` reaches the writer and queues nothing.
    pub(crate) fn push(&self, key: K, change: Change<V>, order: u32) -> Result<(), Refused<K, V>> {
        let hash = self.hasher.hash_one(&key);
        let slack = self.lanes.len() * (self.chunk - 1);
        let counted = self.undrained.load(SeqCst);
        if self.held.load(SeqCst) + counted + slack >= self.config.queue_capacity {
            return self.push_near_capacity(key, hash, change);
        }
        #[cfg(test)]
        tests::hook(tests::Step::BeforeLane);
        // `close` marks every lane closed under its lock before it drains
        // them: a change pushed under the lock before that is drained by
        // `close`, one after is refused here, under the same lock.
        let lane = &self.lanes[thread_lane() & (self.lanes.len() - 1)];
        let mut inbox = lane.0.lock();
        if inbox.closed {
            return Err(Refused::Closed);
        }
        #[cfg(test)]
        tests::hook(tests::Step::InLane);
        let first_in_lane = inbox.changes.is_empty();
        let now = if first_in_lane { self.now() } else { 0 };
        if first_in_lane {
            inbox.since = now;
        }
        inbox.changes.push((key, hash, change, order));
        let uncounted = inbox.changes.len() - inbox.counted;
        if !first_in_lane && uncounted < self.chunk {
            return Ok(());
        }
        // Counted under the lane's lock, so a drain takes exactly what it
        // subtracts.
        inbox.counted += uncounted;
        let before = self.undrained.fetch_add(uncounted, SeqCst);
        drop(inbox);
        let batch = self.config.batch_size.max(1);
        let full_batch = before / batch != (before + uncounted) / batch;
        // A lane's first write after a drain: the flusher may sleep too long
        // for it.
        if full_batch || (first_in_lane && self.sleeps_past(now)) {
            self.nudge();
        }
        Ok(())
    }

    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Whether the caller is user code this queue runs (on its flusher, or
    /// in `close`'s hand-over), which must not wait for the flusher or for
    /// that hand-over.
    fn in_own_user_code(&self) -> bool {
        USER_CODE_OF.with(|of| of.get() == self.address())
    }

    /// [`push`](Self::push) when the queue looks full: under the main
    /// mutex, with the lanes drained, the full-queue policy decides.
    fn push_near_capacity(
        &self,
        key: K,
        hash: u64,
        change: Change<V>,
    ) -> Result<(), Refused<K, V>> {
        let mut st = self.state.lock();
        loop {
            self.drain(&mut st);
            if st.closing {
                return Err(Refused::Closed);
            }
            if st.buffer.len() < self.config.queue_capacity || st.buffer.contains_hashed(&key, hash)
            {
                break;
            }
            match self.config.when_full {
                WhenFull::Fail => return Err(Refused::Full),
                WhenFull::WriteThrough => return Err(Refused::WriteThrough(key, change)),
                // Only the flusher makes room: it cannot wait for itself.
                WhenFull::Block if self.in_own_user_code() => return Err(Refused::Full),
                WhenFull::Block => {
                    let mark = st.buffer.flush_mark();
                    st.buffer.request_flush(mark);
                    self.nudge();
                    self.changed.wait(&mut st);
                }
            }
        }
        let now = self.now();
        st.buffer.push_hashed(key, hash, change, now);
        self.held.store(st.buffer.len(), SeqCst);
        if st
            .buffer
            .ready(now, self.config.batch_size, self.interval())
            || self.sleeps_past(now)
        {
            self.nudge();
        }
        Ok(())
    }

    /// Whether the flusher sleeps past the flush interval of a write made
    /// at `now`, so must be nudged.
    fn sleeps_past(&self, now: u64) -> bool {
        self.wake_at.load(SeqCst) > now.saturating_add(self.interval())
    }

    /// Moves every lane's changes into the buffer, each lane in the order
    /// its changes were pushed, stamped with the time its oldest arrived;
    /// the buffer puts the writes of a key that reached several lanes back
    /// in their order (see the module docs).
    ///
    /// No key is hashed here (its writer did). A key's `Eq` may panic when
    /// its change meets a held one of an equal hash: that change becomes a
    /// [`WriteFailure::KeyPanicked`] dead letter for the flusher to hand
    /// over (it is nudged), the others all move, and the panic goes no
    /// further: the thread that drains (the flusher, a reader, a flush, the
    /// stats, a writer near capacity, `close`) carries on.
    fn drain(&self, st: &mut State<K, V, S::Error>) {
        if self.undrained.load(SeqCst) == 0 {
            return;
        }
        // All lanes at once: a cut no write of a key can cross backwards.
        let mut inboxes: Vec<_> = self.lanes.iter().map(|lane| lane.0.lock()).collect();
        let mut counted = 0;
        // Per lane: when its oldest change arrived, if it had any.
        let mut since = Vec::with_capacity(inboxes.len());
        for (inbox, spare) in inboxes.iter_mut().zip(&mut st.spares) {
            let any = !inbox.changes.is_empty();
            if any {
                std::mem::swap(&mut inbox.changes, spare);
                counted += std::mem::take(&mut inbox.counted);
            }
            since.push(any.then_some(inbox.since));
        }
        drop(inboxes);
        let State {
            buffer,
            spares,
            uncompared,
            uncompared_count,
            ..
        } = st;
        buffer.begin_drain();
        let before = uncompared.len();
        for (since, spare) in since.into_iter().zip(spares.iter_mut()) {
            let Some(since) = since else { continue };
            for (key, hash, change, order) in spare.drain(..) {
                if let Err(lost) = buffer.push_ordered_hashed(key, hash, change, since, order) {
                    uncompared.push(DeadLetter {
                        key: lost.key,
                        change: lost.change,
                        attempts: 0,
                        error: WriteFailure::KeyPanicked(panic_message(&*lost.panic)),
                    });
                }
            }
        }
        // `held` first: a writer in between counts the moved changes twice,
        // never zero times.
        self.held.store(buffer.len(), SeqCst);
        self.undrained.fetch_sub(counted, SeqCst);
        if uncompared.len() > before {
            *uncompared_count += (uncompared.len() - before) as u64;
            self.nudge();
        }
    }

    /// The newest change of `key` not yet acknowledged by the store.
    pub(crate) fn latest(&self, key: &K) -> Option<Change<V>> {
        let hash = self.hasher.hash_one(key);
        let mut st = self.state.lock();
        self.drain(&mut st);
        let flying = || {
            let mut slots = st.flying_slots.iter();
            st.flying
                .iter()
                .find(|(k, _)| slots.next().map(SlotId::hash) == Some(hash) && k == key)
        };
        st.buffer
            .pending_change_hashed(key, hash)
            .or_else(|| flying().map(|(_, c)| c))
            .cloned()
    }

    /// Waits until every write queued before the call has reached the store
    /// or the dead-letter handler, or until `deadline`; true if it did.
    /// Returns at once if the flusher has stopped, or if called from it,
    /// and false as soon as `close` hands back one of those writes.
    pub(crate) fn flush(&self, deadline: Option<Instant>) -> bool {
        let mut st = self.state.lock();
        self.drain(&mut st);
        let mark = st.buffer.flush_mark();
        st.buffer.request_flush(mark);
        self.nudge();
        // A mark taken after `close` counts in the emptied buffer's place,
        // which holds nothing.
        let before_close = !st.stop;
        let handed_back = |st: &State<K, V, S::Error>| {
            before_close && st.handed_back.is_some_and(|first| first <= mark)
        };
        let settled = |st: &State<K, V, S::Error>| {
            st.buffer.is_settled(mark)
                && st.reporting == 0
                && st.uncompared.is_empty()
                && !handed_back(st)
        };
        while !settled(&st) {
            if st.exited || self.in_own_user_code() || handed_back(&st) {
                return false;
            }
            match deadline {
                Some(at) => {
                    if self.changed.wait_until(&mut st, at).timed_out() {
                        return settled(&st);
                    }
                }
                None => self.changed.wait(&mut st),
            }
        }
        true
    }

    /// Stops taking writes, drains the queue until `timeout`, stops the
    /// flusher and joins it (also one waiting for a retry at the deadline;
    /// not one still in user code, a store call or the dead-letter handler:
    /// the thread then ends once that returns). Returns the changes
    /// left unwritten — queued, or in a store call that had not returned —
    /// and the dead letters kept for lack of a handler. A second call
    /// returns what is left, usually nothing, without waiting: the first
    /// emptied the queue.
    pub(crate) fn close(&self, timeout: Duration) -> Leftovers<K, V, S::Error> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.state.lock();
        let exited = self.stop_flusher(&mut st, deadline);
        // What the report copies (user code) is taken out of the state
        // first: a copy that panics then leaves nothing for a second close
        // to copy again, such as the drop of the last handle as that panic
        // unwinds, where a second panic would abort the process.
        let retired = self.retire_buffer(&mut st);
        // Changes a drain could not place (close's own drain among them)
        // that the flusher has not handed over: handed over here, kept in
        // the report without a handler.
        let uncompared = std::mem::take(&mut st.uncompared);
        let (deliver, kept_uncompared) = if self.handler.is_some() {
            st.reporting += uncompared.len();
            (uncompared, 0)
        } else {
            let kept = uncompared.len();
            st.kept.extend(uncompared);
            (Vec::new(), kept)
        };
        let dead = std::mem::take(&mut st.kept);
        drop(st);
        // Writers waiting for room and flushes waiting for outcomes: the
        // queue they wait on is gone (a hung store call may never end).
        self.changed.notify_all();
        self.hand_back(&dead[dead.len() - kept_uncompared..], deliver);
        let (unwritten, in_flight, overtaken) = retired.unwritten();
        self.drop_cached_unwritten(&unwritten);
        // Only another thread can see the flusher exited, so this never
        // joins itself.
        if exited {
            if let Some(handle) = self.thread.lock().take() {
                let _ = handle.join();
            }
        }
        Leftovers {
            unwritten,
            in_flight,
            overtaken,
            dead,
        }
    }

    /// `close`'s first step: closes the lanes, drains them, and waits until
    /// `deadline` for the flusher to empty the queue, then tells it to
    /// stop, and waits for it to end if it runs no user code. Whether it
    /// has ended.
    fn stop_flusher(
        &self,
        st: &mut MutexGuard<'_, State<K, V, S::Error>>,
        deadline: Option<Instant>,
    ) -> bool {
        st.closing = true;
        for lane in &*self.lanes {
            lane.0.lock().closed = true;
        }
        self.drain(st);
        self.nudge();
        // Called from the flusher's own thread, it hands back what is left
        // without waiting; the flusher stops once the user code returns.
        // After an earlier close (`stop`), nothing is left to drain: that
        // close emptied the queue and no write was taken since, so a flusher
        // still in a hung store call is not waited for again.
        while !st.exited && !st.stop && !self.in_own_user_code() {
            let timed_out = match deadline {
                Some(at) => self.changed.wait_until(st, at).timed_out(),
                None => {
                    self.changed.wait(st);
                    false
                }
            };
            if timed_out {
                break;
            }
        }
        st.stop = true;
        self.nudge();
        // A flusher that only waits for a retry (or a batch) to fall due
        // runs no user code: woken, it ends at once, so it is joined too.
        if st.idle {
            while !st.exited {
                self.changed.wait(st);
            }
        }
        st.exited
    }

    /// Replaces the buffer, whose changes `close` reports once, with an
    /// empty one (so a second close does not repeat them), keeping its
    /// counts, and forgets the batch in flight: both handed back.
    fn retire_buffer(&self, st: &mut State<K, V, S::Error>) -> Retired<K, V> {
        let old = std::mem::replace(
            &mut st.buffer,
            Buffer::with_hasher(
                self.config.max_attempts,
                self.config.backoff,
                self.hasher.clone(),
            ),
        );
        if let Some(first) = old.first_open() {
            st.handed_back.get_or_insert(first);
        }
        let b = old.stats();
        let c = &mut st.closed;
        c.queued += b.queued - b.len as u64;
        c.coalesced += b.coalesced;
        c.flushed += b.flushed;
        c.retried += b.retried;
        c.dead_lettered += b.dead_lettered;
        self.held.store(0, SeqCst);
        Retired {
            buffer: old,
            flying: std::mem::take(&mut st.flying),
            flying_slots: std::mem::take(&mut st.flying_slots),
        }
    }

    /// `close`'s user code, run unlocked: drops the cached copies of the
    /// `kept` dead letters, and hands the letters to `deliver` to the
    /// handler.
    fn hand_back(
        &self,
        kept: &[DeadLetter<K, V, S::Error>],
        deliver: Vec<DeadLetter<K, V, S::Error>>,
    ) {
        // The listeners of the copies dropped here and the handler may call
        // `flush`, which waits for the letters handed over here (and for
        // the flusher, maybe still in a hung store call): from here it
        // returns at once, as it does on the flusher.
        let _user_code = RunsUserCode::of(self.address());
        for letter in kept {
            self.drop_cached(&letter.key);
        }
        if !deliver.is_empty() {
            let delivered = deliver.len();
            for letter in deliver {
                self.drop_cached(&letter.key);
                self.report(letter);
            }
            self.state.lock().reporting -= delivered;
            self.changed.notify_all();
        }
    }

    /// `close`'s last user code: drops the cached copies of the
    /// `unwritten` keys (see [`hand_back`](Self::hand_back)).
    fn drop_cached_unwritten(&self, unwritten: &[(K, Change<V>)]) {
        let _user_code = RunsUserCode::of(self.address());
        for (key, _) in unwritten {
            self.drop_cached(key);
        }
    }

    /// Whether a dead-letter handler was given.
    pub(crate) fn has_handler(&self) -> bool {
        self.handler.is_some()
    }

    /// Hands `dead` to the handler (a panicking handler is contained).
    pub(crate) fn report(&self, dead: DeadLetter<K, V, S::Error>) {
        match &self.handler {
            Some(handler) => {
                let _ = catch_unwind(AssertUnwindSafe(|| handler(dead)));
            }
            None => self.state.lock().kept.push(dead),
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> WriteStats {
        let mut st = self.state.lock();
        self.drain(&mut st);
        let (b, c, lost) = (st.buffer.stats(), st.closed, st.uncompared_count);
        WriteStats {
            queued: b.queued + c.queued + lost,
            coalesced: b.coalesced + c.coalesced,
            flushed: b.flushed + c.flushed,
            retried: b.retried + c.retried,
            dead_lettered: b.dead_lettered + c.dead_lettered + lost,
            queue_len: b.len,
            in_flight: st.buffer.in_flight(),
            store_calls: st.store_calls,
            store_time: st.store_time,
            max_store_time: st.max_store_time,
        }
    }

    /// Drops the cached copy of `key`, which hashes the key: a panic there
    /// (on the flusher, or in `close`) is contained, and the copy then stays
    /// cached.
    fn drop_cached(&self, key: &K) {
        let _ = catch_unwind(AssertUnwindSafe(|| (self.forget)(key)));
    }
}

#[cfg(test)]
mod tests;

/// What [`Queue::close`] could not write.
pub(crate) struct Leftovers<K, V, E> {
    /// The latest change per key: first the `in_flight` ones, then the
    /// `overtaken` ones, then the others still queued.
    pub(crate) unwritten: Vec<(K, Change<V>)>,
    /// How many of `unwritten`, from the start, were in a store call that
    /// had not returned (their outcome is unknown).
    pub(crate) in_flight: usize,
    /// How many of `unwritten`, after the `in_flight` ones, were queued
    /// behind an older change of their key in that call (which may still
    /// land after them).
    pub(crate) overtaken: usize,
    pub(crate) dead: Vec<DeadLetter<K, V, E>>,
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_string()
    }
}

/// The calling thread's lane number (before reduction to the lane count):
/// threads are numbered as they first write, so concurrent writers tend to
/// own a lane each and keep it in their own core's cache.
fn thread_lane() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Relaxed);
    }
    // During thread teardown the thread-local is gone: any lane will do.
    LANE.try_with(|lane| *lane).unwrap_or(0)
}
