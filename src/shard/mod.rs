//! The shard: one lock's worth of the cache, as a plain single-threaded
//! structure.
//!
//! # Layout
//!
//! Entries live in a dense `Vec` of [slots](slot) (key, value, and one
//! atomic word holding the deadline and the policy's touch counter), indexed
//! by `u32` ids `0..len`. A [table] of 64-byte chunks maps key hashes to
//! ids. What only writers need lives in parallel arrays owned by the parts
//! that use it: queue links in the [policy](crate::policy), slot links in
//! the [timing wheel](crate::expiry::wheel) (only for caches with expiry),
//! and the write-based cap of idle deadlines (only with time to idle).
//! Removal is a swap-remove: the last entry moves into the hole and every
//! part is told (`relocate`), so there is no free list, no `Option` tag and
//! no tombstone per slot. The commonest removal skips even that: a new key
//! arriving at a full unweighted shard asks the policy first what its
//! arrival evicts ([`TinyLfu::make_room`]) and then takes the evicted
//! entry's id in place (`refill`), so nothing moves. The write path is in
//! [`write`](mod@write), removal by key, by the timing wheel and of
//! everything in [`remove`](mod@remove); this file holds the structure,
//! its reads and the clock.
//!
//! # Locking rules
//!
//! The shard knows nothing of locks; [`Shards`] wraps each in a
//! reader-writer lock (`raw::lock`, whose shared release can also count a
//! hit). Methods taking `&self` (lookup, touch, sliding a
//! deadline) are what a read hit does under the *shared* lock: they write
//! only the slot's atomic word. Everything
//! else takes `&mut self` under the exclusive lock. No method calls user
//! code but the key's `Hash` and `Eq` (to find, place and unlink keys):
//! removed entries are moved into a [`Removed`] buffer for the caller to
//! deliver after unlocking, which the caller does even if one of those
//! panics (`notify::Delivery`), and a method that removes entries hashes
//! what it needs before it changes anything where it can (`take`, a
//! reap's batch). The policy, which hashes keys in the middle of moving
//! ids between its queues, gets its hashes through `SlotEntries`, which
//! catches a panicking `Hash` and answers a stand-in: the policy and the
//! insert that asked it finish, and the insert re-raises the panic last.
//!
//! # Hash bits
//!
//! One 64-bit `ahash` per key serves three readers: bits 32..48 pick the shard,
//! the table takes its home chunk from the low 32 bits and its tag from the
//! top 8, and the policy's frequency sketch re-mixes the whole word.
//!
//! # Cost of a write
//!
//! Writes cost more than quick_cache's, whose policy has no sketch to count
//! in and no duel to run. Measured on 5 December with callgrind (instructions
//! between runs of 1M and 5M operations after a warm-up, three pairs each,
//! capacity 100k, Zipf 1.0 over 1M keys): the comparison bench's insert
//! stream 361 per insert against quick_cache's 239, and its mixed stream
//! (90% get-or-insert, 10% insert) 305 per operation against 198. The
//! numbers move by about ±8 from run to run, as `ahash` seeds each process
//! differently. Tried on that path and not kept: prefetching the new key's
//! sketch block as soon as the write lock is taken (a 100k cache's sketch,
//! 800 KB, sits in this machine's 2 MiB of L2 per core: 0.985–1.005 of the
//! time, alternating rounds of both builds in one process); a sketch
//! increment specialized for the new key's one (about 10 instructions
//! fewer per new key, 0.985–0.994 of the time, within the same harness's
//! spread of a build against itself, 1.02); `#[inline]` on
//! `Shard::insert`, which added about 40 instructions per insert; and
//! turning a new key away without looking for a victim when its estimate
//! is at most one (a fresh key must lead the victim by more than one, so
//! the duel's answer is known): 305 → 287 instructions per mixed
//! operation, but 0.99–1.01 of the time, as the probation head that a run
//! of rejected keys faces stays in L1, and `P6`@50k −0.5 in the simulator
//! from the head's deferred settling. On 6 December, after the write
//! lock's waits went out of line (346 instructions per insert and 304 per
//! mixed operation, with a fixed hash seed), splitting `Shard::insert` so
//! that only a present key's replacement stays in it (the new key's path
//! and the refusal of an entry too heavy for the shard in functions of
//! their own): 339 per insert but 307 per mixed operation, 0.99–1.05× the
//! rate of the unsplit build in alternating rounds in one process (a build
//! against itself: 1.00–1.02×), and 0.78× quick_cache in two runs of the
//! comparison bench's insert row against 0.81–0.83×; with the split
//! function `#[inline]`, 342 and 305 and no faster: neither kept.
//!
//! Where the time goes, in alternating 0.3 s rounds of larder and
//! quick_cache on the mixed stream (1M operations, cycled): with its
//! inserts dropped, larder's gets run 1.30× quick_cache's rate (19 ns
//! against 25); with them, an insert costs larder about 63 ns and
//! quick_cache about 32, the difference being the sketch's random line per
//! new key and the CLOCK sweep's folds and promotions, work a policy
//! without a sketch does not do. The comparison bench's mixed row on one
//! thread (0.71–0.87×) depends on its stream too: on the same workload,
//! 1M operations cycled gave 0.84–0.99× and 4M cycled 1.12–1.41×, as
//! quick_cache's rate moved between 15 and 33 Mops/s from round to round
//! while larder's stayed at 24–27.

