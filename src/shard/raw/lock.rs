//! The shard lock: a reader-writer lock whose readers mostly write a word
//! of their own, and whose release counts a hit in the same write.
//!
//! A read hit on an untimed cache is a hash, a lock, one index chunk, one
//! slot and an unlock. With `parking_lot`'s lock and a separate exact hit
//! counter it came to 133 instructions in a scratch loop against
//! quick_cache's 119. The first version of this lock carried the shard's
//! *hit count* in its state word, so a `get` took the lock with one
//! `lock xadd` and released it with another that added one to the count as
//! its reader left (119 instructions). But every reader of a shard still
//! wrote the one state word, so two threads reading the same shard bounced
//! its cache line between their cores, and each read's two atomic adds on a
//! shared line cost more than they would on a private one.
//!
//! # Reader slots
//!
//! So each lock also has [`SLOTS`] reader slots, each a word on cache lines
//! of its own. A thread's process-wide index
//! ([`thread_index`](crate::stats::thread_index)) picks its slot; a reader
//! marks the slot [`HELD`] with a compare-exchange, then looks at the state
//! word: if no writer has claimed the lock it is in, having written only
//! its own slot's line and read the state word's (which stays shared in
//! every reader's cache while no writer comes). Its release is a plain
//! store of the slot's value before plus its hits ([`SLOT_HIT`]), not an
//! atomic add: the holder is the slot's only writer. If the slot is held
//! (another thread with the same slot, or this thread reading the same
//! shard twice) or a writer has claimed the lock, the reader uses the state
//! word as below. A writer claims the word, waits for the word's readers,
//! then for each held slot. The handshake, reader marks slot then reads
//! word, writer marks word then reads slots, all `SeqCst`, is Dekker's: at
//! least one of them sees the other.
//!
//! Measured against the word-only lock (both builds linked into one process
//! under two package names, alternating 0.2 s rounds): a get hit over 1,000
//! hot keys of a 100k cache runs 1.42x as fast on one thread and 2.4x on
//! two; mixed Zipf reads and writes, where the write lock and the policy
//! dominate, are level (0.99-1.02x). 2, 4 and 8 slots measured the same on
//! this 2-core machine; 4 gives threads on a 4-core machine a slot each.
//! The slots cost 512 bytes per shard.
//!
//! Writers pay for the slots: they read four more lines, and a writer that
//! finds a slot held spins, then yields, until it is free (a slot reader's
//! plain store cannot wake a sleeper). Shard locks are held for short
//! sections with no user code under them, so that wait is short.
//!
//! # The state word
//!
//! | bits | meaning |
//! |---|---|
//! | 0 | [`WRITER`]: a writer holds the lock, or has claimed it and waits for the readers to leave |
//! | 1 | [`PARKED`]: some thread may be parked on the lock; a release that sees it wakes sleepers (see below) |
//! | 2..25 | the number of readers inside in the word, or about to back out ([`ONE_READER`]) |
//! | 25..64 | hits counted by word readers' [`unlock_counting`], modulo 2^39 ([`ONE_HIT`]) |
//!
//! A word reader adds [`ONE_READER`] first and looks afterwards: if a
//! writer had claimed the lock it takes its unit back and waits. A writer
//! claims the lock with one `fetch_or`, which keeps new readers out (of the
//! word and the slots), and then waits for the readers inside to leave, so
//! a stream of readers cannot starve it. Waiting in the word spins briefly,
//! then parks in `parking_lot_core`'s parking lot, keyed by the word's
//! address; the bit [`PARKED`] is set (under the parking lot's bucket lock,
//! with the condition re-checked in the same atomic operation) before a
//! thread sleeps. The last word reader out, seeing it, wakes all sleepers
//! to look again (cheap, for the same short sections); a writer's release
//! wakes the first waiting writer or every waiting reader, and about once
//! every 0.5 ms hands the lock straight to them (see
//! `unlock_exclusive_slow`).
//!
//! The lock is written once, generic over its words ([`Word`]) and its
//! parking lot ([`Parking`]), so that the loom tests at the end of this
//! file check the code the crate runs: the crate instantiates it with
//! `std`'s `AtomicU64` and `parking_lot_core` ([`RawShardLock`]), the tests
//! with loom's atomic and a model of the parking lot that keeps its
//! guarantees. Both are resolved at compile time.
//!
//! 23 bits of readers hold every thread a process can have (Linux caps thread
//! ids at 2^22); the word's hit count wraps after 2^39 hits on one shard, and
//! [`HitCount`] widens it to 64 bits as long as it is read at least that
//! often (the maintenance thread reads it every pass); a slot's count has
//! 63 bits and does not wrap.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{
    AtomicU64, Ordering,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

use parking_lot_core::{
    DEFAULT_UNPARK_TOKEN, FilterOp, ParkResult, ParkToken, SpinWait, UnparkToken,
};

/// A writer holds or has claimed the lock.
const WRITER: u64 = 1;
/// A thread may be parked on the lock.
const PARKED: u64 = 1 << 1;
/// One reader.
const ONE_READER: u64 = 1 << 2;
/// Bits of the reader count.
const READERS: u64 = ((1 << 23) - 1) * ONE_READER;
/// Shift of the hit count.
const HIT_SHIFT: u32 = 25;
/// One counted hit.
const ONE_HIT: u64 = 1 << HIT_SHIFT;
/// The hit count's width, as a mask of its value.
const HIT_MASK: u64 = u64::MAX >> HIT_SHIFT;
const _: () = assert!(READERS & (WRITER | PARKED) == 0 && READERS < ONE_HIT);

/// Reader slots per lock.
const SLOTS: usize = 4;
/// A slot's bit 0: a reader is inside through this slot.
const HELD: u64 = 1;
/// One hit counted in a slot (bits 1..64, which do not wrap in practice:
/// 2^63 hits).
const SLOT_HIT: u64 = 2;

