//! The write-behind buffer: which writes wait for the store, which are in
//! flight, and when each may be sent or retried. A plain `&mut self`
//! structure: no threads, no locks, no clock reads (time is `now`, in
//! nanoseconds on the caller's clock, passed to each call that needs it).
//! Pushes, reads and flush marks are here; a batch's round trip (taken,
//! then settled, retried or given up) is in [`flight`](mod@flight).
//!
//! # Ownership direction
//!
//! cache → buffer → flusher → store. The cache pushes a [`Change`] for a key
//! after updating itself; the flusher takes batches, writes them to the store
//! and reports each outcome back. The buffer never calls out.
//!
//! # One key's life
//!
//! A key holds at most two entries: one *pending* (waiting to be sent) and
//! one *in flight* (taken by the flusher, not yet reported back).
//!
//! - [`Buffer::push`] gives every write a [`Seq`], increasing from 1. A write
//!   to a key with a pending entry replaces that entry's change (the latest
//!   wins; the replaced write counts as *coalesced*) but the entry keeps its
//!   earliest `Seq` and enqueue time, so age-based flushing and
//!   [`Buffer::is_settled`] still see the first write. A write to a key that
//!   is only in flight becomes the key's pending entry and waits behind the
//!   flight: a key is never sent twice at once, and never twice in a batch.
//! - Changes gathered from several places at once (the queue's lanes) are
//!   pushed between [`Buffer::begin_drain`] calls with
//!   [`Buffer::push_ordered`], each carrying its order among its key's
//!   writes: within one drain, a change older than the key's pending change
//!   of the same drain is dropped as coalesced instead of replacing it, so
//!   arrival order across lanes does not matter.
//! - [`Buffer::take_batch`] hands out pending entries oldest first as
//!   [`Taken`] values, marking their keys in flight.
//! - The flusher gives every `Taken` back exactly once:
//!   [`Buffer::succeeded`], [`Buffer::failed`] (this key was rejected) or
//!   [`Buffer::batch_failed`] (the whole batch was rejected; nobody knows
//!   which key is at fault).
//!
//! # Failures, retries, dead letters
//!
//! A key's *attempts* count the sends that failed since its last write
//! landed or was dead-lettered. A failure with attempts left puts the key
//! back as pending with `retry_at = now + Backoff::delay(attempt, draw)`. If a
//! newer change for the key arrived while it was in flight, the failed change
//! is dropped (coalesced: the newer one overwrites it in the store anyway)
//! and the newer one is retried in its place, inheriting the attempts spent
//! and the backoff; this keeps per-key order (an older change is never sent
//! after a newer one) and bounds the work even when the caller keeps writing
//! a key the store always rejects. The send that reaches `max_attempts`
//! returns a [`DeadLetter`] for the caller to report; a newer change behind
//! it then starts afresh.
//!
//! # Splitting a failed batch
//!
//! [`Buffer::batch_failed`] on a batch of `n > 1` entries spends no attempt:
//! each entry comes back at once, marked so that any batch holding it has at
//! most `ceil(n / 2)` entries. The next `take_batch` calls therefore send
//! halves, then quarters, and so on: the entries that share no batch with a
//! poisonous key land, and the poisonous key ends up alone, where its
//! failures spend attempts (a batch of one is an ordinary [`Buffer::failed`]).
//! An identified failure lifts the limit again, so after an outage keys go
//! back to full batches.
//!
//! # Hashing each key once
//!
//! A key is hashed once, when it is pushed ([`Buffer::push`], or by the
//! caller for [`Buffer::push_hashed`] and [`Buffer::push_ordered_hashed`]),
//! and the hash is kept with it: the map grows and moves its entries by
//! that hash, and the buffer's internal lookups reuse it. So a key's `Hash`
//! runs only in the calls that take a key from outside, before they change
//! anything; a key whose `Hash` panics later (on another thread, once some
//! switch flips) cannot tear the map, as it could if the table rehashed it
//! (std's table drops the entries it was moving when a rehash panics).
//!
//! # Comparing keys only on a push
//!
//! A key's `Eq` runs only where a key comes in from outside: a push (to
//! find the key's slot, if it has one) and the lookups by key
//! ([`Buffer::contains_hashed`], [`Buffer::pending_change_hashed`]). Each
//! slot gets an id when it is made (the seq of the push that made it,
//! unique among the slots held), and the keys the buffer keeps (in its
//! map, its queues, a [`Receipt`]) are equal when their hashes and ids are;
//! so taking a batch, settling an outcome, a retry and a split run no
//! user code, and a key whose `Eq` panics (always, or once some switch
//! flips) cannot wedge a batch or leave a key in flight for ever. The
//! pushes look up before they change anything, so a panic there leaves the
//! buffer as it was: [`Buffer::push_ordered_hashed`] hands the change back
//! ([`Uncompared`]) for the caller to report, the other pushes panic.
//!
//! # When to send
//!
//! [`Buffer::ready`] is true when `batch_size` entries are sendable, when the
//! oldest sendable entry has waited `flush_interval`, when a retry has come
//! due (a write sent once does not wait for a batch again), or when a flush
//! is pending and anything is sendable. If it is false,
//! [`Buffer::next_due`] says when it turns true by itself.
//!
//! # Flush
//!
//! `flush()` takes [`Buffer::flush_mark`], calls [`Buffer::request_flush`]
//! with it, and waits until [`Buffer::is_settled`] holds for it: every write
//! up to the mark has landed or been dead-lettered (a write coalesced into a
//! later one settles with that one). A pending flush makes `ready` ignore
//! `batch_size` and `flush_interval`, but backoff is still honoured: a store
//! that fails is not hammered because someone flushes. The wait is bounded:
//! a key is sent at most `max_attempts` times per run of failures, so a flush
//! waits at most about `max_attempts - 1` backoff delays past the last
//! write, plus store time and splits.
//!
//! # Counters
//!
//! Every pushed write ends as exactly one of flushed, coalesced or
//! dead-lettered, or is still held, so
//! `queued == flushed + coalesced + dead_lettered + len` always.
//!
//! # Flusher loop
//!
//! ```text
//! loop {
//!     wait until buffer.ready(now, batch_size, interval), or until
//!         buffer.next_due(interval), or a push / flush request wakes us
//!     let (pairs, receipts) = buffer.take_batch(batch_size, now)
//!         .map(|(copy, taken)| (copy, taken.split()))   // ((key, change), receipt) each
//!         .unzip();
//!     (no lock held) match store.write(&pairs) {
//!         Ok(())  => for r in receipts { buffer.landed(r) },
//!         Err(e)  => let batch = zip(pairs, receipts).map(Taken::from_parts);
//!                    for dead in buffer.batch_failed(batch, now, rng.f64()) {
//!                        (no lock held) dead_letter(dead.key, dead.change, &e)
//!                    },
//!     }
//!     notify flush waiters if buffer.is_settled(their mark)
//! }
//! ```
//!
//! A store that reports per key calls [`Buffer::succeeded`] and
//! [`Buffer::failed`] entry by entry instead.