mod raw;
mod remove;
mod sharded;
mod slot;
mod table;
mod write;

#[cfg(test)]
pub(crate) use sharded::ENDS;
pub(crate) use sharded::{ShardCell, ShardWriteGuard, Shards, Stripe};

use std::{
    any::Any,
    borrow::Borrow,
    cell::Cell,
    hash::Hash,
    panic::{AssertUnwindSafe, catch_unwind},
};

use ahash::RandomState;

use crate::{
    RemovalCause,
    expiry::{Deadline, NEVER, clock::Clock, wheel::TimerWheel},
    notify::Removed,
    policy::{Entries, Placement, Room, SketchBudget, TinyLfu},
};
pub(crate) use slot::{Slot, representable};
use table::Table;

/// At most this many expired entries are reaped per lock hold, so a mass
/// expiry never keeps readers waiting long.
pub(crate) const REAP_BUDGET: usize = 512;

/// At most this many expired entries are reaped by a write that needs room
/// in a full shard, and only by the first such write of each tick of
/// `2^WRITE_REAP_SHIFT` ns (about a millisecond); the maintenance thread
/// reaps the rest. The throttle keeps the writes of a steady churn short:
/// reaping for every such write (budgets of 1 and 8) measured 1.07–1.11x
/// the time of the criterion `expiry_churn` row (a 1 ms TTL, half inserts
/// into a full cache), whose expired entries the policy otherwise evicts
/// as victims, reusing their slots. What the throttle leaves, and the
/// expired entries no duel meets (those in the policy's protected
/// segment), [`Shard::reap_instead`] takes when the policy would
/// otherwise evict a live entry or turn a key away: it too reaps up to
/// this many, unthrottled but only while some entry is due (see
/// `tests/weighted_accounting.rs`), and a write's reaps come to at most
/// [`REAP_BUDGET`] in all (`tests/expired_make_way.rs`).
const WRITE_REAP_BUDGET: usize = 8;

/// See [`WRITE_REAP_BUDGET`].
const WRITE_REAP_SHIFT: u32 = 20;

/// The most by which a read may leave an idle deadline short of its
/// read's time plus the idle time (about a millisecond): a slide by less
/// is skipped, sparing the read hit its compare-and-swap.
const SLIDE_STEP: u64 = 1 << 20;