/// The atomic operations the lock makes on its state word: `std`'s
/// [`AtomicU64`] in the crate, and loom's in the model-checking tests.
pub(crate) trait Word: Default {
    /// [`AtomicU64::load`].
    fn load(&self, order: Ordering) -> u64;
    /// [`AtomicU64::store`].
    fn store(&self, value: u64, order: Ordering);
    /// [`AtomicU64::fetch_add`].
    fn fetch_add(&self, value: u64, order: Ordering) -> u64;
    /// [`AtomicU64::fetch_sub`].
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64;
    /// [`AtomicU64::fetch_or`].
    fn fetch_or(&self, value: u64, order: Ordering) -> u64;
    /// [`AtomicU64::fetch_and`].
    fn fetch_and(&self, value: u64, order: Ordering) -> u64;
    /// [`AtomicU64::compare_exchange_weak`].
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// Orders this thread's `SeqCst` read-modify-write of one word before
    /// its `SeqCst` load of another (the reader slots' handshake). `std`'s
    /// atomics need nothing here: `SeqCst` operations are in one total
    /// order. loom models `SeqCst` accesses as `AcqRel` only (its issue
    /// 180), so its word issues a `SeqCst` fence.
    fn order_fence(&self);
}

/// Implements [`Word`] for an atomic type with `AtomicU64`'s methods, by
/// forwarding each operation.
macro_rules! forward_word {
    ($atomic:ty, $fence:expr) => {
        impl Word for $atomic {
            #[inline]
            fn load(&self, order: Ordering) -> u64 {
                self.load(order)
            }
            #[inline]
            fn store(&self, value: u64, order: Ordering) {
                self.store(value, order)
            }
            #[inline]
            fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
                self.fetch_add(value, order)
            }
            #[inline]
            fn fetch_sub(&self, value: u64, order: Ordering) -> u64 {
                self.fetch_sub(value, order)
            }
            #[inline]
            fn fetch_or(&self, value: u64, order: Ordering) -> u64 {
                self.fetch_or(value, order)
            }
            #[inline]
            fn fetch_and(&self, value: u64, order: Ordering) -> u64 {
                self.fetch_and(value, order)
            }
            #[inline]
            fn compare_exchange_weak(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                self.compare_exchange_weak(current, new, success, failure)
            }
            #[inline]
            fn order_fence(&self) {
                $fence
            }
        }
    };
}

forward_word!(AtomicU64, ());

/// What an [`unpark_filter`](Parking::unpark_filter) did, as its callback
/// sees it (`parking_lot_core`'s own result cannot be built outside it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unparked {
    /// Threads it is waking.
    threads: usize,
    /// Whether threads are still parked on the key.
    more: bool,
    /// Whether this release should hand the lock over (fairness).
    fair: bool,
}

/// Where waiting threads sleep: `parking_lot_core`'s parking lot
/// ([`ParkingLot`]) in the crate, a model of it in the loom tests. The
/// operations are `parking_lot_core`'s `park`, `unpark_all` and
/// `unpark_filter`, with their guarantees: `validate` and `callback` run
/// under the lock of the key's queue, so that no thread parks or is
/// unparked on the key meanwhile.
///
/// # Safety
///
/// Implementations must keep those guarantees. Callers must use `key` for
/// this lock only, and pass closures that neither panic nor park.
pub(crate) unsafe trait Parking {
    /// Whether a waiter spins a little before it parks.
    const SPINS: bool;
    /// Parks the thread with `token` unless `validate` returns false.
    ///
    /// # Safety
    ///
    /// See the trait.
    unsafe fn park(
        &self,
        key: usize,
        validate: impl FnOnce() -> bool,
        token: ParkToken,
    ) -> ParkResult;
    /// Wakes every thread parked on `key` with `token`.
    ///
    /// # Safety
    ///
    /// See the trait.
    unsafe fn unpark_all(&self, key: usize, token: UnparkToken);
    /// Wakes the threads `filter` picks, in parking order, with the token
    /// `callback` returns.
    ///
    /// # Safety
    ///
    /// See the trait.
    unsafe fn unpark_filter(
        &self,
        key: usize,
        filter: impl FnMut(ParkToken) -> FilterOp,
        callback: impl FnOnce(Unparked) -> UnparkToken,
    );
    /// Gives the processor away while a writer waits for a reader slot.
    fn yield_now(&self);
}

/// `parking_lot_core`'s global parking lot.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ParkingLot;

// SAFETY: forwards to `parking_lot_core`, whose guarantees these are.
unsafe impl Parking for ParkingLot {
    const SPINS: bool = true;

    unsafe fn park(
        &self,
        key: usize,
        validate: impl FnOnce() -> bool,
        token: ParkToken,
    ) -> ParkResult {
        // SAFETY: the caller's contract is `park`'s.
        unsafe { parking_lot_core::park(key, validate, || {}, |_, _| {}, token, None) }
    }

    unsafe fn unpark_all(&self, key: usize, token: UnparkToken) {
        // SAFETY: the caller's contract is `unpark_all`'s.
        unsafe {
            parking_lot_core::unpark_all(key, token);
        }
    }

    unsafe fn unpark_filter(
        &self,
        key: usize,
        filter: impl FnMut(ParkToken) -> FilterOp,
        callback: impl FnOnce(Unparked) -> UnparkToken,
    ) {
        let callback = |result: parking_lot_core::UnparkResult| {
            callback(Unparked {
                threads: result.unparked_threads,
                more: result.have_more_threads,
                fair: result.be_fair,
            })
        };
        // SAFETY: the caller's contract is `unpark_filter`'s.
        unsafe {
            parking_lot_core::unpark_filter(key, filter, callback);
        }
    }

    fn yield_now(&self) {
        std::thread::yield_now();
    }
}

/// The raw lock behind [`lock_api::RwLock`]; see the module docs. Generic
/// over its word and its parking lot only so that the loom tests can check
/// this very code; the crate uses [`RawShardLock`].
#[derive(Debug)]
pub(crate) struct RawLock<W, P> {
    state: W,
    /// Reader slots, each on its own pair of cache lines (see the module
    /// docs).
    slots: [Padded<W>; SLOTS],
    parking: PhantomData<P>,
}

/// A reader slot's word, alone on two cache lines (the adjacent-line
/// prefetcher pulls lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<W>(W);

/// The shard lock's raw lock: `std`'s atomics, `parking_lot_core`'s lot.
pub(crate) type RawShardLock = RawLock<AtomicU64, ParkingLot>;

/// A shard's [`RwLock`](lock_api::RwLock). Shared access goes through
/// [`read`], which tries the thread's reader slot first.
pub(crate) type ShardLock<T> = lock_api::RwLock<RawShardLock, T>;
/// Exclusive access to a shard.
pub(crate) type WriteGuard<'a, T> = lock_api::RwLockWriteGuard<'a, RawShardLock, T>;