// The items are `pub` for the `test-util` re-export used by the fuzz target.
#![cfg_attr(not(feature = "test-util"), allow(unreachable_pub))]

use std::{
    any::Any,
    collections::{BTreeMap, HashMap},
    fmt,
    hash::{BuildHasherDefault, Hash},
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    time::Duration,
};

use ahash::RandomState;

mod flight;
mod hashed;
mod seqs;

pub use hashed::SlotId;
use hashed::{Hashed, HashedRef, Probe, StoredHash};
use seqs::{Outstanding, SeqQueue};

/// The sequence number of a pushed write: 1 for the first, increasing by one.
/// 0 stands for "before any write".
pub type Seq = u64;

/// What a write does to the store's record of a key.
///
/// # Examples
///
/// A store's `write` gets a batch of changes; each is a put or a delete:
///
/// ```
/// use larder::Change;
/// let mut db = std::collections::HashMap::new();
/// for (key, change) in [("a", Change::Put(1)), ("b", Change::Put(2)), ("a", Change::Delete)] {
///     match change {
///         Change::Put(v) => db.insert(key, v),
///         Change::Delete => db.remove(key),
///     };
/// }
/// assert_eq!(db, [("b", 2)].into());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<V> {
    /// Store this value.
    Put(V),
    /// Delete the key.
    Delete,
}