/// Reads the clock at most once, and only if an entry has a deadline (a read
/// takes it up front, before the shard lock, once the cache has made any).
#[derive(Debug)]
pub(crate) struct Now<'a> {
    clock: &'a Clock,
    value: Option<u64>,
}

impl<'a> Now<'a> {
    /// A lazy reading of `clock`.
    pub(crate) fn new(clock: &'a Clock) -> Self {
        Now { clock, value: None }
    }

    /// The time, read on first use.
    #[inline]
    pub(crate) fn get(&mut self) -> u64 {
        *self.value.get_or_insert_with(|| self.clock.now())
    }

    /// The time if it has been read, without reading it.
    #[inline]
    pub(crate) fn read_so_far(&self) -> Option<u64> {
        self.value
    }
}

/// A write to one key, timed under the lock where it lands.
#[derive(Debug)]
pub(crate) struct Write<K, V> {
    pub(crate) hash: u64,
    pub(crate) key: K,
    pub(crate) value: V,
    pub(crate) weight: u32,
    pub(crate) deadline: Deadline,
}

/// The key hashes [`Shard::take`] needs to remove an id: its own key's,
/// and that of the last entry, which moves into its place (`None` when
/// the id is the last).
#[derive(Clone, Copy, Debug)]
struct Unlink {
    hash: u64,
    last_hash: Option<u64>,
}

/// Fills `out` with the hashes for taking `ids` (descending, as a reap
/// takes them) one after another from `slots`, each beside the position
/// in `slots` of the entry the take moves into the id's place (the id's
/// own if none). Each id still holds its own entry when its turn comes
/// (only higher ids have had entries moved in), but the last position may
/// hold one that an earlier take moved there from further back.
fn batch_hashes<K: Hash, V>(
    slots: &[Slot<K, V>],
    hasher: &RandomState,
    ids: &[u32],
    out: &mut Vec<(Unlink, usize)>,
) {
    out.clear();
    // The first earlier take whose id is not above the current last
    // position: ids and last positions both descend.
    let mut earlier = 0;
    for (i, &id) in ids.iter().enumerate() {
        let (id, last) = (id as usize, slots.len() - 1 - i);
        while earlier < i && ids[earlier] as usize > last {
            earlier += 1;
        }
        let from = if earlier < i && ids[earlier] as usize == last {
            out[earlier].1
        } else {
            last
        };
        let hash = hasher.hash_one(&slots[id].key);
        let last_hash = (id != last).then(|| hasher.hash_one(&slots[from].key));
        out.push((
            Unlink { hash, last_hash },
            if id == last { id } else { from },
        ));
    }
}

/// Whether `w`'s entry is expired as it arrives, judged as reads judge it
/// (a deadline past the clock's range is none).
fn expired_on_arrival<K, V>(w: &Write<K, V>, now: &mut Now<'_>) -> bool {
    let deadline = slot::representable(w.deadline.at);
    deadline != NEVER && deadline <= now.get()
}

/// Puts ids popped off the timing wheel back on it when dropped (a reap's
/// batch, if a key's `Hash` panics before any is taken); forgotten once
/// the batch is sure to be taken.
struct Requeue<'a, K, V> {
    wheel: &'a mut TimerWheel,
    slots: &'a [Slot<K, V>],
    ids: &'a [u32],
}

impl<K, V> Drop for Requeue<'_, K, V> {
    fn drop(&mut self) {
        for &id in self.ids {
            self.wheel.schedule(id, self.slots[id as usize].deadline());
        }
    }
}

/// What a key's `Hash` that panicked while the policy worked is taken as:
/// any fixed value (it skews only the sketch's counts and the ghosts).
const STAND_IN_HASH: u64 = 0;