/// Shared access to a shard, from [`read`]: in a reader slot or in the
/// state word's reader count.
#[derive(Debug)]
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a ShardLock<T>,
    /// The slot taken and its value before, or `None` for the word.
    slot: Option<(usize, u64)>,
}

/// Takes `lock` shared: in the calling thread's reader slot if no other
/// reader holds it, else in the state word.
#[inline]
pub(crate) fn read<T>(lock: &ShardLock<T>) -> ReadGuard<'_, T> {
    // SAFETY: the raw lock is used to lock it shared, and the guard made
    // here releases that acquisition, once.
    let raw = unsafe { lock.raw() };
    let slot = raw.acquire_read(crate::stats::thread_index());
    ReadGuard { lock, slot }
}

impl<T> ReadGuard<'_, T> {
    /// Releases the lock, counting `hits` hits as it leaves.
    #[inline]
    fn release(self, hits: u64) {
        let guard = std::mem::ManuallyDrop::new(self);
        // SAFETY: the guard held one shared acquisition, described by
        // `slot`, and will not be dropped: this releases it, once.
        unsafe { guard.lock.raw().release_read(guard.slot, hits) }
    }
}

impl<T> std::ops::Deref for ReadGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock shared, so no writer has access
        // until it is released.
        unsafe { &*self.lock.data_ptr() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: as in `release`; a dropped guard is not used again.
        unsafe { self.lock.raw().release_read(self.slot, 0) }
    }
}

/// Releases a shared lock, counting a hit in the same store or add if
/// `hit`.
#[inline]
pub(crate) fn unlock_counting<T>(guard: ReadGuard<'_, T>, hit: bool) {
    guard.release(u64::from(hit));
}

/// The hits `lock` has counted, in its slots and its word (widened to 64
/// bits).
pub(crate) fn hits<T>(lock: &ShardLock<T>, widened: &HitCount) -> u64 {
    // SAFETY: only reads the words; nothing is locked or unlocked.
    let raw = unsafe { lock.raw() };
    let slots: u64 = raw.slots.iter().map(|s| s.0.load(Relaxed) >> 1).sum();
    slots + widened.widen(|| raw.state.load(Relaxed) >> HIT_SHIFT)
}

/// Park token of a reader waiting for a writer to leave.
const PARKED_READER: ParkToken = ParkToken(0);
/// Park token of a writer waiting for another writer to leave.
const PARKED_WRITER: ParkToken = ParkToken(1);
/// Park token of the writer that holds [`WRITER`] and waits for readers.
const PARKED_DRAIN: ParkToken = ParkToken(2);
/// Unpark token: look again (the lock was released, or may have been).
const RETRY: UnparkToken = DEFAULT_UNPARK_TOKEN;
/// Unpark token: the lock was handed to you (a writer's fair release).
const HANDOFF: UnparkToken = UnparkToken(1);

impl<W: Word, P: Parking + Default> RawLock<W, P> {
    /// A free lock on `state`, which must be zero.
    #[cfg(test)]
    fn with_word(state: W) -> Self {
        debug_assert_eq!(state.load(Relaxed), 0);
        RawLock {
            state,
            slots: Default::default(),
            parking: PhantomData,
        }
    }

    /// The parking lot: a unit value, made where it is used.
    #[inline]
    fn lot(&self) -> P {
        P::default()
    }

    /// Takes the lock shared for the thread numbered `index`: in slot
    /// `index % SLOTS` if it is free (returning the slot and its value
    /// before), else in the word (`None`).
    ///
    /// The handshake with a writer is Dekker's: the reader marks its slot,
    /// then looks at the word; a writer marks the word, then looks at the
    /// slots. With both marks and both looks `SeqCst`, at least one of them
    /// sees the other: the reader backs out, or the writer waits for it.
    #[inline]
    fn acquire_read(&self, index: usize) -> Option<(usize, u64)> {
        let slot = index % SLOTS;
        let word = &self.slots[slot].0;
        let before = word.load(Relaxed);
        // A weak exchange that fails spuriously only sends us to the word.
        if before & HELD == 0
            && word
                .compare_exchange_weak(before, before | HELD, SeqCst, Relaxed)
                .is_ok()
        {
            word.order_fence();
            if self.state.load(SeqCst) & WRITER == 0 {
                return Some((slot, before));
            }
            // A writer has claimed the lock: leave the slot and wait in
            // the word with the other readers.
            word.store(before, Release);
        }
        self.acquire_shared();
        None
    }

    /// Releases a shared lock taken by [`acquire_read`](Self::acquire_read),
    /// which returned `slot`, counting `hits` hits.
    ///
    /// # Safety
    ///
    /// The caller holds that acquisition and gives it up.
    #[inline]
    unsafe fn release_read(&self, slot: Option<(usize, u64)>, hits: u64) {
        match slot {
            // The slot's holder is its only writer: a plain store leaves it
            // and counts the hits.
            Some((slot, before)) => self.slots[slot].0.store(before + hits * SLOT_HIT, Release),
            None => self.unlock_shared_adding(hits * ONE_HIT),
        }
    }

    /// Whether any reader slot is held, for a writer that owns [`WRITER`].
    fn slot_held(&self) -> bool {
        self.state.order_fence();
        self.slots.iter().any(|s| s.0.load(SeqCst) & HELD != 0)
    }

    /// Waits, as a writer that owns [`WRITER`], until no reader is inside
    /// through a slot. Readers that take a slot from now on see `WRITER`
    /// and back out.
    #[inline]
    fn drain_slots(&self) {
        if self.slot_held() {
            self.drain_slots_slow();
        }
    }

    /// Spins, then yields, until every slot is free. Slot readers cannot
    /// wake a writer (their release is a plain store), and shard locks are
    /// held for short sections, so the writer does not park.
    #[cold]
    #[inline(never)]
    fn drain_slots_slow(&self) {
        let mut spin = SpinWait::new();
        for slot in &self.slots {
            while slot.0.load(Acquire) & HELD != 0 {
                if !(P::SPINS && spin.spin()) {
                    self.lot().yield_now();
                }
            }
        }
    }

    /// Takes the lock shared in the word (`lock_api`'s `lock_shared`).
    #[inline]
    fn acquire_shared(&self) {
        let old = self.state.fetch_add(ONE_READER, Acquire);
        if old & WRITER != 0 {
            self.lock_shared_slow();
        }
    }