/// Retry delays: exponential from `base`, capped at `max`, spread by `jitter`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Cap of the delay before jitter.
    pub max: Duration,
    /// Relative spread, in `0.0..=1.0`: 0.2 means ±20 %.
    pub jitter: f64,
}

impl Backoff {
    /// Nanoseconds to wait after failed attempt number `attempt` (from 1):
    /// `min(base * 2^(attempt - 1), max) * (1 + jitter * (2 * draw - 1))`,
    /// where `draw` is a uniform random number in `0.0..=1.0` (values outside
    /// are clamped, NaN counts as 0.5, a `jitter` outside `0.0..=1.0` is
    /// clamped too).
    pub fn delay(&self, attempt: u32, draw: f64) -> u64 {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let doublings = attempt.saturating_sub(1).min(63);
        let delay = nanos(self.base)
            .saturating_mul(1 << doublings)
            .min(nanos(self.max));
        let clamp = |x: f64, nan: f64| if x.is_nan() { nan } else { x.clamp(0.0, 1.0) };
        let spread = clamp(self.jitter, 0.0) * (2.0 * clamp(draw, 0.5) - 1.0);
        // A float-to-int `as` saturates, and the factor is within 0..=2.
        (delay as f64 * (1.0 + spread)) as u64
    }
}

/// A write handed to the flusher by [`Buffer::take_batch`]. Give it back to
/// the same buffer exactly once, through [`Buffer::succeeded`],
/// [`Buffer::failed`] or [`Buffer::batch_failed`] (or, split with
/// [`split`](Self::split), its [`Receipt`] through
/// [`Buffer::landed`]).
#[derive(Debug)]
pub struct Taken<K, V> {
    change: Change<V>,
    receipt: Receipt<K>,
}

/// The buffer's part of a [`Taken`]: its key and which flight it was,
/// without the change, so a flusher can move the change into the store's
/// batch and still report the outcome.
#[derive(Debug)]
pub struct Receipt<K> {
    key: K,
    /// The key's slot: its hash, as the buffer took it when the key was
    /// pushed, and the slot's id.
    slot: SlotId,
    first: Seq,
    last: Seq,
    queued_at: u64,
    attempt: u32,
}

impl<K> Receipt<K> {
    /// The flight this was taken as.
    fn flight(&self) -> Flight {
        Flight {
            first: self.first,
            last: self.last,
        }
    }

    /// The key's slot: look up what else the buffer holds for the key
    /// with it ([`Buffer::pending_change_in`]) without running the key's
    /// `Eq`.
    pub fn slot(&self) -> SlotId {
        self.slot
    }
}

// The flusher needs only the key and change; tests and the fuzz target read the rest.
#[cfg_attr(not(feature = "test-util"), allow(dead_code))]
impl<K, V> Taken<K, V> {
    /// The key to write.
    pub fn key(&self) -> &K {
        &self.receipt.key
    }

    /// The change to write: the latest pushed for the key.
    pub fn change(&self) -> &Change<V> {
        &self.change
    }

    /// Which send of this key's current run this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.receipt.attempt
    }

    /// The write whose change this carries.
    pub fn seq(&self) -> Seq {
        self.receipt.last
    }

    /// The oldest write this one settles (the earlier ones of the key that
    /// were coalesced into it).
    pub fn first_seq(&self) -> Seq {
        self.receipt.first
    }

    /// The change to give the store, and the receipt to report the outcome
    /// with (which keeps the key; the store's copy comes from
    /// [`Buffer::take_batch_copied`]).
    pub fn split(self) -> (Change<V>, Receipt<K>) {
        (self.change, self.receipt)
    }

    /// Puts back together what [`split`](Self::split) split: give the very
    /// change that came with `receipt`.
    pub fn from_parts(change: Change<V>, receipt: Receipt<K>) -> Self {
        Taken { change, receipt }
    }
}