/// The policy's view of the slots: key hashes and touch counters.
///
/// A key's `Hash` (user code) that panics while the policy works is
/// caught here: the policy, midway through moving ids between its
/// queues, gets [`STAND_IN_HASH`] and finishes its step, and the shard
/// re-raises the panic once its own change is complete (see
/// [`Shard::insert`]). Unwinding out of the policy instead left an id
/// unlinked from every queue but still held (a duel on arrival unlinks
/// the new id before it hashes the keys), so the shard held entries the
/// policy no longer counted, beyond its capacity for good, and a later
/// removal of that id broke its queues.
struct SlotEntries<'a, K, V> {
    slots: &'a [Slot<K, V>],
    hasher: &'a RandomState,
    /// The time now, or 0 while no entry has a deadline (then none has
    /// expired, and the clock is not read).
    now: u64,
    /// The first panic caught from a key's `Hash`.
    panic: Cell<Option<Panic>>,
}

/// A panic's payload, as `catch_unwind` returns it.
type Panic = Box<dyn Any + Send>;

impl<'a, K, V> SlotEntries<'a, K, V> {
    fn new(slots: &'a [Slot<K, V>], hasher: &'a RandomState, now: u64) -> Self {
        SlotEntries {
            slots,
            hasher,
            now,
            panic: Cell::new(None),
        }
    }

    /// The first panic a key's `Hash` raised while the policy asked for
    /// hashes, if any.
    fn into_panic(self) -> Option<Panic> {
        self.panic.into_inner()
    }

    #[cold]
    #[inline(never)]
    fn caught(&self, payload: Panic) -> u64 {
        // Only the first panic is re-raised; later ones are dropped.
        let first = self.panic.take().unwrap_or(payload);
        self.panic.set(Some(first));
        STAND_IN_HASH
    }
}

impl<K: Hash, V> Entries for SlotEntries<'_, K, V> {
    fn hash(&self, id: u32) -> u64 {
        let key = &self.slots[id as usize].key;
        match catch_unwind(AssertUnwindSafe(|| self.hasher.hash_one(key))) {
            Ok(hash) => hash,
            Err(payload) => self.caught(payload),
        }
    }

    fn take_touches(&self, id: u32) -> u8 {
        self.slots[id as usize].take_touches()
    }

    fn touched(&self, id: u32) -> bool {
        self.slots[id as usize].touched()
    }

    fn expired(&self, id: u32) -> bool {
        let deadline = self.slots[id as usize].deadline();
        deadline != NEVER && deadline <= self.now
    }
}

/// Tells whether a value stands for no entry of the user's: a
/// [`LoadingCache`](crate::LoadingCache)'s cached absence. The listener
/// never hears of such a value leaving (it has none to hand over), so the
/// shard does not count its removal either: the stats' removals by cause
/// are what the listener hears.
pub(crate) type Placeholder<V> = fn(&V) -> bool;

/// How to build a shard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Most weight (entries when unweighted) the shard holds.
    pub(crate) capacity: u64,
    /// The heaviest entry the shard keeps: the cache's capacity over its
    /// shard count, rounded down, the same in every shard (a shard's own
    /// capacity may be one unit more).
    pub(crate) heaviest: u64,
    /// Entries carry weights from a weigher.
    pub(crate) weighted: bool,
    /// Entries to reserve storage for (written as entries arrive).
    pub(crate) reserve: usize,
    /// The cache gives entries deadlines (TTL, TTI or expiry hooks).
    pub(crate) timed: bool,
    /// Reads slide deadlines (time to idle).
    pub(crate) sliding: bool,
    /// Bytes the shard's frequency sketch may take (see [`TinyLfu::new`]).
    pub(crate) sketch_budget: SketchBudget,
}

/// The part of a shard a read looks at: the table and the slots, on a
/// cache line of their own, apart from the lock word (which every read
/// and write changes) and from the policy's fields (which every write
/// changes). With the compiler's own order the two shared the lock word's
/// line and the mixed Zipf rate on two threads was 9% lower.
#[derive(Debug)]
#[repr(align(64))]
struct Index<K, V> {
    table: Table,
    slots: Vec<Slot<K, V>>,
}

