//! Removal from the shard: by key ([`Shard::remove`], [`Shard::remove_as`]),
//! of expired entries by the timing wheel ([`Shard::reap`]), and of every
//! entry ([`Shard::clear`]).

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;

impl<K: Hash + Eq, V> Shard<K, V> {
    /// Removes `key`'s entry and hands it back with its cause: `Explicit`
    /// if it was live, `Expired` if its deadline had passed.
    pub(crate) fn remove<Q>(
        &mut self,
        hash: u64,
        key: &Q,
        now: &mut Now<'_>,
    ) -> Option<(K, V, RemovalCause)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_as(hash, key, now, RemovalCause::Explicit)
    }

    /// Removes `key`'s entry with cause `live_cause`, or `Expired` if its
    /// deadline had passed.
    pub(crate) fn remove_as<Q>(
        &mut self,
        hash: u64,
        key: &Q,
        now: &mut Now<'_>,
        live_cause: RemovalCause,
    ) -> Option<(K, V, RemovalCause)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let id = self.find(hash, key)?;
        let live = self.is_live(id, now);
        self.version += 1;
        let slot = self.take(id);
        let cause = if live {
            live_cause
        } else {
            RemovalCause::Expired
        };
        self.count(cause, &slot.value);
        Some((slot.key, slot.value, cause))
    }

    /// Unlinks `id` everywhere and swap-removes its slot.
    pub(super) fn take(&mut self, id: u32) -> Slot<K, V> {
        // Both hashes (user code) before anything changes: a panicking
        // `Hash` leaves the shard as it was.
        let hash = self.hasher.hash_one(&self.index.slots[id as usize].key);
        let last = (self.index.slots.len() - 1) as u32;
        let last_hash =
            (id != last).then(|| self.hasher.hash_one(&self.index.slots[last as usize].key));
        self.take_hashed(id, Unlink { hash, last_hash })
    }

    /// [`take`](Self::take) with the key hashes it needs already computed:
    /// calls no user code.
    fn take_hashed(&mut self, id: u32, Unlink { hash, last_hash }: Unlink) -> Slot<K, V> {
        let last = (self.index.slots.len() - 1) as u32;
        debug_assert_eq!(last_hash.is_some(), id != last);
        let held = self.index.table.remove(hash, id);
        debug_assert!(held, "slot {id} missing from the table");
        self.policy.remove(id);
        self.wheel.cancel(id);
        if let Some(last_hash) = last_hash {
            let held = self.index.table.relocate(last_hash, last, id);
            debug_assert!(held, "slot {last} missing from the table");
            self.policy.relocate(last, id);
            self.wheel.relocate(last, id);
        }
        if self.sliding {
            self.hard.swap_remove(id as usize);
        }
        self.index.slots.swap_remove(id as usize)
    }

    /// The time now for the policy's [`Entries::expired`], read only if some
    /// entry has a deadline (0 otherwise: nothing has expired).
    pub(super) fn now_if_timed(&self, now: &mut Now<'_>) -> u64 {
        if self.wheel.len() == 0 { 0 } else { now.get() }
    }

    /// The earliest time (ns) at which an entry may fall due: the start of
    /// the wheel's first occupied slot, no later than any deadline in it;
    /// [`NEVER`] when no entry has a deadline.
    pub(crate) fn next_due(&self) -> u64 {
        self.wheel.next_wakeup().unwrap_or(NEVER)
    }

    /// Reaps up to [`REAP_BUDGET`] expired entries; true when none is left.
    pub(crate) fn reap(&mut self, now: u64, removed: &mut Removed<K, V>) -> bool {
        self.reap_up_to(now, REAP_BUDGET, removed)
    }

    /// For a write that needs room in a full shard: reaps up to
    /// [`WRITE_REAP_BUDGET`] expired entries, unless a write did this tick.
    /// Reads the clock only if some entry has a deadline.
    pub(super) fn reap_for_room(&mut self, now: &mut Now<'_>, removed: &mut Removed<K, V>) {
        if self.wheel.len() == 0 {
            return;
        }
        let now = now.get();
        let tick = now >> WRITE_REAP_SHIFT;
        if tick != self.write_reaped {
            self.write_reaped = tick;
            self.reap_up_to(now, WRITE_REAP_BUDGET, removed);
        }
    }

    /// Before a live entry is evicted for size, or a new key turned away:
    /// reaps up to [`WRITE_REAP_BUDGET`] expired entries if any is due,
    /// whatever the throttle of [`reap_for_room`](Self::reap_for_room), so
    /// that no live entry makes way while an expired one holds room (those
    /// in the protected segment, which no duel meets, would otherwise wait
    /// for the maintenance thread). True if any was reaped.
    ///
    /// `left` is what the write may still reap this way, taken off as it
    /// reaps: a write's reaps stay within [`REAP_BUDGET`] in all, as the
    /// maintenance thread's do per lock hold. (A weighted write's `evict`
    /// asks again after every reap that took anything, and reaping
    /// weightless entries frees no room: unbounded, one write reaped every
    /// due entry of its shard under the write lock.)
    ///
    /// Asks the clock only if some entry has a deadline, and walks the
    /// wheel only if one is due ([`TimerWheel::any_due`]). A key's `Hash`
    /// that panics in the reap is caught into `panic` (the batch stays on
    /// the wheel, see [`Requeue`]), for the caller to raise once its write
    /// is complete; with a panic already caught, nothing is tried.
    #[inline]
    pub(super) fn reap_instead(
        &mut self,
        now: &mut Now<'_>,
        removed: &mut Removed<K, V>,
        panic: &mut Option<Panic>,
        left: &mut usize,
    ) -> bool {
        // Inline, so that a shard with nothing on its wheel (an untimed
        // cache's) pays a compare, not a call, per eviction or new key
        // turned away.
        if self.wheel.len() == 0 || panic.is_some() || *left == 0 {
            return false;
        }
        self.reap_due_instead(now, removed, panic, left)
    }

    /// [`reap_instead`](Self::reap_instead) once its cheap checks pass.
    #[inline(never)]
    fn reap_due_instead(
        &mut self,
        now: &mut Now<'_>,
        removed: &mut Removed<K, V>,
        panic: &mut Option<Panic>,
        left: &mut usize,
    ) -> bool {
        let now = now.get();
        if !self.wheel.any_due(now) {
            return false;
        }
        let held = self.index.slots.len();
        let budget = WRITE_REAP_BUDGET.min(*left);
        let reap = AssertUnwindSafe(|| self.reap_up_to(now, budget, removed));
        if let Err(caught) = catch_unwind(reap) {
            *panic = Some(caught);
            return false;
        }
        let reaped = held - self.index.slots.len();
        *left -= reaped;
        reaped > 0
    }

    /// Reaps up to `budget` expired entries; true when none is left.
    fn reap_up_to(&mut self, now: u64, budget: usize, removed: &mut Removed<K, V>) -> bool {
        if self.wheel.len() == 0 {
            return true;
        }
        let mut expired = std::mem::take(&mut self.due);
        let slots = &self.index.slots;
        let done = self.wheel.advance(
            now,
            budget,
            |id| slots[id as usize].deadline(),
            &mut expired,
        );
        if !expired.is_empty() {
            self.version += 1;
        }
        // Highest ids first: a swap-remove then never moves an id still to be taken.
        expired.sort_unstable_by(|a, b| b.cmp(a));
        // Every hash the removals need (user code) before the first one:
        // a `Hash` that panics midway would otherwise leave the ids not yet
        // taken off the wheel for good, and the entries already taken in
        // `removed`, which the unwinding caller drops unnotified. If one
        // panics, the batch goes back on the wheel and nothing else has
        // changed.
        // Allocated per batch: a field kept between reaps moved the shard's
        // hot fields and cost the insert row a tenth of its rate.
        let mut hashes = Vec::with_capacity(expired.len());
        let requeue = Requeue {
            wheel: &mut self.wheel,
            slots: &self.index.slots,
            ids: &expired,
        };
        batch_hashes(&self.index.slots, &self.hasher, &expired, &mut hashes);
        std::mem::forget(requeue);
        for (&id, &(unlink, _)) in expired.iter().zip(&hashes) {
            let slot = self.take_hashed(id, unlink);
            self.count(RemovalCause::Expired, &slot.value);
            removed.push(slot.key, slot.value, RemovalCause::Expired);
        }
        expired.clear();
        self.due = expired;
        done
    }

    /// Removes every entry: live ones as `Explicit`, expired ones as
    /// `Expired`. The storage stays, the slots' included (drained, not
    /// replaced by an empty `Vec`, which gave up the room reserved for the
    /// bound).
    pub(crate) fn clear(&mut self, now: u64, removed: &mut Removed<K, V>) {
        self.version += 1;
        let mut slots = std::mem::take(&mut self.index.slots);
        for slot in slots.drain(..) {
            // As `is_live` judges: `NEVER` is `u64::MAX`, which a clock
            // that saturates there reaches, and stays live even then.
            let d = slot.deadline();
            let cause = if d == NEVER || now < d {
                RemovalCause::Explicit
            } else {
                RemovalCause::Expired
            };
            self.count(cause, &slot.value);
            removed.push(slot.key, slot.value, cause);
        }
        self.index.slots = slots;
        self.index.table.clear();
        self.hard.clear();
        self.policy.clear();
        self.wheel.clear();
    }
}