/// A write the store rejected `max_attempts` times, for the caller to report
/// with its error. The buffer has forgotten it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter<K, V> {
    /// The key.
    pub key: K,
    /// The change that could not be written.
    pub change: Change<V>,
    /// How many times it was sent.
    pub attempts: u32,
}

/// A change [`Buffer::push_ordered_hashed`] could not place: its key's
/// `Eq` panicked when the buffer compared it with a key it holds, or its
/// `Clone` when the buffer copied it for a new slot. The buffer is as it
/// was; the change is the caller's to report.
pub struct Uncompared<K, V> {
    /// The key.
    pub key: K,
    /// The change.
    pub change: Change<V>,
    /// The payload of the `Eq`'s panic.
    pub panic: Box<dyn Any + Send>,
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Uncompared<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uncompared")
            .field("key", &self.key)
            .field("change", &self.change)
            .finish_non_exhaustive()
    }
}

/// The buffer's counters, and how many entries it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Writes pushed.
    pub queued: u64,
    /// Writes replaced by a later write of the same key before landing.
    pub coalesced: u64,
    /// Writes that landed in the store.
    pub flushed: u64,
    /// Failed sends that were scheduled again (after a split, a backoff, or
    /// by a newer change of the key taking the failed one's place).
    pub retried: u64,
    /// Writes given up on and returned as a [`DeadLetter`].
    pub dead_lettered: u64,
    /// Entries held now, pending or in flight ([`Buffer::len`]).
    pub len: usize,
}

/// A key's entry waiting to be sent.
#[derive(Debug)]
struct Pending<V> {
    change: Change<V>,
    /// Earliest write it settles, and the write whose change it carries.
    first: Seq,
    last: Seq,
    /// When `first` was pushed.
    queued_at: u64,
    /// Failed sends spent on this key since its last write settled.
    attempts: u32,
    /// Largest batch this entry may be sent in (lowered by splits).
    cap: usize,
    /// Sent before: once due, it makes `ready` true at once.
    retry: bool,
    /// `Some(t)`: waits in `backoff` under `(t, first)`. `None`: in `queue`
    /// under `first`, or behind the key's flight (in neither).
    retry_at: Option<u64>,
    /// The drain `change` was pushed in and its order there, if it came
    /// through [`Buffer::push_ordered`].
    tag: Option<Tag>,
}

/// Where a change stands among the pushes of one drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag {
    drain: u64,
    order: u32,
}

/// Whether `a` comes before `b` in a wrapping 32-bit order (the two are
/// taken to be less than 2^31 apart).
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Coalesces a write numbered `seq`, tagged `tag`, into its key's waiting
/// change: it replaces the change (and becomes its `last` write) unless it
/// came through the same drain as the change held and was pushed before it
/// there, a drain's older write arriving late, which leaves it as it was.
fn coalesce<V>(pending: &mut Pending<V>, change: Change<V>, seq: Seq, tag: Option<Tag>) {
    let newer = match (pending.tag, tag) {
        (Some(held), Some(this)) if held.drain == this.drain => !before(this.order, held.order),
        _ => true,
    };
    if newer {
        pending.change = change;
        pending.last = seq;
        pending.tag = tag;
    }
}

/// The writes a key has in flight: `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flight {
    first: Seq,
    last: Seq,
}

/// Everything the buffer holds for one key; never both fields `None`.
#[derive(Debug)]
struct Slot<V> {
    pending: Option<Pending<V>>,
    flight: Option<Flight>,
}