/// One shard of the cache: table, slots, policy and timer wheel.
#[derive(Debug)]
pub(crate) struct Shard<K, V> {
    /// What a read needs, on a cache line of its own.
    index: Index<K, V>,
    /// Per-id write-based cap for sliding (time-to-idle) deadlines; empty without TTI.
    hard: Vec<u64>,
    sliding: bool,
    policy: TinyLfu,
    wheel: TimerWheel,
    /// The ids a reap takes off the wheel, kept between reaps so that a
    /// write's reap does not allocate.
    due: Vec<u32>,
    /// The tick (`now >> WRITE_REAP_SHIFT`) of the last reap a write did.
    write_reaped: u64,
    hasher: RandomState,
    /// Removals by cause, of the user's entries only (see [`Placeholder`]).
    removals: [u64; 4],
    /// Tells the values that stand for no entry of the user's, whose
    /// removals are not counted.
    placeholder: Option<Placeholder<V>>,
    /// Bumped by every write; lets unlocked work detect that the shard changed.
    version: u64,
    /// Bumped by every write that creates an entry (not one that replaces a
    /// value), and by every user's change of an entry's lifetime
    /// ([`retime`](Self::retime)): an entry found under a key with this
    /// count unchanged is the entry seen under that key before, with no
    /// lifetime given to it since but by writes and reads (see [`Sighting`]).
    created: u64,
    /// See [`Layout::heaviest`].
    heaviest: u64,
}

/// What a read saw of an entry, for a change it makes after unlocking (a
/// read hook's answer): its deadline, and the shard's count of created
/// entries. An entry found under the key later with both unchanged is the
/// one seen, with the deadline seen; one created since (the key removed
/// and written again) may have that deadline too, a create hook's `None`
/// say, but not the read's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sighting {
    deadline: u64,
    created: u64,
}

impl Sighting {
    /// The deadline seen ([`NEVER`] if none).
    pub(crate) fn deadline(self) -> u64 {
        self.deadline
    }
}

impl<K: Hash + Eq, V> Shard<K, V> {
    /// An empty shard as `layout` describes, with storage for
    /// `layout.reserve` entries reserved (the index starts at one page and
    /// grows to that size), which does not count the removals of values
    /// `placeholder` picks out.
    pub(crate) fn new(
        layout: &Layout,
        hasher: RandomState,
        placeholder: Option<Placeholder<V>>,
        now: u64,
    ) -> Self {
        let reserve = layout.reserve;
        let mut wheel = TimerWheel::new(now);
        let mut hard = Vec::new();
        if layout.timed {
            wheel.reserve(reserve);
        }
        if layout.sliding {
            hard.reserve_exact(reserve);
        }
        Shard {
            index: Index {
                table: Table::with_capacity(reserve),
                slots: Vec::with_capacity(reserve),
            },
            hard,
            sliding: layout.sliding,
            policy: TinyLfu::new(
                layout.capacity,
                layout.weighted,
                reserve,
                layout.sketch_budget,
            ),
            wheel,
            due: Vec::new(),
            write_reaped: u64::MAX,
            hasher,
            removals: [0; 4],
            placeholder,
            version: 0,
            created: 0,
            heaviest: layout.heaviest,
        }
    }

    /// Number of entries, expired ones not yet reaped included.
    pub(crate) fn len(&self) -> usize {
        self.index.slots.len()
    }

