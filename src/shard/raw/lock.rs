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
//! shard twice) the reader uses the state word as below; if a writer has
//! claimed the lock, it leaves its slot, spins reading the word until the
//! writer has gone and tries its slot again, and after about
//! [`SPIN_FOR`] waits in the word too (see
//! [`read_after_writer`](RawLock::read_after_writer)). A writer claims
//! the word, waits for the word's readers, then for each held slot. The handshake, reader marks slot then reads
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
//! Marking the slot with a `fetch_or`, which x86-64 does with one `lock bts`
//! (no load before it, no compare), measured 1.09–1.12x the time of the
//! load and compare-exchange on the same harness, three runs: not kept.
//!
//! How much of a hit is still the lock, measured late on 5 December with
//! the same harness (a Zipf 1.0 read of 100k entries present in a cache
//! of 200k, as the comparison bench's get-hit row; three runs each): the
//! compare-exchange replaced by a plain store and the state word read
//! relaxed, which is unsound and was built only to be timed, made a hit
//! 0.90–0.91x as long, 0.78–0.79x quick_cache's time against 0.88–0.89x
//! with the lock as it is. So the one locked instruction is a tenth of a
//! hit, and removing it would only just reach the core engine's aim of
//! 0.8x; the rest is the index chunk and the entry, two cache misses at
//! that size. Doing without it soundly needs an asymmetric fence
//! (`membarrier` on Linux, a system call on every writer, so a read-biased
//! mode that writes turn off, as BRAVO does): not built. A prefetch of
//! the key's index chunk issued before the lock, so that its miss
//! overlaps the compare-exchange, measured 0.97–1.02x with the lock and
//! nothing on top of the plain store: not kept either. Measured again on
//! 6 December, the table's chunk address and count published in the
//! shard's cell (two relaxed atomics a writer updates when the table
//! grows) so a reader can prefetch before it locks: 0.89–0.91x
//! quick_cache's time over seven paired runs of a scratch loop, against
//! 0.86–0.87x without, so the chunk is seldom the wait at that size. Huge
//! pages under the index and the entries (fewer TLB misses) could not be
//! tried: this host's kernel makes none, even for memory advised with
//! `MADV_HUGEPAGE` (its `thp_fault_alloc` stays 0).
//!
//! Writers pay for the slots: they read four more lines, and a writer that
//! finds a slot held spins, then yields, until it is free (a slot reader's
//! plain store cannot wake a sleeper). Shard locks are held for short
//! sections, so that wait is short. The only user code under a read lock
//! is the key's `Eq` and the value's `Clone` (see `Cache`'s **Locking**
//! note): a slow one keeps a waiting writer yielding, on a core of its
//! own, for as long, and one that reads the same shard again while a
//! writer waits deadlocks (the nested read goes to the word, which the
//! writer has closed, and the writer waits for the outer read's slot), as
//! a nested read does on any writer-preferring lock.
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
//! a stream of readers cannot starve it. Waiting in the word spins for
//! about [`SPIN_FOR`] (see [`Backoff`]), then parks in `parking_lot_core`'s
//! parking lot, keyed by the word's address; the bit [`PARKED`] is set
//! (under the parking lot's bucket lock,
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
use std::time::{Duration, Instant};

use parking_lot_core::{DEFAULT_UNPARK_TOKEN, FilterOp, ParkResult, ParkToken, UnparkToken};

/// How long a waiter spins before it parks (or, waiting for a reader
/// slot, yields).
///
/// `parking_lot_core`'s `SpinWait`, used until 7 December, spins about
/// 120 ns on this project's machine (14 pause instructions of 8.7 ns)
/// and then calls `sched_yield` seven times (154 ns each) before it
/// parks; a shard's write lock, under two threads' mixed Zipf load, is
/// often held longer, so waiting readers went to sleep and a kernel's
/// wake-up, and `perf` put a tenth of the time in the scheduler. In a
/// replay of the comparison bench's two-thread mixed stream (capacity
/// 100,000, 32 shards; mean of two runs each), spinning about 2 µs
/// before parking gave 20.1 million operations a second against 19.8
/// with `SpinWait`, 9 µs 21.4, 20 µs 21.7 (with 8 shards, 20 µs gave 17.3
/// against 15.8). The spin is bounded by time, not by a count of pause
/// instructions, whose length differs tenfold between processors.
const SPIN_FOR: Duration = Duration::from_micros(10);

/// A waiter's spinning: rounds of pause hints, doubling up to 64, until
/// [`SPIN_FOR`] has passed since its first round that read the clock. So
/// a waiter spins at least that long, plus the 126 pauses of the rounds
/// before it reads the clock (about 1.1 µs here, up to about 6 µs where a
/// pause takes 140 cycles) and the last round's overrun.
#[derive(Debug)]
struct Backoff {
    round: u32,
    until: Option<Instant>,
}

impl Backoff {
    /// Rounds of doubling pauses spun before the clock is first read.
    const DOUBLINGS: u32 = 6;

    fn new() -> Self {
        Backoff {
            round: 0,
            until: None,
        }
    }

    /// Starts over, as a waiter woken from the parking lot does.
    fn reset(&mut self) {
        *self = Self::new();
    }

    /// Spins one round and returns true, or returns false once the waiter
    /// has spun for [`SPIN_FOR`].
    fn spin(&mut self) -> bool {
        if self.round < Self::DOUBLINGS {
            self.round += 1;
            for _ in 0..1u32 << self.round {
                std::hint::spin_loop();
            }
            return true;
        }
        let now = Instant::now();
        if now >= *self.until.get_or_insert(now + SPIN_FOR) {
            return false;
        }
        for _ in 0..1u32 << Self::DOUBLINGS {
            std::hint::spin_loop();
        }
        true
    }
}