/// The coalescing write-behind buffer (see the module docs).
#[derive(Debug)]
pub struct Buffer<K, V> {
    /// By key and the hash it was pushed with; the map never hashes a key.
    slots: HashMap<Hashed<K>, Slot<V>, BuildHasherDefault<StoredHash>>,
    /// Hashes the keys pushed by [`push`](Self::push) and looked up by key
    /// (the fuzz target's and the tests' calls; the queue hashes its keys
    /// itself, with the same hasher).
    #[cfg(any(test, feature = "test-util"))]
    hasher: RandomState,
    /// Sendable now, by first seq: pending, key not in flight, no backoff.
    queue: SeqQueue<Hashed<K>>,
    /// Pending retries by `(retry_at, first)`; move to `queue` when due.
    backoff: BTreeMap<(u64, Seq), Hashed<K>>,
    /// The first seq of every entry held, pending or in flight.
    outstanding: Outstanding,
    /// Entries in `queue` that are retries.
    queued_retries: usize,
    in_flight: usize,
    last_seq: Seq,
    /// The highest mark passed to `request_flush`.
    flush_to: Seq,
    /// The drain under way (see [`begin_drain`](Self::begin_drain)); 0
    /// before the first.
    drain: u64,
    max_attempts: u32,
    backoff_policy: Backoff,
    stats: BufferStats,
    /// Changes given up because their key could not be copied (its
    /// `Clone` panicked) as a batch was taken or a flight settled: out of
    /// the buffer and counted dead-lettered, for
    /// [`take_uncopied`](Self::take_uncopied).
    uncopied: Vec<Uncompared<K, V>>,
}