    /// `lock_api`'s `try_lock_shared`.
    fn try_acquire_shared(&self) -> bool {
        let old = self.state.fetch_add(ONE_READER, Acquire);
        if old & WRITER == 0 {
            return true;
        }
        self.release_reader(Relaxed);
        false
    }

    /// Releases a shared lock, adding `extra` to the word as the reader
    /// leaves.
    #[inline]
    fn unlock_shared_adding(&self, extra: u64) {
        let old = self
            .state
            .fetch_add(extra.wrapping_sub(ONE_READER), Release);
        self.reader_left(old);
    }

    /// Takes the lock exclusive (`lock_api`'s `lock_exclusive`).
    fn acquire_exclusive(&self) {
        loop {
            // `SeqCst`: the writer's half of the slots' handshake.
            let old = self.state.fetch_or(WRITER, SeqCst);
            if old & WRITER == 0 {
                break;
            }
            if self.wait_while(|state| state & WRITER != 0, PARKED_WRITER) == HANDOFF {
                break;
            }
        }
        // Readers that came in before `WRITER`, or that are backing out.
        self.wait_while(|state| state & READERS != 0, PARKED_DRAIN);
        self.drain_slots();
    }

    /// `lock_api`'s `try_lock_exclusive`.
    fn try_acquire_exclusive(&self) -> bool {
        let mut state = self.state.load(Relaxed);
        while state & (WRITER | READERS) == 0 {
            match self
                .state
                .compare_exchange_weak(state, state | WRITER, SeqCst, Relaxed)
            {
                Ok(_) if self.slot_held() => {
                    // A reader is inside through a slot: give the claim
                    // back (waking anyone who parked on it meanwhile).
                    self.release_exclusive();
                    return false;
                }
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
        false
    }

    /// Releases the exclusive lock (`lock_api`'s `unlock_exclusive`).
    #[inline]
    fn release_exclusive(&self) {
        let mut state = self.state.load(Relaxed);
        loop {
            if state & PARKED != 0 {
                return self.unlock_exclusive_slow();
            }
            match self
                .state
                .compare_exchange_weak(state, state & !WRITER, Release, Relaxed)
            {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
    }

    /// A writer has claimed the lock: take the reader back, wait for the
    /// writer to finish, and try again, unless the writer handed the lock
    /// over on leaving.
    #[cold]
    #[inline(never)]
    fn lock_shared_slow(&self) {
        loop {
            self.release_reader(Relaxed);
            if self.wait_while(|state| state & WRITER != 0, PARKED_READER) == HANDOFF {
                return;
            }
            let old = self.state.fetch_add(ONE_READER, Acquire);
            if old & WRITER == 0 {
                return;
            }
        }
    }

    /// Takes one reader out; the last one out wakes a writer waiting for it.
    #[inline]
    fn release_reader(&self, order: Ordering) {
        let old = self.state.fetch_sub(ONE_READER, order);
        self.reader_left(old);
    }

    /// After a reader left a lock whose word was `old`: the last one out
    /// wakes a writer waiting for it.
    #[inline]
    fn reader_left(&self, old: u64) {
        debug_assert!(old & READERS != 0, "a reader left a lock it did not hold");
        if old & PARKED != 0 && old & READERS == ONE_READER {
            self.wake_all();
        }
    }

    /// Spins a little, then parks with `token`, until `blocked(state)` is
    /// false ([`RETRY`]) or a releasing writer hands the lock over
    /// ([`HANDOFF`]).
    fn wait_while(&self, blocked: impl Fn(u64) -> bool, token: ParkToken) -> UnparkToken {
        let mut spin = SpinWait::new();
        loop {
            if !blocked(self.state.load(Acquire)) {
                return RETRY;
            }
            if P::SPINS && spin.spin() {
                continue;
            }
            let validate = || {
                // Announce the sleeper and re-check in one step: a release
                // after this sees `PARKED` and wakes us; one before it shows
                // in the value returned.
                let state = self.state.fetch_or(PARKED, Acquire) | PARKED;
                blocked(state)
            };
            // SAFETY: the key is this lock's address, which no other parking
            // in the crate uses; `validate` neither panics nor parks, and
            // touches only the state word.
            let result = unsafe { self.lot().park(self.key(), validate, token) };
            match result {
                ParkResult::Unparked(HANDOFF) => return HANDOFF,
                ParkResult::Unparked(_) | ParkResult::Invalid => spin.reset(),
                ParkResult::TimedOut => {}
            }
        }
    }

    /// Clears [`PARKED`] and wakes every thread parked on the lock, to look
    /// again.
    #[cold]
    #[inline(never)]
    fn wake_all(&self) {
        self.state.fetch_and(!PARKED, Relaxed);
        // SAFETY: the key is this lock's address, as in `wait_while`.
        unsafe {
            self.lot().unpark_all(self.key(), RETRY);
        }
    }

    /// A writer leaves a lock with threads parked on it: wakes the first
    /// waiting writer, or every waiting reader, whichever is first in line.
    /// Usually it then releases the lock for all to race for; about once
    /// every 0.5 ms (the parking lot's `be_fair`) it hands the lock straight
    /// to them instead, so that a writer taking the lock again at once (the
    /// reaper, batch after batch) cannot keep a parked reader out for long.
    #[cold]
    #[inline(never)]
    fn unlock_exclusive_slow(&self) {
        let readers = Cell::new(0u64);
        let writer = Cell::new(false);
        let filter = |token: ParkToken| {
            if writer.get() {
                FilterOp::Stop
            } else if token == PARKED_READER {
                readers.set(readers.get() + 1);
                FilterOp::Unpark
            } else if token == PARKED_WRITER && readers.get() == 0 {
                writer.set(true);
                FilterOp::Unpark
            } else {
                FilterOp::Skip
            }
        };
        let callback = |result: Unparked| {
            // Runs with the parking lot's bucket locked, so no thread can
            // announce itself as parked (set `PARKED`) meanwhile.
            let token = if result.threads > 0 && result.fair {
                let readers = readers.get();
                if readers > 0 {
                    // Counts the woken readers in and the writer out in one
                    // step (`WRITER` is ours, so subtracting it clears it).
                    self.state
                        .fetch_add((readers * ONE_READER).wrapping_sub(WRITER), Release);
                }
                // For a woken writer, `WRITER` stays set: it is now its.
                HANDOFF
            } else {
                self.state.fetch_and(!WRITER, Release);
                RETRY
            };
            if !result.more {
                self.state.fetch_and(!PARKED, Relaxed);
            }
            token
        };
        // SAFETY: the key is this lock's address, as in `wait_while`;
        // neither closure panics or parks.
        unsafe {
            self.lot().unpark_filter(self.key(), filter, callback);
        }
    }

    fn key(&self) -> usize {
        std::ptr::from_ref(&self.state) as usize
    }
}

// SAFETY: the lock gives exclusive access to one writer at a time, with no
// reader inside. A writer owns `WRITER` from the `fetch_or` that found it
// clear (or the handoff of a releasing writer) until its unlock clears it
// or hands it on, and enters only once, after owning it, it has seen the
// reader count at zero and every reader slot free, with `Acquire`. A word
// reader enters only when its own `fetch_add` found `WRITER` clear, or when
// a releasing writer counted it in while handing the lock over; a slot
// reader only when its `SeqCst` load found `WRITER` clear after its
// `SeqCst` exchange marked the slot, and the writer marks the word with a
// `SeqCst` `fetch_or` before its `SeqCst` loads of the slots, so one of the
// two sees the other (see `acquire_read`). So no reader enters while a
// writer owns the lock. Releases are `Release` and acquisitions `Acquire`
// (a handoff passes through the parking lot's own synchronization), so
// each critical section happens before the next one that excludes it. The
// loom tests below check this code, under a model of the parking lot, in
// every interleaving of their threads.
unsafe impl lock_api::RawRwLock for RawShardLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawLock {
        state: AtomicU64::new(0),
        slots: [const { Padded(AtomicU64::new(0)) }; SLOTS],
        parking: PhantomData,
    };

    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock_shared(&self) {
        self.acquire_shared();
    }

    fn try_lock_shared(&self) -> bool {
        self.try_acquire_shared()
    }

    #[inline]
    unsafe fn unlock_shared(&self) {
        self.release_reader(Release);
    }

    fn lock_exclusive(&self) {
        self.acquire_exclusive();
    }

    fn try_lock_exclusive(&self) -> bool {
        self.try_acquire_exclusive()
    }

    #[inline]
    unsafe fn unlock_exclusive(&self) {
        self.release_exclusive();
    }
}

/// Widens one shard's wrapping hit count to 64 bits: the last widened
/// value, raised by the distance the count has moved since (which is below
/// 2^39 as long as the count is read that often).
#[derive(Debug, Default)]
pub(crate) struct HitCount {
    seen: AtomicU64,
}

impl HitCount {
    /// The widened count, given the raw count's reader. The last widened
    /// value is read first: a raw count read after it is at least as new as
    /// the one it was widened from (its `Release` store, this `Acquire`
    /// load), so the distance between them is never negative.
    fn widen(&self, raw: impl FnOnce() -> u64) -> u64 {
        let seen = self.seen.load(Acquire);
        let now = seen + (raw().wrapping_sub(seen) & HIT_MASK);
        self.seen.fetch_max(now, Release);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_api::RawRwLock as _;
    use std::sync::atomic::AtomicBool;

    /// Shared access in the state word, as a thread whose slot is taken
    /// gets it.
    fn read_by_word<T>(lock: &ShardLock<T>) -> ReadGuard<'_, T> {
        // SAFETY: the guard made here releases this acquisition, once.
        unsafe { lock.raw() }.acquire_shared();
        ReadGuard { lock, slot: None }
    }

    /// Whether `lock` is free: no writer, no reader in the word or a slot,
    /// nobody parked (hit counts aside).
    fn free<T>(lock: &ShardLock<T>) -> bool {
        // SAFETY: only reads the words.
        let raw = unsafe { lock.raw() };
        raw.state.load(Relaxed) & !(HIT_MASK << HIT_SHIFT) == 0
            && raw.slots.iter().all(|s| s.0.load(Relaxed) & HELD == 0)
    }

    #[test]
    fn writers_exclude_readers_and_each_other_and_lookups_are_exact() {
        // Writers keep the two halves equal, but write them one at a time:
        // a reader that ever sees them differ ran beside a writer.
        let lock = ShardLock::new((0u64, 0u64));
        let widened = HitCount::default();
        let stop = AtomicBool::new(false);
        const READS: u64 = 20_000;
        let readers = 6u64;
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while !stop.load(Relaxed) {
                        let mut pair = lock.write();
                        pair.0 += 1;
                        std::hint::black_box(&mut *pair);
                        pair.1 += 1;
                    }
                });
            }
            let handles: Vec<_> = (0..readers)
                .map(|r| {
                    let lock = &lock;
                    s.spawn(move || {
                        for i in 0..READS {
                            // Half the readers try their slot (6 threads on
                            // 4 slots: some find it taken), half the word.
                            let pair = if r % 2 == 0 {
                                read(lock)
                            } else {
                                read_by_word(lock)
                            };
                            assert_eq!(pair.0, pair.1, "a reader saw a write half done");
                            // Half the reads count a hit as they leave,
                            // half leave as a plain guard does.
                            if (i + r) % 2 == 0 {
                                unlock_counting(pair, true);
                            } else if i % 3 == 0 {
                                unlock_counting(pair, false);
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
            stop.store(true, Relaxed);
        });
        assert_eq!(hits(&lock, &widened), readers * READS / 2);
        let pair = lock.into_inner();
        assert_eq!(pair.0, pair.1);
        assert!(pair.0 > 0, "the writers ran");
    }

    #[test]
    fn try_locks_fail_only_against_the_other_side() {
        let lock = ShardLock::new(());
        // SAFETY (this test's blocks): every raw unlock below releases an
        // acquisition the test made just before, and no guard is alive
        // then but the one dropped before `try_lock_exclusive`.
        let raw = unsafe { lock.raw() };
        assert!(raw.try_lock_shared());
        assert!(raw.try_lock_shared());
        assert!(!raw.try_lock_exclusive(), "readers inside");
        unsafe { raw.unlock_shared() };
        unsafe { raw.unlock_shared() };
        assert!(raw.try_lock_exclusive());
        assert!(!raw.try_lock_shared(), "a writer inside");
        assert!(!raw.try_lock_exclusive());
        unsafe { raw.unlock_exclusive() };
        unlock_counting(read_by_word(&lock), true);
        assert!(
            raw.try_lock_exclusive(),
            "the counting release left the lock free"
        );
        unsafe { raw.unlock_exclusive() };
        let in_slot = read(&lock);
        assert!(in_slot.slot.is_some(), "the thread's slot was free");
        assert!(!raw.try_lock_exclusive(), "a reader inside in its slot");
        assert!(
            free_but_one_slot(&lock),
            "the failed try gave its claim back"
        );
        unlock_counting(in_slot, true);
        assert!(raw.try_lock_exclusive());
        unsafe { raw.unlock_exclusive() };
        assert!(free(&lock));
        assert_eq!(
            hits(&lock, &HitCount::default()),
            2,
            "one in the word, one in a slot"
        );
    }

    /// Whether `lock` is free but for one reader in a slot.
    fn free_but_one_slot<T>(lock: &ShardLock<T>) -> bool {
        // SAFETY: only reads the words.
        let raw = unsafe { lock.raw() };
        raw.state.load(Relaxed) & !(HIT_MASK << HIT_SHIFT) == 0
            && raw
                .slots
                .iter()
                .filter(|s| s.0.load(Relaxed) & HELD != 0)
                .count()
                == 1
    }

    #[test]
    fn a_thread_reading_twice_takes_the_word_the_second_time() {
        let lock = ShardLock::new(7u8);
        let first = read(&lock);
        let second = read(&lock);
        assert!(first.slot.is_some() && second.slot.is_none());
        assert_eq!((*first, *second), (7, 7));
        unlock_counting(second, true);
        unlock_counting(first, true);
        assert!(free(&lock));
        assert_eq!(hits(&lock, &HitCount::default()), 2);
    }

    #[test]
    fn a_writer_waits_for_a_reader_in_a_slot() {
        let lock = ShardLock::new(0u32);
        let reader = read(&lock);
        assert!(reader.slot.is_some());
        std::thread::scope(|s| {
            let writer = s.spawn(|| *lock.write() += 1);
            // Long enough for the writer to give up spinning and yield.
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(*reader, 0, "the writer waits for the reader");
            drop(reader);
            writer.join().unwrap();
        });
        assert_eq!(*read(&lock), 1);
        assert!(free(&lock));
    }

    #[test]
    fn a_reader_that_panics_in_a_slot_releases_it() {
        let lock = ShardLock::new(1u32);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let guard = read(&lock);
            assert!(guard.slot.is_some());
            panic!("a reader fails inside the lock: {}", *guard);
        }));
        assert!(result.is_err());
        assert!(free(&lock), "the unwinding guard released its slot");
        *lock.write() += 1;
        assert_eq!(*read(&lock), 2);
    }

    #[test]
    fn a_parked_writer_is_woken_by_the_last_reader() {
        let lock = ShardLock::new(0u32);
        let reader = read_by_word(&lock);
        std::thread::scope(|s| {
            let writer = s.spawn(|| *lock.write() += 1);
            // Long enough for the writer to give up spinning and park.
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(*reader, 0, "the writer waits for the reader");
            drop(reader);
            writer.join().unwrap();
        });
        assert_eq!(*read(&lock), 1);
    }

    #[test]
    fn a_writer_taking_the_lock_back_to_back_lets_readers_in() {
        // The reaper's pattern: write sections of tens of microseconds, one
        // right after the other. Readers must still get in, through the
        // fair handoffs if not by racing.
        let lock = ShardLock::new(0u64);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Relaxed) {
                    let mut value = lock.write();
                    let until = std::time::Instant::now() + std::time::Duration::from_micros(20);
                    while std::time::Instant::now() < until {
                        *value = value.wrapping_add(1);
                    }
                }
            });
            let reader = s.spawn(|| {
                let start = std::time::Instant::now();
                for _ in 0..200 {
                    let value = read(&lock);
                    std::hint::black_box(*value);
                    unlock_counting(value, true);
                }
                done.store(true, Relaxed);
                start.elapsed()
            });
            let took = reader.join().unwrap();
            assert!(
                took < std::time::Duration::from_secs(20),
                "200 reads took {took:?} beside a busy writer"
            );
        });
    }

    #[test]
    fn sleepers_inside_the_lock_make_the_others_park_and_all_are_woken() {
        // Critical sections that sleep make every other thread give up
        // spinning and park, over and over: a lost wake-up shows as a
        // worker that never finishes, which the deadline turns into a
        // failure instead of a hang.
        let lock = std::sync::Arc::new(ShardLock::new((0u64, 0u64)));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        const OPS: u64 = 300;
        for t in 0..8u64 {
            let (lock, done_tx) = (lock.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                for i in 0..OPS {
                    let nap =
                        std::time::Duration::from_micros(if i % 16 == t % 16 { 200 } else { 0 });
                    if t % 2 == 0 {
                        let mut pair = lock.write();
                        pair.0 += 1;
                        std::thread::sleep(nap);
                        pair.1 += 1;
                    } else {
                        // Odd threads read, half in their slot (if free),
                        // half in the word.
                        let pair = if t % 4 == 1 {
                            read(&*lock)
                        } else {
                            read_by_word(&*lock)
                        };
                        assert_eq!(pair.0, pair.1, "a reader saw a write half done");
                        std::thread::sleep(nap);
                        unlock_counting(pair, true);
                        reads += 1;
                    }
                }
                done_tx.send(reads).unwrap();
            });
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut reads = 0;
        for _ in 0..8 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            reads += done_rx
                .recv_timeout(left)
                .expect("a worker is stuck: a wake-up was lost");
        }
        assert_eq!(reads, 4 * OPS);
        assert_eq!(hits(&*lock, &HitCount::default()), 4 * OPS);
        assert_eq!(*read(&*lock), (4 * OPS, 4 * OPS));
        assert!(free(&*lock));
    }

    /// Model checking with loom: the lock's own code, on loom's atomics and
    /// a model of the parking lot, in every interleaving of a few threads
    /// (up to a bound on preemptions). loom fails a test on a data race in
    /// the guarded cell (a reader beside a writer, or two writers), on a
    /// deadlock (every thread parked: a lost wake-up), and on a failed
    /// assertion in any interleaving.
    mod model {
        use super::super::*;
        use loom::cell::UnsafeCell;
        use loom::sync::{Arc, Mutex};
        use loom::thread;

        forward_word!(
            loom::sync::atomic::AtomicU64,
            loom::sync::atomic::fence(SeqCst)
        );

        /// A parked thread: its key, its token, and where its waker leaves
        /// the unpark token.
        struct Waiter {
            key: usize,
            token: ParkToken,
            slot: Arc<Slot>,
        }

        struct Slot {
            woken: Mutex<Option<UnparkToken>>,
            thread: thread::Thread,
        }

        loom::lazy_static! {
            /// The parking lot's one queue, in parking order (a new one
            /// for every execution of the model).
            static ref QUEUE: Mutex<Vec<Waiter>> = Mutex::new(Vec::new());
        }

        /// A model of `parking_lot_core`'s parking lot: `validate` and the
        /// unpark callback run under the queue's lock, as under a bucket's.
        /// `FAIR` is the `be_fair` every unpark reports, so each test runs
        /// once with releases that race and once with handoffs.
        #[derive(Debug, Default)]
        struct ModelLot<const FAIR: bool>;

        fn wake(waiter: &Waiter, token: UnparkToken) {
            *waiter.slot.woken.lock().unwrap() = Some(token);
            waiter.slot.thread.unpark();
        }

        // SAFETY: `validate` and `callback` run under the queue's lock,
        // which every park and unpark takes.
        unsafe impl<const FAIR: bool> Parking for ModelLot<FAIR> {
            const SPINS: bool = false;

            unsafe fn park(
                &self,
                key: usize,
                validate: impl FnOnce() -> bool,
                token: ParkToken,
            ) -> ParkResult {
                let slot = {
                    let mut queue = QUEUE.lock().unwrap();
                    if !validate() {
                        return ParkResult::Invalid;
                    }
                    let slot = Arc::new(Slot {
                        woken: Mutex::new(None),
                        thread: thread::current(),
                    });
                    queue.push(Waiter {
                        key,
                        token,
                        slot: slot.clone(),
                    });
                    slot
                };
                loop {
                    if let Some(token) = *slot.woken.lock().unwrap() {
                        return ParkResult::Unparked(token);
                    }
                    thread::park();
                }
            }

            unsafe fn unpark_all(&self, key: usize, token: UnparkToken) {
                let woken: Vec<Waiter> = {
                    let mut queue = QUEUE.lock().unwrap();
                    let (woken, rest) = queue.drain(..).partition(|w| w.key == key);
                    *queue = rest;
                    woken
                };
                woken.iter().for_each(|w| wake(w, token));
            }

            unsafe fn unpark_filter(
                &self,
                key: usize,
                mut filter: impl FnMut(ParkToken) -> FilterOp,
                callback: impl FnOnce(Unparked) -> UnparkToken,
            ) {
                let (woken, token) = {
                    let mut queue = QUEUE.lock().unwrap();
                    let mut woken = Vec::new();
                    let mut i = 0;
                    while i < queue.len() {
                        if queue[i].key != key {
                            i += 1;
                            continue;
                        }
                        match filter(queue[i].token) {
                            FilterOp::Unpark => woken.push(queue.remove(i)),
                            FilterOp::Skip => i += 1,
                            FilterOp::Stop => break,
                        }
                    }
                    let more = queue.iter().any(|w| w.key == key);
                    let token = callback(Unparked {
                        threads: woken.len(),
                        more,
                        fair: FAIR,
                    });
                    (woken, token)
                };
                woken.iter().for_each(|w| wake(w, token));
            }

            fn yield_now(&self) {
                thread::yield_now();
            }
        }

        type Lock<const FAIR: bool> = RawLock<loom::sync::atomic::AtomicU64, ModelLot<FAIR>>;

        /// A lock and the value it guards.
        struct Guarded<const FAIR: bool> {
            lock: Lock<FAIR>,
            value: UnsafeCell<u64>,
        }

        fn guarded<const FAIR: bool>() -> Arc<Guarded<FAIR>> {
            Arc::new(Guarded {
                lock: RawLock::with_word(loom::sync::atomic::AtomicU64::new(0)),
                value: UnsafeCell::new(0),
            })
        }

        fn write<const FAIR: bool>(g: &Guarded<FAIR>) {
            g.lock.acquire_exclusive();
            // SAFETY (loom's cell): checked by loom, which fails the test
            // if another thread accesses the cell concurrently.
            g.value.with_mut(|v| unsafe { *v += 1 });
            g.lock.release_exclusive();
        }

        fn read<const FAIR: bool>(g: &Guarded<FAIR>, hit: bool) -> u64 {
            g.lock.acquire_shared();
            // SAFETY (loom's cell): as in `write`.
            let seen = g.value.with(|v| unsafe { *v });
            g.lock.unlock_shared_adding(u64::from(hit) * ONE_HIT);
            seen
        }

        /// A read by the thread numbered `index`: in its slot, or in the
        /// word if the slot is taken.
        fn read_slot<const FAIR: bool>(g: &Guarded<FAIR>, index: usize, hit: bool) -> u64 {
            let slot = g.lock.acquire_read(index);
            // SAFETY (loom's cell): as in `write`.
            let seen = g.value.with(|v| unsafe { *v });
            // SAFETY: releases the acquisition just made, once.
            unsafe { g.lock.release_read(slot, u64::from(hit)) };
            seen
        }

        /// The hits counted in the slots and the word.
        fn counted<const FAIR: bool>(g: &Guarded<FAIR>) -> u64 {
            let slots: u64 = g.lock.slots.iter().map(|s| s.0.load(Relaxed) >> 1).sum();
            slots + (g.lock.state.load(Relaxed) >> HIT_SHIFT)
        }

        /// Whether the lock is free, hit counts aside.
        fn is_free<const FAIR: bool>(g: &Guarded<FAIR>) -> bool {
            g.lock.state.load(Relaxed) & !(HIT_MASK << HIT_SHIFT) == 0
                && g.lock.slots.iter().all(|s| s.0.load(Relaxed) & HELD == 0)
        }

        fn check(f: impl Fn() + Sync + Send + 'static) {
            // Two preemptions are enough to interleave the fast and slow
            // paths of three threads every way that matters for the bugs
            // these tests were checked against (a lost wake-up, a handoff
            // that does not count the readers in, a `Relaxed` acquire; for
            // the slots, a missing `SeqCst` fence, a writer that does not
            // wait for the slots, a slot reader that does not look for a
            // writer, a `try` that ignores the slots): 30 s in a debug
            // build. `LOOM_MAX_PREEMPTIONS=3` searches deeper (minutes in a
            // release build).
            check_bounded(2, f);
        }

        /// [`check`] with at most `bound` preemptions, unless
        /// `LOOM_MAX_PREEMPTIONS` says otherwise.
        fn check_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
            let mut builder = loom::model::Builder::new();
            if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
                builder.preemption_bound = Some(bound);
            }
            builder.check(f);
        }

        /// Two writers and a reader: each write lands once, the reader
        /// sees a whole number of writes, and everyone finishes.
        fn writers_and_a_reader<const FAIR: bool>() {
            check(|| {
                let g = guarded::<FAIR>();
                let writers: Vec<_> = (0..2)
                    .map(|_| {
                        let g = g.clone();
                        thread::spawn(move || write(&g))
                    })
                    .collect();
                let seen = read(&g, true);
                assert!(seen <= 2);
                writers.into_iter().for_each(|w| w.join().unwrap());
                assert_eq!(read(&g, false), 2);
                assert_eq!(g.lock.state.load(Relaxed), ONE_HIT, "one hit, lock free");
            });
        }

        /// Two readers (one counting a hit, one a plain release, one
        /// through `try`) and a writer.
        fn readers_and_a_writer<const FAIR: bool>() {
            check(|| {
                let g = guarded::<FAIR>();
                let readers: Vec<_> = (0..2)
                    .map(|r| {
                        let g = g.clone();
                        thread::spawn(move || {
                            let seen = read(&g, r == 0);
                            assert!(seen <= 1);
                        })
                    })
                    .collect();
                write(&g);
                if g.lock.try_acquire_shared() {
                    g.lock.unlock_shared_adding(0);
                }
                readers.into_iter().for_each(|r| r.join().unwrap());
                assert!(g.lock.try_acquire_exclusive(), "the lock is free");
                g.lock.release_exclusive();
                assert_eq!(g.lock.state.load(Relaxed), ONE_HIT);
                // SAFETY (loom's cell): every other thread has ended.
                assert_eq!(g.value.with(|v| unsafe { *v }), 1);
            });
        }

        /// Two readers whose thread numbers share a slot (one gets it, the
        /// other reads in the word or waits there) and a writer.
        ///
        /// Three threads with a reader that may park in the word make this
        /// the largest model: with two preemptions it takes over 4 minutes
        /// in a debug build, so it runs with one, which still fails on each
        /// of the slot bugs `check` lists and on a reader that backs out of
        /// its slot without freeing it.
        fn slot_readers_and_a_writer<const FAIR: bool>() {
            check_bounded(1, || {
                let g = guarded::<FAIR>();
                let readers: Vec<_> = [0, SLOTS]
                    .into_iter()
                    .map(|index| {
                        let g = g.clone();
                        thread::spawn(move || assert!(read_slot(&g, index, true) <= 1))
                    })
                    .collect();
                write(&g);
                readers.into_iter().for_each(|r| r.join().unwrap());
                assert!(is_free(&g));
                assert!(g.lock.try_acquire_exclusive(), "the lock is free");
                g.lock.release_exclusive();
                assert_eq!(counted(&g), 2);
                // SAFETY (loom's cell): every other thread has ended.
                assert_eq!(g.value.with(|v| unsafe { *v }), 1);
            });
        }

        /// Two writers and a reader in its slot; then a writer's `try`
        /// against a reader in a slot.
        fn writers_and_a_slot_reader<const FAIR: bool>() {
            check(|| {
                let g = guarded::<FAIR>();
                let writers: Vec<_> = (0..2)
                    .map(|_| {
                        let g = g.clone();
                        thread::spawn(move || write(&g))
                    })
                    .collect();
                assert!(read_slot(&g, 1, true) <= 2);
                writers.into_iter().for_each(|w| w.join().unwrap());
                assert_eq!(read_slot(&g, 1, false), 2);
                assert!(is_free(&g));
                assert_eq!(counted(&g), 1, "one hit");
            });
        }

        /// A writer's `try` racing a reader in its slot: one of them is
        /// inside, never both, and a failed `try` leaves no claim behind.
        fn try_writer_and_a_slot_reader<const FAIR: bool>() {
            check(|| {
                let g = guarded::<FAIR>();
                let writer = {
                    let g = g.clone();
                    thread::spawn(move || {
                        if g.lock.try_acquire_exclusive() {
                            // SAFETY (loom's cell): as in `write`.
                            g.value.with_mut(|v| unsafe { *v += 1 });
                            g.lock.release_exclusive();
                        }
                    })
                };
                assert!(read_slot(&g, 2, true) <= 1);
                writer.join().unwrap();
                assert!(is_free(&g));
                assert_eq!(counted(&g), 1);
            });
        }

        #[test]
        fn loom_slot_readers_and_a_writer_racing_releases() {
            slot_readers_and_a_writer::<false>();
        }

        #[test]
        fn loom_slot_readers_and_a_writer_handoffs() {
            slot_readers_and_a_writer::<true>();
        }

        #[test]
        fn loom_writers_and_a_slot_reader_racing_releases() {
            writers_and_a_slot_reader::<false>();
        }

        #[test]
        fn loom_writers_and_a_slot_reader_handoffs() {
            writers_and_a_slot_reader::<true>();
        }

        #[test]
        fn loom_try_writer_and_a_slot_reader() {
            try_writer_and_a_slot_reader::<false>();
        }

        #[test]
        fn loom_writers_and_a_reader_racing_releases() {
            writers_and_a_reader::<false>();
        }

        #[test]
        fn loom_writers_and_a_reader_handoffs() {
            writers_and_a_reader::<true>();
        }

        #[test]
        fn loom_readers_and_a_writer_racing_releases() {
            readers_and_a_writer::<false>();
        }

        #[test]
        fn loom_readers_and_a_writer_handoffs() {
            readers_and_a_writer::<true>();
        }
    }

    #[test]
    fn the_lookup_count_widens_across_its_wraps() {
        let widened = HitCount::default();
        let width = HIT_MASK + 1;
        let mut raw = 0u64;
        let mut total = 0u64;
        // Steps of up to a third of the width, read after every step.
        let third = width / 3;
        for step in [5, third, third, third, third, third, third, 7, third + 1, 1] {
            raw = (raw + step) & HIT_MASK;
            total += step;
            assert_eq!(widened.widen(|| raw), total);
        }
        assert!(total > 2 * width, "the count wrapped twice");
        assert_eq!(widened.widen(|| raw), total, "reading again adds nothing");
    }
}