/// What one attempt to read through a reader slot found.
enum SlotTry {
    /// The reader is in; the slot's value before it marked it.
    In(u64),
    /// The slot was held (or the exchange failed spuriously).
    Busy,
    /// A writer has claimed the lock; the slot was left again.
    Writer,
}

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
        match self.try_slot(slot) {
            SlotTry::In(before) => return Some((slot, before)),
            // Wait for the writer to leave (then in the word with the
            // other readers, if it takes long).
            SlotTry::Writer if P::SPINS => return self.read_after_writer(slot),
            SlotTry::Writer | SlotTry::Busy => {}
        }
        self.acquire_shared();
        None
    }

    /// One attempt to read through `slot`: marks it held, then looks at
    /// the word. A weak exchange that fails spuriously counts as `Busy`
    /// (the caller goes to the word).
    #[inline]
    fn try_slot(&self, slot: usize) -> SlotTry {
        let word = &self.slots[slot].0;
        let before = word.load(Relaxed);
        if before & HELD != 0
            || word
                .compare_exchange_weak(before, before | HELD, SeqCst, Relaxed)
                .is_err()
        {
            return SlotTry::Busy;
        }
        word.order_fence();
        if self.state.load(SeqCst) & WRITER == 0 {
            return SlotTry::In(before);
        }
        // A writer has claimed the lock: leave the slot.
        word.store(before, Release);
        SlotTry::Writer
    }

    /// A slot reader that found a writer in: spins reading the word (which
    /// leaves the line to the writer, where a reader added to the word
    /// wrote it) until the writer has left, and tries its slot again, as
    /// [`acquire_read`](Self::acquire_read) did; after [`Backoff`]'s time
    /// it waits in the word. Replaying the comparison bench's mixed stream
    /// on two threads (capacity 100,000), builds alternated eight times:
    /// 15.4 Mops/s against 14.6 waiting in the word at once (8 shards),
    /// 19.1 against 18.3 (32 shards, four times). The loom models, whose
    /// parking lot does not spin, check the word path only; this one is
    /// the slot path's first attempt, repeated.
    #[cold]
    #[inline(never)]
    fn read_after_writer(&self, slot: usize) -> Option<(usize, u64)> {
        let mut spin = Backoff::new();
        while spin.spin() {
            if self.state.load(Relaxed) & WRITER != 0 {
                continue;
            }
            if let SlotTry::In(before) = self.try_slot(slot) {
                return Some((slot, before));
            }
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
        let mut spin = Backoff::new();
        for slot in &self.slots {
            // `SeqCst`, as in `slot_held`, which stops at the first held
            // slot: a slot after it is first read here, and only a `SeqCst`
            // load is ordered after the writer's `SeqCst` claim of the word
            // against a reader's `SeqCst` check of it (an `Acquire` load may
            // still see a slot free that a reader took before that check,
            // on weaker hardware than x86-64).
            while slot.0.load(SeqCst) & HELD != 0 {
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

    /// Takes the lock exclusive (`lock_api`'s `lock_exclusive`). The
    /// uncontended path (one `fetch_or`, a load of the word, a load of
    /// each slot) is inline in the caller; every wait is out of line. With
    /// the waits inline, the call spent 19 of its 37 instructions per
    /// insert saving and restoring registers for them: measured with
    /// callgrind on the comparison bench's insert stream (a fixed hash
    /// seed), 379 instructions per insert before and 346 after, and 316
    /// against 304 per mixed operation; the bench's insert row went from
    /// 0.77x quick_cache to 0.81x, mixed on one thread from 0.69x to 0.72x.
    #[inline]
    fn acquire_exclusive(&self) {
        // `SeqCst`: the writer's half of the slots' handshake.
        if self.state.fetch_or(WRITER, SeqCst) & WRITER != 0 {
            self.claim_contended();
        }
        // Readers that came in before `WRITER`, or that are backing out.
        if self.state.load(Acquire) & READERS != 0 {
            self.drain_word();
        }
        self.drain_slots();
    }

    /// Waits, as a writer that owns [`WRITER`], for the word's readers to
    /// leave.
    #[cold]
    #[inline(never)]
    fn drain_word(&self) {
        self.wait_while(|state| state & READERS != 0, PARKED_DRAIN);
    }

    /// Claims [`WRITER`], which another writer holds: waits for it to
    /// leave and claims it again, unless the writer handed it over.
    #[cold]
    #[inline(never)]
    fn claim_contended(&self) {
        loop {
            if self.wait_while(|state| state & WRITER != 0, PARKED_WRITER) == HANDOFF {
                return;
            }
            if self.state.fetch_or(WRITER, SeqCst) & WRITER == 0 {
                return;
            }
        }
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

    /// Spins for about [`SPIN_FOR`] (see [`Backoff`]), then parks with
    /// `token`, until `blocked(state)` is false ([`RETRY`]) or a releasing
    /// writer hands the lock over ([`HANDOFF`]).
    fn wait_while(&self, blocked: impl Fn(u64) -> bool, token: ParkToken) -> UnparkToken {
        let mut spin = Backoff::new();
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

    #[inline]
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
        // Most reads find the count where it was (hits through the slots
        // do not move it): then there is nothing to publish, and a
        // read-modify-write (a locked instruction, on every new key's
        // insert) is saved.
        if now != seen {
            self.seen.fetch_max(now, Release);
        }
        now
    }
}

#[cfg(test)]
mod tests;
