//! The shard's write path: [`Shard::insert`] (a new entry, a replacement,
//! an evicted entry's id given to the new key) and the eviction it runs.

use std::panic::resume_unwind;

use super::*;

impl<K: Hash + Eq, V> Shard<K, V> {
    /// The policy, for tests that look into it.
    #[cfg(test)]
    pub(crate) fn policy(&self) -> &TinyLfu {
        &self.policy
    }

    /// Asks for the cache line of the admission sketch that a write of a
    /// key with `hash` needs if the key is new, before the lookup that
    /// tells (see [`prefetch`](super::raw::prefetch)).
    #[inline]
    pub(crate) fn prefetch_for_write(&self, hash: u64) {
        if let Some(line) = self.policy.sketch_line(hash) {
            super::raw::prefetch::prefetch(line);
        }
    }

    /// Tells the policy, before a new key, the read hits this shard's lock
    /// has counted (`reads`, asked only if the policy keeps readmissions:
    /// they are its clock, with the new keys).
    #[inline]
    pub(crate) fn tell_reads(&mut self, reads: impl FnOnce() -> u64) {
        if self.policy.counts_reads() {
            self.policy.set_reads(reads());
        }
    }

    /// Inserts or replaces an entry, then evicts down to capacity. `found`
    /// is what [`find`](Self::find) returned for the key under this same
    /// lock (the caller looks first, to show a predicate the value).
    ///
    /// A key's `Hash` that panics while the policy decides what to evict
    /// does not stop the insert: the policy takes a stand-in hash (see
    /// [`SlotEntries`]), the insert and its evictions finish, and then the
    /// panic goes on to the caller, with the shard consistent and within
    /// its capacity.
    #[inline]
    pub(crate) fn insert(
        &mut self,
        found: Option<u32>,
        w: Write<K, V>,
        now: &mut Now<'_>,
        removed: &mut Removed<K, V>,
    ) {
        self.version += 1;
        // A shard without capacity keeps nothing, weightless entries
        // included (a cache built with `max_capacity(0)`). Every shard
        // refuses the same weights, whichever holds a unit more.
        let capacity = self.policy.capacity();
        if u64::from(w.weight) > self.heaviest || capacity == 0 {
            return self.refuse(w, now, removed);
        }
        match found {
            // A replacement that did not grow the entry leaves the shard
            // within its capacity; the queue rebalancing `evict` would also
            // do (after the ghosts moved a target) waits for the next write
            // that adds. The replacement is the path kept inline: with the
            // new key's paths in the same body, replacing a value took 124
            // instructions in the shard (callgrind, the comparison bench's
            // key space), most of them saving and restoring registers.
            Some(id) => {
                if self.replace(id, w, now, removed) {
                    self.evict_then_raise(None, now, removed);
                }
            }
            None => self.insert_new(w, capacity, now, removed),
        }
    }

    /// Turns away an entry heavier than a shard may hold (or any entry, in
    /// a shard without capacity): heard of as `Size` at once, and the
    /// key's previous entry, if any, as `Replaced`.
    #[cold]
    #[inline(never)]
    fn refuse(&mut self, w: Write<K, V>, now: &mut Now<'_>, removed: &mut Removed<K, V>) {
        if let Some((k, v, cause)) = self.remove_as(w.hash, &w.key, now, RemovalCause::Replaced) {
            removed.push(k, v, cause);
        }
        self.count(RemovalCause::Size, &w.value);
        removed.push(w.key, w.value, RemovalCause::Size);
    }

    /// [`insert`](Self::insert) of a key the shard does not hold.
    #[inline(never)]
    fn insert_new(
        &mut self,
        w: Write<K, V>,
        capacity: u64,
        now: &mut Now<'_>,
        removed: &mut Removed<K, V>,
    ) {
        // A key's `Hash` that panicked in the policy's work, caught so
        // that the policy and then this insert finish (see `SlotEntries`).
        let mut panic = None;
        let grew = if self.policy.is_weighted() {
            let fits =
                |shard: &Self| shard.policy.weighted_size() + u64::from(w.weight) <= capacity;
            if !fits(self) {
                self.reap_for_room(now, removed);
                if !fits(self) && expired_on_arrival(&w, now) {
                    return self.turn_away_expired(w, removed);
                }
            }
            self.push(w, true);
            true
        } else {
            match self.insert_new_unweighted(w, capacity, now, removed, &mut panic) {
                Some(grew) => grew,
                None => return,
            }
        };
        if grew {
            self.evict_then_raise(panic, now, removed);
        } else if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }

    /// Evicts down to capacity, then raises the first of `panic` and a
    /// panic caught while evicting (see [`SlotEntries`]): the shard is
    /// whole again, unwinding unlocks it, and the caller's
    /// `notify::Delivery` hands over the removals.
    fn evict_then_raise(
        &mut self,
        panic: Option<Panic>,
        now: &mut Now<'_>,
        removed: &mut Removed<K, V>,
    ) {
        if let Some(panic) = panic.or(self.evict(now, removed)) {
            resume_unwind(panic);
        }
    }

    /// [`insert`](Self::insert) of a new key into an unweighted shard: the
    /// policy decides what its arrival evicts before it has an id
    /// ([`TinyLfu::make_room`]), and the key takes the evicted entry's id,
    /// or a new one, or is turned away. Whether the shard grew; `None` if
    /// the key was turned away as expired on arrival. A `Hash` panic caught
    /// in the policy's work goes to `panic`.
    #[inline]
    fn insert_new_unweighted(
        &mut self,
        w: Write<K, V>,
        capacity: u64,
        now: &mut Now<'_>,
        removed: &mut Removed<K, V>,
        panic: &mut Option<Panic>,
    ) -> Option<bool> {
        if self.policy.len() as u64 >= capacity {
            self.reap_for_room(now, removed);
            if self.policy.len() as u64 >= capacity && expired_on_arrival(&w, now) {
                self.turn_away_expired(w, removed);
                return None;
            }
        }
        let entries = SlotEntries::new(&self.index.slots, &self.hasher, self.now_if_timed(now));
        let room = self.policy.make_room(&entries, w.hash);
        *panic = entries.into_panic();
        // Whether the policy's own work met a panicking `Hash` (one in the
        // reap below takes nothing and leaves the verdict's hashes right).
        let stand_in = panic.is_some();
        // Whether the verdict loses a live entry: the victim, or the key.
        let loses_live = match room {
            Room::Insert => false,
            Room::Evict(victim, ..) => self.is_live(victim, now),
            Room::Reject => true,
        };
        // One batch: the room of one expired entry is all the key needs.
        let mut reap_left = WRITE_REAP_BUDGET;
        if loses_live && self.reap_instead(now, removed, panic, &mut reap_left) {
            // Expired entries make way first: the key takes the room the
            // reap freed, not a live victim's place nor the door, and joins
            // the window as a key with room to spare would.
            self.push(w, false);
            return Some(true);
        }
        Some(match room {
            Room::Insert => {
                self.push(w, false);
                true
            }
            Room::Evict(victim, placement, victim_hash) => {
                // The key whose `Hash` panicked may be the victim's: its
                // hash is then the stand-in, not the table's.
                let victim_hash = victim_hash.filter(|_| !stand_in);
                let cause = if loses_live {
                    RemovalCause::Size
                } else {
                    RemovalCause::Expired
                };
                self.refill(victim, placement, victim_hash, cause, w, removed);
                false
            }
            Room::Reject => {
                self.count(RemovalCause::Size, &w.value);
                removed.push(w.key, w.value, RemovalCause::Size);
                false
            }
        })
    }

    /// Turns away a new entry that is expired as it arrives (a zero
    /// lifetime) at a shard with no room for it: it is heard of as
    /// `Expired` at once, and no entry, least of all a live one, is
    /// evicted to make room for what no read could return.
    fn turn_away_expired(&mut self, w: Write<K, V>, removed: &mut Removed<K, V>) {
        self.count(RemovalCause::Expired, &w.value);
        removed.push(w.key, w.value, RemovalCause::Expired);
    }

    /// Writes a new value into an existing id; returns whether its weight
    /// grew.
    fn replace(
        &mut self,
        id: u32,
        w: Write<K, V>,
        now: &mut Now<'_>,
        removed: &mut Removed<K, V>,
    ) -> bool {
        let cause = if self.is_live(id, now) {
            RemovalCause::Replaced
        } else {
            RemovalCause::Expired
        };
        let old = std::mem::replace(&mut self.index.slots[id as usize].value, w.value);
        self.count(cause, &old);
        removed.push(w.key, old, cause);
        self.set_deadline(id, w.deadline);
        self.index.slots[id as usize].touch();
        self.policy.reweigh(id, w.weight)
    }