impl<K: Hash + Eq + Clone, V> Buffer<K, V> {
    /// An empty buffer that sends a write at most `max_attempts` times
    /// (0 counts as 1) and waits `backoff` between attempts.
    #[cfg(any(test, feature = "test-util"))]
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        Self::with_hasher(max_attempts, backoff, RandomState::new())
    }

    /// [`new`](Self::new), hashing keys with `hasher`: the hashes given to
    /// [`push_hashed`](Self::push_hashed) and the other `_hashed` calls are
    /// `hasher.hash_one(&key)`.
    pub fn with_hasher(max_attempts: u32, backoff: Backoff, hasher: RandomState) -> Self {
        // Kept only for the by-key calls of the tests and the fuzz target.
        #[cfg(not(any(test, feature = "test-util")))]
        let _ = hasher;
        Self {
            slots: HashMap::default(),
            #[cfg(any(test, feature = "test-util"))]
            hasher,
            queue: SeqQueue::default(),
            backoff: BTreeMap::new(),
            outstanding: Outstanding::default(),
            queued_retries: 0,
            in_flight: 0,
            last_seq: 0,
            flush_to: 0,
            drain: 0,
            max_attempts: max_attempts.max(1),
            backoff_policy: backoff,
            stats: BufferStats::default(),
            uncopied: Vec::new(),
        }
    }

    /// Queues `change` for `key`, pushed at `now`; returns its sequence
    /// number. Coalesces with the key's pending entry if it has one.
    ///
    /// # Panics
    ///
    /// If the key's `Hash` or `Eq` panics; the buffer is then as it was.
    #[cfg(any(test, feature = "test-util"))]
    pub fn push(&mut self, key: K, change: Change<V>, now: u64) -> Seq {
        let hash = self.hasher.hash_one(&key);
        self.push_hashed(key, hash, change, now)
    }

    /// [`push`](Self::push) of a key already hashed (`hash`: see
    /// [`with_hasher`](Self::with_hasher)): only the key's `Eq` can panic,
    /// and the buffer is then as it was.
    pub fn push_hashed(&mut self, key: K, hash: u64, change: Change<V>, now: u64) -> Seq {
        self.push_tagged(hash, key, change, now, None)
            .unwrap_or_else(|lost| resume_unwind(lost.panic))
    }

    /// Starts a drain: a batch of changes gathered from several sources
    /// (the queue's per-thread lanes) whose arrival order is not their
    /// order, pushed with [`push_ordered`](Self::push_ordered).
    pub fn begin_drain(&mut self) {
        self.drain += 1;
    }

    /// [`push`](Self::push) for a change of the current drain that carries
    /// `order`, its place among the writes of its key (a wrapping counter:
    /// two writes of one key compare by the sign of their difference). If
    /// the key's pending change came in this same drain with a later order,
    /// this change is older than it: it is counted as coalesced and
    /// dropped, and the pending change stays. Between `begin_drain` and the
    /// last `push_ordered` of a drain, take no batch: a change already in
    /// flight is not compared.
    ///
    /// # Panics
    ///
    /// If the key's `Hash` or `Eq` panics; the buffer is then as it was.
    #[cfg(any(test, feature = "test-util"))]
    pub fn push_ordered(&mut self, key: K, change: Change<V>, now: u64, order: u32) -> Seq {
        let hash = self.hasher.hash_one(&key);
        self.push_ordered_hashed(key, hash, change, now, order)
            .unwrap_or_else(|lost| resume_unwind(lost.panic))
    }

    /// [`push_ordered`](Self::push_ordered) of a key already hashed
    /// (`hash`: see [`with_hasher`](Self::with_hasher)), which does not
    /// panic: if the key's `Eq` panics (the only user code it runs), the
    /// buffer is as it was and the key, the change and the panic come back
    /// as [`Uncompared`], for the caller to report.
    pub fn push_ordered_hashed(
        &mut self,
        key: K,
        hash: u64,
        change: Change<V>,
        now: u64,
        order: u32,
    ) -> Result<Seq, Uncompared<K, V>> {
        let tag = Tag {
            drain: self.drain,
            order,
        };
        self.push_tagged(hash, key, change, now, Some(tag))
    }

    fn push_tagged(
        &mut self,
        hash: u64,
        key: K,
        change: Change<V>,
        now: u64,
        tag: Option<Tag>,
    ) -> Result<Seq, Uncompared<K, V>> {
        // The lookup first: it is the only user code here (the key's `Eq`),
        // so a panic leaves the buffer as it was (a lookup changes nothing).
        // It is the one lookup by key; a new slot is then inserted by its
        // id, which compares no keys.
        let slots = &mut self.slots;
        let probe = HashedRef(hash, &key);
        let lookup = move || {
            // Moved out, so the slot found outlives the closure.
            let slots = slots;
            slots.get_mut(&probe as &dyn Probe<K>)
        };
        let held = match catch_unwind(AssertUnwindSafe(lookup)) {
            Ok(held) => held,
            Err(panic) => return Err(Uncompared { key, change, panic }),
        };
        // A new slot keeps the key twice (its map and its queue): the copy,
        // user code too, is made before anything changes, so a `Clone`
        // that panics also leaves the buffer as it was.
        let copy = match held {
            Some(_) => None,
            None => match catch_unwind(AssertUnwindSafe(|| key.clone())) {
                Ok(copy) => Some(copy),
                Err(panic) => return Err(Uncompared { key, change, panic }),
            },
        };
        self.last_seq += 1;
        let seq = self.last_seq;
        self.stats.queued += 1;
        let fresh = |change| Pending {
            change,
            first: seq,
            last: seq,
            queued_at: now,
            attempts: 0,
            cap: usize::MAX,
            retry: false,
            retry_at: None,
            tag,
        };
        match held {
            Some(slot) => match &mut slot.pending {
                Some(pending) => {
                    self.stats.coalesced += 1;
                    coalesce(pending, change, seq, tag);
                    return Ok(seq);
                }
                // Only in flight: wait behind it, in no index.
                pending @ None => *pending = Some(fresh(change)),
            },
            None => {
                let copy = copy.expect("a new slot's key was copied");
                self.insert_slot(hash, key, copy, fresh(change));
            }
        }
        self.outstanding.insert(seq);
        Ok(seq)
    }

    /// Gives `key` (hashed `hash`) a new slot with `pending`, queued under
    /// `pending.first`; `copy` is the key's copy the queue keeps.
    fn insert_slot(&mut self, hash: u64, key: K, copy: K, pending: Pending<V>) {
        let seq = pending.first;
        self.queue.insert(
            seq,
            Hashed {
                hash,
                id: seq,
                key: copy,
            },
        );
        let key = Hashed { hash, id: seq, key };
        self.slots.insert(
            key,
            Slot {
                pending: Some(pending),
                flight: None,
            },
        );
    }

    /// Whether the flusher should send a batch now: `batch_size` entries are
    /// sendable, the oldest sendable one has waited `flush_interval`
    /// nanoseconds, a retry is due, or a flush is pending and anything is
    /// sendable. When true, [`take_batch`](Self::take_batch) returns at least
    /// one entry.
    pub fn ready(&self, now: u64, batch_size: usize, flush_interval: u64) -> bool {
        if self.queued_retries > 0 || self.next_retry().is_some_and(|at| at <= now) {
            return true;
        }
        let Some((_, oldest)) = self.queue.first() else {
            return false;
        };
        self.queue.len() >= batch_size.max(1)
            || self.flush_pending()
            || self
                .pending(oldest)
                .queued_at
                .saturating_add(flush_interval)
                <= now
    }

    /// When [`ready`](Self::ready) is false: the earliest time at which it
    /// turns true with no other call (the oldest sendable entry's age limit
    /// or the earliest retry), or `None` if only a push or a flight's outcome
    /// can change it.
    pub fn next_due(&self, flush_interval: u64) -> Option<u64> {
        let aged = self.queue.first().map(|(_, oldest)| {
            let queued_at = self.pending(oldest).queued_at;
            queued_at.saturating_add(flush_interval)
        });
        match (aged, self.next_retry()) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    /// The sequence number of the last write pushed (0 if none): pass it to
    /// [`request_flush`](Self::request_flush) and
    /// [`is_settled`](Self::is_settled) to wait for everything written so far.
    pub fn flush_mark(&self) -> Seq {
        self.last_seq
    }

    /// Asks for every write up to `mark` to be sent without waiting for a
    /// full batch or the flush interval (backoff still applies).
    pub fn request_flush(&mut self, mark: Seq) {
        self.flush_to = self.flush_to.max(mark.min(self.last_seq));
    }

    /// Whether every write with a sequence number up to `mark` has landed or
    /// been dead-lettered. Once true for a mark, it stays true.
    pub fn is_settled(&self, mark: Seq) -> bool {
        self.outstanding.first().is_none_or(|first| first > mark)
    }

    /// The oldest write that has not landed or been dead-lettered, if any:
    /// [`is_settled`](Self::is_settled)`(m)` is false exactly for the marks
    /// `m` from it on.
    pub fn first_open(&self) -> Option<Seq> {
        self.outstanding.first()
    }

    /// Whether `key` has a write that has not landed or been dead-lettered
    /// (the cache must not evict or expire such a key).
    #[cfg(any(test, feature = "test-util"))]
    pub fn contains(&self, key: &K) -> bool {
        self.contains_hashed(key, self.hasher.hash_one(key))
    }

    /// [`contains`](Self::contains) of a key already hashed (`hash`: see
    /// [`with_hasher`](Self::with_hasher)).
    pub fn contains_hashed(&self, key: &K, hash: u64) -> bool {
        self.slot(hash, key).is_some()
    }

    /// The change of `key` waiting to be sent, if any (not one in flight:
    /// the flusher holds that).
    #[cfg(any(test, feature = "test-util"))]
    pub fn pending_change(&self, key: &K) -> Option<&Change<V>> {
        self.pending_change_hashed(key, self.hasher.hash_one(key))
    }

    /// [`pending_change`](Self::pending_change) of a key already hashed
    /// (`hash`: see [`with_hasher`](Self::with_hasher)).
    pub fn pending_change_hashed(&self, key: &K, hash: u64) -> Option<&Change<V>> {
        self.slot(hash, key)?.pending.as_ref().map(|p| &p.change)
    }

    /// The change waiting to be sent in the slot `slot` (from a
    /// [`Receipt`] of its key's flight), if any: what
    /// [`pending_change`](Self::pending_change) finds for that key, found
    /// without running the key's `Eq`.
    pub fn pending_change_in(&self, slot: SlotId) -> Option<&Change<V>> {
        let held = self.slots.get(&slot as &dyn Probe<K>)?;
        held.pending.as_ref().map(|p| &p.change)
    }

    /// Every change waiting to be sent (not those in flight), in no
    /// particular order, with whether a change of its key is in flight:
    /// what is left unwritten if the flusher stops.
    pub fn pending_changes(&self) -> impl Iterator<Item = (&K, &Change<V>, bool)> {
        self.slots.iter().filter_map(|(k, slot)| {
            let pending = slot.pending.as_ref()?;
            Some((&k.key, &pending.change, slot.flight.is_some()))
        })
    }

    /// The slot of `key`, whose hash is `hash`.
    fn slot(&self, hash: u64, key: &K) -> Option<&Slot<V>> {
        self.slots.get(&HashedRef(hash, key) as &dyn Probe<K>)
    }

    /// Entries held, pending or in flight (a key has up to two).
    pub fn len(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether nothing is pending or in flight.
    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Entries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The counters.
    pub fn stats(&self) -> BufferStats {
        BufferStats {
            len: self.len(),
            ..self.stats
        }
    }

    /// The changes given up since the last call because their key's
    /// `Clone` panicked as a batch was taken
    /// ([`take_batch_copied`](Self::take_batch_copied)) or a dead-lettered
    /// flight settled with a newer change behind it ([`failed`](Self::failed)):
    /// out of the buffer and counted dead-lettered, each with its key and
    /// the panic, for the caller to report.
    pub fn take_uncopied(&mut self) -> Vec<Uncompared<K, V>> {
        std::mem::take(&mut self.uncopied)
    }

    /// Panics with a description of the first inconsistency between the
    /// slots, the indexes and the counters. For tests and fuzzing only.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub fn check_invariants(&self) {
        let (mut flights, mut unindexed, mut retries) = (0, 0, 0);
        let mut firsts = std::collections::BTreeSet::new();
        for (key, slot) in &self.slots {
            assert!(
                slot.pending.is_some() || slot.flight.is_some(),
                "empty slot"
            );
            assert_eq!(key.hash, self.hasher.hash_one(&key.key), "stored hash");
            assert!((1..=self.last_seq).contains(&key.id), "slot id");
            if let Some(f) = slot.flight {
                assert!(f.first <= f.last, "flight range");
                assert!(firsts.insert(f.first), "first seq held twice");
                flights += 1;
            }
            let Some(p) = &slot.pending else { continue };
            assert!(firsts.insert(p.first), "first seq held twice");
            let (behind, retry) = self.check_pending(key, p, slot.flight);
            unindexed += usize::from(behind);
            retries += usize::from(retry);
        }
        let pendings = firsts.len() - flights;
        assert_eq!(
            self.queue.len() + self.backoff.len() + unindexed,
            pendings,
            "indexes"
        );
        assert_eq!(flights, self.in_flight, "in-flight count");
        assert_eq!(retries, self.queued_retries, "queued retries");
        assert!(
            firsts.iter().copied().eq(self.outstanding.iter()),
            "outstanding seqs"
        );
        let s = self.stats;
        let ended = s.flushed + s.coalesced + s.dead_lettered;
        assert_eq!(s.queued, ended + self.len() as u64, "counters");
    }

    /// Checks one pending entry against the indexes; returns whether it
    /// waits behind a flight and whether it is a retry in `queue`.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    fn check_pending(
        &self,
        key: &Hashed<K>,
        p: &Pending<V>,
        flight: Option<Flight>,
    ) -> (bool, bool) {
        assert!(
            p.first <= p.last && p.last <= self.last_seq,
            "pending range"
        );
        assert!(
            p.attempts < self.max_attempts && p.cap >= 1,
            "attempts / cap"
        );
        match (flight, p.retry_at) {
            (Some(f), None) => {
                assert!(f.last < p.first, "pending behind an older flight");
                assert!(!p.retry && p.attempts == 0, "behind a flight, yet tried");
                (true, false)
            }
            (Some(_), Some(_)) => panic!("pending in backoff behind a flight"),
            (None, None) => {
                assert!(self.queue.get(p.first) == Some(key), "not in queue");
                (false, p.retry)
            }
            (None, Some(at)) => {
                assert!(
                    self.backoff.get(&(at, p.first)) == Some(key),
                    "not in backoff"
                );
                assert!(p.retry, "in backoff, never sent");
                (false, false)
            }
        }
    }

    /// The pending entry of a key in `queue`.
    fn pending(&self, key: &Hashed<K>) -> &Pending<V> {
        let slot = self.slots.get(key).expect("queued key has a slot");
        slot.pending.as_ref().expect("queued key is pending")
    }

    fn next_retry(&self) -> Option<u64> {
        self.backoff.first_key_value().map(|(&(at, _), _)| at)
    }

    fn flush_pending(&self) -> bool {
        !self.is_settled(self.flush_to)
    }
}

#[cfg(test)]
mod tests;