    /// Total weight of the entries.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.policy.weighted_size()
    }

    /// Changes whenever an entry is written or removed.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Removals so far, by cause (not of placeholders).
    pub(crate) fn removals(&self) -> [u64; 4] {
        self.removals
    }

    /// The id of `key`'s entry, live or expired.
    #[inline]
    pub(crate) fn find<Q>(&self, hash: u64, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.locate(hash, key).map(|(id, _)| id)
    }

    /// `key`'s id and slot, live or expired: the one lookup `find` and
    /// `hit` share, returning the slot so a read need not index it again.
    #[inline]
    pub(crate) fn locate<Q>(&self, hash: u64, key: &Q) -> Option<(u32, &Slot<K, V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut found = None;
        let id = self.index.table.find(hash, |id| {
            let slot = &self.index.slots[id as usize];
            let same = slot.key.borrow() == key;
            if same {
                found = Some(slot);
            }
            same
        })?;
        found.map(|slot| (id, slot))
    }

    /// The id of `key`'s entry if it is present and live at `now`.
    #[inline]
    pub(crate) fn lookup<Q>(&self, hash: u64, key: &Q, now: &mut Now<'_>) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = self.find(hash, key)?;
        self.is_live(id, now).then_some(id)
    }

    /// The deadline of `key`'s entry if it is present and live at `now`
    /// ([`NEVER`] if it has none): what the expiry hooks are shown of it.
    pub(crate) fn live_deadline<Q>(&self, hash: u64, key: &Q, now: &mut Now<'_>) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(hash, key, now).map(|id| self.deadline(id))
    }

    /// False once the entry's deadline has passed.
    #[inline]
    fn is_live(&self, id: u32, now: &mut Now<'_>) -> bool {
        let d = self.index.slots[id as usize].deadline();
        d == NEVER || now.get() < d
    }

    /// The key of a live id.
    #[inline]
    pub(crate) fn key(&self, id: u32) -> &K {
        &self.index.slots[id as usize].key
    }

    /// The value of a live id.
    #[inline]
    pub(crate) fn value(&self, id: u32) -> &V {
        &self.index.slots[id as usize].value
    }

    /// The entry's deadline ([`NEVER`] if none).
    #[inline]
    pub(crate) fn deadline(&self, id: u32) -> u64 {
        self.index.slots[id as usize].deadline()
    }

    /// A read hit: `key`'s live entry (its id and slot), with the access
    /// recorded for the policy (shared lock: one atomic word of the slot).
    #[inline]
    pub(crate) fn hit<Q>(&self, hash: u64, key: &Q, now: &mut Now<'_>) -> Option<(u32, &Slot<K, V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (id, slot) = self.locate(hash, key)?;
        slot.hit(|| now.get()).then_some((id, slot))
    }

    /// Slides an idle deadline after a read at `now` (shared lock: one
    /// compare-and-swap, skipped when it would move the deadline by under
    /// [`SLIDE_STEP`], or an eighth of the idle time if that is shorter:
    /// a step as long as the idle time would stop every slide, since no
    /// read of a live entry comes that long after the deadline was last
    /// set). A deadline past the word's range is slid to its end:
    /// the wheel keeps every entry with a deadline, and only a writer may
    /// take one off it.
    ///
    /// `now` is the time the read judged the entry by, read before the
    /// lock; the slide is made only if the entry is still live at a time
    /// read again just before it (`fresh`). A read held up between the two
    /// (descheduled, or in the key's `Eq`) would otherwise move the
    /// deadline of an entry that another read has meanwhile found expired,
    /// and later reads would return it again.
    #[inline]
    pub(crate) fn slide(
        &self,
        id: u32,
        slot: &Slot<K, V>,
        now: u64,
        tti: u64,
        fresh: impl FnOnce() -> u64,
    ) {
        if let Some(&hard) = self.hard.get(id as usize) {
            let next = hard.min(now.saturating_add(tti)).min(slot::LAST_DEADLINE);
            slot.extend(next, (tti >> 3).min(SLIDE_STEP), fresh);
        }
    }

    /// What a read sees of `slot` for [`reset_deadline`](Self::reset_deadline).
    #[inline]
    pub(crate) fn sighting(&self, slot: &Slot<K, V>) -> Sighting {
        Sighting {
            deadline: slot.deadline(),
            created: self.created,
        }
    }

    /// Sets a deadline computed by a read hook, if the entry is still the
    /// one the hook was shown with the deadline it saw (a write in between
    /// wins). No entry created in the shard since: the key's entry may
    /// have been removed and written again, the hook's answer being about
    /// a value no longer cached; nor re-timed by its user (`retime`). (A write that replaced the value and kept
    /// the deadline is as if it came after the read: its update hook kept
    /// the time left, as it would have kept the read's.) Nor if the entry
    /// has expired at `now` (read under this lock): the hook ran unlocked,
    /// and an expired entry stays expired.
    pub(crate) fn reset_deadline<Q>(
        &mut self,
        hash: u64,
        key: &Q,
        seen: Sighting,
        deadline: u64,
        now: &mut Now<'_>,
    ) where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.created != seen.created {
            return;
        }
        let Some(id) = self.lookup(hash, key, now) else {
            return;
        };
        if self.deadline(id) == seen.deadline {
            self.set_deadline(
                id,
                Deadline {
                    at: deadline,
                    hard: deadline,
                },
            );
        }
    }

    /// Gives the live entry `id` (found by [`lookup`](Self::lookup) under
    /// this lock) the deadlines `deadline` (a user's change of its
    /// lifetime, `Cache::expire_in` or `persist`). Neither a read nor a
    /// write: the policy and the version stay as they are. A read hook's
    /// answer pending for the entry is then dropped (see
    /// [`reset_deadline`](Self::reset_deadline)): `created` is bumped, as
    /// the deadline alone may not change (`persist` on an entry that had
    /// none). The caller looks the entry up first, so an expired one is
    /// left for the reaper, never revived, and nothing is computed for it
    /// (making a deadline tells the cache's reads to look at the clock
    /// from then on).
    pub(crate) fn retime(&mut self, id: u32, deadline: Deadline) {
        self.set_deadline(id, deadline);
        self.created += 1;
    }

    /// The value of a live id, to change in place under the exclusive lock
    /// with its deadline ([`retime`](Self::retime)). Not a write: only
    /// larder's own bookkeeping kept in the value may change here (a
    /// [`LoadingCache`](crate::LoadingCache)'s record of when its value
    /// expires), never the user's value.
    #[inline]
    pub(crate) fn value_mut(&mut self, id: u32) -> &mut V {
        &mut self.index.slots[id as usize].value
    }

    /// Removes `key`'s entry as `Expired` if it is live at `now` (a user's
    /// zero lifetime, `Cache::expire_in(key, Duration::ZERO)`); an expired
    /// entry is left for the reaper, which reports it as `Expired` in turn.
    pub(crate) fn expire_now<Q>(
        &mut self,
        hash: u64,
        key: &Q,
        now: &mut Now<'_>,
    ) -> Option<(K, V, RemovalCause)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(hash, key, now)?;
        self.remove_as(hash, key, now, RemovalCause::Expired)
    }

    /// Clones of every live entry, for predicates that must run unlocked.
    pub(crate) fn snapshot(&self, now: u64) -> Vec<(K, V)>
    where
        K: Clone,
        V: Clone,
    {
        (0..self.index.slots.len() as u32)
            .filter(|&id| {
                let d = self.deadline(id);
                d == NEVER || now < d
            })
            .map(|id| (self.key(id).clone(), self.value(id).clone()))
            .collect()
    }

    /// Counts the removal of `value` for `cause`, unless it is a placeholder.
    #[inline]
    fn count(&mut self, cause: RemovalCause, value: &V) {
        if !self.placeholder.is_some_and(|is| is(value)) {
            self.removals[cause.index()] += 1;
        }
    }

    /// Panics if the table, slots, wheel and policy disagree.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(crate) fn check_invariants(&self) {
        let len = self.index.slots.len();
        assert_eq!(self.index.table.len(), len, "table and slots disagree");
        for (id, slot) in self.index.slots.iter().enumerate() {
            let hash = self.hasher.hash_one(&slot.key);
            let found = self
                .index
                .table
                .find(hash, |i| self.index.slots[i as usize].key == slot.key);
            assert_eq!(
                found,
                Some(id as u32),
                "table does not map slot {id} to itself"
            );
        }
        self.index
            .table
            .check_invariants(|id| self.hasher.hash_one(&self.index.slots[id as usize].key));
        assert!(
            self.hard.is_empty() || self.hard.len() == len,
            "hard deadline array length"
        );
        let timed = (0..len as u32)
            .filter(|&id| self.deadline(id) != NEVER)
            .count();
        assert_eq!(
            self.wheel.len(),
            timed,
            "wheel holds exactly the entries with deadlines"
        );
        for id in 0..len as u32 {
            assert_eq!(
                self.wheel.is_scheduled(id),
                self.deadline(id) != NEVER,
                "wheel membership of {id}"
            );
        }
        assert!(
            self.policy.weighted_size() <= self.policy.capacity(),
            "over capacity"
        );
        self.policy.check_invariants(len);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A bounded shard emptied by `clear` (an `invalidate_all`) keeps the
    /// slot storage reserved for its capacity, as its table, policy and
    /// wheel keep theirs: filling it again must not grow the slots by
    /// doubling, copying them all under the write lock at each step and
    /// ending with up to twice the room the bound needs.
    #[test]
    fn clearing_keeps_the_reserved_slot_storage() {
        let capacity = 100;
        let layout = Layout {
            capacity,
            heaviest: capacity,
            weighted: false,
            // As `Shards::new` reserves for a bounded shard.
            reserve: capacity as usize + 1,
            timed: false,
            sliding: false,
            sketch_budget: SketchBudget::of_shard(capacity, false, 1),
        };
        let hasher = RandomState::new();
        let mut shard: Shard<u32, u32> = Shard::new(&layout, hasher.clone(), None, 0);
        let clock = Clock::system();
        let mut removed = Removed::default();
        for key in 0..capacity as u32 {
            let write = Write {
                hash: hasher.hash_one(key),
                key,
                value: key,
                weight: 1,
                deadline: Deadline::NONE,
            };
            shard.insert(None, write, &mut Now::new(&clock), &mut removed);
        }
        assert_eq!(shard.len(), capacity as usize);
        shard.clear(0, &mut removed);
        assert_eq!((shard.len(), removed.len()), (0, capacity as usize));
        assert!(
            shard.index.slots.capacity() >= layout.reserve,
            "slot storage after clear: {} of the {} reserved",
            shard.index.slots.capacity(),
            layout.reserve
        );
        shard.check_invariants();
    }

    proptest! {
        /// The hashes computed up front for a batch are those that taking
        /// its ids one at a time, highest first, computes as it goes.
        #[test]
        fn batch_hashes_are_those_the_takes_would_compute(
            len in 1usize..40,
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let hasher = RandomState::new();
            let slots: Vec<Slot<u32, ()>> = (0..len as u32).map(|k| Slot::new(k, ())).collect();
            let mut ids: Vec<u32> = picks.iter().map(|p| p.index(len) as u32).collect();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.dedup();
            let mut out = Vec::new();
            batch_hashes(&slots, &hasher, &ids, &mut out);
            prop_assert_eq!(out.len(), ids.len());
            // The takes, one after another, on the keys alone.
            let mut keys: Vec<u32> = (0..len as u32).collect();
            for (&id, &(unlink, _)) in ids.iter().zip(&out) {
                let last = keys.len() - 1;
                prop_assert_eq!(unlink.hash, hasher.hash_one(keys[id as usize]));
                let moved = (id as usize != last).then(|| hasher.hash_one(keys[last]));
                prop_assert_eq!(unlink.last_hash, moved);
                keys.swap_remove(id as usize);
            }
        }
    }
}