    /// Evicts `victim` (heard as `cause`: `Size`, or `Expired` if its
    /// deadline has passed) and puts the new entry `w` in its place: the id
    /// changes hands, so nothing is swap-removed or relocated. `victim_hash`
    /// is the victim's key hash if the policy computed it.
    fn refill(
        &mut self,
        victim: u32,
        placement: Placement,
        victim_hash: Option<u64>,
        cause: RemovalCause,
        w: Write<K, V>,
        removed: &mut Removed<K, V>,
    ) {
        let index = victim as usize;
        let old_hash =
            victim_hash.unwrap_or_else(|| self.hasher.hash_one(&self.index.slots[index].key));
        debug_assert_eq!(old_hash, self.hasher.hash_one(&self.index.slots[index].key));
        let old = std::mem::replace(&mut self.index.slots[index], Slot::new(w.key, w.value));
        let (slots, hasher) = (&self.index.slots, &self.hasher);
        let held = self.index.table.rekey(old_hash, victim, w.hash, |i| {
            hasher.hash_one(&slots[i as usize].key)
        });
        debug_assert!(held, "slot {victim} missing from the table");
        self.wheel.cancel(victim);
        self.created += 1;
        if let Some(hard) = self.hard.get_mut(index) {
            *hard = NEVER;
        }
        self.set_deadline(victim, w.deadline);
        self.policy.reuse(victim, placement);
        self.count(cause, &old.value);
        removed.push(old.key, old.value, cause);
    }

    /// Appends a new entry at id `len`; `count` is false when the policy
    /// has counted the key already ([`TinyLfu::make_room`]).
    fn push(&mut self, w: Write<K, V>, count: bool) {
        let id =
            u32::try_from(self.index.slots.len()).expect("a shard holds fewer than 2^32 entries");
        // The table first: its growth rehashes held keys (user code), and
        // a panic there must not leave the new slot outside the table.
        let (slots, hasher) = (&self.index.slots, &self.hasher);
        self.index
            .table
            .insert_unique(w.hash, id, |i| hasher.hash_one(&slots[i as usize].key));
        self.index.slots.push(Slot::new(w.key, w.value));
        self.created += 1;
        if self.sliding {
            self.hard.push(NEVER);
        }
        self.set_deadline(id, w.deadline);
        if count {
            self.policy.insert(id, w.hash, w.weight);
        } else {
            self.policy.insert_counted(id, w.weight);
        }
    }

    /// Stores `deadline` for `id` and (re)schedules it on the wheel.
    pub(super) fn set_deadline(&mut self, id: u32, deadline: Deadline) {
        let slot = &self.index.slots[id as usize];
        if deadline.at == NEVER && slot.deadline() == NEVER {
            return;
        }
        let at = slot.set_deadline(deadline.at);
        if let Some(hard) = self.hard.get_mut(id as usize) {
            *hard = deadline.hard;
        }
        self.wheel.schedule(id, at);
    }

    /// Evicts what the policy chooses until the shard is within capacity. A
    /// victim whose deadline has already passed is reported as `Expired`.
    /// Returns the first panic of a key's `Hash` that the policy ran into
    /// (caught, see [`SlotEntries`]), for the caller to raise when done.
    #[must_use]
    fn evict(&mut self, now: &mut Now<'_>, removed: &mut Removed<K, V>) -> Option<Panic> {
        if self.policy.weighted_size() > self.policy.capacity() {
            self.reap_for_room(now, removed);
        }
        let mut panic = None;
        // What `reap_instead` may still reap in this write: with the batch
        // of `reap_for_room`, at most `REAP_BUDGET` under this lock hold.
        let mut reap_left = REAP_BUDGET - WRITE_REAP_BUDGET;
        loop {
            let entries = SlotEntries::new(&self.index.slots, &self.hasher, self.now_if_timed(now));
            let victim = self.policy.victim(&entries);
            panic = panic.or(entries.into_panic());
            let Some(id) = victim else {
                return panic;
            };
            let live = self.is_live(id, now);
            if live && self.reap_instead(now, removed, &mut panic, &mut reap_left) {
                // Expired entries made room instead: ask again.
                continue;
            }
            let cause = if live {
                RemovalCause::Size
            } else {
                RemovalCause::Expired
            };
            let slot = self.take(id);
            self.count(cause, &slot.value);
            removed.push(slot.key, slot.value, cause);
        }
    }
}
